/* http_route_match: segment-wise matching of Mender's routes, `{name}` parameters (an empty
 * segment is a value: open-source Mender calls /tenants//devices), trailing slashes significant,
 * no prefix matches, at most HTTP_MAX_PARAMS parameters. The scratch buffer is allocated with
 * exactly the documented strlen(path) + 1 bytes so that ASan catches any overrun. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "iot-manager/http.h"

#define MGMT "/api/management/v1/iot-manager"
#define INTL "/api/internal/v1/iot-manager"

struct match {
    bool ok;
    size_t n;
    const char *params[HTTP_MAX_PARAMS + 2];
    char *scratch; /* params point in here; freed by match_free */
};

static struct match match(const char *pattern, const char *path)
{
    struct match m;
    memset(&m, 0, sizeof m);
    m.n = 999; /* must be written on success */
    m.scratch = malloc(strlen(path) + 1);
    assert_non_null(m.scratch);
    m.ok = http_route_match(pattern, path, m.scratch, m.params, &m.n);
    return m;
}

static void match_free(struct match *m)
{
    free(m->scratch);
    m->scratch = NULL;
}

static void expect_no_match(const char *pattern, const char *path)
{
    struct match m = match(pattern, path);
    if (m.ok)
        fail_msg("\"%s\" unexpectedly matched \"%s\"", path, pattern);
    match_free(&m);
}

/* Fails unless `path` matches `pattern` with exactly the `n` parameter values that follow. */
static void expect_match(const char *pattern, const char *path, size_t n, ...)
{
    const char *want[HTTP_MAX_PARAMS];
    assert_true(n <= HTTP_MAX_PARAMS);
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++)
        want[i] = va_arg(ap, const char *);
    va_end(ap);

    struct match m = match(pattern, path);
    if (!m.ok)
        fail_msg("\"%s\" did not match \"%s\"", path, pattern);
    assert_int_equal(m.n, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(m.params[i], want[i]);
    match_free(&m);
}

static void test_literal_paths(void **state)
{
    (void)state;
    expect_match(MGMT "/integrations", MGMT "/integrations", 0);
    expect_match("/", "/", 0);
    expect_match("/api/internal/v1/iot-manager/health", "/api/internal/v1/iot-manager/health", 0);

    expect_no_match(MGMT "/integrations", MGMT "/integration");
    expect_no_match(MGMT "/integrations", MGMT "/integrationz");
    expect_no_match(MGMT "/integrations", INTL "/integrations");
    /* case-sensitive, like gin */
    expect_no_match(MGMT "/integrations", MGMT "/Integrations");
    expect_no_match("/a/b", "a/b");
    expect_no_match("/", "");
    expect_no_match("/a", "/");
}

static void test_parameters(void **state)
{
    (void)state;
    expect_match(MGMT "/integrations/{id}", MGMT "/integrations/0a68eb57-c88a", 1, "0a68eb57-c88a");
    expect_match(MGMT "/devices/{id}/state/{integrationId}", MGMT "/devices/dev-1/state/itg-2", 2,
                 "dev-1", "itg-2");
    expect_match(INTL "/tenants/{tenant_id}/devices/{device_id}", INTL "/tenants/t1/devices/d1", 2,
                 "t1", "d1");
    /* the value is the raw segment: decoding is the server's job */
    expect_match("/a/{x}", "/a/b%2Fc", 1, "b%2Fc");

    /* a parameter matches one segment only, never a literal's neighbour */
    expect_no_match(MGMT "/devices/{id}/state", MGMT "/devices/x/y/state");
    expect_no_match(MGMT "/devices/{id}/state", MGMT "/devices/x/states");
}

/* Open-source Mender has no tenant: deviceauth calls /tenants//devices. */
static void test_empty_segment_is_a_value(void **state)
{
    (void)state;
    expect_match(INTL "/tenants/{tenant_id}/devices", INTL "/tenants//devices", 1, "");
    expect_match(INTL "/tenants/{tenant_id}/devices/{device_id}", INTL "/tenants//devices/abc", 2,
                 "", "abc");
    expect_match("/{a}/{b}/{c}", "///", 3, "", "", "");

    /* an empty segment does not stand in for a literal */
    expect_no_match(INTL "/tenants/{tenant_id}/devices", INTL "//{tenant_id}/devices");
    expect_no_match("/a/b", "//b");
}

static void test_trailing_slash_is_significant(void **state)
{
    (void)state;
    expect_no_match(MGMT "/integrations", MGMT "/integrations/");
    expect_no_match(MGMT "/integrations/", MGMT "/integrations");
    expect_no_match(MGMT "/integrations/{id}/credentials", MGMT "/integrations/x/credentials/");
    expect_no_match("/a/{x}", "/a/b/");

    expect_match(MGMT "/integrations/", MGMT "/integrations/", 0);
}

static void test_too_many_segments(void **state)
{
    (void)state;
    expect_no_match(MGMT "/integrations/{id}", MGMT "/integrations/x/credentials");
    expect_no_match("/a/{x}", "/a/b/c");
    expect_no_match("/{x}", "/a/b");
    expect_no_match("/a", "/a/b");
}

static void test_prefix_only_rejected(void **state)
{
    (void)state;
    /* the path is a prefix of the pattern */
    expect_no_match(MGMT "/integrations/{id}/credentials", MGMT "/integrations/x");
    expect_no_match(MGMT "/integrations/{id}", MGMT "/integrations");
    expect_no_match("/a/b/c", "/a/b");
    expect_no_match("/a/b", "/a");
    /* within one segment, in either direction */
    expect_no_match("/abc", "/ab");
    expect_no_match("/ab", "/abc");
    expect_no_match(MGMT "/event", MGMT "/events");
    expect_no_match(MGMT "/events", MGMT "/event");
}

static void test_max_params(void **state)
{
    (void)state;
    assert_int_equal(HTTP_MAX_PARAMS, 4); /* the patterns here are written for it */
    expect_match("/{a}/{b}/{c}/{d}", "/1/2/3/4", HTTP_MAX_PARAMS, "1", "2", "3", "4");

    /* one more than HTTP_MAX_PARAMS cannot be matched (and nothing is written past the array,
     * which has two spare slots here that must stay NULL) */
    struct match m = match("/{a}/{b}/{c}/{d}/{e}", "/1/2/3/4/5");
    assert_false(m.ok);
    assert_null(m.params[HTTP_MAX_PARAMS]);
    assert_null(m.params[HTTP_MAX_PARAMS + 1]);
    match_free(&m);
}

/* The documented scratch size is enough even when every segment is a parameter. */
static void test_scratch_bound(void **state)
{
    (void)state;
    expect_match("/{a}/{b}/{c}/{d}", "/aaaaaaaaaa/bbbbbbbbbbbbbbbbb/c/dddddddddddddddddddd", 4,
                 "aaaaaaaaaa", "bbbbbbbbbbbbbbbbb", "c", "dddddddddddddddddddd");
    expect_match("/{a}/{b}/{c}/{d}", "////", 4, "", "", "", "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_paths),
        cmocka_unit_test(test_parameters),
        cmocka_unit_test(test_empty_segment_is_a_value),
        cmocka_unit_test(test_trailing_slash_is_significant),
        cmocka_unit_test(test_too_many_segments),
        cmocka_unit_test(test_prefix_only_rejected),
        cmocka_unit_test(test_max_params),
        cmocka_unit_test(test_scratch_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
