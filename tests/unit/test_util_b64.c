/* Base64 against Go's encoding/base64: StdEncoding for b64_decode_std (offsets below are what
 * Go 1.2x's CorruptInputError reports for the same input), RawURLEncoding-style for the URL
 * encoder, and the lenient decoder for either alphabet. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "iot-manager/b64.h"

/* Go: base64.StdEncoding.EncodeToString([]byte("abcdefghij"[:n])) */
static const char *const std_of_prefix[] = {
    "",         "YQ==",         "YWI=",         "YWJj",         "YWJjZA==",         "YWJjZGU=",
    "YWJjZGVm", "YWJjZGVmZw==", "YWJjZGVmZ2g=", "YWJjZGVmZ2hp", "YWJjZGVmZ2hpag==",
};

static void test_std_round_trip_0_to_10(void **state)
{
    (void)state;
    const char *src = "abcdefghij";
    for (size_t n = 0; n <= 10; n++) {
        char enc[32];
        uint8_t dec[16];
        long len = b64_encode((const uint8_t *)src, n, enc, sizeof enc, false);
        assert_int_equal(len, (long)B64_ENCODED_LEN(n));
        assert_string_equal(enc, std_of_prefix[n]);
        size_t bad = 999;
        long dlen = b64_decode_std(enc, (size_t)len, dec, sizeof dec, &bad);
        assert_int_equal(dlen, (long)n);
        assert_memory_equal(dec, src, n);
        assert_int_equal(bad, 999); /* untouched on success */
        assert_true((size_t)dlen <= B64_DECODED_MAX((size_t)len));
        /* the lenient decoder takes padded input too */
        assert_int_equal(b64_decode_any(enc, (size_t)len, dec, sizeof dec), (long)n);
        assert_memory_equal(dec, src, n);
    }
}

static void test_all_byte_values(void **state)
{
    (void)state;
    uint8_t all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    char enc[B64_ENCODED_LEN(256) + 1];
    uint8_t dec[256];
    long len = b64_encode(all, sizeof all, enc, sizeof enc, false);
    assert_int_equal(len, 344);
    assert_memory_equal(enc, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v",
                        64);
    assert_string_equal(enc + 320, "8PHy8/T19vf4+fr7/P3+/w==");
    assert_int_equal(b64_decode_std(enc, (size_t)len, dec, sizeof dec, NULL), 256);
    assert_memory_equal(dec, all, 256);

    long ulen = b64_encode(all, sizeof all, enc, sizeof enc, true);
    assert_int_equal(ulen, 342);
    assert_string_equal(enc + 320, "8PHy8_T19vf4-fr7_P3-_w");
    assert_null(strchr(enc, '='));
    assert_int_equal(b64_decode_any(enc, (size_t)ulen, dec, sizeof dec), 256);
    assert_memory_equal(dec, all, 256);
    /* the strict decoder knows only the standard alphabet */
    size_t bad = 0;
    assert_int_equal(b64_decode_std(enc, (size_t)ulen, dec, sizeof dec, &bad), -1);
}

static void test_url_encoding_without_padding(void **state)
{
    (void)state;
    /* Go: base64.RawURLEncoding.EncodeToString */
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"", ""},
        {"a", "YQ"},
        {"ab", "YWI"},
        {"abc", "YWJj"},
        {"\xfb\xff", "-_8"},
        {"\xfb\xef\xbe", "----"},
        {"\xff\xff\xff", "____"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char enc[16];
        uint8_t dec[16];
        size_t n = strlen(cases[i].in);
        long len = b64_encode((const uint8_t *)cases[i].in, n, enc, sizeof enc, true);
        assert_int_equal(len, (long)strlen(cases[i].out));
        assert_string_equal(enc, cases[i].out);
        assert_int_equal(b64_decode_any(enc, (size_t)len, dec, sizeof dec), (long)n);
        assert_memory_equal(dec, cases[i].in, n);
    }
}

struct bad_case {
    const char *in;
    size_t offset; /* Go: "illegal base64 data at input byte N" */
};

static void test_std_illegal_input_offsets(void **state)
{
    (void)state;
    static const struct bad_case cases[] = {
        {"YQ", 0},       /* missing padding */
        {"YWI", 0},      /* missing padding */
        {"YQ=", 3},      /* half the padding */
        {"YQ=A", 2},     /* Go reports the first '=' */
        {"YQ==YQ==", 4}, /* data after padding */
        {"YWI=x", 4},    /* data after padding */
        {"=", 0},        /* padding first */
        {"Y===", 1},     /* padding after one character */
        {"YW=j", 2},     /* '=' then data */
        {"Y", 0},        /* lone character */
        {"YWJjY", 4},    /* lone character in the last quantum */
        {"YWJjYQ", 4},   /* unpadded last quantum */
        {"YW Jj", 2},    /* spaces are not skipped */
        {"YQ=\n", 4},    /* newline does not complete the padding */
        {"YWJ\njY", 5},  /* Go's quirk: position minus characters in the quantum */
        {"Y\nQ", 1},     /* idem */
        {"YWJj-_8=", 4}, /* URL alphabet */
        {"YWJjYWJjYWJj!WJj", 12},
        {"YWJjYWJjYWJjYWJjYWJj$", 20},
        {"YWJjYWJjYWJjYWJjYWJjY", 20},
        {"YWJj\x80", 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t dec[32];
        size_t bad = 999;
        size_t len = strlen(cases[i].in);
        long r = b64_decode_std(cases[i].in, len, dec, sizeof dec, &bad);
        if (r != -1 || bad != cases[i].offset)
            fail_msg("case %zu \"%s\": got %ld at %zu, want -1 at %zu", i, cases[i].in, r, bad,
                     cases[i].offset);
    }
    /* an embedded NUL is an illegal byte, not the end */
    uint8_t dec[4];
    size_t bad = 999;
    assert_int_equal(b64_decode_std("YW\0j", 4, dec, sizeof dec, &bad), -1);
    assert_int_equal(bad, 2);
    /* no offset wanted: still an error */
    assert_int_equal(b64_decode_std("YQ=A", 4, dec, sizeof dec, NULL), -1);
}

static void test_std_skips_newlines_like_go(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"YW\nJj", "abc"}, {"YQ=\n=", "a"}, {"YQ==\n", "a"},
        {"\nYQ==", "a"},   {"YQ\n==", "a"}, {"YWJj\r\nYWJj", "abcabc"},
        {"\r\n", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t dec[16];
        size_t n = strlen(cases[i].out);
        long r = b64_decode_std(cases[i].in, strlen(cases[i].in), dec, sizeof dec, NULL);
        assert_int_equal(r, (long)n);
        assert_memory_equal(dec, cases[i].out, n);
    }
}

static void test_std_ignores_trailing_bits(void **state)
{
    (void)state;
    /* Go's StdEncoding is not Strict: "YR==" decodes like "YQ==" */
    uint8_t dec[4];
    assert_int_equal(b64_decode_std("YR==", 4, dec, sizeof dec, NULL), 1);
    assert_int_equal(dec[0], 'a');
    assert_int_equal(b64_decode_std("YWJ=", 4, dec, sizeof dec, NULL), 2);
    assert_memory_equal(dec, "ab", 2);
}

static void test_decode_any(void **state)
{
    (void)state;
    uint8_t dec[32];
    /* padding optional */
    assert_int_equal(b64_decode_any("YQ", 2, dec, sizeof dec), 1);
    assert_int_equal(dec[0], 'a');
    assert_int_equal(b64_decode_any("YWI", 3, dec, sizeof dec), 2);
    assert_memory_equal(dec, "ab", 2);
    assert_int_equal(b64_decode_any("YQ==", 4, dec, sizeof dec), 1);
    /* both alphabets */
    assert_int_equal(b64_decode_any("-_8", 3, dec, sizeof dec), 2);
    assert_memory_equal(dec, "\xfb\xff", 2);
    assert_int_equal(b64_decode_any("+/8=", 4, dec, sizeof dec), 2);
    assert_memory_equal(dec, "\xfb\xff", 2);
    assert_int_equal(b64_decode_any("", 0, dec, sizeof dec), 0);
    /* malformed */
    assert_int_equal(b64_decode_any("Y", 1, dec, sizeof dec), -1);
    assert_int_equal(b64_decode_any("YWJjY", 5, dec, sizeof dec), -1);
    assert_int_equal(b64_decode_any("YQ=", 3, dec, sizeof dec), -1);
    assert_int_equal(b64_decode_any("YQ==YQ", 6, dec, sizeof dec), -1);
    assert_int_equal(b64_decode_any("Y=Q=", 4, dec, sizeof dec), -1);
    assert_int_equal(b64_decode_any("YW Jj", 5, dec, sizeof dec), -1);
    assert_int_equal(b64_decode_any("YWJj\n", 5, dec, sizeof dec), -1); /* no whitespace */
    assert_int_equal(b64_decode_any("YW*j", 4, dec, sizeof dec), -1);
}

static void test_capacity(void **state)
{
    (void)state;
    char enc[8];
    uint8_t dec[3];
    /* "abcd" needs 8 characters plus the NUL */
    assert_int_equal(b64_encode((const uint8_t *)"abcd", 4, enc, 8, false), -1);
    char enc9[9];
    assert_int_equal(b64_encode((const uint8_t *)"abcd", 4, enc9, 9, false), 8);
    assert_string_equal(enc9, "YWJjZA==");
    /* URL form of "abcd" is 6 characters */
    assert_int_equal(b64_encode((const uint8_t *)"abcd", 4, enc, 6, true), -1);
    assert_int_equal(b64_encode((const uint8_t *)"abcd", 4, enc, 7, true), 6);
    assert_string_equal(enc, "YWJjZA");
    assert_int_equal(b64_encode(NULL, 0, enc, 1, false), 0);
    assert_string_equal(enc, "");
    assert_int_equal(b64_encode(NULL, 0, enc, 0, false), -1);

    assert_int_equal(b64_decode_std("YWJjZA==", 8, dec, 3, NULL), -1);
    assert_int_equal(b64_decode_std("YWJj", 4, dec, 3, NULL), 3);
    assert_int_equal(b64_decode_std("YWI=", 4, dec, 1, NULL), -1);
    assert_int_equal(b64_decode_any("YWJjZA", 6, dec, 3), -1);
    assert_int_equal(b64_decode_any("YWJj", 4, dec, 2), -1);
    assert_int_equal(b64_decode_any("YWJj", 4, dec, 3), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_std_round_trip_0_to_10),
        cmocka_unit_test(test_all_byte_values),
        cmocka_unit_test(test_url_encoding_without_padding),
        cmocka_unit_test(test_std_illegal_input_offsets),
        cmocka_unit_test(test_std_skips_newlines_like_go),
        cmocka_unit_test(test_std_ignores_trailing_bits),
        cmocka_unit_test(test_decode_any),
        cmocka_unit_test(test_capacity),
    };
    return cmocka_run_group_tests(tests, 0, 0);
}
