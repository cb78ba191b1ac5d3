/* Unit tests for rollup/cell: canonical encoding, the fast encoder, multisets (retraction and
 * sampling), unions across buckets, key layout, dimension names. */
#include "test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "rollup/cell.h"
#include "tally/error.h"

static uint64_t rng = 77;
static uint64_t rnd(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return hll_mix(rng);
}

/* With CELL_FUZZ_SEEDS=DIR, every cell encoded here is also written to DIR (the seed corpus
 * of tests/fuzz/fuzz_cell.c), named by a hash of its bytes. */
static void seed(const struct cbuf *b)
{
    const char *dir = getenv("CELL_FUZZ_SEEDS");
    if (!dir || b->len > 4096) return; /* small ones: the corpus is committed */
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < b->len; i++) h = (h ^ b->p[i]) * 1099511628211ULL;
    char path[512];
    snprintf(path, sizeof path, "%s/%016llx", dir, (unsigned long long)h);
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(b->p, 1, b->len, f);
    fclose(f);
}

static void enc(const struct cell *c, struct cbuf *b)
{
    cbuf_reset(b);
    cell_encode(c, b);
    seed(b);
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

static int cmp_u64_t(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Feeds ncells cells of add-only sets (sizes from sizes[]) drawn from a universe of `universe`
 * items (item 0 included) both as views of their encodings and as cells, and checks both
 * unions against one hll that merged every cell's hll with exact_max HLL_EXACT_MAX_LIMIT (what
 * the union promises to equal). */
static void union_case(size_t ncells, const size_t *sizes, uint64_t universe)
{
    struct cell_union *uv = cell_union_new(), *uc = cell_union_new();
    struct hll *ref = hll_new(HLL_EXACT_MAX_LIMIT);
    struct cbuf b = {0};
    for (size_t k = 0; k < ncells; k++) {
        struct cell c;
        cell_init(&c);
        c.pageviews = 1;
        size_t n = sizes[k];
        uint64_t *items = malloc((n ? n : 1) * sizeof *items);
        for (size_t i = 0; i < n; i++) items[i] = rnd() % universe;
        if (n) items[0] = 0;
        ASSERT_EQ(cell_add_uniques(&c, items, n), 0);
        free(items);
        enc(&c, &b);
        struct cell_view v;
        ASSERT_EQ(cell_view_parse(b.p, b.len, &v), 0);
        ASSERT_EQ(v.pageviews, 1);
        ASSERT_EQ(cell_union_add_view(uv, &v), 0);
        ASSERT_EQ(cell_union_add(uc, &c), 0);
        if (c.hll) ASSERT_EQ(hll_merge(ref, c.hll), 0);
        cell_free(&c);
    }
    bool ev, ec;
    uint64_t nv = cell_union_count(uv, &ev), nc = cell_union_count(uc, &ec);
    ASSERT_EQ(nv, hll_count(ref));
    ASSERT_EQ(nc, hll_count(ref));
    ASSERT_EQ(ev, hll_is_exact(ref));
    ASSERT_EQ(ec, hll_is_exact(ref));
    ASSERT_EQ(cell_union_count(uv, &ev), nv); /* a second count gives the same */
    cell_union_free(uv);
    cell_union_free(uc);
    hll_free(ref);
    free(b.p);
}

TEST(unions_of_many_cells_equal_one_merged_hll)
{
    size_t sizes[80];
    /* 30 small exact cells with heavy overlap (a 30-day breakdown of one value) */
    for (int i = 0; i < 30; i++) sizes[i] = 50 + rnd() % 3000;
    union_case(30, sizes, 20000);
    /* one dense cell among exact ones: the answer is the sketch of everything */
    for (int i = 0; i < 10; i++) sizes[i] = 100;
    sizes[4] = CELL_UNIQ_EXACT_MAX + 500;
    union_case(10, sizes, 1u << 30);
    /* more distinct items than HLL_EXACT_MAX_LIMIT from exact cells only: they become a
     * sketch at the count, as the merged hll does (and compactions run on the way) */
    for (int i = 0; i < 80; i++) sizes[i] = CELL_UNIQ_EXACT_MAX - 1;
    union_case(80, sizes, UINT64_MAX);
    /* empty and tiny cells */
    sizes[0] = 0, sizes[1] = 1, sizes[2] = 2;
    union_case(3, sizes, 4);
}

TEST(union_views_check_their_sets)
{
    struct cell c;
    cell_init(&c);
    struct cell_mentry m[3] = {{5, 1}, {9, 2}, {12, 1}};
    ASSERT_EQ(cell_apply_multiset(&c, m, 3), 0);
    struct cbuf b = {0};
    enc(&c, &b);
    struct cell_view v;
    ASSERT_EQ(cell_view_parse(b.p, b.len, &v), 0);
    struct cell_union *u = cell_union_new();
    ASSERT_EQ(cell_union_add_view(u, &v), 0);
    bool exact;
    ASSERT_EQ(cell_union_count(u, &exact), 3);
    cell_union_free(u);
    /* swap the first two visitors: not ascending any more */
    uint8_t *p = (uint8_t *)v.ms;
    uint8_t tmp[9];
    memcpy(tmp, p, 9);
    memcpy(p, p + 9, 9);
    memcpy(p + 9, tmp, 9);
    ASSERT_EQ(cell_view_parse(b.p, b.len, &v), 0);
    u = cell_union_new();
    ASSERT_EQ(cell_union_add_view(u, &v), TALLY_ECORRUPT);
    cell_union_free(u);
    /* a truncated value */
    ASSERT_EQ(cell_view_parse(b.p, b.len - 1, &v) == 0 &&
                  (u = cell_union_new()) != NULL && cell_union_add_view(u, &v) == 0,
              false);
    cell_union_free(u);
    cell_free(&c);
    /* add-only items out of order */
    cell_init(&c);
    uint64_t items[3] = {3, 1, 2};
    ASSERT_EQ(cell_add_uniques(&c, items, 3), 0);
    enc(&c, &b);
    ASSERT_EQ(cell_view_parse(b.p, b.len, &v), 0);
    p = (uint8_t *)v.hll + v.hll_len - 8; /* the last item := 0 */
    memset(p, 0, 8);
    u = cell_union_new();
    ASSERT_EQ(cell_union_add_view(u, &v), TALLY_ECORRUPT);
    cell_union_free(u);
    cell_free(&c);
    free(b.p);
}

TEST(multiset_union_of_views_counts_each_visitor_once)
{
    struct cbuf b = {0};
    struct cell_union *u = cell_union_new();
    size_t cap = 0, n = 0;
    uint64_t *all = NULL;
    for (int k = 0; k < 30; k++) {
        struct cell c;
        cell_init(&c);
        size_t m = 100 + rnd() % 2000;
        struct cell_mentry *d = malloc(m * sizeof *d);
        for (size_t i = 0; i < m; i++) d[i] = (struct cell_mentry){rnd() % 30000 + 1, 1};
        ASSERT_EQ(cell_apply_multiset(&c, d, m), 0);
        free(d);
        if (n + c.nms > cap) {
            cap = (n + c.nms) * 2;
            all = realloc(all, cap * sizeof *all);
        }
        for (size_t i = 0; i < c.nms; i++) all[n++] = c.ms[i].visitor;
        enc(&c, &b);
        struct cell_view v;
        ASSERT_EQ(cell_view_parse(b.p, b.len, &v), 0);
        ASSERT_EQ(cell_union_add_view(u, &v), 0);
        cell_free(&c);
    }
    qsort(all, n, sizeof *all, cmp_u64_t);
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || all[i] != all[i - 1]) distinct++;
    bool exact;
    ASSERT_EQ(cell_union_count(u, &exact), distinct);
    ASSERT_TRUE(exact);
    cell_union_free(u);
    free(all);
    free(b.p);
}

/* A union saved after some cells and loaded into another counts what the first would have
 * counted after all the cells: add-only sets (exact, with a dense cell, beyond the exact
 * limit) and multisets at different sampling levels. */
static void saved_case(size_t ncells, size_t split, const size_t *sizes, uint64_t universe,
                       bool multiset)
{
    struct cell_union *all = cell_union_new(), *pre = cell_union_new(), *re = cell_union_new();
    struct cbuf b = {0}, st = {0};
    struct cell *cells = calloc(ncells, sizeof *cells);
    for (size_t k = 0; k < ncells; k++) {
        cell_init(&cells[k]);
        size_t n = sizes[k];
        if (multiset) {
            struct cell_mentry *d = malloc((n ? n : 1) * sizeof *d);
            for (size_t i = 0; i < n; i++) d[i] = (struct cell_mentry){rnd() % universe + 1, 1};
            ASSERT_EQ(cell_apply_multiset(&cells[k], d, n), 0);
            free(d);
        } else {
            uint64_t *items = malloc((n ? n : 1) * sizeof *items);
            for (size_t i = 0; i < n; i++) items[i] = rnd() % universe;
            ASSERT_EQ(cell_add_uniques(&cells[k], items, n), 0);
            free(items);
        }
        enc(&cells[k], &b);
        struct cell_view v;
        ASSERT_EQ(cell_view_parse(b.p, b.len, &v), 0);
        ASSERT_EQ(cell_union_add_view(all, &v), 0);
        ASSERT_EQ(cell_union_add_view(k < split ? pre : re, &v), 0);
    }
    ASSERT_EQ(cell_union_save(pre, &st), 0);
    ASSERT_TRUE(st.len <= cell_union_saved_bytes_max(pre));
    /* the saved state first (as the query cache loads it), then the later cells */
    struct cell_union *merged = cell_union_new();
    size_t used = 0;
    ASSERT_EQ(cell_union_add_saved(merged, st.p, st.len, &used), 0);
    ASSERT_EQ(used, st.len);
    for (size_t k = split; k < ncells; k++) ASSERT_EQ(cell_union_add(merged, &cells[k]), 0);
    /* and the other way round: the later cells first */
    struct cell_union *merged2 = cell_union_new();
    for (size_t k = split; k < ncells; k++) ASSERT_EQ(cell_union_add(merged2, &cells[k]), 0);
    ASSERT_EQ(cell_union_add_saved(merged2, st.p, st.len, &used), 0);
    bool e1, e2, e3;
    uint64_t n1 = cell_union_count(all, &e1), n2 = cell_union_count(merged, &e2);
    ASSERT_EQ(n2, n1);
    ASSERT_EQ(e2, e1);
    ASSERT_EQ(cell_union_count(merged2, &e3), n1);
    ASSERT_EQ(e3, e1);
    cell_union_free(merged2);
    /* a truncated state is refused */
    struct cell_union *bad = cell_union_new();
    ASSERT_EQ(cell_union_add_saved(bad, st.p, st.len > 20 ? 20 : st.len - 1, &used),
              TALLY_ECORRUPT);
    cell_union_free(bad);
    for (size_t k = 0; k < ncells; k++) cell_free(&cells[k]);
    free(cells);
    cell_union_free(all);
    cell_union_free(pre);
    cell_union_free(re);
    cell_union_free(merged);
    free(b.p);
    free(st.p);
}

TEST(saved_unions_continue_where_they_stopped)
{
    size_t sizes[80];
    /* 29 days kept, the 30th added: mostly one big saved run and a small one (the galloping
     * count), overlapping */
    for (int i = 0; i < 30; i++) sizes[i] = 2000 + rnd() % 3000;
    saved_case(30, 29, sizes, 60000, false);
    saved_case(30, 29, sizes, 60000, true);
    /* several later cells, little overlap */
    saved_case(30, 20, sizes, UINT64_MAX - 1, false);
    saved_case(30, 20, sizes, UINT64_MAX - 1, true);
    /* a dense cell in the saved part, and in the later part */
    for (int i = 0; i < 10; i++) sizes[i] = 300;
    sizes[2] = CELL_UNIQ_EXACT_MAX + 100;
    saved_case(10, 5, sizes, UINT64_MAX - 1, false);
    saved_case(10, 1, sizes, UINT64_MAX - 1, false);
    /* sampled multisets: the later cells' level is higher than the saved one's, and lower */
    for (int i = 0; i < 10; i++) sizes[i] = 100;
    sizes[7] = CELL_VISIT_SET_MAX * 3;
    saved_case(10, 5, sizes, UINT64_MAX - 1, true);
    sizes[7] = 100;
    sizes[1] = CELL_VISIT_SET_MAX * 3;
    saved_case(10, 5, sizes, UINT64_MAX - 1, true);
    /* beyond the exact limit in the saved part: it is saved as a sketch */
    for (int i = 0; i < 80; i++) sizes[i] = CELL_UNIQ_EXACT_MAX - 1;
    saved_case(80, 70, sizes, UINT64_MAX, false);
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
    RUN(unions_of_many_cells_equal_one_merged_hll);
    RUN(union_views_check_their_sets);
    RUN(multiset_union_of_views_counts_each_visitor_once);
    RUN(saved_unions_continue_where_they_stopped);
    RUN(keys_and_names);
    return test_summary();
}
