#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "iot-manager/api.h"
#include "iot-manager/log.h"

#define MGMT     API_MANAGEMENT_PREFIX
#define INTERNAL API_INTERNAL_PREFIX

#define READ  (API_AUTH_USER | API_PERM_READ)
#define ADMIN (API_AUTH_USER | API_PERM_ADMIN)

static const struct http_route api_routes[] = {
    {"GET", MGMT "/integrations", handle_integrations_list, READ},
    {"POST", MGMT "/integrations", handle_integration_create, ADMIN},
    {"GET", MGMT "/integrations/{id}", handle_integration_get, READ},
    {"DELETE", MGMT "/integrations/{id}", handle_integration_delete, ADMIN},
    {"PUT", MGMT "/integrations/{id}/credentials", handle_integration_set_credentials, ADMIN},
    {"DELETE", MGMT "/devices/{id}", handle_device_unlink, ADMIN | API_DEVICE_SCOPED},
    {"GET", MGMT "/devices/{id}/state", handle_device_states, READ | API_DEVICE_SCOPED},
    {"GET", MGMT "/devices/{id}/state/{integration_id}", handle_device_state_get,
     READ | API_DEVICE_SCOPED},
    {"PUT", MGMT "/devices/{id}/state/{integration_id}", handle_device_state_put,
     ADMIN | API_DEVICE_SCOPED},
    {"PATCH", MGMT "/devices/{id}/state/{integration_id}", handle_device_state_patch,
     ADMIN | API_DEVICE_SCOPED},
    {"GET", "/metrics", handle_metrics, 0},
    {"GET", INTERNAL "/alive", handle_alive, 0},
    {"GET", INTERNAL "/health", handle_health, 0},
    {"GET", MGMT "/events", handle_events_list, READ},
    {"DELETE", INTERNAL "/tenants/{tenant_id}", handle_tenant_delete, 0},
    {"POST", INTERNAL "/tenants/{tenant_id}/devices", handle_lifecycle_provision, 0},
    {"DELETE", INTERNAL "/tenants/{tenant_id}/devices/{device_id}", handle_lifecycle_decommission,
     0},
    {"PUT", INTERNAL "/tenants/{tenant_id}/bulk/devices/status/{status}",
     handle_lifecycle_bulk_status, 0},
};

static void release_identity(void *p)
{
    identity_clear(p);
    free(p);
}

const struct identity *api_identity(const struct http_request *req)
{
    return http_request_user(req);
}

struct app *api_app(const struct http_request *req)
{
    return http_request_ctx(req);
}

/* The raw token, as identity_decode() found it (header first, else the JWT cookie). */
static const char *request_token(struct http_request *req)
{
    const char *auth = http_request_header(req, "Authorization");
    if (auth && *auth) {
        const char *space = strchr(auth, ' ');
        return space ? space + 1 : auth;
    }
    return http_request_cookie(req, "JWT");
}

static bool deny_unauthorized(struct http_response *resp, const char *msg)
{
    http_response_header(resp, "WWW-Authenticate", "Bearer realm=\"ManagementJWT\"");
    http_response_error(resp, 401, msg);
    return false;
}

/* Authentication and authorisation seam: every management route passes here first. */
static bool api_before(struct http_request *req, const struct http_route *route,
                       struct http_response *resp)
{
    if (!(route->flags & API_AUTH_USER))
        return true;
    struct app *app = api_app(req);
    struct identity *id = calloc(1, sizeof *id);
    if (!id) {
        http_response_error(resp, 500, "internal error");
        return false;
    }
    struct iot_error err = {0};
    const char *auth = http_request_header(req, "Authorization");
    enum iot_err rc =
        identity_decode(auth && *auth ? auth : NULL, http_request_cookie(req, "JWT"), id, &err);
    if (rc != IOT_OK) {
        free(id);
        if (rc != IOT_ERR_UNAUTHORIZED) {
            http_response_error(resp, 500, "internal error");
            return false;
        }
        return deny_unauthorized(resp, err.msg);
    }
    http_request_set_user(req, id, release_identity);
    http_request_log_field(req, "tenant", id->tenant);

    if (app->jwt_keys) {
        json_t *verified = NULL;
        rc = jwt_verify(app->jwt_keys, &app->jwt_opts, request_token(req), &verified, &err);
        json_decref(verified);
        if (rc != IOT_OK) {
            log_write(LOG_LEVEL_INFO, http_request_id(req), id->tenant, "token rejected: %s",
                      err.msg);
            if (rc != IOT_ERR_UNAUTHORIZED) {
                http_response_error(resp, 500, "internal error");
                return false;
            }
            char msg[IOT_ERROR_MSG_MAX + 32];
            snprintf(msg, sizeof msg, "identity: %s", err.msg);
            return deny_unauthorized(resp, msg);
        }
    }
    if (!id->is_user) {
        http_response_error(resp, 403, "user identity missing from authorization token");
        return false;
    }

    /* 403, never 401, from here on: the Mender UI logs the user out on 401 */
    enum rbac_permission need = (route->flags & API_PERM_ADMIN) ? RBAC_ADMIN : RBAC_READ;
    enum rbac_permission have = rbac_grant(&app->rbac, json_object_get(id->claims, "mender.roles"));
    if (have < need) {
        char msg[128];
        snprintf(msg, sizeof msg, "forbidden: this operation needs the %s permission",
                 rbac_permission_name(need));
        http_response_error(resp, 403, msg);
        return false;
    }
    const char *groups = http_request_header(req, "X-MEN-RBAC-Inventory-Groups");
    if (app->rbac.enabled && (route->flags & API_DEVICE_SCOPED) && groups && *groups) {
        http_response_error(resp, 403,
                            "forbidden: access limited to device groups, which iot-manager "
                            "cannot check");
        return false;
    }
    return true;
}

void api_respond_error_retry(struct http_request *req, struct http_response *resp, enum iot_err rc,
                             const struct iot_error *err, int64_t retry_after_ms)
{
    const char *msg = err && err->msg[0] ? err->msg : iot_strerror(rc);
    char seconds[32];
    switch (rc) {
    case IOT_ERR_INVALID:
    case IOT_ERR_NOT_FOUND:
    case IOT_ERR_CONFLICT:
    case IOT_ERR_FORBIDDEN:
    case IOT_ERR_TOO_LARGE:
        http_response_error(resp, iot_err_http_status(rc), msg);
        return;
    case IOT_ERR_THROTTLED:
        snprintf(seconds, sizeof seconds, "%lld",
                 (long long)((retry_after_ms > 0 ? retry_after_ms : 1000) + 999) / 1000);
        http_response_header(resp, "Retry-After", seconds);
        http_response_error(resp, 503, msg);
        return;
    case IOT_ERR_UPSTREAM:
        log_write(LOG_LEVEL_WARN, http_request_id(req), NULL, "%s", msg);
        http_response_error(resp, 502, msg);
        return;
    case IOT_ERR_UNAVAILABLE:
    case IOT_ERR_NEEDS_MIGRATION:
        log_write(LOG_LEVEL_WARN, http_request_id(req), NULL, "store unavailable: %s", msg);
        http_response_header(resp, "Retry-After", "5");
        http_response_error(resp, 503, "the database is unavailable, try again later");
        return;
    default:
        log_write(LOG_LEVEL_ERROR, http_request_id(req), NULL, "%s %s: %s (%s)",
                  http_request_method(req), http_request_path(req), iot_strerror(rc), msg);
        http_response_error(resp, 500, rc == IOT_ERR_CRYPTO ? msg : "internal error");
    }
}

void api_respond_error(struct http_request *req, struct http_response *resp, enum iot_err rc,
                       const struct iot_error *err)
{
    api_respond_error_retry(req, resp, rc, err, 0);
}

enum iot_err api_server_start(struct app *app, const struct config *cfg, struct http_server **out,
                              struct iot_error *err)
{
    struct http_server_options opts = {
        .listen = cfg->listen,
        .threads = (unsigned)cfg->http_threads,
        .connection_limit = (unsigned)cfg->http_connection_limit,
        .idle_timeout_s = (unsigned)cfg->http_idle_timeout,
        .shutdown_timeout_s = (unsigned)cfg->shutdown_timeout,
        .body_limit = (size_t)cfg->request_size_limit,
        .routes = api_routes,
        .nroutes = sizeof api_routes / sizeof api_routes[0],
        .before = api_before,
        .metrics = app->metrics,
        .ctx = app,
    };
    return http_server_start(&opts, out, err);
}
