#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "iot-manager/b64.h"
#include "iot-manager/sas.h"

#define SHA256_LEN 32
/* "<sr>\n<se>": se has at most 19 digits */
#define TO_SIGN_MAX (SAS_TOKEN_MAX + 24)

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

long sas_url_encode(const char *in, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    if (!in || !out || cap == 0)
        return -1;
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        size_t need = unreserved(*p) ? 1 : 3;
        if (o + need >= cap) {
            out[0] = '\0';
            return -1;
        }
        if (need == 1) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return (long)o;
}

enum iot_err sas_token_build(const char *resource, const uint8_t *key, size_t key_len,
                             const char *policy, int64_t expiry, char *out, size_t cap)
{
    enum iot_err rc = IOT_ERR_INVALID;
    char sr[SAS_TOKEN_MAX];
    char skn[SAS_TOKEN_MAX] = "";
    char to_sign[TO_SIGN_MAX];
    unsigned char mac[SHA256_LEN];
    unsigned int mac_len = 0;
    int n;
    char sig_b64[B64_ENCODED_LEN(SHA256_LEN) + 1];
    char sig[3 * sizeof sig_b64];

    if (out && cap)
        out[0] = '\0';
    /* a negative expiry is always in the past; refuse it rather than sign garbage */
    if (!resource || !key || key_len == 0 || key_len > INT_MAX || !out || expiry < 0)
        return IOT_ERR_INVALID;
    if (sas_url_encode(resource, sr, sizeof sr) < 0)
        goto out;
    /* Mender sends skn raw; the hub URL-decodes it, so encoding changes nothing for real policy
     * names and keeps a stray '&' or '=' from corrupting the token. */
    if (policy && sas_url_encode(policy, skn, sizeof skn) < 0)
        goto out;
    n = snprintf(to_sign, sizeof to_sign, "%s\n%" PRId64, sr, expiry);
    if (n < 0 || (size_t)n >= sizeof to_sign)
        goto out;
    /* The hub signs the sr value as transmitted, so the encoded form is what we sign. */
    if (!HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)to_sign, (size_t)n, mac,
              &mac_len) ||
        mac_len != SHA256_LEN) {
        rc = IOT_ERR_CRYPTO;
        goto out;
    }
    if (b64_encode(mac, mac_len, sig_b64, sizeof sig_b64, false) < 0 ||
        sas_url_encode(sig_b64, sig, sizeof sig) < 0)
        goto out;
    n = snprintf(out, cap, "SharedAccessSignature sr=%s&sig=%s&se=%" PRId64 "%s%s", sr, sig, expiry,
                 policy ? "&skn=" : "", skn);
    if (n < 0 || (size_t)n >= cap) {
        OPENSSL_cleanse(out, cap);
        out[0] = '\0';
        goto out;
    }
    rc = IOT_OK;
out:
    OPENSSL_cleanse(mac, sizeof mac);
    OPENSSL_cleanse(sig_b64, sizeof sig_b64);
    OPENSSL_cleanse(sig, sizeof sig);
    return rc;
}

enum iot_err sas_token_for_connstr(const struct connstr *cs, int64_t expiry, char *out, size_t cap,
                                   struct iot_error *err)
{
    if (out && cap)
        out[0] = '\0';
    if (!cs || !cs->hostname || !*cs->hostname)
        return iot_error_set(err, IOT_ERR_INVALID, "connection string has no HostName");
    if (cs->key_len == 0 || !cs->key)
        return iot_error_set(err, IOT_ERR_INVALID,
                             cs->masked_key ? "connection string key is masked"
                                            : "connection string has no SharedAccessKey");

    char resource[SAS_TOKEN_MAX];
    const char *policy = NULL;
    int n;
    if (cs->name && *cs->name) {
        /* service policy: the whole hub, HostName as written (port included, as Mender signs) */
        policy = cs->name;
        n = snprintf(resource, sizeof resource, "%s", cs->hostname);
    } else if (cs->device_id && *cs->device_id) {
        if (cs->module_id && *cs->module_id)
            n = snprintf(resource, sizeof resource, "%s/devices/%s/modules/%s", cs->hostname,
                         cs->device_id, cs->module_id);
        else
            n = snprintf(resource, sizeof resource, "%s/devices/%s", cs->hostname, cs->device_id);
    } else {
        return iot_error_set(err, IOT_ERR_INVALID,
                             "one of 'DeviceId' or 'SharedAccessKeyName' must be set");
    }
    if (n < 0 || (size_t)n >= sizeof resource)
        return iot_error_set(err, IOT_ERR_INVALID, "SAS token resource too long");

    enum iot_err rc = sas_token_build(resource, cs->key, cs->key_len, policy, expiry, out, cap);
    if (rc != IOT_OK)
        return iot_error_set(err, rc, "cannot build SAS token: %s", iot_strerror(rc));
    return IOT_OK;
}
