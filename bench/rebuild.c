/*
 * bench/rebuild: throughput of `tally --rebuild` and bytes per event of the log, the raw store
 * and the rollups.
 *
 *   rebuild [events=10000000] [days=30] [pages=1000] [visitors=200000]
 *
 * Generates realistic traffic into a fresh event log (fsync none): sessions of 1-20 events
 * (10-180 s apart) by visitors drawn from a pool, over `days` days, 85 % pageviews of pages
 * drawn with a Zipf-like skew, custom events with props and some revenue, referrers and UTM
 * tags on landing pages, a dozen User-Agents (2 % bots), geo, client ids on 20 % of events;
 * three sites (80/15/5 %), one in Europe/Berlin. Events reach the log in time order (as live
 * traffic would). Then:
 *   1. the raw consumer catches up (raw store written);
 *   2. the store reopened for bulk writes (store.h, as `tally --rebuild` opens it), then
 *      rollup_rebuild (full): the measured part, events read / wall seconds;
 *   3. memtables flushed (final_flush_s: what closing the store would take) and CFs
 *      compacted, sizes read from RocksDB.
 * The work directory is under $BENCH_DIR (default /tmp) and removed at the end ($BENCH_KEEP=1
 * keeps it; $BENCH_DEBUG=1 adds RocksDB statistics and put counts on stderr). One line:
 *   bench=rebuild events=... events_per_s=... raw_bytes_per_event=... rollup_bytes_per_event=...
 * followed by the other figures (log, sessions, raw consumer rate, cells, visits).
 */
#include <ftw.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "ingest/bots.h"
#include "ingest/event.h"
#include "ingest/referrer.h"
#include "ingest/ua.h"
#include "log/seglog.h"
#include "rollup/consumer.h"
#include "rollup/rollup.h"
#include "store/store.h"
#include "tally/error.h"

#define RING_MIN 64 /* minutes of scheduled events kept ahead */
#define APPEND_CHUNK 512

static uint64_t rng = 0x1234567;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A scheduled event: just what is needed to encode it later. */
struct sched {
    int64_t ts;
    uint64_t visitor;
    uint32_t page, landing;
    uint16_t ua, geo, ref, site;
    uint8_t kind; /* 0 pageview, 1..3 custom */
    uint8_t utm;
};

struct bucket {
    struct sched *v;
    size_t n, cap;
};

static struct bucket ring[RING_MIN];
static atomic_ullong done_count;
static uint64_t appended;

static void on_done(void *arg, int err, uint64_t first)
{
    (void)first;
    if (err) {
        fprintf(stderr, "append failed: %s\n", tally_strerror(err));
        exit(1);
    }
    atomic_fetch_add(&done_count, (uint64_t)(uintptr_t)arg);
}

static const char *sites[] = {"example.com", "shop.example.org", "blog.example.net"};
static const char *uas[] = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
};
static const char *refs[] = {"",
                             "",
                             "",
                             "https://www.google.com/",
                             "https://www.google.com/",
                             "https://www.bing.com/",
                             "https://duckduckgo.com/",
                             "https://news.ycombinator.com/",
                             "https://t.co/abc",
                             "https://www.reddit.com/r/programming/",
                             "https://www.facebook.com/",
                             "https://github.com/some/repo",
                             "https://chatgpt.com/",
                             "https://blog.partner.io/post/1"};
static const char *geo[][3] = {
    {"US", "US-CA", "San Francisco"}, {"US", "US-NY", "New York"}, {"DE", "DE-BE", "Berlin"},
    {"DE", "DE-BY", "Munich"},        {"FR", "FR-IDF", "Paris"},   {"GB", "GB-ENG", "London"},
    {"NL", "NL-NH", "Amsterdam"},     {"BR", "BR-SP", "Sao Paulo"}, {"IN", "IN-MH", "Mumbai"},
    {"JP", "JP-13", "Tokyo"},         {"CA", "CA-ON", "Toronto"},  {"ES", "ES-MD", "Madrid"},
    {"IT", "IT-25", "Milan"},         {"PL", "PL-MZ", "Warsaw"},   {"SE", "SE-AB", "Stockholm"},
    {"AU", "AU-NSW", "Sydney"},       {"", "", ""},
};
static const char *customs[] = {"pageview", "Signup", "Click", "Download"};

static uint32_t zipf_page(uint32_t pages)
{
    /* skew: square of a uniform draw, so low page numbers are much more frequent */
    double u = (double)(rnd() % 1000000) / 1000000.0;
    uint32_t p = (uint32_t)(u * u * pages);
    return p < pages ? p : pages - 1;
}

static void schedule(const struct sched *e, int64_t minute0)
{
    int64_t m = e->ts / 60000 - minute0;
    struct bucket *b = &ring[m % RING_MIN];
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 4096;
        b->v = realloc(b->v, b->cap * sizeof *b->v);
        if (!b->v) abort();
    }
    b->v[b->n++] = *e;
}

static int sched_cmp(const void *a, const void *b)
{
    int64_t x = ((const struct sched *)a)->ts, y = ((const struct sched *)b)->ts;
    return x < y ? -1 : x > y;
}

static uint8_t recbuf[APPEND_CHUNK][1024];
static struct seglog_rec recs[APPEND_CHUNK];
static int nrecs;

static void sleep_ms(int ms)
{
    struct timespec ts = {0, (long)ms * 1000000};
    nanosleep(&ts, NULL);
}

static void flush_recs(struct seglog *log)
{
    if (!nrecs) return;
    for (;;) {
        int rc = seglog_append(log, recs, (uint32_t)nrecs, on_done, (void *)(uintptr_t)nrecs);
        if (rc == 0) break;
        if (rc != TALLY_EFULL) {
            fprintf(stderr, "append: %s\n", tally_strerror(rc));
            exit(1);
        }
        sleep_ms(1);
    }
    appended += (uint64_t)nrecs;
    nrecs = 0;
}

static void emit(struct seglog *log, const struct sched *s, uint64_t seq)
{
    struct event ev;
    event_init(&ev);
    char url[160], id[32];
    const char *site = sites[s->site];
    int n = snprintf(url, sizeof url, "https://%s/page/%u", site, s->page);
    if (s->utm && s->page == s->landing)
        snprintf(url + n, sizeof url - (size_t)n, "?utm_source=newsletter&utm_medium=email"
                 "&utm_campaign=c%u", s->utm);
    ev.site = (struct event_str){site, strlen(site)};
    ev.url = (struct event_str){url, strlen(url)};
    ev.ts_ms = s->ts;
    ev.received_ms = s->ts + (int64_t)(rnd() % 300);
    ev.visitor = s->visitor;
    const char *ua = uas[s->ua];
    ev.user_agent = (struct event_str){ua, strlen(ua)};
    if (s->page == s->landing) {
        const char *ref = refs[s->ref];
        ev.referrer = (struct event_str){ref, strlen(ref)};
    } else {
        static char self[80];
        snprintf(self, sizeof self, "https://%s/", site);
        ev.referrer = (struct event_str){self, strlen(self)};
    }
    ev.country = (struct event_str){geo[s->geo][0], strlen(geo[s->geo][0])};
    ev.region = (struct event_str){geo[s->geo][1], strlen(geo[s->geo][1])};
    ev.city = (struct event_str){geo[s->geo][2], strlen(geo[s->geo][2])};
    struct event_prop props[1];
    if (s->kind) {
        const char *name = customs[s->kind];
        ev.name = (struct event_str){name, strlen(name)};
        if (seq % 3 == 0) {
            props[0].key = (struct event_str){"plan", 4};
            props[0].value = seq % 2 ? (struct event_str){"pro", 3}
                                     : (struct event_str){"free", 4};
            props[0].type = EVENT_PROP_STRING;
            ev.props = props;
            ev.props_count = 1;
        }
        if (seq % 97 == 0) {
            ev.has_revenue = true;
            ev.revenue_micros = (int64_t)(rnd() % 100000000);
            memcpy(ev.currency, seq % 2 ? "EUR" : "USD", 4);
        }
    }
    if (seq % 5 == 0) {
        snprintf(id, sizeof id, "evt-%llu", (unsigned long long)seq);
        ev.client_id = (struct event_str){id, strlen(id)};
    }
    int len = event_encode(&ev, recbuf[nrecs], sizeof recbuf[nrecs]);
    if (len <= 0) {
        fprintf(stderr, "encode: %d\n", len);
        exit(1);
    }
    recs[nrecs] = (struct seglog_rec){recbuf[nrecs], (uint32_t)len, ev.received_ms};
    if (++nrecs == APPEND_CHUNK) {
        flush_recs(log);
        /* the records' bytes are copied by seglog_append: the buffers are free again */
    }
}

static void generate(struct seglog *log, uint64_t events, int days, uint32_t pages,
                     uint64_t visitors)
{
    const int64_t start = 1767225600000LL; /* 2026-01-01 */
    const int64_t minutes = (int64_t)days * 1440;
    const double sessions_per_min = (double)events / 10.5 / (double)minutes;
    double carry = 0;
    uint64_t scheduled = 0, seq = 0;
    const int64_t minute0 = start / 60000;
    for (int64_t m = 0;; m++) {
        if (scheduled < events) {
            carry += sessions_per_min;
            for (; carry >= 1.0 && scheduled < events; carry -= 1.0) {
                struct sched s = {0};
                s.visitor = 0x9E3779B97F4A7C15ULL * (1 + rnd() % visitors);
                uint64_t r = rnd() % 100;
                s.site = r < 80 ? 0 : r < 95 ? 1 : 2;
                s.ua = (uint16_t)(rnd() % 100 < 2 ? 10 + rnd() % 2 : (s.visitor >> 7) % 10);
                s.geo = (uint16_t)((s.visitor >> 13) % 17);
                s.ref = (uint16_t)(rnd() % 14);
                s.utm = rnd() % 20 == 0 ? (uint8_t)(1 + rnd() % 5) : 0;
                s.landing = zipf_page(pages);
                int len = 1 + (int)(rnd() % 20);
                int64_t ts = (minute0 + m) * 60000 + (int64_t)(rnd() % 60000);
                for (int k = 0; k < len && scheduled < events; k++) {
                    s.ts = ts;
                    s.page = k == 0 ? s.landing : zipf_page(pages);
                    s.kind = rnd() % 100 < 85 ? 0 : (uint8_t)(1 + rnd() % 3);
                    schedule(&s, minute0);
                    scheduled++;
                    ts += 10000 + (int64_t)(rnd() % 170000);
                    if ((ts / 60000 - minute0) - m >= RING_MIN - 1) break;
                }
            }
        }
        struct bucket *b = &ring[m % RING_MIN];
        if (b->n > 1) qsort(b->v, b->n, sizeof *b->v, sched_cmp);
        for (size_t i = 0; i < b->n; i++) emit(log, &b->v[i], seq++);
        b->n = 0;
        if (scheduled >= events) {
            bool empty = true;
            for (int i = 0; i < RING_MIN; i++) empty = empty && ring[i].n == 0;
            if (empty) break;
        }
    }
    flush_recs(log);
    while (atomic_load(&done_count) < appended) sleep_ms(2);
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int main(int argc, char **argv)
{
    uint64_t events = argc > 1 ? strtoull(argv[1], NULL, 10) : 10000000ULL;
    int days = argc > 2 ? atoi(argv[2]) : 30;
    uint32_t pages = argc > 3 ? (uint32_t)atoi(argv[3]) : 1000;
    uint64_t visitors = argc > 4 ? strtoull(argv[4], NULL, 10) : 200000;
    if (!events || days <= 0 || !pages || !visitors) {
        fprintf(stderr, "usage: rebuild [events] [days] [pages] [visitors]\n");
        return 2;
    }
    const char *base = getenv("BENCH_DIR");
    char dir[512], logdir[600], dbdir[600];
    snprintf(dir, sizeof dir, "%s/tally-bench-rebuild-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(logdir, sizeof logdir, "%s/log", dir);
    snprintf(dbdir, sizeof dbdir, "%s/db", dir);
    if (ua_init(UA_CACHE_ENTRIES_DEFAULT) || bots_init() || referrer_init()) {
        fprintf(stderr, "data sets failed to load\n");
        return 1;
    }
    struct tally_config *cfg = config_new_defaults();
    char err[CONFIG_ERROR_BYTES_MAX];
    if (!cfg || config_load_string(cfg, "[site example.com]\ntimezone = Europe/Berlin\n",
                                   "bench.ini", err) != 0) {
        fprintf(stderr, "config: %s\n", err);
        return 1;
    }
    struct seglog_options lo;
    seglog_options_default(&lo);
    lo.dir = logdir;
    lo.fsync = SEGLOG_FSYNC_NONE;
    lo.segment_bytes = 256u << 20;
    struct seglog *log = NULL;
    if (seglog_open(&lo, &log, NULL) != 0) return 1;
    struct store_options so;
    store_options_default(&so);
    so.dir = dbdir;
    so.block_cache_bytes = 256u << 20;
    so.write_buffer_bytes = 64u << 20;
    struct store *s = NULL;
    if (store_open(&so, &s) != 0) return 1;

    double t0 = now_s();
    generate(log, events, days, pages, visitors);
    double gen_s = now_s() - t0;
    struct seglog_stats ls;
    seglog_stats(log, &ls);
    if (getenv("BENCH_DEBUG"))
        fprintf(stderr, "appended=%llu log_end=%llu\n", (unsigned long long)appended,
                (unsigned long long)ls.end_offset);

    struct rollup_config rc;
    rollup_config_default(&rc);
    rc.cfg = cfg;
    t0 = now_s();
    struct rollup_source src = {.name = ""};
    evlog_local(log, &src.log);
    if (consumer_run_raw(s, &src.log, RAW_STATE_PREFIX, &rc, UINT64_MAX, false, NULL) != 0)
        return 1;
    double raw_s = now_s() - t0;
    /* the rebuild writes as `tally --rebuild` does: the store reopened for bulk writes */
    store_close(s);
    s = NULL;
    so.bulk_writes = true;
    if (store_open(&so, &s) != 0) return 1;

    struct rollup_rebuild_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.cfg = cfg;
    struct rollup_rebuild_summary sum;
    t0 = now_s();
    int r = rollup_rebuild(s, &src, 1, &ro, &sum);
    double rebuild_s = now_s() - t0;
    if (r) {
        fprintf(stderr, "rebuild: %s\n", tally_strerror(r));
        return 1;
    }
    if (getenv("BENCH_DEBUG")) {
        static char stats[65536];
        if (store_property(s, STORE_CF_ROLLUPS, "rocksdb.stats", stats, sizeof stats) == 0)
            fprintf(stderr, "%s\n", stats);
        fprintf(stderr, "cells_put=%llu visits_put=%llu\n",
                (unsigned long long)sum.buckets_written, (unsigned long long)sum.visits_written);
    }
    t0 = now_s();
    store_flush(s);
    double final_flush_s = now_s() - t0;
    for (int cf = 0; cf < STORE_CF_COUNT; cf++) store_compact(s, cf);
    double n = (double)sum.events_read;
    uint64_t raw_b = store_cf_bytes(s, STORE_CF_RAW) + store_cf_bytes(s, STORE_CF_DICT);
    uint64_t roll_b = store_cf_bytes(s, STORE_CF_ROLLUPS);
    uint64_t sess_b = store_cf_bytes(s, STORE_CF_SESSIONS);
    printf("bench=rebuild events=%llu events_per_s=%.0f raw_bytes_per_event=%.1f "
           "rollup_bytes_per_event=%.1f\n",
           (unsigned long long)sum.events_read, n / rebuild_s, (double)raw_b / n,
           (double)roll_b / n);
    printf("bench=rebuild_detail log_bytes_per_event=%.1f session_bytes_per_event=%.1f "
           "rebuild_s=%.2f flush_s=%.2f write_s=%.2f final_flush_s=%.2f "
           "raw_consumer_events_per_s=%.0f "
           "generate_s=%.1f cells=%llu visits=%llu counted=%llu excluded=%llu duplicates=%llu "
           "digest=%s\n",
           (double)ls.bytes_on_disk / n, (double)sess_b / n, rebuild_s, sum.flush_s, sum.write_s,
           final_flush_s, n / raw_s, gen_s, (unsigned long long)sum.digest.cells,
           (unsigned long long)sum.digest.visits, (unsigned long long)sum.events_counted,
           (unsigned long long)sum.events_excluded, (unsigned long long)sum.events_duplicate,
           sum.digest.hex);
    store_close(s);
    seglog_close(log);
    config_free(cfg);
    referrer_shutdown();
    bots_shutdown();
    ua_shutdown();
    tz_shutdown();
    if (!getenv("BENCH_KEEP")) nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    else fprintf(stderr, "kept %s\n", dir);
    return 0;
}
