/* Lifecycle workers: record each event into the device's desired state, then reconcile the
 * tenant's IoT Hub, Mender Configure, the device records and the event log to it while holding
 * the device's lease (docs/lifecycle-design.md §3-§6), and the threads that pull the events. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "iot-manager/configure.h"
#include "iot-manager/crypto.h"
#include "iot-manager/lifecycle.h"
#include "iot-manager/log.h"

#define RECORD_CAS_ATTEMPTS      32
#define RECONCILE_PASSES_MAX     16
#define RETRY_BASE_MS            500
#define RETRY_CAP_MS             30000
#define LEASE_RETRY_STEP_MS      250
#define LEASE_RETRY_CAP_MS       5000
#define CS_MAX                   LIFECYCLE_CS_MAX
#define RECORD_AFTER_DELIVERY_MS 10000

static int64_t now_ms(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t lifecycle_retry_delay_ms(uint64_t deliveries, int64_t retry_after_ms)
{
    int64_t delay = RETRY_BASE_MS;
    for (uint64_t i = 1; i < deliveries && delay < RETRY_CAP_MS; i++)
        delay *= 2;
    if (retry_after_ms > delay)
        delay = retry_after_ms;
    return delay > RETRY_CAP_MS ? RETRY_CAP_MS : delay;
}

/* The sequence that orders the event among its device's events (a requeued copy keeps the one
 * it was first published with). */
static uint64_t event_order(const struct queue_msg *m)
{
    return m->order_seq ? m->order_seq : m->seq;
}

/* ---- one event ---- */

/* Why a step failed, and what the event log should say about it. */
struct failure {
    bool permanent;
    bool busy; /* the hub (or our quota of it) is only busy: waiting is all that helps */
    int64_t retry_after_ms;
    int status_code;      /* HTTP status of the failed call; 0 when none */
    const char *log_type; /* event log type of the action that failed; NULL: nothing to log */
    bool has_integration;
    struct uuid integration_id;
    char msg[IOT_ERROR_MSG_MAX];
};

struct job {
    struct app *app;
    const struct lifecycle_worker_options *o;
    struct queue_msg *m;
    struct lifecycle_event ev;
    char key[LIFECYCLE_KEY_MAX];
    struct lifecycle_record rec;
    uint64_t rev; /* KV revision `rec` was read at (0: absent) */
    bool leased;
    uint64_t lease_rev;
    int64_t lease_at;    /* monotonic ms of the last lease take or renewal */
    int64_t progress_at; /* monotonic ms of the last sign of life to the queue */
};

static bool fail_retry(struct failure *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static bool fail_retry(struct failure *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    f->permanent = false;
    return false;
}

static bool fail_permanent(struct failure *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static bool fail_permanent(struct failure *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    f->permanent = true;
    return false;
}

/* Sorts a hub failure: credentials, quota, a request the hub refuses, TLS or the SSRF guard will
 * not get better by retrying; throttling, 5xx, timeouts and odd answers may. */
static bool fail_hub(struct failure *f, const struct hub_error *herr, const char *what)
{
    f->status_code = herr->http_status;
    f->retry_after_ms = herr->retry_after_ms;
    f->busy = herr->cls == HUB_ERR_THROTTLED;
    switch (herr->cls) {
    case HUB_ERR_UNAUTHORIZED:
        return fail_permanent(f,
                              "%s: %s: the hub rejected the integration's credentials; check its "
                              "connection string and that the policy grants RegistryRead, "
                              "RegistryWrite and ServiceConnect",
                              what, herr->msg);
    case HUB_ERR_QUOTA_EXCEEDED:
    case HUB_ERR_BAD_REQUEST:
    case HUB_ERR_INVALID:
    case HUB_ERR_TLS:
    case HUB_ERR_BLOCKED:
        return fail_permanent(f, "%s: %s", what, herr->msg);
    default:
        return fail_retry(f, "%s: %s", what, herr->msg);
    }
}

static bool fail_store(struct failure *f, const struct iot_error *err, const char *what)
{
    return fail_retry(f, "%s: %s", what, err->msg[0] ? err->msg : iot_strerror(err->code));
}

bool lifecycle_integration_connstr(const struct integration *in, struct connstr *cs)
{
    memset(cs, 0, sizeof *cs);
    const struct credentials_sas *sas = &in->credentials.sas;
    cs->hostname = sas->hostname;
    cs->gateway_hostname = sas->gateway_hostname;
    cs->name = sas->name;
    cs->device_id = sas->device_id;
    cs->module_id = sas->module_id;
    if (sas->access_key.state == SECRET_PLAIN && sas->access_key.len > 0) {
        cs->key = sas->access_key.data;
        cs->key_len = sas->access_key.len;
        cs->has_key = true;
    }
    return cs->hostname && *cs->hostname && cs->has_key;
}

/* Keeps the lease and the message alive during long work. False when the lease was lost. */
static bool keepalive(struct job *j, struct failure *f)
{
    int64_t now = now_ms(CLOCK_MONOTONIC);
    if (j->o->ack_wait_ms > 0 && now - j->progress_at > j->o->ack_wait_ms / 3) {
        queue_in_progress(j->m);
        j->progress_at = now;
    }
    if (j->leased && j->o->lease_ttl_ms > 0 && now - j->lease_at > j->o->lease_ttl_ms / 3) {
        struct iot_error err = {0};
        enum iot_err rc =
            queue_lease_renew(j->app->queue, j->key, j->o->owner, &j->lease_rev, &err);
        if (rc != IOT_OK) {
            if (rc == IOT_ERR_CONFLICT)
                j->leased = false; /* someone else holds it now: never release theirs */
            return fail_retry(f, "lost the device's lease: %s", err.msg);
        }
        j->lease_at = now;
    }
    return true;
}

/* Reads the device's record into j->rec / j->rev (a fresh one when absent). */
static bool record_read(struct job *j, struct failure *f)
{
    char *value = NULL;
    size_t len = 0;
    struct iot_error err = {0};
    lifecycle_record_clear(&j->rec);
    enum iot_err rc = queue_state_get(j->app->queue, j->key, &value, &len, &j->rev, &err);
    if (rc == IOT_ERR_NOT_FOUND) {
        j->rev = 0;
        if (lifecycle_record_init(&j->rec, j->ev.tenant_id, j->ev.device_id) != IOT_OK)
            return fail_retry(f, "out of memory");
        return true;
    }
    if (rc != IOT_OK)
        return fail_retry(f, "cannot read the device's state: %s", err.msg);
    rc = lifecycle_record_decode(value, len, &j->rec, &err);
    free(value);
    if (rc != IOT_OK)
        return fail_permanent(f, "the device's state record is unreadable: %s", err.msg);
    if (strcmp(j->rec.tenant_id, j->ev.tenant_id) != 0 ||
        strcmp(j->rec.device_id, j->ev.device_id) != 0)
        return fail_permanent(f, "the device's state key is taken by another device");
    return true;
}

/* Writes j->rec on revision j->rev. CONFLICT when it changed meanwhile. */
static enum iot_err record_write(struct job *j, struct failure *f)
{
    char *value = NULL;
    size_t len = 0;
    struct iot_error err = {0};
    enum iot_err rc = lifecycle_record_encode(&j->rec, &value, &len, &err);
    if (rc == IOT_OK)
        rc = queue_state_put(j->app->queue, j->key, value, len, j->rev, &j->rev, &err);
    free(value);
    if (rc != IOT_OK && rc != IOT_ERR_CONFLICT)
        fail_retry(f, "cannot write the device's state: %s", err.msg);
    return rc;
}

/* Step 1: fold the event into the desired state (compare-and-set, retried on conflict). */
static bool record_event(struct job *j, struct failure *f)
{
    /* A provision's first delivery is nearly always for a device without a record: creating it
     * straight away (CAS on "absent") saves the read; when a record exists the create fails
     * with CONFLICT and the usual read-modify-write follows. */
    bool guess_absent =
        j->ev.kind == LIFECYCLE_PROVISION && j->m->deliveries <= 1 && j->m->requeues == 0;
    for (int attempt = 0; attempt < RECORD_CAS_ATTEMPTS; attempt++) {
        if (attempt == 0 && guess_absent) {
            lifecycle_record_clear(&j->rec);
            j->rev = 0;
            if (lifecycle_record_init(&j->rec, j->ev.tenant_id, j->ev.device_id) != IOT_OK)
                return fail_retry(f, "out of memory");
        } else if (!record_read(j, f)) {
            return false;
        }
        if (!lifecycle_record_apply(&j->rec, &j->ev, event_order(j->m), j->m->epoch))
            return true;
        enum iot_err rc = record_write(j, f);
        if (rc == IOT_OK)
            return true;
        if (rc != IOT_ERR_CONFLICT)
            return false;
    }
    return fail_retry(f, "the device's state kept changing while recording the event");
}

/* Marks generation `gen`, whose state had `exists_seq`, applied (and the delivered connection
 * string's hash when `cs_sha256` is not NULL), re-reading on conflict so nobody's newer desired
 * state is lost. */
static bool record_applied(struct job *j, uint64_t gen, uint64_t exists_seq, const char *cs_sha256,
                           struct failure *f)
{
    for (int attempt = 0; attempt < RECORD_CAS_ATTEMPTS; attempt++) {
        if (attempt > 0 && !record_read(j, f))
            return false;
        if (j->rec.applied_gen > gen) {
            /* Another worker applied a newer generation while we applied ours. That takes the
             * lease, so ours had expired during a slow call, and our hub writes may have landed
             * after theirs: have the current generation applied once more. */
            j->rec.applied_gen = j->rec.gen ? j->rec.gen - 1 : 0;
            enum iot_err rc = record_write(j, f);
            if (rc == IOT_ERR_CONFLICT)
                continue;
            if (rc != IOT_OK)
                return false;
            log_write(LOG_LEVEL_WARN, j->ev.request_id, j->ev.tenant_id,
                      "device %s: another worker applied a newer state while our lease had "
                      "expired; reconciling it again",
                      j->ev.device_id);
            return fail_retry(f, "another worker applied a newer state meanwhile");
        }
        if (j->rec.applied_gen < gen)
            j->rec.applied_gen = gen;
        if (j->rec.applied_exists_seq < exists_seq)
            j->rec.applied_exists_seq = exists_seq;
        if (cs_sha256)
            snprintf(j->rec.cs_sha256, sizeof j->rec.cs_sha256, "%s", cs_sha256);
        enum iot_err rc = record_write(j, f);
        if (rc == IOT_OK)
            return true;
        if (rc != IOT_ERR_CONFLICT)
            return false;
    }
    return fail_retry(f, "the device's state kept changing while recording the outcome");
}

/* Records the outcome of a pass that delivered a connection string to Configure. Failing here
 * would deliver the same string again on the retry, so NATS being unreachable (restarting, a
 * network blip) is waited for rather than given up at once: for up to RECORD_AFTER_DELIVERY_MS,
 * and at most two thirds of the lease TTL, while the lease most likely stays ours. */
static bool record_delivery(struct job *j, uint64_t gen, uint64_t exists_seq, const char *cs_sha256,
                            struct failure *f)
{
    int64_t patience = RECORD_AFTER_DELIVERY_MS;
    if (j->o->lease_ttl_ms > 0 && j->o->lease_ttl_ms * 2 / 3 < patience)
        patience = j->o->lease_ttl_ms * 2 / 3;
    int64_t deadline = now_ms(CLOCK_MONOTONIC) + patience;
    int healthy_failures = 0;
    for (;;) {
        memset(f, 0, sizeof *f);
        if (record_applied(j, gen, exists_seq, cs_sha256, f))
            return true;
        int64_t left = deadline - now_ms(CLOCK_MONOTONIC);
        if (f->permanent || left <= 0)
            return false;
        struct iot_error err = {0};
        /* A write that failed on a dropped connection may be seen before the queue notices the
         * outage: a few quick retries, then the usual retry of the event. */
        if (queue_health(j->app->queue, &err) == IOT_OK && ++healthy_failures > 3)
            return false;
        if (queue_wait_ready(j->app->queue, left, &err) != IOT_OK)
            return false;
        /* ready (again): the lease may have expired meanwhile; the CAS keeps the write safe */
        struct timespec pause = {.tv_nsec = 100 * 1000000L};
        nanosleep(&pause, NULL);
    }
}

/* ---- event log ---- */

/* The event's `data` as Mender logs it for `type`. New reference. */
static json_t *log_data(const struct job *j, const char *type)
{
    const char *id = j->ev.device_id;
    if (strcmp(type, "device-decommissioned") == 0)
        return json_pack("{s:s}", "id", id);
    if (strcmp(type, "device-provisioned") == 0 && j->ev.kind == LIFECYCLE_PROVISION) {
        json_t *out = json_pack("{s:s}", "id", id);
        static const char *const keep[] = {"status", "auth_sets", "created_ts"};
        for (size_t i = 0; out && i < sizeof keep / sizeof keep[0]; i++) {
            json_t *v = json_object_get(j->ev.device, keep[i]);
            if (v && !json_is_null(v))
                json_object_set(out, keep[i], v);
        }
        return out;
    }
    return json_pack("{s:s, s:s}", "id", id, "status",
                     j->rec.status[0] ? j->rec.status : (j->ev.status ? j->ev.status : ""));
}

void lifecycle_event_log(struct app *app, const struct lifecycle_log_entry *e)
{
    char err_text[IOT_ERROR_MSG_MAX];
    snprintf(err_text, sizeof err_text, "%s", e->error ? e->error : "");
    struct delivery_status st = {
        .integration_id = *e->integration_id,
        .success = e->success,
        .error = e->error && *e->error ? err_text : NULL,
        .status_code = e->status_code,
    };
    int64_t now = now_ms(CLOCK_REALTIME);
    struct event_record ev = {
        .tenant_id = (char *)e->tenant_id,
        .type = (char *)e->type,
        .data = (json_t *)e->data,
        .event_ts_ms = now,
        .expire_ts_ms = now + e->exp_s * 1000,
        .statuses = &st,
        .n_statuses = 1,
    };
    struct iot_error err = {0};
    enum iot_err rc = ev.data ? uuid_generate_v4(&ev.id) : IOT_ERR_NOMEM;
    if (rc == IOT_OK)
        rc = store_event_insert(app->store, &ev, &err);
    if (rc != IOT_OK)
        log_write(LOG_LEVEL_WARN, e->request_id, e->tenant_id,
                  "device %s: cannot save the %s event: %s", e->device_id, e->type,
                  err.msg[0] ? err.msg : iot_strerror(rc));
}

/* Appends an entry to the tenant's event log. A failure is only logged: the hub already has the
 * change, and retrying the whole event for a log line could repeat a Configure deployment. */
static void log_event(struct job *j, const char *type, const struct uuid *integration_id,
                      bool success, const char *error, int status_code)
{
    json_t *data = log_data(j, type);
    struct lifecycle_log_entry e = {
        .tenant_id = j->ev.tenant_id,
        .device_id = j->ev.device_id,
        .request_id = j->ev.request_id,
        .type = type,
        .data = data,
        .integration_id = integration_id,
        .success = success,
        .error = error,
        .status_code = status_code,
        .exp_s = j->o->event_exp_s,
    };
    lifecycle_event_log(j->app, &e);
    json_decref(data);
}

/* ---- reconciling one integration ---- */

bool lifecycle_device_connstr(const struct integration *in, const char *device_id,
                              const char *primary_key, char *out, size_t cap)
{
    int n = snprintf(out, cap, "HostName=%s;DeviceId=%s;SharedAccessKey=%s",
                     in->credentials.sas.hostname, device_id, primary_key);
    return n > 0 && (size_t)n < cap;
}

void lifecycle_connstr_hash(const char *text, char out[LIFECYCLE_SHA256_HEX])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t digest[CRYPTO_SHA256_LEN];
    const void *parts[1] = {text};
    size_t lens[1] = {strlen(text)};
    if (crypto_sha256(parts, lens, 1, digest) != IOT_OK) {
        out[0] = '\0'; /* never equal to a stored hash: the string is delivered again */
        return;
    }
    for (size_t i = 0; i < CRYPTO_SHA256_LEN; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[2 * CRYPTO_SHA256_LEN] = '\0';
}

/* The identity, created with the desired status, or (when it already exists) read and brought to
 * that status, keeping its keys. */
static bool identity_ensure(struct job *j, const struct connstr *cs, enum hub_device_status want,
                            struct hub_device *d, struct failure *f)
{
    struct hub_device_spec spec = {.device_id = j->ev.device_id, .status = want};
    struct hub_error herr = {0};
    enum iot_err rc = hub_device_create(j->app->hub, cs, &spec, d, &herr);
    if (rc == IOT_OK)
        return true;
    if (herr.cls != HUB_ERR_ALREADY_EXISTS)
        return fail_hub(f, &herr, "failed to create the device in IoT Hub");
    if (!keepalive(j, f))
        return false;
    hub_device_clear(d);
    memset(&herr, 0, sizeof herr);
    if (hub_device_get(j->app->hub, cs, j->ev.device_id, d, &herr) != IOT_OK)
        return fail_hub(f, &herr, "failed to retrieve device from IoT Hub");
    if (d->status != want) {
        hub_device_clear(d);
        memset(&herr, 0, sizeof herr);
        if (hub_device_set_status(j->app->hub, cs, j->ev.device_id, want, NULL, d, NULL, &herr) !=
            IOT_OK)
            return fail_hub(f, &herr, "failed to update the device's status in IoT Hub");
    }
    return true;
}

/* exists = true: the identity with its keys, linked, tagged, its connection string delivered. */
static bool provision(struct job *j, const struct integration *in, const struct connstr *cs,
                      bool linked, char cs_hash[LIFECYCLE_SHA256_HEX], struct failure *f)
{
    enum hub_device_status want = j->rec.enabled ? HUB_STATUS_ENABLED : HUB_STATUS_DISABLED;
    struct hub_error herr = {0};
    f->log_type = "device-status-changed";
    if (linked && j->rec.cs_sha256[0]) {
        /* Provisioned before: only the status may need to follow. */
        bool changed = false;
        enum iot_err rc = hub_device_set_status(j->app->hub, cs, j->ev.device_id, want, NULL, NULL,
                                                &changed, &herr);
        if (rc == IOT_OK) {
            if (changed)
                log_event(j, "device-status-changed", &in->id, true, NULL, 0);
            return true;
        }
        if (herr.cls != HUB_ERR_NOT_FOUND)
            return fail_hub(f, &herr, "failed to update the device's status in IoT Hub");
        /* The identity vanished behind our back: provision it again. */
    }
    f->log_type = "device-provisioned";
    if (!hub_device_id_valid(j->ev.device_id))
        return fail_permanent(f, "invalid device ID: Azure IoT Hub accepts 1 to 128 characters of "
                                 "A-Z a-z 0-9 - : . + %% _ # * ? ! ( ) , = @ ; $ '");
    struct iot_error err = {0};
    /* Linked before the identity exists, so a decommission always finds what to delete. */
    if (!linked &&
        store_device_link(j->app->store, j->ev.tenant_id, j->ev.device_id, &in->id, &err) != IOT_OK)
        return fail_store(f, &err, "failed to connect device to integration");
    if (!keepalive(j, f))
        return false;
    struct hub_device d = {0};
    char text[CS_MAX];
    bool ok = identity_ensure(j, cs, want, &d, f);
    if (ok && !d.primary_key[0])
        ok = fail_permanent(f, "device has no connection string");
    bool fits = false;
    if (ok)
        fits = lifecycle_device_connstr(in, d.device_id, d.primary_key, text, sizeof text);
    hub_device_clear(&d);
    if (ok && !fits)
        ok = fail_permanent(f, "the device's connection string is longer than %d bytes", CS_MAX);
    if (!ok) {
        secret_wipe(text, sizeof text);
        return false;
    }
    char hash[LIFECYCLE_SHA256_HEX];
    lifecycle_connstr_hash(text, hash);
    if (hash[0] && strcmp(hash, j->rec.cs_sha256) == 0) {
        secret_wipe(text, sizeof text);
        return true; /* this very string was delivered already: no second deployment */
    }
    /* The twin is tagged before the delivery: a failure after it repeats only idempotent calls. */
    json_t *tags = json_pack("{s:b}", "mender", 1);
    memset(&herr, 0, sizeof herr);
    ok = keepalive(j, f);
    if (ok &&
        hub_twin_patch(j->app->hub, cs, j->ev.device_id, tags, NULL, NULL, NULL, &herr) != IOT_OK)
        ok = fail_hub(f, &herr, "failed to update the device twin");
    json_decref(tags);
    if (ok && !j->app->mender)
        ok = fail_permanent(f, "no Mender Configure client is configured");
    if (ok && (ok = keepalive(j, f))) {
        enum iot_err rc = mender_configure_push(j->app->mender, j->ev.tenant_id, j->ev.device_id,
                                                text, j->ev.request_id, &err);
        if (rc == IOT_ERR_INVALID)
            ok = fail_permanent(f, "failed to submit the connection string to Mender Configure: %s",
                                err.msg);
        else if (rc != IOT_OK)
            ok = fail_retry(f, "failed to submit the connection string to Mender Configure: %s",
                            err.msg);
    }
    secret_wipe(text, sizeof text);
    if (!ok)
        return false;
    snprintf(cs_hash, LIFECYCLE_SHA256_HEX, "%s", hash);
    log_event(j, "device-provisioned", &in->id, true, NULL, 0);
    return true;
}

/* One pass over the tenant's iot-hub integrations towards j->rec's desired state. `cs_hash`
 * receives the hash of a connection string delivered in this pass ("" when none; *cs_set tells
 * whether the record's hash must change). */
static bool reconcile_pass(struct job *j, char cs_hash[LIFECYCLE_SHA256_HEX], bool *cs_set,
                           struct failure *f)
{
    struct app *app = j->app;
    struct integration_list ins = {0};
    struct device_record dev = {0};
    struct iot_error err = {0};
    bool ok = true;
    bool decommission = j->rec.exists_seq > 0 && !j->rec.exists;
    *cs_set = false;
    cs_hash[0] = '\0';

    enum iot_err rc = app_integrations_list(app, j->ev.tenant_id, &ins, &err);
    if (rc == IOT_ERR_CRYPTO)
        return fail_permanent(f, "integration without usable credentials: %s", err.msg);
    if (rc != IOT_OK)
        return fail_store(f, &err, "failed to retrieve integrations");
    rc = store_device_get(app->store, j->ev.tenant_id, j->ev.device_id, &dev, &err);
    if (rc != IOT_OK && rc != IOT_ERR_NOT_FOUND) {
        ok = fail_store(f, &err, "failed to retrieve the device");
        goto out;
    }
    for (size_t i = 0; ok && i < ins.len; i++) {
        const struct integration *in = &ins.items[i];
        if (in->provider != PROVIDER_IOT_HUB)
            continue;
        bool linked = false;
        for (size_t k = 0; k < dev.n_integrations && !linked; k++)
            linked = uuid_equal(&dev.integration_ids[k], &in->id);
        /* Not linked: a device we never provisioned (it predates the integration), or one an
         * operator unlinked after we did (DELETE /devices/{id}), is left alone; only our own
         * unfinished provisioning, or a provision event not applied yet, goes on. Decided on the
         * record, not on the kind of the message in hand: whichever of the device's messages
         * takes the lease applies the same state (a decommission interrupted after unlinking
         * leaves a delivered hash behind, and the newer provision must still win). */
        bool ours = j->rec.exists && j->rec.exists_seq > 0;
        bool new_provision = j->rec.exists_seq > j->rec.applied_exists_seq;
        if (!linked && !(ours && (!j->rec.cs_sha256[0] || new_provision)))
            continue;
        f->has_integration = true;
        f->integration_id = in->id;
        f->log_type = decommission    ? "device-decommissioned"
                      : j->rec.exists ? "device-provisioned"
                                      : "device-status-changed";
        struct connstr cs;
        if (!lifecycle_integration_connstr(in, &cs)) {
            ok = fail_permanent(f, "no connection string or credentials configured for the "
                                   "tenant");
            break;
        }
        if (!app->hub) {
            ok = fail_retry(f, "no IoT Hub client configured");
            break;
        }
        if (!(ok = keepalive(j, f)))
            break;
        struct hub_error herr = {0};
        if (decommission) {
            bool existed = false;
            if (hub_device_delete(app->hub, &cs, j->ev.device_id, &existed, &herr) != IOT_OK) {
                ok = fail_hub(f, &herr, "failed to delete the device from IoT Hub");
                break;
            }
            if (store_device_unlink(app->store, j->ev.tenant_id, j->ev.device_id, &in->id, &err) !=
                IOT_OK) {
                ok = fail_store(f, &err, "failed to disconnect the device from the integration");
                break;
            }
            log_event(j, "device-decommissioned", &in->id, true, NULL, 0);
        } else if (j->rec.exists) {
            char hash[LIFECYCLE_SHA256_HEX] = "";
            ok = provision(j, in, &cs, linked, hash, f);
            if (ok && hash[0]) {
                snprintf(cs_hash, LIFECYCLE_SHA256_HEX, "%s", hash);
                *cs_set = true;
            }
        } else {
            /* Known to Mender before our time (linked), never provisioned by an event. */
            bool changed = false;
            enum hub_device_status want = j->rec.enabled ? HUB_STATUS_ENABLED : HUB_STATUS_DISABLED;
            rc = hub_device_set_status(app->hub, &cs, j->ev.device_id, want, NULL, NULL, &changed,
                                       &herr);
            if (rc == IOT_OK && changed)
                log_event(j, "device-status-changed", &in->id, true, NULL, 0);
            else if (rc != IOT_OK && herr.cls != HUB_ERR_NOT_FOUND)
                ok = fail_hub(f, &herr, "failed to update the device's status in IoT Hub");
        }
    }
    if (ok && decommission) {
        f->log_type = NULL;
        f->has_integration = false;
        rc = store_device_delete(app->store, j->ev.tenant_id, j->ev.device_id, &err);
        if (rc != IOT_OK && rc != IOT_ERR_NOT_FOUND)
            ok = fail_store(f, &err, "failed to delete the device");
        if (ok && j->rec.cs_sha256[0]) {
            *cs_set = true; /* a provisioning after this delivers the new keys */
            cs_hash[0] = '\0';
        }
    }
out:
    device_record_clear(&dev);
    integration_list_clear(&ins);
    return ok;
}

/* ---- the whole event ---- */

static void lease_release(struct job *j)
{
    if (!j->leased)
        return;
    struct iot_error err = {0};
    if (queue_lease_release(j->app->queue, j->key, j->lease_rev, &err) != IOT_OK)
        log_write(LOG_LEVEL_DEBUG, j->ev.request_id, j->ev.tenant_id,
                  "device %s: cannot release its lease (it expires by itself): %s", j->ev.device_id,
                  err.msg);
    j->leased = false;
}

static void finish_failure(struct job *j, struct failure *f, struct lifecycle_result *out)
{
    bool last = j->o->max_deliver > 0 && j->m->deliveries >= (uint64_t)j->o->max_deliver;
    snprintf(out->reason, sizeof out->reason, "%s", f->msg);
    if (!f->permanent && !last) {
        out->outcome = LIFECYCLE_NAK;
        out->delay_ms = lifecycle_retry_delay_ms(j->m->deliveries, f->retry_after_ms);
        return;
    }
    if (f->busy && j->m->requeues < LIFECYCLE_REQUEUES_MAX) {
        out->outcome = LIFECYCLE_REQUEUE;
        return;
    }
    out->outcome = LIFECYCLE_DEAD;
    if (!f->permanent)
        snprintf(out->reason, sizeof out->reason, "last delivery (%" PRIu64 ") failed: %.400s",
                 j->m->deliveries, f->msg);
    if (f->log_type && f->has_integration)
        log_event(j, f->log_type, &f->integration_id, false, out->reason, f->status_code);
}

void lifecycle_handle(struct app *app, const struct lifecycle_worker_options *o,
                      struct queue_msg *m, struct lifecycle_result *out)
{
    memset(out, 0, sizeof *out);
    struct job j = {.app = app, .o = o, .m = m};
    struct failure f = {0};
    struct iot_error err = {0};
    j.progress_at = j.lease_at = now_ms(CLOCK_MONOTONIC);

    if (lifecycle_event_decode(m->data, m->len, &j.ev, &err) != IOT_OK) {
        out->outcome = LIFECYCLE_DEAD;
        snprintf(out->reason, sizeof out->reason, "invalid event: %.400s", err.msg);
        return;
    }
    lifecycle_device_key(j.ev.tenant_id, j.ev.device_id, j.key);
    /* A first delivery almost always has work to do: it takes the lease before recording, so
     * the record it reads and writes under the lease is current and needs no second read. A
     * redelivery records first and leaves the lease alone when its state is applied already
     * (the usual case after another worker held the lease). */
    bool lease_first = m->deliveries <= 1;
    enum iot_err rc = IOT_OK;
    if (lease_first) {
        rc = queue_lease_acquire(app->queue, j.key, o->owner, &j.lease_rev, &err);
        if (rc == IOT_OK) {
            j.leased = true;
            j.lease_at = now_ms(CLOCK_MONOTONIC);
        } else if (rc != IOT_ERR_CONFLICT) {
            fail_retry(&f, "cannot take the device's lease: %s", err.msg);
            goto failed;
        }
    }
    if (!record_event(&j, &f))
        goto failed;
    if (j.rec.applied_gen >= j.rec.gen)
        goto done;

    if (!lease_first)
        rc = queue_lease_acquire(app->queue, j.key, o->owner, &j.lease_rev, &err);
    if (rc == IOT_ERR_CONFLICT) {
        /* The holder will most likely apply our state; the redelivery checks. */
        if (o->max_deliver > 0 && m->deliveries >= (uint64_t)o->max_deliver) {
            /* Busy, not broken: the holder is working on this device. */
            out->outcome =
                m->requeues < LIFECYCLE_REQUEUES_MAX ? LIFECYCLE_REQUEUE : LIFECYCLE_DEAD;
            snprintf(out->reason, sizeof out->reason,
                     "another worker held the device's lease on the last delivery");
        } else {
            out->outcome = LIFECYCLE_NAK;
            int64_t delay = LEASE_RETRY_STEP_MS * (int64_t)(m->deliveries ? m->deliveries : 1);
            out->delay_ms = delay > LEASE_RETRY_CAP_MS ? LEASE_RETRY_CAP_MS : delay;
            snprintf(out->reason, sizeof out->reason,
                     "the device's lease is held by another "
                     "worker");
        }
        goto cleanup;
    }
    if (rc != IOT_OK) {
        fail_retry(&f, "cannot take the device's lease: %s", err.msg);
        goto failed;
    }
    if (!j.leased) {
        j.leased = true;
        j.lease_at = now_ms(CLOCK_MONOTONIC);
        /* The record may have moved between recording and taking the lease. */
        if (!record_read(&j, &f))
            goto failed;
    }

    for (int pass = 0; j.rec.applied_gen < j.rec.gen; pass++) {
        if (pass == RECONCILE_PASSES_MAX) {
            fail_retry(&f, "the device's desired state kept changing");
            f.retry_after_ms = 0;
            goto failed;
        }
        uint64_t gen = j.rec.gen;
        uint64_t exists_seq = j.rec.exists_seq;
        char hash[LIFECYCLE_SHA256_HEX];
        bool cs_set = false;
        memset(&f, 0, sizeof f);
        bool ok = reconcile_pass(&j, hash, &cs_set, &f);
        if (!ok) {
            if (cs_set) {
                /* Keep what was delivered, so the retry does not deploy it again. */
                struct failure ignored = {0};
                if (hash[0])
                    record_delivery(&j, 0, 0, hash, &ignored);
                else
                    record_applied(&j, 0, 0, hash, &ignored);
            }
            goto failed;
        }
        bool recorded = cs_set && hash[0]
                            ? record_delivery(&j, gen, exists_seq, hash, &f)
                            : record_applied(&j, gen, exists_seq, cs_set ? hash : NULL, &f);
        if (!recorded)
            goto failed;
    }
done:
    out->outcome = LIFECYCLE_ACK;
    goto cleanup;
failed:
    finish_failure(&j, &f, out);
cleanup:
    lease_release(&j);
    lifecycle_record_clear(&j.rec);
    lifecycle_event_clear(&j.ev);
}

/* ---- threads ---- */

struct worker {
    struct lifecycle_workers *pool;
    unsigned index;
    pthread_t thread;
    bool started;
    char owner[300];
};

struct lifecycle_workers {
    struct app *app;
    struct lifecycle_workers_options o;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool stop; /* under mu */
    atomic_bool stopping;
    unsigned n;
    struct worker *w;
};

/* Sleeps up to `ms` unless a stop is requested. Returns false when stopping. */
static bool pause_ms(struct lifecycle_workers *pool, int64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&pool->mu);
    while (!pool->stop) {
        if (pthread_cond_timedwait(&pool->cond, &pool->mu, &until) == ETIMEDOUT)
            break;
    }
    bool running = !pool->stop;
    pthread_mutex_unlock(&pool->mu);
    return running;
}

static void count(struct app *app, const char *family, const struct queue_msg *m)
{
    char labels[64];
    snprintf(labels, sizeof labels, "kind=\"%.32s\"", m->kind ? m->kind : "");
    metrics_counter_add(app->metrics, family, labels, 1);
}

static void act(struct lifecycle_workers *pool, struct queue_msg *m,
                const struct lifecycle_result *r)
{
    struct app *app = pool->app;
    struct iot_error err = {0};
    switch (r->outcome) {
    case LIFECYCLE_ACK:
        queue_ack(m);
        count(app, "iot_manager_events_applied_total", m);
        return;
    case LIFECYCLE_NAK:
        log_debug("event %" PRIu64 " (delivery %" PRIu64 "): retrying in %" PRId64 " ms: %s",
                  m->seq, m->deliveries, r->delay_ms, r->reason);
        queue_nak(m, r->delay_ms);
        count(app, "iot_manager_events_retried_total", m);
        return;
    case LIFECYCLE_DEAD:
        if (queue_dead_letter(app->queue, m, r->reason, &err) != IOT_OK) {
            log_warn("event %" PRIu64 ": cannot dead-letter it (%s); retrying: %s", m->seq, err.msg,
                     r->reason);
            queue_nak(m, lifecycle_retry_delay_ms(m->deliveries, -1));
            return;
        }
        log_warn("event %" PRIu64 " (%s) moved to the dead-letter stream: %s", m->seq,
                 m->kind ? m->kind : "?", r->reason);
        queue_ack(m);
        count(app, "iot_manager_events_dead_lettered_total", m);
        return;
    case LIFECYCLE_REQUEUE:
        if (queue_requeue(app->queue, m, &err) != IOT_OK) {
            log_warn("event %" PRIu64 ": cannot requeue it (%s); retrying: %s", m->seq, err.msg,
                     r->reason);
            queue_nak(m, lifecycle_retry_delay_ms(m->deliveries, -1));
            return;
        }
        log_info("event %" PRIu64 " (%s, first published as %" PRIu64 ") requeued after %" PRIu64
                 " deliveries (requeue %" PRIu64 "): %s",
                 m->seq, m->kind ? m->kind : "?", event_order(m), m->deliveries, m->requeues + 1,
                 r->reason);
        queue_ack(m);
        count(app, "iot_manager_events_requeued_total", m);
        return;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct lifecycle_workers *pool = w->pool;
    struct app *app = pool->app;
    struct queue_consumer *consumer = NULL;
    size_t batch = pool->o.fetch_batch ? pool->o.fetch_batch : 1;
    struct queue_msg *msgs = calloc(batch, sizeof *msgs);
    int64_t backoff = 200;
    bool warned = false;
    struct lifecycle_worker_options wo = {
        .owner = w->owner,
        .lease_ttl_ms = pool->o.lease_ttl_ms,
        .ack_wait_ms = pool->o.ack_wait_ms,
        .max_deliver = queue_max_deliver(app->queue),
        .event_exp_s = pool->o.event_exp_s,
    };
    if (!msgs) {
        log_error("worker %u: out of memory", w->index);
        return NULL;
    }
    while (!atomic_load(&pool->stopping)) {
        struct iot_error err = {0};
        if (!consumer) {
            enum iot_err rc = queue_health(app->queue, &err);
            if (rc == IOT_OK)
                rc = queue_consumer_new(app->queue, &consumer, &err);
            if (rc != IOT_OK) {
                if (!warned && w->index == 0)
                    log_warn("workers waiting for NATS: %s", err.msg);
                warned = true;
                pause_ms(pool, backoff);
                backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
                continue;
            }
            if (warned && w->index == 0)
                log_info("workers connected to NATS");
            warned = false;
            wo.max_deliver = queue_max_deliver(app->queue);
        }
        size_t n = 0;
        enum iot_err rc = queue_fetch(consumer, msgs, batch, 1000, &n, &err);
        if (rc != IOT_OK) {
            log_debug("worker %u: fetch failed: %s", w->index, err.msg);
            queue_consumer_free(consumer);
            consumer = NULL;
            pause_ms(pool, backoff);
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
            continue;
        }
        backoff = 200;
        int64_t touched = now_ms(CLOCK_MONOTONIC);
        for (size_t i = 0; i < n; i++) {
            if (atomic_load(&pool->stopping)) {
                queue_nak(&msgs[i], 0); /* someone else takes it at once */
            } else {
                int64_t now = now_ms(CLOCK_MONOTONIC);
                if (pool->o.ack_wait_ms > 0 && now - touched > pool->o.ack_wait_ms / 3) {
                    for (size_t k = i; k < n; k++)
                        queue_in_progress(&msgs[k]);
                    touched = now;
                }
                struct lifecycle_result r;
                lifecycle_handle(app, &wo, &msgs[i], &r);
                act(pool, &msgs[i], &r);
            }
            queue_msg_release(&msgs[i]);
        }
    }
    queue_consumer_free(consumer);
    free(msgs);
    return NULL;
}

enum iot_err lifecycle_workers_start(struct app *app, const struct lifecycle_workers_options *o,
                                     struct lifecycle_workers **out, struct iot_error *err)
{
    *out = NULL;
    if (!app->queue)
        return iot_error_set(err, IOT_ERR_CONFIG, "lifecycle workers need IOT_MANAGER_NATS_URI");
    if (o->threads == 0 || o->threads > 256)
        return iot_error_set(err, IOT_ERR_CONFIG, "workers: must be 1..256");
    struct lifecycle_workers *pool = calloc(1, sizeof *pool);
    if (!pool || !(pool->w = calloc(o->threads, sizeof *pool->w))) {
        free(pool);
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    }
    pool->app = app;
    pool->o = *o;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cond, NULL);
    atomic_init(&pool->stopping, false);
    char host[256] = "";
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    for (unsigned i = 0; i < o->threads; i++) {
        struct worker *w = &pool->w[i];
        w->pool = pool;
        w->index = i;
        snprintf(w->owner, sizeof w->owner, "%.200s:%ld:%u", host, (long)getpid(), i);
        int prc = pthread_create(&w->thread, NULL, worker_main, w);
        if (prc != 0) {
            pool->n = i;
            lifecycle_workers_stop(pool);
            return iot_error_set(err, IOT_ERR_INTERNAL, "cannot start worker thread: %s",
                                 strerror(prc));
        }
        w->started = true;
    }
    pool->n = o->threads;
    *out = pool;
    return IOT_OK;
}

void lifecycle_workers_stop(struct lifecycle_workers *pool)
{
    if (!pool)
        return;
    atomic_store(&pool->stopping, true);
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    pthread_cond_broadcast(&pool->cond);
    pthread_mutex_unlock(&pool->mu);
    for (unsigned i = 0; i < pool->n; i++) {
        if (pool->w[i].started)
            pthread_join(pool->w[i].thread, NULL);
    }
    pthread_cond_destroy(&pool->cond);
    pthread_mutex_destroy(&pool->mu);
    free(pool->w);
    free(pool);
}
