/* BSON form of Mender's integrations documents (contract §2.1, §6). Field names and order are
 * Mender's, including the `device_policydevice_policy_name` typo of its AWS model. */
#include <stdlib.h>
#include <string.h>

#include "store/mongo/mongo_internal.h"

/* Mender's bson tag typo for the AWS device policy name; the correct spelling is also read. */
#define AWS_POLICY_FIELD_MENDER "device_policydevice_policy_name"
#define AWS_POLICY_FIELD_PLAIN  "device_policy_name"

/* A BSON document cannot be larger than this; bigger secrets are a broken invariant. */
#define BSON_VALUE_MAX (16u * 1024u * 1024u)

bool mongo_append_uuid(bson_t *doc, const char *key, const struct uuid *u)
{
    return BSON_APPEND_BINARY(doc, key, BSON_SUBTYPE_UUID, u->b, sizeof u->b);
}

bool mongo_append_uuid_match(bson_t *doc, const char *key, const struct uuid *u)
{
    bson_t cond, list;
    bool ok = BSON_APPEND_DOCUMENT_BEGIN(doc, key, &cond);
    ok = ok && BSON_APPEND_ARRAY_BEGIN(&cond, "$in", &list);
    ok = ok && BSON_APPEND_BINARY(&list, "0", BSON_SUBTYPE_UUID, u->b, sizeof u->b);
    ok = ok && BSON_APPEND_BINARY(&list, "1", BSON_SUBTYPE_UUID_DEPRECATED, u->b, sizeof u->b);
    ok = ok && bson_append_array_end(&cond, &list);
    ok = ok && bson_append_document_end(doc, &cond);
    return ok;
}

bool mongo_iter_uuid(const bson_iter_t *it, struct uuid *out)
{
    if (!BSON_ITER_HOLDS_BINARY(it))
        return false;
    bson_subtype_t subtype;
    uint32_t len = 0;
    const uint8_t *data = NULL;
    bson_iter_binary(it, &subtype, &len, &data);
    if (len != sizeof out->b || !data)
        return false;
    if (subtype != BSON_SUBTYPE_UUID && subtype != BSON_SUBTYPE_UUID_DEPRECATED &&
        subtype != BSON_SUBTYPE_BINARY)
        return false;
    memcpy(out->b, data, sizeof out->b);
    return true;
}

/* ---- encoding ---- */

static bool append_str(bson_t *doc, const char *key, const char *value)
{
    return BSON_APPEND_UTF8(doc, key, value ? value : "");
}

/* Mender's `omitempty`: absent and empty strings are not written. */
static bool append_str_omitempty(bson_t *doc, const char *key, const char *value)
{
    if (!value || !*value)
        return true;
    return BSON_APPEND_UTF8(doc, key, value);
}

static enum iot_err check_secret(const struct secret *s, struct iot_error *err)
{
    if (s->state == SECRET_EMPTY)
        return IOT_OK;
    if (s->state != SECRET_SEALED)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: refusing to write an unsealed secret");
    if (s->len > BSON_VALUE_MAX || (s->len && !s->data))
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: invalid sealed secret");
    return IOT_OK;
}

/* `s` was accepted by check_secret(). */
static enum iot_err append_secret(bson_t *parent, const char *key, const struct secret *s,
                                  struct iot_error *err)
{
    if (s->state == SECRET_EMPTY)
        return IOT_OK;
    bson_t child;
    bool ok = BSON_APPEND_DOCUMENT_BEGIN(parent, key, &child);
    ok = ok && BSON_APPEND_UTF8(&child, "algorithm", s->algorithm);
    if (s->has_key_id)
        ok = ok && BSON_APPEND_INT32(&child, "key_id", s->key_id);
    /* bson wants a valid pointer even for zero bytes */
    static const uint8_t none[1] = {0};
    ok = ok && BSON_APPEND_BINARY(&child, "data", BSON_SUBTYPE_BINARY, s->len ? s->data : none,
                                  (uint32_t)s->len);
    ok = ok && bson_append_document_end(parent, &child);
    if (!ok)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot encode secret");
    return IOT_OK;
}

enum iot_err mongo_append_credentials(bson_t *parent, const char *key, const struct credentials *c,
                                      struct iot_error *err)
{
    enum iot_err rc = IOT_OK;
    bson_t creds, sub;
    /* Everything that can be refused is checked before `parent` is touched. */
    switch (c->type) {
    case CREDENTIAL_SAS:
        rc = check_secret(&c->sas.access_key, err);
        break;
    case CREDENTIAL_AWS:
        rc = check_secret(&c->aws.secret_access_key, err);
        break;
    case CREDENTIAL_HTTP:
        rc = check_secret(&c->http.secret, err);
        break;
    default:
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: unknown credential type");
    }
    if (rc != IOT_OK)
        return rc;
    bool ok = BSON_APPEND_DOCUMENT_BEGIN(parent, key, &creds);
    ok = ok && BSON_APPEND_UTF8(&creds, "type", credential_type_name(c->type));
    if (!ok)
        goto overflow;

    switch (c->type) {
    case CREDENTIAL_SAS:
        ok = BSON_APPEND_DOCUMENT_BEGIN(&creds, "connection_string", &sub);
        ok = ok && append_str(&sub, "hostname", c->sas.hostname);
        ok = ok && append_str_omitempty(&sub, "gateway_hostname", c->sas.gateway_hostname);
        ok = ok && append_str_omitempty(&sub, "name", c->sas.name);
        ok = ok && append_str_omitempty(&sub, "device_id", c->sas.device_id);
        ok = ok && append_str_omitempty(&sub, "module_id", c->sas.module_id);
        if (!ok)
            goto overflow;
        rc = append_secret(&sub, "access_key", &c->sas.access_key, err);
        break;
    case CREDENTIAL_AWS:
        ok = BSON_APPEND_DOCUMENT_BEGIN(&creds, "aws", &sub);
        ok = ok && append_str(&sub, "access_key_id", c->aws.access_key_id);
        if (!ok)
            goto overflow;
        rc = append_secret(&sub, "secret_access_key", &c->aws.secret_access_key, err);
        if (rc != IOT_OK)
            break;
        ok = append_str(&sub, "region", c->aws.region);
        ok = ok && append_str(&sub, AWS_POLICY_FIELD_MENDER, c->aws.device_policy_name);
        break;
    case CREDENTIAL_HTTP:
    default:
        ok = BSON_APPEND_DOCUMENT_BEGIN(&creds, "http", &sub);
        ok = ok && append_str(&sub, "url", c->http.url);
        if (!ok)
            goto overflow;
        rc = append_secret(&sub, "secret", &c->http.secret, err);
        break;
    }
    if (rc != IOT_OK)
        return rc;
    ok = ok && bson_append_document_end(&creds, &sub);
    ok = ok && bson_append_document_end(parent, &creds);
    if (ok)
        return IOT_OK;
overflow:
    return iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot encode credentials");
}

enum iot_err mongo_integration_to_bson(const struct integration *in, bson_t *doc,
                                       struct iot_error *err)
{
    if ((unsigned)in->provider >= PROVIDER__COUNT)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: unknown integration provider");
    bool ok = mongo_append_uuid(doc, "_id", &in->id);
    ok = ok && BSON_APPEND_UTF8(doc, "provider", provider_name(in->provider));
    if (!ok)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot encode integration");
    enum iot_err rc = mongo_append_credentials(doc, "credentials", &in->credentials, err);
    if (rc != IOT_OK)
        return rc;
    ok = append_str_omitempty(doc, "description", in->description);
    ok = ok && append_str(doc, "tenant_id", in->tenant_id);
    if (!ok)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot encode integration");
    return IOT_OK;
}

/* ---- decoding ---- */

/* Finds `key` in `doc` wherever it is (field order of stored documents is not trusted). */
static bool find_field(const bson_t *doc, const char *key, bson_iter_t *it)
{
    return bson_iter_init_find(it, doc, key);
}

/* Views the sub-document under `key` as `sub` (borrowing `doc`'s memory). */
static bool find_subdoc(const bson_t *doc, const char *key, bson_t *sub)
{
    bson_iter_t it;
    if (!find_field(doc, key, &it) || !BSON_ITER_HOLDS_DOCUMENT(&it))
        return false;
    uint32_t len = 0;
    const uint8_t *data = NULL;
    bson_iter_document(&it, &len, &data);
    return bson_init_static(sub, data, len);
}

/* Copies the string under `key` into *out: NULL when absent or empty if `optional`, "" when
 * absent otherwise. Anything but a string where a string belongs is an error. */
static enum iot_err read_str(const bson_t *doc, const char *key, bool optional, char **out,
                             struct iot_error *err)
{
    bson_iter_t it;
    const char *value = "";
    *out = NULL;
    if (find_field(doc, key, &it) && !BSON_ITER_HOLDS_NULL(&it)) {
        if (!BSON_ITER_HOLDS_UTF8(&it))
            return iot_error_set(err, IOT_ERR_INTERNAL, "store: field %s is not a string", key);
        value = bson_iter_utf8(&it, NULL);
    }
    if (optional && !*value)
        return IOT_OK;
    *out = strdup(value);
    return *out ? IOT_OK : iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
}

static enum iot_err read_secret(const bson_t *doc, const char *key, struct secret *out,
                                struct iot_error *err)
{
    bson_t sub;
    bson_iter_t it;
    secret_clear(out);
    if (!find_subdoc(doc, key, &sub))
        return IOT_OK; /* absent: SECRET_EMPTY */

    const char *algorithm = "";
    if (find_field(&sub, "algorithm", &it) && BSON_ITER_HOLDS_UTF8(&it))
        algorithm = bson_iter_utf8(&it, NULL);
    if (strlen(algorithm) >= SECRET_ALG_MAX)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: secret algorithm name too long");

    bool has_key_id = false;
    int32_t key_id = 0;
    if (find_field(&sub, "key_id", &it)) {
        if (!BSON_ITER_HOLDS_NUMBER(&it))
            return iot_error_set(err, IOT_ERR_INTERNAL, "store: secret key_id is not a number");
        int64_t v = bson_iter_as_int64(&it);
        if (v < INT32_MIN || v > INT32_MAX)
            return iot_error_set(err, IOT_ERR_INTERNAL, "store: secret key_id out of range");
        has_key_id = true;
        key_id = (int32_t)v;
    }

    const uint8_t *data = NULL;
    uint32_t len = 0;
    if (find_field(&sub, "data", &it)) {
        if (!BSON_ITER_HOLDS_BINARY(&it))
            return iot_error_set(err, IOT_ERR_INTERNAL, "store: secret data is not binary");
        bson_subtype_t subtype;
        bson_iter_binary(&it, &subtype, &len, &data);
    }
    enum iot_err rc = secret_set_sealed(out, algorithm, has_key_id, key_id, data, len);
    if (rc != IOT_OK)
        return iot_error_set(err, rc, "store: cannot load secret");
    return IOT_OK;
}

static enum iot_err read_sas(const bson_t *creds, struct credentials_sas *sas,
                             struct iot_error *err)
{
    bson_t cs;
    if (!find_subdoc(creds, "connection_string", &cs))
        return iot_error_set(err, IOT_ERR_INTERNAL,
                             "store: sas credentials without connection_string");
    enum iot_err rc = read_str(&cs, "hostname", false, &sas->hostname, err);
    if (rc == IOT_OK)
        rc = read_str(&cs, "gateway_hostname", true, &sas->gateway_hostname, err);
    if (rc == IOT_OK)
        rc = read_str(&cs, "name", true, &sas->name, err);
    if (rc == IOT_OK)
        rc = read_str(&cs, "device_id", true, &sas->device_id, err);
    if (rc == IOT_OK)
        rc = read_str(&cs, "module_id", true, &sas->module_id, err);
    if (rc == IOT_OK)
        rc = read_secret(&cs, "access_key", &sas->access_key, err);
    return rc;
}

static enum iot_err read_aws(const bson_t *creds, struct credentials_aws *aws,
                             struct iot_error *err)
{
    bson_t sub;
    bson_iter_t it;
    if (!find_subdoc(creds, "aws", &sub))
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: aws credentials without aws document");
    enum iot_err rc = read_str(&sub, "access_key_id", false, &aws->access_key_id, err);
    if (rc == IOT_OK)
        rc = read_secret(&sub, "secret_access_key", &aws->secret_access_key, err);
    if (rc == IOT_OK)
        rc = read_str(&sub, "region", false, &aws->region, err);
    if (rc == IOT_OK) {
        const char *field = find_field(&sub, AWS_POLICY_FIELD_MENDER, &it) ? AWS_POLICY_FIELD_MENDER
                                                                           : AWS_POLICY_FIELD_PLAIN;
        rc = read_str(&sub, field, false, &aws->device_policy_name, err);
    }
    return rc;
}

static enum iot_err read_http(const bson_t *creds, struct credentials_http *http,
                              struct iot_error *err)
{
    bson_t sub;
    if (!find_subdoc(creds, "http", &sub))
        return iot_error_set(err, IOT_ERR_INTERNAL,
                             "store: http credentials without http document");
    enum iot_err rc = read_str(&sub, "url", false, &http->url, err);
    if (rc == IOT_OK)
        rc = read_secret(&sub, "secret", &http->secret, err);
    return rc;
}

static enum iot_err read_credentials(const bson_t *doc, struct credentials *c,
                                     struct iot_error *err)
{
    bson_t creds;
    bson_iter_t it;
    if (!find_subdoc(doc, "credentials", &creds))
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: integration without credentials");
    if (!find_field(&creds, "type", &it) || !BSON_ITER_HOLDS_UTF8(&it) ||
        !credential_type_parse(bson_iter_utf8(&it, NULL), &c->type))
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: unknown credential type");
    switch (c->type) {
    case CREDENTIAL_SAS:
        return read_sas(&creds, &c->sas, err);
    case CREDENTIAL_AWS:
        return read_aws(&creds, &c->aws, err);
    case CREDENTIAL_HTTP:
    default:
        return read_http(&creds, &c->http, err);
    }
}

enum iot_err mongo_integration_from_bson(const bson_t *doc, struct integration *out,
                                         struct iot_error *err)
{
    bson_iter_t it;
    enum iot_err rc = IOT_OK;
    memset(out, 0, sizeof *out);

    if (!find_field(doc, "_id", &it) || !mongo_iter_uuid(&it, &out->id)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "store: integration with an invalid _id");
        goto out;
    }
    if (!find_field(doc, "provider", &it) || !BSON_ITER_HOLDS_UTF8(&it) ||
        !provider_parse(bson_iter_utf8(&it, NULL), &out->provider)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "store: integration with an unknown provider");
        goto out;
    }
    rc = read_credentials(doc, &out->credentials, err);
    if (rc == IOT_OK)
        rc = read_str(doc, "description", true, &out->description, err);
    if (rc == IOT_OK)
        rc = read_str(doc, "tenant_id", false, &out->tenant_id, err);
out:
    if (rc != IOT_OK)
        integration_clear(out);
    return rc;
}
