/* The store port's dispatchers: each forwards to the adapter's ops table and records how long
 * the call took (metrics); they change no argument, so both adapters see exactly what the
 * callers pass. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "iot-manager/metrics.h"
#include "iot-manager/store.h"

static int64_t store_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void store_observe(const struct store *st, const char *op, int64_t started_ns)
{
    if (!st->metrics)
        return;
    char labels[96];
    snprintf(labels, sizeof labels, "store=\"%s\",operation=\"%s\"", st->ops->name, op);
    metrics_observe(st->metrics, "iot_manager_store_operation_duration_seconds", labels,
                    (double)(store_now_ns() - started_ns) / 1e9);
}

#define STORE_TIMED(st, op, call)                                                                  \
    do {                                                                                           \
        int64_t started_ = store_now_ns();                                                         \
        enum iot_err rc_ = (call);                                                                 \
        store_observe((st), (op), started_);                                                       \
        return rc_;                                                                                \
    } while (0)

void store_set_metrics(struct store *st, struct metrics *metrics)
{
    if (st)
        st->metrics = metrics;
}

const char *store_name(const struct store *st)
{
    return st && st->ops ? st->ops->name : "none";
}

enum iot_err store_ping(struct store *st, struct iot_error *err)
{
    STORE_TIMED(st, "ping", st->ops->ping(st, err));
}

enum iot_err store_migrate(struct store *st, enum store_migrate_mode mode, struct iot_error *err)
{
    STORE_TIMED(st, "migrate", st->ops->migrate(st, mode, err));
}

enum iot_err store_integrations_list(struct store *st, const char *tenant,
                                     struct integration_list *out, struct iot_error *err)
{
    STORE_TIMED(st, "integrations_list", st->ops->integrations_list(st, tenant, out, err));
}

enum iot_err store_integration_get(struct store *st, const char *tenant, const struct uuid *id,
                                   struct integration *out, struct iot_error *err)
{
    STORE_TIMED(st, "integration_get", st->ops->integration_get(st, tenant, id, out, err));
}

enum iot_err store_integration_create(struct store *st, const struct integration *in,
                                      struct iot_error *err)
{
    STORE_TIMED(st, "integration_create", st->ops->integration_create(st, in, err));
}

enum iot_err store_integration_set_credentials(struct store *st, const char *tenant,
                                               const struct uuid *id,
                                               const struct credentials *creds,
                                               struct iot_error *err)
{
    STORE_TIMED(st, "integration_set_credentials",
                st->ops->integration_set_credentials(st, tenant, id, creds, err));
}

enum iot_err store_integration_delete(struct store *st, const char *tenant, const struct uuid *id,
                                      struct iot_error *err)
{
    STORE_TIMED(st, "integration_delete", st->ops->integration_delete(st, tenant, id, err));
}

enum iot_err store_integrations_for_each(struct store *st,
                                         enum iot_err (*fn)(struct integration *in, void *ctx),
                                         void *ctx, struct iot_error *err)
{
    STORE_TIMED(st, "integrations_for_each", st->ops->integrations_for_each(st, fn, ctx, err));
}

enum iot_err store_devices_count_linked(struct store *st, const char *tenant,
                                        const struct uuid *integration_id, int64_t *count,
                                        struct iot_error *err)
{
    STORE_TIMED(st, "devices_count_linked",
                st->ops->devices_count_linked(st, tenant, integration_id, count, err));
}

enum iot_err store_tenant_delete(struct store *st, const char *tenant, struct iot_error *err)
{
    STORE_TIMED(st, "tenant_delete", st->ops->tenant_delete(st, tenant, err));
}

enum iot_err store_events_expire(struct store *st, int64_t now_ms, int64_t *removed,
                                 struct iot_error *err)
{
    STORE_TIMED(st, "events_expire", st->ops->events_expire(st, now_ms, removed, err));
}

enum iot_err store_device_get(struct store *st, const char *tenant, const char *device_id,
                              struct device_record *out, struct iot_error *err)
{
    STORE_TIMED(st, "device_get", st->ops->device_get(st, tenant, device_id, out, err));
}

/* Two reads: for adapters that cannot join the device record and its integration. */
static enum iot_err device_integration_get_by_parts(struct store *st, const char *tenant,
                                                    const char *device_id,
                                                    const struct uuid *integration_id,
                                                    struct integration *out, struct iot_error *err)
{
    struct device_record dev = {0};
    enum iot_err rc = st->ops->device_get(st, tenant, device_id, &dev, err);
    if (rc != IOT_OK)
        return rc == IOT_ERR_NOT_FOUND ? iot_error_set(err, rc, "integration not found") : rc;
    bool linked = false;
    for (size_t i = 0; i < dev.n_integrations && !linked; i++)
        linked = uuid_equal(&dev.integration_ids[i], integration_id);
    device_record_clear(&dev);
    if (!linked)
        return iot_error_set(err, IOT_ERR_NOT_FOUND, "integration not found");
    rc = st->ops->integration_get(st, tenant, integration_id, out, err);
    if (rc == IOT_ERR_NOT_FOUND)
        return iot_error_set(err, rc, "integration not found");
    return rc;
}

enum iot_err store_device_integration_get(struct store *st, const char *tenant,
                                          const char *device_id, const struct uuid *integration_id,
                                          struct integration *out, struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    if (st->ops->device_integration_get)
        STORE_TIMED(
            st, "device_integration_get",
            st->ops->device_integration_get(st, tenant, device_id, integration_id, out, err));
    STORE_TIMED(st, "device_integration_get",
                device_integration_get_by_parts(st, tenant, device_id, integration_id, out, err));
}

enum iot_err store_device_link(struct store *st, const char *tenant, const char *device_id,
                               const struct uuid *integration_id, struct iot_error *err)
{
    STORE_TIMED(st, "device_link",
                st->ops->device_link(st, tenant, device_id, integration_id, err));
}

enum iot_err store_device_unlink(struct store *st, const char *tenant, const char *device_id,
                                 const struct uuid *integration_id, struct iot_error *err)
{
    STORE_TIMED(st, "device_unlink",
                st->ops->device_unlink(st, tenant, device_id, integration_id, err));
}

enum iot_err store_device_delete(struct store *st, const char *tenant, const char *device_id,
                                 struct iot_error *err)
{
    STORE_TIMED(st, "device_delete", st->ops->device_delete(st, tenant, device_id, err));
}

enum iot_err store_devices_page(struct store *st, const char *after_tenant, const char *after_id,
                                size_t limit, struct device_list *out, struct iot_error *err)
{
    STORE_TIMED(st, "devices_page",
                st->ops->devices_page(st, after_tenant, after_id, limit, out, err));
}

enum iot_err store_integration_unlink_all(struct store *st, const char *tenant,
                                          const struct uuid *integration_id, struct iot_error *err)
{
    STORE_TIMED(st, "integration_unlink_all",
                st->ops->integration_unlink_all(st, tenant, integration_id, err));
}

enum iot_err store_event_insert(struct store *st, const struct event_record *ev,
                                struct iot_error *err)
{
    STORE_TIMED(st, "event_insert", st->ops->event_insert(st, ev, err));
}

enum iot_err store_events_list(struct store *st, const char *tenant,
                               const struct uuid *integration_id, int64_t skip, int64_t limit,
                               struct event_list *out, struct iot_error *err)
{
    STORE_TIMED(st, "events_list",
                st->ops->events_list(st, tenant, integration_id, skip, limit, out, err));
}

void store_destroy(struct store *st)
{
    if (st && st->ops && st->ops->destroy)
        st->ops->destroy(st);
}
