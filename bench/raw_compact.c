/*
 * bench/raw_compact: what raw compaction buys a live server's store.
 *
 *   raw_compact [events=1000000] [events_per_flush=4] [hours=72]
 *
 * Writes `events` events of one site over `hours` hours (visitors with sessions of 1-20
 * events on 1,000 pages, in time order) into a temporary store the way a live server does:
 * a raw flush every `events_per_flush` events (4 = a site of ~14,000 events an hour flushed
 * every second, the 10M/30-day set's rate); the store is reopened (blocks in table files).
 * Then, in the same run: a projection scan of the
 * whole range (raw_scan_hours: name and path, one helper thread; what a funnel reads) and a
 * full scan (raw_scan, what ad-hoc queries and the export read), raw_compact_hour over every
 * hour, a reopen, and both scans again (the deleted keys' tombstones are compacted away by
 * RocksDB itself: store.c marks raw table files with many deletions for compaction; without
 * that the scans after were only 1.2-1.5x faster). Scans are the median of 5. One line:
 *   bench=raw_compact events=... blocks_before=... blocks_after=... compact_ms=...
 *   hours_scan_ms=BEFORE/AFTER full_scan_ms=BEFORE/AFTER speedup_hours=... speedup_full=...
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rollup/devent.h"
#include "store/raw.h"
#include "store/store.h"
#include "tally/error.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int count_rows(void *arg, int64_t hour_ms, const struct raw_row *rows, size_t n)
{
    (void)hour_ms;
    (void)rows;
    *(uint64_t *)arg += n;
    return 0;
}

static int count_event(void *arg, const struct raw_event *ev)
{
    (void)ev;
    (*(uint64_t *)arg)++;
    return 0;
}

#define RUNS 5

/* Median ms of RUNS projection scans (which=0) or full scans (1); rows seen into *seen. */
static double scan_ms(struct store *s, uint32_t site, int64_t from, int64_t to, int which,
                      uint64_t *seen)
{
    static const int fields[] = {DE_NAME, DE_PATH};
    double t[RUNS];
    for (int r = 0; r < RUNS; r++) {
        uint64_t n = 0;
        double t0 = now_ms();
        int rc = which == 0 ? raw_scan_hours(s, site, from, to, fields, 2, 1u << 20, 1,
                                             count_rows, &n)
                            : raw_scan(s, site, from, to, count_event, &n);
        t[r] = now_ms() - t0;
        if (rc) {
            fprintf(stderr, "raw_compact: scan: %s\n", tally_strerror(rc));
            exit(1);
        }
        *seen = n;
    }
    qsort(t, RUNS, sizeof *t, cmp_d);
    return t[RUNS / 2];
}

static uint64_t count_blocks(struct store *s, uint32_t site)
{
    uint8_t lo[4], hi[4];
    store_put_be32(lo, site);
    store_put_be32(hi, site + 1);
    struct store_iter *it = store_iter_new(s, STORE_CF_RAW, lo, 4, hi, 4);
    uint64_t n = 0;
    for (store_iter_seek_first(it); store_iter_valid(it); store_iter_next(it)) n++;
    store_iter_free(it);
    return n;
}

int main(int argc, char **argv)
{
    long events = argc > 1 ? atol(argv[1]) : 1000000;
    long per_flush = argc > 2 ? atol(argv[2]) : 4;
    long hours = argc > 3 ? atol(argv[3]) : 72;
    if (events < 1 || per_flush < 1 || hours < 1) {
        fprintf(stderr, "usage: raw_compact [events] [events_per_flush] [hours]\n");
        return 2;
    }
    char dir[] = "/tmp/tally-bench-compact-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    struct store_options o;
    store_options_default(&o);
    o.dir = dir;
    o.block_cache_bytes = 16u << 20; /* the server's */
    struct store *s = NULL;
    uint32_t site = 0;
    if (store_open(&o, &s) || store_site_id(s, "example.com", 11, true, &site)) return 1;
    struct raw_writer *w = raw_writer_new(s);
    struct store_batch *b = store_batch_new(s);
    const int64_t t0 = 1767225600000LL; /* 2026-01-01 */
    const int64_t span = hours * RAW_HOUR_MS, step = span / events;
    char path[32];
    static const char *names[] = {"pageview", "pageview", "pageview", "Signup"};
    uint64_t visitor = 0;
    long left = 0;
    for (long i = 0; i < events; i++) {
        if (left-- <= 0) { /* a new session of 1-20 events */
            visitor = (rnd() % 200000 + 1) * 0x9e3779b97f4a7c15ULL;
            left = (long)(rnd() % 20);
        }
        struct devent ev;
        memset(&ev, 0, sizeof ev);
        ev.offset = (uint64_t)i;
        ev.ts_ms = t0 + i * step;
        ev.received_ms = ev.ts_ms + 50;
        ev.visitor = visitor;
        for (int f = 0; f < DE_FIELD_COUNT; f++) ev.str[f] = (struct devent_str){"", 0};
        const char *name = names[rnd() % 4];
        ev.str[DE_NAME] = (struct devent_str){name, (uint32_t)strlen(name)};
        int pl = snprintf(path, sizeof path, "/page/%d", (int)(rnd() % 1000));
        ev.str[DE_PATH] = (struct devent_str){path, (uint32_t)pl};
        ev.str[DE_HOSTNAME] = (struct devent_str){"example.com", 11};
        ev.pageview = name[0] == 'p';
        ev.interactive = true;
        if (raw_writer_add(w, site, &ev, 0)) return 1;
        if ((i + 1) % per_flush == 0 || i == events - 1) {
            if (raw_writer_flush(w, b) || store_write(s, b)) return 1;
            raw_writer_commit(w);
            store_batch_clear(b);
        }
    }
    raw_writer_free(w);
    store_batch_free(b);
    /* reopened: the blocks in table files, as on a server that has run a while */
    store_close(s);
    if (store_open(&o, &s)) return 1;
    const int64_t from = t0, to = t0 + span + RAW_HOUR_MS;
    uint64_t blocks_before = count_blocks(s, site), seen_h = 0, seen_f = 0, seen2 = 0;
    double h_before = scan_ms(s, site, from, to, 0, &seen_h);
    double f_before = scan_ms(s, site, from, to, 1, &seen_f);
    double c0 = now_ms();
    for (int64_t h = from / RAW_HOUR_MS; h < to / RAW_HOUR_MS; h++) {
        struct raw_compact_stats st;
        int rc = raw_compact_hour(s, site, (uint32_t)h, &st);
        if (rc) {
            fprintf(stderr, "raw_compact: hour %lld: %s\n", (long long)h, tally_strerror(rc));
            return 1;
        }
    }
    double compact_ms = now_ms() - c0;
    store_close(s);
    if (store_open(&o, &s)) return 1;
    uint64_t blocks_after = count_blocks(s, site);
    double h_after = scan_ms(s, site, from, to, 0, &seen2);
    if (seen2 != seen_h) return 1;
    double f_after = scan_ms(s, site, from, to, 1, &seen2);
    if (seen2 != seen_f || seen_f != (uint64_t)events) return 1;
    printf("bench=raw_compact events=%ld events_per_flush=%ld blocks_before=%llu "
           "blocks_after=%llu compact_ms=%.0f hours_scan_ms=%.1f/%.1f full_scan_ms=%.1f/%.1f "
           "speedup_hours=%.1f speedup_full=%.1f\n",
           events, per_flush, (unsigned long long)blocks_before,
           (unsigned long long)blocks_after, compact_ms, h_before, h_after, f_before, f_after,
           h_before / h_after, f_before / f_after);
    store_close(s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : 1;
}
