/* Helpers shared by the files of the crypto layer; not part of its public contract. */
#ifndef IOT_MANAGER_CRYPTO_INTERNAL_H
#define IOT_MANAGER_CRYPTO_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "iot-manager/crypto.h"

/* crypto_key_id() with an error path: false only when OpenSSL cannot run SHA-256. */
bool crypto_key_id_compute(const uint8_t key[CRYPTO_KEY_LEN], int32_t *id);

#endif
