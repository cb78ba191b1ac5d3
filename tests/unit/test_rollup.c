/* Unit tests for the sessions/rollups engine on hand-made event sequences: visit rules,
 * buckets across midnight and DST, half-hour zones, late events, duplicates, exclusions. */
#include "test.h"

#include "test_rollup_util.h"

#include "store/memo.h"

static uint64_t next_off;

/* Adds one pageview/custom event; returns its offset. */
static uint64_t add(struct engine *e, const char *site, const char *at, uint64_t visitor,
                    const char *name, const char *path)
{
    struct tr_event t;
    tr_init(&t, site, next_off++, tr_ts(at), visitor, name, path);
    if (engine_add(e, &t.ev) != 0) abort();
    return t.ev.offset;
}

static void add_ev(struct engine *e, struct tr_event *t)
{
    t->ev.offset = next_off++;
    if (engine_add(e, &t->ev) != 0) abort();
}

#define H(at) tr_ts(at), tr_ts(at) + 60000 /* the bucket starting exactly at `at` */

TEST(basic_visit_metrics)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    add(e, "a.com", "2026-01-10T10:00:00Z", 1, "pageview", "/");
    add(e, "a.com", "2026-01-10T10:05:00Z", 1, "pageview", "/pricing");
    add(e, "a.com", "2026-01-10T10:10:00Z", 1, "Signup", "/pricing");
    add(e, "a.com", "2026-01-10T10:30:00Z", 2, "pageview", "/");
    ASSERT_EQ(engine_flush(e), 0);
    ASSERT_EQ(engine_cursor(e), 4);

    struct rollup_metrics m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "",
                                      H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.pageviews, 3);
    ASSERT_EQ(m.events, 4);
    ASSERT_EQ(m.visits, 2);
    ASSERT_EQ(m.bounces, 1);
    ASSERT_EQ(m.duration_ms, 600000);
    ASSERT_EQ(m.visitors, 2);
    ASSERT_TRUE(m.visitors_exact);

    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_PAGE, "/", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.pageviews, 2);
    ASSERT_EQ(m.visits, 2);
    ASSERT_EQ(m.bounces, 1);
    ASSERT_EQ(m.visitors, 2);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_PAGE, "/pricing", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    ASSERT_EQ(m.events, 2);
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.bounces, 0);
    ASSERT_EQ(m.visitors, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_NAME, "Signup", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.events, 1);
    ASSERT_EQ(m.pageviews, 0);
    ASSERT_EQ(m.visits, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_ENTRY_PAGE, "/", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 2);
    ASSERT_EQ(m.pageviews, 3);
    ASSERT_EQ(m.events, 4);
    ASSERT_EQ(m.visitors, 2);
    ASSERT_EQ(m.bounces, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_EXIT_PAGE, "/pricing", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.events, 3);
    ASSERT_EQ(m.visitors, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_EXIT_PAGE, "/", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.visitors, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_SOURCE, "Direct / None",
                H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 2);
    ASSERT_EQ(m.visitors, 2);
    /* day and minute granularities */
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", H("2026-01-10T00:00:00Z"));
    ASSERT_EQ(m.pageviews, 3);
    ASSERT_EQ(m.visits, 2);
    ASSERT_EQ(m.visitors, 2);
    m = tr_read(s, "a.com", TZ_MINUTE, ROLLUP_DIM_TOTAL, "", H("2026-01-10T10:05:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    ASSERT_EQ(m.visits, 0);
    m = tr_read(s, "a.com", TZ_MINUTE, ROLLUP_DIM_TOTAL, "", tr_ts("2026-01-10T10:00:00Z"),
                tr_ts("2026-01-10T11:00:00Z"));
    ASSERT_EQ(m.pageviews, 3);
    ASSERT_EQ(m.visits, 2);
    ASSERT_EQ(m.visitors, 2);
    engine_close(e);
    store_close(s);
}

TEST(gap_rule)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    add(e, "a.com", "2026-01-10T10:00:00Z", 1, "pageview", "/");
    add(e, "a.com", "2026-01-10T10:29:59.999Z", 1, "pageview", "/"); /* same visit */
    add(e, "a.com", "2026-01-10T10:59:59.999Z", 1, "pageview", "/"); /* exactly 30 min: new */
    add(e, "a.com", "2026-01-10T10:00:00Z", 2, "pageview", "/");
    add(e, "a.com", "2026-01-10T10:30:00Z", 2, "pageview", "/"); /* exactly 30 min: new */
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "",
                                      H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 4);
    ASSERT_EQ(m.bounces, 3);
    ASSERT_EQ(m.duration_ms, 29 * 60000 + 59999);
    engine_close(e);
    store_close(s);
}

TEST(late_event_merges_two_visits)
{
    tr_zone_name = "UTC";
    const char *d1 = test_tmpdir(), *d2 = test_tmpdir();
    struct store *s = tr_open_store(d1);
    struct engine *e = tr_engine(s);
    next_off = 0;
    add(e, "a.com", "2026-01-10T10:00:00Z", 1, "pageview", "/a");
    add(e, "a.com", "2026-01-10T10:50:00Z", 1, "pageview", "/c");
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "",
                                      H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 2);
    ASSERT_EQ(m.bounces, 2);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_EXIT_PAGE, "/a", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visitors, 1);
    /* the late event bridges both visits: one visit of 50 minutes */
    add(e, "a.com", "2026-01-10T10:25:00Z", 1, "pageview", "/b");
    ASSERT_EQ(engine_flush(e), 0);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.bounces, 0);
    ASSERT_EQ(m.pageviews, 3);
    ASSERT_EQ(m.duration_ms, 50 * 60000);
    ASSERT_EQ(m.visitors, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_EXIT_PAGE, "/a", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 0);
    ASSERT_EQ(m.visitors, 0); /* retracted from the exact multiset */
    ASSERT_EQ(m.pageviews, 0);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_EXIT_PAGE, "/c", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.pageviews, 3);
    ASSERT_EQ(m.visitors, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_ENTRY_PAGE, "/c", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 0);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_PAGE, "/c", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.bounces, 0);
    struct rollup_digest late, inorder;
    ASSERT_EQ(rollup_digest(s, NULL, &late), 0);
    ASSERT_EQ(late.visits, 1);
    engine_close(e);
    store_close(s);

    /* the same events in time order give the same rollups */
    s = tr_open_store(d2);
    e = tr_engine(s);
    add(e, "a.com", "2026-01-10T10:00:00Z", 1, "pageview", "/a");
    add(e, "a.com", "2026-01-10T10:25:00Z", 1, "pageview", "/b");
    add(e, "a.com", "2026-01-10T10:50:00Z", 1, "pageview", "/c");
    ASSERT_EQ(engine_flush(e), 0);
    ASSERT_EQ(rollup_digest(s, NULL, &inorder), 0);
    ASSERT_STREQ(late.cells_hex, inorder.cells_hex);
    engine_close(e);
    store_close(s);
}

TEST(late_event_becomes_first)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    struct tr_event t;
    tr_init(&t, "a.com", 0, tr_ts("2026-01-10T10:10:00Z"), 1, "pageview", "/x");
    tr_set(&t, DE_SOURCE, "Google");
    add_ev(e, &t);
    ASSERT_EQ(engine_flush(e), 0);
    /* close and reopen: the visit must come back from the sessions CF */
    engine_close(e);
    e = tr_engine(s);
    tr_init(&t, "a.com", 0, tr_ts("2026-01-10T09:55:00Z"), 1, "pageview", "/y");
    tr_set(&t, DE_SOURCE, "Twitter");
    add_ev(e, &t);
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_SOURCE, "Google",
                                      H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 0);
    ASSERT_EQ(m.visitors, 0);
    ASSERT_EQ(m.pageviews, 0);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_SOURCE, "Twitter", H("2026-01-10T09:00:00Z"));
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.pageviews, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_SOURCE, "Twitter", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 0);
    ASSERT_EQ(m.pageviews, 1); /* the 10:10 event, now in a Twitter visit */
    ASSERT_EQ(m.visitors, 1);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_ENTRY_PAGE, "/y", H("2026-01-10T00:00:00Z"));
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.duration_ms, 15 * 60000);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_ENTRY_PAGE, "/x", H("2026-01-10T00:00:00Z"));
    ASSERT_EQ(m.visits, 0);
    struct engine_stats st;
    engine_get_stats(e, &st);
    ASSERT_EQ(st.session_loads, 1);
    engine_close(e);
    store_close(s);
}

TEST(midnight_berlin)
{
    tr_zone_name = "Europe/Berlin";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    add(e, "a.com", "2026-01-10T22:50:00Z", 1, "pageview", "/"); /* 23:50 local */
    add(e, "a.com", "2026-01-10T23:10:00Z", 1, "pageview", "/b"); /* 00:10 local, Jan 11 */
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "",
                                      H("2026-01-09T23:00:00Z"));
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.pageviews, 1);
    ASSERT_EQ(m.visitors, 1);
    ASSERT_EQ(m.duration_ms, 20 * 60000);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", H("2026-01-10T23:00:00Z"));
    ASSERT_EQ(m.visits, 0);
    ASSERT_EQ(m.pageviews, 1);
    ASSERT_EQ(m.visitors, 1);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_ENTRY_PAGE, "/", H("2026-01-10T23:00:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    ASSERT_EQ(m.visitors, 1);
    ASSERT_EQ(m.visits, 0);
    /* both days together: one visitor, one visit */
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", tr_ts("2026-01-09T23:00:00Z"),
                tr_ts("2026-01-11T23:00:00Z"));
    ASSERT_EQ(m.visitors, 1);
    ASSERT_EQ(m.visits, 1);
    ASSERT_EQ(m.pageviews, 2);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_EXIT_PAGE, "/b", tr_ts("2026-01-09T23:00:00Z"),
                tr_ts("2026-01-11T23:00:00Z"));
    ASSERT_EQ(m.visitors, 1);
    ASSERT_EQ(m.pageviews, 2);
    engine_close(e);
    store_close(s);
}

TEST(dst_changes)
{
    tr_zone_name = "Europe/Berlin";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    /* fall back: 02:30 CEST and 02:30 CET share the local hour 02 (one bucket, two hours) */
    add(e, "a.com", "2026-10-25T00:30:00Z", 1, "pageview", "/");
    add(e, "a.com", "2026-10-25T01:30:00Z", 2, "pageview", "/");
    add(e, "a.com", "2026-10-25T02:30:00Z", 3, "pageview", "/");
    /* spring forward: 01:30 CET and 03:30 CEST are neighbouring local hours */
    add(e, "a.com", "2026-03-29T00:30:00Z", 4, "pageview", "/");
    add(e, "a.com", "2026-03-29T01:30:00Z", 5, "pageview", "/");
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "",
                                      H("2026-10-25T00:00:00Z"));
    ASSERT_EQ(m.pageviews, 2);
    ASSERT_EQ(m.visitors, 2);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-10-25T01:00:00Z"));
    ASSERT_EQ(m.pageviews, 0);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-10-25T02:00:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", H("2026-10-24T22:00:00Z"));
    ASSERT_EQ(m.pageviews, 3);
    ASSERT_EQ(m.visits, 3);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-03-29T00:00:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-03-29T01:00:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", H("2026-03-28T23:00:00Z"));
    ASSERT_EQ(m.pageviews, 2);
    /* a series over the fall-back day lists the 25-hour day's hour buckets */
    engine_close(e);
    store_close(s);

    tr_zone_name = "America/New_York";
    s = tr_open_store(test_tmpdir());
    e = tr_engine(s);
    add(e, "a.com", "2026-11-01T05:30:00Z", 1, "pageview", "/"); /* 01:30 EDT */
    add(e, "a.com", "2026-11-01T06:30:00Z", 2, "pageview", "/"); /* 01:30 EST */
    add(e, "a.com", "2026-11-02T04:59:00Z", 3, "pageview", "/"); /* 23:59 EST, Nov 1 */
    ASSERT_EQ(engine_flush(e), 0);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-11-01T05:00:00Z"));
    ASSERT_EQ(m.pageviews, 2);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", H("2026-11-01T04:00:00Z"));
    ASSERT_EQ(m.pageviews, 3);
    engine_close(e);
    store_close(s);
}

TEST(odd_offsets)
{
    tr_zone_name = "Asia/Kathmandu";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    add(e, "a.com", "2026-01-15T00:10:00Z", 1, "pageview", "/");
    add(e, "a.com", "2026-01-15T00:20:00Z", 2, "pageview", "/");
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "",
                                      H("2026-01-14T23:15:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-01-15T00:15:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", H("2026-01-14T18:15:00Z"));
    ASSERT_EQ(m.pageviews, 2);
    engine_close(e);
    store_close(s);

    tr_zone_name = "Asia/Kolkata";
    s = tr_open_store(test_tmpdir());
    e = tr_engine(s);
    add(e, "a.com", "2026-01-15T00:10:00Z", 1, "pageview", "/");
    ASSERT_EQ(engine_flush(e), 0);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-01-14T23:30:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", H("2026-01-14T18:30:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    engine_close(e);
    store_close(s);
}

TEST(duplicates)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    struct tr_event t;
    tr_init(&t, "a.com", 0, tr_ts("2026-01-10T10:00:00Z"), 1, "pageview", "/");
    tr_client_id(&t, "id-1");
    add_ev(e, &t);
    ASSERT_EQ(engine_flush(e), 0);
    engine_close(e); /* the dedup state survives a restart */
    e = tr_engine(s);
    t.ev.received_ms = tr_ts("2026-01-10T11:00:00Z"); /* a retry 1 h later: duplicate */
    add_ev(e, &t);
    tr_init(&t, "b.com", 0, tr_ts("2026-01-10T10:00:00Z"), 1, "pageview", "/");
    tr_client_id(&t, "id-1"); /* same id, other site: not a duplicate */
    t.ev.received_ms = tr_ts("2026-01-10T11:30:00Z");
    add_ev(e, &t);
    tr_init(&t, "a.com", 0, tr_ts("2026-01-10T10:00:00Z"), 1, "pageview", "/");
    tr_client_id(&t, "id-1");
    t.ev.received_ms = tr_ts("2026-01-11T10:00:01Z"); /* more than 24 h later: counted */
    add_ev(e, &t);
    t.ev.received_ms = tr_ts("2026-01-11T10:00:02Z"); /* and that one is the new first */
    add_ev(e, &t);
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "",
                                      H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.pageviews, 2);
    m = tr_read(s, "b.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.pageviews, 1);
    struct engine_stats st;
    engine_get_stats(e, &st);
    ASSERT_EQ(st.events_duplicate, 2);
    engine_close(e);
    store_close(s);
}

TEST(exclusions_and_bounces)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    struct tr_event t;
    /* a bot and a foreign host: not counted at all */
    tr_init(&t, "a.com", 0, tr_ts("2026-01-10T10:00:00Z"), 9, "pageview", "/");
    t.ev.flags = DE_F_BOT;
    add_ev(e, &t);
    t.ev.flags = DE_F_HOST_NOT_ALLOWED;
    add_ev(e, &t);
    tr_init(&t, "a.com", 0, tr_ts("2026-01-10T10:00:00Z"), 9, "engagement", "/");
    add_ev(e, &t);
    /* visitor 1: pageview + non-interactive event: still a bounce */
    add(e, "a.com", "2026-01-10T10:00:00Z", 1, "pageview", "/");
    tr_init(&t, "a.com", 0, tr_ts("2026-01-10T10:01:00Z"), 1, "Scroll", "/");
    t.ev.interactive = false;
    add_ev(e, &t);
    /* visitor 2: pageview + interactive event: not a bounce */
    add(e, "a.com", "2026-01-10T10:00:00Z", 2, "pageview", "/");
    add(e, "a.com", "2026-01-10T10:01:00Z", 2, "Click", "/");
    /* visitor 3: two pageviews: not a bounce; visitor 4: only a custom event: not a bounce */
    add(e, "a.com", "2026-01-10T10:00:00Z", 3, "pageview", "/");
    add(e, "a.com", "2026-01-10T10:02:00Z", 3, "pageview", "/x");
    add(e, "a.com", "2026-01-10T10:00:00Z", 4, "Click", "/");
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "",
                                      H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 4);
    ASSERT_EQ(m.bounces, 1);
    ASSERT_EQ(m.visitors, 4);
    ASSERT_EQ(m.pageviews, 4);
    ASSERT_EQ(m.events, 7);
    struct engine_stats st;
    engine_get_stats(e, &st);
    ASSERT_EQ(st.events_excluded, 2);
    ASSERT_EQ(st.events_filtered, 1);
    engine_close(e);
    store_close(s);
}

TEST(props_revenue_and_minute_retention)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    struct tr_event t;
    tr_init(&t, "a.com", 0, tr_ts("2026-01-10T10:00:00Z"), 1, "Purchase", "/checkout");
    tr_prop(&t, "plan", "pro");
    t.ev.has_revenue = true;
    t.ev.revenue_micros = 12500000;
    memcpy(t.ev.currency, "EUR", 4);
    tr_set(&t, DE_SOURCE, "Google");
    add_ev(e, &t);
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_PROP, "plan\0pro",
                                      H("2026-01-10T10:00:00Z"));
    /* tr_read uses strlen: read the prop value with its NUL explicitly */
    uint32_t site = tr_site(s, "a.com");
    ASSERT_EQ(rollup_read_value(s, site, TZ_HOUR, ROLLUP_DIM_PROP, "plan\0pro", 8,
                                H("2026-01-10T10:00:00Z"), &m),
              0);
    ASSERT_EQ(m.events, 1);
    ASSERT_EQ(m.visitors, 1);
    ASSERT_EQ(m.visits, 1);
    m = tr_read(s, "a.com", TZ_DAY, ROLLUP_DIM_TOTAL, "", H("2026-01-10T00:00:00Z"));
    ASSERT_EQ(m.nrev, 1);
    ASSERT_STREQ(m.rev[0].cur, "EUR");
    ASSERT_EQ(m.rev[0].micros, 12500000);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_SOURCE, "Google", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.nrev, 1);
    ASSERT_EQ(m.rev[0].micros, 12500000);
    m = tr_read(s, "a.com", TZ_MINUTE, ROLLUP_DIM_TOTAL, "", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.events, 1);
    /* three days later the minute cells of Jan 10 are gone, hour cells stay */
    add(e, "a.com", "2026-01-13T10:00:00Z", 2, "pageview", "/");
    ASSERT_EQ(engine_flush(e), 0);
    m = tr_read(s, "a.com", TZ_MINUTE, ROLLUP_DIM_TOTAL, "", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.events, 0);
    m = tr_read(s, "a.com", TZ_MINUTE, ROLLUP_DIM_TOTAL, "", H("2026-01-13T10:00:00Z"));
    ASSERT_EQ(m.events, 1);
    m = tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.events, 1);
    engine_close(e);
    store_close(s);
}

static int count_series(void *arg, int64_t bucket_ms, const struct rollup_metrics *m)
{
    (void)bucket_ms;
    *(int64_t *)arg += m->pageviews;
    return 0;
}

struct bd {
    int n;
    char first[32];
    int64_t first_visits;
};

static int collect_bd(void *arg, const char *value, size_t vlen, const struct rollup_metrics *m)
{
    struct bd *b = arg;
    if (b->n++ == 0) {
        snprintf(b->first, sizeof b->first, "%.*s", (int)vlen, value);
        b->first_visits = m->visits;
    }
    return 0;
}

TEST(series_and_breakdown)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    add(e, "a.com", "2026-01-10T10:00:00Z", 1, "pageview", "/a");
    add(e, "a.com", "2026-01-10T12:00:00Z", 2, "pageview", "/b");
    add(e, "a.com", "2026-01-11T12:00:00Z", 3, "pageview", "/a");
    ASSERT_EQ(engine_flush(e), 0);
    uint32_t site = tr_site(s, "a.com");
    int64_t pv = 0;
    ASSERT_EQ(rollup_read_series(s, site, TZ_HOUR, ROLLUP_DIM_TOTAL, "", 0,
                                 tr_ts("2026-01-10T00:00:00Z"), tr_ts("2026-01-12T00:00:00Z"),
                                 count_series, &pv),
              0);
    ASSERT_EQ(pv, 3);
    struct bd b = {0};
    ASSERT_EQ(rollup_read_breakdown(s, site, TZ_DAY, ROLLUP_DIM_ENTRY_PAGE,
                                    tr_ts("2026-01-10T00:00:00Z"), tr_ts("2026-01-12T00:00:00Z"),
                                    0, collect_bd, &b),
              0);
    ASSERT_EQ(b.n, 2);
    ASSERT_STREQ(b.first, "/a");
    ASSERT_EQ(b.first_visits, 2);
    engine_close(e);
    store_close(s);
}

/* rollup_read_matching over the values a predicate accepts: visitors are one union, sums add
 * up; with one_value, a second accepted value stops the read (TALLY_ENOTSUP), one does not. */
static bool starts_with_a(void *arg, const char *value, size_t vlen)
{
    (void)arg;
    return vlen >= 2 && value[1] == 'a';
}

static bool is_b(void *arg, const char *value, size_t vlen)
{
    (void)arg;
    return vlen == 2 && memcmp(value, "/b", 2) == 0;
}

static int count_buckets(void *arg, int64_t bucket_ms, const struct rollup_metrics *m)
{
    (void)bucket_ms;
    (void)m;
    ++*(int *)arg;
    return 0;
}

TEST(matching_values_and_one_value)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    add(e, "a.com", "2026-01-10T10:00:00Z", 1, "pageview", "/a1");
    add(e, "a.com", "2026-01-10T10:01:00Z", 1, "pageview", "/a2");
    add(e, "a.com", "2026-01-10T11:00:00Z", 2, "pageview", "/b");
    add(e, "a.com", "2026-01-11T12:00:00Z", 3, "pageview", "/a1");
    ASSERT_EQ(engine_flush(e), 0);
    uint32_t site = tr_site(s, "a.com");
    int64_t from = tr_ts("2026-01-10T00:00:00Z"), to = tr_ts("2026-01-12T00:00:00Z");
    struct rollup_metrics m;
    ASSERT_EQ(rollup_read_matching(s, site, TZ_DAY, ROLLUP_DIM_PAGE, starts_with_a, NULL, from, to,
                                   false, &m),
              0);
    ASSERT_EQ(m.pageviews, 3);
    ASSERT_EQ(m.visitors, 2); /* visitor 1 under /a1 and /a2 counts once */
    ASSERT_EQ(m.visits, 3);   /* a sum: visitor 1's one visit once per value */
    ASSERT_EQ(rollup_read_matching(s, site, TZ_DAY, ROLLUP_DIM_PAGE, starts_with_a, NULL, from, to,
                                   true, &m),
              TALLY_ENOTSUP);
    ASSERT_EQ(
        rollup_read_matching(s, site, TZ_DAY, ROLLUP_DIM_PAGE, is_b, NULL, from, to, true, &m), 0);
    ASSERT_EQ(m.pageviews, 1);
    ASSERT_EQ(m.visits, 1);
    int nb = 0;
    ASSERT_EQ(rollup_read_series_matching(s, site, TZ_DAY, ROLLUP_DIM_PAGE, starts_with_a, NULL,
                                          from, to, true, count_buckets, &nb),
              TALLY_ENOTSUP);
    nb = 0;
    ASSERT_EQ(rollup_read_series_matching(s, site, TZ_DAY, ROLLUP_DIM_PAGE, starts_with_a, NULL,
                                          from, to, false, count_buckets, &nb),
              0);
    ASSERT_EQ(nb, 2);
    engine_close(e);
    store_close(s);
}

/* Day breakdowns are kept in the store's memo: a repeat is a hit, a flush that changes a day
 * of the range makes the next read compute again (never a stale answer), a flush elsewhere
 * does not. */
static int join_bd(void *arg, const char *value, size_t vlen, const struct rollup_metrics *m)
{
    (void)m;
    char *out = arg;
    size_t n = strlen(out);
    snprintf(out + n, 64 - n, "%.*s ", (int)vlen, value);
    return 0;
}

static int join_vis(void *arg, const char *value, size_t vlen, const struct rollup_metrics *m)
{
    char *out = arg;
    size_t n = strlen(out);
    snprintf(out + n, 64 - n, "%.*s=%llu ", (int)vlen, value, (unsigned long long)m->visitors);
    return 0;
}

TEST(breakdown_memo_follows_the_engine)
{
    tr_zone_name = "Europe/Berlin";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    add(e, "a.com", "2026-01-10T10:00:00Z", 1, "pageview", "/a");
    add(e, "a.com", "2026-01-11T12:00:00Z", 2, "pageview", "/b");
    ASSERT_EQ(engine_flush(e), 0);
    uint32_t site = tr_site(s, "a.com");
    const int64_t from = tr_ts("2026-01-09T23:00:00Z"), to = tr_ts("2026-01-11T23:00:00Z");
    struct memo_stats st0, st;
    memo_stats(store_memo(s), &st0);
    struct bd b = {0};
    ASSERT_EQ(rollup_read_breakdown(s, site, TZ_DAY, ROLLUP_DIM_PAGE, from, to, 0, collect_bd,
                                    &b), 0);
    ASSERT_EQ(b.n, 2);
    memset(&b, 0, sizeof b);
    ASSERT_EQ(rollup_read_breakdown(s, site, TZ_DAY, ROLLUP_DIM_PAGE, from, to, 0, collect_bd,
                                    &b), 0);
    ASSERT_EQ(b.n, 2);
    memo_stats(store_memo(s), &st);
    ASSERT_EQ(st.hits, st0.hits + 1);
    /* a new page on the range's last local day (Jan 11, 23:30 Berlin) */
    add(e, "a.com", "2026-01-11T22:30:00Z", 3, "pageview", "/0");
    ASSERT_EQ(engine_flush(e), 0);
    memset(&b, 0, sizeof b);
    ASSERT_EQ(rollup_read_breakdown(s, site, TZ_DAY, ROLLUP_DIM_PAGE, from, to, 0, collect_bd,
                                    &b), 0);
    ASSERT_EQ(b.n, 3);
    ASSERT_STREQ(b.first, "/0");
    /* the next local day (Jan 12 00:30 Berlin) is outside: the answer is kept */
    memo_stats(store_memo(s), &st0);
    add(e, "a.com", "2026-01-11T23:30:00Z", 4, "pageview", "/1");
    ASSERT_EQ(engine_flush(e), 0);
    memset(&b, 0, sizeof b);
    ASSERT_EQ(rollup_read_breakdown(s, site, TZ_DAY, ROLLUP_DIM_PAGE, from, to, 0, collect_bd,
                                    &b), 0);
    ASSERT_EQ(b.n, 3);
    memo_stats(store_memo(s), &st);
    ASSERT_EQ(st.hits, st0.hits + 1);
    /* a visit dimension changed by a later event of an open visit: the exit page of
     * visitor 2's visit of Jan 11 moves from /b to /c */
    char vals[64] = "";
    ASSERT_EQ(rollup_read_breakdown(s, site, TZ_DAY, ROLLUP_DIM_EXIT_PAGE, from, to, 0,
                                    join_bd, vals), 0);
    ASSERT_STREQ(vals, "/0 /a /b ");
    vals[0] = 0;
    ASSERT_EQ(rollup_read_breakdown(s, site, TZ_DAY, ROLLUP_DIM_EXIT_PAGE, from, to, 0,
                                    join_bd, vals), 0);
    ASSERT_STREQ(vals, "/0 /a /b ");
    add(e, "a.com", "2026-01-11T12:05:00Z", 2, "pageview", "/c");
    ASSERT_EQ(engine_flush(e), 0);
    vals[0] = 0;
    ASSERT_EQ(rollup_read_breakdown(s, site, TZ_DAY, ROLLUP_DIM_EXIT_PAGE, from, to, 0,
                                    join_bd, vals), 0);
    ASSERT_STREQ(vals, "/0 /a /c ");
    engine_close(e);
    store_close(s);
}

/* rollup_read_breakdown_split with the split at the range's last day (what the planner does):
 * a change on the last day reuses the kept state of the days before it (a memo hit) and still
 * counts a visitor seen on both sides once; a change before it drops that state. */
TEST(breakdown_split_keeps_the_days_before_today)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = tr_engine(s);
    next_off = 0;
    for (int v = 1; v <= 6; v++) {
        char at[32];
        snprintf(at, sizeof at, "2026-01-%02dT10:00:00Z", 10 + v % 3);
        add(e, "a.com", at, (uint64_t)v, "pageview", v % 2 ? "/a" : "/b");
    }
    ASSERT_EQ(engine_flush(e), 0);
    uint32_t site = tr_site(s, "a.com");
    const int64_t from = tr_ts("2026-01-10T00:00:00Z"), split = tr_ts("2026-01-12T00:00:00Z"),
                  to = tr_ts("2026-01-13T00:00:00Z");
    char v1[64] = "";
    ASSERT_EQ(rollup_read_breakdown_split(s, site, TZ_DAY, ROLLUP_DIM_SOURCE, from, split, to,
                                          0, join_vis, v1), 0);
    ASSERT_STREQ(v1, "Direct / None=6 ");
    struct memo_stats st0, st;
    for (int round = 0; round < 3; round++) {
        memo_stats(store_memo(s), &st0);
        /* "today" (Jan 12) changes: visitor 1 (seen Jan 11) and a new visitor 9 */
        add(e, "a.com", round == 0 ? "2026-01-12T10:00:00Z" : "2026-01-12T11:00:00Z",
            round == 0 ? 1 : 9 + (uint64_t)round, "pageview", "/a");
        ASSERT_EQ(engine_flush(e), 0);
        char got[64] = "";
        ASSERT_EQ(rollup_read_breakdown_split(s, site, TZ_DAY, ROLLUP_DIM_PAGE, from, split, to,
                                              0, join_vis, got), 0);
        memo_stats(store_memo(s), &st);
        if (round > 0) ASSERT_EQ(st.hits, st0.hits + 1); /* the state of Jan 10-11 */
        /* visitors: /a = 1, 3, 5 (+ 10, 11 in later rounds), /b = 2, 4, 6 */
        ASSERT_STREQ(got, round == 0 ? "/a=3 /b=3 " : round == 1 ? "/a=4 /b=3 " : "/a=5 /b=3 ");
    }
    /* a late event on Jan 10 (before the split): the kept state is stale */
    memo_stats(store_memo(s), &st0);
    add(e, "a.com", "2026-01-10T20:00:00Z", 20, "pageview", "/c");
    ASSERT_EQ(engine_flush(e), 0);
    char got[64] = "";
    ASSERT_EQ(rollup_read_breakdown_split(s, site, TZ_DAY, ROLLUP_DIM_PAGE, from, split, to, 0,
                                          join_vis, got), 0);
    ASSERT_STREQ(got, "/a=5 /b=3 /c=1 ");
    memo_stats(store_memo(s), &st);
    ASSERT_EQ(st.stale, st0.stale + 2); /* the answer and the state */
    engine_close(e);
    store_close(s);
}

/* An evicted visitor who comes back a gap or more after the end of their latest visit begins
 * a new visit without a read of the sessions family (the engine remembers where that visit
 * ended); one who comes back within the gap, or with an event before the window, is read
 * back and joins the stored visit. */
static struct engine *evicting_engine(struct store *s)
{
    struct engine_opts o;
    engine_opts_default(&o);
    o.tz_of = tr_tz;
    o.visitors_max = 4; /* beyond 2 in memory, idle visitors are evicted at each flush */
    o.visitor_idle_ms = 60000;
    struct engine *e = NULL;
    if (engine_open(s, &o, &e) != 0) abort();
    return e;
}

static void crowd(struct engine *e, const char *at)
{
    for (uint64_t v = 100; v < 110; v++)
        add(e, "a.com", at, v, "pageview", "/other");
}

static uint64_t loads(struct engine *e)
{
    struct engine_stats st;
    engine_get_stats(e, &st);
    return st.session_loads;
}

TEST(evicted_visitor_returning_after_the_gap_is_not_read_back)
{
    tr_zone_name = "UTC";
    struct store *s = tr_open_store(test_tmpdir());
    struct engine *e = evicting_engine(s);
    next_off = 0;
    add(e, "a.com", "2026-01-10T10:00:00Z", 1, "pageview", "/a");
    add(e, "a.com", "2026-01-10T10:10:00Z", 1, "pageview", "/b");
    add(e, "a.com", "2026-01-10T10:00:00Z", 2, "pageview", "/a");
    crowd(e, "2026-01-10T10:20:00Z");
    ASSERT_EQ(engine_flush(e), 0); /* visitors 1 and 2 are idle: evicted */
    struct engine_stats st;
    engine_get_stats(e, &st);
    ASSERT_TRUE(st.visitors_in_memory <= 10);
    uint64_t l0 = loads(e);
    /* exactly one gap after 10:10: a visit of its own, nothing read */
    add(e, "a.com", "2026-01-10T10:40:00Z", 1, "pageview", "/c");
    ASSERT_EQ(loads(e), l0);
    /* within the gap of visitor 2's stored visit (10:00): read back, and joined */
    add(e, "a.com", "2026-01-10T10:29:59.999Z", 2, "pageview", "/d");
    ASSERT_EQ(loads(e), l0 + 1);
    /* before visitor 1's window: the stored visit is read, and the event joins both visits */
    add(e, "a.com", "2026-01-10T10:39:59.999Z", 1, "pageview", "/e");
    ASSERT_EQ(loads(e), l0 + 2);
    ASSERT_EQ(engine_flush(e), 0);
    struct rollup_metrics m =
        tr_read(s, "a.com", TZ_HOUR, ROLLUP_DIM_TOTAL, "", H("2026-01-10T10:00:00Z"));
    ASSERT_EQ(m.visits, 2 + 10); /* visitor 1: one visit 10:00-10:40; visitor 2: one */
    ASSERT_EQ(m.pageviews, 6 + 10);
    ASSERT_EQ(m.duration_ms, 40 * 60000 + 29 * 60000 + 59999);
    ASSERT_EQ(m.bounces, 10);
    engine_close(e);
    store_close(s);
}

int main(void)
{
    RUN(basic_visit_metrics);
    RUN(gap_rule);
    RUN(evicted_visitor_returning_after_the_gap_is_not_read_back);
    RUN(late_event_merges_two_visits);
    RUN(late_event_becomes_first);
    RUN(midnight_berlin);
    RUN(dst_changes);
    RUN(odd_offsets);
    RUN(duplicates);
    RUN(exclusions_and_bounces);
    RUN(props_revenue_and_minute_retention);
    RUN(series_and_breakdown);
    RUN(matching_values_and_one_value);
    RUN(breakdown_memo_follows_the_engine);
    RUN(breakdown_split_keeps_the_days_before_today);
    tz_shutdown();
    return test_summary();
}
