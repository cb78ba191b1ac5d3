/*
 * qscan: the raw-store scan executor (qexec_scan, query.h). It answers any query the rollups
 * cannot (several filters, several dimensions, regexes, visit filters mixed with event
 * breakdowns, time on page) by re-deriving visits from the raw events of the site, with the
 * SEMANTICS of query.h and the visit rule of engine.h, so that on what both can answer the two
 * executors agree to the event.
 *
 * PHASES
 *  1. Compile. Every string condition is turned into a condition on dictionary ids (raw.h):
 *     case-sensitive `is` / `is_not` values are looked up once (raw_dict_find); contains,
 *     matches, case-insensitive `is` and page-goal patterns are evaluated ONCE per dictionary
 *     string in one walk (raw_dict_each) into a bitmap per condition. Ids assigned after the
 *     walk (a concurrent writer) are resolved one by one and cached. Only the fields and
 *     property keys the query uses are kept per event ("slots").
 *  2. Scan [from, to). Excluded events (bot, host not allowed, duplicate) and "engagement"
 *     events never belong to a visit (engine.h) and are dropped at once. Each visitor seen gets
 *     a dense index; head/tail = its earliest/latest event in the range.
 *  3. Extend backwards: windows [lo - gap, lo) are scanned while some visitor's chain (events
 *     closer than the gap, starting at its earliest in-range event) reached into the previous
 *     window; only events of such open visitors are kept. Forwards likewise from to, so that a
 *     visit is always seen whole: its first event (attributes, the bucket of its visit metrics),
 *     its last (exit page, duration) and every event in between (bounce, "holds an event in
 *     scope"). Each window costs one seek; the loop ends when no chain grows.
 *  4. Group: a counting sort by visitor index, then each visitor's events by (ts, offset)
 *     (blocks are sorted only within themselves). Visits = runs with gaps < visit gap.
 *  5. Aggregate per visit: the filter tree is evaluated per event with the event's fields and
 *     its visit's attributes (entry attributes from the first event, exit page from the last);
 *     the visit is in scope when one of its events is. In-scope events in the range add
 *     pageviews, events, revenue, time on page and their visitor to the row of their own
 *     values (time dimensions: the event's bucket); a visit whose first event is in the range
 *     adds visits, bounces and duration ONCE to each distinct row of its in-scope events, with
 *     time dimensions taken from the first event. Distinct visitors are exact and need no set:
 *     a visitor's events are processed together, so a row remembers the last visitor that
 *     touched it.
 *  6. Emit: ids become strings ("" -> "(none)"), time buckets labels (q_time_bucket).
 *
 * DEFINITIONS
 *  - Time on page: for each in-scope pageview in the range that has a later event in the same
 *    visit, (ts of the next event of the visit) - (ts of the pageview) is added to top_ms and 1
 *    to top_count of the pageview's row. The last event of a visit has no time on page
 *    (unknown). Engagement events are not part of visits and are not used.
 *  - Goals (q->goals): "event:NAME" is completed by events named NAME and shown as "NAME";
 *    "page:PATTERN" by pageviews whose whole path matches PATTERN ('*' = any run of characters
 *    except '/', '**' = any run of characters) and shown as "Visit PATTERN". An event may
 *    complete several goals (one row each); a breakdown by event:goal has no "(none)" row. A
 *    positive goal filter holds when some completed goal matches it, a negative one when every
 *    completed goal matches it (so an event that completes no goal passes `is_not`).
 *  - event:props:KEY: an event without KEY has the value "" ("(none)"), in breakdowns and
 *    filters alike (as Plausible shows it).
 *  - With no dimensions, rows hold one row (the empty combination: the whole range) when
 *    anything was counted, the same numbers as t->total.
 *
 * BUDGET. The deadline is checked every QS_CHECK_EVERY events (scan and aggregation);
 * allocations of the executor (event slots, visitor and row tables, bitmaps) are counted
 * against memory_bytes_max (0: QS_MEMORY_DEFAULT) and result rows against rows_max (0:
 * QS_ROWS_DEFAULT): beyond either, TALLY_ETOOBIG.
 *
 * SPEED (test_qscan's bench, 1M events, 20k visitors over 72 h, 2 dimensions, -O2, a shared
 * 2-core machine): ~200 ms, of which the raw scan (RocksDB + block decode) ~120 ms, grouping
 * ~50 ms, aggregation ~60 ms (it was ~190 ms before regroup(): random access per event). One
 * thread: on that machine a second one could not be measured reliably. The natural split is
 * by visitor (visitor index parity) for group + aggregate: rows of disjoint visitor sets add up
 * exactly, visitors included.
 *
 * THREADS. One call runs on the caller's thread and shares nothing (the query is read only).
 */
#include <stdlib.h>
#include <string.h>

#include "ingest/timefmt.h"
#include "query/query.h"
#include "query/qvisit.h"
#include "rollup/cell.h"
#include "rollup/u64map.h"
#include "store/raw.h"
#include "tally/error.h"

#define QS_GAP_MS (30LL * 60 * 1000) /* engine_opts_default's visit_gap_ms */
#define QS_CHECK_EVERY 4096u         /* events between two deadline checks */
#define QS_MEMORY_DEFAULT ((size_t)1 << 30)
#define QS_ROWS_DEFAULT 1000000u
#define QS_TB_CACHE 1024 /* time-bucket cache entries per time dimension */
#define QS_PROPS_MAX (QUERY_DIMS_MAX + QUERY_FILTER_NODES_MAX)
#define QS_F_REV 0x80000000u /* sev.flags: revenue in the query's currency */
#define QS_F_REV_OTHER 0x40000000u /* sev.flags: revenue in another currency (totals: meta) */
#define QS_NONE "(none)"

enum { SRC_EVENT, SRC_VISIT, SRC_EXIT, SRC_GOAL, SRC_TIME };
enum { PASS_MAIN, PASS_BACK, PASS_FWD };

/* Which dictionary ids satisfy a string condition, from one walk of the dictionary. */
struct idpred {
    const struct q_filter *leaf; /* q_leaf_match(leaf, ...) */
    const char *glob;            /* or a page-goal pattern */
    uint64_t *bits;              /* ids 1 .. walked */
    size_t nwords;
    uint32_t walked;    /* the largest id the walk saw */
    bool zero;          /* the result for id 0 ("") */
    struct u64map late; /* ids beyond the walk: 1 match, 2 no */
};

struct cnode {
    enum q_op op;
    size_t nkids;
    struct cnode *kids;
    /* leaves */
    int src, slot;
    bool exact, neg; /* exact: ids[] of the values (is / is_not); neg: the _not forms */
    uint32_t *ids;
    size_t nids;
    struct idpred pred;
    bool *goal_ok; /* SRC_GOAL: per goal, whether its label satisfies the leaf */
};

struct cgoal {
    bool page, found;
    uint32_t name_id;
    struct idpred pred;
    char *label;
};

struct cdim {
    int src, slot;
    enum q_time g;
};

/* An event kept for the query; its slot values live in qs.ex at index * stride. */
struct sev {
    int64_t ts;
    uint64_t off;
    uint32_t vis;
    uint32_t flags; /* RAW_F_* | QS_F_REV | QS_F_REV_OTHER */
    int64_t rev;
    uint32_t cur;   /* QS_F_REV_OTHER: the revenue's currency (dictionary id) */
};

struct svis {
    uint64_t visitor;
    int64_t head, tail; /* the chain reaching into the range: first and last event */
    bool open;
};

struct srow {
    uint64_t key[QUERY_DIMS_MAX];
    struct q_agg a;
    uint32_t last_visitor, last_visit;
};

struct tbc {
    int64_t min, start;
};

struct qs {
    struct store *s;
    uint32_t site;
    const struct query *q;
    struct q_range r;
    int64_t deadline;
    size_t mem, mem_max, rows_max;
    uint32_t tick;
    int err; /* sticky error of a late dictionary lookup */

    int fslot[DE_FIELD_COUNT];
    const char *pkey[QS_PROPS_MAX];
    uint32_t pkey_id[QS_PROPS_MAX];
    bool pkey_found[QS_PROPS_MAX];
    int pslot[QS_PROPS_MAX];
    size_t npkeys, stride;
    bool eng_found, cur_found;
    uint32_t eng_id, cur_id;

    struct cnode *root;
    struct cgoal *goals;
    size_t ngoals;
    bool goals_used;
    struct idpred *walk[QUERY_FILTER_NODES_MAX + 64];
    size_t nwalk;
    struct idpred **gwalk; /* page goals' predicates (any number of goals) */
    size_t ngwalk;

    size_t ndims;
    struct cdim dims[QUERY_DIMS_MAX];
    struct tbc *tcache; /* QUERY_DIMS_MAX x QS_TB_CACHE */

    int pass;
    struct sev *ev;
    size_t nev, capev;
    uint32_t *ex;
    size_t capex;
    struct u64map vmap;
    size_t vmap_mem;
    struct svis *vis;
    size_t nvis, capvis;
    int64_t vis_zero;      /* index of visitor 0 (u64map reserves key 0), -1 */
    uint64_t last_visitor; /* the previous row's visitor and its index */
    uint32_t last_vi;
    bool last_vis_ok;

    uint32_t *order, *vstart;
    bool *inscope;
    size_t capin;
    uint64_t *gvals; /* scratch: goal values of one event, per goal dimension */

    struct srow *rows;
    size_t nrows, caprows;
    uint32_t *rslots;
    size_t nrslots;
    struct srow total;
    struct { uint32_t id; int64_t micros; } other_rev[QUERY_OTHER_CURRENCIES_MAX]; /* total */
    size_t n_other_rev;
    uint32_t visit_seq;
    struct u64map strs; /* dictionary id -> index into strv */
    char **strv;
    size_t nstrv, capstrv;
};

/* ---------------------------------------------------------------- memory and time */

static int qs_grow(struct qs *c, void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return TALLY_OK;
    size_t nc = *cap ? *cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    size_t add = (nc - *cap) * elem;
    if (c->mem + add > c->mem_max) return TALLY_ETOOBIG;
    void *x = realloc(*p, nc * elem);
    if (!x) return TALLY_ENOMEM;
    *p = x;
    *cap = nc;
    c->mem += add;
    return TALLY_OK;
}

static int qs_charge(struct qs *c, size_t bytes)
{
    if (c->mem + bytes > c->mem_max) return TALLY_ETOOBIG;
    c->mem += bytes;
    return TALLY_OK;
}

static int qs_tick(struct qs *c)
{
    if ((++c->tick & (QS_CHECK_EVERY - 1)) != 0) return TALLY_OK;
    if (c->deadline && timefmt_mono_ms() > c->deadline) return TALLY_ETIMEDOUT;
    return TALLY_OK;
}

/* ---------------------------------------------------------------- string conditions */

/* Whether the whole of s matches a page-goal pattern: '**' any run, '*' any run without '/'.
 * Dynamic programming over (pattern position, string position): linear in each. */
static bool glob_match(const char *p, size_t pl, const char *s, size_t sl)
{
    uint8_t cur[RAW_STRING_BYTES_MAX + 1], nxt[RAW_STRING_BYTES_MAX + 1];
    if (sl > RAW_STRING_BYTES_MAX) return false;
    memset(cur, 0, sl + 1);
    cur[0] = 1;
    for (size_t i = 0; i < pl;) {
        if (p[i] == '*') {
            bool dbl = i + 1 < pl && p[i + 1] == '*';
            uint8_t run = 0;
            for (size_t j = 0; j <= sl; j++) {
                run |= cur[j];
                nxt[j] = run;
                if (j < sl && !dbl && s[j] == '/') run = 0;
            }
            i += dbl ? 2 : 1;
        } else {
            nxt[0] = 0;
            for (size_t j = 1; j <= sl; j++)
                nxt[j] = cur[j - 1] && s[j - 1] == p[i];
            i++;
        }
        memcpy(cur, nxt, sl + 1);
    }
    return cur[sl];
}

bool qscan_glob_match(const char *pattern, size_t pl, const char *s, size_t sl)
{
    return glob_match(pattern, pl, s, sl);
}

static bool pred_eval_str(const struct idpred *p, const char *s, size_t len)
{
    if (p->leaf) return q_leaf_match(p->leaf, s, len);
    return glob_match(p->glob, strlen(p->glob), s, len);
}

static bool pred_match(struct qs *c, struct idpred *p, uint32_t id)
{
    if (id == 0) return p->zero;
    if (id <= p->walked) return p->bits[id >> 6] >> (id & 63) & 1;
    /* an id assigned after the walk (a concurrent writer): resolve it once */
    uint64_t *v = u64map_get(&p->late, id);
    if (v) return *v == 1;
    char *str;
    uint32_t len;
    int rc = raw_dict_string(c->s, c->site, id, &str, &len);
    bool m = false;
    if (rc == TALLY_OK) {
        m = pred_eval_str(p, str, len);
        free(str);
    } else if (rc != TALLY_ENOENT && !c->err) {
        c->err = rc;
    }
    if (!u64map_put(&p->late, id, m ? 1 : 2) && !c->err) c->err = TALLY_ENOMEM;
    return m;
}

struct walk_ctx {
    struct qs *c;
    int rc;
    uint32_t max_id;
};

static int walk_set(struct qs *c, struct idpred *p, uint32_t id, const char *str, uint32_t len)
{
    if (!pred_eval_str(p, str, len)) return TALLY_OK;
    size_t w = id >> 6;
    if (w >= p->nwords) {
        size_t cap = p->nwords;
        int rc = qs_grow(c, (void **)&p->bits, &cap, w + 1, sizeof *p->bits);
        if (rc) return rc;
        memset(p->bits + p->nwords, 0, (cap - p->nwords) * sizeof *p->bits);
        p->nwords = cap;
    }
    p->bits[w] |= 1ULL << (id & 63);
    return TALLY_OK;
}

static int walk_cb(void *arg, uint32_t id, const char *str, uint32_t len)
{
    struct walk_ctx *w = arg;
    struct qs *c = w->c;
    if (id > w->max_id) w->max_id = id;
    int rc = qs_tick(c);
    for (size_t i = 0; !rc && i < c->nwalk; i++)
        rc = walk_set(c, c->walk[i], id, str, len);
    for (size_t i = 0; !rc && i < c->ngwalk; i++)
        rc = walk_set(c, c->gwalk[i], id, str, len);
    return rc;
}

/* After the walk: the bitmap covers ids 0 .. max_id, every id the walk saw. */
static int walk_finish(struct qs *c, struct idpred *p, uint32_t max_id)
{
    size_t need = (size_t)(max_id >> 6) + 1, cap = p->nwords;
    int rc = qs_grow(c, (void **)&p->bits, &cap, need, sizeof *p->bits);
    if (rc) return rc;
    if (cap > p->nwords) memset(p->bits + p->nwords, 0, (cap - p->nwords) * sizeof *p->bits);
    p->nwords = cap;
    p->walked = max_id;
    p->zero = pred_eval_str(p, "", 0);
    return TALLY_OK;
}

/* ---------------------------------------------------------------- compile */

static int rollup_dim_field(int dim)
{
    switch (dim) {
    case ROLLUP_DIM_PAGE: return DE_PATH;
    case ROLLUP_DIM_HOSTNAME: return DE_HOSTNAME;
    case ROLLUP_DIM_NAME: return DE_NAME;
    case ROLLUP_DIM_ENTRY_PAGE: return DE_PATH;
    case ROLLUP_DIM_EXIT_PAGE: return DE_PATH;
    case ROLLUP_DIM_SOURCE: return DE_SOURCE;
    case ROLLUP_DIM_REFERRER: return DE_REFERRER;
    case ROLLUP_DIM_CHANNEL: return DE_CHANNEL;
    case ROLLUP_DIM_UTM_SOURCE: return DE_UTM_SOURCE;
    case ROLLUP_DIM_UTM_MEDIUM: return DE_UTM_MEDIUM;
    case ROLLUP_DIM_UTM_CAMPAIGN: return DE_UTM_CAMPAIGN;
    case ROLLUP_DIM_UTM_CONTENT: return DE_UTM_CONTENT;
    case ROLLUP_DIM_UTM_TERM: return DE_UTM_TERM;
    case ROLLUP_DIM_DEVICE: return DE_DEVICE;
    case ROLLUP_DIM_BROWSER: return DE_BROWSER;
    case ROLLUP_DIM_BROWSER_VERSION: return DE_BROWSER_VERSION;
    case ROLLUP_DIM_OS: return DE_OS;
    case ROLLUP_DIM_OS_VERSION: return DE_OS_VERSION;
    case ROLLUP_DIM_COUNTRY: return DE_COUNTRY;
    case ROLLUP_DIM_REGION: return DE_REGION;
    case ROLLUP_DIM_CITY: return DE_CITY;
    default: return -1;
    }
}

static int field_slot(struct qs *c, int f)
{
    if (c->fslot[f] < 0) c->fslot[f] = (int)c->stride++;
    return c->fslot[f];
}

static int prop_slot(struct qs *c, const char *key)
{
    for (size_t i = 0; i < c->npkeys; i++)
        if (strcmp(c->pkey[i], key) == 0) return c->pslot[i];
    if (c->npkeys == QS_PROPS_MAX) return -1;
    size_t i = c->npkeys++;
    c->pkey[i] = key;
    c->pslot[i] = (int)c->stride++;
    return c->pslot[i];
}

/* Source and slot of a dimension (events or filters). TALLY_EINVAL for a bad one. */
static int dim_resolve(struct qs *c, const struct q_dim *d, int *src, int *slot)
{
    *slot = -1;
    if (d->field == Q_DIM_TIME) {
        *src = SRC_TIME;
        return d->time == QT_NONE ? TALLY_EINVAL : TALLY_OK;
    }
    if (d->field == Q_DIM_GOAL) {
        *src = SRC_GOAL;
        c->goals_used = true;
        return TALLY_OK;
    }
    if (d->field == ROLLUP_DIM_PROP) {
        *src = SRC_EVENT;
        *slot = prop_slot(c, d->prop);
        return *slot < 0 ? TALLY_ETOOBIG : TALLY_OK;
    }
    int f = rollup_dim_field(d->field);
    if (f < 0) return TALLY_EINVAL;
    *src = d->field == ROLLUP_DIM_EXIT_PAGE ? SRC_EXIT
           : rollup_dim_is_visit(d->field)  ? SRC_VISIT
                                            : SRC_EVENT;
    *slot = field_slot(c, f);
    return TALLY_OK;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int compile_leaf(struct qs *c, const struct q_filter *f, struct cnode *n)
{
    int rc = dim_resolve(c, &f->dim, &n->src, &n->slot);
    if (rc) return rc;
    if (n->src == SRC_TIME) return TALLY_EINVAL;
    n->neg = f->op == QF_IS_NOT || f->op == QF_CONTAINS_NOT || f->op == QF_MATCHES_NOT;
    if (n->src == SRC_GOAL) {
        /* filled in once the goals are compiled (compile_goals) */
        return TALLY_OK;
    }
    if ((f->op == QF_IS || f->op == QF_IS_NOT) && !f->case_insensitive) {
        n->exact = true;
        if (f->nvalues && !(n->ids = malloc(f->nvalues * sizeof *n->ids))) return TALLY_ENOMEM;
        for (size_t i = 0; i < f->nvalues; i++) {
            uint32_t id;
            rc = raw_dict_find(c->s, c->site, f->values[i], f->lens[i], &id);
            if (rc == TALLY_ENOENT) continue;
            if (rc) return rc;
            n->ids[n->nids++] = id;
        }
        if (n->nids > 1) qsort(n->ids, n->nids, sizeof *n->ids, u32_cmp);
        return TALLY_OK;
    }
    n->pred.leaf = f;
    if (c->nwalk == TALLY_ARRAY_LEN(c->walk)) return TALLY_ETOOBIG;
    c->walk[c->nwalk++] = &n->pred;
    return TALLY_OK;
}

static int compile_node(struct qs *c, const struct q_filter *f, struct cnode *n, int depth)
{
    if (depth > QUERY_FILTER_DEPTH_MAX + 1) return TALLY_EINVAL;
    n->op = f->op;
    if (f->op != QF_AND && f->op != QF_OR && f->op != QF_NOT) return compile_leaf(c, f, n);
    if (f->nkids == 0 || (f->op == QF_NOT && f->nkids != 1)) return TALLY_EINVAL;
    n->kids = calloc(f->nkids, sizeof *n->kids);
    if (!n->kids) return TALLY_ENOMEM;
    n->nkids = f->nkids;
    for (size_t i = 0; i < f->nkids; i++) {
        int rc = compile_node(c, &f->kids[i], &n->kids[i], depth + 1);
        if (rc) return rc;
    }
    return TALLY_OK;
}

static void node_free(struct cnode *n)
{
    for (size_t i = 0; i < n->nkids; i++)
        node_free(&n->kids[i]);
    free(n->kids);
    free(n->ids);
    free(n->pred.bits);
    u64map_free(&n->pred.late);
    free(n->goal_ok);
}

static int goals_leaves(struct qs *c, const struct q_filter *f, struct cnode *n)
{
    if (n->op == QF_AND || n->op == QF_OR || n->op == QF_NOT) {
        for (size_t i = 0; i < n->nkids; i++) {
            int rc = goals_leaves(c, &f->kids[i], &n->kids[i]);
            if (rc) return rc;
        }
        return TALLY_OK;
    }
    if (n->src != SRC_GOAL) return TALLY_OK;
    n->goal_ok = calloc(c->ngoals ? c->ngoals : 1, sizeof *n->goal_ok);
    if (!n->goal_ok) return TALLY_ENOMEM;
    for (size_t g = 0; g < c->ngoals; g++)
        n->goal_ok[g] = q_leaf_match(f, c->goals[g].label, strlen(c->goals[g].label));
    return TALLY_OK;
}

static int compile_goals(struct qs *c)
{
    const struct query *q = c->q;
    if (!c->goals_used || q->ngoals == 0) return TALLY_OK;
    c->goals = calloc(q->ngoals, sizeof *c->goals);
    c->gwalk = calloc(q->ngoals, sizeof *c->gwalk);
    if (!c->goals || !c->gwalk) return TALLY_ENOMEM;
    field_slot(c, DE_NAME);
    field_slot(c, DE_PATH);
    for (size_t i = 0; i < q->ngoals; i++) {
        struct cgoal *g = &c->goals[c->ngoals];
        const char *s = q->goals[i];
        if (strncmp(s, "event:", 6) == 0) {
            g->label = strdup(s + 6);
            if (!g->label) return TALLY_ENOMEM;
            int rc = raw_dict_find(c->s, c->site, s + 6, (uint32_t)strlen(s + 6), &g->name_id);
            if (rc && rc != TALLY_ENOENT) return rc;
            g->found = rc == TALLY_OK;
        } else if (strncmp(s, "page:", 5) == 0) {
            size_t n = strlen(s + 5);
            g->page = true;
            g->label = malloc(n + 7);
            if (!g->label) return TALLY_ENOMEM;
            memcpy(g->label, "Visit ", 6);
            memcpy(g->label + 6, s + 5, n + 1);
            g->pred.glob = s + 5;
            c->gwalk[c->ngwalk++] = &g->pred;
        } else {
            continue; /* the config loader validates goals; an unknown kind never matches */
        }
        c->ngoals++;
    }
    c->gvals = malloc((c->ngoals + 1) * QUERY_DIMS_MAX * sizeof *c->gvals);
    return c->gvals ? TALLY_OK : TALLY_ENOMEM;
}

static int compile(struct qs *c)
{
    const struct query *q = c->q;
    for (int f = 0; f < DE_FIELD_COUNT; f++)
        c->fslot[f] = -1;
    if (q->ndims > QUERY_DIMS_MAX) return TALLY_EINVAL;
    c->ndims = q->ndims;
    for (size_t d = 0; d < q->ndims; d++) {
        int rc = dim_resolve(c, &q->dims[d], &c->dims[d].src, &c->dims[d].slot);
        if (rc) return rc;
        c->dims[d].g = q->dims[d].time;
    }
    if (q->filter) {
        if (!(c->root = calloc(1, sizeof *c->root))) return TALLY_ENOMEM;
        int rc = compile_node(c, q->filter, c->root, 0);
        if (rc) return rc;
    }
    int rc = compile_goals(c);
    if (!rc && c->root) rc = goals_leaves(c, q->filter, c->root);
    if (rc) return rc;
    for (size_t i = 0; i < c->npkeys; i++) {
        rc = raw_dict_find(c->s, c->site, c->pkey[i], (uint32_t)strlen(c->pkey[i]), &c->pkey_id[i]);
        if (rc && rc != TALLY_ENOENT) return rc;
        c->pkey_found[i] = rc == TALLY_OK && c->pkey[i][0];
    }
    rc = raw_dict_find(c->s, c->site, "engagement", 10, &c->eng_id);
    if (rc && rc != TALLY_ENOENT) return rc;
    c->eng_found = rc == TALLY_OK;
    size_t cl = strnlen(q->currency, 3);
    rc = cl ? raw_dict_find(c->s, c->site, q->currency, (uint32_t)cl, &c->cur_id) : TALLY_ENOENT;
    if (rc && rc != TALLY_ENOENT) return rc;
    c->cur_found = rc == TALLY_OK;
    if (c->nwalk || c->ngwalk) {
        struct walk_ctx w = {c, 0, 0};
        rc = raw_dict_each(c->s, c->site, walk_cb, &w);
        for (size_t i = 0; !rc && i < c->nwalk; i++)
            rc = walk_finish(c, c->walk[i], w.max_id);
        for (size_t i = 0; !rc && i < c->ngwalk; i++)
            rc = walk_finish(c, c->gwalk[i], w.max_id);
        if (rc) return rc;
    }
    c->tcache = malloc(QUERY_DIMS_MAX * QS_TB_CACHE * sizeof *c->tcache);
    if (!c->tcache) return TALLY_ENOMEM;
    for (size_t i = 0; i < QUERY_DIMS_MAX * QS_TB_CACHE; i++)
        c->tcache[i].min = INT64_MIN;
    return qs_charge(c, QUERY_DIMS_MAX * QS_TB_CACHE * sizeof *c->tcache);
}

/* ---------------------------------------------------------------- scan */

static int vis_find(struct qs *c, uint64_t visitor, bool create, uint32_t *out)
{
    if (visitor == 0) {
        if (c->vis_zero >= 0) {
            *out = (uint32_t)c->vis_zero;
            return TALLY_OK;
        }
    } else {
        uint64_t *v = u64map_get(&c->vmap, visitor);
        if (v) {
            *out = (uint32_t)*v;
            return TALLY_OK;
        }
    }
    if (!create) return TALLY_ENOENT;
    if (c->nvis >= UINT32_MAX - 1) return TALLY_ETOOBIG;
    int rc = qs_grow(c, (void **)&c->vis, &c->capvis, c->nvis + 1, sizeof *c->vis);
    if (rc) return rc;
    uint32_t i = (uint32_t)c->nvis++;
    c->vis[i] = (struct svis){visitor, INT64_MAX, INT64_MIN, true};
    if (visitor == 0) {
        c->vis_zero = i;
    } else {
        if ((c->vmap.n + 1) * 2 > c->vmap.cap &&
            (rc = qs_charge(c, (c->vmap.cap ? c->vmap.cap : 64) * 16)))
            return rc;
        if (!u64map_put(&c->vmap, visitor, i)) return TALLY_ENOMEM;
    }
    *out = i;
    return TALLY_OK;
}

static int on_event(void *arg, const struct raw_event *re)
{
    struct qs *c = arg;
    int rc = qs_tick(c);
    if (rc) return rc;
    if (re->flags & RAW_F_EXCLUDED) return 0;
    if (c->eng_found && re->id[DE_NAME] == c->eng_id) return 0;
    uint32_t vi;
    if (c->last_vis_ok && re->visitor == c->last_visitor) { /* a block's rows are by visitor */
        vi = c->last_vi;
    } else {
        rc = vis_find(c, re->visitor, c->pass == PASS_MAIN, &vi);
        if (rc == TALLY_ENOENT) return 0;
        if (rc) return rc;
        c->last_visitor = re->visitor;
        c->last_vi = vi;
        c->last_vis_ok = true;
    }
    struct svis *v = &c->vis[vi];
    if (c->pass != PASS_MAIN && !v->open) return 0;
    if (c->nev >= UINT32_MAX - 1) return TALLY_ETOOBIG;
    if ((rc = qs_grow(c, (void **)&c->ev, &c->capev, c->nev + 1, sizeof *c->ev))) return rc;
    if (c->stride &&
        (rc = qs_grow(c, (void **)&c->ex, &c->capex, (c->nev + 1) * c->stride, sizeof *c->ex)))
        return rc;
    struct sev *e = &c->ev[c->nev];
    e->ts = re->ts_ms;
    e->off = re->offset;
    e->vis = vi;
    e->flags = re->flags;
    e->rev = 0;
    e->cur = 0;
    if (re->has_revenue && c->cur_found && re->currency_id == c->cur_id) {
        e->flags |= QS_F_REV;
        e->rev = re->revenue_micros;
    } else if (re->has_revenue) {
        e->flags |= QS_F_REV_OTHER;
        e->rev = re->revenue_micros;
        e->cur = re->currency_id;
    }
    uint32_t *x = c->ex + c->nev * c->stride;
    for (int f = 0; f < DE_FIELD_COUNT; f++)
        if (c->fslot[f] >= 0) x[c->fslot[f]] = re->id[f];
    for (size_t p = 0; p < c->npkeys; p++) {
        uint32_t val = 0;
        for (uint32_t k = 0; c->pkey_found[p] && k < re->props_count; k++)
            if (re->props[k].key == c->pkey_id[p]) {
                val = re->props[k].value;
                break;
            }
        x[c->pslot[p]] = val;
    }
    c->nev++;
    if (c->pass == PASS_MAIN) {
        if (e->ts < v->head) v->head = e->ts;
        if (e->ts > v->tail) v->tail = e->ts;
    }
    return 0;
}

/* qsort_r comparators over event indices */
static int cmp_vis_ts(const void *a, const void *b, void *arg)
{
    const struct sev *ev = arg, *x = &ev[*(const uint32_t *)a], *y = &ev[*(const uint32_t *)b];
    if (x->vis != y->vis) return x->vis < y->vis ? -1 : 1;
    if (x->ts != y->ts) return x->ts < y->ts ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

static int cmp_vis_ts_desc(const void *a, const void *b, void *arg)
{
    const struct sev *ev = arg, *x = &ev[*(const uint32_t *)a], *y = &ev[*(const uint32_t *)b];
    if (x->vis != y->vis) return x->vis < y->vis ? -1 : 1;
    if (x->ts != y->ts) return x->ts > y->ts ? -1 : 1;
    return x->off > y->off ? -1 : x->off < y->off;
}

/* Scans [from, to) for the open visitors' chains and reports whether any grew; updates head
 * (backwards) or tail (forwards) and `open`. */
/* raw_scan of [from, to) reading only the fields and props the query uses (raw.h). */
static int qs_raw_scan(struct qs *c, int64_t from, int64_t to)
{
    uint32_t mask = 1u << DE_NAME; /* engagement events are dropped by name */
    for (int f = 0; f < DE_FIELD_COUNT; f++)
        if (c->fslot[f] >= 0) mask |= 1u << f;
    return raw_scan_some(c->s, c->site, from, to, mask, c->npkeys > 0, on_event, c);
}

static int extend_window(struct qs *c, int64_t from, int64_t to, bool *grew)
{
    size_t s0 = c->nev;
    *grew = false;
    int rc = qs_raw_scan(c, from, to);
    if (rc) return rc;
    size_t n = c->nev - s0;
    for (size_t i = 0; i < c->nvis; i++)
        c->vis[i].open = false;
    if (n == 0) return TALLY_OK;
    uint32_t *idx = malloc(n * sizeof *idx);
    if (!idx) return TALLY_ENOMEM;
    for (size_t i = 0; i < n; i++)
        idx[i] = (uint32_t)(s0 + i);
    const bool back = c->pass == PASS_BACK;
    qsort_r(idx, n, sizeof *idx, back ? cmp_vis_ts_desc : cmp_vis_ts, c->ev);
    for (size_t i = 0; i < n;) {
        struct svis *v = &c->vis[c->ev[idx[i]].vis];
        size_t j = i;
        bool chained = true;
        for (; j < n && &c->vis[c->ev[idx[j]].vis] == v; j++) {
            int64_t ts = c->ev[idx[j]].ts;
            if (!chained) continue;
            if (back && v->head - ts < QS_GAP_MS)
                v->head = ts, v->open = true;
            else if (!back && ts - v->tail < QS_GAP_MS)
                v->tail = ts, v->open = true;
            else
                chained = false;
        }
        *grew |= v->open;
        i = j;
    }
    free(idx);
    return TALLY_OK;
}

static int scan_all(struct qs *c)
{
    c->pass = PASS_MAIN;
    int rc = qs_raw_scan(c, c->r.from_ms, c->r.to_ms);
    if (rc || c->nev == 0) return rc;
    bool grew = true;
    c->pass = PASS_BACK;
    for (size_t i = 0; i < c->nvis; i++)
        c->vis[i].open = true;
    for (int64_t lo = c->r.from_ms; grew && lo > 0 && !rc; lo -= QS_GAP_MS)
        rc = extend_window(c, lo - QS_GAP_MS, lo, &grew);
    grew = true;
    c->pass = PASS_FWD;
    for (size_t i = 0; i < c->nvis; i++)
        c->vis[i].open = true;
    for (int64_t hi = c->r.to_ms; grew && !rc && hi < INT64_MAX - QS_GAP_MS; hi += QS_GAP_MS)
        rc = extend_window(c, hi, hi + QS_GAP_MS, &grew);
    return rc;
}

/* Moves the events into the order of c->order (one gather: independent loads overlap), so
 * that aggregation, which walks visitor by visitor, reads memory sequentially instead of
 * missing the cache on every event; c->order becomes the identity. */
static int regroup(struct qs *c)
{
    size_t exn = c->nev * c->stride;
    int rc = qs_charge(c, c->nev * sizeof *c->ev + exn * sizeof *c->ex);
    if (rc) return rc;
    struct sev *ev = malloc((c->nev ? c->nev : 1) * sizeof *ev);
    uint32_t *ex = malloc((exn ? exn : 1) * sizeof *ex);
    if (!ev || !ex) {
        free(ev);
        free(ex);
        return TALLY_ENOMEM;
    }
    for (size_t i = 0; i < c->nev; i++) {
        ev[i] = c->ev[c->order[i]];
        if (c->stride)
            memcpy(ex + i * c->stride, c->ex + (size_t)c->order[i] * c->stride,
                   c->stride * sizeof *ex);
        c->order[i] = (uint32_t)i;
    }
    free(c->ev);
    free(c->ex);
    c->mem -= c->capev * sizeof *c->ev + c->capex * sizeof *c->ex;
    c->ev = ev;
    c->ex = ex;
    c->capev = c->nev;
    c->capex = exn;
    return TALLY_OK;
}

/* Groups events by visitor (counting sort on the dense index), then orders each visitor's
 * events by (ts, offset). */
static int group(struct qs *c)
{
    int rc = qs_charge(c, (c->nev + c->nvis + 1) * sizeof(uint32_t));
    if (rc) return rc;
    c->order = malloc((c->nev ? c->nev : 1) * sizeof *c->order);
    c->vstart = calloc(c->nvis + 1, sizeof *c->vstart);
    if (!c->order || !c->vstart) return TALLY_ENOMEM;
    for (size_t i = 0; i < c->nev; i++)
        c->vstart[c->ev[i].vis + 1]++;
    for (size_t v = 0; v < c->nvis; v++)
        c->vstart[v + 1] += c->vstart[v];
    uint32_t *pos = malloc((c->nvis ? c->nvis : 1) * sizeof *pos);
    if (!pos) return TALLY_ENOMEM;
    memcpy(pos, c->vstart, c->nvis * sizeof *pos);
    for (size_t i = 0; i < c->nev; i++)
        c->order[pos[c->ev[i].vis]++] = (uint32_t)i;
    free(pos);
    for (size_t v = 0; v < c->nvis && !rc; v++) {
        uint32_t *o = c->order + c->vstart[v];
        size_t n = c->vstart[v + 1] - c->vstart[v];
        size_t k = 1;
        while (k < n && cmp_vis_ts(&o[k - 1], &o[k], c->ev) <= 0)
            k++;
        if (k >= n) {         /* already in order: the usual case, blocks come in time order */
        } else if (n <= 24) { /* insertion sort: a few, nearly sorted events */
            for (size_t i = 1; i < n; i++) {
                uint32_t x = o[i];
                size_t j = i;
                while (j > 0 && cmp_vis_ts(&o[j - 1], &x, c->ev) > 0)
                    o[j] = o[j - 1], j--;
                o[j] = x;
            }
        } else {
            qsort_r(o, n, sizeof *o, cmp_vis_ts, c->ev);
        }
        rc = qs_tick(c);
    }
    return rc ? rc : regroup(c);
}

/* ---------------------------------------------------------------- aggregate */

static inline const uint32_t *ex_of(const struct qs *c, uint32_t e)
{
    return c->ex + (size_t)e * c->stride;
}

static bool goal_done(struct qs *c, struct cgoal *g, uint32_t e)
{
    const uint32_t *x = ex_of(c, e);
    if (g->page)
        return (c->ev[e].flags & RAW_F_PAGEVIEW) && pred_match(c, &g->pred, x[c->fslot[DE_PATH]]);
    return g->found && x[c->fslot[DE_NAME]] == g->name_id;
}

static bool leaf_match(struct qs *c, struct cnode *n, uint32_t e, uint32_t first, uint32_t last)
{
    if (n->src == SRC_GOAL) {
        for (size_t g = 0; g < c->ngoals; g++) {
            if (!goal_done(c, &c->goals[g], e)) continue;
            if (n->neg && !n->goal_ok[g]) return false;
            if (!n->neg && n->goal_ok[g]) return true;
        }
        return n->neg;
    }
    uint32_t at = n->src == SRC_EVENT ? e : n->src == SRC_VISIT ? first : last;
    uint32_t id = ex_of(c, at)[n->slot];
    if (n->exact) {
        bool in = bsearch(&id, n->ids, n->nids, sizeof id, u32_cmp) != NULL;
        return in != n->neg;
    }
    return pred_match(c, &n->pred, id);
}

static bool eval(struct qs *c, struct cnode *n, uint32_t e, uint32_t first, uint32_t last)
{
    switch (n->op) {
    case QF_AND:
        for (size_t i = 0; i < n->nkids; i++)
            if (!eval(c, &n->kids[i], e, first, last)) return false;
        return true;
    case QF_OR:
        for (size_t i = 0; i < n->nkids; i++)
            if (eval(c, &n->kids[i], e, first, last)) return true;
        return false;
    case QF_NOT: return !eval(c, &n->kids[0], e, first, last);
    default: return leaf_match(c, n, e, first, last);
    }
}

static int64_t tbucket(struct qs *c, size_t d, int64_t ts)
{
    /* every IANA offset is a whole number of minutes: the UTC minute decides the bucket */
    int64_t m = ts >= 0 ? ts / 60000 : -((-ts + 59999) / 60000);
    struct tbc *t = &c->tcache[d * QS_TB_CACHE + (uint64_t)m % QS_TB_CACHE];
    if (t->min != m) {
        char label[64];
        t->start = q_time_bucket(c->q, c->dims[d].g, m * 60000, label, sizeof label);
        t->min = m;
    }
    return t->start;
}

static uint64_t key_hash(const struct qs *c, const uint64_t *k)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL;
    for (size_t d = 0; d < c->ndims; d++)
        h = u64map_hash(h ^ k[d]) + d;
    return h;
}

static int rows_rehash(struct qs *c, size_t nslots)
{
    int rc = qs_charge(c, nslots * sizeof *c->rslots);
    if (rc) return rc;
    uint32_t *s = calloc(nslots, sizeof *s);
    if (!s) return TALLY_ENOMEM;
    for (size_t i = 0; i < c->nrows; i++) {
        size_t j = (size_t)key_hash(c, c->rows[i].key) & (nslots - 1);
        while (s[j])
            j = (j + 1) & (nslots - 1);
        s[j] = (uint32_t)(i + 1);
    }
    free(c->rslots);
    c->rslots = s;
    c->nrslots = nslots;
    return TALLY_OK;
}

/* The row of key k, created when absent. */
static int row_at(struct qs *c, const uint64_t *k, struct srow **out)
{
    int rc;
    if ((c->nrows + 1) * 2 > c->nrslots &&
        (rc = rows_rehash(c, c->nrslots ? c->nrslots * 2 : 1024)))
        return rc;
    size_t mask = c->nrslots - 1, j = (size_t)key_hash(c, k) & mask;
    for (; c->rslots[j]; j = (j + 1) & mask) {
        struct srow *r = &c->rows[c->rslots[j] - 1];
        if (memcmp(r->key, k, c->ndims * sizeof *k) == 0) {
            *out = r;
            return TALLY_OK;
        }
    }
    if (c->nrows >= c->rows_max) return TALLY_ETOOBIG;
    if ((rc = qs_grow(c, (void **)&c->rows, &c->caprows, c->nrows + 1, sizeof *c->rows))) return rc;
    struct srow *r = &c->rows[c->nrows];
    memset(r, 0, sizeof *r);
    memcpy(r->key, k, c->ndims * sizeof *k);
    r->a.visitors_exact = true;
    c->rslots[j] = (uint32_t)++c->nrows;
    *out = r;
    return TALLY_OK;
}

/* What one event or one visit adds to a row. */
struct contrib {
    bool visit; /* visit metrics (else event metrics) */
    uint32_t visitor_seq;
    const struct sev *e;
    int64_t top_ms; /* -1: no time on page */
    bool bounce;
    int64_t duration_ms;
};

static void row_add(struct qs *c, struct srow *r, const struct contrib *k)
{
    struct q_agg *a = &r->a;
    if (k->visit) {
        if (r->last_visit == c->visit_seq) return;
        r->last_visit = c->visit_seq;
        a->visits++;
        a->bounces += k->bounce;
        a->duration_ms += k->duration_ms;
        return;
    }
    if (k->e->flags & RAW_F_PAGEVIEW) a->pageviews++;
    a->events++;
    if (k->e->flags & QS_F_REV) {
        a->revenue_micros += k->e->rev;
        a->revenue_events++;
    }
    if (r->last_visitor != k->visitor_seq) {
        r->last_visitor = k->visitor_seq;
        a->visitors++;
    }
    if (k->top_ms >= 0) {
        a->top_ms += k->top_ms;
        a->top_count++;
    }
}

/* Adds k to every row of event e (time dimensions at ts): one combination of its values, or
 * several when it completes several goals. */
static int rows_add(struct qs *c, uint32_t e, uint32_t first, uint32_t last, int64_t ts,
                    const struct contrib *k)
{
    uint64_t key[QUERY_DIMS_MAX], *gv[QUERY_DIMS_MAX];
    size_t nv[QUERY_DIMS_MAX];
    bool multi = false;
    for (size_t d = 0; d < c->ndims; d++) {
        const struct cdim *cd = &c->dims[d];
        nv[d] = 1;
        switch (cd->src) {
        case SRC_TIME: key[d] = (uint64_t)tbucket(c, d, ts); break;
        case SRC_EVENT: key[d] = ex_of(c, e)[cd->slot]; break;
        case SRC_VISIT: key[d] = ex_of(c, first)[cd->slot]; break;
        case SRC_EXIT: key[d] = ex_of(c, last)[cd->slot]; break;
        default: /* goal: the goals e completes */
            if (c->ngoals == 0) return TALLY_OK;
            gv[d] = c->gvals + d * (c->ngoals + 1);
            nv[d] = 0;
            for (size_t g = 0; g < c->ngoals; g++)
                if (goal_done(c, &c->goals[g], e)) gv[d][nv[d]++] = g;
            if (nv[d] == 0) return TALLY_OK;
            multi = true;
            break;
        }
    }
    struct srow *r;
    int rc;
    if (!multi) {
        if ((rc = row_at(c, key, &r))) return rc;
        row_add(c, r, k);
        return TALLY_OK;
    }
    size_t at[QUERY_DIMS_MAX] = {0};
    for (;;) {
        for (size_t d = 0; d < c->ndims; d++)
            if (c->dims[d].src == SRC_GOAL) key[d] = gv[d][at[d]];
        if ((rc = row_at(c, key, &r))) return rc;
        row_add(c, r, k);
        size_t d = 0;
        for (; d < c->ndims; d++) {
            if (c->dims[d].src != SRC_GOAL) continue;
            if (++at[d] < nv[d]) break;
            at[d] = 0;
        }
        if (d == c->ndims) return TALLY_OK;
    }
}

static bool in_range(const struct qs *c, int64_t ts)
{
    return ts >= c->r.from_ms && ts < c->r.to_ms;
}

/* Revenue of the total in a currency other than the site's (dictionary id cur). */
static void other_rev_add(struct qs *c, uint32_t cur, int64_t micros)
{
    for (size_t i = 0; i < c->n_other_rev; i++)
        if (c->other_rev[i].id == cur) {
            c->other_rev[i].micros += micros;
            return;
        }
    if (c->n_other_rev < QUERY_OTHER_CURRENCIES_MAX) {
        c->other_rev[c->n_other_rev].id = cur;
        c->other_rev[c->n_other_rev++].micros = micros;
    }
}

static int cur_cmp(const void *a, const void *b)
{
    return memcmp(((const struct q_currency *)a)->cur, ((const struct q_currency *)b)->cur, 3);
}

/* One visit: o[0..n) are its events in (ts, offset) order. */
static int do_visit(struct qs *c, const uint32_t *o, size_t n, uint32_t visitor_seq,
                    bool want_total)
{
    const struct sev *f = &c->ev[o[0]], *l = &c->ev[o[n - 1]];
    const bool first_in = in_range(c, f->ts);
    bool any_in = first_in;
    for (size_t i = 0; i < n && !any_in; i++)
        any_in = in_range(c, c->ev[o[i]].ts);
    if (!any_in) return TALLY_OK; /* the visit contributes nothing to the range */
    int rc = qs_grow(c, (void **)&c->inscope, &c->capin, n, sizeof *c->inscope);
    if (rc) return rc;
    bool any = false;
    uint32_t pv = 0, other = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t fl = c->ev[o[i]].flags;
        if (fl & RAW_F_PAGEVIEW)
            pv++;
        else if (!(fl & RAW_F_NONINTERACTIVE))
            other++;
        c->inscope[i] = !c->root || eval(c, c->root, o[i], o[0], o[n - 1]);
        any |= c->inscope[i];
    }
    if (c->err) return c->err;
    if (!any) return TALLY_OK;
    c->visit_seq++;
    struct contrib vk = {.visit = true,
                         .visitor_seq = visitor_seq,
                         .e = f,
                         .bounce = pv == 1 && other == 0,
                         .duration_ms = l->ts - f->ts};
    if (first_in && want_total) row_add(c, &c->total, &vk);
    for (size_t i = 0; i < n; i++) {
        if (!c->inscope[i]) continue;
        const struct sev *e = &c->ev[o[i]];
        if (in_range(c, e->ts)) {
            struct contrib ek = {.visitor_seq = visitor_seq, .e = e, .top_ms = -1};
            if ((e->flags & RAW_F_PAGEVIEW) && i + 1 < n) ek.top_ms = c->ev[o[i + 1]].ts - e->ts;
            if (want_total) {
                row_add(c, &c->total, &ek);
                if (e->flags & QS_F_REV_OTHER) other_rev_add(c, e->cur, e->rev);
            }
            if ((rc = rows_add(c, o[i], o[0], o[n - 1], e->ts, &ek))) return rc;
        }
        if (first_in && (rc = rows_add(c, o[i], o[0], o[n - 1], f->ts, &vk))) return rc;
    }
    return c->err;
}

static int aggregate(struct qs *c, bool want_total)
{
    c->total.a.visitors_exact = true;
    for (size_t v = 0; v < c->nvis; v++) {
        const uint32_t *o = c->order + c->vstart[v];
        size_t n = c->vstart[v + 1] - c->vstart[v];
        for (size_t i = 0; i < n;) {
            size_t j = i + 1;
            while (j < n && c->ev[o[j]].ts - c->ev[o[j - 1]].ts < QS_GAP_MS)
                j++;
            int rc = do_visit(c, o + i, j - i, (uint32_t)v + 1, want_total);
            if (rc) return rc;
            for (size_t k = i; k < j; k++)
                if ((rc = qs_tick(c))) return rc;
            i = j;
        }
    }
    return TALLY_OK;
}

/* ---------------------------------------------------------------- visit iteration (qvisit.h) */

static void qs_free(struct qs *c);

struct qv_iter {
    int slot[QV_FIELDS_MAX];
    size_t nfields;
    struct qv_event *buf;
    size_t cap;
};

/* One visit: o[0..n) its events in (ts, offset) order; delivered when one is in the range. */
static int iter_visit(struct qs *c, struct qv_iter *it, const uint32_t *o, size_t n,
                      uint32_t vseq, qv_visit_fn fn, void *arg)
{
    bool any_in = false;
    for (size_t i = 0; i < n && !any_in; i++)
        any_in = in_range(c, c->ev[o[i]].ts);
    if (!any_in) return TALLY_OK;
    int rc = qs_grow(c, (void **)&it->buf, &it->cap, n, sizeof *it->buf);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        const struct sev *e = &c->ev[o[i]];
        struct qv_event *q = &it->buf[i];
        memset(q, 0, sizeof *q);
        q->ts_ms = e->ts;
        q->offset = e->off;
        q->flags = e->flags & ~QS_F_REV;
        q->in_range = in_range(c, e->ts);
        q->in_scope = !c->root || eval(c, c->root, o[i], o[0], o[n - 1]);
        for (size_t f = 0; f < it->nfields; f++)
            q->val[f] = ex_of(c, o[i])[it->slot[f]];
    }
    if (c->err) return c->err;
    struct qv_visit v = {c->vis[c->ev[o[0]].vis].visitor, vseq, it->buf, n};
    return fn(arg, &v);
}

static int iter_all(struct qs *c, struct qv_iter *it, qv_visit_fn fn, void *arg)
{
    for (size_t v = 0; v < c->nvis; v++) {
        const uint32_t *o = c->order + c->vstart[v];
        size_t n = c->vstart[v + 1] - c->vstart[v];
        for (size_t i = 0; i < n;) {
            size_t j = i + 1;
            while (j < n && c->ev[o[j]].ts - c->ev[o[j - 1]].ts < QS_GAP_MS)
                j++;
            int rc = iter_visit(c, it, o + i, j - i, (uint32_t)v + 1, fn, arg);
            for (size_t k = i; !rc && k < j; k++)
                rc = qs_tick(c);
            if (rc) return rc;
            i = j;
        }
    }
    return TALLY_OK;
}

int qscan_visits(struct store *s, uint32_t site_id, const struct query *q, struct q_range r,
                 const struct q_budget *b, const int *fields, size_t nfields, qv_visit_fn fn,
                 void *arg)
{
    if (nfields > QV_FIELDS_MAX) return TALLY_EINVAL;
    if (site_id == 0 || r.to_ms <= r.from_ms) return TALLY_OK;
    struct qs *c = calloc(1, sizeof *c);
    if (!c) return TALLY_ENOMEM;
    c->s = s;
    c->site = site_id;
    c->q = q;
    c->r = r;
    c->vis_zero = -1;
    c->deadline = b ? b->deadline_ms : 0;
    c->mem_max = b && b->memory_bytes_max ? b->memory_bytes_max : QS_MEMORY_DEFAULT;
    c->rows_max = QS_ROWS_DEFAULT;
    struct qv_iter it = {.nfields = nfields};
    /* only the filters matter: no dimensions */
    struct query qq = *q;
    qq.ndims = 0;
    c->q = &qq;
    int rc = compile(c);
    for (size_t f = 0; !rc && f < nfields; f++) {
        if (fields[f] < 0 || fields[f] >= DE_FIELD_COUNT) rc = TALLY_EINVAL;
        else it.slot[f] = field_slot(c, fields[f]);
    }
    if (!rc) rc = scan_all(c);
    if (!rc) rc = group(c);
    if (!rc) rc = iter_all(c, &it, fn, arg);
    free(it.buf);
    qs_free(c);
    return rc;
}

/* ---------------------------------------------------------------- emit */

/* The shown string of dictionary id (NUL-terminated, owned by c). */
static int id_string(struct qs *c, uint32_t id, const char **out)
{
    if (id == 0) {
        *out = QS_NONE;
        return TALLY_OK;
    }
    uint64_t *v = u64map_get(&c->strs, id);
    if (v) {
        *out = c->strv[*v];
        return TALLY_OK;
    }
    char *s;
    uint32_t len;
    int rc = raw_dict_string(c->s, c->site, id, &s, &len);
    if (rc == TALLY_ENOENT) { /* cannot happen in a consistent store; show it as absent */
        *out = QS_NONE;
        return TALLY_OK;
    }
    if (rc) return rc;
    if ((rc = qs_grow(c, (void **)&c->strv, &c->capstrv, c->nstrv + 1, sizeof *c->strv)) ||
        (rc = qs_charge(c, len + 32))) {
        free(s);
        return rc;
    }
    c->strv[c->nstrv] = s;
    if (!u64map_put(&c->strs, id, c->nstrv)) {
        free(s);
        return TALLY_ENOMEM;
    }
    *out = c->strv[c->nstrv++];
    return TALLY_OK;
}

static int row_cmp(const void *a, const void *b)
{
    const struct q_row *x = a, *y = b;
    if (x->time_ms != y->time_ms) return x->time_ms < y->time_ms ? -1 : 1;
    for (size_t d = 0; d < QUERY_DIMS_MAX && x->dims[d] && y->dims[d]; d++) {
        int r = strcmp(x->dims[d], y->dims[d]);
        if (r) return r;
    }
    return 0;
}

static int emit(struct qs *c, struct q_table *t, bool want_total)
{
    if (want_total) {
        t->total = c->total.a;
        t->total.visitors_exact = true;
        t->have_total = true;
        t->n_other_rev = 0;
        for (size_t i = 0; i < c->n_other_rev; i++) {
            char *name = NULL;
            uint32_t len = 0;
            if (c->other_rev[i].micros == 0) continue;
            int rc = raw_dict_string(c->s, c->site, c->other_rev[i].id, &name, &len);
            if (rc == TALLY_OK && len == 3) {
                struct q_currency *oc = &t->other_rev[t->n_other_rev++];
                memcpy(oc->cur, name, 3);
                oc->cur[3] = 0;
                oc->micros = c->other_rev[i].micros;
            }
            free(name);
            if (rc && rc != TALLY_ENOENT) return rc;
        }
        if (t->n_other_rev > 1) qsort(t->other_rev, t->n_other_rev, sizeof *t->other_rev, cur_cmp);
    }
    size_t base = t->n;
    if (c->nrows == 0) return TALLY_OK;
    if (t->n + c->nrows > t->cap) {
        size_t cap = t->n + c->nrows;
        struct q_row *p = realloc(t->rows, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        t->rows = p;
        t->cap = cap;
    }
    for (size_t i = 0; i < c->nrows; i++) {
        const struct srow *r = &c->rows[i];
        struct q_row *o = &t->rows[t->n];
        memset(o, 0, sizeof *o);
        o->a = r->a;
        o->a.visitors_exact = true;
        t->n++;
        bool have_time = false;
        for (size_t d = 0; d < c->ndims; d++) {
            char label[64];
            const char *s;
            int rc = TALLY_OK;
            switch (c->dims[d].src) {
            case SRC_TIME:
                q_time_bucket(c->q, c->dims[d].g, (int64_t)r->key[d], label, sizeof label);
                s = label;
                if (!have_time) o->time_ms = (int64_t)r->key[d];
                have_time = true;
                break;
            case SRC_GOAL: s = c->goals[r->key[d]].label; break;
            default: rc = id_string(c, (uint32_t)r->key[d], &s); break;
            }
            if (rc) return rc;
            if (!(o->dims[d] = strdup(s))) return TALLY_ENOMEM;
        }
    }
    if (t->n - base > 1) qsort(t->rows + base, t->n - base, sizeof *t->rows, row_cmp);
    return TALLY_OK;
}

/* ---------------------------------------------------------------- entry */

static void qs_free(struct qs *c)
{
    if (!c) return;
    if (c->root) node_free(c->root);
    free(c->root);
    for (size_t g = 0; g < c->ngoals; g++) {
        free(c->goals[g].label);
        free(c->goals[g].pred.bits);
        u64map_free(&c->goals[g].pred.late);
    }
    free(c->goals);
    free(c->gwalk);
    free(c->gvals);
    free(c->tcache);
    free(c->ev);
    free(c->ex);
    u64map_free(&c->vmap);
    free(c->vis);
    free(c->order);
    free(c->vstart);
    free(c->inscope);
    free(c->rows);
    free(c->rslots);
    for (size_t i = 0; i < c->nstrv; i++)
        free(c->strv[i]);
    free(c->strv);
    u64map_free(&c->strs);
    free(c);
}

int qexec_scan(struct store *s, uint32_t site_id, const struct query *q, struct q_range r,
               bool want_total, const struct q_budget *b, struct q_table *t)
{
    struct qs *c = calloc(1, sizeof *c);
    if (!c) return TALLY_ENOMEM;
    c->s = s;
    c->site = site_id;
    c->q = q;
    c->r = r;
    c->vis_zero = -1;
    c->deadline = b ? b->deadline_ms : 0;
    c->mem_max = b && b->memory_bytes_max ? b->memory_bytes_max : QS_MEMORY_DEFAULT;
    c->rows_max = b && b->rows_max ? b->rows_max : QS_ROWS_DEFAULT;
    int rc = TALLY_OK;
    if (site_id != 0 && r.to_ms > r.from_ms) {
        rc = compile(c);
        if (!rc) rc = scan_all(c);
        if (!rc) rc = group(c);
        if (!rc) rc = aggregate(c, want_total);
    }
    if (!rc) rc = emit(c, t, want_total);
    qs_free(c);
    return rc;
}
