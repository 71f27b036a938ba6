/* JSON-lines logging to stderr: one write(2) per record, so lines from threads never interleave.
 *
 * Every record has "time", "level" and "msg"; the request id and tenant are added when known.
 * Call sites must not pass secrets (keys, connection strings, tokens): log a masked form instead.
 */
#ifndef IOT_MANAGER_LOG_H
#define IOT_MANAGER_LOG_H

#include <stdbool.h>
#include <jansson.h>

enum log_level { LOG_LEVEL_DEBUG = 0, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* Parses "debug", "info", "warn"/"warning", "error" (case-insensitive). false if unknown. */
bool log_level_parse(const char *text, enum log_level *out);

/* Set once at start-up, before threads start. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* Writes one record. `request_id` and `tenant` may be NULL (omitted). */
void log_write(enum log_level level, const char *request_id, const char *tenant, const char *fmt,
               ...) __attribute__((format(printf, 4, 5)));

/* For records with fields of their own (the access log): a new record with "time" and "level"
 * set, owned by the caller, or NULL when `level` is filtered out (or memory is short), so that
 * a filtered record costs nothing to skip. */
json_t *log_record_new(enum log_level level);

/* Writes `record` as one line and releases it (takes ownership; NULL is ignored). */
void log_record_emit(json_t *record);

#define log_debug(...) log_write(LOG_LEVEL_DEBUG, NULL, NULL, __VA_ARGS__)
#define log_info(...)  log_write(LOG_LEVEL_INFO, NULL, NULL, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_LEVEL_WARN, NULL, NULL, __VA_ARGS__)
#define log_error(...) log_write(LOG_LEVEL_ERROR, NULL, NULL, __VA_ARGS__)

#endif
