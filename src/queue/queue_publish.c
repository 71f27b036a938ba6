/* Publishing with stream acknowledgements, dead letters and their replay.
 *
 * Every publication carries a Nats-Msg-Id that stays the same across retries, so a retry of a
 * publication the stream did store (its ack was lost) is dropped by the stream's duplicate
 * window instead of being stored twice. A single publication is one request (one round trip);
 * several are sent asynchronously on a JetStream context of their own, whose ack handler
 * records each sequence, and then waited for together.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iot-manager/uuid.h"
#include "queue/queue_internal.h"

#define HDR_MSG_ID        "Nats-Msg-Id"
#define HDR_ORIG_SEQ      "Iot-Manager-Original-Seq"
#define HDR_REASON        "Iot-Manager-Reason"
#define HDR_DELIVERIES    "Iot-Manager-Deliveries"
#define HDR_KIND          "Iot-Manager-Kind"
#define HDR_TIME          "Iot-Manager-Time"
#define HDR_ORIG_SUBJECT  "Iot-Manager-Original-Subject"
#define HDR_REPLAYED_FROM "Iot-Manager-Replayed-From"
/* room left for subject and headers under the server's max payload */
#define HEADER_ALLOWANCE 1024
#define BACKOFF_MIN_MS   25
#define BACKOFF_MAX_MS   400

static void sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static natsStatus build_msg(const struct queue_pub_item *it, natsMsg **out)
{
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, it->subject, NULL, it->data, (int)it->len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, HDR_MSG_ID, it->msg_id);
    for (int i = 0; s == NATS_OK && i < it->nhdrs; i++)
        s = natsMsgHeader_Set(m, it->hdr_keys[i], it->hdr_values[i]);
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        m = NULL;
    }
    *out = m;
    return s;
}

/* ---- asynchronous rounds ----
 *
 * The batch is shared with libnats' ack handler, which may still run after the caller gave up
 * waiting: it is reference counted (one reference for the caller, one per message libnats
 * holds) and freed by whoever drops the last one. */

struct pub_batch {
    pthread_mutex_t mu;
    int refs;
    size_t n;
    natsMsg **inflight; /* identifies the item of an ack: the message pointer libnats hands back */
    uint64_t *seq;
    bool *acked;
    natsStatus last_status;
    jsErrCode last_jerr;
};

static struct pub_batch *batch_new(size_t n)
{
    struct pub_batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->inflight = calloc(n, sizeof *b->inflight);
    b->seq = calloc(n, sizeof *b->seq);
    b->acked = calloc(n, sizeof *b->acked);
    if (!b->inflight || !b->seq || !b->acked) {
        free(b->inflight);
        free(b->seq);
        free(b->acked);
        free(b);
        return NULL;
    }
    pthread_mutex_init(&b->mu, NULL);
    b->refs = 1;
    b->n = n;
    return b;
}

static void batch_release(struct pub_batch *b)
{
    pthread_mutex_lock(&b->mu);
    bool last = --b->refs == 0;
    pthread_mutex_unlock(&b->mu);
    if (!last)
        return;
    pthread_mutex_destroy(&b->mu);
    free(b->inflight);
    free(b->seq);
    free(b->acked);
    free(b);
}

/* Clears the in-flight slot of `m`; returns its index or n. Caller holds b->mu. */
static size_t batch_take_locked(struct pub_batch *b, const natsMsg *m)
{
    for (size_t i = 0; i < b->n; i++) {
        if (b->inflight[i] == m) {
            b->inflight[i] = NULL;
            return i;
        }
    }
    return b->n;
}

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    struct pub_batch *b = closure;
    (void)js;
    pthread_mutex_lock(&b->mu);
    size_t i = batch_take_locked(b, msg);
    if (i < b->n && pa) {
        /* a duplicate's ack carries the sequence the first copy was stored at */
        b->seq[i] = pa->Sequence;
        b->acked[i] = true;
    } else if (pae) {
        b->last_status = pae->Err;
        b->last_jerr = pae->ErrCode;
    }
    pthread_mutex_unlock(&b->mu);
    natsMsg_Destroy(msg);
    batch_release(b);
}

static void round_async(jsCtx *js, struct pub_batch *b, struct queue_pub_item *items, size_t n,
                        int64_t wait_ms)
{
    for (size_t i = 0; i < n; i++) {
        if (items[i].done)
            continue;
        natsMsg *m = NULL;
        natsStatus s = build_msg(&items[i], &m);
        if (s != NATS_OK) {
            b->last_status = s;
            continue;
        }
        pthread_mutex_lock(&b->mu);
        b->inflight[i] = m;
        b->refs++; /* the ack handler's, taken before libnats may call it */
        pthread_mutex_unlock(&b->mu);
        natsMsg *keep = m;
        s = js_PublishMsgAsync(js, &m, NULL);
        if (s != NATS_OK) {
            /* libnats kept nothing: no ack handler will run for it */
            pthread_mutex_lock(&b->mu);
            batch_take_locked(b, keep);
            b->refs--;
            b->last_status = s;
            pthread_mutex_unlock(&b->mu);
            natsMsg_Destroy(m);
        }
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = wait_ms > 0 ? wait_ms : 1;
    if (js_PublishAsyncComplete(js, &po) == NATS_TIMEOUT) {
        natsMsgList pending = {0};
        if (js_PublishAsyncGetPendingList(&pending, js) == NATS_OK) {
            for (int k = 0; k < pending.Count; k++) {
                pthread_mutex_lock(&b->mu);
                batch_take_locked(b, pending.Msgs[k]);
                b->last_status = NATS_TIMEOUT;
                pthread_mutex_unlock(&b->mu);
                batch_release(b);
            }
            natsMsgList_Destroy(&pending);
        }
    }
}

static void round_sync(struct queue *q, struct queue_pub_item *it, int64_t wait_ms,
                       natsStatus *last_status, jsErrCode *last_jerr)
{
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = wait_ms > 0 ? wait_ms : 1;
    natsStatus s = build_msg(it, &m);
    if (s == NATS_OK)
        s = js_PublishMsg(&pa, q->js, m, &po, &jerr);
    if (s == NATS_OK) {
        it->seq = pa->Sequence;
        it->done = true;
    } else {
        *last_status = s;
        *last_jerr = jerr;
    }
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
}

enum iot_err queue_pub_run(struct queue *q, struct queue_pub_item *items, size_t n,
                           struct iot_error *err)
{
    enum iot_err rc = IOT_OK;
    jsCtx *js = NULL;
    struct pub_batch *b = NULL;
    natsStatus last_status = NATS_OK;
    jsErrCode last_jerr = 0;
    size_t remaining = 0;
    int round = 0;
    bool waited_out = false; /* `err` holds why the queue is not ready */

    for (size_t i = 0; i < n; i++)
        remaining += !items[i].done;
    if (remaining == 0)
        return IOT_OK;

    /* A publish keeps trying for publish_timeout_ms in every case, also before the first
     * connection (a request arriving right after start-up should not fail while NATS is just
     * being reached): the caller never gets 202 for an unstored event, nor a 503 it could
     * have avoided. */
    int64_t deadline = queue_mono_ms() + q->publish_timeout_ms;
    pthread_mutex_lock(&q->mu);
    bool ever = q->ever_ready || q->config_error;
    pthread_mutex_unlock(&q->mu);
    if (!ever && (rc = queue_wait_ready_until(q, deadline, err)) != IOT_OK)
        return rc;

    int64_t max_payload = natsConnection_GetMaxPayload(q->nc);
    for (size_t i = 0; i < n; i++) {
        if (items[i].len > INT_MAX || (max_payload > HEADER_ALLOWANCE &&
                                       (int64_t)items[i].len > max_payload - HEADER_ALLOWANCE))
            return iot_error_set(err, IOT_ERR_TOO_LARGE,
                                 "event of %zu bytes exceeds the NATS server's message size limit",
                                 items[i].len);
    }

    for (;;) {
        rc = queue_wait_ready_until(q, deadline, err);
        if (rc != IOT_OK) {
            waited_out = err != NULL;
            break;
        }
        int64_t left = deadline - queue_mono_ms();
        /* Each attempt gets half the budget (at least 200 ms), so that a lost reply still
         * leaves time for a retry. */
        int64_t attempt = q->publish_timeout_ms / 2 > 200 ? q->publish_timeout_ms / 2 : 200;
        int64_t wait = left < attempt ? left : attempt;

        if (remaining == 1) {
            for (size_t i = 0; i < n; i++)
                if (!items[i].done)
                    round_sync(q, &items[i], wait, &last_status, &last_jerr);
        } else {
            if (!b && !(b = batch_new(n))) {
                rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
                break;
            }
            if (!js) {
                jsOptions jo;
                jsOptions_Init(&jo);
                jo.Wait = q->publish_timeout_ms;
                jo.PublishAsync.AckHandler = on_pub_ack;
                jo.PublishAsync.AckHandlerClosure = b;
                natsStatus s = natsConnection_JetStream(&js, q->nc, &jo);
                if (s != NATS_OK) {
                    rc = iot_error_set(err, IOT_ERR_UNAVAILABLE, "NATS JetStream context: %s",
                                       natsStatus_GetText(s));
                    break;
                }
            }
            round_async(js, b, items, n, wait);
            pthread_mutex_lock(&b->mu);
            for (size_t i = 0; i < n; i++) {
                if (!items[i].done && b->acked[i]) {
                    items[i].done = true;
                    items[i].seq = b->seq[i];
                }
            }
            if (b->last_status != NATS_OK) {
                last_status = b->last_status;
                last_jerr = b->last_jerr;
            }
            pthread_mutex_unlock(&b->mu);
        }
        remaining = 0;
        for (size_t i = 0; i < n; i++)
            remaining += !items[i].done;
        if (remaining == 0)
            break;
        if (last_status == NATS_NO_RESPONDERS)
            queue_request_setup(q); /* the stream is gone: re-create it, then retry */
        left = deadline - queue_mono_ms();
        if (left <= 0) {
            rc = IOT_ERR_UNAVAILABLE;
            break;
        }
        int64_t backoff = (int64_t)BACKOFF_MIN_MS << (round < 4 ? round : 4);
        if (backoff > BACKOFF_MAX_MS)
            backoff = BACKOFF_MAX_MS;
        sleep_ms(backoff < left ? backoff : left);
        round++;
    }
    if (js)
        jsCtx_Destroy(js);
    if (b)
        batch_release(b);

    if (rc == IOT_ERR_CONFIG || rc == IOT_ERR_NOMEM)
        return rc;
    if (remaining > 0) {
        if (waited_out)
            return iot_error_prefix(err,
                                    "NATS did not acknowledge %zu of %zu publication(s) "
                                    "within %lld ms: ",
                                    remaining, n, (long long)q->publish_timeout_ms);
        if (last_jerr)
            return iot_error_set(err, IOT_ERR_UNAVAILABLE,
                                 "NATS did not acknowledge %zu of %zu publication(s) within %lld "
                                 "ms: %s (JetStream error %d)",
                                 remaining, n, (long long)q->publish_timeout_ms,
                                 natsStatus_GetText(last_status), (int)last_jerr);
        return iot_error_set(err, IOT_ERR_UNAVAILABLE,
                             "NATS did not acknowledge %zu of %zu publication(s) within %lld ms: "
                             "%s",
                             remaining, n, (long long)q->publish_timeout_ms,
                             natsStatus_GetText(last_status));
    }
    return IOT_OK;
}

enum iot_err queue_publish(struct queue *q, struct queue_publication *pubs, size_t n,
                           struct iot_error *err)
{
    if (n == 0)
        return IOT_OK;
    for (size_t i = 0; i < n; i++) {
        if (!queue_valid_kind(pubs[i].kind))
            return iot_error_set(err, IOT_ERR_INVALID, "invalid event kind \"%s\"",
                                 pubs[i].kind ? pubs[i].kind : "");
        if (!pubs[i].data && pubs[i].len)
            return iot_error_set(err, IOT_ERR_INVALID, "event without data");
    }
    struct queue_pub_item *items = calloc(n, sizeof *items);
    if (!items)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");

    /* One random id per call, suffixed with the index: unique per publication, and the same
     * on every retry of it. */
    struct uuid u;
    char id[UUID_STR_LEN + 1];
    enum iot_err rc = uuid_generate_v4(&u);
    if (rc != IOT_OK) {
        free(items);
        return iot_error_set(err, rc, "cannot generate a message id");
    }
    uuid_format(&u, id);
    for (size_t i = 0; i < n; i++) {
        snprintf(items[i].subject, sizeof items[i].subject, "%s.%s", q->prefix, pubs[i].kind);
        items[i].data = pubs[i].data;
        items[i].len = pubs[i].len;
        snprintf(items[i].msg_id, sizeof items[i].msg_id, "%s-%zu", id, i);
    }
    rc = queue_pub_run(q, items, n, err);
    for (size_t i = 0; i < n; i++)
        pubs[i].seq = items[i].done ? items[i].seq : 0;
    free(items);
    return rc;
}

/* ---- dead letters ---- */

/* Header values are single lines: control characters become spaces. */
static void sanitize_header(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src && src[i] && i + 1 < cap; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    dst[i] = '\0';
}

enum iot_err queue_dead_letter(struct queue *q, const struct queue_msg *m, const char *reason,
                               struct iot_error *err)
{
    struct queue_pub_item it;
    char reason_h[QUEUE_REASON_MAX], seq_h[24], del_h[24], time_h[24];
    char subject_h[QUEUE_SUBJECT_MAX];
    const char *kind = queue_valid_kind(m->kind) ? m->kind : "unknown";

    memset(&it, 0, sizeof it);
    sanitize_header(reason_h, sizeof reason_h, reason && *reason ? reason : "unspecified");
    sanitize_header(subject_h, sizeof subject_h, m->subject ? m->subject : "");
    /* the event's own sequence, also for a requeued copy */
    snprintf(seq_h, sizeof seq_h, "%llu",
             (unsigned long long)(m->order_seq ? m->order_seq : m->seq));
    snprintf(del_h, sizeof del_h, "%llu", (unsigned long long)m->deliveries);
    snprintf(time_h, sizeof time_h, "%lld", (long long)wall_ms());
    snprintf(it.subject, sizeof it.subject, QUEUE_DLQ_SUBJECT_PREFIX ".%s", kind);
    it.data = m->data;
    it.len = m->len;
    /* Deterministic: two workers dead-lettering the same event store one copy. */
    snprintf(it.msg_id, sizeof it.msg_id, "dlq:%s:%llu", q->stream, (unsigned long long)m->seq);
    const char *keys[] = {HDR_ORIG_SEQ, HDR_REASON, HDR_DELIVERIES,
                          HDR_KIND,     HDR_TIME,   HDR_ORIG_SUBJECT};
    const char *vals[] = {seq_h, reason_h, del_h, kind, time_h, subject_h};
    for (int i = 0; i < 6; i++) {
        it.hdr_keys[i] = keys[i];
        it.hdr_values[i] = vals[i];
    }
    it.nhdrs = 6;
    return queue_pub_run(q, &it, 1, err);
}

enum iot_err queue_requeue(struct queue *q, const struct queue_msg *m, struct iot_error *err)
{
    if (!queue_valid_kind(m->kind))
        return iot_error_set(err, IOT_ERR_INVALID, "invalid event kind \"%s\"",
                             m->kind ? m->kind : "");
    struct queue_pub_item it;
    char order_h[24], requeues_h[24];
    memset(&it, 0, sizeof it);
    snprintf(order_h, sizeof order_h, "%llu",
             (unsigned long long)(m->order_seq ? m->order_seq : m->seq));
    snprintf(requeues_h, sizeof requeues_h, "%llu", (unsigned long long)m->requeues + 1);
    snprintf(it.subject, sizeof it.subject, "%s.%s", q->prefix, m->kind);
    it.data = m->data;
    it.len = m->len;
    /* Deterministic: a second requeue of this delivered message (its ack was lost, another
     * worker got it) is dropped by the stream's duplicate window. */
    snprintf(it.msg_id, sizeof it.msg_id, "requeue:%s:%llu", q->stream, (unsigned long long)m->seq);
    it.hdr_keys[0] = QUEUE_HDR_ORDER_SEQ;
    it.hdr_values[0] = order_h;
    it.hdr_keys[1] = QUEUE_HDR_REQUEUES;
    it.hdr_values[1] = requeues_h;
    it.nhdrs = 2;
    return queue_pub_run(q, &it, 1, err);
}

uint64_t queue_header_u64(natsMsg *m, const char *key)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || !v)
        return 0;
    char *end = NULL;
    unsigned long long n = strtoull(v, &end, 10);
    return end != v && *end == '\0' ? (uint64_t)n : 0;
}

static const char *header_str(natsMsg *m, const char *key)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || !v)
        return "";
    return v;
}

/* The kind of a dead letter: its subject's part after the DLQ prefix. */
static const char *dlq_kind(natsMsg *m)
{
    const char *subj = natsMsg_GetSubject(m);
    size_t pl = strlen(QUEUE_DLQ_SUBJECT_PREFIX ".");
    if (subj && strncmp(subj, QUEUE_DLQ_SUBJECT_PREFIX ".", pl) == 0 && queue_valid_kind(subj + pl))
        return subj + pl;
    const char *k = header_str(m, HDR_KIND);
    return queue_valid_kind(k) ? k : NULL;
}

/* Reads the dead letter at `seq`, or (next) the first one at or after it. */
static enum iot_err dlq_get(struct queue *q, uint64_t seq, bool next, natsMsg **out,
                            struct iot_error *err)
{
    jsDirectGetMsgOptions o;
    jsDirectGetMsgOptions_Init(&o);
    o.Sequence = seq;
    if (next)
        o.NextBySubject = QUEUE_DLQ_SUBJECT_PREFIX ".>";
    *out = NULL;
    natsStatus s = js_DirectGetMsg(out, q->js, q->dlq_stream, NULL, &o);
    if (s == NATS_NOT_FOUND)
        return IOT_ERR_NOT_FOUND;
    if (s != NATS_OK)
        return queue_nats_error(q, err, s, 0, "reading the dead letters");
    return IOT_OK;
}

static enum iot_err dlq_bounds(struct queue *q, uint64_t *first, uint64_t *last,
                               struct iot_error *err)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, q->js, q->dlq_stream, NULL, &jerr);
    if (s != NATS_OK)
        return queue_nats_error(q, err, s, jerr, "reading the dead-letter stream");
    *first = si->State.Msgs ? si->State.FirstSeq : 1;
    *last = si->State.Msgs ? si->State.LastSeq : 0;
    jsStreamInfo_Destroy(si);
    return IOT_OK;
}

/* Calls `visit` on every dead letter stored when the walk starts, oldest first, until it fails.
 * The message is only borrowed for the call. */
static enum iot_err dlq_walk(struct queue *q,
                             enum iot_err (*visit)(struct queue *q, natsMsg *m, uint64_t seq,
                                                   void *ctx, struct iot_error *err),
                             void *ctx, struct iot_error *err)
{
    uint64_t seq = 1, last = 0; /* an empty range, for the compiler's sake */
    enum iot_err rc = dlq_bounds(q, &seq, &last, err);
    /* Bounded by the last sequence seen now: each step moves past one stored message. */
    while (rc == IOT_OK && seq <= last) {
        natsMsg *m = NULL;
        rc = dlq_get(q, seq, true, &m, err);
        if (rc == IOT_ERR_NOT_FOUND) {
            rc = IOT_OK;
            break;
        }
        if (rc != IOT_OK)
            break;
        uint64_t got = natsMsg_GetSequence(m);
        if (got > last || got < seq) {
            natsMsg_Destroy(m);
            break;
        }
        rc = visit(q, m, got, ctx, err);
        natsMsg_Destroy(m);
        seq = got + 1;
    }
    return rc;
}

/* The callback queue_dlq_list was given, and its context. */
struct dlq_lister {
    enum iot_err (*fn)(const struct queue_dead_letter_entry *e, void *ctx);
    void *ctx;
};

/* Hands one dead letter to the lister as an entry (dlq_walk visitor; `ctx` is the lister). */
static enum iot_err list_one(struct queue *q, natsMsg *m, uint64_t seq, void *ctx,
                             struct iot_error *err)
{
    (void)q;
    (void)err;
    const struct dlq_lister *l = ctx;
    const char *kind = dlq_kind(m);
    uint64_t t = queue_header_u64(m, HDR_TIME);
    struct queue_dead_letter_entry e = {
        .dlq_seq = seq,
        .original_seq = queue_header_u64(m, HDR_ORIG_SEQ),
        .kind = kind ? kind : "",
        .reason = header_str(m, HDR_REASON),
        .deliveries = queue_header_u64(m, HDR_DELIVERIES),
        .time_ms = t ? (int64_t)t : natsMsg_GetTime(m) / 1000000,
        .data = natsMsg_GetData(m),
        .len = (size_t)natsMsg_GetDataLength(m),
    };
    return l->fn(&e, l->ctx);
}

enum iot_err queue_dlq_list(struct queue *q,
                            enum iot_err (*fn)(const struct queue_dead_letter_entry *e, void *ctx),
                            void *ctx, struct iot_error *err)
{
    struct dlq_lister l = {.fn = fn, .ctx = ctx};
    enum iot_err rc = queue_check_ready(q, "listing dead letters", err);
    if (rc == IOT_OK)
        rc = dlq_walk(q, list_one, &l, err);
    return rc;
}

/* Republishes dead letter `m` (at `seq`) as a new event, then deletes it. */
static enum iot_err replay_one(struct queue *q, natsMsg *m, uint64_t seq, struct iot_error *err)
{
    struct queue_pub_item it;
    char from[24];
    const char *kind = dlq_kind(m);
    if (!kind)
        return iot_error_set(err, IOT_ERR_INVALID, "dead letter %llu has no valid event kind",
                             (unsigned long long)seq);
    memset(&it, 0, sizeof it);
    snprintf(it.subject, sizeof it.subject, "%s.%s", q->prefix, kind);
    it.data = natsMsg_GetData(m);
    it.len = (size_t)natsMsg_GetDataLength(m);
    /* Deterministic, so replaying again after a failed delete stores the event once. */
    snprintf(it.msg_id, sizeof it.msg_id, "replay:%s:%llu", q->dlq_stream, (unsigned long long)seq);
    snprintf(from, sizeof from, "%llu", (unsigned long long)seq);
    it.hdr_keys[0] = HDR_REPLAYED_FROM;
    it.hdr_values[0] = from;
    it.nhdrs = 1;
    enum iot_err rc = queue_pub_run(q, &it, 1, err);
    if (rc != IOT_OK)
        return rc;
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteMsg(q->js, q->dlq_stream, seq, NULL, &jerr);
    if (s != NATS_OK && jerr != QUEUE_JERR_SEQ_NOT_FOUND) /* gone: replayed concurrently */
        return queue_nats_error(q, err, s, jerr, "deleting a replayed dead letter");
    return IOT_OK;
}

/* replay_one as a dlq_walk visitor; `ctx` is the size_t count of letters replayed. */
static enum iot_err replay_counted(struct queue *q, natsMsg *m, uint64_t seq, void *ctx,
                                   struct iot_error *err)
{
    enum iot_err rc = replay_one(q, m, seq, err);
    *(size_t *)ctx += rc == IOT_OK;
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

enum iot_err queue_dlq_replay(struct queue *q, const uint64_t *seqs, size_t n, bool all,
                              size_t *replayed, struct iot_error *err)
{
    *replayed = 0;
    enum iot_err rc = queue_check_ready(q, "replaying dead letters", err);
    if (rc != IOT_OK)
        return rc;

    if (all)
        return dlq_walk(q, replay_counted, replayed, err);
    if (n == 0)
        return IOT_OK;

    /* Oldest first, each once; every one must exist before anything is replayed. */
    uint64_t *sorted = malloc(n * sizeof *sorted);
    natsMsg **msgs = calloc(n, sizeof *msgs);
    size_t k = 0;
    if (!sorted || !msgs) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        goto out;
    }
    memcpy(sorted, seqs, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_u64);
    for (size_t i = 0; i < n; i++)
        if (k == 0 || sorted[k - 1] != sorted[i])
            sorted[k++] = sorted[i];
    for (size_t i = 0; i < k; i++) {
        rc = sorted[i] ? dlq_get(q, sorted[i], false, &msgs[i], err) : IOT_ERR_NOT_FOUND;
        if (rc == IOT_ERR_NOT_FOUND)
            rc = iot_error_set(err, IOT_ERR_NOT_FOUND, "dead letter %llu not found",
                               (unsigned long long)sorted[i]);
        if (rc != IOT_OK)
            goto out;
    }
    for (size_t i = 0; i < k && rc == IOT_OK; i++) {
        rc = replay_one(q, msgs[i], sorted[i], err);
        *replayed += rc == IOT_OK;
    }
out:
    for (size_t i = 0; msgs && i < k; i++)
        natsMsg_Destroy(msgs[i]);
    free(msgs);
    free(sorted);
    return rc;
}
