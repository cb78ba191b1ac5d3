/*
 * Fuzz target for the log batch decoder (src/log/batch.h): arbitrary bytes are decoded as a
 * sequence of batches, the way a reader or the recovery scan meets them on disk. It must never
 * crash, read out of bounds or accept a batch that breaks the validity rule; every accepted
 * batch's records must lie inside the decoded payload and match the header's count.
 * A second pass re-decodes the input with each batch's checksum recomputed first, so the fuzzer
 * also reaches the LZ4 and record validation behind the checksum.
 * The seed corpus (tests/fuzz/corpus/fuzz_batch/) holds real encoded batches (raw and LZ4, one
 * or several records, empty records) and broken ones (truncated, bit-flipped, bad lengths).
 */
#include "log/batch.h"
#include "tally/error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define SCRATCH_BYTES (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Decodes batches back to back from buf; with fix_checksum, each batch's checksum is first
 * recomputed over its claimed bytes (when they are all present). */
static void decode_all(uint8_t *buf, size_t size, uint8_t *scratch, int fix_checksum)
{
    size_t pos = 0;
    while (pos < size) {
        struct batch_header h;
        const uint8_t *raw;
        size_t used = 0;
        if (fix_checksum && batch_header_decode(buf + pos, size - pos, &h) == TALLY_OK &&
            batch_total_bytes(&h) <= size - pos)
            batch_put_u64(
                buf + pos + 4,
                XXH3_64bits(buf + pos + 12, (size_t)(BATCH_HEADER_BYTES - 12) + h.stored_len));
        int r = batch_decode(buf + pos, size - pos, scratch, SCRATCH_BYTES, &h, &raw, &used);
        if (r) break;
        if (used != batch_total_bytes(&h) || used > size - pos) abort();
        uint32_t rp = 0, count = 0;
        struct batch_record rec;
        uint64_t sum = 0;
        while (batch_record_next(raw, h.raw_len, &rp, &rec)) {
            if (rec.data < raw || rec.data + rec.len > raw + h.raw_len) abort();
            if (rec.ts_ms < h.ts_min_ms || rec.ts_ms > h.ts_max_ms) abort();
            if (rec.len) sum += rec.data[0] + rec.data[rec.len - 1];
            count++;
        }
        if (count != h.record_count || rp != h.raw_len) abort();
        (void)sum;
        pos += used;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *scratch;
    if (!scratch) scratch = malloc(SCRATCH_BYTES);
    if (!scratch) return 0;
    /* Decode from a private copy so ASan sees any read past the input's end. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    decode_all(copy, size, scratch, 0);
    decode_all(copy, size, scratch, 1);
    free(copy);
    return 0;
}
