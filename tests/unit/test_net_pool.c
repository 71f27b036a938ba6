/* The shared outbound HTTP plumbing (src/net): the handle pool's bound under contention, handle
 * and connection reuse, the transport policy as a real peer sees it (no redirects, protocols,
 * timeouts, user agent, environment proxies ignored), and the request/answer helpers.
 *
 * The peer is a small HTTP/1.1 server on a loopback port inside this test: it counts the
 * connections it accepts and the requests it reads, keeps the last request, and answers with a
 * canned response chosen per test (or never, for the timeout test).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "iot-manager/net.h"

/* ---- a loopback HTTP peer ---- */

enum answer { ANSWER_OK, ANSWER_REDIRECT, ANSWER_BIG, ANSWER_NEVER };

#define MAX_CONNS 32

struct server {
    int fd;
    unsigned port;
    enum answer answer;
    pthread_t acceptor;
    atomic_bool stop;
    atomic_int accepted;
    atomic_int requests;
    pthread_mutex_t mu; /* guards last, conns, threads, n_conns */
    char last[8192];    /* the last request: head and body */
    int conns[MAX_CONNS];
    pthread_t threads[MAX_CONNS];
    size_t n_conns;
};

struct conn {
    struct server *s;
    int fd;
};

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static bool answer(int fd, enum answer a)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             "Content-Length: 2\r\n\r\nok";
    static const char redirect[] = "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n"
                                   "Content-Length: 0\r\n\r\n";
    switch (a) {
    case ANSWER_OK:
        return send_all(fd, ok, sizeof ok - 1);
    case ANSWER_REDIRECT:
        return send_all(fd, redirect, sizeof redirect - 1);
    case ANSWER_BIG: {
        static char big[10000];
        memset(big, 'x', sizeof big);
        char head[128];
        int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n",
                         sizeof big);
        return send_all(fd, head, (size_t)n) && send_all(fd, big, sizeof big);
    }
    case ANSWER_NEVER:
        return true;
    }
    return false;
}

/* End of the request head in buf[0..have), or NULL while incomplete. */
static char *head_end(char *buf, size_t have)
{
    for (size_t i = 0; i + 4 <= have; i++)
        if (memcmp(buf + i, "\r\n\r\n", 4) == 0)
            return buf + i;
    return NULL;
}

/* Serves one connection: requests in a row (keep-alive) until the client closes it. */
static void *serve(void *arg)
{
    struct conn *c = arg;
    struct server *s = c->s;
    char buf[8192];
    size_t have = 0;
    for (;;) {
        char *end = NULL;
        while (!(end = head_end(buf, have))) {
            if (have == sizeof buf)
                goto out;
            ssize_t r = recv(c->fd, buf + have, sizeof buf - have, 0);
            if (r <= 0)
                goto out;
            have += (size_t)r;
        }
        size_t head = (size_t)(end - buf) + 4;
        size_t body = 0;
        for (char *p = buf; p < end; p++) {
            if ((p == buf || p[-1] == '\n') && strncasecmp(p, "Content-Length:", 15) == 0)
                body = strtoul(p + 15, NULL, 10);
        }
        if (head + body > sizeof buf)
            goto out;
        while (have < head + body) {
            ssize_t r = recv(c->fd, buf + have, sizeof buf - have, 0);
            if (r <= 0)
                goto out;
            have += (size_t)r;
        }
        pthread_mutex_lock(&s->mu);
        size_t n = head + body < sizeof s->last ? head + body : sizeof s->last - 1;
        memcpy(s->last, buf, n);
        s->last[n] = '\0';
        pthread_mutex_unlock(&s->mu);
        atomic_fetch_add(&s->requests, 1);
        if (!answer(c->fd, s->answer))
            goto out;
        memmove(buf, buf + head + body, have - head - body);
        have -= head + body;
    }
out:
    free(c);
    return NULL;
}

static void *acceptor(void *arg)
{
    struct server *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        int fd = accept(s->fd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&s->accepted, 1);
        struct conn *c = malloc(sizeof *c);
        pthread_mutex_lock(&s->mu);
        if (!c || s->n_conns == MAX_CONNS) {
            pthread_mutex_unlock(&s->mu);
            free(c);
            close(fd);
            continue;
        }
        c->s = s;
        c->fd = fd;
        if (pthread_create(&s->threads[s->n_conns], NULL, serve, c) != 0) {
            free(c);
            close(fd);
        } else {
            s->conns[s->n_conns++] = fd;
        }
        pthread_mutex_unlock(&s->mu);
    }
    return NULL;
}

static struct server *server_start(enum answer a)
{
    struct server *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->answer = a;
    pthread_mutex_init(&s->mu, NULL);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(s->fd, 16), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sa, &len), 0);
    s->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&s->acceptor, NULL, acceptor, s), 0);
    return s;
}

static void server_stop(struct server *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->acceptor, NULL);
    for (size_t i = 0; i < s->n_conns; i++)
        shutdown(s->conns[i], SHUT_RDWR); /* wakes a thread blocked in recv */
    for (size_t i = 0; i < s->n_conns; i++) {
        pthread_join(s->threads[i], NULL);
        close(s->conns[i]);
    }
    close(s->fd);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void server_last(struct server *s, char *out, size_t cap)
{
    pthread_mutex_lock(&s->mu);
    snprintf(out, cap, "%s", s->last);
    pthread_mutex_unlock(&s->mu);
}

/* ---- helpers ---- */

static struct net_pool *pool_new(unsigned max, long total_ms, bool plain, const char *agent)
{
    struct net_pool_options o = {.what = "test client",
                                 .max_handles = max,
                                 .connect_timeout_ms = 2000,
                                 .total_timeout_ms = total_ms,
                                 .allow_plain_http = plain,
                                 .user_agent = agent};
    struct net_pool *p = NULL;
    struct iot_error err = {0};
    if (net_pool_new(&o, &p, &err) != IOT_OK)
        fail_msg("net_pool_new: %s", err.msg);
    return p;
}

/* One GET of `path` through a pool handle with the pool's policy; the answer's body is dropped.
 * Returns curl's result; *status gets the HTTP status. */
static CURLcode get(struct net_pool *p, const struct server *s, const char *path, long *status)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", s->port, path);
    struct net_body body = {.max = 1 << 20};
    CURL *e = net_pool_checkout(p, 5000);
    assert_non_null(e);
    CURLcode cc = net_pool_prepare(p, e);
    assert_int_equal(cc, CURLE_OK);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, net_body_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &body);
    cc = curl_easy_perform(e);
    *status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
    net_pool_checkin(p, e);
    net_body_free(&body);
    return cc;
}

/* ---- options ---- */

static void test_options_checked(void **state)
{
    (void)state;
    struct net_pool_options o = {.what = "test client",
                                 .max_handles = 0,
                                 .connect_timeout_ms = 1000,
                                 .total_timeout_ms = 1000};
    struct net_pool *p = NULL;
    struct iot_error err = {0};
    assert_int_equal(net_pool_new(&o, &p, &err), IOT_ERR_CONFIG);
    assert_null(p);
    assert_non_null(strstr(err.msg, "test client"));
    o.max_handles = NET_POOL_MAX_HANDLES + 1;
    assert_int_equal(net_pool_new(&o, &p, &err), IOT_ERR_CONFIG);
    o.max_handles = 1;
    o.total_timeout_ms = 0;
    assert_int_equal(net_pool_new(&o, &p, &err), IOT_ERR_CONFIG);
    o.total_timeout_ms = 1000;
    o.connect_timeout_ms = -1;
    assert_int_equal(net_pool_new(&o, &p, &err), IOT_ERR_CONFIG);
    assert_null(p);
    o.connect_timeout_ms = 1000;
    assert_int_equal(net_pool_new(&o, &p, &err), IOT_OK);
    assert_non_null(p);
    assert_int_equal(net_pool_handles(p), 0); /* handles are made on demand */
    net_pool_free(p);
    net_pool_free(NULL);
}

/* ---- the bound ---- */

struct late_checkin {
    struct net_pool *p;
    CURL *e;
    long after_ms;
};

static void *checkin_later(void *arg)
{
    struct late_checkin *l = arg;
    sleep_ms(l->after_ms);
    net_pool_checkin(l->p, l->e);
    return NULL;
}

static void test_checkout_waits_bounded(void **state)
{
    (void)state;
    struct net_pool *p = pool_new(2, 1000, true, NULL);
    CURL *a = net_pool_checkout(p, 0);
    CURL *b = net_pool_checkout(p, 0);
    assert_non_null(a);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    assert_int_equal(net_pool_handles(p), 2);

    /* Exhausted: no third handle is made; the wait ends at its bound. */
    int64_t t0 = net_now_ms();
    assert_null(net_pool_checkout(p, 0));
    assert_null(net_pool_checkout(p, 200));
    int64_t waited = net_now_ms() - t0;
    assert_true(waited >= 195);
    assert_true(waited < 2000);
    assert_int_equal(net_pool_handles(p), 2);

    /* A handle given back while someone waits goes to the waiter. */
    struct late_checkin l = {.p = p, .e = b, .after_ms = 100};
    pthread_t t;
    t0 = net_now_ms(); /* before the thread starts its 100 ms: a lower bound on the wait */
    assert_int_equal(pthread_create(&t, NULL, checkin_later, &l), 0);
    CURL *c = net_pool_checkout(p, 5000);
    waited = net_now_ms() - t0;
    pthread_join(t, NULL);
    assert_ptr_equal(c, b);
    assert_true(waited >= 95);
    assert_true(waited < 4000);
    net_pool_checkin(p, a);
    net_pool_checkin(p, c);
    assert_int_equal(net_pool_handles(p), 2);
    net_pool_free(p);
}

#define WORKERS    8
#define ITERATIONS 200
#define POOL_MAX   3

struct contention {
    struct net_pool *p;
    atomic_int in_use;
    atomic_int most_in_use;
    atomic_int failures;
    pthread_mutex_t mu;
    CURL *seen[WORKERS * ITERATIONS];
    size_t n_seen;
};

static void *hammer(void *arg)
{
    struct contention *c = arg;
    for (int i = 0; i < ITERATIONS; i++) {
        CURL *e = net_pool_checkout(c->p, 10000);
        if (!e) {
            atomic_fetch_add(&c->failures, 1);
            continue;
        }
        int now = atomic_fetch_add(&c->in_use, 1) + 1;
        int most = atomic_load(&c->most_in_use);
        while (now > most && !atomic_compare_exchange_weak(&c->most_in_use, &most, now))
            ;
        pthread_mutex_lock(&c->mu);
        bool known = false;
        for (size_t k = 0; k < c->n_seen && !known; k++)
            known = c->seen[k] == e;
        if (!known)
            c->seen[c->n_seen++] = e;
        pthread_mutex_unlock(&c->mu);
        struct timespec ts = {.tv_nsec = 100000};
        nanosleep(&ts, NULL);
        atomic_fetch_sub(&c->in_use, 1);
        net_pool_checkin(c->p, e);
    }
    return NULL;
}

static void test_checkout_under_contention(void **state)
{
    (void)state;
    struct contention c = {.p = pool_new(POOL_MAX, 1000, true, NULL)};
    pthread_mutex_init(&c.mu, NULL);
    pthread_t t[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &c), 0);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(t[i], NULL);
    /* Nobody gave up, never more than the bound out at once, and only that many handles made. */
    assert_int_equal(atomic_load(&c.failures), 0);
    assert_true(atomic_load(&c.most_in_use) <= POOL_MAX);
    assert_true(atomic_load(&c.most_in_use) >= 2);
    assert_true(c.n_seen <= POOL_MAX);
    assert_int_equal(net_pool_handles(c.p), c.n_seen);
    pthread_mutex_destroy(&c.mu);
    net_pool_free(c.p);
}

/* ---- reuse ---- */

static void test_reuse(void **state)
{
    (void)state;
    struct server *s = server_start(ANSWER_OK);
    struct net_pool *p = pool_new(4, 5000, true, NULL);
    /* LIFO: the handle just given back is the next one out. */
    CURL *a = net_pool_checkout(p, 0);
    net_pool_checkin(p, a);
    CURL *b = net_pool_checkout(p, 0);
    assert_ptr_equal(a, b);
    net_pool_checkin(p, b);

    /* Sequential exchanges travel on one connection. */
    long status = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(get(p, s, "/ping", &status), CURLE_OK);
        assert_int_equal(status, 200);
    }
    assert_int_equal(atomic_load(&s->requests), 3);
    assert_int_equal(atomic_load(&s->accepted), 1);
    assert_int_equal(net_pool_handles(p), 1);

    /* Checkin dropped the previous caller's options: without a URL the handle does nothing. */
    CURL *e = net_pool_checkout(p, 0);
    assert_int_equal(curl_easy_perform(e), CURLE_URL_MALFORMAT);
    net_pool_checkin(p, e);
    assert_int_equal(atomic_load(&s->requests), 3);
    net_pool_free(p);
    server_stop(s);
}

/* ---- the policy, as the peer sees it ---- */

static void test_policy_no_redirects(void **state)
{
    (void)state;
    struct server *s = server_start(ANSWER_REDIRECT);
    struct net_pool *p = pool_new(1, 5000, true, NULL);
    long status = 0;
    assert_int_equal(get(p, s, "/moved", &status), CURLE_OK);
    assert_int_equal(status, 302); /* handed to the caller, not followed */
    assert_int_equal(atomic_load(&s->requests), 1);
    char last[8192];
    server_last(s, last, sizeof last);
    assert_true(strncmp(last, "GET /moved HTTP/1.1\r\n", 21) == 0);
    net_pool_free(p);
    server_stop(s);
}

static void test_policy_protocols(void **state)
{
    (void)state;
    struct server *s = server_start(ANSWER_OK);
    struct net_pool *p = pool_new(1, 5000, false, NULL);
    long status = 0;
    /* https only: an http:// URL is refused before any connection is made. */
    assert_int_equal(get(p, s, "/", &status), CURLE_UNSUPPORTED_PROTOCOL);
    assert_int_equal(atomic_load(&s->accepted), 0);
    net_pool_free(p);
    p = pool_new(1, 5000, true, NULL);
    assert_int_equal(get(p, s, "/", &status), CURLE_OK);
    assert_int_equal(status, 200);
    net_pool_free(p);
    server_stop(s);
}

static void test_policy_timeout(void **state)
{
    (void)state;
    struct server *s = server_start(ANSWER_NEVER);
    struct net_pool *p = pool_new(1, 300, true, NULL);
    long status = 0;
    int64_t t0 = net_now_ms();
    assert_int_equal(get(p, s, "/slow", &status), CURLE_OPERATION_TIMEDOUT);
    int64_t took = net_now_ms() - t0;
    assert_true(took >= 250);
    assert_true(took < 3000);
    assert_int_equal(atomic_load(&s->requests), 1);
    net_pool_free(p);
    server_stop(s);
}

static void test_policy_user_agent(void **state)
{
    (void)state;
    struct server *s = server_start(ANSWER_OK);
    char last[8192];
    long status = 0;
    struct net_pool *p = pool_new(1, 5000, true, NULL);
    assert_int_equal(get(p, s, "/", &status), CURLE_OK);
    server_last(s, last, sizeof last);
    assert_non_null(strstr(last, "\r\nUser-Agent: iot-manager/" IOTM_VERSION "\r\n"));
    net_pool_free(p);
    p = pool_new(1, 5000, true, "probe/1.0");
    assert_int_equal(get(p, s, "/", &status), CURLE_OK);
    server_last(s, last, sizeof last);
    assert_non_null(strstr(last, "\r\nUser-Agent: probe/1.0\r\n"));
    net_pool_free(p);
    server_stop(s);
}

static void test_policy_ignores_proxy_env(void **state)
{
    (void)state;
    struct server *s = server_start(ANSWER_OK);
    /* Nothing listens on the discard port: a request sent through this proxy would fail. */
    setenv("http_proxy", "http://127.0.0.1:9", 1);
    setenv("HTTP_PROXY", "http://127.0.0.1:9", 1);
    setenv("all_proxy", "http://127.0.0.1:9", 1);
    struct net_pool *p = pool_new(1, 5000, true, NULL);
    long status = 0;
    CURLcode cc = get(p, s, "/direct", &status);
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("all_proxy");
    assert_int_equal(cc, CURLE_OK);
    assert_int_equal(status, 200);
    assert_int_equal(atomic_load(&s->requests), 1);
    net_pool_free(p);
    server_stop(s);
}

/* ---- requests ---- */

static void exchange(struct net_pool *p, const struct server *s, const char *method,
                     const char *body, struct curl_slist *headers)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/thing", s->port);
    struct net_body answer = {.max = 1 << 20};
    CURL *e = net_pool_checkout(p, 5000);
    assert_non_null(e);
    assert_int_equal(net_pool_prepare(p, e), CURLE_OK);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, net_body_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &answer);
    assert_int_equal(net_set_method(e, method, body, body ? strlen(body) : 0), CURLE_OK);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    net_pool_checkin(p, e);
    char *data = NULL;
    size_t len = 0;
    assert_true(net_body_take(&answer, &data, &len));
    assert_int_equal(len, 2);
    assert_string_equal(data, "ok");
    assert_null(answer.data);
    free(data);
}

static void test_methods_and_headers(void **state)
{
    (void)state;
    struct server *s = server_start(ANSWER_OK);
    struct net_pool *p = pool_new(1, 5000, true, NULL);
    char last[8192];

    bool ok = true;
    struct curl_slist *h = NULL;
    h = net_header_add(h, &ok, "X-Probe", "yes");
    h = net_header_add(h, &ok, "Expect", NULL);
    h = net_header_add(h, &ok, "Content-Type", "application/json");
    assert_true(ok);
    exchange(p, s, "PATCH", "{\"a\":1}", h);
    server_last(s, last, sizeof last);
    assert_true(strncmp(last, "PATCH /thing HTTP/1.1\r\n", 23) == 0);
    assert_non_null(strstr(last, "\r\nX-Probe: yes\r\n"));
    assert_non_null(strstr(last, "\r\nContent-Length: 7\r\n"));
    assert_null(strstr(last, "Expect:"));
    assert_non_null(strstr(last, "\r\n\r\n{\"a\":1}"));

    exchange(p, s, "GET", NULL, NULL);
    server_last(s, last, sizeof last);
    assert_true(strncmp(last, "GET /thing HTTP/1.1\r\n", 21) == 0);
    assert_null(strstr(last, "Content-Length"));

    exchange(p, s, "DELETE", NULL, NULL);
    server_last(s, last, sizeof last);
    assert_true(strncmp(last, "DELETE /thing HTTP/1.1\r\n", 24) == 0);
    assert_int_equal(atomic_load(&s->requests), 3);

    /* A line that does not fit stops the list from growing and says so. */
    static char huge[NET_HEADER_LINE_MAX];
    memset(huge, 'v', sizeof huge - 1);
    struct curl_slist *before = h;
    h = net_header_add(h, &ok, "X-Huge", huge);
    assert_false(ok);
    assert_ptr_equal(h, before);
    h = net_header_add(h, &ok, "X-After", "1");
    assert_ptr_equal(h, before);
    net_headers_free(h);
    net_headers_free(NULL);
    net_pool_free(p);
    server_stop(s);
}

/* ---- answers ---- */

static void test_body_bounded(void **state)
{
    (void)state;
    struct net_body b = {.max = 10};
    char abc[] = "abcdef";
    assert_int_equal(net_body_write(abc, 1, 6, &b), 6);
    assert_string_equal(b.data, "abcdef");
    assert_int_equal(net_body_write(abc, 1, 4, &b), 4); /* exactly max */
    assert_int_equal(b.len, 10);
    assert_false(b.too_large);
    assert_int_equal(net_body_write(abc, 1, 1, &b), 0);
    assert_true(b.too_large);
    assert_int_equal(b.len, 10);
    net_body_free(&b);
    assert_null(b.data);
    assert_int_equal(b.max, 10);

    /* Growth by copying (wipe) keeps every byte in order. */
    struct net_body w = {.max = 1 << 20, .wipe = true};
    char chunk[1000];
    for (int i = 0; i < 9; i++) {
        memset(chunk, 'a' + i, sizeof chunk);
        assert_int_equal(net_body_write(chunk, 10, 100, &w), sizeof chunk);
    }
    assert_int_equal(w.len, 9000);
    assert_true(w.cap >= 9001);
    for (int i = 0; i < 9; i++)
        assert_int_equal(w.data[i * 1000], 'a' + i);
    assert_int_equal(w.data[9000], '\0');
    net_body_free(&w);

    /* Nothing arrived: the caller still gets a string. */
    struct net_body e = {.max = 10};
    char *data = NULL;
    size_t len = 7;
    assert_true(net_body_take(&e, &data, &len));
    assert_string_equal(data, "");
    assert_int_equal(len, 0);
    free(data);
}

static void test_body_limit_stops_transfer(void **state)
{
    (void)state;
    struct server *s = server_start(ANSWER_BIG);
    struct net_pool *p = pool_new(1, 5000, true, NULL);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/big", s->port);
    struct net_body b = {.max = 4096};
    CURL *e = net_pool_checkout(p, 5000);
    assert_int_equal(net_pool_prepare(p, e), CURLE_OK);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, net_body_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    assert_int_equal(curl_easy_perform(e), CURLE_WRITE_ERROR);
    net_pool_checkin(p, e);
    assert_true(b.too_large);
    assert_true(b.len <= 4096);
    net_body_free(&b);
    net_pool_free(p);
    server_stop(s);
}

/* ---- escaping ---- */

static void escaped(const char *in, bool query, const char *want)
{
    char out[256];
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++)
        o += net_escape_byte(*p, query, out + o);
    out[o] = '\0';
    assert_string_equal(out, want);
}

static void test_escape(void **state)
{
    (void)state;
    escaped("AZaz09-._~", false, "AZaz09-._~");
    escaped("a b/c?d#e%f+g:h'", false, "a%20b%2Fc%3Fd%23e%25f%2Bg%3Ah%27");
    escaped("a b+c&d=e", true, "a+b%2Bc%26d%3De");
    escaped("\xc3\xa9\x01\xff", false, "%C3%A9%01%FF");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_checked),
        cmocka_unit_test(test_checkout_waits_bounded),
        cmocka_unit_test(test_checkout_under_contention),
        cmocka_unit_test(test_reuse),
        cmocka_unit_test(test_policy_no_redirects),
        cmocka_unit_test(test_policy_protocols),
        cmocka_unit_test(test_policy_timeout),
        cmocka_unit_test(test_policy_user_agent),
        cmocka_unit_test(test_policy_ignores_proxy_env),
        cmocka_unit_test(test_methods_and_headers),
        cmocka_unit_test(test_body_bounded),
        cmocka_unit_test(test_body_limit_stops_transfer),
        cmocka_unit_test(test_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
