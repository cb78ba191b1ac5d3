/* Unit tests for query.c: time buckets in a zone with DST, the planner's shapes, and the
 * response of a site without data. */
#include "test.h"

#include <stdlib.h>
#include <string.h>

#include "query/query.h"
#include "rollup/cell.h"
#include "tally/error.h"

static struct query *berlin(void)
{
    struct query *q = calloc(1, sizeof *q);
    if (!q || tz_get("Europe/Berlin", &q->zone) != 0) abort();
    snprintf(q->site, sizeof q->site, "example.com");
    memcpy(q->currency, "EUR", 4);
    q->limit = QUERY_LIMIT_DEFAULT;
    return q;
}

TEST(time_buckets_in_a_dst_zone)
{
    struct query *q = berlin();
    char label[TZ_LABEL_BYTES];
    /* 2026-10-25 is the fall-back day in Berlin (25 hours); 22:30 UTC on the 24th is 00:30
     * local on the 25th (CEST, +2). */
    int64_t t = 1792881000000LL; /* 2026-10-24T22:30:00Z */
    int64_t day = q_time_bucket(q, QT_DAY, t, label, sizeof label);
    ASSERT_STREQ(label, "2026-10-25");
    ASSERT_EQ(day, 1792879200000LL); /* 2026-10-24T22:00:00Z */
    int64_t week = q_time_bucket(q, QT_WEEK, t, label, sizeof label);
    ASSERT_STREQ(label, "2026-10-19"); /* the Monday */
    ASSERT_EQ(week, 1792360800000LL);
    int64_t month = q_time_bucket(q, QT_MONTH, t, label, sizeof label);
    ASSERT_STREQ(label, "2026-10-01");
    ASSERT_EQ(month, 1790805600000LL); /* 2026-09-30T22:00:00Z */
    q_time_bucket(q, QT_HOUR, t, label, sizeof label);
    ASSERT_STREQ(label, "2026-10-25 00:00:00");
    q_time_bucket(q, QT_MINUTE, t + 61000, label, sizeof label);
    ASSERT_STREQ(label, "2026-10-25 00:31:00");
    free(q);
}

TEST(planner_shapes)
{
    struct query *q = berlin();
    q->nmetrics = 2;
    q->metrics[0] = QM_VISITORS;
    q->metrics[1] = QM_BOUNCE_RATE;
    ASSERT_TRUE(qplan_rollup_can(q)); /* aggregate */
    q->ndims = 1;
    q->dims[0].field = ROLLUP_DIM_PAGE;
    ASSERT_TRUE(qplan_rollup_can(q)); /* one dimension */
    struct q_filter leaf = {.op = QF_IS, .dim = {.field = ROLLUP_DIM_PAGE}};
    q->filter = &leaf;
    ASSERT_TRUE(qplan_rollup_can(q)); /* filter on that dimension */
    leaf.dim.field = ROLLUP_DIM_SOURCE;
    ASSERT_TRUE(!qplan_rollup_can(q)); /* filter on another one: scan */
    q->ndims = 0;
    ASSERT_TRUE(qplan_rollup_can(q)); /* aggregate with a filter on one dimension */
    q->dims[0].field = Q_DIM_TIME;
    q->dims[0].time = QT_DAY;
    q->ndims = 1;
    ASSERT_TRUE(qplan_rollup_can(q)); /* time series filtered on one dimension */
    q->dims[1].field = ROLLUP_DIM_PAGE;
    q->ndims = 2;
    ASSERT_TRUE(!qplan_rollup_can(q)); /* two dimensions */
    q->ndims = 1;
    q->dims[0].field = ROLLUP_DIM_PROP;
    ASSERT_TRUE(!qplan_rollup_can(q)); /* props: the scan gives the (none) row */
    q->dims[0].field = ROLLUP_DIM_PAGE;
    q->filter = NULL;
    q->metrics[1] = QM_TIME_ON_PAGE;
    ASSERT_TRUE(!qplan_rollup_can(q)); /* time on page needs the events */
    free(q);
}

TEST(site_without_data_answers_empty_results)
{
    struct query *q = berlin();
    q->nmetrics = 1;
    q->metrics[0] = QM_VISITORS;
    q->range.from_ms = 1792879200000LL;
    q->range.to_ms = q->range.from_ms + 25 * 3600000LL; /* a 25-hour day */
    struct q_budget b = {.rows_max = 1000};
    char *json = NULL, err[256];
    size_t len = 0;
    ASSERT_EQ(query_execute(NULL, 0, q, &b, Q_PLAN_AUTO, &json, &len, err, sizeof err), 0);
    ASSERT_TRUE(json != NULL);
    ASSERT_TRUE(strstr(json, "\"results\":[{\"dimensions\":[],\"metrics\":[0]}]") != NULL);
    ASSERT_TRUE(strstr(json, "\"date_range\":[\"2026-10-25T00:00:00+02:00\",\"2026-10-25T23:59:59+01:00\"]") != NULL);
    free(json);
    q->ndims = 1;
    q->dims[0].field = ROLLUP_DIM_PAGE;
    ASSERT_EQ(query_execute(NULL, 0, q, &b, Q_PLAN_AUTO, &json, &len, err, sizeof err), 0);
    ASSERT_TRUE(strstr(json, "\"results\":[]") != NULL);
    free(json);
    free(q);
}

int main(void)
{
    RUN(time_buckets_in_a_dst_zone);
    RUN(planner_shapes);
    RUN(site_without_data_answers_empty_results);
    return test_summary();
}
