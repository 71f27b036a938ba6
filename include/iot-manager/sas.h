/* Azure shared access signature tokens.
 *
 * sr = percent-encode(resource) (RFC 3986 unreserved kept, upper-case hex), string to sign =
 * sr "\n" expiry, sig = base64(HMAC-SHA256(decoded key, string to sign)), then
 * "SharedAccessSignature sr=<sr>&sig=<percent-encoded sig>&se=<expiry>[&skn=<policy>]".
 */
#ifndef IOT_MANAGER_SAS_H
#define IOT_MANAGER_SAS_H

#include <stddef.h>
#include <stdint.h>
#include "iot-manager/connstr.h"
#include "iot-manager/error.h"

#define SAS_TOKEN_MAX 1024

/* Builds a token for `resource` into `out` (capacity `cap`). `policy` may be NULL (no skn).
 * IOT_ERR_INVALID when the output would not fit or the key is empty. */
enum iot_err sas_token_build(const char *resource, const uint8_t *key, size_t key_len,
                             const char *policy, int64_t expiry, char *out, size_t cap);

/* Token for a connection string: with SharedAccessKeyName the resource is HostName as written
 * (with ":port") and skn is set; with DeviceId only, it is "<HostName>/devices/<DeviceId>"
 * (ModuleId adds "/modules/<ModuleId>") and there is no skn. */
enum iot_err sas_token_for_connstr(const struct connstr *cs, int64_t expiry, char *out, size_t cap,
                                   struct iot_error *err);

/* Percent-encodes `in` (RFC 3986 unreserved kept, upper-case hex) into `out`. -1 if too small. */
long sas_url_encode(const char *in, char *out, size_t cap);

#endif
