/* Per-hub throttles of azure-iothub.md §5.1 as token buckets. A bucket holds one window's worth
 * (a minute for registry ops and queries, a second for twin reads/updates): the hub accepts
 * short bursts above the rate; beyond the bucket the simulator answers 429 at once rather than
 * queueing, which is what a client sees once Azure's backlog is full. */
#include "sim.h"

#include <string.h>

static double window_s(enum sim_tclass c)
{
    return (c == SIM_TCLASS_REGISTRY || c == SIM_TCLASS_QUERY) ? 60.0 : 1.0;
}

static void bucket_configure(struct sim_throttle *t, enum sim_tclass c)
{
    struct sim_bucket *b = &t->b[c];
    b->capacity = (double)t->quota[c];
    b->rate_per_s = (double)t->quota[c] / window_s(c);
    /* A changed quota starts full, so a test that sets one gets a predictable burst. */
    b->tokens = b->capacity;
    b->last_ns = sim_mono_ns();
}

void sim_throttle_init(struct sim_throttle *t)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    sim_throttle_set_tier(t, SIM_TIER_S1, 1);
    sim_throttle_refill(t);
}

void sim_throttle_destroy(struct sim_throttle *t)
{
    pthread_mutex_destroy(&t->mu);
}

void sim_throttle_set_tier(struct sim_throttle *t, enum sim_tier tier, long units)
{
    if (units < 1) {
        units = 1;
    }
    long q[SIM_TCLASS_COUNT];
    switch (tier) {
    case SIM_TIER_F1:
    case SIM_TIER_S1:
        q[SIM_TCLASS_REGISTRY] = 100 * units;
        q[SIM_TCLASS_QUERY] = 20 * units;
        q[SIM_TCLASS_TWIN_READ] = 100;
        q[SIM_TCLASS_TWIN_UPDATE] = 50;
        break;
    case SIM_TIER_S2:
        q[SIM_TCLASS_REGISTRY] = 100 * units;
        q[SIM_TCLASS_QUERY] = 20 * units;
        q[SIM_TCLASS_TWIN_READ] = 10 * units > 100 ? 10 * units : 100;
        q[SIM_TCLASS_TWIN_UPDATE] = 5 * units > 50 ? 5 * units : 50;
        break;
    case SIM_TIER_S3:
    default:
        q[SIM_TCLASS_REGISTRY] = 5000 * units;
        q[SIM_TCLASS_QUERY] = 1000 * units;
        q[SIM_TCLASS_TWIN_READ] = 500 * units;
        q[SIM_TCLASS_TWIN_UPDATE] = 250 * units;
        break;
    }
    pthread_mutex_lock(&t->mu);
    for (int c = 0; c < SIM_TCLASS_COUNT; c++) {
        t->quota[c] = q[c];
        bucket_configure(t, (enum sim_tclass)c);
    }
    pthread_mutex_unlock(&t->mu);
}

void sim_throttle_set_quota(struct sim_throttle *t, enum sim_tclass c, long quota)
{
    pthread_mutex_lock(&t->mu);
    t->quota[c] = quota < 1 ? 1 : quota;
    bucket_configure(t, c);
    pthread_mutex_unlock(&t->mu);
}

void sim_throttle_refill(struct sim_throttle *t)
{
    pthread_mutex_lock(&t->mu);
    int64_t now = sim_mono_ns();
    for (int c = 0; c < SIM_TCLASS_COUNT; c++) {
        t->b[c].tokens = t->b[c].capacity;
        t->b[c].last_ns = now;
    }
    pthread_mutex_unlock(&t->mu);
}

void sim_throttle_enable(struct sim_throttle *t, bool on)
{
    pthread_mutex_lock(&t->mu);
    bool was = t->enabled;
    t->enabled = on;
    pthread_mutex_unlock(&t->mu);
    if (on && !was) {
        sim_throttle_refill(t); /* start every test with full buckets */
    }
}

bool sim_throttle_take(struct sim_throttle *t, enum sim_tclass c, double cost)
{
    bool ok = true;
    pthread_mutex_lock(&t->mu);
    if (t->enabled) {
        struct sim_bucket *b = &t->b[c];
        int64_t now = sim_mono_ns();
        b->tokens += (double)(now - b->last_ns) / 1e9 * b->rate_per_s;
        if (b->tokens > b->capacity) {
            b->tokens = b->capacity;
        }
        b->last_ns = now;
        if (b->tokens >= cost) {
            b->tokens -= cost;
        } else {
            ok = false;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return ok;
}

json_t *sim_throttle_json(struct sim_throttle *t)
{
    pthread_mutex_lock(&t->mu);
    json_t *j = json_pack(
        "{s:b, s:{s:I, s:I, s:I, s:I}, s:{s:f, s:f, s:f, s:f}}", "enabled", t->enabled, "quotas",
        "registry_per_min", (json_int_t)t->quota[SIM_TCLASS_REGISTRY], "queries_per_min",
        (json_int_t)t->quota[SIM_TCLASS_QUERY], "twin_reads_per_s",
        (json_int_t)t->quota[SIM_TCLASS_TWIN_READ], "twin_updates_per_s",
        (json_int_t)t->quota[SIM_TCLASS_TWIN_UPDATE], "tokens", "registry",
        t->b[SIM_TCLASS_REGISTRY].tokens, "queries", t->b[SIM_TCLASS_QUERY].tokens, "twin_reads",
        t->b[SIM_TCLASS_TWIN_READ].tokens, "twin_updates", t->b[SIM_TCLASS_TWIN_UPDATE].tokens);
    pthread_mutex_unlock(&t->mu);
    return j;
}
