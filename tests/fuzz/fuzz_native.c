/*
 * Fuzz target: the native ingest decoder (native_decode).
 *
 * Input: a request body. When the first byte is 0x01..0x07 it is not part of the body but
 * selects options: bit 0 privileged, bit 1 Content-Type NDJSON, bit 2 events_max = 3 (else
 * 1000). Plain JSON corpus files therefore run unprivileged with detection.
 *
 * Checks beyond "no crash, no sanitizer report": every accepted event is valid by the
 * canonical rule and survives the log encoding byte for byte; every rejection carries a
 * printable UTF-8 message, a status of 400/403/413 and an index within the body's events.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/event.h"
#include "ingest/native.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static bool same_str(struct event_str a, struct event_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static void check_event(const struct native_event *ne)
{
    static uint8_t buf[EVENT_ENCODED_BYTES_MAX], buf2[EVENT_ENCODED_BYTES_MAX];
    const struct event *ev = &ne->ev;
    CHECK(event_validate(ev) == 0);
    CHECK(ne->visitor_id.len <= NATIVE_VISITOR_ID_BYTES_MAX);
    CHECK(event_text_valid(ne->visitor_id.ptr, ne->visitor_id.len));
    CHECK(event_text_valid(ne->ip.ptr, ne->ip.len));
    int n = event_encode(ev, buf, sizeof buf);
    CHECK(n > 0);
    struct event out;
    struct event_scratch sc;
    CHECK(event_decode(buf, (size_t)n, &out, &sc) == 0);
    CHECK(same_str(out.site, ev->site) && same_str(out.name, ev->name) &&
          same_str(out.url, ev->url) && same_str(out.referrer, ev->referrer) &&
          out.ts_ms == ev->ts_ms && out.props_count == ev->props_count &&
          out.interactive == ev->interactive && out.has_revenue == ev->has_revenue);
    for (uint32_t i = 0; i < out.props_count; i++)
        CHECK(same_str(out.props[i].key, ev->props[i].key) &&
              same_str(out.props[i].value, ev->props[i].value) &&
              out.props[i].type == ev->props[i].type);
    CHECK(event_encode(&out, buf2, sizeof buf2) == n && memcmp(buf, buf2, (size_t)n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct native_ctx *ctx;
    if (!ctx) ctx = native_ctx_new();
    CHECK(ctx != NULL);
    struct native_opts o = {1767225600000LL, false, false, 1000, 1 << 20};
    if (size > 0 && data[0] >= 1 && data[0] <= 7) {
        o.privileged = data[0] & 1;
        o.ndjson = data[0] & 2;
        if (data[0] & 4) o.events_max = 3;
        data++;
        size--;
    }
    /* An exact-size copy: the body has no NUL after it, as from an HTTP buffer. */
    char *body = malloc(size ? size : 1);
    CHECK(body != NULL);
    if (size) memcpy(body, data, size);
    struct native_event *evs = NULL;
    int n = native_decode(ctx, body, size, &o, &evs);
    free(body);
    if (n > 0) {
        CHECK(evs != NULL && (uint32_t)n <= o.events_max);
        for (int i = 0; i < n; i++)
            check_event(&evs[i]);
    } else {
        const struct native_error *e = native_ctx_error(ctx);
        size_t len = strlen(e->message);
        CHECK(len > 0 && event_text_valid(e->message, len));
        for (size_t i = 0; i < len; i++)
            CHECK((unsigned char)e->message[i] >= 0x20);
        CHECK(e->http_status == 400 || e->http_status == 403 || e->http_status == 413 ||
              e->http_status == 503);
        CHECK(e->index >= -1 && e->index < (int)o.events_max);
    }
    return 0;
}
