/* Twin property rules (azure-iothub.md §5.2) and the recursive merge with $metadata stamps. */
#include "sim.h"

#include <stdio.h>
#include <string.h>

#define TWIN_KEY_MAX_BYTES   1024
#define TWIN_VALUE_MAX_BYTES 4096
#define TWIN_MAX_DEPTH       10
#define TWIN_INT_MIN         (-4503599627370496LL) /* -2^52 */
#define TWIN_INT_MAX         4503599627370495LL    /* 2^52 - 1 */

static bool key_ok(const char *key, char *why, size_t n)
{
    size_t len = strlen(key);
    if (len == 0) {
        snprintf(why, n, "Property name cannot be empty");
        return false;
    }
    if (len > TWIN_KEY_MAX_BYTES) {
        snprintf(why, n, "Property name length exceeds %d bytes", TWIN_KEY_MAX_BYTES);
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        /* C0 controls and DEL; C1 controls are U+0080..U+009F = 0xC2 0x80..0x9F in UTF-8. */
        bool c1 = c == 0xC2 && i + 1 < len && (unsigned char)key[i + 1] >= 0x80 &&
                  (unsigned char)key[i + 1] <= 0x9F;
        if (c < 0x20 || c == 0x7F || c1 || c == '.' || c == '$' || c == ' ') {
            snprintf(why, n,
                     "Property name '%.64s' contains an invalid character "
                     "('.', '$', ' ' or a control character)",
                     key);
            return false;
        }
    }
    return true;
}

static bool value_ok(const json_t *v, int depth, bool is_patch, bool arrays, char *why, size_t n);

static bool object_ok(const json_t *obj, int depth, bool is_patch, bool arrays, char *why, size_t n)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        if (!key_ok(key, why, n) || !value_ok(v, depth, is_patch, arrays, why, n)) {
            return false;
        }
    }
    return true;
}

static bool value_ok(const json_t *v, int depth, bool is_patch, bool arrays, char *why, size_t n)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        if (depth + 1 > TWIN_MAX_DEPTH) {
            snprintf(why, n, "Nesting depth of twin properties exceeds the maximum of %d",
                     TWIN_MAX_DEPTH);
            return false;
        }
        return object_ok(v, depth + 1, is_patch, arrays, why, n);
    case JSON_ARRAY: {
        if (!arrays) {
            snprintf(why, n, "Arrays are not supported in twin properties");
            return false;
        }
        if (depth + 1 > TWIN_MAX_DEPTH) {
            snprintf(why, n, "Nesting depth of twin properties exceeds the maximum of %d",
                     TWIN_MAX_DEPTH);
            return false;
        }
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            if (json_is_null(e)) {
                snprintf(why, n, "Arrays in twin properties cannot contain null");
                return false;
            }
            if (!value_ok(e, depth + 1, false, arrays, why, n)) {
                return false;
            }
        }
        return true;
    }
    case JSON_STRING:
        if (json_string_length(v) > TWIN_VALUE_MAX_BYTES) {
            snprintf(why, n, "Property value length exceeds %d bytes", TWIN_VALUE_MAX_BYTES);
            return false;
        }
        return true;
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        if (i < TWIN_INT_MIN || i > TWIN_INT_MAX) {
            snprintf(why, n, "Integer value %lld is outside the supported range [-2^52, 2^52-1]",
                     (long long)i);
            return false;
        }
        return true;
    }
    case JSON_REAL:
    case JSON_TRUE:
    case JSON_FALSE:
        return true;
    case JSON_NULL:
        (void)is_patch; /* null deletes in a patch and is dropped from a replacement */
        return true;
    }
    return false;
}

bool sim_twin_validate(const json_t *props, bool is_patch, bool arrays, char *why, size_t n)
{
    if (!json_is_object(props)) {
        snprintf(why, n, "Twin properties must be a JSON object");
        return false;
    }
    return object_ok(props, 0, is_patch, arrays, why, n);
}

/* UTF-8 characters excluding C0/C1 controls, as Azure counts them. */
static size_t string_units(const char *s, size_t len)
{
    size_t count = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xC0) == 0x80) {
            continue; /* continuation byte */
        }
        if (c < 0x20 || c == 0x7F) {
            continue;
        }
        if (c == 0xC2 && i + 1 < len && (unsigned char)s[i + 1] >= 0x80 &&
            (unsigned char)s[i + 1] <= 0x9F) {
            continue;
        }
        count++;
    }
    return count;
}

static size_t value_size(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return sim_twin_size(v);
    case JSON_ARRAY: {
        size_t total = 0, i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            total += value_size(e);
        }
        return total;
    }
    case JSON_STRING:
        return string_units(json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
    case JSON_REAL:
        return 8;
    case JSON_TRUE:
    case JSON_FALSE:
        return 4;
    case JSON_NULL:
        return 0;
    }
    return 0;
}

size_t sim_twin_size(const json_t *props)
{
    size_t total = 0;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)props, key, v)
    {
        total += string_units(key, strlen(key)) + value_size(v);
    }
    return total;
}

static void stamp(json_t *meta, const char *when, long long version)
{
    json_object_set_new(meta, "$lastUpdated", json_string(when));
    if (version >= 0) {
        json_object_set_new(meta, "$lastUpdatedVersion", json_integer(version));
    }
}

static json_t *leaf_meta(const char *when, long long version)
{
    json_t *m = json_object();
    stamp(m, when, version);
    return m;
}

void sim_twin_merge(json_t *target, json_t *meta, const json_t *patch, const char *when,
                    long long version)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)patch, key, v)
    {
        if (json_is_null(v)) {
            json_object_del(target, key);
            json_object_del(meta, key);
            continue;
        }
        json_t *cur = json_object_get(target, key);
        if (json_is_object(v)) {
            if (!json_is_object(cur)) { /* a leaf (or nothing) becomes an object */
                cur = json_object();
                json_object_set_new(target, key, cur);
                json_object_set_new(meta, key, json_object());
            }
            json_t *m = json_object_get(meta, key);
            if (!json_is_object(m)) { /* tags merge into a scratch metadata tree */
                m = json_object();
                json_object_set_new(meta, key, m);
            }
            sim_twin_merge(cur, m, v, when, version);
        } else {
            json_object_set_new(target, key, json_deep_copy(v));
            json_object_set_new(meta, key, leaf_meta(when, version));
        }
    }
    stamp(meta, when, version);
}

json_t *sim_twin_meta_new(const json_t *props, const char *when, long long version)
{
    json_t *meta = json_object();
    stamp(meta, when, version);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)props, key, v)
    {
        if (json_is_object(v)) {
            json_object_set_new(meta, key, sim_twin_meta_new(v, when, version));
        } else {
            json_object_set_new(meta, key, leaf_meta(when, version));
        }
    }
    return meta;
}

void sim_twin_strip_meta(json_t *props)
{
    if (json_is_object(props)) {
        json_object_del(props, "$metadata");
        json_object_del(props, "$version");
    }
}
