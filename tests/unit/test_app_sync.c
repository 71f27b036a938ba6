/* sync-devices: the --batch-size flag with the original's texts and limits. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "iot-manager/sync.h"

#define POSITIVE "invalid flag 'batch-size': must be a positive integer"
#define TOO_BIG  "invalid flag 'batch-size': must be less than 500"

static void expect_error(const char *text, const char *msg)
{
    struct iot_error err = {0};
    size_t n = 12345;
    assert_int_equal(sync_batch_size_parse(text, &n, &err), IOT_ERR_INVALID);
    assert_string_equal(err.msg, msg);
    assert_int_equal(n, 12345); /* untouched on error */
}

static void test_batch_size_accepted(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t value;
    } ok[] = {{"1", 1}, {"10", 10}, {"50", 50}, {"499", 499}, {"500", 500}, {"007", 7}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct iot_error err = {0};
        size_t n = 0;
        assert_int_equal(sync_batch_size_parse(ok[i].text, &n, &err), IOT_OK);
        assert_int_equal(n, ok[i].value);
    }
}

static void test_batch_size_refused(void **state)
{
    (void)state;
    const char *not_positive[] = {"0",   "000", "-1", "",    "abc", "10x",
                                  " 10", "10 ", "+5", "1.5", "0x10"};
    for (size_t i = 0; i < sizeof not_positive / sizeof not_positive[0]; i++)
        expect_error(not_positive[i], POSITIVE);
    expect_error(NULL, POSITIVE);
    const char *too_big[] = {"501", "1000", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof too_big / sizeof too_big[0]; i++)
        expect_error(too_big[i], TOO_BIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_size_accepted),
        cmocka_unit_test(test_batch_size_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
