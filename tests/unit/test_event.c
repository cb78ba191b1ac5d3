/* Canonical event: validity, binary encoding round trips, decoder robustness, text helpers,
 * arena. */
#include "test.h"

#include "ingest/event.h"
#include "tally/error.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static size_t rnd_below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

static struct event_str S(const char *s) {
    struct event_str r = {s, strlen(s)};
    return r;
}

/* Random valid UTF-8 of at most max bytes (ASCII, 2-, 3- and 4-byte characters). */
static struct event_str
rnd_text(char *buf, size_t max, size_t min)
{
    size_t target = min + rnd_below(max - min + 1), n = 0;
    if (rnd_below(4) == 0 && target > 8) target = rnd_below(8) + min; /* mostly short */
    if (target > max) target = max;
    while (n < target) {
        size_t kind = rnd_below(10), room = target - n;
        if (kind < 7 || room < 4) {
            buf[n++] = (char)(0x20 + rnd_below(0x5f));
        } else if (kind == 7) {
            buf[n++] = (char)0xc3;
            buf[n++] = (char)0xa9; /* é */
        } else if (kind == 8) {
            memcpy(buf + n, "\xe2\x82\xac", 3); /* € */
            n += 3;
        } else {
            memcpy(buf + n, "\xf0\x9f\x98\x80", 4); /* 😀 */
            n += 4;
        }
    }
    struct event_str s = {buf, n};
    return s;
}

struct rnd_event {
    struct event ev;
    struct event_prop props[EVENT_PROPS_MAX];
    char bufs[20][EVENT_URL_BYTES_MAX];
    char keys[EVENT_PROPS_MAX][EVENT_PROP_KEY_BYTES_MAX + 8];
    char vals[EVENT_PROPS_MAX][EVENT_PROP_VALUE_BYTES_MAX];
};

static void make_random(struct rnd_event *r)
{
    struct event *ev = &r->ev;
    event_init(ev);
    ev->source = (uint8_t)rnd_below(EVENT_SOURCE_COUNT);
    ev->flags = (uint32_t)rnd_below(4);
    ev->interactive = rnd_below(2);
    ev->ts_ms = rnd_below(4) ? 1700000000000LL + (int64_t)rnd_below(1000000000)
                             : (int64_t)rnd_below(EVENT_TS_MS_MAX + 1);
    ev->received_ms = rnd_below(4) ? ev->ts_ms + (int64_t)rnd_below(5000)
                                   : (int64_t)rnd_below(EVENT_TS_MS_MAX + 1);
    ev->visitor = rnd();
    ev->site = rnd_text(r->bufs[0], EVENT_SITE_BYTES_MAX, 1);
    if (rnd_below(2)) ev->name = rnd_text(r->bufs[1], EVENT_NAME_BYTES_MAX, 1);
    if (rnd_below(4)) ev->url = rnd_text(r->bufs[2], EVENT_URL_BYTES_MAX, 0);
    if (rnd_below(2)) ev->referrer = rnd_text(r->bufs[3], EVENT_REFERRER_BYTES_MAX, 0);
    if (rnd_below(2)) ev->user_agent = rnd_text(r->bufs[4], EVENT_USER_AGENT_BYTES_MAX, 0);
    if (rnd_below(3) == 0) ev->client_id = rnd_text(r->bufs[5], EVENT_CLIENT_ID_BYTES_MAX, 0);
    if (rnd_below(2)) {
        static const char *const countries[] = {"", "DE", "US", "FR"};
        static const char *const regions[] = {"", "DE-BY", "US-CA"};
        ev->country = S(countries[rnd_below(4)]);
        ev->region = S(regions[rnd_below(3)]);
        if (rnd_below(2)) ev->city = rnd_text(r->bufs[6], EVENT_CITY_BYTES_MAX, 0);
    }
    if (rnd_below(3) == 0) {
        ev->has_revenue = true;
        ev->revenue_micros = (int64_t)rnd_below(EVENT_REVENUE_MICROS_MAX);
        memcpy(ev->currency, rnd_below(2) ? "EUR" : "USD", 4);
    }
    if (rnd_below(3) == 0) {
        ev->screen_width_px = (uint16_t)rnd();
        ev->screen_height_px = (uint16_t)rnd();
        if (rnd_below(2)) ev->language = S("en-US");
    }
    if (rnd_below(2)) {
        uint32_t n = (uint32_t)rnd_below(EVENT_PROPS_MAX + 1);
        for (uint32_t i = 0; i < n; i++) {
            struct event_prop *p = &r->props[i];
            /* unique keys: a numbered prefix */
            int pre = 3;
            r->keys[i][0] = 'k';
            r->keys[i][1] = (char)('0' + i / 10);
            r->keys[i][2] = (char)('0' + i % 10);
            struct event_str k = rnd_text(r->keys[i] + pre, EVENT_PROP_KEY_BYTES_MAX - 8, 0);
            p->key.ptr = r->keys[i];
            p->key.len = (size_t)pre + k.len;
            p->type = (uint8_t)rnd_below(3);
            if (p->type == EVENT_PROP_STRING) {
                p->value = rnd_text(r->vals[i], EVENT_PROP_VALUE_BYTES_MAX, 0);
            } else if (p->type == EVENT_PROP_NUMBER) {
                static const char *const nums[] = {"0", "-1", "19.99", "1e+21", "3.5E-7"};
                p->value = S(nums[rnd_below(5)]);
            } else {
                p->value = S(rnd_below(2) ? "true" : "false");
            }
        }
        ev->props = r->props;
        ev->props_count = n;
    }
}

static bool str_eq(struct event_str a, struct event_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static void assert_same(const struct event *a, const struct event *b)
{
    ASSERT_EQ(a->source, b->source);
    ASSERT_EQ(a->flags, b->flags);
    ASSERT_EQ(a->interactive, b->interactive);
    ASSERT_EQ(a->ts_ms, b->ts_ms);
    ASSERT_EQ(a->received_ms, b->received_ms);
    ASSERT_TRUE(a->visitor == b->visitor);
    ASSERT_TRUE(str_eq(a->site, b->site));
    ASSERT_TRUE(str_eq(a->name, b->name));
    ASSERT_TRUE(str_eq(a->url, b->url));
    ASSERT_TRUE(str_eq(a->referrer, b->referrer));
    ASSERT_TRUE(str_eq(a->user_agent, b->user_agent));
    ASSERT_TRUE(str_eq(a->client_id, b->client_id));
    ASSERT_TRUE(str_eq(a->country, b->country));
    ASSERT_TRUE(str_eq(a->region, b->region));
    ASSERT_TRUE(str_eq(a->city, b->city));
    ASSERT_TRUE(str_eq(a->language, b->language));
    ASSERT_EQ(a->screen_width_px, b->screen_width_px);
    ASSERT_EQ(a->screen_height_px, b->screen_height_px);
    ASSERT_EQ(a->has_revenue, b->has_revenue);
    if (a->has_revenue) {
        ASSERT_EQ(a->revenue_micros, b->revenue_micros);
        ASSERT_STREQ(a->currency, b->currency);
    }
    ASSERT_EQ(a->props_count, b->props_count);
    for (uint32_t i = 0; i < a->props_count; i++) {
        ASSERT_EQ(a->props[i].type, b->props[i].type);
        ASSERT_TRUE(str_eq(a->props[i].key, b->props[i].key));
        ASSERT_TRUE(str_eq(a->props[i].value, b->props[i].value));
    }
}

static uint8_t buf[EVENT_ENCODED_BYTES_MAX], buf2[EVENT_ENCODED_BYTES_MAX];

static void base_event(struct event *ev)
{
    event_init(ev);
    ev->site = S("example.com");
    ev->url = S("https://example.com/");
    ev->ts_ms = 1767225600000LL;
    ev->received_ms = 1767225600123LL;
    ev->visitor = 0x0123456789abcdefULL;
}

TEST(init_defaults)
{
    struct event ev;
    event_init(&ev);
    ASSERT_EQ(ev.source, EVENT_SOURCE_NATIVE);
    ASSERT_TRUE(ev.interactive);
    ASSERT_TRUE(event_is_pageview(&ev));
    ASSERT_EQ(ev.props_count, 0);
    ASSERT_STREQ(event_source_name(EVENT_SOURCE_GOATCOUNTER), "goatcounter");
    ASSERT_STREQ(event_source_name(99), "unknown");
}

TEST(minimal_round_trip_and_layout)
{
    struct event ev, out;
    struct event_scratch sc;
    base_event(&ev);
    int n = event_encode(&ev, buf, sizeof buf);
    ASSERT_TRUE(n > 0);
    ASSERT_EQ(buf[0], 1);                   /* version */
    ASSERT_EQ(buf[1], EVENT_SOURCE_NATIVE); /* source */
    ASSERT_EQ(buf[2], 0);                   /* bits: interactive, nothing optional */
    /* 1+1+1 + ts(6) + delta(2) + visitor 8 + 6 strings */
    ASSERT_EQ(n, 3 + 6 + 2 + 8 + (1 + 11) + (1 + 8) + (1 + 20) + 1 + 1 + 1);
    ASSERT_EQ(event_decode(buf, (size_t)n, &out, &sc), 0);
    assert_same(&ev, &out);
    /* strings point into the record */
    ASSERT_TRUE((const uint8_t *)out.site.ptr > buf && (const uint8_t *)out.site.ptr < buf + n);
}

TEST(full_round_trip)
{
    struct event ev, out;
    struct event_scratch sc;
    struct event_prop props[3] = {
        {S("plan"), S("pro"), EVENT_PROP_STRING},
        {S("seats"), S("12.5"), EVENT_PROP_NUMBER},
        {S("trial"), S("false"), EVENT_PROP_BOOL},
    };
    base_event(&ev);
    ev.source = EVENT_SOURCE_SEGMENT;
    ev.flags = EVENT_F_BOT | EVENT_F_HOST_NOT_ALLOWED;
    ev.interactive = false;
    ev.name = S("Signup");
    ev.referrer = S("https://www.google.com/");
    ev.user_agent = S("Mozilla/5.0 (X11; Linux x86_64)");
    ev.client_id = S("msg-1");
    ev.country = S("DE");
    ev.region = S("DE-BY");
    ev.city = S("M\xc3\xbcnchen");
    ev.has_revenue = true;
    ev.revenue_micros = 19990000;
    memcpy(ev.currency, "EUR", 4);
    ev.screen_width_px = 1920;
    ev.screen_height_px = 1080;
    ev.language = S("de-DE");
    ev.props = props;
    ev.props_count = 3;
    ev.received_ms = ev.ts_ms - 5000; /* negative delta */
    int n = event_encode(&ev, buf, sizeof buf);
    ASSERT_TRUE(n > 0);
    ASSERT_EQ(event_decode(buf, (size_t)n, &out, &sc), 0);
    assert_same(&ev, &out);
    ASSERT_TRUE(out.props == sc.props);
    /* a too-small buffer at every size fails cleanly */
    for (int cap = 0; cap < n; cap++)
        ASSERT_EQ(event_encode(&ev, buf2, (size_t)cap), TALLY_ETOOBIG);
    ASSERT_EQ(event_encode(&ev, buf2, (size_t)n), n);
    ASSERT_MEMEQ(buf, buf2, (size_t)n);
}

TEST(random_round_trips)
{
    static struct rnd_event r;
    struct event out;
    struct event_scratch sc;
    rng_state = 42;
    for (int iter = 0; iter < 3000; iter++) {
        make_random(&r);
        ASSERT_EQ(event_validate(&r.ev), 0);
        int n = event_encode(&r.ev, buf, sizeof buf);
        ASSERT_TRUE(n > 0);
        ASSERT_EQ(event_decode(buf, (size_t)n, &out, &sc), 0);
        assert_same(&r.ev, &out);
        /* canonical: re-encoding the decoded event gives the same bytes */
        ASSERT_EQ(event_encode(&out, buf2, sizeof buf2), n);
        ASSERT_MEMEQ(buf, buf2, (size_t)n);
    }
}

TEST(max_event_fits_bound)
{
    static struct rnd_event r;
    struct event *ev = &r.ev;
    base_event(ev);
    memset(r.bufs, 'a', sizeof r.bufs);
    ev->site = (struct event_str){r.bufs[0], EVENT_SITE_BYTES_MAX};
    ev->name = (struct event_str){r.bufs[1], EVENT_NAME_BYTES_MAX};
    ev->url = (struct event_str){r.bufs[2], EVENT_URL_BYTES_MAX};
    ev->referrer = (struct event_str){r.bufs[3], EVENT_REFERRER_BYTES_MAX};
    ev->user_agent = (struct event_str){r.bufs[4], EVENT_USER_AGENT_BYTES_MAX};
    ev->client_id = (struct event_str){r.bufs[5], EVENT_CLIENT_ID_BYTES_MAX};
    ev->country = S("ZZ");
    ev->region = (struct event_str){"AAAAAAAAAAAAAAAA", EVENT_REGION_BYTES_MAX};
    ev->city = (struct event_str){r.bufs[6], EVENT_CITY_BYTES_MAX};
    ev->language = (struct event_str){r.bufs[7], EVENT_LANGUAGE_BYTES_MAX};
    ev->screen_width_px = ev->screen_height_px = 65535;
    ev->has_revenue = true;
    ev->revenue_micros = EVENT_REVENUE_MICROS_MAX;
    memcpy(ev->currency, "EUR", 4);
    ev->ts_ms = EVENT_TS_MS_MAX;
    ev->received_ms = 0;
    ev->visitor = UINT64_MAX;
    for (int i = 0; i < EVENT_PROPS_MAX; i++) {
        memset(r.keys[i], 'k', EVENT_PROP_KEY_BYTES_MAX);
        r.keys[i][0] = (char)('0' + i / 10);
        r.keys[i][1] = (char)('0' + i % 10);
        memset(r.vals[i], 'v', EVENT_PROP_VALUE_BYTES_MAX);
        r.props[i] = (struct event_prop){{r.keys[i], EVENT_PROP_KEY_BYTES_MAX},
                                         {r.vals[i], EVENT_PROP_VALUE_BYTES_MAX},
                                         EVENT_PROP_STRING};
    }
    ev->props = r.props;
    ev->props_count = EVENT_PROPS_MAX;
    int n = event_encode(ev, buf, sizeof buf);
    ASSERT_TRUE(n > 0);
    ASSERT_TRUE((size_t)n <= EVENT_ENCODED_BYTES_MAX);
    struct event out;
    struct event_scratch sc;
    ASSERT_EQ(event_decode(buf, (size_t)n, &out, &sc), 0);
    assert_same(ev, &out);
}

TEST(validate_rejects)
{
    struct event ev;
    struct event_prop p[2];
#define BAD(stmt)                                                                                  \
    do {                                                                                           \
        base_event(&ev);                                                                           \
        stmt;                                                                                      \
        ASSERT_EQ(event_validate(&ev), TALLY_EINVAL);                                              \
        ASSERT_EQ(event_encode(&ev, buf, sizeof buf), TALLY_EINVAL);                               \
    } while (0)
    base_event(&ev);
    ASSERT_EQ(event_validate(&ev), 0);
    BAD(ev.site = S(""));
    BAD(ev.name = S(""));
    BAD(ev.source = EVENT_SOURCE_COUNT);
    BAD(ev.flags = 0x4);
    BAD(ev.ts_ms = -1);
    BAD(ev.ts_ms = EVENT_TS_MS_MAX + 1);
    BAD(ev.received_ms = -1);
    BAD(ev.url = S("https://example.com/\xff"));
    BAD(ev.referrer = ((struct event_str){"a\0b", 3}));
    BAD(ev.city = S("\xc0\xaf")); /* overlong '/' */
    static char big[EVENT_URL_BYTES_MAX + 1];
    memset(big, 'a', sizeof big);
    BAD(ev.url = ((struct event_str){big, EVENT_URL_BYTES_MAX + 1}));
    BAD(ev.name = ((struct event_str){big, EVENT_NAME_BYTES_MAX + 1}));
    BAD(ev.site = ((struct event_str){big, EVENT_SITE_BYTES_MAX + 1}));
    BAD(ev.client_id = ((struct event_str){big, EVENT_CLIENT_ID_BYTES_MAX + 1}));
    BAD(ev.country = S("de"));
    BAD(ev.country = S("DEU"));
    BAD(ev.region = S("DE\x01"));
    BAD(ev.language = S("en_US"));
    BAD((ev.has_revenue = true, memcpy(ev.currency, "eur", 4)));
    BAD((ev.has_revenue = true, memcpy(ev.currency, "EUR", 4), ev.revenue_micros = -1));
    BAD((ev.has_revenue = true, memcpy(ev.currency, "EUR", 4),
         ev.revenue_micros = EVENT_REVENUE_MICROS_MAX + 1));
    p[0] = (struct event_prop){S("a"), S("1"), EVENT_PROP_NUMBER};
    p[1] = (struct event_prop){S("a"), S("x"), EVENT_PROP_STRING};
    BAD((ev.props = p, ev.props_count = 2)); /* duplicate key */
    p[1].key = S("");
    BAD((ev.props = p, ev.props_count = 2)); /* empty key */
    p[1] = (struct event_prop){S("b"), S("01"), EVENT_PROP_NUMBER};
    BAD((ev.props = p, ev.props_count = 2)); /* not a JSON number */
    p[1] = (struct event_prop){S("b"), S("yes"), EVENT_PROP_BOOL};
    BAD((ev.props = p, ev.props_count = 2));
    p[1] = (struct event_prop){S("b"), S("x"), 3};
    BAD((ev.props = p, ev.props_count = 2));
    BAD((ev.props = p, ev.props_count = EVENT_PROPS_MAX + 1));
#undef BAD
}

TEST(decoder_rejects_malformed)
{
    struct event ev, out;
    struct event_scratch sc;
    base_event(&ev);
    int n = event_encode(&ev, buf, sizeof buf);
    ASSERT_TRUE(n > 0);
    memcpy(buf2, buf, (size_t)n);
    /* version */
    buf2[0] = 2;
    ASSERT_EQ(event_decode(buf2, (size_t)n, &out, &sc), TALLY_ECORRUPT);
    buf2[0] = 1;
    /* unknown source */
    buf2[1] = EVENT_SOURCE_COUNT;
    ASSERT_EQ(event_decode(buf2, (size_t)n, &out, &sc), TALLY_ECORRUPT);
    buf2[1] = 0;
    /* unknown bit */
    buf2[2] = 0x7f ^ 0x3f; /* bit 6 (hints) set, hints all zero would follow: bad */
    ASSERT_EQ(event_decode(buf2, (size_t)n, &out, &sc), TALLY_ECORRUPT);
    buf2[2] = 0;
    ASSERT_EQ(event_decode(buf2, (size_t)n, &out, &sc), 0);
    /* trailing byte */
    buf2[n] = 0;
    ASSERT_EQ(event_decode(buf2, (size_t)n + 1, &out, &sc), TALLY_ECORRUPT);
    /* empty input */
    ASSERT_EQ(event_decode(buf2, 0, &out, &sc), TALLY_ECORRUPT);

    /* non-minimal varint for bits: 0x80 0x00 instead of 0x00 */
    uint8_t nm[EVENT_ENCODED_BYTES_MAX];
    memcpy(nm, buf, 2);
    nm[2] = 0x80;
    nm[3] = 0x00;
    memcpy(nm + 4, buf + 3, (size_t)n - 3);
    ASSERT_EQ(event_decode(nm, (size_t)n + 1, &out, &sc), TALLY_ECORRUPT);
    /* bits with bit 7 (unknown) via two-byte varint 0x80 0x01 = 128 */
    nm[2] = 0x80;
    nm[3] = 0x01;
    ASSERT_EQ(event_decode(nm, (size_t)n + 1, &out, &sc), TALLY_ECORRUPT);
    /* geo flag with no geo strings */
    memcpy(buf2, buf, (size_t)n);
    buf2[2] = 0x08;
    buf2[n] = 0;
    buf2[n + 1] = 0;
    buf2[n + 2] = 0;
    ASSERT_EQ(event_decode(buf2, (size_t)n + 3, &out, &sc), TALLY_ECORRUPT);
    /* 11-byte varint */
    uint8_t v[32] = {1, 0, 0};
    memset(v + 3, 0xff, 10);
    v[13] = 0x01;
    ASSERT_EQ(event_decode(v, 14, &out, &sc), TALLY_ECORRUPT);
}

/* Every truncation fails; every single-bit flip either fails or yields a record that is itself
 * canonical (re-encodes to the flipped bytes). Runs under ASan: no over-read. */
TEST(truncations_and_bit_flips)
{
    static struct rnd_event r;
    struct event out;
    struct event_scratch sc;
    rng_state = 7;
    for (int iter = 0; iter < 40; iter++) {
        make_random(&r);
        int n = event_encode(&r.ev, buf, sizeof buf);
        ASSERT_TRUE(n > 0);
        /* every length for small records; for big ones the first and last 300 lengths and
         * 400 random ones in between (the decoder's cost is linear, the test's quadratic) */
        int lens = n <= 1000 ? n : 1000;
        for (int k = 0; k < lens; k++) {
            int len = n <= 1000 ? k
                      : k < 300 ? k
                      : k < 600 ? n - 1 - (k - 300)
                                : 300 + (int)rnd_below((size_t)n - 600);
            /* exact-size heap copy so ASan catches a one-byte over-read */
            uint8_t *t = malloc(len ? (size_t)len : 1);
            memcpy(t, buf, (size_t)len);
            ASSERT_EQ(event_decode(t, (size_t)len, &out, &sc), TALLY_ECORRUPT);
            free(t);
        }
        /* all bits of small records; else all bits of the first 48 bytes (the header and first
         * strings) and 800 random ones */
        int flips = n < 100 ? n * 8 : 48 * 8 + 800;
        uint8_t *t = malloc((size_t)n);
        memcpy(t, buf, (size_t)n);
        for (int k = 0; k < flips; k++) {
            int bit = n < 100 || k < 48 * 8 ? k : (int)rnd_below((size_t)n * 8);
            t[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            if (event_decode(t, (size_t)n, &out, &sc) == 0) {
                ASSERT_EQ(event_encode(&out, buf2, sizeof buf2), n);
                ASSERT_MEMEQ(t, buf2, (size_t)n);
            }
            t[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        free(t);
    }
}

TEST(text_valid)
{
    ASSERT_TRUE(event_text_valid("", 0));
    ASSERT_TRUE(event_text_valid("plain ascii text, longer than eight bytes", 41));
    ASSERT_TRUE(event_text_valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14));
    ASSERT_TRUE(event_text_valid("\xef\xbf\xbf\xf4\x8f\xbf\xbf", 7)); /* U+FFFF, U+10FFFF */
    ASSERT_TRUE(!event_text_valid("abc\0def", 7));
    ASSERT_TRUE(!event_text_valid("abcdefgh\0", 9));
    ASSERT_TRUE(!event_text_valid("\x80", 1));             /* lone continuation */
    ASSERT_TRUE(!event_text_valid("\xc3", 1));             /* truncated */
    ASSERT_TRUE(!event_text_valid("\xc0\x80", 2));         /* overlong NUL */
    ASSERT_TRUE(!event_text_valid("\xc1\xbf", 2));         /* overlong */
    ASSERT_TRUE(!event_text_valid("\xe0\x9f\xbf", 3));     /* overlong 3-byte */
    ASSERT_TRUE(!event_text_valid("\xed\xa0\x80", 3));     /* surrogate U+D800 */
    ASSERT_TRUE(!event_text_valid("\xf0\x8f\xbf\xbf", 4)); /* overlong 4-byte */
    ASSERT_TRUE(!event_text_valid("\xf4\x90\x80\x80", 4)); /* U+110000 */
    ASSERT_TRUE(!event_text_valid("\xf5\x80\x80\x80", 4));
    ASSERT_TRUE(!event_text_valid("\xff", 1));
    ASSERT_TRUE(!event_text_valid("\xe2\x82", 2));     /* truncated at end */
    ASSERT_TRUE(!event_text_valid("\xe2\x28\xa1", 3)); /* bad continuation */
    ASSERT_TRUE(!event_text_valid("aaaaaaa\xc3", 8));
    /* cut helpers */
    ASSERT_EQ(event_text_prefix("caf\xc3\xa9", 5, 4), 3);
    ASSERT_EQ(event_text_prefix("caf\xc3\xa9", 5, 5), 5);
    ASSERT_EQ(event_text_prefix("\xf0\x9f\x98\x80x", 5, 3), 0);
    ASSERT_EQ(event_text_prefix("abc", 3, 10), 3);
}

TEST(json_numbers)
{
    const char *good[] = {"0", "-0", "1", "-12", "19.99", "1e5", "1E+5", "2.5e-3", "0.0"};
    const char *bad[] = {"",    "-",   "01",       "+1",   "1.", ".5",  "1e",
                         "1e+", "NaN", "Infinity", "0x10", "1 ", "--1", "1.2.3"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(good); i++)
        ASSERT_TRUE(event_json_number_valid(good[i], strlen(good[i])));
    for (size_t i = 0; i < TALLY_ARRAY_LEN(bad); i++)
        ASSERT_TRUE(!event_json_number_valid(bad[i], strlen(bad[i])));
}

TEST(arena)
{
    struct event_arena *a = event_arena_new(4096, 8192);
    ASSERT_TRUE(a != NULL);
    char *first = NULL;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 1000; i++) {
            char *p = event_arena_alloc(a, (size_t)(i % 37) + 1);
            ASSERT_TRUE(p != NULL);
            ASSERT_EQ((uintptr_t)p % 16, 0);
            memset(p, 0x5a, (size_t)(i % 37) + 1);
            if (i == 0 && round == 0) first = p;
            if (i == 0 && round > 0) ASSERT_TRUE(p == first); /* chunks are reused */
        }
        char *big = event_arena_alloc(a, 100000); /* larger than a chunk */
        ASSERT_TRUE(big != NULL);
        memset(big, 1, 100000);
        char *s = event_arena_strdup(a, "hello", 5);
        ASSERT_STREQ(s, "hello");
        ASSERT_TRUE(event_arena_used(a) >= 100000);
        event_arena_reset(a);
        ASSERT_EQ(event_arena_used(a), 0);
    }
    ASSERT_TRUE(event_arena_alloc(a, 0) != NULL);
    event_arena_free(a);
    event_arena_free(NULL);
}

int main(void)
{
    RUN(init_defaults);
    RUN(minimal_round_trip_and_layout);
    RUN(full_round_trip);
    RUN(random_round_trips);
    RUN(max_event_fits_bound);
    RUN(validate_rejects);
    RUN(decoder_rejects_malformed);
    RUN(truncations_and_bit_flips);
    RUN(text_valid);
    RUN(json_numbers);
    RUN(arena);
    return test_summary();
}
