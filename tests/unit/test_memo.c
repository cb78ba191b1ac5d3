/* Unit tests for store/memo: the change clock's validity rule, range edges, the floor after the
 * tag table fills, and the results' size bound and LRU order. Buckets here are day keys in
 * minutes, 1440 apart. */
#include "test.h"

#include <stdlib.h>
#include <string.h>

#include "store/memo.h"

#define TAG(site, day) ((uint64_t)(site) << 32 | (uint32_t)(day) * 1440u)
#define B(day) ((uint32_t)(day) * 1440u)

static int get(struct memo *m, const char *key, uint64_t built_min, char *out, size_t cap)
{
    void *v = NULL;
    size_t len = 0;
    int rc = memo_get(m, key, strlen(key), built_min, &v, &len);
    if (rc == 1) {
        snprintf(out, cap, "%.*s", (int)len, (const char *)v);
        free(v);
    }
    return rc;
}

TEST(a_result_is_valid_until_a_day_of_its_range_changes)
{
    struct memo *m = memo_new(1 << 20);
    /* a reader builds a result over days 20000..20029 of site 1 */
    uint64_t built = memo_now(m);
    ASSERT_TRUE(memo_put(m, "k", 1, "answer", 6, built));
    char buf[32];
    ASSERT_EQ(get(m, "k", memo_range_seq(m, 1, B(20000), B(20029 + 1)), buf, sizeof buf), 1);
    ASSERT_STREQ(buf, "answer");
    /* changes elsewhere: another site, a day after the range, a day before it */
    uint64_t t[3] = {TAG(2, 20010), TAG(1, 20030), TAG(1, 19999)};
    memo_note_days(m, t, 3);
    ASSERT_EQ(memo_range_seq(m, 1, B(20000), B(20029 + 1)), 0);
    ASSERT_EQ(get(m, "k", memo_range_seq(m, 1, B(20000), B(20029 + 1)), buf, sizeof buf), 1);
    /* a change inside the range: the entry is stale and dropped */
    uint64_t in = TAG(1, 20017);
    memo_note_days(m, &in, 1);
    uint64_t need = memo_range_seq(m, 1, B(20000), B(20029 + 1));
    ASSERT_TRUE(need > built);
    ASSERT_EQ(get(m, "k", need, buf, sizeof buf), 0);
    struct memo_stats st;
    memo_stats(m, &st);
    ASSERT_EQ(st.hits, 2);
    ASSERT_EQ(st.stale, 1);
    ASSERT_EQ(st.entries, 0);
    /* rebuilt after the change: valid again */
    built = memo_now(m);
    ASSERT_TRUE(memo_put(m, "k", 1, "second", 6, built));
    ASSERT_EQ(get(m, "k", memo_range_seq(m, 1, B(20000), B(20029 + 1)), buf, sizeof buf), 1);
    ASSERT_STREQ(buf, "second");
    /* everything changed (a rebuild) */
    memo_note_all(m);
    ASSERT_EQ(get(m, "k", memo_range_seq(m, 1, B(20000), B(20029 + 1)), buf, sizeof buf), 0);
    memo_free(m);
}

TEST(ranges_see_changes_at_their_edges_and_only_inside)
{
    struct memo *m = memo_new(1 << 20);
    /* every day of a range from the epoch, changed one at a time, is seen */
    for (uint32_t day = 0; day < 300; day += 7) {
        uint64_t before = memo_range_seq(m, 3, B(0), B(20500 + 1));
        uint64_t t = TAG(3, day);
        memo_note_days(m, &t, 1);
        ASSERT_TRUE(memo_range_seq(m, 3, B(0), B(20500 + 1)) > before);
        ASSERT_TRUE(memo_range_seq(m, 3, B(day), B(day + 1)) > before);
        if (day > 0) ASSERT_TRUE(memo_range_seq(m, 3, B(day - 1), B(day - 1 + 1)) <= before);
        ASSERT_TRUE(memo_range_seq(m, 3, B(day + 1), B(20500 + 1)) <= before);
    }
    memo_free(m);
}

TEST(a_full_tag_table_turns_into_a_floor)
{
    struct memo *m = memo_new(1 << 20);
    uint64_t built = memo_now(m);
    ASSERT_TRUE(memo_put(m, "k", 1, "v", 1, built));
    /* more distinct days than the table holds, none in the entry's range */
    uint64_t *t = malloc(1024 * sizeof *t);
    for (uint32_t site = 10; site < 10 + MEMO_TAGS_MAX / 1024 + 2; site++) {
        for (uint32_t i = 0; i < 1024; i++) t[i] = TAG(site, i);
        memo_note_days(m, t, 1024);
    }
    free(t);
    char buf[8];
    /* conservative: the untouched range now reads as changed */
    uint64_t need = memo_range_seq(m, 1, B(20000), B(20029 + 1));
    ASSERT_TRUE(need > built);
    ASSERT_EQ(get(m, "k", need, buf, sizeof buf), 0);
    /* and the clock goes on working */
    built = memo_now(m);
    ASSERT_TRUE(memo_put(m, "k", 1, "v", 1, built));
    ASSERT_EQ(get(m, "k", memo_range_seq(m, 1, B(20000), B(20029 + 1)), buf, sizeof buf), 1);
    uint64_t in = TAG(1, 20001);
    memo_note_days(m, &in, 1);
    ASSERT_EQ(get(m, "k", memo_range_seq(m, 1, B(20000), B(20029 + 1)), buf, sizeof buf), 0);
    memo_free(m);
}

TEST(results_are_bounded_least_recently_used_first)
{
    struct memo *m = memo_new(64 * 1024);
    char val[2000];
    memset(val, 'x', sizeof val);
    char key[16];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "k%d", i);
        ASSERT_TRUE(memo_put(m, key, strlen(key), val, sizeof val, 0));
        if (i % 10 == 0) {
            /* k0 used again and again: it stays while later ones push out its neighbours */
            char buf[4];
            ASSERT_EQ(get(m, "k0", 0, buf, sizeof buf), 1);
        }
    }
    struct memo_stats st;
    memo_stats(m, &st);
    ASSERT_TRUE(st.bytes <= 64 * 1024);
    ASSERT_TRUE(st.entries >= 20);
    char buf[4];
    ASSERT_EQ(get(m, "k99", 0, buf, sizeof buf), 1);
    ASSERT_EQ(get(m, "k0", 0, buf, sizeof buf), 1);
    ASSERT_EQ(get(m, "k1", 0, buf, sizeof buf), 0);
    /* too large for one entry (over bytes_max / 4): not kept */
    char *big = calloc(1, 17000);
    ASSERT_TRUE(!memo_put(m, "big", 3, big, 17000, 0));
    free(big);
    /* shrinking evicts at once; 0 keeps nothing */
    memo_set_bytes_max(m, 0);
    memo_stats(m, &st);
    ASSERT_EQ(st.entries, 0);
    ASSERT_EQ(st.bytes, 0);
    ASSERT_TRUE(!memo_put(m, "k", 1, "v", 1, 0));
    memo_free(m);
}

int main(void)
{
    RUN(a_result_is_valid_until_a_day_of_its_range_changes);
    RUN(ranges_see_changes_at_their_edges_and_only_inside);
    RUN(a_full_tag_table_turns_into_a_floor);
    RUN(results_are_bounded_least_recently_used_first);
    return test_summary();
}
