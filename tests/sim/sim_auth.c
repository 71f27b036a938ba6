/* SAS token verification as the real hub does it (azure-iothub.md §1):
 * HMAC-SHA256 over the raw `sr` as transmitted + "\n" + se, keyed with the base64-decoded policy
 * (or device) key, primary then secondary; `sig` URL-decoded ('+' becomes a space, as in
 * WebUtility.UrlDecode) and base64-decoded, compared in constant time. */
#include "sim.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define SAS_PREFIX "SharedAccessSignature "

static void set_why(char *why, size_t n, const char *text)
{
    if (why && n) {
        snprintf(why, n, "%s", text);
    }
}

bool sim_sas_parse(const char *header, struct sim_sas *t, char *why, size_t why_len)
{
    memset(t, 0, sizeof *t);
    if (!header) {
        set_why(why, why_len, "no Authorization header");
        return false;
    }
    size_t plen = strlen(SAS_PREFIX);
    if (strncmp(header, SAS_PREFIX, plen) != 0) {
        set_why(why, why_len, "not a SharedAccessSignature");
        return false;
    }
    const char *p = header + plen;
    if (strchr(p, ' ')) {
        set_why(why, why_len, "extra spaces in token");
        return false;
    }
    bool have_sr = false, have_sig = false, have_se = false;
    while (*p) {
        const char *end = strchr(p, '&');
        size_t flen = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', flen);
        if (!eq || eq == p) {
            set_why(why, why_len, "malformed token field");
            return false;
        }
        size_t nlen = (size_t)(eq - p);
        const char *val = eq + 1;
        size_t vlen = flen - nlen - 1;
        /* Field names are case-insensitive to the C# parser. */
        if (nlen == 2 && strncasecmp(p, "sr", 2) == 0) {
            if (have_sr || vlen == 0 || vlen >= sizeof t->sr_raw) {
                set_why(why, why_len, "bad sr");
                return false;
            }
            memcpy(t->sr_raw, val, vlen);
            t->sr_raw[vlen] = '\0';
            if (!sim_url_decode(val, vlen, true, t->sr, sizeof t->sr)) {
                set_why(why, why_len, "bad sr");
                return false;
            }
            have_sr = true;
        } else if (nlen == 3 && strncasecmp(p, "sig", 3) == 0) {
            char sig[128];
            size_t got = 0;
            if (have_sig || vlen >= sizeof sig ||
                !sim_url_decode(val, vlen, true, sig, sizeof sig) ||
                !sim_b64_decode(sig, t->sig, sizeof t->sig, &got) || got != sizeof t->sig) {
                set_why(why, why_len, "sig is not a base64 HMAC-SHA256");
                return false;
            }
            have_sig = true;
        } else if (nlen == 2 && strncasecmp(p, "se", 2) == 0) {
            if (have_se || vlen >= sizeof t->se_raw ||
                !sim_url_decode(val, vlen, true, t->se_raw, sizeof t->se_raw) ||
                t->se_raw[0] == '\0') {
                set_why(why, why_len, "bad se");
                return false;
            }
            for (const char *c = t->se_raw; *c; c++) {
                if (!isdigit((unsigned char)*c)) {
                    set_why(why, why_len, "se is not an integer");
                    return false;
                }
            }
            if (strlen(t->se_raw) > 18) {
                set_why(why, why_len, "se out of range");
                return false;
            }
            t->se = strtoll(t->se_raw, NULL, 10);
            have_se = true;
        } else if (nlen == 3 && strncasecmp(p, "skn", 3) == 0) {
            if (t->has_skn || vlen == 0 ||
                !sim_url_decode(val, vlen, true, t->skn, sizeof t->skn)) {
                set_why(why, why_len, "bad skn");
                return false;
            }
            t->has_skn = true;
        }
        /* Unknown fields are ignored, as the SDK parsers do. */
        p = end ? end + 1 : p + flen;
    }
    if (!have_sr || !have_sig || !have_se) {
        set_why(why, why_len, "token lacks sr, sig or se");
        return false;
    }
    return true;
}

bool sim_sas_verify_key(const struct sim_sas *t, const struct sim_key *key)
{
    if (key->len == 0) {
        return false;
    }
    char msg[sizeof t->sr_raw + sizeof t->se_raw + 2];
    int mlen = snprintf(msg, sizeof msg, "%s\n%s", t->sr_raw, t->se_raw);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (mlen < 0 ||
        !HMAC(EVP_sha256(), key->raw, (int)key->len, (const unsigned char *)msg, (size_t)mlen, mac,
              &maclen) ||
        maclen != sizeof t->sig) {
        return false;
    }
    return CRYPTO_memcmp(mac, t->sig, sizeof t->sig) == 0;
}

bool sim_sas_fresh(const struct sim_sas *t, long skew_s)
{
    long long now = (long long)(sim_now_us() / 1000000);
    return now <= t->se + (long long)skew_s;
}

bool sim_sas_scope_ok(const struct sim_sas *t, const char *resource)
{
    size_t n = strlen(t->sr);
    while (n > 0 && t->sr[n - 1] == '/') {
        n--;
    }
    if (n == 0 || strlen(resource) < n || strncasecmp(resource, t->sr, n) != 0) {
        return false;
    }
    /* Prefix "by segment": host/a/b matches host/a/b/c but not host/a/bc. */
    return resource[n] == '\0' || resource[n] == '/';
}

bool sim_auth_service(const struct sim *s, const char *header, unsigned perms, const char *path,
                      char *who, size_t who_len, char *why, size_t why_len)
{
    struct sim_sas t;
    if (!sim_sas_parse(header, &t, why, why_len)) {
        return false;
    }
    if (!t.has_skn) {
        set_why(why, why_len, "token has no skn (device tokens cannot call the service API)");
        return false;
    }
    const struct sim_policy *pol = NULL;
    for (size_t i = 0; i < s->npolicies; i++) {
        if (strcmp(s->policies[i].name, t.skn) == 0) {
            pol = &s->policies[i];
            break;
        }
    }
    if (!pol) {
        set_why(why, why_len, "unknown policy");
        return false;
    }
    if (!sim_sas_verify_key(&t, &pol->primary) && !sim_sas_verify_key(&t, &pol->secondary)) {
        set_why(why, why_len, "signature mismatch");
        return false;
    }
    if (!sim_sas_fresh(&t, s->opt.token_skew_s)) {
        set_why(why, why_len, "token expired");
        return false;
    }
    char resource[SIM_HOST_MAX + 1024];
    snprintf(resource, sizeof resource, "%s%s", s->opt.hub_host, path);
    if (!sim_sas_scope_ok(&t, resource)) {
        set_why(why, why_len, "sr does not name this hub");
        return false;
    }
    if ((pol->perms & perms) != perms) {
        set_why(why, why_len, "policy lacks the permission for this route");
        return false;
    }
    snprintf(who, who_len, "%s", pol->name);
    return true;
}

static const struct {
    const char *name;
    unsigned bits;
} perm_names[] = {
    {"RegistryRead", SIM_PERM_REGISTRY_READ},
    {"RegistryWrite", SIM_PERM_REGISTRY_WRITE},
    {"RegistryReadWrite", SIM_PERM_REGISTRY_READ | SIM_PERM_REGISTRY_WRITE},
    {"ServiceConnect", SIM_PERM_SERVICE_CONNECT},
    {"DeviceConnect", 0}, /* accepted for realism; grants nothing on the service API */
};

bool sim_perms_parse(const char *text, unsigned *perms)
{
    *perms = 0;
    const char *p = text;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        bool found = false;
        for (size_t i = 0; i < sizeof perm_names / sizeof perm_names[0]; i++) {
            if (strlen(perm_names[i].name) == n && strncasecmp(perm_names[i].name, p, n) == 0) {
                *perms |= perm_names[i].bits;
                found = true;
                break;
            }
        }
        if (!found) {
            return false;
        }
        p = end ? end + 1 : p + n;
    }
    return true;
}

void sim_perms_format(unsigned perms, char *out, size_t n)
{
    out[0] = '\0';
    size_t used = 0;
    const char *names[] = {"RegistryRead", "RegistryWrite", "ServiceConnect"};
    const unsigned bits[] = {SIM_PERM_REGISTRY_READ, SIM_PERM_REGISTRY_WRITE,
                             SIM_PERM_SERVICE_CONNECT};
    for (size_t i = 0; i < 3; i++) {
        if (perms & bits[i]) {
            int w = snprintf(out + used, n - used, "%s%s", used ? "," : "", names[i]);
            if (w < 0 || (size_t)w >= n - used) {
                return;
            }
            used += (size_t)w;
        }
    }
}
