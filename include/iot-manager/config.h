/* Process configuration: one static table of settings, filled from defaults, then the optional
 * YAML file (keys as Mender's: lower-case, e.g. `listen`), then IOT_MANAGER_* environment
 * variables (environment wins). Immutable once loaded; the only process-wide mutable state.
 */
#ifndef IOT_MANAGER_CONFIG_H
#define IOT_MANAGER_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "iot-manager/error.h"

#define CONFIG_DEFAULT_FILE "/etc/iot-manager/config.yaml"
#define CONFIG_STR_MAX      1024
#define CONFIG_LIST_MAX     4096

enum secrets_format { SECRETS_FORMAT_GCM = 0, SECRETS_FORMAT_MENDER };

struct config {
    char listen[CONFIG_STR_MAX];
    char mongo_url[CONFIG_STR_MAX]; /* empty: embedded SQLite store */
    char mongo_dbname[128];
    char mongo_username[256];
    char mongo_password[256];
    bool mongo_ssl;
    bool mongo_ssl_skipverify;
    char sqlite_path[CONFIG_STR_MAX];
    char workflows_url[CONFIG_STR_MAX];
    char deviceauth_url[CONFIG_STR_MAX];
    char aes_encryption_key[128];
    char aes_encryption_fallback_key[128];
    char aes_encryption_key_file[CONFIG_STR_MAX]; /* empty: "<sqlite_path>.key" on SQLite */
    char secrets_format_text[32];
    enum secrets_format secrets_format;
    char domain_whitelist[CONFIG_LIST_MAX];
    bool domain_skipverify;
    int64_t event_exp_timeout;        /* seconds */
    int64_t webhooks_timeout_seconds; /* accepted for compatibility */
    bool debug_log;
    int64_t request_size_limit; /* bytes */
    int64_t http_threads;       /* 0: one thread per connection */
    int64_t http_connection_limit;
    int64_t http_idle_timeout;    /* seconds */
    int64_t shutdown_timeout;     /* seconds to finish in-flight requests */
    int64_t store_timeout_ms;     /* connect/selection/socket timeout towards the store */
    int64_t event_sweep_interval; /* seconds between sweeps of expired events */
    char log_level[16];
    char auth_mode_text[16]; /* "gateway" or "verify" */
    bool auth_verify;
    char jwt_keys[CONFIG_LIST_MAX]; /* "kid=path ..." or one path */
    char jwt_issuer[256];
    int64_t jwt_leeway; /* seconds */
    bool rbac;
    char rbac_admin_roles[CONFIG_STR_MAX];
    char rbac_read_roles[CONFIG_STR_MAX];
    char hub_ca_file[CONFIG_STR_MAX];
    bool hub_allow_private_addresses;
    int64_t hub_connect_timeout_ms;
    int64_t hub_timeout_ms;
    int64_t hub_max_connections;
    char hub_tier[8];
    int64_t hub_units;
    bool hub_ratelimit;
    int64_t hub_registry_per_min; /* 0: the tier's figure */
    int64_t hub_queries_per_min;
    int64_t hub_twin_reads_per_s;
    int64_t hub_twin_updates_per_s;
    /* lifecycle pipeline */
    char nats_uri[CONFIG_STR_MAX]; /* IOT_MANAGER_NATS_URI, or its alias IOT_MANAGER_NATS_URL */
    char nats_url[CONFIG_STR_MAX];
    char nats_stream[64];
    char nats_subject_prefix[128];
    char nats_consumer[64];
    char nats_dlq_stream[64];
    char nats_state_bucket[64];
    char nats_lease_bucket[64];
    char nats_storage[16]; /* file | memory */
    int64_t nats_replicas;
    int64_t nats_ack_wait_ms;
    int64_t nats_max_deliver;
    int64_t nats_max_ack_pending;
    int64_t lease_ttl_ms;
    int64_t publish_timeout_ms;
    int64_t workers; /* worker threads per process */
    int64_t fetch_batch;
    char configure_mode[16]; /* workflows | deviceconfig */
    char deviceconfig_url[CONFIG_STR_MAX];
    int64_t mender_timeout_ms;
};

/* Fills `cfg` with defaults, then `path` (NULL: the default file, which may be absent; a given
 * path must exist), then the environment. On a bad value returns IOT_ERR_CONFIG with a message
 * naming the variable and the rule. */
enum iot_err config_load(struct config *cfg, const char *path, bool path_explicit,
                         struct iot_error *err);

/* Splits domain_whitelist on whitespace into at most `cap` pointers into `buf` (a copy the
 * caller provides, of size CONFIG_LIST_MAX). Returns the count. */
size_t config_whitelist(const struct config *cfg, char *buf, const char **out, size_t cap);

/* Writes the table of settings (environment name, default, meaning) for --help. */
void config_print_help(FILE *out);

#endif
