/* End to end through the real event log: encoded events appended to a seglog, the consumer
 * service (raw + rollup threads) catching up, then full and filtered rebuilds that must give
 * the same digest as the incremental run. */
#include "test.h"

#include <stdatomic.h>
#include <time.h>

#include "core/config.h"
#include "ingest/bots.h"
#include "ingest/event.h"
#include "ingest/referrer.h"
#include "ingest/ua.h"
#include "log/seglog.h"
#include "rollup/consumer.h"
#include "rollup/rollup.h"
#include "store/raw.h"
#include "test_rollup_util.h"

static atomic_ullong done_count;

static void on_done(void *arg, int err, uint64_t first)
{
    (void)arg;
    (void)first;
    if (err) abort();
    atomic_fetch_add(&done_count, 1);
}

static uint64_t rng;
static uint64_t rnd(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return rng >> 17;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static uint64_t per_site[2];

/* Appends n generated events starting at event time base, site i's to logs[i]; waits until
 * they are committed. */
static void append_split(struct seglog *const logs[2], int n, int64_t base, uint64_t seed)
{
    static const char *sites[] = {"a.com", "b.com"};
    static const char *paths[] = {"/", "/pricing", "/blog/one", "/docs?utm_source=newsletter"};
    static const char *refs[] = {"", "https://www.google.com/", "https://news.ycombinator.com/",
                                 "https://a.com/"};
    static const char *uas[] = {
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"};
    rng = seed;
    uint64_t before = atomic_load(&done_count);
    int64_t now = base;
    for (int i = 0; i < n; i++) {
        struct event ev;
        event_init(&ev);
        int si = (int)(rnd() % 2);
        char url[128], id[32];
        snprintf(url, sizeof url, "https://%s%s", sites[si], paths[rnd() % 4]);
        now += (int64_t)(rnd() % 90000);
        ev.received_ms = now;
        ev.ts_ms = rnd() % 10 == 0 ? now - (int64_t)(rnd() % (48LL * 3600000)) : now;
        ev.site = (struct event_str){sites[si], 5};
        ev.url = (struct event_str){url, strlen(url)};
        const char *ref = refs[rnd() % 4];
        ev.referrer = (struct event_str){ref, strlen(ref)};
        const char *ua = uas[rnd() % 3];
        ev.user_agent = (struct event_str){ua, strlen(ua)};
        ev.visitor = 1 + rnd() % 80;
        if (rnd() % 5 == 0) ev.name = (struct event_str){"Signup", 6};
        if (rnd() % 8 == 0) {
            snprintf(id, sizeof id, "x%d", (int)(rnd() % 100));
            ev.client_id = (struct event_str){id, strlen(id)};
        }
        uint8_t buf[4096];
        int len = event_encode(&ev, buf, sizeof buf);
        if (len <= 0) abort();
        struct seglog_rec rec = {buf, (uint32_t)len, ev.received_ms};
        while (seglog_append(logs[si], &rec, 1, on_done, NULL) == TALLY_EFULL) sleep_ms(1);
        per_site[si]++;
    }
    while (atomic_load(&done_count) < before + (uint64_t)n) sleep_ms(2);
}

static void append_events(struct seglog *log, int n, int64_t base, uint64_t seed)
{
    struct seglog *const logs[2] = {log, log};
    append_split(logs, n, base, seed);
}

static void catch_up_sources(struct store *s, const struct rollup_source *src, size_t n,
                             const struct tally_config *cfg)
{
    struct rollup_config rc;
    rollup_config_default(&rc);
    rc.cfg = cfg;
    rc.flush_interval_ms = 50;
    rc.raw_flush_events_max = 333;
    rc.engine.pending_events_max = 250;
    struct rollup_service *svc = NULL;
    if (rollup_service_start(s, src, n, &rc, &svc) != 0) abort();
    for (int i = 0; i < 3000; i++) {
        struct rollup_lag lag;
        rollup_service_lag(svc, &lag);
        if (lag.raw_lag == 0 && lag.rollup_lag == 0 && lag.raw_cursor == lag.log_end &&
            lag.rollup_cursor == lag.log_end)
            break;
        sleep_ms(10);
    }
    rollup_service_stop(svc);
}

static void catch_up(struct store *s, struct seglog *log, const struct tally_config *cfg)
{
    struct rollup_config rc;
    rollup_config_default(&rc);
    rc.cfg = cfg;
    rc.flush_interval_ms = 50;
    rc.raw_flush_events_max = 333;
    rc.engine.pending_events_max = 250;
    struct rollup_service *svc = NULL;
    struct rollup_source src = {.name = ""};
    evlog_local(log, &src.log);
    if (rollup_service_start(s, &src, 1, &rc, &svc) != 0) abort();
    for (int i = 0; i < 3000; i++) {
        struct rollup_lag lag;
        rollup_service_lag(svc, &lag);
        if (lag.raw_lag == 0 && lag.rollup_lag == 0 && lag.raw_cursor == lag.log_end) break;
        sleep_ms(10);
    }
    rollup_service_stop(svc);
}

/* A seglog in dir/sub without fsync (tests only: durability is not what they check). */
static struct seglog *open_test_log(const char *dir, const char *sub)
{
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    struct seglog_options lo;
    seglog_options_default(&lo);
    lo.dir = path;
    lo.fsync = SEGLOG_FSYNC_NONE;
    struct seglog *log = NULL;
    if (seglog_open(&lo, &log, NULL) != 0) abort();
    return log;
}

/* What most tests here start from: default configuration, a log in dir/log, a store in
 * dir/db. Aborts when one cannot be made. */
struct fixture {
    char dbdir[300];
    struct tally_config *cfg;
    struct seglog *log;
    struct store *s;
};

static void fixture_open(struct fixture *f, const char *dir)
{
    snprintf(f->dbdir, sizeof f->dbdir, "%s/db", dir);
    f->cfg = config_new_defaults();
    if (!f->cfg) abort();
    f->log = open_test_log(dir, "log");
    f->s = tr_open_store(f->dbdir);
}

static void fixture_close(struct fixture *f)
{
    store_close(f->s);
    seglog_close(f->log);
    config_free(f->cfg);
}

struct counts {
    uint64_t n, bots, dups;
};

static int count_raw(void *arg, const struct raw_event *ev)
{
    struct counts *c = arg;
    c->n++;
    if (ev->flags & RAW_F_BOT) c->bots++;
    if (ev->flags & RAW_F_DUPLICATE) c->dups++;
    return 0;
}

TEST(service_and_rebuilds_agree)
{
    const char *dir = test_tmpdir();
    char dbdir[300], err[CONFIG_ERROR_BYTES_MAX];
    snprintf(dbdir, sizeof dbdir, "%s/db", dir);
    struct tally_config *cfg = config_new_defaults();
    ASSERT_TRUE(cfg != NULL);
    ASSERT_EQ(config_load_string(cfg, "[site b.com]\ntimezone = Europe/Berlin\n", "t.ini", err),
              0);
    struct seglog *log = open_test_log(dir, "log");
    struct store *s = tr_open_store(dbdir);
    struct rollup_source src1 = {.name = ""};
    evlog_local(log, &src1.log);

    const int64_t base = tr_ts("2026-10-24T12:00:00Z");
    append_events(log, 1500, base, 1);
    catch_up(s, log, cfg);
    /* more traffic after a restart of the service */
    append_events(log, 1000, base + 2 * 86400000LL, 2);
    catch_up(s, log, cfg);

    /* the raw store holds every event, bots and duplicates flagged */
    struct counts ca = {0}, cb = {0};
    uint32_t ida = tr_site(s, "a.com"), idb = tr_site(s, "b.com");
    ASSERT_EQ(raw_scan(s, ida, 0, INT64_MAX / 2, count_raw, &ca), 0);
    ASSERT_EQ(raw_scan(s, idb, 0, INT64_MAX / 2, count_raw, &cb), 0);
    ASSERT_EQ(ca.n, per_site[0]);
    ASSERT_EQ(cb.n, per_site[1]);
    ASSERT_TRUE(ca.bots > 0 && ca.dups > 0);

    struct rollup_digest inc;
    ASSERT_EQ(rollup_digest(s, NULL, &inc), 0);
    ASSERT_TRUE(inc.cells > 500);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", 0,
                                      INT64_MAX / 2);
    ASSERT_TRUE(m.pageviews > 0 && m.visits > 0 && m.visitors > 0);
    /* the raw scan and the rollups agree on counted events */
    uint64_t counted_raw = ca.n - ca.bots - ca.dups;
    ASSERT_EQ((uint64_t)m.events, counted_raw);

    struct rollup_rebuild_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.cfg = cfg;
    struct rollup_rebuild_summary sum;
    ASSERT_EQ(rollup_rebuild(s, &src1, 1, &ro, &sum), 0);
    ASSERT_EQ(sum.events_read, 2500);
    ASSERT_STREQ(sum.digest.hex, inc.hex);

    ro.site = "b.com";
    ASSERT_EQ(rollup_rebuild(s, &src1, 1, &ro, &sum), 0);
    ASSERT_STREQ(sum.digest.hex, inc.hex);

    ro.site = NULL;
    ro.from_date = "2026-10-25";
    ro.to_date = "2026-10-25"; /* the Berlin DST day */
    ASSERT_EQ(rollup_rebuild(s, &src1, 1, &ro, &sum), 0);
    ASSERT_STREQ(sum.digest.hex, inc.hex);

    ro.site = "a.com";
    ro.from_date = "2026-10-26";
    ro.to_date = NULL;
    ASSERT_EQ(rollup_rebuild(s, &src1, 1, &ro, &sum), 0);
    ASSERT_STREQ(sum.digest.hex, inc.hex);

    ro.from_date = "2026-13-01";
    ASSERT_EQ(rollup_rebuild(s, &src1, 1, &ro, &sum), TALLY_EINVAL);

    /* a digest survives closing and reopening the store */
    store_close(s);
    s = tr_open_store(dbdir);
    struct rollup_digest again;
    ASSERT_EQ(rollup_digest(s, NULL, &again), 0);
    ASSERT_STREQ(again.hex, inc.hex);
    store_close(s);
    seglog_close(log);
    config_free(cfg);
}

/* Sites spread over two logs consumed as two sources ("p0", "p1": JetStream partitions do
 * the same) give every site exactly what one log with all events gives, incrementally and
 * after a rebuild over both sources. */
TEST(partitioned_sources_match_one_log)
{
    const char *dir = test_tmpdir();
    char path[300], err[CONFIG_ERROR_BYTES_MAX];
    struct tally_config *cfg = config_new_defaults();
    ASSERT_TRUE(cfg != NULL);
    ASSERT_EQ(config_load_string(cfg, "[site b.com]\ntimezone = Europe/Berlin\n", "t.ini", err),
              0);
    struct seglog *one = open_test_log(dir, "one");
    struct seglog *part[2] = {open_test_log(dir, "p0"), open_test_log(dir, "p1")};
    snprintf(path, sizeof path, "%s/db1", dir);
    struct store *s1 = tr_open_store(path);
    snprintf(path, sizeof path, "%s/db2", dir);
    struct store *s2 = tr_open_store(path);
    const int64_t base = tr_ts("2026-10-24T12:00:00Z");
    struct seglog *const ones[2] = {one, one};
    append_split(ones, 1200, base, 7);
    append_split(part, 1200, base, 7); /* the same events: rnd restarts from the seed */
    struct rollup_source src1 = {.name = ""};
    evlog_local(one, &src1.log);
    struct rollup_source src2[2] = {{.name = "p0"}, {.name = "p1"}};
    evlog_local(part[0], &src2[0].log);
    evlog_local(part[1], &src2[1].log);
    catch_up_sources(s1, &src1, 1, cfg);
    catch_up_sources(s2, src2, 2, cfg);
    append_split(ones, 600, base + 86400000LL, 8); /* more after a restart */
    append_split(part, 600, base + 86400000LL, 8);
    catch_up_sources(s1, &src1, 1, cfg);
    catch_up_sources(s2, src2, 2, cfg);
    const char *sites[] = {"a.com", "b.com"};
    for (int i = 0; i < 2; i++) {
        struct rollup_digest d1, d2;
        ASSERT_EQ(rollup_digest(s1, sites[i], &d1), 0);
        ASSERT_EQ(rollup_digest(s2, sites[i], &d2), 0);
        ASSERT_TRUE(d1.cells > 0 && d1.visits > 0);
        /* Every rollup cell is identical. Stored visits are keyed by the log offset of their
         * first event (a tie-breaker), which differs between the two layouts: compare their
         * number (their metrics are in the cells). */
        ASSERT_STREQ(d1.cells_hex, d2.cells_hex);
        ASSERT_EQ(d1.visits, d2.visits);
    }
    struct rollup_digest inc;
    ASSERT_EQ(rollup_digest(s2, NULL, &inc), 0);
    /* each source keeps its own cursor */
    uint64_t c0 = 0, c1 = 0;
    ASSERT_EQ(store_meta_get_u64(s2, "raw.p0.cursor", &c0), 0);
    ASSERT_EQ(store_meta_get_u64(s2, "raw.p1.cursor", &c1), 0);
    ASSERT_EQ(c0, seglog_committed_offset(part[0]));
    ASSERT_EQ(c1, seglog_committed_offset(part[1]));
    ASSERT_EQ(c0 + c1, 1800);
    /* a rebuild over both sources gives the incremental result */
    struct rollup_rebuild_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.cfg = cfg;
    struct rollup_rebuild_summary sum;
    ASSERT_EQ(rollup_rebuild(s2, src2, 2, &ro, &sum), 0);
    ASSERT_EQ(sum.events_read, 1800);
    ASSERT_STREQ(sum.digest.hex, inc.hex);
    ro.site = "b.com";
    ASSERT_EQ(rollup_rebuild(s2, src2, 2, &ro, &sum), 0);
    ASSERT_STREQ(sum.digest.hex, inc.hex);
    store_close(s1);
    store_close(s2);
    seglog_close(one);
    seglog_close(part[0]);
    seglog_close(part[1]);
    config_free(cfg);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Live consumers under steady traffic: they keep up and flush about every 100 ms
 * (CAUGHT_UP_FLUSH_MS in consumer.c), not once per read burst (they once flushed each time
 * they caught up with the log: hundreds of RocksDB batches a second under load, most of a
 * core); and what they hold is flushed when the traffic stops, well before flush_interval_ms. */
TEST(live_consumers_flush_in_time_not_per_burst)
{
    struct fixture f;
    fixture_open(&f, test_tmpdir());
    struct tally_config *cfg = f.cfg;
    struct seglog *log = f.log;
    struct store *s = f.s;
    struct rollup_config rc;
    rollup_config_default(&rc);
    rc.cfg = cfg;
    rc.flush_interval_ms = 30000; /* only the caught-up flush can make events visible */
    struct rollup_service *svc = NULL;
    struct rollup_source src = {.name = ""};
    evlog_local(log, &src.log);
    ASSERT_EQ(rollup_service_start(s, &src, 1, &rc, &svc), 0);

    const int64_t base = tr_ts("2026-10-24T12:00:00Z");
    const int bursts = 200;
    const int64_t t0 = mono_ms();
    for (int i = 0; i < bursts; i++) {
        append_events(log, 10, base + i * 60000LL, 100 + (uint64_t)i);
        sleep_ms(1);
    }
    const int64_t traffic_ms = mono_ms() - t0;
    /* every event is flushed (cursor saved with the output) within a second of the last */
    struct rollup_lag lag;
    int64_t waited_ms = 0;
    const int64_t t1 = mono_ms();
    for (;;) {
        rollup_service_lag(svc, &lag);
        waited_ms = mono_ms() - t1;
        if (lag.raw_cursor == lag.log_end && lag.rollup_cursor == lag.log_end) break;
        if (waited_ms > 1000) break;
        sleep_ms(5);
    }
    ASSERT_EQ(lag.raw_cursor, lag.log_end);
    ASSERT_EQ(lag.rollup_cursor, lag.log_end);
    ASSERT_TRUE(waited_ms <= 1000);
    ASSERT_EQ(lag.rollup_events, (uint64_t)bursts * 10);
    /* about one flush per 100 ms of traffic and waiting (plus the last), not one per burst */
    const uint64_t bound = (uint64_t)((traffic_ms + waited_ms) / 100) + 3;
    if (lag.raw_flushes > bound || lag.rollup_flushes > bound)
        printf("  flushes raw %llu rollup %llu over %lld ms (bound %llu)\n",
               (unsigned long long)lag.raw_flushes, (unsigned long long)lag.rollup_flushes,
               (long long)(traffic_ms + waited_ms), (unsigned long long)bound);
    ASSERT_TRUE(lag.raw_flushes >= 1 && lag.raw_flushes <= bound);
    ASSERT_TRUE(lag.rollup_flushes >= 1 && lag.rollup_flushes <= bound);
    ASSERT_TRUE(bound < (uint64_t)bursts); /* else the test could not tell */
    /* woken at most once per CAUGHT_UP_LINGER_MS (10 ms), not once per group commit */
    const uint64_t wake_bound = (uint64_t)((traffic_ms + waited_ms) / 10) + 3;
    const uint64_t commits = bursts; /* at least one per burst: each waits for its commit */
    if (lag.raw_wakeups > wake_bound || lag.rollup_wakeups > wake_bound)
        printf("  wake-ups raw %llu rollup %llu over %lld ms (bound %llu)\n",
               (unsigned long long)lag.raw_wakeups, (unsigned long long)lag.rollup_wakeups,
               (long long)(traffic_ms + waited_ms), (unsigned long long)wake_bound);
    ASSERT_TRUE(lag.raw_wakeups <= wake_bound && lag.rollup_wakeups <= wake_bound);
    ASSERT_TRUE(wake_bound < commits); /* else the test could not tell */
    rollup_service_stop(svc);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", 0,
                                      INT64_MAX / 2);
    ASSERT_TRUE(m.pageviews > 0);
    fixture_close(&f);
}

/* The raw consumer writes a backlog of large events in batches of about RAW_FLUSH_BYTES_MAX
 * (1 MiB of strings and props, consumer.c), not all at once: one batch must fit next to a
 * nearly full disk (test_diskfull: a whole backlog written at once after the recovery filled
 * the disk again). */
TEST(raw_consumer_flushes_large_backlogs_in_pieces)
{
    struct fixture f;
    fixture_open(&f, test_tmpdir());
    struct tally_config *cfg = f.cfg;
    struct seglog *log = f.log;
    struct store *s = f.s;
    static char pad[1900];
    memset(pad, 'p', sizeof pad);
    const int n = 2000; /* ~3.8 MiB of props */
    uint64_t before = atomic_load(&done_count);
    for (int i = 0; i < n; i++) {
        struct event ev;
        event_init(&ev);
        char id[32];
        snprintf(id, sizeof id, "big%d", i);
        ev.received_ms = ev.ts_ms = tr_ts("2026-10-24T12:00:00Z") + i;
        ev.site = (struct event_str){"a.com", 5};
        ev.url = (struct event_str){"https://a.com/", 14};
        ev.visitor = 1 + (uint64_t)i % 50;
        ev.client_id = (struct event_str){id, strlen(id)};
        struct event_prop prop = {{"pad", 3}, {pad, sizeof pad}, EVENT_PROP_STRING};
        ev.props = &prop;
        ev.props_count = 1;
        static uint8_t buf[8192];
        int len = event_encode(&ev, buf, sizeof buf);
        ASSERT_TRUE(len > 0);
        struct seglog_rec rec = {buf, (uint32_t)len, ev.received_ms};
        while (seglog_append(log, &rec, 1, on_done, NULL) == TALLY_EFULL) sleep_ms(1);
    }
    while (atomic_load(&done_count) < before + (uint64_t)n) sleep_ms(2);
    struct rollup_config rc;
    rollup_config_default(&rc);
    rc.cfg = cfg;
    struct evlog el;
    evlog_local(log, &el);
    struct consumer_status st;
    memset(&st, 0, sizeof st);
    ASSERT_EQ(consumer_run_raw(s, &el, "raw.", &rc, seglog_committed_offset(log), false, &st),
              0);
    ASSERT_EQ(atomic_load(&st.cursor), seglog_committed_offset(log));
    /* 3.8 MiB in pieces of 1 MiB: 4 batches (the last one at the end), not 1 */
    ASSERT_TRUE(atomic_load(&st.flushes) >= 4);
    ASSERT_TRUE(atomic_load(&st.flushes) <= 5);
    struct counts c = {0};
    ASSERT_EQ(raw_scan(s, tr_site(s, "a.com"), 0, INT64_MAX / 2, count_raw, &c), 0);
    ASSERT_EQ(c.n, (uint64_t)n);
    fixture_close(&f);
}

int main(void)
{
    if (ua_init(1024) != 0 || bots_init() != 0 || referrer_init() != 0) {
        printf("FAIL test_rollup_log.init\n");
        return 1;
    }
    RUN(service_and_rebuilds_agree);
    RUN(partitioned_sources_match_one_log);
    RUN(live_consumers_flush_in_time_not_per_burst);
    RUN(raw_consumer_flushes_large_backlogs_in_pieces);
    referrer_shutdown();
    bots_shutdown();
    ua_shutdown();
    tz_shutdown();
    return test_summary();
}
