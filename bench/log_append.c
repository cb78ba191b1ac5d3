/*
 * bench/log_append: seglog append throughput and latency under group commit, fsync `always`.
 *
 *   log_append [seconds_per_config=3] [only=PRODUCERS:DATA]
 *
 * 200-byte records, either JSON-ish event text (compressible) or random bytes (incompressible),
 * from 1, 8 and 64 producer threads; each producer keeps up to 256 appends in flight and learns
 * of completions through its callback (an atomic counter; the producer sleeps on a futex only
 * when its window is full and is woken in bulk when half of it has drained). The log lives in a
 * temporary directory under $BENCH_DIR (default: the current directory), on the same disk as the
 * raw baselines, measured right before each configuration:
 *   raw_seq_write_mb_per_s  256 MiB as 1 MiB writes + one fdatasync
 *   raw_fdatasync_per_s     4 KiB write + fdatasync in a loop for ~1 s
 * Each raw figure is the median of RAW_RUNS measurements (the disk of a shared machine changes
 * speed from second to second). Latency is sampled: every LATENCY_SAMPLE_EVERY-th append of
 * each producer (by its append count, so independent of latency) is timed to its completion;
 * every append still stamps its record with the time, as ingest does.
 * One machine-readable line per configuration. mb_per_s and pct_of_raw_bw count record payload
 * (200 bytes each); disk_mb_per_s counts the bytes the log wrote (after LZ4, with headers).
 * p99_fsyncs is p99 latency divided by the raw fdatasync time; cpu_us_per_record is the
 * process's CPU time (all threads) per record. A last line (window=1) shows the latency of an
 * unsaturated log: one producer with one append in flight. `only` may be -1 for just that line.
 * BENCH_DIRECT_MIN_BYTES sets the log's direct_min_bytes (0: every write through the page
 * cache, as before direct writes), for A/B runs of the same binary.
 */
#include "log/seglog.h"
#include "tally/error.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RECORD_BYTES 200
#define WINDOW 256
#define POOL 4096
#define HIST_BUCKETS (64 * 8)
#define RAW_RUNS 3
#define LATENCY_SAMPLE_EVERY 8

static uint8_t g_pool[2][POOL][RECORD_BYTES];

struct producer;

struct slot {
    struct producer *p;
    int64_t t0_ns; /* 0: not sampled */
};

struct producer {
    struct seglog *log;
    int id;
    int data;
    atomic_int inflight;
    atomic_int waiting;
    atomic_int *stop;
    uint64_t appended;
    uint64_t completed_in_window; /* written by the completion thread only */
    uint64_t sampled_in_window;   /* of which timed (hist) */
    uint64_t errors;
    atomic_int measuring;
    int window;                  /* appends in flight at most */
    uint64_t hist[HIST_BUCKETS]; /* latency, written by the completion thread only */
    struct slot slots[WINDOW];
    pthread_t thread;
    char pad[64];
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Log-linear histogram of microseconds: 8 sub-buckets per power of two. */
static int hist_bucket(uint64_t us)
{
    if (us < 8) return (int)us;
    int lg = 63 - __builtin_clzll(us);
    int sub = (int)((us >> (lg - 3)) & 7);
    int b = (lg - 2) * 8 + sub;
    return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

static uint64_t hist_value(int b)
{
    if (b < 8) return (uint64_t)b;
    int lg = b / 8 + 2, sub = b % 8;
    return ((uint64_t)(8 + sub) << (lg - 3)) + ((uint64_t)1 << (lg - 3)) / 2;
}

static void futex_wait(atomic_int *addr, int expect)
{
    struct timespec ts = {0, 100000000};
    syscall(SYS_futex, (int *)addr, FUTEX_WAIT_PRIVATE, expect, &ts, NULL, 0);
}

static void futex_wake(atomic_int *addr)
{
    syscall(SYS_futex, (int *)addr, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Runs on the log's completion thread: must stay short. */
static void bench_done(void *arg, int err, uint64_t first_offset)
{
    (void)first_offset;
    struct slot *s = arg;
    struct producer *p = s->p;
    if (err) p->errors++;
    if (atomic_load_explicit(&p->measuring, memory_order_relaxed)) {
        if (s->t0_ns) {
            uint64_t us = (uint64_t)(now_ns() - s->t0_ns) / 1000;
            p->hist[hist_bucket(us)]++;
            p->sampled_in_window++;
        }
        p->completed_in_window++;
    }
    int left = atomic_fetch_sub(&p->inflight, 1) - 1;
    if (left <= p->window / 2 && atomic_load(&p->waiting)) {
        atomic_store(&p->waiting, 0);
        futex_wake(&p->waiting);
    }
}

static void *producer_main(void *arg)
{
    struct producer *p = arg;
    uint64_t i = (uint64_t)p->id * 7919;
    while (!atomic_load_explicit(p->stop, memory_order_relaxed)) {
        while (atomic_load(&p->inflight) >= p->window) {
            atomic_store(&p->waiting, 1);
            if (atomic_load(&p->inflight) >= p->window) futex_wait(&p->waiting, 1);
            atomic_store(&p->waiting, 0);
            if (atomic_load_explicit(p->stop, memory_order_relaxed)) break;
        }
        if (atomic_load(&p->inflight) >= p->window) break;
        struct slot *s = &p->slots[p->appended % WINDOW];
        s->p = p;
        int64_t t = now_ns();
        s->t0_ns = p->appended % LATENCY_SAMPLE_EVERY == 0 ? t : 0;
        struct seglog_rec rec = {g_pool[p->data][i++ % POOL], RECORD_BYTES, t / 1000000};
        atomic_fetch_add(&p->inflight, 1);
        int r = seglog_append(p->log, &rec, 1, bench_done, s);
        if (r) {
            atomic_fetch_sub(&p->inflight, 1);
            if (r != TALLY_EFULL) {
                fprintf(stderr, "append: %s\n", tally_strerror(r));
                break;
            }
            sched_yield();
            continue;
        }
        p->appended++;
    }
    while (atomic_load(&p->inflight) > 0) {
        atomic_store(&p->waiting, 1);
        if (atomic_load(&p->inflight) > 0) futex_wait(&p->waiting, 1);
    }
    return NULL;
}

static void make_pool(void)
{
    static const char *pages[] = {"/",         "/pricing", "/blog/how-we-count",
                                  "/docs/api", "/about",   "/blog/privacy-first-analytics"};
    static const char *refs[] = {"https://www.google.com/", "https://news.ycombinator.com/", "",
                                 "https://duckduckgo.com/", "https://t.co/x"};
    static const char *countries[] = {"DE", "FR", "US", "NL", "BR", "JP"};
    uint64_t s = 88172645463325252ull;
    for (int i = 0; i < POOL; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        char *t = (char *)g_pool[0][i];
        int n = snprintf(t, RECORD_BYTES,
                         "{\"site\":\"example.com\",\"n\":\"pageview\",\"u\":\"%s\",\"r\":\"%s\","
                         "\"c\":\"%s\",\"d\":\"desktop\",\"b\":\"Firefox\",\"v\":\"%016llx\","
                         "\"t\":%lld,\"w\":%d}",
                         pages[s % 6], refs[(s >> 8) % 5], countries[(s >> 16) % 6],
                         (unsigned long long)(s * 2654435761u), 1767225600000LL + i * 37,
                         1280 + (int)(s % 7) * 160);
        for (int j = n; j < RECORD_BYTES; j++)
            t[j] = ' ';
        for (int j = 0; j < RECORD_BYTES; j++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            g_pool[1][i][j] = (uint8_t)s;
        }
    }
}

static double raw_seq_write_mb_per_s(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/raw-seq", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 0;
    size_t chunk = 1u << 20;
    uint8_t *buf = malloc(chunk);
    for (size_t i = 0; i < chunk; i++)
        buf[i] = (uint8_t)(i * 131 + 7);
    int64_t t0 = now_ns();
    for (int i = 0; i < 256; i++)
        if (write(fd, buf, chunk) != (ssize_t)chunk) break;
    fdatasync(fd);
    double s = (double)(now_ns() - t0) / 1e9;
    close(fd);
    unlink(path);
    free(buf);
    return 256.0 * (double)chunk / 1e6 / s;
}

static double raw_fdatasync_per_s(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/raw-sync", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 0;
    uint8_t buf[4096];
    memset(buf, 'x', sizeof buf);
    int64_t t0 = now_ns(), t = t0;
    long n = 0;
    do {
        if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) break;
        fdatasync(fd);
        n++;
        t = now_ns();
    } while (t - t0 < 1000000000LL);
    close(fd);
    unlink(path);
    return (double)n / ((double)(t - t0) / 1e9);
}

static void rm_tree(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of RAW_RUNS runs of fn. */
static double raw_median(double (*fn)(const char *), const char *dir)
{
    double v[RAW_RUNS];
    for (int i = 0; i < RAW_RUNS; i++)
        v[i] = fn(dir);
    qsort(v, RAW_RUNS, sizeof v[0], cmp_double);
    return v[RAW_RUNS / 2];
}

static int run_config(const char *base, int producers, int data, int window, double seconds)
{
    /* The disk of a shared machine changes speed from minute to minute: the baselines are taken
     * right before each configuration, in the same directory. */
    double raw_bw = raw_median(raw_seq_write_mb_per_s, base);
    double raw_syncs = raw_median(raw_fdatasync_per_s, base);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/log-%d-%d", base, producers, data);
    struct seglog_options o;
    seglog_options_default(&o);
    o.dir = dir;
    o.fsync = SEGLOG_FSYNC_ALWAYS;
    const char *dmin = getenv("BENCH_DIRECT_MIN_BYTES");
    if (dmin) o.direct_min_bytes = (uint32_t)strtoul(dmin, NULL, 10);
    struct seglog *log;
    int r = seglog_open(&o, &log, NULL);
    if (r) {
        fprintf(stderr, "seglog_open %s: %s\n", dir, tally_strerror(r));
        return 1;
    }
    atomic_int stop = 0;
    struct producer *ps = aligned_alloc(64, sizeof *ps * (size_t)producers);
    memset(ps, 0, sizeof *ps * (size_t)producers);
    for (int i = 0; i < producers; i++) {
        ps[i].log = log;
        ps[i].id = i;
        ps[i].data = data;
        ps[i].stop = &stop;
        ps[i].window = window;
        pthread_create(&ps[i].thread, NULL, producer_main, &ps[i]);
    }
    /* Warm up (queue buffers grow, page cache settles), then measure. */
    usleep(300000);
    struct seglog_stats st0, st1;
    seglog_stats(log, &st0);
    for (int i = 0; i < producers; i++)
        atomic_store(&ps[i].measuring, 1);
    int64_t t0 = now_ns();
    double c0 = cpu_s();
    usleep((useconds_t)(seconds * 1e6));
    for (int i = 0; i < producers; i++)
        atomic_store(&ps[i].measuring, 0);
    int64_t t1 = now_ns();
    double cpu = cpu_s() - c0;
    seglog_stats(log, &st1);
    atomic_store(&stop, 1);
    for (int i = 0; i < producers; i++) {
        atomic_store(&ps[i].waiting, 0);
        futex_wake(&ps[i].waiting);
        pthread_join(ps[i].thread, NULL);
    }
    seglog_close(log);

    double el = (double)(t1 - t0) / 1e9;
    uint64_t done = 0, sampled = 0, errors = 0, hist[HIST_BUCKETS] = {0};
    for (int i = 0; i < producers; i++) {
        done += ps[i].completed_in_window;
        sampled += ps[i].sampled_in_window;
        errors += ps[i].errors;
        for (int b = 0; b < HIST_BUCKETS; b++)
            hist[b] += ps[i].hist[b];
    }
    uint64_t p50 = 0, p99 = 0, acc = 0;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        acc += hist[b];
        if (!p50 && acc * 100 >= sampled * 50) p50 = hist_value(b);
        if (!p99 && acc * 100 >= sampled * 99) {
            p99 = hist_value(b);
            break;
        }
    }
    double rps = (double)done / el;
    double mbps = rps * RECORD_BYTES / 1e6;
    double disk = (double)(st1.bytes_written - st0.bytes_written) / el / 1e6;
    double ratio = (double)(st1.raw_bytes_written - st0.raw_bytes_written) /
                   (double)(st1.bytes_written - st0.bytes_written + 1);
    double fsyncs = (double)(st1.fsync_count - st0.fsync_count) / el;
    double sync_us = raw_syncs > 0 ? 1e6 / raw_syncs : 0;
    printf("bench=log_append producers=%d data=%s window=%d records_per_s=%.0f mb_per_s=%.1f "
           "p50_us=%llu p99_us=%llu compress_ratio=%.2f raw_seq_write_mb_per_s=%.1f "
           "raw_fdatasync_per_s=%.0f pct_of_raw_bw=%.1f disk_mb_per_s=%.1f fsyncs_per_s=%.0f "
           "records_per_fsync=%.0f log_fsync_avg_us=%.0f p99_fsyncs=%.1f cpu_us_per_record=%.2f "
           "errors=%llu\n",
           producers, data ? "random" : "text", window, rps, mbps, (unsigned long long)p50,
           (unsigned long long)p99, ratio, raw_bw, raw_syncs, raw_bw > 0 ? 100 * mbps / raw_bw : 0,
           disk, fsyncs, fsyncs > 0 ? rps / fsyncs : 0,
           st1.fsync_count > st0.fsync_count ? (double)(st1.fsync_sum_us - st0.fsync_sum_us) /
                                                   (double)(st1.fsync_count - st0.fsync_count)
                                             : 0,
           sync_us > 0 ? (double)p99 / sync_us : 0, done ? cpu * 1e6 / (double)done : 0,
           (unsigned long long)errors);
    fflush(stdout);
    free(ps);
    rm_tree(dir);
    return errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 3.0;
    if (seconds <= 0) seconds = 3.0;
    int only_p = 0, only_d = -1;
    if (argc > 2) {
        char what[32] = "";
        if (sscanf(argv[2], "%d:%31s", &only_p, what) >= 1 && what[0] && only_p > 0)
            only_d = strcmp(what, "random") == 0 ? 1 : 0;
    }
    const char *parent = getenv("BENCH_DIR");
    if (parent && strlen(parent) > 1500) parent = ".";
    char base[2048];
    snprintf(base, sizeof base, "%s/bench-log-append-XXXXXX", parent ? parent : ".");
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 1;
    }
    make_pool();
    int fails = 0;
    const int counts[3] = {1, 8, 64};
    for (int d = 0; d < 2; d++)
        for (int c = 0; c < 3; c++) {
            if (only_p && counts[c] != only_p) continue;
            if (only_p < 0) continue;
            if (only_d >= 0 && d != only_d) continue;
            fails += run_config(base, counts[c], d, WINDOW, seconds);
        }
    /* Latency when the log is not saturated: one producer, one append in flight. */
    if (!only_p || only_p == -1) fails += run_config(base, 1, 0, 1, seconds);
    rm_tree(base);
    return fails ? 1 : 0;
}
