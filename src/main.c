/* iot-manager: command line entry point. Wires configuration, store, keys, app and HTTP API. */
#include <errno.h>
#include <pthread.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "iot-manager/api.h"
#include "iot-manager/app.h"
#include "iot-manager/config.h"
#include "iot-manager/configure.h"
#include "iot-manager/connstr.h"
#include "iot-manager/crypto.h"
#include "iot-manager/hub.h"
#include "iot-manager/jwt.h"
#include "iot-manager/lifecycle.h"
#include "iot-manager/log.h"
#include "iot-manager/queue.h"
#include "iot-manager/sas.h"
#include "iot-manager/store.h"
#include "iot-manager/sync.h"

enum exit_code { EXIT_OK = 0, EXIT_FAILURE_RUNTIME = 1, EXIT_USAGE = 2 };

struct cli {
    const char *config_path;
    bool config_explicit;
    const char *log_level;
    int argc; /* subcommand arguments, argv[0] = subcommand name */
    char **argv;
};

struct command {
    const char *name;
    int (*run)(struct cli *cli, struct config *cfg);
    const char *usage;
    const char *help;
};

static int cmd_server(struct cli *cli, struct config *cfg);
static int cmd_worker(struct cli *cli, struct config *cfg);
static int cmd_migrate(struct cli *cli, struct config *cfg);
static int cmd_version(struct cli *cli, struct config *cfg);
static int cmd_reencrypt(struct cli *cli, struct config *cfg);
static int cmd_sas_token(struct cli *cli, struct config *cfg);
static int cmd_sync_devices(struct cli *cli, struct config *cfg);
static int cmd_dlq(struct cli *cli, struct config *cfg);

static const struct command commands[] = {
    {"server", cmd_server, "server [--automigrate]",
     "Serve the HTTP API (the default command) and, when IOT_MANAGER_NATS_URI is set, run "
     "IOT_MANAGER_WORKERS lifecycle worker threads. --automigrate brings an outdated database "
     "up to date first; without it an outdated database stops start-up."},
    {"worker", cmd_worker, "worker",
     "Process device lifecycle events only (no HTTP listener), to scale the workers apart from "
     "the API. Needs IOT_MANAGER_NATS_URI; IOT_MANAGER_WORKERS threads; stops cleanly on "
     "SIGTERM."},
    {"migrate", cmd_migrate, "migrate", "Bring the database schema up to date and exit."},
    {"version", cmd_version, "version [--output text|json]", "Print the version."},
    {"re-encrypt", cmd_reencrypt, "re-encrypt [--from-key KEY --to-key KEY]",
     "Re-encrypt the secrets of every integration of every tenant with the current key (or "
     "--to-key), reading with the fallback key (or --from-key)."},
    {"sas-token", cmd_sas_token, "sas-token --connection-string CS [--expiry UNIX_SECONDS]",
     "Print the Authorization header value for a service or device connection string (no DNS, "
     "no whitelist check), for debugging with curl. Default expiry: one hour from now."},
    {"sync-devices", cmd_sync_devices,
     "sync-devices [--batch-size N] [--fail-early] [--dry-run] [--bulk] [--provision-existing]",
     "Reconcile every device iot-manager knows with Mender's deviceauth and the tenants' IoT "
     "Hubs, as Mender's job does (batches of N records of one tenant, default 50, at most 500): "
     "decommission devices Mender no longer knows, fix statuses, provision devices the hub lacks. "
     "--fail-early stops at the first failure (exit 1); --dry-run prints the plan and changes "
     "nothing; --bulk uses bulk registry calls (large fleets); --provision-existing also "
     "provisions each tenant's accepted devices the hub does not have. Takes the device leases "
     "the lifecycle workers take when IOT_MANAGER_NATS_URI is set."},
    {"dlq", cmd_dlq, "dlq list [--output text|json] | dlq replay [--all | SEQ...]",
     "Dead-lettered lifecycle events (needs IOT_MANAGER_NATS_URI): `list` shows them (sequence, "
     "original sequence, kind, tenant, device, deliveries, time, reason); `replay` publishes them "
     "again as new events and removes them from the dead-letter stream."},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void print_help(FILE *out)
{
    fprintf(
        out,
        "iot-manager %s: connects Mender to Azure IoT Hub (drop-in for Mender's iot-manager)\n\n"
        "Usage: iot-manager [--config FILE] [--log-level LEVEL] [COMMAND [OPTIONS]]\n\n"
        "Global options:\n"
        "  --config FILE       YAML configuration file (default %s; keys as the\n"
        "                      variables below without the prefix, lower-case; the\n"
        "                      environment wins)\n"
        "  --log-level LEVEL   debug, info, warn or error (default info)\n"
        "  --help, -h          this text\n\nCommands:\n",
        IOTM_VERSION, CONFIG_DEFAULT_FILE);
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %s\n      %s\n", commands[i].usage, commands[i].help);
    fprintf(out, "\nExit codes: 0 success; 1 run-time failure (database, migration, keys);\n"
                 "            2 usage or configuration error.\n\n");
    config_print_help(out);
}

/* ---- shared set-up ---- */

static enum iot_err ensure_parent_dir(const char *path, struct iot_error *err)
{
    char dir[CONFIG_STR_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return IOT_OK;
    *slash = '\0';
    struct stat st;
    if (stat(dir, &st) == 0)
        return IOT_OK;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return iot_error_set(err, IOT_ERR_IO, "cannot create directory %s: %s", dir,
                             strerror(errno));
    return IOT_OK;
}

static enum iot_err open_store(const struct config *cfg, struct store **out, struct iot_error *err)
{
    if (cfg->mongo_url[0]) {
        struct store_mongo_options mo = {
            .url = cfg->mongo_url,
            .dbname = cfg->mongo_dbname,
            .username = cfg->mongo_username[0] ? cfg->mongo_username : NULL,
            .password = cfg->mongo_password[0] ? cfg->mongo_password : NULL,
            .ssl = cfg->mongo_ssl,
            .ssl_skipverify = cfg->mongo_ssl_skipverify,
            .timeout_ms = (int)cfg->store_timeout_ms,
        };
        return store_mongo_open(&mo, out, err);
    }
    enum iot_err rc = ensure_parent_dir(cfg->sqlite_path, err);
    if (rc != IOT_OK)
        return rc;
    struct store_sqlite_options so = {.path = cfg->sqlite_path,
                                      .busy_timeout_ms = (int)cfg->store_timeout_ms};
    return store_sqlite_open(&so, out, err);
}

static void key_file_path(const struct config *cfg, char *out, size_t cap)
{
    if (cfg->aes_encryption_key_file[0])
        snprintf(out, cap, "%s", cfg->aes_encryption_key_file);
    else
        snprintf(out, cap, "%s.key", cfg->sqlite_path);
}

/* Keys from the configuration; on the embedded store without a key, a generated key file. */
static enum iot_err setup_keyring(const struct config *cfg, const char *primary_text,
                                  const char *primary_name, const char *fallback_text,
                                  const char *fallback_name, struct crypto_keyring *kr,
                                  struct iot_error *err)
{
    enum iot_err rc;
    memset(kr, 0, sizeof *kr);
    kr->write_legacy = cfg->secrets_format == SECRETS_FORMAT_MENDER;
    if (primary_text && *primary_text) {
        if ((rc = crypto_key_parse(primary_text, &kr->primary, err)) != IOT_OK)
            return iot_error_prefix(err, "%s: ", primary_name);
        kr->has_primary = true;
    }
    if (fallback_text && *fallback_text) {
        if ((rc = crypto_key_parse(fallback_text, &kr->fallback, err)) != IOT_OK) {
            /* Mender names the fallback key in the same sentence */
            char *at = err ? strstr(err->msg, "encryption key") : NULL;
            if (at) {
                char rest[IOT_ERROR_MSG_MAX];
                snprintf(rest, sizeof rest, "%s", at + strlen("encryption key"));
                snprintf(at, sizeof err->msg - (size_t)(at - err->msg), "encryption fallback key%s",
                         rest);
            }
            return iot_error_prefix(err, "%s: ", fallback_name);
        }
        kr->has_fallback = true;
    }
    if (cfg->mongo_url[0]) {
        if (!kr->has_primary)
            log_warn("WARNING: IOT_MANAGER_AES_ENCRYPTION_KEY is not set: secrets are stored in "
                     "MongoDB WITHOUT encryption, as Mender's iot-manager does. Set a key "
                     "(base64 of 32 random bytes) and run `iot-manager re-encrypt`.");
        return IOT_OK;
    }
    char path[CONFIG_STR_MAX + 8];
    key_file_path(cfg, path, sizeof path);
    struct stat st;
    bool exists = stat(path, &st) == 0;
    if (kr->has_primary && !exists)
        return IOT_OK;
    struct crypto_key file_key;
    bool created = false;
    if ((rc = ensure_parent_dir(path, err)) != IOT_OK ||
        (rc = crypto_keyfile_load_or_create(path, &file_key, &created, err)) != IOT_OK)
        return rc;
    if (created)
        log_warn("generated a new encryption key in %s: back it up together with the database",
                 path);
    if (!kr->has_primary) {
        kr->primary = file_key;
        kr->has_primary = true;
    } else if (!kr->has_fallback && file_key.id != kr->primary.id) {
        /* a key was configured later: what the generated key sealed stays readable */
        kr->fallback = file_key;
        kr->has_fallback = true;
    }
    OPENSSL_cleanse(&file_key, sizeof file_key);
    return IOT_OK;
}

/* The IoT Hub client as configured (timeouts, TLS, SSRF guard, the tier's quotas). */
static enum iot_err open_hub_client(const struct config *cfg, struct metrics *metrics,
                                    struct hub_client **out, struct iot_error *err)
{
    struct hub_options ho;
    hub_options_default(&ho);
    ho.metrics = metrics;
    ho.connect_timeout_ms = (long)cfg->hub_connect_timeout_ms;
    ho.total_timeout_ms = (long)cfg->hub_timeout_ms;
    ho.ca_file = cfg->hub_ca_file[0] ? cfg->hub_ca_file : NULL;
    ho.allow_private_addresses = cfg->hub_allow_private_addresses;
    ho.max_connections = (unsigned)cfg->hub_max_connections;
    ho.ratelimit.disabled = !cfg->hub_ratelimit;
    if (!ratelimit_tier_parse(cfg->hub_tier, &ho.ratelimit.tier))
        return iot_error_set(err, IOT_ERR_CONFIG, "IOT_MANAGER_HUB_TIER: unknown tier");
    ho.ratelimit.units = (unsigned)cfg->hub_units;
    ho.ratelimit.registry_per_min = (double)cfg->hub_registry_per_min;
    ho.ratelimit.queries_per_min = (double)cfg->hub_queries_per_min;
    ho.ratelimit.twin_reads_per_s = (double)cfg->hub_twin_reads_per_s;
    ho.ratelimit.twin_updates_per_s = (double)cfg->hub_twin_updates_per_s;
    if (cfg->hub_allow_private_addresses)
        log_warn("IOT_MANAGER_HUB_ALLOW_PRIVATE_ADDRESSES is on: IoT Hub hosts may resolve to "
                 "loopback or private addresses (SSRF guard off)");
    return hub_client_new(&ho, out, err);
}

/* The store may still be starting (containers): retry while it is unreachable, bounded. */
static enum iot_err migrate_with_retry(struct store *st, enum store_migrate_mode mode,
                                       int64_t wait_s, struct iot_error *err)
{
    time_t deadline = time(NULL) + wait_s;
    for (;;) {
        enum iot_err rc = store_migrate(st, mode, err);
        if (rc != IOT_ERR_UNAVAILABLE || time(NULL) >= deadline)
            return rc;
        log_warn("database not reachable yet (%s); retrying", err->msg);
        sleep(1);
    }
}

/* ---- commands ---- */

/* The queue as configured; it connects in the background (start-up never waits for NATS). */
static enum iot_err open_queue(const struct config *cfg, struct queue **out, struct iot_error *err)
{
    struct queue_options qo;
    queue_options_default(&qo);
    qo.url = cfg->nats_uri;
    qo.stream = cfg->nats_stream;
    qo.subject_prefix = cfg->nats_subject_prefix;
    qo.consumer = cfg->nats_consumer;
    qo.dlq_stream = cfg->nats_dlq_stream;
    qo.state_bucket = cfg->nats_state_bucket;
    qo.lease_bucket = cfg->nats_lease_bucket;
    qo.storage =
        strcmp(cfg->nats_storage, "memory") == 0 ? QUEUE_STORAGE_MEMORY : QUEUE_STORAGE_FILE;
    qo.replicas = (int)cfg->nats_replicas;
    qo.ack_wait_ms = cfg->nats_ack_wait_ms;
    qo.max_deliver = (int)cfg->nats_max_deliver;
    qo.max_ack_pending = (int)cfg->nats_max_ack_pending;
    qo.lease_ttl_ms = cfg->lease_ttl_ms;
    qo.publish_timeout_ms = cfg->publish_timeout_ms;
    return queue_open(&qo, out, err);
}

/* The clients of Mender's workflows / deviceconfig / deviceauth services. */
static enum iot_err open_mender_client(const struct config *cfg, struct mender_client **out,
                                       struct iot_error *err)
{
    struct mender_client_options mo;
    mender_client_options_default(&mo);
    mo.mode = strcmp(cfg->configure_mode, "deviceconfig") == 0 ? CONFIGURE_MODE_DEVICECONFIG
                                                               : CONFIGURE_MODE_WORKFLOWS;
    mo.workflows_url = cfg->workflows_url;
    mo.deviceconfig_url = cfg->deviceconfig_url;
    mo.deviceauth_url = cfg->deviceauth_url;
    mo.timeout_ms = (long)cfg->mender_timeout_ms;
    return mender_client_new(&mo, out, err);
}

/* `server` (HTTP API + workers) and `worker` (workers only). */
static int run_service(struct config *cfg, bool automigrate, bool serve_http)
{
    int code = EXIT_FAILURE_RUNTIME;
    struct iot_error err = {0};
    struct store *st = NULL;
    struct http_server *srv = NULL;
    struct crypto_keyring kr;
    struct app app;
    struct jwt_keyset *jwt_keys = NULL;
    struct hub_client *hub = NULL;
    struct metrics *metrics = metrics_new();
    struct queue *queue = NULL;
    struct mender_client *mender = NULL;
    struct lifecycle_workers *workers = NULL;
    const char *what = serve_http ? "server" : "worker";

    /* Block the signals before any thread starts, so only sigtimedwait() below sees them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (!serve_http && (!cfg->nats_uri[0] || cfg->workers < 1)) {
        log_error("worker: %s", !cfg->nats_uri[0] ? "lifecycle events need IOT_MANAGER_NATS_URI"
                                                  : "IOT_MANAGER_WORKERS must be at least 1");
        code = EXIT_USAGE;
        goto out;
    }
    if (setup_keyring(cfg, cfg->aes_encryption_key, "IOT_MANAGER_AES_ENCRYPTION_KEY",
                      cfg->aes_encryption_fallback_key, "IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY",
                      &kr, &err) != IOT_OK) {
        log_error("%s", err.msg);
        code = EXIT_USAGE;
        goto out;
    }
    if (open_store(cfg, &st, &err) != IOT_OK) {
        log_error("%s", err.msg);
        goto out;
    }
    if (migrate_with_retry(st, automigrate ? STORE_MIGRATE_APPLY : STORE_MIGRATE_CHECK, 30, &err) !=
        IOT_OK) {
        log_error("%s", err.msg);
        goto out;
    }
    app_init(&app, cfg, st, &kr);
    if (open_hub_client(cfg, metrics, &hub, &err) != IOT_OK) {
        log_error("%s", err.msg);
        code = EXIT_USAGE;
        goto out;
    }
    app.hub = hub;
    app.metrics = metrics;
    store_set_metrics(st, metrics);
    if (open_mender_client(cfg, &mender, &err) != IOT_OK) {
        log_error("%s", err.msg);
        code = EXIT_USAGE;
        goto out;
    }
    app.mender = mender;
    if (cfg->nats_uri[0]) {
        if (open_queue(cfg, &queue, &err) != IOT_OK) {
            log_error("IOT_MANAGER_NATS_URI: %s", err.msg);
            code = EXIT_USAGE;
            goto out;
        }
        app.queue = queue;
    } else {
        log_warn("IOT_MANAGER_NATS_URI is not set: the internal device API answers 503 and no "
                 "lifecycle workers run");
    }
    if (serve_http && cfg->auth_verify) {
        if (jwt_keyset_load(cfg->jwt_keys, &jwt_keys, &err) != IOT_OK) {
            log_error("IOT_MANAGER_JWT_KEYS: %s", err.msg);
            code = EXIT_USAGE;
            goto out;
        }
        app.jwt_keys = jwt_keys;
        log_info("verifying JWT signatures with %zu key(s)", jwt_keyset_count(jwt_keys));
    }
    if (queue && cfg->workers > 0) {
        int64_t batch = cfg->fetch_batch;
        if (batch > cfg->nats_max_ack_pending)
            batch = cfg->nats_max_ack_pending; /* beyond it the server redelivers (c-stack §9.4) */
        /* Messages a worker fetched wait until it gets to them, and count against MaxAckPending
         * meanwhile: with many workers, large batches let the first few take everything while
         * the others fetch nothing (64 workers x 32 > 1,000). Half the limit, shared out. */
        int64_t share = cfg->nats_max_ack_pending / (2 * cfg->workers);
        if (batch > share)
            batch = share > 0 ? share : 1;
        struct lifecycle_workers_options wo = {
            .threads = (unsigned)cfg->workers,
            .fetch_batch = (unsigned)batch,
            .lease_ttl_ms = cfg->lease_ttl_ms,
            .ack_wait_ms = cfg->nats_ack_wait_ms,
            .event_exp_s = cfg->event_exp_timeout,
        };
        if (lifecycle_workers_start(&app, &wo, &workers, &err) != IOT_OK) {
            log_error("%s", err.msg);
            goto out;
        }
        /* Each worker makes one hub call at a time; beyond the pool they queue for a
         * connection, and the extra workers add nothing against a slow hub. */
        if (cfg->workers > cfg->hub_max_connections)
            log_warn("IOT_MANAGER_WORKERS (%d) exceeds IOT_MANAGER_HUB_MAX_CONNECTIONS (%d): "
                     "workers will wait for a hub connection",
                     (int)cfg->workers, (int)cfg->hub_max_connections);
    }
    if (serve_http) {
        if (api_server_start(&app, cfg, &srv, &err) != IOT_OK) {
            log_error("%s", err.msg);
            goto out;
        }
        log_info("iot-manager %s listening on %s (port %u), store: %s, lifecycle workers: %d",
                 IOTM_VERSION, cfg->listen, (unsigned)http_server_port(srv), store_name(st),
                 workers ? (int)cfg->workers : 0);
    } else {
        log_info("iot-manager %s worker started: %d threads, store: %s; waiting for NATS",
                 IOTM_VERSION, (int)cfg->workers, store_name(st));
    }

    time_t next_sweep = time(NULL);
    bool queue_ready = false;
    for (;;) {
        if (serve_http && time(NULL) >= next_sweep) {
            int64_t removed = 0;
            struct iot_error sweep_err = {0};
            if (app_events_sweep(&app, &removed, &sweep_err) != IOT_OK)
                log_warn("expired-event sweep failed: %s", sweep_err.msg);
            else if (removed > 0)
                log_info("removed %lld expired events", (long long)removed);
            next_sweep = time(NULL) + cfg->event_sweep_interval;
        }
        if (queue) {
            struct iot_error qerr = {0};
            enum iot_err qrc = queue_health(queue, &qerr);
            if (qrc == IOT_ERR_CONFIG) {
                /* a stream setting JetStream cannot change: only an operator can resolve it */
                log_error("NATS: %s", qerr.msg);
                code = EXIT_USAGE;
                goto out;
            }
            if (qrc == IOT_OK && !queue_ready)
                log_info("%s ready: NATS JetStream connected%s", what,
                         workers ? ", lifecycle workers consuming" : "");
            else if (qrc != IOT_OK && queue_ready)
                log_warn("NATS unavailable: %s", qerr.msg);
            queue_ready = qrc == IOT_OK;
        }
        struct timespec tick = {.tv_sec = 1};
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            log_info("received %s: finishing %s in flight", sig == SIGINT ? "SIGINT" : "SIGTERM",
                     serve_http ? "requests and events" : "events");
            break;
        }
    }
    code = EXIT_OK;
out:
    /* New requests stop first, then the workers finish the event in hand, then the queue
     * flushes their acks, and the store goes last. */
    http_server_stop(srv);
    lifecycle_workers_stop(workers);
    queue_close(queue);
    mender_client_free(mender);
    hub_client_free(hub);
    metrics_free(metrics);
    jwt_keyset_free(jwt_keys);
    store_destroy(st);
    OPENSSL_cleanse(&kr, sizeof kr);
    if (code == EXIT_OK)
        log_info("stopped");
    return code;
}

static int cmd_server(struct cli *cli, struct config *cfg)
{
    bool automigrate = false;
    for (int i = 1; i < cli->argc; i++) {
        if (strcmp(cli->argv[i], "--automigrate") == 0) {
            automigrate = true;
        } else {
            fprintf(stderr, "server: unknown option %s\n", cli->argv[i]);
            return EXIT_USAGE;
        }
    }
    return run_service(cfg, automigrate, true);
}

static int cmd_worker(struct cli *cli, struct config *cfg)
{
    if (cli->argc > 1) {
        fprintf(stderr, "worker: unknown option %s\n", cli->argv[1]);
        return EXIT_USAGE;
    }
    return run_service(cfg, false, false);
}

static int cmd_migrate(struct cli *cli, struct config *cfg)
{
    (void)cli;
    struct iot_error err = {0};
    struct store *st = NULL;
    int code = EXIT_FAILURE_RUNTIME;
    if (open_store(cfg, &st, &err) != IOT_OK ||
        migrate_with_retry(st, STORE_MIGRATE_APPLY, 30, &err) != IOT_OK) {
        log_error("%s", err.msg);
        goto out;
    }
    log_info("database is at version %s (%s store)", STORE_SCHEMA_VERSION, store_name(st));
    code = EXIT_OK;
out:
    store_destroy(st);
    return code;
}

static int cmd_version(struct cli *cli, struct config *cfg)
{
    (void)cfg;
    const char *output = "text";
    for (int i = 1; i < cli->argc; i++) {
        if (strcmp(cli->argv[i], "--output") == 0 && i + 1 < cli->argc)
            output = cli->argv[++i];
        else if (strncmp(cli->argv[i], "--output=", 9) == 0)
            output = cli->argv[i] + 9;
        else {
            fprintf(stderr, "version: unknown option %s\n", cli->argv[i]);
            return EXIT_USAGE;
        }
    }
    if (strcmp(output, "json") == 0) {
        json_t *v =
            json_pack("{s:s, s:s, s:s, s:s}", "version", IOTM_VERSION, "language", "C11", "schema",
                      STORE_SCHEMA_VERSION, "curl", curl_version_info(CURLVERSION_NOW)->version);
        char *text = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
        puts(text ? text : "{}");
        free(text);
        json_decref(v);
    } else if (strcmp(output, "text") == 0) {
        printf("iot-manager %s (database schema %s)\n", IOTM_VERSION, STORE_SCHEMA_VERSION);
    } else {
        fprintf(stderr, "version: --output must be text or json\n");
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

static int cmd_reencrypt(struct cli *cli, struct config *cfg)
{
    const char *from = NULL;
    const char *to = NULL;
    for (int i = 1; i < cli->argc; i++) {
        if (strcmp(cli->argv[i], "--from-key") == 0 && i + 1 < cli->argc)
            from = cli->argv[++i];
        else if (strcmp(cli->argv[i], "--to-key") == 0 && i + 1 < cli->argc)
            to = cli->argv[++i];
        else {
            fprintf(stderr, "re-encrypt: unknown option or missing value: %s\n", cli->argv[i]);
            return EXIT_USAGE;
        }
    }
    if ((from && !to) || (to && !from)) {
        fprintf(stderr, "re-encrypt: --from-key and --to-key go together\n");
        return EXIT_USAGE;
    }
    struct iot_error err = {0};
    struct crypto_keyring kr;
    struct store *st = NULL;
    struct app app;
    int code = EXIT_FAILURE_RUNTIME;
    if (setup_keyring(cfg, to ? to : cfg->aes_encryption_key,
                      to ? "--to-key" : "IOT_MANAGER_AES_ENCRYPTION_KEY",
                      from ? from : cfg->aes_encryption_fallback_key,
                      from ? "--from-key" : "IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY", &kr,
                      &err) != IOT_OK) {
        log_error("%s", err.msg);
        code = EXIT_USAGE;
        goto out;
    }
    if (!kr.has_primary) {
        log_error("re-encrypt: no encryption key configured (IOT_MANAGER_AES_ENCRYPTION_KEY or "
                  "--to-key)");
        code = EXIT_USAGE;
        goto out;
    }
    if (open_store(cfg, &st, &err) != IOT_OK ||
        migrate_with_retry(st, STORE_MIGRATE_CHECK, 30, &err) != IOT_OK) {
        log_error("%s", err.msg);
        goto out;
    }
    app_init(&app, cfg, st, &kr);
    int64_t done = 0;
    enum iot_err rc = app_reencrypt(&app, &done, &err);
    if (rc != IOT_OK) {
        log_error("re-encrypt stopped after %lld integrations: %s", (long long)done, err.msg);
        goto out;
    }
    log_info("re-encrypted %lld integrations", (long long)done);
    code = EXIT_OK;
out:
    store_destroy(st);
    OPENSSL_cleanse(&kr, sizeof kr);
    return code;
}

static int cmd_sas_token(struct cli *cli, struct config *cfg)
{
    (void)cfg;
    const char *cs_text = NULL;
    long long expiry = (long long)time(NULL) + 3600;
    for (int i = 1; i < cli->argc; i++) {
        if (strcmp(cli->argv[i], "--connection-string") == 0 && i + 1 < cli->argc) {
            cs_text = cli->argv[++i];
        } else if (strcmp(cli->argv[i], "--expiry") == 0 && i + 1 < cli->argc) {
            char *end = NULL;
            errno = 0;
            expiry = strtoll(cli->argv[++i], &end, 10);
            if (errno || !*cli->argv[i] || *end || expiry <= 0) {
                fprintf(stderr, "sas-token: --expiry must be a positive number of seconds\n");
                return EXIT_USAGE;
            }
        } else {
            fprintf(stderr, "sas-token: unknown option or missing value: %s\n", cli->argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!cs_text) {
        fprintf(stderr, "sas-token: --connection-string is required\n");
        return EXIT_USAGE;
    }
    struct connstr cs;
    struct iot_error err = {0};
    char token[SAS_TOKEN_MAX];
    int code = EXIT_USAGE;
    if (connstr_parse(cs_text, false, &cs, &err) != IOT_OK) {
        fprintf(stderr, "sas-token: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (sas_token_for_connstr(&cs, expiry, token, sizeof token, &err) != IOT_OK) {
        fprintf(stderr, "sas-token: %s\n", err.msg);
        goto out;
    }
    puts(token);
    code = EXIT_OK;
out:
    OPENSSL_cleanse(token, sizeof token);
    connstr_clear(&cs);
    return code;
}

/* ---- sync-devices ---- */

/* What the one-shot commands that reconcile devices need: keys, store, app, hub and Mender
 * clients (the queue is opened by the caller when it needs one). */
struct runtime {
    struct crypto_keyring kr;
    struct store *st;
    struct app app;
    struct hub_client *hub;
    struct mender_client *mender;
    struct queue *queue;
};

static int runtime_open(struct config *cfg, const char *what, struct runtime *rt)
{
    struct iot_error err = {0};
    memset(rt, 0, sizeof *rt);
    if (setup_keyring(cfg, cfg->aes_encryption_key, "IOT_MANAGER_AES_ENCRYPTION_KEY",
                      cfg->aes_encryption_fallback_key, "IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY",
                      &rt->kr, &err) != IOT_OK) {
        log_error("%s: %s", what, err.msg);
        return EXIT_USAGE;
    }
    if (open_store(cfg, &rt->st, &err) != IOT_OK ||
        migrate_with_retry(rt->st, STORE_MIGRATE_CHECK, 10, &err) != IOT_OK) {
        log_error("%s: %s", what, err.msg);
        return EXIT_FAILURE_RUNTIME;
    }
    app_init(&rt->app, cfg, rt->st, &rt->kr);
    if (open_hub_client(cfg, NULL, &rt->hub, &err) != IOT_OK ||
        open_mender_client(cfg, &rt->mender, &err) != IOT_OK) {
        log_error("%s: %s", what, err.msg);
        return EXIT_USAGE;
    }
    rt->app.hub = rt->hub;
    rt->app.mender = rt->mender;
    return EXIT_OK;
}

static void runtime_close(struct runtime *rt)
{
    queue_close(rt->queue);
    mender_client_free(rt->mender);
    hub_client_free(rt->hub);
    store_destroy(rt->st);
    OPENSSL_cleanse(&rt->kr, sizeof rt->kr);
}

/* The queue, connected: NULL with a logged reason when NATS does not answer in time. */
static struct queue *queue_connect(const struct config *cfg, const char *what, int64_t wait_ms)
{
    struct iot_error err = {0};
    struct queue *q = NULL;
    if (open_queue(cfg, &q, &err) != IOT_OK) {
        log_error("%s: IOT_MANAGER_NATS_URI: %s", what, err.msg);
        return NULL;
    }
    if (queue_wait_ready(q, wait_ms, &err) != IOT_OK) {
        log_error("%s: NATS JetStream is not ready: %s", what, err.msg);
        queue_close(q);
        return NULL;
    }
    return q;
}

static int cmd_sync_devices(struct cli *cli, struct config *cfg)
{
    struct sync_options so = {.batch_size = SYNC_BATCH_DEFAULT};
    struct iot_error err = {0};
    for (int i = 1; i < cli->argc; i++) {
        const char *a = cli->argv[i];
        const char *value = NULL;
        if (strcmp(a, "--batch-size") == 0) {
            if (i + 1 >= cli->argc) {
                fprintf(stderr, "sync-devices: --batch-size needs a value\n");
                return EXIT_USAGE;
            }
            value = cli->argv[++i];
        } else if (strncmp(a, "--batch-size=", 13) == 0) {
            value = a + 13;
        } else if (strcmp(a, "--fail-early") == 0) {
            so.fail_early = true;
        } else if (strcmp(a, "--dry-run") == 0) {
            so.dry_run = true;
        } else if (strcmp(a, "--bulk") == 0) {
            so.bulk = true;
        } else if (strcmp(a, "--provision-existing") == 0) {
            so.provision_existing = true;
        } else {
            fprintf(stderr, "sync-devices: unknown option %s\n", a);
            return EXIT_USAGE;
        }
        if (value && sync_batch_size_parse(value, &so.batch_size, &err) != IOT_OK) {
            fprintf(stderr, "%s\n", err.msg); /* Mender's own text */
            return EXIT_USAGE;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct runtime rt;
    int code = runtime_open(cfg, "sync-devices", &rt);
    if (code != EXIT_OK)
        goto out;
    code = EXIT_FAILURE_RUNTIME;
    /* Without NATS there are no workers to coordinate with; with it, an unreachable NATS would
     * mean changing devices a worker may be changing too. A dry run changes nothing. */
    if (cfg->nats_uri[0] && !so.dry_run) {
        if (!(rt.queue = queue_connect(cfg, "sync-devices", 10000)))
            goto out;
        rt.app.queue = rt.queue;
    }
    char host[256] = "";
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    char owner[320];
    snprintf(owner, sizeof owner, "sync-devices:%.200s:%ld", host, (long)getpid());
    so.owner = owner;
    so.event_exp_s = cfg->event_exp_timeout;
    so.lease_ttl_ms = cfg->lease_ttl_ms;
    so.out = stdout;
    so.progress = isatty(STDERR_FILENO) ? stderr : NULL;
    struct sync_summary sum;
    enum iot_err rc = sync_devices(&rt.app, &so, &sum, &err);
    sync_summary_print(&sum, so.dry_run, stdout);
    if (rc != IOT_OK) {
        log_error("sync-devices stopped: %s", err.msg);
        goto out;
    }
    if (sum.failed > 0)
        log_warn("sync-devices: %llu devices failed (see above); run it again to retry them",
                 (unsigned long long)sum.failed);
    code = EXIT_OK;
out:
    runtime_close(&rt);
    return code;
}

/* ---- dlq ---- */

struct dlq_print {
    bool json;
    json_t *list; /* json output */
    size_t n;
};

/* Control characters in a text column (device ids are whatever the publisher sent) would be
 * interpreted by the terminal: shown as '?'. */
static void put_text(const char *s)
{
    for (; s && *s; s++)
        putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

static void format_time_ms(int64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
        snprintf(out, cap, "-");
        return;
    }
    size_t len = strlen(out);
    snprintf(out + len, cap - len, ".%03dZ", (int)(ms % 1000));
}

static enum iot_err dlq_print_one(const struct queue_dead_letter_entry *e, void *ctx)
{
    struct dlq_print *p = ctx;
    struct lifecycle_event ev = {0};
    struct iot_error err = {0};
    bool decoded = lifecycle_event_decode(e->data, e->len, &ev, &err) == IOT_OK;
    const char *tenant = decoded ? ev.tenant_id : "";
    const char *device = decoded ? ev.device_id : "";
    char when[40];
    format_time_ms(e->time_ms, when, sizeof when);
    if (p->json) {
        json_t *o = json_pack("{s:I, s:I, s:s, s:s, s:s, s:I, s:s, s:s}", "seq",
                              (json_int_t)e->dlq_seq, "original_seq", (json_int_t)e->original_seq,
                              "kind", e->kind ? e->kind : "", "tenant_id", tenant, "device_id",
                              device, "deliveries", (json_int_t)e->deliveries, "time", when,
                              "reason", e->reason ? e->reason : "");
        if (!o || json_array_append_new(p->list, o) != 0) {
            lifecycle_event_clear(&ev);
            return IOT_ERR_NOMEM;
        }
    } else {
        if (p->n == 0)
            printf("SEQ\tORIGINAL_SEQ\tKIND\tTENANT\tDEVICE\tDELIVERIES\tTIME\tREASON\n");
        printf("%llu\t%llu\t", (unsigned long long)e->dlq_seq, (unsigned long long)e->original_seq);
        put_text(e->kind && *e->kind ? e->kind : "-");
        putchar('\t');
        put_text(*tenant ? tenant : "-");
        putchar('\t');
        put_text(decoded ? device : "(not a lifecycle event)");
        printf("\t%llu\t%s\t", (unsigned long long)e->deliveries, when);
        put_text(e->reason && *e->reason ? e->reason : "-");
        putchar('\n');
    }
    p->n++;
    lifecycle_event_clear(&ev);
    return IOT_OK;
}

static int dlq_list(struct queue *q, bool json)
{
    struct iot_error err = {0};
    struct dlq_print p = {.json = json, .list = json ? json_array() : NULL};
    if (json && !p.list)
        return EXIT_FAILURE_RUNTIME;
    enum iot_err rc = queue_dlq_list(q, dlq_print_one, &p, &err);
    if (rc != IOT_OK) {
        json_decref(p.list);
        fprintf(stderr, "dlq list: %s\n", err.msg[0] ? err.msg : iot_strerror(rc));
        return EXIT_FAILURE_RUNTIME;
    }
    if (json) {
        char *text = json_dumps(p.list, JSON_COMPACT | JSON_PRESERVE_ORDER);
        puts(text ? text : "[]");
        free(text);
        json_decref(p.list);
    } else if (p.n == 0) {
        printf("no dead letters\n");
    }
    return EXIT_OK;
}

static int dlq_replay(struct queue *q, const uint64_t *seqs, size_t n, bool all)
{
    struct iot_error err = {0};
    size_t replayed = 0;
    enum iot_err rc = queue_dlq_replay(q, seqs, n, all, &replayed, &err);
    if (rc != IOT_OK) {
        fprintf(stderr, "dlq replay: %s%s\n", err.msg[0] ? err.msg : iot_strerror(rc),
                rc == IOT_ERR_NOT_FOUND ? " (see `iot-manager dlq list`); nothing was replayed"
                                        : "");
        if (replayed > 0)
            printf("replayed %zu dead letter%s before the failure\n", replayed,
                   replayed == 1 ? "" : "s");
        return EXIT_FAILURE_RUNTIME;
    }
    printf("replayed %zu dead letter%s\n", replayed, replayed == 1 ? "" : "s");
    return EXIT_OK;
}

static int cmd_dlq(struct cli *cli, struct config *cfg)
{
    const char *sub = cli->argc > 1 ? cli->argv[1] : "";
    bool list = strcmp(sub, "list") == 0;
    if (!list && strcmp(sub, "replay") != 0) {
        fprintf(stderr, "dlq: use `dlq list [--output text|json]` or `dlq replay [--all | "
                        "SEQ...]`\n");
        return EXIT_USAGE;
    }
    bool json = false, all = false;
    size_t n = 0;
    uint64_t *seqs = calloc((size_t)cli->argc, sizeof *seqs);
    int code = EXIT_USAGE;
    if (!seqs)
        return EXIT_FAILURE_RUNTIME;
    for (int i = 2; i < cli->argc; i++) {
        const char *a = cli->argv[i];
        const char *output = NULL;
        if (list && strcmp(a, "--output") == 0 && i + 1 < cli->argc) {
            output = cli->argv[++i];
        } else if (list && strncmp(a, "--output=", 9) == 0) {
            output = a + 9;
        } else if (!list && strcmp(a, "--all") == 0) {
            all = true;
        } else if (!list && a[0] >= '0' && a[0] <= '9') {
            char *end = NULL;
            errno = 0;
            unsigned long long v = strtoull(a, &end, 10);
            if (errno || *end || v == 0) {
                fprintf(stderr, "dlq replay: %s is not a dead-letter sequence number\n", a);
                goto out;
            }
            seqs[n++] = (uint64_t)v;
        } else {
            fprintf(stderr, "dlq %s: unknown option or missing value: %s\n", sub, a);
            goto out;
        }
        if (output) {
            if (strcmp(output, "json") != 0 && strcmp(output, "text") != 0) {
                fprintf(stderr, "dlq list: --output must be text or json\n");
                goto out;
            }
            json = strcmp(output, "json") == 0;
        }
    }
    if (!list && (all == (n > 0))) {
        fprintf(stderr, "dlq replay: give either --all or the sequence numbers shown by `dlq "
                        "list`\n");
        goto out;
    }
    if (!cfg->nats_uri[0]) {
        fprintf(stderr, "dlq: dead letters are kept in NATS JetStream: set IOT_MANAGER_NATS_URI\n");
        goto out;
    }
    code = EXIT_FAILURE_RUNTIME;
    struct queue *q = queue_connect(cfg, "dlq", 10000);
    if (!q)
        goto out;
    code = list ? dlq_list(q, json) : dlq_replay(q, seqs, n, all);
    queue_close(q);
out:
    free(seqs);
    return code;
}

/* ---- entry ---- */

int main(int argc, char **argv)
{
    struct cli cli = {0};
    static const struct option global_opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    /* '+' stops at the first non-option: the subcommand and its own flags follow */
    while ((opt = getopt_long(argc, argv, "+hc:l:", global_opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            cli.config_path = optarg;
            cli.config_explicit = true;
            break;
        case 'l':
            cli.log_level = optarg;
            break;
        case 'h':
            print_help(stdout);
            return EXIT_OK;
        default:
            fprintf(stderr, "Run 'iot-manager --help' for usage.\n");
            return EXIT_USAGE;
        }
    }
    static char *default_argv[] = {(char *)"server", NULL};
    if (optind < argc) {
        cli.argc = argc - optind;
        cli.argv = argv + optind;
    } else {
        cli.argc = 1;
        cli.argv = default_argv;
    }
    if (strcmp(cli.argv[0], "help") == 0 || strcmp(cli.argv[0], "--help") == 0) {
        print_help(stdout);
        return EXIT_OK;
    }
    const struct command *cmd = NULL;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, cli.argv[0]) == 0)
            cmd = &commands[i];
    }
    if (!cmd) {
        fprintf(stderr,
                "iot-manager: unknown command \"%s\"\nRun 'iot-manager --help' for usage.\n",
                cli.argv[0]);
        return EXIT_USAGE;
    }
    for (int i = 1; i < cli.argc; i++) {
        if (strcmp(cli.argv[i], "--help") == 0 || strcmp(cli.argv[i], "-h") == 0) {
            printf("Usage: iot-manager [global options] %s\n\n%s\n\n"
                   "Global options: --config FILE, --log-level debug|info|warn|error.\n"
                   "Exit codes: 0 success; 1 run-time failure (database, migration, keys, NATS,\n"
                   "a failed step with --fail-early); 2 usage or configuration error.\n"
                   "Settings: iot-manager --help, or docs/configuration.md.\n",
                   cmd->usage, cmd->help);
            return EXIT_OK;
        }
    }

    struct config *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        return EXIT_FAILURE_RUNTIME;
    struct iot_error err = {0};
    if (config_load(cfg, cli.config_path, cli.config_explicit, &err) != IOT_OK) {
        fprintf(stderr, "iot-manager: configuration error: %s\n", err.msg);
        free(cfg);
        return EXIT_USAGE;
    }
    const char *level_text = cli.log_level ? cli.log_level : cfg->log_level;
    enum log_level level;
    if (!log_level_parse(level_text, &level)) {
        fprintf(stderr, "iot-manager: --log-level must be debug, info, warn or error\n");
        free(cfg);
        return EXIT_USAGE;
    }
    log_set_level(level);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int code = cmd->run(&cli, cfg);
    curl_global_cleanup();
    OPENSSL_cleanse(cfg, sizeof *cfg);
    free(cfg);
    return code;
}
