#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "iot-manager/ratelimit.h"

#define RL_TABLE_BUCKETS    256
#define RL_DEFAULT_MAX_HUBS 4096

struct rl_hub {
    struct rl_hub *next;
    char key[RATELIMIT_HUB_KEY_MAX + 1]; /* lower-cased host name */
    double tokens[RATELIMIT__COUNT];     /* may be negative: reserved ahead of time */
    int64_t last_ns;                     /* when `tokens` was last brought up to date */
};

struct ratelimit {
    struct ratelimit_config cfg;
    double rate[RATELIMIT__COUNT];     /* tokens per second */
    double capacity[RATELIMIT__COUNT]; /* bucket size */
    pthread_mutex_t mu;
    struct rl_hub *table[RL_TABLE_BUCKETS];
    size_t count;
};

void ratelimit_config_default(struct ratelimit_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->tier = RATELIMIT_TIER_S1;
    cfg->units = 1;
    cfg->burst_s = 0.5;
    cfg->max_wait_ms = 5000;
    cfg->max_hubs = RL_DEFAULT_MAX_HUBS;
}

bool ratelimit_tier_parse(const char *text, enum ratelimit_tier *out)
{
    static const struct {
        const char *name;
        enum ratelimit_tier tier;
    } names[] = {{"F1", RATELIMIT_TIER_F1},
                 {"free", RATELIMIT_TIER_F1},
                 {"S1", RATELIMIT_TIER_S1},
                 {"S2", RATELIMIT_TIER_S2},
                 {"S3", RATELIMIT_TIER_S3}};
    if (!text)
        return false;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(text, names[i].name) == 0) {
            *out = names[i].tier;
            return true;
        }
    }
    return false;
}

double ratelimit_rate_per_s(const struct ratelimit_config *cfg, enum ratelimit_class cls)
{
    double u = cfg->units ? (double)cfg->units : 1.0;
    double registry_per_min = 100.0 * u, queries_per_min = 20.0 * u;
    double reads = 100.0, updates = 50.0;
    switch (cfg->tier) {
    case RATELIMIT_TIER_F1:
    case RATELIMIT_TIER_S1:
        break;
    case RATELIMIT_TIER_S2:
        reads = fmax(100.0, 10.0 * u);
        updates = fmax(50.0, 5.0 * u);
        break;
    case RATELIMIT_TIER_S3:
        registry_per_min = 5000.0 * u;
        queries_per_min = 1000.0 * u;
        reads = 500.0 * u;
        updates = 250.0 * u;
        break;
    }
    switch (cls) {
    case RATELIMIT_REGISTRY:
        return (cfg->registry_per_min > 0 ? cfg->registry_per_min : registry_per_min) / 60.0;
    case RATELIMIT_QUERY:
        return (cfg->queries_per_min > 0 ? cfg->queries_per_min : queries_per_min) / 60.0;
    case RATELIMIT_TWIN_READ:
        return cfg->twin_reads_per_s > 0 ? cfg->twin_reads_per_s : reads;
    case RATELIMIT_TWIN_UPDATE:
        return cfg->twin_updates_per_s > 0 ? cfg->twin_updates_per_s : updates;
    case RATELIMIT__COUNT:
        break;
    }
    return 0.0;
}

static int64_t rl_monotonic_ns(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t rl_now(const struct ratelimit *rl)
{
    return rl->cfg.now_ns(rl->cfg.clock_ctx);
}

enum iot_err ratelimit_new(const struct ratelimit_config *cfg, struct ratelimit **out,
                           struct iot_error *err)
{
    *out = NULL;
    if ((unsigned)cfg->tier > RATELIMIT_TIER_S3 || cfg->burst_s < 0 || cfg->max_wait_ms < 0 ||
        !isfinite(cfg->burst_s) || cfg->registry_per_min < 0 || cfg->queries_per_min < 0 ||
        cfg->twin_reads_per_s < 0 || cfg->twin_updates_per_s < 0)
        return iot_error_set(err, IOT_ERR_CONFIG, "rate limit: invalid configuration");
    struct ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return iot_error_set(err, IOT_ERR_NOMEM, "rate limit: out of memory");
    rl->cfg = *cfg;
    if (rl->cfg.burst_s == 0)
        rl->cfg.burst_s = 0.5;
    if (rl->cfg.max_hubs == 0)
        rl->cfg.max_hubs = RL_DEFAULT_MAX_HUBS;
    if (!rl->cfg.now_ns)
        rl->cfg.now_ns = rl_monotonic_ns;
    for (int c = 0; c < RATELIMIT__COUNT; c++) {
        rl->rate[c] = ratelimit_rate_per_s(&rl->cfg, (enum ratelimit_class)c);
        /* At least one whole token, or a hub with a rate under 1/burst_s could never send. */
        rl->capacity[c] = fmax(1.0, rl->rate[c] * rl->cfg.burst_s);
    }
    if (pthread_mutex_init(&rl->mu, NULL) != 0) {
        free(rl);
        return iot_error_set(err, IOT_ERR_INTERNAL, "rate limit: mutex init failed");
    }
    *out = rl;
    return IOT_OK;
}

void ratelimit_free(struct ratelimit *rl)
{
    if (!rl)
        return;
    for (size_t i = 0; i < RL_TABLE_BUCKETS; i++) {
        struct rl_hub *h = rl->table[i];
        while (h) {
            struct rl_hub *next = h->next;
            free(h);
            h = next;
        }
    }
    pthread_mutex_destroy(&rl->mu);
    free(rl);
}

/* Lower-cases `hub` into `key`; false when it is empty, too long or has control characters. */
static bool rl_make_key(const char *hub, char key[RATELIMIT_HUB_KEY_MAX + 1], uint32_t *hash)
{
    uint32_t h = 2166136261u; /* FNV-1a: cheap and good enough to spread host names */
    size_t i = 0;
    for (; hub[i]; i++) {
        unsigned char ch = (unsigned char)hub[i];
        if (i >= RATELIMIT_HUB_KEY_MAX || ch <= 0x20 || ch == 0x7f)
            return false;
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch - 'A' + 'a');
        key[i] = (char)ch;
        h = (h ^ ch) * 16777619u;
    }
    key[i] = '\0';
    *hash = h;
    return i > 0;
}

static void rl_refill(const struct ratelimit *rl, struct rl_hub *h, int64_t now)
{
    if (now <= h->last_ns)
        return;
    double dt = (double)(now - h->last_ns) / 1e9;
    for (int c = 0; c < RATELIMIT__COUNT; c++)
        h->tokens[c] = fmin(rl->capacity[c], h->tokens[c] + dt * rl->rate[c]);
    h->last_ns = now;
}

static bool rl_idle(const struct ratelimit *rl, const struct rl_hub *h)
{
    for (int c = 0; c < RATELIMIT__COUNT; c++)
        if (h->tokens[c] < rl->capacity[c])
            return false;
    return true;
}

/* Makes room for one more hub. A hub whose buckets are full again is indistinguishable from a
 * new one, so dropping it loses nothing; only when none is idle do we drop the least recently
 * used, which can briefly let that hub exceed its rate. */
static void rl_evict(struct ratelimit *rl, int64_t now)
{
    struct rl_hub **victim = NULL;
    int64_t oldest = INT64_MAX;
    for (size_t i = 0; i < RL_TABLE_BUCKETS; i++) {
        for (struct rl_hub **pp = &rl->table[i]; *pp; pp = &(*pp)->next) {
            rl_refill(rl, *pp, now);
            if (rl_idle(rl, *pp)) {
                victim = pp;
                goto found;
            }
            if ((*pp)->last_ns < oldest) {
                oldest = (*pp)->last_ns;
                victim = pp;
            }
        }
    }
    if (!victim)
        return;
found:;
    struct rl_hub *dead = *victim;
    *victim = dead->next;
    free(dead);
    rl->count--;
}

static struct rl_hub *rl_lookup(struct ratelimit *rl, const char *key, uint32_t hash, int64_t now)
{
    struct rl_hub **slot = &rl->table[hash % RL_TABLE_BUCKETS];
    for (struct rl_hub *h = *slot; h; h = h->next)
        if (strcmp(h->key, key) == 0)
            return h;
    if (rl->count >= rl->cfg.max_hubs)
        rl_evict(rl, now);
    struct rl_hub *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    strcpy(h->key, key); /* fits: both RATELIMIT_HUB_KEY_MAX + 1 */
    for (int c = 0; c < RATELIMIT__COUNT; c++)
        h->tokens[c] = rl->capacity[c];
    h->last_ns = now;
    h->next = *slot;
    *slot = h;
    rl->count++;
    return h;
}

enum iot_err ratelimit_reserve(struct ratelimit *rl, const char *hub, enum ratelimit_class cls,
                               unsigned n, int64_t *wait_ns)
{
    *wait_ns = 0;
    if ((unsigned)cls >= RATELIMIT__COUNT || !hub)
        return IOT_ERR_INVALID;
    if (rl->cfg.disabled || n == 0)
        return IOT_OK;
    char key[RATELIMIT_HUB_KEY_MAX + 1];
    uint32_t hash;
    if (!rl_make_key(hub, key, &hash))
        return IOT_ERR_INVALID;

    enum iot_err rc = IOT_OK;
    pthread_mutex_lock(&rl->mu);
    int64_t now = rl_now(rl);
    struct rl_hub *h = rl_lookup(rl, key, hash, now);
    if (!h) {
        rc = IOT_ERR_NOMEM;
        goto out;
    }
    rl_refill(rl, h, now);
    double deficit = (double)n - h->tokens[cls];
    if (deficit > 0) {
        double wait = ceil(deficit / rl->rate[cls] * 1e9);
        *wait_ns = wait > (double)INT64_MAX ? INT64_MAX : (int64_t)wait;
        bool unbounded = rl->cfg.max_wait_ms >= INT64_MAX / 1000000;
        if (!unbounded && *wait_ns > rl->cfg.max_wait_ms * 1000000) {
            rc = IOT_ERR_THROTTLED;
            goto out;
        }
    }
    h->tokens[cls] -= n;
out:
    pthread_mutex_unlock(&rl->mu);
    return rc;
}

enum iot_err ratelimit_acquire(struct ratelimit *rl, const char *hub, enum ratelimit_class cls,
                               unsigned n, int64_t *waited_ns, struct iot_error *err)
{
    int64_t wait = 0;
    enum iot_err rc = ratelimit_reserve(rl, hub, cls, n, &wait);
    if (waited_ns)
        *waited_ns = wait;
    if (rc == IOT_ERR_THROTTLED)
        return iot_error_set(err, rc, "rate limit: hub quota would need a wait of %lld ms",
                             (long long)(wait / 1000000));
    if (rc != IOT_OK)
        return iot_error_set(err, rc, "rate limit: %s", iot_strerror(rc));
    if (wait > 0) {
        struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000),
                              .tv_nsec = (long)(wait % 1000000000)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    return IOT_OK;
}

size_t ratelimit_hub_count(struct ratelimit *rl)
{
    pthread_mutex_lock(&rl->mu);
    size_t n = rl->count;
    pthread_mutex_unlock(&rl->mu);
    return n;
}
