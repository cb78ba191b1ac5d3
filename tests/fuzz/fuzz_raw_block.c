/*
 * Fuzz target for the raw store's block decoders (src/store/raw.h): the input is a 16-byte
 * block key (site, UTC hour, first offset) followed by a block value of either layout (rows,
 * version 1; columns, version 2). raw_block_decode and raw_block_project must never crash or
 * read out of bounds; an accepted block yields at most RAW_BLOCK_EVENTS_MAX rows, every one in
 * the key's hour, and both decoders agree on the rows (count, times, offsets, visitors, ids).
 * The seed corpus (tests/fuzz/corpus/fuzz_raw_block/) holds real blocks of both layouts written
 * by raw_writer (test_store writes them when RAW_FUZZ_SEEDS names a directory).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/raw.h"
#include "tally/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct full {
    struct raw_row rows[RAW_BLOCK_EVENTS_MAX];
    size_t n;
    int64_t hour_ms;
    int bad;
};

static const int fields[] = {DE_NAME, DE_PATH, DE_CITY};

static int on_event(void *arg, const struct raw_event *ev)
{
    struct full *f = arg;
    if (f->n >= RAW_BLOCK_EVENTS_MAX) abort();
    if (ev->ts_ms < f->hour_ms || ev->ts_ms >= f->hour_ms + RAW_HOUR_MS) f->bad++;
    if (ev->props_count > DE_PROPS_MAX) abort();
    struct raw_row *r = &f->rows[f->n++];
    r->ts_in_hour_ms = (uint32_t)(ev->ts_ms - f->hour_ms); /* (checked above) */
    r->offset = ev->offset;
    r->visitor = ev->visitor;
    r->flags = ev->flags;
    for (size_t k = 0; k < 3; k++) r->val[k] = ev->id[fields[k]];
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 16) return 0;
    static struct full f;
    f.n = 0;
    f.bad = 0;
    f.hour_ms = (int64_t)((uint32_t)data[4] << 24 | (uint32_t)data[5] << 16 |
                          (uint32_t)data[6] << 8 | data[7]) * RAW_HOUR_MS;
    int rc = raw_block_decode(data, 16, data + 16, size - 16, on_event, &f);
    if (rc != TALLY_OK && rc != TALLY_ECORRUPT) abort();
    if (rc == TALLY_OK && f.bad) abort(); /* an accepted block lies in its hour */
    struct raw_row *rows = NULL;
    size_t n = 0;
    int rp = raw_block_project(data, 16, data + 16, size - 16, fields, 3, &rows, &n);
    if (rp != TALLY_OK && rp != TALLY_ECORRUPT && rp != TALLY_ENOMEM) abort();
    if (rp == TALLY_OK) {
        if (n > RAW_BLOCK_EVENTS_MAX) abort();
        for (size_t i = 0; i < n; i++)
            if (rows[i].ts_in_hour_ms >= RAW_HOUR_MS) abort();
        /* what the full decoder accepts, the projection returns alike */
        if (rc == TALLY_OK) {
            if (n != f.n) abort();
            for (size_t i = 0; i < n; i++) {
                const struct raw_row *a = &rows[i], *b = &f.rows[i];
                if (a->ts_in_hour_ms != b->ts_in_hour_ms || a->offset != b->offset ||
                    a->visitor != b->visitor || a->flags != b->flags ||
                    memcmp(a->val, b->val, 3 * sizeof a->val[0]) != 0)
                    abort();
            }
        }
    }
    free(rows);
    return 0;
}
