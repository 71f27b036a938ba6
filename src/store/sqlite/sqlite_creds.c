/* The `credentials` column: a JSON text with the field names of Mender's Mongo sub-document, so
 * that a dump of either store reads the same:
 *   {"type":"sas","connection_string":{"hostname","gateway_hostname","name","device_id",
 *                                      "module_id","access_key":SECRET}}
 *   {"type":"aws","aws":{"access_key_id","secret_access_key":SECRET,"region",
 *                        "device_policy_name"}}
 *   {"type":"http","http":{"url","secret":SECRET}}
 *   SECRET = {"algorithm":"...","key_id":<int32, only when the blob has one>,
 *             "data":"<standard base64 of the sealed bytes>"}
 * Absent strings and empty secrets are omitted. Only sealed secrets are ever written. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "iot-manager/b64.h"
#include "sqlite_store.h"

#define SQ_CREDS_MALFORMED "database error: malformed credentials in integrations table"

/* Adds `key` to `obj` unless `val` is NULL. False when jansson refuses (out of memory, or a
 * string that is not UTF-8). */
static bool sq_json_put_str(json_t *obj, const char *key, const char *val)
{
    if (!val)
        return true;
    return json_object_set_new(obj, key, json_string(val)) == 0;
}

static enum iot_err sq_secret_encode(json_t *obj, const char *key, const struct secret *s,
                                     struct iot_error *err)
{
    if (s->state == SECRET_EMPTY)
        return IOT_OK;
    if (s->state != SECRET_SEALED)
        return iot_error_set(err, IOT_ERR_INTERNAL,
                             "database error: refusing to store a secret that is not sealed");
    if (strnlen(s->algorithm, SECRET_ALG_MAX) >= SECRET_ALG_MAX || !s->data)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: malformed sealed secret");
    enum iot_err rc = IOT_OK;
    size_t cap = B64_ENCODED_LEN(s->len) + 1;
    char *b64 = malloc(cap);
    json_t *js = json_object();
    if (!b64 || !js) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (b64_encode(s->data, s->len, b64, cap, false) < 0) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "database error: cannot encode secret");
        goto out;
    }
    if (!sq_json_put_str(js, "algorithm", s->algorithm) ||
        (s->has_key_id && json_object_set_new(js, "key_id", json_integer(s->key_id)) != 0) ||
        !sq_json_put_str(js, "data", b64)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "database error: cannot encode secret");
        goto out;
    }
    if (json_object_set(obj, key, js) != 0)
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
out:
    json_decref(js);
    free(b64);
    return rc;
}

/* Builds the sub-document of the credential type into `sub`. */
static enum iot_err sq_creds_encode_sub(const struct credentials *c, json_t *sub,
                                        struct iot_error *err)
{
    bool ok = true;
    switch (c->type) {
    case CREDENTIAL_SAS:
        ok = sq_json_put_str(sub, "hostname", c->sas.hostname) &&
             sq_json_put_str(sub, "gateway_hostname", c->sas.gateway_hostname) &&
             sq_json_put_str(sub, "name", c->sas.name) &&
             sq_json_put_str(sub, "device_id", c->sas.device_id) &&
             sq_json_put_str(sub, "module_id", c->sas.module_id);
        if (ok)
            return sq_secret_encode(sub, "access_key", &c->sas.access_key, err);
        break;
    case CREDENTIAL_AWS:
        ok = sq_json_put_str(sub, "access_key_id", c->aws.access_key_id) &&
             sq_json_put_str(sub, "region", c->aws.region) &&
             sq_json_put_str(sub, "device_policy_name", c->aws.device_policy_name);
        if (ok)
            return sq_secret_encode(sub, "secret_access_key", &c->aws.secret_access_key, err);
        break;
    case CREDENTIAL_HTTP:
        ok = sq_json_put_str(sub, "url", c->http.url);
        if (ok)
            return sq_secret_encode(sub, "secret", &c->http.secret, err);
        break;
    default:
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: unknown credential type");
    }
    return iot_error_set(err, IOT_ERR_INTERNAL,
                         "database error: credentials hold a string that is not UTF-8");
}

static const char *sq_creds_sub_key(enum credential_type t)
{
    switch (t) {
    case CREDENTIAL_SAS:
        return "connection_string";
    case CREDENTIAL_AWS:
        return "aws";
    case CREDENTIAL_HTTP:
        return "http";
    default:
        return NULL;
    }
}

enum iot_err sq_credentials_encode(const struct credentials *c, char **out, struct iot_error *err)
{
    *out = NULL;
    const char *sub_key = sq_creds_sub_key(c->type);
    if (!sub_key)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: unknown credential type");
    enum iot_err rc = IOT_OK;
    json_t *root = json_object();
    json_t *sub = json_object();
    if (!root || !sub) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        goto out;
    }
    rc = sq_creds_encode_sub(c, sub, err);
    if (rc != IOT_OK)
        goto out;
    if (!sq_json_put_str(root, "type", credential_type_name(c->type)) ||
        json_object_set(root, sub_key, sub) != 0) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        goto out;
    }
    *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!*out)
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
out:
    json_decref(sub);
    json_decref(root);
    return rc;
}

/* Optional string member: absent or null -> NULL; anything but a string is malformed. */
static bool sq_json_get_str(const json_t *obj, const char *key, char **out, bool *nomem)
{
    *out = NULL;
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v))
        return false;
    *out = strdup(json_string_value(v));
    if (!*out)
        *nomem = true;
    return *out != NULL;
}

static enum iot_err sq_secret_decode(const json_t *obj, const char *key, struct secret *out,
                                     struct iot_error *err)
{
    const json_t *js = json_object_get(obj, key);
    if (!js || json_is_null(js))
        return IOT_OK; /* SECRET_EMPTY */
    const json_t *alg = json_object_get(js, "algorithm");
    const json_t *key_id = json_object_get(js, "key_id");
    const json_t *data = json_object_get(js, "data");
    if (!json_is_object(js) || !json_is_string(alg) || !json_is_string(data) ||
        (key_id && !json_is_integer(key_id)))
        return iot_error_set(err, IOT_ERR_INTERNAL, SQ_CREDS_MALFORMED);
    json_int_t kid = key_id ? json_integer_value(key_id) : 0;
    if (kid < INT32_MIN || kid > INT32_MAX)
        return iot_error_set(err, IOT_ERR_INTERNAL, SQ_CREDS_MALFORMED);
    size_t text_len = json_string_length(data);
    size_t cap = B64_DECODED_MAX(text_len) + 1;
    uint8_t *bytes = malloc(cap);
    if (!bytes)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    enum iot_err rc = IOT_OK;
    long n = b64_decode_std(json_string_value(data), text_len, bytes, cap, NULL);
    if (n < 0) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, SQ_CREDS_MALFORMED);
        goto out;
    }
    rc = secret_set_sealed(out, json_string_value(alg), key_id != NULL, (int32_t)kid, bytes,
                           (size_t)n);
    if (rc == IOT_ERR_NOMEM)
        iot_error_set(err, rc, "out of memory");
    else if (rc != IOT_OK)
        rc = iot_error_set(err, IOT_ERR_INTERNAL, SQ_CREDS_MALFORMED);
out:
    free(bytes);
    return rc;
}

static enum iot_err sq_creds_decode_sub(const json_t *sub, struct credentials *c,
                                        struct iot_error *err)
{
    bool nomem = false;
    bool ok = true;
    switch (c->type) {
    case CREDENTIAL_SAS:
        ok = sq_json_get_str(sub, "hostname", &c->sas.hostname, &nomem) &&
             sq_json_get_str(sub, "gateway_hostname", &c->sas.gateway_hostname, &nomem) &&
             sq_json_get_str(sub, "name", &c->sas.name, &nomem) &&
             sq_json_get_str(sub, "device_id", &c->sas.device_id, &nomem) &&
             sq_json_get_str(sub, "module_id", &c->sas.module_id, &nomem);
        if (ok)
            return sq_secret_decode(sub, "access_key", &c->sas.access_key, err);
        break;
    case CREDENTIAL_AWS:
        ok = sq_json_get_str(sub, "access_key_id", &c->aws.access_key_id, &nomem) &&
             sq_json_get_str(sub, "region", &c->aws.region, &nomem) &&
             sq_json_get_str(sub, "device_policy_name", &c->aws.device_policy_name, &nomem);
        if (ok)
            return sq_secret_decode(sub, "secret_access_key", &c->aws.secret_access_key, err);
        break;
    case CREDENTIAL_HTTP:
        ok = sq_json_get_str(sub, "url", &c->http.url, &nomem);
        if (ok)
            return sq_secret_decode(sub, "secret", &c->http.secret, err);
        break;
    default:
        break;
    }
    if (nomem)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    return iot_error_set(err, IOT_ERR_INTERNAL, SQ_CREDS_MALFORMED);
}

enum iot_err sq_credentials_decode(const char *text, struct credentials *out, struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    if (!text)
        return iot_error_set(err, IOT_ERR_INTERNAL, SQ_CREDS_MALFORMED);
    enum iot_err rc = IOT_OK;
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    const json_t *type = json_object_get(root, "type");
    if (!json_is_object(root) || !json_is_string(type) ||
        !credential_type_parse(json_string_value(type), &out->type)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, SQ_CREDS_MALFORMED);
        goto out;
    }
    const json_t *sub = json_object_get(root, sq_creds_sub_key(out->type));
    if (!json_is_object(sub)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, SQ_CREDS_MALFORMED);
        goto out;
    }
    rc = sq_creds_decode_sub(sub, out, err);
out:
    json_decref(root);
    if (rc != IOT_OK)
        credentials_clear(out);
    return rc;
}
