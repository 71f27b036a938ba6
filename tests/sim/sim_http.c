/* HTTP(S) front end on libmicrohttpd: routing, api-version, SAS, throttling, fault injection,
 * delayed answers (suspend/resume with a timer thread, so a slow answer never blocks a pool
 * thread) and the request log. */
#include "sim.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#define URI_MAX  16384
#define SEGS_MAX 8
#define SEG_MAX  1024

struct sim_req {
    struct sim *sim;
    char *uri; /* raw request-target, as sent */
    bool started;
    char *body;
    size_t len, cap;
    bool too_big;
    bool have_reply; /* computed; waiting out a delay */
    struct sim_reply reply;
    int64_t t0_ns, t0_ms;
    char method[16];
    char who[96];
    char note[160];
    bool control;
};

/* ---- delayed answers ------------------------------------------------------------------------- */

static void *timer_main(void *arg)
{
    struct sim_timer *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        if (t->stopping) {
            for (size_t i = 0; i < t->n; i++) {
                MHD_resume_connection(t->items[i].conn);
            }
            t->n = 0;
            break;
        }
        if (t->n == 0) {
            pthread_cond_wait(&t->cv, &t->mu);
            continue;
        }
        size_t best = 0;
        for (size_t i = 1; i < t->n; i++) {
            if (t->items[i].deadline_ns < t->items[best].deadline_ns) {
                best = i;
            }
        }
        int64_t now = sim_mono_ns();
        int64_t deadline = t->items[best].deadline_ns;
        if (deadline <= now) {
            struct MHD_Connection *c = t->items[best].conn;
            t->items[best] = t->items[--t->n];
            MHD_resume_connection(c);
            continue;
        }
        struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000),
                              .tv_nsec = (long)(deadline % 1000000000)};
        pthread_cond_timedwait(&t->cv, &t->mu, &ts);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

static int timer_start(struct sim_timer *t)
{
    memset(t, 0, sizeof *t);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&t->cv, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0 || pthread_mutex_init(&t->mu, NULL) != 0) {
        return -1;
    }
    if (pthread_create(&t->thread, NULL, timer_main, t) != 0) {
        return -1;
    }
    t->started = true;
    return 0;
}

static bool timer_add(struct sim_timer *t, struct MHD_Connection *conn, int64_t deadline_ns)
{
    bool ok = false;
    pthread_mutex_lock(&t->mu);
    if (!t->stopping) {
        if (t->n == t->cap) {
            size_t nc = t->cap ? t->cap * 2 : 64;
            struct sim_pending *m = realloc(t->items, nc * sizeof *m);
            if (m) {
                t->items = m;
                t->cap = nc;
            }
        }
        if (t->n < t->cap) {
            t->items[t->n++] = (struct sim_pending){.deadline_ns = deadline_ns, .conn = conn};
            pthread_cond_signal(&t->cv);
            ok = true;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return ok;
}

static void timer_stop(struct sim_timer *t)
{
    if (!t->started) {
        return;
    }
    pthread_mutex_lock(&t->mu);
    t->stopping = true;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    free(t->items);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    t->started = false;
}

/* ---- request plumbing ---------------------------------------------------------------------- */

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)conn;
    struct sim_req *q = calloc(1, sizeof *q);
    if (!q) {
        return NULL;
    }
    q->sim = cls;
    q->uri = strndup(uri, URI_MAX);
    return q;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct sim_req *q = *con_cls;
    if (q) {
        sim_reply_free(&q->reply);
        free(q->body);
        free(q->uri);
        free(q);
        *con_cls = NULL;
    }
}

static const char *header(struct MHD_Connection *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

/* Raw query value by name (percent-decoded into out). */
static bool query_get(const char *query, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = query;
    while (p && *p) {
        const char *end = strchr(p, '&');
        size_t flen = end ? (size_t)(end - p) : strlen(p);
        if (flen > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            return sim_url_decode(p + nl + 1, flen - nl - 1, true, out, n);
        }
        p = end ? end + 1 : NULL;
    }
    return false;
}

static const char *const service_versions[] = {"2020-09-30", "2021-04-12"};
/* Device-side REST versions the device SDKs send for telemetry. */
static const char *const device_versions[] = {"2016-11-14", "2018-06-30", "2019-03-30",
                                              "2020-03-13", "2020-09-30", "2021-04-12"};

static bool api_version_ok(const char *query, bool device, char *got, size_t n)
{
    got[0] = '\0';
    if (!query_get(query, "api-version", got, n)) {
        return false;
    }
    const char *const *list = device ? device_versions : service_versions;
    size_t count = device ? sizeof device_versions / sizeof device_versions[0]
                          : sizeof service_versions / sizeof service_versions[0];
    for (size_t i = 0; i < count; i++) {
        if (strcmp(got, list[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* A fault's status as Azure would word it. */
static void fault_reply(struct sim_reply *r, unsigned status, long retry_after)
{
    enum sim_ecode e = SIM_E_SERVER_ERROR;
    switch (status) {
    case 400:
        e = SIM_E_ARGUMENT_INVALID;
        break;
    case 401:
        e = SIM_E_UNAUTHORIZED;
        break;
    case 404:
        e = SIM_E_DEVICE_NOT_FOUND;
        break;
    case 408:
        e = SIM_E_REQUEST_TIMEOUT;
        break;
    case 409:
        e = SIM_E_DEVICE_ALREADY_EXISTS;
        break;
    case 412:
        e = SIM_E_PRECONDITION_FAILED;
        break;
    case 413:
        e = SIM_E_TOO_MANY_DEVICES;
        break;
    case 429:
        e = SIM_E_THROTTLING_BACKLOG;
        break;
    case 503:
        e = SIM_E_SERVICE_UNAVAILABLE;
        break;
    case 504:
        e = SIM_E_GATEWAY_TIMEOUT;
        break;
    default:
        break;
    }
    if (e == SIM_E_THROTTLING_BACKLOG) {
        sim_reply_error(r, e,
                        "The request has been throttled. Wait 10 seconds and try again. "
                        "Operation type: CRUD");
    } else {
        sim_reply_error(r, e, "Injected fault");
    }
    r->status = status;
    r->retry_after = retry_after;
}

enum route {
    R_NONE,
    R_DEVICE_LIST,
    R_BULK,
    R_QUERY,
    R_DEVICE_PUT,
    R_DEVICE_GET,
    R_DEVICE_DELETE,
    R_DEVICE_EVENT,
    R_STATISTICS,
    R_TWIN_GET,
    R_TWIN_PATCH,
    R_TWIN_PUT,
};

struct route_info {
    enum route route;
    enum sim_rclass rclass;
    unsigned perms;
    int tclass; /* enum sim_tclass or -1 */
    const char *op_type;
    const char *id; /* decoded device id, or NULL */
};

/* Maps method + path to a route; on a known path with the wrong method sets *wrong_method. */
static struct route_info route_match(const char *m, char **segs, size_t n, bool *wrong_method)
{
    struct route_info ri = {R_NONE, SIM_RCLASS_OTHER, 0, -1, "CRUD", NULL};
    *wrong_method = false;
    bool get = !strcmp(m, "GET"), put = !strcmp(m, "PUT"), post = !strcmp(m, "POST");
    bool del = !strcmp(m, "DELETE"), patch = !strcmp(m, "PATCH");
    const unsigned rr = SIM_PERM_REGISTRY_READ, rw = SIM_PERM_REGISTRY_WRITE,
                   sc = SIM_PERM_SERVICE_CONNECT;
    if (n == 1 && !strcmp(segs[0], "devices")) {
        if (get) {
            ri = (struct route_info){
                R_DEVICE_LIST, SIM_RCLASS_REGISTRY, rr, SIM_TCLASS_REGISTRY, "CRUD", NULL};
        } else if (post) {
            ri =
                (struct route_info){R_BULK, SIM_RCLASS_BULK, rw, SIM_TCLASS_REGISTRY, "CRUD", NULL};
        } else {
            *wrong_method = true;
        }
    } else if (n == 2 && !strcmp(segs[0], "devices")) {
        if (post && !strcmp(segs[1], "query")) {
            ri =
                (struct route_info){R_QUERY, SIM_RCLASS_QUERY, sc, SIM_TCLASS_QUERY, "Query", NULL};
        } else if (put) {
            ri = (struct route_info){
                R_DEVICE_PUT, SIM_RCLASS_REGISTRY, rw, SIM_TCLASS_REGISTRY, "CRUD", segs[1]};
        } else if (get) {
            ri = (struct route_info){
                R_DEVICE_GET, SIM_RCLASS_REGISTRY, rr, SIM_TCLASS_REGISTRY, "CRUD", segs[1]};
        } else if (del) {
            ri = (struct route_info){
                R_DEVICE_DELETE, SIM_RCLASS_REGISTRY, rw, SIM_TCLASS_REGISTRY, "CRUD", segs[1]};
        } else {
            *wrong_method = true;
        }
    } else if (n == 4 && !strcmp(segs[0], "devices") && !strcmp(segs[2], "messages") &&
               !strcmp(segs[3], "events")) {
        if (post) {
            ri = (struct route_info){R_DEVICE_EVENT, SIM_RCLASS_DEVICE, 0, -1, "D2C", segs[1]};
        } else {
            *wrong_method = true;
        }
    } else if (n == 2 && !strcmp(segs[0], "statistics") && !strcmp(segs[1], "devices")) {
        if (get) {
            ri = (struct route_info){R_STATISTICS, SIM_RCLASS_STATISTICS, rr, -1, "CRUD", NULL};
        } else {
            *wrong_method = true;
        }
    } else if (n == 2 && !strcmp(segs[0], "twins")) {
        if (get) {
            ri = (struct route_info){R_TWIN_GET,           SIM_RCLASS_TWIN_READ, sc,
                                     SIM_TCLASS_TWIN_READ, "TwinRead",           segs[1]};
        } else if (patch || put) {
            ri = (struct route_info){patch ? R_TWIN_PATCH : R_TWIN_PUT,
                                     SIM_RCLASS_TWIN_UPDATE,
                                     sc,
                                     SIM_TCLASS_TWIN_UPDATE,
                                     "TwinUpdate",
                                     segs[1]};
        } else {
            *wrong_method = true;
        }
    }
    return ri;
}

/* Splits and percent-decodes the path (not '+': that is only special in query strings). */
static size_t split_path(const char *path, size_t plen, char **segs, char *store, size_t store_n,
                         bool *ok)
{
    size_t n = 0, used = 0;
    *ok = true;
    const char *p = path;
    const char *end = path + plen;
    if (p < end && *p == '/') {
        p++;
    }
    while (p <= end) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *segend = slash ? slash : end;
        size_t len = (size_t)(segend - p);
        if (n >= SEGS_MAX || len >= SEG_MAX || used + len + 1 > store_n) {
            *ok = false;
            return n;
        }
        if (!sim_url_decode(p, len, false, store + used, store_n - used)) {
            *ok = false;
            return n;
        }
        segs[n++] = store + used;
        used += strlen(store + used) + 1;
        if (!slash) {
            break;
        }
        p = slash + 1;
    }
    if (n > 1 && segs[n - 1][0] == '\0') {
        n--; /* "/devices/?api-version=..." as C# sends it */
    }
    return n;
}

static void process(struct sim *s, struct sim_req *q, struct MHD_Connection *conn, long *delay_ms)
{
    struct sim_reply *r = &q->reply;
    const char *uri = q->uri ? q->uri : "/";
    const char *qm = strchr(uri, '?');
    size_t plen = qm ? (size_t)(qm - uri) : strlen(uri);
    const char *query = qm ? qm + 1 : "";
    char *segs[SEGS_MAX];
    char store[SEGS_MAX * SEG_MAX];
    bool ok;
    size_t n = split_path(uri, plen, segs, store, sizeof store, &ok);
    *delay_ms = 0;

    if (ok && n >= 1 && !strcmp(segs[0], "_sim")) {
        q->control = true;
        atomic_fetch_add(&s->stats.by_class[SIM_RCLASS_CONTROL], 1);
        sim_control(s, q->method, segs + 1, n - 1, query, q->body, q->len, r);
        return;
    }
    atomic_fetch_add(&s->stats.total, 1);
    char path[URI_MAX];
    snprintf(path, sizeof path, "%.*s", (int)plen, uri);

    struct sim_fault fault;
    if (sim_faults_match(&s->faults, q->method, path, &fault)) {
        *delay_ms += fault.latency_ms;
        if (fault.drop || fault.status) {
            atomic_fetch_add(&s->stats.faults_injected, 1);
            snprintf(q->note, sizeof q->note, "fault %ld", fault.id);
            if (fault.drop) {
                r->drop = true;
            } else {
                fault_reply(r, fault.status, fault.retry_after);
            }
            *delay_ms += atomic_load(&s->global_latency_ms);
            return;
        }
    }
    *delay_ms += atomic_load(&s->global_latency_ms);

    bool wrong_method = false;
    struct route_info ri = {R_NONE, SIM_RCLASS_OTHER, 0, -1, "CRUD", NULL};
    if (ok) {
        ri = route_match(q->method, segs, n, &wrong_method);
    }
    atomic_fetch_add(&s->stats.by_class[ri.rclass], 1);
    if (ri.route == R_NONE) {
        if (wrong_method) {
            sim_reply_error(r, SIM_E_METHOD_NOT_ALLOWED, "The requested method is not allowed");
        } else {
            sim_reply_error(r, SIM_E_NOT_FOUND, "The requested resource does not exist");
        }
        return;
    }
    if (q->too_big) {
        sim_reply_error(r, SIM_E_MESSAGE_TOO_LARGE, "Request body too large");
        return;
    }
    char version[64];
    if (!api_version_ok(query, ri.route == R_DEVICE_EVENT, version, sizeof version)) {
        sim_reply_error(r, SIM_E_INVALID_PROTOCOL_VERSION,
                        "Invalid or missing api-version '%.32s'; supported: 2020-09-30, "
                        "2021-04-12",
                        version);
        return;
    }
    const char *authz = header(conn, MHD_HTTP_HEADER_AUTHORIZATION);
    if (ri.route == R_DEVICE_EVENT) {
        if (!sim_id_valid(ri.id)) {
            sim_reply_error(r, SIM_E_UNAUTHORIZED, "Unauthorized");
        } else {
            sim_route_device_event(s, ri.id, authz, q->who, sizeof q->who, r);
        }
        if (r->status == 401) {
            atomic_fetch_add(&s->stats.unauthorized, 1);
            snprintf(q->note, sizeof q->note, "auth: device token rejected");
        }
        return;
    }
    char why[128];
    if (!sim_auth_service(s, authz, ri.perms, path, q->who, sizeof q->who, why, sizeof why)) {
        atomic_fetch_add(&s->stats.unauthorized, 1);
        snprintf(q->note, sizeof q->note, "auth: %s", why);
        sim_reply_error(r, SIM_E_UNAUTHORIZED, "Unauthorized");
        return;
    }
    if (ri.id && !sim_id_valid(ri.id)) {
        sim_reply_error(r, SIM_E_ARGUMENT_INVALID,
                        "DeviceId is invalid: at most 128 characters from "
                        "[A-Za-z0-9-:.+%%_#*?!(),=@;$']");
        return;
    }
    json_t *bulk = NULL;
    double cost = 1;
    if (ri.route == R_BULK) {
        json_error_t jerr;
        bulk = json_loadb(q->body ? q->body : "", q->len, 0, &jerr);
        if (!json_is_array(bulk)) {
            json_decref(bulk);
            sim_reply_error(r, SIM_E_ARGUMENT_INVALID,
                            "The request body must be an array of ExportImportDevice");
            return;
        }
        if (json_array_size(bulk) == 0) {
            json_decref(bulk);
            sim_reply_error(r, SIM_E_ARGUMENT_INVALID, "The device list is empty");
            return;
        }
        if (json_array_size(bulk) > SIM_BULK_MAX) {
            json_decref(bulk);
            sim_reply_error(r, SIM_E_TOO_MANY_DEVICES,
                            "Too many devices in a bulk operation: at most %d", SIM_BULK_MAX);
            return;
        }
        cost = (double)json_array_size(bulk); /* bulk counts per device (§3.3) */
    }
    if (ri.tclass >= 0 && !sim_throttle_take(&s->throttle, (enum sim_tclass)ri.tclass, cost)) {
        json_decref(bulk);
        atomic_fetch_add(&s->stats.throttled, 1);
        snprintf(q->note, sizeof q->note, "throttled");
        sim_reply_error(r, SIM_E_THROTTLING_BACKLOG,
                        "The request has been throttled. Wait 10 seconds and try again. "
                        "Operation type: %s",
                        ri.op_type);
        return;
    }
    const char *if_match = header(conn, "If-Match");
    switch (ri.route) {
    case R_DEVICE_LIST: {
        char top[32];
        sim_route_device_list(s, query_get(query, "top", top, sizeof top) ? top : NULL, r);
        break;
    }
    case R_BULK:
        sim_route_bulk(s, bulk, r);
        break;
    case R_QUERY:
        sim_route_query(s, q->body, q->len, header(conn, "x-ms-max-item-count"),
                        header(conn, "x-ms-continuation"), r);
        break;
    case R_DEVICE_PUT:
        sim_route_device_put(s, ri.id, if_match, q->body, q->len, r);
        break;
    case R_DEVICE_GET:
        sim_route_device_get(s, ri.id, r);
        break;
    case R_DEVICE_DELETE:
        sim_route_device_delete(s, ri.id, if_match, r);
        break;
    case R_STATISTICS:
        sim_route_statistics(s, r);
        break;
    case R_TWIN_GET:
        sim_route_twin_get(s, ri.id, r);
        break;
    case R_TWIN_PATCH:
    case R_TWIN_PUT:
        sim_route_twin_update(s, ri.id, ri.route == R_TWIN_PUT, if_match, q->body, q->len, r);
        break;
    case R_DEVICE_EVENT:
    case R_NONE:
        break;
    }
    json_decref(bulk);
}

static void count_status(struct sim *s, unsigned status)
{
    if (status == 429) {
        atomic_fetch_add(&s->stats.sent_429, 1);
    }
    if (status >= 400 && status < 500) {
        atomic_fetch_add(&s->stats.sent_4xx, 1);
    } else if (status >= 500) {
        atomic_fetch_add(&s->stats.sent_5xx, 1);
    }
}

static void log_request(struct sim *s, struct sim_req *q, unsigned status)
{
    if (q->control) {
        return;
    }
    const char *uri = q->uri ? q->uri : "/";
    const char *qm = strchr(uri, '?');
    char path[1024];
    snprintf(path, sizeof path, "%.*s", (int)(qm ? (size_t)(qm - uri) : strlen(uri)), uri);
    sim_reqlog_add(&s->log, q->method, path, qm ? qm + 1 : "", status, q->who[0] ? q->who : NULL,
                   q->note, q->t0_ms, (sim_mono_ns() - q->t0_ns) / 1000000);
}

static enum MHD_Result deliver(struct sim *s, struct sim_req *q, struct MHD_Connection *conn)
{
    struct sim_reply *r = &q->reply;
    if (r->drop) {
        atomic_fetch_add(&s->stats.drops, 1);
        log_request(s, q, 0);
        return MHD_NO; /* MHD closes the connection without an answer */
    }
    if (r->status == 0) {
        sim_reply_error(r, SIM_E_SERVER_ERROR, "no answer produced");
    }
    size_t blen = r->body ? strlen(r->body) : 0;
    struct MHD_Response *resp =
        blen ? MHD_create_response_from_buffer(blen, r->body, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        return MHD_NO;
    }
    if (blen) {
        r->body = NULL; /* now owned by MHD */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                "application/json; charset=utf-8");
    }
    char buf[128];
    if (r->etag[0]) {
        snprintf(buf, sizeof buf, "\"%s\"", r->etag);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, buf);
    }
    if (r->errorcode) {
        MHD_add_response_header(resp, "iothub-errorcode", r->errorcode);
    }
    if (r->retry_after >= 0) {
        snprintf(buf, sizeof buf, "%ld", r->retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, buf);
    }
    if (r->item_type) {
        MHD_add_response_header(resp, "x-ms-item-type", r->item_type);
    }
    if (r->continuation) {
        MHD_add_response_header(resp, "x-ms-continuation", r->continuation);
    }
    if (!q->control) {
        char rid[40];
        sim_random_hex(rid);
        MHD_add_response_header(resp, "x-ms-request-id", rid);
        count_status(s, r->status);
    }
    log_request(s, q, r->status);
    enum MHD_Result ret = MHD_queue_response(conn, r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct sim *s = cls;
    struct sim_req *q = *con_cls;
    if (!q) {
        if (!(q = on_uri(s, url, conn))) {
            return MHD_NO;
        }
        *con_cls = q;
    }
    if (!q->started) {
        q->started = true;
        q->t0_ns = sim_mono_ns();
        q->t0_ms = sim_now_us() / 1000;
        q->reply.retry_after = -1;
        snprintf(q->method, sizeof q->method, "%s", method);
        const char *cl = header(conn, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > SIM_MAX_BODY) {
            q->too_big = true; /* drained below, answered at the end */
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (q->too_big || q->len + n > SIM_MAX_BODY) {
            q->too_big = true;
            return MHD_YES;
        }
        if (q->len + n + 1 > q->cap) {
            size_t nc = q->cap ? q->cap : 4096;
            while (nc < q->len + n + 1) {
                nc *= 2;
            }
            char *m = realloc(q->body, nc);
            if (!m) {
                q->too_big = true;
                return MHD_YES;
            }
            q->body = m;
            q->cap = nc;
        }
        memcpy(q->body + q->len, upload_data, n);
        q->len += n;
        q->body[q->len] = '\0';
        return MHD_YES;
    }
    if (q->have_reply) {
        return deliver(s, q, conn); /* resumed after the delay */
    }
    long delay_ms = 0;
    process(s, q, conn, &delay_ms);
    if (delay_ms > 0) {
        q->have_reply = true;
        MHD_suspend_connection(conn);
        if (timer_add(&s->timer, conn, sim_mono_ns() + (int64_t)delay_ms * 1000000)) {
            return MHD_YES;
        }
        MHD_resume_connection(conn); /* shutting down: answer now */
        return MHD_YES;
    }
    return deliver(s, q, conn);
}

static socklen_t parse_listen(const char *addr, unsigned port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, addr, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        return sizeof *v4;
    }
    if (inet_pton(AF_INET6, addr, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        return sizeof *v6;
    }
    return 0;
}

int sim_http_listen(struct sim *s)
{
    struct sockaddr_storage ss;
    socklen_t len = parse_listen(s->opt.listen_addr, s->opt.port, &ss);
    if (len == 0) {
        fprintf(stderr, "iothub-sim: bad listen address '%s'\n", s->opt.listen_addr);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    int flags = 0;
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1024) != 0 ||
        getsockname(fd, (struct sockaddr *)&bound, &blen) != 0 ||
        (flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        close(fd);
        return -1;
    }
    s->listen_fd = fd;
    s->bound_port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                      : ((struct sockaddr_in *)&bound)->sin_port);
    return 0;
}

int sim_http_start(struct sim *s, const char *cert_pem, const char *key_pem)
{
    if (timer_start(&s->timer) != 0) {
        return -1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES) {
        flags |= MHD_USE_EPOLL;
    }
    if (!s->opt.quiet) {
        flags |= MHD_USE_ERROR_LOG;
    }
    if (!s->opt.plain_http) {
        flags |= MHD_USE_TLS;
    }
    struct MHD_OptionItem tls[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)cert_pem},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)key_pem},
        {MHD_OPTION_END, 0, NULL},
    };
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    s->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, &on_request, s, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)s->listen_fd,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)s->opt.threads, MHD_OPTION_URI_LOG_CALLBACK, &on_uri,
        s, MHD_OPTION_NOTIFY_COMPLETED, &on_completed, s, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)120, MHD_OPTION_CONNECTION_LIMIT, (unsigned)4000,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024), MHD_OPTION_ARRAY,
        s->opt.plain_http ? none : tls, MHD_OPTION_END);
    if (!s->daemon) {
        timer_stop(&s->timer);
        return -1;
    }
    return 0;
}

void sim_http_stop(struct sim *s)
{
    /* Pending delayed answers are resumed first: MHD must not stop with suspended
     * connections. */
    timer_stop(&s->timer);
    if (s->daemon) {
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;
    }
}
