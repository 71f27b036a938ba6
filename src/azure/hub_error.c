#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

#include "azure/hub_internal.h"

static const struct {
    const char *name;
    enum iot_err code;
    bool retryable;
} class_table[HUB_ERR__COUNT] = {
    [HUB_OK] = {"ok", IOT_OK, false},
    [HUB_ERR_NOT_FOUND] = {"not found", IOT_ERR_NOT_FOUND, false},
    [HUB_ERR_ALREADY_EXISTS] = {"already exists", IOT_ERR_CONFLICT, false},
    [HUB_ERR_PRECONDITION_FAILED] = {"precondition failed", IOT_ERR_CONFLICT, false},
    [HUB_ERR_THROTTLED] = {"throttled", IOT_ERR_THROTTLED, true},
    [HUB_ERR_QUOTA_EXCEEDED] = {"quota exceeded", IOT_ERR_FORBIDDEN, false},
    [HUB_ERR_UNAUTHORIZED] = {"unauthorized", IOT_ERR_UNAUTHORIZED, false},
    [HUB_ERR_BAD_REQUEST] = {"bad request", IOT_ERR_INVALID, false},
    [HUB_ERR_TRANSIENT] = {"transient server error", IOT_ERR_UNAVAILABLE, true},
    [HUB_ERR_TIMEOUT] = {"timeout", IOT_ERR_TIMEOUT, true},
    [HUB_ERR_UNREACHABLE] = {"unreachable", IOT_ERR_UNAVAILABLE, true},
    [HUB_ERR_TLS] = {"tls failure", IOT_ERR_UNAVAILABLE, false},
    [HUB_ERR_BLOCKED] = {"address not allowed", IOT_ERR_FORBIDDEN, false},
    [HUB_ERR_PROTOCOL] = {"unusable answer", IOT_ERR_UPSTREAM, false},
    [HUB_ERR_INVALID] = {"invalid request", IOT_ERR_INVALID, false},
    [HUB_ERR_INTERNAL] = {"internal error", IOT_ERR_INTERNAL, false},
};

const char *hub_error_class_name(enum hub_error_class cls)
{
    if ((unsigned)cls >= HUB_ERR__COUNT)
        return "unknown";
    return class_table[cls].name;
}

bool hub_error_is_retryable(enum hub_error_class cls)
{
    return (unsigned)cls < HUB_ERR__COUNT && class_table[cls].retryable;
}

enum iot_err hub_error_class_to_iot(enum hub_error_class cls)
{
    if ((unsigned)cls >= HUB_ERR__COUNT)
        return IOT_ERR_INTERNAL;
    return class_table[cls].code;
}

enum iot_err hub_error_to_iot(const struct hub_error *herr, struct iot_error *err)
{
    if (err) {
        err->code = herr->code;
        snprintf(err->msg, sizeof err->msg, "%s", herr->msg);
    }
    return herr->code;
}

void hub_error_set(struct hub_error *herr, enum hub_error_class cls, const char *fmt, ...)
{
    if (!herr)
        return;
    herr->cls = cls;
    herr->code = hub_error_class_to_iot(cls);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(herr->msg, sizeof herr->msg, fmt, ap);
    va_end(ap);
}

/* Azure error names (C# ErrorCode / IotHubServiceErrorCode) by the class they belong to. */
static const struct {
    const char *name;
    enum hub_error_class cls;
} name_table[] = {
    {"DeviceNotFound", HUB_ERR_NOT_FOUND},
    {"ModuleNotFound", HUB_ERR_NOT_FOUND},
    {"DeviceAlreadyExists", HUB_ERR_ALREADY_EXISTS},
    {"ModuleAlreadyExistsOnDevice", HUB_ERR_ALREADY_EXISTS},
    {"PreconditionFailed", HUB_ERR_PRECONDITION_FAILED},
    {"GenericTooManyRequests", HUB_ERR_THROTTLED},
    {"ThrottlingException", HUB_ERR_THROTTLED},
    {"ThrottleBacklogLimitExceeded", HUB_ERR_THROTTLED},
    {"ThrottlingBacklogTimeout", HUB_ERR_THROTTLED},
    {"ThrottlingMaxActiveJobCountExceeded", HUB_ERR_THROTTLED},
    {"DeviceThrottlingLimitExceeded", HUB_ERR_THROTTLED},
    {"IotHubQuotaExceeded", HUB_ERR_QUOTA_EXCEEDED},
    {"JobQuotaExceeded", HUB_ERR_QUOTA_EXCEEDED},
    {"TooManyDevices", HUB_ERR_QUOTA_EXCEEDED},
    {"IotHubUnauthorizedAccess", HUB_ERR_UNAUTHORIZED},
    {"IotHubUnauthorized", HUB_ERR_UNAUTHORIZED},
    {"ArgumentInvalid", HUB_ERR_BAD_REQUEST},
    {"ArgumentNull", HUB_ERR_BAD_REQUEST},
    {"IotHubFormatError", HUB_ERR_BAD_REQUEST},
    {"InvalidProtocolVersion", HUB_ERR_BAD_REQUEST},
    {"DeviceDefinedMultipleTimes", HUB_ERR_BAD_REQUEST},
    {"BulkRegistryOperationFailure", HUB_ERR_BAD_REQUEST},
    {"RequestTimeout", HUB_ERR_TIMEOUT},
    {"ServerError", HUB_ERR_TRANSIENT},
    {"InternalServerError", HUB_ERR_TRANSIENT},
    {"ServiceUnavailable", HUB_ERR_TRANSIENT},
    {"GatewayTimeout", HUB_ERR_TRANSIENT},
};

enum hub_error_class hub_error_class_of_name(const char *name)
{
    if (!name)
        return HUB_OK;
    for (size_t i = 0; i < sizeof name_table / sizeof name_table[0]; i++)
        if (strcmp(name, name_table[i].name) == 0)
            return name_table[i].cls;
    return HUB_OK;
}

static enum hub_error_class class_of_status(int status)
{
    switch (status) {
    case 400:
        return HUB_ERR_BAD_REQUEST;
    case 401:
        return HUB_ERR_UNAUTHORIZED;
    case 403:
        return HUB_ERR_QUOTA_EXCEEDED; /* as Node's client: 403 is the quota family */
    case 404:
        return HUB_ERR_NOT_FOUND;
    case 408:
        return HUB_ERR_TIMEOUT;
    case 409:
        return HUB_ERR_ALREADY_EXISTS;
    case 412:
        return HUB_ERR_PRECONDITION_FAILED;
    case 413:
        return HUB_ERR_QUOTA_EXCEEDED;
    case 429:
        return HUB_ERR_THROTTLED;
    case 501:
    case 505:
        return HUB_ERR_PROTOCOL; /* will not change on a retry */
    default:
        break;
    }
    if (status >= 500 && status <= 599)
        return HUB_ERR_TRANSIENT;
    if (status >= 400 && status <= 499)
        return HUB_ERR_BAD_REQUEST;
    return HUB_ERR_PROTOCOL; /* 1xx, unfollowed 3xx, or nonsense */
}

/* Azure name of a numeric code, for the codes our classes care about. */
static const char *name_of_number(long number)
{
    switch (number) {
    case 400004:
        return "ArgumentInvalid";
    case 400005:
        return "ArgumentNull";
    case 400006:
        return "IotHubFormatError";
    case 401002:
        return "IotHubUnauthorizedAccess";
    case 403001:
        return "JobQuotaExceeded";
    case 403002:
        return "IotHubQuotaExceeded";
    case 404001:
        return "DeviceNotFound";
    case 404010:
        return "ModuleNotFound";
    case 408000:
        return "RequestTimeout";
    case 409001:
        return "DeviceAlreadyExists";
    case 412001:
        return "PreconditionFailed";
    case 413002:
        return "TooManyDevices";
    case 429001:
        return "ThrottlingException";
    case 429002:
        return "ThrottleBacklogLimitExceeded";
    case 429003:
        return "ThrottlingBacklogTimeout";
    case 500001:
        return "ServerError";
    case 503001:
        return "ServiceUnavailable";
    case 504101:
        return "GatewayTimeout";
    default:
        return NULL;
    }
}

static void copy_bounded(char *dst, size_t cap, const char *src, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* An Azure error name is an identifier; anything else in that place is not one. */
static bool plausible_name(const char *s, size_t len)
{
    if (len == 0 || len >= HUB_ERROR_CODE_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')))
            return false;
    }
    return true;
}

/* Shapes 2 and 3: {"errorCode":404103 or "Name","message":"..."}. */
static void parse_error_object(json_t *obj, struct hub_error *out, char *text, size_t text_cap)
{
    json_t *code = json_object_get(obj, "errorCode");
    if (json_is_integer(code)) {
        out->number = (long)json_integer_value(code);
    } else if (json_is_string(code)) {
        const char *s = json_string_value(code);
        char *end;
        long v = strtol(s, &end, 10);
        if (*s && !*end)
            out->number = v;
        else if (plausible_name(s, strlen(s)))
            copy_bounded(out->name, sizeof out->name, s, strlen(s));
    }
    const char *msg = json_string_value(json_object_get(obj, "message"));
    if (!msg)
        msg = json_string_value(json_object_get(obj, "Message"));
    if (msg)
        copy_bounded(text, text_cap, msg, strlen(msg));
}

static void parse_body(const char *body, size_t len, struct hub_error *out, char *text,
                       size_t text_cap)
{
    if (!body || len == 0)
        return;
    json_t *root = json_loadb(body, len, 0, NULL);
    if (!json_is_object(root))
        goto out;
    const char *message = json_string_value(json_object_get(root, "Message"));
    if (message) {
        static const char prefix[] = "ErrorCode:";
        if (strncmp(message, prefix, sizeof prefix - 1) == 0) {
            /* Shape 1: "ErrorCode:<Name>;<text>" */
            const char *name = message + sizeof prefix - 1;
            const char *semi = strchr(name, ';');
            size_t name_len = semi ? (size_t)(semi - name) : strlen(name);
            if (plausible_name(name, name_len))
                copy_bounded(out->name, sizeof out->name, name, name_len);
            if (semi)
                copy_bounded(text, text_cap, semi + 1, strlen(semi + 1));
        } else {
            /* Shape 2: Message holds escaped JSON of shape 3. */
            json_t *inner = json_loads(message, 0, NULL);
            if (json_is_object(inner))
                parse_error_object(inner, out, text, text_cap);
            else
                copy_bounded(text, text_cap, message, strlen(message));
            json_decref(inner);
        }
    } else {
        parse_error_object(root, out, text, text_cap);
    }
out:
    json_decref(root);
}

void hub_error_from_response(int status, const char *errorcode_header, const char *body,
                             size_t body_len, struct hub_error *out)
{
    char text[256] = "";
    out->http_status = status;
    out->name[0] = '\0';
    out->number = 0;
    parse_body(body, body_len, out, text, sizeof text);
    /* The header names the error even when the body is empty or of an unknown shape. */
    if (errorcode_header && *errorcode_header) {
        size_t hl = strlen(errorcode_header);
        if (plausible_name(errorcode_header, hl)) {
            char *end;
            long v = strtol(errorcode_header, &end, 10);
            if (!*end)
                out->number = out->number ? out->number : v;
            else
                copy_bounded(out->name, sizeof out->name, errorcode_header, hl);
        }
    }
    if (!out->name[0] && out->number) {
        const char *n = name_of_number(out->number);
        if (n)
            copy_bounded(out->name, sizeof out->name, n, strlen(n));
    }

    enum hub_error_class cls = class_of_status(status);
    enum hub_error_class by_name = hub_error_class_of_name(out->name);
    /* 403 covers both quota and permission failures; only the name tells them apart. */
    if (status == 403 && by_name == HUB_ERR_UNAUTHORIZED)
        cls = by_name;

    /* Bodies echo device ids and tracking ids, never credentials. Control characters are
     * replaced so the text stays one line in logs. */
    for (char *p = text; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    hub_error_set(out, cls, "IoT Hub answered %d%s%s%s%s", status, out->name[0] ? " " : "",
                  out->name, text[0] ? ": " : "", text);
}

bool hub_retry_after_parse(const char *value, int64_t now_s, int64_t *out_ms)
{
    if (!value)
        return false;
    while (*value == ' ' || *value == '\t')
        value++;
    if (!*value)
        return false;
    if (*value >= '0' && *value <= '9') {
        int64_t secs = 0;
        const char *p = value;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (secs > INT64_MAX / 10000)
                return false; /* absurdly far away: treat as garbage */
            secs = secs * 10 + (*p - '0');
        }
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p)
            return false;
        *out_ms = secs * 1000;
        return true;
    }
    /* An HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT"): require the weekday comma so that
     * curl_getdate's liberal parser does not take arbitrary words for a date. */
    if (!strchr(value, ',') || strlen(value) > 64)
        return false;
    time_t when = curl_getdate(value, NULL);
    if (when == (time_t)-1)
        return false;
    int64_t delta = (int64_t)when - now_s;
    *out_ms = delta > 0 ? delta * 1000 : 0;
    return true;
}

bool hub_retry_allowed(enum hub_error_class cls, bool idempotent)
{
    switch (cls) {
    case HUB_ERR_UNREACHABLE:
        return true;
    case HUB_ERR_THROTTLED:
    case HUB_ERR_TRANSIENT:
    case HUB_ERR_TIMEOUT:
        return idempotent;
    default:
        return false;
    }
}

int64_t hub_backoff_delay_ms(const struct hub_retry_policy *p, unsigned retry,
                             enum hub_error_class cls, int64_t retry_after_ms, uint32_t rnd)
{
    bool throttled = cls == HUB_ERR_THROTTLED;
    int64_t base = throttled ? p->throttled_base_ms : p->base_ms;
    int64_t cap = throttled ? p->throttled_cap_ms : p->cap_ms;
    if (base < 0)
        base = 0;
    if (cap < base)
        cap = base;
    int64_t ceiling = base;
    for (unsigned i = 1; i < retry && ceiling < cap; i++)
        ceiling *= 2;
    if (ceiling > cap)
        ceiling = cap;
    int64_t delay = ceiling > 0 ? (int64_t)(rnd % (uint64_t)(ceiling + 1)) : 0;
    if (retry_after_ms > delay)
        delay = retry_after_ms;
    return delay;
}
