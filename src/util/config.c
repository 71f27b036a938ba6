#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <yaml.h>

#include "iot-manager/config.h"
#include "iot-manager/log.h"

#define ENV_PREFIX "IOT_MANAGER_"

enum setting_type { SETTING_STRING, SETTING_INT, SETTING_BOOL };

struct setting {
    const char *key; /* YAML key; environment name is IOT_MANAGER_ + upper-case key */
    enum setting_type type;
    size_t offset;
    size_t size;      /* strings: buffer size */
    const char *dflt; /* textual default */
    int64_t min, max; /* integers */
    bool secret;      /* never echoed in messages */
    enum iot_err (*check)(struct config *cfg, const char *name, struct iot_error *err);
    const char *help;
};

#define STR(field)                                                                                 \
    SETTING_STRING, offsetof(struct config, field), sizeof(((struct config *)0)->field)
#define INT(field)  SETTING_INT, offsetof(struct config, field), sizeof(int64_t)
#define BOOL(field) SETTING_BOOL, offsetof(struct config, field), sizeof(bool)

static enum iot_err check_mongo_url(struct config *cfg, const char *name, struct iot_error *err)
{
    if (cfg->mongo_url[0] && !strstr(cfg->mongo_url, "://")) {
        /* Mender's text echoes the URL: keep that, but never a password in it */
        const char *at = strrchr(cfg->mongo_url, '@');
        return iot_error_set(err, IOT_ERR_CONFIG, "%s: Invalid mongoURL \"%s%s\": missing schema.",
                             name, at ? "<omitted>" : "", at ? at : cfg->mongo_url);
    }
    return IOT_OK;
}

static enum iot_err check_listen(struct config *cfg, const char *name, struct iot_error *err)
{
    const char *colon = strrchr(cfg->listen, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || end == colon + 1 || *end || port < 0 || port > 65535)
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "%s: must be [host]:port with a port from 0 to 65535 (got \"%s\")",
                             name, cfg->listen);
    return IOT_OK;
}

static enum iot_err check_secrets_format(struct config *cfg, const char *name,
                                         struct iot_error *err)
{
    if (strcasecmp(cfg->secrets_format_text, "aes-256-gcm") == 0)
        cfg->secrets_format = SECRETS_FORMAT_GCM;
    else if (strcasecmp(cfg->secrets_format_text, "mender") == 0)
        cfg->secrets_format = SECRETS_FORMAT_MENDER;
    else
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "%s: must be \"aes-256-gcm\" or \"mender\" (got \"%s\")", name,
                             cfg->secrets_format_text);
    return IOT_OK;
}

static enum iot_err check_log_level(struct config *cfg, const char *name, struct iot_error *err)
{
    enum log_level level;
    if (!log_level_parse(cfg->log_level, &level))
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "%s: must be one of debug, info, warn, error (got \"%s\")", name,
                             cfg->log_level);
    return IOT_OK;
}

static enum iot_err check_url(const char *value, const char *name, struct iot_error *err)
{
    if (value[0] && !strstr(value, "://"))
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "%s: must be an absolute URL such as http://host:port (got \"%s\")",
                             name, value);
    return IOT_OK;
}

static enum iot_err check_workflows_url(struct config *cfg, const char *name, struct iot_error *err)
{
    return check_url(cfg->workflows_url, name, err);
}

/* Mender prepends "http://" to a deviceauth address without a scheme. */
static enum iot_err check_deviceauth_url(struct config *cfg, const char *name,
                                         struct iot_error *err)
{
    if (cfg->deviceauth_url[0] && !strstr(cfg->deviceauth_url, "://")) {
        char with_scheme[CONFIG_STR_MAX];
        int n = snprintf(with_scheme, sizeof with_scheme, "http://%s", cfg->deviceauth_url);
        if (n < 0 || (size_t)n >= sizeof with_scheme)
            return iot_error_set(err, IOT_ERR_CONFIG, "%s: value too long", name);
        memcpy(cfg->deviceauth_url, with_scheme, (size_t)n + 1); /* not the uninitialised rest */
    }
    return IOT_OK;
}

static enum iot_err check_auth_mode(struct config *cfg, const char *name, struct iot_error *err)
{
    if (strcasecmp(cfg->auth_mode_text, "gateway") == 0)
        cfg->auth_verify = false;
    else if (strcasecmp(cfg->auth_mode_text, "verify") == 0)
        cfg->auth_verify = true;
    else
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "%s: must be \"gateway\" or \"verify\" (got \"%s\")", name,
                             cfg->auth_mode_text);
    return IOT_OK;
}

static enum iot_err check_jwt_keys(struct config *cfg, const char *name, struct iot_error *err)
{
    if (cfg->auth_verify && !cfg->jwt_keys[0])
        return iot_error_set(
            err, IOT_ERR_CONFIG,
            "%s: required when IOT_MANAGER_AUTH_MODE is \"verify\" (\"kid=/path/key.pem "
            "...\" or one PEM path)",
            name);
    return IOT_OK;
}

static enum iot_err check_hub_tier(struct config *cfg, const char *name, struct iot_error *err)
{
    static const char *const tiers[] = {"F1", "S1", "S2", "S3"};
    for (size_t i = 0; i < sizeof tiers / sizeof tiers[0]; i++) {
        if (strcasecmp(cfg->hub_tier, tiers[i]) == 0)
            return IOT_OK;
    }
    return iot_error_set(err, IOT_ERR_CONFIG, "%s: must be one of F1, S1, S2, S3 (got \"%s\")",
                         name, cfg->hub_tier);
}

static enum iot_err check_one_of(const char *value, const char *const *allowed, size_t n,
                                 const char *name, struct iot_error *err)
{
    char list[256] = "";
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(value, allowed[i]) == 0)
            return IOT_OK;
        int w = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", allowed[i]);
        if (w > 0 && (size_t)w < sizeof list - used)
            used += (size_t)w;
    }
    return iot_error_set(err, IOT_ERR_CONFIG, "%s: must be one of %s (got \"%s\")", name, list,
                         value);
}

static enum iot_err check_nats_storage(struct config *cfg, const char *name, struct iot_error *err)
{
    static const char *const allowed[] = {"file", "memory"};
    return check_one_of(cfg->nats_storage, allowed, 2, name, err);
}

static enum iot_err check_configure_mode(struct config *cfg, const char *name,
                                         struct iot_error *err)
{
    static const char *const allowed[] = {"workflows", "deviceconfig"};
    return check_one_of(cfg->configure_mode, allowed, 2, name, err);
}

/* Mender's compose files say IOT_MANAGER_NATS_URI; IOT_MANAGER_NATS_URL is accepted too. */
static enum iot_err check_nats_url(struct config *cfg, const char *name, struct iot_error *err)
{
    if (!cfg->nats_uri[0] && cfg->nats_url[0])
        memcpy(cfg->nats_uri, cfg->nats_url, sizeof cfg->nats_uri);
    if (cfg->nats_uri[0] && !strstr(cfg->nats_uri, "://"))
        return iot_error_set(err, IOT_ERR_CONFIG,
                             "%s: must be a URL such as nats://host:4222 (got \"%s\")", name,
                             cfg->nats_uri);
    return IOT_OK;
}

static enum iot_err check_deviceconfig_url(struct config *cfg, const char *name,
                                           struct iot_error *err)
{
    return check_url(cfg->deviceconfig_url, name, err);
}

static const struct setting settings[] = {
    {"listen", STR(listen), ":8080", 0, 0, false, check_listen, "HTTP listen address, [host]:port"},
    {"mongo_url", STR(mongo_url), "", 0, 0, true, check_mongo_url,
     "MongoDB URL; when empty the embedded SQLite store is used"},
    {"mongo_dbname", STR(mongo_dbname), "iot_manager", 0, 0, false, NULL, "MongoDB database name"},
    {"mongo_username", STR(mongo_username), "", 0, 0, false, NULL,
     "MongoDB user (overrides the URL's)"},
    {"mongo_password", STR(mongo_password), "", 0, 0, true, NULL,
     "MongoDB password (overrides the URL's)"},
    {"mongo_ssl", BOOL(mongo_ssl), "false", 0, 0, false, NULL, "Connect to MongoDB with TLS"},
    {"mongo_ssl_skipverify", BOOL(mongo_ssl_skipverify), "false", 0, 0, false, NULL,
     "Skip verification of MongoDB's TLS certificate"},
    {"sqlite_path", STR(sqlite_path), "/var/lib/iot-manager/iot-manager.db", 0, 0, false, NULL,
     "Embedded store file (used when mongo_url is empty)"},
    {"workflows_url", STR(workflows_url), "http://mender-workflows-server:8080", 0, 0, false,
     check_workflows_url, "Mender workflows server"},
    {"deviceauth_url", STR(deviceauth_url), "http://mender-device-auth:8080", 0, 0, false,
     check_deviceauth_url, "Mender deviceauth server"},
    {"aes_encryption_key", STR(aes_encryption_key), "", 0, 0, true, NULL,
     "Key for secrets at rest: base64 of 32 bytes"},
    {"aes_encryption_fallback_key", STR(aes_encryption_fallback_key), "", 0, 0, true, NULL,
     "Previous key, still accepted for reading (rotation)"},
    {"aes_encryption_key_file", STR(aes_encryption_key_file), "", 0, 0, false, NULL,
     "Generated key file when no key is set on SQLite (default <sqlite_path>.key)"},
    {"secrets_format", STR(secrets_format_text), "aes-256-gcm", 0, 0, false, check_secrets_format,
     "Format of new secrets: aes-256-gcm, or mender (to allow rollback)"},
    {"domain_whitelist", STR(domain_whitelist), "*.azure-devices.net", 0, 0, false, NULL,
     "Trusted IoT Hub host patterns, space-separated"},
    {"domain_skipverify", BOOL(domain_skipverify), "false", 0, 0, false, NULL,
     "Accepted for compatibility (webhook address checks)"},
    {"event_exp_timeout", INT(event_exp_timeout), "604800", 1, INT32_MAX, false, NULL,
     "Seconds an event stays in the event log"},
    {"webhooks_timeout_seconds", INT(webhooks_timeout_seconds), "10", 0, 3600, false, NULL,
     "Accepted for compatibility"},
    {"debug_log", BOOL(debug_log), "false", 0, 0, false, NULL, "Log at debug level"},
    {"request_size_limit", INT(request_size_limit), "1048576", 1, 1 << 30, false, NULL,
     "Largest request body in bytes (larger: 413)"},
    {"http_threads", INT(http_threads), "0", 0, 256, false, NULL,
     "HTTP worker threads; 0 serves each connection on its own thread"},
    {"http_connection_limit", INT(http_connection_limit), "1024", 1, 65536, false, NULL,
     "Concurrent HTTP connections"},
    {"http_idle_timeout", INT(http_idle_timeout), "60", 1, 3600, false, NULL,
     "Seconds before an idle HTTP connection is closed"},
    {"shutdown_timeout", INT(shutdown_timeout), "10", 0, 600, false, NULL,
     "Seconds to finish in-flight requests on SIGTERM"},
    {"store_timeout_ms", INT(store_timeout_ms), "5000", 100, 600000, false, NULL,
     "Timeout of each store operation (MongoDB) or lock wait (SQLite)"},
    {"event_sweep_interval", INT(event_sweep_interval), "300", 1, 86400, false, NULL,
     "Seconds between removals of expired events where no TTL index does it"},
    {"log_level", STR(log_level), "info", 0, 0, false, check_log_level,
     "debug, info, warn or error"},
    {"auth_mode", STR(auth_mode_text), "gateway", 0, 0, false, check_auth_mode,
     "gateway: the API gateway verified the JWT; verify: check its signature here"},
    {"jwt_keys", STR(jwt_keys), "", 0, 0, false, check_jwt_keys,
     "verify mode: public keys, \"kid=/path.pem ...\" (or one PEM path)"},
    {"jwt_issuer", STR(jwt_issuer), "mender.useradm", 0, 0, false, NULL,
     "verify mode: required \"iss\" claim (\"*\": any issuer)"},
    {"jwt_leeway", INT(jwt_leeway), "60", 0, 600, false, NULL,
     "verify mode: clock skew allowed for exp/nbf/iat, seconds"},
    {"rbac", BOOL(rbac), "false", 0, 0, false, NULL,
     "Enforce roles from the token's mender.roles claim (docs/rbac.md)"},
    {"rbac_admin_roles", STR(rbac_admin_roles), "RBAC_ROLE_PERMIT_ALL", 0, 0, false, NULL,
     "Roles granted admin (space-separated)"},
    {"rbac_read_roles", STR(rbac_read_roles), "RBAC_ROLE_OBSERVER", 0, 0, false, NULL,
     "Roles granted read (space-separated)"},
    {"hub_ca_file", STR(hub_ca_file), "", 0, 0, false, NULL,
     "PEM CA bundle for IoT Hub TLS (empty: the system's)"},
    {"hub_allow_private_addresses", BOOL(hub_allow_private_addresses), "false", 0, 0, false, NULL,
     "Allow IoT Hub hosts on loopback/private/link-local addresses (SSRF guard off)"},
    {"hub_connect_timeout_ms", INT(hub_connect_timeout_ms), "5000", 100, 120000, false, NULL,
     "Connect timeout of each IoT Hub request"},
    {"hub_timeout_ms", INT(hub_timeout_ms), "15000", 100, 600000, false, NULL,
     "Total timeout of each IoT Hub request"},
    {"hub_max_connections", INT(hub_max_connections), "64", 1, 1024, false, NULL,
     "IoT Hub requests in flight at once (per process)"},
    {"hub_tier", STR(hub_tier), "S1", 0, 0, false, check_hub_tier,
     "IoT Hub tier whose quotas the rate limiter respects: F1, S1, S2, S3"},
    {"hub_units", INT(hub_units), "1", 1, 200, false, NULL,
     "IoT Hub units (quotas scale with them)"},
    {"hub_ratelimit", BOOL(hub_ratelimit), "true", 0, 0, false, NULL,
     "Pace IoT Hub calls under the tier's quotas"},
    {"hub_registry_per_min", INT(hub_registry_per_min), "0", 0, 100000000, false, NULL,
     "Override: identity registry operations per minute (0: the tier's)"},
    {"hub_queries_per_min", INT(hub_queries_per_min), "0", 0, 100000000, false, NULL,
     "Override: queries per minute (0: the tier's)"},
    {"hub_twin_reads_per_s", INT(hub_twin_reads_per_s), "0", 0, 1000000, false, NULL,
     "Override: twin reads per second (0: the tier's)"},
    {"hub_twin_updates_per_s", INT(hub_twin_updates_per_s), "0", 0, 1000000, false, NULL,
     "Override: twin updates per second (0: the tier's)"},
    {"nats_uri", STR(nats_uri), "", 0, 0, false, NULL,
     "NATS server with JetStream for the lifecycle events (empty: internal device API off)"},
    {"nats_url", STR(nats_url), "", 0, 0, false, check_nats_url, "Alias of IOT_MANAGER_NATS_URI"},
    {"nats_stream", STR(nats_stream), "IOT_MANAGER_EVENTS", 0, 0, false, NULL,
     "JetStream stream of lifecycle events"},
    {"nats_subject_prefix", STR(nats_subject_prefix), "iot-manager.events", 0, 0, false, NULL,
     "Event subjects: <prefix>.provision|status|decommission"},
    {"nats_consumer", STR(nats_consumer), "iot-manager-workers", 0, 0, false, NULL,
     "Durable pull consumer shared by every worker"},
    {"nats_dlq_stream", STR(nats_dlq_stream), "IOT_MANAGER_DLQ", 0, 0, false, NULL,
     "Dead-letter stream"},
    {"nats_state_bucket", STR(nats_state_bucket), "IOT_MANAGER_DEVICES", 0, 0, false, NULL,
     "KV bucket of per-device desired state"},
    {"nats_lease_bucket", STR(nats_lease_bucket), "IOT_MANAGER_LEASES", 0, 0, false, NULL,
     "KV bucket of per-device leases"},
    {"nats_storage", STR(nats_storage), "file", 0, 0, false, check_nats_storage,
     "Storage of the streams and buckets: file or memory"},
    {"nats_replicas", INT(nats_replicas), "1", 1, 5, false, NULL, "Stream replicas"},
    {"nats_ack_wait_ms", INT(nats_ack_wait_ms), "30000", 1000, 3600000, false, NULL,
     "Redelivery after this long without an ack"},
    {"nats_max_deliver", INT(nats_max_deliver), "20", 1, 10000, false, NULL,
     "Deliveries before a failing event is dead-lettered (requeued when the hub is only busy)"},
    {"nats_max_ack_pending", INT(nats_max_ack_pending), "1000", 1, 100000, false, NULL,
     "Messages delivered and not yet acked, across all workers"},
    {"lease_ttl_ms", INT(lease_ttl_ms), "30000", 1000, 600000, false, NULL,
     "A worker's hold on one device expires after this long unless renewed"},
    {"publish_timeout_ms", INT(publish_timeout_ms), "5000", 100, 60000, false, NULL,
     "How long the internal API keeps trying to store an event before answering 503"},
    {"workers", INT(workers), "4", 0, 256, false, NULL,
     "Worker threads per process (server and worker commands)"},
    {"fetch_batch", INT(fetch_batch), "32", 1, 1000, false, NULL,
     "Events a worker fetches at once"},
    {"configure_mode", STR(configure_mode), "workflows", 0, 0, false, check_configure_mode,
     "How connection strings reach Configure: workflows or deviceconfig"},
    {"deviceconfig_url", STR(deviceconfig_url), "http://mender-deviceconfig:8080", 0, 0, false,
     check_deviceconfig_url, "Mender deviceconfig (configure_mode deviceconfig)"},
    {"mender_timeout_ms", INT(mender_timeout_ms), "10000", 100, 600000, false, NULL,
     "Total timeout of each call to workflows, deviceconfig or deviceauth"},
};

#define N_SETTINGS (sizeof settings / sizeof settings[0])

static void env_name(const struct setting *s, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "%s", ENV_PREFIX);
    for (const char *k = s->key; *k && n + 1 < cap; k++)
        out[n++] = (char)toupper((unsigned char)*k);
    out[n] = '\0';
}

static bool parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"1", "t", "true", "yes", "on"};
    static const char *const no[] = {"0", "f", "false", "no", "off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

static enum iot_err setting_assign(struct config *cfg, const struct setting *s, const char *value,
                                   const char *name, struct iot_error *err)
{
    char *field = (char *)cfg + s->offset;
    switch (s->type) {
    case SETTING_STRING:
        if (strlen(value) >= s->size)
            return iot_error_set(err, IOT_ERR_CONFIG, "%s: must be shorter than %zu characters",
                                 name, s->size);
        memcpy(field, value, strlen(value) + 1);
        return IOT_OK;
    case SETTING_INT: {
        errno = 0;
        char *end = NULL;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || v < s->min || v > s->max)
            return iot_error_set(err, IOT_ERR_CONFIG,
                                 "%s: must be an integer from %lld to %lld (got \"%s\")", name,
                                 (long long)s->min, (long long)s->max, value);
        int64_t v64 = v;
        memcpy(field, &v64, sizeof v64);
        return IOT_OK;
    }
    case SETTING_BOOL: {
        bool b;
        if (!parse_bool(value, &b))
            return iot_error_set(err, IOT_ERR_CONFIG,
                                 "%s: must be a boolean (true/false, 1/0) (got \"%s\")", name,
                                 value);
        memcpy(field, &b, sizeof b);
        return IOT_OK;
    }
    }
    return IOT_ERR_INTERNAL;
}

static const struct setting *setting_find(const char *key)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        if (strcmp(settings[i].key, key) == 0)
            return &settings[i];
    }
    return NULL;
}

/* Flat YAML mapping of scalars; a sequence value (e.g. domain_whitelist) is joined with spaces. */
static enum iot_err load_yaml(struct config *cfg, const char *path, struct iot_error *err)
{
    enum iot_err rc = IOT_OK;
    FILE *f = fopen(path, "r");
    if (!f)
        return iot_error_set(err, IOT_ERR_CONFIG, "--config %s: %s", path, strerror(errno));
    yaml_parser_t parser;
    yaml_document_t doc;
    bool have_doc = false;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return iot_error_set(err, IOT_ERR_NOMEM, "--config %s: out of memory", path);
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = iot_error_set(err, IOT_ERR_CONFIG, "--config %s: line %zu: %s", path,
                           parser.problem_mark.line + 1,
                           parser.problem ? parser.problem : "invalid YAML");
        goto out;
    }
    have_doc = true;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root)
        goto out; /* empty file */
    if (root->type != YAML_MAPPING_NODE) {
        rc = iot_error_set(err, IOT_ERR_CONFIG, "--config %s: the top level must be a mapping",
                           path);
        goto out;
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(&doc, p->key);
        yaml_node_t *v = yaml_document_get_node(&doc, p->value);
        if (!k || !v || k->type != YAML_SCALAR_NODE)
            continue;
        const char *key = (const char *)k->data.scalar.value;
        const struct setting *s = setting_find(key);
        if (!s) {
            log_warn("config file %s: unknown key \"%s\" ignored", path, key);
            continue;
        }
        char value[CONFIG_LIST_MAX] = "";
        if (v->type == YAML_SCALAR_NODE) {
            snprintf(value, sizeof value, "%s", (const char *)v->data.scalar.value);
        } else if (v->type == YAML_SEQUENCE_NODE) {
            size_t n = 0;
            for (yaml_node_item_t *it = v->data.sequence.items.start;
                 it < v->data.sequence.items.top; it++) {
                yaml_node_t *item = yaml_document_get_node(&doc, *it);
                if (!item || item->type != YAML_SCALAR_NODE)
                    continue;
                int w = snprintf(value + n, sizeof value - n, "%s%s", n ? " " : "",
                                 (const char *)item->data.scalar.value);
                if (w < 0 || (size_t)w >= sizeof value - n)
                    break;
                n += (size_t)w;
            }
        } else {
            rc = iot_error_set(err, IOT_ERR_CONFIG, "--config %s: key \"%s\" must be a scalar",
                               path, key);
            goto out;
        }
        char name[160];
        snprintf(name, sizeof name, "%s (key \"%s\" in %s)", key, key, path);
        if ((rc = setting_assign(cfg, s, value, name, err)) != IOT_OK)
            goto out;
    }
out:
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

enum iot_err config_load(struct config *cfg, const char *path, bool path_explicit,
                         struct iot_error *err)
{
    enum iot_err rc;
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        if ((rc = setting_assign(cfg, &settings[i], settings[i].dflt, settings[i].key, err)))
            return rc;
    }

    if (!path)
        path = CONFIG_DEFAULT_FILE;
    struct stat st;
    if (path_explicit || stat(path, &st) == 0) {
        if ((rc = load_yaml(cfg, path, err)) != IOT_OK)
            return rc;
    }

    for (size_t i = 0; i < N_SETTINGS; i++) {
        char name[96];
        env_name(&settings[i], name, sizeof name);
        /* as viper: an empty variable counts as unset */
        const char *value = getenv(name);
        if (value && *value && (rc = setting_assign(cfg, &settings[i], value, name, err)) != IOT_OK)
            return rc;
    }
    /* Mender's compose files use IOT_MANAGER_NATS_URI; the URL spelling is accepted too (used
     * once the queue is configured). Nothing to do here yet. */

    for (size_t i = 0; i < N_SETTINGS; i++) {
        if (!settings[i].check)
            continue;
        char name[96];
        env_name(&settings[i], name, sizeof name);
        if ((rc = settings[i].check(cfg, name, err)) != IOT_OK)
            return rc;
    }
    if (cfg->debug_log)
        snprintf(cfg->log_level, sizeof cfg->log_level, "debug");
    return IOT_OK;
}

size_t config_whitelist(const struct config *cfg, char *buf, const char **out, size_t cap)
{
    size_t n = 0;
    memcpy(buf, cfg->domain_whitelist, CONFIG_LIST_MAX);
    buf[CONFIG_LIST_MAX - 1] = '\0';
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t\r\n,", &save); tok && n < cap;
         tok = strtok_r(NULL, " \t\r\n,", &save))
        out[n++] = tok;
    return n;
}

void config_print_help(FILE *out)
{
    fprintf(out, "Configuration (environment variable, YAML key in --config, default):\n");
    for (size_t i = 0; i < N_SETTINGS; i++) {
        char name[96];
        env_name(&settings[i], name, sizeof name);
        fprintf(out, "  %-44s %s\n", name, settings[i].help);
        fprintf(out, "  %-44s   key: %s, default: \"%s\"\n", "", settings[i].key, settings[i].dflt);
    }
}
