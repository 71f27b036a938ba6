/* iothub-sim: a local, deliberately strict Azure IoT Hub service-API simulator for tests.
 *
 * It shares no code with the service's own Azure client, so the two check each other. Facts it
 * implements come from /work/shared/spec/azure-iothub.md (SAS verification, registry, twins,
 * query, error bodies, throttling); where the real service is undocumented it is strict.
 *
 * Everything lives in one `struct sim` passed to every function: no global mutable state.
 * Threads: MHD's pool threads run the request handlers concurrently; the registry is behind a
 * rwlock, every other shared part has its own mutex (or is atomic).
 */
#ifndef IOTHUB_SIM_H
#define IOTHUB_SIM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define SIM_ID_MAX            128 /* deviceId limit (azure-iothub.md §5.2) */
#define SIM_KEY_RAW_MAX       64  /* symmetric keys are 16..64 bytes decoded */
#define SIM_KEY_B64_MAX       96
#define SIM_POLICY_NAME_MAX   64
#define SIM_POLICIES_MAX      16 /* Azure allows 16 shared access policies per hub */
#define SIM_HOST_MAX          256
#define SIM_STATUS_REASON_MAX 128
#define SIM_MAX_BODY          (4u * 1024u * 1024u)
#define SIM_BULK_MAX          100

enum sim_perm {
    SIM_PERM_REGISTRY_READ = 1u << 0,
    SIM_PERM_REGISTRY_WRITE = 1u << 1,
    SIM_PERM_SERVICE_CONNECT = 1u << 2,
};

/* Throttling classes of azure-iothub.md §5.1. */
enum sim_tclass {
    SIM_TCLASS_REGISTRY,    /* per minute; bulk counts per device */
    SIM_TCLASS_QUERY,       /* per minute */
    SIM_TCLASS_TWIN_READ,   /* per second */
    SIM_TCLASS_TWIN_UPDATE, /* per second */
    SIM_TCLASS_COUNT
};

/* Request classes for /_sim/stats. */
enum sim_rclass {
    SIM_RCLASS_REGISTRY,
    SIM_RCLASS_BULK,
    SIM_RCLASS_STATISTICS,
    SIM_RCLASS_TWIN_READ,
    SIM_RCLASS_TWIN_UPDATE,
    SIM_RCLASS_QUERY,
    SIM_RCLASS_DEVICE,
    SIM_RCLASS_CONTROL,
    SIM_RCLASS_OTHER,
    SIM_RCLASS_COUNT
};

/* The error names of azure-iothub.md §4.2 the simulator can answer with. */
enum sim_ecode {
    SIM_E_INVALID_PROTOCOL_VERSION, /* 400001 */
    SIM_E_ARGUMENT_INVALID,         /* 400004 */
    SIM_E_ARGUMENT_NULL,            /* 400005 */
    SIM_E_IOTHUB_FORMAT_ERROR,      /* 400006 */
    SIM_E_DEVICE_DEFINED_MULTIPLE,  /* 400011 */
    SIM_E_BULK_FAILURE,             /* 400013 */
    SIM_E_UNAUTHORIZED,             /* 401002 */
    SIM_E_DEVICE_NOT_FOUND,         /* 404001 */
    SIM_E_NOT_FOUND,                /* 404000: unknown route */
    SIM_E_METHOD_NOT_ALLOWED,       /* 405000 */
    SIM_E_REQUEST_TIMEOUT,          /* 408000 */
    SIM_E_DEVICE_ALREADY_EXISTS,    /* 409001 */
    SIM_E_PRECONDITION_FAILED,      /* 412001 */
    SIM_E_TOO_MANY_DEVICES,         /* 413002 */
    SIM_E_MESSAGE_TOO_LARGE,        /* 413001 */
    SIM_E_THROTTLING_BACKLOG,       /* 429003 */
    SIM_E_SERVER_ERROR,             /* 500001 */
    SIM_E_SERVICE_UNAVAILABLE,      /* 503001 */
    SIM_E_GATEWAY_TIMEOUT,          /* 504101 */
    SIM_E_COUNT
};

struct sim_key {
    unsigned char raw[SIM_KEY_RAW_MAX];
    size_t len;
    char b64[SIM_KEY_B64_MAX];
};

struct sim_policy {
    char name[SIM_POLICY_NAME_MAX + 1];
    struct sim_key primary;
    struct sim_key secondary;
    unsigned perms; /* enum sim_perm bits */
};

/* One answer, produced by a route handler and turned into an MHD response by sim_http.c.
 * `body` is heap-owned by the reply (NULL = empty body); header strings are copied in. */
struct sim_reply {
    unsigned status;
    char *body;
    char etag[80];         /* ETag header value without quotes; "" = none */
    const char *errorcode; /* iothub-errorcode header (static string) or NULL */
    long retry_after;      /* Retry-After seconds, < 0 = none */
    const char *item_type; /* x-ms-item-type (static string) or NULL */
    char *continuation;    /* x-ms-continuation, heap-owned, or NULL */
    bool drop;             /* close the connection without answering */
};

/* ---- device registry (sim_registry.c) ---------------------------------------------------- */

enum sim_auth_type { SIM_AUTH_SAS, SIM_AUTH_SELF_SIGNED, SIM_AUTH_CA, SIM_AUTH_NONE };

struct sim_device {
    struct sim_device *next; /* hash chain */
    char id[SIM_ID_MAX + 1];
    char generation_id[24];
    char etag[48];
    bool enabled;
    char *status_reason;       /* NULL = JSON null */
    int64_t status_updated_us; /* 0 = unset; times are µs since the Unix epoch */
    bool connected;
    int64_t connection_state_updated_us;
    int64_t last_activity_us;
    long c2d_count;
    enum sim_auth_type auth_type;
    struct sim_key primary;
    struct sim_key secondary;
    char *x509_primary; /* thumbprints, NULL = null */
    char *x509_secondary;
    bool iot_edge;
    char *device_scope;
    json_t *parent_scopes; /* array of strings, owned */
    /* Twin: property trees without metadata, plus parallel metadata trees. All owned. */
    json_t *tags;
    json_t *desired;
    json_t *desired_meta;
    long long desired_version;
    json_t *reported;
    json_t *reported_meta;
    long long reported_version;
    long long twin_version;
    uint64_t twin_etag;
};

struct sim_registry {
    pthread_rwlock_t lock;
    struct sim_device **buckets;
    size_t nbuckets;
    size_t count;
    size_t enabled_count;
    uint64_t etag_counter;
    int64_t last_ticks;
    bool twin_arrays;
};

/* ---- fault rules, request log, stats (sim_faults.c) -------------------------------------- */

struct sim_fault {
    long id;
    char method[16];  /* "" = any method */
    char prefix[256]; /* "" = any path */
    unsigned status;  /* 0 = none */
    bool drop;
    long retry_after; /* < 0 = none */
    long latency_ms;
    long remaining;     /* < 0 = unlimited */
    int64_t expires_ns; /* 0 = never (monotonic clock) */
};

struct sim_faults {
    pthread_mutex_t mu;
    struct sim_fault *rules;
    size_t n, cap;
    long next_id;
};

struct sim_log_entry {
    uint64_t seq;
    char *method, *path, *query, *auth_policy, *note; /* one allocation owned via `method` */
    unsigned status;                                  /* 0 = dropped */
    int64_t time_ms;
    int64_t duration_ms;
};

struct sim_reqlog {
    pthread_mutex_t mu;
    struct sim_log_entry *ring;
    size_t cap, count, head; /* head = index of the next write */
    uint64_t next_seq;
};

struct sim_stats {
    atomic_ulong by_class[SIM_RCLASS_COUNT];
    atomic_ulong total;
    atomic_ulong throttled;       /* 429 from the token buckets */
    atomic_ulong faults_injected; /* status or drop faults applied */
    atomic_ulong drops;
    atomic_ulong unauthorized;
    atomic_ulong sent_429;
    atomic_ulong sent_4xx;
    atomic_ulong sent_5xx;
};

/* ---- throttling (sim_throttle.c) -------------------------------------------------------- */

struct sim_bucket {
    double tokens, capacity, rate_per_s;
    int64_t last_ns;
};

struct sim_throttle {
    pthread_mutex_t mu;
    bool enabled;
    long quota[SIM_TCLASS_COUNT]; /* per minute for REGISTRY/QUERY, per second otherwise */
    struct sim_bucket b[SIM_TCLASS_COUNT];
};

/* ---- delayed responses (sim_http.c) ------------------------------------------------------ */

struct sim_pending {
    int64_t deadline_ns;
    void *conn; /* struct MHD_Connection *, suspended */
};

struct sim_timer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct sim_pending *items;
    size_t n, cap;
    bool stopping;
    bool started;
    pthread_t thread;
};

/* ---- the simulator --------------------------------------------------------------------- */

struct sim_options {
    char listen_addr[64];
    unsigned port;
    const char *port_file;
    const char *cert_file;
    const char *key_file;
    bool plain_http;
    char hub_host[SIM_HOST_MAX];
    long token_skew_s;
    bool twin_arrays;
    unsigned threads;
    size_t log_capacity;
    bool quiet;
};

struct sim {
    struct sim_options opt;
    struct sim_policy policies[SIM_POLICIES_MAX];
    size_t npolicies;
    struct sim_registry reg;
    struct sim_faults faults;
    struct sim_reqlog log;
    struct sim_stats stats;
    struct sim_throttle throttle;
    struct sim_timer timer;
    atomic_long global_latency_ms;
    int listen_fd; /* bound by sim_http_listen, then owned by MHD */
    unsigned bound_port;
    void *daemon; /* struct MHD_Daemon * */
};

/* ---- sim_util.c ---------------------------------------------------------------------------- */

int64_t sim_now_us(void);
int64_t sim_mono_ns(void);
/* Azure's time format: 7 fractional digits and Z; 0 gives "0001-01-01T00:00:00Z". */
void sim_format_time(int64_t us, char out[40]);
/* 32 random lower-case hex digits. */
void sim_random_hex(char out[33]);
/* "Tracking ID:<hex>-G:0-TimeStamp:MM/DD/YYYY HH:MM:SS" */
void sim_tracking(char out[96]);
/* Standard base64 with padding; returns the length written (out must hold 4*ceil(n/3)+1). */
size_t sim_b64_encode(const unsigned char *in, size_t n, char *out);
/* Strict standard base64 (padding required, canonical); returns false on any defect. */
bool sim_b64_decode(const char *in, unsigned char *out, size_t out_cap, size_t *out_len);
/* Percent-decodes [in, in+n) into out (NUL-terminated). plus_is_space maps '+' to ' ' like
 * WebUtility.UrlDecode. Invalid escapes are kept verbatim. Returns false if out is too small. */
bool sim_url_decode(const char *in, size_t n, bool plus_is_space, char *out, size_t out_cap);
/* Azure's deviceId character set, 1..128 characters. */
bool sim_id_valid(const char *id);
bool sim_key_generate(struct sim_key *k);
/* Parses a strict base64 key of min_len..64 decoded bytes (device keys: Azure's 16..64). */
bool sim_key_parse(const char *b64, size_t min_len, struct sim_key *k);
int sim_strcasecmp(const char *a, const char *b);
/* Returns a heap string (caller frees) of compact JSON, then drops the reference to `j`. */
char *sim_json_take_dump(json_t *j);

/* ---- sim_errors.c --------------------------------------------------------------------------- */

unsigned sim_ecode_status(enum sim_ecode e);
const char *sim_ecode_name(enum sim_ecode e);
long sim_ecode_number(enum sim_ecode e);
/* Legacy body (shape 1): {"Message":"ErrorCode:<Name>;<text>","ExceptionMessage":"Tracking ID:.."}
 */
void sim_reply_error(struct sim_reply *r, enum sim_ecode e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Bare body (shape 3): {"errorCode":400004,"trackingId":..,"message":..,"timestampUtc":..} */
void sim_reply_error_bare(struct sim_reply *r, enum sim_ecode e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Takes ownership of `j` (may be NULL = empty body). */
void sim_reply_json(struct sim_reply *r, unsigned status, json_t *j);
void sim_reply_free(struct sim_reply *r);

/* ---- sim_auth.c ------------------------------------------------------------------------------ */

struct sim_sas {
    char sr_raw[512]; /* exactly as sent: this is what the HMAC covers */
    char sr[512];     /* URL-decoded, for the scope check */
    unsigned char sig[32];
    char se_raw[24];
    long long se;
    char skn[SIM_POLICY_NAME_MAX + 1];
    bool has_skn;
};

/* Parses an Authorization header value. false = malformed (why in `why`, never a secret). */
bool sim_sas_parse(const char *header, struct sim_sas *t, char *why, size_t why_len);
/* Constant-time check of the signature against one key. */
bool sim_sas_verify_key(const struct sim_sas *t, const struct sim_key *key);
/* Expiry with `skew_s` seconds of tolerance. */
bool sim_sas_fresh(const struct sim_sas *t, long skew_s);
/* The URL-decoded sr must be a case-insensitive, segment-aligned prefix of `resource`. */
bool sim_sas_scope_ok(const struct sim_sas *t, const char *resource);
/* Full check of a policy token for a service route needing `perms`. On success copies the policy
 * name into who. */
bool sim_auth_service(const struct sim *s, const char *header, unsigned perms, const char *path,
                      char *who, size_t who_len, char *why, size_t why_len);
bool sim_perms_parse(const char *text, unsigned *perms);
void sim_perms_format(unsigned perms, char *out, size_t n);

/* ---- sim_registry.c -------------------------------------------------------------------------- */

int sim_registry_init(struct sim_registry *reg, bool twin_arrays);
void sim_registry_destroy(struct sim_registry *reg);
/* Caller holds the lock (read or write). Returns a borrowed pointer or NULL. */
struct sim_device *sim_registry_find(struct sim_registry *reg, const char *id);
/* Caller holds the write lock. Removes everything. */
void sim_registry_clear(struct sim_registry *reg);
/* New references; caller holds the lock and decrefs before unlocking. */
json_t *sim_device_json(const struct sim_device *d);
json_t *sim_twin_json(const struct sim_device *d);
/* Route handlers: each takes the lock it needs. `if_match` may be NULL. */
void sim_route_device_put(struct sim *s, const char *id, const char *if_match, const char *body,
                          size_t len, struct sim_reply *r);
void sim_route_device_get(struct sim *s, const char *id, struct sim_reply *r);
void sim_route_device_delete(struct sim *s, const char *id, const char *if_match,
                             struct sim_reply *r);
void sim_route_device_list(struct sim *s, const char *top, struct sim_reply *r);
void sim_route_statistics(struct sim *s, struct sim_reply *r);
void sim_route_bulk(struct sim *s, json_t *items, struct sim_reply *r);
void sim_route_twin_get(struct sim *s, const char *id, struct sim_reply *r);
void sim_route_twin_update(struct sim *s, const char *id, bool replace, const char *if_match,
                           const char *body, size_t len, struct sim_reply *r);
/* Device endpoint: verifies the device token itself (needs the device's keys). */
void sim_route_device_event(struct sim *s, const char *id, const char *authz, char *who,
                            size_t who_len, struct sim_reply *r);
/* Control API helpers. */
json_t *sim_registry_dump_all(struct sim *s);
json_t *sim_registry_dump_one(struct sim *s, const char *id);
/* Merges a reported-properties patch, as if the device had sent it. */
void sim_control_reported(struct sim *s, const char *id, const char *body, size_t len,
                          struct sim_reply *r);

/* ---- sim_twin.c ------------------------------------------------------------------------------ */

/* Validates a tags/desired/reported patch or replacement (`is_patch` allows null leaves).
 * Fills `why` on failure. */
bool sim_twin_validate(const json_t *props, bool is_patch, bool arrays, char *why, size_t n);
/* Azure's size accounting of a property tree (keys + values, numbers 8, bools 4). */
size_t sim_twin_size(const json_t *props);
/* Recursive merge; null deletes; updates metadata stamps. `version` < 0 = no
 * $lastUpdatedVersion (reported). */
void sim_twin_merge(json_t *target, json_t *meta, const json_t *patch, const char *stamp,
                    long long version);
/* Fresh metadata tree for a whole property tree. */
json_t *sim_twin_meta_new(const json_t *props, const char *stamp, long long version);
/* Drops "$metadata" and "$version" at the root of a copy that the caller owns. */
void sim_twin_strip_meta(json_t *props);

/* ---- sim_query.c ----------------------------------------------------------------------------- */

void sim_route_query(struct sim *s, const char *body, size_t len, const char *max_items,
                     const char *continuation, struct sim_reply *r);

/* ---- sim_throttle.c -------------------------------------------------------------------------- */

enum sim_tier { SIM_TIER_F1, SIM_TIER_S1, SIM_TIER_S2, SIM_TIER_S3 };

void sim_throttle_init(struct sim_throttle *t);
void sim_throttle_destroy(struct sim_throttle *t);
void sim_throttle_set_tier(struct sim_throttle *t, enum sim_tier tier, long units);
void sim_throttle_set_quota(struct sim_throttle *t, enum sim_tclass c, long quota);
void sim_throttle_enable(struct sim_throttle *t, bool on);
/* Takes `cost` tokens; false = throttled (nothing taken). Always true when disabled. */
bool sim_throttle_take(struct sim_throttle *t, enum sim_tclass c, double cost);
void sim_throttle_refill(struct sim_throttle *t);
json_t *sim_throttle_json(struct sim_throttle *t);

/* ---- sim_faults.c ---------------------------------------------------------------------------- */

int sim_faults_init(struct sim_faults *f);
void sim_faults_destroy(struct sim_faults *f);
/* Parses and adds a rule from a control-API body; false + why on a bad body. */
bool sim_faults_add(struct sim_faults *f, const json_t *body, long *id, char *why, size_t n);
void sim_faults_clear(struct sim_faults *f);
/* Array of the live rules. */
json_t *sim_faults_json(struct sim_faults *f);
/* Finds the first live rule matching; consumes one use. Returns false if none. */
bool sim_faults_match(struct sim_faults *f, const char *method, const char *path,
                      struct sim_fault *out);

int sim_reqlog_init(struct sim_reqlog *l, size_t cap);
void sim_reqlog_destroy(struct sim_reqlog *l);
void sim_reqlog_clear(struct sim_reqlog *l);
/* `note` says why a request failed (auth, throttle, fault); never a secret. */
void sim_reqlog_add(struct sim_reqlog *l, const char *method, const char *path, const char *query,
                    unsigned status, const char *auth_policy, const char *note, int64_t time_ms,
                    int64_t duration_ms);
json_t *sim_reqlog_json(struct sim_reqlog *l, uint64_t since);

void sim_stats_reset(struct sim_stats *st);
json_t *sim_stats_json(struct sim *s);
const char *sim_rclass_name(enum sim_rclass c);

/* ---- sim_control.c --------------------------------------------------------------------------- */

/* Handles /_sim/... ; segs are the decoded path segments after "_sim". */
void sim_control(struct sim *s, const char *method, char **segs, size_t nsegs, const char *query,
                 const char *body, size_t len, struct sim_reply *r);
void sim_reset(struct sim *s);

/* ---- sim_http.c ------------------------------------------------------------------------------ */

/* Binds and listens on opt.listen_addr:opt.port (sets listen_fd and bound_port), so the hub
 * host can be known before any request thread runs. */
int sim_http_listen(struct sim *s);
/* Serves on the bound socket; the PEMs are only read during the call. */
int sim_http_start(struct sim *s, const char *cert_pem, const char *key_pem);
void sim_http_stop(struct sim *s);

#endif
