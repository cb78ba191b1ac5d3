/* URL derivations: parsing, query values, UTM, host rules, referrer hosts. */
#include "test.h"

#include "ingest/url.h"
#include "tally/error.h"

static int parse(const char *s, struct url *u)
{
    return url_parse(s, strlen(s), u);
}

static void expect_path(const struct url *u, const char *path)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%.*s", (int)u->path_len, u->path);
    ASSERT_STREQ(buf, path);
}

static void expect_query(const struct url *u, const char *q)
{
    if (!q) {
        ASSERT_TRUE(u->query == NULL);
        return;
    }
    char buf[512];
    ASSERT_TRUE(u->query != NULL);
    snprintf(buf, sizeof buf, "%.*s", (int)u->query_len, u->query);
    ASSERT_STREQ(buf, q);
}

TEST(parse_basic)
{
    struct url u;
    ASSERT_EQ(parse("https://Example.COM/Blog/Post?a=1&b=2#frag", &u), 0);
    ASSERT_EQ(u.scheme_len, 5);
    ASSERT_STREQ(u.host, "example.com");
    ASSERT_EQ(u.host_len, 11);
    ASSERT_EQ(u.port, 443);
    ASSERT_TRUE(!u.port_explicit);
    expect_path(&u, "/Blog/Post");
    expect_query(&u, "a=1&b=2");

    ASSERT_EQ(parse("http://example.com", &u), 0);
    ASSERT_EQ(u.port, 80);
    expect_path(&u, "/");
    expect_query(&u, NULL);

    ASSERT_EQ(parse("HTTP://www.example.com:8080?x", &u), 0);
    ASSERT_STREQ(u.host, "www.example.com");
    ASSERT_EQ(u.port, 8080);
    ASSERT_TRUE(u.port_explicit);
    expect_path(&u, "/");
    expect_query(&u, "x");

    ASSERT_EQ(parse("https://example.com:/a#b?c", &u), 0); /* empty port = default */
    ASSERT_EQ(u.port, 443);
    ASSERT_TRUE(!u.port_explicit);
    expect_path(&u, "/a");
    expect_query(&u, NULL);

    ASSERT_EQ(parse("https://user:pw@shop.example.com/p%20q", &u), 0);
    ASSERT_STREQ(u.host, "shop.example.com");
    expect_path(&u, "/p%20q"); /* percent-encoding kept */

    ASSERT_EQ(parse("https://example.com./x", &u), 0);
    ASSERT_STREQ(u.host, "example.com");

    ASSERT_EQ(parse("http://[::1]:3000/dash", &u), 0);
    ASSERT_STREQ(u.host, "::1");
    ASSERT_EQ(u.port, 3000);

    ASSERT_EQ(parse("http://127.0.0.1/", &u), 0);
    ASSERT_STREQ(u.host, "127.0.0.1");

    ASSERT_EQ(parse("https://b\xc3\xbc"
                    "cher.de/",
                    &u),
              0); /* UTF-8 host kept */
    ASSERT_STREQ(u.host, "b\xc3\xbc"
                         "cher.de");

    ASSERT_EQ(parse("https://example.com?", &u), 0);
    expect_query(&u, "");
    ASSERT_EQ(parse("https://example.com/#", &u), 0);
    expect_path(&u, "/");
}

TEST(parse_rejects)
{
    const char *bad[] = {
        "",
        "example.com/path",
        "/relative/path",
        "//example.com/",
        "ftp://example.com/",
        "javascript:alert(1)",
        "https:/example.com",
        "https://",
        "https:///path",
        "https://:80/",
        "https://exa mple.com/",
        "https://example.com/a b",
        "https://example.com/\t",
        "https://example.com:65536/",
        "https://example.com:123456/",
        "https://example.com:8a/",
        "https://exa%6dple.com/",
        "https://exa\\mple.com/",
        "https://.example.com/",
        "https://a..b/",
        "https://[::1/",
        "https://[]/",
        "https://[::1]x/",
        "https://[zz]/",
        "https://example.com/\xff",
        "https://example.com/\x7f",
        "1http://example.com/",
    };
    struct url u;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(bad); i++) {
        if (parse(bad[i], &u) != TALLY_EINVAL) TEST_FAIL_("accepted \"%s\"", bad[i]);
    }
    ASSERT_EQ(url_parse("https://example.com/\0x", 21, &u), TALLY_EINVAL);
    char host[300];
    memset(host, 'a', sizeof host);
    char big[400];
    snprintf(big, sizeof big, "https://%.*s/", 256, host);
    ASSERT_EQ(parse(big, &u), TALLY_EINVAL);
    snprintf(big, sizeof big, "https://%.*s/", 255, host);
    ASSERT_EQ(parse(big, &u), 0);
    static char huge[URL_BYTES_MAX + 100];
    memcpy(huge, "https://a.b/", 12);
    memset(huge + 12, 'x', sizeof huge - 13);
    ASSERT_EQ(url_parse(huge, sizeof huge - 1, &u), TALLY_EINVAL);
}

TEST(parse_any_scheme)
{
    struct url u;
    const char *s = "android-app://com.google.android.gm/";
    ASSERT_EQ(url_parse(s, strlen(s), &u), TALLY_EINVAL);
    ASSERT_EQ(url_parse_any(s, strlen(s), &u), 0);
    ASSERT_STREQ(u.host, "com.google.android.gm");
    ASSERT_EQ(u.port, 0);
    ASSERT_EQ(url_parse_any("mailto:x@y", 10, &u), TALLY_EINVAL);
}

TEST(query_values)
{
    char out[64];
    size_t n;
    const char *q = "a=1&b=hello+world&c=%E2%82%AC&d&e=&a=2&f=%ff&g=%zz&h=%00x&utm%5Fx=y";
    size_t ql = strlen(q);
    ASSERT_TRUE(url_query_get(q, ql, "a", out, sizeof out, &n));
    ASSERT_STREQ(out, "1"); /* first occurrence */
    ASSERT_EQ(n, 1);
    ASSERT_TRUE(url_query_get(q, ql, "b", out, sizeof out, &n));
    ASSERT_STREQ(out, "hello world");
    ASSERT_TRUE(url_query_get(q, ql, "c", out, sizeof out, &n));
    ASSERT_STREQ(out, "\xe2\x82\xac");
    ASSERT_TRUE(url_query_get(q, ql, "d", out, sizeof out, &n));
    ASSERT_STREQ(out, "");
    ASSERT_TRUE(url_query_get(q, ql, "e", out, sizeof out, &n));
    ASSERT_EQ(n, 0);
    ASSERT_TRUE(url_query_get(q, ql, "f", out, sizeof out, &n));
    ASSERT_STREQ(out, "%ff"); /* decodes to invalid UTF-8: raw value */
    ASSERT_TRUE(url_query_get(q, ql, "g", out, sizeof out, &n));
    ASSERT_STREQ(out, "%zz"); /* not an escape: kept */
    ASSERT_TRUE(url_query_get(q, ql, "h", out, sizeof out, &n));
    ASSERT_STREQ(out, "%00x"); /* NUL: raw value */
    ASSERT_TRUE(url_query_get(q, ql, "utm_x", out, sizeof out, &n));
    ASSERT_STREQ(out, "y"); /* keys compared decoded */
    ASSERT_TRUE(!url_query_get(q, ql, "zz", out, sizeof out, &n));
    ASSERT_STREQ(out, "");
    ASSERT_TRUE(!url_query_get(NULL, 0, "a", out, sizeof out, &n));
    /* truncation at a character boundary */
    char small[5];
    ASSERT_TRUE(url_query_get("x=ab%E2%82%AC", 13, "x", small, sizeof small, &n));
    ASSERT_STREQ(small, "ab");
    ASSERT_TRUE(url_query_get("x=abcdefg", 9, "x", small, sizeof small, &n));
    ASSERT_STREQ(small, "abcd");
}

TEST(utm)
{
    struct url u;
    struct url_utm m;
    ASSERT_EQ(parse("https://example.com/?utm_source=Google&utm_medium=cpc&utm_campaign=spring+"
                    "sale&utm_content=%C3%A9&utm_term=shoes&utm_source=other&utm_foo=1#x",
                    &u),
              0);
    url_utm_get(&u, &m);
    ASSERT_STREQ(m.source, "Google");
    ASSERT_EQ(m.source_len, 6);
    ASSERT_STREQ(m.medium, "cpc");
    ASSERT_STREQ(m.campaign, "spring sale");
    ASSERT_STREQ(m.content, "\xc3\xa9");
    ASSERT_STREQ(m.term, "shoes");
    ASSERT_EQ(parse("https://example.com/", &u), 0);
    url_utm_get(&u, &m);
    ASSERT_EQ(m.source_len + m.medium_len + m.campaign_len + m.content_len + m.term_len, 0);
    ASSERT_STREQ(m.source, "");
    /* long values are cut to URL_UTM_BYTES_MAX */
    char s[1200];
    int n = snprintf(s, sizeof s, "https://e.com/?utm_source=");
    memset(s + n, 'z', 600);
    s[n + 600] = 0;
    ASSERT_EQ(parse(s, &u), 0);
    url_utm_get(&u, &m);
    ASSERT_EQ(m.source_len, URL_UTM_BYTES_MAX);
    ASSERT_EQ(strlen(m.source), URL_UTM_BYTES_MAX);
}

TEST(strip_www)
{
    size_t n = 15;
    const char *h = url_host_strip_www("www.example.com", &n);
    ASSERT_STREQ(h, "example.com");
    ASSERT_EQ(n, 11);
    n = 4;
    ASSERT_STREQ(url_host_strip_www("www.", &n), "www."); /* nothing follows */
    n = 11;
    ASSERT_STREQ(url_host_strip_www("wwwexample", &n), "wwwexample");
    n = 15;
    ASSERT_STREQ(url_host_strip_www("WWW.example.com", &n), "example.com");
}

static bool allowed(const char *host, const char *site, const char *const *list, size_t n)
{
    return url_host_allowed(host, strlen(host), site, strlen(site), list, n);
}

TEST(host_rules)
{
    /* default: the site and its subdomains */
    ASSERT_TRUE(allowed("example.com", "example.com", NULL, 0));
    ASSERT_TRUE(allowed("www.example.com", "example.com", NULL, 0));
    ASSERT_TRUE(allowed("a.b.example.com", "example.com", NULL, 0));
    ASSERT_TRUE(allowed("example.com.", "Example.COM", NULL, 0));
    ASSERT_TRUE(!allowed("badexample.com", "example.com", NULL, 0));
    ASSERT_TRUE(!allowed("example.com.evil.net", "example.com", NULL, 0));
    ASSERT_TRUE(!allowed("example.org", "example.com", NULL, 0));
    ASSERT_TRUE(!allowed("", "example.com", NULL, 0));
    ASSERT_TRUE(!allowed("com", "example.com", NULL, 0));
    /* a www. site name also admits the bare domain */
    ASSERT_TRUE(allowed("example.com", "www.example.com", NULL, 0));
    ASSERT_TRUE(allowed("shop.example.com", "www.example.com", NULL, 0));
    /* configured entries replace the default */
    const char *list[] = {"example.net", "*.cdn.example.org", "LOCALHOST"};
    ASSERT_TRUE(allowed("example.net", "example.com", list, 3));
    ASSERT_TRUE(allowed("x.example.net", "example.com", list, 3));
    ASSERT_TRUE(allowed("a.cdn.example.org", "example.com", list, 3));
    ASSERT_TRUE(!allowed("cdn.example.org", "example.com", list, 3));
    ASSERT_TRUE(allowed("localhost", "example.com", list, 3));
    ASSERT_TRUE(!allowed("example.com", "example.com", list, 3));
}

TEST(referrer_host)
{
    char out[URL_HOST_BYTES_MAX + 1];
    const char *r = "https://www.Google.com/search?q=x";
    ASSERT_EQ(url_referrer_host(r, strlen(r), out, sizeof out), 10);
    ASSERT_STREQ(out, "google.com");
    r = "android-app://com.google.android.gm";
    ASSERT_EQ(url_referrer_host(r, strlen(r), out, sizeof out), strlen("com.google.android.gm"));
    ASSERT_STREQ(out, "com.google.android.gm");
    ASSERT_EQ(url_referrer_host("", 0, out, sizeof out), 0);
    ASSERT_STREQ(out, "");
    ASSERT_EQ(url_referrer_host("not a url", 9, out, sizeof out), 0);
    ASSERT_EQ(url_referrer_host("/path", 5, out, sizeof out), 0);
}

/* Parsing arbitrary bytes never crashes and never accepts a URL with forbidden bytes. */
TEST(garbage)
{
    uint64_t x = 12345;
    char s[64];
    struct url u;
    const char alphabet[] = "htps:/[]@?#%.:-_AZaz09 \x01\xc3\xa9\xff";
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t n = x % sizeof s;
        memcpy(s, "https://", 8 < n ? 8 : n);
        for (size_t k = 8; k < n; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            s[k] = alphabet[x % (sizeof alphabet - 1)];
        }
        if (url_parse(s, n, &u) == 0) {
            ASSERT_TRUE(u.host_len > 0 && u.host_len <= URL_HOST_BYTES_MAX);
            ASSERT_TRUE(memchr(s, ' ', n) == NULL);
            ASSERT_TRUE(u.path_len >= 1);
            struct url_utm m;
            url_utm_get(&u, &m);
        }
    }
}

int main(void)
{
    RUN(parse_basic);
    RUN(parse_rejects);
    RUN(parse_any_scheme);
    RUN(query_values);
    RUN(utm);
    RUN(strip_www);
    RUN(host_rules);
    RUN(referrer_host);
    RUN(garbage);
    return test_summary();
}
