/* Lifecycle events: Mender's internal API requests into version-1 events, their publication, and
 * the per-device desired-state record the workers reconcile (docs/lifecycle-design.md). */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iot-manager/crypto.h"
#include "iot-manager/lifecycle.h"
#include "iot-manager/log.h"
#include "iot-manager/model.h"

static const char *const kind_names[] = {"provision", "status", "decommission"};

static const char *const statuses[] = {"accepted", "pending",       "rejected",
                                       "noauth",   "preauthorized", "decommissioned"};

const char *lifecycle_kind_name(enum lifecycle_kind k)
{
    return (unsigned)k < sizeof kind_names / sizeof kind_names[0] ? kind_names[k] : "";
}

bool lifecycle_kind_parse(const char *text, enum lifecycle_kind *out)
{
    for (size_t i = 0; text && i < sizeof kind_names / sizeof kind_names[0]; i++) {
        if (strcmp(text, kind_names[i]) == 0) {
            *out = (enum lifecycle_kind)i;
            return true;
        }
    }
    return false;
}

bool lifecycle_status_valid(const char *status)
{
    for (size_t i = 0; status && i < sizeof statuses / sizeof statuses[0]; i++) {
        if (strcmp(status, statuses[i]) == 0)
            return true;
    }
    return false;
}

bool lifecycle_status_enables(const char *status)
{
    return status && (strcmp(status, "accepted") == 0 || strcmp(status, "preauthorized") == 0);
}

void lifecycle_event_clear(struct lifecycle_event *ev)
{
    if (!ev)
        return;
    free(ev->tenant_id);
    free(ev->device_id);
    free(ev->status);
    free(ev->request_id);
    free(ev->time);
    json_decref(ev->device);
    memset(ev, 0, sizeof *ev);
}

/* ---- time ---- */

/* Now in UTC as Go's RFC3339Nano writes it: the fraction without trailing zeros. */
static void rfc3339nano_now(char out[40])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    if (ts.tv_nsec > 0) {
        char frac[24]; /* tv_nsec < 1e9: nine digits, but the compiler cannot know */
        snprintf(frac, sizeof frac, ".%09ld", ts.tv_nsec);
        size_t len = strlen(frac);
        while (len > 1 && frac[len - 1] == '0')
            frac[--len] = '\0';
        snprintf(out + n, 40 - n, "%sZ", frac);
    } else {
        snprintf(out + n, 40 - n, "Z");
    }
}

/* ---- encoding ---- */

enum iot_err lifecycle_event_encode(const struct lifecycle_event *ev, char **out, size_t *len,
                                    struct iot_error *err)
{
    *out = NULL;
    *len = 0;
    json_t *obj = json_object();
    if (!obj)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    int bad = json_object_set_new(obj, "version", json_integer(LIFECYCLE_EVENT_VERSION));
    bad |= json_object_set_new(obj, "kind", json_string(lifecycle_kind_name(ev->kind)));
    bad |= json_object_set_new(obj, "tenant_id", json_string(ev->tenant_id ? ev->tenant_id : ""));
    bad |= json_object_set_new(obj, "device_id", json_string(ev->device_id));
    if (ev->status)
        bad |= json_object_set_new(obj, "status", json_string(ev->status));
    bad |=
        json_object_set_new(obj, "request_id", json_string(ev->request_id ? ev->request_id : ""));
    if (ev->time)
        bad |= json_object_set_new(obj, "time", json_string(ev->time));
    if (ev->device)
        bad |= json_object_set(obj, "device", ev->device);
    char *text = bad ? NULL : json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    if (!text)
        return iot_error_set(err, bad ? IOT_ERR_INVALID : IOT_ERR_NOMEM,
                             bad ? "event fields are not valid UTF-8" : "out of memory");
    *out = text;
    *len = strlen(text);
    return IOT_OK;
}

static enum iot_err dup_string(const json_t *v, char **out, struct iot_error *err)
{
    *out = strdup(json_string_value(v));
    return *out ? IOT_OK : iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
}

enum iot_err lifecycle_event_decode(const char *data, size_t len, struct lifecycle_event *out,
                                    struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    /* NUL inside strings is allowed here only to refuse it with a clear reason below. */
    json_t *root = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    enum iot_err rc = IOT_OK;
    if (!root)
        return iot_error_set(err, IOT_ERR_INVALID, "not JSON: %s", jerr.text);
    if (!json_is_object(root)) {
        rc = iot_error_set(err, IOT_ERR_INVALID, "not a JSON object");
        goto out;
    }
    json_t *version = json_object_get(root, "version");
    if (!json_is_integer(version) || json_integer_value(version) != LIFECYCLE_EVENT_VERSION) {
        rc = iot_error_set(err, IOT_ERR_INVALID, "unsupported version (this service reads %d)",
                           LIFECYCLE_EVENT_VERSION);
        goto out;
    }
    if (!lifecycle_kind_parse(json_string_value(json_object_get(root, "kind")), &out->kind)) {
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           "kind: must be \"provision\", \"status\" or \"decommission\"");
        goto out;
    }
    json_t *tenant = json_object_get(root, "tenant_id");
    json_t *device_id = json_object_get(root, "device_id");
    json_t *status = json_object_get(root, "status");
    json_t *request_id = json_object_get(root, "request_id");
    json_t *time = json_object_get(root, "time");
    json_t *device = json_object_get(root, "device");
    if (!json_is_string(tenant) ||
        strlen(json_string_value(tenant)) != json_string_length(tenant)) {
        rc = iot_error_set(err, IOT_ERR_INVALID, "tenant_id: must be a string (\"\" for none)");
        goto out;
    }
    if (!json_is_string(device_id) || json_string_length(device_id) == 0 ||
        json_string_length(device_id) > LIFECYCLE_ID_MAX ||
        strlen(json_string_value(device_id)) != json_string_length(device_id)) {
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           "device_id: must be a non-empty string of at most %d bytes",
                           LIFECYCLE_ID_MAX);
        goto out;
    }
    if (out->kind == LIFECYCLE_STATUS && !lifecycle_status_valid(json_string_value(status))) {
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           "status: must be one of accepted, pending, rejected, noauth, "
                           "preauthorized, decommissioned");
        goto out;
    }
    if ((request_id && !json_is_string(request_id)) || (time && !json_is_string(time)) ||
        (device && !json_is_object(device)) || (status && !json_is_string(status))) {
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           "request_id, time and status must be strings, device an object");
        goto out;
    }
    if ((rc = dup_string(tenant, &out->tenant_id, err)) != IOT_OK ||
        (rc = dup_string(device_id, &out->device_id, err)) != IOT_OK)
        goto out;
    if (out->kind == LIFECYCLE_STATUS)
        rc = dup_string(status, &out->status, err);
    else if (out->kind == LIFECYCLE_PROVISION)
        out->status = strdup("accepted"); /* provisioning always enables, as Mender's does */
    if (rc == IOT_OK && out->kind == LIFECYCLE_PROVISION && !out->status)
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    if (rc != IOT_OK)
        goto out;
    out->request_id = strdup(request_id ? json_string_value(request_id) : "");
    out->time = time ? strdup(json_string_value(time)) : NULL;
    out->device = device ? json_incref(device) : json_pack("{s:s}", "id", out->device_id);
    if (!out->request_id || (time && !out->time) || !out->device)
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
out:
    json_decref(root);
    return rc;
}

/* ---- requests ---- */

void lifecycle_batch_clear(struct lifecycle_batch *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++)
        free(b->payloads[i]);
    free(b->payloads);
    free(b->lens);
    free(b->kinds);
    memset(b, 0, sizeof *b);
}

static enum iot_err batch_reserve(struct lifecycle_batch *b, size_t n, struct iot_error *err)
{
    b->payloads = calloc(n ? n : 1, sizeof *b->payloads);
    b->lens = calloc(n ? n : 1, sizeof *b->lens);
    b->kinds = calloc(n ? n : 1, sizeof *b->kinds);
    if (!b->payloads || !b->lens || !b->kinds)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    return IOT_OK;
}

/* Encodes one event into the batch; `device` is borrowed. */
static enum iot_err batch_add(struct lifecycle_batch *b, enum lifecycle_kind kind,
                              const char *tenant, const char *device_id, const char *status,
                              const char *request_id, json_t *device, struct iot_error *err)
{
    char now[40];
    rfc3339nano_now(now);
    struct lifecycle_event ev = {
        .kind = kind,
        .tenant_id = (char *)tenant,
        .device_id = (char *)device_id,
        .status = (char *)status,
        .request_id = (char *)(request_id ? request_id : ""),
        .time = now,
        .device = device,
    };
    enum iot_err rc = lifecycle_event_encode(&ev, &b->payloads[b->n], &b->lens[b->n], err);
    if (rc == IOT_OK)
        b->kinds[b->n++] = kind;
    return rc;
}

/* The fields of a DeviceEvent that Mender keeps (id, status, auth_sets, created_ts), with the
 * effective id. New reference. */
static json_t *device_event_filtered(const json_t *in, const char *id)
{
    json_t *out = json_pack("{s:s}", "id", id);
    if (!out)
        return NULL;
    static const char *const keep[] = {"status", "auth_sets", "created_ts"};
    for (size_t i = 0; json_is_object(in) && i < sizeof keep / sizeof keep[0]; i++) {
        json_t *v = json_object_get(in, keep[i]);
        if (v && !json_is_null(v) && json_object_set(out, keep[i], v) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* The device id of a DeviceEvent: the legacy `device_id` wins when not empty (Mender's
 * internalDevice). NULL with a message when a field has the wrong type. */
static enum iot_err device_event_id(const json_t *item, const char **id, const char *prefix,
                                    struct iot_error *err)
{
    *id = "";
    json_t *legacy = json_object_get(item, "device_id");
    json_t *plain = json_object_get(item, "id");
    if (legacy && !json_is_null(legacy) && !json_is_string(legacy))
        return iot_error_set(err, IOT_ERR_INVALID,
                             "%s: json: cannot unmarshal %s into Go struct field .device_id of "
                             "type string",
                             prefix, go_json_type_name(legacy));
    if (plain && !json_is_null(plain) && !json_is_string(plain))
        return iot_error_set(err, IOT_ERR_INVALID,
                             "%s: json: cannot unmarshal %s into Go struct field .id of type "
                             "string",
                             prefix, go_json_type_name(plain));
    const char *text = json_string_value(legacy);
    if (!text || !*text)
        text = json_string_value(plain);
    if (!text)
        return IOT_OK;
    size_t len = strlen(text);
    if (len > LIFECYCLE_ID_MAX)
        return iot_error_set(err, IOT_ERR_INVALID, "%s: device id longer than %d bytes", prefix,
                             LIFECYCLE_ID_MAX);
    *id = text;
    return IOT_OK;
}

/* jansson's parse error in the words callers know from Go (empty body: "EOF"). */
static void json_parse_message(const char *body, size_t len, const json_error_t *jerr, char *out,
                               size_t cap)
{
    bool blank = true;
    for (size_t i = 0; i < len && blank; i++)
        blank = body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n';
    snprintf(out, cap, "%s", blank ? "EOF" : jerr->text);
}

enum iot_err lifecycle_parse_provision(const char *tenant, const char *body, size_t len,
                                       const char *request_id, struct lifecycle_batch *out,
                                       struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", body ? len : 0, JSON_DECODE_ANY, &jerr);
    if (!root) {
        char msg[256];
        json_parse_message(body ? body : "", body ? len : 0, &jerr, msg, sizeof msg);
        return iot_error_set(err, IOT_ERR_INVALID, "malformed request body: %s", msg);
    }
    enum iot_err rc = IOT_OK;
    json_t *device = NULL;
    if (!json_is_object(root) && !json_is_null(root)) {
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           "malformed request body: json: cannot unmarshal %s into Go value of "
                           "type http.internalDevice",
                           go_json_type_name(root));
        goto out;
    }
    const char *id = "";
    if (json_is_object(root) &&
        (rc = device_event_id(root, &id, "malformed request body", err)) != IOT_OK)
        goto out;
    if (!*id) {
        rc = iot_error_set(err, IOT_ERR_INVALID, "missing device ID");
        goto out;
    }
    if (!(device = device_event_filtered(root, id))) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = batch_reserve(out, 1, err)) == IOT_OK)
        rc = batch_add(out, LIFECYCLE_PROVISION, tenant, id, "accepted", request_id, device, err);
out:
    json_decref(device);
    json_decref(root);
    if (rc != IOT_OK)
        lifecycle_batch_clear(out);
    return rc;
}

enum iot_err lifecycle_parse_decommission(const char *tenant, const char *device_id,
                                          const char *request_id, struct lifecycle_batch *out,
                                          struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    if (!device_id || !*device_id)
        return iot_error_set(err, IOT_ERR_INVALID, "missing device ID");
    if (strlen(device_id) > LIFECYCLE_ID_MAX)
        return iot_error_set(err, IOT_ERR_INVALID, "device id longer than %d bytes",
                             LIFECYCLE_ID_MAX);
    json_t *device = json_pack("{s:s}", "id", device_id);
    enum iot_err rc =
        device ? batch_reserve(out, 1, err) : iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    if (rc == IOT_OK)
        rc = batch_add(out, LIFECYCLE_DECOMMISSION, tenant, device_id, NULL, request_id, device,
                       err);
    json_decref(device);
    if (rc != IOT_OK)
        lifecycle_batch_clear(out);
    return rc;
}

enum iot_err lifecycle_parse_bulk_status(const char *tenant, const char *status, const char *body,
                                         size_t len, const char *request_id,
                                         struct lifecycle_batch *out, struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    if (!lifecycle_status_valid(status))
        return iot_error_set(err, IOT_ERR_INVALID, "invalid status '%.64s'", status ? status : "");
    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", body ? len : 0, JSON_DECODE_ANY, &jerr);
    if (!root) {
        char msg[256];
        json_parse_message(body ? body : "", body ? len : 0, &jerr, msg, sizeof msg);
        return iot_error_set(err, IOT_ERR_INVALID, "invalid request body: %s", msg);
    }
    enum iot_err rc = IOT_OK;
    if (!json_is_array(root) && !json_is_null(root)) {
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           "invalid request body: json: cannot unmarshal %s into Go value of type "
                           "[]model.DeviceEvent",
                           go_json_type_name(root));
        goto out;
    }
    size_t n = json_array_size(root);
    if (n > LIFECYCLE_BULK_MAX) {
        rc = iot_error_set(err, IOT_ERR_INVALID, "too many bulk items: max %d items per request",
                           LIFECYCLE_BULK_MAX);
        goto out;
    }
    /* Validate every item before encoding any, so a bad item publishes nothing. */
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(root, i);
        const char *id;
        if (!json_is_object(item) && !json_is_null(item)) {
            rc = iot_error_set(err, IOT_ERR_INVALID,
                               "invalid request body: json: cannot unmarshal %s into Go value of "
                               "type model.DeviceEvent",
                               go_json_type_name(item));
            goto out;
        }
        if (json_is_object(item) &&
            (rc = device_event_id(item, &id, "invalid request body", err)) != IOT_OK)
            goto out;
    }
    if ((rc = batch_reserve(out, n, err)) != IOT_OK)
        goto out;
    for (size_t i = 0; i < n && rc == IOT_OK; i++) {
        json_t *item = json_array_get(root, i);
        const char *id = "";
        if (json_is_object(item))
            device_event_id(item, &id, "", NULL);
        if (!*id)
            continue;
        json_t *device = device_event_filtered(item, id);
        if (!device) {
            rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
            break;
        }
        rc = batch_add(out, LIFECYCLE_STATUS, tenant, id, status, request_id, device, err);
        json_decref(device);
    }
out:
    json_decref(root);
    if (rc != IOT_OK)
        lifecycle_batch_clear(out);
    return rc;
}

enum iot_err lifecycle_publish(struct app *app, struct lifecycle_batch *b, struct iot_error *err)
{
    if (!app->queue)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE,
                             "lifecycle events need IOT_MANAGER_NATS_URI");
    if (b->n == 0)
        return IOT_OK;
    struct queue_publication *pubs = calloc(b->n, sizeof *pubs);
    if (!pubs)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < b->n; i++) {
        pubs[i].kind = lifecycle_kind_name(b->kinds[i]);
        pubs[i].data = b->payloads[i];
        pubs[i].len = b->lens[i];
    }
    struct iot_error qerr = {0};
    enum iot_err rc = queue_publish(app->queue, pubs, b->n, &qerr);
    if (rc == IOT_OK) {
        for (size_t i = 0; i < b->n; i++) {
            char labels[64];
            snprintf(labels, sizeof labels, "kind=\"%s\"", pubs[i].kind);
            metrics_counter_add(app->metrics, "iot_manager_events_received_total", labels, 1);
        }
    } else if (rc == IOT_ERR_TOO_LARGE) {
        rc = iot_error_set(err, rc, "%s", qerr.msg);
    } else {
        rc = iot_error_set(err, IOT_ERR_UNAVAILABLE, "the event queue did not store the event: %s",
                           qerr.msg[0] ? qerr.msg : iot_strerror(rc));
    }
    free(pubs);
    return rc;
}

enum iot_err lifecycle_health(struct app *app, json_t *checks, struct iot_error *err)
{
    if (!app->queue)
        return IOT_OK;
    struct iot_error qerr = {0};
    enum iot_err rc = queue_health(app->queue, &qerr);
    const char *text = rc == IOT_OK ? "ok" : qerr.msg[0] ? qerr.msg : iot_strerror(rc);
    json_object_set_new(checks, "nats", json_string(text));
    if (rc != IOT_OK)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "nats: %s", text);
    return IOT_OK;
}

enum iot_err lifecycle_events_list(struct app *app, const char *tenant,
                                   const struct uuid *integration_id, int64_t page,
                                   int64_t per_page, struct event_list *out, struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    if (page < 1 || per_page < 1)
        return iot_error_set(err, IOT_ERR_INVALID, "page and per_page must be positive");
    if (page - 1 > INT64_MAX / per_page)
        return IOT_OK; /* far beyond any stored event */
    return store_events_list(app->store, tenant, integration_id, (page - 1) * per_page, per_page,
                             out, err);
}

/* ---- desired state ---- */

void lifecycle_device_key(const char *tenant, const char *device_id, char out[LIFECYCLE_KEY_MAX])
{
    static const char hex[] = "0123456789abcdef";
    const void *parts[3] = {tenant, "", device_id};
    size_t lens[3] = {strlen(tenant), 1, strlen(device_id)};
    uint8_t digest[CRYPTO_SHA256_LEN];
    if (crypto_sha256(parts, lens, 3, digest) != IOT_OK)
        memset(digest, 0, sizeof digest); /* OpenSSL out of memory: all devices share a key */
    out[0] = 'd';
    out[1] = '.';
    for (size_t i = 0; i < 16; i++) {
        out[2 + 2 * i] = hex[digest[i] >> 4];
        out[3 + 2 * i] = hex[digest[i] & 15];
    }
    out[34] = '\0';
}

void lifecycle_record_clear(struct lifecycle_record *r)
{
    if (!r)
        return;
    free(r->tenant_id);
    free(r->device_id);
    memset(r, 0, sizeof *r);
}

enum iot_err lifecycle_record_init(struct lifecycle_record *r, const char *tenant,
                                   const char *device_id)
{
    memset(r, 0, sizeof *r);
    r->tenant_id = strdup(tenant);
    r->device_id = strdup(device_id);
    if (!r->tenant_id || !r->device_id) {
        lifecycle_record_clear(r);
        return IOT_ERR_NOMEM;
    }
    return IOT_OK;
}

enum iot_err lifecycle_record_encode(const struct lifecycle_record *r, char **out, size_t *len,
                                     struct iot_error *err)
{
    *out = NULL;
    *len = 0;
    json_t *obj = json_pack(
        "{s:s, s:s, s:b, s:I, s:b, s:I, s:s, s:I, s:I, s:I, s:s, s:I}", "tenant_id", r->tenant_id,
        "device_id", r->device_id, "exists", r->exists, "exists_seq", (json_int_t)r->exists_seq,
        "enabled", r->enabled, "enabled_seq", (json_int_t)r->enabled_seq, "status", r->status,
        "gen", (json_int_t)r->gen, "applied_gen", (json_int_t)r->applied_gen, "applied_exists_seq",
        (json_int_t)r->applied_exists_seq, "cs_sha256", r->cs_sha256, "epoch",
        (json_int_t)r->epoch);
    char *text = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(obj);
    if (!text)
        return iot_error_set(err, IOT_ERR_NOMEM, "cannot encode the device record");
    *out = text;
    *len = strlen(text);
    return IOT_OK;
}

static bool get_seq(json_t *obj, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        *out = 0;
        return true;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

enum iot_err lifecycle_record_decode(const char *data, size_t len, struct lifecycle_record *out,
                                     struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *root = json_loadb(data, len, 0, &jerr);
    enum iot_err rc = IOT_OK;
    if (!json_is_object(root)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "device record is not a JSON object");
        goto out;
    }
    const char *tenant = json_string_value(json_object_get(root, "tenant_id"));
    const char *device = json_string_value(json_object_get(root, "device_id"));
    const char *status = json_string_value(json_object_get(root, "status"));
    const char *cs = json_string_value(json_object_get(root, "cs_sha256"));
    if (!tenant || !device || !get_seq(root, "exists_seq", &out->exists_seq) ||
        !get_seq(root, "enabled_seq", &out->enabled_seq) || !get_seq(root, "gen", &out->gen) ||
        !get_seq(root, "applied_gen", &out->applied_gen) ||
        !get_seq(root, "applied_exists_seq", &out->applied_exists_seq) ||
        !get_seq(root, "epoch", &out->epoch)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "device record has missing or bad fields");
        goto out;
    }
    if ((rc = lifecycle_record_init(out, tenant, device)) != IOT_OK) {
        iot_error_set(err, rc, "out of memory");
        goto out;
    }
    get_seq(root, "exists_seq", &out->exists_seq);
    get_seq(root, "enabled_seq", &out->enabled_seq);
    get_seq(root, "gen", &out->gen);
    get_seq(root, "applied_gen", &out->applied_gen);
    get_seq(root, "applied_exists_seq", &out->applied_exists_seq);
    get_seq(root, "epoch", &out->epoch);
    /* Written before the field existed: a record whose state was applied had its exists event
     * applied too. */
    if (!json_object_get(root, "applied_exists_seq") && out->applied_gen >= out->gen)
        out->applied_exists_seq = out->exists_seq;
    out->exists = json_is_true(json_object_get(root, "exists"));
    out->enabled = json_is_true(json_object_get(root, "enabled"));
    snprintf(out->status, sizeof out->status, "%s", status ? status : "");
    snprintf(out->cs_sha256, sizeof out->cs_sha256, "%s", cs ? cs : "");
out:
    json_decref(root);
    return rc;
}

bool lifecycle_record_apply(struct lifecycle_record *r, const struct lifecycle_event *ev,
                            uint64_t seq, uint64_t epoch)
{
    bool modified = false; /* some field moved: the record must be written */
    bool changed = false;  /* the desired hub state moved: it must be reconciled */
    if (epoch && r->epoch && epoch < r->epoch)
        return false; /* from a stream older than the one the record counts in */
    if (epoch && r->epoch != epoch) {
        /* A record of unknown epoch adopts this one: its sequences are taken to count in the
         * stream we read now (the upgrade case). */
        if (r->epoch) {
            r->exists_seq = 0;
            r->enabled_seq = 0;
            r->applied_exists_seq = 0;
        }
        r->epoch = epoch;
        modified = true;
    }
    if ((ev->kind == LIFECYCLE_PROVISION || ev->kind == LIFECYCLE_DECOMMISSION) &&
        seq > r->exists_seq) {
        bool exists = ev->kind == LIFECYCLE_PROVISION;
        changed |= exists != r->exists || r->exists_seq == 0;
        r->exists = exists;
        r->exists_seq = seq;
        modified = true;
    }
    if ((ev->kind == LIFECYCLE_PROVISION || ev->kind == LIFECYCLE_STATUS) && seq > r->enabled_seq) {
        const char *status = ev->kind == LIFECYCLE_PROVISION ? "accepted" : ev->status;
        bool enabled = lifecycle_status_enables(status);
        changed |= enabled != r->enabled || r->enabled_seq == 0;
        r->enabled = enabled;
        r->enabled_seq = seq;
        snprintf(r->status, sizeof r->status, "%s", status);
        modified = true;
    }
    if (changed)
        r->gen++;
    return modified;
}
