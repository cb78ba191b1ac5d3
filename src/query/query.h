/*
 * query: the Stats API's query model (Plausible Stats API v2 and v1, API.md §4), shared by the
 * parser (qparse.c), the two executors (qrollup.c: rollup cells; qscan.c: raw-store scan), the
 * planner and the result writer (query.c).
 *
 * FLOW. HTTP handler -> query_parse_v2 / query_parse_v1 (a struct query, or a 400 message that
 * names the field) -> query_run (plan, execute the main range and, for comparisons, the
 * comparison range, each into a q_table) -> query_write_json (derived metrics, order,
 * pagination, `meta`, `query` echo).
 *
 * SEMANTICS (both executors compute exactly these; the differential test checks it):
 *  - Counted events: not bot, not host-not-allowed, not duplicate, not "engagement".
 *  - A visit: a maximal run of one visitor's counted events, ordered by (ts, offset), whose
 *    consecutive events are < 30 min apart (engine.h). Its attributes (entry page, source, UTM,
 *    device, geo...) come from its first event, its exit page from its last; duration = last -
 *    first; a bounce = exactly one pageview and no other interactive event.
 *  - Filters on event dimensions (event:*) select EVENTS; filters on visit dimensions (visit:*)
 *    select VISITS. An event is in scope when it matches the event filters and its visit matches
 *    the visit filters; a visit is in scope when it matches the visit filters and holds at
 *    least one event in scope (anywhere in the visit, also outside the range).
 *  - pageviews / events / revenue: in-scope events whose time is in the range (or the time
 *    bucket). visits / bounces / duration: in-scope visits whose FIRST event is in the range
 *    (bucket). visitors: distinct visitors of the in-scope events in the range (bucket).
 *  - A row of a breakdown by an event dimension holds the events with that value and the
 *    visits holding at least one such event; by a visit dimension, the visits with that
 *    attribute and their events.
 *
 * THREADS. A struct query is immutable after parsing and may be read by many threads.
 */
#ifndef TALLY_QUERY_H
#define TALLY_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rollup/tz.h"

struct store;
struct tally_config;

/* ---- limits (every one is explicit; beyond them the parser answers 400) ---- */
#define QUERY_BODY_BYTES_MAX (64u << 10)  /* a v2 query document */
#define QUERY_METRICS_MAX 16
#define QUERY_DIMS_MAX 4
#define QUERY_FILTER_NODES_MAX 64         /* leaves and logical nodes together */
#define QUERY_FILTER_DEPTH_MAX 8
#define QUERY_FILTER_VALUES_MAX 100       /* values of one leaf */
#define QUERY_VALUE_BYTES_MAX 1024        /* one filter value or regex */
#define QUERY_ORDER_MAX 8
#define QUERY_LIMIT_DEFAULT 10000         /* Plausible's default page size */
#define QUERY_LIMIT_MAX 10000
#define QUERY_OFFSET_MAX 1000000
#define QUERY_SITE_BYTES_MAX 255
#define QUERY_PROP_BYTES_MAX 300
#define QUERY_TIME_BUCKETS_MAX 100000     /* time:minute over a long range is refused */
#define QUERY_REALTIME_MS (5 * 60 * 1000) /* "realtime" = the last 5 minutes */

/* ---- metrics ---- */
enum q_metric {
    QM_VISITORS = 0,
    QM_VISITS,
    QM_PAGEVIEWS,
    QM_VIEWS_PER_VISIT,
    QM_BOUNCE_RATE,
    QM_VISIT_DURATION,
    QM_EVENTS,
    QM_PERCENTAGE,
    QM_CONVERSION_RATE,
    QM_GROUP_CONVERSION_RATE,
    QM_TOTAL_REVENUE,
    QM_AVERAGE_REVENUE,
    QM_TIME_ON_PAGE,
    QM_COUNT
};
const char *q_metric_name(enum q_metric m); /* "visitors", ... */
int q_metric_parse(const char *name);        /* -1 when unknown */

/* ---- dimensions ---- */
#define Q_DIM_GOAL 100 /* event:goal */
#define Q_DIM_TIME 101 /* time, time:minute ... time:month */

enum q_time { QT_NONE = 0, QT_MINUTE, QT_HOUR, QT_DAY, QT_WEEK, QT_MONTH };

struct q_dim {
    int field;          /* enum rollup_dim (ROLLUP_DIM_PAGE ..), Q_DIM_GOAL or Q_DIM_TIME */
    enum q_time time;   /* Q_DIM_TIME: the granularity ("time" is resolved from the range:
                           minute up to 1 hour... see qparse.c) */
    char prop[QUERY_PROP_BYTES_MAX + 1]; /* ROLLUP_DIM_PROP: the property key */
};
/* "event:page", "visit:source", "event:props:KEY", "event:goal", "time:day", ... into buf. */
const char *q_dim_name(const struct q_dim *d, char *buf, size_t cap);
/* Whether the dimension selects events (event:*) rather than visits (visit:*). Goals and
 * time are event-level. */
bool q_dim_is_event(const struct q_dim *d);

/* ---- filters ---- */
enum q_op {
    QF_IS = 0,
    QF_IS_NOT,
    QF_CONTAINS,
    QF_CONTAINS_NOT,
    QF_MATCHES,
    QF_MATCHES_NOT,
    QF_AND,
    QF_OR,
    QF_NOT
};

struct q_filter {
    enum q_op op;
    /* leaves (QF_IS .. QF_MATCHES_NOT) */
    struct q_dim dim;
    size_t nvalues;
    char **values;          /* NUL-terminated; "(none)" in the API means "" (absent) here */
    uint32_t *lens;
    bool case_insensitive;  /* modifier {"case_sensitive": false} (is, contains) */
    void **re;              /* QF_MATCHES*: one compiled pcre2_code per value */
    /* logical nodes: QF_AND / QF_OR (nkids >= 1), QF_NOT (nkids == 1) */
    size_t nkids;
    struct q_filter *kids;
};

/* Whether value (len bytes) satisfies the leaf's condition for ONE value of its dimension
 * (is: equal to any value; contains: holds any value as a substring; matches: any regex
 * matches; the _not forms negate). Any thread. */
bool q_leaf_match(const struct q_filter *leaf, const char *value, size_t len);

/* ---- the query ---- */
struct q_range {
    int64_t from_ms, to_ms; /* UTC, [from, to) */
};

enum q_cmp { Q_CMP_NONE = 0, Q_CMP_PREVIOUS, Q_CMP_YEAR, Q_CMP_CUSTOM };

struct q_order {
    bool is_metric;
    int index; /* enum q_metric, or an index into dims */
    bool desc;
};

enum q_api { Q_API_V2 = 0, Q_API_V1_AGGREGATE, Q_API_V1_TIMESERIES, Q_API_V1_BREAKDOWN,
             Q_API_V1_REALTIME };

struct query {
    enum q_api api;
    char site[QUERY_SITE_BYTES_MAX + 1];
    const tz_zone *zone;          /* the site's time zone */
    char currency[4];             /* the site's revenue currency */
    size_t nmetrics;
    enum q_metric metrics[QUERY_METRICS_MAX];
    int64_t now_ms;               /* the "now" the parser resolved ranges against */
    struct q_range range;         /* the resolved date range (end clamped to now) */
    bool realtime;
    size_t ndims;
    struct q_dim dims[QUERY_DIMS_MAX];
    struct q_filter *filter;      /* NULL: no filter; the top-level list is one QF_AND */
    size_t norder;
    struct q_order order[QUERY_ORDER_MAX];
    bool time_labels, total_rows;
    enum q_cmp cmp;
    struct q_range cmp_range;     /* the comparison period (Q_CMP_*) */
    bool match_day_of_week;
    size_t limit, offset;
    size_t ngoals;                /* the site's goals (config "goals"), for event:goal */
    char **goals;                 /* "event:Signup", "page:/pricing"; page paths may hold the
                                     wildcards * (within a segment) and ** (across) */
};

/* The site's time zone / currency / goals for the parser: fills q->zone, q->currency, goals.
 * Returns false when the site is unknown (the parser then fails with TALLY_ENOENT). */
typedef bool (*q_site_fn)(void *arg, const char *site, struct query *q);

/* Parses a v2 query document. now_ms resolves relative ranges. 0 with *out (query_free), or
 * TALLY_EINVAL with a message naming the field and the accepted values in err, or TALLY_ENOENT
 * (unknown site: err says so), TALLY_ENOMEM. */
int query_parse_v2(const char *json, size_t len, int64_t now_ms, q_site_fn site_fn, void *arg,
                   struct query **out, char *err, size_t errcap);
/* Parses a v1 request (its decoded query-string parameters as name/value pairs). Same
 * results. */
int query_parse_v1(enum q_api api, const char *const *names, const char *const *values,
                   size_t n, int64_t now_ms, q_site_fn site_fn, void *arg, struct query **out,
                   char *err, size_t errcap);
void query_free(struct query *q);

/* ---- execution ---- */

/* Aggregates of one row (one combination of dimension values), before derived metrics. */
struct q_agg {
    int64_t pageviews, events, visits, bounces, duration_ms;
    uint64_t visitors;
    bool visitors_exact;
    int64_t revenue_micros;   /* in the site's currency */
    int64_t revenue_events;   /* events that carried revenue in that currency */
    int64_t top_ms, top_count; /* time on page: summed ms and counted page views (scan) */
};

struct q_row {
    char *dims[QUERY_DIMS_MAX]; /* values as shown ("(none)" for absent, time labels) */
    int64_t time_ms;            /* start of the time bucket when a dimension is time, else 0 */
    struct q_agg a;
};

#define QUERY_OTHER_CURRENCIES_MAX 8 /* currencies besides the site's reported in meta */

/* Revenue in one currency other than the site's (the total of the range). */
struct q_currency {
    char cur[4];
    int64_t micros;
};

struct q_table {
    struct q_row *rows;
    size_t n, cap;
    struct q_agg total;         /* the whole range, same filters, no dimensions */
    bool have_total;
    bool estimated;             /* some visitor count is an estimate */
    /* With have_total: revenue in other currencies, ascending codes, at most
     * QUERY_OTHER_CURRENCIES_MAX (API.md §4: reported in meta, not converted). */
    size_t n_other_rev;
    struct q_currency other_rev[QUERY_OTHER_CURRENCIES_MAX];
};
void q_table_free(struct q_table *t);

/* Budget of one query: an error (TALLY_ETIMEDOUT / TALLY_ETOOBIG), not a hang. */
struct q_budget {
    int64_t deadline_ms;        /* monotonic ms (timefmt_mono_ms, ingest/timefmt.h) */
    size_t memory_bytes_max;
    size_t rows_max;
};

/* AUTO: the rollups when qplan_rollup_can, else the scan in its stream form when
 * qplan_stream_can (and the query's fields fit its rows), else the scan holding the range's
 * events. SCAN forces the holding form, STREAM the stream form (TALLY_ENOTSUP when it cannot
 * answer). */
enum q_plan { Q_PLAN_AUTO = 0, Q_PLAN_ROLLUP, Q_PLAN_SCAN, Q_PLAN_STREAM };

/* Whether the rollup cells can answer q exactly (totals, time series, one dimension, filters
 * only on that dimension or on nothing; metrics the cells hold). */
bool qplan_rollup_can(const struct query *q);

/* Executors: fill t (rows of every combination present in r, plus t->total when
 * want_total; a query without dimensions gets no row, its answer is t->total). 0, TALLY_ETIMEDOUT,
 * TALLY_ETOOBIG, TALLY_EIO, TALLY_ECORRUPT, TALLY_ENOMEM. Any thread; concurrent with the consumers
 * (RocksDB snapshots). */
int qexec_rollup(struct store *s, uint32_t site_id, const struct query *q, struct q_range r,
                 bool want_total, const struct q_budget *b, struct q_table *t);
int qexec_scan(struct store *s, uint32_t site_id, const struct query *q, struct q_range r,
               bool want_total, const struct q_budget *b, struct q_table *t);
/* Whether the scan's stream form (qscan.c, STREAM FORM) can answer q: every metric but the
 * revenue ones; no exit-page filter, the exit page only as the sole dimension; no time on page
 * with a goal dimension. */
bool qplan_stream_can(const struct query *q);
/* The scan in its stream form: the same answers as qexec_scan, without holding the range's
 * events. TALLY_ENOTSUP when !qplan_stream_can(q) or its fields and properties are more than a
 * raw_row carries (RAW_ROW_FIELDS_MAX); else as qexec_scan. */
int qexec_stream(struct store *s, uint32_t site_id, const struct query *q, struct q_range r,
                 bool want_total, const struct q_budget *b, struct q_table *t);

/* Plans (q_plan: AUTO picks rollups when qplan_rollup_can, else the scan: its stream form when
 * it can answer, else the holding form), runs the main range and the comparison range, and
 * writes the response body for q->api (v2: {results, meta, query}; v1: the v1 shapes) into
 * *json (malloc'd, caller frees; *len its length). site_id is the store's id of q->site
 * (store_site_id; a site with no data yet answers empty results: pass 0). 0, or an error with
 * a message in err: TALLY_ETIMEDOUT (time budget), TALLY_ETOOBIG (memory or row budget),
 * TALLY_EIO, TALLY_ECORRUPT, TALLY_ENOMEM. Any thread but never an event loop: a scan may take
 * the whole time budget. */
int query_execute(struct store *s, uint32_t site_id, const struct query *q,
                  const struct q_budget *b, enum q_plan plan, char **json, size_t *len,
                  char *err, size_t errcap);

/* The label of the time bucket holding ts_ms for granularity g in the query's zone (day
 * "YYYY-MM-DD", hour "YYYY-MM-DD HH:00:00", minute "YYYY-MM-DD HH:MM:00", week: its Monday
 * "YYYY-MM-DD", month: "YYYY-MM-01") and its start (UTC ms). Shared by both executors. */
int64_t q_time_bucket(const struct query *q, enum q_time g, int64_t ts_ms, char *label,
                      size_t cap);

#endif
