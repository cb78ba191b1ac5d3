/* Unit tests for core/sortkey: every size from 0 to past the insertion-sort cut-off and
 * beyond, on the shapes that break quicksorts (sorted, reversed, all equal, few distinct,
 * organ pipe, median-of-three killers), each checked against qsort as a sorted permutation of
 * the input; a struct key with a payload; and a comparison count that stays n log n on the
 * inputs that would make a plain quicksort quadratic. */
#include "test.h"

#include "core/sortkey.h"

static uint64_t rng_state = 7;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t less_calls;
#define U64_LESS(a, b) (less_calls++, *(a) < *(b))
SORTKEY_DEFINE(sort_u64, uint64_t, U64_LESS)

struct item {
    uint32_t key;
    uint32_t payload; /* the key's original position, to check the permutation */
};
#define ITEM_LESS(a, b) ((a)->key < (b)->key)
SORTKEY_DEFINE(sort_items, struct item, ITEM_LESS)

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

enum shape { RANDOM, SORTED, REVERSED, EQUAL, FEW, PIPE, SAWTOOTH, SHAPES };

static void fill(uint64_t *v, size_t n, enum shape s)
{
    for (size_t i = 0; i < n; i++) {
        switch (s) {
        case RANDOM: v[i] = rnd(); break;
        case SORTED: v[i] = i; break;
        case REVERSED: v[i] = n - i; break;
        case EQUAL: v[i] = 42; break;
        case FEW: v[i] = rnd() % 3; break;
        case PIPE: v[i] = i < n / 2 ? i : n - i; break;
        default: v[i] = i % 17; break;
        }
    }
}

/* Sorts v[0..n) and checks it equals qsort's answer. */
static void check_sorted_like_qsort(uint64_t *v, size_t n)
{
    uint64_t *ref = malloc((n + 1) * sizeof *ref);
    memcpy(ref, v, n * sizeof *v);
    qsort(ref, n, sizeof *ref, u64_cmp);
    sort_u64(v, n);
    size_t bad = n;
    for (size_t i = 0; i < n && bad == n; i++)
        if (v[i] != ref[i]) bad = i;
    free(ref);
    ASSERT_EQ(bad, n); /* the first position that differs from qsort's order */
}

TEST(every_shape_and_size)
{
    static uint64_t v[5000];
    for (int s = 0; s < SHAPES; s++) {
        for (size_t n = 0; n <= 300; n++) {
            fill(v, n, (enum shape)s);
            check_sorted_like_qsort(v, n);
        }
        const size_t big[] = {1000, 1023, 1024, 4097, 5000};
        for (size_t k = 0; k < sizeof big / sizeof big[0]; k++) {
            fill(v, big[k], (enum shape)s);
            check_sorted_like_qsort(v, big[k]);
        }
    }
}

TEST(extremes)
{
    uint64_t v[40];
    for (size_t i = 0; i < 40; i++)
        v[i] = i % 2 ? UINT64_MAX : 0;
    check_sorted_like_qsort(v, 40);
    for (size_t i = 0; i < 40; i++)
        ASSERT_EQ(v[i], i < 20 ? 0 : UINT64_MAX);
}

TEST(struct_keys_keep_their_payload)
{
    enum { N = 3000 };
    static struct item it[N];
    static uint32_t seen[N];
    for (uint32_t i = 0; i < N; i++)
        it[i] = (struct item){(uint32_t)(rnd() % 500), i};
    uint32_t orig[N];
    for (uint32_t i = 0; i < N; i++)
        orig[i] = it[i].key;
    sort_items(it, N);
    for (uint32_t i = 0; i < N; i++) {
        if (i) ASSERT_TRUE(it[i - 1].key <= it[i].key);
        ASSERT_EQ(orig[it[i].payload], it[i].key); /* each element moved whole */
        seen[it[i].payload]++;
    }
    for (uint32_t i = 0; i < N; i++)
        ASSERT_EQ(seen[i], 1); /* a permutation */
}

/* Inputs that drive a median-of-three quicksort towards n^2 must stay near n log n: the depth
 * limit hands them to heapsort. */
TEST(comparisons_stay_n_log_n)
{
    enum { N = 1 << 14 };
    static uint64_t v[N];
    for (int s = 0; s < SHAPES; s++) {
        fill(v, N, (enum shape)s);
        less_calls = 0;
        sort_u64(v, N);
        for (size_t i = 1; i < N; i++)
            ASSERT_TRUE(v[i - 1] <= v[i]);
        ASSERT_TRUE(less_calls < (size_t)8 * N * 14); /* 8 n log2 n */
    }
    /* the classic median-of-three killer (Musser's construction) */
    for (size_t i = 0; i < N / 2; i++) {
        v[i] = i % 2 ? N / 2 + i : i + 1;
        v[N / 2 + i] = 2 * (i + 1);
    }
    less_calls = 0;
    sort_u64(v, N);
    for (size_t i = 1; i < N; i++)
        ASSERT_TRUE(v[i - 1] <= v[i]);
    ASSERT_TRUE(less_calls < (size_t)8 * N * 14);
}

int main(void)
{
    RUN(every_shape_and_size);
    RUN(extremes);
    RUN(struct_keys_keep_their_payload);
    RUN(comparisons_stay_n_log_n);
    return test_summary();
}
