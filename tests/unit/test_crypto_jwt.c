/* JWT verification: keys are generated and tokens signed here with OpenSSL (RSA 2048, Ed25519),
 * shaped as Mender's useradm issues them (mender-clients.md §5.1), then taken apart: wrong keys
 * and kids, tampering, algorithm confusions, claim times around the leeway, malformed
 * encodings, and keyset configuration errors. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/encoder.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "iot-manager/b64.h"
#include "iot-manager/jwt.h"

#define NOW    1700000000LL
#define ISSUER "mender.useradm"

struct fixture {
    char dir[64];
    EVP_PKEY *rsa1; /* kid 1 */
    EVP_PKEY *ed1;  /* kid 2 */
    EVP_PKEY *rsa2; /* kid 3 */
    EVP_PKEY *ed2;  /* not configured */
    char *rsa1_pem; /* its public PEM text: the HS256 confusion's secret */
    size_t rsa1_pem_len;
    struct jwt_keyset *ks; /* "1=rsa1 2=ed1 3=rsa2" */
    char *claims;          /* Mender user claims valid for an hour after NOW */
};

/* ---- helpers: files, encoding, signing ---- */

static char *path_in(const struct fixture *f, const char *name)
{
    char *p = malloc(256);
    assert_non_null(p);
    snprintf(p, 256, "%s/%s", f->dir, name);
    return p;
}

static void write_text(const struct fixture *f, const char *name, const char *text, size_t len)
{
    char *p = path_in(f, name);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
    free(p);
}

/* PEM of a key: `selection` public or private, `structure` "SubjectPublicKeyInfo",
 * "type-specific" (PKCS#1 for RSA) or "PrivateKeyInfo". Returns a malloc'd string. */
static char *key_pem(EVP_PKEY *key, int selection, const char *structure, size_t *len)
{
    unsigned char *data = NULL;
    size_t n = 0;
    OSSL_ENCODER_CTX *ctx = OSSL_ENCODER_CTX_new_for_pkey(key, selection, "PEM", structure, NULL);
    assert_non_null(ctx);
    assert_int_equal(OSSL_ENCODER_to_data(ctx, &data, &n), 1);
    OSSL_ENCODER_CTX_free(ctx);
    char *s = malloc(n + 1);
    assert_non_null(s);
    memcpy(s, data, n);
    s[n] = '\0';
    OPENSSL_free(data);
    if (len)
        *len = n;
    return s;
}

static void write_public(const struct fixture *f, const char *name, EVP_PKEY *key)
{
    size_t n;
    char *pem = key_pem(key, EVP_PKEY_PUBLIC_KEY, "SubjectPublicKeyInfo", &n);
    write_text(f, name, pem, n);
    free(pem);
}

static char *b64url(const void *data, size_t len)
{
    size_t cap = B64_ENCODED_LEN(len) + 1;
    char *s = malloc(cap);
    assert_non_null(s);
    assert_true(b64_encode(data, len, s, cap, true) >= 0);
    return s;
}

static char *join3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 3;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "%s.%s.%s", a, b, c);
    return s;
}

/* "b64(header).b64(claims)": what a signature covers (malloc'd). */
static char *signing_input(const char *header, const char *claims)
{
    char *h = b64url(header, strlen(header));
    char *p = b64url(claims, strlen(claims));
    size_t n = strlen(h) + strlen(p) + 2;
    char *in = malloc(n);
    assert_non_null(in);
    snprintf(in, n, "%s.%s", h, p);
    free(h);
    free(p);
    return in;
}

/* `in` (signing_input()) and the signature as the third segment (malloc'd); frees `in`. */
static char *token_of(char *in, const uint8_t *sig, size_t siglen)
{
    char *s = b64url(sig, siglen);
    size_t n = strlen(in) + strlen(s) + 2;
    char *t = malloc(n);
    assert_non_null(t);
    snprintf(t, n, "%s.%s", in, s);
    free(s);
    free(in);
    return t;
}

/* A token with a given (possibly empty or bogus) signature. */
static char *token_raw(const char *header, const char *claims, const uint8_t *sig, size_t siglen)
{
    return token_of(signing_input(header, claims), sig, siglen);
}

/* Signs "b64(header).b64(claims)" as useradm does: RS256 for RSA keys, EdDSA for Ed25519. */
static char *token_signed(const char *header, const char *claims, EVP_PKEY *key)
{
    char *in = signing_input(header, claims);
    size_t inlen = strlen(in);
    const char *digest = EVP_PKEY_is_a(key, "RSA") ? "SHA256" : NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_non_null(md);
    assert_int_equal(EVP_DigestSignInit_ex(md, NULL, digest, NULL, NULL, key, NULL), 1);
    size_t siglen = 0;
    assert_int_equal(EVP_DigestSign(md, NULL, &siglen, (unsigned char *)in, inlen), 1);
    uint8_t *sig = malloc(siglen);
    assert_non_null(sig);
    assert_int_equal(EVP_DigestSign(md, sig, &siglen, (unsigned char *)in, inlen), 1);
    EVP_MD_CTX_free(md);
    char *t = token_of(in, sig, siglen);
    free(sig);
    return t;
}

/* HS256 over "b64(header).b64(claims)" keyed with `secret`. */
static char *token_hmac(const char *header, const char *claims, const void *secret, size_t len)
{
    char *in = signing_input(header, claims);
    uint8_t mac[32];
    size_t maclen = 0;
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, secret, len, (unsigned char *)in,
                              strlen(in), mac, sizeof mac, &maclen));
    assert_int_equal(maclen, 32);
    return token_of(in, mac, maclen);
}

/* Mender user claims with the given exp; `extra` is inserted before the closing brace. */
static char *claims_exp(long long exp, const char *extra)
{
    char *s = malloc(1024);
    assert_non_null(s);
    snprintf(s, 1024,
             "{\"jti\":\"0b7d3c2e-1f5a-4b8e-9c1d-2a3b4c5d6e7f\",\"sub\":\"user-1\",\"exp\":%lld,"
             "\"iat\":%lld,\"nbf\":%lld,\"iss\":\"" ISSUER "\",\"scp\":\"mender.*\","
             "\"mender.user\":true,\"mender.tenant\":\"tenant-1\"%s}",
             exp, NOW - 10, NOW - 10, extra ? extra : "");
    return s;
}

static struct jwt_verify_options opts_at(long long now)
{
    struct jwt_verify_options o;
    jwt_verify_options_init(&o);
    o.issuer = ISSUER;
    o.now = now;
    return o;
}

/* Verifies at NOW against the fixture's keyset; returns the code, err filled. */
static enum iot_err check(const struct fixture *f, const char *token, struct iot_error *err)
{
    struct jwt_verify_options o = opts_at(NOW);
    json_t *claims = (json_t *)(uintptr_t)1; /* must be overwritten */
    memset(err, 0, sizeof *err);
    enum iot_err rc = jwt_verify(f->ks, &o, token, &claims, err);
    if (rc == IOT_OK) {
        assert_true(json_is_object(claims));
        json_decref(claims);
    } else {
        assert_null(claims);
        assert_int_equal(err->code, rc);
    }
    return rc;
}

static void assert_rejected(const struct fixture *f, const char *token, const char *reason)
{
    struct iot_error err;
    enum iot_err rc = check(f, token, &err);
    if (rc != IOT_ERR_UNAUTHORIZED || strstr(err.msg, reason) == NULL)
        fail_msg("expected 401 \"%s\", got %d \"%s\"", reason, rc, err.msg);
}

static void assert_accepted(const struct fixture *f, const char *token)
{
    struct iot_error err;
    enum iot_err rc = check(f, token, &err);
    if (rc != IOT_OK)
        fail_msg("expected acceptance, got %d \"%s\"", rc, err.msg);
}

/* Signs, checks and frees in one go. */
static void signed_rejected(const struct fixture *f, const char *header, const char *claims,
                            EVP_PKEY *key, const char *reason)
{
    char *t = token_signed(header, claims, key);
    struct iot_error err;
    enum iot_err rc = check(f, t, &err);
    free(t);
    if (rc != IOT_ERR_UNAUTHORIZED || strstr(err.msg, reason) == NULL)
        fail_msg("%s: expected 401 \"%s\", got %d \"%s\"", header, reason, rc, err.msg);
}

/* A header that must be refused, and the reason the refusal must name. */
struct refusal {
    const char *header;
    const char *reason;
};

/* signed_rejected() for each of `n` cases, all signing `claims` with `key`. */
static void headers_rejected(const struct fixture *f, const char *claims, EVP_PKEY *key,
                             const struct refusal *cases, size_t n)
{
    for (size_t i = 0; i < n; i++)
        signed_rejected(f, cases[i].header, claims, key, cases[i].reason);
}

#define N_CASES(a) (sizeof(a) / sizeof((a)[0]))

static void signed_accepted(const struct fixture *f, const char *header, const char *claims,
                            EVP_PKEY *key)
{
    char *t = token_signed(header, claims, key);
    assert_accepted(f, t);
    free(t);
}

static const char H_RS1[] = "{\"alg\":\"RS256\",\"kid\":1,\"typ\":\"JWT\"}";
static const char H_ED2[] = "{\"alg\":\"EdDSA\",\"kid\":2,\"typ\":\"JWT\"}";

/* ---- fixture ---- */

static int group_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/test_crypto_jwt.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    f->rsa1 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    f->rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    f->ed1 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    f->ed2 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!f->rsa1 || !f->rsa2 || !f->ed1 || !f->ed2)
        return -1;
    f->claims = claims_exp(NOW + 3600, NULL);
    f->rsa1_pem = key_pem(f->rsa1, EVP_PKEY_PUBLIC_KEY, "SubjectPublicKeyInfo", &f->rsa1_pem_len);
    write_public(f, "rsa1.pem", f->rsa1);
    write_public(f, "rsa2.pem", f->rsa2);
    write_public(f, "ed1.pem", f->ed1);
    write_public(f, "ed2.pem", f->ed2);

    char spec[512];
    snprintf(spec, sizeof spec, "1=%s/rsa1.pem\t2=%s/ed1.pem \n 3=%s/rsa2.pem ", f->dir, f->dir,
             f->dir);
    struct iot_error err = {0};
    if (jwt_keyset_load(spec, &f->ks, &err) != IOT_OK) {
        fprintf(stderr, "keyset: %s\n", err.msg);
        return -1;
    }
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    jwt_keyset_free(f->ks);
    EVP_PKEY_free(f->rsa1);
    EVP_PKEY_free(f->rsa2);
    EVP_PKEY_free(f->ed1);
    EVP_PKEY_free(f->ed2);
    free(f->rsa1_pem);
    free(f->claims);
    free(f);
    return 0;
}

/* ---- acceptance ---- */

static void test_valid_rs256_and_eddsa(void **state)
{
    struct fixture *f = *state;
    const char *headers[] = {H_RS1, "{\"alg\":\"RS256\",\"kid\":\"1\",\"typ\":\"JWT\"}",
                             "{\"kid\":3,\"alg\":\"RS256\"}"};
    EVP_PKEY *keys[] = {f->rsa1, f->rsa1, f->rsa2};
    for (size_t i = 0; i < 3; i++) {
        char *t = token_signed(headers[i], f->claims, keys[i]);
        struct jwt_verify_options o = opts_at(NOW);
        json_t *claims = NULL;
        struct iot_error err = {0};
        assert_int_equal(jwt_verify(f->ks, &o, t, &claims, &err), IOT_OK);
        assert_string_equal(json_string_value(json_object_get(claims, "sub")), "user-1");
        assert_string_equal(json_string_value(json_object_get(claims, "mender.tenant")),
                            "tenant-1");
        assert_true(json_is_true(json_object_get(claims, "mender.user")));
        json_decref(claims);
        /* claims_out is optional */
        assert_int_equal(jwt_verify(f->ks, &o, t, NULL, NULL), IOT_OK);
        free(t);
    }
    signed_accepted(f, H_ED2, f->claims, f->ed1);
    signed_accepted(f, "{\"alg\":\"EdDSA\",\"kid\":\"2\",\"typ\":\"JWT\"}", f->claims, f->ed1);
    /* typ is case-insensitive, and optional */
    signed_accepted(f, "{\"alg\":\"EdDSA\",\"kid\":2,\"typ\":\"jwt\"}", f->claims, f->ed1);
    signed_accepted(f, "{\"alg\":\"EdDSA\",\"kid\":2}", f->claims, f->ed1);
}

static void test_default_options_use_the_clock(void **state)
{
    struct fixture *f = *state;
    long long now = (long long)time(NULL);
    char *c = claims_exp(now + 600, NULL);
    char *t = token_signed(H_ED2, c, f->ed1);
    assert_int_equal(jwt_verify(f->ks, NULL, t, NULL, NULL), IOT_OK);
    free(t);
    free(c);
    c = claims_exp(now - 600, NULL);
    t = token_signed(H_ED2, c, f->ed1);
    struct iot_error err = {0};
    assert_int_equal(jwt_verify(f->ks, NULL, t, NULL, &err), IOT_ERR_UNAUTHORIZED);
    assert_string_equal(err.msg, "token expired");
    free(t);
    free(c);
}

static void test_kid_absent(void **state)
{
    struct fixture *f = *state;
    /* several keys: a token must say which */
    signed_rejected(f, "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", f->claims, f->rsa1, "key id missing");

    /* one key, with a kid: tokens without kid use it, tokens with another kid do not */
    struct fixture one = *f;
    char *spec = path_in(f, "rsa1.pem");
    char spec_kid[300];
    snprintf(spec_kid, sizeof spec_kid, "7=%s", spec);
    struct iot_error err = {0};
    assert_int_equal(jwt_keyset_load(spec_kid, &one.ks, &err), IOT_OK);
    signed_accepted(&one, "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", f->claims, f->rsa1);
    signed_accepted(&one, "{\"alg\":\"RS256\",\"kid\":7}", f->claims, f->rsa1);
    signed_rejected(&one, H_RS1, f->claims, f->rsa1, "unknown key id");
    jwt_keyset_free(one.ks);

    /* one key without kid (single file, or a bare path): any kid or none */
    for (int i = 0; i < 2; i++) {
        one.ks = NULL;
        if (i == 0)
            assert_int_equal(jwt_keyset_load_file(spec, &one.ks, &err), IOT_OK);
        else
            assert_int_equal(jwt_keyset_load(spec, &one.ks, &err), IOT_OK);
        assert_int_equal(jwt_keyset_count(one.ks), 1);
        signed_accepted(&one, "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", f->claims, f->rsa1);
        signed_accepted(&one, H_RS1, f->claims, f->rsa1);
        signed_accepted(&one, "{\"alg\":\"RS256\",\"kid\":\"useradm-2024\"}", f->claims, f->rsa1);
        /* the algorithm still comes from the key, and the signature must still match */
        signed_rejected(&one, "{\"alg\":\"EdDSA\"}", f->claims, f->ed1, "algorithm does not match");
        signed_rejected(&one, "{\"alg\":\"RS256\"}", f->claims, f->rsa2, "signature invalid");
        jwt_keyset_free(one.ks);
    }
    free(spec);
}

/* ---- rejection: keys and signatures ---- */

static void test_wrong_kid(void **state)
{
    struct fixture *f = *state;
    static const struct refusal cases[] = {
        {"{\"alg\":\"RS256\",\"kid\":9}", "unknown key id"},
        {"{\"alg\":\"RS256\",\"kid\":\"9\"}", "unknown key id"},
        {"{\"alg\":\"RS256\",\"kid\":-1}", "invalid key id"},
        {"{\"alg\":\"RS256\",\"kid\":1.0}", "invalid key id"},
        {"{\"alg\":\"RS256\",\"kid\":\"1a\"}", "invalid key id"},
        {"{\"alg\":\"RS256\",\"kid\":\" 1\"}", "invalid key id"},
        {"{\"alg\":\"RS256\",\"kid\":\"\"}", "invalid key id"},
        {"{\"alg\":\"RS256\",\"kid\":\"1234567890123456789\"}", "invalid key id"},
        {"{\"alg\":\"RS256\",\"kid\":null}", "invalid key id"},
        {"{\"alg\":\"RS256\",\"kid\":[1]}", "invalid key id"},
        /* right key, another kid of the same type */
        {"{\"alg\":\"RS256\",\"kid\":3}", "signature invalid"},
    };
    headers_rejected(f, f->claims, f->rsa1, cases, N_CASES(cases));
}

static void test_wrong_key(void **state)
{
    struct fixture *f = *state;
    signed_rejected(f, H_RS1, f->claims, f->rsa2, "signature invalid");
    signed_rejected(f, H_ED2, f->claims, f->ed2, "signature invalid");
}

/* Replaces segment `which` (0 header, 1 payload) of a token signed over the originals. */
static char *splice(const char *token, int which, const char *json)
{
    const char *d1 = strchr(token, '.');
    const char *d2 = strchr(d1 + 1, '.');
    char *seg = b64url(json, strlen(json));
    char *h = strndup(token, (size_t)(d1 - token));
    char *p = strndup(d1 + 1, (size_t)(d2 - d1 - 1));
    char *t = which == 0 ? join3(seg, p, d2 + 1) : join3(h, seg, d2 + 1);
    free(seg);
    free(h);
    free(p);
    return t;
}

static void test_tampered(void **state)
{
    struct fixture *f = *state;
    char *c_other = claims_exp(NOW + 3600, NULL);
    char *tenant = strstr(c_other, "tenant-1");
    tenant[7] = '2';

    EVP_PKEY *keys[] = {f->rsa1, f->ed1};
    const char *headers[] = {H_RS1, H_ED2};
    const char *headers_other[] = {"{\"alg\":\"RS256\",\"kid\":1,\"typ\":\"JWT\",\"x\":1}",
                                   "{\"alg\":\"EdDSA\",\"kid\":2,\"typ\":\"JWT\",\"x\":1}"};
    for (size_t i = 0; i < 2; i++) {
        char *t = token_signed(headers[i], f->claims, keys[i]);
        assert_accepted(f, t);
        char *bad = splice(t, 1, c_other);
        assert_rejected(f, bad, "signature invalid");
        free(bad);
        bad = splice(t, 0, headers_other[i]);
        assert_rejected(f, bad, "signature invalid");
        free(bad);

        /* one changed signature character */
        bad = malloc(strlen(t) + 8);
        assert_non_null(bad);
        strcpy(bad, t);
        char *sig = strrchr(bad, '.') + 1;
        sig[5] = sig[5] == 'A' ? 'B' : 'A';
        assert_rejected(f, bad, "signature invalid");
        /* signature extended by three bytes, or cut short */
        strcpy(bad, t);
        strcat(bad, "AAAA");
        assert_rejected(f, bad, "signature invalid");
        strcpy(bad, t);
        bad[strlen(bad) - 4] = '\0';
        struct iot_error err;
        assert_int_equal(check(f, bad, &err), IOT_ERR_UNAUTHORIZED);
        /* no signature at all */
        strcpy(bad, t);
        *(strrchr(bad, '.') + 1) = '\0';
        assert_rejected(f, bad, "signature invalid");
        free(bad);
        free(t);
    }
    free(c_other);
}

/* ---- rejection: algorithm confusion ---- */

static void test_alg_none(void **state)
{
    struct fixture *f = *state;
    const char *nones[] = {"{\"alg\":\"none\",\"kid\":1,\"typ\":\"JWT\"}",
                           "{\"alg\":\"None\",\"kid\":1}", "{\"alg\":\"NONE\",\"kid\":2}",
                           "{\"alg\":\"none\"}"};
    for (size_t i = 0; i < 4; i++) {
        char *t = token_raw(nones[i], f->claims, NULL, 0);
        assert_int_equal(t[strlen(t) - 1], '.');
        assert_rejected(f, t, "algorithm not allowed");
        free(t);
    }
    /* and a real signature does not rescue it */
    signed_rejected(f, "{\"alg\":\"none\",\"kid\":1}", f->claims, f->rsa1, "algorithm not allowed");
}

static void test_hs256_with_public_key_as_secret(void **state)
{
    struct fixture *f = *state;
    /* the classic confusion: a verifier that takes alg from the header would HMAC with the
     * "key" it holds, the public PEM, and accept this */
    const char *hs[] = {"{\"alg\":\"HS256\",\"kid\":1,\"typ\":\"JWT\"}", "{\"alg\":\"HS256\"}"};
    for (size_t i = 0; i < 2; i++) {
        char *t = token_hmac(hs[i], f->claims, f->rsa1_pem, f->rsa1_pem_len);
        assert_rejected(f, t, "algorithm not allowed");
        free(t);
        /* same with the PEM without its final newline, as some libraries strip it */
        t = token_hmac(hs[i], f->claims, f->rsa1_pem, f->rsa1_pem_len - 1);
        assert_rejected(f, t, "algorithm not allowed");
        free(t);
    }
}

static void test_alg_must_match_key(void **state)
{
    struct fixture *f = *state;
    /* RS256 on the Ed25519 kid, signed with a real RSA key */
    signed_rejected(f, "{\"alg\":\"RS256\",\"kid\":2}", f->claims, f->rsa1,
                    "algorithm does not match");
    /* EdDSA on an RSA kid, signed with a real Ed25519 key */
    signed_rejected(f, "{\"alg\":\"EdDSA\",\"kid\":1}", f->claims, f->ed1,
                    "algorithm does not match");
    signed_rejected(f, "{\"alg\":\"EdDSA\",\"kid\":3}", f->claims, f->ed1,
                    "algorithm does not match");

    /* anything outside RS256/EdDSA, spelled exactly */
    const char *algs[] = {"HS256", "HS384",   "HS512",   "ES256", "ES384", "ES512",
                          "PS256", "PS512",   "RS384",   "RS512", "rs256", "RS256 ",
                          "eddsa", "Ed25519", "ED25519", ""};
    for (size_t i = 0; i < sizeof algs / sizeof algs[0]; i++) {
        char h[80];
        snprintf(h, sizeof h, "{\"alg\":\"%s\",\"kid\":1}", algs[i]);
        signed_rejected(f, h, f->claims, f->rsa1, "algorithm not allowed");
    }
    static const struct refusal malformed[] = {
        {"{\"kid\":1}", "alg missing"},
        {"{\"alg\":1,\"kid\":1}", "alg missing"},
        {"{\"alg\":null,\"kid\":1}", "alg missing"},
        /* a duplicate alg could be read either way: refused */
        {"{\"alg\":\"RS256\",\"alg\":\"HS256\",\"kid\":1}", "header is not a JSON object"},
    };
    headers_rejected(f, f->claims, f->rsa1, malformed, N_CASES(malformed));
}

static void test_header_rules(void **state)
{
    struct fixture *f = *state;
    static const struct refusal cases[] = {
        {"{\"alg\":\"RS256\",\"kid\":1,\"typ\":\"at+jwt\"}", "unsupported token type"},
        {"{\"alg\":\"RS256\",\"kid\":1,\"typ\":1}", "unsupported token type"},
        {"{\"alg\":\"RS256\",\"kid\":1,\"crit\":[\"b64\"],\"b64\":false}",
         "unsupported critical header"},
        {"{\"alg\":\"RS256\",\"kid\":1,\"crit\":[]}", "unsupported critical header"},
        {"[\"RS256\"]", "header is not a JSON object"},
        {"{\"alg\":\"RS256\",\"kid\":1", "header is not a JSON object"},
    };
    headers_rejected(f, f->claims, f->rsa1, cases, N_CASES(cases));
    /* keys offered by the token itself are ignored: the signature is checked with kid 1 */
    signed_rejected(f, "{\"alg\":\"RS256\",\"kid\":1,\"jku\":\"https://evil.example/k\"}",
                    f->claims, f->rsa2, "signature invalid");
}

/* ---- rejection: claims ---- */

static void test_exp(void **state)
{
    struct fixture *f = *state;
    char *c;
    c = claims_exp(NOW - 61, NULL); /* beyond the 60 s leeway */
    signed_rejected(f, H_RS1, c, f->rsa1, "token expired");
    free(c);
    c = claims_exp(NOW - 60, NULL); /* exp must be later than now - leeway */
    signed_rejected(f, H_ED2, c, f->ed1, "token expired");
    free(c);
    c = claims_exp(NOW - 59, NULL);
    signed_accepted(f, H_RS1, c, f->rsa1);
    free(c);
    c = claims_exp(NOW - 30, NULL); /* expired, but within the leeway */
    signed_accepted(f, H_ED2, c, f->ed1);
    free(c);

    /* no leeway */
    c = claims_exp(NOW, NULL);
    char *t = token_signed(H_ED2, c, f->ed1);
    struct jwt_verify_options o = opts_at(NOW);
    o.leeway = 0;
    struct iot_error err = {0};
    assert_int_equal(jwt_verify(f->ks, &o, t, NULL, &err), IOT_ERR_UNAUTHORIZED);
    assert_string_equal(err.msg, "token expired");
    o.leeway = -100; /* counts as 0 */
    assert_int_equal(jwt_verify(f->ks, &o, t, NULL, &err), IOT_ERR_UNAUTHORIZED);
    o.now = NOW - 1;
    o.leeway = 0;
    assert_int_equal(jwt_verify(f->ks, &o, t, NULL, &err), IOT_OK);
    free(t);
    free(c);

    /* reals are NumericDates too */
    const char *reals[] = {"{\"iss\":\"" ISSUER "\",\"exp\":1700000000.5}",
                           "{\"iss\":\"" ISSUER "\",\"exp\":1.7000036e9}",
                           "{\"iss\":\"" ISSUER "\",\"exp\":1e300}"};
    for (size_t i = 0; i < 3; i++)
        signed_accepted(f, H_ED2, reals[i], f->ed1);
    signed_rejected(f, H_ED2, "{\"iss\":\"" ISSUER "\",\"exp\":1699999939.9}", f->ed1,
                    "token expired");
    signed_rejected(f, H_ED2, "{\"iss\":\"" ISSUER "\",\"exp\":-1e300}", f->ed1, "token expired");

    /* required, and a number */
    signed_rejected(f, H_RS1, "{\"sub\":\"u\",\"iss\":\"" ISSUER "\"}", f->rsa1,
                    "exp claim missing");
    signed_rejected(f, H_ED2, "{\"iss\":\"" ISSUER "\",\"exp\":\"1800000000\"}", f->ed1,
                    "invalid exp claim");
    signed_rejected(f, H_ED2, "{\"iss\":\"" ISSUER "\",\"exp\":true}", f->ed1, "invalid exp claim");
    signed_rejected(f, H_ED2, "{\"iss\":\"" ISSUER "\",\"exp\":null}", f->ed1, "invalid exp claim");
}

static void test_nbf_iat(void **state)
{
    struct fixture *f = *state;
    char c[256];
    snprintf(c, sizeof c, "{\"iss\":\"" ISSUER "\",\"exp\":%lld,\"nbf\":%lld}", NOW + 3600,
             NOW + 61);
    signed_rejected(f, H_RS1, c, f->rsa1, "token not valid yet");
    snprintf(c, sizeof c, "{\"iss\":\"" ISSUER "\",\"exp\":%lld,\"nbf\":%lld}", NOW + 3600,
             NOW + 3000);
    signed_rejected(f, H_ED2, c, f->ed1, "token not valid yet");
    snprintf(c, sizeof c, "{\"iss\":\"" ISSUER "\",\"exp\":%lld,\"nbf\":%lld}", NOW + 3600,
             NOW + 60);
    signed_accepted(f, H_ED2, c, f->ed1);
    snprintf(c, sizeof c, "{\"iss\":\"" ISSUER "\",\"exp\":%lld,\"nbf\":\"soon\"}", NOW + 3600);
    signed_rejected(f, H_ED2, c, f->ed1, "invalid nbf claim");

    snprintf(c, sizeof c, "{\"iss\":\"" ISSUER "\",\"exp\":%lld,\"iat\":%lld}", NOW + 3600,
             NOW + 61);
    signed_rejected(f, H_ED2, c, f->ed1, "token issued in the future");
    snprintf(c, sizeof c, "{\"iss\":\"" ISSUER "\",\"exp\":%lld,\"iat\":%lld.5}", NOW + 3600,
             NOW + 60);
    signed_rejected(f, H_ED2, c, f->ed1, "token issued in the future");
    snprintf(c, sizeof c, "{\"iss\":\"" ISSUER "\",\"exp\":%lld,\"iat\":%lld}", NOW + 3600,
             NOW + 30);
    signed_accepted(f, H_ED2, c, f->ed1);
    snprintf(c, sizeof c, "{\"iss\":\"" ISSUER "\",\"exp\":%lld,\"iat\":[]}", NOW + 3600);
    signed_rejected(f, H_ED2, c, f->ed1, "invalid iat claim");
}

static void test_issuer(void **state)
{
    struct fixture *f = *state;
    char c[256];
    /* deviceauth's default issuer is not useradm's */
    snprintf(c, sizeof c, "{\"exp\":%lld,\"iss\":\"Mender\"}", NOW + 3600);
    signed_rejected(f, H_RS1, c, f->rsa1, "invalid issuer");
    snprintf(c, sizeof c, "{\"exp\":%lld,\"iss\":\"mender.useradm \"}", NOW + 3600);
    signed_rejected(f, H_RS1, c, f->rsa1, "invalid issuer");
    snprintf(c, sizeof c, "{\"exp\":%lld,\"iss\":[\"" ISSUER "\"]}", NOW + 3600);
    signed_rejected(f, H_RS1, c, f->rsa1, "invalid issuer");
    snprintf(c, sizeof c, "{\"exp\":%lld}", NOW + 3600);
    signed_rejected(f, H_RS1, c, f->rsa1, "invalid issuer");

    /* not configured: not checked */
    snprintf(c, sizeof c, "{\"exp\":%lld,\"iss\":\"Mender\"}", NOW + 3600);
    char *t = token_signed(H_RS1, c, f->rsa1);
    struct jwt_verify_options o = opts_at(NOW);
    o.issuer = NULL;
    assert_int_equal(jwt_verify(f->ks, &o, t, NULL, NULL), IOT_OK);
    o.issuer = "Mender";
    assert_int_equal(jwt_verify(f->ks, &o, t, NULL, NULL), IOT_OK);
    free(t);
}

static void test_claims_shape(void **state)
{
    struct fixture *f = *state;
    signed_rejected(f, H_ED2, "[1800000000]", f->ed1, "claims are not a JSON object");
    signed_rejected(f, H_ED2, "{\"exp\":1800000000", f->ed1, "claims are not a JSON object");
    signed_rejected(f, H_ED2, "{\"exp\":1,\"exp\":1800000000}", f->ed1,
                    "claims are not a JSON object");
    signed_rejected(f, H_ED2, "", f->ed1, "empty segment");
}

/* ---- rejection: encoding ---- */

static void test_segments(void **state)
{
    struct fixture *f = *state;
    char *t = token_signed(H_RS1, f->claims, f->rsa1);
    char *sig = strrchr(t, '.');
    size_t n = strlen(t);
    char *buf = malloc(n + 16);

    memcpy(buf, t, (size_t)(sig - t)); /* 2 segments: header.payload */
    buf[sig - t] = '\0';
    assert_rejected(f, buf, "expected 3 segments");
    snprintf(buf, n + 16, "%s.", t); /* 4 segments, the last empty */
    assert_rejected(f, buf, "expected 3 segments");
    snprintf(buf, n + 16, "%s.AAAA", t);
    assert_rejected(f, buf, "expected 3 segments");
    snprintf(buf, n + 16, "%s", strchr(t, '.')); /* empty header */
    assert_rejected(f, buf, "empty segment");
    assert_rejected(f, "..", "empty segment");
    assert_rejected(f, "abc", "expected 3 segments");
    assert_rejected(f, "", "token missing");
    struct iot_error err = {0};
    assert_int_equal(jwt_verify(f->ks, NULL, NULL, NULL, &err), IOT_ERR_UNAUTHORIZED);
    assert_string_equal(err.msg, "token missing");
    free(buf);
    free(t);
}

static void test_base64(void **state)
{
    struct fixture *f = *state;
    char *t = token_signed(H_RS1, f->claims, f->rsa1);
    size_t n = strlen(t);
    char *buf = malloc(n + 16);
    assert_accepted(f, t);

    /* a 256-byte signature is 342 characters: padded it would end in "==" */
    assert_int_equal(strlen(strrchr(t, '.') + 1), 342);
    snprintf(buf, n + 16, "%s==", t);
    assert_rejected(f, buf, "invalid base64url");
    snprintf(buf, n + 16, "%s=", t);
    assert_rejected(f, buf, "invalid base64url");

    /* padding inside the header segment: H_RS1 is 35 bytes, 47 characters unpadded */
    const char *d1 = strchr(t, '.');
    assert_int_equal(d1 - t, 47);
    snprintf(buf, n + 16, "%.*s=%s", (int)(d1 - t), t, d1);
    assert_rejected(f, buf, "invalid base64url");

    /* the standard alphabet and stray characters */
    strcpy(buf, t);
    buf[3] = '+';
    assert_rejected(f, buf, "invalid base64url");
    strcpy(buf, t);
    buf[strlen(buf) - 10] = '/';
    assert_rejected(f, buf, "invalid base64url");
    strcpy(buf, t);
    *(strchr(buf, '.') + 4) = '!';
    assert_rejected(f, buf, "invalid base64url");
    strcpy(buf, t);
    buf[2] = ' ';
    assert_rejected(f, buf, "invalid base64url");
    assert_rejected(f, "!!!!.eyJ9.AAAA", "invalid base64url");
    assert_rejected(f, "A.A.A", "invalid base64url"); /* a lone character is never base64 */

    /* non-canonical last character: decodes to the same bytes, still refused */
    strcpy(buf, t);
    char *last = buf + strlen(buf) - 1;
    const char *alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t v = (size_t)(strchr(alpha, *last) - alpha);
    assert_int_equal(v & 0x0f, 0);
    *last = alpha[v | 1];
    assert_rejected(f, buf, "invalid base64url");

    /* base64 of something that is not JSON */
    assert_rejected(f, "bm90IGpzb24.eyJ9.AAAA", "header is not a JSON object");
    free(buf);
    free(t);
}

static void test_length_bound(void **state)
{
    struct fixture *f = *state;
    /* not NUL-terminated: only JWT_MAX_LEN + 1 bytes may be read (ASan checks it) */
    char *big = malloc(JWT_MAX_LEN + 1);
    assert_non_null(big);
    memset(big, 'A', JWT_MAX_LEN + 1);
    big[100] = '.';
    big[200] = '.';
    struct iot_error err = {0};
    assert_int_equal(jwt_verify(f->ks, NULL, big, NULL, &err), IOT_ERR_UNAUTHORIZED);
    assert_string_equal(err.msg, "token too long");
    free(big);

    /* a large, valid token just under the bound is fine; one over it is not */
    size_t pad = 11000;
    char *extra = malloc(pad + 32);
    assert_non_null(extra);
    strcpy(extra, ",\"pad\":\"");
    memset(extra + strlen(extra), 'x', pad);
    strcpy(extra + 8 + pad, "\"");
    size_t clen = strlen(f->claims) + pad + 32;
    char *c2 = malloc(clen);
    snprintf(c2, clen, "%.*s%s}", (int)(strlen(f->claims) - 1), f->claims, extra);
    char *t = token_signed(H_ED2, c2, f->ed1);
    assert_true(strlen(t) <= JWT_MAX_LEN);
    assert_true(strlen(t) > JWT_MAX_LEN - 2000);
    assert_accepted(f, t);
    free(t);
    free(c2);
    c2 = malloc(clen + 2000);
    snprintf(c2, clen + 2000, "%.*s%s,\"more\":\"%01500d\"}", (int)(strlen(f->claims) - 1),
             f->claims, extra, 0);
    t = token_signed(H_ED2, c2, f->ed1);
    assert_true(strlen(t) > JWT_MAX_LEN);
    assert_rejected(f, t, "token too long");
    free(t);
    free(c2);
    free(extra);

    /* an oversized header or signature segment within the bound */
    char *h = malloc(4000);
    memset(h, 'e', 3000);
    h[3000] = '\0';
    char *tok = join3(h, "eyJ9", "AAAA");
    assert_rejected(f, tok, "header too large");
    free(tok);
    tok = join3("eyJhbGciOiJSUzI1NiIsImtpZCI6MX0", "eyJ9", h);
    assert_rejected(f, tok, "signature invalid");
    free(tok);
    free(h);
}

/* ---- keyset loading ---- */

static void expect_load_error(const char *spec, enum iot_err code, const char *needle1,
                              const char *needle2)
{
    struct jwt_keyset *ks = (struct jwt_keyset *)(uintptr_t)1;
    struct iot_error err = {0};
    assert_int_equal(jwt_keyset_load(spec, &ks, &err), code);
    assert_null(ks);
    if (!strstr(err.msg, needle1) || (needle2 && !strstr(err.msg, needle2)))
        fail_msg("error \"%s\" lacks \"%s\" / \"%s\"", err.msg, needle1, needle2 ? needle2 : "");
}

static void test_keyset_load_errors(void **state)
{
    struct fixture *f = *state;
    char spec[1024];

    snprintf(spec, sizeof spec, "1=%s/missing.pem", f->dir);
    expect_load_error(spec, IOT_ERR_IO, "missing.pem", "No such file");
    struct jwt_keyset *ks = NULL;
    struct iot_error err = {0};
    snprintf(spec, sizeof spec, "%s/missing.pem", f->dir);
    assert_int_equal(jwt_keyset_load_file(spec, &ks, &err), IOT_ERR_IO);
    assert_null(ks);
    assert_non_null(strstr(err.msg, "missing.pem"));

    /* not a public key: garbage, a private key, a certificate-like block, two keys */
    write_text(f, "garbage.pem", "hello\n", 6);
    snprintf(spec, sizeof spec, "1=%s/garbage.pem", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "garbage.pem", "not a PEM public key");

    size_t n;
    char *priv = key_pem(f->rsa1, EVP_PKEY_KEYPAIR, "PrivateKeyInfo", &n);
    write_text(f, "private.pem", priv, n);
    free(priv);
    snprintf(spec, sizeof spec, "1=%s/private.pem", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "private.pem", "private key");
    priv = key_pem(f->ed1, EVP_PKEY_KEYPAIR, "PrivateKeyInfo", &n);
    write_text(f, "ed-private.pem", priv, n);
    free(priv);
    snprintf(spec, sizeof spec, "%s/ed-private.pem", f->dir);
    assert_int_equal(jwt_keyset_load_file(spec, &ks, &err), IOT_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "private key"));

    const char cert[] = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    write_text(f, "cert.pem", cert, sizeof cert - 1);
    snprintf(spec, sizeof spec, "1=%s/cert.pem", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "cert.pem", "not a public key");

    const char bad_body[] = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    write_text(f, "badbody.pem", bad_body, sizeof bad_body - 1);
    snprintf(spec, sizeof spec, "1=%s/badbody.pem", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "badbody.pem", "cannot decode");

    char *a = key_pem(f->rsa1, EVP_PKEY_PUBLIC_KEY, "SubjectPublicKeyInfo", NULL);
    char *b = key_pem(f->ed1, EVP_PKEY_PUBLIC_KEY, "SubjectPublicKeyInfo", NULL);
    char two[4096];
    snprintf(two, sizeof two, "%s%s", a, b);
    write_text(f, "two.pem", two, strlen(two));
    free(a);
    free(b);
    snprintf(spec, sizeof spec, "1=%s/two.pem", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "two.pem", "more than one");

    /* RSA 1024 and other key types */
    EVP_PKEY *weak = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    assert_non_null(weak);
    write_public(f, "rsa1024.pem", weak);
    EVP_PKEY_free(weak);
    snprintf(spec, sizeof spec, "1=%s/rsa1024.pem", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "rsa1024.pem", "1024 bits is too short");
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(ec);
    write_public(f, "ec.pem", ec);
    EVP_PKEY_free(ec);
    snprintf(spec, sizeof spec, "1=%s/ec.pem", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "ec.pem", "unsupported key type");

    /* a directory */
    snprintf(spec, sizeof spec, "1=%s", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "not a regular file", NULL);

    /* configuration string errors */
    snprintf(spec, sizeof spec, "1=%s/rsa1.pem 1=%s/ed1.pem", f->dir, f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "duplicate JWT key id 1", "ed1.pem");
    snprintf(spec, sizeof spec, "1=%s/rsa1.pem %s/ed1.pem", f->dir, f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "kid=path", NULL);
    snprintf(spec, sizeof spec, "%s/ed1.pem 1=%s/rsa1.pem", f->dir, f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "kid=path", NULL);
    snprintf(spec, sizeof spec, "=%s/rsa1.pem", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "empty key id", NULL);
    expect_load_error("1=", IOT_ERR_CONFIG, "no path", NULL);
    snprintf(spec, sizeof spec, "1234567890123456789=%s/rsa1.pem", f->dir);
    expect_load_error(spec, IOT_ERR_CONFIG, "more than 18 digits", NULL);
    expect_load_error("", IOT_ERR_CONFIG, "no JWT verification keys", NULL);
    expect_load_error(" \t\n", IOT_ERR_CONFIG, "no JWT verification keys", NULL);
    expect_load_error(NULL, IOT_ERR_CONFIG, "no JWT verification keys", NULL);
    spec[0] = '\0';
    for (int i = 0; i <= JWT_KEYSET_MAX; i++) {
        size_t len = strlen(spec);
        snprintf(spec + len, sizeof spec - len, "%d=%s/ed1.pem ", i, f->dir);
    }
    expect_load_error(spec, IOT_ERR_CONFIG, "too many JWT keys", NULL);
}

static void test_keyset_formats_and_info(void **state)
{
    struct fixture *f = *state;
    /* PKCS#1 "RSA PUBLIC KEY" is accepted as well as SubjectPublicKeyInfo */
    size_t n;
    char *pkcs1 = key_pem(f->rsa1, EVP_PKEY_PUBLIC_KEY, "type-specific", &n);
    assert_non_null(strstr(pkcs1, "BEGIN RSA PUBLIC KEY"));
    write_text(f, "rsa1-pkcs1.pem", pkcs1, n);
    free(pkcs1);

    char spec[512];
    snprintf(spec, sizeof spec, "0=%s/rsa1-pkcs1.pem 42=%s/ed1.pem", f->dir, f->dir);
    struct fixture g = *f;
    struct iot_error err = {0};
    assert_int_equal(jwt_keyset_load(spec, &g.ks, &err), IOT_OK);
    assert_int_equal(jwt_keyset_count(g.ks), 2);
    struct jwt_key_info info;
    assert_int_equal(jwt_keyset_key_info(g.ks, 0, &info), IOT_OK);
    assert_true(info.has_kid);
    assert_int_equal(info.kid, 0);
    assert_int_equal(info.alg, JWT_ALG_RS256);
    assert_int_equal(info.bits, 2048);
    assert_string_equal(jwt_alg_name(info.alg), "RS256");
    assert_int_equal(jwt_keyset_key_info(g.ks, 1, &info), IOT_OK);
    assert_int_equal(info.kid, 42);
    assert_int_equal(info.alg, JWT_ALG_EDDSA);
    assert_string_equal(jwt_alg_name(info.alg), "EdDSA");
    assert_int_equal(jwt_keyset_key_info(g.ks, 2, &info), IOT_ERR_NOT_FOUND);

    /* Mender's default kid is 0 */
    signed_accepted(&g, "{\"alg\":\"RS256\",\"kid\":0,\"typ\":\"JWT\"}", f->claims, f->rsa1);
    signed_accepted(&g, "{\"alg\":\"EdDSA\",\"kid\":\"42\"}", f->claims, f->ed1);
    signed_rejected(&g, H_RS1, f->claims, f->rsa1, "unknown key id");
    jwt_keyset_free(g.ks);
    jwt_keyset_free(NULL);
    assert_int_equal(jwt_keyset_count(NULL), 0);
}

static void test_no_keys(void **state)
{
    (void)state;
    struct iot_error err = {0};
    json_t *claims = (json_t *)(uintptr_t)1; /* must be overwritten */
    assert_int_equal(jwt_verify(NULL, NULL, "a.b.c", &claims, &err), IOT_ERR_INTERNAL);
    assert_null(claims);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_rs256_and_eddsa),
        cmocka_unit_test(test_default_options_use_the_clock),
        cmocka_unit_test(test_kid_absent),
        cmocka_unit_test(test_wrong_kid),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_hs256_with_public_key_as_secret),
        cmocka_unit_test(test_alg_must_match_key),
        cmocka_unit_test(test_header_rules),
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_nbf_iat),
        cmocka_unit_test(test_issuer),
        cmocka_unit_test(test_claims_shape),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_length_bound),
        cmocka_unit_test(test_keyset_load_errors),
        cmocka_unit_test(test_keyset_formats_and_info),
        cmocka_unit_test(test_no_keys),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
