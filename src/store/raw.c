/* raw: see raw.h for the key and block layouts and the dictionary rules. */
#include "store/raw.h"

#include <stdlib.h>
#include <string.h>

#include "store/codec.h"
#include "store/strtab.h"
#include "tally/error.h"

#define MASK_VISITOR 0x1u
#define MASK_FLAGS 0x2u
#define MASK_FIELD0 2
#define MASK_PROPS (1u << 21)
#define MASK_REVENUE (1u << 22)
#define BLOCK_VERSION 1

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
};

struct raw_writer *raw_writer_new(struct store *s)
{
    struct raw_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->s = s;
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

int raw_writer_add(struct raw_writer *w, uint32_t site_id, const struct devent *ev,
                   uint32_t extra_flags)
{
    if (site_id == 0 || site_id >= STORE_SITES_MAX) return TALLY_EINVAL;
    if (w->nrows == w->caprows) {
        size_t cap = w->caprows ? w->caprows * 2 : 1024;
        struct row *p = realloc(w->rows, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        w->rows = p;
        w->caprows = cap;
    }
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
    int rc;
    for (int f = 0; f < DE_FIELD_COUNT; f++)
        if ((rc = dict_id(w, site_id, ev->str[f], &r->id[f]))) return rc;
    uint32_t np = ev->props_count > DE_PROPS_MAX ? DE_PROPS_MAX : ev->props_count;
    if (np) {
        if (w->nprops + np > w->capprops) {
            size_t cap = w->capprops ? w->capprops : 1024;
            while (cap < w->nprops + np) cap *= 2;
            struct raw_prop *p = realloc(w->props, cap * sizeof *p);
            if (!p) return TALLY_ENOMEM;
            w->props = p;
            w->capprops = cap;
        }
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

static const struct row *sort_rows;

static int row_cmp(const void *a, const void *b)
{
    const struct row *x = &sort_rows[*(const uint32_t *)a], *y = &sort_rows[*(const uint32_t *)b];
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

int raw_writer_flush(struct raw_writer *w, struct store_batch *b)
{
    /* sort an index, not the (large) rows */
    uint32_t *order = malloc((w->nrows ? w->nrows : 1) * sizeof *order);
    if (!order) return TALLY_ENOMEM;
    for (size_t i = 0; i < w->nrows; i++) order[i] = (uint32_t)i;
    sort_rows = w->rows;
    if (w->nrows > 1) qsort(order, w->nrows, sizeof *order, row_cmp);
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

int raw_block_decode(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                     raw_scan_fn fn, void *arg)
{
    if (klen != 16) return TALLY_ECORRUPT;
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
        ev.ts_ms += creader_svarint(&r);
        ev.received_ms = ev.ts_ms + creader_svarint(&r);
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
        if (ev.ts_ms / RAW_HOUR_MS != hour) return TALLY_ECORRUPT;
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

int raw_scan(struct store *s, uint32_t site_id, int64_t from_ms, int64_t to_ms, raw_scan_fn fn,
             void *arg)
{
    if (from_ms < 0) from_ms = 0;
    if (to_ms <= from_ms) return TALLY_OK;
    uint8_t lo[8], hi[8];
    store_put_be32(lo, site_id);
    store_put_be32(lo + 4, (uint32_t)(from_ms / RAW_HOUR_MS));
    uint64_t end_hour = (uint64_t)((to_ms - 1) / RAW_HOUR_MS) + 1;
    if (end_hour > UINT32_MAX) {
        store_put_be32(hi, site_id + 1);
        store_put_be32(hi + 4, 0);
    } else {
        store_put_be32(hi, site_id);
        store_put_be32(hi + 4, (uint32_t)end_hour);
    }
    struct store_iter *it = store_iter_new(s, STORE_CF_RAW, lo, 8, hi, 8);
    if (!it) return TALLY_ENOMEM;
    struct scan_filter f = {from_ms, to_ms, fn, arg};
    int rc = TALLY_OK;
    for (store_iter_seek_first(it); store_iter_valid(it) && rc == 0; store_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *v = store_iter_value(it, &vl);
        rc = raw_block_decode(k, kl, v, vl, scan_cb, &f);
    }
    if (rc == 0) rc = store_iter_status(it);
    store_iter_free(it);
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
