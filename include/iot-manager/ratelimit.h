/* Per-hub token buckets that keep our calls under an IoT Hub's operation throttles.
 *
 * Rates come from the hub's tier and unit count (azure-iothub.md §5.1) unless overridden. Each
 * hub (keyed by its host name, case-insensitive) has one bucket per operation class. A bucket
 * holds at most `burst_s` seconds' worth of tokens, so after an idle spell we send at most a
 * short burst. The default, half a second, is deliberately below the one-second bucket a hub
 * (or the simulator) shapes twin traffic with: our bucket starts refilling when we send, the
 * hub's only when the requests arrive, and the difference must not push the hub's bucket empty.
 *
 * Reservations may drive a bucket negative: a caller that needs more tokens than are there
 * reserves them and sleeps until they would have accrued; later callers queue behind it. That
 * gives FIFO-ish fairness under many threads and lets a bulk call of n devices take n tokens even
 * when n exceeds the burst size.
 */
#ifndef IOT_MANAGER_RATELIMIT_H
#define IOT_MANAGER_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "iot-manager/error.h"

enum ratelimit_tier {
    RATELIMIT_TIER_F1 = 0,
    RATELIMIT_TIER_S1,
    RATELIMIT_TIER_S2,
    RATELIMIT_TIER_S3
};

enum ratelimit_class {
    RATELIMIT_REGISTRY = 0, /* identity create/get/update/delete/list; bulk counts per device */
    RATELIMIT_QUERY,
    RATELIMIT_TWIN_READ,
    RATELIMIT_TWIN_UPDATE,
    RATELIMIT__COUNT
};

#define RATELIMIT_HUB_KEY_MAX 255 /* longest host name (with ":port") we keep a bucket for */

/* Monotonic clock in nanoseconds; injectable so tests need not sleep. */
typedef int64_t (*ratelimit_clock_fn)(void *ctx);

struct ratelimit_config {
    bool disabled;            /* every reservation succeeds at once */
    enum ratelimit_tier tier; /* default S1 */
    unsigned units;           /* 0 counts as 1 */
    /* Overrides in the units the quota table uses; 0 keeps the tier's figure. */
    double registry_per_min;
    double queries_per_min;
    double twin_reads_per_s;
    double twin_updates_per_s;
    double burst_s;      /* bucket capacity in seconds of rate (at least one token); 0 = 0.5 s */
    int64_t max_wait_ms; /* a reservation that would wait longer fails; 0 = never wait */
    size_t max_hubs;     /* table bound; idle hubs are evicted first; 0 = 4096 */
    ratelimit_clock_fn now_ns; /* NULL: CLOCK_MONOTONIC */
    void *clock_ctx;
};

struct ratelimit;

/* Fills `cfg` with the defaults: S1, 1 unit, burst 0.5 s, max wait 5 s, 4096 hubs. */
void ratelimit_config_default(struct ratelimit_config *cfg);

/* Parses "F1", "S1", "S2", "S3" (case-insensitive; "free" = F1). */
bool ratelimit_tier_parse(const char *text, enum ratelimit_tier *out);

/* The sustained rate, in operations per second, that `cfg` allows for `cls`. */
double ratelimit_rate_per_s(const struct ratelimit_config *cfg, enum ratelimit_class cls);

/* Copies `cfg` (nothing is borrowed afterwards except clock_ctx). Caller frees with
 * ratelimit_free(). IOT_ERR_NOMEM or IOT_ERR_CONFIG. */
enum iot_err ratelimit_new(const struct ratelimit_config *cfg, struct ratelimit **out,
                           struct iot_error *err);
void ratelimit_free(struct ratelimit *rl);

/* Reserves `n` tokens of class `cls` on hub `hub` (a host name). On IOT_OK, *wait_ns is how long
 * the caller must wait before sending (0 = now). When that wait would exceed max_wait_ms nothing
 * is reserved, IOT_ERR_THROTTLED is returned and *wait_ns still says how long it would have been,
 * so the caller can schedule a later attempt. IOT_ERR_INVALID for a bad hub name or class. */
enum iot_err ratelimit_reserve(struct ratelimit *rl, const char *hub, enum ratelimit_class cls,
                               unsigned n, int64_t *wait_ns);

/* ratelimit_reserve() and then sleeps for the wait. *waited_ns (may be NULL) receives the time
 * slept; on IOT_ERR_THROTTLED it receives the wait that was refused. */
enum iot_err ratelimit_acquire(struct ratelimit *rl, const char *hub, enum ratelimit_class cls,
                               unsigned n, int64_t *waited_ns, struct iot_error *err);

/* Number of hubs currently tracked (for tests and metrics). */
size_t ratelimit_hub_count(struct ratelimit *rl);

#endif
