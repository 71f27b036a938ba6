/* Device records (`devices`) and the event log (`log`) of the MongoDB store, written the way
 * Mender's iot-manager writes them (contract §2.2, §2.3; codec in mongo_records_bson.c).
 *
 * Only single-document writes are used, as Mender does. Device ids are the documents' `_id`,
 * so they are unique across tenants: a device id that another tenant already holds cannot be
 * linked (IOT_ERR_CONFLICT), exactly as Mender's upsert fails there. */
#include <stdlib.h>
#include <string.h>

#include "store/mongo/mongo_internal.h"
#include "store/store_internal.h"

static struct mongo_store *mongo_of(struct store *st)
{
    return (struct mongo_store *)st;
}

static int64_t reply_count(const bson_t *reply, const char *key)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, reply, key) && BSON_ITER_HOLDS_NUMBER(&it))
        return bson_iter_as_int64(&it);
    return 0;
}

static enum iot_err build_failed(struct iot_error *err)
{
    return iot_error_set(err, IOT_ERR_INTERNAL, "store: cannot build query");
}

/* ---- per-device write lock (see struct mongo_store) ---- */

static pthread_mutex_t *device_lock(struct mongo_store *ms, const char *device_id)
{
    /* FNV-1a */
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)device_id; *p; p++)
        h = (h ^ *p) * 16777619u;
    return &ms->device_mu[h % MONGO_DEVICE_LOCKS];
}

static void lock_all_devices(struct mongo_store *ms)
{
    for (size_t i = 0; i < MONGO_DEVICE_LOCKS; i++)
        pthread_mutex_lock(&ms->device_mu[i]);
}

static void unlock_all_devices(struct mongo_store *ms)
{
    for (size_t i = MONGO_DEVICE_LOCKS; i-- > 0;)
        pthread_mutex_unlock(&ms->device_mu[i]);
}

/* ---- shared helpers ---- */

static enum iot_err check_device_args(const char *tenant, const char *device_id,
                                      struct iot_error *err)
{
    if (!tenant)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: missing tenant");
    if (!device_id)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: missing device id");
    return IOT_OK;
}

/* key: [BinData(4, u), BinData(3, u)], the operand of $pullAll. */
static bool append_uuid_list(bson_t *doc, const char *key, const struct uuid *u)
{
    bson_t list;
    bool ok = BSON_APPEND_ARRAY_BEGIN(doc, key, &list);
    ok = ok && BSON_APPEND_BINARY(&list, "0", BSON_SUBTYPE_UUID, u->b, sizeof u->b);
    ok = ok && BSON_APPEND_BINARY(&list, "1", BSON_SUBTYPE_UUID_DEPRECATED, u->b, sizeof u->b);
    return bson_append_array_end(doc, &list) && ok;
}

/* {$pullAll: {integration_ids: [BinData(4, u), BinData(3, u)]}}: equality with a literal, which
 * FerretDB supports (a conditional $pull it silently ignores), and it also removes an id written
 * in the legacy subtype. */
static bool build_pull(bson_t *update, const struct uuid *u)
{
    bson_t pull;
    bool ok = BSON_APPEND_DOCUMENT_BEGIN(update, "$pullAll", &pull);
    ok = ok && append_uuid_list(&pull, "integration_ids", u);
    return bson_append_document_end(update, &pull) && ok;
}

/* Collection `name` on a client popped from the pool; *client receives that client. Give both
 * back with coll_give(). */
static mongoc_collection_t *coll_take(struct mongo_store *ms, const char *name,
                                      mongoc_client_t **client)
{
    *client = mongoc_client_pool_pop(ms->pool);
    return mongoc_client_get_collection(*client, ms->dbname, name);
}

static void coll_give(struct mongo_store *ms, mongoc_client_t *client, mongoc_collection_t *coll)
{
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(ms->pool, client);
}

enum iot_err mongo_find_each(struct mongo_store *ms, const char *coll_name, const bson_t *filter,
                             const bson_t *opts, mongo_push_fn push, void *ctx, const char *what,
                             struct iot_error *err)
{
    enum iot_err rc = IOT_OK;
    bson_error_t error;
    const bson_t *doc;
    mongoc_client_t *client;
    mongoc_collection_t *coll = coll_take(ms, coll_name, &client);
    mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(coll, filter, opts, NULL);
    while (rc == IOT_OK && mongoc_cursor_next(cursor, &doc))
        rc = push(doc, ctx, err);
    if (rc == IOT_OK && mongoc_cursor_error(cursor, &error))
        rc = mongo_error_set(err, &error, what);
    mongoc_cursor_destroy(cursor);
    coll_give(ms, client, coll);
    return rc;
}

/* One update on `devices`; *matched gets matchedCount. */
static bool devices_update(struct mongo_store *ms, const bson_t *filter, const bson_t *update,
                           const bson_t *opts, bool many, int64_t *matched, bson_error_t *error)
{
    bson_t reply;
    mongoc_client_t *client;
    mongoc_collection_t *coll = coll_take(ms, MONGO_COLL_DEVICES, &client);
    bool ok = many ? mongoc_collection_update_many(coll, filter, update, opts, &reply, error)
                   : mongoc_collection_update_one(coll, filter, update, opts, &reply, error);
    coll_give(ms, client, coll);
    *matched = ok ? reply_count(&reply, "matchedCount") + reply_count(&reply, "upsertedCount") : 0;
    bson_destroy(&reply);
    return ok;
}

/* Gathers the documents of a find into a growing array of `size`-byte items, each filled by
 * `decode`. The array (owned, `len` items filled) goes to the caller's list after the find,
 * even a failed one, whose clear frees it. */
struct item_sink {
    enum iot_err (*decode)(const bson_t *doc, void *item, struct iot_error *err);
    size_t size;
    void *items;
    size_t len, cap;
};

static enum iot_err push_item(const bson_t *doc, void *ctx, struct iot_error *err)
{
    struct item_sink *sink = ctx;
    char *items = store_grow(sink->items, &sink->cap, sink->len, sink->size);
    if (!items)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    sink->items = items;
    enum iot_err rc = sink->decode(doc, items + sink->len * sink->size, err);
    if (rc == IOT_OK)
        sink->len++;
    return rc;
}

/* ---- devices ---- */

static enum iot_err decode_device(const bson_t *doc, void *item, struct iot_error *err)
{
    return mongo_device_from_bson(doc, item, err);
}

enum iot_err mongo_device_get(struct store *st, const char *tenant, const char *device_id,
                              struct device_record *out, struct iot_error *err)
{
    struct item_sink sink = {.decode = decode_device, .size = sizeof *out};
    memset(out, 0, sizeof *out);
    enum iot_err rc = check_device_args(tenant, device_id, err);
    if (rc != IOT_OK)
        return rc;
    /* By _id alone, the tenant checked here: the device id is the document's _id, unique
     * across tenants, and FerretDB only looks up a filter of exactly {_id: <string>} by its
     * key; with the tenant in the filter it reads the whole collection. */
    bson_t *filter = BCON_NEW("_id", BCON_UTF8(device_id));
    bson_t *opts = BCON_NEW("limit", BCON_INT64(1));
    rc = mongo_find_each(mongo_of(st), MONGO_COLL_DEVICES, filter, opts, push_item, &sink,
                         "failed to fetch device", err);
    struct device_list list = {.items = sink.items, .len = sink.len};
    bool ours =
        list.len > 0 && list.items[0].tenant_id && strcmp(list.items[0].tenant_id, tenant) == 0;
    if (rc == IOT_OK && !ours)
        rc = iot_error_set(err, IOT_ERR_NOT_FOUND, "device not found");
    if (rc == IOT_OK) {
        *out = list.items[0];
        memset(&list.items[0], 0, sizeof list.items[0]);
    }
    device_list_clear(&list);
    bson_destroy(opts);
    bson_destroy(filter);
    return rc;
}

/* Applies `update` (borrowed; NULL: it could not be built) to the tenant's device under the
 * device's write lock; with `upsert` a missing device is created. */
static enum iot_err device_update_locked(struct mongo_store *ms, const char *tenant,
                                         const char *device_id, const bson_t *update, bool upsert,
                                         struct iot_error *err)
{
    enum iot_err rc = check_device_args(tenant, device_id, err);
    if (rc != IOT_OK)
        return rc;
    if (!update)
        return build_failed(err);
    bson_error_t error;
    bson_t *filter = BCON_NEW("_id", BCON_UTF8(device_id), "tenant_id", BCON_UTF8(tenant));
    bson_t *opts = upsert ? BCON_NEW("upsert", BCON_BOOL(true)) : NULL;
    pthread_mutex_t *mu = device_lock(ms, device_id);
    pthread_mutex_lock(mu);
    int64_t matched = 0;
    bool ok = devices_update(ms, filter, update, opts, false, &matched, &error);
    /* Two upserts of a new device race to insert it and the loser hits the unique _id
     * (11000; MongoDB does not retry it for a filter with more than _id, FerretDB never
     * does). The document exists by now: the same update without upsert finishes the job. */
    if (!ok && upsert && error.code == MONGO_CODE_DUPLICATE_KEY) {
        ok = devices_update(ms, filter, update, NULL, false, &matched, &error);
        if (ok && matched == 0)
            rc = iot_error_set(err, IOT_ERR_CONFLICT,
                               "device id is already registered to another tenant");
    }
    pthread_mutex_unlock(mu);
    if (!ok)
        rc = mongo_error_set(err, &error, "failed to update device");
    bson_destroy(opts);
    bson_destroy(filter);
    return rc;
}

enum iot_err mongo_device_link(struct store *st, const char *tenant, const char *device_id,
                               const struct uuid *integration_id, struct iot_error *err)
{
    bson_t update = BSON_INITIALIZER, add;
    bool ok = BSON_APPEND_DOCUMENT_BEGIN(&update, "$addToSet", &add);
    ok = ok && mongo_append_uuid(&add, "integration_ids", integration_id);
    ok = bson_append_document_end(&update, &add) && ok;
    enum iot_err rc =
        device_update_locked(mongo_of(st), tenant, device_id, ok ? &update : NULL, true, err);
    bson_destroy(&update);
    return rc;
}

enum iot_err mongo_device_unlink(struct store *st, const char *tenant, const char *device_id,
                                 const struct uuid *integration_id, struct iot_error *err)
{
    bson_t update = BSON_INITIALIZER;
    bool ok = build_pull(&update, integration_id);
    enum iot_err rc =
        device_update_locked(mongo_of(st), tenant, device_id, ok ? &update : NULL, false, err);
    bson_destroy(&update);
    return rc;
}

enum iot_err mongo_device_delete(struct store *st, const char *tenant, const char *device_id,
                                 struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    enum iot_err rc = check_device_args(tenant, device_id, err);
    if (rc != IOT_OK)
        return rc;
    bson_error_t error;
    bson_t reply;
    bson_t *filter = BCON_NEW("_id", BCON_UTF8(device_id), "tenant_id", BCON_UTF8(tenant));
    pthread_mutex_t *mu = device_lock(ms, device_id);
    pthread_mutex_lock(mu);
    mongoc_client_t *client;
    mongoc_collection_t *coll = coll_take(ms, MONGO_COLL_DEVICES, &client);
    bool ok = mongoc_collection_delete_one(coll, filter, NULL, &reply, &error);
    coll_give(ms, client, coll);
    pthread_mutex_unlock(mu);
    if (!ok)
        rc = mongo_error_set(err, &error, "failed to delete device");
    else if (reply_count(&reply, "deletedCount") == 0)
        rc = iot_error_set(err, IOT_ERR_NOT_FOUND, "device not found");
    bson_destroy(&reply);
    bson_destroy(filter);
    return rc;
}

enum iot_err mongo_devices_page(struct store *st, const char *after_tenant, const char *after_id,
                                size_t limit, struct device_list *out, struct iot_error *err)
{
    struct item_sink sink = {.decode = decode_device, .size = sizeof *out->items};
    out->items = NULL;
    out->len = 0;
    if (limit == 0)
        return IOT_OK;
    if (!after_tenant)
        after_tenant = "";
    if (!after_id)
        after_id = "";
    bson_t *filter = NULL;
    if (!after_tenant[0] && !after_id[0])
        filter = bson_new();
    else
        filter = BCON_NEW("$or", "[", "{", "tenant_id", "{", "$gt", BCON_UTF8(after_tenant), "}",
                          "}", "{", "tenant_id", BCON_UTF8(after_tenant), "_id", "{", "$gt",
                          BCON_UTF8(after_id), "}", "}", "]");
    bson_t *opts = BCON_NEW("sort", "{", "tenant_id", BCON_INT32(1), "_id", BCON_INT32(1), "}",
                            "limit", BCON_INT64(limit > INT64_MAX ? INT64_MAX : (int64_t)limit));
    enum iot_err rc = mongo_find_each(mongo_of(st), MONGO_COLL_DEVICES, filter, opts, push_item,
                                      &sink, "failed to fetch devices", err);
    out->items = sink.items;
    out->len = sink.len;
    if (rc != IOT_OK)
        device_list_clear(out);
    bson_destroy(opts);
    bson_destroy(filter);
    return rc;
}

enum iot_err mongo_integration_unlink_all(struct store *st, const char *tenant,
                                          const struct uuid *integration_id, struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    if (!tenant)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: missing tenant");
    enum iot_err rc = IOT_OK;
    bson_error_t error;
    bson_t filter = BSON_INITIALIZER;
    bson_t update = BSON_INITIALIZER;
    /* Only the devices that hold it: FerretDB rewrites every document an update matches. */
    if (!BSON_APPEND_UTF8(&filter, "tenant_id", tenant) ||
        !mongo_append_uuid_match(&filter, "integration_ids", integration_id) ||
        !build_pull(&update, integration_id)) {
        rc = build_failed(err);
        goto out;
    }
    lock_all_devices(ms);
    int64_t matched = 0;
    bool ok = devices_update(ms, &filter, &update, NULL, true, &matched, &error);
    unlock_all_devices(ms);
    if (!ok)
        rc = mongo_error_set(err, &error, "failed to update devices");
out:
    bson_destroy(&update);
    bson_destroy(&filter);
    return rc;
}

/* ---- log ---- */

enum iot_err mongo_event_insert(struct store *st, const struct event_record *ev,
                                struct iot_error *err)
{
    struct mongo_store *ms = mongo_of(st);
    if (!ev->tenant_id)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: missing tenant");
    bson_error_t error;
    bson_t reply;
    bson_t doc = BSON_INITIALIZER;
    enum iot_err rc = mongo_event_to_bson(ev, &doc, err);
    if (rc != IOT_OK)
        goto out;
    mongoc_client_t *client;
    mongoc_collection_t *coll = coll_take(ms, MONGO_COLL_LOG, &client);
    bool ok = mongoc_collection_insert_one(coll, &doc, NULL, &reply, &error);
    coll_give(ms, client, coll);
    bson_destroy(&reply);
    if (!ok && error.code == MONGO_CODE_DUPLICATE_KEY)
        rc = iot_error_set(err, IOT_ERR_CONFLICT, "event already exists");
    else if (!ok)
        rc = mongo_error_set(err, &error, "failed to save event");
out:
    bson_destroy(&doc);
    return rc;
}

static enum iot_err decode_event(const bson_t *doc, void *item, struct iot_error *err)
{
    return mongo_event_from_bson(doc, item, err);
}

enum iot_err mongo_events_list(struct store *st, const char *tenant,
                               const struct uuid *integration_id, int64_t skip, int64_t limit,
                               struct event_list *out, struct iot_error *err)
{
    struct item_sink sink = {.decode = decode_event, .size = sizeof *out->items};
    out->items = NULL;
    out->len = 0;
    if (!tenant)
        return iot_error_set(err, IOT_ERR_INTERNAL, "store: missing tenant");
    enum iot_err rc = IOT_OK;
    bson_t filter = BSON_INITIALIZER;
    bson_t *opts = BCON_NEW("sort", "{", "event_ts", BCON_INT32(-1), "_id", BCON_INT32(1), "}");
    bool ok = BSON_APPEND_UTF8(&filter, "tenant_id", tenant);
    if (integration_id)
        ok = ok && mongo_append_uuid_match(&filter, "status.integration_id", integration_id);
    if (skip > 0)
        ok = ok && BSON_APPEND_INT64(opts, "skip", skip);
    if (limit > 0)
        ok = ok && BSON_APPEND_INT64(opts, "limit", limit);
    if (!ok) {
        rc = build_failed(err);
        goto out;
    }
    rc = mongo_find_each(mongo_of(st), MONGO_COLL_LOG, &filter, opts, push_item, &sink,
                         "failed to fetch events", err);
    out->items = sink.items;
    out->len = sink.len;
out:
    if (rc != IOT_OK)
        event_list_clear(out);
    bson_destroy(opts);
    bson_destroy(&filter);
    return rc;
}
