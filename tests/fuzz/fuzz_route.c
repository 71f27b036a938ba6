/* Fuzzes http_route_match(), which splits every request path against the route table and copies
 * its parameters into a scratch buffer of strlen(path) + 1 bytes.
 *
 * Input: "<pattern>\n<path>" matches that pair; input without '\n' is a path, matched against
 * every pattern of the service's route table (copied from src/api/routes.c).
 *
 * Invariants: the scratch buffer is never overrun (it is exactly sized, for AddressSanitizer); a
 * match returns one parameter per "{name}" segment, none holding a '/', and substituting them
 * back into the pattern gives the path; the verdict equals that of a plain segment-by-segment
 * comparison written here independently. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "iot-manager/api.h" /* the prefixes only: nothing of the API layer is linked */
#include "iot-manager/http.h"

#define MGMT     API_MANAGEMENT_PREFIX
#define INTERNAL API_INTERNAL_PREFIX

static const char *const patterns[] = {
    MGMT "/integrations",
    MGMT "/integrations/{id}",
    MGMT "/integrations/{id}/credentials",
    MGMT "/devices/{id}",
    MGMT "/devices/{id}/state",
    MGMT "/devices/{id}/state/{integration_id}",
    MGMT "/events",
    "/metrics",
    INTERNAL "/alive",
    INTERNAL "/health",
    INTERNAL "/tenants/{tenant_id}",
    INTERNAL "/tenants/{tenant_id}/devices",
    INTERNAL "/tenants/{tenant_id}/devices/{device_id}",
    INTERNAL "/tenants/{tenant_id}/bulk/devices/status/{status}",
};

static bool is_param(const char *seg, size_t len)
{
    return len >= 2 && seg[0] == '{' && seg[len - 1] == '}';
}

/* The same rule, stated plainly: both start with '/', the same number of '/'-separated
 * segments, each equal or a parameter segment; at most HTTP_MAX_PARAMS parameters. */
static bool reference_match(const char *pattern, const char *path)
{
    if (!*pattern || !*path)
        return !*pattern && !*path;
    if (pattern[0] != '/' || path[0] != '/')
        return false;
    size_t params = 0;
    const char *p = pattern + 1;
    const char *s = path + 1;
    for (;;) {
        size_t plen = strcspn(p, "/");
        size_t slen = strcspn(s, "/");
        if (is_param(p, plen)) {
            if (++params > HTTP_MAX_PARAMS)
                return false;
        } else if (plen != slen || memcmp(p, s, plen) != 0) {
            return false;
        }
        p += plen;
        s += slen;
        if (!*p || !*s)
            return !*p && !*s;
        p++;
        s++;
    }
}

static void check(const char *pattern, const char *path)
{
    size_t plen = strlen(path);
    char *scratch = malloc(plen + 1);
    FUZZ_CHECK(scratch != NULL);
    const char *params[HTTP_MAX_PARAMS];
    size_t n = 99;
    bool ok = http_route_match(pattern, path, scratch, params, &n);
    FUZZ_CHECK(ok == reference_match(pattern, path));
    if (ok) {
        FUZZ_CHECK(n <= HTTP_MAX_PARAMS);
        /* rebuild the path from the pattern and the parameters */
        char *rebuilt = malloc(strlen(pattern) + plen + 1);
        FUZZ_CHECK(rebuilt != NULL);
        size_t used = 0;
        size_t k = 0;
        for (const char *p = pattern; *p;) {
            size_t seg = strcspn(p + 1, "/") + 1; /* with its leading '/' */
            if (is_param(p + 1, seg - 1)) {
                FUZZ_CHECK(k < n);
                FUZZ_CHECK(params[k] >= scratch && params[k] <= scratch + plen);
                FUZZ_CHECK(strchr(params[k], '/') == NULL);
                rebuilt[used++] = '/';
                memcpy(rebuilt + used, params[k], strlen(params[k]));
                used += strlen(params[k]);
                k++;
            } else {
                memcpy(rebuilt + used, p, seg);
                used += seg;
            }
            p += seg;
        }
        rebuilt[used] = '\0';
        FUZZ_CHECK(k == n);
        FUZZ_CHECK(strcmp(rebuilt, path) == 0);
        free(rebuilt);
    }
    free(scratch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    char *nl = strchr(text, '\n');
    if (nl) {
        *nl = '\0';
        check(text, nl + 1);
    } else {
        for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++)
            check(patterns[i], text);
    }
    free(text);
    return 0;
}
