/* Route handlers of the API, private to src/api. */
#ifndef IOT_MANAGER_API_HANDLERS_H
#define IOT_MANAGER_API_HANDLERS_H

#include "iot-manager/app.h"
#include "iot-manager/error.h"
#include "iot-manager/http.h"
#include "iot-manager/identity.h"

/* Route flags read by the before-hook. */
#define API_AUTH_USER  0x1u /* management API: a user's JWT is required */
#define API_PERM_READ  0x2u /* with RBAC on: a read or admin role */
#define API_PERM_ADMIN 0x4u /* with RBAC on: an admin role */
/* X-MEN-RBAC-Inventory-Groups limits the caller to device groups this service cannot check:
 * with RBAC on, device-level routes refuse such callers (docs/rbac.md). */
#define API_DEVICE_SCOPED 0x8u

/* The caller's identity (management routes only). */
const struct identity *api_identity(const struct http_request *req);
struct app *api_app(const struct http_request *req);

/* Maps an app error to a response: 4xx with the message, 503 for an unavailable store, 500 (with
 * a generic text; details go to the log) for the rest. */
void api_respond_error(struct http_request *req, struct http_response *resp, enum iot_err rc,
                       const struct iot_error *err);

/* The same, for errors that may carry a Retry-After (throttled hub: 503 + Retry-After). */
void api_respond_error_retry(struct http_request *req, struct http_response *resp, enum iot_err rc,
                             const struct iot_error *err, int64_t retry_after_ms);

void handle_device_states(struct http_request *req, struct http_response *resp);
void handle_device_state_get(struct http_request *req, struct http_response *resp);
void handle_device_state_put(struct http_request *req, struct http_response *resp);
void handle_device_state_patch(struct http_request *req, struct http_response *resp);
void handle_device_unlink(struct http_request *req, struct http_response *resp);

void handle_integrations_list(struct http_request *req, struct http_response *resp);
void handle_integration_create(struct http_request *req, struct http_response *resp);
void handle_integration_get(struct http_request *req, struct http_response *resp);
void handle_integration_set_credentials(struct http_request *req, struct http_response *resp);
void handle_integration_delete(struct http_request *req, struct http_response *resp);

void handle_metrics(struct http_request *req, struct http_response *resp);
void handle_lifecycle_provision(struct http_request *req, struct http_response *resp);
void handle_lifecycle_decommission(struct http_request *req, struct http_response *resp);
void handle_lifecycle_bulk_status(struct http_request *req, struct http_response *resp);
void handle_events_list(struct http_request *req, struct http_response *resp);

void handle_alive(struct http_request *req, struct http_response *resp);
void handle_health(struct http_request *req, struct http_response *resp);
void handle_tenant_delete(struct http_request *req, struct http_response *resp);

#endif
