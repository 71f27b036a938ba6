#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "iot-manager/metrics.h"

enum family_type { FAMILY_COUNTER, FAMILY_GAUGE, FAMILY_HISTOGRAM };

#define MAX_BUCKETS 14

struct family {
    const char *name;
    enum family_type type;
    const char *help;
    const double *buckets; /* histograms: upper bounds, ascending; +Inf implied */
    size_t nbuckets;
};

static const double latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,  5,     10};

#define HIST(name, help)                                                                           \
    {                                                                                              \
        name, FAMILY_HISTOGRAM, help, latency_buckets, MAX_BUCKETS                                 \
    }

/* Every metric the service exports. */
static const struct family families[] = {
    {"iot_manager_http_requests_total", FAMILY_COUNTER, "HTTP requests by route, method and status",
     NULL, 0},
    HIST("iot_manager_http_request_duration_seconds", "HTTP request latency by route"),
    {"iot_manager_events_received_total", FAMILY_COUNTER,
     "Lifecycle events accepted by the internal API (stored in the queue), by kind", NULL, 0},
    {"iot_manager_events_applied_total", FAMILY_COUNTER,
     "Lifecycle events whose effect is applied, by kind", NULL, 0},
    {"iot_manager_events_retried_total", FAMILY_COUNTER,
     "Lifecycle event deliveries given back for a later retry, by kind", NULL, 0},
    {"iot_manager_events_dead_lettered_total", FAMILY_COUNTER,
     "Lifecycle events moved to the dead-letter stream, by kind", NULL, 0},
    {"iot_manager_events_requeued_total", FAMILY_COUNTER,
     "Lifecycle events requeued with a fresh delivery budget because the hub stayed busy, by kind",
     NULL, 0},
    {"iot_manager_hub_requests_total", FAMILY_COUNTER,
     "IoT Hub calls by operation and outcome class", NULL, 0},
    {"iot_manager_hub_ratelimit_wait_seconds_total", FAMILY_COUNTER,
     "Time IoT Hub calls waited for the per-hub rate limiter", NULL, 0},
    {"iot_manager_hub_throttled_total", FAMILY_COUNTER, "429 answers received from IoT Hub", NULL,
     0},
    {"iot_manager_queue_pending", FAMILY_GAUGE,
     "Events in the stream not yet delivered to a worker (consumer lag)", NULL, 0},
    {"iot_manager_queue_ack_pending", FAMILY_GAUGE, "Events delivered and not yet acknowledged",
     NULL, 0},
    {"iot_manager_queue_dead_letters", FAMILY_GAUGE, "Events in the dead-letter stream", NULL, 0},
    HIST("iot_manager_store_operation_duration_seconds", "Store call latency by operation"),
};

#define N_FAMILIES (sizeof families / sizeof families[0])
#define LABELS_MAX 256
#define TABLE_SIZE 1024 /* series; far above what the fixed families produce */

struct series {
    bool used;
    unsigned family;
    char labels[LABELS_MAX];
    double value; /* counter/gauge, or histogram sum */
    uint64_t count;
    uint64_t buckets[MAX_BUCKETS];
};

struct metrics {
    pthread_mutex_t lock;
    struct series table[TABLE_SIZE];
};

struct metrics *metrics_new(void)
{
    struct metrics *m = calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->lock, NULL);
    return m;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static int family_index(const char *name)
{
    for (size_t i = 0; i < N_FAMILIES; i++) {
        if (strcmp(families[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

static uint64_t hash(unsigned family, const char *labels)
{
    uint64_t h = 1469598103934665603ULL ^ family;
    for (const char *p = labels; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

/* Caller holds the lock. NULL when the table is full (the sample is dropped). */
static struct series *series_find(struct metrics *m, unsigned family, const char *labels)
{
    if (strlen(labels) >= LABELS_MAX)
        return NULL;
    size_t i = hash(family, labels) % TABLE_SIZE;
    for (size_t probe = 0; probe < TABLE_SIZE; probe++, i = (i + 1) % TABLE_SIZE) {
        struct series *s = &m->table[i];
        if (!s->used) {
            s->used = true;
            s->family = family;
            strcpy(s->labels, labels); /* length checked above */
            return s;
        }
        if (s->family == family && strcmp(s->labels, labels) == 0)
            return s;
    }
    return NULL;
}

static void record(struct metrics *m, const char *family, const char *labels, double v,
                   enum family_type want)
{
    if (!m)
        return;
    int f = family_index(family);
    if (f < 0 || families[f].type != want)
        return;
    pthread_mutex_lock(&m->lock);
    struct series *s = series_find(m, (unsigned)f, labels ? labels : "");
    if (s) {
        switch (want) {
        case FAMILY_COUNTER:
            s->value += v;
            break;
        case FAMILY_GAUGE:
            s->value = v;
            break;
        case FAMILY_HISTOGRAM:
            s->value += v;
            s->count++;
            for (size_t b = 0; b < families[f].nbuckets; b++) {
                if (v <= families[f].buckets[b])
                    s->buckets[b]++;
            }
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
}

void metrics_counter_add(struct metrics *m, const char *family, const char *labels, double v)
{
    record(m, family, labels, v, FAMILY_COUNTER);
}

void metrics_counter_set(struct metrics *m, const char *family, const char *labels, double v)
{
    /* same storage as a gauge; rendered with the family's counter type */
    if (!m)
        return;
    int f = family_index(family);
    if (f < 0 || families[f].type != FAMILY_COUNTER)
        return;
    pthread_mutex_lock(&m->lock);
    struct series *s = series_find(m, (unsigned)f, labels ? labels : "");
    if (s)
        s->value = v;
    pthread_mutex_unlock(&m->lock);
}

void metrics_gauge_set(struct metrics *m, const char *family, const char *labels, double v)
{
    record(m, family, labels, v, FAMILY_GAUGE);
}

void metrics_observe(struct metrics *m, const char *family, const char *labels, double v)
{
    record(m, family, labels, v, FAMILY_HISTOGRAM);
}

void metrics_label_escape(const char *value, char *out, size_t cap)
{
    size_t o = 0;
    for (const char *p = value ? value : ""; *p && o + 2 < cap; p++) {
        if (*p == '\\' || *p == '"') {
            out[o++] = '\\';
            out[o++] = *p;
        } else if (*p == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

struct text {
    char *buf;
    size_t len, cap;
    bool oom;
};

static void text_printf(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void text_printf(struct text *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *grown = realloc(t->buf, cap);
        if (!grown) {
            t->oom = true;
            return;
        }
        t->buf = grown;
        t->cap = cap;
    }
}

static void series_name(const char *family, const char *suffix, const char *labels,
                        const char *extra, char *out, size_t cap)
{
    bool any = (labels && *labels) || (extra && *extra);
    snprintf(out, cap, "%s%s%s%s%s%s%s", family, suffix, any ? "{" : "", labels ? labels : "",
             labels && *labels && extra && *extra ? "," : "", extra ? extra : "", any ? "}" : "");
}

char *metrics_render(struct metrics *m)
{
    struct text t = {.cap = 4096};
    t.buf = malloc(t.cap);
    if (!t.buf)
        return NULL;
    t.buf[0] = '\0';
    if (m)
        pthread_mutex_lock(&m->lock);
    for (size_t f = 0; f < N_FAMILIES; f++) {
        const struct family *fam = &families[f];
        static const char *const type_names[] = {"counter", "gauge", "histogram"};
        text_printf(&t, "# HELP %s %s\n# TYPE %s %s\n", fam->name, fam->help, fam->name,
                    type_names[fam->type]);
        for (size_t i = 0; m && i < TABLE_SIZE; i++) {
            const struct series *s = &m->table[i];
            if (!s->used || s->family != f)
                continue;
            char name[LABELS_MAX + 128];
            if (fam->type != FAMILY_HISTOGRAM) {
                series_name(fam->name, "", s->labels, NULL, name, sizeof name);
                text_printf(&t, "%s %.17g\n", name, s->value);
                continue;
            }
            for (size_t b = 0; b < fam->nbuckets; b++) {
                char le[32];
                snprintf(le, sizeof le, "le=\"%g\"", fam->buckets[b]);
                series_name(fam->name, "_bucket", s->labels, le, name, sizeof name);
                text_printf(&t, "%s %llu\n", name, (unsigned long long)s->buckets[b]);
            }
            series_name(fam->name, "_bucket", s->labels, "le=\"+Inf\"", name, sizeof name);
            text_printf(&t, "%s %llu\n", name, (unsigned long long)s->count);
            series_name(fam->name, "_sum", s->labels, NULL, name, sizeof name);
            text_printf(&t, "%s %.17g\n", name, s->value);
            series_name(fam->name, "_count", s->labels, NULL, name, sizeof name);
            text_printf(&t, "%s %llu\n", name, (unsigned long long)s->count);
        }
    }
    if (m)
        pthread_mutex_unlock(&m->lock);
    if (t.oom) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
