/* Request and answer helpers of the outbound HTTP clients (see include/iot-manager/net.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>

#include "iot-manager/net.h"

struct curl_slist *net_header_add(struct curl_slist *list, bool *ok, const char *name,
                                  const char *value)
{
    if (!*ok)
        return list;
    char line[NET_HEADER_LINE_MAX];
    int n = value ? snprintf(line, sizeof line, "%s: %s", name, value)
                  : snprintf(line, sizeof line, "%s:", name);
    struct curl_slist *next = NULL;
    if (n > 0 && (size_t)n < sizeof line)
        next = curl_slist_append(list, line);
    OPENSSL_cleanse(line, sizeof line);
    if (!next) {
        *ok = false;
        return list;
    }
    return next;
}

void net_headers_free(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l; l = l->next)
        OPENSSL_cleanse(l->data, strlen(l->data));
    curl_slist_free_all(list);
}

CURLcode net_set_method(CURL *e, const char *method, const char *body, size_t body_len)
{
    CURLcode cc = CURLE_OK;
    if (body) {
        NET_SETOPT(cc, e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        NET_SETOPT(cc, e, CURLOPT_POSTFIELDS, body);
        NET_SETOPT(cc, e, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") == 0) {
        NET_SETOPT(cc, e, CURLOPT_HTTPGET, 1L);
    } else {
        NET_SETOPT(cc, e, CURLOPT_CUSTOMREQUEST, method);
    }
    return cc;
}

size_t net_body_write(char *data, size_t size, size_t nmemb, void *userp)
{
    struct net_body *b = userp;
    size_t n = size * nmemb;
    if (n > b->max - b->len) {
        b->too_large = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *nb;
        if (b->wipe) {
            /* Not realloc: the old block may hold key material and must be wiped. */
            nb = malloc(cap);
            if (nb && b->data) {
                memcpy(nb, b->data, b->len);
                OPENSSL_cleanse(b->data, b->len);
                free(b->data);
            }
        } else {
            nb = realloc(b->data, cap);
        }
        if (!nb) {
            b->nomem = true;
            return 0;
        }
        b->data = nb;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

bool net_body_take(struct net_body *b, char **data, size_t *len)
{
    if (!b->data) {
        b->data = calloc(1, 1);
        if (!b->data)
            return false;
        b->cap = 1;
    }
    *data = b->data;
    *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return true;
}

void net_body_free(struct net_body *b)
{
    if (b->data && b->wipe)
        OPENSSL_cleanse(b->data, b->len);
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

size_t net_escape_byte(unsigned char ch, bool query, char out[3])
{
    static const char hex[] = "0123456789ABCDEF";
    if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
        ch == '-' || ch == '.' || ch == '_' || ch == '~') {
        out[0] = (char)ch;
        return 1;
    }
    if (query && ch == ' ') {
        out[0] = '+';
        return 1;
    }
    out[0] = '%';
    out[1] = hex[ch >> 4];
    out[2] = hex[ch & 0x0f];
    return 3;
}

int64_t net_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
