#include "test.h"

#include "core/keys.h"

TEST(generate_and_verify)
{
    char key[KEY_TEXT_BYTES], line[KEY_DIGEST_LINE_BYTES], key2[KEY_TEXT_BYTES],
        line2[KEY_DIGEST_LINE_BYTES];
    ASSERT_EQ(key_generate(KEY_SCOPE_WRITE, key, line), 0);
    ASSERT_EQ(key_generate(KEY_SCOPE_READ, key2, line2), 0);
    ASSERT_EQ(strlen(key), 47);
    ASSERT_TRUE(strncmp(key, "tly_", 4) == 0);
    ASSERT_TRUE(strncmp(line, "write:", 6) == 0);
    ASSERT_EQ(strlen(line), 6 + 64);
    ASSERT_TRUE(strcmp(key, key2) != 0);
    char *items[] = {"garbage", "read:zz", line};
    struct config_list global = {3, items};
    char *site_items[] = {line2};
    struct config_list site = {1, site_items};
    ASSERT_EQ(key_verify(key, strlen(key), &global, NULL), KEY_SCOPE_WRITE);
    ASSERT_EQ(key_verify(key2, strlen(key2), &global, NULL), KEY_SCOPE_NONE);
    ASSERT_EQ(key_verify(key2, strlen(key2), &global, &site), KEY_SCOPE_READ);
    ASSERT_EQ(key_verify(key, strlen(key) - 1, &global, &site), KEY_SCOPE_NONE);
    ASSERT_EQ(key_verify("", 0, &global, &site), KEY_SCOPE_NONE);
    char again[KEY_DIGEST_LINE_BYTES];
    ASSERT_EQ(key_digest_line(key, KEY_SCOPE_WRITE, again), 0);
    ASSERT_STREQ(again, line);
    ASSERT_TRUE(key_scope_allows(KEY_SCOPE_ADMIN, KEY_SCOPE_WRITE));
    ASSERT_TRUE(!key_scope_allows(KEY_SCOPE_READ, KEY_SCOPE_WRITE));
    ASSERT_TRUE(!key_scope_allows(KEY_SCOPE_WRITE, KEY_SCOPE_READ));
}

int main(void)
{
    RUN(generate_and_verify);
    return test_summary();
}
