/* The queue port: durable lifecycle events, per-device desired state and per-device leases.
 *
 * Adapter: NATS JetStream (src/queue/, libnats). The app layer sees only this header.
 * - Events go to a stream (file storage by default) on subjects "<subject_prefix>.<kind>"; a
 *   publish returns only once the stream acknowledged it, so the internal API never answers 202
 *   for an event that is not stored. Every process pulls from one durable consumer.
 * - Per-device desired state lives in a KV bucket and is written with compare-and-set on the
 *   entry's revision (atomic on the server, unlike findAndModify on FerretDB).
 * - Per-device leases live in a KV bucket whose MaxAge is the lease TTL: create succeeds for
 *   exactly one owner, a dead owner's lease expires by itself.
 * - Dead letters go to a second stream; they can be listed and replayed.
 *
 * Start-up never blocks on NATS: queue_open() returns at once and connects (and creates or
 * updates the streams, consumer and buckets) in the background, reconnecting forever. Until
 * then every call but queue_publish() fails fast with IOT_ERR_UNAVAILABLE; a publish keeps
 * trying for publish_timeout_ms, before the first connection as after a disconnection. A setting
 * JetStream cannot change on an existing stream (storage, retention) is reported by queue_health()
 * as IOT_ERR_CONFIG with a clear message, and the `server`/`worker` commands stop at start-up when
 * they see it.
 *
 * All calls are thread-safe; a consumer is used by one thread at a time.
 */
#ifndef IOT_MANAGER_QUEUE_H
#define IOT_MANAGER_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iot-manager/error.h"

#define QUEUE_NAME_MAX 64

enum queue_storage { QUEUE_STORAGE_FILE = 0, QUEUE_STORAGE_MEMORY };

struct queue_options {
    const char *url;            /* nats://host:port[,nats://...]; copied */
    const char *stream;         /* events stream, default "IOT_MANAGER_EVENTS" */
    const char *subject_prefix; /* default "iot-manager.events" */
    const char *consumer;       /* durable pull consumer, default "iot-manager-workers" */
    const char *dlq_stream;     /* default "IOT_MANAGER_DLQ" (subjects "iot-manager.dlq.>") */
    const char *state_bucket;   /* KV, default "IOT_MANAGER_DEVICES" */
    const char *lease_bucket;   /* KV, default "IOT_MANAGER_LEASES" */
    enum queue_storage storage; /* default file */
    int replicas;               /* default 1 */
    int64_t ack_wait_ms;        /* default 30000 */
    int max_deliver;            /* default 20 */
    int max_ack_pending;        /* default 1000; fetch batches stay below it */
    int64_t lease_ttl_ms;       /* default 30000 */
    int64_t publish_timeout_ms; /* total time a publish keeps trying, default 5000 */
    int64_t connect_timeout_ms; /* per connection attempt, default 2000 */
};

/* Fills the defaults listed above (url NULL). */
void queue_options_default(struct queue_options *o);

struct queue;

/* Starts connecting in the background; never blocks on the network. `*out` is released by
 * queue_close(). IOT_ERR_CONFIG for an invalid URL or option. */
enum iot_err queue_open(const struct queue_options *o, struct queue **out, struct iot_error *err);

/* Drains and closes; pending acks are flushed. NULL-safe. */
void queue_close(struct queue *q);

/* IOT_OK when connected and the streams, consumer and buckets are in place; UNAVAILABLE with
 * the reason otherwise; CONFIG when an existing stream has a setting we cannot change. */
enum iot_err queue_health(struct queue *q, struct iot_error *err);

/* Waits up to `timeout_ms` for queue_health() to become OK (or CONFIG). */
enum iot_err queue_wait_ready(struct queue *q, int64_t timeout_ms, struct iot_error *err);

/* ---- publishing ---- */

struct queue_publication {
    const char *kind; /* subject suffix: "provision", "status", "decommission" */
    const void *data; /* payload, borrowed */
    size_t len;
    uint64_t seq; /* out: the stream sequence it was stored at */
};

/* Publishes every publication and waits until the stream acknowledged each one, retrying for up
 * to publish_timeout_ms. IOT_OK only when all are stored; otherwise UNAVAILABLE (some may have
 * been stored: consumers must treat events idempotently). */
enum iot_err queue_publish(struct queue *q, struct queue_publication *pubs, size_t n,
                           struct iot_error *err);

/* ---- consuming ---- */

struct queue_msg {
    const char *subject; /* borrowed from the message */
    const char *kind;    /* the subject's last token */
    const char *data;    /* payload, not NUL-terminated */
    size_t len;
    uint64_t seq;        /* stream sequence */
    uint64_t deliveries; /* 1 on the first delivery */
    /* Where the event stands among its device's events: the sequence of the event as first
     * published, which a requeued copy (queue_requeue) carries over; `seq` otherwise. */
    uint64_t order_seq;
    uint64_t requeues; /* how many times this event was requeued (0: never) */
    /* The events stream's creation time (ns): sequences of a re-created stream start again at
     * 1, and only seq and order_seq of the same epoch compare. 0: not known. */
    uint64_t epoch;
    void *impl; /* adapter's message; owned until queue_msg_release() */
};

struct queue_consumer;

/* A handle on the durable consumer for one worker thread. Fails with UNAVAILABLE while not
 * ready. */
enum iot_err queue_consumer_new(struct queue *q, struct queue_consumer **out,
                                struct iot_error *err);
void queue_consumer_free(struct queue_consumer *c);

/* Fetches up to `max` messages (bounded below max_ack_pending), waiting up to `timeout_ms` for
 * the first. *n = 0 when nothing came (not an error). Each message must be acked, naked or
 * termed, then released. */
enum iot_err queue_fetch(struct queue_consumer *c, struct queue_msg *msgs, size_t max,
                         int64_t timeout_ms, size_t *n, struct iot_error *err);

enum iot_err queue_ack(struct queue_msg *m);                   /* done */
enum iot_err queue_nak(struct queue_msg *m, int64_t delay_ms); /* redeliver after delay */
enum iot_err queue_in_progress(struct queue_msg *m);           /* reset the ack timer */
enum iot_err queue_term(struct queue_msg *m);                  /* never redeliver */
void queue_msg_release(struct queue_msg *m);

/* The consumer's max_deliver, so a worker knows a delivery is the last one. */
int queue_max_deliver(const struct queue *q);

/* Publishes a copy of `m` to the events stream that keeps its place in the order (order_seq)
 * and starts again at delivery 1, with `requeues` one higher; the caller then acks `m`. For
 * events that failed only because the hub was busy, so that waiting for it does not use up the
 * delivery budget. Requeueing the same delivered message twice stores one copy. */
enum iot_err queue_requeue(struct queue *q, const struct queue_msg *m, struct iot_error *err);

/* ---- dead letters ---- */

/* Copies `m` to the dead-letter stream with the reason, original sequence and delivery count as
 * headers (the caller then acks or terms the original). */
enum iot_err queue_dead_letter(struct queue *q, const struct queue_msg *m, const char *reason,
                               struct iot_error *err);

struct queue_dead_letter_entry {
    uint64_t dlq_seq;      /* sequence in the dead-letter stream */
    uint64_t original_seq; /* sequence it had in the events stream */
    const char *kind;
    const char *reason;
    uint64_t deliveries;
    int64_t time_ms;
    const char *data; /* payload, not NUL-terminated */
    size_t len;
};

/* Calls `fn` for each dead letter, oldest first (borrowed entry, valid during the call). */
enum iot_err queue_dlq_list(struct queue *q,
                            enum iot_err (*fn)(const struct queue_dead_letter_entry *e, void *ctx),
                            void *ctx, struct iot_error *err);

/* Republishes dead letters to the events stream (new sequence: they count as the newest event
 * for their device) and deletes them from the dead-letter stream. `seqs`/`n` select by dead-letter
 * sequence; `all` replays everything. *replayed receives the count. NOT_FOUND for an unknown
 * sequence (nothing replayed). */
enum iot_err queue_dlq_replay(struct queue *q, const uint64_t *seqs, size_t n, bool all,
                              size_t *replayed, struct iot_error *err);

/* ---- per-device state (compare-and-set) ---- */

/* Keys: [-/_=.a-zA-Z0-9]+ (the app layer derives them from a hash of tenant and device). */

/* Reads `key`. NOT_FOUND (and *revision = 0) when absent. *value is malloc'd (caller frees). */
enum iot_err queue_state_get(struct queue *q, const char *key, char **value, size_t *len,
                             uint64_t *revision, struct iot_error *err);

/* Writes `key` only if its revision is still `expected` (0: only if absent). CONFLICT when it
 * changed meanwhile. *revision receives the new revision. */
enum iot_err queue_state_put(struct queue *q, const char *key, const void *value, size_t len,
                             uint64_t expected, uint64_t *revision, struct iot_error *err);

/* ---- per-device leases ---- */

/* Takes the lease on `key` for `owner`; CONFLICT when someone holds it. *revision identifies it. */
enum iot_err queue_lease_acquire(struct queue *q, const char *key, const char *owner,
                                 uint64_t *revision, struct iot_error *err);
/* Extends a lease we hold (CONFLICT if it was lost). */
enum iot_err queue_lease_renew(struct queue *q, const char *key, const char *owner,
                               uint64_t *revision, struct iot_error *err);
/* Releases a lease we hold; a lease already gone is not an error. Asynchronous: the release is
 * sent without waiting for the server's answer (a lost one leaves the lease to expire). */
enum iot_err queue_lease_release(struct queue *q, const char *key, uint64_t revision,
                                 struct iot_error *err);

/* ---- observability ---- */

struct queue_stats {
    uint64_t pending;     /* messages not yet delivered to the consumer (lag) */
    uint64_t ack_pending; /* delivered, not yet acked */
    uint64_t redelivered;
    uint64_t dead_letters;
};

enum iot_err queue_stats(struct queue *q, struct queue_stats *out, struct iot_error *err);

#endif
