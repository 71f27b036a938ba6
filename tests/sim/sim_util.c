/* Small helpers: clocks, Azure's time formats, strict base64, URL decoding, id rules, keys. */
#include "sim.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

int64_t sim_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t sim_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void sim_format_time(int64_t us, char out[40])
{
    if (us <= 0) {
        strcpy(out, "0001-01-01T00:00:00Z");
        return;
    }
    time_t secs = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[24];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    /* .NET prints 7 fractional digits (100 ns ticks); we only have µs, so the last is 0. */
    snprintf(out, 40, "%s.%06ld0Z", base, (long)(us % 1000000));
}

void sim_random_hex(char out[33])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char rnd[16];
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        memset(rnd, 0, sizeof rnd);
    }
    for (size_t i = 0; i < sizeof rnd; i++) {
        out[2 * i] = digits[rnd[i] >> 4];
        out[2 * i + 1] = digits[rnd[i] & 15];
    }
    out[32] = '\0';
}

void sim_tracking(char out[96])
{
    char hex[33];
    sim_random_hex(hex);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%m/%d/%Y %H:%M:%S", &tm);
    snprintf(out, 96, "Tracking ID:%s-G:0-TimeStamp:%s", hex, ts);
}

size_t sim_b64_encode(const unsigned char *in, size_t n, char *out)
{
    return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

static bool b64_char(int c)
{
    return isalnum(c) || c == '+' || c == '/';
}

bool sim_b64_decode(const char *in, unsigned char *out, size_t out_cap, size_t *out_len)
{
    size_t n = strlen(in);
    if (n == 0 || n % 4 != 0 || n > 4096) {
        return false;
    }
    size_t pad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '=') {
            if (i < n - 2) {
                return false;
            }
            pad++;
        } else if (pad || !b64_char(c)) {
            return false;
        }
    }
    unsigned char tmp[3072 + 4];
    int got = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n);
    if (got < 0 || (size_t)got < pad) {
        return false;
    }
    size_t len = (size_t)got - pad; /* EVP_DecodeBlock counts the padding bytes too */
    if (len > out_cap) {
        return false;
    }
    /* Canonical form only: a string Azure would compare as different must not decode equal. */
    char again[4100];
    sim_b64_encode(tmp, len, again);
    if (strcmp(again, in) != 0) {
        return false;
    }
    memcpy(out, tmp, len);
    *out_len = len;
    return true;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

bool sim_url_decode(const char *in, size_t n, bool plus_is_space, char *out, size_t out_cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (o + 1 >= out_cap) {
            return false;
        }
        char c = in[i];
        if (c == '%' && i + 2 < n) {
            int h = hexval((unsigned char)in[i + 1]);
            int l = hexval((unsigned char)in[i + 2]);
            if (h >= 0 && l >= 0) {
                out[o++] = (char)(h * 16 + l);
                i += 2;
                continue;
            }
        }
        out[o++] = (plus_is_space && c == '+') ? ' ' : c;
    }
    out[o] = '\0';
    return true;
}

bool sim_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > SIM_ID_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (isalnum(c)) {
            continue;
        }
        if (!strchr("-:.+%_#*?!(),=@;$'", c) || c == '\0') {
            return false;
        }
    }
    return true;
}

bool sim_key_generate(struct sim_key *k)
{
    k->len = 32;
    if (RAND_bytes(k->raw, (int)k->len) != 1) {
        return false;
    }
    sim_b64_encode(k->raw, k->len, k->b64);
    return true;
}

bool sim_key_parse(const char *b64, size_t min_len, struct sim_key *k)
{
    if (strlen(b64) >= sizeof k->b64) {
        return false;
    }
    size_t len = 0;
    if (!sim_b64_decode(b64, k->raw, sizeof k->raw, &len) || len < min_len || len == 0) {
        return false;
    }
    k->len = len;
    strcpy(k->b64, b64);
    return true;
}

int sim_strcasecmp(const char *a, const char *b)
{
    for (;; a++, b++) {
        int ca = tolower((unsigned char)*a);
        int cb = tolower((unsigned char)*b);
        if (ca != cb || ca == 0) {
            return ca - cb;
        }
    }
}

char *sim_json_take_dump(json_t *j)
{
    if (!j) {
        return NULL;
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(j);
    return s;
}
