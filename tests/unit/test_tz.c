/* Unit tests for rollup/tz: bucket keys and labels around DST changes, odd offsets, brute-force
 * agreement with GTimeZone on random instants. */
#include "test.h"

#include <glib.h>
#include <pthread.h>

#include "ingest/timefmt.h"
#include "rollup/tz.h"
#include "tally/error.h"

static int64_t T(const char *s)
{
    int64_t ms = 0;
    if (timefmt_parse_rfc3339(s, strlen(s), &ms) != 0) abort();
    return ms;
}

static const tz_zone *Z(const char *name)
{
    const tz_zone *z = NULL;
    if (tz_get(name, &z) != 0) abort();
    return z;
}

#define ASSERT_BUCKET(zone, at, gran, want)                                                     \
    ASSERT_EQ(tz_bucket_start_ms(Z(zone), T(at), gran), T(want))

static void label(const char *zone, int64_t ms, enum tz_gran g, char *buf)
{
    tz_label(Z(zone), tz_bucket_start_ms(Z(zone), ms, g), g, buf, TZ_LABEL_BYTES);
}

TEST(utc_basics)
{
    ASSERT_BUCKET("UTC", "2026-03-29T01:30:45.123Z", TZ_MINUTE, "2026-03-29T01:30:00Z");
    ASSERT_BUCKET("UTC", "2026-03-29T01:30:45.123Z", TZ_HOUR, "2026-03-29T01:00:00Z");
    ASSERT_BUCKET("UTC", "2026-03-29T01:30:45.123Z", TZ_DAY, "2026-03-29T00:00:00Z");
    ASSERT_BUCKET("UTC", "2026-12-31T23:59:59.999Z", TZ_DAY, "2026-12-31T00:00:00Z");
    ASSERT_BUCKET("UTC", "2027-01-01T00:00:00Z", TZ_DAY, "2027-01-01T00:00:00Z");
    char buf[TZ_LABEL_BYTES];
    label("UTC", T("2026-03-29T01:30:45Z"), TZ_MINUTE, buf);
    ASSERT_STREQ(buf, "2026-03-29 01:30:00");
    label("UTC", T("2026-03-29T01:30:45Z"), TZ_HOUR, buf);
    ASSERT_STREQ(buf, "2026-03-29 01:00:00");
    label("UTC", T("2026-03-29T01:30:45Z"), TZ_DAY, buf);
    ASSERT_STREQ(buf, "2026-03-29");
    ASSERT_TRUE(tz_utc() == Z("UTC"));
    ASSERT_STREQ(tz_name(tz_utc()), "UTC");
}

TEST(unknown_zone)
{
    const tz_zone *z = NULL;
    ASSERT_EQ(tz_get("Mars/Olympus_Mons", &z), TALLY_ENOENT);
    ASSERT_EQ(tz_get("", &z), TALLY_ENOENT);
    ASSERT_EQ(tz_get(NULL, &z), TALLY_ENOENT);
}

TEST(berlin_spring_forward)
{
    /* 2026-03-29 01:00Z: 02:00 CET -> 03:00 CEST. The local hour 02 does not exist. */
    ASSERT_BUCKET("Europe/Berlin", "2026-03-29T00:59:59Z", TZ_HOUR, "2026-03-29T00:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-03-29T01:00:00Z", TZ_HOUR, "2026-03-29T01:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-03-29T01:30:00Z", TZ_HOUR, "2026-03-29T01:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-03-29T12:00:00Z", TZ_DAY, "2026-03-28T23:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-03-29T21:59:59Z", TZ_DAY, "2026-03-28T23:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-03-29T22:00:00Z", TZ_DAY, "2026-03-29T22:00:00Z");
    /* The day has 23 hours. */
    ASSERT_EQ(tz_day_start_ms(Z("Europe/Berlin"), 2026, 3, 30) -
                  tz_day_start_ms(Z("Europe/Berlin"), 2026, 3, 29),
              23 * 3600000LL);
    char buf[TZ_LABEL_BYTES];
    label("Europe/Berlin", T("2026-03-29T01:30:00Z"), TZ_HOUR, buf);
    ASSERT_STREQ(buf, "2026-03-29 03:00:00");
    label("Europe/Berlin", T("2026-03-29T00:30:00Z"), TZ_HOUR, buf);
    ASSERT_STREQ(buf, "2026-03-29 01:00:00");
    label("Europe/Berlin", T("2026-03-28T23:00:00Z"), TZ_DAY, buf);
    ASSERT_STREQ(buf, "2026-03-29");
}

TEST(berlin_fall_back)
{
    /* 2026-10-25 01:00Z: 03:00 CEST -> 02:00 CET. The local hour 02 happens twice: one bucket. */
    ASSERT_BUCKET("Europe/Berlin", "2026-10-25T00:30:00Z", TZ_HOUR, "2026-10-25T00:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-10-25T01:30:00Z", TZ_HOUR, "2026-10-25T00:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-10-25T02:00:00Z", TZ_HOUR, "2026-10-25T02:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-10-24T23:59:59Z", TZ_HOUR, "2026-10-24T23:00:00Z");
    /* A minute of the repeated hour is keyed by its first occurrence. */
    ASSERT_BUCKET("Europe/Berlin", "2026-10-25T01:15:30Z", TZ_MINUTE, "2026-10-25T00:15:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-10-25T00:15:30Z", TZ_MINUTE, "2026-10-25T00:15:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-10-25T23:00:00Z", TZ_DAY, "2026-10-25T23:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-10-25T22:59:59Z", TZ_DAY, "2026-10-24T22:00:00Z");
    ASSERT_EQ(tz_day_start_ms(Z("Europe/Berlin"), 2026, 10, 26) -
                  tz_day_start_ms(Z("Europe/Berlin"), 2026, 10, 25),
              25 * 3600000LL);
    char buf[TZ_LABEL_BYTES];
    label("Europe/Berlin", T("2026-10-25T01:30:00Z"), TZ_HOUR, buf);
    ASSERT_STREQ(buf, "2026-10-25 02:00:00");
    label("Europe/Berlin", T("2026-10-25T02:30:00Z"), TZ_HOUR, buf);
    ASSERT_STREQ(buf, "2026-10-25 03:00:00");
}

TEST(new_york)
{
    /* 2026-03-08 07:00Z: 02:00 EST -> 03:00 EDT; 2026-11-01 06:00Z: 02:00 EDT -> 01:00 EST. */
    ASSERT_BUCKET("America/New_York", "2026-03-08T06:59:00Z", TZ_HOUR, "2026-03-08T06:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-03-08T07:00:00Z", TZ_HOUR, "2026-03-08T07:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-03-08T12:00:00Z", TZ_DAY, "2026-03-08T05:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-03-09T03:59:59Z", TZ_DAY, "2026-03-08T05:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-03-09T04:00:00Z", TZ_DAY, "2026-03-09T04:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-11-01T05:30:00Z", TZ_HOUR, "2026-11-01T05:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-11-01T06:30:00Z", TZ_HOUR, "2026-11-01T05:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-11-01T07:00:00Z", TZ_HOUR, "2026-11-01T07:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-11-01T12:00:00Z", TZ_DAY, "2026-11-01T04:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-11-02T04:59:59Z", TZ_DAY, "2026-11-01T04:00:00Z");
    ASSERT_BUCKET("America/New_York", "2026-11-02T05:00:00Z", TZ_DAY, "2026-11-02T05:00:00Z");
    char buf[TZ_LABEL_BYTES];
    label("America/New_York", T("2026-11-02T04:59:59Z"), TZ_DAY, buf);
    ASSERT_STREQ(buf, "2026-11-01");
}

TEST(half_and_quarter_hours)
{
    ASSERT_BUCKET("Asia/Kolkata", "2026-01-15T00:10:00Z", TZ_HOUR, "2026-01-14T23:30:00Z");
    ASSERT_BUCKET("Asia/Kolkata", "2026-01-15T00:10:00Z", TZ_DAY, "2026-01-14T18:30:00Z");
    ASSERT_BUCKET("Asia/Kolkata", "2026-01-15T18:29:59Z", TZ_DAY, "2026-01-14T18:30:00Z");
    ASSERT_BUCKET("Asia/Kolkata", "2026-01-15T18:30:00Z", TZ_DAY, "2026-01-15T18:30:00Z");
    ASSERT_BUCKET("Asia/Kathmandu", "2026-01-15T00:10:00Z", TZ_HOUR, "2026-01-14T23:15:00Z");
    ASSERT_BUCKET("Asia/Kathmandu", "2026-01-15T00:14:59Z", TZ_HOUR, "2026-01-14T23:15:00Z");
    ASSERT_BUCKET("Asia/Kathmandu", "2026-01-15T00:15:00Z", TZ_HOUR, "2026-01-15T00:15:00Z");
    ASSERT_BUCKET("Asia/Kathmandu", "2026-01-15T00:10:00Z", TZ_DAY, "2026-01-14T18:15:00Z");
    ASSERT_BUCKET("Asia/Kathmandu", "2026-01-15T00:10:30Z", TZ_MINUTE, "2026-01-15T00:10:00Z");
    char buf[TZ_LABEL_BYTES];
    label("Asia/Kathmandu", T("2026-01-15T00:10:00Z"), TZ_HOUR, buf);
    ASSERT_STREQ(buf, "2026-01-15 05:00:00");
    label("Asia/Kolkata", T("2026-01-15T00:10:00Z"), TZ_DAY, buf);
    ASSERT_STREQ(buf, "2026-01-15");
    ASSERT_EQ(tz_offset_s(Z("Asia/Kathmandu"), T("2026-01-15T00:00:00Z")), 5 * 3600 + 45 * 60);
    /* Lord Howe: a 30-minute DST change (2026-04-04 15:00Z: 02:00 +11 -> 01:30 +10:30). */
    ASSERT_BUCKET("Australia/Lord_Howe", "2026-04-04T15:10:00Z", TZ_HOUR,
                  "2026-04-04T14:00:00Z");
    ASSERT_BUCKET("Australia/Lord_Howe", "2026-04-04T15:30:00Z", TZ_HOUR,
                  "2026-04-04T15:30:00Z");
}

TEST(midnight_change)
{
    /* Havana 2026-03-08 05:00Z: 00:00 CST -> 01:00 CDT, so local midnight does not exist and the
     * day starts at 01:00 local. */
    ASSERT_BUCKET("America/Havana", "2026-03-08T12:00:00Z", TZ_DAY, "2026-03-08T05:00:00Z");
    ASSERT_BUCKET("America/Havana", "2026-03-08T04:59:59Z", TZ_DAY, "2026-03-07T05:00:00Z");
    ASSERT_EQ(tz_day_start_ms(Z("America/Havana"), 2026, 3, 8), T("2026-03-08T05:00:00Z"));
    char buf[TZ_LABEL_BYTES];
    label("America/Havana", T("2026-03-08T12:00:00Z"), TZ_DAY, buf);
    ASSERT_STREQ(buf, "2026-03-08");
}

TEST(year_boundary)
{
    ASSERT_BUCKET("Europe/Berlin", "2026-12-31T23:30:00Z", TZ_DAY, "2026-12-31T23:00:00Z");
    ASSERT_BUCKET("Europe/Berlin", "2026-12-31T22:59:00Z", TZ_DAY, "2026-12-30T23:00:00Z");
    ASSERT_BUCKET("America/New_York", "2027-01-01T02:00:00Z", TZ_DAY, "2026-12-31T05:00:00Z");
    ASSERT_BUCKET("UTC", "1970-01-01T00:00:30Z", TZ_MINUTE, "1970-01-01T00:00:00Z");
}

/* Reference: the label of an instant straight from GTimeZone. */
static int64_t ref_label(GTimeZone *g, int64_t t_s, int64_t gran_s)
{
    gint iv = g_time_zone_find_interval(g, G_TIME_TYPE_UNIVERSAL, t_s);
    int64_t local = t_s + g_time_zone_get_offset(g, iv);
    int64_t q = local / gran_s;
    if (local % gran_s < 0) q--;
    return q;
}

TEST(random_agrees_with_glib)
{
    const char *zones[] = {"Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu",
                           "Australia/Lord_Howe", "America/Havana", "Pacific/Chatham"};
    const int64_t gran_s[3] = {60, 3600, 86400};
    uint64_t seed = 12345;
    for (size_t zi = 0; zi < TALLY_ARRAY_LEN(zones); zi++) {
        GTimeZone *g = g_time_zone_new_identifier(zones[zi]);
        ASSERT_TRUE(g != NULL);
        for (int i = 0; i < 40; i++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            /* instants in 2024..2028, biased to lie near DST changes half of the time */
            int64_t t_s = 1704067200 + (int64_t)((seed >> 20) % (5LL * 365 * 86400));
            if (i % 2) {
                int64_t s = t_s - 60 * 86400;
                int32_t o = tz_offset_s(Z(zones[zi]), s * 1000);
                for (int64_t p = s; p < t_s + 120 * 86400; p += 3600)
                    if (tz_offset_s(Z(zones[zi]), p * 1000) != o) {
                        t_s = p - 7200 + (int64_t)((seed >> 40) % 14400);
                        break;
                    }
            }
            for (int gi = 0; gi < 3; gi++) {
                int64_t want_label = ref_label(g, t_s, gran_s[gi]);
                int64_t got = tz_bucket_start_ms(Z(zones[zi]), t_s * 1000 + 123, gi) / 1000;
                ASSERT_TRUE(got <= t_s);
                ASSERT_EQ(ref_label(g, got, gran_s[gi]), want_label);
                /* nothing earlier (within two days and a bucket) carries the same label */
                for (int64_t u = got - 60; u >= got - 2 * 86400 - gran_s[gi]; u -= 60)
                    if (ref_label(g, u, gran_s[gi]) == want_label) {
                        TEST_FAIL_("%s: %lld has the label of %lld", zones[zi], (long long)u,
                                   (long long)got);
                    }
            }
        }
        g_time_zone_unref(g);
    }
}

static void *thread_main(void *arg)
{
    int64_t *sum = arg;
    const char *zones[] = {"Europe/Paris", "America/Chicago", "Asia/Tokyo", "Europe/Berlin"};
    for (int i = 0; i < 20000; i++) {
        const tz_zone *z = NULL;
        if (tz_get(zones[i % 4], &z) != 0) abort();
        int64_t b[TZ_GRAN_COUNT];
        tz_buckets_ms(z, 1000000000000LL + (int64_t)i * 7777777LL, b);
        *sum += b[0] % 1000 + b[2] / 86400000;
    }
    return NULL;
}

TEST(threads)
{
    pthread_t th[4];
    int64_t sums[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, thread_main, &sums[i]);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 1; i < 4; i++) ASSERT_EQ(sums[i], sums[0]);
}

TEST(buckets_all_three)
{
    const tz_zone *z = Z("Europe/Berlin");
    int64_t b[TZ_GRAN_COUNT];
    for (int64_t t = T("2026-10-24T20:00:00Z"); t < T("2026-10-25T05:00:00Z"); t += 97 * 1000) {
        tz_buckets_ms(z, t, b);
        for (int g = 0; g < TZ_GRAN_COUNT; g++) ASSERT_EQ(b[g], tz_bucket_start_ms(z, t, g));
    }
}

int main(void)
{
    RUN(utc_basics);
    RUN(unknown_zone);
    RUN(berlin_spring_forward);
    RUN(berlin_fall_back);
    RUN(new_york);
    RUN(half_and_quarter_hours);
    RUN(midnight_change);
    RUN(year_boundary);
    RUN(random_agrees_with_glib);
    RUN(threads);
    RUN(buckets_all_three);
    tz_shutdown();
    return test_summary();
}
