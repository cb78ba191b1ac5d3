/*
 * upgrade: zero-downtime restart and binary upgrade driven by SIGUSR2.
 *
 * SEQUENCE. Old process O (serving, holding DATA_DIR/LOCK), new process N:
 *   1. O gets SIGUSR2 on its main thread. It finds its listening socket (the one socket in the
 *      process that listens on the served port), makes a pipe, and forks. The fork child clears
 *      FD_CLOEXEC on the listening socket and on the pipe's write end (in the child only: O's
 *      own later children never inherit them), unblocks signals, and execs the executable
 *      recorded at start (/proc/self/exe then: the path, so a file moved over it since is what
 *      runs) with O's arguments plus `--listen-fd N`, and TALLY_UPGRADE_PARENT=<O's pid>,
 *      TALLY_UPGRADE_READY_FD=<pipe> in the environment. O keeps serving meanwhile.
 *   2. N parses and validates its configuration, loads the enrichment data, and checks that the
 *      inherited descriptor is a listening TCP socket. Any failure: N writes "E <reason>" on the
 *      pipe and exits; O logs the reason and keeps serving (a failed exec, a crash or 30 s of
 *      silence are failures too; O kills and reaps N then).
 *   3. N writes "R" on the pipe and closes it, then waits for DATA_DIR/LOCK (up to 60 s).
 *   4. O, told ready, runs its normal graceful stop (server.c): it stops accepting — the socket
 *      stays open in N, so new connections wait in its kernel backlog and are never refused —
 *      drains in-flight requests, closes the log and the store, releases the lock, exits 0.
 *   5. N takes the lock (writing its PID into LOCK), opens the log and the store, and starts
 *      accepting: the waiting connections are served first.
 * The pause clients see is step 4's drain plus step 5's opening. A failure of N after step 3
 * (the store cannot open, say) is not recoverable by O, which is stopping: every check that can
 * be made without the data directory is made before "ready" for that reason.
 *
 * PIPE PROTOCOL: N writes exactly one message, "R\n" or "E <reason>\n", and closes. End of file
 * without "R" is a failure.
 */
#include "app/upgrade.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tally/error.h"

extern char **environ;

#define ARGS_MAX 256
#define ENV_MAX 4096

static char g_exe[PATH_MAX];
static int g_argc;
static char **g_argv;
static pid_t g_parent;
static int g_ready_fd = -1;

static void resolve_exe(const char *argv0)
{
    ssize_t n = readlink("/proc/self/exe", g_exe, sizeof g_exe - 1);
    if (n > 0) {
        g_exe[n] = 0;
        return;
    }
    if (argv0 && realpath(argv0, g_exe)) return;
    snprintf(g_exe, sizeof g_exe, "%s", argv0 ? argv0 : "tally");
}

void upgrade_init(int argc, char **argv)
{
    g_argc = argc;
    g_argv = argv;
    resolve_exe(argc > 0 ? argv[0] : NULL);
    const char *p = getenv(UPGRADE_ENV_PARENT), *f = getenv(UPGRADE_ENV_READY_FD);
    if (p && f) {
        char *end;
        long fd = strtol(f, &end, 10);
        if (!*end && fd > 2 && fd < 65536 && fcntl((int)fd, F_SETFD, FD_CLOEXEC) == 0) {
            g_ready_fd = (int)fd;
            g_parent = (pid_t)strtol(p, NULL, 10);
        }
    }
    unsetenv(UPGRADE_ENV_PARENT);
    unsetenv(UPGRADE_ENV_READY_FD);
}

bool upgrade_is_child(void)
{
    return g_ready_fd >= 0;
}

pid_t upgrade_parent_pid(void)
{
    return g_parent;
}

static void child_send(const char *msg, size_t len)
{
    if (g_ready_fd < 0) return;
    while (len > 0) {
        ssize_t n = write(g_ready_fd, msg, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        msg += n;
        len -= (size_t)n;
    }
    close(g_ready_fd);
    g_ready_fd = -1;
}

void upgrade_child_ready(void)
{
    child_send("R\n", 2);
}

void upgrade_child_failed(const char *fmt, ...)
{
    char msg[512] = "E ";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + 2, sizeof msg - 3, fmt, ap);
    va_end(ap);
    size_t len = strlen(msg);
    msg[len++] = '\n';
    child_send(msg, len);
}

/* ---------------------------------------------------------------- old process */

static bool listens_on(int fd, uint16_t port)
{
    int acc = 0;
    socklen_t al = sizeof acc;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) != 0 || !acc) return false;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) return false;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port) == port;
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port) == port;
    return false;
}

/* The HTTP server does not export its descriptor; the process has one listening TCP socket on
 * the served port, so it is found by looking. -1 when none. */
static int find_listener(uint16_t port)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int found = -1;
    struct dirent *e;
    while (found < 0 && (e = readdir(d))) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end || e->d_name[0] == 0 || fd == dirfd(d)) continue;
        if (listens_on((int)fd, port)) found = (int)fd;
    }
    closedir(d);
    return found;
}

/* argv for the new process: ours without any --listen-fd, then --listen-fd N. */
static int build_argv(char **out, char *fd_text)
{
    int n = 0;
    for (int i = 0; i < g_argc && n < ARGS_MAX - 3; i++) {
        if (i > 0 && !strcmp(g_argv[i], "--listen-fd") && i + 1 < g_argc) {
            i++;
            continue;
        }
        out[n++] = g_argv[i];
    }
    if (n >= ARGS_MAX - 3) return TALLY_ETOOBIG;
    out[n++] = "--listen-fd";
    out[n++] = fd_text;
    out[n] = NULL;
    return 0;
}

static bool env_is_ours(const char *kv)
{
    size_t a = strlen(UPGRADE_ENV_PARENT), b = strlen(UPGRADE_ENV_READY_FD);
    return (!strncmp(kv, UPGRADE_ENV_PARENT, a) && kv[a] == '=') ||
           (!strncmp(kv, UPGRADE_ENV_READY_FD, b) && kv[b] == '=');
}

static int build_env(char **out, char *parent_kv, char *fd_kv)
{
    int n = 0;
    for (char **e = environ; e && *e; e++) {
        if (env_is_ours(*e)) continue;
        if (n >= ENV_MAX - 3) return TALLY_ETOOBIG;
        out[n++] = *e;
    }
    out[n++] = parent_kv;
    out[n++] = fd_kv;
    out[n] = NULL;
    return 0;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads the new process's one message (or end of file) until the deadline. Returns 1 for
 * ready, 0 for a failure (reason in why), -1 on timeout. */
static int read_verdict(int rfd, uint32_t timeout_ms, char *why, size_t why_cap)
{
    char buf[512];
    size_t len = 0;
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) return -1;
        struct pollfd p = {.fd = rfd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        ssize_t n = read(rfd, buf + len, sizeof buf - 1 - len);
        if (n < 0 && errno == EINTR) continue;
        if (n > 0) len += (size_t)n;
        buf[len] = 0;
        if (len > 0 && buf[0] == 'R') return 1;
        if (n <= 0 || len == sizeof buf - 1 || memchr(buf, '\n', len)) {
            char *nl = strchr(buf, '\n');
            if (nl) *nl = 0;
            snprintf(why, why_cap, "%s", len > 2 && buf[0] == 'E' ? buf + 2 : "");
            return 0;
        }
    }
}

/* why = "REASON (new process P exited with status S)", or the parenthesis alone. */
static void describe_exit(pid_t pid, int status, char *why, size_t why_cap)
{
    char reason[512], tail[128];
    snprintf(reason, sizeof reason, "%s", why);
    if (WIFEXITED(status))
        snprintf(tail, sizeof tail, "new process %ld exited with status %d", (long)pid,
                 WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(tail, sizeof tail, "new process %ld died of signal %d", (long)pid,
                 WTERMSIG(status));
    else
        snprintf(tail, sizeof tail, "new process %ld failed", (long)pid);
    if (reason[0])
        snprintf(why, why_cap, "%s (%s)", reason, tail);
    else
        snprintf(why, why_cap, "%s before it was ready", tail);
}

int upgrade_start(uint16_t port, uint32_t timeout_ms, char *why, size_t why_cap)
{
    why[0] = 0;
    int lfd = find_listener(port);
    if (lfd < 0) {
        snprintf(why, why_cap, "no listening socket on port %u found", (unsigned)port);
        return TALLY_ENOENT;
    }
    static char *argv[ARGS_MAX], *envp[ENV_MAX];
    char fd_text[16], parent_kv[64], fd_kv[64], exec_err[PATH_MAX + 64];
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        snprintf(why, why_cap, "pipe: %s", strerror(errno));
        return TALLY_EIO;
    }
    snprintf(fd_text, sizeof fd_text, "%d", lfd);
    snprintf(parent_kv, sizeof parent_kv, "%s=%ld", UPGRADE_ENV_PARENT, (long)getpid());
    snprintf(fd_kv, sizeof fd_kv, "%s=%d", UPGRADE_ENV_READY_FD, pipefd[1]);
    int elen = snprintf(exec_err, sizeof exec_err, "E cannot execute %s\n", g_exe);
    if (elen < 0 || (size_t)elen >= sizeof exec_err) elen = (int)sizeof exec_err - 1;
    if (build_argv(argv, fd_text) != 0 || build_env(envp, parent_kv, fd_kv) != 0) {
        close(pipefd[0]);
        close(pipefd[1]);
        snprintf(why, why_cap, "too many arguments or environment variables");
        return TALLY_ETOOBIG;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(pipefd[0]);
        close(pipefd[1]);
        snprintf(why, why_cap, "fork: %s", strerror(errno));
        return TALLY_EIO;
    }
    if (pid == 0) { /* async-signal-safe calls only until exec */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (fcntl(lfd, F_SETFD, 0) == 0 && fcntl(pipefd[1], F_SETFD, 0) == 0)
            execve(g_exe, argv, envp);
        ssize_t w = write(pipefd[1], exec_err, (size_t)elen);
        (void)w;
        _exit(127);
    }
    close(pipefd[1]);
    int v = read_verdict(pipefd[0], timeout_ms, why, why_cap);
    close(pipefd[0]);
    if (v == 1) return 0;
    if (v < 0) {
        snprintf(why, why_cap, "new process %ld not ready after %u ms; killed", (long)pid,
                 (unsigned)timeout_ms);
        kill(pid, SIGKILL);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (v == 0) describe_exit(pid, status, why, why_cap);
    return v < 0 ? TALLY_ETIMEDOUT : TALLY_EINVAL;
}
