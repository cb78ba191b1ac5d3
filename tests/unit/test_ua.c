#include "test.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <pthread.h>

#include "ingest/dataset.h"
#include "ingest/ua.h"
#include "tally/error.h"

typedef struct ua_case {
    const char *ua, *browser, *browser_version, *os, *os_version;
    ua_device device;
} ua_case;

static const ua_case cases[] = {
    {"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 Safari/537.36",
     "Chrome", "120.0", "Windows", "10", UA_DEVICE_DESKTOP},
    {"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0", "Firefox",
     "121.0", "Windows", "10", UA_DEVICE_DESKTOP},
    {"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
     "Microsoft Edge", "120.0", "Windows", "10", UA_DEVICE_DESKTOP},
    {"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.2 Safari/605.1.15",
     "Safari", "17.2", "Mac", "10.15", UA_DEVICE_DESKTOP},
    {"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 Safari/537.36",
     "Chrome", "120.0", "Mac", "10.15", UA_DEVICE_DESKTOP},
    {"Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
     "Safari", "17.2", "iOS", "17.2", UA_DEVICE_MOBILE},
    {"Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
     "Chrome", "120.0", "iOS", "17.2", UA_DEVICE_MOBILE},
    {"Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/16.6 Mobile/15E148 Safari/604.1",
     "Safari", "16.6", "iOS", "16.6", UA_DEVICE_TABLET},
    {"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.6099.144 Mobile Safari/537.36",
     "Chrome", "120.0", "Android", "14", UA_DEVICE_MOBILE},
    {"Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 Safari/537.36",
     "Chrome", "120.0", "Android", "13", UA_DEVICE_TABLET},
    {"Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0", "Firefox", "121.0",
     "Android", "14", UA_DEVICE_MOBILE},
    {"Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
     "Samsung Browser", "23.0", "Android", "13", UA_DEVICE_MOBILE},
    {"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
     "Safari/537.36",
     "Chrome", "120.0", "GNU/Linux", "", UA_DEVICE_DESKTOP},
    {"Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", "Firefox",
     "121.0", "Ubuntu", "", UA_DEVICE_DESKTOP},
    {"Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 Safari/537.36",
     "Chrome", "120.0", "Chrome OS", "14541.0", UA_DEVICE_DESKTOP},
    {"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot", "2.1",
     "", "", UA_DEVICE_BOT},
    {"Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36",
     "Samsung Browser", "4.0", "Tizen", "6.0", UA_DEVICE_UNKNOWN},
    {"curl/8.4.0", "curl", "8.4", "", "", UA_DEVICE_UNKNOWN},
    {"", "", "", "", "", UA_DEVICE_UNKNOWN},
    {"\xff\xfe garbage \x01\x02", "", "", "", "", UA_DEVICE_UNKNOWN},
};

static const char *const sdk_uas[] = {
    "posthog-node/3.6.3",
    "analytics-node-next/0.0.1",
    "@segment/analytics-node/2.1.0",
    "node",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "axios/1.6.2",
    "undici",
    "posthog-python/3.1.0",
};

static void check_case(const ua_case *c, const ua_info *u)
{
    if (strcmp(u->browser, c->browser) || strcmp(u->browser_version, c->browser_version) ||
        strcmp(u->os, c->os) || strcmp(u->os_version, c->os_version) || u->device != c->device)
        TEST_FAIL_("%s: got [%s|%s|%s|%s|%s], want [%s|%s|%s|%s|%s]", c->ua, u->browser,
                   u->browser_version, u->os, u->os_version, ua_device_name(u->device), c->browser,
                   c->browser_version, c->os, c->os_version, ua_device_name(c->device));
    ASSERT_TRUE(!u->server_sdk);
}

static bool same_info(const ua_info *a, const ua_info *b)
{
    return !strcmp(a->browser, b->browser) && !strcmp(a->browser_version, b->browser_version) &&
           !strcmp(a->os, b->os) && !strcmp(a->os_version, b->os_version) &&
           a->device == b->device && a->server_sdk == b->server_sdk && a->bot == b->bot;
}

/* More real-world strings for the prefilter differential test: devices, apps, old browsers. */
static const char *const more_uas[] = {
    "Mozilla/5.0 (Linux; Android 12; SM-T870) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 10; HUAWEI P30 Build/HUAWEIELE-L29) AppleWebKit/537.36 (KHTML, "
    "like Gecko) Version/4.0 Chrome/88.0.4324.93 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; U; Android 11; en-us; Redmi Note 8 Pro Build/RP1A.200720.011) "
    "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/89.0.4389.116 Mobile "
    "Safari/537.36 XiaoMi/MiuiBrowser/13.5.40",
    "Mozilla/5.0 (Mobile; Nokia_8110_4G; rv:48.0) Gecko/48.0 Firefox/48.0 KAIOS/2.5",
    "Mozilla/5.0 (BB10; Touch) AppleWebKit/537.10+ (KHTML, like Gecko) Version/10.0.9.2372 "
    "Mobile Safari/537.10+",
    "Mozilla/5.0 (compatible; MSIE 10.0; Windows Phone 8.0; Trident/6.0; IEMobile/10.0; ARM; "
    "Touch; NOKIA; Lumia 920)",
    "Mozilla/5.0 (Linux; Android 9; KFMAWI) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Silk/120.3.1 like Chrome/120.0.6099.230 Safari/537.36",
    "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/120.0.0.0 Safari/537.36 Edge/44.18363.8131",
    "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/87.0.4280.88 Safari/537.36 WebAppManager",
    "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)",
    "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko",
    "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en) "
    "Presto/2.5.25 Version/10.54",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 [FBAN/FBIOS;FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/16.0;"
    "FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 Instagram "
    "297.0.0.33.109 Android",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Vivaldi/6.5",
    "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0 Waterfox/G5.1",
    "Mozilla/5.0 (Linux; Android 11; moto g(30)) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 8.1.0; LG-M700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/88.0 Mobile Safari/537.36",
    "Dalvik/2.1.0 (Linux; U; Android 11; SM-A515F Build/RP1A.200720.012)",
    "Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0",
    "MyApp-iPad/3.2.1 CFNetwork/1408.0.4 Darwin/22.5.0",
    "Spotify/8.8.0 iOS/16.5 (iPhone14,2)",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)",
    "Roku/DVP-9.10 (519.10E04111A)",
    "Mozilla/5.0 (X11; U; Linux armv7l like Android; en-us) AppleWebKit/531.2+ (KHTML, like "
    "Gecko) Version/5.0 Safari/531.2+ Gecko/20100101 Firefox/4.0 Kindle/3.0",
    "SAMSUNG-SGH-E250/1.0 Profile/MIDP-2.0 Configuration/CLDC-1.1 UP.Browser/6.2.3.3.c.1.101 "
    "(GUI) MMP/2.0",
    "Mozilla/5.0 (Linux; Android 10; CUBOT P40) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Nintendo Switch; WifiWebAuthApplet) AppleWebKit/606.4 (KHTML, like Gecko) "
    "NF/6.0.1.15.4 NintendoBrowser/5.1.0.20393",
    "Mozilla/5.0 (Linux; Android 9; SHIELD Android TV) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0 Safari/537.36",
};

static void check_same(const char *ua, int *diffs)
{
    ua_info a, b;
    ua_set_prefilter(true);
    ua_classify_uncached(ua, &a);
    ua_set_prefilter(false);
    ua_classify_uncached(ua, &b);
    ua_set_prefilter(true);
    if (!same_info(&a, &b)) {
        if (*diffs < 5)
            printf("prefilter differs on %s: [%s|%s|%s|%s|%d] vs [%s|%s|%s|%s|%d]\n", ua, a.browser,
                   a.browser_version, a.os, a.os_version, a.device, b.browser, b.browser_version,
                   b.os, b.os_version, b.device);
        (*diffs)++;
    }
}

#if defined(__SANITIZE_ADDRESS__)
#define DIFF_STRIDE                                                                                \
    4 /* ASan is ~5x slower: a quarter of the strings still covers every rule kind */
#else
#define DIFF_STRIDE 1
#endif

TEST(prefilter_changes_nothing)
{
    ua_stats st;
    ua_get_stats(&st);
    ASSERT_TRUE(st.rules_filtered > st.rules_loaded / 2);
    int diffs = 0, n = 0;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(cases); i++, n++)
        check_same(cases[i].ua, &diffs);
    for (size_t i = 0; i < TALLY_ARRAY_LEN(more_uas); i++, n++)
        check_same(more_uas[i], &diffs);
    /* Every example string of the crawler list: thousands of real bots and tools. */
    dataset_blob blob = dataset_crawler_agents();
    cJSON *root = cJSON_ParseWithLength(blob.data, blob.len);
    ASSERT_TRUE(cJSON_IsArray(root));
    const cJSON *e, *inst;
    int k = 0;
    cJSON_ArrayForEach(e, root)
    {
        cJSON_ArrayForEach(inst, cJSON_GetObjectItemCaseSensitive(e, "instances"))
        {
            if (cJSON_IsString(inst) && k++ % DIFF_STRIDE == 0) {
                check_same(inst->valuestring, &diffs);
                n++;
            }
        }
    }
    cJSON_Delete(root);
    /* Seeded mutations (cut a slice out, upper-case a run) of the browser strings. */
    unsigned seed = 12345;
    char buf[UA_INPUT_BYTES_MAX];
    for (int r = 0; r < 400 / DIFF_STRIDE; r++) {
        const char *src = more_uas[r % TALLY_ARRAY_LEN(more_uas)];
        size_t len = strlen(src);
        seed = seed * 1103515245u + 12345u;
        size_t a = (seed >> 8) % len, b = a + (seed >> 20) % 12;
        if (b > len) b = len;
        memcpy(buf, src, a);
        memcpy(buf + a, src + b, len - b + 1);
        if (r % 3 == 0)
            for (size_t i = a / 2; buf[i] && i < a / 2 + 20; i++)
                buf[i] = (char)toupper((unsigned char)buf[i]);
        check_same(buf, &diffs);
        n++;
    }
    ASSERT_TRUE(n > 500);
    ASSERT_EQ(diffs, 0);
}

TEST(rules_load_and_compile)
{
    ua_stats st;
    ua_get_stats(&st);
    ASSERT_TRUE(st.rules_loaded > 1000);
    ASSERT_EQ(st.rules_skipped, 0);
    ASSERT_TRUE(strstr(dataset_versions(), "uap-core ") != NULL);
    ASSERT_EQ(ua_init(16), TALLY_EINVAL); /* already initialised */
}

TEST(known_user_agents)
{
    for (size_t i = 0; i < TALLY_ARRAY_LEN(cases); i++) {
        ua_info u;
        ua_classify_uncached(cases[i].ua, &u);
        check_case(&cases[i], &u);
        ua_classify(cases[i].ua, &u); /* miss, then hit */
        check_case(&cases[i], &u);
        ua_classify(cases[i].ua, &u);
        check_case(&cases[i], &u);
    }
}

TEST(server_sdks_are_not_visitors)
{
    for (size_t i = 0; i < TALLY_ARRAY_LEN(sdk_uas); i++) {
        ua_info u;
        ua_classify(sdk_uas[i], &u);
        ASSERT_TRUE(u.server_sdk);
        ASSERT_EQ(u.device, UA_DEVICE_UNKNOWN);
        ASSERT_STREQ(u.browser, "");
        ASSERT_STREQ(u.os, "");
        ASSERT_TRUE(ua_is_server_sdk(sdk_uas[i]));
        ASSERT_EQ(u.bot, BOTS_HUMAN);
    }
    ASSERT_TRUE(!ua_is_server_sdk("nodejs-crawler"));
    ASSERT_TRUE(!ua_is_server_sdk("Mozilla/5.0 node"));
    ASSERT_TRUE(!ua_is_server_sdk(NULL));
    ua_info u;
    ua_classify(NULL, &u);
    ASSERT_STREQ(u.browser, "");
}

TEST(outputs_are_bounded_and_valid_utf8)
{
    /* uap-core's "^(.{0,200})/(\d+) CFNetwork" copies arbitrary text into the family. */
    char ua[UA_INPUT_BYTES_MAX + 600];
    memset(ua, 'A', sizeof ua - 1);
    ua[sizeof ua - 1] = 0;
    ua_info u;
    ua_classify(ua, &u);
    ASSERT_TRUE(strlen(u.browser) < UA_NAME_MAX);
    char app[400];
    snprintf(app, sizeof app, "%s\xc3\xa9\xc3\xa9\xc3/1 CFNetwork/1 Darwin/20",
             "VeryLongApplicationNameThatGoesOnAndOnAndOnForMoreThanFortyEightBytes");
    ua_classify(app, &u);
    size_t n = strlen(u.browser);
    ASSERT_TRUE(n > 0 && n < UA_NAME_MAX);
    for (size_t i = 0; i < n; i++)
        ASSERT_TRUE((unsigned char)u.browser[i] >= 0x20);
}

TEST(bot_verdict_rides_along)
{
    ua_info u;
    ua_classify(cases[0].ua, &u);
    ASSERT_EQ(u.bot, BOTS_HUMAN);
    ua_classify("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", &u);
    ASSERT_EQ(u.bot, BOTS_LISTED);
    ua_classify("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", &u);
    ASSERT_EQ(u.bot, BOTS_LISTED); /* from the cache */
    ua_classify("", &u);
    ASSERT_EQ(u.bot, BOTS_EMPTY);
}

TEST(cache_is_bounded_and_consistent)
{
    ua_shutdown();
    ASSERT_EQ(ua_init(64), TALLY_OK);
    ua_stats st;
    ua_get_stats(&st);
    ASSERT_EQ(st.cache_capacity, 64);
    char ua[200];
    for (int i = 0; i < 1000; i++) {
        snprintf(ua, sizeof ua, "Mozilla/5.0 (Windows NT 10.0) Chrome/%d.0.0.0 Safari/537.36", i);
        ua_info a, b;
        ua_classify(ua, &a);
        ua_classify_uncached(ua, &b);
        ASSERT_TRUE(same_info(&a, &b));
        ASSERT_STREQ(a.browser, "Chrome");
    }
    ua_get_stats(&st);
    ASSERT_TRUE(st.cache_entries <= 64);
    ASSERT_TRUE(st.cache_evictions >= 1000 - 64);
    ASSERT_EQ(st.cache_misses, 1000);
    /* A hot key survives a stream of one-off keys (CLOCK gives it a second chance). */
    const char *hot = cases[0].ua;
    ua_info u;
    ua_classify(hot, &u);
    for (int i = 0; i < 200; i++) {
        snprintf(ua, sizeof ua, "Mozilla/5.0 (X11; Linux x86_64) Firefox/%d.0", i);
        ua_classify(ua, &u);
        ua_classify(hot, &u);
    }
    ua_stats st2;
    ua_get_stats(&st2);
    ASSERT_TRUE(st2.cache_hits - st.cache_hits >= 190);
    check_case(&cases[0], &u);
}

typedef struct worker_arg {
    int seed, bad;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    unsigned s = (unsigned)a->seed;
    for (int i = 0; i < 3000; i++) {
        s = s * 1103515245u + 12345u;
        size_t k = (s >> 8) % TALLY_ARRAY_LEN(cases);
        ua_info u;
        ua_classify(cases[k].ua, &u);
        if (strcmp(u.browser, cases[k].browser) || u.device != cases[k].device) a->bad++;
    }
    return NULL;
}

TEST(concurrent_classification)
{
    ua_shutdown();
    ASSERT_EQ(ua_init(32), TALLY_OK); /* small: forces evictions under contention */
    pthread_t t[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){i + 1, 0};
        pthread_create(&t[i], NULL, worker, &args[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(args[i].bad, 0);
}

TEST(no_cache_mode)
{
    ua_shutdown();
    ASSERT_EQ(ua_init(0), TALLY_OK);
    ua_info u;
    ua_classify(cases[5].ua, &u);
    check_case(&cases[5], &u);
    ua_stats st;
    ua_get_stats(&st);
    ASSERT_EQ(st.cache_capacity, 0);
}

int main(void)
{
    if (bots_init() != TALLY_OK || ua_init(UA_CACHE_ENTRIES_DEFAULT) != TALLY_OK) {
        printf("FAIL test_ua.init: ua_init failed\n");
        return 1;
    }
    RUN(rules_load_and_compile);
    RUN(known_user_agents);
    RUN(prefilter_changes_nothing);
    RUN(server_sdks_are_not_visitors);
    RUN(outputs_are_bounded_and_valid_utf8);
    RUN(bot_verdict_rides_along);
    RUN(cache_is_bounded_and_consistent);
    RUN(concurrent_classification);
    RUN(no_cache_mode);
    ua_shutdown();
    bots_shutdown();
    return test_summary();
}
