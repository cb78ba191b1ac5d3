/*
 * Benchmark: User-Agent classification, uncached (every uap-core rule list walked) and cached
 * (hash + shard lock + copy), plus bot detection and referrer classification for scale.
 * Output, one line each:
 *   bench=ua_classify uncached_per_s=N cached_per_s=N
 *   bench=bots_classify per_s=N
 *   bench=referrer_classify per_s=N
 * Single thread. UA_BENCH_SECONDS (default 1) is the time spent per measurement.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ingest/bots.h"
#include "ingest/referrer.h"
#include "ingest/ua.h"

static const char *const base[] = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/%d.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.%d Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_%d like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.%d Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/%d.0",
    "Mozilla/5.0 (compatible; Googlebot/2.%d; +http://www.google.com/bot.html)",
};

#define NUA 4096

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(void)
{
    double secs = getenv("UA_BENCH_SECONDS") ? atof(getenv("UA_BENCH_SECONDS")) : 1.0;
    if (secs <= 0) secs = 1.0;
    if (ua_init(NUA * 2) != 0 || bots_init() != 0 || referrer_init() != 0) {
        fprintf(stderr, "init failed\n");
        return 1;
    }
    static char uas[NUA][256];
    for (int i = 0; i < NUA; i++)
        snprintf(uas[i], sizeof uas[i], base[i % 6], i / 6);
    volatile int sink = 0;
    ua_info u;

    long n = 0;
    double t0 = now_s(), t;
    do {
        for (int k = 0; k < 64; k++, n++) {
            ua_classify_uncached(uas[n % NUA], &u);
            sink += u.device;
        }
    } while ((t = now_s()) - t0 < secs);
    double uncached = (double)n / (t - t0);

    for (int i = 0; i < NUA; i++)
        ua_classify(uas[i], &u); /* warm */
    n = 0;
    t0 = now_s();
    do {
        for (int k = 0; k < 1024; k++, n++) {
            ua_classify(uas[n % NUA], &u);
            sink += u.device;
        }
    } while ((t = now_s()) - t0 < secs);
    double cached = (double)n / (t - t0);
    printf("bench=ua_classify uncached_per_s=%.0f cached_per_s=%.0f\n", uncached, cached);

    n = 0;
    t0 = now_s();
    do {
        for (int k = 0; k < 1024; k++, n++)
            sink += bots_is_bot(uas[n % NUA]);
    } while ((t = now_s()) - t0 < secs);
    printf("bench=bots_classify per_s=%.0f\n", (double)n / (t - t0));

    static const char *const refs[] = {
        "https://www.google.com/",          "https://t.co/abc",
        "https://l.facebook.com/l.php?u=x", "https://www.some-blog.example/post/1",
        "https://example.com/self",         NULL,
    };
    referrer_info r;
    n = 0;
    t0 = now_s();
    do {
        for (int k = 0; k < 1024; k++, n++) {
            referrer_classify(refs[n % 6], "example.com", NULL, &r);
            sink += r.direct;
        }
    } while ((t = now_s()) - t0 < secs);
    printf("bench=referrer_classify per_s=%.0f\n", (double)n / (t - t0));

    referrer_shutdown();
    bots_shutdown();
    ua_shutdown();
    return sink == -1;
}
