/* Schema migrations of the SQLite store (the schema itself is described in sqlite_store.c).
 *
 * The versions follow Mender's Mongo migrations one for one, so that both stores report the
 * same version for the same capabilities; a new version is one more row in sq_migrations.
 * Every statement is idempotent (IF NOT EXISTS) and all pending versions are applied in one
 * IMMEDIATE transaction together with their schema_migrations rows: a failed migration leaves
 * the database exactly as it was. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sqlite_store.h"

struct sq_migration {
    const char *version;
    const char *sql;
};

static const struct sq_migration sq_migrations[] = {
    {"1.0.0", "CREATE TABLE IF NOT EXISTS integrations ("
              "  id BLOB PRIMARY KEY CHECK (length(id) = 16),"
              "  tenant_id TEXT NOT NULL,"
              "  provider TEXT NOT NULL,"
              "  description TEXT,"
              "  credentials TEXT NOT NULL);"
              "CREATE INDEX IF NOT EXISTS integrations_tenant_provider_id"
              "  ON integrations (tenant_id, provider, id);"
              "CREATE TABLE IF NOT EXISTS devices ("
              "  tenant_id TEXT NOT NULL,"
              "  id TEXT NOT NULL,"
              "  PRIMARY KEY (tenant_id, id));"
              "CREATE TABLE IF NOT EXISTS device_integrations ("
              "  tenant_id TEXT NOT NULL,"
              "  device_id TEXT NOT NULL,"
              "  integration_id BLOB NOT NULL,"
              "  PRIMARY KEY (tenant_id, device_id, integration_id),"
              "  FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id)"
              "    ON DELETE CASCADE);"
              "CREATE INDEX IF NOT EXISTS device_integrations_tenant_integration"
              "  ON device_integrations (tenant_id, integration_id);"},
    {"1.1.0",
     "CREATE TABLE IF NOT EXISTS events ("
     "  id BLOB PRIMARY KEY,"
     "  tenant_id TEXT NOT NULL,"
     "  type TEXT NOT NULL,"
     "  data TEXT,"
     "  event_ts INTEGER NOT NULL,"
     "  expire_ts INTEGER NOT NULL,"
     "  status TEXT);"
     "CREATE INDEX IF NOT EXISTS events_tenant_event_ts ON events (tenant_id, event_ts DESC);"},
    {"1.1.1", "CREATE INDEX IF NOT EXISTS events_expire_ts ON events (expire_ts);"},
    /* One integration per tenant (Mender's integration_one_per_tenant). */
    {"1.2.0", "CREATE UNIQUE INDEX IF NOT EXISTS integration_one_per_tenant"
              "  ON integrations (tenant_id);"},
};

#define SQ_MIGRATIONS_COUNT (sizeof sq_migrations / sizeof sq_migrations[0])

/* Tables whose rows make a database "non-empty" for STORE_MIGRATE_CHECK. */
static const char *const sq_data_tables[] = {"integrations", "devices", "device_integrations",
                                             "events"};

struct sq_version {
    unsigned long major, minor, patch;
};

static bool sq_version_parse(const char *text, struct sq_version *out)
{
    unsigned long *parts[3] = {&out->major, &out->minor, &out->patch};
    const char *p = text;
    for (int i = 0; i < 3; i++) {
        if (*p < '0' || *p > '9')
            return false;
        char *end = NULL;
        errno = 0;
        *parts[i] = strtoul(p, &end, 10);
        if (errno != 0 || *end != (i < 2 ? '.' : '\0'))
            return false;
        p = end + (i < 2);
    }
    return true;
}

static int sq_version_cmp(const struct sq_version *a, const struct sq_version *b)
{
    if (a->major != b->major)
        return a->major < b->major ? -1 : 1;
    if (a->minor != b->minor)
        return a->minor < b->minor ? -1 : 1;
    if (a->patch != b->patch)
        return a->patch < b->patch ? -1 : 1;
    return 0;
}

/* Highest version recorded in schema_migrations (0.0.0 when none), and its text. */
static enum iot_err sq_current_version(sqlite3 *db, struct sq_version *cur, char *text,
                                       size_t text_cap, struct iot_error *err)
{
    *cur = (struct sq_version){0, 0, 0};
    snprintf(text, text_cap, "0.0.0");
    sqlite3_stmt *s = NULL;
    enum iot_err rc = IOT_OK;
    int src = sqlite3_prepare_v2(db, "SELECT version FROM schema_migrations", -1, &s, NULL);
    if (src != SQLITE_OK) {
        rc = sq_fail(err, db, src, "failed to apply migrations: reading schema_migrations");
        goto out;
    }
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(s, 0);
        struct sq_version parsed;
        if (!v || !sq_version_parse(v, &parsed)) {
            rc = iot_error_set(err, IOT_ERR_INTERNAL,
                               "failed to apply migrations: malformed version in "
                               "schema_migrations");
            goto out;
        }
        if (sq_version_cmp(&parsed, cur) > 0) {
            *cur = parsed;
            snprintf(text, text_cap, "%s", v);
        }
    }
    if (src != SQLITE_DONE)
        rc = sq_fail(err, db, src, "failed to apply migrations: reading schema_migrations");
out:
    sqlite3_finalize(s);
    return rc;
}

/* Runs a one-value query into *value. */
static enum iot_err sq_query_int(sqlite3 *db, const char *sql, const char *arg, int64_t *value,
                                 struct iot_error *err)
{
    sqlite3_stmt *s = NULL;
    enum iot_err rc = IOT_OK;
    int src = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (src == SQLITE_OK && arg)
        src = sqlite3_bind_text(s, 1, arg, -1, SQLITE_STATIC);
    if (src == SQLITE_OK) {
        src = sqlite3_step(s);
        if (src == SQLITE_ROW) {
            *value = sqlite3_column_int64(s, 0);
            src = SQLITE_OK;
        }
    }
    if (src != SQLITE_OK)
        rc = sq_fail(err, db, src, "failed to apply migrations: inspecting database");
    sqlite3_finalize(s);
    return rc;
}

/* True when none of the data tables exists or holds a row: nothing there to misread, so CHECK
 * may lay down the schema. */
static enum iot_err sq_database_is_empty(sqlite3 *db, bool *empty, struct iot_error *err)
{
    *empty = true;
    for (size_t i = 0; i < sizeof sq_data_tables / sizeof sq_data_tables[0]; i++) {
        int64_t exists = 0;
        enum iot_err rc = sq_query_int(
            db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            sq_data_tables[i], &exists, err);
        if (rc != IOT_OK)
            return rc;
        if (!exists)
            continue;
        char sql[96];
        /* table names come from the static list above, never from input */
        snprintf(sql, sizeof sql, "SELECT EXISTS (SELECT 1 FROM \"%s\")", sq_data_tables[i]);
        int64_t has_rows = 0;
        rc = sq_query_int(db, sql, NULL, &has_rows, err);
        if (rc != IOT_OK)
            return rc;
        if (has_rows) {
            *empty = false;
            return IOT_OK;
        }
    }
    return IOT_OK;
}

static int64_t sq_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static enum iot_err sq_apply_one(sqlite3 *db, const struct sq_migration *m, struct iot_error *err)
{
    char what[64];
    snprintf(what, sizeof what, "failed to apply migrations: version %s", m->version);
    int src = sqlite3_exec(db, m->sql, NULL, NULL, NULL);
    if (src != SQLITE_OK)
        return sq_fail(err, db, src, what);
    sqlite3_stmt *s = NULL;
    src = sqlite3_prepare_v2(db,
                             "INSERT OR REPLACE INTO schema_migrations (version, applied_at)"
                             " VALUES (?1, ?2)",
                             -1, &s, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_bind_text(s, 1, m->version, -1, SQLITE_STATIC);
    if (src == SQLITE_OK)
        src = sqlite3_bind_int64(s, 2, sq_now_ms());
    if (src == SQLITE_OK) {
        src = sqlite3_step(s);
        if (src == SQLITE_DONE)
            src = SQLITE_OK;
    }
    enum iot_err rc = src == SQLITE_OK ? IOT_OK : sq_fail(err, db, src, what);
    sqlite3_finalize(s);
    return rc;
}

enum iot_err sq_migrate(struct store *base, enum store_migrate_mode mode, struct iot_error *err)
{
    struct sq_store *st = (struct sq_store *)base;
    const char *target_text = sq_migrations[SQ_MIGRATIONS_COUNT - 1].version;
    struct sq_version target;
    if (strcmp(target_text, STORE_SCHEMA_VERSION) != 0 || !sq_version_parse(target_text, &target))
        return iot_error_set(err, IOT_ERR_INTERNAL,
                             "failed to apply migrations: migration table does not end at %s",
                             STORE_SCHEMA_VERSION);
    struct sq_conn *c = NULL;
    enum iot_err rc = sq_conn_acquire(st, &c, err);
    if (rc != IOT_OK)
        return rc;
    rc = sq_tx_begin(st, c, err);
    if (rc != IOT_OK)
        goto out_release;
    int src = sqlite3_exec(c->db,
                           "CREATE TABLE IF NOT EXISTS schema_migrations ("
                           "  version TEXT PRIMARY KEY,"
                           "  applied_at INTEGER NOT NULL)",
                           NULL, NULL, NULL);
    if (src != SQLITE_OK) {
        rc = sq_fail(err, c->db, src, "failed to apply migrations: creating schema_migrations");
        goto out_rollback;
    }
    struct sq_version cur;
    char cur_text[64];
    rc = sq_current_version(c->db, &cur, cur_text, sizeof cur_text, err);
    if (rc != IOT_OK)
        goto out_rollback;
    if (sq_version_cmp(&cur, &target) >= 0) {
        /* Up to date, or written by a newer binary whose schema is a superset of ours. */
        rc = sq_tx_commit(st, c, err);
        goto out_release;
    }
    if (mode == STORE_MIGRATE_CHECK) {
        bool empty = false;
        rc = sq_database_is_empty(c->db, &empty, err);
        if (rc != IOT_OK)
            goto out_rollback;
        if (!empty) {
            rc = iot_error_set(err, IOT_ERR_NEEDS_MIGRATION,
                               "failed to apply migrations: db needs migration: %s has version "
                               "%s, needs version %s",
                               st->path, cur_text, STORE_SCHEMA_VERSION);
            goto out_rollback;
        }
    }
    for (size_t i = 0; i < SQ_MIGRATIONS_COUNT; i++) {
        struct sq_version v;
        if (!sq_version_parse(sq_migrations[i].version, &v)) {
            rc = iot_error_set(err, IOT_ERR_INTERNAL,
                               "failed to apply migrations: malformed version %s",
                               sq_migrations[i].version);
            goto out_rollback;
        }
        if (sq_version_cmp(&v, &cur) <= 0)
            continue;
        rc = sq_apply_one(c->db, &sq_migrations[i], err);
        if (rc != IOT_OK)
            goto out_rollback;
    }
    rc = sq_tx_commit(st, c, err);
    goto out_release;
out_rollback:
    sq_tx_rollback(st, c);
out_release:
    sq_conn_release(st, c);
    return rc;
}
