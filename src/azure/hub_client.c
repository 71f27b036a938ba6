/* The IoT Hub operations: request building, pacing, retries and answer parsing. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "azure/hub_internal.h"
#include "iot-manager/log.h"
#include "iot-manager/net.h"
#include "iot-manager/sas.h"

struct hub_client {
    struct hub_options opts; /* string members point nowhere: copied into `http` */
    struct hub_http *http;
    struct ratelimit *rl;
    struct hub_token_cache *tokens;
    atomic_uint_fast64_t n_requests, n_retries, n_throttled, n_waits, wait_ns, n_refused, n_signed;
};

void hub_options_default(struct hub_options *o)
{
    memset(o, 0, sizeof *o);
    o->connect_timeout_ms = 5000;
    o->total_timeout_ms = 15000;
    o->max_connections = 16;
    o->max_response_bytes = 16u << 20;
    o->set_status_attempts = 3;
    o->query_page_size = 100;
    /* Small on purpose: the lifecycle worker retries through its queue, so a call should give
     * up quickly and report Retry-After rather than hold a worker for minutes. */
    o->retry = (struct hub_retry_policy){.max_attempts = 2,
                                         .base_ms = 100,
                                         .cap_ms = 1000,
                                         .throttled_base_ms = 1000,
                                         .throttled_cap_ms = 5000,
                                         .max_total_ms = 5000};
    ratelimit_config_default(&o->ratelimit);
}

const char *hub_device_status_name(enum hub_device_status s)
{
    switch (s) {
    case HUB_STATUS_ENABLED:
        return "enabled";
    case HUB_STATUS_DISABLED:
        return "disabled";
    default:
        return "";
    }
}

enum iot_err hub_client_new(const struct hub_options *opts, struct hub_client **out,
                            struct iot_error *err)
{
    *out = NULL;
    if (opts->connect_timeout_ms <= 0 || opts->total_timeout_ms <= 0 ||
        opts->max_connections == 0 || opts->max_response_bytes == 0 ||
        opts->retry.max_attempts == 0 || opts->set_status_attempts == 0)
        return iot_error_set(err, IOT_ERR_CONFIG, "hub client: invalid options");
    struct hub_client *c = calloc(1, sizeof *c);
    if (!c)
        return iot_error_set(err, IOT_ERR_NOMEM, "hub client: out of memory");
    c->opts = *opts;
    c->opts.ca_file = NULL;
    c->opts.user_agent = NULL;
    enum iot_err rc = hub_http_new(opts, &c->http, err);
    if (rc == IOT_OK)
        rc = ratelimit_new(&opts->ratelimit, &c->rl, err);
    if (rc == IOT_OK && hub_token_cache_new(0, NULL, &c->tokens) != IOT_OK)
        rc = iot_error_set(err, IOT_ERR_NOMEM, "hub client: out of memory");
    if (rc != IOT_OK) {
        hub_client_free(c);
        return rc;
    }
    *out = c;
    return IOT_OK;
}

void hub_client_free(struct hub_client *c)
{
    if (!c)
        return;
    hub_http_free(c->http);
    ratelimit_free(c->rl);
    hub_token_cache_free(c->tokens);
    free(c);
}

void hub_client_stats(struct hub_client *c, struct hub_client_stats *out)
{
    out->requests = atomic_load(&c->n_requests);
    out->retries = atomic_load(&c->n_retries);
    out->throttled = atomic_load(&c->n_throttled);
    out->ratelimit_waits = atomic_load(&c->n_waits);
    out->ratelimit_wait_ns = atomic_load(&c->wait_ns);
    out->ratelimit_refused = atomic_load(&c->n_refused);
    out->tokens_signed = atomic_load(&c->n_signed);
    out->connections = hub_http_sockets(c->http);
}

/* ---- the generic call ---- */

static int64_t wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint32_t random_u32(void)
{
    uint32_t r = 0;
    if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
        r = (uint32_t)net_now_ms(); /* jitter only needs to differ between callers */
    return r;
}

/* What a 2xx answer holds for hub_call_decode(). */
enum call_answer { ANSWER_NONE, ANSWER_DEVICE, ANSWER_TWIN };

/* One operation: what differs between them. Everything it points to is borrowed for the call. */
struct call {
    const char *method;
    const char *prefix;    /* "/devices/" */
    const char *device_id; /* escaped into the path; NULL: none */
    const char *suffix;
    enum ratelimit_class rl_class;
    unsigned rl_tokens; /* 0 counts as 1 */
    bool idempotent;
    const char *if_match;
    const char *continuation;
    unsigned max_items;
    const char *body; /* JSON text; NULL: none */
    /* hub_call_decode() only: the answer is decoded into out.device or out.twin (per `answer`),
     * or checked and dropped where that is NULL. */
    enum call_answer answer;
    union {
        struct hub_device *device;
        struct hub_twin *twin;
    } out;
};

static void herr_reset(struct hub_error *herr)
{
    memset(herr, 0, sizeof *herr);
    herr->retry_after_ms = -1;
}

static enum iot_err fail(struct hub_error *herr, enum hub_error_class cls, const char *msg)
{
    hub_error_set(herr, cls, "%s", msg);
    return herr->code;
}

/* A service connection string we can use: a hub host we will put in a URL, a policy name and
 * a key. A device connection string has no policy and could not manage the registry. */
static enum iot_err check_connstr(const struct connstr *cs, struct hub_error *herr)
{
    if (!cs || !cs->hostname || !hub_host_valid(cs->hostname))
        return fail(herr, HUB_ERR_INVALID, "connection string: HostName is not a valid host");
    if (!cs->name || !*cs->name)
        return fail(herr, HUB_ERR_INVALID,
                    "connection string: a SharedAccessKeyName (service policy) is required");
    if (!cs->has_key || cs->key_len == 0)
        return fail(herr, HUB_ERR_INVALID, "connection string: SharedAccessKey is required");
    return IOT_OK;
}

static enum iot_err check_id(const char *id, struct hub_error *herr)
{
    if (!hub_device_id_valid(id))
        return fail(
            herr, HUB_ERR_INVALID,
            "invalid device id: 1 to 128 of A-Z a-z 0-9 - : . + % _ # * ? ! ( ) , = @ ; $ '");
    return IOT_OK;
}

/* One HTTP attempt in iot_manager_hub_requests_total: operation = method and path template,
 * status = the HTTP status, or the error class when no answer came. */
static void count_attempt(const struct hub_client *c, const struct call *k,
                          const struct hub_http_response *resp, const struct hub_error *herr)
{
    if (!c->opts.metrics)
        return;
    char status[32];
    if (resp->status > 0)
        snprintf(status, sizeof status, "%d", resp->status);
    else
        snprintf(status, sizeof status, "%s", hub_error_class_name(herr->cls));
    char labels[160];
    snprintf(labels, sizeof labels, "operation=\"%s %s%s%s\",status=\"%s\"", k->method, k->prefix,
             k->device_id ? "{id}" : "", k->suffix ? k->suffix : "", status);
    metrics_counter_add(c->opts.metrics, "iot_manager_hub_requests_total", labels, 1);
}

/* Runs `call` with pacing and retries. IOT_OK only for a 2xx answer; otherwise `herr` says why
 * and `resp` still holds the last answer (if any) for callers that read error bodies. */
static enum iot_err hub_call(struct hub_client *c, const struct connstr *cs, const struct call *k,
                             struct hub_http_response *resp, struct hub_error *herr)
{
    char url[HUB_URL_MAX];
    char token[SAS_TOKEN_MAX];
    struct iot_error ierr = {0};
    enum iot_err rc;
    const struct hub_retry_policy *rp = &c->opts.retry;
    int64_t t0 = net_now_ms();
    memset(resp, 0, sizeof *resp);

    if ((rc = check_connstr(cs, herr)) != IOT_OK)
        return rc;
    if (hub_url_build(c->opts.allow_plain_http, cs->hostname, k->prefix, k->device_id, k->suffix,
                      url, sizeof url) != IOT_OK)
        return fail(herr, HUB_ERR_INVALID, "cannot build the request URL");

    for (unsigned attempt = 1;; attempt++) {
        int64_t waited = 0;
        rc = ratelimit_acquire(c->rl, cs->hostname, k->rl_class, k->rl_tokens ? k->rl_tokens : 1,
                               &waited, &ierr);
        if (rc == IOT_ERR_THROTTLED) {
            atomic_fetch_add(&c->n_refused, 1);
            hub_error_set(herr, HUB_ERR_THROTTLED, "%s", ierr.msg);
            herr->retry_after_ms = (waited + 999999) / 1000000;
            return herr->code;
        }
        if (rc != IOT_OK)
            return fail(herr, rc == IOT_ERR_NOMEM ? HUB_ERR_INTERNAL : HUB_ERR_INVALID, ierr.msg);
        if (waited > 0) {
            atomic_fetch_add(&c->n_waits, 1);
            atomic_fetch_add(&c->wait_ns, (uint64_t)waited);
        }

        bool fresh = false;
        rc = hub_token_cache_get(c->tokens, cs, wall_s(), token, sizeof token, &fresh, &ierr);
        if (rc != IOT_OK)
            return fail(herr, HUB_ERR_INVALID, ierr.msg);
        if (fresh)
            atomic_fetch_add(&c->n_signed, 1);

        struct hub_http_request req = {.method = k->method,
                                       .url = url,
                                       .authorization = token,
                                       .if_match = k->if_match,
                                       .continuation = k->continuation,
                                       .max_item_count = k->max_items,
                                       .body = k->body,
                                       .body_len = k->body ? strlen(k->body) : 0};
        hub_http_response_clear(resp);
        atomic_fetch_add(&c->n_requests, 1);
        if (attempt > 1)
            atomic_fetch_add(&c->n_retries, 1);
        herr_reset(herr);
        herr->attempts = attempt;
        rc = hub_http_perform(c->http, &req, resp, herr);
        OPENSSL_cleanse(token, sizeof token);
        count_attempt(c, k, resp, herr);
        if (rc == IOT_OK) {
            if (resp->status >= 200 && resp->status <= 299)
                return IOT_OK;
            hub_error_from_response(resp->status, resp->errorcode, resp->body, resp->body_len,
                                    herr);
            int64_t ra;
            if (resp->retry_after[0] && hub_retry_after_parse(resp->retry_after, wall_s(), &ra))
                herr->retry_after_ms = ra;
            if (resp->status == 429)
                atomic_fetch_add(&c->n_throttled, 1);
            if (herr->cls == HUB_ERR_UNAUTHORIZED)
                hub_token_cache_invalidate(c->tokens, cs); /* maybe a rotated key or skew */
        }
        herr->attempts = attempt;

        if (attempt >= rp->max_attempts || !hub_retry_allowed(herr->cls, k->idempotent))
            return herr->code;
        int64_t delay =
            hub_backoff_delay_ms(rp, attempt, herr->cls, herr->retry_after_ms, random_u32());
        if (net_now_ms() - t0 + delay > rp->max_total_ms)
            return herr->code;
        log_debug("IoT Hub %s %s%s: %s (attempt %u), retrying in %lld ms", k->method, cs->hostname,
                  k->prefix, hub_error_class_name(herr->cls), attempt, (long long)delay);
        sleep_ms(delay);
    }
}

/* Parses the answer body as JSON; NULL with `herr` set when it is not. */
static json_t *answer_json(const struct hub_http_response *resp, struct hub_error *herr)
{
    json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
    if (!j)
        hub_error_set(herr, HUB_ERR_PROTOCOL, "IoT Hub answer is not JSON (status %d)",
                      resp->status);
    return j;
}

/* Decodes the device or twin (k->answer) a 2xx answer holds into k->out, or checks and drops it
 * where that is NULL; the ETag header stands in for an etag the body lacks. k->out is left as it
 * was on failure. */
static enum iot_err answer_decode(const struct call *k, const struct hub_http_response *resp,
                                  struct hub_error *herr)
{
    if (k->answer == ANSWER_NONE)
        return IOT_OK;
    json_t *j = answer_json(resp, herr);
    if (!j)
        return herr->code;
    struct hub_device dev = {0};
    struct hub_twin twin = {0};
    _Static_assert(sizeof dev.etag == sizeof twin.etag, "one etag size");
    bool is_device = k->answer == ANSWER_DEVICE;
    enum iot_err rc =
        is_device ? hub_device_from_json(j, &dev, herr) : hub_twin_from_json(j, &twin, herr);
    json_decref(j);
    if (rc != IOT_OK)
        return rc;
    char *etag = is_device ? dev.etag : twin.etag;
    if (!etag[0])
        snprintf(etag, sizeof dev.etag, "%s", resp->etag);
    if (is_device && k->out.device)
        *k->out.device = dev;
    else if (is_device)
        hub_device_clear(&dev);
    else if (k->out.twin)
        *k->out.twin = twin;
    else
        hub_twin_clear(&twin);
    return IOT_OK;
}

/* hub_call for the operations that need no more of the answer than answer_decode() takes. */
static enum iot_err hub_call_decode(struct hub_client *c, const struct connstr *cs,
                                    const struct call *k, struct hub_error *herr)
{
    struct hub_http_response resp;
    enum iot_err rc = hub_call(c, cs, k, &resp, herr);
    if (rc == IOT_OK)
        rc = answer_decode(k, &resp, herr);
    hub_http_response_clear(&resp);
    return rc;
}

/* Frees a JSON text that may contain keys. */
static void free_secret_text(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

static void quote_etag(const char *etag, char *out, size_t cap)
{
    /* "*" stays bare (RFC 9110); an etag already quoted or weak is passed as given. */
    if (strcmp(etag, "*") == 0 || etag[0] == '"' || strncmp(etag, "W/", 2) == 0)
        snprintf(out, cap, "%s", etag);
    else
        snprintf(out, cap, "\"%s\"", etag);
}

static enum iot_err finish(struct hub_error *local, struct hub_error *herr, enum iot_err rc)
{
    local->code = rc;
    if (rc == IOT_OK) {
        local->cls = HUB_OK;
        local->msg[0] = '\0';
    }
    if (herr)
        *herr = *local;
    return rc;
}

/* A whole operation on one device id (k->device_id, checked first): call, decode the answer,
 * report into `herr` (may be NULL). */
static enum iot_err hub_op_by_id(struct hub_client *c, const struct connstr *cs,
                                 const struct call *k, struct hub_error *herr)
{
    struct hub_error e;
    herr_reset(&e);
    enum iot_err rc = check_id(k->device_id, &e);
    if (rc == IOT_OK)
        rc = hub_call_decode(c, cs, k, &e);
    return finish(&e, herr, rc);
}

/* ---- devices ---- */

enum iot_err hub_device_create(struct hub_client *c, const struct connstr *cs,
                               const struct hub_device_spec *spec, struct hub_device *out,
                               struct hub_error *herr)
{
    struct hub_error e;
    herr_reset(&e);
    char *body = NULL;
    json_t *doc = NULL;
    enum iot_err rc;
    if (out)
        memset(out, 0, sizeof *out);
    if (!spec || (rc = check_id(spec->device_id, &e)) != IOT_OK) {
        rc = fail(&e, HUB_ERR_INVALID, "invalid device id");
        goto out;
    }
    /* No keys given: empty strings make the hub generate both (as the Node SDK sends). */
    doc = json_pack("{s:s, s:{s:s, s:{s:s, s:s}}}", "deviceId", spec->device_id, "authentication",
                    "type", "sas", "symmetricKey", "primaryKey",
                    spec->primary_key ? spec->primary_key : "", "secondaryKey",
                    spec->secondary_key ? spec->secondary_key : "");
    if (doc && spec->status != HUB_STATUS_UNSET)
        json_object_set_new(doc, "status", json_string(hub_device_status_name(spec->status)));
    if (doc && spec->status_reason)
        json_object_set_new(doc, "statusReason", json_string(spec->status_reason));
    body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    if (!body) {
        rc = fail(&e, HUB_ERR_INTERNAL, "out of memory");
        goto out;
    }
    struct call k = {.method = "PUT",
                     .prefix = "/devices/",
                     .device_id = spec->device_id,
                     .rl_class = RATELIMIT_REGISTRY,
                     .idempotent = false,
                     .body = body,
                     .answer = ANSWER_DEVICE,
                     .out.device = out};
    rc = hub_call_decode(c, cs, &k, &e);
out:
    json_decref(doc);
    free_secret_text(body);
    return finish(&e, herr, rc);
}

/* GET /devices/{id}: the device into *out. */
static struct call device_get_call(const char *id, struct hub_device *out)
{
    return (struct call){.method = "GET",
                         .prefix = "/devices/",
                         .device_id = id,
                         .rl_class = RATELIMIT_REGISTRY,
                         .idempotent = true,
                         .answer = ANSWER_DEVICE,
                         .out.device = out};
}

enum iot_err hub_device_get(struct hub_client *c, const struct connstr *cs, const char *device_id,
                            struct hub_device *out, struct hub_error *herr)
{
    memset(out, 0, sizeof *out);
    struct call k = device_get_call(device_id, out);
    return hub_op_by_id(c, cs, &k, herr);
}

/* The identity as read, with the new status, minus what the hub owns. Sending back the rest
 * (authentication above all) matters: a PUT is a full replacement and would regenerate keys. */
static char *status_body(const struct hub_device *d, enum hub_device_status status,
                         const char *reason)
{
    static const char *const read_only[] = {"etag",
                                            "generationId",
                                            "connectionState",
                                            "connectionStateUpdatedTime",
                                            "lastActivityTime",
                                            "statusUpdatedTime",
                                            "cloudToDeviceMessageCount"};
    json_t *doc = json_deep_copy(d->raw);
    char *body = NULL;
    if (!doc)
        return NULL;
    for (size_t i = 0; i < sizeof read_only / sizeof read_only[0]; i++)
        json_object_del(doc, read_only[i]);
    if (json_object_set_new(doc, "status", json_string(hub_device_status_name(status))) == 0 &&
        (!reason || json_object_set_new(doc, "statusReason", json_string(reason)) == 0))
        body = json_dumps(doc, JSON_COMPACT);
    /* The copy holds the device keys. */
    json_t *sym = json_object_get(json_object_get(doc, "authentication"), "symmetricKey");
    const char *names[] = {"primaryKey", "secondaryKey"};
    for (size_t i = 0; i < 2; i++) {
        json_t *k = json_object_get(sym, names[i]);
        if (json_is_string(k))
            OPENSSL_cleanse((char *)json_string_value(k), json_string_length(k));
    }
    json_decref(doc);
    return body;
}

enum iot_err hub_device_set_status(struct hub_client *c, const struct connstr *cs,
                                   const char *device_id, enum hub_device_status status,
                                   const char *status_reason, struct hub_device *out, bool *changed,
                                   struct hub_error *herr)
{
    struct hub_error e;
    herr_reset(&e);
    struct hub_device cur = {0};
    enum iot_err rc;
    if (changed)
        *changed = false;
    if (out)
        memset(out, 0, sizeof *out);
    if ((rc = check_id(device_id, &e)) != IOT_OK)
        goto out;
    if (status != HUB_STATUS_ENABLED && status != HUB_STATUS_DISABLED) {
        rc = fail(&e, HUB_ERR_INVALID, "status must be enabled or disabled");
        goto out;
    }
    for (unsigned round = 1;; round++) {
        hub_device_clear(&cur);
        struct call get = device_get_call(device_id, &cur);
        if ((rc = hub_call_decode(c, cs, &get, &e)) != IOT_OK)
            goto out;
        if (cur.status == status &&
            (!status_reason || strcmp(cur.status_reason, status_reason) == 0))
            break; /* nothing to do (or our earlier attempt already landed) */
        if (!cur.etag[0]) {
            rc = fail(&e, HUB_ERR_PROTOCOL, "IoT Hub answer: device without an etag");
            goto out;
        }
        char if_match[HUB_ETAG_MAX + 3];
        quote_etag(cur.etag, if_match, sizeof if_match);
        char *body = status_body(&cur, status, status_reason);
        if (!body) {
            rc = fail(&e, HUB_ERR_INTERNAL, "out of memory");
            goto out;
        }
        /* Conditional on the etag: repeating it cannot overwrite someone else's change. The
         * device as written, in the answer, replaces `cur` (the body and etag are copies). */
        hub_device_clear(&cur);
        struct call k = {.method = "PUT",
                         .prefix = "/devices/",
                         .device_id = device_id,
                         .rl_class = RATELIMIT_REGISTRY,
                         .idempotent = true,
                         .if_match = if_match,
                         .body = body,
                         .answer = ANSWER_DEVICE,
                         .out.device = &cur};
        rc = hub_call_decode(c, cs, &k, &e);
        free_secret_text(body);
        if (rc == IOT_OK) {
            if (changed)
                *changed = true;
            goto out;
        }
        if (e.cls != HUB_ERR_PRECONDITION_FAILED || round >= c->opts.set_status_attempts)
            goto out;
    }
out:
    if (rc == IOT_OK && out)
        *out = cur;
    else
        hub_device_clear(&cur);
    return finish(&e, herr, rc);
}

enum iot_err hub_device_delete(struct hub_client *c, const struct connstr *cs,
                               const char *device_id, bool *existed, struct hub_error *herr)
{
    struct hub_error e;
    herr_reset(&e);
    if (existed)
        *existed = false;
    enum iot_err rc = check_id(device_id, &e);
    if (rc == IOT_OK) {
        struct call k = {.method = "DELETE",
                         .prefix = "/devices/",
                         .device_id = device_id,
                         .rl_class = RATELIMIT_REGISTRY,
                         .idempotent = true,
                         .if_match = "*"};
        rc = hub_call_decode(c, cs, &k, &e);
        if (rc == IOT_OK && existed)
            *existed = true;
        else if (rc != IOT_OK && e.cls == HUB_ERR_NOT_FOUND)
            rc = IOT_OK; /* the goal, "no such device", holds */
    }
    return finish(&e, herr, rc);
}

enum iot_err hub_devices_bulk(struct hub_client *c, const struct connstr *cs,
                              const struct hub_bulk_item *items, size_t n,
                              struct hub_bulk_result *results, struct hub_error *herr)
{
    struct hub_error e;
    herr_reset(&e);
    struct hub_http_response resp = {0};
    char *body = NULL;
    enum iot_err rc;
    json_t *doc = hub_bulk_body(items, n, &e);
    if (!doc) {
        rc = e.code;
        goto out;
    }
    body = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!body) {
        rc = fail(&e, HUB_ERR_INTERNAL, "out of memory");
        goto out;
    }
    struct call k = {.method = "POST",
                     .prefix = "/devices",
                     .rl_class = RATELIMIT_REGISTRY,
                     .rl_tokens = (unsigned)n, /* the hub counts every device */
                     .idempotent = false,
                     .body = body};
    rc = hub_call(c, cs, &k, &resp, &e);
    /* 400 with a BulkRegistryOperationResult means "processed, some items failed". */
    if (rc == IOT_OK || resp.status == 400) {
        json_t *j = json_loadb(resp.body ? resp.body : "", resp.body_len, 0, NULL);
        if (j && hub_bulk_results_parse(j, items, n, results)) {
            rc = IOT_OK;
        } else if (rc == IOT_OK) {
            rc = fail(&e, HUB_ERR_PROTOCOL, "IoT Hub answer: not a bulk operation result");
        }
        json_decref(j);
    }
out:
    free_secret_text(body);
    hub_http_response_clear(&resp);
    return finish(&e, herr, rc);
}

enum iot_err hub_statistics(struct hub_client *c, const struct connstr *cs,
                            struct hub_statistics *out, struct hub_error *herr)
{
    struct hub_error e;
    herr_reset(&e);
    struct hub_http_response resp = {0};
    memset(out, 0, sizeof *out);
    struct call k = {.method = "GET",
                     .prefix = "/statistics/devices",
                     .rl_class = RATELIMIT_REGISTRY,
                     .idempotent = true};
    enum iot_err rc = hub_call(c, cs, &k, &resp, &e);
    if (rc == IOT_OK) {
        json_t *j = answer_json(&resp, &e);
        json_t *t = json_object_get(j, "totalDeviceCount");
        json_t *en = json_object_get(j, "enabledDeviceCount");
        json_t *di = json_object_get(j, "disabledDeviceCount");
        if (!j) {
            rc = e.code;
        } else if (!json_is_integer(t) || !json_is_integer(en) || !json_is_integer(di)) {
            rc = fail(&e, HUB_ERR_PROTOCOL, "IoT Hub answer: statistics without counts");
        } else {
            out->total = (int64_t)json_integer_value(t);
            out->enabled = (int64_t)json_integer_value(en);
            out->disabled = (int64_t)json_integer_value(di);
        }
        json_decref(j);
    }
    hub_http_response_clear(&resp);
    return finish(&e, herr, rc);
}

/* ---- twins ---- */

enum iot_err hub_twin_get(struct hub_client *c, const struct connstr *cs, const char *device_id,
                          struct hub_twin *out, struct hub_error *herr)
{
    memset(out, 0, sizeof *out);
    struct call k = {.method = "GET",
                     .prefix = "/twins/",
                     .device_id = device_id,
                     .rl_class = RATELIMIT_TWIN_READ,
                     .idempotent = true,
                     .answer = ANSWER_TWIN,
                     .out.twin = out};
    return hub_op_by_id(c, cs, &k, herr);
}

static enum iot_err twin_write(struct hub_client *c, const struct connstr *cs, const char *method,
                               const char *device_id, const json_t *tags, const json_t *desired,
                               bool replace, const char *if_match, struct hub_twin *out,
                               struct hub_error *herr)
{
    struct hub_error e;
    herr_reset(&e);
    char *body = NULL;
    json_t *doc = NULL;
    if (out)
        memset(out, 0, sizeof *out);
    enum iot_err rc = check_id(device_id, &e);
    if (rc != IOT_OK)
        goto out;
    if ((tags && !json_is_object(tags)) || (desired && !json_is_object(desired))) {
        rc = fail(&e, HUB_ERR_INVALID, "twin tags and desired properties must be objects");
        goto out;
    }
    if (if_match && (!*if_match || strlen(if_match) > HUB_ETAG_MAX)) {
        rc = fail(&e, HUB_ERR_INVALID, "invalid twin etag");
        goto out;
    }
    if (!tags && !desired && !replace) {
        rc = fail(&e, HUB_ERR_INVALID, "twin patch without tags or desired properties");
        goto out;
    }
    /* Replacing with NULL means "empty"; jansson's setters take non-const values but only add a
     * reference, so the caller's objects are not changed. */
    doc = json_object();
    if (doc && (tags || replace))
        json_object_set_new(doc, "tags", tags ? json_incref((json_t *)tags) : json_object());
    if (doc && (desired || replace)) {
        json_t *d = desired ? json_incref((json_t *)desired) : json_object();
        json_object_set_new(doc, "properties", json_pack("{s:o}", "desired", d)); /* steals d */
    }
    body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    if (!body) {
        rc = fail(&e, HUB_ERR_INTERNAL, "out of memory");
        goto out;
    }
    char quoted[HUB_ETAG_MAX + 3];
    if (if_match)
        quote_etag(if_match, quoted, sizeof quoted);
    /* A merge or replacement applied twice leaves the same twin, so a retry is harmless (with an
     * etag the retry may report 412 after a first attempt that did land). */
    struct call k = {.method = method,
                     .prefix = "/twins/",
                     .device_id = device_id,
                     .rl_class = RATELIMIT_TWIN_UPDATE,
                     .idempotent = true,
                     .if_match = if_match ? quoted : NULL,
                     .body = body,
                     .answer = ANSWER_TWIN,
                     .out.twin = out};
    rc = hub_call_decode(c, cs, &k, &e);
out:
    json_decref(doc);
    free(body);
    return finish(&e, herr, rc);
}

enum iot_err hub_twin_patch(struct hub_client *c, const struct connstr *cs, const char *device_id,
                            const json_t *tags, const json_t *desired, const char *if_match,
                            struct hub_twin *out, struct hub_error *herr)
{
    return twin_write(c, cs, "PATCH", device_id, tags, desired, false, if_match, out, herr);
}

enum iot_err hub_twin_replace(struct hub_client *c, const struct connstr *cs, const char *device_id,
                              const json_t *tags, const json_t *desired, const char *if_match,
                              struct hub_twin *out, struct hub_error *herr)
{
    return twin_write(c, cs, "PUT", device_id, tags, desired, true, if_match, out, herr);
}

/* ---- queries ---- */

void hub_twin_page_clear(struct hub_twin_page *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->len; i++)
        hub_twin_clear(&p->items[i]);
    free(p->items);
    free(p->continuation);
    memset(p, 0, sizeof *p);
}

enum iot_err hub_devices_query(struct hub_client *c, const struct connstr *cs,
                               const char *const *ids, size_t n, const char *continuation,
                               struct hub_twin_page *out, struct hub_error *herr)
{
    struct hub_error e;
    herr_reset(&e);
    struct hub_http_response resp = {0};
    struct iot_error ierr = {0};
    char *query = NULL, *body = NULL;
    json_t *j = NULL;
    memset(out, 0, sizeof *out);
    enum iot_err rc = hub_query_build_ids(ids, n, &query, &ierr);
    if (rc != IOT_OK) {
        rc = fail(&e, rc == IOT_ERR_NOMEM ? HUB_ERR_INTERNAL : HUB_ERR_INVALID, ierr.msg);
        goto out;
    }
    json_t *doc = json_pack("{s:s}", "query", query);
    body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!body) {
        rc = fail(&e, HUB_ERR_INTERNAL, "out of memory");
        goto out;
    }
    if (continuation &&
        (!*continuation || strlen(continuation) >= 8192 || strpbrk(continuation, "\r\n"))) {
        rc = fail(&e, HUB_ERR_INVALID, "invalid continuation token");
        goto out;
    }
    struct call k = {.method = "POST",
                     .prefix = "/devices/query",
                     .rl_class = RATELIMIT_QUERY,
                     .idempotent = true, /* a read */
                     .continuation = continuation,
                     .max_items = c->opts.query_page_size,
                     .body = body};
    rc = hub_call(c, cs, &k, &resp, &e);
    if (rc != IOT_OK)
        goto out;
    j = answer_json(&resp, &e);
    if (!j) {
        rc = e.code;
        goto out;
    }
    if (!json_is_array(j)) {
        rc = fail(&e, HUB_ERR_PROTOCOL, "IoT Hub answer: query result is not an array");
        goto out;
    }
    size_t len = json_array_size(j);
    if (len) {
        out->items = calloc(len, sizeof *out->items);
        if (!out->items) {
            rc = fail(&e, HUB_ERR_INTERNAL, "out of memory");
            goto out;
        }
    }
    for (size_t i = 0; i < len; i++) {
        if ((rc = hub_twin_from_json(json_array_get(j, i), &out->items[i], &e)) != IOT_OK)
            goto out;
        out->len++;
    }
    out->continuation = resp.continuation;
    resp.continuation = NULL;
out:
    if (rc != IOT_OK)
        hub_twin_page_clear(out);
    json_decref(j);
    free(query);
    free(body);
    hub_http_response_clear(&resp);
    return finish(&e, herr, rc);
}
