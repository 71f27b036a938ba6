#include "handlers.h"

void handle_metrics(struct http_request *req, struct http_response *resp)
{
    struct app *app = api_app(req);
    app_metrics_refresh(app);
    char *text = metrics_render(app->metrics);
    if (!text) {
        http_response_error(resp, 500, "internal error");
        return;
    }
    http_response_text(resp, 200, "text/plain; version=0.0.4; charset=utf-8", text);
}

void handle_alive(struct http_request *req, struct http_response *resp)
{
    (void)req;
    http_response_empty(resp, 204);
}

void handle_health(struct http_request *req, struct http_response *resp)
{
    json_t *checks = json_object();
    struct iot_error err = {0};
    enum iot_err rc = app_health(api_app(req), checks, &err);
    if (rc == IOT_OK) {
        json_decref(checks);
        http_response_empty(resp, 204);
        return;
    }
    json_t *extra = json_object();
    json_object_set_new(extra, "checks", checks);
    http_response_error_with(resp, 503, err.msg, extra);
}

void handle_tenant_delete(struct http_request *req, struct http_response *resp)
{
    const char *tenant = http_request_param(req, 0);
    if (!tenant || !*tenant) {
        http_response_error(resp, 400, "tenant id is empty");
        return;
    }
    struct iot_error err = {0};
    enum iot_err rc = app_tenant_delete(api_app(req), tenant, &err);
    if (rc != IOT_OK) {
        api_respond_error(req, resp, rc, &err);
        return;
    }
    http_response_empty(resp, 204);
}
