/* Connections of the SQLite adapter: opening with the adapter's pragmas, a bounded pool of
 * connections, per-connection prepared statements, error mapping and write transactions. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite_store.h"

/* Integration rows are always read with the same column list, see sq_row_integration(). */
#define SQ_INTEGRATION_COLUMNS "id, tenant_id, provider, description, credentials"

static const char *const sq_stmt_sql[SQ_STMT__COUNT] = {
    /* Reads the schema page, so a vanished or unreadable file shows up. */
    [SQ_STMT_PING] = "SELECT count(*) FROM sqlite_master",
    [SQ_STMT_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
    [SQ_STMT_COMMIT] = "COMMIT",
    [SQ_STMT_ROLLBACK] = "ROLLBACK",
    [SQ_STMT_INTEGRATIONS_LIST] = "SELECT " SQ_INTEGRATION_COLUMNS " FROM integrations"
                                  " WHERE tenant_id = ?1 ORDER BY provider, id",
    [SQ_STMT_INTEGRATION_GET] = "SELECT " SQ_INTEGRATION_COLUMNS " FROM integrations"
                                " WHERE tenant_id = ?1 AND id = ?2",
    [SQ_STMT_INTEGRATION_INSERT] = "INSERT INTO integrations (" SQ_INTEGRATION_COLUMNS ")"
                                   " VALUES (?1, ?2, ?3, ?4, ?5)",
    [SQ_STMT_INTEGRATION_SET_CREDENTIALS] = "UPDATE integrations SET credentials = ?3"
                                            " WHERE tenant_id = ?1 AND id = ?2",
    [SQ_STMT_INTEGRATION_DELETE] = "DELETE FROM integrations WHERE tenant_id = ?1 AND id = ?2",
    [SQ_STMT_INTEGRATIONS_ALL] = "SELECT " SQ_INTEGRATION_COLUMNS " FROM integrations"
                                 " ORDER BY tenant_id, provider, id",
    [SQ_STMT_DEVICES_COUNT_LINKED] = "SELECT count(*) FROM device_integrations"
                                     " WHERE tenant_id = ?1 AND integration_id = ?2",
    [SQ_STMT_TENANT_DELETE_LINKS] = "DELETE FROM device_integrations WHERE tenant_id = ?1",
    [SQ_STMT_TENANT_DELETE_DEVICES] = "DELETE FROM devices WHERE tenant_id = ?1",
    [SQ_STMT_TENANT_DELETE_INTEGRATIONS] = "DELETE FROM integrations WHERE tenant_id = ?1",
    [SQ_STMT_TENANT_DELETE_EVENTS] = "DELETE FROM events WHERE tenant_id = ?1",
    [SQ_STMT_EVENTS_EXPIRE] = "DELETE FROM events WHERE expire_ts < ?1",
    /* One row per link in link order (rowid: the order they were added, as $addToSet keeps
     * them), or one row with a NULL link for a record without any. */
    [SQ_STMT_DEVICE_GET] = "SELECT d.tenant_id, d.id, l.integration_id FROM devices d"
                           " LEFT JOIN device_integrations l"
                           "   ON l.tenant_id = d.tenant_id AND l.device_id = d.id"
                           " WHERE d.tenant_id = ?1 AND d.id = ?2 ORDER BY l.rowid",
    /* The link's primary key, then the integration's: no sort, no scan. */
    [SQ_STMT_DEVICE_INTEGRATION_GET] = "SELECT i.id, i.tenant_id, i.provider, i.description,"
                                       " i.credentials FROM device_integrations l"
                                       " JOIN integrations i ON i.id = l.integration_id"
                                       " WHERE l.tenant_id = ?1 AND l.device_id = ?2"
                                       "   AND l.integration_id = ?3 AND i.tenant_id = ?1",
    [SQ_STMT_DEVICE_INSERT] = "INSERT OR IGNORE INTO devices (tenant_id, id) VALUES (?1, ?2)",
    [SQ_STMT_DEVICE_LINK] = "INSERT OR IGNORE INTO device_integrations"
                            " (tenant_id, device_id, integration_id) VALUES (?1, ?2, ?3)",
    [SQ_STMT_DEVICE_UNLINK] = "DELETE FROM device_integrations"
                              " WHERE tenant_id = ?1 AND device_id = ?2 AND integration_id = ?3",
    [SQ_STMT_DEVICE_DELETE_LINKS] = "DELETE FROM device_integrations"
                                    " WHERE tenant_id = ?1 AND device_id = ?2",
    [SQ_STMT_DEVICE_DELETE] = "DELETE FROM devices WHERE tenant_id = ?1 AND id = ?2",
    /* Same shape as SQ_STMT_DEVICE_GET, for up to ?3 records from the given position on. */
    [SQ_STMT_DEVICES_PAGE_FIRST] = "SELECT d.tenant_id, d.id, l.integration_id FROM"
                                   " (SELECT tenant_id, id FROM devices"
                                   "  ORDER BY tenant_id, id LIMIT ?3) d"
                                   " LEFT JOIN device_integrations l"
                                   "   ON l.tenant_id = d.tenant_id AND l.device_id = d.id"
                                   " ORDER BY d.tenant_id, d.id, l.rowid",
    [SQ_STMT_DEVICES_PAGE_AFTER] = "SELECT d.tenant_id, d.id, l.integration_id FROM"
                                   " (SELECT tenant_id, id FROM devices"
                                   "  WHERE (tenant_id, id) > (?1, ?2)"
                                   "  ORDER BY tenant_id, id LIMIT ?3) d"
                                   " LEFT JOIN device_integrations l"
                                   "   ON l.tenant_id = d.tenant_id AND l.device_id = d.id"
                                   " ORDER BY d.tenant_id, d.id, l.rowid",
    [SQ_STMT_INTEGRATION_UNLINK_ALL] = "DELETE FROM device_integrations"
                                       " WHERE tenant_id = ?1 AND integration_id = ?2",
    [SQ_STMT_EVENT_INSERT] = "INSERT INTO events"
                             " (id, tenant_id, type, data, event_ts, expire_ts, status)"
                             " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    /* ?2: the integration id as canonical text, or NULL for every event. The tenant and the
     * order are served by events_tenant_event_ts; the filter reads only that tenant's rows. */
    [SQ_STMT_EVENTS_LIST] = "SELECT id, tenant_id, type, data, event_ts, expire_ts, status"
                            " FROM events WHERE tenant_id = ?1 AND (?2 IS NULL OR EXISTS"
                            "   (SELECT 1 FROM json_each(events.status) s"
                            "    WHERE json_extract(s.value, '$.integration_id') = ?2))"
                            " ORDER BY event_ts DESC, id LIMIT ?4 OFFSET ?3",
};

enum iot_err sq_fail(struct iot_error *err, sqlite3 *db, int rc, const char *what)
{
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return iot_error_set(err, IOT_ERR_UNAVAILABLE,
                             "database unavailable: %s: %s (another writer holds the lock)", what,
                             msg);
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_FULL:
    case SQLITE_READONLY:
    case SQLITE_PROTOCOL:
        return iot_error_set(err, IOT_ERR_UNAVAILABLE, "database unavailable: %s: %s", what, msg);
    case SQLITE_NOMEM:
        return iot_error_set(err, IOT_ERR_NOMEM, "database error: %s: out of memory", what);
    default:
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: %s: %s", what, msg);
    }
}

void sq_conn_close(struct sq_conn *c)
{
    if (!c)
        return;
    for (int i = 0; i < SQ_STMT__COUNT; i++)
        sqlite3_finalize(c->stmts[i]);
    sqlite3_close(c->db); /* all statements are finalised, so this cannot be left pending */
    free(c);
}

/* Runs a pragma and checks that it answers `expect` (journal_mode reports the mode it ended in,
 * which is not WAL for e.g. an in-memory database). */
static enum iot_err sq_pragma_expect(sqlite3 *db, const char *sql, const char *expect,
                                     struct iot_error *err)
{
    sqlite3_stmt *s = NULL;
    enum iot_err rc = IOT_OK;
    int src = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (src != SQLITE_OK) {
        rc = sq_fail(err, db, src, "opening database");
        goto out;
    }
    src = sqlite3_step(s);
    if (src != SQLITE_ROW) {
        rc = sq_fail(err, db, src, "opening database");
        goto out;
    }
    const char *got = (const char *)sqlite3_column_text(s, 0);
    if (!got || strcmp(got, expect) != 0) {
        rc = iot_error_set(err, IOT_ERR_IO, "database error: %s answered \"%s\", expected \"%s\"",
                           sql, got ? got : "", expect);
        goto out;
    }
out:
    sqlite3_finalize(s);
    return rc;
}

/* SQLite's allocation statistics take one process-wide mutex on every malloc and free, which
 * every request thread then queues on; we never read them. Has to run before SQLite
 * initialises, so before the first open; if another part of the process initialised SQLite
 * first the call fails harmlessly and the statistics stay on. */
static void sq_disable_memstatus(void)
{
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

enum iot_err sq_conn_open(const struct sq_store *st, struct sq_conn **out, struct iot_error *err)
{
    static pthread_once_t memstatus_once = PTHREAD_ONCE_INIT;
    pthread_once(&memstatus_once, sq_disable_memstatus);
    enum iot_err rc = IOT_OK;
    struct sq_conn *c = calloc(1, sizeof *c);
    if (!c)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    /* NOMUTEX: a pooled connection is only ever used by the thread that checked it out. */
    int src = sqlite3_open_v2(st->path, &c->db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                                  SQLITE_OPEN_EXRESCODE,
                              NULL);
    if (src != SQLITE_OK) {
        const char *msg = c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(src);
        rc = iot_error_set(err, IOT_ERR_UNAVAILABLE, "database unavailable: cannot open %s: %s",
                           st->path, msg);
        goto out;
    }
    sqlite3_busy_timeout(c->db, st->busy_timeout_ms);
    /* Durability: in WAL mode synchronous=NORMAL never corrupts the file and survives a crash
     * of this process; only a power loss or OS crash can lose the last commits (the WAL is
     * synced at checkpoints, not at each commit). Integrations are rewritten rarely and can be
     * re-entered, events are a best-effort log, so we trade that window for much cheaper
     * commits. */
    src = sqlite3_exec(c->db, "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;", NULL, NULL,
                       NULL);
    if (src != SQLITE_OK) {
        rc = sq_fail(err, c->db, src, "opening database");
        goto out;
    }
    /* WAL: readers never block on the writer, and the mode persists in the file. */
    rc = sq_pragma_expect(c->db, "PRAGMA journal_mode = WAL", "wal", err);
    if (rc != IOT_OK)
        goto out;
    rc = sq_pragma_expect(c->db, "PRAGMA foreign_keys", "1", err);
out:
    if (rc != IOT_OK) {
        sq_conn_close(c);
        c = NULL;
    }
    *out = c;
    return rc;
}

enum iot_err sq_conn_acquire(struct sq_store *st, struct sq_conn **out, struct iot_error *err)
{
    *out = NULL;
    pthread_mutex_lock(&st->pool_mu);
    while (!st->idle && st->open_count >= SQ_POOL_MAX)
        pthread_cond_wait(&st->pool_cv, &st->pool_mu);
    struct sq_conn *c = st->idle;
    if (c) {
        st->idle = c->next;
        c->next = NULL;
        pthread_mutex_unlock(&st->pool_mu);
        *out = c;
        return IOT_OK;
    }
    /* Reserve the slot, then open outside the lock: opening touches the file. */
    st->open_count++;
    pthread_mutex_unlock(&st->pool_mu);
    enum iot_err rc = sq_conn_open(st, &c, err);
    if (rc != IOT_OK) {
        pthread_mutex_lock(&st->pool_mu);
        st->open_count--;
        pthread_cond_signal(&st->pool_cv);
        pthread_mutex_unlock(&st->pool_mu);
        return rc;
    }
    *out = c;
    return IOT_OK;
}

void sq_conn_release(struct sq_store *st, struct sq_conn *c)
{
    if (!c)
        return;
    bool broken = false;
    if (!sqlite3_get_autocommit(c->db)) {
        /* Every path ends its transaction; this is the safety net for one that did not. */
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
        broken = !sqlite3_get_autocommit(c->db);
    }
    pthread_mutex_lock(&st->pool_mu);
    if (broken) {
        st->open_count--;
    } else {
        c->next = st->idle;
        st->idle = c;
    }
    pthread_cond_signal(&st->pool_cv);
    pthread_mutex_unlock(&st->pool_mu);
    if (broken)
        sq_conn_close(c);
}

enum iot_err sq_stmt(struct sq_conn *c, enum sq_stmt_id id, sqlite3_stmt **out,
                     struct iot_error *err)
{
    *out = NULL;
    if ((unsigned)id >= SQ_STMT__COUNT)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: unknown statement");
    if (!c->stmts[id]) {
        int src = sqlite3_prepare_v3(c->db, sq_stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                     &c->stmts[id], NULL);
        if (src != SQLITE_OK) {
            c->stmts[id] = NULL;
            return sq_fail(err, c->db, src, "preparing statement");
        }
    }
    *out = c->stmts[id];
    return IOT_OK;
}

void sq_stmt_done(sqlite3_stmt *s)
{
    if (!s)
        return;
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
}

enum iot_err sq_checkout(struct sq_store *st, enum sq_stmt_id id, struct sq_conn **c,
                         sqlite3_stmt **s, struct iot_error *err)
{
    *s = NULL;
    enum iot_err rc = sq_conn_acquire(st, c, err);
    if (rc != IOT_OK)
        return rc;
    rc = sq_stmt(*c, id, s, err);
    if (rc != IOT_OK) {
        sq_conn_release(st, *c);
        *c = NULL;
    }
    return rc;
}

void sq_checkin(struct sq_store *st, struct sq_conn *c, sqlite3_stmt *s)
{
    sq_stmt_done(s);
    sq_conn_release(st, c);
}

int sq_bind_text(sqlite3_stmt *s, int src, int i, const char *text)
{
    if (src != SQLITE_OK)
        return src;
    return text ? sqlite3_bind_text(s, i, text, -1, SQLITE_STATIC) : sqlite3_bind_null(s, i);
}

int sq_bind_uuid(sqlite3_stmt *s, int src, int i, const struct uuid *id)
{
    if (src != SQLITE_OK)
        return src;
    return sqlite3_bind_blob(s, i, id->b, (int)sizeof id->b, SQLITE_STATIC);
}

int sq_bind_int64(sqlite3_stmt *s, int src, int i, int64_t v)
{
    if (src != SQLITE_OK)
        return src;
    return sqlite3_bind_int64(s, i, v);
}

int sq_step_write(struct sq_store *st, struct sq_conn *c, sqlite3_stmt *s, int64_t *changed)
{
    pthread_mutex_lock(&st->write_mu);
    int src = sqlite3_step(s);
    if (changed)
        *changed = sqlite3_changes64(c->db);
    pthread_mutex_unlock(&st->write_mu);
    return src;
}

enum iot_err sq_exec_stmt(struct sq_conn *c, enum sq_stmt_id id, const char *what,
                          struct iot_error *err)
{
    sqlite3_stmt *s = NULL;
    enum iot_err rc = sq_stmt(c, id, &s, err);
    if (rc != IOT_OK)
        return rc;
    int src = sqlite3_step(s);
    if (src != SQLITE_DONE && src != SQLITE_ROW)
        rc = sq_fail(err, c->db, src, what);
    sq_stmt_done(s);
    return rc;
}

enum iot_err sq_tx_begin(struct sq_store *st, struct sq_conn *c, struct iot_error *err)
{
    pthread_mutex_lock(&st->write_mu);
    enum iot_err rc = sq_exec_stmt(c, SQ_STMT_BEGIN_IMMEDIATE, "beginning transaction", err);
    if (rc != IOT_OK)
        pthread_mutex_unlock(&st->write_mu);
    return rc;
}

enum iot_err sq_tx_commit(struct sq_store *st, struct sq_conn *c, struct iot_error *err)
{
    enum iot_err rc = sq_exec_stmt(c, SQ_STMT_COMMIT, "committing transaction", err);
    if (rc != IOT_OK && !sqlite3_get_autocommit(c->db))
        sq_exec_stmt(c, SQ_STMT_ROLLBACK, "rolling back", NULL);
    pthread_mutex_unlock(&st->write_mu);
    return rc;
}

void sq_tx_rollback(struct sq_store *st, struct sq_conn *c)
{
    if (!sqlite3_get_autocommit(c->db))
        sq_exec_stmt(c, SQ_STMT_ROLLBACK, "rolling back", NULL);
    pthread_mutex_unlock(&st->write_mu);
}
