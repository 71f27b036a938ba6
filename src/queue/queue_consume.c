/* Pulling from the durable consumer, and acknowledging.
 *
 * Each queue_consumer is one pull subscription bound to the existing durable (bind-only
 * options: no client-side comparison of configs, which libnats would fail on after a mutable
 * setting changed). Subscriptions are destroyed, never unsubscribed: unsubscribing could delete
 * the durable every process shares.
 */
#include <stdlib.h>
#include <string.h>

#include "queue/queue_internal.h"

/* A fetch asks for at most this many messages: with several workers per process and several
 * processes fetching from one durable, each batch stays well under MaxAckPending (otherwise the
 * server stalls the fetch and redelivers; c-stack §9.4). */
#define FETCH_BATCH_MAX 256

struct queue_msg_impl {
    natsMsg *msg;
    struct queue *q;
};

enum iot_err queue_consumer_new(struct queue *q, struct queue_consumer **out, struct iot_error *err)
{
    *out = NULL;
    enum iot_err rc = queue_check_ready(q, "consuming events", err);
    if (rc != IOT_OK)
        return rc;
    struct queue_consumer *c = calloc(1, sizeof *c);
    if (!c)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = q->stream;
    so.Consumer = q->consumer;
    jsErrCode jerr = 0;
    natsStatus s = js_PullSubscribe(&c->sub, q->js, NULL, q->consumer, NULL, &so, &jerr);
    if (s != NATS_OK) {
        free(c);
        return queue_nats_error(q, err, s, jerr, "binding to the durable consumer");
    }
    c->q = q;
    *out = c;
    return IOT_OK;
}

void queue_consumer_free(struct queue_consumer *c)
{
    if (!c)
        return;
    natsSubscription_Destroy(c->sub);
    free(c);
}

static int fetch_batch(const struct queue *q, size_t max)
{
    size_t cap = (size_t)q->max_ack_pending / 2;
    if (cap < 1)
        cap = 1;
    if (cap > FETCH_BATCH_MAX)
        cap = FETCH_BATCH_MAX;
    return (int)(max < cap ? max : cap);
}

/* Last token of a subject (borrowed from it). */
static const char *subject_kind(const char *subject)
{
    if (!subject)
        return "";
    const char *dot = strrchr(subject, '.');
    return dot ? dot + 1 : subject;
}

enum iot_err queue_fetch(struct queue_consumer *c, struct queue_msg *msgs, size_t max,
                         int64_t timeout_ms, size_t *n, struct iot_error *err)
{
    struct queue *q = c->q;
    *n = 0;
    if (max == 0)
        return IOT_OK;
    enum iot_err rc = queue_check_ready(q, "fetching events", err);
    if (rc != IOT_OK)
        return rc;

    natsMsgList list = {0};
    jsErrCode jerr = 0;
    natsStatus s = natsSubscription_Fetch(&list, c->sub, fetch_batch(q, max),
                                          timeout_ms > 0 ? timeout_ms : 1, &jerr);
    if (s == NATS_TIMEOUT)
        return IOT_OK; /* idle */
    if (s != NATS_OK)
        return queue_nats_error(q, err, s, jerr, "fetching events");
    /* The consumer is found by name, so a stream re-created by another process goes unnoticed
     * by the fetch: its creation time, read after the messages came, labels them. */
    if (list.Count > 0)
        queue_refresh_epoch(q);

    for (int i = 0; i < list.Count; i++) {
        natsMsg *m = list.Msgs[i];
        jsMsgMetaData *meta = NULL;
        struct queue_msg_impl *impl = NULL;
        if (natsMsg_GetMetaData(&meta, m) != NATS_OK || !(impl = malloc(sizeof *impl))) {
            /* not handed out: redelivered after AckWait */
            jsMsgMetaData_Destroy(meta);
            continue;
        }
        list.Msgs[i] = NULL; /* ours now: natsMsgList_Destroy skips it */
        impl->msg = m;
        impl->q = q;
        struct queue_msg *out = &msgs[*n];
        memset(out, 0, sizeof *out);
        out->subject = natsMsg_GetSubject(m);
        out->kind = subject_kind(out->subject);
        out->data = natsMsg_GetData(m);
        out->len = (size_t)natsMsg_GetDataLength(m);
        out->seq = meta->Sequence.Stream;
        out->deliveries = meta->NumDelivered;
        uint64_t order = queue_header_u64(m, QUEUE_HDR_ORDER_SEQ);
        /* a requeued copy stands where the event was first published, never after itself */
        out->order_seq = order && order < out->seq ? order : out->seq;
        out->requeues = queue_header_u64(m, QUEUE_HDR_REQUEUES);
        out->epoch = atomic_load(&q->events_epoch);
        out->impl = impl;
        jsMsgMetaData_Destroy(meta);
        (*n)++;
    }
    natsMsgList_Destroy(&list);
    return IOT_OK;
}

/* Acks travel on the connection: while it is down they would only be buffered, so report the
 * outage instead (the server redelivers the message after AckWait). */
static enum iot_err ack_op(struct queue_msg *m, natsStatus (*op)(natsMsg *, jsOptions *))
{
    struct queue_msg_impl *impl = m ? m->impl : NULL;
    if (!impl)
        return IOT_ERR_INVALID;
    if (!queue_is_connected(impl->q))
        return IOT_ERR_UNAVAILABLE;
    return op(impl->msg, NULL) == NATS_OK ? IOT_OK : IOT_ERR_UNAVAILABLE;
}

enum iot_err queue_ack(struct queue_msg *m)
{
    return ack_op(m, natsMsg_Ack);
}

enum iot_err queue_in_progress(struct queue_msg *m)
{
    return ack_op(m, natsMsg_InProgress);
}

enum iot_err queue_term(struct queue_msg *m)
{
    return ack_op(m, natsMsg_Term);
}

enum iot_err queue_nak(struct queue_msg *m, int64_t delay_ms)
{
    struct queue_msg_impl *impl = m ? m->impl : NULL;
    if (!impl)
        return IOT_ERR_INVALID;
    if (!queue_is_connected(impl->q))
        return IOT_ERR_UNAVAILABLE;
    natsStatus s = delay_ms > 0 ? natsMsg_NakWithDelay(impl->msg, delay_ms, NULL)
                                : natsMsg_Nak(impl->msg, NULL);
    return s == NATS_OK ? IOT_OK : IOT_ERR_UNAVAILABLE;
}

void queue_msg_release(struct queue_msg *m)
{
    if (!m || !m->impl)
        return;
    struct queue_msg_impl *impl = m->impl;
    natsMsg_Destroy(impl->msg);
    free(impl);
    memset(m, 0, sizeof *m);
}
