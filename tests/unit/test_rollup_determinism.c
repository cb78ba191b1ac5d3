/* Determinism of the sessions/rollups engine: random event streams processed incrementally
 * with random batch splits, random kills (drop the engine's memory, sometimes reopen the store,
 * resume from the saved cursor), tiny memory bounds that force evictions and reloads, must
 * give the same digest as one pass over the same log; and the same events arriving in another
 * order must give the same rollup cells. Seeded: any failure replays. */
#include "test.h"

#include "test_rollup_util.h"

static uint64_t rng;
static uint64_t rnd(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return rng >> 17;
}

#define NEV 3000

static struct tr_event evs[NEV];

static const char *site_tz(void *arg, const char *site, size_t len)
{
    (void)arg;
    if (len == 5 && memcmp(site, "b.com", 5) == 0) return "Europe/Berlin";
    if (len == 5 && memcmp(site, "c.com", 5) == 0) return "Asia/Kathmandu";
    return "UTC";
}

/* A log of NEV events: mostly live traffic, some late (up to 72 h) and imported (older),
 * retries with client ids, bots, props, revenue, non-interactive events. */
static void gen(uint64_t seed, bool with_ids)
{
    rng = seed;
    static const char *sites[] = {"a.com", "b.com", "c.com"};
    static const char *paths[] = {"/", "/pricing", "/blog/1", "/blog/2", "/docs", "/signup"};
    static const char *sources[] = {"Direct / None", "Google", "Twitter", "news.ycombinator.com"};
    static const char *browsers[] = {"Chrome", "Firefox", "Safari"};
    static const char *countries[] = {"DE", "US", "NP", ""};
    /* 2026-10-23: the Berlin fall-back (Oct 25) lies inside the window */
    int64_t now = tr_ts("2026-10-23T00:00:00Z");
    for (int i = 0; i < NEV; i++) {
        struct tr_event *t = &evs[i];
        now += (int64_t)(rnd() % 240000); /* ~2 min apart on average: 4 days in all */
        uint64_t visitor = 1 + rnd() % 120;
        int64_t ts = now - (int64_t)(rnd() % 20000);
        int kind = (int)(rnd() % 100);
        if (kind < 8) ts = now - (int64_t)(rnd() % (72LL * 3600 * 1000)); /* late */
        else if (kind < 10) /* an import, ten days old */
            ts = now - 10LL * 86400 * 1000 - (int64_t)(rnd() % 86400000);
        bool pv = rnd() % 4 != 0;
        const char *name = pv ? "pageview" : (rnd() % 2 ? "Signup" : "Scroll");
        tr_init(t, sites[visitor % 3], (uint64_t)i, ts, visitor, name, paths[rnd() % 6]);
        t->ev.received_ms = now;
        tr_set(t, DE_SOURCE, sources[rnd() % 4]);
        tr_set(t, DE_BROWSER, browsers[visitor % 3]);
        tr_set(t, DE_COUNTRY, countries[visitor % 4]);
        tr_set(t, DE_UTM_CAMPAIGN, rnd() % 10 == 0 ? "launch" : "");
        if (!pv && strcmp(name, "Scroll") == 0) t->ev.interactive = false;
        if (rnd() % 30 == 0) t->ev.flags = DE_F_BOT;
        if (rnd() % 7 == 0) tr_prop(t, "plan", rnd() % 2 ? "pro" : "free");
        if (rnd() % 25 == 0) {
            t->ev.has_revenue = true;
            t->ev.revenue_micros = (int64_t)(rnd() % 50000000);
            memcpy(t->ev.currency, rnd() % 3 ? "EUR" : "USD", 4);
        }
        if (with_ids && rnd() % 5 == 0) {
            char id[32];
            snprintf(id, sizeof id, "id-%d", (int)(rnd() % 300)); /* repeats: retries */
            tr_client_id(t, id);
        }
    }
}

static struct engine *open_engine_opts(struct store *s, bool tiny, bool known_empty, bool async)
{
    struct engine_opts o;
    engine_opts_default(&o);
    o.tz_of = site_tz;
    o.known_empty = known_empty;
    o.flush_async = async;
    if (tiny) {
        o.visitors_max = 8; /* evict almost everyone at every flush: reloads from the store */
        o.visitor_idle_ms = 60000;
        o.pending_events_max = 37;
        o.intern_bytes_max = 1; /* clear the intern table at every flush */
    }
    struct engine *e = NULL;
    if (engine_open(s, &o, &e) != 0) abort();
    return e;
}

static bool chaotic_async; /* the chaotic run's engines write on their flush thread */

static struct engine *open_engine(struct store *s, bool tiny)
{
    return open_engine_opts(s, tiny, false, chaotic_async);
}

/* One pass, flushing only when the engine asks and at the end. */
static void one_pass(const char *dir, struct rollup_digest *d)
{
    struct store *s = tr_open_store(dir);
    struct engine *e = open_engine(s, false);
    for (int i = 0; i < NEV; i++) {
        if (engine_add(e, &evs[i].ev) != 0) abort();
        if (engine_should_flush(e) && engine_flush(e) != 0) abort();
    }
    if (engine_flush(e) != 0) abort();
    if (rollup_digest(s, NULL, d) != 0) abort();
    engine_close(e);
    store_close(s);
}

/* Random batches, random flushes, random kills, tiny memory bounds. */
static void chaotic(const char *dir, struct rollup_digest *d, uint64_t seed, int *kills)
{
    uint64_t saved = rng;
    rng = seed;
    struct store *s = tr_open_store(dir);
    struct engine *e = open_engine(s, true);
    *kills = 0;
    while (engine_cursor(e) < NEV) {
        uint64_t from = engine_cursor(e);
        uint64_t n = 1 + rnd() % 200;
        for (uint64_t i = from; i < from + n && i < NEV; i++) {
            if (engine_add(e, &evs[i].ev) != 0) abort();
            if (engine_should_flush(e) && rnd() % 2 && engine_flush(e) != 0) abort();
        }
        int act = (int)(rnd() % 10);
        if (act < 5) {
            if (engine_flush(e) != 0) abort();
        } else if (act < 8) {
            /* kill: whatever was not flushed is lost and must be redone from the cursor */
            engine_close(e);
            (*kills)++;
            if (act == 7) {
                store_close(s);
                s = tr_open_store(dir);
            }
            e = open_engine(s, true);
        }
    }
    if (engine_flush(e) != 0) abort();
    if (rollup_digest(s, NULL, d) != 0) abort();
    engine_close(e);
    store_close(s);
    rng = saved;
}

TEST(incremental_with_kills_equals_one_pass)
{
    for (uint64_t seed = 1; seed <= 3; seed++) {
        gen(seed * 7919, true);
        struct rollup_digest a, b;
        chaotic_async = false;
        one_pass(test_tmpdir(), &a);
        int kills = 0;
        chaotic_async = seed == 3; /* killed with a flush in flight, too */
        chaotic(test_tmpdir(), &b, seed * 104729, &kills);
        chaotic_async = false;
        ASSERT_TRUE(kills > 3);
        ASSERT_TRUE(a.cells > 1000);
        ASSERT_TRUE(a.visits > 100);
        ASSERT_EQ(a.cells, b.cells);
        ASSERT_EQ(a.visits, b.visits);
        ASSERT_STREQ(a.cells_hex, b.cells_hex);
        ASSERT_STREQ(a.visits_hex, b.visits_hex);
        ASSERT_STREQ(a.hex, b.hex);
    }
}

/* The rebuild's engine (known_empty: the store held none of its output when it began) skips
 * reading cells and visits that its bloom filters say it never wrote. With a flush every 37
 * events and visitors evicted at every flush, most cells and visits are written, read back
 * and rewritten many times: a filter that misses one of its own writes loses counts. */
static void known_empty_many_flushes(bool async)
{
    gen(31337, true);
    struct rollup_digest a, b;
    one_pass(test_tmpdir(), &a);
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = open_engine_opts(s, true, true, async);
    size_t flushes = 0;
    for (int i = 0; i < NEV; i++) {
        ASSERT_EQ(engine_add(e, &evs[i].ev), 0);
        if (engine_should_flush(e)) {
            ASSERT_EQ(engine_flush(e), 0);
            flushes++;
        }
    }
    ASSERT_EQ(engine_flush(e), 0);
    ASSERT_EQ(engine_sync(e), 0);
    ASSERT_EQ(rollup_digest(s, NULL, &b), 0);
    struct engine_stats st;
    engine_get_stats(e, &st);
    engine_close(e);
    store_close(s);
    ASSERT_TRUE(flushes > 50);
    ASSERT_TRUE(st.session_loads > 100);         /* evicted visitors came back: reads of visits */
    ASSERT_TRUE(st.cells_written > 2 * a.cells); /* cells read back and rewritten */
    ASSERT_EQ(a.cells, b.cells);
    ASSERT_EQ(a.visits, b.visits);
    ASSERT_STREQ(a.cells_hex, b.cells_hex);
    ASSERT_STREQ(a.visits_hex, b.visits_hex);
}

/* The rebuild's engine (known_empty: the store held none of its output when it began) skips
 * reading cells and visits that its bloom filters say it never wrote. With a flush every 37
 * events and visitors evicted at every flush, most cells and visits are written, read back
 * and rewritten many times: a filter that misses one of its own writes loses counts. The
 * rebuild also writes on the engine's flush thread (flush_async) while it adds: reads of
 * visits must wait for the batch in flight. */
TEST(known_empty_engine_with_many_flushes_equals_one_pass)
{
    known_empty_many_flushes(false);
    known_empty_many_flushes(true);
}

TEST(arrival_order_does_not_matter)
{
    gen(4242, false);
    struct rollup_digest a, b;
    one_pass(test_tmpdir(), &a);
    /* the same events in another log order: shuffle which event arrives when, keeping the
     * arrival clock monotone (received times stay with their positions) */
    int64_t recv[NEV];
    for (int i = 0; i < NEV; i++) recv[i] = evs[i].ev.received_ms;
    rng = 99;
    for (int i = NEV - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint64_t)(i + 1));
        struct tr_event t = evs[i];
        evs[i] = evs[j];
        evs[j] = t;
    }
    for (int i = 0; i < NEV; i++) {
        tr_fix(&evs[i]);
        evs[i].ev.offset = (uint64_t)i;
        evs[i].ev.received_ms = recv[i];
    }
    one_pass(test_tmpdir(), &b);
    ASSERT_EQ(a.cells, b.cells);
    ASSERT_STREQ(a.cells_hex, b.cells_hex);
    ASSERT_EQ(a.visits, b.visits);
}

int main(void)
{
    RUN(incremental_with_kills_equals_one_pass);
    RUN(known_empty_engine_with_many_flushes_equals_one_pass);
    RUN(arrival_order_does_not_matter);
    tz_shutdown();
    return test_summary();
}
