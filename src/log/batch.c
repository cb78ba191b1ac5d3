/* batch: encoding and validation of log record batches (layout and validity rule in batch.h). */
#include "log/batch.h"

#include "tally/error.h"

#include <lz4.h>
#include <string.h>
#include <xxhash.h>

size_t batch_put_record(uint8_t *p, const void *data, uint32_t len, int64_t ts_ms)
{
    batch_put_u32(p, len);
    batch_put_u64(p + 4, (uint64_t)ts_ms);
    if (len) memcpy(p + BATCH_RECORD_HEADER_BYTES, data, len);
    return BATCH_RECORD_HEADER_BYTES + (size_t)len;
}

size_t batch_encode_bound(size_t raw_len)
{
    /* The LZ4 attempt writes at most raw_len - 1 bytes (it must beat raw), so the raw size bounds
     * the payload either way. */
    return BATCH_HEADER_BYTES + raw_len;
}

static uint64_t batch_hash(const uint8_t *batch, uint32_t stored_len)
{
    return XXH3_64bits(batch + 12, (size_t)(BATCH_HEADER_BYTES - 12) + stored_len);
}

size_t batch_encode(uint8_t *out, uint64_t base_offset, const uint8_t *raw, uint32_t raw_len,
                    uint32_t record_count, int64_t ts_min_ms, int64_t ts_max_ms, int try_lz4)
{
    uint8_t *payload = out + BATCH_HEADER_BYTES;
    uint32_t stored_len = raw_len;
    uint8_t codec = BATCH_CODEC_NONE;
    if (try_lz4 && raw_len > 16) {
        /* Capacity raw_len - 1: LZ4 gives up (returns 0) unless it beats storing raw. */
        int c = LZ4_compress_default((const char *)raw, (char *)payload, (int)raw_len,
                                     (int)raw_len - 1);
        if (c > 0) {
            stored_len = (uint32_t)c;
            codec = BATCH_CODEC_LZ4;
        }
    }
    if (codec == BATCH_CODEC_NONE) memcpy(payload, raw, raw_len);

    out[0] = BATCH_MAGIC0;
    out[1] = BATCH_MAGIC1;
    out[2] = BATCH_MAGIC2;
    out[3] = BATCH_MAGIC3;
    out[12] = BATCH_VERSION;
    out[13] = codec;
    out[14] = 0;
    out[15] = 0;
    batch_put_u64(out + 16, base_offset);
    batch_put_u32(out + 24, record_count);
    batch_put_u32(out + 28, stored_len);
    batch_put_u32(out + 32, raw_len);
    batch_put_u64(out + 36, (uint64_t)ts_min_ms);
    batch_put_u64(out + 44, (uint64_t)ts_max_ms);
    batch_put_u64(out + 4, batch_hash(out, stored_len));
    return BATCH_HEADER_BYTES + (size_t)stored_len;
}

int batch_header_decode(const uint8_t *p, size_t n, struct batch_header *h)
{
    if (n < BATCH_HEADER_BYTES) return TALLY_EAGAIN;
    if (p[0] != BATCH_MAGIC0 || p[1] != BATCH_MAGIC1 || p[2] != BATCH_MAGIC2 ||
        p[3] != BATCH_MAGIC3)
        return TALLY_ECORRUPT;
    h->checksum = batch_get_u64(p + 4);
    h->version = p[12];
    h->codec = p[13];
    h->base_offset = batch_get_u64(p + 16);
    h->record_count = batch_get_u32(p + 24);
    h->stored_len = batch_get_u32(p + 28);
    h->raw_len = batch_get_u32(p + 32);
    h->ts_min_ms = (int64_t)batch_get_u64(p + 36);
    h->ts_max_ms = (int64_t)batch_get_u64(p + 44);
    if (h->version != BATCH_VERSION || p[14] != 0 || p[15] != 0) return TALLY_ECORRUPT;
    if (h->record_count == 0 || h->stored_len > BATCH_BYTES_LIMIT || h->raw_len > BATCH_BYTES_LIMIT)
        return TALLY_ECORRUPT;
    if (h->codec == BATCH_CODEC_NONE) {
        if (h->stored_len != h->raw_len) return TALLY_ECORRUPT;
    } else if (h->codec == BATCH_CODEC_LZ4) {
        if (h->stored_len >= h->raw_len || h->stored_len == 0) return TALLY_ECORRUPT;
    } else {
        return TALLY_ECORRUPT;
    }
    if ((uint64_t)h->record_count * BATCH_RECORD_HEADER_BYTES > h->raw_len) return TALLY_ECORRUPT;
    if (h->ts_min_ms > h->ts_max_ms) return TALLY_ECORRUPT;
    if (h->base_offset > UINT64_MAX - h->record_count) return TALLY_ECORRUPT;
    return TALLY_OK;
}

int batch_verify(const struct batch_header *h, const uint8_t *buf)
{
    return batch_hash(buf, h->stored_len) == h->checksum ? TALLY_OK : TALLY_ECORRUPT;
}

int batch_payload(const struct batch_header *h, const uint8_t *buf, uint8_t *scratch,
                  const uint8_t **raw)
{
    const uint8_t *payload = buf + BATCH_HEADER_BYTES;
    if (h->codec == BATCH_CODEC_LZ4) {
        int d = LZ4_decompress_safe((const char *)payload, (char *)scratch, (int)h->stored_len,
                                    (int)h->raw_len);
        if (d < 0 || (uint32_t)d != h->raw_len) return TALLY_ECORRUPT;
        payload = scratch;
    }
    /* Records must fill the payload exactly, be exactly record_count, and have timestamps
     * inside the header's range. */
    uint32_t pos = 0, count = 0;
    while (pos < h->raw_len) {
        if (h->raw_len - pos < BATCH_RECORD_HEADER_BYTES) return TALLY_ECORRUPT;
        uint32_t len = batch_get_u32(payload + pos);
        int64_t ts = (int64_t)batch_get_u64(payload + pos + 4);
        pos += BATCH_RECORD_HEADER_BYTES;
        if (len > h->raw_len - pos) return TALLY_ECORRUPT;
        if (ts < h->ts_min_ms || ts > h->ts_max_ms) return TALLY_ECORRUPT;
        pos += len;
        if (++count > h->record_count) return TALLY_ECORRUPT;
    }
    if (count != h->record_count) return TALLY_ECORRUPT;
    *raw = payload;
    return TALLY_OK;
}

int batch_record_next(const uint8_t *raw, uint32_t raw_len, uint32_t *pos, struct batch_record *rec)
{
    if (*pos >= raw_len) return 0;
    const uint8_t *p = raw + *pos;
    rec->len = batch_get_u32(p);
    rec->ts_ms = (int64_t)batch_get_u64(p + 4);
    rec->data = p + BATCH_RECORD_HEADER_BYTES;
    *pos += BATCH_RECORD_HEADER_BYTES + rec->len;
    return 1;
}

int batch_decode(const uint8_t *p, size_t n, uint8_t *scratch, size_t scratch_cap,
                 struct batch_header *h, const uint8_t **raw, size_t *used)
{
    int r = batch_header_decode(p, n, h);
    if (r) return r;
    uint64_t total = batch_total_bytes(h);
    if (n < total) return TALLY_EAGAIN;
    if (batch_verify(h, p)) return TALLY_ECORRUPT;
    if (h->codec == BATCH_CODEC_LZ4 && h->raw_len > scratch_cap) return TALLY_ETOOBIG;
    r = batch_payload(h, p, scratch, raw);
    if (r) return r;
    *used = (size_t)total;
    return TALLY_OK;
}
