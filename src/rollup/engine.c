/*
 * engine: see engine.h for the visit rule, what is counted, the sessions layout and the
 * determinism argument. Internals:
 *
 * Per visitor (site, visitor hash) a vstate holds a WINDOW: the visitor's latest visits, in
 * order, contiguous (complete = the store holds nothing older). A late event before the window
 * loads older visits from the sessions CF first, so the candidates it may join are always in
 * memory. Visits touched since the last flush are dirty; a visit that was already flushed keeps
 * a snapshot (`old`) of its flushed state, and visits merged away are kept as snapshots in the
 * vstate's retract list: at the flush each snapshot's contribution is subtracted and its key
 * deleted, and each dirty visit's contribution added and its record written.
 *
 * Cell deltas live in one hash map per granularity (minute, hour), keyed by (site, bucket,
 * dim, interned value). Visitor deltas are linked lists in a shared pool (add-only: delta 0;
 * multisets: +1/-1), revenue likewise. At the flush, hour cells are spliced into day cells
 * (a day is the sum of its hours: counters add, visitor lists concatenate), then every cell is
 * read (multi-get), updated and written back. When the store is known to be empty of a cell
 * (known_empty and a bloom filter of the cells this engine wrote), the read is skipped.
 *
 * The deltas, pools and batch of one flush interval form a flushset. A flush has two halves:
 * the adding side writes the visits and the state into the batch and builds the cells' keys
 * (it owns the intern table), the writing side reads, updates and puts the cells and writes
 * the batch. With flush_async (the rebuild) the writing side is the engine's flush thread and
 * the adding side fills the other set meanwhile; one set is in flight at most, sets are
 * written in order, and the adding side waits for the one in flight before it reads visits
 * (load_older) or hands over the next: so every read sees every earlier flush.
 */
#include "rollup/engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "core/diag.h"
#include "core/sortkey.h"
#include "ingest/timefmt.h"
#include "rollup/cell.h"
#include "rollup/dedup.h"
#include "rollup/u64map.h"
#include "store/codec.h"
#include "store/memo.h"
#include "store/strtab.h"
#include "tally/error.h"

#define GRAN_M TZ_MINUTE
#define GRAN_H TZ_HOUR
#define GRAN_D TZ_DAY
#define APPLY_CHUNK 2048
#define SESSION_KEY_BYTES 28
#define VISIT_VERSION 2
#define MINUTE_MS 60000
#define BLOOM_VISITOR_BITS (1u << 24)
#define BLOOM_CELL_BITS (1u << 27)
#define VSTATE_JOINED 16
#define GONE_PER_VISITOR 4

/* ---------------------------------------------------------------- data */

struct vrev {
    int64_t ts;
    int64_t micros;
    char cur[4];
};

/* A visit's events within one UTC minute. Every IANA offset since 1900 is a whole number of
 * minutes, so the minute decides the event's local minute, hour and day bucket. */
struct vmin {
    int64_t min_ms; /* UTC minute start */
    uint32_t pv, ev; /* pageviews and events in it */
};

struct visit {
    int64_t first_ts, last_ts;
    uint64_t first_off, last_off;
    uint32_t attr[ROLLUP_VISIT_DIMS]; /* interned values of the visit dimensions */
    uint32_t pageviews, events, inter_other;
    struct vmin *ev; /* the visit's events counted per UTC minute, ascending: the size of a
                        visit is bounded by its duration, not by its number of events */
    uint32_t nev, capev;
    struct vrev *rev;
    uint32_t nrev, caprev;
    uint64_t *edv; /* (dim << 32 | value), distinct event-dimension values, ascending */
    uint32_t nedv, capedv;
    struct visit *old; /* flushed state, while dirty */
    bool persisted, dirty;
};

struct vstate {
    uint32_t site;
    uint64_t visitor;
    struct vstate *hnext; /* same hash key */
    struct visit **v;
    uint32_t n, cap;
    struct visit **ret; /* flushed snapshots of visits merged away */
    uint32_t nret, capret;
    int64_t last_seen_ts;
    /* While the window is empty: no stored visit of this visitor ends after floor_ts
     * (INT64_MAX: unknown), so an event at least visit_gap_ms later begins a visit of its own
     * without reading the store. From the engine's record of evicted visitors. */
    int64_t floor_ts;
    bool complete, dirty;
    /* add-only cells this visitor already joined in this flush window (flush epoch << 32 |
     * gran << 31 | delta index): repeats need no second visitor entry */
    uint64_t joined[VSTATE_JOINED];
    uint8_t joined_pos;
};

struct esite {
    uint32_t id;
    const tz_zone *zone;
    bool skip;
    int64_t range_from, range_to; /* bucket filter in ms; both 0: none */
};

struct cdelta {
    uint64_t a, b; /* a = site << 32 | bucket minute; b = dim << 32 | value */
    int64_t pv, ev, visits, bounces, dur;
    uint32_t u_off, u_n, u_cap; /* visitor entries: e->w->up[u_off .. u_off + u_n) */
    uint32_t r_head, r_tail, r_n;
};

struct rent {
    int64_t micros;
    char cur[4];
    uint32_t next;
};

struct cmap {
    struct cdelta *d;
    size_t n, cap;
    uint32_t *slots;
    size_t nslots;
};

struct bloom {
    uint64_t *bits;
    uint64_t nbits;
};

struct keyref {
    uint64_t pfx;      /* the key's first 8 bytes, big-endian: most comparisons end here */
    const uint8_t *k;  /* the key, in its set's kbuf (set once the buffer stops growing) */
    uint32_t off, len; /* offset in kbuf; length (keys are at least 10 bytes) */
    uint32_t idx;      /* delta index */
};

/* The cell deltas of one flush interval and what writing them takes. The adding side fills
 * the engine's current set; at a flush the set, with its keys built and its batch holding the
 * visits and the state, goes to the writing side (the engine's flush thread with flush_async,
 * else the flushing caller), which reads the cells, applies the deltas, writes the batch and
 * clears nothing: the adding side collects and clears the set (collect). The writing side
 * touches only its set, e->s, e->o, e->cbloom and e->warned_negative. */
struct flushset {
    struct cmap cm[TZ_GRAN_COUNT];
    struct cell_mentry *up; /* visitor entries (count 0: add to an add-only set) */
    size_t nup, capup;
    struct rent *rp;
    size_t nrp, caprp;
    struct store_batch *batch;
    struct cbuf kbuf;    /* the cells' keys */
    struct keyref *refs; /* granularity g: refs[ref0[g] .. ref0[g] + nref[g]) */
    size_t capref, ref0[TZ_GRAN_COUNT], nref[TZ_GRAN_COUNT];
    /* the writing side's scratch and results */
    struct cbuf vbuf;
    uint64_t *u_scratch;
    size_t cap_u;
    uint64_t cells_written, cells_deleted, write_us;
    int rc;
};

struct engine {
    struct store *s;
    struct engine_opts o;
    char prefix[ENGINE_PREFIX_BYTES_MAX];
    bool persist;
    uint64_t cursor;
    int64_t wm;
    uint32_t mcut_saved; /* minute cut already purged (minutes) */
    struct dedup *dd;

    struct strtab *intern;
    uint32_t empty_id;
    struct strtab *site_names;
    struct esite *sites;
    size_t nsites, capsites;
    struct u64map site_idx; /* site id -> index in sites */

    struct u64map vmap; /* hash(site, visitor) -> vstate* */
    /* Evicted visitors: hash(site, visitor) -> the end of the latest visit stored for them
     * (the largest, when two visitors share a hash: a later floor only costs a read). At
     * most visitors_max * GONE_PER_VISITOR entries; forgetting them costs reads, no more. */
    struct u64map gone;
    size_t nvisitors;
    struct vstate **dirty;
    size_t ndirty, capdirty;

    struct flushset fs[2];
    struct flushset *w; /* the set being filled; with flush_async the other may be in flight */
    size_t pending;

    struct bloom vbloom, cbloom; /* cbloom: the writing side's */
    struct cbuf vbuf;            /* visit records */
    struct engine_stats st;
    int err; /* sticky failure */
    atomic_bool warned_negative;

    /* flush_async: the flush thread, and the set it was handed (NULL: none in flight) */
    pthread_t fth;
    bool fth_started, fquit, fjob_done;
    pthread_mutex_t fmu;
    pthread_cond_t fcv;
    struct flushset *fjob;
};

static const int visit_field[ROLLUP_VISIT_DIMS] = {
    DE_PATH,         /* entry page */
    DE_PATH,         /* exit page */
    DE_SOURCE,       DE_REFERRER,        DE_CHANNEL,   DE_UTM_SOURCE, DE_UTM_MEDIUM,
    DE_UTM_CAMPAIGN, DE_UTM_CONTENT,     DE_UTM_TERM,  DE_DEVICE,     DE_BROWSER,
    DE_BROWSER_VERSION, DE_OS,           DE_OS_VERSION, DE_COUNTRY,   DE_REGION,
    DE_CITY,
};
#define SLOT_ENTRY (ROLLUP_DIM_ENTRY_PAGE - ROLLUP_DIM_FIRST_VISIT)
#define SLOT_EXIT (ROLLUP_DIM_EXIT_PAGE - ROLLUP_DIM_FIRST_VISIT)

void engine_opts_default(struct engine_opts *o)
{
    memset(o, 0, sizeof *o);
    o->visit_gap_ms = 30LL * 60 * 1000;
    o->minute_retention_ms = 6LL * 3600 * 1000;
    o->visitor_idle_ms = 2LL * 3600 * 1000;
    o->visitors_max = 500000;
    o->pending_events_max = 500000;
    o->pending_bytes_max = 256u << 20;
    o->intern_bytes_max = 256u << 20;
    o->state_prefix = "rollup.";
}

/* ---------------------------------------------------------------- small helpers */

static bool grow(void **p, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap) return true;
    uint32_t c = *cap ? *cap * 2 : 4;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static bool growz(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return true;
    size_t c = *cap ? *cap * 2 : 1024;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* A blocked bloom filter: the three bits of a hash lie in one 512-bit block (one cache line),
 * so an add or a probe touches one line of the table instead of three: about 1.5x the false
 * positives of a plain filter of the same size (a false positive only costs a read). nbits is
 * a power of two, at least 512. */
static bool bloom_init(struct bloom *b, uint64_t nbits)
{
    TALLY_ASSERT(nbits >= 512 && (nbits & (nbits - 1)) == 0);
    b->bits = aligned_alloc(64, nbits / 8);
    if (b->bits) memset(b->bits, 0, nbits / 8);
    b->nbits = nbits;
    return b->bits != NULL;
}

static inline uint64_t *bloom_block(const struct bloom *b, uint64_t h)
{
    return b->bits + ((h >> 32) & (b->nbits / 512 - 1)) * 8;
}

static void bloom_add(struct bloom *b, uint64_t h)
{
    if (!b->bits) return;
    uint64_t *w = bloom_block(b, h);
    for (int i = 0; i < 3; i++) {
        unsigned x = (unsigned)(h >> (9 * i)) & 511;
        w[x / 64] |= 1ULL << (x % 64);
    }
}

static bool bloom_maybe(const struct bloom *b, uint64_t h)
{
    if (!b->bits) return true;
    const uint64_t *w = bloom_block(b, h);
    for (int i = 0; i < 3; i++) {
        unsigned x = (unsigned)(h >> (9 * i)) & 511;
        if (!(w[x / 64] & (1ULL << (x % 64)))) return false;
    }
    return true;
}

static uint64_t visitor_hash(uint32_t site, uint64_t visitor)
{
    uint64_t h = u64map_hash(visitor ^ ((uint64_t)site * 0x9E3779B97F4A7C15ULL));
    return h ? h : 1;
}

static int64_t fail(struct engine *e, int rc)
{
    if (!e->err) e->err = rc;
    return rc;
}

static uint32_t intern(struct engine *e, const char *s, uint32_t len)
{
    int64_t id = strtab_intern(e->intern, 0, s, len, NULL);
    if (id < 0) {
        fail(e, TALLY_ENOMEM);
        return e->empty_id;
    }
    return (uint32_t)id;
}

static uint32_t intern_prop(struct engine *e, const struct devent_prop *p)
{
    char buf[2 * 2048 + 2];
    uint32_t kl = p->key.len > 2048 ? 2048 : p->key.len;
    uint32_t vl = p->value.len > 2048 ? 2048 : p->value.len;
    memcpy(buf, p->key.ptr, kl);
    buf[kl] = 0;
    memcpy(buf + kl + 1, p->value.ptr, vl);
    return intern(e, buf, kl + 1 + vl);
}

static uint32_t minute_cut(const struct engine *e)
{
    int64_t w = e->wm > e->o.watermark_hint_ms ? e->wm : e->o.watermark_hint_ms;
    int64_t cut_ms = w - e->o.minute_retention_ms;
    if (cut_ms < 0) return 0;
    cut_ms -= cut_ms % 3600000;
    return (uint32_t)(cut_ms / 60000);
}

/* ---------------------------------------------------------------- cell deltas */

static uint64_t cmap_hash(uint64_t a, uint64_t b)
{
    return u64map_hash(a ^ (b * 0x9E3779B97F4A7C15ULL) ^ (b >> 29));
}

static bool cmap_rehash(struct cmap *m, size_t nslots)
{
    uint32_t *s = calloc(nslots, sizeof *s);
    if (!s) return false;
    for (size_t k = 0; k < m->n; k++) {
        size_t i = (size_t)cmap_hash(m->d[k].a, m->d[k].b) & (nslots - 1);
        while (s[i]) i = (i + 1) & (nslots - 1);
        s[i] = (uint32_t)(k + 1);
    }
    free(m->slots);
    m->slots = s;
    m->nslots = nslots;
    return true;
}

/* Starts loading the slot where cmap_at's probe for (a, b) begins, so that lookups made one
 * after another find their slots in cache instead of waiting for each miss in turn. */
static inline void cmap_prefetch(const struct cmap *m, uint64_t a, uint64_t b)
{
    if (m->nslots) __builtin_prefetch(&m->slots[cmap_hash(a, b) & (m->nslots - 1)]);
}

/* Index of the delta for (a, b), created when absent; UINT32_MAX on OOM. */
static uint32_t cmap_at(struct cmap *m, uint64_t a, uint64_t b)
{
    if ((m->n + 1) * 2 > m->nslots && !cmap_rehash(m, m->nslots ? m->nslots * 2 : 4096))
        return UINT32_MAX;
    size_t mask = m->nslots - 1, i = (size_t)cmap_hash(a, b) & mask;
    for (;;) {
        uint32_t v = m->slots[i];
        if (!v) break;
        if (m->d[v - 1].a == a && m->d[v - 1].b == b) return v - 1;
        i = (i + 1) & mask;
    }
    if (!growz((void **)&m->d, &m->cap, m->n + 1, sizeof *m->d)) return UINT32_MAX;
    struct cdelta *d = &m->d[m->n];
    memset(d, 0, sizeof *d);
    d->a = a;
    d->b = b;
    m->slots[i] = (uint32_t)(m->n + 1);
    return (uint32_t)m->n++;
}

static void cmap_clear(struct cmap *m)
{
    m->n = 0;
    if (m->slots) memset(m->slots, 0, m->nslots * sizeof *m->slots);
}

static void cmap_free(struct cmap *m)
{
    free(m->d);
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static struct cdelta *cell_at(struct engine *e, int gran, uint32_t site, uint32_t bucket,
                              int dim, uint32_t val)
{
    struct cmap *m = &e->w->cm[gran];
    uint32_t i = cmap_at(m, (uint64_t)site << 32 | bucket, (uint64_t)dim << 32 | val);
    if (i == UINT32_MAX) {
        fail(e, TALLY_ENOMEM);
        return NULL;
    }
    return &m->d[i];
}

/* Makes room for `need` entries in d's slice of the pool (moving it to the pool's end with a
 * doubled capacity when full), so each cell's entries stay contiguous: reading them at the
 * flush is sequential instead of a chase through the whole pool. */
static bool u_reserve(struct engine *e, struct cdelta *d, uint32_t need)
{
    if (need <= d->u_cap) return true;
    uint32_t cap = d->u_cap ? d->u_cap * 2 : 2;
    while (cap < need) cap *= 2;
    if (!growz((void **)&e->w->up, &e->w->capup, e->w->nup + cap, sizeof *e->w->up)) {
        fail(e, TALLY_ENOMEM);
        return false;
    }
    if (d->u_n) memcpy(e->w->up + e->w->nup, e->w->up + d->u_off, d->u_n * sizeof *e->w->up);
    d->u_off = (uint32_t)e->w->nup;
    d->u_cap = cap;
    e->w->nup += cap;
    return true;
}

static void u_push(struct engine *e, struct cdelta *d, uint64_t visitor, int32_t delta)
{
    if (!u_reserve(e, d, d->u_n + 1)) return;
    e->w->up[d->u_off + d->u_n++] = (struct cell_mentry){visitor, delta};
}

static void r_push(struct engine *e, struct cdelta *d, const char *cur, int64_t micros)
{
    if (!growz((void **)&e->w->rp, &e->w->caprp, e->w->nrp + 1, sizeof *e->w->rp)) {
        fail(e, TALLY_ENOMEM);
        return;
    }
    uint32_t i = (uint32_t)e->w->nrp++;
    e->w->rp[i].micros = micros;
    memcpy(e->w->rp[i].cur, cur, 3);
    e->w->rp[i].cur[3] = 0;
    e->w->rp[i].next = 0;
    if (d->r_n)
        e->w->rp[d->r_tail].next = i;
    else d->r_head = i;
    d->r_tail = i;
    d->r_n++;
}

/* Adds src's counters and lists to dst. */
static void splice(struct engine *e, struct cdelta *dst, const struct cdelta *src)
{
    dst->pv += src->pv;
    dst->ev += src->ev;
    dst->visits += src->visits;
    dst->bounces += src->bounces;
    dst->dur += src->dur;
    if (src->u_n && u_reserve(e, dst, dst->u_n + src->u_n)) {
        memcpy(e->w->up + dst->u_off + dst->u_n, e->w->up + src->u_off,
               src->u_n * sizeof *e->w->up);
        dst->u_n += src->u_n;
    }
    if (src->r_n) {
        if (dst->r_n)
            e->w->rp[dst->r_tail].next = src->r_head;
        else dst->r_head = src->r_head;
        dst->r_tail = src->r_tail;
        dst->r_n += src->r_n;
    }
}

/* ---------------------------------------------------------------- visits */

static struct visit *visit_new(void)
{
    return calloc(1, sizeof(struct visit));
}

static void visit_free(struct visit *v)
{
    if (!v) return;
    visit_free(v->old);
    free(v->ev);
    free(v->rev);
    free(v->edv);
    free(v);
}

static struct visit *visit_clone(const struct visit *v)
{
    struct visit *c = malloc(sizeof *c);
    if (!c) return NULL;
    *c = *v;
    c->old = NULL;
    c->ev = malloc((v->nev ? v->nev : 1) * sizeof *c->ev);
    c->rev = malloc((v->nrev ? v->nrev : 1) * sizeof *c->rev);
    c->edv = malloc((v->nedv ? v->nedv : 1) * sizeof *c->edv);
    if (!c->ev || !c->rev || !c->edv) {
        free(c->ev);
        free(c->rev);
        free(c->edv);
        free(c);
        return NULL;
    }
    if (v->nev) memcpy(c->ev, v->ev, v->nev * sizeof *c->ev);
    if (v->nrev) memcpy(c->rev, v->rev, v->nrev * sizeof *c->rev);
    if (v->nedv) memcpy(c->edv, v->edv, v->nedv * sizeof *c->edv);
    c->capev = v->nev ? v->nev : 1;
    c->caprev = v->nrev ? v->nrev : 1;
    c->capedv = v->nedv ? v->nedv : 1;
    return c;
}

static bool visit_add_edv(struct visit *v, uint64_t x)
{
    uint32_t lo = 0, hi = v->nedv;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (v->edv[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    if (lo < v->nedv && v->edv[lo] == x) return true;
    if (!grow((void **)&v->edv, &v->capedv, v->nedv + 1, sizeof *v->edv)) return false;
    memmove(v->edv + lo + 1, v->edv + lo, (v->nedv - lo) * sizeof *v->edv);
    v->edv[lo] = x;
    v->nedv++;
    return true;
}

static int64_t minute_floor(int64_t ts_ms)
{
    int64_t m = ts_ms / MINUTE_MS;
    if (ts_ms % MINUTE_MS < 0) m--;
    return m * MINUTE_MS;
}

/* Counts pv pageviews and ev events in the UTC minute of ts_ms. */
static bool visit_add_ev(struct visit *v, int64_t ts_ms, uint32_t pv, uint32_t ev)
{
    int64_t m = minute_floor(ts_ms);
    uint32_t i = v->nev;
    while (i > 0 && v->ev[i - 1].min_ms > m) i--;
    if (i > 0 && v->ev[i - 1].min_ms == m) {
        v->ev[i - 1].pv += pv;
        v->ev[i - 1].ev += ev;
        return true;
    }
    if (!grow((void **)&v->ev, &v->capev, v->nev + 1, sizeof *v->ev)) return false;
    memmove(v->ev + i + 1, v->ev + i, (v->nev - i) * sizeof *v->ev);
    v->ev[i] = (struct vmin){m, pv, ev};
    v->nev++;
    return true;
}

static int vrev_cmp(const struct vrev *a, const struct vrev *b)
{
    if (a->ts != b->ts) return a->ts < b->ts ? -1 : 1;
    int c = memcmp(a->cur, b->cur, 3);
    if (c) return c;
    return a->micros < b->micros ? -1 : a->micros > b->micros;
}

static bool visit_add_rev(struct visit *v, const struct vrev *r)
{
    if (!grow((void **)&v->rev, &v->caprev, v->nrev + 1, sizeof *v->rev)) return false;
    uint32_t i = v->nrev;
    while (i > 0 && vrev_cmp(&v->rev[i - 1], r) > 0) i--;
    memmove(v->rev + i + 1, v->rev + i, (v->nrev - i) * sizeof *v->rev);
    v->rev[i] = *r;
    v->nrev++;
    return true;
}

/* Interned per-event values an insertion needs. */
struct evals {
    uint32_t path, host, name;
    uint32_t props[DE_PROPS_MAX];
    uint32_t nprops;
};

static void visit_set_attrs(struct engine *e, struct visit *v, const struct devent *ev,
                            const struct evals *x)
{
    for (int s = 0; s < ROLLUP_VISIT_DIMS; s++) {
        if (s == SLOT_EXIT) continue;
        if (s == SLOT_ENTRY) {
            v->attr[s] = x->path;
            continue;
        }
        const struct devent_str *str = &ev->str[visit_field[s]];
        v->attr[s] = intern(e, str->ptr, str->len);
    }
}

/* Adds one event to v (which is already touched). */
static bool visit_insert(struct engine *e, struct visit *v, const struct devent *ev,
                         const struct evals *x)
{
    bool first = v->events == 0 || ev->ts_ms < v->first_ts ||
                 (ev->ts_ms == v->first_ts && ev->offset < v->first_off);
    bool last = v->events == 0 || ev->ts_ms > v->last_ts ||
                (ev->ts_ms == v->last_ts && ev->offset > v->last_off);
    if (first) {
        v->first_ts = ev->ts_ms;
        v->first_off = ev->offset;
        visit_set_attrs(e, v, ev, x);
    }
    if (last) {
        v->last_ts = ev->ts_ms;
        v->last_off = ev->offset;
        v->attr[SLOT_EXIT] = x->path;
    }
    v->events++;
    if (ev->pageview) v->pageviews++;
    else if (ev->interactive) v->inter_other++;
    if (!visit_add_ev(v, ev->ts_ms, ev->pageview ? 1u : 0u, 1)) return false;
    if (ev->has_revenue) {
        struct vrev r = {.ts = ev->ts_ms, .micros = ev->revenue_micros};
        memcpy(r.cur, ev->currency, 3);
        if (!visit_add_rev(v, &r)) return false;
    }
    bool ok = visit_add_edv(v, (uint64_t)ROLLUP_DIM_PAGE << 32 | x->path) &&
              visit_add_edv(v, (uint64_t)ROLLUP_DIM_HOSTNAME << 32 | x->host) &&
              visit_add_edv(v, (uint64_t)ROLLUP_DIM_NAME << 32 | x->name);
    for (uint32_t i = 0; ok && i < x->nprops; i++)
        ok = visit_add_edv(v, (uint64_t)ROLLUP_DIM_PROP << 32 | x->props[i]);
    return ok;
}

/* Appends later visit n to v (n lies entirely after v). */
static bool visit_absorb(struct visit *v, const struct visit *n)
{
    if (n->last_ts > v->last_ts || (n->last_ts == v->last_ts && n->last_off > v->last_off)) {
        v->last_ts = n->last_ts;
        v->last_off = n->last_off;
        v->attr[SLOT_EXIT] = n->attr[SLOT_EXIT];
    }
    v->pageviews += n->pageviews;
    v->events += n->events;
    v->inter_other += n->inter_other;
    for (uint32_t i = 0; i < n->nev; i++)
        if (!visit_add_ev(v, n->ev[i].min_ms, n->ev[i].pv, n->ev[i].ev)) return false;
    for (uint32_t i = 0; i < n->nrev; i++)
        if (!visit_add_rev(v, &n->rev[i])) return false;
    for (uint32_t i = 0; i < n->nedv; i++)
        if (!visit_add_edv(v, n->edv[i])) return false;
    return true;
}

/* ---------------------------------------------------------------- sessions CF codec */

static void session_key(uint8_t out[SESSION_KEY_BYTES], uint32_t site, uint64_t visitor,
                        int64_t first_ts, uint64_t first_off)
{
    store_put_be32(out, site);
    store_put_be64(out + 4, visitor);
    store_put_be64(out + 12, (uint64_t)first_ts);
    store_put_be64(out + 20, first_off);
}

struct edv_sort {
    uint8_t dim;
    const char *s;
    uint32_t len;
};

static int edv_sort_cmp(const void *a, const void *b)
{
    const struct edv_sort *x = a, *y = b;
    if (x->dim != y->dim) return x->dim < y->dim ? -1 : 1;
    uint32_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

#define EDV_LESS(a, b) (edv_sort_cmp(a, b) < 0)
SORTKEY_DEFINE(edv_sort_array, struct edv_sort, EDV_LESS)

static void visit_encode(struct engine *e, const struct visit *v, struct cbuf *b)
{
    cbuf_reset(b);
    cbuf_u8(b, VISIT_VERSION);
    cbuf_svarint(b, v->last_ts - v->first_ts);
    cbuf_svarint(b, (int64_t)(v->last_off - v->first_off));
    cbuf_varint(b, v->pageviews);
    cbuf_varint(b, v->events);
    cbuf_varint(b, v->inter_other);
    for (int s = 0; s < ROLLUP_VISIT_DIMS; s++) {
        uint32_t len;
        const char *str = strtab_str(e->intern, v->attr[s], &len);
        cbuf_str(b, str, len);
    }
    cbuf_varint(b, v->nev);
    int64_t prev = minute_floor(v->first_ts);
    for (uint32_t i = 0; i < v->nev; i++) {
        cbuf_varint(b, (uint64_t)((v->ev[i].min_ms - prev) / MINUTE_MS));
        cbuf_varint(b, v->ev[i].pv);
        cbuf_varint(b, v->ev[i].ev);
        prev = v->ev[i].min_ms;
    }
    cbuf_varint(b, v->nrev);
    for (uint32_t i = 0; i < v->nrev; i++) {
        cbuf_svarint(b, v->rev[i].ts - v->first_ts);
        cbuf_put(b, v->rev[i].cur, 3);
        cbuf_svarint(b, v->rev[i].micros);
    }
    struct edv_sort tmp[64], *srt = tmp;
    if (v->nedv > 64 && !(srt = malloc(v->nedv * sizeof *srt))) {
        b->oom = true;
        return;
    }
    for (uint32_t i = 0; i < v->nedv; i++) {
        srt[i].dim = (uint8_t)(v->edv[i] >> 32);
        srt[i].s = strtab_str(e->intern, (uint32_t)v->edv[i], &srt[i].len);
    }
    edv_sort_array(srt, v->nedv);
    cbuf_varint(b, v->nedv);
    for (uint32_t i = 0; i < v->nedv; i++) {
        cbuf_u8(b, srt[i].dim);
        cbuf_str(b, srt[i].s, srt[i].len);
    }
    if (srt != tmp) free(srt);
}

static int visit_decode(struct engine *e, const uint8_t *key, const uint8_t *val, size_t len,
                        struct visit **out)
{
    struct visit *v = visit_new();
    if (!v) return TALLY_ENOMEM;
    struct creader r;
    creader_init(&r, val, len);
    int rc = TALLY_ECORRUPT;
    if (creader_u8(&r) != VISIT_VERSION) goto bad;
    v->first_ts = (int64_t)store_get_be64(key + 12);
    v->first_off = store_get_be64(key + 20);
    v->last_ts = v->first_ts + creader_svarint(&r);
    v->last_off = v->first_off + (uint64_t)creader_svarint(&r);
    v->pageviews = (uint32_t)creader_varint(&r);
    v->events = (uint32_t)creader_varint(&r);
    v->inter_other = (uint32_t)creader_varint(&r);
    for (int s = 0; s < ROLLUP_VISIT_DIMS; s++) {
        uint32_t l;
        const char *str = creader_str(&r, &l);
        v->attr[s] = intern(e, str, l);
    }
    uint64_t n = creader_varint(&r);
    if (r.err || n > (uint64_t)(r.end - r.p)) goto bad;
    if (!grow((void **)&v->ev, &v->capev, (uint32_t)n + 1, sizeof *v->ev)) goto oom;
    int64_t prev = minute_floor(v->first_ts);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t dm = creader_varint(&r);
        uint64_t pv = creader_varint(&r), evn = creader_varint(&r);
        if (r.err || (i > 0 && dm == 0) || dm > (1ull << 40) || pv > evn || evn == 0 ||
            evn > UINT32_MAX)
            goto bad;
        prev += (int64_t)dm * MINUTE_MS;
        v->ev[v->nev++] = (struct vmin){prev, (uint32_t)pv, (uint32_t)evn};
    }
    n = creader_varint(&r);
    if (r.err || n > (uint64_t)(r.end - r.p)) goto bad;
    if (!grow((void **)&v->rev, &v->caprev, (uint32_t)n + 1, sizeof *v->rev)) goto oom;
    for (uint64_t i = 0; i < n; i++) {
        struct vrev *x = &v->rev[v->nrev++];
        x->ts = v->first_ts + creader_svarint(&r);
        for (int k = 0; k < 3; k++) x->cur[k] = (char)creader_u8(&r);
        x->cur[3] = 0;
        x->micros = creader_svarint(&r);
    }
    n = creader_varint(&r);
    if (r.err || n > (uint64_t)(r.end - r.p)) goto bad;
    for (uint64_t i = 0; i < n; i++) {
        uint8_t dim = creader_u8(&r);
        uint32_t l;
        const char *str = creader_str(&r, &l);
        if (r.err) goto bad;
        if (!visit_add_edv(v, (uint64_t)dim << 32 | intern(e, str, l))) goto oom;
    }
    if (r.err || !creader_done(&r) || e->err) goto bad;
    v->persisted = true;
    *out = v;
    return TALLY_OK;
oom:
    rc = TALLY_ENOMEM;
bad:
    visit_free(v);
    return e->err ? e->err : rc;
}

/* ---------------------------------------------------------------- visitors */

static struct vstate *vstate_find(struct engine *e, uint32_t site, uint64_t visitor)
{
    uint64_t *p = u64map_get(&e->vmap, visitor_hash(site, visitor));
    for (struct vstate *vs = p ? (struct vstate *)(uintptr_t)*p : NULL; vs; vs = vs->hnext)
        if (vs->site == site && vs->visitor == visitor) return vs;
    return NULL;
}

static void vstate_free(struct vstate *vs)
{
    for (uint32_t i = 0; i < vs->n; i++) visit_free(vs->v[i]);
    for (uint32_t i = 0; i < vs->nret; i++) visit_free(vs->ret[i]);
    free(vs->v);
    free(vs->ret);
    free(vs);
}

static void vstate_unlink(struct engine *e, struct vstate *vs)
{
    uint64_t h = visitor_hash(vs->site, vs->visitor);
    uint64_t *p = u64map_get(&e->vmap, h);
    if (!p) return;
    struct vstate *head = (struct vstate *)(uintptr_t)*p;
    if (head == vs) {
        if (vs->hnext) *p = (uint64_t)(uintptr_t)vs->hnext;
        else u64map_del(&e->vmap, h);
    } else {
        for (struct vstate *x = head; x; x = x->hnext)
            if (x->hnext == vs) {
                x->hnext = vs->hnext;
                break;
            }
    }
    e->nvisitors--;
}

static void mark_dirty(struct engine *e, struct vstate *vs)
{
    if (vs->dirty) return;
    if (!growz((void **)&e->dirty, &e->capdirty, e->ndirty + 1, sizeof *e->dirty)) {
        fail(e, TALLY_ENOMEM);
        return;
    }
    vs->dirty = true;
    e->dirty[e->ndirty++] = vs;
}

static bool touch(struct engine *e, struct vstate *vs, struct visit *v)
{
    mark_dirty(e, vs);
    if (v->dirty) return true;
    v->dirty = true;
    if (v->persisted && !v->old && !(v->old = visit_clone(v))) return false;
    return true;
}

static bool window_insert(struct vstate *vs, struct visit *v)
{
    if (!grow((void **)&vs->v, &vs->cap, vs->n + 1, sizeof *vs->v)) return false;
    uint32_t i = vs->n;
    while (i > 0 && (vs->v[i - 1]->first_ts > v->first_ts ||
                     (vs->v[i - 1]->first_ts == v->first_ts &&
                      vs->v[i - 1]->first_off > v->first_off)))
        i--;
    memmove(vs->v + i + 1, vs->v + i, (vs->n - i) * sizeof *vs->v);
    vs->v[i] = v;
    vs->n++;
    return true;
}

/* Loads the visitor's latest stored visit before the window (or the latest of all when the
 * window is empty); sets complete when there is none. */
static int load_older(struct engine *e, struct vstate *vs)
{
    int rc = engine_sync(e); /* the visits of a flush in flight must be in the store first */
    if (rc) return rc;
    uint8_t lo[12], hi[SESSION_KEY_BYTES], target[SESSION_KEY_BYTES];
    store_put_be32(lo, vs->site);
    store_put_be64(lo + 4, vs->visitor);
    memcpy(hi, lo, 12);
    memset(hi + 12, 0xff, SESSION_KEY_BYTES - 12);
    struct store_iter *it = store_iter_new(e->s, STORE_CF_SESSIONS, lo, 12, hi, sizeof hi);
    if (!it) return TALLY_ENOMEM;
    if (vs->n == 0) {
        store_iter_seek_last(it);
    } else {
        session_key(target, vs->site, vs->visitor, vs->v[0]->first_ts, vs->v[0]->first_off);
        store_iter_seek_prev(it, target, sizeof target);
        if (store_iter_valid(it)) {
            size_t kl;
            const uint8_t *k = store_iter_key(it, &kl);
            if (kl == SESSION_KEY_BYTES && memcmp(k, target, SESSION_KEY_BYTES) == 0)
                store_iter_prev(it);
        }
    }
    if (!store_iter_valid(it)) {
        rc = store_iter_status(it);
        vs->complete = true;
    } else {
        size_t kl, vl;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *val = store_iter_value(it, &vl);
        struct visit *v = NULL;
        if (kl != SESSION_KEY_BYTES) rc = TALLY_ECORRUPT;
        else rc = visit_decode(e, k, val, vl, &v);
        if (!rc && !window_insert(vs, v)) {
            visit_free(v);
            rc = TALLY_ENOMEM;
        }
        if (!rc) e->st.session_loads++;
    }
    store_iter_free(it);
    return rc;
}

static struct vstate *vstate_get(struct engine *e, uint32_t site, uint64_t visitor)
{
    struct vstate *vs = vstate_find(e, site, visitor);
    if (vs) return vs;
    vs = calloc(1, sizeof *vs);
    if (!vs) {
        fail(e, TALLY_ENOMEM);
        return NULL;
    }
    vs->site = site;
    vs->visitor = visitor;
    uint64_t h = visitor_hash(site, visitor);
    vs->complete = e->o.known_empty && !bloom_maybe(&e->vbloom, h);
    const uint64_t *g = u64map_get(&e->gone, h);
    vs->floor_ts = g ? (int64_t)*g : INT64_MAX;
    uint64_t *p = u64map_get(&e->vmap, h);
    vs->hnext = p ? (struct vstate *)(uintptr_t)*p : NULL;
    if (!u64map_put(&e->vmap, h, (uint64_t)(uintptr_t)vs)) {
        free(vs);
        fail(e, TALLY_ENOMEM);
        return NULL;
    }
    e->nvisitors++;
    return vs;
}

/* Puts ev into the visitor's visits: new, extended, or merging two. */
static int sessionize(struct engine *e, struct vstate *vs, const struct devent *ev,
                      const struct evals *x)
{
    const int64_t ts = ev->ts_ms, gap = e->o.visit_gap_ms;
    /* an event can touch stored visits only if it lies before the window (or, with none in
     * memory, less than a gap after the latest stored visit's end) */
    while (!vs->complete && (vs->n == 0 ? ts - gap < vs->floor_ts : ts < vs->v[0]->first_ts)) {
        int rc = load_older(e, vs);
        if (rc) return fail(e, rc);
    }
    if (ts > vs->last_seen_ts) vs->last_seen_ts = ts;
    uint32_t c0 = UINT32_MAX, nc = 0;
    for (uint32_t i = 0; i < vs->n; i++) {
        struct visit *v = vs->v[i];
        if (v->first_ts - gap < ts && ts < v->last_ts + gap) {
            if (nc == 0) c0 = i;
            nc++;
        }
    }
    if (nc == 0) {
        struct visit *v = visit_new();
        if (!v) return fail(e, TALLY_ENOMEM);
        v->dirty = true;
        if (!visit_insert(e, v, ev, x) || !window_insert(vs, v)) {
            visit_free(v);
            return fail(e, TALLY_ENOMEM);
        }
        mark_dirty(e, vs);
        return e->err;
    }
    struct visit *p = vs->v[c0];
    if (!touch(e, vs, p) || !visit_insert(e, p, ev, x)) return fail(e, TALLY_ENOMEM);
    if (nc == 2) {
        struct visit *n = vs->v[c0 + 1];
        if (!visit_absorb(p, n)) return fail(e, TALLY_ENOMEM);
        memmove(vs->v + c0 + 1, vs->v + c0 + 2, (vs->n - c0 - 2) * sizeof *vs->v);
        vs->n--;
        if (n->persisted) {
            struct visit *snap = n->old ? n->old : n;
            if (n->old) {
                n->old = NULL;
                visit_free(n);
            }
            if (!grow((void **)&vs->ret, &vs->capret, vs->nret + 1, sizeof *vs->ret)) {
                visit_free(snap);
                return fail(e, TALLY_ENOMEM);
            }
            vs->ret[vs->nret++] = snap;
        } else {
            visit_free(n);
        }
    }
    TALLY_ASSERT(nc <= 2);
    return e->err;
}

/* ---------------------------------------------------------------- contributions */

static inline uint32_t bucket_min(int64_t ms)
{
    return (uint32_t)(ms / 60000);
}

/* cmap_prefetch for the visit dimensions' cells of (site, bucket). */
static inline void visit_cells_prefetch(struct engine *e, int gran, uint32_t site, uint32_t bucket,
                                        const struct visit *v)
{
    const uint64_t a = (uint64_t)site << 32 | bucket;
    for (int s = 0; s < ROLLUP_VISIT_DIMS; s++)
        cmap_prefetch(&e->w->cm[gran], a,
                      (uint64_t)(ROLLUP_DIM_FIRST_VISIT + s) << 32 | v->attr[s]);
}

static void visit_cells(struct engine *e, int gran, uint32_t site, uint32_t bucket,
                        const struct visit *v, int sign, int64_t bounce, int64_t dur)
{
    visit_cells_prefetch(e, gran, site, bucket, v);
    struct cdelta *d = cell_at(e, gran, site, bucket, ROLLUP_DIM_TOTAL, e->empty_id);
    if (!d) return;
    d->visits += sign, d->bounces += sign * bounce, d->dur += sign * dur;
    for (int s = 0; s < ROLLUP_VISIT_DIMS; s++) {
        d = cell_at(e, gran, site, bucket, ROLLUP_DIM_FIRST_VISIT + s, v->attr[s]);
        if (!d) return;
        d->visits += sign, d->bounces += sign * bounce, d->dur += sign * dur;
    }
    for (uint32_t i = 0; i < v->nedv; i++) {
        d = cell_at(e, gran, site, bucket, (int)(v->edv[i] >> 32), (uint32_t)v->edv[i]);
        if (!d) return;
        d->visits += sign, d->bounces += sign * bounce, d->dur += sign * dur;
    }
}

static void group_cells(struct engine *e, int gran, uint32_t site, uint32_t bucket,
                        uint64_t visitor, const struct visit *v, int sign, int64_t pv,
                        int64_t ev)
{
    visit_cells_prefetch(e, gran, site, bucket, v);
    for (int s = 0; s < ROLLUP_VISIT_DIMS; s++) {
        struct cdelta *d = cell_at(e, gran, site, bucket, ROLLUP_DIM_FIRST_VISIT + s,
                                   v->attr[s]);
        if (!d) return;
        d->pv += sign * pv;
        d->ev += sign * ev;
        u_push(e, d, visitor, sign);
    }
}

/* Adds (sign = +1) or subtracts (-1) everything visit v contributes. */
static void contribute(struct engine *e, const struct esite *st, uint64_t visitor,
                       const struct visit *v, int sign)
{
    const uint32_t mcut = minute_cut(e);
    int64_t b[TZ_GRAN_COUNT];
    tz_buckets_ms(st->zone, v->first_ts, b);
    int64_t bounce = v->pageviews == 1 && v->inter_other == 0;
    int64_t dur = v->last_ts - v->first_ts;
    visit_cells(e, GRAN_H, st->id, bucket_min(b[GRAN_H]), v, sign, bounce, dur);
    if (bucket_min(b[GRAN_M]) >= mcut)
        visit_cells(e, GRAN_M, st->id, bucket_min(b[GRAN_M]), v, sign, bounce, dur);

    /* events of the visit grouped by bucket (events are in time order) */
    uint32_t cur_h = UINT32_MAX, cur_m = UINT32_MAX;
    int64_t pv_h = 0, ev_h = 0, pv_m = 0, ev_m = 0;
    for (uint32_t i = 0; i <= v->nev; i++) {
        uint32_t bh = UINT32_MAX, bm = UINT32_MAX;
        int64_t pv = 0, evn = 0;
        if (i < v->nev) {
            tz_buckets_ms(st->zone, v->ev[i].min_ms, b);
            bh = bucket_min(b[GRAN_H]);
            bm = bucket_min(b[GRAN_M]);
            pv = v->ev[i].pv;
            evn = v->ev[i].ev;
        }
        if (bh != cur_h) {
            if (cur_h != UINT32_MAX)
                group_cells(e, GRAN_H, st->id, cur_h, visitor, v, sign, pv_h, ev_h);
            cur_h = bh, pv_h = 0, ev_h = 0;
        }
        if (bm != cur_m) {
            if (cur_m != UINT32_MAX && cur_m >= mcut)
                group_cells(e, GRAN_M, st->id, cur_m, visitor, v, sign, pv_m, ev_m);
            cur_m = bm, pv_m = 0, ev_m = 0;
        }
        pv_h += pv, ev_h += evn, pv_m += pv, ev_m += evn;
    }
    for (uint32_t i = 0; i < v->nrev; i++) {
        tz_buckets_ms(st->zone, v->rev[i].ts, b);
        for (int g = GRAN_M; g <= GRAN_H; g++) {
            uint32_t bk = bucket_min(b[g]);
            if (g == GRAN_M && bk < mcut) continue;
            for (int s = 0; s < ROLLUP_VISIT_DIMS; s++) {
                struct cdelta *d =
                    cell_at(e, g, st->id, bk, ROLLUP_DIM_FIRST_VISIT + s, v->attr[s]);
                if (!d) return;
                r_push(e, d, v->rev[i].cur, sign * v->rev[i].micros);
            }
        }
    }
}

/* The add-only per-event contributions: totals and event dimensions. */
/* Whether vs already joined the add-only cell d of granularity g in this flush window; if not,
 * remembers it. */
static bool joined(struct engine *e, struct vstate *vs, int g, const struct cdelta *d)
{
    uint64_t tag = (e->st.flushes + 1) << 32 | (uint64_t)g << 31 | (uint64_t)(d - e->w->cm[g].d);
    for (int i = 0; i < VSTATE_JOINED; i++)
        if (vs->joined[i] == tag) return true;
    vs->joined[vs->joined_pos] = tag;
    vs->joined_pos = (uint8_t)((vs->joined_pos + 1) % VSTATE_JOINED);
    return false;
}

static void event_cells(struct engine *e, const struct esite *st, struct vstate *vs,
                        const struct devent *ev, const struct evals *x)
{
    int64_t b[TZ_GRAN_COUNT];
    tz_buckets_ms(st->zone, ev->ts_ms, b);
    const uint32_t mcut = minute_cut(e);
    uint32_t n = 4 + x->nprops;
    uint64_t key_b[4 + DE_PROPS_MAX]; /* dim << 32 | value */
    key_b[0] = (uint64_t)ROLLUP_DIM_TOTAL << 32 | e->empty_id;
    key_b[1] = (uint64_t)ROLLUP_DIM_PAGE << 32 | x->path;
    key_b[2] = (uint64_t)ROLLUP_DIM_HOSTNAME << 32 | x->host;
    key_b[3] = (uint64_t)ROLLUP_DIM_NAME << 32 | x->name;
    for (uint32_t k = 4; k < n; k++)
        key_b[k] = (uint64_t)ROLLUP_DIM_PROP << 32 | x->props[k - 4];
    for (int g = GRAN_M; g <= GRAN_H; g++) {
        uint32_t bk = bucket_min(b[g]);
        if (g == GRAN_M && bk < mcut) continue;
        const uint64_t a = (uint64_t)st->id << 32 | bk;
        for (uint32_t k = 0; k < n; k++)
            cmap_prefetch(&e->w->cm[g], a, key_b[k]);
        for (uint32_t k = 0; k < n; k++) {
            struct cdelta *d = cell_at(e, g, st->id, bk, (int)(key_b[k] >> 32), (uint32_t)key_b[k]);
            if (!d) return;
            d->pv += ev->pageview ? 1 : 0;
            d->ev += 1;
            if (!joined(e, vs, g, d)) u_push(e, d, ev->visitor, 0);
            if (ev->has_revenue) r_push(e, d, ev->currency, ev->revenue_micros);
        }
    }
}

/* ---------------------------------------------------------------- sites */

static struct esite *site_get(struct engine *e, const struct devent *ev)
{
    int64_t idx = strtab_find(e->site_names, 0, ev->site.ptr, ev->site.len);
    if (idx >= 0) return &e->sites[idx];
    struct esite st = {0};
    if (e->o.only_site && (strlen(e->o.only_site) != ev->site.len ||
                           memcmp(e->o.only_site, ev->site.ptr, ev->site.len) != 0)) {
        st.skip = true;
    } else {
        int rc = store_site_id(e->s, ev->site.ptr, ev->site.len, true, &st.id);
        if (rc) {
            fail(e, rc);
            return NULL;
        }
        const char *zname = e->o.tz_of ? e->o.tz_of(e->o.tz_arg, ev->site.ptr, ev->site.len)
                                       : NULL;
        if (!zname || tz_get(zname, &st.zone) != 0) {
            if (zname) diag_warn("rollup: unknown time zone '%s': using UTC", zname);
            st.zone = tz_utc();
        }
        if (e->o.range) {
            int64_t y;
            unsigned m, d;
            timefmt_civil_from_days(e->o.range_from_day, &y, &m, &d);
            st.range_from = tz_day_start_ms(st.zone, y, m, d);
            timefmt_civil_from_days(e->o.range_to_day, &y, &m, &d);
            st.range_to = tz_day_start_ms(st.zone, y, m, d);
        }
    }
    if (!growz((void **)&e->sites, &e->capsites, e->nsites + 1, sizeof *e->sites)) {
        fail(e, TALLY_ENOMEM);
        return NULL;
    }
    idx = strtab_intern(e->site_names, 0, ev->site.ptr, ev->site.len, NULL);
    if (idx < 0 || (size_t)idx != e->nsites) {
        fail(e, TALLY_ENOMEM);
        return NULL;
    }
    if (!st.skip && !u64map_put(&e->site_idx, st.id, (uint64_t)e->nsites)) {
        fail(e, TALLY_ENOMEM);
        return NULL;
    }
    e->sites[e->nsites++] = st;
    return &e->sites[idx];
}

static struct esite *site_by_id(struct engine *e, uint32_t id)
{
    uint64_t *i = u64map_get(&e->site_idx, id);
    return i ? &e->sites[*i] : NULL;
}

/* ---------------------------------------------------------------- add */

uint64_t engine_cursor(const struct engine *e)
{
    return e->cursor;
}

void engine_skip(struct engine *e, uint64_t offset)
{
    if (offset >= e->cursor) e->cursor = offset + 1;
}

size_t engine_pending(const struct engine *e)
{
    return e->pending;
}

bool engine_should_flush(const struct engine *e)
{
    size_t bytes = e->w->nup * sizeof *e->w->up + e->w->nrp * sizeof *e->w->rp;
    for (int g = 0; g < TZ_GRAN_COUNT; g++)
        bytes += e->w->cm[g].n * sizeof(struct cdelta) + e->w->cm[g].nslots * 4;
    return e->pending >= e->o.pending_events_max || bytes >= e->o.pending_bytes_max ||
           e->nvisitors > e->o.visitors_max + e->o.visitors_max / 2;
}

static bool is_engagement(const struct devent *ev)
{
    return ev->str[DE_NAME].len == 10 && memcmp(ev->str[DE_NAME].ptr, "engagement", 10) == 0;
}

bool engine_dedup_applies(const struct devent *ev)
{
    return ev->client_id.len && !(ev->flags & DE_F_EXCLUDED) && !is_engagement(ev);
}

int engine_add(struct engine *e, const struct devent *ev)
{
    if (e->err) return e->err;
    TALLY_ASSERT(ev->offset >= e->cursor);
    e->cursor = ev->offset + 1;
    e->st.events_read++;
    e->pending++;
    if (ev->received_ms > e->wm) e->wm = ev->received_ms;
    struct esite *st = site_get(e, ev);
    if (!st) return e->err;
    if (st->skip || is_engagement(ev)) {
        e->st.events_filtered++;
        return TALLY_OK;
    }
    if (ev->flags & DE_F_EXCLUDED) {
        e->st.events_excluded++;
        return TALLY_OK;
    }
    if (ev->client_id.len &&
        dedup_check(e->dd, ev->site.ptr, ev->site.len, ev->client_id.ptr, ev->client_id.len,
                    e->wm)) {
        e->st.events_duplicate++;
        return TALLY_OK;
    }
    e->st.events_counted++;
    struct evals x;
    x.path = intern(e, ev->str[DE_PATH].ptr, ev->str[DE_PATH].len);
    x.host = intern(e, ev->str[DE_HOSTNAME].ptr, ev->str[DE_HOSTNAME].len);
    x.name = intern(e, ev->str[DE_NAME].ptr, ev->str[DE_NAME].len);
    x.nprops = ev->props_count > DE_PROPS_MAX ? DE_PROPS_MAX : ev->props_count;
    for (uint32_t i = 0; i < x.nprops; i++) x.props[i] = intern_prop(e, &ev->props[i]);
    struct vstate *vs = vstate_get(e, st->id, ev->visitor);
    if (!vs) return e->err;
    event_cells(e, st, vs, ev, &x);
    sessionize(e, vs, ev, &x);
    return e->err;
}

/* ---------------------------------------------------------------- flush */

static void sessions_flush(struct engine *e)
{
    uint8_t key[SESSION_KEY_BYTES];
    for (size_t i = 0; i < e->ndirty && !e->err; i++) {
        struct vstate *vs = e->dirty[i];
        struct esite *st = site_by_id(e, vs->site);
        TALLY_ASSERT(st != NULL);
        for (uint32_t k = 0; k < vs->nret; k++) {
            struct visit *snap = vs->ret[k];
            contribute(e, st, vs->visitor, snap, -1);
            session_key(key, vs->site, vs->visitor, snap->first_ts, snap->first_off);
            store_batch_delete(e->w->batch, STORE_CF_SESSIONS, key, sizeof key);
            visit_free(snap);
        }
        vs->nret = 0;
        for (uint32_t k = 0; k < vs->n; k++) {
            struct visit *v = vs->v[k];
            if (!v->dirty) continue;
            if (v->old) {
                contribute(e, st, vs->visitor, v->old, -1);
                if (v->old->first_ts != v->first_ts || v->old->first_off != v->first_off) {
                    session_key(key, vs->site, vs->visitor, v->old->first_ts,
                                v->old->first_off);
                    store_batch_delete(e->w->batch, STORE_CF_SESSIONS, key, sizeof key);
                }
                visit_free(v->old);
                v->old = NULL;
            }
            contribute(e, st, vs->visitor, v, +1);
            session_key(key, vs->site, vs->visitor, v->first_ts, v->first_off);
            visit_encode(e, v, &e->vbuf);
            if (e->vbuf.oom) {
                fail(e, TALLY_ENOMEM);
                return;
            }
            store_batch_put(e->w->batch, STORE_CF_SESSIONS, key, sizeof key, e->vbuf.p,
                            e->vbuf.len);
            e->st.visits_written++;
            bloom_add(&e->vbloom, visitor_hash(vs->site, vs->visitor));
        }
    }
}

static void splice_days(struct engine *e)
{
    struct cmap *hm = &e->w->cm[GRAN_H];
    uint32_t last_site = UINT32_MAX;
    struct esite *st = NULL;
    for (size_t i = 0; i < hm->n && !e->err; i++) {
        struct cdelta hd = hm->d[i]; /* copy: the day map may move */
        uint32_t site = (uint32_t)(hd.a >> 32);
        if (site != last_site) {
            st = site_by_id(e, site);
            last_site = site;
        }
        int64_t day = tz_bucket_start_ms(st->zone, (int64_t)(uint32_t)hd.a * 60000, TZ_DAY);
        struct cdelta *dd = cell_at(e, GRAN_D, site, bucket_min(day), (int)(hd.b >> 32),
                                    (uint32_t)hd.b);
        if (!dd) return;
        splice(e, dd, &hd);
    }
}

static bool cell_in_range(struct engine *e, int gran, uint32_t site, uint32_t bucket,
                          uint32_t mcut, struct esite **cache)
{
    if (gran == GRAN_M && bucket < mcut) return false;
    if (!e->o.range) return true;
    if (!*cache || (*cache)->id != site) *cache = site_by_id(e, site);
    int64_t ms = (int64_t)bucket * 60000;
    return ms >= (*cache)->range_from && ms < (*cache)->range_to;
}

static uint64_t key_hash(const uint8_t *k, size_t n)
{
    return XXH3_64bits(k, n);
}

/* Applies delta d of set f to cell c. The writing side. */
static int apply_delta(struct engine *e, struct flushset *f, struct cell *c, const struct cdelta *d)
{
    c->pageviews += d->pv;
    c->events += d->ev;
    c->visits += d->visits;
    c->bounces += d->bounces;
    c->duration_ms += d->dur;
    if ((c->pageviews < 0 || c->events < 0 || c->visits < 0 || c->bounces < 0 ||
         c->duration_ms < 0) &&
        !atomic_exchange(&e->warned_negative, true))
        diag_warn("rollup: a cell went negative (inconsistent store?)");
    int rc;
    uint32_t r = d->r_head;
    for (uint32_t k = 0; k < d->r_n; k++, r = f->rp[r].next)
        if ((rc = cell_add_revenue(c, f->rp[r].cur, f->rp[r].micros))) return rc;
    if (!d->u_n) return TALLY_OK;
    bool visit_dim = rollup_dim_is_visit((int)(d->b >> 32));
    struct cell_mentry *ent = f->up + d->u_off;
    if (visit_dim) return cell_apply_multiset(c, ent, d->u_n); /* sorts the slice in place */
    if (!growz((void **)&f->u_scratch, &f->cap_u, d->u_n, sizeof *f->u_scratch))
        return TALLY_ENOMEM;
    for (uint32_t k = 0; k < d->u_n; k++)
        f->u_scratch[k] = ent[k].visitor;
    return cell_add_uniques(c, f->u_scratch, d->u_n);
}

static int rev_cmp(const void *a, const void *b)
{
    return memcmp(((const struct cell_rev *)a)->cur, ((const struct cell_rev *)b)->cur, 3);
}

/* Encodes the cell that delta d of set f makes out of nothing into f->vbuf. 1: encoded; 0:
 * the cell is empty; 2: too large for the fast path (use the general one); < 0: error. */
static int encode_fresh(struct flushset *f, const struct cdelta *d)
{
    struct cell c;
    cell_init(&c);
    c.pageviews = d->pv;
    c.events = d->ev;
    c.visits = d->visits;
    c.bounces = d->bounces;
    c.duration_ms = d->dur;
    struct cell_rev rev[16];
    uint32_t nrev = 0;
    uint32_t r = d->r_head;
    for (uint32_t k = 0; k < d->r_n; k++, r = f->rp[r].next) {
        uint32_t j = 0;
        while (j < nrev && memcmp(rev[j].cur, f->rp[r].cur, 3) != 0)
            j++;
        if (j == nrev) {
            if (nrev == TALLY_ARRAY_LEN(rev)) return 2;
            memcpy(rev[nrev].cur, f->rp[r].cur, 4);
            rev[nrev++].micros = 0;
        }
        rev[j].micros += f->rp[r].micros;
    }
    uint32_t nz = 0;
    for (uint32_t j = 0; j < nrev; j++)
        if (rev[j].micros) rev[nz++] = rev[j];
    nrev = nz;
    if (nrev > 1) qsort(rev, nrev, sizeof *rev, rev_cmp);
    size_t nset = 0, nms = 0;
    struct cell_mentry *ent = f->up + d->u_off, *ms = ent;
    if (d->u_n && rollup_dim_is_visit((int)(d->b >> 32))) {
        cell_sort_mentries(ms, d->u_n); /* in place: the slice is consumed by this flush */
        for (uint32_t k = 0; k < d->u_n; k++) {
            if (nms && ms[nms - 1].visitor == ms[k].visitor) ms[nms - 1].count += ms[k].count;
            else ms[nms++] = ms[k];
        }
        size_t keep = 0;
        for (size_t k = 0; k < nms; k++)
            if (ms[k].count > 0) ms[keep++] = ms[k];
        nms = keep;
    } else if (d->u_n) {
        if (!growz((void **)&f->u_scratch, &f->cap_u, d->u_n, sizeof *f->u_scratch))
            return TALLY_ENOMEM;
        uint64_t *v = f->u_scratch;
        for (uint32_t k = 0; k < d->u_n; k++) v[k] = ent[k].visitor;
        cell_sort_u64(v, d->u_n);
        for (uint32_t k = 0; k < d->u_n; k++)
            if (!nset || v[nset - 1] != v[k]) v[nset++] = v[k];
    }
    if (!c.pageviews && !c.events && !c.visits && !c.bounces && !c.duration_ms && !nrev &&
        !nset && !nms)
        return 0;
    cbuf_reset(&f->vbuf);
    if (!cell_encode_fresh(&c, rev, nrev, f->u_scratch, nset, ms, nms, &f->vbuf)) return 2;
    return f->vbuf.oom ? TALLY_ENOMEM : 1;
}

struct apply_scratch {
    int32_t gi[APPLY_CHUNK]; /* index into the multi-get arrays, -1: not read */
    const void *gk[APPLY_CHUNK];
    size_t gl[APPLY_CHUNK], gvl[APPLY_CHUNK];
    void *gv[APPLY_CHUNK];
};

static int keyref_cmp(const struct keyref *x, const struct keyref *y)
{
    if (x->pfx != y->pfx) return x->pfx < y->pfx ? -1 : 1;
    uint32_t n = (x->len < y->len ? x->len : y->len) - 8;
    int c = memcmp(x->k + 8, y->k + 8, n);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

#define KEYREF_LESS(a, b) (keyref_cmp(a, b) < 0)
SORTKEY_DEFINE(keyref_sort, struct keyref, KEYREF_LESS)

/* Builds the keys of the current set's cells of one granularity (those in range) into its
 * kbuf and refs. The adding side (it needs the intern table and the sites); the keys' pointers
 * are set by keys_fix once every granularity is built. */
static int keys_build(struct engine *e, int gran, uint32_t mcut)
{
    struct flushset *f = e->w;
    struct cmap *m = &f->cm[gran];
    size_t n0 = gran ? f->ref0[gran - 1] + f->nref[gran - 1] : 0;
    f->ref0[gran] = n0;
    f->nref[gran] = 0;
    if (m->n == 0) return TALLY_OK;
    if (!growz((void **)&f->refs, &f->capref, n0 + m->n, sizeof *f->refs)) return TALLY_ENOMEM;
    struct esite *cache = NULL;
    size_t nk = n0;
    for (size_t i = 0; i < m->n; i++) {
        const struct cdelta *d = &m->d[i];
        uint32_t site = (uint32_t)(d->a >> 32), bucket = (uint32_t)d->a;
        if (!cell_in_range(e, gran, site, bucket, mcut, &cache)) continue;
        uint32_t vlen;
        const char *val = strtab_str(e->intern, (uint32_t)d->b, &vlen);
        if (!cbuf_reserve(&f->kbuf, CELL_KEY_BYTES_MAX)) return TALLY_ENOMEM;
        size_t kl =
            cell_key(f->kbuf.p + f->kbuf.len, gran, site, (int)(d->b >> 32), bucket, val, vlen);
        f->refs[nk++] = (struct keyref){store_get_be64(f->kbuf.p + f->kbuf.len), NULL,
                                        (uint32_t)f->kbuf.len, (uint32_t)kl, (uint32_t)i};
        f->kbuf.len += kl;
    }
    f->nref[gran] = nk - n0;
    return TALLY_OK;
}

static void keys_fix(struct flushset *f)
{
    size_t n = f->ref0[TZ_GRAN_COUNT - 1] + f->nref[TZ_GRAN_COUNT - 1];
    for (size_t i = 0; i < n; i++)
        f->refs[i].k = f->kbuf.p + f->refs[i].off;
}

/* Reads, updates and writes back (into the set's batch) every cell of one granularity, in key
 * order: RocksDB inserts sorted keys into its memtable much faster (and multi-gets too). The
 * writing side. */
static int keys_apply(struct engine *e, struct flushset *f, int gran)
{
    struct keyref *refs = f->refs + f->ref0[gran];
    size_t nk = f->nref[gran];
    if (nk == 0) return TALLY_OK;
    const struct cdelta *deltas = f->cm[gran].d;
    struct apply_scratch *w = malloc(sizeof *w);
    int rc = w ? TALLY_OK : TALLY_ENOMEM;
    if (!rc) keyref_sort(refs, nk);
    for (size_t c0 = 0; !rc && c0 < nk; c0 += APPLY_CHUNK) {
        size_t cn = nk - c0 < APPLY_CHUNK ? nk - c0 : APPLY_CHUNK, ng = 0;
        for (size_t k = 0; k < cn; k++) {
            const uint8_t *key = refs[c0 + k].k;
            size_t kl = refs[c0 + k].len;
            w->gi[k] = -1;
            if (!e->o.known_empty || bloom_maybe(&e->cbloom, key_hash(key, kl))) {
                w->gi[k] = (int32_t)ng;
                w->gk[ng] = key;
                w->gl[ng] = kl;
                ng++;
            }
        }
        if (ng) rc = store_multi_get(e->s, STORE_CF_ROLLUPS, ng, w->gk, w->gl, w->gv, w->gvl);
        if (rc) break;
        for (size_t k = 0; k < cn; k++) {
            const uint8_t *key = refs[c0 + k].k;
            size_t kl = refs[c0 + k].len;
            const struct cdelta *d = &deltas[refs[c0 + k].idx];
            struct cell c;
            cell_init(&c);
            void *val = w->gi[k] >= 0 ? w->gv[w->gi[k]] : NULL;
            if (!rc && !val) {
                int fr = encode_fresh(f, d);
                if (fr == 1) {
                    store_batch_put(f->batch, STORE_CF_ROLLUPS, key, kl, f->vbuf.p, f->vbuf.len);
                    f->cells_written++;
                    if (e->o.known_empty) bloom_add(&e->cbloom, key_hash(key, kl));
                    continue;
                }
                if (fr == 0) continue; /* nothing to store */
                if (fr < 0) rc = fr;
            }
            if (!rc && val) rc = cell_decode(val, w->gvl[w->gi[k]], &c);
            if (!rc) rc = apply_delta(e, f, &c, d);
            if (!rc && cell_is_empty(&c)) {
                if (val) {
                    store_batch_delete(f->batch, STORE_CF_ROLLUPS, key, kl);
                    f->cells_deleted++;
                }
            } else if (!rc) {
                cbuf_reset(&f->vbuf);
                cell_encode(&c, &f->vbuf);
                if (f->vbuf.oom)
                    rc = TALLY_ENOMEM;
                else
                    store_batch_put(f->batch, STORE_CF_ROLLUPS, key, kl, f->vbuf.p, f->vbuf.len);
                f->cells_written++;
                if (e->o.known_empty) bloom_add(&e->cbloom, key_hash(key, kl));
            }
            cell_free(&c);
        }
        for (size_t g = 0; g < ng; g++) free(w->gv[g]);
    }
    free(w);
    return rc;
}

static void key_of(struct engine *e, const char *name, char *out)
{
    snprintf(out, ENGINE_PREFIX_BYTES_MAX + 16, "%s%s", e->prefix, name);
}

/* Records where an evicted visitor's latest stored visit ends (vstate_get reads it back). The
 * window always holds the visitor's latest visit. */
static void gone_note(struct engine *e, const struct vstate *vs)
{
    if (vs->n == 0) return;
    const int64_t end = vs->v[vs->n - 1]->last_ts;
    const uint64_t h = visitor_hash(vs->site, vs->visitor);
    uint64_t *p = u64map_get(&e->gone, h);
    if (p) {
        if ((int64_t)*p < end) *p = (uint64_t)end;
        return;
    }
    if (e->gone.n >= e->o.visitors_max * GONE_PER_VISITOR) u64map_clear(&e->gone);
    if (!u64map_put(&e->gone, h, (uint64_t)end)) u64map_clear(&e->gone);
}

/* After a flush (every visitor is clean): drops idle visitors, then more while above
 * visitors_max, or all of them when the intern table must be cleared. */
static void evict(struct engine *e)
{
    bool clear_all = strtab_bytes(e->intern) > e->o.intern_bytes_max;
    size_t over = e->nvisitors > e->o.visitors_max ? e->nvisitors - e->o.visitors_max * 9 / 10
                                                    : 0;
    /* idle visitors only go when memory is half used: a returning visitor costs a read */
    const int64_t idle_before = e->nvisitors > e->o.visitors_max / 2
                                    ? e->wm - e->o.visitor_idle_ms
                                    : INT64_MIN;
    struct vstate **drop = NULL;
    size_t ndrop = 0, capdrop = 0;
    for (size_t i = 0; i < e->vmap.cap; i++) {
        if (!e->vmap.keys[i]) continue;
        for (struct vstate *vs = (struct vstate *)(uintptr_t)e->vmap.vals[i]; vs;
             vs = vs->hnext) {
            if (!clear_all && vs->last_seen_ts >= idle_before && !over) continue;
            if (over) over--;
            if (!growz((void **)&drop, &capdrop, ndrop + 1, sizeof *drop)) goto out;
            drop[ndrop++] = vs;
        }
    }
out:
    for (size_t i = 0; i < ndrop; i++) {
        gone_note(e, drop[i]);
        vstate_unlink(e, drop[i]);
        vstate_free(drop[i]);
    }
    free(drop);
    if (clear_all && e->nvisitors == 0) {
        strtab_clear(e->intern);
        e->empty_id = intern(e, "", 0);
    }
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* After a committed flush: tells the store's memo which (site, day bucket) cells changed, so that
 * cached range results over those days are not used again (store/memo.h). A flush touching
 * more than DAYS_NOTED_MAX of them marks everything changed. */
#define DAYS_NOTED_MAX 128
static void note_days(struct store *s, const struct flushset *f)
{
    const struct cmap *m = &f->cm[GRAN_D];
    uint64_t tags[DAYS_NOTED_MAX];
    size_t n = 0;
    for (size_t i = 0; i < m->n; i++) {
        uint64_t t = m->d[i].a; /* site << 32 | bucket */
        size_t k = 0;
        while (k < n && tags[k] != t) k++;
        if (k < n) continue;
        if (n == DAYS_NOTED_MAX) {
            memo_note_all(store_memo(s));
            return;
        }
        tags[n++] = t;
    }
    memo_note_days(store_memo(s), tags, n);
}

/* The writing side of a flush: the cells read, updated and added to the batch, the batch
 * written, the memo told which days changed. The outcome goes to f->rc. */
static void write_set(struct engine *e, struct flushset *f)
{
    int rc = TALLY_OK;
    for (int g = GRAN_M; g <= GRAN_D && !rc; g++)
        rc = keys_apply(e, f, g);
    const uint64_t tw = now_us();
    if (!rc) rc = store_write(e->s, f->batch);
    f->write_us += now_us() - tw;
    if (!rc) note_days(e->s, f);
    f->rc = rc;
}

/* Takes a written set's counters into the engine's and clears it for reuse; its outcome. */
static int collect(struct engine *e, struct flushset *f)
{
    e->st.cells_written += f->cells_written;
    e->st.cells_deleted += f->cells_deleted;
    e->st.write_us += f->write_us;
    f->cells_written = f->cells_deleted = f->write_us = 0;
    int rc = f->rc;
    f->rc = TALLY_OK;
    for (int g = 0; g < TZ_GRAN_COUNT; g++) {
        cmap_clear(&f->cm[g]);
        f->ref0[g] = f->nref[g] = 0;
    }
    f->nup = 0;
    f->nrp = 0;
    cbuf_reset(&f->kbuf);
    store_batch_clear(f->batch);
    return rc;
}

static void *flush_main(void *arg)
{
    struct engine *e = arg;
    pthread_setname_np(pthread_self(), "tally-rollflush");
    pthread_mutex_lock(&e->fmu);
    for (;;) {
        if (e->fjob && !e->fjob_done) {
            struct flushset *f = e->fjob;
            pthread_mutex_unlock(&e->fmu);
            write_set(e, f);
            pthread_mutex_lock(&e->fmu);
            e->fjob_done = true;
            pthread_cond_broadcast(&e->fcv);
            continue;
        }
        if (e->fquit) break;
        pthread_cond_wait(&e->fcv, &e->fmu);
    }
    pthread_mutex_unlock(&e->fmu);
    return NULL;
}

int engine_sync(struct engine *e)
{
    if (!e->fjob) return e->err;
    pthread_mutex_lock(&e->fmu);
    while (!e->fjob_done)
        pthread_cond_wait(&e->fcv, &e->fmu);
    struct flushset *f = e->fjob;
    e->fjob = NULL;
    pthread_mutex_unlock(&e->fmu);
    int rc = collect(e, f);
    return rc ? (int)fail(e, rc) : e->err;
}

int engine_flush(struct engine *e)
{
    if (e->err) return e->err;
    const uint64_t t0 = now_us();
    struct flushset *f = e->w;
    const uint32_t mcut = minute_cut(e);
    sessions_flush(e);
    if (!e->err) splice_days(e);
    int rc = e->err;
    for (int g = GRAN_M; g <= GRAN_D && !rc; g++)
        rc = keys_build(e, g, mcut);
    if (rc) return fail(e, rc);
    keys_fix(f);
    if (mcut > e->mcut_saved) {
        uint8_t lo[1] = {'m'}, hi[5] = {'m'};
        store_put_be32(hi + 1, mcut);
        store_batch_delete_range(f->batch, STORE_CF_ROLLUPS, lo, 1, hi, 5);
    }
    if (e->persist) {
        char k[ENGINE_PREFIX_BYTES_MAX + 16];
        dedup_flush(e->dd, f->batch, e->wm);
        key_of(e, "cursor", k);
        store_batch_put_u64(f->batch, k, e->cursor);
        key_of(e, "wm", k);
        store_batch_put_u64(f->batch, k, (uint64_t)e->wm);
        key_of(e, "mcut", k);
        store_batch_put_u64(f->batch, k, mcut > e->mcut_saved ? mcut : e->mcut_saved);
    } else {
        dedup_flush(e->dd, NULL, e->wm);
    }
    if (e->fth_started) {
        /* one set in flight at a time, written in order: the next flush's reads of cells
         * and the adding side's reads of visits see this one's writes */
        if ((rc = engine_sync(e))) return rc;
        pthread_mutex_lock(&e->fmu);
        e->fjob = f;
        e->fjob_done = false;
        pthread_cond_broadcast(&e->fcv);
        pthread_mutex_unlock(&e->fmu);
        e->w = f == &e->fs[0] ? &e->fs[1] : &e->fs[0];
    } else {
        write_set(e, f);
        if ((rc = collect(e, f))) return fail(e, rc);
    }
    /* From here on the flush is taken as done: if its write fails (async), the engine fails
     * with it at the next flush or engine_sync, and must be closed. */
    if (mcut > e->mcut_saved) e->mcut_saved = mcut;
    dedup_commit(e->dd);
    /* dirty visitors are clean now: keep only their latest visit in memory */
    for (size_t i = 0; i < e->ndirty; i++) {
        struct vstate *vs = e->dirty[i];
        vs->dirty = false;
        for (uint32_t k = 0; k < vs->n; k++) {
            vs->v[k]->dirty = false;
            vs->v[k]->persisted = true;
        }
        if (vs->n > 1) {
            for (uint32_t k = 0; k + 1 < vs->n; k++) visit_free(vs->v[k]);
            vs->v[0] = vs->v[vs->n - 1];
            vs->n = 1;
            vs->complete = false;
        }
    }
    e->ndirty = 0;
    e->pending = 0;
    e->st.flushes++;
    evict(e);
    e->st.flush_us += now_us() - t0;
    return TALLY_OK;
}

/* ---------------------------------------------------------------- open/close */

int engine_open(struct store *s, const struct engine_opts *opt, struct engine **out)
{
    struct engine *e = calloc(1, sizeof *e);
    if (!e) return TALLY_ENOMEM;
    e->s = s;
    e->o = *opt;
    struct engine_opts def;
    engine_opts_default(&def);
    if (e->o.visit_gap_ms <= 0) e->o.visit_gap_ms = def.visit_gap_ms;
    if (e->o.minute_retention_ms <= 0) e->o.minute_retention_ms = def.minute_retention_ms;
    if (e->o.visitor_idle_ms <= 0) e->o.visitor_idle_ms = def.visitor_idle_ms;
    if (!e->o.visitors_max) e->o.visitors_max = def.visitors_max;
    if (!e->o.pending_events_max) e->o.pending_events_max = def.pending_events_max;
    if (!e->o.pending_bytes_max) e->o.pending_bytes_max = def.pending_bytes_max;
    if (!e->o.intern_bytes_max) e->o.intern_bytes_max = def.intern_bytes_max;
    int rc = TALLY_OK;
    char *only = opt->only_site ? strdup(opt->only_site) : NULL;
    if (opt->only_site && !only) rc = TALLY_ENOMEM;
    e->o.only_site = only;
    e->persist = opt->state_prefix != NULL;
    if (e->persist) snprintf(e->prefix, sizeof e->prefix, "%s", opt->state_prefix);
    char ddp[ENGINE_PREFIX_BYTES_MAX + 4];
    snprintf(ddp, sizeof ddp, "%sdd", e->prefix);
    e->dd = dedup_new(e->persist ? ddp : NULL, opt->dedup_entries_max);
    e->intern = strtab_new();
    e->site_names = strtab_new();
    e->w = &e->fs[0];
    int nsets = e->o.flush_async ? 2 : 1;
    for (int i = 0; i < nsets; i++)
        if (!(e->fs[i].batch = store_batch_new(s))) rc = TALLY_ENOMEM;
    pthread_mutex_init(&e->fmu, NULL);
    pthread_cond_init(&e->fcv, NULL);
    if (!rc && (!e->dd || !e->intern || !e->site_names)) rc = TALLY_ENOMEM;
    if (!rc) e->empty_id = intern(e, "", 0);
    e->cursor = opt->start_offset;
    if (!rc && e->o.known_empty &&
        (!bloom_init(&e->vbloom, BLOOM_VISITOR_BITS) || !bloom_init(&e->cbloom, BLOOM_CELL_BITS)))
        rc = TALLY_ENOMEM;
    if (!rc && e->persist) {
        char k[ENGINE_PREFIX_BYTES_MAX + 16];
        uint64_t v;
        key_of(e, "cursor", k);
        int r = store_meta_get_u64(s, k, &v);
        if (r == 0) e->cursor = v;
        else if (r != TALLY_ENOENT) rc = r;
        key_of(e, "wm", k);
        r = store_meta_get_u64(s, k, &v);
        if (r == 0) e->wm = (int64_t)v;
        else if (r != TALLY_ENOENT && !rc) rc = r;
        key_of(e, "mcut", k);
        r = store_meta_get_u64(s, k, &v);
        if (r == 0) e->mcut_saved = (uint32_t)v;
        else if (r != TALLY_ENOENT && !rc) rc = r;
        if (!rc) rc = dedup_load(e->dd, s, e->wm);
    }
    if (!rc && e->o.flush_async) {
        if (pthread_create(&e->fth, NULL, flush_main, e) != 0)
            rc = TALLY_ENOMEM;
        else
            e->fth_started = true;
    }
    if (rc) {
        engine_close(e);
        return rc;
    }
    *out = e;
    return TALLY_OK;
}

void engine_close(struct engine *e)
{
    if (!e) return;
    if (e->fth_started) {
        engine_sync(e); /* its outcome no longer matters: what was not flushed is redone */
        pthread_mutex_lock(&e->fmu);
        e->fquit = true;
        pthread_cond_broadcast(&e->fcv);
        pthread_mutex_unlock(&e->fmu);
        pthread_join(e->fth, NULL);
    }
    pthread_mutex_destroy(&e->fmu);
    pthread_cond_destroy(&e->fcv);
    if (e->vmap.cap) {
        for (size_t i = 0; i < e->vmap.cap; i++) {
            if (!e->vmap.keys[i]) continue;
            struct vstate *vs = (struct vstate *)(uintptr_t)e->vmap.vals[i];
            while (vs) {
                struct vstate *next = vs->hnext;
                vstate_free(vs);
                vs = next;
            }
        }
    }
    u64map_free(&e->vmap);
    u64map_free(&e->gone);
    free(e->dirty);
    for (int i = 0; i < 2; i++) {
        struct flushset *f = &e->fs[i];
        for (int g = 0; g < TZ_GRAN_COUNT; g++)
            cmap_free(&f->cm[g]);
        free(f->up);
        free(f->rp);
        free(f->refs);
        store_batch_free(f->batch);
        cbuf_free(&f->kbuf);
        cbuf_free(&f->vbuf);
        free(f->u_scratch);
    }
    free(e->vbloom.bits);
    free(e->cbloom.bits);
    cbuf_free(&e->vbuf);
    strtab_free(e->intern);
    strtab_free(e->site_names);
    free(e->sites);
    u64map_free(&e->site_idx);
    dedup_free(e->dd);
    free((char *)e->o.only_site);
    free(e);
}

void engine_get_stats(const struct engine *e, struct engine_stats *out)
{
    *out = e->st;
    out->visitors_in_memory = e->nvisitors;
}
