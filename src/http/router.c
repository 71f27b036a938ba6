#include <string.h>

#include "iot-manager/http.h"

/* Segment-wise match; "{x}" matches any one segment, including an empty one. A trailing slash
 * is significant, as in Mender's router. */
bool http_route_match(const char *pattern, const char *path, char *scratch, const char **params,
                      size_t *nparams)
{
    size_t np = 0;
    const char *p = pattern;
    const char *s = path;
    char *out = scratch;
    for (;;) {
        if (*p == '\0' || *s == '\0')
            break;
        if (*p != '/' || *s != '/')
            return false;
        p++;
        s++;
        const char *pend = strchr(p, '/');
        const char *send = strchr(s, '/');
        size_t plen = pend ? (size_t)(pend - p) : strlen(p);
        size_t slen = send ? (size_t)(send - s) : strlen(s);
        if (plen >= 2 && p[0] == '{' && p[plen - 1] == '}') {
            if (np == HTTP_MAX_PARAMS)
                return false;
            memcpy(out, s, slen);
            out[slen] = '\0';
            params[np++] = out;
            out += slen + 1;
        } else if (plen != slen || memcmp(p, s, plen) != 0) {
            return false;
        }
        p += plen;
        s += slen;
    }
    if (*p != '\0' || *s != '\0')
        return false;
    *nparams = np;
    return true;
}
