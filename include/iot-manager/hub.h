/* The IoT Hub port: the service-side REST operations the app layer needs, on any tenant's hub.
 *
 * One `struct hub_client` serves every hub: each call names its target with the tenant's parsed
 * *service* connection string (HostName, SharedAccessKeyName, SharedAccessKey). The client is
 * safe to use from many threads at once; it keeps connections, TLS sessions and SAS tokens warm
 * between calls and paces calls per hub under the hub's tier quotas (ratelimit.h).
 *
 * Every operation returns IOT_OK or an `enum iot_err` and, when `herr` is not NULL, fills it with
 * the hub-specific class, HTTP status, Azure error code and Retry-After. Messages never contain
 * keys or tokens. Device IDs are checked against Azure's rules before anything is sent.
 *
 * In-call retries (hub_options.retry, small by default) repeat throttled, transient and timed-out
 * attempts of idempotent operations (reads, deletes, etag-conditional writes, twin writes,
 * queries) and failed connects of any operation; everything else is left to the caller, who gets
 * hub_error_is_retryable() and retry_after_ms to schedule a later attempt.
 *
 * Implementation: src/azure/hub_*.c (libcurl + jansson). This header does not expose libcurl.
 */
#ifndef IOT_MANAGER_HUB_H
#define IOT_MANAGER_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "iot-manager/connstr.h"
#include "iot-manager/error.h"
#include "iot-manager/metrics.h"
#include "iot-manager/ratelimit.h"

#define HUB_API_VERSION       "2021-04-12"
#define HUB_DEVICE_ID_MAX     128 /* characters (all ASCII) */
#define HUB_STATUS_REASON_MAX 128 /* characters; we keep up to 4 bytes each */
#define HUB_ETAG_MAX          128
#define HUB_GENERATION_ID_MAX 128
#define HUB_KEY_B64_MAX       88 /* base64 of a 64-byte key */
#define HUB_BULK_MAX          100
#define HUB_QUERY_MAX_IDS     100
#define HUB_QUERY_MAX_LEN     8192 /* query text in bytes: our bound, Azure documents none */
#define HUB_ERROR_CODE_MAX    64

/* ---- errors ---------------------------------------------------------------------------- */

enum hub_error_class {
    HUB_OK = 0,
    HUB_ERR_NOT_FOUND,           /* 404 DeviceNotFound, ... */
    HUB_ERR_ALREADY_EXISTS,      /* 409 DeviceAlreadyExists */
    HUB_ERR_PRECONDITION_FAILED, /* 412: etag mismatch */
    HUB_ERR_THROTTLED,           /* 429, or our own limiter refused to wait that long */
    HUB_ERR_QUOTA_EXCEEDED,      /* 403 IotHubQuotaExceeded/JobQuotaExceeded, 413 TooManyDevices */
    HUB_ERR_UNAUTHORIZED,        /* 401: bad/expired token, policy lacks a permission */
    HUB_ERR_BAD_REQUEST,         /* 400 and other 4xx: the request itself is wrong */
    HUB_ERR_TRANSIENT,           /* 500/502/503/504, connection dropped before an answer */
    HUB_ERR_TIMEOUT,             /* 408 or our connect/total timeout */
    HUB_ERR_UNREACHABLE,         /* DNS or TCP connect failed: nothing was sent */
    HUB_ERR_TLS,                 /* certificate verification or handshake failure */
    HUB_ERR_BLOCKED,             /* the hub resolved to a private/loopback/... address */
    HUB_ERR_PROTOCOL,            /* unusable answer: redirect, bad JSON, missing fields */
    HUB_ERR_INVALID,             /* rejected before sending: bad id, connection string, args */
    HUB_ERR_INTERNAL,            /* out of memory, broken invariant */
    HUB_ERR__COUNT
};

struct hub_error {
    enum hub_error_class cls;
    enum iot_err code;             /* what the call returned */
    int http_status;               /* 0 when no HTTP answer was received */
    char name[HUB_ERROR_CODE_MAX]; /* Azure error name ("DeviceNotFound"), "" if unknown */
    long number;                   /* Azure numeric code (404001), 0 if unknown */
    int64_t retry_after_ms;        /* from Retry-After or our limiter; -1 when not given */
    unsigned attempts;             /* HTTP attempts made by the call */
    char msg[IOT_ERROR_MSG_MAX];   /* human-readable, no secrets */
};

/* Static name of a class ("not found", "throttled", ...). */
const char *hub_error_class_name(enum hub_error_class cls);

/* True for classes where the same request may succeed later without any change: throttled,
 * transient, timeout, unreachable. Quota errors are not: Azure's daily and device-count quotas
 * do not recover within a retry horizon. */
bool hub_error_is_retryable(enum hub_error_class cls);

/* The `enum iot_err` a class maps to (HUB_ERR_NOT_FOUND -> IOT_ERR_NOT_FOUND, ...). */
enum iot_err hub_error_class_to_iot(enum hub_error_class cls);

/* Copies code and message into a generic error (err may be NULL). Returns herr->code. */
enum iot_err hub_error_to_iot(const struct hub_error *herr, struct iot_error *err);

/* ---- client ---------------------------------------------------------------------------- */

struct hub_retry_policy {
    unsigned max_attempts;     /* per call, including the first; 1 = no in-call retry */
    int64_t base_ms;           /* first backoff ceiling for transient errors */
    int64_t cap_ms;            /* largest backoff ceiling for transient errors */
    int64_t throttled_base_ms; /* the same for 429 */
    int64_t throttled_cap_ms;
    int64_t max_total_ms; /* no retry is started that would end after this budget */
};

struct hub_options {
    long connect_timeout_ms;       /* per attempt; default 5000 */
    long total_timeout_ms;         /* per attempt, whole exchange; default 15000 */
    const char *ca_file;           /* PEM bundle; NULL: the system's. Copied. */
    bool allow_private_addresses;  /* turn the SSRF guard off (tests, private deployments) */
    bool allow_plain_http;         /* tests only: talk http:// instead of https:// */
    const char *user_agent;        /* NULL: "iot-manager/<version>". Copied. */
    unsigned max_connections;      /* requests in flight at once; default 16 */
    size_t max_response_bytes;     /* default 16 MiB */
    unsigned set_status_attempts;  /* GET+PUT rounds on 412; default 3 */
    unsigned query_page_size;      /* x-ms-max-item-count; default 100 */
    struct hub_retry_policy retry; /* default: 2 attempts, 100 ms..1 s, 429: 1 s..5 s, 5 s */
    struct ratelimit_config ratelimit;
    struct metrics *metrics; /* borrowed; may be NULL: calls by operation and outcome */
};

/* Fills `opts` with the defaults listed above (rate limit: ratelimit_config_default()). */
void hub_options_default(struct hub_options *opts);

struct hub_client;

/* Creates a client; `opts` is copied. Calls curl_global_init() (thread-safe in libcurl >= 7.84;
 * main should still call it before starting threads). Caller frees with hub_client_free(). */
enum iot_err hub_client_new(const struct hub_options *opts, struct hub_client **out,
                            struct iot_error *err);
/* Frees the client; no call may be in flight. NULL-safe. */
void hub_client_free(struct hub_client *c);

/* Counters since creation, for metrics. */
struct hub_client_stats {
    uint64_t requests;          /* HTTP attempts made */
    uint64_t retries;           /* attempts after the first within a call */
    uint64_t throttled;         /* 429 answers received */
    uint64_t ratelimit_waits;   /* calls our limiter delayed */
    uint64_t ratelimit_wait_ns; /* total time our limiter delayed calls */
    uint64_t ratelimit_refused; /* calls our limiter refused (wait above its maximum) */
    uint64_t tokens_signed;     /* SAS tokens generated (cache misses) */
    uint64_t connections;       /* connections opened: far fewer than requests when reused */
};
void hub_client_stats(struct hub_client *c, struct hub_client_stats *out);

/* ---- device identities ----------------------------------------------------------------- */

enum hub_device_status { HUB_STATUS_UNSET = 0, HUB_STATUS_ENABLED, HUB_STATUS_DISABLED };
enum hub_connection_state { HUB_CONN_UNKNOWN = 0, HUB_CONN_DISCONNECTED, HUB_CONN_CONNECTED };

/* Azure's rule: 1..128 of [A-Za-z0-9-:.+%_#*?!(),=@;$']. */
bool hub_device_id_valid(const char *id);

/* "enabled" / "disabled" / "" */
const char *hub_device_status_name(enum hub_device_status s);

/* A device identity as the hub returned it. Keys are secrets: hub_device_clear() wipes them. */
struct hub_device {
    char device_id[HUB_DEVICE_ID_MAX + 1];
    enum hub_device_status status;
    char status_reason[HUB_STATUS_REASON_MAX * 4 + 1]; /* "" when null */
    char etag[HUB_ETAG_MAX + 1];                       /* unquoted */
    char generation_id[HUB_GENERATION_ID_MAX + 1];
    enum hub_connection_state connection_state;
    char auth_type[16];                    /* "sas", "selfSigned", ... ("" if absent) */
    char primary_key[HUB_KEY_B64_MAX + 1]; /* base64; "" when the device has none */
    char secondary_key[HUB_KEY_B64_MAX + 1];
    bool iot_edge;
    json_t *raw; /* owned reference to the full identity JSON (contains the keys) */
};

/* Drops `raw`, wipes the keys, zeroes the struct. NULL-safe. */
void hub_device_clear(struct hub_device *d);

/* What to create (or, in bulk, update or delete). Strings are borrowed for the call. */
struct hub_device_spec {
    const char *device_id;
    enum hub_device_status status; /* UNSET: the hub's default (enabled) / keep in bulk update */
    const char *status_reason;     /* NULL: none */
    const char *primary_key;       /* base64; NULL: the hub generates both keys */
    const char *secondary_key;
    const char *etag; /* bulk *_IF_MATCH modes only */
};

/* PUT /devices/{id} without If-Match. An existing id gives HUB_ERR_ALREADY_EXISTS
 * (IOT_ERR_CONFLICT). `out` (may be NULL) receives the created identity with its keys; the
 * caller clears it. Not retried after a 429, 5xx or timeout (the device may exist by then); the
 * caller should treat a later ALREADY_EXISTS as "exists, read it". */
enum iot_err hub_device_create(struct hub_client *c, const struct connstr *cs,
                               const struct hub_device_spec *spec, struct hub_device *out,
                               struct hub_error *herr);

/* GET /devices/{id}. `out` is caller-cleared. */
enum iot_err hub_device_get(struct hub_client *c, const struct connstr *cs, const char *device_id,
                            struct hub_device *out, struct hub_error *herr);

/* Reads the identity and, unless it already has `status` (and `status_reason`, when not NULL),
 * writes it back with the new status and If-Match on the etag read, so keys and other settings
 * are kept. On 412 it re-reads and tries again, at most `set_status_attempts` rounds. `out` (may
 * be NULL) receives the final identity; `changed` (may be NULL) whether a write happened. */
enum iot_err hub_device_set_status(struct hub_client *c, const struct connstr *cs,
                                   const char *device_id, enum hub_device_status status,
                                   const char *status_reason, struct hub_device *out, bool *changed,
                                   struct hub_error *herr);

/* DELETE /devices/{id} with If-Match: *. A device that does not exist counts as deleted;
 * `existed` (may be NULL) says which case it was. */
enum iot_err hub_device_delete(struct hub_client *c, const struct connstr *cs,
                               const char *device_id, bool *existed, struct hub_error *herr);

enum hub_bulk_mode {
    HUB_BULK_CREATE = 0,
    HUB_BULK_UPDATE,          /* replaces the identity: keys not given are regenerated */
    HUB_BULK_UPDATE_IF_MATCH, /* the same, only if spec.etag still matches */
    HUB_BULK_DELETE,
    HUB_BULK_DELETE_IF_MATCH
};

struct hub_bulk_item {
    enum hub_bulk_mode mode;
    struct hub_device_spec device;
};

struct hub_bulk_result {
    enum hub_error_class cls;      /* HUB_OK when this device's operation succeeded */
    char name[HUB_ERROR_CODE_MAX]; /* Azure errorCode, e.g. "DeviceAlreadyExists" */
    char status[256];              /* Azure errorStatus text, truncated */
};

/* POST /devices with 1..HUB_BULK_MAX items (each device at most once). Counts one registry
 * operation per device against the rate limit. IOT_OK means the hub processed the request:
 * `results[i]` (caller-provided, n entries) then says how item i fared. A failure of the whole
 * request returns its error and leaves `results` undefined. */
enum iot_err hub_devices_bulk(struct hub_client *c, const struct connstr *cs,
                              const struct hub_bulk_item *items, size_t n,
                              struct hub_bulk_result *results, struct hub_error *herr);

struct hub_statistics {
    int64_t total;
    int64_t enabled;
    int64_t disabled;
};

/* GET /statistics/devices. */
enum iot_err hub_statistics(struct hub_client *c, const struct connstr *cs,
                            struct hub_statistics *out, struct hub_error *herr);

/* ---- twins ----------------------------------------------------------------------------- */

struct hub_twin {
    char device_id[HUB_DEVICE_ID_MAX + 1];
    char etag[HUB_ETAG_MAX + 1];
    int64_t version;
    enum hub_device_status status;
    json_t *tags;     /* owned references; empty objects when the hub sent none */
    json_t *desired;  /* properties.desired, including $metadata/$version */
    json_t *reported; /* properties.reported */
    json_t *raw;      /* the whole twin */
};

/* Drops the references and zeroes the struct. NULL-safe. */
void hub_twin_clear(struct hub_twin *t);

/* GET /twins/{id}. */
enum iot_err hub_twin_get(struct hub_client *c, const struct connstr *cs, const char *device_id,
                          struct hub_twin *out, struct hub_error *herr);

/* PATCH /twins/{id}: merges `tags` and/or `desired` (either may be NULL; a null member removes a
 * property). `if_match` is a twin etag or "*" (NULL: no condition). `out` (may be NULL) receives
 * the updated twin. The JSON arguments are borrowed. */
enum iot_err hub_twin_patch(struct hub_client *c, const struct connstr *cs, const char *device_id,
                            const json_t *tags, const json_t *desired, const char *if_match,
                            struct hub_twin *out, struct hub_error *herr);

/* PUT /twins/{id}: replaces tags and desired properties (NULL counts as empty). */
enum iot_err hub_twin_replace(struct hub_client *c, const struct connstr *cs, const char *device_id,
                              const json_t *tags, const json_t *desired, const char *if_match,
                              struct hub_twin *out, struct hub_error *herr);

/* ---- queries --------------------------------------------------------------------------- */

struct hub_twin_page {
    struct hub_twin *items; /* owned array of `len` twins */
    size_t len;
    char *continuation; /* owned; NULL on the last page */
};

void hub_twin_page_clear(struct hub_twin_page *p);

/* Builds "SELECT * FROM devices WHERE devices.deviceId IN ['id1','id2']" into a malloc'd string
 * (caller frees). Each id must pass hub_device_id_valid() and may not contain a quote (the IoT
 * Hub query language documents no escape for one), so no id can change the query's structure.
 * 1..HUB_QUERY_MAX_IDS ids and at most HUB_QUERY_MAX_LEN bytes; IOT_ERR_INVALID otherwise. */
enum iot_err hub_query_build_ids(const char *const *ids, size_t n, char **out,
                                 struct iot_error *err);

/* POST /devices/query for the twins of `ids`, one page at a time: pass NULL as `continuation`
 * first, then the previous page's continuation until it is NULL. */
enum iot_err hub_devices_query(struct hub_client *c, const struct connstr *cs,
                               const char *const *ids, size_t n, const char *continuation,
                               struct hub_twin_page *out, struct hub_error *herr);

#endif
