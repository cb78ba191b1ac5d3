/*
 * Fuzz target: the request-head parser, the chunked decoder and the query helpers.
 *
 * Input layout: byte 0 picks limits and the feeding step; the rest is the wire bytes. Checks:
 *  - no crash, no over-read (the input is copied into an exact-size heap buffer);
 *  - every pointer the parser returns lies inside the buffer, lengths are consistent;
 *  - incremental consistency: a head parsed from the whole input parses to the same length
 *    from exactly its own bytes, and every shorter prefix is -2 or the same error;
 *  - the chunked decoder gives the same body and the same verdict whatever the feeding step.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_parser.h"
#include "http/http_url.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static int parse(const uint8_t *data, size_t len, const struct http_parse_limits *lim,
                 struct http_head *h, struct http_header *hd, enum http_perr *e, char **keep)
{
    char *buf = malloc(len ? len : 1);
    memcpy(buf, data, len);
    int r = http_parse_request(buf, len, lim, h, hd, 64, e);
    if (keep)
        *keep = buf;
    else
        free(buf);
    return r;
}

static int inside(const char *p, size_t n, const char *buf, size_t len)
{
    return p >= buf && p + n <= buf + len;
}

/* Decodes body with pieces of `step` bytes; returns -1 error (status in *st), 0 done, 1 more. */
static int dechunk(const uint8_t *body, size_t len, size_t step, uint64_t max, char *out,
                   size_t *out_len, int *st, size_t *used)
{
    struct http_chunked d;
    http_chunked_init(&d, max);
    size_t pos = 0;
    *out_len = 0;
    while (pos < len && !http_chunked_done(&d)) {
        size_t n = len - pos < step ? len - pos : step;
        char *piece = malloc(n);
        memcpy(piece, body + pos, n);
        size_t off = 0;
        while (off < n && !http_chunked_done(&d)) {
            const char *data;
            size_t dl;
            ssize_t r = http_parse_chunked(&d, piece + off, n - off, &data, &dl);
            if (r < 0) {
                *st = http_perr_status(d.err);
                free(piece);
                return -1;
            }
            CHECK((size_t)r <= n - off);
            CHECK(dl == 0 || (data >= piece + off && data + dl <= piece + n));
            CHECK(*out_len + dl <= max);
            if (dl) memcpy(out + *out_len, data, dl);
            *out_len += dl;
            off += (size_t)r;
            if (r == 0) break;
        }
        free(piece);
        pos += off;
        if (off < n && !http_chunked_done(&d)) CHECK(0); /* stalled without an error */
    }
    *used = pos;
    return http_chunked_done(&d) ? 0 : 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    struct http_parse_limits lim = {
        .header_bytes_max = (mode & 1) ? 256 : 8192,
        .url_bytes_max = (mode & 2) ? 32 : 4096,
        .header_count_max = (mode & 4) ? 4 : 64,
        .body_bytes_max = (mode & 8) ? 16 : 100000,
    };
    struct http_head h;
    struct http_header hd[64];
    enum http_perr e;
    char *buf;
    int r = parse(data, size, &lim, &h, hd, &e, &buf);
    CHECK(r == -2 || r == -1 || (r > 0 && (size_t)r <= size));
    if (r == -1) CHECK(e != HTTP_PERR_NONE && http_perr_status(e) >= 400);
    if (r > 0) {
        CHECK((size_t)r <= lim.header_bytes_max);
        CHECK(inside(h.method, h.method_len, buf, (size_t)r));
        CHECK(inside(h.target, h.target_len, buf, (size_t)r));
        CHECK(h.target_len <= lim.url_bytes_max);
        CHECK(inside(h.path, h.path_len, h.target, h.target_len));
        CHECK(!h.query || inside(h.query, h.query_len, h.target, h.target_len));
        CHECK(h.headers_count <= lim.header_count_max);
        CHECK(h.version_minor == 0 || h.version_minor == 1);
        CHECK(!(h.chunked && h.content_length >= 0));
        CHECK(h.content_length < 0 || (uint64_t)h.content_length <= lim.body_bytes_max);
        for (size_t i = 0; i < h.headers_count; i++) {
            CHECK(hd[i].name_len > 0 && inside(hd[i].name, hd[i].name_len, buf, (size_t)r));
            CHECK(inside(hd[i].value, hd[i].value_len, buf, (size_t)r));
        }
        if (h.query) {
            char out[256];
            size_t n;
            http_url_param(h.query, h.query_len, "a", out, sizeof out, &n);
        }
        char dec[4096];
        size_t dn;
        if (h.path_len < sizeof dec) http_url_decode(h.path, h.path_len, dec, sizeof dec, &dn, 0);
    }
    free(buf);

    /* Incremental consistency. */
    size_t upto = r > 0 ? (size_t)r : size;
    size_t stride = upto > 512 ? upto / 256 : 1;
    for (size_t i = 0; i < upto; i += stride) {
        struct http_head h2;
        enum http_perr e2;
        int r2 = parse(data, i, &lim, &h2, hd, &e2, NULL);
        CHECK(r2 == -2 || (r2 == -1 && r == -1 && http_perr_status(e2) == http_perr_status(e)));
    }
    if (r > 0) {
        struct http_head h2;
        enum http_perr e2;
        CHECK(parse(data, (size_t)r, &lim, &h2, hd, &e2, NULL) == r);
    }

    /* Chunked decoding of what follows the head (or of everything). */
    const uint8_t *body = r > 0 ? data + r : data;
    size_t blen = r > 0 ? size - (size_t)r : size;
    char *o1 = malloc(lim.body_bytes_max + 1), *o2 = malloc(lim.body_bytes_max + 1);
    size_t n1, n2, u1, u2;
    int s1 = 0, s2 = 0;
    size_t step = (size_t)(mode >> 4) + 1;
    int v1 = dechunk(body, blen, blen ? blen : 1, lim.body_bytes_max, o1, &n1, &s1, &u1);
    int v2 = dechunk(body, blen, step, lim.body_bytes_max, o2, &n2, &s2, &u2);
    CHECK(v1 == v2);
    if (v1 == -1) CHECK(s1 == s2);
    if (v1 == 0) CHECK(n1 == n2 && memcmp(o1, o2, n1) == 0 && u1 == u2);
    free(o1);
    free(o2);
    return 0;
}
