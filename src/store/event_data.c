/* RFC 3339 times of event data, shared by both store adapters (see store_internal.h). */
#include <stdio.h>
#include <string.h>

#include "store/store_internal.h"

#define MS_PER_DAY 86400000LL

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* The inverse of days_from_civil. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Reads exactly `n` decimal digits at *p and advances past them. */
static bool digits(const char **p, int n, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (unsigned)(c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

static bool expect(const char **p, char c)
{
    if (**p != c)
        return false;
    (*p)++;
    return true;
}

bool store_rfc3339_parse(const char *text, int64_t *ms)
{
    const char *p = text;
    unsigned year, month, day, hour, minute, second;
    if (!p || !digits(&p, 4, &year) || !expect(&p, '-') || !digits(&p, 2, &month) ||
        !expect(&p, '-') || !digits(&p, 2, &day) || !expect(&p, 'T') || !digits(&p, 2, &hour) ||
        !expect(&p, ':') || !digits(&p, 2, &minute) || !expect(&p, ':') || !digits(&p, 2, &second))
        return false;
    if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) || hour > 23 ||
        minute > 59 || second > 59)
        return false;
    unsigned nanos = 0;
    if (*p == '.') {
        p++;
        int n = 0;
        /* as Go: any number of digits, of which the first nine count */
        for (; *p >= '0' && *p <= '9'; p++, n++) {
            if (n < 9)
                nanos = nanos * 10 + (unsigned)(*p - '0');
        }
        if (n == 0)
            return false;
        for (; n < 9; n++)
            nanos *= 10;
    }
    int64_t offset_s = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        unsigned oh, om;
        p++;
        if (!digits(&p, 2, &oh) || !expect(&p, ':') || !digits(&p, 2, &om) || oh > 23 || om > 59)
            return false;
        offset_s = sign * (int64_t)(oh * 3600 + om * 60);
    } else {
        return false;
    }
    if (*p)
        return false;
    int64_t secs =
        days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset_s;
    /* Go's UnixNano()/1e6 truncates towards zero, also before 1970 */
    *ms = secs * 1000 + nanos / 1000000 + (secs < 0 && nanos % 1000000 ? 1 : 0);
    return true;
}

void store_rfc3339_format(int64_t ms, char out[STORE_RFC3339_MAX])
{
    int64_t days = ms / MS_PER_DAY;
    int64_t rem = ms % MS_PER_DAY;
    if (rem < 0) {
        rem += MS_PER_DAY;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    unsigned frac = (unsigned)(rem % 1000);
    int64_t s = rem / 1000;
    int n = snprintf(out, STORE_RFC3339_MAX, "%04lld-%02u-%02uT%02u:%02u:%02u", (long long)y, m, d,
                     (unsigned)(s / 3600), (unsigned)(s / 60 % 60), (unsigned)(s % 60));
    if (n < 0 || n >= STORE_RFC3339_MAX - 6)
        return; /* cannot happen for an int64 count; the text stays cut but terminated */
    if (frac) {
        char f[4];
        snprintf(f, sizeof f, "%03u", frac);
        size_t len = 3;
        while (len > 0 && f[len - 1] == '0')
            len--;
        f[len] = '\0';
        n += snprintf(out + n, (size_t)(STORE_RFC3339_MAX - n), ".%s", f);
    }
    snprintf(out + n, (size_t)(STORE_RFC3339_MAX - n), "Z");
}

enum store_data_pos store_data_child(enum store_data_pos pos, const char *key, bool *is_time)
{
    *is_time = false;
    switch (pos) {
    case STORE_DATA_TOP:
        if (key && strcmp(key, "created_ts") == 0)
            *is_time = true;
        else if (key && strcmp(key, "auth_sets") == 0)
            return STORE_DATA_AUTH_SETS;
        return STORE_DATA_OTHER;
    case STORE_DATA_AUTH_SETS:
        return key ? STORE_DATA_OTHER : STORE_DATA_AUTH_SET;
    case STORE_DATA_AUTH_SET:
        if (key && strcmp(key, "ts") == 0)
            *is_time = true;
        return STORE_DATA_OTHER;
    case STORE_DATA_OTHER:
    default:
        return STORE_DATA_OTHER;
    }
}

/* Rewrites obj[key] in place when it is RFC 3339 text. */
static bool canonical_time(json_t *obj, const char *key, json_t *value)
{
    int64_t ms;
    if (!json_is_string(value) || !store_rfc3339_parse(json_string_value(value), &ms))
        return true;
    char text[STORE_RFC3339_MAX];
    store_rfc3339_format(ms, text);
    return json_object_set_new(obj, key, json_string(text)) == 0;
}

json_t *store_event_data_canonical(const json_t *data, bool *nomem)
{
    *nomem = false;
    if (!data)
        return NULL;
    json_t *copy = json_deep_copy(data);
    if (!copy) {
        *nomem = true;
        return NULL;
    }
    if (!json_is_object(copy))
        return copy;
    bool ok = canonical_time(copy, "created_ts", json_object_get(copy, "created_ts"));
    json_t *sets = json_object_get(copy, "auth_sets");
    size_t i;
    json_t *set;
    if (json_is_array(sets)) {
        json_array_foreach(sets, i, set)
        {
            if (ok && json_is_object(set))
                ok = canonical_time(set, "ts", json_object_get(set, "ts"));
        }
    }
    if (!ok) {
        json_decref(copy);
        *nomem = true;
        return NULL;
    }
    return copy;
}
