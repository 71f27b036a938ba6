#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "azure/hub_internal.h"
#include "iot-manager/net.h"

static bool is_alnum(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
}

bool hub_device_id_valid(const char *id)
{
    if (!id || !*id)
        return false;
    size_t n = 0;
    for (; id[n]; n++) {
        unsigned char ch = (unsigned char)id[n];
        if (n >= HUB_DEVICE_ID_MAX)
            return false;
        if (!is_alnum(ch) && !strchr("-:.+%_#*?!(),=@;$'", ch))
            return false;
    }
    return true;
}

long hub_path_escape(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    char enc[3];
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        size_t need = net_escape_byte(*p, false, enc);
        if (o + need >= cap)
            return -1;
        memcpy(out + o, enc, need);
        o += need;
    }
    if (o >= cap)
        return -1;
    out[o] = '\0';
    return (long)o;
}

bool hub_host_valid(const char *host)
{
    if (!host || !*host)
        return false;
    const char *colon = strchr(host, ':');
    size_t name_len = colon ? (size_t)(colon - host) : strlen(host);
    if (name_len == 0 || name_len > HUB_HOST_MAX || host[0] == '.' || host[0] == '-')
        return false;
    /* Only DNS characters: anything else ('/', '@', '?', '#', '[', ...) could move the request
     * to another host or path once spliced into a URL. */
    for (size_t i = 0; i < name_len; i++) {
        unsigned char ch = (unsigned char)host[i];
        if (!is_alnum(ch) && ch != '-' && ch != '.')
            return false;
        if (ch == '.' && host[i + 1] == '.')
            return false;
    }
    if (!colon)
        return true;
    const char *port = colon + 1;
    size_t plen = strlen(port);
    if (plen == 0 || plen > 5)
        return false;
    long value = 0;
    for (size_t i = 0; i < plen; i++) {
        if (port[i] < '0' || port[i] > '9')
            return false;
        value = value * 10 + (port[i] - '0');
    }
    return value >= 1 && value <= 65535;
}

enum iot_err hub_url_build(bool plain_http, const char *host, const char *prefix,
                           const char *device_id, const char *suffix, char *out, size_t cap)
{
    if (!hub_host_valid(host))
        return IOT_ERR_INVALID;
    char id[HUB_DEVICE_ID_MAX * 3 + 1] = "";
    if (device_id) {
        if (!hub_device_id_valid(device_id) || hub_path_escape(device_id, id, sizeof id) < 0)
            return IOT_ERR_INVALID;
    }
    int n = snprintf(out, cap, "%s://%s%s%s%s?api-version=" HUB_API_VERSION,
                     plain_http ? "http" : "https", host, prefix, id, suffix ? suffix : "");
    if (n < 0 || (size_t)n >= cap)
        return IOT_ERR_INVALID;
    return IOT_OK;
}

enum iot_err hub_query_build_ids(const char *const *ids, size_t n, char **out,
                                 struct iot_error *err)
{
    static const char head[] = "SELECT * FROM devices WHERE devices.deviceId IN [";
    *out = NULL;
    if (n == 0 || n > HUB_QUERY_MAX_IDS)
        return iot_error_set(err, IOT_ERR_INVALID, "query: between 1 and %d device ids required",
                             HUB_QUERY_MAX_IDS);
    /* Every id is at most 128 characters plus two quotes and a comma. */
    size_t cap = sizeof head + n * (HUB_DEVICE_ID_MAX + 3) + 2;
    char *q = malloc(cap);
    if (!q)
        return iot_error_set(err, IOT_ERR_NOMEM, "query: out of memory");
    size_t o = sizeof head - 1;
    memcpy(q, head, o);
    for (size_t i = 0; i < n; i++) {
        /* Validation is the whole defence: an id that passes has no quote, backslash, bracket,
         * space or control character, so it cannot end the literal it sits in. */
        if (!hub_device_id_valid(ids[i]) || strchr(ids[i], '\'')) {
            free(q);
            return iot_error_set(err, IOT_ERR_INVALID, "query: device id #%zu is not allowed",
                                 i + 1);
        }
        size_t len = strlen(ids[i]);
        if (i > 0)
            q[o++] = ',';
        q[o++] = '\'';
        memcpy(q + o, ids[i], len);
        o += len;
        q[o++] = '\'';
    }
    q[o++] = ']';
    q[o] = '\0';
    if (o > HUB_QUERY_MAX_LEN) {
        free(q);
        return iot_error_set(err, IOT_ERR_INVALID, "query: longer than %d bytes",
                             HUB_QUERY_MAX_LEN);
    }
    *out = q;
    return IOT_OK;
}
