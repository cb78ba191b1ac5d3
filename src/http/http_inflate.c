/* http_inflate: see http_inflate.h. */
#include "http/http_inflate.h"

#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <zlib.h>

#include "tally/error.h"

#define OUT_BYTES_INITIAL 4096

struct http_inflate {
    z_stream z;
    bool ready;
};

struct http_inflate *http_inflate_new(void)
{
    return calloc(1, sizeof(struct http_inflate));
}

void http_inflate_free(struct http_inflate *inf)
{
    if (!inf) return;
    if (inf->ready) inflateEnd(&inf->z);
    free(inf);
}

/* RFC 1950 header: CM = 8 (deflate), window <= 32 KiB, check bits make a multiple of 31. */
static bool zlib_header(const unsigned char *p, size_t n)
{
    return n >= 2 && (p[0] & 0x0f) == 8 && (p[0] >> 4) <= 7 && ((p[0] << 8) | p[1]) % 31 == 0;
}

static int reset(struct http_inflate *inf, int window_bits)
{
    if (!inf->ready) {
        if (inflateInit2(&inf->z, window_bits) != Z_OK) return TALLY_ENOMEM;
        inf->ready = true;
        return TALLY_OK;
    }
    return inflateReset2(&inf->z, window_bits) == Z_OK ? TALLY_OK : TALLY_ENOMEM;
}

int http_inflate_body(struct http_inflate *inf, enum http_coding coding, const void *in,
                      size_t in_len, size_t out_bytes_max, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (coding != HTTP_CODING_GZIP && coding != HTTP_CODING_DEFLATE) return TALLY_EINVAL;
    if (in_len > UINT_MAX || out_bytes_max >= UINT_MAX) return TALLY_ETOOBIG;
    int wbits = coding == HTTP_CODING_GZIP ? 15 + 16 : zlib_header(in, in_len) ? 15 : -15;
    int rc = reset(inf, wbits);
    if (rc != TALLY_OK) return rc;

    /* The buffer may grow to out_bytes_max + 1: producing that extra byte proves the limit. */
    size_t cap = in_len * 4 + 64;
    if (cap < OUT_BYTES_INITIAL) cap = OUT_BYTES_INITIAL;
    if (cap > out_bytes_max + 1) cap = out_bytes_max + 1;
    char *buf = malloc(cap + 1);
    if (!buf) return TALLY_ENOMEM;
    size_t len = 0;
    z_stream *z = &inf->z;
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)in_len;
    rc = TALLY_OK;
    while (in_len > 0) {
        if (len == cap) {
            if (cap > out_bytes_max) {
                rc = TALLY_ETOOBIG;
                break;
            }
            size_t ncap = cap * 2 > out_bytes_max + 1 ? out_bytes_max + 1 : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                rc = TALLY_ENOMEM;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        z->next_out = (Bytef *)buf + len;
        z->avail_out = (uInt)(cap - len);
        int zr = inflate(z, Z_NO_FLUSH);
        len = cap - z->avail_out;
        if (zr == Z_STREAM_END) {
            if (z->avail_in == 0) break;
            /* Another gzip member may follow; anything else is trailing garbage. */
            if (coding != HTTP_CODING_GZIP || inflateReset(z) != Z_OK) {
                rc = TALLY_ECORRUPT;
                break;
            }
            continue;
        }
        if (zr == Z_MEM_ERROR) {
            rc = TALLY_ENOMEM;
            break;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            rc = TALLY_ECORRUPT;
            break;
        }
        if (z->avail_out > 0 && z->avail_in == 0) { /* input ended inside the stream */
            rc = TALLY_ECORRUPT;
            break;
        }
    }
    if (rc == TALLY_OK && len > out_bytes_max) rc = TALLY_ETOOBIG;
    if (rc != TALLY_OK) {
        free(buf);
        return rc;
    }
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return TALLY_OK;
}
