/* HTTP transport of the clients of Mender's own services (workflows, deviceconfig, deviceauth).
 *
 * Concurrency and policy: the shared handle pool of src/net (include/iot-manager/net.h); its size
 * bounds the connections opened to Mender's services. Redirects are never followed (a 3xx answer
 * is an error); http and https are allowed (Mender's internal services speak plain http inside
 * the cluster); proxies from the environment are ignored: the Configure call carries a device's
 * connection string, which must go to deviceconfig or workflows and nowhere else. (The original's
 * Go client would honour HTTP_PROXY; internal services are not reached through an egress proxy.)
 *
 * Secrets: request bodies are the caller's, and wiped by it; messages never quote a request body,
 * and an excerpt of an error answer is withheld when it echoes the connection string.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>

#include "configure/configure_internal.h"

#define EXCERPT_MAX 160

void mender_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

/* ---- options, construction ---- */

void mender_client_options_default(struct mender_client_options *o)
{
    memset(o, 0, sizeof *o);
    o->mode = CONFIGURE_MODE_WORKFLOWS;
    o->connect_timeout_ms = 2000;
    o->timeout_ms = 10000;
    o->max_connections = 16;
}

/* Like the original's deviceauth client: a bare host[:port] means http; trailing slashes go. */
static enum iot_err normalise_url(const char *name, const char *in, char **out,
                                  struct iot_error *err)
{
    *out = NULL;
    if (!in || !*in)
        return IOT_OK;
    size_t len = strlen(in);
    while (len > 0 && in[len - 1] == '/')
        len--;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#')
            return iot_error_set(err, IOT_ERR_CONFIG, "%s URL: unexpected character at offset %zu",
                                 name, i);
    }
    const char *sep = strstr(in, "://");
    const char *prefix = "";
    if (sep && (size_t)(sep - in) < len) {
        size_t scheme = (size_t)(sep - in);
        if (!((scheme == 4 && strncasecmp(in, "http", 4) == 0) ||
              (scheme == 5 && strncasecmp(in, "https", 5) == 0)))
            return iot_error_set(err, IOT_ERR_CONFIG, "%s URL: only http and https are supported",
                                 name);
        if (len == scheme + 3)
            return iot_error_set(err, IOT_ERR_CONFIG, "%s URL: no host", name);
    } else {
        if (len == 0)
            return iot_error_set(err, IOT_ERR_CONFIG, "%s URL: no host", name);
        prefix = "http://";
    }
    size_t plen = strlen(prefix);
    char *u = malloc(plen + len + 1);
    if (!u)
        return iot_error_set(err, IOT_ERR_NOMEM, "mender client: out of memory");
    memcpy(u, prefix, plen);
    memcpy(u + plen, in, len);
    u[plen + len] = '\0';
    *out = u;
    return IOT_OK;
}

enum iot_err mender_client_new(const struct mender_client_options *o, struct mender_client **out,
                               struct iot_error *err)
{
    *out = NULL;
    if (o->mode != CONFIGURE_MODE_WORKFLOWS && o->mode != CONFIGURE_MODE_DEVICECONFIG)
        return iot_error_set(err, IOT_ERR_CONFIG, "mender client: unknown configure mode");
    if (o->connect_timeout_ms <= 0 || o->timeout_ms <= 0)
        return iot_error_set(err, IOT_ERR_CONFIG, "mender client: timeouts must be positive");
    if (o->max_connections == 0 || o->max_connections > 1024)
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "mender client: max_connections must be within 1..1024");

    struct mender_client *c = calloc(1, sizeof *c);
    if (!c)
        return iot_error_set(err, IOT_ERR_NOMEM, "mender client: out of memory");
    c->mode = o->mode;
    c->timeout_ms = o->timeout_ms;

    enum iot_err rc = normalise_url("workflows", o->workflows_url, &c->workflows_url, err);
    if (rc == IOT_OK)
        rc = normalise_url("deviceconfig", o->deviceconfig_url, &c->deviceconfig_url, err);
    if (rc == IOT_OK)
        rc = normalise_url("deviceauth", o->deviceauth_url, &c->deviceauth_url, err);
    if (rc == IOT_OK && c->mode == CONFIGURE_MODE_WORKFLOWS && !c->workflows_url)
        rc = iot_error_set(err, IOT_ERR_CONFIG, "configure mode workflows needs the workflows URL");
    if (rc == IOT_OK && c->mode == CONFIGURE_MODE_DEVICECONFIG && !c->deviceconfig_url)
        rc = iot_error_set(err, IOT_ERR_CONFIG,
                           "configure mode deviceconfig needs the deviceconfig URL");
    if (rc == IOT_OK) {
        /* Mender's internal services speak plain http inside the cluster. */
        struct net_pool_options po = {.what = "mender client",
                                      .max_handles = o->max_connections,
                                      .connect_timeout_ms = o->connect_timeout_ms,
                                      .total_timeout_ms = o->timeout_ms,
                                      .allow_plain_http = true};
        rc = net_pool_new(&po, &c->pool, err);
    }
    if (rc != IOT_OK) {
        mender_client_free(c);
        return rc;
    }
    *out = c;
    return IOT_OK;
}

void mender_client_free(struct mender_client *c)
{
    if (!c)
        return;
    net_pool_free(c->pool);
    free(c->workflows_url);
    free(c->deviceconfig_url);
    free(c->deviceauth_url);
    free(c);
}

/* ---- one exchange ---- */

void mender_response_clear(struct mender_response *r)
{
    if (!r)
        return;
    free(r->body);
    memset(r, 0, sizeof *r);
}

static bool request_id_ok(const char *id)
{
    size_t n = 0;
    for (const char *p = id; *p; p++, n++) {
        /* printable ASCII only: anything else could split or smuggle a header */
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e || n >= MENDER_REQUEST_ID_MAX)
            return false;
    }
    return true;
}

static enum iot_err class_of_curl(CURLcode cc, const struct net_body *body)
{
    switch (cc) {
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
        return IOT_ERR_UNAVAILABLE;
    case CURLE_WRITE_ERROR:
        return body->nomem ? IOT_ERR_NOMEM : IOT_ERR_UPSTREAM;
    case CURLE_OUT_OF_MEMORY:
        return IOT_ERR_NOMEM;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return IOT_ERR_CONFIG;
    default:
        return IOT_ERR_UPSTREAM;
    }
}

enum iot_err mender_http_perform(struct mender_client *c, const struct mender_request *req,
                                 struct mender_response *resp, struct iot_error *err)
{
    memset(resp, 0, sizeof *resp);
    const char *rid = req->request_id && *req->request_id ? req->request_id : NULL;
    if (rid && !request_id_ok(rid))
        return iot_error_set(err, IOT_ERR_INVALID,
                             "%s: request id must be printable ASCII of at most %d characters",
                             req->what, MENDER_REQUEST_ID_MAX);

    struct net_body body = {.max = MENDER_RESPONSE_MAX};
    struct curl_slist *headers = NULL;
    enum iot_err rc = IOT_OK;
    int64_t t0 = net_now_ms();

    CURL *e = net_pool_checkout(c->pool, c->timeout_ms);
    if (!e)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s: no free connection within %ld ms",
                             req->what, c->timeout_ms);

    bool ok = true;
    headers = net_header_add(headers, &ok, "Accept", "application/json");
    headers = net_header_add(headers, &ok, "Expect", NULL); /* no 100-continue round trip */
    if (req->body)
        headers = net_header_add(headers, &ok, "Content-Type", "application/json");
    if (rid)
        headers = net_header_add(headers, &ok, "X-MEN-RequestID", rid);
    if (!ok) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "%s: cannot build request headers", req->what);
        goto out;
    }

    CURLcode cc = net_pool_prepare(c->pool, e);
    NET_SETOPT(cc, e, CURLOPT_URL, req->url);
    NET_SETOPT(cc, e, CURLOPT_HTTPHEADER, headers);
    NET_SETOPT(cc, e, CURLOPT_WRITEFUNCTION, net_body_write);
    NET_SETOPT(cc, e, CURLOPT_WRITEDATA, &body);
    if (cc == CURLE_OK)
        cc = net_set_method(e, req->method, req->body, req->body_len);
    if (cc != CURLE_OK) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "%s: curl option refused: %s", req->what,
                           curl_easy_strerror(cc));
        goto out;
    }

    cc = curl_easy_perform(e);
    if (cc != CURLE_OK) {
        rc = class_of_curl(cc, &body);
        if (body.too_large)
            iot_error_set(err, rc, "%s: answer larger than %d bytes", req->what,
                          MENDER_RESPONSE_MAX);
        else
            iot_error_set(err, rc, "%s: request failed after %lld ms: %s", req->what,
                          (long long)(net_now_ms() - t0), curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &resp->status);
    if (!net_body_take(&body, &resp->body, &resp->len))
        rc = iot_error_set(err, IOT_ERR_NOMEM, "%s: out of memory", req->what);
out:
    net_pool_checkin(c->pool, e); /* unhooks our header list and body from the handle */
    net_body_free(&body);
    net_headers_free(headers);
    return rc;
}

/* ---- status mapping ---- */

/* Does `text` carry any part of `secret` worth hiding? The SharedAccessKey value is what matters:
 * any 8 consecutive characters of it count, as does the key's name itself. Without a key, any 12
 * consecutive characters of the whole secret count. */
static bool echoes_secret(const char *text, const char *secret)
{
    if (!secret || !*secret)
        return false;
    size_t tlen = strlen(text);
    for (size_t i = 0; i + 15 <= tlen; i++)
        if (strncasecmp(text + i, "sharedaccesskey", 15) == 0)
            return true;
    const char *key = secret;
    size_t klen = strlen(secret), window = 12;
    for (const char *p = secret; *p; p++) {
        if (strncasecmp(p, "SharedAccessKey=", 16) == 0) {
            key = p + 16;
            klen = strcspn(key, ";");
            window = 8;
            break;
        }
    }
    if (klen < window)
        window = klen;
    if (window == 0)
        return false;
    for (size_t i = 0; i + window <= klen; i++) {
        for (size_t j = 0; j + window <= tlen; j++)
            if (memcmp(key + i, text + j, window) == 0)
                return true;
    }
    return false;
}

/* A short printable excerpt of an error answer: the "error" field of a Mender error document,
 * else the raw body. */
static void excerpt_of(const struct mender_response *resp, char *out, size_t cap)
{
    const char *src = resp->body ? resp->body : "";
    size_t len = resp->body ? resp->len : 0;
    json_t *doc = len ? json_loadb(src, len, 0, NULL) : NULL;
    const char *msg = json_string_value(json_object_get(doc, "error"));
    if (msg) {
        src = msg;
        len = strlen(msg);
    }
    size_t o = 0;
    for (size_t i = 0; i < len && o + 4 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (ch == '\n' || ch == '\r' || ch == '\t')
            ch = ' ';
        else if (ch < 0x20 || ch > 0x7e)
            ch = '?';
        if (ch == ' ' && o > 0 && out[o - 1] == ' ')
            continue;
        out[o++] = (char)ch;
        if (o >= EXCERPT_MAX && i + 1 < len) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
    json_decref(doc);
}

enum iot_err mender_status_error(const struct mender_request *req,
                                 const struct mender_response *resp, struct iot_error *err)
{
    long st = resp->status;
    enum iot_err code;
    if (st == 429 || (st >= 500 && st <= 599))
        code = IOT_ERR_UNAVAILABLE;
    else if (st >= 400 && st <= 499)
        code = IOT_ERR_INVALID;
    else
        code = IOT_ERR_UPSTREAM;
    if (st >= 300 && st <= 399)
        return iot_error_set(err, code, "%s: answered %ld (redirects are not followed)", req->what,
                             st);
    char excerpt[EXCERPT_MAX + 8];
    excerpt_of(resp, excerpt, sizeof excerpt);
    if (echoes_secret(excerpt, req->secret))
        return iot_error_set(err, code,
                             "%s: answered %ld (answer withheld: it echoes the connection string)",
                             req->what, st);
    if (!excerpt[0])
        return iot_error_set(err, code, "%s: answered %ld", req->what, st);
    return iot_error_set(err, code, "%s: answered %ld: %s", req->what, st, excerpt);
}

/* ---- string builder ---- */

void mender_buf_init(struct mender_buf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

void mender_buf_add(struct mender_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (n >= b->max || b->len + n + 1 > b->max) {
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        /* Not realloc: the old block may hold the connection string and must be wiped. */
        char *nb = malloc(cap);
        if (!nb) {
            b->failed = true;
            return;
        }
        if (b->p) {
            memcpy(nb, b->p, b->len);
            mender_wipe(b->p, b->cap);
            free(b->p);
        }
        b->p = nb;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void mender_buf_adds(struct mender_buf *b, const char *s)
{
    mender_buf_add(b, s, strlen(s));
}

void mender_buf_addc(struct mender_buf *b, char ch)
{
    mender_buf_add(b, &ch, 1);
}

static const char hex_lower[] = "0123456789abcdef";

void mender_buf_add_path_segment(struct mender_buf *b, const char *s)
{
    char enc[3];
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        mender_buf_add(b, enc, net_escape_byte(*p, false, enc));
}

void mender_buf_add_query_value(struct mender_buf *b, const char *s)
{
    char enc[3];
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        mender_buf_add(b, enc, net_escape_byte(*p, true, enc));
}

/* Length of the valid UTF-8 sequence at `p` (2..4) and its code point, or 0 when invalid:
 * overlong forms, surrogates and code points above U+10FFFF are invalid, as in Go. */
static size_t utf8_sequence(const unsigned char *p, uint32_t *cp)
{
    size_t n;
    uint32_t v, min;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        n = 2;
        v = p[0] & 0x1f;
        min = 0x80;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        n = 3;
        v = p[0] & 0x0f;
        min = 0x800;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        n = 4;
        v = p[0] & 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
            return 0;
        v = (v << 6) | (p[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return n;
}

void mender_buf_add_json_string(struct mender_buf *b, const char *s)
{
    mender_buf_addc(b, '"');
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char ch = *p;
        if (ch < 0x80) {
            char esc[6] = {'\\', 'u', '0', '0', hex_lower[ch >> 4], hex_lower[ch & 0xf]};
            switch (ch) {
            case '"':
            case '\\':
                mender_buf_addc(b, '\\');
                mender_buf_addc(b, (char)ch);
                break;
            case '\b':
                mender_buf_add(b, "\\b", 2);
                break;
            case '\f':
                mender_buf_add(b, "\\f", 2);
                break;
            case '\n':
                mender_buf_add(b, "\\n", 2);
                break;
            case '\r':
                mender_buf_add(b, "\\r", 2);
                break;
            case '\t':
                mender_buf_add(b, "\\t", 2);
                break;
            case '<':
            case '>':
            case '&':
                mender_buf_add(b, esc, 6);
                break;
            default:
                if (ch < 0x20)
                    mender_buf_add(b, esc, 6);
                else
                    mender_buf_addc(b, (char)ch);
            }
            p++;
            continue;
        }
        uint32_t cp = 0;
        size_t n = utf8_sequence(p, &cp);
        if (n == 0) {
            mender_buf_add(b, "\\ufffd", 6); /* one per invalid byte, as Go does */
            p++;
        } else if (cp == 0x2028 || cp == 0x2029) {
            mender_buf_add(b, cp == 0x2028 ? "\\u2028" : "\\u2029", 6);
            p += n;
        } else {
            mender_buf_add(b, (const char *)p, n);
            p += n;
        }
    }
    mender_buf_addc(b, '"');
}

void mender_buf_free(struct mender_buf *b, bool wipe)
{
    if (b->p && wipe)
        mender_wipe(b->p, b->cap);
    free(b->p);
    memset(b, 0, sizeof *b);
}
