/* cell: see cell.h for the metric rules, the key and value layouts. */
#include "rollup/cell.h"

#include <stdlib.h>
#include <string.h>

#include "core/sortkey.h"
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
        /* saturates: 9.2e12 currency units only overflow in a corrupt store or a forged
         * event stream, and then the sum stays defined */
        if (__builtin_add_overflow(c->rev[i].micros, micros, &c->rev[i].micros))
            c->rev[i].micros = micros > 0 ? INT64_MAX : INT64_MIN;
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

#define MENTRY_LESS(a, b) ((a)->visitor < (b)->visitor)
SORTKEY_DEFINE(sort_mentries_, struct cell_mentry, MENTRY_LESS)

void cell_sort_u64(uint64_t *v, size_t n)
{
    sortkey_u64(v, n);
}

void cell_sort_mentries(struct cell_mentry *d, size_t n)
{
    sort_mentries_(d, n);
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

/* Reads multiset entry i (u64 LE visitor, varint count) at r, after the entry whose visitor
 * was prev: false when it is malformed (truncated, count not in 1..INT64_MAX, visitors not
 * ascending). cell_decode and the unions read entries only through this, so they accept the
 * same values. */
static bool ms_entry(struct creader *r, size_t i, uint64_t prev, uint64_t *visitor,
                     int64_t *count)
{
    *visitor = creader_le64(r);
    uint64_t n = creader_varint(r);
    *count = (int64_t)n;
    return !r->err && n >= 1 && n <= INT64_MAX && (i == 0 || *visitor > prev);
}

int cell_decode(const void *val, size_t len, struct cell *c)
{
    cell_init(c);
    struct cell_view v;
    int rc = cell_view_parse(val, len, &v);
    if (rc) return rc;
    c->pageviews = v.pageviews;
    c->events = v.events;
    c->visits = v.visits;
    c->bounces = v.bounces;
    c->duration_ms = v.duration_ms;
    if (v.nrev) rc = cell_view_add_revenue(&v, c);
    if (!rc && v.hll) rc = hll_deserialize(v.hll, v.hll_len, CELL_UNIQ_EXACT_MAX, &c->hll);
    if (!rc && v.has_ms) {
        c->has_ms = true;
        c->level = v.level;
        c->ms = malloc((v.nms ? v.nms : 1) * sizeof *c->ms);
        if (!c->ms) rc = TALLY_ENOMEM;
        c->capms = v.nms;
        struct creader r;
        creader_init(&r, v.ms, v.ms_len);
        for (size_t i = 0; i < v.nms && !rc; i++)
            if (!ms_entry(&r, i, i ? c->ms[i - 1].visitor : 0, &c->ms[i].visitor,
                          &c->ms[i].count))
                rc = TALLY_ECORRUPT;
        if (!rc && !creader_done(&r)) rc = TALLY_ECORRUPT;
        if (!rc) c->nms = v.nms;
    }
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
        const uint8_t *prev = NULL;
        for (uint64_t i = 0; i < n && !r.err; i++) {
            const uint8_t *cur = r.p;
            for (int k = 0; k < 3; k++) (void)creader_u8(&r);
            /* canonical: currencies strictly ascending, no zero sums */
            if (creader_svarint(&r) == 0 || (prev && !r.err && memcmp(prev, cur, 3) >= 0))
                return TALLY_ECORRUPT;
            prev = cur;
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
 * A union gathers visitors from many cells and counts them once, at the end (merging each
 * cell's set into a growing one cost O(cells^2) over a long range). Each cell's set arrives
 * as a sorted RUN (strictly ascending ids); the union keeps its runs back to back, with their
 * starts:
 *  - add-only sets (hs): the exact items of each cell; dense sketches are merged into hll. At
 *    the count, once the distinct items exceed HLL_EXACT_MAX_LIMIT or any dense sketch was
 *    seen, the items are folded into the sketch. The result is what merging every cell's hll
 *    into one hll with exact_max HLL_EXACT_MAX_LIMIT gives (an hll's state depends only on
 *    its set of items);
 *  - multisets (ms): each cell's members kept by the highest sampling level seen.
 * COUNTING k runs (runs_distinct): the id space is cut by its top bits into partitions of
 * about PART_ITEMS items; a run's part of a partition is contiguous, so one cursor per run
 * walks every partition once, and a partition's items are counted in a table small enough
 * for L1 (ids are hashes: their next bits index it). A set that passes compact_at raw items
 * (or whose sampling level rises) is rewritten as one sorted distinct run.
 */
#define PART_ITEMS 256

struct runs {
    uint64_t *v;
    size_t n, cap;
    size_t *start; /* start[i]: index of run i's first item */
    size_t nruns, rcap;
    size_t compact_at;
};

struct cell_union {
    struct hll *hll; /* dense, or NULL */
    struct runs hs, ms;
    uint8_t level;
    bool any_hll, any_ms;
    bool counted; /* cell_union_count ran: the answer is kept */
    bool count_exact;
    uint64_t count;
};

struct cell_union *cell_union_new(void)
{
    return calloc(1, sizeof(struct cell_union));
}

static void runs_free(struct runs *r)
{
    free(r->v);
    free(r->start);
}

void cell_union_free(struct cell_union *u)
{
    if (!u) return;
    hll_free(u->hll);
    runs_free(&u->hs);
    runs_free(&u->ms);
    free(u);
}

/* Room for `more` items and one more run. */
static int runs_reserve(struct runs *r, size_t more)
{
    if (r->n + more > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->n + more) cap *= 2;
        uint64_t *p = realloc(r->v, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        r->v = p;
        r->cap = cap;
    }
    if (r->nruns == r->rcap) {
        size_t cap = r->rcap ? r->rcap * 2 : 32;
        size_t *p = realloc(r->start, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        r->start = p;
        r->rcap = cap;
    }
    return TALLY_OK;
}

/* Ends a run that began at item n0 (items appended since; an empty run is not recorded). */
static void runs_close(struct runs *r, size_t n0)
{
    if (r->n > n0) r->start[r->nruns++] = n0;
}

/* Appends n native u64 items (one sorted distinct run) to r. */
static int runs_append(struct runs *r, const void *items, size_t n)
{
    if (n == 0) return TALLY_OK;
    int rc = runs_reserve(r, n);
    if (rc) return rc;
    memcpy(r->v + r->n, items, n * sizeof *r->v);
    r->n += n;
    runs_close(r, r->n - n);
    return TALLY_OK;
}

/* Distinct count of m items whose top `bits` bits are equal, in table t of 2^tbits slots
 * (zeroed here; 0 marks a free slot, and the item 0 is counted apart). */
static size_t part_count(const uint64_t *b, size_t m, int bits, uint64_t *t, int tbits)
{
    size_t cap = (size_t)1 << tbits, mask = cap - 1, k = 0;
    memset(t, 0, cap * sizeof *t);
    bool zero = false;
    for (size_t i = 0; i < m; i++) {
        uint64_t x = b[i];
        if (x == 0) {
            zero = true;
            continue;
        }
        size_t slot = (size_t)((bits ? x << bits : x) >> (64 - tbits));
        while (t[slot] != 0 && t[slot] != x) slot = (slot + 1) & mask;
        k += t[slot] == 0;
        t[slot] = x;
    }
    return k + zero;
}

/* Appends the distinct items of b[0..m) (their top `bits` bits equal) to out[k..), ascending;
 * returns the new k. A counting sort on the next 8 bits leaves buckets of about m / 256 items
 * for insertion sort (ids are hashes); b is reordered. TALLY_ENOMEM as a negative k. */
static int64_t part_sorted(uint64_t *b, size_t m, int bits, uint64_t *out, int64_t k)
{
    if (m <= 32) {
        sortkey_u64(b, m);
        for (size_t i = 0; i < m; i++)
            if (i == 0 || b[i] != b[i - 1]) out[k++] = b[i];
        return k;
    }
    uint64_t *tmp = malloc(m * sizeof *tmp);
    if (!tmp) return TALLY_ENOMEM;
    size_t cnt[257] = {0};
    for (size_t i = 0; i < m; i++) cnt[((b[i] << bits) >> 56) + 1]++;
    for (int d = 1; d <= 256; d++) cnt[d] += cnt[d - 1];
    for (size_t i = 0; i < m; i++) tmp[cnt[(b[i] << bits) >> 56]++] = b[i];
    size_t start = 0; /* cnt[d] is now the end of bucket d */
    for (int d = 0; d < 256; d++) {
        size_t n = cnt[d] - start;
        uint64_t *p = tmp + start;
        sortkey_u64(p, n);
        for (size_t i = 0; i < n; i++)
            if (i == 0 || p[i] != p[i - 1]) out[k++] = p[i];
        start = cnt[d];
    }
    free(tmp);
    return k;
}

static int64_t runs_distinct(const struct runs *r, uint64_t *out);

/* Count only, when run 0 holds most items (a saved state from the query cache, then the
 * cells of today): the distinct items of the other runs, each looked up in run 0 by a
 * galloping search from where the previous one ended. -1: not this case; TALLY_ENOMEM. */
static int64_t runs_distinct_big_first(const struct runs *r)
{
    size_t n0 = r->start[1] - r->start[0];
    if (r->start[0] != 0 || n0 < 4096 || n0 * 2 < r->n) return -1;
    size_t nr = r->nruns - 1, nrest = r->n - n0;
    size_t *st = malloc(nr * sizeof *st);
    uint64_t *rest = malloc((nrest ? nrest : 1) * sizeof *rest);
    int64_t k = st && rest ? 0 : TALLY_ENOMEM;
    if (k == 0) {
        for (size_t i = 0; i < nr; i++) st[i] = r->start[i + 1] - n0;
        struct runs tail = {.v = r->v + n0, .n = nrest, .start = st, .nruns = nr};
        k = runs_distinct(&tail, rest);
    }
    if (k >= 0) {
        const uint64_t *big = r->v;
        size_t j = 0, found = 0;
        for (int64_t i = 0; i < k && j < n0; i++) {
            uint64_t x = rest[i];
            size_t step = 1, lo = j, hi = j;
            while (hi < n0 && big[hi] < x) {
                lo = hi + 1;
                hi = hi + step < n0 ? hi + step : n0;
                step *= 2;
            }
            while (lo < hi) { /* first index in [lo, hi) with big[] >= x */
                size_t mid = lo + (hi - lo) / 2;
                if (big[mid] < x) lo = mid + 1;
                else hi = mid;
            }
            j = lo;
            if (j < n0 && big[j] == x) found++;
        }
        k = (int64_t)(n0 + (size_t)k - found);
    }
    free(st);
    free(rest);
    return k;
}

/* The number of distinct items over r's runs; with out (room for r->n) also the items
 * themselves, ascending. TALLY_ENOMEM as a negative count. */
static int64_t runs_distinct(const struct runs *r, uint64_t *out)
{
    if (r->nruns == 0) return 0;
    if (r->nruns == 1) { /* one run is already sorted and distinct */
        if (out) memcpy(out, r->v, r->n * sizeof *out);
        return (int64_t)r->n;
    }
    if (!out) {
        int64_t k = runs_distinct_big_first(r);
        if (k != -1) return k;
    }
    int bits = 0;
    while (bits < 40 && (r->n >> bits) > PART_ITEMS) bits++;
    size_t nr = r->nruns, bcap = 4 * PART_ITEMS, tcap_bits = 11;
    size_t *cur = malloc(2 * nr * sizeof *cur);
    uint64_t *buf = malloc(bcap * sizeof *buf), *t = malloc(((size_t)1 << tcap_bits) * 8);
    int64_t k = 0;
    if (!cur || !buf || !t) k = TALLY_ENOMEM;
    size_t *stop = cur + nr;
    for (size_t i = 0; k >= 0 && i < nr; i++) {
        cur[i] = r->start[i];
        stop[i] = i + 1 < nr ? r->start[i + 1] : r->n;
    }
    const uint64_t nparts = (uint64_t)1 << bits;
    for (uint64_t p = 0; k >= 0 && p < nparts; p++) {
        /* the partition's items are <= lim; the last partition's bound wraps to ~0 */
        uint64_t lim = bits ? ((p + 1) << (64 - bits)) - 1 : UINT64_MAX;
        size_t m = 0;
        for (size_t i = 0; i < nr; i++) {
            size_t e = cur[i];
            while (e < stop[i] && r->v[e] <= lim) e++;
            size_t len = e - cur[i];
            if (m + len > bcap) {
                while (bcap < m + len) bcap *= 2;
                uint64_t *nb = realloc(buf, bcap * sizeof *nb);
                if (!nb) {
                    k = TALLY_ENOMEM;
                    break;
                }
                buf = nb;
            }
            memcpy(buf + m, r->v + cur[i], len * sizeof *buf);
            m += len;
            cur[i] = e;
        }
        if (k < 0 || m == 0) continue;
        if (out) {
            k = part_sorted(buf, m, bits, out, k);
            continue;
        }
        int tbits = 4;
        while (((size_t)1 << tbits) < 2 * m) tbits++;
        if ((size_t)tbits > tcap_bits) {
            uint64_t *nt = realloc(t, ((size_t)1 << tbits) * sizeof *nt);
            if (!nt) {
                k = TALLY_ENOMEM;
                break;
            }
            t = nt;
            tcap_bits = (size_t)tbits;
        }
        k += (int64_t)part_count(buf, m, bits, t, tbits);
    }
    free(cur);
    free(buf);
    free(t);
    return k;
}

/* Rewrites r as one sorted distinct run, keeping only the ids `keep` accepts (NULL: all). */
static int runs_compact(struct runs *r, bool (*keep)(uint64_t, uint8_t), uint8_t level)
{
    if (r->nruns == 0) return TALLY_OK;
    uint64_t *out = malloc(r->n * sizeof *out);
    if (!out) return TALLY_ENOMEM;
    int64_t k = runs_distinct(r, out);
    if (k < 0) {
        free(out);
        return (int)k;
    }
    size_t n = 0;
    for (int64_t i = 0; i < k; i++)
        if (!keep || keep(out[i], level)) out[n++] = out[i];
    free(r->v);
    r->v = out;
    r->n = n;
    r->cap = (size_t)k > 0 ? (size_t)k : 0;
    if (r->cap == 0) {
        free(out);
        r->v = NULL;
    }
    r->nruns = n ? 1 : 0;
    if (n) r->start[0] = 0;
    r->compact_at = n * 2 > UNION_ITEMS_MAX ? n * 2 : UNION_ITEMS_MAX;
    return TALLY_OK;
}

/* Rewrites the add-only items as one sorted distinct run; beyond HLL_EXACT_MAX_LIMIT of them
 * they cannot stay exact and go into the sketch. */
static int hs_compact(struct cell_union *u)
{
    int rc = runs_compact(&u->hs, NULL, 0);
    if (rc || u->hs.n <= HLL_EXACT_MAX_LIMIT) return rc;
    if (!u->hll && !(u->hll = hll_new(HLL_EXACT_MAX_LIMIT))) return TALLY_ENOMEM;
    if ((rc = hll_add_many(u->hll, u->hs.v, u->hs.n))) return rc;
    u->hs.n = u->hs.nruns = 0;
    return TALLY_OK;
}

static int hs_after_add(struct cell_union *u)
{
    u->any_hll = true;
    if (u->hs.compact_at == 0) u->hs.compact_at = UNION_ITEMS_MAX;
    return u->hs.n > u->hs.compact_at ? hs_compact(u) : TALLY_OK;
}

static int ms_level(struct cell_union *u, uint8_t level)
{
    u->any_ms = true;
    if (level <= u->level) return TALLY_OK;
    u->level = level;
    return runs_compact(&u->ms, sampled_in, u->level);
}

static int ms_bound(struct cell_union *u)
{
    if (u->ms.n <= UNION_ITEMS_MAX) return TALLY_OK;
    int rc = runs_compact(&u->ms, sampled_in, u->level);
    while (!rc && u->ms.n > UNION_ITEMS_MAX && u->level < 63) {
        u->level++;
        rc = runs_compact(&u->ms, sampled_in, u->level);
    }
    return rc;
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
            if ((rc = runs_append(&u->hs, items, n))) return rc;
        }
        if ((rc = hs_after_add(u))) return rc;
    }
    if (c->nms) {
        if ((rc = ms_level(u, c->level))) return rc;
        if ((rc = runs_reserve(&u->ms, c->nms))) return rc;
        size_t n0 = u->ms.n;
        for (size_t i = 0; i < c->nms; i++)
            if (sampled_in(c->ms[i].visitor, u->level)) u->ms.v[u->ms.n++] = c->ms[i].visitor;
        runs_close(&u->ms, n0);
        if ((rc = ms_bound(u))) return rc;
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
            if ((rc = hll_merge_dense(u->hll, body))) return rc;
        } else {
            if ((rc = runs_reserve(&u->hs, n))) return rc;
            uint64_t *out = u->hs.v + u->hs.n, prev = 0;
            for (size_t i = 0; i < n; i++) {
                uint64_t x = load_le64_(body + 8 * i);
                if (i > 0 && x <= prev) return TALLY_ECORRUPT;
                out[i] = prev = x;
            }
            u->hs.n += n;
            runs_close(&u->hs, u->hs.n - n);
        }
        if ((rc = hs_after_add(u))) return rc;
    }
    if (c->has_ms) {
        struct creader r;
        creader_init(&r, c->ms, c->ms_len);
        if (c->nms) {
            if ((rc = ms_level(u, c->level))) return rc;
            if ((rc = runs_reserve(&u->ms, c->nms))) return rc;
        }
        size_t n0 = u->ms.n;
        uint64_t prev = 0;
        for (size_t i = 0; i < c->nms; i++) {
            uint64_t x;
            int64_t count;
            if (!ms_entry(&r, i, prev, &x, &count)) {
                u->ms.n = n0;
                return TALLY_ECORRUPT;
            }
            prev = x;
            if (sampled_in(x, u->level)) u->ms.v[u->ms.n++] = x;
        }
        if (!creader_done(&r)) {
            u->ms.n = n0;
            return TALLY_ECORRUPT;
        }
        runs_close(&u->ms, n0);
        if (c->nms && (rc = ms_bound(u))) return rc;
    }
    return TALLY_OK;
}

/* ---- saved unions (in-process only: native byte order, never persisted) ----
 *   u8 flags: 1 add-only sets seen, 2 multisets seen, 4 a sketch follows
 *   u8 level
 *   u64 nh, nh x u64 add-only items (ascending, distinct)
 *   u64 nm, nm x u64 multiset members (ascending, distinct, kept at level)
 *   [u64 blen, blen bytes: the sketch, hll_serialize]
 */
size_t cell_union_saved_bytes_max(const struct cell_union *u)
{
    return 2 + 16 + (u->hs.n + u->ms.n) * 8 + (u->hll ? 8 + hll_serialized_bytes(u->hll) : 0);
}

int cell_union_compact(struct cell_union *u)
{
    if (u->counted) return TALLY_EINVAL;
    int rc = hs_compact(u);
    return rc ? rc : runs_compact(&u->ms, sampled_in, u->level);
}

int cell_union_save(struct cell_union *u, struct cbuf *out)
{
    int rc = cell_union_compact(u);
    if (rc) return rc;
    uint8_t head[2] = {(uint8_t)((u->any_hll ? 1 : 0) | (u->any_ms ? 2 : 0) | (u->hll ? 4 : 0)),
                       u->level};
    cbuf_put(out, head, 2);
    uint64_t n = u->hs.n;
    cbuf_put(out, &n, 8);
    cbuf_put(out, u->hs.v, u->hs.n * 8);
    n = u->ms.n;
    cbuf_put(out, &n, 8);
    cbuf_put(out, u->ms.v, u->ms.n * 8);
    if (u->hll) {
        uint64_t bl = hll_serialized_bytes(u->hll);
        cbuf_put(out, &bl, 8);
        if (cbuf_reserve(out, bl)) out->len += hll_serialize(u->hll, out->p + out->len);
    }
    return out->oom ? TALLY_ENOMEM : TALLY_OK;
}

int cell_union_add_saved(struct cell_union *u, const uint8_t *p, size_t len, size_t *used)
{
    const uint8_t *q = p, *end = p + len;
    uint64_t nh, nm;
    if (end - q < 10) return TALLY_ECORRUPT;
    uint8_t flags = q[0], level = q[1];
    q += 2;
    memcpy(&nh, q, 8);
    q += 8;
    if (nh > (uint64_t)(end - q) / 8) return TALLY_ECORRUPT;
    const uint8_t *hv = q;
    q += nh * 8;
    if (end - q < 8) return TALLY_ECORRUPT;
    memcpy(&nm, q, 8);
    q += 8;
    if (nm > (uint64_t)(end - q) / 8) return TALLY_ECORRUPT;
    const uint8_t *mv = q;
    q += nm * 8;
    int rc = TALLY_OK;
    if (flags & 4) {
        uint64_t bl;
        if (end - q < 8) return TALLY_ECORRUPT;
        memcpy(&bl, q, 8);
        q += 8;
        if (bl > (uint64_t)(end - q)) return TALLY_ECORRUPT;
        if (!u->hll && !(u->hll = hll_new(HLL_EXACT_MAX_LIMIT))) return TALLY_ENOMEM;
        if ((rc = hll_merge_serialized(u->hll, q, (size_t)bl))) return rc;
        q += bl;
    }
    if (flags & 1) {
        if ((rc = runs_append(&u->hs, hv, (size_t)nh))) return rc;
        if ((rc = hs_after_add(u))) return rc;
    }
    if (flags & 2) {
        if ((rc = ms_level(u, level))) return rc;
        if (u->level > level) {
            /* kept at a lower level than the union's: only the members still sampled in */
            if ((rc = runs_reserve(&u->ms, (size_t)nm))) return rc;
            size_t n0 = u->ms.n;
            for (uint64_t i = 0; i < nm; i++) {
                uint64_t x;
                memcpy(&x, mv + 8 * i, 8);
                if (sampled_in(x, u->level)) u->ms.v[u->ms.n++] = x;
            }
            runs_close(&u->ms, n0);
        } else if ((rc = runs_append(&u->ms, mv, (size_t)nm))) {
            return rc;
        }
        if ((rc = ms_bound(u))) return rc;
    }
    *used = (size_t)(q - p);
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
        int64_t k = 0;
        if (u->hll) {
            /* a sketch already: every exact item joins it */
            if (hll_add_many(u->hll, u->hs.v, u->hs.n) != TALLY_OK) *exact = false;
        } else {
            k = runs_distinct(&u->hs, NULL);
            if (k > (int64_t)HLL_EXACT_MAX_LIMIT && hs_compact(u) != TALLY_OK)
                *exact = false; /* out of memory: the exact count stands */
        }
        if (u->hll && hll_count(u->hll) > 0) {
            n = hll_count(u->hll);
            if (!hll_is_exact(u->hll)) *exact = false;
        } else {
            n = k > 0 ? (uint64_t)k : 0;
            if (k < 0) *exact = false;
        }
    }
    if (u->any_ms) {
        int64_t k = runs_distinct(&u->ms, NULL);
        if (k < 0) {
            k = 0;
            *exact = false;
        }
        n += (uint64_t)k << u->level;
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
