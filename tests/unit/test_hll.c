/* Unit tests for rollup/hll: exact mode, the switch to the sketch, error bound, merge and
 * order independence, serialization. */
#include "test.h"

#include <math.h>

#include "rollup/hll.h"
#include "tally/error.h"

static uint64_t rng_state = 42;
static uint64_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return hll_mix(rng_state);
}

static int same_state(const struct hll *a, const struct hll *b)
{
    size_t na = hll_serialized_bytes(a), nb = hll_serialized_bytes(b);
    if (na != nb) return 0;
    uint8_t *x = malloc(na), *y = malloc(nb);
    hll_serialize(a, x);
    hll_serialize(b, y);
    int same = memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

TEST(exact_small)
{
    struct hll *h = hll_new(100);
    ASSERT_EQ(hll_count(h), 0);
    for (uint64_t i = 0; i < 90; i++) ASSERT_EQ(hll_add(h, i * 7919), 0);
    for (uint64_t i = 0; i < 90; i++) ASSERT_EQ(hll_add(h, i * 7919), 0); /* duplicates */
    ASSERT_TRUE(hll_is_exact(h));
    ASSERT_EQ(hll_count(h), 90);
    const uint64_t *items;
    ASSERT_EQ(hll_items(h, &items), 90);
    for (size_t i = 1; i < 90; i++) ASSERT_TRUE(items[i - 1] < items[i]);
    hll_free(h);
    hll_free(NULL);
}

TEST(switch_to_dense)
{
    struct hll *h = hll_new(1000);
    for (uint64_t i = 0; i < 1000; i++) hll_add(h, rnd());
    ASSERT_TRUE(hll_is_exact(h));
    ASSERT_EQ(hll_count(h), 1000);
    hll_add(h, rnd());
    ASSERT_TRUE(!hll_is_exact(h));
    double e = hll_estimate(h);
    ASSERT_TRUE(fabs(e - 1001) < 1001 * 3 * HLL_REL_ERROR);
    hll_free(h);
}

TEST(error_bound)
{
    const size_t sizes[] = {5000, 20000, 100000, 1000000};
    for (size_t s = 0; s < TALLY_ARRAY_LEN(sizes); s++) {
        struct hll *h = hll_new(16);
        for (size_t i = 0; i < sizes[s]; i++) hll_add(h, rnd());
        double e = hll_estimate(h), n = (double)sizes[s];
        /* three standard errors */
        if (fabs(e - n) > n * 3 * HLL_REL_ERROR)
            TEST_FAIL_("n=%zu estimate %.0f outside 3 sigma", sizes[s], e);
        hll_free(h);
    }
}

TEST(order_and_batching_independent)
{
    enum { N = 30000 };
    uint64_t *v = malloc(N * sizeof *v);
    for (int i = 0; i < N; i++) v[i] = rnd() % 20000; /* with duplicates */
    struct hll *a = hll_new(5000), *b = hll_new(5000), *c = hll_new(5000);
    for (int i = 0; i < N; i++) hll_add(a, v[i]);
    for (int i = N - 1; i >= 0; i--) hll_add(b, v[i]);
    /* c: batches of varying size through add_many, via two halves merged */
    struct hll *c2 = hll_new(5000);
    uint64_t *tmp = malloc(N * sizeof *tmp);
    memcpy(tmp, v, N * sizeof *tmp);
    hll_add_many(c, tmp, 777);
    hll_add_many(c2, tmp + 777, N / 2 - 777);
    hll_add_many(c, tmp + N / 2, N - N / 2);
    hll_merge(c, c2);
    ASSERT_TRUE(same_state(a, b));
    ASSERT_TRUE(same_state(a, c));
    free(v);
    free(tmp);
    hll_free(a);
    hll_free(b);
    hll_free(c);
    hll_free(c2);
}

TEST(merge_exact)
{
    struct hll *a = hll_new(100), *b = hll_new(100);
    for (uint64_t i = 0; i < 60; i++) hll_add(a, i);
    for (uint64_t i = 30; i < 90; i++) hll_add(b, i);
    ASSERT_EQ(hll_merge(a, b), 0);
    ASSERT_TRUE(hll_is_exact(a));
    ASSERT_EQ(hll_count(a), 90);
    for (uint64_t i = 90; i < 130; i++) hll_add(b, i);
    ASSERT_EQ(hll_merge(a, b), 0); /* 130 > 100: dense */
    ASSERT_TRUE(!hll_is_exact(a));
    ASSERT_TRUE(fabs(hll_estimate(a) - 130) < 5);
    hll_free(a);
    hll_free(b);
}

TEST(serialize_round_trip)
{
    for (int dense = 0; dense < 2; dense++) {
        struct hll *h = hll_new(200);
        for (int i = 0; i < (dense ? 5000 : 150); i++) hll_add(h, rnd());
        size_t n = hll_serialized_bytes(h);
        uint8_t *buf = malloc(n);
        ASSERT_EQ(hll_serialize(h, buf), n);
        struct hll *g = NULL;
        ASSERT_EQ(hll_deserialize(buf, n, 200, &g), 0);
        ASSERT_TRUE(same_state(h, g));
        ASSERT_EQ(hll_count(h), hll_count(g));
        struct hll *m = hll_new(200);
        ASSERT_EQ(hll_merge_serialized(m, buf, n), 0);
        ASSERT_TRUE(same_state(h, m));
        /* corruptions are refused */
        struct hll *bad = NULL;
        ASSERT_EQ(hll_deserialize(buf, n - 1, 200, &bad), TALLY_ECORRUPT);
        buf[0] = 9;
        ASSERT_EQ(hll_deserialize(buf, n, 200, &bad), TALLY_ECORRUPT);
        buf[0] = HLL_VERSION;
        if (!dense) {
            /* swap two items: no longer ascending */
            uint8_t t[8];
            memcpy(t, buf + 4, 8);
            memcpy(buf + 4, buf + 12, 8);
            memcpy(buf + 12, t, 8);
        } else {
            buf[100] = 60; /* register value out of range */
        }
        ASSERT_EQ(hll_deserialize(buf, n, 200, &bad), TALLY_ECORRUPT);
        free(buf);
        hll_free(h);
        hll_free(g);
        hll_free(m);
    }
    uint8_t empty[3];
    struct hll *e = hll_new(0);
    ASSERT_EQ(hll_serialize(e, empty), 3);
    struct hll *g = NULL;
    ASSERT_EQ(hll_deserialize(empty, 3, 0, &g), 0);
    ASSERT_EQ(hll_count(g), 0);
    hll_free(e);
    hll_free(g);
}

int main(void)
{
    RUN(exact_small);
    RUN(switch_to_dense);
    RUN(error_bound);
    RUN(order_and_batching_independent);
    RUN(merge_exact);
    RUN(serialize_round_trip);
    return test_summary();
}
