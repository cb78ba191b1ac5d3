/*
 * bench/funnel: latency of a 4-step funnel over the raw store of bench/rebuild's data set.
 *
 *   BENCH_KEEP=1 BENCH_DIR=/var/tmp build/rel/bench/rebuild 10000000   (keeps DIR/db)
 *   funnel DIR [runs=20] [window=visit|SECONDS] [order=loose|strict] [plan=auto|stream|visits]
 *
 * The funnel: page /page/1, then page /page/(star), then page /page/(star star), then event
 * Signup on example.com (80 % of the
 * events), over the whole generated range (30 days from 2026-01-01), one visit, loose order;
 * the server's block cache (16 MiB) and query memory budget (256 MiB), no time budget. Runs it `runs`
 * times after one warm-up and prints one line:
 *   bench=funnel events_site=... runs=... p50_ms=... p99_ms=... max_ms=... steps=v1/v2/v3/v4
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "query/funnel.h"
#include "rollup/tz.h"
#include "store/store.h"
#include "tally/error.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static bool site_fn(void *arg, const char *site, struct query *q)
{
    (void)arg;
    (void)site;
    if (tz_get("Europe/Berlin", &q->zone) != 0) q->zone = tz_utc();
    memcpy(q->currency, "EUR", 4);
    return true;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: funnel DIR [runs] [window] [order] [auto|stream|visits]\n");
        return 2;
    }
    int runs = argc > 2 ? atoi(argv[2]) : 20;
    const char *window = argc > 3 ? argv[3] : "visit";
    const char *order = argc > 4 ? argv[4] : "loose";
    const char *plan = argc > 5 ? argv[5] : "auto";
    if (runs < 1) runs = 1;
    char db[1024];
    snprintf(db, sizeof db, "%s/db", argv[1]);
    struct store_options o;
    store_options_default(&o);
    o.dir = db;
    o.read_only = true;
    o.block_cache_bytes = 16u << 20; /* the server's (server.c) */
    o.raw_cache_bytes = 256u << 20;  /* raw_cache_bytes' default (config.c) */
    struct store *s = NULL;
    if (store_open(&o, &s) != 0) {
        fprintf(stderr, "funnel: cannot open %s\n", db);
        return 1;
    }
    uint32_t site = 0;
    if (store_site_id(s, "example.com", 11, false, &site) != 0) {
        fprintf(stderr, "funnel: no site example.com in %s\n", db);
        return 1;
    }
    char json[512];
    bool num = window[0] >= '0' && window[0] <= '9';
    snprintf(json, sizeof json,
             "{\"site_id\":\"example.com\",\"date_range\":[\"2025-12-31\",\"2026-03-01\"],"
             "\"steps\":[{\"page\":\"/page/1\"},{\"page\":\"/page/*\"},{\"page\":\"/page/**\"},"
             "{\"event\":\"Signup\"}],\"window\":%s%s%s,\"order\":\"%s\"}",
             num ? "" : "\"", window, num ? "" : "\"", order);
    struct funnel *f = NULL;
    char err[512];
    if (funnel_parse(json, strlen(json), 1790000000000LL, site_fn, NULL, &f, err, sizeof err)) {
        fprintf(stderr, "funnel: %s\n", err);
        return 1;
    }
    f->plan = strcmp(plan, "stream") == 0   ? FUNNEL_PLAN_STREAM
              : strcmp(plan, "visits") == 0 ? FUNNEL_PLAN_VISITS
                                            : FUNNEL_PLAN_AUTO;
    /* the server's default query budget (query_memory_bytes_max), no time limit */
    struct q_budget b = {0, (size_t)256 << 20, 1000000};
    struct funnel_result r;
    double *t = calloc((size_t)runs, sizeof *t);
    for (int i = -1; i < runs; i++) {
        double t0 = now_ms();
        int rc = funnel_compute(s, site, f, &b, &r);
        if (rc) {
            fprintf(stderr, "funnel: %s\n", tally_strerror(rc));
            return 1;
        }
        if (i >= 0) t[i] = now_ms() - t0;
    }
    qsort(t, (size_t)runs, sizeof *t, cmp_d);
    size_t p99 = (size_t)((runs - 1) * 0.99 + 0.5);
    printf("bench=funnel runs=%d window=%s order=%s plan=%s p50_ms=%.1f p99_ms=%.1f "
           "max_ms=%.1f steps=%llu/%llu/%llu/%llu\n",
           runs, window, order, plan, t[runs / 2], t[p99], t[runs - 1],
           (unsigned long long)r.visitors[0], (unsigned long long)r.visitors[1],
           (unsigned long long)r.visitors[2], (unsigned long long)r.visitors[3]);
    free(t);
    funnel_free(f);
    store_close(s);
    return 0;
}
