/* Unit tests for the pure parts of the IoT Hub client: ids, URLs, query building, error mapping,
 * Retry-After, backoff, the SAS token cache, the SSRF address filter and JSON mapping. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "azure/hub_internal.h"
#include "iot-manager/hub.h"
#include "iot-manager/sas.h"

/* ---- device ids and paths ---- */

static void test_device_id_valid(void **state)
{
    (void)state;
    char max[HUB_DEVICE_ID_MAX + 2];
    memset(max, 'a', HUB_DEVICE_ID_MAX);
    max[HUB_DEVICE_ID_MAX] = '\0';
    assert_true(hub_device_id_valid(max));
    max[HUB_DEVICE_ID_MAX] = 'a';
    max[HUB_DEVICE_ID_MAX + 1] = '\0';
    assert_false(hub_device_id_valid(max)); /* 129 characters */

    assert_true(hub_device_id_valid("7b478313-de33-4735-bf00-0ebc31851faf"));
    assert_true(hub_device_id_valid("a-:.+%_#*?!(),=@;$'z"));
    assert_false(hub_device_id_valid(""));
    assert_false(hub_device_id_valid(NULL));
    const char *bad[] = {"a b", "a/b", "a]b", "a[b", "a\"b", "a\\b", "a\nb", "\xc3\xa9",
                         "a&b", "a<b", "a{b", "a`b", "a|b",  "a^b",  "a~b",  "a' OR 1=1 --"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(hub_device_id_valid(bad[i]));
}

static void test_path_escape(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(hub_path_escape("dev-1.a_b~c", out, sizeof out), 11);
    assert_string_equal(out, "dev-1.a_b~c");
    assert_true(hub_path_escape("a/b?c#d%e f+g:h'", out, sizeof out) > 0);
    assert_string_equal(out, "a%2Fb%3Fc%23d%25e%20f%2Bg%3Ah%27");
    /* exact fit: "%3A" needs 3 bytes plus the NUL */
    assert_int_equal(hub_path_escape(":", out, 4), 3);
    assert_int_equal(hub_path_escape(":", out, 3), -1);
    assert_int_equal(hub_path_escape("abc", out, 3), -1);
}

static void test_host_valid(void **state)
{
    (void)state;
    const char *good[] = {"myhub.azure-devices.net",
                          "localhost",
                          "localhost:8443",
                          "127.0.0.1:1",
                          "h:65535",
                          "a-b.c"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(hub_host_valid(good[i]));
    const char *bad[] = {
        "",          ".a",          "-a",        "a..b",        "a/b",     "a@b",   "a?b",
        "a#b",       "a b",         "a:",        "a:0",         "a:65536", "a:12x", "a:123456",
        "[::1]:443", "evil.com/x?", "u:p@h.net", "a.b\r\nX: y", "a%2eb",   ":443"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(hub_host_valid(bad[i]));
    assert_false(hub_host_valid(NULL));
}

static void test_url_build(void **state)
{
    (void)state;
    char url[HUB_URL_MAX];
    assert_int_equal(hub_url_build(false, "myhub.azure-devices.net", "/devices/", "d:1(x)", NULL,
                                   url, sizeof url),
                     IOT_OK);
    assert_string_equal(
        url, "https://myhub.azure-devices.net/devices/d%3A1%28x%29?api-version=2021-04-12");
    assert_int_equal(
        hub_url_build(true, "localhost:8443", "/devices/query", NULL, NULL, url, sizeof url),
        IOT_OK);
    assert_string_equal(url, "http://localhost:8443/devices/query?api-version=2021-04-12");
    assert_int_equal(hub_url_build(false, "h", "/twins/", "a#b?c", NULL, url, sizeof url), IOT_OK);
    assert_string_equal(url, "https://h/twins/a%23b%3Fc?api-version=2021-04-12");
    /* an id with a slash or a bad host never reaches a URL */
    assert_int_equal(hub_url_build(false, "h", "/devices/", "a/b", NULL, url, sizeof url),
                     IOT_ERR_INVALID);
    assert_int_equal(hub_url_build(false, "evil.com/x#", "/devices/", "a", NULL, url, sizeof url),
                     IOT_ERR_INVALID);
    assert_int_equal(hub_url_build(false, "h", "/devices/", "a", NULL, url, 20), IOT_ERR_INVALID);
}

/* ---- query building ---- */

static size_t count_char(const char *s, char c)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

static void test_query_build(void **state)
{
    (void)state;
    char *q = NULL;
    struct iot_error err = {0};
    const char *ids[] = {"a", "b:1", "c(2);$"};
    assert_int_equal(hub_query_build_ids(ids, 3, &q, &err), IOT_OK);
    assert_string_equal(q, "SELECT * FROM devices WHERE devices.deviceId IN ['a','b:1','c(2);$']");
    free(q);

    const char *one[] = {"x"};
    assert_int_equal(hub_query_build_ids(one, 1, &q, &err), IOT_OK);
    assert_string_equal(q, "SELECT * FROM devices WHERE devices.deviceId IN ['x']");
    free(q);

    /* Hostile ids: each must be refused, whole query and all, and nothing returned. */
    const char *hostile[] = {"a' OR 1=1 --", "]",    "'",     "a'",
                             "x','y",        "a\"b", "a\\'b", "a] OR devices.deviceId != ['",
                             "a\nb",         "",     "a--"};
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        const char *mix[] = {"good", hostile[i]};
        q = (char *)0x1;
        enum iot_err rc = hub_query_build_ids(mix, 2, &q, &err);
        if (strcmp(hostile[i], "a--") == 0) {
            /* dashes are legal id characters and harmless inside a literal */
            assert_int_equal(rc, IOT_OK);
            assert_string_equal(q,
                                "SELECT * FROM devices WHERE devices.deviceId IN ['good','a--']");
            free(q);
            continue;
        }
        assert_int_equal(rc, IOT_ERR_INVALID);
        assert_null(q);
        assert_non_null(strstr(err.msg, "#2"));
    }

    /* Every accepted id yields exactly two quotes and the list has one pair of brackets. */
    const char *many[HUB_QUERY_MAX_IDS];
    char buf[HUB_QUERY_MAX_IDS][16];
    for (size_t i = 0; i < HUB_QUERY_MAX_IDS; i++) {
        snprintf(buf[i], sizeof buf[i], "id-%zu", i);
        many[i] = buf[i];
    }
    assert_int_equal(hub_query_build_ids(many, HUB_QUERY_MAX_IDS, &q, &err), IOT_OK);
    assert_int_equal(count_char(q, '\''), 2 * HUB_QUERY_MAX_IDS);
    assert_int_equal(count_char(q, '['), 1);
    assert_int_equal(count_char(q, ']'), 1);
    free(q);
    assert_int_equal(hub_query_build_ids(many, HUB_QUERY_MAX_IDS + 1, &q, &err), IOT_ERR_INVALID);
    assert_int_equal(hub_query_build_ids(many, 0, &q, &err), IOT_ERR_INVALID);

    /* 100 ids of 128 characters would exceed the length bound */
    char longids[HUB_QUERY_MAX_IDS][HUB_DEVICE_ID_MAX + 1];
    for (size_t i = 0; i < HUB_QUERY_MAX_IDS; i++) {
        memset(longids[i], 'a', HUB_DEVICE_ID_MAX);
        longids[i][HUB_DEVICE_ID_MAX] = '\0';
        snprintf(longids[i], 8, "%03zu", i);
        longids[i][3] = 'x';
        many[i] = longids[i];
    }
    q = NULL;
    assert_int_equal(hub_query_build_ids(many, HUB_QUERY_MAX_IDS, &q, &err), IOT_ERR_INVALID);
    assert_null(q);
    assert_int_equal(hub_query_build_ids(many, 50, &q, &err), IOT_OK); /* 6.6 KB: fine */
    assert_true(strlen(q) <= HUB_QUERY_MAX_LEN);
    free(q);
}

/* ---- error mapping ---- */

struct map_case {
    int status;
    const char *header;
    const char *body;
    enum hub_error_class cls;
    enum iot_err code;
    const char *name;
    long number;
};

static void check_map(const struct map_case *c)
{
    struct hub_error e;
    memset(&e, 0, sizeof e);
    e.retry_after_ms = 1234;
    hub_error_from_response(c->status, c->header, c->body, c->body ? strlen(c->body) : 0, &e);
    if (e.cls != c->cls || strcmp(e.name, c->name) != 0 || e.number != c->number)
        print_error("case status %d body %s: got cls %s name '%s' number %ld\n", c->status,
                    c->body ? c->body : "(none)", hub_error_class_name(e.cls), e.name, e.number);
    assert_int_equal(e.cls, c->cls);
    assert_int_equal(e.code, c->code);
    assert_string_equal(e.name, c->name);
    assert_int_equal(e.number, c->number);
    assert_int_equal(e.http_status, c->status);
    assert_int_equal(e.retry_after_ms, 1234); /* left alone */
    for (const char *p = e.msg; *p; p++)
        assert_true((unsigned char)*p >= 0x20);
    char want[16];
    snprintf(want, sizeof want, "%d", c->status);
    assert_non_null(strstr(e.msg, want));
}

static void test_error_mapping(void **state)
{
    (void)state;
    const struct map_case cases[] = {
        /* shape 1, the legacy body */
        {404, "DeviceNotFound",
         "{\"Message\":\"ErrorCode:DeviceNotFound;sensor-thl-001\",\"ExceptionMessage\":\"Tracking "
         "ID:06e0-G:0-TimeStamp:10/24/2023 16:57:00\"}",
         HUB_ERR_NOT_FOUND, IOT_ERR_NOT_FOUND, "DeviceNotFound", 0},
        {409, NULL,
         "{\"Message\":\"ErrorCode:DeviceAlreadyExists;A device with ID 'iotdevice1' is already "
         "registered.\\r\\nTracking Id:x\",\"ExceptionMessage\":\"\"}",
         HUB_ERR_ALREADY_EXISTS, IOT_ERR_CONFLICT, "DeviceAlreadyExists", 0},
        {412, NULL,
         "{\"Message\":\"ErrorCode:PreconditionFailed;Precondition failed: Device version did "
         "not match\",\"ExceptionMessage\":\"\"}",
         HUB_ERR_PRECONDITION_FAILED, IOT_ERR_CONFLICT, "PreconditionFailed", 0},
        {429, "ThrottlingBacklogTimeout",
         "{\"Message\":\"ErrorCode:ThrottlingBacklogTimeout;The request has been throttled. Wait "
         "10 seconds and try again. Operation type: CRUD\",\"ExceptionMessage\":\"x\"}",
         HUB_ERR_THROTTLED, IOT_ERR_THROTTLED, "ThrottlingBacklogTimeout", 0},
        {401, NULL, "{\"Message\":\"ErrorCode:IotHubUnauthorizedAccess;Unauthorized\"}",
         HUB_ERR_UNAUTHORIZED, IOT_ERR_UNAUTHORIZED, "IotHubUnauthorizedAccess", 0},
        {403, NULL, "{\"Message\":\"ErrorCode:IotHubQuotaExceeded;Total number of messages\"}",
         HUB_ERR_QUOTA_EXCEEDED, IOT_ERR_FORBIDDEN, "IotHubQuotaExceeded", 0},
        {403, "IotHubUnauthorizedAccess", "", HUB_ERR_UNAUTHORIZED, IOT_ERR_UNAUTHORIZED,
         "IotHubUnauthorizedAccess", 0},
        {403, NULL, NULL, HUB_ERR_QUOTA_EXCEEDED, IOT_ERR_FORBIDDEN, "", 0},
        {413, NULL, "{\"Message\":\"ErrorCode:TooManyDevices;cap\"}", HUB_ERR_QUOTA_EXCEEDED,
         IOT_ERR_FORBIDDEN, "TooManyDevices", 0},
        /* shape 2: Message holds escaped JSON */
        {404, NULL,
         "{\"Message\":\"{\\\"errorCode\\\":404103,\\\"trackingId\\\":\\\"t\\\",\\\"message\\\":"
         "\\\"The operation failed because the requested device isn't online\\\","
         "\\\"timestampUtc\\\":\\\"2021-01-01T00:00:00Z\\\"}\",\"ExceptionMessage\":\"\"}",
         HUB_ERR_NOT_FOUND, IOT_ERR_NOT_FOUND, "", 404103},
        /* shape 3: bare */
        {400, NULL,
         "{\"errorCode\":400004,\"trackingId\":\"t\",\"message\":\"bad twin\","
         "\"timestampUtc\":\"2021-01-01T00:00:00Z\"}",
         HUB_ERR_BAD_REQUEST, IOT_ERR_INVALID, "ArgumentInvalid", 400004},
        {429, NULL, "{\"errorCode\":429001,\"message\":\"slow down\"}", HUB_ERR_THROTTLED,
         IOT_ERR_THROTTLED, "ThrottlingException", 429001},
        {404, NULL, "{\"errorCode\":\"DeviceNotFound\",\"message\":\"m\"}", HUB_ERR_NOT_FOUND,
         IOT_ERR_NOT_FOUND, "DeviceNotFound", 0},
        /* header only, odd bodies */
        {404, "DeviceNotFound", "", HUB_ERR_NOT_FOUND, IOT_ERR_NOT_FOUND, "DeviceNotFound", 0},
        {500, NULL, "", HUB_ERR_TRANSIENT, IOT_ERR_UNAVAILABLE, "", 0},
        {500, NULL, "<html>oops</html>", HUB_ERR_TRANSIENT, IOT_ERR_UNAVAILABLE, "", 0},
        {500, "ServerError", "{\"Message\":\"ErrorCode:ServerError;boom\"}", HUB_ERR_TRANSIENT,
         IOT_ERR_UNAVAILABLE, "ServerError", 0},
        {503, "ServiceUnavailable", NULL, HUB_ERR_TRANSIENT, IOT_ERR_UNAVAILABLE,
         "ServiceUnavailable", 0},
        {502, NULL, NULL, HUB_ERR_TRANSIENT, IOT_ERR_UNAVAILABLE, "", 0},
        {504, NULL, "{\"errorCode\":504101}", HUB_ERR_TRANSIENT, IOT_ERR_UNAVAILABLE,
         "GatewayTimeout", 504101},
        {408, NULL, NULL, HUB_ERR_TIMEOUT, IOT_ERR_TIMEOUT, "", 0},
        {501, NULL, NULL, HUB_ERR_PROTOCOL, IOT_ERR_UPSTREAM, "", 0},
        {302, NULL, NULL, HUB_ERR_PROTOCOL, IOT_ERR_UPSTREAM, "", 0},
        {418, NULL, NULL, HUB_ERR_BAD_REQUEST, IOT_ERR_INVALID, "", 0},
        /* a header that is not an identifier is ignored, not copied into the message */
        {404, "Device Not\"Found", "", HUB_ERR_NOT_FOUND, IOT_ERR_NOT_FOUND, "", 0},
        /* a name in the Message with junk characters is not trusted */
        {400, NULL, "{\"Message\":\"ErrorCode:Bad Name;x\"}", HUB_ERR_BAD_REQUEST, IOT_ERR_INVALID,
         "", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_map(&cases[i]);

    struct hub_error e = {0};
    const char *crlf = "{\"Message\":\"ErrorCode:DeviceAlreadyExists;line1\\r\\nline2\"}";
    hub_error_from_response(409, NULL, crlf, strlen(crlf), &e);
    assert_non_null(strstr(e.msg, "line1  line2"));
}

static void test_error_classes(void **state)
{
    (void)state;
    for (int c = 0; c < HUB_ERR__COUNT; c++) {
        bool want = c == HUB_ERR_THROTTLED || c == HUB_ERR_TRANSIENT || c == HUB_ERR_TIMEOUT ||
                    c == HUB_ERR_UNREACHABLE;
        assert_int_equal(hub_error_is_retryable((enum hub_error_class)c), want);
        assert_string_not_equal(hub_error_class_name((enum hub_error_class)c), "unknown");
    }
    assert_false(hub_error_is_retryable(HUB_ERR__COUNT));
    assert_int_equal(hub_error_class_to_iot(HUB_OK), IOT_OK);
    assert_int_equal(hub_error_class_to_iot(HUB_ERR_BLOCKED), IOT_ERR_FORBIDDEN);
    assert_int_equal(hub_error_class_of_name("ThrottlingException"), HUB_ERR_THROTTLED);
    assert_int_equal(hub_error_class_of_name("Whatever"), HUB_OK);

    /* unreachable: nothing was sent, always safe; 429, 5xx and timeouts: idempotent only */
    assert_false(hub_retry_allowed(HUB_ERR_THROTTLED, false));
    assert_true(hub_retry_allowed(HUB_ERR_THROTTLED, true));
    assert_true(hub_retry_allowed(HUB_ERR_UNREACHABLE, false));
    assert_false(hub_retry_allowed(HUB_ERR_TRANSIENT, false));
    assert_true(hub_retry_allowed(HUB_ERR_TRANSIENT, true));
    assert_false(hub_retry_allowed(HUB_ERR_TIMEOUT, false));
    assert_true(hub_retry_allowed(HUB_ERR_TIMEOUT, true));
    assert_false(hub_retry_allowed(HUB_ERR_PRECONDITION_FAILED, true));
    assert_false(hub_retry_allowed(HUB_ERR_QUOTA_EXCEEDED, true));
    assert_false(hub_retry_allowed(HUB_ERR_NOT_FOUND, true));
    assert_false(hub_retry_allowed(HUB_ERR_UNAUTHORIZED, true));

    struct hub_error he = {.code = IOT_ERR_THROTTLED};
    snprintf(he.msg, sizeof he.msg, "slow");
    struct iot_error ie = {0};
    assert_int_equal(hub_error_to_iot(&he, &ie), IOT_ERR_THROTTLED);
    assert_int_equal(ie.code, IOT_ERR_THROTTLED);
    assert_string_equal(ie.msg, "slow");
}

/* ---- Retry-After and backoff ---- */

static void test_retry_after(void **state)
{
    (void)state;
    int64_t ms = -7;
    assert_true(hub_retry_after_parse("5", 0, &ms));
    assert_int_equal(ms, 5000);
    assert_true(hub_retry_after_parse(" 10 ", 0, &ms));
    assert_int_equal(ms, 10000);
    assert_true(hub_retry_after_parse("0", 0, &ms));
    assert_int_equal(ms, 0);
    const char *bad[] = {"",
                         "  ",
                         "abc",
                         "-1",
                         "1.5",
                         "5s",
                         "99999999999999999999",
                         "Wed 21 Oct 2015",
                         "tomorrow, please"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ms = -7;
        assert_false(hub_retry_after_parse(bad[i], 0, &ms));
        assert_int_equal(ms, -7);
    }
    assert_false(hub_retry_after_parse(NULL, 0, &ms));
    /* Wed, 21 Oct 2015 07:28:00 GMT = 1445412480 */
    assert_true(hub_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480 - 30, &ms));
    assert_int_equal(ms, 30000);
    assert_true(hub_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480 + 30, &ms));
    assert_int_equal(ms, 0); /* in the past: go now */
}

static void test_backoff(void **state)
{
    (void)state;
    struct hub_retry_policy p = {.max_attempts = 5,
                                 .base_ms = 100,
                                 .cap_ms = 1000,
                                 .throttled_base_ms = 2000,
                                 .throttled_cap_ms = 10000,
                                 .max_total_ms = 60000};
    const uint32_t rnds[] = {0, 1, 99, 100, 12345, 0x7fffffffu, 0xfffffffeu, 0xffffffffu};
    for (unsigned retry = 1; retry <= 40; retry++) {
        int64_t ceil_t = 100;
        for (unsigned i = 1; i < retry && ceil_t < 1000; i++)
            ceil_t *= 2;
        if (ceil_t > 1000)
            ceil_t = 1000;
        int64_t lo = INT64_MAX, hi = -1;
        for (size_t i = 0; i < sizeof rnds / sizeof rnds[0]; i++) {
            int64_t d = hub_backoff_delay_ms(&p, retry, HUB_ERR_TRANSIENT, -1, rnds[i]);
            assert_true(d >= 0 && d <= ceil_t);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
            int64_t t = hub_backoff_delay_ms(&p, retry, HUB_ERR_THROTTLED, -1, rnds[i]);
            assert_true(t >= 0 && t <= 10000);
            if (retry == 1)
                assert_true(t <= 2000);
        }
        assert_int_equal(lo, 0); /* rnd 0: full jitter reaches zero */
        /* over 1001 consecutive rnd values every value in [0, ceiling] is reachable */
        int64_t top = -1;
        for (uint32_t r = 0; r <= 1000; r++) {
            int64_t d = hub_backoff_delay_ms(&p, retry, HUB_ERR_TRANSIENT, -1, r);
            top = d > top ? d : top;
        }
        assert_int_equal(top, ceil_t);
        (void)hi;
    }
    /* Retry-After wins over a smaller jitter, even beyond the cap */
    assert_int_equal(hub_backoff_delay_ms(&p, 1, HUB_ERR_THROTTLED, 30000, 5), 30000);
    assert_int_equal(hub_backoff_delay_ms(&p, 1, HUB_ERR_TRANSIENT, 50, 0), 50);
    assert_int_equal(hub_backoff_delay_ms(&p, 1, HUB_ERR_TRANSIENT, 0, 0), 0);
    /* a zero policy never sleeps */
    struct hub_retry_policy z = {0};
    assert_int_equal(hub_backoff_delay_ms(&z, 3, HUB_ERR_TRANSIENT, -1, 77), 0);
}

/* ---- SAS token cache ---- */

struct sign_log {
    int calls;
    int64_t last_expiry;
};

static struct sign_log g_sign; /* test-only observer of the injected signer */

static enum iot_err fake_sign(const struct connstr *cs, int64_t expiry, char *out, size_t cap,
                              struct iot_error *err)
{
    (void)err;
    g_sign.calls++;
    g_sign.last_expiry = expiry;
    snprintf(out, cap, "tok:%s:%s:%lld", cs->hostname, cs->name, (long long)expiry);
    return IOT_OK;
}

static void parse_cs(const char *text, struct connstr *cs)
{
    struct iot_error err = {0};
    assert_int_equal(connstr_parse(text, false, cs, &err), IOT_OK);
}

#define KEY_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY_B "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="

static void test_token_cache(void **state)
{
    (void)state;
    memset(&g_sign, 0, sizeof g_sign);
    struct hub_token_cache *tc;
    assert_int_equal(hub_token_cache_new(2, fake_sign, &tc), IOT_OK);
    struct connstr a = {0}, a2 = {0}, b = {0}, p = {0}, d = {0};
    parse_cs("HostName=h1.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_A,
             &a);
    parse_cs("HostName=h1.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_B,
             &a2);
    parse_cs("HostName=h2.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_A,
             &b);
    parse_cs("HostName=h1.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey=" KEY_A,
             &p);
    char tok[SAS_TOKEN_MAX], first[SAS_TOKEN_MAX];
    bool fresh = false;
    struct iot_error err = {0};

    assert_int_equal(hub_token_cache_get(tc, &a, 1000, first, sizeof first, &fresh, &err), IOT_OK);
    assert_true(fresh);
    assert_int_equal(g_sign.calls, 1);
    assert_int_equal(g_sign.last_expiry, 1000 + HUB_TOKEN_LIFETIME_S);

    /* reused, not re-signed, until 5 minutes before expiry */
    for (int64_t t = 1001; t < 1000 + HUB_TOKEN_LIFETIME_S - HUB_TOKEN_RENEW_S; t += 97) {
        assert_int_equal(hub_token_cache_get(tc, &a, t, tok, sizeof tok, &fresh, &err), IOT_OK);
        assert_false(fresh);
        assert_string_equal(tok, first);
    }
    assert_int_equal(g_sign.calls, 1);
    int64_t renew_at = 1000 + HUB_TOKEN_LIFETIME_S - HUB_TOKEN_RENEW_S;
    assert_int_equal(hub_token_cache_get(tc, &a, renew_at - 1, tok, sizeof tok, &fresh, &err),
                     IOT_OK);
    assert_false(fresh);
    assert_int_equal(hub_token_cache_get(tc, &a, renew_at, tok, sizeof tok, &fresh, &err), IOT_OK);
    assert_true(fresh);
    assert_int_equal(g_sign.calls, 2);
    assert_int_equal(g_sign.last_expiry, renew_at + HUB_TOKEN_LIFETIME_S);
    assert_string_not_equal(tok, first);

    /* a rotated key, another policy or another hub each get their own token */
    assert_int_equal(hub_token_cache_get(tc, &a2, renew_at, tok, sizeof tok, &fresh, &err), IOT_OK);
    assert_true(fresh);
    assert_int_equal(g_sign.calls, 3);
    assert_int_equal(hub_token_cache_count(tc), 2);
    assert_int_equal(hub_token_cache_get(tc, &p, renew_at, tok, sizeof tok, &fresh, &err), IOT_OK);
    assert_true(fresh);
    assert_non_null(strstr(tok, ":service:"));
    assert_int_equal(hub_token_cache_get(tc, &b, renew_at, tok, sizeof tok, &fresh, &err), IOT_OK);
    assert_true(fresh);
    assert_int_equal(g_sign.calls, 5);
    assert_true(hub_token_cache_count(tc) <= 2); /* bounded */

    /* invalidation forces a new signature */
    assert_int_equal(hub_token_cache_get(tc, &b, renew_at + 1, tok, sizeof tok, &fresh, &err),
                     IOT_OK);
    assert_false(fresh);
    hub_token_cache_invalidate(tc, &b);
    assert_int_equal(hub_token_cache_get(tc, &b, renew_at + 1, tok, sizeof tok, &fresh, &err),
                     IOT_OK);
    assert_true(fresh);

    /* a clock stepped back past the token's birth: re-sign rather than trust it */
    int before = g_sign.calls;
    assert_int_equal(hub_token_cache_get(tc, &b, 10, tok, sizeof tok, &fresh, &err), IOT_OK);
    assert_true(fresh);
    assert_int_equal(g_sign.calls, before + 1);

    /* too small an output buffer is an error, not a truncated token */
    assert_int_not_equal(hub_token_cache_get(tc, &b, 10, tok, 8, &fresh, &err), IOT_OK);

    /* no key: refused */
    parse_cs("HostName=h1.azure-devices.net;SharedAccessKeyName=x", &d);
    assert_int_equal(hub_token_cache_get(tc, &d, 10, tok, sizeof tok, &fresh, &err),
                     IOT_ERR_INVALID);

    hub_token_cache_free(tc);
    connstr_clear(&a);
    connstr_clear(&a2);
    connstr_clear(&b);
    connstr_clear(&p);
    connstr_clear(&d);
}

static void test_token_cache_real_signer(void **state)
{
    (void)state;
    struct hub_token_cache *tc;
    assert_int_equal(hub_token_cache_new(0, NULL, &tc), IOT_OK);
    struct connstr cs = {0};
    parse_cs(
        "HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_A,
        &cs);
    char tok[SAS_TOKEN_MAX];
    bool fresh;
    struct iot_error err = {0};
    assert_int_equal(hub_token_cache_get(tc, &cs, 1700000000 - HUB_TOKEN_LIFETIME_S, tok,
                                         sizeof tok, &fresh, &err),
                     IOT_OK);
    /* azure-iothub.md §1.4 (b): the worked service vector */
    assert_string_equal(tok, "SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5"
                             "jNXO6QeQkSL%2FAx4zTmy44X2G1VY%3D&se=1700000000&skn=iothubowner");
    hub_token_cache_free(tc);
    connstr_clear(&cs);
}

/* ---- SSRF filter ---- */

static bool blocked4(const char *text)
{
    struct sockaddr_in in = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, text, &in.sin_addr), 1);
    return hub_addr_blocked((struct sockaddr *)&in, sizeof in);
}

static bool blocked6(const char *text)
{
    struct sockaddr_in6 in = {.sin6_family = AF_INET6};
    assert_int_equal(inet_pton(AF_INET6, text, &in.sin6_addr), 1);
    return hub_addr_blocked((struct sockaddr *)&in, sizeof in);
}

static void test_addr_blocked(void **state)
{
    (void)state;
    const char *blocked_v4[] = {
        "127.0.0.1",       "127.255.255.254", "10.0.0.1",    "10.255.1.1",
        "172.16.0.1",      "172.31.255.255",  "192.168.1.1", "169.254.169.254",
        "0.0.0.0",         "0.1.2.3",         "224.0.0.1",   "239.255.255.250",
        "255.255.255.255", "240.0.0.1",       "100.64.0.1",  "100.127.255.255"};
    for (size_t i = 0; i < sizeof blocked_v4 / sizeof blocked_v4[0]; i++) {
        if (!blocked4(blocked_v4[i]))
            print_error("not blocked: %s\n", blocked_v4[i]);
        assert_true(blocked4(blocked_v4[i]));
    }
    const char *open_v4[] = {"8.8.8.8",     "20.42.1.1",   "172.32.0.1", "172.15.255.255",
                             "192.169.0.1", "100.128.0.1", "11.0.0.1",   "223.255.255.255"};
    for (size_t i = 0; i < sizeof open_v4 / sizeof open_v4[0]; i++)
        assert_false(blocked4(open_v4[i]));

    const char *blocked_v6[] = {"::1",
                                "::",
                                "fe80::1",
                                "febf::1",
                                "fc00::1",
                                "fd12:3456::1",
                                "ff02::1",
                                "fec0::1",
                                "::ffff:127.0.0.1",
                                "::ffff:10.0.0.1",
                                "64:ff9b::a00:1",
                                "2002:a00:1::1",
                                "::127.0.0.1"};
    for (size_t i = 0; i < sizeof blocked_v6 / sizeof blocked_v6[0]; i++) {
        if (!blocked6(blocked_v6[i]))
            print_error("not blocked: %s\n", blocked_v6[i]);
        assert_true(blocked6(blocked_v6[i]));
    }
    const char *open_v6[] = {"2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808",
                             "2002:808:808::1", "2603:1030::1"};
    for (size_t i = 0; i < sizeof open_v6 / sizeof open_v6[0]; i++)
        assert_false(blocked6(open_v6[i]));

    struct sockaddr sa = {.sa_family = AF_UNIX};
    assert_true(hub_addr_blocked(&sa, sizeof sa));
    struct sockaddr_in short_in = {.sin_family = AF_INET};
    assert_true(hub_addr_blocked((struct sockaddr *)&short_in, 4));
}

/* ---- JSON mapping ---- */

static const char device_json[] =
    "{\"deviceId\":\"dev1\",\"generationId\":\"637546501104263193\",\"etag\":\"MzE4NzUxOTU1\","
    "\"connectionState\":\"Disconnected\",\"status\":\"Enabled\",\"statusReason\":null,"
    "\"connectionStateUpdatedTime\":\"0001-01-01T00:00:00Z\",\"statusUpdatedTime\":\"0001-01-01T00:"
    "00:00Z\",\"lastActivityTime\":\"0001-01-01T00:00:00\",\"cloudToDeviceMessageCount\":0,"
    "\"authentication\":{\"symmetricKey\":{\"primaryKey\":\"" KEY_A "\",\"secondaryKey\":\"" KEY_B
    "\"},\"x509Thumbprint\":{\"primaryThumbprint\":null,\"secondaryThumbprint\":null},\"type\":"
    "\"sas\"},\"capabilities\":{\"iotEdge\":true},\"deviceScope\":null,\"parentScopes\":[]}";

static void test_device_json(void **state)
{
    (void)state;
    json_t *j = json_loads(device_json, 0, NULL);
    assert_non_null(j);
    struct hub_device d;
    struct hub_error e = {0};
    assert_int_equal(hub_device_from_json(j, &d, &e), IOT_OK);
    assert_string_equal(d.device_id, "dev1");
    assert_int_equal(d.status, HUB_STATUS_ENABLED);
    assert_string_equal(d.status_reason, "");
    assert_string_equal(d.etag, "MzE4NzUxOTU1");
    assert_string_equal(d.generation_id, "637546501104263193");
    assert_int_equal(d.connection_state, HUB_CONN_DISCONNECTED);
    assert_string_equal(d.auth_type, "sas");
    assert_string_equal(d.primary_key, KEY_A);
    assert_string_equal(d.secondary_key, KEY_B);
    assert_true(d.iot_edge);
    assert_ptr_equal(d.raw, j);
    hub_device_clear(&d);
    assert_null(d.raw);
    assert_string_equal(d.primary_key, "");

    /* unusable answers are protocol errors */
    const char *bad[] = {"[]", "{\"status\":\"enabled\"}", "{\"deviceId\":\"d\",\"status\":\"on\"}",
                         "{\"deviceId\":7}",
                         "{\"deviceId\":\"d\",\"authentication\":{\"symmetricKey\":{\"primaryKey\":"
                         "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                         "AAAAAAAAAAAAAAAAAAAAA\"}}}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *b = json_loads(bad[i], 0, NULL);
        assert_non_null(b);
        assert_int_equal(hub_device_from_json(b, &d, &e), IOT_ERR_UPSTREAM);
        assert_int_equal(e.cls, HUB_ERR_PROTOCOL);
        assert_null(d.raw);
        json_decref(b);
    }
    json_decref(j);
}

static void test_twin_json(void **state)
{
    (void)state;
    json_t *j =
        json_loads("{\"deviceId\":\"d1\",\"etag\":\"AAAAAAAAAAE=\",\"version\":462,"
                   "\"status\":\"disabled\",\"properties\":{\"desired\":{\"a\":1,"
                   "\"$version\":18},\"reported\":{\"b\":true}},\"tags\":{\"mender\":true}}",
                   0, NULL);
    struct hub_twin t;
    struct hub_error e = {0};
    assert_int_equal(hub_twin_from_json(j, &t, &e), IOT_OK);
    assert_string_equal(t.device_id, "d1");
    assert_string_equal(t.etag, "AAAAAAAAAAE=");
    assert_int_equal(t.version, 462);
    assert_int_equal(t.status, HUB_STATUS_DISABLED);
    assert_true(json_is_true(json_object_get(t.tags, "mender")));
    assert_int_equal(json_integer_value(json_object_get(t.desired, "a")), 1);
    assert_true(json_is_true(json_object_get(t.reported, "b")));
    hub_twin_clear(&t);
    json_decref(j);

    /* tags omitted when empty (as Azure does): still an object for the caller */
    j = json_loads("{\"deviceId\":\"d2\",\"etag\":\"\\\"q\\\"\",\"version\":2}", 0, NULL);
    assert_int_equal(hub_twin_from_json(j, &t, &e), IOT_OK);
    assert_true(json_is_object(t.tags) && json_object_size(t.tags) == 0);
    assert_true(json_is_object(t.desired) && json_is_object(t.reported));
    assert_string_equal(t.etag, "q");
    hub_twin_clear(&t);
    json_decref(j);
}

static void test_bulk_json(void **state)
{
    (void)state;
    struct hub_bulk_item items[3] = {
        {.mode = HUB_BULK_CREATE, .device = {.device_id = "b1", .status = HUB_STATUS_DISABLED}},
        {.mode = HUB_BULK_DELETE_IF_MATCH, .device = {.device_id = "b2", .etag = "MQ=="}},
        {.mode = HUB_BULK_UPDATE,
         .device = {.device_id = "b3", .primary_key = KEY_A, .secondary_key = KEY_B}},
    };
    struct hub_error e = {0};
    json_t *body = hub_bulk_body(items, 3, &e);
    assert_non_null(body);
    char *text = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(
        text, "[{\"authentication\":{\"symmetricKey\":{\"primaryKey\":\"\",\"secondaryKey\":\"\"},"
              "\"type\":\"sas\"},\"id\":\"b1\",\"importMode\":\"create\",\"status\":\"disabled\"},"
              "{\"eTag\":\"MQ==\",\"id\":\"b2\",\"importMode\":\"deleteIfMatchETag\"},"
              "{\"authentication\":{\"symmetricKey\":{\"primaryKey\":\"" KEY_A
              "\",\"secondaryKey\":\"" KEY_B "\"},\"type\":\"sas\"},\"id\":\"b3\",\"importMode\":"
              "\"update\"}]");
    free(text);
    json_decref(body);

    /* refused before sending */
    struct hub_bulk_item dup[2] = {{.device = {.device_id = "x"}}, {.device = {.device_id = "x"}}};
    assert_null(hub_bulk_body(dup, 2, &e));
    assert_int_equal(e.cls, HUB_ERR_INVALID);
    struct hub_bulk_item noetag = {.mode = HUB_BULK_UPDATE_IF_MATCH, .device = {.device_id = "x"}};
    assert_null(hub_bulk_body(&noetag, 1, &e));
    struct hub_bulk_item badid = {.device = {.device_id = "a b"}};
    assert_null(hub_bulk_body(&badid, 1, &e));
    assert_null(hub_bulk_body(items, 0, &e));
    struct hub_bulk_item many[HUB_BULK_MAX + 1];
    char ids[HUB_BULK_MAX + 1][8];
    for (size_t i = 0; i <= HUB_BULK_MAX; i++) {
        snprintf(ids[i], sizeof ids[i], "m%zu", i);
        many[i] = (struct hub_bulk_item){.device = {.device_id = ids[i]}};
    }
    json_t *ok = hub_bulk_body(many, HUB_BULK_MAX, &e);
    assert_non_null(ok);
    json_decref(ok);
    assert_null(hub_bulk_body(many, HUB_BULK_MAX + 1, &e));

    /* results: errors land on the right items, the rest succeeded */
    struct hub_bulk_result res[3];
    json_t *r = json_loads("{\"isSuccessful\":false,\"errors\":[{\"deviceId\":\"b2\",\"errorCode\":"
                           "\"PreconditionFailed\",\"errorStatus\":\"etag mismatch\"},{\"deviceId\""
                           ":\"zz\",\"errorCode\":\"DeviceNotFound\"}],\"warnings\":[]}",
                           0, NULL);
    assert_true(hub_bulk_results_parse(r, items, 3, res));
    assert_int_equal(res[0].cls, HUB_OK);
    assert_int_equal(res[1].cls, HUB_ERR_PRECONDITION_FAILED);
    assert_string_equal(res[1].name, "PreconditionFailed");
    assert_string_equal(res[1].status, "etag mismatch");
    assert_int_equal(res[2].cls, HUB_OK);
    json_decref(r);
    r = json_loads("{\"isSuccessful\":false,\"errors\":[]}", 0, NULL);
    assert_true(hub_bulk_results_parse(r, items, 3, res));
    for (int i = 0; i < 3; i++)
        assert_int_equal(res[i].cls, HUB_ERR_BAD_REQUEST);
    json_decref(r);
    r = json_loads("{\"Message\":\"ErrorCode:ArgumentInvalid;x\"}", 0, NULL);
    assert_false(hub_bulk_results_parse(r, items, 3, res));
    json_decref(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_id_valid),
        cmocka_unit_test(test_path_escape),
        cmocka_unit_test(test_host_valid),
        cmocka_unit_test(test_url_build),
        cmocka_unit_test(test_query_build),
        cmocka_unit_test(test_error_mapping),
        cmocka_unit_test(test_error_classes),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_token_cache),
        cmocka_unit_test(test_token_cache_real_signer),
        cmocka_unit_test(test_addr_blocked),
        cmocka_unit_test(test_device_json),
        cmocka_unit_test(test_twin_json),
        cmocka_unit_test(test_bulk_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
