/* The MongoDB store adapter against a real MongoDB-wire server (MongoDB or FerretDB), named by
 * IOT_MANAGER_TEST_MONGO_URL (scripts/with-mongo.sh provides one). Each test works in its own
 * freshly named database, which it drops at the end. Besides the port's behaviour, the raw
 * documents are checked with plain libmongoc, since data compatibility with Mender is the point
 * of this adapter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mongoc/mongoc.h>

#include "iot-manager/log.h"
#include "iot-manager/store.h"
#include "support/spawn.h"
#include "support/store_contract.h"

#define ALG_MENDER "AES_256_CFB_HMAC_SHA512"

/* Starts with the shared cases' view of it (see support/store_contract.h). */
struct fixture {
    struct store_contract contract; /* contract.st is st */
    const char *url;
    char dbname[64];
    struct store *st;
    mongoc_client_t *raw;
    mongoc_database_t *db;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->url = getenv("IOT_MANAGER_TEST_MONGO_URL");
    assert_non_null(f->url);

    struct uuid u;
    assert_int_equal(uuid_generate_v4(&u), IOT_OK);
    snprintf(f->dbname, sizeof f->dbname, "iotm_test_%02x%02x%02x%02x%02x%02x%02x%02x", u.b[0],
             u.b[1], u.b[2], u.b[3], u.b[4], u.b[5], u.b[6], u.b[7]);

    struct store_mongo_options opts = {.url = f->url, .dbname = f->dbname, .timeout_ms = 5000};
    struct iot_error err = {0};
    assert_int_equal(store_mongo_open(&opts, &f->st, &err), IOT_OK);
    assert_string_equal(store_name(f->st), "mongo");
    f->contract.st = f->st;

    /* store_mongo_open ran mongoc_init: the raw client can be made now */
    bson_error_t error;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(f->url, &error);
    assert_non_null(uri);
    f->raw = mongoc_client_new_from_uri(uri);
    mongoc_uri_destroy(uri);
    assert_non_null(f->raw);
    mongoc_client_set_error_api(f->raw, MONGOC_ERROR_API_VERSION_2);
    f->db = mongoc_client_get_database(f->raw, f->dbname);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    bson_error_t error;
    if (!mongoc_database_drop_with_opts(f->db, NULL, &error))
        fprintf(stderr, "drop %s: %s\n", f->dbname, error.message);
    mongoc_database_destroy(f->db);
    mongoc_client_destroy(f->raw);
    store_destroy(f->st);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static mongoc_collection_t *coll_of(struct fixture *f, const char *name)
{
    return mongoc_database_get_collection(f->db, name);
}

static void raw_insert(struct fixture *f, const char *coll_name, bson_t *doc)
{
    bson_error_t error;
    mongoc_collection_t *coll = coll_of(f, coll_name);
    bool ok = mongoc_collection_insert_one(coll, doc, NULL, NULL, &error);
    if (!ok)
        fail_msg("insert into %s: %s", coll_name, error.message);
    mongoc_collection_destroy(coll);
    bson_destroy(doc);
}

static int64_t raw_count(struct fixture *f, const char *coll_name, bson_t *filter)
{
    bson_error_t error;
    mongoc_collection_t *coll = coll_of(f, coll_name);
    int64_t n = mongoc_collection_count_documents(coll, filter, NULL, NULL, NULL, &error);
    if (n < 0)
        fail_msg("count %s: %s", coll_name, error.message);
    mongoc_collection_destroy(coll);
    bson_destroy(filter);
    return n;
}

/* The one document of `coll_name` matching `filter` (both consumed); caller destroys it. */
static bson_t *raw_find_one(struct fixture *f, const char *coll_name, bson_t *filter)
{
    const bson_t *doc;
    bson_t *copy = NULL;
    mongoc_collection_t *coll = coll_of(f, coll_name);
    mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(coll, filter, NULL, NULL);
    if (mongoc_cursor_next(cursor, &doc))
        copy = bson_copy(doc);
    assert_false(mongoc_cursor_next(cursor, &doc));
    mongoc_cursor_destroy(cursor);
    mongoc_collection_destroy(coll);
    bson_destroy(filter);
    assert_non_null(copy);
    return copy;
}

static bool server_is_ferretdb(struct fixture *f)
{
    bson_error_t error;
    bson_t reply;
    bson_iter_t it;
    bson_t *cmd = BCON_NEW("buildInfo", BCON_INT32(1));
    assert_true(mongoc_client_command_simple(f->raw, "admin", cmd, NULL, &reply, &error));
    bool ferret = bson_iter_init_find(&it, &reply, "ferretdbVersion");
    bson_destroy(&reply);
    bson_destroy(cmd);
    return ferret;
}

static void fill_uuid(struct uuid *u, uint8_t seed)
{
    for (size_t i = 0; i < sizeof u->b; i++)
        u->b[i] = (uint8_t)(seed * 16 + i);
    u->b[6] = (uint8_t)((u->b[6] & 0x0f) | 0x40);
    u->b[8] = (uint8_t)((u->b[8] & 0x3f) | 0x80);
}

static char *xstrdup(const char *s)
{
    char *copy = s ? strdup(s) : NULL;
    if (s)
        assert_non_null(copy);
    return copy;
}

static void seal_bytes(struct secret *s, const char *algorithm, bool has_key_id, int32_t key_id,
                       const char *bytes, size_t len)
{
    assert_int_equal(
        secret_set_sealed(s, algorithm, has_key_id, key_id, (const uint8_t *)bytes, len), IOT_OK);
}

/* `lit` is a string literal; its bytes (embedded NULs included) become the sealed blob. */
#define seal(s, algorithm, has_key_id, key_id, lit)                                                \
    seal_bytes(s, algorithm, has_key_id, key_id, lit, sizeof(lit) - 1)

static void make_sas(struct integration *in, const struct uuid *id, const char *tenant, bool full,
                     bool key_id)
{
    memset(in, 0, sizeof *in);
    in->id = *id;
    in->tenant_id = xstrdup(tenant);
    in->provider = PROVIDER_IOT_HUB;
    in->description = full ? xstrdup("my hub") : NULL;
    in->credentials.type = CREDENTIAL_SAS;
    struct credentials_sas *sas = &in->credentials.sas;
    sas->hostname = xstrdup("myhub.azure-devices.net:8443");
    if (full) {
        sas->gateway_hostname = xstrdup("gw.example.com");
        sas->name = xstrdup("iothubowner");
        sas->device_id = xstrdup("dev-1");
        sas->module_id = xstrdup("mod-1");
    }
    seal(&sas->access_key, key_id ? "AES_256_GCM" : ALG_MENDER, key_id, key_id ? 7 : 0,
         "\x01sealed\x00key");
}

static void make_aws(struct integration *in, const struct uuid *id, const char *tenant)
{
    memset(in, 0, sizeof *in);
    in->id = *id;
    in->tenant_id = xstrdup(tenant);
    in->provider = PROVIDER_IOT_CORE;
    in->credentials.type = CREDENTIAL_AWS;
    struct credentials_aws *aws = &in->credentials.aws;
    aws->access_key_id = xstrdup("AKIAEXAMPLE");
    seal(&aws->secret_access_key, "AES_256_GCM", true, -3, "aws-sealed");
    aws->region = xstrdup("eu-west-1");
    aws->device_policy_name = xstrdup("policy-a");
}

static void make_http(struct integration *in, const struct uuid *id, const char *tenant,
                      bool with_secret)
{
    memset(in, 0, sizeof *in);
    in->id = *id;
    in->tenant_id = xstrdup(tenant);
    in->provider = PROVIDER_WEBHOOK;
    in->description = xstrdup("hook");
    in->credentials.type = CREDENTIAL_HTTP;
    in->credentials.http.url = xstrdup("https://hooks.example.com/x");
    if (with_secret)
        seal(&in->credentials.http.secret, ALG_MENDER, false, 0, "hook-sealed");
}

/* Creates `in` through the port, reads it back by id and compares every field. */
static void create_and_check(struct fixture *f, const struct integration *in)
{
    struct iot_error err = {0};
    struct integration got = {0};
    assert_int_equal(store_integration_create(f->st, in, &err), IOT_OK);
    assert_int_equal(store_integration_get(f->st, in->tenant_id, &in->id, &got, &err), IOT_OK);
    contract_assert_integration_equal(&got, in);
    integration_clear(&got);
}

/* The keys of `doc` in their stored order, compared with `keys` (NULL-terminated). */
static void assert_keys(const bson_t *doc, const char *const *keys)
{
    bson_iter_t it;
    size_t i = 0;
    assert_true(bson_iter_init(&it, doc));
    while (bson_iter_next(&it)) {
        assert_non_null(keys[i]);
        assert_string_equal(bson_iter_key(&it), keys[i]);
        i++;
    }
    assert_null(keys[i]);
}

static void subdoc(const bson_t *doc, const char *path, bson_t *out)
{
    bson_iter_t it, sub;
    uint32_t len;
    const uint8_t *data;
    assert_true(bson_iter_init(&it, doc));
    assert_true(bson_iter_find_descendant(&it, path, &sub));
    assert_true(BSON_ITER_HOLDS_DOCUMENT(&sub));
    bson_iter_document(&sub, &len, &data);
    assert_true(bson_init_static(out, data, len));
}

static const char *str_at(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, doc, key));
    assert_true(BSON_ITER_HOLDS_UTF8(&it));
    return bson_iter_utf8(&it, NULL);
}

static void assert_binary_at(const bson_t *doc, const char *key, bson_subtype_t subtype,
                             const void *bytes, size_t len)
{
    bson_iter_t it;
    bson_subtype_t st;
    uint32_t n;
    const uint8_t *data;
    assert_true(bson_iter_init_find(&it, doc, key));
    assert_true(BSON_ITER_HOLDS_BINARY(&it));
    bson_iter_binary(&it, &st, &n, &data);
    assert_int_equal(st, subtype);
    assert_int_equal(n, len);
    assert_memory_equal(data, bytes, len);
}

static void migrate_ok(struct fixture *f, enum store_migrate_mode mode)
{
    struct iot_error err = {0};
    enum iot_err rc = store_migrate(f->st, mode, &err);
    if (rc != IOT_OK)
        fail_msg("migrate: %s", err.msg);
}

/* The shared cases' raw check: Mender's layout keeps a device's links in its document. */
static void check_raw_devices(struct store_contract *c, size_t devices, size_t links)
{
    (void)links;
    assert_int_equal(raw_count((struct fixture *)c, "devices", bson_new()), devices);
}

/* A device as Mender may have written it: `first` in the legacy UUID subtype. */
static void seed_legacy_device(struct store_contract *c, const char *tenant, const char *device,
                               const struct uuid *first, const struct uuid *second)
{
    raw_insert((struct fixture *)c, "devices",
               BCON_NEW("_id", BCON_UTF8(device), "tenant_id", BCON_UTF8(tenant), "integration_ids",
                        "[", BCON_BIN(BSON_SUBTYPE_UUID_DEPRECATED, first->b, 16),
                        BCON_BIN(BSON_SUBTYPE_UUID, second->b, 16), "]"));
}

/* setup() with the schema in place, for the shared cases. */
static int setup_migrated(void **state)
{
    setup(state);
    struct fixture *f = *state;
    f->contract.check_raw_devices = check_raw_devices;
    f->contract.seed_legacy_device = seed_legacy_device;
    migrate_ok(f, STORE_MIGRATE_CHECK);
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Index names of a collection, sorted, joined with ","; `unique_out` gets the unique ones. */
static void index_names(struct fixture *f, const char *coll_name, char *out, size_t cap,
                        char *unique_out, size_t ucap)
{
    bson_error_t error;
    const bson_t *doc;
    char names[8][64];
    size_t n = 0;
    out[0] = '\0';
    unique_out[0] = '\0';
    mongoc_collection_t *coll = coll_of(f, coll_name);
    mongoc_cursor_t *cursor = mongoc_collection_find_indexes_with_opts(coll, NULL);
    while (mongoc_cursor_next(cursor, &doc)) {
        bson_iter_t it;
        assert_true(n < 8);
        snprintf(names[n++], sizeof names[0], "%s", str_at(doc, "name"));
        if (bson_iter_init_find(&it, doc, "unique") && bson_iter_as_bool(&it)) {
            strncat(unique_out, str_at(doc, "name"), ucap - strlen(unique_out) - 1);
            strncat(unique_out, ",", ucap - strlen(unique_out) - 1);
        }
    }
    if (mongoc_cursor_error(cursor, &error))
        fail_msg("listIndexes %s: %s", coll_name, error.message);
    mongoc_cursor_destroy(cursor);
    mongoc_collection_destroy(coll);
    qsort(names, n, sizeof names[0], cmp_name);
    for (size_t i = 0; i < n; i++) {
        if (i)
            strncat(out, ",", cap - strlen(out) - 1);
        strncat(out, names[i], cap - strlen(out) - 1);
    }
}

/* The key document of index `name` in `coll_name`, as canonical extended JSON. */
static char *index_key_json(struct fixture *f, const char *coll_name, const char *name)
{
    const bson_t *doc;
    char *json = NULL;
    mongoc_collection_t *coll = coll_of(f, coll_name);
    mongoc_cursor_t *cursor = mongoc_collection_find_indexes_with_opts(coll, NULL);
    while (!json && mongoc_cursor_next(cursor, &doc)) {
        if (strcmp(str_at(doc, "name"), name) == 0) {
            bson_t key;
            subdoc(doc, "key", &key);
            json = bson_as_relaxed_extended_json(&key, NULL);
        }
    }
    mongoc_cursor_destroy(cursor);
    mongoc_collection_destroy(coll);
    assert_non_null(json);
    return json;
}

static void assert_index_key(struct fixture *f, const char *coll, const char *name,
                             const char *expected)
{
    char *json = index_key_json(f, coll, name);
    assert_string_equal(json, expected);
    bson_free(json);
}

/* Versions recorded in migration_info as "M.m.p" joined with ",", in insertion order. */
static void recorded_versions(struct fixture *f, char *out, size_t cap)
{
    const bson_t *doc;
    out[0] = '\0';
    mongoc_collection_t *coll = coll_of(f, "migration_info");
    bson_t filter = BSON_INITIALIZER;
    mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(coll, &filter, NULL, NULL);
    while (mongoc_cursor_next(cursor, &doc)) {
        bson_iter_t it;
        bson_t version;
        int64_t v[3];
        const char *const parts[] = {"major", "minor", "patch"};
        const char *const keys[] = {"_id", "version", "timestamp", NULL};
        assert_keys(doc, keys);
        assert_true(bson_iter_init_find(&it, doc, "timestamp"));
        assert_true(BSON_ITER_HOLDS_DATE_TIME(&it));
        assert_true(llabs(bson_iter_date_time(&it) - now_ms()) < 60000);
        subdoc(doc, "version", &version);
        const char *const vkeys[] = {"major", "minor", "patch", NULL};
        assert_keys(&version, vkeys);
        for (int i = 0; i < 3; i++) {
            assert_true(bson_iter_init_find(&it, &version, parts[i]));
            assert_true(BSON_ITER_HOLDS_INT64(&it));
            v[i] = bson_iter_int64(&it);
        }
        char one[32];
        snprintf(one, sizeof one, "%s%lld.%lld.%lld", out[0] ? "," : "", (long long)v[0],
                 (long long)v[1], (long long)v[2]);
        strncat(out, one, cap - strlen(out) - 1);
    }
    mongoc_cursor_destroy(cursor);
    mongoc_collection_destroy(coll);
}

/* ---- device records ---- */

static void test_device_raw_layout(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    const struct uuid a = contract_uuid(0x18, 1), b = contract_uuid(0x18, 2);
    migrate_ok(f, STORE_MIGRATE_CHECK);
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &b, &err), IOT_OK);

    bson_t *doc = raw_find_one(f, "devices", BCON_NEW("_id", BCON_UTF8("dev-1")));
    const char *const keys[] = {"_id", "tenant_id", "integration_ids", NULL};
    assert_keys(doc, keys);
    assert_string_equal(str_at(doc, "_id"), "dev-1");
    assert_string_equal(str_at(doc, "tenant_id"), "t1");
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, doc, "integration_ids"));
    assert_true(BSON_ITER_HOLDS_ARRAY(&it));
    bson_t arr;
    uint32_t len;
    const uint8_t *data;
    bson_iter_array(&it, &len, &data);
    assert_true(bson_init_static(&arr, data, len));
    const char *const idx[] = {"0", "1", NULL};
    assert_keys(&arr, idx);
    assert_binary_at(&arr, "0", BSON_SUBTYPE_UUID, a.b, 16);
    assert_binary_at(&arr, "1", BSON_SUBTYPE_UUID, b.b, 16);
    bson_destroy(doc);

    /* emptied by unlink: the array stays, empty */
    assert_int_equal(store_device_unlink(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_unlink(f->st, "t1", "dev-1", &b, &err), IOT_OK);
    doc = raw_find_one(f, "devices", BCON_NEW("_id", BCON_UTF8("dev-1")));
    assert_keys(doc, keys);
    assert_true(bson_iter_init_find(&it, doc, "integration_ids"));
    bson_iter_array(&it, &len, &data);
    assert_int_equal(len, 5); /* an empty BSON array */
    bson_destroy(doc);
}

/* ---- events ---- */

static bson_t *raw_log(struct fixture *f, const struct uuid *id)
{
    return raw_find_one(f, "log", BCON_NEW("_id", BCON_BIN(BSON_SUBTYPE_UUID, id->b, 16)));
}

static void assert_date_at(const bson_t *doc, const char *path, int64_t ms)
{
    bson_iter_t it, found;
    assert_true(bson_iter_init(&it, doc));
    assert_true(bson_iter_find_descendant(&it, path, &found));
    assert_true(BSON_ITER_HOLDS_DATE_TIME(&found));
    assert_int_equal(bson_iter_date_time(&found), ms);
}

static void assert_type_at(const bson_t *doc, const char *path, bson_type_t type)
{
    bson_iter_t it, found;
    assert_true(bson_iter_init(&it, doc));
    assert_true(bson_iter_find_descendant(&it, path, &found));
    assert_int_equal(bson_iter_type(&found), type);
}

static void test_log_raw_layout(void **state)
{
    struct fixture *f = *state;
    struct event_record ev, bare;
    const struct uuid id = contract_uuid(0x19, 1), a = contract_uuid(0x19, 0xa),
                      b = contract_uuid(0x19, 0xb);
    migrate_ok(f, STORE_MIGRATE_CHECK);
    contract_make_event(&ev, "t1", id, 1714979289123, CONTRACT_EVENT_DATA_IN);
    contract_add_status(&ev, a, true, NULL, 0);
    contract_add_status(&ev, b, false, "boom", 502);
    contract_insert_event(f->st, &ev);

    bson_t *doc = raw_log(f, &id);
    const char *const keys[] = {"_id",       "type",   "data",      "event_ts",
                                "expire_ts", "status", "tenant_id", NULL};
    assert_keys(doc, keys);
    assert_binary_at(doc, "_id", BSON_SUBTYPE_UUID, id.b, 16);
    assert_string_equal(str_at(doc, "type"), "device-provisioned");
    assert_string_equal(str_at(doc, "tenant_id"), "t1");
    assert_date_at(doc, "event_ts", 1714979289123);
    assert_date_at(doc, "expire_ts", 1714979289123 + 604800000);

    bson_t data, set, status;
    subdoc(doc, "data", &data);
    const char *const data_keys[] = {"id", "status",     "auth_sets", "created_ts",
                                     "ts", "updated_ts", NULL};
    assert_keys(&data, data_keys);
    /* the time fields as dates (2024-05-06T07:08:09Z is 1714979289 s), the rest as given */
    assert_date_at(doc, "data.created_ts", 1714979289120);
    assert_date_at(doc, "data.auth_sets.0.ts", 1714979289123);
    assert_type_at(doc, "data.auth_sets.1.ts", BSON_TYPE_UTF8);
    assert_date_at(doc, "data.auth_sets.2.ts", 1714979289000);
    assert_type_at(doc, "data.ts", BSON_TYPE_UTF8);
    assert_type_at(doc, "data.updated_ts", BSON_TYPE_UTF8);
    assert_type_at(doc, "data.auth_sets", BSON_TYPE_ARRAY);
    assert_type_at(doc, "data.auth_sets.0.identity_data.n", BSON_TYPE_INT32);
    assert_type_at(doc, "data.auth_sets.0.identity_data.big", BSON_TYPE_INT64);
    assert_type_at(doc, "data.auth_sets.0.identity_data.f", BSON_TYPE_DOUBLE);
    assert_type_at(doc, "data.auth_sets.0.identity_data.on", BSON_TYPE_BOOL);
    assert_type_at(doc, "data.auth_sets.0.identity_data.none", BSON_TYPE_NULL);
    assert_type_at(doc, "data.auth_sets.0.identity_data.list", BSON_TYPE_ARRAY);
    assert_type_at(doc, "data.auth_sets.0.identity_data.list.2.ts", BSON_TYPE_UTF8);
    subdoc(doc, "data.auth_sets.0", &set);
    const char *const set_keys[] = {"id", "device_id", "identity_data", "pubkey", "status",
                                    "ts", NULL};
    assert_keys(&set, set_keys);
    assert_string_equal(str_at(&set, "status"), "");

    assert_type_at(doc, "status", BSON_TYPE_ARRAY);
    subdoc(doc, "status.0", &status);
    const char *const ok_keys[] = {"integration_id", "success", NULL};
    assert_keys(&status, ok_keys);
    assert_binary_at(&status, "integration_id", BSON_SUBTYPE_UUID, a.b, 16);
    assert_type_at(&status, "success", BSON_TYPE_BOOL);
    subdoc(doc, "status.1", &status);
    const char *const failed_keys[] = {"integration_id", "success", "err", "status", NULL};
    assert_keys(&status, failed_keys);
    assert_binary_at(&status, "integration_id", BSON_SUBTYPE_UUID, b.b, 16);
    assert_string_equal(str_at(&status, "err"), "boom");
    assert_type_at(&status, "status", BSON_TYPE_INT32);
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, &status, "status"));
    assert_int_equal(bson_iter_int32(&it), 502);
    bson_destroy(doc);

    /* no data, no status: both omitted */
    contract_make_event(&bare, "t1", contract_uuid(0x19, 2), 5, NULL);
    contract_insert_event(f->st, &bare);
    doc = raw_log(f, &bare.id);
    const char *const bare_keys[] = {"_id", "type", "event_ts", "expire_ts", "tenant_id", NULL};
    assert_keys(doc, bare_keys);
    bson_destroy(doc);
    event_record_clear(&ev);
    event_record_clear(&bare);
}

static void test_reads_mender_log(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    const struct uuid id = contract_uuid(0x1a, 1), a = contract_uuid(0x1a, 0xa),
                      b = contract_uuid(0x1a, 0xb);
    static const uint8_t raw[] = {0x00, 0x01, 0xfe, 0xff};
    migrate_ok(f, STORE_MIGRATE_CHECK);
    /* as Mender's Go service writes it: time.Time as dates, an int status, an older id in the
     * legacy UUID subtype, and fields this service never writes */
    raw_insert(
        f, "log",
        BCON_NEW("_id", BCON_BIN(BSON_SUBTYPE_UUID, id.b, 16), "type",
                 BCON_UTF8("device-provisioned"), "data", "{", "id", BCON_UTF8("dev-1"), "status",
                 BCON_UTF8("accepted"), "auth_sets", "[", "{", "id", BCON_UTF8("as-1"), "device_id",
                 BCON_UTF8("dev-1"), "identity_data", "{", "mac", BCON_UTF8("00:11"), "sn",
                 BCON_DOUBLE(5.0), "}", "pubkey", BCON_UTF8("PEM"), "status", BCON_UTF8("accepted"),
                 "ts", BCON_DATE_TIME(1714979289000), "}", "]", "created_ts",
                 BCON_DATE_TIME(1714979289100), "blob", BCON_BIN(BSON_SUBTYPE_BINARY, raw, 4), "}",
                 "event_ts", BCON_DATE_TIME(1714979290001), "expire_ts",
                 BCON_DATE_TIME(1715584090001), "status", "[", "{", "integration_id",
                 BCON_BIN(BSON_SUBTYPE_UUID_DEPRECATED, a.b, 16), "success", BCON_BOOL(false),
                 "err", BCON_UTF8("device already exists"), "status", BCON_INT64(409), "}", "{",
                 "integration_id", BCON_BIN(BSON_SUBTYPE_UUID, b.b, 16), "success", BCON_BOOL(true),
                 "}", "]", "tenant_id", BCON_UTF8("t1")));

    struct event_list list = {0};
    assert_int_equal(store_events_list(f->st, "t1", NULL, 0, 20, &list, &err), IOT_OK);
    assert_int_equal(list.len, 1);
    struct event_record *ev = &list.items[0];
    assert_memory_equal(ev->id.b, id.b, 16);
    assert_string_equal(ev->type, "device-provisioned");
    assert_string_equal(ev->tenant_id, "t1");
    assert_int_equal(ev->event_ts_ms, 1714979290001);
    assert_int_equal(ev->expire_ts_ms, 1715584090001);
    char *text = json_dumps(ev->data, JSON_COMPACT);
    assert_string_equal(
        text, "{\"id\":\"dev-1\",\"status\":\"accepted\",\"auth_sets\":[{\"id\":\"as-1\","
              "\"device_id\":\"dev-1\",\"identity_data\":{\"mac\":\"00:11\",\"sn\":5.0},"
              "\"pubkey\":\"PEM\",\"status\":\"accepted\",\"ts\":\"2024-05-06T07:08:09Z\"}],"
              "\"created_ts\":\"2024-05-06T07:08:09.1Z\",\"blob\":\"AAH+/w==\"}");
    free(text);
    assert_int_equal(ev->n_statuses, 2);
    assert_memory_equal(ev->statuses[0].integration_id.b, a.b, 16);
    assert_false(ev->statuses[0].success);
    assert_string_equal(ev->statuses[0].error, "device already exists");
    assert_int_equal(ev->statuses[0].status_code, 409);
    assert_memory_equal(ev->statuses[1].integration_id.b, b.b, 16);
    assert_true(ev->statuses[1].success);
    assert_null(ev->statuses[1].error);
    assert_int_equal(ev->statuses[1].status_code, 0);
    event_list_clear(&list);

    /* the filter finds the legacy subtype too */
    char ids[16];
    contract_list_event_ids(f->st, "t1", &a, 0, 20, ids, sizeof ids);
    assert_string_equal(ids, "1");
    contract_list_event_ids(f->st, "t1", &b, 0, 20, ids, sizeof ids);
    assert_string_equal(ids, "1");

    /* a document that is not an event is an internal error, not a crash */
    raw_insert(f, "log",
               BCON_NEW("_id", BCON_UTF8("not-a-uuid"), "type", BCON_UTF8("x"), "event_ts",
                        BCON_DATE_TIME(1), "tenant_id", BCON_UTF8("t1")));
    assert_int_equal(store_events_list(f->st, "t1", NULL, 0, 20, &list, &err), IOT_ERR_INTERNAL);
    assert_null(list.items);
    assert_int_equal(list.len, 0);
}

/* ---- concurrency ---- */

#define LINK_THREADS     4
#define LINKS_PER_THREAD 8

static void test_concurrent_device_link(void **state)
{
    struct fixture *f = *state;
    struct store *stores[LINK_THREADS];
    migrate_ok(f, STORE_MIGRATE_CHECK);
    /* One service: its threads race on the first upsert and then on every $addToSet. */
    for (int i = 0; i < LINK_THREADS; i++)
        stores[i] = f->st;
    contract_link_concurrently(stores, LINK_THREADS, LINKS_PER_THREAD);
    assert_int_equal(raw_count(f, "devices", bson_new()), 1);
    contract_assert_all_linked(f->st, LINK_THREADS, LINKS_PER_THREAD);

    /* Independent clients (as several service instances): the losers of the upsert race get
     * the duplicate key and must retry. FerretDB's read-modify-write updates may still drop an
     * id between clients; MongoDB's may not. */
    struct iot_error err = {0};
    assert_int_equal(store_device_delete(f->st, "t1", "dev-shared", &err), IOT_OK);
    struct store_mongo_options opts = {.url = f->url, .dbname = f->dbname, .timeout_ms = 5000};
    for (int i = 0; i < LINK_THREADS; i++)
        assert_int_equal(store_mongo_open(&opts, &stores[i], &err), IOT_OK);
    contract_link_concurrently(stores, LINK_THREADS, 1);
    assert_int_equal(raw_count(f, "devices", bson_new()), 1);
    if (!server_is_ferretdb(f))
        contract_assert_all_linked(f->st, LINK_THREADS, 1);
    for (int i = 0; i < LINK_THREADS; i++)
        store_destroy(stores[i]);
}

/* ---- tests without a server ---- */

static void test_open_requires_schema(void **state)
{
    (void)state;
    struct iot_error err = {0};
    struct store *st = (struct store *)&err; /* must be reset to NULL */
    struct store_mongo_options opts = {.url = "mender-mongo:27017"};
    assert_int_equal(store_mongo_open(&opts, &st, &err), IOT_ERR_CONFIG);
    assert_null(st);
    assert_string_equal(err.msg, "Invalid mongoURL \"mender-mongo:27017\": missing schema.");

    opts.url = "admin:hunter2@mongo:27017";
    assert_int_equal(store_mongo_open(&opts, &st, &err), IOT_ERR_CONFIG);
    assert_null(strstr(err.msg, "hunter2"));
    assert_string_equal(err.msg, "Invalid mongoURL \"<omitted>@mongo:27017\": missing schema.");

    opts.url = "bogus://x";
    assert_int_equal(store_mongo_open(&opts, &st, &err), IOT_ERR_CONFIG);
    assert_null(st);
}

static void test_unreachable_server_is_unavailable(void **state)
{
    (void)state;
    struct iot_error err = {0};
    struct store *st = NULL;
    struct integration_list list = {0};

    /* open does no I/O, even towards an address that would swallow a connect */
    struct store_mongo_options blackhole = {.url = "mongodb://10.255.255.1:27017",
                                            .timeout_ms = 200};
    int64_t t0 = support_now_ms();
    assert_int_equal(store_mongo_open(&blackhole, &st, &err), IOT_OK);
    assert_true(support_now_ms() - t0 < 100);
    store_destroy(st);

    struct store_mongo_options opts = {.url = "mongodb://127.0.0.1:1", .timeout_ms = 300};
    assert_int_equal(store_mongo_open(&opts, &st, &err), IOT_OK);
    t0 = support_now_ms();
    assert_int_equal(store_ping(st, &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(err.code, IOT_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "database unavailable"));
    assert_true(support_now_ms() - t0 < 2000);

    assert_int_equal(store_migrate(st, STORE_MIGRATE_CHECK, &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(store_integrations_list(st, "t", &list, &err), IOT_ERR_UNAVAILABLE);
    assert_null(list.items);
    int64_t removed = -1;
    assert_int_equal(store_events_expire(st, now_ms(), &removed, &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(removed, 0);
    struct device_record dev;
    assert_int_equal(store_device_get(st, "t", "d", &dev, &err), IOT_ERR_UNAVAILABLE);
    assert_null(dev.id);
    const struct uuid link = contract_uuid(1, 1);
    assert_int_equal(store_device_link(st, "t", "d", &link, &err), IOT_ERR_UNAVAILABLE);
    struct event_list events = {0};
    assert_int_equal(store_events_list(st, "t", &link, 0, 20, &events, &err), IOT_ERR_UNAVAILABLE);
    assert_null(events.items);
    struct device_list devices = {0};
    assert_int_equal(store_devices_page(st, "", "", 10, &devices, &err), IOT_ERR_UNAVAILABLE);
    assert_null(devices.items);
    assert_true(support_now_ms() - t0 < 5000);
    store_destroy(st);

    /* the URL's own timeout wins over timeout_ms */
    struct store_mongo_options url_timeout = {
        .url = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200", .timeout_ms = 20000};
    assert_int_equal(store_mongo_open(&url_timeout, &st, &err), IOT_OK);
    t0 = support_now_ms();
    assert_int_equal(store_ping(st, &err), IOT_ERR_UNAVAILABLE);
    assert_true(support_now_ms() - t0 < 2000);
    store_destroy(st);
}

/* ---- tests against the server ---- */

static void test_ping(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    assert_int_equal(store_ping(f->st, &err), IOT_OK);
}

static void test_migrate_initialises_empty_db(void **state)
{
    struct fixture *f = *state;
    char names[256], unique[256], versions[128];

    migrate_ok(f, STORE_MIGRATE_CHECK);

    index_names(f, "integrations", names, sizeof names, unique, sizeof unique);
    assert_string_equal(names, "_id_,integration_one_per_tenant,tenant_id_provider__id");
    assert_string_equal(unique, "integration_one_per_tenant,");
    assert_index_key(f, "integrations", "tenant_id_provider__id",
                     "{ \"tenant_id\" : 1, \"provider\" : 1, \"_id\" : 1 }");
    assert_index_key(f, "integrations", "integration_one_per_tenant", "{ \"tenant_id\" : 1 }");

    index_names(f, "devices", names, sizeof names, unique, sizeof unique);
    assert_string_equal(names, "_id_,tenant_id_integration_ids__id");
    assert_index_key(f, "devices", "tenant_id_integration_ids__id",
                     "{ \"tenant_id\" : 1, \"integration_ids\" : 1, \"_id\" : 1 }");

    index_names(f, "log", names, sizeof names, unique, sizeof unique);
    if (server_is_ferretdb(f)) {
        /* FerretDB v1 refuses TTL indexes: the migration goes on without it */
        assert_string_equal(names, "_id_,tenant_id__id");
    } else {
        assert_string_equal(names, "_id_,log_TTL,tenant_id__id");
        assert_index_key(f, "log", "log_TTL", "{ \"expire_ts\" : 1 }");
    }
    assert_index_key(f, "log", "tenant_id__id", "{ \"tenant_id\" : 1, \"event_ts\" : -1 }");

    recorded_versions(f, versions, sizeof versions);
    assert_string_equal(versions, "1.0.0,1.1.0,1.1.1,1.2.0");

    /* up to date: both modes are no-ops */
    migrate_ok(f, STORE_MIGRATE_CHECK);
    migrate_ok(f, STORE_MIGRATE_APPLY);
    recorded_versions(f, versions, sizeof versions);
    assert_string_equal(versions, "1.0.0,1.1.0,1.1.1,1.2.0");
}

static void test_migrate_outdated_db(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    char names[256], unique[256], versions[128], expected[256];

    /* what Mender's old iot-manager leaves: version 1.1.1 recorded, no unique index */
    raw_insert(f, "migration_info",
               BCON_NEW("version", "{", "major", BCON_INT64(1), "minor", BCON_INT64(1), "patch",
                        BCON_INT64(1), "}", "timestamp", BCON_DATE_TIME(now_ms())));

    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_ERR_NEEDS_MIGRATION);
    snprintf(expected, sizeof expected,
             "failed to apply migrations: db needs migration: %s has version 1.1.1, needs "
             "version 1.2.0",
             f->dbname);
    assert_string_equal(err.msg, expected);
    recorded_versions(f, versions, sizeof versions);
    assert_string_equal(versions, "1.1.1");

    migrate_ok(f, STORE_MIGRATE_APPLY);
    recorded_versions(f, versions, sizeof versions);
    assert_string_equal(versions, "1.1.1,1.2.0");
    /* only the missing version ran */
    index_names(f, "integrations", names, sizeof names, unique, sizeof unique);
    assert_string_equal(names, "_id_,integration_one_per_tenant");
    assert_string_equal(unique, "integration_one_per_tenant,");
    migrate_ok(f, STORE_MIGRATE_CHECK);
}

static void test_migrate_refuses_unversioned_data(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    char expected[256], versions[128];
    raw_insert(f, "devices", BCON_NEW("_id", BCON_UTF8("dev-1"), "tenant_id", BCON_UTF8("t1")));

    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_ERR_NEEDS_MIGRATION);
    snprintf(expected, sizeof expected,
             "failed to apply migrations: db needs migration: %s has version 0.0.0, needs "
             "version 1.2.0",
             f->dbname);
    assert_string_equal(err.msg, expected);

    migrate_ok(f, STORE_MIGRATE_APPLY);
    recorded_versions(f, versions, sizeof versions);
    assert_string_equal(versions, "1.0.0,1.1.0,1.1.1,1.2.0");
}

static void test_crud_round_trip(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration sas_full, sas_min, aws, http, http_nosecret, got = {0};
    struct uuid id1, id2, id3, id4, id5;
    fill_uuid(&id1, 1);
    fill_uuid(&id2, 2);
    fill_uuid(&id3, 3);
    fill_uuid(&id4, 4);
    fill_uuid(&id5, 5);
    migrate_ok(f, STORE_MIGRATE_CHECK);

    make_sas(&sas_full, &id1, "tenant-a", true, true);
    make_sas(&sas_min, &id2, "", false, false); /* open source: empty tenant */
    make_aws(&aws, &id3, "tenant-c");
    make_http(&http, &id4, "tenant-d", true);
    make_http(&http_nosecret, &id5, "tenant-e", false);
    create_and_check(f, &sas_full);
    create_and_check(f, &sas_min);
    create_and_check(f, &aws);
    create_and_check(f, &http);
    create_and_check(f, &http_nosecret);

    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, "tenant-a", &list, &err), IOT_OK);
    assert_int_equal(list.len, 1);
    contract_assert_integration_equal(&list.items[0], &sas_full);
    integration_list_clear(&list);
    assert_int_equal(store_integrations_list(f->st, "", &list, &err), IOT_OK);
    assert_int_equal(list.len, 1);
    contract_assert_integration_equal(&list.items[0], &sas_min);
    integration_list_clear(&list);
    assert_int_equal(store_integrations_list(f->st, "nobody", &list, &err), IOT_OK);
    assert_int_equal(list.len, 0);
    integration_list_clear(&list);

    /* credentials replaced wholesale: the optional fields of the old ones disappear */
    struct credentials creds = {0};
    assert_int_equal(credentials_copy(&creds, &sas_min.credentials), IOT_OK);
    assert_int_equal(store_integration_set_credentials(f->st, "tenant-a", &id1, &creds, &err),
                     IOT_OK);
    assert_int_equal(store_integration_get(f->st, "tenant-a", &id1, &got, &err), IOT_OK);
    credentials_clear(&sas_full.credentials);
    assert_int_equal(credentials_copy(&sas_full.credentials, &creds), IOT_OK);
    contract_assert_integration_equal(&got, &sas_full);
    integration_clear(&got);
    credentials_clear(&creds);

    /* a different credential type, as the API allows */
    assert_int_equal(credentials_copy(&creds, &aws.credentials), IOT_OK);
    assert_int_equal(store_integration_set_credentials(f->st, "tenant-d", &id4, &creds, &err),
                     IOT_OK);
    assert_int_equal(store_integration_get(f->st, "tenant-d", &id4, &got, &err), IOT_OK);
    assert_int_equal(got.provider, PROVIDER_WEBHOOK);
    assert_int_equal(got.credentials.type, CREDENTIAL_AWS);
    contract_assert_opt_string(got.credentials.aws.device_policy_name, "policy-a");
    integration_clear(&got);

    struct uuid missing;
    fill_uuid(&missing, 9);
    assert_int_equal(store_integration_set_credentials(f->st, "tenant-a", &missing, &creds, &err),
                     IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "integration not found");
    credentials_clear(&creds);

    assert_int_equal(store_integration_delete(f->st, "tenant-c", &id3, &err), IOT_OK);
    assert_int_equal(store_integration_get(f->st, "tenant-c", &id3, &got, &err), IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "integration not found");
    assert_int_equal(store_integration_delete(f->st, "tenant-c", &id3, &err), IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "integration not found");

    integration_clear(&sas_full);
    integration_clear(&sas_min);
    integration_clear(&aws);
    integration_clear(&http);
    integration_clear(&http_nosecret);
}

static void test_raw_layout(void **state)
{
    struct fixture *f = *state;
    struct integration sas, aws, http;
    struct uuid id1, id2, id3;
    bson_t creds, sub, secret;
    fill_uuid(&id1, 1);
    fill_uuid(&id2, 2);
    fill_uuid(&id3, 3);
    make_sas(&sas, &id1, "t1", true, true);
    make_aws(&aws, &id2, "t2");
    make_http(&http, &id3, "t3", false);
    create_and_check(f, &sas);
    create_and_check(f, &aws);
    create_and_check(f, &http);

    bson_t *doc = raw_find_one(f, "integrations", BCON_NEW("tenant_id", BCON_UTF8("t1")));
    const char *const top[] = {"_id", "provider", "credentials", "description", "tenant_id", NULL};
    assert_keys(doc, top);
    assert_binary_at(doc, "_id", BSON_SUBTYPE_UUID, id1.b, 16);
    assert_string_equal(str_at(doc, "provider"), "iot-hub");
    assert_string_equal(str_at(doc, "description"), "my hub");
    assert_string_equal(str_at(doc, "tenant_id"), "t1");
    subdoc(doc, "credentials", &creds);
    const char *const creds_keys[] = {"type", "connection_string", NULL};
    assert_keys(&creds, creds_keys);
    assert_string_equal(str_at(&creds, "type"), "sas");
    subdoc(doc, "credentials.connection_string", &sub);
    const char *const cs_keys[] = {"hostname",  "gateway_hostname", "name", "device_id",
                                   "module_id", "access_key",       NULL};
    assert_keys(&sub, cs_keys);
    assert_string_equal(str_at(&sub, "hostname"), "myhub.azure-devices.net:8443");
    assert_string_equal(str_at(&sub, "gateway_hostname"), "gw.example.com");
    assert_string_equal(str_at(&sub, "name"), "iothubowner");
    assert_string_equal(str_at(&sub, "device_id"), "dev-1");
    assert_string_equal(str_at(&sub, "module_id"), "mod-1");
    subdoc(doc, "credentials.connection_string.access_key", &secret);
    const char *const secret_keys[] = {"algorithm", "key_id", "data", NULL};
    assert_keys(&secret, secret_keys);
    assert_string_equal(str_at(&secret, "algorithm"), "AES_256_GCM");
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, &secret, "key_id"));
    assert_true(BSON_ITER_HOLDS_INT32(&it));
    assert_int_equal(bson_iter_int32(&it), 7);
    assert_binary_at(&secret, "data", BSON_SUBTYPE_BINARY, "\x01sealed\x00key", 11);
    bson_destroy(doc);

    doc = raw_find_one(f, "integrations", BCON_NEW("tenant_id", BCON_UTF8("t2")));
    const char *const top_nodesc[] = {"_id", "provider", "credentials", "tenant_id", NULL};
    assert_keys(doc, top_nodesc);
    assert_string_equal(str_at(doc, "provider"), "iot-core");
    subdoc(doc, "credentials", &creds);
    const char *const aws_creds_keys[] = {"type", "aws", NULL};
    assert_keys(&creds, aws_creds_keys);
    assert_string_equal(str_at(&creds, "type"), "aws");
    subdoc(doc, "credentials.aws", &sub);
    const char *const aws_keys[] = {"access_key_id", "secret_access_key", "region",
                                    "device_policydevice_policy_name", NULL};
    assert_keys(&sub, aws_keys);
    assert_string_equal(str_at(&sub, "access_key_id"), "AKIAEXAMPLE");
    assert_string_equal(str_at(&sub, "region"), "eu-west-1");
    assert_string_equal(str_at(&sub, "device_policydevice_policy_name"), "policy-a");
    subdoc(doc, "credentials.aws.secret_access_key", &secret);
    assert_keys(&secret, secret_keys);
    assert_binary_at(&secret, "data", BSON_SUBTYPE_BINARY, "aws-sealed", 10);
    bson_destroy(doc);

    doc = raw_find_one(f, "integrations", BCON_NEW("tenant_id", BCON_UTF8("t3")));
    assert_keys(doc, top);
    subdoc(doc, "credentials", &creds);
    const char *const http_creds_keys[] = {"type", "http", NULL};
    assert_keys(&creds, http_creds_keys);
    subdoc(doc, "credentials.http", &sub);
    const char *const http_keys[] = {"url", NULL}; /* no secret: omitted */
    assert_keys(&sub, http_keys);
    bson_destroy(doc);

    /* a secret without key id has no key_id field, as Mender writes it */
    struct iot_error err = {0};
    struct credentials c = {0};
    assert_int_equal(credentials_copy(&c, &http.credentials), IOT_OK);
    seal(&c.http.secret, ALG_MENDER, false, 0, "abc");
    assert_int_equal(store_integration_set_credentials(f->st, "t3", &id3, &c, &err), IOT_OK);
    credentials_clear(&c);
    doc = raw_find_one(f, "integrations", BCON_NEW("tenant_id", BCON_UTF8("t3")));
    subdoc(doc, "credentials.http.secret", &secret);
    const char *const mender_secret_keys[] = {"algorithm", "data", NULL};
    assert_keys(&secret, mender_secret_keys);
    assert_string_equal(str_at(&secret, "algorithm"), ALG_MENDER);
    assert_binary_at(&secret, "data", BSON_SUBTYPE_BINARY, "abc", 3);
    bson_destroy(doc);

    integration_clear(&sas);
    integration_clear(&aws);
    integration_clear(&http);
}

static void test_reads_mender_documents(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration got = {0};
    struct uuid id1, id2;
    fill_uuid(&id1, 1);
    fill_uuid(&id2, 2);
    static const uint8_t blob[] = {0x01, 0x00, 0x01, 0x02, 0xff, 0x10};

    /* exactly as Mender's Go service writes an Azure integration */
    raw_insert(f, "integrations",
               BCON_NEW("_id", BCON_BIN(BSON_SUBTYPE_UUID, id1.b, 16), "provider",
                        BCON_UTF8("iot-hub"), "credentials", "{", "type", BCON_UTF8("sas"),
                        "connection_string", "{", "hostname", BCON_UTF8("hub.azure-devices.net"),
                        "name", BCON_UTF8("iothubowner"), "access_key", "{", "algorithm",
                        BCON_UTF8(ALG_MENDER), "data",
                        BCON_BIN(BSON_SUBTYPE_BINARY, blob, sizeof blob), "}", "}", "}",
                        "tenant_id", BCON_UTF8("t1")));
    /* an AWS one spelled correctly (as a fixed Mender would) */
    raw_insert(f, "integrations",
               BCON_NEW("_id", BCON_BIN(BSON_SUBTYPE_UUID, id2.b, 16), "provider",
                        BCON_UTF8("iot-core"), "credentials", "{", "type", BCON_UTF8("aws"), "aws",
                        "{", "access_key_id", BCON_UTF8("AKIA"), "secret_access_key", "{",
                        "algorithm", BCON_UTF8(ALG_MENDER), "data",
                        BCON_BIN(BSON_SUBTYPE_BINARY, blob, sizeof blob), "}", "region",
                        BCON_UTF8("us-east-1"), "device_policy_name", BCON_UTF8("pol"), "}", "}",
                        "description", BCON_UTF8("aws one"), "tenant_id", BCON_UTF8("t2")));

    assert_int_equal(store_integration_get(f->st, "t1", &id1, &got, &err), IOT_OK);
    assert_memory_equal(got.id.b, id1.b, 16);
    assert_string_equal(got.tenant_id, "t1");
    assert_int_equal(got.provider, PROVIDER_IOT_HUB);
    assert_null(got.description);
    assert_int_equal(got.credentials.type, CREDENTIAL_SAS);
    assert_string_equal(got.credentials.sas.hostname, "hub.azure-devices.net");
    assert_string_equal(got.credentials.sas.name, "iothubowner");
    assert_null(got.credentials.sas.gateway_hostname);
    assert_null(got.credentials.sas.device_id);
    assert_null(got.credentials.sas.module_id);
    const struct secret *key = &got.credentials.sas.access_key;
    assert_int_equal(key->state, SECRET_SEALED);
    assert_string_equal(key->algorithm, ALG_MENDER);
    assert_false(key->has_key_id);
    assert_int_equal(key->len, sizeof blob);
    assert_memory_equal(key->data, blob, sizeof blob);
    integration_clear(&got);

    assert_int_equal(store_integration_get(f->st, "t2", &id2, &got, &err), IOT_OK);
    assert_int_equal(got.provider, PROVIDER_IOT_CORE);
    assert_string_equal(got.description, "aws one");
    assert_string_equal(got.credentials.aws.access_key_id, "AKIA");
    assert_string_equal(got.credentials.aws.region, "us-east-1");
    assert_string_equal(got.credentials.aws.device_policy_name, "pol");
    assert_int_equal(got.credentials.aws.secret_access_key.state, SECRET_SEALED);
    assert_false(got.credentials.aws.secret_access_key.has_key_id);
    integration_clear(&got);
}

static void test_reads_subtype3_id(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration got = {0};
    struct integration_list list = {0};
    struct uuid id;
    fill_uuid(&id, 3);
    raw_insert(f, "integrations",
               BCON_NEW("_id", BCON_BIN(BSON_SUBTYPE_UUID_DEPRECATED, id.b, 16), "provider",
                        BCON_UTF8("webhook"), "credentials", "{", "type", BCON_UTF8("http"), "http",
                        "{", "url", BCON_UTF8("https://x.example.com"), "}", "}", "tenant_id",
                        BCON_UTF8("t1")));

    assert_int_equal(store_integrations_list(f->st, "t1", &list, &err), IOT_OK);
    assert_int_equal(list.len, 1);
    assert_memory_equal(list.items[0].id.b, id.b, 16);
    assert_string_equal(list.items[0].credentials.http.url, "https://x.example.com");
    assert_int_equal(list.items[0].credentials.http.secret.state, SECRET_EMPTY);
    integration_list_clear(&list);

    assert_int_equal(store_integration_get(f->st, "t1", &id, &got, &err), IOT_OK);
    assert_memory_equal(got.id.b, id.b, 16);
    integration_clear(&got);
    assert_int_equal(store_integration_delete(f->st, "t1", &id, &err), IOT_OK);
    assert_int_equal(raw_count(f, "integrations", bson_new()), 0);

    /* a binary of the wrong length is not an id */
    raw_insert(f, "integrations",
               BCON_NEW("_id", BCON_BIN(BSON_SUBTYPE_UUID, id.b, 8), "provider",
                        BCON_UTF8("webhook"), "credentials", "{", "type", BCON_UTF8("http"), "http",
                        "{", "url", BCON_UTF8("https://x.example.com"), "}", "}", "tenant_id",
                        BCON_UTF8("t1")));
    assert_int_equal(store_integrations_list(f->st, "t1", &list, &err), IOT_ERR_INTERNAL);
    assert_null(list.items);
}

static void test_conflict_same_tenant(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration a, b, c;
    struct uuid id1, id2, id3;
    fill_uuid(&id1, 1);
    fill_uuid(&id2, 2);
    fill_uuid(&id3, 3);
    migrate_ok(f, STORE_MIGRATE_CHECK);

    make_sas(&a, &id1, "t1", false, false);
    make_http(&b, &id2, "t1", true);
    make_http(&c, &id3, "t2", true);
    create_and_check(f, &a);
    assert_int_equal(store_integration_create(f->st, &b, &err), IOT_ERR_CONFLICT);
    assert_string_equal(err.msg, "integration already exists");
    /* same id again */
    assert_int_equal(store_integration_create(f->st, &a, &err), IOT_ERR_CONFLICT);
    create_and_check(f, &c);
    assert_int_equal(raw_count(f, "integrations", BCON_NEW("tenant_id", BCON_UTF8("t1"))), 1);
    integration_clear(&a);
    integration_clear(&b);
    integration_clear(&c);
}

static void test_tenant_isolation(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration a, b, got = {0};
    struct integration_list list = {0};
    struct uuid id1, id2;
    fill_uuid(&id1, 1);
    fill_uuid(&id2, 2);
    migrate_ok(f, STORE_MIGRATE_CHECK);
    make_sas(&a, &id1, "t1", true, false);
    make_sas(&b, &id2, "t2", false, true);
    create_and_check(f, &a);
    create_and_check(f, &b);

    assert_int_equal(store_integrations_list(f->st, "t1", &list, &err), IOT_OK);
    assert_int_equal(list.len, 1);
    assert_memory_equal(list.items[0].id.b, id1.b, 16);
    integration_list_clear(&list);

    /* Mender's store answered any id with the tenant's integration; this one does not */
    assert_int_equal(store_integration_get(f->st, "t1", &id2, &got, &err), IOT_ERR_NOT_FOUND);
    assert_int_equal(store_integration_delete(f->st, "t1", &id2, &err), IOT_ERR_NOT_FOUND);
    assert_int_equal(store_integration_set_credentials(f->st, "t1", &id2, &a.credentials, &err),
                     IOT_ERR_NOT_FOUND);
    assert_int_equal(store_integration_get(f->st, "t2", &id2, &got, &err), IOT_OK);
    contract_assert_integration_equal(&got, &b);
    integration_clear(&got);
    integration_clear(&a);
    integration_clear(&b);
}

static void test_list_sorted_by_provider_then_id(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration in[3];
    struct integration_list list = {0};
    struct uuid hub_hi, hub_lo, hook;
    /* no migration: without the one-per-tenant index a tenant may hold several */
    fill_uuid(&hook, 1);
    fill_uuid(&hub_hi, 9);
    fill_uuid(&hub_lo, 2);
    make_http(&in[0], &hook, "t1", false);
    make_sas(&in[1], &hub_hi, "t1", false, false);
    make_sas(&in[2], &hub_lo, "t1", false, false);
    for (int i = 0; i < 3; i++)
        create_and_check(f, &in[i]);

    assert_int_equal(store_integrations_list(f->st, "t1", &list, &err), IOT_OK);
    assert_int_equal(list.len, 3);
    assert_memory_equal(list.items[0].id.b, hub_lo.b, 16);
    assert_memory_equal(list.items[1].id.b, hub_hi.b, 16);
    assert_memory_equal(list.items[2].id.b, hook.b, 16);
    integration_list_clear(&list);
    for (int i = 0; i < 3; i++)
        integration_clear(&in[i]);
}

struct visit {
    struct store *st;
    int seen;
    int stop_after;
    char tenants[64];
};

static enum iot_err visit_one(struct integration *in, void *ctx)
{
    struct visit *v = ctx;
    struct iot_error err = {0};
    v->seen++;
    strncat(v->tenants, in->tenant_id, sizeof v->tenants - strlen(v->tenants) - 1);
    /* what re-encrypt does: write the credentials back through the same store */
    if (in->credentials.type == CREDENTIAL_HTTP) {
        seal(&in->credentials.http.secret, "AES_256_GCM", true, 2, "rewritten");
        enum iot_err rc = store_integration_set_credentials(v->st, in->tenant_id, &in->id,
                                                            &in->credentials, &err);
        if (rc != IOT_OK)
            return rc;
    }
    return v->seen == v->stop_after ? IOT_ERR_CRYPTO : IOT_OK;
}

static void test_for_each_covers_all_tenants(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration in[3], got = {0};
    struct uuid ids[3];
    const char *const tenants[] = {"b", "a", "c"};
    migrate_ok(f, STORE_MIGRATE_CHECK);
    for (int i = 0; i < 3; i++) {
        fill_uuid(&ids[i], (uint8_t)(i + 1));
        make_http(&in[i], &ids[i], tenants[i], true);
        create_and_check(f, &in[i]);
    }

    struct visit v = {.st = f->st};
    assert_int_equal(store_integrations_for_each(f->st, visit_one, &v, &err), IOT_OK);
    assert_int_equal(v.seen, 3);
    assert_string_equal(v.tenants, "abc");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(store_integration_get(f->st, tenants[i], &ids[i], &got, &err), IOT_OK);
        assert_true(got.credentials.http.secret.has_key_id);
        assert_int_equal(got.credentials.http.secret.len, 9);
        assert_memory_equal(got.credentials.http.secret.data, "rewritten", 9);
        integration_clear(&got);
        integration_clear(&in[i]);
    }

    struct visit stop = {.st = f->st, .stop_after = 2};
    assert_int_equal(store_integrations_for_each(f->st, visit_one, &stop, &err), IOT_ERR_CRYPTO);
    assert_int_equal(stop.seen, 2);
}

static void test_devices_count_linked(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct uuid id1, id2, id3;
    int64_t n = -1;
    fill_uuid(&id1, 1);
    fill_uuid(&id2, 2);
    fill_uuid(&id3, 3);
    migrate_ok(f, STORE_MIGRATE_CHECK);
    raw_insert(f, "devices",
               BCON_NEW("_id", BCON_UTF8("dev-1"), "tenant_id", BCON_UTF8("t1"), "integration_ids",
                        "[", BCON_BIN(BSON_SUBTYPE_UUID, id1.b, 16), "]"));
    raw_insert(f, "devices",
               BCON_NEW("_id", BCON_UTF8("dev-2"), "tenant_id", BCON_UTF8("t1"), "integration_ids",
                        "[", BCON_BIN(BSON_SUBTYPE_UUID, id2.b, 16),
                        BCON_BIN(BSON_SUBTYPE_UUID, id1.b, 16), "]"));
    raw_insert(f, "devices",
               BCON_NEW("_id", BCON_UTF8("dev-3"), "tenant_id", BCON_UTF8("t2"), "integration_ids",
                        "[", BCON_BIN(BSON_SUBTYPE_UUID, id1.b, 16), "]"));
    raw_insert(f, "devices",
               BCON_NEW("_id", BCON_UTF8("dev-4"), "tenant_id", BCON_UTF8("t1"), "integration_ids",
                        "[", "]"));

    assert_int_equal(store_devices_count_linked(f->st, "t1", &id1, &n, &err), IOT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(store_devices_count_linked(f->st, "t1", &id2, &n, &err), IOT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(store_devices_count_linked(f->st, "t2", &id1, &n, &err), IOT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(store_devices_count_linked(f->st, "t2", &id2, &n, &err), IOT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(store_devices_count_linked(f->st, "t1", &id3, &n, &err), IOT_OK);
    assert_int_equal(n, 0);
}

static void test_tenant_delete(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration a, b;
    struct uuid id1, id2;
    fill_uuid(&id1, 1);
    fill_uuid(&id2, 2);
    migrate_ok(f, STORE_MIGRATE_CHECK);
    make_sas(&a, &id1, "t1", false, false);
    make_sas(&b, &id2, "t2", false, false);
    create_and_check(f, &a);
    create_and_check(f, &b);
    const char *const colls[] = {"devices", "log", "other"};
    for (int i = 0; i < 3; i++) {
        raw_insert(f, colls[i], BCON_NEW("_id", BCON_UTF8("x1"), "tenant_id", BCON_UTF8("t1")));
        raw_insert(f, colls[i], BCON_NEW("_id", BCON_UTF8("x2"), "tenant_id", BCON_UTF8("t2")));
        raw_insert(f, colls[i], BCON_NEW("_id", BCON_UTF8("x3"), "tenant_id", BCON_UTF8("t1")));
    }

    assert_int_equal(store_tenant_delete(f->st, "t1", &err), IOT_OK);
    const char *const all[] = {"integrations", "devices", "log", "other"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(raw_count(f, all[i], BCON_NEW("tenant_id", BCON_UTF8("t1"))), 0);
        assert_int_equal(raw_count(f, all[i], BCON_NEW("tenant_id", BCON_UTF8("t2"))), 1);
    }
    assert_int_equal(raw_count(f, "migration_info", bson_new()), 4);
    /* nothing left to delete is fine */
    assert_int_equal(store_tenant_delete(f->st, "t1", &err), IOT_OK);
    integration_clear(&a);
    integration_clear(&b);
}

static void test_events_expire(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    int64_t now = now_ms(), removed = -1;
    struct uuid ids[4];
    const int64_t expiry[] = {now - 86400000, now - 1, now + 1, now + 604800000};
    migrate_ok(f, STORE_MIGRATE_CHECK);
    for (int i = 0; i < 4; i++) {
        fill_uuid(&ids[i], (uint8_t)(i + 1));
        raw_insert(f, "log",
                   BCON_NEW("_id", BCON_BIN(BSON_SUBTYPE_UUID, ids[i].b, 16), "type",
                            BCON_UTF8("device-provisioned"), "data", "{", "id", BCON_UTF8("d"), "}",
                            "event_ts", BCON_DATE_TIME(expiry[i] - 1000), "expire_ts",
                            BCON_DATE_TIME(expiry[i]), "tenant_id", BCON_UTF8("t1")));
    }

    assert_int_equal(store_events_expire(f->st, now, &removed, &err), IOT_OK);
    assert_int_equal(removed, 2);
    assert_int_equal(raw_count(f, "log", bson_new()), 2);
    assert_int_equal(
        raw_count(f, "log", BCON_NEW("expire_ts", "{", "$gt", BCON_DATE_TIME(now), "}")), 2);
    assert_int_equal(store_events_expire(f->st, now, &removed, &err), IOT_OK);
    assert_int_equal(removed, 0);
}

static void test_refuses_unsealed_secrets(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration in, got = {0};
    struct uuid id;
    fill_uuid(&id, 1);
    make_sas(&in, &id, "t1", false, false);
    assert_int_equal(secret_set_plain(&in.credentials.sas.access_key, (const uint8_t *)"key", 3),
                     IOT_OK);
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_ERR_INTERNAL);
    assert_null(strstr(err.msg, "key"));
    assert_int_equal(raw_count(f, "integrations", bson_new()), 0);

    seal(&in.credentials.sas.access_key, ALG_MENDER, false, 0, "sealed");
    create_and_check(f, &in);
    struct credentials creds = {0};
    assert_int_equal(credentials_copy(&creds, &in.credentials), IOT_OK);
    assert_int_equal(secret_set_plain(&creds.sas.access_key, (const uint8_t *)"plain", 5), IOT_OK);
    assert_int_equal(store_integration_set_credentials(f->st, "t1", &id, &creds, &err),
                     IOT_ERR_INTERNAL);
    assert_int_equal(store_integration_get(f->st, "t1", &id, &got, &err), IOT_OK);
    contract_assert_integration_equal(&got, &in);
    integration_clear(&got);
    credentials_clear(&creds);
    integration_clear(&in);
}

int main(void)
{
    if (!getenv("IOT_MANAGER_TEST_MONGO_URL")) {
        fprintf(stderr, "IOT_MANAGER_TEST_MONGO_URL is not set: run through "
                        "scripts/with-mongo.sh\n");
        return 1;
    }
    log_set_level(LOG_LEVEL_WARN); /* the migrations' progress lines are noise here */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_requires_schema),
        cmocka_unit_test(test_unreachable_server_is_unavailable),
        cmocka_unit_test_setup_teardown(test_ping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_initialises_empty_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_outdated_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_refuses_unversioned_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crud_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reads_mender_documents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reads_subtype3_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conflict_same_tenant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_sorted_by_provider_then_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_for_each_covers_all_tenants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_devices_count_linked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_unsealed_secrets, setup, teardown),
        cmocka_unit_test_setup_teardown(contract_test_device_link_round_trip, setup_migrated,
                                        teardown),
        cmocka_unit_test_setup_teardown(contract_test_device_tenant_isolation, setup_migrated,
                                        teardown),
        cmocka_unit_test_setup_teardown(contract_test_device_integration_get, setup_migrated,
                                        teardown),
        cmocka_unit_test_setup_teardown(contract_test_devices_page, setup_migrated, teardown),
        cmocka_unit_test_setup_teardown(contract_test_integration_unlink_all, setup_migrated,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_device_raw_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(contract_test_events_insert_and_list, setup_migrated,
                                        teardown),
        cmocka_unit_test_setup_teardown(contract_test_event_data_round_trip, setup_migrated,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_log_raw_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reads_mender_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_device_link, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
