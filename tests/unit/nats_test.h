/*
 * nats_test: starting throw-away nats-server processes on loopback for tests and benches
 * (test_jslog, test_cluster, bench/jslog_append). Header-only; one caller thread.
 *
 * A server: JetStream on, client port `port`, store in `dir`, name `name`; with n > 1
 * members it joins a cluster (`cluster` names it) over the members' route ports `cport`.
 * nats_srv_start returns once the client port accepts connections (up to 10 s); the caller
 * stops it by its PID (kill + waitpid). Its output goes to DIR/server.log.
 */
#ifndef TALLY_TESTS_NATS_TEST_H
#define TALLY_TESTS_NATS_TEST_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NATS_BIN "/usr/sbin/nats-server"
#define NATS_START_TIMEOUT_MS 10000

struct nats_srv {
    pid_t pid;
    int port, cport; /* client and cluster-route ports */
    char dir[512];
    char name[16];
};

/* A loopback TCP port free right now; -1 on error. */
static inline int nats_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

/* 1 when something accepts connections on 127.0.0.1:port. */
static inline int nats_port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

/* Starts s (port, cport, dir, name set); with n > 1 members of all[] as a cluster member.
 * 0 once it accepts clients (s->pid set even on timeout, so the caller can stop it), -1. */
static inline int nats_srv_start(struct nats_srv *s, const struct nats_srv *all, int n,
                                 const char *cluster)
{
    char port[16], cl[64], routes[512] = "", log[600];
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(cl, sizeof cl, "nats://127.0.0.1:%d", s->cport);
    for (int i = 0; i < n; i++) {
        if (&all[i] == s) continue;
        size_t l = strlen(routes);
        snprintf(routes + l, sizeof routes - l, "%snats://127.0.0.1:%d", l ? "," : "",
                 all[i].cport);
    }
    snprintf(log, sizeof log, "%s/server.log", s->dir);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        /* a test that dies (a crash, a timeout's kill) takes its servers with it */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        const char *argv[20];
        int k = 0;
        argv[k++] = NATS_BIN;
        argv[k++] = "-js";
        argv[k++] = "-a";
        argv[k++] = "127.0.0.1";
        argv[k++] = "-p";
        argv[k++] = port;
        argv[k++] = "-sd";
        argv[k++] = s->dir;
        argv[k++] = "-n";
        argv[k++] = s->name;
        if (n > 1) {
            argv[k++] = "--cluster_name";
            argv[k++] = cluster;
            argv[k++] = "--cluster";
            argv[k++] = cl;
            argv[k++] = "--routes";
            argv[k++] = routes;
        }
        argv[k] = NULL;
        execv(NATS_BIN, (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    for (int waited_ms = 0; waited_ms < NATS_START_TIMEOUT_MS; waited_ms += 20) {
        if (nats_port_accepts(s->port)) return 0;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return -1;
}

#endif
