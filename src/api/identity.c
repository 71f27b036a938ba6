#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "iot-manager/b64.h"
#include "iot-manager/identity.h"

void identity_clear(struct identity *id)
{
    if (!id)
        return;
    free(id->subject);
    free(id->tenant);
    json_decref(id->claims);
    memset(id, 0, sizeof *id);
}

/* Offset of the first byte that base64url without padding (Go's RawURLEncoding) rejects. */
static size_t raw_url_bad_offset(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        if (!ok)
            return i;
    }
    return len % 4 == 1 ? len - 1 : len;
}

static enum iot_err bool_claim(json_t *claims, const char *name, bool *out, struct iot_error *err)
{
    json_t *v = json_object_get(claims, name);
    *out = false;
    if (!v || json_is_null(v))
        return IOT_OK;
    if (!json_is_boolean(v))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                             "identity: failed to decode JSON JWT claims: json: cannot unmarshal "
                             "%s into Go struct field Identity.%s of type bool",
                             json_is_string(v)   ? "string"
                             : json_is_number(v) ? "number"
                                                 : "value",
                             name);
    *out = json_is_true(v);
    return IOT_OK;
}

enum iot_err identity_decode(const char *authorization, const char *cookie, struct identity *out,
                             struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    const char *token = NULL;
    char scheme[64];
    if (authorization) {
        const char *space = strchr(authorization, ' ');
        if (!space || strchr(space + 1, ' '))
            return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "malformed Authorization header");
        size_t slen = (size_t)(space - authorization);
        if (slen >= sizeof scheme)
            slen = sizeof scheme - 1;
        memcpy(scheme, authorization, slen);
        scheme[slen] = '\0';
        if (strcasecmp(scheme, "Bearer") != 0)
            return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "unknown Authorization method %s",
                                 scheme);
        token = space + 1;
    } else if (cookie) {
        token = cookie;
    } else {
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "Authorization not present in header");
    }

    const char *dot1 = strchr(token, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot1 || !dot2 || strchr(dot2 + 1, '.'))
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED, "identity: incorrect token format");

    const char *seg = dot1 + 1;
    size_t seglen = (size_t)(dot2 - seg);
    size_t bad = raw_url_bad_offset(seg, seglen);
    if (bad < seglen)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                             "identity: failed to decode base64 JWT claims: illegal base64 data at "
                             "input byte %zu",
                             bad);
    size_t cap = B64_DECODED_MAX(seglen) + 1;
    uint8_t *raw = malloc(cap);
    if (!raw)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    long n = b64_decode_any(seg, seglen, raw, cap);
    if (n < 0) {
        free(raw);
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                             "identity: failed to decode base64 JWT claims: illegal base64 data at "
                             "input byte %zu",
                             seglen);
    }
    json_error_t jerr;
    json_t *claims = json_loadb((const char *)raw, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    free(raw);
    if (!claims || !json_is_object(claims)) {
        json_decref(claims);
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                             "identity: failed to decode JSON JWT claims: %s",
                             claims ? "json: cannot unmarshal non-object into Go value of type "
                                      "identity.Identity"
                                    : jerr.text);
    }

    enum iot_err rc = IOT_OK;
    json_t *sub = json_object_get(claims, "sub");
    json_t *tenant = json_object_get(claims, "mender.tenant");
    if ((sub && !json_is_string(sub) && !json_is_null(sub)) ||
        (tenant && !json_is_string(tenant) && !json_is_null(tenant))) {
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                           "identity: failed to decode JSON JWT claims: json: cannot unmarshal "
                           "value into Go struct field of type string");
        goto out;
    }
    if (!json_is_string(sub) || json_string_length(sub) == 0) {
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED, "identity: claim \"sub\" is required");
        goto out;
    }
    if ((rc = bool_claim(claims, "mender.user", &out->is_user, err)) != IOT_OK ||
        (rc = bool_claim(claims, "mender.device", &out->is_device, err)) != IOT_OK)
        goto out;
    out->subject = strdup(json_string_value(sub));
    out->tenant = strdup(json_is_string(tenant) ? json_string_value(tenant) : "");
    if (!out->subject || !out->tenant) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        goto out;
    }
    out->claims = claims;
    claims = NULL;
out:
    json_decref(claims);
    if (rc != IOT_OK)
        identity_clear(out);
    return rc;
}
