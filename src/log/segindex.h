/*
 * segindex: the sparse offset index of one log segment, in memory and in its .idx file.
 *
 * Rule (deterministic, so an index rebuilt by scanning equals the one the writer built): walking
 * the segment's batches in file order, the batch at file position pos with first offset
 * base + rel gets an entry (rel, pos) when the index is empty or pos is at least interval_bytes
 * past the previous entry's pos. A reader seeking to offset o starts at the last entry with
 * rel <= o - base and skips whole batches by their headers from there.
 *
 * File layout (little-endian; written whole to NAME.idx.tmp then renamed, never fsynced: the
 * index is a hint, validated before use and rebuilt from the segment when it does not fit):
 *
 *   off size field
 *    0   4   magic         "TLX1"
 *    4   4   entry_count
 *    8   8   checksum      XXH3-64 of bytes [16, end of file)
 *   16   8   base_offset   must equal the segment's name
 *   24   8   end_offset    offset after the segment's last record when the file was written
 *   32   8   segment_bytes size of the segment the index describes
 *   40   8   ts_max_ms     largest record timestamp in that prefix (INT64_MIN: no record)
 *   48   4   interval_bytes
 *   52   4   reserved      0
 *   56       entries       entry_count x { u32 rel, u32 pos }
 *
 * Valid when: size == 56 + 8 * entry_count, magic, checksum, base matches, reserved zero,
 * interval equals the log's, entries strictly increasing in rel and pos, the first one (0, 0),
 * every pos < segment_bytes and rel < end_offset - base_offset. Whether it fits the segment's
 * bytes (size, batches at the entries) is checked by the caller against the data.
 *
 * Not thread-safe by itself: the owner (seglog) guards an index with its segment mutex.
 */
#ifndef TALLY_SEGINDEX_H
#define TALLY_SEGINDEX_H

#include "core/fsio.h"

#include <stdint.h>

#define SEGINDEX_HEADER_BYTES 56
#define SEGINDEX_ENTRY_BYTES 8
#define SEGINDEX_FILE_BYTES_MAX (64u << 20)

struct segindex_entry {
    uint32_t rel; /* offset - segment base */
    uint32_t pos; /* file position of the batch */
};

struct segindex {
    struct segindex_entry *e; /* owned; NULL when empty */
    uint32_t n, cap;
    uint32_t interval_bytes;
};

/* What the .idx file says about its segment. */
struct segindex_meta {
    uint64_t base_offset;
    uint64_t end_offset;
    uint64_t segment_bytes;
    int64_t ts_max_ms;
};

void segindex_init(struct segindex *x, uint32_t interval_bytes);
void segindex_free(struct segindex *x);

/* Applies the rule for a batch at pos with first offset base + rel (batches in file order).
 * 0 or TALLY_ENOMEM. */
int segindex_note(struct segindex *x, uint32_t rel, uint32_t pos);

/* The last entry with entry.rel <= rel; (0, 0) when the index is empty. */
struct segindex_entry segindex_lookup(const struct segindex *x, uint32_t rel);

/* Drops the entries at or beyond file position pos_end. */
void segindex_truncate(struct segindex *x, uint64_t pos_end);

/* 1 when both hold the same entries and interval. */
int segindex_equal(const struct segindex *a, const struct segindex *b);

/* Copies src into dst (dst initialised, its entries replaced). 0 or TALLY_ENOMEM. */
int segindex_copy(struct segindex *dst, const struct segindex *src);

/* Writes the index of a segment to path (through path.tmp and a rename). 0 or TALLY_E*. */
int segindex_write(const struct fsio *fs, const char *path, const struct segindex *x,
                   const struct segindex_meta *m);

/* Reads and checks path (see the validity rule). On success fills x (initialised by the
 * caller with the expected interval) and m. TALLY_ENOENT when missing, TALLY_ECORRUPT when it
 * does not pass, TALLY_EIO/ENOMEM otherwise. */
int segindex_read(const struct fsio *fs, const char *path, uint64_t base_offset, struct segindex *x,
                  struct segindex_meta *m);

#endif
