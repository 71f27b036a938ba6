/* A simulator the unit tests spawn for a test group (tests/sim: iothub-sim, mender_sim.py), and
 * calls to its control API (the "/_sim/..." paths both serve: faults, resets, request logs, the
 * simulated state).
 *
 * Part of tests/unit/support; a test using it must link libcurl and jansson itself (through the
 * layer it tests). Messages go through cmocka's print_error. */
#ifndef IOTM_TEST_SUPPORT_SIM_H
#define IOTM_TEST_SUPPORT_SIM_H

#include <stdbool.h>
#include <sys/types.h>

#include <curl/curl.h>
#include <jansson.h>

struct support_sim {
    pid_t pid;
    char dir[64];        /* made for the simulator's files */
    char portfile[128];  /* dir/port, for --port-file */
    char log[128];       /* dir/sim.log, its stdout and stderr */
    unsigned port;       /* once started */
    char base[96];       /* the control API's "scheme://host:port", set by the caller */
    const char *ca_file; /* borrowed: the CA the control calls trust; NULL: the system's */
    CURL *curl;          /* the control client */
};

/* Ignores SIGPIPE, initialises libcurl, makes s->dir from `dir_template` (mkdtemp's, ending in
 * XXXXXX) with the names in it, and the control client. False after printing why; either way
 * support_sim_cleanup() undoes it. */
bool support_sim_init(struct support_sim *s, const char *dir_template);

/* Spawns argv (see support_spawn) and waits up to 15 s for its port file: the port, also in
 * s->port, or 0 after printing why and the log. `name` names it in messages. */
unsigned support_sim_start(struct support_sim *s, char *const argv[], bool search_path,
                           const char *name);

/* Stops the simulator, frees the client, removes s->dir with the port file, the log and the
 * files named in `extra` (NULL-terminated, NULL for none), and cleans libcurl up. */
void support_sim_cleanup(struct support_sim *s, const char *const extra[]);

/* Calls `method` s->base + `path` with the JSON `body` (NULL: none): the HTTP status (0 when the
 * call failed) and, with `out`, the parsed answer (see support_http_json). */
long support_sim_call(struct support_sim *s, const char *method, const char *path, const char *body,
                      json_t **out);

/* support_sim_call() that fails the test unless the status is 2xx. */
void support_sim_call_ok(struct support_sim *s, const char *method, const char *path,
                         const char *body);

/* GET `path`: the JSON answer (new reference) on 200, NULL on 404; anything else fails. */
json_t *support_sim_get_optional(struct support_sim *s, const char *path);

/* The service requests the simulator logged since its last reset (new reference: an array). */
json_t *support_sim_requests(struct support_sim *s);

#endif
