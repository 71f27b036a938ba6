/* The clients of Mender's own services (src/configure) against tests/sim/mender_sim.py, a
 * separate implementation of the workflows, deviceconfig and deviceauth endpoints that checks what
 * it receives: exact bodies and headers in both Configure modes, the configuration arriving in
 * the simulated device configuration, status and transport error mapping, timeouts, redirects,
 * the deviceauth listings, secrecy of the connection string in messages, and concurrency.
 *
 * The fixture spawns the simulator (path from MENDER_SIM or the MENDER_SIM_PATH macro, interpreter
 * from PYTHON3 or "python3" on PATH) on a free loopback port read from --port-file.
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
#include <time.h>
#include <unistd.h>
#include <curl/curl.h>
#include <jansson.h>

#include "iot-manager/configure.h"
#include "support/sim.h"
#include "support/spawn.h"

#define TENANT  "5f0c1c3e0b0a1c2d3e4f5a6b"
#define KEY     "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY="
#define CS(dev) "HostName=hub.azure-devices.net;DeviceId=" dev ";SharedAccessKey=" KEY

struct fixture {
    struct support_sim sim; /* its base, http://127.0.0.1:PORT, serves the services too */
};

/* ---- process plumbing ---- */

#ifndef MENDER_SIM_PATH
#define MENDER_SIM_PATH NULL /* from the environment only */
#endif

static unsigned start_sim(struct fixture *f)
{
    const char *script = support_env_or("MENDER_SIM", MENDER_SIM_PATH);
    if (!script || access(script, R_OK) != 0) {
        print_error("mender_sim.py not found (%s): set MENDER_SIM\n", script ? script : "?");
        return 0;
    }
    const char *py = support_env_or("PYTHON3", "python3");
    char pf[160];
    snprintf(pf, sizeof pf, "--port-file=%s", f->sim.portfile);
    char quiet[] = "--quiet";
    char *argv[] = {(char *)py, (char *)script, pf, quiet, NULL};
    return support_sim_start(&f->sim, argv, true, "mender_sim.py");
}

static int group_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    *state = f;
    if (!support_sim_init(&f->sim, "/tmp/iotm-mendersim-XXXXXX") || !start_sim(f))
        return -1;
    snprintf(f->sim.base, sizeof f->sim.base, "http://127.0.0.1:%u", f->sim.port);
    return 0;
}

static int group_teardown(void **state)
{
    struct fixture *f = *state;
    if (!f)
        return 0;
    support_sim_cleanup(&f->sim, NULL);
    free(f);
    return 0;
}

/* ---- control API ---- */

static void fault(struct fixture *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fault(struct fixture *f, const char *fmt, ...)
{
    char body[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    support_sim_call_ok(&f->sim, "POST", "/_sim/faults", body);
}

static const char *req_str(json_t *reqs, size_t i, const char *field)
{
    return json_string_value(json_object_get(json_array_get(reqs, i), field));
}

static const char *req_header(json_t *reqs, size_t i, const char *name)
{
    return json_string_value(
        json_object_get(json_object_get(json_array_get(reqs, i), "headers"), name));
}

/* The simulator's deviceconfig view of a device (new reference) or NULL when it has none. */
static json_t *sim_config(struct fixture *f, const char *tenant_seg, const char *device_seg)
{
    char path[512];
    snprintf(path, sizeof path, "/_sim/configurations/%s/%s", tenant_seg, device_seg);
    return support_sim_get_optional(&f->sim, path);
}

static const char *configured(json_t *conf, const char *key)
{
    return json_string_value(json_object_get(json_object_get(conf, "configured"), key));
}

static int test_setup(void **state)
{
    struct fixture *f = *state;
    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    return 0;
}

/* ---- clients ---- */

static struct mender_client *client_mode(struct fixture *f, enum configure_mode mode,
                                         long timeout_ms, unsigned max_conn)
{
    struct mender_client_options o;
    mender_client_options_default(&o);
    o.mode = mode;
    o.workflows_url = f->sim.base;
    o.deviceconfig_url = f->sim.base;
    o.deviceauth_url = f->sim.base;
    o.connect_timeout_ms = 2000;
    o.timeout_ms = timeout_ms;
    o.max_connections = max_conn;
    struct mender_client *c = NULL;
    struct iot_error err = {0};
    if (mender_client_new(&o, &c, &err) != IOT_OK)
        fail_msg("mender_client_new: %s", err.msg);
    return c;
}

static struct mender_client *client(struct fixture *f, enum configure_mode mode)
{
    return client_mode(f, mode, 5000, 4);
}

/* Every message a call produced must be free of the connection string and of its key. */
static void assert_no_secret(const struct iot_error *err)
{
    if (strstr(err->msg, KEY) || strstr(err->msg, "SharedAccessKey") ||
        strstr(err->msg, "HostName="))
        fail_msg("secret in error message: %s", err->msg);
}

static enum iot_err push(struct mender_client *c, const char *tenant, const char *dev,
                         const char *cs, const char *rid, struct iot_error *err)
{
    memset(err, 0, sizeof *err);
    enum iot_err rc = mender_configure_push(c, tenant, dev, cs, rid, err);
    assert_no_secret(err);
    return rc;
}

/* ---- options ---- */

static void test_options(void **state)
{
    struct fixture *f = *state;
    struct mender_client_options o;
    struct mender_client *c = NULL;
    struct iot_error err = {0};

    mender_client_options_default(&o);
    assert_int_equal(o.mode, CONFIGURE_MODE_WORKFLOWS);
    assert_int_equal(o.connect_timeout_ms, 2000);
    assert_int_equal(o.timeout_ms, 10000);
    assert_int_equal(o.max_connections, 16);
    assert_int_equal(mender_client_new(&o, &c, &err), IOT_ERR_CONFIG); /* no workflows URL */
    assert_null(c);

    o.mode = CONFIGURE_MODE_DEVICECONFIG;
    o.workflows_url = f->sim.base;
    assert_int_equal(mender_client_new(&o, &c, &err), IOT_ERR_CONFIG); /* no deviceconfig URL */
    o.deviceconfig_url = "ftp://deviceconfig:8080";
    assert_int_equal(mender_client_new(&o, &c, &err), IOT_ERR_CONFIG);
    o.deviceconfig_url = "http://device config";
    assert_int_equal(mender_client_new(&o, &c, &err), IOT_ERR_CONFIG);
    o.deviceconfig_url = f->sim.base;
    o.timeout_ms = 0;
    assert_int_equal(mender_client_new(&o, &c, &err), IOT_ERR_CONFIG);
    o.timeout_ms = 1000;
    o.max_connections = 0;
    assert_int_equal(mender_client_new(&o, &c, &err), IOT_ERR_CONFIG);
    assert_null(c);

    /* A bare host:port with trailing slashes means http://host:port, as in the original. */
    char bare[64];
    snprintf(bare, sizeof bare, "127.0.0.1:%u//", f->sim.port);
    mender_client_options_default(&o);
    o.workflows_url = bare;
    assert_int_equal(mender_client_new(&o, &c, &err), IOT_OK);
    assert_int_equal(push(c, TENANT, "d1", CS("d1"), NULL, &err), IOT_OK);
    /* No deviceauth URL: listings are a configuration error, not a crash. */
    struct deviceauth_device out[1];
    const char *ids[] = {"d1"};
    size_t found = 9;
    assert_int_equal(mender_deviceauth_devices(c, TENANT, ids, 1, NULL, out, &found, &err),
                     IOT_ERR_CONFIG);
    assert_int_equal(found, 0);
    mender_client_free(c);
    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 1);
    assert_string_equal(req_str(reqs, 0, "path"), "/api/v1/workflow/provision_external_device");
    json_decref(reqs);
    mender_client_free(NULL);
}

/* ---- workflows mode ---- */

static void test_workflows_body_exact(void **state)
{
    struct fixture *f = *state;
    struct mender_client *c = client(f, CONFIGURE_MODE_WORKFLOWS);
    struct iot_error err;
    assert_int_equal(push(c, TENANT, "dev-1", CS("dev-1"), "rid-1", &err), IOT_OK);
    mender_client_free(c);

    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 1);
    assert_string_equal(req_str(reqs, 0, "method"), "POST");
    assert_string_equal(req_str(reqs, 0, "path"), "/api/v1/workflow/provision_external_device");
    assert_string_equal(req_str(reqs, 0, "query"), "");
    const char *body = req_str(reqs, 0, "body");
    assert_string_equal(body, "{\"tenant_id\":\"" TENANT "\",\"device_id\":\"dev-1\","
                              "\"request_id\":\"rid-1\",\"provider\":\"Azure\","
                              "\"configuration\":{\"azureConnectionString\":\"" CS("dev-1") "\"}}");
    /* Parsed, the document has the original's fields in the original's order. */
    json_t *doc = json_loads(body, 0, NULL);
    assert_non_null(doc);
    const char *order[] = {"tenant_id", "device_id", "request_id", "provider", "configuration"};
    size_t k = 0;
    for (void *it = json_object_iter(doc); it; it = json_object_iter_next(doc, it), k++) {
        assert_true(k < 5);
        assert_string_equal(json_object_iter_key(it), order[k]);
    }
    assert_int_equal(k, 5);
    json_decref(doc);
    assert_string_equal(req_header(reqs, 0, "x-men-requestid"), "rid-1");
    assert_string_equal(req_header(reqs, 0, "content-type"), "application/json");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(reqs, 0), "status")), 201);
    json_decref(reqs);

    /* The simulated workflow applied it: the device's configuration holds the string, deployed. */
    json_t *conf = sim_config(f, TENANT, "dev-1");
    assert_non_null(conf);
    assert_string_equal(configured(conf, "azureConnectionString"), CS("dev-1"));
    assert_int_equal(json_integer_value(json_object_get(conf, "deployments")), 1);
    json_decref(conf);
}

static void test_workflows_no_request_id_empty_tenant(void **state)
{
    struct fixture *f = *state;
    struct mender_client *c = client(f, CONFIGURE_MODE_WORKFLOWS);
    struct iot_error err;
    assert_int_equal(push(c, "", "dev-2", CS("dev-2"), NULL, &err), IOT_OK);
    assert_int_equal(push(c, NULL, "dev-3", CS("dev-3"), "", &err), IOT_OK);
    mender_client_free(c);

    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 2);
    assert_string_equal(req_str(reqs, 0, "body"),
                        "{\"tenant_id\":\"\",\"device_id\":\"dev-2\",\"request_id\":\"\","
                        "\"provider\":\"Azure\",\"configuration\":{\"azureConnectionString\":\"" CS(
                            "dev-2") "\"}}");
    assert_null(req_header(reqs, 0, "x-men-requestid"));
    assert_null(req_header(reqs, 1, "x-men-requestid"));
    json_decref(reqs);
    json_t *conf = sim_config(f, "", "dev-3");
    assert_non_null(conf);
    assert_string_equal(configured(conf, "azureConnectionString"), CS("dev-3"));
    json_decref(conf);
}

/* Go's encoder escapes <, >, &, U+2028/U+2029 and replaces invalid UTF-8: so must we. */
static void test_workflows_go_escaping(void **state)
{
    struct fixture *f = *state;
    struct mender_client *c = client(f, CONFIGURE_MODE_WORKFLOWS);
    struct iot_error err;
    assert_int_equal(
        push(c, "t<&>", "d\xe2\x80\xa8\xc3\xa9\xff\"\\\n\x01", CS("x"), "a<b>&c", &err), IOT_OK);
    /* A request id that could split a header is refused before anything is sent. */
    assert_int_equal(push(c, "t", "d", CS("x"), "a\r\nX-Evil: 1", &err), IOT_ERR_INVALID);
    assert_int_equal(push(c, "t", "", CS("x"), NULL, &err), IOT_ERR_INVALID);
    assert_int_equal(push(c, "t", "d", "", NULL, &err), IOT_ERR_INVALID);
    mender_client_free(c);

    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 1);
    assert_string_equal(req_str(reqs, 0, "body"),
                        "{\"tenant_id\":\"t\\u003c\\u0026\\u003e\","
                        "\"device_id\":\"d\\u2028\xc3\xa9\\ufffd\\\"\\\\\\n\\u0001\","
                        "\"request_id\":\"a\\u003cb\\u003e\\u0026c\",\"provider\":\"Azure\","
                        "\"configuration\":{\"azureConnectionString\":\"" CS("x") "\"}}");
    assert_string_equal(req_header(reqs, 0, "x-men-requestid"), "a<b>&c");
    json_decref(reqs);
}

/* ---- deviceconfig mode ---- */

static void test_deviceconfig_patch_then_deploy(void **state)
{
    struct fixture *f = *state;
    /* The device already has configuration of its own: Configure merges, it does not replace. */
    assert_int_equal(support_sim_call(&f->sim, "PATCH",
                                      "/api/internal/v1/deviceconfig/tenants/" TENANT
                                      "/configurations/device/dev-1",
                                      "{\"timezone\":\"UTC\"}", NULL),
                     204);
    const size_t skip = 1; /* that PATCH is in the log too */

    struct mender_client *c = client(f, CONFIGURE_MODE_DEVICECONFIG);
    struct iot_error err;
    assert_int_equal(push(c, TENANT, "dev-1", CS("dev-1"), "rid-7", &err), IOT_OK);

    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), skip + 2);
    const char *base =
        "/api/internal/v1/deviceconfig/tenants/" TENANT "/configurations/device/dev-1";
    assert_string_equal(req_str(reqs, skip, "method"), "PATCH");
    assert_string_equal(req_str(reqs, skip, "path"), base);
    assert_string_equal(req_str(reqs, skip, "body"),
                        "{\"azureConnectionString\":\"" CS("dev-1") "\"}");
    assert_string_equal(req_header(reqs, skip, "content-type"), "application/json");
    assert_string_equal(req_header(reqs, skip, "x-men-requestid"), "rid-7");
    assert_string_equal(req_str(reqs, skip + 1, "method"), "POST");
    char deploy[256];
    snprintf(deploy, sizeof deploy, "%s/deploy", base);
    assert_string_equal(req_str(reqs, skip + 1, "path"), deploy);
    assert_string_equal(req_str(reqs, skip + 1, "body"), "{\"retries\":1}");
    assert_string_equal(req_header(reqs, skip + 1, "content-type"), "application/json");
    assert_string_equal(req_header(reqs, skip + 1, "x-men-requestid"), "rid-7");
    json_decref(reqs);

    json_t *conf = sim_config(f, TENANT, "dev-1");
    assert_non_null(conf);
    assert_string_equal(configured(conf, "azureConnectionString"), CS("dev-1"));
    assert_string_equal(configured(conf, "timezone"), "UTC");
    assert_int_equal(json_integer_value(json_object_get(conf, "deployments")), 1);
    /* The deployment carries the whole configured set, as deviceconfig deploys it. */
    json_t *dep = json_array_get(json_object_get(conf, "deployed"), 0);
    assert_string_equal(json_string_value(json_object_get(dep, "timezone")), "UTC");
    json_decref(conf);

    /* A new connection string replaces the old value and is deployed again. */
    assert_int_equal(push(c, TENANT, "dev-1", CS("dev-1b"), "rid-8", &err), IOT_OK);
    conf = sim_config(f, TENANT, "dev-1");
    assert_string_equal(configured(conf, "azureConnectionString"), CS("dev-1b"));
    assert_int_equal(json_integer_value(json_object_get(conf, "deployments")), 2);
    json_decref(conf);

    /* Empty tenant and a device id that needs escaping: path segments are percent-encoded. */
    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    assert_int_equal(push(c, "", "a b/c", CS("abc"), NULL, &err), IOT_OK);
    reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 2);
    assert_string_equal(req_str(reqs, 0, "path"),
                        "/api/internal/v1/deviceconfig/tenants//configurations/device/a%20b%2Fc");
    assert_null(req_header(reqs, 0, "x-men-requestid"));
    json_decref(reqs);
    conf = sim_config(f, "", "a%20b%2Fc");
    assert_non_null(conf);
    assert_string_equal(configured(conf, "azureConnectionString"), CS("abc"));
    json_decref(conf);
    mender_client_free(c);
}

/* deviceconfig's own validation (values of at most 4096 characters) is a permanent error. */
static void test_deviceconfig_rejects_oversized(void **state)
{
    struct fixture *f = *state;
    struct mender_client *c = client(f, CONFIGURE_MODE_DEVICECONFIG);
    size_t n = 5000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, 'A', n);
    static const char head[] = "HostName=h;DeviceId=d;SharedAccessKey=";
    memcpy(big, head, sizeof head - 1);
    big[n] = '\0';
    struct iot_error err = {0};
    assert_int_equal(mender_configure_push(c, TENANT, "d", big, NULL, &err), IOT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "400"));
    assert_non_null(strstr(err.msg, "4096"));
    assert_null(strstr(err.msg, "AAAAAAAA"));
    free(big);
    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 1); /* no deploy after a failed PATCH */
    json_decref(reqs);
    assert_null(sim_config(f, TENANT, "d"));
    mender_client_free(c);
}

/* ---- status mapping ---- */

static void check_status(struct fixture *f, struct mender_client *c, const char *match, int status,
                         enum iot_err want)
{
    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    fault(f, "{\"match\":\"%s\",\"status\":%d,\"body\":{\"error\":\"simulated %d\"}}", match,
          status, status);
    struct iot_error err;
    enum iot_err rc = push(c, TENANT, "dev-s", CS("dev-s"), "rid-s", &err);
    if (rc != want)
        fail_msg("%s -> %d: got %d (%s), want %d", match, status, rc, err.msg, want);
    char text[32];
    snprintf(text, sizeof text, "answered %d: simulated %d", status, status);
    if (!strstr(err.msg, text))
        fail_msg("message lacks '%s': %s", text, err.msg);
}

static void test_push_status_mapping(void **state)
{
    struct fixture *f = *state;
    struct mender_client *wf = client(f, CONFIGURE_MODE_WORKFLOWS);
    struct mender_client *dc = client(f, CONFIGURE_MODE_DEVICECONFIG);
    const int unavailable[] = {500, 502, 503, 429};
    for (size_t i = 0; i < sizeof unavailable / sizeof unavailable[0]; i++) {
        check_status(f, wf, "POST /api/v1/workflow/", unavailable[i], IOT_ERR_UNAVAILABLE);
        check_status(f, dc, "PATCH /api/internal/v1/deviceconfig/", unavailable[i],
                     IOT_ERR_UNAVAILABLE);
        check_status(f, dc, "POST /api/internal/v1/deviceconfig/", unavailable[i],
                     IOT_ERR_UNAVAILABLE);
    }
    const int invalid[] = {400, 401, 403, 409, 413};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        check_status(f, wf, "POST /api/v1/workflow/", invalid[i], IOT_ERR_INVALID);
        check_status(f, dc, "PATCH /api/internal/v1/deviceconfig/", invalid[i], IOT_ERR_INVALID);
        check_status(f, dc, "POST /api/internal/v1/deviceconfig/", invalid[i], IOT_ERR_INVALID);
    }
    /* workflows: 404 (no such workflow) is an error like any other 4xx. */
    check_status(f, wf, "POST /api/v1/workflow/", 404, IOT_ERR_INVALID);

    /* deviceconfig: a 404 on the PATCH means the device is gone; like the workflow, that is
     * success, and there is nothing to deploy. */
    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    fault(f, "{\"match\":\"PATCH /api/internal/v1/deviceconfig/\",\"status\":404}");
    struct iot_error err;
    assert_int_equal(push(dc, TENANT, "gone", CS("gone"), NULL, &err), IOT_OK);
    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 1);
    assert_string_equal(req_str(reqs, 0, "method"), "PATCH");
    json_decref(reqs);

    /* A failed deploy after a successful PATCH: the configuration is stored, the error is
     * retryable, and pushing again deploys it. */
    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    fault(f, "{\"match\":\"POST /api/internal/v1/deviceconfig/\",\"status\":503}");
    assert_int_equal(push(dc, TENANT, "dev-d", CS("dev-d"), NULL, &err), IOT_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "deviceconfig deploy"));
    json_t *conf = sim_config(f, TENANT, "dev-d");
    assert_int_equal(json_integer_value(json_object_get(conf, "deployments")), 0);
    json_decref(conf);
    assert_int_equal(push(dc, TENANT, "dev-d", CS("dev-d"), NULL, &err), IOT_OK);
    conf = sim_config(f, TENANT, "dev-d");
    assert_int_equal(json_integer_value(json_object_get(conf, "deployments")), 1);
    json_decref(conf);

    mender_client_free(wf);
    mender_client_free(dc);
}

static void test_secret_never_in_messages(void **state)
{
    struct fixture *f = *state;
    struct mender_client *wf = client(f, CONFIGURE_MODE_WORKFLOWS);
    struct mender_client *dc = client(f, CONFIGURE_MODE_DEVICECONFIG);
    struct iot_error err;
    /* Peers that echo what they received, whole or in part, JSON or not. */
    const char *bodies[] = {
        "{\"error\":\"bad configuration: " CS("dev-x") "\"}",
        "\"" CS("dev-x") "\"",
        "{\"error\":\"invalid value " KEY "\"}",
        "{\"error\":\"invalid value ...LWtleS1mb3ItdGVzd...\"}",
        "plain text: sharedaccesskey rejected",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        for (int mode = 0; mode < 2; mode++) {
            support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
            json_t *b = json_string(bodies[i]);
            char *bj = json_dumps(b, JSON_ENCODE_ANY);
            fault(f, "{\"match\":\"* /api/\",\"status\":%d,\"body\":%s}", mode ? 400 : 500, bj);
            free(bj);
            json_decref(b);
            enum iot_err rc = push(mode ? dc : wf, TENANT, "dev-x", CS("dev-x"), NULL, &err);
            assert_int_equal(rc, mode ? IOT_ERR_INVALID : IOT_ERR_UNAVAILABLE);
            assert_non_null(strstr(err.msg, "withheld"));
        }
    }
    /* An error that does not echo the secret keeps its excerpt. */
    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    fault(f, "{\"match\":\"* /api/\",\"status\":400,\"body\":{\"error\":\"device dev-x: nope\"}}");
    assert_int_equal(push(wf, TENANT, "dev-x", CS("dev-x"), NULL, &err), IOT_ERR_INVALID);
    assert_non_null(strstr(err.msg, "device dev-x: nope"));
    mender_client_free(wf);
    mender_client_free(dc);
}

/* ---- transport ---- */

static void test_timeout(void **state)
{
    struct fixture *f = *state;
    for (int mode = 0; mode < 2; mode++) {
        support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
        fault(f, "{\"match\":\"* /api/\",\"latency_ms\":3000}");
        struct mender_client *c =
            client_mode(f, mode ? CONFIGURE_MODE_DEVICECONFIG : CONFIGURE_MODE_WORKFLOWS, 400, 2);
        struct iot_error err;
        int64_t t0 = support_now_ms();
        assert_int_equal(push(c, TENANT, "slow", CS("slow"), NULL, &err), IOT_ERR_UNAVAILABLE);
        int64_t took = support_now_ms() - t0;
        if (took < 350 || took > 1500)
            fail_msg("timeout after %lld ms (limit 400)", (long long)took);
        assert_non_null(strstr(err.msg, "Timeout"));
        mender_client_free(c);
    }
}

static void test_redirect_not_followed(void **state)
{
    struct fixture *f = *state;
    struct mender_client *c = client(f, CONFIGURE_MODE_WORKFLOWS);
    fault(f, "{\"match\":\"* /api/\",\"status\":307,\"location\":\"%s/elsewhere\",\"count\":-1}",
          f->sim.base);
    struct iot_error err;
    assert_int_equal(push(c, TENANT, "d", CS("d"), NULL, &err), IOT_ERR_UPSTREAM);
    assert_non_null(strstr(err.msg, "307"));
    struct deviceauth_device out[1];
    const char *ids[] = {"d"};
    size_t found = 7;
    assert_int_equal(mender_deviceauth_devices(c, TENANT, ids, 1, NULL, out, &found, &err),
                     IOT_ERR_UPSTREAM);
    assert_int_equal(found, 0);
    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 2); /* nothing reached /elsewhere */
    for (size_t i = 0; i < 2; i++)
        assert_null(strstr(req_str(reqs, i, "path"), "elsewhere"));
    json_decref(reqs);
    mender_client_free(c);
}

static void test_connection_refused(void **state)
{
    (void)state;
    /* A port nobody listens on: bind, note, close. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", ntohs(a.sin_port));
    struct mender_client_options o;
    mender_client_options_default(&o);
    o.workflows_url = url;
    o.deviceauth_url = url;
    struct mender_client *c = NULL;
    struct iot_error err = {0};
    assert_int_equal(mender_client_new(&o, &c, &err), IOT_OK);
    int64_t t0 = support_now_ms();
    assert_int_equal(push(c, TENANT, "d", CS("d"), NULL, &err), IOT_ERR_UNAVAILABLE);
    assert_true(support_now_ms() - t0 < 2000);
    struct deviceauth_device out[1];
    const char *ids[] = {"d"};
    size_t found = 0;
    assert_int_equal(mender_deviceauth_devices(c, TENANT, ids, 1, NULL, out, &found, &err),
                     IOT_ERR_UNAVAILABLE);
    mender_client_free(c);
}

/* ---- deviceauth ---- */

static const char device_table[] =
    "[{\"id\":\"d1\",\"status\":\"accepted\",\"identity_data\":{\"mac\":\"00:01\"},"
    "\"auth_sets\":[{\"id\":\"as1\",\"pubkey\":\"PEM\",\"status\":\"accepted\"}],"
    "\"created_ts\":\"2024-01-01T00:00:00Z\",\"decommissioning\":false},"
    "{\"id\":\"d2\",\"status\":\"rejected\"},"
    "{\"id\":\"d3\",\"status\":\"no auth\"},"
    "{\"id\":\"d4\",\"status\":\"pending\"},"
    "{\"id\":\"a b\",\"status\":\"accepted\"}]";

static void test_deviceauth_devices(void **state)
{
    struct fixture *f = *state;
    support_sim_call_ok(&f->sim, "PUT", "/_sim/deviceauth/", device_table);
    struct mender_client *c = client(f, CONFIGURE_MODE_WORKFLOWS);
    const char *ids[] = {"d1", "d2", "d3", "unknown-1", "unknown-2"};
    struct deviceauth_device out[5];
    size_t found = 0;
    struct iot_error err = {0};
    assert_int_equal(mender_deviceauth_devices(c, "", ids, 5, "rid-9", out, &found, &err), IOT_OK);
    assert_int_equal(found, 3);
    assert_string_equal(out[0].id, "d1");
    assert_string_equal(out[0].status, "accepted");
    assert_string_equal(out[1].id, "d2");
    assert_string_equal(out[1].status, "rejected");
    assert_string_equal(out[2].id, "d3");
    assert_string_equal(out[2].status, "no auth");
    for (size_t i = 0; i < found; i++)
        deviceauth_device_clear(&out[i]);
    assert_null(out[0].id);
    deviceauth_device_clear(NULL);

    /* Ids are query-escaped; another tenant's table is another tenant's. */
    const char *other[] = {"a b", "d1"};
    assert_int_equal(mender_deviceauth_devices(c, TENANT, other, 2, NULL, out, &found, &err),
                     IOT_OK);
    assert_int_equal(found, 0);
    assert_int_equal(mender_deviceauth_devices(c, "", other, 2, NULL, out, &found, &err), IOT_OK);
    assert_int_equal(found, 2);
    assert_string_equal(out[0].id, "d1"); /* table order */
    assert_string_equal(out[1].id, "a b");
    for (size_t i = 0; i < found; i++)
        deviceauth_device_clear(&out[i]);

    /* No ids: no request (deviceauth would list every device). */
    found = 3;
    assert_int_equal(mender_deviceauth_devices(c, "", ids, 0, NULL, out, &found, &err), IOT_OK);
    assert_int_equal(found, 0);
    const char *bad[] = {"d1", ""};
    assert_int_equal(mender_deviceauth_devices(c, "", bad, 2, NULL, out, &found, &err),
                     IOT_ERR_INVALID);

    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 3);
    assert_string_equal(req_str(reqs, 0, "method"), "GET");
    assert_string_equal(req_str(reqs, 0, "path"), "/api/internal/v1/devauth/tenants//devices");
    assert_string_equal(req_str(reqs, 0, "query"),
                        "id=d1&id=d2&id=d3&id=unknown-1&id=unknown-2&per_page=5");
    assert_string_equal(req_header(reqs, 0, "x-men-requestid"), "rid-9");
    assert_string_equal(req_str(reqs, 1, "path"),
                        "/api/internal/v1/devauth/tenants/" TENANT "/devices");
    assert_string_equal(req_str(reqs, 1, "query"), "id=a+b&id=d1&per_page=2");
    assert_null(req_header(reqs, 1, "x-men-requestid"));
    json_decref(reqs);
    mender_client_free(c);
}

static void test_deviceauth_accepted_page(void **state)
{
    struct fixture *f = *state;
    support_sim_call_ok(
        &f->sim, "PUT", "/_sim/deviceauth/t2",
        "[{\"id\":\"a1\",\"status\":\"accepted\"},{\"id\":\"p1\",\"status\":\"pending\"},"
        "{\"id\":\"a2\",\"status\":\"accepted\"},{\"id\":\"a3\",\"status\":\"accepted\"},"
        "{\"id\":\"p2\",\"status\":\"pending\"},{\"id\":\"a4\",\"status\":\"accepted\"},"
        "{\"id\":\"a5\",\"status\":\"accepted\"}]");
    struct mender_client *c = client(f, CONFIGURE_MODE_DEVICECONFIG);
    struct deviceauth_device out[2];
    size_t found = 0;
    struct iot_error err = {0};
    const char *want[] = {"a1", "a2", "a3", "a4", "a5"};
    size_t seen = 0;
    for (size_t page = 1; page <= 4; page++) {
        assert_int_equal(mender_deviceauth_accepted_page(c, "t2", page, 2, out, &found, &err),
                         IOT_OK);
        assert_int_equal(found, page <= 2 ? 2 : page == 3 ? 1 : 0);
        for (size_t i = 0; i < found; i++) {
            assert_string_equal(out[i].id, want[seen++]);
            assert_string_equal(out[i].status, "accepted");
            deviceauth_device_clear(&out[i]);
        }
    }
    assert_int_equal(seen, 5);
    assert_int_equal(mender_deviceauth_accepted_page(c, "t2", 0, 2, out, &found, &err),
                     IOT_ERR_INVALID);
    assert_int_equal(mender_deviceauth_accepted_page(c, "t2", 1, 501, out, &found, &err),
                     IOT_ERR_INVALID);
    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 4);
    assert_string_equal(req_str(reqs, 0, "path"), "/api/internal/v1/devauth/tenants/t2/devices");
    assert_string_equal(req_str(reqs, 0, "query"), "status=accepted&page=1&per_page=2");
    assert_string_equal(req_str(reqs, 3, "query"), "status=accepted&page=4&per_page=2");
    json_decref(reqs);
    mender_client_free(c);
}

static void check_listing(struct fixture *f, struct mender_client *c, const char *fault_body,
                          enum iot_err want)
{
    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    support_sim_call_ok(&f->sim, "POST", "/_sim/faults", fault_body);
    const char *ids[] = {"d1", "d2"};
    struct deviceauth_device out[2];
    size_t found = 5;
    struct iot_error err = {0};
    enum iot_err rc = mender_deviceauth_devices(c, "", ids, 2, NULL, out, &found, &err);
    if (rc != want)
        fail_msg("fault %s: got %d (%s), want %d", fault_body, rc, err.msg, want);
    assert_int_equal(found, 0);
}

static void test_deviceauth_errors(void **state)
{
    struct fixture *f = *state;
    struct mender_client *c = client(f, CONFIGURE_MODE_WORKFLOWS);
    const char *m = "\"match\":\"GET /api/internal/v1/devauth/\"";
    char b[512];
#define CHECK(want, ...)                                                                           \
    do {                                                                                           \
        snprintf(b, sizeof b, __VA_ARGS__);                                                        \
        check_listing(f, c, b, want);                                                              \
    } while (0)
    CHECK(IOT_ERR_UNAVAILABLE, "{%s,\"status\":500}", m);
    CHECK(IOT_ERR_UNAVAILABLE, "{%s,\"status\":503}", m);
    CHECK(IOT_ERR_UNAVAILABLE, "{%s,\"status\":429}", m);
    CHECK(IOT_ERR_INVALID, "{%s,\"status\":400}", m);
    CHECK(IOT_ERR_INVALID, "{%s,\"status\":404}", m);
    CHECK(IOT_ERR_UPSTREAM, "{%s,\"status\":204}", m);
    CHECK(IOT_ERR_UPSTREAM, "{%s,\"status\":200,\"body\":\"not json\"}", m);
    CHECK(IOT_ERR_UPSTREAM, "{%s,\"status\":200,\"body\":{\"id\":\"d1\"}}", m);
    CHECK(IOT_ERR_UPSTREAM, "{%s,\"status\":200,\"body\":[\"d1\"]}", m);
    CHECK(IOT_ERR_UPSTREAM, "{%s,\"status\":200,\"body\":[{\"id\":1,\"status\":\"x\"}]}", m);
    /* More devices than asked for: unusable, and nothing half-filled is left behind. */
    CHECK(IOT_ERR_UPSTREAM,
          "{%s,\"status\":200,\"body\":[{\"id\":\"d1\",\"status\":\"accepted\"},"
          "{\"id\":\"d2\",\"status\":\"accepted\"},{\"id\":\"d3\",\"status\":\"accepted\"}]}",
          m);
    /* null is Go's empty list; missing status is "" and an id-less entry is skipped. */
    CHECK(IOT_OK, "{%s,\"status\":200,\"body\":\"null\"}", m);
#undef CHECK
    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    support_sim_call_ok(&f->sim, "POST", "/_sim/faults",
                        "{\"match\":\"GET /api/internal/v1/devauth/\",\"status\":200,"
                        "\"body\":[{\"id\":\"d1\",\"extra\":[1,2]},{\"status\":\"accepted\"}]}");
    const char *ids[] = {"d1", "d2"};
    struct deviceauth_device out[2];
    size_t found = 0;
    struct iot_error err = {0};
    assert_int_equal(mender_deviceauth_devices(c, "", ids, 2, NULL, out, &found, &err), IOT_OK);
    assert_int_equal(found, 1);
    assert_string_equal(out[0].id, "d1");
    assert_string_equal(out[0].status, "");
    deviceauth_device_clear(&out[0]);
    mender_client_free(c);
}

/* ---- concurrency ---- */

#define THREADS       8
#define PER_THREAD    10
#define DC_PER_THREAD 5

struct worker {
    struct mender_client *c;
    int index;
    int pushes;
    int failures;
    char msg[IOT_ERROR_MSG_MAX];
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->pushes; i++) {
        char dev[32], cs[160], rid[32];
        snprintf(dev, sizeof dev, "dev-%d-%d", w->index, i);
        snprintf(cs, sizeof cs, "HostName=h;DeviceId=%s;SharedAccessKey=" KEY, dev);
        snprintf(rid, sizeof rid, "rid-%d-%d", w->index, i);
        struct iot_error err = {0};
        if (mender_configure_push(w->c, TENANT, dev, cs, rid, &err) != IOT_OK) {
            w->failures++;
            snprintf(w->msg, sizeof w->msg, "%s", err.msg);
        }
    }
    return NULL;
}

static void run_workers(struct mender_client *c, int pushes)
{
    pthread_t th[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.c = c, .index = i, .pushes = pushes};
        assert_int_equal(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < THREADS; i++)
        if (w[i].failures)
            fail_msg("thread %d: %d failures, last: %s", i, w[i].failures, w[i].msg);
}

static void check_all_configured(struct fixture *f, int pushes, int deployments)
{
    for (int t = 0; t < THREADS; t++) {
        for (int i = 0; i < pushes; i++) {
            char dev[32], cs[160];
            snprintf(dev, sizeof dev, "dev-%d-%d", t, i);
            snprintf(cs, sizeof cs, "HostName=h;DeviceId=%s;SharedAccessKey=" KEY, dev);
            json_t *conf = sim_config(f, TENANT, dev);
            if (!conf)
                fail_msg("%s has no configuration", dev);
            assert_string_equal(configured(conf, "azureConnectionString"), cs);
            assert_int_equal(json_integer_value(json_object_get(conf, "deployments")), deployments);
            json_decref(conf);
        }
    }
}

static void test_concurrent_pushes(void **state)
{
    struct fixture *f = *state;
    /* 8 threads share 4 connections: the pool makes the others wait, not fail. */
    struct mender_client *c = client_mode(f, CONFIGURE_MODE_WORKFLOWS, 10000, 4);
    run_workers(c, PER_THREAD);
    mender_client_free(c);
    json_t *reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), THREADS * PER_THREAD);
    /* Every request carried its own request id, in header and body alike. */
    for (size_t i = 0; i < json_array_size(reqs); i++) {
        const char *rid = req_header(reqs, i, "x-men-requestid");
        assert_non_null(rid);
        char needle[64];
        snprintf(needle, sizeof needle, "\"request_id\":\"%s\"", rid);
        assert_non_null(strstr(req_str(reqs, i, "body"), needle));
    }
    json_decref(reqs);
    check_all_configured(f, PER_THREAD, 1);

    support_sim_call_ok(&f->sim, "POST", "/_sim/reset", "{}");
    c = client_mode(f, CONFIGURE_MODE_DEVICECONFIG, 10000, 3);
    run_workers(c, DC_PER_THREAD);
    mender_client_free(c);
    reqs = support_sim_requests(&f->sim);
    assert_int_equal(json_array_size(reqs), 2 * THREADS * DC_PER_THREAD);
    json_decref(reqs);
    check_all_configured(f, DC_PER_THREAD, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_options, test_setup),
        cmocka_unit_test_setup(test_workflows_body_exact, test_setup),
        cmocka_unit_test_setup(test_workflows_no_request_id_empty_tenant, test_setup),
        cmocka_unit_test_setup(test_workflows_go_escaping, test_setup),
        cmocka_unit_test_setup(test_deviceconfig_patch_then_deploy, test_setup),
        cmocka_unit_test_setup(test_deviceconfig_rejects_oversized, test_setup),
        cmocka_unit_test_setup(test_push_status_mapping, test_setup),
        cmocka_unit_test_setup(test_secret_never_in_messages, test_setup),
        cmocka_unit_test_setup(test_timeout, test_setup),
        cmocka_unit_test_setup(test_redirect_not_followed, test_setup),
        cmocka_unit_test_setup(test_connection_refused, test_setup),
        cmocka_unit_test_setup(test_deviceauth_devices, test_setup),
        cmocka_unit_test_setup(test_deviceauth_accepted_page, test_setup),
        cmocka_unit_test_setup(test_deviceauth_errors, test_setup),
        cmocka_unit_test_setup(test_concurrent_pushes, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
