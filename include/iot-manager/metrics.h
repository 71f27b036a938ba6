/* Prometheus metrics: counters and histograms keyed by (family, labels), rendered in the text
 * exposition format 0.0.4. One registry per process, created by main and handed to the
 * components that record (no global state). Recording is thread-safe and cheap: a short
 * critical section around a hash-table lookup, no allocation after a series first appears.
 *
 * Families are declared in a static table in metrics.c (name, type, help, histogram buckets);
 * recording to an unknown family is ignored. Label text is given preformatted, e.g.
 * `route="/x",status="200"`; callers quote values with metrics_label_escape().
 */
#ifndef IOT_MANAGER_METRICS_H
#define IOT_MANAGER_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct metrics;

/* NULL on OOM; every function accepts a NULL registry and then does nothing. */
struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

void metrics_counter_add(struct metrics *m, const char *family, const char *labels, double v);
/* Sets a counter maintained elsewhere (e.g. a client's own totals) to its current value. */
void metrics_counter_set(struct metrics *m, const char *family, const char *labels, double v);
void metrics_gauge_set(struct metrics *m, const char *family, const char *labels, double v);
void metrics_observe(struct metrics *m, const char *family, const char *labels, double v);

/* Escapes a label value (\\, \", \n) into `out` (bounded, always NUL-terminated). */
void metrics_label_escape(const char *value, char *out, size_t cap);

/* Renders every series; returns a malloc'd string (caller frees) or NULL on OOM. */
char *metrics_render(struct metrics *m);

#endif
