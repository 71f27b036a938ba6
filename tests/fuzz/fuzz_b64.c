/* Fuzzes the base64 decoders: b64_decode_std() (SharedAccessKey, Go's StdEncoding) and
 * b64_decode_any() (AES key settings, JWT segments), and the encoder on the same bytes.
 *
 * Invariants: no decoder writes past `cap` (buffers are exactly sized for AddressSanitizer) or
 * returns more than B64_DECODED_MAX; a decode that needs the whole buffer fails, rather than
 * truncates, with one byte less; a bad offset lies within the input; decoded bytes re-encode to
 * the input (alphabet, padding and CR/LF aside, and up to the unused low bits of the last
 * character) and decode back to themselves; any input read as bytes round-trips through both
 * encodings. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "iot-manager/b64.h"

/* The input as the encoder would write it: CR/LF dropped (std), '=' dropped, URL alphabet
 * mapped to the standard one. Returns its length. */
static size_t normalise(const char *in, size_t len, bool std, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '=' || (std && (c == '\r' || c == '\n')))
            continue;
        out[n++] = c == '-' ? '+' : c == '_' ? '/' : c;
    }
    return n;
}

static int b64_value(char c)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = memchr(alpha, c, 64);
    return p ? (int)(p - alpha) : -1;
}

static void check_decoded(const char *in, size_t len, const uint8_t *out, long n, bool std)
{
    /* re-encode: equal to the input but for the unused bits of the last character */
    size_t cap = B64_ENCODED_LEN((size_t)n) + 1;
    char *enc = malloc(cap);
    char *norm = malloc(len ? len : 1);
    FUZZ_CHECK(enc && norm);
    long elen = b64_encode(out, (size_t)n, enc, cap, false);
    FUZZ_CHECK(elen >= 0);
    size_t enc_n = normalise(enc, (size_t)elen, true, enc);
    size_t norm_n = normalise(in, len, std, norm);
    FUZZ_CHECK(enc_n == norm_n);
    if (enc_n > 0) {
        FUZZ_CHECK(memcmp(enc, norm, enc_n - 1) == 0);
        int a = b64_value(enc[enc_n - 1]);
        int b = b64_value(norm[enc_n - 1]);
        int unused = enc_n % 4 == 2 ? 4 : enc_n % 4 == 3 ? 2 : 0;
        FUZZ_CHECK(a >= 0 && b >= 0 && (a >> unused) == (b >> unused));
    }
    /* and the canonical text decodes to the same bytes */
    uint8_t *again = malloc((size_t)n ? (size_t)n : 1);
    FUZZ_CHECK(again != NULL);
    long elen2 = b64_encode(out, (size_t)n, enc, cap, false);
    FUZZ_CHECK(b64_decode_std(enc, (size_t)elen2, again, (size_t)n, NULL) == n);
    FUZZ_CHECK(n == 0 || memcmp(again, out, (size_t)n) == 0);
    FUZZ_CHECK(b64_decode_any(enc, (size_t)elen2, again, (size_t)n) == n);
    FUZZ_CHECK(n == 0 || memcmp(again, out, (size_t)n) == 0);
    free(again);
    free(norm);
    free(enc);
}

static void run_decoder(const char *in, size_t len, bool std)
{
    size_t cap = B64_DECODED_MAX(len);
    uint8_t *out = malloc(cap ? cap : 1);
    FUZZ_CHECK(out != NULL);
    size_t bad = (size_t)-1;
    long n = std ? b64_decode_std(in, len, out, cap, &bad) : b64_decode_any(in, len, out, cap);
    if (n < 0) {
        if (std)
            FUZZ_CHECK(bad <= len);
    } else {
        FUZZ_CHECK((size_t)n <= cap);
        check_decoded(in, len, out, n, std);
        if (n > 0) {
            /* one byte short: an error, never a silent truncation */
            uint8_t *small = malloc((size_t)n - 1 ? (size_t)n - 1 : 1);
            FUZZ_CHECK(small != NULL);
            long m = std ? b64_decode_std(in, len, small, (size_t)n - 1, NULL)
                         : b64_decode_any(in, len, small, (size_t)n - 1);
            FUZZ_CHECK(m == -1);
            free(small);
        }
    }
    free(out);
}

static void run_encoder(const uint8_t *data, size_t size, bool url)
{
    size_t need = url ? (size * 4 + 2) / 3 : B64_ENCODED_LEN(size);
    char *enc = malloc(need + 1);
    FUZZ_CHECK(enc != NULL);
    FUZZ_CHECK(b64_encode(data, size, enc, need, url) == -1); /* no room for the NUL */
    long n = b64_encode(data, size, enc, need + 1, url);
    FUZZ_CHECK(n == (long)need && enc[n] == '\0');
    uint8_t *back = malloc(size ? size : 1);
    FUZZ_CHECK(back != NULL);
    FUZZ_CHECK(b64_decode_any(enc, (size_t)n, back, size) == (long)size);
    FUZZ_CHECK(size == 0 || memcmp(back, data, size) == 0);
    if (!url) {
        size_t bad = 0;
        FUZZ_CHECK(b64_decode_std(enc, (size_t)n, back, size, &bad) == (long)size);
        FUZZ_CHECK(size == 0 || memcmp(back, data, size) == 0);
    }
    free(back);
    free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* exactly sized, not NUL-terminated: the decoders take a length */
    char *in = malloc(size ? size : 1);
    FUZZ_CHECK(in != NULL);
    memcpy(in, data, size);
    run_decoder(in, size, true);
    run_decoder(in, size, false);
    free(in);
    run_encoder(data, size, false);
    run_encoder(data, size, true);
    return 0;
}
