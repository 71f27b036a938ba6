/* JWT verification with OpenSSL's EVP API.
 *
 * Why not libjwt (Debian 12 ships 1.10): it takes the algorithm from the token header (an HS256
 * token keyed with our RSA public key PEM verifies), has no EdDSA, and validates no claims
 * (c-stack.md §5). Wrapping it would leave it only the base64 and JSON work, which b64.c and
 * jansson already do, at the price of a dependency and of an API whose default is unsafe. Here
 * the key, found by `kid`, decides the algorithm and EVP_DigestVerify() checks the signature. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "iot-manager/b64.h"
#include "iot-manager/jwt.h"

/* A PEM public key is under 2 KiB even for 8192-bit RSA; more is not a key file. */
#define JWT_PEM_MAX 65536
/* A 16384-bit RSA signature (OpenSSL's largest modulus) is 2048 bytes. */
#define JWT_SIG_MAX 2048
/* Decoded header; Mender's is about 40 bytes. */
#define JWT_HEADER_MAX 1024
/* Decimal digits of a kid: 18 always fit in int64_t. */
#define JWT_KID_DIGITS_MAX 18
#define JWT_PATH_MAX       4096

struct jwt_key {
    bool has_kid;
    int64_t kid;
    enum jwt_alg alg;
    EVP_PKEY *pkey; /* public key only */
};

struct jwt_keyset {
    size_t count;
    struct jwt_key keys[JWT_KEYSET_MAX];
};

const char *jwt_alg_name(enum jwt_alg alg)
{
    switch (alg) {
    case JWT_ALG_RS256:
        return "RS256";
    case JWT_ALG_EDDSA:
        return "EdDSA";
    }
    return "?";
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Parses 1..JWT_KID_DIGITS_MAX decimal digits (the whole of s[0..len)). */
static bool kid_parse(const char *s, size_t len, int64_t *out)
{
    if (len == 0 || len > JWT_KID_DIGITS_MAX)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!is_digit(s[i]))
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* ---- key loading ---- */

/* Reads a whole (small, regular) file into a NUL-terminated malloc'd buffer. */
static enum iot_err file_read(const char *path, char **out, size_t *out_len, struct iot_error *err)
{
    enum iot_err rc = IOT_OK;
    struct stat st;
    size_t n = 0;
    char *buf = NULL;

    int fd = open(path, O_RDONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return iot_error_set(err, IOT_ERR_IO, "cannot open JWT key file %s: %s", path,
                             strerror(errno));
    if (fstat(fd, &st) != 0) {
        rc = iot_error_set(err, IOT_ERR_IO, "cannot stat JWT key file %s: %s", path,
                           strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = iot_error_set(err, IOT_ERR_CONFIG, "JWT key file %s is not a regular file", path);
        goto out;
    }
    buf = malloc(JWT_PEM_MAX + 1);
    if (!buf) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory reading JWT key file %s", path);
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, JWT_PEM_MAX + 1 - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = iot_error_set(err, IOT_ERR_IO, "cannot read JWT key file %s: %s", path,
                               strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > JWT_PEM_MAX) {
            rc = iot_error_set(err, IOT_ERR_CONFIG, "JWT key file %s is too large for a key", path);
            goto out;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

/* Checks that `pem` holds exactly one PEM block and that it is a public key, so the errors can
 * say what the file holds instead of OpenSSL's "unsupported". */
static enum iot_err pem_check_label(const char *path, const char *pem, size_t len,
                                    struct iot_error *err)
{
    static const char begin[] = "-----BEGIN ";
    if (memchr(pem, '\0', len))
        return iot_error_set(err, IOT_ERR_CONFIG, "JWT key file %s is not a PEM public key", path);
    const char *first = strstr(pem, begin);
    if (!first)
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "JWT key file %s is not a PEM public key (no BEGIN line)", path);
    if (strstr(first + 1, begin))
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "JWT key file %s holds more than one PEM block; give one public key "
                             "per file",
                             path);
    const char *label = first + sizeof begin - 1;
    const char *end = strstr(label, "-----");
    if (!end)
        return iot_error_set(err, IOT_ERR_CONFIG, "JWT key file %s is not a PEM public key", path);
    size_t label_len = (size_t)(end - label);
    if ((label_len == 10 && memcmp(label, "PUBLIC KEY", 10) == 0) ||
        (label_len == 14 && memcmp(label, "RSA PUBLIC KEY", 14) == 0))
        return IOT_OK;
    for (size_t i = 0; i + 11 <= label_len; i++) {
        if (memcmp(label + i, "PRIVATE KEY", 11) == 0)
            return iot_error_set(err, IOT_ERR_CONFIG,
                                 "JWT key file %s holds a private key; configure the public key "
                                 "instead (openssl pkey -pubout)",
                                 path);
    }
    return iot_error_set(err, IOT_ERR_CONFIG,
                         "JWT key file %s holds a PEM block that is not a public key", path);
}

static enum iot_err key_from_pem(const char *path, const char *pem, size_t len, struct jwt_key *key,
                                 struct iot_error *err)
{
    enum iot_err rc = pem_check_label(path, pem, len, err);
    if (rc != IOT_OK)
        return rc;

    EVP_PKEY *pkey = NULL;
    const unsigned char *p = (const unsigned char *)pem;
    size_t left = len;
    OSSL_DECODER_CTX *dctx =
        OSSL_DECODER_CTX_new_for_pkey(&pkey, "PEM", NULL, NULL, EVP_PKEY_PUBLIC_KEY, NULL, NULL);
    if (!dctx) {
        rc = iot_error_set(err, IOT_ERR_CRYPTO, "cannot set up a key decoder for %s", path);
        goto out;
    }
    if (!OSSL_DECODER_from_data(dctx, &p, &left) || !pkey) {
        rc = iot_error_set(err, IOT_ERR_CONFIG, "JWT key file %s: cannot decode the public key",
                           path);
        goto out;
    }
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        int bits = EVP_PKEY_get_bits(pkey);
        if (bits < JWT_RSA_MIN_BITS) {
            rc = iot_error_set(err, IOT_ERR_CONFIG,
                               "JWT key file %s: RSA key of %d bits is too short (at least %d)",
                               path, bits, JWT_RSA_MIN_BITS);
            goto out;
        }
        key->alg = JWT_ALG_RS256;
    } else if (EVP_PKEY_is_a(pkey, "ED25519")) {
        key->alg = JWT_ALG_EDDSA;
    } else {
        rc = iot_error_set(
            err, IOT_ERR_CONFIG,
            "JWT key file %s: unsupported key type %s (RSA or Ed25519 expected)", path,
            EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "unknown");
        goto out;
    }
    key->pkey = pkey;
    pkey = NULL;
out:
    EVP_PKEY_free(pkey);
    OSSL_DECODER_CTX_free(dctx);
    ERR_clear_error();
    return rc;
}

static enum iot_err keyset_add_file(struct jwt_keyset *ks, bool has_kid, int64_t kid,
                                    const char *path, struct iot_error *err)
{
    if (ks->count == JWT_KEYSET_MAX)
        return iot_error_set(err, IOT_ERR_CONFIG, "too many JWT keys (at most %d)", JWT_KEYSET_MAX);
    for (size_t i = 0; has_kid && i < ks->count; i++) {
        if (ks->keys[i].has_kid && ks->keys[i].kid == kid)
            return iot_error_set(err, IOT_ERR_CONFIG, "duplicate JWT key id %lld (file %s)",
                                 (long long)kid, path);
    }
    char *pem = NULL;
    size_t len = 0;
    enum iot_err rc = file_read(path, &pem, &len, err);
    if (rc != IOT_OK)
        return rc;
    struct jwt_key key = {.has_kid = has_kid, .kid = has_kid ? kid : 0};
    rc = key_from_pem(path, pem, len, &key, err);
    free(pem);
    if (rc == IOT_OK)
        ks->keys[ks->count++] = key;
    return rc;
}

enum iot_err jwt_keyset_load_file(const char *path, struct jwt_keyset **out, struct iot_error *err)
{
    *out = NULL;
    if (!path || !*path)
        return iot_error_set(err, IOT_ERR_CONFIG, "JWT key file path is empty");
    struct jwt_keyset *ks = calloc(1, sizeof *ks);
    if (!ks)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    enum iot_err rc = keyset_add_file(ks, false, 0, path, err);
    if (rc != IOT_OK) {
        jwt_keyset_free(ks);
        return rc;
    }
    *out = ks;
    return IOT_OK;
}

enum iot_err jwt_keyset_load(const char *spec, struct jwt_keyset **out, struct iot_error *err)
{
    enum iot_err rc = IOT_OK;
    *out = NULL;
    if (!spec)
        spec = "";
    struct jwt_keyset *ks = calloc(1, sizeof *ks);
    if (!ks)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");

    size_t entries = 0;
    bool bare = false;
    const char *p = spec;
    for (;;) {
        while (is_space(*p))
            p++;
        if (!*p)
            break;
        const char *start = p;
        while (*p && !is_space(*p))
            p++;
        size_t elen = (size_t)(p - start);
        entries++;

        const char *eq = memchr(start, '=', elen);
        size_t digits = 0;
        while (digits < elen && is_digit(start[digits]))
            digits++;
        bool has_kid = eq && eq == start + digits && digits > 0;
        if (!has_kid && eq == start) {
            rc = iot_error_set(err, IOT_ERR_CONFIG, "JWT key entry %.*s has an empty key id",
                               (int)(elen > 200 ? 200 : elen), start);
            goto out;
        }
        int64_t kid = 0;
        if (has_kid && !kid_parse(start, digits, &kid)) {
            rc = iot_error_set(err, IOT_ERR_CONFIG,
                               "JWT key entry %.*s: key id has more than %d digits",
                               (int)(elen > 200 ? 200 : elen), start, JWT_KID_DIGITS_MAX);
            goto out;
        }
        const char *path = has_kid ? eq + 1 : start;
        size_t plen = (size_t)(p - path);
        if (plen == 0) {
            rc = iot_error_set(err, IOT_ERR_CONFIG, "JWT key entry for key id %lld has no path",
                               (long long)kid);
            goto out;
        }
        if (plen >= JWT_PATH_MAX) {
            rc = iot_error_set(err, IOT_ERR_CONFIG, "JWT key file path is too long");
            goto out;
        }
        if (!has_kid)
            bare = true;
        /* a key without kid matches every token, which is only unambiguous when it is alone */
        if (bare && entries > 1) {
            rc = iot_error_set(err, IOT_ERR_CONFIG,
                               "JWT key entries must be kid=path when more than one key is "
                               "configured");
            goto out;
        }
        char pathbuf[JWT_PATH_MAX];
        memcpy(pathbuf, path, plen);
        pathbuf[plen] = '\0';
        rc = keyset_add_file(ks, has_kid, kid, pathbuf, err);
        if (rc != IOT_OK)
            goto out;
    }
    if (ks->count == 0)
        rc = iot_error_set(err, IOT_ERR_CONFIG, "no JWT verification keys configured");
out:
    if (rc != IOT_OK) {
        jwt_keyset_free(ks);
        return rc;
    }
    *out = ks;
    return IOT_OK;
}

void jwt_keyset_free(struct jwt_keyset *ks)
{
    if (!ks)
        return;
    for (size_t i = 0; i < ks->count; i++)
        EVP_PKEY_free(ks->keys[i].pkey);
    free(ks);
}

size_t jwt_keyset_count(const struct jwt_keyset *ks)
{
    return ks ? ks->count : 0;
}

enum iot_err jwt_keyset_key_info(const struct jwt_keyset *ks, size_t index,
                                 struct jwt_key_info *out)
{
    if (!ks || index >= ks->count)
        return IOT_ERR_NOT_FOUND;
    const struct jwt_key *k = &ks->keys[index];
    out->has_kid = k->has_kid;
    out->kid = k->kid;
    out->alg = k->alg;
    out->bits = EVP_PKEY_get_bits(k->pkey);
    return IOT_OK;
}

/* ---- verification ---- */

void jwt_verify_options_init(struct jwt_verify_options *opts)
{
    opts->issuer = NULL;
    opts->leeway = JWT_DEFAULT_LEEWAY;
    opts->now = 0;
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* base64url without padding, and canonical: the unused low bits of the last character must be
 * zero, so that one signature has exactly one spelling (as RFC 7515 §2 and Go's encoder). */
static bool b64url_canonical(const char *s, size_t len)
{
    if (len % 4 == 1)
        return false;
    int last = 0;
    for (size_t i = 0; i < len; i++) {
        last = b64url_value(s[i]);
        if (last < 0)
            return false;
    }
    if (len % 4 == 2)
        return (last & 0x0f) == 0;
    if (len % 4 == 3)
        return (last & 0x03) == 0;
    return true;
}

/* Picks the key for the header's `kid`. */
static enum iot_err key_select(const struct jwt_keyset *ks, json_t *header,
                               const struct jwt_key **out, struct iot_error *err)
{
    /* a keyset loaded without kid has one key that stands for any kid */
    if (ks->count == 1 && !ks->keys[0].has_kid) {
        *out = &ks->keys[0];
        return IOT_OK;
    }
    json_t *jkid = json_object_get(header, "kid");
    if (!jkid) {
        if (ks->count != 1)
            return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "key id missing");
        *out = &ks->keys[0];
        return IOT_OK;
    }
    int64_t kid;
    if (json_is_integer(jkid)) {
        json_int_t v = json_integer_value(jkid);
        if (v < 0)
            return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "invalid key id");
        kid = (int64_t)v;
    } else if (json_is_string(jkid)) {
        if (!kid_parse(json_string_value(jkid), json_string_length(jkid), &kid))
            return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "invalid key id");
    } else {
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "invalid key id");
    }
    for (size_t i = 0; i < ks->count; i++) {
        if (ks->keys[i].has_kid && ks->keys[i].kid == kid) {
            *out = &ks->keys[i];
            return IOT_OK;
        }
    }
    return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "unknown key id");
}

/* Checks the header and picks the key; `alg` must be the key's own. */
static enum iot_err header_check(const struct jwt_keyset *ks, json_t *header,
                                 const struct jwt_key **out, struct iot_error *err)
{
    json_t *jalg = json_object_get(header, "alg");
    if (!json_is_string(jalg))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "malformed token: alg missing");
    enum jwt_alg alg;
    const char *name = json_string_value(jalg);
    if (strcmp(name, "RS256") == 0)
        alg = JWT_ALG_RS256;
    else if (strcmp(name, "EdDSA") == 0)
        alg = JWT_ALG_EDDSA;
    else
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "algorithm not allowed");

    json_t *typ = json_object_get(header, "typ");
    if (typ && (!json_is_string(typ) || strcasecmp(json_string_value(typ), "JWT") != 0))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "unsupported token type");
    /* every extension we could be asked to understand (b64, ...) comes through crit */
    if (json_object_get(header, "crit"))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "unsupported critical header");

    enum iot_err rc = key_select(ks, header, out, err);
    if (rc != IOT_OK)
        return rc;
    if ((*out)->alg != alg)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "algorithm does not match the key");
    return IOT_OK;
}

static enum iot_err signature_check(const struct jwt_key *key, const char *signed_part,
                                    size_t signed_len, const uint8_t *sig, size_t sig_len,
                                    struct iot_error *err)
{
    enum iot_err rc = IOT_OK;
    EVP_PKEY_CTX *pctx = NULL;
    /* RFC 7518 §3.3: an RS256 signature is exactly as long as the modulus; Ed25519's is 64 */
    if (sig_len != (size_t)EVP_PKEY_get_size(key->pkey))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "signature invalid");

    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    /* Ed25519 hashes internally: no digest, and one-shot EVP_DigestVerify() only */
    const char *digest = key->alg == JWT_ALG_RS256 ? "SHA256" : NULL;
    if (EVP_DigestVerifyInit_ex(md, &pctx, digest, NULL, NULL, key->pkey, NULL) != 1 ||
        (key->alg == JWT_ALG_RS256 && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)) {
        rc = iot_error_set(err, IOT_ERR_CRYPTO, "cannot set up signature verification");
        goto out;
    }
    if (EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)signed_part, signed_len) != 1)
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED, "signature invalid");
out:
    EVP_MD_CTX_free(md);
    /* failed checks leave entries in this thread's OpenSSL error queue */
    ERR_clear_error();
    return rc;
}

/* A NumericDate claim: 0 absent, 1 present (*out set), -1 not a number. */
static int date_claim(json_t *claims, const char *name, double *out)
{
    json_t *v = json_object_get(claims, name);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return -1;
    *out = json_number_value(v);
    return 1;
}

static enum iot_err claims_check(json_t *claims, const struct jwt_verify_options *opts,
                                 struct iot_error *err)
{
    int64_t now = opts->now ? opts->now : (int64_t)time(NULL);
    double leeway = opts->leeway > 0 ? (double)opts->leeway : 0.0;
    double t = (double)now;
    double v = 0;

    int r = date_claim(claims, "exp", &v);
    if (r == 0)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "exp claim missing");
    if (r < 0)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "invalid exp claim");
    /* written as !(a > b) so that anything unordered counts as expired */
    if (!(v > t - leeway))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "token expired");

    r = date_claim(claims, "nbf", &v);
    if (r < 0)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "invalid nbf claim");
    if (r > 0 && !(v <= t + leeway))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "token not valid yet");

    r = date_claim(claims, "iat", &v);
    if (r < 0)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "invalid iat claim");
    if (r > 0 && !(v <= t + leeway))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "token issued in the future");

    if (opts->issuer) {
        json_t *iss = json_object_get(claims, "iss");
        if (!json_is_string(iss) || strcmp(json_string_value(iss), opts->issuer) != 0 ||
            json_string_length(iss) != strlen(opts->issuer))
            return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "invalid issuer");
    }
    return IOT_OK;
}

enum iot_err jwt_verify(const struct jwt_keyset *ks, const struct jwt_verify_options *opts,
                        const char *token, json_t **claims_out, struct iot_error *err)
{
    enum iot_err rc;
    struct jwt_verify_options defaults;
    json_t *header = NULL;
    json_t *claims = NULL;
    uint8_t *payload = NULL;
    uint8_t hbuf[JWT_HEADER_MAX];
    uint8_t sig[JWT_SIG_MAX];

    if (claims_out)
        *claims_out = NULL;
    if (!opts) {
        jwt_verify_options_init(&defaults);
        opts = &defaults;
    }
    /* a server without keys is misconfigured: a 401 would log every UI user out */
    if (!ks || ks->count == 0)
        return iot_error_set(err, IOT_ERR_INTERNAL, "no JWT verification keys");
    if (!token || !*token)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "token missing");
    size_t len = strnlen(token, JWT_MAX_LEN + 1);
    if (len > JWT_MAX_LEN)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "token too long");

    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot1 || !dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "malformed token: expected 3 segments");
    const char *hseg = token;
    size_t hlen = (size_t)(dot1 - token);
    const char *pseg = dot1 + 1;
    size_t plen = (size_t)(dot2 - pseg);
    const char *sseg = dot2 + 1;
    size_t slen = len - (size_t)(sseg - token);
    if (hlen == 0 || plen == 0)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "malformed token: empty segment");
    if (!b64url_canonical(hseg, hlen) || !b64url_canonical(pseg, plen) ||
        !b64url_canonical(sseg, slen))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "malformed token: invalid base64url");

    if (B64_DECODED_MAX(hlen) > sizeof hbuf)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "malformed token: header too large");
    long n = b64_decode_any(hseg, hlen, hbuf, sizeof hbuf);
    if (n < 0)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "malformed token: invalid base64url");
    header = json_loadb((const char *)hbuf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(header)) {
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                           "malformed token: header is not a JSON object");
        goto out;
    }
    const struct jwt_key *key = NULL;
    rc = header_check(ks, header, &key, err);
    if (rc != IOT_OK)
        goto out;

    if (B64_DECODED_MAX(slen) > sizeof sig) {
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED, "signature invalid");
        goto out;
    }
    n = b64_decode_any(sseg, slen, sig, sizeof sig);
    if (n < 0) {
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED, "malformed token: invalid base64url");
        goto out;
    }
    rc = signature_check(key, token, (size_t)(dot2 - token), sig, (size_t)n, err);
    if (rc != IOT_OK)
        goto out;

    /* only now is the payload trusted enough to be parsed */
    size_t pcap = B64_DECODED_MAX(plen);
    payload = malloc(pcap);
    if (!payload) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        goto out;
    }
    n = b64_decode_any(pseg, plen, payload, pcap);
    if (n < 0) {
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED, "malformed token: invalid base64url");
        goto out;
    }
    claims = json_loadb((const char *)payload, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(claims)) {
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                           "malformed token: claims are not a JSON object");
        goto out;
    }
    rc = claims_check(claims, opts, err);
    if (rc != IOT_OK)
        goto out;
    if (claims_out) {
        *claims_out = claims;
        claims = NULL;
    }
out:
    json_decref(header);
    json_decref(claims);
    free(payload);
    return rc;
}
