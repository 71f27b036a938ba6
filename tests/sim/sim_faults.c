/* Test-control state: fault rules, the request log ring and counters. */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- fault rules ------------------------------------------------------------------------------
 */

int sim_faults_init(struct sim_faults *f)
{
    memset(f, 0, sizeof *f);
    f->next_id = 1;
    return pthread_mutex_init(&f->mu, NULL) == 0 ? 0 : -1;
}

void sim_faults_destroy(struct sim_faults *f)
{
    free(f->rules);
    pthread_mutex_destroy(&f->mu);
}

static bool get_long(const json_t *body, const char *key, long min, long max, long *out,
                     bool *present, char *why, size_t n)
{
    json_t *v = json_object_get(body, key);
    *present = v != NULL && !json_is_null(v);
    if (!*present) {
        return true;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(why, n, "%s must be an integer in [%ld, %ld]", key, min, max);
        return false;
    }
    *out = (long)json_integer_value(v);
    return true;
}

bool sim_faults_add(struct sim_faults *f, const json_t *body, long *id, char *why, size_t n)
{
    if (!json_is_object(body)) {
        snprintf(why, n, "body must be a JSON object");
        return false;
    }
    struct sim_fault rule;
    memset(&rule, 0, sizeof rule);
    rule.retry_after = -1;
    rule.remaining = -1;
    json_t *match = json_object_get(body, "match");
    if (match && !json_is_null(match)) {
        if (!json_is_string(match)) {
            snprintf(why, n, "match must be a string like \"PUT /devices\"");
            return false;
        }
        const char *m = json_string_value(match);
        const char *sp = strchr(m, ' ');
        if (sp) {
            snprintf(rule.method, sizeof rule.method, "%.*s", (int)(sp - m), m);
            snprintf(rule.prefix, sizeof rule.prefix, "%s", sp + 1);
        } else if (m[0] == '/') {
            snprintf(rule.prefix, sizeof rule.prefix, "%s", m);
        } else {
            snprintf(rule.method, sizeof rule.method, "%s", m);
        }
        if (rule.prefix[0] && rule.prefix[0] != '/') {
            snprintf(why, n, "the path part of match must start with '/'");
            return false;
        }
    }
    long status = 0, retry = -1, latency = 0, count = -1, duration = 0;
    bool has_status, has_retry, has_latency, has_count, has_duration;
    if (!get_long(body, "status", 400, 599, &status, &has_status, why, n) ||
        !get_long(body, "retry_after", 0, 86400, &retry, &has_retry, why, n) ||
        !get_long(body, "latency_ms", 0, 600000, &latency, &has_latency, why, n) ||
        !get_long(body, "count", 1, 1000000000L, &count, &has_count, why, n) ||
        !get_long(body, "duration_ms", 1, 86400000L, &duration, &has_duration, why, n)) {
        return false;
    }
    json_t *drop = json_object_get(body, "drop");
    if (drop && !json_is_boolean(drop)) {
        snprintf(why, n, "drop must be a boolean");
        return false;
    }
    rule.drop = json_is_true(drop);
    if (rule.drop && has_status) {
        snprintf(why, n, "status and drop exclude each other");
        return false;
    }
    if (has_retry && status != 429 && status != 503) {
        snprintf(why, n, "retry_after is only meaningful with status 429 or 503");
        return false;
    }
    if (!has_status && !rule.drop && latency <= 0) {
        snprintf(why, n, "a fault needs status, drop or latency_ms");
        return false;
    }
    rule.status = (unsigned)status;
    rule.retry_after = has_retry ? retry : -1;
    rule.latency_ms = latency;
    rule.remaining = has_count ? count : -1;
    rule.expires_ns = has_duration ? sim_mono_ns() + (int64_t)duration * 1000000 : 0;
    pthread_mutex_lock(&f->mu);
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 8;
        struct sim_fault *m = realloc(f->rules, nc * sizeof *m);
        if (!m) {
            pthread_mutex_unlock(&f->mu);
            snprintf(why, n, "out of memory");
            return false;
        }
        f->rules = m;
        f->cap = nc;
    }
    rule.id = f->next_id++;
    f->rules[f->n++] = rule;
    *id = rule.id;
    pthread_mutex_unlock(&f->mu);
    return true;
}

void sim_faults_clear(struct sim_faults *f)
{
    pthread_mutex_lock(&f->mu);
    f->n = 0;
    pthread_mutex_unlock(&f->mu);
}

static void rule_remove(struct sim_faults *f, size_t i)
{
    memmove(&f->rules[i], &f->rules[i + 1], (f->n - i - 1) * sizeof f->rules[0]);
    f->n--;
}

bool sim_faults_match(struct sim_faults *f, const char *method, const char *path,
                      struct sim_fault *out)
{
    bool hit = false;
    pthread_mutex_lock(&f->mu);
    int64_t now = f->n ? sim_mono_ns() : 0;
    for (size_t i = 0; i < f->n;) {
        struct sim_fault *r = &f->rules[i];
        if (r->expires_ns && now >= r->expires_ns) {
            rule_remove(f, i);
            continue;
        }
        if ((r->method[0] && strcasecmp(r->method, method) != 0) ||
            (r->prefix[0] && strncmp(path, r->prefix, strlen(r->prefix)) != 0)) {
            i++;
            continue;
        }
        *out = *r;
        hit = true;
        if (r->remaining > 0 && --r->remaining == 0) {
            rule_remove(f, i);
        }
        break;
    }
    pthread_mutex_unlock(&f->mu);
    return hit;
}

json_t *sim_faults_json(struct sim_faults *f)
{
    json_t *arr = json_array();
    pthread_mutex_lock(&f->mu);
    int64_t now = sim_mono_ns();
    for (size_t i = 0; i < f->n; i++) {
        const struct sim_fault *r = &f->rules[i];
        if (r->expires_ns && now >= r->expires_ns) {
            continue;
        }
        json_t *o = json_pack("{s:I, s:s, s:s, s:b, s:I}", "id", (json_int_t)r->id, "method",
                              r->method, "prefix", r->prefix, "drop", r->drop, "latency_ms",
                              (json_int_t)r->latency_ms);
        if (r->status) {
            json_object_set_new(o, "status", json_integer(r->status));
        }
        if (r->retry_after >= 0) {
            json_object_set_new(o, "retry_after", json_integer(r->retry_after));
        }
        if (r->remaining >= 0) {
            json_object_set_new(o, "count", json_integer(r->remaining));
        }
        if (r->expires_ns) {
            json_object_set_new(o, "remaining_ms",
                                json_integer((json_int_t)((r->expires_ns - now) / 1000000)));
        }
        json_array_append_new(arr, o);
    }
    pthread_mutex_unlock(&f->mu);
    return arr;
}

/* ---- request log -------------------------------------------------------------------------------
 */

int sim_reqlog_init(struct sim_reqlog *l, size_t cap)
{
    memset(l, 0, sizeof *l);
    l->cap = cap ? cap : 1;
    l->ring = calloc(l->cap, sizeof *l->ring);
    l->next_seq = 1;
    if (!l->ring || pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l->ring);
        return -1;
    }
    return 0;
}

static void entry_free(struct sim_log_entry *e)
{
    free(e->method); /* the one allocation holding all strings */
    memset(e, 0, sizeof *e);
}

void sim_reqlog_clear(struct sim_reqlog *l)
{
    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; i < l->cap; i++) {
        entry_free(&l->ring[i]);
    }
    l->count = 0;
    l->head = 0;
    /* seq keeps counting: a reader's `since` never sees an old number reused. */
    pthread_mutex_unlock(&l->mu);
}

void sim_reqlog_destroy(struct sim_reqlog *l)
{
    sim_reqlog_clear(l);
    free(l->ring);
    pthread_mutex_destroy(&l->mu);
}

void sim_reqlog_add(struct sim_reqlog *l, const char *method, const char *path, const char *query,
                    unsigned status, const char *auth_policy, const char *note, int64_t time_ms,
                    int64_t duration_ms)
{
    const char *parts[5] = {method, path, query ? query : "", auth_policy ? auth_policy : "",
                            note ? note : ""};
    size_t lens[5], total = 0;
    for (int i = 0; i < 5; i++) {
        lens[i] = strnlen(parts[i], 1024);
        total += lens[i] + 1;
    }
    char *block = malloc(total);
    if (!block) {
        return;
    }
    char *ptrs[5];
    char *p = block;
    for (int i = 0; i < 5; i++) {
        memcpy(p, parts[i], lens[i]);
        p[lens[i]] = '\0';
        ptrs[i] = p;
        p += lens[i] + 1;
    }
    pthread_mutex_lock(&l->mu);
    struct sim_log_entry *e = &l->ring[l->head];
    entry_free(e);
    e->seq = l->next_seq++;
    e->method = ptrs[0];
    e->path = ptrs[1];
    e->query = ptrs[2];
    e->auth_policy = ptrs[3];
    e->note = ptrs[4];
    e->status = status;
    e->time_ms = time_ms;
    e->duration_ms = duration_ms;
    l->head = (l->head + 1) % l->cap;
    if (l->count < l->cap) {
        l->count++;
    }
    pthread_mutex_unlock(&l->mu);
}

json_t *sim_reqlog_json(struct sim_reqlog *l, uint64_t since)
{
    json_t *arr = json_array();
    pthread_mutex_lock(&l->mu);
    size_t first = (l->head + l->cap - l->count) % l->cap;
    for (size_t k = 0; k < l->count; k++) {
        const struct sim_log_entry *e = &l->ring[(first + k) % l->cap];
        if (e->seq <= since) {
            continue;
        }
        json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:I, s:s?, s:I, s:I}", "seq",
                              (json_int_t)e->seq, "method", e->method, "path", e->path, "query",
                              e->query, "status", (json_int_t)e->status, "auth_policy",
                              e->auth_policy[0] ? e->auth_policy : NULL, "time_ms",
                              (json_int_t)e->time_ms, "duration_ms", (json_int_t)e->duration_ms);
        if (e->note[0]) {
            json_object_set_new(o, "note", json_string(e->note));
        }
        json_array_append_new(arr, o);
    }
    json_int_t next = (json_int_t)l->next_seq;
    pthread_mutex_unlock(&l->mu);
    return json_pack("{s:o, s:I}", "requests", arr, "next_seq", next);
}

/* ---- counters ----------------------------------------------------------------------------------
 */

static const char *const rclass_names[SIM_RCLASS_COUNT] = {
    [SIM_RCLASS_REGISTRY] = "registry",
    [SIM_RCLASS_BULK] = "bulk",
    [SIM_RCLASS_STATISTICS] = "statistics",
    [SIM_RCLASS_TWIN_READ] = "twin_read",
    [SIM_RCLASS_TWIN_UPDATE] = "twin_update",
    [SIM_RCLASS_QUERY] = "query",
    [SIM_RCLASS_DEVICE] = "device",
    [SIM_RCLASS_CONTROL] = "control",
    [SIM_RCLASS_OTHER] = "other",
};

const char *sim_rclass_name(enum sim_rclass c)
{
    return rclass_names[c];
}

void sim_stats_reset(struct sim_stats *st)
{
    for (int i = 0; i < SIM_RCLASS_COUNT; i++) {
        atomic_store(&st->by_class[i], 0);
    }
    atomic_store(&st->total, 0);
    atomic_store(&st->throttled, 0);
    atomic_store(&st->faults_injected, 0);
    atomic_store(&st->drops, 0);
    atomic_store(&st->unauthorized, 0);
    atomic_store(&st->sent_429, 0);
    atomic_store(&st->sent_4xx, 0);
    atomic_store(&st->sent_5xx, 0);
}

json_t *sim_stats_json(struct sim *s)
{
    struct sim_stats *st = &s->stats;
    json_t *by = json_object();
    for (int i = 0; i < SIM_RCLASS_COUNT; i++) {
        json_object_set_new(by, rclass_names[i],
                            json_integer((json_int_t)atomic_load(&st->by_class[i])));
    }
    pthread_rwlock_rdlock(&s->reg.lock);
    json_int_t devices = (json_int_t)s->reg.count;
    pthread_rwlock_unlock(&s->reg.lock);
    return json_pack(
        "{s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o}", "requests_total",
        (json_int_t)atomic_load(&st->total), "by_class", by, "throttled",
        (json_int_t)atomic_load(&st->throttled), "sent_429", (json_int_t)atomic_load(&st->sent_429),
        "sent_4xx", (json_int_t)atomic_load(&st->sent_4xx), "sent_5xx",
        (json_int_t)atomic_load(&st->sent_5xx), "faults_injected",
        (json_int_t)atomic_load(&st->faults_injected), "drops", (json_int_t)atomic_load(&st->drops),
        "unauthorized", (json_int_t)atomic_load(&st->unauthorized), "devices", devices,
        "latency_ms", (json_int_t)atomic_load(&s->global_latency_ms), "throttle",
        sim_throttle_json(&s->throttle), "faults", sim_faults_json(&s->faults));
}
