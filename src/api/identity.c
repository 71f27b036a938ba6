#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "iot-manager/b64.h"
#include "iot-manager/identity.h"
#include "iot-manager/model.h"

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

/* The claims go-lib-micro's Identity struct declares with a scalar type. encoding/json matches
 * keys case-insensitively, keeps the last of duplicate keys, leaves a field alone on null, and
 * reports the first type mismatch in document order. */
enum claim_slot {
    CLAIM_SUB,
    CLAIM_TENANT,
    CLAIM_PLAN,
    CLAIM_USER,
    CLAIM_DEVICE,
    CLAIM_TRIAL,
    CLAIM__N
};

static const struct {
    const char *name;
    bool is_bool; /* else string */
} claim_fields[CLAIM__N] = {
    [CLAIM_SUB] = {"sub", false},
    [CLAIM_TENANT] = {"mender.tenant", false},
    [CLAIM_PLAN] = {"mender.plan", false},
    [CLAIM_USER] = {"mender.user", true},
    [CLAIM_DEVICE] = {"mender.device", true},
    [CLAIM_TRIAL] = {"mender.trial", true},
};

static enum iot_err claims_collect(json_t *claims, json_t *slots[CLAIM__N], struct iot_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(claims, key, v)
    {
        for (int f = 0; f < CLAIM__N; f++) {
            if (strcasecmp(key, claim_fields[f].name) != 0)
                continue;
            if (json_is_null(v))
                break;
            bool ok = claim_fields[f].is_bool ? json_is_boolean(v) : json_is_string(v);
            if (!ok)
                return iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                                     "identity: failed to decode JSON JWT claims: json: cannot "
                                     "unmarshal %s into Go struct field Identity.%s of type %s",
                                     go_json_type_name(v), claim_fields[f].name,
                                     claim_fields[f].is_bool ? "bool" : "string");
            slots[f] = v;
            break;
        }
    }
    return IOT_OK;
}

enum iot_err identity_decode(const char *authorization, const char *cookie, struct identity *out,
                             struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    const char *token = NULL;
    char scheme[64];
    /* Go's Header.Get cannot tell an empty header from a missing one: both fall back to the
     * cookie. */
    if (authorization && *authorization) {
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
    json_t *claims =
        json_loadb((const char *)raw, (size_t)n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    free(raw);
    if (!claims)
        return iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                             "identity: failed to decode JSON JWT claims: %s", jerr.text);
    if (json_is_null(claims)) {
        /* null decodes into Go's struct as a no-op: a claim set without "sub" */
        json_decref(claims);
        if (!(claims = json_object()))
            return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    }
    enum iot_err rc = IOT_OK;
    if (!json_is_object(claims)) {
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED,
                           "identity: failed to decode JSON JWT claims: json: cannot unmarshal %s "
                           "into Go value of type identity.Identity",
                           go_json_type_name(claims));
        goto out;
    }

    json_t *slots[CLAIM__N] = {NULL};
    if ((rc = claims_collect(claims, slots, err)) != IOT_OK)
        goto out;
    json_t *sub = slots[CLAIM_SUB];
    json_t *tenant = slots[CLAIM_TENANT];
    if (!sub || json_string_length(sub) == 0) {
        rc = iot_error_set(err, IOT_ERR_UNAUTHORIZED, "identity: claim \"sub\" is required");
        goto out;
    }
    out->is_user = json_is_true(slots[CLAIM_USER]);
    out->is_device = json_is_true(slots[CLAIM_DEVICE]);
    out->subject = strdup(json_string_value(sub));
    out->tenant = strdup(tenant ? json_string_value(tenant) : "");
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
