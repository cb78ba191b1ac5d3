/*
 * codec: varints and a growable byte buffer for the store's binary values (raw blocks, rollup
 * cells, visit records). varint = unsigned LEB128 (at most 10 bytes); svarint = zigzag varint.
 * Readers never read past their end: a truncated or overlong value sets the reader's error
 * flag and returns 0 from then on. Header-only, no global state, any thread.
 */
#ifndef TALLY_STORE_CODEC_H
#define TALLY_STORE_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct cbuf {
    uint8_t *p;
    size_t len, cap;
    bool oom; /* an allocation failed: the content is incomplete */
};

static inline void cbuf_reset(struct cbuf *b)
{
    b->len = 0;
    b->oom = false;
}

static inline void cbuf_free(struct cbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static inline bool cbuf_reserve(struct cbuf *b, size_t extra)
{
    if (b->len + extra <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static inline void cbuf_put(struct cbuf *b, const void *src, size_t n)
{
    if (n == 0 || !cbuf_reserve(b, n)) return;
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static inline void cbuf_u8(struct cbuf *b, uint8_t v)
{
    if (!cbuf_reserve(b, 1)) return;
    b->p[b->len++] = v;
}

static inline void cbuf_varint(struct cbuf *b, uint64_t v)
{
    if (!cbuf_reserve(b, 10)) return;
    while (v >= 0x80) {
        b->p[b->len++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b->p[b->len++] = (uint8_t)v;
}

static inline uint64_t codec_zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline int64_t codec_unzigzag(uint64_t v)
{
    return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

static inline void cbuf_svarint(struct cbuf *b, int64_t v)
{
    cbuf_varint(b, codec_zigzag(v));
}

static inline void cbuf_le64(struct cbuf *b, uint64_t v)
{
    if (!cbuf_reserve(b, 8)) return;
    for (int i = 0; i < 8; i++) b->p[b->len++] = (uint8_t)(v >> (8 * i));
}

/* A string as varint length + bytes. */
static inline void cbuf_str(struct cbuf *b, const char *s, size_t n)
{
    cbuf_varint(b, n);
    cbuf_put(b, s, n);
}

struct creader {
    const uint8_t *p, *end;
    bool err;
};

static inline void creader_init(struct creader *r, const void *p, size_t n)
{
    r->p = p;
    r->end = r->p + n;
    r->err = false;
}

static inline bool creader_done(const struct creader *r)
{
    return r->p == r->end;
}

static inline uint8_t creader_u8(struct creader *r)
{
    if (r->err || r->p >= r->end) {
        r->err = true;
        return 0;
    }
    return *r->p++;
}

static inline uint64_t creader_varint(struct creader *r)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->err || r->p >= r->end) {
            r->err = true;
            return 0;
        }
        uint8_t c = *r->p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return v;
    }
    r->err = true;
    return 0;
}

static inline int64_t creader_svarint(struct creader *r)
{
    return codec_unzigzag(creader_varint(r));
}

static inline uint64_t creader_le64(struct creader *r)
{
    if (r->err || r->end - r->p < 8) {
        r->err = true;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)r->p[i] << (8 * i);
    r->p += 8;
    return v;
}

/* A varint-length string: pointer into the input (not NUL-terminated) and its length. */
static inline const char *creader_str(struct creader *r, uint32_t *len)
{
    uint64_t n = creader_varint(r);
    if (r->err || n > (uint64_t)(r->end - r->p)) {
        r->err = true;
        *len = 0;
        return "";
    }
    const char *s = (const char *)r->p;
    r->p += n;
    *len = (uint32_t)n;
    return s;
}

#endif
