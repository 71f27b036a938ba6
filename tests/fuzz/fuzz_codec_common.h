/* Shared by the two codec drivers: an app set up as the service sets it up, with a stub resolver,
 * and the checks every decoded SAS credential must pass. */
#ifndef IOTM_FUZZ_CODEC_COMMON_H
#define IOTM_FUZZ_CODEC_COMMON_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/codec.h"
#include "fuzz_common.h"
#include "iot-manager/app.h"
#include "iot-manager/b64.h"
#include "iot-manager/config.h"
#include "iot-manager/connstr.h"

/* Environment variables must not change what the drivers test: the configuration is the
 * defaults plus the whitelist set below. */
extern char **environ;

static void fuzz_clear_iotm_env(void)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; e && *e; e++) {
            if (strncmp(*e, "IOT_MANAGER_", 12) == 0) {
                size_t n = strcspn(*e, "=");
                if (n < sizeof name) {
                    memcpy(name, *e, n);
                    name[n] = '\0';
                    break;
                }
            }
        }
        if (!name[0])
            return;
        unsetenv(name);
    }
}

/* Knows every name except those starting with "nx-"; checks it is only asked about host names. */
static bool codec_stub_resolve(const char *host, void *ctx)
{
    (void)ctx;
    size_t n = strlen(host);
    FUZZ_CHECK(n > 0 && n <= 254);
    FUZZ_CHECK(strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:") ==
               n);
    return strncmp(host, "nx-", 3) != 0;
}

/* app_init() from the default configuration (whitelist widened to reach more code), with the DNS
 * lookup stubbed. Built once per process; the app borrows the static config. */
static const struct app *codec_app(void)
{
    static struct config cfg;
    static struct app app;
    static bool ready;
    if (ready)
        return &app;
    fuzz_clear_iotm_env();
    struct iot_error err = {0};
    FUZZ_CHECK(config_load(&cfg, "/nonexistent/iot-manager-fuzz.yaml", false, &err) == IOT_OK);
    snprintf(cfg.domain_whitelist, sizeof cfg.domain_whitelist, "%s",
             "*.azure-devices.net localhost [::1] hub.*.example.com");
    struct crypto_keyring kr;
    memset(&kr, 0, sizeof kr);
    app_init(&app, &cfg, NULL, &kr);
    app.connstr_rules.resolve = codec_stub_resolve;
    app.connstr_rules.resolve_ctx = NULL;
    ready = true;
    return &app;
}

/* The base64 of a plaintext key; malloc'd. */
static char *codec_key_b64(const struct secret *s)
{
    size_t cap = B64_ENCODED_LEN(s->len) + 1;
    char *out = malloc(cap);
    FUZZ_CHECK(out && b64_encode(s->data, s->len, out, cap, false) >= 0);
    return out;
}

/* What every accepted SAS credential satisfies: a trusted host, a policy name (device strings are
 * refused), and a non-empty key unless the mask stood in for it. */
static void codec_check_sas(const struct app *app, const struct credentials *c, bool masked)
{
    FUZZ_CHECK(c->type == CREDENTIAL_SAS);
    const struct credentials_sas *sas = &c->sas;
    FUZZ_CHECK(sas->hostname && sas->hostname[0]);
    FUZZ_CHECK(connstr_host_trusted(sas->hostname, app->whitelist, app->whitelist_len));
    FUZZ_CHECK(sas->name && sas->name[0]);
    if (masked) {
        FUZZ_CHECK(sas->access_key.state == SECRET_EMPTY);
    } else {
        FUZZ_CHECK(sas->access_key.state == SECRET_PLAIN && sas->access_key.len > 0);
    }
}

/* The API's rendering of credentials with a key shows no more of the key than its mask, and
 * decodes back (PUT .../credentials with what GET returned) to the same fields and that mask. */
static void codec_check_encoded(const struct app *app, const struct credentials *c)
{
    FUZZ_CHECK(c->sas.access_key.state == SECRET_PLAIN);
    struct integration in;
    memset(&in, 0, sizeof in);
    in.provider = PROVIDER_IOT_HUB;
    in.credentials = *c; /* borrowed: not cleared here */
    json_t *obj = codec_integration_encode(&in);
    FUZZ_CHECK(obj != NULL);
    json_t *jcreds = json_object_get(obj, "credentials");
    const char *cs_text = json_string_value(json_object_get(jcreds, "connection_string"));
    FUZZ_CHECK(cs_text != NULL);
    char *body = json_dumps(jcreds, JSON_COMPACT);
    FUZZ_CHECK(body != NULL);

    if (c->sas.access_key.len > 3) {
        /* the same string with the key in clear; other fields and the field names may hold the
         * key's text too: only the key's own copy must be gone from the rendering */
        struct connstr view = {
            .hostname = c->sas.hostname,
            .gateway_hostname = c->sas.gateway_hostname,
            .name = c->sas.name,
            .device_id = c->sas.device_id,
            .module_id = c->sas.module_id,
            .key = c->sas.access_key.data,
            .key_len = c->sas.access_key.len,
            .has_key = true,
        };
        char *plain = connstr_format(&view); /* borrowed fields: no connstr_clear */
        char *full = codec_key_b64(&c->sas.access_key);
        FUZZ_CHECK(plain != NULL);
        FUZZ_CHECK(fuzz_count(cs_text, full) + 1 == fuzz_count(plain, full));
        free(full);
        free(plain);
    }

    struct credentials back;
    char *mask = NULL;
    struct iot_error err = {0};
    enum iot_err rc = codec_credentials_decode(app, body, strlen(body), &back, &mask, &err);
    /* a mask longer than a short key can push a string at the limit over it */
    if (strlen(cs_text) <= CONNSTR_MAX_LEN) {
        FUZZ_CHECK(rc == IOT_OK);
        codec_check_sas(app, &back, true);
        FUZZ_CHECK(mask != NULL);
        char expect[32];
        connstr_mask_key(c->sas.access_key.data, c->sas.access_key.len, expect, sizeof expect);
        FUZZ_CHECK(strcmp(mask, expect) == 0);
        FUZZ_CHECK(fuzz_streq_opt(back.sas.hostname, c->sas.hostname));
        FUZZ_CHECK(fuzz_streq_opt(back.sas.gateway_hostname, c->sas.gateway_hostname));
        FUZZ_CHECK(fuzz_streq_opt(back.sas.name, c->sas.name));
        FUZZ_CHECK(fuzz_streq_opt(back.sas.device_id, c->sas.device_id));
        FUZZ_CHECK(fuzz_streq_opt(back.sas.module_id, c->sas.module_id));
    }
    credentials_clear(&back);
    free(mask);
    free(body);
    json_decref(obj);
}

/* Every SharedAccessKey value of connection string `cs` that looks like key material (16+
 * characters with a digit, '+' or '/') and occurs once in `doc` (the whole body, as text) must be
 * absent from `msg`: a message quoting another field cannot then be mistaken for a leak. */
static void codec_check_no_key(const char *cs, const char *doc, const char *msg)
{
    static const char tag[] = "SharedAccessKey=";
    for (const char *p = strstr(cs, tag); p; p = strstr(p + 1, tag)) {
        if (p != cs && p[-1] != ';')
            continue;
        const char *v = p + strlen(tag);
        size_t vlen = strcspn(v, ";");
        if (vlen < 16 || strcspn(v, "0123456789+/") >= vlen)
            continue;
        char *val = strndup(v, vlen);
        FUZZ_CHECK(val != NULL);
        if (fuzz_count(doc, val) == 1)
            FUZZ_CHECK(strstr(msg, val) == NULL);
        free(val);
    }
}

/* A failed decode is a 400 with Mender's prefix and quotes no key. (A body that is not JSON gets
 * jansson's message, which quotes at most 20 characters of a token: never a whole key, since a
 * connection string token starts with a field name.) */
static void codec_check_failure(enum iot_err rc, const struct iot_error *err, const char *body,
                                size_t len)
{
    FUZZ_CHECK(rc == IOT_ERR_INVALID && err->code == rc);
    FUZZ_CHECK(strncmp(err->msg, "malformed request body: ", 24) == 0);
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY, NULL);
    if (!root)
        return;
    /* dumped unescaped ('/' included), so a key reads the same here as in the message */
    char *doc = json_dumps(root, JSON_ENCODE_ANY);
    FUZZ_CHECK(doc != NULL);
    json_t *places[] = {root, json_object_get(root, "credentials")};
    for (size_t i = 0; i < 2; i++) {
        const char *cs = json_string_value(json_object_get(places[i], "connection_string"));
        if (cs)
            codec_check_no_key(cs, doc, err->msg);
    }
    free(doc);
    json_decref(root);
}

#endif
