/* A secret field of an integration (Azure SharedAccessKey, AWS secret access key, webhook secret).
 *
 * In memory a secret is either plaintext (SECRET_PLAIN: after decoding a request or after
 * crypto_open) or sealed (SECRET_SEALED: as stored). Store adapters only ever write sealed
 * secrets; crypto_seal()/crypto_open() convert in place. Secrets own their `data` and are wiped
 * on secret_clear().
 */
#ifndef IOT_MANAGER_SECRET_H
#define IOT_MANAGER_SECRET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "iot-manager/error.h"

#define SECRET_ALG_GCM    "AES_256_GCM"             /* ours: nonce(12) || ciphertext || tag(16) */
#define SECRET_ALG_LEGACY "AES_256_CFB_HMAC_SHA512" /* Mender's, or Mender's plaintext label */
#define SECRET_ALG_MAX    32

enum secret_state { SECRET_EMPTY = 0, SECRET_PLAIN, SECRET_SEALED };

struct secret {
    enum secret_state state;
    char algorithm[SECRET_ALG_MAX]; /* SECRET_SEALED only */
    bool has_key_id;                /* SECRET_SEALED only: Mender's blobs carry none */
    int32_t key_id;
    uint8_t *data; /* owned */
    size_t len;
};

/* Takes a copy of `len` bytes as a plaintext secret (replacing and wiping what `s` held). */
enum iot_err secret_set_plain(struct secret *s, const uint8_t *data, size_t len);

/* Takes a copy of a sealed blob as stored. */
enum iot_err secret_set_sealed(struct secret *s, const char *algorithm, bool has_key_id,
                               int32_t key_id, const uint8_t *data, size_t len);

/* Deep copy of `src` into `dst` (dst is cleared first). */
enum iot_err secret_copy(struct secret *dst, const struct secret *src);

/* Wipes and frees the data; leaves `s` SECRET_EMPTY. NULL-safe. */
void secret_clear(struct secret *s);

/* Overwrites `n` bytes that held a secret, in a way the compiler cannot drop. */
void secret_wipe(void *p, size_t n);

#endif
