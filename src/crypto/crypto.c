/* Keys, key ids, randomness and constant-time comparison. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "crypto/crypto_internal.h"
#include "iot-manager/crypto.h"

static int key_b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes a key setting exactly as Mender does: '-' and '_' become '+' and '/', every '=' is
 * dropped, and the result goes through Go's RawStdEncoding (which skips '\r' and '\n').
 * Error offsets are therefore positions in that rewritten text, as Mender reports them.
 * Stores up to CRYPTO_KEY_LEN bytes and the total decoded length in *total. */
static bool key_text_decode(const char *text, uint8_t out[CRYPTO_KEY_LEN], size_t *total,
                            size_t *bad_offset)
{
    const char *p = text;
    size_t si = 0; /* position in the rewritten text */
    size_t n = 0;
    int q[4] = {0, 0, 0, 0};
    bool ok = false;
    for (;;) {
        int j = 0;
        bool at_end = false;
        while (j < 4) {
            while (*p == '=')
                p++;
            if (*p == '\0') {
                at_end = true;
                break;
            }
            char c = *p++;
            si++;
            if (c == '-')
                c = '+';
            else if (c == '_')
                c = '/';
            int v = key_b64_value(c);
            if (v >= 0) {
                q[j++] = v;
                continue;
            }
            if (c == '\n' || c == '\r')
                continue;
            *bad_offset = si - 1;
            goto out;
        }
        if (at_end && j == 1) {
            *bad_offset = si - 1;
            goto out;
        }
        int nbytes = j == 4 ? 3 : (j == 0 ? 0 : j - 1);
        uint32_t v =
            (uint32_t)q[0] << 18 | (uint32_t)q[1] << 12 | (uint32_t)q[2] << 6 | (uint32_t)q[3];
        for (int k = 0; k < nbytes; k++, n++) {
            if (n < CRYPTO_KEY_LEN)
                out[n] = (uint8_t)(v >> (16 - 8 * k));
        }
        if (at_end)
            break;
    }
    *total = n;
    ok = true;
out:
    OPENSSL_cleanse(q, sizeof q);
    return ok;
}

bool crypto_key_id_compute(const uint8_t key[CRYPTO_KEY_LEN], int32_t *id)
{
    static const char label[] = "iot-manager key id";
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    bool ok = false;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return false;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, label, sizeof label - 1) != 1 ||
        EVP_DigestUpdate(ctx, key, CRYPTO_KEY_LEN) != 1 ||
        EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len < 4)
        goto out;
    *id = (int32_t)(((uint32_t)md[0] << 24 | (uint32_t)md[1] << 16 | (uint32_t)md[2] << 8 | md[3]) &
                    0x7fffffffu);
    ok = true;
out:
    EVP_MD_CTX_free(ctx);
    return ok;
}

int32_t crypto_key_id(const uint8_t key[CRYPTO_KEY_LEN])
{
    int32_t id = 0;
    /* The contract has no error path: failing here means OpenSSL could not allocate a digest
     * context, and a made-up id would silently make sealed secrets unreadable later. */
    if (!crypto_key_id_compute(key, &id)) {
        fputs("crypto_key_id: SHA-256 failed\n", stderr);
        abort();
    }
    return id;
}

enum iot_err crypto_key_parse(const char *text, struct crypto_key *out, struct iot_error *err)
{
    struct crypto_key key;
    size_t total = 0;
    size_t bad = 0;
    enum iot_err rc;
    memset(&key, 0, sizeof key);
    if (!key_text_decode(text, key.bytes, &total, &bad)) {
        rc = iot_error_set(err, IOT_ERR_CONFIG,
                           "failed to base64-decode the AES encryption key: illegal base64 data "
                           "at input byte %zu",
                           bad);
        goto out;
    }
    if (total != CRYPTO_KEY_LEN) {
        rc = iot_error_set(err, IOT_ERR_CONFIG,
                           "AES encryption key has a wrong length, expected 32 bytes");
        goto out;
    }
    if (!crypto_key_id_compute(key.bytes, &key.id)) {
        rc = iot_error_set(err, IOT_ERR_CRYPTO, "cannot compute the key id");
        goto out;
    }
    *out = key;
    rc = IOT_OK;
out:
    OPENSSL_cleanse(&key, sizeof key);
    return rc;
}

bool crypto_equal(const void *a, const void *b, size_t len)
{
    return CRYPTO_memcmp(a, b, len) == 0;
}

enum iot_err crypto_random(void *out, size_t len)
{
    uint8_t *p = out;
    while (len > 0) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        if (RAND_bytes(p, chunk) != 1)
            return IOT_ERR_CRYPTO;
        p += chunk;
        len -= (size_t)chunk;
    }
    return IOT_OK;
}
