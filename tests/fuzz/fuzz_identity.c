/* Fuzzes identity_decode(), which turns the Authorization header or the JWT cookie of every
 * management request into an identity (gateway-trust mode: no signature check).
 *
 * Input: a first byte choosing where the rest goes, then the text.
 *   'A' Authorization header only, 'C' cookie only, 'B' both: header up to the first '\n', cookie
 *   after it; anything else: the rest as a bare token, sent as "Bearer <token>" and as a cookie.
 *
 * Invariants: success always carries a non-empty subject that equals the token's "sub" claim and
 * a tenant; failure leaves nothing behind; a token decodes the same from the header as from the
 * cookie; the header wins over the cookie. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz_common.h"
#include "iot-manager/identity.h"

static bool is_zero(const struct identity *id)
{
    static const struct identity zero;
    return memcmp(id, &zero, sizeof zero) == 0;
}

/* The claim as Go's decoder fills a struct field: names match case-insensitively, null leaves
 * the field alone and the last match wins (jansson iterates in document order). "" if none. */
static const char *claim_string(json_t *claims, const char *name)
{
    const char *found = "";
    const char *key;
    json_t *v;
    json_object_foreach(claims, key, v)
    {
        if (strcasecmp(key, name) != 0 || json_is_null(v))
            continue;
        FUZZ_CHECK(json_is_string(v));
        found = json_string_value(v);
    }
    return found;
}

/* Decodes and checks what holds for any outcome. Returns rc; `out` is cleared by the caller. */
static enum iot_err decode(const char *auth, const char *cookie, struct identity *out,
                           struct iot_error *err)
{
    memset(err, 0, sizeof *err);
    enum iot_err rc = identity_decode(auth, cookie, out, err);
    if (rc != IOT_OK) {
        FUZZ_CHECK(rc == IOT_ERR_UNAUTHORIZED && err->code == rc && err->msg[0]);
        FUZZ_CHECK(is_zero(out));
        return rc;
    }
    FUZZ_CHECK(out->subject && out->subject[0]);
    FUZZ_CHECK(out->tenant != NULL);
    FUZZ_CHECK(json_is_object(out->claims));
    FUZZ_CHECK(strcmp(out->subject, claim_string(out->claims, "sub")) == 0);
    FUZZ_CHECK(strcmp(out->tenant, claim_string(out->claims, "mender.tenant")) == 0);
    return rc;
}

static void check_same(const struct identity *a, const struct identity *b)
{
    FUZZ_CHECK(strcmp(a->subject, b->subject) == 0);
    FUZZ_CHECK(strcmp(a->tenant, b->tenant) == 0);
    FUZZ_CHECK(a->is_user == b->is_user && a->is_device == b->is_device);
    FUZZ_CHECK(json_equal(a->claims, b->claims));
}

static void run_token(const char *token)
{
    size_t n = strlen(token);
    char *auth = malloc(n + 8);
    FUZZ_CHECK(auth != NULL);
    memcpy(auth, "Bearer ", 7);
    memcpy(auth + 7, token, n + 1);

    struct identity via_header, via_cookie, both;
    struct iot_error err;
    enum iot_err rh = decode(auth, NULL, &via_header, &err);
    enum iot_err rc = decode(NULL, token, &via_cookie, &err);
    /* a token without spaces reads the same from either place */
    if (!strchr(token, ' ') && *token) {
        FUZZ_CHECK(rh == rc);
        if (rh == IOT_OK)
            check_same(&via_header, &via_cookie);
    }
    /* the header, when present, is the only one looked at */
    enum iot_err rb = decode(auth, "x.eyJzdWIiOiJjb29raWUifQ.x", &both, &err);
    FUZZ_CHECK(rb == rh);
    if (rb == IOT_OK)
        check_same(&both, &via_header);
    identity_clear(&via_header);
    identity_clear(&via_cookie);
    identity_clear(&both);
    free(auth);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    char *text = fuzz_cstr(data + 1, size - 1);
    struct identity id = {0};
    struct iot_error err;
    switch (data[0]) {
    case 'A':
        decode(text, NULL, &id, &err);
        identity_clear(&id);
        break;
    case 'C':
        decode(NULL, text, &id, &err);
        identity_clear(&id);
        break;
    case 'B': {
        char *nl = strchr(text, '\n');
        const char *cookie = "";
        if (nl) {
            *nl = '\0';
            cookie = nl + 1;
        }
        enum iot_err rc = decode(text, cookie, &id, &err);
        if (!*text) {
            /* an empty header counts as absent: the cookie decides */
            struct identity alone;
            struct iot_error e2;
            FUZZ_CHECK(decode(NULL, cookie, &alone, &e2) == rc);
            if (rc == IOT_OK)
                check_same(&id, &alone);
            identity_clear(&alone);
        }
        identity_clear(&id);
        break;
    }
    default:
        run_token(text);
        break;
    }
    FUZZ_CHECK(is_zero(&id));
    free(text);
    return 0;
}
