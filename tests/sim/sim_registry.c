/* The identity registry and device twins (azure-iothub.md §3.2–§3.4): a hash table of devices
 * behind a rwlock; every route handler here takes the lock it needs and renders its answer (from
 * copies) while still holding it. */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DOTNET_EPOCH_TICKS 621355968000000000LL /* 0001-01-01 to 1970-01-01 in 100 ns ticks */
#define TAGS_MAX_SIZE      8192
#define PROPS_MAX_SIZE     32768

/* ---- hash table ---------------------------------------------------------------------------- */

static uint64_t hash_id(const char *id)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return h;
}

int sim_registry_init(struct sim_registry *reg, bool twin_arrays)
{
    memset(reg, 0, sizeof *reg);
    reg->nbuckets = 1024;
    reg->buckets = calloc(reg->nbuckets, sizeof *reg->buckets);
    if (!reg->buckets || pthread_rwlock_init(&reg->lock, NULL) != 0) {
        free(reg->buckets);
        return -1;
    }
    reg->twin_arrays = twin_arrays;
    return 0;
}

static void device_free(struct sim_device *d)
{
    if (!d) {
        return;
    }
    free(d->status_reason);
    free(d->x509_primary);
    free(d->x509_secondary);
    free(d->device_scope);
    json_decref(d->parent_scopes);
    json_decref(d->tags);
    json_decref(d->desired);
    json_decref(d->desired_meta);
    json_decref(d->reported);
    json_decref(d->reported_meta);
    free(d);
}

void sim_registry_clear(struct sim_registry *reg)
{
    for (size_t i = 0; i < reg->nbuckets; i++) {
        struct sim_device *d = reg->buckets[i];
        while (d) {
            struct sim_device *next = d->next;
            device_free(d);
            d = next;
        }
        reg->buckets[i] = NULL;
    }
    reg->count = 0;
    reg->enabled_count = 0;
}

void sim_registry_destroy(struct sim_registry *reg)
{
    sim_registry_clear(reg);
    free(reg->buckets);
    pthread_rwlock_destroy(&reg->lock);
}

struct sim_device *sim_registry_find(struct sim_registry *reg, const char *id)
{
    struct sim_device *d = reg->buckets[hash_id(id) & (reg->nbuckets - 1)];
    while (d && strcmp(d->id, id) != 0) {
        d = d->next;
    }
    return d;
}

static void registry_grow(struct sim_registry *reg)
{
    size_t n = reg->nbuckets * 2;
    struct sim_device **b = calloc(n, sizeof *b);
    if (!b) {
        return; /* keep the longer chains; still correct */
    }
    for (size_t i = 0; i < reg->nbuckets; i++) {
        struct sim_device *d = reg->buckets[i];
        while (d) {
            struct sim_device *next = d->next;
            size_t slot = hash_id(d->id) & (n - 1);
            d->next = b[slot];
            b[slot] = d;
            d = next;
        }
    }
    free(reg->buckets);
    reg->buckets = b;
    reg->nbuckets = n;
}

static void registry_insert(struct sim_registry *reg, struct sim_device *d)
{
    if (reg->count + 1 > reg->nbuckets) {
        registry_grow(reg);
    }
    size_t slot = hash_id(d->id) & (reg->nbuckets - 1);
    d->next = reg->buckets[slot];
    reg->buckets[slot] = d;
    reg->count++;
    if (d->enabled) {
        reg->enabled_count++;
    }
}

static void registry_remove(struct sim_registry *reg, struct sim_device *d)
{
    struct sim_device **pp = &reg->buckets[hash_id(d->id) & (reg->nbuckets - 1)];
    while (*pp && *pp != d) {
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = d->next;
        reg->count--;
        if (d->enabled) {
            reg->enabled_count--;
        }
    }
    device_free(d);
}

/* ---- identity fields ------------------------------------------------------------------------- */

static void next_etag(struct sim_registry *reg, char *out, size_t n)
{
    /* Azure's device etags look like base64 of a decimal counter ("MA==" = "0"). */
    char dec[24];
    snprintf(dec, sizeof dec, "%llu", (unsigned long long)++reg->etag_counter);
    char b64[40];
    sim_b64_encode((const unsigned char *)dec, strlen(dec), b64);
    snprintf(out, n, "%s", b64);
}

static void twin_etag_text(uint64_t v, char out[16])
{
    unsigned char be[8];
    for (int i = 0; i < 8; i++) {
        be[i] = (unsigned char)(v >> (56 - 8 * i));
    }
    sim_b64_encode(be, 8, out);
}

static void next_generation(struct sim_registry *reg, char *out, size_t n)
{
    int64_t ticks = sim_now_us() * 10 + DOTNET_EPOCH_TICKS;
    if (ticks <= reg->last_ticks) {
        ticks = reg->last_ticks + 1;
    }
    reg->last_ticks = ticks;
    snprintf(out, n, "%lld", (long long)ticks);
}

/* If-Match accepted as *, "*", etag, "etag", W/"etag" (azure-iothub.md §3.1). */
static bool if_match_ok(const char *if_match, const char *etag)
{
    while (*if_match == ' ') {
        if_match++;
    }
    if (strncmp(if_match, "W/", 2) == 0) {
        if_match += 2;
    }
    size_t n = strlen(if_match);
    while (n > 0 && if_match[n - 1] == ' ') {
        n--;
    }
    if (n >= 2 && if_match[0] == '"' && if_match[n - 1] == '"') {
        if_match++;
        n -= 2;
    }
    if (n == 1 && if_match[0] == '*') {
        return true;
    }
    return strlen(etag) == n && strncmp(if_match, etag, n) == 0;
}

static const char *auth_type_name(enum sim_auth_type t)
{
    switch (t) {
    case SIM_AUTH_SAS:
        return "sas";
    case SIM_AUTH_SELF_SIGNED:
        return "selfSigned";
    case SIM_AUTH_CA:
        return "certificateAuthority";
    case SIM_AUTH_NONE:
        return "none";
    }
    return "sas";
}

json_t *sim_device_json(const struct sim_device *d)
{
    char conn_t[40], status_t[40], act_t[40];
    sim_format_time(d->connection_state_updated_us, conn_t);
    sim_format_time(d->status_updated_us, status_t);
    sim_format_time(d->last_activity_us, act_t);
    bool sas = d->auth_type == SIM_AUTH_SAS;
    return json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s?, s:s, s:s, s:s, s:I,"
        " s:{s:{s:s?, s:s?}, s:{s:s?, s:s?}, s:s}, s:{s:b}, s:s?, s:o}",
        "deviceId", d->id, "generationId", d->generation_id, "etag", d->etag, "connectionState",
        d->connected ? "Connected" : "Disconnected", "status", d->enabled ? "enabled" : "disabled",
        "statusReason", d->status_reason, "connectionStateUpdatedTime", conn_t, "statusUpdatedTime",
        status_t, "lastActivityTime", act_t, "cloudToDeviceMessageCount", (json_int_t)d->c2d_count,
        "authentication", "symmetricKey", "primaryKey", sas ? d->primary.b64 : NULL, "secondaryKey",
        sas ? d->secondary.b64 : NULL, "x509Thumbprint", "primaryThumbprint", d->x509_primary,
        "secondaryThumbprint", d->x509_secondary, "type", auth_type_name(d->auth_type),
        "capabilities", "iotEdge", d->iot_edge, "deviceScope", d->device_scope, "parentScopes",
        json_deep_copy(d->parent_scopes));
}

/* Renders copy everything: readers run concurrently under the read lock, and even jansson's
 * atomic reference counting reads the count non-atomically, so stored trees are never shared
 * with an answer. */
static json_t *props_json(const json_t *props, const json_t *meta, long long version)
{
    json_t *out = json_deep_copy(props);
    json_object_set_new(out, "$metadata", json_deep_copy(meta));
    json_object_set_new(out, "$version", json_integer(version));
    return out;
}

json_t *sim_twin_json(const struct sim_device *d)
{
    char twin_etag[16], status_t[40], act_t[40];
    twin_etag_text(d->twin_etag, twin_etag);
    sim_format_time(d->status_updated_us, status_t);
    sim_format_time(d->last_activity_us, act_t);
    json_t *t = json_pack(
        "{s:s, s:s, s:s, s:s, s:s?, s:s, s:s, s:s, s:I, s:s, s:{s:s?, s:s?}, s:s, s:I}", "deviceId",
        d->id, "etag", twin_etag, "deviceEtag", d->etag, "status",
        d->enabled ? "enabled" : "disabled", "statusReason", d->status_reason, "statusUpdateTime",
        status_t, "connectionState", d->connected ? "Connected" : "Disconnected",
        "lastActivityTime", act_t, "cloudToDeviceMessageCount", (json_int_t)d->c2d_count,
        "authenticationType", auth_type_name(d->auth_type), "x509Thumbprint", "primaryThumbprint",
        d->x509_primary, "secondaryThumbprint", d->x509_secondary, "modelId", "", "version",
        (json_int_t)d->twin_version);
    if (!t) {
        return NULL;
    }
    if (json_object_size(d->tags) > 0) { /* Azure omits empty tags */
        json_object_set_new(t, "tags", json_deep_copy(d->tags));
    }
    json_object_set_new(t, "properties",
                        json_pack("{s:o, s:o}", "desired",
                                  props_json(d->desired, d->desired_meta, d->desired_version),
                                  "reported",
                                  props_json(d->reported, d->reported_meta, d->reported_version)));
    json_object_set_new(t, "capabilities", json_pack("{s:b}", "iotEdge", d->iot_edge));
    json_object_set_new(t, "deviceScope",
                        d->device_scope ? json_string(d->device_scope) : json_null());
    json_object_set_new(t, "parentScopes", json_deep_copy(d->parent_scopes));
    return t;
}

/* What a PUT /devices body or a bulk item asks for. */
struct dev_spec {
    bool enabled;
    const char *status_reason; /* borrowed from the request JSON */
    enum sim_auth_type auth_type;
    struct sim_key primary, secondary;
    bool have_primary, have_secondary;
    const char *x509_primary, *x509_secondary;
    bool iot_edge;
    const char *device_scope;
    json_t *parent_scopes; /* borrowed */
};

static bool thumbprint_ok(const char *t)
{
    size_t n = strlen(t);
    if (n != 40 && n != 64) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!strchr("0123456789abcdefABCDEF", t[i])) {
            return false;
        }
    }
    return true;
}

/* Parses the writable identity fields; read-only and unknown fields are ignored, as the hub's
 * JSON binder does. Returns false with `why` set (always an ArgumentInvalid). */
static bool spec_parse(const json_t *obj, struct dev_spec *sp, char *why, size_t n)
{
    memset(sp, 0, sizeof *sp);
    sp->enabled = true;
    json_t *v = json_object_get(obj, "status");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v)) {
            snprintf(why, n, "status must be a string");
            return false;
        }
        if (sim_strcasecmp(json_string_value(v), "enabled") == 0) {
            sp->enabled = true;
        } else if (sim_strcasecmp(json_string_value(v), "disabled") == 0) {
            sp->enabled = false;
        } else {
            snprintf(why, n, "Invalid device status '%.32s'", json_string_value(v));
            return false;
        }
    }
    v = json_object_get(obj, "statusReason");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) > SIM_STATUS_REASON_MAX) {
            snprintf(why, n, "statusReason must be a string of at most %d characters",
                     SIM_STATUS_REASON_MAX);
            return false;
        }
        sp->status_reason = json_string_value(v);
    }
    sp->auth_type = SIM_AUTH_SAS;
    json_t *auth = json_object_get(obj, "authentication");
    if (auth && !json_is_null(auth)) {
        if (!json_is_object(auth)) {
            snprintf(why, n, "authentication must be an object");
            return false;
        }
        v = json_object_get(auth, "type");
        if (v && !json_is_null(v)) {
            const char *t = json_is_string(v) ? json_string_value(v) : "";
            if (sim_strcasecmp(t, "sas") == 0) {
                sp->auth_type = SIM_AUTH_SAS;
            } else if (sim_strcasecmp(t, "selfSigned") == 0) {
                sp->auth_type = SIM_AUTH_SELF_SIGNED;
            } else if (sim_strcasecmp(t, "certificateAuthority") == 0) {
                sp->auth_type = SIM_AUTH_CA;
            } else if (sim_strcasecmp(t, "none") == 0) {
                sp->auth_type = SIM_AUTH_NONE;
            } else {
                snprintf(why, n, "Invalid authentication type");
                return false;
            }
        }
        json_t *sk = json_object_get(auth, "symmetricKey");
        if (sp->auth_type == SIM_AUTH_SAS && json_is_object(sk)) {
            const char *names[2] = {"primaryKey", "secondaryKey"};
            struct sim_key *keys[2] = {&sp->primary, &sp->secondary};
            bool *have[2] = {&sp->have_primary, &sp->have_secondary};
            for (int i = 0; i < 2; i++) {
                json_t *k = json_object_get(sk, names[i]);
                if (!k || json_is_null(k) || (json_is_string(k) && json_string_length(k) == 0)) {
                    continue; /* empty, null or missing: the hub generates one */
                }
                if (!json_is_string(k) || !sim_key_parse(json_string_value(k), 16, keys[i])) {
                    snprintf(why, n, "The %s is invalid: it must be base64 of 16 to 64 bytes",
                             names[i]);
                    return false;
                }
                *have[i] = true;
            }
        }
        json_t *x = json_object_get(auth, "x509Thumbprint");
        if (json_is_object(x)) {
            json_t *p = json_object_get(x, "primaryThumbprint");
            json_t *s = json_object_get(x, "secondaryThumbprint");
            if ((p && !json_is_null(p) &&
                 (!json_is_string(p) || !thumbprint_ok(json_string_value(p)))) ||
                (s && !json_is_null(s) &&
                 (!json_is_string(s) || !thumbprint_ok(json_string_value(s))))) {
                snprintf(why, n, "Invalid x509 thumbprint");
                return false;
            }
            sp->x509_primary = json_is_string(p) ? json_string_value(p) : NULL;
            sp->x509_secondary = json_is_string(s) ? json_string_value(s) : NULL;
        }
        if (sp->auth_type == SIM_AUTH_SELF_SIGNED && !sp->x509_primary) {
            snprintf(why, n, "selfSigned authentication needs a primary thumbprint");
            return false;
        }
        if (sp->auth_type != SIM_AUTH_SELF_SIGNED) {
            sp->x509_primary = sp->x509_secondary = NULL;
        }
    }
    json_t *caps = json_object_get(obj, "capabilities");
    if (json_is_object(caps)) {
        json_t *e = json_object_get(caps, "iotEdge");
        if (e && !json_is_null(e) && !json_is_boolean(e)) {
            snprintf(why, n, "capabilities.iotEdge must be a boolean");
            return false;
        }
        sp->iot_edge = json_is_true(e);
    }
    v = json_object_get(obj, "deviceScope");
    if (json_is_string(v) && json_string_length(v) > 0) {
        sp->device_scope = json_string_value(v);
    }
    v = json_object_get(obj, "parentScopes");
    if (v && !json_is_null(v)) {
        size_t i;
        json_t *e;
        if (!json_is_array(v)) {
            snprintf(why, n, "parentScopes must be an array");
            return false;
        }
        json_array_foreach(v, i, e)
        {
            if (!json_is_string(e)) {
                snprintf(why, n, "parentScopes must hold strings");
                return false;
            }
        }
        sp->parent_scopes = v;
    }
    return true;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Applies a spec: a full replacement of the writable fields, as Azure's PUT is. */
static bool spec_apply(struct sim_registry *reg, struct sim_device *d, const struct dev_spec *sp,
                       bool creating)
{
    int64_t now = sim_now_us();
    if (!creating && d->enabled != sp->enabled) {
        d->status_updated_us = now;
        if (sp->enabled) {
            reg->enabled_count++;
        } else {
            reg->enabled_count--;
        }
    }
    d->enabled = sp->enabled;
    free(d->status_reason);
    d->status_reason = dup_or_null(sp->status_reason);
    d->auth_type = sp->auth_type;
    if (sp->auth_type == SIM_AUTH_SAS) {
        if (sp->have_primary) {
            d->primary = sp->primary;
        } else if (!sim_key_generate(&d->primary)) {
            return false;
        }
        if (sp->have_secondary) {
            d->secondary = sp->secondary;
        } else if (!sim_key_generate(&d->secondary)) {
            return false;
        }
    } else {
        memset(&d->primary, 0, sizeof d->primary);
        memset(&d->secondary, 0, sizeof d->secondary);
    }
    free(d->x509_primary);
    free(d->x509_secondary);
    d->x509_primary = dup_or_null(sp->x509_primary);
    d->x509_secondary = dup_or_null(sp->x509_secondary);
    d->iot_edge = sp->iot_edge;
    free(d->device_scope);
    if (d->iot_edge) {
        char scope[SIM_ID_MAX + 64];
        snprintf(scope, sizeof scope, "ms-azure-iot-edge://%s-%s", d->id, d->generation_id);
        d->device_scope = strdup(scope);
    } else {
        d->device_scope = dup_or_null(sp->device_scope);
    }
    json_decref(d->parent_scopes);
    d->parent_scopes = sp->parent_scopes ? json_deep_copy(sp->parent_scopes) : json_array();
    next_etag(reg, d->etag, sizeof d->etag);
    return true;
}

static struct sim_device *device_new(struct sim_registry *reg, const char *id)
{
    struct sim_device *d = calloc(1, sizeof *d);
    if (!d) {
        return NULL;
    }
    snprintf(d->id, sizeof d->id, "%s", id);
    next_generation(reg, d->generation_id, sizeof d->generation_id);
    char when[40];
    sim_format_time(sim_now_us(), when);
    d->tags = json_object();
    d->desired = json_object();
    d->reported = json_object();
    d->desired_meta = json_pack("{s:s}", "$lastUpdated", when);
    d->reported_meta = json_pack("{s:s}", "$lastUpdated", when);
    d->parent_scopes = json_array();
    d->desired_version = 1;
    d->reported_version = 1;
    d->twin_version = 2; /* a fresh twin is version 2, etag 1 (azure-iothub.md §3.4) */
    d->twin_etag = 1;
    return d;
}

/* ---- identity routes ----------------------------------------------------------------------- */

static json_t *parse_body(const char *body, size_t len, struct sim_reply *r)
{
    json_error_t jerr;
    json_t *j = json_loadb(body ? body : "", len, JSON_DECODE_ANY, &jerr);
    if (!j) {
        sim_reply_error(r, SIM_E_ARGUMENT_INVALID, "Malformed JSON in request body: %s (line %d)",
                        jerr.text, jerr.line);
    }
    return j;
}

void sim_route_device_put(struct sim *s, const char *id, const char *if_match, const char *body,
                          size_t len, struct sim_reply *r)
{
    json_t *j = parse_body(body, len, r);
    if (!j) {
        return;
    }
    char why[256];
    struct dev_spec sp;
    json_t *bid = json_object_get(j, "deviceId");
    if (!json_is_object(j)) {
        sim_reply_error(r, SIM_E_ARGUMENT_INVALID, "The request body must be a Device object");
    } else if (!json_is_string(bid)) {
        sim_reply_error(r, SIM_E_ARGUMENT_NULL, "deviceId is required in the request body");
    } else if (strcmp(json_string_value(bid), id) != 0) {
        sim_reply_error(r, SIM_E_ARGUMENT_INVALID,
                        "DeviceId in the request body does not match the request URI");
    } else if (!spec_parse(j, &sp, why, sizeof why)) {
        sim_reply_error(r, SIM_E_ARGUMENT_INVALID, "%s", why);
    } else {
        struct sim_registry *reg = &s->reg;
        pthread_rwlock_wrlock(&reg->lock);
        struct sim_device *d = sim_registry_find(reg, id);
        if (!if_match) {
            /* Create-only: the service never overwrites without an If-Match. */
            if (d) {
                sim_reply_error(r, SIM_E_DEVICE_ALREADY_EXISTS,
                                "A device with ID '%s' is already registered.", id);
            } else if (!(d = device_new(reg, id)) || !spec_apply(reg, d, &sp, true)) {
                device_free(d);
                sim_reply_error(r, SIM_E_SERVER_ERROR, "out of resources");
            } else {
                registry_insert(reg, d);
                sim_reply_json(r, 200, sim_device_json(d));
                snprintf(r->etag, sizeof r->etag, "%s", d->etag);
            }
        } else if (!d) {
            sim_reply_error(r, SIM_E_DEVICE_NOT_FOUND, "%s", id);
        } else if (!if_match_ok(if_match, d->etag)) {
            sim_reply_error(r, SIM_E_PRECONDITION_FAILED,
                            "Precondition failed: Device version did not match, "
                            "existingVersion:%s",
                            d->etag);
        } else if (!spec_apply(reg, d, &sp, false)) {
            sim_reply_error(r, SIM_E_SERVER_ERROR, "out of resources");
        } else {
            sim_reply_json(r, 200, sim_device_json(d));
            snprintf(r->etag, sizeof r->etag, "%s", d->etag);
        }
        pthread_rwlock_unlock(&reg->lock);
    }
    json_decref(j);
}

void sim_route_device_get(struct sim *s, const char *id, struct sim_reply *r)
{
    pthread_rwlock_rdlock(&s->reg.lock);
    const struct sim_device *d = sim_registry_find(&s->reg, id);
    if (!d) {
        sim_reply_error(r, SIM_E_DEVICE_NOT_FOUND, "%s", id);
    } else {
        sim_reply_json(r, 200, sim_device_json(d));
        snprintf(r->etag, sizeof r->etag, "%s", d->etag);
    }
    pthread_rwlock_unlock(&s->reg.lock);
}

void sim_route_device_delete(struct sim *s, const char *id, const char *if_match,
                             struct sim_reply *r)
{
    if (!if_match) {
        /* Undocumented in Azure (§7): strict, so a client that forgets If-Match is caught. */
        sim_reply_error(r, SIM_E_ARGUMENT_INVALID,
                        "If-Match header is required: send the device ETag or '*'");
        return;
    }
    pthread_rwlock_wrlock(&s->reg.lock);
    struct sim_device *d = sim_registry_find(&s->reg, id);
    if (!d) {
        sim_reply_error(r, SIM_E_DEVICE_NOT_FOUND, "%s", id);
    } else if (!if_match_ok(if_match, d->etag)) {
        sim_reply_error(r, SIM_E_PRECONDITION_FAILED,
                        "Precondition failed: Device version did not match, existingVersion:%s",
                        d->etag);
    } else {
        registry_remove(&s->reg, d); /* the twin goes with it */
        r->status = 204;
    }
    pthread_rwlock_unlock(&s->reg.lock);
}

void sim_route_device_list(struct sim *s, const char *top, struct sim_reply *r)
{
    long n = top ? strtol(top, NULL, 10) : 0;
    if (n < 1 || n > 1000) {
        n = 1000; /* the swagger: top outside 1..1000 is treated as 1000 */
    }
    json_t *arr = json_array();
    pthread_rwlock_rdlock(&s->reg.lock);
    for (size_t i = 0; i < s->reg.nbuckets && json_array_size(arr) < (size_t)n; i++) {
        for (const struct sim_device *d = s->reg.buckets[i]; d && json_array_size(arr) < (size_t)n;
             d = d->next) {
            json_array_append_new(arr, sim_device_json(d));
        }
    }
    sim_reply_json(r, 200, arr);
    pthread_rwlock_unlock(&s->reg.lock);
}

void sim_route_statistics(struct sim *s, struct sim_reply *r)
{
    pthread_rwlock_rdlock(&s->reg.lock);
    json_int_t total = (json_int_t)s->reg.count, enabled = (json_int_t)s->reg.enabled_count;
    pthread_rwlock_unlock(&s->reg.lock);
    sim_reply_json(r, 200,
                   json_pack("{s:I, s:I, s:I}", "totalDeviceCount", total, "enabledDeviceCount",
                             enabled, "disabledDeviceCount", total - enabled));
}

/* ---- twins ------------------------------------------------------------------------------------
 */

void sim_route_twin_get(struct sim *s, const char *id, struct sim_reply *r)
{
    pthread_rwlock_rdlock(&s->reg.lock);
    const struct sim_device *d = sim_registry_find(&s->reg, id);
    if (!d) {
        sim_reply_error(r, SIM_E_DEVICE_NOT_FOUND, "%s", id);
    } else {
        sim_reply_json(r, 200, sim_twin_json(d));
        twin_etag_text(d->twin_etag, r->etag);
    }
    pthread_rwlock_unlock(&s->reg.lock);
}

/* A validated twin change, ready to commit. NULL members mean "leave as is". */
struct twin_change {
    json_t *tags;       /* patch (PATCH) or replacement (PUT) */
    json_t *desired;    /* idem; already stripped of $metadata/$version */
    bool clear_tags;    /* PATCH with "tags": null */
    bool clear_desired; /* PATCH with "properties":{"desired":null} */
};

/* Checks a service-side twin body. `bare` errors (shape 3) are what Azure sends for twins. */
static bool twin_change_parse(struct sim *s, json_t *j, const char *id, bool replace,
                              struct twin_change *c, struct sim_reply *r)
{
    memset(c, 0, sizeof *c);
    char why[256];
    if (!json_is_object(j)) {
        sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID, "The request body must be a Twin object");
        return false;
    }
    json_t *bid = json_object_get(j, "deviceId");
    if (bid && !json_is_null(bid) &&
        (!json_is_string(bid) || strcmp(json_string_value(bid), id) != 0)) {
        sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID,
                             "DeviceId in the request body does not match the request URI");
        return false;
    }
    json_t *tags = json_object_get(j, "tags");
    if (tags && json_is_null(tags)) {
        c->clear_tags = !replace;
    } else if (tags) {
        if (!sim_twin_validate(tags, !replace, s->reg.twin_arrays, why, sizeof why)) {
            sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID, "Invalid tags: %s", why);
            return false;
        }
        c->tags = tags;
    }
    json_t *props = json_object_get(j, "properties");
    if (props && !json_is_null(props)) {
        if (!json_is_object(props)) {
            sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID, "properties must be an object");
            return false;
        }
        json_t *rep = json_object_get(props, "reported");
        if (rep && !json_is_null(rep)) {
            /* Reported properties are device-owned; undocumented for the service API (§7):
             * strict. */
            sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID,
                                 "Reported properties cannot be updated by the service");
            return false;
        }
        json_t *des = json_object_get(props, "desired");
        if (des && json_is_null(des)) {
            c->clear_desired = !replace;
        } else if (des) {
            if (!json_is_object(des)) {
                sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID,
                                     "Desired properties must be an object");
                return false;
            }
            /* SDKs round-trip what GET returned: the root $metadata/$version are ignored. */
            json_t *copy = json_copy(des);
            sim_twin_strip_meta(copy);
            if (!sim_twin_validate(copy, !replace, s->reg.twin_arrays, why, sizeof why)) {
                json_decref(copy);
                sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID, "Invalid desired properties: %s",
                                     why);
                return false;
            }
            c->desired = copy;
        }
    }
    return true;
}

/* Builds the new tree: `base` merged with `change` (nulls delete), or a fresh tree when `fresh`
 * (PUT replace, or a null clearing everything). Returns owned trees; size checks are the
 * caller's. `version` < 0 = no $lastUpdatedVersion (reported properties, tags). */
static json_t *apply_props(const json_t *base, const json_t *base_meta, const json_t *change,
                           bool fresh, const char *when, long long version, json_t **meta_out)
{
    json_t *tree = fresh ? json_object() : json_deep_copy(base);
    json_t *meta = (fresh || !base_meta) ? json_object() : json_deep_copy(base_meta);
    if (change) {
        sim_twin_merge(tree, meta, change, when, version);
    } else {
        json_object_set_new(meta, "$lastUpdated", json_string(when));
        if (version >= 0) {
            json_object_set_new(meta, "$lastUpdatedVersion", json_integer(version));
        }
    }
    *meta_out = meta;
    return tree;
}

void sim_route_twin_update(struct sim *s, const char *id, bool replace, const char *if_match,
                           const char *body, size_t len, struct sim_reply *r)
{
    json_t *j = parse_body(body, len, r);
    if (!j) {
        return;
    }
    struct twin_change c;
    if (!twin_change_parse(s, j, id, replace, &c, r)) {
        json_decref(j);
        return;
    }
    pthread_rwlock_wrlock(&s->reg.lock);
    struct sim_device *d = sim_registry_find(&s->reg, id);
    char etag[16];
    if (d) {
        twin_etag_text(d->twin_etag, etag);
    }
    if (!d) {
        sim_reply_error(r, SIM_E_DEVICE_NOT_FOUND, "%s", id);
    } else if (if_match && !if_match_ok(if_match, etag)) {
        sim_reply_error(r, SIM_E_PRECONDITION_FAILED,
                        "Precondition failed: Twin version did not match, existingVersion:%s",
                        etag);
    } else {
        char when[40];
        sim_format_time(sim_now_us(), when);
        bool desired_changes = replace || c.desired || c.clear_desired;
        long long dver = d->desired_version + (desired_changes ? 1 : 0);
        json_t *tags_meta = NULL, *des_meta = NULL;
        json_t *tags = NULL, *des = NULL;
        if (replace || c.tags || c.clear_tags) {
            tags =
                apply_props(d->tags, NULL, c.tags, replace || c.clear_tags, when, -1, &tags_meta);
        }
        if (desired_changes) {
            des = apply_props(d->desired, d->desired_meta, c.desired, replace || c.clear_desired,
                              when, dver, &des_meta);
        }
        json_decref(tags_meta); /* tags carry no metadata */
        if (tags && sim_twin_size(tags) > TAGS_MAX_SIZE) {
            sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID,
                                 "Tags size %zu exceeds the maximum of %d bytes",
                                 sim_twin_size(tags), TAGS_MAX_SIZE);
            json_decref(tags);
            json_decref(des);
            json_decref(des_meta);
        } else if (des && sim_twin_size(des) > PROPS_MAX_SIZE) {
            sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID,
                                 "Desired properties size %zu exceeds the maximum of %d bytes",
                                 sim_twin_size(des), PROPS_MAX_SIZE);
            json_decref(tags);
            json_decref(des);
            json_decref(des_meta);
        } else {
            if (tags) {
                json_decref(d->tags);
                d->tags = tags;
            }
            if (des) {
                json_decref(d->desired);
                json_decref(d->desired_meta);
                d->desired = des;
                d->desired_meta = des_meta;
                d->desired_version = dver;
            }
            d->twin_version++;
            d->twin_etag++;
            sim_reply_json(r, 200, sim_twin_json(d));
            twin_etag_text(d->twin_etag, r->etag);
        }
    }
    pthread_rwlock_unlock(&s->reg.lock);
    json_decref(c.desired);
    json_decref(j);
}

void sim_control_reported(struct sim *s, const char *id, const char *body, size_t len,
                          struct sim_reply *r)
{
    json_t *j = parse_body(body, len, r);
    if (!j) {
        return;
    }
    char why[256];
    if (!sim_twin_validate(j, true, s->reg.twin_arrays, why, sizeof why)) {
        sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID, "Invalid reported properties: %s", why);
        json_decref(j);
        return;
    }
    pthread_rwlock_wrlock(&s->reg.lock);
    struct sim_device *d = sim_registry_find(&s->reg, id);
    if (!d) {
        sim_reply_error(r, SIM_E_DEVICE_NOT_FOUND, "%s", id);
    } else {
        char when[40];
        sim_format_time(sim_now_us(), when);
        json_t *meta = NULL;
        json_t *rep = apply_props(d->reported, d->reported_meta, j, false, when, -1, &meta);
        if (sim_twin_size(rep) > PROPS_MAX_SIZE) {
            sim_reply_error_bare(r, SIM_E_ARGUMENT_INVALID,
                                 "Reported properties size exceeds the maximum of %d bytes",
                                 PROPS_MAX_SIZE);
            json_decref(rep);
            json_decref(meta);
        } else {
            json_decref(d->reported);
            json_decref(d->reported_meta);
            d->reported = rep;
            d->reported_meta = meta;
            d->reported_version++;
            d->twin_version++;
            d->twin_etag++;
            sim_reply_json(r, 200, sim_twin_json(d));
            twin_etag_text(d->twin_etag, r->etag);
        }
    }
    pthread_rwlock_unlock(&s->reg.lock);
    json_decref(j);
}

/* ---- bulk ------------------------------------------------------------------------------------ */

enum bulk_mode {
    BULK_CREATE,
    BULK_CREATE_OR_UPDATE,
    BULK_UPDATE,
    BULK_UPDATE_IF_MATCH,
    BULK_DELETE,
    BULK_DELETE_IF_MATCH,
    BULK_UPDATE_TWIN,
    BULK_UPDATE_TWIN_IF_MATCH,
};

static bool bulk_mode_parse(const char *s, enum bulk_mode *m)
{
    static const struct {
        const char *name;
        enum bulk_mode mode;
    } modes[] = {
        {"create", BULK_CREATE},          {"createOrUpdate", BULK_CREATE_OR_UPDATE},
        {"update", BULK_UPDATE},          {"updateIfMatchETag", BULK_UPDATE_IF_MATCH},
        {"delete", BULK_DELETE},          {"deleteIfMatchETag", BULK_DELETE_IF_MATCH},
        {"updateTwin", BULK_UPDATE_TWIN}, {"updateTwinIfMatchETag", BULK_UPDATE_TWIN_IF_MATCH},
    };
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        if (sim_strcasecmp(s, modes[i].name) == 0) { /* Node sends "Update", "Delete", ... */
            *m = modes[i].mode;
            return true;
        }
    }
    return false;
}

static void bulk_error(json_t *errors, const char *id, const char *mode, enum sim_ecode e,
                       const char *text)
{
    json_array_append_new(errors, json_pack("{s:s, s:n, s:s, s:s, s:s}", "deviceId", id, "moduleId",
                                            "errorCode", sim_ecode_name(e), "errorStatus", text,
                                            "operation", mode));
}

/* Twin part of a bulk item: tags and properties.desired, merged (create: into an empty twin). */
static bool bulk_twin(struct sim *s, struct sim_device *d, json_t *item, char *why, size_t n)
{
    json_t *tags = json_object_get(item, "tags");
    json_t *props = json_object_get(item, "properties");
    json_t *des = json_is_object(props) ? json_object_get(props, "desired") : NULL;
    if (json_is_object(props) && json_object_get(props, "reported") &&
        !json_is_null(json_object_get(props, "reported"))) {
        snprintf(why, n, "Reported properties cannot be updated by the service");
        return false;
    }
    if (tags && !json_is_null(tags) && !sim_twin_validate(tags, true, s->reg.twin_arrays, why, n)) {
        return false;
    }
    json_t *dcopy = json_is_object(des) ? json_copy(des) : NULL;
    sim_twin_strip_meta(dcopy);
    if (dcopy && !sim_twin_validate(dcopy, true, s->reg.twin_arrays, why, n)) {
        json_decref(dcopy);
        return false;
    }
    if (!json_is_object(tags) && !dcopy) {
        return true;
    }
    char when[40];
    sim_format_time(sim_now_us(), when);
    json_t *tmeta = NULL, *dmeta = NULL, *nt = NULL, *nd = NULL;
    if (json_is_object(tags)) {
        nt = apply_props(d->tags, NULL, tags, false, when, -1, &tmeta);
        json_decref(tmeta);
    }
    if (dcopy) {
        nd = apply_props(d->desired, d->desired_meta, dcopy, false, when, d->desired_version + 1,
                         &dmeta);
    }
    json_decref(dcopy);
    if ((nt && sim_twin_size(nt) > TAGS_MAX_SIZE) || (nd && sim_twin_size(nd) > PROPS_MAX_SIZE)) {
        snprintf(why, n, "Twin size exceeds the maximum");
        json_decref(nt);
        json_decref(nd);
        json_decref(dmeta);
        return false;
    }
    if (nt) {
        json_decref(d->tags);
        d->tags = nt;
    }
    if (nd) {
        json_decref(d->desired);
        json_decref(d->desired_meta);
        d->desired = nd;
        d->desired_meta = dmeta;
        d->desired_version++;
    }
    d->twin_version++;
    d->twin_etag++;
    return true;
}

static void bulk_one(struct sim *s, json_t *item, json_t *errors)
{
    struct sim_registry *reg = &s->reg;
    json_t *jid = json_object_get(item, "id");
    json_t *jmode = json_object_get(item, "importMode");
    const char *id = json_is_string(jid) ? json_string_value(jid) : "";
    const char *mode_text = json_is_string(jmode) ? json_string_value(jmode) : "";
    char why[256];
    enum bulk_mode mode;
    if (!sim_id_valid(id)) {
        bulk_error(errors, id, mode_text, SIM_E_ARGUMENT_INVALID, "Invalid device id");
        return;
    }
    if (!bulk_mode_parse(mode_text, &mode)) {
        bulk_error(errors, id, mode_text, SIM_E_ARGUMENT_INVALID, "Invalid importMode");
        return;
    }
    json_t *jetag = json_object_get(item, "eTag");
    json_t *jtwin_etag = json_object_get(item, "twinETag");
    struct sim_device *d = sim_registry_find(reg, id);
    switch (mode) {
    case BULK_CREATE:
    case BULK_CREATE_OR_UPDATE:
    case BULK_UPDATE:
    case BULK_UPDATE_IF_MATCH: {
        struct dev_spec sp;
        if (!spec_parse(item, &sp, why, sizeof why)) {
            bulk_error(errors, id, mode_text, SIM_E_ARGUMENT_INVALID, why);
            return;
        }
        if (mode == BULK_CREATE && d) {
            bulk_error(errors, id, mode_text, SIM_E_DEVICE_ALREADY_EXISTS,
                       "A device with this ID is already registered.");
            return;
        }
        if ((mode == BULK_UPDATE || mode == BULK_UPDATE_IF_MATCH) && !d) {
            bulk_error(errors, id, mode_text, SIM_E_DEVICE_NOT_FOUND, "Device not found");
            return;
        }
        if (mode == BULK_UPDATE_IF_MATCH &&
            (!json_is_string(jetag) || !if_match_ok(json_string_value(jetag), d->etag))) {
            bulk_error(errors, id, mode_text, SIM_E_PRECONDITION_FAILED,
                       "Precondition failed: Device version did not match");
            return;
        }
        bool creating = d == NULL;
        if (creating) {
            d = device_new(reg, id);
            if (!d || !spec_apply(reg, d, &sp, true)) {
                device_free(d);
                bulk_error(errors, id, mode_text, SIM_E_SERVER_ERROR, "out of resources");
                return;
            }
            if (!bulk_twin(s, d, item, why, sizeof why)) {
                device_free(d);
                bulk_error(errors, id, mode_text, SIM_E_ARGUMENT_INVALID, why);
                return;
            }
            registry_insert(reg, d);
        } else if (!spec_apply(reg, d, &sp, false)) {
            bulk_error(errors, id, mode_text, SIM_E_SERVER_ERROR, "out of resources");
        }
        return;
    }
    case BULK_DELETE:
    case BULK_DELETE_IF_MATCH:
        if (!d) {
            bulk_error(errors, id, mode_text, SIM_E_DEVICE_NOT_FOUND, "Device not found");
        } else if (mode == BULK_DELETE_IF_MATCH &&
                   (!json_is_string(jetag) || !if_match_ok(json_string_value(jetag), d->etag))) {
            bulk_error(errors, id, mode_text, SIM_E_PRECONDITION_FAILED,
                       "Precondition failed: Device version did not match");
        } else {
            registry_remove(reg, d);
        }
        return;
    case BULK_UPDATE_TWIN:
    case BULK_UPDATE_TWIN_IF_MATCH: {
        if (!d) {
            bulk_error(errors, id, mode_text, SIM_E_DEVICE_NOT_FOUND, "Device not found");
            return;
        }
        char etag[16];
        twin_etag_text(d->twin_etag, etag);
        if (mode == BULK_UPDATE_TWIN_IF_MATCH &&
            (!json_is_string(jtwin_etag) || !if_match_ok(json_string_value(jtwin_etag), etag))) {
            bulk_error(errors, id, mode_text, SIM_E_PRECONDITION_FAILED,
                       "Precondition failed: Twin version did not match");
            return;
        }
        if (!bulk_twin(s, d, item, why, sizeof why)) {
            bulk_error(errors, id, mode_text, SIM_E_ARGUMENT_INVALID, why);
        }
        return;
    }
    }
}

void sim_route_bulk(struct sim *s, json_t *items, struct sim_reply *r)
{
    size_t n = json_array_size(items);
    /* The whole request is rejected for a repeated id (DeviceDefinedMultipleTimes). */
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        if (!json_is_object(it)) {
            sim_reply_error(r, SIM_E_ARGUMENT_INVALID, "Bulk items must be objects");
            return;
        }
        json_t *id = json_object_get(it, "id");
        for (size_t k = 0; k < i && json_is_string(id); k++) {
            json_t *other = json_object_get(json_array_get(items, k), "id");
            if (json_is_string(other) &&
                strcmp(json_string_value(other), json_string_value(id)) == 0) {
                sim_reply_error(r, SIM_E_DEVICE_DEFINED_MULTIPLE,
                                "Device '%s' is defined multiple times in the request",
                                json_string_value(id));
                return;
            }
        }
    }
    json_t *errors = json_array();
    pthread_rwlock_wrlock(&s->reg.lock);
    for (size_t i = 0; i < n; i++) {
        bulk_one(s, json_array_get(items, i), errors);
    }
    pthread_rwlock_unlock(&s->reg.lock);
    bool ok = json_array_size(errors) == 0;
    sim_reply_json(r, ok ? 200 : 400,
                   json_pack("{s:b, s:o, s:[]}", "isSuccessful", ok, "errors", errors, "warnings"));
    if (!ok) {
        r->errorcode = sim_ecode_name(SIM_E_BULK_FAILURE);
    }
}

/* ---- device endpoint ------------------------------------------------------------------------ */

void sim_route_device_event(struct sim *s, const char *id, const char *authz, char *who,
                            size_t who_len, struct sim_reply *r)
{
    struct sim_sas t;
    char why[128];
    bool ok = sim_sas_parse(authz, &t, why, sizeof why) && !t.has_skn;
    pthread_rwlock_wrlock(&s->reg.lock);
    struct sim_device *d = ok ? sim_registry_find(&s->reg, id) : NULL;
    /* The token must be scoped to this device (sr = <hub>/devices/<id>, or deeper): a
     * hub-wide sr signed with a device key is no device token. */
    char scope[SIM_HOST_MAX + SIM_ID_MAX + 16], resource[sizeof scope + 32];
    snprintf(scope, sizeof scope, "%s/devices/%s", s->opt.hub_host, id);
    snprintf(resource, sizeof resource, "%s/messages/events", scope);
    size_t srlen = strlen(t.sr);
    while (srlen > 0 && t.sr[srlen - 1] == '/') {
        srlen--;
    }
    if (d && d->enabled && d->auth_type == SIM_AUTH_SAS &&
        (sim_sas_verify_key(&t, &d->primary) || sim_sas_verify_key(&t, &d->secondary)) &&
        sim_sas_fresh(&t, s->opt.token_skew_s) && sim_sas_scope_ok(&t, resource) &&
        srlen >= strlen(scope)) {
        int64_t now = sim_now_us();
        d->last_activity_us = now;
        snprintf(who, who_len, "device:%s", id);
        r->status = 204;
    } else {
        sim_reply_error(r, SIM_E_UNAUTHORIZED, "Unauthorized");
    }
    pthread_rwlock_unlock(&s->reg.lock);
}

/* ---- control API dumps ---------------------------------------------------------------------- */

json_t *sim_registry_dump_all(struct sim *s)
{
    json_t *devices = json_array();
    json_t *twins = json_object();
    pthread_rwlock_rdlock(&s->reg.lock);
    for (size_t i = 0; i < s->reg.nbuckets; i++) {
        for (const struct sim_device *d = s->reg.buckets[i]; d; d = d->next) {
            json_array_append_new(devices, sim_device_json(d));
            json_object_set_new(twins, d->id, sim_twin_json(d));
        }
    }
    /* Dump before unlocking: the trees share children with the live twins. */
    char *text = sim_json_take_dump(json_pack("{s:o, s:o}", "devices", devices, "twins", twins));
    pthread_rwlock_unlock(&s->reg.lock);
    json_t *out = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return out;
}

json_t *sim_registry_dump_one(struct sim *s, const char *id)
{
    json_t *out = NULL;
    pthread_rwlock_rdlock(&s->reg.lock);
    const struct sim_device *d = sim_registry_find(&s->reg, id);
    if (d) {
        char *text = sim_json_take_dump(
            json_pack("{s:o, s:o}", "device", sim_device_json(d), "twin", sim_twin_json(d)));
        out = text ? json_loads(text, 0, NULL) : NULL;
        free(text);
    }
    pthread_rwlock_unlock(&s->reg.lock);
    return out;
}
