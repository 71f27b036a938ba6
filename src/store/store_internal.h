/* Private to the store layer: what both adapters share (the event log's `data`, list growth).
 *
 * Mender's Go service keeps the two time fields of a device event (`created_ts` and each
 * `auth_sets[].ts`) as time.Time, so MongoDB holds them as BSON dates with millisecond precision
 * and they come back as RFC 3339 text in UTC ("Z") with the fraction trimmed of trailing zeros
 * (Go's RFC3339Nano). Both adapters store those fields that way, so an event reads back the
 * same whichever adapter kept it. Every other field is kept as it is. */
#ifndef IOTM_STORE_INTERNAL_H
#define IOTM_STORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <jansson.h>

/* "-292275055-05-16T16:47:04.192Z" is the longest a millisecond count can make. */
#define STORE_RFC3339_MAX 40

/* Parses an RFC 3339 date-time "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm)" (what Go's
 * time.Time accepts from JSON) into Unix milliseconds, the fraction cut to milliseconds as a
 * BSON date cuts it. False for anything else (the field is then kept as a string). */
bool store_rfc3339_parse(const char *text, int64_t *ms);

/* Formats `ms` in UTC as Go's RFC3339Nano does: "2024-01-02T03:04:05.12Z", no fraction when it
 * is zero. */
void store_rfc3339_format(int64_t ms, char out[STORE_RFC3339_MAX]);

/* Where a value sits in an event's `data`, so the walkers know which keys are time fields. */
enum store_data_pos {
    STORE_DATA_TOP,       /* the data object itself */
    STORE_DATA_AUTH_SETS, /* the data.auth_sets array */
    STORE_DATA_AUTH_SET,  /* one element of it */
    STORE_DATA_OTHER,     /* anywhere else: no time fields */
};

/* Position of the member `key` (NULL for an array element) of a value at `pos`; *is_time tells
 * whether that member is one of the time fields. */
enum store_data_pos store_data_child(enum store_data_pos pos, const char *key, bool *is_time);

/* A deep copy of `data` with every time field that holds RFC 3339 text rewritten to its
 * canonical millisecond form (new reference, caller-owned; NULL when `data` is NULL or memory
 * runs out — *nomem tells the two apart). */
json_t *store_event_data_canonical(const json_t *data, bool *nomem);

/* `items` (an array of *cap elements of `size` bytes) with room for one more after `len`: the
 * same array, a larger one (the old one then freed), or NULL when memory runs out (the old one
 * then untouched). Both adapters build their result lists with it. */
static inline void *store_grow(void *items, size_t *cap, size_t len, size_t size)
{
    if (len < *cap)
        return items;
    size_t ncap = *cap ? *cap * 2 : 4;
    if (ncap > SIZE_MAX / size)
        return NULL;
    void *grown = realloc(items, ncap * size);
    if (grown)
        *cap = ncap;
    return grown;
}

#endif
