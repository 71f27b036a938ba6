/* Private to the MongoDB store adapter: the adapter's state, its error mapping, the BSON codec
 * of Mender's documents and the migrations. */
#ifndef IOT_MANAGER_STORE_MONGO_INTERNAL_H
#define IOT_MANAGER_STORE_MONGO_INTERNAL_H

#include <pthread.h>

#include <mongoc/mongoc.h>

#include "iot-manager/model.h"
#include "iot-manager/store.h"

#define MONGO_COLL_INTEGRATIONS "integrations"
#define MONGO_COLL_DEVICES      "devices"
#define MONGO_COLL_LOG          "log"
#define MONGO_COLL_MIGRATIONS   "migration_info"

/* Server code of a duplicate key on insert (MongoDB and FerretDB alike). */
#define MONGO_CODE_DUPLICATE_KEY 11000
/* NotImplemented: FerretDB's answer to TTL index options. */
#define MONGO_CODE_NOT_IMPLEMENTED 238

/* Stripes of the per-device write lock (see struct mongo_store). */
#define MONGO_DEVICE_LOCKS 32

struct mongo_store {
    struct store base; /* first member: the port's handle */
    mongoc_client_pool_t *pool;
    char *dbname;
    /* Writes to one device document are serialised within the process: FerretDB applies an
     * update by reading the document and writing it back whole, so two concurrent $addToSet on
     * the same device lose one of the ids (MongoDB itself is atomic there). Striped by device
     * id so that different devices still proceed in parallel. */
    pthread_mutex_t device_mu[MONGO_DEVICE_LOCKS];
    bool device_mu_ready;
};

/* Maps a libmongoc error into `err`: no server / network / authentication failures become
 * IOT_ERR_UNAVAILABLE, everything else IOT_ERR_INTERNAL. `what` names the operation. */
enum iot_err mongo_error_set(struct iot_error *err, const bson_error_t *error, const char *what);

/* --- BSON codec (mongo_bson.c) --- */

/* Appends `u` as BinData subtype 4, the way Mender writes UUIDs. */
bool mongo_append_uuid(bson_t *doc, const char *key, const struct uuid *u);

/* Appends {key: {$in: [BinData(4, u), BinData(3, u)]}}: matches ids written by either UUID
 * representation. */
bool mongo_append_uuid_match(bson_t *doc, const char *key, const struct uuid *u);

/* Reads a UUID stored as BinData subtype 4, 3 or 0 of 16 bytes. */
bool mongo_iter_uuid(const bson_iter_t *it, struct uuid *out);

/* Appends the `credentials` sub-document of `c` under `key` into `parent`. Secrets must be
 * SECRET_SEALED (or SECRET_EMPTY: then omitted); anything else is IOT_ERR_INTERNAL. */
enum iot_err mongo_append_credentials(bson_t *parent, const char *key, const struct credentials *c,
                                      struct iot_error *err);

/* Builds the full integrations document of `in` into `doc` (initialised by the caller). */
enum iot_err mongo_integration_to_bson(const struct integration *in, bson_t *doc,
                                       struct iot_error *err);

/* Decodes an integrations document into `out` (zeroed by the caller; filled and owned by the
 * caller on success, left cleared on failure). */
enum iot_err mongo_integration_from_bson(const bson_t *doc, struct integration *out,
                                         struct iot_error *err);

/* --- device records and the event log (mongo_records.c); see store_ops for the meaning --- */

/* Takes one document of a find; stops the walk with anything but IOT_OK. */
typedef enum iot_err (*mongo_push_fn)(const bson_t *doc, void *ctx, struct iot_error *err);

/* Runs a find on `coll_name` (filter and opts borrowed) and hands every document to `push`
 * until it fails; a cursor error is mapped with `what` naming the operation. */
enum iot_err mongo_find_each(struct mongo_store *ms, const char *coll_name, const bson_t *filter,
                             const bson_t *opts, mongo_push_fn push, void *ctx, const char *what,
                             struct iot_error *err);

enum iot_err mongo_device_get(struct store *st, const char *tenant, const char *device_id,
                              struct device_record *out, struct iot_error *err);
enum iot_err mongo_device_link(struct store *st, const char *tenant, const char *device_id,
                               const struct uuid *integration_id, struct iot_error *err);
enum iot_err mongo_device_unlink(struct store *st, const char *tenant, const char *device_id,
                                 const struct uuid *integration_id, struct iot_error *err);
enum iot_err mongo_device_delete(struct store *st, const char *tenant, const char *device_id,
                                 struct iot_error *err);
enum iot_err mongo_devices_page(struct store *st, const char *after_tenant, const char *after_id,
                                size_t limit, struct device_list *out, struct iot_error *err);
enum iot_err mongo_integration_unlink_all(struct store *st, const char *tenant,
                                          const struct uuid *integration_id, struct iot_error *err);
enum iot_err mongo_event_insert(struct store *st, const struct event_record *ev,
                                struct iot_error *err);
enum iot_err mongo_events_list(struct store *st, const char *tenant,
                               const struct uuid *integration_id, int64_t skip, int64_t limit,
                               struct event_list *out, struct iot_error *err);

/* Builds the `log` document of `ev` into `doc` (initialised by the caller). */
enum iot_err mongo_event_to_bson(const struct event_record *ev, bson_t *doc, struct iot_error *err);

/* Decodes a `log` document into `out` (zeroed by the caller; owned by the caller on success,
 * left cleared on failure). */
enum iot_err mongo_event_from_bson(const bson_t *doc, struct event_record *out,
                                   struct iot_error *err);

/* Decodes a `devices` document into `out` (same ownership as mongo_event_from_bson). */
enum iot_err mongo_device_from_bson(const bson_t *doc, struct device_record *out,
                                    struct iot_error *err);

/* --- migrations (mongo_migrate.c) --- */

enum iot_err mongo_migrate(struct mongo_store *ms, enum store_migrate_mode mode,
                           struct iot_error *err);

#endif
