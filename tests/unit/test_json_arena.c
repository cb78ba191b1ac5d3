#include "test.h"

#include <pthread.h>
#include <stdbool.h>

#include "core/json_arena.h"

static const char doc[] = "{\"a\":\"x\",\"b\":[1,2.5,true,null],\"c\":{\"d\":\"\\u00e9\"}}";

/* The same tree as cJSON's own parser; deleting it empties the block. */
TEST(same_tree_and_reuse)
{
    cJSON *ref = cJSON_ParseWithLength(doc, sizeof doc - 1);
    cJSON *t = json_arena_parse(doc, sizeof doc - 1);
    ASSERT_TRUE(ref && t);
    ASSERT_TRUE(json_arena_used() > 0);
    ASSERT_TRUE(cJSON_Compare(ref, t, true));
    ASSERT_STREQ(cJSON_GetObjectItemCaseSensitive(t, "c")->child->valuestring, "\xc3\xa9");
    char *out = cJSON_PrintUnformatted(t); /* printing uses malloc, freed by cJSON_free */
    ASSERT_STREQ(out, "{\"a\":\"x\",\"b\":[1,2.5,true,null],\"c\":{\"d\":\"\xc3\xa9\"}}");
    cJSON_free(out);
    size_t used = json_arena_used();
    cJSON *t2 = json_arena_parse(doc, sizeof doc - 1); /* nested: both alive */
    ASSERT_TRUE(json_arena_used() > used);
    cJSON_Delete(t);
    ASSERT_TRUE(json_arena_used() > 0);
    cJSON_Delete(t2);
    ASSERT_EQ(json_arena_used(), 0);
    cJSON_Delete(ref);
}

/* Invalid text: NULL, and the partial tree is released. Trailing bytes are ignored as by
 * cJSON_ParseWithLength. */
TEST(invalid_and_trailing)
{
    ASSERT_TRUE(json_arena_parse("{\"a\":[1,2,", 10) == NULL);
    ASSERT_EQ(json_arena_used(), 0);
    ASSERT_TRUE(json_arena_parse("", 0) == NULL);
    cJSON *t = json_arena_parse("[1] x", 5);
    ASSERT_TRUE(cJSON_IsArray(t));
    cJSON_Delete(t);
    ASSERT_EQ(json_arena_used(), 0);
}

/* A document larger than the block: the rest comes from malloc, and all of it is released. */
TEST(overflow_falls_back_to_malloc)
{
    size_t n = 20000, cap = n * 12 + 4, k = 0;
    char *big = malloc(cap);
    ASSERT_TRUE(big);
    big[k++] = '[';
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(big + k, cap - k, "%s\"v%zu\"", i ? "," : "", i);
    big[k++] = ']';
    cJSON *t = json_arena_parse(big, k);
    ASSERT_TRUE(t);
    ASSERT_EQ(cJSON_GetArraySize(t), (long long)n);
    ASSERT_STREQ(cJSON_GetArrayItem(t, (int)n - 1)->valuestring, "v19999");
    cJSON_Delete(t);
    ASSERT_EQ(json_arena_used(), 0);
    free(big);
}

/* Trees built outside json_arena_parse, and trees on other threads, use malloc. */
static void *worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++) {
        cJSON *t = json_arena_parse(doc, sizeof doc - 1);
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "k", "v");
        if (!t || !c || json_arena_used() == 0) return (void *)1;
        cJSON_Delete(t);
        cJSON_Delete(c);
        if (json_arena_used() != 0) return (void *)1;
    }
    return NULL;
}

TEST(threads_and_plain_trees)
{
    cJSON *mine = json_arena_parse(doc, sizeof doc - 1);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, worker, NULL), 0);
    for (int i = 0; i < 4; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        ASSERT_TRUE(rc == NULL);
    }
    cJSON *plain = cJSON_Parse(doc);
    ASSERT_TRUE(cJSON_Compare(mine, plain, true));
    cJSON_Delete(plain);
    cJSON_Delete(mine);
    ASSERT_EQ(json_arena_used(), 0);
}

int main(void)
{
    RUN(same_tree_and_reuse);
    RUN(invalid_and_trailing);
    RUN(overflow_falls_back_to_malloc);
    RUN(threads_and_plain_trees);
    return test_summary();
}
