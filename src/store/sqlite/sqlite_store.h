/* Private to the SQLite store adapter: the connection pool, the prepared-statement cache, error
 * mapping and the credentials codec shared by its source files. The schema is described at the
 * top of sqlite_store.c. */
#ifndef IOTM_STORE_SQLITE_STORE_H
#define IOTM_STORE_SQLITE_STORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <sqlite3.h>

#include "iot-manager/error.h"
#include "iot-manager/model.h"
#include "iot-manager/store.h"

/* Statements every connection prepares on first use and keeps. */
enum sq_stmt_id {
    SQ_STMT_PING = 0,
    SQ_STMT_BEGIN_IMMEDIATE,
    SQ_STMT_COMMIT,
    SQ_STMT_ROLLBACK,
    SQ_STMT_INTEGRATIONS_LIST,
    SQ_STMT_INTEGRATION_GET,
    SQ_STMT_INTEGRATION_INSERT,
    SQ_STMT_INTEGRATION_SET_CREDENTIALS,
    SQ_STMT_INTEGRATION_DELETE,
    SQ_STMT_INTEGRATIONS_ALL,
    SQ_STMT_DEVICES_COUNT_LINKED,
    SQ_STMT_TENANT_DELETE_LINKS,
    SQ_STMT_TENANT_DELETE_DEVICES,
    SQ_STMT_TENANT_DELETE_INTEGRATIONS,
    SQ_STMT_TENANT_DELETE_EVENTS,
    SQ_STMT_EVENTS_EXPIRE,
    SQ_STMT_DEVICE_GET,
    SQ_STMT_DEVICE_INTEGRATION_GET,
    SQ_STMT_DEVICE_INSERT,
    SQ_STMT_DEVICE_LINK,
    SQ_STMT_DEVICE_UNLINK,
    SQ_STMT_DEVICE_DELETE_LINKS,
    SQ_STMT_DEVICE_DELETE,
    SQ_STMT_DEVICES_PAGE_FIRST,
    SQ_STMT_DEVICES_PAGE_AFTER,
    SQ_STMT_INTEGRATION_UNLINK_ALL,
    SQ_STMT_EVENT_INSERT,
    SQ_STMT_EVENTS_LIST,
    SQ_STMT__COUNT
};

/* One database connection; used by one thread at a time (checked out of the pool). */
struct sq_conn {
    sqlite3 *db;
    sqlite3_stmt *stmts[SQ_STMT__COUNT];
    struct sq_conn *next; /* idle list link */
};

/* Upper bound of open connections: WAL lets readers run in parallel, so a few more connections
 * than request threads is plenty; callers beyond that wait for a connection to come back. */
#define SQ_POOL_MAX                8
#define SQ_DEFAULT_BUSY_TIMEOUT_MS 5000

struct sq_store {
    struct store base; /* first: the port casts between the two */
    char *path;        /* owned */
    int busy_timeout_ms;
    pthread_mutex_t pool_mu; /* guards idle and open_count */
    pthread_cond_t pool_cv;  /* signalled when a connection comes back or a slot frees up */
    struct sq_conn *idle;
    unsigned open_count;
    /* Serialises this process's writers, so they queue on a mutex instead of SQLite's sleeping
     * busy handler; busy_timeout still covers other processes sharing the file. */
    pthread_mutex_t write_mu;
};

/* Checks a connection out (opening one when none is idle and the pool is not full, waiting
 * otherwise). The caller gives it back with sq_conn_release(). */
enum iot_err sq_conn_acquire(struct sq_store *st, struct sq_conn **out, struct iot_error *err);
/* Returns a connection to the pool; one left inside a transaction is rolled back, or closed if
 * that fails. */
void sq_conn_release(struct sq_store *st, struct sq_conn *c);
/* Opens one connection with the adapter's pragmas (WAL, foreign keys, busy timeout). */
enum iot_err sq_conn_open(const struct sq_store *st, struct sq_conn **out, struct iot_error *err);
/* Finalises the cached statements and closes the connection. NULL-safe. */
void sq_conn_close(struct sq_conn *c);

/* The cached statement `id` of `c`, reset and without bindings; borrowed (owned by `c`).
 * Finish with sq_stmt_done() so that no read transaction stays open. */
enum iot_err sq_stmt(struct sq_conn *c, enum sq_stmt_id id, sqlite3_stmt **out,
                     struct iot_error *err);
void sq_stmt_done(sqlite3_stmt *s);

/* Checks a connection out with its cached statement `id` ready (sq_conn_acquire + sq_stmt); on
 * failure nothing is held and both are NULL. Give both back with sq_checkin(), which finishes the
 * statement and releases the connection (NULL-safe, so one cleanup path serves every exit). */
enum iot_err sq_checkout(struct sq_store *st, enum sq_stmt_id id, struct sq_conn **c,
                         sqlite3_stmt **s, struct iot_error *err);
void sq_checkin(struct sq_store *st, struct sq_conn *c, sqlite3_stmt *s);

/* Binds that chain: each does nothing and returns `src` unless it is SQLITE_OK, so a statement's
 * parameters are bound one after the other and the result checked once. Values are borrowed
 * until sq_stmt_done(). sq_bind_text binds NULL for a NULL `text`; sq_bind_uuid binds the 16 raw
 * bytes. */
int sq_bind_text(sqlite3_stmt *s, int src, int i, const char *text);
int sq_bind_uuid(sqlite3_stmt *s, int src, int i, const struct uuid *id);
int sq_bind_int64(sqlite3_stmt *s, int src, int i, int64_t v);

/* Steps a write statement under the process's write lock; *changed (may be NULL) gets the rows
 * it changed. Returns sqlite3_step's result. */
int sq_step_write(struct sq_store *st, struct sq_conn *c, sqlite3_stmt *s, int64_t *changed);

/* Maps the SQLite result `rc` (with the connection's message) to the service's codes:
 * busy/locked/I/O/cannot-open/full/read-only -> IOT_ERR_UNAVAILABLE, out of memory ->
 * IOT_ERR_NOMEM, anything else -> IOT_ERR_INTERNAL. `what` says what was being done. */
enum iot_err sq_fail(struct iot_error *err, sqlite3 *db, int rc, const char *what);

/* Runs one cached statement that returns no rows (BEGIN, COMMIT, ...). */
enum iot_err sq_exec_stmt(struct sq_conn *c, enum sq_stmt_id id, const char *what,
                          struct iot_error *err);

/* Write transactions: takes write_mu and begins IMMEDIATE (so the write lock is taken up front
 * and a concurrent writer cannot make us fail half-way). sq_tx_commit() commits (rolling back if
 * the commit fails) and sq_tx_rollback() rolls back; both release write_mu. */
enum iot_err sq_tx_begin(struct sq_store *st, struct sq_conn *c, struct iot_error *err);
enum iot_err sq_tx_commit(struct sq_store *st, struct sq_conn *c, struct iot_error *err);
void sq_tx_rollback(struct sq_store *st, struct sq_conn *c);

/* The migrate op (sqlite_migrate.c). */
enum iot_err sq_migrate(struct store *base, enum store_migrate_mode mode, struct iot_error *err);

/* Device records and the event log (sqlite_records.c); see store_ops for the meaning. */
enum iot_err sq_device_get(struct store *base, const char *tenant, const char *device_id,
                           struct device_record *out, struct iot_error *err);
enum iot_err sq_device_integration_get(struct store *base, const char *tenant,
                                       const char *device_id, const struct uuid *integration_id,
                                       struct integration *out, struct iot_error *err);
/* Fills `out` from a row whose columns are id, tenant_id, provider, description, credentials
 * (the integration statements' column list); `out` caller-owned, cleared on failure. */
enum iot_err sq_row_integration(sqlite3_stmt *s, struct integration *out, struct iot_error *err);
/* Steps `s` once for an integration row: the row into `out`, NOT_FOUND "integration not found"
 * when there is none, or the SQLite error reported as `what`. */
enum iot_err sq_step_integration(sqlite3 *db, sqlite3_stmt *s, struct integration *out,
                                 const char *what, struct iot_error *err);
enum iot_err sq_device_link(struct store *base, const char *tenant, const char *device_id,
                            const struct uuid *integration_id, struct iot_error *err);
enum iot_err sq_device_unlink(struct store *base, const char *tenant, const char *device_id,
                              const struct uuid *integration_id, struct iot_error *err);
enum iot_err sq_device_delete(struct store *base, const char *tenant, const char *device_id,
                              struct iot_error *err);
enum iot_err sq_devices_page(struct store *base, const char *after_tenant, const char *after_id,
                             size_t limit, struct device_list *out, struct iot_error *err);
/* Runs statements `ids` in order inside one write transaction, each with ?1 tenant, then the
 * device id (when not NULL), then the integration id (when not NULL and the statement takes one);
 * *changed (may be NULL) gets the rows the last one changed. `what` names it in messages. */
enum iot_err sq_write_tx(struct sq_store *st, const enum sq_stmt_id *ids, size_t n,
                         const char *tenant, const char *device_id,
                         const struct uuid *integration_id, int64_t *changed, const char *what,
                         struct iot_error *err);
enum iot_err sq_integration_unlink_all(struct store *base, const char *tenant,
                                       const struct uuid *integration_id, struct iot_error *err);
enum iot_err sq_event_insert(struct store *base, const struct event_record *ev,
                             struct iot_error *err);
enum iot_err sq_events_list(struct store *base, const char *tenant,
                            const struct uuid *integration_id, int64_t skip, int64_t limit,
                            struct event_list *out, struct iot_error *err);

/* Credentials <-> the JSON text of the `credentials` column (sqlite_creds.c).
 * Encode: *out is a malloc'd NUL-terminated string owned by the caller; every secret must be
 * SECRET_SEALED or SECRET_EMPTY (IOT_ERR_INTERNAL otherwise: plaintext is never written).
 * Decode: fills *out (caller-owned, credentials_clear()); secrets come back SECRET_SEALED exactly
 * as stored; malformed text -> IOT_ERR_INTERNAL. */
enum iot_err sq_credentials_encode(const struct credentials *c, char **out, struct iot_error *err);
enum iot_err sq_credentials_decode(const char *text, struct credentials *out,
                                   struct iot_error *err);

#endif
