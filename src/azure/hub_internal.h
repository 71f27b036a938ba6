/* Internals of the IoT Hub client shared between its source files and its unit tests. */
#ifndef IOT_MANAGER_AZURE_HUB_INTERNAL_H
#define IOT_MANAGER_AZURE_HUB_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <jansson.h>

#include "iot-manager/connstr.h"
#include "iot-manager/hub.h"

#define HUB_URL_MAX          1024
#define HUB_HOST_MAX         253
#define HUB_TOKEN_LIFETIME_S 3600
#define HUB_TOKEN_RENEW_S    300 /* renew this long before expiry: covers clock skew and flight */

/* ---- URLs (hub_url.c) ---- */

/* Percent-encodes everything outside RFC 3986's unreserved set (upper-case hex) into `out`.
 * Returns the length written, or -1 when it does not fit. */
long hub_path_escape(const char *in, char *out, size_t cap);

/* A HostName we are willing to put in a URL: DNS characters, optional ":port" (1..65535). */
bool hub_host_valid(const char *host);

/* "<scheme>://<host><prefix>[<escaped id>][<suffix>]?api-version=2021-04-12". `device_id` and
 * `suffix` may be NULL. IOT_ERR_INVALID for a bad host or when it does not fit. */
enum iot_err hub_url_build(bool plain_http, const char *host, const char *prefix,
                           const char *device_id, const char *suffix, char *out, size_t cap);

/* ---- errors and retries (hub_error.c) ---- */

/* Fills `out` from an HTTP answer (status >= 300): class, Azure name and number from the
 * `iothub-errorcode` header (may be NULL) and any of the three body shapes, a message. Does not
 * touch out->retry_after_ms or out->attempts. */
void hub_error_from_response(int status, const char *errorcode_header, const char *body,
                             size_t body_len, struct hub_error *out);

/* Sets class, code (from the class) and a printf-style message. */
void hub_error_set(struct hub_error *herr, enum hub_error_class cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Class of an Azure error name ("DeviceNotFound" -> NOT_FOUND); HUB_OK when unknown. */
enum hub_error_class hub_error_class_of_name(const char *name);

/* Parses a Retry-After value: delta-seconds or an HTTP-date (relative to `now_s`, Unix seconds).
 * A date in the past gives 0. False for anything else. */
bool hub_retry_after_parse(const char *value, int64_t now_s, int64_t *out_ms);

/* Whether a failed attempt of class `cls` may be repeated within the call. A connection that
 * could not be opened sent nothing, so any request may be repeated. Throttled, transient and
 * timed-out attempts are repeated for idempotent requests only: the hub may have acted on them
 * (Azure does not document that a 429 means "not processed"). */
bool hub_retry_allowed(enum hub_error_class cls, bool idempotent);

/* Delay before retry number `retry` (1 = the first retry): "full jitter", a uniform pick in
 * [0, min(cap, base * 2^(retry-1))] using `rnd`, with the throttled base/cap for 429; never
 * less than `retry_after_ms` when that is >= 0. */
int64_t hub_backoff_delay_ms(const struct hub_retry_policy *p, unsigned retry,
                             enum hub_error_class cls, int64_t retry_after_ms, uint32_t rnd);

/* ---- SAS token cache (hub_token.c) ---- */

typedef enum iot_err (*hub_sign_fn)(const struct connstr *cs, int64_t expiry, char *out, size_t cap,
                                    struct iot_error *err);

struct hub_token_cache;

/* `sign` NULL: sas_token_for_connstr. `max_entries` 0: 4096. */
enum iot_err hub_token_cache_new(size_t max_entries, hub_sign_fn sign,
                                 struct hub_token_cache **out);
void hub_token_cache_free(struct hub_token_cache *tc);

/* A token for `cs` valid at least HUB_TOKEN_RENEW_S more seconds after `now_s`: the cached one
 * for (HostName, policy, key) or a new one with a lifetime of HUB_TOKEN_LIFETIME_S. `*signed_new`
 * (may be NULL) says which. `out` receives a secret: the caller wipes it. */
enum iot_err hub_token_cache_get(struct hub_token_cache *tc, const struct connstr *cs,
                                 int64_t now_s, char *out, size_t cap, bool *signed_new,
                                 struct iot_error *err);

/* Forgets the token for `cs` (after a 401, so the next call signs afresh). */
void hub_token_cache_invalidate(struct hub_token_cache *tc, const struct connstr *cs);

size_t hub_token_cache_count(struct hub_token_cache *tc);

/* ---- transport (hub_http.c) ---- */

/* True when connecting to `sa` must be refused with the SSRF guard on: unspecified, loopback,
 * RFC 1918, CGNAT, link-local, multicast, broadcast/reserved, IPv6 ULA/site-local, and IPv4
 * addresses embedded in IPv6 (mapped, compatible, NAT64) that are any of those. */
bool hub_addr_blocked(const struct sockaddr *sa, socklen_t len);

struct hub_http;

struct hub_http_request {
    const char *method; /* GET, PUT, PATCH, POST, DELETE */
    const char *url;
    const char *authorization;
    const char *if_match;     /* header value as sent, NULL: none */
    const char *continuation; /* x-ms-continuation, NULL: none */
    unsigned max_item_count;  /* x-ms-max-item-count, 0: none */
    const char *body;         /* NULL: no body */
    size_t body_len;
};

struct hub_http_response {
    int status;
    char *body; /* owned, NUL-terminated (also when empty) */
    size_t body_len;
    char errorcode[HUB_ERROR_CODE_MAX]; /* iothub-errorcode header */
    char etag[HUB_ETAG_MAX + 1];        /* ETag header, quotes stripped */
    char retry_after[64];               /* raw Retry-After header */
    char *continuation;                 /* owned x-ms-continuation, NULL when absent */
};

void hub_http_response_clear(struct hub_http_response *r);

enum iot_err hub_http_new(const struct hub_options *opts, struct hub_http **out,
                          struct iot_error *err);
void hub_http_free(struct hub_http *h);

/* Performs one exchange. IOT_OK when an HTTP answer arrived (any status): `resp` holds it. On a
 * transport failure fills `herr` (class TIMEOUT, UNREACHABLE, TRANSIENT, TLS, BLOCKED, ...). */
enum iot_err hub_http_perform(struct hub_http *h, const struct hub_http_request *req,
                              struct hub_http_response *resp, struct hub_error *herr);

/* Connections opened so far (each one a TCP connect, most also a TLS handshake). */
uint64_t hub_http_sockets(struct hub_http *h);

/* ---- JSON (hub_json.c) ---- */

enum iot_err hub_device_from_json(json_t *obj, struct hub_device *out, struct hub_error *herr);
enum iot_err hub_twin_from_json(json_t *obj, struct hub_twin *out, struct hub_error *herr);

/* The JSON body of a bulk request (new reference), or NULL with `herr` set. */
json_t *hub_bulk_body(const struct hub_bulk_item *items, size_t n, struct hub_error *herr);

/* Fills results[0..n) from a BulkRegistryOperationResult. False if `obj` is not one. */
bool hub_bulk_results_parse(json_t *obj, const struct hub_bulk_item *items, size_t n,
                            struct hub_bulk_result *results);

#endif
