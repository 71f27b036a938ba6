/* Helpers shared by the fuzz drivers. Header-only so that each driver stays one translation unit
 * linked with its own layer library only. */
#ifndef IOTM_FUZZ_COMMON_H
#define IOTM_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The libFuzzer entry point every driver defines; replay_main.c calls it. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* assert() vanishes under NDEBUG (RelWithDebInfo), and an invariant check that cannot fire is
 * worthless: this one aborts in every build, which libFuzzer and ctest both report. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__, #cond);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A NUL-terminated copy of the input, cut at its first NUL byte: the parsers take C strings, and
 * no transport they sit behind (HTTP headers, JSON strings, YAML) delivers an embedded NUL.
 * Exactly sized so that AddressSanitizer sees any read past the end. Caller frees. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t n = nul ? (size_t)(nul - data) : size;
    char *s = malloc(n + 1);
    if (!s)
        abort();
    memcpy(s, data, n);
    s[n] = '\0';
    return s;
}

/* NULL and "" are the same absent field to the parsers' callers. */
static inline int fuzz_streq_opt(const char *a, const char *b)
{
    if (!a || !*a)
        return !b || !*b;
    return b && strcmp(a, b) == 0;
}

/* Number of (possibly overlapping) occurrences of `needle` in `hay`. */
static inline size_t fuzz_count(const char *hay, const char *needle)
{
    size_t n = 0;
    size_t nlen = strlen(needle);
    if (nlen == 0)
        return 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

#endif
