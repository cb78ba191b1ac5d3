/* Unit tests for rollup/cell: canonical encoding, the fast encoder, multisets (retraction and
 * sampling), unions across buckets, key layout, dimension names. */
#include "test.h"

#include <math.h>

#include "rollup/cell.h"
#include "tally/error.h"

static uint64_t rng = 77;
static uint64_t rnd(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return hll_mix(rng);
}

static void enc(const struct cell *c, struct cbuf *b)
{
    cbuf_reset(b);
    cell_encode(c, b);
}

TEST(round_trip_is_canonical)
{
    struct cbuf a = {0}, b = {0};
    for (int round = 0; round < 20; round++) {
        struct cell c;
        cell_init(&c);
        c.pageviews = (int64_t)(rnd() % 1000);
        c.events = (int64_t)(rnd() % 1000);
        c.visits = (int64_t)(rnd() % 100);
        c.bounces = (int64_t)(rnd() % 50);
        c.duration_ms = (int64_t)(rnd() % 10000000);
        if (round % 3 == 0) {
            ASSERT_EQ(cell_add_revenue(&c, "USD", 5), 0);
            ASSERT_EQ(cell_add_revenue(&c, "EUR", 7), 0);
        }
        size_t n = round % 2 ? 10 : (round % 4 == 0 ? 20000 : 300);
        uint64_t *items = malloc(n * sizeof *items);
        for (size_t i = 0; i < n; i++) items[i] = rnd();
        if (round % 5 == 0) {
            struct cell_mentry *m = malloc(n * sizeof *m);
            for (size_t i = 0; i < n; i++)
                m[i] = (struct cell_mentry){items[i], 1 + (int64_t)(i % 3)};
            ASSERT_EQ(cell_apply_multiset(&c, m, n), 0);
            free(m);
        } else {
            ASSERT_EQ(cell_add_uniques(&c, items, n), 0);
        }
        free(items);
        enc(&c, &a);
        struct cell d;
        ASSERT_EQ(cell_decode(a.p, a.len, &d), 0);
        enc(&d, &b);
        ASSERT_EQ(a.len, b.len);
        ASSERT_MEMEQ(a.p, b.p, a.len);
        bool ex1, ex2;
        ASSERT_EQ(cell_visitors(&c, &ex1), cell_visitors(&d, &ex2));
        ASSERT_EQ(ex1, ex2);
        ASSERT_EQ(d.nrev, c.nrev);
        cell_free(&c);
        cell_free(&d);
    }
    /* corruption is refused */
    struct cell c;
    cell_init(&c);
    c.events = 3;
    enc(&c, &a);
    struct cell d;
    ASSERT_EQ(cell_decode(a.p, a.len - 1, &d), TALLY_ECORRUPT);
    a.p[0] = 9;
    ASSERT_EQ(cell_decode(a.p, a.len, &d), TALLY_ECORRUPT);
    cbuf_free(&a);
    cbuf_free(&b);
}

TEST(fresh_encoder_matches)
{
    struct cbuf a = {0}, b = {0};
    for (int round = 0; round < 50; round++) {
        struct cell c;
        cell_init(&c);
        c.pageviews = (int64_t)(rnd() % 5);
        c.visits = (int64_t)(rnd() % 3) - 1;
        struct cell_rev rev[2] = {{"EUR", 100}, {"USD", -3}};
        uint32_t nrev = (uint32_t)(rnd() % 3);
        for (uint32_t i = 0; i < nrev; i++)
            ASSERT_EQ(cell_add_revenue(&c, rev[i].cur, rev[i].micros), 0);
        size_t n = rnd() % 40;
        uint64_t set[40];
        struct cell_mentry ms[40];
        for (size_t i = 0; i < n; i++) set[i] = rnd();
        cell_sort_u64(set, n);
        bool multi = round % 2;
        if (multi) {
            for (size_t i = 0; i < n; i++)
                ms[i] = (struct cell_mentry){set[i], 1 + (int64_t)(i % 2)};
            struct cell_mentry tmp[40];
            memcpy(tmp, ms, sizeof tmp);
            ASSERT_EQ(cell_apply_multiset(&c, tmp, n), 0);
        } else if (n) {
            uint64_t tmp[40];
            memcpy(tmp, set, sizeof tmp);
            ASSERT_EQ(cell_add_uniques(&c, tmp, n), 0);
        }
        enc(&c, &a);
        cbuf_reset(&b);
        ASSERT_TRUE(cell_encode_fresh(&c, rev, nrev, multi ? NULL : set, multi ? 0 : n,
                                      multi ? ms : NULL, multi ? n : 0, &b));
        ASSERT_EQ(a.len, b.len);
        ASSERT_MEMEQ(a.p, b.p, a.len);
        cell_free(&c);
    }
    cbuf_free(&a);
    cbuf_free(&b);
}

TEST(multiset_retraction_and_sampling)
{
    enum { N = 50000 };
    struct cell c;
    cell_init(&c);
    struct cell_mentry *m = malloc(N * sizeof *m);
    uint64_t *v = malloc(N * sizeof *v);
    for (int i = 0; i < N; i++) v[i] = rnd();
    for (int i = 0; i < N; i++) m[i] = (struct cell_mentry){v[i], 1};
    ASSERT_EQ(cell_apply_multiset(&c, m, N / 2), 0);
    for (int i = 0; i < N; i++) m[i] = (struct cell_mentry){v[i], 1};
    ASSERT_EQ(cell_apply_multiset(&c, m + N / 2, N - N / 2), 0);
    bool exact;
    uint64_t est = cell_visitors(&c, &exact);
    ASSERT_TRUE(!exact);
    ASSERT_TRUE(c.level >= 2);
    ASSERT_TRUE(fabs((double)est - N) < N * 0.04);
    /* retract half: the estimate follows */
    for (int i = 0; i < N / 2; i++) m[i] = (struct cell_mentry){v[i], -1};
    ASSERT_EQ(cell_apply_multiset(&c, m, N / 2), 0);
    est = cell_visitors(&c, &exact);
    ASSERT_TRUE(fabs((double)est - N / 2) < N / 2 * 0.06);
    /* retract the rest: empty */
    for (int i = N / 2; i < N; i++) m[i] = (struct cell_mentry){v[i], -1};
    ASSERT_EQ(cell_apply_multiset(&c, m + N / 2, N - N / 2), 0);
    ASSERT_EQ(c.nms, 0);
    ASSERT_TRUE(cell_is_empty(&c));
    cell_free(&c);

    /* small multisets stay exact: a visitor with two visits leaves after two retractions */
    cell_init(&c);
    struct cell_mentry a[3] = {{5, 1}, {5, 1}, {9, 1}};
    ASSERT_EQ(cell_apply_multiset(&c, a, 3), 0);
    ASSERT_EQ(cell_visitors(&c, &exact), 2);
    struct cell_mentry r1[1] = {{5, -1}};
    ASSERT_EQ(cell_apply_multiset(&c, r1, 1), 0);
    ASSERT_EQ(cell_visitors(&c, &exact), 2);
    struct cell_mentry r2[1] = {{5, -1}};
    ASSERT_EQ(cell_apply_multiset(&c, r2, 1), 0);
    ASSERT_EQ(cell_visitors(&c, &exact), 1);
    ASSERT_TRUE(exact);
    cell_free(&c);
    free(m);
    free(v);
}

TEST(unions)
{
    struct cell x, y;
    cell_init(&x);
    cell_init(&y);
    uint64_t a[4] = {1, 2, 3, 4}, b[3] = {3, 4, 5};
    ASSERT_EQ(cell_add_uniques(&x, a, 4), 0);
    ASSERT_EQ(cell_add_uniques(&y, b, 3), 0);
    struct cell_union *u = cell_union_new();
    ASSERT_EQ(cell_union_add(u, &x), 0);
    ASSERT_EQ(cell_union_add(u, &y), 0);
    bool exact;
    ASSERT_EQ(cell_union_count(u, &exact), 5);
    ASSERT_TRUE(exact);
    cell_union_free(u);
    cell_free(&x);
    cell_free(&y);
    /* multisets count a visitor once */
    cell_init(&x);
    cell_init(&y);
    struct cell_mentry m1[2] = {{1, 2}, {2, 1}}, m2[2] = {{2, 3}, {7, 1}};
    ASSERT_EQ(cell_apply_multiset(&x, m1, 2), 0);
    ASSERT_EQ(cell_apply_multiset(&y, m2, 2), 0);
    u = cell_union_new();
    ASSERT_EQ(cell_union_add(u, &x), 0);
    ASSERT_EQ(cell_union_add(u, &y), 0);
    ASSERT_EQ(cell_union_count(u, &exact), 3);
    cell_union_free(u);
    cell_free(&x);
    cell_free(&y);
}

TEST(keys_and_names)
{
    uint8_t k[CELL_KEY_BYTES_MAX];
    for (int g = 0; g < TZ_GRAN_COUNT; g++) {
        size_t n = cell_key(k, g, 7, ROLLUP_DIM_SOURCE, 29000000, "Google", 6);
        int gg, dim;
        uint32_t site, bucket;
        const char *v;
        size_t vl;
        ASSERT_TRUE(cell_key_parse(k, n, &gg, &site, &dim, &bucket, &v, &vl));
        ASSERT_EQ(gg, g);
        ASSERT_EQ(site, 7);
        ASSERT_EQ(dim, ROLLUP_DIM_SOURCE);
        ASSERT_EQ(bucket, 29000000);
        ASSERT_EQ(vl, 6);
        ASSERT_MEMEQ(v, "Google", 6);
    }
    /* hour keys of a (site, dim) sort by bucket */
    uint8_t k1[64], k2[64];
    size_t n1 = cell_key(k1, TZ_HOUR, 1, ROLLUP_DIM_PAGE, 100, "/z", 2);
    size_t n2 = cell_key(k2, TZ_HOUR, 1, ROLLUP_DIM_PAGE, 160, "/a", 2);
    ASSERT_TRUE(memcmp(k1, k2, n1 < n2 ? n1 : n2) < 0);
    for (int d = 0; d < ROLLUP_DIM_COUNT; d++)
        ASSERT_EQ(rollup_dim_parse(rollup_dim_name(d)), d);
    ASSERT_EQ(rollup_dim_parse("event:props:plan"), ROLLUP_DIM_PROP);
    ASSERT_EQ(rollup_dim_parse("visit:nope"), -1);
}

int main(void)
{
    RUN(round_trip_is_canonical);
    RUN(fresh_encoder_matches);
    RUN(multiset_retraction_and_sampling);
    RUN(unions);
    RUN(keys_and_names);
    return test_summary();
}
