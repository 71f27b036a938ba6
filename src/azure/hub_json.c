#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>

#include "azure/hub_internal.h"

/* Copies a JSON string member into `out`; absent or null gives "". False when the member has
 * another type or does not fit. */
static bool get_string(json_t *obj, const char *key, char *out, size_t cap)
{
    json_t *v = json_object_get(obj, key);
    out[0] = '\0';
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v))
        return false;
    size_t len = json_string_length(v);
    if (len >= cap || memchr(json_string_value(v), '\0', len))
        return false;
    memcpy(out, json_string_value(v), len + 1);
    return true;
}

/* Like get_string, but a too-long value is cut (at a UTF-8 boundary) rather than refused. */
static void get_string_cut(json_t *obj, const char *key, char *out, size_t cap)
{
    const char *s = json_string_value(json_object_get(obj, key));
    out[0] = '\0';
    if (!s)
        return;
    size_t len = strlen(s);
    if (len >= cap) {
        len = cap - 1;
        while (len > 0 && ((unsigned char)s[len] & 0xc0) == 0x80)
            len--;
    }
    memcpy(out, s, len);
    out[len] = '\0';
}

/* Etags arrive bare in bodies but some servers quote them; we keep them bare. */
static void unquote_etag(char *etag)
{
    size_t len = strlen(etag);
    if (len >= 2 && etag[0] == '"' && etag[len - 1] == '"') {
        memmove(etag, etag + 1, len - 2);
        etag[len - 2] = '\0';
    }
}

static bool parse_status(json_t *obj, enum hub_device_status *out)
{
    json_t *v = json_object_get(obj, "status");
    *out = HUB_STATUS_UNSET;
    if (!v || json_is_null(v))
        return true;
    const char *s = json_string_value(v);
    if (!s)
        return false;
    if (strcasecmp(s, "enabled") == 0)
        *out = HUB_STATUS_ENABLED;
    else if (strcasecmp(s, "disabled") == 0)
        *out = HUB_STATUS_DISABLED;
    else
        return false;
    return true;
}

static enum iot_err bad(struct hub_error *herr, const char *what)
{
    hub_error_set(herr, HUB_ERR_PROTOCOL, "IoT Hub answer: %s", what);
    return herr ? herr->code : IOT_ERR_UPSTREAM;
}

void hub_device_clear(struct hub_device *d)
{
    if (!d)
        return;
    json_decref(d->raw);
    OPENSSL_cleanse(d, sizeof *d);
    memset(d, 0, sizeof *d);
}

enum iot_err hub_device_from_json(json_t *obj, struct hub_device *out, struct hub_error *herr)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(obj))
        return bad(herr, "device is not an object");
    if (!get_string(obj, "deviceId", out->device_id, sizeof out->device_id) || !out->device_id[0])
        return bad(herr, "device without a usable deviceId");
    if (!parse_status(obj, &out->status))
        return bad(herr, "device status is neither enabled nor disabled");
    get_string_cut(obj, "statusReason", out->status_reason, sizeof out->status_reason);
    if (!get_string(obj, "etag", out->etag, sizeof out->etag) ||
        !get_string(obj, "generationId", out->generation_id, sizeof out->generation_id))
        return bad(herr, "device etag or generationId unusable");
    unquote_etag(out->etag);
    const char *cs = json_string_value(json_object_get(obj, "connectionState"));
    if (cs && strcasecmp(cs, "Connected") == 0)
        out->connection_state = HUB_CONN_CONNECTED;
    else if (cs && strcasecmp(cs, "Disconnected") == 0)
        out->connection_state = HUB_CONN_DISCONNECTED;
    json_t *auth = json_object_get(obj, "authentication");
    if (json_is_object(auth)) {
        get_string_cut(auth, "type", out->auth_type, sizeof out->auth_type);
        json_t *sym = json_object_get(auth, "symmetricKey");
        if (json_is_object(sym) &&
            (!get_string(sym, "primaryKey", out->primary_key, sizeof out->primary_key) ||
             !get_string(sym, "secondaryKey", out->secondary_key, sizeof out->secondary_key))) {
            hub_device_clear(out);
            return bad(herr, "device key is not a string of at most 88 characters");
        }
    }
    json_t *caps = json_object_get(obj, "capabilities");
    out->iot_edge = json_is_true(json_object_get(caps, "iotEdge"));
    out->raw = json_incref(obj);
    return IOT_OK;
}

void hub_twin_clear(struct hub_twin *t)
{
    if (!t)
        return;
    json_decref(t->tags);
    json_decref(t->desired);
    json_decref(t->reported);
    json_decref(t->raw);
    memset(t, 0, sizeof *t);
}

static json_t *object_or_empty(json_t *v)
{
    return json_is_object(v) ? json_incref(v) : json_object();
}

enum iot_err hub_twin_from_json(json_t *obj, struct hub_twin *out, struct hub_error *herr)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(obj))
        return bad(herr, "twin is not an object");
    if (!get_string(obj, "deviceId", out->device_id, sizeof out->device_id) || !out->device_id[0])
        return bad(herr, "twin without a usable deviceId");
    if (!get_string(obj, "etag", out->etag, sizeof out->etag))
        return bad(herr, "twin etag unusable");
    unquote_etag(out->etag);
    if (!parse_status(obj, &out->status))
        return bad(herr, "twin status is neither enabled nor disabled");
    json_t *version = json_object_get(obj, "version");
    if (json_is_integer(version))
        out->version = (int64_t)json_integer_value(version);
    json_t *props = json_object_get(obj, "properties");
    out->tags = object_or_empty(json_object_get(obj, "tags"));
    out->desired = object_or_empty(json_object_get(props, "desired"));
    out->reported = object_or_empty(json_object_get(props, "reported"));
    out->raw = json_incref(obj);
    if (!out->tags || !out->desired || !out->reported) {
        hub_twin_clear(out);
        hub_error_set(herr, HUB_ERR_INTERNAL, "out of memory");
        return IOT_ERR_NOMEM;
    }
    return IOT_OK;
}

static const char *import_mode(enum hub_bulk_mode m)
{
    switch (m) {
    case HUB_BULK_CREATE:
        return "create";
    case HUB_BULK_UPDATE:
        return "update";
    case HUB_BULK_UPDATE_IF_MATCH:
        return "updateIfMatchETag";
    case HUB_BULK_DELETE:
        return "delete";
    case HUB_BULK_DELETE_IF_MATCH:
        return "deleteIfMatchETag";
    }
    return NULL;
}

static json_t *invalid(struct hub_error *herr, json_t *doomed, const char *what, size_t i)
{
    json_decref(doomed);
    hub_error_set(herr, HUB_ERR_INVALID, "bulk: item %zu %s", i + 1, what);
    return NULL;
}

json_t *hub_bulk_body(const struct hub_bulk_item *items, size_t n, struct hub_error *herr)
{
    if (n == 0 || n > HUB_BULK_MAX) {
        hub_error_set(herr, HUB_ERR_INVALID, "bulk: between 1 and %d devices per call",
                      HUB_BULK_MAX);
        return NULL;
    }
    json_t *arr = json_array();
    if (!arr)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        const struct hub_bulk_item *it = &items[i];
        const struct hub_device_spec *d = &it->device;
        const char *mode = import_mode(it->mode);
        if (!mode)
            return invalid(herr, arr, "has an unknown mode", i);
        if (!hub_device_id_valid(d->device_id))
            return invalid(herr, arr, "has an invalid device id", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(items[j].device.device_id, d->device_id) == 0)
                return invalid(herr, arr, "repeats a device id", i);
        bool if_match =
            it->mode == HUB_BULK_UPDATE_IF_MATCH || it->mode == HUB_BULK_DELETE_IF_MATCH;
        if (if_match && (!d->etag || !*d->etag))
            return invalid(herr, arr, "needs an etag", i);
        json_t *o = json_pack("{s:s, s:s}", "id", d->device_id, "importMode", mode);
        if (!o || json_array_append_new(arr, o) != 0)
            goto nomem;
        if (if_match && json_object_set_new(o, "eTag", json_string(d->etag)) != 0)
            goto nomem;
        if (it->mode == HUB_BULK_DELETE || it->mode == HUB_BULK_DELETE_IF_MATCH)
            continue;
        if (d->status != HUB_STATUS_UNSET &&
            json_object_set_new(o, "status", json_string(hub_device_status_name(d->status))) != 0)
            goto nomem;
        if (d->status_reason &&
            json_object_set_new(o, "statusReason", json_string(d->status_reason)) != 0)
            goto nomem;
        json_t *auth = json_pack("{s:s, s:{s:s, s:s}}", "type", "sas", "symmetricKey", "primaryKey",
                                 d->primary_key ? d->primary_key : "", "secondaryKey",
                                 d->secondary_key ? d->secondary_key : "");
        if (!auth || json_object_set_new(o, "authentication", auth) != 0)
            goto nomem;
    }
    return arr;
nomem:
    json_decref(arr);
    hub_error_set(herr, HUB_ERR_INTERNAL, "bulk: out of memory");
    return NULL;
}

bool hub_bulk_results_parse(json_t *obj, const struct hub_bulk_item *items, size_t n,
                            struct hub_bulk_result *results)
{
    json_t *ok = json_object_get(obj, "isSuccessful");
    if (!json_is_boolean(ok))
        return false;
    json_t *errors = json_object_get(obj, "errors");
    if (errors && !json_is_array(errors) && !json_is_null(errors))
        return false;
    memset(results, 0, n * sizeof *results);
    bool any = false;
    size_t idx;
    json_t *e;
    json_array_foreach(errors, idx, e)
    {
        const char *id = json_string_value(json_object_get(e, "deviceId"));
        if (!id)
            continue;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(items[i].device.device_id, id) != 0)
                continue;
            struct hub_bulk_result *r = &results[i];
            get_string_cut(e, "errorCode", r->name, sizeof r->name);
            get_string_cut(e, "errorStatus", r->status, sizeof r->status);
            r->cls = hub_error_class_of_name(r->name);
            if (r->cls == HUB_OK)
                r->cls = HUB_ERR_BAD_REQUEST;
            any = true;
        }
    }
    /* "Not successful" without naming a device: we cannot tell which failed, so none is OK. */
    if (json_is_false(ok) && !any) {
        for (size_t i = 0; i < n; i++) {
            results[i].cls = HUB_ERR_BAD_REQUEST;
            snprintf(results[i].status, sizeof results[i].status, "bulk operation failed");
        }
    }
    return true;
}
