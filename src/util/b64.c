#include <string.h>

#include "iot-manager/b64.h"

static const char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

long b64_encode(const uint8_t *in, size_t len, char *out, size_t cap, bool url)
{
    const char *alpha = url ? url_alphabet : std_alphabet;
    size_t need = url ? (len * 4 + 2) / 3 : B64_ENCODED_LEN(len);
    if (cap < need + 1)
        return -1;
    size_t o = 0;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alpha[v >> 18 & 63];
        out[o++] = alpha[v >> 12 & 63];
        out[o++] = alpha[v >> 6 & 63];
        out[o++] = alpha[v & 63];
    }
    size_t rest = len - i;
    if (rest) {
        uint32_t v = (uint32_t)in[i] << 16 | (rest == 2 ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = alpha[v >> 18 & 63];
        out[o++] = alpha[v >> 12 & 63];
        if (rest == 2)
            out[o++] = alpha[v >> 6 & 63];
        if (!url) {
            if (rest == 1)
                out[o++] = '=';
            out[o++] = '=';
        }
    }
    out[o] = '\0';
    return (long)o;
}

/* Value of a character in the given alphabets, or -1. */
static int b64_value(char c, bool std_ok, bool url_ok)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (std_ok && c == '+')
        return 62;
    if (std_ok && c == '/')
        return 63;
    if (url_ok && c == '-')
        return 62;
    if (url_ok && c == '_')
        return 63;
    return -1;
}

/* Shared decoder. `go_std`: Go's StdEncoding, i.e. quanta must be complete, '=' padding is
 * required, and '\r'/'\n' are skipped anywhere; otherwise (b64_decode_any) padding is optional
 * and nothing is skipped. Offsets follow Go's CorruptInputError, including its quirks: an
 * incomplete final quantum is reported at (position - characters in it), a non-'=' after a
 * single '=' at the position of that '=', missing padding at the end of the input. */
static long decode(const char *in, size_t len, uint8_t *out, size_t cap, bool std_ok, bool url_ok,
                   bool go_std, size_t *bad_offset)
{
    size_t o = 0;
    size_t si = 0;
    size_t bad = 0;
    for (;;) {
        int vals[4] = {0, 0, 0, 0};
        int j = 0;
        bool padded = false;
        while (j < 4) {
            if (si == len) {
                if (j == 0)
                    return (long)o;
                if (j == 1 || go_std) {
                    bad = si - (size_t)j;
                    goto corrupt;
                }
                break;
            }
            char c = in[si++];
            int v = b64_value(c, std_ok, url_ok);
            if (v >= 0) {
                vals[j++] = v;
                continue;
            }
            if (go_std && (c == '\n' || c == '\r'))
                continue;
            if (c != '=' || j < 2) {
                bad = si - 1;
                goto corrupt;
            }
            if (j == 2) {
                /* "==" is needed; the first one is consumed */
                while (go_std && si < len && (in[si] == '\n' || in[si] == '\r'))
                    si++;
                if (si == len) {
                    bad = len;
                    goto corrupt;
                }
                if (in[si] != '=') {
                    bad = si - 1;
                    goto corrupt;
                }
                si++;
            }
            while (go_std && si < len && (in[si] == '\n' || in[si] == '\r'))
                si++;
            if (si < len) {
                bad = si; /* data after the padding */
                goto corrupt;
            }
            padded = true;
            break;
        }
        int nbytes = j == 4 ? 3 : j - 1;
        if (o + (size_t)nbytes > cap)
            return -1;
        uint32_t v = (uint32_t)vals[0] << 18 | (uint32_t)vals[1] << 12 | (uint32_t)vals[2] << 6 |
                     (uint32_t)vals[3];
        out[o++] = (uint8_t)(v >> 16);
        if (nbytes > 1)
            out[o++] = (uint8_t)(v >> 8);
        if (nbytes > 2)
            out[o++] = (uint8_t)v;
        if (padded || j < 4)
            return (long)o;
    }
corrupt:
    if (bad_offset)
        *bad_offset = bad;
    return -1;
}

long b64_decode_std(const char *in, size_t len, uint8_t *out, size_t cap, size_t *bad_offset)
{
    return decode(in, len, out, cap, true, false, true, bad_offset);
}

long b64_decode_any(const char *in, size_t len, uint8_t *out, size_t cap)
{
    return decode(in, len, out, cap, true, true, false, NULL);
}
