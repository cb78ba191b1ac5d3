#include "test.h"

#include "ingest/bots.h"
#include "tally/error.h"

static const char *const bots[] = {
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/120.0.6099.199 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
    "+http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "curl/8.4.0",
    "Wget/1.21.3",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; "
    "+https://openai.com/gptbot)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Y!J-ASR/0.1 crawler (http://www.yahoo-help.jp/)",   /* a short plain pattern */
    "ExampleCorpBot/0.3 (+https://example.invalid/bot)", /* heuristic only */
    "Mozilla/5.0 (compatible; some-site-scraper/1.0)",   /* heuristic only */
};

static const char *const humans[] = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 10; CUBOT P40) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
    /* server-side SDKs are never bots, even when a list pattern would match */
    "posthog-node/3.6.3",
    "analytics-node-next/0.0.1",
    "node",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "axios/1.6.2",
    "undici",
};

TEST(loads_the_list)
{
    bots_stats st;
    bots_get_stats(&st);
    ASSERT_TRUE(st.patterns_literal > 1000);
    ASSERT_TRUE(st.patterns_regex > 10);
    ASSERT_EQ(st.patterns_skipped, 0);
    ASSERT_EQ(bots_init(), TALLY_EINVAL);
}

TEST(catches_bots)
{
    for (size_t i = 0; i < TALLY_ARRAY_LEN(bots); i++)
        if (!bots_is_bot(bots[i])) TEST_FAIL_("not caught: %s", bots[i]);
    ASSERT_EQ(bots_classify(bots[0]), BOTS_LISTED);
    ASSERT_EQ(bots_classify("curl/8.4.0"), BOTS_LISTED); /* "^curl" is a regex */
    ASSERT_EQ(bots_classify("Wget/1.21"), BOTS_LISTED);  /* "[wW]get" */
    ASSERT_EQ(bots_classify("ExampleCorpBot/0.3"), BOTS_HEURISTIC);
    ASSERT_STREQ(bots_verdict_name(BOTS_LISTED), "listed");
}

TEST(passes_browsers_and_sdks)
{
    for (size_t i = 0; i < TALLY_ARRAY_LEN(humans); i++)
        if (bots_is_bot(humans[i])) TEST_FAIL_("wrongly flagged: %s", humans[i]);
}

TEST(empty_is_a_bot)
{
    ASSERT_EQ(bots_classify(""), BOTS_EMPTY);
    ASSERT_EQ(bots_classify("   "), BOTS_EMPTY);
    ASSERT_EQ(bots_classify(NULL), BOTS_EMPTY);
}

TEST(anchored_patterns_respect_anchors)
{
    /* "^curl" must not fire in the middle of a browser's string */
    ASSERT_TRUE(!bots_is_bot("Mozilla/5.0 (X11; Linux x86_64) curly/1.0 Firefox/121.0"));
    /* a pattern at the very end of the string, and a string shorter than 4 bytes */
    ASSERT_TRUE(bots_is_bot("Mozilla/5.0 bingbot"));
    ASSERT_TRUE(!bots_is_bot("abc"));
}

TEST(long_input_is_bounded)
{
    static char ua[100000];
    memset(ua, 'a', sizeof ua - 1);
    ASSERT_TRUE(!bots_is_bot(ua));
    memcpy(ua + 10, "Googlebot/", 10);
    ASSERT_TRUE(bots_is_bot(ua));
}

int main(void)
{
    if (bots_init() != TALLY_OK) {
        printf("FAIL test_bots.init: bots_init failed\n");
        return 1;
    }
    RUN(loads_the_list);
    RUN(catches_bots);
    RUN(passes_browsers_and_sdks);
    RUN(empty_is_a_bot);
    RUN(anchored_patterns_respect_anchors);
    RUN(long_input_is_bounded);
    bots_shutdown();
    return test_summary();
}
