/* The queue port on NATS JetStream: connection, background set-up and health.
 *
 * One libnats connection per queue. queue_open() only validates and copies the options; a
 * background thread connects (libnats then reconnects forever on its own) and runs the set-up
 * (queue_setup.c) whenever the connection comes up. Health is a few flags kept current by that
 * thread and by libnats' connection callbacks, so queue_health() never touches the network.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iot-manager/log.h"
#include "queue/queue_internal.h"

/* How long queue_close() waits for the acks still buffered to reach the server. */
#define QUEUE_CLOSE_FLUSH_MS     1000
#define QUEUE_RECONNECT_MS       500
#define QUEUE_PING_MS            10000
#define QUEUE_SETUP_RETRY_MS     250
#define QUEUE_SETUP_RETRY_MAX_MS 5000

void queue_options_default(struct queue_options *o)
{
    memset(o, 0, sizeof *o);
    o->url = NULL;
    o->stream = "IOT_MANAGER_EVENTS";
    o->subject_prefix = "iot-manager.events";
    o->consumer = "iot-manager-workers";
    o->dlq_stream = "IOT_MANAGER_DLQ";
    o->state_bucket = "IOT_MANAGER_DEVICES";
    o->lease_bucket = "IOT_MANAGER_LEASES";
    o->storage = QUEUE_STORAGE_FILE;
    o->replicas = 1;
    o->ack_wait_ms = 30000;
    o->max_deliver = 20;
    o->max_ack_pending = 1000;
    o->lease_ttl_ms = 30000;
    o->publish_timeout_ms = 5000;
    o->connect_timeout_ms = 2000;
}

int64_t queue_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_to_timespec(int64_t deadline_ms, struct timespec *ts)
{
    ts->tv_sec = (time_t)(deadline_ms / 1000);
    ts->tv_nsec = (long)(deadline_ms % 1000) * 1000000L;
}

/* ---- option validation ---- */

/* Stream and consumer names: JetStream forbids whitespace, '.', '*', '>' and path separators
 * (the name becomes part of API subjects and of a directory name). */
static bool valid_name(const char *s)
{
    if (!s || !*s || strlen(s) >= QUEUE_NAME_MAX)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c >= 0x7f || strchr(".*>/\\", c))
            return false;
    }
    return true;
}

/* KV bucket names: [A-Za-z0-9_-]+ (libnats checks the same). */
static bool valid_bucket(const char *s)
{
    if (!s || !*s || strlen(s) >= QUEUE_NAME_MAX)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* A literal subject: non-empty tokens separated by single dots, no wildcards. */
static bool valid_subject_prefix(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= QUEUE_PREFIX_MAX || s[0] == '.' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f || c == '*' || c == '>')
            return false;
        if (c == '.' && s[i + 1] == '.')
            return false;
    }
    return true;
}

bool queue_valid_kind(const char *kind)
{
    size_t n = kind ? strlen(kind) : 0;
    if (n == 0 || n >= QUEUE_KIND_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)kind[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* True when subject spaces "<a>.>" and "<b>.>" share a subject. */
static bool prefixes_overlap(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t n = la < lb ? la : lb;
    if (strncmp(a, b, n) != 0)
        return false;
    return la == lb || (la > lb ? a[n] == '.' : b[n] == '.');
}

/* One server URL as libnats reads it: [scheme://][user[:pass]@]host[:port]. libnats accepts
 * most strings and only fails at connect time (in the background); checking the port here
 * turns the usual mistake into IOT_ERR_CONFIG at open. */
static bool valid_url(const char *u, size_t n)
{
    const char *end = u + n;
    const char *p = u;
    for (const char *x = u; x + 2 < end; x++) {
        if (x[0] == ':' && x[1] == '/' && x[2] == '/') {
            p = x + 3;
            break;
        }
    }
    for (const char *x = end; x > p; x--) {
        if (x[-1] == '@') {
            p = x;
            break;
        }
    }
    const char *colon = NULL;
    for (const char *x = p; x < end; x++)
        if (*x == ':')
            colon = x;
    if (p >= end || colon == p)
        return false;
    if (!colon || (p[0] == '[' && end[-1] == ']'))
        return true;
    long port = 0;
    if (colon + 1 == end)
        return false;
    for (const char *x = colon + 1; x < end; x++) {
        if (*x < '0' || *x > '9' || port > 65535)
            return false;
        port = port * 10 + (*x - '0');
    }
    return port >= 1 && port <= 65535;
}

static bool valid_url_list(const char *list)
{
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == 0 || !valid_url(p, n))
            return false;
        if (!comma)
            return true;
        p = comma + 1;
    }
}

static enum iot_err copy_name(char *dst, const char *src, bool (*check)(const char *),
                              const char *what, struct iot_error *err)
{
    if (!check(src))
        return iot_error_set(err, IOT_ERR_CONFIG, "NATS %s \"%s\" is not a valid name", what,
                             src ? src : "");
    snprintf(dst, QUEUE_NAME_MAX, "%s", src);
    return IOT_OK;
}

static enum iot_err copy_options(struct queue *q, const struct queue_options *o,
                                 struct iot_error *err)
{
    enum iot_err rc;
    /* the URL may carry credentials: never quoted in messages */
    if (!o->url || !*o->url || strchr(o->url, ' ') || !valid_url_list(o->url))
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "NATS URL is not valid (expected nats://host:port[,nats://...])");
    q->url = strdup(o->url);
    if (!q->url)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    if ((rc = copy_name(q->stream, o->stream, valid_name, "stream", err)) ||
        (rc = copy_name(q->consumer, o->consumer, valid_name, "consumer", err)) ||
        (rc = copy_name(q->dlq_stream, o->dlq_stream, valid_name, "dead-letter stream", err)) ||
        (rc = copy_name(q->state_bucket, o->state_bucket, valid_bucket, "state bucket", err)) ||
        (rc = copy_name(q->lease_bucket, o->lease_bucket, valid_bucket, "lease bucket", err)))
        return rc;
    if (strcmp(q->stream, q->dlq_stream) == 0)
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "NATS events stream and dead-letter stream must differ (both \"%s\")",
                             q->stream);
    if (strcmp(q->state_bucket, q->lease_bucket) == 0)
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "NATS state and lease buckets must differ (both \"%s\")",
                             q->state_bucket);
    if (!valid_subject_prefix(o->subject_prefix))
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "NATS subject prefix \"%s\" is not a literal subject such as "
                             "iot-manager.events",
                             o->subject_prefix ? o->subject_prefix : "");
    if (prefixes_overlap(o->subject_prefix, QUEUE_DLQ_SUBJECT_PREFIX) ||
        o->subject_prefix[0] == '$')
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "NATS subject prefix \"%s\" overlaps the dead letters' subjects "
                             "(" QUEUE_DLQ_SUBJECT_PREFIX ".>) or a system subject",
                             o->subject_prefix);
    snprintf(q->prefix, sizeof q->prefix, "%s", o->subject_prefix);
    if (o->storage != QUEUE_STORAGE_FILE && o->storage != QUEUE_STORAGE_MEMORY)
        return iot_error_set(err, IOT_ERR_CONFIG, "NATS storage must be file or memory");
    if (o->replicas < 1 || o->replicas > 5)
        return iot_error_set(err, IOT_ERR_CONFIG, "NATS replicas must be between 1 and 5");
    if (o->ack_wait_ms < 100 || o->max_deliver < 1 || o->max_ack_pending < 1 ||
        o->lease_ttl_ms < 100 || o->publish_timeout_ms < 1 || o->connect_timeout_ms < 1)
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "NATS timings and limits must be positive (ack wait and lease TTL "
                             "at least 100 ms)");
    q->storage = o->storage;
    q->replicas = o->replicas;
    q->ack_wait_ms = o->ack_wait_ms;
    q->max_deliver = o->max_deliver;
    q->max_ack_pending = o->max_ack_pending;
    q->lease_ttl_ms = o->lease_ttl_ms;
    q->publish_timeout_ms = o->publish_timeout_ms;
    q->connect_timeout_ms = o->connect_timeout_ms;
    return IOT_OK;
}

/* ---- libnats callbacks (run on libnats' own thread) ---- */

static void set_reason(struct queue *q, const char *msg)
{
    snprintf(q->reason, sizeof q->reason, "%s", msg);
}

static void on_connected(natsConnection *nc, void *closure)
{
    struct queue *q = closure;
    (void)nc;
    pthread_mutex_lock(&q->mu);
    q->connected = true;
    q->setup_needed = true;
    set_reason(q, "NATS connected; checking the JetStream streams, consumer and buckets");
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
    log_info("queue: connected to NATS");
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    struct queue *q = closure;
    (void)nc;
    pthread_mutex_lock(&q->mu);
    bool was = q->connected && !q->closing;
    q->connected = false;
    q->ready = false;
    if (!q->config_error)
        set_reason(q, "NATS is not reachable (disconnected; reconnecting)");
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
    if (was)
        log_warn("queue: disconnected from NATS; reconnecting");
}

static void on_closed(natsConnection *nc, void *closure)
{
    struct queue *q = closure;
    (void)nc;
    pthread_mutex_lock(&q->mu);
    q->connected = false;
    q->ready = false;
    q->nc_closed = true;
    if (!q->config_error)
        set_reason(q, "NATS connection closed");
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus s, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    log_warn("queue: NATS asynchronous error: %s", natsStatus_GetText(s));
}

/* ---- background thread ---- */

static void *queue_thread(void *arg)
{
    struct queue *q = arg;
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_Connect(&nc, q->nopts);

    pthread_mutex_lock(&q->mu);
    if (s == NATS_OK || s == NATS_NOT_YET_CONNECTED) {
        q->nc = nc;
        /* Connected at the first attempt: libnats calls no connected callback then. (A
         * disconnection since then has already been reported by its callback.) */
        if (s == NATS_OK && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED) {
            q->connected = true;
            q->setup_needed = true;
        }
    } else {
        /* libnats reports a URL it cannot use only here */
        q->config_error = true;
        snprintf(q->reason, sizeof q->reason, "NATS connection cannot be set up: %s%s",
                 natsStatus_GetText(s), s == NATS_INVALID_ARG ? " (check the NATS URL)" : "");
        pthread_cond_broadcast(&q->cond);
    }

    int64_t retry_ms = QUEUE_SETUP_RETRY_MS;
    while (!q->closing && !q->config_error) {
        if (q->connected && q->setup_needed) {
            q->setup_needed = false;
            q->ready = false;
            pthread_mutex_unlock(&q->mu);

            struct iot_error e = {0};
            enum iot_err rc = queue_setup_run(q, &e);

            pthread_mutex_lock(&q->mu);
            if (rc == IOT_OK) {
                retry_ms = QUEUE_SETUP_RETRY_MS;
                if (q->connected && !q->setup_needed) {
                    q->ready = true;
                    q->ever_ready = true;
                    set_reason(q, "ready");
                }
            } else if (rc == IOT_ERR_CONFIG) {
                q->config_error = true;
                set_reason(q, e.msg);
                log_error("queue: %s", e.msg);
            } else {
                snprintf(q->reason, sizeof q->reason,
                         "NATS JetStream set-up failed (retrying): %.440s", e.msg);
                log_warn("queue: %s", q->reason);
                q->setup_needed = true;
                struct timespec ts;
                deadline_to_timespec(queue_mono_ms() + retry_ms, &ts);
                pthread_cond_broadcast(&q->cond);
                while (!q->closing && pthread_cond_timedwait(&q->cond, &q->mu, &ts) != ETIMEDOUT)
                    ;
                retry_ms = retry_ms * 2 > QUEUE_SETUP_RETRY_MAX_MS ? QUEUE_SETUP_RETRY_MAX_MS
                                                                   : retry_ms * 2;
            }
            pthread_cond_broadcast(&q->cond);
            continue;
        }
        pthread_cond_wait(&q->cond, &q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* ---- open / close ---- */

static enum iot_err build_nats_options(struct queue *q, struct iot_error *err)
{
    /* libnats spins up to 2,000 times on a busy mutex before sleeping by default: with its
     * reader, flusher and delivery threads plus our workers on two cores, the spinning took 5 %
     * of the service's CPU under load. A lock spin count of 0 sleeps at once. Only the first
     * call in a process sets it (libnats opens itself implicitly otherwise). */
    natsStatus s = nats_Open(0);
    if (s == NATS_OK)
        s = natsOptions_Create(&q->nopts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(q->nopts, q->url);
    if (s != NATS_OK)
        return iot_error_set(err, IOT_ERR_CONFIG, "NATS URL rejected: %s", natsStatus_GetText(s));
    if (s == NATS_OK)
        s = natsOptions_SetName(q->nopts, "iot-manager");
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(q->nopts, q->connect_timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(q->nopts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(q->nopts, QUEUE_RECONNECT_MS);
    /* A dead server without a TCP reset is noticed after about two ping intervals. */
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(q->nopts, QUEUE_PING_MS);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(q->nopts, 2);
    /* JetStream calls are requests: fail them at a disconnection instead of at their timeout. */
    if (s == NATS_OK)
        s = natsOptions_SetFailRequestsOnDisconnect(q->nopts, true);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(q->nopts, true, on_connected, q);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(q->nopts, on_disconnected, q);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(q->nopts, on_connected, q);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(q->nopts, on_closed, q);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(q->nopts, on_async_error, q);
    if (s != NATS_OK)
        return iot_error_set(err, IOT_ERR_INTERNAL, "NATS options: %s", natsStatus_GetText(s));
    return IOT_OK;
}

enum iot_err queue_open(const struct queue_options *o, struct queue **out, struct iot_error *err)
{
    *out = NULL;
    struct queue *q = calloc(1, sizeof *q);
    if (!q)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    enum iot_err rc = copy_options(q, o, err);
    if (rc != IOT_OK) {
        free(q->url);
        free(q);
        return rc;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    set_reason(q, "NATS is not reachable yet (connecting)");

    rc = build_nats_options(q, err);
    if (rc == IOT_OK) {
        if (pthread_create(&q->thread, NULL, queue_thread, q) != 0)
            rc = iot_error_set(err, IOT_ERR_INTERNAL, "cannot start the NATS thread");
        else
            q->thread_started = true;
    }
    if (rc != IOT_OK) {
        queue_close(q);
        return rc;
    }
    *out = q;
    return IOT_OK;
}

void queue_close(struct queue *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    q->closing = true;
    natsConnection *nc = q->nc;
    bool connected = q->connected;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);

    /* Closing first makes the set-up thread's pending requests fail at once. */
    if (nc) {
        if (connected)
            natsConnection_FlushTimeout(nc, QUEUE_CLOSE_FLUSH_MS);
        natsConnection_Close(nc);
    }
    if (q->thread_started)
        pthread_join(q->thread, NULL);

    nc = q->nc; /* the thread may have stored it after we looked */
    if (nc) {
        natsConnection_Close(nc);
        /* libnats delivers callbacks on its own thread: `q` must outlive the last one, the
         * closed callback (it may wait for a connection attempt in progress). */
        int64_t deadline = queue_mono_ms() + q->connect_timeout_ms + 2000;
        struct timespec ts;
        deadline_to_timespec(deadline, &ts);
        pthread_mutex_lock(&q->mu);
        while (!q->nc_closed && pthread_cond_timedwait(&q->cond, &q->mu, &ts) != ETIMEDOUT)
            ;
        bool closed = q->nc_closed;
        pthread_mutex_unlock(&q->mu);
        kvStore_Destroy(q->state_kv);
        kvStore_Destroy(q->lease_kv);
        jsCtx_Destroy(q->js);
        natsConnection_Destroy(nc);
        if (!closed) {
            /* Never seen in practice; leaking beats a callback writing into freed memory. */
            log_error("queue: NATS connection did not report closing; leaking its state");
            natsOptions_Destroy(q->nopts);
            return;
        }
    }
    natsOptions_Destroy(q->nopts);
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->mu);
    free(q->url);
    free(q);
}

/* ---- health ---- */

static enum iot_err state_error_locked(struct queue *q, const char *what, struct iot_error *err)
{
    if (q->config_error)
        return iot_error_set(err, IOT_ERR_CONFIG, "%s", q->reason);
    if (q->ready)
        return IOT_OK;
    if (what)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s: %s", what, q->reason);
    return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s", q->reason);
}

enum iot_err queue_health(struct queue *q, struct iot_error *err)
{
    pthread_mutex_lock(&q->mu);
    enum iot_err rc = state_error_locked(q, NULL, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

enum iot_err queue_check_ready(struct queue *q, const char *what, struct iot_error *err)
{
    pthread_mutex_lock(&q->mu);
    enum iot_err rc = state_error_locked(q, what, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

enum iot_err queue_wait_ready_until(struct queue *q, int64_t deadline_ms, struct iot_error *err)
{
    struct timespec ts;
    deadline_to_timespec(deadline_ms, &ts);
    pthread_mutex_lock(&q->mu);
    while (!q->ready && !q->config_error && !q->closing &&
           pthread_cond_timedwait(&q->cond, &q->mu, &ts) != ETIMEDOUT)
        ;
    enum iot_err rc = state_error_locked(q, NULL, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

enum iot_err queue_wait_ready(struct queue *q, int64_t timeout_ms, struct iot_error *err)
{
    return queue_wait_ready_until(q, queue_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0), err);
}

void queue_request_setup(struct queue *q)
{
    pthread_mutex_lock(&q->mu);
    if (q->connected && !q->config_error) {
        q->setup_needed = true;
        q->ready = false;
        set_reason(q, "NATS JetStream objects are being checked again");
        pthread_cond_broadcast(&q->cond);
    }
    pthread_mutex_unlock(&q->mu);
}

bool queue_is_connected(struct queue *q)
{
    pthread_mutex_lock(&q->mu);
    bool c = q->connected;
    pthread_mutex_unlock(&q->mu);
    return c;
}

enum iot_err queue_nats_error(struct queue *q, struct iot_error *err, natsStatus s, jsErrCode jerr,
                              const char *what)
{
    if (!queue_is_connected(q) || s == NATS_CONNECTION_DISCONNECTED || s == NATS_CONNECTION_CLOSED)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s: NATS is not reachable (disconnected)",
                             what);
    if (s == NATS_TIMEOUT)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s: NATS did not answer in time", what);
    if (s == NATS_NO_RESPONDERS || jerr == QUEUE_JERR_STREAM_NOT_FOUND ||
        jerr == QUEUE_JERR_CONSUMER_NOT_FOUND) {
        /* the stream or consumer vanished (deleted, or a server that lost its state) */
        queue_request_setup(q);
        return iot_error_set(err, IOT_ERR_UNAVAILABLE,
                             "%s: the JetStream stream or consumer is missing; re-creating it",
                             what);
    }
    if (jerr)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s: %s (JetStream error %d)", what,
                             natsStatus_GetText(s), (int)jerr);
    return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s: %s", what, natsStatus_GetText(s));
}

/* ---- observability ---- */

int queue_max_deliver(const struct queue *q)
{
    return q->max_deliver;
}

enum iot_err queue_stats(struct queue *q, struct queue_stats *out, struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    enum iot_err rc = queue_check_ready(q, "queue stats", err);
    if (rc != IOT_OK)
        return rc;
    jsConsumerInfo *ci = NULL;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, q->js, q->stream, q->consumer, NULL, &jerr);
    if (s != NATS_OK)
        return queue_nats_error(q, err, s, jerr, "reading the consumer's state");
    out->pending = ci->NumPending;
    out->ack_pending = ci->NumAckPending > 0 ? (uint64_t)ci->NumAckPending : 0;
    out->redelivered = ci->NumRedelivered > 0 ? (uint64_t)ci->NumRedelivered : 0;
    jsConsumerInfo_Destroy(ci);
    jerr = 0;
    s = js_GetStreamInfo(&si, q->js, q->dlq_stream, NULL, &jerr);
    if (s != NATS_OK)
        return queue_nats_error(q, err, s, jerr, "reading the dead-letter stream's state");
    out->dead_letters = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return IOT_OK;
}
