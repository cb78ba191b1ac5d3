/* segindex: sparse offset index of a segment (rule and file layout in segindex.h). */
#include "log/segindex.h"

#include "log/batch.h"
#include "tally/error.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define SEGINDEX_MAGIC "TLX1"

void segindex_init(struct segindex *x, uint32_t interval_bytes)
{
    memset(x, 0, sizeof *x);
    x->interval_bytes = interval_bytes;
}

void segindex_free(struct segindex *x)
{
    free(x->e);
    x->e = NULL;
    x->n = x->cap = 0;
}

static int segindex_reserve(struct segindex *x, uint32_t n)
{
    if (n <= x->cap) return TALLY_OK;
    uint32_t cap = x->cap ? x->cap : 64;
    while (cap < n)
        cap *= 2;
    struct segindex_entry *e = realloc(x->e, (size_t)cap * sizeof *e);
    if (!e) return TALLY_ENOMEM;
    x->e = e;
    x->cap = cap;
    return TALLY_OK;
}

int segindex_note(struct segindex *x, uint32_t rel, uint32_t pos)
{
    if (x->n > 0 && pos - x->e[x->n - 1].pos < x->interval_bytes) return TALLY_OK;
    if (x->n > 0 && pos <= x->e[x->n - 1].pos) return TALLY_OK;
    int r = segindex_reserve(x, x->n + 1);
    if (r) return r;
    x->e[x->n++] = (struct segindex_entry){rel, pos};
    return TALLY_OK;
}

struct segindex_entry segindex_lookup(const struct segindex *x, uint32_t rel)
{
    struct segindex_entry none = {0, 0};
    if (x->n == 0 || x->e[0].rel > rel) return none;
    uint32_t lo = 0, hi = x->n; /* invariant: e[lo].rel <= rel, answer in [lo, hi) */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (x->e[mid].rel <= rel)
            lo = mid;
        else
            hi = mid;
    }
    return x->e[lo];
}

void segindex_truncate(struct segindex *x, uint64_t pos_end)
{
    while (x->n > 0 && x->e[x->n - 1].pos >= pos_end)
        x->n--;
}

int segindex_equal(const struct segindex *a, const struct segindex *b)
{
    if (a->n != b->n || a->interval_bytes != b->interval_bytes) return 0;
    return a->n == 0 || memcmp(a->e, b->e, (size_t)a->n * sizeof *a->e) == 0;
}

int segindex_copy(struct segindex *dst, const struct segindex *src)
{
    dst->n = 0;
    dst->interval_bytes = src->interval_bytes;
    int r = segindex_reserve(dst, src->n);
    if (r) return r;
    if (src->n) memcpy(dst->e, src->e, (size_t)src->n * sizeof *src->e);
    dst->n = src->n;
    return TALLY_OK;
}

int segindex_write(const struct fsio *fs, const char *path, const struct segindex *x,
                   const struct segindex_meta *m)
{
    size_t size = SEGINDEX_HEADER_BYTES + (size_t)x->n * SEGINDEX_ENTRY_BYTES;
    uint8_t *buf = malloc(size);
    if (!buf) return TALLY_ENOMEM;
    memcpy(buf, SEGINDEX_MAGIC, 4);
    batch_put_u32(buf + 4, x->n);
    batch_put_u64(buf + 16, m->base_offset);
    batch_put_u64(buf + 24, m->end_offset);
    batch_put_u64(buf + 32, m->segment_bytes);
    batch_put_u64(buf + 40, (uint64_t)m->ts_max_ms);
    batch_put_u32(buf + 48, x->interval_bytes);
    batch_put_u32(buf + 52, 0);
    for (uint32_t i = 0; i < x->n; i++) {
        uint8_t *p = buf + SEGINDEX_HEADER_BYTES + (size_t)i * SEGINDEX_ENTRY_BYTES;
        batch_put_u32(p, x->e[i].rel);
        batch_put_u32(p + 4, x->e[i].pos);
    }
    batch_put_u64(buf + 8, XXH3_64bits(buf + 16, size - 16));

    char tmp[4200];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int r = TALLY_EINVAL;
    if (n < 0 || (size_t)n >= sizeof tmp) goto out;
    int fd = fs->open(fs->ctx, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        r = tally_err_from_errno(-fd);
        goto out;
    }
    r = fsio_write_all(fs, fd, buf, size, 0);
    int c = fs->close(fs->ctx, fd);
    if (!r && c < 0) r = tally_err_from_errno(-c);
    if (!r) {
        int e = fs->rename(fs->ctx, tmp, path);
        if (e < 0) r = tally_err_from_errno(-e);
    }
    if (r) fs->unlink(fs->ctx, tmp);
out:
    free(buf);
    return r;
}

static int segindex_parse(const uint8_t *buf, size_t size, uint64_t base_offset, struct segindex *x,
                          struct segindex_meta *m)
{
    if (size < SEGINDEX_HEADER_BYTES || memcmp(buf, SEGINDEX_MAGIC, 4) != 0) return TALLY_ECORRUPT;
    uint32_t n = batch_get_u32(buf + 4);
    if (size != SEGINDEX_HEADER_BYTES + (size_t)n * SEGINDEX_ENTRY_BYTES) return TALLY_ECORRUPT;
    if (batch_get_u64(buf + 8) != XXH3_64bits(buf + 16, size - 16)) return TALLY_ECORRUPT;
    m->base_offset = batch_get_u64(buf + 16);
    m->end_offset = batch_get_u64(buf + 24);
    m->segment_bytes = batch_get_u64(buf + 32);
    m->ts_max_ms = (int64_t)batch_get_u64(buf + 40);
    if (m->base_offset != base_offset || m->end_offset < base_offset) return TALLY_ECORRUPT;
    if (m->end_offset - base_offset > UINT32_MAX || m->segment_bytes > UINT32_MAX)
        return TALLY_ECORRUPT;
    if (batch_get_u32(buf + 48) != x->interval_bytes || batch_get_u32(buf + 52) != 0)
        return TALLY_ECORRUPT;
    if ((n == 0) != (m->segment_bytes == 0)) return TALLY_ECORRUPT;
    int r = segindex_reserve(x, n);
    if (r) return r;
    x->n = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *p = buf + SEGINDEX_HEADER_BYTES + (size_t)i * SEGINDEX_ENTRY_BYTES;
        struct segindex_entry e = {batch_get_u32(p), batch_get_u32(p + 4)};
        if (i == 0 && (e.rel != 0 || e.pos != 0)) return TALLY_ECORRUPT;
        if (i > 0 && (e.rel <= x->e[i - 1].rel || e.pos <= x->e[i - 1].pos)) return TALLY_ECORRUPT;
        if (e.pos >= m->segment_bytes || e.rel >= m->end_offset - base_offset)
            return TALLY_ECORRUPT;
        x->e[x->n++] = e;
    }
    return TALLY_OK;
}

int segindex_read(const struct fsio *fs, const char *path, uint64_t base_offset, struct segindex *x,
                  struct segindex_meta *m)
{
    int fd = fs->open(fs->ctx, path, O_RDONLY, 0);
    if (fd < 0) return tally_err_from_errno(-fd);
    uint64_t size;
    uint8_t *buf = NULL;
    int r = fsio_file_size(fs, fd, &size);
    if (r) goto out;
    r = TALLY_ECORRUPT;
    if (size > SEGINDEX_FILE_BYTES_MAX || size < SEGINDEX_HEADER_BYTES) goto out;
    r = TALLY_ENOMEM;
    buf = malloc((size_t)size);
    if (!buf) goto out;
    size_t got;
    r = fsio_read_full(fs, fd, buf, (size_t)size, 0, &got);
    if (r) goto out;
    r = got == size ? segindex_parse(buf, got, base_offset, x, m) : TALLY_ECORRUPT;
    if (r) x->n = 0;
out:
    free(buf);
    fs->close(fs->ctx, fd);
    return r;
}
