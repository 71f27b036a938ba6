/* Device twin endpoints: Mender's /devices/{id}/state API plus PATCH and ETag/If-Match. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"

/* {integrationId} as Mender parses it (400 with its text). */
static bool integration_param(struct http_request *req, struct http_response *resp, size_t index,
                              struct uuid *id)
{
    if (uuid_parse(http_request_param(req, index), id, NULL) == IOT_OK)
        return true;
    http_response_error(resp, 400, "integration ID is not a valid UUID");
    return false;
}

static bool device_param(struct http_request *req, struct http_response *resp, const char **id)
{
    *id = http_request_param(req, 0);
    if (*id && **id)
        return true;
    http_response_error(resp, 400, "device ID is empty");
    return false;
}

static json_t *state_json(struct device_state *st)
{
    json_t *obj = json_object();
    json_object_set_new(obj, "desired", st->desired ? st->desired : json_object());
    json_object_set_new(obj, "reported", st->reported ? st->reported : json_object());
    st->desired = st->reported = NULL;
    return obj;
}

static void respond_state(struct http_response *resp, struct device_state *st)
{
    char etag[HUB_ETAG_MAX + 3];
    snprintf(etag, sizeof etag, "\"%s\"", st->etag);
    if (st->etag[0])
        http_response_header(resp, "ETag", etag);
    http_response_json(resp, 200, state_json(st));
}

/* The etag a client sends back in If-Match: quotes and a weak prefix removed. */
static const char *if_match_value(struct http_request *req, char *buf, size_t cap)
{
    const char *v = http_request_header(req, "If-Match");
    if (!v || !*v)
        return NULL;
    if (strncmp(v, "W/", 2) == 0)
        v += 2;
    size_t len = strlen(v);
    if (len >= 2 && v[0] == '"' && v[len - 1] == '"') {
        v++;
        len -= 2;
    }
    if (len >= cap)
        len = cap - 1;
    memcpy(buf, v, len);
    buf[len] = '\0';
    return buf;
}

void handle_device_states(struct http_request *req, struct http_response *resp)
{
    const char *device_id;
    if (!device_param(req, resp, &device_id))
        return;
    json_t *map = NULL;
    struct iot_error err = {0};
    enum iot_err rc =
        app_device_states(api_app(req), api_identity(req)->tenant, device_id, &map, &err);
    if (rc != IOT_OK) {
        api_respond_error_retry(req, resp, rc, &err, 1000);
        return;
    }
    http_response_json(resp, 200, map);
}

void handle_device_state_get(struct http_request *req, struct http_response *resp)
{
    const char *device_id;
    struct uuid iid;
    if (!device_param(req, resp, &device_id) || !integration_param(req, resp, 1, &iid))
        return;
    struct device_state st;
    struct iot_error err = {0};
    int64_t retry_after_ms = 0;
    enum iot_err rc = app_device_state_get(api_app(req), api_identity(req)->tenant, device_id, &iid,
                                           &st, &retry_after_ms, &err);
    if (rc != IOT_OK) {
        api_respond_error_retry(req, resp, rc, &err, retry_after_ms);
        return;
    }
    respond_state(resp, &st);
    device_state_clear(&st);
}

static void write_state(struct http_request *req, struct http_response *resp,
                        enum device_state_write mode)
{
    const char *device_id;
    struct uuid iid;
    if (!device_param(req, resp, &device_id) || !integration_param(req, resp, 1, &iid))
        return;
    size_t len;
    const char *body = http_request_body(req, &len);
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root) {
        char msg[256];
        snprintf(msg, sizeof msg, "malformed request body: %s", len ? jerr.text : "EOF");
        http_response_error(resp, 400, msg);
        return;
    }
    json_t *desired = json_object_get(root, "desired");
    char etag_buf[HUB_ETAG_MAX + 1];
    const char *if_match = if_match_value(req, etag_buf, sizeof etag_buf);
    struct device_state st;
    struct iot_error err = {0};
    bool precondition_failed = false;
    int64_t retry_after_ms = 0;
    enum iot_err rc =
        app_device_state_write(api_app(req), api_identity(req)->tenant, device_id, &iid, mode,
                               desired, if_match, &st, &precondition_failed, &retry_after_ms, &err);
    json_decref(root);
    if (rc == IOT_ERR_CONFLICT && precondition_failed) {
        http_response_error(resp, 412, err.msg);
        return;
    }
    if (rc != IOT_OK) {
        api_respond_error_retry(req, resp, rc, &err, retry_after_ms);
        return;
    }
    respond_state(resp, &st);
    device_state_clear(&st);
}

void handle_device_state_put(struct http_request *req, struct http_response *resp)
{
    write_state(req, resp, DEVICE_STATE_REPLACE);
}

void handle_device_state_patch(struct http_request *req, struct http_response *resp)
{
    write_state(req, resp, DEVICE_STATE_MERGE);
}

void handle_device_unlink(struct http_request *req, struct http_response *resp)
{
    const char *device_id;
    if (!device_param(req, resp, &device_id))
        return;
    struct iot_error err = {0};
    enum iot_err rc =
        app_device_unlink_all(api_app(req), api_identity(req)->tenant, device_id, &err);
    if (rc != IOT_OK) {
        api_respond_error(req, resp, rc, &err);
        return;
    }
    http_response_empty(resp, 204);
}
