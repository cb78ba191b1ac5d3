/* cell: see cell.h for the metric rules, the key and value layouts. */
#include "rollup/cell.h"

#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "tally/error.h"

#define PRESENT_PV 0x01u
#define PRESENT_EV 0x02u
#define PRESENT_VISITS 0x04u
#define PRESENT_BOUNCES 0x08u
#define PRESENT_DUR 0x10u
#define PRESENT_REV 0x20u
#define PRESENT_HLL 0x40u
#define PRESENT_MS 0x80u
#define UNION_ITEMS_MAX (1u << 20)

static const char *const dim_names[ROLLUP_DIM_COUNT] = {
    "total",
    "event:page",
    "event:hostname",
    "event:name",
    "event:props",
    "visit:entry_page",
    "visit:exit_page",
    "visit:source",
    "visit:referrer",
    "visit:channel",
    "visit:utm_source",
    "visit:utm_medium",
    "visit:utm_campaign",
    "visit:utm_content",
    "visit:utm_term",
    "visit:device",
    "visit:browser",
    "visit:browser_version",
    "visit:os",
    "visit:os_version",
    "visit:country",
    "visit:region",
    "visit:city",
};

const char *rollup_dim_name(enum rollup_dim d)
{
    return (unsigned)d < ROLLUP_DIM_COUNT ? dim_names[d] : "?";
}

int rollup_dim_parse(const char *name)
{
    if (strncmp(name, "event:props:", 12) == 0) return ROLLUP_DIM_PROP;
    for (int i = 0; i < ROLLUP_DIM_COUNT; i++)
        if (strcmp(name, dim_names[i]) == 0) return i;
    return -1;
}

void cell_init(struct cell *c)
{
    memset(c, 0, sizeof *c);
}

void cell_free(struct cell *c)
{
    free(c->rev);
    hll_free(c->hll);
    free(c->ms);
    cell_init(c);
}

bool cell_is_empty(const struct cell *c)
{
    return !c->pageviews && !c->events && !c->visits && !c->bounces && !c->duration_ms &&
           !c->nrev && (!c->hll || hll_count(c->hll) == 0) && !c->nms;
}

static uint64_t sample_limit(uint8_t level)
{
    return level == 0 ? UINT64_MAX : (UINT64_MAX >> level);
}

static bool sampled_in(uint64_t visitor, uint8_t level)
{
    return level == 0 || hll_mix(visitor) <= sample_limit(level);
}

int cell_add_revenue(struct cell *c, const char cur[3], int64_t micros)
{
    if (micros == 0) return TALLY_OK;
    uint32_t i = 0;
    while (i < c->nrev && memcmp(c->rev[i].cur, cur, 3) < 0) i++;
    if (i < c->nrev && memcmp(c->rev[i].cur, cur, 3) == 0) {
        c->rev[i].micros += micros;
        if (c->rev[i].micros == 0) {
            memmove(c->rev + i, c->rev + i + 1, (c->nrev - i - 1) * sizeof *c->rev);
            c->nrev--;
        }
        return TALLY_OK;
    }
    if (c->nrev == c->caprev) {
        uint32_t cap = c->caprev ? c->caprev * 2 : 2;
        struct cell_rev *p = realloc(c->rev, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        c->rev = p;
        c->caprev = cap;
    }
    memmove(c->rev + i + 1, c->rev + i, (c->nrev - i) * sizeof *c->rev);
    memcpy(c->rev[i].cur, cur, 3);
    c->rev[i].cur[3] = 0;
    c->rev[i].micros = micros;
    c->nrev++;
    return TALLY_OK;
}

int cell_add_uniques(struct cell *c, uint64_t *items, size_t n)
{
    if (n == 0) return TALLY_OK;
    if (!c->hll && !(c->hll = hll_new(CELL_UNIQ_EXACT_MAX))) return TALLY_ENOMEM;
    return hll_add_many(c->hll, items, n);
}

static int mentry_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct cell_mentry *)a)->visitor;
    uint64_t y = ((const struct cell_mentry *)b)->visitor;
    return x < y ? -1 : x > y;
}

static void ms_resample(struct cell *c)
{
    while (c->nms > CELL_VISIT_SET_MAX && c->level < 63) {
        c->level++;
        size_t k = 0;
        for (size_t i = 0; i < c->nms; i++)
            if (sampled_in(c->ms[i].visitor, c->level)) c->ms[k++] = c->ms[i];
        c->nms = k;
    }
}

static int cmp_u64_(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void cell_sort_u64(uint64_t *v, size_t n)
{
    if (n > 24) {
        qsort(v, n, sizeof *v, cmp_u64_);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        uint64_t x = v[i];
        size_t j = i;
        while (j > 0 && v[j - 1] > x) v[j] = v[j - 1], j--;
        v[j] = x;
    }
}

void cell_sort_mentries(struct cell_mentry *d, size_t n)
{
    if (n > 24) {
        qsort(d, n, sizeof *d, mentry_cmp);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        struct cell_mentry x = d[i];
        size_t j = i;
        while (j > 0 && d[j - 1].visitor > x.visitor) d[j] = d[j - 1], j--;
        d[j] = x;
    }
}

int cell_apply_multiset(struct cell *c, struct cell_mentry *d, size_t n)
{
    if (n == 0) return TALLY_OK;
    c->has_ms = true;
    cell_sort_mentries(d, n);
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (!sampled_in(d[i].visitor, c->level)) continue;
        if (u > 0 && d[u - 1].visitor == d[i].visitor) d[u - 1].count += d[i].count;
        else d[u++] = d[i];
    }
    struct cell_mentry *out = malloc((c->nms + u + 1) * sizeof *out);
    if (!out) return TALLY_ENOMEM;
    size_t i = 0, j = 0, k = 0;
    while (i < c->nms || j < u) {
        struct cell_mentry e;
        if (j >= u || (i < c->nms && c->ms[i].visitor < d[j].visitor)) {
            e = c->ms[i++];
        } else if (i >= c->nms || d[j].visitor < c->ms[i].visitor) {
            e = d[j++];
        } else {
            e = c->ms[i++];
            e.count += d[j++].count;
        }
        if (e.count > 0) out[k++] = e;
    }
    free(c->ms);
    c->ms = out;
    c->nms = k;
    c->capms = c->nms + u + 1;
    ms_resample(c);
    return TALLY_OK;
}

int cell_merge(struct cell *dst, const struct cell *src)
{
    dst->pageviews += src->pageviews;
    dst->events += src->events;
    dst->visits += src->visits;
    dst->bounces += src->bounces;
    dst->duration_ms += src->duration_ms;
    int rc;
    for (uint32_t i = 0; i < src->nrev; i++)
        if ((rc = cell_add_revenue(dst, src->rev[i].cur, src->rev[i].micros))) return rc;
    if (src->hll) {
        if (!dst->hll && !(dst->hll = hll_new(CELL_UNIQ_EXACT_MAX))) return TALLY_ENOMEM;
        if ((rc = hll_merge(dst->hll, src->hll))) return rc;
    }
    if (src->has_ms && src->nms) {
        struct cell_mentry *tmp = malloc(src->nms * sizeof *tmp);
        if (!tmp) return TALLY_ENOMEM;
        memcpy(tmp, src->ms, src->nms * sizeof *tmp);
        if (src->level > dst->level) {
            dst->level = src->level;
            size_t k = 0;
            for (size_t i = 0; i < dst->nms; i++)
                if (sampled_in(dst->ms[i].visitor, dst->level)) dst->ms[k++] = dst->ms[i];
            dst->nms = k;
        }
        rc = cell_apply_multiset(dst, tmp, src->nms);
        free(tmp);
        if (rc) return rc;
    }
    return TALLY_OK;
}

uint64_t cell_visitors(const struct cell *c, bool *exact)
{
    if (c->hll) {
        *exact = hll_is_exact(c->hll);
        return hll_count(c->hll);
    }
    *exact = c->level == 0;
    return (uint64_t)c->nms << c->level;
}

void cell_encode(const struct cell *c, struct cbuf *b)
{
    unsigned present = 0;
    if (c->pageviews) present |= PRESENT_PV;
    if (c->events) present |= PRESENT_EV;
    if (c->visits) present |= PRESENT_VISITS;
    if (c->bounces) present |= PRESENT_BOUNCES;
    if (c->duration_ms) present |= PRESENT_DUR;
    if (c->nrev) present |= PRESENT_REV;
    if (c->hll && hll_count(c->hll)) present |= PRESENT_HLL;
    if (c->nms) present |= PRESENT_MS;
    cbuf_u8(b, CELL_VERSION);
    cbuf_varint(b, present);
    if (present & PRESENT_PV) cbuf_svarint(b, c->pageviews);
    if (present & PRESENT_EV) cbuf_svarint(b, c->events);
    if (present & PRESENT_VISITS) cbuf_svarint(b, c->visits);
    if (present & PRESENT_BOUNCES) cbuf_svarint(b, c->bounces);
    if (present & PRESENT_DUR) cbuf_svarint(b, c->duration_ms);
    if (present & PRESENT_REV) {
        cbuf_varint(b, c->nrev);
        for (uint32_t i = 0; i < c->nrev; i++) {
            cbuf_put(b, c->rev[i].cur, 3);
            cbuf_svarint(b, c->rev[i].micros);
        }
    }
    if (present & PRESENT_HLL) {
        size_t n = hll_serialized_bytes(c->hll);
        cbuf_varint(b, n);
        if (cbuf_reserve(b, n)) b->len += hll_serialize(c->hll, b->p + b->len);
    }
    if (present & PRESENT_MS) {
        cbuf_u8(b, c->level);
        cbuf_varint(b, c->nms);
        for (size_t i = 0; i < c->nms; i++) {
            cbuf_le64(b, c->ms[i].visitor);
            cbuf_varint(b, (uint64_t)c->ms[i].count);
        }
    }
}

bool cell_encode_fresh(const struct cell *c, const struct cell_rev *rev, uint32_t nrev,
                       const uint64_t *set, size_t nset, const struct cell_mentry *ms,
                       size_t nms, struct cbuf *b)
{
    if (nset > CELL_UNIQ_EXACT_MAX || nms > CELL_VISIT_SET_MAX) return false;
    unsigned present = 0;
    if (c->pageviews) present |= PRESENT_PV;
    if (c->events) present |= PRESENT_EV;
    if (c->visits) present |= PRESENT_VISITS;
    if (c->bounces) present |= PRESENT_BOUNCES;
    if (c->duration_ms) present |= PRESENT_DUR;
    if (nrev) present |= PRESENT_REV;
    if (nset) present |= PRESENT_HLL;
    if (nms) present |= PRESENT_MS;
    cbuf_u8(b, CELL_VERSION);
    cbuf_varint(b, present);
    if (present & PRESENT_PV) cbuf_svarint(b, c->pageviews);
    if (present & PRESENT_EV) cbuf_svarint(b, c->events);
    if (present & PRESENT_VISITS) cbuf_svarint(b, c->visits);
    if (present & PRESENT_BOUNCES) cbuf_svarint(b, c->bounces);
    if (present & PRESENT_DUR) cbuf_svarint(b, c->duration_ms);
    if (present & PRESENT_REV) {
        cbuf_varint(b, nrev);
        for (uint32_t i = 0; i < nrev; i++) {
            cbuf_put(b, rev[i].cur, 3);
            cbuf_svarint(b, rev[i].micros);
        }
    }
    if (present & PRESENT_HLL) {
        /* hll.h exact blob: version, mode 0, varint n, n x u64 LE */
        size_t vn = 1;
        for (uint64_t v = nset; v >= 0x80; v >>= 7) vn++;
        cbuf_varint(b, 2 + vn + 8 * nset);
        cbuf_u8(b, HLL_VERSION);
        cbuf_u8(b, 0);
        cbuf_varint(b, nset);
        for (size_t i = 0; i < nset; i++) cbuf_le64(b, set[i]);
    }
    if (present & PRESENT_MS) {
        cbuf_u8(b, 0);
        cbuf_varint(b, nms);
        for (size_t i = 0; i < nms; i++) {
            cbuf_le64(b, ms[i].visitor);
            cbuf_varint(b, (uint64_t)ms[i].count);
        }
    }
    return true;
}

int cell_decode(const void *val, size_t len, struct cell *c)
{
    cell_init(c);
    struct creader r;
    creader_init(&r, val, len);
    if (creader_u8(&r) != CELL_VERSION) return TALLY_ECORRUPT;
    uint64_t present = creader_varint(&r);
    if (present > 0xff) return TALLY_ECORRUPT;
    if (present & PRESENT_PV) c->pageviews = creader_svarint(&r);
    if (present & PRESENT_EV) c->events = creader_svarint(&r);
    if (present & PRESENT_VISITS) c->visits = creader_svarint(&r);
    if (present & PRESENT_BOUNCES) c->bounces = creader_svarint(&r);
    if (present & PRESENT_DUR) c->duration_ms = creader_svarint(&r);
    int rc = TALLY_OK;
    if (present & PRESENT_REV) {
        uint64_t n = creader_varint(&r);
        if (n == 0 || n > 20000) rc = TALLY_ECORRUPT;
        for (uint64_t i = 0; i < n && !rc && !r.err; i++) {
            char cur[3];
            for (int k = 0; k < 3; k++) cur[k] = (char)creader_u8(&r);
            rc = cell_add_revenue(c, cur, creader_svarint(&r));
        }
    }
    if (!rc && (present & PRESENT_HLL)) {
        uint64_t n = creader_varint(&r);
        if (r.err || n > (uint64_t)(r.end - r.p)) {
            rc = TALLY_ECORRUPT;
        } else {
            rc = hll_deserialize(r.p, (size_t)n, CELL_UNIQ_EXACT_MAX, &c->hll);
            r.p += n;
        }
    }
    if (!rc && (present & PRESENT_MS)) {
        c->has_ms = true;
        c->level = creader_u8(&r);
        uint64_t n = creader_varint(&r);
        if (c->level > 63 || n > (uint64_t)(r.end - r.p) / 9 + 1) {
            rc = TALLY_ECORRUPT;
        } else {
            c->ms = malloc((n ? n : 1) * sizeof *c->ms);
            if (!c->ms) rc = TALLY_ENOMEM;
            c->capms = n;
            for (uint64_t i = 0; i < n && !rc; i++) {
                c->ms[i].visitor = creader_le64(&r);
                c->ms[i].count = (int64_t)creader_varint(&r);
                if (r.err || c->ms[i].count < 1 ||
                    (i > 0 && c->ms[i].visitor <= c->ms[i - 1].visitor))
                    rc = TALLY_ECORRUPT;
            }
            if (!rc) c->nms = n;
        }
    }
    if (!rc && (r.err || !creader_done(&r))) rc = TALLY_ECORRUPT;
    if (rc) cell_free(c);
    return rc;
}

/* ---- views ---- */

int cell_view_parse(const void *val, size_t len, struct cell_view *v)
{
    memset(v, 0, sizeof *v);
    struct creader r;
    creader_init(&r, val, len);
    if (creader_u8(&r) != CELL_VERSION) return TALLY_ECORRUPT;
    uint64_t present = creader_varint(&r);
    if (present > 0xff) return TALLY_ECORRUPT;
    if (present & PRESENT_PV) v->pageviews = creader_svarint(&r);
    if (present & PRESENT_EV) v->events = creader_svarint(&r);
    if (present & PRESENT_VISITS) v->visits = creader_svarint(&r);
    if (present & PRESENT_BOUNCES) v->bounces = creader_svarint(&r);
    if (present & PRESENT_DUR) v->duration_ms = creader_svarint(&r);
    if (present & PRESENT_REV) {
        uint64_t n = creader_varint(&r);
        if (n == 0 || n > 20000) return TALLY_ECORRUPT;
        v->rev = r.p;
        v->nrev = (uint32_t)n;
        for (uint64_t i = 0; i < n && !r.err; i++) {
            for (int k = 0; k < 3; k++) (void)creader_u8(&r);
            (void)creader_svarint(&r);
        }
        v->rev_len = r.err ? 0 : (size_t)(r.p - v->rev);
    }
    if (present & PRESENT_HLL) {
        uint64_t n = creader_varint(&r);
        if (r.err || n > (uint64_t)(r.end - r.p)) return TALLY_ECORRUPT;
        v->hll = r.p;
        v->hll_len = (size_t)n;
        r.p += n;
    }
    if (present & PRESENT_MS) {
        v->has_ms = true;
        v->level = creader_u8(&r);
        uint64_t n = creader_varint(&r);
        if (r.err || v->level > 63 || n > (uint64_t)(r.end - r.p) / 9 + 1) return TALLY_ECORRUPT;
        v->nms = (size_t)n;
        v->ms = r.p;
        v->ms_len = (size_t)(r.end - r.p);
        r.p = r.end; /* the multiset is last: its entries are checked where they are read */
        if (n == 0 && v->ms_len) return TALLY_ECORRUPT;
    }
    if (r.err || !creader_done(&r)) return TALLY_ECORRUPT;
    return TALLY_OK;
}

int cell_view_add_revenue(const struct cell_view *v, struct cell *sum)
{
    struct creader r;
    creader_init(&r, v->rev, v->rev_len);
    int rc = TALLY_OK;
    for (uint32_t i = 0; i < v->nrev && !rc; i++) {
        char cur[3];
        for (int k = 0; k < 3; k++) cur[k] = (char)creader_u8(&r);
        int64_t micros = creader_svarint(&r);
        rc = r.err ? TALLY_ECORRUPT : cell_add_revenue(sum, cur, micros);
    }
    return rc;
}

/* ---- unions ---- */

/*
 * A union gathers visitors from many cells and counts them once at the end:
 *  - add-only sets: exact items are appended to hv (no merge per cell: a 30-day breakdown adds
 *    30 sorted runs per value, and merging each into the growing set cost O(days^2)); dense
 *    sketches are merged into hll. hv is deduplicated (unique_u64) when it has doubled since the
 *    last time (at least UNION_ITEMS_MAX items) and at the count; once the distinct items
 *    exceed HLL_EXACT_MAX_LIMIT, or any dense sketch was seen, they are folded into the sketch.
 *    The result is what merging every cell's hll into one hll with exact_max
 *    HLL_EXACT_MAX_LIMIT gives (an hll's state depends only on its set of items);
 *  - multisets: members are appended to v, filtered by the highest sampling level seen.
 */
struct cell_union {
    struct hll *hll;  /* dense, or NULL */
    uint64_t *hv;     /* add-only items; distinct after a compaction */
    size_t hn, hcap, hcompact_at;
    uint64_t *v;      /* multiset members */
    size_t n, cap;
    uint8_t level;
    bool any_hll, any_ms;
    bool counted; /* cell_union_count ran: hv may hold garbage, the answer is kept */
    bool count_exact;
    uint64_t count;
};

struct cell_union *cell_union_new(void)
{
    return calloc(1, sizeof(struct cell_union));
}

void cell_union_free(struct cell_union *u)
{
    if (!u) return;
    hll_free(u->hll);
    free(u->hv);
    free(u->v);
    free(u);
}

static void insertion_sort_u64(uint64_t *v, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        uint64_t x = v[i];
        size_t j = i;
        while (j > 0 && v[j - 1] > x) v[j] = v[j - 1], j--;
        v[j] = x;
    }
}

/* Drops repeats from v[0..n) (the order of what stays is unspecified; with !keep, v holds
 * garbage after and only the count matters); returns the distinct count. Visitor ids are hashes, so their top bits index an open-addressing table directly
 * (linear probing, at most half full; 0 marks a free slot and is tracked apart). A cell's
 * items arrive ascending, so each run of them sweeps the table front to back. */
static size_t unique_u64(uint64_t *v, size_t n, bool keep)
{
    size_t k = 0;
    if (n < 32) {
        insertion_sort_u64(v, n);
        for (size_t i = 0; i < n; i++)
            if (k == 0 || v[k - 1] != v[i]) v[k++] = v[i];
        return k;
    }
    int bits = 1;
    while (bits < 62 && ((size_t)1 << bits) < 2 * n) bits++;
    size_t cap = (size_t)1 << bits, mask = cap - 1;
    int shift = 64 - bits;
    uint64_t *t = calloc(cap, sizeof *t);
    if (!t) {
        qsort(v, n, sizeof *v, cmp_u64_);
        for (size_t i = 0; i < n; i++)
            if (k == 0 || v[k - 1] != v[i]) v[k++] = v[i];
        return k;
    }
    bool zero = false;
    for (size_t i = 0; i < n; i++) {
        uint64_t x = v[i];
        if (x == 0) {
            zero = true;
            continue;
        }
        size_t slot = (size_t)(x >> shift);
        while (t[slot] != 0 && t[slot] != x) slot = (slot + 1) & mask;
        t[slot] = x;
    }
    if (zero) v[k++] = 0;
    if (keep) {
        for (size_t i = 0; i < cap; i++) {
            v[k] = t[i];
            k += t[i] != 0;
        }
    } else {
        for (size_t i = 0; i < cap; i++) k += t[i] != 0;
    }
    free(t);
    return k;
}

static void union_compact(struct cell_union *u)
{
    size_t k = 0, n = unique_u64(u->v, u->n, true);
    for (size_t i = 0; i < n; i++)
        if (sampled_in(u->v[i], u->level)) u->v[k++] = u->v[i];
    u->n = k;
}

/* Sorts and deduplicates hv; folds it into the sketch when there is one or when it is too
 * large to stay exact. */
static int hset_compact(struct cell_union *u, bool final)
{
    u->hn = unique_u64(u->hv, u->hn, !final || u->hll || u->hn > HLL_EXACT_MAX_LIMIT);
    if (u->hn > HLL_EXACT_MAX_LIMIT && !u->hll && !(u->hll = hll_new(HLL_EXACT_MAX_LIMIT)))
        return TALLY_ENOMEM;
    if (u->hll && (final || u->hn > HLL_EXACT_MAX_LIMIT)) {
        int rc = hll_add_many(u->hll, u->hv, u->hn);
        if (rc) return rc;
        u->hn = 0;
    }
    u->hcompact_at = u->hn * 2 > UNION_ITEMS_MAX ? u->hn * 2 : UNION_ITEMS_MAX;
    return TALLY_OK;
}

static int hv_reserve(struct cell_union *u, size_t more)
{
    if (u->hn + more <= u->hcap) return TALLY_OK;
    size_t cap = u->hcap ? u->hcap : 1024;
    while (cap < u->hn + more) cap *= 2;
    uint64_t *p = realloc(u->hv, cap * sizeof *p);
    if (!p) return TALLY_ENOMEM;
    u->hv = p;
    u->hcap = cap;
    return TALLY_OK;
}

static int v_reserve(struct cell_union *u, size_t more)
{
    if (u->n + more <= u->cap) return TALLY_OK;
    size_t cap = u->cap ? u->cap : 1024;
    while (cap < u->n + more) cap *= 2;
    uint64_t *p = realloc(u->v, cap * sizeof *p);
    if (!p) return TALLY_ENOMEM;
    u->v = p;
    u->cap = cap;
    return TALLY_OK;
}

static int ms_level(struct cell_union *u, uint8_t level)
{
    u->any_ms = true;
    if (level > u->level) {
        u->level = level;
        union_compact(u);
    }
    return TALLY_OK;
}

static void ms_bound(struct cell_union *u)
{
    if (u->n > UNION_ITEMS_MAX) {
        union_compact(u);
        while (u->n > UNION_ITEMS_MAX && u->level < 63) {
            u->level++;
            union_compact(u);
        }
    }
}

static int hset_after_add(struct cell_union *u)
{
    u->any_hll = true;
    return u->hn > u->hcompact_at ? hset_compact(u, false) : TALLY_OK;
}

int cell_union_add(struct cell_union *u, const struct cell *c)
{
    int rc;
    if (c->hll) {
        if (!hll_is_exact(c->hll)) {
            if (!u->hll && !(u->hll = hll_new(HLL_EXACT_MAX_LIMIT))) return TALLY_ENOMEM;
            if ((rc = hll_merge(u->hll, c->hll))) return rc;
        } else {
            const uint64_t *items;
            size_t n = hll_items(c->hll, &items);
            if ((rc = hv_reserve(u, n))) return rc;
            memcpy(u->hv + u->hn, items, n * sizeof *items);
            u->hn += n;
        }
        if ((rc = hset_after_add(u))) return rc;
    }
    if (c->nms) {
        ms_level(u, c->level);
        if ((rc = v_reserve(u, c->nms))) return rc;
        for (size_t i = 0; i < c->nms; i++)
            if (sampled_in(c->ms[i].visitor, u->level)) u->v[u->n++] = c->ms[i].visitor;
        ms_bound(u);
    }
    return TALLY_OK;
}

static uint64_t load_le64_(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

int cell_union_add_view(struct cell_union *u, const struct cell_view *c)
{
    int rc;
    if (c->hll) {
        bool dense;
        size_t n;
        const uint8_t *body;
        if ((rc = hll_blob(c->hll, c->hll_len, &dense, &n, &body))) return rc;
        if (dense) {
            if (!u->hll && !(u->hll = hll_new(HLL_EXACT_MAX_LIMIT))) return TALLY_ENOMEM;
            if ((rc = hll_merge_serialized(u->hll, c->hll, c->hll_len))) return rc;
        } else {
            if ((rc = hv_reserve(u, n))) return rc;
            uint64_t *out = u->hv + u->hn, prev = 0;
            for (size_t i = 0; i < n; i++) {
                uint64_t x = load_le64_(body + 8 * i);
                if (i > 0 && x <= prev) return TALLY_ECORRUPT;
                out[i] = prev = x;
            }
            u->hn += n;
        }
        if ((rc = hset_after_add(u))) return rc;
    }
    if (c->has_ms) {
        struct creader r;
        creader_init(&r, c->ms, c->ms_len);
        if (c->nms) {
            ms_level(u, c->level);
            if ((rc = v_reserve(u, c->nms))) return rc;
        }
        uint64_t prev = 0;
        for (size_t i = 0; i < c->nms; i++) {
            uint64_t x = creader_le64(&r);
            uint64_t count = creader_varint(&r);
            if (r.err || count < 1 || (i > 0 && x <= prev)) return TALLY_ECORRUPT;
            prev = x;
            if (sampled_in(x, u->level)) u->v[u->n++] = x;
        }
        if (!creader_done(&r)) return TALLY_ECORRUPT;
        if (c->nms) ms_bound(u);
    }
    return TALLY_OK;
}

uint64_t cell_union_count(const struct cell_union *u_, bool *exact)
{
    struct cell_union *u = (struct cell_union *)u_;
    if (u->counted) {
        *exact = u->count_exact;
        return u->count;
    }
    uint64_t n = 0;
    *exact = true;
    if (u->any_hll || u->hll) {
        if (hset_compact(u, true) != TALLY_OK) {
            /* out of memory folding the items into the sketch: count what is exact */
            *exact = false;
        }
        if (u->hll) {
            n = hll_count(u->hll) + u->hn;
            if (!hll_is_exact(u->hll)) *exact = false;
        } else {
            n = u->hn;
        }
    }
    if (u->any_ms) {
        union_compact(u);
        n += (uint64_t)u->n << u->level;
        if (u->level) *exact = false;
    }
    u->counted = true;
    u->count_exact = *exact;
    u->count = n;
    return n;
}

/* ---- keys ---- */

static const uint8_t gran_byte[TZ_GRAN_COUNT] = {'m', 'h', 'd'};

size_t cell_key(uint8_t *out, int gran, uint32_t site, int dim, uint32_t bucket_min,
                const char *value, size_t vlen)
{
    if (vlen > CELL_KEY_BYTES_MAX - 10) vlen = CELL_KEY_BYTES_MAX - 10;
    out[0] = gran_byte[gran];
    if (gran == TZ_MINUTE) {
        store_put_be32(out + 1, bucket_min);
        store_put_be32(out + 5, site);
        out[9] = (uint8_t)dim;
    } else {
        store_put_be32(out + 1, site);
        out[5] = (uint8_t)dim;
        store_put_be32(out + 6, bucket_min);
    }
    if (vlen) memcpy(out + 10, value, vlen);
    return 10 + vlen;
}

size_t cell_key_prefix(uint8_t *out, int gran, uint32_t site, int dim)
{
    out[0] = gran_byte[gran];
    store_put_be32(out + 1, site);
    out[5] = (uint8_t)dim;
    return 6;
}

bool cell_key_parse(const uint8_t *key, size_t klen, int *gran, uint32_t *site, int *dim,
                    uint32_t *bucket_min, const char **value, size_t *vlen)
{
    if (klen < 10) return false;
    if (key[0] == 'm') {
        *gran = TZ_MINUTE;
        *bucket_min = store_get_be32(key + 1);
        *site = store_get_be32(key + 5);
        *dim = key[9];
    } else if (key[0] == 'h' || key[0] == 'd') {
        *gran = key[0] == 'h' ? TZ_HOUR : TZ_DAY;
        *site = store_get_be32(key + 1);
        *dim = key[5];
        *bucket_min = store_get_be32(key + 6);
    } else {
        return false;
    }
    if (*dim >= ROLLUP_DIM_COUNT) return false;
    *value = (const char *)key + 10;
    *vlen = klen - 10;
    return true;
}
