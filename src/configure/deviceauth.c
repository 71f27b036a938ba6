/* deviceauth's internal device listing, as sync-devices (and --provision-existing) need it.
 *
 * The id listing reproduces the original's request: GET .../tenants/{t}/devices?id=a&id=b&...
 * &per_page=<number of ids> (Go's url.Values encoding: keys sorted, so all id= come first), with
 * X-MEN-RequestID when known. Unlike the original, the tenant is percent-encoded in the path (it
 * is a hex id or empty, so the bytes are the same in practice), and an empty id list sends no
 * request at all: deviceauth would read it as "no filter" and list every device.
 * Only 200 with a JSON array (or null) of objects is a usable answer; fields other than id and
 * status are ignored.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "configure/configure_internal.h"

#define DEVICE_ID_MAX     1024
#define DEVICE_STATUS_MAX 256
#define PER_PAGE_MAX      500 /* deviceauth's own limit */

void deviceauth_device_clear(struct deviceauth_device *d)
{
    if (!d)
        return;
    free(d->id);
    free(d->status);
    d->id = NULL;
    d->status = NULL;
}

static enum iot_err parse_devices(const char *what, const struct mender_response *resp,
                                  struct deviceauth_device *out, size_t cap, size_t *found,
                                  struct iot_error *err)
{
    json_error_t jerr;
    json_t *doc = json_loadb(resp->body, resp->len, JSON_DECODE_ANY, &jerr);
    enum iot_err rc = IOT_OK;
    size_t n = 0;
    if (!doc) {
        rc = iot_error_set(err, IOT_ERR_UPSTREAM, "%s: answer is not JSON (line %d: %s)", what,
                           jerr.line, jerr.text);
        goto out;
    }
    if (json_is_null(doc)) /* what Go's encoder writes for an empty nil slice */
        goto out;
    if (!json_is_array(doc)) {
        rc = iot_error_set(err, IOT_ERR_UPSTREAM, "%s: answer is not a JSON array", what);
        goto out;
    }
    size_t i;
    json_t *item;
    json_array_foreach(doc, i, item)
    {
        if (!json_is_object(item)) {
            rc = iot_error_set(err, IOT_ERR_UPSTREAM, "%s: device %zu is not an object", what, i);
            goto out;
        }
        json_t *jid = json_object_get(item, "id");
        json_t *jst = json_object_get(item, "status");
        if ((jid && !json_is_string(jid) && !json_is_null(jid)) ||
            (jst && !json_is_string(jst) && !json_is_null(jst))) {
            rc = iot_error_set(err, IOT_ERR_UPSTREAM,
                               "%s: device %zu: id and status must be "
                               "strings",
                               what, i);
            goto out;
        }
        const char *id = json_string_value(jid);
        const char *status = jst ? json_string_value(jst) : NULL;
        if (!id || !*id) /* cannot be any device we asked about */
            continue;
        if (strlen(id) > DEVICE_ID_MAX || (status && strlen(status) > DEVICE_STATUS_MAX)) {
            rc = iot_error_set(err, IOT_ERR_UPSTREAM, "%s: device %zu: id or status too long", what,
                               i);
            goto out;
        }
        if (n >= cap) {
            rc = iot_error_set(err, IOT_ERR_UPSTREAM, "%s: more devices than the %zu asked for",
                               what, cap);
            goto out;
        }
        out[n].id = strdup(id);
        out[n].status = strdup(status ? status : "");
        n++;
        if (!out[n - 1].id || !out[n - 1].status) {
            rc = iot_error_set(err, IOT_ERR_NOMEM, "%s: out of memory", what);
            goto out;
        }
    }
out:
    if (rc != IOT_OK) {
        for (size_t k = 0; k < n; k++)
            deviceauth_device_clear(&out[k]);
        n = 0;
    }
    *found = n;
    json_decref(doc);
    return rc;
}

static enum iot_err list_devices(struct mender_client *c, const struct mender_request *req,
                                 struct deviceauth_device *out, size_t cap, size_t *found,
                                 struct iot_error *err)
{
    struct mender_response resp;
    enum iot_err rc = mender_http_perform(c, req, &resp, err);
    if (rc == IOT_OK) {
        if (resp.status == 200)
            rc = parse_devices(req->what, &resp, out, cap, found, err);
        else if (resp.status >= 200 && resp.status <= 299)
            rc = iot_error_set(err, IOT_ERR_UPSTREAM, "%s: answered %ld, expected 200", req->what,
                               resp.status);
        else
            rc = mender_status_error(req, &resp, err);
    }
    mender_response_clear(&resp);
    return rc;
}

static void add_devices_path(struct mender_buf *url, const struct mender_client *c,
                             const char *tenant)
{
    mender_buf_adds(url, c->deviceauth_url);
    mender_buf_adds(url, "/api/internal/v1/devauth/tenants/");
    mender_buf_add_path_segment(url, tenant ? tenant : "");
    mender_buf_adds(url, "/devices");
}

enum iot_err mender_deviceauth_devices(struct mender_client *c, const char *tenant,
                                       const char *const *ids, size_t n, const char *request_id,
                                       struct deviceauth_device *out, size_t *found,
                                       struct iot_error *err)
{
    *found = 0;
    if (n == 0)
        return IOT_OK;
    if (!c->deviceauth_url)
        return iot_error_set(err, IOT_ERR_CONFIG, "deviceauth URL is not configured");
    if (n > PER_PAGE_MAX)
        return iot_error_set(err, IOT_ERR_INVALID,
                             "deviceauth device listing: at most %d ids at once", PER_PAGE_MAX);
    for (size_t i = 0; i < n; i++) {
        if (!ids[i] || !*ids[i])
            return iot_error_set(err, IOT_ERR_INVALID,
                                 "deviceauth device listing: empty device id");
        memset(&out[i], 0, sizeof out[i]);
    }

    struct mender_buf url;
    mender_buf_init(&url, MENDER_URL_MAX);
    add_devices_path(&url, c, tenant);
    for (size_t i = 0; i < n; i++) {
        mender_buf_adds(&url, i == 0 ? "?id=" : "&id=");
        mender_buf_add_query_value(&url, ids[i]);
    }
    char tail[48];
    snprintf(tail, sizeof tail, "&per_page=%zu", n);
    mender_buf_adds(&url, tail);
    enum iot_err rc;
    if (url.failed) {
        rc = iot_error_set(err, IOT_ERR_INVALID, "deviceauth device listing: URL too long");
    } else {
        struct mender_request req = {
            .what = "deviceauth device listing",
            .method = "GET",
            .url = url.p,
            .request_id = request_id,
        };
        rc = list_devices(c, &req, out, n, found, err);
    }
    mender_buf_free(&url, false);
    return rc;
}

enum iot_err mender_deviceauth_accepted_page(struct mender_client *c, const char *tenant,
                                             size_t page, size_t per_page,
                                             struct deviceauth_device *out, size_t *found,
                                             struct iot_error *err)
{
    *found = 0;
    if (!c->deviceauth_url)
        return iot_error_set(err, IOT_ERR_CONFIG, "deviceauth URL is not configured");
    if (page < 1 || per_page < 1 || per_page > PER_PAGE_MAX)
        return iot_error_set(err, IOT_ERR_INVALID,
                             "deviceauth accepted devices: page must be >= 1 and per_page "
                             "within 1..%d",
                             PER_PAGE_MAX);
    for (size_t i = 0; i < per_page; i++)
        memset(&out[i], 0, sizeof out[i]);
    struct mender_buf url;
    mender_buf_init(&url, MENDER_URL_MAX);
    add_devices_path(&url, c, tenant);
    char query[96];
    snprintf(query, sizeof query, "?status=accepted&page=%zu&per_page=%zu", page, per_page);
    mender_buf_adds(&url, query);
    enum iot_err rc;
    if (url.failed) {
        rc = iot_error_set(err, IOT_ERR_INVALID, "deviceauth accepted devices: URL too long");
    } else {
        struct mender_request req = {
            .what = "deviceauth accepted devices",
            .method = "GET",
            .url = url.p,
        };
        rc = list_devices(c, &req, out, per_page, found, err);
    }
    mender_buf_free(&url, false);
    return rc;
}
