/* Delivers a device's connection string through Mender Configure.
 *
 * workflows mode reproduces the original exactly: the same URL and the same body bytes (field
 * order tenant_id, device_id, request_id, provider, configuration; Go's string escaping; an empty
 * "request_id" when none is known). Two deliberate differences: Content-Type: application/json is
 * sent (the original sends none; the workflows server binds JSON regardless of it), and
 * X-MEN-RequestID is sent when a request id is known (the original only puts it in the body).
 *
 * deviceconfig mode does what the workflow provision_external_device does, without the workflows
 * server in between: PATCH the device's configuration (keys are merged into what the device
 * already has), then POST .../deploy {"retries":1}. Like the workflow, a 404 from the PATCH counts
 * as success: the device may be gone (decommissioned meanwhile), and then there is nothing to
 * deploy, so the deploy call is skipped.
 */
#include <stdlib.h>
#include <string.h>

#include "configure/configure_internal.h"

#define CONFIG_KEY "azureConnectionString"

static bool is_2xx(long st)
{
    return st >= 200 && st <= 299;
}

/* What every request of one delivery carries: its request id and, as the secret no message may
 * echo, the connection string. All borrowed. */
struct delivery {
    struct mender_client *c;
    const char *cs;
    const char *request_id;
};

/* Sends one request of delivery `d` (`what` names it in messages; url and body borrowed).
 * IOT_OK for a 2xx answer, whose body no caller needs; with `gone` not NULL also for a 404,
 * which sets *gone: the device no longer exists. */
static enum iot_err delivery_send(const struct delivery *d, const char *what, const char *method,
                                  const char *url, const char *body, size_t body_len, bool *gone,
                                  struct iot_error *err)
{
    struct mender_request req = {
        .what = what,
        .method = method,
        .url = url,
        .body = body,
        .body_len = body_len,
        .request_id = d->request_id,
        .secret = d->cs,
    };
    struct mender_response resp;
    enum iot_err rc = mender_http_perform(d->c, &req, &resp, err);
    if (rc == IOT_OK && gone && resp.status == 404)
        *gone = true;
    else if (rc == IOT_OK && !is_2xx(resp.status))
        rc = mender_status_error(&req, &resp, err);
    mender_response_clear(&resp);
    return rc;
}

static enum iot_err push_workflows(const struct delivery *d, const char *tenant,
                                   const char *device_id, struct iot_error *err)
{
    struct mender_buf url, body;
    mender_buf_init(&url, MENDER_URL_MAX);
    mender_buf_init(&body, 64 * 1024);
    mender_buf_adds(&url, d->c->workflows_url);
    mender_buf_adds(&url, "/api/v1/workflow/provision_external_device");

    mender_buf_adds(&body, "{\"tenant_id\":");
    mender_buf_add_json_string(&body, tenant);
    mender_buf_adds(&body, ",\"device_id\":");
    mender_buf_add_json_string(&body, device_id);
    mender_buf_adds(&body, ",\"request_id\":");
    mender_buf_add_json_string(&body, d->request_id);
    mender_buf_adds(&body, ",\"provider\":\"Azure\",\"configuration\":{\"" CONFIG_KEY "\":");
    mender_buf_add_json_string(&body, d->cs);
    mender_buf_adds(&body, "}}");

    /* The answer ({"id","name"} of the job) is not needed: the job runs on its own. */
    enum iot_err rc;
    if (url.failed || body.failed)
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           "workflows provision_external_device: request too large");
    else
        rc = delivery_send(d, "workflows provision_external_device", "POST", url.p, body.p,
                           body.len, NULL, err);
    mender_buf_free(&url, false);
    mender_buf_free(&body, true);
    return rc;
}

static enum iot_err push_deviceconfig(const struct delivery *d, const char *tenant,
                                      const char *device_id, struct iot_error *err)
{
    struct mender_buf url, body;
    mender_buf_init(&url, MENDER_URL_MAX);
    mender_buf_init(&body, 64 * 1024);
    mender_buf_adds(&url, d->c->deviceconfig_url);
    mender_buf_adds(&url, "/api/internal/v1/deviceconfig/tenants/");
    mender_buf_add_path_segment(&url, tenant);
    mender_buf_adds(&url, "/configurations/device/");
    mender_buf_add_path_segment(&url, device_id);
    mender_buf_adds(&body, "{\"" CONFIG_KEY "\":");
    mender_buf_add_json_string(&body, d->cs);
    mender_buf_addc(&body, '}');

    enum iot_err rc;
    bool gone = false;
    if (url.failed || body.failed) {
        rc = iot_error_set(err, IOT_ERR_INVALID, "deviceconfig configuration: request too large");
        goto out;
    }
    rc = delivery_send(d, "deviceconfig configuration update", "PATCH", url.p, body.p, body.len,
                       &gone, err);
    if (rc != IOT_OK || gone) /* gone: nothing to configure or deploy */
        goto out;

    mender_buf_adds(&url, "/deploy");
    if (url.failed) {
        rc = iot_error_set(err, IOT_ERR_INVALID, "deviceconfig deploy: request too large");
        goto out;
    }
    static const char deploy_body[] = "{\"retries\":1}";
    rc = delivery_send(d, "deviceconfig deploy", "POST", url.p, deploy_body, sizeof deploy_body - 1,
                       NULL, err);
out:
    mender_buf_free(&url, false);
    mender_buf_free(&body, true);
    return rc;
}

enum iot_err mender_configure_push(struct mender_client *c, const char *tenant,
                                   const char *device_id, const char *connection_string,
                                   const char *request_id, struct iot_error *err)
{
    if (!device_id || !*device_id)
        return iot_error_set(err, IOT_ERR_INVALID, "configure: empty device id");
    if (!connection_string || !*connection_string)
        return iot_error_set(err, IOT_ERR_INVALID, "configure: empty connection string");
    if (!tenant)
        tenant = ""; /* open source: the single tenant has the empty id */
    if (!request_id)
        request_id = "";
    const struct delivery d = {.c = c, .cs = connection_string, .request_id = request_id};
    if (c->mode == CONFIGURE_MODE_DEVICECONFIG)
        return push_deviceconfig(&d, tenant, device_id, err);
    return push_workflows(&d, tenant, device_id, err);
}
