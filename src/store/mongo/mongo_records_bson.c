/* BSON form of Mender's `devices` and `log` documents (contract §2.2, §2.3):
 *
 *   devices {_id: "<device id>", tenant_id, integration_ids: [UUID, ...]}
 *   log     {_id: UUID, type, data: {...} (omitted when none), event_ts: date, expire_ts: date,
 *            status: [{integration_id: UUID, success: bool, err: "..." (omitted when none),
 *                      status: int32 (omitted when 0)}] (omitted when empty),
 *            tenant_id}
 *
 * `data` is JSON on our side and BSON there: objects, arrays, strings, numbers, booleans and
 * null map one to one, except the time fields of a device event (store_internal.h), which Go
 * keeps as time.Time and so as BSON dates. Reading maps every BSON date back to RFC 3339 text,
 * so documents Mender wrote read the same as ours. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iot-manager/b64.h"
#include "store/mongo/mongo_internal.h"
#include "store/store_internal.h"

/* Deeper than any device event; MongoDB itself refuses more than 100 levels. */
#define DATA_DEPTH_MAX 128

/* ---- JSON -> BSON ---- */

static bool append_json(bson_t *parent, const char *key, const json_t *v, enum store_data_pos pos,
                        bool is_time, int depth);

static bool append_json_object(bson_t *parent, const char *key, const json_t *obj,
                               enum store_data_pos pos, int depth)
{
    bson_t child;
    const char *k;
    json_t *member;
    if (!BSON_APPEND_DOCUMENT_BEGIN(parent, key, &child))
        return false;
    json_object_foreach((json_t *)obj, k, member)
    {
        bool is_time;
        enum store_data_pos cpos = store_data_child(pos, k, &is_time);
        if (!append_json(&child, k, member, cpos, is_time, depth + 1)) {
            bson_append_document_end(parent, &child);
            return false;
        }
    }
    return bson_append_document_end(parent, &child);
}

static bool append_json_array(bson_t *parent, const char *key, const json_t *arr,
                              enum store_data_pos pos, int depth)
{
    bson_t child;
    size_t i;
    json_t *member;
    if (!BSON_APPEND_ARRAY_BEGIN(parent, key, &child))
        return false;
    json_array_foreach(arr, i, member)
    {
        char buf[16];
        const char *index;
        bool is_time;
        enum store_data_pos cpos = store_data_child(pos, NULL, &is_time);
        bson_uint32_to_string((uint32_t)i, &index, buf, sizeof buf);
        if (!append_json(&child, index, member, cpos, is_time, depth + 1)) {
            bson_append_array_end(parent, &child);
            return false;
        }
    }
    return bson_append_array_end(parent, &child);
}

static bool append_json(bson_t *parent, const char *key, const json_t *v, enum store_data_pos pos,
                        bool is_time, int depth)
{
    if (depth > DATA_DEPTH_MAX)
        return false;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return append_json_object(parent, key, v, pos, depth);
    case JSON_ARRAY:
        return append_json_array(parent, key, v, pos, depth);
    case JSON_STRING: {
        int64_t ms;
        if (is_time && store_rfc3339_parse(json_string_value(v), &ms))
            return BSON_APPEND_DATE_TIME(parent, key, ms);
        size_t len = json_string_length(v);
        if (len > INT32_MAX)
            return false;
        return bson_append_utf8(parent, key, -1, json_string_value(v), (int)len);
    }
    case JSON_INTEGER: {
        /* what the Go driver makes of an int: int32 when it fits */
        json_int_t n = json_integer_value(v);
        if (n >= INT32_MIN && n <= INT32_MAX)
            return BSON_APPEND_INT32(parent, key, (int32_t)n);
        return BSON_APPEND_INT64(parent, key, (int64_t)n);
    }
    case JSON_REAL:
        return BSON_APPEND_DOUBLE(parent, key, json_real_value(v));
    case JSON_TRUE:
    case JSON_FALSE:
        return BSON_APPEND_BOOL(parent, key, json_is_true(v));
    case JSON_NULL:
    default:
        return BSON_APPEND_NULL(parent, key);
    }
}

/* ---- BSON -> JSON ---- */

static json_t *value_to_json(const bson_iter_t *it, int depth);

/* The members of the document or array under `it` as a JSON object or array. */
static json_t *container_to_json(const bson_iter_t *it, bool array, int depth)
{
    bson_iter_t child;
    if (depth > DATA_DEPTH_MAX || !bson_iter_recurse(it, &child))
        return NULL;
    json_t *out = array ? json_array() : json_object();
    while (out && bson_iter_next(&child)) {
        json_t *v = value_to_json(&child, depth + 1);
        int rc = -1;
        if (v)
            rc = array ? json_array_append_new(out, v)
                       : json_object_set_new(out, bson_iter_key(&child), v);
        if (rc != 0) {
            json_decref(out);
            out = NULL;
        }
    }
    return out;
}

/* Binary data as Go's encoding/json shows it: a UUID in its text form, anything else base64. */
static json_t *binary_to_json(const bson_iter_t *it)
{
    struct uuid u;
    if (mongo_iter_uuid(it, &u)) {
        char text[UUID_STR_LEN + 1];
        uuid_format(&u, text);
        return json_string(text);
    }
    bson_subtype_t subtype;
    uint32_t len = 0;
    const uint8_t *data = NULL;
    bson_iter_binary(it, &subtype, &len, &data);
    size_t cap = B64_ENCODED_LEN((size_t)len) + 1;
    char *text = malloc(cap);
    if (!text)
        return NULL;
    json_t *out = NULL;
    if (b64_encode(data, len, text, cap, false) >= 0)
        out = json_string(text);
    free(text);
    return out;
}

/* A JSON value for the BSON value under `it` (new reference; NULL on failure). */
static json_t *value_to_json(const bson_iter_t *it, int depth)
{
    switch (bson_iter_type(it)) {
    case BSON_TYPE_DOCUMENT:
        return container_to_json(it, false, depth);
    case BSON_TYPE_ARRAY:
        return container_to_json(it, true, depth);
    case BSON_TYPE_UTF8: {
        uint32_t len = 0;
        const char *s = bson_iter_utf8(it, &len);
        return json_stringn(s, len);
    }
    case BSON_TYPE_INT32:
        return json_integer(bson_iter_int32(it));
    case BSON_TYPE_INT64:
        return json_integer(bson_iter_int64(it));
    case BSON_TYPE_DOUBLE: {
        /* JSON has no NaN or infinities: those become null */
        json_t *r = json_real(bson_iter_double(it));
        return r ? r : json_null();
    }
    case BSON_TYPE_BOOL:
        return json_boolean(bson_iter_bool(it));
    case BSON_TYPE_DATE_TIME: {
        char text[STORE_RFC3339_MAX];
        store_rfc3339_format(bson_iter_date_time(it), text);
        return json_string(text);
    }
    case BSON_TYPE_BINARY:
        return binary_to_json(it);
    case BSON_TYPE_OID: {
        char hex[25];
        bson_oid_to_string(bson_iter_oid(it), hex);
        return json_string(hex);
    }
    default:
        /* null, and types no device event carries */
        return json_null();
    }
}

/* ---- log documents ---- */

static bool append_status(bson_t *doc, const struct event_record *ev)
{
    bson_t arr;
    if (!BSON_APPEND_ARRAY_BEGIN(doc, "status", &arr))
        return false;
    bool ok = true;
    for (size_t i = 0; ok && i < ev->n_statuses; i++) {
        const struct delivery_status *ds = &ev->statuses[i];
        char buf[16];
        const char *index;
        bson_t item;
        bson_uint32_to_string((uint32_t)i, &index, buf, sizeof buf);
        ok = BSON_APPEND_DOCUMENT_BEGIN(&arr, index, &item);
        ok = ok && mongo_append_uuid(&item, "integration_id", &ds->integration_id);
        ok = ok && BSON_APPEND_BOOL(&item, "success", ds->success);
        if (ok && ds->error && ds->error[0])
            ok = BSON_APPEND_UTF8(&item, "err", ds->error);
        if (ok && ds->status_code != 0)
            ok = BSON_APPEND_INT32(&item, "status", ds->status_code);
        ok = ok && bson_append_document_end(&arr, &item);
    }
    return bson_append_array_end(doc, &arr) && ok;
}

enum iot_err mongo_event_to_bson(const struct event_record *ev, bson_t *doc, struct iot_error *err)
{
    if (!ev->type)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: event without a type");
    bool ok = mongo_append_uuid(doc, "_id", &ev->id);
    ok = ok && BSON_APPEND_UTF8(doc, "type", ev->type);
    /* bson omitempty on an interface: no data, no field */
    if (ok && ev->data && !json_is_null(ev->data))
        ok = append_json(doc, "data", ev->data, STORE_DATA_TOP, false, 0);
    ok = ok && BSON_APPEND_DATE_TIME(doc, "event_ts", ev->event_ts_ms);
    ok = ok && BSON_APPEND_DATE_TIME(doc, "expire_ts", ev->expire_ts_ms);
    if (ok && ev->n_statuses)
        ok = append_status(doc, ev);
    ok = ok && BSON_APPEND_UTF8(doc, "tenant_id", ev->tenant_id ? ev->tenant_id : "");
    if (!ok)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot encode event");
    return IOT_OK;
}

static enum iot_err malformed(struct iot_error *err, const char *what)
{
    return iot_error_set(err, IOT_ERR_INTERNAL, "store: malformed %s", what);
}

/* Copies the string under `it` (or "" when `it` is NULL or holds null) into *out, replacing
 * what was there. */
static enum iot_err copy_str(const bson_iter_t *it, char **out, const char *what,
                             struct iot_error *err)
{
    const char *value = "";
    free(*out);
    *out = NULL;
    if (it && !BSON_ITER_HOLDS_NULL(it)) {
        if (!BSON_ITER_HOLDS_UTF8(it))
            return malformed(err, what);
        value = bson_iter_utf8(it, NULL);
    }
    *out = strdup(value);
    return *out ? IOT_OK : iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
}

/* A time stored as a date (or, leniently, as a number of milliseconds). */
static bool read_time(const bson_iter_t *it, int64_t *ms)
{
    if (BSON_ITER_HOLDS_DATE_TIME(it)) {
        *ms = bson_iter_date_time(it);
        return true;
    }
    if (BSON_ITER_HOLDS_INT32(it) || BSON_ITER_HOLDS_INT64(it)) {
        *ms = bson_iter_as_int64(it);
        return true;
    }
    return false;
}

static enum iot_err read_status_item(const bson_iter_t *item, struct delivery_status *ds,
                                     struct iot_error *err)
{
    bson_iter_t it;
    bool have_id = false;
    if (!BSON_ITER_HOLDS_DOCUMENT(item) || !bson_iter_recurse(item, &it))
        return malformed(err, "event status");
    while (bson_iter_next(&it)) {
        const char *key = bson_iter_key(&it);
        if (strcmp(key, "integration_id") == 0) {
            if (!mongo_iter_uuid(&it, &ds->integration_id))
                return malformed(err, "event status");
            have_id = true;
        } else if (strcmp(key, "success") == 0) {
            ds->success = bson_iter_as_bool(&it);
        } else if (strcmp(key, "err") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
            const char *msg = bson_iter_utf8(&it, NULL);
            if (msg[0] && !(ds->error = strdup(msg)))
                return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        } else if (strcmp(key, "status") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
            int64_t code = bson_iter_as_int64(&it);
            ds->status_code = code < INT32_MIN || code > INT32_MAX ? 0 : (int)code;
        }
    }
    return have_id ? IOT_OK : malformed(err, "event status");
}

static enum iot_err read_statuses(const bson_iter_t *field, struct event_record *out,
                                  struct iot_error *err)
{
    bson_iter_t it;
    if (BSON_ITER_HOLDS_NULL(field))
        return IOT_OK;
    if (!BSON_ITER_HOLDS_ARRAY(field) || !bson_iter_recurse(field, &it))
        return malformed(err, "event status");
    size_t cap = 0;
    while (bson_iter_next(&it)) {
        if (out->n_statuses == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            struct delivery_status *grown = realloc(out->statuses, ncap * sizeof *grown);
            if (!grown)
                return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
            out->statuses = grown;
            cap = ncap;
        }
        struct delivery_status *ds = &out->statuses[out->n_statuses++];
        memset(ds, 0, sizeof *ds);
        enum iot_err rc = read_status_item(&it, ds, err);
        if (rc != IOT_OK)
            return rc;
    }
    return IOT_OK;
}

enum iot_err mongo_event_from_bson(const bson_t *doc, struct event_record *out,
                                   struct iot_error *err)
{
    bson_iter_t it;
    enum iot_err rc = IOT_OK;
    bool have_id = false, have_type = false, have_tenant = false;
    memset(out, 0, sizeof *out);
    if (!bson_iter_init(&it, doc)) {
        rc = malformed(err, "event");
        goto out;
    }
    while (rc == IOT_OK && bson_iter_next(&it)) {
        const char *key = bson_iter_key(&it);
        if (strcmp(key, "_id") == 0) {
            if (!mongo_iter_uuid(&it, &out->id))
                rc = malformed(err, "event id");
            have_id = true;
        } else if (strcmp(key, "type") == 0) {
            rc = copy_str(&it, &out->type, "event type", err);
            have_type = true;
        } else if (strcmp(key, "data") == 0) {
            json_decref(out->data);
            out->data = NULL;
            if (!BSON_ITER_HOLDS_NULL(&it) && !(out->data = value_to_json(&it, 0)))
                rc = malformed(err, "event data");
        } else if (strcmp(key, "event_ts") == 0) {
            if (!read_time(&it, &out->event_ts_ms))
                rc = malformed(err, "event time");
        } else if (strcmp(key, "expire_ts") == 0) {
            if (!read_time(&it, &out->expire_ts_ms))
                rc = malformed(err, "event expiry");
        } else if (strcmp(key, "status") == 0 && !out->statuses) {
            rc = read_statuses(&it, out, err);
        } else if (strcmp(key, "tenant_id") == 0) {
            rc = copy_str(&it, &out->tenant_id, "event tenant_id", err);
            have_tenant = true;
        }
    }
    if (rc == IOT_OK && !have_id)
        rc = malformed(err, "event id");
    if (rc == IOT_OK && !have_type)
        rc = copy_str(NULL, &out->type, "event type", err);
    if (rc == IOT_OK && !have_tenant)
        rc = copy_str(NULL, &out->tenant_id, "event tenant_id", err);
out:
    if (rc != IOT_OK)
        event_record_clear(out);
    return rc;
}

/* ---- devices documents ---- */

static enum iot_err read_integration_ids(const bson_iter_t *field, struct device_record *out,
                                         struct iot_error *err)
{
    bson_iter_t it;
    if (BSON_ITER_HOLDS_NULL(field))
        return IOT_OK;
    if (!BSON_ITER_HOLDS_ARRAY(field) || !bson_iter_recurse(field, &it))
        return malformed(err, "device integration_ids");
    size_t cap = 0;
    while (bson_iter_next(&it)) {
        if (out->n_integrations == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            struct uuid *grown = realloc(out->integration_ids, ncap * sizeof *grown);
            if (!grown)
                return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
            out->integration_ids = grown;
            cap = ncap;
        }
        if (!mongo_iter_uuid(&it, &out->integration_ids[out->n_integrations]))
            return malformed(err, "device integration id");
        out->n_integrations++;
    }
    return IOT_OK;
}

enum iot_err mongo_device_from_bson(const bson_t *doc, struct device_record *out,
                                    struct iot_error *err)
{
    bson_iter_t it;
    enum iot_err rc = IOT_OK;
    memset(out, 0, sizeof *out);
    if (!bson_iter_init(&it, doc)) {
        rc = malformed(err, "device");
        goto out;
    }
    while (rc == IOT_OK && bson_iter_next(&it)) {
        const char *key = bson_iter_key(&it);
        if (strcmp(key, "_id") == 0) {
            rc = BSON_ITER_HOLDS_UTF8(&it) ? copy_str(&it, &out->id, "device id", err)
                                           : malformed(err, "device id");
        } else if (strcmp(key, "tenant_id") == 0) {
            rc = copy_str(&it, &out->tenant_id, "device tenant_id", err);
        } else if (strcmp(key, "integration_ids") == 0 && !out->integration_ids) {
            rc = read_integration_ids(&it, out, err);
        }
    }
    if (rc == IOT_OK && !out->id)
        rc = malformed(err, "device id");
    if (rc == IOT_OK && !out->tenant_id)
        rc = copy_str(NULL, &out->tenant_id, "device tenant_id", err);
out:
    if (rc != IOT_OK)
        device_record_clear(out);
    return rc;
}
