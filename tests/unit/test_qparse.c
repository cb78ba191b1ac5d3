/* Unit tests for query/qparse: the Stats API v2 and v1 parsers (date ranges in site time
 * zones, DST days, comparisons, time granularity, filters and matching, order, pagination,
 * limits) and the 400 messages that name the field. */
#include "test.h"

#include <pthread.h>

#include "ingest/timefmt.h"
#include "query/query.h"
#include "rollup/cell.h"
#include "rollup/tz.h"
#include "tally/error.h"

static char g_err[1024];
static char g_json[16384];

static int64_t T(const char *s)
{
    int64_t ms = 0;
    if (timefmt_parse_rfc3339(s, strlen(s), &ms) != 0) abort();
    return ms;
}

/* Sites: ny.example (America/New_York, goals, USD), in.example (Asia/Kolkata), utc.example. */
static char goal_signup[] = "event:Signup", goal_pricing[] = "page:/pricing";
static char *ny_goals[] = {goal_signup, goal_pricing};

static bool site_cb(void *arg, const char *site, struct query *q)
{
    (void)arg;
    const char *zone = NULL;
    if (strcmp(site, "ny.example") == 0) {
        zone = "America/New_York";
        q->ngoals = 2;
        q->goals = ny_goals; /* borrowed: the parser copies */
        memcpy(q->currency, "USD", 4);
    } else if (strcmp(site, "in.example") == 0) {
        zone = "Asia/Kolkata";
    } else if (strcmp(site, "utc.example") == 0) {
        zone = "UTC";
    } else {
        return false;
    }
    const tz_zone *z = NULL;
    if (tz_get(zone, &z) != 0) abort();
    q->zone = z;
    return true;
}

/* JSON with ' for " (the tests hold no apostrophes in values). */
static const char *J(const char *s)
{
    size_t n = strlen(s);
    if (n >= sizeof g_json) abort();
    for (size_t i = 0; i <= n; i++)
        g_json[i] = s[i] == '\'' ? '"' : s[i];
    return g_json;
}

/* now: 2024-03-15 08:00 in New York (EDT, -4), 17:30 in Kolkata. */
#define NOW T("2024-03-15T12:00:00Z")

static int p2(const char *js, int64_t now, struct query **q)
{
    const char *j = J(js);
    return query_parse_v2(j, strlen(j), now, site_cb, NULL, q, g_err, sizeof g_err);
}

static struct query *ok2_(const char *js, int64_t now, int line)
{
    struct query *q = NULL;
    int rc = p2(js, now, &q);
    if (rc != 0 || !q) TEST_FAIL_("line %d: parse failed (%d): %s", line, rc, g_err);
    return q;
}
#define OK2(js) ok2_(js, NOW, __LINE__)
#define OK2_AT(js, now) ok2_(js, now, __LINE__)

static void err2_(const char *js, int64_t now, int want_rc, const char *want, int line)
{
    struct query *q = NULL;
    g_err[0] = 0;
    int rc = p2(js, now, &q);
    if (rc != want_rc) {
        query_free(q);
        TEST_FAIL_("line %d: rc %d, want %d (%s)", line, rc, want_rc, g_err);
    }
    if (q) TEST_FAIL_("line %d: a query despite the error", line);
    if (!strstr(g_err, want)) TEST_FAIL_("line %d: message \"%s\" lacks \"%s\"", line, g_err, want);
}
#define ERR2(js, want) err2_(js, NOW, TALLY_EINVAL, want, __LINE__)

static int p1(enum q_api api, const char *qs, int64_t now, struct query **q)
{
    /* qs: "name=value&name=value" (already decoded; '&' separates). */
    static char buf[4096];
    const char *names[32], *values[32];
    size_t n = 0;
    snprintf(buf, sizeof buf, "%s", qs);
    for (char *p = buf; p && *p && n < 32;) {
        char *amp = strchr(p, '&');
        if (amp) *amp = 0;
        char *eq = strchr(p, '=');
        if (eq) *eq = 0;
        names[n] = p;
        values[n] = eq ? eq + 1 : "";
        n++;
        p = amp ? amp + 1 : NULL;
    }
    return query_parse_v1(api, names, values, n, now, site_cb, NULL, q, g_err, sizeof g_err);
}

static struct query *ok1_(enum q_api api, const char *qs, int line)
{
    struct query *q = NULL;
    int rc = p1(api, qs, NOW, &q);
    if (rc != 0 || !q) TEST_FAIL_("line %d: v1 parse failed (%d): %s", line, rc, g_err);
    return q;
}
#define OK1(api, qs) ok1_(api, qs, __LINE__)

static void err1_(enum q_api api, const char *qs, const char *want, int line)
{
    struct query *q = NULL;
    g_err[0] = 0;
    int rc = p1(api, qs, NOW, &q);
    if (rc != TALLY_EINVAL || q) {
        query_free(q);
        TEST_FAIL_("line %d: rc %d, want EINVAL (%s)", line, rc, g_err);
    }
    if (!strstr(g_err, want)) TEST_FAIL_("line %d: message \"%s\" lacks \"%s\"", line, g_err, want);
}
#define ERR1(api, qs, want) err1_(api, qs, want, __LINE__)

#define ASSERT_RANGE(r, from, to)                                                                  \
    do {                                                                                           \
        ASSERT_EQ((r).from_ms, T(from));                                                           \
        ASSERT_EQ((r).to_ms, T(to));                                                               \
    } while (0)

static struct query *range_q(const char *site, const char *range, int64_t now)
{
    char js[512];
    snprintf(js, sizeof js, "{'site_id':'%s','metrics':['visitors'],'date_range':%s}", site, range);
    return ok2_(js, now, __LINE__);
}

/* ---- metrics and dimensions ---- */

TEST(metric_names_round_trip)
{
    for (int m = 0; m < QM_COUNT; m++)
        ASSERT_EQ(q_metric_parse(q_metric_name(m)), m);
    ASSERT_EQ(q_metric_parse("visits2"), -1);
    ASSERT_EQ(q_metric_parse(""), -1);
    ASSERT_EQ(q_metric_parse("scroll_depth"), -1);
    ASSERT_STREQ(q_metric_name(QM_GROUP_CONVERSION_RATE), "group_conversion_rate");
    ASSERT_STREQ(q_metric_name(QM_COUNT), "?");
}

TEST(every_metric_parses)
{
    /* All thirteen at once, with what each needs: a visit dimension (percentage) and goal and
     * page filters (conversion rates, time on page). */
    struct query *q =
        OK2("{'site_id':'ny.example','metrics':['visitors','visits','pageviews','views_per_visit',"
            "'bounce_rate','visit_duration','events','percentage','conversion_rate',"
            "'group_conversion_rate','total_revenue','average_revenue','time_on_page'],"
            "'date_range':'7d','dimensions':['visit:source'],"
            "'filters':[['is','event:goal',['Signup']],['is','event:page',['/']]]}");
    ASSERT_EQ(q->nmetrics, QM_COUNT);
    for (int m = 0; m < QM_COUNT; m++)
        ASSERT_EQ(q->metrics[m], m);
    ASSERT_STREQ(q->currency, "USD");
    ASSERT_EQ(q->api, Q_API_V2);
    ASSERT_EQ(q->limit, QUERY_LIMIT_DEFAULT);
    ASSERT_EQ(q->offset, 0);
    query_free(q);
}

TEST(every_dimension_parses)
{
    static const struct {
        const char *name, *canon;
        int field;
        bool event;
    } dims[] = {
        {"event:page", "event:page", ROLLUP_DIM_PAGE, true},
        {"event:hostname", "event:hostname", ROLLUP_DIM_HOSTNAME, true},
        {"event:name", "event:name", ROLLUP_DIM_NAME, true},
        {"event:goal", "event:goal", Q_DIM_GOAL, true},
        {"event:props:plan", "event:props:plan", ROLLUP_DIM_PROP, true},
        {"visit:entry_page", "visit:entry_page", ROLLUP_DIM_ENTRY_PAGE, false},
        {"visit:exit_page", "visit:exit_page", ROLLUP_DIM_EXIT_PAGE, false},
        {"visit:source", "visit:source", ROLLUP_DIM_SOURCE, false},
        {"visit:referrer", "visit:referrer", ROLLUP_DIM_REFERRER, false},
        {"visit:channel", "visit:channel", ROLLUP_DIM_CHANNEL, false},
        {"visit:utm_source", "visit:utm_source", ROLLUP_DIM_UTM_SOURCE, false},
        {"visit:utm_medium", "visit:utm_medium", ROLLUP_DIM_UTM_MEDIUM, false},
        {"visit:utm_campaign", "visit:utm_campaign", ROLLUP_DIM_UTM_CAMPAIGN, false},
        {"visit:utm_content", "visit:utm_content", ROLLUP_DIM_UTM_CONTENT, false},
        {"visit:utm_term", "visit:utm_term", ROLLUP_DIM_UTM_TERM, false},
        {"visit:device", "visit:device", ROLLUP_DIM_DEVICE, false},
        {"visit:browser", "visit:browser", ROLLUP_DIM_BROWSER, false},
        {"visit:browser_version", "visit:browser_version", ROLLUP_DIM_BROWSER_VERSION, false},
        {"visit:os", "visit:os", ROLLUP_DIM_OS, false},
        {"visit:os_version", "visit:os_version", ROLLUP_DIM_OS_VERSION, false},
        {"visit:country", "visit:country", ROLLUP_DIM_COUNTRY, false},
        {"visit:region", "visit:region", ROLLUP_DIM_REGION, false},
        {"visit:city", "visit:city", ROLLUP_DIM_CITY, false},
        {"visit:country_name", "visit:country", ROLLUP_DIM_COUNTRY, false},
        {"visit:region_name", "visit:region", ROLLUP_DIM_REGION, false},
        {"visit:city_name", "visit:city", ROLLUP_DIM_CITY, false},
        {"time:minute", "time:minute", Q_DIM_TIME, true},
        {"time:hour", "time:hour", Q_DIM_TIME, true},
        {"time:day", "time:day", Q_DIM_TIME, true},
        {"time:week", "time:week", Q_DIM_TIME, true},
        {"time:month", "time:month", Q_DIM_TIME, true},
        {"time", "time:day", Q_DIM_TIME, true}, /* resolved over 7d */
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        char js[512], buf[400];
        snprintf(js, sizeof js,
                 "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
                 "'dimensions':['%s']}",
                 dims[i].name);
        struct query *q = OK2(js);
        ASSERT_EQ(q->ndims, 1);
        ASSERT_EQ(q->dims[0].field, dims[i].field);
        ASSERT_STREQ(q_dim_name(&q->dims[0], buf, sizeof buf), dims[i].canon);
        ASSERT_EQ(q_dim_is_event(&q->dims[0]), dims[i].event);
        if (dims[i].field == ROLLUP_DIM_PROP) ASSERT_STREQ(q->dims[0].prop, "plan");
        query_free(q);
    }
}

TEST(dimension_errors)
{
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
         "'dimensions':['visit:sauce']}",
         "#/dimensions/0: unknown dimension \"visit:sauce\"; accepted: event:goal, event:page");
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
         "'dimensions':['visit:source','visit:source']}",
         "#/dimensions/1: dimension \"visit:source\" is listed twice");
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
         "'dimensions':['time:day','time:hour']}",
         "#/dimensions/1: only one time dimension");
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
         "'dimensions':['event:props:']}",
         "#/dimensions/0: a property key must be 1 to 300 bytes");
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
         "'dimensions':['visit:os','visit:browser','visit:device','visit:city','visit:region']}",
         "#/dimensions: expected a list of at most 4");
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d','dimensions':[3]}",
         "#/dimensions/0: expected a dimension name");
    /* Two different props are two dimensions. */
    struct query *q = OK2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
                          "'dimensions':['event:props:a','event:props:b']}");
    ASSERT_EQ(q->ndims, 2);
    query_free(q);
}

TEST(metric_errors)
{
    ERR2("{'site_id':'ny.example','metrics':['visitors','visits','visits2'],'date_range':'7d'}",
         "#/metrics/2: unknown metric \"visits2\"; accepted: visitors, visits, pageviews, "
         "views_per_visit, bounce_rate, visit_duration, events, percentage, conversion_rate, "
         "group_conversion_rate, total_revenue, average_revenue, time_on_page");
    ERR2("{'site_id':'ny.example','metrics':[],'date_range':'7d'}",
         "#/metrics: expected a list of 1 to 16 metrics");
    ERR2("{'site_id':'ny.example','date_range':'7d'}", "#/metrics: required");
    ERR2("{'site_id':'ny.example','metrics':'visitors','date_range':'7d'}", "#/metrics:");
    ERR2("{'site_id':'ny.example','metrics':['visitors','visitors'],'date_range':'7d'}",
         "#/metrics/1: metric \"visitors\" is listed twice");
    ERR2("{'site_id':'ny.example','metrics':['visitors',1],'date_range':'7d'}",
         "#/metrics/1: expected a metric name");
    ERR2("{'site_id':'ny.example','metrics':['a','a','a','a','a','a','a','a','a','a','a','a',"
         "'a','a','a','a','a'],'date_range':'7d'}",
         "#/metrics: expected a list of 1 to 16");
}

TEST(metric_requirements)
{
    ERR2("{'site_id':'ny.example','metrics':['percentage'],'date_range':'7d'}",
         "#/metrics/0: metric \"percentage\" requires non-empty dimensions");
    ERR2("{'site_id':'ny.example','metrics':['visitors','conversion_rate'],'date_range':'7d'}",
         "#/metrics/1: metric \"conversion_rate\" requires an event:goal filter or dimension");
    ERR2("{'site_id':'ny.example','metrics':['group_conversion_rate'],'date_range':'7d',"
         "'dimensions':['visit:source']}",
         "#/metrics/0: metric \"group_conversion_rate\" requires an event:goal");
    ERR2("{'site_id':'ny.example','metrics':['time_on_page'],'date_range':'7d'}",
         "#/metrics/0: metric \"time_on_page\" requires an event:page filter or dimension");
    ERR2("{'site_id':'ny.example','metrics':['visitors','bounce_rate'],'date_range':'7d',"
         "'dimensions':['event:page']}",
         "#/metrics/1: session metric \"bounce_rate\" cannot be mixed with the event "
         "dimension \"event:page\"");
    ERR2("{'site_id':'ny.example','metrics':['views_per_visit'],'date_range':'7d',"
         "'dimensions':['visit:source','event:props:plan']}",
         "dimension \"event:props:plan\"");
    ERR2("{'site_id':'ny.example','metrics':['visit_duration'],'date_range':'7d',"
         "'dimensions':['event:goal']}",
         "session metric \"visit_duration\"");
    /* Satisfied: a goal filter anywhere (under or/not too), a goal or page dimension, session
     * metrics with visit and time dimensions, revenue without a goal, percentage with time. */
    const char *ok[] = {
        "{'site_id':'ny.example','metrics':['conversion_rate'],'date_range':'7d',"
        "'filters':[['or',[['is','visit:country',['US']],['not',['is','event:goal',"
        "['Signup']]]]]]}",
        "{'site_id':'ny.example','metrics':['conversion_rate','group_conversion_rate'],"
        "'date_range':'7d','dimensions':['event:goal']}",
        "{'site_id':'ny.example','metrics':['time_on_page'],'date_range':'7d',"
        "'dimensions':['event:page']}",
        "{'site_id':'ny.example','metrics':['time_on_page'],'date_range':'7d',"
        "'filters':[['contains','event:page',['/blog']]]}",
        "{'site_id':'ny.example','metrics':['bounce_rate','views_per_visit','visit_duration'],"
        "'date_range':'7d','dimensions':['visit:source','time:day']}",
        "{'site_id':'ny.example','metrics':['bounce_rate'],'date_range':'7d',"
        "'filters':[['is','event:page',['/']]]}",
        "{'site_id':'ny.example','metrics':['total_revenue','average_revenue'],"
        "'date_range':'7d'}",
        "{'site_id':'ny.example','metrics':['percentage'],'date_range':'7d',"
        "'dimensions':['time']}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        query_free(OK2(ok[i]));
}

/* ---- top level ---- */

TEST(document_errors)
{
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d','foo':1}",
         "#: unknown key \"foo\"; accepted: site_id, metrics, date_range, dimensions, filters, "
         "order_by, include, pagination");
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d','date_range':'day'}",
         "#/date_range: the key appears twice");
    ERR2("{'metrics':['visitors'],'date_range':'7d'}", "#/site_id: required");
    ERR2("{'site_id':'','metrics':['visitors'],'date_range':'7d'}", "#/site_id: expected");
    ERR2("{'site_id':'ny.example','metrics':['visitors']}", "#/date_range: required");
    ERR2("[1,2]", "#: expected a JSON object");
    ERR2("{'site_id':'ny.example',", "#: invalid JSON");
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d'} x",
         "#: unexpected bytes after the JSON document");
    ERR2("", "#: expected a JSON query document");
    err2_("{'site_id':'nope.example','metrics':['visitors'],'date_range':'7d'}", NOW, TALLY_ENOENT,
          "#/site_id: unknown site \"nope.example\"", __LINE__);
    /* Too big. */
    static char big[QUERY_BODY_BYTES_MAX + 64];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = 0;
    memcpy(big, "{}", 2);
    struct query *q = NULL;
    ASSERT_EQ(query_parse_v2(big, strlen(big), NOW, site_cb, NULL, &q, g_err, sizeof g_err),
              TALLY_EINVAL);
    ASSERT_TRUE(q == NULL);
    ASSERT_TRUE(strstr(g_err, "at most 65536") != NULL);
    /* Trailing whitespace is fine; a control byte in an echoed name is masked. */
    const char *j =
        "{\"site_id\":\"ny.example\",\"metrics\":[\"visitors\"],\"date_range\":\"7d\"}\n ";
    ASSERT_EQ(query_parse_v2(j, strlen(j), NOW, site_cb, NULL, &q, g_err, sizeof g_err), 0);
    query_free(q);
    ERR2("{'site_id':'ny.example','metrics':['vis\\ttors'],'date_range':'7d'}",
         "unknown metric \"vis?tors\"");
    /* A NULL error buffer is allowed. */
    j = J("{'site_id':'ny.example'}");
    ASSERT_EQ(query_parse_v2(j, strlen(j), NOW, site_cb, NULL, &q, NULL, 0), TALLY_EINVAL);
}

TEST(goals_are_copied)
{
    struct query *q = OK2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'day'}");
    ASSERT_EQ(q->ngoals, 2);
    ASSERT_TRUE(q->goals != ny_goals);
    ASSERT_TRUE(q->goals[0] != goal_signup);
    ASSERT_STREQ(q->goals[0], "event:Signup");
    ASSERT_STREQ(q->goals[1], "page:/pricing");
    ASSERT_STREQ(q->site, "ny.example");
    ASSERT_STREQ(tz_name(q->zone), "America/New_York");
    query_free(q);
    q = OK2("{'site_id':'utc.example','metrics':['visitors'],'date_range':'day'}");
    ASSERT_EQ(q->ngoals, 0);
    ASSERT_STREQ(q->currency, "EUR"); /* the default when the callback sets none */
    query_free(q);
    query_free(NULL);
}

/* ---- date ranges ---- */

TEST(relative_ranges_new_york)
{
    /* Today in New York is 2024-03-15 (EDT since 2024-03-10). */
    struct query *q = range_q("ny.example", "'day'", NOW);
    ASSERT_RANGE(q->range, "2024-03-15T04:00:00Z", "2024-03-15T12:00:00Z"); /* clamped */
    ASSERT_EQ(q->realtime, false);
    query_free(q);
    q = range_q("ny.example", "'7d'", NOW); /* 03-08 .. 03-14, across the DST change */
    ASSERT_RANGE(q->range, "2024-03-08T05:00:00Z", "2024-03-15T04:00:00Z");
    query_free(q);
    q = range_q("ny.example", "'28d'", NOW);
    ASSERT_RANGE(q->range, "2024-02-16T05:00:00Z", "2024-03-15T04:00:00Z");
    query_free(q);
    q = range_q("ny.example", "'30d'", NOW);
    ASSERT_RANGE(q->range, "2024-02-14T05:00:00Z", "2024-03-15T04:00:00Z");
    query_free(q);
    q = range_q("ny.example", "'91d'", NOW);
    ASSERT_RANGE(q->range, "2023-12-15T05:00:00Z", "2024-03-15T04:00:00Z");
    query_free(q);
    q = range_q("ny.example", "'month'", NOW);
    ASSERT_RANGE(q->range, "2024-03-01T05:00:00Z", "2024-03-15T12:00:00Z");
    query_free(q);
    q = range_q("ny.example", "'6mo'", NOW); /* 2023-09-01 .. 2024-02-29 */
    ASSERT_RANGE(q->range, "2023-09-01T04:00:00Z", "2024-03-01T05:00:00Z");
    query_free(q);
    q = range_q("ny.example", "'12mo'", NOW); /* 2023-03-01 .. 2024-02-29 */
    ASSERT_RANGE(q->range, "2023-03-01T05:00:00Z", "2024-03-01T05:00:00Z");
    query_free(q);
    q = range_q("ny.example", "'year'", NOW);
    ASSERT_RANGE(q->range, "2024-01-01T05:00:00Z", "2024-03-15T12:00:00Z");
    query_free(q);
    q = range_q("ny.example", "'all'", NOW);
    ASSERT_EQ(q->range.from_ms, 0);
    ASSERT_EQ(q->range.to_ms, NOW);
    query_free(q);
    q = range_q("ny.example", "'realtime'", NOW);
    ASSERT_EQ(q->range.from_ms, NOW - 5 * 60 * 1000);
    ASSERT_EQ(q->range.to_ms, NOW);
    ASSERT_EQ(q->realtime, true);
    query_free(q);
    /* Late evening in New York is already the next day in UTC: today is still the 15th. */
    q = range_q("ny.example", "'day'", T("2024-03-16T03:30:00Z"));
    ASSERT_RANGE(q->range, "2024-03-15T04:00:00Z", "2024-03-16T03:30:00Z");
    query_free(q);
    /* January: 6mo reaches into the previous year. */
    q = range_q("ny.example", "'6mo'", T("2024-01-10T17:00:00Z"));
    ASSERT_RANGE(q->range, "2023-07-01T04:00:00Z", "2024-01-01T05:00:00Z");
    query_free(q);
}

TEST(relative_ranges_kolkata)
{
    /* 2024-03-15T20:00Z is 2024-03-16 01:30 in Kolkata (+05:30): today is the 16th. */
    int64_t now = T("2024-03-15T20:00:00Z");
    struct query *q = range_q("in.example", "'day'", now);
    ASSERT_RANGE(q->range, "2024-03-15T18:30:00Z", "2024-03-15T20:00:00Z");
    query_free(q);
    q = range_q("in.example", "'7d'", now); /* 03-09 .. 03-15 */
    ASSERT_RANGE(q->range, "2024-03-08T18:30:00Z", "2024-03-15T18:30:00Z");
    query_free(q);
    q = range_q("in.example", "'month'", now);
    ASSERT_RANGE(q->range, "2024-02-29T18:30:00Z", "2024-03-15T20:00:00Z");
    query_free(q);
    q = range_q("in.example", "['2024-01-01','2024-01-31']", now);
    ASSERT_RANGE(q->range, "2023-12-31T18:30:00Z", "2024-01-31T18:30:00Z");
    query_free(q);
    q = range_q("utc.example", "['2024-01-01','2024-01-31']", now);
    ASSERT_RANGE(q->range, "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z");
    query_free(q);
}

TEST(date_lists_and_dst_days)
{
    /* Spring forward: a 23-hour day; fall back: a 25-hour day. Both are "hour" for "time". */
    struct query *q = OK2("{'site_id':'ny.example','metrics':['visitors'],"
                          "'date_range':['2024-03-10','2024-03-10'],'dimensions':['time']}");
    ASSERT_RANGE(q->range, "2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z");
    ASSERT_EQ(q->dims[0].time, QT_HOUR);
    query_free(q);
    q = OK2("{'site_id':'ny.example','metrics':['visitors'],"
            "'date_range':['2023-11-05','2023-11-05'],'dimensions':['time']}");
    ASSERT_RANGE(q->range, "2023-11-05T04:00:00Z", "2023-11-06T05:00:00Z");
    ASSERT_EQ(q->dims[0].time, QT_HOUR);
    query_free(q);
    /* Partly in the future: clamped to now; wholly in the future: empty. */
    q = range_q("ny.example", "['2024-03-01','2024-12-31']", NOW);
    ASSERT_RANGE(q->range, "2024-03-01T05:00:00Z", "2024-03-15T12:00:00Z");
    query_free(q);
    q = range_q("ny.example", "['2025-01-01','2025-01-02']", NOW);
    ASSERT_RANGE(q->range, "2025-01-01T05:00:00Z", "2025-01-01T05:00:00Z");
    query_free(q);
    /* Leap day. */
    q = range_q("utc.example", "['2024-02-29','2024-02-29']", NOW);
    ASSERT_RANGE(q->range, "2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z");
    query_free(q);
}

TEST(datetime_ranges)
{
    struct query *q =
        range_q("ny.example", "['2024-01-01T12:00:00+02:00','2024-01-01T15:59:59+02:00']", NOW);
    ASSERT_RANGE(q->range, "2024-01-01T10:00:00Z", "2024-01-01T14:00:00Z");
    query_free(q);
    q = range_q("ny.example", "['2024-01-01T10:00:00Z','2024-01-01T10:30:59.250Z']", NOW);
    ASSERT_EQ(q->range.from_ms, T("2024-01-01T10:00:00Z"));
    ASSERT_EQ(q->range.to_ms, T("2024-01-01T10:30:59.251Z"));
    query_free(q);
    /* "time" over two hours: hour buckets. */
    q = OK2("{'site_id':'ny.example','metrics':['visitors'],'dimensions':['time'],"
            "'date_range':['2024-01-01T10:00:00Z','2024-01-01T11:59:59Z']}");
    ASSERT_EQ(q->dims[0].time, QT_HOUR);
    query_free(q);
}

TEST(date_range_errors)
{
    const char *pre = "{'site_id':'ny.example','metrics':['visitors'],'date_range':";
    static const struct {
        const char *range, *want;
    } bad[] = {
        {"'8d'", "#/date_range: unknown date_range \"8d\"; accepted: \"day\", \"7d\", \"28d\", "
                 "\"30d\", \"91d\", \"month\", \"6mo\", \"12mo\", \"year\", \"all\""},
        {"7", "#/date_range: expected one of"},
        {"['2024-01-01']", "#/date_range: expected a list of two"},
        {"['2024-01-01','2024-01-02','2024-01-03']", "#/date_range: expected a list of two"},
        {"['2024-13-01','2024-12-31']", "#/date_range/0: invalid date \"2024-13-01\""},
        {"['2024-01-01','2024-02-30']", "#/date_range/1: invalid date \"2024-02-30\""},
        {"['1969-12-31','2024-01-01']", "#/date_range/0: invalid date"},
        {"['2024-02-01','2024-01-01']", "#/date_range: the first date is after the last"},
        {"['2024-01-01','2024-01-01T10:00:00Z']", "both ends must be dates"},
        {"['2024-01-01T10:00:00','2024-01-01T11:00:00']", "#/date_range/0: invalid date-time"},
        {"['2024-01-01T10:00:00Z','2024-01-01T09:00:00Z']", "the first date-time is after"},
        {"['2024-1-01','2024-01-01']", "#/date_range/0: invalid date"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char js[512];
        snprintf(js, sizeof js, "%s%s}", pre, bad[i].range);
        err2_(js, NOW, TALLY_EINVAL, bad[i].want, __LINE__);
    }
}

/* ---- time granularity ---- */

TEST(time_auto_granularity)
{
    static const struct {
        const char *range;
        enum q_time want;
    } cases[] = {
        {"'day'", QT_HOUR},
        {"'7d'", QT_DAY},
        {"'28d'", QT_DAY},
        {"'30d'", QT_DAY},
        {"'91d'", QT_DAY},
        {"'month'", QT_DAY},
        {"'6mo'", QT_MONTH},
        {"'12mo'", QT_MONTH},
        {"'year'", QT_MONTH},
        {"'all'", QT_MONTH},
        {"'realtime'", QT_MINUTE},
        {"['2024-01-01','2024-03-31']", QT_DAY},
        {"['2024-01-01','2024-06-30']", QT_MONTH},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char js[256];
        snprintf(js, sizeof js,
                 "{'site_id':'ny.example','metrics':['visitors'],'date_range':%s,"
                 "'dimensions':['time']}",
                 cases[i].range);
        struct query *q = OK2(js);
        ASSERT_EQ(q->dims[0].time, cases[i].want);
        /* Default order: time ascending, then the first metric descending. */
        ASSERT_EQ(q->norder, 2);
        ASSERT_EQ(q->order[0].is_metric, false);
        ASSERT_EQ(q->order[0].index, 0);
        ASSERT_EQ(q->order[0].desc, false);
        ASSERT_EQ(q->order[1].is_metric, true);
        ASSERT_EQ(q->order[1].index, QM_VISITORS);
        ASSERT_EQ(q->order[1].desc, true);
        query_free(q);
    }
}

TEST(time_bucket_limit)
{
    /* A year of minutes (527k) is refused; a week of minutes and a year of hours are not. */
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':['2023-01-01',"
         "'2023-12-31'],'dimensions':['visit:source','time:minute']}",
         "#/dimensions/1: time:minute over the date_range gives about 525602 buckets; at most "
         "100000");
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'all',"
         "'dimensions':['time:hour']}",
         "#/dimensions/0: time:hour over the date_range");
    query_free(OK2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
                   "'dimensions':['time:minute']}"));
    query_free(OK2("{'site_id':'ny.example','metrics':['visitors'],'date_range':"
                   "['2023-01-01','2023-12-31'],'dimensions':['time:hour']}"));
    /* The comparison range counts too. */
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
         "'dimensions':['time:minute'],'include':{'comparisons':{'mode':'custom',"
         "'date_range':['2022-01-01','2023-01-01']}}}",
         "time:minute over the comparison range");
}

/* ---- comparisons ---- */

static struct query *cmp_q(const char *range, const char *cmp)
{
    char js[512];
    snprintf(js, sizeof js,
             "{'site_id':'ny.example','metrics':['visitors'],'date_range':%s,"
             "'include':{'comparisons':%s}}",
             range, cmp);
    return ok2_(js, NOW, __LINE__);
}

TEST(comparisons)
{
    /* 7d = 03-08 .. 03-14; previous = 03-01 .. 03-07. */
    struct query *q = cmp_q("'7d'", "{'mode':'previous_period'}");
    ASSERT_EQ(q->cmp, Q_CMP_PREVIOUS);
    ASSERT_RANGE(q->cmp_range, "2024-03-01T05:00:00Z", "2024-03-08T05:00:00Z");
    query_free(q);
    /* Year over year: 2023-03-08 .. 2023-03-14 (EDT from 2023-03-12). */
    q = cmp_q("'7d'", "{'mode':'year_over_year'}");
    ASSERT_EQ(q->cmp, Q_CMP_YEAR);
    ASSERT_RANGE(q->cmp_range, "2023-03-08T05:00:00Z", "2023-03-15T04:00:00Z");
    query_free(q);
    /* 2024-03-08 is a Friday, 2023-03-08 a Wednesday: +2 days -> 2023-03-10 .. 03-16. */
    q = cmp_q("'7d'", "{'mode':'year_over_year','match_day_of_week':true}");
    ASSERT_EQ(q->match_day_of_week, true);
    ASSERT_RANGE(q->cmp_range, "2023-03-10T05:00:00Z", "2023-03-17T04:00:00Z");
    query_free(q);
    /* Previous period of a 7-day range already starts on the same weekday. */
    q = cmp_q("'7d'", "{'mode':'previous_period','match_day_of_week':true}");
    ASSERT_RANGE(q->cmp_range, "2024-03-01T05:00:00Z", "2024-03-08T05:00:00Z");
    query_free(q);
    /* Month to date (15 days) against the 15 days before: 02-15 .. 02-29. */
    q = cmp_q("'month'", "{'mode':'previous_period'}");
    ASSERT_RANGE(q->cmp_range, "2024-02-15T05:00:00Z", "2024-03-01T05:00:00Z");
    query_free(q);
    /* Today (so far) against all of yesterday. */
    q = cmp_q("'day'", "{'mode':'previous_period'}");
    ASSERT_RANGE(q->cmp_range, "2024-03-14T04:00:00Z", "2024-03-15T04:00:00Z");
    query_free(q);
    /* 29 February a year back is 28 February. */
    q = cmp_q("['2024-02-29','2024-02-29']", "{'mode':'year_over_year'}");
    ASSERT_RANGE(q->cmp_range, "2023-02-28T05:00:00Z", "2023-03-01T05:00:00Z");
    query_free(q);
    /* Custom: dates and date-times; clamped to now. */
    q = cmp_q("'7d'", "{'mode':'custom','date_range':['2023-01-01','2023-01-31']}");
    ASSERT_EQ(q->cmp, Q_CMP_CUSTOM);
    ASSERT_RANGE(q->cmp_range, "2023-01-01T05:00:00Z", "2023-02-01T05:00:00Z");
    query_free(q);
    q = cmp_q("'7d'", "{'mode':'custom','date_range':['2024-03-10','2024-03-20']}");
    ASSERT_RANGE(q->cmp_range, "2024-03-10T05:00:00Z", "2024-03-15T12:00:00Z");
    query_free(q);
    /* Instants: the same length immediately before. */
    q = cmp_q("['2024-01-01T10:00:00Z','2024-01-01T13:59:59Z']", "{'mode':'previous_period'}");
    ASSERT_RANGE(q->cmp_range, "2024-01-01T06:00:00Z", "2024-01-01T10:00:00Z");
    query_free(q);
    q = cmp_q("['2024-01-01T10:00:00Z','2024-01-01T13:59:59Z']", "{'mode':'year_over_year'}");
    ASSERT_RANGE(q->cmp_range, "2023-01-01T10:00:00Z", "2023-01-01T14:00:00Z");
    query_free(q);
    q = cmp_q("'realtime'", "{'mode':'previous_period'}");
    ASSERT_EQ(q->cmp_range.from_ms, NOW - 10 * 60 * 1000);
    ASSERT_EQ(q->cmp_range.to_ms, NOW - 5 * 60 * 1000);
    query_free(q);
    q = OK2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d'}");
    ASSERT_EQ(q->cmp, Q_CMP_NONE);
    query_free(q);
}

TEST(comparison_errors)
{
    const char *pre = "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
                      "'include':{'comparisons':";
    static const struct {
        const char *cmp, *want;
    } bad[] = {
        {"{'mode':'last_year'}", "#/include/comparisons/mode: expected one of "
                                 "\"previous_period\", \"year_over_year\", \"custom\""},
        {"{}", "#/include/comparisons/mode: expected one of"},
        {"{'mode':'custom'}", "#/include/comparisons/date_range: required with mode"},
        {"{'mode':'custom','date_range':'7d'}", "#/include/comparisons/date_range: expected"},
        {"{'mode':'custom','date_range':['2024-01-05','2024-01-01']}",
         "#/include/comparisons/date_range: the first date is after the last"},
        {"{'mode':'previous_period','date_range':['2024-01-01','2024-01-02']}",
         "#/include/comparisons/date_range: only valid with mode \"custom\""},
        {"{'mode':'previous_period','match_day_of_week':1}",
         "#/include/comparisons/match_day_of_week: expected true or false"},
        {"{'mode':'previous_period','x':1}",
         "#/include/comparisons: unknown key \"x\"; accepted: mode, date_range"},
        {"true", "#/include/comparisons: expected an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char js[512];
        snprintf(js, sizeof js, "%s%s}}", pre, bad[i].cmp);
        err2_(js, NOW, TALLY_EINVAL, bad[i].want, __LINE__);
    }
    ERR2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'all',"
         "'include':{'comparisons':{'mode':'previous_period'}}}",
         "#/include/comparisons: comparisons are not available with date_range \"all\"");
}

/* ---- include, pagination, order ---- */

TEST(include_and_pagination)
{
    struct query *q = OK2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
                          "'dimensions':['time:day'],'include':{'time_labels':true,"
                          "'total_rows':true,'imports':false},"
                          "'pagination':{'limit':50,'offset':100}}");
    ASSERT_EQ(q->time_labels, true);
    ASSERT_EQ(q->total_rows, true);
    ASSERT_EQ(q->limit, 50);
    ASSERT_EQ(q->offset, 100);
    query_free(q);
    q = OK2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
            "'pagination':{'limit':10000,'offset':1000000}}");
    ASSERT_EQ(q->limit, 10000);
    ASSERT_EQ(q->offset, 1000000);
    query_free(q);
    const char *pre = "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',";
    static const struct {
        const char *rest, *want;
    } bad[] = {
        {"'include':{'time_labels':true}}", "#/include/time_labels: requires a time dimension"},
        {"'include':{'time_labels':1}}", "#/include/time_labels: expected true or false"},
        {"'include':{'total_rows':'yes'}}", "#/include/total_rows: expected true or false"},
        {"'include':{'imports':null}}", "#/include/imports: expected true or false"},
        {"'include':{'labels':true}}",
         "#/include: unknown key \"labels\"; accepted: time_labels, total_rows, comparisons"},
        {"'include':[]}", "#/include: expected an object"},
        {"'pagination':{'limit':0}}", "#/pagination/limit: expected an integer 1..10000"},
        {"'pagination':{'limit':10001}}", "#/pagination/limit: expected an integer 1..10000"},
        {"'pagination':{'limit':1.5}}", "#/pagination/limit: expected an integer"},
        {"'pagination':{'limit':'10'}}", "#/pagination/limit: expected an integer"},
        {"'pagination':{'offset':-1}}", "#/pagination/offset: expected an integer 0..1000000"},
        {"'pagination':{'offset':1000001}}", "#/pagination/offset: expected an integer"},
        {"'pagination':{'page':2}}", "#/pagination: unknown key \"page\"; accepted: limit, offset"},
        {"'pagination':5}", "#/pagination: expected an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char js[512];
        snprintf(js, sizeof js, "%s%s", pre, bad[i].rest);
        err2_(js, NOW, TALLY_EINVAL, bad[i].want, __LINE__);
    }
}

TEST(order_by)
{
    struct query *q = OK2("{'site_id':'ny.example','metrics':['visitors','pageviews'],"
                          "'date_range':'7d','dimensions':['visit:country_name','time'],"
                          "'order_by':[['pageviews','asc'],['visit:country_name','desc'],"
                          "['time','asc']]}");
    ASSERT_EQ(q->norder, 3);
    ASSERT_EQ(q->order[0].is_metric, true);
    ASSERT_EQ(q->order[0].index, QM_PAGEVIEWS);
    ASSERT_EQ(q->order[0].desc, false);
    ASSERT_EQ(q->order[1].is_metric, false);
    ASSERT_EQ(q->order[1].index, 0);
    ASSERT_EQ(q->order[1].desc, true);
    ASSERT_EQ(q->order[2].index, 1);
    query_free(q);
    /* Defaults: a breakdown by its first metric descending; an aggregate has no order. */
    q = OK2("{'site_id':'ny.example','metrics':['pageviews','visitors'],'date_range':'7d',"
            "'dimensions':['visit:source']}");
    ASSERT_EQ(q->norder, 1);
    ASSERT_EQ(q->order[0].is_metric, true);
    ASSERT_EQ(q->order[0].index, QM_PAGEVIEWS);
    ASSERT_EQ(q->order[0].desc, true);
    query_free(q);
    q = OK2("{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d'}");
    ASSERT_EQ(q->norder, 0);
    query_free(q);
    const char *pre = "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
                      "'dimensions':['visit:source'],'order_by':";
    static const struct {
        const char *order, *want;
    } bad[] = {
        {"[['pageviews','desc']]", "#/order_by/0/0: \"pageviews\" is not a metric or dimension "
                                   "of this query; accepted: visitors, visit:source"},
        {"[['visit:browser','desc']]", "#/order_by/0/0: \"visit:browser\" is not a metric"},
        {"[['visitors','down']]", "#/order_by/0/1: expected \"asc\" or \"desc\""},
        {"[['visitors']]", "#/order_by/0: expected [metric_or_dimension"},
        {"[['visitors','desc'],['visitors','asc']]", "#/order_by/1: \"visitors\" is ordered "
                                                     "twice"},
        {"[]", "#/order_by: expected a list of 1 to 8"},
        {"'visitors'", "#/order_by: expected a list"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char js[512];
        snprintf(js, sizeof js, "%s%s}", pre, bad[i].order);
        err2_(js, NOW, TALLY_EINVAL, bad[i].want, __LINE__);
    }
}

/* ---- filters ---- */

static struct query *filter_q(const char *filters)
{
    char js[8192];
    snprintf(js, sizeof js,
             "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d','filters':%s}",
             filters);
    return ok2_(js, NOW, __LINE__);
}

static bool M(const struct q_filter *f, const char *v)
{
    return q_leaf_match(f, v, strlen(v));
}

TEST(filter_operators)
{
    struct query *q = filter_q(
        "[['is','visit:country',['US','(none)']],['is_not','event:page',['/pricing']],"
        "['contains','event:page',['/login','blog']],['contains_not','event:page',['docs']],"
        "['matches','event:page',['^/user/\\\\d+$']],['matches_not','visit:source',['^Goo']],"
        "['is','visit:city',[4347778]]]");
    ASSERT_TRUE(q->filter != NULL);
    ASSERT_EQ(q->filter->op, QF_AND);
    ASSERT_EQ(q->filter->nkids, 7);
    const struct q_filter *k = q->filter->kids;
    ASSERT_EQ(k[0].op, QF_IS);
    ASSERT_EQ(k[0].dim.field, ROLLUP_DIM_COUNTRY);
    ASSERT_EQ(k[0].nvalues, 2);
    ASSERT_STREQ(k[0].values[1], ""); /* (none) */
    ASSERT_EQ(k[0].lens[1], 0);
    ASSERT_TRUE(M(&k[0], "US"));
    ASSERT_TRUE(M(&k[0], ""));
    ASSERT_TRUE(!M(&k[0], "us"));
    ASSERT_TRUE(!M(&k[0], "USA"));
    ASSERT_TRUE(q_leaf_match(&k[0], NULL, 0)); /* NULL is "" */
    ASSERT_EQ(k[1].op, QF_IS_NOT);
    ASSERT_TRUE(!M(&k[1], "/pricing"));
    ASSERT_TRUE(M(&k[1], "/pricing/"));
    ASSERT_EQ(k[2].op, QF_CONTAINS);
    ASSERT_TRUE(M(&k[2], "/a/login/b"));
    ASSERT_TRUE(M(&k[2], "/blog"));
    ASSERT_TRUE(!M(&k[2], "/Blog"));
    ASSERT_TRUE(!M(&k[2], "/"));
    ASSERT_EQ(k[3].op, QF_CONTAINS_NOT);
    ASSERT_TRUE(!M(&k[3], "/docs/x"));
    ASSERT_TRUE(M(&k[3], "/doc"));
    ASSERT_EQ(k[4].op, QF_MATCHES);
    ASSERT_TRUE(k[4].re != NULL && k[4].re[0] != NULL);
    ASSERT_STREQ(k[4].values[0], "^/user/\\d+$");
    ASSERT_TRUE(M(&k[4], "/user/123"));
    ASSERT_TRUE(!M(&k[4], "/user/12a"));
    ASSERT_TRUE(!M(&k[4], "/x/user/1"));
    ASSERT_EQ(k[5].op, QF_MATCHES_NOT);
    ASSERT_TRUE(!M(&k[5], "Google"));
    ASSERT_TRUE(M(&k[5], "DuckDuckGo"));
    ASSERT_STREQ(k[6].values[0], "4347778");
    /* Unanchored like re2; invalid UTF-8 in a subject is tolerated. */
    query_free(q);
    q = filter_q("[['matches','event:page',['blog']]]");
    ASSERT_TRUE(M(&q->filter->kids[0], "/x/blog/y"));
    ASSERT_TRUE(M(&q->filter->kids[0], "\xff\xfe/blog"));
    ASSERT_TRUE(!M(&q->filter->kids[0], "\xff\xfe"));
    query_free(q);
    /* (none) is literal for contains. */
    q = filter_q("[['contains','visit:source',['(none)']]]");
    ASSERT_STREQ(q->filter->kids[0].values[0], "(none)");
    ASSERT_TRUE(!M(&q->filter->kids[0], ""));
    query_free(q);
}

TEST(filter_case_insensitive)
{
    struct query *q =
        filter_q("[['contains','visit:country_name',['united','EST'],{'case_sensitive':false}],"
                 "['is','visit:browser',['firefox'],{'case_sensitive':false}],"
                 "['is_not','visit:os',['mac'],{'case_sensitive':false}],"
                 "['is','visit:device',['Mobile'],{'case_sensitive':true}],"
                 "['matches','event:page',['^/BLOG'],{'case_sensitive':false}]]");
    const struct q_filter *k = q->filter->kids;
    ASSERT_EQ(k[0].case_insensitive, true);
    ASSERT_TRUE(M(&k[0], "United States"));
    ASSERT_TRUE(M(&k[0], "Estonia"));
    ASSERT_TRUE(M(&k[0], "bUNITEDx"));
    ASSERT_TRUE(!M(&k[0], "Germany"));
    ASSERT_TRUE(M(&k[1], "Firefox"));
    ASSERT_TRUE(M(&k[1], "FIREFOX"));
    ASSERT_TRUE(!M(&k[1], "Firefox2"));
    ASSERT_TRUE(!M(&k[2], "Mac"));
    ASSERT_TRUE(M(&k[2], "Windows"));
    ASSERT_EQ(k[3].case_insensitive, false);
    ASSERT_TRUE(!M(&k[3], "mobile"));
    ASSERT_EQ(k[4].case_insensitive, false); /* compiled caselessly instead */
    ASSERT_TRUE(M(&k[4], "/blog/post"));
    query_free(q);
}

TEST(filter_logic)
{
    struct query *q = filter_q(
        "[['or',[['is','visit:country_name',['Germany']],['is','visit:city_name',"
        "['Tallinn']]]],['not',['is','visit:country',['DE']]],"
        "['and',[['is','visit:browser',['Firefox']],['or',[['not',['contains','event:page',"
        "['x']]],['is','event:goal',['Signup','Visit /pricing']]]]]]]");
    const struct q_filter *f = q->filter;
    ASSERT_EQ(f->op, QF_AND);
    ASSERT_EQ(f->nkids, 3);
    ASSERT_EQ(f->kids[0].op, QF_OR);
    ASSERT_EQ(f->kids[0].nkids, 2);
    ASSERT_EQ(f->kids[0].kids[0].dim.field, ROLLUP_DIM_COUNTRY);
    ASSERT_EQ(f->kids[0].kids[1].dim.field, ROLLUP_DIM_CITY);
    ASSERT_EQ(f->kids[1].op, QF_NOT);
    ASSERT_EQ(f->kids[1].nkids, 1);
    ASSERT_EQ(f->kids[1].kids[0].op, QF_IS);
    const struct q_filter *a = &f->kids[2];
    ASSERT_EQ(a->op, QF_AND);
    ASSERT_EQ(a->kids[1].op, QF_OR);
    ASSERT_EQ(a->kids[1].kids[0].op, QF_NOT);
    ASSERT_EQ(a->kids[1].kids[0].kids[0].op, QF_CONTAINS);
    ASSERT_EQ(a->kids[1].kids[1].dim.field, Q_DIM_GOAL);
    ASSERT_STREQ(a->kids[1].kids[1].values[1], "Visit /pricing");
    query_free(q);
    /* An empty list is no filter. */
    q = filter_q("[]");
    ASSERT_TRUE(q->filter == NULL);
    query_free(q);
}

TEST(filter_errors)
{
    const char *pre = "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
                      "'filters':";
    static const struct {
        const char *filters, *want;
    } bad[] = {
        {"[['equals','visit:country',['US']]]",
         "#/filters/0/0: unknown operator \"equals\"; accepted: is, is_not, contains, "
         "contains_not, matches, matches_not, and, or, not"},
        {"[['is','visit:countri',['US']]]",
         "#/filters/0/1: unknown dimension \"visit:countri\"; accepted: event:goal"},
        {"[['is','time:day',['2024-01-01']]]",
         "#/filters/0/1: time dimensions cannot be used in filters"},
        {"[['is','segment',[1]]]", "#/filters/0/1: segments are not supported"},
        {"[['has_done',['is','event:name',['Signup']]]]",
         "#/filters/0/0: behavioral filters (has_done) are not supported"},
        {"[['is_not','event:goal',['Signup']]]",
         "#/filters/0/1: only the is and contains operators are valid for event:goal"},
        {"[['matches','event:goal',['Sign']]]", "only the is and contains operators"},
        {"[['is','visit:country',[]]]", "#/filters/0/2: expected a list of 1 to 100 values"},
        {"[['is','visit:country','US']]", "#/filters/0/2: expected a list of 1 to 100 values"},
        {"[['is','visit:country',['US',true]]]", "#/filters/0/2/1: expected a string"},
        {"[['is','visit:country',[1.5]]]", "#/filters/0/2/0: expected a string"},
        {"[['is','visit:country']]", "#/filters/0: expected [operator, dimension, [values...]]"},
        {"[['is','visit:country',['US'],{},5]]", "#/filters/0: expected [operator, dimension"},
        {"[['is','visit:country',['US'],{'case':false}]]",
         "#/filters/0/3: unknown modifier \"case\"; accepted: case_sensitive"},
        {"[['is','visit:country',['US'],{'case_sensitive':'no'}]]",
         "#/filters/0/3/case_sensitive: expected true or false"},
        {"[['is','visit:country',['US'],[]]]", "#/filters/0/3: expected an object of modifiers"},
        {"[['matches','event:page',['(unclosed']]]",
         "#/filters/0/2/0: invalid regular expression \"(unclosed\" at offset 9"},
        {"[['and',[['is','visit:os',['Mac']],['matches','event:page',['a[']]]]]",
         "#/filters/0/1/1/2/0: invalid regular expression"},
        {"[['matches','event:page',['\\\\C']]]", "#/filters/0/2/0: invalid regular expression"},
        {"[['and',[]]]", "#/filters/0/1: expected a non-empty list of filters"},
        {"[['or',['is','visit:os',['Mac']]]]", "#/filters/0/1/0: expected a filter"},
        {"[['not',['is','visit:os',['Mac']],1]]", "#/filters/0: expected [\"not\", filter]"},
        {"[['not','x']]", "#/filters/0/1: expected a filter"},
        {"[[1,'visit:os',['Mac']]]", "#/filters/0: expected a filter"},
        {"['is','visit:os',['Mac']]", "#/filters/0: expected a filter"},
        {"{}", "#/filters: expected a list of filters"},
        {"[['is','event:props:',['x']]]", "#/filters/0/1: a property key must be 1 to 300"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char js[1024];
        snprintf(js, sizeof js, "%s%s}", pre, bad[i].filters);
        err2_(js, NOW, TALLY_EINVAL, bad[i].want, __LINE__);
    }
}

TEST(filter_limits)
{
    char f[16384];
    /* Depth: 8 nested "not"s around a leaf is 9 levels. */
    strcpy(f, "[");
    for (int i = 0; i < 7; i++)
        strcat(f, "['not',");
    strcat(f, "['is','visit:os',['Mac']]");
    for (int i = 0; i < 7; i++)
        strcat(f, "]");
    strcat(f, "]");
    query_free(filter_q(f)); /* 8 levels: fine */
    char js[16384];
    strcpy(f, "[");
    for (int i = 0; i < 8; i++)
        strcat(f, "['not',");
    strcat(f, "['is','visit:os',['Mac']]");
    for (int i = 0; i < 8; i++)
        strcat(f, "]");
    strcat(f, "]");
    snprintf(js, sizeof js,
             "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d','filters':%s}", f);
    err2_(js, NOW, TALLY_EINVAL, "filters nest at most 8 levels deep", __LINE__);
    /* Nodes: 64 leaves are fine, 65 are not (also when spread over logical nodes). */
    strcpy(f, "[");
    for (int i = 0; i < 64; i++)
        strcat(f, i ? ",['is','visit:os',['Mac']]" : "['is','visit:os',['Mac']]");
    strcat(f, "]");
    query_free(filter_q(f));
    strcpy(f, "[['or',[");
    for (int i = 0; i < 64; i++)
        strcat(f, i ? ",['is','visit:os',['Mac']]" : "['is','visit:os',['Mac']]");
    strcat(f, "]]]");
    snprintf(js, sizeof js,
             "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d','filters':%s}", f);
    err2_(js, NOW, TALLY_EINVAL, "at most 64 filters and logical operators", __LINE__);
    /* Values: 100 fine, 101 not; a value of 1024 bytes fine, 1025 not. */
    strcpy(f, "[['is','visit:os',[");
    for (int i = 0; i < 101; i++)
        strcat(f, i ? ",'v'" : "'v'");
    strcat(f, "]]]");
    snprintf(js, sizeof js,
             "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d','filters':%s}", f);
    err2_(js, NOW, TALLY_EINVAL, "#/filters/0/2: expected a list of 1 to 100 values", __LINE__);
    char v[1100];
    memset(v, 'a', 1024);
    v[1024] = 0;
    snprintf(f, sizeof f, "[['contains','event:page',['%s']]]", v);
    query_free(filter_q(f));
    memset(v, 'a', 1025);
    v[1025] = 0;
    snprintf(js, sizeof js,
             "{'site_id':'ny.example','metrics':['visitors'],'date_range':'7d',"
             "'filters':[['contains','event:page',['%s']]]}",
             v);
    err2_(js, NOW, TALLY_EINVAL, "#/filters/0/2/0: a value is at most 1024 bytes", __LINE__);
}

TEST(regex_backtracking_is_bounded)
{
    /* A catastrophic pattern on a long subject ends (as no match) instead of hanging. */
    struct query *q = filter_q("[['matches','event:page',['^(a+)+$']]]");
    char s[200];
    memset(s, 'a', sizeof s - 2);
    s[sizeof s - 2] = '!';
    s[sizeof s - 1] = 0;
    ASSERT_TRUE(!M(&q->filter->kids[0], s));
    ASSERT_TRUE(M(&q->filter->kids[0], "aaaa"));
    query_free(q);
}

struct th_arg {
    const struct q_filter *f;
    int bad;
};

static void *match_thread(void *p)
{
    struct th_arg *a = p;
    char buf[64];
    for (int i = 0; i < 20000; i++) {
        int n = snprintf(buf, sizeof buf, "/user/%d", i);
        if (!q_leaf_match(a->f, buf, (size_t)n)) a->bad++;
        n = snprintf(buf, sizeof buf, "/user/%dx", i);
        if (q_leaf_match(a->f, buf, (size_t)n)) a->bad++;
    }
    return NULL;
}

TEST(match_from_threads)
{
    struct query *q = filter_q("[['matches','event:page',['^/user/\\\\d+$','^/u/']]]");
    pthread_t th[4];
    struct th_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct th_arg){&q->filter->kids[0], 0};
        ASSERT_EQ(pthread_create(&th[i], NULL, match_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(args[i].bad, 0);
    query_free(q);
}

/* ---- v1 ---- */

TEST(v1_aggregate)
{
    struct query *q = OK1(Q_API_V1_AGGREGATE, "site_id=ny.example");
    ASSERT_EQ(q->api, Q_API_V1_AGGREGATE);
    ASSERT_EQ(q->nmetrics, 1);
    ASSERT_EQ(q->metrics[0], QM_VISITORS);
    ASSERT_EQ(q->ndims, 0);
    ASSERT_EQ(q->norder, 0);
    /* Default period 30d: the 30 days ending today, 02-15 .. 03-15, clamped. */
    ASSERT_RANGE(q->range, "2024-02-15T05:00:00Z", "2024-03-15T12:00:00Z");
    query_free(q);
    q = OK1(Q_API_V1_AGGREGATE,
            "site_id=ny.example&period=7d&date=2024-01-10&metrics=visitors,pageviews,"
            "bounce_rate,visit_duration,views_per_visit,visits,events&compare=previous_period"
            "&with_imported=true");
    ASSERT_EQ(q->nmetrics, 7);
    ASSERT_EQ(q->metrics[4], QM_VIEWS_PER_VISIT);
    ASSERT_RANGE(q->range, "2024-01-04T05:00:00Z", "2024-01-11T05:00:00Z");
    ASSERT_EQ(q->cmp, Q_CMP_PREVIOUS);
    ASSERT_RANGE(q->cmp_range, "2023-12-28T05:00:00Z", "2024-01-04T05:00:00Z");
    query_free(q);
    static const struct {
        const char *qs, *from, *to;
    } periods[] = {
        {"period=day&date=2024-03-10", "2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z"},
        {"period=30d&date=2024-01-30", "2024-01-01T05:00:00Z", "2024-01-31T05:00:00Z"},
        {"period=month&date=2024-02-10", "2024-02-01T05:00:00Z", "2024-03-01T05:00:00Z"},
        {"period=6mo&date=2024-02-10", "2023-09-01T04:00:00Z", "2024-03-01T05:00:00Z"},
        {"period=12mo&date=2024-02-10", "2023-03-01T05:00:00Z", "2024-03-01T05:00:00Z"},
        {"period=custom&date=2024-01-01,2024-01-31", "2024-01-01T05:00:00Z",
         "2024-02-01T05:00:00Z"},
        {"period=month", "2024-03-01T05:00:00Z", "2024-03-15T12:00:00Z"},
    };
    for (size_t i = 0; i < sizeof periods / sizeof periods[0]; i++) {
        char qs[256];
        snprintf(qs, sizeof qs, "site_id=ny.example&%s", periods[i].qs);
        q = OK1(Q_API_V1_AGGREGATE, qs);
        ASSERT_RANGE(q->range, periods[i].from, periods[i].to);
        query_free(q);
    }
}

TEST(v1_filters)
{
    struct query *q = OK1(Q_API_V1_AGGREGATE,
                          "site_id=ny.example&filters=visit:browser==Firefox;visit:country==FR|DE"
                          ";visit:os!=Mac;event:page==/blog/*;visit:utm_campaign==campaign\\|one"
                          ";event:goal==Signup|Visit /register;visit:source==(none)");
    const struct q_filter *f = q->filter;
    ASSERT_EQ(f->op, QF_AND);
    ASSERT_EQ(f->nkids, 7);
    ASSERT_EQ(f->kids[0].op, QF_IS);
    ASSERT_EQ(f->kids[0].dim.field, ROLLUP_DIM_BROWSER);
    ASSERT_STREQ(f->kids[0].values[0], "Firefox");
    ASSERT_EQ(f->kids[1].nvalues, 2);
    ASSERT_STREQ(f->kids[1].values[1], "DE");
    ASSERT_EQ(f->kids[2].op, QF_IS_NOT);
    ASSERT_TRUE(M(&f->kids[2], "Windows"));
    ASSERT_EQ(f->kids[3].op, QF_MATCHES);
    ASSERT_STREQ(f->kids[3].values[0], "^/blog/.*$");
    ASSERT_TRUE(M(&f->kids[3], "/blog/a/b"));
    ASSERT_TRUE(!M(&f->kids[3], "/blogs"));
    ASSERT_EQ(f->kids[4].nvalues, 1);
    ASSERT_STREQ(f->kids[4].values[0], "campaign|one");
    ASSERT_EQ(f->kids[5].dim.field, Q_DIM_GOAL);
    ASSERT_STREQ(f->kids[5].values[1], "Visit /register");
    ASSERT_STREQ(f->kids[6].values[0], "");
    query_free(q);
    /* A wildcard escapes regex characters and works with != too. */
    q = OK1(Q_API_V1_AGGREGATE, "site_id=ny.example&filters=event:page!=/a.b/*(x)");
    ASSERT_EQ(q->filter->kids[0].op, QF_MATCHES_NOT);
    ASSERT_TRUE(!M(&q->filter->kids[0], "/a.b/zz(x)"));
    ASSERT_TRUE(M(&q->filter->kids[0], "/aXb/zz(x)"));
    query_free(q);
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&filters=event:goal!=Signup",
         "filters: != is not supported for event:goal");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&filters=visit:browser", "filters: expected");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&filters=visit:browser==Firefox;",
         "filters: expected");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&filters=visit:sauce==x",
         "filters: unknown dimension \"visit:sauce\"");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&filters=time:day==2024-01-01",
         "time dimensions cannot be used in filters");
}

TEST(v1_breakdown_and_timeseries)
{
    struct query *q = OK1(Q_API_V1_BREAKDOWN,
                          "site_id=ny.example&period=6mo&property=visit:source&metrics=visitors,"
                          "bounce_rate&limit=5&page=3");
    ASSERT_EQ(q->api, Q_API_V1_BREAKDOWN);
    ASSERT_EQ(q->ndims, 1);
    ASSERT_EQ(q->dims[0].field, ROLLUP_DIM_SOURCE);
    ASSERT_EQ(q->limit, 5);
    ASSERT_EQ(q->offset, 10);
    ASSERT_EQ(q->norder, 1);
    ASSERT_EQ(q->order[0].is_metric, true);
    ASSERT_EQ(q->order[0].desc, true);
    query_free(q);
    q = OK1(Q_API_V1_BREAKDOWN, "site_id=ny.example&property=event:props:method&metrics="
                                "visitors,conversion_rate&filters=event:goal==Download");
    ASSERT_EQ(q->dims[0].field, ROLLUP_DIM_PROP);
    ASSERT_STREQ(q->dims[0].prop, "method");
    ASSERT_EQ(q->limit, 100);
    ASSERT_EQ(q->offset, 0);
    query_free(q);
    /* v1 allows session metrics with event:page breakdowns and time_on_page with it. */
    query_free(OK1(Q_API_V1_BREAKDOWN,
                   "site_id=ny.example&property=event:page&metrics=bounce_rate,time_on_page"));
    ERR1(Q_API_V1_BREAKDOWN, "site_id=ny.example", "property: required");
    ERR1(Q_API_V1_BREAKDOWN, "site_id=ny.example&property=time:day", "property: unknown");
    ERR1(Q_API_V1_BREAKDOWN, "site_id=ny.example&property=visit:source&metrics=views_per_visit",
         "metrics: views_per_visit is only available in aggregate and timeseries");
    ERR1(Q_API_V1_BREAKDOWN, "site_id=ny.example&property=visit:source&limit=1001",
         "limit: expected an integer 1..1000");
    ERR1(Q_API_V1_BREAKDOWN, "site_id=ny.example&property=visit:source&page=0",
         "page: expected an integer");
    ERR1(Q_API_V1_BREAKDOWN, "site_id=ny.example&property=visit:source&limit=x",
         "limit: expected an integer");
    /* Timeseries: default intervals. */
    static const struct {
        const char *qs;
        enum q_time g;
    } ts[] = {
        {"period=day", QT_HOUR},
        {"period=7d", QT_DAY},
        {"period=30d", QT_DAY},
        {"period=month", QT_DAY},
        {"period=6mo", QT_MONTH},
        {"period=12mo", QT_MONTH},
        {"period=12mo&interval=date", QT_DAY},
        {"period=7d&interval=month", QT_MONTH},
        {"period=30d&interval=week", QT_WEEK},
        {"period=7d&interval=hour", QT_HOUR},
    };
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        char qs[256];
        snprintf(qs, sizeof qs, "site_id=ny.example&%s", ts[i].qs);
        q = OK1(Q_API_V1_TIMESERIES, qs);
        ASSERT_EQ(q->ndims, 1);
        ASSERT_EQ(q->dims[0].field, Q_DIM_TIME);
        ASSERT_EQ(q->dims[0].time, ts[i].g);
        ASSERT_EQ(q->order[0].is_metric, false);
        ASSERT_EQ(q->order[0].desc, false);
        query_free(q);
    }
    ERR1(Q_API_V1_TIMESERIES, "site_id=ny.example&interval=minute",
         "interval: unknown interval \"minute\"; accepted: date, day, hour, week, month");
    ERR1(Q_API_V1_TIMESERIES, "site_id=ny.example&metrics=time_on_page",
         "metrics: time_on_page is not available in timeseries");
}

TEST(v1_realtime_and_errors)
{
    struct query *q = OK1(Q_API_V1_REALTIME, "site_id=in.example");
    ASSERT_EQ(q->api, Q_API_V1_REALTIME);
    ASSERT_EQ(q->realtime, true);
    ASSERT_EQ(q->nmetrics, 1);
    ASSERT_EQ(q->metrics[0], QM_VISITORS);
    ASSERT_EQ(q->range.from_ms, NOW - 300000);
    ASSERT_EQ(q->range.to_ms, NOW);
    query_free(q);
    ERR1(Q_API_V1_AGGREGATE, "period=7d", "site_id: required");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&period=8d",
         "period: unknown period \"8d\"; accepted: day, 7d, 30d, month, 6mo, 12mo, custom");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&period=custom&date=2024-01-01",
         "date: period=custom expects date=YYYY-MM-DD,YYYY-MM-DD");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&period=custom&date=2024-02-01,2024-01-01",
         "date: the first date is after the last");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&date=yesterday", "date: invalid date");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&metrics=visitors,percentage",
         "metrics: unknown metric \"percentage\"; accepted: visitors, visits, pageviews");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&metrics=visitors,,pageviews",
         "metrics: expected a comma-separated list");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&metrics=conversion_rate",
         "metric \"conversion_rate\" requires an event:goal filter");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&compare=year",
         "compare: unknown value \"year\"; accepted: previous_period");
    ERR1(Q_API_V1_AGGREGATE, "site_id=ny.example&with_imported=maybe",
         "with_imported: expected true or false");
    struct query *none = NULL;
    const char *names[] = {"site_id"}, *values[] = {"x.example"};
    ASSERT_EQ(query_parse_v1(Q_API_V1_AGGREGATE, names, values, 1, NOW, site_cb, NULL, &none, g_err,
                             sizeof g_err),
              TALLY_ENOENT);
    ASSERT_TRUE(none == NULL);
    ASSERT_TRUE(strstr(g_err, "site_id: unknown site") != NULL);
}

int main(void)
{
    RUN(metric_names_round_trip);
    RUN(every_metric_parses);
    RUN(every_dimension_parses);
    RUN(dimension_errors);
    RUN(metric_errors);
    RUN(metric_requirements);
    RUN(document_errors);
    RUN(goals_are_copied);
    RUN(relative_ranges_new_york);
    RUN(relative_ranges_kolkata);
    RUN(date_lists_and_dst_days);
    RUN(datetime_ranges);
    RUN(date_range_errors);
    RUN(time_auto_granularity);
    RUN(time_bucket_limit);
    RUN(comparisons);
    RUN(comparison_errors);
    RUN(include_and_pagination);
    RUN(order_by);
    RUN(filter_operators);
    RUN(filter_case_insensitive);
    RUN(filter_logic);
    RUN(filter_errors);
    RUN(filter_limits);
    RUN(regex_backtracking_is_bounded);
    RUN(match_from_threads);
    RUN(v1_aggregate);
    RUN(v1_filters);
    RUN(v1_breakdown_and_timeseries);
    RUN(v1_realtime_and_errors);
    tz_shutdown();
    return test_summary();
}
