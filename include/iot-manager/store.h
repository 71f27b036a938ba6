/* The store port: everything the service keeps, behind one interface with two adapters
 * (MongoDB in Mender's exact layout, and an embedded SQLite file). Every call is scoped to a
 * tenant except the few maintenance calls that say otherwise. Calls are thread-safe.
 *
 * Errors: IOT_ERR_NOT_FOUND, IOT_ERR_CONFLICT (unique rule), IOT_ERR_UNAVAILABLE (the database
 * cannot be reached: the API answers 503), IOT_ERR_INTERNAL (anything else), with a message.
 */
#ifndef IOT_MANAGER_STORE_H
#define IOT_MANAGER_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include "iot-manager/error.h"
#include "iot-manager/model.h"

struct store;

enum store_migrate_mode {
    STORE_MIGRATE_CHECK, /* `server`: initialise an empty database; refuse an outdated one */
    STORE_MIGRATE_APPLY, /* `migrate`, `server --automigrate`: bring it up to date */
};

struct store_ops {
    const char *name; /* "mongo" or "sqlite" */
    enum iot_err (*ping)(struct store *st, struct iot_error *err);
    enum iot_err (*migrate)(struct store *st, enum store_migrate_mode mode, struct iot_error *err);
    enum iot_err (*integrations_list)(struct store *st, const char *tenant,
                                      struct integration_list *out, struct iot_error *err);
    enum iot_err (*integration_get)(struct store *st, const char *tenant, const struct uuid *id,
                                    struct integration *out, struct iot_error *err);
    enum iot_err (*integration_create)(struct store *st, const struct integration *in,
                                       struct iot_error *err);
    enum iot_err (*integration_set_credentials)(struct store *st, const char *tenant,
                                                const struct uuid *id,
                                                const struct credentials *creds,
                                                struct iot_error *err);
    enum iot_err (*integration_delete)(struct store *st, const char *tenant, const struct uuid *id,
                                       struct iot_error *err);
    enum iot_err (*integrations_for_each)(struct store *st,
                                          enum iot_err (*fn)(struct integration *in, void *ctx),
                                          void *ctx, struct iot_error *err);
    enum iot_err (*devices_count_linked)(struct store *st, const char *tenant,
                                         const struct uuid *integration_id, int64_t *count,
                                         struct iot_error *err);
    enum iot_err (*tenant_delete)(struct store *st, const char *tenant, struct iot_error *err);
    enum iot_err (*events_expire)(struct store *st, int64_t now_ms, int64_t *removed,
                                  struct iot_error *err);
    enum iot_err (*device_get)(struct store *st, const char *tenant, const char *device_id,
                               struct device_record *out, struct iot_error *err);
    /* Optional (NULL: the dispatcher reads the device record, then the integration). */
    enum iot_err (*device_integration_get)(struct store *st, const char *tenant,
                                           const char *device_id, const struct uuid *integration_id,
                                           struct integration *out, struct iot_error *err);
    enum iot_err (*device_link)(struct store *st, const char *tenant, const char *device_id,
                                const struct uuid *integration_id, struct iot_error *err);
    enum iot_err (*device_unlink)(struct store *st, const char *tenant, const char *device_id,
                                  const struct uuid *integration_id, struct iot_error *err);
    enum iot_err (*device_delete)(struct store *st, const char *tenant, const char *device_id,
                                  struct iot_error *err);
    enum iot_err (*devices_page)(struct store *st, const char *after_tenant, const char *after_id,
                                 size_t limit, struct device_list *out, struct iot_error *err);
    enum iot_err (*integration_unlink_all)(struct store *st, const char *tenant,
                                           const struct uuid *integration_id,
                                           struct iot_error *err);
    enum iot_err (*event_insert)(struct store *st, const struct event_record *ev,
                                 struct iot_error *err);
    enum iot_err (*events_list)(struct store *st, const char *tenant,
                                const struct uuid *integration_id, int64_t skip, int64_t limit,
                                struct event_list *out, struct iot_error *err);
    void (*destroy)(struct store *st);
};

struct metrics;

/* Adapters embed this as their first member (zero-initialised). */
struct store {
    const struct store_ops *ops;
    struct metrics *metrics; /* borrowed; NULL: no latency metrics */
};

/* Records every call's latency in `metrics` (iot_manager_store_operation_duration_seconds). */
void store_set_metrics(struct store *st, struct metrics *metrics);

struct store_mongo_options {
    const char *url;      /* mongodb://... ; must contain "://" */
    const char *dbname;   /* default "iot_manager" */
    const char *username; /* override URL credentials when set */
    const char *password;
    bool ssl;
    bool ssl_skipverify;
    int timeout_ms; /* server selection / connect / socket timeout */
};

struct store_sqlite_options {
    const char *path; /* database file; created when missing */
    int busy_timeout_ms;
};

/* Constructors: *out is owned by the caller and freed with store_destroy(). They do no I/O that
 * can block on a remote server (Mongo connects lazily), so start-up never hangs here. */
enum iot_err store_mongo_open(const struct store_mongo_options *opts, struct store **out,
                              struct iot_error *err);
enum iot_err store_sqlite_open(const struct store_sqlite_options *opts, struct store **out,
                               struct iot_error *err);

/* Migration target versions, as Mender's iot-manager records them in migration_info. */
#define STORE_SCHEMA_VERSION "1.2.0"

/* Thin dispatchers; see store_ops for the meaning. */
const char *store_name(const struct store *st);
enum iot_err store_ping(struct store *st, struct iot_error *err);
enum iot_err store_migrate(struct store *st, enum store_migrate_mode mode, struct iot_error *err);
/* Tenant's integrations sorted by provider then id; `out` owned by the caller. */
enum iot_err store_integrations_list(struct store *st, const char *tenant,
                                     struct integration_list *out, struct iot_error *err);
/* Integration `id` of `tenant` (NOT_FOUND otherwise); `out` owned by the caller. */
enum iot_err store_integration_get(struct store *st, const char *tenant, const struct uuid *id,
                                   struct integration *out, struct iot_error *err);
/* Inserts; CONFLICT when the tenant already has an integration. Secrets must be sealed. */
enum iot_err store_integration_create(struct store *st, const struct integration *in,
                                      struct iot_error *err);
/* Replaces the credentials wholesale; NOT_FOUND when no such integration. Secrets sealed. */
enum iot_err store_integration_set_credentials(struct store *st, const char *tenant,
                                               const struct uuid *id,
                                               const struct credentials *creds,
                                               struct iot_error *err);
enum iot_err store_integration_delete(struct store *st, const char *tenant, const struct uuid *id,
                                      struct iot_error *err);
/* Every integration of every tenant (maintenance: re-encrypt). `fn` may not call the store
 * re-entrantly for the same adapter connection; the adapters read everything first. */
enum iot_err store_integrations_for_each(struct store *st,
                                         enum iot_err (*fn)(struct integration *in, void *ctx),
                                         void *ctx, struct iot_error *err);
/* Number of device records of `tenant` linked to `integration_id`. */
enum iot_err store_devices_count_linked(struct store *st, const char *tenant,
                                        const struct uuid *integration_id, int64_t *count,
                                        struct iot_error *err);
/* Removes every record of the tenant in every collection/table. */
enum iot_err store_tenant_delete(struct store *st, const char *tenant, struct iot_error *err);
/* Removes events whose expiry is before `now_ms` (where no TTL index does it). */
enum iot_err store_events_expire(struct store *st, int64_t now_ms, int64_t *removed,
                                 struct iot_error *err);
/* The device's record (NOT_FOUND "device not found" when there is none). `out` caller-owned. */
enum iot_err store_device_get(struct store *st, const char *tenant, const char *device_id,
                              struct device_record *out, struct iot_error *err);
/* Integration `integration_id` of `tenant`, provided the device's record links it: NOT_FOUND
 * "integration not found" when the device is unknown, not linked to it or the integration is
 * gone. The twin endpoints' lookup, one read where the adapter can join. `out` caller-owned. */
enum iot_err store_device_integration_get(struct store *st, const char *tenant,
                                          const char *device_id, const struct uuid *integration_id,
                                          struct integration *out, struct iot_error *err);
/* Creates the record if needed and adds the integration to it (idempotent, as Mender's
 * $addToSet upsert). */
enum iot_err store_device_link(struct store *st, const char *tenant, const char *device_id,
                               const struct uuid *integration_id, struct iot_error *err);
/* Removes one integration from the device's record (the record stays, possibly empty).
 * Idempotent: an unknown device or integration is not an error. */
enum iot_err store_device_unlink(struct store *st, const char *tenant, const char *device_id,
                                 const struct uuid *integration_id, struct iot_error *err);
/* Removes the device's record (decommission, or DELETE /devices/{id}); NOT_FOUND when absent. */
enum iot_err store_device_delete(struct store *st, const char *tenant, const char *device_id,
                                 struct iot_error *err);
/* Every tenant's device records in (tenant_id, id) order, after the given position ("" and ""
 * from the start), at most `limit` (sync-devices). */
enum iot_err store_devices_page(struct store *st, const char *after_tenant, const char *after_id,
                                size_t limit, struct device_list *out, struct iot_error *err);
/* Removes the integration from every device record of the tenant (integration gone). */
enum iot_err store_integration_unlink_all(struct store *st, const char *tenant,
                                          const struct uuid *integration_id, struct iot_error *err);
/* Appends an event to the log (Mender's `log` layout on MongoDB). */
enum iot_err store_event_insert(struct store *st, const struct event_record *ev,
                                struct iot_error *err);
/* The tenant's events, newest first (event_ts desc, then id), optionally only those with a
 * delivery status for `integration_id` (NULL: all); skip/limit for paging. */
enum iot_err store_events_list(struct store *st, const char *tenant,
                               const struct uuid *integration_id, int64_t skip, int64_t limit,
                               struct event_list *out, struct iot_error *err);
void store_destroy(struct store *st);

#endif
