/*
 * seglog recovery at open.
 *
 * Phase 1 (read only): list the directory, and for each segment in offset order find how far
 * it is valid (segment.h rule) and rebuild its index in memory:
 *   - VERIFY_ALL: every segment is scanned from byte 0 (checksums of every batch).
 *   - VERIFY_TAIL: a segment whose .idx passes (segindex.h) and fits the file (closed: describes
 *     exactly this size; active: a prefix of it) is scanned only from its last index entry (its
 *     checkpoint) to the end of file; a closed one must end exactly where the index says. When
 *     that fails, the segment is scanned from byte 0 as in VERIFY_ALL.
 * Phase 2 (decide): a closed segment that is not valid to its end, or offsets that do not
 * continue exactly from one segment to the next, is corruption: fail with TALLY_ECORRUPT and a
 * message naming the file, byte and offsets, unless repair. With repair, bad closed segments
 * are dropped and the offsets no longer covered by any kept segment (between the first
 * segment's base and the end) are the lost ranges. Overlapping segments are always refused.
 * The active segment is never "corrupt": bytes from its first invalid batch on are a torn tail
 * (an interrupted write cannot be told apart from damage there).
 * Holes a repair accepted are remembered in quarantine/LOST (text, one "first end" line per
 * range of lost offsets, rewritten through a .tmp file, fdatasync'ed, renamed, directory
 * fsync'ed), so later opens accept exactly those gaps without repair and readers skip them.
 * Phase 3 (apply, skipped when read_only): move bad segments to quarantine/, truncate the torn
 * tail (then fdatasync), write back rebuilt indexes of closed segments, remove the active
 * segment's .idx (it was the checkpoint of the last clean close; it is written again at the
 * next roll or close), fsync the directory. Nothing is changed on disk before phase 3, so a
 * refused open leaves the directory as it was.
 */
#include "log/seglog_int.h"

#include "core/diag.h"
#include "log/segment.h"
#include "tally/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cand {
    uint64_t base;
    uint64_t size;        /* file size */
    uint64_t valid_bytes; /* valid prefix */
    uint64_t end;         /* offset after the valid prefix */
    int64_t ts_max_ms;
    int err; /* scan outcome (segment_scan_result.err) */
    char why[96];
    int bad;         /* closed segment to quarantine */
    int write_index; /* closed: rewrite its .idx */
    struct segment_scan_result res;
    struct segindex idx;
    struct segindex_meta meta;
};

struct listing {
    uint64_t *bases;
    size_t n, cap;
    char **tmps;
    size_t ntmps, captmps;
    int nomem;
};

static int listing_each(void *arg, const char *name)
{
    struct listing *l = arg;
    uint64_t base;
    if (segment_name_parse(name, &base)) {
        if (l->n == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 16;
            uint64_t *n = realloc(l->bases, cap * sizeof *n);
            if (!n) return l->nomem = 1;
            l->bases = n;
            l->cap = cap;
        }
        l->bases[l->n++] = base;
        return 0;
    }
    size_t len = strlen(name);
    if (len > 4 && strcmp(name + len - 4, ".tmp") == 0) {
        if (l->ntmps == l->captmps) {
            size_t cap = l->captmps ? l->captmps * 2 : 4;
            char **n = realloc(l->tmps, cap * sizeof *n);
            if (!n) return l->nomem = 1;
            l->tmps = n;
            l->captmps = cap;
        }
        if (!(l->tmps[l->ntmps] = strdup(name))) return l->nomem = 1;
        l->ntmps++;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Phase 1 for one segment, VERIFY_TAIL shortcut. 1 when it settled the segment. */
static int check_from_checkpoint(struct seglog *log, struct cand *c, int fd, int active,
                                 const struct segindex *disk, const struct segindex_meta *m)
{
    struct segindex_entry e = disk->e[disk->n - 1];
    if (segindex_copy(&c->idx, disk)) return 0;
    struct segment_scan_result res;
    if (segment_scan(log->fs, fd, c->size, c->base, e.pos, c->base + e.rel, &c->idx, &res))
        return 0;
    int ok = active ? res.valid_bytes > e.pos : res.err == 0 && res.end_offset == m->end_offset;
    if (!ok) return 0;
    c->res = res;
    c->valid_bytes = res.valid_bytes;
    c->end = res.end_offset;
    c->ts_max_ms = m->ts_max_ms > res.ts_max_ms ? m->ts_max_ms : res.ts_max_ms;
    c->err = res.err;
    memcpy(c->why, res.why, sizeof c->why);
    return 1;
}

static int check_segment(struct seglog *log, struct cand *c, int active)
{
    const struct fsio *fs = log->fs;
    char path[SEGLOG_PATH_MAX];
    int r = segment_path(path, sizeof path, log->dir, c->base, SEGMENT_SUFFIX);
    if (r) return r;
    int fd = fs->open(fs->ctx, path, O_RDONLY, 0);
    if (fd < 0) return tally_err_from_errno(-fd);
    r = fsio_file_size(fs, fd, &c->size);
    if (r) goto out;

    struct segindex disk;
    segindex_init(&disk, log->opt.index_interval_bytes);
    struct segindex_meta m = {0};
    char ipath[SEGLOG_PATH_MAX];
    int rd = segment_path(ipath, sizeof ipath, log->dir, c->base, SEGMENT_INDEX_SUFFIX);
    if (!rd) rd = segindex_read(fs, ipath, c->base, &disk, &m);
    int fits = rd == 0 && (active ? m.segment_bytes <= c->size : m.segment_bytes == c->size);
    if (log->opt.verify == SEGLOG_VERIFY_TAIL && fits && disk.n > 0 &&
        check_from_checkpoint(log, c, fd, active, &disk, &m)) {
        segindex_free(&disk);
        goto out;
    }
    c->idx.n = 0;
    r = segment_scan(fs, fd, c->size, c->base, 0, c->base, &c->idx, &c->res);
    if (r) {
        segindex_free(&disk);
        goto out;
    }
    c->valid_bytes = c->res.valid_bytes;
    c->end = c->res.end_offset;
    c->ts_max_ms = c->res.ts_max_ms;
    c->err = c->res.err;
    memcpy(c->why, c->res.why, sizeof c->why);
    if (!active && c->err == 0)
        c->write_index = !(fits && m.end_offset == c->end && segindex_equal(&disk, &c->idx));
    segindex_free(&disk);
out:
    fs->close(fs->ctx, fd);
    return r;
}

static void report_lost(struct seglog_open_report *rep, uint64_t first, uint64_t end)
{
    if (first >= end) return;
    rep->lost_records += end - first;
    if (rep->lost_range_count > 0 && rep->lost[rep->lost_range_count - 1].end == first) {
        rep->lost[rep->lost_range_count - 1].end = end;
        return;
    }
    if (rep->lost_range_count < SEGLOG_LOST_RANGES_MAX) {
        rep->lost[rep->lost_range_count].first = first;
        rep->lost[rep->lost_range_count].end = end;
        rep->lost_range_count++;
    }
}

static void msg_append(struct seglog_open_report *rep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void msg_set(struct seglog_open_report *rep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sets the report's message (truncated to fit). */
static void msg_set(struct seglog_open_report *rep, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->message, sizeof rep->message, fmt, ap);
    va_end(ap);
}

static void msg_append(struct seglog_open_report *rep, const char *fmt, ...)
{
    size_t used = strlen(rep->message);
    if (used + 1 >= sizeof rep->message) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->message + used, sizeof rep->message - used, fmt, ap);
    va_end(ap);
}

#define LOST_FILE_BYTES_MAX (1u << 20)

/* Ranges of offsets a past repair gave up ([first, end) pairs), from quarantine/LOST. */
struct accepted {
    uint64_t (*r)[2];
    size_t n;
    char *text; /* the file as read, to append to */
    size_t text_len;
    uint64_t (*fresh)[2]; /* ranges this repair gives up */
    size_t nfresh;
};

static void accepted_free(struct accepted *a)
{
    free(a->r);
    free(a->text);
    free(a->fresh);
}

static int accepted_covers(const struct accepted *a, uint64_t first, uint64_t end)
{
    for (size_t i = 0; i < a->n; i++)
        if (a->r[i][0] <= first && end <= a->r[i][1]) return 1;
    return 0;
}

static int accepted_load(struct seglog *log, struct accepted *a)
{
    const struct fsio *fs = log->fs;
    char path[SEGLOG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/quarantine/LOST", log->dir);
    int fd = fs->open(fs->ctx, path, O_RDONLY, 0);
    if (fd == -ENOENT) return TALLY_OK;
    if (fd < 0) return tally_err_from_errno(-fd);
    uint64_t size;
    int r = fsio_file_size(fs, fd, &size);
    if (!r && size > LOST_FILE_BYTES_MAX) r = TALLY_ECORRUPT;
    if (!r && !(a->text = malloc((size_t)size + 1))) r = TALLY_ENOMEM;
    if (!r) r = fsio_read_full(fs, fd, a->text, (size_t)size, 0, &a->text_len);
    fs->close(fs->ctx, fd);
    if (r) return r;
    a->text[a->text_len] = 0;
    size_t lines = 1;
    for (size_t i = 0; i < a->text_len; i++)
        lines += a->text[i] == '\n';
    if (!(a->r = calloc(lines, sizeof *a->r))) return TALLY_ENOMEM;
    const char *p = a->text;
    while (*p) {
        char *e1, *e2;
        unsigned long long first = strtoull(p, &e1, 10);
        unsigned long long end = strtoull(e1, &e2, 10);
        if (e1 != p && e2 != e1 && first < end) {
            a->r[a->n][0] = first;
            a->r[a->n][1] = end;
            a->n++;
        }
        const char *nl = strchr(p, '\n');
        if (!nl) break;
        p = nl + 1;
    }
    return TALLY_OK;
}

/* Adds this open's lost ranges to quarantine/LOST (durably). */
static int accepted_save(struct seglog *log, const struct accepted *a)
{
    const struct fsio *fs = log->fs;
    char qdir[SEGLOG_PATH_MAX + 16], path[SEGLOG_PATH_MAX + 32], tmp[SEGLOG_PATH_MAX + 32];
    snprintf(qdir, sizeof qdir, "%s/quarantine", log->dir);
    snprintf(path, sizeof path, "%s/LOST", qdir);
    snprintf(tmp, sizeof tmp, "%s/LOST.tmp", qdir);
    int e = fs->mkdir(fs->ctx, qdir, 0755);
    if (e < 0 && e != -EEXIST) return tally_err_from_errno(-e);
    size_t cap = a->text_len + a->nfresh * 48 + 2;
    char *buf = malloc(cap);
    if (!buf) return TALLY_ENOMEM;
    size_t len = 0;
    if (a->text_len) {
        memcpy(buf, a->text, a->text_len);
        len = a->text_len;
        if (buf[len - 1] != '\n') buf[len++] = '\n';
    }
    for (size_t i = 0; i < a->nfresh; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%" PRIu64 " %" PRIu64 "\n", a->fresh[i][0],
                                a->fresh[i][1]);
    int r = TALLY_OK;
    int fd = fs->open(fs->ctx, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) r = tally_err_from_errno(-fd);
    if (!r) {
        r = fsio_write_all(fs, fd, buf, len, 0);
        if (!r && (e = fs->fdatasync(fs->ctx, fd)) < 0) r = tally_err_from_errno(-e);
        fs->close(fs->ctx, fd);
    }
    if (!r && (e = fs->rename(fs->ctx, tmp, path)) < 0) r = tally_err_from_errno(-e);
    if (!r && (e = fs->fsync_dir(fs->ctx, qdir)) < 0) r = tally_err_from_errno(-e);
    free(buf);
    return r;
}

/* Phase 2 without repair: the first problem, as a message. 0 when none. */
static int find_problem(struct seglog *log, struct cand *c, size_t n, const struct accepted *acc,
                        struct seglog_open_report *rep)
{
    for (size_t i = 0; i < n; i++) {
        int active = i == n - 1;
        if (!active && c[i].err) {
            msg_set(rep,
                    "seglog: %s/%020" PRIu64 ".seg: closed segment corrupt at byte %" PRIu64
                    " (offset %" PRIu64 "): %s; repair would quarantine it, losing offsets "
                    "[%" PRIu64 ", %" PRIu64 ")",
                    log->dir, c[i].base, c[i].valid_bytes, c[i].end, c[i].why, c[i].base,
                    c[i + 1].base);
            return TALLY_ECORRUPT;
        }
        if (!active && c[i].end != c[i + 1].base &&
            !(c[i].end < c[i + 1].base && accepted_covers(acc, c[i].end, c[i + 1].base))) {
            msg_set(rep,
                    "seglog: %s: segment %020" PRIu64 ".seg ends at offset %" PRIu64
                    " but the next one starts at %" PRIu64 " (%s)",
                    log->dir, c[i].base, c[i].end, c[i + 1].base,
                    c[i].end < c[i + 1].base ? "gap" : "overlap");
            return TALLY_ECORRUPT;
        }
    }
    return TALLY_OK;
}

static int quarantine(struct seglog *log, const struct cand *c)
{
    const struct fsio *fs = log->fs;
    char qdir[SEGLOG_PATH_MAX + 16], from[SEGLOG_PATH_MAX], to[SEGLOG_PATH_MAX + 64];
    snprintf(qdir, sizeof qdir, "%s/quarantine", log->dir);
    int e = fs->mkdir(fs->ctx, qdir, 0755);
    if (e < 0 && e != -EEXIST) return tally_err_from_errno(-e);
    const char *suffixes[2] = {SEGMENT_SUFFIX, SEGMENT_INDEX_SUFFIX};
    for (int k = 0; k < 2; k++) {
        segment_path(from, sizeof from, log->dir, c->base, suffixes[k]);
        /* Keep earlier quarantined copies: add .1, .2, ... when the name is taken. */
        for (int attempt = 0; attempt < 1000; attempt++) {
            int n = attempt ? snprintf(to, sizeof to, "%s/%020" PRIu64 "%s.%d", qdir, c->base,
                                       suffixes[k], attempt)
                            : snprintf(to, sizeof to, "%s/%020" PRIu64 "%s", qdir, c->base,
                                       suffixes[k]);
            if (n < 0 || (size_t)n >= sizeof to) return TALLY_EINVAL;
            int probe = fs->open(fs->ctx, to, O_RDONLY, 0);
            if (probe >= 0) {
                fs->close(fs->ctx, probe);
                continue;
            }
            break;
        }
        e = fs->rename(fs->ctx, from, to);
        if (e < 0 && !(k == 1 && e == -ENOENT)) return tally_err_from_errno(-e);
    }
    e = fs->fsync_dir(fs->ctx, qdir);
    if (e < 0) return tally_err_from_errno(-e);
    return TALLY_OK;
}

/* Phase 3 for the active segment: truncate the torn tail, drop its checkpoint index. */
static int apply_active(struct seglog *log, struct cand *a, struct seglog_open_report *rep)
{
    const struct fsio *fs = log->fs;
    char path[SEGLOG_PATH_MAX];
    segment_path(path, sizeof path, log->dir, a->base, SEGMENT_SUFFIX);
    int fd = fs->open(fs->ctx, path, O_RDWR, 0);
    if (fd < 0) return tally_err_from_errno(-fd);
    int r = TALLY_OK;
    if (a->valid_bytes < a->size) {
        uint64_t dropped = a->size - a->valid_bytes;
        diag_warn("seglog: %s: torn tail: dropped %" PRIu64 " bytes at byte %" PRIu64
                  " (%s); the log continues at offset %" PRIu64,
                  path, dropped, a->valid_bytes, a->why, a->end);
        int e = fs->ftruncate(fs->ctx, fd, a->valid_bytes);
        if (e == 0) e = fs->fdatasync(fs->ctx, fd);
        if (e < 0) r = tally_err_from_errno(-e);
        rep->torn_bytes = dropped;
        msg_append(rep, "torn tail of %020" PRIu64 ".seg: %" PRIu64 " bytes dropped. ", a->base,
                   dropped);
    }
    if (r) {
        fs->close(fs->ctx, fd);
        return r;
    }
    segment_path(path, sizeof path, log->dir, a->base, SEGMENT_INDEX_SUFFIX);
    int e = fs->unlink(fs->ctx, path);
    if (e < 0 && e != -ENOENT) {
        fs->close(fs->ctx, fd);
        return tally_err_from_errno(-e);
    }
    log->fd = fd;
    return TALLY_OK;
}

static int create_first_segment(struct seglog *log, struct cand *c)
{
    const struct fsio *fs = log->fs;
    char path[SEGLOG_PATH_MAX];
    int r = segment_path(path, sizeof path, log->dir, 0, SEGMENT_SUFFIX);
    if (r) return r;
    int fd = fs->open(fs->ctx, path, O_RDWR | O_CREAT | O_EXCL, 0644);
    if (fd < 0) return tally_err_from_errno(-fd);
    int e = fs->fsync_dir(fs->ctx, log->dir);
    if (e < 0) {
        fs->close(fs->ctx, fd);
        return tally_err_from_errno(-e);
    }
    log->fd = fd;
    memset(c, 0, sizeof *c);
    c->ts_max_ms = INT64_MIN;
    segindex_init(&c->idx, log->opt.index_interval_bytes);
    return TALLY_OK;
}

/* Moves the kept candidates into log->segs and sets the offsets. */
static int install(struct seglog *log, struct cand *c, size_t n)
{
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        kept += !c[i].bad;
    uint32_t cap = 16;
    while (cap < kept + 1)
        cap *= 2;
    log->segs = calloc(cap, sizeof *log->segs);
    if (!log->segs) return TALLY_ENOMEM;
    log->capsegs = cap;
    for (size_t i = 0; i < n; i++) {
        if (c[i].bad) continue;
        struct seg *s = &log->segs[log->nsegs++];
        s->base = c[i].base;
        s->end = c[i].end;
        s->bytes = c[i].valid_bytes;
        s->ts_max_ms = c[i].ts_max_ms;
        s->closed = i != n - 1;
        s->idx = c[i].idx;
        /* idx ownership moved */
        segindex_init(&c[i].idx, log->opt.index_interval_bytes);
    }
    struct seg *a = &log->segs[log->nsegs - 1];
    log->committed_seg = a->base;
    log->committed_pos = a->bytes;
    atomic_store(&log->written_end, a->end);
    atomic_store(&log->committed_end, a->end);
    atomic_store(&log->durable_end, a->end);
    return TALLY_OK;
}

static int decide_repair(struct seglog *log, struct cand *c, size_t n, struct accepted *acc,
                         struct seglog_open_report *rep)
{
    for (size_t i = 0; i + 1 < n; i++)
        if (c[i].err) c[i].bad = 1;
    /* Overlaps among what would be kept are refused even with repair. */
    size_t prev = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        if (c[i].bad) continue;
        if (prev != SIZE_MAX && c[prev].end > c[i].base) {
            msg_set(rep,
                    "seglog: %s: segments %020" PRIu64 ".seg and %020" PRIu64
                    ".seg overlap (offsets up to %" PRIu64 "); refusing even with repair",
                    log->dir, c[prev].base, c[i].base, c[prev].end);
            return TALLY_ECORRUPT;
        }
        prev = i;
    }
    if (!(acc->fresh = calloc(n, sizeof *acc->fresh))) return TALLY_ENOMEM;
    uint64_t cur = c[0].base;
    for (size_t i = 0; i < n; i++) {
        if (c[i].bad) continue;
        if (cur < c[i].base && !accepted_covers(acc, cur, c[i].base)) {
            report_lost(rep, cur, c[i].base);
            acc->fresh[acc->nfresh][0] = cur;
            acc->fresh[acc->nfresh][1] = c[i].base;
            acc->nfresh++;
        }
        cur = c[i].end;
    }
    return TALLY_OK;
}

static int apply_repair(struct seglog *log, struct cand *c, size_t n,
                        struct seglog_open_report *rep)
{
    for (size_t i = 0; i < n; i++) {
        if (!c[i].bad) continue;
        int r = quarantine(log, &c[i]);
        if (r) {
            msg_set(rep, "seglog: %s: cannot quarantine %020" PRIu64 ".seg: %s", log->dir,
                    c[i].base, tally_strerror(r));
            return r;
        }
        rep->segments_quarantined++;
        diag_error("seglog: %s: repair: moved %020" PRIu64
                   ".seg to quarantine/ (%s at byte %" PRIu64 ")",
                   log->dir, c[i].base, c[i].why, c[i].valid_bytes);
        msg_append(rep, "quarantined %020" PRIu64 ".seg (%s at byte %" PRIu64 "). ", c[i].base,
                   c[i].why, c[i].valid_bytes);
    }
    for (uint32_t k = 0; k < rep->lost_range_count; k++) {
        diag_error("seglog: %s: repair: offsets [%" PRIu64 ", %" PRIu64 ") are lost", log->dir,
                   rep->lost[k].first, rep->lost[k].end);
        msg_append(rep, "lost offsets [%" PRIu64 ", %" PRIu64 "). ", rep->lost[k].first,
                   rep->lost[k].end);
    }
    return TALLY_OK;
}

static void write_indexes(struct seglog *log, struct cand *c, size_t n,
                          struct seglog_open_report *rep)
{
    char path[SEGLOG_PATH_MAX];
    for (size_t i = 0; i + 1 < n; i++) {
        if (c[i].bad || !c[i].write_index) continue;
        struct segindex_meta m = {c[i].base, c[i].end, c[i].valid_bytes, c[i].ts_max_ms};
        segment_path(path, sizeof path, log->dir, c[i].base, SEGMENT_INDEX_SUFFIX);
        int r = segindex_write(log->fs, path, &c[i].idx, &m);
        if (r)
            diag_warn("seglog: %s: cannot write rebuilt index: %s", path, tally_strerror(r));
        else
            diag_info("seglog: %s: index rebuilt", path);
        rep->indexes_rebuilt++;
    }
}

int seglog_recover(struct seglog *log, struct seglog_open_report *rep)
{
    const struct fsio *fs = log->fs;
    int r;
    if (!log->opt.read_only) {
        int e = fs->mkdir(fs->ctx, log->dir, 0755);
        if (e < 0 && e != -EEXIST) {
            msg_set(rep, "seglog: cannot create %s: %s", log->dir, strerror(-e));
            return tally_err_from_errno(-e);
        }
    }
    struct listing l = {0};
    int e = fs->list_dir(fs->ctx, log->dir, listing_each, &l);
    struct cand *c = NULL;
    struct accepted acc = {0};
    size_t n = l.n;
    if (l.nomem) {
        r = TALLY_ENOMEM;
        goto out;
    }
    if (e < 0) {
        msg_set(rep, "seglog: cannot list %s: %s", log->dir, strerror(-e));
        r = tally_err_from_errno(-e);
        goto out;
    }
    if (!log->opt.read_only) {
        char path[SEGLOG_PATH_MAX + 256];
        for (size_t i = 0; i < l.ntmps; i++) {
            snprintf(path, sizeof path, "%s/%s", log->dir, l.tmps[i]);
            fs->unlink(fs->ctx, path);
        }
    }
    if (n) qsort(l.bases, n, sizeof *l.bases, cmp_u64);
    c = calloc(n ? n : 1, sizeof *c);
    r = TALLY_ENOMEM;
    if (!c) goto out;
    for (size_t i = 0; i < (n ? n : 1); i++)
        segindex_init(&c[i].idx, log->opt.index_interval_bytes);

    if (n == 0) {
        if (log->opt.read_only) {
            msg_set(rep, "seglog: %s holds no log", log->dir);
            r = TALLY_ENOENT;
            goto out;
        }
        r = create_first_segment(log, &c[0]);
        if (!r) r = install(log, c, 1);
        goto out;
    }

    /* Phase 1 */
    for (size_t i = 0; i < n; i++) {
        c[i].base = l.bases[i];
        r = check_segment(log, &c[i], i == n - 1);
        if (!r && c[i].err && c[i].err != TALLY_ECORRUPT) r = c[i].err;
        if (r) {
            msg_set(rep, "seglog: %s/%020" PRIu64 ".seg: cannot read: %s", log->dir, c[i].base,
                    tally_strerror(r));
            goto out;
        }
    }

    /* Phase 2 */
    if ((r = accepted_load(log, &acc))) {
        msg_set(rep, "seglog: %s/quarantine/LOST: cannot read: %s", log->dir, tally_strerror(r));
        goto out;
    }
    if (log->opt.repair)
        r = decide_repair(log, c, n, &acc, rep);
    else
        r = find_problem(log, c, n, &acc, rep);
    if (r) goto out;

    /* Phase 3 */
    if (!log->opt.read_only) {
        if (log->opt.repair && (r = apply_repair(log, c, n, rep))) goto out;
        if (acc.nfresh && (r = accepted_save(log, &acc))) {
            msg_set(rep, "seglog: %s/quarantine/LOST: cannot write: %s", log->dir,
                    tally_strerror(r));
            goto out;
        }
        if ((r = apply_active(log, &c[n - 1], rep))) goto out;
        write_indexes(log, c, n, rep);
        e = fs->fsync_dir(fs->ctx, log->dir);
        if (e < 0) {
            r = tally_err_from_errno(-e);
            goto out;
        }
    }
    r = install(log, c, n);
out:
    if (r && rep->message[0]) diag_error("%s", rep->message);
    if (!r && log->nsegs) {
        rep->start_offset = log->segs[0].base;
        rep->end_offset = log->segs[log->nsegs - 1].end;
        if (rep->message[0])
            diag_warn("seglog: %s: opened after recovery: %s", log->dir, rep->message);
    }
    if (c)
        for (size_t i = 0; i < (n ? n : 1); i++)
            segindex_free(&c[i].idx);
    free(c);
    accepted_free(&acc);
    free(l.bases);
    for (size_t i = 0; i < l.ntmps; i++)
        free(l.tmps[i]);
    free(l.tmps);
    return r;
}
