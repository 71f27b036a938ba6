/* Fuzzes connection strings (the `connection_string` of POST /integrations and PUT
 * .../credentials): connstr_parse() with and without masked keys, then connstr_validate() against a
 * whitelist with a stub resolver (no DNS). The input is the connection string text.
 *
 * Invariants: a failed parse leaves nothing behind and never echoes a key; a string that parses
 * and validates formats back to text that re-parses to the same fields and validates again; the
 * masked form re-parses to the same fields with the mask instead of the key and does not contain
 * the key; the resolver is only ever asked about plain host names; accepting masked keys and
 * dropping the policy-name rule only ever accept more. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "iot-manager/b64.h"
#include "iot-manager/connstr.h"

static const char *const whitelist[] = {"*.azure-devices.net", "localhost", "[::1]",
                                        "hub.*.example.com"};

/* Knows every name except those starting with "nx-". It also checks what validation hands a
 * resolver: a name an HTTP client would connect to, never one with a port, path or userinfo. */
static bool stub_resolve(const char *host, void *ctx)
{
    (void)ctx;
    FUZZ_CHECK(host != NULL);
    size_t n = strlen(host);
    FUZZ_CHECK(n > 0 && n <= 254);
    FUZZ_CHECK(strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:") ==
               n);
    return strncmp(host, "nx-", 3) != 0;
}

static void check_same_fields(const struct connstr *a, const struct connstr *b)
{
    FUZZ_CHECK(fuzz_streq_opt(a->hostname, b->hostname));
    FUZZ_CHECK(fuzz_streq_opt(a->gateway_hostname, b->gateway_hostname));
    FUZZ_CHECK(fuzz_streq_opt(a->name, b->name));
    FUZZ_CHECK(fuzz_streq_opt(a->device_id, b->device_id));
    FUZZ_CHECK(fuzz_streq_opt(a->module_id, b->module_id));
    FUZZ_CHECK(fuzz_streq_opt(a->signature, b->signature));
}

/* The base64 text of every SharedAccessKey value in `text` that decodes to a real key: none of
 * them may show up in an error message. Only values that occur once in the input and look like
 * key material (16+ characters with a digit, '+' or '/') are checked, so that a message quoting
 * another field, or a fixed text such as "connectionstring", cannot be mistaken for a leak. */
static void check_no_key_in(const char *text, const char *msg)
{
    static const char tag[] = "SharedAccessKey=";
    for (const char *p = strstr(text, tag); p; p = strstr(p + 1, tag)) {
        if (p != text && p[-1] != ';')
            continue;
        const char *v = p + strlen(tag);
        size_t vlen = strcspn(v, ";");
        if (vlen < 16 || strcspn(v, "0123456789+/") >= vlen)
            continue;
        char *val = strndup(v, vlen);
        FUZZ_CHECK(val != NULL);
        if (fuzz_count(text, val) == 1)
            FUZZ_CHECK(strstr(msg, val) == NULL);
        free(val);
    }
}

static void check_masked(const struct connstr *cs, bool require_policy)
{
    char *masked = connstr_format_masked(cs);
    FUZZ_CHECK(masked != NULL);
    struct connstr back;
    struct iot_error err = {0};
    FUZZ_CHECK(connstr_parse(masked, true, &back, &err) == IOT_OK);
    check_same_fields(cs, &back);
    FUZZ_CHECK(!back.has_key && back.key == NULL);
    if (cs->key_len > 0) {
        char expect[32];
        connstr_mask_key(cs->key, cs->key_len, expect, sizeof expect);
        FUZZ_CHECK(back.masked_key && strcmp(back.masked_key, expect) == 0);
        /* A key of 3 bytes or less is all in its mask, by design; a longer one must not be. */
        if (cs->key_len > 3) {
            char *full = malloc(B64_ENCODED_LEN(cs->key_len) + 1);
            FUZZ_CHECK(full != NULL);
            b64_encode(cs->key, cs->key_len, full, B64_ENCODED_LEN(cs->key_len) + 1, false);
            char *plain = connstr_format(cs);
            FUZZ_CHECK(plain != NULL);
            /* other fields may hold the same text; only the key's own copy must be gone */
            FUZZ_CHECK(fuzz_count(masked, full) + 1 == fuzz_count(plain, full));
            free(plain);
            free(full);
        }
    } else {
        FUZZ_CHECK(fuzz_streq_opt(back.masked_key, cs->masked_key));
    }
    /* The masked form is what a client sends back unchanged: it must still be accepted, unless
     * the mask (16 characters) is longer than a short key was and pushes it over the limit. */
    struct connstr_rules rules = {whitelist, sizeof whitelist / sizeof whitelist[0], stub_resolve,
                                  NULL, require_policy};
    if (strlen(masked) <= CONNSTR_MAX_LEN)
        FUZZ_CHECK(connstr_validate(&back, &rules, &err) == IOT_OK);
    connstr_clear(&back);
    free(masked);
}

static void check_valid(const struct connstr *cs, bool allow_masked, bool require_policy)
{
    FUZZ_CHECK(cs->hostname && *cs->hostname);
    FUZZ_CHECK(
        connstr_host_trusted(cs->hostname, whitelist, sizeof whitelist / sizeof whitelist[0]));
    FUZZ_CHECK(cs->key_len > 0 || cs->masked_key);
    FUZZ_CHECK((cs->name && *cs->name) || (cs->device_id && *cs->device_id));
    if (require_policy)
        FUZZ_CHECK(cs->name && *cs->name);

    char *text = connstr_format(cs);
    FUZZ_CHECK(text != NULL);
    FUZZ_CHECK(strlen(text) <= CONNSTR_MAX_LEN);
    struct connstr back;
    struct iot_error err = {0};
    FUZZ_CHECK(connstr_parse(text, allow_masked, &back, &err) == IOT_OK);
    check_same_fields(cs, &back);
    FUZZ_CHECK(back.key_len == cs->key_len);
    FUZZ_CHECK(cs->key_len == 0 || memcmp(back.key, cs->key, cs->key_len) == 0);
    FUZZ_CHECK(fuzz_streq_opt(back.masked_key, cs->masked_key));
    struct connstr_rules rules = {whitelist, sizeof whitelist / sizeof whitelist[0], stub_resolve,
                                  NULL, require_policy};
    FUZZ_CHECK(connstr_validate(&back, &rules, &err) == IOT_OK);
    /* formatting is a fixed point after one round */
    char *again = connstr_format(&back);
    FUZZ_CHECK(again && strcmp(again, text) == 0);
    free(again);
    connstr_clear(&back);
    free(text);
    check_masked(cs, require_policy);
}

static bool blank(const char *s)
{
    return !s || !*s;
}

static bool is_zero(const struct connstr *cs)
{
    static const struct connstr zero;
    return memcmp(cs, &zero, sizeof zero) == 0;
}

static enum iot_err validate(const struct connstr *cs, bool require_policy, struct iot_error *err)
{
    struct connstr_rules rules = {whitelist, sizeof whitelist / sizeof whitelist[0], stub_resolve,
                                  NULL, require_policy};
    memset(err, 0, sizeof *err);
    enum iot_err rc = connstr_validate(cs, &rules, err);
    if (rc != IOT_OK) {
        FUZZ_CHECK(rc == IOT_ERR_INVALID && err->code == rc);
        FUZZ_CHECK(strncmp(err->msg, "connection string invalid: ", 27) == 0);
    }
    return rc;
}

static bool run(const char *text, bool allow_masked)
{
    struct connstr cs;
    struct iot_error err = {0};
    enum iot_err rc = connstr_parse(text, allow_masked, &cs, &err);
    if (rc != IOT_OK) {
        FUZZ_CHECK(rc == IOT_ERR_INVALID && err.code == rc && err.msg[0]);
        FUZZ_CHECK(is_zero(&cs));
        check_no_key_in(text, err.msg);
        return false;
    }
    FUZZ_CHECK(cs.key_len == 0 ? cs.key == NULL : cs.key != NULL);
    FUZZ_CHECK(cs.key_len == 0 || cs.has_key);
    FUZZ_CHECK(!(cs.masked_key && cs.has_key));
    FUZZ_CHECK(allow_masked || !cs.masked_key);

    enum iot_err strict = validate(&cs, true, &err);
    if (strict != IOT_OK)
        check_no_key_in(text, err.msg);
    enum iot_err lax = validate(&cs, false, &err);
    if (lax != IOT_OK)
        check_no_key_in(text, err.msg);
    FUZZ_CHECK(strict != IOT_OK || lax == IOT_OK);
    /* a value whose fields are all empty ("HostName=") is valid to Mender's Validate(), and has
     * nothing to round-trip */
    bool empty = blank(cs.hostname) && blank(cs.gateway_hostname) && blank(cs.name) &&
                 blank(cs.device_id) && blank(cs.module_id) && blank(cs.signature) && !cs.has_key &&
                 !cs.masked_key;
    if (!empty) {
        if (strict == IOT_OK)
            check_valid(&cs, allow_masked, true);
        if (lax == IOT_OK)
            check_valid(&cs, allow_masked, false);
    }
    connstr_clear(&cs);
    FUZZ_CHECK(is_zero(&cs));
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2 * CONNSTR_MAX_LEN)
        return 0;
    char *text = fuzz_cstr(data, size);
    bool strict_ok = run(text, false);
    bool masked_ok = run(text, true);
    FUZZ_CHECK(!strict_ok || masked_ok);
    free(text);
    return 0;
}
