/*
 * Fuzz target: User-Agent classification (ua_classify through the cache, and bots_classify).
 * Input: raw bytes, used as one User-Agent (cut at the first NUL). Checks that outputs are
 * bounded, NUL-terminated, free of control bytes, and that the cached and uncached paths agree,
 * as do the prefiltered and unfiltered rule scans (a disagreement is a prefilter soundness bug).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/bots.h"
#include "ingest/ua.h"

static void check_str(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    if (n >= cap) abort();
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        if (ua_init(256) != 0 || bots_init() != 0) abort();
        ready = 1;
    }
    char *ua = malloc(size + 1);
    if (!ua) return 0;
    memcpy(ua, data, size);
    ua[size] = 0;
    ua_info a, b;
    ua_classify(ua, &a);
    ua_classify_uncached(ua, &b);
    check_str(a.browser, sizeof a.browser);
    check_str(a.browser_version, sizeof a.browser_version);
    check_str(a.os, sizeof a.os);
    check_str(a.os_version, sizeof a.os_version);
    if (strcmp(a.browser, b.browser) || strcmp(a.os, b.os) || a.device != b.device ||
        a.server_sdk != b.server_sdk)
        abort();
    if ((unsigned)a.device > UA_DEVICE_BOT) abort();
    ua_set_prefilter(false);
    ua_classify_uncached(ua, &b);
    ua_set_prefilter(true);
    if (strcmp(a.browser, b.browser) || strcmp(a.browser_version, b.browser_version) ||
        strcmp(a.os, b.os) || strcmp(a.os_version, b.os_version) || a.device != b.device)
        abort();
    bots_verdict v = bots_classify(ua);
    if (a.server_sdk && v != BOTS_HUMAN) abort(); /* SDKs are never bots */
    free(ua);
    return 0;
}
