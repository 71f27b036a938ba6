/* The integration JSON codec against Mender's texts (contract §1.1 ozzo formatting, §1.3
 * POST /integrations and PUT /integrations/{id}/credentials, §3.1 connection strings).
 * The app is set up by app_init() from the default configuration (whitelist
 * "*.azure-devices.net", device connection strings refused), with the DNS lookup replaced by a stub
 * that knows every name except those starting with "nx-". */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/codec.h"
#include "iot-manager/app.h"
#include "iot-manager/config.h"

#define HUB       "mender-test-hub.azure-devices.net"
#define KEY_B64   "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=" /* 32 x 'a' */
#define KEY_MASK  "YWFh...<omitted>"
#define VALID_CS  "HostName=" HUB ";SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_B64
#define MALFORMED "malformed request body: "
/* A body with the provider `p` (JSON text) and valid SAS credentials. */
#define WITH_PROVIDER(p)                                                                           \
    "{\"provider\":" p ",\"credentials\":{\"type\":\"sas\",\"connection_string\":\"" VALID_CS "\"" \
    "}}"

struct fixture {
    struct config cfg;
    struct app app;
    int lookups;
};

static bool stub_resolve(const char *host, void *ctx)
{
    struct fixture *f = ctx;
    f->lookups++;
    return strncmp(host, "nx-", 3) != 0;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    struct iot_error err = {0};
    unsetenv("IOT_MANAGER_DOMAIN_WHITELIST");
    if (config_load(&f->cfg, "/nonexistent/iot-manager-test.yaml", false, &err) != IOT_OK) {
        free(f);
        return -1;
    }
    struct crypto_keyring kr;
    memset(&kr, 0, sizeof kr);
    app_init(&f->app, &f->cfg, NULL, &kr);
    /* keep app_init's whitelist and policy rule; only the network lookup is stubbed */
    f->app.connstr_rules.resolve = stub_resolve;
    f->app.connstr_rules.resolve_ctx = f;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

/* ---- helpers ---- */

static enum iot_err decode(struct fixture *f, const char *body, struct integration *out,
                           struct iot_error *err)
{
    memset(err, 0, sizeof *err);
    return codec_integration_decode(&f->app, body, strlen(body), out, err);
}

static void expect_invalid(struct fixture *f, const char *body, const char *msg)
{
    struct integration in;
    struct iot_error err;
    enum iot_err rc = decode(f, body, &in, &err);
    if (rc != IOT_ERR_INVALID)
        fail_msg("body %s: rc %d (%s), want 400 \"%s\"", body, rc, err.msg, msg);
    assert_int_equal(err.code, IOT_ERR_INVALID);
    if (strcmp(err.msg, msg) != 0)
        fail_msg("body %s:\n got  \"%s\"\n want \"%s\"", body, err.msg, msg);
    /* nothing is left allocated in `in` on failure */
    assert_null(in.description);
    assert_null(in.credentials.sas.hostname);
    assert_int_equal(in.credentials.sas.access_key.state, SECRET_EMPTY);
    integration_clear(&in);
}

static void expect_creds_invalid(struct fixture *f, const char *body, const char *msg)
{
    struct credentials c;
    char *masked = (char *)"sentinel";
    struct iot_error err = {0};
    enum iot_err rc = codec_credentials_decode(&f->app, body, strlen(body), &c, &masked, &err);
    if (rc != IOT_ERR_INVALID)
        fail_msg("body %s: rc %d (%s), want 400 \"%s\"", body, rc, err.msg, msg);
    if (strcmp(err.msg, msg) != 0)
        fail_msg("body %s:\n got  \"%s\"\n want \"%s\"", body, err.msg, msg);
    assert_null(masked);
    assert_null(c.sas.hostname);
    credentials_clear(&c);
}

/* {"provider":"iot-hub","credentials":{"type":"sas","connection_string":"<cs>"}} */
static char *iot_hub_body(const char *cs)
{
    static char body[8192];
    snprintf(body, sizeof body,
             "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":\"sas\","
             "\"connection_string\":\"%s\"}}",
             cs);
    return body;
}

/* An iot-hub body with valid credentials and the description `desc`, in `body` (`cap` bytes). */
static void described_body(char *body, size_t cap, const char *desc)
{
    snprintf(body, cap,
             "{\"provider\":\"iot-hub\",\"description\":\"%s\",\"credentials\":{\"type\":\"sas\","
             "\"connection_string\":\"" VALID_CS "\"}}",
             desc);
}

/* ---- body level ---- */

static void test_empty_body_is_eof(void **state)
{
    struct fixture *f = *state;
    expect_invalid(f, "", MALFORMED "EOF");
    expect_invalid(f, " \r\n\t ", MALFORMED "EOF");
    expect_creds_invalid(f, "", MALFORMED "EOF");
}

static void test_invalid_json(void **state)
{
    struct fixture *f = *state;
    const char *bodies[] = {"{", "{\"provider\":}", "not json", "{\"provider\":\"iot-hub\"} x"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        struct integration in;
        struct iot_error err;
        assert_int_equal(decode(f, bodies[i], &in, &err), IOT_ERR_INVALID);
        assert_memory_equal(err.msg, MALFORMED, strlen(MALFORMED));
        assert_true(strlen(err.msg) > strlen(MALFORMED));
        assert_string_not_equal(err.msg, MALFORMED "EOF");
        integration_clear(&in);
    }
}

static void test_body_not_an_object(void **state)
{
    struct fixture *f = *state;
    expect_invalid(
        f, "[]", MALFORMED "json: cannot unmarshal array into Go value of type model.Integration");
    expect_invalid(f, "\"iot-hub\"",
                   MALFORMED
                   "json: cannot unmarshal string into Go value of type model.Integration");
    expect_invalid(
        f, "12", MALFORMED "json: cannot unmarshal number into Go value of type model.Integration");
    expect_creds_invalid(f, "[{}]",
                         MALFORMED
                         "json: cannot unmarshal array into Go value of type model.Credentials");
    /* null decodes as Go's zero struct, which then fails validation */
    expect_invalid(f, "null",
                   MALFORMED "credentials: (type: cannot be blank.); provider: cannot be blank.");
}

static void test_wrong_json_types(void **state)
{
    struct fixture *f = *state;
    expect_invalid(f, "{\"provider\":5}",
                   MALFORMED "json: cannot unmarshal number into Go struct field "
                             "Integration.provider of type model.Provider");
    expect_invalid(f, "{\"provider\":{\"name\":\"iot-hub\"}}",
                   MALFORMED "json: cannot unmarshal object into Go struct field "
                             "Integration.provider of type model.Provider");
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"description\":true}",
                   MALFORMED "json: cannot unmarshal bool into Go struct field "
                             "Integration.description of type string");
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"credentials\":\"" VALID_CS "\"}",
                   MALFORMED "json: cannot unmarshal string into Go struct field "
                             "Integration.credentials of type model.Credentials");
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"credentials\":[]}",
                   MALFORMED "json: cannot unmarshal array into Go struct field "
                             "Integration.credentials of type model.Credentials");
    /* nested: Go names the innermost struct and the JSON path from the root */
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":[\"sas\"]}}",
                   MALFORMED "json: cannot unmarshal array into Go struct field "
                             "Credentials.credentials.type of type model.CredentialType");
    expect_invalid(f,
                   "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":\"sas\","
                   "\"connection_string\":42}}",
                   MALFORMED "json: cannot unmarshal number into Go struct field "
                             "Credentials.credentials.connection_string of type "
                             "*model.ConnectionString");
    expect_creds_invalid(f, "{\"type\":1}",
                         MALFORMED "json: cannot unmarshal number into Go struct field "
                                   "Credentials.type of type model.CredentialType");
    expect_creds_invalid(f, "{\"type\":\"sas\",\"connection_string\":{}}",
                         MALFORMED "json: cannot unmarshal object into Go struct field "
                                   "Credentials.connection_string of type *model.ConnectionString");
}

/* ---- ozzo rules ---- */

static void test_provider_required(void **state)
{
    struct fixture *f = *state;
    expect_invalid(f, "{\"credentials\":{\"type\":\"sas\",\"connection_string\":\"" VALID_CS "\"}}",
                   MALFORMED "provider: cannot be blank.");
    expect_invalid(f, WITH_PROVIDER("\"\""), MALFORMED "provider: cannot be blank.");
    expect_invalid(f, WITH_PROVIDER("null"), MALFORMED "provider: cannot be blank.");
}

/* Mender validates provider with Required, then By(compatibleCredentials), and only then its own
 * In(...) rule: an unknown provider fails the compatibility rule first. */
static void test_unknown_provider(void **state)
{
    struct fixture *f = *state;
    expect_invalid(f, WITH_PROVIDER("\"azure\""),
                   MALFORMED "provider: 'azure' incompatible with credential type 'sas'.");
    /* values are case-sensitive */
    expect_invalid(f, WITH_PROVIDER("\"IoT-Hub\""),
                   MALFORMED "provider: 'IoT-Hub' incompatible with credential type 'sas'.");
}

/* Credentials is a struct value in Mender: absent, null or {} all fail on its type. */
static void test_missing_credentials(void **state)
{
    struct fixture *f = *state;
    const char *want = MALFORMED "credentials: (type: cannot be blank.); provider: 'iot-hub' "
                                 "incompatible with credential type ''.";
    expect_invalid(f, "{\"provider\":\"iot-hub\"}", want);
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"credentials\":null}", want);
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"credentials\":{}}", want);
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":\"\"}}", want);
    expect_creds_invalid(f, "{}", MALFORMED "type: cannot be blank.");
    expect_creds_invalid(f, "null", MALFORMED "type: cannot be blank.");
}

static void test_type_invalid_and_incompatible(void **state)
{
    struct fixture *f = *state;
    /* the contract's example */
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":\"foo\"}}",
                   MALFORMED "credentials: (type: must be a valid value.); provider: 'iot-hub' "
                             "incompatible with credential type 'foo'.");
    expect_invalid(f,
                   "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":\"SAS\","
                   "\"connection_string\":\"" VALID_CS "\"}}",
                   MALFORMED "credentials: (type: must be a valid value.); provider: 'iot-hub' "
                             "incompatible with credential type 'SAS'.");
    expect_creds_invalid(f, "{\"type\":\"foo\"}", MALFORMED "type: must be a valid value.");
}

static void test_provider_type_mismatch(void **state)
{
    struct fixture *f = *state;
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":\"aws\"}}",
                   MALFORMED "credentials: (aws: cannot be blank.); provider: 'iot-hub' "
                             "incompatible with credential type 'aws'.");
    expect_invalid(f, WITH_PROVIDER("\"iot-core\""),
                   MALFORMED "provider: 'iot-core' incompatible with credential type 'sas'.");
    expect_invalid(
        f,
        "{\"provider\":\"webhook\",\"credentials\":{\"type\":\"aws\",\"aws\":{"
        "\"access_key_id\":\"AKIA\",\"secret_access_key\":\"s\",\"region\":\"us-east-1\","
        "\"device_policy_name\":\"p\"}}}",
        MALFORMED "provider: 'webhook' incompatible with credential type 'aws'.");
    expect_invalid(f, "{\"provider\":\"iot-core\",\"credentials\":{\"type\":\"http\"}}",
                   MALFORMED "credentials: (http: cannot be blank.); provider: 'iot-core' "
                             "incompatible with credential type 'http'.");
}

static void test_description_length(void **state)
{
    struct fixture *f = *state;
    char desc[1100];
    char body[4096];
    struct integration in;
    struct iot_error err;

    memset(desc, 'd', 1025);
    desc[1025] = '\0';
    described_body(body, sizeof body, desc);
    expect_invalid(f, body, MALFORMED "description: the length must be no more than 1024.");

    desc[1024] = '\0';
    described_body(body, sizeof body, desc);
    assert_int_equal(decode(f, body, &in, &err), IOT_OK);
    assert_int_equal(strlen(in.description), 1024);
    integration_clear(&in);

    /* the limit is in bytes: 512 two-byte characters fit, 513 do not */
    char utf8[1100];
    size_t n = 0;
    for (int i = 0; i < 513; i++) {
        utf8[n++] = (char)0xC3;
        utf8[n++] = (char)0xA9; /* U+00E9 */
    }
    utf8[n] = '\0';
    described_body(body, sizeof body, utf8);
    expect_invalid(f, body, MALFORMED "description: the length must be no more than 1024.");
    utf8[1024] = '\0';
    described_body(body, sizeof body, utf8);
    assert_int_equal(decode(f, body, &in, &err), IOT_OK);
    integration_clear(&in);
}

/* ozzo joins field errors sorted by key with "; " and ends with "." */
static void test_errors_sorted_and_joined(void **state)
{
    struct fixture *f = *state;
    char desc[1100];
    memset(desc, 'd', 1030);
    desc[1030] = '\0';
    char body[2048];
    snprintf(body, sizeof body, "{\"description\":\"%s\",\"credentials\":{\"type\":\"sas\"}}",
             desc);
    expect_invalid(f, body,
                   MALFORMED "credentials: (connection_string: cannot be blank.); description: the "
                             "length must be no more than 1024; provider: cannot be blank.");
}

static void test_connection_string_required(void **state)
{
    struct fixture *f = *state;
    expect_invalid(f, "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":\"sas\"}}",
                   MALFORMED "credentials: (connection_string: cannot be blank.).");
    expect_invalid(f,
                   "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":\"sas\","
                   "\"connection_string\":null}}",
                   MALFORMED "credentials: (connection_string: cannot be blank.).");
    /* Mender accepts "" and stores an unusable integration; this service refuses it */
    expect_invalid(f, iot_hub_body(""),
                   MALFORMED "credentials: (connection_string: cannot be blank.).");
    expect_creds_invalid(f, "{\"type\":\"sas\",\"connection_string\":\"\"}",
                         MALFORMED "connection_string: cannot be blank.");
}

/* Errors of the connection string's own parser and validator come unwrapped. */
static void test_connection_string_errors(void **state)
{
    struct fixture *f = *state;
    expect_invalid(f, iot_hub_body("garbage"), MALFORMED "invalid connectionstring format");
    expect_invalid(f, iot_hub_body(VALID_CS ";"), MALFORMED "invalid connectionstring format");
    expect_invalid(f, iot_hub_body("HostName=" HUB ";Foo=bar"),
                   MALFORMED "invalid connection string key: Foo");
    expect_invalid(f, iot_hub_body("HostName=" HUB ";SharedAccessKeyName=n;SharedAccessKey=YWFh*"),
                   MALFORMED "shared access key format: illegal base64 data at input byte 4");
    expect_invalid(f, iot_hub_body("HostName=" HUB ";SharedAccessKeyName=n;SharedAccessKey="),
                   MALFORMED "connection string invalid: Key: cannot be blank.");
    expect_invalid(
        f, iot_hub_body("HostName=hub.evil.example;SharedAccessKeyName=n;SharedAccessKey=" KEY_B64),
        MALFORMED "connection string invalid: HostName: hostname does not refer to a "
                  "trusted domain.");
    /* the whitelist matches exactly one leading label */
    expect_invalid(f,
                   iot_hub_body("HostName=a.b.azure-devices.net;SharedAccessKeyName=n;"
                                "SharedAccessKey=" KEY_B64),
                   MALFORMED "connection string invalid: HostName: hostname does not refer to a "
                             "trusted domain.");
    int before = f->lookups;
    expect_invalid(f,
                   iot_hub_body("HostName=nx-hub.azure-devices.net;SharedAccessKeyName=n;"
                                "SharedAccessKey=" KEY_B64),
                   MALFORMED "connection string invalid: HostName: failed to lookup host with "
                             "name 'nx-hub.azure-devices.net'.");
    assert_true(f->lookups > before); /* the stub, not the network, answered */
    expect_invalid(f, iot_hub_body("HostName=" HUB ";SharedAccessKey=" KEY_B64),
                   MALFORMED "connection string invalid: one of 'DeviceId' or "
                             "'SharedAccessKeyName' must be set");
    /* a device connection string cannot manage the registry: refused (ours) */
    expect_invalid(f,
                   iot_hub_body("HostName=" HUB ";DeviceId=7b478313-de33-4735-bf00-0ebc31851faf;"
                                "SharedAccessKey=" KEY_B64),
                   MALFORMED "connection string invalid: SharedAccessKeyName is required: a device "
                             "connection string cannot manage the hub's registry");
    /* a masked key is only for PUT .../credentials: here it is an invalid key */
    expect_invalid(f,
                   iot_hub_body("HostName=" HUB ";SharedAccessKeyName=n;SharedAccessKey=" KEY_MASK),
                   MALFORMED "shared access key format: illegal base64 data at input byte 4");
    /* the connection string is decoded whatever the credential type says */
    expect_invalid(f,
                   "{\"provider\":\"iot-core\",\"credentials\":{\"type\":\"aws\","
                   "\"connection_string\":\"garbage\"}}",
                   MALFORMED "invalid connectionstring format");
    /* same texts on PUT */
    expect_creds_invalid(f,
                         "{\"type\":\"sas\",\"connection_string\":\"HostName=x.example.com;"
                         "SharedAccessKeyName=n;SharedAccessKey=" KEY_B64 "\"}",
                         MALFORMED "connection string invalid: HostName: hostname does not refer "
                                   "to a trusted domain.");
}

/* No error text carries the key. */
static void test_errors_never_echo_key(void **state)
{
    struct fixture *f = *state;
    const char *cs[] = {
        "HostName=hub.evil.example;SharedAccessKeyName=n;SharedAccessKey=" KEY_B64,
        "HostName=" HUB ";SharedAccessKey=" KEY_B64,
        "HostName=" HUB ";Foo=" KEY_B64,
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        struct integration in;
        struct iot_error err;
        assert_int_equal(decode(f, iot_hub_body(cs[i]), &in, &err), IOT_ERR_INVALID);
        assert_null(strstr(err.msg, "YWFhYWFh"));
        integration_clear(&in);
    }
}

static void test_webhook_and_iot_core_refused(void **state)
{
    struct fixture *f = *state;
    expect_invalid(f,
                   "{\"provider\":\"webhook\",\"credentials\":{\"type\":\"http\","
                   "\"http\":{\"url\":\"https://hooks.example.com/x\",\"secret\":\"0a1b\"}}}",
                   MALFORMED "provider: 'webhook' integrations cannot be created by this service "
                             "yet; only 'iot-hub' is supported.");
    expect_invalid(
        f,
        "{\"provider\":\"iot-core\",\"credentials\":{\"type\":\"aws\",\"aws\":{"
        "\"access_key_id\":\"AKIA\",\"secret_access_key\":\"s\",\"region\":\"us-east-1\","
        "\"device_policy_name\":\"p\"}}}",
        MALFORMED "provider: 'iot-core' integrations cannot be created by this service "
                  "yet; only 'iot-hub' is supported.");
    expect_creds_invalid(f,
                         "{\"type\":\"http\",\"http\":{\"url\":\"https://hooks.example.com/x\"}}",
                         MALFORMED "type: 'http' credentials cannot be set by this service yet; "
                                   "only 'sas' is supported.");
    expect_creds_invalid(f, "{\"type\":\"aws\"}", MALFORMED "aws: cannot be blank.");
}

static void test_valid_iot_hub(void **state)
{
    struct fixture *f = *state;
    struct integration in;
    struct iot_error err;
    const char *body = "{\"id\":\"0a68eb57-c88a-5f34-9e9d-27f85e68af4f\",\"provider\":\"iot-hub\","
                       "\"description\":\"production hub\",\"unknown\":[1,2],"
                       "\"credentials\":{\"type\":\"sas\",\"connection_string\":\"HostName=" HUB
                       ";SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_B64 "\"}}";
    if (decode(f, body, &in, &err) != IOT_OK)
        fail_msg("%s", err.msg);
    assert_int_equal(in.provider, PROVIDER_IOT_HUB);
    assert_string_equal(in.description, "production hub");
    assert_int_equal(in.credentials.type, CREDENTIAL_SAS);
    const struct credentials_sas *sas = &in.credentials.sas;
    assert_string_equal(sas->hostname, HUB);
    assert_string_equal(sas->name, "iothubowner");
    assert_null(sas->device_id);
    assert_null(sas->module_id);
    assert_null(sas->gateway_hostname);
    assert_int_equal(sas->access_key.state, SECRET_PLAIN);
    assert_int_equal(sas->access_key.len, 32);
    for (size_t i = 0; i < 32; i++)
        assert_int_equal(sas->access_key.data[i], 'a');
    /* the id in the body is not taken (the app assigns one) */
    static const struct uuid zero;
    assert_memory_equal(&in.id, &zero, sizeof zero);
    integration_clear(&in);
    assert_null(in.description);

    /* an empty description is no description */
    char undescribed[4096];
    described_body(undescribed, sizeof undescribed, "");
    assert_int_equal(decode(f, undescribed, &in, &err), IOT_OK);
    assert_null(in.description);
    integration_clear(&in);

    /* the port of a HostName is kept */
    assert_int_equal(decode(f,
                            iot_hub_body("HostName=" HUB ":8443;SharedAccessKeyName=n;"
                                         "SharedAccessKey=" KEY_B64),
                            &in, &err),
                     IOT_OK);
    assert_string_equal(in.credentials.sas.hostname, HUB ":8443");
    integration_clear(&in);
}

static void test_credentials_masked_key(void **state)
{
    struct fixture *f = *state;
    struct credentials c;
    char *masked = NULL;
    struct iot_error err = {0};
    const char *body = "{\"type\":\"sas\",\"connection_string\":\"HostName=" HUB
                       ";SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_MASK "\"}";
    if (codec_credentials_decode(&f->app, body, strlen(body), &c, &masked, &err) != IOT_OK)
        fail_msg("%s", err.msg);
    assert_non_null(masked);
    assert_string_equal(masked, KEY_MASK);
    assert_int_equal(c.type, CREDENTIAL_SAS);
    assert_string_equal(c.sas.hostname, HUB);
    assert_string_equal(c.sas.name, "iothubowner");
    assert_int_equal(c.sas.access_key.state, SECRET_EMPTY); /* the key stays empty */
    free(masked);
    credentials_clear(&c);

    /* a real key: no mask */
    masked = (char *)"sentinel";
    body = "{\"type\":\"sas\",\"connection_string\":\"" VALID_CS "\"}";
    assert_int_equal(codec_credentials_decode(&f->app, body, strlen(body), &c, &masked, &err),
                     IOT_OK);
    assert_null(masked);
    assert_int_equal(c.sas.access_key.state, SECRET_PLAIN);
    assert_int_equal(c.sas.access_key.len, 32);
    credentials_clear(&c);

    /* something that only looks like a mask is a bad key */
    body = "{\"type\":\"sas\",\"connection_string\":\"HostName=" HUB
           ";SharedAccessKeyName=n;SharedAccessKey=YWFhYQ...<omitted>\"}";
    expect_creds_invalid(f, body,
                         MALFORMED "shared access key format: illegal base64 data at input byte 6");
}

/* ---- encoding ---- */

static void fill_sas(struct integration *in, const char *name, const char *device_id)
{
    memset(in, 0, sizeof *in);
    struct iot_error err;
    assert_int_equal(uuid_parse("0a68eb57-c88a-5f34-9e9d-27f85e68af4f", &in->id, &err), IOT_OK);
    in->provider = PROVIDER_IOT_HUB;
    in->credentials.type = CREDENTIAL_SAS;
    in->credentials.sas.hostname = strdup(HUB);
    assert_non_null(in->credentials.sas.hostname);
    if (name)
        assert_non_null(in->credentials.sas.name = strdup(name));
    if (device_id)
        assert_non_null(in->credentials.sas.device_id = strdup(device_id));
    uint8_t key[32];
    memset(key, 'a', sizeof key);
    assert_int_equal(secret_set_plain(&in->credentials.sas.access_key, key, sizeof key), IOT_OK);
}

static char *dump(const json_t *obj)
{
    char *text = json_dumps(obj, JSON_SORT_KEYS | JSON_COMPACT);
    assert_non_null(text);
    return text;
}

static void test_encode_iot_hub_masks_key(void **state)
{
    (void)state;
    struct integration in;
    fill_sas(&in, "iothubowner", NULL);
    json_t *obj = codec_integration_encode(&in);
    assert_non_null(obj);
    char *text = dump(obj);
    assert_string_equal(text, "{\"credentials\":{\"connection_string\":\"HostName=" HUB
                              ";SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_MASK "\","
                              "\"type\":\"sas\"},\"id\":\"0a68eb57-c88a-5f34-9e9d-27f85e68af4f\","
                              "\"provider\":\"iot-hub\"}");
    assert_null(strstr(text, "YWFhYWFh")); /* never the whole key */
    assert_null(json_object_get(obj, "description"));
    free(text);
    json_decref(obj);

    /* description present when set, omitted when empty */
    in.description = strdup("hub A");
    obj = codec_integration_encode(&in);
    assert_string_equal(json_string_value(json_object_get(obj, "description")), "hub A");
    json_decref(obj);
    in.description[0] = '\0';
    obj = codec_integration_encode(&in);
    assert_null(json_object_get(obj, "description"));
    json_decref(obj);
    integration_clear(&in);

    /* the contract's device example */
    fill_sas(&in, NULL, "7b478313-de33-4735-bf00-0ebc31851faf");
    obj = codec_integration_encode(&in);
    assert_string_equal(
        json_string_value(
            json_object_get(json_object_get(obj, "credentials"), "connection_string")),
        "HostName=mender-test-hub.azure-devices.net;DeviceId=7b478313-de33-4735-bf00-0ebc31851faf;"
        "SharedAccessKey=YWFh...<omitted>");
    json_decref(obj);
    integration_clear(&in);
}

/* Decoding then encoding shows the mask that PUT .../credentials accepts back. */
static void test_round_trip_mask(void **state)
{
    struct fixture *f = *state;
    struct integration in;
    struct iot_error err;
    assert_int_equal(decode(f, iot_hub_body(VALID_CS), &in, &err), IOT_OK);
    json_t *obj = codec_integration_encode(&in);
    const char *cs = json_string_value(
        json_object_get(json_object_get(obj, "credentials"), "connection_string"));
    assert_non_null(cs);
    char body[1024];
    snprintf(body, sizeof body, "{\"type\":\"sas\",\"connection_string\":\"%s\"}", cs);
    struct credentials c;
    char *masked = NULL;
    assert_int_equal(codec_credentials_decode(&f->app, body, strlen(body), &c, &masked, &err),
                     IOT_OK);
    assert_string_equal(masked, KEY_MASK);
    free(masked);
    credentials_clear(&c);
    json_decref(obj);
    integration_clear(&in);
}

static void test_encode_aws_and_http(void **state)
{
    (void)state;
    struct integration in;
    memset(&in, 0, sizeof in);
    in.provider = PROVIDER_IOT_CORE;
    in.credentials.type = CREDENTIAL_AWS;
    in.credentials.aws.access_key_id = strdup("AKIAEXAMPLE");
    in.credentials.aws.region = strdup("eu-west-1");
    in.credentials.aws.device_policy_name = strdup("policy");
    assert_int_equal(secret_set_plain(&in.credentials.aws.secret_access_key,
                                      (const uint8_t *)"aws-secret-value", 16),
                     IOT_OK);
    json_t *obj = codec_integration_encode(&in);
    char *text = dump(obj);
    assert_string_equal(text, "{\"credentials\":{\"aws\":{\"access_key_id\":\"AKIAEXAMPLE\","
                              "\"device_policy_name\":\"policy\",\"region\":\"eu-west-1\","
                              "\"secret_access_key\":\"<omitted>\"},\"type\":\"aws\"},"
                              "\"id\":\"00000000-0000-0000-0000-000000000000\","
                              "\"provider\":\"iot-core\"}");
    assert_null(strstr(text, "aws-secret-value"));
    free(text);
    json_decref(obj);
    integration_clear(&in);

    memset(&in, 0, sizeof in);
    in.provider = PROVIDER_WEBHOOK;
    in.credentials.type = CREDENTIAL_HTTP;
    in.credentials.http.url = strdup("https://hooks.example.com/x");
    obj = codec_integration_encode(&in);
    text = dump(obj);
    /* no secret: no "secret" key */
    assert_string_equal(text,
                        "{\"credentials\":{\"http\":{\"url\":\"https://hooks.example.com/x\"},"
                        "\"type\":\"http\"},\"id\":\"00000000-0000-0000-0000-000000000000\","
                        "\"provider\":\"webhook\"}");
    free(text);
    json_decref(obj);
    const uint8_t hook_secret[] = {0xde, 0xad, 0xbe, 0xef};
    assert_int_equal(secret_set_plain(&in.credentials.http.secret, hook_secret, 4), IOT_OK);
    obj = codec_integration_encode(&in);
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_object_get(obj, "credentials"), "http"), "secret")),
        "<omitted>");
    json_decref(obj);
    integration_clear(&in);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_empty_body_is_eof),
        T(test_invalid_json),
        T(test_body_not_an_object),
        T(test_wrong_json_types),
        T(test_provider_required),
        T(test_unknown_provider),
        T(test_missing_credentials),
        T(test_type_invalid_and_incompatible),
        T(test_provider_type_mismatch),
        T(test_description_length),
        T(test_errors_sorted_and_joined),
        T(test_connection_string_required),
        T(test_connection_string_errors),
        T(test_errors_never_echo_key),
        T(test_webhook_and_iot_core_refused),
        T(test_valid_iot_hub),
        T(test_credentials_masked_key),
        T(test_encode_iot_hub_masks_key),
        T(test_round_trip_mask),
        T(test_encode_aws_and_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
