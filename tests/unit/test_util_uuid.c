/* UUIDs: generation (v4, v5), canonical text and google/uuid v1.6 Parse compatibility.
 * Expected texts were produced by google/uuid v1.6.0 itself. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "iot-manager/uuid.h"

#define OID_TEXT "6ba7b812-9dad-11d1-80b4-00c04fd430c8"

static void format(const struct uuid *u, char out[UUID_STR_LEN + 1])
{
    memset(out, 'X', UUID_STR_LEN + 1);
    uuid_format(u, out);
}

static void test_namespace_oid(void **state)
{
    (void)state;
    char text[UUID_STR_LEN + 1];
    format(&UUID_NAMESPACE_OID, text);
    assert_string_equal(text, OID_TEXT);
}

static void test_v5_vectors(void **state)
{
    (void)state;
    char text[UUID_STR_LEN + 1];
    struct uuid u;
    /* Mender's integration id of the open-source tenant ("") */
    uuid_generate_v5(&UUID_NAMESPACE_OID, "", &u);
    format(&u, text);
    assert_string_equal(text, "0a68eb57-c88a-5f34-9e9d-27f85e68af4f");

    uuid_generate_v5(&UUID_NAMESPACE_OID, "123456789012345678901234", &u);
    format(&u, text);
    assert_string_equal(text, "07dfdc7c-1e24-5a41-8567-b25486afaff5");

    uuid_generate_v5(&UUID_NAMESPACE_OID, "tenant-a", &u);
    format(&u, text);
    assert_string_equal(text, "294ffeb8-fc19-565f-9699-e41ea3003eb4");
}

static void test_v5_depends_on_namespace(void **state)
{
    (void)state;
    struct uuid ns = UUID_NAMESPACE_OID;
    struct uuid a;
    struct uuid b;
    ns.b[15] ^= 1;
    uuid_generate_v5(&UUID_NAMESPACE_OID, "x", &a);
    uuid_generate_v5(&ns, "x", &b);
    assert_false(uuid_equal(&a, &b));
}

static void test_v4_bits_and_uniqueness(void **state)
{
    (void)state;
    struct uuid prev;
    memset(&prev, 0, sizeof prev);
    unsigned seen_or = 0;
    unsigned seen_and = 0xff;
    for (int i = 0; i < 200; i++) {
        struct uuid u;
        assert_int_equal(uuid_generate_v4(&u), IOT_OK);
        assert_int_equal(u.b[6] >> 4, 4);
        assert_int_equal(u.b[8] & 0xc0, 0x80);
        assert_false(uuid_equal(&u, &prev));
        seen_or |= u.b[0];
        seen_and &= u.b[0];
        prev = u;

        char text[UUID_STR_LEN + 1];
        format(&u, text);
        assert_int_equal(strlen(text), UUID_STR_LEN);
        assert_int_equal(text[14], '4');
        assert_non_null(strchr("89ab", text[19]));
        struct uuid back;
        assert_int_equal(uuid_parse(text, &back, NULL), IOT_OK);
        assert_true(uuid_equal(&u, &back));
    }
    /* the other bytes are random: every bit of byte 0 both set and clear at least once */
    assert_int_equal(seen_or, 0xff);
    assert_int_equal(seen_and, 0);
}

static void test_format_lowercase(void **state)
{
    (void)state;
    struct uuid u;
    for (int i = 0; i < 16; i++)
        u.b[i] = (uint8_t)(0xf0 + i);
    char text[UUID_STR_LEN + 1];
    format(&u, text);
    assert_string_equal(text, "f0f1f2f3-f4f5-f6f7-f8f9-fafbfcfdfeff");
    assert_int_equal(text[UUID_STR_LEN], '\0');
}

static void expect_ok(const char *text)
{
    struct uuid u;
    struct iot_error err = {0};
    assert_int_equal(uuid_parse(text, &u, &err), IOT_OK);
    assert_true(uuid_equal(&u, &UUID_NAMESPACE_OID));
}

static void expect_err(const char *text, const char *msg)
{
    struct uuid u = UUID_NAMESPACE_OID;
    struct iot_error err = {0};
    assert_int_equal(uuid_parse(text, &u, &err), IOT_ERR_INVALID);
    assert_int_equal(err.code, IOT_ERR_INVALID);
    assert_string_equal(err.msg, msg);
}

static void test_parse_accepted_forms(void **state)
{
    (void)state;
    expect_ok(OID_TEXT);
    expect_ok("6BA7B812-9DAD-11D1-80B4-00C04FD430C8");
    expect_ok("urn:uuid:" OID_TEXT);
    expect_ok("URN:UUID:" OID_TEXT);
    expect_ok("{" OID_TEXT "}");
    /* google/uuid v1.6 never looks at the braces */
    expect_ok("x" OID_TEXT "y");
    expect_ok("6ba7b8129dad11d180b400c04fd430c8");
    expect_ok("6BA7B8129DAD11D180B400C04FD430C8");
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_err("abc", "invalid UUID length: 3");
    expect_err("", "invalid UUID length: 0");
    expect_err(OID_TEXT " ", "invalid UUID length: 37");
    expect_err("6ba7b812-9dad-11d1-80b4-00c04fd430c", "invalid UUID length: 35");
    expect_err("6ba7b8129dad11d180b400c04fd430cg", "invalid UUID format");
    expect_err("6ba7b812-9dad-11d1-80b4_00c04fd430c8", "invalid UUID format");
    expect_err("6ba7b812-9dad-11d1-80b4-00c04fd430cx", "invalid UUID format");
    expect_err("6ba7b812x9dad-11d1-80b4-00c04fd430c8", "invalid UUID format");
    expect_err("6ba7b812-9dad-11d1-80b4-00c04fd430c+", "invalid UUID format");
    expect_err("{6ba7b812-9dad-11d1-80b4+00c04fd430c8}", "invalid UUID format");
    expect_err("urn:uuid:6ba7b812-9dad-11d1-80b4-00c04fd430g8", "invalid UUID format");
    expect_err("urn:uuix:" OID_TEXT, "invalid urn prefix: \"urn:uuix:\"");
}

static void test_parse_urn_prefix_quoting(void **state)
{
    (void)state;
    /* Go's %q of the first nine bytes */
    expect_err("urn:\"\\\t\x01\x7f"
               "6ba7b812-9dad-11d1-80b4-00c04fd430c8",
               "invalid urn prefix: \"urn:\\\"\\\\\\t\\x01\\x7f\"");
    expect_err("\xc2\x85\xff\xe2\x80\xa8"
               "abc" OID_TEXT,
               "invalid urn prefix: \"\\u0085\\xff\\u2028abc\"");
    expect_err("\xc2\xa0\xc2\xad"
               "e\xcc\x81xy" OID_TEXT,
               "invalid urn prefix: \"\\u00a0\\u00ad"
               "e\xcc\x81xy\"");
    expect_err("urn:uuid\xe2" OID_TEXT, "invalid urn prefix: \"urn:uuid\\xe2\"");
    /* surrogate and overlong encodings are ill-formed: byte by byte */
    expect_err("\xed\xa0\x80uuid:x" OID_TEXT, "invalid urn prefix: \"\\xed\\xa0\\x80uuid:x\"");
    expect_err("\xc0\xafuuid:xy" OID_TEXT, "invalid urn prefix: \"\\xc0\\xafuuid:xy\"");
}

static void test_parse_failure_leaves_output(void **state)
{
    (void)state;
    struct uuid u = UUID_NAMESPACE_OID;
    assert_int_equal(uuid_parse("6ba7b812-9dad-11d1-80b4-00c04fd430cx", &u, NULL), IOT_ERR_INVALID);
    assert_true(uuid_equal(&u, &UUID_NAMESPACE_OID));
}

static void test_equal(void **state)
{
    (void)state;
    struct uuid a = UUID_NAMESPACE_OID;
    struct uuid b = UUID_NAMESPACE_OID;
    assert_true(uuid_equal(&a, &b));
    b.b[15] ^= 0x80;
    assert_false(uuid_equal(&a, &b));
    b = a;
    b.b[0] ^= 1;
    assert_false(uuid_equal(&a, &b));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_namespace_oid),
        cmocka_unit_test(test_v5_vectors),
        cmocka_unit_test(test_v5_depends_on_namespace),
        cmocka_unit_test(test_v4_bits_and_uniqueness),
        cmocka_unit_test(test_format_lowercase),
        cmocka_unit_test(test_parse_accepted_forms),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_urn_prefix_quoting),
        cmocka_unit_test(test_parse_failure_leaves_output),
        cmocka_unit_test(test_equal),
    };
    return cmocka_run_group_tests(tests, 0, 0);
}
