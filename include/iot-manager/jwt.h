/* In-service verification of Mender user JWTs ("verify" mode).
 *
 * useradm signs RS256 (RSA keys) or EdDSA (Ed25519 keys) and puts an integer `kid` in the header
 * (mender-clients.md §5.1). We hold the matching public keys; the algorithm a token may use is
 * the one implied by the type of the key its `kid` selects, never what the header claims, so
 * `alg: none`, HS256 keyed with a public key and every other substitution fail.
 *
 * A keyset is immutable once loaded: jwt_verify() may run on it from any number of threads.
 */
#ifndef IOT_MANAGER_JWT_H
#define IOT_MANAGER_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "iot-manager/error.h"

/* Longest token accepted, in characters. Mender's tokens are well under 2 KiB (a 4096-bit RSA
 * signature alone is 683 characters); the bound keeps work per request small. */
#define JWT_MAX_LEN 16384

/* Most keys one keyset holds (key rotation needs two or three). */
#define JWT_KEYSET_MAX 16

/* Clock skew allowed by default on exp, nbf and iat, in seconds. */
#define JWT_DEFAULT_LEEWAY 60

/* RSA keys shorter than this are refused when loading. */
#define JWT_RSA_MIN_BITS 2048

enum jwt_alg {
    JWT_ALG_RS256 = 1, /* RSASSA-PKCS1-v1_5 with SHA-256, RSA keys */
    JWT_ALG_EDDSA,     /* Ed25519 keys */
};

/* Opaque; see jwt_keyset_load(). */
struct jwt_keyset;

/* Loads the public keys of a configuration string of whitespace-separated `kid=path` entries,
 * e.g. "1=/etc/iot-manager/keys/useradm-1.pem 2=/etc/iot-manager/keys/ed25519.pem".
 * A kid is a non-negative decimal integer of at most 18 digits; kids must be distinct. A string
 * holding a single bare path (no `kid=`) is the same as jwt_keyset_load_file(). Paths cannot
 * contain whitespace.
 * Each file holds exactly one PEM public key: "PUBLIC KEY" (SubjectPublicKeyInfo, RSA or
 * Ed25519) or "RSA PUBLIC KEY" (PKCS#1). RSA keys must have at least JWT_RSA_MIN_BITS bits and
 * allow RS256 only; Ed25519 keys allow EdDSA only. Private keys, certificates and other key types
 * are refused so that no signing material needs to sit beside the service.
 * Errors name the file and the problem: IOT_ERR_IO when a file cannot be read, IOT_ERR_CONFIG for
 * anything else. On success *out is a new keyset owned by the caller (jwt_keyset_free()). */
enum iot_err jwt_keyset_load(const char *spec, struct jwt_keyset **out, struct iot_error *err);

/* Loads a keyset of one key without a kid: tokens are then checked against that key whatever
 * their `kid` (or without one). Same file rules and errors as jwt_keyset_load(). */
enum iot_err jwt_keyset_load_file(const char *path, struct jwt_keyset **out, struct iot_error *err);

/* Frees a keyset; NULL is allowed. */
void jwt_keyset_free(struct jwt_keyset *ks);

/* Number of keys (for start-up logging). */
size_t jwt_keyset_count(const struct jwt_keyset *ks);

struct jwt_key_info {
    bool has_kid;
    int64_t kid;
    enum jwt_alg alg;
    int bits; /* key size: RSA modulus bits, 253 for Ed25519 */
};

/* Describes key `index` (< jwt_keyset_count()) without exposing it. IOT_ERR_NOT_FOUND when the
 * index is out of range. */
enum iot_err jwt_keyset_key_info(const struct jwt_keyset *ks, size_t index,
                                 struct jwt_key_info *out);

/* "RS256" or "EdDSA" (static; "?" for an unknown value). */
const char *jwt_alg_name(enum jwt_alg alg);

struct jwt_verify_options {
    const char *issuer; /* expected `iss`; NULL: not checked. Borrowed for the call. */
    int leeway;         /* clock skew allowed on exp/nbf/iat, seconds; negative counts as 0 */
    int64_t now;        /* Unix time to check against; 0: the system clock (tests set it) */
};

/* Sets the defaults: no issuer check, JWT_DEFAULT_LEEWAY, system clock. */
void jwt_verify_options_init(struct jwt_verify_options *opts);

/* Verifies a compact JWS `token` (the bare token, without "Bearer "). At most JWT_MAX_LEN + 1
 * bytes of it are read. `opts` NULL means the defaults of jwt_verify_options_init().
 *
 * Accepted: exactly three base64url segments without padding and in canonical form; a header
 * that is a JSON object whose `alg` is the algorithm of the key chosen by `kid` (a JSON integer
 * or a string of digits; without `kid` only when the keyset holds exactly one key), `typ`, if
 * present, "JWT" in any case, and no `crit`; a signature valid over the received
 * "header.payload" bytes; claims that are a JSON object without duplicate names, with `exp`
 * (a number, integer or real) later than now - leeway, `nbf` if present no later than
 * now + leeway, `iat` if present no later than now + leeway, and `iss` equal to opts->issuer when
 * one is set. Other header parameters (`jku`, `jwk`, `x5u`, ...) are ignored: keys only ever come
 * from the keyset. The claims are parsed only after the signature has been checked.
 *
 * Any rejection is IOT_ERR_UNAUTHORIZED with a short reason ("malformed token: ...",
 * "algorithm not allowed", "unknown key id", "signature invalid", "token expired", ...); the
 * message never contains the token or a claim value. IOT_ERR_NOMEM, IOT_ERR_CRYPTO (OpenSSL
 * cannot run the check) and IOT_ERR_INTERNAL (no keyset) are server-side failures.
 *
 * On success, and when `claims_out` is not NULL, *claims_out is a new reference to the claims
 * object, owned by the caller (json_decref()). On failure *claims_out is set to NULL. */
enum iot_err jwt_verify(const struct jwt_keyset *ks, const struct jwt_verify_options *opts,
                        const char *token, json_t **claims_out, struct iot_error *err);

#endif
