/* identity_decode against go-lib-micro's identity middleware (contract §1.2): the token comes from
 * the Authorization header, or from the JWT cookie only when the header is absent; the middle
 * segment is base64url without padding (Go's RawURLEncoding) and JSON-decoded into Identity
 * {sub, mender.tenant, mender.user, mender.device, ...}. Every failure is 401 with Mender's text.
 * Tokens are built here from their claims so each case shows what it carries. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iot-manager/b64.h"
#include "iot-manager/identity.h"

/* {"alg":"RS256","typ":"JWT"} */
#define JWT_HEADER "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
#define JWT_SIG    "c2lnbmF0dXJl"

#define USER_CLAIMS                                                                                \
    "{\"jti\":\"b3f9\",\"sub\":\"8c3e5b7e-0000-4000-8000-000000000001\",\"exp\":4102444800,"       \
    "\"mender.tenant\":\"5f1a2b3c4d5e6f7a8b9c0d1e\",\"mender.user\":true,\"iss\":\"Mender\"}"

/* Mender's messages: the claims segment is not base64url (the offset follows), is not the JSON
 * of an Identity (Go's error follows), has no subject. */
#define BAD_BASE64                                                                                 \
    "identity: failed to decode base64 JWT claims: illegal base64 data at input byte "
#define BAD_JSON     "identity: failed to decode JSON JWT claims: "
#define SUB_REQUIRED "identity: claim \"sub\" is required"
/* Go's UnmarshalTypeError for claims that are a JSON `kind`, not an object */
#define NOT_AN_IDENTITY(kind)                                                                      \
    BAD_JSON "json: cannot unmarshal " kind " into Go value of type identity.Identity"

/* header.base64url(claims).signature, in a static buffer (one token at a time per test) */
static const char *token_from(const char *claims)
{
    static char tok[2048];
    char seg[1500];
    long n = b64_encode((const uint8_t *)claims, strlen(claims), seg, sizeof seg, true);
    assert_true(n >= 0);
    snprintf(tok, sizeof tok, "%s.%s.%s", JWT_HEADER, seg, JWT_SIG);
    return tok;
}

/* "Bearer <token>" */
static const char *bearer(const char *claims)
{
    static char hdr[2100];
    snprintf(hdr, sizeof hdr, "Bearer %s", token_from(claims));
    return hdr;
}

static void expect_error(const char *authorization, const char *cookie, const char *msg)
{
    struct identity id;
    struct iot_error err = {0};
    memset(&id, 0x5A, sizeof id); /* decode must reset it */
    enum iot_err rc = identity_decode(authorization, cookie, &id, &err);
    if (rc != IOT_ERR_UNAUTHORIZED)
        fail_msg("auth=%s cookie=%s: rc %d (%s), want 401 \"%s\"",
                 authorization ? authorization : "-", cookie ? cookie : "-", rc, err.msg, msg);
    assert_int_equal(err.code, IOT_ERR_UNAUTHORIZED);
    assert_string_equal(err.msg, msg);
    /* nothing is handed out on failure */
    assert_null(id.subject);
    assert_null(id.tenant);
    assert_null(id.claims);
    assert_false(id.is_user);
    assert_false(id.is_device);
    identity_clear(&id);
}

static void expect_prefix(const char *authorization, const char *cookie, const char *prefix)
{
    struct identity id;
    struct iot_error err = {0};
    assert_int_equal(identity_decode(authorization, cookie, &id, &err), IOT_ERR_UNAUTHORIZED);
    if (strncmp(err.msg, prefix, strlen(prefix)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", err.msg, prefix);
    assert_true(strlen(err.msg) > strlen(prefix)); /* the cause follows */
    assert_null(id.subject);
    assert_null(id.claims);
}

/* Decodes successfully to the subject `subject`. */
static void expect_subject(const char *authorization, const char *cookie, const char *subject)
{
    struct identity id;
    struct iot_error err = {0};
    enum iot_err rc = identity_decode(authorization, cookie, &id, &err);
    if (rc != IOT_OK)
        fail_msg("auth=%s cookie=%s: rc %d (%s)", authorization ? authorization : "-",
                 cookie ? cookie : "-", rc, err.msg);
    assert_string_equal(id.subject, subject);
    identity_clear(&id);
}

/* Go's UnmarshalTypeError for the claims' `field` holding a JSON `kind` instead of a `type`. */
static void expect_field_type_error(const char *claims, const char *kind, const char *field,
                                    const char *type)
{
    char msg[256];
    snprintf(msg, sizeof msg,
             BAD_JSON "json: cannot unmarshal %s into Go struct field Identity.%s of type %s", kind,
             field, type);
    expect_error(bearer(claims), NULL, msg);
}

static void test_valid_user_token(void **state)
{
    (void)state;
    struct identity id;
    struct iot_error err = {0};
    assert_int_equal(identity_decode(bearer(USER_CLAIMS), NULL, &id, &err), IOT_OK);
    assert_string_equal(id.subject, "8c3e5b7e-0000-4000-8000-000000000001");
    assert_string_equal(id.tenant, "5f1a2b3c4d5e6f7a8b9c0d1e");
    assert_true(id.is_user);
    assert_false(id.is_device);
    assert_non_null(id.claims);
    assert_string_equal(json_string_value(json_object_get(id.claims, "iss")), "Mender");
    assert_int_equal(json_integer_value(json_object_get(id.claims, "exp")), 4102444800LL);
    identity_clear(&id);
    assert_null(id.subject);
    assert_null(id.claims);
    identity_clear(&id); /* twice is harmless */
    identity_clear(NULL);
}

static void test_missing_header_and_cookie(void **state)
{
    (void)state;
    expect_error(NULL, NULL, "Authorization not present in header");
    /* Go's Header.Get returns "" for an empty header too: treated as absent */
    expect_error("", NULL, "Authorization not present in header");
}

static void test_cookie_only_when_header_absent(void **state)
{
    (void)state;
    char cookie_tok[2048];
    snprintf(cookie_tok, sizeof cookie_tok, "%s",
             token_from("{\"sub\":\"from-cookie\",\"mender.user\":true}"));

    /* no header: the cookie is used */
    expect_subject(NULL, cookie_tok, "from-cookie");
    expect_subject("", cookie_tok, "from-cookie");

    /* a header wins over the cookie */
    expect_subject(bearer("{\"sub\":\"from-header\"}"), cookie_tok, "from-header");

    /* a bad header is not rescued by a good cookie */
    expect_error("Bearer", cookie_tok, "malformed Authorization header");
    expect_error("Basic dXNlcjpwdw==", cookie_tok, "unknown Authorization method Basic");

    /* the cookie goes through the same token checks */
    expect_error(NULL, "not-a-jwt", "identity: incorrect token format");
    expect_error(NULL, "", "identity: incorrect token format");
}

static void test_malformed_header(void **state)
{
    (void)state;
    char two_spaces[2100];
    snprintf(two_spaces, sizeof two_spaces, "Bearer  %s", token_from(USER_CLAIMS));
    expect_error(two_spaces, NULL, "malformed Authorization header");
    expect_error("Bearer", NULL, "malformed Authorization header"); /* one part */
    expect_error(token_from(USER_CLAIMS), NULL, "malformed Authorization header");
    expect_error("Bearer a.b.c extra", NULL, "malformed Authorization header");
    expect_error("Bearer a.b.c ", NULL, "malformed Authorization header");
}

static void test_scheme(void **state)
{
    (void)state;
    expect_error("Basic dXNlcjpwdw==", NULL, "unknown Authorization method Basic");
    expect_error("Token abc", NULL, "unknown Authorization method Token");
    expect_error(" abc", NULL, "unknown Authorization method ");
    expect_error("Bearer: abc", NULL, "unknown Authorization method Bearer:");

    /* the scheme is compared case-insensitively (strings.EqualFold) */
    const char *schemes[] = {"bearer", "BEARER", "bEaReR"};
    for (size_t i = 0; i < 3; i++) {
        char hdr[2100];
        snprintf(hdr, sizeof hdr, "%s %s", schemes[i], token_from("{\"sub\":\"s\"}"));
        expect_subject(hdr, NULL, "s");
    }
}

static void test_segment_count(void **state)
{
    (void)state;
    expect_error("Bearer abc", NULL, "identity: incorrect token format");
    expect_error("Bearer a.b", NULL, "identity: incorrect token format");
    expect_error("Bearer a.b.c.d", NULL, "identity: incorrect token format");
    expect_error("Bearer ....", NULL, "identity: incorrect token format");
    expect_error("Bearer ", NULL, "identity: incorrect token format");
    char four[2200];
    snprintf(four, sizeof four, "%s.extra", bearer(USER_CLAIMS));
    expect_error(four, NULL, "identity: incorrect token format");
}

static void test_bad_base64(void **state)
{
    (void)state;
    /* illegal character: its offset */
    expect_error("Bearer h.eyJ*dWIiOiJ4In0.s", NULL, BAD_BASE64 "3");
    /* the standard alphabet's '+' and '/' are not base64url */
    expect_error("Bearer h.eyJzdWIi+iJ4In0.s", NULL, BAD_BASE64 "8");
    expect_error("Bearer h./yJzdWIiOiJ4In0.s", NULL, BAD_BASE64 "0");
    /* a lone final character (length % 4 == 1) */
    expect_error("Bearer h.eyJzd.s", NULL, BAD_BASE64 "4");
    expect_error("Bearer h.e.s", NULL, BAD_BASE64 "0");
}

/* RawURLEncoding has no padding: a '=' is an illegal character, even at the end. */
static void test_padding_rejected(void **state)
{
    (void)state;
    /* base64url of {"sub":"x"} is eyJzdWIiOiJ4In0 (15 characters); padded, the '=' is byte 15 */
    expect_error("Bearer h.eyJzdWIiOiJ4In0=.s", NULL, BAD_BASE64 "15");
    expect_error("Bearer h.eyJzdWIiOiJ4In0==.s", NULL, BAD_BASE64 "15");
    expect_error("Bearer h.eyJz=dWIiOiJ4In0.s", NULL, BAD_BASE64 "4");

    /* without the padding it decodes; non-zero trailing bits are accepted as Go's non-strict
     * decoder does ('1' instead of '0') */
    expect_subject("Bearer h.eyJzdWIiOiJ4In0.s", NULL, "x");
    expect_subject("Bearer h.eyJzdWIiOiJ4In1.s", NULL, "x");
}

static void test_bad_json(void **state)
{
    (void)state;
    expect_prefix(bearer("not json"), NULL, BAD_JSON);
    expect_prefix(bearer("{\"sub\":\"x\""), NULL, BAD_JSON);
    expect_prefix(bearer("{\"sub\":\"x\"} trailing"), NULL, BAD_JSON);
    expect_prefix("Bearer h..s", NULL, BAD_JSON);

    /* valid JSON that is not an object */
    expect_error(bearer("[{\"sub\":\"x\"}]"), NULL, NOT_AN_IDENTITY("array"));
    expect_error(bearer("\"sub\""), NULL, NOT_AN_IDENTITY("string"));
    expect_error(bearer("42"), NULL, NOT_AN_IDENTITY("number"));
    expect_error(bearer("true"), NULL, NOT_AN_IDENTITY("bool"));
    /* null leaves Go's struct empty: no subject */
    expect_error(bearer("null"), NULL, SUB_REQUIRED);
}

static void test_sub_required(void **state)
{
    (void)state;
    expect_error(bearer("{}"), NULL, SUB_REQUIRED);
    expect_error(bearer("{\"sub\":\"\"}"), NULL, SUB_REQUIRED);
    expect_error(bearer("{\"sub\":null,\"mender.user\":true}"), NULL, SUB_REQUIRED);
    expect_error(bearer("{\"mender.tenant\":\"t\",\"mender.user\":true}"), NULL, SUB_REQUIRED);
}

static void test_claim_types(void **state)
{
    (void)state;
    expect_field_type_error("{\"sub\":5}", "number", "sub", "string");
    expect_field_type_error("{\"sub\":\"s\",\"mender.tenant\":[\"t\"]}", "array", "mender.tenant",
                            "string");
    expect_field_type_error("{\"sub\":\"s\",\"mender.user\":\"true\"}", "string", "mender.user",
                            "bool");
    expect_field_type_error("{\"sub\":\"s\",\"mender.user\":1}", "number", "mender.user", "bool");
    expect_field_type_error("{\"sub\":\"s\",\"mender.device\":{}}", "object", "mender.device",
                            "bool");
    /* Go reports the first mismatch in document order */
    expect_field_type_error("{\"mender.user\":\"yes\",\"sub\":7}", "string", "mender.user", "bool");
    expect_field_type_error("{\"sub\":7,\"mender.user\":\"yes\"}", "number", "sub", "string");
    /* a type error wins over a missing subject, as Unmarshal fails before Validate */
    expect_field_type_error("{\"mender.device\":\"x\"}", "string", "mender.device", "bool");
}

static void test_tenant_and_flags(void **state)
{
    (void)state;
    struct identity id;
    struct iot_error err = {0};

    /* open source: no tenant claim */
    assert_int_equal(
        identity_decode(bearer("{\"sub\":\"u\",\"mender.user\":true}"), NULL, &id, &err), IOT_OK);
    assert_non_null(id.tenant);
    assert_string_equal(id.tenant, "");
    assert_true(id.is_user);
    assert_false(id.is_device);
    identity_clear(&id);

    assert_int_equal(
        identity_decode(bearer("{\"sub\":\"u\",\"mender.tenant\":null}"), NULL, &id, &err), IOT_OK);
    assert_string_equal(id.tenant, "");
    assert_false(id.is_user);
    identity_clear(&id);

    /* a device token */
    assert_int_equal(identity_decode(bearer("{\"sub\":\"dev\",\"mender.tenant\":\"t1\","
                                            "\"mender.device\":true,\"mender.user\":false}"),
                                     NULL, &id, &err),
                     IOT_OK);
    assert_string_equal(id.tenant, "t1");
    assert_false(id.is_user);
    assert_true(id.is_device);
    identity_clear(&id);

    /* null flags are false; unrelated claims of any type are kept, not checked */
    assert_int_equal(identity_decode(bearer("{\"sub\":\"u\",\"mender.user\":null,"
                                            "\"mender.addons\":[{\"name\":\"configure\","
                                            "\"enabled\":true}],\"custom\":{\"x\":[1]}}"),
                                     NULL, &id, &err),
                     IOT_OK);
    assert_false(id.is_user);
    assert_true(json_is_array(json_object_get(id.claims, "mender.addons")));
    identity_clear(&id);
}

/* encoding/json matches object keys to struct fields case-insensitively. */
static void test_keys_case_insensitive(void **state)
{
    (void)state;
    struct identity id;
    struct iot_error err = {0};
    assert_int_equal(identity_decode(bearer("{\"Sub\":\"u\",\"Mender.User\":true,"
                                            "\"MENDER.TENANT\":\"t\"}"),
                                     NULL, &id, &err),
                     IOT_OK);
    assert_string_equal(id.subject, "u");
    assert_string_equal(id.tenant, "t");
    assert_true(id.is_user);
    identity_clear(&id);
}

/* A claims segment beyond any fixed buffer still decodes (the buffers are sized from it). */
static void test_large_claims(void **state)
{
    (void)state;
    char claims[1200];
    char pad[1000];
    memset(pad, 'p', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    snprintf(claims, sizeof claims, "{\"sub\":\"big\",\"pad\":\"%s\"}", pad);
    struct identity id;
    struct iot_error err = {0};
    assert_int_equal(identity_decode(bearer(claims), NULL, &id, &err), IOT_OK);
    assert_string_equal(id.subject, "big");
    identity_clear(&id);

    /* a long unknown scheme yields a bounded message */
    char scheme[300];
    memset(scheme, 'S', sizeof scheme - 1);
    scheme[sizeof scheme - 1] = '\0';
    scheme[200] = ' ';
    assert_int_equal(identity_decode(scheme, NULL, &id, &err), IOT_ERR_UNAUTHORIZED);
    assert_memory_equal(err.msg, "unknown Authorization method SSS", 32);
    assert_true(strlen(err.msg) < IOT_ERROR_MSG_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_user_token),
        cmocka_unit_test(test_missing_header_and_cookie),
        cmocka_unit_test(test_cookie_only_when_header_absent),
        cmocka_unit_test(test_malformed_header),
        cmocka_unit_test(test_scheme),
        cmocka_unit_test(test_segment_count),
        cmocka_unit_test(test_bad_base64),
        cmocka_unit_test(test_padding_rejected),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_sub_required),
        cmocka_unit_test(test_claim_types),
        cmocka_unit_test(test_tenant_and_flags),
        cmocka_unit_test(test_keys_case_insensitive),
        cmocka_unit_test(test_large_claims),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
