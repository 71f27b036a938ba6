/* The NATS JetStream queue adapter against a real nats-server.
 *
 * The server comes from IOT_MANAGER_TEST_NATS_URL (scripts/with-nats.sh provides one); without
 * it the test starts its own. Each test works on its own stream, consumer and buckets (random
 * names) and deletes them at the end; the dead-letter stream is shared, and only the DLQ test
 * writes to it. Tests about start-up order and restarts run their own /usr/sbin/nats-server on
 * a free port. Server-side facts are checked with plain libnats.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "iot-manager/log.h"
#include "iot-manager/queue.h"
#include "iot-manager/uuid.h"
#include "support/spawn.h"

#define NATS_SERVER "/usr/sbin/nats-server"
#define NS_PER_MS   ((int64_t)1000000)

extern char **environ;

/* ---- helpers: clocks, ports, a nats-server of our own ---- */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

struct natsd {
    pid_t pid;
    int port;
    int monitor_port;
    char dir[256];
};

/* GET /healthz?js-enabled-only=true on the monitoring port: 200 once JetStream is up. */
static bool natsd_healthy(const struct natsd *d)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)d->monitor_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = false;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        static const char req[] = "GET /healthz?js-enabled-only=true HTTP/1.0\r\n"
                                  "Host: 127.0.0.1\r\n\r\n";
        char buf[256] = {0};
        if (write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1) &&
            read(fd, buf, sizeof buf - 1) > 0)
            ok = strstr(buf, " 200 ") != NULL;
    }
    close(fd);
    return ok;
}

/* Starts nats-server with JetStream in d->dir (made when empty) on d->port (free when 0). */
static void natsd_start(struct natsd *d)
{
    if (!d->dir[0]) {
        snprintf(d->dir, sizeof d->dir, "/tmp/iotm-test-nats.XXXXXX");
        assert_non_null(mkdtemp(d->dir));
    }
    if (!d->port)
        d->port = free_port();
    if (!d->monitor_port)
        d->monitor_port = free_port();
    char port[16], mport[16], store[300];
    snprintf(port, sizeof port, "%d", d->port);
    snprintf(mport, sizeof mport, "%d", d->monitor_port);
    snprintf(store, sizeof store, "%s/store", d->dir);
    char *argv[] = {(char *)NATS_SERVER,
                    (char *)"-a",
                    (char *)"127.0.0.1",
                    (char *)"-p",
                    port,
                    (char *)"-m",
                    mport,
                    (char *)"-js",
                    (char *)"-sd",
                    store,
                    NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawn(&d->pid, NATS_SERVER, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    assert_int_equal(rc, 0);
    int64_t deadline = support_now_ms() + 10000;
    while (!natsd_healthy(d)) {
        assert_true(support_now_ms() < deadline);
        support_sleep_ms(20);
    }
}

static void natsd_stop(struct natsd *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
    int status;
    int64_t deadline = support_now_ms() + 5000;
    /* nats-server 2.9 exits with status 1 on SIGTERM: only its being gone matters */
    while (waitpid(d->pid, &status, WNOHANG) == 0) {
        if (support_now_ms() > deadline) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &status, 0);
            break;
        }
        support_sleep_ms(10);
    }
    d->pid = 0;
}

/* rm -r of the server's store (the test made it, nothing in it is a symlink to follow) */
static void rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char child[1024];
            snprintf(child, sizeof child, "%s/%s", path, e->d_name);
            rm_tree(child);
        }
        if (d)
            closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void natsd_destroy(struct natsd *d)
{
    natsd_stop(d);
    if (d->dir[0])
        rm_tree(d->dir);
    d->dir[0] = '\0';
}

static void natsd_url(const struct natsd *d, char *buf, size_t cap)
{
    snprintf(buf, cap, "nats://127.0.0.1:%d", d->port);
}

/* ---- the shared server and the per-test queue ---- */

static struct {
    char url[256];
    struct natsd own; /* when IOT_MANAGER_TEST_NATS_URL is not set */
    natsConnection *nc;
    jsCtx *js;
} g;

static int group_setup(void **state)
{
    (void)state;
    log_set_level(LOG_LEVEL_ERROR);
    const char *url = getenv("IOT_MANAGER_TEST_NATS_URL");
    if (url && *url) {
        snprintf(g.url, sizeof g.url, "%s", url);
    } else {
        natsd_start(&g.own);
        natsd_url(&g.own, g.url, sizeof g.url);
    }
    if (natsConnection_ConnectTo(&g.nc, g.url) != NATS_OK)
        return -1;
    return natsConnection_JetStream(&g.js, g.nc, NULL) == NATS_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    jsCtx_Destroy(g.js);
    natsConnection_Destroy(g.nc);
    natsd_destroy(&g.own);
    nats_CloseAndWait(2000);
    return 0;
}

struct fx {
    char sfx[16];
    char stream[64], prefix[64], consumer[64], state_bucket[64], lease_bucket[64];
    char url[256];
    struct queue_options o;
    struct queue *q;
};

/* Unique names on the shared server, fast timings for tests; `url` NULL: the shared server. */
static void fx_init(struct fx *f, const char *url)
{
    memset(f, 0, sizeof *f);
    struct uuid u;
    assert_int_equal(uuid_generate_v4(&u), IOT_OK);
    snprintf(f->sfx, sizeof f->sfx, "%02x%02x%02x%02x", u.b[0], u.b[1], u.b[2], u.b[3]);
    snprintf(f->stream, sizeof f->stream, "T_%s", f->sfx);
    snprintf(f->prefix, sizeof f->prefix, "t%s.events", f->sfx);
    snprintf(f->consumer, sizeof f->consumer, "w_%s", f->sfx);
    snprintf(f->state_bucket, sizeof f->state_bucket, "S_%s", f->sfx);
    snprintf(f->lease_bucket, sizeof f->lease_bucket, "L_%s", f->sfx);
    snprintf(f->url, sizeof f->url, "%s", url ? url : g.url);
    queue_options_default(&f->o);
    f->o.url = f->url;
    f->o.stream = f->stream;
    f->o.subject_prefix = f->prefix;
    f->o.consumer = f->consumer;
    f->o.state_bucket = f->state_bucket;
    f->o.lease_bucket = f->lease_bucket;
    f->o.publish_timeout_ms = 2000;
    f->o.connect_timeout_ms = 500;
}

static void fx_open(struct fx *f)
{
    struct iot_error err = {0};
    assert_int_equal(queue_open(&f->o, &f->q, &err), IOT_OK);
    enum iot_err rc = queue_wait_ready(f->q, 10000, &err);
    if (rc != IOT_OK)
        fail_msg("queue not ready: %s", err.msg);
}

static void fx_close(struct fx *f)
{
    queue_close(f->q);
    f->q = NULL;
}

/* Removes this test's streams from the shared server. */
static void fx_drop(struct fx *f)
{
    char kv[80];
    fx_close(f);
    js_DeleteStream(g.js, f->stream, NULL, NULL);
    snprintf(kv, sizeof kv, "KV_%s", f->state_bucket);
    js_DeleteStream(g.js, kv, NULL, NULL);
    snprintf(kv, sizeof kv, "KV_%s", f->lease_bucket);
    js_DeleteStream(g.js, kv, NULL, NULL);
}

/* cmocka set-ups of a test's own queue on the shared server: fx_init() only (the test sets
 * options, then opens), or fx_init() and fx_open(); the tear-down drops it, failed or not. */
static int setup_fx(void **state)
{
    struct fx *f = malloc(sizeof *f);
    assert_non_null(f);
    fx_init(f, NULL);
    *state = f;
    return 0;
}

static int setup_fx_open(void **state)
{
    setup_fx(state);
    fx_open(*state);
    return 0;
}

static int teardown_fx(void **state)
{
    fx_drop(*state);
    free(*state);
    return 0;
}

/* A test's own nats-server on a free port, not started (the test starts and stops it), and a
 * queue aimed at it, not opened; the tear-down closes the queue and removes the server. */
struct own {
    struct natsd d;
    struct fx f;
};

static int setup_own(void **state)
{
    struct own *o = calloc(1, sizeof *o);
    assert_non_null(o);
    char url[64];
    o->d.port = free_port();
    natsd_url(&o->d, url, sizeof url);
    fx_init(&o->f, url);
    *state = o;
    return 0;
}

static int teardown_own(void **state)
{
    struct own *o = *state;
    fx_close(&o->f);
    natsd_destroy(&o->d);
    free(o);
    return 0;
}

static void publish_one(struct queue *q, const char *kind, const char *data, uint64_t *seq)
{
    struct iot_error err = {0};
    struct queue_publication p = {.kind = kind, .data = data, .len = strlen(data)};
    enum iot_err rc = queue_publish(q, &p, 1, &err);
    if (rc != IOT_OK)
        fail_msg("publish: %s", err.msg);
    assert_true(p.seq > 0);
    if (seq)
        *seq = p.seq;
}

static size_t fetch(struct queue_consumer *c, struct queue_msg *msgs, size_t max,
                    int64_t timeout_ms)
{
    struct iot_error err = {0};
    size_t n = 0;
    enum iot_err rc = queue_fetch(c, msgs, max, timeout_ms, &n, &err);
    if (rc != IOT_OK)
        fail_msg("fetch: %s", err.msg);
    return n;
}

static void ack_release(struct queue_msg *m)
{
    assert_int_equal(queue_ack(m), IOT_OK);
    queue_msg_release(m);
}

static struct queue_consumer *consumer(struct queue *q)
{
    struct queue_consumer *c = NULL;
    struct iot_error err = {0};
    enum iot_err rc = queue_consumer_new(q, &c, &err);
    if (rc != IOT_OK)
        fail_msg("consumer: %s", err.msg);
    return c;
}

/* ---- tests ---- */

static void test_invalid_options(void **state)
{
    (void)state;
    struct fx f;
    struct queue *q = NULL;
    struct iot_error err = {0};
    fx_init(&f, NULL);

    f.o.stream = "bad.name";
    assert_int_equal(queue_open(&f.o, &q, &err), IOT_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "bad.name"));
    f.o.stream = f.stream;

    f.o.subject_prefix = "iot-manager"; /* would swallow iot-manager.dlq.> */
    assert_int_equal(queue_open(&f.o, &q, &err), IOT_ERR_CONFIG);
    f.o.subject_prefix = "a.*.b";
    assert_int_equal(queue_open(&f.o, &q, &err), IOT_ERR_CONFIG);
    f.o.subject_prefix = f.prefix;

    f.o.lease_bucket = f.state_bucket;
    assert_int_equal(queue_open(&f.o, &q, &err), IOT_ERR_CONFIG);
    f.o.lease_bucket = f.lease_bucket;

    const char *bad_urls[] = {"",
                              "nats://127.0.0.1:abc",
                              "nats://127.0.0.1:0",
                              "nats://u:secret@h:99999",
                              "nats://h:4222,",
                              "nats://:4222"};
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        f.o.url = bad_urls[i];
        assert_int_equal(queue_open(&f.o, &q, &err), IOT_ERR_CONFIG);
        assert_null(q);
        assert_null(strstr(err.msg, "secret"));
    }
    /* accepted forms (no server needed: open never waits) */
    const char *good_urls[] = {"nats://u:p@127.0.0.1:1", "127.0.0.1:1",
                               "nats://127.0.0.1:1,nats://127.0.0.1:2", "tls://127.0.0.1",
                               "nats://[::1]:1"};
    for (size_t i = 0; i < sizeof good_urls / sizeof good_urls[0]; i++) {
        f.o.url = good_urls[i];
        assert_int_equal(queue_open(&f.o, &q, &err), IOT_OK);
        queue_close(q);
        q = NULL;
    }
}

/* Start-up never waits for NATS; calls fail fast until a server shows up, then it works. */
static void test_open_before_server(void **state)
{
    struct own *o = *state;
    struct fx *f = &o->f;
    struct iot_error err = {0};

    int64_t t0 = support_now_ms();
    assert_int_equal(queue_open(&f->o, &f->q, &err), IOT_OK);
    assert_true(support_now_ms() - t0 < 200);
    assert_int_equal(queue_health(f->q, &err), IOT_ERR_UNAVAILABLE);
    assert_true(err.msg[0] != '\0');

    /* a publish keeps trying for publish_timeout_ms, also before the first connection */
    t0 = support_now_ms();
    struct queue_publication p = {.kind = "provision", .data = "{}", .len = 2};
    assert_int_equal(queue_publish(f->q, &p, 1, &err), IOT_ERR_UNAVAILABLE);
    int64_t publish_ms = support_now_ms() - t0;
    assert_true(publish_ms >= f->o.publish_timeout_ms - 50);
    assert_true(publish_ms < f->o.publish_timeout_ms + 1500);

    /* everything else fails fast */
    t0 = support_now_ms();
    char *v = NULL;
    size_t len;
    uint64_t rev;
    assert_int_equal(queue_state_get(f->q, "d.k", &v, &len, &rev, &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(queue_lease_acquire(f->q, "d.k", "me", &rev, &err), IOT_ERR_UNAVAILABLE);
    struct queue_consumer *c = NULL;
    assert_int_equal(queue_consumer_new(f->q, &c, &err), IOT_ERR_UNAVAILABLE);
    assert_null(c);
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st, &err), IOT_ERR_UNAVAILABLE);
    size_t replayed;
    assert_int_equal(queue_dlq_replay(f->q, NULL, 0, true, &replayed, &err), IOT_ERR_UNAVAILABLE);
    assert_true(support_now_ms() - t0 < 100);

    /* bounded wait */
    t0 = support_now_ms();
    assert_int_equal(queue_wait_ready(f->q, 300, &err), IOT_ERR_UNAVAILABLE);
    int64_t waited = support_now_ms() - t0;
    assert_true(waited >= 250 && waited < 1500);

    natsd_start(&o->d);
    assert_int_equal(queue_wait_ready(f->q, 10000, &err), IOT_OK);
    assert_int_equal(queue_health(f->q, &err), IOT_OK);
    publish_one(f->q, "provision", "{}", NULL);
}

/* Closing while the first connection attempt is still failing is quick. */
static void test_close_while_connecting(void **state)
{
    struct own *o = *state;
    struct fx *f = &o->f;
    struct iot_error err = {0};
    assert_int_equal(queue_open(&f->o, &f->q, &err), IOT_OK);
    support_sleep_ms(50);
    int64_t t0 = support_now_ms();
    fx_close(f);
    assert_true(support_now_ms() - t0 < 1500);
}

static void test_roundtrip(void **state)
{
    struct fx *f = *state;
    uint64_t s1, s2, s3;
    publish_one(f->q, "provision", "{\"n\":1}", &s1);
    publish_one(f->q, "status", "{\"n\":2}", &s2);
    publish_one(f->q, "decommission", "{\"n\":3}", &s3);
    assert_true(s1 < s2 && s2 < s3);

    struct queue_consumer *c = consumer(f->q);
    struct queue_msg m[10];
    size_t n = fetch(c, m, 10, 2000);
    assert_int_equal(n, 3);
    assert_int_equal(m[0].seq, s1);
    assert_int_equal(m[1].seq, s2);
    assert_int_equal(m[2].seq, s3);
    assert_string_equal(m[0].kind, "provision");
    assert_string_equal(m[2].kind, "decommission");
    char subj[128];
    snprintf(subj, sizeof subj, "%s.status", f->prefix);
    assert_string_equal(m[1].subject, subj);
    assert_int_equal(m[1].len, 7);
    assert_memory_equal(m[1].data, "{\"n\":2}", 7);
    assert_int_equal(m[0].deliveries, 1);
    for (size_t i = 0; i < n; i++)
        ack_release(&m[i]);

    int64_t t0 = support_now_ms();
    assert_int_equal(fetch(c, m, 10, 200), 0); /* nothing left: idle, not an error */
    assert_true(support_now_ms() - t0 < 1000);

    /* WorkQueue: acked messages are removed from the stream */
    jsStreamInfo *si = NULL;
    int64_t deadline = support_now_ms() + 2000;
    for (;;) {
        assert_int_equal(js_GetStreamInfo(&si, g.js, f->stream, NULL, NULL), NATS_OK);
        uint64_t msgs = si->State.Msgs;
        jsStreamInfo_Destroy(si);
        if (msgs == 0)
            break;
        assert_true(support_now_ms() < deadline);
        support_sleep_ms(50);
    }
    queue_consumer_free(c);

    /* an invalid kind never reaches the stream */
    struct iot_error err = {0};
    struct queue_publication bad = {.kind = "a.b", .data = "x", .len = 1};
    assert_int_equal(queue_publish(f->q, &bad, 1, &err), IOT_ERR_INVALID);
}

static void test_nak_with_delay(void **state)
{
    struct fx *f = *state;
    uint64_t seq;
    publish_one(f->q, "status", "{}", &seq);
    struct queue_consumer *c = consumer(f->q);
    struct queue_msg m[2];
    assert_int_equal(fetch(c, m, 2, 2000), 1);
    int64_t t0 = support_now_ms();
    assert_int_equal(queue_nak(&m[0], 400), IOT_OK);
    queue_msg_release(&m[0]);
    assert_int_equal(fetch(c, m, 2, 150), 0); /* not before the delay */
    assert_int_equal(fetch(c, m, 2, 3000), 1);
    assert_true(support_now_ms() - t0 >= 350);
    assert_int_equal(m[0].seq, seq);
    assert_int_equal(m[0].deliveries, 2);
    ack_release(&m[0]);
    queue_consumer_free(c);
}

static void test_term_stops_redelivery(void **state)
{
    struct fx *f = *state;
    f->o.ack_wait_ms = 300;
    fx_open(f);
    publish_one(f->q, "status", "{}", NULL);
    publish_one(f->q, "status", "{}", NULL);
    struct queue_consumer *c = consumer(f->q);
    struct queue_msg m[2];
    assert_int_equal(fetch(c, m, 2, 2000), 2);
    assert_int_equal(queue_term(&m[0]), IOT_OK);
    queue_msg_release(&m[0]);
    queue_msg_release(&m[1]); /* neither acked nor termed: comes back after AckWait */
    uint64_t second = 0;
    struct queue_msg r[2];
    size_t n = fetch(c, r, 2, 1500);
    assert_int_equal(n, 1);
    second = r[0].seq;
    assert_int_equal(r[0].deliveries, 2);
    ack_release(&r[0]);
    assert_int_equal(fetch(c, r, 2, 700), 0);
    assert_true(second > 0);
    queue_consumer_free(c);
}

static void test_max_deliver(void **state)
{
    struct fx *f = *state;
    f->o.max_deliver = 2;
    fx_open(f);
    assert_int_equal(queue_max_deliver(f->q), 2);
    publish_one(f->q, "status", "{}", NULL);
    struct queue_consumer *c = consumer(f->q);
    struct queue_msg m[1];
    /* the server keeps 5 deliveries beyond the workers' budget, for a failed dead letter or
     * requeue on the budget's last delivery; then it stops */
    for (uint64_t d = 1; d <= 2 + 5; d++) {
        assert_int_equal(fetch(c, m, 1, 2000), 1);
        assert_int_equal(m[0].deliveries, d);
        assert_int_equal(queue_nak(&m[0], 0), IOT_OK);
        queue_msg_release(&m[0]);
    }
    assert_int_equal(fetch(c, m, 1, 700), 0);
    queue_consumer_free(c);
}

static void test_in_progress_extends(void **state)
{
    struct fx *f = *state;
    f->o.ack_wait_ms = 1000;
    fx_open(f);
    uint64_t s1, s2;
    publish_one(f->q, "status", "{\"a\":1}", &s1);
    publish_one(f->q, "status", "{\"a\":2}", &s2);
    struct queue_consumer *c = consumer(f->q);
    struct queue_consumer *other = consumer(f->q);
    struct queue_msg m[2], r[2];
    assert_int_equal(fetch(c, m, 2, 2000), 2);
    /* m[0] is kept alive with in-progress; m[1] (the control) is left alone */
    support_sleep_ms(600);
    assert_int_equal(queue_in_progress(&m[0]), IOT_OK);
    support_sleep_ms(650);
    size_t n = fetch(other, r, 2, 600);
    assert_int_equal(n, 1);
    assert_int_equal(r[0].seq, s2);
    assert_int_equal(r[0].deliveries, 2);
    ack_release(&r[0]);
    ack_release(&m[0]);
    queue_msg_release(&m[1]);
    assert_int_equal(fetch(other, r, 2, 300), 0);
    queue_consumer_free(c);
    queue_consumer_free(other);
}

static void test_batch_publish(void **state)
{
    struct fx *f = *state;
    struct iot_error err = {0};
    enum { N = 100 };
    static struct queue_publication p[N];
    static char bodies[N][32];
    for (int i = 0; i < N; i++) {
        snprintf(bodies[i], sizeof bodies[i], "{\"i\":%d}", i);
        p[i] = (struct queue_publication){
            .kind = i % 2 ? "status" : "provision", .data = bodies[i], .len = strlen(bodies[i])};
    }
    int64_t t0 = support_now_ms();
    enum iot_err rc = queue_publish(f->q, p, N, &err);
    int64_t bulk = support_now_ms() - t0;
    if (rc != IOT_OK)
        fail_msg("batch: %s", err.msg);
    for (int i = 1; i < N; i++)
        assert_true(p[i].seq > p[i - 1].seq); /* distinct, in publication order */
    assert_true(p[0].seq > 0);

    t0 = support_now_ms();
    for (int i = 0; i < 20; i++)
        publish_one(f->q, "status", "{}", NULL);
    int64_t single20 = support_now_ms() - t0;
    print_message("publish: 100 in one call %lld ms; single publish %.2f ms each\n",
                  (long long)bulk, (double)single20 / 20);
    assert_true(bulk < 1000);
    assert_true(single20 < 1000);

    struct queue_consumer *c = consumer(f->q);
    struct queue_msg m[64];
    size_t got = 0;
    while (got < N + 20) {
        size_t n = fetch(c, m, 64, 2000);
        assert_true(n > 0);
        for (size_t i = 0; i < n; i++) {
            if (got + i < N)
                assert_int_equal(m[i].seq, p[got + i].seq);
            ack_release(&m[i]);
        }
        got += n;
    }
    assert_int_equal(got, N + 20);
    queue_consumer_free(c);
}

/* A server that goes away and comes back with the same store: publishes fail after about
 * publish_timeout_ms while it is down, nothing stored is lost, and the queue recovers. */
static void test_restart(void **state)
{
    struct own *o = *state;
    struct fx *f = &o->f;
    struct iot_error err = {0};
    natsd_start(&o->d);
    f->o.publish_timeout_ms = 800;
    fx_open(f);
    uint64_t seqs[3];
    for (int i = 0; i < 3; i++)
        publish_one(f->q, "provision", "{}", &seqs[i]);
    struct queue_consumer *c = consumer(f->q);

    natsd_stop(&o->d);
    int64_t deadline = support_now_ms() + 3000;
    while (queue_health(f->q, &err) == IOT_OK) {
        assert_true(support_now_ms() < deadline);
        support_sleep_ms(10);
    }
    assert_int_equal(queue_health(f->q, &err), IOT_ERR_UNAVAILABLE);

    int64_t t0 = support_now_ms();
    struct queue_publication p = {.kind = "status", .data = "{}", .len = 2};
    assert_int_equal(queue_publish(f->q, &p, 1, &err), IOT_ERR_UNAVAILABLE);
    int64_t took = support_now_ms() - t0;
    assert_true(took >= 700 && took < 2500);
    assert_non_null(strstr(err.msg, "800 ms"));
    struct queue_publication two[2] = {{.kind = "status", .data = "{}", .len = 2},
                                       {.kind = "status", .data = "{}", .len = 2}};
    assert_int_equal(queue_publish(f->q, two, 2, &err), IOT_ERR_UNAVAILABLE);

    t0 = support_now_ms();
    struct queue_msg m[8];
    size_t n = 99;
    assert_int_equal(queue_fetch(c, m, 8, 1000, &n, &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(n, 0);
    assert_true(support_now_ms() - t0 < 100); /* fails fast, does not wait for its timeout */

    natsd_start(&o->d); /* same port, same store */
    assert_int_equal(queue_wait_ready(f->q, 10000, &err), IOT_OK);
    n = fetch(c, m, 8, 2000);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(m[i].seq, seqs[i]);
        ack_release(&m[i]);
    }
    uint64_t after;
    publish_one(f->q, "status", "{}", &after);
    assert_true(after > seqs[2]);
    queue_consumer_free(c);
}

/* Fetches from `c`, expecting exactly the message `seq` (within 2 s), and acks it. */
static void fetch_only(struct queue_consumer *c, uint64_t seq)
{
    struct queue_msg m[2];
    assert_int_equal(fetch(c, m, 2, 2000), 1);
    assert_int_equal(m[0].seq, seq);
    ack_release(&m[0]);
}

/* A stream deleted under a running queue (or a server that lost its store) is re-created by
 * the next publish, within its timeout; existing consumer handles keep working. */
static void test_deleted_stream_recreated(void **state)
{
    struct fx *f = *state;
    struct queue_consumer *c = consumer(f->q);
    uint64_t seq;
    publish_one(f->q, "status", "{\"before\":1}", &seq);
    struct queue_msg m[2];
    assert_int_equal(fetch(c, m, 2, 2000), 1);
    uint64_t epoch = m[0].epoch; /* the stream's creation time */
    assert_true(epoch > 0);
    ack_release(&m[0]);
    support_sleep_ms(5); /* creation times are in ns, but the server's clock may be coarse */

    assert_int_equal(js_DeleteStream(g.js, f->stream, NULL, NULL), NATS_OK);
    publish_one(f->q, "status", "{\"after\":1}", &seq);
    assert_int_equal(seq, 1); /* a new stream */
    assert_int_equal(fetch(c, m, 2, 2000), 1);
    assert_int_equal(m[0].seq, seq);
    assert_true(m[0].epoch > epoch); /* its sequences count anew */
    ack_release(&m[0]);
    queue_consumer_free(c);
}

/* The options that the queue applies to existing streams and consumers too. */
struct limits {
    int64_t ack_wait_ms;
    int max_deliver;
    int max_ack_pending;
    int64_t lease_ttl_ms;
};

static void fx_open_with(struct fx *f, const struct limits *l)
{
    f->o.ack_wait_ms = l->ack_wait_ms;
    f->o.max_deliver = l->max_deliver;
    f->o.max_ack_pending = l->max_ack_pending;
    f->o.lease_ttl_ms = l->lease_ttl_ms;
    fx_open(f);
}

/* The KV bucket's stream keeps one entry per key, each for `max_age_ms` (0: for ever). */
static void assert_bucket(const char *bucket, int64_t max_age_ms)
{
    char kv[80];
    jsStreamInfo *si = NULL;
    snprintf(kv, sizeof kv, "KV_%s", bucket);
    assert_int_equal(js_GetStreamInfo(&si, g.js, kv, NULL, NULL), NATS_OK);
    assert_int_equal(si->Config->MaxAge, max_age_ms * NS_PER_MS);
    assert_int_equal(si->Config->MaxMsgsPerSubject, 1);
    jsStreamInfo_Destroy(si);
}

/* The server holds `l` in the consumer and the lease bucket. */
static void assert_limits(const struct fx *f, const struct limits *l)
{
    jsConsumerInfo *ci = NULL;
    assert_int_equal(js_GetConsumerInfo(&ci, g.js, f->stream, f->consumer, NULL, NULL), NATS_OK);
    assert_int_equal(ci->Config->AckPolicy, js_AckExplicit);
    assert_int_equal(ci->Config->DeliverPolicy, js_DeliverAll);
    assert_int_equal(ci->Config->AckWait, l->ack_wait_ms * NS_PER_MS);
    assert_int_equal(ci->Config->MaxDeliver, l->max_deliver + 5);
    assert_int_equal(ci->Config->MaxAckPending, l->max_ack_pending);
    jsConsumerInfo_Destroy(ci);
    assert_bucket(f->lease_bucket, l->lease_ttl_ms);
}

static void test_settings_created_and_updated(void **state)
{
    struct fx *f = *state;
    static const struct limits created = {12000, 9, 300, 4000}, updated = {45000, 7, 500, 6000};
    fx_open_with(f, &created);

    jsStreamInfo *si = NULL;
    char subj[80];
    assert_int_equal(js_GetStreamInfo(&si, g.js, f->stream, NULL, NULL), NATS_OK);
    snprintf(subj, sizeof subj, "%s.>", f->prefix);
    assert_int_equal(si->Config->SubjectsLen, 1);
    assert_string_equal(si->Config->Subjects[0], subj);
    assert_int_equal(si->Config->Retention, js_WorkQueuePolicy);
    assert_int_equal(si->Config->Storage, js_FileStorage);
    assert_int_equal(si->Config->Duplicates, (int64_t)120 * 1000 * NS_PER_MS);
    jsStreamInfo_Destroy(si);

    assert_limits(f, &created);

    assert_int_equal(js_GetStreamInfo(&si, g.js, "IOT_MANAGER_DLQ", NULL, NULL), NATS_OK);
    assert_string_equal(si->Config->Subjects[0], "iot-manager.dlq.>");
    assert_int_equal(si->Config->Retention, js_LimitsPolicy);
    assert_true(si->Config->AllowDirect);
    jsStreamInfo_Destroy(si);

    assert_bucket(f->state_bucket, 0);

    /* a message stored before the change must survive it */
    uint64_t seq;
    publish_one(f->q, "status", "{}", &seq);
    fx_close(f);

    fx_open_with(f, &updated);
    assert_limits(f, &updated);

    struct queue_consumer *c = consumer(f->q);
    fetch_only(c, seq);
    queue_consumer_free(c);
}

static void test_immutable_mismatch(void **state)
{
    struct fx *f = *state;
    struct iot_error err = {0};
    char subj[80];
    snprintf(subj, sizeof subj, "%s.>", f->prefix);
    const char *subjects[] = {subj};
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    jsStreamConfig_Init(&sc);
    sc.Name = f->stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Retention = js_WorkQueuePolicy;
    sc.Storage = js_MemoryStorage;
    assert_int_equal(js_AddStream(&si, g.js, &sc, NULL, NULL), NATS_OK);
    jsStreamInfo_Destroy(si);

    assert_int_equal(queue_open(&f->o, &f->q, &err), IOT_OK);
    assert_int_equal(queue_wait_ready(f->q, 10000, &err), IOT_ERR_CONFIG);
    assert_int_equal(queue_health(f->q, &err), IOT_ERR_CONFIG);
    assert_non_null(strstr(err.msg, f->stream));
    assert_non_null(strstr(err.msg, "storage"));
    assert_non_null(strstr(err.msg, "memory"));
    struct queue_publication p = {.kind = "status", .data = "{}", .len = 2};
    assert_int_equal(queue_publish(f->q, &p, 1, &err), IOT_ERR_CONFIG);
    /* the set-up stopped: it stays CONFIG and the stream was not touched */
    support_sleep_ms(300);
    assert_int_equal(queue_health(f->q, &err), IOT_ERR_CONFIG);
    assert_int_equal(js_GetStreamInfo(&si, g.js, f->stream, NULL, NULL), NATS_OK);
    assert_int_equal(si->Config->Storage, js_MemoryStorage);
    jsStreamInfo_Destroy(si);
}

struct dlq_seen {
    size_t n;
    struct queue_dead_letter_entry e[8];
    char kinds[8][32], reasons[8][128], data[8][64];
};

static enum iot_err collect_dlq(const struct queue_dead_letter_entry *e, void *ctx)
{
    struct dlq_seen *s = ctx;
    if (s->n >= 8)
        return IOT_ERR_INTERNAL;
    s->e[s->n] = *e;
    snprintf(s->kinds[s->n], sizeof s->kinds[0], "%s", e->kind);
    snprintf(s->reasons[s->n], sizeof s->reasons[0], "%s", e->reason);
    snprintf(s->data[s->n], sizeof s->data[0], "%.*s", (int)e->len, e->data);
    s->n++;
    return IOT_OK;
}

static void dlq_list(struct queue *q, struct dlq_seen *s)
{
    struct iot_error err = {0};
    memset(s, 0, sizeof *s);
    enum iot_err rc = queue_dlq_list(q, collect_dlq, s, &err);
    if (rc != IOT_OK)
        fail_msg("dlq list: %s", err.msg);
}

static void test_dead_letters(void **state)
{
    struct fx *f = *state;
    struct iot_error err = {0};
    /* the shared DLQ may hold leftovers of an earlier run against the same server */
    js_PurgeStream(g.js, "IOT_MANAGER_DLQ", NULL, NULL);

    uint64_t s1, s2;
    publish_one(f->q, "provision", "{\"d\":1}", &s1);
    publish_one(f->q, "status", "{\"d\":2}", &s2);
    struct queue_consumer *c = consumer(f->q);
    struct queue_msg m[2];
    assert_int_equal(fetch(c, m, 2, 2000), 2);
    int64_t before = wall_ms();
    assert_int_equal(queue_dead_letter(f->q, &m[0], "hub said 401\r\nx", &err), IOT_OK);
    assert_int_equal(queue_dead_letter(f->q, &m[0], "again", &err), IOT_OK); /* deduplicated */
    assert_int_equal(queue_dead_letter(f->q, &m[1], "invalid device id", &err), IOT_OK);
    ack_release(&m[0]);
    ack_release(&m[1]);

    struct dlq_seen s;
    dlq_list(f->q, &s);
    assert_int_equal(s.n, 2);
    assert_true(s.e[0].dlq_seq < s.e[1].dlq_seq);
    assert_int_equal(s.e[0].original_seq, s1);
    assert_int_equal(s.e[1].original_seq, s2);
    assert_string_equal(s.kinds[0], "provision");
    assert_string_equal(s.kinds[1], "status");
    assert_string_equal(s.reasons[0], "hub said 401  x");
    assert_string_equal(s.reasons[1], "invalid device id");
    assert_int_equal(s.e[0].deliveries, 1);
    assert_true(s.e[0].time_ms >= before - 1000 && s.e[0].time_ms <= wall_ms() + 1000);
    assert_string_equal(s.data[1], "{\"d\":2}");

    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st, &err), IOT_OK);
    assert_int_equal(st.dead_letters, 2);

    /* an unknown sequence: nothing is replayed */
    uint64_t bad[2] = {s.e[0].dlq_seq, s.e[1].dlq_seq + 1000};
    size_t replayed = 99;
    assert_int_equal(queue_dlq_replay(f->q, bad, 2, false, &replayed, &err), IOT_ERR_NOT_FOUND);
    assert_int_equal(replayed, 0);
    assert_non_null(strstr(err.msg, "not found"));
    struct queue_msg r[2];
    assert_int_equal(fetch(c, r, 2, 200), 0);
    dlq_list(f->q, &s);
    assert_int_equal(s.n, 2);

    /* replay one: a new, higher sequence; gone from the DLQ */
    uint64_t one = s.e[0].dlq_seq;
    assert_int_equal(queue_dlq_replay(f->q, &one, 1, false, &replayed, &err), IOT_OK);
    assert_int_equal(replayed, 1);
    assert_int_equal(fetch(c, r, 2, 2000), 1);
    assert_true(r[0].seq > s2);
    assert_string_equal(r[0].kind, "provision");
    assert_int_equal(r[0].len, 7);
    assert_memory_equal(r[0].data, "{\"d\":1}", 7);
    assert_int_equal(r[0].deliveries, 1);
    uint64_t first_replay = r[0].seq;
    ack_release(&r[0]);
    dlq_list(f->q, &s);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.e[0].original_seq, s2);

    /* replay all */
    assert_int_equal(queue_dlq_replay(f->q, NULL, 0, true, &replayed, &err), IOT_OK);
    assert_int_equal(replayed, 1);
    assert_int_equal(fetch(c, r, 2, 2000), 1);
    assert_true(r[0].seq > first_replay);
    assert_string_equal(r[0].kind, "status");
    ack_release(&r[0]);
    dlq_list(f->q, &s);
    assert_int_equal(s.n, 0);
    assert_int_equal(queue_stats(f->q, &st, &err), IOT_OK);
    assert_int_equal(st.dead_letters, 0);
    assert_int_equal(queue_dlq_replay(f->q, &one, 1, false, &replayed, &err), IOT_ERR_NOT_FOUND);
    queue_consumer_free(c);
}

struct cas_writer {
    struct queue *q;
    pthread_barrier_t *barrier;
    uint64_t expected;
    const char *value;
    enum iot_err rc;
    uint64_t rev;
};

static void *cas_thread(void *arg)
{
    struct cas_writer *w = arg;
    struct iot_error err = {0};
    pthread_barrier_wait(w->barrier);
    w->rc =
        queue_state_put(w->q, "d.0123abcd", w->value, strlen(w->value), w->expected, &w->rev, &err);
    return NULL;
}

static void test_requeue(void **state)
{
    struct fx *f = *state;
    struct iot_error err = {0};
    js_PurgeStream(g.js, "IOT_MANAGER_DLQ", NULL, NULL);
    uint64_t s1;
    publish_one(f->q, "provision", "{\"r\":1}", &s1);
    struct queue_consumer *c = consumer(f->q);
    struct queue_msg m[2];
    assert_int_equal(fetch(c, m, 2, 2000), 1);
    assert_int_equal(m[0].order_seq, s1); /* a first publication orders by its own sequence */
    assert_int_equal(m[0].requeues, 0);
    assert_int_equal(queue_nak(&m[0], 0), IOT_OK);
    queue_msg_release(&m[0]);
    assert_int_equal(fetch(c, m, 2, 2000), 1);
    assert_int_equal(m[0].deliveries, 2);
    assert_int_equal(queue_requeue(f->q, &m[0], &err), IOT_OK);
    assert_int_equal(queue_requeue(f->q, &m[0], &err), IOT_OK); /* deduplicated */
    ack_release(&m[0]);

    /* one copy: a new sequence, delivery 1, ordered where the event was first published */
    assert_int_equal(fetch(c, m, 2, 2000), 1);
    uint64_t s2 = m[0].seq;
    assert_true(s2 > s1);
    assert_int_equal(m[0].deliveries, 1);
    assert_int_equal(m[0].order_seq, s1);
    assert_int_equal(m[0].requeues, 1);
    assert_string_equal(m[0].kind, "provision");
    assert_int_equal(m[0].len, 7);
    assert_memory_equal(m[0].data, "{\"r\":1}", 7);
    /* requeued again, it still stands at s1 */
    assert_int_equal(queue_requeue(f->q, &m[0], &err), IOT_OK);
    ack_release(&m[0]);
    assert_int_equal(fetch(c, m, 2, 2000), 1);
    assert_true(m[0].seq > s2);
    assert_int_equal(m[0].order_seq, s1);
    assert_int_equal(m[0].requeues, 2);
    /* a dead letter of a copy names the event's first sequence */
    assert_int_equal(queue_dead_letter(f->q, &m[0], "gave up", &err), IOT_OK);
    ack_release(&m[0]);
    assert_int_equal(fetch(c, m, 2, 300), 0);
    struct dlq_seen seen;
    dlq_list(f->q, &seen);
    assert_int_equal(seen.n, 1);
    assert_int_equal(seen.e[0].original_seq, s1);

    /* an ordering header can only move an event back, never after itself */
    natsMsg *forged = NULL;
    char subject[256];
    snprintf(subject, sizeof subject, "%s.status", f->prefix);
    assert_int_equal(natsMsg_Create(&forged, subject, NULL, "{}", 2), NATS_OK);
    assert_int_equal(natsMsgHeader_Set(forged, "Iot-Manager-Order-Seq", "999999999"), NATS_OK);
    jsPubAck *pa = NULL;
    assert_int_equal(js_PublishMsg(&pa, g.js, forged, NULL, NULL), NATS_OK);
    uint64_t s3 = pa->Sequence;
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(forged);
    assert_int_equal(fetch(c, m, 2, 2000), 1);
    assert_int_equal(m[0].seq, s3);
    assert_int_equal(m[0].order_seq, s3);
    ack_release(&m[0]);
    queue_consumer_free(c);
}

static void test_state_cas(void **state)
{
    struct fx *f = *state;
    struct iot_error err = {0};
    const char *key = "d.0123abcd";
    char *v = (char *)1;
    size_t len = 1;
    uint64_t rev = 1, r1, r2;
    assert_int_equal(queue_state_get(f->q, key, &v, &len, &rev, &err), IOT_ERR_NOT_FOUND);
    assert_null(v);
    assert_int_equal(rev, 0);
    assert_int_equal(queue_state_get(f->q, "bad key", &v, &len, &rev, &err), IOT_ERR_INVALID);

    assert_int_equal(queue_state_put(f->q, key, "{\"v\":1}", 7, 0, &r1, &err), IOT_OK);
    assert_true(r1 > 0);
    assert_int_equal(queue_state_put(f->q, key, "{\"v\":9}", 7, 0, &r2, &err), IOT_ERR_CONFLICT);
    assert_int_equal(queue_state_get(f->q, key, &v, &len, &rev, &err), IOT_OK);
    assert_int_equal(rev, r1);
    assert_int_equal(len, 7);
    assert_string_equal(v, "{\"v\":1}");
    free(v);

    /* two writers, same expected revision: exactly one wins */
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    struct cas_writer w[2] = {{f->q, &barrier, r1, "{\"v\":\"A\"}", IOT_OK, 0},
                              {f->q, &barrier, r1, "{\"v\":\"B\"}", IOT_OK, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, cas_thread, &w[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&barrier);
    assert_true((w[0].rc == IOT_OK) != (w[1].rc == IOT_OK));
    struct cas_writer *win = w[0].rc == IOT_OK ? &w[0] : &w[1];
    struct cas_writer *lose = w[0].rc == IOT_OK ? &w[1] : &w[0];
    assert_int_equal(lose->rc, IOT_ERR_CONFLICT);
    assert_int_equal(queue_state_get(f->q, key, &v, &len, &rev, &err), IOT_OK);
    assert_int_equal(rev, win->rev);
    assert_string_equal(v, win->value);
    free(v);

    /* a stale revision is refused, the current one accepted */
    assert_int_equal(queue_state_put(f->q, key, "{}", 2, r1, &r2, &err), IOT_ERR_CONFLICT);
    assert_int_equal(queue_state_put(f->q, key, "{}", 2, win->rev, &r2, &err), IOT_OK);
    assert_true(r2 > win->rev);
}

static void test_leases(void **state)
{
    struct fx *f = *state;
    struct iot_error err = {0};
    f->o.lease_ttl_ms = 1000;
    fx_open(f);
    uint64_t ra, rb, old;

    assert_int_equal(queue_lease_acquire(f->q, "d.a", "worker-a", &ra, &err), IOT_OK);
    assert_int_equal(queue_lease_acquire(f->q, "d.a", "worker-b", &rb, &err), IOT_ERR_CONFLICT);
    assert_int_equal(rb, 0);
    old = ra;
    assert_int_equal(queue_lease_renew(f->q, "d.a", "worker-a", &ra, &err), IOT_OK);
    assert_true(ra > old);
    uint64_t stale = old;
    assert_int_equal(queue_lease_renew(f->q, "d.a", "worker-a", &stale, &err), IOT_ERR_CONFLICT);
    /* releasing with a stale revision does not remove the current holder's lease */
    assert_int_equal(queue_lease_release(f->q, "d.a", old, &err), IOT_OK);
    assert_int_equal(queue_lease_acquire(f->q, "d.a", "worker-b", &rb, &err), IOT_ERR_CONFLICT);
    assert_int_equal(queue_lease_release(f->q, "d.a", ra, &err), IOT_OK);
    assert_int_equal(queue_lease_acquire(f->q, "d.a", "worker-b", &rb, &err), IOT_OK);
    /* worker-a's renew after losing it */
    assert_int_equal(queue_lease_renew(f->q, "d.a", "worker-a", &ra, &err), IOT_ERR_CONFLICT);
    assert_int_equal(queue_lease_release(f->q, "d.a", rb, &err), IOT_OK);
    assert_int_equal(queue_lease_release(f->q, "d.a", rb, &err), IOT_OK); /* already gone */

    /* d.x expires by itself; d.y is kept by renewing */
    uint64_t rx, ry, r;
    assert_int_equal(queue_lease_acquire(f->q, "d.x", "dead", &rx, &err), IOT_OK);
    assert_int_equal(queue_lease_acquire(f->q, "d.y", "alive", &ry, &err), IOT_OK);
    int64_t t0 = support_now_ms();
    for (int i = 0; i < 4; i++) {
        support_sleep_ms(400);
        assert_int_equal(queue_lease_renew(f->q, "d.y", "alive", &ry, &err), IOT_OK);
    }
    assert_true(support_now_ms() - t0 >= 1500);
    assert_int_equal(queue_lease_acquire(f->q, "d.y", "other", &r, &err), IOT_ERR_CONFLICT);
    int64_t deadline = support_now_ms() + 3000;
    while (queue_lease_acquire(f->q, "d.x", "other", &r, &err) != IOT_OK) {
        assert_int_equal(err.code, IOT_ERR_CONFLICT);
        assert_true(support_now_ms() < deadline);
        support_sleep_ms(100);
    }
    assert_int_equal(queue_lease_renew(f->q, "d.x", "dead", &rx, &err), IOT_ERR_CONFLICT);
}

struct worker {
    struct queue *q;
    pthread_mutex_t *mu;
    uint64_t *seqs;
    size_t *count;
    size_t total;
    int errors;
};

static void *worker_thread(void *arg)
{
    struct worker *w = arg;
    struct queue_consumer *c = NULL;
    struct iot_error err = {0};
    if (queue_consumer_new(w->q, &c, &err) != IOT_OK) {
        w->errors++;
        return NULL;
    }
    int idle = 0;
    while (idle < 3) {
        struct queue_msg m[5];
        size_t n = 0;
        if (queue_fetch(c, m, 5, 300, &n, &err) != IOT_OK) {
            w->errors++;
            break;
        }
        if (n == 0) {
            pthread_mutex_lock(w->mu);
            bool done = *w->count >= w->total;
            pthread_mutex_unlock(w->mu);
            idle += done ? 3 : 1;
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            pthread_mutex_lock(w->mu);
            if (*w->count < w->total + 10)
                w->seqs[(*w->count)++] = m[i].seq;
            pthread_mutex_unlock(w->mu);
            if (queue_ack(&m[i]) != IOT_OK)
                w->errors++;
            queue_msg_release(&m[i]);
        }
    }
    queue_consumer_free(c);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_concurrent_consumers(void **state)
{
    struct fx *f = *state;
    struct iot_error err = {0};
    enum { N = 200, THREADS = 4 };
    static struct queue_publication p[N];
    for (int i = 0; i < N; i++)
        p[i] = (struct queue_publication){.kind = "status", .data = "{}", .len = 2};
    assert_int_equal(queue_publish(f->q, p, N / 2, &err), IOT_OK);
    assert_int_equal(queue_publish(f->q, p + N / 2, N / 2, &err), IOT_OK);

    static uint64_t seqs[N + 10];
    size_t count = 0;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    struct worker w[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){f->q, &mu, seqs, &count, N, 0};
        pthread_create(&t[i], NULL, worker_thread, &w[i]);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(w[i].errors, 0);
    assert_int_equal(count, N);
    qsort(seqs, count, sizeof seqs[0], cmp_u64);
    for (size_t i = 1; i < count; i++)
        assert_true(seqs[i] != seqs[i - 1]);
    assert_int_equal(seqs[0], p[0].seq);
    assert_int_equal(seqs[N - 1], p[N - 1].seq);
}

static void test_stats(void **state)
{
    struct fx *f = *state;
    struct iot_error err = {0};
    for (int i = 0; i < 4; i++)
        publish_one(f->q, "status", "{}", NULL);
    struct queue_stats st;
    assert_int_equal(queue_stats(f->q, &st, &err), IOT_OK);
    assert_int_equal(st.pending, 4);
    assert_int_equal(st.ack_pending, 0);

    struct queue_consumer *c = consumer(f->q);
    struct queue_msg m[4];
    assert_int_equal(fetch(c, m, 2, 2000), 2);
    ack_release(&m[0]);
    assert_int_equal(queue_nak(&m[1], 0), IOT_OK);
    queue_msg_release(&m[1]);
    /* the two never delivered and the naked one, in whatever order the server picks */
    size_t got = 0, redelivered = 0;
    while (got < 3) {
        size_t n = fetch(c, m + got, 3 - got, 2000);
        assert_true(n > 0);
        got += n;
    }
    for (size_t i = 0; i < got; i++)
        redelivered += m[i].deliveries == 2;
    assert_int_equal(redelivered, 1);
    /* acks are asynchronous: the server's counters catch up within moments */
    int64_t deadline = support_now_ms() + 2000;
    for (;;) {
        assert_int_equal(queue_stats(f->q, &st, &err), IOT_OK);
        if (st.pending == 0 && st.ack_pending == 3 && st.redelivered == 1)
            break;
        assert_true(support_now_ms() < deadline);
        support_sleep_ms(20);
    }
    for (size_t i = 0; i < got; i++)
        ack_release(&m[i]);
    deadline = support_now_ms() + 2000;
    for (;;) {
        assert_int_equal(queue_stats(f->q, &st, &err), IOT_OK);
        if (st.pending == 0 && st.ack_pending == 0)
            break;
        assert_true(support_now_ms() < deadline);
        support_sleep_ms(20);
    }
    queue_consumer_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_options),
        cmocka_unit_test_setup_teardown(test_open_before_server, setup_own, teardown_own),
        cmocka_unit_test_setup_teardown(test_close_while_connecting, setup_own, teardown_own),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup_fx_open, teardown_fx),
        cmocka_unit_test_setup_teardown(test_nak_with_delay, setup_fx_open, teardown_fx),
        cmocka_unit_test_setup_teardown(test_term_stops_redelivery, setup_fx, teardown_fx),
        cmocka_unit_test_setup_teardown(test_max_deliver, setup_fx, teardown_fx),
        cmocka_unit_test_setup_teardown(test_requeue, setup_fx_open, teardown_fx),
        cmocka_unit_test_setup_teardown(test_in_progress_extends, setup_fx, teardown_fx),
        cmocka_unit_test_setup_teardown(test_batch_publish, setup_fx_open, teardown_fx),
        cmocka_unit_test_setup_teardown(test_restart, setup_own, teardown_own),
        cmocka_unit_test_setup_teardown(test_deleted_stream_recreated, setup_fx_open, teardown_fx),
        cmocka_unit_test_setup_teardown(test_settings_created_and_updated, setup_fx, teardown_fx),
        cmocka_unit_test_setup_teardown(test_immutable_mismatch, setup_fx, teardown_fx),
        cmocka_unit_test_setup_teardown(test_dead_letters, setup_fx_open, teardown_fx),
        cmocka_unit_test_setup_teardown(test_state_cas, setup_fx_open, teardown_fx),
        cmocka_unit_test_setup_teardown(test_leases, setup_fx, teardown_fx),
        cmocka_unit_test_setup_teardown(test_concurrent_consumers, setup_fx_open, teardown_fx),
        cmocka_unit_test_setup_teardown(test_stats, setup_fx_open, teardown_fx),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
