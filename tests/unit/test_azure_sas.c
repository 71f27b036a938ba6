#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "iot-manager/b64.h"
#include "iot-manager/connstr.h"
#include "iot-manager/sas.h"

#define HUB "myhub.azure-devices.net"
/* bytes 0x00..0x1f (azure-iothub.md §1.4 b-d) */
#define KEY_SEQ "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

static size_t decode_key(const char *b64, uint8_t *out, size_t cap)
{
    long n = b64_decode_std(b64, strlen(b64), out, cap, NULL);
    assert_true(n > 0);
    return (size_t)n;
}

static void assert_token(const char *resource, const char *key_b64, const char *policy,
                         int64_t expiry, const char *expected)
{
    uint8_t key[64];
    size_t klen = decode_key(key_b64, key, sizeof key);
    char out[SAS_TOKEN_MAX];
    assert_int_equal(sas_token_build(resource, key, klen, policy, expiry, out, sizeof out), IOT_OK);
    assert_string_equal(out, expected);
}

/* The value of `name` in a token's query part, into `out`. */
static void token_field(const char *token, const char *name, char *out, size_t cap)
{
    const char *q = strchr(token, ' ');
    assert_non_null(q);
    q++;
    size_t nlen = strlen(name);
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t plen = amp ? (size_t)(amp - q) : strlen(q);
        if (plen > nlen && strncmp(q, name, nlen) == 0 && q[nlen] == '=') {
            size_t vlen = plen - nlen - 1;
            assert_true(vlen < cap);
            memcpy(out, q + nlen + 1, vlen);
            out[vlen] = '\0';
            return;
        }
        q = amp ? amp + 1 : NULL;
    }
    fail_msg("no %s in %s", name, token);
}

/* Percent-decoding as the hub does for sig (either hex case). */
static void url_decode(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; in[i]; i++) {
        assert_true(o + 1 < cap);
        if (in[i] == '%') {
            unsigned v;
            assert_int_equal(sscanf(in + i + 1, "%2x", &v), 1);
            out[o++] = (char)v;
            i += 2;
        } else {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
}

/* What the hub does: HMAC over "<sr as sent>\n<se>" with the key, compared with decoded sig. */
static bool hub_accepts(const char *token, const uint8_t *key, size_t klen)
{
    char sr[SAS_TOKEN_MAX], se[32], sig_enc[256], sig[256], to_sign[SAS_TOKEN_MAX + 40];
    token_field(token, "sr", sr, sizeof sr);
    token_field(token, "se", se, sizeof se);
    token_field(token, "sig", sig_enc, sizeof sig_enc);
    url_decode(sig_enc, sig, sizeof sig);
    snprintf(to_sign, sizeof to_sign, "%s\n%s", sr, se);
    unsigned char mac[32];
    unsigned int mlen = 0;
    assert_non_null(HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)to_sign,
                         strlen(to_sign), mac, &mlen));
    char expect[64];
    assert_true(b64_encode(mac, mlen, expect, sizeof expect, false) > 0);
    return strcmp(expect, sig) == 0;
}

/* ---- vectors ---------------------------------------------------------------------------- */

static void test_contract_vector(void **state)
{
    (void)state;
    /* iot-manager-contract.md §3.2 (Mender's connection_string_test.go) */
    assert_token("mender-test-hub.azure-devices.net",
                 "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=", NULL, 1391537100,
                 "SharedAccessSignature sr=mender-test-hub.azure-devices.net&sig=PJYYfRCuL4bo5%"
                 "2BCc%2Flj1L%2F4AShbEuisEcwGiK90fqYk%3D&se=1391537100");
}

static void test_cstack_device_vector(void **state)
{
    (void)state;
    /* c-stack.md §10.2, cross-checked against Python quote(safe="") */
    assert_token(HUB "/devices/dev1", "q83vEjRWeJq8/+7/AAECAwQFBgcICQoLDA0ODxAREhM=", NULL,
                 1767225600,
                 "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1&sig=DWqo%"
                 "2FdyAJNB5YGouRGVJbReb2ZErP0Fke2%2FXQvhakB0%3D&se=1767225600");
}

static void test_node_sdk_vector(void **state)
{
    (void)state;
    /* azure-iothub.md §1.4 (a): Node writes "...&skn=name&se=12345"; field order does not matter
     * to the hub, ours is sr, sig, se, skn */
    assert_token("uri", "cGFzc3dvcmQ=", "name", 12345,
                 "SharedAccessSignature sr=uri&sig=kcWxXAK2OAaAoq2oCkaGzX2NMqDB8nCyNuq2fPYCDhk%3D&"
                 "se=12345&skn=name");
}

static void test_service_vectors(void **state)
{
    (void)state;
    /* §1.4 (b) */
    assert_token(HUB, KEY_SEQ, "iothubowner", 1700000000,
                 "SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%"
                 "2FAx4zTmy44X2G1VY%3D&se=1700000000&skn=iothubowner");
    /* §1.4 (c): we emit Node's (upper-hex, everything escaped) form */
    const char *ours = "SharedAccessSignature sr=myhub.azure-devices.net&sig=ZqCXffv78J2V%2B9nT%"
                       "2FgqwU73DIWE5k%2BYZPhFFXyxaIFY%3D&se=1700000003&skn=iothubowner";
    assert_token(HUB, KEY_SEQ, "iothubowner", 1700000003, ours);

    /* ...and the other SDKs' encodings of the same sig decode to the same signature */
    char sig[128], a[128], b[128];
    token_field(ours, "sig", sig, sizeof sig);
    url_decode(sig, a, sizeof a);
    assert_string_equal(a, "ZqCXffv78J2V+9nT/gqwU73DIWE5k+YZPhFFXyxaIFY=");
    url_decode("ZqCXffv78J2V%2B9nT/gqwU73DIWE5k%2BYZPhFFXyxaIFY%3D", b, sizeof b); /* Python */
    assert_string_equal(a, b);
    url_decode("ZqCXffv78J2V%2b9nT%2fgqwU73DIWE5k%2bYZPhFFXyxaIFY%3d", b, sizeof b); /* C SDK */
    assert_string_equal(a, b);

    uint8_t key[32];
    size_t klen = decode_key(KEY_SEQ, key, sizeof key);
    assert_true(hub_accepts(ours, key, klen));
}

static void test_device_scoped_vector(void **state)
{
    (void)state;
    /* §1.4 (d): our encoder writes "%2F", so the "%2F" signature is ours; the "%2f" one
     * (C SDK) signs a different string and must not be what we produce */
    const char *expected = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdevice1&"
                           "sig=gFSfLGMXDOvf906%2FiaX3KwzLLNFHgaFZyCbsGjxtd1Y%3D&se=1700000000";
    assert_token(HUB "/devices/device1", KEY_SEQ, NULL, 1700000000, expected);
    char sig[128], plain[128];
    token_field(expected, "sig", sig, sizeof sig);
    url_decode(sig, plain, sizeof plain);
    assert_string_not_equal(plain, "iIyvul1z7xsjQDMXvGvUxZi+lqnXkFn5lOgyNrICYDM=");

    /* the hub signs sr exactly as sent: our token verifies, a re-cased sr does not */
    uint8_t key[32];
    size_t klen = decode_key(KEY_SEQ, key, sizeof key);
    assert_true(hub_accepts(expected, key, klen));
    char tampered[SAS_TOKEN_MAX];
    snprintf(tampered, sizeof tampered, "%s", expected);
    char *p = strstr(tampered, "%2Fdevices");
    assert_non_null(p);
    p[2] = 'f';
    assert_false(hub_accepts(tampered, key, klen));
}

static void test_special_characters_signed_as_sent(void **state)
{
    (void)state;
    /* every character a device id may hold; expected value from Python quote(safe="") */
    assert_token("hub/devices/s!(*)'#?,:=@$+%_-.1 ~", KEY_SEQ, NULL, 1700000000,
                 "SharedAccessSignature sr=hub%2Fdevices%2Fs%21%28%2A%29%27%23%3F%2C%3A%3D%40%24%"
                 "2B%25_-.1%20~&sig=A%2B%2FbgiEkDrn0m%2BycXGzln5FSdJPFnvJ1YcYZKKZCeZE%3D&se="
                 "1700000000");
}

static void test_policy_name_encoded(void **state)
{
    (void)state;
    /* the signature does not cover skn; a stray '&' or '=' cannot add token fields */
    assert_token(HUB, KEY_SEQ, "svc@x&y=z", 1700000000,
                 "SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%"
                 "2FAx4zTmy44X2G1VY%3D&se=1700000000&skn=svc%40x%26y%3Dz");
}

/* ---- errors ----------------------------------------------------------------------------- */

static void test_build_errors(void **state)
{
    (void)state;
    uint8_t key[32];
    size_t klen = decode_key(KEY_SEQ, key, sizeof key);
    char out[SAS_TOKEN_MAX];
    assert_int_equal(sas_token_build(HUB, key, 0, NULL, 1, out, sizeof out), IOT_ERR_INVALID);
    assert_int_equal(sas_token_build(HUB, NULL, 32, NULL, 1, out, sizeof out), IOT_ERR_INVALID);
    assert_int_equal(sas_token_build(NULL, key, klen, NULL, 1, out, sizeof out), IOT_ERR_INVALID);
    assert_int_equal(sas_token_build(HUB, key, klen, NULL, -1, out, sizeof out), IOT_ERR_INVALID);

    /* exactly fitting vs one byte short */
    const char *expected = "SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jN"
                           "XO6QeQkSL%2FAx4zTmy44X2G1VY%3D&se=1700000000&skn=iothubowner";
    size_t need = strlen(expected) + 1;
    char *exact = malloc(need);
    assert_non_null(exact);
    assert_int_equal(sas_token_build(HUB, key, klen, "iothubowner", 1700000000, exact, need),
                     IOT_OK);
    assert_string_equal(exact, expected);
    assert_int_equal(sas_token_build(HUB, key, klen, "iothubowner", 1700000000, exact, need - 1),
                     IOT_ERR_INVALID);
    assert_string_equal(exact, ""); /* no half token left behind */
    free(exact);

    /* a resource whose encoding does not fit */
    char big[400];
    memset(big, '/', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(sas_token_build(big, key, klen, NULL, 1, out, sizeof out), IOT_ERR_INVALID);
}

/* ---- sas_url_encode --------------------------------------------------------------------- */

static void test_url_encode(void **state)
{
    (void)state;
    char out[128];
    assert_int_equal(sas_url_encode("AZaz09-._~", out, sizeof out), 10);
    assert_string_equal(out, "AZaz09-._~");
    assert_int_equal(sas_url_encode("a b/c+d=e:f", out, sizeof out), 21);
    assert_string_equal(out, "a%20b%2Fc%2Bd%3De%3Af");
    assert_int_equal(sas_url_encode("!*'()", out, sizeof out), 15);
    assert_string_equal(out, "%21%2A%27%28%29");
    assert_int_equal(sas_url_encode("\xc3\xa9\x7f\x01", out, sizeof out), 12);
    assert_string_equal(out, "%C3%A9%7F%01");
    assert_int_equal(sas_url_encode("", out, sizeof out), 0);
    assert_string_equal(out, "");

    char small[4];
    assert_int_equal(sas_url_encode("abc", small, sizeof small), 3);
    assert_int_equal(sas_url_encode("abcd", small, sizeof small), -1);
    assert_int_equal(sas_url_encode("/", small, sizeof small), 3);
    assert_string_equal(small, "%2F");
    assert_int_equal(sas_url_encode("a/", small, sizeof small), -1);
    assert_int_equal(sas_url_encode("a", small, 0), -1);
    assert_int_equal(sas_url_encode(NULL, small, sizeof small), -1);
}

/* ---- sas_token_for_connstr -------------------------------------------------------------- */

static void connstr_token(const char *text, int64_t expiry, const char *expected)
{
    struct connstr cs;
    struct iot_error err = {0};
    assert_int_equal(connstr_parse(text, true, &cs, &err), IOT_OK);
    char out[SAS_TOKEN_MAX];
    enum iot_err rc = sas_token_for_connstr(&cs, expiry, out, sizeof out, &err);
    if (rc != IOT_OK)
        fail_msg("%s", err.msg);
    assert_string_equal(out, expected);
    connstr_clear(&cs);
}

static void connstr_token_err(const char *text, const char *msg)
{
    struct connstr cs;
    struct iot_error err = {0};
    assert_int_equal(connstr_parse(text, true, &cs, &err), IOT_OK);
    char out[SAS_TOKEN_MAX] = "x";
    assert_int_equal(sas_token_for_connstr(&cs, 1700000000, out, sizeof out, &err),
                     IOT_ERR_INVALID);
    assert_string_equal(err.msg, msg);
    assert_string_equal(out, "");
    connstr_clear(&cs);
}

static void test_for_connstr(void **state)
{
    (void)state;
    connstr_token(
        "HostName=" HUB ";SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_SEQ, 1700000000,
        "SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%"
        "2FAx4zTmy44X2G1VY%3D&se=1700000000&skn=iothubowner");
    /* HostName as written, port included (Mender's QueryEscape gives the same "%3A") */
    connstr_token(
        "HostName=" HUB ":8443;SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_SEQ,
        1700000000,
        "SharedAccessSignature sr=myhub.azure-devices.net%3A8443&sig=1ZP9tjPoMPWaOHQ%2BQp%"
        "2Fyzo%2B1GNcoPf7VtVDwrKaP1Zc%3D&se=1700000000&skn=iothubowner");
    /* a policy wins over a DeviceId */
    connstr_token(
        "HostName=" HUB ";DeviceId=device1;SharedAccessKeyName=iothubowner;"
        "SharedAccessKey=" KEY_SEQ,
        1700000000,
        "SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%"
        "2FAx4zTmy44X2G1VY%3D&se=1700000000&skn=iothubowner");
    /* device: "<host>/devices/<id>", no skn (§1.4 d) */
    connstr_token("HostName=" HUB ";DeviceId=device1;SharedAccessKey=" KEY_SEQ, 1700000000,
                  "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdevice1&"
                  "sig=gFSfLGMXDOvf906%2FiaX3KwzLLNFHgaFZyCbsGjxtd1Y%3D&se=1700000000");
    connstr_token("HostName=" HUB ";DeviceId=dev1;ModuleId=mod1;SharedAccessKey=" KEY_SEQ,
                  1700000000,
                  "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%"
                  "2Fmod1&sig=kA6xjFLkZvk4Cdh0nD8uWAzassq6PB47f7BepMMtmlY%3D&se=1700000000");
}

static void test_for_connstr_errors(void **state)
{
    (void)state;
    connstr_token_err("SharedAccessKeyName=n;SharedAccessKey=" KEY_SEQ,
                      "connection string has no HostName");
    connstr_token_err("HostName=" HUB ";SharedAccessKeyName=n",
                      "connection string has no SharedAccessKey");
    connstr_token_err("HostName=" HUB ";SharedAccessKeyName=n;SharedAccessKey=",
                      "connection string has no SharedAccessKey");
    connstr_token_err("HostName=" HUB ";SharedAccessKeyName=n;SharedAccessKey=AAEC...<omitted>",
                      "connection string key is masked");
    connstr_token_err("HostName=" HUB ";ModuleId=m;SharedAccessKey=" KEY_SEQ,
                      "one of 'DeviceId' or 'SharedAccessKeyName' must be set");

    /* a device id too long for a token */
    char text[1200];
    int off = snprintf(text, sizeof text, "HostName=%s;SharedAccessKey=%s;DeviceId=", HUB, KEY_SEQ);
    memset(text + off, '*', sizeof text - (size_t)off - 1);
    text[sizeof text - 1] = '\0';
    struct connstr cs;
    struct iot_error err = {0};
    assert_int_equal(connstr_parse(text, false, &cs, &err), IOT_OK);
    char out[SAS_TOKEN_MAX];
    assert_int_equal(sas_token_for_connstr(&cs, 1, out, sizeof out, &err), IOT_ERR_INVALID);
    assert_null(strstr(err.msg, KEY_SEQ));
    connstr_clear(&cs);

    assert_int_equal(sas_token_for_connstr(NULL, 1, out, sizeof out, NULL), IOT_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contract_vector),
        cmocka_unit_test(test_cstack_device_vector),
        cmocka_unit_test(test_node_sdk_vector),
        cmocka_unit_test(test_service_vectors),
        cmocka_unit_test(test_device_scoped_vector),
        cmocka_unit_test(test_special_characters_signed_as_sent),
        cmocka_unit_test(test_policy_name_encoded),
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_url_encode),
        cmocka_unit_test(test_for_connstr),
        cmocka_unit_test(test_for_connstr_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
