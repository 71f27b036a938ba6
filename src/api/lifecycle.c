/* The device lifecycle endpoints: Mender's internal provision / decommission / bulk status calls
 * (202 only once the events are stored in the queue) and the management event log. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers.h"
#include "iot-manager/lifecycle.h"
#include "iot-manager/log.h"

#define EVENTS_PER_PAGE_DEFAULT 20
#define EVENTS_PER_PAGE_MAX     500

static const char *tenant_param(struct http_request *req)
{
    const char *t = http_request_param(req, 0);
    return t ? t : "";
}

/* Publishes the request's events; 202 once all are stored, 400 / 503 otherwise. */
static void publish_and_answer(struct http_request *req, struct http_response *resp,
                               struct lifecycle_batch *b, enum iot_err parse_rc,
                               const struct iot_error *parse_err)
{
    struct app *app = api_app(req);
    if (parse_rc == IOT_ERR_INVALID) {
        http_response_error(resp, 400, parse_err->msg);
        return;
    }
    if (parse_rc != IOT_OK) {
        api_respond_error(req, resp, parse_rc, parse_err);
        return;
    }
    struct iot_error err = {0};
    enum iot_err rc = lifecycle_publish(app, b, &err);
    if (rc == IOT_OK) {
        http_response_empty(resp, 202);
        return;
    }
    if (rc == IOT_ERR_UNAVAILABLE) {
        log_write(LOG_LEVEL_WARN, http_request_id(req), tenant_param(req), "%s", err.msg);
        if (app->queue)
            http_response_header(resp, "Retry-After", "5");
        http_response_error(resp, 503, err.msg);
        return;
    }
    api_respond_error(req, resp, rc, &err);
}

void handle_lifecycle_provision(struct http_request *req, struct http_response *resp)
{
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    struct lifecycle_batch b;
    struct iot_error err = {0};
    enum iot_err rc =
        lifecycle_parse_provision(tenant_param(req), body, len, http_request_id(req), &b, &err);
    publish_and_answer(req, resp, &b, rc, &err);
    lifecycle_batch_clear(&b);
}

void handle_lifecycle_decommission(struct http_request *req, struct http_response *resp)
{
    struct lifecycle_batch b;
    struct iot_error err = {0};
    enum iot_err rc = lifecycle_parse_decommission(tenant_param(req), http_request_param(req, 1),
                                                   http_request_id(req), &b, &err);
    publish_and_answer(req, resp, &b, rc, &err);
    lifecycle_batch_clear(&b);
}

void handle_lifecycle_bulk_status(struct http_request *req, struct http_response *resp)
{
    size_t len = 0;
    const char *body = http_request_body(req, &len);
    struct lifecycle_batch b;
    struct iot_error err = {0};
    enum iot_err rc = lifecycle_parse_bulk_status(tenant_param(req), http_request_param(req, 1),
                                                  body, len, http_request_id(req), &b, &err);
    publish_and_answer(req, resp, &b, rc, &err);
    lifecycle_batch_clear(&b);
}

/* ---- GET /events ---- */

/* Go's strconv.ParseInt(s, 10, 64): optional sign, decimal digits, no spaces, in range. */
static bool parse_int64(const char *s, int64_t *out)
{
    if (!s || !*s)
        return false;
    const char *p = s;
    if (*p == '+' || *p == '-')
        p++;
    if (!*p)
        return false;
    for (const char *q = p; *q; q++) {
        if (*q < '0' || *q > '9')
            return false;
    }
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

/* Mender's paging rules and texts; false when `resp` holds the 400. */
static bool paging_param(struct http_request *req, struct http_response *resp, const char *name,
                         int64_t def, int64_t *out)
{
    *out = def;
    if (!http_request_has_query(req, name))
        return true;
    const char *v = http_request_query(req, name);
    char msg[256];
    if (!parse_int64(v ? v : "", out)) {
        snprintf(msg, sizeof msg, "invalid %s query: \"%.128s\"", name, v ? v : "");
        http_response_error(resp, 400, msg);
        return false;
    }
    if (*out < 1) {
        snprintf(msg, sizeof msg, "invalid %s query: value must be a non-zero positive integer",
                 name);
        http_response_error(resp, 400, msg);
        return false;
    }
    return true;
}

/* Go's RFC3339Nano of a millisecond UTC time: fraction without trailing zeros. */
static void format_time(int64_t ms, char out[48])
{
    int64_t sec = ms / 1000;
    int64_t frac = ms % 1000;
    if (frac < 0) {
        frac += 1000;
        sec--;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(out, 48, "1970-01-01T00:00:00Z");
        return;
    }
    size_t n = strftime(out, 48, "%Y-%m-%dT%H:%M:%S", &tm);
    if (frac == 0) {
        snprintf(out + n, 48 - n, "Z");
        return;
    }
    char digits[8];
    snprintf(digits, sizeof digits, "%03lld", (long long)frac);
    size_t len = strlen(digits);
    while (len > 0 && digits[len - 1] == '0')
        digits[--len] = '\0';
    snprintf(out + n, 48 - n, ".%sZ", digits);
}

/* Mender's Event JSON; NULL on OOM. */
static json_t *event_json(const struct event_record *ev)
{
    char id[UUID_STR_LEN + 1];
    char when[48];
    uuid_format(&ev->id, id);
    format_time(ev->event_ts_ms, when);
    json_t *data = json_is_object(ev->data) ? json_incref(ev->data) : json_object();
    json_t *obj = json_pack("{s:s, s:s, s:o, s:s}", "id", id, "type", ev->type ? ev->type : "",
                            "data", data, "time", when);
    if (!obj)
        return NULL;
    if (ev->n_statuses == 0)
        return obj;
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < ev->n_statuses; i++) {
        const struct delivery_status *st = &ev->statuses[i];
        char iid[UUID_STR_LEN + 1];
        uuid_format(&st->integration_id, iid);
        json_t *item = json_pack("{s:s, s:b}", "integration_id", iid, "success", st->success);
        if (item && st->error && *st->error)
            json_object_set_new(item, "error", json_string(st->error));
        if (item && st->status_code != 0)
            json_object_set_new(item, "status_code", json_integer(st->status_code));
        if (!item || json_array_append_new(arr, item) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (!arr || json_object_set_new(obj, "delivery_statuses", arr) != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

void handle_events_list(struct http_request *req, struct http_response *resp)
{
    int64_t page, per_page;
    if (!paging_param(req, resp, "page", 1, &page) ||
        !paging_param(req, resp, "per_page", EVENTS_PER_PAGE_DEFAULT, &per_page))
        return;
    if (per_page > EVENTS_PER_PAGE_MAX) {
        char msg[64];
        snprintf(msg, sizeof msg, "parameter \"per_page\" above limit (max: %d)",
                 EVENTS_PER_PAGE_MAX);
        http_response_error(resp, 400, msg);
        return;
    }
    struct uuid iid;
    const struct uuid *filter = NULL;
    if (http_request_has_query(req, "integration_id")) {
        const char *v = http_request_query(req, "integration_id");
        if (uuid_parse(v ? v : "", &iid, NULL) != IOT_OK) {
            http_response_error(resp, 400, "integration ID is not a valid UUID");
            return;
        }
        filter = &iid;
    }
    struct event_list list = {0};
    struct iot_error err = {0};
    enum iot_err rc = lifecycle_events_list(api_app(req), api_identity(req)->tenant, filter, page,
                                            per_page, &list, &err);
    if (rc != IOT_OK) {
        api_respond_error(req, resp, rc, &err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < list.len; i++) {
        json_t *item = event_json(&list.items[i]);
        if (!item || json_array_append_new(arr, item) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    event_list_clear(&list);
    if (!arr) {
        http_response_error(resp, 500, "internal error");
        return;
    }
    http_response_json(resp, 200, arr);
}
