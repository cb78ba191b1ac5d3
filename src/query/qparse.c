/*
 * qparse: the Stats API query parser. A v2 JSON document (Plausible Stats API v2) or a v1
 * query string (Plausible Stats API v1) becomes one immutable struct query (query.h), or a 400
 * message that names the field by its JSON pointer ("#/filters/1/2/0") or its parameter name
 * ("filters") and lists the accepted values. Everything a client can get wrong is caught here,
 * so the planner and the executors only ever see valid, bounded queries.
 *
 * DATE RANGES. Every range is resolved in the site's time zone (q->zone) into [from_ms, to_ms)
 * UTC: a list of dates [D1, D2] is [start of D1, start of D2 + 1 day), whatever the length of
 * those days (23 h and 25 h on DST days). "Today" is the local date of now_ms. The end of a
 * range is then clamped to now_ms (a range wholly in the future becomes empty, [from, from)).
 *   v2 (docs/stats-api.md; where the text is ambiguous we follow what Plausible's own parser
 *   and tests do, e.g. "91d" on 2022-07-01 covers 2022-04-01 .. 2022-06-30):
 *     day       today
 *     7d .. 91d the N whole days before today (ending yesterday)
 *     month     the current calendar month (so: from its first day until now)
 *     6mo, 12mo the N whole calendar months before the current one ("relative to the start of
 *               this month")
 *     year      the current calendar year (until now)
 *     all       from the epoch (Tally keeps no "stats start" date) until now
 *     realtime  [now - 5 min, now) (accepted as in Plausible's parser, though not in the doc)
 *     [d1, d2]  ISO dates "YYYY-MM-DD", both days included
 *     [t1, t2]  RFC 3339 date-times with "Z" or an offset; the end is inclusive at the precision
 *               written: "15:59:59+02:00" ends at 16:00:00 (+1 s), "…:59.250Z" at …:59.251.
 *   v1 (docs/stats-api-v1.md): relative to `date` (default today): day = date; 7d / 30d = the
 *     N days ending on date; month = date's month; 6mo / 12mo = date's month and the 5 / 11
 *     before it; custom = date=D1,D2 inclusive. Default period 30d.
 *   Dates are 1970-01-01 .. 9999-12-30.
 *
 * TIME DIMENSION. "time" resolves to: minute for realtime; hour when the range (before
 * clamping) spans at most 25 hours (one local day, DST days included); day up to 93 days (any
 * three calendar months, "91d"); month beyond. time:minute / time:hour (any granularity, in
 * fact) is refused when the clamped range, or a comparison range, would hold more than
 * QUERY_TIME_BUCKETS_MAX buckets. v1 timeseries: interval date|day|hour|week|month, default
 * hour for period=day, month for 6mo and 12mo, day otherwise. Weeks start on Monday.
 *
 * COMPARISONS (include.comparisons). Date ranges compare whole local days: the main range is
 * first trimmed to end today (period-to-date, so "month" on the 10th compares 10 days), then
 * previous_period = the same number of days immediately before; year_over_year = the same dates
 * one year earlier (29 Feb -> 28 Feb); custom = the given date_range (a list of dates or
 * date-times). Date-time and realtime ranges compare instants: previous = the same length
 * (up to now) immediately before; year_over_year = the same UTC wall time one year earlier.
 * match_day_of_week (previous_period and year_over_year only) moves the comparison range by at
 * most three days, keeping its length, so that its first day falls on the main range's first
 * weekday. Comparisons are refused with date_range "all" (there is nothing before the epoch).
 * The comparison range is clamped to now like the main range.
 *
 * ORDER. Without order_by: when a time dimension is present, [time, asc] first; then the first
 * metric, descending (Plausible's documented default). An aggregate (no dimensions) gets no
 * order. order_by entries must name a requested metric or dimension (as written in dimensions).
 *
 * VALIDATION (the doc's stated rules; where it says nothing we accept):
 *  - percentage needs a non-empty dimensions list;
 *  - conversion_rate and group_conversion_rate need an event:goal dimension or an event:goal
 *    filter (anywhere in the filter tree); time_on_page an event:page dimension or filter;
 *  - bounce_rate, views_per_visit and visit_duration are refused with event:* dimensions (v2);
 *  - revenue metrics are accepted without a goal (the writer answers null with a warning);
 *  - event:goal filters take only is / contains (and may sit under "not");
 *  - time dimensions cannot be filtered; include.time_labels needs a time dimension;
 *  - unknown keys are refused at the top level, in include, comparisons, pagination and
 *    filter modifiers; include.imports is accepted and ignored (Tally imports nothing);
 *  - has_done / has_not_done and segments are documented by Plausible but not supported here:
 *    refused with a message saying so;
 *  - visit:country_name / region_name / city_name are accepted as aliases of visit:country /
 *    region / city: Tally stores ISO country codes (no names), the region the geo database
 *    gives and English city names, so a name filter compares against those values;
 *  - v1: metrics are the nine the v1 doc lists (timeseries without time_on_page, breakdown
 *    without views_per_visit); filters `k==a|b`, `k!=a`, `;` = AND, `*` = wildcard (any run of
 *    characters, compiled to an anchored regex; not for event:goal), `\|` `\;` `\\` escape;
 *    `!=` is refused for event:goal; limit 1..1000 (default 100), page from 1.
 *
 * FILTER VALUES. "(none)" means the empty string (the absent value) for is / is_not; for
 * contains and matches it is literal text. Values are strings (integers are accepted and
 * written in decimal, for visit:city). Case-insensitive is / contains fold ASCII letters only;
 * case_sensitive: false on matches compiles the regex caselessly (Unicode-aware). Regexes are
 * PCRE2 (UTF, invalid UTF-8 in subjects tolerated, \C refused), close to re2 for the patterns
 * people write; matching is unanchored like re2's. Each match runs under a match limit
 * (QP_MATCH_LIMIT backtracking steps, QP_HEAP_LIMIT_KIB of heap): a pattern that exceeds it on
 * a value counts as not matching that value, so one hostile regex cannot stall a scan. The
 * compiled size of all regexes of one query is bounded by QP_REGEX_BYTES_MAX.
 *
 * LIMITS. Every QUERY_* limit of query.h; the implicit top-level AND of the filter list is not
 * counted as a node, nor as a level of depth.
 *
 * OWNERSHIP. The struct query and everything it points to is owned by the query (query_free);
 * the site callback's goals are copied, so the callback may point at its own storage.
 *
 * THREADS. Parsing: any thread. q_leaf_match: any number of threads on the same query at once
 * (compiled patterns are read-only; each thread has its own match data, freed at thread exit).
 */
#include "query/query.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "ingest/timefmt.h"
#include "rollup/cell.h"
#include "tally/error.h"

#define QP_PATH_MAX 192
#define QP_QUOTE_MAX 80
#define QP_REGEX_BYTES_MAX (8u << 20) /* compiled (+ JIT) size of one query's regexes */
#define QP_MATCH_LIMIT 200000         /* backtracking steps of one pcre2_match */
#define QP_DEPTH_LIMIT 10000
#define QP_HEAP_LIMIT_KIB 4096
#define QP_PARENS_NEST_MAX 64
#define QP_V1_LIMIT_MAX 1000
#define QP_V1_LIMIT_DEFAULT 100
#define QP_MINUTE_MS 60000LL
#define QP_HOUR_MS 3600000LL
#define QP_DAY_MS 86400000LL
#define QP_AUTO_HOUR_SPAN_MS (25 * QP_HOUR_MS)
#define QP_AUTO_DAY_SPAN_MS (93 * QP_DAY_MS)
#define QP_DAY_FIRST 0      /* 1970-01-01 */
#define QP_DAY_LAST 2932894 /* 9999-12-30 */

/* ---- names ---- */

static const char *const metric_names[QM_COUNT] = {
    "visitors",       "visits",          "pageviews",    "views_per_visit", "bounce_rate",
    "visit_duration", "events",          "percentage",   "conversion_rate", "group_conversion_rate",
    "total_revenue",  "average_revenue", "time_on_page",
};

const char *q_metric_name(enum q_metric m)
{
    return (unsigned)m < QM_COUNT ? metric_names[m] : "?";
}

int q_metric_parse(const char *name)
{
    if (!name) return -1;
    for (int i = 0; i < QM_COUNT; i++)
        if (strcmp(name, metric_names[i]) == 0) return i;
    return -1;
}

struct dim_entry {
    const char *name;
    int field;
    enum q_time time;
};

/* Canonical names first: q_dim_name uses the first entry of a field. */
static const struct dim_entry dim_table[] = {
    {"event:goal", Q_DIM_GOAL, QT_NONE},
    {"event:page", ROLLUP_DIM_PAGE, QT_NONE},
    {"event:hostname", ROLLUP_DIM_HOSTNAME, QT_NONE},
    {"event:name", ROLLUP_DIM_NAME, QT_NONE},
    {"visit:entry_page", ROLLUP_DIM_ENTRY_PAGE, QT_NONE},
    {"visit:exit_page", ROLLUP_DIM_EXIT_PAGE, QT_NONE},
    {"visit:source", ROLLUP_DIM_SOURCE, QT_NONE},
    {"visit:referrer", ROLLUP_DIM_REFERRER, QT_NONE},
    {"visit:channel", ROLLUP_DIM_CHANNEL, QT_NONE},
    {"visit:utm_source", ROLLUP_DIM_UTM_SOURCE, QT_NONE},
    {"visit:utm_medium", ROLLUP_DIM_UTM_MEDIUM, QT_NONE},
    {"visit:utm_campaign", ROLLUP_DIM_UTM_CAMPAIGN, QT_NONE},
    {"visit:utm_content", ROLLUP_DIM_UTM_CONTENT, QT_NONE},
    {"visit:utm_term", ROLLUP_DIM_UTM_TERM, QT_NONE},
    {"visit:device", ROLLUP_DIM_DEVICE, QT_NONE},
    {"visit:browser", ROLLUP_DIM_BROWSER, QT_NONE},
    {"visit:browser_version", ROLLUP_DIM_BROWSER_VERSION, QT_NONE},
    {"visit:os", ROLLUP_DIM_OS, QT_NONE},
    {"visit:os_version", ROLLUP_DIM_OS_VERSION, QT_NONE},
    {"visit:country", ROLLUP_DIM_COUNTRY, QT_NONE},
    {"visit:region", ROLLUP_DIM_REGION, QT_NONE},
    {"visit:city", ROLLUP_DIM_CITY, QT_NONE},
    {"visit:country_name", ROLLUP_DIM_COUNTRY, QT_NONE},
    {"visit:region_name", ROLLUP_DIM_REGION, QT_NONE},
    {"visit:city_name", ROLLUP_DIM_CITY, QT_NONE},
    {"time", Q_DIM_TIME, QT_NONE},
    {"time:minute", Q_DIM_TIME, QT_MINUTE},
    {"time:hour", Q_DIM_TIME, QT_HOUR},
    {"time:day", Q_DIM_TIME, QT_DAY},
    {"time:week", Q_DIM_TIME, QT_WEEK},
    {"time:month", Q_DIM_TIME, QT_MONTH},
};
#define DIM_TABLE_N (sizeof dim_table / sizeof dim_table[0])

static const char *const time_names[] = {"time",     "time:minute", "time:hour",
                                         "time:day", "time:week",   "time:month"};

const char *q_dim_name(const struct q_dim *d, char *buf, size_t cap)
{
    const char *s = "?";
    if (d->field == ROLLUP_DIM_PROP) {
        snprintf(buf, cap, "event:props:%s", d->prop);
        return buf;
    }
    if (d->field == Q_DIM_TIME) {
        s = (unsigned)d->time <= QT_MONTH ? time_names[d->time] : "time";
    } else {
        for (size_t i = 0; i < DIM_TABLE_N; i++)
            if (dim_table[i].field == d->field) {
                s = dim_table[i].name;
                break;
            }
    }
    snprintf(buf, cap, "%s", s);
    return buf;
}

bool q_dim_is_event(const struct q_dim *d)
{
    return d->field == Q_DIM_GOAL || d->field == Q_DIM_TIME ||
           (d->field >= 0 && d->field < ROLLUP_DIM_FIRST_VISIT);
}

/* "event:props:KEY" or a name of dim_table. 0, or -1 when unknown. */
static int dim_parse(const char *s, struct q_dim *out)
{
    memset(out, 0, sizeof *out);
    if (strncmp(s, "event:props:", 12) == 0) {
        size_t n = strlen(s + 12);
        if (n == 0 || n > QUERY_PROP_BYTES_MAX) return -1;
        out->field = ROLLUP_DIM_PROP;
        memcpy(out->prop, s + 12, n + 1);
        return 0;
    }
    for (size_t i = 0; i < DIM_TABLE_N; i++)
        if (strcmp(s, dim_table[i].name) == 0) {
            out->field = dim_table[i].field;
            out->time = dim_table[i].time;
            return 0;
        }
    return -1;
}

/* ---- errors ---- */

struct pctx {
    struct query *q;
    char *err;
    size_t errcap;
    int64_t now_ms;
    int64_t today; /* local day number of now_ms */
    size_t nodes;
    size_t regex_bytes;
};

__attribute__((format(printf, 2, 3))) static int fail(struct pctx *c, const char *fmt, ...)
{
    if (c->err && c->errcap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errcap, fmt, ap);
        va_end(ap);
    }
    return TALLY_EINVAL;
}

static int nomem(struct pctx *c)
{
    if (c->err && c->errcap) snprintf(c->err, c->errcap, "out of memory");
    return TALLY_ENOMEM;
}

/* A client string for an error message: quoted, shortened, control bytes as '?'. */
struct quoted {
    char s[QP_QUOTE_MAX + 8];
};

static struct quoted quote(const char *s)
{
    struct quoted r;
    size_t o = 0;
    r.s[o++] = '"';
    for (size_t i = 0; s && s[i] && o < QP_QUOTE_MAX; i++) {
        unsigned char ch = (unsigned char)s[i];
        r.s[o++] = (ch < 0x20 || ch == 0x7f || ch == '"' || ch == '\\') ? '?' : (char)ch;
    }
    if (s && strlen(s) > QP_QUOTE_MAX - 1) {
        memcpy(r.s + o, "...", 3);
        o += 3;
    }
    r.s[o++] = '"';
    r.s[o] = 0;
    return r;
}

/* The accepted-values lists, built once from the tables. */
static char metrics_list[512], dims_list[1024], dims_filter_list[1024];
static pthread_once_t lists_once = PTHREAD_ONCE_INIT;

static void append(char *buf, size_t cap, const char *s)
{
    size_t n = strlen(buf);
    snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", s);
}

static void lists_init(void)
{
    for (int i = 0; i < QM_COUNT; i++)
        append(metrics_list, sizeof metrics_list, metric_names[i]);
    for (size_t i = 0; i < DIM_TABLE_N; i++) {
        append(dims_list, sizeof dims_list, dim_table[i].name);
        if (dim_table[i].field != Q_DIM_TIME)
            append(dims_filter_list, sizeof dims_filter_list, dim_table[i].name);
        if (dim_table[i].field == ROLLUP_DIM_NAME) {
            append(dims_list, sizeof dims_list, "event:props:KEY");
            append(dims_filter_list, sizeof dims_filter_list, "event:props:KEY");
        }
    }
}

static const char *accepted_metrics(void)
{
    pthread_once(&lists_once, lists_init);
    return metrics_list;
}

static const char *accepted_dims(bool filters)
{
    pthread_once(&lists_once, lists_init);
    return filters ? dims_filter_list : dims_list;
}

/* ---- regexes ---- */

static pthread_once_t re_once = PTHREAD_ONCE_INIT;
static pthread_key_t re_md_key;
static bool re_key_ok;
static pcre2_match_context *re_mctx;
static pcre2_compile_context *re_cctx;

static void re_md_free(void *p)
{
    pcre2_match_data_free(p);
}

static void re_init(void)
{
    re_key_ok = pthread_key_create(&re_md_key, re_md_free) == 0;
    re_mctx = pcre2_match_context_create(NULL);
    if (re_mctx) {
        pcre2_set_match_limit(re_mctx, QP_MATCH_LIMIT);
        pcre2_set_depth_limit(re_mctx, QP_DEPTH_LIMIT);
        pcre2_set_heap_limit(re_mctx, QP_HEAP_LIMIT_KIB);
    }
    re_cctx = pcre2_compile_context_create(NULL);
    if (re_cctx) pcre2_set_parens_nest_limit(re_cctx, QP_PARENS_NEST_MAX);
}

static bool re_match(const pcre2_code *re, const char *s, size_t len)
{
    pthread_once(&re_once, re_init);
    pcre2_match_data *md = re_key_ok ? pthread_getspecific(re_md_key) : NULL;
    bool own = false;
    if (!md) {
        md = pcre2_match_data_create(1, NULL);
        if (!md) return false;
        own = !re_key_ok || pthread_setspecific(re_md_key, md) != 0;
    }
    if (!s) s = "";
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, 0, 0, md, re_mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re, (PCRE2_SPTR)s, len, 0, PCRE2_NO_JIT, md, re_mctx);
    if (own) pcre2_match_data_free(md);
    return rc >= 0; /* 0: matched, ovector too small for the groups (we need none) */
}

static int re_compile(struct pctx *c, const char *pat, size_t len, bool caseless, const char *path,
                      void **out)
{
    pthread_once(&re_once, re_init);
    int ec = 0;
    PCRE2_SIZE off = 0;
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | PCRE2_NEVER_BACKSLASH_C |
                    (caseless ? PCRE2_CASELESS : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opts, &ec, &off, re_cctx);
    if (!re) {
        if (ec == PCRE2_ERROR_HEAPLIMIT || ec == PCRE2_ERROR_NOMEMORY) return nomem(c);
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(ec, msg, sizeof msg) < 0) strcpy((char *)msg, "error");
        return fail(c, "%s: invalid regular expression %s at offset %zu: %s", path, quote(pat).s,
                    (size_t)off, (const char *)msg);
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* without JIT it still works, slower */
    size_t size = 0, jit = 0;
    pcre2_pattern_info(re, PCRE2_INFO_SIZE, &size);
    if (pcre2_pattern_info(re, PCRE2_INFO_JITSIZE, &jit) != 0) jit = 0;
    c->regex_bytes += size + jit;
    *out = re;
    if (c->regex_bytes > QP_REGEX_BYTES_MAX)
        return fail(c, "%s: the regular expressions of this query compile to more than %u bytes",
                    path, QP_REGEX_BYTES_MAX);
    return 0;
}

/* ---- matching ---- */

static inline unsigned char fold(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (unsigned char)(ch + 32) : ch;
}

static bool eq_fold(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fold((unsigned char)a[i]) != fold((unsigned char)b[i])) return false;
    return true;
}

static bool contains(const char *hay, size_t hn, const char *needle, size_t nn, bool ci)
{
    if (nn == 0) return true;
    if (nn > hn) return false;
    if (!ci) return memmem(hay, hn, needle, nn) != NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (eq_fold(hay + i, needle, nn)) return true;
    return false;
}

bool q_leaf_match(const struct q_filter *leaf, const char *value, size_t len)
{
    bool hit = false;
    if (!value) value = "", len = 0;
    for (size_t i = 0; i < leaf->nvalues && !hit; i++) {
        const char *v = leaf->values[i];
        size_t vn = leaf->lens[i];
        switch (leaf->op) {
        case QF_IS:
        case QF_IS_NOT:
            hit = vn == len &&
                  (leaf->case_insensitive ? eq_fold(v, value, len) : memcmp(v, value, len) == 0);
            break;
        case QF_CONTAINS:
        case QF_CONTAINS_NOT: hit = contains(value, len, v, vn, leaf->case_insensitive); break;
        case QF_MATCHES:
        case QF_MATCHES_NOT:
            hit = leaf->re && leaf->re[i] && re_match(leaf->re[i], value, len);
            break;
        default: return false;
        }
    }
    bool negated =
        leaf->op == QF_IS_NOT || leaf->op == QF_CONTAINS_NOT || leaf->op == QF_MATCHES_NOT;
    return negated ? !hit : hit;
}

/* ---- freeing ---- */

static void filter_clear(struct q_filter *f)
{
    for (size_t i = 0; i < f->nkids; i++)
        filter_clear(&f->kids[i]);
    free(f->kids);
    for (size_t i = 0; i < f->nvalues; i++) {
        if (f->values) free(f->values[i]);
        if (f->re) pcre2_code_free(f->re[i]);
    }
    free(f->values);
    free(f->lens);
    free(f->re);
    memset(f, 0, sizeof *f);
}

void query_free(struct query *q)
{
    if (!q) return;
    if (q->filter) {
        filter_clear(q->filter);
        free(q->filter);
    }
    for (size_t i = 0; i < q->ngoals; i++)
        free(q->goals[i]);
    free(q->goals);
    free(q);
}

/* ---- dates ---- */

/* Strict "YYYY-MM-DD" (exactly 10 bytes) into a day number in [QP_DAY_FIRST, QP_DAY_LAST]. */
static bool parse_date(const char *s, int64_t *day)
{
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-') return false;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9')) return false;
    int64_t y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    unsigned m = (unsigned)((s[5] - '0') * 10 + (s[6] - '0'));
    unsigned d = (unsigned)((s[8] - '0') * 10 + (s[9] - '0'));
    if (m < 1 || m > 12 || d < 1 || d > timefmt_days_in_month(y, m)) return false;
    *day = timefmt_days_from_civil(y, m, d);
    return *day >= QP_DAY_FIRST && *day <= QP_DAY_LAST;
}

static int64_t day_start(const tz_zone *z, int64_t day)
{
    int64_t y;
    unsigned m, d;
    if (day < QP_DAY_FIRST) return 0;
    timefmt_civil_from_days(day, &y, &m, &d);
    return tz_day_start_ms(z, y, m, d);
}

static int64_t local_day(const tz_zone *z, int64_t ms)
{
    int64_t y;
    unsigned m, d;
    tz_local_date(z, ms, &y, &m, &d);
    return timefmt_days_from_civil(y, m, d);
}

/* First day of the month `delta` months from the month of `day`. */
static int64_t month_first(int64_t day, int64_t delta)
{
    int64_t y;
    unsigned m, d;
    timefmt_civil_from_days(day, &y, &m, &d);
    int64_t mi = y * 12 + (m - 1) + delta;
    int64_t ny = mi >= 0 ? mi / 12 : -((-mi + 11) / 12);
    return timefmt_days_from_civil(ny, (unsigned)(mi - ny * 12 + 1), 1);
}

static int64_t shift_year(int64_t day, int64_t years)
{
    int64_t y;
    unsigned m, d;
    timefmt_civil_from_days(day, &y, &m, &d);
    y += years;
    if (m == 2 && d == 29 && timefmt_days_in_month(y, 2) == 28) d = 28;
    return timefmt_days_from_civil(y, m, d);
}

static int64_t shift_year_ms(int64_t ms, int64_t years)
{
    int64_t day = timefmt_day_of_ms(ms);
    return ms + (shift_year(day, years) - day) * QP_DAY_MS;
}

/* 0 = Monday .. 6 = Sunday (1970-01-01 was a Thursday). */
static int weekday(int64_t day)
{
    return (int)(((day + 3) % 7 + 7) % 7);
}

/* A date range before resolution: whole local days [d1, d2], or instants [from, to). */
struct span {
    bool days, realtime, all;
    int64_t d1, d2;
    int64_t from_ms, to_ms;
};

static struct q_range span_range(const struct pctx *c, const struct span *s)
{
    struct q_range r;
    if (s->days) {
        r.from_ms = day_start(c->q->zone, s->d1);
        r.to_ms = day_start(c->q->zone, s->d2 + 1);
    } else {
        r.from_ms = s->from_ms;
        r.to_ms = s->to_ms;
    }
    if (r.to_ms < r.from_ms) r.to_ms = r.from_ms;
    return r;
}

static struct q_range clamp_now(const struct pctx *c, struct q_range r)
{
    if (r.to_ms > c->now_ms) r.to_ms = c->now_ms;
    if (r.to_ms < r.from_ms) r.to_ms = r.from_ms;
    return r;
}

/* An RFC 3339 date-time; *end_ms = the exclusive end when it closes a range. */
static bool parse_datetime(const char *s, int64_t *ms, int64_t *end_ms)
{
    size_t n = strlen(s);
    if (n > 40 || timefmt_parse_rfc3339(s, n, ms) != 0) return false;
    if (*ms < 0 || *ms > TIMEFMT_MS_MAX - 1000) return false;
    *end_ms = *ms + (strchr(s, '.') ? 1 : 1000);
    return true;
}

/* A two-element list of dates or of date-times. */
static int parse_pair(struct pctx *c, const cJSON *j, const char *path, struct span *out)
{
    memset(out, 0, sizeof *out);
    const cJSON *a = cJSON_GetArrayItem(j, 0), *b = cJSON_GetArrayItem(j, 1);
    if (cJSON_GetArraySize(j) != 2 || !cJSON_IsString(a) || !cJSON_IsString(b))
        return fail(c,
                    "%s: expected a list of two ISO 8601 dates [\"2024-01-01\", "
                    "\"2024-01-31\"] or date-times [\"2024-01-01T00:00:00Z\", "
                    "\"2024-01-01T12:00:00+02:00\"]",
                    path);
    const char *s1 = a->valuestring, *s2 = b->valuestring;
    bool dt1 = strlen(s1) > 10, dt2 = strlen(s2) > 10;
    if (dt1 != dt2)
        return fail(c, "%s: both ends must be dates (YYYY-MM-DD) or both date-times", path);
    if (!dt1) {
        out->days = true;
        if (!parse_date(s1, &out->d1))
            return fail(c,
                        "%s/0: invalid date %s; expected YYYY-MM-DD (1970-01-01 .. "
                        "9999-12-30)",
                        path, quote(s1).s);
        if (!parse_date(s2, &out->d2))
            return fail(c,
                        "%s/1: invalid date %s; expected YYYY-MM-DD (1970-01-01 .. "
                        "9999-12-30)",
                        path, quote(s2).s);
        if (out->d2 < out->d1) return fail(c, "%s: the first date is after the last", path);
        return 0;
    }
    int64_t end_unused, last;
    if (!parse_datetime(s1, &out->from_ms, &end_unused))
        return fail(c,
                    "%s/0: invalid date-time %s; expected RFC 3339 with an offset, e.g. "
                    "\"2024-01-01T12:00:00+02:00\" or \"2024-01-01T10:00:00Z\"",
                    path, quote(s1).s);
    if (!parse_datetime(s2, &last, &out->to_ms))
        return fail(c,
                    "%s/1: invalid date-time %s; expected RFC 3339 with an offset, e.g. "
                    "\"2024-01-01T15:59:59+02:00\"",
                    path, quote(s2).s);
    if (last < out->from_ms) return fail(c, "%s: the first date-time is after the last", path);
    return 0;
}

#define V2_RANGES_LIST                                                                             \
    "\"day\", \"7d\", \"28d\", \"30d\", \"91d\", \"month\", \"6mo\", \"12mo\", \"year\", "         \
    "\"all\", \"realtime\""

static int parse_date_range_v2(struct pctx *c, const cJSON *j, const char *path, struct span *out)
{
    memset(out, 0, sizeof *out);
    if (cJSON_IsArray(j)) return parse_pair(c, j, path, out);
    if (!cJSON_IsString(j))
        return fail(c,
                    "%s: expected one of " V2_RANGES_LIST " or a list of two dates or "
                    "date-times",
                    path);
    const char *s = j->valuestring;
    int64_t t = c->today;
    out->days = true;
    if (strcmp(s, "day") == 0) {
        out->d1 = out->d2 = t;
    } else if (strcmp(s, "7d") == 0 || strcmp(s, "28d") == 0 || strcmp(s, "30d") == 0 ||
               strcmp(s, "91d") == 0) {
        out->d1 = t - atoi(s);
        out->d2 = t - 1;
    } else if (strcmp(s, "month") == 0) {
        out->d1 = month_first(t, 0);
        out->d2 = month_first(t, 1) - 1;
    } else if (strcmp(s, "6mo") == 0 || strcmp(s, "12mo") == 0) {
        out->d1 = month_first(t, -atoi(s));
        out->d2 = month_first(t, 0) - 1;
    } else if (strcmp(s, "year") == 0) {
        int64_t y;
        unsigned m, d;
        timefmt_civil_from_days(t, &y, &m, &d);
        out->d1 = timefmt_days_from_civil(y, 1, 1);
        out->d2 = timefmt_days_from_civil(y, 12, 31);
    } else if (strcmp(s, "all") == 0) {
        out->days = false;
        out->all = true;
        out->from_ms = 0;
        out->to_ms = c->now_ms;
    } else if (strcmp(s, "realtime") == 0) {
        out->days = false;
        out->realtime = true;
        out->from_ms = c->now_ms - QUERY_REALTIME_MS;
        out->to_ms = c->now_ms;
    } else {
        return fail(c,
                    "%s: unknown date_range %s; accepted: " V2_RANGES_LIST
                    ", or a list of two dates or date-times",
                    path, quote(s).s);
    }
    if (out->days) {
        if (out->d1 < QP_DAY_FIRST) out->d1 = QP_DAY_FIRST;
        if (out->d2 > QP_DAY_LAST) out->d2 = QP_DAY_LAST;
    }
    return 0;
}

/* ---- time dimension, comparisons, order, metric rules (both APIs) ---- */

static int64_t bucket_ms(enum q_time g)
{
    switch (g) {
    case QT_MINUTE: return QP_MINUTE_MS;
    case QT_HOUR: return QP_HOUR_MS;
    case QT_DAY: return QP_DAY_MS;
    case QT_WEEK: return 7 * QP_DAY_MS;
    default: return 28 * QP_DAY_MS;
    }
}

static int time_dim_index(const struct query *q)
{
    for (size_t i = 0; i < q->ndims; i++)
        if (q->dims[i].field == Q_DIM_TIME) return (int)i;
    return -1;
}

static int check_buckets(struct pctx *c, enum q_time g, struct q_range r, const char *path,
                         const char *what)
{
    int64_t n = (r.to_ms - r.from_ms) / bucket_ms(g) + 2;
    if (n > QUERY_TIME_BUCKETS_MAX)
        return fail(c,
                    "%s: %s over the %s gives about %lld buckets; at most %d: use a coarser "
                    "time dimension (time:hour, time:day, time:week, time:month) or a "
                    "shorter date_range",
                    path, time_names[g], what, (long long)n, QUERY_TIME_BUCKETS_MAX);
    return 0;
}

/* Resolves "time" (see the essay) and refuses too many buckets. dim_path: "#/dimensions/N"
 * or "interval". */
static int resolve_time(struct pctx *c, const struct span *s, struct q_range unclamped,
                        const char *dims_path)
{
    struct query *q = c->q;
    int ti = time_dim_index(q);
    if (ti < 0) return 0;
    struct q_dim *d = &q->dims[ti];
    if (d->time == QT_NONE) {
        int64_t span = unclamped.to_ms - unclamped.from_ms;
        if (s->realtime)
            d->time = QT_MINUTE;
        else if (span <= QP_AUTO_HOUR_SPAN_MS)
            d->time = QT_HOUR;
        else if (span <= QP_AUTO_DAY_SPAN_MS)
            d->time = QT_DAY;
        else
            d->time = QT_MONTH;
    }
    char path[QP_PATH_MAX];
    if (dims_path[0] == '#')
        snprintf(path, sizeof path, "%s/%d", dims_path, ti);
    else
        snprintf(path, sizeof path, "%s", dims_path);
    int rc = check_buckets(c, d->time, q->range, path, "date_range");
    if (rc == 0 && q->cmp != Q_CMP_NONE)
        rc = check_buckets(c, d->time, q->cmp_range, path, "comparison range");
    return rc;
}

/* Fills q->cmp_range from q->cmp (and the custom span for Q_CMP_CUSTOM). */
static int resolve_cmp(struct pctx *c, const struct span *m, const struct span *custom,
                       const char *path)
{
    struct query *q = c->q;
    struct q_range r;
    if (q->cmp == Q_CMP_NONE) return 0;
    if (q->cmp == Q_CMP_CUSTOM) {
        q->cmp_range = clamp_now(c, span_range(c, custom));
        return 0;
    }
    if (m->all) return fail(c, "%s: comparisons are not available with date_range \"all\"", path);
    if (m->days) {
        int64_t d1 = m->d1, d2 = m->d2;
        if (d2 > c->today && d1 <= c->today) d2 = c->today; /* period to date */
        int64_t c1, c2;
        if (q->cmp == Q_CMP_PREVIOUS) {
            c2 = d1 - 1;
            c1 = d1 - (d2 - d1 + 1);
        } else {
            c1 = shift_year(d1, -1);
            c2 = shift_year(d2, -1);
        }
        if (q->match_day_of_week) {
            int k = (weekday(d1) - weekday(c1) + 7) % 7;
            if (k > 3) k -= 7;
            c1 += k;
            c2 += k;
        }
        r.from_ms = day_start(q->zone, c1);
        r.to_ms = day_start(q->zone, c2 + 1);
    } else {
        int64_t from = m->from_ms, to = m->to_ms < c->now_ms ? m->to_ms : c->now_ms;
        if (to < from) to = from;
        if (q->cmp == Q_CMP_PREVIOUS) {
            r.from_ms = from - (to - from);
            r.to_ms = from;
        } else {
            r.from_ms = shift_year_ms(from, -1);
            r.to_ms = shift_year_ms(to, -1);
        }
        if (q->match_day_of_week) {
            int k =
                (weekday(local_day(q->zone, from)) - weekday(local_day(q->zone, r.from_ms)) + 7) %
                7;
            if (k > 3) k -= 7;
            r.from_ms += k * QP_DAY_MS;
            r.to_ms += k * QP_DAY_MS;
        }
        if (r.from_ms < 0) r.from_ms = 0;
    }
    if (r.to_ms < r.from_ms) r.to_ms = r.from_ms;
    q->cmp_range = clamp_now(c, r);
    return 0;
}

static bool filter_has(const struct q_filter *f, int field)
{
    if (!f) return false;
    if (f->op >= QF_AND) {
        for (size_t i = 0; i < f->nkids; i++)
            if (filter_has(&f->kids[i], field)) return true;
        return false;
    }
    return f->dim.field == field;
}

static bool has_dim(const struct query *q, int field)
{
    for (size_t i = 0; i < q->ndims; i++)
        if (q->dims[i].field == field) return true;
    return false;
}

/* The documented metric requirements. where: "#/metrics/%zu" or "metrics". */
static int check_metrics(struct pctx *c, bool v2, const char *where)
{
    const struct query *q = c->q;
    char path[QP_PATH_MAX];
    bool goal = has_dim(q, Q_DIM_GOAL) || filter_has(q->filter, Q_DIM_GOAL);
    bool page = has_dim(q, ROLLUP_DIM_PAGE) || filter_has(q->filter, ROLLUP_DIM_PAGE);
    int event_dim = -1;
    for (size_t i = 0; i < q->ndims && event_dim < 0; i++)
        if (q->dims[i].field != Q_DIM_TIME && q_dim_is_event(&q->dims[i])) event_dim = (int)i;
    for (size_t i = 0; i < q->nmetrics; i++) {
        enum q_metric m = q->metrics[i];
        snprintf(path, sizeof path, where, i);
        const char *name = q_metric_name(m);
        if (m == QM_PERCENTAGE && q->ndims == 0)
            return fail(c, "%s: metric \"percentage\" requires non-empty dimensions", path);
        if ((m == QM_CONVERSION_RATE || m == QM_GROUP_CONVERSION_RATE) && !goal)
            return fail(c, "%s: metric \"%s\" requires an event:goal filter or dimension", path,
                        name);
        if (m == QM_TIME_ON_PAGE && !page)
            return fail(c,
                        "%s: metric \"time_on_page\" requires an event:page filter or "
                        "dimension",
                        path);
        if (v2 && event_dim >= 0 &&
            (m == QM_BOUNCE_RATE || m == QM_VIEWS_PER_VISIT || m == QM_VISIT_DURATION)) {
            char dn[QUERY_PROP_BYTES_MAX + 16];
            return fail(c,
                        "%s: session metric \"%s\" cannot be mixed with the event dimension "
                        "\"%s\"; session metrics go with visit:* and time dimensions",
                        path, name, q_dim_name(&q->dims[event_dim], dn, sizeof dn));
        }
    }
    return 0;
}

static void default_order(struct query *q)
{
    q->norder = 0;
    if (q->ndims == 0) return;
    int ti = time_dim_index(q);
    if (ti >= 0) q->order[q->norder++] = (struct q_order){false, ti, false};
    q->order[q->norder++] = (struct q_order){true, (int)q->metrics[0], true};
}

/* The site: its zone, currency and goals (copied). */
static int load_site(struct pctx *c, const char *site, const char *path, q_site_fn site_fn,
                     void *arg)
{
    struct query *q = c->q;
    size_t n = strlen(site);
    if (n == 0 || n > QUERY_SITE_BYTES_MAX)
        return fail(c, "%s: expected the site's domain (1 to %d bytes)", path,
                    QUERY_SITE_BYTES_MAX);
    memcpy(q->site, site, n + 1);
    q->ngoals = 0;
    q->goals = NULL;
    if (!site_fn || !site_fn(arg, q->site, q)) {
        q->ngoals = 0;
        q->goals = NULL;
        if (c->err && c->errcap)
            snprintf(c->err, c->errcap, "%s: unknown site %s", path, quote(site).s);
        return TALLY_ENOENT;
    }
    if (!q->zone) q->zone = tz_utc();
    if (!q->currency[0]) memcpy(q->currency, "EUR", 4);
    q->currency[3] = 0;
    char **borrowed = q->goals;
    size_t ng = q->ngoals;
    q->goals = NULL;
    q->ngoals = 0;
    if (ng && borrowed) {
        q->goals = calloc(ng, sizeof *q->goals);
        if (!q->goals) return nomem(c);
        for (size_t i = 0; i < ng; i++) {
            q->goals[i] = strdup(borrowed[i] ? borrowed[i] : "");
            if (!q->goals[i]) return nomem(c);
            q->ngoals = i + 1;
        }
    }
    c->today = local_day(q->zone, c->now_ms);
    return 0;
}

/* ---- v2: filters ---- */

static const struct {
    const char *name;
    enum q_op op;
} op_table[] = {
    {"is", QF_IS},
    {"is_not", QF_IS_NOT},
    {"contains", QF_CONTAINS},
    {"contains_not", QF_CONTAINS_NOT},
    {"matches", QF_MATCHES},
    {"matches_not", QF_MATCHES_NOT},
    {"and", QF_AND},
    {"or", QF_OR},
    {"not", QF_NOT},
};
#define OPS_LIST "is, is_not, contains, contains_not, matches, matches_not, and, or, not"

static bool is_regex_op(enum q_op op)
{
    return op == QF_MATCHES || op == QF_MATCHES_NOT;
}

/* Stores value i of a leaf (copied; "(none)" -> "" for is / is_not). */
static int leaf_set_value(struct pctx *c, struct q_filter *f, size_t i, const char *v, size_t n)
{
    if ((f->op == QF_IS || f->op == QF_IS_NOT) && n == 6 && memcmp(v, "(none)", 6) == 0) n = 0;
    f->values[i] = malloc(n + 1);
    if (!f->values[i]) return nomem(c);
    memcpy(f->values[i], v, n);
    f->values[i][n] = 0;
    f->lens[i] = (uint32_t)n;
    return 0;
}

static int leaf_alloc(struct pctx *c, struct q_filter *f, size_t n)
{
    f->values = calloc(n, sizeof *f->values);
    f->lens = calloc(n, sizeof *f->lens);
    if (is_regex_op(f->op)) f->re = calloc(n, sizeof *f->re);
    if (!f->values || !f->lens || (is_regex_op(f->op) && !f->re)) return nomem(c);
    f->nvalues = n;
    return 0;
}

static int leaf_compile(struct pctx *c, struct q_filter *f, bool caseless, const char *vpath)
{
    if (!is_regex_op(f->op)) return 0;
    char path[QP_PATH_MAX];
    for (size_t i = 0; i < f->nvalues; i++) {
        snprintf(path, sizeof path, "%s/%zu", vpath, i);
        int rc = re_compile(c, f->values[i], f->lens[i], caseless, path, &f->re[i]);
        if (rc) return rc;
    }
    return 0;
}

/* Checks the dimension of a leaf; the op must already be set. */
static int leaf_dim(struct pctx *c, struct q_filter *f, const char *name, const char *path)
{
    if (dim_parse(name, &f->dim) != 0) {
        if (strcmp(name, "segment") == 0)
            return fail(c, "%s: segments are not supported by Tally", path);
        if (strncmp(name, "event:props:", 12) == 0)
            return fail(c, "%s: a property key must be 1 to %d bytes", path, QUERY_PROP_BYTES_MAX);
        return fail(c, "%s: unknown dimension %s; accepted: %s", path, quote(name).s,
                    accepted_dims(true));
    }
    if (f->dim.field == Q_DIM_TIME)
        return fail(c, "%s: time dimensions cannot be used in filters; set date_range instead",
                    path);
    if (f->dim.field == Q_DIM_GOAL && f->op != QF_IS && f->op != QF_CONTAINS)
        return fail(c, "%s: only the is and contains operators are valid for event:goal", path);
    return 0;
}

static int parse_filter(struct pctx *c, const cJSON *j, const char *path, int depth,
                        struct q_filter *f);

static int parse_modifiers(struct pctx *c, const cJSON *j, const char *path, bool *caseless)
{
    if (!cJSON_IsObject(j))
        return fail(c,
                    "%s: expected an object of modifiers; accepted: {\"case_sensitive\": "
                    "false}",
                    path);
    for (const cJSON *k = j->child; k; k = k->next) {
        if (strcmp(k->string, "case_sensitive") != 0)
            return fail(c, "%s: unknown modifier %s; accepted: case_sensitive", path,
                        quote(k->string).s);
        if (!cJSON_IsBool(k)) return fail(c, "%s/case_sensitive: expected true or false", path);
        *caseless = cJSON_IsFalse(k);
    }
    return 0;
}

static int parse_leaf(struct pctx *c, const cJSON *j, const char *path, struct q_filter *f)
{
    char sub[QP_PATH_MAX];
    int n = cJSON_GetArraySize(j);
    if (n != 3 && n != 4)
        return fail(c,
                    "%s: expected [operator, dimension, [values...]] with an optional 4th "
                    "element of modifiers",
                    path);
    const cJSON *dim = cJSON_GetArrayItem(j, 1), *vals = cJSON_GetArrayItem(j, 2);
    snprintf(sub, sizeof sub, "%s/1", path);
    if (!cJSON_IsString(dim)) return fail(c, "%s: expected a dimension name", sub);
    int rc = leaf_dim(c, f, dim->valuestring, sub);
    if (rc) return rc;
    bool caseless = false;
    if (n == 4) {
        snprintf(sub, sizeof sub, "%s/3", path);
        if ((rc = parse_modifiers(c, cJSON_GetArrayItem(j, 3), sub, &caseless))) return rc;
    }
    snprintf(sub, sizeof sub, "%s/2", path);
    int nv = cJSON_GetArraySize(vals);
    if (!cJSON_IsArray(vals) || nv < 1 || nv > QUERY_FILTER_VALUES_MAX)
        return fail(c, "%s: expected a list of 1 to %d values", sub, QUERY_FILTER_VALUES_MAX);
    if ((rc = leaf_alloc(c, f, (size_t)nv))) return rc;
    f->case_insensitive = caseless && !is_regex_op(f->op);
    size_t i = 0;
    for (const cJSON *v = vals->child; v; v = v->next, i++) {
        char num[32];
        const char *s;
        if (cJSON_IsString(v)) {
            s = v->valuestring;
        } else if (cJSON_IsNumber(v) && v->valuedouble >= -9e15 && v->valuedouble <= 9e15 &&
                   (double)(int64_t)v->valuedouble == v->valuedouble) {
            snprintf(num, sizeof num, "%lld", (long long)v->valuedouble);
            s = num;
        } else {
            return fail(c, "%s/%zu: expected a string", sub, i);
        }
        size_t len = strlen(s);
        if (len > QUERY_VALUE_BYTES_MAX)
            return fail(c, "%s/%zu: a value is at most %d bytes", sub, i, QUERY_VALUE_BYTES_MAX);
        if ((rc = leaf_set_value(c, f, i, s, len))) return rc;
    }
    return leaf_compile(c, f, caseless, sub);
}

static int parse_filter(struct pctx *c, const cJSON *j, const char *path, int depth,
                        struct q_filter *f)
{
    char sub[QP_PATH_MAX];
    if (depth > QUERY_FILTER_DEPTH_MAX)
        return fail(c, "%s: filters nest at most %d levels deep", path, QUERY_FILTER_DEPTH_MAX);
    if (++c->nodes > QUERY_FILTER_NODES_MAX)
        return fail(c, "%s: at most %d filters and logical operators in all", path,
                    QUERY_FILTER_NODES_MAX);
    const cJSON *opj = cJSON_GetArrayItem(j, 0);
    if (!cJSON_IsArray(j) || !cJSON_IsString(opj))
        return fail(c,
                    "%s: expected a filter [operator, dimension, [values...]] or [\"and\" | "
                    "\"or\", [filters...]] or [\"not\", filter]",
                    path);
    const char *op = opj->valuestring;
    size_t k = 0;
    while (k < sizeof op_table / sizeof op_table[0] && strcmp(op, op_table[k].name) != 0)
        k++;
    snprintf(sub, sizeof sub, "%s/0", path);
    if (k == sizeof op_table / sizeof op_table[0]) {
        if (strcmp(op, "has_done") == 0 || strcmp(op, "has_not_done") == 0)
            return fail(
                c, "%s: behavioral filters (%s) are not supported by Tally; accepted: " OPS_LIST,
                sub, op);
        return fail(c, "%s: unknown operator %s; accepted: " OPS_LIST, sub, quote(op).s);
    }
    f->op = op_table[k].op;
    if (f->op < QF_AND) return parse_leaf(c, j, path, f);
    const cJSON *arg = cJSON_GetArrayItem(j, 1);
    snprintf(sub, sizeof sub, "%s/1", path);
    if (cJSON_GetArraySize(j) != 2)
        return fail(c, "%s: expected [\"%s\", %s]", path, op,
                    f->op == QF_NOT ? "filter" : "[filters...]");
    if (f->op == QF_NOT) {
        f->kids = calloc(1, sizeof *f->kids);
        if (!f->kids) return nomem(c);
        f->nkids = 1;
        return parse_filter(c, arg, sub, depth + 1, &f->kids[0]);
    }
    int n = cJSON_GetArraySize(arg);
    if (!cJSON_IsArray(arg) || n < 1)
        return fail(c, "%s: expected a non-empty list of filters", sub);
    if (n > QUERY_FILTER_NODES_MAX)
        return fail(c, "%s: at most %d filters and logical operators in all", sub,
                    QUERY_FILTER_NODES_MAX);
    f->kids = calloc((size_t)n, sizeof *f->kids);
    if (!f->kids) return nomem(c);
    f->nkids = (size_t)n;
    size_t i = 0;
    for (const cJSON *e = arg->child; e; e = e->next, i++) {
        char kp[QP_PATH_MAX];
        snprintf(kp, sizeof kp, "%s/%zu", sub, i);
        int rc = parse_filter(c, e, kp, depth + 1, &f->kids[i]);
        if (rc) return rc;
    }
    return 0;
}

static int parse_filters_v2(struct pctx *c, const cJSON *j)
{
    if (!cJSON_IsArray(j)) return fail(c, "#/filters: expected a list of filters");
    int n = cJSON_GetArraySize(j);
    if (n == 0) return 0;
    if (n > QUERY_FILTER_NODES_MAX)
        return fail(c, "#/filters: at most %d filters and logical operators in all",
                    QUERY_FILTER_NODES_MAX);
    struct q_filter *root = calloc(1, sizeof *root);
    if (!root) return nomem(c);
    c->q->filter = root;
    root->op = QF_AND;
    root->kids = calloc((size_t)n, sizeof *root->kids);
    if (!root->kids) return nomem(c);
    root->nkids = (size_t)n;
    size_t i = 0;
    for (const cJSON *e = j->child; e; e = e->next, i++) {
        char path[QP_PATH_MAX];
        snprintf(path, sizeof path, "#/filters/%zu", i);
        int rc = parse_filter(c, e, path, 1, &root->kids[i]);
        if (rc) return rc;
    }
    return 0;
}

/* ---- v2: the other fields ---- */

static int parse_metrics_v2(struct pctx *c, const cJSON *j)
{
    struct query *q = c->q;
    int n = cJSON_GetArraySize(j);
    if (!cJSON_IsArray(j) || n < 1 || n > QUERY_METRICS_MAX)
        return fail(c, "#/metrics: expected a list of 1 to %d metrics; accepted: %s",
                    QUERY_METRICS_MAX, accepted_metrics());
    size_t i = 0;
    for (const cJSON *e = j->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e))
            return fail(c, "#/metrics/%zu: expected a metric name; accepted: %s", i,
                        accepted_metrics());
        int m = q_metric_parse(e->valuestring);
        if (m < 0)
            return fail(c, "#/metrics/%zu: unknown metric %s; accepted: %s", i,
                        quote(e->valuestring).s, accepted_metrics());
        for (size_t k = 0; k < q->nmetrics; k++)
            if ((int)q->metrics[k] == m)
                return fail(c, "#/metrics/%zu: metric %s is listed twice", i,
                            quote(e->valuestring).s);
        q->metrics[q->nmetrics++] = (enum q_metric)m;
    }
    return 0;
}

static int parse_dims_v2(struct pctx *c, const cJSON *j, const char **raw)
{
    struct query *q = c->q;
    int n = cJSON_GetArraySize(j);
    if (!cJSON_IsArray(j) || n > QUERY_DIMS_MAX)
        return fail(c, "#/dimensions: expected a list of at most %d dimensions", QUERY_DIMS_MAX);
    size_t i = 0;
    for (const cJSON *e = j->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e))
            return fail(c, "#/dimensions/%zu: expected a dimension name; accepted: %s", i,
                        accepted_dims(false));
        const char *s = e->valuestring;
        struct q_dim d;
        if (dim_parse(s, &d) != 0) {
            if (strncmp(s, "event:props:", 12) == 0)
                return fail(c, "#/dimensions/%zu: a property key must be 1 to %d bytes", i,
                            QUERY_PROP_BYTES_MAX);
            return fail(c, "#/dimensions/%zu: unknown dimension %s; accepted: %s", i, quote(s).s,
                        accepted_dims(false));
        }
        for (size_t k = 0; k < q->ndims; k++) {
            if (d.field == Q_DIM_TIME && q->dims[k].field == Q_DIM_TIME)
                return fail(c, "#/dimensions/%zu: only one time dimension per query", i);
            if (d.field == q->dims[k].field && strcmp(d.prop, q->dims[k].prop) == 0)
                return fail(c, "#/dimensions/%zu: dimension %s is listed twice", i, quote(s).s);
        }
        raw[q->ndims] = s;
        q->dims[q->ndims++] = d;
    }
    return 0;
}

static int parse_order_v2(struct pctx *c, const cJSON *j, const char **raw)
{
    struct query *q = c->q;
    int n = cJSON_GetArraySize(j);
    if (!cJSON_IsArray(j) || n < 1 || n > QUERY_ORDER_MAX)
        return fail(c,
                    "#/order_by: expected a list of 1 to %d [metric_or_dimension, \"asc\" | "
                    "\"desc\"] pairs",
                    QUERY_ORDER_MAX);
    char accepted[1024] = "";
    for (size_t i = 0; i < q->nmetrics; i++)
        append(accepted, sizeof accepted, q_metric_name(q->metrics[i]));
    for (size_t i = 0; i < q->ndims; i++)
        append(accepted, sizeof accepted, raw[i]);
    size_t i = 0;
    for (const cJSON *e = j->child; e; e = e->next, i++) {
        const cJSON *name = cJSON_GetArrayItem(e, 0), *dir = cJSON_GetArrayItem(e, 1);
        if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2 || !cJSON_IsString(name))
            return fail(c, "#/order_by/%zu: expected [metric_or_dimension, \"asc\" | \"desc\"]", i);
        struct q_order o = {false, -1, false};
        int m = q_metric_parse(name->valuestring);
        for (size_t k = 0; m >= 0 && k < q->nmetrics; k++)
            if ((int)q->metrics[k] == m) o = (struct q_order){true, m, false};
        for (size_t k = 0; o.index < 0 && k < q->ndims; k++)
            if (strcmp(raw[k], name->valuestring) == 0) o = (struct q_order){false, (int)k, false};
        if (o.index < 0)
            return fail(c,
                        "#/order_by/%zu/0: %s is not a metric or dimension of this query; "
                        "accepted: %s",
                        i, quote(name->valuestring).s, accepted);
        if (!cJSON_IsString(dir) ||
            (strcmp(dir->valuestring, "asc") != 0 && strcmp(dir->valuestring, "desc") != 0))
            return fail(c, "#/order_by/%zu/1: expected \"asc\" or \"desc\"", i);
        o.desc = dir->valuestring[0] == 'd';
        for (size_t k = 0; k < q->norder; k++)
            if (q->order[k].is_metric == o.is_metric && q->order[k].index == o.index)
                return fail(c, "#/order_by/%zu: %s is ordered twice", i,
                            quote(name->valuestring).s);
        q->order[q->norder++] = o;
    }
    return 0;
}

static bool get_bool(const cJSON *j, bool *out)
{
    if (!cJSON_IsBool(j)) return false;
    *out = cJSON_IsTrue(j);
    return true;
}

static int parse_comparisons(struct pctx *c, const cJSON *j, struct span *custom)
{
    struct query *q = c->q;
    if (!cJSON_IsObject(j))
        return fail(c, "#/include/comparisons: expected an object {\"mode\": "
                       "\"previous_period\" | \"year_over_year\" | \"custom\", ...}");
    const cJSON *mode = NULL, *range = NULL;
    for (const cJSON *k = j->child; k; k = k->next) {
        if (strcmp(k->string, "mode") == 0) {
            mode = k;
        } else if (strcmp(k->string, "date_range") == 0) {
            range = k;
        } else if (strcmp(k->string, "match_day_of_week") == 0) {
            if (!get_bool(k, &q->match_day_of_week))
                return fail(c, "#/include/comparisons/match_day_of_week: expected true or "
                               "false");
        } else {
            return fail(c,
                        "#/include/comparisons: unknown key %s; accepted: mode, date_range, "
                        "match_day_of_week",
                        quote(k->string).s);
        }
    }
    const char *m = cJSON_IsString(mode) ? mode->valuestring : "";
    if (strcmp(m, "previous_period") == 0)
        q->cmp = Q_CMP_PREVIOUS;
    else if (strcmp(m, "year_over_year") == 0)
        q->cmp = Q_CMP_YEAR;
    else if (strcmp(m, "custom") == 0)
        q->cmp = Q_CMP_CUSTOM;
    else
        return fail(c, "#/include/comparisons/mode: expected one of \"previous_period\", "
                       "\"year_over_year\", \"custom\"");
    if (q->cmp == Q_CMP_CUSTOM) {
        if (!range)
            return fail(c, "#/include/comparisons/date_range: required with mode \"custom\": "
                           "a list of two dates or date-times");
        if (!cJSON_IsArray(range))
            return fail(c, "#/include/comparisons/date_range: expected a list of two dates or "
                           "date-times");
        return parse_pair(c, range, "#/include/comparisons/date_range", custom);
    }
    if (range) return fail(c, "#/include/comparisons/date_range: only valid with mode \"custom\"");
    return 0;
}

static int parse_include(struct pctx *c, const cJSON *j, struct span *custom)
{
    struct query *q = c->q;
    if (!cJSON_IsObject(j))
        return fail(c, "#/include: expected an object; accepted keys: time_labels, total_rows, "
                       "comparisons, imports");
    for (const cJSON *k = j->child; k; k = k->next) {
        bool ignored;
        int rc = 0;
        if (strcmp(k->string, "time_labels") == 0) {
            if (!get_bool(k, &q->time_labels))
                rc = fail(c, "#/include/time_labels: expected true or false");
            else if (q->time_labels && time_dim_index(q) < 0)
                rc = fail(c, "#/include/time_labels: requires a time dimension");
        } else if (strcmp(k->string, "total_rows") == 0) {
            if (!get_bool(k, &q->total_rows))
                rc = fail(c, "#/include/total_rows: expected true or false");
        } else if (strcmp(k->string, "imports") == 0) {
            if (!get_bool(k, &ignored)) rc = fail(c, "#/include/imports: expected true or false");
        } else if (strcmp(k->string, "comparisons") == 0) {
            rc = parse_comparisons(c, k, custom);
        } else {
            rc = fail(c,
                      "#/include: unknown key %s; accepted: time_labels, total_rows, "
                      "comparisons, imports",
                      quote(k->string).s);
        }
        if (rc) return rc;
    }
    return 0;
}

static bool get_int(const cJSON *j, int64_t lo, int64_t hi, int64_t *out)
{
    if (!cJSON_IsNumber(j)) return false;
    double v = j->valuedouble;
    if (!(v >= (double)lo && v <= (double)hi) || (double)(int64_t)v != v) return false;
    *out = (int64_t)v;
    return true;
}

static int parse_pagination(struct pctx *c, const cJSON *j)
{
    struct query *q = c->q;
    if (!cJSON_IsObject(j))
        return fail(c,
                    "#/pagination: expected an object {\"limit\": 1..%d, \"offset\": "
                    "0..%d}",
                    QUERY_LIMIT_MAX, QUERY_OFFSET_MAX);
    for (const cJSON *k = j->child; k; k = k->next) {
        int64_t v;
        if (strcmp(k->string, "limit") == 0) {
            if (!get_int(k, 1, QUERY_LIMIT_MAX, &v))
                return fail(c, "#/pagination/limit: expected an integer 1..%d", QUERY_LIMIT_MAX);
            q->limit = (size_t)v;
        } else if (strcmp(k->string, "offset") == 0) {
            if (!get_int(k, 0, QUERY_OFFSET_MAX, &v))
                return fail(c, "#/pagination/offset: expected an integer 0..%d", QUERY_OFFSET_MAX);
            q->offset = (size_t)v;
        } else {
            return fail(c, "#/pagination: unknown key %s; accepted: limit, offset",
                        quote(k->string).s);
        }
    }
    return 0;
}

static const char *const top_keys[] = {"site_id", "metrics",  "date_range", "dimensions",
                                       "filters", "order_by", "include",    "pagination"};
#define TOP_KEYS_N (sizeof top_keys / sizeof top_keys[0])
#define TOP_KEYS_LIST                                                                              \
    "site_id, metrics, date_range, dimensions, filters, order_by, include, pagination"

static int parse_v2(struct pctx *c, const cJSON *root, q_site_fn site_fn, void *arg)
{
    struct query *q = c->q;
    const cJSON *f[TOP_KEYS_N] = {0};
    if (!cJSON_IsObject(root)) return fail(c, "#: expected a JSON object");
    for (const cJSON *k = root->child; k; k = k->next) {
        size_t i = 0;
        while (i < TOP_KEYS_N && strcmp(k->string, top_keys[i]) != 0)
            i++;
        if (i == TOP_KEYS_N)
            return fail(c, "#: unknown key %s; accepted: " TOP_KEYS_LIST, quote(k->string).s);
        if (f[i]) return fail(c, "#/%s: the key appears twice", top_keys[i]);
        f[i] = k;
    }
    const cJSON *site = f[0], *metrics = f[1], *range = f[2], *dims = f[3], *filters = f[4],
                *order = f[5], *include = f[6], *pagination = f[7];
    if (!cJSON_IsString(site)) return fail(c, "#/site_id: required: the site's domain as a string");
    int rc = load_site(c, site->valuestring, "#/site_id", site_fn, arg);
    if (rc) return rc;
    if (!metrics)
        return fail(c, "#/metrics: required: a list of metrics; accepted: %s", accepted_metrics());
    if ((rc = parse_metrics_v2(c, metrics))) return rc;
    const char *raw[QUERY_DIMS_MAX] = {0};
    if (dims && (rc = parse_dims_v2(c, dims, raw))) return rc;
    if (!range)
        return fail(c, "#/date_range: required: one of " V2_RANGES_LIST ", or a list of two "
                       "dates or date-times");
    struct span s, custom = {0};
    if ((rc = parse_date_range_v2(c, range, "#/date_range", &s))) return rc;
    struct q_range unclamped = span_range(c, &s);
    q->range = clamp_now(c, unclamped);
    q->realtime = s.realtime;
    if (filters && (rc = parse_filters_v2(c, filters))) return rc;
    if (include && (rc = parse_include(c, include, &custom))) return rc;
    if ((rc = resolve_cmp(c, &s, &custom, "#/include/comparisons"))) return rc;
    if ((rc = resolve_time(c, &s, unclamped, "#/dimensions"))) return rc;
    if ((rc = check_metrics(c, true, "#/metrics/%zu"))) return rc;
    if (order) {
        if ((rc = parse_order_v2(c, order, raw))) return rc;
    } else {
        default_order(q);
    }
    if (pagination && (rc = parse_pagination(c, pagination))) return rc;
    return 0;
}

static struct query *query_new(struct pctx *c, int64_t now_ms, char *err, size_t errcap)
{
    memset(c, 0, sizeof *c);
    c->err = err;
    c->errcap = errcap;
    c->now_ms = now_ms < 0 ? 0 : (now_ms > TIMEFMT_MS_MAX ? TIMEFMT_MS_MAX : now_ms);
    if (err && errcap) err[0] = 0;
    struct query *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->zone = tz_utc();
    q->limit = QUERY_LIMIT_DEFAULT;
    q->now_ms = c->now_ms;
    c->q = q;
    return q;
}

int query_parse_v2(const char *json, size_t len, int64_t now_ms, q_site_fn site_fn, void *arg,
                   struct query **out, char *err, size_t errcap)
{
    struct pctx c;
    *out = NULL;
    struct query *q = query_new(&c, now_ms, err, errcap);
    if (!q) return nomem(&c);
    q->api = Q_API_V2;
    int rc;
    if (!json || len == 0) {
        rc = fail(&c, "#: expected a JSON query document");
    } else if (len > QUERY_BODY_BYTES_MAX) {
        rc = fail(&c, "#: the query document is %zu bytes; at most %u", len, QUERY_BODY_BYTES_MAX);
    } else {
        const char *end = NULL;
        cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
        size_t pos = end && end >= json ? (size_t)(end - json) : 0;
        while (root && pos < len &&
               (json[pos] == ' ' || json[pos] == '\t' || json[pos] == '\n' || json[pos] == '\r'))
            pos++;
        if (!root) {
            rc = fail(&c, "#: invalid JSON near byte %zu", pos);
        } else if (pos < len) {
            rc = fail(&c, "#: unexpected bytes after the JSON document at byte %zu", pos);
        } else {
            rc = parse_v2(&c, root, site_fn, arg);
        }
        cJSON_Delete(root);
    }
    if (rc) {
        query_free(q);
        return rc;
    }
    *out = q;
    return 0;
}

/* ---- v1 ---- */

static const char *v1_get(const char *const *names, const char *const *values, size_t n,
                          const char *name)
{
    const char *v = NULL;
    for (size_t i = 0; i < n; i++)
        if (names[i] && strcmp(names[i], name) == 0) v = values[i] ? values[i] : "";
    return v;
}

#define V1_METRICS_LIST                                                                            \
    "visitors, visits, pageviews, views_per_visit, bounce_rate, visit_duration, events, "          \
    "conversion_rate, time_on_page"

static int parse_metrics_v1(struct pctx *c, enum q_api api, const char *s)
{
    struct query *q = c->q;
    if (!s || !*s) s = "visitors";
    const char *p = s;
    while (1) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char name[48];
        if (n == 0 || n >= sizeof name)
            return fail(c, "metrics: expected a comma-separated list; accepted: " V1_METRICS_LIST);
        memcpy(name, p, n);
        name[n] = 0;
        int m = q_metric_parse(name);
        bool ok = m >= 0 && m != QM_PERCENTAGE && m != QM_GROUP_CONVERSION_RATE &&
                  m != QM_TOTAL_REVENUE && m != QM_AVERAGE_REVENUE;
        if (!ok)
            return fail(c, "metrics: unknown metric %s; accepted: " V1_METRICS_LIST, quote(name).s);
        if (api == Q_API_V1_TIMESERIES && m == QM_TIME_ON_PAGE)
            return fail(c, "metrics: time_on_page is not available in timeseries; accepted: "
                           "visitors, visits, pageviews, views_per_visit, bounce_rate, "
                           "visit_duration, events, conversion_rate");
        if (api == Q_API_V1_BREAKDOWN && m == QM_VIEWS_PER_VISIT)
            return fail(c, "metrics: views_per_visit is only available in aggregate and "
                           "timeseries");
        for (size_t k = 0; k < q->nmetrics; k++)
            if ((int)q->metrics[k] == m)
                return fail(c, "metrics: metric %s is listed twice", quote(name).s);
        if (q->nmetrics == QUERY_METRICS_MAX)
            return fail(c, "metrics: at most %d metrics", QUERY_METRICS_MAX);
        q->metrics[q->nmetrics++] = (enum q_metric)m;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

#define V1_PERIODS_LIST "day, 7d, 30d, month, 6mo, 12mo, custom"

static int parse_period_v1(struct pctx *c, const char *period, const char *date, struct span *s)
{
    memset(s, 0, sizeof *s);
    s->days = true;
    if (!period || !*period) period = "30d";
    if (strcmp(period, "custom") == 0) {
        const char *comma = date ? strchr(date, ',') : NULL;
        char a[16], b[16];
        size_t na = comma ? (size_t)(comma - date) : 0;
        if (!comma || na >= sizeof a || strlen(comma + 1) >= sizeof b)
            return fail(c, "date: period=custom expects date=YYYY-MM-DD,YYYY-MM-DD");
        memcpy(a, date, na);
        a[na] = 0;
        snprintf(b, sizeof b, "%s", comma + 1);
        if (!parse_date(a, &s->d1) || !parse_date(b, &s->d2))
            return fail(c, "date: period=custom expects date=YYYY-MM-DD,YYYY-MM-DD (1970-01-01 "
                           ".. 9999-12-30)");
        if (s->d2 < s->d1) return fail(c, "date: the first date is after the last");
        return 0;
    }
    int64_t d = c->today;
    if (date && *date && !parse_date(date, &d))
        return fail(c, "date: invalid date %s; expected YYYY-MM-DD", quote(date).s);
    if (strcmp(period, "day") == 0) {
        s->d1 = s->d2 = d;
    } else if (strcmp(period, "7d") == 0 || strcmp(period, "30d") == 0) {
        s->d1 = d - atoi(period) + 1;
        s->d2 = d;
    } else if (strcmp(period, "month") == 0) {
        s->d1 = month_first(d, 0);
        s->d2 = month_first(d, 1) - 1;
    } else if (strcmp(period, "6mo") == 0 || strcmp(period, "12mo") == 0) {
        s->d1 = month_first(d, 1 - atoi(period));
        s->d2 = month_first(d, 1) - 1;
    } else {
        return fail(c, "period: unknown period %s; accepted: " V1_PERIODS_LIST, quote(period).s);
    }
    if (s->d1 < QP_DAY_FIRST) s->d1 = QP_DAY_FIRST;
    if (s->d2 > QP_DAY_LAST) s->d2 = QP_DAY_LAST;
    return 0;
}

/* Copies [p, e) into out unescaping \| \; \\ ; returns whether it holds an unescaped '*'. */
static bool v1_unescape(const char *p, const char *e, char *out, size_t *n)
{
    bool star = false;
    size_t o = 0;
    for (; p < e; p++) {
        if (*p == '\\' && p + 1 < e &&
            (p[1] == '|' || p[1] == ';' || p[1] == '\\' || p[1] == '*')) {
            out[o++] = *++p;
            continue;
        }
        if (*p == '*') star = true;
        out[o++] = *p;
    }
    out[o] = 0;
    *n = o;
    return star;
}

/* An anchored regex of a v1 wildcard value: runs of unescaped '*' match anything. */
static char *glob_regex(const char *p, const char *e)
{
    char *r = malloc((size_t)(e - p) * 2 + 3), *o = r;
    if (!r) return NULL;
    *o++ = '^';
    for (; p < e; p++) {
        if (*p == '\\' && p + 1 < e && strchr("|;\\*", p[1])) {
            p++;
        } else if (*p == '*') {
            while (p + 1 < e && p[1] == '*')
                p++;
            *o++ = '.';
            *o++ = '*';
            continue;
        }
        if (strchr("\\^$.|?*+()[]{}", *p)) *o++ = '\\';
        *o++ = *p;
    }
    *o++ = '$';
    *o = 0;
    return r;
}

static const char *v1_find(const char *p, const char *e, char ch)
{
    for (; p < e; p++) {
        if (*p == '\\' && p + 1 < e) {
            p++;
            continue;
        }
        if (*p == ch) return p;
    }
    return NULL;
}

/* One v1 expression `key==a|b` or `key!=a` in [p, e) into leaf f. */
static int parse_expr_v1(struct pctx *c, const char *p, const char *e, struct q_filter *f)
{
    const char *eq = NULL;
    bool neg = false;
    for (const char *s = p; s + 1 < e; s++)
        if ((s[0] == '=' || s[0] == '!') && s[1] == '=') {
            eq = s;
            neg = s[0] == '!';
            break;
        }
    if (!eq || eq == p)
        return fail(c, "filters: expected property==value, property!=value, values joined "
                       "with | and filters with ;");
    char key[QUERY_PROP_BYTES_MAX + 16];
    size_t kn = (size_t)(eq - p);
    if (kn >= sizeof key) return fail(c, "filters: property name too long");
    memcpy(key, p, kn);
    key[kn] = 0;
    const char *vp = eq + 2;
    /* Count the values and find wildcards. */
    size_t nv = 1;
    bool star = false;
    for (const char *s = vp; (s = v1_find(s, e, '|')); s++)
        nv++;
    if (nv > QUERY_FILTER_VALUES_MAX)
        return fail(c, "filters: at most %d values per filter", QUERY_FILTER_VALUES_MAX);
    for (const char *s = vp; (s = v1_find(s, e, '*')); s++)
        star = true;
    bool goal = strcmp(key, "event:goal") == 0;
    f->op =
        neg ? (star && !goal ? QF_MATCHES_NOT : QF_IS_NOT) : (star && !goal ? QF_MATCHES : QF_IS);
    if (goal && neg) return fail(c, "filters: != is not supported for event:goal");
    int rc = leaf_dim(c, f, key, "filters");
    if (rc) return rc;
    if ((rc = leaf_alloc(c, f, nv))) return rc;
    const char *s = vp;
    for (size_t i = 0; i < nv; i++) {
        const char *ve = v1_find(s, e, '|');
        if (!ve) ve = e;
        if ((size_t)(ve - s) > QUERY_VALUE_BYTES_MAX)
            return fail(c, "filters: a value is at most %d bytes", QUERY_VALUE_BYTES_MAX);
        if (is_regex_op(f->op)) {
            char *r = glob_regex(s, ve);
            if (!r) return nomem(c);
            rc = leaf_set_value(c, f, i, r, strlen(r));
            free(r);
        } else {
            char buf[QUERY_VALUE_BYTES_MAX + 1];
            size_t n;
            v1_unescape(s, ve, buf, &n);
            rc = leaf_set_value(c, f, i, buf, n);
        }
        if (rc) return rc;
        s = ve + 1;
    }
    return leaf_compile(c, f, false, "filters");
}

static int parse_filters_v1(struct pctx *c, const char *s)
{
    if (!s || !*s) return 0;
    const char *end = s + strlen(s);
    size_t n = 1;
    for (const char *p = s; (p = v1_find(p, end, ';')); p++)
        n++;
    if (n > QUERY_FILTER_NODES_MAX)
        return fail(c, "filters: at most %d filters", QUERY_FILTER_NODES_MAX);
    struct q_filter *root = calloc(1, sizeof *root);
    if (!root) return nomem(c);
    c->q->filter = root;
    root->op = QF_AND;
    root->kids = calloc(n, sizeof *root->kids);
    if (!root->kids) return nomem(c);
    root->nkids = n;
    const char *p = s;
    for (size_t i = 0; i < n; i++) {
        const char *e = v1_find(p, end, ';');
        if (!e) e = end;
        int rc = parse_expr_v1(c, p, e, &root->kids[i]);
        if (rc) return rc;
        p = e + 1;
    }
    return 0;
}

static int parse_limit_v1(struct pctx *c, const char *name, const char *s, int64_t lo, int64_t hi,
                          int64_t *out)
{
    if (!s) return 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || s[0] == '+' || s[0] == '-' || v < lo || v > hi)
        return fail(c, "%s: expected an integer %lld..%lld", name, (long long)lo, (long long)hi);
    *out = v;
    return 0;
}

static int parse_v1(struct pctx *c, enum q_api api, const char *const *names,
                    const char *const *values, size_t n, q_site_fn site_fn, void *arg)
{
    struct query *q = c->q;
#define P(name) v1_get(names, values, n, name)
    const char *site = P("site_id");
    if (!site || !*site) return fail(c, "site_id: required: the site's domain");
    int rc = load_site(c, site, "site_id", site_fn, arg);
    if (rc) return rc;
    if (api == Q_API_V1_REALTIME) {
        q->metrics[0] = QM_VISITORS;
        q->nmetrics = 1;
        q->realtime = true;
        q->range = (struct q_range){c->now_ms - QUERY_REALTIME_MS, c->now_ms};
        if (q->range.from_ms < 0) q->range.from_ms = 0;
        return 0;
    }
    if (api != Q_API_V1_AGGREGATE && api != Q_API_V1_TIMESERIES && api != Q_API_V1_BREAKDOWN)
        return fail(c, "api: unknown v1 endpoint");
    if ((rc = parse_metrics_v1(c, api, P("metrics")))) return rc;
    const char *period = P("period");
    struct span s;
    if ((rc = parse_period_v1(c, period, P("date"), &s))) return rc;
    struct q_range unclamped = span_range(c, &s);
    q->range = clamp_now(c, unclamped);
    if (api == Q_API_V1_BREAKDOWN) {
        const char *prop = P("property");
        if (!prop || !*prop)
            return fail(c, "property: required: the property to break down by; accepted: %s",
                        accepted_dims(true));
        if (dim_parse(prop, &q->dims[0]) != 0 || q->dims[0].field == Q_DIM_TIME)
            return fail(c, "property: unknown property %s; accepted: %s", quote(prop).s,
                        accepted_dims(true));
        q->ndims = 1;
    } else if (api == Q_API_V1_TIMESERIES) {
        const char *iv = P("interval");
        enum q_time g = QT_DAY;
        if (period && (strcmp(period, "6mo") == 0 || strcmp(period, "12mo") == 0)) g = QT_MONTH;
        if (period && strcmp(period, "day") == 0) g = QT_HOUR;
        if (iv && *iv) {
            if (strcmp(iv, "date") == 0 || strcmp(iv, "day") == 0)
                g = QT_DAY;
            else if (strcmp(iv, "month") == 0)
                g = QT_MONTH;
            else if (strcmp(iv, "hour") == 0)
                g = QT_HOUR;
            else if (strcmp(iv, "week") == 0)
                g = QT_WEEK;
            else
                return fail(c,
                            "interval: unknown interval %s; accepted: date, day, hour, week, "
                            "month",
                            quote(iv).s);
        }
        q->dims[0] = (struct q_dim){.field = Q_DIM_TIME, .time = g};
        q->ndims = 1;
    }
    if ((rc = parse_filters_v1(c, P("filters")))) return rc;
    const char *cmp = P("compare");
    if (cmp && *cmp) {
        if (strcmp(cmp, "previous_period") != 0)
            return fail(c, "compare: unknown value %s; accepted: previous_period", quote(cmp).s);
        q->cmp = Q_CMP_PREVIOUS;
        if ((rc = resolve_cmp(c, &s, NULL, "compare"))) return rc;
    }
    if ((rc = resolve_time(c, &s, unclamped, "interval"))) return rc;
    if ((rc = check_metrics(c, false, "metrics"))) return rc;
    const char *wi = P("with_imported");
    if (wi && *wi && strcmp(wi, "true") != 0 && strcmp(wi, "false") != 0)
        return fail(c, "with_imported: expected true or false");
    int64_t limit = QP_V1_LIMIT_DEFAULT, page = 1;
    if ((rc = parse_limit_v1(c, "limit", P("limit"), 1, QP_V1_LIMIT_MAX, &limit))) return rc;
    if ((rc = parse_limit_v1(c, "page", P("page"), 1, QUERY_OFFSET_MAX, &page))) return rc;
    if ((page - 1) * limit > QUERY_OFFSET_MAX)
        return fail(c, "page: page * limit is at most %d rows deep", QUERY_OFFSET_MAX);
    q->limit = (size_t)limit;
    q->offset = (size_t)((page - 1) * limit);
    default_order(q);
#undef P
    return 0;
}

int query_parse_v1(enum q_api api, const char *const *names, const char *const *values, size_t n,
                   int64_t now_ms, q_site_fn site_fn, void *arg, struct query **out, char *err,
                   size_t errcap)
{
    struct pctx c;
    *out = NULL;
    struct query *q = query_new(&c, now_ms, err, errcap);
    if (!q) return nomem(&c);
    q->api = api;
    int rc = parse_v1(&c, api, names, values, n, site_fn, arg);
    if (rc) {
        query_free(q);
        return rc;
    }
    *out = q;
    return 0;
}
