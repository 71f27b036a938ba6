#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iot-manager/app.h"
#include "iot-manager/lifecycle.h"
#include "iot-manager/log.h"

void app_init(struct app *app, const struct config *cfg, struct store *store,
              const struct crypto_keyring *keyring)
{
    memset(app, 0, sizeof *app);
    app->cfg = cfg;
    app->store = store;
    app->keyring = *keyring;
    app->whitelist_len =
        config_whitelist(cfg, app->whitelist_buf, app->whitelist, APP_WHITELIST_MAX);
    app->connstr_rules = (struct connstr_rules){
        .whitelist = app->whitelist,
        .whitelist_len = app->whitelist_len,
        .resolve = connstr_resolve_getaddrinfo,
        .require_policy_name = true,
    };
    rbac_policy_init(&app->rbac, cfg);
    jwt_verify_options_init(&app->jwt_opts);
    /* "*" accepts any issuer (an empty variable counts as unset, so it cannot say that) */
    app->jwt_opts.issuer =
        cfg->jwt_issuer[0] && strcmp(cfg->jwt_issuer, "*") != 0 ? cfg->jwt_issuer : NULL;
    app->jwt_opts.leeway = (int)cfg->jwt_leeway;
}

/* The owner a secret is bound to (associated data of the AEAD). */
struct secret_owner {
    const struct app *app;
    const char *tenant;
    const struct uuid *id;
    struct iot_error *err;
};

static enum iot_err open_one(struct secret *s, void *ctx)
{
    struct secret_owner *o = ctx;
    return crypto_open(&o->app->keyring, o->tenant, o->id, s, o->err);
}

static enum iot_err seal_one(struct secret *s, void *ctx)
{
    struct secret_owner *o = ctx;
    return crypto_seal(&o->app->keyring, o->tenant, o->id, s, o->err);
}

static enum iot_err open_integration(struct app *app, struct integration *in, struct iot_error *err)
{
    struct secret_owner o = {app, in->tenant_id, &in->id, err};
    enum iot_err rc = credentials_for_each_secret(&in->credentials, open_one, &o);
    if (rc != IOT_OK) {
        char id[UUID_STR_LEN + 1];
        uuid_format(&in->id, id);
        log_error("integration %s of tenant \"%s\": cannot decrypt its secret (%s): check "
                  "IOT_MANAGER_AES_ENCRYPTION_KEY and IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY",
                  id, in->tenant_id, err ? err->msg : iot_strerror(rc));
        iot_error_set(err, rc, "failed to decrypt the integration's credentials");
    }
    return rc;
}

enum iot_err app_integrations_list(struct app *app, const char *tenant,
                                   struct integration_list *out, struct iot_error *err)
{
    enum iot_err rc = store_integrations_list(app->store, tenant, out, err);
    for (size_t i = 0; rc == IOT_OK && i < out->len; i++)
        rc = open_integration(app, &out->items[i], err);
    if (rc != IOT_OK)
        integration_list_clear(out);
    return rc;
}

enum iot_err app_integration_get(struct app *app, const char *tenant, const struct uuid *id,
                                 struct integration *out, struct iot_error *err)
{
    enum iot_err rc = store_integration_get(app->store, tenant, id, out, err);
    if (rc == IOT_OK)
        rc = open_integration(app, out, err);
    if (rc != IOT_OK)
        integration_clear(out);
    return rc;
}

enum iot_err app_device_integration_get(struct app *app, const char *tenant, const char *device_id,
                                        const struct uuid *id, struct integration *out,
                                        struct iot_error *err)
{
    enum iot_err rc = store_device_integration_get(app->store, tenant, device_id, id, out, err);
    if (rc == IOT_OK)
        rc = open_integration(app, out, err);
    if (rc != IOT_OK)
        integration_clear(out);
    return rc;
}

enum iot_err app_integration_create(struct app *app, const char *tenant, struct integration *in,
                                    struct uuid *id_out, struct iot_error *err)
{
    enum iot_err rc = uuid_generate_v4(&in->id);
    if (rc != IOT_OK)
        return iot_error_set(err, rc, "cannot generate an integration id");
    free(in->tenant_id);
    in->tenant_id = strdup(tenant);
    if (!in->tenant_id)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    struct secret_owner o = {app, in->tenant_id, &in->id, err};
    if ((rc = credentials_for_each_secret(&in->credentials, seal_one, &o)) != IOT_OK)
        return rc;
    rc = store_integration_create(app->store, in, err);
    if (rc == IOT_ERR_CONFLICT)
        return iot_error_set(err, rc, "integration already exists");
    if (rc == IOT_OK)
        *id_out = in->id;
    return rc;
}

/* The client sent back the masked key we show: keep the stored key when the mask matches. */
static enum iot_err restore_masked_key(const struct integration *stored, struct credentials *creds,
                                       const char *masked_key, struct iot_error *err)
{
    const struct secret *old = &stored->credentials.sas.access_key;
    char mask[64];
    if (stored->credentials.type == CREDENTIAL_SAS && old->state == SECRET_PLAIN) {
        connstr_mask_key(old->data, old->len, mask, sizeof mask);
        if (strcmp(mask, masked_key) == 0)
            return secret_copy(&creds->sas.access_key, old);
    }
    return iot_error_set(err, IOT_ERR_INVALID,
                         "malformed request body: connection string invalid: SharedAccessKey: "
                         "the masked key does not match the stored key; send the full key.");
}

enum iot_err app_integration_set_credentials(struct app *app, const char *tenant,
                                             const struct uuid *id, struct credentials *creds,
                                             const char *masked_key, struct iot_error *err)
{
    struct integration stored = {0};
    enum iot_err rc = app_integration_get(app, tenant, id, &stored, err);
    if (rc != IOT_OK)
        goto out;
    enum credential_type want = provider_credential_type(stored.provider);
    if (creds->type != want) {
        rc = iot_error_set(err, IOT_ERR_INVALID,
                           "malformed request body: type: '%s' incompatible with provider "
                           "'%s'; use credential type '%s'.",
                           credential_type_name(creds->type), provider_name(stored.provider),
                           credential_type_name(want));
        goto out;
    }
    if (masked_key && (rc = restore_masked_key(&stored, creds, masked_key, err)) != IOT_OK)
        goto out;
    struct secret_owner o = {app, tenant, id, err};
    if ((rc = credentials_for_each_secret(creds, seal_one, &o)) != IOT_OK)
        goto out;
    rc = store_integration_set_credentials(app->store, tenant, id, creds, err);
out:
    integration_clear(&stored);
    return rc;
}

enum iot_err app_integration_delete(struct app *app, const char *tenant, const struct uuid *id,
                                    struct iot_error *err)
{
    struct integration stored = {0};
    enum iot_err rc = store_integration_get(app->store, tenant, id, &stored, err);
    if (rc != IOT_OK)
        goto out;
    if (stored.provider != PROVIDER_WEBHOOK) {
        int64_t linked = 0;
        if ((rc = store_devices_count_linked(app->store, tenant, id, &linked, err)) != IOT_OK)
            goto out;
        if (linked > 0) {
            rc =
                iot_error_set(err, IOT_ERR_CONFLICT, "cannot remove integration in use by devices");
            goto out;
        }
    }
    rc = store_integration_delete(app->store, tenant, id, err);
out:
    integration_clear(&stored);
    return rc;
}

enum iot_err app_tenant_delete(struct app *app, const char *tenant, struct iot_error *err)
{
    return store_tenant_delete(app->store, tenant, err);
}

struct reencrypt_ctx {
    struct app *app;
    int64_t done;
    struct iot_error *err;
};

static enum iot_err reencrypt_one(struct integration *in, void *ctx)
{
    struct reencrypt_ctx *rc_ctx = ctx;
    struct app *app = rc_ctx->app;
    enum iot_err rc = open_integration(app, in, rc_ctx->err);
    if (rc != IOT_OK)
        return rc;
    struct secret_owner o = {app, in->tenant_id, &in->id, rc_ctx->err};
    if ((rc = credentials_for_each_secret(&in->credentials, seal_one, &o)) != IOT_OK)
        return rc;
    rc = store_integration_set_credentials(app->store, in->tenant_id, &in->id, &in->credentials,
                                           rc_ctx->err);
    if (rc == IOT_OK)
        rc_ctx->done++;
    return rc;
}

enum iot_err app_reencrypt(struct app *app, int64_t *done, struct iot_error *err)
{
    struct reencrypt_ctx ctx = {app, 0, err};
    enum iot_err rc = store_integrations_for_each(app->store, reencrypt_one, &ctx, err);
    if (done)
        *done = ctx.done;
    return rc;
}

enum iot_err app_health(struct app *app, json_t *checks, struct iot_error *err)
{
    struct iot_error store_err = {0};
    enum iot_err rc = store_ping(app->store, &store_err);
    json_object_set_new(checks, "store",
                        json_string(rc == IOT_OK       ? "ok"
                                    : store_err.msg[0] ? store_err.msg
                                                       : iot_strerror(rc)));
    struct iot_error queue_err = {0};
    enum iot_err qrc = lifecycle_health(app, checks, &queue_err);
    if (rc != IOT_OK)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "store: %s",
                             store_err.msg[0] ? store_err.msg : iot_strerror(rc));
    if (qrc != IOT_OK)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "%s", queue_err.msg);
    return IOT_OK;
}

enum iot_err app_events_sweep(struct app *app, int64_t *removed, struct iot_error *err)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t now_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    return store_events_expire(app->store, now_ms, removed, err);
}
