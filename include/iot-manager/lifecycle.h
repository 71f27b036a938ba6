/* The device lifecycle pipeline (docs/lifecycle-design.md, docs/events.md).
 *
 * Front half (internal API): Mender's provision / status / decommission calls are parsed into
 * lifecycle events (JSON, version 1), one per device, and published to the queue; the API answers
 * 202 only once every event of the request is stored.
 *
 * Back half (workers): each event is recorded into the device's desired state (queue KV,
 * compare-and-set, a field only moves forward in stream-sequence order), then whoever holds the
 * device's lease reconciles the tenant's IoT Hub, Mender Configure, the device records and the
 * event log to that state, until the applied generation catches up with the desired one.
 *
 * Everything here uses the ports only (queue.h, configure.h, hub.h, store.h).
 */
#ifndef IOT_MANAGER_LIFECYCLE_H
#define IOT_MANAGER_LIFECYCLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "iot-manager/app.h"
#include "iot-manager/error.h"
#include "iot-manager/queue.h"

#define LIFECYCLE_EVENT_VERSION 1
#define LIFECYCLE_BULK_MAX      100 /* Mender's limit of a bulk status request */
#define LIFECYCLE_KEY_MAX       35  /* "d." + 32 hex digits + NUL */
#define LIFECYCLE_STATUS_MAX    32
#define LIFECYCLE_SHA256_HEX    65
#define LIFECYCLE_ID_MAX        1024 /* device ids longer than this are refused (400) */
/* A device connection string: HostName (<= 255 + port) + DeviceId (<= 128) + key (<= 88). */
#define LIFECYCLE_CS_MAX 1024

enum lifecycle_kind { LIFECYCLE_PROVISION = 0, LIFECYCLE_STATUS, LIFECYCLE_DECOMMISSION };

/* "provision", "status", "decommission": also the subject suffix. */
const char *lifecycle_kind_name(enum lifecycle_kind k);
bool lifecycle_kind_parse(const char *text, enum lifecycle_kind *out);

/* One of Mender's statuses: accepted, pending, rejected, noauth, preauthorized, decommissioned. */
bool lifecycle_status_valid(const char *status);
/* accepted and preauthorized enable the device in the hub; every other status disables it. */
bool lifecycle_status_enables(const char *status);

/* ---- events ---- */

/* A decoded event. Every pointer is owned; lifecycle_event_clear() frees them. */
struct lifecycle_event {
    enum lifecycle_kind kind;
    char *tenant_id;  /* "" for open-source Mender */
    char *device_id;  /* never empty */
    char *status;     /* provision and status events; NULL for decommission */
    char *request_id; /* "" when the caller sent none */
    char *time;       /* RFC 3339 with nanoseconds, when the event was accepted */
    json_t *device;   /* the DeviceEvent as received (object); at least {"id": device_id} */
};

void lifecycle_event_clear(struct lifecycle_event *ev);

/* The version-1 JSON of `ev` (docs/events.md) into a malloc'd buffer (caller frees). */
enum iot_err lifecycle_event_encode(const struct lifecycle_event *ev, char **out, size_t *len,
                                    struct iot_error *err);

/* Parses and validates a published event (from the internal API or another system). INVALID
 * with the reason for anything that is not a version-1 event. `out` is caller-cleared (also on
 * failure). */
enum iot_err lifecycle_event_decode(const char *data, size_t len, struct lifecycle_event *out,
                                    struct iot_error *err);

/* ---- internal API: requests into events ---- */

/* The events of one request, encoded, ready for one queue_publish() call. */
struct lifecycle_batch {
    char **payloads;            /* owned, `n` malloc'd buffers */
    size_t *lens;               /* owned */
    enum lifecycle_kind *kinds; /* owned */
    size_t n;
};

void lifecycle_batch_clear(struct lifecycle_batch *b);

/* POST /tenants/{t}/devices: one DeviceEvent object (`id`, or the legacy `device_id` which wins
 * when not empty). INVALID "malformed request body: ..." or "missing device ID". `request_id`
 * may be NULL. `out` is caller-cleared. */
enum iot_err lifecycle_parse_provision(const char *tenant, const char *body, size_t len,
                                       const char *request_id, struct lifecycle_batch *out,
                                       struct iot_error *err);

/* DELETE /tenants/{t}/devices/{d}. */
enum iot_err lifecycle_parse_decommission(const char *tenant, const char *device_id,
                                          const char *request_id, struct lifecycle_batch *out,
                                          struct iot_error *err);

/* PUT /tenants/{t}/bulk/devices/status/{status}: an array of `{"id","revision"}` or of full
 * DeviceEvent objects (legacy `device_id` accepted). INVALID "invalid status '<s>'", "invalid
 * request body: ..." or "too many bulk items: max 100 items per request". Items without an id
 * are skipped (Mender acts on nothing for them). */
enum iot_err lifecycle_parse_bulk_status(const char *tenant, const char *status, const char *body,
                                         size_t len, const char *request_id,
                                         struct lifecycle_batch *out, struct iot_error *err);

/* Publishes the batch in one queue_publish() call. UNAVAILABLE "lifecycle events need
 * IOT_MANAGER_NATS_URI" without a queue; UNAVAILABLE with the queue's reason when not every
 * event was stored in time. */
enum iot_err lifecycle_publish(struct app *app, struct lifecycle_batch *b, struct iot_error *err);

/* Adds "nats" to the health `checks` when a queue is configured: "ok" or the problem.
 * IOT_ERR_UNAVAILABLE when it is not healthy; IOT_OK when healthy or not configured. */
enum iot_err lifecycle_health(struct app *app, json_t *checks, struct iot_error *err);

/* GET /events: the tenant's event log, newest first, page `page` (from 1) of `per_page`, only
 * events delivered to `integration_id` when not NULL. `out` is owned by the caller. */
enum iot_err lifecycle_events_list(struct app *app, const char *tenant,
                                   const struct uuid *integration_id, int64_t page,
                                   int64_t per_page, struct event_list *out, struct iot_error *err);

/* ---- desired state ---- */

/* The device's KV key: "d." + hex of the first 16 bytes of SHA-256(tenant "\0" device). */
void lifecycle_device_key(const char *tenant, const char *device_id, char out[LIFECYCLE_KEY_MAX]);

/* A device's desired and applied state (docs/lifecycle-design.md §3). */
struct lifecycle_record {
    char *tenant_id; /* owned */
    char *device_id; /* owned */
    bool exists;
    uint64_t exists_seq; /* stream sequence of the event that set `exists`; 0: never set */
    bool enabled;
    uint64_t enabled_seq;
    char status[LIFECYCLE_STATUS_MAX];    /* Mender status that set `enabled` */
    uint64_t gen;                         /* bumped by every change of the desired fields */
    uint64_t applied_gen;                 /* the generation whose state is in the hub */
    uint64_t applied_exists_seq;          /* exists_seq of that applied state: a provision event
                                           * newer than it is not applied yet, whatever message
                                           * happens to reconcile the device */
    char cs_sha256[LIFECYCLE_SHA256_HEX]; /* hex SHA-256 of the connection string delivered to
                                           * Configure; "" when none */
    uint64_t epoch; /* the events stream the *_seq fields count in (its creation time); 0: not
                     * known (written before epochs were recorded) */
};

void lifecycle_record_clear(struct lifecycle_record *r);

/* An empty record for the device (nothing desired yet). */
enum iot_err lifecycle_record_init(struct lifecycle_record *r, const char *tenant,
                                   const char *device_id);
enum iot_err lifecycle_record_encode(const struct lifecycle_record *r, char **out, size_t *len,
                                     struct iot_error *err);
/* `out` is caller-cleared (also on failure). */
enum iot_err lifecycle_record_decode(const char *data, size_t len, struct lifecycle_record *out,
                                     struct iot_error *err);

/* Records event `ev` stored at stream sequence `seq` of the events stream `epoch` (0: not
 * known): a field changes only when `seq` is newer than the sequence that last set it, so an
 * older event never overrides a newer one and a redelivery changes nothing. A stream created
 * since the record's sequences were counted (a later epoch) restarted its sequences: every event
 * of it is newer than what the record holds, so those sequences start again from 0; an event of
 * an earlier epoch than the record's changes nothing. `gen`
 * is bumped when the desired hub state (exists, enabled) moved, or was set for the first time.
 * Returns true when the record must be written. */
bool lifecycle_record_apply(struct lifecycle_record *r, const struct lifecycle_event *ev,
                            uint64_t seq, uint64_t epoch);

/* ---- building blocks shared by the workers and sync-devices (workers.c) ---- */

/* Borrowed view of an iot-hub integration's service connection string: the strings stay owned
 * by `in` (opened secrets). False when it has no host name or no usable key. */
bool lifecycle_integration_connstr(const struct integration *in, struct connstr *out);

/* The connection string delivered to Configure (contract §3.6):
 * "HostName=<the integration's host, as written>;DeviceId=<id>;SharedAccessKey=<primary key>".
 * A secret: the caller wipes `out` (capacity `cap`). False when it does not fit. */
bool lifecycle_device_connstr(const struct integration *in, const char *device_id,
                              const char *primary_key, char *out, size_t cap);

/* Hex SHA-256 of a delivered connection string, as kept in the record's cs_sha256 ("" when
 * hashing failed, which never equals a stored hash). */
void lifecycle_connstr_hash(const char *text, char out[LIFECYCLE_SHA256_HEX]);

/* One entry of the event log, with a single delivery status. Everything is borrowed. */
struct lifecycle_log_entry {
    const char *tenant_id;
    const char *device_id;  /* for the warning when the entry cannot be saved */
    const char *request_id; /* may be NULL */
    const char *type;       /* device-provisioned, device-status-changed, device-decommissioned */
    const json_t *data;     /* Mender's event data ({"id", ...}) */
    const struct uuid *integration_id;
    bool success;
    const char *error; /* NULL or "" when none; never a secret */
    int status_code;   /* 0 when none */
    int64_t exp_s;     /* expiry after this many seconds (IOT_MANAGER_EVENT_EXP_TIMEOUT) */
};

/* Appends the entry to the tenant's event log. A failure is only logged as a warning: the
 * change it records is made already, and repeating the change for a log line is worse. */
void lifecycle_event_log(struct app *app, const struct lifecycle_log_entry *e);

/* ---- workers ---- */

enum lifecycle_outcome {
    LIFECYCLE_ACK = 0, /* applied (or nothing to do): acknowledge */
    LIFECYCLE_NAK,     /* try again after delay_ms */
    LIFECYCLE_DEAD,    /* permanent failure: dead-letter, then acknowledge */
    LIFECYCLE_REQUEUE, /* the budget ran out while the hub was busy: requeue, then acknowledge */
};

/* Requeues of one event before a busy hub counts against it like any other failure: with the
 * default budget of 20 deliveries (about 7.5 minutes of backoff each), about 12 hours. */
#define LIFECYCLE_REQUEUES_MAX 100

struct lifecycle_result {
    enum lifecycle_outcome outcome;
    int64_t delay_ms;               /* LIFECYCLE_NAK */
    char reason[IOT_ERROR_MSG_MAX]; /* NAK and DEAD: why (never a secret) */
};

struct lifecycle_worker_options {
    const char *owner;    /* lease owner id, e.g. "host:pid:3"; borrowed */
    int64_t lease_ttl_ms; /* renew the lease after a third of it */
    int64_t ack_wait_ms;  /* tell the queue we are in progress after a third of it */
    int max_deliver;      /* the last delivery dead-letters instead of retrying */
    int64_t event_exp_s;  /* event log expiry */
};

/* Handles one delivered event: record, lease, reconcile, release. Does not ack; the caller acts
 * on `out`. `app->queue` must be set. */
void lifecycle_handle(struct app *app, const struct lifecycle_worker_options *o,
                      struct queue_msg *m, struct lifecycle_result *out);

/* Nak delay for a retryable failure at delivery `deliveries` (exponential, Retry-After
 * honoured, capped at 30 s). */
int64_t lifecycle_retry_delay_ms(uint64_t deliveries, int64_t retry_after_ms);

struct lifecycle_workers;

struct lifecycle_workers_options {
    unsigned threads;     /* 1..256 */
    unsigned fetch_batch; /* messages per fetch */
    int64_t lease_ttl_ms;
    int64_t ack_wait_ms;
    int64_t event_exp_s;
};

/* Starts the worker threads, each with its own consumer on `app->queue`; they wait (and back
 * off) while the queue is not ready. `*out` is released by lifecycle_workers_stop(). */
enum iot_err lifecycle_workers_start(struct app *app, const struct lifecycle_workers_options *o,
                                     struct lifecycle_workers **out, struct iot_error *err);

/* Asks every thread to stop after the event in hand, gives back fetched events not yet started,
 * joins the threads and frees. NULL-safe. */
void lifecycle_workers_stop(struct lifecycle_workers *w);

#endif
