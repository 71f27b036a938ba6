/* The /_sim/ control API for tests (plain JSON, no auth: a loopback test tool only). */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void control_error(struct sim_reply *r, unsigned status, const char *text)
{
    sim_reply_json(r, status, json_pack("{s:s}", "error", text));
}

void sim_reset(struct sim *s)
{
    pthread_rwlock_wrlock(&s->reg.lock);
    sim_registry_clear(&s->reg);
    pthread_rwlock_unlock(&s->reg.lock);
    sim_reqlog_clear(&s->log);
    sim_faults_clear(&s->faults);
    sim_stats_reset(&s->stats);
    sim_throttle_refill(&s->throttle);
}

static json_t *config_json(struct sim *s)
{
    json_t *t = sim_throttle_json(&s->throttle);
    json_t *out = json_pack("{s:I, s:O, s:O, s:s, s:I, s:b}", "latency_ms",
                            (json_int_t)atomic_load(&s->global_latency_ms), "throttle",
                            json_object_get(t, "enabled"), "quotas", json_object_get(t, "quotas"),
                            "hub_host", s->opt.hub_host, "token_skew_s",
                            (json_int_t)s->opt.token_skew_s, "twin_arrays", s->opt.twin_arrays);
    json_decref(t);
    return out;
}

static bool quota_key(const char *k, enum sim_tclass *c)
{
    static const struct {
        const char *name;
        enum sim_tclass c;
    } keys[] = {
        {"registry_per_min", SIM_TCLASS_REGISTRY},
        {"queries_per_min", SIM_TCLASS_QUERY},
        {"twin_reads_per_s", SIM_TCLASS_TWIN_READ},
        {"twin_updates_per_s", SIM_TCLASS_TWIN_UPDATE},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (strcmp(k, keys[i].name) == 0) {
            *c = keys[i].c;
            return true;
        }
    }
    return false;
}

/* Validates everything first, then applies: a bad body changes nothing. */
static void control_config(struct sim *s, json_t *body, struct sim_reply *r)
{
    if (!json_is_object(body)) {
        control_error(r, 400, "body must be a JSON object");
        return;
    }
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v)
    {
        if (strcmp(k, "latency_ms") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > 600000) {
                control_error(r, 400, "latency_ms must be an integer in [0, 600000]");
                return;
            }
        } else if (strcmp(k, "throttle") == 0) {
            if (!json_is_boolean(v)) {
                control_error(r, 400, "throttle must be a boolean");
                return;
            }
        } else if (strcmp(k, "quotas") == 0) {
            if (!json_is_object(v)) {
                control_error(r, 400, "quotas must be an object");
                return;
            }
            const char *qk;
            json_t *qv;
            json_object_foreach(v, qk, qv)
            {
                enum sim_tclass c;
                if (!quota_key(qk, &c)) {
                    control_error(r, 400,
                                  "unknown quota (registry_per_min, queries_per_min, "
                                  "twin_reads_per_s, twin_updates_per_s)");
                    return;
                }
                if (!json_is_integer(qv) || json_integer_value(qv) < 1 ||
                    json_integer_value(qv) > 100000000) {
                    control_error(r, 400, "quotas must be positive integers");
                    return;
                }
            }
        } else {
            control_error(r, 400, "unknown config key (latency_ms, throttle, quotas)");
            return;
        }
    }
    json_object_foreach(body, k, v)
    {
        if (strcmp(k, "latency_ms") == 0) {
            atomic_store(&s->global_latency_ms, (long)json_integer_value(v));
        } else if (strcmp(k, "quotas") == 0) {
            const char *qk;
            json_t *qv;
            json_object_foreach(v, qk, qv)
            {
                enum sim_tclass c = SIM_TCLASS_REGISTRY;
                quota_key(qk, &c); /* validated above */
                sim_throttle_set_quota(&s->throttle, c, (long)json_integer_value(qv));
            }
        }
    }
    json_t *t = json_object_get(body, "throttle");
    if (t) {
        sim_throttle_enable(&s->throttle, json_is_true(t));
    }
    sim_reply_json(r, 200, config_json(s));
}

static uint64_t query_since(const char *query)
{
    const char *p = query;
    while (p && *p) {
        if (strncmp(p, "since=", 6) == 0) {
            return strtoull(p + 6, NULL, 10);
        }
        p = strchr(p, '&');
        p = p ? p + 1 : NULL;
    }
    return 0;
}

void sim_control(struct sim *s, const char *method, char **segs, size_t nsegs, const char *query,
                 const char *body, size_t len, struct sim_reply *r)
{
    const char *what = nsegs > 0 ? segs[0] : "";
    bool get = strcmp(method, "GET") == 0;
    bool post = strcmp(method, "POST") == 0;
    json_t *j = NULL;
    if (post || strcmp(method, "PATCH") == 0) {
        json_error_t jerr;
        j = len ? json_loadb(body, len, 0, &jerr) : json_object();
        if (!j) {
            control_error(r, 400, "malformed JSON body");
            return;
        }
    }
    if (strcmp(what, "devices") == 0 && nsegs == 1 && get) {
        sim_reply_json(r, 200, sim_registry_dump_all(s));
    } else if (strcmp(what, "devices") == 0 && nsegs == 2 && get) {
        json_t *one = sim_registry_dump_one(s, segs[1]);
        if (one) {
            sim_reply_json(r, 200, one);
        } else {
            control_error(r, 404, "no such device");
        }
    } else if (strcmp(what, "devices") == 0 && nsegs == 3 && strcmp(segs[2], "reported") == 0 &&
               j) {
        sim_control_reported(s, segs[1], body, len, r);
    } else if (strcmp(what, "requests") == 0 && nsegs == 1 && get) {
        sim_reply_json(r, 200, sim_reqlog_json(&s->log, query_since(query)));
    } else if (strcmp(what, "faults") == 0 && nsegs == 1 && post) {
        char why[160];
        long id = 0;
        if (sim_faults_add(&s->faults, j, &id, why, sizeof why)) {
            sim_reply_json(r, 200, json_pack("{s:I}", "id", (json_int_t)id));
        } else {
            control_error(r, 400, why);
        }
    } else if (strcmp(what, "faults") == 0 && nsegs == 1 && strcmp(method, "DELETE") == 0) {
        sim_faults_clear(&s->faults);
        sim_reply_json(r, 200, json_pack("{s:[]}", "faults"));
    } else if (strcmp(what, "faults") == 0 && nsegs == 1 && get) {
        sim_reply_json(r, 200, json_pack("{s:o}", "faults", sim_faults_json(&s->faults)));
    } else if (strcmp(what, "config") == 0 && nsegs == 1 && post) {
        control_config(s, j, r);
    } else if (strcmp(what, "config") == 0 && nsegs == 1 && get) {
        sim_reply_json(r, 200, config_json(s));
    } else if (strcmp(what, "reset") == 0 && nsegs == 1 && post) {
        sim_reset(s);
        sim_reply_json(r, 200, json_pack("{s:b}", "reset", 1));
    } else if (strcmp(what, "stats") == 0 && nsegs == 1 && get) {
        sim_reply_json(r, 200, sim_stats_json(s));
    } else {
        control_error(r, 404, "unknown control route");
    }
    json_decref(j);
}
