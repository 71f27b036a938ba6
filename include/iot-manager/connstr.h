/* Azure IoT Hub connection strings: parsing, validation and formatting, with Mender's texts.
 *
 * Parsing: split on ';', each part on the first '='; keys case-sensitive (HostName,
 * SharedAccessKey, SharedAccessKeyName, SharedAccessSignature, DeviceId, ModuleId); duplicates:
 * the last wins. SharedAccessKey is standard base64 with padding (any decoded length).
 */
#ifndef IOT_MANAGER_CONNSTR_H
#define IOT_MANAGER_CONNSTR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "iot-manager/error.h"

#define CONNSTR_MAX_LEN     4096
#define CONNSTR_MASK_SUFFIX "...<omitted>"

struct connstr {
    char *hostname; /* each field owned, NULL when absent */
    char *gateway_hostname;
    char *name; /* SharedAccessKeyName */
    char *device_id;
    char *module_id;
    char *signature; /* SharedAccessSignature: kept in memory only */
    uint8_t *key;    /* decoded SharedAccessKey */
    size_t key_len;
    bool has_key;
    /* Set instead of `key` when the key was exactly a masked value as we return it
     * ("<base64 of up to 3 bytes>...<omitted>"); the text is kept here. */
    char *masked_key;
};

/* Parses `text`. Errors (IOT_ERR_INVALID) are Mender's: "invalid connectionstring format",
 * "invalid connection string key: <k>", "shared access key format: illegal base64 data at input
 * byte <n>". With `allow_masked_key`, a SharedAccessKey ending in "...<omitted>" is accepted and
 * put in `masked_key`. `out` is zeroed first and owns everything afterwards. */
enum iot_err connstr_parse(const char *text, bool allow_masked_key, struct connstr *out,
                           struct iot_error *err);

/* Resolves `host` (no port); returns true when it resolves. Injected so tests need no DNS. */
typedef bool (*connstr_resolve_fn)(const char *host, void *ctx);

/* The production resolver: getaddrinfo(AF_UNSPEC); `ctx` is unused. Blocks for the lookup. */
bool connstr_resolve_getaddrinfo(const char *host, void *ctx);

struct connstr_rules {
    const char *const *whitelist; /* patterns like "*.azure-devices.net" */
    size_t whitelist_len;
    connstr_resolve_fn resolve; /* NULL: no lookup */
    void *resolve_ctx;
    bool require_policy_name; /* ours: reject device connection strings */
};

/* Validates as Mender's Validate() does, messages prefixed "connection string invalid: ":
 * "HostName: hostname does not refer to a trusted domain.", "HostName: failed to lookup host with
 * name '<h>'.", "Key: cannot be blank.", "one of 'DeviceId' or 'SharedAccessKeyName' must be set",
 * "connection string can be no longer than 4096 characters"; ozzo's field errors sorted by key,
 * joined with "; ", ended by ".". With require_policy_name: "SharedAccessKeyName is required: a
 * device connection string cannot manage the hub's registry". A masked key counts as present. */
enum iot_err connstr_validate(const struct connstr *cs, const struct connstr_rules *rules,
                              struct iot_error *err);

/* Mender's whitelist rule: strip ":port", lower-case, trim a trailing '.', same number of labels,
 * each equal or '*'. Stricter than Mender: the name must be plain DNS syntax and the port 1-5
 * digits (so the matched name is the one an HTTP client connects to); "[v6]:port" literals match
 * only an identical entry. */
bool connstr_host_trusted(const char *hostname, const char *const *whitelist, size_t len);

/* Mender's String(): HostName, GatewayHostName, SharedAccessKeyName, DeviceId, ModuleId,
 * SharedAccessKey, SharedAccessSignature in that order, empty ones skipped. Contains the secret.
 * Returns a malloc'd string (caller frees, and should wipe) or NULL on OOM. */
char *connstr_format(const struct connstr *cs);

/* The same with the key masked as Mender does: base64 of its first 3 bytes + "...<omitted>". */
char *connstr_format_masked(const struct connstr *cs);

/* The masked form of a raw key, into `out` (at least 32 bytes). */
void connstr_mask_key(const uint8_t *key, size_t key_len, char *out, size_t cap);

/* Frees and wipes every field; NULL-safe. */
void connstr_clear(struct connstr *cs);

#endif
