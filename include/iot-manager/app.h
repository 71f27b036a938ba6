/* Business rules of the service, independent of HTTP, NATS and the database driver: it talks to
 * the store port, seals and opens secrets, and enforces Mender's integration rules. */
#ifndef IOT_MANAGER_APP_H
#define IOT_MANAGER_APP_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

#include "iot-manager/config.h"
#include "iot-manager/connstr.h"
#include "iot-manager/crypto.h"
#include "iot-manager/error.h"
#include "iot-manager/jwt.h"
#include "iot-manager/model.h"
#include "iot-manager/rbac.h"
#include "iot-manager/store.h"

#define APP_WHITELIST_MAX 64

struct app {
    const struct config *cfg; /* borrowed, outlives the app */
    struct store *store;      /* borrowed */
    struct crypto_keyring keyring;
    char whitelist_buf[CONFIG_LIST_MAX];
    const char *whitelist[APP_WHITELIST_MAX];
    size_t whitelist_len;
    struct connstr_rules connstr_rules;
    struct rbac_policy rbac;
    const struct jwt_keyset *jwt_keys; /* borrowed; NULL in gateway mode */
    struct jwt_verify_options jwt_opts;
};

/* Prepares `app`; keeps pointers to cfg and store. */
void app_init(struct app *app, const struct config *cfg, struct store *store,
              const struct crypto_keyring *keyring);

/* All of the tenant's integrations, sorted by provider then id, with secrets opened (plaintext:
 * callers render them masked). `out` is owned by the caller. A secret that does not open under
 * the configured keys is IOT_ERR_CRYPTO (never returned as garbage). */
enum iot_err app_integrations_list(struct app *app, const char *tenant,
                                   struct integration_list *out, struct iot_error *err);

/* One integration of the tenant with secrets opened; NOT_FOUND "integration not found". */
enum iot_err app_integration_get(struct app *app, const char *tenant, const struct uuid *id,
                                 struct integration *out, struct iot_error *err);

/* Creates an integration from a validated request (plaintext secrets in `in`, which is consumed:
 * its secrets are sealed in place). A new random id is written to `id_out`.
 * CONFLICT "integration already exists" when the tenant has one. */
enum iot_err app_integration_create(struct app *app, const char *tenant, struct integration *in,
                                    struct uuid *id_out, struct iot_error *err);

/* Replaces the credentials of integration `id` (plaintext in `creds`, consumed). The type must
 * match the provider. `masked_key` non-NULL: the client sent back the masked key we showed it;
 * when it equals the stored key's mask, the stored key is kept, otherwise INVALID. */
enum iot_err app_integration_set_credentials(struct app *app, const char *tenant,
                                             const struct uuid *id, struct credentials *creds,
                                             const char *masked_key, struct iot_error *err);

/* Deletes integration `id`; CONFLICT "cannot remove integration in use by devices" while an
 * iot-hub/iot-core integration has linked devices. */
enum iot_err app_integration_delete(struct app *app, const char *tenant, const struct uuid *id,
                                    struct iot_error *err);

/* Removes all of the tenant's data (integrations, devices, events). */
enum iot_err app_tenant_delete(struct app *app, const char *tenant, struct iot_error *err);

/* Re-seals every secret of every integration of every tenant with the keyring's primary key.
 * Counts are written when non-NULL. Stops at the first integration that cannot be opened. */
enum iot_err app_reencrypt(struct app *app, int64_t *done, struct iot_error *err);

/* Checks each configured dependency; fills `checks` (borrowed object) with name -> "ok" or the
 * problem. Returns IOT_OK when all are healthy, IOT_ERR_UNAVAILABLE otherwise. */
enum iot_err app_health(struct app *app, json_t *checks, struct iot_error *err);

/* Removes expired events (where no TTL index does it). */
enum iot_err app_events_sweep(struct app *app, int64_t *removed, struct iot_error *err);

#endif
