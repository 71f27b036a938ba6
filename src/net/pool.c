/* The bounded pool of curl easy handles (model and policy: include/iot-manager/net.h). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iot-manager/net.h"

struct net_pool {
    long connect_timeout_ms;
    long total_timeout_ms;
    const char *protocols;
    char *ca_file;
    char *user_agent;

    CURLSH *share;
    pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];

    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC: signalled when a handle or a slot frees up */
    CURL **idle;       /* stack of free handles */
    size_t n_idle;
    size_t n_total; /* handles created, idle or checked out */
    size_t max;
    size_t n_waiting; /* threads in checkout's wait: without any, check-in skips the wake-up */
};

static void share_lock(CURL *handle, curl_lock_data data, curl_lock_access access, void *userp)
{
    (void)handle;
    (void)access;
    struct net_pool *p = userp;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_lock(&p->share_mu[data]);
}

static void share_unlock(CURL *handle, curl_lock_data data, void *userp)
{
    (void)handle;
    struct net_pool *p = userp;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_unlock(&p->share_mu[data]);
}

enum iot_err net_pool_new(const struct net_pool_options *o, struct net_pool **out,
                          struct iot_error *err)
{
    *out = NULL;
    const char *what = o->what ? o->what : "http client";
    if (o->max_handles == 0 || o->max_handles > NET_POOL_MAX_HANDLES ||
        o->connect_timeout_ms <= 0 || o->total_timeout_ms <= 0)
        return iot_error_set(err, IOT_ERR_CONFIG, "%s: invalid connection pool options", what);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return iot_error_set(err, IOT_ERR_INTERNAL, "%s: curl_global_init failed", what);
    struct net_pool *p = calloc(1, sizeof *p);
    if (!p) {
        curl_global_cleanup();
        return iot_error_set(err, IOT_ERR_NOMEM, "%s: out of memory", what);
    }
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&p->share_mu[i], NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    p->connect_timeout_ms = o->connect_timeout_ms;
    p->total_timeout_ms = o->total_timeout_ms;
    p->protocols = o->allow_plain_http ? "http,https" : "https";
    p->max = o->max_handles;
    p->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
    p->user_agent = strdup(o->user_agent ? o->user_agent : "iot-manager/" IOTM_VERSION);
    p->idle = calloc(p->max, sizeof *p->idle);
    if ((o->ca_file && !p->ca_file) || !p->user_agent || !p->idle) {
        net_pool_free(p);
        return iot_error_set(err, IOT_ERR_NOMEM, "%s: out of memory", what);
    }
    p->share = curl_share_init();
    if (!p->share || curl_share_setopt(p->share, CURLSHOPT_LOCKFUNC, share_lock) ||
        curl_share_setopt(p->share, CURLSHOPT_UNLOCKFUNC, share_unlock) ||
        curl_share_setopt(p->share, CURLSHOPT_USERDATA, p) ||
        curl_share_setopt(p->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) ||
        curl_share_setopt(p->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION)) {
        net_pool_free(p);
        return iot_error_set(err, IOT_ERR_INTERNAL, "%s: cannot set up curl sharing", what);
    }
    *out = p;
    return IOT_OK;
}

void net_pool_free(struct net_pool *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_idle; i++)
        curl_easy_cleanup(p->idle[i]);
    if (p->share)
        curl_share_cleanup(p->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&p->share_mu[i]);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->idle);
    free(p->ca_file);
    free(p->user_agent);
    free(p);
    curl_global_cleanup();
}

CURL *net_pool_checkout(struct net_pool *p, long wait_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (wait_ms < 0)
        wait_ms = 0;
    deadline.tv_sec += wait_ms / 1000;
    deadline.tv_nsec += (wait_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    CURL *e = NULL;
    bool create = false;
    pthread_mutex_lock(&p->mu);
    while (p->n_idle == 0 && p->n_total >= p->max) {
        p->n_waiting++;
        int wrc = pthread_cond_timedwait(&p->cv, &p->mu, &deadline);
        p->n_waiting--;
        if (wrc == ETIMEDOUT)
            break;
    }
    if (p->n_idle > 0) {
        e = p->idle[--p->n_idle];
    } else if (p->n_total < p->max) {
        p->n_total++; /* reserve the slot; create outside the lock */
        create = true;
    }
    pthread_mutex_unlock(&p->mu);
    if (create) {
        e = curl_easy_init();
        if (!e) {
            pthread_mutex_lock(&p->mu);
            p->n_total--;
            if (p->n_waiting)
                pthread_cond_signal(&p->cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return e;
}

void net_pool_checkin(struct net_pool *p, CURL *e)
{
    if (!e)
        return;
    /* Keeps live connections, DNS and TLS caches and the share; drops every option, so no
     * pointer into the finished caller's stack or request survives in the pool. */
    curl_easy_reset(e);
    pthread_mutex_lock(&p->mu);
    p->idle[p->n_idle++] = e;
    if (p->n_waiting)
        pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

CURLcode net_pool_prepare(const struct net_pool *p, CURL *e)
{
    CURLcode cc = CURLE_OK;
    NET_SETOPT(cc, e, CURLOPT_SHARE, p->share);
    NET_SETOPT(cc, e, CURLOPT_USERAGENT, p->user_agent);
    NET_SETOPT(cc, e, CURLOPT_NOSIGNAL, 1L);
    NET_SETOPT(cc, e, CURLOPT_CONNECTTIMEOUT_MS, p->connect_timeout_ms);
    NET_SETOPT(cc, e, CURLOPT_TIMEOUT_MS, p->total_timeout_ms);
    NET_SETOPT(cc, e, CURLOPT_PROTOCOLS_STR, p->protocols);
    NET_SETOPT(cc, e, CURLOPT_REDIR_PROTOCOLS_STR, p->protocols);
    NET_SETOPT(cc, e, CURLOPT_FOLLOWLOCATION, 0L);
    NET_SETOPT(cc, e, CURLOPT_MAXREDIRS, 0L);
    /* Ignore *_proxy variables: requests (and the secrets some carry) go to the named host. */
    NET_SETOPT(cc, e, CURLOPT_PROXY, "");
    NET_SETOPT(cc, e, CURLOPT_SSL_VERIFYPEER, 1L);
    NET_SETOPT(cc, e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (p->ca_file)
        NET_SETOPT(cc, e, CURLOPT_CAINFO, p->ca_file);
    NET_SETOPT(cc, e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    NET_SETOPT(cc, e, CURLOPT_TCP_KEEPALIVE, 1L);
    return cc;
}

size_t net_pool_handles(struct net_pool *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->n_total;
    pthread_mutex_unlock(&p->mu);
    return n;
}
