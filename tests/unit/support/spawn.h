/* Child processes of the unit tests: a simulator spawned for a test group (it announces its
 * listening port in a file), helpers run to completion, both with stdout and stderr appended to
 * a log that is printed when something goes wrong; and the clock helpers the tests time with.
 *
 * Part of tests/unit/support (the iotm_test_support library every unit test links; only what a
 * test uses is linked in). Messages go through cmocka's print_error. */
#ifndef IOTM_TEST_SUPPORT_SPAWN_H
#define IOTM_TEST_SUPPORT_SPAWN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* The environment variable `name` when it is set and not empty, else `fallback`. */
const char *support_env_or(const char *name, const char *fallback);

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t support_now_ms(void);

/* Sleeps `ms` milliseconds, resuming after signals. */
void support_sleep_ms(long ms);

/* Starts argv[0] (looked up in PATH when `search_path`) with the caller's environment and its
 * stdout and stderr appended to `log`. Returns its pid, or 0 after printing why not. */
pid_t support_spawn(char *const argv[], const char *log, bool search_path);

/* Runs argv[0] like support_spawn() and waits for it. Its exit status, or -1. */
int support_run(char *const argv[], const char *log);

/* Waits up to `timeout_ms` for the child *pid to write its port to `port_file` as "<port>\n".
 * Returns the port; 0 when the child exited first (then *pid is set to 0) or time ran out, after
 * printing why and the log. `name` names the child in messages. */
unsigned support_wait_port_file(pid_t *pid, const char *name, const char *port_file,
                                const char *log, long timeout_ms);

/* Stops the child *pid (SIGTERM) and reaps it; *pid becomes 0. Nothing when *pid <= 0. */
void support_stop(pid_t *pid);

/* Prints the log file, one "  | " line per line (nothing when it cannot be read). */
void support_dump_log(const char *log);

#endif
