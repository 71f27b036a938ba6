/* iothub-sim entry point: options, start-up, and a clean stop on SIGINT/SIGTERM. */
#include "sim.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char usage_text[] =
    "Usage: iothub-sim [options]\n"
    "A strict local Azure IoT Hub service-API simulator for tests (HTTPS on libmicrohttpd).\n"
    "\n"
    "Listening:\n"
    "  --listen ADDR:PORT        address to bind (default 127.0.0.1:0; port 0 = a free port;\n"
    "                            IPv6 as [::1]:PORT)\n"
    "  --port-file PATH          write the bound port and a newline once listening\n"
    "                            (written atomically: wait for the file to appear)\n"
    "  --cert PEM --key PEM      server certificate and key (required unless --plain-http)\n"
    "  --plain-http              serve plain HTTP (benchmarks and debugging only)\n"
    "  --threads N               MHD pool threads (default 2)\n"
    "\n"
    "Hub identity and authentication:\n"
    "  --hub-host NAME           the HostName clients use (default localhost:<bound port>);\n"
    "                            a token's sr, URL-decoded, must be a case-insensitive,\n"
    "                            segment-aligned prefix of NAME + request path\n"
    "  --policy NAME:PRIMARY:SECONDARY:PERMS\n"
    "                            shared access policy (repeatable, at most 16); keys base64;\n"
    "                            PERMS comma-separated from RegistryRead, RegistryWrite,\n"
    "                            ServiceConnect (RegistryReadWrite = both registry rights).\n"
    "                            Default: iothubowner with all three and random keys, printed\n"
    "                            to stdout at start.\n"
    "  --token-skew-s N          tolerated clock skew: a token is accepted while\n"
    "                            now <= se + N (default 300)\n"
    "\n"
    "  Permission per route (azure-iothub.md 1.3):\n"
    "    GET /devices/{id}, GET /devices, GET /statistics/devices   RegistryRead\n"
    "    PUT|DELETE /devices/{id}, POST /devices (bulk)             RegistryWrite\n"
    "    GET|PATCH|PUT /twins/{id}, POST /devices/query             ServiceConnect\n"
    "    POST /devices/{id}/messages/events    a device token (no skn) signed with that\n"
    "                                          device's primary or secondary key,\n"
    "                                          sr = <hub-host>/devices/<id>\n"
    "  Token check: 'SharedAccessSignature ' + sr, sig, se, skn in any order (names\n"
    "  case-insensitive); HMAC-SHA256 over the raw sr as sent + \"\\n\" + se with the\n"
    "  policy's primary then secondary key; sig URL-decoded ('+' = space) and\n"
    "  base64-decoded, compared in constant time. Any failure: 401\n"
    "  IotHubUnauthorizedAccess.\n"
    "\n"
    "Throttling (azure-iothub.md 5.1, token buckets holding one window: a minute for\n"
    "registry ops and queries, a second for twin reads/updates; bulk costs one per device;\n"
    "beyond the bucket: 429 ThrottlingBacklogTimeout without Retry-After):\n"
    "  --throttle                enforce the quotas (off by default)\n"
    "  --tier F1|S1|S2|S3        tier whose quotas apply (default S1)\n"
    "  --units N                 units of the tier (default 1)\n"
    "  --quota-registry-per-min N, --quota-queries-per-min N,\n"
    "  --quota-twin-reads-per-s N, --quota-twin-updates-per-s N   override one quota\n"
    "\n"
    "Twins:\n"
    "  --twin-arrays             allow arrays in twin properties (default: rejected)\n"
    "\n"
    "Misc:\n"
    "  --latency-ms N            add N ms to every service answer (also /_sim/config)\n"
    "  --log-size N              request log ring size (default 100000)\n"
    "  --quiet                   no MHD error log on stderr\n"
    "  --help                    this text\n"
    "\n"
    "Service API (api-version 2020-09-30 or 2021-04-12 required; JSON answers are\n"
    "'application/json; charset=utf-8'; errors carry iothub-errorcode and Azure's legacy\n"
    "body {\"Message\":\"ErrorCode:<Name>;<text>\",\"ExceptionMessage\":\"Tracking ID:...\"},\n"
    "twin validation errors the bare {\"errorCode\":400004,...} body):\n"
    "  PUT /devices/{id}         no If-Match: create only (existing: 409 DeviceAlreadyExists);\n"
    "                            If-Match etag|*: full replacement (412 on mismatch, 404 if\n"
    "                            absent); missing/empty keys are generated\n"
    "  GET|DELETE /devices/{id}  DELETE requires If-Match (400 without), 204 on success\n"
    "  GET /devices?top=N        POST /devices (bulk, 1..100 items, 413 above)\n"
    "  GET /statistics/devices   GET|PATCH|PUT /twins/{id} (If-Match on the twin etag)\n"
    "  POST /devices/query       SELECT [TOP n] *|COUNT() [AS a]|paths FROM devices\n"
    "                            [WHERE ...]; x-ms-max-item-count (default 100, max 1000),\n"
    "                            x-ms-continuation (omitted on the last page)\n"
    "  POST /devices/{id}/messages/events   device endpoint: 204, updates lastActivityTime\n"
    "\n"
    "Control API (no auth, plain JSON, path prefix /_sim/):\n"
    "  GET /_sim/devices, GET /_sim/devices/{id}, POST /_sim/devices/{id}/reported (merge\n"
    "  reported properties as the device would), GET /_sim/requests[?since=SEQ] (time_ms =\n"
    "  arrival, Unix ms), POST|GET|DELETE /_sim/faults, POST|GET /_sim/config,\n"
    "  POST /_sim/reset (devices, request log, faults, counters; keeps config and refills\n"
    "  the buckets), GET /_sim/stats.\n"
    "  Fault body: {\"match\":\"PUT /devices\", \"status\":429|500|503|.. or \"drop\":true,\n"
    "  \"retry_after\":s, \"latency_ms\":N, \"count\":N or \"duration_ms\":N}; the first live\n"
    "  matching rule applies, before api-version, auth and throttling. Control requests\n"
    "  are never logged, faulted or throttled.\n";

static bool parse_long(const char *text, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max) {
        return false;
    }
    *out = v;
    return true;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    size_t cap = 8192, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) {
            break;
        }
        if (len + 1 == cap) {
            if (cap > (1u << 20)) {
                free(buf);
                buf = NULL;
                break;
            }
            char *m = realloc(buf, cap * 2);
            if (!m) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = m;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) {
        buf[len] = '\0';
    }
    return buf;
}

static bool add_policy(struct sim *s, const char *spec)
{
    if (s->npolicies >= SIM_POLICIES_MAX) {
        return false;
    }
    char copy[512];
    if (strlen(spec) >= sizeof copy) {
        return false;
    }
    strcpy(copy, spec);
    char *parts[4];
    char *p = copy;
    for (int i = 0; i < 4; i++) {
        parts[i] = p;
        char *colon = i < 3 ? strchr(p, ':') : NULL;
        if (i < 3 && !colon) {
            return false;
        }
        if (colon) {
            *colon = '\0';
            p = colon + 1;
        }
    }
    struct sim_policy *pol = &s->policies[s->npolicies];
    if (!parts[0][0] || strlen(parts[0]) > SIM_POLICY_NAME_MAX ||
        !sim_key_parse(parts[1], 1, &pol->primary) ||
        !sim_key_parse(parts[2], 1, &pol->secondary) || !sim_perms_parse(parts[3], &pol->perms)) {
        return false;
    }
    strcpy(pol->name, parts[0]);
    s->npolicies++;
    return true;
}

static int write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        return -1;
    }
    fprintf(f, "%u\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        return -1;
    }
    return 0;
}

enum opt_id {
    O_LISTEN = 256,
    O_PORT_FILE,
    O_CERT,
    O_KEY,
    O_PLAIN,
    O_HUB_HOST,
    O_POLICY,
    O_TIER,
    O_UNITS,
    O_THROTTLE,
    O_Q_REG,
    O_Q_READ,
    O_Q_UPD,
    O_Q_QUERY,
    O_SKEW,
    O_ARRAYS,
    O_THREADS,
    O_LOG_SIZE,
    O_LATENCY,
    O_QUIET,
    O_HELP,
};

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, O_LISTEN},
    {"port-file", required_argument, NULL, O_PORT_FILE},
    {"cert", required_argument, NULL, O_CERT},
    {"key", required_argument, NULL, O_KEY},
    {"plain-http", no_argument, NULL, O_PLAIN},
    {"hub-host", required_argument, NULL, O_HUB_HOST},
    {"policy", required_argument, NULL, O_POLICY},
    {"tier", required_argument, NULL, O_TIER},
    {"units", required_argument, NULL, O_UNITS},
    {"throttle", no_argument, NULL, O_THROTTLE},
    {"quota-registry-per-min", required_argument, NULL, O_Q_REG},
    {"quota-twin-reads-per-s", required_argument, NULL, O_Q_READ},
    {"quota-twin-updates-per-s", required_argument, NULL, O_Q_UPD},
    {"quota-queries-per-min", required_argument, NULL, O_Q_QUERY},
    {"token-skew-s", required_argument, NULL, O_SKEW},
    {"twin-arrays", no_argument, NULL, O_ARRAYS},
    {"threads", required_argument, NULL, O_THREADS},
    {"log-size", required_argument, NULL, O_LOG_SIZE},
    {"latency-ms", required_argument, NULL, O_LATENCY},
    {"quiet", no_argument, NULL, O_QUIET},
    {"help", no_argument, NULL, O_HELP},
    {NULL, 0, NULL, 0},
};

struct cli {
    enum sim_tier tier;
    long units;
    bool throttle;
    long quotas[SIM_TCLASS_COUNT]; /* 0 = tier default */
    long latency_ms;
    bool hub_host_set;
};

static bool listen_parse(const char *arg, struct sim_options *o)
{
    const char *colon = strrchr(arg, ':');
    if (!colon) {
        return false;
    }
    long port;
    if (!parse_long(colon + 1, 0, 65535, &port)) {
        return false;
    }
    size_t alen = (size_t)(colon - arg);
    if (alen >= 2 && arg[0] == '[' && arg[alen - 1] == ']') {
        arg++;
        alen -= 2;
    }
    if (alen == 0 || alen >= sizeof o->listen_addr) {
        return false;
    }
    memcpy(o->listen_addr, arg, alen);
    o->listen_addr[alen] = '\0';
    o->port = (unsigned)port;
    return true;
}

static int parse_args(int argc, char **argv, struct sim *s, struct cli *c)
{
    struct sim_options *o = &s->opt;
    int ch;
    long v;
    while ((ch = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
        switch (ch) {
        case O_LISTEN:
            if (!listen_parse(optarg, o)) {
                fprintf(stderr, "iothub-sim: bad --listen '%s'\n", optarg);
                return -1;
            }
            break;
        case O_PORT_FILE:
            o->port_file = optarg;
            break;
        case O_CERT:
            o->cert_file = optarg;
            break;
        case O_KEY:
            o->key_file = optarg;
            break;
        case O_PLAIN:
            o->plain_http = true;
            break;
        case O_HUB_HOST:
            if (!optarg[0] || strlen(optarg) >= sizeof o->hub_host) {
                fprintf(stderr, "iothub-sim: bad --hub-host\n");
                return -1;
            }
            snprintf(o->hub_host, sizeof o->hub_host, "%s", optarg);
            c->hub_host_set = true;
            break;
        case O_POLICY:
            if (!add_policy(s, optarg)) {
                /* never echo the argument: it holds keys */
                fprintf(stderr, "iothub-sim: bad --policy (NAME:PRIMARY_B64:SECONDARY_B64:PERMS, "
                                "at most 16)\n");
                return -1;
            }
            break;
        case O_TIER:
            if (!strcasecmp(optarg, "F1")) {
                c->tier = SIM_TIER_F1;
            } else if (!strcasecmp(optarg, "S1")) {
                c->tier = SIM_TIER_S1;
            } else if (!strcasecmp(optarg, "S2")) {
                c->tier = SIM_TIER_S2;
            } else if (!strcasecmp(optarg, "S3")) {
                c->tier = SIM_TIER_S3;
            } else {
                fprintf(stderr, "iothub-sim: --tier must be F1, S1, S2 or S3\n");
                return -1;
            }
            break;
        case O_UNITS:
            if (!parse_long(optarg, 1, 200, &c->units)) {
                fprintf(stderr, "iothub-sim: --units must be 1..200\n");
                return -1;
            }
            break;
        case O_THROTTLE:
            c->throttle = true;
            break;
        case O_Q_REG:
        case O_Q_READ:
        case O_Q_UPD:
        case O_Q_QUERY:
            if (!parse_long(optarg, 1, 100000000, &v)) {
                fprintf(stderr, "iothub-sim: quotas must be positive integers\n");
                return -1;
            }
            c->quotas[ch == O_Q_REG    ? SIM_TCLASS_REGISTRY
                      : ch == O_Q_READ ? SIM_TCLASS_TWIN_READ
                      : ch == O_Q_UPD  ? SIM_TCLASS_TWIN_UPDATE
                                       : SIM_TCLASS_QUERY] = v;
            break;
        case O_SKEW:
            if (!parse_long(optarg, 0, 86400L * 365 * 100, &o->token_skew_s)) {
                fprintf(stderr, "iothub-sim: bad --token-skew-s\n");
                return -1;
            }
            break;
        case O_ARRAYS:
            o->twin_arrays = true;
            break;
        case O_THREADS:
            if (!parse_long(optarg, 1, 64, &v)) {
                fprintf(stderr, "iothub-sim: --threads must be 1..64\n");
                return -1;
            }
            o->threads = (unsigned)v;
            break;
        case O_LOG_SIZE:
            if (!parse_long(optarg, 1, 10000000, &v)) {
                fprintf(stderr, "iothub-sim: bad --log-size\n");
                return -1;
            }
            o->log_capacity = (size_t)v;
            break;
        case O_LATENCY:
            if (!parse_long(optarg, 0, 600000, &c->latency_ms)) {
                fprintf(stderr, "iothub-sim: bad --latency-ms\n");
                return -1;
            }
            break;
        case O_QUIET:
            o->quiet = true;
            break;
        case O_HELP:
            fputs(usage_text, stdout);
            return 1;
        default:
            fprintf(stderr, "iothub-sim: see --help\n");
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "iothub-sim: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->plain_http && (!o->cert_file || !o->key_file)) {
        fprintf(stderr, "iothub-sim: --cert and --key are required unless --plain-http\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct sim *s = calloc(1, sizeof *s); /* large: kept off the stack */
    if (!s) {
        return 1;
    }
    struct cli c = {.tier = SIM_TIER_S1, .units = 1};
    snprintf(s->opt.listen_addr, sizeof s->opt.listen_addr, "127.0.0.1");
    s->opt.token_skew_s = 300;
    s->opt.threads = 2;
    s->opt.log_capacity = 100000;
    int rc = parse_args(argc, argv, s, &c);
    if (rc != 0) {
        free(s);
        return rc > 0 ? 0 : 2;
    }
    char *cert = NULL, *key = NULL;
    if (!s->opt.plain_http) {
        cert = read_file(s->opt.cert_file);
        key = read_file(s->opt.key_file);
        if (!cert || !key) {
            fprintf(stderr, "iothub-sim: cannot read --cert or --key\n");
            free(cert);
            free(key);
            free(s);
            return 2;
        }
    }
    bool default_policy = s->npolicies == 0;
    if (default_policy) {
        struct sim_policy *pol = &s->policies[s->npolicies++];
        snprintf(pol->name, sizeof pol->name, "iothubowner");
        pol->perms = SIM_PERM_REGISTRY_READ | SIM_PERM_REGISTRY_WRITE | SIM_PERM_SERVICE_CONNECT;
        if (!sim_key_generate(&pol->primary) || !sim_key_generate(&pol->secondary)) {
            fprintf(stderr, "iothub-sim: no randomness\n");
            free(cert);
            free(key);
            free(s);
            return 1;
        }
    }

    /* Block the stop signals before any thread starts, so only sigwait sees them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int exit_code = 1;
    bool reg_ok = sim_registry_init(&s->reg, s->opt.twin_arrays) == 0;
    bool faults_ok = reg_ok && sim_faults_init(&s->faults) == 0;
    bool log_ok = faults_ok && sim_reqlog_init(&s->log, s->opt.log_capacity) == 0;
    if (!log_ok) {
        fprintf(stderr, "iothub-sim: out of memory\n");
        goto out;
    }
    sim_throttle_init(&s->throttle);
    sim_throttle_set_tier(&s->throttle, c.tier, c.units);
    for (int i = 0; i < SIM_TCLASS_COUNT; i++) {
        if (c.quotas[i] > 0) {
            sim_throttle_set_quota(&s->throttle, (enum sim_tclass)i, c.quotas[i]);
        }
    }
    sim_throttle_enable(&s->throttle, c.throttle);
    atomic_store(&s->global_latency_ms, c.latency_ms);

    if (sim_http_listen(s) != 0) {
        fprintf(stderr, "iothub-sim: cannot listen on %s:%u\n", s->opt.listen_addr, s->opt.port);
        goto out_throttle;
    }
    unsigned port = s->bound_port;
    if (!c.hub_host_set) {
        snprintf(s->opt.hub_host, sizeof s->opt.hub_host, "localhost:%u", port);
    }
    if (sim_http_start(s, cert, key) != 0) {
        fprintf(stderr, "iothub-sim: cannot start the HTTP%s server\n",
                s->opt.plain_http ? "" : "S");
        close(s->listen_fd);
        goto out_throttle;
    }
    printf("iothub-sim listening on %s://%s:%u hub-host=%s\n", s->opt.plain_http ? "http" : "https",
           s->opt.listen_addr, port, s->opt.hub_host);
    if (default_policy) {
        /* A test tool's own throwaway keys: printing them is the interface. */
        const struct sim_policy *pol = &s->policies[0];
        printf("policy %s primary=%s secondary=%s\n", pol->name, pol->primary.b64,
               pol->secondary.b64);
        printf("connection-string HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s\n",
               s->opt.hub_host, pol->name, pol->primary.b64);
    }
    fflush(stdout);
    if (s->opt.port_file && write_port_file(s->opt.port_file, port) != 0) {
        fprintf(stderr, "iothub-sim: cannot write the port file\n");
        sim_http_stop(s);
        goto out_throttle;
    }
    int sig = 0;
    sigwait(&sigs, &sig);
    sim_http_stop(s);
    exit_code = 0;
out_throttle:
    sim_throttle_destroy(&s->throttle);
out:
    if (log_ok) {
        sim_reqlog_destroy(&s->log);
    }
    if (faults_ok) {
        sim_faults_destroy(&s->faults);
    }
    if (reg_ok) {
        sim_registry_destroy(&s->reg);
    }
    free(cert);
    free(key);
    free(s);
    return exit_code;
}
