/*
 * query: planning, comparisons, derived metrics, ordering, pagination and the response bodies
 * of the Stats API (see query.h). The executors (qrollup.c, qscan.c) only aggregate rows; every
 * metric definition below is applied to both, so the two paths can only differ in the
 * aggregates, which the differential test compares.
 *
 * METRIC DEFINITIONS (API.md §4, Plausible's):
 *   views_per_visit  pageviews / visits, two decimals (0 without visits)
 *   bounce_rate      round(100 * bounces / visits), integer percent
 *   visit_duration   round(duration / visits), integer seconds
 *   percentage       100 * row visitors / visitors of the whole range (same filters), 1 decimal
 *   conversion_rate  100 * converting visitors / visitors of the range without the goal
 *                    filters, 2 decimals; group_conversion_rate the same within the row's group
 *   total_revenue / average_revenue   {currency, value, short, long} over the events carrying
 *                    revenue in the site's currency (average: per such event)
 *   time_on_page     round(summed time to the next event / page views with a next event), s
 * COMPARISON change: percent change rounded to an integer (100 when the previous value is 0 and
 * the current is not, 0 when both are 0); for bounce_rate the difference in points.
 */
#include "query/query.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/timefmt.h"
#include "rollup/cell.h"
#include "store/store.h"
#include "tally/error.h"

/* ---------------------------------------------------------------- civil dates */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

int64_t q_time_bucket(const struct query *q, enum q_time g, int64_t ts_ms, char *label,
                      size_t cap)
{
    const tz_zone *z = q->zone ? q->zone : tz_utc();
    if (g == QT_MINUTE || g == QT_HOUR || g == QT_DAY) {
        enum tz_gran tg = g == QT_MINUTE ? TZ_MINUTE : g == QT_HOUR ? TZ_HOUR : TZ_DAY;
        int64_t start = tz_bucket_start_ms(z, ts_ms, tg);
        if (label) tz_label(z, start, tg, label, cap);
        return start;
    }
    int64_t y;
    unsigned m, d;
    tz_local_date(z, ts_ms, &y, &m, &d);
    if (g == QT_WEEK) {
        int64_t days = days_from_civil(y, m, d);
        int64_t wd = ((days + 3) % 7 + 7) % 7; /* 0 = Monday (1970-01-01 was a Thursday) */
        civil_from_days(days - wd, &y, &m, &d);
    } else {
        d = 1;
    }
    if (label) snprintf(label, cap, "%04lld-%02u-%02u", (long long)y, m, d);
    return tz_day_start_ms(z, y, m, d);
}

/* Start of the bucket after the one starting at start_ms. */
static int64_t next_bucket(const struct query *q, enum q_time g, int64_t start_ms)
{
    const tz_zone *z = q->zone ? q->zone : tz_utc();
    if (g == QT_MINUTE || g == QT_HOUR) {
        int64_t step = g == QT_MINUTE ? 60000 : 3600000;
        int64_t t = start_ms + step;
        while (q_time_bucket(q, g, t, NULL, 0) <= start_ms) t += step;
        return q_time_bucket(q, g, t, NULL, 0);
    }
    int64_t y;
    unsigned m, d;
    tz_local_date(z, start_ms, &y, &m, &d);
    int64_t days = days_from_civil(y, m, d);
    if (g == QT_DAY) {
        days += 1;
    } else if (g == QT_WEEK) {
        days += 7;
    } else {
        if (++m > 12) m = 1, y++;
        return tz_day_start_ms(z, y, m, 1);
    }
    civil_from_days(days, &y, &m, &d);
    return tz_day_start_ms(z, y, m, d);
}

/* ---------------------------------------------------------------- tables */

void q_table_free(struct q_table *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->n; i++)
        for (int k = 0; k < QUERY_DIMS_MAX; k++) free(t->rows[i].dims[k]);
    free(t->rows);
    memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------- planning */

static bool metric_wanted(const struct query *q, enum q_metric m)
{
    for (size_t i = 0; i < q->nmetrics; i++)
        if (q->metrics[i] == m) return true;
    return false;
}

static bool dim_rollup_ok(const struct q_dim *d)
{
    return d->field != Q_DIM_GOAL && d->field != Q_DIM_TIME && d->field != ROLLUP_DIM_PROP &&
           d->field > ROLLUP_DIM_TOTAL && d->field < ROLLUP_DIM_COUNT;
}

/* Every leaf of f is on field dim *field (set from the first leaf when -1). */
static bool filter_one_dim(const struct q_filter *f, int *field)
{
    if (!f) return true;
    if (f->op == QF_AND || f->op == QF_OR || f->op == QF_NOT) {
        for (size_t i = 0; i < f->nkids; i++)
            if (!filter_one_dim(&f->kids[i], field)) return false;
        return true;
    }
    if (!dim_rollup_ok(&f->dim)) return false;
    if (*field == -1) *field = f->dim.field;
    return *field == f->dim.field;
}

static bool filter_has_goal(const struct q_filter *f)
{
    if (!f) return false;
    if (f->op == QF_AND || f->op == QF_OR || f->op == QF_NOT) {
        for (size_t i = 0; i < f->nkids; i++)
            if (filter_has_goal(&f->kids[i])) return true;
        return false;
    }
    return f->dim.field == Q_DIM_GOAL;
}

bool qplan_rollup_can(const struct query *q)
{
    if (metric_wanted(q, QM_TIME_ON_PAGE) || metric_wanted(q, QM_CONVERSION_RATE) ||
        metric_wanted(q, QM_GROUP_CONVERSION_RATE) || metric_wanted(q, QM_AVERAGE_REVENUE))
        return false;
    if (q->ndims > 1) return false;
    int field = -1;
    if (q->ndims == 1 && q->dims[0].field != Q_DIM_TIME) {
        if (!dim_rollup_ok(&q->dims[0])) return false;
        field = q->dims[0].field;
    }
    return filter_one_dim(q->filter, &field);
}

/* ---------------------------------------------------------------- derived metrics */

static double round_to(double v, int decimals)
{
    double p = decimals == 2 ? 100.0 : decimals == 1 ? 10.0 : 1.0;
    return round(v * p) / p;
}

/* A metric's value as a JSON number (or null); revenue metrics as their object. */
static cJSON *metric_json(const struct query *q, enum q_metric m, const struct q_agg *a,
                          const struct q_agg *total, const struct q_agg *base)
{
    switch (m) {
    case QM_VISITORS: return cJSON_CreateNumber((double)a->visitors);
    case QM_VISITS: return cJSON_CreateNumber((double)a->visits);
    case QM_PAGEVIEWS: return cJSON_CreateNumber((double)a->pageviews);
    case QM_EVENTS: return cJSON_CreateNumber((double)a->events);
    case QM_VIEWS_PER_VISIT:
        return cJSON_CreateNumber(a->visits ? round_to((double)a->pageviews / a->visits, 2) : 0);
    case QM_BOUNCE_RATE:
        return cJSON_CreateNumber(a->visits ? round(100.0 * a->bounces / a->visits) : 0);
    case QM_VISIT_DURATION:
        return cJSON_CreateNumber(a->visits ? round(a->duration_ms / 1000.0 / a->visits) : 0);
    case QM_PERCENTAGE:
        return cJSON_CreateNumber(total && total->visitors
                                      ? round_to(100.0 * a->visitors / total->visitors, 1)
                                      : 0);
    case QM_CONVERSION_RATE:
    case QM_GROUP_CONVERSION_RATE:
        return cJSON_CreateNumber(base && base->visitors
                                      ? round_to(100.0 * a->visitors / base->visitors, 2)
                                      : 0);
    case QM_TIME_ON_PAGE:
        if (!a->top_count) return cJSON_CreateNull();
        return cJSON_CreateNumber(round(a->top_ms / 1000.0 / a->top_count));
    case QM_TOTAL_REVENUE:
    case QM_AVERAGE_REVENUE: {
        double v = m == QM_TOTAL_REVENUE
                       ? a->revenue_micros / 1e6
                       : (a->revenue_events ? a->revenue_micros / 1e6 / a->revenue_events : 0);
        v = round_to(v, 2);
        cJSON *o = cJSON_CreateObject();
        char shortv[64], longv[64];
        const char *cur = q->currency[0] ? q->currency : "EUR";
        double av = fabs(v);
        if (av >= 1e6) snprintf(shortv, sizeof shortv, "%s%.1fM", cur, v / 1e6);
        else if (av >= 1e3) snprintf(shortv, sizeof shortv, "%s%.1fK", cur, v / 1e3);
        else snprintf(shortv, sizeof shortv, "%s%.1f", cur, v);
        snprintf(longv, sizeof longv, "%s%.2f", cur, v);
        cJSON_AddStringToObject(o, "currency", cur);
        cJSON_AddNumberToObject(o, "value", v);
        cJSON_AddStringToObject(o, "short", shortv);
        cJSON_AddStringToObject(o, "long", longv);
        return o;
    }
    case QM_COUNT: break;
    }
    return cJSON_CreateNull();
}

/* The metric's value as a number, for ordering and comparisons. */
static double metric_num(const struct query *q, enum q_metric m, const struct q_agg *a,
                         const struct q_agg *total, const struct q_agg *base)
{
    cJSON *j = metric_json(q, m, a, total, base);
    double v = 0;
    if (cJSON_IsNumber(j)) v = j->valuedouble;
    else if (cJSON_IsObject(j)) v = cJSON_GetObjectItem(j, "value")->valuedouble;
    cJSON_Delete(j);
    return v;
}

static cJSON *change_json(enum q_metric m, double cur, double prev)
{
    if (m == QM_BOUNCE_RATE) return cJSON_CreateNumber(cur - prev);
    if (prev == 0) return cJSON_CreateNumber(cur == 0 ? 0 : 100);
    return cJSON_CreateNumber(round((cur - prev) / prev * 100.0));
}

/* ---------------------------------------------------------------- ordering */

struct sort_ctx {
    const struct query *q;
    const struct q_table *t;
    const struct q_agg *total;
};

static const struct sort_ctx *g_sort; /* qsort has no argument; guarded by g_sort_mu */
static pthread_mutex_t g_sort_mu = PTHREAD_MUTEX_INITIALIZER;

static int row_cmp(const void *pa, const void *pb)
{
    const struct q_row *a = pa, *b = pb;
    const struct query *q = g_sort->q;
    for (size_t i = 0; i < q->norder; i++) {
        const struct q_order *o = &q->order[i];
        int c = 0;
        if (o->is_metric) {
            double x = metric_num(q, (enum q_metric)o->index, &a->a, g_sort->total, NULL);
            double y = metric_num(q, (enum q_metric)o->index, &b->a, g_sort->total, NULL);
            c = x < y ? -1 : x > y;
        } else if (q->dims[o->index].field == Q_DIM_TIME) {
            c = a->time_ms < b->time_ms ? -1 : a->time_ms > b->time_ms;
        } else {
            c = strcmp(a->dims[o->index] ? a->dims[o->index] : "",
                       b->dims[o->index] ? b->dims[o->index] : "");
        }
        if (c) return o->desc ? -c : c;
    }
    /* stable, deterministic tie-break: the dimension values, time first */
    for (size_t k = 0; k < q->ndims; k++) {
        int c;
        if (q->dims[k].field == Q_DIM_TIME) c = a->time_ms < b->time_ms ? -1 : a->time_ms > b->time_ms;
        else c = strcmp(a->dims[k] ? a->dims[k] : "", b->dims[k] ? b->dims[k] : "");
        if (c) return c;
    }
    return 0;
}

static void sort_rows(const struct query *q, struct q_table *t)
{
    struct query dq = *q;
    if (dq.norder == 0) {
        /* default: time ascending when a time dimension is present, else the first metric
         * descending */
        for (size_t k = 0; k < q->ndims; k++)
            if (q->dims[k].field == Q_DIM_TIME) {
                dq.order[dq.norder++] = (struct q_order){false, (int)k, false};
                break;
            }
        if (dq.norder == 0 && q->nmetrics)
            dq.order[dq.norder++] = (struct q_order){true, (int)q->metrics[0], true};
    }
    if (t->n < 2) return; /* (qsort must not see a NULL array) */
    struct sort_ctx c = {&dq, t, t->have_total ? &t->total : NULL};
    pthread_mutex_lock(&g_sort_mu);
    g_sort = &c;
    qsort(t->rows, t->n, sizeof *t->rows, row_cmp);
    g_sort = NULL;
    pthread_mutex_unlock(&g_sort_mu);
}

/* ---------------------------------------------------------------- execution */

static int exec_one(struct store *s, uint32_t site_id, const struct query *q, struct q_range r,
                    bool want_total, const struct q_budget *b, enum q_plan plan,
                    enum q_plan *used, struct q_table *t, char *err, size_t errcap)
{
    int rc = TALLY_ENOTSUP;
    if (site_id == 0) { /* no data for the site yet */
        *used = plan == Q_PLAN_SCAN || plan == Q_PLAN_STREAM ? plan : Q_PLAN_ROLLUP;
        t->have_total = want_total;
        t->total.visitors_exact = true;
        return TALLY_OK;
    }
    if (plan == Q_PLAN_ROLLUP || (plan == Q_PLAN_AUTO && qplan_rollup_can(q))) {
        rc = qexec_rollup(s, site_id, q, r, want_total, b, t);
        *used = Q_PLAN_ROLLUP;
        if (rc == TALLY_ENOTSUP && plan == Q_PLAN_ROLLUP) {
            snprintf(err, errcap, "the rollups cannot answer this query (use the scan plan)");
            return rc;
        }
    }
    if (rc == TALLY_ENOTSUP &&
        (plan == Q_PLAN_STREAM || (plan == Q_PLAN_AUTO && qplan_stream_can(q)))) {
        q_table_free(t);
        rc = qexec_stream(s, site_id, q, r, want_total, b, t);
        *used = Q_PLAN_STREAM;
        if (rc == TALLY_ENOTSUP && plan == Q_PLAN_STREAM) {
            snprintf(err, errcap, "the stream scan cannot answer this query (use the scan plan)");
            return rc;
        }
        /* an hour of more rows than the budget holds at once: the holding form may still fit
         * a short range */
        if (rc == TALLY_ETOOBIG && plan == Q_PLAN_AUTO) rc = TALLY_ENOTSUP;
    }
    if (rc == TALLY_ENOTSUP) {
        q_table_free(t);
        rc = qexec_scan(s, site_id, q, r, want_total, b, t);
        *used = Q_PLAN_SCAN;
    }
    if (rc == TALLY_ETIMEDOUT)
        snprintf(err, errcap, "query exceeded its time budget");
    else if (rc == TALLY_ETOOBIG)
        snprintf(err, errcap, "query exceeded its memory or row budget (%zu rows)", b->rows_max);
    else if (rc)
        snprintf(err, errcap, "query failed: %s", tally_strerror(rc));
    return rc;
}

/* A shallow copy of q without goal filters at the top level and without goal dimensions:
 * the "base" for conversion rates. Leaves are shared; free with base_free. */
static struct q_filter *strip_goals(const struct q_filter *f)
{
    if (!f || !filter_has_goal(f)) return (struct q_filter *)f; /* shared, not freed */
    if (f->op != QF_AND) return NULL; /* a goal leaf (or under or/not): no base filter */
    struct q_filter *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->op = QF_AND;
    c->kids = calloc(f->nkids, sizeof *c->kids);
    if (!c->kids) {
        free(c);
        return NULL;
    }
    for (size_t i = 0; i < f->nkids; i++)
        if (!filter_has_goal(&f->kids[i])) c->kids[c->nkids++] = f->kids[i];
    if (c->nkids == 0) {
        free(c->kids);
        free(c);
        return NULL;
    }
    return c;
}

static void base_filter_free(struct q_filter *top, const struct q_filter *orig)
{
    if (!top || top == orig) return;
    free(top->kids); /* the kids' contents are the original leaves */
    free(top);
}

/* The row of the base table t (q's dimensions without the goal dimension skip_dim, in order)
 * that matches r on those dimensions. */
static const struct q_row *find_base_row(const struct query *q, const struct q_table *t,
                                         const struct q_row *r, int skip_dim)
{
    for (size_t i = 0; i < t->n; i++) {
        const struct q_row *x = &t->rows[i];
        bool same = true;
        for (size_t k = 0, j = 0; k < q->ndims && same; k++) {
            if ((int)k == skip_dim) continue;
            if (q->dims[k].field == Q_DIM_TIME) same = x->time_ms == r->time_ms;
            else same = strcmp(x->dims[j] ? x->dims[j] : "", r->dims[k] ? r->dims[k] : "") == 0;
            j++;
        }
        if (same) return x;
    }
    return NULL;
}

/* The row of the comparison table t (the same dimensions) that matches r, its time bucket
 * mapped to cmp_time_ms (the bucket at the same position in the comparison range). */
static const struct q_row *find_cmp_row(const struct query *q, const struct q_table *t,
                                        const struct q_row *r, int64_t cmp_time_ms)
{
    for (size_t i = 0; i < t->n; i++) {
        const struct q_row *x = &t->rows[i];
        bool same = true;
        for (size_t k = 0; k < q->ndims && same; k++) {
            if (q->dims[k].field == Q_DIM_TIME) same = x->time_ms == cmp_time_ms;
            else same = strcmp(x->dims[k] ? x->dims[k] : "", r->dims[k] ? r->dims[k] : "") == 0;
        }
        if (same) return x;
    }
    return NULL;
}

/* The starts of the time buckets of range r (at most QUERY_TIME_BUCKETS_MAX). */
static int64_t *bucket_starts(const struct query *q, enum q_time g, struct q_range r,
                              size_t *n)
{
    size_t cap = 64;
    int64_t *v = malloc(cap * sizeof *v);
    *n = 0;
    if (!v) return NULL;
    for (int64_t t = q_time_bucket(q, g, r.from_ms, NULL, 0);
         t < r.to_ms && *n < QUERY_TIME_BUCKETS_MAX; t = next_bucket(q, g, t)) {
        if (*n == cap) {
            int64_t *p = realloc(v, (cap *= 2) * sizeof *v);
            if (!p) {
                free(v);
                return NULL;
            }
            v = p;
        }
        v[(*n)++] = t;
    }
    return v;
}

/* Position of bucket start t in v (ascending), or -1. */
static long bucket_index(const int64_t *v, size_t n, int64_t t)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < t) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && v[lo] == t ? (long)lo : -1;
}

static void dims_json(const struct query *q, const struct q_row *r, cJSON *arr)
{
    for (size_t k = 0; k < q->ndims; k++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(r->dims[k] ? r->dims[k] : "(none)"));
}

static const char *op_name(enum q_op op)
{
    static const char *const n[] = {"is",          "is_not",  "contains", "contains_not",
                                    "matches",     "matches_not", "and", "or", "not"};
    return n[op];
}

static cJSON *filter_json(const struct q_filter *f)
{
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateString(op_name(f->op)));
    if (f->op == QF_AND || f->op == QF_OR) {
        cJSON *k = cJSON_CreateArray();
        for (size_t i = 0; i < f->nkids; i++) cJSON_AddItemToArray(k, filter_json(&f->kids[i]));
        cJSON_AddItemToArray(a, k);
        return a;
    }
    if (f->op == QF_NOT) {
        cJSON_AddItemToArray(a, filter_json(&f->kids[0]));
        return a;
    }
    char name[QUERY_PROP_BYTES_MAX + 32];
    cJSON_AddItemToArray(a, cJSON_CreateString(q_dim_name(&f->dim, name, sizeof name)));
    cJSON *v = cJSON_CreateArray();
    for (size_t i = 0; i < f->nvalues; i++)
        cJSON_AddItemToArray(v, cJSON_CreateString(f->lens[i] ? f->values[i] : "(none)"));
    cJSON_AddItemToArray(a, v);
    if (f->case_insensitive) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddBoolToObject(m, "case_sensitive", false);
        cJSON_AddItemToArray(a, m);
    }
    return a;
}

static void iso_time(const struct query *q, int64_t ms, char *buf, size_t cap)
{
    const tz_zone *z = q->zone ? q->zone : tz_utc();
    int32_t off = tz_offset_s(z, ms);
    int64_t local_s = ms / 1000 + off;
    int64_t days = local_s >= 0 ? local_s / 86400 : (local_s - 86399) / 86400;
    int64_t sod = local_s - days * 86400, y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    int32_t ao = off < 0 ? -off : off;
    snprintf(buf, cap, "%04lld-%02u-%02uT%02lld:%02lld:%02lld%c%02d:%02d", (long long)y, m, d,
             (long long)(sod / 3600), (long long)(sod / 60 % 60), (long long)(sod % 60),
             off < 0 ? '-' : '+', ao / 3600, ao / 60 % 60);
}

static cJSON *query_echo(const struct query *q)
{
    cJSON *o = cJSON_CreateObject();
    char buf[QUERY_PROP_BYTES_MAX + 64];
    cJSON_AddStringToObject(o, "site_id", q->site);
    cJSON *m = cJSON_AddArrayToObject(o, "metrics");
    for (size_t i = 0; i < q->nmetrics; i++)
        cJSON_AddItemToArray(m, cJSON_CreateString(q_metric_name(q->metrics[i])));
    cJSON *dr = cJSON_AddArrayToObject(o, "date_range");
    iso_time(q, q->range.from_ms, buf, sizeof buf);
    cJSON_AddItemToArray(dr, cJSON_CreateString(buf));
    iso_time(q, q->range.to_ms - 1000, buf, sizeof buf);
    cJSON_AddItemToArray(dr, cJSON_CreateString(buf));
    cJSON *f = cJSON_AddArrayToObject(o, "filters");
    if (q->filter) {
        if (q->filter->op == QF_AND)
            for (size_t i = 0; i < q->filter->nkids; i++)
                cJSON_AddItemToArray(f, filter_json(&q->filter->kids[i]));
        else cJSON_AddItemToArray(f, filter_json(q->filter));
    }
    cJSON *d = cJSON_AddArrayToObject(o, "dimensions");
    for (size_t k = 0; k < q->ndims; k++)
        cJSON_AddItemToArray(d, cJSON_CreateString(q_dim_name(&q->dims[k], buf, sizeof buf)));
    cJSON *ob = cJSON_AddArrayToObject(o, "order_by");
    for (size_t i = 0; i < q->norder; i++) {
        cJSON *p = cJSON_CreateArray();
        const struct q_order *x = &q->order[i];
        cJSON_AddItemToArray(
            p, cJSON_CreateString(x->is_metric
                                      ? q_metric_name((enum q_metric)x->index)
                                      : q_dim_name(&q->dims[x->index], buf, sizeof buf)));
        cJSON_AddItemToArray(p, cJSON_CreateString(x->desc ? "desc" : "asc"));
        cJSON_AddItemToArray(ob, p);
    }
    cJSON *inc = cJSON_AddObjectToObject(o, "include");
    if (q->time_labels) cJSON_AddBoolToObject(inc, "time_labels", true);
    if (q->total_rows) cJSON_AddBoolToObject(inc, "total_rows", true);
    if (q->cmp != Q_CMP_NONE) {
        cJSON *c = cJSON_AddObjectToObject(inc, "comparisons");
        cJSON_AddStringToObject(c, "mode",
                                q->cmp == Q_CMP_PREVIOUS ? "previous_period"
                                : q->cmp == Q_CMP_YEAR   ? "year_over_year"
                                                         : "custom");
        cJSON *cdr = cJSON_AddArrayToObject(c, "date_range");
        iso_time(q, q->cmp_range.from_ms, buf, sizeof buf);
        cJSON_AddItemToArray(cdr, cJSON_CreateString(buf));
        iso_time(q, q->cmp_range.to_ms - 1000, buf, sizeof buf);
        cJSON_AddItemToArray(cdr, cJSON_CreateString(buf));
        if (q->match_day_of_week) cJSON_AddBoolToObject(c, "match_day_of_week", true);
    }
    cJSON *pg = cJSON_AddObjectToObject(o, "pagination");
    cJSON_AddNumberToObject(pg, "limit", (double)q->limit);
    cJSON_AddNumberToObject(pg, "offset", (double)q->offset);
    return o;
}

static int time_dim(const struct query *q)
{
    for (size_t k = 0; k < q->ndims; k++)
        if (q->dims[k].field == Q_DIM_TIME) return (int)k;
    return -1;
}

static const char *v1_prop_key(const struct query *q, char *buf, size_t cap)
{
    if (q->ndims == 0) return "value";
    if (q->dims[0].field == ROLLUP_DIM_PROP) return q->dims[0].prop;
    const char *n = q_dim_name(&q->dims[0], buf, cap);
    const char *c = strrchr(n, ':');
    return c ? c + 1 : n;
}

int query_execute(struct store *s, uint32_t site_id, const struct query *q,
                  const struct q_budget *b, enum q_plan plan, char **json, size_t *len,
                  char *err, size_t errcap)
{
    *json = NULL;
    *len = 0;
    err[0] = 0;
    struct q_table main_t = {0}, cmp_t = {0}, base_t = {0};
    int64_t *main_buckets = NULL, *cmp_buckets = NULL; /* time comparisons: bucket starts */
    size_t n_main_buckets = 0, n_cmp_buckets = 0;
    enum q_plan used = Q_PLAN_ROLLUP, used2 = Q_PLAN_ROLLUP;
    bool want_total = metric_wanted(q, QM_PERCENTAGE) || q->ndims == 0 ||
                      metric_wanted(q, QM_TOTAL_REVENUE) || metric_wanted(q, QM_AVERAGE_REVENUE);
    bool want_base = metric_wanted(q, QM_CONVERSION_RATE) ||
                     metric_wanted(q, QM_GROUP_CONVERSION_RATE);
    int rc = exec_one(s, site_id, q, q->range, want_total, b, plan, &used, &main_t, err, errcap);
    if (!rc && q->cmp != Q_CMP_NONE)
        rc = exec_one(s, site_id, q, q->cmp_range, want_total, b, plan, &used2, &cmp_t, err,
                      errcap);
    struct query base_q;
    struct q_filter *base_f = NULL;
    int goal_dim = -1;
    if (!rc && want_base) {
        base_q = *q;
        base_f = strip_goals(q->filter);
        base_q.filter = base_f;
        base_q.ndims = 0;
        for (size_t k = 0; k < q->ndims; k++) {
            if (q->dims[k].field == Q_DIM_GOAL) {
                goal_dim = (int)k;
                continue;
            }
            base_q.dims[base_q.ndims++] = q->dims[k];
        }
        base_q.norder = 0;
        base_q.cmp = Q_CMP_NONE;
        rc = exec_one(s, site_id, &base_q, q->range, true, b, plan, &used2, &base_t, err,
                      errcap);
    }
    if (rc) goto out;

    sort_rows(q, &main_t);
    const struct q_agg *total = main_t.have_total ? &main_t.total : NULL;
    bool estimated = main_t.estimated || cmp_t.estimated;
    for (size_t i = 0; i < main_t.n && !estimated; i++)
        if (!main_t.rows[i].a.visitors_exact) estimated = true;
    if (total && !total->visitors_exact) estimated = true;

    cJSON *root = NULL;
    int td = time_dim(q);
    size_t from = q->offset < main_t.n ? q->offset : main_t.n;
    size_t to = main_t.n - from > q->limit ? from + q->limit : main_t.n;

    if (q->api == Q_API_V1_REALTIME) {
        char buf[32];
        uint64_t v = main_t.n ? main_t.rows[0].a.visitors : (total ? total->visitors : 0);
        if (q->ndims == 0 && main_t.n == 0 && main_t.have_total) v = main_t.total.visitors;
        int n = snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
        *json = strdup(buf);
        *len = (size_t)n;
        if (!*json) rc = TALLY_ENOMEM;
        goto out;
    }
    if (q->api == Q_API_V1_AGGREGATE) {
        root = cJSON_CreateObject();
        cJSON *res = cJSON_AddObjectToObject(root, "results");
        const struct q_agg *a = main_t.n ? &main_t.rows[0].a : &main_t.total;
        const struct q_agg *pa = cmp_t.n ? &cmp_t.rows[0].a : &cmp_t.total;
        for (size_t i = 0; i < q->nmetrics; i++) {
            cJSON *mo = cJSON_AddObjectToObject(res, q_metric_name(q->metrics[i]));
            cJSON_AddItemToObject(mo, "value", metric_json(q, q->metrics[i], a, total, NULL));
            if (q->cmp != Q_CMP_NONE) {
                double cur = metric_num(q, q->metrics[i], a, total, NULL);
                double prev = metric_num(q, q->metrics[i], pa, NULL, NULL);
                cJSON_AddItemToObject(mo, "change", change_json(q->metrics[i], cur, prev));
            }
        }
    } else if (q->api == Q_API_V1_TIMESERIES || q->api == Q_API_V1_BREAKDOWN) {
        root = cJSON_CreateObject();
        cJSON *res = cJSON_AddArrayToObject(root, "results");
        char kbuf[QUERY_PROP_BYTES_MAX + 32];
        if (q->api == Q_API_V1_TIMESERIES && td >= 0) {
            /* every bucket of the range, zeros where nothing happened */
            size_t j = 0, guard = 0;
            for (int64_t t = q_time_bucket(q, q->dims[td].time, q->range.from_ms, NULL, 0);
                 t < q->range.to_ms && guard < QUERY_TIME_BUCKETS_MAX;
                 t = next_bucket(q, q->dims[td].time, t), guard++) {
                char label[TZ_LABEL_BYTES];
                q_time_bucket(q, q->dims[td].time, t, label, sizeof label);
                struct q_agg zero = {.visitors_exact = true};
                const struct q_agg *a = &zero;
                while (j < main_t.n && main_t.rows[j].time_ms < t) j++;
                if (j < main_t.n && main_t.rows[j].time_ms == t) a = &main_t.rows[j].a;
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "date", label);
                for (size_t i = 0; i < q->nmetrics; i++)
                    cJSON_AddItemToObject(o, q_metric_name(q->metrics[i]),
                                          metric_json(q, q->metrics[i], a, total, NULL));
                cJSON_AddItemToArray(res, o);
            }
        } else {
            const char *key = v1_prop_key(q, kbuf, sizeof kbuf);
            for (size_t i = from; i < to; i++) {
                const struct q_row *r = &main_t.rows[i];
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, key, r->dims[0] ? r->dims[0] : "(none)");
                for (size_t k = 0; k < q->nmetrics; k++)
                    cJSON_AddItemToObject(o, q_metric_name(q->metrics[k]),
                                          metric_json(q, q->metrics[k], &r->a, total, NULL));
                cJSON_AddItemToArray(res, o);
            }
        }
    } else {
        root = cJSON_CreateObject();
        cJSON *res = cJSON_AddArrayToObject(root, "results");
        const struct q_agg *base_total = base_t.n && base_q.ndims == 0 ? &base_t.rows[0].a
                                                                       : &base_t.total;
        struct q_table single = {0};
        struct q_row one = {0};
        if (td >= 0 && q->cmp != Q_CMP_NONE) {
            main_buckets = bucket_starts(q, q->dims[td].time, q->range, &n_main_buckets);
            cmp_buckets = bucket_starts(q, q->dims[td].time, q->cmp_range, &n_cmp_buckets);
            if (!main_buckets || !cmp_buckets) {
                cJSON_Delete(root);
                root = NULL;
                rc = TALLY_ENOMEM;
                goto out;
            }
        }
        const struct q_table *src = &main_t;
        if (q->ndims == 0) { /* an aggregate: one row, the total */
            one.a = main_t.n ? main_t.rows[0].a : main_t.total;
            single.rows = &one;
            single.n = 1;
            src = &single;
            from = 0;
            to = 1;
        }
        for (size_t i = from; i < to; i++) {
            const struct q_row *r = &src->rows[i];
            cJSON *o = cJSON_CreateObject();
            dims_json(q, r, cJSON_AddArrayToObject(o, "dimensions"));
            cJSON *m = cJSON_AddArrayToObject(o, "metrics");
            const struct q_agg *base = NULL;
            for (size_t k = 0; k < q->nmetrics; k++) {
                if (q->metrics[k] == QM_CONVERSION_RATE) base = base_total;
                else if (q->metrics[k] == QM_GROUP_CONVERSION_RATE) {
                    const struct q_row *br = base_q.ndims ? find_base_row(q, &base_t, r, goal_dim)
                                                          : NULL;
                    base = br ? &br->a : base_total;
                }
                cJSON_AddItemToArray(m, metric_json(q, q->metrics[k], &r->a, total, base));
            }
            if (q->cmp != Q_CMP_NONE) {
                const struct q_row *pr = NULL;
                struct q_agg prev_total = cmp_t.n ? cmp_t.rows[0].a : cmp_t.total;
                int64_t cmp_time = 0;
                bool have_cmp_time = td < 0;
                if (td >= 0) {
                    long k = bucket_index(main_buckets, n_main_buckets, r->time_ms);
                    if (k >= 0 && (size_t)k < n_cmp_buckets) {
                        cmp_time = cmp_buckets[k];
                        have_cmp_time = true;
                    }
                }
                if (q->ndims > 0 && have_cmp_time) pr = find_cmp_row(q, &cmp_t, r, cmp_time);
                const struct q_agg *pa = q->ndims == 0 ? &prev_total : pr ? &pr->a : NULL;
                struct q_agg zero = {.visitors_exact = true};
                if (!pa) pa = &zero;
                cJSON *c = cJSON_AddObjectToObject(o, "comparison");
                cJSON *cd = cJSON_AddArrayToObject(c, "dimensions");
                for (size_t k = 0; k < q->ndims; k++) {
                    if ((int)k == td) {
                        char label[TZ_LABEL_BYTES] = "";
                        if (have_cmp_time)
                            q_time_bucket(q, q->dims[td].time, cmp_time, label, sizeof label);
                        cJSON_AddItemToArray(cd, have_cmp_time ? cJSON_CreateString(label)
                                                               : cJSON_CreateNull());
                    } else {
                        cJSON_AddItemToArray(
                            cd, cJSON_CreateString(r->dims[k] ? r->dims[k] : "(none)"));
                    }
                }
                cJSON *cm = cJSON_AddArrayToObject(c, "metrics");
                cJSON *ch = cJSON_AddArrayToObject(c, "change");
                const struct q_agg *ptot = cmp_t.have_total ? &cmp_t.total : NULL;
                for (size_t k = 0; k < q->nmetrics; k++) {
                    cJSON_AddItemToArray(cm, metric_json(q, q->metrics[k], pa, ptot, NULL));
                    double cur = metric_num(q, q->metrics[k], &r->a, total, NULL);
                    double prev = metric_num(q, q->metrics[k], pa, ptot, NULL);
                    cJSON_AddItemToArray(ch, change_json(q->metrics[k], cur, prev));
                }
            }
            cJSON_AddItemToArray(res, o);
        }
        cJSON *meta = cJSON_AddObjectToObject(root, "meta");
        /* Unique visitors: exact while every set involved is exact (up to CELL_UNIQ_EXACT_MAX
         * distinct visitors per rollup cell; the scan is always exact); beyond, HyperLogLog
         * (standard error 0.81 %) or a sampled set (about 0.8 %): the bound given is three
         * standard errors. */
        cJSON_AddBoolToObject(meta, "visitors_exact", !estimated);
        cJSON_AddNumberToObject(meta, "visitors_exact_up_to", (double)CELL_UNIQ_EXACT_MAX);
        if (estimated) {
            cJSON_AddNumberToObject(meta, "visitors_standard_error_percent", 0.81);
            cJSON_AddNumberToObject(meta, "visitors_error_bound_percent", 2.43);
        }
        cJSON_AddStringToObject(meta, "plan",
                                used == Q_PLAN_SCAN     ? "scan"
                                : used == Q_PLAN_STREAM ? "stream"
                                                        : "rollup");
        if ((metric_wanted(q, QM_TOTAL_REVENUE) || metric_wanted(q, QM_AVERAGE_REVENUE)) &&
            main_t.have_total && main_t.n_other_rev) {
            /* revenue in other currencies is reported, never converted (API.md §4) */
            cJSON *oc = cJSON_AddArrayToObject(meta, "revenue_other_currencies");
            for (size_t i = 0; i < main_t.n_other_rev; i++) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "currency", main_t.other_rev[i].cur);
                cJSON_AddNumberToObject(o, "value",
                                        round_to(main_t.other_rev[i].micros / 1e6, 2));
                cJSON_AddItemToArray(oc, o);
            }
        }
        if (q->time_labels && td >= 0) {
            cJSON *tl = cJSON_AddArrayToObject(meta, "time_labels");
            size_t guard = 0;
            for (int64_t t = q_time_bucket(q, q->dims[td].time, q->range.from_ms, NULL, 0);
                 t < q->range.to_ms && guard < QUERY_TIME_BUCKETS_MAX;
                 t = next_bucket(q, q->dims[td].time, t), guard++) {
                char label[TZ_LABEL_BYTES];
                q_time_bucket(q, q->dims[td].time, t, label, sizeof label);
                cJSON_AddItemToArray(tl, cJSON_CreateString(label));
            }
        }
        if (q->total_rows) cJSON_AddNumberToObject(meta, "total_rows", (double)main_t.n);
        cJSON_AddItemToObject(root, "query", query_echo(q));
    }
    if (root) {
        *json = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        if (!*json) rc = TALLY_ENOMEM;
        else *len = strlen(*json);
    }
out:
    free(main_buckets);
    free(cmp_buckets);
    if (want_base) base_filter_free(base_f, q->filter);
    q_table_free(&main_t);
    q_table_free(&cmp_t);
    q_table_free(&base_t);
    if (rc && !err[0]) snprintf(err, errcap, "query failed: %s", tally_strerror(rc));
    return rc;
}
