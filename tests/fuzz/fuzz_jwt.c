/* Fuzzes jwt_verify(), the in-service check of the management API's bearer tokens ("verify"
 * mode). An RSA-2048 key (kid 1) and an Ed25519 key (kid 2) are generated when the driver starts
 * and loaded from PEM files as the service loads them; a third key stays unconfigured.
 *
 * Input, by its first byte:
 *   'S' <key> <header JSON> '\n' <claims JSON>: the driver base64url-encodes both parts and signs
 *       them, <key> '1' with the RSA key, '2' with the Ed25519 key, anything else with the
 *       unconfigured key. This reaches the header, key and claim checks behind the signature.
 *   anything else: the whole input is the token, as a client sends it.
 *
 * Invariants: a token not signed here never verifies (no forgery, no algorithm confusion); a
 * token signed with a key that is not configured never verifies; an accepted token satisfies
 * every documented rule (checked again here, independently) and its claims are returned intact;
 * changing one character of an accepted token's signature makes it fail; failures are 401s whose
 * message quotes no part of the token. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/encoder.h>
#include <openssl/evp.h>

#include "fuzz_common.h"
#include "iot-manager/b64.h"
#include "iot-manager/jwt.h"

#define NOW    1700000000LL
#define ISSUER "mender.useradm"
#define LEEWAY 60

/* Built once per process: libFuzzer calls the driver millions of times, and key generation is
 * the one expensive step. Never freed (the process ends with the fuzzer). */
struct jwt_fixture {
    EVP_PKEY *rsa;          /* kid 1 */
    EVP_PKEY *ed;           /* kid 2 */
    EVP_PKEY *stranger;     /* not in any keyset */
    struct jwt_keyset *ks;  /* "1=rsa 2=ed" */
    struct jwt_keyset *one; /* the Ed25519 key alone, loaded without a kid */
};

static void write_public(const char *path, EVP_PKEY *key)
{
    OSSL_ENCODER_CTX *ctx = OSSL_ENCODER_CTX_new_for_pkey(key, EVP_PKEY_PUBLIC_KEY, "PEM",
                                                          "SubjectPublicKeyInfo", NULL);
    unsigned char *pem = NULL;
    size_t n = 0;
    FUZZ_CHECK(ctx && OSSL_ENCODER_to_data(ctx, &pem, &n) == 1);
    OSSL_ENCODER_CTX_free(ctx);
    FILE *f = fopen(path, "w");
    FUZZ_CHECK(f && fwrite(pem, 1, n, f) == n && fclose(f) == 0);
    OPENSSL_free(pem);
}

static const struct jwt_fixture *fixture(void)
{
    static struct jwt_fixture fx;
    static bool ready;
    if (ready)
        return &fx;
    fx.rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    fx.ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    fx.stranger = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    FUZZ_CHECK(fx.rsa && fx.ed && fx.stranger);

    const char *tmp = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/iotm-fuzz-jwt-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    FUZZ_CHECK(mkdtemp(dir) != NULL);
    char rsa_path[600], ed_path[600], spec[1300];
    snprintf(rsa_path, sizeof rsa_path, "%s/rsa.pem", dir);
    snprintf(ed_path, sizeof ed_path, "%s/ed.pem", dir);
    write_public(rsa_path, fx.rsa);
    write_public(ed_path, fx.ed);
    snprintf(spec, sizeof spec, "1=%s 2=%s", rsa_path, ed_path);
    struct iot_error err = {0};
    FUZZ_CHECK(jwt_keyset_load(spec, &fx.ks, &err) == IOT_OK);
    FUZZ_CHECK(jwt_keyset_load_file(ed_path, &fx.one, &err) == IOT_OK);
    unlink(rsa_path);
    unlink(ed_path);
    rmdir(dir);
    ready = true;
    return &fx;
}

/* base64url without padding of `len` bytes; malloc'd. */
static char *b64url(const uint8_t *in, size_t len)
{
    size_t cap = B64_ENCODED_LEN(len) + 1;
    char *out = malloc(cap);
    FUZZ_CHECK(out && b64_encode(in, len, out, cap, true) >= 0);
    return out;
}

/* "<b64url(header)>.<b64url(claims)>.<b64url(signature)>"; malloc'd. */
static char *sign_token(EVP_PKEY *key, const char *header, size_t hlen, const char *claims,
                        size_t clen)
{
    char *h = b64url((const uint8_t *)header, hlen);
    char *c = b64url((const uint8_t *)claims, clen);
    size_t slen = strlen(h) + 1 + strlen(c);
    char *signing = malloc(slen + 1);
    FUZZ_CHECK(signing != NULL);
    snprintf(signing, slen + 1, "%s.%s", h, c);

    EVP_MD_CTX *md = EVP_MD_CTX_new();
    const char *digest = EVP_PKEY_is_a(key, "RSA") ? "SHA256" : NULL;
    uint8_t sig[1024];
    size_t siglen = sizeof sig;
    FUZZ_CHECK(md && EVP_DigestSignInit_ex(md, NULL, digest, NULL, NULL, key, NULL) == 1);
    FUZZ_CHECK(EVP_DigestSign(md, sig, &siglen, (const uint8_t *)signing, slen) == 1);
    EVP_MD_CTX_free(md);
    char *s = b64url(sig, siglen);

    size_t tlen = slen + 1 + strlen(s);
    char *token = malloc(tlen + 1);
    FUZZ_CHECK(token != NULL);
    snprintf(token, tlen + 1, "%s.%s", signing, s);
    free(h);
    free(c);
    free(s);
    free(signing);
    return token;
}

/* No message may quote the token: checked on every segment that starts with 12 base64url
 * characters (the fixed texts hold no such run, so a match can only be a quote). */
static void check_message(const char *token, const char *msg)
{
    const char *p = token;
    for (;;) {
        size_t n = strcspn(p, ".");
        if (n >= 12 &&
            strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") >= 12) {
            char seg[13];
            memcpy(seg, p, 12);
            seg[12] = '\0';
            FUZZ_CHECK(strstr(msg, seg) == NULL);
        }
        if (!p[n])
            break;
        p += n + 1;
    }
}

static enum iot_err verify(const struct jwt_keyset *ks, const char *token, json_t **claims)
{
    struct jwt_verify_options opts;
    jwt_verify_options_init(&opts);
    opts.now = NOW;
    opts.issuer = ISSUER;
    opts.leeway = LEEWAY;
    struct iot_error err = {0};
    enum iot_err rc = jwt_verify(ks, &opts, token, claims, &err);
    if (rc != IOT_OK) {
        FUZZ_CHECK(rc == IOT_ERR_UNAUTHORIZED && err.code == rc && err.msg[0]);
        FUZZ_CHECK(*claims == NULL);
        check_message(token, err.msg);
    } else {
        FUZZ_CHECK(json_is_object(*claims));
    }
    return rc;
}

/* The documented acceptance rules, restated: the header names the algorithm of the key that
 * signed, typ is absent or "JWT", no crit; claims have a numeric exp in the future (with the
 * leeway), nbf and iat (when present) numeric and not in the future, and the expected issuer. */
static void check_accepted(EVP_PKEY *key, const char *header, size_t hlen, json_t *claims)
{
    json_t *h = json_loadb(header, hlen, JSON_REJECT_DUPLICATES, NULL);
    FUZZ_CHECK(json_is_object(h));
    const char *alg = json_string_value(json_object_get(h, "alg"));
    FUZZ_CHECK(alg && strcmp(alg, EVP_PKEY_is_a(key, "RSA") ? "RS256" : "EdDSA") == 0);
    json_t *typ = json_object_get(h, "typ");
    FUZZ_CHECK(!typ || (json_is_string(typ) && strcasecmp(json_string_value(typ), "JWT") == 0));
    FUZZ_CHECK(json_object_get(h, "crit") == NULL);
    json_decref(h);

    json_t *exp = json_object_get(claims, "exp");
    FUZZ_CHECK(json_is_number(exp) && json_number_value(exp) > (double)(NOW - LEEWAY));
    json_t *nbf = json_object_get(claims, "nbf");
    FUZZ_CHECK(!nbf || (json_is_number(nbf) && json_number_value(nbf) <= (double)(NOW + LEEWAY)));
    json_t *iat = json_object_get(claims, "iat");
    FUZZ_CHECK(!iat || (json_is_number(iat) && json_number_value(iat) <= (double)(NOW + LEEWAY)));
    const char *iss = json_string_value(json_object_get(claims, "iss"));
    FUZZ_CHECK(iss && strcmp(iss, ISSUER) == 0);
}

/* One character of the signature changed, keeping the base64url canonical: must fail. */
static void check_tampered(const struct jwt_keyset *ks, const char *token)
{
    char *t = strdup(token);
    FUZZ_CHECK(t != NULL);
    char *sig = strrchr(t, '.') + 1;
    sig[0] = sig[0] == 'A' ? 'B' : 'A';
    json_t *claims = NULL;
    FUZZ_CHECK(verify(ks, t, &claims) == IOT_ERR_UNAUTHORIZED);
    free(t);
}

static void run_signed(const struct jwt_fixture *fx, const uint8_t *data, size_t size)
{
    if (size < 2)
        return;
    EVP_PKEY *key = data[1] == '1' ? fx->rsa : data[1] == '2' ? fx->ed : fx->stranger;
    const char *header = (const char *)data + 2;
    size_t rest = size - 2;
    const char *nl = memchr(header, '\n', rest);
    size_t hlen = nl ? (size_t)(nl - header) : rest;
    const char *claims_text = nl ? nl + 1 : "";
    size_t clen = nl ? rest - hlen - 1 : 0;
    /* a header must fit jwt.c's buffer; anything longer is refused before any crypto */
    char *token = sign_token(key, header, hlen, claims_text, clen);

    const struct jwt_keyset *sets[] = {fx->ks, fx->one};
    for (size_t i = 0; i < 2; i++) {
        json_t *claims = NULL;
        enum iot_err rc = verify(sets[i], token, &claims);
        if (key == fx->stranger || (sets[i] == fx->one && key != fx->ed))
            FUZZ_CHECK(rc != IOT_OK);
        if (rc == IOT_OK) {
            check_accepted(key, header, hlen, claims);
            /* the claims come back as they were signed */
            json_t *expect = json_loadb(claims_text, clen, JSON_REJECT_DUPLICATES, NULL);
            FUZZ_CHECK(expect && json_equal(expect, claims));
            json_decref(expect);
            check_tampered(sets[i], token);
        }
        json_decref(claims);
    }
    free(token);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct jwt_fixture *fx = fixture();
    if (size > JWT_MAX_LEN + 16)
        return 0;
    if (size > 0 && data[0] == 'S') {
        run_signed(fx, data, size);
        return 0;
    }
    char *token = fuzz_cstr(data, size);
    json_t *claims = NULL;
    /* nothing here was signed by a configured key: acceptance would be a forgery */
    FUZZ_CHECK(verify(fx->ks, token, &claims) != IOT_OK);
    FUZZ_CHECK(verify(fx->one, token, &claims) != IOT_OK);
    free(token);
    return 0;
}
