/*
 * Fuzz target: the Stats API query parser (query_parse_v2, query_parse_v1).
 *
 * Input: a v2 JSON document, parsed at a fixed now (2024-03-15T12:00:00Z) for the site
 * "fuzz.example" (America/New_York, two goals). When the input starts with "?A", "?T", "?B" or
 * "?R" the rest is a v1 query string (aggregate, timeseries, breakdown, realtime), split on '&'
 * and the first '=' (no percent-decoding: the HTTP layer does that).
 *
 * Checks beyond "no crash, no sanitizer report": a success gives a query within every QUERY_*
 * limit, with ranges ordered and ending by now, a resolved time dimension and order entries
 * that point at requested metrics and dimensions; every leaf can be matched against a few
 * strings; a failure gives a non-empty message and no query.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "query/query.h"
#include "rollup/tz.h"
#include "tally/error.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

#define FUZZ_NOW_MS 1710504000000LL /* 2024-03-15T12:00:00Z */
#define FUZZ_V1_PARAMS_MAX 32

static char goal_a[] = "event:Signup", goal_b[] = "page:/blog/**";
static char *goals[] = {goal_a, goal_b};

static bool site_cb(void *arg, const char *site, struct query *q)
{
    (void)arg;
    if (strcmp(site, "fuzz.example") != 0) return false;
    const tz_zone *z = NULL;
    if (tz_get("America/New_York", &z) != 0) abort();
    q->zone = z;
    q->ngoals = 2;
    q->goals = goals;
    return true;
}

static void check_filter(const struct q_filter *f, int depth, size_t *nodes)
{
    static const char *const probes[] = {
        "",        "/",      "/blog/post", "US",
        "Firefox", "(none)", "\xff\xfe",   "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!"};
    CHECK(depth <= QUERY_FILTER_DEPTH_MAX);
    (*nodes)++;
    if (f->op >= QF_AND) {
        CHECK(f->nkids >= 1 && (f->op != QF_NOT || f->nkids == 1));
        CHECK(f->nvalues == 0);
        for (size_t i = 0; i < f->nkids; i++)
            check_filter(&f->kids[i], depth + 1, nodes);
        return;
    }
    CHECK(f->nkids == 0 && f->nvalues >= 1 && f->nvalues <= QUERY_FILTER_VALUES_MAX);
    CHECK(f->dim.field != Q_DIM_TIME);
    for (size_t i = 0; i < f->nvalues; i++) {
        CHECK(f->values[i] && strlen(f->values[i]) == f->lens[i]);
        if (f->op == QF_MATCHES || f->op == QF_MATCHES_NOT) CHECK(f->re && f->re[i]);
    }
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
        (void)q_leaf_match(f, probes[i], strlen(probes[i]));
}

static void check_query(const struct query *q)
{
    char name[QUERY_PROP_BYTES_MAX + 32];
    CHECK(q->nmetrics >= 1 && q->nmetrics <= QUERY_METRICS_MAX);
    for (size_t i = 0; i < q->nmetrics; i++)
        CHECK((unsigned)q->metrics[i] < QM_COUNT);
    CHECK(q->ndims <= QUERY_DIMS_MAX);
    for (size_t i = 0; i < q->ndims; i++) {
        const struct q_dim *d = &q->dims[i];
        if (d->field == Q_DIM_TIME) CHECK(d->time != QT_NONE && d->time <= QT_MONTH);
        CHECK(strlen(q_dim_name(d, name, sizeof name)) > 0);
        (void)q_dim_is_event(d);
    }
    /* Ends are clamped to now; a range wholly in the future is empty, [from, from). */
    CHECK(q->range.from_ms >= 0 && q->range.from_ms <= q->range.to_ms);
    CHECK(q->range.to_ms <= FUZZ_NOW_MS || q->range.to_ms == q->range.from_ms);
    if (q->cmp != Q_CMP_NONE) {
        CHECK(q->cmp_range.from_ms >= 0 && q->cmp_range.from_ms <= q->cmp_range.to_ms);
        CHECK(q->cmp_range.to_ms <= FUZZ_NOW_MS || q->cmp_range.to_ms == q->cmp_range.from_ms);
    }
    CHECK(q->norder <= QUERY_ORDER_MAX);
    for (size_t i = 0; i < q->norder; i++) {
        const struct q_order *o = &q->order[i];
        if (!o->is_metric) {
            CHECK(o->index >= 0 && (size_t)o->index < q->ndims);
            continue;
        }
        bool found = false;
        for (size_t k = 0; k < q->nmetrics; k++)
            found |= (int)q->metrics[k] == o->index;
        CHECK(found);
    }
    CHECK(q->limit >= 1 && q->limit <= QUERY_LIMIT_MAX && q->offset <= QUERY_OFFSET_MAX);
    CHECK(q->zone != NULL && q->ngoals == 2 && strcmp(q->goals[1], "page:/blog/**") == 0);
    if (q->filter) {
        size_t nodes = 0;
        CHECK(q->filter->op == QF_AND);
        check_filter(q->filter, 0, &nodes);
        CHECK(nodes <= QUERY_FILTER_NODES_MAX + 1); /* + the implicit top-level AND */
    }
}

static int parse_v1(const uint8_t *data, size_t size, struct query **q, char *err, size_t errcap)
{
    enum q_api api;
    switch (data[1]) {
    case 'A': api = Q_API_V1_AGGREGATE; break;
    case 'T': api = Q_API_V1_TIMESERIES; break;
    case 'B': api = Q_API_V1_BREAKDOWN; break;
    default: api = Q_API_V1_REALTIME; break;
    }
    char *buf = malloc(size - 1);
    if (!buf) return TALLY_ENOMEM;
    memcpy(buf, data + 2, size - 2);
    buf[size - 2] = 0;
    const char *names[FUZZ_V1_PARAMS_MAX], *values[FUZZ_V1_PARAMS_MAX];
    size_t n = 0;
    for (char *p = buf; p && n < FUZZ_V1_PARAMS_MAX;) {
        char *amp = strchr(p, '&');
        if (amp) *amp = 0;
        char *eq = strchr(p, '=');
        if (eq) *eq = 0;
        names[n] = p;
        values[n] = eq ? eq + 1 : "";
        n++;
        p = amp ? amp + 1 : NULL;
    }
    int rc = query_parse_v1(api, names, values, n, FUZZ_NOW_MS, site_cb, NULL, q, err, errcap);
    free(buf);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct query *q = NULL;
    int rc;
    err[0] = 0;
    if (size >= 2 && data[0] == '?' && strchr("ATBR", data[1]) && data[1])
        rc = parse_v1(data, size, &q, err, sizeof err);
    else
        rc = query_parse_v2((const char *)data, size, FUZZ_NOW_MS, site_cb, NULL, &q, err,
                            sizeof err);
    if (rc == 0) {
        CHECK(q != NULL);
        check_query(q);
    } else {
        CHECK(q == NULL);
        CHECK(rc == TALLY_EINVAL || rc == TALLY_ENOENT || rc == TALLY_ENOMEM);
        CHECK(err[0] != 0 && strlen(err) < sizeof err);
    }
    query_free(q);
    return 0;
}
