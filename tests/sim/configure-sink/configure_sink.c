/* configure-sink: a fast stand-in for Mender Configure in the lifecycle benchmark
 * (bench/lifecycle_bench.sh).
 *
 * tests/sim/mender_sim.py checks every request in detail and keeps a log of all of them, which is
 * what the functional tests need, but a Python server on two shared cores cannot take the
 * thousands of deliveries per second the benchmark produces. This one only checks what proves a
 * delivery (the device's id, a connection string naming it) and counts deliveries per device,
 * with the wall-clock time of the first and last one, for the benchmark to compute end-to-end
 * latencies and to spot repeated deployments.
 *
 *   POST  /api/v1/workflow/provision_external_device       (IOT_MANAGER_CONFIGURE_MODE=workflows)
 *         body {"tenant_id", "device_id", "request_id", "configuration": {"azureConnectionString"}}
 *         -> 201 {"id", "name"}; a delivery
 *   PATCH /api/internal/v1/deviceconfig/tenants/{t}/configurations/device/{d}   (deviceconfig)
 *         body {"azureConnectionString": ...} -> 204
 *   POST  .../configurations/device/{d}/deploy -> 200 {"deployment_id"}; a delivery (404 when no
 *         configuration was PATCHed before)
 *   Anything else, or a body without a connection string naming the device: 400 / 404, counted
 *   as an error.
 *
 * Control (plain JSON, never counted):
 *   GET  /_sim/stats       {"requests", "deliveries", "devices", "repeated", "errors"}
 *   GET  /_sim/deliveries  text, one line per device: tenant \t device \t count \t first_us \t
 *                          last_us (Unix microseconds)
 *   POST /_sim/reset       forgets every device and counter
 *
 * Usage: configure-sink [--listen ADDR] [--port N] [--port-file FILE] [--threads N] [--quiet]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#define BODY_MAX      (64 * 1024)
#define ID_MAX        256
#define TABLE_BUCKETS (1u << 16)

#define WORKFLOW_PATH     "/api/v1/workflow/provision_external_device"
#define DEVICECONFIG_PATH "/api/internal/v1/deviceconfig/tenants/"
#define CS_KEY            "azureConnectionString"

struct device {
    struct device *next;
    uint64_t deliveries;
    int64_t first_us;
    int64_t last_us;
    bool configured; /* deviceconfig: a configuration was PATCHed, a deploy may follow */
    char *tenant;    /* owned */
    char *id;        /* owned */
};

struct sink {
    pthread_mutex_t mu;
    struct device **table; /* TABLE_BUCKETS chains, under mu */
    uint64_t devices;      /* under mu */
    uint64_t deliveries;   /* under mu */
    uint64_t repeated;     /* deliveries beyond a device's first, under mu */
    uint64_t requests;     /* under mu */
    uint64_t errors;       /* under mu */
};

/* One request's upload, owned by MHD's per-connection context pointer. */
struct upload {
    char *body;
    size_t len;
    size_t cap;
    bool too_big;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t hash_key(const char *tenant, const char *id)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (const char *p = tenant; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211u;
    h = (h ^ 0xffu) * 1099511628211u; /* separator no id contains */
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211u;
    return h;
}

/* The device's entry, created when `create`; NULL when absent or out of memory. Under s->mu. */
static struct device *device_find(struct sink *s, const char *tenant, const char *id, bool create)
{
    struct device **head = &s->table[hash_key(tenant, id) & (TABLE_BUCKETS - 1)];
    for (struct device *d = *head; d; d = d->next) {
        if (strcmp(d->id, id) == 0 && strcmp(d->tenant, tenant) == 0)
            return d;
    }
    if (!create)
        return NULL;
    struct device *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->tenant = strdup(tenant);
    d->id = strdup(id);
    if (!d->tenant || !d->id) {
        free(d->tenant);
        free(d->id);
        free(d);
        return NULL;
    }
    d->next = *head;
    *head = d;
    s->devices++;
    return d;
}

static void sink_clear(struct sink *s)
{
    for (size_t i = 0; i < TABLE_BUCKETS; i++) {
        struct device *d = s->table[i];
        while (d) {
            struct device *next = d->next;
            free(d->tenant);
            free(d->id);
            free(d);
            d = next;
        }
        s->table[i] = NULL;
    }
    s->devices = s->deliveries = s->repeated = s->requests = s->errors = 0;
}

/* Records a delivery; false when out of memory. */
static bool record_delivery(struct sink *s, const char *tenant, const char *id)
{
    int64_t t = now_us();
    pthread_mutex_lock(&s->mu);
    struct device *d = device_find(s, tenant, id, true);
    if (d) {
        if (d->deliveries == 0)
            d->first_us = t;
        else
            s->repeated++;
        d->deliveries++;
        d->last_us = t;
        s->deliveries++;
    }
    pthread_mutex_unlock(&s->mu);
    return d != NULL;
}

/* True when `cs` is "HostName=...;DeviceId=<id>;SharedAccessKey=..." for this device. */
static bool connstr_names(const char *cs, const char *id)
{
    if (!cs || strncmp(cs, "HostName=", 9) != 0 || !strstr(cs, ";SharedAccessKey="))
        return false;
    const char *p = strstr(cs, ";DeviceId=");
    if (!p)
        return false;
    p += strlen(";DeviceId=");
    size_t n = strlen(id);
    return strncmp(p, id, n) == 0 && p[n] == ';';
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             char *body)
{
    /* `body` is malloc'ed (MHD frees it) or NULL for an empty answer. */
    struct MHD_Response *r =
        body ? MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    if (body && type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_error(struct sink *s, struct MHD_Connection *conn, unsigned status,
                                   const char *text)
{
    pthread_mutex_lock(&s->mu);
    s->errors++;
    pthread_mutex_unlock(&s->mu);
    json_t *doc = json_pack("{s:s}", "error", text);
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    return reply(conn, status, "application/json", body);
}

static char *hex_id(size_t bytes)
{
    static const char hex[] = "0123456789abcdef";
    char *out = malloc(2 * bytes + 1);
    if (!out)
        return NULL;
    uint64_t x = (uint64_t)now_us() ^ ((uint64_t)rand() << 20);
    for (size_t i = 0; i < 2 * bytes; i++) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        out[i] = hex[(x >> 60) & 15];
    }
    out[2 * bytes] = '\0';
    return out;
}

static enum MHD_Result serve_workflow(struct sink *s, struct MHD_Connection *conn,
                                      const struct upload *u)
{
    json_t *doc = json_loadb(u->body ? u->body : "", u->len, 0, NULL);
    const char *tenant = json_string_value(json_object_get(doc, "tenant_id"));
    const char *id = json_string_value(json_object_get(doc, "device_id"));
    const char *cs =
        json_string_value(json_object_get(json_object_get(doc, "configuration"), CS_KEY));
    enum MHD_Result ret;
    if (!tenant || !id || !*id || strlen(id) >= ID_MAX ||
        !json_is_string(json_object_get(doc, "request_id")) || !connstr_names(cs, id)) {
        ret = reply_error(s, conn, 400, "missing or inconsistent input parameters");
    } else if (!record_delivery(s, tenant, id)) {
        ret = reply_error(s, conn, 500, "out of memory");
    } else {
        char *job = hex_id(12);
        json_t *out =
            job ? json_pack("{s:s, s:s}", "id", job, "name", "provision_external_device") : NULL;
        free(job);
        ret = reply(conn, 201, "application/json", out ? json_dumps(out, JSON_COMPACT) : NULL);
        json_decref(out);
    }
    json_decref(doc);
    return ret;
}

/* "{t}/configurations/device/{d}[/deploy]" (what follows .../tenants/) split in place; false when
 * not that shape. */
static bool split_deviceconfig(char *rest, char **tenant, char **id, bool *deploy)
{
    static const char mid[] = "/configurations/device/";
    char *m = strstr(rest, mid);
    if (!m || memchr(rest, '/', (size_t)(m - rest)))
        return false;
    *m = '\0';
    *tenant = rest;
    *id = m + strlen(mid);
    char *end = strchr(*id, '/');
    *deploy = false;
    if (end) {
        if (strcmp(end, "/deploy") != 0)
            return false;
        *end = '\0';
        *deploy = true;
    }
    return **id != '\0' && strlen(*id) < ID_MAX;
}

static enum MHD_Result serve_deviceconfig(struct sink *s, struct MHD_Connection *conn,
                                          const char *method, const char *url,
                                          const struct upload *u)
{
    char path[2 * ID_MAX + 128];
    if (strlen(url) >= sizeof path)
        return reply_error(s, conn, 404, "not found");
    snprintf(path, sizeof path, "%s", url + strlen(DEVICECONFIG_PATH));
    char *tenant = NULL, *id = NULL;
    bool deploy = false;
    if (!split_deviceconfig(path, &tenant, &id, &deploy))
        return reply_error(s, conn, 404, "not found");
    if (!deploy && strcmp(method, "PATCH") == 0) {
        json_t *doc = json_loadb(u->body ? u->body : "", u->len, 0, NULL);
        bool ok = connstr_names(json_string_value(json_object_get(doc, CS_KEY)), id);
        json_decref(doc);
        if (!ok)
            return reply_error(s, conn, 400, "no azureConnectionString naming the device");
        pthread_mutex_lock(&s->mu);
        struct device *d = device_find(s, tenant, id, true);
        if (d)
            d->configured = true;
        pthread_mutex_unlock(&s->mu);
        return d ? reply(conn, 204, NULL, NULL) : reply_error(s, conn, 500, "out of memory");
    }
    if (deploy && strcmp(method, "POST") == 0) {
        pthread_mutex_lock(&s->mu);
        struct device *d = device_find(s, tenant, id, false);
        bool configured = d && d->configured;
        pthread_mutex_unlock(&s->mu);
        if (!configured)
            return reply_error(s, conn, 404, "no configuration for the device");
        record_delivery(s, tenant, id);
        char *dep = hex_id(16);
        json_t *out = dep ? json_pack("{s:s}", "deployment_id", dep) : NULL;
        free(dep);
        enum MHD_Result ret =
            reply(conn, 200, "application/json", out ? json_dumps(out, JSON_COMPACT) : NULL);
        json_decref(out);
        return ret;
    }
    return reply_error(s, conn, 405, "method not allowed");
}

/* Text listing of every device, built under the lock. */
static char *deliveries_text(struct sink *s)
{
    pthread_mutex_lock(&s->mu);
    size_t cap = (size_t)s->devices * (2 * ID_MAX / 4 + 64) + 1;
    char *out = malloc(cap);
    size_t len = 0;
    for (size_t i = 0; out && i < TABLE_BUCKETS; i++) {
        for (struct device *d = s->table[i]; d; d = d->next) {
            if (d->deliveries == 0)
                continue;
            size_t need = strlen(d->tenant) + strlen(d->id) + 80;
            if (len + need >= cap) {
                size_t ncap = cap * 2 + need;
                char *m = realloc(out, ncap);
                if (!m) {
                    free(out);
                    out = NULL;
                    break;
                }
                out = m;
                cap = ncap;
            }
            len += (size_t)snprintf(out + len, cap - len,
                                    "%s\t%s\t%" PRIu64 "\t%" PRId64 "\t%" PRId64 "\n", d->tenant,
                                    d->id, d->deliveries, d->first_us, d->last_us);
        }
    }
    if (out)
        out[len] = '\0';
    pthread_mutex_unlock(&s->mu);
    return out;
}

static enum MHD_Result serve_control(struct sink *s, struct MHD_Connection *conn,
                                     const char *method, const char *url)
{
    bool get = strcmp(method, "GET") == 0;
    if (get && strcmp(url, "/_sim/stats") == 0) {
        pthread_mutex_lock(&s->mu);
        json_t *doc =
            json_pack("{s:I, s:I, s:I, s:I, s:I}", "requests", (json_int_t)s->requests,
                      "deliveries", (json_int_t)s->deliveries, "devices", (json_int_t)s->devices,
                      "repeated", (json_int_t)s->repeated, "errors", (json_int_t)s->errors);
        pthread_mutex_unlock(&s->mu);
        char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
        json_decref(doc);
        return reply(conn, body ? 200 : 500, "application/json", body);
    }
    if (get && strcmp(url, "/_sim/deliveries") == 0) {
        char *body = deliveries_text(s);
        return body ? reply(conn, 200, "text/plain", body) : reply(conn, 500, NULL, NULL);
    }
    if (get && strcmp(url, "/_sim/health") == 0)
        return reply(conn, 204, NULL, NULL);
    if (strcmp(method, "POST") == 0 && strcmp(url, "/_sim/reset") == 0) {
        pthread_mutex_lock(&s->mu);
        sink_clear(s);
        pthread_mutex_unlock(&s->mu);
        return reply(conn, 204, NULL, NULL);
    }
    return reply(conn, 404, NULL, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **ctx)
{
    (void)version;
    struct sink *s = cls;
    struct upload *u = *ctx;
    if (!u) {
        u = calloc(1, sizeof *u);
        if (!u)
            return MHD_NO;
        *ctx = u;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (u->too_big || u->len + n >= BODY_MAX) {
            u->too_big = true;
            return MHD_YES;
        }
        if (u->len + n + 1 > u->cap) {
            size_t cap = u->cap ? u->cap : 1024;
            while (cap < u->len + n + 1)
                cap *= 2;
            char *m = realloc(u->body, cap);
            if (!m) {
                u->too_big = true;
                return MHD_YES;
            }
            u->body = m;
            u->cap = cap;
        }
        memcpy(u->body + u->len, upload_data, n);
        u->len += n;
        u->body[u->len] = '\0';
        return MHD_YES;
    }
    if (strncmp(url, "/_sim/", 6) == 0)
        return serve_control(s, conn, method, url);
    pthread_mutex_lock(&s->mu);
    s->requests++;
    pthread_mutex_unlock(&s->mu);
    if (u->too_big)
        return reply_error(s, conn, 413, "request body too large");
    if (strcmp(url, WORKFLOW_PATH) == 0) {
        if (strcmp(method, "POST") != 0)
            return reply_error(s, conn, 405, "method not allowed");
        return serve_workflow(s, conn, u);
    }
    if (strncmp(url, DEVICECONFIG_PATH, strlen(DEVICECONFIG_PATH)) == 0)
        return serve_deviceconfig(s, conn, method, url, u);
    return reply_error(s, conn, 404, "not found");
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **ctx,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct upload *u = *ctx;
    if (u) {
        free(u->body);
        free(u);
        *ctx = NULL;
    }
}

static int listen_socket(const char *addr, unsigned port, unsigned *bound_port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in got;
    socklen_t len = sizeof got;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0 ||
        getsockname(fd, (struct sockaddr *)&got, &len) != 0) {
        close(fd);
        return -1;
    }
    *bound_port = ntohs(got.sin_port);
    return fd;
}

static int write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%u\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return -1;
    return 0;
}

static const char usage[] =
    "usage: configure-sink [--listen ADDR] [--port N] [--port-file FILE] [--threads N] "
    "[--quiet]\n"
    "A counting stand-in for Mender Configure (workflows provision_external_device and\n"
    "deviceconfig PATCH + deploy) for the lifecycle benchmark; see the source's header.\n";

int main(int argc, char **argv)
{
    const char *listen_addr = "127.0.0.1";
    const char *port_file = NULL;
    long port = 0, threads = 1;
    bool quiet = false;
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"port", required_argument, NULL, 'p'},
        {"port-file", required_argument, NULL, 'f'},
        {"threads", required_argument, NULL, 't'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'l':
            listen_addr = optarg;
            break;
        case 'p':
            port = strtol(optarg, &end, 10);
            if (!*optarg || *end || port < 0 || port > 65535) {
                fprintf(stderr, "configure-sink: bad --port\n");
                return 2;
            }
            break;
        case 'f':
            port_file = optarg;
            break;
        case 't':
            threads = strtol(optarg, &end, 10);
            if (!*optarg || *end || threads < 1 || threads > 64) {
                fprintf(stderr, "configure-sink: --threads must be 1..64\n");
                return 2;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }

    struct sink s = {0};
    pthread_mutex_init(&s.mu, NULL);
    s.table = calloc(TABLE_BUCKETS, sizeof *s.table);
    if (!s.table) {
        fprintf(stderr, "configure-sink: out of memory\n");
        return 1;
    }
    unsigned bound = 0;
    int fd = listen_socket(listen_addr, (unsigned)port, &bound);
    if (fd < 0) {
        fprintf(stderr, "configure-sink: cannot listen on %s:%ld: %s\n", listen_addr, port,
                strerror(errno));
        return 1;
    }
    /* SIGTERM/SIGINT are waited for with sigwait: block them before MHD starts its threads. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD;
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES)
        flags |= MHD_USE_EPOLL;
    if (!quiet)
        flags |= MHD_USE_ERROR_LOG;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, &on_request, &s, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)threads, MHD_OPTION_NOTIFY_COMPLETED, &on_completed,
        &s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)4000, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "configure-sink: cannot start the HTTP server\n");
        return 1;
    }
    if (port_file && write_port_file(port_file, bound) != 0) {
        fprintf(stderr, "configure-sink: cannot write %s: %s\n", port_file, strerror(errno));
        MHD_stop_daemon(d);
        return 1;
    }
    printf("configure-sink listening on %s:%u\n", listen_addr, bound);
    fflush(stdout);
    int sig = 0;
    sigwait(&stop, &sig);
    MHD_stop_daemon(d);
    close(fd);
    sink_clear(&s);
    free(s.table);
    pthread_mutex_destroy(&s.mu);
    return 0;
}
