/* rollup reads and digest: see rollup.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "rollup/rollup.h"
#include "store/memo.h"
#include "store/strtab.h"
#include "tally/error.h"

static uint32_t bucket_ceil(int64_t ms)
{
    if (ms <= 0) return 0;
    int64_t b = (ms + 59999) / 60000;
    return b > UINT32_MAX ? UINT32_MAX : (uint32_t)b;
}

typedef int (*cell_cb)(void *arg, uint32_t bucket, const char *value, size_t vlen,
                       const uint8_t *val, size_t len);

/* Calls cb for every stored cell of (site, g, dim) with bucket key instant in [from, to). */
static int each_cell(struct store *s, uint32_t site, enum tz_gran g, int dim, int64_t from_ms,
                     int64_t to_ms, cell_cb cb, void *arg)
{
    uint32_t b0 = bucket_ceil(from_ms), b1 = bucket_ceil(to_ms);
    if (b1 <= b0) return TALLY_OK;
    uint8_t lo[10], hi[10];
    size_t ll, hl;
    if (g == TZ_MINUTE) {
        lo[0] = hi[0] = 'm';
        store_put_be32(lo + 1, b0);
        store_put_be32(hi + 1, b1);
        ll = hl = 5;
    } else {
        cell_key_prefix(lo, g, site, dim);
        cell_key_prefix(hi, g, site, dim);
        store_put_be32(lo + 6, b0);
        store_put_be32(hi + 6, b1);
        ll = hl = 10;
    }
    struct store_iter *it = store_iter_new(s, STORE_CF_ROLLUPS, lo, ll, hi, hl);
    if (!it) return TALLY_ENOMEM;
    int rc = TALLY_OK;
    for (store_iter_seek_first(it); store_iter_valid(it) && !rc; store_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *v = store_iter_value(it, &vl);
        int kg, kd;
        uint32_t ks, kb;
        const char *val;
        size_t vlen;
        if (!cell_key_parse(k, kl, &kg, &ks, &kd, &kb, &val, &vlen)) continue;
        if (ks != site || kd != dim || kg != (int)g) continue;
        rc = cb(arg, kb, val, vlen, v, vl);
    }
    if (!rc) rc = store_iter_status(it);
    store_iter_free(it);
    return rc;
}

struct agg {
    struct cell sum;
    struct cell_union *u;
};

static void agg_init(struct agg *a)
{
    cell_init(&a->sum);
    a->u = NULL;
}

static void agg_free(struct agg *a)
{
    cell_free(&a->sum);
    cell_union_free(a->u);
    a->u = NULL;
}

static int agg_add(struct agg *a, const uint8_t *val, size_t len)
{
    struct cell_view c;
    int rc = cell_view_parse(val, len, &c);
    if (rc) return rc;
    a->sum.pageviews += c.pageviews;
    a->sum.events += c.events;
    a->sum.visits += c.visits;
    a->sum.bounces += c.bounces;
    a->sum.duration_ms += c.duration_ms;
    if (c.nrev) rc = cell_view_add_revenue(&c, &a->sum);
    if (!rc && (c.hll || c.has_ms)) {
        if (!a->u && !(a->u = cell_union_new())) rc = TALLY_ENOMEM;
        if (!rc) rc = cell_union_add_view(a->u, &c);
    }
    return rc;
}

static void agg_metrics(const struct agg *a, struct rollup_metrics *m)
{
    memset(m, 0, sizeof *m);
    m->pageviews = a->sum.pageviews;
    m->events = a->sum.events;
    m->visits = a->sum.visits;
    m->bounces = a->sum.bounces;
    m->duration_ms = a->sum.duration_ms;
    m->visitors_exact = true;
    if (a->u) m->visitors = cell_union_count(a->u, &m->visitors_exact);
    m->nrev = a->sum.nrev;
    for (uint32_t i = 0; i < a->sum.nrev && i < ROLLUP_CURRENCIES_MAX; i++)
        m->rev[i] = a->sum.rev[i];
}

struct value_ctx {
    const char *value;
    size_t vlen;
    struct agg a;
    rollup_series_fn fn;
    void *arg;
};

static int value_cb(void *arg, uint32_t bucket, const char *value, size_t vlen,
                    const uint8_t *val, size_t len)
{
    struct value_ctx *c = arg;
    (void)bucket;
    if (vlen != c->vlen || memcmp(value, c->value, vlen) != 0) return 0;
    return agg_add(&c->a, val, len);
}

int rollup_read_value(struct store *s, uint32_t site, enum tz_gran g, int dim, const char *value,
                      size_t vlen, int64_t from_ms, int64_t to_ms, struct rollup_metrics *out)
{
    struct value_ctx c = {.value = value, .vlen = vlen};
    agg_init(&c.a);
    int rc = each_cell(s, site, g, dim, from_ms, to_ms, value_cb, &c);
    agg_metrics(&c.a, out);
    agg_free(&c.a);
    return rc;
}

static int series_cb(void *arg, uint32_t bucket, const char *value, size_t vlen,
                     const uint8_t *val, size_t len)
{
    struct value_ctx *c = arg;
    if (vlen != c->vlen || memcmp(value, c->value, vlen) != 0) return 0;
    struct agg a;
    agg_init(&a);
    int rc = agg_add(&a, val, len);
    if (!rc) {
        struct rollup_metrics m;
        agg_metrics(&a, &m);
        rc = c->fn(c->arg, (int64_t)bucket * 60000, &m);
    }
    agg_free(&a);
    return rc;
}

int rollup_read_series(struct store *s, uint32_t site, enum tz_gran g, int dim,
                       const char *value, size_t vlen, int64_t from_ms, int64_t to_ms,
                       rollup_series_fn fn, void *arg)
{
    struct value_ctx c = {.value = value, .vlen = vlen, .fn = fn, .arg = arg};
    return each_cell(s, site, g, dim, from_ms, to_ms, series_cb, &c);
}

struct breakdown_ctx {
    struct strtab *values;
    struct agg *aggs;
    size_t n, cap, max;
};

static void bd_free(struct breakdown_ctx *c)
{
    for (size_t i = 0; i < c->n; i++) agg_free(&c->aggs[i]);
    free(c->aggs);
    strtab_free(c->values);
}

/* The aggregate of value (created empty on first sight). NULL with *rc set on failure. */
static struct agg *bd_agg(struct breakdown_ctx *c, const char *value, size_t vlen, int *rc)
{
    bool created;
    int64_t i = strtab_intern(c->values, 0, value, (uint32_t)vlen, &created);
    if (i < 0) {
        *rc = TALLY_ENOMEM;
        return NULL;
    }
    if (created) {
        if ((size_t)i >= c->max) {
            *rc = TALLY_ETOOBIG;
            return NULL;
        }
        if ((size_t)i >= c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 256;
            struct agg *p = realloc(c->aggs, cap * sizeof *p);
            if (!p) {
                *rc = TALLY_ENOMEM;
                return NULL;
            }
            c->aggs = p;
            c->cap = cap;
        }
        agg_init(&c->aggs[i]);
        c->n = (size_t)i + 1;
    }
    return &c->aggs[i];
}

static int breakdown_cb(void *arg, uint32_t bucket, const char *value, size_t vlen,
                        const uint8_t *val, size_t len)
{
    struct breakdown_ctx *c = arg;
    (void)bucket;
    int rc = TALLY_OK;
    struct agg *a = bd_agg(c, value, vlen, &rc);
    return a ? agg_add(a, val, len) : rc;
}

struct order {
    const char *s;
    uint32_t len;
    size_t i;
};

static int order_cmp(const void *a, const void *b)
{
    const struct order *x = a, *y = b;
    uint32_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* A breakdown's answer as stored in the memo: per value, in ascending byte order,
 * u32 vlen | value bytes | struct rollup_metrics (this process's layout: never persisted). */
static int emit_answer(const uint8_t *p, size_t len, rollup_breakdown_fn fn, void *arg)
{
    if (len == 0) return TALLY_OK;
    const uint8_t *end = p + len;
    int rc = TALLY_OK;
    while (!rc && p < end) {
        uint32_t vlen;
        struct rollup_metrics m;
        memcpy(&vlen, p, sizeof vlen);
        p += sizeof vlen;
        const char *v = (const char *)p;
        p += vlen;
        memcpy(&m, p, sizeof m);
        p += sizeof m;
        rc = fn(arg, v, vlen, &m);
    }
    return rc;
}

/* The answer of c (emit_answer's layout) into out; counts the unions (they end there). */
static int bd_answer(struct breakdown_ctx *c, struct cbuf *out)
{
    if (!c->n) return TALLY_OK;
    struct order *ord = malloc(c->n * sizeof *ord);
    if (!ord) return TALLY_ENOMEM;
    for (size_t i = 0; i < c->n; i++) {
        ord[i].s = strtab_str(c->values, (uint32_t)i, &ord[i].len);
        ord[i].i = i;
    }
    if (c->n > 1) qsort(ord, c->n, sizeof *ord, order_cmp);
    for (size_t i = 0; i < c->n; i++) {
        struct rollup_metrics m;
        agg_metrics(&c->aggs[ord[i].i], &m);
        cbuf_put(out, &ord[i].len, sizeof ord[i].len);
        cbuf_put(out, ord[i].s, ord[i].len);
        cbuf_put(out, &m, sizeof m);
    }
    free(ord);
    return out->oom ? TALLY_ENOMEM : TALLY_OK;
}

/*
 * A breakdown's partial state (the days before the split), kept in the memo so that a range
 * ending today reads only today's cells: per value, u32 vlen | value | 5 x i64 counters
 * (pageviews, events, visits, bounces, duration) | u32 nrev | nrev x struct cell_rev | the
 * value's saved union (cell.h). In-process only.
 */
static int bd_save(struct breakdown_ctx *c, struct cbuf *out)
{
    int rc = TALLY_OK;
    for (size_t i = 0; i < c->n && !rc; i++) {
        uint32_t vlen;
        const char *v = strtab_str(c->values, (uint32_t)i, &vlen);
        const struct agg *a = &c->aggs[i];
        int64_t k[5] = {a->sum.pageviews, a->sum.events, a->sum.visits, a->sum.bounces,
                        a->sum.duration_ms};
        uint8_t has_u = a->u ? 1 : 0;
        cbuf_put(out, &vlen, sizeof vlen);
        cbuf_put(out, v, vlen);
        cbuf_put(out, k, sizeof k);
        cbuf_put(out, &a->sum.nrev, sizeof a->sum.nrev);
        cbuf_put(out, a->sum.rev, a->sum.nrev * sizeof *a->sum.rev);
        cbuf_put(out, &has_u, 1);
        if (a->u) rc = cell_union_save(a->u, out);
    }
    return rc ? rc : out->oom ? TALLY_ENOMEM : TALLY_OK;
}

static int bd_load(struct breakdown_ctx *c, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    int rc = TALLY_OK;
    while (!rc && p < end) {
        uint32_t vlen, nrev;
        int64_t k[5];
        memcpy(&vlen, p, sizeof vlen);
        p += sizeof vlen;
        const char *v = (const char *)p;
        p += vlen;
        memcpy(k, p, sizeof k);
        p += sizeof k;
        memcpy(&nrev, p, sizeof nrev);
        p += sizeof nrev;
        struct agg *a = bd_agg(c, v, vlen, &rc);
        if (!a) break;
        a->sum.pageviews += k[0];
        a->sum.events += k[1];
        a->sum.visits += k[2];
        a->sum.bounces += k[3];
        a->sum.duration_ms += k[4];
        for (uint32_t i = 0; i < nrev && !rc; i++, p += sizeof(struct cell_rev)) {
            struct cell_rev r;
            memcpy(&r, p, sizeof r);
            rc = cell_add_revenue(&a->sum, r.cur, r.micros);
        }
        uint8_t has_u = *p++;
        if (!rc && has_u) {
            size_t used = 0;
            if (!a->u && !(a->u = cell_union_new())) rc = TALLY_ENOMEM;
            if (!rc) rc = cell_union_add_saved(a->u, p, (size_t)(end - p), &used);
            p += used;
        }
    }
    return rc;
}

/* The memo key of a breakdown answer ('B') or partial state ('P') over [b0, b1). */
static void bd_key(uint8_t key[22], uint8_t kind, uint32_t site, int dim, uint32_t b0,
                   uint32_t b1, size_t values_max)
{
    key[0] = kind;
    store_put_be32(key + 1, site);
    key[5] = (uint8_t)dim;
    store_put_be32(key + 6, b0);
    store_put_be32(key + 10, b1);
    store_put_be64(key + 14, (uint64_t)values_max);
}

/* Fills c with the cells of [from_ms, split_ms) from the memo's partial state, or reads them
 * and keeps their state when it fits. */
static int bd_prefix(struct store *s, struct memo *mo, uint64_t built, uint32_t site,
                     enum tz_gran g, int dim, int64_t from_ms, int64_t split_ms,
                     size_t values_max, struct breakdown_ctx *c)
{
    uint32_t b0 = bucket_ceil(from_ms), bs = bucket_ceil(split_ms);
    uint8_t key[22];
    bd_key(key, 'P', site, dim, b0, bs, values_max);
    void *val;
    size_t len;
    int rc = memo_get(mo, key, sizeof key, memo_range_seq(mo, site, b0, bs), &val, &len);
    if (rc < 0) return rc;
    bool too_large = false;
    if (rc == 1) {
        /* u8 1 and the state, or u8 0: the state was too large to keep */
        too_large = len < 1 || ((uint8_t *)val)[0] == 0;
        rc = too_large ? TALLY_OK : bd_load(c, (uint8_t *)val + 1, len - 1);
        free(val);
        if (!too_large) return rc;
    }
    rc = each_cell(s, site, g, dim, from_ms, split_ms, breakdown_cb, c);
    if (rc || too_large) return rc;
    /* kept when its sets, deduplicated, take at most a quarter of the memo; hopeless sizes
     * (a 30-day page breakdown of a busy site: one id per visitor, page and day) are not
     * even deduplicated */
    struct memo_stats ms;
    memo_stats(mo, &ms);
    size_t bound = 0;
    for (size_t i = 0; i < c->n; i++)
        bound += 64 + (c->aggs[i].u ? cell_union_saved_bytes_max(c->aggs[i].u) : 0);
    if (bound <= ms.bytes_max) {
        bound = 0;
        for (size_t i = 0; i < c->n && !rc; i++) {
            bound += 64;
            if (!c->aggs[i].u) continue;
            rc = cell_union_compact(c->aggs[i].u);
            bound += cell_union_saved_bytes_max(c->aggs[i].u);
        }
        if (rc) return rc;
    }
    struct cbuf st = {0};
    uint8_t kind = bound <= ms.bytes_max / 4;
    cbuf_put(&st, &kind, 1); /* 0: remembered as too large, so the next read does not try */
    if (kind) rc = bd_save(c, &st);
    if (!rc) memo_put(mo, key, sizeof key, st.p, st.len, built);
    free(st.p);
    return rc;
}

int rollup_read_breakdown(struct store *s, uint32_t site, enum tz_gran g, int dim,
                          int64_t from_ms, int64_t to_ms, size_t values_max,
                          rollup_breakdown_fn fn, void *arg)
{
    return rollup_read_breakdown_split(s, site, g, dim, from_ms, to_ms, to_ms, values_max, fn,
                                       arg);
}

int rollup_read_breakdown_split(struct store *s, uint32_t site, enum tz_gran g, int dim,
                                int64_t from_ms, int64_t split_ms, int64_t to_ms,
                                size_t values_max, rollup_breakdown_fn fn, void *arg)
{
    if (!values_max) values_max = ROLLUP_BREAKDOWN_VALUES_MAX;
    uint32_t b0 = bucket_ceil(from_ms), b1 = bucket_ceil(to_ms);
    if (b1 <= b0) return TALLY_OK;
    /* Day breakdowns (the dashboard's top lists) go through the memo (store/memo.h): the
     * answer is kept until a cell of one of the range's days changes; the state of the days
     * before split_ms too, so that a range ending today reads only today's cells. */
    struct memo *mo = g == TZ_DAY ? store_memo(s) : NULL;
    uint8_t key[22];
    uint64_t built = 0;
    int rc;
    if (mo) {
        built = memo_now(mo);
        bd_key(key, 'B', site, dim, b0, b1, values_max);
        void *val;
        size_t len;
        rc = memo_get(mo, key, sizeof key, memo_range_seq(mo, site, b0, b1), &val, &len);
        if (rc < 0) return rc;
        if (rc == 1) {
            rc = emit_answer(val, len, fn, arg);
            free(val);
            return rc;
        }
    }
    struct breakdown_ctx c = {.values = strtab_new(), .max = values_max};
    if (!c.values) return TALLY_ENOMEM;
    if (mo && split_ms > from_ms && split_ms < to_ms) {
        rc = bd_prefix(s, mo, built, site, g, dim, from_ms, split_ms, values_max, &c);
        if (!rc) rc = each_cell(s, site, g, dim, split_ms, to_ms, breakdown_cb, &c);
    } else {
        rc = each_cell(s, site, g, dim, from_ms, to_ms, breakdown_cb, &c);
    }
    struct cbuf ans = {0};
    if (!rc) rc = bd_answer(&c, &ans);
    bd_free(&c);
    if (!rc && mo) memo_put(mo, key, sizeof key, ans.p, ans.len, built);
    if (!rc) rc = emit_answer(ans.p, ans.len, fn, arg);
    free(ans.p);
    return rc;
}

/* ---- reads over a set of values ---- */

struct match_ctx {
    rollup_value_pred pred;
    void *parg;
    struct agg a;          /* the current bucket (series) or the whole range */
    uint32_t bucket;       /* series: the bucket being aggregated */
    bool open;             /* series: a has content for `bucket` */
    bool series;
    rollup_series_fn fn;
    void *arg;
    struct strtab *seen; /* one_value: the accepted value seen so far */
    bool one_value;      /* a second accepted value ends the read: TALLY_ENOTSUP */
};

static int match_emit(struct match_ctx *c)
{
    if (!c->open) return TALLY_OK;
    struct rollup_metrics m;
    agg_metrics(&c->a, &m);
    agg_free(&c->a);
    agg_init(&c->a);
    c->open = false;
    return c->fn(c->arg, (int64_t)c->bucket * 60000, &m);
}

static int match_cb(void *arg, uint32_t bucket, const char *value, size_t vlen,
                    const uint8_t *val, size_t len)
{
    struct match_ctx *c = arg;
    if (c->pred && !c->pred(c->parg, value, vlen)) return 0;
    if (c->one_value) {
        bool created;
        if (strtab_intern(c->seen, 0, value, (uint32_t)vlen, &created) < 0) return TALLY_ENOMEM;
        if (strtab_count(c->seen) > 1) return TALLY_ENOTSUP;
    }
    if (c->series && c->open && bucket != c->bucket) {
        int rc = match_emit(c);
        if (rc) return rc;
    }
    c->bucket = bucket;
    c->open = true;
    return agg_add(&c->a, val, len);
}

int rollup_read_matching(struct store *s, uint32_t site, enum tz_gran g, int dim,
                         rollup_value_pred pred, void *parg, int64_t from_ms, int64_t to_ms,
                         bool one_value, struct rollup_metrics *out)
{
    struct match_ctx c = {.pred = pred, .parg = parg, .one_value = one_value};
    if (one_value && !(c.seen = strtab_new())) return TALLY_ENOMEM;
    agg_init(&c.a);
    int rc = each_cell(s, site, g, dim, from_ms, to_ms, match_cb, &c);
    agg_metrics(&c.a, out);
    agg_free(&c.a);
    strtab_free(c.seen);
    return rc;
}

int rollup_read_series_matching(struct store *s, uint32_t site, enum tz_gran g, int dim,
                                rollup_value_pred pred, void *parg, int64_t from_ms, int64_t to_ms,
                                bool one_value, rollup_series_fn fn, void *arg)
{
    struct match_ctx c = {
        .pred = pred, .parg = parg, .series = true, .fn = fn, .arg = arg, .one_value = one_value};
    if (one_value && !(c.seen = strtab_new())) return TALLY_ENOMEM;
    agg_init(&c.a);
    int rc = each_cell(s, site, g, dim, from_ms, to_ms, match_cb, &c);
    if (!rc) rc = match_emit(&c);
    agg_free(&c.a);
    strtab_free(c.seen);
    return rc;
}

/* ---- digest ---- */

struct digest_acc {
    uint64_t lo, hi, n;
};

static void acc_add(struct digest_acc *a, XXH128_hash_t h)
{
    uint64_t lo = a->lo + h.low64;
    a->hi += h.high64 + (lo < a->lo);
    a->lo = lo;
    a->n++;
}

struct name_cache {
    uint32_t id;
    char name[STORE_SITE_NAME_BYTES_MAX + 1];
    size_t len;
};

static const char *site_name(struct store *s, struct name_cache *nc, uint32_t id, size_t *len)
{
    if (nc->id != id) {
        nc->id = id;
        if (store_site_name(s, id, nc->name, sizeof nc->name) != 0)
            snprintf(nc->name, sizeof nc->name, "#%u", id);
        nc->len = strlen(nc->name);
    }
    *len = nc->len;
    return nc->name;
}

/* Hashes (tag, site name, key without the site id, value). */
static XXH128_hash_t entry_hash(XXH3_state_t *st, uint8_t tag, const char *name, size_t nlen,
                                const uint8_t *k1, size_t l1, const uint8_t *k2, size_t l2,
                                const uint8_t *v, size_t vl)
{
    uint8_t lens[4 + 4 * 4];
    lens[0] = tag;
    store_put_be32(lens + 1, (uint32_t)nlen);
    store_put_be32(lens + 5, (uint32_t)l1);
    store_put_be32(lens + 9, (uint32_t)l2);
    store_put_be32(lens + 13, (uint32_t)vl);
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, lens, 17);
    XXH3_128bits_update(st, name, nlen);
    XXH3_128bits_update(st, k1, l1);
    XXH3_128bits_update(st, k2, l2);
    XXH3_128bits_update(st, v, vl);
    return XXH3_128bits_digest(st);
}

int rollup_digest(struct store *s, const char *site, struct rollup_digest *out)
{
    memset(out, 0, sizeof *out);
    uint32_t only = 0;
    if (site) {
        int rc = store_site_id(s, site, strlen(site), false, &only);
        if (rc == TALLY_ENOENT) only = UINT32_MAX; /* nothing stored: the empty digest */
        else if (rc) return rc;
    }
    XXH3_state_t *st = XXH3_createState();
    if (!st) return TALLY_ENOMEM;
    struct digest_acc acc = {0, 0, 0}, cells = {0, 0, 0}, visits = {0, 0, 0};
    struct name_cache nc = {.id = 0};
    int rc = TALLY_OK;
    struct store_iter *it = store_iter_new(s, STORE_CF_ROLLUPS, NULL, 0, NULL, 0);
    if (!it) rc = TALLY_ENOMEM;
    else store_iter_seek_first(it);
    for (; !rc && store_iter_valid(it); store_iter_next(it)) {
        size_t kl, vl, nlen;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *v = store_iter_value(it, &vl);
        if (kl < 10) continue;
        uint32_t id = k[0] == 'm' ? store_get_be32(k + 5) : store_get_be32(k + 1);
        if (only && id != only) continue;
        const char *name = site_name(s, &nc, id, &nlen);
        XXH128_hash_t h;
        if (k[0] == 'm')
            h = entry_hash(st, 'm', name, nlen, k + 1, 4, k + 9, kl - 9, v, vl);
        else
            h = entry_hash(st, k[0], name, nlen, NULL, 0, k + 5, kl - 5, v, vl);
        acc_add(&acc, h);
        acc_add(&cells, h);
        out->cells++;
    }
    if (!rc) rc = store_iter_status(it);
    store_iter_free(it);
    it = NULL;
    if (!rc && !(it = store_iter_new(s, STORE_CF_SESSIONS, NULL, 0, NULL, 0))) rc = TALLY_ENOMEM;
    if (!rc) store_iter_seek_first(it);
    for (; !rc && store_iter_valid(it); store_iter_next(it)) {
        size_t kl, vl, nlen;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *v = store_iter_value(it, &vl);
        if (kl < 4) continue;
        uint32_t id = store_get_be32(k);
        if (only && id != only) continue;
        const char *name = site_name(s, &nc, id, &nlen);
        XXH128_hash_t h = entry_hash(st, 's', name, nlen, NULL, 0, k + 4, kl - 4, v, vl);
        acc_add(&acc, h);
        acc_add(&visits, h);
        out->visits++;
    }
    if (!rc && it) rc = store_iter_status(it);
    store_iter_free(it);
    XXH3_freeState(st);
    snprintf(out->hex, sizeof out->hex, "%016llx%016llx", (unsigned long long)acc.hi,
             (unsigned long long)acc.lo);
    snprintf(out->cells_hex, sizeof out->cells_hex, "%016llx%016llx",
             (unsigned long long)cells.hi, (unsigned long long)cells.lo);
    snprintf(out->visits_hex, sizeof out->visits_hex, "%016llx%016llx",
             (unsigned long long)visits.hi, (unsigned long long)visits.lo);
    return rc;
}
