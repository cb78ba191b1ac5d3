/* segment: segment file names and the validating scan (rules in segment.h). */
#include "log/segment.h"

#include "log/batch.h"
#include "tally/error.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEGMENT_SCAN_CHUNK_BYTES (1u << 20)

int segment_path(char *out, size_t cap, const char *dir, uint64_t base, const char *suffix)
{
    int n = snprintf(out, cap, "%s/%020" PRIu64 "%s", dir, base, suffix);
    return n < 0 || (size_t)n >= cap ? TALLY_EINVAL : TALLY_OK;
}

int segment_name_parse(const char *name, uint64_t *base)
{
    uint64_t v = 0;
    for (int i = 0; i < SEGMENT_NAME_DIGITS; i++) {
        if (name[i] < '0' || name[i] > '9') return 0;
        uint64_t d = (uint64_t)(name[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    if (strcmp(name + SEGMENT_NAME_DIGITS, SEGMENT_SUFFIX) != 0) return 0;
    *base = v;
    return 1;
}

struct scan_window {
    uint8_t *buf;
    size_t cap;
    uint64_t off; /* file position of buf[0] */
    size_t len;   /* valid bytes in buf */
};

/* Makes [pos, pos + need) available in the window; need <= file_size - pos. */
static int window_fill(const struct fsio *fs, int fd, uint64_t file_size, struct scan_window *w,
                       uint64_t pos, size_t need)
{
    if (pos >= w->off && pos + need <= w->off + w->len) return TALLY_OK;
    size_t want = need > SEGMENT_SCAN_CHUNK_BYTES ? need : SEGMENT_SCAN_CHUNK_BYTES;
    if (want > file_size - pos) want = (size_t)(file_size - pos);
    if (want > w->cap) {
        uint8_t *b = realloc(w->buf, want);
        if (!b) return TALLY_ENOMEM;
        w->buf = b;
        w->cap = want;
    }
    size_t got;
    int r = fsio_read_full(fs, fd, w->buf, want, pos, &got);
    w->off = pos;
    w->len = r ? 0 : got;
    if (r) return r;
    return got < need ? TALLY_EIO : TALLY_OK; /* the file shrank under us */
}

int segment_scan(const struct fsio *fs, int fd, uint64_t file_size, uint64_t seg_base,
                 uint64_t start_pos, uint64_t start_offset, struct segindex *idx,
                 struct segment_scan_result *res)
{
    memset(res, 0, sizeof *res);
    res->ts_max_ms = INT64_MIN;
    struct scan_window w = {0};
    uint64_t pos = start_pos, expect = start_offset;
    int r = TALLY_OK;
    while (pos < file_size) {
        if (file_size - pos < BATCH_HEADER_BYTES) {
            res->err = TALLY_ECORRUPT;
            snprintf(res->why, sizeof res->why, "partial batch header (%" PRIu64 " bytes)",
                     file_size - pos);
            break;
        }
        r = window_fill(fs, fd, file_size, &w, pos, BATCH_HEADER_BYTES);
        if (r) break;
        struct batch_header h;
        const uint8_t *p = w.buf + (pos - w.off);
        if (batch_header_decode(p, BATCH_HEADER_BYTES, &h) != TALLY_OK) {
            res->err = TALLY_ECORRUPT;
            snprintf(res->why, sizeof res->why, "invalid batch header");
            break;
        }
        uint64_t total = batch_total_bytes(&h);
        if (total > file_size - pos) {
            res->err = TALLY_ECORRUPT;
            snprintf(res->why, sizeof res->why, "batch of %" PRIu64 " bytes runs past end of file",
                     total);
            break;
        }
        if (h.base_offset != expect) {
            res->err = TALLY_ECORRUPT;
            snprintf(res->why, sizeof res->why, "batch base offset %" PRIu64 ", expected %" PRIu64,
                     h.base_offset, expect);
            break;
        }
        if (h.base_offset + h.record_count - seg_base > UINT32_MAX || pos > UINT32_MAX) {
            res->err = TALLY_ECORRUPT;
            snprintf(res->why, sizeof res->why, "segment exceeds the index limits");
            break;
        }
        r = window_fill(fs, fd, file_size, &w, pos, (size_t)total);
        if (r) break;
        p = w.buf + (pos - w.off);
        if (batch_verify(&h, p) != TALLY_OK) {
            res->err = TALLY_ECORRUPT;
            snprintf(res->why, sizeof res->why, "batch checksum mismatch");
            break;
        }
        if (idx) {
            r = segindex_note(idx, (uint32_t)(h.base_offset - seg_base), (uint32_t)pos);
            if (r) break;
        }
        if (h.ts_max_ms > res->ts_max_ms) res->ts_max_ms = h.ts_max_ms;
        pos += total;
        expect += h.record_count;
        res->batches++;
    }
    free(w.buf);
    res->valid_bytes = pos;
    res->end_offset = expect;
    if (r == TALLY_ENOMEM) return r;
    if (r) {
        res->err = r;
        snprintf(res->why, sizeof res->why, "read failed: %s", tally_strerror(r));
    }
    return TALLY_OK;
}
