#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "azure/hub_internal.h"
#include "iot-manager/sas.h"

#define TC_BUCKETS     256
#define TC_DEFAULT_MAX 4096

/* One token per (HostName, policy, key): a tenant who rotates the key or changes the policy gets
 * a new token at once, and the key itself is only kept as a digest. */
struct tc_entry {
    struct tc_entry *next;
    char host[HUB_HOST_MAX + 8];
    char policy[128];
    unsigned char key_digest[32];
    int64_t expiry; /* Unix seconds, the token's se */
    char token[SAS_TOKEN_MAX];
};

struct hub_token_cache {
    pthread_mutex_t mu;
    hub_sign_fn sign;
    size_t max_entries;
    size_t count;
    struct tc_entry *table[TC_BUCKETS];
};

enum iot_err hub_token_cache_new(size_t max_entries, hub_sign_fn sign, struct hub_token_cache **out)
{
    *out = NULL;
    struct hub_token_cache *tc = calloc(1, sizeof *tc);
    if (!tc)
        return IOT_ERR_NOMEM;
    if (pthread_mutex_init(&tc->mu, NULL) != 0) {
        free(tc);
        return IOT_ERR_INTERNAL;
    }
    tc->sign = sign ? sign : sas_token_for_connstr;
    tc->max_entries = max_entries ? max_entries : TC_DEFAULT_MAX;
    *out = tc;
    return IOT_OK;
}

static void tc_entry_free(struct tc_entry *e)
{
    OPENSSL_cleanse(e, sizeof *e);
    free(e);
}

void hub_token_cache_free(struct hub_token_cache *tc)
{
    if (!tc)
        return;
    for (size_t i = 0; i < TC_BUCKETS; i++) {
        struct tc_entry *e = tc->table[i];
        while (e) {
            struct tc_entry *next = e->next;
            tc_entry_free(e);
            e = next;
        }
    }
    pthread_mutex_destroy(&tc->mu);
    free(tc);
}

struct tc_key {
    const char *host;
    const char *policy;
    unsigned char digest[32];
    uint32_t hash;
};

static bool tc_make_key(const struct connstr *cs, struct tc_key *k)
{
    k->host = cs->hostname;
    k->policy = cs->name ? cs->name : "";
    if (!k->host || strlen(k->host) >= sizeof((struct tc_entry *)0)->host ||
        strlen(k->policy) >= sizeof((struct tc_entry *)0)->policy)
        return false;
    unsigned int dlen = 0;
    if (!EVP_Digest(cs->key, cs->key_len, k->digest, &dlen, EVP_sha256(), NULL) || dlen != 32)
        return false;
    uint32_t h = 2166136261u;
    for (const char *p = k->host; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    h = (h ^ 0xffu) * 16777619u;
    for (const char *p = k->policy; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    k->hash = h;
    return true;
}

static struct tc_entry **tc_find(struct hub_token_cache *tc, const struct tc_key *k)
{
    struct tc_entry **pp = &tc->table[k->hash % TC_BUCKETS];
    for (; *pp; pp = &(*pp)->next) {
        const struct tc_entry *e = *pp;
        if (strcmp(e->host, k->host) == 0 && strcmp(e->policy, k->policy) == 0 &&
            CRYPTO_memcmp(e->key_digest, k->digest, sizeof e->key_digest) == 0)
            return pp;
    }
    return pp;
}

static void tc_unlink(struct hub_token_cache *tc, struct tc_entry **pp)
{
    struct tc_entry *e = *pp;
    *pp = e->next;
    tc_entry_free(e);
    tc->count--;
}

/* Drops every token that needs renewing; if none does, the one closest to renewal. */
static void tc_evict(struct hub_token_cache *tc, int64_t now_s)
{
    struct tc_entry **soonest = NULL;
    for (size_t i = 0; i < TC_BUCKETS; i++) {
        struct tc_entry **pp = &tc->table[i];
        while (*pp) {
            if ((*pp)->expiry - HUB_TOKEN_RENEW_S <= now_s) {
                tc_unlink(tc, pp);
                continue;
            }
            if (!soonest || (*pp)->expiry < (*soonest)->expiry)
                soonest = pp;
            pp = &(*pp)->next;
        }
    }
    if (tc->count >= tc->max_entries && soonest)
        tc_unlink(tc, soonest);
}

enum iot_err hub_token_cache_get(struct hub_token_cache *tc, const struct connstr *cs,
                                 int64_t now_s, char *out, size_t cap, bool *signed_new,
                                 struct iot_error *err)
{
    if (signed_new)
        *signed_new = false;
    struct tc_key k;
    if (!cs->has_key || !tc_make_key(cs, &k))
        return iot_error_set(err, IOT_ERR_INVALID, "connection string cannot sign a token");

    enum iot_err rc = IOT_OK;
    pthread_mutex_lock(&tc->mu);
    struct tc_entry **pp = tc_find(tc, &k);
    struct tc_entry *e = *pp;
    /* Reused until HUB_TOKEN_RENEW_S before its expiry, so a token is never sent that could
     * expire in flight or be rejected by a hub clock that runs a little ahead. A token
     * "expiring" further ahead than its lifetime means our clock stepped back: re-sign. */
    if (e && (e->expiry - HUB_TOKEN_RENEW_S <= now_s || e->expiry > now_s + HUB_TOKEN_LIFETIME_S)) {
        tc_unlink(tc, pp);
        e = NULL;
    }
    if (!e) {
        if (tc->count >= tc->max_entries)
            tc_evict(tc, now_s);
        e = calloc(1, sizeof *e);
        if (!e) {
            rc = iot_error_set(err, IOT_ERR_NOMEM, "token cache: out of memory");
            goto out;
        }
        strcpy(e->host, k.host); /* lengths checked in tc_make_key */
        strcpy(e->policy, k.policy);
        memcpy(e->key_digest, k.digest, sizeof e->key_digest);
        e->expiry = now_s + HUB_TOKEN_LIFETIME_S;
        rc = tc->sign(cs, e->expiry, e->token, sizeof e->token, err);
        if (rc != IOT_OK) {
            tc_entry_free(e);
            goto out;
        }
        pp = &tc->table[k.hash % TC_BUCKETS];
        e->next = *pp;
        *pp = e;
        tc->count++;
        if (signed_new)
            *signed_new = true;
    }
    size_t len = strlen(e->token);
    if (len >= cap) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "token cache: output buffer too small");
        goto out;
    }
    memcpy(out, e->token, len + 1);
out:
    pthread_mutex_unlock(&tc->mu);
    OPENSSL_cleanse(k.digest, sizeof k.digest);
    return rc;
}

void hub_token_cache_invalidate(struct hub_token_cache *tc, const struct connstr *cs)
{
    struct tc_key k;
    if (!cs->has_key || !tc_make_key(cs, &k))
        return;
    pthread_mutex_lock(&tc->mu);
    struct tc_entry **pp = tc_find(tc, &k);
    if (*pp)
        tc_unlink(tc, pp);
    pthread_mutex_unlock(&tc->mu);
    OPENSSL_cleanse(k.digest, sizeof k.digest);
}

size_t hub_token_cache_count(struct hub_token_cache *tc)
{
    pthread_mutex_lock(&tc->mu);
    size_t n = tc->count;
    pthread_mutex_unlock(&tc->mu);
    return n;
}
