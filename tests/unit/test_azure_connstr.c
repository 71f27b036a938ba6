#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iot-manager/connstr.h"

#define KEY_A32 "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=" /* 32 x 'a' */
#define HUB     "myhub.azure-devices.net"
#define SERVICE "HostName=" HUB ";SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_A32
#define PREFIX  "connection string invalid: "

static const char *const default_whitelist[] = {"*.azure-devices.net", "*.iot.*.amazonaws.com"};

/* Stub resolver: records what it was asked and answers from a fixed list. */
struct resolver_stub {
    const char *known[4];
    int calls;
    char last[300];
};

static bool stub_resolve(const char *host, void *ctx)
{
    struct resolver_stub *stub = ctx;
    stub->calls++;
    strncpy(stub->last, host, sizeof stub->last - 1);
    for (size_t i = 0; i < 4 && stub->known[i]; i++)
        if (strcmp(stub->known[i], host) == 0)
            return true;
    return false;
}

static struct connstr_rules rules_with(struct resolver_stub *stub)
{
    struct connstr_rules r = {
        .whitelist = default_whitelist,
        .whitelist_len = 2,
        .resolve = stub_resolve,
        .resolve_ctx = stub,
    };
    return r;
}

static void parse_ok(const char *text, bool allow_masked, struct connstr *cs)
{
    struct iot_error err = {0};
    enum iot_err rc = connstr_parse(text, allow_masked, cs, &err);
    if (rc != IOT_OK)
        fail_msg("parse of '%s' failed: %s", text, err.msg);
}

static void assert_parse_err(const char *text, bool allow_masked, const char *msg)
{
    struct connstr cs;
    struct iot_error err = {0};
    assert_int_equal(connstr_parse(text, allow_masked, &cs, &err), IOT_ERR_INVALID);
    assert_int_equal(err.code, IOT_ERR_INVALID);
    assert_string_equal(err.msg, msg);
    /* a failed parse leaves nothing to free */
    assert_null(cs.hostname);
    assert_null(cs.name);
    assert_null(cs.key);
    assert_null(cs.masked_key);
    assert_false(cs.has_key);
    connstr_clear(&cs);
}

/* Parses `text` (must parse) and validates it; returns the code, message in *err. */
static enum iot_err parse_validate(const char *text, const struct connstr_rules *rules,
                                   struct iot_error *err)
{
    struct connstr cs;
    parse_ok(text, true, &cs);
    enum iot_err rc = connstr_validate(&cs, rules, err);
    connstr_clear(&cs);
    return rc;
}

static void assert_invalid(const char *text, const struct connstr_rules *rules, const char *msg)
{
    struct iot_error err = {0};
    assert_int_equal(parse_validate(text, rules, &err), IOT_ERR_INVALID);
    assert_string_equal(err.msg, msg);
}

/* ---- parsing ---------------------------------------------------------------------------- */

static void test_parse_service(void **state)
{
    (void)state;
    struct connstr cs;
    parse_ok(SERVICE, false, &cs);
    assert_string_equal(cs.hostname, HUB);
    assert_string_equal(cs.name, "iothubowner");
    assert_null(cs.device_id);
    assert_null(cs.module_id);
    assert_null(cs.gateway_hostname);
    assert_true(cs.has_key);
    assert_int_equal(cs.key_len, 32);
    for (size_t i = 0; i < cs.key_len; i++)
        assert_int_equal(cs.key[i], 'a');
    assert_null(cs.masked_key);
    connstr_clear(&cs);
    assert_null(cs.hostname);
    assert_null(cs.key);
    assert_int_equal(cs.key_len, 0);
    connstr_clear(&cs); /* idempotent */
    connstr_clear(NULL);
}

static void test_parse_device_module_signature(void **state)
{
    (void)state;
    struct connstr cs;
    parse_ok("DeviceId=dev-1;ModuleId=mod;HostName=h.azure-devices.net;SharedAccessKey=YQ==;"
             "SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1",
             false, &cs);
    assert_string_equal(cs.device_id, "dev-1");
    assert_string_equal(cs.module_id, "mod");
    assert_string_equal(cs.hostname, "h.azure-devices.net");
    assert_int_equal(cs.key_len, 1);
    assert_int_equal(cs.key[0], 'a');
    /* "=" inside a value: only the first '=' splits */
    assert_string_equal(cs.signature, "SharedAccessSignature sr=x&sig=y&se=1");
    assert_null(cs.name);
    connstr_clear(&cs);
}

static void test_parse_format_errors(void **state)
{
    (void)state;
    assert_parse_err(SERVICE ";", false, "invalid connectionstring format");
    assert_parse_err("", false, "invalid connectionstring format");
    assert_parse_err("HostName", false, "invalid connectionstring format");
    assert_parse_err("HostName=" HUB ";;SharedAccessKey=YQ==", false,
                     "invalid connectionstring format");
    assert_parse_err(";HostName=" HUB, false, "invalid connectionstring format");
    struct connstr cs;
    assert_int_equal(connstr_parse(NULL, false, &cs, NULL), IOT_ERR_INVALID);
    /* NULL err is fine */
    assert_int_equal(connstr_parse("x", false, &cs, NULL), IOT_ERR_INVALID);
}

static void test_parse_unknown_and_case_sensitive_keys(void **state)
{
    (void)state;
    assert_parse_err(SERVICE ";Foo=bar", false, "invalid connection string key: Foo");
    assert_parse_err("hostname=" HUB, false, "invalid connection string key: hostname");
    assert_parse_err("HOSTNAME=" HUB, false, "invalid connection string key: HOSTNAME");
    assert_parse_err("sharedaccesskey=YQ==", false,
                     "invalid connection string key: sharedaccesskey");
    /* Mender's parser does not accept GatewayHostName although String() writes it */
    assert_parse_err("GatewayHostName=gw.azure-devices.net", false,
                     "invalid connection string key: GatewayHostName");
    assert_parse_err("=value", false, "invalid connection string key: ");
    /* the first error wins: parts are handled left to right */
    assert_parse_err("Foo=1;SharedAccessKey=!!!!", false, "invalid connection string key: Foo");
    assert_parse_err("SharedAccessKey=!!!!;Foo=1", false,
                     "shared access key format: illegal base64 data at input byte 0");
}

static void test_parse_bad_base64(void **state)
{
    (void)state;
    assert_parse_err("HostName=" HUB ";SharedAccessKey=YWFh!WFh", false,
                     "shared access key format: illegal base64 data at input byte 4");
    /* padding is required: an incomplete quantum reports its start */
    assert_parse_err("SharedAccessKey=YWFhYWF", false,
                     "shared access key format: illegal base64 data at input byte 4");
    assert_parse_err("SharedAccessKey=YQ", false,
                     "shared access key format: illegal base64 data at input byte 0");
    /* URL alphabet is not the standard one */
    assert_parse_err("SharedAccessKey=YWF-", false,
                     "shared access key format: illegal base64 data at input byte 3");
    assert_parse_err("SharedAccessKey=YQ==YQ==", false,
                     "shared access key format: illegal base64 data at input byte 4");
}

static void test_parse_equals_in_value_and_duplicates(void **state)
{
    (void)state;
    struct connstr cs;
    parse_ok("HostName=a=b;SharedAccessKeyName==x=", false, &cs);
    assert_string_equal(cs.hostname, "a=b");
    assert_string_equal(cs.name, "=x=");
    connstr_clear(&cs);

    parse_ok("HostName=first;SharedAccessKey=YQ==;HostName=second;SharedAccessKey=YWI=", false,
             &cs);
    assert_string_equal(cs.hostname, "second");
    assert_int_equal(cs.key_len, 2);
    assert_memory_equal(cs.key, "ab", 2);
    connstr_clear(&cs);

    /* a later empty value replaces an earlier one too */
    parse_ok("SharedAccessKeyName=a;SharedAccessKeyName=", false, &cs);
    assert_string_equal(cs.name, "");
    connstr_clear(&cs);
}

static void test_parse_empty_key(void **state)
{
    (void)state;
    struct connstr cs;
    parse_ok("HostName=" HUB ";SharedAccessKeyName=n;SharedAccessKey=", false, &cs);
    assert_true(cs.has_key);
    assert_int_equal(cs.key_len, 0);
    connstr_clear(&cs);
}

static void test_parse_short_keys(void **state)
{
    (void)state;
    /* any decoded length is accepted, down to one byte, without reading past it */
    static const struct {
        const char *b64;
        size_t len;
    } cases[] = {{"AA==", 1}, {"AAA=", 2}, {"AAAA", 3}, {"AAAAAA==", 4}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "SharedAccessKey=%s", cases[i].b64);
        struct connstr cs;
        parse_ok(text, false, &cs);
        assert_int_equal(cs.key_len, cases[i].len);
        char *s = connstr_format(&cs);
        assert_string_equal(s, text);
        free(s);
        connstr_clear(&cs);
    }
}

static void test_parse_masked_key(void **state)
{
    (void)state;
    const char *masked = "HostName=" HUB ";SharedAccessKeyName=n;SharedAccessKey=YWFh...<omitted>";
    assert_parse_err(masked, false,
                     "shared access key format: illegal base64 data at input byte 4");

    struct connstr cs;
    parse_ok(masked, true, &cs);
    assert_null(cs.key);
    assert_int_equal(cs.key_len, 0);
    assert_string_equal(cs.masked_key, "YWFh...<omitted>");
    connstr_clear(&cs);

    parse_ok("SharedAccessKey=YQ==...<omitted>", true, &cs);
    assert_string_equal(cs.masked_key, "YQ==...<omitted>");
    connstr_clear(&cs);

    /* a real key after a masked one replaces it, and the other way round */
    parse_ok("SharedAccessKey=YWFh...<omitted>;SharedAccessKey=YQ==", true, &cs);
    assert_null(cs.masked_key);
    assert_int_equal(cs.key_len, 1);
    connstr_clear(&cs);
    parse_ok("SharedAccessKey=YQ==;SharedAccessKey=YWFh...<omitted>", true, &cs);
    assert_null(cs.key);
    assert_non_null(cs.masked_key);
    connstr_clear(&cs);

    /* only our exact masked shape counts; anything else is an ordinary (bad) key */
    assert_parse_err("SharedAccessKey=...<omitted>", true,
                     "shared access key format: illegal base64 data at input byte 0");
    assert_parse_err("SharedAccessKey=!!!!...<omitted>", true,
                     "shared access key format: illegal base64 data at input byte 0");
    assert_parse_err("SharedAccessKey=YWFhYQ==...<omitted>", true,
                     "shared access key format: illegal base64 data at input byte 8");
    assert_parse_err("SharedAccessKey=YWFh...<omitted>x", true,
                     "shared access key format: illegal base64 data at input byte 4");
}

static void test_parse_long_input(void **state)
{
    (void)state;
    size_t n = 20000;
    char *text = malloc(n + 64);
    assert_non_null(text);
    strcpy(text, "DeviceId=");
    memset(text + 9, 'd', n);
    strcpy(text + 9 + n, ";HostName=" HUB);
    struct connstr cs;
    parse_ok(text, false, &cs);
    assert_int_equal(strlen(cs.device_id), n);
    connstr_clear(&cs);
    free(text);
}

/* ---- validation ------------------------------------------------------------------------- */

static void test_validate_ok_and_lookup_host(void **state)
{
    (void)state;
    struct resolver_stub stub = {.known = {HUB}};
    struct connstr_rules rules = rules_with(&stub);
    struct iot_error err = {0};
    assert_int_equal(parse_validate(SERVICE, &rules, &err), IOT_OK);
    assert_int_equal(stub.calls, 1);
    assert_string_equal(stub.last, HUB);

    /* the port is not part of the lookup */
    stub.calls = 0;
    assert_int_equal(
        parse_validate("HostName=" HUB ":8443;SharedAccessKeyName=n;SharedAccessKey=YQ==", &rules,
                       &err),
        IOT_OK);
    assert_int_equal(stub.calls, 1);
    assert_string_equal(stub.last, HUB);

    /* a device connection string is valid for Mender */
    assert_int_equal(
        parse_validate("HostName=" HUB ";DeviceId=d1;SharedAccessKey=" KEY_A32, &rules, &err),
        IOT_OK);

    /* no resolver: no lookup */
    rules.resolve = NULL;
    assert_int_equal(parse_validate("HostName=unknown.azure-devices.net;SharedAccessKeyName=n;"
                                    "SharedAccessKey=YQ==",
                                    &rules, &err),
                     IOT_OK);
}

static void test_validate_zero_struct(void **state)
{
    (void)state;
    struct connstr cs;
    memset(&cs, 0, sizeof cs);
    struct resolver_stub stub = {0};
    struct connstr_rules rules = rules_with(&stub);
    struct iot_error err = {0};
    /* Mender's Validate() skips an all-empty value entirely */
    assert_int_equal(connstr_validate(&cs, &rules, &err), IOT_OK);
    assert_int_equal(connstr_validate(&cs, NULL, &err), IOT_OK);
}

static void test_validate_untrusted_and_unresolvable(void **state)
{
    (void)state;
    struct resolver_stub stub = {.known = {HUB}};
    struct connstr_rules rules = rules_with(&stub);
    assert_invalid("HostName=evil.example.com;SharedAccessKeyName=n;SharedAccessKey=YQ==", &rules,
                   PREFIX "HostName: hostname does not refer to a trusted domain.");
    /* an untrusted name is never looked up */
    assert_int_equal(stub.calls, 0);
    assert_invalid("HostName=a.b.azure-devices.net;SharedAccessKeyName=n;SharedAccessKey=YQ==",
                   &rules, PREFIX "HostName: hostname does not refer to a trusted domain.");
    assert_invalid("HostName=[::1]:443;SharedAccessKeyName=n;SharedAccessKey=YQ==", &rules,
                   PREFIX "HostName: hostname does not refer to a trusted domain.");
    assert_int_equal(stub.calls, 0);

    assert_invalid(
        "HostName=gone.azure-devices.net:443;SharedAccessKeyName=n;SharedAccessKey=YQ==", &rules,
        PREFIX "HostName: failed to lookup host with name 'gone.azure-devices.net'.");
    assert_int_equal(stub.calls, 1);
    assert_string_equal(stub.last, "gone.azure-devices.net");
}

static void test_validate_blank_fields(void **state)
{
    (void)state;
    struct resolver_stub stub = {.known = {HUB}};
    struct connstr_rules rules = rules_with(&stub);
    assert_invalid("HostName=" HUB ";SharedAccessKeyName=n;SharedAccessKey=", &rules,
                   PREFIX "Key: cannot be blank.");
    assert_invalid("HostName=" HUB ";SharedAccessKeyName=n", &rules,
                   PREFIX "Key: cannot be blank.");
    assert_invalid("SharedAccessKey=", &rules,
                   PREFIX "HostName: cannot be blank; Key: cannot be blank.");
    assert_invalid("HostName=;SharedAccessKeyName=n;SharedAccessKey=YQ==", &rules,
                   PREFIX "HostName: cannot be blank.");
    /* field errors come before the one-of rule, sorted by key */
    assert_invalid("HostName=evil.example.com", &rules,
                   PREFIX "HostName: hostname does not refer to a trusted domain; Key: cannot be "
                          "blank.");
}

static void test_validate_gateway(void **state)
{
    (void)state;
    struct resolver_stub stub = {.known = {HUB, "gw.azure-devices.net"}};
    struct connstr_rules rules = rules_with(&stub);
    struct connstr cs;
    parse_ok("HostName=" HUB ";DeviceId=d;SharedAccessKey=", false, &cs);
    cs.gateway_hostname = strdup("gateway.example.com");
    assert_non_null(cs.gateway_hostname);
    struct iot_error err = {0};
    assert_int_equal(connstr_validate(&cs, &rules, &err), IOT_ERR_INVALID);
    assert_string_equal(err.msg, PREFIX "GatewayHostName: hostname does not refer to a trusted "
                                        "domain; Key: cannot be blank.");

    free(cs.gateway_hostname);
    cs.gateway_hostname = strdup("gw.azure-devices.net");
    assert_non_null(cs.gateway_hostname);
    assert_int_equal(connstr_validate(&cs, &rules, &err), IOT_ERR_INVALID);
    assert_string_equal(err.msg, PREFIX "Key: cannot be blank.");
    connstr_clear(&cs);
}

static void test_validate_one_of_and_policy_rule(void **state)
{
    (void)state;
    struct resolver_stub stub = {.known = {HUB}};
    struct connstr_rules rules = rules_with(&stub);
    assert_invalid("HostName=" HUB ";SharedAccessKey=" KEY_A32, &rules,
                   PREFIX "one of 'DeviceId' or 'SharedAccessKeyName' must be set");
    assert_invalid("HostName=" HUB ";ModuleId=m;SharedAccessKey=" KEY_A32, &rules,
                   PREFIX "one of 'DeviceId' or 'SharedAccessKeyName' must be set");

    rules.require_policy_name = true;
    assert_invalid("HostName=" HUB ";DeviceId=d1;SharedAccessKey=" KEY_A32, &rules,
                   PREFIX "SharedAccessKeyName is required: a device connection string cannot "
                          "manage the hub's registry");
    /* the one-of rule still comes first */
    assert_invalid("HostName=" HUB ";SharedAccessKey=" KEY_A32, &rules,
                   PREFIX "one of 'DeviceId' or 'SharedAccessKeyName' must be set");
    struct iot_error err = {0};
    assert_int_equal(parse_validate(SERVICE, &rules, &err), IOT_OK);
    assert_int_equal(parse_validate(SERVICE ";DeviceId=d1", &rules, &err), IOT_OK);
}

/* A valid service string padded with a DeviceId to exactly `total` characters. */
static char *string_of_length(size_t total)
{
    const char *base = SERVICE ";DeviceId=";
    size_t blen = strlen(base);
    char *s = malloc(total + 1);
    assert_non_null(s);
    assert_true(total > blen);
    memcpy(s, base, blen);
    memset(s + blen, 'd', total - blen);
    s[total] = '\0';
    return s;
}

static void test_validate_length(void **state)
{
    (void)state;
    struct resolver_stub stub = {.known = {HUB}};
    struct connstr_rules rules = rules_with(&stub);
    struct iot_error err = {0};
    char *ok = string_of_length(4096);
    char *too_long = string_of_length(4097);
    assert_int_equal(parse_validate(ok, &rules, &err), IOT_OK);
    assert_invalid(too_long, &rules,
                   PREFIX "connection string can be no longer than 4096 characters");
    free(ok);
    free(too_long);

    /* measured on the canonical form: field order does not change the length */
    char *s = string_of_length(4097);
    struct connstr cs;
    parse_ok(s, false, &cs);
    char *f = connstr_format(&cs);
    assert_int_equal(strlen(f), 4097);
    free(f);
    connstr_clear(&cs);
    free(s);
}

static void test_validate_device_length_with_policy_rule(void **state)
{
    (void)state;
    struct resolver_stub stub = {.known = {HUB}};
    struct connstr_rules rules = rules_with(&stub);
    rules.require_policy_name = true;
    /* a too long device string reports the policy rule, which comes first */
    size_t n = 4200;
    char *s = malloc(n + 100);
    assert_non_null(s);
    int off = snprintf(s, n + 100, "HostName=%s;SharedAccessKey=%s;DeviceId=", HUB, KEY_A32);
    memset(s + off, 'd', n - (size_t)off);
    s[n] = '\0';
    assert_invalid(s, &rules,
                   PREFIX "SharedAccessKeyName is required: a device connection string cannot "
                          "manage the hub's registry");
    free(s);
}

static void test_validate_empty_whitelist(void **state)
{
    (void)state;
    struct resolver_stub stub = {.known = {HUB}};
    struct connstr_rules rules = rules_with(&stub);
    rules.whitelist_len = 0;
    struct iot_error err = {0};
    assert_int_equal(parse_validate(SERVICE, &rules, &err), IOT_ERR_CONFIG);
    assert_string_equal(err.msg, PREFIX
                        "HostName: [PROG ERR(hostnameValidator)] no trusted hostnames configured.");
    assert_int_equal(stub.calls, 0);
    assert_int_equal(parse_validate(SERVICE, NULL, &err), IOT_ERR_CONFIG);
    /* a blank HostName is still just blank */
    assert_int_equal(parse_validate("SharedAccessKey=YQ==;SharedAccessKeyName=n", &rules, &err),
                     IOT_ERR_INVALID);
    assert_string_equal(err.msg, PREFIX "HostName: cannot be blank.");
}

static void test_validate_masked_key_counts(void **state)
{
    (void)state;
    struct resolver_stub stub = {.known = {HUB}};
    struct connstr_rules rules = rules_with(&stub);
    struct iot_error err = {0};
    assert_int_equal(parse_validate("HostName=" HUB
                                    ";SharedAccessKeyName=n;SharedAccessKey=YWFh...<omitted>",
                                    &rules, &err),
                     IOT_OK);
}

static void test_validate_real_resolver(void **state)
{
    (void)state;
    /* numeric and /etc/hosts names only: no network needed */
    assert_true(connstr_resolve_getaddrinfo("127.0.0.1", NULL));
    assert_true(connstr_resolve_getaddrinfo("::1", NULL));
    assert_true(connstr_resolve_getaddrinfo("localhost", NULL));
    assert_false(connstr_resolve_getaddrinfo("", NULL));

    static const char *const local[] = {"localhost", "[::1]"};
    struct connstr_rules rules = {
        .whitelist = local, .whitelist_len = 2, .resolve = connstr_resolve_getaddrinfo};
    struct iot_error err = {0};
    assert_int_equal(
        parse_validate("HostName=localhost:8443;SharedAccessKeyName=n;SharedAccessKey=YQ==", &rules,
                       &err),
        IOT_OK);
    assert_int_equal(
        parse_validate("HostName=[::1]:8443;SharedAccessKeyName=n;SharedAccessKey=YQ==", &rules,
                       &err),
        IOT_OK);
}

static void test_validate_ipv6_lookup_name(void **state)
{
    (void)state;
    static const char *const v6[] = {"::1"};
    struct resolver_stub stub = {.known = {"::2"}};
    struct connstr_rules rules = {
        .whitelist = v6, .whitelist_len = 1, .resolve = stub_resolve, .resolve_ctx = &stub};
    assert_invalid("HostName=[::1]:443;SharedAccessKeyName=n;SharedAccessKey=YQ==", &rules,
                   PREFIX "HostName: failed to lookup host with name '::1'.");
    assert_string_equal(stub.last, "::1");
}

/* ---- whitelist -------------------------------------------------------------------------- */

static bool trusted(const char *host)
{
    return connstr_host_trusted(host, default_whitelist, 2);
}

static void test_whitelist_labels(void **state)
{
    (void)state;
    assert_true(trusted(HUB));
    assert_true(trusted("x.iot.eu-west-1.amazonaws.com"));
    /* exactly one leading label for "*" */
    assert_false(trusted("a.b.azure-devices.net"));
    assert_false(trusted("azure-devices.net"));
    assert_false(trusted(".azure-devices.net"));
    assert_false(trusted("myhub.azure-devices.net.evil.com"));
    assert_false(trusted("myhubazure-devices.net"));
    assert_false(trusted("myhub.azure-devices.com"));
    assert_false(trusted("x.iot.amazonaws.com"));
    assert_false(trusted(""));
    assert_false(trusted(NULL));
    /* '*' is a whole label, not a glob */
    static const char *const partial[] = {"hub*.azure-devices.net"};
    assert_false(connstr_host_trusted("hub1.azure-devices.net", partial, 1));
    /* and a host cannot contain one to match it literally */
    assert_false(connstr_host_trusted("hub*.azure-devices.net", partial, 1));
    assert_false(trusted("*.azure-devices.net"));
}

static void test_whitelist_port_case_dot(void **state)
{
    (void)state;
    assert_true(trusted(HUB ":443"));
    assert_true(trusted(HUB ":65535"));
    assert_true(trusted("MyHub.Azure-Devices.NET"));
    assert_true(trusted(HUB "."));
    assert_true(trusted(HUB ".:8443"));
    assert_false(trusted(HUB ".."));
    static const char *const upper[] = {"*.AZURE-devices.net."};
    assert_true(connstr_host_trusted(HUB, upper, 1));
    static const char *const local[] = {"localhost"};
    assert_true(connstr_host_trusted("localhost:8443", local, 1));
    assert_false(connstr_host_trusted("localhost.localdomain", local, 1));
    assert_false(connstr_host_trusted(HUB, local, 0));
    assert_false(connstr_host_trusted(HUB, NULL, 2));
}

static void test_whitelist_rejects_confusing_hosts(void **state)
{
    (void)state;
    /* each would make an HTTP client connect somewhere other than the name we matched */
    assert_false(trusted(HUB ":443@evil.example"));
    assert_false(trusted(HUB ":abc"));
    assert_false(trusted(HUB ":"));
    assert_false(trusted(HUB ":65536"));
    assert_false(trusted(HUB ":123456"));
    assert_false(trusted(":443"));
    assert_false(trusted("evil#.azure-devices.net"));
    assert_false(trusted("evil/x.azure-devices.net"));
    assert_false(trusted("evil@x.azure-devices.net"));
    assert_false(trusted("my hub.azure-devices.net"));
    assert_false(trusted("a..azure-devices.net"));
    /* labels are limited to 63 characters */
    char label[100];
    memset(label, 'a', 64);
    strcpy(label + 64, ".azure-devices.net");
    assert_false(trusted(label));
    memmove(label, label + 1, strlen(label + 1) + 1);
    assert_true(trusted(label));
}

static void test_whitelist_ipv6(void **state)
{
    (void)state;
    assert_false(trusted("[::1]:443"));
    assert_false(trusted("[::1]"));
    assert_false(trusted("[::1"));
    assert_false(trusted("[]"));
    static const char *const v6[] = {"*", "[::1]", "fe80::1"};
    assert_true(connstr_host_trusted("[::1]:443", v6, 3));
    assert_true(connstr_host_trusted("[::1]", v6, 3));
    assert_true(connstr_host_trusted("[FE80::1]:8443", v6, 3));
    assert_false(connstr_host_trusted("[::2]", v6, 3));
    assert_false(connstr_host_trusted("[::1]x", v6, 3));
    assert_false(connstr_host_trusted("[::1]:", v6, 3));
    assert_false(connstr_host_trusted("[::1]:99999", v6, 3));
    assert_false(connstr_host_trusted("[::g]", v6, 3));
    /* "*" matches single-label names, never an address literal */
    assert_true(connstr_host_trusted("localhost", v6, 3));
    static const char *const star[] = {"*"};
    assert_false(connstr_host_trusted("[::2]", star, 1));
}

/* ---- formatting and masking ------------------------------------------------------------- */

static void assert_round_trip(const char *text, const char *expected)
{
    struct connstr cs;
    parse_ok(text, false, &cs);
    char *s = connstr_format(&cs);
    assert_non_null(s);
    assert_string_equal(s, expected);
    free(s);
    connstr_clear(&cs);
}

static void test_format(void **state)
{
    (void)state;
    assert_round_trip(SERVICE, SERVICE);
    assert_round_trip("SharedAccessSignature=sig;SharedAccessKey=YQ==;ModuleId=m;DeviceId=d;"
                      "SharedAccessKeyName=n;HostName=h",
                      "HostName=h;SharedAccessKeyName=n;DeviceId=d;ModuleId=m;SharedAccessKey=YQ==;"
                      "SharedAccessSignature=sig");
    /* empty values and an empty key are skipped */
    assert_round_trip("HostName=h;DeviceId=;SharedAccessKey=", "HostName=h");
    assert_round_trip("SharedAccessKey=AAAA", "SharedAccessKey=AAAA");

    struct connstr cs;
    parse_ok("HostName=h:8443;SharedAccessKey=YWI=", false, &cs);
    cs.gateway_hostname = strdup("gw");
    assert_non_null(cs.gateway_hostname);
    char *s = connstr_format(&cs);
    assert_string_equal(s, "HostName=h:8443;GatewayHostName=gw;SharedAccessKey=YWI=");
    free(s);
    connstr_clear(&cs);

    /* §3.6: device connection string composed from a hub and a raw key */
    memset(&cs, 0, sizeof cs);
    cs.hostname = strdup(HUB);
    cs.device_id = strdup("7b478313-de33-4735-bf00-0ebc31851faf");
    cs.key = malloc(32);
    assert_non_null(cs.key);
    memset(cs.key, 'a', 32);
    cs.key_len = 32;
    cs.has_key = true;
    s = connstr_format(&cs);
    assert_string_equal(s,
                        "HostName=" HUB
                        ";DeviceId=7b478313-de33-4735-bf00-0ebc31851faf;SharedAccessKey=" KEY_A32);
    free(s);
    s = connstr_format_masked(&cs);
    assert_string_equal(s, "HostName=" HUB ";DeviceId=7b478313-de33-4735-bf00-0ebc31851faf;"
                           "SharedAccessKey=YWFh...<omitted>");
    free(s);
    connstr_clear(&cs);

    memset(&cs, 0, sizeof cs);
    s = connstr_format(&cs);
    assert_string_equal(s, "");
    free(s);
    assert_null(connstr_format(NULL));
}

static void test_format_masked(void **state)
{
    (void)state;
    struct connstr cs;
    parse_ok(
        "HostName=mender-test-hub.azure-devices.net;SharedAccessKeyName=n;SharedAccessKey=" KEY_A32,
        false, &cs);
    char *s = connstr_format_masked(&cs);
    assert_string_equal(
        s,
        "HostName=mender-test-hub.azure-devices.net;SharedAccessKeyName=n;SharedAccessKey=YWFh..."
        "<omitted>");
    connstr_clear(&cs);

    /* the masked output parses back (allow_masked) and re-masks to itself */
    parse_ok(s, true, &cs);
    char *again = connstr_format_masked(&cs);
    assert_string_equal(again, s);
    free(again);
    /* connstr_format has no key to show but the masked text */
    again = connstr_format(&cs);
    assert_string_equal(again, s);
    free(again);
    connstr_clear(&cs);
    free(s);

    parse_ok("HostName=h;SharedAccessKey=YQ==", false, &cs);
    s = connstr_format_masked(&cs);
    assert_string_equal(s, "HostName=h;SharedAccessKey=YQ==...<omitted>");
    free(s);
    connstr_clear(&cs);

    parse_ok("HostName=h;SharedAccessKey=", false, &cs);
    s = connstr_format_masked(&cs);
    assert_string_equal(s, "HostName=h");
    free(s);
    connstr_clear(&cs);
}

static void test_mask_key(void **state)
{
    (void)state;
    char out[32];
    uint8_t a32[32];
    memset(a32, 'a', sizeof a32);
    connstr_mask_key(a32, sizeof a32, out, sizeof out);
    assert_string_equal(out, "YWFh...<omitted>");
    connstr_mask_key((const uint8_t *)"ab", 2, out, sizeof out);
    assert_string_equal(out, "YWI=...<omitted>");
    connstr_mask_key((const uint8_t *)"a", 1, out, sizeof out);
    assert_string_equal(out, "YQ==...<omitted>");
    connstr_mask_key(NULL, 0, out, sizeof out);
    assert_string_equal(out, "...<omitted>");
    static const uint8_t bin[4] = {0xfb, 0xff, 0xbf, 0x00};
    connstr_mask_key(bin, sizeof bin, out, sizeof out);
    assert_string_equal(out, "+/+/...<omitted>");
    /* bounded: a small buffer truncates instead of overflowing */
    char small[6];
    connstr_mask_key(a32, sizeof a32, small, sizeof small);
    assert_string_equal(small, "YWFh.");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_service),
        cmocka_unit_test(test_parse_device_module_signature),
        cmocka_unit_test(test_parse_format_errors),
        cmocka_unit_test(test_parse_unknown_and_case_sensitive_keys),
        cmocka_unit_test(test_parse_bad_base64),
        cmocka_unit_test(test_parse_equals_in_value_and_duplicates),
        cmocka_unit_test(test_parse_empty_key),
        cmocka_unit_test(test_parse_short_keys),
        cmocka_unit_test(test_parse_masked_key),
        cmocka_unit_test(test_parse_long_input),
        cmocka_unit_test(test_validate_ok_and_lookup_host),
        cmocka_unit_test(test_validate_zero_struct),
        cmocka_unit_test(test_validate_untrusted_and_unresolvable),
        cmocka_unit_test(test_validate_blank_fields),
        cmocka_unit_test(test_validate_gateway),
        cmocka_unit_test(test_validate_one_of_and_policy_rule),
        cmocka_unit_test(test_validate_length),
        cmocka_unit_test(test_validate_device_length_with_policy_rule),
        cmocka_unit_test(test_validate_empty_whitelist),
        cmocka_unit_test(test_validate_masked_key_counts),
        cmocka_unit_test(test_validate_real_resolver),
        cmocka_unit_test(test_validate_ipv6_lookup_name),
        cmocka_unit_test(test_whitelist_labels),
        cmocka_unit_test(test_whitelist_port_case_dot),
        cmocka_unit_test(test_whitelist_rejects_confusing_hosts),
        cmocka_unit_test(test_whitelist_ipv6),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_masked),
        cmocka_unit_test(test_mask_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
