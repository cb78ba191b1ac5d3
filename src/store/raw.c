/* raw: see raw.h for the key and block layouts and the dictionary rules. */
#include "store/raw.h"

#include <endian.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>

#include "store/codec.h"
#include "store/strtab.h"
#include "tally/error.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the projection decoder (pvarint, pskip) reads words as little-endian"
#endif

#define MASK_VISITOR 0x1u
#define MASK_FLAGS 0x2u
#define MASK_FIELD0 2
#define MASK_PROPS (1u << 21)
#define MASK_REVENUE (1u << 22)
#define BLOCK_VERSION 1
#define BLOCK_VERSION_COLUMNS 2

struct row {
    uint64_t offset;
    int64_t ts_ms, received_ms;
    uint64_t visitor;
    uint32_t site, hour;
    uint32_t flags;
    uint32_t id[DE_FIELD_COUNT];
    uint32_t props_off, props_n; /* into raw_writer.props */
    bool has_revenue;
    int64_t revenue_micros;
    uint32_t currency_id;
};

struct raw_writer {
    struct store *s;
    struct row *rows;
    size_t nrows, caprows;
    struct raw_prop *props;
    size_t nprops, capprops;
    /* dictionary cache: strtab index -> id; `pending` lists the entries assigned since the
     * last commit (not yet durable) */
    struct strtab *dict;
    uint32_t *dict_id;
    size_t dict_cap;
    uint32_t *pending;
    size_t npending, cappending;
    uint32_t *next_id;   /* per site, 0 = not loaded */
    uint8_t *site_dirty; /* per site: next_id changed since the last flush */
    struct cbuf buf;
    int block_version; /* of the blocks written: 2 (columnar); 1 for tests and tools */
    struct cbuf sec;   /* v2: one section being built */
    struct cbuf zbuf;  /* v2: its LZ4 form */
    uint64_t *colv;    /* v2: one column's values */
    size_t capcolv;
};

struct raw_writer *raw_writer_new(struct store *s)
{
    struct raw_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->s = s;
    w->block_version = 2;
    w->dict = strtab_new();
    w->next_id = calloc(STORE_SITES_MAX, sizeof *w->next_id);
    w->site_dirty = calloc(STORE_SITES_MAX, 1);
    if (!w->dict || !w->next_id || !w->site_dirty) {
        raw_writer_free(w);
        return NULL;
    }
    return w;
}

void raw_writer_free(struct raw_writer *w)
{
    if (!w) return;
    free(w->rows);
    free(w->props);
    strtab_free(w->dict);
    free(w->dict_id);
    free(w->next_id);
    free(w->site_dirty);
    free(w->pending);
    cbuf_free(&w->buf);
    cbuf_free(&w->sec);
    cbuf_free(&w->zbuf);
    free(w->colv);
    free(w);
}

size_t raw_writer_pending(const struct raw_writer *w)
{
    return w->nrows;
}

static void dict_key_s(struct cbuf *b, uint32_t site, const char *str, uint32_t len)
{
    uint8_t h[5] = {'S'};
    store_put_be32(h + 1, site);
    cbuf_reset(b);
    cbuf_put(b, h, 5);
    cbuf_put(b, str, len);
}

static int load_next_id(struct raw_writer *w, uint32_t site)
{
    if (w->next_id[site]) return TALLY_OK;
    uint8_t k[5] = {'N'};
    store_put_be32(k + 1, site);
    void *v;
    size_t vl;
    int rc = store_get(w->s, STORE_CF_DICT, k, 5, &v, &vl);
    if (rc == TALLY_ENOENT) {
        w->next_id[site] = 1;
    } else if (rc) {
        return rc;
    } else {
        w->next_id[site] = vl == 4 ? store_get_be32(v) : 1;
        free(v);
        if (w->next_id[site] == 0) w->next_id[site] = 1;
    }
    return TALLY_OK;
}

/* UTF-8-safe cut of a string to at most RAW_STRING_BYTES_MAX bytes. */
static uint32_t cut_len(const char *s, uint32_t len)
{
    if (len <= RAW_STRING_BYTES_MAX) return len;
    uint32_t n = RAW_STRING_BYTES_MAX;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    return n;
}

static int dict_id(struct raw_writer *w, uint32_t site, struct devent_str str, uint32_t *out)
{
    uint32_t len = cut_len(str.ptr, str.len);
    if (len == 0) {
        *out = 0;
        return TALLY_OK;
    }
    int64_t idx = strtab_find(w->dict, site, str.ptr, len);
    if (idx >= 0) {
        *out = w->dict_id[idx];
        return TALLY_OK;
    }
    /* unknown here: the store may have it (cache cleared, or a restart) */
    int rc = load_next_id(w, site);
    if (rc) return rc;
    uint32_t id = 0;
    dict_key_s(&w->buf, site, str.ptr, len);
    if (w->buf.oom) return TALLY_ENOMEM;
    void *v;
    size_t vl;
    rc = store_get(w->s, STORE_CF_DICT, w->buf.p, w->buf.len, &v, &vl);
    if (rc == TALLY_OK) {
        id = vl == 4 ? store_get_be32(v) : 0;
        free(v);
        if (id == 0) return TALLY_ECORRUPT;
    } else if (rc != TALLY_ENOENT) {
        return rc;
    }
    bool pending = id == 0;
    if (pending) {
        id = w->next_id[site]++;
        w->site_dirty[site] = 1;
    }
    idx = strtab_intern(w->dict, site, str.ptr, len, NULL);
    if (idx < 0) return TALLY_ENOMEM;
    if ((size_t)idx >= w->dict_cap) {
        size_t cap = w->dict_cap ? w->dict_cap * 2 : 1024;
        uint32_t *p = realloc(w->dict_id, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        w->dict_id = p;
        w->dict_cap = cap;
    }
    w->dict_id[idx] = id;
    if (pending) {
        if (w->npending == w->cappending) {
            size_t cap = w->cappending ? w->cappending * 2 : 256;
            uint32_t *p = realloc(w->pending, cap * sizeof *p);
            if (!p) return TALLY_ENOMEM;
            w->pending = p;
            w->cappending = cap;
        }
        w->pending[w->npending++] = (uint32_t)idx;
    }
    *out = id;
    return TALLY_OK;
}

/* Room in w for one more row and np more props (raw_writer_add, compaction). */
static int writer_reserve(struct raw_writer *w, uint32_t np)
{
    if (w->nrows == w->caprows) {
        size_t cap = w->caprows ? w->caprows * 2 : 1024;
        struct row *p = realloc(w->rows, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        w->rows = p;
        w->caprows = cap;
    }
    if (w->nprops + np > w->capprops) {
        size_t cap = w->capprops ? w->capprops : 1024;
        while (cap < w->nprops + np) cap *= 2;
        struct raw_prop *p = realloc(w->props, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        w->props = p;
        w->capprops = cap;
    }
    return TALLY_OK;
}

int raw_writer_add(struct raw_writer *w, uint32_t site_id, const struct devent *ev,
                   uint32_t extra_flags)
{
    if (site_id == 0 || site_id >= STORE_SITES_MAX) return TALLY_EINVAL;
    uint32_t np = ev->props_count > DE_PROPS_MAX ? DE_PROPS_MAX : ev->props_count;
    int rc = writer_reserve(w, np);
    if (rc) return rc;
    struct row *r = &w->rows[w->nrows];
    memset(r, 0, sizeof *r);
    r->offset = ev->offset;
    r->ts_ms = ev->ts_ms;
    r->received_ms = ev->received_ms;
    r->visitor = ev->visitor;
    r->site = site_id;
    r->hour = (uint32_t)(ev->ts_ms / RAW_HOUR_MS);
    r->flags = extra_flags;
    if (ev->flags & DE_F_BOT) r->flags |= RAW_F_BOT;
    if (ev->flags & DE_F_HOST_NOT_ALLOWED) r->flags |= RAW_F_HOST_NOT_ALLOWED;
    if (ev->pageview) r->flags |= RAW_F_PAGEVIEW;
    if (!ev->interactive) r->flags |= RAW_F_NONINTERACTIVE;
    for (int f = 0; f < DE_FIELD_COUNT; f++)
        if ((rc = dict_id(w, site_id, ev->str[f], &r->id[f]))) return rc;
    if (np) {
        r->props_off = (uint32_t)w->nprops;
        r->props_n = np;
        for (uint32_t i = 0; i < np; i++) {
            struct raw_prop *p = &w->props[w->nprops + i];
            if ((rc = dict_id(w, site_id, ev->props[i].key, &p->key))) return rc;
            if ((rc = dict_id(w, site_id, ev->props[i].value, &p->value))) return rc;
        }
        w->nprops += np;
    }
    if (ev->has_revenue) {
        r->has_revenue = true;
        r->revenue_micros = ev->revenue_micros;
        struct devent_str cur = {ev->currency, (uint32_t)strnlen(ev->currency, 3)};
        if ((rc = dict_id(w, site_id, cur, &r->currency_id))) return rc;
    }
    w->nrows++;
    return TALLY_OK;
}

/* qsort_r: each raw consumer (one per partition in a cluster) sorts on its own thread */
static int row_cmp(const void *a, const void *b, void *arg)
{
    const struct row *rows = arg;
    const struct row *x = &rows[*(const uint32_t *)a], *y = &rows[*(const uint32_t *)b];
    if (x->site != y->site) return x->site < y->site ? -1 : 1;
    if (x->hour != y->hour) return x->hour < y->hour ? -1 : 1;
    if (x->visitor != y->visitor) return x->visitor < y->visitor ? -1 : 1;
    if (x->ts_ms != y->ts_ms) return x->ts_ms < y->ts_ms ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static void encode_block(struct raw_writer *w, const uint32_t *order, size_t n,
                         uint64_t first_offset, struct cbuf *b)
{
    const struct row *rows = w->rows;
    cbuf_reset(b);
    cbuf_u8(b, BLOCK_VERSION);
    cbuf_varint(b, n);
    struct row prev;
    memset(&prev, 0, sizeof prev);
    prev.offset = first_offset;
    prev.ts_ms = (int64_t)rows[order[0]].hour * RAW_HOUR_MS;
    for (size_t i = 0; i < n; i++) {
        const struct row *r = &rows[order[i]];
        uint32_t mask = 0;
        if (i == 0 || r->visitor != prev.visitor) mask |= MASK_VISITOR;
        if (r->flags != prev.flags) mask |= MASK_FLAGS;
        for (int f = 0; f < DE_FIELD_COUNT; f++)
            if (r->id[f] != prev.id[f]) mask |= 1u << (MASK_FIELD0 + f);
        if (r->props_n) mask |= MASK_PROPS;
        if (r->has_revenue) mask |= MASK_REVENUE;
        cbuf_varint(b, mask);
        if (mask & MASK_VISITOR) cbuf_le64(b, r->visitor);
        cbuf_svarint(b, (int64_t)(r->offset - prev.offset));
        cbuf_svarint(b, r->ts_ms - prev.ts_ms);
        cbuf_svarint(b, r->received_ms - r->ts_ms);
        if (mask & MASK_FLAGS) cbuf_varint(b, r->flags);
        for (int f = 0; f < DE_FIELD_COUNT; f++)
            if (mask & (1u << (MASK_FIELD0 + f))) cbuf_varint(b, r->id[f]);
        if (mask & MASK_PROPS) {
            cbuf_varint(b, r->props_n);
            for (uint32_t k = 0; k < r->props_n; k++) {
                cbuf_varint(b, w->props[r->props_off + k].key);
                cbuf_varint(b, w->props[r->props_off + k].value);
            }
        }
        if (mask & MASK_REVENUE) {
            cbuf_svarint(b, r->revenue_micros);
            cbuf_varint(b, r->currency_id);
        }
        prev = *r;
    }
}

/* ---- block version 2: columns (raw.h) ---- */

enum {
    C_VISITOR,
    C_OFFSET,
    C_TS,
    C_RECEIVED,
    C_FLAGS,
    C_FIELD0,
    C_PROPS = C_FIELD0 + DE_FIELD_COUNT,
    C_REVENUE,
    C_SECTIONS
};
#define UCOL_CONST 0xffu
#define SECTION_LZ4_MIN_BYTES 64 /* shorter sections are stored as they are */

/* A column of n unsigned values: none (all 0), a constant, or the narrowest fixed width. */
static void ucol_put(struct cbuf *b, const uint64_t *v, size_t n)
{
    uint64_t any = 0;
    bool same = true;
    for (size_t i = 0; i < n; i++) {
        any |= v[i];
        same &= v[i] == v[0];
    }
    if (any == 0) {
        cbuf_u8(b, 0);
        return;
    }
    if (same) {
        cbuf_u8(b, UCOL_CONST);
        cbuf_varint(b, v[0]);
        return;
    }
    unsigned wd = any <= 0xff ? 1 : any <= 0xffff ? 2 : any <= 0xffffff ? 3 : any <= 0xffffffffu ? 4 : 8;
    cbuf_u8(b, (uint8_t)wd);
    if (!cbuf_reserve(b, n * wd)) return;
    for (size_t i = 0; i < n; i++)
        for (unsigned k = 0; k < wd; k++) b->p[b->len++] = (uint8_t)(v[i] >> (8 * k));
}

/* Appends section sc to b: varint length, then codec 0 + the bytes, or codec 1 + varint raw
 * length + LZ4 block when that saves a quarter or more. */
static void section_put(struct cbuf *b, const struct cbuf *sc, struct cbuf *z)
{
    if (sc->len >= SECTION_LZ4_MIN_BYTES && sc->len <= RAW_SECTION_BYTES_MAX) {
        int bound = LZ4_compressBound((int)sc->len);
        cbuf_reset(z);
        if (cbuf_reserve(z, (size_t)bound)) {
            int zl = LZ4_compress_default((const char *)sc->p, (char *)z->p, (int)sc->len, bound);
            if (zl > 0 && (size_t)zl <= sc->len - sc->len / 4) {
                uint8_t hdr[11];
                size_t hl = 0;
                hdr[hl++] = 1;
                for (uint64_t x = sc->len; ; x >>= 7) {
                    hdr[hl++] = (uint8_t)(x >= 0x80 ? (x & 0x7f) | 0x80 : x);
                    if (x < 0x80) break;
                }
                cbuf_varint(b, hl + (size_t)zl);
                cbuf_put(b, hdr, hl);
                cbuf_put(b, z->p, (size_t)zl);
                return;
            }
        }
    }
    cbuf_varint(b, 1 + sc->len);
    cbuf_u8(b, 0);
    cbuf_put(b, sc->p, sc->len);
}

static void encode_block_v2(struct raw_writer *w, const uint32_t *order, size_t n,
                            uint64_t first_offset, struct cbuf *b)
{
    const struct row *rows = w->rows;
    cbuf_reset(b);
    cbuf_u8(b, BLOCK_VERSION_COLUMNS);
    cbuf_varint(b, n);
    if (n > w->capcolv) {
        uint64_t *v = realloc(w->colv, n * sizeof *v);
        if (!v) {
            b->oom = true;
            return;
        }
        w->colv = v;
        w->capcolv = n;
    }
    uint64_t *v = w->colv;
    struct cbuf *sc = &w->sec;
    for (int c = 0; c < C_SECTIONS; c++) {
        cbuf_reset(sc);
        if (c == C_VISITOR) { /* runs of one visitor: (u64 LE visitor, varint length) */
            size_t runs = 0;
            for (size_t i = 0; i < n; i++)
                runs += i == 0 || rows[order[i]].visitor != rows[order[i - 1]].visitor;
            cbuf_varint(sc, runs);
            for (size_t i = 0; i < n;) {
                size_t j = i + 1;
                while (j < n && rows[order[j]].visitor == rows[order[i]].visitor) j++;
                cbuf_le64(sc, rows[order[i]].visitor);
                cbuf_varint(sc, j - i);
                i = j;
            }
        } else if (c == C_OFFSET || c == C_TS) { /* from the block's first offset / hour */
            const int64_t hour_ms = (int64_t)rows[order[0]].hour * RAW_HOUR_MS;
            for (size_t i = 0; i < n; i++) {
                const struct row *r = &rows[order[i]];
                v[i] = c == C_OFFSET ? r->offset - first_offset : (uint64_t)(r->ts_ms - hour_ms);
            }
            ucol_put(sc, v, n);
        } else if (c == C_RECEIVED || c == C_FLAGS) {
            for (size_t i = 0; i < n; i++) {
                const struct row *r = &rows[order[i]];
                v[i] = c == C_FLAGS ? r->flags : codec_zigzag(r->received_ms - r->ts_ms);
            }
            ucol_put(sc, v, n);
        } else if (c == C_PROPS || c == C_REVENUE) { /* sparse: the rows that have them */
            size_t m = 0, prev = 0;
            for (size_t i = 0; i < n; i++)
                m += c == C_PROPS ? rows[order[i]].props_n != 0 : rows[order[i]].has_revenue;
            cbuf_varint(sc, m);
            for (size_t i = 0; i < n; i++) {
                const struct row *r = &rows[order[i]];
                if (c == C_PROPS ? r->props_n == 0 : !r->has_revenue) continue;
                cbuf_varint(sc, i - prev);
                prev = i;
                if (c == C_PROPS) {
                    cbuf_varint(sc, r->props_n);
                    for (uint32_t k = 0; k < r->props_n; k++) {
                        cbuf_varint(sc, w->props[r->props_off + k].key);
                        cbuf_varint(sc, w->props[r->props_off + k].value);
                    }
                } else {
                    cbuf_svarint(sc, r->revenue_micros);
                    cbuf_varint(sc, r->currency_id);
                }
            }
        } else {
            for (size_t i = 0; i < n; i++) v[i] = rows[order[i]].id[c - C_FIELD0];
            ucol_put(sc, v, n);
        }
        if (sc->oom) b->oom = true;
        section_put(b, sc, &w->zbuf);
        if (w->zbuf.oom) b->oom = true;
    }
}

void raw_writer_set_block_version(struct raw_writer *w, int version)
{
    TALLY_ASSERT(version == BLOCK_VERSION || version == BLOCK_VERSION_COLUMNS);
    w->block_version = version;
}

int raw_writer_flush(struct raw_writer *w, struct store_batch *b)
{
    /* sort an index, not the (large) rows */
    uint32_t *order = malloc((w->nrows ? w->nrows : 1) * sizeof *order);
    if (!order) return TALLY_ENOMEM;
    for (size_t i = 0; i < w->nrows; i++) order[i] = (uint32_t)i;
    if (w->nrows > 1) qsort_r(order, w->nrows, sizeof *order, row_cmp, w->rows);
    const struct row *rows = w->rows;
    struct cbuf val = {0};
    for (size_t i = 0; i < w->nrows;) {
        const struct row *ri = &rows[order[i]];
        size_t j = i;
        while (j < w->nrows && j - i < RAW_BLOCK_EVENTS_MAX && rows[order[j]].site == ri->site &&
               rows[order[j]].hour == ri->hour)
            j++;
        uint64_t first = UINT64_MAX;
        for (size_t k = i; k < j; k++)
            if (rows[order[k]].offset < first) first = rows[order[k]].offset;
        if (w->block_version == BLOCK_VERSION_COLUMNS)
            encode_block_v2(w, order + i, j - i, first, &val);
        else
            encode_block(w, order + i, j - i, first, &val);
        uint8_t key[16];
        store_put_be32(key, ri->site);
        store_put_be32(key + 4, ri->hour);
        store_put_be64(key + 8, first);
        if (val.oom) {
            cbuf_free(&val);
            free(order);
            return TALLY_ENOMEM;
        }
        store_batch_put(b, STORE_CF_RAW, key, sizeof key, val.p, val.len);
        i = j;
    }
    cbuf_free(&val);
    free(order);
    /* dictionary entries assigned since the last commit */
    for (size_t p = 0; p < w->npending; p++) {
        uint32_t i = w->pending[p];
        uint32_t len;
        const char *str = strtab_str(w->dict, i, &len);
        uint32_t site = strtab_scope(w->dict, i);
        uint8_t idb[4], ik[9] = {'I'};
        store_put_be32(idb, w->dict_id[i]);
        store_put_be32(ik + 1, site);
        store_put_be32(ik + 5, w->dict_id[i]);
        dict_key_s(&w->buf, site, str, len);
        if (w->buf.oom) return TALLY_ENOMEM;
        store_batch_put(b, STORE_CF_DICT, w->buf.p, w->buf.len, idb, 4);
        store_batch_put(b, STORE_CF_DICT, ik, 9, str, len);
        if (w->site_dirty[site]) {
            uint8_t k[5] = {'N'}, v[4];
            store_put_be32(k + 1, site);
            store_put_be32(v, w->next_id[site]);
            store_batch_put(b, STORE_CF_DICT, k, 5, v, 4);
            w->site_dirty[site] = 0;
        }
    }
    w->nrows = 0;
    w->nprops = 0;
    return TALLY_OK;
}

void raw_writer_commit(struct raw_writer *w)
{
    w->npending = 0;
    if (strtab_bytes(w->dict) > RAW_DICT_CACHE_BYTES_MAX) strtab_clear(w->dict);
}

void raw_writer_abort(struct raw_writer *w)
{
    w->nrows = 0;
    w->nprops = 0;
    w->npending = 0;
    strtab_clear(w->dict);
    memset(w->next_id, 0, STORE_SITES_MAX * sizeof *w->next_id);
    memset(w->site_dirty, 0, STORE_SITES_MAX);
}

/* ---- reading ---- */

/* a + b with two's-complement wrap-around: a corrupt delta must give a wrong time that the
 * range checks reject, not undefined behaviour */
static inline int64_t wrap_add(int64_t a, int64_t b)
{
    return (int64_t)((uint64_t)a + (uint64_t)b);
}

/* A varint of a block in [p, end): unrolled while ten bytes remain (a varint's most), else a
 * checked loop. A bad one sets *bad and moves p to end. */
static inline uint64_t pvarint(const uint8_t **pp, const uint8_t *end, bool *bad)
{
    const uint8_t *p = *pp;
    if (end - p >= 10) {
        uint64_t v = 0;
        for (int i = 0, shift = 0; i < 10; i++, shift += 7) {
            uint64_t b = p[i];
            v |= (b & 0x7f) << shift;
            if (b < 0x80) {
                *pp = p + i + 1;
                return v;
            }
        }
        *bad = true;
        *pp = end;
        return 0;
    }
    uint64_t v = 0;
    for (int shift = 0; p < end && shift < 64; shift += 7) {
        uint8_t c = *p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *pp = p;
            return v;
        }
    }
    *bad = true;
    *pp = end;
    return 0;
}

/* Bits set in v (no popcnt instruction assumed: the build targets any x86-64). */
static inline unsigned pop32(uint32_t v)
{
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    return (((v + (v >> 4)) & 0x0f0f0f0fu) * 0x01010101u) >> 24;
}

/* Skips k varints of [p, end): eight bytes at a time, counting the bytes that end a varint
 * (top bit clear). Bounds-safe; overlong varints are not detected here (the block's length
 * check still catches a decoder that went astray). */
static inline void pskip(const uint8_t **pp, const uint8_t *end, unsigned k, bool *bad)
{
    const uint8_t *p = *pp;
    while (k && end - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8); /* little-endian host (checked at the top of the file) */
        uint64_t t = ~w & 0x8080808080808080ULL;
        unsigned c = (unsigned)(((t >> 7) * 0x0101010101010101ULL) >> 56); /* bytes set */
        if (c < k) {
            k -= c;
            p += 8;
            continue;
        }
        while (--k) t &= t - 1;
        p += (__builtin_ctzll(t) >> 3) + 1;
    }
    while (k && p < end)
        if (!(*p++ & 0x80)) k--;
    if (k) *bad = true;
    *pp = p;
}

/* ---- block version 2: reading ---- */

struct ucol {
    const uint8_t *p;
    unsigned w; /* 0, 1, 2, 4, 8 or UCOL_CONST */
    uint64_t cval;
};

/* Splits a v2 block into its sections; *n its rows. Sections in `want` (bit c: section c) are
 * made readable: sp[c]..se[c] their raw bytes (LZ4 ones decompressed into z, which must not
 * move while they are used: its capacity is reserved first); the others get NULL. */
static int v2_sections(const uint8_t *val, size_t vlen, uint64_t want, struct cbuf *z,
                       uint64_t *n, const uint8_t **sp, const uint8_t **se)
{
    const uint8_t *p = val + 1, *end = val + vlen;
    bool bad = false;
    *n = pvarint(&p, end, &bad);
    if (bad || *n == 0 || *n > RAW_BLOCK_EVENTS_MAX) return TALLY_ECORRUPT;
    const uint8_t *body[C_SECTIONS], *bend[C_SECTIONS];
    uint64_t rawlen[C_SECTIONS], need = 0;
    for (int c = 0; c < C_SECTIONS; c++) {
        uint64_t len = pvarint(&p, end, &bad);
        if (bad || len == 0 || len > (uint64_t)(end - p)) return TALLY_ECORRUPT;
        const uint8_t *q = p, *qe = p + len;
        p = qe;
        uint8_t codec = *q++;
        rawlen[c] = 0;
        if (codec == 1) {
            rawlen[c] = pvarint(&q, qe, &bad);
            if (bad || rawlen[c] == 0 || rawlen[c] > (uint64_t)RAW_SECTION_BYTES_MAX)
                return TALLY_ECORRUPT;
            if (want >> c & 1) need += rawlen[c];
        } else if (codec != 0) {
            return TALLY_ECORRUPT;
        }
        body[c] = q;
        bend[c] = qe;
    }
    if (p != end) return TALLY_ECORRUPT;
    cbuf_reset(z);
    if (need && !cbuf_reserve(z, need)) return TALLY_ENOMEM;
    for (int c = 0; c < C_SECTIONS; c++) {
        sp[c] = se[c] = NULL;
        if (!(want >> c & 1)) continue;
        if (!rawlen[c]) {
            sp[c] = body[c];
            se[c] = bend[c];
            continue;
        }
        uint8_t *dst = z->p + z->len;
        int got = LZ4_decompress_safe((const char *)body[c], (char *)dst, (int)(bend[c] - body[c]),
                                      (int)rawlen[c]);
        if (got < 0 || (uint64_t)got != rawlen[c]) return TALLY_ECORRUPT;
        z->len += rawlen[c];
        sp[c] = dst;
        se[c] = dst + rawlen[c];
    }
    return TALLY_OK;
}

static int ucol_open(const uint8_t *p, const uint8_t *end, uint64_t n, struct ucol *u)
{
    if (!p) { /* a section not read: every value 0 */
        *u = (struct ucol){0};
        return TALLY_OK;
    }
    if (p >= end) return TALLY_ECORRUPT;
    u->w = *p++;
    u->p = p;
    u->cval = 0;
    if (u->w == 0) return p == end ? TALLY_OK : TALLY_ECORRUPT;
    if (u->w == UCOL_CONST) {
        bool bad = false;
        u->cval = pvarint(&p, end, &bad);
        return !bad && p == end ? TALLY_OK : TALLY_ECORRUPT;
    }
    if (u->w != 1 && u->w != 2 && u->w != 3 && u->w != 4 && u->w != 8) return TALLY_ECORRUPT;
    return (uint64_t)(end - p) == n * u->w ? TALLY_OK : TALLY_ECORRUPT;
}

static inline uint64_t ucol_at(const struct ucol *u, uint64_t i)
{
    const uint8_t *q = u->p + i * u->w;
    switch (u->w) {
    case 0: return 0;
    case 1: return q[0];
    case 2: {
        uint16_t x;
        memcpy(&x, q, 2);
        return x;
    }
    case 3: return (uint64_t)q[0] | (uint64_t)q[1] << 8 | (uint64_t)q[2] << 16;
    case 4: {
        uint32_t x;
        memcpy(&x, q, 4);
        return x;
    }
    case 8: {
        uint64_t x;
        memcpy(&x, q, 8);
        return x;
    }
    default: return u->cval;
    }
}

/* The visitor runs of a v2 block, row by row. */
struct vruns {
    const uint8_t *p, *end;
    uint64_t runs, left, visitor;
};

static int vruns_open(const uint8_t *p, const uint8_t *end, struct vruns *v)
{
    bool bad = false;
    *v = (struct vruns){.end = end};
    v->runs = pvarint(&p, end, &bad);
    v->p = p;
    return bad ? TALLY_ECORRUPT : TALLY_OK;
}

/* The next row's visitor; false when the runs do not cover the rows. */
static inline bool vruns_next(struct vruns *v, uint64_t *visitor)
{
    if (v->left == 0) {
        if (v->runs == 0 || v->end - v->p < 9) return false;
        memcpy(&v->visitor, v->p, 8);
        v->p += 8;
        bool bad = false;
        v->left = pvarint(&v->p, v->end, &bad);
        if (bad || v->left == 0) return false;
        v->runs--;
    }
    v->left--;
    *visitor = v->visitor;
    return true;
}

/* A sparse section (props, revenue): the rows that have an entry, in row order. */
struct sparse {
    const uint8_t *p, *end;
    uint64_t left, next;
    bool bad;
};

static void sparse_open(const uint8_t *p, const uint8_t *end, struct sparse *s)
{
    *s = (struct sparse){.p = p, .end = end, .next = UINT64_MAX};
    if (!p) return; /* a section not read: no entries */
    s->left = pvarint(&s->p, end, &s->bad);
    s->next = s->left ? pvarint(&s->p, end, &s->bad) : UINT64_MAX;
}

/* After row `row`'s entry was read: the next entry's row. */
static void sparse_advance(struct sparse *s, uint64_t row)
{
    if (--s->left == 0) {
        s->next = UINT64_MAX;
        return;
    }
    uint64_t d = pvarint(&s->p, s->end, &s->bad);
    if (d == 0) s->bad = true;
    s->next = row + d;
}

/* Opens the columns every row reader takes: visitor runs, offset, ts, flags. */
static int v2_open_base(const uint8_t *const *sp, const uint8_t *const *se, uint64_t n,
                        struct vruns *vr, struct ucol *off, struct ucol *ts, struct ucol *flags)
{
    int rc = vruns_open(sp[C_VISITOR], se[C_VISITOR], vr);
    if (!rc) rc = ucol_open(sp[C_OFFSET], se[C_OFFSET], n, off);
    if (!rc) rc = ucol_open(sp[C_TS], se[C_TS], n, ts);
    if (!rc) rc = ucol_open(sp[C_FLAGS], se[C_FLAGS], n, flags);
    return rc;
}

static int block_decode_v2_rows(const uint8_t *key, uint64_t n, const uint8_t *const *sp,
                                const uint8_t *const *se, raw_scan_fn fn, void *arg);

/* The sections every full-row reader needs (times, identity, flags, revenue). */
#define V2_BASE_SECTIONS                                                                        \
    (1ULL << C_VISITOR | 1ULL << C_OFFSET | 1ULL << C_TS | 1ULL << C_RECEIVED | 1ULL << C_FLAGS | \
     1ULL << C_REVENUE)
#define V2_ALL_SECTIONS ((1ULL << C_SECTIONS) - 1)

/* Decodes the rows of a v2 block; sections outside `want` read as empty (ids 0, no props).
 * z: scratch for decompressed sections (reused by the caller across blocks). */
static int block_decode_v2(const uint8_t *key, const uint8_t *val, size_t vlen, uint64_t want,
                           struct cbuf *z, raw_scan_fn fn, void *arg)
{
    const uint8_t *sp[C_SECTIONS], *se[C_SECTIONS];
    uint64_t n;
    int rc = v2_sections(val, vlen, want, z, &n, sp, se);
    if (!rc) rc = block_decode_v2_rows(key, n, sp, se, fn, arg);
    return rc;
}

static int block_decode_v2_rows(const uint8_t *key, uint64_t n, const uint8_t *const *sp,
                                const uint8_t *const *se, raw_scan_fn fn, void *arg)
{
    uint32_t hour = store_get_be32(key + 4);
    struct ucol off, ts, rec, flags, fld[DE_FIELD_COUNT];
    struct vruns vr;
    int rc = v2_open_base(sp, se, n, &vr, &off, &ts, &flags);
    if (!rc) rc = ucol_open(sp[C_RECEIVED], se[C_RECEIVED], n, &rec);
    for (int f = 0; !rc && f < DE_FIELD_COUNT; f++)
        rc = ucol_open(sp[C_FIELD0 + f], se[C_FIELD0 + f], n, &fld[f]);
    if (rc) return rc;
    struct sparse pr, rv;
    sparse_open(sp[C_PROPS], se[C_PROPS], &pr);
    sparse_open(sp[C_REVENUE], se[C_REVENUE], &rv);
    struct raw_event ev;
    memset(&ev, 0, sizeof ev);
    const uint64_t first = store_get_be64(key + 8);
    const int64_t hour_ms = (int64_t)hour * RAW_HOUR_MS;
    for (uint64_t i = 0; i < n; i++) {
        if (!vruns_next(&vr, &ev.visitor)) return TALLY_ECORRUPT;
        uint64_t dts = ucol_at(&ts, i);
        if (dts >= (uint64_t)RAW_HOUR_MS) return TALLY_ECORRUPT;
        ev.offset = first + ucol_at(&off, i);
        ev.ts_ms = hour_ms + (int64_t)dts;
        ev.received_ms = wrap_add(ev.ts_ms, codec_unzigzag(ucol_at(&rec, i)));
        uint64_t fl = ucol_at(&flags, i);
        if (fl > UINT32_MAX) return TALLY_ECORRUPT;
        ev.flags = (uint32_t)fl;
        for (int f = 0; f < DE_FIELD_COUNT; f++) {
            uint64_t id = ucol_at(&fld[f], i);
            if (id > UINT32_MAX) return TALLY_ECORRUPT;
            ev.id[f] = (uint32_t)id;
        }
        ev.props_count = 0;
        if (pr.next == i) {
            uint64_t np = pvarint(&pr.p, pr.end, &pr.bad);
            if (np == 0 || np > DE_PROPS_MAX) return TALLY_ECORRUPT;
            for (uint64_t k = 0; k < np; k++) {
                ev.props[k].key = (uint32_t)pvarint(&pr.p, pr.end, &pr.bad);
                ev.props[k].value = (uint32_t)pvarint(&pr.p, pr.end, &pr.bad);
            }
            ev.props_count = (uint32_t)np;
            sparse_advance(&pr, i);
        }
        ev.has_revenue = rv.next == i;
        ev.revenue_micros = 0;
        ev.currency_id = 0;
        if (ev.has_revenue) {
            ev.revenue_micros = codec_unzigzag(pvarint(&rv.p, rv.end, &rv.bad));
            ev.currency_id = (uint32_t)pvarint(&rv.p, rv.end, &rv.bad);
            sparse_advance(&rv, i);
        }
        if (pr.bad || rv.bad || pr.next < i || rv.next < i) return TALLY_ECORRUPT;
        if (ev.ts_ms / RAW_HOUR_MS != hour || ev.ts_ms < 0) return TALLY_ECORRUPT;
        rc = fn(arg, &ev);
        if (rc) return rc;
    }
    if (vr.left || vr.runs || vr.p != vr.end || pr.left || rv.left || pr.p != pr.end ||
        rv.p != rv.end)
        return TALLY_ECORRUPT;
    return TALLY_OK;
}

int raw_block_decode(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                     raw_scan_fn fn, void *arg)
{
    if (klen != 16) return TALLY_ECORRUPT;
    if (vlen > 0 && val[0] == BLOCK_VERSION_COLUMNS) {
        struct cbuf z = {0};
        int rc = block_decode_v2(key, val, vlen, V2_ALL_SECTIONS, &z, fn, arg);
        cbuf_free(&z);
        return rc;
    }
    uint32_t hour = store_get_be32(key + 4);
    uint64_t first = store_get_be64(key + 8);
    struct creader r;
    creader_init(&r, val, vlen);
    if (creader_u8(&r) != BLOCK_VERSION) return TALLY_ECORRUPT;
    uint64_t n = creader_varint(&r);
    if (r.err || n == 0 || n > RAW_BLOCK_EVENTS_MAX) return TALLY_ECORRUPT;
    struct raw_event ev;
    memset(&ev, 0, sizeof ev);
    ev.offset = first;
    ev.ts_ms = (int64_t)hour * RAW_HOUR_MS;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t mask = creader_varint(&r);
        if (mask >> 23) return TALLY_ECORRUPT;
        if (mask & MASK_VISITOR) ev.visitor = creader_le64(&r);
        ev.offset += (uint64_t)creader_svarint(&r);
        ev.ts_ms = wrap_add(ev.ts_ms, creader_svarint(&r));
        ev.received_ms = wrap_add(ev.ts_ms, creader_svarint(&r));
        if (mask & MASK_FLAGS) ev.flags = (uint32_t)creader_varint(&r);
        for (int f = 0; f < DE_FIELD_COUNT; f++)
            if (mask & (1u << (MASK_FIELD0 + f))) ev.id[f] = (uint32_t)creader_varint(&r);
        ev.props_count = 0;
        if (mask & MASK_PROPS) {
            uint64_t np = creader_varint(&r);
            if (np == 0 || np > DE_PROPS_MAX) return TALLY_ECORRUPT;
            for (uint64_t k = 0; k < np; k++) {
                ev.props[k].key = (uint32_t)creader_varint(&r);
                ev.props[k].value = (uint32_t)creader_varint(&r);
            }
            ev.props_count = (uint32_t)np;
        }
        ev.has_revenue = (mask & MASK_REVENUE) != 0;
        ev.revenue_micros = 0;
        ev.currency_id = 0;
        if (ev.has_revenue) {
            ev.revenue_micros = creader_svarint(&r);
            ev.currency_id = (uint32_t)creader_varint(&r);
        }
        if (r.err) return TALLY_ECORRUPT;
        if (ev.ts_ms < 0 || ev.ts_ms / RAW_HOUR_MS != hour) return TALLY_ECORRUPT;
        int rc = fn(arg, &ev);
        if (rc) return rc;
    }
    return creader_done(&r) ? TALLY_OK : TALLY_ECORRUPT;
}

struct scan_filter {
    int64_t from_ms, to_ms;
    raw_scan_fn fn;
    void *arg;
};

static int scan_cb(void *arg, const struct raw_event *ev)
{
    struct scan_filter *f = arg;
    if (ev->ts_ms < f->from_ms || ev->ts_ms >= f->to_ms) return 0;
    return f->fn(f->arg, ev);
}

/* The raw key prefix (site, hour); an hour beyond the key's 32 bits is the next site's start. */
static void hour_key(uint8_t *k, uint32_t site, uint64_t hour)
{
    if (hour > UINT32_MAX) {
        store_put_be32(k, site + 1);
        store_put_be32(k + 4, 0);
    } else {
        store_put_be32(k, site);
        store_put_be32(k + 4, (uint32_t)hour);
    }
}

int raw_scan_some(struct store *s, uint32_t site_id, int64_t from_ms, int64_t to_ms,
                  uint32_t field_mask, bool with_props, raw_scan_fn fn, void *arg)
{
    if (from_ms < 0) from_ms = 0;
    if (to_ms <= from_ms) return TALLY_OK;
    uint8_t lo[8], hi[8];
    hour_key(lo, site_id, (uint64_t)(from_ms / RAW_HOUR_MS));
    hour_key(hi, site_id, (uint64_t)((to_ms - 1) / RAW_HOUR_MS) + 1);
    uint64_t want = V2_BASE_SECTIONS | (with_props ? 1ULL << C_PROPS : 0);
    for (int f = 0; f < DE_FIELD_COUNT; f++)
        if (field_mask >> f & 1) want |= 1ULL << (C_FIELD0 + f);
    struct store_iter *it = store_iter_new(s, STORE_CF_RAW, lo, 8, hi, 8);
    if (!it) return TALLY_ENOMEM;
    struct scan_filter f = {from_ms, to_ms, fn, arg};
    struct cbuf z = {0};
    int rc = TALLY_OK;
    for (store_iter_seek_first(it); store_iter_valid(it) && rc == 0; store_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *v = store_iter_value(it, &vl);
        if (kl == 16 && vl > 0 && v[0] == BLOCK_VERSION_COLUMNS)
            rc = block_decode_v2(k, v, vl, want, &z, scan_cb, &f);
        else
            rc = raw_block_decode(k, kl, v, vl, scan_cb, &f);
    }
    if (rc == 0) rc = store_iter_status(it);
    store_iter_free(it);
    cbuf_free(&z);
    return rc;
}

int raw_scan(struct store *s, uint32_t site_id, int64_t from_ms, int64_t to_ms, raw_scan_fn fn,
             void *arg)
{
    return raw_scan_some(s, site_id, from_ms, to_ms, (1u << DE_FIELD_COUNT) - 1, true, fn, arg);
}

/* ---- projection scan (raw_scan_hours) ---- */

#define HOUR_RUNS_KEPT 15 /* an hour of more runs (flushes) than this + 1 is merge-sorted */
#define HOUR_LATE_MAX 256 /* late-row visitors noted per hour; more: hour_order walks every row */

struct hour_buf {
    struct raw_row *rows, *tmp;
    size_t n, cap, rows_max, captmp;
    size_t descents; /* places where a row sorts before the one before it (run starts) */
    /* LATE ROWS: a row of a run after the first that is not later, by (ts, offset), than every
     * row of the runs before it (lmax when its run began: bmax) is late; only its visitor's
     * rows can be out of time order across runs. late[]: those visitors (late_all: too many
     * to note). lmax: the latest (ts, offset) so far. */
    uint64_t late[HOUR_LATE_MAX];
    size_t nlate;
    bool late_all;
    int64_t lmax_ts, bmax_ts;
    uint64_t lmax_off, bmax_off;
    size_t start[HOUR_RUNS_KEPT]; /* where runs 1..descents start, while descents fit */
    uint64_t *runs;  /* merge scratch: run starts */
    size_t capruns;
    struct cbuf z;   /* v2: decompressed sections of the block being read */
};

static inline int rowcmp(const struct raw_row *x, const struct raw_row *y)
{
    if (x->visitor != y->visitor) return x->visitor < y->visitor ? -1 : 1;
    if (x->ts_in_hour_ms != y->ts_in_hour_ms) return x->ts_in_hour_ms < y->ts_in_hour_ms ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Room for n more rows in h, within its rows_max. */
static int hour_reserve(struct hour_buf *h, uint64_t n)
{
    if (h->n + n > h->rows_max) return TALLY_ETOOBIG;
    if (h->n + n > h->cap) {
        size_t cap = h->cap ? h->cap : 8192;
        while (cap < h->n + n) cap *= 2;
        struct raw_row *r = realloc(h->rows, cap * sizeof *r);
        if (!r) return TALLY_ENOMEM;
        h->rows = r;
        h->cap = cap;
    }
    return TALLY_OK;
}

/* Column u's n values into out (one tight loop per width; values wider than 32 bits are cut
 * to 32, as a dictionary id or flags field takes them). */
#define UCOL_EXPAND(name, T)                                                                    \
    static void name(const struct ucol *u, uint64_t n, T *out)                                  \
    {                                                                                           \
        const uint8_t *q = u->p;                                                                \
        switch (u->w) {                                                                         \
        case 0:                                                                                 \
            memset(out, 0, n * sizeof *out);                                                    \
            break;                                                                              \
        case 1:                                                                                 \
            for (uint64_t i = 0; i < n; i++) out[i] = q[i];                                     \
            break;                                                                              \
        case 2:                                                                                 \
            for (uint64_t i = 0; i < n; i++) {                                                  \
                uint16_t x;                                                                     \
                memcpy(&x, q + 2 * i, 2);                                                       \
                out[i] = le16toh(x);                                                            \
            }                                                                                   \
            break;                                                                              \
        case 3:                                                                                 \
            for (uint64_t i = 0; i < n; i++)                                                    \
                out[i] = (T)(q[3 * i] | (uint32_t)q[3 * i + 1] << 8 | (uint32_t)q[3 * i + 2] << 16); \
            break;                                                                              \
        default:                                                                                \
            for (uint64_t i = 0; i < n; i++) out[i] = (T)ucol_at(u, i);                         \
        }                                                                                       \
    }
UCOL_EXPAND(ucol_expand64, uint64_t)
UCOL_EXPAND(ucol_expand32, uint32_t)
#undef UCOL_EXPAND

/* The fields and property keys a projection scan delivers, in raw_row.val order. */
struct proj {
    int fields[RAW_ROW_FIELDS_MAX];
    uint32_t keys[RAW_ROW_FIELDS_MAX];
    size_t nf, np; /* nf + np <= RAW_ROW_FIELDS_MAX */
};

/* The values of property keys pj->keys of a v2 block's props section [p, end) (n rows) into
 * out[j][row] (0 where a row lacks key j). Every entry is read and checked as
 * block_decode_v2_rows does (rows increasing and below n, 1..DE_PROPS_MAX pairs each, the
 * section consumed exactly), whatever rows the caller then keeps. */
static int v2_props(const uint8_t *p, const uint8_t *end, uint64_t n, const struct proj *pj,
                    uint32_t *const *out)
{
    for (size_t j = 0; j < pj->np; j++)
        memset(out[j], 0, n * sizeof *out[j]);
    struct sparse sp;
    sparse_open(p, end, &sp);
    while (sp.left) {
        const uint64_t row = sp.next;
        if (sp.bad || row >= n) return TALLY_ECORRUPT;
        uint64_t k = pvarint(&sp.p, sp.end, &sp.bad);
        if (k == 0 || k > DE_PROPS_MAX) return TALLY_ECORRUPT;
        unsigned found = 0; /* bit j: key j seen on this row (the first value counts) */
        for (uint64_t q = 0; q < k; q++) {
            uint32_t key = (uint32_t)pvarint(&sp.p, sp.end, &sp.bad);
            uint32_t val = (uint32_t)pvarint(&sp.p, sp.end, &sp.bad);
            for (size_t j = 0; j < pj->np; j++)
                if (key == pj->keys[j] && !(found >> j & 1)) {
                    out[j][row] = val;
                    found |= 1u << j;
                }
        }
        sparse_advance(&sp, row);
        if (sp.left && sp.next <= row) return TALLY_ECORRUPT; /* a delta that wrapped */
    }
    return !sp.bad && sp.p == sp.end ? TALLY_OK : TALLY_ECORRUPT;
}

/* A new sorted run of h begins at row index at (a row sorts before the one before it): where,
 * while HOUR_RUNS_KEPT allow, and the latest (ts, offset) of the runs before it (bmax). */
static inline void run_begins(struct hour_buf *h, size_t at)
{
    if (h->descents < HOUR_RUNS_KEPT) h->start[h->descents] = at;
    h->descents++;
    h->bmax_ts = h->lmax_ts;
    h->bmax_off = h->lmax_off;
}

/* LATE ROWS (struct hour_buf): row (t, o) of visitor v, after the descent check. */
static inline void late_note(struct hour_buf *h, uint64_t v, int64_t t, uint64_t o)
{
    if (h->descents && (t < h->bmax_ts || (t == h->bmax_ts && o <= h->bmax_off))) {
        if (h->nlate < HOUR_LATE_MAX)
            h->late[h->nlate++] = v;
        else
            h->late_all = true;
    }
    if (t > h->lmax_ts || (t == h->lmax_ts && o > h->lmax_off)) {
        h->lmax_ts = t;
        h->lmax_off = o;
    }
}

/* The rows of a v2 block from its expanded columns, nv value slots each (3 or RAW_ROW_FIELDS_MAX: a
 * constant once inlined, so the common case of up to 3 stays the loop it was); slots from nv on are
 * 0. Checks each row's time within the hour, drops it when out of [from, to) and notes where the
 * order descends. The rows kept (*kept) are written after h's; the caller adds them. */
static inline __attribute__((always_inline)) int
v2_assemble(struct hour_buf *h, struct vruns *vr, uint64_t n, const uint64_t *xo,
            const uint64_t *xt, const uint32_t *xf, const uint32_t *const *v, const size_t nv,
            uint64_t first, int64_t hour_ms, int64_t from, int64_t to, size_t *kept)
{
    const uint32_t *vl[RAW_ROW_FIELDS_MAX];
    for (size_t f = 0; f < nv; f++)
        vl[f] = v[f];
    struct raw_row *base = h->rows + h->n;
    /* the previous row kept (for the order note; none: nothing sorts below it) */
    uint64_t pv = h->n ? base[-1].visitor : 0, po = h->n ? base[-1].offset : 0;
    int64_t pt = h->n ? hour_ms + base[-1].ts_in_hour_ms : INT64_MIN;
    size_t k = 0;
    for (uint64_t i = 0; i < n;) {
        uint64_t visitor;
        if (!vruns_next(vr, &visitor)) return TALLY_ECORRUPT;
        uint64_t run = vr->left + 1;
        if (run > n - i) return TALLY_ECORRUPT;
        vr->left = 0;
        const uint64_t e = i + run;
        for (; i < e; i++) {
            if (xt[i] >= (uint64_t)RAW_HOUR_MS) return TALLY_ECORRUPT; /* not in its hour */
            const int64_t t = hour_ms + (int64_t)xt[i];
            if (t < from || t >= to) continue;
            const uint64_t o = first + xo[i];
            if (visitor < pv || (visitor == pv && (t < pt || (t == pt && o < po))))
                run_begins(h, h->n + k);
            late_note(h, visitor, t, o);
            struct raw_row *r = &base[k++];
            r->ts_in_hour_ms = (uint32_t)xt[i];
            r->offset = o;
            r->visitor = visitor;
            r->flags = xf[i];
            for (size_t f = 0; f < nv; f++)
                r->val[f] = vl[f][i];
            for (size_t f = nv; f < RAW_ROW_FIELDS_MAX; f++)
                r->val[f] = 0;
            pv = visitor;
            pt = t;
            po = o;
        }
    }
    *kept = k;
    return TALLY_OK;
}

/* block_rows for a v2 block: only the columns asked for are read (the others are skipped by
 * their section lengths; props only when keys are asked for), expanded to arrays, then the
 * rows assembled from them in one pass (v2_assemble). */
static int block_rows_v2(const uint8_t *key, const uint8_t *val, size_t vlen, int64_t from,
                         int64_t to, const struct proj *pj, struct hour_buf *h)
{
    uint32_t hour = store_get_be32(key + 4);
    const uint8_t *sp[C_SECTIONS], *se[C_SECTIONS];
    const size_t nf = pj->nf, nv = pj->nf + pj->np;
    uint64_t n, want = 1u << C_VISITOR | 1u << C_OFFSET | 1u << C_TS | 1u << C_FLAGS;
    for (size_t f = 0; f < nf; f++)
        want |= 1ULL << (C_FIELD0 + pj->fields[f]);
    if (pj->np) want |= 1ULL << C_PROPS;
    int rc = v2_sections(val, vlen, want, &h->z, &n, sp, se);
    struct ucol off, ts, flags, fld[RAW_ROW_FIELDS_MAX] = {{0}};
    struct vruns vr;
    if (!rc) rc = v2_open_base(sp, se, n, &vr, &off, &ts, &flags);
    for (size_t f = 0; !rc && f < nf; f++)
        rc = ucol_open(sp[C_FIELD0 + pj->fields[f]], se[C_FIELD0 + pj->fields[f]], n, &fld[f]);
    if (rc) return rc;
    if ((rc = hour_reserve(h, n)) != TALLY_OK) return rc;
    /* the columns expanded: 8 + 8 + 4 + 4 x RAW_ROW_FIELDS_MAX bytes a row, at most
     * RAW_BLOCK_EVENTS_MAX rows (144 KiB of stack; the scan threads have the default 8 MiB) */
    uint64_t xo[RAW_BLOCK_EVENTS_MAX], xt[RAW_BLOCK_EVENTS_MAX];
    uint32_t xf[RAW_BLOCK_EVENTS_MAX], xv[RAW_ROW_FIELDS_MAX][RAW_BLOCK_EVENTS_MAX];
    if (n > RAW_BLOCK_EVENTS_MAX) return TALLY_ECORRUPT;
    ucol_expand64(&off, n, xo);
    ucol_expand64(&ts, n, xt);
    ucol_expand32(&flags, n, xf);
    static const uint32_t zeros[RAW_BLOCK_EVENTS_MAX]; /* the slots not asked for */
    const uint32_t *v[RAW_ROW_FIELDS_MAX];
    uint32_t *pv[RAW_ROW_FIELDS_MAX];
    for (size_t f = 0; f < RAW_ROW_FIELDS_MAX; f++)
        v[f] = f < nv ? xv[f] : zeros;
    for (size_t f = 0; f < nf; f++)
        ucol_expand32(&fld[f], n, xv[f]);
    for (size_t j = 0; j < pj->np; j++)
        pv[j] = xv[nf + j];
    if (pj->np && (rc = v2_props(sp[C_PROPS], se[C_PROPS], n, pj, pv))) return rc;
    const uint64_t first = store_get_be64(key + 8);
    const int64_t hour_ms = (int64_t)hour * RAW_HOUR_MS;
    size_t kept = 0;
    if (nv <= 3) /* the funnel's case: the loop as tight as with 3 slots only */
        rc = v2_assemble(h, &vr, n, xo, xt, xf, v, 3, first, hour_ms, from, to, &kept);
    else
        rc = v2_assemble(h, &vr, n, xo, xt, xf, v, RAW_ROW_FIELDS_MAX, first, hour_ms, from, to,
                         &kept);
    if (rc) return rc;
    if (vr.runs || vr.p != vr.end) return TALLY_ECORRUPT;
    h->n += kept;
    return TALLY_OK;
}

/* Decodes one block's rows of [from, to) with the fields and property values of pj onto h. */
static int block_rows(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                      int64_t from, int64_t to, const struct proj *pj, struct hour_buf *h)
{
    if (klen != 16 || vlen < 2) return TALLY_ECORRUPT;
    if (val[0] == BLOCK_VERSION_COLUMNS) return block_rows_v2(key, val, vlen, from, to, pj, h);
    if (val[0] != BLOCK_VERSION) return TALLY_ECORRUPT;
    uint32_t hour = store_get_be32(key + 4);
    const uint8_t *p = val + 1, *end = val + vlen;
    bool bad = false;
    uint64_t n = pvarint(&p, end, &bad);
    if (bad || n == 0 || n > RAW_BLOCK_EVENTS_MAX) return TALLY_ECORRUPT;
    int rc = hour_reserve(h, n);
    if (rc) return rc;
    uint32_t id[DE_FIELD_COUNT] = {0};
    uint32_t need = 0;
    const size_t nf = pj->nf, np = pj->np;
    for (size_t f = 0; f < nf; f++)
        need |= 1u << pj->fields[f];
    uint64_t visitor = 0, offset = store_get_be64(key + 8);
    uint32_t flags = 0;
    int64_t ts = (int64_t)hour * RAW_HOUR_MS;
    const int64_t hour_end = ts + RAW_HOUR_MS;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t mask = pvarint(&p, end, &bad);
        if (mask >> 23) return TALLY_ECORRUPT;
        if (mask & MASK_VISITOR) {
            if (end - p < 8) return TALLY_ECORRUPT;
            visitor = 0;
            for (int b = 0; b < 8; b++) visitor |= (uint64_t)p[b] << (8 * b);
            p += 8;
        }
        offset += (uint64_t)codec_unzigzag(pvarint(&p, end, &bad));
        ts = wrap_add(ts, codec_unzigzag(pvarint(&p, end, &bad)));
        pskip(&p, end, 1, &bad); /* received_ms - ts_ms */
        if (mask & MASK_FLAGS) flags = (uint32_t)pvarint(&p, end, &bad);
        /* field ids: the needed ones decoded, each run of others skipped at once */
        uint32_t fm = (uint32_t)(mask >> MASK_FIELD0) & ((1u << DE_FIELD_COUNT) - 1);
        while (fm) {
            unsigned f = (unsigned)__builtin_ctz(fm);
            if (need >> f & 1) {
                id[f] = (uint32_t)pvarint(&p, end, &bad);
                fm &= fm - 1;
                continue;
            }
            uint32_t later = need & ~((2u << f) - 1); /* needed fields after f */
            uint32_t run = later ? fm & ((1u << __builtin_ctz(later)) - 1) : fm;
            pskip(&p, end, pop32(run), &bad);
            fm &= ~run;
        }
        uint32_t pval[RAW_ROW_FIELDS_MAX] = {0}; /* the values of pj->keys, 0: key absent */
        if (mask & MASK_PROPS) {
            uint64_t k = pvarint(&p, end, &bad);
            if (k == 0 || k > DE_PROPS_MAX) return TALLY_ECORRUPT;
            if (!np) {
                pskip(&p, end, (unsigned)(2 * k), &bad);
            } else {
                unsigned found = 0; /* bit j: key j seen on this row (the first value counts) */
                for (uint64_t q = 0; q < k; q++) {
                    uint32_t pk = (uint32_t)pvarint(&p, end, &bad);
                    uint32_t pvl = (uint32_t)pvarint(&p, end, &bad);
                    for (size_t j = 0; j < np; j++)
                        if (pk == pj->keys[j] && !(found >> j & 1)) {
                            pval[j] = pvl;
                            found |= 1u << j;
                        }
                }
            }
        }
        if (mask & MASK_REVENUE) pskip(&p, end, 2, &bad);
        if (bad || ts < hour_end - RAW_HOUR_MS || ts >= hour_end) return TALLY_ECORRUPT;
        if (ts < from || ts >= to) continue;
        struct raw_row *r = &h->rows[h->n];
        r->ts_in_hour_ms = (uint32_t)(ts - (hour_end - RAW_HOUR_MS));
        r->offset = offset;
        r->visitor = visitor;
        r->flags = flags;
        memset(r->val, 0, sizeof r->val);
        for (size_t f = 0; f < nf; f++)
            r->val[f] = id[pj->fields[f]];
        for (size_t j = 0; j < np; j++)
            r->val[nf + j] = pval[j];
        if (h->n && rowcmp(r - 1, r) > 0) run_begins(h, h->n);
        late_note(h, visitor, ts, offset);
        h->n++;
    }
    return p == end ? TALLY_OK : TALLY_ECORRUPT;
}

int raw_block_project(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                      const int *fields, size_t nfields, struct raw_row **rows, size_t *n)
{
    *rows = NULL;
    *n = 0;
    if (nfields > RAW_ROW_FIELDS_MAX) return TALLY_EINVAL;
    for (size_t f = 0; f < nfields; f++)
        if (fields[f] < 0 || fields[f] >= DE_FIELD_COUNT) return TALLY_EINVAL;
    struct proj pj = {.nf = nfields};
    if (nfields) memcpy(pj.fields, fields, nfields * sizeof *fields);
    struct hour_buf h = {.rows_max = RAW_BLOCK_EVENTS_MAX};
    int rc = block_rows(key, klen, val, vlen, INT64_MIN, INT64_MAX, &pj, &h);
    free(h.tmp);
    free(h.runs);
    cbuf_free(&h.z);
    if (rc) {
        free(h.rows);
        return rc;
    }
    *rows = h.rows;
    *n = h.n;
    return TALLY_OK;
}

/* Sorts h's rows by (visitor, ts, offset): a natural merge sort (the runs are the blocks'
 * rows, each sorted; `descents` + 1 of them). */
static int hour_sort(struct hour_buf *h)
{
    size_t nruns = h->descents + 1;
    if (nruns + 1 > h->capruns) {
        uint64_t *r = realloc(h->runs, (nruns + 1) * sizeof *r);
        if (!r) return TALLY_ENOMEM;
        h->runs = r;
        h->capruns = nruns + 1;
    }
    size_t k = 0;
    h->runs[k++] = 0;
    for (size_t i = 1; i < h->n; i++)
        if (rowcmp(&h->rows[i - 1], &h->rows[i]) > 0) h->runs[k++] = i;
    h->runs[k] = h->n;
    struct raw_row *tmp = realloc(h->tmp, h->cap * sizeof *tmp);
    if (!tmp) return TALLY_ENOMEM;
    h->tmp = tmp;
    h->captmp = h->cap;
    struct raw_row *src = h->rows, *dst = tmp;
    while (k > 1) {
        size_t out = 0;
        for (size_t r = 0; r < k; r += 2) {
            size_t a = h->runs[r], m = h->runs[r + 1], b = r + 2 <= k ? h->runs[r + 2] : m;
            size_t i = a, j = m, o = a;
            while (i < m && j < b) dst[o++] = rowcmp(&src[j], &src[i]) < 0 ? src[j++] : src[i++];
            while (i < m) dst[o++] = src[i++];
            while (j < b) dst[o++] = src[j++];
            h->runs[out++] = a;
        }
        h->runs[out] = h->n;
        k = out;
        struct raw_row *t = src;
        src = dst;
        dst = t;
    }
    if (src != h->rows) { /* the sorted rows are in tmp: swap the buffers */
        h->tmp = h->rows;
        h->rows = src;
    }
    h->descents = 0;
    return TALLY_OK;
}

/* Parallel decoding. The range is cut into chunks of RAW_CHUNK_HOURS hours; chunk i is decoded
 * (one seek, every block of its hours, each hour sorted) into ring slot i % RAW_CHUNK_SLOTS by
 * whichever thread claims it, and handed to fn by the calling thread strictly in chunk order.
 * A worker waits while its slot still holds chunk i - RAW_CHUNK_SLOTS (memory stays bounded:
 * RAW_CHUNK_SLOTS x RAW_CHUNK_HOURS hours at most). Each worker reads through its own
 * iterator, all created before any worker starts. Short chunks keep the decoder close ahead of
 * the consumer, so the rows it reads were written recently (still in a cache): 8-hour chunks
 * measured 10-20 % slower than 2-hour ones (bench/funnel p50, the stream form of bench/query's
 * ad-hoc queries; 1-hour chunks were no better than 2). */
#define RAW_CHUNK_HOURS 2
#define RAW_CHUNK_SLOTS 4
_Static_assert(RAW_SCAN_HOURS_HELD == RAW_CHUNK_HOURS * RAW_CHUNK_SLOTS, "raw.h's bound");

struct chunk_slot {
    struct hour_buf hb[RAW_CHUNK_HOURS];
    uint32_t hour[RAW_CHUNK_HOURS];
    size_t nh;
    uint64_t chunk; /* the chunk it holds */
    bool ready;
    int rc;
};

struct hscan {
    uint32_t site;
    uint64_t first_hour, nchunks;
    int64_t from, to;
    struct proj pj; /* copied from the caller's arrays */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t next;     /* the next chunk to claim */
    uint64_t consumed; /* chunks handed to fn */
    bool stop;
    struct chunk_slot slot[RAW_CHUNK_SLOTS];
};

static int rowcmp_q(const void *a, const void *b)
{
    return rowcmp(a, b);
}

/* One visitor's spans (its rows in one run each), taken in run order. */
struct vspans {
    size_t sa[HOUR_RUNS_KEPT + 1], se[HOUR_RUNS_KEPT + 1]; /* [sa, se) */
    size_t ns, total;
    bool late; /* a span starts before the end of the one before it, by (ts, offset) */
};

/* An empty set of spans (the span arrays are left as they are: filled before they are read). */
static inline void vspans_init(struct vspans *sp)
{
    sp->ns = sp->total = 0;
    sp->late = false;
}

/* Adds the span of visitor rows[a].visitor that starts at a in a run ending at end; returns
 * the span's end. */
static size_t vspans_add(struct vspans *sp, const struct raw_row *rows, size_t a, size_t end)
{
    size_t e = a + 1;
    while (e < end && rows[e].visitor == rows[a].visitor)
        e++;
    if (sp->ns && rowcmp(&rows[sp->se[sp->ns - 1] - 1], &rows[a]) > 0) sp->late = true;
    sp->sa[sp->ns] = a;
    sp->se[sp->ns++] = e;
    sp->total += e - a;
    return e;
}

/* Puts one visitor's rows, its spans sp, in (ts, offset) order across those spans (sorted
 * among themselves, written back into the same places). */
static int visitor_reorder(struct hour_buf *h, const struct vspans *sp)
{
    const size_t *sa = sp->sa, *se = sp->se, ns = sp->ns, total = sp->total;
    struct raw_row *rows = h->rows;
    if (total > h->captmp) {
        struct raw_row *t = realloc(h->tmp, total * sizeof *t);
        if (!t) return TALLY_ENOMEM;
        h->tmp = t;
        h->captmp = total;
    }
    size_t o = 0;
    for (size_t i = 0; i < ns; i++) {
        memcpy(h->tmp + o, rows + sa[i], (se[i] - sa[i]) * sizeof *rows);
        o += se[i] - sa[i];
    }
    qsort(h->tmp, total, sizeof *h->tmp, rowcmp_q);
    o = 0;
    for (size_t i = 0; i < ns; i++) {
        memcpy(rows + sa[i], h->tmp + o, (se[i] - sa[i]) * sizeof *rows);
        o += se[i] - sa[i];
    }
    return TALLY_OK;
}

static int u64_cmp_q(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Puts h's rows in an order where every visitor's rows come by (ts, offset). The rows are runs
 * (one per flush of the hour), each sorted by (visitor, ts, offset). Only a visitor with a
 * late row (LATE ROWS in struct hour_buf) can have spans (its rows in one run) out of time
 * order taken in run order: for each such visitor its span in each run is found by binary
 * search, and if the spans are not in time order its rows are sorted among themselves and
 * written back into the same spans, the earliest into the first run's span. When too many
 * visitors had late rows, one walk over the runs side by side, visitor by visitor, does the
 * same for all. So every run stays sorted, nothing else moves, and a caller reading run after
 * run sees each visitor's rows in time order (measured on bench/funnel: 9 in 10 two-run hours
 * held a late event, and merging whole hours took 11 % of the CPU; the walk over every row
 * took 5-8 % of a stream query's). More than HOUR_RUNS_KEPT + 1 runs: the hour is merged into
 * one order (hour_sort). */
static int hour_order(struct hour_buf *h)
{
    if (h->descents > HOUR_RUNS_KEPT) return hour_sort(h);
    const size_t nr = h->descents + 1;
    size_t pos[HOUR_RUNS_KEPT + 1], end[HOUR_RUNS_KEPT + 1];
    pos[0] = 0;
    for (size_t r = 1; r < nr; r++) pos[r] = end[r - 1] = h->start[r - 1];
    end[nr - 1] = h->n;
    struct raw_row *rows = h->rows;
    int rc = TALLY_OK;
    if (!h->late_all) {
        qsort(h->late, h->nlate, sizeof *h->late, u64_cmp_q);
        for (size_t i = 0; i < h->nlate && !rc; i++) {
            const uint64_t v = h->late[i];
            if (i && v == h->late[i - 1]) continue;
            struct vspans sp;
            vspans_init(&sp);
            for (size_t r = 0; r < nr; r++) {
                size_t lo = pos[r], hi = end[r]; /* the first row of v or after, in run r */
                while (lo < hi) {
                    size_t mid = lo + (hi - lo) / 2;
                    if (rows[mid].visitor < v)
                        lo = mid + 1;
                    else
                        hi = mid;
                }
                if (lo < end[r] && rows[lo].visitor == v) vspans_add(&sp, rows, lo, end[r]);
            }
            if (sp.late) rc = visitor_reorder(h, &sp);
        }
        h->descents = 0;
        return rc;
    }
    for (;;) {
        bool any = false;
        uint64_t v = UINT64_MAX;
        for (size_t r = 0; r < nr; r++)
            if (pos[r] < end[r] && rows[pos[r]].visitor <= v) {
                v = rows[pos[r]].visitor;
                any = true;
            }
        if (!any) break;
        struct vspans sp;
        vspans_init(&sp);
        for (size_t r = 0; r < nr; r++)
            if (pos[r] < end[r] && rows[pos[r]].visitor == v)
                pos[r] = vspans_add(&sp, rows, pos[r], end[r]);
        if (sp.late && (rc = visitor_reorder(h, &sp))) return rc;
    }
    h->descents = 0;
    return TALLY_OK;
}

/* Decodes chunk c into sl through it. */
static int chunk_decode(struct hscan *x, struct store_iter *it, uint64_t c,
                        struct chunk_slot *sl)
{
    uint64_t a = x->first_hour + c * RAW_CHUNK_HOURS, b = a + RAW_CHUNK_HOURS;
    uint8_t k0[8];
    hour_key(k0, x->site, a);
    sl->nh = 0;
    int rc = TALLY_OK;
    struct hour_buf *h = NULL;
    for (store_iter_seek(it, k0, 8); store_iter_valid(it); store_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = store_iter_key(it, &kl);
        if (kl != 16) return TALLY_ECORRUPT;
        uint32_t hour = store_get_be32(k + 4);
        if (store_get_be32(k) != x->site || hour >= b) break;
        if (!h || hour != sl->hour[sl->nh - 1]) {
            if (h && h->descents && (rc = hour_order(h))) return rc;
            h = &sl->hb[sl->nh];
            h->n = h->descents = h->nlate = 0;
            h->late_all = false;
            h->lmax_ts = h->bmax_ts = INT64_MIN;
            h->lmax_off = h->bmax_off = 0;
            sl->hour[sl->nh++] = hour;
        }
        const uint8_t *v = store_iter_value(it, &vl);
        if ((rc = block_rows(k, kl, v, vl, x->from, x->to, &x->pj, h))) return rc;
    }
    if ((rc = store_iter_status(it))) return rc;
    if (h && h->descents) rc = hour_order(h);
    return rc;
}

/* With x->mu held: claims the next chunk if its ring slot is free (chunk c uses the slot of
 * chunk c - RAW_CHUNK_SLOTS, free once that one was consumed), decodes it without the lock and
 * publishes it. False when there was nothing to claim now. A chunk is claimed only when its
 * slot is free, so nobody ever waits while holding a claim (the consumer decodes too). */
static bool hscan_step_locked(struct hscan *x, struct store_iter *it)
{
    if (x->stop || x->next >= x->nchunks || x->next >= x->consumed + RAW_CHUNK_SLOTS) return false;
    uint64_t c = x->next++;
    struct chunk_slot *sl = &x->slot[c % RAW_CHUNK_SLOTS];
    pthread_mutex_unlock(&x->mu);
    int rc = chunk_decode(x, it, c, sl);
    pthread_mutex_lock(&x->mu);
    sl->chunk = c;
    sl->rc = rc;
    sl->ready = true;
    pthread_cond_broadcast(&x->cv);
    return true;
}

struct hworker {
    struct hscan *x;
    struct store_iter *it;
    pthread_t tid;
    bool started;
};

static void *hworker_main(void *arg)
{
    struct hworker *w = arg;
    pthread_setname_np(pthread_self(), "tally-scan");
    struct hscan *x = w->x;
    pthread_mutex_lock(&x->mu);
    while (!x->stop && x->next < x->nchunks)
        if (!hscan_step_locked(x, w->it)) pthread_cond_wait(&x->cv, &x->mu);
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

int raw_scan_hours(struct store *s, uint32_t site_id, int64_t from_ms, int64_t to_ms,
                   const int *fields, size_t nfields, size_t rows_max, unsigned threads,
                   raw_hour_fn fn, void *arg)
{
    return raw_scan_hours_props(s, site_id, from_ms, to_ms, fields, nfields, NULL, 0, rows_max,
                                threads, fn, arg);
}

int raw_scan_hours_props(struct store *s, uint32_t site_id, int64_t from_ms, int64_t to_ms,
                         const int *fields, size_t nfields, const uint32_t *prop_keys,
                         size_t nprops, size_t rows_max, unsigned threads, raw_hour_fn fn,
                         void *arg)
{
    if (nfields > RAW_ROW_FIELDS_MAX || nprops > RAW_ROW_FIELDS_MAX - nfields) return TALLY_EINVAL;
    if (nprops && !prop_keys) return TALLY_EINVAL;
    for (size_t f = 0; f < nfields; f++)
        if (fields[f] < 0 || fields[f] >= DE_FIELD_COUNT) return TALLY_EINVAL;
    if (from_ms < 0) from_ms = 0;
    if (to_ms <= from_ms) return TALLY_OK;
    if (threads > RAW_SCAN_THREADS_MAX) threads = RAW_SCAN_THREADS_MAX;
    uint64_t h0 = (uint64_t)(from_ms / RAW_HOUR_MS), h1 = (uint64_t)((to_ms - 1) / RAW_HOUR_MS) + 1;
    { /* the hours the site has blocks in, within the range: a range such as "all" (from the
       * epoch) would otherwise be ~60,000 empty chunks, one seek each (+110 ms a funnel) */
        uint8_t lo[8], hi[8];
        hour_key(lo, site_id, h0);
        hour_key(hi, site_id, h1);
        struct store_iter *it = store_iter_new(s, STORE_CF_RAW, lo, 8, hi, 8);
        if (!it) return TALLY_ENOMEM;
        size_t kl = 0;
        const uint8_t *k = NULL;
        store_iter_seek_first(it);
        bool any = store_iter_valid(it);
        if (any && (k = store_iter_key(it, &kl)) && kl == 16) h0 = store_get_be32(k + 4);
        store_iter_seek_last(it);
        if (store_iter_valid(it) && (k = store_iter_key(it, &kl)) && kl == 16)
            h1 = (uint64_t)store_get_be32(k + 4) + 1;
        int st = store_iter_status(it);
        store_iter_free(it);
        if (st) return st;
        if (!any) return TALLY_OK;
    }
    struct hscan *x = calloc(1, sizeof *x);
    if (!x) return TALLY_ENOMEM;
    *x = (struct hscan){.site = site_id,
                        .first_hour = h0,
                        .nchunks = (h1 - h0 + RAW_CHUNK_HOURS - 1) / RAW_CHUNK_HOURS,
                        .from = from_ms,
                        .to = to_ms,
                        .pj = {.nf = nfields, .np = nprops}};
    if (nfields) memcpy(x->pj.fields, fields, nfields * sizeof *fields);
    if (nprops) memcpy(x->pj.keys, prop_keys, nprops * sizeof *prop_keys);
    for (size_t i = 0; i < RAW_CHUNK_SLOTS; i++)
        for (size_t j = 0; j < RAW_CHUNK_HOURS; j++)
            x->slot[i].hb[j].rows_max = rows_max ? rows_max : SIZE_MAX;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    uint8_t lo[8], hi[8];
    hour_key(lo, site_id, h0);
    hour_key(hi, site_id, h1);
    /* no worker for a scan of one or two chunks: the thread costs more than it saves */
    if (x->nchunks < 3) threads = 0;
    struct hworker w[RAW_SCAN_THREADS_MAX + 1] = {0};
    int rc = TALLY_OK;
    for (unsigned i = 0; i <= threads && !rc; i++) { /* w[threads]: the caller's own */
        w[i].x = x;
        w[i].it = store_iter_new(s, STORE_CF_RAW, lo, 8, hi, 8);
        if (!w[i].it) rc = TALLY_ENOMEM;
    }
    for (unsigned i = 0; i < threads && !rc; i++)
        w[i].started = pthread_create(&w[i].tid, NULL, hworker_main, &w[i]) == 0;
    for (uint64_t c = 0; !rc && c < x->nchunks; c++) {
        struct chunk_slot *sl = &x->slot[c % RAW_CHUNK_SLOTS];
        pthread_mutex_lock(&x->mu);
        /* rather than wait, decode the next unclaimed chunk (this one, when nobody has it) */
        while (!(sl->ready && sl->chunk == c))
            if (!hscan_step_locked(x, w[threads].it)) pthread_cond_wait(&x->cv, &x->mu);
        pthread_mutex_unlock(&x->mu);
        rc = sl->rc;
        for (size_t j = 0; !rc && j < sl->nh; j++)
            if (sl->hb[j].n) rc = fn(arg, (int64_t)sl->hour[j] * RAW_HOUR_MS, sl->hb[j].rows,
                                     sl->hb[j].n);
        pthread_mutex_lock(&x->mu);
        sl->ready = false;
        x->consumed = c + 1;
        if (rc) x->stop = true;
        pthread_cond_broadcast(&x->cv);
        pthread_mutex_unlock(&x->mu);
    }
    pthread_mutex_lock(&x->mu);
    x->stop = true;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
    for (unsigned i = 0; i <= threads; i++) {
        if (w[i].started) pthread_join(w[i].tid, NULL);
        if (w[i].it) store_iter_free(w[i].it);
    }
    for (size_t i = 0; i < RAW_CHUNK_SLOTS; i++)
        for (size_t j = 0; j < RAW_CHUNK_HOURS; j++) {
            free(x->slot[i].hb[j].rows);
            free(x->slot[i].hb[j].tmp);
            free(x->slot[i].hb[j].runs);
            cbuf_free(&x->slot[i].hb[j].z);
        }
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    free(x);
    return rc;
}

int raw_dict_find(struct store *s, uint32_t site_id, const char *str, uint32_t len, uint32_t *id)
{
    if (len == 0) {
        *id = 0;
        return TALLY_OK;
    }
    struct cbuf k = {0};
    dict_key_s(&k, site_id, str, cut_len(str, len));
    if (k.oom) {
        cbuf_free(&k);
        return TALLY_ENOMEM;
    }
    void *v;
    size_t vl;
    int rc = store_get(s, STORE_CF_DICT, k.p, k.len, &v, &vl);
    cbuf_free(&k);
    if (rc) return rc;
    rc = vl == 4 ? TALLY_OK : TALLY_ECORRUPT;
    if (rc == TALLY_OK) *id = store_get_be32(v);
    free(v);
    return rc;
}

int raw_dict_string(struct store *s, uint32_t site_id, uint32_t id, char **out, uint32_t *len)
{
    if (id == 0) {
        *out = strdup("");
        *len = 0;
        return *out ? TALLY_OK : TALLY_ENOMEM;
    }
    uint8_t k[9] = {'I'};
    store_put_be32(k + 1, site_id);
    store_put_be32(k + 5, id);
    void *v;
    size_t vl;
    int rc = store_get(s, STORE_CF_DICT, k, 9, &v, &vl);
    if (rc) return rc;
    char *p = realloc(v, vl + 1);
    if (!p) {
        free(v);
        return TALLY_ENOMEM;
    }
    p[vl] = 0;
    *out = p;
    *len = (uint32_t)vl;
    return TALLY_OK;
}

int raw_dict_each(struct store *s, uint32_t site_id,
                  int (*fn)(void *arg, uint32_t id, const char *str, uint32_t len), void *arg)
{
    uint8_t lo[5] = {'I'}, hi[5] = {'I'};
    store_put_be32(lo + 1, site_id);
    store_put_be32(hi + 1, site_id + 1);
    struct store_iter *it = store_iter_new(s, STORE_CF_DICT, lo, 5, hi, 5);
    if (!it) return TALLY_ENOMEM;
    int rc = TALLY_OK;
    for (store_iter_seek_first(it); store_iter_valid(it) && rc == 0; store_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *v = store_iter_value(it, &vl);
        if (kl != 9) continue;
        rc = fn(arg, store_get_be32(k + 5), (const char *)v, (uint32_t)vl);
    }
    if (rc == 0) rc = store_iter_status(it);
    store_iter_free(it);
    return rc;
}

int raw_retention(struct store *s, uint32_t site_id, int64_t cut_ms)
{
    if (cut_ms <= 0) return TALLY_OK;
    uint8_t lo[4], hi[8];
    store_put_be32(lo, site_id);
    store_put_be32(hi, site_id);
    store_put_be32(hi + 4, (uint32_t)(cut_ms / RAW_HOUR_MS));
    struct store_batch *b = store_batch_new(s);
    if (!b) return TALLY_ENOMEM;
    store_batch_delete_range(b, STORE_CF_RAW, lo, 4, hi, 8);
    int rc = store_write(s, b);
    store_batch_free(b);
    return rc;
}

/* ---- compaction ---- */

struct compact {
    struct raw_writer *w;
    uint32_t site;
    uint64_t rows;
};

/* A decoded event back into w's rows, ids as they are (no dictionary work). */
static int compact_add(void *arg, const struct raw_event *ev)
{
    struct compact *c = arg;
    struct raw_writer *w = c->w;
    if (++c->rows > RAW_COMPACT_EVENTS_MAX) return TALLY_ETOOBIG;
    uint32_t np = ev->props_count > DE_PROPS_MAX ? DE_PROPS_MAX : ev->props_count;
    int rc = writer_reserve(w, np);
    if (rc) return rc;
    struct row *r = &w->rows[w->nrows++];
    *r = (struct row){.offset = ev->offset, .ts_ms = ev->ts_ms, .received_ms = ev->received_ms,
                      .visitor = ev->visitor, .site = c->site,
                      .hour = (uint32_t)(ev->ts_ms / RAW_HOUR_MS), .flags = ev->flags,
                      .props_off = (uint32_t)w->nprops, .props_n = np,
                      .has_revenue = ev->has_revenue, .revenue_micros = ev->revenue_micros,
                      .currency_id = ev->currency_id};
    memcpy(r->id, ev->id, sizeof r->id);
    if (np) memcpy(w->props + w->nprops, ev->props, np * sizeof *ev->props);
    w->nprops += np;
    return TALLY_OK;
}

/* The events in a block's header (version byte, then the count); 0 when unreadable. */
static uint64_t block_events(const uint8_t *val, size_t vlen)
{
    if (vlen < 2 || (val[0] != BLOCK_VERSION && val[0] != BLOCK_VERSION_COLUMNS)) return 0;
    const uint8_t *p = val + 1;
    bool bad = false;
    uint64_t n = pvarint(&p, val + vlen, &bad);
    return bad ? 0 : n;
}

int raw_compact_hour(struct store *s, uint32_t site_id, uint32_t hour,
                     struct raw_compact_stats *st)
{
    memset(st, 0, sizeof *st);
    uint8_t lo[8], hi[8];
    hour_key(lo, site_id, hour);
    hour_key(hi, site_id, (uint64_t)hour + 1);
    /* (blocks about to be replaced: not worth a place in the cache the queries read) */
    struct store_iter *it = store_iter_new_uncached(s, STORE_CF_RAW, lo, 8, hi, 8);
    struct raw_writer *w = raw_writer_new(s);
    struct store_batch *b = store_batch_new(s);
    int rc = it && w && b ? TALLY_OK : TALLY_ENOMEM;
    struct compact c = {.w = w, .site = site_id};
    /* first the block headers only: is there anything to gain? */
    if (!rc) store_iter_seek_first(it);
    for (; !rc && store_iter_valid(it); store_iter_next(it)) {
        size_t vl;
        const uint8_t *v = store_iter_value(it, &vl);
        uint64_t n = block_events(v, vl);
        st->blocks_before++;
        st->events += n;
        if (n < RAW_BLOCK_EVENTS_MAX / 2) st->small_before++;
    }
    if (!rc) rc = store_iter_status(it);
    /* already as few blocks as the events need, or fewer than 2 small ones: nothing to do */
    uint64_t need = (st->events + RAW_BLOCK_EVENTS_MAX - 1) / RAW_BLOCK_EVENTS_MAX;
    st->blocks_after = st->blocks_before;
    if (!rc && (st->blocks_before <= need || st->small_before < 2)) goto out;
    if (!rc && st->events > RAW_COMPACT_EVENTS_MAX) rc = TALLY_ETOOBIG;
    /* every block of the hour (the same iterator, the same view): its key deleted, its events
     * decoded */
    if (!rc) store_iter_seek_first(it);
    for (; !rc && store_iter_valid(it); store_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *v = store_iter_value(it, &vl);
        store_batch_delete(b, STORE_CF_RAW, k, kl);
        rc = raw_block_decode(k, kl, v, vl, compact_add, &c);
    }
    if (!rc) rc = store_iter_status(it);
    if (!rc && c.rows != st->events) rc = TALLY_ECORRUPT; /* headers and contents disagree */
    if (!rc) rc = raw_writer_flush(w, b); /* the new blocks after the deletes: a key is put */
    if (!rc) rc = store_write(s, b);
    if (!rc) st->blocks_after = need;
out:
    store_iter_free(it);
    store_batch_free(b);
    raw_writer_free(w);
    return rc;
}
