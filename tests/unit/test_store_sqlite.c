/* The SQLite store adapter against a real database file in a temporary directory. Raw SQL
 * through a second connection plays the other party: it seeds old schemas, devices and events,
 * holds the write lock, and looks at what the adapter wrote. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "iot-manager/store.h"
#include "support/store_contract.h"

/* Starts with the shared cases' view of it (see support/store_contract.h). */
struct fixture {
    struct store_contract contract; /* contract.st is st */
    char dir[64];
    char path[96];
    struct store *st;
};

/* ---- raw SQL helpers ---- */

static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fail_msg("raw_exec: %s: %s", sql, msg ? msg : "?");
    sqlite3_free(msg);
    sqlite3_close(db);
}

static int64_t raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

/* First column of the first row as a malloc'd string (NULL for SQL NULL). */
static char *raw_text(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    const char *t = (const char *)sqlite3_column_text(s, 0);
    char *copy = t ? strdup(t) : NULL;
    sqlite3_finalize(s);
    sqlite3_close(db);
    return copy;
}

static int64_t count_rows(const struct fixture *f, const char *table, const char *tenant)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE tenant_id = '%s'", table, tenant);
    return raw_int(f->path, sql);
}

/* ---- fixtures ---- */

/* The shared cases' raw check: device rows, and link rows in all. */
static void check_raw_devices(struct store_contract *c, size_t devices, size_t links)
{
    const struct fixture *f = (const struct fixture *)c;
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM devices"), devices);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM device_integrations"), links);
}

static int setup_unmigrated(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->contract.device_ids_per_tenant = true;
    f->contract.check_raw_devices = check_raw_devices;
    snprintf(f->dir, sizeof f->dir, "/tmp/iotm-sqlite-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/store.db", f->dir);
    *state = f;
    return 0;
}

static enum iot_err open_store(struct fixture *f, int busy_timeout_ms)
{
    struct store_sqlite_options opts = {.path = f->path, .busy_timeout_ms = busy_timeout_ms};
    struct iot_error err = {0};
    enum iot_err rc = store_sqlite_open(&opts, &f->st, &err);
    f->contract.st = f->st;
    if (rc != IOT_OK)
        print_error("open: %s\n", err.msg);
    return rc;
}

static int setup(void **state)
{
    setup_unmigrated(state);
    struct fixture *f = *state;
    assert_int_equal(open_store(f, 0), IOT_OK);
    struct iot_error err = {0};
    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_OK);
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_destroy(f->st);
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* ---- integration builders and comparison ---- */

static const uint8_t sealed_a[] = {0x01, 0x02, 0x03, 0xff}; /* base64 "AQID/w==" */
static const uint8_t sealed_b[] = {0xde, 0xad, 0xbe, 0xef, 0x00, 0x42, 0x99};

static void seal(struct secret *s, const char *alg, bool has_key_id, int32_t key_id,
                 const uint8_t *data, size_t len)
{
    assert_int_equal(secret_set_sealed(s, alg, has_key_id, key_id, data, len), IOT_OK);
}

static void make_sas(struct integration *in, const char *tenant, struct uuid id, bool full)
{
    memset(in, 0, sizeof *in);
    in->id = id;
    in->tenant_id = strdup(tenant);
    in->provider = PROVIDER_IOT_HUB;
    in->credentials.type = CREDENTIAL_SAS;
    in->credentials.sas.hostname = strdup("myhub.azure-devices.net:8443");
    if (full) {
        in->description = strdup("my hub \xc3\xa9");
        in->credentials.sas.gateway_hostname = strdup("gw.example.com");
        in->credentials.sas.name = strdup("iothubowner");
        in->credentials.sas.device_id = strdup("dev-1");
        in->credentials.sas.module_id = strdup("mod-1");
        seal(&in->credentials.sas.access_key, SECRET_ALG_GCM, true, -7, sealed_a, sizeof sealed_a);
    } else {
        seal(&in->credentials.sas.access_key, SECRET_ALG_LEGACY, false, 0, sealed_b,
             sizeof sealed_b);
    }
}

static void make_aws(struct integration *in, const char *tenant, struct uuid id)
{
    memset(in, 0, sizeof *in);
    in->id = id;
    in->tenant_id = strdup(tenant);
    in->provider = PROVIDER_IOT_CORE;
    in->credentials.type = CREDENTIAL_AWS;
    in->credentials.aws.access_key_id = strdup("AKIAEXAMPLE");
    in->credentials.aws.region = strdup("eu-west-1");
    in->credentials.aws.device_policy_name = strdup("policy");
    seal(&in->credentials.aws.secret_access_key, SECRET_ALG_GCM, true, 2147483647, sealed_b,
         sizeof sealed_b);
}

static void make_http(struct integration *in, const char *tenant, struct uuid id, bool with_secret)
{
    memset(in, 0, sizeof *in);
    in->id = id;
    in->tenant_id = strdup(tenant);
    in->provider = PROVIDER_WEBHOOK;
    in->credentials.type = CREDENTIAL_HTTP;
    in->credentials.http.url = strdup("https://example.com/hook?x=1");
    if (with_secret)
        seal(&in->credentials.http.secret, SECRET_ALG_GCM, true, 0, sealed_a, sizeof sealed_a);
}

/* Creates `in`, then reads it back by id and through the tenant's list. */
static void roundtrip(struct fixture *f, const struct integration *in)
{
    struct iot_error err = {0};
    assert_int_equal(store_integration_create(f->st, in, &err), IOT_OK);
    struct integration got;
    assert_int_equal(store_integration_get(f->st, in->tenant_id, &in->id, &got, &err), IOT_OK);
    contract_assert_integration_equal(&got, in);
    integration_clear(&got);
    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, in->tenant_id, &list, &err), IOT_OK);
    assert_int_equal(list.len, 1);
    contract_assert_integration_equal(&list.items[0], in);
    integration_list_clear(&list);
}

/* ---- tests ---- */

static void test_open_errors_and_dispatch(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct store *st = (struct store *)1;
    char bad[160];
    snprintf(bad, sizeof bad, "%s/missing-dir/store.db", f->dir);
    struct store_sqlite_options opts = {.path = bad};
    assert_int_equal(store_sqlite_open(&opts, &st, &err), IOT_ERR_UNAVAILABLE);
    assert_null(st);
    assert_non_null(strstr(err.msg, "missing-dir"));
    opts.path = "";
    assert_int_equal(store_sqlite_open(&opts, &st, &err), IOT_ERR_CONFIG);

    store_destroy(NULL);
    assert_int_equal(open_store(f, 0), IOT_OK);
    assert_string_equal(store_name(f->st), "sqlite");
    assert_int_equal(store_ping(f->st, &err), IOT_OK);
    /* the file exists, in WAL mode, before any migration */
    assert_int_equal(access(f->path, F_OK), 0);
    char *mode = raw_text(f->path, "PRAGMA journal_mode");
    assert_string_equal(mode, "wal");
    free(mode);
}

static void test_migrate_check_initialises_empty(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    assert_int_equal(open_store(f, 0), IOT_OK);
    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_OK);
    char *v = raw_text(f->path, "SELECT max(version) FROM schema_migrations");
    assert_string_equal(v, STORE_SCHEMA_VERSION);
    free(v);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_migrations"), 4);
    assert_true(raw_int(f->path, "SELECT min(applied_at) FROM schema_migrations") > 1600000000000);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                                      " AND name IN ('integrations', 'devices',"
                                      " 'device_integrations', 'events', 'schema_migrations')"),
                     5);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                                      " AND name IN ('integration_one_per_tenant',"
                                      " 'events_tenant_event_ts', 'events_expire_ts')"),
                     3);
    /* idempotent, in both modes */
    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_OK);
    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_APPLY, &err), IOT_OK);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_migrations"), 4);
    char *mode = raw_text(f->path, "PRAGMA journal_mode");
    assert_string_equal(mode, "wal");
    free(mode);
}

/* The schema as version 1.0.0 laid it down (no events, no one-per-tenant rule). */
static const char *const schema_1_0_0 =
    "CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL);"
    "INSERT INTO schema_migrations VALUES ('1.0.0', 1);"
    "CREATE TABLE integrations (id BLOB PRIMARY KEY CHECK (length(id) = 16),"
    "  tenant_id TEXT NOT NULL, provider TEXT NOT NULL, description TEXT,"
    "  credentials TEXT NOT NULL);"
    "CREATE TABLE devices (tenant_id TEXT NOT NULL, id TEXT NOT NULL,"
    "  PRIMARY KEY (tenant_id, id));"
    "CREATE TABLE device_integrations (tenant_id TEXT NOT NULL, device_id TEXT NOT NULL,"
    "  integration_id BLOB NOT NULL, PRIMARY KEY (tenant_id, device_id, integration_id),"
    "  FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE);";

static void test_migrate_outdated_refused_then_applied(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    raw_exec(f->path, schema_1_0_0);
    raw_exec(f->path, "INSERT INTO integrations VALUES (x'00112233445566778899aabbccddeeff',"
                      " 'old', 'webhook', 'legacy',"
                      " '{\"type\":\"http\",\"http\":{\"url\":\"https://old.example.com\"}}')");
    assert_int_equal(open_store(f, 0), IOT_OK);

    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_ERR_NEEDS_MIGRATION);
    char want[256];
    snprintf(want, sizeof want,
             "failed to apply migrations: db needs migration: %s has version 1.0.0, needs "
             "version 1.2.0",
             f->path);
    assert_string_equal(err.msg, want);
    /* refused means untouched */
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_migrations"), 1);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM sqlite_master WHERE name = 'events'"),
                     0);

    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_APPLY, &err), IOT_OK);
    char *v = raw_text(f->path, "SELECT max(version) FROM schema_migrations");
    assert_string_equal(v, "1.2.0");
    free(v);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_migrations"), 4);
    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_OK);

    /* the old row survived and reads back */
    struct uuid old_id;
    assert_int_equal(uuid_parse("00112233-4455-6677-8899-aabbccddeeff", &old_id, &err), IOT_OK);
    struct integration got;
    assert_int_equal(store_integration_get(f->st, "old", &old_id, &got, &err), IOT_OK);
    assert_int_equal(got.provider, PROVIDER_WEBHOOK);
    assert_string_equal(got.description, "legacy");
    assert_string_equal(got.credentials.http.url, "https://old.example.com");
    assert_int_equal(got.credentials.http.secret.state, SECRET_EMPTY);
    integration_clear(&got);
    /* 1.2.0 took effect: one integration per tenant */
    struct integration in;
    make_http(&in, "old", contract_uuid(9, 9), false);
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_ERR_CONFLICT);
    integration_clear(&in);
    /* 1.1.0 took effect */
    raw_exec(f->path, "INSERT INTO events VALUES (x'01', 'old', 't', NULL, 1, 2, NULL)");
}

static void test_migrate_outdated_but_empty_is_initialised(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    raw_exec(f->path, schema_1_0_0);
    assert_int_equal(open_store(f, 0), IOT_OK);
    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_OK);
    char *v = raw_text(f->path, "SELECT max(version) FROM schema_migrations");
    assert_string_equal(v, "1.2.0");
    free(v);
}

static void test_migrate_unversioned_data_refused(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    raw_exec(f->path, "CREATE TABLE devices (tenant_id TEXT NOT NULL, id TEXT NOT NULL,"
                      " PRIMARY KEY (tenant_id, id));"
                      "INSERT INTO devices VALUES ('t', 'd');");
    assert_int_equal(open_store(f, 0), IOT_OK);
    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_ERR_NEEDS_MIGRATION);
    assert_non_null(strstr(err.msg, "has version 0.0.0, needs version 1.2.0"));
    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_APPLY, &err), IOT_OK);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM devices"), 1);
}

static void test_migrate_newer_version_accepted(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    raw_exec(f->path, "INSERT INTO schema_migrations VALUES ('1.10.0', 5)");
    assert_int_equal(store_migrate(f->st, STORE_MIGRATE_CHECK, &err), IOT_OK);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_migrations"), 5);
}

static void test_roundtrip_every_kind(void **state)
{
    struct fixture *f = *state;
    struct integration in;
    make_sas(&in, "t-sas-full", contract_uuid(1, 1), true);
    roundtrip(f, &in);
    integration_clear(&in);
    make_sas(&in, "t-sas-min", contract_uuid(1, 2), false);
    roundtrip(f, &in);
    integration_clear(&in);
    make_aws(&in, "t-aws", contract_uuid(1, 3));
    roundtrip(f, &in);
    integration_clear(&in);
    make_http(&in, "t-http", contract_uuid(1, 4), true);
    roundtrip(f, &in);
    integration_clear(&in);
    make_http(&in, "", contract_uuid(1, 5), false); /* open-source tenant */
    roundtrip(f, &in);
    integration_clear(&in);

    /* an empty description is stored as absent */
    make_http(&in, "t-empty-desc", contract_uuid(1, 6), false);
    in.description = strdup("");
    struct iot_error err = {0};
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_OK);
    struct integration got;
    assert_int_equal(store_integration_get(f->st, "t-empty-desc", &in.id, &got, &err), IOT_OK);
    assert_null(got.description);
    integration_clear(&got);
    integration_clear(&in);

    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, "nobody", &list, &err), IOT_OK);
    assert_int_equal(list.len, 0);
    integration_list_clear(&list);
}

static void test_stored_layout(void **state)
{
    struct fixture *f = *state;
    struct integration in;
    make_sas(&in, "t1", contract_uuid(0xab, 0xcd), true);
    free(in.credentials.sas.gateway_hostname);
    in.credentials.sas.gateway_hostname = NULL;
    struct iot_error err = {0};
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_OK);
    integration_clear(&in);

    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM integrations WHERE"
                                      " id = x'ab5a5a5a5a5a5a5a5a5a5a5a5a5a5acd'"
                                      " AND tenant_id = 't1' AND provider = 'iot-hub'"),
                     1);
    char *text = raw_text(f->path, "SELECT credentials FROM integrations");
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    free(text);
    assert_non_null(root);
    assert_string_equal(json_string_value(json_object_get(root, "type")), "sas");
    json_t *cs = json_object_get(root, "connection_string");
    assert_string_equal(json_string_value(json_object_get(cs, "hostname")),
                        "myhub.azure-devices.net:8443");
    assert_null(json_object_get(cs, "gateway_hostname"));
    assert_string_equal(json_string_value(json_object_get(cs, "name")), "iothubowner");
    assert_string_equal(json_string_value(json_object_get(cs, "device_id")), "dev-1");
    assert_string_equal(json_string_value(json_object_get(cs, "module_id")), "mod-1");
    json_t *key = json_object_get(cs, "access_key");
    assert_string_equal(json_string_value(json_object_get(key, "algorithm")), SECRET_ALG_GCM);
    assert_int_equal(json_integer_value(json_object_get(key, "key_id")), -7);
    assert_string_equal(json_string_value(json_object_get(key, "data")), "AQID/w==");
    assert_null(json_object_get(root, "aws"));
    assert_null(json_object_get(root, "http"));
    json_decref(root);
}

static void test_conflict_one_per_tenant(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration a, b;
    make_sas(&a, "t1", contract_uuid(2, 1), true);
    make_http(&b, "t1", contract_uuid(2, 2), false);
    assert_int_equal(store_integration_create(f->st, &a, &err), IOT_OK);
    assert_int_equal(store_integration_create(f->st, &b, &err), IOT_ERR_CONFLICT);
    assert_string_equal(err.msg, "integration already exists");
    /* the same id in another tenant conflicts as well */
    free(b.tenant_id);
    b.tenant_id = strdup("t2");
    b.id = a.id;
    memset(&err, 0, sizeof err);
    assert_int_equal(store_integration_create(f->st, &b, &err), IOT_ERR_CONFLICT);
    assert_string_equal(err.msg, "integration already exists");
    assert_int_equal(count_rows(f, "integrations", "t1"), 1);
    assert_int_equal(count_rows(f, "integrations", "t2"), 0);
    integration_clear(&a);
    integration_clear(&b);
}

static void test_set_credentials_and_delete(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration in;
    make_sas(&in, "t1", contract_uuid(3, 1), true);
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_OK);

    /* wholesale replacement: optional fields that are now absent disappear */
    struct credentials repl = {.type = CREDENTIAL_SAS};
    repl.sas.hostname = strdup("other.azure-devices.net");
    seal(&repl.sas.access_key, SECRET_ALG_LEGACY, false, 0, sealed_b, sizeof sealed_b);
    assert_int_equal(store_integration_set_credentials(f->st, "t1", &in.id, &repl, &err), IOT_OK);
    struct integration got;
    assert_int_equal(store_integration_get(f->st, "t1", &in.id, &got, &err), IOT_OK);
    credentials_clear(&in.credentials);
    assert_int_equal(credentials_copy(&in.credentials, &repl), IOT_OK);
    contract_assert_integration_equal(&got, &in);
    integration_clear(&got);

    struct uuid unknown = contract_uuid(3, 2);
    memset(&err, 0, sizeof err);
    assert_int_equal(store_integration_set_credentials(f->st, "t1", &unknown, &repl, &err),
                     IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "integration not found");

    assert_int_equal(store_integration_delete(f->st, "t1", &in.id, &err), IOT_OK);
    memset(&err, 0, sizeof err);
    assert_int_equal(store_integration_get(f->st, "t1", &in.id, &got, &err), IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "integration not found");
    memset(&err, 0, sizeof err);
    assert_int_equal(store_integration_delete(f->st, "t1", &in.id, &err), IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "integration not found");
    /* the tenant may create a new one after deleting */
    in.id = contract_uuid(3, 3);
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_OK);
    credentials_clear(&repl);
    integration_clear(&in);
}

static void test_tenant_isolation(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration a;
    make_sas(&a, "tenant-a", contract_uuid(4, 1), true);
    assert_int_equal(store_integration_create(f->st, &a, &err), IOT_OK);

    struct integration got;
    assert_int_equal(store_integration_get(f->st, "tenant-b", &a.id, &got, &err),
                     IOT_ERR_NOT_FOUND);
    struct credentials repl = {.type = CREDENTIAL_HTTP};
    repl.http.url = strdup("https://evil.example.com");
    assert_int_equal(store_integration_set_credentials(f->st, "tenant-b", &a.id, &repl, &err),
                     IOT_ERR_NOT_FOUND);
    assert_int_equal(store_integration_delete(f->st, "tenant-b", &a.id, &err), IOT_ERR_NOT_FOUND);
    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, "tenant-b", &list, &err), IOT_OK);
    assert_int_equal(list.len, 0);
    int64_t n = -1;
    assert_int_equal(store_tenant_delete(f->st, "tenant-b", &err), IOT_OK);

    assert_int_equal(store_integration_get(f->st, "tenant-a", &a.id, &got, &err), IOT_OK);
    contract_assert_integration_equal(&got, &a);
    integration_clear(&got);
    assert_int_equal(store_devices_count_linked(f->st, "tenant-b", &a.id, &n, &err), IOT_OK);
    assert_int_equal(n, 0);
    credentials_clear(&repl);
    integration_clear(&a);
}

static void test_list_sorted_by_provider_then_id(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    /* lifting the one-per-tenant rule is a storage change only: the ordering must hold then */
    raw_exec(f->path, "DROP INDEX integration_one_per_tenant");
    struct integration in[4];
    make_http(&in[0], "t", contract_uuid(0x01, 0), false);
    make_sas(&in[1], "t", contract_uuid(0x02, 0), false);
    make_sas(&in[2], "t", contract_uuid(0x01, 0xff), true);
    make_aws(&in[3], "t", contract_uuid(0x03, 0));
    for (int i = 0; i < 4; i++)
        assert_int_equal(store_integration_create(f->st, &in[i], &err), IOT_OK);
    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, "t", &list, &err), IOT_OK);
    assert_int_equal(list.len, 4);
    contract_assert_integration_equal(&list.items[0], &in[3]); /* iot-core */
    contract_assert_integration_equal(&list.items[1], &in[2]); /* iot-hub 01.. */
    contract_assert_integration_equal(&list.items[2], &in[1]); /* iot-hub 02.. */
    contract_assert_integration_equal(&list.items[3], &in[0]); /* webhook */
    integration_list_clear(&list);
    for (int i = 0; i < 4; i++)
        integration_clear(&in[i]);
}

struct for_each_ctx {
    struct store *st;
    int calls;
    int fail_at;
};

static enum iot_err bump_key_id(struct integration *in, void *ctx_)
{
    struct for_each_ctx *ctx = ctx_;
    ctx->calls++;
    if (ctx->calls == ctx->fail_at)
        return IOT_ERR_CRYPTO;
    /* re-entrant use of the store, as re-encrypt does */
    struct secret *s = in->credentials.type == CREDENTIAL_SAS
                           ? &in->credentials.sas.access_key
                           : &in->credentials.aws.secret_access_key;
    s->has_key_id = true;
    s->key_id = 42;
    return store_integration_set_credentials(ctx->st, in->tenant_id, &in->id, &in->credentials,
                                             NULL);
}

static void test_for_each_all_tenants(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration a, b, c;
    make_sas(&a, "t1", contract_uuid(5, 1), false);
    make_aws(&b, "t2", contract_uuid(5, 2));
    make_sas(&c, "t3", contract_uuid(5, 3), true);
    assert_int_equal(store_integration_create(f->st, &a, &err), IOT_OK);
    assert_int_equal(store_integration_create(f->st, &b, &err), IOT_OK);
    assert_int_equal(store_integration_create(f->st, &c, &err), IOT_OK);

    struct for_each_ctx ctx = {.st = f->st};
    assert_int_equal(store_integrations_for_each(f->st, bump_key_id, &ctx, &err), IOT_OK);
    assert_int_equal(ctx.calls, 3);
    struct integration got;
    const struct integration *all[] = {&a, &b, &c};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(store_integration_get(f->st, all[i]->tenant_id, &all[i]->id, &got, &err),
                         IOT_OK);
        const struct secret *s = got.credentials.type == CREDENTIAL_SAS
                                     ? &got.credentials.sas.access_key
                                     : &got.credentials.aws.secret_access_key;
        assert_true(s->has_key_id);
        assert_int_equal(s->key_id, 42);
        integration_clear(&got);
    }
    /* the first error stops the walk and is returned */
    struct for_each_ctx stop = {.st = f->st, .fail_at = 2};
    assert_int_equal(store_integrations_for_each(f->st, bump_key_id, &stop, &err), IOT_ERR_CRYPTO);
    assert_int_equal(stop.calls, 2);
    integration_clear(&a);
    integration_clear(&b);
    integration_clear(&c);
}

static void seed_tenant(struct fixture *f, const char *tenant, const char *integration_hex)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "INSERT INTO devices VALUES ('%1$s', 'd1'), ('%1$s', 'd2'), ('%1$s', 'd3');"
             "INSERT INTO device_integrations VALUES ('%1$s', 'd1', x'%2$s'),"
             " ('%1$s', 'd2', x'%2$s'), ('%1$s', 'd3', x'00000000000000000000000000000000');"
             "INSERT INTO events VALUES (randomblob(16), '%1$s', 'device-provisioned', '{}',"
             " 10, 100, NULL), (randomblob(16), '%1$s', 'device-decommissioned', NULL, 20, 300,"
             " '[]');",
             tenant, integration_hex);
    raw_exec(f->path, sql);
}

#define INTEGRATION_6_HEX "065a5a5a5a5a5a5a5a5a5a5a5a5a5a01"

static void test_devices_count_linked(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct uuid id = contract_uuid(6, 1);
    seed_tenant(f, "ta", INTEGRATION_6_HEX);
    raw_exec(f->path,
             "INSERT INTO devices VALUES ('tb', 'd9');"
             "INSERT INTO device_integrations VALUES ('tb', 'd9', x'" INTEGRATION_6_HEX "')");
    int64_t n = -1;
    assert_int_equal(store_devices_count_linked(f->st, "ta", &id, &n, &err), IOT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(store_devices_count_linked(f->st, "tb", &id, &n, &err), IOT_OK);
    assert_int_equal(n, 1);
    struct uuid other = contract_uuid(6, 2);
    assert_int_equal(store_devices_count_linked(f->st, "ta", &other, &n, &err), IOT_OK);
    assert_int_equal(n, 0);
}

static void test_tenant_delete(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration a, b;
    make_sas(&a, "ta", contract_uuid(6, 1), true);
    make_aws(&b, "tb", contract_uuid(7, 1));
    assert_int_equal(store_integration_create(f->st, &a, &err), IOT_OK);
    assert_int_equal(store_integration_create(f->st, &b, &err), IOT_OK);
    seed_tenant(f, "ta", INTEGRATION_6_HEX);
    seed_tenant(f, "tb", "075a5a5a5a5a5a5a5a5a5a5a5a5a5a01");

    assert_int_equal(store_tenant_delete(f->st, "ta", &err), IOT_OK);
    static const char *const tables[] = {"integrations", "devices", "device_integrations",
                                         "events"};
    const int64_t tb_rows[] = {1, 3, 3, 2};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(count_rows(f, tables[i], "ta"), 0);
        assert_int_equal(count_rows(f, tables[i], "tb"), tb_rows[i]);
    }
    struct integration got;
    assert_int_equal(store_integration_get(f->st, "tb", &b.id, &got, &err), IOT_OK);
    contract_assert_integration_equal(&got, &b);
    integration_clear(&got);
    /* nothing left: still fine */
    assert_int_equal(store_tenant_delete(f->st, "ta", &err), IOT_OK);
    integration_clear(&a);
    integration_clear(&b);
}

static void test_events_expire(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    seed_tenant(f, "ta", INTEGRATION_6_HEX); /* expire_ts 100 and 300 */
    seed_tenant(f, "tb", INTEGRATION_6_HEX);
    int64_t removed = -1;
    assert_int_equal(store_events_expire(f->st, 100, &removed, &err), IOT_OK);
    assert_int_equal(removed, 0); /* strictly before */
    assert_int_equal(store_events_expire(f->st, 101, &removed, &err), IOT_OK);
    assert_int_equal(removed, 2);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM events WHERE expire_ts = 300"), 2);
    assert_int_equal(store_events_expire(f->st, 1000, &removed, &err), IOT_OK);
    assert_int_equal(removed, 2);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM events"), 0);
}

static void test_plaintext_secret_refused(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration in;
    make_sas(&in, "t1", contract_uuid(8, 1), true);
    static const uint8_t plain[] = "PLAINTEXT-KEY";
    assert_int_equal(secret_set_plain(&in.credentials.sas.access_key, plain, sizeof plain - 1),
                     IOT_OK);
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_ERR_INTERNAL);
    assert_null(strstr(err.msg, "PLAINTEXT"));
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM integrations"), 0);

    struct integration ok;
    make_http(&ok, "t1", contract_uuid(8, 2), true);
    assert_int_equal(store_integration_create(f->st, &ok, &err), IOT_OK);
    struct credentials bad = {.type = CREDENTIAL_HTTP};
    bad.http.url = strdup("https://x.example.com");
    assert_int_equal(secret_set_plain(&bad.http.secret, plain, sizeof plain - 1), IOT_OK);
    assert_int_equal(store_integration_set_credentials(f->st, "t1", &ok.id, &bad, &err),
                     IOT_ERR_INTERNAL);
    struct integration got;
    assert_int_equal(store_integration_get(f->st, "t1", &ok.id, &got, &err), IOT_OK);
    contract_assert_integration_equal(&got, &ok);
    integration_clear(&got);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM integrations WHERE"
                                      " instr(credentials, 'PLAINTEXT') > 0"),
                     0);
    credentials_clear(&bad);
    integration_clear(&ok);
    integration_clear(&in);
}

static void test_malformed_row_is_internal(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    raw_exec(f->path, "INSERT INTO integrations VALUES (x'" INTEGRATION_6_HEX "', 't', 'iot-hub',"
                      " NULL, '{\"type\":\"sas\",\"connection_string\":{\"access_key\":"
                      "{\"algorithm\":\"AES_256_GCM\",\"data\":\"not base64!\"}}}')");
    struct uuid id = contract_uuid(6, 1);
    struct integration got;
    assert_int_equal(store_integration_get(f->st, "t", &id, &got, &err), IOT_ERR_INTERNAL);
    assert_non_null(strstr(err.msg, "malformed credentials"));
    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, "t", &list, &err), IOT_ERR_INTERNAL);
    assert_int_equal(list.len, 0);
    assert_null(list.items);
}

static void test_events_stored_layout(void **state)
{
    struct fixture *f = *state;
    struct event_record ev;
    contract_make_event(&ev, "t1", contract_uuid(0x17, 1), 42, "{\"id\":\"d\"}");
    contract_add_status(&ev, contract_uuid(0x17, 0xa), true, NULL, 0);
    contract_add_status(&ev, contract_uuid(0x17, 0xb), false, "boom", 502);
    contract_insert_event(f->st, &ev);
    event_record_clear(&ev);
    char *status = raw_text(f->path, "SELECT status FROM events");
    assert_string_equal(status, "[{\"integration_id\":\"175a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a0a\","
                                "\"success\":true},{\"integration_id\":"
                                "\"175a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a0b\",\"success\":false,"
                                "\"err\":\"boom\",\"status\":502}]");
    free(status);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM events WHERE"
                                      " id = x'175a5a5a5a5a5a5a5a5a5a5a5a5a5a01' AND"
                                      " tenant_id = 't1' AND type = 'device-provisioned' AND"
                                      " data = '{\"id\":\"d\"}' AND event_ts = 42 AND"
                                      " expire_ts = 604800042"),
                     1);
    /* no status: NULL */
    contract_make_event(&ev, "t1", contract_uuid(0x17, 2), 43, NULL);
    contract_insert_event(f->st, &ev);
    event_record_clear(&ev);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM events WHERE status IS NULL AND"
                                      " data IS NULL"),
                     1);
}

static void test_busy_is_unavailable_and_readers_proceed(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    store_destroy(f->st);
    f->st = NULL;
    assert_int_equal(open_store(f, 50), IOT_OK);
    struct integration in;
    make_http(&in, "t1", contract_uuid(10, 1), false);
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_OK);

    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    /* WAL: a held write lock does not stop readers */
    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, "t1", &list, &err), IOT_OK);
    assert_int_equal(list.len, 1);
    integration_list_clear(&list);
    /* writers give up after the busy timeout with a 503-class error */
    struct integration in2;
    make_http(&in2, "t2", contract_uuid(10, 2), false);
    assert_int_equal(store_integration_create(f->st, &in2, &err), IOT_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "database is locked"));
    assert_int_equal(store_tenant_delete(f->st, "t1", &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(store_integration_delete(f->st, "t1", &in.id, &err), IOT_ERR_UNAVAILABLE);
    const struct uuid link = contract_uuid(10, 3);
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &link, &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(store_device_unlink(f->st, "t1", "dev-1", &link, &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(store_device_delete(f->st, "t1", "dev-1", &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(store_integration_unlink_all(f->st, "t1", &link, &err), IOT_ERR_UNAVAILABLE);
    struct event_record ev;
    contract_make_event(&ev, "t1", contract_uuid(10, 4), 1, "{}");
    assert_int_equal(store_event_insert(f->st, &ev, &err), IOT_ERR_UNAVAILABLE);
    /* readers of devices and events proceed too */
    contract_assert_no_device(f->st, "t1", "dev-1");
    struct event_list events = {0};
    assert_int_equal(store_events_list(f->st, "t1", NULL, 0, 0, &events, &err), IOT_OK);
    assert_int_equal(events.len, 0);
    struct device_list devices = {0};
    assert_int_equal(store_devices_page(f->st, "", "", 10, &devices, &err), IOT_OK);
    assert_int_equal(devices.len, 0);
    assert_int_equal(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    /* nothing half-done, and the store works again */
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM devices"), 0);
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &link, &err), IOT_OK);
    contract_assert_device(f->st, "t1", "dev-1", &link, 1);
    contract_insert_event(f->st, &ev);
    event_record_clear(&ev);
    assert_int_equal(count_rows(f, "integrations", "t1"), 1);
    assert_int_equal(store_integration_create(f->st, &in2, &err), IOT_OK);
    integration_clear(&in);
    integration_clear(&in2);
}

#define THREADS    4
#define PER_THREAD 40

struct worker {
    struct store *st;
    int index;
    int errors;
    char first_error[IOT_ERROR_MSG_MAX];
};

static void worker_error(struct worker *w, const struct iot_error *err)
{
    if (w->errors++ == 0)
        snprintf(w->first_error, sizeof w->first_error, "%s", err->msg);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        char tenant[32];
        snprintf(tenant, sizeof tenant, "w%d-t%d", w->index, i);
        struct integration in;
        make_sas(&in, tenant, contract_uuid((uint8_t)(w->index + 1), (uint8_t)i), i % 2 == 0);
        struct iot_error err = {0};
        if (store_integration_create(w->st, &in, &err) != IOT_OK)
            worker_error(w, &err);
        struct integration_list list = {0};
        if (store_integrations_list(w->st, tenant, &list, &err) != IOT_OK || list.len != 1)
            worker_error(w, &err);
        integration_list_clear(&list);
        struct integration got;
        if (store_integration_get(w->st, tenant, &in.id, &got, &err) != IOT_OK)
            worker_error(w, &err);
        integration_clear(&got);
        integration_clear(&in);
    }
    return NULL;
}

static enum iot_err count_one(struct integration *in, void *ctx)
{
    (void)in;
    (*(int *)ctx)++;
    return IOT_OK;
}

static void test_concurrent_threads(void **state)
{
    struct fixture *f = *state;
    pthread_t tid[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.st = f->st, .index = i};
        assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        if (w[i].errors)
            fail_msg("worker %d: %d errors, first: %s", i, w[i].errors, w[i].first_error);
    }
    int n = 0;
    struct iot_error err = {0};
    assert_int_equal(store_integrations_for_each(f->st, count_one, &n, &err), IOT_OK);
    assert_int_equal(n, THREADS * PER_THREAD);
    char *mode = raw_text(f->path, "PRAGMA journal_mode");
    assert_string_equal(mode, "wal");
    free(mode);
}

#define LINKS_PER_THREAD 10

static void test_concurrent_device_link(void **state)
{
    struct fixture *f = *state;
    struct store *stores[THREADS];
    for (int i = 0; i < THREADS; i++)
        stores[i] = f->st;
    contract_link_concurrently(stores, THREADS, LINKS_PER_THREAD);
    contract_assert_all_linked(f->st, THREADS, LINKS_PER_THREAD);
    check_raw_devices(&f->contract, 1, THREADS * LINKS_PER_THREAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_errors_and_dispatch, setup_unmigrated, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_check_initialises_empty, setup_unmigrated,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_migrate_outdated_refused_then_applied,
                                        setup_unmigrated, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_outdated_but_empty_is_initialised,
                                        setup_unmigrated, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_unversioned_data_refused, setup_unmigrated,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_migrate_newer_version_accepted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_every_kind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stored_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conflict_one_per_tenant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_credentials_and_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_sorted_by_provider_then_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_for_each_all_tenants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_devices_count_linked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plaintext_secret_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_row_is_internal, setup, teardown),
        cmocka_unit_test_setup_teardown(contract_test_device_link_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(contract_test_device_tenant_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(contract_test_device_integration_get, setup, teardown),
        cmocka_unit_test_setup_teardown(contract_test_devices_page, setup, teardown),
        cmocka_unit_test_setup_teardown(contract_test_integration_unlink_all, setup, teardown),
        cmocka_unit_test_setup_teardown(contract_test_events_insert_and_list, setup, teardown),
        cmocka_unit_test_setup_teardown(contract_test_event_data_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_stored_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_is_unavailable_and_readers_proceed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_device_link, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
