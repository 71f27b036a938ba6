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
#include "iot-manager/hub.h"
#include "iot-manager/jwt.h"
#include "iot-manager/metrics.h"
#include "iot-manager/model.h"
#include "iot-manager/rbac.h"
#include "iot-manager/store.h"

#define APP_WHITELIST_MAX 64

struct queue;         /* queue.h */
struct mender_client; /* configure.h */

struct app {
    const struct config *cfg; /* borrowed, outlives the app */
    struct store *store;      /* borrowed */
    struct crypto_keyring keyring;
    char whitelist_buf[CONFIG_LIST_MAX];
    const char *whitelist[APP_WHITELIST_MAX];
    size_t whitelist_len;
    struct connstr_rules connstr_rules;
    struct hub_client *hub;       /* borrowed; NULL where no hub calls are made */
    struct metrics *metrics;      /* borrowed; may be NULL */
    struct queue *queue;          /* borrowed; NULL when NATS is not configured (lifecycle.h) */
    struct mender_client *mender; /* borrowed; NULL where Configure is not called */
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

/* The same, only when the device's record links the integration (NOT_FOUND "integration not
 * found" when the device is unknown or not linked to it). */
enum iot_err app_device_integration_get(struct app *app, const char *tenant, const char *device_id,
                                        const struct uuid *id, struct integration *out,
                                        struct iot_error *err);

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

/* ---- device twins (Azure IoT Hub) ---- */

/* Twin state of one device in one integration: desired and reported properties with top-level
 * $metadata and $version removed, and the twin's etag (unquoted). */
struct device_state {
    json_t *desired;  /* owned reference */
    json_t *reported; /* owned reference */
    char etag[HUB_ETAG_MAX + 1];
};

void device_state_clear(struct device_state *st);

/* {"<integration id>": {"desired", "reported"}, ...} for every iot-hub integration the device is
 * linked to ({} when none). NOT_FOUND "device not found" when the device has no record. Hub
 * errors map as app_device_state_get. `out` is a new reference. */
enum iot_err app_device_states(struct app *app, const char *tenant, const char *device_id,
                               json_t **out, struct iot_error *err);

/* One integration's state. NOT_FOUND when the device is unknown or not linked to the integration
 * ("integration not found", as Mender), when the integration does not exist, or when the hub has
 * no such identity; UNAVAILABLE + retry_after_ms when the hub throttles; UPSTREAM when the hub is
 * unreachable, rejects our credentials or answers something unusable. `retry_after_ms` may be
 * NULL. */
enum iot_err app_device_state_get(struct app *app, const char *tenant, const char *device_id,
                                  const struct uuid *integration_id, struct device_state *out,
                                  int64_t *retry_after_ms, struct iot_error *err);

enum device_state_write { DEVICE_STATE_REPLACE, DEVICE_STATE_MERGE };

/* Replaces (PUT) or merges (PATCH, null deletes a key) the desired properties, validated against
 * Azure's twin rules first (INVALID). Without `if_match` a replace reads the twin and writes with
 * its etag: a concurrent change gives CONFLICT "conflict when updating the device state". With
 * `if_match` (the etag a client got from us) the hub checks it: a twin changed since gives
 * CONFLICT with `*precondition_failed` set (the API answers 412). Other errors as
 * app_device_state_get. `desired` is borrowed. */
enum iot_err app_device_state_write(struct app *app, const char *tenant, const char *device_id,
                                    const struct uuid *integration_id, enum device_state_write mode,
                                    json_t *desired, const char *if_match, struct device_state *out,
                                    bool *precondition_failed, int64_t *retry_after_ms,
                                    struct iot_error *err);

/* Checks desired properties against Azure's twin rules before any hub call: an object; keys not
 * empty, no '$' at the start, no '.', ' ' or control characters, at most 1 KB; depth at most 10;
 * strings at most 4 KB; integers within +-2^52; total size at most 32 KB (Azure's accounting).
 * `allow_null` permits null values (merge: null deletes). */
enum iot_err app_twin_validate_desired(const json_t *desired, bool allow_null,
                                       struct iot_error *err);

/* Unlinks the device from all its integrations without touching the hub (DELETE /devices/{id}).
 * NOT_FOUND "device not found" when it has no record. */
enum iot_err app_device_unlink_all(struct app *app, const char *tenant, const char *device_id,
                                   struct iot_error *err);

/* Brings pulled metrics (hub client totals, queue lag) up to date before a scrape. */
void app_metrics_refresh(struct app *app);

/* Removes expired events (where no TTL index does it). */
enum iot_err app_events_sweep(struct app *app, int64_t *removed, struct iot_error *err);

#endif
