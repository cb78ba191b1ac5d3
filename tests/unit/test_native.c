/* Native ingest decoder (POST /v1/events, API.md §3.1) and the RFC 3339 helpers it uses.
 * Every body is placed at the very end of an exact-size heap buffer (no NUL after it), so
 * ASan catches any read past the body. */
#include "test.h"

#include "ingest/native.h"
#include "ingest/timefmt.h"
#include "tally/error.h"

static const int64_t NOW = 1767225600000LL; /* 2026-01-01T00:00:00Z */
static struct native_ctx *ctx;
static struct native_event *evs;

static struct native_opts opts(void)
{
    struct native_opts o = {NOW, false, false, 1000, 1 << 20};
    return o;
}

static int decode_with(const char *body, size_t len, const struct native_opts *o)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, body, len);
    int r = native_decode(ctx, copy, len, o, &evs);
    /* events point into the arena, never into the body: freeing it is safe */
    free(copy);
    return r;
}

static int dec(const char *body)
{
    struct native_opts o = opts();
    return decode_with(body, strlen(body), &o);
}

static int dec_priv(const char *body)
{
    struct native_opts o = opts();
    o.privileged = true;
    return decode_with(body, strlen(body), &o);
}

static void check_error(int line, int got, int want_rc, int index, int status, const char *msg)
{
    const struct native_error *e = native_ctx_error(ctx);
    if (got != want_rc)
        TEST_FAIL_("line %d: rc %d != %d (message: %s)", line, got, want_rc, e->message);
    if (e->index != index)
        TEST_FAIL_("line %d: index %d != %d (message: %s)", line, e->index, index, e->message);
    if (e->http_status != status)
        TEST_FAIL_("line %d: status %d != %d (message: %s)", line, e->http_status, status,
                   e->message);
    if (strcmp(e->message, msg) != 0)
        TEST_FAIL_("line %d: message \"%s\" != \"%s\"", line, e->message, msg);
}

/* A 400 for the single event of body (index 0). */
#define ERR(body, msg) check_error(__LINE__, dec(body), TALLY_EINVAL, 0, 400, msg)
#define ERR_PRIV(body, msg) check_error(__LINE__, dec_priv(body), TALLY_EINVAL, 0, 400, msg)
#define ERR_AT(body, index, msg) check_error(__LINE__, dec(body), TALLY_EINVAL, index, 400, msg)

static bool seq(struct event_str s, const char *want)
{
    return s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}
#define ASSERT_SEQ(s, want)                                                                        \
    do {                                                                                           \
        if (!seq((s), (want)))                                                                     \
            TEST_FAIL_("%s == \"%s\": got \"%.*s\"", #s, want, (int)(s).len, (s).ptr);             \
    } while (0)

#define PV "\"site\":\"example.com\",\"url\":\"https://example.com/\""

TEST(minimal_pageview)
{
    ASSERT_EQ(dec("{" PV "}"), 1);
    struct event *ev = &evs[0].ev;
    ASSERT_SEQ(ev->site, "example.com");
    ASSERT_SEQ(ev->name, "pageview");
    ASSERT_SEQ(ev->url, "https://example.com/");
    ASSERT_EQ(ev->ts_ms, NOW);
    ASSERT_EQ(ev->received_ms, NOW);
    ASSERT_EQ(ev->source, EVENT_SOURCE_NATIVE);
    ASSERT_TRUE(ev->interactive);
    ASSERT_EQ(ev->visitor, 0);
    ASSERT_EQ(ev->flags, 0);
    ASSERT_EQ(ev->props_count, 0);
    ASSERT_TRUE(!ev->has_revenue);
    ASSERT_EQ(ev->referrer.len + ev->user_agent.len + ev->client_id.len, 0);
    ASSERT_EQ(evs[0].visitor_id.len + evs[0].ip.len, 0);
    ASSERT_EQ(event_validate(ev), 0);
}

TEST(all_fields)
{
    const char *body =
        "{\"site\":\"example.com\",\"name\":\"Signup\",\"url\":\"https://example.com/"
        "p?utm_source=x\","
        "\"referrer\":\"https://www.google.com/\",\"ts\":\"2025-12-31T23:30:00.250+01:00\","
        "\"visitor_id\":\"user-42\",\"id\":\"evt-1\","
        "\"props\":{\"plan\":\"pro\",\"seats\":12,\"price\":19.5,\"big\":1e21,\"neg\":-0.001,"
        "\"ok\":true,\"no\":false,\"gone\":null,\"emoji\":\"\\ud83d\\ude00\"},"
        "\"revenue\":{\"amount\":\"19.99\",\"currency\":\"EUR\"},\"interactive\":false,"
        "\"ip\":\"2001:db8::1\",\"user_agent\":\"Mozilla/5.0 Test\"}";
    ASSERT_EQ(dec_priv(body), 1);
    struct native_event *ne = &evs[0];
    struct event *ev = &ne->ev;
    ASSERT_SEQ(ev->name, "Signup");
    ASSERT_SEQ(ev->url, "https://example.com/p?utm_source=x");
    ASSERT_SEQ(ev->referrer, "https://www.google.com/");
    ASSERT_EQ(ev->ts_ms, NOW - 30 * 60 * 1000 - 3600 * 1000 + 250);
    ASSERT_SEQ(ne->visitor_id, "user-42");
    ASSERT_SEQ(ev->client_id, "evt-1");
    ASSERT_EQ(ev->props_count, 8); /* "gone" is dropped */
    const char *keys[] = {"plan", "seats", "price", "big", "neg", "ok", "no", "emoji"};
    const char *vals[] = {"pro",    "12",   "19.5",  "1e+21",
                          "-0.001", "true", "false", "\xf0\x9f\x98\x80"};
    const int types[] = {EVENT_PROP_STRING, EVENT_PROP_NUMBER, EVENT_PROP_NUMBER,
                         EVENT_PROP_NUMBER, EVENT_PROP_NUMBER, EVENT_PROP_BOOL,
                         EVENT_PROP_BOOL,   EVENT_PROP_STRING};
    for (int i = 0; i < 8; i++) {
        ASSERT_SEQ(ev->props[i].key, keys[i]);
        ASSERT_SEQ(ev->props[i].value, vals[i]);
        ASSERT_EQ(ev->props[i].type, types[i]);
    }
    ASSERT_TRUE(ev->has_revenue);
    ASSERT_EQ(ev->revenue_micros, 19990000);
    ASSERT_STREQ(ev->currency, "EUR");
    ASSERT_TRUE(!ev->interactive);
    ASSERT_SEQ(ne->ip, "2001:db8::1");
    ASSERT_SEQ(ev->user_agent, "Mozilla/5.0 Test");
    ASSERT_EQ(event_validate(ev), 0);
    /* and it survives the log encoding */
    static uint8_t buf[EVENT_ENCODED_BYTES_MAX];
    int n = event_encode(ev, buf, sizeof buf);
    ASSERT_TRUE(n > 0);
    struct event out;
    struct event_scratch sc;
    ASSERT_EQ(event_decode(buf, (size_t)n, &out, &sc), 0);
    ASSERT_EQ(out.props_count, 8);
    ASSERT_EQ(out.revenue_micros, 19990000);
}

TEST(nulls_mean_absent)
{
    ASSERT_EQ(dec("{" PV ",\"name\":null,\"referrer\":null,\"ts\":null,\"visitor_id\":null,"
                  "\"id\":null,\"props\":null,\"revenue\":null,\"interactive\":null,\"ip\":null,"
                  "\"user_agent\":null}"),
              1);
    ASSERT_SEQ(evs[0].ev.name, "pageview");
    ASSERT_EQ(evs[0].ev.ts_ms, NOW);
    ASSERT_TRUE(evs[0].ev.interactive);
    ERR("{\"site\":null,\"url\":\"https://e.com/\"}", "field 'site' is required");
    /* empty visitor_id and id mean absent too */
    ASSERT_EQ(dec("{" PV ",\"visitor_id\":\"\",\"id\":\"\"}"), 1);
    ASSERT_EQ(evs[0].visitor_id.len + evs[0].ev.client_id.len, 0);
}

TEST(shapes)
{
    /* array */
    ASSERT_EQ(dec(" [ {" PV "} , {\"site\":\"b.com\",\"name\":\"x\"} ]\n"), 2);
    ASSERT_SEQ(evs[1].ev.site, "b.com");
    ASSERT_SEQ(evs[1].ev.name, "x");
    ASSERT_EQ(evs[1].ev.url.len, 0);
    /* NDJSON detected, blank lines and CRLF skipped */
    ASSERT_EQ(dec("\n\r\n{" PV "}\r\n\n  \n{\"site\":\"b.com\",\"name\":\"e\"}\n\n{" PV "}"), 3);
    ASSERT_SEQ(evs[1].ev.site, "b.com");
    /* NDJSON by content type */
    struct native_opts o = opts();
    o.ndjson = true;
    const char *nd = "{" PV "}\n{" PV "}\n";
    ASSERT_EQ(decode_with(nd, strlen(nd), &o), 2);
    const char *arr = "[{" PV "}]";
    check_error(__LINE__, decode_with(arr, strlen(arr), &o), TALLY_EINVAL, -1, 400,
                "an NDJSON body holds one JSON object per line, not an array");
    /* a byte order mark is skipped */
    ASSERT_EQ(dec("\xef\xbb\xbf{" PV "}"), 1);
    /* a pretty-printed object */
    ASSERT_EQ(dec("{\n  \"site\": \"example.com\",\n  \"url\": \"https://example.com/\"\n}\n"), 1);
    /* braces inside strings do not confuse the pre-scan */
    ASSERT_EQ(dec("{" PV ",\"name\":\"a}b]{[\\\"\\\\\",\"props\":{\"k\":\"}}}\"}}"), 1);
    ASSERT_SEQ(evs[0].ev.name, "a}b]{[\"\\");
    ASSERT_SEQ(evs[0].ev.props[0].value, "}}}");
}

TEST(body_errors)
{
    check_error(__LINE__, dec(""), TALLY_EINVAL, -1, 400, "the body holds no events");
    check_error(__LINE__, dec(" \n\t\r\n"), TALLY_EINVAL, -1, 400, "the body holds no events");
    check_error(__LINE__, dec("[]"), TALLY_EINVAL, -1, 400, "the body holds no events");
    check_error(__LINE__, dec("[ \n ]"), TALLY_EINVAL, -1, 400, "the body holds no events");
    check_error(__LINE__, dec("[] x"), TALLY_EINVAL, -1, 400,
                "invalid JSON at byte 3: data after the array");
    ERR("5", "an event must be a JSON object");
    ERR("\"x\"", "an event must be a JSON object");
    ERR("[1]", "an event must be a JSON object");
    ERR_AT("[{" PV "}, \"x\"]", 1, "an event must be a JSON object");
    ERR_AT("{" PV "}\n[1]", 1, "an event must be a JSON object");
    check_error(__LINE__, dec("[{" PV "}"), TALLY_EINVAL, -1, 400,
                "invalid JSON: the array is not closed");
    check_error(__LINE__, dec("[{" PV "},"), TALLY_EINVAL, -1, 400,
                "invalid JSON: the array is not closed");
    ERR_AT("[{" PV "}{" PV "}]", 0, "invalid JSON at byte 52: expected ',' or ']' after an event");
    check_error(__LINE__, dec("[{" PV "}] {}"), TALLY_EINVAL, -1, 400,
                "invalid JSON at byte 54: data after the array");
    ERR("{" PV "} {" PV "}", "invalid JSON at byte 52: expected a newline, then another event "
                             "or the end of the body");
    ERR("{" PV "}}", "invalid JSON at byte 51: expected a newline, then another event or the "
                     "end of the body");
    ERR("{" PV, "invalid JSON: the body ends inside an event");
    ERR("{\"site\":\"abc", "invalid JSON: unterminated string");
    ERR("{\"site\":\"abc\\", "invalid JSON: unterminated string");
    ERR("{\"site\":\"a\nb\"}", "invalid JSON at byte 10: control character 0x0a in a string must "
                               "be escaped");
    ERR("{\"site\":\"a\\x\"}", "invalid JSON at byte 10: bad escape sequence");
    ERR("{\"site\":\"a\\u12\"}", "invalid JSON at byte 10: bad \\u escape");
    ERR("{\"site\":\"a\\u12", "invalid JSON at byte 10: bad \\u escape");
    ERR("{\"site\":\"a\\u0000\"}", "invalid string at byte 10: \\u0000 (NUL) is not allowed");
    ERR("{\"site\":]", "invalid JSON at byte 8: unbalanced ']'");
    ERR("{\"a\":[}", "invalid JSON at byte 6: unbalanced '}'");
    /* well-bracketed but not JSON: cJSON's verdict with the byte where it stopped */
    ERR("{\"site\" \"x\"}", "invalid JSON at byte 8");
    ERR_AT("{" PV "}\n{\"site\":\"x\",}", 1, "invalid JSON at byte 64");
    ERR("{\"site\":'x'}", "invalid JSON at byte 8");
    ERR("{\"site\":\"\\ud800\"}", "invalid JSON at byte 9"); /* lone surrogate */
}

TEST(limits)
{
    struct native_opts o = opts();
    o.body_bytes_max = 20;
    const char *b = "{" PV "}";
    check_error(__LINE__, decode_with(b, strlen(b), &o), TALLY_ETOOBIG, -1, 413,
                "the body is larger than 20 bytes");
    o = opts();
    o.events_max = 3;
    const char *four = "[{" PV "},{" PV "},{" PV "},{" PV "}]";
    check_error(__LINE__, decode_with(four, strlen(four), &o), TALLY_ETOOBIG, -1, 413,
                "the request holds more than 3 events");
    const char *four_nd = "{" PV "}\n{" PV "}\n{" PV "}\n{" PV "}\n";
    check_error(__LINE__, decode_with(four_nd, strlen(four_nd), &o), TALLY_ETOOBIG, -1, 413,
                "the request holds more than 3 events");
    /* the count is judged before a fourth event is even scanned */
    const char *broken = "[{" PV "},{" PV "},{" PV "},{\"site\":\"abc";
    check_error(__LINE__, decode_with(broken, strlen(broken), &o), TALLY_ETOOBIG, -1, 413,
                "the request holds more than 3 events");
    const char *three = "{" PV "}\n{" PV "}\n{" PV "}\n";
    ASSERT_EQ(decode_with(three, strlen(three), &o), 3);
}

static char *repeat(const char *head, const char *unit, int n, const char *tail)
{
    size_t hl = strlen(head), ul = strlen(unit), tl = strlen(tail);
    char *s = malloc(hl + ul * (size_t)n + tl + 1);
    memcpy(s, head, hl);
    for (int i = 0; i < n; i++)
        memcpy(s + hl + ul * (size_t)i, unit, ul);
    memcpy(s + hl + ul * (size_t)n, tail, tl + 1);
    return s;
}

TEST(deep_nesting)
{
    char *s = repeat("", "[", 10000, "");
    ERR(s, "an event must be a JSON object");
    free(s);
    s = repeat("[{\"a\":", "[", 10000, "");
    ERR(s, "JSON nesting deeper than 8 levels");
    free(s);
    s = repeat("", "{\"a\":", 10000, "");
    ERR(s, "JSON nesting deeper than 8 levels");
    free(s);
    s = repeat("{\"site\":", "[", 10000, "");
    ERR(s, "JSON nesting deeper than 8 levels");
    free(s);
    s = repeat("{\"props\":", "{\"a\":", 10000, "");
    ERR(s, "JSON nesting deeper than 8 levels");
    free(s);
    s = repeat("[{\"x\":", "[", 7, "1]]]]]]]}]"); /* depth 8: within the cap, then judged */
    ERR(s, "unknown field 'x'");
    free(s);
    s = repeat("[{\"x\":", "[", 8, "");
    ERR(s, "JSON nesting deeper than 8 levels");
    free(s);
}

TEST(site_and_name)
{
    ERR("{\"url\":\"https://e.com/\"}", "field 'site' is required");
    ERR("{\"site\":5,\"url\":\"https://e.com/\"}", "field 'site' must be a string");
    ERR("{\"site\":\"\",\"url\":\"https://e.com/\"}", "field 'site' must not be empty");
    char *s = repeat("{\"site\":\"", "a", 256, "\",\"url\":\"https://e.com/\"}");
    ERR(s, "field 'site' must be at most 255 bytes");
    free(s);
    ERR("{\"site\":\"\xff\",\"url\":\"https://e.com/\"}", "field 'site' is not valid UTF-8");
    ERR("{" PV ",\"name\":[]}", "field 'name' must be a string");
    ERR("{" PV ",\"name\":\"\"}", "field 'name' must not be empty");
    s = repeat("{" PV ",\"name\":\"", "n", 121, "\"}");
    ERR(s, "field 'name' must be at most 120 bytes");
    free(s);
    s = repeat("{" PV ",\"name\":\"", "n", 120, "\"}");
    ASSERT_EQ(dec(s), 1);
    free(s);
    ERR("{" PV ",\"name\":\"a\xc3\"}", "field 'name' is not valid UTF-8");
    ERR("{" PV ",\"name\":\"\xed\xa0\x80\"}", "field 'name' is not valid UTF-8");
}

TEST(url_and_referrer)
{
    ERR("{\"site\":\"e.com\"}", "field 'url' is required for pageviews");
    ERR("{\"site\":\"e.com\",\"name\":\"pageview\"}", "field 'url' is required for pageviews");
    ERR("{\"site\":\"e.com\",\"url\":\"\"}", "field 'url' is required for pageviews");
    ASSERT_EQ(dec("{\"site\":\"e.com\",\"name\":\"Signup\"}"), 1);
    ERR("{\"site\":\"e.com\",\"url\":\"/relative\"}",
        "field 'url' must be an absolute http(s) URL");
    ERR("{\"site\":\"e.com\",\"name\":\"x\",\"url\":\"ftp://e.com/\"}",
        "field 'url' must be an absolute http(s) URL");
    ERR("{\"site\":\"e.com\",\"url\":\"https://e.com/a b\"}",
        "field 'url' must be an absolute http(s) URL");
    ERR("{\"site\":\"e.com\",\"url\":1}", "field 'url' must be a string");
    char *s = repeat("{\"site\":\"e.com\",\"url\":\"https://e.com/", "a", 2048 - 14 + 1, "\"}");
    ERR(s, "field 'url' must be at most 2048 bytes");
    free(s);
    s = repeat("{\"site\":\"e.com\",\"url\":\"https://e.com/", "a", 2048 - 14, "\"}");
    ASSERT_EQ(dec(s), 1);
    free(s);
    ERR("{\"site\":\"e.com\",\"url\":\"https://e.com/\xc3\x28\"}",
        "field 'url' is not valid UTF-8");
    ASSERT_EQ(dec("{" PV ",\"referrer\":\"android-app://com.x / whatever\"}"), 1);
    ERR("{" PV ",\"referrer\":{}}", "field 'referrer' must be a string");
    s = repeat("{" PV ",\"referrer\":\"", "r", 2049, "\"}");
    ERR(s, "field 'referrer' must be at most 2048 bytes");
    free(s);
    ERR("{" PV ",\"referrer\":\"\xf8\"}", "field 'referrer' is not valid UTF-8");
}

TEST(timestamps)
{
    ASSERT_EQ(dec("{" PV ",\"ts\":\"2025-12-31T12:00:00Z\"}"), 1);
    ASSERT_EQ(evs[0].ev.ts_ms, NOW - 12 * 3600 * 1000);
    ASSERT_EQ(evs[0].ev.received_ms, NOW);
    ASSERT_EQ(dec("{" PV ",\"ts\":1767225000000}"), 1);
    ASSERT_EQ(evs[0].ev.ts_ms, 1767225000000LL);
    ASSERT_EQ(dec("{" PV ",\"ts\":1.7672256e12}"), 1); /* integral, whatever the spelling */
    ASSERT_EQ(evs[0].ev.ts_ms, 1767225600000LL);
    /* window edges */
    char b[256];
    snprintf(b, sizeof b, "{" PV ",\"ts\":%lld}", (long long)(NOW - 72LL * 3600 * 1000));
    ASSERT_EQ(dec(b), 1);
    snprintf(b, sizeof b, "{" PV ",\"ts\":%lld}", (long long)(NOW + 5 * 60 * 1000));
    ASSERT_EQ(dec(b), 1);
    const char *window = "field 'ts' must lie between 72 hours before and 5 minutes after the "
                         "server's time (other times need a write key)";
    snprintf(b, sizeof b, "{" PV ",\"ts\":%lld}", (long long)(NOW - 72LL * 3600 * 1000 - 1));
    ERR(b, window);
    snprintf(b, sizeof b, "{" PV ",\"ts\":%lld}", (long long)(NOW + 5 * 60 * 1000 + 1));
    ERR(b, window);
    ERR("{" PV ",\"ts\":\"2020-01-01T00:00:00Z\"}", window);
    /* privileged: any time in range */
    ASSERT_EQ(dec_priv("{" PV ",\"ts\":\"2020-01-01T00:00:00Z\"}"), 1);
    ASSERT_EQ(evs[0].ev.ts_ms, 1577836800000LL);
    ASSERT_EQ(dec_priv("{" PV ",\"ts\":0}"), 1);
    ASSERT_EQ(dec_priv("{" PV ",\"ts\":253402300799999}"), 1);
    const char *range = "field 'ts' is out of range (years 1970 to 9999)";
    ERR_PRIV("{" PV ",\"ts\":-1}", range);
    ERR_PRIV("{" PV ",\"ts\":253402300800000}", range);
    ERR_PRIV("{" PV ",\"ts\":1e300}", range);
    ERR_PRIV("{" PV ",\"ts\":\"1969-12-31T23:59:59Z\"}", range);
    const char *integer = "field 'ts' must be an integer number of epoch milliseconds";
    ERR("{" PV ",\"ts\":1767225600000.5}", integer);
    ERR("{" PV ",\"ts\":1e999}", integer); /* cJSON reads infinity */
    const char *rfc = "field 'ts' must be an RFC 3339 date-time with a time zone, like "
                      "2026-01-31T12:00:00Z";
    ERR("{" PV ",\"ts\":\"2025-12-31T12:00:00\"}", rfc);
    ERR("{" PV ",\"ts\":\"2026-02-30T12:00:00Z\"}", rfc);
    ERR("{" PV ",\"ts\":\"2025-12-31 12:00:00Z\"}", rfc);
    ERR("{" PV ",\"ts\":\"1767225600000\"}", rfc);
    ERR("{" PV ",\"ts\":\"\"}", rfc);
    ERR("{" PV ",\"ts\":true}", "field 'ts' must be an RFC 3339 string or integer epoch "
                                "milliseconds");
    ERR("{" PV ",\"ts\":[1]}", "field 'ts' must be an RFC 3339 string or integer epoch "
                               "milliseconds");
}

TEST(ids)
{
    ASSERT_EQ(dec("{" PV ",\"visitor_id\":\"v\",\"id\":\"i\"}"), 1);
    ASSERT_SEQ(evs[0].visitor_id, "v");
    char *s = repeat("{" PV ",\"visitor_id\":\"", "v", 257, "\"}");
    ERR(s, "field 'visitor_id' must be at most 256 bytes");
    free(s);
    s = repeat("{" PV ",\"visitor_id\":\"", "v", 256, "\"}");
    ASSERT_EQ(dec(s), 1);
    free(s);
    ERR("{" PV ",\"visitor_id\":7}", "field 'visitor_id' must be a string");
    ERR("{" PV ",\"visitor_id\":\"\xc0\x80\"}", "field 'visitor_id' is not valid UTF-8");
    s = repeat("{" PV ",\"id\":\"", "i", 129, "\"}");
    ERR(s, "field 'id' must be at most 128 bytes");
    free(s);
    ERR("{" PV ",\"id\":false}", "field 'id' must be a string");
    ERR("{" PV ",\"id\":\"\xfe\"}", "field 'id' is not valid UTF-8");
}

TEST(props)
{
    ERR("{" PV ",\"props\":[]}", "field 'props' must be an object");
    ERR("{" PV ",\"props\":\"a=b\"}", "field 'props' must be an object");
    char *s = repeat("{" PV ",\"props\":{", "\"k\":1,", 30, "\"last\":1}}");
    ERR(s, "field 'props' has 31 keys (at most 30)");
    free(s);
    /* 30 distinct keys */
    char b[2048];
    int n = snprintf(b, sizeof b, "{" PV ",\"props\":{");
    for (int i = 0; i < 30; i++)
        n += snprintf(b + n, sizeof b - (size_t)n, "%s\"k%d\":%d", i ? "," : "", i, i);
    snprintf(b + n, sizeof b - (size_t)n, "}}");
    ASSERT_EQ(dec(b), 1);
    ASSERT_EQ(evs[0].ev.props_count, 30);
    ERR("{" PV ",\"props\":{\"\":1}}", "field 'props' has an empty key");
    ERR("{" PV ",\"props\":{\"\xff\":1}}", "field 'props' has a key that is not valid UTF-8");
    s = repeat("{" PV ",\"props\":{\"", "k", 301, "\":1}}");
    ERR(s, "key 'props.kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...' must be at most 300 bytes");
    free(s);
    s = repeat("{" PV ",\"props\":{\"", "k", 300, "\":1}}");
    ASSERT_EQ(dec(s), 1);
    free(s);
    ERR("{" PV ",\"props\":{\"a\":1,\"a\":2}}", "duplicate key 'props.a'");
    ERR("{" PV ",\"props\":{\"a\":null,\"a\":2}}", "duplicate key 'props.a'");
    ERR("{" PV ",\"props\":{\"a\":{\"b\":1}}}",
        "field 'props.a' must be a string, number or boolean");
    ERR("{" PV ",\"props\":{\"a\":[1]}}", "field 'props.a' must be a string, number or boolean");
    s = repeat("{" PV ",\"props\":{\"a\":\"", "v", 2001, "\"}}");
    ERR(s, "field 'props.a' must be at most 2000 bytes");
    free(s);
    s = repeat("{" PV ",\"props\":{\"a\":\"", "v", 2000, "\"}}");
    ASSERT_EQ(dec(s), 1);
    ASSERT_EQ(evs[0].ev.props[0].value.len, 2000);
    free(s);
    ERR("{" PV ",\"props\":{\"a\":\"\xe0\x80\x80\"}}", "field 'props.a' is not valid UTF-8");
    ERR("{" PV ",\"props\":{\"a\":1e999}}", "field 'props.a' must be a finite number");
    ERR("{" PV ",\"props\":{\"a\":-1e999}}", "field 'props.a' must be a finite number");
    /* key names in messages are sanitised */
    ERR("{" PV ",\"props\":{\"x\\\"y\\\\z\\u0001\":{}}}",
        "field 'props.x?y?z?' must be a string, number or boolean");
    /* numbers: the shortest text that reads back */
    ASSERT_EQ(dec("{" PV
                  ",\"props\":{\"a\":1.50,\"b\":1e3,\"c\":-0,\"d\":0.1,\"e\":123456789012345678,"
                  "\"f\":1.7976931348623157e308,\"g\":5e-324,\"h\":-42}}"),
              1);
    const char *want[] = {"1.5",
                          "1000",
                          "0",
                          "0.1",
                          "1.2345678901234568e+17",
                          "1.7976931348623157e+308",
                          "4.94065645841247e-324",
                          "-42"};
    for (int i = 0; i < 8; i++) {
        ASSERT_SEQ(evs[0].ev.props[i].value, want[i]);
        ASSERT_TRUE(
            event_json_number_valid(evs[0].ev.props[i].value.ptr, evs[0].ev.props[i].value.len));
    }
    ASSERT_EQ(dec("{" PV ",\"props\":{}}"), 1);
    ASSERT_EQ(evs[0].ev.props_count, 0);
    ASSERT_EQ(dec("{" PV ",\"props\":{\"only\":null}}"), 1);
    ASSERT_EQ(evs[0].ev.props_count, 0);
}

TEST(revenue)
{
    struct {
        const char *json;
        int64_t micros;
    } ok[] = {
        {"19.99", 19990000},
        {"\"19.99\"", 19990000},
        {"0", 0},
        {"\"0\"", 0},
        {"\"007.5\"", 7500000},
        {"\"0.0000005\"", 1},
        {"\"0.0000004\"", 0},
        {"\"1.23456789\"", 1234568},
        {"1e12", 1000000000000000000LL},
        {"\"1000000000000\"", 1000000000000000000LL},
        {"0.000001", 1},
    };
    char b[256];
    for (size_t i = 0; i < TALLY_ARRAY_LEN(ok); i++) {
        snprintf(b, sizeof b, "{" PV ",\"revenue\":{\"currency\":\"USD\",\"amount\":%s}}",
                 ok[i].json);
        if (dec(b) != 1) TEST_FAIL_("%s: %s", ok[i].json, native_ctx_error(ctx)->message);
        ASSERT_TRUE(evs[0].ev.has_revenue);
        ASSERT_EQ(evs[0].ev.revenue_micros, ok[i].micros);
        ASSERT_STREQ(evs[0].ev.currency, "USD");
    }
    const char *not_object = "field 'revenue' must be an object like {\"amount\": 19.99, "
                             "\"currency\": \"EUR\"}";
    ERR("{" PV ",\"revenue\":19.99}", not_object);
    ERR("{" PV ",\"revenue\":[]}", not_object);
    ERR("{" PV ",\"revenue\":{\"currency\":\"EUR\"}}", "field 'revenue.amount' is required");
    ERR("{" PV ",\"revenue\":{\"amount\":null,\"currency\":\"EUR\"}}",
        "field 'revenue.amount' is required");
    ERR("{" PV ",\"revenue\":{\"amount\":1}}", "field 'revenue.currency' is required");
    ERR("{" PV ",\"revenue\":{\"amount\":1,\"currency\":\"EUR\",\"tax\":1}}",
        "unknown field 'revenue.tax'");
    ERR("{" PV ",\"revenue\":{\"amount\":1,\"amount\":2,\"currency\":\"EUR\"}}",
        "duplicate field 'revenue.amount'");
    const char *amount = "field 'revenue.amount' must be a number or a decimal string like "
                         "\"19.99\"";
    const char *bad_amounts[] = {"\"1e3\"", "\"abc\"", "\".5\"", "\"12.\"", "\"1,5\"",
                                 "\" 1\"",  "\"\"",    "\"+1\"", "true",    "{}"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(bad_amounts); i++) {
        snprintf(b, sizeof b, "{" PV ",\"revenue\":{\"amount\":%s,\"currency\":\"EUR\"}}",
                 bad_amounts[i]);
        ERR(b, amount);
    }
    ERR("{" PV ",\"revenue\":{\"amount\":-1,\"currency\":\"EUR\"}}",
        "field 'revenue.amount' must not be negative");
    ERR("{" PV ",\"revenue\":{\"amount\":\"-1.5\",\"currency\":\"EUR\"}}",
        "field 'revenue.amount' must not be negative");
    ERR("{" PV ",\"revenue\":{\"amount\":1e999,\"currency\":\"EUR\"}}",
        "field 'revenue.amount' must be a finite number");
    ERR("{" PV ",\"revenue\":{\"amount\":1000000000000.5,\"currency\":\"EUR\"}}",
        "field 'revenue.amount' must be at most 1000000000000");
    ERR("{" PV ",\"revenue\":{\"amount\":\"1000000000001\",\"currency\":\"EUR\"}}",
        "field 'revenue.amount' must be at most 1000000000000");
    ERR("{" PV ",\"revenue\":{\"amount\":\"99999999999999999999999\",\"currency\":\"EUR\"}}",
        "field 'revenue.amount' must be at most 1000000000000");
    ERR("{" PV ",\"revenue\":{\"amount\":\"1000000000000.0000005\",\"currency\":\"EUR\"}}",
        "field 'revenue.amount' must be at most 1000000000000");
    const char *cur = "field 'revenue.currency' must be three capital letters (ISO 4217), like "
                      "\"EUR\"";
    ERR("{" PV ",\"revenue\":{\"amount\":1,\"currency\":\"eur\"}}", cur);
    ERR("{" PV ",\"revenue\":{\"amount\":1,\"currency\":\"EURO\"}}", cur);
    ERR("{" PV ",\"revenue\":{\"amount\":1,\"currency\":\"E1R\"}}", cur);
    ERR("{" PV ",\"revenue\":{\"amount\":1,\"currency\":978}}", cur);
}

TEST(interactive)
{
    ASSERT_EQ(dec("{" PV ",\"interactive\":true}"), 1);
    ASSERT_TRUE(evs[0].ev.interactive);
    ASSERT_EQ(dec("{" PV ",\"interactive\":false}"), 1);
    ASSERT_TRUE(!evs[0].ev.interactive);
    ERR("{" PV ",\"interactive\":\"false\"}", "field 'interactive' must be true or false");
    ERR("{" PV ",\"interactive\":0}", "field 'interactive' must be true or false");
}

TEST(privileged_fields)
{
    check_error(__LINE__, dec("{" PV ",\"ip\":\"1.2.3.4\"}"), TALLY_EINVAL, 0, 403,
                "field 'ip' requires a write key");
    check_error(__LINE__, dec("{" PV ",\"user_agent\":\"x\"}"), TALLY_EINVAL, 0, 403,
                "field 'user_agent' requires a write key");
    ASSERT_EQ(dec_priv("{" PV ",\"ip\":\"203.0.113.9\",\"user_agent\":\"curl/8\"}"), 1);
    ASSERT_SEQ(evs[0].ip, "203.0.113.9");
    ASSERT_SEQ(evs[0].ev.user_agent, "curl/8");
    ASSERT_EQ(dec_priv("{" PV ",\"ip\":\"::ffff:10.0.0.1\"}"), 1);
    const char *ip = "field 'ip' must be an IPv4 or IPv6 address";
    ERR_PRIV("{" PV ",\"ip\":\"1.2.3\"}", ip);
    ERR_PRIV("{" PV ",\"ip\":\"1.2.3.4:80\"}", ip);
    ERR_PRIV("{" PV ",\"ip\":\"example.com\"}", ip);
    ERR_PRIV("{" PV ",\"ip\":\"\"}", ip);
    ERR_PRIV("{" PV ",\"ip\":16909060}", "field 'ip' must be a string");
    char *s = repeat("{" PV ",\"user_agent\":\"", "u", 2049, "\"}");
    ERR_PRIV(s, "field 'user_agent' must be at most 2048 bytes");
    free(s);
    ERR_PRIV("{" PV ",\"user_agent\":\"\xff\"}", "field 'user_agent' is not valid UTF-8");
    ERR_PRIV("{" PV ",\"user_agent\":1}", "field 'user_agent' must be a string");
}

TEST(unknown_and_duplicate_fields)
{
    ERR("{" PV ",\"nmae\":\"x\"}", "unknown field 'nmae'");
    ERR("{" PV ",\"Site\":\"x\"}", "unknown field 'Site'"); /* case-sensitive */
    ERR("{" PV ",\"\":1}", "unknown field ''");
    ERR("{" PV ",\"a\\u0007'\\\"\":1}", "unknown field 'a?"
                                        "?"
                                        "?'");
    ERR("{" PV ",\"\xff\xfe\":1}", "unknown field '?"
                                   "?'");
    char *s = repeat("{" PV ",\"", "\xc3\xa9", 30, "\":1}"); /* 60 bytes, cut at a boundary */
    ERR(s, "unknown field '\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
           "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
           "\xc3\xa9...'");
    free(s);
    ERR("{" PV ",\"site\":\"b.com\"}", "duplicate field 'site'");
    ERR("{" PV ",\"name\":null,\"name\":\"x\"}", "duplicate field 'name'");
}

TEST(all_or_nothing_index)
{
    ERR_AT("[{" PV "},{" PV "},{" PV ",\"name\":\"\"}]", 2, "field 'name' must not be empty");
    ASSERT_TRUE(evs == NULL);
    ERR_AT("{" PV "}\n\n{" PV "}\n{\"site\":\"x\",\"url\":\"nope\"}\n", 2,
           "field 'url' must be an absolute http(s) URL");
    ERR_AT("[{" PV "},{" PV ",\"ts\":\"x\"}]", 1,
           "field 'ts' must be an RFC 3339 date-time with a time zone, like 2026-01-31T12:00:00Z");
}

/* A random mix of valid and invalid bodies through one reused context. */
TEST(reuse_and_many_events)
{
    struct native_opts o = opts();
    o.ndjson = true;
    size_t cap = 1000 * 200;
    char *b = malloc(cap);
    for (int round = 0; round < 5; round++) {
        size_t n = 0;
        int count = 1 + round * 200;
        for (int i = 0; i < count; i++)
            n += (size_t)snprintf(b + n, cap - n,
                                  "{\"site\":\"s%d.com\",\"url\":\"https://s%d.com/p/%d\","
                                  "\"props\":{\"i\":%d}}\n",
                                  i, i, i, i);
        ASSERT_EQ(decode_with(b, n, &o), count);
        for (int i = 0; i < count; i += 37) {
            char want[64];
            snprintf(want, sizeof want, "s%d.com", i);
            ASSERT_SEQ(evs[i].ev.site, want);
            snprintf(want, sizeof want, "%d", i);
            ASSERT_SEQ(evs[i].ev.props[0].value, want);
            ASSERT_EQ(event_validate(&evs[i].ev), 0);
        }
        ASSERT_TRUE(dec("{}") < 0);
    }
    free(b);
}

TEST(content_type)
{
    ASSERT_TRUE(native_content_type_is_ndjson("application/x-ndjson", 20));
    ASSERT_TRUE(native_content_type_is_ndjson("Application/X-NDJSON; charset=utf-8", 36));
    ASSERT_TRUE(native_content_type_is_ndjson(" application/x-ndjson ", 22));
    ASSERT_TRUE(!native_content_type_is_ndjson("application/json", 16));
    ASSERT_TRUE(!native_content_type_is_ndjson("application/x-ndjsonx", 21));
    ASSERT_TRUE(!native_content_type_is_ndjson("", 0));
}

/* ---- timefmt ------------------------------------------------------------------------------- */

static int64_t p3339(const char *s)
{
    int64_t ms = -777;
    if (timefmt_parse_rfc3339(s, strlen(s), &ms) != 0) return -777;
    return ms;
}

TEST(rfc3339_parse)
{
    ASSERT_EQ(p3339("1970-01-01T00:00:00Z"), 0);
    ASSERT_EQ(p3339("2026-01-01T00:00:00Z"), NOW);
    ASSERT_EQ(p3339("2026-01-01t00:00:00z"), NOW);
    ASSERT_EQ(p3339("2026-01-01T00:00:00.5Z"), NOW + 500);
    ASSERT_EQ(p3339("2026-01-01T00:00:00.123456789Z"), NOW + 123);
    ASSERT_EQ(p3339("2026-01-01T00:00:00.9999Z"), NOW + 999);
    ASSERT_EQ(p3339("2026-01-01T02:00:00+02:00"), NOW);
    ASSERT_EQ(p3339("2025-12-31T19:30:00-04:30"), NOW);
    ASSERT_EQ(p3339("2024-02-29T00:00:00Z"), 1709164800000LL);
    ASSERT_EQ(p3339("2000-02-29T12:00:00Z"), 951825600000LL);
    ASSERT_EQ(p3339("9999-12-31T23:59:59.999Z"), TIMEFMT_MS_MAX);
    ASSERT_EQ(p3339("0000-01-01T00:00:00Z"), TIMEFMT_MS_MIN);
    ASSERT_EQ(p3339("1969-12-31T23:59:59Z"), -1000);
    const char *bad[] = {
        "",
        "2026-01-01",
        "2026-01-01T00:00Z",
        "2026-01-01T00:00:00",
        "2026-01-01 00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T23:60:00Z",
        "2026-01-01T23:59:60Z",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00.1234567890Z",
        "2026-01-01T00:00:00+2:00",
        "2026-01-01T00:00:00+02:0",
        "2026-01-01T00:00:00+0200",
        "2026-01-01T00:00:00+24:00",
        "2026-01-01T00:00:00+02:60",
        "2026-01-01T00:00:00ZZ",
        "2026-01-01T00:00:00Z ",
        " 2026-01-01T00:00:00Z",
        "+2026-01-01T00:00:00Z",
        "2026-1-01T00:00:00Z",
        "2026-01-01T00:00:0aZ",
        "20260101T000000Z",
        "2026-01-01T00:00:00+02:00x",
    };
    for (size_t i = 0; i < TALLY_ARRAY_LEN(bad); i++)
        if (p3339(bad[i]) != -777) TEST_FAIL_("accepted \"%s\"", bad[i]);
}

TEST(rfc3339_format)
{
    char out[TIMEFMT_RFC3339_BYTES];
    ASSERT_EQ(timefmt_format_rfc3339(0, out), 0);
    ASSERT_STREQ(out, "1970-01-01T00:00:00.000Z");
    ASSERT_EQ(timefmt_format_rfc3339(NOW + 1234, out), 0);
    ASSERT_STREQ(out, "2026-01-01T00:00:01.234Z");
    ASSERT_EQ(timefmt_format_rfc3339(-1, out), 0);
    ASSERT_STREQ(out, "1969-12-31T23:59:59.999Z");
    ASSERT_EQ(timefmt_format_rfc3339(TIMEFMT_MS_MAX, out), 0);
    ASSERT_STREQ(out, "9999-12-31T23:59:59.999Z");
    ASSERT_EQ(timefmt_format_rfc3339(TIMEFMT_MS_MIN, out), 0);
    ASSERT_STREQ(out, "0000-01-01T00:00:00.000Z");
    ASSERT_EQ(timefmt_format_rfc3339(TIMEFMT_MS_MAX + 1, out), TALLY_ERANGE);
    ASSERT_STREQ(out, "");
    ASSERT_EQ(timefmt_format_rfc3339(TIMEFMT_MS_MIN - 1, out), TALLY_ERANGE);
    /* format then parse is the identity over the whole range */
    uint64_t x = 99;
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int64_t ms =
            TIMEFMT_MS_MIN + (int64_t)(x % (uint64_t)(TIMEFMT_MS_MAX - TIMEFMT_MS_MIN + 1));
        ASSERT_EQ(timefmt_format_rfc3339(ms, out), 0);
        ASSERT_EQ(p3339(out), ms);
    }
}

TEST(civil_days)
{
    ASSERT_EQ(timefmt_days_from_civil(1970, 1, 1), 0);
    ASSERT_EQ(timefmt_days_from_civil(2000, 3, 1), 11017);
    ASSERT_EQ(timefmt_days_from_civil(1969, 12, 31), -1);
    ASSERT_EQ(timefmt_day_of_ms(-1), -1);
    ASSERT_EQ(timefmt_day_of_ms(TIMEFMT_DAY_MS), 1);
    ASSERT_EQ(timefmt_days_in_month(2024, 2), 29);
    ASSERT_EQ(timefmt_days_in_month(2100, 2), 28);
    ASSERT_EQ(timefmt_days_in_month(2000, 2), 29);
    ASSERT_EQ(timefmt_days_in_month(2026, 13), 0);
    for (int64_t d = -800000; d < 3000000; d += 997) {
        int64_t y;
        unsigned m, day;
        timefmt_civil_from_days(d, &y, &m, &day);
        ASSERT_EQ(timefmt_days_from_civil(y, m, day), d);
        ASSERT_TRUE(m >= 1 && m <= 12 && day >= 1 && day <= timefmt_days_in_month(y, m));
    }
    int64_t now = timefmt_now_ms();
    ASSERT_TRUE(now > NOW - 365LL * TIMEFMT_DAY_MS);
}

int main(void)
{
    ctx = native_ctx_new();
    RUN(minimal_pageview);
    RUN(all_fields);
    RUN(nulls_mean_absent);
    RUN(shapes);
    RUN(body_errors);
    RUN(limits);
    RUN(deep_nesting);
    RUN(site_and_name);
    RUN(url_and_referrer);
    RUN(timestamps);
    RUN(ids);
    RUN(props);
    RUN(revenue);
    RUN(interactive);
    RUN(privileged_fields);
    RUN(unknown_and_duplicate_fields);
    RUN(all_or_nothing_index);
    RUN(reuse_and_many_events);
    RUN(content_type);
    RUN(rfc3339_parse);
    RUN(rfc3339_format);
    RUN(civil_days);
    native_ctx_free(ctx);
    native_ctx_free(NULL);
    return test_summary();
}
