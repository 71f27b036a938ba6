/* Encryption of secrets at rest.
 *
 * New writes: AES-256-GCM, random 96-bit nonce, blob = nonce || ciphertext || tag (16),
 * associated data binds the secret to its owner: tenant_id bytes || 0x00 || integration id (16
 * raw bytes). The key id stored beside the blob is derived from the key itself
 * (crypto_key_id()), so rotation needs no extra setting.
 *
 * Mender's format (SECRET_ALG_LEGACY) stays readable: a blob of at least 81 bytes starting with
 * 0x01 is 0x01 || IV(16) || AES-256-CFB128(P) || HMAC-SHA512(K, P) and must authenticate under
 * the primary or the fallback key (otherwise IOT_ERR_CRYPTO, never garbage); anything else under
 * that label is Mender's plaintext. It can still be written (keyring.write_legacy) so an
 * installation can roll back to Mender's service.
 */
#ifndef IOT_MANAGER_CRYPTO_H
#define IOT_MANAGER_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "iot-manager/error.h"
#include "iot-manager/secret.h"
#include "iot-manager/uuid.h"

#define CRYPTO_KEY_LEN 32

struct crypto_key {
    uint8_t bytes[CRYPTO_KEY_LEN];
    int32_t id; /* crypto_key_id(bytes) */
};

struct crypto_keyring {
    bool has_primary;
    struct crypto_key primary;
    bool has_fallback;
    struct crypto_key fallback;
    bool write_legacy; /* write Mender's AES_256_CFB_HMAC_SHA512 instead of AES_256_GCM */
};

/* Parses a key setting: base64, standard or URL alphabet, padding optional, 32 bytes.
 * Errors (IOT_ERR_CONFIG) carry Mender's texts: "failed to base64-decode the AES encryption
 * key: ..." and "AES encryption key has a wrong length, expected 32 bytes". */
enum iot_err crypto_key_parse(const char *text, struct crypto_key *out, struct iot_error *err);

/* Stable, non-negative 31-bit id of a key: first 4 bytes of SHA-256("iot-manager key id" || key).
 */
int32_t crypto_key_id(const uint8_t key[CRYPTO_KEY_LEN]);

/* Reads the 32-byte key file at `path` (base64 text), or creates it with a random key and mode
 * 0600 when it does not exist. Refuses a file readable by group or others (IOT_ERR_CONFIG). */
enum iot_err crypto_keyfile_load_or_create(const char *path, struct crypto_key *out, bool *created,
                                           struct iot_error *err);

/* Seals a SECRET_PLAIN secret in place with the keyring's primary key (GCM, or Mender's format
 * when write_legacy; with no primary key Mender's plaintext label is written, as Mender does).
 * SECRET_EMPTY and SECRET_SEALED are left as they are. */
enum iot_err crypto_seal(const struct crypto_keyring *kr, const char *tenant_id,
                         const struct uuid *integration_id, struct secret *s,
                         struct iot_error *err);

/* Opens a SECRET_SEALED secret in place (SECRET_PLAIN afterwards). Unknown algorithm, wrong key,
 * tampered data or a wrong owner give IOT_ERR_CRYPTO. SECRET_EMPTY/SECRET_PLAIN are left alone. */
enum iot_err crypto_open(const struct crypto_keyring *kr, const char *tenant_id,
                         const struct uuid *integration_id, struct secret *s,
                         struct iot_error *err);

/* Mender's encryption with a given IV (for test vectors). Returns a malloc'd blob in *out. */
enum iot_err crypto_legacy_encrypt_iv(const uint8_t key[CRYPTO_KEY_LEN], const uint8_t iv[16],
                                      const uint8_t *plain, size_t len, uint8_t **out,
                                      size_t *out_len);

/* Constant-time comparison. */
bool crypto_equal(const void *a, const void *b, size_t len);

/* Cryptographically random bytes. */
enum iot_err crypto_random(void *out, size_t len);

#define CRYPTO_SHA256_LEN 32

/* SHA-256 of the concatenation of `n` byte strings (parts[i], lens[i] bytes each; a part of
 * length 0 may be NULL). IOT_ERR_NOMEM / IOT_ERR_INTERNAL when OpenSSL fails. */
enum iot_err crypto_sha256(const void *const *parts, const size_t *lens, size_t n,
                           uint8_t out[CRYPTO_SHA256_LEN]);

#endif
