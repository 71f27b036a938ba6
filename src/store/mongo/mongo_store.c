/* The MongoDB store adapter: Mender's iot-manager layout (contract §2) through a libmongoc
 * client pool. No transactions are used, so FerretDB serves as well as MongoDB. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "iot-manager/log.h"
#include "store/mongo/mongo_internal.h"
#include "store/store_internal.h"

#define MONGO_DEFAULT_DBNAME     "iot_manager"
#define MONGO_DEFAULT_TIMEOUT_MS 5000
#define MONGO_APPNAME            "iot-manager"

/* ---- process-wide libmongoc set-up ---- */

/* libmongoc writes its log (DEBUG lines of the topology monitor included) to stderr unless a
 * handler is installed; everything it says goes to our log at debug level. */
static void mongo_log_handler(mongoc_log_level_t level, const char *domain, const char *message,
                              void *user_data)
{
    (void)user_data;
    if (level == MONGOC_LOG_LEVEL_TRACE)
        return;
    log_write(LOG_LEVEL_DEBUG, NULL, NULL, "mongoc %s %s: %s", mongoc_log_level_str(level),
              domain ? domain : "", message ? message : "");
}

/* Stores alive now. libmongoc's init and cleanup are process-wide and one-shot (it cannot be
 * initialised again once cleaned up), so the cleanup runs at process exit, and only when no
 * store (and so no pool with a monitor thread) is left that it could pull the rug from. */
static atomic_int mongo_live_stores;

static void mongo_global_cleanup(void)
{
    if (atomic_load(&mongo_live_stores) == 0)
        mongoc_cleanup();
}

static void mongo_global_init(void)
{
    /* libmongoc's performance counters live in /dev/shm/mongoc-<pid> files, which a killed
     * process leaves behind and a later process with the same pid then trips over (printing a
     * raw, non-JSON warning). We export no such counters: keep them in plain memory. */
    setenv("MONGOC_DISABLE_SHM", "1", 0);
    mongoc_log_set_handler(mongo_log_handler, NULL);
    mongoc_init();
    atexit(mongo_global_cleanup);
}

static pthread_once_t mongo_init_once = PTHREAD_ONCE_INIT;

/* ---- errors ---- */

enum iot_err mongo_error_set(struct iot_error *err, const bson_error_t *error, const char *what)
{
    bool unavailable =
        error->domain == MONGOC_ERROR_SERVER_SELECTION || error->domain == MONGOC_ERROR_STREAM ||
        (error->domain == MONGOC_ERROR_CLIENT && error->code == MONGOC_ERROR_CLIENT_AUTHENTICATE);
    if (unavailable)
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "store: %s: database unavailable: %s", what,
                             error->message);
    return iot_error_set(err, IOT_ERR_INTERNAL, "store: %s: %s", what, error->message);
}

static int64_t reply_count(const bson_t *reply, const char *key)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, reply, key) && BSON_ITER_HOLDS_NUMBER(&it))
        return bson_iter_as_int64(&it);
    return 0;
}

static struct mongo_store *mongo_of(struct store *st)
{
    return (struct mongo_store *)st;
}

static mongoc_collection_t *mongo_collection(struct mongo_store *ms, mongoc_client_t *client,
                                             const char *name)
{
    return mongoc_client_get_collection(client, ms->dbname, name);
}

/* ---- reading integrations ---- */

struct integration_sink {
    struct integration_list *list;
    size_t cap;
};

static enum iot_err push_integration(const bson_t *doc, void *ctx, struct iot_error *err)
{
    struct integration_sink *sink = ctx;
    struct integration_list *list = sink->list;
    struct integration *items = store_grow(list->items, &sink->cap, list->len, sizeof *items);
    if (!items)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    list->items = items;
    enum iot_err rc = mongo_integration_from_bson(doc, &list->items[list->len], err);
    if (rc == IOT_OK)
        list->len++;
    return rc;
}

/* Reads every integration matching `filter` (sorted by `opts`) into `out` (caller-owned). */
static enum iot_err find_integrations(struct mongo_store *ms, const bson_t *filter,
                                      const bson_t *opts, struct integration_list *out,
                                      struct iot_error *err)
{
    struct integration_sink sink = {.list = out};
    out->items = NULL;
    out->len = 0;
    enum iot_err rc = mongo_find_each(ms, MONGO_COLL_INTEGRATIONS, filter, opts, push_integration,
                                      &sink, "failed to fetch integrations", err);
    if (rc != IOT_OK)
        integration_list_clear(out);
    return rc;
}

/* {_id: <id in either UUID subtype>, tenant_id: <tenant>} */
static bool append_id_tenant(bson_t *filter, const char *tenant, const struct uuid *id)
{
    return mongo_append_uuid_match(filter, "_id", id) &&
           BSON_APPEND_UTF8(filter, "tenant_id", tenant ? tenant : "");
}

/* ---- store_ops ---- */

static enum iot_err mongo_ping(struct store *st, struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    bson_error_t error;
    bson_t reply;
    bson_t *cmd = BCON_NEW("ping", BCON_INT32(1));
    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    bool ok = mongoc_client_command_simple(client, "admin", cmd, NULL, &reply, &error);
    mongoc_client_pool_push(ms->pool, client);
    bson_destroy(&reply);
    bson_destroy(cmd);
    return ok ? IOT_OK : mongo_error_set(err, &error, "ping");
}

static enum iot_err mongo_migrate_op(struct store *st, enum store_migrate_mode mode,
                                     struct iot_error *err)
{
    return mongo_migrate(mongo_of(st), mode, err);
}

static enum iot_err mongo_integrations_list(struct store *st, const char *tenant,
                                            struct integration_list *out, struct iot_error *err)
{
    bson_t *filter = BCON_NEW("tenant_id", BCON_UTF8(tenant ? tenant : ""));
    bson_t *opts = BCON_NEW("sort", "{", "provider", BCON_INT32(1), "_id", BCON_INT32(1), "}");
    enum iot_err rc = find_integrations(mongo_of(st), filter, opts, out, err);
    bson_destroy(opts);
    bson_destroy(filter);
    return rc;
}

static enum iot_err mongo_integration_get(struct store *st, const char *tenant,
                                          const struct uuid *id, struct integration *out,
                                          struct iot_error *err)
{
    struct integration_list list = {0};
    bson_t filter = BSON_INITIALIZER;
    bson_t *opts = BCON_NEW("limit", BCON_INT64(1));
    enum iot_err rc = append_id_tenant(&filter, tenant, id)
                          ? find_integrations(mongo_of(st), &filter, opts, &list, err)
                          : iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot build filter");
    if (rc == IOT_OK && list.len == 0)
        rc = iot_error_set(err, IOT_ERR_NOT_FOUND, "integration not found");
    if (rc == IOT_OK) {
        *out = list.items[0];
        memset(&list.items[0], 0, sizeof list.items[0]);
    }
    integration_list_clear(&list);
    bson_destroy(opts);
    bson_destroy(&filter);
    return rc;
}

static enum iot_err mongo_integration_create(struct store *st, const struct integration *in,
                                             struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    bson_error_t error;
    bson_t reply;
    bson_t doc = BSON_INITIALIZER;
    enum iot_err rc = mongo_integration_to_bson(in, &doc, err);
    if (rc != IOT_OK)
        goto out;

    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_collection_t *coll = mongo_collection(ms, client, MONGO_COLL_INTEGRATIONS);
    bool ok = mongoc_collection_insert_one(coll, &doc, NULL, &reply, &error);
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
    bson_destroy(&reply);
    if (!ok && error.code == MONGO_CODE_DUPLICATE_KEY)
        rc = iot_error_set(err, IOT_ERR_CONFLICT, "integration already exists");
    else if (!ok)
        rc = mongo_error_set(err, &error, "failed to insert integration");
out:
    bson_destroy(&doc);
    return rc;
}

static enum iot_err mongo_integration_set_credentials(struct store *st, const char *tenant,
                                                      const struct uuid *id,
                                                      const struct credentials *creds,
                                                      struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    bson_error_t error;
    bson_t reply, set;
    bson_t filter = BSON_INITIALIZER;
    bson_t update = BSON_INITIALIZER;
    enum iot_err rc = IOT_OK;

    if (!append_id_tenant(&filter, tenant, id) ||
        !BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot build update");
        goto out;
    }
    rc = mongo_append_credentials(&set, "credentials", creds, err);
    if (rc != IOT_OK)
        goto out;
    if (!bson_append_document_end(&update, &set)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot build update");
        goto out;
    }

    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_collection_t *coll = mongo_collection(ms, client, MONGO_COLL_INTEGRATIONS);
    bool ok = mongoc_collection_update_one(coll, &filter, &update, NULL, &reply, &error);
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
    if (!ok)
        rc = mongo_error_set(err, &error, "failed to update integration credentials");
    else if (reply_count(&reply, "matchedCount") == 0)
        rc = iot_error_set(err, IOT_ERR_NOT_FOUND, "integration not found");
    bson_destroy(&reply);
out:
    bson_destroy(&update);
    bson_destroy(&filter);
    return rc;
}

static enum iot_err mongo_integration_delete(struct store *st, const char *tenant,
                                             const struct uuid *id, struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    bson_error_t error;
    bson_t reply;
    bson_t filter = BSON_INITIALIZER;
    enum iot_err rc = IOT_OK;
    if (!append_id_tenant(&filter, tenant, id)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot build filter");
        goto out;
    }
    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_collection_t *coll = mongo_collection(ms, client, MONGO_COLL_INTEGRATIONS);
    bool ok = mongoc_collection_delete_one(coll, &filter, NULL, &reply, &error);
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
    if (!ok)
        rc = mongo_error_set(err, &error, "failed to delete integration");
    else if (reply_count(&reply, "deletedCount") == 0)
        rc = iot_error_set(err, IOT_ERR_NOT_FOUND, "integration not found");
    bson_destroy(&reply);
out:
    bson_destroy(&filter);
    return rc;
}

static enum iot_err
mongo_integrations_for_each(struct store *st, enum iot_err (*fn)(struct integration *in, void *ctx),
                            void *ctx, struct iot_error *err)
{
    struct integration_list list = {0};
    bson_t filter = BSON_INITIALIZER;
    bson_t *opts = BCON_NEW("sort", "{", "tenant_id", BCON_INT32(1), "_id", BCON_INT32(1), "}");
    /* Everything is read before `fn` runs: `fn` usually writes back through this store, and a
     * cursor held open across those writes would pin a pooled connection. */
    enum iot_err rc = find_integrations(mongo_of(st), &filter, opts, &list, err);
    for (size_t i = 0; rc == IOT_OK && i < list.len; i++)
        rc = fn(&list.items[i], ctx);
    integration_list_clear(&list);
    bson_destroy(opts);
    bson_destroy(&filter);
    return rc;
}

static enum iot_err mongo_devices_count_linked(struct store *st, const char *tenant,
                                               const struct uuid *integration_id, int64_t *count,
                                               struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    bson_error_t error;
    bson_t filter = BSON_INITIALIZER;
    *count = 0;
    if (!BSON_APPEND_UTF8(&filter, "tenant_id", tenant ? tenant : "") ||
        !mongo_append_uuid_match(&filter, "integration_ids", integration_id)) {
        bson_destroy(&filter);
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot build filter");
    }
    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_collection_t *coll = mongo_collection(ms, client, MONGO_COLL_DEVICES);
    int64_t n = mongoc_collection_count_documents(coll, &filter, NULL, NULL, NULL, &error);
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
    bson_destroy(&filter);
    if (n < 0)
        return mongo_error_set(err, &error, "failed to count devices");
    *count = n;
    return IOT_OK;
}

static enum iot_err mongo_tenant_delete(struct store *st, const char *tenant, struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    bson_error_t error;
    enum iot_err rc = IOT_OK;
    bson_t *filter = BCON_NEW("tenant_id", BCON_UTF8(tenant ? tenant : ""));
    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_database_t *db = mongoc_client_get_database(client, ms->dbname);
    /* Every collection, as Mender does, so that collections added later are covered too;
     * only the schema bookkeeping is left alone. */
    char **names = mongoc_database_get_collection_names_with_opts(db, NULL, &error);
    if (!names) {
        rc = mongo_error_set(err, &error, "failed to list collections");
        goto out;
    }
    for (size_t i = 0; names[i] && rc == IOT_OK; i++) {
        if (strcmp(names[i], MONGO_COLL_MIGRATIONS) == 0)
            continue;
        mongoc_collection_t *coll = mongoc_database_get_collection(db, names[i]);
        if (!mongoc_collection_delete_many(coll, filter, NULL, NULL, &error))
            rc = mongo_error_set(err, &error, "failed to delete tenant data");
        mongoc_collection_destroy(coll);
    }
    bson_strfreev(names);
out:
    mongoc_database_destroy(db);
    mongoc_client_pool_push(ms->pool, client);
    bson_destroy(filter);
    return rc;
}

static enum iot_err mongo_events_expire(struct store *st, int64_t now_ms, int64_t *removed,
                                        struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    bson_error_t error;
    bson_t reply;
    *removed = 0;
    bson_t *filter = BCON_NEW("expire_ts", "{", "$lt", BCON_DATE_TIME(now_ms), "}");
    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_collection_t *coll = mongo_collection(ms, client, MONGO_COLL_LOG);
    bool ok = mongoc_collection_delete_many(coll, filter, NULL, &reply, &error);
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
    if (ok)
        *removed = reply_count(&reply, "deletedCount");
    bson_destroy(&reply);
    bson_destroy(filter);
    return ok ? IOT_OK : mongo_error_set(err, &error, "failed to delete expired events");
}

static void mongo_destroy(struct store *st)
{
    struct mongo_store *ms = mongo_of(st);
    if (!ms)
        return;
    if (ms->pool) {
        mongoc_client_pool_destroy(ms->pool);
        atomic_fetch_sub(&mongo_live_stores, 1);
    }
    if (ms->device_mu_ready) {
        for (size_t i = 0; i < MONGO_DEVICE_LOCKS; i++)
            pthread_mutex_destroy(&ms->device_mu[i]);
    }
    free(ms->dbname);
    free(ms);
}

static const struct store_ops mongo_ops = {
    .name = "mongo",
    .ping = mongo_ping,
    .migrate = mongo_migrate_op,
    .integrations_list = mongo_integrations_list,
    .integration_get = mongo_integration_get,
    .integration_create = mongo_integration_create,
    .integration_set_credentials = mongo_integration_set_credentials,
    .integration_delete = mongo_integration_delete,
    .integrations_for_each = mongo_integrations_for_each,
    .devices_count_linked = mongo_devices_count_linked,
    .tenant_delete = mongo_tenant_delete,
    .events_expire = mongo_events_expire,
    .device_get = mongo_device_get,
    .device_link = mongo_device_link,
    .device_unlink = mongo_device_unlink,
    .device_delete = mongo_device_delete,
    .devices_page = mongo_devices_page,
    .integration_unlink_all = mongo_integration_unlink_all,
    .event_insert = mongo_event_insert,
    .events_list = mongo_events_list,
    .destroy = mongo_destroy,
};

/* ---- construction ---- */

/* The URL's own timeouts win; ours only fill the gaps (libmongoc's pooled default for server
 * selection is 30 s, far too long for a request path). */
static bool uri_default_timeout(mongoc_uri_t *uri, const char *option, int32_t ms)
{
    if (mongoc_uri_has_option(uri, option))
        return true;
    return mongoc_uri_set_option_as_int32(uri, option, ms);
}

static enum iot_err uri_apply_options(mongoc_uri_t *uri, const struct store_mongo_options *opts,
                                      struct iot_error *err)
{
    int32_t timeout = opts->timeout_ms > 0 ? opts->timeout_ms : MONGO_DEFAULT_TIMEOUT_MS;
    bool ok = uri_default_timeout(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, timeout) &&
              uri_default_timeout(uri, MONGOC_URI_CONNECTTIMEOUTMS, timeout) &&
              uri_default_timeout(uri, MONGOC_URI_SOCKETTIMEOUTMS, timeout);
    if (ok && opts->username && *opts->username)
        ok = mongoc_uri_set_username(uri, opts->username);
    if (ok && opts->password && *opts->password)
        ok = mongoc_uri_set_password(uri, opts->password);
    if (ok && opts->ssl)
        ok = mongoc_uri_set_option_as_bool(uri, MONGOC_URI_TLS, true);
    if (ok && opts->ssl && opts->ssl_skipverify)
        ok = mongoc_uri_set_option_as_bool(uri, MONGOC_URI_TLSALLOWINVALIDCERTIFICATES, true);
    if (!ok)
        return iot_error_set(err, IOT_ERR_CONFIG, "invalid MongoDB options");
    return IOT_OK;
}

enum iot_err store_mongo_open(const struct store_mongo_options *opts, struct store **out,
                              struct iot_error *err)
{
    enum iot_err rc = IOT_OK;
    bson_error_t error;
    mongoc_uri_t *uri = NULL;
    struct mongo_store *ms = NULL;
    *out = NULL;

    const char *url = opts && opts->url ? opts->url : "";
    if (!strstr(url, "://")) {
        /* Mender's message quotes the URL; credentials in it ("user:pass@host") are masked */
        const char *at = strrchr(url, '@');
        return iot_error_set(err, IOT_ERR_CONFIG, "Invalid mongoURL \"%s%s\": missing schema.",
                             at ? "<omitted>" : "", at ? at : url);
    }

    pthread_once(&mongo_init_once, mongo_global_init);

    uri = mongoc_uri_new_with_error(url, &error);
    if (!uri) {
        rc = iot_error_set(err, IOT_ERR_CONFIG, "invalid MongoDB URL: %s", error.message);
        goto out;
    }
    rc = uri_apply_options(uri, opts, err);
    if (rc != IOT_OK)
        goto out;

    ms = calloc(1, sizeof *ms);
    if (!ms) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        goto out;
    }
    ms->base.ops = &mongo_ops;
    for (size_t i = 0; i < MONGO_DEVICE_LOCKS; i++)
        pthread_mutex_init(&ms->device_mu[i], NULL);
    ms->device_mu_ready = true;
    ms->dbname = strdup(opts->dbname && *opts->dbname ? opts->dbname : MONGO_DEFAULT_DBNAME);
    if (!ms->dbname) {
        rc = iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* The pool connects lazily, on the first command: opening never blocks on the server. */
    ms->pool = mongoc_client_pool_new_with_error(uri, &error);
    if (!ms->pool) {
        rc = iot_error_set(err, IOT_ERR_CONFIG, "cannot create MongoDB client: %s", error.message);
        goto out;
    }
    atomic_fetch_add(&mongo_live_stores, 1);
    if (!mongoc_client_pool_set_error_api(ms->pool, MONGOC_ERROR_API_VERSION_2)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "cannot set MongoDB error API");
        goto out;
    }
    /* Setting the appname twice makes libmongoc complain: the URL's own one wins. */
    if (!mongoc_uri_get_appname(uri))
        mongoc_client_pool_set_appname(ms->pool, MONGO_APPNAME);

    *out = &ms->base;
    ms = NULL;
out:
    mongo_destroy(ms ? &ms->base : NULL);
    mongoc_uri_destroy(uri);
    return rc;
}
