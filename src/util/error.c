#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "iot-manager/error.h"

static const struct {
    const char *name;
    int http_status;
} error_table[IOT_ERR__COUNT] = {
    [IOT_OK] = {"ok", 200},
    [IOT_ERR_NOMEM] = {"out of memory", 500},
    [IOT_ERR_INVALID] = {"invalid input", 400},
    [IOT_ERR_NOT_FOUND] = {"not found", 404},
    [IOT_ERR_CONFLICT] = {"conflict", 409},
    [IOT_ERR_UNAUTHORIZED] = {"unauthorized", 401},
    [IOT_ERR_FORBIDDEN] = {"forbidden", 403},
    [IOT_ERR_TOO_LARGE] = {"request body too large", 413},
    [IOT_ERR_UNAVAILABLE] = {"service unavailable", 503},
    [IOT_ERR_TIMEOUT] = {"timeout", 504},
    [IOT_ERR_THROTTLED] = {"throttled", 503},
    [IOT_ERR_UPSTREAM] = {"bad upstream response", 502},
    [IOT_ERR_CRYPTO] = {"cryptographic failure", 500},
    [IOT_ERR_CONFIG] = {"invalid configuration", 500},
    [IOT_ERR_IO] = {"i/o error", 500},
    [IOT_ERR_NEEDS_MIGRATION] = {"database needs migration", 503},
    [IOT_ERR_INTERNAL] = {"internal error", 500},
};

const char *iot_strerror(enum iot_err code)
{
    if ((unsigned)code >= IOT_ERR__COUNT || !error_table[code].name)
        return "unknown error";
    return error_table[code].name;
}

int iot_err_http_status(enum iot_err code)
{
    if ((unsigned)code >= IOT_ERR__COUNT || !error_table[code].http_status)
        return 500;
    return error_table[code].http_status;
}

enum iot_err iot_error_set(struct iot_error *err, enum iot_err code, const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

enum iot_err iot_error_prefix(struct iot_error *err, const char *fmt, ...)
{
    if (!err)
        return IOT_OK;
    char prefix[IOT_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    if (n < 0)
        return err->code;
    /* Truncation is deliberate: messages are bounded. */
    size_t plen = strnlen(prefix, sizeof err->msg - 1);
    size_t mlen = strnlen(err->msg, sizeof err->msg - 1);
    if (plen + mlen > sizeof err->msg - 1)
        mlen = sizeof err->msg - 1 - plen;
    memmove(err->msg + plen, err->msg, mlen);
    memcpy(err->msg, prefix, plen);
    err->msg[plen + mlen] = '\0';
    return err->code;
}
