/* The error module: bounded messages (set and prefix never overflow, always NUL-terminated),
 * names of every code, and the HTTP status each code maps to. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "iot-manager/error.h"

/* A message buffer surrounded by canaries, so an overflow of `msg` shows up even without ASan. */
struct guarded_error {
    unsigned char before[32];
    struct iot_error err;
    unsigned char after[32];
};

static void guard_init(struct guarded_error *g)
{
    memset(g, 0xA5, sizeof *g);
}

static void guard_check(const struct guarded_error *g)
{
    for (size_t i = 0; i < sizeof g->before; i++) {
        assert_int_equal(g->before[i], 0xA5);
        assert_int_equal(g->after[i], 0xA5);
    }
}

static void test_set_formats_and_returns_code(void **state)
{
    (void)state;
    struct iot_error err = {0};
    assert_int_equal(iot_error_set(&err, IOT_ERR_NOT_FOUND, "integration %s (%d)", "x", 7),
                     IOT_ERR_NOT_FOUND);
    assert_int_equal(err.code, IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "integration x (7)");
    /* overwrite, not append */
    iot_error_set(&err, IOT_ERR_INVALID, "second");
    assert_int_equal(err.code, IOT_ERR_INVALID);
    assert_string_equal(err.msg, "second");
}

static void test_set_null_err_only_returns_code(void **state)
{
    (void)state;
    assert_int_equal(iot_error_set(NULL, IOT_ERR_CONFLICT, "ignored %s", "x"), IOT_ERR_CONFLICT);
    assert_int_equal(iot_error_prefix(NULL, "prefix: "), IOT_OK);
}

static void test_set_truncates_long_message(void **state)
{
    (void)state;
    char big[3 * IOT_ERROR_MSG_MAX];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    struct guarded_error g;
    guard_init(&g);
    iot_error_set(&g.err, IOT_ERR_INVALID, "%s", big);
    guard_check(&g);
    assert_int_equal(strlen(g.err.msg), IOT_ERROR_MSG_MAX - 1);
    assert_memory_equal(g.err.msg, big, IOT_ERROR_MSG_MAX - 1);
}

static void test_prefix_prepends(void **state)
{
    (void)state;
    struct iot_error err = {0};
    iot_error_set(&err, IOT_ERR_INVALID, "invalid connectionstring format");
    assert_int_equal(iot_error_prefix(&err, "malformed request body: "), IOT_ERR_INVALID);
    assert_string_equal(err.msg, "malformed request body: invalid connectionstring format");
    iot_error_prefix(&err, "%s#%d ", "a", 1);
    assert_string_equal(err.msg, "a#1 malformed request body: invalid connectionstring format");
    assert_int_equal(err.code, IOT_ERR_INVALID);
}

static void test_prefix_on_empty_message(void **state)
{
    (void)state;
    struct iot_error err = {0};
    iot_error_set(&err, IOT_ERR_INTERNAL, "%s", "");
    iot_error_prefix(&err, "only the prefix");
    assert_string_equal(err.msg, "only the prefix");
}

/* Prefix + message over the limit: the prefix is kept whole, the message's tail is cut. */
static void test_prefix_truncates_message_tail(void **state)
{
    (void)state;
    struct guarded_error g;
    guard_init(&g);
    char body[IOT_ERROR_MSG_MAX];
    memset(body, 'm', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    iot_error_set(&g.err, IOT_ERR_INVALID, "%s", body);
    assert_int_equal(strlen(g.err.msg), IOT_ERROR_MSG_MAX - 1);
    iot_error_prefix(&g.err, "PREFIX: ");
    guard_check(&g);
    assert_int_equal(strlen(g.err.msg), IOT_ERROR_MSG_MAX - 1);
    assert_memory_equal(g.err.msg, "PREFIX: ", 8);
    for (size_t i = 8; i < IOT_ERROR_MSG_MAX - 1; i++)
        assert_int_equal(g.err.msg[i], 'm');
}

/* A prefix alone longer than the buffer leaves only (the start of) the prefix. */
static void test_prefix_longer_than_buffer(void **state)
{
    (void)state;
    struct guarded_error g;
    guard_init(&g);
    iot_error_set(&g.err, IOT_ERR_UNAUTHORIZED, "tail");
    char huge[2 * IOT_ERROR_MSG_MAX];
    memset(huge, 'p', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    assert_int_equal(iot_error_prefix(&g.err, "%s", huge), IOT_ERR_UNAUTHORIZED);
    guard_check(&g);
    assert_int_equal(strlen(g.err.msg), IOT_ERROR_MSG_MAX - 1);
    assert_null(strstr(g.err.msg, "tail"));
    for (size_t i = 0; i < IOT_ERROR_MSG_MAX - 1; i++)
        assert_int_equal(g.err.msg[i], 'p');
}

/* Repeated prefixing (error chains) stays bounded. */
static void test_prefix_repeated_stays_bounded(void **state)
{
    (void)state;
    struct guarded_error g;
    guard_init(&g);
    iot_error_set(&g.err, IOT_ERR_INVALID, "root cause");
    for (int i = 0; i < 100; i++) {
        iot_error_prefix(&g.err, "layer %d: ", i);
        guard_check(&g);
        assert_true(strlen(g.err.msg) <= IOT_ERROR_MSG_MAX - 1);
    }
    assert_int_equal(strlen(g.err.msg), IOT_ERROR_MSG_MAX - 1);
    assert_memory_equal(g.err.msg, "layer 99: layer 98: ", 20);
}

/* A message that was never NUL-terminated (e.g. a struct from memset) is still read bounded. */
static void test_prefix_unterminated_message(void **state)
{
    (void)state;
    struct guarded_error g;
    guard_init(&g);
    g.err.code = IOT_ERR_IO;
    memset(g.err.msg, 'z', sizeof g.err.msg);
    assert_int_equal(iot_error_prefix(&g.err, "p: "), IOT_ERR_IO);
    guard_check(&g);
    assert_int_equal(strlen(g.err.msg), IOT_ERROR_MSG_MAX - 1);
    assert_memory_equal(g.err.msg, "p: zzz", 6);
}

static void test_strerror_every_code(void **state)
{
    (void)state;
    static const struct {
        enum iot_err code;
        const char *name;
    } expected[] = {
        {IOT_OK, "ok"},
        {IOT_ERR_NOMEM, "out of memory"},
        {IOT_ERR_INVALID, "invalid input"},
        {IOT_ERR_NOT_FOUND, "not found"},
        {IOT_ERR_CONFLICT, "conflict"},
        {IOT_ERR_UNAUTHORIZED, "unauthorized"},
        {IOT_ERR_FORBIDDEN, "forbidden"},
        {IOT_ERR_TOO_LARGE, "request body too large"},
        {IOT_ERR_UNAVAILABLE, "service unavailable"},
        {IOT_ERR_TIMEOUT, "timeout"},
        {IOT_ERR_THROTTLED, "throttled"},
        {IOT_ERR_UPSTREAM, "bad upstream response"},
        {IOT_ERR_CRYPTO, "cryptographic failure"},
        {IOT_ERR_CONFIG, "invalid configuration"},
        {IOT_ERR_IO, "i/o error"},
        {IOT_ERR_NEEDS_MIGRATION, "database needs migration"},
        {IOT_ERR_INTERNAL, "internal error"},
    };
    /* one row per code: a new code without a name fails here */
    assert_int_equal(sizeof expected / sizeof expected[0], IOT_ERR__COUNT);
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        assert_string_equal(iot_strerror(expected[i].code), expected[i].name);
    for (int c = 0; c < IOT_ERR__COUNT; c++) {
        assert_non_null(iot_strerror((enum iot_err)c));
        assert_string_not_equal(iot_strerror((enum iot_err)c), "unknown error");
    }
}

static void test_strerror_out_of_range(void **state)
{
    (void)state;
    assert_string_equal(iot_strerror(IOT_ERR__COUNT), "unknown error");
    assert_string_equal(iot_strerror((enum iot_err)1000), "unknown error");
    assert_string_equal(iot_strerror((enum iot_err) - 1), "unknown error");
}

static void test_http_status_mapping(void **state)
{
    (void)state;
    static const struct {
        enum iot_err code;
        int status;
    } expected[] = {
        {IOT_OK, 200},
        {IOT_ERR_NOMEM, 500},
        {IOT_ERR_INVALID, 400},
        {IOT_ERR_NOT_FOUND, 404},
        {IOT_ERR_CONFLICT, 409},
        {IOT_ERR_UNAUTHORIZED, 401},
        {IOT_ERR_FORBIDDEN, 403},
        {IOT_ERR_TOO_LARGE, 413},
        {IOT_ERR_UNAVAILABLE, 503},
        {IOT_ERR_TIMEOUT, 504},
        {IOT_ERR_THROTTLED, 503},
        {IOT_ERR_UPSTREAM, 502},
        {IOT_ERR_CRYPTO, 500},
        {IOT_ERR_CONFIG, 500},
        {IOT_ERR_IO, 500},
        {IOT_ERR_NEEDS_MIGRATION, 503},
        {IOT_ERR_INTERNAL, 500},
    };
    assert_int_equal(sizeof expected / sizeof expected[0], IOT_ERR__COUNT);
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        assert_int_equal(iot_err_http_status(expected[i].code), expected[i].status);
    assert_int_equal(iot_err_http_status(IOT_ERR__COUNT), 500);
    assert_int_equal(iot_err_http_status((enum iot_err) - 5), 500);
    assert_int_equal(iot_err_http_status((enum iot_err)12345), 500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_formats_and_returns_code),
        cmocka_unit_test(test_set_null_err_only_returns_code),
        cmocka_unit_test(test_set_truncates_long_message),
        cmocka_unit_test(test_prefix_prepends),
        cmocka_unit_test(test_prefix_on_empty_message),
        cmocka_unit_test(test_prefix_truncates_message_tail),
        cmocka_unit_test(test_prefix_longer_than_buffer),
        cmocka_unit_test(test_prefix_repeated_stays_bounded),
        cmocka_unit_test(test_prefix_unterminated_message),
        cmocka_unit_test(test_strerror_every_code),
        cmocka_unit_test(test_strerror_out_of_range),
        cmocka_unit_test(test_http_status_mapping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
