/* One error type for the whole service.
 *
 * Functions return `enum iot_err` (IOT_OK == 0). Where a caller needs the human-readable detail,
 * they also take a caller-owned `struct iot_error *` (may be NULL) that receives the code and a
 * message; the message is what the HTTP layer puts in `{"error": ...}` for 4xx answers, so it
 * must never contain a secret.
 */
#ifndef IOT_MANAGER_ERROR_H
#define IOT_MANAGER_ERROR_H

#include <stddef.h>

enum iot_err {
    IOT_OK = 0,
    IOT_ERR_NOMEM,           /* allocation failed */
    IOT_ERR_INVALID,         /* bad input from a caller: 400 */
    IOT_ERR_NOT_FOUND,       /* 404 */
    IOT_ERR_CONFLICT,        /* duplicate / in use: 409 */
    IOT_ERR_UNAUTHORIZED,    /* missing or malformed credentials: 401 */
    IOT_ERR_FORBIDDEN,       /* authenticated but not allowed: 403 */
    IOT_ERR_TOO_LARGE,       /* body over the limit: 413 */
    IOT_ERR_UNAVAILABLE,     /* a dependency (store, NATS, hub) cannot be reached: 503 */
    IOT_ERR_TIMEOUT,         /* an outgoing call ran out of time */
    IOT_ERR_THROTTLED,       /* the peer asked us to slow down */
    IOT_ERR_UPSTREAM,        /* a peer answered something we cannot use: 502 */
    IOT_ERR_CRYPTO,          /* a secret does not authenticate / cannot be sealed */
    IOT_ERR_CONFIG,          /* bad configuration value */
    IOT_ERR_IO,              /* local file or socket error */
    IOT_ERR_NEEDS_MIGRATION, /* store schema older than this binary */
    IOT_ERR_INTERNAL,        /* a broken invariant: 500 */
    IOT_ERR__COUNT
};

#define IOT_ERROR_MSG_MAX 512

struct iot_error {
    enum iot_err code;
    char msg[IOT_ERROR_MSG_MAX];
};

/* Static, never-NULL name of a code ("not found", ...). */
const char *iot_strerror(enum iot_err code);

/* Fills `err` (if not NULL) with `code` and a printf-style message, truncated to fit.
 * Returns `code` so that it can be used as `return iot_error_set(err, IOT_ERR_INVALID, "...")`. */
enum iot_err iot_error_set(struct iot_error *err, enum iot_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in `err` with a printf-style text (used to build Mender's
 * "malformed request body: ..." chains). Returns err->code (IOT_OK if err is NULL). */
enum iot_err iot_error_prefix(struct iot_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The HTTP status an error maps to (500 for anything not listed). */
int iot_err_http_status(enum iot_err code);

#endif
