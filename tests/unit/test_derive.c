/* derive: its caches (User-Agent, referrer) never change a result. Each event is derived by a
 * long-lived context (caches warm, shared by many inputs that differ in one part of the key)
 * and by a fresh one; every derived string must agree. */
#include "test.h"

#include "ingest/bots.h"
#include "ingest/event.h"
#include "ingest/referrer.h"
#include "ingest/ua.h"
#include "rollup/derive.h"

static struct event_str str(const char *s)
{
    return (struct event_str){s, s ? strlen(s) : 0};
}

static void expect_same(const struct devent *a, const struct devent *b, const char *what)
{
    for (int f = 0; f < DE_FIELD_COUNT; f++) {
        if (a->str[f].len == b->str[f].len &&
            memcmp(a->str[f].ptr, b->str[f].ptr, a->str[f].len) == 0)
            continue;
        printf("  %s: field %d: cached '%.*s' fresh '%.*s'\n", what, f, (int)a->str[f].len,
               a->str[f].ptr, (int)b->str[f].len, b->str[f].ptr);
        ASSERT_TRUE(0);
    }
    ASSERT_EQ(a->flags, b->flags);
}

TEST(caches_never_change_results)
{
    static char long_ref[1500], long_url[1500];
    memcpy(long_ref, "https://www.google.com/search?q=", 32);
    memset(long_ref + 32, 'x', sizeof long_ref - 33);
    memcpy(long_url, "https://a.com/p?utm_source=", 27);
    memset(long_url + 27, 'n', sizeof long_url - 28);
    const char *refs[] = {NULL, "", "https://www.google.com/", "https://a.com/other",
                          "https://news.ycombinator.com/item?id=1", "android-app://com.slack",
                          long_ref};
    const char *urls[] = {"https://a.com/", "https://b.com/", "https://a.com/?utm_source=news",
                          "https://a.com/?utm_source=news&utm_medium=email",
                          "https://a.com/?utm_source=news&utm_medium=email&utm_campaign=x",
                          "https://a.com/?utm_medium=email", "https://a.com/?ref=producthunt",
                          "https://a.com/?source=producthunt", "https://a.com/?gclid=abc",
                          "https://a.com/?msclkid=abc", "https://a.com/?utm_source=",
                          long_url, NULL};
    const char *uas[] = {
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "", NULL};
    const size_t nr = sizeof refs / sizeof *refs, nu = sizeof urls / sizeof *urls,
                 na = sizeof uas / sizeof *uas;
    struct derive_ctx *warm = derive_ctx_new();
    ASSERT_TRUE(warm != NULL);
    uint64_t x = 12345;
    size_t checked = 0;
    for (int round = 0; round < 3; round++) {
        for (size_t k = 0; k < nr * nu * na; k++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t i = (size_t)(x >> 33) % (nr * nu * na);
            struct event ev;
            event_init(&ev);
            ev.site = str("a.com");
            ev.url = str(urls[i % nu]);
            ev.referrer = str(refs[(i / nu) % nr]);
            ev.user_agent = str(uas[i / (nu * nr)]);
            ev.ts_ms = ev.received_ms = 1700000000000LL;
            ev.visitor = 7;
            struct devent a, b;
            derive_event(warm, &ev, k, "a.com", NULL, 0, &a);
            struct derive_ctx *fresh = derive_ctx_new();
            ASSERT_TRUE(fresh != NULL);
            derive_event(fresh, &ev, k, "a.com", NULL, 0, &b);
            char what[64];
            snprintf(what, sizeof what, "ref %zu url %zu ua %zu", (i / nu) % nr, i % nu,
                     i / (nu * nr));
            expect_same(&a, &b, what);
            derive_ctx_free(fresh);
            checked++;
        }
    }
    ASSERT_TRUE(checked > 500);
    derive_ctx_free(warm);
}

int main(void)
{
    if (ua_init(1024) != 0 || bots_init() != 0 || referrer_init() != 0) {
        printf("FAIL test_derive.init\n");
        return 1;
    }
    RUN(caches_never_change_results);
    referrer_shutdown();
    bots_shutdown();
    ua_shutdown();
    return test_summary();
}
