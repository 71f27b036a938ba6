/* Base64 (RFC 4648) in the standard and URL alphabets, with bounded outputs. */
#ifndef IOT_MANAGER_B64_H
#define IOT_MANAGER_B64_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the padded encoding of n bytes, without the terminating NUL. */
#define B64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)

/* Encodes `len` bytes into `out` (capacity `cap`, NUL-terminated). `url`: URL alphabet without
 * padding (JWT); otherwise the standard alphabet with padding. Returns the length written
 * (without NUL), or -1 when `cap` is too small. */
long b64_encode(const uint8_t *in, size_t len, char *out, size_t cap, bool url);

/* Decodes the standard alphabet; padding is required exactly as Go's StdEncoding does
 * (length a multiple of 4, '=' only at the end; '\r' and '\n' are skipped anywhere, as Go does).
 * Returns the number of bytes written into `out` (capacity `cap`), or -1 on malformed input or
 * overflow. When `bad_offset` is not NULL it
 * receives the offset of the first illegal byte (Go's "illegal base64 data at input byte N"). */
long b64_decode_std(const char *in, size_t len, uint8_t *out, size_t cap, size_t *bad_offset);

/* Decodes either alphabet, padding optional (AES key settings, JWT segments). Whitespace is
 * not accepted. Returns bytes written or -1. */
long b64_decode_any(const char *in, size_t len, uint8_t *out, size_t cap);

/* Upper bound of the decoded size of `len` characters. */
#define B64_DECODED_MAX(len) ((((len) + 3) / 4) * 3)

#endif
