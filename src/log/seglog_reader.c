/*
 * seglog readers: iterate records from any offset, concurrently with the writer.
 *
 * A reader owns one descriptor on the segment it reads and a buffer holding the current batch
 * (decoded into a scratch buffer when LZ4). It never reads at or past the committed offset
 * (loaded with acquire ordering, so the bytes below it are written): committed is at a batch
 * boundary, so any batch holding an offset below it is complete on disk. Seeking: the segment
 * that holds the offset is found under smu, its index gives a file position at or before the
 * offset, and whole batches before the offset are skipped by their headers (only the header
 * and whatever else the same read returned is read for them).
 *
 * Retention may delete the segment a reader is in: its descriptor keeps the file readable; the
 * next segment switch notices the deletion and returns TALLY_ERANGE. A hole left by a repair is
 * skipped (the next record is the first of the following segment).
 */
#include "log/seglog_int.h"

#include "core/diag.h"
#include "log/batch.h"
#include "log/segment.h"
#include "tally/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* First read per batch: the header and, for small batches, the whole batch. Only the batch at
 * the reader's position is used from it: bytes past the committed end may still change (a failed
 * group is truncated and rewritten), so nothing is cached beyond the current batch. */
#define READER_READ_BYTES (8u << 10)

struct seglog_reader {
    struct seglog *log;
    uint64_t next; /* offset of the next record to return */
    int fd;        /* segment seg_base, or -1 */
    uint64_t seg_base;
    uint64_t seg_end; /* end offset of that segment when closed, else UINT64_MAX */
    uint64_t pos;     /* file position of the next batch to read */
    uint8_t *buf;     /* current batch (header + stored payload) */
    size_t cap;
    uint8_t *scratch; /* decoded LZ4 payload */
    size_t scratch_cap;
    const uint8_t *raw; /* records of the current batch, NULL when none */
    uint32_t raw_len, raw_pos;
    uint64_t raw_off; /* offset of the record at raw_pos */
};

int seglog_reader_open(struct seglog *log, uint64_t from_offset, struct seglog_reader **out)
{
    *out = NULL;
    uint64_t start = seglog_start_offset(log);
    if (from_offset < start || from_offset > seglog_committed_offset(log)) return TALLY_ERANGE;
    struct seglog_reader *r = calloc(1, sizeof *r);
    if (!r) return TALLY_ENOMEM;
    r->log = log;
    r->next = from_offset;
    r->fd = -1;
    pthread_mutex_lock(&log->smu);
    log->readers_open++;
    pthread_mutex_unlock(&log->smu);
    *out = r;
    return TALLY_OK;
}

void seglog_reader_close(struct seglog_reader *r)
{
    if (!r) return;
    if (r->fd >= 0) r->log->fs->close(r->log->fs->ctx, r->fd);
    pthread_mutex_lock(&r->log->smu);
    r->log->readers_open--;
    pthread_mutex_unlock(&r->log->smu);
    free(r->buf);
    free(r->scratch);
    free(r);
}

uint64_t seglog_reader_position(const struct seglog_reader *r)
{
    return r->next;
}

/* Makes r->fd the segment holding r->next (jumping a repair hole), positioned by the index. */
static int reader_locate(struct seglog_reader *r)
{
    struct seglog *log = r->log;
    /* Inside a closed segment already open: no lookup (it may even be deleted meanwhile). */
    if (r->fd >= 0 && r->seg_end != UINT64_MAX && r->next < r->seg_end) return TALLY_OK;
    pthread_mutex_lock(&log->smu);
    int i = seglog_seg_find(log, r->next);
    if (i < 0) {
        pthread_mutex_unlock(&log->smu);
        return TALLY_ERANGE; /* deleted by retention */
    }
    if (r->next >= log->segs[i].end && (uint32_t)i + 1 < log->nsegs) {
        i++;
        r->next = log->segs[i].base; /* a hole left by a repair */
    }
    struct seg *s = &log->segs[i];
    uint64_t seg_end = s->closed ? s->end : UINT64_MAX;
    if (r->fd >= 0 && r->seg_base == s->base) {
        r->seg_end = seg_end;
        pthread_mutex_unlock(&log->smu);
        return TALLY_OK;
    }
    struct segindex_entry e = segindex_lookup(&s->idx, (uint32_t)(r->next - s->base));
    uint64_t base = s->base;
    pthread_mutex_unlock(&log->smu);

    if (r->fd >= 0) log->fs->close(log->fs->ctx, r->fd);
    r->fd = -1;
    char path[SEGLOG_PATH_MAX];
    int rc = segment_path(path, sizeof path, log->dir, base, SEGMENT_SUFFIX);
    if (rc) return rc;
    int fd = log->fs->open(log->fs->ctx, path, O_RDONLY, 0);
    if (fd < 0) return fd == -ENOENT ? TALLY_ERANGE : tally_err_from_errno(-fd);
    r->fd = fd;
    r->seg_base = base;
    r->seg_end = seg_end;
    r->pos = e.pos;
    return TALLY_OK;
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return TALLY_OK;
    size_t c = *cap ? *cap : READER_READ_BYTES;
    while (c < need)
        c *= 2;
    uint8_t *n = realloc(*buf, c);
    if (!n) return TALLY_ENOMEM;
    *buf = n;
    *cap = c;
    return TALLY_OK;
}

static int reader_corrupt(struct seglog_reader *r, const char *what)
{
    diag_error("seglog: %s/%020" PRIu64 ".seg: %s at byte %" PRIu64 " (reading offset %" PRIu64 ")",
               r->log->dir, r->seg_base, what, r->pos, r->next);
    return TALLY_ECORRUPT;
}

/* Reads the batch at r->pos: skips it when it lies wholly before r->next, else decodes it. */
static int reader_load_batch(struct seglog_reader *r)
{
    const struct fsio *fs = r->log->fs;
    int rc = grow(&r->buf, &r->cap, READER_READ_BYTES);
    if (rc) return rc;
    size_t got;
    rc = fsio_read_full(fs, r->fd, r->buf, READER_READ_BYTES, r->pos, &got);
    if (rc) return rc;
    struct batch_header h;
    if (got < BATCH_HEADER_BYTES) return reader_corrupt(r, "unexpected end of file");
    if (batch_header_decode(r->buf, got, &h)) return reader_corrupt(r, "invalid batch header");
    uint64_t total = batch_total_bytes(&h);
    if (h.base_offset + h.record_count <= r->next) {
        r->pos += total;
        return TALLY_OK;
    }
    if (h.base_offset > r->next) return reader_corrupt(r, "offsets jump");
    if (total > got) {
        if ((rc = grow(&r->buf, &r->cap, (size_t)total))) return rc;
        size_t more;
        rc = fsio_read_full(fs, r->fd, r->buf + got, (size_t)total - got, r->pos + got, &more);
        if (rc) return rc;
        if (more != total - got) return reader_corrupt(r, "unexpected end of file");
    }
    if (batch_verify(&h, r->buf)) return reader_corrupt(r, "batch checksum mismatch");
    if (h.codec == BATCH_CODEC_LZ4 && (rc = grow(&r->scratch, &r->scratch_cap, h.raw_len)))
        return rc;
    const uint8_t *raw;
    if (batch_payload(&h, r->buf, r->scratch, &raw)) return reader_corrupt(r, "invalid payload");
    r->raw = raw;
    r->raw_len = h.raw_len;
    r->raw_pos = 0;
    r->raw_off = h.base_offset;
    r->pos += total;
    return TALLY_OK;
}

int seglog_reader_next(struct seglog_reader *r, struct seglog_record *rec)
{
    for (;;) {
        while (r->raw && r->raw_pos < r->raw_len) {
            struct batch_record br;
            batch_record_next(r->raw, r->raw_len, &r->raw_pos, &br);
            uint64_t off = r->raw_off++;
            if (off < r->next) continue; /* before the position the reader was opened at */
            rec->offset = off;
            rec->ts_ms = br.ts_ms;
            rec->data = br.data;
            rec->len = br.len;
            r->next = off + 1;
            return TALLY_OK;
        }
        r->raw = NULL;
        if (r->next >= seglog_committed_offset(r->log)) return TALLY_EAGAIN;
        int rc = reader_locate(r);
        if (!rc) rc = reader_load_batch(r);
        if (rc) return rc;
    }
}
