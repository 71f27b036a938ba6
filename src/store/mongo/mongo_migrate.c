/* Schema migrations in Mender's layout (contract §2.4): indexes only, one `migration_info`
 * record {version: {major, minor, patch}, timestamp} per applied version, as go-lib-micro's
 * SimpleMigrator writes them. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "iot-manager/log.h"
#include "store/mongo/mongo_internal.h"

struct mongo_version {
    int64_t major, minor, patch;
};

#define INDEX_KEYS_MAX 3

struct index_spec {
    const char *coll;
    const char *name;
    const char *keys[INDEX_KEYS_MAX]; /* NULL-terminated when shorter */
    int32_t dirs[INDEX_KEYS_MAX];
    bool unique;
    bool ttl; /* expireAfterSeconds: 0 */
};

struct migration {
    struct mongo_version version;
    struct index_spec index[2];
    size_t n_index;
};

/* Index names are Mender's, including `tenant_id__id` for a key that has no _id in it. */
static const struct migration migrations[] = {
    {{1, 0, 0},
     {{MONGO_COLL_INTEGRATIONS,
       "tenant_id_provider__id",
       {"tenant_id", "provider", "_id"},
       {1, 1, 1},
       false,
       false},
      {MONGO_COLL_DEVICES,
       "tenant_id_integration_ids__id",
       {"tenant_id", "integration_ids", "_id"},
       {1, 1, 1},
       false,
       false}},
     2},
    {{1, 1, 0},
     {{MONGO_COLL_LOG, "tenant_id__id", {"tenant_id", "event_ts"}, {1, -1}, false, false}},
     1},
    {{1, 1, 1}, {{MONGO_COLL_LOG, "log_TTL", {"expire_ts"}, {1}, false, true}}, 1},
    {{1, 2, 0},
     {{MONGO_COLL_INTEGRATIONS, "integration_one_per_tenant", {"tenant_id"}, {1}, true, false}},
     1},
};

#define MIGRATIONS_COUNT (sizeof migrations / sizeof migrations[0])

static bool version_less(const struct mongo_version *a, const struct mongo_version *b)
{
    if (a->major != b->major)
        return a->major < b->major;
    if (a->minor != b->minor)
        return a->minor < b->minor;
    return a->patch < b->patch;
}

/* Highest version recorded in migration_info; *found is false when there is none. */
static enum iot_err read_version(mongoc_database_t *db, struct mongo_version *last, bool *found,
                                 struct iot_error *err)
{
    bson_error_t error;
    const bson_t *doc;
    enum iot_err rc = IOT_OK;
    *found = false;
    *last = (struct mongo_version){0, 0, 0};

    bson_t *filter = BCON_NEW("version", "{", "$exists", BCON_BOOL(true), "}");
    mongoc_collection_t *coll = mongoc_database_get_collection(db, MONGO_COLL_MIGRATIONS);
    mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(coll, filter, NULL, NULL);
    while (mongoc_cursor_next(cursor, &doc)) {
        bson_iter_t it, sub;
        struct mongo_version v = {0, 0, 0};
        if (!bson_iter_init_find(&it, doc, "version") || !BSON_ITER_HOLDS_DOCUMENT(&it) ||
            !bson_iter_recurse(&it, &sub))
            continue;
        while (bson_iter_next(&sub)) {
            if (!BSON_ITER_HOLDS_NUMBER(&sub))
                continue;
            const char *key = bson_iter_key(&sub);
            int64_t n = bson_iter_as_int64(&sub);
            if (strcmp(key, "major") == 0)
                v.major = n;
            else if (strcmp(key, "minor") == 0)
                v.minor = n;
            else if (strcmp(key, "patch") == 0)
                v.patch = n;
        }
        if (!*found || version_less(last, &v))
            *last = v;
        *found = true;
    }
    if (mongoc_cursor_error(cursor, &error))
        rc = mongo_error_set(err, &error, "failed to list applied migrations");
    mongoc_cursor_destroy(cursor);
    mongoc_collection_destroy(coll);
    bson_destroy(filter);
    return rc;
}

/* Whether the data collections hold no document at all (a brand-new installation). */
static enum iot_err data_is_empty(mongoc_database_t *db, bool *empty, struct iot_error *err)
{
    static const char *const colls[] = {MONGO_COLL_INTEGRATIONS, MONGO_COLL_DEVICES,
                                        MONGO_COLL_LOG};
    enum iot_err rc = IOT_OK;
    bson_error_t error;
    const bson_t *doc;
    bson_t filter = BSON_INITIALIZER;
    bson_t *opts = BCON_NEW("limit", BCON_INT64(1), "projection", "{", "_id", BCON_INT32(1), "}");
    *empty = true;
    for (size_t i = 0; rc == IOT_OK && *empty && i < sizeof colls / sizeof colls[0]; i++) {
        mongoc_collection_t *coll = mongoc_database_get_collection(db, colls[i]);
        mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(coll, &filter, opts, NULL);
        if (mongoc_cursor_next(cursor, &doc))
            *empty = false;
        else if (mongoc_cursor_error(cursor, &error))
            rc = mongo_error_set(err, &error, "failed to inspect the database");
        mongoc_cursor_destroy(cursor);
        mongoc_collection_destroy(coll);
    }
    bson_destroy(opts);
    bson_destroy(&filter);
    return rc;
}

static bool build_create_index(bson_t *cmd, const struct index_spec *spec)
{
    bson_t indexes, index, key;
    bool ok = BSON_APPEND_UTF8(cmd, "createIndexes", spec->coll);
    ok = ok && BSON_APPEND_ARRAY_BEGIN(cmd, "indexes", &indexes);
    ok = ok && BSON_APPEND_DOCUMENT_BEGIN(&indexes, "0", &index);
    ok = ok && BSON_APPEND_DOCUMENT_BEGIN(&index, "key", &key);
    for (size_t i = 0; ok && i < INDEX_KEYS_MAX && spec->keys[i]; i++)
        ok = BSON_APPEND_INT32(&key, spec->keys[i], spec->dirs[i]);
    ok = ok && bson_append_document_end(&index, &key);
    /* `name` is mandatory for FerretDB, and is what Mender's indexes are known by */
    ok = ok && BSON_APPEND_UTF8(&index, "name", spec->name);
    if (spec->unique)
        ok = ok && BSON_APPEND_BOOL(&index, "unique", true);
    if (spec->ttl)
        ok = ok && BSON_APPEND_INT32(&index, "expireAfterSeconds", 0);
    ok = ok && bson_append_document_end(&indexes, &index);
    ok = ok && bson_append_array_end(cmd, &indexes);
    return ok;
}

/* One createIndexes command per index: a server that refuses one option (FerretDB and TTL)
 * refuses the whole command. */
static enum iot_err create_index(mongoc_database_t *db, const struct index_spec *spec,
                                 struct iot_error *err)
{
    enum iot_err rc = IOT_OK;
    bson_error_t error;
    bson_t reply;
    bson_t cmd = BSON_INITIALIZER;
    if (!build_create_index(&cmd, spec)) {
        bson_destroy(&cmd);
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot build createIndexes");
    }
    bool ok = mongoc_database_write_command_with_opts(db, &cmd, NULL, &reply, &error);
    if (!ok && spec->ttl && error.code == MONGO_CODE_NOT_IMPLEMENTED) {
        log_warn("store: the database server does not support TTL indexes (%s not created); "
                 "expired events are removed by the service's own sweep",
                 spec->name);
    } else if (!ok) {
        char what[128];
        snprintf(what, sizeof what, "failed to create index %s", spec->name);
        rc = mongo_error_set(err, &error, what);
    }
    bson_destroy(&reply);
    bson_destroy(&cmd);
    return rc;
}

static enum iot_err record_version(mongoc_database_t *db, const struct mongo_version *v,
                                   struct iot_error *err)
{
    bson_error_t error;
    /* int64 and a date: what the Go driver makes of go-lib-micro's `uint` fields and time.Now() */
    bson_t *doc = BCON_NEW("version", "{", "major", BCON_INT64(v->major), "minor",
                           BCON_INT64(v->minor), "patch", BCON_INT64(v->patch), "}");
    if (!bson_append_now_utc(doc, "timestamp", -1)) {
        bson_destroy(doc);
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot build migration record");
    }
    mongoc_collection_t *coll = mongoc_database_get_collection(db, MONGO_COLL_MIGRATIONS);
    bool ok = mongoc_collection_insert_one(coll, doc, NULL, NULL, &error);
    mongoc_collection_destroy(coll);
    bson_destroy(doc);
    return ok ? IOT_OK : mongo_error_set(err, &error, "failed to record migration");
}

static enum iot_err apply_from(mongoc_database_t *db, const char *dbname, struct mongo_version last,
                               struct iot_error *err)
{
    for (size_t i = 0; i < MIGRATIONS_COUNT; i++) {
        const struct migration *m = &migrations[i];
        if (!version_less(&last, &m->version))
            continue;
        log_info("store: migrating %s from version %" PRId64 ".%" PRId64 ".%" PRId64 " to %" PRId64
                 ".%" PRId64 ".%" PRId64,
                 dbname, last.major, last.minor, last.patch, m->version.major, m->version.minor,
                 m->version.patch);
        for (size_t j = 0; j < m->n_index; j++) {
            enum iot_err rc = create_index(db, &m->index[j], err);
            if (rc != IOT_OK)
                return rc;
        }
        enum iot_err rc = record_version(db, &m->version, err);
        if (rc != IOT_OK)
            return rc;
        last = m->version;
    }
    return IOT_OK;
}

enum iot_err mongo_migrate(struct mongo_store *ms, enum store_migrate_mode mode,
                           struct iot_error *err)
{
    struct mongo_version last;
    bool found = false, empty = false;
    const struct mongo_version *target = &migrations[MIGRATIONS_COUNT - 1].version;

    mongoc_client_t *client = mongoc_client_pool_pop(ms->pool);
    mongoc_database_t *db = mongoc_client_get_database(client, ms->dbname);
    enum iot_err rc = read_version(db, &last, &found, err);
    if (rc == IOT_OK && mode == STORE_MIGRATE_CHECK && !found)
        rc = data_is_empty(db, &empty, err);
    if (rc != IOT_OK)
        goto out;

    /* A brand-new database is initialised even without --automigrate; an existing one that is
     * behind is left for `migrate` to bring up to date. */
    if (mode == STORE_MIGRATE_CHECK && !empty && version_less(&last, target)) {
        rc = iot_error_set(err, IOT_ERR_NEEDS_MIGRATION,
                           "failed to apply migrations: db needs migration: %s has version "
                           "%" PRId64 ".%" PRId64 ".%" PRId64 ", needs version %s",
                           ms->dbname, last.major, last.minor, last.patch, STORE_SCHEMA_VERSION);
        goto out;
    }
    rc = apply_from(db, ms->dbname, last, err);
out:
    mongoc_database_destroy(db);
    mongoc_client_pool_push(ms->pool, client);
    return rc;
}
