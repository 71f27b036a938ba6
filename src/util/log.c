#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "iot-manager/log.h"

/* Set once before threads start; read-only afterwards (process configuration). */
static enum log_level log_threshold = LOG_LEVEL_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

bool log_level_parse(const char *text, enum log_level *out)
{
    static const struct {
        const char *name;
        enum log_level level;
    } names[] = {
        {"debug", LOG_LEVEL_DEBUG},  {"info", LOG_LEVEL_INFO},   {"warn", LOG_LEVEL_WARN},
        {"warning", LOG_LEVEL_WARN}, {"error", LOG_LEVEL_ERROR},
    };
    if (!text)
        return false;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(text, names[i].name) == 0) {
            *out = names[i].level;
            return true;
        }
    }
    return false;
}

void log_set_level(enum log_level level)
{
    log_threshold = level;
}

enum log_level log_get_level(void)
{
    return log_threshold;
}

static void format_now(char *out, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

/* One write(2) per line: records from different threads never interleave. Most records fit
 * the stack buffer; a larger one is serialised a second time into the heap. */
static void emit(const json_t *record)
{
    enum { LINE_STACK_CAP = 4096 };
    const size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6);
    char stack[LINE_STACK_CAP];
    char *buf = stack;
    size_t len = json_dumpb(record, stack, sizeof stack - 1, flags);
    if (len == 0)
        return;
    if (len > sizeof stack - 1) {
        buf = malloc(len + 1);
        if (!buf || json_dumpb(record, buf, len, flags) != len)
            goto out;
    }
    buf[len] = '\n';
    ssize_t unused = write(STDERR_FILENO, buf, len + 1);
    (void)unused;
out:
    if (buf != stack)
        free(buf);
}

static json_t *record_new(enum log_level level)
{
    char now[40];
    format_now(now, sizeof now);
    json_t *rec = json_object();
    if (!rec)
        return NULL;
    json_object_set_new(rec, "time", json_string(now));
    json_object_set_new(rec, "level", json_string(level_names[level]));
    return rec;
}

void log_write(enum log_level level, const char *request_id, const char *tenant, const char *fmt,
               ...)
{
    if (level < log_threshold)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    json_t *rec = record_new(level);
    if (!rec)
        return;
    if (request_id && *request_id)
        json_object_set_new(rec, "request_id", json_string(request_id));
    if (tenant)
        json_object_set_new(rec, "tenant", json_string(tenant));
    /* json_string rejects invalid UTF-8; keep the record rather than lose it */
    json_t *m = json_string(msg);
    json_object_set_new(rec, "msg", m ? m : json_string("(message not valid UTF-8)"));
    emit(rec);
    json_decref(rec);
}

json_t *log_record_new(enum log_level level)
{
    if (level < log_threshold)
        return NULL;
    return record_new(level);
}

void log_record_emit(json_t *record)
{
    if (!record)
        return;
    emit(record);
    json_decref(record);
}
