/* HTTP server on libmicrohttpd with a table-driven router.
 *
 * The server owns request parsing, the body limit (413), request ids (X-MEN-RequestID taken from
 * the request or generated, always echoed), 404/405, the access log and graceful shutdown. Routes
 * come from the API layer as a static table; `{name}` path segments become parameters (an empty
 * segment is a valid value: open-source Mender calls /tenants//devices).
 */
#ifndef IOT_MANAGER_HTTP_H
#define IOT_MANAGER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "iot-manager/error.h"
#include "iot-manager/metrics.h"

#define HTTP_MAX_PARAMS     4
#define HTTP_MAX_HEADERS    8
#define HTTP_REQUEST_ID_MAX 128

struct http_request;
struct http_response;

typedef void (*http_handler_fn)(struct http_request *req, struct http_response *resp);

struct http_route {
    const char *method;  /* "GET", "POST", ... */
    const char *pattern; /* "/api/management/v1/iot-manager/integrations/{id}" */
    http_handler_fn handler;
    unsigned flags; /* opaque to the server, for the `before` hook (auth, permissions) */
};

/* Called before a route's handler; returns false when it has already filled `resp` (denied). */
typedef bool (*http_before_fn)(struct http_request *req, const struct http_route *route,
                               struct http_response *resp);

struct http_server_options {
    const char *listen; /* "[host]:port", port 0 picks a free one */
    unsigned threads;   /* 0: a thread per connection; N: an epoll pool of N threads */
    unsigned connection_limit;
    unsigned idle_timeout_s;
    unsigned shutdown_timeout_s;
    size_t body_limit; /* bytes */
    const struct http_route *routes;
    size_t nroutes;
    http_before_fn before;   /* may be NULL */
    struct metrics *metrics; /* may be NULL: request counts and latency by route */
    void *ctx;               /* handed to handlers through http_request_ctx() */
};

struct http_server;

/* Starts listening; `*out` is owned by the caller and released by http_server_stop(). */
enum iot_err http_server_start(const struct http_server_options *opts, struct http_server **out,
                               struct iot_error *err);
/* The port actually bound (useful with port 0). */
uint16_t http_server_port(const struct http_server *srv);
/* Stops accepting, lets requests in flight finish (bounded by shutdown_timeout_s), then frees. */
void http_server_stop(struct http_server *srv);

/* Request accessors; returned strings are borrowed and live as long as the request. */
void *http_request_ctx(const struct http_request *req);
const char *http_request_method(const struct http_request *req);
const char *http_request_path(const struct http_request *req);
const char *http_request_id(const struct http_request *req);
/* Path parameter by position in the pattern (percent-decoded); NULL when out of range. */
const char *http_request_param(const struct http_request *req, size_t index);
const char *http_request_header(const struct http_request *req, const char *name);
const char *http_request_query(const struct http_request *req, const char *name);
/* Whether the query parameter is present at all (even empty). */
bool http_request_has_query(const struct http_request *req, const char *name);
const char *http_request_cookie(const struct http_request *req, const char *name);
const char *http_request_body(const struct http_request *req, size_t *len);
/* Per-request slot for the API layer (e.g. the caller's identity); freed with `release`. */
void http_request_set_user(struct http_request *req, void *user, void (*release)(void *));
void *http_request_user(const struct http_request *req);
/* Adds a key to the access-log line of this request (e.g. "tenant"). */
void http_request_log_field(struct http_request *req, const char *key, const char *value);

/* Response builders. json: takes ownership of `body` (may be NULL for no body). */
void http_response_json(struct http_response *resp, int status, json_t *body);
void http_response_empty(struct http_response *resp, int status);
/* {"error": msg, "request_id": id} */
void http_response_error(struct http_response *resp, int status, const char *msg);
/* A non-JSON body (e.g. Prometheus text); takes ownership of the malloc'd `body`. */
void http_response_text(struct http_response *resp, int status, const char *content_type,
                        char *body);
/* Adds a header (copied); silently ignores headers beyond HTTP_MAX_HEADERS. */
void http_response_header(struct http_response *resp, const char *name, const char *value);
/* Extra top-level keys merged into an error body (e.g. health "checks"); takes ownership. */
void http_response_error_with(struct http_response *resp, int status, const char *msg,
                              json_t *extra);

/* Matches `path` against `pattern`; fills params (pointers into `scratch`, which must hold
 * strlen(path) + 1 bytes). Exposed for unit tests. */
bool http_route_match(const char *pattern, const char *path, char *scratch, const char **params,
                      size_t *nparams);

#endif
