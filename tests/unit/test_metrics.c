/* metrics: registration rules, lock-free updates from threads, Prometheus text output. */
#include <event2/buffer.h>
#include <math.h>
#include <pthread.h>

#include "core/metrics.h"
#include "tally/error.h"
#include "test.h"

/* Renders m into a malloc'd C string. */
static char *render(struct metrics *m)
{
    struct evbuffer *b = evbuffer_new();
    TALLY_ASSERT(metrics_render(m, b) == 0);
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = 0;
    evbuffer_free(b);
    return s;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

TEST(counters_and_labels)
{
    struct metrics *m = metrics_new();
    struct metrics_counter *a =
        metrics_counter(m, "http_requests_total", "Requests.",
                        (const char *[]){"route", "a", "status", "200", NULL}, 0);
    struct metrics_counter *b =
        metrics_counter(m, "http_requests_total", "Requests.",
                        (const char *[]){"route", "b", "status", "404", NULL}, 0);
    struct metrics_counter *a2 =
        metrics_counter(m, "http_requests_total", "ignored",
                        (const char *[]){"route", "a", "status", "200", NULL}, 0);
    ASSERT_TRUE(a && b && a != b);
    ASSERT_TRUE(a == a2); /* idempotent */
    metrics_counter_add(a, 3);
    metrics_counter_add(a2, 2);
    metrics_counter_add(b, 1);
    ASSERT_EQ(metrics_counter_value(a), 5);
    struct metrics_counter *plain = metrics_counter(m, "events_total", "Events.", NULL, 0);
    metrics_counter_add(plain, 7);
    char *s = render(m);
    ASSERT_EQ(count_of(s, "# HELP http_requests_total Requests.\n"), 1);
    ASSERT_EQ(count_of(s, "# TYPE http_requests_total counter\n"), 1);
    ASSERT_TRUE(strstr(s, "http_requests_total{route=\"a\",status=\"200\"} 5\n"));
    ASSERT_TRUE(strstr(s, "http_requests_total{route=\"b\",status=\"404\"} 1\n"));
    ASSERT_TRUE(strstr(s, "events_total 7\n"));
    /* Families stay in registration order, series grouped under their family. */
    ASSERT_TRUE(strstr(s, "status=\"404\"} 1\n# HELP events_total") != NULL);
    free(s);
    metrics_free(m);
}

TEST(escaping_and_hidden_zero)
{
    struct metrics *m = metrics_new();
    struct metrics_counter *c =
        metrics_counter(m, "odd_total", "Back\\slash\nnewline \"quotes\" stay.",
                        (const char *[]){"path", "/a\"b\\c\nd", NULL}, 0);
    metrics_counter_add(c, 1);
    struct metrics_counter *hidden = metrics_counter(
        m, "odd_total", "", (const char *[]){"path", "zero", NULL}, METRICS_HIDE_ZERO);
    char *s = render(m);
    ASSERT_TRUE(strstr(s, "# HELP odd_total Back\\\\slash\\nnewline \"quotes\" stay.\n"));
    ASSERT_TRUE(strstr(s, "odd_total{path=\"/a\\\"b\\\\c\\nd\"} 1\n"));
    ASSERT_TRUE(!strstr(s, "zero"));
    free(s);
    metrics_counter_add(hidden, 1);
    s = render(m);
    ASSERT_TRUE(strstr(s, "odd_total{path=\"zero\"} 1\n"));
    free(s);
    metrics_free(m);
}

static double answer(void *arg)
{
    return *(double *)arg;
}

TEST(gauges)
{
    struct metrics *m = metrics_new();
    struct metrics_gauge *g = metrics_gauge(m, "queue_depth", "Depth.", NULL, 0);
    metrics_gauge_set(g, 10);
    metrics_gauge_add(g, -2.5);
    ASSERT_TRUE(metrics_gauge_value(g) == 7.5);
    double v = 0.1;
    ASSERT_TRUE(metrics_gauge_fn(m, "ratio", "Ratio.", (const char *[]){"k", "v", NULL}, answer,
                                 &v) != NULL);
    _Atomic uint64_t ext = 41;
    ASSERT_TRUE(metrics_counter_ref(m, "ext_total", "External.", NULL, 0, &ext) != NULL);
    ext++;
    char *s = render(m);
    ASSERT_TRUE(strstr(s, "# TYPE queue_depth gauge\nqueue_depth 7.5\n"));
    ASSERT_TRUE(strstr(s, "ratio{k=\"v\"} 0.1\n"));
    ASSERT_TRUE(strstr(s, "ext_total 42\n"));
    free(s);
    v = NAN;
    s = render(m);
    ASSERT_TRUE(strstr(s, "ratio{k=\"v\"} NaN\n"));
    free(s);
    v = -INFINITY;
    s = render(m);
    ASSERT_TRUE(strstr(s, "ratio{k=\"v\"} -Inf\n"));
    free(s);
    metrics_free(m);
}

TEST(histograms)
{
    struct metrics *m = metrics_new();
    static const double bounds[] = {0.01, 0.1, 1};
    struct metrics_histogram *h = metrics_histogram(m, "lat_seconds", "Latency.",
                                                    (const char *[]){"op", "w", NULL}, bounds, 3);
    ASSERT_TRUE(h != NULL);
    double obs[] = {0.0078125, 0.0078125, 0.0625, 0.5, 2, 3}; /* exact in binary */
    for (int i = 0; i < 6; i++)
        metrics_histogram_observe(h, obs[i]);
    ASSERT_EQ(metrics_histogram_count(h), 6);
    char *s = render(m);
    ASSERT_TRUE(strstr(s, "# TYPE lat_seconds histogram\n"));
    ASSERT_TRUE(strstr(s, "lat_seconds_bucket{op=\"w\",le=\"0.01\"} 2\n"));
    ASSERT_TRUE(strstr(s, "lat_seconds_bucket{op=\"w\",le=\"0.1\"} 3\n"));
    ASSERT_TRUE(strstr(s, "lat_seconds_bucket{op=\"w\",le=\"1\"} 4\n"));
    ASSERT_TRUE(strstr(s, "lat_seconds_bucket{op=\"w\",le=\"+Inf\"} 6\n"));
    ASSERT_TRUE(strstr(s, "lat_seconds_sum{op=\"w\"} 5.578125\n"));
    ASSERT_TRUE(strstr(s, "lat_seconds_count{op=\"w\"} 6\n"));
    free(s);
    /* Same family, other bounds: refused. Unlabelled series render without braces. */
    static const double other[] = {1, 2};
    ASSERT_TRUE(metrics_histogram(m, "lat_seconds", "", NULL, other, 2) == NULL);
    struct metrics_histogram *h2 = metrics_histogram(m, "lat_seconds", "", NULL, bounds, 3);
    metrics_histogram_observe(h2, 0.5);
    s = render(m);
    ASSERT_TRUE(strstr(s, "lat_seconds_bucket{le=\"1\"} 1\n"));
    ASSERT_TRUE(strstr(s, "lat_seconds_sum 0.5\nlat_seconds_count 1\n"));
    free(s);
    static const double unsorted[] = {1, 0.5};
    ASSERT_TRUE(metrics_histogram(m, "h2", "", NULL, unsorted, 2) == NULL);
    static const double inf[] = {1, INFINITY};
    ASSERT_TRUE(metrics_histogram(m, "h3", "", NULL, inf, 2) == NULL);
    metrics_free(m);
}

TEST(invalid_input_is_refused_not_fatal)
{
    struct metrics *m = metrics_new();
    ASSERT_TRUE(metrics_counter(m, "9starts_with_digit", "", NULL, 0) == NULL);
    ASSERT_TRUE(metrics_counter(m, "has-dash", "", NULL, 0) == NULL);
    ASSERT_TRUE(metrics_counter(m, "", "", NULL, 0) == NULL);
    ASSERT_TRUE(metrics_counter(m, "ok_total", "", (const char *[]){"bad-label", "v", NULL}, 0) ==
                NULL);
    ASSERT_TRUE(metrics_counter(m, "ok_total", "", (const char *[]){"a:b", "v", NULL}, 0) == NULL);
    ASSERT_TRUE(metrics_counter(m, "ns:ok_total", "", (const char *[]){"_k1", "v", NULL}, 0));
    ASSERT_TRUE(metrics_gauge(m, "ns:ok_total", "", NULL, 0) == NULL); /* type conflict */
    /* NULL handles are no-ops. */
    metrics_counter_add(NULL, 1);
    metrics_gauge_set(NULL, 1);
    metrics_gauge_add(NULL, 1);
    metrics_histogram_observe(NULL, 1);
    ASSERT_EQ(metrics_counter_value(NULL), 0);
    ASSERT_TRUE(metrics_counter(NULL, "x", "", NULL, 0) == NULL);
    metrics_free(m);
    metrics_free(NULL);
}

static void *adder(void *arg)
{
    struct metrics_counter *c = arg;
    for (int i = 0; i < 200000; i++)
        metrics_counter_add(c, 1);
    return NULL;
}

static void *observer(void *arg)
{
    struct metrics_histogram *h = arg;
    for (int i = 0; i < 100000; i++)
        metrics_histogram_observe(h, 0.25);
    return NULL;
}

TEST(concurrent_updates_are_exact)
{
    struct metrics *m = metrics_new();
    struct metrics_counter *c = metrics_counter(m, "n_total", "", NULL, 0);
    static const double bounds[] = {0.5};
    struct metrics_histogram *h = metrics_histogram(m, "h_seconds", "", NULL, bounds, 1);
    pthread_t t[8];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, adder, c);
    for (int i = 4; i < 8; i++)
        pthread_create(&t[i], NULL, observer, h);
    /* Rendering concurrently with updates is allowed. */
    for (int i = 0; i < 20; i++)
        free(render(m));
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    ASSERT_EQ(metrics_counter_value(c), 800000);
    ASSERT_EQ(metrics_histogram_count(h), 400000);
    char *s = render(m);
    ASSERT_TRUE(strstr(s, "h_seconds_sum 100000\n"));
    free(s);
    metrics_free(m);
}

int main(void)
{
    RUN(counters_and_labels);
    RUN(escaping_and_hidden_zero);
    RUN(gauges);
    RUN(histograms);
    RUN(invalid_input_is_refused_not_fatal);
    RUN(concurrent_updates_are_exact);
    return test_summary();
}
