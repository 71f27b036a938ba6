/* Fuzzes config_load() on a YAML file (--config): libyaml's parser and our mapping of its nodes
 * onto the settings table. The input is the file's content, written to a temporary file removed
 * after each input; IOT_MANAGER_* variables are cleared first so that only the file counts.
 *
 * Invariants: a rejection is IOT_ERR_CONFIG (or NOMEM) with a message, and quotes no secret
 * setting (AES keys, MongoDB password, the credentials of a MongoDB URL); an accepted file gives
 * a configuration that passes its own checks (a [host]:port listen address, a known log level,
 * keys configured in verify mode, ...) and loading it twice gives the same configuration. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "iot-manager/config.h"
#include "iot-manager/log.h"

extern char **environ;

static void clear_env(void)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; e && *e; e++) {
            size_t n = strcspn(*e, "=");
            if (strncmp(*e, "IOT_MANAGER_", 12) == 0 && n < sizeof name) {
                memcpy(name, *e, n);
                name[n] = '\0';
                break;
            }
        }
        if (!name[0])
            return;
        unsetenv(name);
    }
}

/* Once per process: only the file may decide what is configured, and unknown keys are logged as
 * warnings, millions of which would drown the fuzzer's output. */
static void setup(void)
{
    static bool ready;
    if (ready)
        return;
    clear_env();
    log_set_level(LOG_LEVEL_ERROR);
    ready = true;
}

/* Writes the input to a new temporary file; returns its path in `path`. */
static void write_tmp(const uint8_t *data, size_t size, char *path, size_t cap)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(path, cap, "%s/iotm-fuzz-config-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    FUZZ_CHECK(fd >= 0);
    FUZZ_CHECK(write(fd, data, size) == (ssize_t)size);
    FUZZ_CHECK(close(fd) == 0);
}

/* A secret setting's value must not appear in the message when it occurs once in the file (then
 * the message can only have taken it from that setting). */
static void check_secret(const char *value, size_t len, const char *file, const char *msg)
{
    if (len < 8)
        return;
    char *v = strndup(value, len);
    FUZZ_CHECK(v != NULL);
    if (fuzz_count(file, v) == 1)
        FUZZ_CHECK(strstr(msg, v) == NULL);
    free(v);
}

static void check_loaded(const struct config *cfg)
{
    enum log_level level;
    FUZZ_CHECK(log_level_parse(cfg->log_level, &level));
    const char *colon = strrchr(cfg->listen, ':');
    FUZZ_CHECK(colon && colon[1]);
    FUZZ_CHECK(!cfg->auth_verify || cfg->jwt_keys[0]);
    FUZZ_CHECK(strcasecmp(cfg->secrets_format_text, "aes-256-gcm") == 0 ||
               strcasecmp(cfg->secrets_format_text, "mender") == 0);
    FUZZ_CHECK(!cfg->mongo_url[0] || strstr(cfg->mongo_url, "://"));
    FUZZ_CHECK(!cfg->deviceauth_url[0] || strstr(cfg->deviceauth_url, "://"));
    FUZZ_CHECK(!cfg->nats_uri[0] || strstr(cfg->nats_uri, "://"));
    FUZZ_CHECK(cfg->event_exp_timeout >= 1 && cfg->request_size_limit >= 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    char path[512];
    write_tmp(data, size, path, sizeof path);
    /* the file as text, for the secret check (a NUL ends what libyaml reads anyway) */
    char *file = fuzz_cstr(data, size);

    struct config *cfg = malloc(sizeof *cfg);
    FUZZ_CHECK(cfg != NULL);
    struct iot_error err = {0};
    enum iot_err rc = config_load(cfg, path, true, &err);
    if (rc != IOT_OK) {
        FUZZ_CHECK((rc == IOT_ERR_CONFIG || rc == IOT_ERR_NOMEM) && err.code == rc && err.msg[0]);
        check_secret(cfg->aes_encryption_key, strlen(cfg->aes_encryption_key), file, err.msg);
        check_secret(cfg->aes_encryption_fallback_key, strlen(cfg->aes_encryption_fallback_key),
                     file, err.msg);
        check_secret(cfg->mongo_password, strlen(cfg->mongo_password), file, err.msg);
        /* a URL's user:password@ part; the message may show what follows the last '@' */
        const char *at = strrchr(cfg->mongo_url, '@');
        if (at)
            check_secret(cfg->mongo_url, (size_t)(at - cfg->mongo_url), file, err.msg);
    } else {
        check_loaded(cfg);
        struct config *again = malloc(sizeof *again);
        FUZZ_CHECK(again != NULL);
        FUZZ_CHECK(config_load(again, path, true, &err) == IOT_OK);
        FUZZ_CHECK(memcmp(cfg, again, sizeof *cfg) == 0);
        free(again);
    }
    unlink(path);
    free(cfg);
    free(file);
    return 0;
}
