#include <stdio.h>
#include <stdlib.h>

#include "codec.h"
#include "handlers.h"
#include "iot-manager/api.h"

/* Parses the {id} path parameter as Mender does (400 with google/uuid's message). */
static bool integration_id_param(struct http_request *req, struct http_response *resp,
                                 struct uuid *id)
{
    struct iot_error err = {0};
    if (uuid_parse(http_request_param(req, 0), id, &err) == IOT_OK)
        return true;
    char msg[IOT_ERROR_MSG_MAX + 64];
    snprintf(msg, sizeof msg, "integration ID must be a valid UUID: %s", err.msg);
    http_response_error(resp, 400, msg);
    return false;
}

void handle_integrations_list(struct http_request *req, struct http_response *resp)
{
    struct integration_list list = {0};
    struct iot_error err = {0};
    enum iot_err rc = app_integrations_list(api_app(req), api_identity(req)->tenant, &list, &err);
    if (rc != IOT_OK) {
        api_respond_error(req, resp, rc, &err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < list.len; i++) {
        json_t *item = codec_integration_encode(&list.items[i]);
        if (!item || json_array_append_new(arr, item) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    integration_list_clear(&list);
    if (!arr) {
        http_response_error(resp, 500, "internal error");
        return;
    }
    http_response_json(resp, 200, arr);
}

void handle_integration_create(struct http_request *req, struct http_response *resp)
{
    struct app *app = api_app(req);
    struct integration in = {0};
    struct iot_error err = {0};
    size_t len;
    const char *body = http_request_body(req, &len);
    enum iot_err rc = codec_integration_decode(app, body, len, &in, &err);
    struct uuid id;
    if (rc == IOT_OK)
        rc = app_integration_create(app, api_identity(req)->tenant, &in, &id, &err);
    integration_clear(&in);
    if (rc != IOT_OK) {
        api_respond_error(req, resp, rc, &err);
        return;
    }
    char text[UUID_STR_LEN + 1];
    char location[sizeof API_MANAGEMENT_PREFIX + 64];
    uuid_format(&id, text);
    snprintf(location, sizeof location, "%s/integrations/%s", API_MANAGEMENT_PREFIX, text);
    http_response_header(resp, "Location", location);
    http_response_empty(resp, 201);
}

void handle_integration_get(struct http_request *req, struct http_response *resp)
{
    struct uuid id;
    if (!integration_id_param(req, resp, &id))
        return;
    struct integration in = {0};
    struct iot_error err = {0};
    enum iot_err rc = app_integration_get(api_app(req), api_identity(req)->tenant, &id, &in, &err);
    if (rc != IOT_OK) {
        api_respond_error(req, resp, rc, &err);
        return;
    }
    json_t *obj = codec_integration_encode(&in);
    integration_clear(&in);
    if (!obj) {
        http_response_error(resp, 500, "internal error");
        return;
    }
    http_response_json(resp, 200, obj);
}

void handle_integration_set_credentials(struct http_request *req, struct http_response *resp)
{
    struct uuid id;
    if (!integration_id_param(req, resp, &id))
        return;
    struct app *app = api_app(req);
    struct credentials creds = {0};
    char *masked = NULL;
    struct iot_error err = {0};
    size_t len;
    const char *body = http_request_body(req, &len);
    enum iot_err rc = codec_credentials_decode(app, body, len, &creds, &masked, &err);
    if (rc == IOT_OK)
        rc = app_integration_set_credentials(app, api_identity(req)->tenant, &id, &creds, masked,
                                             &err);
    credentials_clear(&creds);
    free(masked);
    if (rc != IOT_OK) {
        api_respond_error(req, resp, rc, &err);
        return;
    }
    http_response_empty(resp, 204);
}

void handle_integration_delete(struct http_request *req, struct http_response *resp)
{
    struct uuid id;
    if (!integration_id_param(req, resp, &id))
        return;
    struct iot_error err = {0};
    enum iot_err rc = app_integration_delete(api_app(req), api_identity(req)->tenant, &id, &err);
    if (rc != IOT_OK) {
        api_respond_error(req, resp, rc, &err);
        return;
    }
    http_response_empty(resp, 204);
}
