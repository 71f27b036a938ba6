/* Message digests the upper layers need without including OpenSSL themselves. */
#include <openssl/evp.h>

#include "iot-manager/crypto.h"

enum iot_err crypto_sha256(const void *const *parts, const size_t *lens, size_t n,
                           uint8_t out[CRYPTO_SHA256_LEN])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return IOT_ERR_NOMEM;
    enum iot_err rc = IOT_ERR_INTERNAL;
    unsigned int len = 0;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > 0 && EVP_DigestUpdate(ctx, parts[i], lens[i]) != 1)
            goto out;
    }
    if (EVP_DigestFinal_ex(ctx, out, &len) == 1 && len == CRYPTO_SHA256_LEN)
        rc = IOT_OK;
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}
