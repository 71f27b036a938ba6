/* Device twins: Mender's device state API on top of the hub port, with Azure's twin rules checked
 * before any call and hub failures mapped to statuses an operator can act on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iot-manager/app.h"
#include "iot-manager/lifecycle.h"
#include "iot-manager/log.h"

#define TWIN_MAX_DEPTH     10
#define TWIN_MAX_KEY_BYTES 1024
#define TWIN_MAX_STRING    4096
#define TWIN_MAX_DESIRED   (32 * 1024)
#define TWIN_MAX_SAFE_INT  4503599627370495LL /* 2^52 - 1 */

void device_state_clear(struct device_state *st)
{
    if (!st)
        return;
    json_decref(st->desired);
    json_decref(st->reported);
    memset(st, 0, sizeof *st);
}

/* ---- Azure's twin rules ---- */

/* Azure counts characters, excluding C0/C1 control characters, of UTF-8 strings. */
static size_t twin_string_size(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xC0) == 0x80)
            continue; /* continuation byte */
        if (c < 0x20 || c == 0x7f)
            continue;
        if (c == 0xC2 && i + 1 < len && (unsigned char)s[i + 1] >= 0x80 &&
            (unsigned char)s[i + 1] <= 0x9f)
            continue; /* C1 control */
        n++;
    }
    return n;
}

static enum iot_err check_key(const char *key, const char *path, struct iot_error *err)
{
    size_t len = strlen(key);
    if (len == 0)
        return iot_error_set(err, IOT_ERR_INVALID, "malformed request body: %s: empty key", path);
    if (key[0] == '$')
        return iot_error_set(err, IOT_ERR_INVALID,
                             "malformed request body: %s: key \"%.64s\" starts with '$': keys "
                             "starting with '$' are reserved by Azure IoT Hub",
                             path, key);
    if (len > TWIN_MAX_KEY_BYTES)
        return iot_error_set(err, IOT_ERR_INVALID,
                             "malformed request body: %s: key longer than %d bytes", path,
                             TWIN_MAX_KEY_BYTES);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        /* C1 controls (U+0080..U+009F, UTF-8 C2 80..C2 9F) are refused by Azure as C0 ones are */
        bool c1 = c == 0xC2 && i + 1 < len && (unsigned char)key[i + 1] >= 0x80 &&
                  (unsigned char)key[i + 1] <= 0x9f;
        if (c == '.' || c == ' ' || c < 0x20 || c == 0x7f || c1)
            return iot_error_set(err, IOT_ERR_INVALID,
                                 "malformed request body: %s: key \"%.64s\" contains '.', a space "
                                 "or a control character, which Azure IoT Hub does not allow",
                                 path, key);
    }
    return IOT_OK;
}

static enum iot_err check_value(const json_t *v, int depth, bool allow_null, const char *path,
                                size_t *size, struct iot_error *err)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (depth > TWIN_MAX_DEPTH)
            return iot_error_set(err, IOT_ERR_INVALID,
                                 "malformed request body: %s: nested deeper than %d levels", path,
                                 TWIN_MAX_DEPTH);
        const char *key;
        const json_t *child;
        json_object_foreach((json_t *)v, key, child)
        {
            enum iot_err rc = check_key(key, path, err);
            if (rc != IOT_OK)
                return rc;
            *size += twin_string_size(key, strlen(key));
            char sub[256];
            snprintf(sub, sizeof sub, "%s.%.64s", path, key);
            if ((rc = check_value(child, depth + 1, allow_null, sub, size, err)) != IOT_OK)
                return rc;
        }
        return IOT_OK;
    }
    case JSON_ARRAY: {
        size_t i;
        const json_t *child;
        json_array_foreach(v, i, child)
        {
            enum iot_err rc = check_value(child, depth + 1, false, path, size, err);
            if (rc != IOT_OK)
                return rc;
        }
        return IOT_OK;
    }
    case JSON_STRING: {
        size_t n = twin_string_size(json_string_value(v), json_string_length(v));
        if (n > TWIN_MAX_STRING)
            return iot_error_set(err, IOT_ERR_INVALID,
                                 "malformed request body: %s: string longer than %d characters",
                                 path, TWIN_MAX_STRING);
        *size += n;
        return IOT_OK;
    }
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        if (i > TWIN_MAX_SAFE_INT || i < -TWIN_MAX_SAFE_INT - 1)
            return iot_error_set(err, IOT_ERR_INVALID,
                                 "malformed request body: %s: integer outside +-2^52", path);
        *size += 8;
        return IOT_OK;
    }
    case JSON_REAL:
        *size += 8;
        return IOT_OK;
    case JSON_TRUE:
    case JSON_FALSE:
        *size += 4;
        return IOT_OK;
    case JSON_NULL:
        if (!allow_null)
            return iot_error_set(err, IOT_ERR_INVALID,
                                 "malformed request body: %s: null is only allowed to remove a "
                                 "property (PATCH)",
                                 path);
        return IOT_OK;
    }
    return IOT_ERR_INTERNAL;
}

enum iot_err app_twin_validate_desired(const json_t *desired, bool allow_null,
                                       struct iot_error *err)
{
    if (!json_is_object(desired))
        return iot_error_set(err, IOT_ERR_INVALID,
                             "malformed request body: desired: must be a JSON object");
    size_t size = 0;
    /* Azure counts the levels below "desired": its deepest valid twin nests ten objects there */
    enum iot_err rc = check_value(desired, 0, allow_null, "desired", &size, err);
    if (rc == IOT_OK && size > TWIN_MAX_DESIRED)
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           "malformed request body: desired: %zu bytes as Azure counts them, over "
                           "the 32 KB limit of desired properties",
                           size);
    return rc;
}

/* ---- hub access ---- */

/* Maps a hub failure to what the API answers, with a message an operator can act on. */
static enum iot_err hub_failure(const struct hub_error *herr, const struct integration *in,
                                const char *device_id, int64_t *retry_after_ms,
                                struct iot_error *err)
{
    const char *host = in->credentials.sas.hostname ? in->credentials.sas.hostname : "";
    char id[UUID_STR_LEN + 1];
    uuid_format(&in->id, id);
    switch (herr->cls) {
    case HUB_ERR_NOT_FOUND:
        return iot_error_set(err, IOT_ERR_NOT_FOUND,
                             "device %s does not exist in the Azure IoT Hub %s", device_id, host);
    case HUB_ERR_THROTTLED:
    case HUB_ERR_QUOTA_EXCEEDED:
        if (retry_after_ms)
            *retry_after_ms = herr->retry_after_ms > 0 ? herr->retry_after_ms : 1000;
        return iot_error_set(err, IOT_ERR_THROTTLED,
                             "the Azure IoT Hub %s is throttling requests; retry later", host);
    case HUB_ERR_UNAUTHORIZED:
        return iot_error_set(err, IOT_ERR_UPSTREAM,
                             "the Azure IoT Hub %s rejected the credentials of integration %s: "
                             "check that its connection string is current and that the policy "
                             "grants RegistryRead, RegistryWrite and ServiceConnect",
                             host, id);
    case HUB_ERR_BAD_REQUEST:
        return iot_error_set(err, IOT_ERR_INVALID, "the Azure IoT Hub refused the request: %s",
                             herr->msg);
    case HUB_ERR_INVALID:
        return iot_error_set(err, IOT_ERR_INVALID, "%s", herr->msg);
    case HUB_ERR_UNREACHABLE:
    case HUB_ERR_TLS:
    case HUB_ERR_BLOCKED:
    case HUB_ERR_TIMEOUT:
    case HUB_ERR_TRANSIENT:
    case HUB_ERR_PROTOCOL:
        return iot_error_set(err, IOT_ERR_UPSTREAM,
                             "cannot use the Azure IoT Hub %s of integration %s: %s", host, id,
                             herr->msg);
    default:
        return iot_error_set(err, IOT_ERR_INTERNAL, "IoT Hub call failed: %s", herr->msg);
    }
}

/* A shallow copy is enough: the members are shared by reference, nothing modifies them, and
 * only the copy loses the two keys. The hub's `$metadata` is as large as the properties, so a
 * deep copy would copy it only to drop it. */
static json_t *without_meta(const json_t *props)
{
    json_t *copy = json_is_object(props) ? json_copy((json_t *)props) : json_object();
    if (copy) {
        json_object_del(copy, "$metadata");
        json_object_del(copy, "$version");
    }
    return copy;
}

static void state_from_twin(const struct hub_twin *twin, struct device_state *out)
{
    out->desired = without_meta(twin->desired);
    out->reported = without_meta(twin->reported);
    snprintf(out->etag, sizeof out->etag, "%s", twin->etag);
}

/* The integration as a usable hub target, after checking the device is linked to it. */
static enum iot_err linked_integration(struct app *app, const char *tenant, const char *device_id,
                                       const struct uuid *integration_id, struct integration *out,
                                       struct iot_error *err)
{
    enum iot_err rc = app_device_integration_get(app, tenant, device_id, integration_id, out, err);
    if (rc != IOT_OK)
        return rc;
    if (out->provider != PROVIDER_IOT_HUB) {
        integration_clear(out);
        return iot_error_set(err, IOT_ERR_NOT_FOUND, "unknown integration provider");
    }
    if (!app->hub) {
        integration_clear(out);
        return iot_error_set(err, IOT_ERR_INTERNAL, "no IoT Hub client configured");
    }
    return IOT_OK;
}

enum iot_err app_device_state_get(struct app *app, const char *tenant, const char *device_id,
                                  const struct uuid *integration_id, struct device_state *out,
                                  int64_t *retry_after_ms, struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    struct integration in = {0};
    enum iot_err rc = linked_integration(app, tenant, device_id, integration_id, &in, err);
    if (rc != IOT_OK)
        return rc;
    struct connstr cs;
    (void)lifecycle_integration_connstr(&in, &cs); /* a missing key: the hub call says so */
    struct hub_twin twin = {0};
    struct hub_error herr = {0};
    rc = hub_twin_get(app->hub, &cs, device_id, &twin, &herr);
    if (rc != IOT_OK)
        rc = hub_failure(&herr, &in, device_id, retry_after_ms, err);
    else
        state_from_twin(&twin, out);
    hub_twin_clear(&twin);
    integration_clear(&in);
    return rc;
}

enum iot_err app_device_states(struct app *app, const char *tenant, const char *device_id,
                               json_t **out, struct iot_error *err)
{
    *out = NULL;
    struct device_record dev = {0};
    enum iot_err rc = store_device_get(app->store, tenant, device_id, &dev, err);
    if (rc != IOT_OK)
        return rc == IOT_ERR_NOT_FOUND ? iot_error_set(err, rc, "device not found") : rc;
    json_t *map = json_object();
    for (size_t i = 0; rc == IOT_OK && i < dev.n_integrations; i++) {
        struct device_state st;
        struct iot_error one = {0};
        rc = app_device_state_get(app, tenant, device_id, &dev.integration_ids[i], &st, NULL, &one);
        if (rc == IOT_ERR_NOT_FOUND && (strcmp(one.msg, "integration not found") == 0 ||
                                        strcmp(one.msg, "unknown integration provider") == 0)) {
            /* as Mender: links to integrations that are gone or not twin-capable are skipped */
            rc = IOT_OK;
            continue;
        }
        if (rc != IOT_OK) {
            if (err)
                *err = one;
            break;
        }
        char id[UUID_STR_LEN + 1];
        uuid_format(&dev.integration_ids[i], id);
        json_t *entry = json_object();
        json_object_set_new(entry, "desired", st.desired);
        json_object_set_new(entry, "reported", st.reported);
        json_object_set_new(map, id, entry);
        st.desired = st.reported = NULL;
        device_state_clear(&st);
    }
    device_record_clear(&dev);
    if (rc != IOT_OK) {
        json_decref(map);
        return rc;
    }
    *out = map;
    return IOT_OK;
}

enum iot_err app_device_state_write(struct app *app, const char *tenant, const char *device_id,
                                    const struct uuid *integration_id, enum device_state_write mode,
                                    json_t *desired, const char *if_match, struct device_state *out,
                                    bool *precondition_failed, int64_t *retry_after_ms,
                                    struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    *precondition_failed = false;
    enum iot_err rc = app_twin_validate_desired(desired, mode == DEVICE_STATE_MERGE, err);
    if (rc != IOT_OK)
        return rc;
    struct integration in = {0};
    if ((rc = linked_integration(app, tenant, device_id, integration_id, &in, err)) != IOT_OK)
        return rc;
    struct connstr cs;
    (void)lifecycle_integration_connstr(&in, &cs); /* a missing key: the hub call says so */
    struct hub_twin current = {0};
    struct hub_twin updated = {0};
    struct hub_error herr = {0};

    if (mode == DEVICE_STATE_MERGE) {
        rc = hub_twin_patch(app->hub, &cs, device_id, NULL, desired, if_match, &updated, &herr);
    } else {
        /* Replace keeps the tags: read the twin, write desired + its tags on its etag. */
        rc = hub_twin_get(app->hub, &cs, device_id, &current, &herr);
        if (rc == IOT_OK && if_match && strcmp(if_match, "*") != 0 &&
            strcmp(if_match, current.etag) != 0) {
            herr.cls = HUB_ERR_PRECONDITION_FAILED;
            rc = IOT_ERR_CONFLICT;
        } else if (rc == IOT_OK) {
            rc = hub_twin_replace(app->hub, &cs, device_id, current.tags, desired, current.etag,
                                  &updated, &herr);
        }
    }
    if (rc == IOT_OK) {
        state_from_twin(&updated, out);
    } else if (herr.cls == HUB_ERR_PRECONDITION_FAILED) {
        if (if_match) {
            *precondition_failed = true;
            rc = iot_error_set(err, IOT_ERR_CONFLICT,
                               "precondition failed: the device twin changed since it was read");
        } else {
            rc = iot_error_set(err, IOT_ERR_CONFLICT, "conflict when updating the device state");
        }
    } else {
        rc = hub_failure(&herr, &in, device_id, retry_after_ms, err);
    }
    hub_twin_clear(&current);
    hub_twin_clear(&updated);
    integration_clear(&in);
    return rc;
}

enum iot_err app_device_unlink_all(struct app *app, const char *tenant, const char *device_id,
                                   struct iot_error *err)
{
    enum iot_err rc = store_device_delete(app->store, tenant, device_id, err);
    if (rc == IOT_ERR_NOT_FOUND)
        return iot_error_set(err, rc, "device not found");
    return rc;
}
