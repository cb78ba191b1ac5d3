/* Unit tests for funnels (query/funnel.h): the depth rule on hand-made sequences (strict vs
 * loose, windows, repeated steps, an event matching two steps), then funnel_compute over a raw
 * store: steps within a visit vs within a window, visits across the range edges, filters (each
 * unfiltered case under both plans), and a differential test: random events written by many
 * flushes in shuffled order (hours of several interleaved blocks, late events, bots,
 * engagement events) and random funnels, the streaming plan against the visits plan. */
#include "test.h"

#include "test_rollup_util.h"

#include "query/funnel.h"
#include "store/raw.h"

#define MIN (60 * 1000LL)

static size_t depth(const char *steps_of_events, bool strict, int64_t window_ms)
{
    /* "0 1 x 2": one event per token, a minute apart; a digit = matches that step, "x" = a
     * step event of no interest here (matches step 7), "01" = matches steps 0 and 1 */
    struct funnel_ev ev[32];
    size_t n = 0;
    const char *p = steps_of_events;
    while (*p) {
        while (*p == ' ') p++;
        if (!*p) break;
        uint32_t m = 0;
        for (; *p && *p != ' '; p++) m |= *p == 'x' ? 1u << 7 : 1u << (*p - '0');
        ev[n] = (struct funnel_ev){(int64_t)n * MIN, m};
        n++;
    }
    return funnel_depth(ev, n, 3, strict, window_ms);
}

TEST(depth_loose_and_strict)
{
    ASSERT_EQ(depth("0 1 2", false, 0), 3);
    ASSERT_EQ(depth("0 1 2", true, 0), 3);
    ASSERT_EQ(depth("0 x 1 2", false, 0), 3); /* loose: anything between */
    ASSERT_EQ(depth("0 x 1 2", true, 0), 1);  /* strict: another step event breaks it */
    ASSERT_EQ(depth("0 0 1 2", true, 0), 3);  /* strict: start at the second 0 */
    ASSERT_EQ(depth("1 2 0", false, 0), 1);   /* order matters */
    ASSERT_EQ(depth("2 1", false, 0), 0);     /* no first step: nothing */
    ASSERT_EQ(depth("01 2", false, 0), 1);    /* one event stands for one step only */
    ASSERT_EQ(depth("01 01 2", false, 0), 3); /* two events matching both steps */
    ASSERT_EQ(depth("01 01 2", true, 0), 3);
    ASSERT_EQ(depth("0 1 x 0 1 2", true, 0), 3);
}

TEST(depth_window)
{
    /* events a minute apart: window 2 min covers steps at 0, 1, 2 min */
    ASSERT_EQ(depth("0 1 2", false, 2 * MIN), 3);
    ASSERT_EQ(depth("0 1 2", false, 2 * MIN - 1), 2);
    ASSERT_EQ(depth("0 x x 1 2", false, 2 * MIN), 1);
    ASSERT_EQ(depth("0 x 0 1 2", false, 2 * MIN), 3); /* a later start fits */
    ASSERT_EQ(depth("0 0 1 2", true, 2 * MIN), 3);
    ASSERT_EQ(depth("0 1 x 2", false, 3 * MIN), 3);
}

TEST(repeated_steps)
{
    /* steps [0, 1, 0-again]: encode step 2 as the same page as step 0 */
    struct funnel_ev ev[] = {{0, 1u | 4u}, {MIN, 2u}, {2 * MIN, 1u | 4u}};
    ASSERT_EQ(funnel_depth(ev, 3, 3, false, 0), 3);
    ASSERT_EQ(funnel_depth(ev, 2, 3, false, 0), 2); /* a step listed twice needs two events */
}

/* ---------------------------------------------------------------- over a store */

#define SITE "a.com"
static struct tr_event evs[64];
static size_t nevs;

static void add(int64_t ts, uint64_t visitor, const char *name, const char *path,
                const char *source)
{
    struct tr_event *t = &evs[nevs];
    tr_init(t, SITE, nevs, ts, visitor, name, path);
    tr_set(t, DE_SOURCE, source);
    nevs++;
}

static struct store *load(uint32_t *site)
{
    struct store *s = tr_open_store(test_tmpdir());
    if (store_site_id(s, SITE, strlen(SITE), true, site) != 0) abort();
    struct raw_writer *w = raw_writer_new(s);
    struct store_batch *b = store_batch_new(s);
    for (size_t i = 0; i < nevs; i++)
        if (raw_writer_add(w, *site, &evs[i].ev, 0) != 0) abort();
    if (raw_writer_flush(w, b) != 0 || store_write(s, b) != 0) abort();
    raw_writer_commit(w);
    store_batch_free(b);
    raw_writer_free(w);
    return s;
}

static bool site_fn(void *arg, const char *site, struct query *q)
{
    (void)arg;
    (void)site;
    q->zone = tz_utc();
    memcpy(q->currency, "EUR", 4);
    return true;
}

static void run(struct store *s, uint32_t site, const char *json, uint64_t *out)
{
    struct funnel *f = NULL;
    char err[256] = "";
    int rc = funnel_parse(json, strlen(json), tr_ts("2026-03-10T00:00:00Z"), site_fn, NULL, &f,
                          err, sizeof err);
    if (rc) fprintf(stderr, "parse: %s\n", err);
    ASSERT_EQ(rc, 0);
    struct funnel_result r, rv;
    struct q_budget b = {timefmt_mono_ms() + 10000, 64u << 20, 1000};
    ASSERT_EQ(funnel_compute(s, site, f, &b, &r), 0);
    memcpy(out, r.visitors, f->nsteps * sizeof *out);
    /* the other plan agrees (streaming only without filters) */
    f->plan = FUNNEL_PLAN_VISITS;
    ASSERT_EQ(funnel_compute(s, site, f, &b, &rv), 0);
    ASSERT_EQ(memcmp(r.visitors, rv.visitors, sizeof r.visitors), 0);
    f->plan = FUNNEL_PLAN_STREAM;
    if (f->q->filter) {
        ASSERT_EQ(funnel_compute(s, site, f, &b, &rv), TALLY_EINVAL);
    } else {
        ASSERT_EQ(funnel_compute(s, site, f, &b, &rv), 0);
        ASSERT_EQ(memcmp(r.visitors, rv.visitors, sizeof r.visitors), 0);
    }
    funnel_free(f);
}

TEST(compute_visit_window_edges_filters)
{
    const int64_t d = tr_ts("2026-03-02T00:00:00Z");
    nevs = 0;
    /* v1: one visit: / -> /pricing -> Signup */
    add(d + 60 * MIN, 1, "pageview", "/", "Google");
    add(d + 61 * MIN, 1, "pageview", "/pricing", "Google");
    add(d + 62 * MIN, 1, "Signup", "/pricing", "Google");
    /* v2: / then 40 min later (a new visit) /pricing and Signup */
    add(d + 60 * MIN, 2, "pageview", "/", "Direct / None");
    add(d + 100 * MIN, 2, "pageview", "/pricing", "Direct / None");
    add(d + 101 * MIN, 2, "Signup", "/pricing", "Direct / None");
    /* v3: a visit across midnight (the range's start): / before, /pricing after */
    add(d - 5 * MIN, 3, "pageview", "/", "Google");
    add(d + 5 * MIN, 3, "pageview", "/pricing", "Google");
    /* v4: / and /blog/x/y then Signup, all in the range */
    add(d + 200 * MIN, 4, "pageview", "/blog/x/y", "Google");
    add(d + 201 * MIN, 4, "pageview", "/", "Google");
    add(d + 202 * MIN, 4, "Signup", "/", "Google");
    struct store *s;
    uint32_t site;
    s = load(&site);
    uint64_t v[3];
    const char *steps = "\"steps\":[{\"page\":\"/\"},{\"page\":\"/pricing\"},{\"event\":\"Signup\"}]";
    char json[512];
    snprintf(json, sizeof json, "{\"site_id\":\"a.com\",\"date_range\":[\"2026-03-02\","
             "\"2026-03-02\"],%s}", steps);
    run(s, site, json, v);
    /* v3's "/" is before the range: only its /pricing is seen, so it never starts */
    ASSERT_EQ(v[0], 3);
    ASSERT_EQ(v[1], 1);
    ASSERT_EQ(v[2], 1);
    snprintf(json, sizeof json, "{\"site_id\":\"a.com\",\"date_range\":[\"2026-03-02\","
             "\"2026-03-02\"],%s,\"window\":\"1h\"}", steps);
    run(s, site, json, v);
    ASSERT_EQ(v[1], 2); /* v2 across two visits, 40 min apart */
    ASSERT_EQ(v[2], 2);
    snprintf(json, sizeof json, "{\"site_id\":\"a.com\",\"date_range\":[\"2026-03-01\","
             "\"2026-03-02\"],%s,\"order\":\"strict\"}", steps);
    run(s, site, json, v);
    ASSERT_EQ(v[0], 4);
    ASSERT_EQ(v[1], 2); /* v1 and v3 (now whole) */
    ASSERT_EQ(v[2], 1);
    snprintf(json, sizeof json, "{\"site_id\":\"a.com\",\"date_range\":[\"2026-03-02\","
             "\"2026-03-02\"],\"steps\":[{\"page\":\"/blog/**\"},{\"event\":\"Signup\"}],"
             "\"filters\":[[\"is\",\"visit:source\",[\"Google\"]]]}");
    run(s, site, json, v);
    ASSERT_EQ(v[0], 1);
    ASSERT_EQ(v[1], 1);
    store_close(s);
}

/* ---------------------------------------------------------------- differential */

#define RND_EVENTS 2500
#define RND_VISITORS 300
#define RND_FUNNELS 300

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static const char *const rnd_paths[] = {"/", "/pricing", "/blog/a", "/blog/b/c", "/signup",
                                        "/docs/x"};
static const char *const rnd_names[] = {"Signup", "Download", "engagement"};

static uint64_t (*rnd_visitor)(size_t v); /* the stored visitor value of visitor number v */

static uint64_t hashed_visitor(size_t v)
{
    return v == 0 ? 0 : 0x1000 + v * 0x9e3779b97f4a7c15ULL; /* spread like keyed hashes */
}

static uint64_t small_visitor(size_t v)
{
    return v; /* clustered top bits: the streaming table must switch to a mixing hash */
}

TEST(differential_stream_vs_visits)
{
    static struct tr_event ev[RND_EVENTS];
    const int64_t t0 = tr_ts("2026-03-01T00:00:00Z");
    /* visitors make bursts of events (gaps of seconds to an hour, so visits split), over
     * three days; equal timestamps happen (whole seconds) */
    int64_t clock[RND_VISITORS];
    for (size_t v = 0; v < RND_VISITORS; v++) clock[v] = t0 + (int64_t)(rnd() % (72 * 60)) * MIN;
    for (size_t i = 0; i < RND_EVENTS; i++) {
        size_t v = rnd() % RND_VISITORS;
        uint64_t g = rnd() % 10;
        clock[v] += g < 7 ? (int64_t)(rnd() % 300) * 1000 : g < 9 ? (int64_t)(rnd() % 40) * MIN
                                                                   : (int64_t)(rnd() % 600) * MIN;
        bool pv = rnd() % 4 != 0;
        tr_init(&ev[i], SITE, i, clock[v], rnd_visitor(v),
                pv ? "pageview" : rnd_names[rnd() % 3],
                rnd_paths[rnd() % (sizeof rnd_paths / sizeof *rnd_paths)]);
        if (rnd() % 40 == 0) ev[i].ev.flags |= DE_F_BOT;
    }
    struct store *s = tr_open_store(test_tmpdir());
    uint32_t site;
    ASSERT_EQ(store_site_id(s, SITE, strlen(SITE), true, &site), 0);
    /* many flushes of shuffled slices: an hour gets several blocks whose times interleave */
    size_t order[RND_EVENTS];
    for (size_t i = 0; i < RND_EVENTS; i++) order[i] = i;
    for (size_t i = RND_EVENTS - 1; i > 0; i--) {
        size_t j = rnd() % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    struct raw_writer *w = raw_writer_new(s);
    for (size_t i = 0; i < RND_EVENTS;) {
        size_t n = 1 + rnd() % 200;
        struct store_batch *b = store_batch_new(s);
        for (; n-- && i < RND_EVENTS; i++) {
            struct tr_event *e = &ev[order[i]];
            ASSERT_EQ(raw_writer_add(w, site, &e->ev, rnd() % 50 == 0 ? RAW_F_DUPLICATE : 0), 0);
        }
        ASSERT_EQ(raw_writer_flush(w, b), 0);
        ASSERT_EQ(store_write(s, b), 0);
        raw_writer_commit(w);
        store_batch_free(b);
    }
    raw_writer_free(w);
    static const char *const step_pool[] = {
        "{\"page\":\"/\"}",       "{\"page\":\"/pricing\"}", "{\"page\":\"/blog/**\"}",
        "{\"page\":\"/*\"}",      "{\"page\":\"/signup\"}",  "{\"event\":\"Signup\"}",
        "{\"event\":\"Download\"}", "{\"event\":\"Nope\"}",    "{\"page\":\"/docs/*\"}"};
    static const char *const windows[] = {"\"visit\"", "60", "\"30m\"", "\"2h\"", "\"1d\"",
                                          "7200"};
    size_t checked = 0, nonzero = 0;
    for (int q = 0; q < RND_FUNNELS; q++) {
        char json[1024];
        int len = snprintf(json, sizeof json, "{\"site_id\":\"a.com\",\"steps\":[");
        size_t K = 2 + rnd() % 4;
        for (size_t k = 0; k < K; k++)
            len += snprintf(json + len, sizeof json - (size_t)len, "%s%s", k ? "," : "",
                            step_pool[rnd() % (sizeof step_pool / sizeof *step_pool)]);
        int d0 = 1 + (int)(rnd() % 3), d1 = d0 + (int)(rnd() % 3);
        if (d1 > 4) d1 = 4;
        snprintf(json + len, sizeof json - (size_t)len,
                 "],\"date_range\":[\"2026-03-0%d\",\"2026-03-0%d\"],\"window\":%s,"
                 "\"order\":\"%s\"}",
                 d0, d1, windows[rnd() % (sizeof windows / sizeof *windows)],
                 rnd() % 2 ? "strict" : "loose");
        struct funnel *f = NULL;
        char err[256] = "";
        ASSERT_EQ(funnel_parse(json, strlen(json), tr_ts("2026-03-10T00:00:00Z"), site_fn, NULL,
                               &f, err, sizeof err),
                  0);
        struct funnel_result a, b;
        struct q_budget bud = {timefmt_mono_ms() + 20000, 64u << 20, 1000};
        f->plan = FUNNEL_PLAN_STREAM;
        ASSERT_EQ(funnel_compute(s, site, f, &bud, &a), 0);
        f->plan = FUNNEL_PLAN_VISITS;
        ASSERT_EQ(funnel_compute(s, site, f, &bud, &b), 0);
        if (memcmp(a.visitors, b.visitors, sizeof a.visitors) != 0) {
            fprintf(stderr, "funnel %s\n stream", json);
            for (size_t k = 0; k < f->nsteps; k++) fprintf(stderr, " %llu", (unsigned long long)a.visitors[k]);
            fprintf(stderr, "\n visits");
            for (size_t k = 0; k < f->nsteps; k++) fprintf(stderr, " %llu", (unsigned long long)b.visitors[k]);
            fprintf(stderr, "\n");
        }
        ASSERT_EQ(memcmp(a.visitors, b.visitors, sizeof a.visitors), 0);
        checked++;
        nonzero += a.visitors[1] > 0;
        funnel_free(f);
    }
    ASSERT_EQ(checked, RND_FUNNELS);
    ASSERT_TRUE(nonzero > RND_FUNNELS / 4); /* the funnels are not all empty */
    store_close(s);
}

int main(void)
{
    RUN(depth_loose_and_strict);
    RUN(depth_window);
    RUN(repeated_steps);
    RUN(compute_visit_window_edges_filters);
    rnd_visitor = hashed_visitor;
    RUN(differential_stream_vs_visits);
    rnd_visitor = small_visitor;
    RUN(differential_stream_vs_visits);
    return test_summary();
}
