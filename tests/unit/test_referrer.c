#include "test.h"

#include "ingest/referrer.h"
#include "tally/error.h"

typedef struct ref_case {
    const char *ref, *page_host;
    referrer_tags tags;
    const char *source, *channel, *medium;
} ref_case;

static const ref_case cases[] = {
    {"https://www.google.com/", "example.com", {0}, "Google", "Organic Search", "search"},
    {"https://www.google.co.uk/search?q=x",
     "example.com",
     {0},
     "Google",
     "Organic Search",
     "search"},
    {"https://google.de/imgres?imgurl=x",
     "example.com",
     {0},
     "Google Images",
     "Organic Search",
     "search"},
    {"https://t.co/abc123", "example.com", {0}, "Twitter", "Organic Social", "social"},
    {"https://x.com/someone/status/1", "example.com", {0}, "Twitter", "Organic Social", "social"},
    {"https://l.facebook.com/l.php?u=https%3A%2F%2Fexample.com",
     "example.com",
     {0},
     "Facebook",
     "Organic Social",
     "social"},
    {"https://lm.facebook.com/", "example.com", {0}, "Facebook", "Organic Social", "social"},
    {"https://news.ycombinator.com/item?id=1",
     "example.com",
     {0},
     "Hacker News",
     "Organic Social",
     "social"},
    {"https://duckduckgo.com/", "example.com", {0}, "DuckDuckGo", "Organic Search", "search"},
    {"https://search.brave.com/search?q=x",
     "example.com",
     {0},
     "Brave",
     "Organic Search",
     "search"},
    {"https://www.bing.com/search?q=x", "example.com", {0}, "Bing", "Organic Search", "search"},
    {"https://chatgpt.com/", "example.com", {0}, "ChatGPT", "AI Assistants", "ai"},
    {"https://www.perplexity.ai/search/x", "example.com", {0}, "Perplexity", "AI Assistants", "ai"},
    {"https://www.youtube.com/watch?v=1", "example.com", {0}, "YouTube", "Organic Video", "video"},
    {"https://lnkd.in/abc", "example.com", {0}, "LinkedIn", "Organic Social", "social"},
    {"https://old.reddit.com/r/c/", "example.com", {0}, "Reddit", "Organic Social", "social"},
    {"https://bsky.app/profile/x", "example.com", {0}, "Bluesky", "Organic Social", "social"},
    {"https://mail.google.com/mail/u/0/", "example.com", {0}, "Gmail", "Email", "email"},
    {"https://www.amazon.de/dp/1", "example.com", {0}, "Amazon", "Organic Shopping", "shopping"},
    {"https://en.wikipedia.org/wiki/Web_analytics",
     "example.com",
     {0},
     "Wikipedia",
     "Referral",
     ""},
    {"https://www.some-blog.example/post/1",
     "example.com",
     {0},
     "some-blog.example",
     "Referral",
     ""},
    {"android-app://com.google.android.gm", "example.com", {0}, "Gmail", "Email", "email"},
    {"android-app://org.example.reader",
     "example.com",
     {0},
     "android-app://org.example.reader",
     "Referral",
     ""},
    /* self-referrals and junk give no source */
    {"https://example.com/pricing", "example.com", {0}, REFERRER_DIRECT, "Direct", ""},
    {"https://www.example.com/", "example.com", {0}, REFERRER_DIRECT, "Direct", ""},
    {"https://example.com/", "www.example.com:8080", {0}, REFERRER_DIRECT, "Direct", ""},
    {"http://localhost:3000/", "example.com", {0}, REFERRER_DIRECT, "Direct", ""},
    {"about:blank", "example.com", {0}, REFERRER_DIRECT, "Direct", ""},
    {"not a url", "example.com", {0}, REFERRER_DIRECT, "Direct", ""},
    {"", "example.com", {0}, REFERRER_DIRECT, "Direct", ""},
    {NULL, NULL, {0}, REFERRER_DIRECT, "Direct", ""},
    /* UTM tags (Plausible's rules) */
    {"https://www.google.com/",
     "example.com",
     {.utm_source = "google", .utm_medium = "cpc"},
     "Google",
     "Paid Search",
     "search"},
    {NULL,
     "example.com",
     {.utm_source = "newsletter", .utm_medium = "email"},
     "newsletter",
     "Email",
     ""},
    {NULL, "example.com", {.utm_medium = "email"}, REFERRER_DIRECT, "Email", ""},
    {NULL, "example.com", {.utm_source = "GOOGLE"}, "Google", "Organic Search", "search"},
    {NULL, "example.com", {.utm_source = "ig"}, "Instagram", "Organic Social", "social"},
    {NULL, "example.com", {.utm_source = "fb-ads"}, "Facebook", "Paid Social", "social"},
    {NULL,
     "example.com",
     {.utm_source = "facebook", .utm_medium = "paid_social"},
     "Facebook",
     "Paid Social",
     "social"},
    {NULL,
     "example.com",
     {.utm_source = "youtube", .utm_medium = "cpv"},
     "YouTube",
     "Paid Video",
     "video"},
    {NULL,
     "example.com",
     {.utm_source = "partner", .utm_medium = "display"},
     "partner",
     "Display",
     ""},
    {NULL,
     "example.com",
     {.utm_source = "partner", .utm_medium = "affiliate"},
     "partner",
     "Affiliates",
     ""},
    {NULL, "example.com", {.utm_source = "sms"}, "sms", "SMS", ""},
    {NULL,
     "example.com",
     {.utm_source = "app", .utm_medium = "push"},
     "app",
     "Mobile Push Notifications",
     ""},
    {NULL,
     "example.com",
     {.utm_source = "x", .utm_campaign = "cross-network-q3"},
     "Twitter",
     "Cross-network",
     "social"},
    {NULL,
     "example.com",
     {.utm_source = "shop", .utm_campaign = "shopping-week", .utm_medium = "cpc"},
     "shop",
     "Paid Shopping",
     ""},
    {NULL, "example.com", {.utm_source = "podcast", .utm_medium = "audio"}, "podcast", "Audio", ""},
    {"https://www.google.com/",
     "example.com",
     {.click_id = "gclid"},
     "Google",
     "Paid Search",
     "search"},
    {"https://www.bing.com/",
     "example.com",
     {.click_id = "msclkid"},
     "Bing",
     "Paid Search",
     "search"},
    {NULL, "example.com", {.ref = "producthunt"}, "Product Hunt", "Organic Social", "social"},
    /* the tagged source wins over the Referer, also over a self-referral */
    {"https://t.co/x", "example.com", {.utm_source = "newsletter"}, "newsletter", "Email", ""},
    {"https://example.com/",
     "example.com",
     {.utm_source = "bing"},
     "Bing",
     "Organic Search",
     "search"},
};

TEST(classifies)
{
    for (size_t i = 0; i < TALLY_ARRAY_LEN(cases); i++) {
        const ref_case *c = &cases[i];
        referrer_info r;
        referrer_classify(c->ref, c->page_host, &c->tags, &r);
        if (strcmp(r.source, c->source) || strcmp(r.channel, c->channel) ||
            strcmp(r.medium, c->medium))
            TEST_FAIL_("case %zu (%s, utm_source=%s utm_medium=%s): got [%s|%s|%s], want "
                       "[%s|%s|%s]",
                       i, c->ref ? c->ref : "(null)", c->tags.utm_source ? c->tags.utm_source : "-",
                       c->tags.utm_medium ? c->tags.utm_medium : "-", r.source, r.channel, r.medium,
                       c->source, c->channel, c->medium);
    }
}

TEST(flags_and_normalised_referrer)
{
    referrer_info r;
    referrer_classify("https://www.Some-Blog.example:443/a/b/?x=1#top", "example.com", NULL, &r);
    ASSERT_STREQ(r.referrer, "some-blog.example/a/b");
    ASSERT_STREQ(r.source, "some-blog.example");
    ASSERT_TRUE(!r.direct && !r.self_referral);
    referrer_classify("https://user:pw@news.ycombinator.com/", "example.com", NULL, &r);
    ASSERT_STREQ(r.source, "Hacker News");
    ASSERT_STREQ(r.referrer, "news.ycombinator.com");
    referrer_classify("https://example.com/x", "Example.COM", NULL, &r);
    ASSERT_TRUE(r.direct && r.self_referral);
    ASSERT_STREQ(r.referrer, "");
    referrer_classify(NULL, NULL, NULL, &r);
    ASSERT_TRUE(r.direct && !r.self_referral);
    /* a subdomain of the site is a referral source, as in Plausible */
    referrer_classify("https://blog.example.com/", "example.com", NULL, &r);
    ASSERT_STREQ(r.source, "blog.example.com");
}

TEST(hostile_inputs_are_bounded)
{
    static char big[10000];
    memcpy(big, "https://", 8);
    memset(big + 8, 'a', sizeof big - 9);
    referrer_info r;
    referrer_classify(big, "example.com", NULL, &r); /* host longer than any limit: invalid */
    ASSERT_TRUE(r.direct);
    memcpy(big + 8, "a.io/", 5);
    referrer_classify(big, "example.com", NULL, &r);
    ASSERT_STREQ(r.source, "a.io");
    ASSERT_TRUE(strlen(r.referrer) < REFERRER_URL_MAX);
    referrer_tags t = {.utm_source = big};
    referrer_classify(NULL, NULL, &t, &r);
    ASSERT_TRUE(strlen(r.source) < REFERRER_SOURCE_MAX);
    t.utm_source = "\xff\x01weird\xc3";
    referrer_classify(NULL, NULL, &t, &r);
    ASSERT_STREQ(r.source, "? weird?");
    referrer_classify("https://[2001:db8::1]:8080/x", "example.com", NULL, &r);
    ASSERT_STREQ(r.source, "2001:db8::1");
    referrer_classify("https://exa mple.com/", "example.com", NULL, &r);
    ASSERT_TRUE(r.direct);
}

TEST(tables_loaded)
{
    referrer_stats st;
    referrer_get_stats(&st);
    ASSERT_TRUE(st.hosts > 2000);
    ASSERT_TRUE(st.sources > 200);
    ASSERT_EQ(referrer_init(), TALLY_EINVAL);
}

int main(void)
{
    if (referrer_init() != TALLY_OK) {
        printf("FAIL test_referrer.init: referrer_init failed\n");
        return 1;
    }
    RUN(tables_loaded);
    RUN(classifies);
    RUN(flags_and_normalised_referrer);
    RUN(hostile_inputs_are_bounded);
    referrer_shutdown();
    return test_summary();
}
