/* Per-device state (compare-and-set) and leases on NATS KV buckets.
 *
 * Writes are conditional on the key's last revision, checked by the server
 * (Nats-Expected-Last-Subject-Sequence), so two writers with the same expected revision cannot
 * both succeed. libnats 3.4.1's kvStore_Create/Update report a failed condition only as
 * NATS_ERR with the server's text "wrong last sequence: N" (no error code is passed out), so
 * that text is what tells a conflict from an outage.
 *
 * Leases: the bucket's MaxAge is the lease TTL, so the server removes a lease whose holder
 * stopped renewing. kvStore_Delete cannot be made conditional in 3.4.1, so a release writes the
 * KV delete marker itself, conditional on the holder's revision: it never removes a lease that
 * expired and was taken by someone else meanwhile. What stays open is inherent to time-based
 * leases: a holder that stalls longer than the TTL loses the lease without knowing until its
 * next renew, and for that while two workers may reconcile the same device. That is harmless
 * here because the lease only spares duplicate work: correctness comes from the CAS on the
 * device's state and from reconciling to that state idempotently.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/queue_internal.h"

/* [-/_=.a-zA-Z0-9]+ without empty tokens (the KV subject is "$KV.<bucket>.<key>"). */
static bool valid_key(const char *key)
{
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n >= QUEUE_KEY_MAX || key[0] == '.' || key[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c == '.' && key[i + 1] == '.')
            return false;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("-/_=.", c)))
            return false;
    }
    return true;
}

static bool last_error_is_wrong_sequence(void)
{
    const char *t = nats_GetLastError(NULL);
    return t && strstr(t, "wrong last sequence") != NULL;
}

static enum iot_err kv_write_error(struct queue *q, struct iot_error *err, natsStatus s,
                                   const char *what, const char *key)
{
    if (s == NATS_ERR && last_error_is_wrong_sequence())
        return iot_error_set(err, IOT_ERR_CONFLICT, "%s \"%s\": changed meanwhile", what, key);
    return queue_nats_error(q, err, s, 0, what);
}

enum iot_err queue_state_get(struct queue *q, const char *key, char **value, size_t *len,
                             uint64_t *revision, struct iot_error *err)
{
    *value = NULL;
    *len = 0;
    *revision = 0;
    if (!valid_key(key))
        return iot_error_set(err, IOT_ERR_INVALID, "invalid state key");
    enum iot_err rc = queue_check_ready(q, "reading device state", err);
    if (rc != IOT_OK)
        return rc;
    kvEntry *e = NULL;
    natsStatus s = kvStore_Get(&e, q->state_kv, key);
    if (s == NATS_NOT_FOUND)
        return iot_error_set(err, IOT_ERR_NOT_FOUND, "no state for \"%s\"", key);
    if (s != NATS_OK)
        return queue_nats_error(q, err, s, 0, "reading device state");
    int n = kvEntry_ValueLen(e);
    /* NUL-terminated for the JSON decoder's convenience; *len excludes it */
    char *v = malloc((size_t)(n > 0 ? n : 0) + 1);
    if (!v) {
        kvEntry_Destroy(e);
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    }
    if (n > 0)
        memcpy(v, kvEntry_Value(e), (size_t)n);
    v[n > 0 ? n : 0] = '\0';
    *value = v;
    *len = (size_t)(n > 0 ? n : 0);
    *revision = kvEntry_Revision(e);
    kvEntry_Destroy(e);
    return IOT_OK;
}

enum iot_err queue_state_put(struct queue *q, const char *key, const void *value, size_t len,
                             uint64_t expected, uint64_t *revision, struct iot_error *err)
{
    *revision = 0;
    if (!valid_key(key))
        return iot_error_set(err, IOT_ERR_INVALID, "invalid state key");
    if (len > INT_MAX || (!value && len))
        return iot_error_set(err, IOT_ERR_INVALID, "invalid state value");
    enum iot_err rc = queue_check_ready(q, "writing device state", err);
    if (rc != IOT_OK)
        return rc;
    uint64_t rev = 0;
    natsStatus s = expected == 0
                       ? kvStore_Create(&rev, q->state_kv, key, value, (int)len)
                       : kvStore_Update(&rev, q->state_kv, key, value, (int)len, expected);
    if (s != NATS_OK)
        return kv_write_error(q, err, s, "device state", key);
    *revision = rev;
    return IOT_OK;
}

enum iot_err queue_lease_acquire(struct queue *q, const char *key, const char *owner,
                                 uint64_t *revision, struct iot_error *err)
{
    *revision = 0;
    if (!valid_key(key) || !owner)
        return iot_error_set(err, IOT_ERR_INVALID, "invalid lease key or owner");
    enum iot_err rc = queue_check_ready(q, "taking a lease", err);
    if (rc != IOT_OK)
        return rc;
    uint64_t rev = 0;
    /* succeeds over nothing, an expired lease, or a released one (delete marker) */
    natsStatus s = kvStore_Create(&rev, q->lease_kv, key, owner, (int)strlen(owner));
    if (s != NATS_OK) {
        rc = kv_write_error(q, err, s, "lease", key);
        if (rc == IOT_ERR_CONFLICT)
            iot_error_set(err, rc, "lease \"%s\" is held by another worker", key);
        return rc;
    }
    *revision = rev;
    return IOT_OK;
}

enum iot_err queue_lease_renew(struct queue *q, const char *key, const char *owner,
                               uint64_t *revision, struct iot_error *err)
{
    if (!valid_key(key) || !owner || *revision == 0)
        return iot_error_set(err, IOT_ERR_INVALID, "invalid lease key, owner or revision");
    enum iot_err rc = queue_check_ready(q, "renewing a lease", err);
    if (rc != IOT_OK)
        return rc;
    uint64_t rev = 0;
    natsStatus s = kvStore_Update(&rev, q->lease_kv, key, owner, (int)strlen(owner), *revision);
    if (s != NATS_OK) {
        rc = kv_write_error(q, err, s, "lease", key);
        if (rc == IOT_ERR_CONFLICT)
            iot_error_set(err, rc, "lease \"%s\" was lost (expired or taken over)", key);
        return rc;
    }
    *revision = rev;
    return IOT_OK;
}

enum iot_err queue_lease_release(struct queue *q, const char *key, uint64_t revision,
                                 struct iot_error *err)
{
    /* revision 0 would make the delete unconditional */
    if (!valid_key(key) || revision == 0)
        return iot_error_set(err, IOT_ERR_INVALID, "invalid lease key or revision");
    enum iot_err rc = queue_check_ready(q, "releasing a lease", err);
    if (rc != IOT_OK)
        return rc;
    char subject[QUEUE_NAME_MAX + QUEUE_KEY_MAX + 8];
    char rev[24];
    snprintf(subject, sizeof subject, "$KV.%s.%s", q->lease_bucket, key);
    snprintf(rev, sizeof rev, "%llu", (unsigned long long)revision);
    natsMsg *m = NULL;
    /* The KV delete marker, as kvStore_Delete writes it, but conditional on our revision (the
     * stream refuses it once someone else holds the lease). Published without waiting for the
     * stream's answer: a release is only an optimisation over the TTL, so a lost one costs a
     * later taker a retry, while waiting for it cost every event a round trip. The server
     * handles one connection's messages in order, so a later take by this process normally
     * finds the lease free; if not, it is retried like any lease held by another worker. */
    natsStatus s = natsMsg_Create(&m, subject, NULL, NULL, 0);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "KV-Operation", "DEL");
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Nats-Expected-Last-Subject-Sequence", rev);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(q->nc, m);
    natsMsg_Destroy(m);
    if (s == NATS_OK)
        return IOT_OK;
    return queue_nats_error(q, err, s, 0, "releasing a lease");
}
