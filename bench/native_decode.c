/*
 * Benchmark: the native ingest decoder on NDJSON bodies of 100 realistic events (site, name,
 * URL with a path and UTM parameters, referrer, and for custom events props and revenue),
 * the shape of a busy tracker batch. One thread, one reused context, as on an ingest thread.
 * Output:
 *   bench=native_decode events_per_s=N mb_per_s=N body_bytes=N events_per_body=100
 * BENCH_SECONDS (default 1) is the measuring time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ingest/native.h"
#include "ingest/timefmt.h"

#define BODIES 16
#define EVENTS_PER_BODY 100

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t make_body(char *b, size_t cap, int seed, int64_t now_ms)
{
    static const char *const paths[] = {"/", "/pricing", "/blog/how-we-count-visitors",
                                        "/docs/getting-started/install", "/about"};
    static const char *const refs[] = {"", "https://www.google.com/",
                                       "https://news.ycombinator.com/", "https://t.co/abc123",
                                       "https://duckduckgo.com/"};
    size_t n = 0;
    for (int i = 0; i < EVENTS_PER_BODY; i++) {
        int k = seed * EVENTS_PER_BODY + i;
        const char *path = paths[k % 5], *ref = refs[(k / 5) % 5];
        if (k % 10 == 9) {
            n += (size_t)snprintf(b + n, cap - n,
                                  "{\"site\":\"example.com\",\"name\":\"Signup\",\"url\":"
                                  "\"https://example.com%s\",\"ts\":%lld,\"props\":{\"plan\":"
                                  "\"pro\",\"seats\":%d,\"trial\":false},\"revenue\":{\"amount\":"
                                  "\"49.00\",\"currency\":\"EUR\"}}\n",
                                  path, (long long)(now_ms - k), k % 50);
        } else {
            n += (size_t)snprintf(b + n, cap - n,
                                  "{\"site\":\"example.com\",\"url\":\"https://example.com%s?"
                                  "utm_source=newsletter&utm_medium=email&utm_campaign=spring\","
                                  "\"referrer\":\"%s\",\"ts\":%lld}\n",
                                  path, ref, (long long)(now_ms - k));
        }
    }
    return n;
}

int main(void)
{
    const char *env = getenv("BENCH_SECONDS");
    double seconds = env ? atof(env) : 1.0;
    if (seconds <= 0) seconds = 1.0;
    int64_t now_ms = timefmt_now_ms();
    static char bodies[BODIES][64 * 1024];
    size_t lens[BODIES], total_bytes = 0;
    for (int i = 0; i < BODIES; i++) {
        lens[i] = make_body(bodies[i], sizeof bodies[i], i, now_ms);
        total_bytes += lens[i];
    }
    struct native_ctx *ctx = native_ctx_new();
    struct native_opts o = {now_ms, false, true, 1000, 1 << 20};
    struct native_event *evs;
    long long events = 0, bytes = 0;
    double start = now_s(), elapsed = 0;
    for (int iter = 0; elapsed < seconds; iter++) {
        int n = native_decode(ctx, bodies[iter % BODIES], lens[iter % BODIES], &o, &evs);
        if (n != EVENTS_PER_BODY) {
            fprintf(stderr, "native_decode: %s\n", native_ctx_error(ctx)->message);
            return 1;
        }
        events += n;
        bytes += (long long)lens[iter % BODIES];
        if ((iter & 63) == 63) elapsed = now_s() - start;
    }
    native_ctx_free(ctx);
    printf("bench=native_decode events_per_s=%.0f mb_per_s=%.1f body_bytes=%zu "
           "events_per_body=%d\n",
           (double)events / elapsed, (double)bytes / elapsed / 1e6, total_bytes / BODIES,
           EVENTS_PER_BODY);
    return 0;
}
