/* The caller's identity, from a Mender JWT (gateway-trust mode: the API gateway verified the
 * signature; we decode the claims exactly as go-lib-micro's identity middleware does).
 * The seam for in-service verification and RBAC: identity_from_request() is the one place a
 * token becomes an identity. */
#ifndef IOT_MANAGER_IDENTITY_H
#define IOT_MANAGER_IDENTITY_H

#include <stdbool.h>
#include <jansson.h>

#include "iot-manager/error.h"

struct identity {
    char *subject;  /* "sub"; owned */
    char *tenant;   /* "mender.tenant", "" when absent; owned */
    bool is_user;   /* "mender.user" */
    bool is_device; /* "mender.device" */
    json_t *claims; /* all claims; owned reference */
};

/* Decodes a token as the identity middleware does. `authorization` is the Authorization header
 * (NULL when absent) and `cookie` the JWT cookie (NULL when absent). Errors are
 * IOT_ERR_UNAUTHORIZED with Mender's texts ("Authorization not present in header",
 * "malformed Authorization header", "unknown Authorization method <m>", "identity: incorrect token
 * format", "identity: failed to decode base64 JWT claims: ...", "identity: failed to decode JSON
 * JWT claims: ...", "identity: claim \"sub\" is required"). `out` is owned by the caller. */
enum iot_err identity_decode(const char *authorization, const char *cookie, struct identity *out,
                             struct iot_error *err);

void identity_clear(struct identity *id);

#endif
