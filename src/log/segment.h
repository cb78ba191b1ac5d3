/*
 * segment: file names of log segments and the sequential scan that validates one.
 *
 * A segment is a file NNNNNNNNNNNNNNNNNNNN.seg (the 20-digit decimal offset of its first record)
 * holding record batches back to back (layout in batch.h) and nothing else; its sparse index is
 * NNNNNNNNNNNNNNNNNNNN.idx (segindex.h). A segment is valid up to byte V when the batches in
 * [0, V) are each valid (batch.h) and their base offsets are contiguous starting at the name.
 *
 * segment_scan() reads from a known-good point (the segment start or an index entry) with large
 * sequential reads and stops at the end of file or at the first batch that is not valid
 * (bad header, checksum mismatch, wrong base offset, or a batch running past the end of file:
 * a torn write). The caller decides what that means (torn tail of the active segment, or
 * corruption of a closed one). It checks checksums, not the records inside the payload (readers
 * do that when they decode), which keeps recovery at the speed of the disk.
 *
 * Functions here keep no state; any thread may call them.
 */
#ifndef TALLY_SEGMENT_H
#define TALLY_SEGMENT_H

#include "core/fsio.h"
#include "log/segindex.h"

#include <stdint.h>

#define SEGMENT_NAME_DIGITS 20
#define SEGMENT_SUFFIX ".seg"
#define SEGMENT_INDEX_SUFFIX ".idx"

/* Writes "<dir>/<20 digits><suffix>" into out. 0 or TALLY_EINVAL when it does not fit. */
int segment_path(char *out, size_t cap, const char *dir, uint64_t base, const char *suffix);

/* Parses a directory entry name "<20 digits>.seg"; 1 and *base on success, else 0. */
int segment_name_parse(const char *name, uint64_t *base);

struct segment_scan_result {
    uint64_t valid_bytes; /* end of the last valid batch (the scan's start when none) */
    uint64_t end_offset;  /* offset after the last valid batch */
    int64_t ts_max_ms;    /* largest ts_max_ms seen (INT64_MIN when no batch) */
    uint32_t batches;     /* valid batches seen */
    int err;              /* 0: clean end of file; TALLY_ECORRUPT: invalid at valid_bytes;
                             TALLY_EIO (or other): the file could not be read */
    char why[96];         /* what was wrong when err != 0 */
};

/* Scans fd (file_size bytes) from start_pos, where a batch with first offset start_offset must
 * begin, in a segment whose name is seg_base. When idx is not NULL every valid batch is noted in
 * it (segindex rule). Returns 0 (outcome in *res) or TALLY_ENOMEM. */
int segment_scan(const struct fsio *fs, int fd, uint64_t file_size, uint64_t seg_base,
                 uint64_t start_pos, uint64_t start_offset, struct segindex *idx,
                 struct segment_scan_result *res);

#endif
