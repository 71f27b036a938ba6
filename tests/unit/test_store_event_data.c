/* The RFC 3339 handling both store adapters apply to an event's time fields: what Go's
 * time.Time accepts, cut to BSON's milliseconds, and printed back as Go's RFC3339Nano. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"

static void assert_parses(const char *text, int64_t want_ms, const char *want_text)
{
    int64_t ms = 42;
    if (!store_rfc3339_parse(text, &ms))
        fail_msg("not parsed: %s", text);
    assert_int_equal(ms, want_ms);
    char out[STORE_RFC3339_MAX];
    store_rfc3339_format(ms, out);
    assert_string_equal(out, want_text);
}

static void test_parse_and_format(void **state)
{
    (void)state;
    assert_parses("2006-01-02T15:04:05Z", 1136214245000, "2006-01-02T15:04:05Z");
    assert_parses("2006-01-02T15:04:05.999999999-07:00", 1136239445999, "2006-01-02T22:04:05.999Z");
    assert_parses("2024-05-06T07:08:09.120Z", 1714979289120, "2024-05-06T07:08:09.12Z");
    assert_parses("2024-05-06T07:08:09.1000000000001Z", 1714979289100, "2024-05-06T07:08:09.1Z");
    assert_parses("2024-05-06T07:08:09.0009Z", 1714979289000, "2024-05-06T07:08:09Z");
    assert_parses("2024-02-29T23:59:59+23:59", 1709164859000, "2024-02-29T00:00:59Z");
    assert_parses("1970-01-01T00:00:00Z", 0, "1970-01-01T00:00:00Z");
    /* before 1970 the fraction is cut towards zero, as Go's UnixNano()/1e6 does */
    assert_parses("1969-12-31T23:59:59.5Z", -500, "1969-12-31T23:59:59.5Z");
    assert_parses("1969-12-31T23:59:59.9995Z", 0, "1970-01-01T00:00:00Z");
    assert_parses("0000-01-01T00:00:00Z", -62167219200000, "0000-01-01T00:00:00Z");
    assert_parses("9999-12-31T23:59:59.999Z", 253402300799999, "9999-12-31T23:59:59.999Z");
    assert_parses("2000-02-29T12:00:00.001+01:00", 951822000001, "2000-02-29T11:00:00.001Z");
}

static void test_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "2024-05-06",
        "2024-05-06T07:08:09",       /* no zone */
        "2024-05-06 07:08:09Z",      /* space */
        "2024-05-06t07:08:09z",      /* lower case */
        "2024-05-06T07:08:09.Z",     /* empty fraction */
        "2024-05-06T07:08:09Zjunk",  /* trailing text */
        "2024-13-01T00:00:00Z",      /* month */
        "2023-02-29T00:00:00Z",      /* not a leap year */
        "1900-02-29T00:00:00Z",      /* not a leap year either */
        "2024-04-31T00:00:00Z",      /* day */
        "2024-01-01T24:00:00Z",      /* hour */
        "2024-01-01T00:60:00Z",      /* minute */
        "2024-01-01T00:00:60Z",      /* leap second: Go refuses it too */
        "2024-01-01T00:00:00+24:00", /* offset */
        "2024-01-01T00:00:00+0100",  /* offset without colon */
        "+2024-01-01T00:00:00Z",     /* sign */
        "24-01-01T00:00:00Z",        /* short year */
        "yesterday",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ms = 7;
        if (store_rfc3339_parse(bad[i], &ms))
            fail_msg("parsed: \"%s\"", bad[i]);
    }
    int64_t ms;
    assert_false(store_rfc3339_parse(NULL, &ms));
}

static void test_format_extremes_are_bounded(void **state)
{
    (void)state;
    char out[STORE_RFC3339_MAX];
    store_rfc3339_format(INT64_MAX, out);
    assert_true(strlen(out) < STORE_RFC3339_MAX);
    assert_string_equal(out + strlen(out) - 1, "Z");
    store_rfc3339_format(INT64_MIN, out);
    assert_true(strlen(out) < STORE_RFC3339_MAX);
    assert_string_equal(out + strlen(out) - 1, "Z");
    store_rfc3339_format(-1, out);
    assert_string_equal(out, "1969-12-31T23:59:59.999Z");
}

static void test_canonical_data(void **state)
{
    (void)state;
    bool nomem = true;
    assert_null(store_event_data_canonical(NULL, &nomem));
    assert_false(nomem);
    json_t *in = json_loads("{\"id\":\"d\",\"created_ts\":\"2024-05-06T09:08:09.5+02:00\","
                            "\"auth_sets\":[{\"ts\":\"2024-05-06T07:08:09.000Z\"},7,{\"ts\":1},"
                            "{\"x\":{\"ts\":\"2024-05-06T07:08:09.000Z\"}}],"
                            "\"other\":{\"created_ts\":\"2024-05-06T07:08:09.000Z\"}}",
                            0, NULL);
    assert_non_null(in);
    json_t *out = store_event_data_canonical(in, &nomem);
    assert_non_null(out);
    assert_false(nomem);
    char *text = json_dumps(out, JSON_COMPACT);
    assert_string_equal(text, "{\"id\":\"d\",\"created_ts\":\"2024-05-06T07:08:09.5Z\","
                              "\"auth_sets\":[{\"ts\":\"2024-05-06T07:08:09Z\"},7,{\"ts\":1},"
                              "{\"x\":{\"ts\":\"2024-05-06T07:08:09.000Z\"}}],"
                              "\"other\":{\"created_ts\":\"2024-05-06T07:08:09.000Z\"}}");
    free(text);
    /* the input is untouched */
    assert_string_equal(json_string_value(json_object_get(in, "created_ts")),
                        "2024-05-06T09:08:09.5+02:00");
    json_decref(out);
    json_decref(in);
    /* not an object: copied as is */
    in = json_string("2024-05-06T09:08:09.5+02:00");
    out = store_event_data_canonical(in, &nomem);
    assert_true(json_equal(in, out));
    json_decref(out);
    json_decref(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_format),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_format_extremes_are_bounded),
        cmocka_unit_test(test_canonical_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
