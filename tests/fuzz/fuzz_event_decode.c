/*
 * Fuzz target: the binary event decoder (event_decode), the log's record format.
 *
 * Input: one record. Checks beyond "no crash, no over-read": a record that decodes is valid
 * by the canonical rule, every string lies inside the input, and re-encoding gives exactly the
 * input bytes (the encoding is canonical).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/event.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static void check_inside(struct event_str s, const uint8_t *p, size_t n)
{
    if (s.len == 0) return;
    CHECK((const uint8_t *)s.ptr >= p && (const uint8_t *)s.ptr + s.len <= p + n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t buf[EVENT_ENCODED_BYTES_MAX];
    uint8_t *copy = malloc(size ? size : 1); /* exact size: ASan sees any over-read */
    CHECK(copy != NULL);
    if (size) memcpy(copy, data, size);
    struct event ev;
    struct event_scratch sc;
    if (event_decode(copy, size, &ev, &sc) == 0) {
        CHECK(event_validate(&ev) == 0);
        const struct event_str all[] = {ev.site,       ev.name,      ev.url,     ev.referrer,
                                        ev.user_agent, ev.client_id, ev.country, ev.region,
                                        ev.city,       ev.language};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            check_inside(all[i], copy, size);
        for (uint32_t i = 0; i < ev.props_count; i++) {
            check_inside(ev.props[i].key, copy, size);
            check_inside(ev.props[i].value, copy, size);
        }
        int n = event_encode(&ev, buf, sizeof buf);
        CHECK(n > 0 && (size_t)n == size && memcmp(buf, copy, size) == 0);
    }
    free(copy);
    return 0;
}
