/* UUIDs: 16 raw bytes; text form is the canonical lower-case 36-character string. */
#ifndef IOT_MANAGER_UUID_H
#define IOT_MANAGER_UUID_H

#include <stdbool.h>
#include <stdint.h>
#include "iot-manager/error.h"

#define UUID_STR_LEN 36 /* without NUL */

struct uuid {
    uint8_t b[16];
};

/* Random version-4 UUID (OpenSSL RAND_bytes). IOT_ERR_INTERNAL if the RNG fails. */
enum iot_err uuid_generate_v4(struct uuid *out);

/* Version-5 UUID (SHA-1) of `name` in namespace `ns` (RFC 4122), as Mender's old integration ids.
 */
void uuid_generate_v5(const struct uuid *ns, const char *name, struct uuid *out);

/* Canonical text, lower-case, into a buffer of at least UUID_STR_LEN + 1 bytes. */
void uuid_format(const struct uuid *u, char out[UUID_STR_LEN + 1]);

/* Parses the forms Go's google/uuid accepts (canonical, "urn:uuid:" prefix, braces, 32 hex digits).
 * On failure fills `err` with google/uuid's message, e.g. "invalid UUID length: 3" or
 * "invalid UUID format", and returns IOT_ERR_INVALID. */
enum iot_err uuid_parse(const char *text, struct uuid *out, struct iot_error *err);

bool uuid_equal(const struct uuid *a, const struct uuid *b);

/* NameSpace_OID from RFC 4122 (6ba7b812-9dad-11d1-80b4-00c04fd430c8). */
extern const struct uuid UUID_NAMESPACE_OID;

#endif
