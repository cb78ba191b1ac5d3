/* The WebSocket helpers of http_ws.c: SHA-1 (RFC 3174 test vectors), the handshake's
 * Sec-WebSocket-Accept (RFC 6455 section 1.3 example) and the UTF-8 validator. */
#include "test.h"

#include <stdio.h>
#include <string.h>

#include "http/http_internal.h"

static void hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void sha1_is(const char *in, size_t repeat, const char *want)
{
    static char buf[1 << 20];
    size_t n = strlen(in), len = 0;
    for (size_t i = 0; i < repeat; i++, len += n)
        memcpy(buf + len, in, n);
    uint8_t d[20];
    char h[41];
    http_sha1(buf, len, d);
    hex(d, 20, h);
    ASSERT_STREQ(h, want);
}

TEST(sha1_rfc3174_vectors)
{
    sha1_is("abc", 1, "a9993e364706816aba3e25717850c26c9cd0d89d");
    sha1_is("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1,
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    sha1_is("a", 1000000, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    sha1_is("0123456701234567012345670123456701234567012345670123456701234567", 10,
            "dea356a2cddd90c7a7ecedc5ebb563934f460452");
    sha1_is("", 1, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    /* lengths around the padding boundary */
    sha1_is("a", 55, "c1c8bbdc22796e28c0e15163d20899b65621d65a");
    sha1_is("a", 56, "c2db330f6083854c99d4b5bfb6e8f29f201be699");
    sha1_is("a", 64, "0098ba824b5c16427bd7a1122a5a442a25ec644d");
}

TEST(accept_key_rfc6455_example)
{
    char out[29];
    http_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out);
    ASSERT_STREQ(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

TEST(utf8_validation)
{
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"", true},           {"plain", true},       {"h\xc3\xa9llo", true},
        {"\xe2\x82\xac", true}, {"\xf0\x9f\x98\x80", true}, {"\xf4\x8f\xbf\xbf", true},
        {"\xc3", false},      {"\xc3\x28", false},   {"\xc0\xaf", false},
        {"\xe0\x80\xaf", false}, {"\xed\xa0\x80", false}, {"\xf4\x90\x80\x80", false},
        {"\xf5\x80\x80\x80", false}, {"\xff", false}, {"\x80", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ASSERT_EQ((int)http_utf8_valid(cases[i].s, strlen(cases[i].s)), (int)cases[i].ok);
}

int main(void)
{
    RUN(sha1_rfc3174_vectors);
    RUN(accept_key_rfc6455_example);
    RUN(utf8_validation);
    return test_summary();
}
