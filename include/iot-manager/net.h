/* Outbound HTTP plumbing shared by the service's HTTP clients (src/azure: IoT Hub, src/configure:
 * Mender's own services): a bounded pool of libcurl easy handles with the transport policy every
 * outbound call follows, and the small pieces both clients build requests and read answers with.
 *
 * Concurrency model: a handle is taken by the calling thread for one exchange and given back
 * afterwards (LIFO, so the warmest handle and its live connections are reused first). Callers are
 * worker threads that block on each call anyway; easy handles let each of them drive its own
 * transfer with no hand-off to an event-loop thread, which the multi interface would need, and
 * the pool size bounds how many requests are in flight. Handles share one CURLSH with the DNS
 * cache and TLS sessions (a mutex per data kind), so a handle meeting a host for the first time
 * still resumes TLS. Connections are deliberately not shared: libcurl does not support using a
 * shared connection cache from concurrent threads. Each handle keeps its own small connection
 * cache, so repeated calls to a host reuse sockets.
 *
 * Policy (net_pool_prepare): connect and total timeouts, no signals (threads), redirects never
 * followed, https only unless plain http is allowed, proxies from the environment ignored, TLS
 * peer and host verification on, HTTP/1.1, TCP keep-alive.
 *
 * This header exposes libcurl on purpose: its users are the layers that drive libcurl.
 */
#ifndef IOT_MANAGER_NET_H
#define IOT_MANAGER_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>

#include "iot-manager/error.h"

#define NET_POOL_MAX_HANDLES 1024
/* Longest header line net_header_add() builds, terminator included. */
#define NET_HEADER_LINE_MAX (8192 + 128)

/* ---- handle pool ---- */

struct net_pool_options {
    const char *what;        /* names the client in messages ("hub client"); borrowed */
    unsigned max_handles;    /* handles (and so transfers) at once, 1..NET_POOL_MAX_HANDLES */
    long connect_timeout_ms; /* > 0 */
    long total_timeout_ms;   /* > 0, the whole exchange */
    bool allow_plain_http;   /* "http,https" instead of "https" */
    const char *user_agent;  /* NULL: "iot-manager/<version>". Copied. */
    const char *ca_file;     /* PEM bundle; NULL: the system's. Copied. */
};

struct net_pool;

/* Creates a pool (no handle is created before the first checkout). Calls curl_global_init()
 * (thread-safe and reference-counted in libcurl >= 7.84); net_pool_free() balances it.
 * IOT_ERR_CONFIG for options out of range. */
enum iot_err net_pool_new(const struct net_pool_options *opts, struct net_pool **out,
                          struct iot_error *err);

/* Frees the pool. Every handle must have been checked in. NULL-safe. */
void net_pool_free(struct net_pool *p);

/* Takes a handle for one exchange, creating one while fewer than max_handles exist and waiting up
 * to `wait_ms` for one to be checked in otherwise. NULL when none became free in time (or one
 * could not be created). The handle is in its just-created state apart from what libcurl keeps
 * across curl_easy_reset (live connections, caches, the share); it stays the pool's: give it back
 * with net_pool_checkin(). */
CURL *net_pool_checkout(struct net_pool *p, long wait_ms);

/* Gives a handle back. Its options are reset first, so it holds no pointer into the caller's
 * request (headers, body, callback data) once this returns. */
void net_pool_checkin(struct net_pool *p, CURL *e);

/* Sets one option on `e` unless an earlier one failed, so a run of options is checked once:
 * `cc` (a CURLcode variable) keeps the first failure. */
#define NET_SETOPT(cc, e, opt, val)                                                                \
    do {                                                                                           \
        if ((cc) == CURLE_OK)                                                                      \
            (cc) = curl_easy_setopt((e), (opt), (val));                                            \
    } while (0)

/* Sets the pool's policy on a checked-out handle (see the top of this header) and the share.
 * The caller adds URL, headers, method and callbacks. Returns the first option curl refused. */
CURLcode net_pool_prepare(const struct net_pool *p, CURL *e);

/* Handles created so far and not destroyed (idle or checked out). */
size_t net_pool_handles(struct net_pool *p);

/* ---- requests ---- */

/* Appends the header line "name: value", or "name:" (which removes a header curl would add) when
 * value is NULL. Once *ok is false (a line longer than NET_HEADER_LINE_MAX, out of memory) it
 * does nothing more, so a request's headers can be built without a check per line. The stack
 * copy of the line is wiped (Authorization lines carry tokens). Returns the list to keep. */
struct curl_slist *net_header_add(struct curl_slist *list, bool *ok, const char *name,
                                  const char *value);

/* Wipes every line (they may carry tokens) and frees the list. NULL-safe. */
void net_headers_free(struct curl_slist *list);

/* Sets the method and body: `body` (borrowed until the exchange ends) of `body_len` bytes sent
 * with `method`, or a bodiless GET, or a bodiless custom method. */
CURLcode net_set_method(CURL *e, const char *method, const char *body, size_t body_len);

/* ---- answers ---- */

/* An answer body read by a transfer, bounded. Zero it, set `max` (and `wipe`), then hand
 * net_body_write as CURLOPT_WRITEFUNCTION and the struct as CURLOPT_WRITEDATA. */
struct net_body {
    char *data; /* owned; NUL-terminated once anything arrived, NULL before */
    size_t len;
    size_t cap;
    size_t max;     /* largest body accepted, in bytes */
    bool wipe;      /* may carry secrets: grow by copying and wiping, wipe when freed */
    bool too_large; /* the transfer was stopped: more than `max` bytes */
    bool nomem;     /* the transfer was stopped: out of memory */
};

/* A CURLOPT_WRITEFUNCTION: appends to the net_body at `userp`. Stops the transfer (returns 0,
 * curl then fails with CURLE_WRITE_ERROR) when the body would exceed `max` or memory runs out. */
size_t net_body_write(char *data, size_t size, size_t nmemb, void *userp);

/* Moves the body to the caller (*data owned by the caller, NUL-terminated, "" when nothing
 * arrived) and empties `b`. False when out of memory (then `b` is unchanged). */
bool net_body_take(struct net_body *b, char **data, size_t *len);

/* Frees (and with `wipe`, first wipes) the body; `b` is emptied, its settings kept. */
void net_body_free(struct net_body *b);

/* ---- small helpers ---- */

/* Encodes one byte of a URL part: RFC 3986 unreserved characters as they are, everything else as
 * %XX (upper-case hex); with `query`, a space as '+' the way Go's url.QueryEscape writes it.
 * Returns how many bytes it wrote to `out` (1 or 3; not terminated). */
size_t net_escape_byte(unsigned char ch, bool query, char out[3]);

/* Milliseconds of CLOCK_MONOTONIC, for durations in messages and deadlines. */
int64_t net_now_ms(void);

#endif
