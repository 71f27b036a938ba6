/* The embedded SQLite store: one database file, WAL mode, foreign keys on.
 *
 * Schema (version 1.2.0; stable: tests and later features rely on these names):
 *
 *   schema_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)
 *       one row per applied version ("1.0.0" ... "1.2.0"), applied_at in Unix ms.
 *   integrations (id BLOB PRIMARY KEY CHECK (length(id) = 16), tenant_id TEXT NOT NULL,
 *                 provider TEXT NOT NULL, description TEXT, credentials TEXT NOT NULL)
 *       id: the 16 raw UUID bytes; provider: "iot-hub" | "iot-core" | "webhook";
 *       description: NULL when empty; credentials: JSON with Mender's Mongo field names
 *       (see sqlite_creds.c), secrets sealed and base64-encoded.
 *       index integrations_tenant_provider_id (tenant_id, provider, id)       -- 1.0.0
 *       unique index integration_one_per_tenant (tenant_id)                  -- 1.2.0
 *       (the unique index is the column's UNIQUE rule: one integration per tenant)
 *   devices (tenant_id TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (tenant_id, id))
 *   device_integrations (tenant_id TEXT NOT NULL, device_id TEXT NOT NULL,
 *                        integration_id BLOB NOT NULL,
 *                        PRIMARY KEY (tenant_id, device_id, integration_id),
 *                        FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id)
 *                            ON DELETE CASCADE)
 *       index device_integrations_tenant_integration (tenant_id, integration_id)
 *   events (id BLOB PRIMARY KEY, tenant_id TEXT NOT NULL, type TEXT NOT NULL, data TEXT,
 *           event_ts INTEGER NOT NULL, expire_ts INTEGER NOT NULL, status TEXT)
 *       times in Unix ms; index events_tenant_event_ts (tenant_id, event_ts DESC)   -- 1.1.0
 *       index events_expire_ts (expire_ts)                                         -- 1.1.1
 *       data: JSON text of the event's data; status: JSON array of delivery statuses, NULL
 *       when none (both described in sqlite_records.c)
 *
 * Concurrency: a bounded pool of connections (sqlite_pool.c), so readers run in parallel under
 * WAL; writers of this process queue on a mutex and multi-statement writes run in IMMEDIATE
 * transactions, so no half-written state is ever visible or left behind.
 */
#include <stdlib.h>
#include <string.h>

#include "sqlite_store.h"
#include "store/store_internal.h"

static struct sq_store *sq_of(struct store *base)
{
    return (struct sq_store *)base;
}

static enum iot_err sq_check_tenant(const char *tenant, struct iot_error *err)
{
    if (!tenant)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: missing tenant");
    return IOT_OK;
}

static enum iot_err sq_ping(struct store *base, struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    struct sq_conn *c = NULL;
    enum iot_err rc = sq_conn_acquire(st, &c, err);
    if (rc != IOT_OK)
        return rc;
    rc = sq_exec_stmt(c, SQ_STMT_PING, "ping", err);
    sq_conn_release(st, c);
    return rc;
}

static char *sq_column_strdup(sqlite3_stmt *s, int col, bool *nomem)
{
    const char *text = (const char *)sqlite3_column_text(s, col);
    if (!text)
        return NULL;
    char *copy = strdup(text);
    if (!copy)
        *nomem = true;
    return copy;
}

/* Reads the current row (columns id, tenant_id, provider, description, credentials) into
 * *out (caller-owned; left zeroed on failure). */
enum iot_err sq_row_integration(sqlite3_stmt *s, struct integration *out, struct iot_error *err)
{
    memset(out, 0, sizeof *out);
    enum iot_err rc = IOT_OK;
    const void *id = sqlite3_column_blob(s, 0);
    if (!id || sqlite3_column_bytes(s, 0) != (int)sizeof out->id.b) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "database error: malformed integration id");
        goto out;
    }
    memcpy(out->id.b, id, sizeof out->id.b);
    const char *provider = (const char *)sqlite3_column_text(s, 2);
    if (!provider_parse(provider, &out->provider)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "database error: unknown integration provider");
        goto out;
    }
    bool nomem = false;
    out->tenant_id = sq_column_strdup(s, 1, &nomem);
    out->description = sq_column_strdup(s, 3, &nomem);
    if (nomem || !out->tenant_id) {
        rc = nomem ? iot_error_set(err, IOT_ERR_NOMEM, "out of memory")
                   : iot_error_set(err, IOT_ERR_INTERNAL, "database error: missing tenant_id");
        goto out;
    }
    if (out->description && !out->description[0]) {
        free(out->description);
        out->description = NULL;
    }
    rc = sq_credentials_decode((const char *)sqlite3_column_text(s, 4), &out->credentials, err);
out:
    if (rc != IOT_OK)
        integration_clear(out);
    return rc;
}

enum iot_err sq_step_integration(sqlite3 *db, sqlite3_stmt *s, struct integration *out,
                                 const char *what, struct iot_error *err)
{
    int src = sqlite3_step(s);
    if (src == SQLITE_ROW)
        return sq_row_integration(s, out, err);
    if (src == SQLITE_DONE)
        return iot_error_set(err, IOT_ERR_NOT_FOUND, "integration not found");
    return sq_fail(err, db, src, what);
}

/* Steps `s` to the end, appending every row to *list. */
static enum iot_err sq_collect(sqlite3 *db, sqlite3_stmt *s, struct integration_list *list,
                               const char *what, struct iot_error *err)
{
    size_t cap = 0;
    int src;
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {
        struct integration *items = store_grow(list->items, &cap, list->len, sizeof *items);
        if (!items)
            return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
        list->items = items;
        enum iot_err rc = sq_row_integration(s, &list->items[list->len], err);
        if (rc != IOT_OK)
            return rc;
        list->len++;
    }
    if (src != SQLITE_DONE)
        return sq_fail(err, db, src, what);
    return IOT_OK;
}

/* The start of a statement on one tenant's rows: checks the tenant, checks out statement `stmt`
 * and binds `tenant` as ?1 and, when `id` is not NULL, `id` as ?2 (both borrowed until
 * sq_checkin). On failure nothing is held; a bind failure is reported as a database error in
 * `what`. */
static enum iot_err sq_checkout_tenant(struct sq_store *st, enum sq_stmt_id stmt,
                                       const char *tenant, const struct uuid *id, const char *what,
                                       struct sq_conn **c, sqlite3_stmt **s, struct iot_error *err)
{
    enum iot_err rc = sq_check_tenant(tenant, err);
    if (rc != IOT_OK)
        return rc;
    if ((rc = sq_checkout(st, stmt, c, s, err)) != IOT_OK)
        return rc;
    int src = sq_bind_text(*s, SQLITE_OK, 1, tenant);
    if (id)
        src = sq_bind_uuid(*s, src, 2, id);
    if (src == SQLITE_OK)
        return IOT_OK;
    rc = sq_fail(err, (*c)->db, src, what);
    sq_checkin(st, *c, *s);
    *c = NULL;
    *s = NULL;
    return rc;
}

static enum iot_err sq_integrations_list(struct store *base, const char *tenant,
                                         struct integration_list *out, struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    out->items = NULL;
    out->len = 0;
    enum iot_err rc = sq_checkout_tenant(st, SQ_STMT_INTEGRATIONS_LIST, tenant, NULL,
                                         "listing integrations", &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    rc = sq_collect(c->db, s, out, "listing integrations", err);
    sq_checkin(st, c, s);
    if (rc != IOT_OK)
        integration_list_clear(out);
    return rc;
}

static enum iot_err sq_integration_get(struct store *base, const char *tenant,
                                       const struct uuid *id, struct integration *out,
                                       struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    memset(out, 0, sizeof *out);
    enum iot_err rc = sq_checkout_tenant(st, SQ_STMT_INTEGRATION_GET, tenant, id,
                                         "reading integration", &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    rc = sq_step_integration(c->db, s, out, "reading integration", err);
    sq_checkin(st, c, s);
    return rc;
}

static enum iot_err sq_integration_create(struct store *base, const struct integration *in,
                                          struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    enum iot_err rc = sq_check_tenant(in->tenant_id, err);
    if (rc != IOT_OK)
        return rc;
    if ((unsigned)in->provider >= PROVIDER__COUNT)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: unknown provider");
    char *creds = NULL;
    if ((rc = sq_credentials_encode(&in->credentials, &creds, err)) != IOT_OK)
        return rc;
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    if ((rc = sq_checkout(st, SQ_STMT_INTEGRATION_INSERT, &c, &s, err)) != IOT_OK)
        goto out;
    const char *description = in->description && in->description[0] ? in->description : NULL;
    int src = sq_bind_uuid(s, SQLITE_OK, 1, &in->id);
    src = sq_bind_text(s, src, 2, in->tenant_id);
    src = sq_bind_text(s, src, 3, provider_name(in->provider));
    src = sq_bind_text(s, src, 4, description);
    src = sq_bind_text(s, src, 5, creds);
    if (src == SQLITE_OK)
        src = sq_step_write(st, c, s, NULL);
    if (src == SQLITE_DONE)
        rc = IOT_OK;
    else if (src == SQLITE_CONSTRAINT_UNIQUE || src == SQLITE_CONSTRAINT_PRIMARYKEY)
        rc = iot_error_set(err, IOT_ERR_CONFLICT, "integration already exists");
    else
        rc = sq_fail(err, c->db, src, "creating integration");
out:
    sq_checkin(st, c, s);
    free(creds);
    return rc;
}

/* Runs a tenant+id write (?1 tenant, ?2 id, optional ?3 text) and reports NOT_FOUND when it
 * changed no row. */
static enum iot_err sq_write_by_id(struct store *base, enum sq_stmt_id id_stmt, const char *tenant,
                                   const struct uuid *id, const char *text, const char *what,
                                   struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    enum iot_err rc = sq_checkout_tenant(st, id_stmt, tenant, id, what, &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    int src = text ? sq_bind_text(s, SQLITE_OK, 3, text) : SQLITE_OK;
    int64_t changed = 0;
    if (src == SQLITE_OK)
        src = sq_step_write(st, c, s, &changed);
    if (src != SQLITE_DONE)
        rc = sq_fail(err, c->db, src, what);
    else if (changed == 0)
        rc = iot_error_set(err, IOT_ERR_NOT_FOUND, "integration not found");
    sq_checkin(st, c, s);
    return rc;
}

static enum iot_err sq_integration_set_credentials(struct store *base, const char *tenant,
                                                   const struct uuid *id,
                                                   const struct credentials *creds,
                                                   struct iot_error *err)
{
    char *text = NULL;
    enum iot_err rc = sq_credentials_encode(creds, &text, err);
    if (rc != IOT_OK)
        return rc;
    rc = sq_write_by_id(base, SQ_STMT_INTEGRATION_SET_CREDENTIALS, tenant, id, text,
                        "updating credentials", err);
    free(text);
    return rc;
}

static enum iot_err sq_integration_delete(struct store *base, const char *tenant,
                                          const struct uuid *id, struct iot_error *err)
{
    return sq_write_by_id(base, SQ_STMT_INTEGRATION_DELETE, tenant, id, NULL,
                          "deleting integration", err);
}

static enum iot_err sq_integrations_for_each(struct store *base,
                                             enum iot_err (*fn)(struct integration *in, void *ctx),
                                             void *ctx, struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    struct integration_list all = {0};
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    enum iot_err rc = sq_checkout(st, SQ_STMT_INTEGRATIONS_ALL, &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    rc = sq_collect(c->db, s, &all, "reading integrations", err);
    /* Give the connection back before calling out: `fn` may use the store itself. Each
     * integration stays ours; `fn` may modify it and it is cleared after the walk. */
    sq_checkin(st, c, s);
    for (size_t i = 0; rc == IOT_OK && i < all.len; i++)
        rc = fn(&all.items[i], ctx);
    integration_list_clear(&all);
    return rc;
}

static enum iot_err sq_devices_count_linked(struct store *base, const char *tenant,
                                            const struct uuid *integration_id, int64_t *count,
                                            struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    *count = 0;
    enum iot_err rc = sq_checkout_tenant(st, SQ_STMT_DEVICES_COUNT_LINKED, tenant, integration_id,
                                         "counting devices", &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    int src = sqlite3_step(s);
    if (src == SQLITE_ROW)
        *count = sqlite3_column_int64(s, 0);
    else
        rc = sq_fail(err, c->db, src, "counting devices");
    sq_checkin(st, c, s);
    return rc;
}

static enum iot_err sq_tenant_delete(struct store *base, const char *tenant, struct iot_error *err)
{
    /* Links first: they reference devices (the cascade would do it too, but explicitly is
     * independent of the foreign_keys pragma). */
    static const enum sq_stmt_id steps[] = {
        SQ_STMT_TENANT_DELETE_LINKS,
        SQ_STMT_TENANT_DELETE_DEVICES,
        SQ_STMT_TENANT_DELETE_INTEGRATIONS,
        SQ_STMT_TENANT_DELETE_EVENTS,
    };
    enum iot_err rc = sq_check_tenant(tenant, err);
    if (rc != IOT_OK)
        return rc;
    return sq_write_tx(sq_of(base), steps, sizeof steps / sizeof steps[0], tenant, NULL, NULL, NULL,
                       "deleting tenant data", err);
}

static enum iot_err sq_events_expire(struct store *base, int64_t now_ms, int64_t *removed,
                                     struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    *removed = 0;
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    enum iot_err rc = sq_checkout(st, SQ_STMT_EVENTS_EXPIRE, &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    int src = sq_bind_int64(s, SQLITE_OK, 1, now_ms);
    if (src == SQLITE_OK)
        src = sq_step_write(st, c, s, removed);
    if (src != SQLITE_DONE) {
        *removed = 0;
        rc = sq_fail(err, c->db, src, "expiring events");
    }
    sq_checkin(st, c, s);
    return rc;
}

static void sq_destroy(struct store *base)
{
    struct sq_store *st = sq_of(base);
    /* Callers stop using the store before destroying it, so every connection is idle. */
    while (st->idle) {
        struct sq_conn *c = st->idle;
        st->idle = c->next;
        sq_conn_close(c);
    }
    pthread_cond_destroy(&st->pool_cv);
    pthread_mutex_destroy(&st->pool_mu);
    pthread_mutex_destroy(&st->write_mu);
    free(st->path);
    free(st);
}

static const struct store_ops sq_ops = {
    .name = "sqlite",
    .ping = sq_ping,
    .migrate = sq_migrate,
    .integrations_list = sq_integrations_list,
    .integration_get = sq_integration_get,
    .integration_create = sq_integration_create,
    .integration_set_credentials = sq_integration_set_credentials,
    .integration_delete = sq_integration_delete,
    .integrations_for_each = sq_integrations_for_each,
    .devices_count_linked = sq_devices_count_linked,
    .tenant_delete = sq_tenant_delete,
    .events_expire = sq_events_expire,
    .device_get = sq_device_get,
    .device_integration_get = sq_device_integration_get,
    .device_link = sq_device_link,
    .device_unlink = sq_device_unlink,
    .device_delete = sq_device_delete,
    .devices_page = sq_devices_page,
    .integration_unlink_all = sq_integration_unlink_all,
    .event_insert = sq_event_insert,
    .events_list = sq_events_list,
    .destroy = sq_destroy,
};

enum iot_err store_sqlite_open(const struct store_sqlite_options *opts, struct store **out,
                               struct iot_error *err)
{
    *out = NULL;
    if (!opts || !opts->path || !opts->path[0])
        return iot_error_set(err, IOT_ERR_CONFIG, "sqlite store: database path is empty");
    struct sq_store *st = calloc(1, sizeof *st);
    if (!st)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    st->base.ops = &sq_ops;
    st->busy_timeout_ms =
        opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms : SQ_DEFAULT_BUSY_TIMEOUT_MS;
    st->path = strdup(opts->path);
    if (!st->path) {
        free(st);
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_init(&st->pool_mu, NULL);
    pthread_cond_init(&st->pool_cv, NULL);
    pthread_mutex_init(&st->write_mu, NULL);
    /* Open the first connection now: creates the file, switches it to WAL, and turns a bad
     * path into a start-up error instead of a failure on the first request. */
    struct sq_conn *c = NULL;
    enum iot_err rc = sq_conn_acquire(st, &c, err);
    if (rc != IOT_OK) {
        sq_destroy(&st->base);
        return rc;
    }
    sq_conn_release(st, c);
    *out = &st->base;
    return IOT_OK;
}
