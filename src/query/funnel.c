/*
 * funnel: funnels over the raw store (definitions in funnel.h).
 *
 * HOW. funnel_parse builds a v2 document from the request's site_id, date_range and filters
 * and hands it to query_parse_v2, so both APIs share one parser. Two plans (funnel.h):
 *  - STREAM (no filters; the usual funnel). Every counted event is in scope, and an event
 *    outside the range never lies between two inside it, so the in-range events alone decide
 *    the visits. raw_scan_hours hands over the range hour by hour, each visitor's rows in time
 *    order, decoded on two threads; each visitor has a few bytes of state (an open-addressing
 *    table, prefetched a few rows ahead, on huge pages when granted) that its events update as
 *    they go by: the last event's time (a gap of 30 minutes or more closes the visit), the
 *    partial matches alive (see DEPTH, incremental form) and the best depth. Memory is the
 *    table plus the hours in flight, not the events of the range.
 *  - VISITS (filters: their visit attributes need the whole visit, from before the range too).
 *    qscan_visits (qvisit.h) delivers the visits of the range with their name and path ids and
 *    "in scope" flags; each visit becomes its step events (a bit mask of the steps each
 *    matches), and the best depth per visitor is kept: with window "visit" the best over their
 *    visits; with a time window, the visitor's step events of all visits are collected (visits
 *    of one visitor arrive together) and judged at once by funnel_depth.
 * test_funnel checks that both plans give the same counts on random funnels and events.
 *
 * STEP MATCHING. An event step is one dictionary id (raw_dict_find once; a name the site never
 * stored matches nothing). A page step is a pattern: each distinct path id met is resolved once
 * (raw_dict_string) into the mask of the page steps it matches and cached, so the cost is one
 * dictionary read per distinct path, not per event.
 *
 * DEPTH (funnel_depth). Loose: for each start event matching step 1, a greedy walk forward
 * (take an event for step k as soon as one matches: greedy is optimal for subsequences) until
 * the window closes; a walk that was not cut by the window ends the search, since any later
 * start reaches no further. Strict: from each start, extend while the NEXT step event matches
 * the next step and lies within the window. Both stop early once all steps are reached.
 * Incremental form (STREAM): a bit per k = "a partial match of k steps is alive" and, with a
 * window, the latest start among those matches (a later start can use every event an earlier
 * one can, with more room). An event matching step k+1 extends an alive k-match whose start
 * is within the window (loose: the k-match stays alive; strict: only the extended matches
 * survive the event); steps are visited from the last down so that one event extends a match
 * by one step only. The highest alive k is the depth reached.
 *
 * BUDGET. The scan's deadline and memory budget (q_budget) apply; the per-visitor scratch of
 * step events (VISITS) or state (STREAM) is charged against the same memory budget; STREAM
 * holds at most RAW_SCAN_HOURS_HELD hours of rows, bounded to a quarter of the budget.
 */
#include "query/funnel.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/timefmt.h"
#include "query/qvisit.h"
#include "core/hugemap.h"
#include "rollup/u64map.h"
#include "store/raw.h"
#include "tally/error.h"

#define FN_MEMORY_DEFAULT ((size_t)1 << 30)
#define FN_CACHE_DONE (1ULL << 32) /* path cache value: resolved (low bits: the mask) */
#define FN_GAP_MS (30LL * 60 * 1000)   /* the visit gap of the scan (qscan.c QS_GAP_MS) */
#define FN_SCAN_THREADS 1 /* decoding threads beside the query's (raw_scan_hours) */

/* ---------------------------------------------------------------- parse */

static int ferr(char *err, size_t cap, const char *fmt, const char *a)
{
    snprintf(err, cap, fmt, a ? a : "");
    return TALLY_EINVAL;
}

static int parse_window(const cJSON *w, int64_t *ms, char *err, size_t cap)
{
    *ms = 0;
    if (!w || cJSON_IsNull(w)) return TALLY_OK;
    const char *want = "#/window: expected \"visit\", a number of seconds (1 to 31622400), or "
                       "a duration like \"30m\", \"2h\", \"7d\"%s";
    long long secs;
    if (cJSON_IsNumber(w)) {
        double v = w->valuedouble;
        if (!isfinite(v) || v != floor(v) || v < 1 || v > (double)FUNNEL_WINDOW_S_MAX)
            return ferr(err, cap, want, NULL);
        secs = (long long)v;
    } else if (cJSON_IsString(w)) {
        const char *s = w->valuestring;
        if (strcmp(s, "visit") == 0) return TALLY_OK;
        char *end;
        long long n = strtoll(s, &end, 10);
        if (end == s || *s < '0' || *s > '9' || n < 1 || n > FUNNEL_WINDOW_S_MAX)
            return ferr(err, cap, want, NULL);
        long long unit = strcmp(end, "s") == 0   ? 1
                         : strcmp(end, "m") == 0 ? 60
                         : strcmp(end, "h") == 0 ? 3600
                         : strcmp(end, "d") == 0 ? 86400
                                                 : 0;
        if (unit == 0 || n > FUNNEL_WINDOW_S_MAX / unit) return ferr(err, cap, want, NULL);
        secs = n * unit;
    } else {
        return ferr(err, cap, want, NULL);
    }
    *ms = secs * 1000;
    return TALLY_OK;
}

static int parse_step(const cJSON *st, size_t i, struct funnel_step *out, char *err, size_t cap)
{
    char path[48];
    snprintf(path, sizeof path, "#/steps/%zu", i);
    const cJSON *page = cJSON_GetObjectItemCaseSensitive(st, "page");
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(st, "event");
    if (!cJSON_IsObject(st) || cJSON_GetArraySize(st) != 1 || (!page && !ev))
        return ferr(err, cap, "%s: expected {\"page\": \"/path/pattern\"} or {\"event\": \"Name\"}",
                    path);
    const cJSON *v = page ? page : ev;
    if (!cJSON_IsString(v) || !v->valuestring[0] ||
        strlen(v->valuestring) > FUNNEL_VALUE_BYTES_MAX) {
        snprintf(err, cap, "%s/%s: expected a non-empty string of at most %d bytes", path,
                 page ? "page" : "event", FUNNEL_VALUE_BYTES_MAX);
        return TALLY_EINVAL;
    }
    if (page && v->valuestring[0] != '/') {
        snprintf(err, cap, "%s/page: a page pattern starts with '/' (wildcards: * within a "
                 "segment, ** across)", path);
        return TALLY_EINVAL;
    }
    out->page = page != NULL;
    out->value = strdup(v->valuestring);
    return out->value ? TALLY_OK : TALLY_ENOMEM;
}

static const char *const funnel_keys[] = {"site_id", "date_range", "filters", "steps", "window",
                                          "order"};

static int parse_own(const cJSON *root, struct funnel *f, char *err, size_t cap)
{
    for (const cJSON *k = root->child; k; k = k->next) {
        bool ok = false;
        for (size_t i = 0; i < TALLY_ARRAY_LEN(funnel_keys); i++)
            ok |= strcmp(k->string, funnel_keys[i]) == 0;
        if (!ok)
            return ferr(err, cap, "#/%s: unknown key; accepted: site_id, date_range, filters, "
                        "steps, window, order", k->string);
    }
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(root, "steps");
    int n = cJSON_IsArray(steps) ? cJSON_GetArraySize(steps) : -1;
    if (n < FUNNEL_STEPS_MIN || n > FUNNEL_STEPS_MAX) {
        snprintf(err, cap, "#/steps: required: a list of %d to %d steps, each {\"page\": "
                 "\"/pattern\"} or {\"event\": \"Name\"}", FUNNEL_STEPS_MIN, FUNNEL_STEPS_MAX);
        return TALLY_EINVAL;
    }
    size_t i = 0;
    for (const cJSON *st = steps->child; st; st = st->next, i++) {
        int rc = parse_step(st, i, &f->steps[i], err, cap);
        if (rc) return rc;
        f->nsteps = i + 1;
    }
    int rc = parse_window(cJSON_GetObjectItemCaseSensitive(root, "window"), &f->window_ms, err,
                          cap);
    if (rc) return rc;
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(root, "order");
    if (order) {
        if (!cJSON_IsString(order) ||
            (strcmp(order->valuestring, "loose") && strcmp(order->valuestring, "strict")))
            return ferr(err, cap, "#/order: expected \"loose\" or \"strict\"%s", NULL);
        f->strict = strcmp(order->valuestring, "strict") == 0;
    }
    return TALLY_OK;
}

/* The v2 document {site_id, metrics: ["visitors"], date_range, filters} of the request. */
static char *v2_document(const cJSON *root)
{
    cJSON *doc = cJSON_CreateObject();
    if (!doc) return NULL;
    static const char *const keep[] = {"site_id", "date_range", "filters"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(keep); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keep[i]);
        if (v && !cJSON_AddItemToObject(doc, keep[i], cJSON_Duplicate(v, true))) goto fail;
    }
    cJSON *m = cJSON_AddArrayToObject(doc, "metrics");
    if (!m || !cJSON_AddItemToArray(m, cJSON_CreateString("visitors"))) goto fail;
    char *s = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    return s;
fail:
    cJSON_Delete(doc);
    return NULL;
}

int funnel_parse(const char *json, size_t len, int64_t now_ms, q_site_fn site_fn, void *arg,
                 struct funnel **out, char *err, size_t errcap)
{
    *out = NULL;
    if (len > QUERY_BODY_BYTES_MAX) {
        snprintf(err, errcap, "funnel body larger than %u bytes", QUERY_BODY_BYTES_MAX);
        return TALLY_EINVAL;
    }
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        snprintf(err, errcap, "#: expected a JSON object {site_id, date_range, steps, window, "
                 "order, filters}");
        return TALLY_EINVAL;
    }
    struct funnel *f = calloc(1, sizeof *f);
    int rc = f ? parse_own(root, f, err, errcap) : TALLY_ENOMEM;
    char *doc = rc ? NULL : v2_document(root);
    if (!rc && !doc) rc = TALLY_ENOMEM;
    cJSON_Delete(root);
    if (!rc) rc = query_parse_v2(doc, strlen(doc), now_ms, site_fn, arg, &f->q, err, errcap);
    cJSON_free(doc);
    if (rc) {
        funnel_free(f);
        return rc;
    }
    *out = f;
    return TALLY_OK;
}

void funnel_free(struct funnel *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->nsteps; i++)
        free(f->steps[i].value);
    query_free(f->q);
    free(f);
}

/* ---------------------------------------------------------------- depth */

static size_t depth_loose(const struct funnel_ev *ev, size_t n, size_t K, int64_t w)
{
    size_t best = 0;
    for (size_t i = 0; i < n && best < K; i++) {
        if (!(ev[i].mask & 1)) continue;
        size_t k = 1;
        bool cut = false;
        for (size_t j = i + 1; j < n && k < K; j++) {
            if (w && ev[j].ts_ms - ev[i].ts_ms > w) {
                cut = true;
                break;
            }
            if (ev[j].mask >> k & 1) k++;
        }
        if (k > best) best = k;
        if (!cut) break; /* a later start reaches no further */
    }
    return best;
}

static size_t depth_strict(const struct funnel_ev *ev, size_t n, size_t K, int64_t w)
{
    size_t best = 0;
    for (size_t i = 0; i < n && best < K; i++) {
        if (!(ev[i].mask & 1)) continue;
        size_t k = 1;
        while (k < K && i + k < n && (ev[i + k].mask >> k & 1) &&
               (!w || ev[i + k].ts_ms - ev[i].ts_ms <= w))
            k++;
        if (k > best) best = k;
    }
    return best;
}

size_t funnel_depth(const struct funnel_ev *ev, size_t n, size_t nsteps, bool strict,
                    int64_t window_ms)
{
    TALLY_ASSERT(nsteps <= FUNNEL_STEPS_MAX);
    return strict ? depth_strict(ev, n, nsteps, window_ms) : depth_loose(ev, n, nsteps, window_ms);
}

/* ---------------------------------------------------------------- compute */

struct fctx {
    struct store *s;
    uint32_t site;
    const struct funnel *f;
    uint32_t name_id[FUNNEL_STEPS_MAX];
    bool name_found[FUNNEL_STEPS_MAX];
    uint32_t page_steps; /* mask of the page steps */
    struct u64map paths; /* path id -> FN_CACHE_DONE | mask */
    struct funnel_ev *seq;
    size_t nseq, capseq;
    size_t mem, mem_max;
    uint32_t cur_vseq;
    size_t cur_best;
    struct funnel_result *r;
    int err;
};

/* The page steps path id matches, from the dictionary (no cache; errors into c->err). */
static uint32_t path_steps(struct fctx *c, uint32_t id)
{
    char *str;
    uint32_t len;
    uint32_t mask = 0;
    int rc = raw_dict_string(c->s, c->site, id, &str, &len);
    if (rc == TALLY_OK) {
        for (size_t k = 0; k < c->f->nsteps; k++)
            if (c->f->steps[k].page &&
                qscan_glob_match(c->f->steps[k].value, strlen(c->f->steps[k].value), str, len))
                mask |= 1u << k;
        free(str);
    } else if (rc != TALLY_ENOENT && !c->err) {
        c->err = rc;
    }
    return mask;
}

/* path_steps cached per id (the visits plan). */
static uint32_t path_mask(struct fctx *c, uint32_t id)
{
    if (id == 0 || !c->page_steps) return 0;
    uint64_t *v = u64map_get(&c->paths, id);
    if (v) return (uint32_t)(*v & 0xffffffffu);
    uint32_t mask = path_steps(c, id);
    if (!u64map_put(&c->paths, id, FN_CACHE_DONE | mask) && !c->err) c->err = TALLY_ENOMEM;
    return mask;
}

static uint32_t event_mask(struct fctx *c, const struct qv_event *e)
{
    uint32_t m = 0;
    if (e->flags & RAW_F_PAGEVIEW) m |= path_mask(c, e->val[1]);
    for (size_t k = 0; k < c->f->nsteps; k++)
        if (!c->f->steps[k].page && c->name_found[k] && e->val[0] == c->name_id[k]) m |= 1u << k;
    return m;
}

/* The visitor c->cur_vseq is complete: count its best depth. */
static void visitor_done(struct fctx *c)
{
    if (c->f->window_ms)
        c->cur_best = funnel_depth(c->seq, c->nseq, c->f->nsteps, c->f->strict, c->f->window_ms);
    for (size_t k = 0; k < c->cur_best; k++)
        c->r->visitors[k]++;
    c->cur_best = 0;
    c->nseq = 0;
}

static int on_visit(void *arg, const struct qv_visit *v)
{
    struct fctx *c = arg;
    if (v->visitor_seq != c->cur_vseq) {
        if (c->cur_vseq) visitor_done(c);
        c->cur_vseq = v->visitor_seq;
    }
    size_t base = c->f->window_ms ? c->nseq : 0;
    if (base + v->n > c->capseq) {
        size_t cap = c->capseq ? c->capseq : 64;
        while (cap < base + v->n)
            cap *= 2;
        size_t add = (cap - c->capseq) * sizeof *c->seq;
        if (c->mem + add > c->mem_max) return TALLY_ETOOBIG;
        struct funnel_ev *p = realloc(c->seq, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        c->seq = p;
        c->capseq = cap;
        c->mem += add;
    }
    size_t n = base;
    for (size_t i = 0; i < v->n; i++) {
        const struct qv_event *e = &v->ev[i];
        if (!e->in_scope || !e->in_range) continue;
        uint32_t m = event_mask(c, e);
        if (m) c->seq[n++] = (struct funnel_ev){e->ts_ms, m};
    }
    if (c->err) return c->err;
    c->nseq = n;
    if (!c->f->window_ms) {
        size_t d = funnel_depth(c->seq, n, c->f->nsteps, c->f->strict, 0);
        if (d > c->cur_best) c->cur_best = d;
        c->nseq = 0;
    }
    return TALLY_OK;
}

/* ---------------------------------------------------------------- streaming (no filters) */

/* A visitor's funnel state as its events go by in time order, in an open-addressing table
 * keyed by the visitor hash (the state lives in the entry: one cache miss per visitor run,
 * prefetched ahead). `level` bit k-1: a partial match of k steps is alive (loose: every k
 * reached so far in the visit or, with a window, ever; strict: the chains ending at the last
 * step event); start[k-1] (windows only): the latest start among the alive matches of k steps
 * (the latest start leaves the most room). */
struct fsv { /* 16 bytes: four entries per cache line */
    uint64_t visitor;
    /* visits: the visitor's last counted event as ms after the range's start, + 1 (0: none
     * yet; 48 bits hold 8,900 years); windows: the visitor's slot in fstream.start */
    uint64_t last : 48;
    uint64_t level : FUNNEL_STEPS_MAX;
    uint64_t best : 4; /* the most steps reached (0 .. FUNNEL_STEPS_MAX) */
    uint64_t used : 1;
};
_Static_assert(sizeof(struct fsv) == 16, "a visitor's entry is 16 bytes");
_Static_assert(FUNNEL_STEPS_MAX <= 8 && FUNNEL_STEPS_MAX < 16, "level and best fit their bits");

struct fstream {
    struct fctx *c;
    int64_t window_ms, deadline_ms;
    int64_t from_ms; /* the range's start */
    size_t K;
    struct fsv *tab; /* cap entries, a power of two, at most half used */
    size_t cap, nv;
    unsigned shift; /* 64 - log2(cap) */
    bool mix;       /* home slots by a mixing hash, not the visitor's top bits */
    int64_t *start; /* nv x K, windows only */
    size_t capstart;
    uint16_t *pmask; /* path id -> FS_RESOLVED | mask of page steps */
    size_t cappmask;
    uint16_t *nmask; /* name id -> mask of the event steps naming it */
    size_t nnmask;
    uint32_t eng_id;
    bool eng_found;
    bool strict;
    int err;
};

#define FS_RESOLVED 0x100u
#define FS_PREFETCH_ROWS 48
#define FS_PROBE_MAX 64 /* a longer probe switches the table to a mixing hash */ /* rows between a prefetch of a visitor's entry and its use */

static int fs_charge(struct fctx *c, size_t bytes)
{
    if (c->mem + bytes > c->mem_max) return TALLY_ETOOBIG;
    c->mem += bytes;
    return TALLY_OK;
}

/* A visitor's home slot. Stored visitors are keyed hashes (uniform), so their top bits are
 * the slot: an hour's rows, sorted by visitor, then walk the table in address order (measured:
 * p50 -10 %, p99 -20 % on bench/funnel). Should the values not be uniform (a probe longer than
 * FS_PROBE_MAX), the table is rebuilt with a mixing hash. */
static inline size_t fs_home(const struct fstream *fs, uint64_t visitor)
{
    return fs->mix ? (size_t)u64map_hash(visitor) & (fs->cap - 1) : (size_t)(visitor >> fs->shift);
}

/* Moves the entries into a new table of cap slots (cap >= the current one). */
static int fs_rehash(struct fstream *fs, size_t cap)
{
    int rc = fs_charge(fs->c, (cap - fs->cap) * sizeof *fs->tab);
    if (rc) return rc;
    struct fsv *t = hugemap_alloc(cap * sizeof *t); /* (core/hugemap.h: mapped, huge pages) */
    if (!t) return TALLY_ENOMEM;
    struct fsv *old = fs->tab;
    size_t oldcap = fs->cap;
    fs->tab = t;
    fs->cap = cap;
    fs->shift = 64 - (unsigned)__builtin_ctzll(cap);
    for (size_t i = 0; i < oldcap; i++) {
        if (!old[i].used) continue;
        size_t j = fs_home(fs, old[i].visitor);
        while (t[j].used) j = (j + 1) & (cap - 1);
        t[j] = old[i];
    }
    hugemap_free(old, oldcap * sizeof *old);
    return TALLY_OK;
}

static int fs_grow(struct fstream *fs)
{
    return fs_rehash(fs, fs->cap ? fs->cap * 2 : 65536);
}

static int fs_find(struct fstream *fs, uint64_t visitor, struct fsv **out)
{
    if ((fs->nv + 1) * 2 > fs->cap) {
        int rc = fs_grow(fs);
        if (rc) return rc;
    }
    size_t i = fs_home(fs, visitor), probes = 0;
    while (fs->tab[i].used) {
        if (fs->tab[i].visitor == visitor) {
            *out = &fs->tab[i];
            return TALLY_OK;
        }
        i = (i + 1) & (fs->cap - 1);
        if (++probes > FS_PROBE_MAX && !fs->mix) { /* clustered: not uniform visitor values */
            fs->mix = true;
            int rc = fs_rehash(fs, fs->cap);
            return rc ? rc : fs_find(fs, visitor, out);
        }
    }
    if (fs->window_ms && fs->nv == fs->capstart) {
        size_t cap = fs->capstart ? fs->capstart * 2 : 4096;
        int rc = fs_charge(fs->c, (cap - fs->capstart) * fs->K * sizeof *fs->start);
        if (rc) return rc;
        int64_t *st = realloc(fs->start, cap * fs->K * sizeof *st);
        if (!st) return TALLY_ENOMEM;
        fs->start = st;
        fs->capstart = cap;
    }
    fs->tab[i] = (struct fsv){.visitor = visitor, .used = 1};
    if (fs->window_ms) fs->tab[i].last = fs->nv;
    fs->nv++;
    *out = &fs->tab[i];
    return TALLY_OK;
}

/* The page steps a path id matches (resolved once per id, through the dictionary). */
static uint32_t fs_path_mask(struct fstream *fs, uint32_t id)
{
    if (id == 0 || !fs->c->page_steps) return 0;
    if (id < fs->cappmask && fs->pmask[id]) return fs->pmask[id] & 0xffu;
    if (id >= fs->cappmask) {
        size_t cap = fs->cappmask ? fs->cappmask : 1024;
        while (cap <= id) cap *= 2;
        int rc = fs_charge(fs->c, (cap - fs->cappmask) * sizeof *fs->pmask);
        uint16_t *p = rc ? NULL : realloc(fs->pmask, cap * sizeof *p);
        if (!p) {
            if (!fs->err) fs->err = rc ? rc : TALLY_ENOMEM;
            return 0;
        }
        memset(p + fs->cappmask, 0, (cap - fs->cappmask) * sizeof *p);
        fs->pmask = p;
        fs->cappmask = cap;
    }
    uint32_t mask = path_steps(fs->c, id);
    if (fs->c->err && !fs->err) fs->err = fs->c->err;
    fs->pmask[id] = (uint16_t)(FS_RESOLVED | mask);
    return mask;
}

/* A visitor's state while its rows go by, in registers; written back to its entry after. */
struct fsl {
    uint64_t last;
    uint32_t level, best;
};

/* One step event (mask m != 0) at ts for the visitor in st / start. */
static inline void fs_step(const struct fstream *fs, struct fsl *st, int64_t *start, uint32_t m,
                           int64_t ts)
{
    const size_t K = fs->K;
    const int64_t w = fs->window_ms;
    uint32_t level = st->level;
    if (!w) { /* within a visit: the rules below without start times, as bit operations */
        uint32_t grown = (level << 1 & m) | (m & 1); /* k-1 alive and step k: k alive */
        level = fs->strict ? grown : level | grown;
    } else if (fs->strict) { /* chains extend only by the very next step event */
        uint32_t next = 0;
        for (size_t k = K - 1; k >= 1; k--)
            if ((level >> (k - 1) & 1) && (m >> k & 1) && (!w || ts - start[k - 1] <= w)) {
                next |= 1u << k;
                if (w) start[k] = start[k - 1];
            }
        if (m & 1) {
            next |= 1;
            if (w) start[0] = ts;
        }
        level = next;
    } else { /* loose: a match of k steps, once alive, stays alive */
        for (size_t k = K - 1; k >= 1; k--)
            if ((level >> (k - 1) & 1) && (m >> k & 1) && (!w || ts - start[k - 1] <= w)) {
                if (w && (!(level >> k & 1) || start[k - 1] > start[k])) start[k] = start[k - 1];
                level |= 1u << k;
            }
        if (m & 1) {
            level |= 1;
            if (w) start[0] = ts; /* the latest start */
        }
    }
    st->level = level;
    if (level) {
        uint32_t top = 32 - (uint32_t)__builtin_clz(level);
        if (top > st->best) st->best = top;
    }
}

/* One hour: each visitor's rows in a run (rows sorted by visitor within a run) are one entry
 * lookup, prefetched FS_PREFETCH_ROWS rows ahead, and the state stays in registers meanwhile. */
static int fs_hour(void *arg, int64_t hour_ms, const struct raw_row *rows, size_t n)
{
    struct fstream *fs = arg;
    if (fs->deadline_ms && timefmt_mono_ms() > fs->deadline_ms) return TALLY_ETIMEDOUT;
    /* the table does not grow during the hour: room for every row's visitor */
    while ((fs->nv + n + 1) * 2 > fs->cap) {
        int rc = fs_grow(fs);
        if (rc) return rc;
    }
    const uint32_t K = (uint32_t)fs->K;
    const bool visits = !fs->window_ms;
    const uint64_t from = (uint64_t)fs->from_ms;
    for (size_t i = 0; i < n;) {
        const uint64_t visitor = rows[i].visitor;
        struct fsv *v = NULL;
        struct fsl st = {0};
        int64_t *start = NULL;
        if (i + FS_PREFETCH_ROWS < n) /* once per visitor: the rows are read in order anyway */
            __builtin_prefetch(&fs->tab[fs_home(fs, rows[i + FS_PREFETCH_ROWS].visitor)]);
        for (; i < n && rows[i].visitor == visitor; i++) {
            const struct raw_row *r = &rows[i];
            if (r->flags & RAW_F_EXCLUDED) continue;
            if (fs->eng_found && r->val[0] == fs->eng_id) continue;
            if (!v) {
                int rc = fs_find(fs, visitor, &v);
                if (rc) return rc;
                st = (struct fsl){.last = v->last, .level = v->level, .best = v->best};
                if (!visits) start = fs->start + (size_t)st.last * fs->K;
            }
            if (visits) { /* a gap of FN_GAP_MS or more starts a new visit */
                uint64_t t = (uint64_t)(hour_ms + r->ts_in_hour_ms - from) + 1; /* in the range */
                if (st.last && t - st.last >= (uint64_t)FN_GAP_MS) st.level = 0;
                st.last = t;
            }
            if (st.best >= K) continue;
            uint32_t m = r->val[0] < fs->nnmask ? fs->nmask[r->val[0]] : 0;
            if (r->flags & RAW_F_PAGEVIEW) { /* resolved path ids inline, the others once */
                uint32_t id = r->val[1];
                m |= id < fs->cappmask && fs->pmask[id] ? fs->pmask[id] & 0xffu
                                                        : fs_path_mask(fs, id);
            }
            if (m) fs_step(fs, &st, start, m, hour_ms + r->ts_in_hour_ms);
        }
        if (v) {
            v->last = st.last;
            v->level = st.level & 0xffu;
            v->best = st.best & 0xfu;
        }
    }
    return fs->err;
}

/* funnel_compute for a funnel without filters: every counted event is in scope, so the
 * in-range events alone decide the visits (an event outside the range never lies between two
 * inside it) and each visitor's events can be judged as they go by, hour by hour
 * (raw_scan_hours), with a few bytes of state per visitor instead of every event held. */
static int fs_compute(struct fctx *c, const struct q_budget *b)
{
    struct fstream fs = {.c = c, .window_ms = c->f->window_ms, .K = c->f->nsteps,
                         .deadline_ms = b ? b->deadline_ms : 0,
                         .from_ms = c->f->q->range.from_ms, .strict = c->f->strict};
    int rc = raw_dict_find(c->s, c->site, "engagement", 10, &fs.eng_id);
    if (rc && rc != TALLY_ENOENT) return rc;
    fs.eng_found = rc == TALLY_OK;
    for (size_t k = 0; k < fs.K; k++)
        if (!c->f->steps[k].page && c->name_found[k] && c->name_id[k] >= fs.nnmask)
            fs.nnmask = (size_t)c->name_id[k] + 1;
    if (fs.nnmask && !(fs.nmask = calloc(fs.nnmask, sizeof *fs.nmask))) return TALLY_ENOMEM;
    for (size_t k = 0; k < fs.K; k++)
        if (!c->f->steps[k].page && c->name_found[k]) fs.nmask[c->name_id[k]] |= 1u << k;
    static const int fields[] = {DE_NAME, DE_PATH};
    /* an hour's rows are held at once: bound them by what the budget leaves */
    size_t rows_max = (c->mem_max / 4) / RAW_SCAN_HOURS_HELD / sizeof(struct raw_row);
    rc = raw_scan_hours(c->s, c->site, c->f->q->range.from_ms, c->f->q->range.to_ms, fields, 2,
                        rows_max, FN_SCAN_THREADS, fs_hour, &fs);
    for (size_t i = 0; !rc && i < fs.cap; i++)
        for (size_t k = 0; fs.tab[i].used && k < fs.tab[i].best; k++)
            c->r->visitors[k]++;
    hugemap_free(fs.tab, fs.cap * sizeof *fs.tab);
    free(fs.start);
    free(fs.pmask);
    free(fs.nmask);
    return rc;
}

int funnel_compute(struct store *s, uint32_t site_id, const struct funnel *f,
                   const struct q_budget *b, struct funnel_result *r)
{
    memset(r, 0, sizeof *r);
    if (site_id == 0) return TALLY_OK;
    struct fctx c = {.s = s, .site = site_id, .f = f, .r = r};
    c.mem_max = b && b->memory_bytes_max ? b->memory_bytes_max : FN_MEMORY_DEFAULT;
    for (size_t k = 0; k < f->nsteps; k++) {
        if (f->steps[k].page) {
            c.page_steps |= 1u << k;
            continue;
        }
        int rc = raw_dict_find(s, site_id, f->steps[k].value, (uint32_t)strlen(f->steps[k].value),
                               &c.name_id[k]);
        if (rc && rc != TALLY_ENOENT) return rc;
        c.name_found[k] = rc == TALLY_OK;
    }
    if (f->plan == FUNNEL_PLAN_STREAM && f->q->filter) return TALLY_EINVAL;
    if (f->plan == FUNNEL_PLAN_STREAM || (f->plan == FUNNEL_PLAN_AUTO && !f->q->filter))
        return fs_compute(&c, b);
    static const int fields[] = {DE_NAME, DE_PATH};
    /* the scan's memory budget leaves room for the funnel's own scratch */
    struct q_budget qb = b ? *b : (struct q_budget){0};
    int rc = qscan_visits(s, site_id, f->q, f->q->range, &qb, fields, 2, on_visit, &c);
    if (!rc && c.cur_vseq) visitor_done(&c);
    free(c.seq);
    u64map_free(&c.paths);
    return rc;
}

/* ---------------------------------------------------------------- response */

static double pct(uint64_t a, uint64_t b)
{
    return b ? round((double)a * 10000.0 / (double)b) / 100.0 : 0;
}

static cJSON *response(const struct funnel *f, const struct funnel_result *r)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *steps = cJSON_AddArrayToObject(root, "steps");
    if (!root || !steps) goto fail;
    for (size_t k = 0; k < f->nsteps; k++) {
        const struct funnel_step *st = &f->steps[k];
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(steps, o)) {
            cJSON_Delete(o);
            goto fail;
        }
        char label[FUNNEL_VALUE_BYTES_MAX + 8];
        snprintf(label, sizeof label, "%s%s", st->page ? "Visit " : "", st->value);
        uint64_t v = r->visitors[k], prev = k ? r->visitors[k - 1] : v;
        if (!cJSON_AddNumberToObject(o, "step", (double)(k + 1)) ||
            !cJSON_AddStringToObject(o, "label", label) ||
            !cJSON_AddStringToObject(o, st->page ? "page" : "event", st->value) ||
            !cJSON_AddNumberToObject(o, "visitors", (double)v) ||
            !cJSON_AddNumberToObject(o, "dropoff", (double)(prev - v)) ||
            !cJSON_AddNumberToObject(o, "dropoff_rate", pct(prev - v, prev)) ||
            !cJSON_AddNumberToObject(o, "conversion_rate", pct(v, r->visitors[0])) ||
            !cJSON_AddNumberToObject(o, "conversion_rate_step", pct(v, prev)))
            goto fail;
    }
    uint64_t first = r->visitors[0], last = r->visitors[f->nsteps - 1];
    char from[TIMEFMT_RFC3339_BYTES], to[TIMEFMT_RFC3339_BYTES];
    timefmt_format_rfc3339(f->q->range.from_ms, from);
    timefmt_format_rfc3339(f->q->range.to_ms, to);
    cJSON *meta = cJSON_CreateObject();
    if (!meta || !cJSON_AddItemToObject(root, "meta", meta)) {
        cJSON_Delete(meta);
        goto fail;
    }
    if (!cJSON_AddNumberToObject(root, "visitors", (double)first) ||
        !cJSON_AddNumberToObject(root, "converted", (double)last) ||
        !cJSON_AddNumberToObject(root, "conversion_rate", pct(last, first)) ||
        !cJSON_AddStringToObject(meta, "site_id", f->q->site) ||
        !(f->window_ms ? cJSON_AddNumberToObject(meta, "window", (double)(f->window_ms / 1000))
                       : cJSON_AddStringToObject(meta, "window", "visit")) ||
        !cJSON_AddStringToObject(meta, "order", f->strict ? "strict" : "loose") ||
        !cJSON_AddStringToObject(meta, "from", from) ||
        !cJSON_AddStringToObject(meta, "to", to) ||
        !cJSON_AddBoolToObject(meta, "exact", true))
        goto fail;
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}

int funnel_execute(struct store *s, uint32_t site_id, const struct funnel *f,
                   const struct q_budget *b, char **json, size_t *len, char *err,
                   size_t errcap)
{
    *json = NULL;
    *len = 0;
    struct funnel_result r;
    int rc = funnel_compute(s, site_id, f, b, &r);
    if (rc) {
        snprintf(err, errcap, "funnel: %s", tally_strerror(rc));
        return rc;
    }
    cJSON *root = response(f, &r);
    char *p = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!p) return TALLY_ENOMEM;
    *json = p;
    *len = strlen(p);
    return TALLY_OK;
}
