/* The IoT Hub client against the simulator (tests/sim, a separate implementation of the hub's
 * service API): every operation, every error class the simulator can produce, If-Match retries,
 * bulk results, query paging, the SSRF guard, redirects, concurrency and throttling.
 *
 * The fixture spawns `iothub-sim` with certificates from scripts/gen-test-certs.sh on a free port
 * (read from --port-file). Paths come from the environment (IOTHUB_SIM, IOTM_SOURCE_DIR), set by
 * the CMake test registration, or from the build (IOTHUB_SIM_PATH, IOTM_SOURCE_DIR macros).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <curl/curl.h>

#include "azure/hub_internal.h"
#include "iot-manager/hub.h"
#include "support/sim.h"
#include "support/spawn.h"

#define KEY_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY_B "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="
#define KEY_C "q83vEjRWeJq8/+7/AAECAwQFBgcICQoLDA0ODxAREhM="

struct fixture {
    struct support_sim sim; /* its control API is https://host, trusting ca */
    char ca[128], cert[128], key[128];
    char host[64]; /* localhost:PORT */
    struct connstr owner, reader, wrong_key, device_cs;
};

/* ---- process plumbing ---- */

static const char *sim_binary(char *buf, size_t cap)
{
#ifdef IOTHUB_SIM_PATH
    (void)buf;
    (void)cap;
    return support_env_or("IOTHUB_SIM", IOTHUB_SIM_PATH);
#else
    const char *env = support_env_or("IOTHUB_SIM", NULL);
    if (env)
        return env;
    /* next to this test in the build tree */
    ssize_t n = readlink("/proc/self/exe", buf, cap - 16);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    char *slash = strrchr(buf, '/');
    if (!slash)
        return NULL;
    strcpy(slash + 1, "iothub-sim");
    return buf;
#endif
}

#ifndef IOTM_SOURCE_DIR
#define IOTM_SOURCE_DIR NULL /* from the environment only */
#endif

static unsigned start_sim(struct fixture *f)
{
    char exe[4096];
    const char *sim = sim_binary(exe, sizeof exe);
    const char *src = support_env_or("IOTM_SOURCE_DIR", IOTM_SOURCE_DIR);
    if (!sim || access(sim, X_OK) != 0) {
        print_error("iothub-sim not found (%s): build the iothub-sim target\n", sim ? sim : "?");
        return 0;
    }
    if (!src) {
        print_error("IOTM_SOURCE_DIR not set: cannot find scripts/gen-test-certs.sh\n");
        return 0;
    }
    char script[4096];
    snprintf(script, sizeof script, "%s/scripts/gen-test-certs.sh", src);
    char bash[] = "/bin/bash";
    char *gen[] = {bash, script, f->sim.dir, NULL};
    if (support_run(gen, f->sim.log) != 0) {
        print_error("gen-test-certs.sh failed\n");
        support_dump_log(f->sim.log);
        return 0;
    }
    char listen[] = "--listen=127.0.0.1:0";
    char pf[160], cert[160], key[160];
    snprintf(pf, sizeof pf, "--port-file=%s", f->sim.portfile);
    snprintf(cert, sizeof cert, "--cert=%s", f->cert);
    snprintf(key, sizeof key, "--key=%s", f->key);
    char owner[] =
        "--policy=iothubowner:" KEY_A ":" KEY_B ":RegistryRead,RegistryWrite,ServiceConnect";
    char reader[] = "--policy=reader:" KEY_B ":" KEY_A ":RegistryRead";
    char threads[] = "--threads=8";
    char quiet[] = "--quiet";
    char *argv[] = {(char *)sim, listen, pf, cert, key, owner, reader, threads, quiet, NULL};
    return support_sim_start(&f->sim, argv, false, "iothub-sim");
}

static void parse_cs(const char *text, struct connstr *cs)
{
    struct iot_error err = {0};
    assert_int_equal(connstr_parse(text, false, cs, &err), IOT_OK);
}

static int group_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    *state = f;
    if (!support_sim_init(&f->sim, "/tmp/iotm-hubsim-XXXXXX"))
        return -1;
    snprintf(f->ca, sizeof f->ca, "%s/ca.pem", f->sim.dir);
    snprintf(f->cert, sizeof f->cert, "%s/server.pem", f->sim.dir);
    snprintf(f->key, sizeof f->key, "%s/server.key", f->sim.dir);
    if (!start_sim(f))
        return -1;
    snprintf(f->host, sizeof f->host, "localhost:%u", f->sim.port);
    snprintf(f->sim.base, sizeof f->sim.base, "https://%s", f->host);
    f->sim.ca_file = f->ca;
    char text[512];
    snprintf(text, sizeof text,
             "HostName=%s;SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_A, f->host);
    parse_cs(text, &f->owner);
    snprintf(text, sizeof text, "HostName=%s;SharedAccessKeyName=reader;SharedAccessKey=" KEY_B,
             f->host);
    parse_cs(text, &f->reader);
    snprintf(text, sizeof text,
             "HostName=%s;SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_C, f->host);
    parse_cs(text, &f->wrong_key);
    snprintf(text, sizeof text, "HostName=%s;DeviceId=d1;SharedAccessKey=" KEY_A, f->host);
    parse_cs(text, &f->device_cs);
    return 0;
}

static int group_teardown(void **state)
{
    struct fixture *f = *state;
    if (!f)
        return 0;
    connstr_clear(&f->owner);
    connstr_clear(&f->reader);
    connstr_clear(&f->wrong_key);
    connstr_clear(&f->device_cs);
    /* what gen-test-certs.sh creates */
    static const char *const certs[] = {"ca.pem", "ca.key", "server.pem", "server.key", NULL};
    support_sim_cleanup(&f->sim, certs);
    free(f);
    return 0;
}

/* ---- control API ---- */

static void fault(struct fixture *f, const char *body)
{
    support_sim_call_ok(&f->sim, "POST", "/_sim/faults", body);
}

/* The simulator's view of one device (new reference) or NULL when it has none. */
static json_t *sim_device(struct fixture *f, const char *id)
{
    char esc[HUB_DEVICE_ID_MAX * 3 + 1], path[512];
    assert_true(hub_path_escape(id, esc, sizeof esc) >= 0);
    snprintf(path, sizeof path, "/_sim/devices/%s", esc);
    return support_sim_get_optional(&f->sim, path);
}

static size_t count_requests(json_t *reqs, const char *method, const char *path_prefix, long status)
{
    size_t n = 0, i;
    json_t *r;
    json_array_foreach(reqs, i, r)
    {
        const char *m = json_string_value(json_object_get(r, "method"));
        const char *p = json_string_value(json_object_get(r, "path"));
        if (!m || !p || strncmp(p, "/_sim", 5) == 0)
            continue;
        if (method && strcmp(m, method) != 0)
            continue;
        if (path_prefix && strncmp(p, path_prefix, strlen(path_prefix)) != 0)
            continue;
        if (status >= 0 && json_integer_value(json_object_get(r, "status")) != status)
            continue;
        n++;
    }
    return n;
}

static int test_setup(void **state)
{
    struct fixture *f = *state;
    support_sim_call_ok(&f->sim, "POST", "/_sim/config", "{\"throttle\":false,\"latency_ms\":0}");
    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    return 0;
}

/* ---- clients ---- */

static void test_options(struct fixture *f, struct hub_options *o)
{
    hub_options_default(o);
    o->ca_file = f->ca;
    o->allow_private_addresses = true; /* the simulator is on loopback */
    o->ratelimit.disabled = true;      /* S1's 100 registry ops/min would slow every test */
    o->retry.max_attempts = 1;
    o->connect_timeout_ms = 3000;
    o->total_timeout_ms = 10000;
}

static struct hub_client *client_with(const struct hub_options *o)
{
    struct hub_client *c = NULL;
    struct iot_error err = {0};
    if (hub_client_new(o, &c, &err) != IOT_OK)
        fail_msg("hub_client_new: %s", err.msg);
    return c;
}

static struct hub_client *client(struct fixture *f)
{
    struct hub_options o;
    test_options(f, &o);
    return client_with(&o);
}

static void create(struct hub_client *c, struct fixture *f, const char *id)
{
    struct hub_device_spec spec = {.device_id = id};
    struct hub_error e;
    if (hub_device_create(c, &f->owner, &spec, NULL, &e) != IOT_OK)
        fail_msg("create %s: %s", id, e.msg);
}

/* ---- operations ---- */

static void test_device_lifecycle(void **state)
{
    struct fixture *f = *state;
    struct hub_client *c = client(f);
    struct hub_device d, d2;
    struct hub_error e;
    struct hub_device_spec spec = {.device_id = "dev-1"};

    assert_int_equal(hub_device_create(c, &f->owner, &spec, &d, &e), IOT_OK);
    assert_int_equal(e.cls, HUB_OK);
    assert_string_equal(d.device_id, "dev-1");
    assert_int_equal(d.status, HUB_STATUS_ENABLED);
    assert_int_equal(strlen(d.primary_key), 44); /* generated: base64 of 32 bytes */
    assert_int_equal(strlen(d.secondary_key), 44);
    assert_string_not_equal(d.primary_key, d.secondary_key);
    assert_true(d.etag[0] && d.generation_id[0]);
    assert_string_equal(d.auth_type, "sas");
    json_t *sd = sim_device(f, "dev-1");
    assert_non_null(sd);
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_object_get(json_object_get(sd, "device"), "authentication"),
                            "symmetricKey"),
            "primaryKey")),
        d.primary_key);
    json_decref(sd);

    /* create is create-only */
    assert_int_equal(hub_device_create(c, &f->owner, &spec, NULL, &e), IOT_ERR_CONFLICT);
    assert_int_equal(e.cls, HUB_ERR_ALREADY_EXISTS);
    assert_int_equal(e.http_status, 409);
    assert_string_equal(e.name, "DeviceAlreadyExists");
    assert_int_equal(e.attempts, 1);

    assert_int_equal(hub_device_get(c, &f->owner, "dev-1", &d2, &e), IOT_OK);
    assert_string_equal(d2.primary_key, d.primary_key);
    assert_string_equal(d2.etag, d.etag);
    hub_device_clear(&d2);

    /* status change keeps the keys, changes the etag */
    bool changed = false;
    assert_int_equal(hub_device_set_status(c, &f->owner, "dev-1", HUB_STATUS_DISABLED,
                                           "maintenance", &d2, &changed, &e),
                     IOT_OK);
    assert_true(changed);
    assert_int_equal(d2.status, HUB_STATUS_DISABLED);
    assert_string_equal(d2.status_reason, "maintenance");
    assert_string_equal(d2.primary_key, d.primary_key);
    assert_string_equal(d2.secondary_key, d.secondary_key);
    assert_string_not_equal(d2.etag, d.etag);
    hub_device_clear(&d2);

    /* already in that state: read only, no write */
    json_t *before = support_sim_requests(&f->sim);
    size_t puts = count_requests(before, "PUT", NULL, -1);
    json_decref(before);
    assert_int_equal(
        hub_device_set_status(c, &f->owner, "dev-1", HUB_STATUS_DISABLED, NULL, NULL, &changed, &e),
        IOT_OK);
    assert_false(changed);
    json_t *after = support_sim_requests(&f->sim);
    assert_int_equal(count_requests(after, "PUT", NULL, -1), puts);
    json_decref(after);

    struct hub_statistics st;
    assert_int_equal(hub_statistics(c, &f->owner, &st, &e), IOT_OK);
    assert_int_equal(st.total, 1);
    assert_int_equal(st.enabled, 0);
    assert_int_equal(st.disabled, 1);

    bool existed = false;
    assert_int_equal(hub_device_delete(c, &f->owner, "dev-1", &existed, &e), IOT_OK);
    assert_true(existed);
    assert_null(sim_device(f, "dev-1"));
    assert_int_equal(hub_device_delete(c, &f->owner, "dev-1", &existed, &e), IOT_OK);
    assert_false(existed); /* 404 counts as done */
    assert_int_equal(hub_device_get(c, &f->owner, "dev-1", &d2, &e), IOT_ERR_NOT_FOUND);
    assert_int_equal(e.cls, HUB_ERR_NOT_FOUND);
    assert_int_equal(e.http_status, 404);
    assert_string_equal(e.name, "DeviceNotFound");
    assert_null(d2.raw);

    /* every request: our policy, the API version, the If-Match rules */
    json_t *reqs = support_sim_requests(&f->sim);
    size_t i;
    json_t *r;
    size_t n = 0;
    json_array_foreach(reqs, i, r)
    {
        const char *p = json_string_value(json_object_get(r, "path"));
        if (strncmp(p, "/_sim", 5) == 0)
            continue;
        n++;
        assert_string_equal(json_string_value(json_object_get(r, "auth_policy")), "iothubowner");
        assert_non_null(
            strstr(json_string_value(json_object_get(r, "query")), "api-version=2021-04-12"));
    }
    assert_true(n >= 9);
    assert_int_equal(count_requests(reqs, "DELETE", "/devices/dev-1", 204), 1);
    assert_int_equal(count_requests(reqs, "DELETE", "/devices/dev-1", 404), 1);
    json_decref(reqs);

    /* one token served all of those calls */
    struct hub_client_stats cst;
    hub_client_stats(c, &cst);
    assert_int_equal(cst.tokens_signed, 1);
    assert_true(cst.requests >= 9);
    /* one connection for all of them: ::1 is tried first for "localhost" and refused (the
     * simulator listens on 127.0.0.1 only), which opens a socket too */
    assert_true(cst.connections <= 2);
    hub_device_clear(&d);
    hub_client_free(c);
}

static void test_device_ids_and_keys(void **state)
{
    struct fixture *f = *state;
    struct hub_client *c = client(f);
    struct hub_error e;
    struct hub_device d;
    /* characters that must be percent-encoded in a path: # ? % and friends */
    const char *odd = "a:b(c)!$'=@;,+%_#*?.-z";
    struct hub_device_spec spec = {.device_id = odd,
                                   .status = HUB_STATUS_DISABLED,
                                   .status_reason = "pre-provisioned",
                                   .primary_key = KEY_A,
                                   .secondary_key = KEY_B};
    assert_int_equal(hub_device_create(c, &f->owner, &spec, &d, &e), IOT_OK);
    assert_string_equal(d.device_id, odd);
    assert_int_equal(d.status, HUB_STATUS_DISABLED);
    assert_string_equal(d.status_reason, "pre-provisioned");
    assert_string_equal(d.primary_key, KEY_A);
    assert_string_equal(d.secondary_key, KEY_B);
    hub_device_clear(&d);
    json_t *sd = sim_device(f, odd);
    assert_non_null(sd);
    json_decref(sd);
    assert_int_equal(hub_device_get(c, &f->owner, odd, &d, &e), IOT_OK);
    assert_string_equal(d.device_id, odd);
    hub_device_clear(&d);
    struct hub_twin t;
    assert_int_equal(hub_twin_get(c, &f->owner, odd, &t, &e), IOT_OK);
    assert_string_equal(t.device_id, odd);
    hub_twin_clear(&t);
    assert_int_equal(hub_device_delete(c, &f->owner, odd, NULL, &e), IOT_OK);
    assert_null(sim_device(f, odd));

    /* invalid ids and connection strings never reach the hub */
    json_t *before = support_sim_requests(&f->sim);
    size_t n0 = json_array_size(before);
    json_decref(before);
    const char *bad[] = {"a b", "a/b", "", "a]b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(hub_device_get(c, &f->owner, bad[i], &d, &e), IOT_ERR_INVALID);
        assert_int_equal(e.cls, HUB_ERR_INVALID);
    }
    spec.device_id = "ok";
    assert_int_equal(hub_device_create(c, &f->device_cs, &spec, NULL, &e), IOT_ERR_INVALID);
    assert_non_null(strstr(e.msg, "SharedAccessKeyName"));
    json_t *after = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(after), n0); /* control calls are not logged */
    json_decref(after);
    hub_client_free(c);
}

static void test_twin(void **state)
{
    struct fixture *f = *state;
    struct hub_client *c = client(f);
    struct hub_error e;
    struct hub_twin t, t2;
    create(c, f, "tw1");

    assert_int_equal(hub_twin_get(c, &f->owner, "tw1", &t, &e), IOT_OK);
    assert_string_equal(t.device_id, "tw1");
    assert_true(t.etag[0]);
    assert_int_equal(json_object_size(t.tags), 0);
    assert_int_equal(t.status, HUB_STATUS_ENABLED);
    int64_t v0 = t.version;

    json_t *tags = json_pack("{s:b}", "mender", 1);
    json_t *desired = json_pack("{s:i, s:{s:s}}", "a", 1, "n", "x", "y");
    assert_int_equal(hub_twin_patch(c, &f->owner, "tw1", tags, desired, NULL, &t2, &e), IOT_OK);
    assert_true(json_is_true(json_object_get(t2.tags, "mender")));
    assert_int_equal(json_integer_value(json_object_get(t2.desired, "a")), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(t2.desired, "n"), "x")),
                        "y");
    assert_true(t2.version > v0);
    assert_string_not_equal(t2.etag, t.etag);
    json_decref(tags);
    json_decref(desired);

    /* a stale etag is refused; the current one and "*" are accepted */
    desired = json_pack("{s:n}", "a");
    assert_int_equal(hub_twin_patch(c, &f->owner, "tw1", NULL, desired, t.etag, NULL, &e),
                     IOT_ERR_CONFLICT);
    assert_int_equal(e.cls, HUB_ERR_PRECONDITION_FAILED);
    assert_int_equal(e.http_status, 412);
    hub_twin_clear(&t);
    assert_int_equal(hub_twin_patch(c, &f->owner, "tw1", NULL, desired, t2.etag, &t, &e), IOT_OK);
    assert_null(json_object_get(t.desired, "a")); /* null removed it */
    assert_non_null(json_object_get(t.desired, "n"));
    hub_twin_clear(&t);
    hub_twin_clear(&t2);
    assert_int_equal(hub_twin_patch(c, &f->owner, "tw1", NULL, desired, "*", NULL, &e), IOT_OK);
    json_decref(desired);

    /* replace: tags and desired become exactly what we send */
    desired = json_pack("{s:i}", "b", 2);
    assert_int_equal(hub_twin_replace(c, &f->owner, "tw1", NULL, desired, NULL, &t, &e), IOT_OK);
    assert_int_equal(json_object_size(t.tags), 0);
    assert_int_equal(json_integer_value(json_object_get(t.desired, "b")), 2);
    assert_null(json_object_get(t.desired, "n"));
    hub_twin_clear(&t);
    json_decref(desired);

    /* the hub's validation: a '.' in a key is a bad request (bare error body) */
    desired = json_pack("{s:i}", "a.b", 1);
    assert_int_equal(hub_twin_patch(c, &f->owner, "tw1", NULL, desired, NULL, NULL, &e),
                     IOT_ERR_INVALID);
    assert_int_equal(e.cls, HUB_ERR_BAD_REQUEST);
    assert_int_equal(e.http_status, 400);
    assert_int_equal(e.number, 400004);
    json_decref(desired);

    assert_int_equal(hub_twin_get(c, &f->owner, "nope", &t, &e), IOT_ERR_NOT_FOUND);
    assert_int_equal(e.cls, HUB_ERR_NOT_FOUND);
    assert_int_equal(hub_twin_patch(c, &f->owner, "tw1", NULL, NULL, NULL, NULL, &e),
                     IOT_ERR_INVALID);
    hub_client_free(c);
}

/* ---- If-Match: a concurrent writer between our read and our write ---- */

struct status_job {
    struct hub_client *c;
    const struct connstr *cs;
    enum iot_err rc;
    bool changed;
    struct hub_error e;
};

static void *set_status_thread(void *arg)
{
    struct status_job *j = arg;
    j->rc = hub_device_set_status(j->c, j->cs, "race", HUB_STATUS_DISABLED, NULL, NULL, &j->changed,
                                  &j->e);
    return NULL;
}

static void test_set_status_412_retry(void **state)
{
    struct fixture *f = *state;
    struct hub_client *c = client(f);
    struct hub_error e;
    struct hub_device d;
    create(c, f, "race");

    /* Our GET is answered a second late (the simulator delays the answer, not the read), so the
     * etag it carries is stale by the time our PUT goes out. */
    fault(f, "{\"match\":\"GET /devices/race\",\"latency_ms\":1000,\"count\":1}");
    struct status_job job = {.c = c, .cs = &f->owner};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, set_status_thread, &job), 0);
    support_sleep_ms(150);
    bool changed;
    assert_int_equal(hub_device_set_status(c, &f->owner, "race", HUB_STATUS_ENABLED, "other writer",
                                           NULL, &changed, &e),
                     IOT_OK);
    assert_true(changed);
    pthread_join(th, NULL);
    if (job.rc != IOT_OK)
        fail_msg("set_status: %s", job.e.msg);
    assert_true(job.changed);
    assert_int_equal(hub_device_get(c, &f->owner, "race", &d, &e), IOT_OK);
    assert_int_equal(d.status, HUB_STATUS_DISABLED);
    assert_string_equal(d.status_reason, "other writer"); /* re-read kept the other change */
    assert_int_equal(strlen(d.primary_key), 44);
    hub_device_clear(&d);
    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(count_requests(reqs, "PUT", "/devices/race", 412), 1);
    assert_int_equal(count_requests(reqs, "PUT", "/devices/race", 200), 3); /* create, 2 writes */
    json_decref(reqs);

    /* bounded: with every PUT refused, it gives up after set_status_attempts rounds */
    fault(f, "{\"match\":\"PUT /devices/race\",\"status\":412}");
    assert_int_equal(
        hub_device_set_status(c, &f->owner, "race", HUB_STATUS_ENABLED, NULL, NULL, &changed, &e),
        IOT_ERR_CONFLICT);
    assert_int_equal(e.cls, HUB_ERR_PRECONDITION_FAILED);
    assert_false(changed);
    reqs = support_sim_requests(&f->sim);
    assert_int_equal(count_requests(reqs, "PUT", "/devices/race", 412), 1 + 3);
    json_decref(reqs);
    hub_client_free(c);
}

static void test_bulk(void **state)
{
    struct fixture *f = *state;
    struct hub_client *c = client(f);
    struct hub_error e;
    create(c, f, "b0");
    struct hub_bulk_item items[3] = {
        {.mode = HUB_BULK_CREATE, .device = {.device_id = "b0"}},
        {.mode = HUB_BULK_CREATE, .device = {.device_id = "b1"}},
        {.mode = HUB_BULK_CREATE, .device = {.device_id = "b2", .status = HUB_STATUS_DISABLED}},
    };
    struct hub_bulk_result res[3];
    assert_int_equal(hub_devices_bulk(c, &f->owner, items, 3, res, &e), IOT_OK);
    assert_int_equal(res[0].cls, HUB_ERR_ALREADY_EXISTS);
    assert_string_equal(res[0].name, "DeviceAlreadyExists");
    assert_int_equal(res[1].cls, HUB_OK);
    assert_int_equal(res[2].cls, HUB_OK);
    json_t *sd = sim_device(f, "b2");
    assert_non_null(sd);
    assert_string_equal(json_string_value(json_object_get(json_object_get(sd, "device"), "status")),
                        "disabled");
    json_decref(sd);

    struct hub_bulk_item del[2] = {
        {.mode = HUB_BULK_DELETE_IF_MATCH, .device = {.device_id = "b1", .etag = "bm9wZQ=="}},
        {.mode = HUB_BULK_DELETE, .device = {.device_id = "b2"}},
    };
    assert_int_equal(hub_devices_bulk(c, &f->owner, del, 2, res, &e), IOT_OK);
    assert_int_equal(res[0].cls, HUB_ERR_PRECONDITION_FAILED);
    assert_int_equal(res[1].cls, HUB_OK);
    sd = sim_device(f, "b1");
    assert_non_null(sd);
    json_decref(sd);
    assert_null(sim_device(f, "b2"));

    /* a whole-request failure is an error, not per-device results */
    fault(f, "{\"match\":\"POST /devices\",\"status\":503,\"count\":1}");
    assert_int_equal(hub_devices_bulk(c, &f->owner, del, 2, res, &e), IOT_ERR_UNAVAILABLE);
    assert_int_equal(e.cls, HUB_ERR_TRANSIENT);
    /* too many: refused locally */
    struct hub_bulk_item many[HUB_BULK_MAX + 1];
    char ids[HUB_BULK_MAX + 1][8];
    for (size_t i = 0; i <= HUB_BULK_MAX; i++) {
        snprintf(ids[i], sizeof ids[i], "m%zu", i);
        many[i] = (struct hub_bulk_item){.mode = HUB_BULK_CREATE, .device = {.device_id = ids[i]}};
    }
    struct hub_bulk_result mres[HUB_BULK_MAX + 1];
    assert_int_equal(hub_devices_bulk(c, &f->owner, many, HUB_BULK_MAX + 1, mres, &e),
                     IOT_ERR_INVALID);
    assert_int_equal(hub_devices_bulk(c, &f->owner, many, HUB_BULK_MAX, mres, &e), IOT_OK);
    for (size_t i = 0; i < HUB_BULK_MAX; i++)
        assert_int_equal(mres[i].cls, HUB_OK);
    struct hub_statistics st;
    assert_int_equal(hub_statistics(c, &f->owner, &st, &e), IOT_OK);
    assert_int_equal(st.total, 2 + HUB_BULK_MAX);
    hub_client_free(c);
}

static void test_query_paging(void **state)
{
    struct fixture *f = *state;
    struct hub_options o;
    test_options(f, &o);
    o.query_page_size = 3;
    struct hub_client *c = client_with(&o);
    struct hub_error e;
    const char *ids[8] = {"q0", "q1", "q2", "q3", "q4", "q5", "q6", "missing"};
    for (int i = 0; i < 7; i++)
        create(c, f, ids[i]);
    create(c, f, "other"); /* not asked for */

    bool seen[7] = {false};
    size_t total = 0, pages = 0;
    char *cont = NULL;
    do {
        struct hub_twin_page page;
        if (hub_devices_query(c, &f->owner, ids, 8, cont, &page, &e) != IOT_OK)
            fail_msg("query: %s", e.msg);
        free(cont);
        cont = page.continuation ? strdup(page.continuation) : NULL;
        assert_true(page.len <= 3);
        for (size_t i = 0; i < page.len; i++) {
            int k = page.items[i].device_id[1] - '0';
            assert_true(page.items[i].device_id[0] == 'q' && k >= 0 && k < 7);
            assert_false(seen[k]);
            seen[k] = true;
            total++;
        }
        hub_twin_page_clear(&page);
        pages++;
        assert_true(pages < 10);
    } while (cont);
    assert_int_equal(total, 7);
    assert_int_equal(pages, 3);
    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(count_requests(reqs, "POST", "/devices/query", 200), 3);
    json_decref(reqs);

    /* hostile ids: refused before anything is sent */
    const char *hostile[] = {"q0", "x' OR 1=1 --"};
    struct hub_twin_page page;
    assert_int_equal(hub_devices_query(c, &f->owner, hostile, 2, NULL, &page, &e), IOT_ERR_INVALID);
    assert_int_equal(page.len, 0);
    reqs = support_sim_requests(&f->sim);
    assert_int_equal(count_requests(reqs, "POST", "/devices/query", -1), 3);
    json_decref(reqs);
    hub_client_free(c);
}

/* ---- errors ---- */

static void test_errors_throttled(void **state)
{
    struct fixture *f = *state;
    struct hub_client *once = client(f);
    struct hub_options o;
    test_options(f, &o);
    o.retry.max_attempts = 3;
    o.retry.throttled_base_ms = 10;
    o.retry.throttled_cap_ms = 20;
    o.retry.max_total_ms = 5000;
    struct hub_client *retrying = client_with(&o);
    struct hub_error e;
    struct hub_device d;
    create(once, f, "t1");

    fault(f, "{\"match\":\"GET /devices\",\"status\":429,\"retry_after\":1,\"count\":1}");
    assert_int_equal(hub_device_get(once, &f->owner, "t1", &d, &e), IOT_ERR_THROTTLED);
    assert_int_equal(e.cls, HUB_ERR_THROTTLED);
    assert_int_equal(e.http_status, 429);
    assert_int_equal(e.retry_after_ms, 1000);
    assert_string_equal(e.name, "ThrottlingBacklogTimeout");
    assert_true(hub_error_is_retryable(e.cls));

    /* with retries: waits what Retry-After says, then succeeds */
    fault(f, "{\"match\":\"GET /devices\",\"status\":429,\"retry_after\":1,\"count\":1}");
    int64_t t0 = support_now_ms();
    assert_int_equal(hub_device_get(retrying, &f->owner, "t1", &d, &e), IOT_OK);
    int64_t took = support_now_ms() - t0;
    assert_true(took >= 990);
    assert_int_equal(e.attempts, 2);
    hub_device_clear(&d);

    /* a Retry-After beyond the call's budget: give up at once and pass it on */
    fault(f, "{\"match\":\"GET /devices\",\"status\":429,\"retry_after\":30,\"count\":1}");
    t0 = support_now_ms();
    assert_int_equal(hub_device_get(retrying, &f->owner, "t1", &d, &e), IOT_ERR_THROTTLED);
    assert_true(support_now_ms() - t0 < 1000);
    assert_int_equal(e.retry_after_ms, 30000);
    assert_int_equal(e.attempts, 1);

    /* a create is not idempotent: a 429 is passed on, not repeated */
    fault(f, "{\"match\":\"PUT /devices\",\"status\":429,\"count\":1}");
    struct hub_device_spec spec = {.device_id = "t2"};
    assert_int_equal(hub_device_create(retrying, &f->owner, &spec, NULL, &e), IOT_ERR_THROTTLED);
    assert_int_equal(e.attempts, 1);
    /* a conditional status write is: repeated */
    fault(f, "{\"match\":\"PUT /devices/t1\",\"status\":429,\"count\":1}");
    bool changed = false;
    assert_int_equal(hub_device_set_status(retrying, &f->owner, "t1", HUB_STATUS_DISABLED, NULL,
                                           NULL, &changed, &e),
                     IOT_OK);
    assert_true(changed);
    assert_int_equal(e.attempts, 2);
    struct hub_client_stats st;
    hub_client_stats(retrying, &st);
    assert_int_equal(st.throttled, 4);
    assert_int_equal(st.retries, 2);
    hub_client_free(once);
    hub_client_free(retrying);

    /* our own limiter: a call that would have to wait longer than allowed is refused locally,
     * with the wait as its Retry-After, and never sent */
    test_options(f, &o);
    o.ratelimit.disabled = false;
    o.ratelimit.registry_per_min = 60; /* one per second, a bucket of one */
    o.ratelimit.max_wait_ms = 100;
    struct hub_client *paced = client_with(&o);
    json_t *before = support_sim_requests(&f->sim);
    size_t n0 = json_array_size(before);
    json_decref(before);
    assert_int_equal(hub_device_get(paced, &f->owner, "t1", &d, &e), IOT_OK);
    hub_device_clear(&d);
    assert_int_equal(hub_device_get(paced, &f->owner, "t1", &d, &e), IOT_ERR_THROTTLED);
    assert_int_equal(e.cls, HUB_ERR_THROTTLED);
    assert_int_equal(e.http_status, 0);
    assert_true(e.retry_after_ms > 0 && e.retry_after_ms <= 1000); /* less what the call took */
    json_t *after = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(after), n0 + 1);
    json_decref(after);
    hub_client_stats(paced, &st);
    assert_int_equal(st.ratelimit_refused, 1);
    assert_int_equal(st.requests, 1);
    hub_client_free(paced);
}

static void test_errors_transient(void **state)
{
    struct fixture *f = *state;
    struct hub_client *once = client(f);
    struct hub_options o;
    test_options(f, &o);
    o.retry.max_attempts = 3;
    o.retry.base_ms = 10;
    o.retry.cap_ms = 50;
    struct hub_client *retrying = client_with(&o);
    struct hub_error e;
    struct hub_device d;
    create(once, f, "x1");

    const int statuses[] = {500, 502, 503, 504};
    for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"match\":\"GET /devices/x1\",\"status\":%d,\"count\":1}",
                 statuses[i]);
        fault(f, body);
        assert_int_equal(hub_device_get(once, &f->owner, "x1", &d, &e), IOT_ERR_UNAVAILABLE);
        assert_int_equal(e.cls, HUB_ERR_TRANSIENT);
        assert_int_equal(e.http_status, statuses[i]);
        fault(f, body);
        assert_int_equal(hub_device_get(retrying, &f->owner, "x1", &d, &e), IOT_OK);
        assert_int_equal(e.attempts, 2);
        hub_device_clear(&d);
    }
    fault(f, "{\"match\":\"GET /devices/x1\",\"status\":503,\"retry_after\":0,\"count\":1}");
    assert_int_equal(hub_device_get(once, &f->owner, "x1", &d, &e), IOT_ERR_UNAVAILABLE);
    assert_int_equal(e.retry_after_ms, 0);
    assert_string_equal(e.name, "ServiceUnavailable");

    /* a create that may have landed is not repeated */
    fault(f, "{\"match\":\"PUT /devices\",\"status\":503,\"count\":1}");
    struct hub_device_spec spec = {.device_id = "x2"};
    assert_int_equal(hub_device_create(retrying, &f->owner, &spec, NULL, &e), IOT_ERR_UNAVAILABLE);
    assert_int_equal(e.attempts, 1);
    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(count_requests(reqs, "PUT", "/devices/x2", -1), 1);
    json_decref(reqs);

    /* Connection dropped without an answer. Fresh clients: libcurl itself re-sends once when a
     * *reused* connection dies before any answer byte, which would hide the drop. */
    struct hub_client *fresh = client(f);
    fault(f, "{\"match\":\"GET /devices/x1\",\"drop\":true,\"count\":1}");
    assert_int_equal(hub_device_get(fresh, &f->owner, "x1", &d, &e), IOT_ERR_UNAVAILABLE);
    assert_int_equal(e.cls, HUB_ERR_TRANSIENT);
    assert_int_equal(e.http_status, 0);
    assert_true(hub_error_is_retryable(e.cls));
    hub_client_free(fresh);
    fresh = client_with(&o);
    fault(f, "{\"match\":\"GET /devices/x1\",\"drop\":true,\"count\":1}");
    assert_int_equal(hub_device_get(fresh, &f->owner, "x1", &d, &e), IOT_OK);
    assert_int_equal(e.attempts, 2);
    hub_device_clear(&d);
    hub_client_free(fresh);
    /* a delete is idempotent: retried after a drop */
    fresh = client_with(&o);
    fault(f, "{\"match\":\"DELETE /devices/x1\",\"drop\":true,\"count\":1}");
    assert_int_equal(hub_device_delete(fresh, &f->owner, "x1", NULL, &e), IOT_OK);
    assert_int_equal(e.attempts, 2);
    assert_null(sim_device(f, "x1"));
    hub_client_free(fresh);
    /* a create is not: the hub may have acted before the connection died */
    fresh = client_with(&o);
    fault(f, "{\"match\":\"PUT /devices/x4\",\"drop\":true,\"count\":1}");
    spec.device_id = "x4";
    assert_int_equal(hub_device_create(fresh, &f->owner, &spec, NULL, &e), IOT_ERR_UNAVAILABLE);
    assert_int_equal(e.attempts, 1);
    hub_client_free(fresh);

    /* the other classes the hub can answer with */
    create(once, f, "x3");
    const struct {
        const char *fault;
        enum hub_error_class cls;
        enum iot_err code;
    } more[] = {
        {"{\"match\":\"GET /devices/x3\",\"status\":408,\"count\":1}", HUB_ERR_TIMEOUT,
         IOT_ERR_TIMEOUT},
        {"{\"match\":\"GET /devices/x3\",\"status\":403,\"count\":1}", HUB_ERR_QUOTA_EXCEEDED,
         IOT_ERR_FORBIDDEN},
        {"{\"match\":\"GET /devices/x3\",\"status\":413,\"count\":1}", HUB_ERR_QUOTA_EXCEEDED,
         IOT_ERR_FORBIDDEN},
        {"{\"match\":\"GET /devices/x3\",\"status\":400,\"count\":1}", HUB_ERR_BAD_REQUEST,
         IOT_ERR_INVALID},
        {"{\"match\":\"GET /devices/x3\",\"status\":401,\"count\":1}", HUB_ERR_UNAUTHORIZED,
         IOT_ERR_UNAUTHORIZED},
        {"{\"match\":\"GET /devices/x3\",\"status\":501,\"count\":1}", HUB_ERR_PROTOCOL,
         IOT_ERR_UPSTREAM},
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        fault(f, more[i].fault);
        assert_int_equal(hub_device_get(once, &f->owner, "x3", &d, &e), more[i].code);
        assert_int_equal(e.cls, more[i].cls);
    }
    hub_client_free(once);
    hub_client_free(retrying);
}

static void test_errors_timeout(void **state)
{
    struct fixture *f = *state;
    struct hub_options o;
    test_options(f, &o);
    o.total_timeout_ms = 300;
    struct hub_client *c = client_with(&o);
    struct hub_error e;
    struct hub_device d;
    create(c, f, "slow");
    fault(f, "{\"match\":\"GET /devices/slow\",\"latency_ms\":1500,\"count\":1}");
    int64_t t0 = support_now_ms();
    assert_int_equal(hub_device_get(c, &f->owner, "slow", &d, &e), IOT_ERR_TIMEOUT);
    int64_t took = support_now_ms() - t0;
    assert_int_equal(e.cls, HUB_ERR_TIMEOUT);
    assert_int_equal(e.http_status, 0);
    assert_true(took >= 250 && took < 1200);
    assert_true(hub_error_is_retryable(e.cls));
    hub_client_free(c);
    support_sleep_ms(1300); /* let the simulator finish the delayed answer before the next test */
    c = client(f);
    assert_int_equal(hub_device_get(c, &f->owner, "slow", &d, &e), IOT_OK);
    hub_device_clear(&d);
    hub_client_free(c);
}

static void test_errors_auth(void **state)
{
    struct fixture *f = *state;
    struct hub_client *c = client(f);
    struct hub_error e;
    struct hub_device d;
    struct hub_device_spec spec = {.device_id = "auth1"};
    assert_int_equal(hub_device_create(c, &f->wrong_key, &spec, NULL, &e), IOT_ERR_UNAUTHORIZED);
    assert_int_equal(e.cls, HUB_ERR_UNAUTHORIZED);
    assert_int_equal(e.http_status, 401);
    assert_string_equal(e.name, "IotHubUnauthorizedAccess");
    assert_false(hub_error_is_retryable(e.cls));
    assert_null(strstr(e.msg, "SharedAccessSignature")); /* no token in messages */
    /* read-only policy: reading works, writing does not */
    assert_int_equal(hub_device_get(c, &f->reader, "auth1", &d, &e), IOT_ERR_NOT_FOUND);
    assert_int_equal(hub_device_create(c, &f->reader, &spec, NULL, &e), IOT_ERR_UNAUTHORIZED);
    struct hub_twin t;
    assert_int_equal(hub_twin_get(c, &f->reader, "auth1", &t, &e), IOT_ERR_UNAUTHORIZED);
    /* the owner still works: a 401 on one policy drops only that policy's token */
    assert_int_equal(hub_device_create(c, &f->owner, &spec, NULL, &e), IOT_OK);
    struct hub_client_stats st;
    hub_client_stats(c, &st);
    assert_int_equal(st.tokens_signed, 4); /* wrong key, reader, reader again after 401, owner */
    hub_client_free(c);
}

static void test_tls_untrusted(void **state)
{
    struct fixture *f = *state;
    struct hub_options o;
    test_options(f, &o);
    o.ca_file = NULL; /* the system store does not know the test CA */
    struct hub_client *c = client_with(&o);
    struct hub_error e;
    struct hub_device d;
    assert_int_equal(hub_device_get(c, &f->owner, "x", &d, &e), IOT_ERR_UNAVAILABLE);
    assert_int_equal(e.cls, HUB_ERR_TLS);
    assert_false(hub_error_is_retryable(e.cls));
    hub_client_free(c);
}

static void test_ssrf_guard(void **state)
{
    struct fixture *f = *state;
    struct hub_options o;
    test_options(f, &o);
    o.allow_private_addresses = false;
    struct hub_client *c = client_with(&o);
    struct hub_error e;
    struct hub_device d;
    json_t *before = support_sim_requests(&f->sim);
    size_t n0 = json_array_size(before);
    json_decref(before);

    assert_int_equal(hub_device_get(c, &f->owner, "x", &d, &e), IOT_ERR_FORBIDDEN);
    assert_int_equal(e.cls, HUB_ERR_BLOCKED);
    assert_non_null(strstr(e.msg, "non-public address"));
    assert_false(hub_error_is_retryable(e.cls));

    char text[256];
    struct connstr ip = {0};
    snprintf(text, sizeof text,
             "HostName=127.0.0.1:%u;SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_A,
             f->sim.port);
    parse_cs(text, &ip);
    assert_int_equal(hub_device_get(c, &ip, "x", &d, &e), IOT_ERR_FORBIDDEN);
    assert_int_equal(e.cls, HUB_ERR_BLOCKED);
    assert_non_null(strstr(e.msg, "127.0.0.1"));
    connstr_clear(&ip);

    json_t *after = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(after), n0); /* nothing arrived */
    json_decref(after);
    hub_client_free(c);
}

/* ---- redirects: a plain-HTTP server that answers 307 to the simulator ---- */

struct redirector {
    int fd;
    unsigned port;
    unsigned sim_port;
    int served;
};

static void *redirector_run(void *arg)
{
    struct redirector *r = arg;
    int conn = accept(r->fd, NULL, NULL);
    if (conn < 0)
        return NULL;
    char req[4096];
    size_t n = 0;
    while (n < sizeof req - 1) {
        ssize_t got = read(conn, req + n, sizeof req - 1 - n);
        if (got <= 0)
            break;
        n += (size_t)got;
        req[n] = '\0';
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    char resp[512];
    int len = snprintf(resp, sizeof resp,
                       "HTTP/1.1 307 Temporary Redirect\r\nLocation: https://localhost:%u/devices/"
                       "x?api-version=2021-04-12\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                       r->sim_port);
    if (write(conn, resp, (size_t)len) == len)
        r->served++;
    close(conn);
    return NULL;
}

static void test_redirect_not_followed(void **state)
{
    struct fixture *f = *state;
    struct redirector r = {.sim_port = f->sim.port};
    r.fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(r.fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(r.fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(r.fd, 4), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(r.fd, (struct sockaddr *)&a, &al), 0);
    r.port = ntohs(a.sin_port);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, redirector_run, &r), 0);

    struct hub_options o;
    test_options(f, &o);
    o.allow_plain_http = true;
    struct hub_client *c = client_with(&o);
    char text[256];
    struct connstr cs = {0};
    snprintf(text, sizeof text,
             "HostName=127.0.0.1:%u;SharedAccessKeyName=iothubowner;SharedAccessKey=" KEY_A,
             r.port);
    parse_cs(text, &cs);
    json_t *before = support_sim_requests(&f->sim);
    size_t n0 = json_array_size(before);
    json_decref(before);
    struct hub_error e;
    struct hub_device d;
    assert_int_equal(hub_device_get(c, &cs, "x", &d, &e), IOT_ERR_UPSTREAM);
    assert_int_equal(e.cls, HUB_ERR_PROTOCOL);
    assert_int_equal(e.http_status, 307);
    pthread_join(th, NULL);
    close(r.fd);
    assert_int_equal(r.served, 1);
    json_t *after = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(after), n0); /* the simulator saw nothing */
    json_decref(after);
    connstr_clear(&cs);
    hub_client_free(c);
}

/* ---- many threads on one client ---- */

struct worker {
    struct hub_client *c;
    struct fixture *f;
    int index;
    int failures;
    char why[256];
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 8; i++) {
        char id[32];
        snprintf(id, sizeof id, "w%d-%d", w->index, i);
        struct hub_device_spec spec = {.device_id = id};
        struct hub_device d;
        struct hub_twin t;
        struct hub_error e;
        json_t *tags = json_pack("{s:b}", "mender", 1);
        bool ok = hub_device_create(w->c, &w->f->owner, &spec, &d, &e) == IOT_OK;
        if (ok) {
            ok = strcmp(d.device_id, id) == 0;
            hub_device_clear(&d);
        }
        ok = ok && hub_twin_patch(w->c, &w->f->owner, id, tags, NULL, NULL, &t, &e) == IOT_OK;
        if (ok) {
            ok = strcmp(t.device_id, id) == 0 && json_is_true(json_object_get(t.tags, "mender"));
            hub_twin_clear(&t);
        }
        ok = ok && hub_device_set_status(w->c, &w->f->owner, id, HUB_STATUS_DISABLED, NULL, NULL,
                                         NULL, &e) == IOT_OK;
        ok = ok && hub_device_delete(w->c, &w->f->owner, id, NULL, &e) == IOT_OK;
        json_decref(tags);
        if (!ok) {
            w->failures++;
            snprintf(w->why, sizeof w->why, "%s: %.200s", id, e.msg);
        }
    }
    return NULL;
}

static void test_concurrency(void **state)
{
    struct fixture *f = *state;
    struct hub_options o;
    test_options(f, &o);
    o.max_connections = 3; /* fewer handles than threads: callers queue for one */
    struct hub_client *c = client_with(&o);
    enum { N = 8 };
    struct worker w[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        w[i] = (struct worker){.c = c, .f = f, .index = i};
        assert_int_equal(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (w[i].failures)
            fail_msg("worker %d: %d failures, last %s", i, w[i].failures, w[i].why);
    }
    struct hub_statistics st;
    struct hub_error e;
    assert_int_equal(hub_statistics(c, &f->owner, &st, &e), IOT_OK);
    assert_int_equal(st.total, 0);
    struct hub_client_stats cs;
    hub_client_stats(c, &cs);
    assert_int_equal(cs.tokens_signed, 1);
    assert_int_equal(cs.requests, N * 8 * 5 + 1);
    /* three handles, each keeping its connection: far fewer connections than requests */
    print_message("concurrency: %llu requests over %llu connections\n",
                  (unsigned long long)cs.requests, (unsigned long long)cs.connections);
    assert_true(cs.connections <= 2 * 3);
    hub_client_free(c);
}

/* ---- throttling: our limiter against the simulator's quota ---- */

struct loader {
    struct hub_client *c;
    struct fixture *f;
    int64_t start_ms, end_ms;
    int ok_in_window, throttled, other;
};

static void *loader_run(void *arg)
{
    struct loader *l = arg;
    while (support_now_ms() < l->end_ms) {
        struct hub_twin t;
        struct hub_error e;
        enum iot_err rc = hub_twin_get(l->c, &l->f->owner, "thr", &t, &e);
        int64_t done = support_now_ms();
        if (rc == IOT_OK) {
            if (done >= l->start_ms && done < l->end_ms)
                l->ok_in_window++;
            hub_twin_clear(&t);
        } else if (e.http_status == 429) {
            l->throttled++;
        } else {
            l->other++;
        }
    }
    return NULL;
}

static void test_throttle_shared_quota(void **state)
{
    struct fixture *f = *state;
    struct hub_client *setup = client(f);
    create(setup, f, "thr");
    hub_client_free(setup);

    /* 8 threads: pacing, not call latency, must bound the rate even on a loaded machine */
    enum { QUOTA = 25, WINDOW_MS = 3000, THREADS = 8 };
    support_sim_call_ok(&f->sim, "POST", "/_sim/config",
                        "{\"throttle\":true,\"quotas\":{\"twin_reads_per_s\":25}}");
    struct hub_options o;
    test_options(f, &o);
    o.ratelimit.disabled = false;
    o.ratelimit.twin_reads_per_s = QUOTA;
    o.ratelimit.max_wait_ms = 5000;
    struct hub_client *c = client_with(&o);

    /* Let the limiter's one-second burst go by, then count accepted calls in a fixed window in
     * which only the sustained rate can be served. */
    int64_t t0 = support_now_ms();
    struct loader l[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        l[i] =
            (struct loader){.c = c, .f = f, .start_ms = t0 + 1000, .end_ms = t0 + 1000 + WINDOW_MS};
        assert_int_equal(pthread_create(&th[i], NULL, loader_run, &l[i]), 0);
    }
    int ok = 0, throttled = 0, other = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        ok += l[i].ok_in_window;
        throttled += l[i].throttled;
        other += l[i].other;
    }
    json_t *stats = NULL;
    assert_int_equal(support_sim_call(&f->sim, "GET", "/_sim/stats", NULL, &stats), 200);
    json_int_t sim_throttled = json_integer_value(json_object_get(stats, "throttled"));
    json_decref(stats);
    support_sim_call_ok(&f->sim, "POST", "/_sim/config", "{\"throttle\":false}");
    struct hub_client_stats cs;
    hub_client_stats(c, &cs);
    hub_client_free(c);

    int expected = QUOTA * WINDOW_MS / 1000;
    print_message("throttle: %d accepted in %d ms (quota %d), %d throttled, limiter waits %llu\n",
                  ok, WINDOW_MS, expected, throttled, (unsigned long long)cs.ratelimit_waits);
    assert_int_equal(throttled, 0);
    assert_int_equal(sim_throttled, 0);
    assert_int_equal(other, 0);
    assert_int_equal(cs.throttled, 0);
    assert_true(cs.ratelimit_waits > 0);  /* the limiter did the pacing */
    assert_true(ok * 10 >= expected * 9); /* >= 90 % of the quota used */
    assert_true(ok <= expected + 2);      /* and not more than it allows */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_device_lifecycle, test_setup),
        cmocka_unit_test_setup(test_device_ids_and_keys, test_setup),
        cmocka_unit_test_setup(test_twin, test_setup),
        cmocka_unit_test_setup(test_set_status_412_retry, test_setup),
        cmocka_unit_test_setup(test_bulk, test_setup),
        cmocka_unit_test_setup(test_query_paging, test_setup),
        cmocka_unit_test_setup(test_errors_throttled, test_setup),
        cmocka_unit_test_setup(test_errors_transient, test_setup),
        cmocka_unit_test_setup(test_errors_timeout, test_setup),
        cmocka_unit_test_setup(test_errors_auth, test_setup),
        cmocka_unit_test_setup(test_tls_untrusted, test_setup),
        cmocka_unit_test_setup(test_ssrf_guard, test_setup),
        cmocka_unit_test_setup(test_redirect_not_followed, test_setup),
        cmocka_unit_test_setup(test_concurrency, test_setup),
        cmocka_unit_test_setup(test_throttle_shared_quota, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
