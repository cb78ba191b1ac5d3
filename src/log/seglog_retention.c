/*
 * seglog consumers registry and retention.
 *
 * Rule: a segment may be deleted only when (a) it is closed and lies wholly before the segment
 * that holds the committed position (invariant 4 in seglog_int.h: never the active one, nor one
 * a rollback could reopen), (b) every registered consumer's offset is >= the segment's end
 * (it has passed every record in it), and (c) it is due: its newest record (ts_max_ms) is older
 * than now - retention_age_ms, or the log's total segment bytes exceed retention_bytes.
 * Segments are considered oldest first and the run stops at the first one that must stay, so
 * the log never gets holes. The list is updated under smu first; the files are unlinked after
 * (a reader that already has one open keeps reading it; one that tries to open it gets
 * TALLY_ERANGE), then the directory is fsync'ed.
 */
#include "log/seglog_int.h"

#include "core/diag.h"
#include "log/segment.h"
#include "tally/error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

int seglog_consumer_register(struct seglog *log, const char *name, uint64_t offset)
{
    if (!name || !name[0] || strlen(name) > SEGLOG_CONSUMER_NAME_MAX) return TALLY_EINVAL;
    pthread_mutex_lock(&log->smu);
    int id = -1, free_id = -1;
    for (int i = 0; i < SEGLOG_CONSUMERS_MAX; i++) {
        struct seglog_consumer *c = &log->consumers[i];
        if (c->used && strcmp(c->name, name) == 0) id = i;
        if (!c->used && free_id < 0) free_id = i;
    }
    if (id < 0 && free_id >= 0) {
        id = free_id;
        log->consumers[id].used = 1;
        snprintf(log->consumers[id].name, sizeof log->consumers[id].name, "%s", name);
    }
    if (id >= 0) log->consumers[id].offset = offset;
    pthread_mutex_unlock(&log->smu);
    return id >= 0 ? id : TALLY_EFULL;
}

int seglog_consumer_advance(struct seglog *log, int id, uint64_t offset)
{
    if (id < 0 || id >= SEGLOG_CONSUMERS_MAX) return TALLY_ENOENT;
    pthread_mutex_lock(&log->smu);
    int r = TALLY_ENOENT;
    if (log->consumers[id].used) {
        log->consumers[id].offset = offset;
        r = TALLY_OK;
    }
    pthread_mutex_unlock(&log->smu);
    return r;
}

int seglog_consumer_unregister(struct seglog *log, int id)
{
    if (id < 0 || id >= SEGLOG_CONSUMERS_MAX) return TALLY_ENOENT;
    pthread_mutex_lock(&log->smu);
    int r = TALLY_ENOENT;
    if (log->consumers[id].used) {
        memset(&log->consumers[id], 0, sizeof log->consumers[id]);
        r = TALLY_OK;
    }
    pthread_mutex_unlock(&log->smu);
    return r;
}

/* Under smu: how many of the oldest segments may go now (rule above). */
static uint32_t retention_count(struct seglog *log, int64_t now_ms, int *blocked)
{
    const struct seglog_options *o = &log->opt;
    uint64_t total = 0;
    for (uint32_t i = 0; i < log->nsegs; i++)
        total += log->segs[i].bytes;
    uint64_t min_consumer = UINT64_MAX;
    for (int i = 0; i < SEGLOG_CONSUMERS_MAX; i++)
        if (log->consumers[i].used && log->consumers[i].offset < min_consumer)
            min_consumer = log->consumers[i].offset;
    uint32_t k = 0;
    for (; k < log->nsegs; k++) {
        const struct seg *s = &log->segs[k];
        if (!s->closed || s->base >= log->committed_seg) break;
        int64_t cutoff;
        int old = o->retention_age_ms > 0 && o->retention_age_ms <= INT64_MAX &&
                  !__builtin_sub_overflow(now_ms, (int64_t)o->retention_age_ms, &cutoff) &&
                  s->ts_max_ms < cutoff;
        int big = o->retention_bytes > 0 && total > o->retention_bytes;
        if (!old && !big) break;
        if (min_consumer < s->end) {
            *blocked = 1;
            break;
        }
        total -= s->bytes;
    }
    return k;
}

int seglog_retention_run(struct seglog *log, int64_t now_ms, struct seglog_retention_result *res)
{
    struct seglog_retention_result scratch;
    if (!res) res = &scratch;
    memset(res, 0, sizeof *res);
    if (log->opt.read_only) return TALLY_ECLOSED;
    pthread_mutex_lock(&log->smu);
    uint32_t k = retention_count(log, now_ms, &res->blocked_by_consumer);
    struct seg *gone = NULL;
    if (k > 0) {
        gone = malloc((size_t)k * sizeof *gone);
        if (!gone) {
            pthread_mutex_unlock(&log->smu);
            return TALLY_ENOMEM;
        }
        memcpy(gone, log->segs, (size_t)k * sizeof *gone);
        memmove(log->segs, log->segs + k, (size_t)(log->nsegs - k) * sizeof *log->segs);
        log->nsegs -= k;
    }
    res->start_offset = log->segs[0].base;
    pthread_mutex_unlock(&log->smu);

    int r = TALLY_OK;
    char path[SEGLOG_PATH_MAX];
    for (uint32_t i = 0; i < k; i++) {
        const char *suffixes[2] = {SEGMENT_SUFFIX, SEGMENT_INDEX_SUFFIX};
        for (int j = 0; j < 2; j++) {
            segment_path(path, sizeof path, log->dir, gone[i].base, suffixes[j]);
            int e = log->fs->unlink(log->fs->ctx, path);
            if (e < 0 && e != -ENOENT && !r) r = tally_err_from_errno(-e);
        }
        res->segments_deleted++;
        res->bytes_deleted += gone[i].bytes;
        res->records_deleted += gone[i].end - gone[i].base;
        diag_info("seglog: %s: retention deleted %020" PRIu64 ".seg (offsets [%" PRIu64 ", %" PRIu64
                  "), %" PRIu64 " bytes)",
                  log->dir, gone[i].base, gone[i].base, gone[i].end, gone[i].bytes);
        seglog_seg_free(&gone[i]);
    }
    free(gone);
    if (k > 0) {
        int e = log->fs->fsync_dir(log->fs->ctx, log->dir);
        if (e < 0 && !r) r = tally_err_from_errno(-e);
    }
    return r;
}
