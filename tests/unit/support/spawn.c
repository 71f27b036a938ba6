/* Child processes of the unit tests (see spawn.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "support/spawn.h"

extern char **environ;

const char *support_env_or(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

int64_t support_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void support_sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void support_dump_log(const char *log)
{
    FILE *fp = fopen(log, "r");
    if (!fp)
        return;
    char line[512];
    while (fgets(line, sizeof line, fp))
        print_error("  | %s", line);
    fclose(fp);
}

pid_t support_spawn(char *const argv[], const char *log, bool search_path)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    pid_t pid = 0;
    int rc = search_path ? posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ)
                         : posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        print_error("cannot spawn %s: %s\n", argv[0], strerror(rc));
        return 0;
    }
    return pid;
}

int support_run(char *const argv[], const char *log)
{
    pid_t pid = support_spawn(argv, log, false);
    if (pid <= 0)
        return -1;
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

unsigned support_wait_port_file(pid_t *pid, const char *name, const char *port_file,
                                const char *log, long timeout_ms)
{
    for (int64_t deadline = support_now_ms() + timeout_ms; support_now_ms() < deadline;
         support_sleep_ms(20)) {
        int status;
        if (waitpid(*pid, &status, WNOHANG) == *pid) {
            *pid = 0;
            print_error("%s exited early\n", name);
            support_dump_log(log);
            return 0;
        }
        FILE *fp = fopen(port_file, "r");
        unsigned port = 0;
        if (fp) {
            char nl = 0;
            int got = fscanf(fp, "%u%c", &port, &nl);
            fclose(fp);
            /* The newline says the write is complete, not a prefix of the number. */
            if (got == 2 && nl == '\n' && port > 0)
                return port;
        }
    }
    print_error("%s did not write its port file\n", name);
    support_dump_log(log);
    return 0;
}

void support_stop(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    int status;
    waitpid(*pid, &status, 0);
    *pid = 0;
}
