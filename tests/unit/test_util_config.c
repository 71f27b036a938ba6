/* Configuration: defaults, the YAML file (Mender's lower-case keys), IOT_MANAGER_* variables
 * winning over the file, and the rules that stop loading with IOT_ERR_CONFIG and a message naming
 * the variable and the rule. Every test starts and ends with no IOT_MANAGER_* in the environment,
 * and files live in a fresh temporary directory. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "iot-manager/config.h"

extern char **environ;

struct fixture {
    char dir[64];
    char file[128]; /* dir/config.yaml, written by write_yaml */
    char missing[128];
    struct config cfg;
    struct iot_error err;
};

static void clear_iotm_env(void)
{
    /* unsetenv() edits environ, so restart the scan after each removal */
    for (;;) {
        char name[256] = "";
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "IOT_MANAGER_", 12) == 0) {
                size_t n = strcspn(*e, "=");
                if (n >= sizeof name)
                    n = sizeof name - 1;
                memcpy(name, *e, n);
                name[n] = '\0';
                break;
            }
        }
        if (!name[0])
            return;
        assert_int_equal(unsetenv(name), 0);
    }
}

static int setup(void **state)
{
    clear_iotm_env();
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/iotm-config-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->file, sizeof f->file, "%s/config.yaml", f->dir);
    snprintf(f->missing, sizeof f->missing, "%s/absent.yaml", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    clear_iotm_env();
    unlink(f->file);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void write_yaml(struct fixture *f, const char *text)
{
    FILE *fp = fopen(f->file, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

/* Loads without a file (a given but absent, non-explicit path: independent of /etc). */
static enum iot_err load_env_only(struct fixture *f)
{
    memset(&f->err, 0, sizeof f->err);
    return config_load(&f->cfg, f->missing, false, &f->err);
}

static enum iot_err load_file(struct fixture *f)
{
    memset(&f->err, 0, sizeof f->err);
    return config_load(&f->cfg, f->file, true, &f->err);
}

/* setenv() that must work. */
static void set_env(const char *name, const char *value)
{
    assert_int_equal(setenv(name, value, 1), 0);
}

/* Sets one variable, then loads without a file, which must succeed. */
static void load_with(struct fixture *f, const char *name, const char *value)
{
    set_env(name, value);
    if (load_env_only(f) != IOT_OK)
        fail_msg("%s=\"%s\": %s", name, value, f->err.msg);
}

static void expect_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
}

static void test_defaults(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load_env_only(f), IOT_OK);
    const struct config *c = &f->cfg;
    assert_string_equal(c->listen, ":8080");
    assert_string_equal(c->mongo_url, "");
    assert_string_equal(c->mongo_dbname, "iot_manager");
    assert_string_equal(c->mongo_username, "");
    assert_string_equal(c->mongo_password, "");
    assert_false(c->mongo_ssl);
    assert_false(c->mongo_ssl_skipverify);
    assert_string_equal(c->sqlite_path, "/var/lib/iot-manager/iot-manager.db");
    assert_string_equal(c->workflows_url, "http://mender-workflows-server:8080");
    assert_string_equal(c->deviceauth_url, "http://mender-device-auth:8080");
    assert_string_equal(c->aes_encryption_key, "");
    assert_string_equal(c->aes_encryption_fallback_key, "");
    assert_string_equal(c->aes_encryption_key_file, "");
    assert_string_equal(c->secrets_format_text, "aes-256-gcm");
    assert_int_equal(c->secrets_format, SECRETS_FORMAT_GCM);
    assert_string_equal(c->domain_whitelist, "*.azure-devices.net");
    assert_false(c->domain_skipverify);
    assert_int_equal(c->event_exp_timeout, 604800);
    assert_int_equal(c->webhooks_timeout_seconds, 10);
    assert_false(c->debug_log);
    assert_int_equal(c->request_size_limit, 1048576);
    assert_int_equal(c->http_threads, 0);
    assert_int_equal(c->http_connection_limit, 1024);
    assert_int_equal(c->http_idle_timeout, 60);
    assert_int_equal(c->shutdown_timeout, 10);
    assert_int_equal(c->store_timeout_ms, 5000);
    assert_int_equal(c->event_sweep_interval, 300);
    assert_string_equal(c->log_level, "info");
}

/* With no path the default file is used when present, and its absence is fine. */
static void test_default_path_absent_is_fine(void **state)
{
    struct fixture *f = *state;
    struct stat st;
    if (stat(CONFIG_DEFAULT_FILE, &st) == 0)
        skip(); /* this machine has a real config file; the case cannot be checked here */
    assert_int_equal(config_load(&f->cfg, NULL, false, &f->err), IOT_OK);
    assert_string_equal(f->cfg.listen, ":8080");
}

static void test_explicit_missing_path_fails(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(config_load(&f->cfg, f->missing, true, &f->err), IOT_ERR_CONFIG);
    assert_int_equal(f->err.code, IOT_ERR_CONFIG);
    expect_contains(f->err.msg, f->missing);
    expect_contains(f->err.msg, "No such file or directory");
}

enum kind { K_STR, K_INT, K_BOOL };

struct override {
    const char *env;
    const char *value;
    enum kind kind;
    size_t offset;
    const char *want_str; /* K_STR: expected text (NULL: same as value) */
    int64_t want_int;     /* K_INT, K_BOOL (0/1) */
};

#define S(field, env, value)                                                                       \
    {                                                                                              \
        env, value, K_STR, offsetof(struct config, field), NULL, 0                                 \
    }
#define SX(field, env, value, want)                                                                \
    {                                                                                              \
        env, value, K_STR, offsetof(struct config, field), want, 0                                 \
    }
#define I(field, env, value, want)                                                                 \
    {                                                                                              \
        env, value, K_INT, offsetof(struct config, field), NULL, want                              \
    }
#define B(field, env, value, want)                                                                 \
    {                                                                                              \
        env, value, K_BOOL, offsetof(struct config, field), NULL, want                             \
    }

static const struct override overrides[] = {
    S(listen, "IOT_MANAGER_LISTEN", "127.0.0.1:9090"),
    S(mongo_url, "IOT_MANAGER_MONGO_URL", "mongodb://db.example:27017"),
    S(mongo_dbname, "IOT_MANAGER_MONGO_DBNAME", "other_db"),
    S(mongo_username, "IOT_MANAGER_MONGO_USERNAME", "alice"),
    S(mongo_password, "IOT_MANAGER_MONGO_PASSWORD", "pw"),
    B(mongo_ssl, "IOT_MANAGER_MONGO_SSL", "true", 1),
    B(mongo_ssl_skipverify, "IOT_MANAGER_MONGO_SSL_SKIPVERIFY", "1", 1),
    S(sqlite_path, "IOT_MANAGER_SQLITE_PATH", "/data/x.db"),
    S(workflows_url, "IOT_MANAGER_WORKFLOWS_URL", "https://wf:1"),
    S(deviceauth_url, "IOT_MANAGER_DEVICEAUTH_URL", "https://da:2"),
    S(aes_encryption_key, "IOT_MANAGER_AES_ENCRYPTION_KEY", "a2V5"),
    S(aes_encryption_fallback_key, "IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY", "b2xk"),
    S(aes_encryption_key_file, "IOT_MANAGER_AES_ENCRYPTION_KEY_FILE", "/k/file"),
    S(secrets_format_text, "IOT_MANAGER_SECRETS_FORMAT", "mender"),
    S(domain_whitelist, "IOT_MANAGER_DOMAIN_WHITELIST", "*.azure-devices.net *.azure-devices.cn"),
    B(domain_skipverify, "IOT_MANAGER_DOMAIN_SKIPVERIFY", "TRUE", 1),
    I(event_exp_timeout, "IOT_MANAGER_EVENT_EXP_TIMEOUT", "3600", 3600),
    I(webhooks_timeout_seconds, "IOT_MANAGER_WEBHOOKS_TIMEOUT_SECONDS", "0", 0),
    B(debug_log, "IOT_MANAGER_DEBUG_LOG", "true", 1),
    I(request_size_limit, "IOT_MANAGER_REQUEST_SIZE_LIMIT", "2048", 2048),
    I(http_threads, "IOT_MANAGER_HTTP_THREADS", "4", 4),
    I(http_connection_limit, "IOT_MANAGER_HTTP_CONNECTION_LIMIT", "10", 10),
    I(http_idle_timeout, "IOT_MANAGER_HTTP_IDLE_TIMEOUT", "5", 5),
    I(shutdown_timeout, "IOT_MANAGER_SHUTDOWN_TIMEOUT", "0", 0),
    I(store_timeout_ms, "IOT_MANAGER_STORE_TIMEOUT_MS", "100", 100),
    I(event_sweep_interval, "IOT_MANAGER_EVENT_SWEEP_INTERVAL", "86400", 86400),
    S(log_level, "IOT_MANAGER_LOG_LEVEL", "warn"),
};

static void check_override(const struct config *cfg, const struct override *o)
{
    const char *field = (const char *)cfg + o->offset;
    switch (o->kind) {
    case K_STR:
        assert_string_equal(field, o->want_str ? o->want_str : o->value);
        break;
    case K_INT: {
        int64_t v;
        memcpy(&v, field, sizeof v);
        assert_int_equal(v, o->want_int);
        break;
    }
    case K_BOOL: {
        bool b;
        memcpy(&b, field, sizeof b);
        assert_int_equal(b, o->want_int != 0);
        break;
    }
    }
}

/* Each variable alone changes its own setting; then all of them at once. */
static void test_every_env_overrides(void **state)
{
    struct fixture *f = *state;
    struct config dflt;
    assert_int_equal(load_env_only(f), IOT_OK);
    dflt = f->cfg;
    for (size_t i = 0; i < sizeof overrides / sizeof overrides[0]; i++) {
        const struct override *o = &overrides[i];
        load_with(f, o->env, o->value);
        check_override(&f->cfg, o);
        /* the value differs from the default, so the override is really observed */
        assert_memory_not_equal((const char *)&f->cfg + o->offset, (const char *)&dflt + o->offset,
                                o->kind == K_STR   ? strlen(o->value) + 1
                                : o->kind == K_INT ? sizeof(int64_t)
                                                   : sizeof(bool));
        assert_int_equal(unsetenv(o->env), 0);
    }
    for (size_t i = 0; i < sizeof overrides / sizeof overrides[0]; i++)
        set_env(overrides[i].env, overrides[i].value);
    assert_int_equal(load_env_only(f), IOT_OK);
    for (size_t i = 0; i < sizeof overrides / sizeof overrides[0]; i++) {
        if (strcmp(overrides[i].env, "IOT_MANAGER_LOG_LEVEL") == 0)
            continue; /* debug_log=true wins over it, see test_debug_log_forces_debug */
        check_override(&f->cfg, &overrides[i]);
    }
    assert_int_equal(f->cfg.secrets_format, SECRETS_FORMAT_MENDER);
}

static void test_yaml_file(void **state)
{
    struct fixture *f = *state;
    write_yaml(f, "# as Mender's config.yaml\n"
                  "listen: \"0.0.0.0:8081\"\n"
                  "mongo_url: mongodb://mongo.example:27017\n"
                  "mongo_dbname: iotm\n"
                  "mongo_ssl: true\n"
                  "workflows_url: http://wf.example:8080\n"
                  "deviceauth_url: http://da.example:8080\n"
                  "aes_encryption_key: c2VjcmV0\n"
                  "domain_whitelist: \"*.azure-devices.net *.azure-devices.us\"\n"
                  "event_exp_timeout: 120\n"
                  "webhooks_timeout_seconds: 30\n"
                  "request_size_limit: 4096\n"
                  "secrets_format: MENDER\n"
                  "log_level: error\n"
                  "unknown_key: ignored\n");
    assert_int_equal(load_file(f), IOT_OK);
    const struct config *c = &f->cfg;
    assert_string_equal(c->listen, "0.0.0.0:8081");
    assert_string_equal(c->mongo_url, "mongodb://mongo.example:27017");
    assert_string_equal(c->mongo_dbname, "iotm");
    assert_true(c->mongo_ssl);
    assert_string_equal(c->workflows_url, "http://wf.example:8080");
    assert_string_equal(c->deviceauth_url, "http://da.example:8080");
    assert_string_equal(c->aes_encryption_key, "c2VjcmV0");
    assert_string_equal(c->domain_whitelist, "*.azure-devices.net *.azure-devices.us");
    assert_int_equal(c->event_exp_timeout, 120);
    assert_int_equal(c->webhooks_timeout_seconds, 30);
    assert_int_equal(c->request_size_limit, 4096);
    assert_int_equal(c->secrets_format, SECRETS_FORMAT_MENDER);
    assert_string_equal(c->log_level, "error");
    /* untouched keys keep their defaults */
    assert_string_equal(c->sqlite_path, "/var/lib/iot-manager/iot-manager.db");
    assert_int_equal(c->http_connection_limit, 1024);
}

static void test_env_wins_over_yaml(void **state)
{
    struct fixture *f = *state;
    write_yaml(f, "listen: \":8081\"\n"
                  "event_exp_timeout: 120\n"
                  "mongo_ssl: true\n"
                  "domain_whitelist: \"*.from-file.net\"\n");
    set_env("IOT_MANAGER_LISTEN", ":9999");
    set_env("IOT_MANAGER_EVENT_EXP_TIMEOUT", "77");
    set_env("IOT_MANAGER_MONGO_SSL", "false");
    assert_int_equal(load_file(f), IOT_OK);
    assert_string_equal(f->cfg.listen, ":9999");
    assert_int_equal(f->cfg.event_exp_timeout, 77);
    assert_false(f->cfg.mongo_ssl);
    assert_string_equal(f->cfg.domain_whitelist, "*.from-file.net"); /* no variable: file */

    /* an invalid file value is not rescued by the variable: the file is rejected first */
    write_yaml(f, "event_exp_timeout: soon\n");
    assert_int_equal(load_file(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, "event_exp_timeout");
}

static void test_yaml_sequence_whitelist(void **state)
{
    struct fixture *f = *state;
    write_yaml(f, "domain_whitelist:\n"
                  "  - \"*.azure-devices.net\"\n"
                  "  - \"*.azure-devices.cn\"\n"
                  "  - hub.example.com\n");
    assert_int_equal(load_file(f), IOT_OK);
    assert_string_equal(f->cfg.domain_whitelist,
                        "*.azure-devices.net *.azure-devices.cn hub.example.com");
    char buf[CONFIG_LIST_MAX];
    const char *items[8];
    assert_int_equal(config_whitelist(&f->cfg, buf, items, 8), 3);
    assert_string_equal(items[0], "*.azure-devices.net");
    assert_string_equal(items[1], "*.azure-devices.cn");
    assert_string_equal(items[2], "hub.example.com");

    write_yaml(f, "domain_whitelist: [\"a.example\", \"*.b.example\"]\n");
    assert_int_equal(load_file(f), IOT_OK);
    assert_string_equal(f->cfg.domain_whitelist, "a.example *.b.example");
}

static void test_yaml_empty_file_gives_defaults(void **state)
{
    struct fixture *f = *state;
    write_yaml(f, "");
    assert_int_equal(load_file(f), IOT_OK);
    assert_string_equal(f->cfg.listen, ":8080");
    write_yaml(f, "# only a comment\n");
    assert_int_equal(load_file(f), IOT_OK);
    assert_int_equal(f->cfg.event_exp_timeout, 604800);
}

static void test_yaml_invalid_reports_line(void **state)
{
    struct fixture *f = *state;
    write_yaml(f, "listen: \":8080\"\n"
                  "mongo_dbname: x\n"
                  "event_exp_timeout: [1, 2\n"
                  "debug_log: true\n");
    assert_int_equal(load_file(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, f->file);
    expect_contains(f->err.msg, "line ");
    /* libyaml notices the unclosed flow sequence at line 4 */
    expect_contains(f->err.msg, "line 4");

    write_yaml(f, "listen: :8080\n"
                  "  bad indentation: here\n");
    assert_int_equal(load_file(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, "line 2");

    write_yaml(f, "- a\n- b\n");
    assert_int_equal(load_file(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, "mapping");

    write_yaml(f, "listen:\n  host: x\n");
    assert_int_equal(load_file(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, "\"listen\"");
    expect_contains(f->err.msg, "scalar");
}

struct bad_value {
    const char *env;
    const char *value;
    const char *rule; /* a piece of the message naming the rule */
};

/* As viper does, an empty variable counts as unset: the default (or the file's value) stays. */
static void test_empty_env_counts_as_unset(void **state)
{
    struct fixture *f = *state;
    clear_iotm_env();
    set_env("IOT_MANAGER_EVENT_EXP_TIMEOUT", "");
    set_env("IOT_MANAGER_DOMAIN_SKIPVERIFY", "");
    set_env("IOT_MANAGER_LISTEN", "");
    assert_int_equal(load_env_only(f), IOT_OK);
    assert_int_equal(f->cfg.event_exp_timeout, 604800);
    assert_false(f->cfg.domain_skipverify);
    assert_string_equal(f->cfg.listen, ":8080");
    clear_iotm_env();
}

static void test_bad_values_stop_loading(void **state)
{
    struct fixture *f = *state;
    static const struct bad_value bad[] = {
        {"IOT_MANAGER_EVENT_EXP_TIMEOUT", "1w", "must be an integer from 1 to 2147483647"},
        {"IOT_MANAGER_EVENT_EXP_TIMEOUT", "0", "must be an integer from 1 to"},
        {"IOT_MANAGER_EVENT_EXP_TIMEOUT", "2147483648", "from 1 to 2147483647"},
        {"IOT_MANAGER_EVENT_EXP_TIMEOUT", "99999999999999999999", "must be an integer"},
        {"IOT_MANAGER_EVENT_EXP_TIMEOUT", "12.5", "must be an integer"},
        {"IOT_MANAGER_REQUEST_SIZE_LIMIT", "0", "must be an integer from 1 to 1073741824"},
        {"IOT_MANAGER_REQUEST_SIZE_LIMIT", "1073741825", "from 1 to 1073741824"},
        {"IOT_MANAGER_REQUEST_SIZE_LIMIT", "-1", "must be an integer"},
        {"IOT_MANAGER_WEBHOOKS_TIMEOUT_SECONDS", "3601", "from 0 to 3600"},
        {"IOT_MANAGER_HTTP_THREADS", "257", "from 0 to 256"},
        {"IOT_MANAGER_HTTP_CONNECTION_LIMIT", "0", "from 1 to 65536"},
        {"IOT_MANAGER_HTTP_IDLE_TIMEOUT", "0", "from 1 to 3600"},
        {"IOT_MANAGER_SHUTDOWN_TIMEOUT", "601", "from 0 to 600"},
        {"IOT_MANAGER_STORE_TIMEOUT_MS", "99", "from 100 to 600000"},
        {"IOT_MANAGER_EVENT_SWEEP_INTERVAL", "86401", "from 1 to 86400"},
        {"IOT_MANAGER_DEBUG_LOG", "maybe", "must be a boolean"},
        {"IOT_MANAGER_MONGO_SSL", "2", "must be a boolean"},
        {"IOT_MANAGER_MONGO_URL", "user:pw@mender-mongo:27017",
         "Invalid mongoURL \"<omitted>@mender-mongo:27017\": missing schema."},
        {"IOT_MANAGER_MONGO_URL", "mender-mongo:27017",
         "Invalid mongoURL \"mender-mongo:27017\": missing schema."},
        {"IOT_MANAGER_LISTEN", "8080", "must be [host]:port"},
        {"IOT_MANAGER_LISTEN", ":", "must be [host]:port"},
        {"IOT_MANAGER_LISTEN", ":65536", "port from 0 to 65535"},
        {"IOT_MANAGER_LISTEN", ":-1", "must be [host]:port"},
        {"IOT_MANAGER_LISTEN", ":80x", "must be [host]:port"},
        {"IOT_MANAGER_SECRETS_FORMAT", "aes-128-gcm", "must be \"aes-256-gcm\" or \"mender\""},
        {"IOT_MANAGER_LOG_LEVEL", "verbose", "must be one of debug, info, warn, error"},
        {"IOT_MANAGER_WORKFLOWS_URL", "mender-workflows-server:8080", "absolute URL"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        clear_iotm_env();
        set_env(bad[i].env, bad[i].value);
        enum iot_err rc = load_env_only(f);
        if (rc != IOT_ERR_CONFIG)
            fail_msg("%s=\"%s\" loaded (rc %d)", bad[i].env, bad[i].value, rc);
        assert_int_equal(f->err.code, IOT_ERR_CONFIG);
        expect_contains(f->err.msg, bad[i].env);
        expect_contains(f->err.msg, bad[i].rule);
    }
}

static void test_bad_value_in_yaml_names_key(void **state)
{
    struct fixture *f = *state;
    write_yaml(f, "request_size_limit: lots\n");
    assert_int_equal(load_file(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, "request_size_limit");
    expect_contains(f->err.msg, f->file);
    expect_contains(f->err.msg, "must be an integer");

    write_yaml(f, "mongo_url: mongo:27017\n");
    assert_int_equal(load_file(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, "Invalid mongoURL \"mongo:27017\": missing schema.");
}

static void test_string_too_long(void **state)
{
    struct fixture *f = *state;
    char longname[200];
    memset(longname, 'd', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    set_env("IOT_MANAGER_MONGO_DBNAME", longname);
    assert_int_equal(load_env_only(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, "IOT_MANAGER_MONGO_DBNAME");
    expect_contains(f->err.msg, "must be shorter than 128");
    /* a secret is never echoed back */
    unsetenv("IOT_MANAGER_MONGO_DBNAME");
    char longkey[200];
    memset(longkey, 'K', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    set_env("IOT_MANAGER_AES_ENCRYPTION_KEY", longkey);
    assert_int_equal(load_env_only(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, "IOT_MANAGER_AES_ENCRYPTION_KEY");
    assert_null(strstr(f->err.msg, "KKKKKKKK"));
}

static void test_valid_edge_values(void **state)
{
    struct fixture *f = *state;
    set_env("IOT_MANAGER_LISTEN", "[::1]:0");
    set_env("IOT_MANAGER_REQUEST_SIZE_LIMIT", "1073741824");
    set_env("IOT_MANAGER_EVENT_EXP_TIMEOUT", "1");
    set_env("IOT_MANAGER_SECRETS_FORMAT", "AES-256-GCM");
    set_env("IOT_MANAGER_MONGO_SSL", "off");
    set_env("IOT_MANAGER_LOG_LEVEL", "DEBUG");
    assert_int_equal(load_env_only(f), IOT_OK);
    assert_string_equal(f->cfg.listen, "[::1]:0");
    assert_int_equal(f->cfg.request_size_limit, 1073741824);
    assert_int_equal(f->cfg.event_exp_timeout, 1);
    assert_int_equal(f->cfg.secrets_format, SECRETS_FORMAT_GCM);
    assert_false(f->cfg.mongo_ssl);

    load_with(f, "IOT_MANAGER_LISTEN", "localhost:65535");
    assert_string_equal(f->cfg.listen, "localhost:65535");
}

/* Mender prepends "http://" to a deviceauth address without a scheme. */
static void test_deviceauth_url_gets_scheme(void **state)
{
    struct fixture *f = *state;
    load_with(f, "IOT_MANAGER_DEVICEAUTH_URL", "mender-device-auth:8080");
    assert_string_equal(f->cfg.deviceauth_url, "http://mender-device-auth:8080");

    load_with(f, "IOT_MANAGER_DEVICEAUTH_URL", "https://da.example");
    assert_string_equal(f->cfg.deviceauth_url, "https://da.example");

    write_yaml(f, "deviceauth_url: da.from.file:80\n");
    unsetenv("IOT_MANAGER_DEVICEAUTH_URL");
    assert_int_equal(load_file(f), IOT_OK);
    assert_string_equal(f->cfg.deviceauth_url, "http://da.from.file:80");

    /* with the prefix it no longer fits: an error, not a silent cut */
    char host[CONFIG_STR_MAX];
    memset(host, 'h', sizeof host - 1);
    host[sizeof host - 1] = '\0';
    host[sizeof host - 6] = '\0'; /* 1018 characters: fits alone, not with "http://" */
    set_env("IOT_MANAGER_DEVICEAUTH_URL", host);
    assert_int_equal(load_env_only(f), IOT_ERR_CONFIG);
    expect_contains(f->err.msg, "IOT_MANAGER_DEVICEAUTH_URL");
}

static void test_debug_log_forces_debug(void **state)
{
    struct fixture *f = *state;
    load_with(f, "IOT_MANAGER_LOG_LEVEL", "error");
    assert_string_equal(f->cfg.log_level, "error");
    load_with(f, "IOT_MANAGER_DEBUG_LOG", "true");
    assert_true(f->cfg.debug_log);
    assert_string_equal(f->cfg.log_level, "debug");
    load_with(f, "IOT_MANAGER_DEBUG_LOG", "false");
    assert_string_equal(f->cfg.log_level, "error");
}

static void test_whitelist_split(void **state)
{
    struct fixture *f = *state;
    load_with(f, "IOT_MANAGER_DOMAIN_WHITELIST",
              "  *.azure-devices.net\t*.azure-devices.cn\n hub.example.com  ");
    char buf[CONFIG_LIST_MAX];
    const char *items[8] = {0};
    assert_int_equal(config_whitelist(&f->cfg, buf, items, 8), 3);
    assert_string_equal(items[0], "*.azure-devices.net");
    assert_string_equal(items[1], "*.azure-devices.cn");
    assert_string_equal(items[2], "hub.example.com");
    assert_null(items[3]);
    /* the configuration itself is not modified by the split */
    assert_string_equal(f->cfg.domain_whitelist,
                        "  *.azure-devices.net\t*.azure-devices.cn\n hub.example.com  ");

    /* at most `cap` entries */
    const char *two[2];
    assert_int_equal(config_whitelist(&f->cfg, buf, two, 2), 2);
    assert_string_equal(two[1], "*.azure-devices.cn");

    load_with(f, "IOT_MANAGER_DOMAIN_WHITELIST", " \t ");
    assert_int_equal(config_whitelist(&f->cfg, buf, items, 8), 0);

    unsetenv("IOT_MANAGER_DOMAIN_WHITELIST");
    assert_int_equal(load_env_only(f), IOT_OK);
    assert_int_equal(config_whitelist(&f->cfg, buf, items, 8), 1);
    assert_string_equal(items[0], "*.azure-devices.net");
}

static void test_help_lists_every_variable(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    assert_non_null(mem);
    config_print_help(mem);
    assert_int_equal(fclose(mem), 0);
    for (size_t i = 0; i < sizeof overrides / sizeof overrides[0]; i++)
        expect_contains(text, overrides[i].env);
    expect_contains(text, "default: \":8080\"");
    free(text);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_defaults),
        T(test_default_path_absent_is_fine),
        T(test_explicit_missing_path_fails),
        T(test_every_env_overrides),
        T(test_yaml_file),
        T(test_env_wins_over_yaml),
        T(test_yaml_sequence_whitelist),
        T(test_yaml_empty_file_gives_defaults),
        T(test_yaml_invalid_reports_line),
        T(test_empty_env_counts_as_unset),
        T(test_bad_values_stop_loading),
        T(test_bad_value_in_yaml_names_key),
        T(test_string_too_long),
        T(test_valid_edge_values),
        T(test_deviceauth_url_gets_scheme),
        T(test_debug_log_forces_debug),
        T(test_whitelist_split),
        T(test_help_lists_every_variable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
