/*
 * batch: the on-disk record batch of the segmented log (seglog). A batch is the unit of
 * compression, checksum, fsync and recovery.
 *
 * Byte layout (all integers little-endian; header is BATCH_HEADER_BYTES = 52 bytes):
 *
 *   off size field
 *    0   4   magic        "TLB1" (0x54 0x4C 0x42 0x31)
 *    4   8   checksum     XXH3-64 (seed 0) of bytes [12, 52 + stored_len): header after the
 *                         checksum, then the stored payload
 *   12   1   version      1
 *   13   1   codec        0 = none (payload stored raw), 1 = LZ4 block
 *   14   2   reserved     0
 *   16   8   base_offset  offset of the first record; the batch covers [base, base + count)
 *   24   4   record_count >= 1
 *   28   4   stored_len   payload bytes that follow the header on disk
 *   32   4   raw_len      payload bytes after decoding (== stored_len when codec is none)
 *   36   8   ts_min_ms    smallest record timestamp (the "first timestamp")
 *   44   8   ts_max_ms    largest record timestamp (the "last timestamp"; retention by age uses
 *                         it, so a segment is never aged out while it holds a newer record
 *                         even if producers' clocks disagree)
 *   52       payload      stored_len bytes
 *
 * Raw payload: record_count records back to back, each
 *     u32 len | i64 ts_ms | len bytes of opaque data
 * (BATCH_RECORD_HEADER_BYTES = 12). The writer's queue holds records in exactly this form, so a
 * batch is a slice of the queue, compressed or not: no per-record re-encoding.
 *
 * Validity rule (a batch is accepted only when all hold):
 *   magic, version, codec known, reserved zero; 1 <= record_count; stored_len and raw_len <=
 *   BATCH_BYTES_LIMIT; codec none => stored_len == raw_len; codec LZ4 => stored_len < raw_len;
 *   raw_len >= record_count * 12; ts_min_ms <= ts_max_ms; the checksum matches; and when the
 *   payload is decoded: LZ4 yields exactly raw_len bytes, the records fill raw_len exactly, there
 *   are exactly record_count of them and every timestamp lies in [ts_min_ms, ts_max_ms].
 * The file-level rules (base_offset continuity, segment boundaries) live in seglog.
 *
 * Nothing here allocates or keeps state; every function may be called from any thread.
 */
#ifndef TALLY_BATCH_H
#define TALLY_BATCH_H

#include <stddef.h>
#include <stdint.h>

#define BATCH_MAGIC0 0x54
#define BATCH_MAGIC1 0x4C
#define BATCH_MAGIC2 0x42
#define BATCH_MAGIC3 0x31
#define BATCH_VERSION 1
#define BATCH_HEADER_BYTES 52
#define BATCH_RECORD_HEADER_BYTES 12
/* Hard limit for stored and raw payload, whatever the options said when the batch was written. */
#define BATCH_BYTES_LIMIT (64u << 20)

enum batch_codec { BATCH_CODEC_NONE = 0, BATCH_CODEC_LZ4 = 1 };

struct batch_header {
    uint64_t checksum;
    uint64_t base_offset;
    uint32_t record_count;
    uint32_t stored_len;
    uint32_t raw_len;
    int64_t ts_min_ms;
    int64_t ts_max_ms;
    uint8_t version;
    uint8_t codec;
};

/* One record of a decoded batch; data points into the caller's buffer. */
struct batch_record {
    int64_t ts_ms;
    const uint8_t *data;
    uint32_t len;
};

/* Little-endian helpers, shared by the log's files. */
static inline void batch_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline void batch_put_u64(uint8_t *p, uint64_t v)
{
    batch_put_u32(p, (uint32_t)v);
    batch_put_u32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t batch_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t batch_get_u64(const uint8_t *p)
{
    return (uint64_t)batch_get_u32(p) | (uint64_t)batch_get_u32(p + 4) << 32;
}

/* Appends one record in raw-payload form at p (which must have 12 + len bytes); returns the
 * bytes written. */
size_t batch_put_record(uint8_t *p, const void *data, uint32_t len, int64_t ts_ms);

/* Bytes batch_encode() may need for raw_len payload bytes (header included). */
size_t batch_encode_bound(size_t raw_len);

/* Encodes one batch into out (capacity >= batch_encode_bound(raw_len)) from a raw payload of
 * record_count records (already in the raw form above, ts range given by the caller). With
 * try_lz4, the payload is LZ4-compressed when that makes it smaller, else stored raw.
 * Returns the encoded size (header + stored payload). raw_len <= BATCH_BYTES_LIMIT. */
size_t batch_encode(uint8_t *out, uint64_t base_offset, const uint8_t *raw, uint32_t raw_len,
                    uint32_t record_count, int64_t ts_min_ms, int64_t ts_max_ms, int try_lz4);

/* Parses and checks the header fields (not the checksum) of the n bytes at p.
 * 0, TALLY_EAGAIN when n < BATCH_HEADER_BYTES, TALLY_ECORRUPT when a field is invalid. */
int batch_header_decode(const uint8_t *p, size_t n, struct batch_header *h);

/* Size of the whole batch on disk. */
static inline uint64_t batch_total_bytes(const struct batch_header *h)
{
    return (uint64_t)BATCH_HEADER_BYTES + h->stored_len;
}

/* Checks the checksum of a whole batch (buf holds batch_total_bytes(h) bytes, h decoded from
 * it). 0 or TALLY_ECORRUPT. */
int batch_verify(const struct batch_header *h, const uint8_t *buf);

/* Decodes the payload of a verified batch and checks the records (the rest of the validity
 * rule). For codec none *raw points into buf, for LZ4 into scratch, which must hold h->raw_len
 * bytes. 0 or TALLY_ECORRUPT. */
int batch_payload(const struct batch_header *h, const uint8_t *buf, uint8_t *scratch,
                  const uint8_t **raw);

/* Walks the records of a raw payload checked by batch_payload(): *pos starts at 0; returns 1
 * and fills rec while records remain, 0 at the end. */
int batch_record_next(const uint8_t *raw, uint32_t raw_len, uint32_t *pos,
                      struct batch_record *rec);

/* Everything at once, for tools and the fuzz target: decodes the batch at the start of the n bytes
 * at p (header, checksum, payload, records). On success *used = batch size. scratch must hold
 * scratch_cap bytes; a raw_len above scratch_cap gives TALLY_ETOOBIG.
 * 0, TALLY_EAGAIN (need more bytes), TALLY_ECORRUPT or TALLY_ETOOBIG. */
int batch_decode(const uint8_t *p, size_t n, uint8_t *scratch, size_t scratch_cap,
                 struct batch_header *h, const uint8_t **raw, size_t *used);

#endif
