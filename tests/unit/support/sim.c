/* A simulator of a test group and its control API (see sim.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support/http.h"
#include "support/sim.h"
#include "support/spawn.h"

bool support_sim_init(struct support_sim *s, const char *dir_template)
{
    memset(s, 0, sizeof *s);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    snprintf(s->dir, sizeof s->dir, "%s", dir_template);
    if (!mkdtemp(s->dir)) {
        print_error("mkdtemp %s: %s\n", dir_template, strerror(errno));
        s->dir[0] = '\0';
        return false;
    }
    snprintf(s->portfile, sizeof s->portfile, "%s/port", s->dir);
    snprintf(s->log, sizeof s->log, "%s/sim.log", s->dir);
    s->curl = curl_easy_init();
    return s->curl != NULL;
}

unsigned support_sim_start(struct support_sim *s, char *const argv[], bool search_path,
                           const char *name)
{
    s->pid = support_spawn(argv, s->log, search_path);
    if (!s->pid)
        return 0;
    s->port = support_wait_port_file(&s->pid, name, s->portfile, s->log, 15000);
    return s->port;
}

void support_sim_cleanup(struct support_sim *s, const char *const extra[])
{
    support_stop(&s->pid);
    if (s->curl)
        curl_easy_cleanup(s->curl);
    s->curl = NULL;
    if (s->dir[0]) {
        unlink(s->portfile);
        unlink(s->log);
        for (size_t i = 0; extra && extra[i]; i++) {
            char p[256];
            snprintf(p, sizeof p, "%s/%s", s->dir, extra[i]);
            unlink(p);
        }
        if (rmdir(s->dir) != 0)
            print_error("could not remove %s: %s\n", s->dir, strerror(errno));
    }
    curl_global_cleanup();
}

long support_sim_call(struct support_sim *s, const char *method, const char *path, const char *body,
                      json_t **out)
{
    char url[1200];
    if (snprintf(url, sizeof url, "%s%s", s->base, path) >= (int)sizeof url)
        fail_msg("control path too long: %s", path);
    return support_http_json(s->curl, method, url, s->ca_file, body, out);
}

void support_sim_call_ok(struct support_sim *s, const char *method, const char *path,
                         const char *body)
{
    long st = support_sim_call(s, method, path, body, NULL);
    if (st < 200 || st > 299)
        fail_msg("control %s %s -> %ld", method, path, st);
}

json_t *support_sim_get_optional(struct support_sim *s, const char *path)
{
    json_t *j = NULL;
    long st = support_sim_call(s, "GET", path, NULL, &j);
    if (st == 404) {
        json_decref(j);
        return NULL;
    }
    assert_int_equal(st, 200);
    return j;
}

json_t *support_sim_requests(struct support_sim *s)
{
    json_t *j = NULL;
    assert_int_equal(support_sim_call(s, "GET", "/_sim/requests", NULL, &j), 200);
    json_t *arr = json_incref(json_object_get(j, "requests"));
    json_decref(j);
    assert_true(json_is_array(arr));
    return arr;
}
