/*
 * bench/jslog_append: JetStream log (jslog.h) publish throughput and publish -> ack latency.
 *
 *   jslog_append [seconds_per_config=3]
 *
 * Starts its own nats-server processes on free loopback ports with store directories under
 * $BENCH_DIR (default: the current directory), kills them at the end: a single server with R1
 * streams, then a 3-node cluster with R3 streams (all on this machine: the three servers share
 * its cores with the bench). 200-byte records, 4 partitions round-robin, one producer thread
 * with one record per append (as a one-event HTTP request) and up to WINDOW records in flight;
 * latency is append() -> done(0) per record (at saturation it is mostly queueing: WINDOW /
 * throughput). Then MID_WINDOW records in flight (moderate load), then one (an idle log).
 * Without /usr/sbin/nats-server it prints `bench=jslog_append status=skipped`. One line:
 *   bench=jslog_append record_bytes=200 partitions=4 window=W
 *     r1_records_per_s r1_p50_us r1_p99_us  r1_w64_records_per_s r1_w64_p50_us r1_w64_p99_us
 *     r1_idle_p50_us r1_idle_p99_us  (and the same for r3_*)
 */
#include "log/jslog.h"
#include "tally/error.h"
#include "../tests/unit/nats_test.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RECORD_BYTES 200
#define PARTITIONS 4
#define WINDOW 2048
#define MID_WINDOW 64      /* e.g. 64 concurrent one-event requests */
#define LAT_MAX (8u << 20) /* latency samples kept per phase */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------------ servers */

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void srv_stop(struct nats_srv *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
    }
    s->pid = 0;
    nftw(s->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ------------------------------------------------------------------ load */

struct slot {
    int64_t t0_us;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic int inflight;
    _Atomic int waiting;
    _Atomic uint64_t done, errors;
    uint32_t *lat_us;
    _Atomic uint64_t nlat;
    struct slot slots[WINDOW];
    _Atomic int free_top;
    int free_list[WINDOW];
} B;

static void on_done(void *arg, int err, uint64_t first)
{
    (void)first;
    struct slot *s = arg;
    int64_t us = now_us() - s->t0_us;
    if (err) atomic_fetch_add(&B.errors, 1);
    uint64_t i = atomic_fetch_add(&B.nlat, 1);
    if (!err && i < LAT_MAX) B.lat_us[i] = (uint32_t)(us > UINT32_MAX ? UINT32_MAX : us);
    pthread_mutex_lock(&B.mu);
    B.free_list[B.free_top++] = (int)(s - B.slots);
    atomic_fetch_sub(&B.inflight, 1);
    atomic_fetch_add(&B.done, 1);
    if (atomic_load(&B.waiting)) pthread_cond_signal(&B.cv);
    pthread_mutex_unlock(&B.mu);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

struct result {
    double records_per_s;
    uint32_t p50_us, p99_us;
};

/* Appends for `seconds` keeping up to window records in flight. */
static int run_phase(struct evlog *sink, int window, double seconds, struct result *res)
{
    static char data[RECORD_BYTES];
    for (int i = 0; i < RECORD_BYTES; i++)
        data[i] = (char)('a' + i % 26);
    atomic_store(&B.nlat, 0);
    atomic_store(&B.done, 0);
    atomic_store(&B.errors, 0);
    B.free_top = 0;
    for (int i = 0; i < WINDOW; i++)
        B.free_list[B.free_top++] = i;
    int64_t t0 = now_us(), end = t0 + (int64_t)(seconds * 1e6);
    uint64_t sent = 0;
    uint32_t part = 0;
    while (now_us() < end) {
        pthread_mutex_lock(&B.mu);
        while (atomic_load(&B.inflight) >= window) {
            atomic_store(&B.waiting, 1);
            pthread_cond_wait(&B.cv, &B.mu);
            atomic_store(&B.waiting, 0);
        }
        int k = B.free_list[--B.free_top];
        atomic_fetch_add(&B.inflight, 1);
        pthread_mutex_unlock(&B.mu);
        struct slot *s = &B.slots[k];
        struct seglog_rec rec = {data, RECORD_BYTES, (int64_t)sent};
        uint32_t p = part++ % PARTITIONS;
        s->t0_us = now_us();
        int rc = evlog_append(sink, &rec, &p, 1, on_done, s);
        if (rc) {
            pthread_mutex_lock(&B.mu);
            B.free_list[B.free_top++] = k;
            atomic_fetch_sub(&B.inflight, 1);
            pthread_mutex_unlock(&B.mu);
            if (rc != TALLY_EFULL) {
                fprintf(stderr, "jslog_append: append: %s\n", tally_strerror(rc));
                return rc;
            }
            usleep(100);
            continue;
        }
        sent++;
    }
    while (atomic_load(&B.inflight) > 0)
        usleep(1000);
    int64_t el = now_us() - t0;
    uint64_t n = atomic_load(&B.nlat);
    if (n > LAT_MAX) n = LAT_MAX;
    qsort(B.lat_us, n, sizeof *B.lat_us, cmp_u32);
    res->records_per_s = (double)atomic_load(&B.done) * 1e6 / (double)el;
    res->p50_us = n ? B.lat_us[n / 2] : 0;
    res->p99_us = n ? B.lat_us[n * 99 / 100] : 0;
    if (atomic_load(&B.errors)) {
        fprintf(stderr, "jslog_append: %llu errors\n", (unsigned long long)B.errors);
        return TALLY_EIO;
    }
    return 0;
}

static int run_config(int nodes, double seconds, const char *base, struct result *sat,
                      struct result *mid, struct result *idle)
{
    struct nats_srv s[3];
    const char *urls[3];
    char ub[3][64];
    memset(s, 0, sizeof s);
    int rc = 0;
    for (int i = 0; i < nodes; i++) {
        s[i].port = nats_free_port();
        s[i].cport = nats_free_port();
        snprintf(s[i].name, sizeof s[i].name, "b%d", i);
        snprintf(s[i].dir, sizeof s[i].dir, "%s/jslog-bench-XXXXXX", base);
        if (!mkdtemp(s[i].dir)) return TALLY_EIO;
        snprintf(ub[i], sizeof ub[i], "nats://127.0.0.1:%d", s[i].port);
        urls[i] = ub[i];
    }
    for (int i = 0; i < nodes && !rc; i++)
        if (nats_srv_start(&s[i], s, nodes, "bench") != 0) rc = TALLY_EIO;
    struct jslog *js = NULL;
    char err[256] = "";
    if (!rc) {
        struct jslog_options o;
        memset(&o, 0, sizeof o);
        o.urls = urls;
        o.url_count = nodes;
        o.prefix = "BENCH";
        o.node = "bench";
        o.partitions = PARTITIONS;
        o.replicas = (uint32_t)nodes;
        o.publish_timeout_ms = 5000;
        o.pending_max = 65536;
        o.connect_timeout_ms = 30000;
        rc = jslog_open(&o, &js, err);
        if (rc) fprintf(stderr, "jslog_append: open: %s %s\n", tally_strerror(rc), err);
    }
    if (!rc) {
        struct evlog sink;
        jslog_sink(js, &sink);
        struct result warm;
        rc = run_phase(&sink, WINDOW, 0.5, &warm);
        if (!rc) rc = run_phase(&sink, WINDOW, seconds, sat);
        if (!rc) rc = run_phase(&sink, MID_WINDOW, seconds / 2, mid);
        if (!rc) rc = run_phase(&sink, 1, seconds / 2, idle);
    }
    jslog_close(js);
    for (int i = 0; i < nodes; i++)
        srv_stop(&s[i]);
    return rc;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 3;
    if (seconds <= 0) seconds = 3;
    if (access(NATS_BIN, X_OK) != 0) {
        printf("bench=jslog_append status=skipped reason=no_nats_server\n");
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    const char *base = getenv("BENCH_DIR");
    if (!base || !base[0]) base = ".";
    pthread_mutex_init(&B.mu, NULL);
    pthread_cond_init(&B.cv, NULL);
    B.lat_us = malloc(LAT_MAX * sizeof *B.lat_us);
    if (!B.lat_us) return 1;
    struct result r1, r1m, r1i, r3, r3m, r3i;
    int rc = run_config(1, seconds, base, &r1, &r1m, &r1i);
    if (!rc) rc = run_config(3, seconds, base, &r3, &r3m, &r3i);
    if (rc) {
        printf("bench=jslog_append status=failed rc=%d\n", rc);
        return 1;
    }
    printf("bench=jslog_append record_bytes=%d partitions=%d window=%d "
           "r1_records_per_s=%.0f r1_p50_us=%u r1_p99_us=%u "
           "r1_w%d_records_per_s=%.0f r1_w%d_p50_us=%u r1_w%d_p99_us=%u "
           "r1_idle_p50_us=%u r1_idle_p99_us=%u "
           "r3_records_per_s=%.0f r3_p50_us=%u r3_p99_us=%u "
           "r3_w%d_records_per_s=%.0f r3_w%d_p50_us=%u r3_w%d_p99_us=%u "
           "r3_idle_p50_us=%u r3_idle_p99_us=%u\n",
           RECORD_BYTES, PARTITIONS, WINDOW, r1.records_per_s, r1.p50_us, r1.p99_us, MID_WINDOW,
           r1m.records_per_s, MID_WINDOW, r1m.p50_us, MID_WINDOW, r1m.p99_us, r1i.p50_us,
           r1i.p99_us, r3.records_per_s, r3.p50_us, r3.p99_us, MID_WINDOW, r3m.records_per_s,
           MID_WINDOW, r3m.p50_us, MID_WINDOW, r3m.p99_us, r3i.p50_us, r3i.p99_us);
    free(B.lat_us);
    return 0;
}
