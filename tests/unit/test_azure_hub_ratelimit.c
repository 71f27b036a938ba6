/* Unit tests for the per-hub rate limiter: tier rates, burst, queueing, max wait, bulk costs,
 * hub isolation and the table bound, with an injected clock; one threaded run on the real clock. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include "iot-manager/ratelimit.h"

struct fake_clock {
    int64_t now_ns;
};

static int64_t fake_now(void *ctx)
{
    return ((struct fake_clock *)ctx)->now_ns;
}

static struct ratelimit *make(struct ratelimit_config *cfg, struct fake_clock *clk)
{
    cfg->now_ns = fake_now;
    cfg->clock_ctx = clk;
    struct ratelimit *rl = NULL;
    struct iot_error err = {0};
    assert_int_equal(ratelimit_new(cfg, &rl, &err), IOT_OK);
    return rl;
}

static void assert_near(double got, double want)
{
    if (fabs(got - want) > 1e-9 * fmax(1.0, fabs(want)))
        fail_msg("got %.12f, want %.12f", got, want);
}

static void test_tier_rates(void **state)
{
    (void)state;
    struct ratelimit_config c;
    ratelimit_config_default(&c);
    assert_int_equal(c.tier, RATELIMIT_TIER_S1);
    assert_true(c.burst_s == 0.5);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_REGISTRY), 100.0 / 60);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_QUERY), 20.0 / 60);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_READ), 100);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_UPDATE), 50);
    c.units = 3; /* S1: registry and queries scale with units, twins do not */
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_REGISTRY), 300.0 / 60);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_QUERY), 60.0 / 60);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_READ), 100);
    c.tier = RATELIMIT_TIER_F1;
    c.units = 0; /* counts as 1 */
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_REGISTRY), 100.0 / 60);
    c.tier = RATELIMIT_TIER_S2;
    c.units = 1;
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_READ), 100);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_UPDATE), 50);
    c.units = 20; /* higher of 100/s or 10/s/unit */
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_READ), 200);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_UPDATE), 100);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_REGISTRY), 2000.0 / 60);
    c.tier = RATELIMIT_TIER_S3;
    c.units = 2;
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_REGISTRY), 10000.0 / 60);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_QUERY), 2000.0 / 60);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_READ), 1000);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_UPDATE), 500);
    c.registry_per_min = 600;
    c.queries_per_min = 120;
    c.twin_reads_per_s = 7;
    c.twin_updates_per_s = 3;
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_REGISTRY), 10);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_QUERY), 2);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_READ), 7);
    assert_near(ratelimit_rate_per_s(&c, RATELIMIT_TWIN_UPDATE), 3);

    enum ratelimit_tier t;
    assert_true(ratelimit_tier_parse("s3", &t));
    assert_int_equal(t, RATELIMIT_TIER_S3);
    assert_true(ratelimit_tier_parse("Free", &t));
    assert_int_equal(t, RATELIMIT_TIER_F1);
    assert_false(ratelimit_tier_parse("B1", &t));
    assert_false(ratelimit_tier_parse(NULL, &t));

    struct ratelimit *rl = NULL;
    c.burst_s = -1;
    assert_int_equal(ratelimit_new(&c, &rl, NULL), IOT_ERR_CONFIG);
    assert_null(rl);
}

/* The default burst is half a second's worth: 50 twin reads on S1, then pacing. */
static void test_default_burst(void **state)
{
    (void)state;
    struct fake_clock clk = {.now_ns = 0};
    struct ratelimit_config c;
    ratelimit_config_default(&c);
    struct ratelimit *rl = make(&c, &clk);
    int64_t wait;
    for (int i = 0; i < 50; i++) {
        assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_TWIN_READ, 1, &wait), IOT_OK);
        assert_int_equal(wait, 0);
    }
    assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_TWIN_READ, 1, &wait), IOT_OK);
    assert_int_equal(wait, 10000000);
    /* registry on S1 (1.67/s): the bucket holds a single token */
    assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_REGISTRY, 1, &wait), IOT_OK);
    assert_int_equal(wait, 0);
    assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_REGISTRY, 1, &wait), IOT_OK);
    assert_int_equal(wait, 600000000);
    ratelimit_free(rl);
}

static void test_burst_then_rate(void **state)
{
    (void)state;
    struct fake_clock clk = {.now_ns = 5000000000};
    struct ratelimit_config c;
    ratelimit_config_default(&c);
    c.twin_reads_per_s = 100;
    c.max_wait_ms = 1000;
    c.burst_s = 1.0;
    struct ratelimit *rl = make(&c, &clk);
    int64_t wait;
    /* one second's worth at once */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(ratelimit_reserve(rl, "hub.example", RATELIMIT_TWIN_READ, 1, &wait),
                         IOT_OK);
        assert_int_equal(wait, 0);
    }
    /* then callers queue: each 10 ms behind the previous one */
    for (int i = 1; i <= 5; i++) {
        assert_int_equal(ratelimit_reserve(rl, "hub.example", RATELIMIT_TWIN_READ, 1, &wait),
                         IOT_OK);
        assert_int_equal(wait, i * 10000000);
    }
    /* other classes have their own buckets */
    assert_int_equal(ratelimit_reserve(rl, "hub.example", RATELIMIT_TWIN_UPDATE, 1, &wait), IOT_OK);
    assert_int_equal(wait, 0);
    /* after 1 s the queue (5 tokens owed) is paid and 95 tokens are back, never more than 100 */
    clk.now_ns += 1000000000;
    int ok = 0;
    for (;; ok++) {
        assert_int_equal(ratelimit_reserve(rl, "hub.example", RATELIMIT_TWIN_READ, 1, &wait),
                         IOT_OK);
        if (wait > 0)
            break;
    }
    assert_int_equal(ok, 95);
    clk.now_ns += 60LL * 1000000000; /* long idle: capped at the burst */
    for (ok = 0;; ok++) {
        assert_int_equal(ratelimit_reserve(rl, "hub.example", RATELIMIT_TWIN_READ, 1, &wait),
                         IOT_OK);
        if (wait > 0)
            break;
    }
    assert_int_equal(ok, 100);
    ratelimit_free(rl);
}

/* Simulate a saturating sender for 10 s: it sends whenever the limiter says "now". The count
 * must equal burst + rate * time, within one token. */
static void test_sustained_rate(void **state)
{
    (void)state;
    struct fake_clock clk = {.now_ns = 0};
    struct ratelimit_config c;
    ratelimit_config_default(&c);
    c.twin_updates_per_s = 50;
    c.burst_s = 0.2; /* capacity 10 */
    c.max_wait_ms = 10000;
    struct ratelimit *rl = make(&c, &clk);
    int sent = 0;
    int64_t end = 10LL * 1000000000;
    while (clk.now_ns < end) {
        int64_t wait;
        assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_TWIN_UPDATE, 1, &wait), IOT_OK);
        clk.now_ns += wait; /* the caller sleeps, then sends */
        if (clk.now_ns <= end)
            sent++;
    }
    assert_true(sent >= 10 + 500 - 1 && sent <= 10 + 500 + 1);
    ratelimit_free(rl);
}

static void test_max_wait(void **state)
{
    (void)state;
    struct fake_clock clk = {.now_ns = 1};
    struct ratelimit_config c;
    ratelimit_config_default(&c);
    c.twin_reads_per_s = 100;
    c.max_wait_ms = 50;
    c.burst_s = 1.0;
    struct ratelimit *rl = make(&c, &clk);
    int64_t wait;
    for (int i = 0; i < 100; i++)
        assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_TWIN_READ, 1, &wait), IOT_OK);
    for (int i = 1; i <= 5; i++) {
        assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_TWIN_READ, 1, &wait), IOT_OK);
        assert_int_equal(wait, i * 10000000);
    }
    /* the 6th would wait 60 ms: refused, told how long, nothing taken */
    assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_TWIN_READ, 1, &wait), IOT_ERR_THROTTLED);
    assert_int_equal(wait, 60000000);
    assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_TWIN_READ, 1, &wait), IOT_ERR_THROTTLED);
    assert_int_equal(wait, 60000000);
    struct iot_error err = {0};
    int64_t waited = 0;
    assert_int_equal(ratelimit_acquire(rl, "h", RATELIMIT_TWIN_READ, 1, &waited, &err),
                     IOT_ERR_THROTTLED);
    assert_int_equal(waited, 60000000);
    assert_int_equal(err.code, IOT_ERR_THROTTLED);
    clk.now_ns += 10000000;
    assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_TWIN_READ, 1, &wait), IOT_OK);
    assert_int_equal(wait, 50000000);

    /* max_wait 0: only what the bucket holds right now */
    c.max_wait_ms = 0;
    struct ratelimit *rl0 = make(&c, &clk);
    for (int i = 0; i < 100; i++)
        assert_int_equal(ratelimit_reserve(rl0, "h", RATELIMIT_TWIN_READ, 1, &wait), IOT_OK);
    assert_int_equal(ratelimit_reserve(rl0, "h", RATELIMIT_TWIN_READ, 1, &wait), IOT_ERR_THROTTLED);
    ratelimit_free(rl0);
    ratelimit_free(rl);
}

static void test_bulk_cost(void **state)
{
    (void)state;
    struct fake_clock clk = {.now_ns = 0};
    struct ratelimit_config c;
    ratelimit_config_default(&c); /* S1: 100 registry ops per minute */
    c.max_wait_ms = 120000;
    c.burst_s = 1.0;
    struct ratelimit *rl = make(&c, &clk);
    int64_t wait;
    /* a bulk call of 100 devices costs 100 tokens; the bucket holds 1.67, so it waits for the
     * other 98.33 at 1.67/s = 59 s */
    assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_REGISTRY, 100, &wait), IOT_OK);
    assert_true(llabs(wait - 59000000000LL) < 1000000);
    /* the next single op queues behind it */
    assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_REGISTRY, 1, &wait), IOT_OK);
    assert_true(llabs(wait - 59600000000LL) < 1000000);
    /* a rate below one token per burst still allows a single operation */
    c.queries_per_min = 20;
    struct ratelimit *rlq = make(&c, &clk);
    assert_int_equal(ratelimit_reserve(rlq, "h", RATELIMIT_QUERY, 1, &wait), IOT_OK);
    assert_int_equal(wait, 0);
    assert_int_equal(ratelimit_reserve(rlq, "h", RATELIMIT_QUERY, 1, &wait), IOT_OK);
    assert_int_equal(wait, 3000000000LL);
    ratelimit_free(rlq);
    ratelimit_free(rl);
}

static void test_hubs(void **state)
{
    (void)state;
    struct fake_clock clk = {.now_ns = 0};
    struct ratelimit_config c;
    ratelimit_config_default(&c);
    c.twin_reads_per_s = 2;
    c.max_hubs = 3;
    c.burst_s = 1.0;
    struct ratelimit *rl = make(&c, &clk);
    int64_t wait;
    assert_int_equal(ratelimit_reserve(rl, "A.example:443", RATELIMIT_TWIN_READ, 2, &wait), IOT_OK);
    /* case-insensitive: same hub */
    assert_int_equal(ratelimit_reserve(rl, "a.EXAMPLE:443", RATELIMIT_TWIN_READ, 1, &wait), IOT_OK);
    assert_int_equal(wait, 500000000);
    /* another hub is unaffected */
    assert_int_equal(ratelimit_reserve(rl, "b.example", RATELIMIT_TWIN_READ, 2, &wait), IOT_OK);
    assert_int_equal(wait, 0);
    assert_int_equal(ratelimit_hub_count(rl), 2);
    /* the table stays bounded */
    char name[32];
    for (int i = 0; i < 10; i++) {
        snprintf(name, sizeof name, "hub%d.example", i);
        assert_int_equal(ratelimit_reserve(rl, name, RATELIMIT_TWIN_READ, 1, &wait), IOT_OK);
        assert_true(ratelimit_hub_count(rl) <= 3);
    }
    /* bad hub names and classes */
    assert_int_equal(ratelimit_reserve(rl, "", RATELIMIT_TWIN_READ, 1, &wait), IOT_ERR_INVALID);
    assert_int_equal(ratelimit_reserve(rl, "a b", RATELIMIT_TWIN_READ, 1, &wait), IOT_ERR_INVALID);
    assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT__COUNT, 1, &wait), IOT_ERR_INVALID);
    char longname[RATELIMIT_HUB_KEY_MAX + 2];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(ratelimit_reserve(rl, longname, RATELIMIT_TWIN_READ, 1, &wait),
                     IOT_ERR_INVALID);
    ratelimit_free(rl);

    /* disabled: never waits */
    c.disabled = true;
    rl = make(&c, &clk);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(ratelimit_reserve(rl, "h", RATELIMIT_TWIN_READ, 5, &wait), IOT_OK);
        assert_int_equal(wait, 0);
    }
    ratelimit_free(rl);
}

/* Many threads on the real clock: the total time is what the rate implies. */
struct worker {
    struct ratelimit *rl;
    int n;
    int rc;
};

static void *run_worker(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->n; i++) {
        if (ratelimit_acquire(w->rl, "threads.example", RATELIMIT_TWIN_READ, 1, NULL, NULL) !=
            IOT_OK)
            w->rc = -1;
    }
    return NULL;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void test_threads(void **state)
{
    (void)state;
    struct ratelimit_config c;
    ratelimit_config_default(&c);
    c.twin_reads_per_s = 500;
    c.burst_s = 0.01; /* 5 tokens */
    c.max_wait_ms = 5000;
    struct ratelimit *rl = NULL;
    assert_int_equal(ratelimit_new(&c, &rl, NULL), IOT_OK);
    struct worker w[4];
    pthread_t t[4];
    int64_t t0 = mono_ns();
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){.rl = rl, .n = 50};
        assert_int_equal(pthread_create(&t[i], NULL, run_worker, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].rc, 0);
    }
    double elapsed = (double)(mono_ns() - t0) / 1e9;
    /* 200 tokens, 5 up front, 195 at 500/s = 0.39 s */
    if (elapsed < 0.38 || elapsed > 2.0)
        fail_msg("200 acquisitions took %.3f s", elapsed);
    ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tier_rates),
        cmocka_unit_test(test_default_burst),
        cmocka_unit_test(test_burst_then_rate),
        cmocka_unit_test(test_sustained_rate),
        cmocka_unit_test(test_max_wait),
        cmocka_unit_test(test_bulk_cost),
        cmocka_unit_test(test_hubs),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
