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

struct fixture {
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

static int setup_unmigrated(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
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

static struct uuid uuid_of(uint8_t first, uint8_t last)
{
    struct uuid u;
    memset(u.b, 0x5a, sizeof u.b);
    u.b[0] = first;
    u.b[15] = last;
    return u;
}

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

static void assert_str_eq_opt(const char *a, const char *b)
{
    if (!a || !b)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void assert_secret_equal(const struct secret *a, const struct secret *b)
{
    assert_int_equal(a->state, b->state);
    if (a->state == SECRET_EMPTY)
        return;
    assert_string_equal(a->algorithm, b->algorithm);
    assert_int_equal(a->has_key_id, b->has_key_id);
    if (a->has_key_id)
        assert_int_equal(a->key_id, b->key_id);
    assert_int_equal(a->len, b->len);
    assert_memory_equal(a->data, b->data, a->len);
}

static void assert_integration_equal(const struct integration *a, const struct integration *b)
{
    assert_memory_equal(a->id.b, b->id.b, sizeof a->id.b);
    assert_string_equal(a->tenant_id, b->tenant_id);
    assert_int_equal(a->provider, b->provider);
    assert_str_eq_opt(a->description, b->description);
    const struct credentials *x = &a->credentials, *y = &b->credentials;
    assert_int_equal(x->type, y->type);
    assert_str_eq_opt(x->sas.hostname, y->sas.hostname);
    assert_str_eq_opt(x->sas.gateway_hostname, y->sas.gateway_hostname);
    assert_str_eq_opt(x->sas.name, y->sas.name);
    assert_str_eq_opt(x->sas.device_id, y->sas.device_id);
    assert_str_eq_opt(x->sas.module_id, y->sas.module_id);
    assert_secret_equal(&x->sas.access_key, &y->sas.access_key);
    assert_str_eq_opt(x->aws.access_key_id, y->aws.access_key_id);
    assert_str_eq_opt(x->aws.region, y->aws.region);
    assert_str_eq_opt(x->aws.device_policy_name, y->aws.device_policy_name);
    assert_secret_equal(&x->aws.secret_access_key, &y->aws.secret_access_key);
    assert_str_eq_opt(x->http.url, y->http.url);
    assert_secret_equal(&x->http.secret, &y->http.secret);
}

/* Creates `in`, then reads it back by id and through the tenant's list. */
static void roundtrip(struct fixture *f, const struct integration *in)
{
    struct iot_error err = {0};
    assert_int_equal(store_integration_create(f->st, in, &err), IOT_OK);
    struct integration got;
    assert_int_equal(store_integration_get(f->st, in->tenant_id, &in->id, &got, &err), IOT_OK);
    assert_integration_equal(&got, in);
    integration_clear(&got);
    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, in->tenant_id, &list, &err), IOT_OK);
    assert_int_equal(list.len, 1);
    assert_integration_equal(&list.items[0], in);
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
    make_http(&in, "old", uuid_of(9, 9), false);
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
    make_sas(&in, "t-sas-full", uuid_of(1, 1), true);
    roundtrip(f, &in);
    integration_clear(&in);
    make_sas(&in, "t-sas-min", uuid_of(1, 2), false);
    roundtrip(f, &in);
    integration_clear(&in);
    make_aws(&in, "t-aws", uuid_of(1, 3));
    roundtrip(f, &in);
    integration_clear(&in);
    make_http(&in, "t-http", uuid_of(1, 4), true);
    roundtrip(f, &in);
    integration_clear(&in);
    make_http(&in, "", uuid_of(1, 5), false); /* open-source tenant */
    roundtrip(f, &in);
    integration_clear(&in);

    /* an empty description is stored as absent */
    make_http(&in, "t-empty-desc", uuid_of(1, 6), false);
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
    make_sas(&in, "t1", uuid_of(0xab, 0xcd), true);
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
    make_sas(&a, "t1", uuid_of(2, 1), true);
    make_http(&b, "t1", uuid_of(2, 2), false);
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
    make_sas(&in, "t1", uuid_of(3, 1), true);
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
    assert_integration_equal(&got, &in);
    integration_clear(&got);

    struct uuid unknown = uuid_of(3, 2);
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
    in.id = uuid_of(3, 3);
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_OK);
    credentials_clear(&repl);
    integration_clear(&in);
}

static void test_tenant_isolation(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration a;
    make_sas(&a, "tenant-a", uuid_of(4, 1), true);
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
    assert_integration_equal(&got, &a);
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
    make_http(&in[0], "t", uuid_of(0x01, 0), false);
    make_sas(&in[1], "t", uuid_of(0x02, 0), false);
    make_sas(&in[2], "t", uuid_of(0x01, 0xff), true);
    make_aws(&in[3], "t", uuid_of(0x03, 0));
    for (int i = 0; i < 4; i++)
        assert_int_equal(store_integration_create(f->st, &in[i], &err), IOT_OK);
    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, "t", &list, &err), IOT_OK);
    assert_int_equal(list.len, 4);
    assert_integration_equal(&list.items[0], &in[3]); /* iot-core */
    assert_integration_equal(&list.items[1], &in[2]); /* iot-hub 01.. */
    assert_integration_equal(&list.items[2], &in[1]); /* iot-hub 02.. */
    assert_integration_equal(&list.items[3], &in[0]); /* webhook */
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
    make_sas(&a, "t1", uuid_of(5, 1), false);
    make_aws(&b, "t2", uuid_of(5, 2));
    make_sas(&c, "t3", uuid_of(5, 3), true);
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
    struct uuid id = uuid_of(6, 1);
    seed_tenant(f, "ta", INTEGRATION_6_HEX);
    raw_exec(f->path,
             "INSERT INTO devices VALUES ('tb', 'd9');"
             "INSERT INTO device_integrations VALUES ('tb', 'd9', x'" INTEGRATION_6_HEX "')");
    int64_t n = -1;
    assert_int_equal(store_devices_count_linked(f->st, "ta", &id, &n, &err), IOT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(store_devices_count_linked(f->st, "tb", &id, &n, &err), IOT_OK);
    assert_int_equal(n, 1);
    struct uuid other = uuid_of(6, 2);
    assert_int_equal(store_devices_count_linked(f->st, "ta", &other, &n, &err), IOT_OK);
    assert_int_equal(n, 0);
}

static void test_tenant_delete(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct integration a, b;
    make_sas(&a, "ta", uuid_of(6, 1), true);
    make_aws(&b, "tb", uuid_of(7, 1));
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
    assert_integration_equal(&got, &b);
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
    make_sas(&in, "t1", uuid_of(8, 1), true);
    static const uint8_t plain[] = "PLAINTEXT-KEY";
    assert_int_equal(secret_set_plain(&in.credentials.sas.access_key, plain, sizeof plain - 1),
                     IOT_OK);
    assert_int_equal(store_integration_create(f->st, &in, &err), IOT_ERR_INTERNAL);
    assert_null(strstr(err.msg, "PLAINTEXT"));
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM integrations"), 0);

    struct integration ok;
    make_http(&ok, "t1", uuid_of(8, 2), true);
    assert_int_equal(store_integration_create(f->st, &ok, &err), IOT_OK);
    struct credentials bad = {.type = CREDENTIAL_HTTP};
    bad.http.url = strdup("https://x.example.com");
    assert_int_equal(secret_set_plain(&bad.http.secret, plain, sizeof plain - 1), IOT_OK);
    assert_int_equal(store_integration_set_credentials(f->st, "t1", &ok.id, &bad, &err),
                     IOT_ERR_INTERNAL);
    struct integration got;
    assert_int_equal(store_integration_get(f->st, "t1", &ok.id, &got, &err), IOT_OK);
    assert_integration_equal(&got, &ok);
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
    struct uuid id = uuid_of(6, 1);
    struct integration got;
    assert_int_equal(store_integration_get(f->st, "t", &id, &got, &err), IOT_ERR_INTERNAL);
    assert_non_null(strstr(err.msg, "malformed credentials"));
    struct integration_list list = {0};
    assert_int_equal(store_integrations_list(f->st, "t", &list, &err), IOT_ERR_INTERNAL);
    assert_int_equal(list.len, 0);
    assert_null(list.items);
}

/* ---- device records ---- */

static void assert_device(struct store *st, const char *tenant, const char *id,
                          const struct uuid *want, size_t n)
{
    struct iot_error err = {0};
    struct device_record d;
    enum iot_err rc = store_device_get(st, tenant, id, &d, &err);
    if (rc != IOT_OK)
        fail_msg("device_get %s/%s: %s", tenant, id, err.msg);
    assert_string_equal(d.tenant_id, tenant);
    assert_string_equal(d.id, id);
    assert_int_equal(d.n_integrations, n);
    for (size_t i = 0; i < n; i++)
        assert_memory_equal(d.integration_ids[i].b, want[i].b, 16);
    device_record_clear(&d);
}

static void assert_no_device(struct store *st, const char *tenant, const char *id)
{
    struct iot_error err = {0};
    struct device_record d;
    assert_int_equal(store_device_get(st, tenant, id, &d, &err), IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "device not found");
    assert_null(d.id);
    assert_null(d.integration_ids);
}

static int64_t linked(struct store *st, const char *tenant, const struct uuid *id)
{
    struct iot_error err = {0};
    int64_t n = -1;
    assert_int_equal(store_devices_count_linked(st, tenant, id, &n, &err), IOT_OK);
    return n;
}

static void test_device_link_round_trip(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    const struct uuid a = uuid_of(0x11, 1), b = uuid_of(0x11, 2);
    const struct uuid ab[] = {a, b};

    assert_no_device(f->st, "t1", "dev-1");
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_device(f->st, "t1", "dev-1", &a, 1);
    /* idempotent, and the links keep the order they were made in */
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_device(f->st, "t1", "dev-1", &a, 1);
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &b, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_device(f->st, "t1", "dev-1", ab, 2);
    assert_int_equal(linked(f->st, "t1", &a), 1);
    assert_int_equal(linked(f->st, "t1", &b), 1);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM device_integrations"), 2);

    /* unlink: idempotent, and the record stays even when empty */
    assert_int_equal(store_device_unlink(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_device(f->st, "t1", "dev-1", &b, 1);
    assert_int_equal(store_device_unlink(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_unlink(f->st, "t1", "dev-1", &b, &err), IOT_OK);
    assert_device(f->st, "t1", "dev-1", NULL, 0);
    assert_int_equal(linked(f->st, "t1", &a), 0);
    /* unlinking an unknown device neither fails nor creates it */
    assert_int_equal(store_device_unlink(f->st, "t1", "dev-none", &a, &err), IOT_OK);
    assert_no_device(f->st, "t1", "dev-none");

    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_delete(f->st, "t1", "dev-1", &err), IOT_OK);
    assert_no_device(f->st, "t1", "dev-1");
    assert_int_equal(linked(f->st, "t1", &a), 0);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM device_integrations"), 0);
    assert_int_equal(store_device_delete(f->st, "t1", "dev-1", &err), IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "device not found");
    /* a new link after the delete starts a new record */
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &b, &err), IOT_OK);
    assert_device(f->st, "t1", "dev-1", &b, 1);
}

static void test_device_tenant_isolation(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    const struct uuid a = uuid_of(0x12, 1), b = uuid_of(0x12, 2);

    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "t2", "dev-2", &b, &err), IOT_OK);
    assert_no_device(f->st, "t2", "dev-1");
    assert_no_device(f->st, "t1", "dev-2");
    assert_int_equal(store_device_delete(f->st, "t2", "dev-1", &err), IOT_ERR_NOT_FOUND);
    assert_int_equal(store_device_unlink(f->st, "t2", "dev-1", &a, &err), IOT_OK);
    assert_device(f->st, "t1", "dev-1", &a, 1);
    assert_int_equal(linked(f->st, "t1", &a), 1);
    assert_int_equal(linked(f->st, "t2", &a), 0);
    assert_int_equal(linked(f->st, "t2", &b), 1);
    assert_int_equal(store_device_delete(f->st, "t1", "dev-1", &err), IOT_OK);
    assert_device(f->st, "t2", "dev-2", &b, 1);

    /* here device ids are per tenant: the same id in another tenant is another record */
    assert_int_equal(store_device_link(f->st, "t1", "dev-2", &a, &err), IOT_OK);
    assert_device(f->st, "t1", "dev-2", &a, 1);
    assert_device(f->st, "t2", "dev-2", &b, 1);

    /* tenant deletion takes the records and their links */
    assert_int_equal(store_tenant_delete(f->st, "t1", &err), IOT_OK);
    assert_no_device(f->st, "t1", "dev-2");
    assert_device(f->st, "t2", "dev-2", &b, 1);
}

static void assert_page_item(const struct device_list *page, size_t i, const char *tenant,
                             const char *id, size_t n_links)
{
    assert_true(i < page->len);
    assert_string_equal(page->items[i].tenant_id, tenant);
    assert_string_equal(page->items[i].id, id);
    assert_int_equal(page->items[i].n_integrations, n_links);
}

static void test_devices_page(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    const struct uuid a = uuid_of(0x13, 1), b = uuid_of(0x13, 2);
    struct device_list page = {0};
    /* inserted out of order; ids chosen so that id order alone would interleave tenants */
    assert_int_equal(store_device_link(f->st, "tb", "dev-0", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "ta", "dev-d", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "", "dev-b", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "ta", "dev-c", &b, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "ta", "dev-c", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "", "dev-a", &a, &err), IOT_OK);
    assert_int_equal(store_device_unlink(f->st, "", "dev-a", &a, &err), IOT_OK);

    assert_int_equal(store_devices_page(f->st, "", "", 2, &page, &err), IOT_OK);
    assert_int_equal(page.len, 2);
    assert_page_item(&page, 0, "", "dev-a", 0);
    assert_page_item(&page, 1, "", "dev-b", 1);
    device_list_clear(&page);

    assert_int_equal(store_devices_page(f->st, "", "dev-b", 2, &page, &err), IOT_OK);
    assert_int_equal(page.len, 2);
    assert_page_item(&page, 0, "ta", "dev-c", 2);
    assert_memory_equal(page.items[0].integration_ids[0].b, b.b, 16);
    assert_memory_equal(page.items[0].integration_ids[1].b, a.b, 16);
    assert_page_item(&page, 1, "ta", "dev-d", 1);
    device_list_clear(&page);

    assert_int_equal(store_devices_page(f->st, "ta", "dev-d", 10, &page, &err), IOT_OK);
    assert_int_equal(page.len, 1);
    assert_page_item(&page, 0, "tb", "dev-0", 1);
    device_list_clear(&page);

    /* a position between records, and past the end */
    assert_int_equal(store_devices_page(f->st, "ta", "dev-c0", 10, &page, &err), IOT_OK);
    assert_int_equal(page.len, 2);
    assert_page_item(&page, 0, "ta", "dev-d", 1);
    device_list_clear(&page);
    assert_int_equal(store_devices_page(f->st, "tb", "dev-0", 10, &page, &err), IOT_OK);
    assert_int_equal(page.len, 0);
    assert_null(page.items);

    assert_int_equal(store_devices_page(f->st, "", "", 100, &page, &err), IOT_OK);
    assert_int_equal(page.len, 5);
    assert_page_item(&page, 4, "tb", "dev-0", 1);
    device_list_clear(&page);
    assert_int_equal(store_devices_page(f->st, "", "", 0, &page, &err), IOT_OK);
    assert_int_equal(page.len, 0);
}

static void test_integration_unlink_all(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    const struct uuid a = uuid_of(0x14, 1), b = uuid_of(0x14, 2);
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &b, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "t1", "dev-2", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "t1", "dev-3", &b, &err), IOT_OK);
    assert_int_equal(store_device_link(f->st, "t2", "dev-4", &a, &err), IOT_OK);
    assert_int_equal(linked(f->st, "t1", &a), 2);

    assert_int_equal(store_integration_unlink_all(f->st, "t1", &a, &err), IOT_OK);
    assert_device(f->st, "t1", "dev-1", &b, 1);
    assert_device(f->st, "t1", "dev-2", NULL, 0);
    assert_device(f->st, "t1", "dev-3", &b, 1);
    assert_device(f->st, "t2", "dev-4", &a, 1);
    assert_int_equal(linked(f->st, "t1", &a), 0);
    assert_int_equal(linked(f->st, "t1", &b), 2);
    assert_int_equal(linked(f->st, "t2", &a), 1);
    /* nothing left to unlink */
    assert_int_equal(store_integration_unlink_all(f->st, "t1", &a, &err), IOT_OK);
    assert_int_equal(store_integration_unlink_all(f->st, "nobody", &a, &err), IOT_OK);
}

/* ---- events ---- */

static void make_event(struct event_record *ev, const char *tenant, struct uuid id, int64_t ts,
                       const char *data_json)
{
    memset(ev, 0, sizeof *ev);
    ev->id = id;
    ev->tenant_id = strdup(tenant);
    ev->type = strdup("device-provisioned");
    if (data_json) {
        json_error_t jerr;
        ev->data = json_loads(data_json, 0, &jerr);
        if (!ev->data)
            fail_msg("bad test JSON: %s", jerr.text);
    }
    ev->event_ts_ms = ts;
    ev->expire_ts_ms = ts + 604800000;
}

static void add_status(struct event_record *ev, struct uuid integration, bool success,
                       const char *error, int code)
{
    struct delivery_status *grown = realloc(ev->statuses, (ev->n_statuses + 1) * sizeof *grown);
    assert_non_null(grown);
    ev->statuses = grown;
    struct delivery_status *ds = &ev->statuses[ev->n_statuses++];
    ds->integration_id = integration;
    ds->success = success;
    ds->error = error ? strdup(error) : NULL;
    ds->status_code = code;
}

static void assert_event_equal(const struct event_record *got, const struct event_record *want)
{
    assert_memory_equal(got->id.b, want->id.b, 16);
    assert_string_equal(got->tenant_id, want->tenant_id);
    assert_string_equal(got->type, want->type);
    assert_int_equal(got->event_ts_ms, want->event_ts_ms);
    assert_int_equal(got->expire_ts_ms, want->expire_ts_ms);
    if (!want->data || !got->data) {
        assert_ptr_equal(got->data, want->data);
    } else if (!json_equal(got->data, want->data)) {
        char *g = json_dumps(got->data, JSON_SORT_KEYS),
             *w = json_dumps(want->data, JSON_SORT_KEYS);
        fail_msg("data differs:\n got  %s\n want %s", g, w);
    }
    assert_int_equal(got->n_statuses, want->n_statuses);
    for (size_t i = 0; i < want->n_statuses; i++) {
        const struct delivery_status *g = &got->statuses[i], *w = &want->statuses[i];
        assert_memory_equal(g->integration_id.b, w->integration_id.b, 16);
        assert_int_equal(g->success, w->success);
        assert_str_eq_opt(g->error, w->error);
        assert_int_equal(g->status_code, w->status_code);
    }
}

static void insert_ok(struct store *st, const struct event_record *ev)
{
    struct iot_error err = {0};
    enum iot_err rc = store_event_insert(st, ev, &err);
    if (rc != IOT_OK)
        fail_msg("event_insert: %s", err.msg);
}

/* The ids of the listed events, by their last byte, as a string ("3,1,2"). */
static void list_ids(struct store *st, const char *tenant, const struct uuid *integration,
                     int64_t skip, int64_t limit, char *out, size_t cap)
{
    struct iot_error err = {0};
    struct event_list list = {0};
    enum iot_err rc = store_events_list(st, tenant, integration, skip, limit, &list, &err);
    if (rc != IOT_OK)
        fail_msg("events_list: %s", err.msg);
    out[0] = '\0';
    for (size_t i = 0; i < list.len; i++) {
        char one[8];
        snprintf(one, sizeof one, "%s%u", i ? "," : "", list.items[i].id.b[15]);
        strncat(out, one, cap - strlen(out) - 1);
    }
    event_list_clear(&list);
}

static void test_events_insert_and_list(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    const struct uuid a = uuid_of(0x15, 0xa), b = uuid_of(0x15, 0xb);
    struct event_record ev[7];
    /* last id byte: 1..7; event_ts: 5 and 6 share a time, so the id breaks the tie */
    const int64_t ts[] = {1000, 3000, 2000, 5000, 4000, 4000, 6000};
    for (int i = 0; i < 7; i++) {
        make_event(&ev[i], i == 6 ? "t2" : "t1", uuid_of(0x15, (uint8_t)(i + 1)), ts[i],
                   "{\"id\":\"dev-1\"}");
    }
    add_status(&ev[0], a, true, NULL, 0);
    add_status(&ev[1], b, false, "boom", 502);
    add_status(&ev[2], b, true, NULL, 200);
    add_status(&ev[2], a, false, "failed to connect device to integration", 1500);
    add_status(&ev[6], a, true, NULL, 0);
    /* the one with the smaller id goes in last */
    for (int i = 6; i >= 0; i--)
        insert_ok(f->st, &ev[i]);
    assert_int_equal(store_event_insert(f->st, &ev[0], &err), IOT_ERR_CONFLICT);

    char ids[64];
    list_ids(f->st, "t1", NULL, 0, 0, ids, sizeof ids);
    assert_string_equal(ids, "4,5,6,2,3,1");
    list_ids(f->st, "t1", NULL, 0, 2, ids, sizeof ids);
    assert_string_equal(ids, "4,5");
    list_ids(f->st, "t1", NULL, 2, 2, ids, sizeof ids);
    assert_string_equal(ids, "6,2");
    list_ids(f->st, "t1", NULL, 4, 2, ids, sizeof ids);
    assert_string_equal(ids, "3,1");
    list_ids(f->st, "t1", NULL, 6, 2, ids, sizeof ids);
    assert_string_equal(ids, "");
    list_ids(f->st, "t2", NULL, 0, 20, ids, sizeof ids);
    assert_string_equal(ids, "7");
    list_ids(f->st, "nobody", NULL, 0, 20, ids, sizeof ids);
    assert_string_equal(ids, "");

    /* only the events with a delivery status for the integration */
    list_ids(f->st, "t1", &a, 0, 20, ids, sizeof ids);
    assert_string_equal(ids, "3,1");
    list_ids(f->st, "t1", &b, 0, 20, ids, sizeof ids);
    assert_string_equal(ids, "2,3");
    list_ids(f->st, "t1", &b, 1, 20, ids, sizeof ids);
    assert_string_equal(ids, "3");
    const struct uuid c = uuid_of(0x15, 0xc);
    list_ids(f->st, "t1", &c, 0, 20, ids, sizeof ids);
    assert_string_equal(ids, "");
    list_ids(f->st, "t2", &b, 0, 20, ids, sizeof ids);
    assert_string_equal(ids, "");

    /* the whole record comes back */
    struct event_list list = {0};
    assert_int_equal(store_events_list(f->st, "t1", NULL, 0, 0, &list, &err), IOT_OK);
    assert_int_equal(list.len, 6);
    assert_event_equal(&list.items[3], &ev[1]);
    assert_event_equal(&list.items[4], &ev[2]);
    assert_event_equal(&list.items[5], &ev[0]);
    event_list_clear(&list);

    /* expiry: everything whose expiry is before now goes, in every tenant */
    int64_t removed = -1;
    assert_int_equal(store_events_expire(f->st, 3000 + 604800000, &removed, &err), IOT_OK);
    assert_int_equal(removed, 2);
    list_ids(f->st, "t1", NULL, 0, 0, ids, sizeof ids);
    assert_string_equal(ids, "4,5,6,2");
    assert_int_equal(store_events_expire(f->st, 6001 + 604800000, &removed, &err), IOT_OK);
    assert_int_equal(removed, 5);
    list_ids(f->st, "t1", NULL, 0, 0, ids, sizeof ids);
    assert_string_equal(ids, "");
    list_ids(f->st, "t2", NULL, 0, 0, ids, sizeof ids);
    assert_string_equal(ids, "");
    for (int i = 0; i < 7; i++)
        event_record_clear(&ev[i]);
}

/* A provisioning event as deviceauth sends it, with both time fields. */
#define EVENT_DATA_IN                                                                              \
    "{\"id\":\"dev-1\",\"status\":\"accepted\",\"auth_sets\":[{\"id\":\"as-1\","                   \
    "\"device_id\":\"dev-1\",\"identity_data\":{\"mac\":\"00:11:22\",\"n\":5,\"big\":"             \
    "5000000000,\"f\":1.5,\"on\":true,\"none\":null,\"list\":[1,\"x\",{\"ts\":\"keep\"}]},"        \
    "\"pubkey\":\"-----BEGIN PUBLIC KEY-----\\nMIIB\\n-----END PUBLIC KEY-----\\n\","              \
    "\"status\":\"\",\"ts\":\"2024-05-06T09:08:09.123456789+02:00\"},{\"id\":\"as-2\","            \
    "\"ts\":\"not a time\"},{\"id\":\"as-3\",\"ts\":\"2024-05-06T07:08:09Z\"}],"                   \
    "\"created_ts\":\"2024-05-06T07:08:09.120Z\",\"ts\":\"2024-05-06T09:08:09+02:00\","            \
    "\"updated_ts\":\"2024-05-06T09:08:09+02:00\"}"
/* What it reads back as: the time fields in UTC, to the millisecond, trailing zeros trimmed;
 * everything else as it was. */
#define EVENT_DATA_OUT                                                                             \
    "{\"id\":\"dev-1\",\"status\":\"accepted\",\"auth_sets\":[{\"id\":\"as-1\","                   \
    "\"device_id\":\"dev-1\",\"identity_data\":{\"mac\":\"00:11:22\",\"n\":5,\"big\":"             \
    "5000000000,\"f\":1.5,\"on\":true,\"none\":null,\"list\":[1,\"x\",{\"ts\":\"keep\"}]},"        \
    "\"pubkey\":\"-----BEGIN PUBLIC KEY-----\\nMIIB\\n-----END PUBLIC KEY-----\\n\","              \
    "\"status\":\"\",\"ts\":\"2024-05-06T07:08:09.123Z\"},{\"id\":\"as-2\","                       \
    "\"ts\":\"not a time\"},{\"id\":\"as-3\",\"ts\":\"2024-05-06T07:08:09Z\"}],"                   \
    "\"created_ts\":\"2024-05-06T07:08:09.12Z\",\"ts\":\"2024-05-06T09:08:09+02:00\","             \
    "\"updated_ts\":\"2024-05-06T09:08:09+02:00\"}"

static void test_event_data_round_trip(void **state)
{
    struct fixture *f = *state;
    struct iot_error err = {0};
    struct event_record in, want, bare;
    make_event(&in, "t1", uuid_of(0x16, 1), 1714979289123, EVENT_DATA_IN);
    make_event(&want, "t1", uuid_of(0x16, 1), 1714979289123, EVENT_DATA_OUT);
    add_status(&in, uuid_of(0x16, 0xa), false, "boom", 502);
    add_status(&want, uuid_of(0x16, 0xa), false, "boom", 502);
    make_event(&bare, "t1", uuid_of(0x16, 2), 1, NULL);
    free(bare.type);
    bare.type = strdup("device-decommissioned");
    /* a JSON null is no data */
    struct event_record nulled;
    make_event(&nulled, "t1", uuid_of(0x16, 3), 0, NULL);
    nulled.data = json_null();
    insert_ok(f->st, &in);
    insert_ok(f->st, &bare);
    insert_ok(f->st, &nulled);

    struct event_list list = {0};
    assert_int_equal(store_events_list(f->st, "t1", NULL, 0, 0, &list, &err), IOT_OK);
    assert_int_equal(list.len, 3);
    assert_event_equal(&list.items[0], &want);
    assert_event_equal(&list.items[1], &bare);
    assert_null(list.items[2].data);
    /* member order is kept too */
    char *text = json_dumps(list.items[0].data, JSON_COMPACT);
    assert_string_equal(text, EVENT_DATA_OUT);
    free(text);
    event_list_clear(&list);
    event_record_clear(&in);
    event_record_clear(&want);
    event_record_clear(&bare);
    event_record_clear(&nulled);
}

static void test_events_stored_layout(void **state)
{
    struct fixture *f = *state;
    struct event_record ev;
    make_event(&ev, "t1", uuid_of(0x17, 1), 42, "{\"id\":\"d\"}");
    add_status(&ev, uuid_of(0x17, 0xa), true, NULL, 0);
    add_status(&ev, uuid_of(0x17, 0xb), false, "boom", 502);
    insert_ok(f->st, &ev);
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
    make_event(&ev, "t1", uuid_of(0x17, 2), 43, NULL);
    insert_ok(f->st, &ev);
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
    make_http(&in, "t1", uuid_of(10, 1), false);
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
    make_http(&in2, "t2", uuid_of(10, 2), false);
    assert_int_equal(store_integration_create(f->st, &in2, &err), IOT_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "database is locked"));
    assert_int_equal(store_tenant_delete(f->st, "t1", &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(store_integration_delete(f->st, "t1", &in.id, &err), IOT_ERR_UNAVAILABLE);
    const struct uuid link = uuid_of(10, 3);
    assert_int_equal(store_device_link(f->st, "t1", "dev-1", &link, &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(store_device_unlink(f->st, "t1", "dev-1", &link, &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(store_device_delete(f->st, "t1", "dev-1", &err), IOT_ERR_UNAVAILABLE);
    assert_int_equal(store_integration_unlink_all(f->st, "t1", &link, &err), IOT_ERR_UNAVAILABLE);
    struct event_record ev;
    make_event(&ev, "t1", uuid_of(10, 4), 1, "{}");
    assert_int_equal(store_event_insert(f->st, &ev, &err), IOT_ERR_UNAVAILABLE);
    /* readers of devices and events proceed too */
    assert_no_device(f->st, "t1", "dev-1");
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
    assert_device(f->st, "t1", "dev-1", &link, 1);
    insert_ok(f->st, &ev);
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
        make_sas(&in, tenant, uuid_of((uint8_t)(w->index + 1), (uint8_t)i), i % 2 == 0);
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

struct linker {
    struct store *st;
    int index;
    int errors;
    char first_error[IOT_ERROR_MSG_MAX];
};

static void *linker_main(void *arg)
{
    struct linker *l = arg;
    for (int i = 0; i < LINKS_PER_THREAD; i++) {
        struct uuid id = uuid_of((uint8_t)(0x20 + l->index), (uint8_t)i);
        struct iot_error err = {0};
        if (store_device_link(l->st, "t1", "dev-shared", &id, &err) != IOT_OK && l->errors++ == 0)
            snprintf(l->first_error, sizeof l->first_error, "%s", err.msg);
    }
    return NULL;
}

static void test_concurrent_device_link(void **state)
{
    struct fixture *f = *state;
    pthread_t tid[THREADS];
    struct linker l[THREADS];
    for (int i = 0; i < THREADS; i++) {
        l[i] = (struct linker){.st = f->st, .index = i};
        assert_int_equal(pthread_create(&tid[i], NULL, linker_main, &l[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        if (l[i].errors)
            fail_msg("linker %d: %d errors, first: %s", i, l[i].errors, l[i].first_error);
    }
    struct iot_error err = {0};
    struct device_record d;
    assert_int_equal(store_device_get(f->st, "t1", "dev-shared", &d, &err), IOT_OK);
    assert_int_equal(d.n_integrations, THREADS * LINKS_PER_THREAD);
    for (int t = 0; t < THREADS; t++) {
        for (int i = 0; i < LINKS_PER_THREAD; i++) {
            struct uuid want = uuid_of((uint8_t)(0x20 + t), (uint8_t)i);
            bool found = false;
            for (size_t k = 0; k < d.n_integrations; k++)
                found = found || uuid_equal(&d.integration_ids[k], &want);
            assert_true(found);
        }
    }
    device_record_clear(&d);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM devices"), 1);
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
        cmocka_unit_test_setup_teardown(test_device_link_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_tenant_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_devices_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_integration_unlink_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_insert_and_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_data_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_stored_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_is_unavailable_and_readers_proceed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_device_link, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
