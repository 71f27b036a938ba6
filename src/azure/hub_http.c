/* HTTP transport of the IoT Hub client, on the shared handle pool of src/net (concurrency model
 * and transport policy: include/iot-manager/net.h).
 *
 * (libcurl re-sends a request once by itself when a *reused* connection turns out to have been
 * closed before any answer byte arrived; a create can therefore, rarely, meet 409 for its own
 * first attempt, which callers handle as "exists" anyway.)
 *
 * Security: on top of the pool's policy (TLS verification on, no redirects, only https, or http
 * when a test asks, proxies from the environment ignored), every address a connection is about to
 * be opened to passes the SSRF guard (hub_addr_blocked) unless private addresses are allowed.
 * Checking at connect time, not at resolve time, also covers DNS answers that change between a
 * check and the connect.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>

#include "azure/hub_internal.h"
#include "iot-manager/net.h"
#include "iot-manager/uuid.h"

/* Longest continuation token we keep: its header line must fit NET_HEADER_LINE_MAX. */
#define CONTINUATION_MAX 8192

struct hub_http {
    struct net_pool *pool;
    long total_timeout_ms;
    bool allow_private;
    size_t max_body;
    atomic_uint_fast64_t sockets; /* connections opened: reuse keeps this low */
};

/* State of one exchange, reached from the curl callbacks. */
struct exchange {
    struct hub_http_response *resp;
    struct net_body body; /* moved to resp->body once the answer is complete */
    bool blocked;
    bool allow_private;
    unsigned sockets;
    char blocked_addr[INET6_ADDRSTRLEN];
};

enum iot_err hub_http_new(const struct hub_options *opts, struct hub_http **out,
                          struct iot_error *err)
{
    *out = NULL;
    struct hub_http *h = calloc(1, sizeof *h);
    if (!h)
        return iot_error_set(err, IOT_ERR_NOMEM, "hub client: out of memory");
    h->total_timeout_ms = opts->total_timeout_ms;
    h->allow_private = opts->allow_private_addresses;
    h->max_body = opts->max_response_bytes;
    struct net_pool_options po = {.what = "hub client",
                                  .max_handles = opts->max_connections,
                                  .connect_timeout_ms = opts->connect_timeout_ms,
                                  .total_timeout_ms = opts->total_timeout_ms,
                                  .allow_plain_http = opts->allow_plain_http,
                                  .user_agent = opts->user_agent,
                                  .ca_file = opts->ca_file};
    enum iot_err rc = net_pool_new(&po, &h->pool, err);
    if (rc != IOT_OK) {
        free(h);
        return rc;
    }
    *out = h;
    return IOT_OK;
}

void hub_http_free(struct hub_http *h)
{
    if (!h)
        return;
    net_pool_free(h->pool);
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
        return x->body.too_large ? HUB_ERR_PROTOCOL : HUB_ERR_INTERNAL;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return HUB_ERR_INVALID;
    case CURLE_OUT_OF_MEMORY:
        return HUB_ERR_INTERNAL;
    default:
        return HUB_ERR_PROTOCOL;
    }
}

enum iot_err hub_http_perform(struct hub_http *h, const struct hub_http_request *req,
                              struct hub_http_response *resp, struct hub_error *herr)
{
    memset(resp, 0, sizeof *resp);
    struct exchange x = {.resp = resp,
                         .body = {.max = h->max_body, .wipe = true}, /* identities carry keys */
                         .allow_private = h->allow_private};
    struct curl_slist *headers = NULL;
    enum iot_err rc = IOT_OK;
    int64_t t0 = net_now_ms();

    CURL *e = net_pool_checkout(h->pool, h->total_timeout_ms);
    if (!e) {
        hub_error_set(herr, HUB_ERR_TIMEOUT, "IoT Hub: no free connection within %ld ms",
                      h->total_timeout_ms);
        return herr ? herr->code : IOT_ERR_TIMEOUT;
    }

    bool ok = true;
    char value[64];
    struct uuid id;
    char idtext[UUID_STR_LEN + 1] = "";
    if (uuid_generate_v4(&id) == IOT_OK)
        uuid_format(&id, idtext);
    headers = net_header_add(headers, &ok, "Authorization", req->authorization);
    headers = net_header_add(headers, &ok, "Accept", "application/json");
    headers = net_header_add(headers, &ok, "Expect", NULL); /* no 100-continue round trip */
    if (idtext[0])
        headers = net_header_add(headers, &ok, "Request-Id", idtext);
    if (req->body)
        headers = net_header_add(headers, &ok, "Content-Type", "application/json; charset=utf-8");
    if (req->if_match)
        headers = net_header_add(headers, &ok, "If-Match", req->if_match);
    if (req->continuation)
        headers = net_header_add(headers, &ok, "x-ms-continuation", req->continuation);
    if (req->max_item_count) {
        snprintf(value, sizeof value, "%u", req->max_item_count);
        headers = net_header_add(headers, &ok, "x-ms-max-item-count", value);
    }
    if (!ok) {
        hub_error_set(herr, HUB_ERR_INTERNAL, "IoT Hub: cannot build request headers");
        rc = herr ? herr->code : IOT_ERR_INTERNAL;
        goto out;
    }

    CURLcode cc = net_pool_prepare(h->pool, e);
    NET_SETOPT(cc, e, CURLOPT_URL, req->url);
    NET_SETOPT(cc, e, CURLOPT_HTTPHEADER, headers);
    NET_SETOPT(cc, e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    NET_SETOPT(cc, e, CURLOPT_OPENSOCKETDATA, &x);
    NET_SETOPT(cc, e, CURLOPT_WRITEFUNCTION, net_body_write);
    NET_SETOPT(cc, e, CURLOPT_WRITEDATA, &x.body);
    NET_SETOPT(cc, e, CURLOPT_HEADERFUNCTION, on_header);
    NET_SETOPT(cc, e, CURLOPT_HEADERDATA, &x);
    if (cc == CURLE_OK)
        cc = net_set_method(e, req->method, req->body, req->body_len);
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
        else if (x.body.too_large)
            hub_error_set(herr, cls, "IoT Hub answer larger than %zu bytes", h->max_body);
        else
            hub_error_set(herr, cls, "IoT Hub request failed after %lld ms: %s",
                          (long long)(net_now_ms() - t0), curl_easy_strerror(cc));
        rc = hub_error_class_to_iot(cls);
        hub_http_response_clear(resp);
        goto out;
    }
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    resp->status = (int)status;
    if (!net_body_take(&x.body, &resp->body, &resp->body_len)) {
        hub_error_set(herr, HUB_ERR_INTERNAL, "IoT Hub: out of memory");
        rc = IOT_ERR_INTERNAL;
    }
out:
    atomic_fetch_add(&h->sockets, x.sockets);
    net_pool_checkin(h->pool, e); /* unhooks our stack and header list from the handle */
    net_body_free(&x.body);
    net_headers_free(headers);
    return rc;
}

uint64_t hub_http_sockets(struct hub_http *h)
{
    return atomic_load(&h->sockets);
}
