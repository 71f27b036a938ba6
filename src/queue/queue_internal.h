/* Private to the NATS JetStream queue adapter (src/queue/): the adapter's state, shared between
 * the background set-up thread, libnats' callbacks and the callers' threads. */
#ifndef IOT_MANAGER_QUEUE_INTERNAL_H
#define IOT_MANAGER_QUEUE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <nats/nats.h>

#include "iot-manager/queue.h"

/* Dead letters live under a fixed subject space, whatever the stream's name. */
#define QUEUE_DLQ_SUBJECT_PREFIX "iot-manager.dlq"
#define QUEUE_PREFIX_MAX         128
#define QUEUE_KIND_MAX           64
#define QUEUE_SUBJECT_MAX        (QUEUE_PREFIX_MAX + QUEUE_KIND_MAX + 2)
#define QUEUE_KEY_MAX            256
#define QUEUE_REASON_MAX         512
/* Headers of requeued events (queue_requeue), read back when they are fetched. */
#define QUEUE_HDR_ORDER_SEQ "Iot-Manager-Order-Seq"
#define QUEUE_HDR_REQUEUES  "Iot-Manager-Requeues"
/* The consumer's MaxDeliver is this much above the workers' budget (max_deliver): a worker acts
 * on the last delivery of its budget (dead letter or requeue) and, when that fails, naks it,
 * which needs a delivery left. */
#define QUEUE_MAX_DELIVER_SLACK 5
/* Nats-Msg-Id values: "<uuid>-<index>", "dlq:<stream>:<seq>" or "requeue:<stream>:<seq>". */
#define QUEUE_MSG_ID_MAX 128
/* Duplicate window of our streams: longer than any publish retry (publish_timeout_ms <= 60 s). */
#define QUEUE_DUPLICATES_NS ((int64_t)120 * 1000000000)
#define QUEUE_NS_PER_MS     ((int64_t)1000000)

/* JetStream API error codes we act on (server's jsErrCode values). */
#define QUEUE_JERR_CONSUMER_NOT_FOUND   10014
#define QUEUE_JERR_SEQ_NOT_FOUND        10043
#define QUEUE_JERR_STREAM_NOT_FOUND     10059
#define QUEUE_JERR_SUBJECTS_OVERLAP     10065
#define QUEUE_JERR_WRONG_LAST_SEQUENCE  10071
#define QUEUE_JERR_WORKQUEUE_NOT_UNIQUE 10100

/* Reads the events stream's creation time into events_epoch (unchanged when it cannot be
 * read), logging a change. */
void queue_refresh_epoch(struct queue *q);
/* Stores a creation time read from the events stream into events_epoch, logging a change. */
void queue_note_epoch(struct queue *q, int64_t created);

/* A numeric header of `m`; 0 when absent or not a number. */
uint64_t queue_header_u64(natsMsg *m, const char *key);

struct queue {
    /* options, copied at open; immutable afterwards */
    char *url;
    char stream[QUEUE_NAME_MAX];
    char prefix[QUEUE_PREFIX_MAX];
    char consumer[QUEUE_NAME_MAX];
    char dlq_stream[QUEUE_NAME_MAX];
    char state_bucket[QUEUE_NAME_MAX];
    char lease_bucket[QUEUE_NAME_MAX];
    enum queue_storage storage;
    int replicas;
    int64_t ack_wait_ms;
    int max_deliver;
    int max_ack_pending;
    int64_t lease_ttl_ms;
    int64_t publish_timeout_ms;
    int64_t connect_timeout_ms;

    /* The events stream's creation time as the last set-up found it (queue_msg.epoch); set
     * before the consumer is (re-)created, so no message of a new stream is fetched with the
     * old one. */
    _Atomic uint64_t events_epoch;

    natsOptions *nopts;
    pthread_t thread;
    bool thread_started;

    /* Everything below is guarded by `mu`; `cond` is broadcast on every change of state. */
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    bool closing;
    bool connected;    /* the TCP connection is up (callbacks keep it current) */
    bool setup_needed; /* (re)connected: streams, consumer and buckets must be checked */
    bool ready;        /* connected and set up */
    bool ever_ready;
    bool config_error; /* sticky: setup stopped */
    bool nc_closed;    /* the closed callback ran: no more callbacks will come */
    char reason[IOT_ERROR_MSG_MAX];
    /* Set once by the background thread before `ready` first becomes true, then only read;
     * released by queue_close(). */
    natsConnection *nc;
    jsCtx *js;
    kvStore *state_kv;
    kvStore *lease_kv;
};

struct queue_consumer {
    struct queue *q;
    natsSubscription *sub;
};

/* --- queue.c --- */

int64_t queue_mono_ms(void);

/* IOT_OK when ready; otherwise fills `err` (UNAVAILABLE, or CONFIG when set-up stopped) without
 * any network round trip. `what` names the operation for the message. */
enum iot_err queue_check_ready(struct queue *q, const char *what, struct iot_error *err);

/* Waits until the queue is ready or `deadline_ms` (queue_mono_ms clock) passes. Returns IOT_OK
 * when ready, CONFIG when set-up stopped, UNAVAILABLE at the deadline. */
enum iot_err queue_wait_ready_until(struct queue *q, int64_t deadline_ms, struct iot_error *err);

/* Asks the background thread to check the streams, consumer and buckets again (they may have
 * been deleted, or the server lost its state). */
void queue_request_setup(struct queue *q);

bool queue_is_connected(struct queue *q);

/* Maps a failed libnats call into UNAVAILABLE with a message naming `what`. */
enum iot_err queue_nats_error(struct queue *q, struct iot_error *err, natsStatus s, jsErrCode jerr,
                              const char *what);

/* --- queue_setup.c --- */

/* Creates or updates the events stream, the durable consumer, the dead-letter stream and both
 * buckets, and opens the buckets' handles when not open yet. Called by the background thread
 * only. IOT_ERR_CONFIG for what an operator must fix (immutable settings); UNAVAILABLE
 * otherwise (retried). */
enum iot_err queue_setup_run(struct queue *q, struct iot_error *err);

/* --- queue_publish.c --- */

struct queue_pub_item {
    char subject[QUEUE_SUBJECT_MAX];
    const void *data; /* borrowed */
    size_t len;
    char msg_id[QUEUE_MSG_ID_MAX];
    /* extra headers (dead letters): borrowed strings */
    const char *hdr_keys[8];
    const char *hdr_values[8];
    int nhdrs;
    uint64_t seq; /* out */
    bool done;    /* out */
};

/* Publishes every item not yet done, retrying until publish_timeout_ms. */
enum iot_err queue_pub_run(struct queue *q, struct queue_pub_item *items, size_t n,
                           struct iot_error *err);

/* Token rules for a subject suffix ("provision"). */
bool queue_valid_kind(const char *kind);

#endif
