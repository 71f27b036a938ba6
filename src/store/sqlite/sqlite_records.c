/* Device records and the event log of the SQLite store (tables `devices`,
 * `device_integrations` and `events`, see sqlite_store.c).
 *
 * A device record is its `devices` row plus one `device_integrations` row per linked
 * integration, read back in the order the links were made (rowid), as Mender's $addToSet keeps
 * them. An event's `data` is JSON text, its time fields in canonical form (store_internal.h), and
 * its `status` is a JSON array with the field names of Mender's `log` documents:
 *   [{"integration_id": "<uuid>", "success": true, "err": "..." (omitted when none),
 *     "status": 502 (omitted when 0)}]
 * NULL when the event has no delivery status.
 */
#include <stdlib.h>
#include <string.h>

#include "sqlite_store.h"
#include "store/store_internal.h"

static struct sq_store *sq_of(struct store *base)
{
    return (struct sq_store *)base;
}

static enum iot_err sq_check_args(const char *tenant, const char *device_id, struct iot_error *err)
{
    if (!tenant)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: missing tenant");
    if (!device_id)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: missing device id");
    return IOT_OK;
}

static enum iot_err sq_nomem(struct iot_error *err)
{
    return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
}

/* ---- device records ---- */

/* Steps `s` (columns tenant_id, id, integration_id or NULL; rows of one record adjacent) to the
 * end, appending one record per (tenant_id, id) to *list. */
static enum iot_err sq_collect_devices(sqlite3 *db, sqlite3_stmt *s, struct device_list *list,
                                       const char *what, struct iot_error *err)
{
    size_t cap = 0, links_cap = 0;
    int src;
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {
        const char *tenant = (const char *)sqlite3_column_text(s, 0);
        const char *id = (const char *)sqlite3_column_text(s, 1);
        if (!tenant || !id)
            return iot_error_set(err, IOT_ERR_INTERNAL, "database error: malformed device row");
        struct device_record *cur = list->len ? &list->items[list->len - 1] : NULL;
        if (!cur || strcmp(cur->tenant_id, tenant) != 0 || strcmp(cur->id, id) != 0) {
            struct device_record *items = store_grow(list->items, &cap, list->len, sizeof *items);
            if (!items)
                return sq_nomem(err);
            list->items = items;
            cur = &list->items[list->len++];
            memset(cur, 0, sizeof *cur);
            links_cap = 0;
            cur->tenant_id = strdup(tenant);
            cur->id = strdup(id);
            if (!cur->tenant_id || !cur->id)
                return sq_nomem(err);
        }
        if (sqlite3_column_type(s, 2) == SQLITE_NULL)
            continue;
        const void *link = sqlite3_column_blob(s, 2);
        if (!link || sqlite3_column_bytes(s, 2) != (int)sizeof(struct uuid))
            return iot_error_set(err, IOT_ERR_INTERNAL,
                                 "database error: malformed device integration id");
        struct uuid *links =
            store_grow(cur->integration_ids, &links_cap, cur->n_integrations, sizeof *links);
        if (!links)
            return sq_nomem(err);
        cur->integration_ids = links;
        memcpy(cur->integration_ids[cur->n_integrations++].b, link, sizeof(struct uuid));
    }
    if (src != SQLITE_DONE)
        return sq_fail(err, db, src, what);
    return IOT_OK;
}

/* Binds ?1 tenant, ?2 device id (when not NULL) and the integration id as the next parameter
 * (when not NULL and the statement has one); all borrowed until sq_stmt_done. */
static int sq_bind_device(sqlite3_stmt *s, const char *tenant, const char *device_id,
                          const struct uuid *integration_id)
{
    int next = 1;
    int src = sq_bind_text(s, SQLITE_OK, next++, tenant);
    if (device_id)
        src = sq_bind_text(s, src, next++, device_id);
    if (integration_id && next <= sqlite3_bind_parameter_count(s))
        src = sq_bind_uuid(s, src, next, integration_id);
    return src;
}

/* Checks out `id` with ?1 tenant, ?2 device id and ?3 integration id (when not NULL) bound;
 * *c and *s go back with sq_checkin, which the caller owes only on success. */
static enum iot_err sq_checkout_device(struct sq_store *st, enum sq_stmt_id id, const char *tenant,
                                       const char *device_id, const struct uuid *integration_id,
                                       const char *what, struct sq_conn **c, sqlite3_stmt **s,
                                       struct iot_error *err)
{
    enum iot_err rc = sq_check_args(tenant, device_id, err);
    if (rc != IOT_OK || (rc = sq_checkout(st, id, c, s, err)) != IOT_OK)
        return rc;
    int src = sq_bind_device(*s, tenant, device_id, integration_id);
    if (src == SQLITE_OK)
        return IOT_OK;
    rc = sq_fail(err, (*c)->db, src, what);
    sq_checkin(st, *c, *s);
    return rc;
}

enum iot_err sq_device_get(struct store *base, const char *tenant, const char *device_id,
                           struct device_record *out, struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    struct device_list list = {0};
    memset(out, 0, sizeof *out);
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    enum iot_err rc = sq_checkout_device(st, SQ_STMT_DEVICE_GET, tenant, device_id, NULL,
                                         "reading device", &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    /* one statement: the record and its links come from one snapshot */
    rc = sq_collect_devices(c->db, s, &list, "reading device", err);
    sq_checkin(st, c, s);
    if (rc == IOT_OK && list.len == 0)
        rc = iot_error_set(err, IOT_ERR_NOT_FOUND, "device not found");
    if (rc == IOT_OK) {
        *out = list.items[0];
        memset(&list.items[0], 0, sizeof list.items[0]);
    }
    device_list_clear(&list);
    return rc;
}

enum iot_err sq_device_integration_get(struct store *base, const char *tenant,
                                       const char *device_id, const struct uuid *integration_id,
                                       struct integration *out, struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    memset(out, 0, sizeof *out);
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    const char *what = "reading the device's integration";
    enum iot_err rc = sq_checkout_device(st, SQ_STMT_DEVICE_INTEGRATION_GET, tenant, device_id,
                                         integration_id, what, &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    rc = sq_step_integration(c->db, s, out, what, err);
    sq_checkin(st, c, s);
    return rc;
}

enum iot_err sq_write_tx(struct sq_store *st, const enum sq_stmt_id *ids, size_t n,
                         const char *tenant, const char *device_id,
                         const struct uuid *integration_id, int64_t *changed, const char *what,
                         struct iot_error *err)
{
    struct sq_conn *c = NULL;
    if (changed)
        *changed = 0;
    enum iot_err rc = sq_conn_acquire(st, &c, err);
    if (rc != IOT_OK)
        return rc;
    if ((rc = sq_tx_begin(st, c, err)) != IOT_OK)
        goto out;
    for (size_t i = 0; rc == IOT_OK && i < n; i++) {
        sqlite3_stmt *s = NULL;
        if ((rc = sq_stmt(c, ids[i], &s, err)) != IOT_OK)
            break;
        int src = sq_bind_device(s, tenant, device_id, integration_id);
        if (src == SQLITE_OK)
            src = sqlite3_step(s);
        if (src != SQLITE_DONE)
            rc = sq_fail(err, c->db, src, what);
        else if (changed)
            *changed = sqlite3_changes64(c->db);
        sq_stmt_done(s);
    }
    if (rc == IOT_OK)
        rc = sq_tx_commit(st, c, err);
    else
        sq_tx_rollback(st, c);
out:
    sq_conn_release(st, c);
    return rc;
}

enum iot_err sq_device_link(struct store *base, const char *tenant, const char *device_id,
                            const struct uuid *integration_id, struct iot_error *err)
{
    static const enum sq_stmt_id steps[] = {SQ_STMT_DEVICE_INSERT, SQ_STMT_DEVICE_LINK};
    enum iot_err rc = sq_check_args(tenant, device_id, err);
    if (rc != IOT_OK)
        return rc;
    return sq_write_tx(sq_of(base), steps, 2, tenant, device_id, integration_id, NULL,
                       "linking device", err);
}

enum iot_err sq_device_unlink(struct store *base, const char *tenant, const char *device_id,
                              const struct uuid *integration_id, struct iot_error *err)
{
    static const enum sq_stmt_id steps[] = {SQ_STMT_DEVICE_UNLINK};
    enum iot_err rc = sq_check_args(tenant, device_id, err);
    if (rc != IOT_OK)
        return rc;
    return sq_write_tx(sq_of(base), steps, 1, tenant, device_id, integration_id, NULL,
                       "unlinking device", err);
}

enum iot_err sq_device_delete(struct store *base, const char *tenant, const char *device_id,
                              struct iot_error *err)
{
    /* Links first, so that the foreign key's cascade is not relied upon. */
    static const enum sq_stmt_id steps[] = {SQ_STMT_DEVICE_DELETE_LINKS, SQ_STMT_DEVICE_DELETE};
    int64_t changed;
    enum iot_err rc = sq_check_args(tenant, device_id, err);
    if (rc != IOT_OK)
        return rc;
    rc = sq_write_tx(sq_of(base), steps, 2, tenant, device_id, NULL, &changed, "deleting device",
                     err);
    if (rc == IOT_OK && changed == 0)
        rc = iot_error_set(err, IOT_ERR_NOT_FOUND, "device not found");
    return rc;
}

enum iot_err sq_integration_unlink_all(struct store *base, const char *tenant,
                                       const struct uuid *integration_id, struct iot_error *err)
{
    static const enum sq_stmt_id steps[] = {SQ_STMT_INTEGRATION_UNLINK_ALL};
    if (!tenant)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: missing tenant");
    return sq_write_tx(sq_of(base), steps, 1, tenant, NULL, integration_id, NULL,
                       "unlinking integration from devices", err);
}

enum iot_err sq_devices_page(struct store *base, const char *after_tenant, const char *after_id,
                             size_t limit, struct device_list *out, struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    out->items = NULL;
    out->len = 0;
    if (limit == 0)
        return IOT_OK;
    if (!after_tenant)
        after_tenant = "";
    if (!after_id)
        after_id = "";
    bool from_start = !after_tenant[0] && !after_id[0];
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    enum iot_err rc = sq_checkout(
        st, from_start ? SQ_STMT_DEVICES_PAGE_FIRST : SQ_STMT_DEVICES_PAGE_AFTER, &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    int src = SQLITE_OK;
    if (!from_start) {
        src = sq_bind_text(s, src, 1, after_tenant);
        src = sq_bind_text(s, src, 2, after_id);
    }
    src = sq_bind_int64(s, src, 3, limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
    if (src != SQLITE_OK)
        rc = sq_fail(err, c->db, src, "listing devices");
    else
        rc = sq_collect_devices(c->db, s, out, "listing devices", err);
    sq_checkin(st, c, s);
    if (rc != IOT_OK)
        device_list_clear(out);
    return rc;
}

/* ---- events ---- */

/* The `status` column's text of `ev` (malloc'd, caller-owned), or NULL in *out when it has no
 * delivery status. */
static enum iot_err sq_status_encode(const struct event_record *ev, char **out,
                                     struct iot_error *err)
{
    *out = NULL;
    if (ev->n_statuses == 0)
        return IOT_OK;
    json_t *arr = json_array();
    bool ok = arr != NULL;
    for (size_t i = 0; ok && i < ev->n_statuses; i++) {
        const struct delivery_status *ds = &ev->statuses[i];
        char id[UUID_STR_LEN + 1];
        uuid_format(&ds->integration_id, id);
        json_t *o = json_object();
        ok = o && json_array_append_new(arr, o) == 0;
        ok = ok && json_object_set_new(o, "integration_id", json_string(id)) == 0;
        ok = ok && json_object_set_new(o, "success", json_boolean(ds->success)) == 0;
        if (ok && ds->error && ds->error[0])
            ok = json_object_set_new(o, "err", json_string(ds->error)) == 0;
        if (ok && ds->status_code != 0)
            ok = json_object_set_new(o, "status", json_integer(ds->status_code)) == 0;
    }
    if (ok)
        *out = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return *out ? IOT_OK : sq_nomem(err);
}

static enum iot_err sq_status_decode(const char *text, struct event_record *ev,
                                     struct iot_error *err)
{
    if (!text)
        return IOT_OK;
    json_t *arr = json_loads(text, 0, NULL);
    enum iot_err rc = IOT_OK;
    if (!json_is_array(arr)) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "database error: malformed event status");
        goto out;
    }
    size_t n = json_array_size(arr);
    if (n == 0)
        goto out;
    ev->statuses = calloc(n, sizeof *ev->statuses);
    if (!ev->statuses) {
        rc = sq_nomem(err);
        goto out;
    }
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        struct delivery_status *ds = &ev->statuses[i];
        ev->n_statuses = i + 1;
        json_t *id = json_object_get(o, "integration_id");
        json_t *success = json_object_get(o, "success");
        json_t *msg = json_object_get(o, "err");
        json_t *code = json_object_get(o, "status");
        if (!json_is_object(o) || !json_is_string(id) ||
            uuid_parse(json_string_value(id), &ds->integration_id, NULL) != IOT_OK ||
            (success && !json_is_boolean(success)) || (msg && !json_is_string(msg)) ||
            (code && !json_is_integer(code))) {
            rc = iot_error_set(err, IOT_ERR_INTERNAL, "database error: malformed event status");
            goto out;
        }
        ds->success = json_is_true(success);
        if (code) {
            json_int_t v = json_integer_value(code);
            ds->status_code = v < INT32_MIN || v > INT32_MAX ? 0 : (int)v;
        }
        if (msg && json_string_value(msg)[0]) {
            ds->error = strdup(json_string_value(msg));
            if (!ds->error) {
                rc = sq_nomem(err);
                goto out;
            }
        }
    }
out:
    json_decref(arr);
    return rc;
}

enum iot_err sq_event_insert(struct store *base, const struct event_record *ev,
                             struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    if (!ev->tenant_id || !ev->type)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: incomplete event");
    char *data = NULL, *status = NULL;
    bool nomem = false;
    json_t *canonical = store_event_data_canonical(ev->data, &nomem);
    enum iot_err rc = IOT_OK;
    if (nomem) {
        rc = sq_nomem(err);
        goto out;
    }
    /* a JSON null is no data, as Mender's omitempty makes it on MongoDB */
    if (canonical && !json_is_null(canonical)) {
        data = json_dumps(canonical, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!data) {
            rc = sq_nomem(err);
            goto out;
        }
    }
    if ((rc = sq_status_encode(ev, &status, err)) != IOT_OK)
        goto out;

    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    if ((rc = sq_checkout(st, SQ_STMT_EVENT_INSERT, &c, &s, err)) != IOT_OK)
        goto out;
    int src = sq_bind_uuid(s, SQLITE_OK, 1, &ev->id);
    src = sq_bind_text(s, src, 2, ev->tenant_id);
    src = sq_bind_text(s, src, 3, ev->type);
    src = sq_bind_text(s, src, 4, data);
    src = sq_bind_int64(s, src, 5, ev->event_ts_ms);
    src = sq_bind_int64(s, src, 6, ev->expire_ts_ms);
    src = sq_bind_text(s, src, 7, status);
    if (src == SQLITE_OK)
        src = sq_step_write(st, c, s, NULL);
    if (src == SQLITE_CONSTRAINT_PRIMARYKEY || src == SQLITE_CONSTRAINT_UNIQUE)
        rc = iot_error_set(err, IOT_ERR_CONFLICT, "event already exists");
    else if (src != SQLITE_DONE)
        rc = sq_fail(err, c->db, src, "saving event");
    sq_checkin(st, c, s);
out:
    json_decref(canonical);
    free(data);
    free(status);
    return rc;
}

/* Reads the current row (columns id, tenant_id, type, data, event_ts, expire_ts, status) into
 * *out (zeroed by the caller; the caller clears it also on failure). */
static enum iot_err sq_row_event(sqlite3_stmt *s, struct event_record *out, struct iot_error *err)
{
    const void *id = sqlite3_column_blob(s, 0);
    const char *tenant = (const char *)sqlite3_column_text(s, 1);
    const char *type = (const char *)sqlite3_column_text(s, 2);
    if (!id || sqlite3_column_bytes(s, 0) != (int)sizeof out->id.b || !tenant || !type)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: malformed event row");
    memcpy(out->id.b, id, sizeof out->id.b);
    out->tenant_id = strdup(tenant);
    out->type = strdup(type);
    if (!out->tenant_id || !out->type)
        return sq_nomem(err);
    const char *data = (const char *)sqlite3_column_text(s, 3);
    if (data) {
        json_error_t jerr;
        out->data = json_loads(data, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (!out->data)
            return iot_error_set(err, IOT_ERR_INTERNAL, "database error: malformed event data");
    }
    out->event_ts_ms = sqlite3_column_int64(s, 4);
    out->expire_ts_ms = sqlite3_column_int64(s, 5);
    return sq_status_decode((const char *)sqlite3_column_text(s, 6), out, err);
}

enum iot_err sq_events_list(struct store *base, const char *tenant,
                            const struct uuid *integration_id, int64_t skip, int64_t limit,
                            struct event_list *out, struct iot_error *err)
{
    struct sq_store *st = sq_of(base);
    out->items = NULL;
    out->len = 0;
    if (!tenant)
        return iot_error_set(err, IOT_ERR_INTERNAL, "database error: missing tenant");
    char id_text[UUID_STR_LEN + 1];
    if (integration_id)
        uuid_format(integration_id, id_text);
    struct sq_conn *c = NULL;
    sqlite3_stmt *s = NULL;
    size_t cap = 0;
    enum iot_err rc = sq_checkout(st, SQ_STMT_EVENTS_LIST, &c, &s, err);
    if (rc != IOT_OK)
        return rc;
    int src = sq_bind_text(s, SQLITE_OK, 1, tenant);
    if (integration_id)
        src = sq_bind_text(s, src, 2, id_text);
    src = sq_bind_int64(s, src, 3, skip > 0 ? skip : 0);
    /* as MongoDB's: no limit when it is 0 */
    src = sq_bind_int64(s, src, 4, limit > 0 ? limit : -1);
    if (src != SQLITE_OK) {
        rc = sq_fail(err, c->db, src, "listing events");
        goto out;
    }
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {
        struct event_record *items = store_grow(out->items, &cap, out->len, sizeof *items);
        if (!items) {
            rc = sq_nomem(err);
            goto out;
        }
        out->items = items;
        struct event_record *ev = &out->items[out->len++];
        memset(ev, 0, sizeof *ev);
        if ((rc = sq_row_event(s, ev, err)) != IOT_OK)
            goto out;
    }
    if (src != SQLITE_DONE)
        rc = sq_fail(err, c->db, src, "listing events");
out:
    sq_checkin(st, c, s);
    if (rc != IOT_OK)
        event_list_clear(out);
    return rc;
}
