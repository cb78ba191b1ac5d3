/*
 * qrollup: the rollup executor (query.h). Answers from the rollup cells (rollup.h) what they
 * hold exactly, and says TALLY_ENOTSUP for everything else so the planner scans instead:
 *  - shapes: an aggregate, a time series, or a breakdown by one event or visit dimension
 *    (not props, not goals); filters only on one dimension (the breakdown's, when there is
 *    one), any logical combination of them (a cell has one value, the tree is evaluated on it);
 *  - ranges: aligned to the cells used: local days (day cells; weeks and months as unions of
 *    days), local hours (hour cells), or minutes within the last 5 hours (minute cells are
 *    kept 6 h). A range that ends now counts up to the end of the current bucket (nothing is
 *    stored beyond now);
 *  - a filter on an EVENT dimension that selects several values, with visit metrics (visits,
 *    bounce rate, visit duration, views per visit): a visit holding two selected values sits
 *    in both cells, so sums would count it twice -> TALLY_ENOTSUP (visitors are unions of the
 *    cells' sets, exact; pageviews and events add up).
 * Visitors over several buckets or values are unions, never sums (cell.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/timefmt.h"
#include "query/query.h"
#include "rollup/rollup.h"
#include "tally/error.h"

#define MINUTE_CELLS_RECENT_MS (5 * 3600 * 1000LL) /* minute cells answer this far back */
#define RANGE_ENDS_NOW_SLACK_MS 2000               /* "ends now": clamped to now by the parser */

struct pred_ctx {
    const struct q_filter *f;
};

static bool tree_match(const struct q_filter *f, const char *v, size_t len)
{
    switch (f->op) {
    case QF_AND:
        for (size_t i = 0; i < f->nkids; i++)
            if (!tree_match(&f->kids[i], v, len)) return false;
        return true;
    case QF_OR:
        for (size_t i = 0; i < f->nkids; i++)
            if (tree_match(&f->kids[i], v, len)) return true;
        return false;
    case QF_NOT: return !tree_match(&f->kids[0], v, len);
    default: return q_leaf_match(f, v, len);
    }
}

static bool pred(void *arg, const char *value, size_t vlen)
{
    const struct pred_ctx *c = arg;
    return tree_match(c->f, value, vlen);
}

static int filter_field(const struct q_filter *f)
{
    if (!f) return -1;
    if (f->op == QF_AND || f->op == QF_OR || f->op == QF_NOT)
        return f->nkids ? filter_field(&f->kids[0]) : -1;
    return f->dim.field;
}

static void to_agg(const struct query *q, const struct rollup_metrics *m, struct q_agg *a)
{
    memset(a, 0, sizeof *a);
    a->pageviews = m->pageviews;
    a->events = m->events;
    a->visits = m->visits;
    a->bounces = m->bounces;
    a->duration_ms = m->duration_ms;
    a->visitors = m->visitors;
    a->visitors_exact = m->visitors_exact;
    for (uint32_t i = 0; i < m->nrev && i < ROLLUP_CURRENCIES_MAX; i++)
        if (memcmp(m->rev[i].cur, q->currency, 3) == 0) a->revenue_micros = m->rev[i].micros;
}

static bool agg_empty(const struct q_agg *a)
{
    return !a->pageviews && !a->events && !a->visits && !a->visitors && !a->revenue_micros;
}

static bool wants_visit_metrics(const struct query *q)
{
    for (size_t i = 0; i < q->nmetrics; i++)
        if (q->metrics[i] == QM_VISITS || q->metrics[i] == QM_BOUNCE_RATE ||
            q->metrics[i] == QM_VISIT_DURATION || q->metrics[i] == QM_VIEWS_PER_VISIT)
            return true;
    return false;
}

#define SPLIT_RECENT_MS (48 * 3600 * 1000LL) /* a last day starting after now - this: split */

/* Whether [r) can be read from cells of g; *to_out is the end to read up to. */
static bool aligned(const struct query *q, struct q_range r, enum tz_gran g, int64_t now_ms,
                    int64_t *to_out)
{
    if (tz_bucket_start_ms(q->zone, r.from_ms, g) != r.from_ms) return false;
    if (g == TZ_MINUTE && r.from_ms < now_ms - MINUTE_CELLS_RECENT_MS) return false;
    *to_out = r.to_ms;
    if (tz_bucket_start_ms(q->zone, r.to_ms, g) == r.to_ms) return true;
    if (r.to_ms < now_ms - RANGE_ENDS_NOW_SLACK_MS) return false;
    /* ends now: up to the end of the current bucket (bucket keys are its first instant) */
    *to_out = tz_bucket_start_ms(q->zone, r.to_ms - 1, g) + 1;
    return true;
}

static int add_row(struct q_table *t, const struct q_row *r, const struct q_budget *b)
{
    if (b && b->rows_max && t->n >= b->rows_max) return TALLY_ETOOBIG;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        struct q_row *p = realloc(t->rows, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        t->rows = p;
        t->cap = cap;
    }
    t->rows[t->n++] = *r;
    return TALLY_OK;
}

struct series_ctx {
    const struct query *q;
    struct q_table *t;
    const struct q_budget *b;
    enum q_time tg;
    int rc;
};

static int series_fn(void *arg, int64_t bucket_ms, const struct rollup_metrics *m)
{
    struct series_ctx *c = arg;
    struct q_row r = {0};
    to_agg(c->q, m, &r.a);
    if (agg_empty(&r.a)) return 0;
    char label[TZ_LABEL_BYTES];
    r.time_ms = q_time_bucket(c->q, c->tg, bucket_ms, label, sizeof label);
    if (!(r.dims[0] = strdup(label))) return TALLY_ENOMEM;
    int rc = add_row(c->t, &r, c->b);
    if (rc) free(r.dims[0]);
    return rc;
}

struct bd_ctx {
    const struct query *q;
    struct q_table *t;
    const struct q_budget *b;
    const struct q_filter *f;
    bool estimated;
};

static int breakdown_fn(void *arg, const char *value, size_t vlen,
                        const struct rollup_metrics *m)
{
    struct bd_ctx *c = arg;
    if (c->f && !tree_match(c->f, value, vlen)) return 0;
    struct q_row r = {0};
    to_agg(c->q, m, &r.a);
    if (agg_empty(&r.a) && !r.a.bounces) return 0;
    r.dims[0] = vlen ? strndup(value, vlen) : strdup("(none)");
    if (!r.dims[0]) return TALLY_ENOMEM;
    int rc = add_row(c->t, &r, c->b);
    if (rc) free(r.dims[0]);
    return rc;
}

static bool past_deadline(const struct q_budget *b)
{
    return b && b->deadline_ms && timefmt_mono_ms() > b->deadline_ms;
}

int qexec_rollup(struct store *s, uint32_t site_id, const struct query *q, struct q_range r,
                 bool want_total, const struct q_budget *b, struct q_table *t)
{
    if (!qplan_rollup_can(q)) return TALLY_ENOTSUP;
    /* the parser's now: the range was resolved and clamped against it */
    int64_t now_ms = q->now_ms ? q->now_ms : timefmt_now_ms();
    const struct q_dim *d = q->ndims ? &q->dims[0] : NULL;
    bool is_time = d && d->field == Q_DIM_TIME;
    int fdim = filter_field(q->filter);
    int rdim = fdim >= 0 ? fdim : ROLLUP_DIM_TOTAL;
    struct pred_ctx pc = {q->filter};
    rollup_value_pred p = q->filter ? pred : NULL;

    /* the cells to read */
    enum tz_gran g;
    int64_t to_ms = r.to_ms;
    if (is_time && d->time == QT_MINUTE) {
        g = TZ_MINUTE;
        if (!aligned(q, r, g, now_ms, &to_ms)) return TALLY_ENOTSUP;
    } else if (is_time && d->time == QT_HOUR) {
        g = TZ_HOUR;
        if (!aligned(q, r, g, now_ms, &to_ms)) return TALLY_ENOTSUP;
    } else if (is_time) {
        g = TZ_DAY;
        if (!aligned(q, r, g, now_ms, &to_ms)) return TALLY_ENOTSUP;
    } else if (aligned(q, r, TZ_DAY, now_ms, &to_ms)) {
        g = TZ_DAY;
    } else if (aligned(q, r, TZ_HOUR, now_ms, &to_ms)) {
        g = TZ_HOUR;
    } else if (aligned(q, r, TZ_MINUTE, now_ms, &to_ms)) {
        g = TZ_MINUTE;
    } else {
        return TALLY_ENOTSUP;
    }
    bool event_filter = fdim >= 0 && !rollup_dim_is_visit(fdim);
    bool visit_metrics = wants_visit_metrics(q);
    /* visits holding two selected values of an event dimension would be counted twice: such
     * a read stops at the second value (TALLY_ENOTSUP: the planner scans instead) */
    bool one_value = event_filter && visit_metrics;
    int rc = TALLY_OK;

    if (want_total || q->ndims == 0) {
        struct rollup_metrics m;
        rc = rollup_read_matching(s, site_id, g, rdim, p, &pc, r.from_ms, to_ms, one_value, &m);
        if (rc) return rc;
        to_agg(q, &m, &t->total);
        t->have_total = true;
        t->n_other_rev = 0;
        for (uint32_t i = 0; i < m.nrev && i < ROLLUP_CURRENCIES_MAX; i++)
            if (memcmp(m.rev[i].cur, q->currency, 3) != 0 &&
                t->n_other_rev < QUERY_OTHER_CURRENCIES_MAX) {
                struct q_currency *oc = &t->other_rev[t->n_other_rev++];
                memcpy(oc->cur, m.rev[i].cur, 3);
                oc->cur[3] = 0;
                oc->micros = m.rev[i].micros;
            }
        if (!t->total.visitors_exact) t->estimated = true;
    }
    if (past_deadline(b)) return TALLY_ETIMEDOUT;
    if (!d) return TALLY_OK;

    if (is_time && (d->time == QT_WEEK || d->time == QT_MONTH)) {
        /* unions of day cells per week / month, clipped to the range */
        int64_t bs = q_time_bucket(q, d->time, r.from_ms, NULL, 0);
        for (size_t guard = 0; bs < to_ms && guard < QUERY_TIME_BUCKETS_MAX; guard++) {
            char label[TZ_LABEL_BYTES];
            q_time_bucket(q, d->time, bs, label, sizeof label);
            /* the next bucket: the first day start at or after bs + 7 days / next month */
            int64_t be = bs + 24 * 3600 * 1000LL;
            while (q_time_bucket(q, d->time, be, NULL, 0) == bs) be += 24 * 3600 * 1000LL;
            be = q_time_bucket(q, d->time, be, NULL, 0);
            int64_t f0 = bs < r.from_ms ? r.from_ms : bs, f1 = be < to_ms ? be : to_ms;
            struct rollup_metrics m;
            rc = rollup_read_matching(s, site_id, TZ_DAY, rdim, p, &pc, f0, f1, one_value, &m);
            if (rc) return rc;
            struct q_row row = {0};
            to_agg(q, &m, &row.a);
            if (!agg_empty(&row.a)) {
                row.time_ms = bs;
                if (!(row.dims[0] = strdup(label))) return TALLY_ENOMEM;
                if ((rc = add_row(t, &row, b))) {
                    free(row.dims[0]);
                    return rc;
                }
            }
            if (past_deadline(b)) return TALLY_ETIMEDOUT;
            bs = be;
        }
        return TALLY_OK;
    }
    if (is_time) {
        struct series_ctx c = {q, t, b, d->time, 0};
        rc = rollup_read_series_matching(s, site_id, g, rdim, p, &pc, r.from_ms, to_ms, one_value,
                                         series_fn, &c);
        if (rc) return rc;
        for (size_t i = 0; i < t->n; i++)
            if (!t->rows[i].a.visitors_exact) t->estimated = true;
        return past_deadline(b) ? TALLY_ETIMEDOUT : TALLY_OK;
    }
    /* a breakdown by d (a filter, if any, is on d too) */
    struct bd_ctx c = {q, t, b, q->filter, false};
    /* over days: when the range ends today (or yesterday, which still changes for a while
     * after midnight), its last day is read apart, so that while that day changes the days
     * before it come from the query cache (rollup.h); older ranges do not change, and their
     * whole answer is kept, so keeping their state too would be work for nothing */
    int64_t split_ms = g == TZ_DAY ? tz_bucket_start_ms(q->zone, to_ms - 1, TZ_DAY) : to_ms;
    if (split_ms < now_ms - SPLIT_RECENT_MS) split_ms = to_ms;
    rc = rollup_read_breakdown_split(s, site_id, g, d->field, r.from_ms, split_ms, to_ms,
                                     b && b->rows_max ? b->rows_max : 0, breakdown_fn, &c);
    if (rc) return rc;
    for (size_t i = 0; i < t->n; i++)
        if (!t->rows[i].a.visitors_exact) t->estimated = true;
    return past_deadline(b) ? TALLY_ETIMEDOUT : TALLY_OK;
}
