/*
 * tz: see tz.h for the bucket rule. Internals:
 *
 * A zone holds one lazily built table per UTC year (1970..9999): the offset in force at the
 * year's first second and the offset changes inside the year (instant, new offset). Together
 * they cut time into constant-offset segments; segments are clipped at year boundaries (a clip
 * is not a change, which only costs the fast path for the first two days of a year).
 *
 * Fast path: the instant t lies in segment [s, e) with offset o; the label starts at local L,
 * so the candidate key is u = L - o. When u >= s + TZ_SAFE_S (two days, more than any
 * difference between two offsets), no earlier segment can map an instant into the label and
 * u is the key. Otherwise the exact path intersects the label's local range with every segment
 * in [t - bucket - TZ_SAFE_S, t] and keeps the smallest instant.
 */
#include "rollup/tz.h"

#include <glib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/timefmt.h"
#include "tally/error.h"

#define TZ_YEAR_MIN 1970
#define TZ_YEAR_MAX 9999
#define TZ_YEAR_CHANGES_MAX 16
#define TZ_SAFE_S (2 * 86400)

struct tz_year {
    int32_t off_start;                /* offset at the year's first second */
    int count;                        /* changes inside the year */
    int64_t at_s[TZ_YEAR_CHANGES_MAX]; /* instant of each change, ascending */
    int32_t off[TZ_YEAR_CHANGES_MAX]; /* offset from that instant on */
};

struct tz_zone {
    char name[TZ_NAME_BYTES_MAX];
    GTimeZone *g;
    pthread_mutex_t build_mu; /* serializes year-table builds */
    _Atomic(struct tz_year *) years[TZ_YEAR_MAX - TZ_YEAR_MIN + 1];
};

static pthread_mutex_t tz_cache_mu = PTHREAD_MUTEX_INITIALIZER;
static struct tz_zone *tz_cache[TZ_ZONES_MAX];
static int tz_cache_count;
static _Atomic(struct tz_zone *) tz_utc_zone;

static const int64_t tz_gran_s[TZ_GRAN_COUNT] = {60, 3600, 86400};

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int64_t year_start_s(int64_t y)
{
    return timefmt_days_from_civil(y, 1, 1) * 86400;
}

static int32_t glib_offset(GTimeZone *g, int64_t t_s)
{
    gint iv = g_time_zone_find_interval(g, G_TIME_TYPE_UNIVERSAL, t_s);
    return iv < 0 ? 0 : g_time_zone_get_offset(g, iv);
}

static struct tz_year *year_build(GTimeZone *g, int64_t y)
{
    struct tz_year *yr = calloc(1, sizeof *yr);
    if (!yr) return NULL;
    int64_t start = year_start_s(y), end = year_start_s(y + 1);
    int32_t prev = glib_offset(g, start);
    yr->off_start = prev;
    int64_t q = start;
    while (q < end - 1) {
        int64_t p = q + TZ_PROBE_STEP_S;
        if (p > end - 1) p = end - 1;
        int32_t o = glib_offset(g, p);
        if (o != prev) {
            /* bisect (q, p]: the first instant whose offset differs from prev */
            int64_t lo = q, hi = p;
            while (hi - lo > 1) {
                int64_t mid = lo + (hi - lo) / 2;
                if (glib_offset(g, mid) != prev) hi = mid;
                else lo = mid;
            }
            if (yr->count < TZ_YEAR_CHANGES_MAX) {
                yr->at_s[yr->count] = hi;
                yr->off[yr->count] = glib_offset(g, hi);
                yr->count++;
            }
            prev = o;
        }
        q = p;
    }
    return yr;
}

static const struct tz_year *year_get(struct tz_zone *z, int64_t y)
{
    size_t i = (size_t)(y - TZ_YEAR_MIN);
    struct tz_year *yr = atomic_load_explicit(&z->years[i], memory_order_acquire);
    if (yr) return yr;
    pthread_mutex_lock(&z->build_mu);
    yr = atomic_load_explicit(&z->years[i], memory_order_relaxed);
    if (!yr) {
        yr = year_build(z->g, y);
        TALLY_ASSERT(yr != NULL); /* 200 bytes; out of memory here is not recoverable */
        atomic_store_explicit(&z->years[i], yr, memory_order_release);
    }
    pthread_mutex_unlock(&z->build_mu);
    return yr;
}

static int64_t year_of_s(int64_t t_s)
{
    int64_t y;
    unsigned m, d;
    timefmt_civil_from_days(floor_div(t_s, 86400), &y, &m, &d);
    return y;
}

/* The constant-offset segment [*s, *e) holding t_s (clipped at UTC year boundaries). */
static int32_t seg_at(const tz_zone *zc, int64_t t_s, int64_t *s, int64_t *e)
{
    struct tz_zone *z = (struct tz_zone *)zc;
    int64_t y = year_of_s(t_s);
    if (y < TZ_YEAR_MIN) {
        const struct tz_year *yr = year_get(z, TZ_YEAR_MIN);
        *s = INT64_MIN / 4;
        *e = year_start_s(TZ_YEAR_MIN);
        return yr->off_start;
    }
    if (y > TZ_YEAR_MAX) {
        const struct tz_year *yr = year_get(z, TZ_YEAR_MAX);
        *s = year_start_s(TZ_YEAR_MAX + 1);
        *e = INT64_MAX / 4;
        return yr->count ? yr->off[yr->count - 1] : yr->off_start;
    }
    const struct tz_year *yr = year_get(z, y);
    int i = yr->count - 1;
    while (i >= 0 && yr->at_s[i] > t_s) i--;
    *s = i >= 0 ? yr->at_s[i] : year_start_s(y);
    *e = i + 1 < yr->count ? yr->at_s[i + 1] : year_start_s(y + 1);
    return i >= 0 ? yr->off[i] : yr->off_start;
}

static int64_t ms_to_s(int64_t ms)
{
    if (ms < 0) ms = 0;
    if (ms > TIMEFMT_MS_MAX) ms = TIMEFMT_MS_MAX;
    return floor_div(ms, 1000);
}

/* Smallest instant whose local time lies in [L, L + g), scanning segments back from t_s. */
static int64_t label_start_exact(const tz_zone *z, int64_t t_s, int64_t L, int64_t g)
{
    int64_t best = t_s, s, e;
    int64_t cur = t_s;
    int64_t limit = t_s - g - TZ_SAFE_S;
    for (int guard = 0; guard < 64; guard++) {
        int32_t o = seg_at(z, cur, &s, &e);
        int64_t lo = L - o > s ? L - o : s;
        int64_t hi = L + g - o < e ? L + g - o : e;
        if (lo < hi && lo < best) best = lo;
        if (s <= limit) break;
        cur = s - 1;
    }
    return best;
}

static int64_t bucket_start_s(const tz_zone *z, int64_t t_s, int64_t g)
{
    int64_t s, e;
    int32_t o = seg_at(z, t_s, &s, &e);
    int64_t L = floor_div(t_s + o, g) * g;
    int64_t u = L - o;
    if (u - s >= TZ_SAFE_S) return u;
    return label_start_exact(z, t_s, L, g);
}

int64_t tz_bucket_start_ms(const tz_zone *z, int64_t ts_ms, enum tz_gran g)
{
    TALLY_ASSERT((int)g >= 0 && g < TZ_GRAN_COUNT);
    return bucket_start_s(z, ms_to_s(ts_ms), tz_gran_s[g]) * 1000;
}

void tz_buckets_ms(const tz_zone *z, int64_t ts_ms, int64_t out[TZ_GRAN_COUNT])
{
    int64_t t_s = ms_to_s(ts_ms), s, e;
    int32_t o = seg_at(z, t_s, &s, &e);
    int64_t local = t_s + o;
    for (int g = 0; g < TZ_GRAN_COUNT; g++) {
        int64_t L = floor_div(local, tz_gran_s[g]) * tz_gran_s[g];
        int64_t u = L - o;
        if (u - s < TZ_SAFE_S) u = label_start_exact(z, t_s, L, tz_gran_s[g]);
        out[g] = u * 1000;
    }
}

int32_t tz_offset_s(const tz_zone *z, int64_t ts_ms)
{
    int64_t s, e;
    return seg_at(z, ms_to_s(ts_ms), &s, &e);
}

void tz_local_date(const tz_zone *z, int64_t ts_ms, int64_t *y, unsigned *m, unsigned *d)
{
    int64_t t_s = ms_to_s(ts_ms);
    int64_t local = t_s + tz_offset_s(z, ts_ms);
    timefmt_civil_from_days(floor_div(local, 86400), y, m, d);
}

size_t tz_label(const tz_zone *z, int64_t start_ms, enum tz_gran g, char *buf, size_t cap)
{
    int64_t t_s = ms_to_s(start_ms);
    int64_t local = t_s + tz_offset_s(z, start_ms);
    int64_t days = floor_div(local, 86400), sod = local - days * 86400;
    int64_t y;
    unsigned m, d;
    timefmt_civil_from_days(days, &y, &m, &d);
    int hh = (int)(sod / 3600), mm = (int)(sod % 3600 / 60);
    int n;
    if (g == TZ_DAY) n = snprintf(buf, cap, "%04d-%02u-%02u", (int)y, m, d);
    else if (g == TZ_HOUR) n = snprintf(buf, cap, "%04d-%02u-%02u %02d:00:00", (int)y, m, d, hh);
    else n = snprintf(buf, cap, "%04d-%02u-%02u %02d:%02d:00", (int)y, m, d, hh, mm);
    if (n < 0) n = 0;
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

int64_t tz_day_start_ms(const tz_zone *z, int64_t y, unsigned m, unsigned d)
{
    int64_t L = timefmt_days_from_civil(y, m, d) * 86400;
    int64_t best = INT64_MAX, s, e;
    int64_t cur = L - TZ_SAFE_S;
    for (int guard = 0; guard < 64 && cur < L + TZ_SAFE_S; guard++) {
        int32_t o = seg_at(z, cur, &s, &e);
        int64_t lo = L - o > s ? L - o : s;
        if (lo < e && lo < best) best = lo;
        cur = e;
    }
    if (best == INT64_MAX) best = L;
    if (best < 0) best = 0;
    return best * 1000;
}

const char *tz_name(const tz_zone *z)
{
    return z->name;
}

static struct tz_zone *zone_new(const char *name, GTimeZone *g)
{
    struct tz_zone *z = calloc(1, sizeof *z);
    if (!z) return NULL;
    snprintf(z->name, sizeof z->name, "%s", name);
    z->g = g;
    pthread_mutex_init(&z->build_mu, NULL);
    return z;
}

static void zone_free(struct tz_zone *z)
{
    if (!z) return;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(z->years); i++) free(atomic_load(&z->years[i]));
    g_time_zone_unref(z->g);
    pthread_mutex_destroy(&z->build_mu);
    free(z);
}

int tz_get(const char *name, const tz_zone **out)
{
    if (!name || !name[0] || strlen(name) >= TZ_NAME_BYTES_MAX) return TALLY_ENOENT;
    int rc = TALLY_OK;
    pthread_mutex_lock(&tz_cache_mu);
    for (int i = 0; i < tz_cache_count; i++) {
        if (strcmp(tz_cache[i]->name, name) == 0) {
            *out = tz_cache[i];
            goto done;
        }
    }
    if (tz_cache_count >= TZ_ZONES_MAX) {
        rc = TALLY_EFULL;
        goto done;
    }
    GTimeZone *g = g_time_zone_new_identifier(name);
    if (!g) {
        rc = TALLY_ENOENT;
        goto done;
    }
    struct tz_zone *z = zone_new(name, g);
    if (!z) {
        g_time_zone_unref(g);
        rc = TALLY_ENOMEM;
        goto done;
    }
    tz_cache[tz_cache_count++] = z;
    *out = z;
done:
    pthread_mutex_unlock(&tz_cache_mu);
    return rc;
}

const tz_zone *tz_utc(void)
{
    struct tz_zone *z = atomic_load_explicit(&tz_utc_zone, memory_order_acquire);
    if (z) return z;
    const tz_zone *c = NULL;
    int rc = tz_get("UTC", &c);
    TALLY_ASSERT(rc == TALLY_OK);
    atomic_store_explicit(&tz_utc_zone, (struct tz_zone *)c, memory_order_release);
    return c;
}

void tz_shutdown(void)
{
    pthread_mutex_lock(&tz_cache_mu);
    for (int i = 0; i < tz_cache_count; i++) zone_free(tz_cache[i]);
    tz_cache_count = 0;
    atomic_store(&tz_utc_zone, NULL);
    pthread_mutex_unlock(&tz_cache_mu);
}
