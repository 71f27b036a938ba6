#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "iot-manager/uuid.h"

const struct uuid UUID_NAMESPACE_OID = {{0x6b, 0xa7, 0xb8, 0x12, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4,
                                         0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8}};

static void uuid_set_version(struct uuid *u, unsigned version)
{
    u->b[6] = (uint8_t)((u->b[6] & 0x0f) | (version << 4));
    u->b[8] = (uint8_t)((u->b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
}

enum iot_err uuid_generate_v4(struct uuid *out)
{
    if (RAND_bytes(out->b, (int)sizeof out->b) != 1)
        return IOT_ERR_INTERNAL;
    uuid_set_version(out, 4);
    return IOT_OK;
}

void uuid_generate_v5(const struct uuid *ns, const char *name, struct uuid *out)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    /* The contract gives this function no way to fail; the only failure is OpenSSL running out
     * of memory for a digest context, after which the service cannot work anyway. Producing a
     * wrong id silently would be worse than stopping. */
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, ns->b, sizeof ns->b) != 1 ||
        EVP_DigestUpdate(ctx, name, strlen(name)) != 1 ||
        EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len < sizeof out->b) {
        fputs("uuid_generate_v5: SHA-1 failed\n", stderr);
        abort();
    }
    EVP_MD_CTX_free(ctx);
    memcpy(out->b, md, sizeof out->b);
    uuid_set_version(out, 5);
}

void uuid_format(const struct uuid *u, char out[UUID_STR_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < sizeof u->b; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[u->b[i] >> 4];
        out[o++] = hex[u->b[i] & 0x0f];
    }
    out[o] = '\0';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool hex_byte(const char *s, uint8_t *out)
{
    int hi = hex_value(s[0]);
    int lo = hex_value(s[1]);
    if (hi < 0 || lo < 0)
        return false;
    *out = (uint8_t)(hi << 4 | lo);
    return true;
}

/* Length of a well-formed UTF-8 sequence at s (at most `avail` bytes), 0 if ill-formed.
 * Stores the code point. Rejects overlong forms, surrogates and values above U+10FFFF as Go's
 * utf8.DecodeRune does. */
static size_t utf8_decode(const unsigned char *s, size_t avail, unsigned long *cp)
{
    size_t n;
    unsigned long min;
    unsigned long v;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    } else if ((s[0] & 0xe0) == 0xc0) {
        n = 2, min = 0x80, v = s[0] & 0x1fu;
    } else if ((s[0] & 0xf0) == 0xe0) {
        n = 3, min = 0x800, v = s[0] & 0x0fu;
    } else if ((s[0] & 0xf8) == 0xf0) {
        n = 4, min = 0x10000, v = s[0] & 0x07u;
    } else {
        return 0;
    }
    if (n > avail)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (s[i] & 0x3fu);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return n;
}

/* Whether Go's strconv.IsPrint would reject a non-ASCII code point. Approximate: covers the
 * C1 controls, the non-ASCII spaces and separators, the common format characters, private use
 * and non-characters; a few rarer unassigned or format code points are printed as they are. */
static bool go_unprintable(unsigned long cp)
{
    return cp <= 0xa0 || cp == 0xad || cp == 0x1680 || cp == 0x180e ||
           (cp >= 0x2000 && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f) ||
           (cp >= 0x205f && cp <= 0x206f) || cp == 0x3000 || cp == 0xfeff ||
           (cp >= 0xe000 && cp <= 0xf8ff) || (cp >= 0xfff9 && cp <= 0xfffb) ||
           (cp & 0xfffe) == 0xfffe || cp >= 0xf0000;
}

/* Go's %q of a short byte string (strconv.Quote), for google/uuid's "invalid urn prefix" text.
 * Exact for ASCII and ill-formed bytes; see go_unprintable() for the rest. */
static void go_quote(const char *in, size_t len, char *out, size_t cap)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t o = 0;
#define EMIT(...)                                                                                  \
    do {                                                                                           \
        int n_ = snprintf(out + o, cap - o, __VA_ARGS__);                                          \
        if (n_ < 0 || (size_t)n_ >= cap - o)                                                       \
            return;                                                                                \
        o += (size_t)n_;                                                                           \
    } while (0)
    out[0] = '\0';
    EMIT("\"");
    for (size_t i = 0; i < len;) {
        unsigned long cp = 0;
        size_t w = utf8_decode(s + i, len - i, &cp);
        if (w == 0) {
            EMIT("\\x%02x", s[i]);
            i++;
            continue;
        }
        if (w > 1) {
            if (go_unprintable(cp) && cp > 0xffff)
                EMIT("\\U%08lx", cp);
            else if (go_unprintable(cp))
                EMIT("\\u%04lx", cp);
            else
                EMIT("%.*s", (int)w, (const char *)s + i);
            i += w;
            continue;
        }
        i++;
        switch (cp) {
        case '"':
            EMIT("\\\"");
            break;
        case '\\':
            EMIT("\\\\");
            break;
        case '\a':
            EMIT("\\a");
            break;
        case '\b':
            EMIT("\\b");
            break;
        case '\f':
            EMIT("\\f");
            break;
        case '\n':
            EMIT("\\n");
            break;
        case '\r':
            EMIT("\\r");
            break;
        case '\t':
            EMIT("\\t");
            break;
        case '\v':
            EMIT("\\v");
            break;
        default:
            if (cp < 0x20 || cp == 0x7f)
                EMIT("\\x%02lx", cp);
            else
                EMIT("%c", (int)cp);
        }
    }
    EMIT("\"");
#undef EMIT
}

enum iot_err uuid_parse(const char *text, struct uuid *out, struct iot_error *err)
{
    static const size_t offsets[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};
    size_t len = strlen(text);
    const char *s = text;
    struct uuid u;

    switch (len) {
    case 36:
        break;
    case 36 + 9: {
        static const char prefix[] = "urn:uuid:";
        for (size_t i = 0; i < 9; i++) {
            char c = s[i];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (c != prefix[i]) {
                char quoted[9 * 6 + 3];
                go_quote(s, 9, quoted, sizeof quoted);
                return iot_error_set(err, IOT_ERR_INVALID, "invalid urn prefix: %s", quoted);
            }
        }
        s += 9;
        break;
    }
    case 36 + 2:
        /* google/uuid v1.6 skips the first character and never looks at either brace */
        s += 1;
        break;
    case 32:
        for (size_t i = 0; i < 16; i++) {
            if (!hex_byte(s + 2 * i, &u.b[i]))
                return iot_error_set(err, IOT_ERR_INVALID, "invalid UUID format");
        }
        *out = u;
        return IOT_OK;
    default:
        return iot_error_set(err, IOT_ERR_INVALID, "invalid UUID length: %zu", len);
    }

    if (s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
        return iot_error_set(err, IOT_ERR_INVALID, "invalid UUID format");
    for (size_t i = 0; i < 16; i++) {
        if (!hex_byte(s + offsets[i], &u.b[i]))
            return iot_error_set(err, IOT_ERR_INVALID, "invalid UUID format");
    }
    *out = u;
    return IOT_OK;
}

bool uuid_equal(const struct uuid *a, const struct uuid *b)
{
    return memcmp(a->b, b->b, sizeof a->b) == 0;
}
