/*
 * upgrade: zero-downtime restart and binary upgrade on SIGUSR2 (issue 9). The sequence is
 * described at the top of upgrade.c. To upgrade: replace the binary file (install or mv a new
 * file over the path the server was started from; cp over a running binary fails with ETXTBSY)
 * and send SIGUSR2 to the serving process.
 *
 * Threads: every function here runs on the main thread (upgrade_init before any other thread
 * exists; the rest from app_serve's signal loop or start-up path).
 */
#ifndef TALLY_UPGRADE_H
#define TALLY_UPGRADE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Environment of the new process: the old process's PID and the readiness pipe's descriptor. */
#define UPGRADE_ENV_PARENT "TALLY_UPGRADE_PARENT"
#define UPGRADE_ENV_READY_FD "TALLY_UPGRADE_READY_FD"
/* How long the old process waits for "ready", and the new one for the data-directory lock. */
#define UPGRADE_READY_TIMEOUT_MS 30000
#define UPGRADE_LOCK_TIMEOUT_MS 60000

/*
 * Records the executable (/proc/self/exe now, before anyone can replace the file; argv[0]
 * resolved when that fails) and the arguments (argv must stay valid for the process's life, as
 * main's does). In a new process started by an upgrade, also takes the variables above out of
 * the environment (so its own children do not see them) and keeps the pipe close-on-exec.
 */
void upgrade_init(int argc, char **argv);

/* Whether this process was started by an upgrade and has not yet said ready or failed; the
 * old process's PID (0 when not started by an upgrade). */
bool upgrade_is_child(void);
pid_t upgrade_parent_pid(void);

/* New process: tells the old one it can stop (closes the pipe). No-op when not a child. */
void upgrade_child_ready(void);
/* New process: tells the old one why it will not take over (it keeps serving), printf-style,
 * and closes the pipe. No-op when not a child or after ready. */
void upgrade_child_failed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Old process, on SIGUSR2: finds the listening socket bound to `port`, starts the new process
 * (fork + exec of the recorded executable with the recorded arguments and --listen-fd N) and
 * waits up to timeout_ms for it to say ready. 0: ready, the caller now runs its normal graceful
 * stop. Otherwise a TALLY_E* code with the reason in why (the new process was reaped or
 * killed): the caller keeps serving.
 */
int upgrade_start(uint16_t port, uint32_t timeout_ms, char *why, size_t why_cap);

#endif
