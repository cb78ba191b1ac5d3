/* Unit tests for the raw-store scan executor (qexec_scan): the same hand-made events go to the
 * raw writer (as the raw consumer writes them, duplicates flagged by the same rule) and to the
 * rollup engine; on every query the rollups can answer (totals, one dimension, a filter on that
 * dimension, day series) the scan must give the same numbers. Then hand-computed bounce rate,
 * visit duration, time on page, visits across the range edges, goals, mixed filters, budgets,
 * and a printed (not asserted) scan speed. */
#include "test.h"

#include "test_rollup_util.h"

#include "query/query.h"
#include "rollup/dedup.h"
#include "store/raw.h"

/* ---------------------------------------------------------------- fixture */

#define SITE "a.com"
#define NEV_MAX 4000
#define D0 "2026-03-01T00:00:00Z"

static struct tr_event evs[NEV_MAX];
static size_t nevs;
static uint64_t rng_state;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}

static struct tr_event *push(int64_t ts, uint64_t visitor, const char *name, const char *path)
{
    if (nevs == NEV_MAX) abort();
    struct tr_event *t = &evs[nevs];
    tr_init(t, SITE, nevs, ts, visitor, name, path);
    char cid[32];
    snprintf(cid, sizeof cid, "c%zu", nevs);
    tr_client_id(t, cid);
    if (strcmp(name, "engagement") == 0 || strcmp(name, "scroll") == 0) t->ev.interactive = false;
    nevs++;
    return t;
}

/* Random visits of 24 visitors over 4 days, some placed across midnight, with bots,
 * duplicates, engagement and non-interactive events, props and revenue. */
static void gen_events(void)
{
    static const char *src[] = {"Direct / None", "Google", "Twitter"};
    static const char *ref[] = {"", "google.com", "t.co/x"};
    static const char *chan[] = {"Direct", "Organic Search", "Organic Social"};
    static const char *paths[] = {"/", "/a", "/blog/x", "/blog/y/z", "/docs/a/b", ""};
    static const char *country[] = {"DE", "FR", ""};
    static const int64_t steps[] = {0, 1000, 120000, 600000, 1799999, 1800000};
    nevs = 0;
    rng_state = 7;
    const int64_t d0 = tr_ts(D0);
    for (uint64_t v = 1; v <= 24; v++) {
        int nvisits = 1 + (int)(rnd() % 4);
        bool bot = v == 13;
        for (int k = 0; k < nvisits; k++) {
            int64_t ts = d0 + (int64_t)(rnd() % (4 * 24 * 60)) * 60000 + rnd() % 60000;
            if (k == 0 && v % 4 == 0) /* across a midnight (a range edge) */
                ts = d0 + (int64_t)(v % 3 + 1) * 86400000 - 15 * 60000;
            int a = (int)(rnd() % 3), n = 1 + (int)(rnd() % 7);
            for (int i = 0; i < n; i++) {
                if (i) ts += steps[rnd() % TALLY_ARRAY_LEN(steps)];
                uint32_t r = rnd() % 20;
                const char *name = r < 13   ? "pageview"
                                   : r < 15 ? "Signup"
                                   : r < 17 ? "engagement"
                                   : r < 18 ? "scroll"
                                            : "Download";
                const char *path = paths[rnd() % TALLY_ARRAY_LEN(paths)];
                if (strcmp(name, "pageview") == 0 && !path[0]) path = "/";
                struct tr_event *t = push(ts, v, name, path);
                tr_set(t, DE_SOURCE, src[a]);
                tr_set(t, DE_REFERRER, ref[a]);
                tr_set(t, DE_CHANNEL, chan[a]);
                tr_set(t, DE_UTM_SOURCE, a == 1 ? "news" : "");
                tr_set(t, DE_DEVICE, rnd() % 3 ? "Desktop" : "Mobile"); /* varies in a visit */
                tr_set(t, DE_OS, v % 2 ? "Linux" : "iOS");
                tr_set(t, DE_COUNTRY, country[(v + (uint64_t)k) % 3]);
                tr_set(t, DE_CITY, v % 5 ? "Berlin" : "");
                tr_set(t, DE_HOSTNAME, rnd() % 4 ? "a.com" : "www.a.com");
                if (rnd() % 3 == 0) tr_prop(t, "plan", rnd() % 2 ? "pro" : "free");
                if (strcmp(name, "Signup") == 0) {
                    t->ev.has_revenue = true;
                    t->ev.revenue_micros = 1000000 + (int64_t)(rnd() % 5000000);
                    memcpy(t->ev.currency, rnd() % 4 ? "EUR" : "USD", 4);
                }
                if (bot) t->ev.flags |= DE_F_BOT;
                if (rnd() % 15 == 0 && nevs < NEV_MAX) { /* a resent event: a duplicate */
                    struct tr_event *d = &evs[nevs];
                    *d = *t;
                    tr_fix(d);
                    d->ev.offset = nevs++;
                    d->ev.received_ms += 5000;
                }
            }
        }
    }
}

struct fixture {
    struct store *s;
    uint32_t site;
    const tz_zone *zone;
};

/* Feeds evs[0..nevs) to the raw writer and the engine, flushing both every few events. */
static void load(struct fixture *fx, const char *zone)
{
    tr_zone_name = zone;
    fx->s = tr_open_store(test_tmpdir());
    if (tz_get(zone, &fx->zone) != 0) abort();
    if (store_site_id(fx->s, SITE, strlen(SITE), true, &fx->site) != 0) abort();
    struct engine *e = tr_engine(fx->s);
    struct raw_writer *w = raw_writer_new(fx->s);
    struct store_batch *b = store_batch_new(fx->s);
    struct dedup *dd = dedup_new(NULL, 0);
    int64_t wm = 0;
    for (size_t i = 0; i < nevs; i++) {
        const struct devent *ev = &evs[i].ev;
        if (ev->received_ms > wm) wm = ev->received_ms;
        bool dup =
            engine_dedup_applies(ev) &&
            dedup_check(dd, ev->site.ptr, ev->site.len, ev->client_id.ptr, ev->client_id.len, wm);
        if (raw_writer_add(w, fx->site, ev, dup ? RAW_F_DUPLICATE : 0) != 0) abort();
        if (engine_add(e, ev) != 0) abort();
        if (i % 37 == 36 || i + 1 == nevs) {
            if (raw_writer_flush(w, b) != 0 || store_write(fx->s, b) != 0) abort();
            raw_writer_commit(w);
            store_batch_clear(b);
        }
        if ((i % 101 == 100 || i + 1 == nevs) && engine_flush(e) != 0) abort();
    }
    dedup_free(dd);
    store_batch_free(b);
    raw_writer_free(w);
    engine_close(e);
}

static void query_init(struct query *q, const struct fixture *fx, int64_t from, int64_t to)
{
    memset(q, 0, sizeof *q);
    snprintf(q->site, sizeof q->site, "%s", SITE);
    q->zone = fx->zone;
    memcpy(q->currency, "EUR", 4);
    q->range = (struct q_range){from, to};
}

/* A filter `dim is value` (one leaf under the top-level AND, as the parser builds it). */
struct one_filter {
    struct q_filter top, leaf;
    char *vals[1];
    uint32_t lens[1];
};

static void filter_is(struct one_filter *f, struct query *q, enum q_op op, int field,
                      const char *prop, const char *value)
{
    memset(f, 0, sizeof *f);
    f->leaf.op = op;
    f->leaf.dim.field = field;
    if (prop) snprintf(f->leaf.dim.prop, sizeof f->leaf.dim.prop, "%s", prop);
    f->vals[0] = (char *)value;
    f->lens[0] = (uint32_t)strlen(value);
    f->leaf.nvalues = 1;
    f->leaf.values = f->vals;
    f->leaf.lens = f->lens;
    f->top.op = QF_AND;
    f->top.nkids = 1;
    f->top.kids = &f->leaf;
    q->filter = &f->top;
}

static int scan(const struct fixture *fx, const struct query *q, struct q_table *t)
{
    memset(t, 0, sizeof *t);
    struct q_budget b = {timefmt_mono_ms() + 60000, 256u << 20, 100000};
    return qexec_scan(fx->s, fx->site, q, q->range, true, &b, t);
}

/* The same query through the scan's stream form. */
static int stream(const struct fixture *fx, const struct query *q, struct q_table *t)
{
    memset(t, 0, sizeof *t);
    struct q_budget b = {timefmt_mono_ms() + 60000, 256u << 20, 100000};
    return qexec_stream(fx->s, fx->site, q, q->range, true, &b, t);
}

static int64_t eur(const struct rollup_metrics *m)
{
    for (uint32_t i = 0; i < m->nrev; i++)
        if (memcmp(m->rev[i].cur, "EUR", 3) == 0) return m->rev[i].micros;
    return 0;
}

#define ASSERT_SAME(agg, m, what)                                                                  \
    do {                                                                                           \
        if ((agg).pageviews != (m).pageviews || (agg).events != (m).events ||                      \
            (agg).visits != (m).visits || (agg).bounces != (m).bounces ||                          \
            (agg).duration_ms != (m).duration_ms || (agg).visitors != (m).visitors ||              \
            (agg).revenue_micros != eur(&(m)))                                                     \
            TEST_FAIL_("%s: scan pv %lld ev %lld vi %lld bo %lld du %lld vr %llu rev %lld; "       \
                       "rollup pv %lld ev %lld vi %lld bo %lld du %lld vr %llu rev %lld",          \
                       what, (long long)(agg).pageviews, (long long)(agg).events,                  \
                       (long long)(agg).visits, (long long)(agg).bounces,                          \
                       (long long)(agg).duration_ms, (unsigned long long)(agg).visitors,           \
                       (long long)(agg).revenue_micros, (long long)(m).pageviews,                  \
                       (long long)(m).events, (long long)(m).visits, (long long)(m).bounces,       \
                       (long long)(m).duration_ms, (unsigned long long)(m).visitors,               \
                       (long long)eur(&(m)));                                                      \
    } while (0)

struct bd_value {
    char v[128];
    struct rollup_metrics m;
};

struct bd {
    struct bd_value vals[256];
    size_t n;
    const char *prop; /* PROP: keep only this key's values */
};

static int bd_cb(void *arg, const char *value, size_t vlen, const struct rollup_metrics *m)
{
    struct bd *b = arg;
    if (b->prop) {
        size_t kl = strlen(b->prop);
        if (vlen <= kl || memcmp(value, b->prop, kl) != 0 || value[kl] != 0) return 0;
        value += kl + 1;
        vlen -= kl + 1;
    }
    if (b->n == TALLY_ARRAY_LEN(b->vals) || vlen >= sizeof b->vals[0].v) abort();
    memcpy(b->vals[b->n].v, value, vlen);
    b->vals[b->n].v[vlen] = 0;
    b->vals[b->n++].m = *m;
    return 0;
}

/* One dimension over [from, to): the breakdown, and for each value a filter on it, equal to
 * the rollups. */
static void check_dim(const struct fixture *fx, int dim, const char *prop, int64_t from, int64_t to)
{
    static struct bd b;
    memset(&b, 0, sizeof b);
    b.prop = prop;
    ASSERT_EQ(rollup_read_breakdown(fx->s, fx->site, TZ_DAY, dim, from, to, 0, bd_cb, &b), 0);
    struct query q;
    query_init(&q, fx, from, to);
    q.ndims = 1;
    q.dims[0].field = dim;
    if (prop) snprintf(q.dims[0].prop, sizeof q.dims[0].prop, "%s", prop);
    struct q_table t;
    ASSERT_EQ(scan(fx, &q, &t), 0);
    char what[300];
    size_t matched = 0, none_rows = 0;
    for (size_t i = 0; i < t.n; i++) {
        const char *shown = t.rows[i].dims[0];
        ASSERT_TRUE(shown != NULL);
        if (prop && strcmp(shown, "(none)") == 0) { /* events without the key: scan only */
            none_rows++;
            continue;
        }
        const struct bd_value *bv = NULL;
        for (size_t k = 0; k < b.n && !bv; k++)
            if (strcmp(b.vals[k].v[0] ? b.vals[k].v : "(none)", shown) == 0) bv = &b.vals[k];
        snprintf(what, sizeof what, "dim %d value '%s'", dim, shown);
        if (!bv) TEST_FAIL_("%s: not in the rollups", what);
        ASSERT_SAME(t.rows[i].a, bv->m, what);
        ASSERT_TRUE(t.rows[i].a.visitors_exact);
        matched++;
    }
    ASSERT_EQ(matched, b.n);
    ASSERT_TRUE(none_rows <= 1);
    q_table_free(&t);

    /* a filter on each value: the scan's total equals the rollup cell */
    q.ndims = 0;
    for (size_t k = 0; k < b.n; k++) {
        struct one_filter f;
        filter_is(&f, &q, QF_IS, dim, prop, b.vals[k].v);
        ASSERT_EQ(scan(fx, &q, &t), 0);
        snprintf(what, sizeof what, "filter dim %d is '%s'", dim, b.vals[k].v);
        ASSERT_TRUE(t.have_total);
        ASSERT_SAME(t.total, b.vals[k].m, what);
        q_table_free(&t);
    }
    q.filter = NULL;
}

static void check_range(const struct fixture *fx, int64_t from, int64_t to)
{
    struct rollup_metrics m;
    ASSERT_EQ(rollup_read_value(fx->s, fx->site, TZ_DAY, ROLLUP_DIM_TOTAL, "", 0, from, to, &m), 0);
    ASSERT_TRUE(m.visits > 0);
    struct query q;
    query_init(&q, fx, from, to);
    struct q_table t;
    ASSERT_EQ(scan(fx, &q, &t), 0);
    ASSERT_TRUE(t.have_total);
    ASSERT_SAME(t.total, m, "total");
    ASSERT_EQ(t.n, 0); /* no dimensions: no row, the answer is the total */
    q_table_free(&t);

    static const int dims[] = {
        ROLLUP_DIM_PAGE,       ROLLUP_DIM_HOSTNAME, ROLLUP_DIM_NAME,     ROLLUP_DIM_ENTRY_PAGE,
        ROLLUP_DIM_EXIT_PAGE,  ROLLUP_DIM_SOURCE,   ROLLUP_DIM_REFERRER, ROLLUP_DIM_CHANNEL,
        ROLLUP_DIM_UTM_SOURCE, ROLLUP_DIM_DEVICE,   ROLLUP_DIM_OS,       ROLLUP_DIM_COUNTRY,
        ROLLUP_DIM_CITY,
    };
    for (size_t i = 0; i < TALLY_ARRAY_LEN(dims); i++)
        check_dim(fx, dims[i], NULL, from, to);
    check_dim(fx, ROLLUP_DIM_PROP, "plan", from, to);
}

struct series {
    int64_t bucket[16];
    struct rollup_metrics m[16];
    size_t n;
};

static int series_cb(void *arg, int64_t bucket_ms, const struct rollup_metrics *m)
{
    struct series *s = arg;
    if (s->n == 16) abort();
    s->bucket[s->n] = bucket_ms;
    s->m[s->n++] = *m;
    return 0;
}

static void check_days(const struct fixture *fx, int64_t from, int64_t to)
{
    struct series sr = {.n = 0};
    ASSERT_EQ(rollup_read_series(fx->s, fx->site, TZ_DAY, ROLLUP_DIM_TOTAL, "", 0, from, to,
                                 series_cb, &sr),
              0);
    struct query q;
    query_init(&q, fx, from, to);
    q.ndims = 1;
    q.dims[0].field = Q_DIM_TIME;
    q.dims[0].time = QT_DAY;
    struct q_table t;
    ASSERT_EQ(scan(fx, &q, &t), 0);
    ASSERT_EQ(t.n, sr.n);
    for (size_t i = 0; i < t.n; i++) {
        ASSERT_EQ(t.rows[i].time_ms, sr.bucket[i]);
        char label[32];
        q_time_bucket(&q, QT_DAY, sr.bucket[i], label, sizeof label);
        ASSERT_STREQ(t.rows[i].dims[0], label);
        ASSERT_SAME(t.rows[i].a, sr.m[i], label);
    }
    q_table_free(&t);
}

static void check_zone(const char *zone)
{
    gen_events();
    struct fixture fx;
    load(&fx, zone);
    int64_t day[5];
    for (int i = 0; i < 5; i++)
        day[i] = tz_day_start_ms(fx.zone, 2026, 3, (unsigned)(1 + i));
    check_range(&fx, day[0], day[4]);
    check_range(&fx, day[1], day[3]);
    check_range(&fx, day[2], day[3]);
    check_range(&fx, day[0] - 86400000, day[1]);
    check_days(&fx, day[0], day[4]);
    store_close(fx.s);
}

TEST(same_as_rollups_utc)
{
    check_zone("UTC");
}

TEST(same_as_rollups_berlin)
{
    check_zone("Europe/Berlin");
}

/* ---------------------------------------------------------------- hand-computed */

static void load_now(struct fixture *fx)
{
    load(fx, "UTC");
}

#define T(hms) (tr_ts("2026-01-10T" hms "Z"))

/* Visitor 1: /a, /b 5 min later, Signup 1 min later (6 min, no bounce; time on /a 5 min, on
 * /b 1 min). Visitor 2: /a alone (bounce). Visitor 3: /a then a non-interactive scroll 10 min
 * later (a bounce of 10 min; time on /a 10 min). Visitor 4: /a, an engagement 20 min later (not
 * part of the visit), /c 40 min after /a (a second visit: two bounces). */
static void small_events(void)
{
    nevs = 0;
    push(T("10:00:00"), 1, "pageview", "/a");
    push(T("10:05:00"), 1, "pageview", "/b");
    struct tr_event *s = push(T("10:06:00"), 1, "Signup", "/b");
    s->ev.has_revenue = true;
    s->ev.revenue_micros = 9990000;
    memcpy(s->ev.currency, "EUR", 4);
    push(T("11:00:00"), 2, "pageview", "/a");
    push(T("12:00:00"), 3, "pageview", "/a");
    push(T("12:10:00"), 3, "scroll", "/a");
    push(T("13:00:00"), 4, "pageview", "/a");
    push(T("13:20:00"), 4, "engagement", "/a");
    push(T("13:40:00"), 4, "pageview", "/c");
    tr_set(&evs[nevs - 1], DE_SOURCE, "Google");
}

TEST(hand_computed_metrics)
{
    small_events();
    struct fixture fx;
    load_now(&fx);
    struct query q;
    query_init(&q, &fx, T("00:00:00"), T("23:59:59"));
    struct q_table t;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.visits, 5);
    ASSERT_EQ(t.total.bounces, 4); /* bounce rate 80 % */
    ASSERT_EQ(t.total.duration_ms, 16 * 60000);
    ASSERT_EQ(t.total.pageviews, 6);
    ASSERT_EQ(t.total.events, 8); /* the engagement event is not an event */
    ASSERT_EQ(t.total.visitors, 4);
    ASSERT_EQ(t.total.revenue_micros, 9990000);
    ASSERT_EQ(t.total.revenue_events, 1);
    ASSERT_EQ(t.total.top_count, 3);
    ASSERT_EQ(t.total.top_ms, (5 + 1 + 10) * 60000);
    q_table_free(&t);

    q.ndims = 1;
    q.dims[0].field = ROLLUP_DIM_PAGE;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.n, 3); /* sorted by value: /a /b /c */
    ASSERT_STREQ(t.rows[0].dims[0], "/a");
    ASSERT_EQ(t.rows[0].a.pageviews, 4);
    ASSERT_EQ(t.rows[0].a.events, 5);
    ASSERT_EQ(t.rows[0].a.visits, 4); /* visits holding /a */
    ASSERT_EQ(t.rows[0].a.bounces, 3);
    ASSERT_EQ(t.rows[0].a.top_count, 2);
    ASSERT_EQ(t.rows[0].a.top_ms, 15 * 60000);
    ASSERT_STREQ(t.rows[1].dims[0], "/b");
    ASSERT_EQ(t.rows[1].a.top_count, 1);
    ASSERT_EQ(t.rows[1].a.top_ms, 60000);
    ASSERT_EQ(t.rows[1].a.visits, 1);
    ASSERT_EQ(t.rows[1].a.duration_ms, 6 * 60000);
    ASSERT_EQ(t.rows[1].a.revenue_micros, 9990000);
    ASSERT_STREQ(t.rows[2].dims[0], "/c");
    ASSERT_EQ(t.rows[2].a.top_count, 0);
    q_table_free(&t);

    /* exit page and source: visit attributes (first event; exit from the last) */
    q.dims[0].field = ROLLUP_DIM_EXIT_PAGE;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.n, 3);
    ASSERT_STREQ(t.rows[0].dims[0], "/a");
    ASSERT_EQ(t.rows[0].a.visits, 3); /* v2, v3, v4's first */
    ASSERT_STREQ(t.rows[1].dims[0], "/b");
    ASSERT_EQ(t.rows[1].a.visits, 1);
    ASSERT_EQ(t.rows[1].a.events, 3);
    q_table_free(&t);
    q.dims[0].field = ROLLUP_DIM_SOURCE;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.n, 2);
    ASSERT_STREQ(t.rows[0].dims[0], "Direct / None");
    ASSERT_EQ(t.rows[0].a.visits, 4);
    ASSERT_STREQ(t.rows[1].dims[0], "Google");
    ASSERT_EQ(t.rows[1].a.visits, 1);
    ASSERT_EQ(t.rows[1].a.visitors, 1);
    q_table_free(&t);

    /* two dimensions: page x source */
    q.ndims = 2;
    q.dims[0].field = ROLLUP_DIM_PAGE;
    q.dims[1].field = ROLLUP_DIM_SOURCE;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.n, 3);
    ASSERT_STREQ(t.rows[2].dims[0], "/c");
    ASSERT_STREQ(t.rows[2].dims[1], "Google");
    ASSERT_EQ(t.rows[2].a.pageviews, 1);
    q_table_free(&t);

    /* time:hour */
    q.ndims = 1;
    q.dims[0].field = Q_DIM_TIME;
    q.dims[0].time = QT_HOUR;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.n, 4);
    ASSERT_STREQ(t.rows[3].dims[0], "2026-01-10 13:00:00");
    ASSERT_EQ(t.rows[3].time_ms, T("13:00:00"));
    ASSERT_EQ(t.rows[3].a.visits, 2);
    q_table_free(&t);
    store_close(fx.s);
}

TEST(mixed_filters)
{
    small_events();
    struct fixture fx;
    load_now(&fx);
    struct query q;
    query_init(&q, &fx, T("00:00:00"), T("23:59:59"));
    struct q_table t;

    /* event:page is /b AND visit:source is Direct: visitor 1's visit, only its /b events */
    struct q_filter leaves[2], top;
    char *v1[] = {"/b"}, *v2[] = {"Direct / None"}, *v3[] = {"Goo"};
    uint32_t l1[] = {2}, l2[] = {13}, l3[] = {3};
    memset(leaves, 0, sizeof leaves);
    memset(&top, 0, sizeof top);
    leaves[0] = (struct q_filter){
        .op = QF_IS, .dim = {.field = ROLLUP_DIM_PAGE}, .nvalues = 1, .values = v1, .lens = l1};
    leaves[1] = (struct q_filter){
        .op = QF_IS, .dim = {.field = ROLLUP_DIM_SOURCE}, .nvalues = 1, .values = v2, .lens = l2};
    top = (struct q_filter){.op = QF_AND, .nkids = 2, .kids = leaves};
    q.filter = &top;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.visits, 1);
    ASSERT_EQ(t.total.pageviews, 1);
    ASSERT_EQ(t.total.events, 2);
    ASSERT_EQ(t.total.duration_ms, 6 * 60000);
    q_table_free(&t);

    /* OR: event:page is /b OR visit:source contains "Goo": v1's /b events and v4's 2nd visit */
    leaves[1] = (struct q_filter){.op = QF_CONTAINS,
                                  .dim = {.field = ROLLUP_DIM_SOURCE},
                                  .nvalues = 1,
                                  .values = v3,
                                  .lens = l3};
    top.op = QF_OR;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.visits, 2);
    ASSERT_EQ(t.total.events, 3);
    ASSERT_EQ(t.total.visitors, 2);
    q_table_free(&t);

    /* NOT (event:page is /b): every event but /b's; all 5 visits hold one */
    top = (struct q_filter){.op = QF_NOT, .nkids = 1, .kids = leaves};
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.visits, 5);
    ASSERT_EQ(t.total.events, 6);
    q_table_free(&t);

    /* is_not on a visit dimension, and a value that is not in the dictionary */
    char *v4[] = {"nope"};
    uint32_t l4[] = {4};
    leaves[0] = (struct q_filter){.op = QF_IS_NOT,
                                  .dim = {.field = ROLLUP_DIM_SOURCE},
                                  .nvalues = 1,
                                  .values = v2,
                                  .lens = l2};
    top = (struct q_filter){.op = QF_AND, .nkids = 1, .kids = leaves};
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.visits, 1);
    q_table_free(&t);
    leaves[0] = (struct q_filter){
        .op = QF_IS, .dim = {.field = ROLLUP_DIM_PAGE}, .nvalues = 1, .values = v4, .lens = l4};
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.visits, 0);
    ASSERT_EQ(t.total.events, 0);
    ASSERT_EQ(t.n, 0);
    q_table_free(&t);
    store_close(fx.s);
}

/* Three visits across the edges of the range 10:00-12:00 (visits_across_range_edges). */
static void edge_events(void)
{
    nevs = 0;
    /* A: starts 10 min before the range, goes on inside it */
    push(T("09:50:00"), 1, "pageview", "/in1");
    push(T("10:10:00"), 1, "pageview", "/x");
    /* B: starts inside, its later events are after the range (a chain of 25-min gaps) */
    push(T("11:50:00"), 2, "pageview", "/in2");
    push(T("12:15:00"), 2, "pageview", "/after");
    push(T("12:40:00"), 2, "pageview", "/after2");
    /* C: a long chain reaching far back (every 20 min since 06:00) into the range */
    for (int i = 0; i <= 17; i++)
        push(T("06:00:00") + i * 20 * 60000, 3, "pageview", i == 0 ? "/long" : "/l");
}

/* The hand-checked edge visits, in both forms of the scan. */
TEST(visits_across_range_edges)
{
    edge_events();
    struct fixture fx;
    load_now(&fx);
    int (*const form[2])(const struct fixture *, const struct query *, struct q_table *) = {
        scan, stream};
    for (int f = 0; f < 2; f++) {
        struct query q;
        query_init(&q, &fx, T("10:00:00"), T("12:00:00"));
        q.nmetrics = 5; /* what the stream form computes only when asked */
        q.metrics[0] = QM_VISITS;
        q.metrics[1] = QM_PAGEVIEWS;
        q.metrics[2] = QM_VISIT_DURATION;
        q.metrics[3] = QM_BOUNCE_RATE;
        q.metrics[4] = QM_TIME_ON_PAGE;
        struct q_table t;
        ASSERT_EQ(form[f](&fx, &q, &t), 0);
        ASSERT_EQ(t.total.visits, 1);               /* only B starts in the range */
        ASSERT_EQ(t.total.duration_ms, 50 * 60000); /* B: 11:50 .. 12:40, after the range */
        ASSERT_EQ(t.total.bounces, 0);
        ASSERT_EQ(t.total.pageviews, 1 + 1 + 6); /* A's /x, B's /in2, C's 10:00..11:40 */
        ASSERT_EQ(t.total.visitors, 3);
        /* time on page: B's /in2 until 12:15 (after the range), C's 10:00 .. 11:20 pageviews
         * 20 min each (11:40 is its last event); A's /x is its last */
        ASSERT_EQ(t.total.top_ms, (25 + 5 * 20) * 60000);
        ASSERT_EQ(t.total.top_count, 6);
        q_table_free(&t);

        /* C's visit began at 06:00, five windows before the range: the stream's probe goes
         * back that far */
        q.ndims = 1;
        q.dims[0].field = ROLLUP_DIM_ENTRY_PAGE;
        ASSERT_EQ(form[f](&fx, &q, &t), 0);
        ASSERT_EQ(t.n, 3); /* /in1 (A), /in2 (B), /long (C: its visit began at 06:00) */
        ASSERT_STREQ(t.rows[0].dims[0], "/in1");
        ASSERT_EQ(t.rows[0].a.visits, 0);
        ASSERT_EQ(t.rows[0].a.pageviews, 1);
        ASSERT_STREQ(t.rows[2].dims[0], "/long");
        ASSERT_EQ(t.rows[2].a.pageviews, 6);
        q_table_free(&t);

        /* by exit page each visit's row is its last event's (the stream's waits for it): B's
         * is after the range; A's /x and C's 11:40 /l are in it */
        q.dims[0].field = ROLLUP_DIM_EXIT_PAGE;
        ASSERT_EQ(form[f](&fx, &q, &t), 0);
        ASSERT_EQ(t.n, 3);
        ASSERT_STREQ(t.rows[0].dims[0], "/after2");
        ASSERT_EQ(t.rows[0].a.visits, 1);
        ASSERT_EQ(t.rows[0].a.pageviews, 1); /* /in2, the only one in the range */
        ASSERT_EQ(t.rows[0].a.duration_ms, 50 * 60000);
        ASSERT_STREQ(t.rows[1].dims[0], "/l");
        ASSERT_EQ(t.rows[1].a.pageviews, 6);
        ASSERT_EQ(t.rows[1].a.visits, 0);
        ASSERT_STREQ(t.rows[2].dims[0], "/x");
        ASSERT_EQ(t.rows[2].a.visitors, 1);
        q_table_free(&t);

        /* a filter on an event after the range selects B, counted in the range */
        char *v[] = {"/after2"};
        uint32_t l[] = {7};
        struct q_filter leaf = {
            .op = QF_IS, .dim = {.field = ROLLUP_DIM_PAGE}, .nvalues = 1, .values = v, .lens = l};
        q.ndims = 0;
        q.filter = &leaf;
        ASSERT_EQ(form[f](&fx, &q, &t), 0);
        ASSERT_EQ(t.total.visits, 1);
        ASSERT_EQ(t.total.pageviews, 0);
        ASSERT_EQ(t.total.visitors, 0);
        q_table_free(&t);
    }
    store_close(fx.s);
}

TEST(goals)
{
    nevs = 0;
    push(T("10:00:00"), 1, "pageview", "/blog/x");
    push(T("10:01:00"), 1, "pageview", "/blog/x/y");
    push(T("10:02:00"), 1, "Signup", "/blog/x/y");
    push(T("11:00:00"), 2, "pageview", "/docs/a/b");
    push(T("11:01:00"), 2, "Download", "/blog/z"); /* not a pageview: no page goal */
    struct fixture fx;
    load_now(&fx);
    struct query q;
    query_init(&q, &fx, T("00:00:00"), T("23:00:00"));
    char *goals[] = {"event:Signup", "page:/blog/*", "page:/docs/**", "page:/nothing"};
    q.goals = goals;
    q.ngoals = 4;
    q.ndims = 1;
    q.dims[0].field = Q_DIM_GOAL;
    struct q_table t;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.n, 3);
    ASSERT_STREQ(t.rows[0].dims[0], "Signup");
    ASSERT_EQ(t.rows[0].a.events, 1);
    ASSERT_STREQ(t.rows[1].dims[0], "Visit /blog/*");
    ASSERT_EQ(t.rows[1].a.pageviews, 1); /* /blog/x, not /blog/x/y */
    ASSERT_EQ(t.rows[1].a.visitors, 1);
    ASSERT_EQ(t.rows[1].a.visits, 1);
    ASSERT_STREQ(t.rows[2].dims[0], "Visit /docs/**");
    ASSERT_EQ(t.rows[2].a.visitors, 1);
    q_table_free(&t);

    /* goal filters: is selects the completing events; is_not keeps events completing none */
    char *v[] = {"Visit /docs/**"};
    uint32_t l[] = {14};
    struct q_filter leaf = {
        .op = QF_IS, .dim = {.field = Q_DIM_GOAL}, .nvalues = 1, .values = v, .lens = l};
    q.ndims = 0;
    q.filter = &leaf;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.events, 1);
    ASSERT_EQ(t.total.visits, 1);
    q_table_free(&t);
    leaf.op = QF_IS_NOT;
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.events, 4);
    ASSERT_EQ(t.total.visits, 2);
    q_table_free(&t);
    store_close(fx.s);
}

/* ---------------------------------------------------------------- budgets and speed */

/* n events of nvis visitors over `hours` hours, raw store only. */
static void load_bulk(struct fixture *fx, size_t n, uint64_t nvis, int hours)
{
    fx->s = tr_open_store(test_tmpdir());
    fx->zone = tz_utc();
    if (store_site_id(fx->s, SITE, strlen(SITE), true, &fx->site) != 0) abort();
    struct raw_writer *w = raw_writer_new(fx->s);
    struct store_batch *b = store_batch_new(fx->s);
    static const char *paths[] = {"/", "/a", "/b", "/blog/1", "/blog/2", "/docs", "/pricing"};
    static const char *src[] = {"Direct / None", "Google", "Twitter", "Bing"};
    const int64_t t0 = tr_ts("2026-02-01T00:00:00Z"), span = (int64_t)hours * 3600000;
    rng_state = 42;
    struct tr_event t;
    for (size_t i = 0; i < n; i++) {
        /* arrival order is time order, as on a live server */
        int64_t ts = t0 + (int64_t)((double)i / (double)n * (double)span);
        uint64_t v = 1 + rnd() % nvis;
        tr_init(&t, SITE, i, ts, v, rnd() % 10 ? "pageview" : "Signup",
                paths[rnd() % TALLY_ARRAY_LEN(paths)]);
        tr_set(&t, DE_SOURCE, src[v % 4]);
        tr_set(&t, DE_COUNTRY, v % 3 ? "DE" : "US");
        if (raw_writer_add(w, fx->site, &t.ev, 0) != 0) abort();
        if (raw_writer_pending(w) == 20000 || i + 1 == n) {
            if (raw_writer_flush(w, b) != 0 || store_write(fx->s, b) != 0) abort();
            raw_writer_commit(w);
            store_batch_clear(b);
        }
    }
    store_batch_free(b);
    raw_writer_free(w);
}

static size_t bench_events(void)
{
    const char *e = getenv("QSCAN_BENCH_EVENTS");
    return e ? (size_t)strtoull(e, NULL, 10) : 200000;
}

/* ---------------------------------------------------------------- the stream form */


/* The numbers the stream form computes (not bounces, durations, time on page, revenue; visits
 * visits 1: and visits; 2: and bounces and durations; 3: and time on page). */
static bool agg_same(const struct q_agg *a, const struct q_agg *b, int visits)
{
    return a->visitors == b->visitors && (visits < 1 || a->visits == b->visits) &&
           (visits < 2 || (a->bounces == b->bounces && a->duration_ms == b->duration_ms)) &&
           (visits < 3 || (a->top_ms == b->top_ms && a->top_count == b->top_count)) &&
           a->pageviews == b->pageviews && a->events == b->events;
}

static void tables_same(const struct q_table *h, const struct q_table *s, int i, int visits)
{
    if (!agg_same(&h->total, &s->total, visits))
        TEST_FAIL_("query %d total: hold vi %llu vs %lld pv %lld ev %lld; stream vi %llu vs %lld "
                   "pv %lld ev %lld",
                   i, (unsigned long long)h->total.visitors, (long long)h->total.visits,
                   (long long)h->total.pageviews, (long long)h->total.events,
                   (unsigned long long)s->total.visitors, (long long)s->total.visits,
                   (long long)s->total.pageviews, (long long)s->total.events);
    if (h->n != s->n) TEST_FAIL_("query %d: %zu rows held, %zu streamed", i, h->n, s->n);
    for (size_t r = 0; r < h->n; r++) {
        const struct q_row *x = &h->rows[r], *y = &s->rows[r];
        bool same = x->time_ms == y->time_ms && agg_same(&x->a, &y->a, visits);
        for (size_t d = 0; d < QUERY_DIMS_MAX; d++)
            same = same && (!x->dims[d] == !y->dims[d]) &&
                   (!x->dims[d] || strcmp(x->dims[d], y->dims[d]) == 0);
        if (!same)
            TEST_FAIL_("query %d row %zu (%s): hold vi %llu vs %lld pv %lld ev %lld; stream "
                       "(%s) vi %llu vs %lld pv %lld ev %lld",
                       i, r, x->dims[0] ? x->dims[0] : "-", (unsigned long long)x->a.visitors,
                       (long long)x->a.visits, (long long)x->a.pageviews, (long long)x->a.events,
                       y->dims[0] ? y->dims[0] : "-", (unsigned long long)y->a.visitors,
                       (long long)y->a.visits, (long long)y->a.pageviews, (long long)y->a.events);
    }
}

/* A random leaf: event or visit dimension, is / is_not / contains / contains_not. */
static void random_leaf(struct q_filter *f, char **val, uint32_t *len)
{
    static const struct {
        int field;
        const char *prop, *value;
    } leaves[] = {
        {ROLLUP_DIM_PAGE, NULL, "/a"},       {ROLLUP_DIM_PAGE, NULL, "blog"},
        {ROLLUP_DIM_NAME, NULL, "Signup"},   {ROLLUP_DIM_HOSTNAME, NULL, "www.a.com"},
        {ROLLUP_DIM_PROP, "plan", "pro"},    {ROLLUP_DIM_PROP, "plan", ""},
        {ROLLUP_DIM_COUNTRY, NULL, "DE"},    {ROLLUP_DIM_DEVICE, NULL, "Desktop"},
        {ROLLUP_DIM_SOURCE, NULL, "Google"}, {ROLLUP_DIM_ENTRY_PAGE, NULL, "/"},
        {ROLLUP_DIM_CITY, NULL, ""},         {ROLLUP_DIM_PAGE, NULL, "/nowhere"},
        {Q_DIM_GOAL, NULL, "Signup"},        {Q_DIM_GOAL, NULL, "Visit /blog/*"},
    };
    static const enum q_op ops[] = {QF_IS, QF_IS_NOT, QF_CONTAINS, QF_CONTAINS_NOT};
    size_t k = rnd() % TALLY_ARRAY_LEN(leaves);
    memset(f, 0, sizeof *f);
    if (leaves[k].field == Q_DIM_GOAL)
        f->op = rnd() % 2 ? QF_IS : QF_CONTAINS; /* what the parser takes for goals */
    else
        f->op = ops[rnd() % 4];
    f->dim.field = leaves[k].field;
    if (leaves[k].prop) snprintf(f->dim.prop, sizeof f->dim.prop, "%s", leaves[k].prop);
    *val = (char *)leaves[k].value;
    *len = (uint32_t)strlen(leaves[k].value);
    f->nvalues = 1;
    f->values = val;
    f->lens = len;
}

/* Random queries of the shapes the stream form takes (event and visit filters and dimensions,
 * properties, time buckets; ranges cutting through visits at any millisecond): the stream form
 * and the holding form give the same rows and totals. */
TEST(stream_same_as_hold)
{
    gen_events();
    struct fixture fx;
    load(&fx, "Europe/Berlin");
    static const struct q_dim dims[] = {
        {ROLLUP_DIM_PAGE, QT_NONE, ""},     {ROLLUP_DIM_NAME, QT_NONE, ""},
        {ROLLUP_DIM_PROP, QT_NONE, "plan"}, {ROLLUP_DIM_ENTRY_PAGE, QT_NONE, ""},
        {ROLLUP_DIM_SOURCE, QT_NONE, ""},   {ROLLUP_DIM_COUNTRY, QT_NONE, ""},
        {ROLLUP_DIM_DEVICE, QT_NONE, ""},   {Q_DIM_TIME, QT_HOUR, ""},
        {Q_DIM_TIME, QT_DAY, ""},           {ROLLUP_DIM_HOSTNAME, QT_NONE, ""},
        {Q_DIM_GOAL, QT_NONE, ""},
    };
    char *goals[] = {"event:Signup", "page:/blog/*", "page:/docs/**", "page:/nothing"};
    const int64_t d0 = tr_ts(D0);
    rng_state = 99;
    int streamed = 0, with_visits = 0, with_top = 0;
    for (int i = 0; i < 400; i++) {
        struct query q;
        int64_t from = d0 - 86400000 + (int64_t)(rnd() % (5 * 1440)) * 60000 + rnd() % 60000;
        int64_t to = from + 1 + (int64_t)(rnd() % (3 * 1440)) * 60000 + rnd() % 60000;
        query_init(&q, &fx, from, to);
        q.goals = goals;
        q.ngoals = 4;
        q.nmetrics = 7;
        q.metrics[0] = QM_VISITORS, q.metrics[1] = QM_VISITS, q.metrics[2] = QM_PAGEVIEWS,
        q.metrics[3] = QM_EVENTS, q.metrics[4] = QM_BOUNCE_RATE, q.metrics[5] = QM_VISIT_DURATION,
        q.metrics[6] = QM_TIME_ON_PAGE;
        uint32_t mk = rnd() % 4;
        if (mk == 0) q.nmetrics = 1; /* visitors only: no visit metrics */
        if (mk == 1) q.nmetrics = 4; /* no bounces, durations, time on page (known later) */
        q.ndims = rnd() % 3;
        for (size_t d = 0; d < q.ndims; d++)
            q.dims[d] = dims[rnd() % TALLY_ARRAY_LEN(dims)];
        if (q.ndims == 2 && q.dims[0].field == q.dims[1].field) q.ndims = 1;
        if (rnd() % 8 == 0) { /* the exit page, alone (the stream form takes it so) */
            q.ndims = 1;
            q.dims[0] = (struct q_dim){ROLLUP_DIM_EXIT_PAGE, QT_NONE, ""};
        }
        for (size_t d = 0; d < q.ndims; d++) /* a goal row per goal: no time on page */
            if (q.dims[d].field == Q_DIM_GOAL && q.nmetrics == 7) q.nmetrics = 6;
        struct q_filter leaf[3], top, inner;
        char *val[3];
        uint32_t len[3];
        size_t nl = rnd() % 4;
        for (size_t l = 0; l < nl; l++)
            random_leaf(&leaf[l], &val[l], &len[l]);
        if (nl) {
            memset(&top, 0, sizeof top);
            top.op = QF_AND;
            top.nkids = nl;
            top.kids = leaf;
            if (nl >= 2 && rnd() % 3 == 0) top.op = QF_OR;
            if (rnd() % 5 == 0) { /* NOT (...) under the top-level AND */
                inner = top;
                memset(&top, 0, sizeof top);
                top.op = QF_NOT;
                top.nkids = 1;
                top.kids = &inner;
            }
            q.filter = &top;
        }
        ASSERT_TRUE(qplan_stream_can(&q));
        struct q_table h, s;
        ASSERT_EQ(scan(&fx, &q, &h), 0);
        int rc = stream(&fx, &q, &s);
        if (rc == TALLY_ENOTSUP) { /* more fields than a raw_row carries */
            q_table_free(&h);
            continue;
        }
        ASSERT_EQ(rc, 0);
        tables_same(&h, &s, i, q.nmetrics == 1 ? 0 : q.nmetrics == 4 ? 1 : q.nmetrics == 6 ? 2 : 3);
        streamed++;
        with_visits += h.total.visits > 0;
        with_top += q.nmetrics == 7 && h.total.top_count > 0;
        q_table_free(&h);
        q_table_free(&s);
    }
    ASSERT_TRUE(streamed > 300);
    ASSERT_TRUE(with_visits > 100); /* the comparison is not vacuous */
    ASSERT_TRUE(with_top > 50);
    store_close(fx.s);
}

/* Visitor values that are not uniform hashes (small numbers) crowd the stream's table at its
 * first slots until it switches to a mixing hash; every visitor is still found again. */
TEST(stream_clustered_visitors)
{
    nevs = 0;
    for (uint64_t v = 1; v <= 300; v++) {
        push(T("10:00:00") + (int64_t)v * 1000, v, "pageview", v % 2 ? "/a" : "/b");
        push(T("10:20:00") + (int64_t)v * 1000, v, "pageview", "/a");
    }
    struct fixture fx;
    load_now(&fx);
    struct query q;
    query_init(&q, &fx, T("10:00:00"), T("11:00:00"));
    q.nmetrics = 2;
    q.metrics[0] = QM_VISITORS;
    q.metrics[1] = QM_VISITS;
    q.ndims = 1;
    q.dims[0].field = ROLLUP_DIM_PAGE;
    struct q_table t;
    ASSERT_EQ(stream(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.visitors, 300);
    ASSERT_EQ(t.total.visits, 300);
    ASSERT_EQ(t.n, 2);
    ASSERT_STREQ(t.rows[0].dims[0], "/a");
    ASSERT_EQ(t.rows[0].a.visitors, 300);
    ASSERT_EQ(t.rows[0].a.visits, 300);
    ASSERT_EQ(t.rows[0].a.pageviews, 450);
    ASSERT_EQ(t.rows[1].a.visitors, 150);
    q_table_free(&t);
    store_close(fx.s);
}

/* Rows beyond the first 64 count their visitors and visits through sets of (row, visitor) and
 * (row, visit) pairs that grow as they fill (st_seen_row). 150 visitors, 200 pages: visitor v
 * views pages (7v + k) % 200, k = 0..9, in a visit at 10:00, the first of them again at the end
 * of it, and all ten in reverse in a second visit at 12:00; so each page's row counts its
 * visitors once, their visits twice, and pairs are asked again both within a visit and across
 * visits. Counted by hand and against the holding form. */
TEST(stream_many_rows)
{
    nevs = 0;
    enum { NV = 150, NP = 200, K = 10 };
    char path[K][16];
    int vis[NP] = {0}, extra[NP] = {0};
    for (uint64_t v = 1; v <= NV; v++) {
        for (int k = 0; k < K; k++) {
            int p = (int)((7 * v + (uint64_t)k) % NP);
            snprintf(path[k], sizeof path[k], "/p%d", p);
            vis[p]++;
            push(T("10:00:00") + k * 60000 + (int64_t)v, v, "pageview", path[k]);
        }
        push(T("10:10:00") + (int64_t)v, v, "pageview", path[0]);
        extra[(7 * v) % NP]++;
        for (int k = K - 1; k >= 0; k--)
            push(T("12:00:00") + (K - 1 - k) * 60000 + (int64_t)v, v, "pageview", path[k]);
    }
    struct fixture fx;
    load_now(&fx);
    struct query q;
    query_init(&q, &fx, T("09:00:00"), T("14:00:00"));
    q.nmetrics = 3;
    q.metrics[0] = QM_VISITORS;
    q.metrics[1] = QM_VISITS;
    q.metrics[2] = QM_PAGEVIEWS;
    q.ndims = 1;
    q.dims[0].field = ROLLUP_DIM_PAGE;
    struct q_table t, h;
    ASSERT_EQ(stream(&fx, &q, &t), 0);
    ASSERT_EQ(t.n, NP);
    ASSERT_EQ(t.total.visitors, NV);
    ASSERT_EQ(t.total.visits, 2 * NV);
    for (size_t r = 0; r < t.n; r++) {
        int p = atoi(t.rows[r].dims[0] + 2);
        ASSERT_TRUE(p >= 0 && p < NP);
        if (t.rows[r].a.visitors != (uint64_t)vis[p] || t.rows[r].a.visits != 2 * vis[p] ||
            t.rows[r].a.pageviews != 2 * vis[p] + extra[p])
            TEST_FAIL_("/p%d: visitors %llu visits %lld pageviews %lld, want %d %d %d", p,
                       (unsigned long long)t.rows[r].a.visitors, (long long)t.rows[r].a.visits,
                       (long long)t.rows[r].a.pageviews, vis[p], 2 * vis[p], 2 * vis[p] + extra[p]);
    }
    ASSERT_EQ(scan(&fx, &q, &h), 0);
    tables_same(&h, &t, 0, 1);
    q_table_free(&h);
    q_table_free(&t);
    /* without visit metrics a visitor's rows 64..127 are bits in its entry (kmask), kept across
     * its visits: each visitor still counts once per page over its two visits */
    q.nmetrics = 2;
    q.metrics[1] = QM_PAGEVIEWS;
    ASSERT_EQ(stream(&fx, &q, &t), 0);
    ASSERT_EQ(t.n, NP);
    ASSERT_EQ(t.total.visitors, NV);
    for (size_t r = 0; r < t.n; r++) {
        int p = atoi(t.rows[r].dims[0] + 2);
        ASSERT_TRUE(p >= 0 && p < NP);
        if (t.rows[r].a.visitors != (uint64_t)vis[p] ||
            t.rows[r].a.pageviews != 2 * vis[p] + extra[p])
            TEST_FAIL_("/p%d (no visits): visitors %llu pageviews %lld, want %d %d", p,
                       (unsigned long long)t.rows[r].a.visitors, (long long)t.rows[r].a.pageviews,
                       vis[p], 2 * vis[p] + extra[p]);
    }
    ASSERT_EQ(scan(&fx, &q, &h), 0);
    tables_same(&h, &t, 0, 0);
    q_table_free(&h);
    q_table_free(&t);
    store_close(fx.s);
}

/* A visit begun before the range whose last pageview in it waits for an event after it: the
 * stream goes on past the range for that pageview's time on page alone (and, by exit page, for
 * the visit's last event). */
TEST(stream_time_on_page_after_range)
{
    nevs = 0;
    for (int i = 0; i <= 5; i++) /* 09:40, 10:05 ... 11:45, every 25 min */
        push(T("09:40:00") + i * 25 * 60000, 1, "pageview", "/p");
    push(T("12:05:00"), 1, "pageview", "/q");
    struct fixture fx;
    load_now(&fx);
    struct query q;
    query_init(&q, &fx, T("10:00:00"), T("12:00:00"));
    q.nmetrics = 1;
    q.metrics[0] = QM_TIME_ON_PAGE;
    struct q_table t;
    ASSERT_EQ(stream(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.top_count, 5);
    ASSERT_EQ(t.total.top_ms, (4 * 25 + 20) * 60000);
    q_table_free(&t);
    ASSERT_EQ(scan(&fx, &q, &t), 0);
    ASSERT_EQ(t.total.top_count, 5);
    q_table_free(&t);
    /* the same visit by exit page: its last event, /q, lies after the range (no time on page
     * asked: only the waiting exit page makes the stream go on) */
    q.nmetrics = 2;
    q.metrics[0] = QM_VISITORS;
    q.metrics[1] = QM_PAGEVIEWS;
    q.ndims = 1;
    q.dims[0].field = ROLLUP_DIM_EXIT_PAGE;
    ASSERT_EQ(stream(&fx, &q, &t), 0);
    ASSERT_EQ(t.n, 1);
    ASSERT_STREQ(t.rows[0].dims[0], "/q");
    ASSERT_EQ(t.rows[0].a.pageviews, 5);
    q_table_free(&t);
    store_close(fx.s);
}

/* The stream form refuses what it does not compute (visits_across_range_edges holds it to
 * the hand-checked edge visits). */
TEST(stream_refusals)
{
    edge_events();
    struct fixture fx;
    load_now(&fx);
    struct query q;
    query_init(&q, &fx, T("10:00:00"), T("12:00:00"));
    q.nmetrics = 5;
    q.metrics[0] = QM_VISITS;
    q.metrics[1] = QM_TOTAL_REVENUE;
    q.metrics[2] = QM_VISIT_DURATION;
    q.metrics[3] = QM_BOUNCE_RATE;
    q.metrics[4] = QM_TIME_ON_PAGE;
    struct q_table t;
    ASSERT_TRUE(!qplan_stream_can(&q));
    ASSERT_EQ(stream(&fx, &q, &t), TALLY_ENOTSUP);
    q.metrics[1] = QM_PAGEVIEWS;
    q.ndims = 2; /* the exit page with another dimension */
    q.dims[0].field = ROLLUP_DIM_EXIT_PAGE;
    q.dims[1].field = ROLLUP_DIM_PAGE;
    ASSERT_EQ(stream(&fx, &q, &t), TALLY_ENOTSUP);
    q.ndims = 1;
    q.dims[0].field = Q_DIM_GOAL; /* time on page (metrics[4]) by goal: several rows */
    ASSERT_EQ(stream(&fx, &q, &t), TALLY_ENOTSUP);
    q.nmetrics = 4;
    ASSERT_EQ(stream(&fx, &q, &t), 0); /* (no goals configured: no rows) */
    ASSERT_EQ(t.n, 0);
    q_table_free(&t);
    store_close(fx.s);
}

TEST(budget_and_speed)
{
    struct fixture fx;
    const size_t n = bench_events();
    load_bulk(&fx, n, 20000, 72);
    const int64_t from = tr_ts("2026-02-01T00:00:00Z"), to = tr_ts("2026-02-04T00:00:00Z");
    struct query q;
    query_init(&q, &fx, from, to);
    q.ndims = 2;
    q.dims[0].field = ROLLUP_DIM_SOURCE;
    q.dims[1].field = ROLLUP_DIM_PAGE;
    char *v[] = {"/blog"};
    uint32_t l[] = {5};
    struct q_filter leaf = {
        .op = QF_CONTAINS, .dim = {.field = ROLLUP_DIM_PAGE}, .nvalues = 1, .values = v, .lens = l};
    struct q_table t;
    memset(&t, 0, sizeof t);

    /* time: a deadline already past */
    struct q_budget b = {timefmt_mono_ms() - 1, 256u << 20, 100000};
    ASSERT_EQ(qexec_scan(fx.s, fx.site, &q, q.range, true, &b, &t), TALLY_ETIMEDOUT);
    q_table_free(&t);
    /* memory */
    b = (struct q_budget){timefmt_mono_ms() + 60000, 1u << 20, 100000};
    ASSERT_EQ(qexec_scan(fx.s, fx.site, &q, q.range, true, &b, &t), TALLY_ETOOBIG);
    q_table_free(&t);
    /* rows: 4 sources x 7 pages do not fit in 10 */
    b = (struct q_budget){timefmt_mono_ms() + 60000, 256u << 20, 10};
    ASSERT_EQ(qexec_scan(fx.s, fx.site, &q, q.range, true, &b, &t), TALLY_ETOOBIG);
    q_table_free(&t);
    /* the same three budgets hold the stream form */
    b = (struct q_budget){timefmt_mono_ms() - 1, 256u << 20, 100000};
    ASSERT_EQ(qexec_stream(fx.s, fx.site, &q, q.range, true, &b, &t), TALLY_ETIMEDOUT);
    q_table_free(&t);
    b = (struct q_budget){timefmt_mono_ms() + 60000, 1u << 20, 100000};
    ASSERT_EQ(qexec_stream(fx.s, fx.site, &q, q.range, true, &b, &t), TALLY_ETOOBIG);
    q_table_free(&t);
    b = (struct q_budget){timefmt_mono_ms() + 60000, 256u << 20, 10};
    ASSERT_EQ(qexec_stream(fx.s, fx.site, &q, q.range, true, &b, &t), TALLY_ETOOBIG);
    q_table_free(&t);

    /* speed, printed (best of 3: the machine may be shared): plain breakdown, then with a
     * contains filter */
    for (int k = 0; k < 4; k++) { /* k & 1: the filter; k & 2: the stream form */
        q.filter = k & 1 ? &leaf : NULL;
        int64_t ms = INT64_MAX;
        for (int rep = 0; rep < 3; rep++) {
            q_table_free(&t);
            int64_t t0 = timefmt_mono_ms();
            ASSERT_EQ(k & 2 ? stream(&fx, &q, &t) : scan(&fx, &q, &t), 0);
            int64_t d = timefmt_mono_ms() - t0;
            if (d < ms) ms = d;
        }
        ASSERT_EQ(t.n, k & 1 ? 8u : 28u);
        if (!(k & 1)) ASSERT_EQ(t.total.events, (int64_t)n);
        printf("qscan bench (%s): %zu events, %s: %lld ms, %.1f M events/s, %zu rows\n",
               k & 2 ? "stream" : "hold", n, k & 1 ? "2 dims + contains filter" : "2 dims",
               (long long)ms, ms ? (double)n / (double)ms / 1000.0 : 0.0, t.n);
        q_table_free(&t);
    }
    store_close(fx.s);
}

int main(void)
{
    RUN(same_as_rollups_utc);
    RUN(same_as_rollups_berlin);
    RUN(hand_computed_metrics);
    RUN(mixed_filters);
    RUN(visits_across_range_edges);
    RUN(goals);
    RUN(stream_same_as_hold);
    RUN(stream_refusals);
    RUN(stream_clustered_visitors);
    RUN(stream_many_rows);
    RUN(stream_time_on_page_after_range);
    RUN(budget_and_speed);
    return test_summary();
}
