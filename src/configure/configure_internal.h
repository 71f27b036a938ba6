/* Internals of the clients of Mender's own services (src/configure/): the HTTP transport shared
 * by the Configure push and the deviceauth listing, and a small bounded string builder. */
#ifndef IOTM_CONFIGURE_INTERNAL_H
#define IOTM_CONFIGURE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "iot-manager/configure.h"
#include "iot-manager/net.h"

/* Longest URL we build: a deviceauth listing of 500 ids percent-encoded stays far below. */
#define MENDER_URL_MAX (256 * 1024)
/* Longest answer we read: a deviceauth page of 500 full device objects fits comfortably. */
#define MENDER_RESPONSE_MAX (8 * 1024 * 1024)
/* X-MEN-RequestID values longer than this are refused rather than cut. */
#define MENDER_REQUEST_ID_MAX 256

struct mender_client {
    enum configure_mode mode;
    /* Normalised base URLs (scheme present, no trailing '/'); NULL when not configured. */
    char *workflows_url;
    char *deviceconfig_url;
    char *deviceauth_url;
    long timeout_ms;
    struct net_pool *pool; /* owned */
};

struct mender_request {
    const char *what;   /* names the call in messages, e.g. "deviceconfig deploy" */
    const char *method; /* GET, POST, PATCH */
    const char *url;
    const char *body; /* NULL: no body; borrowed, the caller wipes it */
    size_t body_len;
    const char *request_id; /* NULL or "": no X-MEN-RequestID header */
    /* Text that must never reach a message (the connection string), or NULL. An error excerpt of
     * the peer's answer that echoes any of it is withheld. */
    const char *secret;
};

struct mender_response {
    long status;
    char *body; /* owned, NUL-terminated, never NULL after a successful perform */
    size_t len;
};

/* One exchange. IOT_OK means an HTTP answer arrived, whatever its status (callers judge it with
 * mender_status_error); connection failures and timeouts are IOT_ERR_UNAVAILABLE, an answer that
 * cannot be read (too large, broken framing) IOT_ERR_UPSTREAM. `resp` is always initialised;
 * free it with mender_response_clear(). */
enum iot_err mender_http_perform(struct mender_client *c, const struct mender_request *req,
                                 struct mender_response *resp, struct iot_error *err);

void mender_response_clear(struct mender_response *r);

/* Maps a status the caller does not accept: 429 and 5xx are IOT_ERR_UNAVAILABLE (retryable),
 * other 4xx IOT_ERR_INVALID (permanent), anything else (1xx, 2xx the call does not expect, 3xx:
 * redirects are never followed) IOT_ERR_UPSTREAM. The message carries the status and a short,
 * printable excerpt of the answer (its "error" field when it is a Mender error document), unless
 * the excerpt echoes req->secret. */
enum iot_err mender_status_error(const struct mender_request *req,
                                 const struct mender_response *resp, struct iot_error *err);

/* Overwrites memory the compiler may not elide (no explicit_bzero under strict POSIX). */
void mender_wipe(void *p, size_t n);

/* ---- bounded string builder ---- */

struct mender_buf {
    char *p; /* owned; NUL-terminated while !failed */
    size_t len;
    size_t cap;
    size_t max; /* growth limit in bytes, terminator included */
    bool failed;
};

void mender_buf_init(struct mender_buf *b, size_t max);
void mender_buf_add(struct mender_buf *b, const char *s, size_t n);
void mender_buf_adds(struct mender_buf *b, const char *s);
void mender_buf_addc(struct mender_buf *b, char ch);
/* Appends a path segment with everything but RFC 3986 unreserved characters percent-encoded. */
void mender_buf_add_path_segment(struct mender_buf *b, const char *s);
/* Appends a query value the way Go's url.QueryEscape does (space as '+'). */
void mender_buf_add_query_value(struct mender_buf *b, const char *s);
/* Appends `s` as a JSON string exactly as Go's encoding/json writes it (HTML-safe escapes
 * \u003c \u003e \u0026, \u2028 \u2029, invalid UTF-8 as \ufffd), so bodies are byte-identical
 * to the original service's. */
void mender_buf_add_json_string(struct mender_buf *b, const char *s);
/* Frees the buffer; `wipe` first overwrites it (bodies carrying the connection string). */
void mender_buf_free(struct mender_buf *b, bool wipe);

#endif
