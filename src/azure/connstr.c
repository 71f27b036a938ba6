#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netdb.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <openssl/crypto.h>

#include "iot-manager/b64.h"
#include "iot-manager/connstr.h"

/* DNS limits (RFC 1035): 253 characters without the root dot, labels of 1..63. */
#define HOST_NAME_MAX_CHARS 253
#define HOST_LABEL_MAX      63
#define HOST_BUF            (HOST_NAME_MAX_CHARS + 2)

#define MASKED_PREFIX_LEN 4 /* base64 of 1..3 bytes is always one padded quantum */

/* ---- parsing ---------------------------------------------------------------------------- */

static void free_str(char **s)
{
    if (*s) {
        OPENSSL_cleanse(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
}

static void free_key(struct connstr *cs)
{
    if (cs->key) {
        OPENSSL_cleanse(cs->key, cs->key_len);
        free(cs->key);
    }
    cs->key = NULL;
    cs->key_len = 0;
    cs->has_key = false;
    free_str(&cs->masked_key);
}

void connstr_clear(struct connstr *cs)
{
    if (!cs)
        return;
    free_key(cs);
    free_str(&cs->hostname);
    free_str(&cs->gateway_hostname);
    free_str(&cs->name);
    free_str(&cs->device_id);
    free_str(&cs->module_id);
    free_str(&cs->signature);
    memset(cs, 0, sizeof *cs);
}

static bool key_is(const char *key, size_t klen, const char *name)
{
    return strlen(name) == klen && memcmp(key, name, klen) == 0;
}

/* Duplicates replace earlier values (Mender's loop simply overwrites the field). */
static enum iot_err set_str(char **field, const char *val, size_t vlen)
{
    char *copy = malloc(vlen + 1);
    if (!copy)
        return IOT_ERR_NOMEM;
    memcpy(copy, val, vlen);
    copy[vlen] = '\0';
    free_str(field);
    *field = copy;
    return IOT_OK;
}

/* A value we produced ourselves when masking: 4 base64 characters of 1..3 bytes, then the
 * suffix. Anything else is treated as a real key, so it fails base64 like Mender does. */
static bool is_masked_key(const char *val, size_t vlen)
{
    size_t slen = strlen(CONNSTR_MASK_SUFFIX);
    if (vlen != MASKED_PREFIX_LEN + slen ||
        memcmp(val + MASKED_PREFIX_LEN, CONNSTR_MASK_SUFFIX, slen))
        return false;
    uint8_t raw[3];
    long n = b64_decode_std(val, MASKED_PREFIX_LEN, raw, sizeof raw, NULL);
    OPENSSL_cleanse(raw, sizeof raw);
    return n >= 1 && n <= 3;
}

static enum iot_err set_key(struct connstr *cs, const char *val, size_t vlen, bool allow_masked,
                            struct iot_error *err)
{
    if (allow_masked && is_masked_key(val, vlen)) {
        free_key(cs);
        if (set_str(&cs->masked_key, val, vlen) != IOT_OK)
            return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        return IOT_OK;
    }
    size_t cap = B64_DECODED_MAX(vlen);
    uint8_t *raw = malloc(cap ? cap : 1);
    if (!raw)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    size_t bad = 0;
    long n = b64_decode_std(val, vlen, raw, cap, &bad);
    if (n < 0) {
        OPENSSL_cleanse(raw, cap);
        free(raw);
        return iot_error_set(err, IOT_ERR_INVALID,
                             "shared access key format: illegal base64 data at input byte %zu",
                             bad);
    }
    free_key(cs);
    if (n == 0) {
        free(raw);
        raw = NULL;
    }
    cs->key = raw;
    cs->key_len = (size_t)n;
    /* present even when empty: "SharedAccessKey=" must fail as a blank key, not vanish */
    cs->has_key = true;
    return IOT_OK;
}

static enum iot_err parse_part(struct connstr *cs, const char *part, size_t plen, bool allow_masked,
                               struct iot_error *err)
{
    const char *eq = memchr(part, '=', plen);
    if (!eq)
        return iot_error_set(err, IOT_ERR_INVALID, "invalid connectionstring format");
    size_t klen = (size_t)(eq - part);
    const char *val = eq + 1;
    size_t vlen = plen - klen - 1;
    char **field = NULL;
    if (key_is(part, klen, "HostName"))
        field = &cs->hostname;
    else if (key_is(part, klen, "SharedAccessKeyName"))
        field = &cs->name;
    else if (key_is(part, klen, "SharedAccessSignature"))
        field = &cs->signature;
    else if (key_is(part, klen, "DeviceId"))
        field = &cs->device_id;
    else if (key_is(part, klen, "ModuleId"))
        field = &cs->module_id;
    else if (key_is(part, klen, "SharedAccessKey"))
        return set_key(cs, val, vlen, allow_masked, err);
    else
        return iot_error_set(err, IOT_ERR_INVALID, "invalid connection string key: %.*s",
                             (int)(klen > 256 ? 256 : klen), part);
    if (set_str(field, val, vlen) != IOT_OK)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    return IOT_OK;
}

enum iot_err connstr_parse(const char *text, bool allow_masked_key, struct connstr *out,
                           struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    if (!text)
        return iot_error_set(err, IOT_ERR_INVALID, "invalid connectionstring format");
    enum iot_err rc = IOT_OK;
    const char *p = text;
    /* Like Go's strings.Split: an empty text or a trailing ';' yields an empty part, which
     * has no '=' and is rejected. */
    for (;;) {
        const char *semi = strchr(p, ';');
        size_t plen = semi ? (size_t)(semi - p) : strlen(p);
        rc = parse_part(out, p, plen, allow_masked_key, err);
        if (rc != IOT_OK)
            goto out;
        if (!semi)
            break;
        p = semi + 1;
    }
out:
    if (rc != IOT_OK)
        connstr_clear(out);
    return rc;
}

/* ---- host names ------------------------------------------------------------------------- */

struct host_view {
    char name[HOST_BUF]; /* without port and brackets, as written: what we resolve and report */
    bool ip_literal;
};

static bool port_ok(const char *p)
{
    size_t n = strlen(p);
    if (n < 1 || n > 5 || strspn(p, "0123456789") != n)
        return false;
    return strtol(p, NULL, 10) <= 65535;
}

static bool is_label_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* Plain DNS name syntax, so that the name we check is the name an HTTP client connects to
 * (a '#', '@' or '/' would make curl pick a different host than the one we matched). */
static bool dns_name_ok(const char *s, size_t len)
{
    if (len == 0 || len > HOST_NAME_MAX_CHARS)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (!is_label_char(s[i]) || ++label > HOST_LABEL_MAX) {
            return false;
        }
    }
    return label > 0;
}

/* Splits "host[:port]" or "[v6]:port". Mender cuts at the first ':', which turns any IPv6
 * literal into "[" (never trusted). We instead take a bracketed literal as one opaque name: it
 * is trusted only by a whitelist entry equal to it (wildcards never match an address), and it is
 * "resolved" as the bare literal. A port must be 1..65535 in digits: Mender accepts anything
 * after the ':', but "hub.azure-devices.net:1@evil.example" would then send our token to
 * evil.example. */
static bool host_split(const char *hostname, struct host_view *hv)
{
    memset(hv, 0, sizeof *hv);
    const char *start = hostname;
    size_t len;
    const char *rest;
    if (hostname[0] == '[') {
        const char *close = strchr(hostname, ']');
        if (!close)
            return false;
        start = hostname + 1;
        len = (size_t)(close - start);
        if (len == 0 || strspn(start, "0123456789abcdefABCDEF:.") < len)
            return false;
        rest = close + 1;
        hv->ip_literal = true;
    } else {
        len = strcspn(hostname, ":");
        rest = hostname + len;
    }
    if (*rest == ':') {
        if (!port_ok(rest + 1))
            return false;
    } else if (*rest != '\0') {
        return false;
    }
    if (len >= sizeof hv->name)
        return false;
    memcpy(hv->name, start, len);
    hv->name[len] = '\0';
    if (!hv->ip_literal) {
        size_t n = len;
        if (n > 0 && hv->name[n - 1] == '.')
            n--;
        if (!dns_name_ok(hv->name, n))
            return false;
    }
    return true;
}

static char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool span_eq_nocase(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ascii_lower(a[i]) != ascii_lower(b[i]))
            return false;
    return true;
}

/* Same number of labels, each equal (ASCII case-insensitive) or the pattern's is "*". */
static bool labels_match(const char *host, size_t hlen, const char *pat, size_t plen)
{
    size_t hi = 0;
    size_t pi = 0;
    for (;;) {
        size_t he = hi;
        while (he < hlen && host[he] != '.')
            he++;
        size_t pe = pi;
        while (pe < plen && pat[pe] != '.')
            pe++;
        bool star = pe - pi == 1 && pat[pi] == '*';
        if (!star && (pe - pi != he - hi || !span_eq_nocase(host + hi, pat + pi, he - hi)))
            return false;
        bool host_end = he == hlen;
        bool pat_end = pe == plen;
        if (host_end || pat_end)
            return host_end && pat_end;
        hi = he + 1;
        pi = pe + 1;
    }
}

static bool pattern_matches(const struct host_view *hv, const char *pattern)
{
    size_t plen = strlen(pattern);
    if (hv->ip_literal) {
        if (plen >= 2 && pattern[0] == '[' && pattern[plen - 1] == ']') {
            pattern++;
            plen -= 2;
        }
        return plen == strlen(hv->name) && span_eq_nocase(hv->name, pattern, plen);
    }
    size_t hlen = strlen(hv->name);
    if (hlen > 0 && hv->name[hlen - 1] == '.')
        hlen--;
    if (plen > 0 && pattern[plen - 1] == '.')
        plen--;
    return labels_match(hv->name, hlen, pattern, plen);
}

static bool view_trusted(const struct host_view *hv, const char *const *whitelist, size_t len)
{
    for (size_t i = 0; whitelist && i < len; i++)
        if (whitelist[i] && pattern_matches(hv, whitelist[i]))
            return true;
    return false;
}

bool connstr_host_trusted(const char *hostname, const char *const *whitelist, size_t len)
{
    struct host_view hv;
    return hostname && host_split(hostname, &hv) && view_trusted(&hv, whitelist, len);
}

bool connstr_resolve_getaddrinfo(const char *host, void *ctx)
{
    (void)ctx;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM; /* one entry per address instead of one per socket type */
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (res)
        freeaddrinfo(res);
    return rc == 0;
}

/* ---- validation ------------------------------------------------------------------------- */

/* Mender's hostnameValidator: whitelist, then DNS. Writes the field message into `msg`. */
static enum iot_err check_host(const char *hostname, const struct connstr_rules *rules, char *msg,
                               size_t cap)
{
    if (!rules || rules->whitelist_len == 0 || !rules->whitelist) {
        snprintf(msg, cap, "[PROG ERR(hostnameValidator)] no trusted hostnames configured");
        return IOT_ERR_CONFIG;
    }
    struct host_view hv;
    if (!host_split(hostname, &hv) || !view_trusted(&hv, rules->whitelist, rules->whitelist_len)) {
        snprintf(msg, cap, "hostname does not refer to a trusted domain");
        return IOT_ERR_INVALID;
    }
    if (rules->resolve && !rules->resolve(hv.name, rules->resolve_ctx)) {
        snprintf(msg, cap, "failed to lookup host with name '%s'", hv.name);
        return IOT_ERR_INVALID;
    }
    return IOT_OK;
}

static bool empty(const char *s)
{
    return !s || !*s;
}

/* A written but empty "SharedAccessKey=" is not zero: it must fail as a blank key. */
static bool connstr_is_zero(const struct connstr *cs)
{
    return empty(cs->hostname) && empty(cs->gateway_hostname) && empty(cs->name) &&
           empty(cs->device_id) && empty(cs->module_id) && empty(cs->signature) && !cs->has_key &&
           cs->key_len == 0 && !cs->masked_key;
}

static size_t format_into(const struct connstr *cs, bool masked, char *out, size_t cap);

enum iot_err connstr_validate(const struct connstr *cs, const struct connstr_rules *rules,
                              struct iot_error *err)
{
    static const char prefix[] = "connection string invalid: ";
    if (!cs)
        return iot_error_set(err, IOT_ERR_INVALID, "%sconnection string missing", prefix);
    /* Mender's Validate() returns nil for an all-empty value. */
    if (connstr_is_zero(cs))
        return IOT_OK;

    /* ozzo's field map, in its sorted key order: GatewayHostName, HostName, Key. */
    enum { F_GATEWAY, F_HOST, F_KEY, F_COUNT };
    static const char *const field_names[F_COUNT] = {"GatewayHostName", "HostName", "Key"};
    char field_msg[F_COUNT][IOT_ERROR_MSG_MAX];
    enum iot_err field_rc[F_COUNT] = {IOT_OK, IOT_OK, IOT_OK};

    if (!empty(cs->gateway_hostname))
        field_rc[F_GATEWAY] =
            check_host(cs->gateway_hostname, rules, field_msg[F_GATEWAY], sizeof field_msg[0]);
    if (empty(cs->hostname)) {
        snprintf(field_msg[F_HOST], sizeof field_msg[0], "cannot be blank");
        field_rc[F_HOST] = IOT_ERR_INVALID;
    } else {
        field_rc[F_HOST] = check_host(cs->hostname, rules, field_msg[F_HOST], sizeof field_msg[0]);
    }
    if (cs->key_len == 0 && !cs->masked_key) {
        snprintf(field_msg[F_KEY], sizeof field_msg[0], "cannot be blank");
        field_rc[F_KEY] = IOT_ERR_INVALID;
    }

    char msg[IOT_ERROR_MSG_MAX];
    size_t used = 0;
    enum iot_err rc = IOT_OK;
    for (int f = 0; f < F_COUNT; f++) {
        if (field_rc[f] == IOT_OK)
            continue;
        /* a missing whitelist is our misconfiguration, not the caller's mistake */
        if (rc != IOT_ERR_CONFIG)
            rc = field_rc[f];
        int n = snprintf(msg + used, sizeof msg - used, "%s%s: %s", used ? "; " : "",
                         field_names[f], field_msg[f]);
        if (n < 0)
            break;
        used += (size_t)n;
        if (used >= sizeof msg) {
            used = sizeof msg - 1;
            break;
        }
    }
    if (rc != IOT_OK)
        return iot_error_set(err, rc, "%s%s.", prefix, msg);

    if (empty(cs->device_id) && empty(cs->name))
        return iot_error_set(err, IOT_ERR_INVALID,
                             "%sone of 'DeviceId' or 'SharedAccessKeyName' must be set", prefix);
    if (rules && rules->require_policy_name && empty(cs->name))
        return iot_error_set(err, IOT_ERR_INVALID,
                             "%sSharedAccessKeyName is required: a device connection string cannot "
                             "manage the hub's registry",
                             prefix);
    if (format_into(cs, false, NULL, 0) > CONNSTR_MAX_LEN)
        return iot_error_set(err, IOT_ERR_INVALID,
                             "%sconnection string can be no longer than %d characters", prefix,
                             CONNSTR_MAX_LEN);
    return IOT_OK;
}

/* ---- formatting ------------------------------------------------------------------------- */

/* Appends while counting: a first pass with out == NULL measures, the second writes into an
 * exactly sized buffer. */
struct sbuf {
    char *p;
    size_t cap;
    size_t len;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->p && b->len + n < b->cap)
        memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_field(struct sbuf *b, const char *name, const char *value)
{
    if (empty(value))
        return;
    if (b->len)
        sb_put(b, ";", 1);
    sb_put(b, name, strlen(name));
    sb_put(b, "=", 1);
    sb_put(b, value, strlen(value));
}

void connstr_mask_key(const uint8_t *key, size_t key_len, char *out, size_t cap)
{
    if (!out || cap == 0)
        return;
    char head[MASKED_PREFIX_LEN + 1] = "";
    /* Mender panics below 3 bytes; we show what there is */
    size_t n = key_len < 3 ? key_len : 3;
    if (key && n)
        b64_encode(key, n, head, sizeof head, false);
    snprintf(out, cap, "%s%s", head, CONNSTR_MASK_SUFFIX);
    OPENSSL_cleanse(head, sizeof head);
}

static size_t format_into(const struct connstr *cs, bool masked, char *out, size_t cap)
{
    struct sbuf b = {out, cap, 0};
    sb_field(&b, "HostName", cs->hostname);
    sb_field(&b, "GatewayHostName", cs->gateway_hostname);
    sb_field(&b, "SharedAccessKeyName", cs->name);
    sb_field(&b, "DeviceId", cs->device_id);
    sb_field(&b, "ModuleId", cs->module_id);
    if (cs->key_len > 0 && cs->key) {
        if (masked) {
            char m[32];
            connstr_mask_key(cs->key, cs->key_len, m, sizeof m);
            sb_field(&b, "SharedAccessKey", m);
            OPENSSL_cleanse(m, sizeof m);
        } else {
            if (b.len)
                sb_put(&b, ";", 1);
            sb_put(&b, "SharedAccessKey=", strlen("SharedAccessKey="));
            size_t klen = B64_ENCODED_LEN(cs->key_len);
            if (b.p && b.len + klen < b.cap)
                b64_encode(cs->key, cs->key_len, b.p + b.len, b.cap - b.len, false);
            b.len += klen;
        }
    } else if (cs->masked_key) {
        sb_field(&b, "SharedAccessKey", cs->masked_key);
    }
    sb_field(&b, "SharedAccessSignature", cs->signature);
    if (b.p && b.cap > 0)
        b.p[b.len < b.cap ? b.len : b.cap - 1] = '\0';
    return b.len;
}

static char *format_alloc(const struct connstr *cs, bool masked)
{
    if (!cs)
        return NULL;
    size_t len = format_into(cs, masked, NULL, 0);
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    format_into(cs, masked, s, len + 1);
    return s;
}

char *connstr_format(const struct connstr *cs)
{
    return format_alloc(cs, false);
}

char *connstr_format_masked(const struct connstr *cs)
{
    return format_alloc(cs, true);
}
