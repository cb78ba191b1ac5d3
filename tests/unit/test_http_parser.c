/*
 * http_parser (and http_url, http_inflate): table-driven. Every input is parsed from the end of
 * an exact-size malloc'd buffer (ASan catches any over-read), then fed again as every prefix
 * (incremental: -2 until the head is complete, or the same error as the whole input).
 */
#include <zlib.h>

#include "http/http_inflate.h"
#include "http/http_parser.h"
#include "http/http_url.h"
#include "tally/error.h"
#include "test.h"

static const struct http_parse_limits LIM = {
    .header_bytes_max = 4096,
    .url_bytes_max = 256,
    .header_count_max = 16,
    .body_bytes_max = 1000,
};

struct pcase {
    const char *in;
    size_t len;
    int status; /* 0: valid */
};

#define H "Host: a\r\n"
#define OK(s)                                                                                      \
    {                                                                                              \
        s, sizeof(s) - 1, 0                                                                        \
    }
#define BAD(s, st)                                                                                 \
    {                                                                                              \
        s, sizeof(s) - 1, st                                                                       \
    }
#define POST_HDR(h) "POST / HTTP/1.1\r\nHost: a\r\n" h "\r\n\r\n"

static const struct pcase cases[] = {
    /* valid */
    OK("GET / HTTP/1.1\r\n" H "\r\n"),
    OK("GET /a/b?c=d&e=%20 HTTP/1.1\r\n" H "\r\n"),
    OK("GET / HTTP/1.0\r\n\r\n"),
    OK("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
    OK("HEAD /x HTTP/1.1\r\n" H "\r\n"),
    OK("POST /x HTTP/1.1\r\n" H "Content-Length: 0\r\n\r\n"),
    OK("PUT /x HTTP/1.1\r\n" H "Content-Length: 1000\r\n\r\n"),
    OK("DELETE /x HTTP/1.1\r\n" H "\r\n"),
    OK("PATCH /x HTTP/1.1\r\n" H "\r\n"),
    OK("OPTIONS * HTTP/1.1\r\n" H "\r\n"),
    OK("OPTIONS /x HTTP/1.1\r\n" H "\r\n"),
    OK("GET http://a.example/x?y HTTP/1.1\r\n" H "\r\n"),
    OK("GET HTTPS://a.example HTTP/1.1\r\n" H "\r\n"),
    OK("GET http://a.example?q HTTP/1.1\r\n" H "\r\n"),
    OK("\r\n\r\nGET / HTTP/1.1\r\n" H "\r\n"),
    OK("GET //// HTTP/1.1\r\n" H "\r\n"),
    OK("GET /!$&'()*+,;=:@-._~%41\"<>[]^`{|}\\ HTTP/1.1\r\n" H "\r\n"),
    OK("GET / HTTP/1.1\r\nhost:a\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHOST: \t a \t \r\n\r\n"),
    OK("GET / HTTP/1.1\r\n" H "X-Empty:\r\n\r\n"),
    OK("GET / HTTP/1.1\r\n" H "X-Obs: caf\xc3\xa9\x80\xff\r\n\r\n"),
    OK("GET / HTTP/1.1\r\n" H "X-Tab: a\tb\r\n\r\n"),
    OK("GET / HTTP/1.1\r\n" H "!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n"),
    OK("GET / HTTP/1.1\r\n" H "Connection: close\r\n\r\n"),
    OK("GET / HTTP/1.1\r\n" H "Connection: Upgrade, Keep-Alive\r\n\r\n"),
    OK(POST_HDR("Content-Length: 007")),
    OK(POST_HDR("Transfer-Encoding: chunked")),
    OK(POST_HDR("Transfer-Encoding:  CHUNKED  ")),
    OK(POST_HDR("Content-Length: 5\r\nExpect: 100-continue")),
    OK(POST_HDR("Content-Length: 5\r\nExpect: 100-Continue")),
    OK(POST_HDR("Content-Length: 5\r\nContent-Encoding: gzip")),
    OK(POST_HDR("Content-Length: 5\r\nContent-Encoding: X-GZIP")),
    OK(POST_HDR("Content-Length: 5\r\nContent-Encoding: deflate")),
    OK(POST_HDR("Content-Length: 5\r\nContent-Encoding: identity")),
    OK("POST / HTTP/1.0\r\nExpect: whatever\r\nContent-Length: 1\r\n\r\n"),
    OK("GET / HTTP/1.1\r\n" H "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\n"
       "I: 9\r\nJ: 10\r\nK: 11\r\nL: 12\r\nM: 13\r\nN: 14\r\nO: 15\r\n\r\n"),

    /* request line */
    BAD("GET  / HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET /  HTTP/1.1\r\n" H "\r\n", 400),
    BAD(" GET / HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET\t/ HTTP/1.1\r\n" H "\r\n", 400),
    BAD("G(T / HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET\x00/ HTTP/1.1\r\n" H "\r\n", 400),
    BAD("G\xc3\x89T / HTTP/1.1\r\n" H "\r\n", 400),
    BAD("/v1/events HTTP/1.1\r\n" H "\r\n", 400),
    BAD("get / HTTP/1.1\r\n" H "\r\n", 501),
    BAD("BREW / HTTP/1.1\r\n" H "\r\n", 501),
    BAD("CONNECT a.example:443 HTTP/1.1\r\n" H "\r\n", 501),
    BAD("TRACE / HTTP/1.1\r\n" H "\r\n", 501),
    BAD("PROPFIND / HTTP/1.1\r\n" H "\r\n", 501),
    BAD("GETGETGETGETGETGETGETGET / HTTP/1.1\r\n" H "\r\n", 501),
    BAD("GET / HTTP/1.2\r\n" H "\r\n", 505),
    BAD("GET / HTTP/2.0\r\n" H "\r\n", 505),
    BAD("GET / HTTP/0.9\r\n" H "\r\n", 505),
    BAD("GET / HTTP/3.1\r\n" H "\r\n", 505),
    BAD("GET / HTTP/1.1x\r\n" H "\r\n", 400),
    BAD("GET / HTTP/1.01\r\n" H "\r\n", 400),
    BAD("GET / HTTP/11.1\r\n" H "\r\n", 400),
    BAD("GET / HTTP/1\r\n" H "\r\n", 400),
    BAD("GET / HTTP/1.\r\n" H "\r\n", 400),
    BAD("GET / http/1.1\r\n" H "\r\n", 400),
    BAD("GET / HTTPS/1.1\r\n" H "\r\n", 400),
    BAD("GET / HTTP/a.1\r\n" H "\r\n", 400),
    BAD("GET / HTTP/1.1 \r\n" H "\r\n", 400),
    BAD("GET / HTTP/1.1\n" H "\r\n", 400),
    BAD("GET / HTTP/1.1\rX" H "\r\n", 400),
    BAD("GET /\r\n" H "\r\n", 400),
    BAD("GET\r\n" H "\r\n", 400),
    BAD("GET / \r\n" H "\r\n", 400),
    BAD("GET a HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET * HTTP/1.1\r\n" H "\r\n", 400),
    BAD("POST * HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET http:// HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET http:///x HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET ftp://a/ HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET //a HTTP/1.1x\r\n" H "\r\n", 400),
    BAD("GET /a#b HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET /a\x7f HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET /\x80 HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET /a\x00b HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET /a\tb HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET /a b HTTP/1.1\r\n" H "\r\n", 400),
    BAD("GET /\r HTTP/1.1\r\n" H "\r\n", 400),
    BAD("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", 400),
    BAD("\nGET / HTTP/1.1\r\n" H "\r\n", 400),
    BAD("\r\rGET / HTTP/1.1\r\n" H "\r\n", 400),
    BAD("\r\n\nGET / HTTP/1.1\r\n" H "\r\n", 400),

    /* header lines */
    BAD("GET / HTTP/1.1\r\n" H "\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "\r\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H " Folded: x\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X: a\r\n b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X: a\r\n\tb\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X-A : b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X-A\t: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H ": novalue\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X A: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X-A\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "(X): b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X-\xff"
        "A: b\r\n\r\n",
        400),
    BAD("GET / HTTP/1.1\r\n" H "X-\x01"
        "A: b\r\n\r\n",
        400),
    BAD("GET / HTTP/1.1\r\n" H "X-A\x00: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "H\xc3\xa9: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X/Y: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X{Y}: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X-A: a\x00"
        "b\r\n\r\n",
        400),
    BAD("GET / HTTP/1.1\r\n" H "X-A: a\rb\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X-A: a\nb\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X-A: a\x01"
        "b\r\n\r\n",
        400),
    BAD("GET / HTTP/1.1\r\n" H "X-A: a\x7f"
        "b\r\n\r\n",
        400),
    BAD("GET / HTTP/1.1\r\n" H "X-A: a\x1b"
        "b\r\n\r\n",
        400),
    BAD("GET / HTTP/1.1\r\n" H "X-A: a\x0b"
        "b\r\n\r\n",
        400),
    BAD("GET / HTTP/1.1\r\n" H "X-A: b\r\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "X: y\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "Host: b\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "host: a\r\n\r\n", 400),
    BAD("GET / HTTP/1.1\r\n" H "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\n"
        "I: 9\r\nJ: 10\r\nK: 11\r\nL: 12\r\nM: 13\r\nN: 14\r\nO: 15\r\nP: 16\r\n\r\n",
        431),

    /* Content-Length */
    BAD(POST_HDR("Content-Length: abc"), 400),
    BAD(POST_HDR("Content-Length: -1"), 400),
    BAD(POST_HDR("Content-Length: +2"), 400),
    BAD(POST_HDR("Content-Length: 0x10"), 400),
    BAD(POST_HDR("Content-Length: 1e3"), 400),
    BAD(POST_HDR("Content-Length: 1.0"), 400),
    BAD(POST_HDR("Content-Length:"), 400),
    BAD(POST_HDR("Content-Length:  \t "), 400),
    BAD(POST_HDR("Content-Length: 99999999999999999999999"), 400),
    BAD(POST_HDR("Content-Length: 0000000000000000001"), 400),
    BAD(POST_HDR("Content-Length: 2 2"), 400),
    BAD(POST_HDR("Content-Length: 2, 2"), 400),
    BAD(POST_HDR("Content-Length: \t2x"), 400),
    BAD(POST_HDR("Content-Length: 2\r\nContent-Length: 2"), 400),
    BAD(POST_HDR("Content-Length: 2\r\nContent-Length: 3"), 400),
    BAD(POST_HDR("Content-Length: 2\r\ncontent-length: 2"), 400),
    BAD(POST_HDR("Content-Length: 1001"), 413),
    BAD(POST_HDR("Content-Length: 999999999999999999"), 413),

    /* Transfer-Encoding */
    BAD(POST_HDR("Transfer-Encoding: gzip"), 400),
    BAD(POST_HDR("Transfer-Encoding: chunked, gzip"), 400),
    BAD(POST_HDR("Transfer-Encoding: gzip, chunked"), 400),
    BAD(POST_HDR("Transfer-Encoding: chunked, chunked"), 400),
    BAD(POST_HDR("Transfer-Encoding: identity"), 400),
    BAD(POST_HDR("Transfer-Encoding: chunkedx"), 400),
    BAD(POST_HDR("Transfer-Encoding: chunked;x=1"), 400),
    BAD(POST_HDR("Transfer-Encoding: x-chunked"), 400),
    BAD(POST_HDR("Transfer-Encoding:"), 400),
    BAD(POST_HDR("Transfer-Encoding: chunked\x00"), 400),
    BAD(POST_HDR("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"), 400),
    BAD(POST_HDR("Transfer-Encoding: chunked\r\nContent-Length: 5"), 400),
    BAD(POST_HDR("Content-Length: 5\r\nTransfer-Encoding: chunked"), 400),
    BAD(POST_HDR("Content-Length: 5000\r\nTransfer-Encoding: chunked"), 400),
    BAD("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),

    /* Expect, Content-Encoding */
    BAD(POST_HDR("Content-Length: 5\r\nExpect: 200-ok"), 417),
    BAD(POST_HDR("Content-Length: 5\r\nExpect: 100-continue, x"), 417),
    BAD(POST_HDR("Content-Length: 5000\r\nExpect: 100-continue"), 413),
    BAD(POST_HDR("Content-Length: 5\r\nContent-Encoding: br"), 415),
    BAD(POST_HDR("Content-Length: 5\r\nContent-Encoding: gzip, deflate"), 415),
    BAD(POST_HDR("Content-Length: 5\r\nContent-Encoding: compress"), 415),
    BAD(POST_HDR("Content-Length: 5\r\nContent-Encoding:"), 415),
    BAD(POST_HDR("Content-Length: 5\r\nContent-Encoding: gzip\r\nContent-Encoding: gzip"), 415),
};

static int parse_at_end(const char *in, size_t len, const struct http_parse_limits *lim,
                        struct http_head *h, struct http_header *hd, enum http_perr *e)
{
    char *buf = malloc(len ? len : 1);
    memcpy(buf, in, len);
    int r = http_parse_request(buf, len, lim, h, hd, 64, e);
    free(buf);
    return r;
}

static void check_one(const char *in, size_t len, int want, const struct http_parse_limits *lim,
                      size_t idx)
{
    struct http_head h;
    struct http_header hd[64];
    enum http_perr e;
    int r = parse_at_end(in, len, lim, &h, hd, &e);
    if (want == 0 && r != (int)len)
        TEST_FAIL_("case %zu: want %zu bytes, got %d (%s)", idx, len, r, http_perr_message(e));
    if (want != 0 && (r != -1 || http_perr_status(e) != want))
        TEST_FAIL_("case %zu: want status %d, got r=%d status %d (%s)", idx, want, r,
                   r == -1 ? http_perr_status(e) : 0, r == -1 ? http_perr_message(e) : "");
    /* Every prefix: incomplete, or already the same error. */
    for (size_t i = 0; i < len; i++) {
        r = parse_at_end(in, i, lim, &h, hd, &e);
        if (r == -2) continue;
        if (r == -1 && want != 0 && http_perr_status(e) == want) continue;
        TEST_FAIL_("case %zu prefix %zu: got %d (%s)", idx, i, r,
                   r == -1 ? http_perr_message(e) : "");
    }
}

TEST(table)
{
    size_t bad = 0;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(cases); i++) {
        check_one(cases[i].in, cases[i].len, cases[i].status, &LIM, i);
        bad += cases[i].status != 0;
    }
    ASSERT_TRUE(bad >= 100);
}

TEST(fields)
{
    static const char req[] = "\r\nPOST /p/a%20th?x=1&y=%41 HTTP/1.1\r\nHost: ex.com \r\n"
                              "Content-Length: 12\r\nConnection: close\r\nX-Mixed:  a b\t\r\n"
                              "Expect: 100-continue\r\nContent-Encoding: gzip\r\n\r\nBODY";
    struct http_head h;
    struct http_header hd[64];
    enum http_perr e;
    char *buf = malloc(sizeof req - 1);
    memcpy(buf, req, sizeof req - 1);
    int r = http_parse_request(buf, sizeof req - 1, &LIM, &h, hd, 64, &e);
    ASSERT_EQ(r, sizeof req - 1 - 4);
    ASSERT_EQ(h.method_id, HTTP_POST);
    ASSERT_TRUE(h.method_len == 4 && memcmp(h.method, "POST", 4) == 0);
    ASSERT_TRUE(h.path_len == 9 && memcmp(h.path, "/p/a%20th", 9) == 0);
    ASSERT_TRUE(h.query_len == 9 && memcmp(h.query, "x=1&y=%41", 9) == 0);
    ASSERT_EQ(h.version_minor, 1);
    ASSERT_EQ(h.headers_count, 6);
    ASSERT_EQ(h.content_length, 12);
    ASSERT_TRUE(!h.chunked && !h.keep_alive && h.expect_continue);
    ASSERT_EQ(h.content_coding, HTTP_CODING_GZIP);
    const struct http_header *x = http_header_find(hd, h.headers_count, "x-mixed");
    ASSERT_TRUE(x && x->value_len == 3 && memcmp(x->value, "a b", 3) == 0);
    x = http_header_find(hd, h.headers_count, "HOST");
    ASSERT_TRUE(x && x->value_len == 6 && memcmp(x->value, "ex.com", 6) == 0);
    ASSERT_TRUE(http_header_find(hd, h.headers_count, "hos") == NULL);
    free(buf);

    static const char r10[] = "GET http://h.example HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
    r = parse_at_end(r10, sizeof r10 - 1, &LIM, &h, hd, &e);
    ASSERT_EQ(r, sizeof r10 - 1);
    ASSERT_TRUE(h.keep_alive && h.version_minor == 0 && h.path_len == 0 && !h.query);
    ASSERT_EQ(h.content_length, -1);
    static const char r10c[] = "GET / HTTP/1.0\r\n\r\n";
    r = parse_at_end(r10c, sizeof r10c - 1, &LIM, &h, hd, &e);
    ASSERT_TRUE(r > 0 && !h.keep_alive);
    static const char ch[] = "PUT /x? HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
    r = parse_at_end(ch, sizeof ch - 1, &LIM, &h, hd, &e);
    ASSERT_TRUE(r > 0 && h.chunked && h.keep_alive && h.query && h.query_len == 0);
    ASSERT_EQ(h.method_id, HTTP_PUT);
}

TEST(pipelined_heads)
{
    static const char two[] =
        "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    struct http_head h;
    struct http_header hd[64];
    enum http_perr e;
    char *buf = malloc(sizeof two - 1);
    memcpy(buf, two, sizeof two - 1);
    int r = http_parse_request(buf, sizeof two - 1, &LIM, &h, hd, 64, &e);
    ASSERT_EQ(r, (sizeof two - 1) / 2);
    ASSERT_TRUE(h.path_len == 2 && h.path[1] == '1');
    free(buf);
}

static char *repeat(const char *prefix, char c, size_t n, const char *suffix, size_t *len)
{
    size_t pl = strlen(prefix), sl = strlen(suffix);
    char *s = malloc(pl + n + sl + 1);
    memcpy(s, prefix, pl);
    memset(s + pl, c, n);
    memcpy(s + pl + n, suffix, sl + 1);
    *len = pl + n + sl;
    return s;
}

TEST(limits)
{
    size_t len;
    /* Head exactly at the limit passes; one byte more is 431. */
    char *s = repeat("GET / HTTP/1.1\r\nHost: a\r\nX: ", 'v', 0, "\r\n\r\n", &len);
    size_t fill = LIM.header_bytes_max - len;
    free(s);
    s = repeat("GET / HTTP/1.1\r\nHost: a\r\nX: ", 'v', fill, "\r\n\r\n", &len);
    ASSERT_EQ(len, LIM.header_bytes_max);
    check_one(s, len, 0, &LIM, 1000);
    free(s);
    s = repeat("GET / HTTP/1.1\r\nHost: a\r\nX: ", 'v', fill + 1, "\r\n\r\n", &len);
    check_one(s, len, 431, &LIM, 1001);
    free(s);
    /* Incomplete head reaching the limit is 431 at once. */
    s = repeat("GET / HTTP/1.1\r\nHost: a\r\nX: ", 'v', 5000, "", &len);
    check_one(s, len, 431, &LIM, 1002);
    free(s);
    /* Target: 256 ok, 257 is 414 (before the line ends). */
    s = repeat("GET /", 'a', 255, " HTTP/1.1\r\nHost: a\r\n\r\n", &len);
    check_one(s, len, 0, &LIM, 1003);
    free(s);
    s = repeat("GET /", 'a', 256, " HTTP/1.1\r\nHost: a\r\n\r\n", &len);
    check_one(s, len, 414, &LIM, 1004);
    free(s);
    s = repeat("GET /", 'a', 5000, "", &len);
    check_one(s, len, 414, &LIM, 1005);
    free(s);
    /* A smaller headers array than the limit caps the count too. */
    static const char three[] = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    struct http_head h;
    struct http_header hd[2];
    enum http_perr e;
    ASSERT_EQ(http_parse_request(three, sizeof three - 1, &LIM, &h, hd, 2, &e), -1);
    ASSERT_EQ(http_perr_status(e), 431);
}

TEST(messages)
{
    for (int e = 1; e < HTTP_PERR_COUNT; e++) {
        int st = http_perr_status((enum http_perr)e);
        ASSERT_TRUE(st >= 400 && st <= 505);
        const char *m = http_perr_message((enum http_perr)e);
        ASSERT_TRUE(m && *m && !strchr(m, '"') && !strchr(m, '\\'));
    }
    ASSERT_STREQ(http_method_name(HTTP_OPTIONS), "OPTIONS");
}

/* ---- chunked ---- */

struct ccase {
    const char *in;
    size_t len;
    int status;      /* 0: valid */
    const char *out; /* decoded body when valid */
    size_t rest;     /* bytes after the body that must not be consumed */
};
#define COK(s, o)                                                                                  \
    {                                                                                              \
        s, sizeof(s) - 1, 0, o, 0                                                                  \
    }
#define COKR(s, o, r)                                                                              \
    {                                                                                              \
        s, sizeof(s) - 1, 0, o, r                                                                  \
    }
#define CBAD(s, st)                                                                                \
    {                                                                                              \
        s, sizeof(s) - 1, st, NULL, 0                                                              \
    }

static const struct ccase ccases[] = {
    COK("5\r\nhello\r\n0\r\n\r\n", "hello"),
    COK("0\r\n\r\n", ""),
    COK("000\r\n\r\n", ""),
    COK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
    COK("A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", "0123456789abcdefghij"),
    COK("5;ext=1\r\nhello\r\n0;last\r\n\r\n", "hello"),
    COK("5 ;ext=\"q; x\"\r\nhello\r\n0\r\n\r\n", "hello"),
    COK("5\t; a\r\nhello\r\n0\r\n\r\n", "hello"),
    COK("5\r\nhello\r\n0\r\nX-Trailer: v\r\nY: \r\n\r\n", "hello"),
    COK("2\r\n\r\n\r\n0\r\n\r\n", "\r\n"),
    COKR("1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n", "x", 16),
    COK("00000000000003e8\r\n", NULL), /* 1000 = max: incomplete but valid so far */
    CBAD("zz\r\nabc\r\n0\r\n\r\n", 400),
    CBAD("fffffffffffffffff\r\n", 400),
    CBAD("00000000000000001\r\n", 400),
    CBAD("3e9\r\n", 413),
    CBAD("ffffffffffffffff\r\n", 413),
    CBAD("-1\r\n\r\n", 400),
    CBAD("3\r\nabcX0\r\n\r\n", 400),
    CBAD("3\r\nabc\rX", 400),
    CBAD("3\nabc\n0\n\n", 400),
    CBAD("3\r\nabc\n", 400),
    CBAD("0x3\r\nabc\r\n0\r\n\r\n", 400),
    CBAD(" 3\r\nabc\r\n0\r\n\r\n", 400),
    CBAD("3 \r\nabc\r\n0\r\n\r\n", 400),
    CBAD("3 x\r\nabc\r\n0\r\n\r\n", 400),
    CBAD(";x\r\nabc\r\n0\r\n\r\n", 400),
    CBAD("\r\n", 400),
    CBAD("3;\x01\r\nabc\r\n0\r\n\r\n", 400),
    CBAD("3;a\nabc\r\n0\r\n\r\n", 400),
    CBAD("3\r\nabc\r\n0\r\nBad Trailer: x\r\n\r\n", 400),
    CBAD("3\r\nabc\r\n0\r\n Folded: x\r\n\r\n", 400),
    CBAD("3\r\nabc\r\n0\r\nX: a\x00\r\n\r\n", 400),
    CBAD("3\r\nabc\r\n0\r\nX: a\n\r\n", 400),
    CBAD("3\r\nabc\r\n0\r\n\rX", 400),
    CBAD("3\r\nabc\r\n0\r\n:x\r\n\r\n", 400),
};

/* Decodes in fully; returns 0 (done, *out malloc'd) or the error status, or 1 if incomplete. */
static int chunked_run(const char *in, size_t len, size_t step, char **out, size_t *out_len,
                       size_t *used)
{
    struct http_chunked d;
    http_chunked_init(&d, 1000);
    char *acc = malloc(len + 1);
    size_t n = 0, pos = 0;
    while (pos < len && !http_chunked_done(&d)) {
        size_t avail = len - pos < step ? len - pos : step;
        char *piece = malloc(avail);
        memcpy(piece, in + pos, avail);
        size_t off = 0;
        while (off < avail && !http_chunked_done(&d)) {
            const char *data;
            size_t dl;
            ssize_t r = http_parse_chunked(&d, piece + off, avail - off, &data, &dl);
            if (r < 0) {
                free(piece);
                free(acc);
                return http_perr_status(d.err);
            }
            if (dl) {
                ASSERT_TRUE(data >= piece + off && data + dl <= piece + avail);
                memcpy(acc + n, data, dl);
                n += dl;
            }
            off += (size_t)r;
        }
        free(piece);
        pos += off;
    }
    *used = pos;
    if (!http_chunked_done(&d)) {
        free(acc);
        return 1;
    }
    *out = acc;
    *out_len = n;
    return 0;
}

TEST(chunked_table)
{
    for (size_t i = 0; i < TALLY_ARRAY_LEN(ccases); i++) {
        const struct ccase *c = &ccases[i];
        size_t steps[] = {1, 2, 3, c->len};
        for (size_t si = 0; si < 4; si++) {
            size_t step = steps[si];
            char *out = NULL;
            size_t out_len = 0, used = 0;
            int r = chunked_run(c->in, c->len, step, &out, &out_len, &used);
            if (c->status == 0 && c->out == NULL) {
                if (r != 1)
                    TEST_FAIL_("chunk case %zu step %zu: want incomplete, got %d", i, step, r);
                continue;
            }
            if (c->status != 0) {
                if (r != c->status)
                    TEST_FAIL_("chunk case %zu step %zu: want %d got %d", i, step, c->status, r);
                continue;
            }
            if (r != 0) TEST_FAIL_("chunk case %zu step %zu: got %d", i, step, r);
            size_t want_len = strlen(c->out);
            if (out_len != want_len || memcmp(out, c->out, want_len) != 0)
                TEST_FAIL_("chunk case %zu step %zu: wrong body", i, step);
            if (used != c->len - c->rest) TEST_FAIL_("chunk case %zu: consumed %zu", i, used);
            free(out);
        }
    }
}

TEST(chunked_limits)
{
    /* Decoded total over the limit across several chunks is 413 at the size line. */
    char big[2200];
    size_t n = 0;
    for (int k = 0; k < 3; k++) {
        n += (size_t)snprintf(big + n, sizeof big - n, "190\r\n");
        memset(big + n, 'x', 400);
        n += 400;
        n += (size_t)snprintf(big + n, sizeof big - n, "\r\n");
    }
    char *out;
    size_t out_len, used;
    ASSERT_EQ(chunked_run(big, n, n, &out, &out_len, &used), 413);
    /* Extensions beyond HTTP_CHUNK_EXT_BYTES_MAX in total. */
    size_t len;
    char *s = repeat("1;", 'e', HTTP_CHUNK_EXT_BYTES_MAX + 10, "\r\nx\r\n0\r\n\r\n", &len);
    ASSERT_EQ(chunked_run(s, len, len, &out, &out_len, &used), 400);
    free(s);
    s = repeat("1\r\nx\r\n0\r\nX: ", 'v', HTTP_TRAILER_BYTES_MAX, "\r\n\r\n", &len);
    ASSERT_EQ(chunked_run(s, len, 7, &out, &out_len, &used), 431);
    free(s);
}

/* ---- url ---- */

TEST(url_decode)
{
    char out[64];
    size_t n;
    ASSERT_EQ(http_url_decode("a%20b+c%2Fd%e9", 14, out, sizeof out, &n, true), 0);
    ASSERT_EQ(n, 8);
    ASSERT_MEMEQ(out, "a b c/d\xe9", 8);
    ASSERT_EQ(http_url_decode("a+b", 3, out, sizeof out, &n, false), 0);
    ASSERT_STREQ(out, "a+b");
    ASSERT_EQ(http_url_decode("%", 1, out, sizeof out, &n, true), TALLY_EINVAL);
    ASSERT_EQ(http_url_decode("%4", 2, out, sizeof out, &n, true), TALLY_EINVAL);
    ASSERT_EQ(http_url_decode("%zz", 3, out, sizeof out, &n, true), TALLY_EINVAL);
    ASSERT_EQ(http_url_decode("abcd", 4, out, 4, &n, true), TALLY_ETOOBIG);
    ASSERT_EQ(http_url_decode("abc", 3, out, 4, &n, true), 0);
    ASSERT_EQ(http_url_decode("%00", 3, out, 4, &n, true), 0);
    ASSERT_EQ(n, 1);
    char inplace[] = "x%41y";
    ASSERT_EQ(http_url_decode(inplace, 5, inplace, sizeof inplace, &n, true), 0);
    ASSERT_STREQ(inplace, "xAy");
}

TEST(url_param)
{
    static const char q[] =
        "site=ex.com&url=https%3A%2F%2Fa.b%2Fc%3Fd&flag&e=&sp=a+b&%73ite2=z&x=%";
    char out[64];
    size_t n;
    size_t ql = sizeof q - 1;
    ASSERT_EQ(http_url_param(q, ql, "site", out, sizeof out, &n), 0);
    ASSERT_STREQ(out, "ex.com");
    ASSERT_EQ(http_url_param(q, ql, "url", out, sizeof out, &n), 0);
    ASSERT_STREQ(out, "https://a.b/c?d");
    ASSERT_EQ(http_url_param(q, ql, "flag", out, sizeof out, &n), 0);
    ASSERT_EQ(n, 0);
    ASSERT_EQ(http_url_param(q, ql, "e", out, sizeof out, &n), 0);
    ASSERT_STREQ(out, "");
    ASSERT_EQ(http_url_param(q, ql, "sp", out, sizeof out, &n), 0);
    ASSERT_STREQ(out, "a b");
    ASSERT_EQ(http_url_param(q, ql, "site2", out, sizeof out, &n), 0);
    ASSERT_STREQ(out, "z");
    ASSERT_EQ(http_url_param(q, ql, "x", out, sizeof out, &n), TALLY_EINVAL);
    ASSERT_EQ(http_url_param(q, ql, "sit", out, sizeof out, &n), TALLY_ENOENT);
    ASSERT_EQ(http_url_param(q, ql, "url", out, 5, &n), TALLY_ETOOBIG);
    ASSERT_EQ(http_url_param(NULL, 0, "a", out, sizeof out, &n), TALLY_ENOENT);
}

/* ---- inflate ---- */

static size_t compress_with(const void *in, size_t len, int window_bits, unsigned char *out,
                            size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    deflateInit2(&z, 9, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    deflate(&z, Z_FINISH);
    size_t n = cap - z.avail_out;
    deflateEnd(&z);
    return n;
}

TEST(inflate_bodies)
{
    struct http_inflate *inf = http_inflate_new();
    static const char text[] = "{\"site\": \"example.com\", \"url\": \"https://example.com/\"}";
    unsigned char buf[4096];
    char *out;
    size_t out_len;
    int wbits[] = {15 + 16, 15, -15};
    enum http_coding codings[] = {HTTP_CODING_GZIP, HTTP_CODING_DEFLATE, HTTP_CODING_DEFLATE};
    for (int i = 0; i < 3; i++) {
        size_t n = compress_with(text, sizeof text - 1, wbits[i], buf, sizeof buf);
        ASSERT_EQ(http_inflate_body(inf, codings[i], buf, n, 1000, &out, &out_len), 0);
        ASSERT_EQ(out_len, sizeof text - 1);
        ASSERT_STREQ(out, text);
        free(out);
        /* Truncated and trailing garbage. */
        ASSERT_EQ(http_inflate_body(inf, codings[i], buf, n - 3, 1000, &out, &out_len),
                  TALLY_ECORRUPT);
        buf[n] = 'x';
        ASSERT_EQ(http_inflate_body(inf, codings[i], buf, n + 1, 1000, &out, &out_len),
                  TALLY_ECORRUPT);
        /* Output limit one byte short. */
        ASSERT_EQ(http_inflate_body(inf, codings[i], buf, n, sizeof text - 2, &out, &out_len),
                  TALLY_ETOOBIG);
        ASSERT_EQ(http_inflate_body(inf, codings[i], buf, n, sizeof text - 1, &out, &out_len), 0);
        free(out);
    }
    /* Two gzip members concatenated. */
    size_t n1 = compress_with("abc", 3, 31, buf, sizeof buf);
    size_t n2 = compress_with("def", 3, 31, buf + n1, sizeof buf - n1);
    ASSERT_EQ(http_inflate_body(inf, HTTP_CODING_GZIP, buf, n1 + n2, 100, &out, &out_len), 0);
    ASSERT_STREQ(out, "abcdef");
    free(out);
    /* A bomb: 10 MB of zeros, capped at 1 MB. */
    size_t bomb_len = 10u << 20;
    char *zeros = calloc(1, bomb_len);
    unsigned char *bomb = malloc(64 << 10);
    size_t bn = compress_with(zeros, bomb_len, 31, bomb, 64 << 10);
    ASSERT_TRUE(bn < (64 << 10));
    ASSERT_EQ(http_inflate_body(inf, HTTP_CODING_GZIP, bomb, bn, 1 << 20, &out, &out_len),
              TALLY_ETOOBIG);
    free(zeros);
    free(bomb);
    static const unsigned char junk[] = "\x1f\x8b\x08\x00garbage";
    ASSERT_EQ(http_inflate_body(inf, HTTP_CODING_GZIP, junk, sizeof junk - 1, 100, &out, &out_len),
              TALLY_ECORRUPT);
    ASSERT_EQ(http_inflate_body(inf, HTTP_CODING_IDENTITY, junk, 3, 100, &out, &out_len),
              TALLY_EINVAL);
    http_inflate_free(inf);
    http_inflate_free(NULL);
}

int main(void)
{
    RUN(table);
    RUN(fields);
    RUN(pipelined_heads);
    RUN(limits);
    RUN(messages);
    RUN(chunked_table);
    RUN(chunked_limits);
    RUN(url_decode);
    RUN(url_param);
    RUN(inflate_bodies);
    return test_summary();
}
