/* sync-devices: brings the tenants' IoT Hubs (and our device records) in line with Mender's
 * deviceauth, batch by batch, in the original's call order (contract §4.7, §8.2), or with bulk
 * registry calls (--bulk). See include/iot-manager/sync.h and docs/operations.md. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iot-manager/b64.h"
#include "iot-manager/configure.h"
#include "iot-manager/crypto.h"
#include "iot-manager/lifecycle.h"
#include "iot-manager/log.h"
#include "iot-manager/queue.h"
#include "iot-manager/sync.h"

#define STATE_CAS_ATTEMPTS   8
#define GENERATED_KEY_BYTES  32
#define GENERATED_KEY_B64    (B64_ENCODED_LEN(GENERATED_KEY_BYTES) + 1)
#define PROGRESS_INTERVAL_MS 200
/* Room left in a query for "SELECT * FROM devices WHERE devices.deviceId IN [" and "]". */
#define QUERY_OVERHEAD 128

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

enum iot_err sync_batch_size_parse(const char *text, size_t *out, struct iot_error *err)
{
    const char *p = text ? text : "";
    size_t digits = strspn(p, "0123456789");
    if (digits == 0 || p[digits] != '\0')
        return iot_error_set(err, IOT_ERR_INVALID,
                             "invalid flag 'batch-size': must be a positive integer");
    errno = 0;
    unsigned long long v = strtoull(p, NULL, 10);
    if (errno == 0 && v == 0)
        return iot_error_set(err, IOT_ERR_INVALID,
                             "invalid flag 'batch-size': must be a positive integer");
    if (errno == ERANGE || v > SYNC_BATCH_MAX)
        return iot_error_set(err, IOT_ERR_INVALID,
                             "invalid flag 'batch-size': must be less than %d", SYNC_BATCH_MAX);
    *out = (size_t)v;
    return IOT_OK;
}

void sync_summary_print(const struct sync_summary *s, bool dry_run, FILE *out)
{
    fprintf(out,
            "sync-devices%s: %" PRIu64 " devices checked: %" PRIu64 " created, %" PRIu64
            " enabled, %" PRIu64 " disabled, %" PRIu64 " deleted, %" PRIu64 " unlinked, %" PRIu64
            " skipped, %" PRIu64 " failed\n",
            dry_run ? " (dry run, nothing changed)" : "", s->checked, s->created, s->enabled,
            s->disabled, s->deleted, s->unlinked, s->skipped, s->failed);
    fflush(out);
}

/* ---- run state, reporting ---- */

struct sync {
    struct app *app;
    const struct sync_options *o;
    struct sync_summary *sum;
    struct iot_error *err; /* the caller's: the failure that stopped the run */
    bool stop;
    int64_t progress_at;
    /* The current tenant's integrations (a batch never mixes tenants). */
    char *tenant;
    struct integration_list ins;
    enum iot_err ins_rc;
    char ins_msg[IOT_ERROR_MSG_MAX];
};

/* Where the changes go: one iot-hub integration of one tenant. */
struct target {
    const char *tenant;
    const struct integration *in;
    struct connstr cs; /* borrowed view of the integration's credentials */
};

/* One device of a batch, as deviceauth and the hub see it. */
struct item {
    const char *id;     /* borrowed */
    const char *status; /* Mender's status; NULL: deviceauth does not know the device */
    bool in_hub;
    enum hub_device_status hub; /* the twin's status when in_hub */
    bool failed;                /* its hub query failed: leave it for the next run */
};

struct lease {
    bool held;
    char key[LIFECYCLE_KEY_MAX];
    uint64_t rev;
    int64_t at;
};

static void progress(struct sync *s, bool final)
{
    if (!s->o->progress)
        return;
    int64_t now = now_ms();
    if (!final && now - s->progress_at < PROGRESS_INTERVAL_MS)
        return;
    s->progress_at = now;
    const struct sync_summary *m = s->sum;
    fprintf(s->o->progress,
            "\rsync-devices: %" PRIu64 " checked, %" PRIu64 " changed, %" PRIu64
            " skipped, %" PRIu64 " failed   %s",
            m->checked, m->created + m->enabled + m->disabled + m->deleted + m->unlinked,
            m->skipped, m->failed, final ? "\n" : "");
    fflush(s->o->progress);
}

/* A planned change: a plan line in a dry run, a log line otherwise. */
static void note(struct sync *s, const char *tenant, const char *device, const char *action,
                 const char *detail)
{
    if (s->o->dry_run) {
        fprintf(s->o->out, "plan: tenant=%s device=%s action=%s (%s)\n", tenant, device, action,
                detail);
        return;
    }
    log_write(LOG_LEVEL_INFO, NULL, tenant, "sync-devices: device %s: %s (%s)", device, action,
              detail);
}

static void failed(struct sync *s, const char *tenant, const char *device, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void failed(struct sync *s, const char *tenant, const char *device, const char *fmt, ...)
{
    char msg[IOT_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->sum->failed++;
    log_write(LOG_LEVEL_ERROR, NULL, tenant, "sync-devices: device %s: %s", device, msg);
    if (s->o->fail_early && !s->stop) {
        s->stop = true;
        iot_error_set(s->err, IOT_ERR_UPSTREAM, "device %.200s: %s", device, msg);
    }
}

/* An entry in the tenant's event log, as the workers write them. */
static void log_change(struct sync *s, const struct target *t, const char *device, const char *type,
                       const char *status, bool success, const char *error, int status_code)
{
    json_t *data = status ? json_pack("{s:s, s:s}", "id", device, "status", status)
                          : json_pack("{s:s}", "id", device);
    struct lifecycle_log_entry e = {
        .tenant_id = t->tenant,
        .device_id = device,
        .type = type,
        .data = data,
        .integration_id = &t->in->id,
        .success = success,
        .error = error,
        .status_code = status_code,
        .exp_s = s->o->event_exp_s,
    };
    lifecycle_event_log(s->app, &e);
    json_decref(data);
}

static enum hub_device_status wanted(const char *mender_status)
{
    return lifecycle_status_enables(mender_status) ? HUB_STATUS_ENABLED : HUB_STATUS_DISABLED;
}

/* ---- leases (shared with the lifecycle workers) ---- */

enum take { TAKE_OK, TAKE_SKIP, TAKE_FAIL };

static enum take lease_take(struct sync *s, const char *tenant, const char *device, struct lease *l)
{
    memset(l, 0, sizeof *l);
    lifecycle_device_key(tenant, device, l->key);
    if (!s->app->queue || s->o->dry_run)
        return TAKE_OK;
    struct iot_error err = {0};
    enum iot_err rc = queue_lease_acquire(s->app->queue, l->key, s->o->owner, &l->rev, &err);
    if (rc == IOT_ERR_CONFLICT) {
        s->sum->skipped++;
        log_write(LOG_LEVEL_WARN, NULL, tenant,
                  "sync-devices: device %s: skipped: a lifecycle worker holds its lease and "
                  "brings it to its latest event",
                  device);
        return TAKE_SKIP;
    }
    if (rc != IOT_OK) {
        failed(s, tenant, device, "cannot take the device's lease: %s", err.msg);
        return TAKE_FAIL;
    }
    l->held = true;
    l->at = now_ms();
    return TAKE_OK;
}

/* Renews the lease when a third of its time is gone. False when it was lost. */
static bool lease_keep(struct sync *s, struct lease *l)
{
    if (!l->held || s->o->lease_ttl_ms <= 0 || now_ms() - l->at <= s->o->lease_ttl_ms / 3)
        return true;
    struct iot_error err = {0};
    if (queue_lease_renew(s->app->queue, l->key, s->o->owner, &l->rev, &err) != IOT_OK) {
        l->held = false; /* never release what may be someone else's now */
        return false;
    }
    l->at = now_ms();
    return true;
}

static void lease_release(struct sync *s, struct lease *l)
{
    if (!l->held)
        return;
    struct iot_error err = {0};
    if (queue_lease_release(s->app->queue, l->key, l->rev, &err) != IOT_OK)
        log_debug("sync-devices: cannot release a lease (it expires by itself): %s", err.msg);
    l->held = false;
}

/* Keeps the hash of the connection string just delivered in the device's desired-state record,
 * so a later provision event for the device does not deploy the same string again. Best effort:
 * without it the worker only repeats a deployment. */
static void record_delivered(struct sync *s, const char *tenant, const char *device,
                             const char *key, const char *hash)
{
    struct queue *q = s->app->queue;
    if (!q || !hash[0])
        return;
    for (int attempt = 0; attempt < STATE_CAS_ATTEMPTS; attempt++) {
        char *value = NULL;
        size_t len = 0;
        uint64_t rev = 0;
        struct iot_error err = {0};
        struct lifecycle_record rec = {0};
        enum iot_err rc = queue_state_get(q, key, &value, &len, &rev, &err);
        if (rc == IOT_ERR_NOT_FOUND) {
            rev = 0;
            rc = lifecycle_record_init(&rec, tenant, device);
        } else if (rc == IOT_OK) {
            rc = lifecycle_record_decode(value, len, &rec, &err);
            if (rc == IOT_OK &&
                (strcmp(rec.tenant_id, tenant) != 0 || strcmp(rec.device_id, device) != 0))
                rc = IOT_ERR_CONFLICT; /* the key belongs to another device: leave it */
        }
        free(value);
        value = NULL;
        if (rc == IOT_OK) {
            snprintf(rec.cs_sha256, sizeof rec.cs_sha256, "%s", hash);
            rc = lifecycle_record_encode(&rec, &value, &len, &err);
            if (rc == IOT_OK)
                rc = queue_state_put(q, key, value, len, rev, &rev, &err);
            free(value);
            lifecycle_record_clear(&rec);
            if (rc == IOT_ERR_CONFLICT)
                continue;
        } else {
            lifecycle_record_clear(&rec);
        }
        if (rc != IOT_OK)
            log_debug("sync-devices: device %s: cannot record the delivered connection string",
                      device);
        return;
    }
}

/* ---- single-device actions (default mode, and the fallbacks of bulk mode) ---- */

/* Our records after the hub identity is gone: the link, and the record once nothing else links
 * it; then the event log. */
static void decommission_finish(struct sync *s, const struct target *t, const char *device)
{
    struct iot_error err = {0};
    struct device_record rec = {0};
    enum iot_err rc = store_device_unlink(s->app->store, t->tenant, device, &t->in->id, &err);
    if (rc == IOT_OK) {
        rc = store_device_get(s->app->store, t->tenant, device, &rec, &err);
        if (rc == IOT_OK && rec.n_integrations == 0)
            rc = store_device_delete(s->app->store, t->tenant, device, &err);
        if (rc == IOT_ERR_NOT_FOUND)
            rc = IOT_OK;
    }
    device_record_clear(&rec);
    if (rc != IOT_OK) {
        failed(s, t->tenant, device, "failed to disconnect the device from the integration: %s",
               err.msg);
        log_change(s, t, device, "device-decommissioned", NULL, false, err.msg, 0);
        return;
    }
    s->sum->deleted++;
    log_change(s, t, device, "device-decommissioned", NULL, true, NULL, 0);
}

static void decommission_one(struct sync *s, const struct target *t, const char *device)
{
    note(s, t->tenant, device, "delete", "unknown to Mender's deviceauth");
    if (s->o->dry_run) {
        s->sum->deleted++;
        return;
    }
    struct lease l;
    if (lease_take(s, t->tenant, device, &l) != TAKE_OK)
        return;
    struct hub_error herr = {0};
    if (hub_device_delete(s->app->hub, &t->cs, device, NULL, &herr) != IOT_OK) {
        failed(s, t->tenant, device, "failed to delete the device from IoT Hub: %s", herr.msg);
        log_change(s, t, device, "device-decommissioned", NULL, false, herr.msg, herr.http_status);
    } else {
        decommission_finish(s, t, device);
    }
    lease_release(s, &l);
}

static void status_counted(struct sync *s, enum hub_device_status want)
{
    if (want == HUB_STATUS_ENABLED)
        s->sum->enabled++;
    else
        s->sum->disabled++;
}

/* GET + PUT with If-Match (the hub client re-reads on 412), the lease already held. */
static void status_apply(struct sync *s, const struct target *t, const char *device,
                         const char *status)
{
    enum hub_device_status want = wanted(status);
    struct hub_error herr = {0};
    bool changed = false;
    if (hub_device_set_status(s->app->hub, &t->cs, device, want, NULL, NULL, &changed, &herr) !=
        IOT_OK) {
        failed(s, t->tenant, device, "failed to update the device's status in IoT Hub: %s",
               herr.msg);
        log_change(s, t, device, "device-status-changed", status, false, herr.msg,
                   herr.http_status);
        return;
    }
    if (changed) {
        status_counted(s, want);
        log_change(s, t, device, "device-status-changed", status, true, NULL, 0);
    }
}

static void status_note(struct sync *s, const struct target *t, const struct item *it)
{
    char detail[128];
    snprintf(detail, sizeof detail, "Mender status '%.40s', hub %s", it->status,
             hub_device_status_name(it->hub)[0] ? hub_device_status_name(it->hub) : "unknown");
    note(s, t->tenant, it->id, wanted(it->status) == HUB_STATUS_ENABLED ? "enable" : "disable",
         detail);
}

static void status_one(struct sync *s, const struct target *t, const struct item *it)
{
    status_note(s, t, it);
    if (s->o->dry_run) {
        status_counted(s, wanted(it->status));
        return;
    }
    struct lease l;
    if (lease_take(s, t->tenant, it->id, &l) != TAKE_OK)
        return;
    status_apply(s, t, it->id, it->status);
    lease_release(s, &l);
}

static void provision_failed(struct sync *s, const struct target *t, const char *device,
                             const char *status, const char *what, const char *msg, int status_code)
{
    failed(s, t->tenant, device, "%s: %s", what, msg);
    char text[IOT_ERROR_MSG_MAX];
    snprintf(text, sizeof text, "%s: %s", what, msg);
    log_change(s, t, device, "device-provisioned", status, false, text, status_code);
}

/* Delivers the identity's connection string to Configure, then tags the twin (the original's
 * order: PUT device, workflow, PATCH twin), records it and logs the provisioning. */
static void deliver(struct sync *s, const struct target *t, const char *device,
                    const char *hub_device_id, const char *primary_key, const char *status,
                    struct lease *l)
{
    char text[LIFECYCLE_CS_MAX];
    struct iot_error err = {0};
    if (!primary_key[0]) {
        provision_failed(s, t, device, status, "device has no connection string",
                         "the identity has no symmetric key", 0);
        return;
    }
    if (!lifecycle_device_connstr(t->in, hub_device_id, primary_key, text, sizeof text)) {
        secret_wipe(text, sizeof text);
        provision_failed(s, t, device, status, "device has no connection string",
                         "the connection string is too long", 0);
        return;
    }
    if (!lease_keep(s, l)) {
        secret_wipe(text, sizeof text);
        provision_failed(s, t, device, status, "lost the device's lease",
                         "a worker may have taken it", 0);
        return;
    }
    enum iot_err rc =
        s->app->mender
            ? mender_configure_push(s->app->mender, t->tenant, device, text, NULL, &err)
            : iot_error_set(&err, IOT_ERR_CONFIG, "no Mender Configure client is configured");
    char hash[LIFECYCLE_SHA256_HEX];
    lifecycle_connstr_hash(text, hash);
    secret_wipe(text, sizeof text);
    if (rc != IOT_OK) {
        provision_failed(s, t, device, status,
                         "failed to submit the connection string to Mender Configure", err.msg, 0);
        return;
    }
    record_delivered(s, t->tenant, device, l->key, hash);
    json_t *tags = json_pack("{s:b}", "mender", 1);
    struct hub_error herr = {0};
    rc = lease_keep(s, l)
             ? hub_twin_patch(s->app->hub, &t->cs, device, tags, NULL, NULL, NULL, &herr)
             : IOT_ERR_CONFLICT;
    json_decref(tags);
    if (rc != IOT_OK) {
        provision_failed(s, t, device, status, "failed to update the device twin",
                         herr.msg[0] ? herr.msg : "lost the device's lease", herr.http_status);
        return;
    }
    s->sum->created++;
    log_change(s, t, device, "device-provisioned", status, true, NULL, 0);
}

/* An identity that exists already: read it (its keys are reused) and correct its status. */
static enum iot_err identity_adopt(struct sync *s, const struct target *t, const char *device,
                                   enum hub_device_status want, struct hub_device *d,
                                   struct hub_error *herr)
{
    enum iot_err rc = hub_device_get(s->app->hub, &t->cs, device, d, herr);
    if (rc != IOT_OK || d->status == want)
        return rc;
    hub_device_clear(d);
    return hub_device_set_status(s->app->hub, &t->cs, device, want, NULL, d, NULL, herr);
}

/* PUT the identity with Mender's status (or adopt the existing one), then deliver. */
static void provision_apply(struct sync *s, const struct target *t, const char *device,
                            const char *status, struct lease *l)
{
    enum hub_device_status want = wanted(status);
    struct hub_device_spec spec = {.device_id = device, .status = want};
    struct hub_device d = {0};
    struct hub_error herr = {0};
    enum iot_err rc = hub_device_create(s->app->hub, &t->cs, &spec, &d, &herr);
    if (rc != IOT_OK && herr.cls == HUB_ERR_ALREADY_EXISTS) {
        hub_device_clear(&d);
        memset(&herr, 0, sizeof herr);
        rc = identity_adopt(s, t, device, want, &d, &herr);
    }
    if (rc != IOT_OK)
        provision_failed(s, t, device, status, "failed to create the device in IoT Hub", herr.msg,
                         herr.http_status);
    else
        deliver(s, t, device, d.device_id, d.primary_key, status, l);
    hub_device_clear(&d);
}

static void provision_note(struct sync *s, const struct target *t, const char *device,
                           const char *status)
{
    char detail[160];
    snprintf(detail, sizeof detail,
             "missing in the hub; Mender status '%.40s': created %s, connection string to "
             "Configure",
             status, hub_device_status_name(wanted(status)));
    note(s, t->tenant, device, "create", detail);
}

/* Links first when asked (a device we had no record of), so a decommission always finds what
 * it must delete. */
static bool link(struct sync *s, const struct target *t, const char *device, const char *status)
{
    struct iot_error err = {0};
    if (store_device_link(s->app->store, t->tenant, device, &t->in->id, &err) == IOT_OK)
        return true;
    provision_failed(s, t, device, status, "failed to connect device to integration", err.msg, 0);
    return false;
}

static void provision_one(struct sync *s, const struct target *t, const char *device,
                          const char *status, bool link_first)
{
    provision_note(s, t, device, status);
    if (s->o->dry_run) {
        s->sum->created++;
        return;
    }
    struct lease l;
    if (lease_take(s, t->tenant, device, &l) != TAKE_OK)
        return;
    if (!link_first || link(s, t, device, status))
        provision_apply(s, t, device, status, &l);
    lease_release(s, &l);
}

/* ---- asking deviceauth and the hub about a batch ---- */

/* Fills items[].status from deviceauth. `da` (n entries) keeps the strings; the caller clears
 * them. False when deviceauth could not answer (reported for every device). */
static bool ask_deviceauth(struct sync *s, const struct target *t, struct item *items, size_t n,
                           struct deviceauth_device *da)
{
    const char **ids = calloc(n, sizeof *ids);
    struct iot_error err = {0};
    size_t found = 0;
    enum iot_err rc = ids ? IOT_OK : iot_error_set(&err, IOT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; ids && i < n; i++)
        ids[i] = items[i].id;
    if (rc == IOT_OK && !s->app->mender)
        rc = iot_error_set(&err, IOT_ERR_CONFIG, "no deviceauth client is configured");
    if (rc == IOT_OK)
        rc = mender_deviceauth_devices(s->app->mender, t->tenant, ids, n, NULL, da, &found, &err);
    free(ids);
    if (rc != IOT_OK) {
        for (size_t i = 0; i < n && !s->stop; i++)
            failed(s, t->tenant, items[i].id, "failed to ask deviceauth about the device: %s",
                   err.msg);
        return false;
    }
    for (size_t k = 0; k < found; k++) {
        for (size_t i = 0; i < n; i++) {
            if (!items[i].status && strcmp(items[i].id, da[k].id) == 0) {
                items[i].status = da[k].status;
                break;
            }
        }
    }
    return true;
}

/* Fills in_hub / hub for the items (pointers, all known to deviceauth) from twin queries, in
 * chunks the query builder accepts, following continuation tokens. Items whose query failed are
 * reported and marked failed. */
static void ask_hub(struct sync *s, const struct target *t, struct item **items, size_t n)
{
    const char **ids = calloc(n ? n : 1, sizeof *ids);
    if (!ids) {
        for (size_t i = 0; i < n && !s->stop; i++) {
            items[i]->failed = true;
            failed(s, t->tenant, items[i]->id, "out of memory");
        }
        return;
    }
    for (size_t start = 0; start < n && !s->stop;) {
        size_t k = 0, bytes = QUERY_OVERHEAD;
        while (start + k < n && k < HUB_QUERY_MAX_IDS) {
            size_t add = strlen(items[start + k]->id) + 3; /* 'id', */
            if (k > 0 && bytes + add > HUB_QUERY_MAX_LEN)
                break;
            ids[k] = items[start + k]->id;
            bytes += add;
            k++;
        }
        char *cont = NULL;
        bool ok = true;
        struct hub_error herr = {0};
        do {
            struct hub_twin_page page = {0};
            memset(&herr, 0, sizeof herr);
            enum iot_err rc = hub_devices_query(s->app->hub, &t->cs, ids, k, cont, &page, &herr);
            free(cont);
            cont = NULL;
            if (rc != IOT_OK) {
                ok = false;
                hub_twin_page_clear(&page);
                break;
            }
            for (size_t p = 0; p < page.len; p++) {
                for (size_t i = start; i < start + k; i++) {
                    if (strcmp(items[i]->id, page.items[p].device_id) == 0) {
                        items[i]->in_hub = true;
                        items[i]->hub = page.items[p].status;
                        break;
                    }
                }
            }
            if (page.continuation && !(cont = strdup(page.continuation)))
                ok = false;
            hub_twin_page_clear(&page);
        } while (ok && cont);
        free(cont);
        if (!ok) {
            for (size_t i = start; i < start + k && !s->stop; i++) {
                items[i]->failed = true;
                failed(s, t->tenant, items[i]->id, "failed to query the device twins: %s",
                       herr.msg[0] ? herr.msg : "out of memory");
            }
        }
        start += k;
    }
    free((void *)ids);
}

/* ---- bulk mode ---- */

struct slot {
    const char *id;             /* borrowed */
    const char *status;         /* borrowed */
    enum hub_device_status hub; /* the twin's status (bulk status) */
    struct lease lease;
    bool queued;           /* part of the bulk request */
    struct hub_device dev; /* bulk status: the identity read (keys, etag) */
    char primary[GENERATED_KEY_B64];
    char secondary[GENERATED_KEY_B64];
};

static void slots_release(struct sync *s, struct slot *sl, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        lease_release(s, &sl[i].lease);
        hub_device_clear(&sl[i].dev);
        secret_wipe(sl[i].primary, sizeof sl[i].primary);
        secret_wipe(sl[i].secondary, sizeof sl[i].secondary);
    }
}

static bool generate_key(char *out, size_t cap)
{
    uint8_t raw[GENERATED_KEY_BYTES];
    bool ok = crypto_random(raw, sizeof raw) == IOT_OK &&
              b64_encode(raw, sizeof raw, out, cap, false) > 0;
    secret_wipe(raw, sizeof raw);
    return ok;
}

/* Sends the queued slots' items in one bulk call; results[i] for the i-th queued slot. False
 * when the whole request failed (then reported for each queued slot). */
static bool bulk_send(struct sync *s, const struct target *t, struct hub_bulk_item *items, size_t m,
                      struct hub_bulk_result *results, struct slot *sl, size_t n, const char *what,
                      const char *type)
{
    if (m == 0)
        return true;
    struct hub_error herr = {0};
    if (hub_devices_bulk(s->app->hub, &t->cs, items, m, results, &herr) == IOT_OK)
        return true;
    for (size_t i = 0; i < n; i++) {
        if (!sl[i].queued)
            continue;
        failed(s, t->tenant, sl[i].id, "%s: %s", what, herr.msg);
        log_change(s, t, sl[i].id, type, sl[i].status, false, herr.msg, herr.http_status);
    }
    return false;
}

static void bulk_delete(struct sync *s, const struct target *t, struct slot *sl, size_t n)
{
    struct hub_bulk_item items[HUB_BULK_MAX];
    struct hub_bulk_result results[HUB_BULK_MAX];
    size_t m = 0;
    for (size_t i = 0; i < n && !s->stop; i++) {
        note(s, t->tenant, sl[i].id, "delete", "unknown to Mender's deviceauth");
        if (s->o->dry_run) {
            s->sum->deleted++;
            continue;
        }
        if (lease_take(s, t->tenant, sl[i].id, &sl[i].lease) != TAKE_OK)
            continue;
        sl[i].queued = true;
        items[m++] =
            (struct hub_bulk_item){.mode = HUB_BULK_DELETE, .device = {.device_id = sl[i].id}};
    }
    if (!s->stop &&
        bulk_send(s, t, items, m, results, sl, n, "failed to delete the device from IoT Hub",
                  "device-decommissioned")) {
        size_t r = 0;
        for (size_t i = 0; i < n && r < m && !s->stop; i++) {
            if (!sl[i].queued)
                continue;
            const struct hub_bulk_result *res = &results[r++];
            if (res->cls == HUB_OK || res->cls == HUB_ERR_NOT_FOUND) {
                decommission_finish(s, t, sl[i].id);
            } else {
                failed(s, t->tenant, sl[i].id, "failed to delete the device from IoT Hub: %s",
                       res->status);
                log_change(s, t, sl[i].id, "device-decommissioned", NULL, false, res->status, 0);
            }
        }
    }
    slots_release(s, sl, n);
}

/* Whether a bulk update (which replaces the identity) keeps everything but the status: only
 * for a plain SAS device; edge devices and their children keep their settings through the
 * single GET + PUT instead. */
static bool bulk_updatable(const struct hub_device *d)
{
    const char *scope = json_string_value(json_object_get(d->raw, "deviceScope"));
    return !d->iot_edge && d->etag[0] && strcmp(d->auth_type, "sas") == 0 && d->primary_key[0] &&
           d->secondary_key[0] && !(scope && *scope);
}

static void bulk_status(struct sync *s, const struct target *t, struct slot *sl, size_t n)
{
    struct hub_bulk_item items[HUB_BULK_MAX];
    struct hub_bulk_result results[HUB_BULK_MAX];
    size_t m = 0;
    for (size_t i = 0; i < n && !s->stop; i++) {
        enum hub_device_status want = wanted(sl[i].status);
        struct item it = {.id = sl[i].id, .status = sl[i].status, .in_hub = true, .hub = sl[i].hub};
        status_note(s, t, &it);
        if (s->o->dry_run) {
            status_counted(s, want);
            continue;
        }
        if (lease_take(s, t->tenant, sl[i].id, &sl[i].lease) != TAKE_OK)
            continue;
        struct hub_error herr = {0};
        if (hub_device_get(s->app->hub, &t->cs, sl[i].id, &sl[i].dev, &herr) != IOT_OK) {
            failed(s, t->tenant, sl[i].id, "failed to retrieve device from IoT Hub: %s", herr.msg);
            log_change(s, t, sl[i].id, "device-status-changed", sl[i].status, false, herr.msg,
                       herr.http_status);
            continue;
        }
        if (sl[i].dev.status == want)
            continue; /* changed meanwhile */
        if (!bulk_updatable(&sl[i].dev)) {
            status_apply(s, t, sl[i].id, sl[i].status);
            continue;
        }
        const struct hub_device *d = &sl[i].dev;
        sl[i].queued = true;
        items[m++] = (struct hub_bulk_item){
            .mode = HUB_BULK_UPDATE_IF_MATCH,
            .device = {.device_id = sl[i].id,
                       .status = want,
                       .status_reason = d->status_reason[0] ? d->status_reason : NULL,
                       .primary_key = d->primary_key,
                       .secondary_key = d->secondary_key,
                       .etag = d->etag}};
    }
    if (!s->stop &&
        bulk_send(s, t, items, m, results, sl, n, "failed to update the device's status in IoT Hub",
                  "device-status-changed")) {
        size_t r = 0;
        for (size_t i = 0; i < n && r < m && !s->stop; i++) {
            if (!sl[i].queued)
                continue;
            const struct hub_bulk_result *res = &results[r++];
            if (res->cls == HUB_OK) {
                status_counted(s, wanted(sl[i].status));
                log_change(s, t, sl[i].id, "device-status-changed", sl[i].status, true, NULL, 0);
            } else if (res->cls == HUB_ERR_PRECONDITION_FAILED) {
                status_apply(s, t, sl[i].id, sl[i].status); /* changed since our read */
            } else {
                failed(s, t->tenant, sl[i].id,
                       "failed to update the device's status in IoT Hub: %s", res->status);
                log_change(s, t, sl[i].id, "device-status-changed", sl[i].status, false,
                           res->status, 0);
            }
        }
    }
    slots_release(s, sl, n);
}

static void bulk_create(struct sync *s, const struct target *t, struct slot *sl, size_t n,
                        bool link_first)
{
    struct hub_bulk_item items[HUB_BULK_MAX];
    struct hub_bulk_result results[HUB_BULK_MAX];
    size_t m = 0;
    for (size_t i = 0; i < n && !s->stop; i++) {
        provision_note(s, t, sl[i].id, sl[i].status);
        if (s->o->dry_run) {
            s->sum->created++;
            continue;
        }
        if (lease_take(s, t->tenant, sl[i].id, &sl[i].lease) != TAKE_OK)
            continue;
        if (link_first && !link(s, t, sl[i].id, sl[i].status))
            continue;
        /* Our own keys: the bulk answer carries none, and reading each identity back would
         * cost a registry operation per device. */
        if (!generate_key(sl[i].primary, sizeof sl[i].primary) ||
            !generate_key(sl[i].secondary, sizeof sl[i].secondary)) {
            provision_failed(s, t, sl[i].id, sl[i].status, "failed to create the device in IoT Hub",
                             "cannot generate its keys", 0);
            continue;
        }
        sl[i].queued = true;
        items[m++] = (struct hub_bulk_item){.mode = HUB_BULK_CREATE,
                                            .device = {.device_id = sl[i].id,
                                                       .status = wanted(sl[i].status),
                                                       .primary_key = sl[i].primary,
                                                       .secondary_key = sl[i].secondary}};
    }
    if (!s->stop && bulk_send(s, t, items, m, results, sl, n,
                              "failed to create the device in IoT Hub", "device-provisioned")) {
        size_t r = 0;
        for (size_t i = 0; i < n && r < m && !s->stop; i++) {
            if (!sl[i].queued)
                continue;
            const struct hub_bulk_result *res = &results[r++];
            /* The other leases of the chunk are kept alive while devices are delivered. */
            for (size_t k = i + 1; k < n; k++)
                if (sl[k].lease.held && !lease_keep(s, &sl[k].lease))
                    log_debug("sync-devices: device %s: lease lost while waiting", sl[k].id);
            if (res->cls == HUB_OK) {
                deliver(s, t, sl[i].id, sl[i].id, sl[i].primary, sl[i].status, &sl[i].lease);
            } else if (res->cls == HUB_ERR_ALREADY_EXISTS) {
                struct hub_device d = {0};
                struct hub_error herr = {0};
                if (identity_adopt(s, t, sl[i].id, wanted(sl[i].status), &d, &herr) == IOT_OK)
                    deliver(s, t, sl[i].id, d.device_id, d.primary_key, sl[i].status, &sl[i].lease);
                else
                    provision_failed(s, t, sl[i].id, sl[i].status,
                                     "failed to create the device in IoT Hub", herr.msg,
                                     herr.http_status);
                hub_device_clear(&d);
            } else {
                provision_failed(s, t, sl[i].id, sl[i].status,
                                 "failed to create the device in IoT Hub", res->status, 0);
            }
        }
    }
    slots_release(s, sl, n);
}

enum bulk_op { BULK_OP_DELETE, BULK_OP_STATUS, BULK_OP_CREATE };

/* Runs `op` over the items in chunks of at most HUB_BULK_MAX devices. */
static void bulk_run(struct sync *s, const struct target *t, struct item **items, size_t n,
                     enum bulk_op op, bool link_first)
{
    if (n == 0)
        return;
    struct slot *sl = calloc(HUB_BULK_MAX, sizeof *sl);
    if (!sl) {
        for (size_t i = 0; i < n && !s->stop; i++)
            failed(s, t->tenant, items[i]->id, "out of memory");
        return;
    }
    for (size_t start = 0; start < n && !s->stop; start += HUB_BULK_MAX) {
        size_t k = n - start < HUB_BULK_MAX ? n - start : HUB_BULK_MAX;
        memset(sl, 0, HUB_BULK_MAX * sizeof *sl);
        for (size_t i = 0; i < k; i++) {
            sl[i].id = items[start + i]->id;
            sl[i].status = items[start + i]->status;
            sl[i].hub = items[start + i]->hub;
        }
        if (op == BULK_OP_DELETE)
            bulk_delete(s, t, sl, k);
        else if (op == BULK_OP_STATUS)
            bulk_status(s, t, sl, k);
        else
            bulk_create(s, t, sl, k, link_first);
        progress(s, false);
    }
    free(sl);
}

/* ---- one batch of one integration ---- */

static bool mismatched(const struct item *it)
{
    return it->status && !it->failed && it->in_hub && it->hub != wanted(it->status);
}

static bool missing(const struct item *it)
{
    return it->status && !it->failed && !it->in_hub;
}

/* Steps b-e of contract §4.7 for `items` (deviceauth has answered). */
static void reconcile(struct sync *s, const struct target *t, struct item *items, size_t n,
                      bool link_first)
{
    struct item **sel = calloc(n, sizeof *sel);
    if (!sel) {
        for (size_t i = 0; i < n && !s->stop; i++)
            failed(s, t->tenant, items[i].id, "out of memory");
        return;
    }
    size_t k = 0;
    /* b. devices Mender no longer knows */
    for (size_t i = 0; i < n; i++)
        if (!items[i].status)
            sel[k++] = &items[i];
    if (s->o->bulk) {
        bulk_run(s, t, sel, k, BULK_OP_DELETE, false);
    } else {
        for (size_t i = 0; i < k && !s->stop; i++)
            decommission_one(s, t, sel[i]->id);
    }
    /* c. the hub's view of the others */
    k = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].status)
            sel[k++] = &items[i];
    if (!s->stop && k > 0)
        ask_hub(s, t, sel, k);
    /* d. statuses that differ from Mender's */
    k = 0;
    for (size_t i = 0; i < n; i++)
        if (mismatched(&items[i]))
            sel[k++] = &items[i];
    if (s->o->bulk) {
        bulk_run(s, t, sel, k, BULK_OP_STATUS, false);
    } else {
        for (size_t i = 0; i < k && !s->stop; i++)
            status_one(s, t, sel[i]);
    }
    /* e. devices the hub lacks */
    k = 0;
    for (size_t i = 0; i < n; i++)
        if (missing(&items[i]))
            sel[k++] = &items[i];
    if (s->o->bulk) {
        bulk_run(s, t, sel, k, BULK_OP_CREATE, link_first);
    } else {
        for (size_t i = 0; i < k && !s->stop; i++)
            provision_one(s, t, sel[i]->id, sel[i]->status, link_first);
    }
    free(sel);
}

/* ---- the tenant's integrations ---- */

static void tenant_load(struct sync *s, const char *tenant)
{
    if (s->tenant && strcmp(s->tenant, tenant) == 0)
        return;
    free(s->tenant);
    integration_list_clear(&s->ins);
    s->ins_msg[0] = '\0';
    s->tenant = strdup(tenant);
    struct iot_error err = {0};
    s->ins_rc = s->tenant ? app_integrations_list(s->app, tenant, &s->ins, &err)
                          : iot_error_set(&err, IOT_ERR_NOMEM, "out of memory");
    if (s->ins_rc != IOT_OK)
        snprintf(s->ins_msg, sizeof s->ins_msg, "%s",
                 err.msg[0] ? err.msg : iot_strerror(s->ins_rc));
}

static const struct integration *tenant_integration(struct sync *s, const struct uuid *id)
{
    for (size_t i = 0; i < s->ins.len; i++)
        if (uuid_equal(&s->ins.items[i].id, id))
            return &s->ins.items[i];
    return NULL;
}

/* A target for an iot-hub integration; false (reported for the devices) when unusable. */
static bool target_init(struct sync *s, const char *tenant, const struct integration *in,
                        struct target *t, const char *const *devices, size_t n)
{
    memset(t, 0, sizeof *t);
    t->tenant = tenant;
    t->in = in;
    if (lifecycle_integration_connstr(in, &t->cs) && s->app->hub)
        return true;
    for (size_t i = 0; i < n && !s->stop; i++)
        failed(s, tenant, devices[i], "%s",
               s->app->hub ? "no connection string or credentials configured for the tenant"
                           : "no IoT Hub client configured");
    return false;
}

/* ---- the device records, batch by batch ---- */

/* The batch's devices linked to integration `iid`, then its reconciliation. */
static void batch_integration(struct sync *s, const struct device_record *recs, size_t n,
                              const struct uuid *iid)
{
    const char *tenant = recs[0].tenant_id;
    struct item *items = calloc(n, sizeof *items);
    const char **ids = calloc(n, sizeof *ids);
    struct deviceauth_device *da = calloc(n, sizeof *da);
    size_t k = 0;
    if (!items || !ids || !da) {
        for (size_t i = 0; i < n && !s->stop; i++)
            failed(s, tenant, recs[i].id, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < recs[i].n_integrations; j++) {
            if (uuid_equal(&recs[i].integration_ids[j], iid)) {
                items[k].id = recs[i].id;
                ids[k++] = recs[i].id;
                break;
            }
        }
    }
    char iid_text[UUID_STR_LEN + 1];
    uuid_format(iid, iid_text);
    const struct integration *in = tenant_integration(s, iid);
    if (!in) {
        /* The integration is gone: Mender pulls it from all of the tenant's devices. */
        for (size_t i = 0; i < k; i++) {
            char detail[96];
            snprintf(detail, sizeof detail, "integration %s no longer exists", iid_text);
            note(s, tenant, ids[i], "unlink", detail);
        }
        struct iot_error err = {0};
        if (!s->o->dry_run &&
            store_integration_unlink_all(s->app->store, tenant, iid, &err) != IOT_OK) {
            for (size_t i = 0; i < k && !s->stop; i++)
                failed(s, tenant, ids[i], "failed to remove the link to integration %s: %s",
                       iid_text, err.msg);
            goto out;
        }
        s->sum->unlinked += k;
        goto out;
    }
    if (in->provider != PROVIDER_IOT_HUB) {
        log_write(LOG_LEVEL_WARN, NULL, tenant,
                  "sync-devices: integration %s: provider %s is not synchronised by this "
                  "service; %zu devices left as they are",
                  iid_text, provider_name(in->provider), k);
        goto out;
    }
    struct target t;
    if (!target_init(s, tenant, in, &t, ids, k))
        goto out;
    if (ask_deviceauth(s, &t, items, k, da))
        reconcile(s, &t, items, k, false);
out:
    for (size_t i = 0; da && i < n; i++)
        deviceauth_device_clear(&da[i]);
    free(da);
    free((void *)ids);
    free(items);
}

static void batch_run(struct sync *s, const struct device_record *recs, size_t n)
{
    const char *tenant = recs[0].tenant_id;
    s->sum->checked += n;
    tenant_load(s, tenant);
    if (s->ins_rc != IOT_OK) {
        for (size_t i = 0; i < n && !s->stop; i++)
            if (recs[i].n_integrations > 0)
                failed(s, tenant, recs[i].id, "failed to retrieve integrations: %s", s->ins_msg);
        return;
    }
    /* Each integration the batch links to, in order of first appearance. */
    size_t cap = 0;
    for (size_t i = 0; i < n; i++)
        cap += recs[i].n_integrations;
    struct uuid *seen = calloc(cap ? cap : 1, sizeof *seen);
    if (!seen) {
        for (size_t i = 0; i < n && !s->stop; i++)
            failed(s, tenant, recs[i].id, "out of memory");
        return;
    }
    size_t nseen = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < recs[i].n_integrations; j++) {
            bool dup = false;
            for (size_t k = 0; k < nseen && !dup; k++)
                dup = uuid_equal(&seen[k], &recs[i].integration_ids[j]);
            if (!dup)
                seen[nseen++] = recs[i].integration_ids[j];
        }
    }
    for (size_t k = 0; k < nseen && !s->stop; k++)
        batch_integration(s, recs, n, &seen[k]);
    free(seen);
}

static enum iot_err records_pass(struct sync *s)
{
    char *after_tenant = strdup("");
    char *after_id = strdup("");
    enum iot_err rc = after_tenant && after_id ? IOT_OK : IOT_ERR_NOMEM;
    if (rc != IOT_OK)
        iot_error_set(s->err, rc, "out of memory");
    while (rc == IOT_OK && !s->stop) {
        struct device_list page = {0};
        rc = store_devices_page(s->app->store, after_tenant, after_id, s->o->batch_size, &page,
                                s->err);
        if (rc != IOT_OK) {
            iot_error_prefix(s->err, "failed to read the device records: ");
            break;
        }
        if (page.len == 0) {
            device_list_clear(&page);
            break;
        }
        /* The original's batches: up to N records, cut where the tenant changes. */
        size_t n = 1;
        while (n < page.len && strcmp(page.items[n].tenant_id, page.items[0].tenant_id) == 0)
            n++;
        batch_run(s, page.items, n);
        free(after_tenant);
        free(after_id);
        after_tenant = strdup(page.items[n - 1].tenant_id);
        after_id = strdup(page.items[n - 1].id);
        device_list_clear(&page);
        if (!after_tenant || !after_id)
            rc = iot_error_set(s->err, IOT_ERR_NOMEM, "out of memory");
        progress(s, false);
    }
    free(after_tenant);
    free(after_id);
    return rc;
}

/* ---- --provision-existing ---- */

struct tenant_set {
    char **items;
    size_t len, cap;
    bool nomem;
};

static enum iot_err collect_tenant(struct integration *in, void *ctx)
{
    struct tenant_set *ts = ctx;
    if (in->provider != PROVIDER_IOT_HUB)
        return IOT_OK;
    for (size_t i = 0; i < ts->len; i++)
        if (strcmp(ts->items[i], in->tenant_id) == 0)
            return IOT_OK;
    if (ts->len == ts->cap) {
        size_t cap = ts->cap ? ts->cap * 2 : 16;
        char **grown = realloc(ts->items, cap * sizeof *grown);
        if (!grown) {
            ts->nomem = true;
            return IOT_ERR_NOMEM;
        }
        ts->items = grown;
        ts->cap = cap;
    }
    if (!(ts->items[ts->len] = strdup(in->tenant_id))) {
        ts->nomem = true;
        return IOT_ERR_NOMEM;
    }
    ts->len++;
    return IOT_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One page of the tenant's accepted devices against one integration: provisions those the hub
 * lacks (linking them first: we had no record of most of them). */
static void existing_page(struct sync *s, const struct target *t, struct deviceauth_device *da,
                          size_t found)
{
    struct item *items = calloc(found, sizeof *items);
    struct item **sel = calloc(found, sizeof *sel);
    if (!items || !sel) {
        for (size_t i = 0; i < found && !s->stop; i++)
            failed(s, t->tenant, da[i].id, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < found; i++) {
        items[i] = (struct item){.id = da[i].id, .status = da[i].status};
        sel[i] = &items[i];
    }
    ask_hub(s, t, sel, found);
    size_t k = 0;
    for (size_t i = 0; i < found; i++)
        if (missing(&items[i]))
            sel[k++] = &items[i];
    if (s->o->bulk) {
        bulk_run(s, t, sel, k, BULK_OP_CREATE, true);
    } else {
        for (size_t i = 0; i < k && !s->stop; i++)
            provision_one(s, t, sel[i]->id, sel[i]->status, true);
    }
out:
    free(sel);
    free(items);
}

static void existing_integration(struct sync *s, const char *tenant, const struct integration *in)
{
    size_t per_page = s->o->batch_size;
    struct deviceauth_device *da = calloc(per_page, sizeof *da);
    char iid_text[UUID_STR_LEN + 1];
    uuid_format(&in->id, iid_text);
    struct target t;
    char label_text[UUID_STR_LEN + 32];
    snprintf(label_text, sizeof label_text, "(integration %s)", iid_text);
    const char *label = label_text;
    if (!da) {
        failed(s, tenant, "-", "out of memory");
        return;
    }
    if (!target_init(s, tenant, in, &t, &label, 1))
        goto out;
    for (size_t page = 1; !s->stop; page++) {
        size_t found = 0;
        struct iot_error err = {0};
        enum iot_err rc =
            s->app->mender
                ? mender_deviceauth_accepted_page(s->app->mender, tenant, page, per_page, da,
                                                  &found, &err)
                : iot_error_set(&err, IOT_ERR_CONFIG, "no deviceauth client is configured");
        if (rc != IOT_OK) {
            failed(s, tenant, "-", "failed to list the tenant's accepted devices: %s", err.msg);
            break;
        }
        s->sum->checked += found;
        if (found > 0)
            existing_page(s, &t, da, found);
        for (size_t i = 0; i < found; i++)
            deviceauth_device_clear(&da[i]);
        progress(s, false);
        if (found < per_page)
            break;
    }
out:
    free(da);
}

static enum iot_err existing_pass(struct sync *s)
{
    struct tenant_set ts = {0};
    enum iot_err rc = store_integrations_for_each(s->app->store, collect_tenant, &ts, s->err);
    if (rc != IOT_OK) {
        if (ts.nomem)
            iot_error_set(s->err, IOT_ERR_NOMEM, "out of memory");
        iot_error_prefix(s->err, "failed to list the integrations: ");
        goto out;
    }
    qsort(ts.items, ts.len, sizeof *ts.items, cmp_str);
    for (size_t i = 0; i < ts.len && !s->stop; i++) {
        tenant_load(s, ts.items[i]);
        if (s->ins_rc != IOT_OK) {
            failed(s, ts.items[i], "-", "failed to retrieve integrations: %s", s->ins_msg);
            continue;
        }
        for (size_t k = 0; k < s->ins.len && !s->stop; k++)
            if (s->ins.items[k].provider == PROVIDER_IOT_HUB)
                existing_integration(s, ts.items[i], &s->ins.items[k]);
    }
out:
    for (size_t i = 0; i < ts.len; i++)
        free(ts.items[i]);
    free(ts.items);
    return rc;
}

/* ---- entry ---- */

enum iot_err sync_devices(struct app *app, const struct sync_options *o, struct sync_summary *out,
                          struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    if (o->batch_size < 1 || o->batch_size > SYNC_BATCH_MAX)
        return iot_error_set(err, IOT_ERR_INVALID, "batch size must be 1..%d", SYNC_BATCH_MAX);
    struct sync s = {.app = app, .o = o, .sum = out, .err = err};
    enum iot_err rc = records_pass(&s);
    if (rc == IOT_OK && !s.stop && o->provision_existing)
        rc = existing_pass(&s);
    progress(&s, true);
    free(s.tenant);
    integration_list_clear(&s.ins);
    if (rc == IOT_OK && s.stop)
        rc = err && err->code != IOT_OK ? err->code : IOT_ERR_UPSTREAM;
    return rc;
}
