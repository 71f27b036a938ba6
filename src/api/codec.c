#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "iot-manager/connstr.h"

#define MALFORMED      "malformed request body: "
#define SECRET_OMITTED "<omitted>"

/* ---- ozzo-validation style messages: "key: msg" sorted by key, "; "-joined, "." ended ---- */

#define FIELD_ERRORS_MAX 8

struct field_errors {
    struct {
        const char *key;
        char msg[IOT_ERROR_MSG_MAX];
    } items[FIELD_ERRORS_MAX];
    size_t n;
};

static void field_error(struct field_errors *fe, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void field_error(struct field_errors *fe, const char *key, const char *fmt, ...)
{
    if (fe->n == FIELD_ERRORS_MAX)
        return;
    fe->items[fe->n].key = key;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fe->items[fe->n].msg, sizeof fe->items[fe->n].msg, fmt, ap);
    va_end(ap);
    fe->n++;
}

static void field_errors_format(struct field_errors *fe, char *out, size_t cap)
{
    /* insertion sort: at most a handful of keys */
    for (size_t i = 1; i < fe->n; i++) {
        for (size_t j = i; j > 0 && strcmp(fe->items[j - 1].key, fe->items[j].key) > 0; j--) {
            __typeof__(fe->items[0]) tmp = fe->items[j];
            fe->items[j] = fe->items[j - 1];
            fe->items[j - 1] = tmp;
        }
    }
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < fe->n && used < cap; i++) {
        int w = snprintf(out + used, cap - used, "%s%s: %s", i ? "; " : "", fe->items[i].key,
                         fe->items[i].msg);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    if (used + 1 < cap) {
        out[used] = '.';
        out[used + 1] = '\0';
    }
}

/* ---- decoding ---- */

/* A member that must be a string (or absent/null). `go_struct` and `path` make Go's
 * "<innermost struct>.<json path from the root>" naming of the field. */
static enum iot_err member_string(json_t *obj, const char *key, const char *go_struct,
                                  const char *path, const char *go_type, const char **out,
                                  struct iot_error *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return IOT_OK;
    if (!json_is_string(v))
        return iot_error_set(err, IOT_ERR_INVALID,
                             MALFORMED
                             "json: cannot unmarshal %s into Go struct field %s.%s%s of type %s",
                             go_json_type_name(v), go_struct, path, key, go_type);
    *out = json_string_value(v);
    return IOT_OK;
}

static enum iot_err parse_body(const char *body, size_t len, const char *go_value_type,
                               json_t **out, struct iot_error *err)
{
    *out = NULL;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    if (i == len)
        return iot_error_set(err, IOT_ERR_INVALID, MALFORMED "EOF");
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY, &jerr);
    if (!root)
        return iot_error_set(err, IOT_ERR_INVALID, MALFORMED "%s", jerr.text);
    if (json_is_null(root)) {
        /* Go decodes null into a struct as a no-op: validation then sees an empty object */
        json_decref(root);
        if (!(root = json_object()))
            return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    }
    if (!json_is_object(root)) {
        enum iot_err rc = iot_error_set(
            err, IOT_ERR_INVALID, MALFORMED "json: cannot unmarshal %s into Go value of type %s",
            go_json_type_name(root), go_value_type);
        json_decref(root);
        return rc;
    }
    *out = root;
    return IOT_OK;
}

/* Moves a parsed connection string into sas credentials (the key becomes a plaintext secret). */
static enum iot_err sas_from_connstr(struct connstr *cs, struct credentials_sas *sas,
                                     struct iot_error *err)
{
    sas->hostname = cs->hostname;
    sas->gateway_hostname = cs->gateway_hostname;
    sas->name = cs->name;
    sas->device_id = cs->device_id;
    sas->module_id = cs->module_id;
    cs->hostname = cs->gateway_hostname = cs->name = cs->device_id = cs->module_id = NULL;
    if (cs->has_key && secret_set_plain(&sas->access_key, cs->key, cs->key_len) != IOT_OK)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    return IOT_OK;
}

/* Decodes a Credentials object: JSON types first (Go's decoder), then the connection string,
 * which Mender parses and validates while decoding (so its errors come unwrapped). Field-rule
 * violations go to `fe`. */
static enum iot_err credentials_decode(const struct app *app, json_t *obj, const char *path,
                                       bool allow_masked, struct credentials *out,
                                       char **masked_key, struct field_errors *fe, bool *type_ok,
                                       struct iot_error *err)
{
    enum iot_err rc;
    const char *type = NULL;
    const char *cs_text = NULL;
    *type_ok = false;
    /* the field is a *ConnectionString, a TextUnmarshaler: Go names the pointer type */
    if ((rc = member_string(obj, "type", "Credentials", path, "model.CredentialType", &type,
                            err)) != IOT_OK ||
        (rc = member_string(obj, "connection_string", "Credentials", path,
                            "*model.ConnectionString", &cs_text, err)) != IOT_OK)
        return rc;

    struct connstr cs = {0};
    if (cs_text && *cs_text) {
        if ((rc = connstr_parse(cs_text, allow_masked, &cs, err)) != IOT_OK)
            goto prefix;
        if ((rc = connstr_validate(&cs, &app->connstr_rules, err)) != IOT_OK)
            goto prefix;
    }

    enum credential_type t = CREDENTIAL__COUNT;
    if (!type || !*type)
        field_error(fe, "type", "cannot be blank");
    else if (!credential_type_parse(type, &t))
        field_error(fe, "type", "must be a valid value");
    else
        *type_ok = true;
    out->type = t;

    switch (t) {
    case CREDENTIAL_SAS:
        /* Mender accepts an empty connection string and stores nothing usable; we refuse. One
         * whose values are all empty ("HostName=") passes validation as a zero value, and then
         * has no host: it is just as blank. */
        if (!cs_text || !*cs_text || !cs.hostname || !*cs.hostname) {
            field_error(fe, "connection_string", "cannot be blank");
            break;
        }
        if (cs.masked_key && masked_key) {
            *masked_key = strdup(cs.masked_key);
            if (!*masked_key) {
                rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
                goto out;
            }
        }
        rc = sas_from_connstr(&cs, &out->sas, err);
        break;
    case CREDENTIAL_AWS:
        if (!json_is_object(json_object_get(obj, "aws")))
            field_error(fe, "aws", "cannot be blank");
        break;
    case CREDENTIAL_HTTP:
        if (!json_is_object(json_object_get(obj, "http")))
            field_error(fe, "http", "cannot be blank");
        break;
    default:
        break;
    }
out:
    connstr_clear(&cs);
    return rc;
prefix:
    iot_error_prefix(err, MALFORMED);
    connstr_clear(&cs);
    return rc;
}

/* Providers whose integrations this service can create; the others are kept and listed when a
 * Mender database holds them (see docs/compatibility.md). One row per provider. */
static const struct {
    enum provider provider;
    bool can_create;
} provider_rules[PROVIDER__COUNT] = {
    {PROVIDER_IOT_HUB, true},
    {PROVIDER_IOT_CORE, false},
    {PROVIDER_WEBHOOK, false},
};

enum iot_err codec_integration_decode(const struct app *app, const char *body, size_t len,
                                      struct integration *out, struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    json_t *root = NULL;
    json_t *empty_creds = NULL; /* owned; stands for an absent "credentials" */
    enum iot_err rc = parse_body(body, len, "model.Integration", &root, err);
    if (rc != IOT_OK)
        return rc;

    const char *provider = NULL;
    const char *description = NULL;
    struct field_errors fe = {0};
    if ((rc = member_string(root, "provider", "Integration", "", "model.Provider", &provider,
                            err)) != IOT_OK ||
        (rc = member_string(root, "description", "Integration", "", "string", &description, err)) !=
            IOT_OK)
        goto out;
    json_t *creds = json_object_get(root, "credentials");
    bool type_ok = false;
    if (creds && !json_is_null(creds) && !json_is_object(creds)) {
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           MALFORMED "json: cannot unmarshal %s into Go struct field "
                                     "Integration.credentials of type model.Credentials",
                           go_json_type_name(creds));
        goto out;
    }
    /* Mender's Credentials is a struct value, not a pointer: when absent or null it is validated
     * as an empty one ("credentials: (type: cannot be blank.)"), never "cannot be blank". */
    if (!json_is_object(creds)) {
        if (!(creds = empty_creds = json_object())) {
            rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
            goto out;
        }
    }
    struct field_errors nested = {0};
    rc = credentials_decode(app, creds, "credentials.", false, &out->credentials, NULL, &nested,
                            &type_ok, err);
    if (rc != IOT_OK)
        goto out;
    if (nested.n) {
        char text[IOT_ERROR_MSG_MAX];
        field_errors_format(&nested, text, sizeof text);
        field_error(&fe, "credentials", "(%.480s)", text);
    }

    if (description && strlen(description) > DESCRIPTION_MAX_BYTES)
        field_error(&fe, "description", "the length must be no more than %d",
                    DESCRIPTION_MAX_BYTES);

    /* Mender's rules on provider run in order Required, By(compatibleCredentials), then the
     * type's own In(...) check; the second fails for any unknown provider, so "must be a valid
     * value" can never be reached and an unknown provider reads as incompatible. */
    enum provider p = PROVIDER__COUNT;
    if (!provider || !*provider) {
        field_error(&fe, "provider", "cannot be blank");
    } else if (!provider_parse(provider, &p) || !type_ok ||
               provider_credential_type(p) != out->credentials.type) {
        const char *type = json_string_value(json_object_get(creds, "type"));
        field_error(&fe, "provider", "'%s' incompatible with credential type '%s'", provider,
                    type ? type : "");
    }

    if (fe.n) {
        char text[IOT_ERROR_MSG_MAX];
        field_errors_format(&fe, text, sizeof text);
        rc = iot_error_set(err, IOT_ERR_INVALID, MALFORMED "%s", text);
        goto out;
    }
    if (!provider_rules[p].can_create) {
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           MALFORMED "provider: '%s' integrations cannot be created by this "
                                     "service yet; only 'iot-hub' is supported.",
                           provider);
        goto out;
    }
    out->provider = p;
    if (description && *description && !(out->description = strdup(description)))
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
out:
    json_decref(empty_creds);
    json_decref(root);
    if (rc != IOT_OK)
        integration_clear(out);
    return rc;
}

enum iot_err codec_credentials_decode(const struct app *app, const char *body, size_t len,
                                      struct credentials *out, char **masked_key,
                                      struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    *masked_key = NULL;
    json_t *root = NULL;
    enum iot_err rc = parse_body(body, len, "model.Credentials", &root, err);
    if (rc != IOT_OK)
        return rc;
    struct field_errors fe = {0};
    bool type_ok = false;
    rc = credentials_decode(app, root, "", true, out, masked_key, &fe, &type_ok, err);
    if (rc == IOT_OK && fe.n) {
        char text[IOT_ERROR_MSG_MAX];
        field_errors_format(&fe, text, sizeof text);
        rc = iot_error_set(err, IOT_ERR_INVALID, MALFORMED "%s", text);
    }
    if (rc == IOT_OK && out->type != CREDENTIAL_SAS)
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           MALFORMED "type: '%s' credentials cannot be set by this service yet; "
                                     "only 'sas' is supported.",
                           credential_type_name(out->type));
    json_decref(root);
    if (rc != IOT_OK) {
        credentials_clear(out);
        free(*masked_key);
        *masked_key = NULL;
    }
    return rc;
}

/* ---- encoding ---- */

static void set_opt_string(json_t *obj, const char *key, const char *value)
{
    if (value && *value)
        json_object_set_new(obj, key, json_string(value));
}

static json_t *sas_encode(const struct credentials_sas *sas)
{
    struct connstr cs = {
        .hostname = sas->hostname,
        .gateway_hostname = sas->gateway_hostname,
        .name = sas->name,
        .device_id = sas->device_id,
        .module_id = sas->module_id,
    };
    if (sas->access_key.state == SECRET_PLAIN) {
        cs.key = sas->access_key.data;
        cs.key_len = sas->access_key.len;
        cs.has_key = true;
    }
    char *masked = connstr_format_masked(&cs); /* borrowed fields: do not connstr_clear */
    json_t *v = masked ? json_string(masked) : NULL;
    free(masked);
    return v;
}

json_t *codec_integration_encode(const struct integration *in)
{
    char id[UUID_STR_LEN + 1];
    uuid_format(&in->id, id);
    json_t *creds = json_object();
    json_t *obj = json_object();
    if (!creds || !obj)
        goto fail;
    const struct credentials *c = &in->credentials;
    json_object_set_new(creds, "type", json_string(credential_type_name(c->type)));
    switch (c->type) {
    case CREDENTIAL_SAS: {
        json_t *cs = sas_encode(&c->sas);
        if (!cs)
            goto fail;
        json_object_set_new(creds, "connection_string", cs);
        break;
    }
    case CREDENTIAL_AWS: {
        json_t *aws = json_object();
        set_opt_string(aws, "access_key_id", c->aws.access_key_id);
        json_object_set_new(aws, "secret_access_key", json_string(SECRET_OMITTED));
        set_opt_string(aws, "region", c->aws.region);
        set_opt_string(aws, "device_policy_name", c->aws.device_policy_name);
        json_object_set_new(creds, "aws", aws);
        break;
    }
    case CREDENTIAL_HTTP: {
        json_t *http = json_object();
        set_opt_string(http, "url", c->http.url);
        if (c->http.secret.state != SECRET_EMPTY)
            json_object_set_new(http, "secret", json_string(SECRET_OMITTED));
        json_object_set_new(creds, "http", http);
        break;
    }
    default:
        break;
    }
    json_object_set_new(obj, "id", json_string(id));
    json_object_set_new(obj, "provider", json_string(provider_name(in->provider)));
    json_object_set_new(obj, "credentials", creds);
    set_opt_string(obj, "description", in->description);
    return obj;
fail:
    json_decref(creds);
    json_decref(obj);
    return NULL;
}
