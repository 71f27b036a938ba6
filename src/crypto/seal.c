/* Sealing and opening secrets: AES-256-GCM for new writes, Mender's format for old data. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "iot-manager/crypto.h"

#define GCM_NONCE_LEN 12
#define GCM_TAG_LEN   16

#define LEGACY_VERSION 0x01
#define LEGACY_IV_LEN  16
#define LEGACY_MAC_LEN 64 /* HMAC-SHA512 */
#define LEGACY_MIN_LEN (1 + LEGACY_IV_LEN + LEGACY_MAC_LEN)

/* EVP takes int lengths; secrets are tiny, so this only guards the casts. */
#define CRYPTO_DATA_MAX ((size_t)INT_MAX - LEGACY_MIN_LEN)

/* Non-NULL stand-in for zero-length inputs, which some OpenSSL paths do not accept as NULL. */
static const uint8_t no_bytes[1] = {0};

/* Replaces what `s` holds (wiped) with `data` (ownership taken). */
static void secret_replace(struct secret *s, enum secret_state state, const char *algorithm,
                           bool has_key_id, int32_t key_id, uint8_t *data, size_t len)
{
    secret_clear(s);
    s->state = state;
    if (algorithm)
        strcpy(s->algorithm, algorithm); /* both labels are shorter than SECRET_ALG_MAX */
    s->has_key_id = has_key_id;
    s->key_id = key_id;
    s->data = data;
    s->len = len;
}

static const uint8_t *bytes_or_empty(const uint8_t *p)
{
    return p ? p : no_bytes;
}

/* --- AES-256-GCM ------------------------------------------------------------------------------ */

/* AAD = tenant_id || 0x00 || integration id: a blob copied to another tenant or integration
 * (or swapped between them in the store) fails to open instead of leaking across owners. */
static bool gcm_add_aad(EVP_CIPHER_CTX *ctx, const char *tenant_id, const struct uuid *iid)
{
    static const uint8_t sep[1] = {0};
    int outl = 0;
    size_t tlen = strlen(tenant_id);
    if (tlen > (size_t)INT_MAX)
        return false;
    if (tlen > 0 && EVP_CipherUpdate(ctx, NULL, &outl, (const uint8_t *)tenant_id, (int)tlen) != 1)
        return false;
    return EVP_CipherUpdate(ctx, NULL, &outl, sep, 1) == 1 &&
           EVP_CipherUpdate(ctx, NULL, &outl, iid->b, (int)sizeof iid->b) == 1;
}

/* Encrypts (enc) or decrypts and verifies (!enc) `len` bytes; `tag` is written or checked.
 * On a failed decryption `out` may hold unauthenticated plaintext: the caller wipes it. */
static bool gcm_crypt(bool enc, const uint8_t key[CRYPTO_KEY_LEN],
                      const uint8_t nonce[GCM_NONCE_LEN], const char *tenant_id,
                      const struct uuid *iid, const uint8_t *in, size_t len, uint8_t *out,
                      uint8_t tag[GCM_TAG_LEN])
{
    bool ok = false;
    int outl = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return false;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc ? 1 : 0) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, GCM_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc ? 1 : 0) != 1)
        goto out;
    if (!gcm_add_aad(ctx, tenant_id, iid))
        goto out;
    if (len > 0 && EVP_CipherUpdate(ctx, out, &outl, in, (int)len) != 1)
        goto out;
    if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, GCM_TAG_LEN, tag) != 1)
        goto out;
    /* GCM emits nothing at the end; for decryption this is where the tag is checked */
    if (EVP_CipherFinal_ex(ctx, out + outl, &outl) != 1)
        goto out;
    if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, GCM_TAG_LEN, tag) != 1)
        goto out;
    ok = true;
out:
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

static enum iot_err seal_gcm(const struct crypto_key *key, const char *tenant_id,
                             const struct uuid *iid, struct secret *s, struct iot_error *err)
{
    if (s->len > CRYPTO_DATA_MAX)
        return iot_error_set(err, IOT_ERR_CRYPTO, "secret is too large to encrypt");
    size_t blob_len = GCM_NONCE_LEN + s->len + GCM_TAG_LEN;
    uint8_t *blob = malloc(blob_len);
    if (!blob)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    /* A random 96-bit nonce per secret: secrets are written rarely, far below the 2^32
     * messages per key after which random nonces become a concern. */
    if (crypto_random(blob, GCM_NONCE_LEN) != IOT_OK) {
        free(blob);
        return iot_error_set(err, IOT_ERR_CRYPTO, "cannot generate a nonce");
    }
    if (!gcm_crypt(true, key->bytes, blob, tenant_id, iid, bytes_or_empty(s->data), s->len,
                   blob + GCM_NONCE_LEN, blob + GCM_NONCE_LEN + s->len)) {
        OPENSSL_cleanse(blob, blob_len);
        free(blob);
        return iot_error_set(err, IOT_ERR_CRYPTO, "unable to encrypt the data");
    }
    secret_replace(s, SECRET_SEALED, SECRET_ALG_GCM, true, key->id, blob, blob_len);
    return IOT_OK;
}

/* IOT_ERR_CRYPTO (no message) when `key` does not authenticate the blob. */
static enum iot_err open_gcm_with(const struct crypto_key *key, const char *tenant_id,
                                  const struct uuid *iid, const struct secret *s, uint8_t **plain,
                                  size_t *plain_len)
{
    size_t ct_len = s->len - GCM_NONCE_LEN - GCM_TAG_LEN;
    uint8_t tag[GCM_TAG_LEN];
    uint8_t *buf = malloc(ct_len ? ct_len : 1);
    if (!buf)
        return IOT_ERR_NOMEM;
    memcpy(tag, s->data + GCM_NONCE_LEN + ct_len, GCM_TAG_LEN);
    if (!gcm_crypt(false, key->bytes, s->data, tenant_id, iid, s->data + GCM_NONCE_LEN, ct_len, buf,
                   tag)) {
        OPENSSL_cleanse(buf, ct_len ? ct_len : 1);
        free(buf);
        return IOT_ERR_CRYPTO;
    }
    *plain = buf;
    *plain_len = ct_len;
    return IOT_OK;
}

static enum iot_err open_gcm(const struct crypto_keyring *kr, const char *tenant_id,
                             const struct uuid *iid, struct secret *s, struct iot_error *err)
{
    const struct crypto_key *candidates[2];
    size_t n = 0;
    if (s->len < GCM_NONCE_LEN + GCM_TAG_LEN ||
        s->len - GCM_NONCE_LEN - GCM_TAG_LEN > CRYPTO_DATA_MAX)
        return iot_error_set(err, IOT_ERR_CRYPTO, "cipher text is too short");
    /* The stored key id names the key; without one (never written by us) try both. */
    if (kr && kr->has_primary && (!s->has_key_id || kr->primary.id == s->key_id))
        candidates[n++] = &kr->primary;
    if (kr && kr->has_fallback && (!s->has_key_id || kr->fallback.id == s->key_id))
        candidates[n++] = &kr->fallback;
    if (n == 0) {
        if (s->has_key_id)
            return iot_error_set(err, IOT_ERR_CRYPTO,
                                 "the secret was encrypted with a key that is not configured "
                                 "(key id %d)",
                                 (int)s->key_id);
        return iot_error_set(err, IOT_ERR_CRYPTO, "no encryption key is configured");
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t *plain = NULL;
        size_t plain_len = 0;
        enum iot_err rc = open_gcm_with(candidates[i], tenant_id, iid, s, &plain, &plain_len);
        if (rc == IOT_OK) {
            secret_replace(s, SECRET_PLAIN, NULL, false, 0, plain, plain_len);
            return IOT_OK;
        }
        if (rc != IOT_ERR_CRYPTO)
            return iot_error_set(err, rc, "out of memory");
    }
    return iot_error_set(err, IOT_ERR_CRYPTO, "unable to decrypt the data");
}

/* --- Mender's AES-256-CFB + HMAC-SHA512 --------------------------------------------------------
 */

static bool cfb_crypt(bool enc, const uint8_t key[CRYPTO_KEY_LEN], const uint8_t iv[16],
                      const uint8_t *in, size_t len, uint8_t *out)
{
    bool ok = false;
    int outl = 0;
    if (len == 0)
        return true;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return false;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_cfb128(), NULL, key, iv, enc ? 1 : 0) != 1 ||
        EVP_CipherUpdate(ctx, out, &outl, in, (int)len) != 1 ||
        EVP_CipherFinal_ex(ctx, out + outl, &outl) != 1)
        goto out;
    ok = true;
out:
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

/* Mender MACs the plaintext with the encryption key itself. */
static bool legacy_mac(const uint8_t key[CRYPTO_KEY_LEN], const uint8_t *plain, size_t len,
                       uint8_t mac[LEGACY_MAC_LEN])
{
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha512(), key, CRYPTO_KEY_LEN, bytes_or_empty(plain), len, mac, &mac_len))
        return false;
    return mac_len == LEGACY_MAC_LEN;
}

enum iot_err crypto_legacy_encrypt_iv(const uint8_t key[CRYPTO_KEY_LEN], const uint8_t iv[16],
                                      const uint8_t *plain, size_t len, uint8_t **out,
                                      size_t *out_len)
{
    if (len > CRYPTO_DATA_MAX)
        return IOT_ERR_CRYPTO;
    size_t blob_len = LEGACY_MIN_LEN + len;
    uint8_t *blob = malloc(blob_len);
    if (!blob)
        return IOT_ERR_NOMEM;
    blob[0] = LEGACY_VERSION;
    memcpy(blob + 1, iv, LEGACY_IV_LEN);
    if (!cfb_crypt(true, key, iv, plain, len, blob + 1 + LEGACY_IV_LEN) ||
        !legacy_mac(key, plain, len, blob + 1 + LEGACY_IV_LEN + len)) {
        OPENSSL_cleanse(blob, blob_len);
        free(blob);
        return IOT_ERR_CRYPTO;
    }
    *out = blob;
    *out_len = blob_len;
    return IOT_OK;
}

static enum iot_err seal_legacy(const struct crypto_key *key, struct secret *s,
                                struct iot_error *err)
{
    uint8_t iv[LEGACY_IV_LEN];
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    if (crypto_random(iv, sizeof iv) != IOT_OK)
        return iot_error_set(err, IOT_ERR_CRYPTO, "cannot generate an IV");
    enum iot_err rc = crypto_legacy_encrypt_iv(key->bytes, iv, s->data, s->len, &blob, &blob_len);
    if (rc == IOT_ERR_NOMEM)
        return iot_error_set(err, rc, "out of memory");
    if (rc != IOT_OK)
        return iot_error_set(err, rc, "unable to encrypt the data");
    secret_replace(s, SECRET_SEALED, SECRET_ALG_LEGACY, false, 0, blob, blob_len);
    return IOT_OK;
}

/* The shape of Mender's ciphertext. Anything else under its label is Mender's plaintext. */
static bool legacy_is_ciphertext(const uint8_t *data, size_t len)
{
    return len >= LEGACY_MIN_LEN && data[0] == LEGACY_VERSION;
}

/* IOT_ERR_CRYPTO (no message) when `key` does not authenticate the blob. */
static enum iot_err open_legacy_with(const struct crypto_key *key, const struct secret *s,
                                     uint8_t **plain, size_t *plain_len)
{
    size_t len = s->len - LEGACY_MIN_LEN;
    const uint8_t *iv = s->data + 1;
    const uint8_t *ct = iv + LEGACY_IV_LEN;
    const uint8_t *mac = ct + len;
    uint8_t expect[LEGACY_MAC_LEN];
    enum iot_err rc = IOT_ERR_CRYPTO;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return IOT_ERR_NOMEM;
    if (cfb_crypt(false, key->bytes, iv, ct, len, buf) &&
        legacy_mac(key->bytes, buf, len, expect) && CRYPTO_memcmp(expect, mac, LEGACY_MAC_LEN) == 0)
        rc = IOT_OK;
    OPENSSL_cleanse(expect, sizeof expect);
    if (rc != IOT_OK) {
        OPENSSL_cleanse(buf, len ? len : 1);
        free(buf);
        return rc;
    }
    *plain = buf;
    *plain_len = len;
    return IOT_OK;
}

static enum iot_err open_legacy(const struct crypto_keyring *kr, struct secret *s,
                                struct iot_error *err)
{
    if (!legacy_is_ciphertext(s->data, s->len)) {
        /* Mender's plaintext: the bytes stay, only the state changes */
        uint8_t *data = s->data;
        size_t len = s->len;
        s->data = NULL;
        secret_replace(s, SECRET_PLAIN, NULL, false, 0, data, len);
        return IOT_OK;
    }
    if (s->len - LEGACY_MIN_LEN > CRYPTO_DATA_MAX)
        return iot_error_set(err, IOT_ERR_CRYPTO, "unable to decrypt the data");
    /* Unlike Mender, a blob that looks encrypted but authenticates under no configured key is an
     * error, also with no key at all: returning the raw bytes would hand ciphertext to Azure as
     * a credential. */
    const struct crypto_key *candidates[2];
    size_t n = 0;
    if (kr && kr->has_primary)
        candidates[n++] = &kr->primary;
    if (kr && kr->has_fallback)
        candidates[n++] = &kr->fallback;
    for (size_t i = 0; i < n; i++) {
        uint8_t *plain = NULL;
        size_t plain_len = 0;
        enum iot_err rc = open_legacy_with(candidates[i], s, &plain, &plain_len);
        if (rc == IOT_OK) {
            secret_replace(s, SECRET_PLAIN, NULL, false, 0, plain, plain_len);
            return IOT_OK;
        }
        if (rc != IOT_ERR_CRYPTO)
            return iot_error_set(err, rc, "out of memory");
    }
    return iot_error_set(err, IOT_ERR_CRYPTO, "unable to decrypt the data");
}

/* --- public ----------------------------------------------------------------------------------- */

enum iot_err crypto_seal(const struct crypto_keyring *kr, const char *tenant_id,
                         const struct uuid *integration_id, struct secret *s, struct iot_error *err)
{
    if (!s || s->state != SECRET_PLAIN)
        return IOT_OK;
    if (!kr || !kr->has_primary) {
        /* Without a key Mender stores the plaintext under its algorithm label. A plaintext of
         * the ciphertext's shape could never be read back (crypto_open would demand that it
         * authenticates), so it is refused rather than stored unreadable. */
        if (legacy_is_ciphertext(s->data, s->len))
            return iot_error_set(err, IOT_ERR_CRYPTO,
                                 "this secret cannot be stored without an encryption key: "
                                 "configure aes_encryption_key");
        uint8_t *data = s->data;
        size_t len = s->len;
        s->data = NULL;
        secret_replace(s, SECRET_SEALED, SECRET_ALG_LEGACY, false, 0, data, len);
        return IOT_OK;
    }
    if (kr->write_legacy)
        return seal_legacy(&kr->primary, s, err);
    if (!integration_id)
        return iot_error_set(err, IOT_ERR_INTERNAL, "integration id missing for encryption");
    return seal_gcm(&kr->primary, tenant_id ? tenant_id : "", integration_id, s, err);
}

enum iot_err crypto_open(const struct crypto_keyring *kr, const char *tenant_id,
                         const struct uuid *integration_id, struct secret *s, struct iot_error *err)
{
    if (!s || s->state != SECRET_SEALED)
        return IOT_OK;
    if (!memchr(s->algorithm, '\0', sizeof s->algorithm))
        return iot_error_set(err, IOT_ERR_CRYPTO, "unknown algorithm");
    if (strcmp(s->algorithm, SECRET_ALG_LEGACY) == 0)
        return open_legacy(kr, s, err);
    if (strcmp(s->algorithm, SECRET_ALG_GCM) == 0) {
        if (!integration_id)
            return iot_error_set(err, IOT_ERR_INTERNAL, "integration id missing for decryption");
        return open_gcm(kr, tenant_id ? tenant_id : "", integration_id, s, err);
    }
    return iot_error_set(err, IOT_ERR_CRYPTO, "unknown algorithm");
}
