/* Clients of Mender's own services that iot-manager calls (src/configure/, libcurl):
 * - Configure: delivers a device's connection string, through the workflows server
 *   (`provision_external_device`, exactly as Mender's iot-manager) or directly to deviceconfig
 *   (PATCH the device's configuration, then deploy it);
 * - deviceauth: which devices Mender knows and their status (sync-devices).
 * Every call has a connect and a total timeout; redirects are never followed; request ids are
 * passed on. The app layer sees only this header.
 */
#ifndef IOT_MANAGER_CONFIGURE_H
#define IOT_MANAGER_CONFIGURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iot-manager/error.h"

enum configure_mode { CONFIGURE_MODE_WORKFLOWS = 0, CONFIGURE_MODE_DEVICECONFIG };

struct mender_client_options {
    enum configure_mode mode;
    const char *workflows_url;    /* e.g. http://mender-workflows-server:8080; copied */
    const char *deviceconfig_url; /* e.g. http://mender-deviceconfig:8080; copied */
    const char *deviceauth_url;   /* e.g. http://mender-device-auth:8080; copied */
    long connect_timeout_ms;      /* default 2000 */
    long timeout_ms;              /* default 10000 */
    unsigned max_connections;     /* default 16 */
};

void mender_client_options_default(struct mender_client_options *o);

struct mender_client;

enum iot_err mender_client_new(const struct mender_client_options *o, struct mender_client **out,
                               struct iot_error *err);
void mender_client_free(struct mender_client *c);

/* Delivers `connection_string` (a secret: never logged) as configuration key
 * "azureConnectionString" of the device, then triggers its deployment.
 * workflows mode: POST {workflows}/api/v1/workflow/provision_external_device with
 *   {"tenant_id","device_id","request_id","provider":"Azure","configuration":{"azureConnectionString":…}}
 * deviceconfig mode: PATCH {deviceconfig}/api/internal/v1/deviceconfig/tenants/{t}/configurations/
 *   device/{d} with {"azureConnectionString":…}, then POST …/deploy with {"retries":1}.
 * Errors: UNAVAILABLE for connection failures, timeouts and 5xx/429 (retryable), INVALID for other
 * 4xx (permanent), UPSTREAM for anything unusable. */
enum iot_err mender_configure_push(struct mender_client *c, const char *tenant,
                                   const char *device_id, const char *connection_string,
                                   const char *request_id, struct iot_error *err);

struct deviceauth_device {
    char *id;     /* owned */
    char *status; /* owned: accepted, pending, rejected, noauth, preauthorized, ... */
};

/* GET {deviceauth}/api/internal/v1/devauth/tenants/{t}/devices?id=…&id=…&per_page=<n>
 * (X-MEN-RequestID when given). Devices Mender does not know are simply absent from the result.
 * `out` (caller-allocated, at least n entries) receives *found entries; free them with
 * deviceauth_device_clear(). */
enum iot_err mender_deviceauth_devices(struct mender_client *c, const char *tenant,
                                       const char *const *ids, size_t n, const char *request_id,
                                       struct deviceauth_device *out, size_t *found,
                                       struct iot_error *err);

/* GET {deviceauth}/api/internal/v1/devauth/tenants/{t}/devices?status=accepted&page=…&per_page=…
 * for --provision-existing: one page of the tenant's accepted devices. */
enum iot_err mender_deviceauth_accepted_page(struct mender_client *c, const char *tenant,
                                             size_t page, size_t per_page,
                                             struct deviceauth_device *out, size_t *found,
                                             struct iot_error *err);

void deviceauth_device_clear(struct deviceauth_device *d);

#endif
