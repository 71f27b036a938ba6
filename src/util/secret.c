#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "iot-manager/secret.h"

void secret_clear(struct secret *s)
{
    if (!s)
        return;
    if (s->data) {
        OPENSSL_cleanse(s->data, s->len);
        free(s->data);
    }
    memset(s, 0, sizeof *s);
}

void secret_wipe(void *p, size_t n)
{
    if (p && n)
        OPENSSL_cleanse(p, n);
}

static enum iot_err secret_take_copy(struct secret *s, const uint8_t *data, size_t len)
{
    /* malloc(0) may return NULL: keep one byte so an empty secret is still "present" */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return IOT_ERR_NOMEM;
    if (len)
        memcpy(copy, data, len);
    secret_clear(s);
    s->data = copy;
    s->len = len;
    return IOT_OK;
}

enum iot_err secret_set_plain(struct secret *s, const uint8_t *data, size_t len)
{
    enum iot_err rc = secret_take_copy(s, data, len);
    if (rc == IOT_OK)
        s->state = SECRET_PLAIN;
    return rc;
}

enum iot_err secret_set_sealed(struct secret *s, const char *algorithm, bool has_key_id,
                               int32_t key_id, const uint8_t *data, size_t len)
{
    if (!algorithm || strlen(algorithm) >= SECRET_ALG_MAX)
        return IOT_ERR_INVALID;
    enum iot_err rc = secret_take_copy(s, data, len);
    if (rc != IOT_OK)
        return rc;
    s->state = SECRET_SEALED;
    strcpy(s->algorithm, algorithm); /* length checked above */
    s->has_key_id = has_key_id;
    s->key_id = key_id;
    return IOT_OK;
}

enum iot_err secret_copy(struct secret *dst, const struct secret *src)
{
    if (dst == src)
        return IOT_OK;
    if (src->state == SECRET_EMPTY) {
        secret_clear(dst);
        return IOT_OK;
    }
    enum iot_err rc = secret_take_copy(dst, src->data, src->len);
    if (rc != IOT_OK)
        return rc;
    dst->state = src->state;
    memcpy(dst->algorithm, src->algorithm, sizeof dst->algorithm);
    dst->has_key_id = src->has_key_id;
    dst->key_id = src->key_id;
    return IOT_OK;
}
