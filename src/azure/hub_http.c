/* HTTP transport of the IoT Hub client.
 *
 * Concurrency model: a bounded pool of curl easy handles, taken by the calling thread for one
 * exchange and given back afterwards (LIFO, so the warmest handle and its live connections are
 * reused first). Callers are the service's worker threads, which block on each hub call anyway;
 * easy handles let each of them drive its own transfer with no hand-off to an event-loop thread,
 * which the multi interface would need, and the pool size bounds how many requests are in flight.
 * Handles share one CURLSH with the DNS cache and TLS sessions (with a mutex per data kind), so a
 * handle meeting a hub for the first time still resumes TLS. Connections are deliberately not
 * shared: libcurl does not support using a shared connection cache from concurrent threads.
 * Each handle keeps its own small connection cache, so repeated calls to a hub reuse sockets.
 * (libcurl re-sends a request once by itself when a *reused* connection turns out to have been
 * closed before any answer byte arrived; a create can therefore, rarely, meet 409 for its own
 * first attempt, which callers handle as "exists" anyway.)
 *
 * Security: TLS verification is always on, redirects are never followed, only https (or http
 * when a test asks) is allowed, proxies from the environment are ignored, and every address a
 * connection is about to be opened to passes the SSRF guard (hub_addr_blocked) unless private
 * addresses are allowed. Checking at connect time, not at resolve time, also covers DNS answers
 * that change between a check and the connect.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <curl/curl.h>
#include <openssl/crypto.h>

#include "azure/hub_internal.h"
#include "iot-manager/uuid.h"

#define CONTINUATION_MAX 8192
#define HEADER_LINE_MAX  (CONTINUATION_MAX + 64) /* longest header we send */

struct hub_http {
    long connect_timeout_ms;
    long total_timeout_ms;
    bool allow_private;
    bool plain_http;
    size_t max_body;
    char *ca_file;
    char *user_agent;

    CURLSH *share;
    pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];
    atomic_uint_fast64_t sockets; /* connections opened: reuse keeps this low */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    CURL **idle; /* stack of free handles */
    size_t n_idle;
    size_t n_total; /* handles created, idle or in use */
    size_t max;
};

/* State of one exchange, reached from the curl callbacks. */
struct exchange {
    struct hub_http_response *resp;
    size_t body_cap;
    size_t max_body;
    bool too_large;
    bool blocked;
    bool allow_private;
    unsigned sockets;
    char blocked_addr[INET6_ADDRSTRLEN];
};

static void share_lock(CURL *handle, curl_lock_data data, curl_lock_access access, void *userp)
{
    (void)handle;
    (void)access;
    struct hub_http *h = userp;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_lock(&h->share_mu[data]);
}

static void share_unlock(CURL *handle, curl_lock_data data, void *userp)
{
    (void)handle;
    struct hub_http *h = userp;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_unlock(&h->share_mu[data]);
}

enum iot_err hub_http_new(const struct hub_options *opts, struct hub_http **out,
                          struct iot_error *err)
{
    *out = NULL;
    struct hub_http *h = calloc(1, sizeof *h);
    if (!h)
        return iot_error_set(err, IOT_ERR_NOMEM, "hub client: out of memory");
    h->connect_timeout_ms = opts->connect_timeout_ms;
    h->total_timeout_ms = opts->total_timeout_ms;
    h->allow_private = opts->allow_private_addresses;
    h->plain_http = opts->allow_plain_http;
    h->max_body = opts->max_response_bytes;
    h->max = opts->max_connections;
    h->ca_file = opts->ca_file ? strdup(opts->ca_file) : NULL;
    h->user_agent = strdup(opts->user_agent ? opts->user_agent : "iot-manager/" IOTM_VERSION);
    h->idle = calloc(h->max, sizeof *h->idle);
    if ((opts->ca_file && !h->ca_file) || !h->user_agent || !h->idle) {
        free(h->ca_file);
        free(h->user_agent);
        free(h->idle);
        free(h);
        return iot_error_set(err, IOT_ERR_NOMEM, "hub client: out of memory");
    }
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&h->share_mu[i], NULL);
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);

    h->share = curl_share_init();
    if (!h->share || curl_share_setopt(h->share, CURLSHOPT_LOCKFUNC, share_lock) ||
        curl_share_setopt(h->share, CURLSHOPT_UNLOCKFUNC, share_unlock) ||
        curl_share_setopt(h->share, CURLSHOPT_USERDATA, h) ||
        curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) ||
        curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION)) {
        hub_http_free(h);
        return iot_error_set(err, IOT_ERR_INTERNAL, "hub client: cannot set up curl sharing");
    }
    *out = h;
    return IOT_OK;
}

void hub_http_free(struct hub_http *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n_idle; i++)
        curl_easy_cleanup(h->idle[i]);
    if (h->share)
        curl_share_cleanup(h->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&h->share_mu[i]);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    free(h->idle);
    free(h->ca_file);
    free(h->user_agent);
    free(h);
}

void hub_http_response_clear(struct hub_http_response *r)
{
    if (!r)
        return;
    if (r->body) {
        /* Identity answers carry device keys. */
        OPENSSL_cleanse(r->body, r->body_len);
        free(r->body);
    }
    free(r->continuation);
    memset(r, 0, sizeof *r);
}

/* ---- SSRF guard ---- */

static bool v4_blocked(uint32_t a)
{
    static const struct {
        uint32_t net;
        int bits;
    } nets[] = {
        {0x00000000u, 8},  /* "this network", incl. 0.0.0.0 */
        {0x0a000000u, 8},  /* RFC 1918 */
        {0x64400000u, 10}, /* CGNAT shared space: private in practice */
        {0x7f000000u, 8},  /* loopback */
        {0xa9fe0000u, 16}, /* link-local, incl. cloud metadata 169.254.169.254 */
        {0xac100000u, 12}, /* RFC 1918 */
        {0xc0a80000u, 16}, /* RFC 1918 */
        {0xe0000000u, 4},  /* multicast */
        {0xf0000000u, 4},  /* reserved, incl. broadcast */
    };
    for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++) {
        uint32_t mask = nets[i].bits ? ~0u << (32 - nets[i].bits) : 0;
        if ((a & mask) == nets[i].net)
            return true;
    }
    return false;
}

static uint32_t v4_at(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

bool hub_addr_blocked(const struct sockaddr *sa, socklen_t len)
{
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return v4_blocked(ntohl(in->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const uint8_t zero[12] = {0};
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
        /* ::/96 covers :: and ::1 as well as the deprecated IPv4-compatible form. */
        if (memcmp(b, zero, 12) == 0 || memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0)
            return v4_blocked(v4_at(b + 12)) || memcmp(b, zero, 12) == 0;
        if (b[0] == 0x20 && b[1] == 0x02) /* 6to4 embeds the IPv4 address after 2002: */
            return v4_blocked(v4_at(b + 2));
        if ((b[0] & 0xfe) == 0xfc) /* fc00::/7 unique local */
            return true;
        if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) /* fe80::/10 link-local */
            return true;
        if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) /* fec0::/10 site-local (deprecated) */
            return true;
        if (b[0] == 0xff) /* multicast */
            return true;
        return false;
    }
    return true; /* anything else (unix sockets, short structs) is never a hub */
}

static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
    struct exchange *x = clientp;
    if (purpose != CURLSOCKTYPE_IPCXN)
        return CURL_SOCKET_BAD;
    if (!x->allow_private && hub_addr_blocked(&address->addr, address->addrlen)) {
        x->blocked = true;
        const void *raw = address->family == AF_INET6
                              ? (const void *)&((struct sockaddr_in6 *)&address->addr)->sin6_addr
                              : (const void *)&((struct sockaddr_in *)&address->addr)->sin_addr;
        if (!inet_ntop(address->family, raw, x->blocked_addr, sizeof x->blocked_addr))
            snprintf(x->blocked_addr, sizeof x->blocked_addr, "?");
        return CURL_SOCKET_BAD;
    }
    /* Close-on-exec: the service may spawn helpers; they must not inherit hub connections. */
    curl_socket_t fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
    if (fd != CURL_SOCKET_BAD)
        x->sockets++;
    return fd;
}

/* ---- callbacks ---- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct exchange *x = userp;
    struct hub_http_response *r = x->resp;
    size_t n = size * nmemb;
    if (r->body_len + n > x->max_body) {
        x->too_large = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (r->body_len + n + 1 > x->body_cap) {
        size_t cap = x->body_cap ? x->body_cap : 4096;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        char *nb = malloc(cap);
        if (!nb)
            return 0;
        if (r->body) {
            /* Not realloc: the old block may hold key material and must be wiped. */
            memcpy(nb, r->body, r->body_len);
            OPENSSL_cleanse(r->body, r->body_len);
            free(r->body);
        }
        r->body = nb;
        x->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

/* Copies a header value without surrounding blanks; false if it does not fit. */
static bool header_value(const char *v, size_t len, char *out, size_t cap)
{
    while (len && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    while (len &&
           (v[len - 1] == ' ' || v[len - 1] == '\t' || v[len - 1] == '\r' || v[len - 1] == '\n'))
        len--;
    if (len >= cap)
        return false;
    memcpy(out, v, len);
    out[len] = '\0';
    return true;
}

static bool header_is(const char *line, size_t len, const char *name, const char **value,
                      size_t *vlen)
{
    size_t nl = strlen(name);
    if (len <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
        return false;
    *value = line + nl + 1;
    *vlen = len - nl - 1;
    return true;
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *userp)
{
    struct exchange *x = userp;
    struct hub_http_response *r = x->resp;
    size_t len = size * nmemb;
    const char *v;
    size_t vl;
    if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        /* A new response (after a 100 Continue): forget the previous one's headers. */
        r->errorcode[0] = r->etag[0] = r->retry_after[0] = '\0';
        free(r->continuation);
        r->continuation = NULL;
    } else if (header_is(line, len, "iothub-errorcode", &v, &vl)) {
        if (!header_value(v, vl, r->errorcode, sizeof r->errorcode))
            r->errorcode[0] = '\0';
    } else if (header_is(line, len, "ETag", &v, &vl)) {
        char tmp[HUB_ETAG_MAX + 8];
        if (header_value(v, vl, tmp, sizeof tmp)) {
            const char *e = tmp;
            size_t el = strlen(e);
            if (el >= 2 && e[0] == 'W' && e[1] == '/') {
                e += 2;
                el -= 2;
            }
            if (el >= 2 && e[0] == '"' && e[el - 1] == '"') {
                e++;
                el -= 2;
            }
            if (el <= HUB_ETAG_MAX) {
                memcpy(r->etag, e, el);
                r->etag[el] = '\0';
            }
        }
    } else if (header_is(line, len, "Retry-After", &v, &vl)) {
        if (!header_value(v, vl, r->retry_after, sizeof r->retry_after))
            r->retry_after[0] = '\0';
    } else if (header_is(line, len, "x-ms-continuation", &v, &vl)) {
        char *c = malloc(CONTINUATION_MAX);
        if (!c)
            return 0;
        if (!header_value(v, vl, c, CONTINUATION_MAX) || !c[0]) {
            /* Empty means "no more pages"; over-long cannot be sent back: drop it. */
            free(c);
            c = NULL;
        }
        free(r->continuation);
        r->continuation = c;
    }
    return len;
}

/* ---- pool ---- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static CURL *pool_take(struct hub_http *h, long wait_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += wait_ms / 1000;
    deadline.tv_nsec += (wait_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    CURL *e = NULL;
    bool create = false;
    pthread_mutex_lock(&h->mu);
    while (h->n_idle == 0 && h->n_total >= h->max) {
        if (pthread_cond_timedwait(&h->cv, &h->mu, &deadline) == ETIMEDOUT)
            break;
    }
    if (h->n_idle > 0) {
        e = h->idle[--h->n_idle];
    } else if (h->n_total < h->max) {
        h->n_total++; /* reserve the slot; create outside the lock */
        create = true;
    }
    pthread_mutex_unlock(&h->mu);
    if (create) {
        e = curl_easy_init();
        if (!e) {
            pthread_mutex_lock(&h->mu);
            h->n_total--;
            pthread_cond_signal(&h->cv);
            pthread_mutex_unlock(&h->mu);
        }
    }
    return e;
}

static void pool_give(struct hub_http *h, CURL *e)
{
    pthread_mutex_lock(&h->mu);
    h->idle[h->n_idle++] = e;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* ---- one exchange ---- */

static enum hub_error_class class_of_curl(CURLcode cc, const struct exchange *x)
{
    switch (cc) {
    case CURLE_OPERATION_TIMEDOUT:
        return HUB_ERR_TIMEOUT;
    case CURLE_COULDNT_CONNECT:
        return x->blocked ? HUB_ERR_BLOCKED : HUB_ERR_UNREACHABLE;
    case CURLE_COULDNT_RESOLVE_HOST:
        return HUB_ERR_UNREACHABLE;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
        return HUB_ERR_TLS;
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return HUB_ERR_TRANSIENT;
    case CURLE_WRITE_ERROR:
        return x->too_large ? HUB_ERR_PROTOCOL : HUB_ERR_INTERNAL;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return HUB_ERR_INVALID;
    case CURLE_OUT_OF_MEMORY:
        return HUB_ERR_INTERNAL;
    default:
        return HUB_ERR_PROTOCOL;
    }
}

/* Appends "name: value", or "name:" (which removes a header curl would add) when value is NULL. */
static struct curl_slist *add_header(struct curl_slist *list, bool *ok, const char *name,
                                     const char *value)
{
    if (!*ok)
        return list;
    char line[HEADER_LINE_MAX];
    int n = value ? snprintf(line, sizeof line, "%s: %s", name, value)
                  : snprintf(line, sizeof line, "%s:", name);
    struct curl_slist *next = NULL;
    if (n > 0 && (size_t)n < sizeof line)
        next = curl_slist_append(list, line);
    OPENSSL_cleanse(line, sizeof line);
    if (!next) {
        *ok = false;
        return list;
    }
    return next;
}

static void free_headers(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l; l = l->next)
        OPENSSL_cleanse(l->data, strlen(l->data)); /* the Authorization line */
    curl_slist_free_all(list);
}

enum iot_err hub_http_perform(struct hub_http *h, const struct hub_http_request *req,
                              struct hub_http_response *resp, struct hub_error *herr)
{
    memset(resp, 0, sizeof *resp);
    struct exchange x = {.resp = resp, .max_body = h->max_body, .allow_private = h->allow_private};
    struct curl_slist *headers = NULL;
    enum iot_err rc = IOT_OK;
    int64_t t0 = mono_ms();

    CURL *e = pool_take(h, h->total_timeout_ms);
    if (!e) {
        hub_error_set(herr, HUB_ERR_TIMEOUT, "IoT Hub: no free connection within %ld ms",
                      h->total_timeout_ms);
        return herr ? herr->code : IOT_ERR_TIMEOUT;
    }
    /* Keeps live connections, DNS and TLS caches; drops every option of the previous call. */
    curl_easy_reset(e);

    bool ok = true;
    char value[64];
    struct uuid id;
    char idtext[UUID_STR_LEN + 1] = "";
    if (uuid_generate_v4(&id) == IOT_OK)
        uuid_format(&id, idtext);
    headers = add_header(headers, &ok, "Authorization", req->authorization);
    headers = add_header(headers, &ok, "Accept", "application/json");
    headers = add_header(headers, &ok, "Expect", NULL); /* no 100-continue round trip */
    if (idtext[0])
        headers = add_header(headers, &ok, "Request-Id", idtext);
    if (req->body)
        headers = add_header(headers, &ok, "Content-Type", "application/json; charset=utf-8");
    if (req->if_match)
        headers = add_header(headers, &ok, "If-Match", req->if_match);
    if (req->continuation)
        headers = add_header(headers, &ok, "x-ms-continuation", req->continuation);
    if (req->max_item_count) {
        snprintf(value, sizeof value, "%u", req->max_item_count);
        headers = add_header(headers, &ok, "x-ms-max-item-count", value);
    }
    if (!ok) {
        hub_error_set(herr, HUB_ERR_INTERNAL, "IoT Hub: cannot build request headers");
        rc = herr ? herr->code : IOT_ERR_INTERNAL;
        goto out;
    }

    const char *protocols = h->plain_http ? "http,https" : "https";
    CURLcode cc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (cc == CURLE_OK)                                                                        \
            cc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_URL, req->url);
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_USERAGENT, h->user_agent);
    SET(CURLOPT_SHARE, h->share);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, h->connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, h->total_timeout_ms);
    SET(CURLOPT_PROTOCOLS_STR, protocols);
    SET(CURLOPT_REDIR_PROTOCOLS_STR, protocols);
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_MAXREDIRS, 0L);
    SET(CURLOPT_PROXY, ""); /* ignore *_proxy variables: the guard checks the hub itself */
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (h->ca_file)
        SET(CURLOPT_CAINFO, h->ca_file);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_OPENSOCKETFUNCTION, open_socket);
    SET(CURLOPT_OPENSOCKETDATA, &x);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, &x);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, &x);
    if (req->body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        SET(CURLOPT_POSTFIELDS, req->body);
        SET(CURLOPT_CUSTOMREQUEST, req->method);
    } else if (strcmp(req->method, "GET") == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    } else {
        SET(CURLOPT_CUSTOMREQUEST, req->method);
    }
#undef SET
    if (cc != CURLE_OK) {
        hub_error_set(herr, HUB_ERR_INTERNAL, "IoT Hub: curl option refused: %s",
                      curl_easy_strerror(cc));
        rc = herr ? herr->code : IOT_ERR_INTERNAL;
        goto out;
    }

    cc = curl_easy_perform(e);
    if (cc != CURLE_OK) {
        enum hub_error_class cls = class_of_curl(cc, &x);
        if (cls == HUB_ERR_BLOCKED)
            hub_error_set(herr, cls, "IoT Hub host resolves to a non-public address (%s)",
                          x.blocked_addr);
        else if (x.too_large)
            hub_error_set(herr, cls, "IoT Hub answer larger than %zu bytes", h->max_body);
        else
            hub_error_set(herr, cls, "IoT Hub request failed after %lld ms: %s",
                          (long long)(mono_ms() - t0), curl_easy_strerror(cc));
        rc = hub_error_class_to_iot(cls);
        hub_http_response_clear(resp);
        goto out;
    }
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    resp->status = (int)status;
    if (!resp->body) {
        resp->body = calloc(1, 1);
        if (!resp->body) {
            hub_error_set(herr, HUB_ERR_INTERNAL, "IoT Hub: out of memory");
            rc = IOT_ERR_INTERNAL;
        }
    }
out:
    atomic_fetch_add(&h->sockets, x.sockets);
    /* The handle still points at our stack and header list: unhook them before it is reused. */
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, NULL);
    pool_give(h, e);
    free_headers(headers);
    return rc;
}

uint64_t hub_http_sockets(struct hub_http *h)
{
    return atomic_load(&h->sockets);
}
