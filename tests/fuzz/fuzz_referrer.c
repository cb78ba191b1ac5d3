/*
 * Fuzz target: referrer_classify. Input: up to six '\n'-separated fields: referrer URL, page
 * host, utm_source, utm_medium, utm_campaign, click id (a missing field is NULL). Checks that
 * outputs are bounded and NUL-terminated and that a channel is always set.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/referrer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        if (referrer_init() != 0) abort();
        ready = 1;
    }
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    char *f[6] = {0};
    char *p = buf;
    for (int i = 0; i < 6 && p; i++) {
        f[i] = p;
        p = strchr(p, '\n');
        if (p) *p++ = 0;
    }
    referrer_tags t = {
        .utm_source = f[2], .utm_medium = f[3], .utm_campaign = f[4], .click_id = f[5]};
    referrer_info r;
    referrer_classify(f[0], f[1], &t, &r);
    if (strnlen(r.source, sizeof r.source) >= sizeof r.source) abort();
    if (strnlen(r.referrer, sizeof r.referrer) >= sizeof r.referrer) abort();
    if (!r.channel || !r.channel[0] || !r.medium || !r.source[0]) abort();
    if (r.direct && strcmp(r.source, REFERRER_DIRECT) != 0) abort();
    referrer_classify(f[0], f[1], NULL, &r);
    free(buf);
    return 0;
}
