/* Creates or reconciles the JetStream objects the queue needs.
 *
 * - Events stream: WorkQueue retention. The design has exactly one durable consumer and acks
 *   each message once its effect is recorded, so a message is useless after its ack: WorkQueue
 *   removes it then, keeping the stream as small as the backlog without any age or size limit
 *   that could drop an unprocessed event. It also makes the server refuse a second, overlapping
 *   consumer (every process must share the one durable). Duplicate window 2 min, so a publish
 *   retried with the same Nats-Msg-Id is stored once.
 * - Durable pull consumer: explicit acks, deliver all, AckWait/MaxDeliver/MaxAckPending from
 *   the options (mutable: updated in place when they change).
 * - Dead-letter stream: Limits retention (kept until replayed), direct get allowed (listing).
 * - KV buckets: history 1; the lease bucket's MaxAge is the lease TTL.
 *
 * Storage and retention cannot change on an existing stream: a mismatch is IOT_ERR_CONFIG,
 * naming the stream and the setting, and the set-up stops there.
 */
#include <stdio.h>
#include <string.h>

#include "iot-manager/log.h"
#include "queue/queue_internal.h"

static const char *storage_name(jsStorageType t)
{
    return t == js_MemoryStorage ? "memory" : "file";
}

static const char *retention_name(jsRetentionPolicy r)
{
    switch (r) {
    case js_LimitsPolicy:
        return "limits";
    case js_InterestPolicy:
        return "interest";
    case js_WorkQueuePolicy:
        return "workqueue";
    }
    return "unknown";
}

/* libnats' description of the last failure on this thread, without its "(file.c:123): "
 * source location. */
static const char *last_error_text(void)
{
    const char *t = nats_GetLastError(NULL);
    if (!t || !*t)
        return "no detail";
    const char *p = strstr(t, "): ");
    return p ? p + 3 : t;
}

/* A failure of the JetStream API while setting up: rejections that an operator must resolve
 * are CONFIG, the rest is retried. */
static enum iot_err setup_error(struct iot_error *err, natsStatus s, jsErrCode jerr,
                                const char *what)
{
    if (jerr == QUEUE_JERR_SUBJECTS_OVERLAP || jerr == QUEUE_JERR_WORKQUEUE_NOT_UNIQUE)
        return iot_error_set(err, IOT_ERR_CONFIG, "%s: %s (JetStream error %d)", what,
                             last_error_text(), (int)jerr);
    if (s == NATS_NO_RESPONDERS)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE,
                             "%s: no answer from the JetStream API (is JetStream enabled?)", what);
    if (jerr)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s: %s (JetStream error %d)", what,
                             last_error_text(), (int)jerr);
    return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s: %s", what, natsStatus_GetText(s));
}

struct stream_want {
    const char *name;
    const char *what;      /* "events stream", for messages */
    const char *subject;   /* NULL: do not check the subjects (KV buckets) */
    const char *kv_bucket; /* non-NULL: the stream behind this KV bucket */
    jsRetentionPolicy retention;
    jsStorageType storage;
    int64_t replicas;
    int64_t duplicates;
    int64_t max_age; /* ns, 0 = none */
    bool allow_direct;
    int64_t *created; /* out, optional: the stream's creation time (ns) */
};

/* A refused update of a stream or consumer. A JetStream error means the server refused a value
 * (e.g. replicas on a single server): retrying the same request cannot help. */
static enum iot_err update_error(struct iot_error *err, natsStatus s, jsErrCode jerr,
                                 const char *what)
{
    if (jerr)
        return iot_error_set(err, IOT_ERR_CONFIG, "%s: %s (JetStream error %d)", what,
                             last_error_text(), (int)jerr);
    return setup_error(err, s, jerr, what);
}

static enum iot_err immutable_mismatch(struct iot_error *err, const struct stream_want *w,
                                       const char *setting, const char *have, const char *want,
                                       const char *hint)
{
    return iot_error_set(err, IOT_ERR_CONFIG,
                         "NATS %s \"%s\" exists with %s %s, but %s is configured; JetStream "
                         "cannot change a stream's %s: %s",
                         w->what, w->name, setting, have, want, setting, hint);
}

static enum iot_err create_stream(struct queue *q, const struct stream_want *w,
                                  struct iot_error *err)
{
    jsStreamConfig cfg;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    const char *subjects[1] = {w->subject};
    natsStatus s;
    char what[160];

    if (w->kv_bucket) {
        kvConfig kc;
        kvStore *kv = NULL;
        kvConfig_Init(&kc);
        kc.Bucket = w->kv_bucket;
        kc.History = 1;
        kc.TTL = w->max_age;
        kc.StorageType = w->storage;
        kc.Replicas = (int)w->replicas;
        s = js_CreateKeyValue(&kv, q->js, &kc);
        kvStore_Destroy(kv);
        snprintf(what, sizeof what, "creating the NATS %s \"%s\"", w->what, w->kv_bucket);
        if (s != NATS_OK)
            return setup_error(err, s, 0, what);
        log_info("queue: created the NATS %s %s", w->what, w->kv_bucket);
        return IOT_OK;
    }
    jsStreamConfig_Init(&cfg);
    cfg.Name = w->name;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Retention = w->retention;
    cfg.Storage = w->storage;
    cfg.Replicas = w->replicas;
    cfg.Duplicates = w->duplicates;
    cfg.MaxAge = w->max_age;
    cfg.AllowDirect = w->allow_direct;
    s = js_AddStream(&si, q->js, &cfg, NULL, &jerr);
    if (s == NATS_OK && si && w->created)
        *w->created = si->Created;
    jsStreamInfo_Destroy(si);
    snprintf(what, sizeof what, "creating the NATS %s \"%s\"", w->what, w->name);
    if (s != NATS_OK)
        return setup_error(err, s, jerr, what);
    log_info("queue: created the NATS %s %s (%s storage, %s retention)", w->what, w->name,
             storage_name(w->storage), retention_name(w->retention));
    return IOT_OK;
}

static enum iot_err ensure_stream(struct queue *q, const struct stream_want *w,
                                  struct iot_error *err)
{
    jsStreamInfo *si = NULL, *si2 = NULL;
    jsErrCode jerr = 0;
    char what[160];
    enum iot_err rc = IOT_OK;

    snprintf(what, sizeof what, "reading the NATS %s \"%s\"", w->what, w->name);
    natsStatus s = js_GetStreamInfo(&si, q->js, w->name, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == QUEUE_JERR_STREAM_NOT_FOUND)
        return create_stream(q, w, err);
    if (s != NATS_OK)
        return setup_error(err, s, jerr, what);
    if (w->created)
        *w->created = si->Created;

    const jsStreamConfig *have = si->Config;
    const char *hint = "delete it (nats stream rm) or configure the same value";
    if (have->Storage != w->storage) {
        rc = immutable_mismatch(err, w, "storage", storage_name(have->Storage),
                                storage_name(w->storage),
                                "delete it (nats stream rm) or set IOT_MANAGER_NATS_STORAGE to "
                                "match");
        goto out;
    }
    if (have->Retention != w->retention) {
        rc = immutable_mismatch(err, w, "retention", retention_name(have->Retention),
                                retention_name(w->retention), hint);
        goto out;
    }

    jsStreamConfig cfg = *have; /* shallow: pointers stay owned by `si` */
    const char *subjects[1] = {w->subject};
    bool update = false;
    if (w->subject) {
        bool found = false;
        for (int i = 0; i < have->SubjectsLen; i++)
            found = found || strcmp(have->Subjects[i], w->subject) == 0;
        if (!found) {
            cfg.Subjects = subjects;
            cfg.SubjectsLen = 1;
            update = true;
        }
    }
    if (w->kv_bucket && have->MaxMsgsPerSubject != 1) {
        cfg.MaxMsgsPerSubject = 1;
        update = true;
    }
    if (have->MaxAge != w->max_age) {
        cfg.MaxAge = w->max_age;
        update = true;
    }
    if (!w->kv_bucket && have->Duplicates != w->duplicates) {
        cfg.Duplicates = w->duplicates;
        update = true;
    }
    /* the server refuses a duplicate window longer than MaxAge */
    if (cfg.MaxAge > 0 && cfg.Duplicates > cfg.MaxAge) {
        cfg.Duplicates = cfg.MaxAge;
        update = true;
    }
    if (have->Replicas != w->replicas) {
        cfg.Replicas = w->replicas;
        update = true;
    }
    if (w->allow_direct && !have->AllowDirect) {
        cfg.AllowDirect = true;
        update = true;
    }
    if (update) {
        jerr = 0;
        snprintf(what, sizeof what, "updating the NATS %s \"%s\"", w->what, w->name);
        s = js_UpdateStream(&si2, q->js, &cfg, NULL, &jerr);
        jsStreamInfo_Destroy(si2);
        if (s != NATS_OK) {
            rc = update_error(err, s, jerr, what);
            goto out;
        }
        log_info("queue: updated the NATS %s %s to the configured settings", w->what, w->name);
    }
out:
    jsStreamInfo_Destroy(si);
    return rc;
}

static enum iot_err ensure_consumer(struct queue *q, struct iot_error *err)
{
    jsConsumerInfo *ci = NULL, *ci2 = NULL;
    jsErrCode jerr = 0;
    char what[192];
    char filter[QUEUE_PREFIX_MAX + 3];
    enum iot_err rc = IOT_OK;
    jsConsumerConfig want;

    snprintf(filter, sizeof filter, "%s.>", q->prefix);
    jsConsumerConfig_Init(&want);
    want.Durable = q->consumer;
    want.Description = "iot-manager lifecycle workers";
    want.AckPolicy = js_AckExplicit;
    want.DeliverPolicy = js_DeliverAll;
    want.AckWait = q->ack_wait_ms * QUEUE_NS_PER_MS;
    want.MaxDeliver = q->max_deliver + QUEUE_MAX_DELIVER_SLACK;
    want.MaxAckPending = q->max_ack_pending;

    snprintf(what, sizeof what, "reading the NATS consumer \"%s\" of stream \"%s\"", q->consumer,
             q->stream);
    natsStatus s = js_GetConsumerInfo(&ci, q->js, q->stream, q->consumer, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == QUEUE_JERR_CONSUMER_NOT_FOUND) {
        jerr = 0;
        snprintf(what, sizeof what, "creating the NATS consumer \"%s\" on stream \"%s\"",
                 q->consumer, q->stream);
        s = js_AddConsumer(&ci2, q->js, q->stream, &want, NULL, &jerr);
        jsConsumerInfo_Destroy(ci2);
        if (s != NATS_OK)
            return setup_error(err, s, jerr, what);
        log_info("queue: created the NATS consumer %s on stream %s", q->consumer, q->stream);
        return IOT_OK;
    }
    if (s != NATS_OK)
        return setup_error(err, s, jerr, what);

    const jsConsumerConfig *have = ci->Config;
    const char *bad = NULL;
    if (have->AckPolicy != js_AckExplicit)
        bad = "its ack policy is not explicit";
    else if (have->DeliverPolicy != js_DeliverAll)
        bad = "its deliver policy is not \"all\"";
    else if (have->DeliverSubject && *have->DeliverSubject)
        bad = "it is a push consumer";
    else if (have->FilterSubject && *have->FilterSubject && strcmp(have->FilterSubject, filter))
        bad = "it filters another subject";
    if (bad) {
        rc = iot_error_set(err, IOT_ERR_CONFIG,
                           "NATS consumer \"%s\" of stream \"%s\" exists but %s, which JetStream "
                           "cannot change: delete it (nats consumer rm) so that it is re-created",
                           q->consumer, q->stream, bad);
        goto out;
    }
    if (have->AckWait != want.AckWait || have->MaxDeliver != want.MaxDeliver ||
        have->MaxAckPending != want.MaxAckPending) {
        jsConsumerConfig upd = *have; /* keeps what an operator may have set (description…) */
        upd.AckWait = want.AckWait;
        upd.MaxDeliver = want.MaxDeliver;
        upd.MaxAckPending = want.MaxAckPending;
        jerr = 0;
        snprintf(what, sizeof what, "updating the NATS consumer \"%s\" of stream \"%s\"",
                 q->consumer, q->stream);
        s = js_UpdateConsumer(&ci2, q->js, q->stream, &upd, NULL, &jerr);
        jsConsumerInfo_Destroy(ci2);
        if (s != NATS_OK) {
            rc = update_error(err, s, jerr, what);
            goto out;
        }
        log_info("queue: updated the NATS consumer %s (ack wait %lld ms, max deliver %d, max ack "
                 "pending %d)",
                 q->consumer, (long long)q->ack_wait_ms, q->max_deliver, q->max_ack_pending);
    }
out:
    jsConsumerInfo_Destroy(ci);
    return rc;
}

static enum iot_err ensure_bucket(struct queue *q, const char *bucket, const char *what,
                                  int64_t ttl_ns, kvStore **handle, struct iot_error *err)
{
    char name[QUEUE_NAME_MAX + 4];
    snprintf(name, sizeof name, "KV_%s", bucket);
    struct stream_want w = {
        .name = name,
        .what = what,
        .kv_bucket = bucket,
        .retention = js_LimitsPolicy,
        .storage = q->storage == QUEUE_STORAGE_MEMORY ? js_MemoryStorage : js_FileStorage,
        .replicas = q->replicas,
        .max_age = ttl_ns,
    };
    enum iot_err rc = ensure_stream(q, &w, err);
    if (rc != IOT_OK || *handle)
        return rc;
    natsStatus s = js_KeyValue(handle, q->js, bucket);
    if (s != NATS_OK) {
        char msg[160];
        snprintf(msg, sizeof msg, "opening the NATS %s \"%s\"", what, bucket);
        return setup_error(err, s, 0, msg);
    }
    return IOT_OK;
}

void queue_note_epoch(struct queue *q, int64_t created)
{
    if (created <= 0)
        return;
    uint64_t was = atomic_exchange(&q->events_epoch, (uint64_t)created);
    if (was && was != (uint64_t)created)
        log_warn("queue: the events stream %s was re-created: its sequences start again, and "
                 "device records count from its events on",
                 q->stream);
}

void queue_refresh_epoch(struct queue *q)
{
    jsStreamInfo *si = NULL;
    if (q->js && js_GetStreamInfo(&si, q->js, q->stream, NULL, NULL) == NATS_OK && si)
        queue_note_epoch(q, si->Created);
    jsStreamInfo_Destroy(si);
}

enum iot_err queue_setup_run(struct queue *q, struct iot_error *err)
{
    enum iot_err rc;
    jsStorageType storage = q->storage == QUEUE_STORAGE_MEMORY ? js_MemoryStorage : js_FileStorage;

    if (!q->js) {
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = q->publish_timeout_ms;
        natsStatus s = natsConnection_JetStream(&q->js, q->nc, &jo);
        if (s != NATS_OK)
            return iot_error_set(err, IOT_ERR_UNAVAILABLE, "NATS JetStream context: %s",
                                 natsStatus_GetText(s));
    }

    char events_subject[QUEUE_PREFIX_MAX + 3];
    snprintf(events_subject, sizeof events_subject, "%s.>", q->prefix);
    struct stream_want events = {
        .name = q->stream,
        .what = "events stream",
        .subject = events_subject,
        .retention = js_WorkQueuePolicy,
        .storage = storage,
        .replicas = q->replicas,
        .duplicates = QUEUE_DUPLICATES_NS,
    };
    struct stream_want dlq = {
        .name = q->dlq_stream,
        .what = "dead-letter stream",
        .subject = QUEUE_DLQ_SUBJECT_PREFIX ".>",
        .retention = js_LimitsPolicy,
        .storage = storage,
        .replicas = q->replicas,
        .duplicates = QUEUE_DUPLICATES_NS,
        .allow_direct = true,
    };
    int64_t created = 0;
    events.created = &created;
    if ((rc = ensure_stream(q, &events, err)) != IOT_OK)
        return rc;
    queue_note_epoch(q, created);
    if ((rc = ensure_consumer(q, err)) != IOT_OK)
        return rc;
    if ((rc = ensure_stream(q, &dlq, err)) != IOT_OK)
        return rc;
    if ((rc = ensure_bucket(q, q->state_bucket, "state bucket", 0, &q->state_kv, err)) != IOT_OK)
        return rc;
    return ensure_bucket(q, q->lease_bucket, "lease bucket", q->lease_ttl_ms * QUEUE_NS_PER_MS,
                         &q->lease_kv, err);
}
