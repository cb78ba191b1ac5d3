/*
 * seglog writer side: the writer thread (group commit, roll, poison, rollback, reset), the
 * syncer thread (FSYNC_ALWAYS) and the encode helper threads. Shared state and lock rules are in
 * seglog_int.h; the public contract in seglog.h.
 *
 * Group commit, one group at a time through these steps:
 *   take   the writer switches every queue shard from the filling group to a free one, holding
 *          qmu and all shard mutexes (O(shards));
 *   cut    the group's shard buffers are cut into batches, shard by shard, at append
 *          boundaries (record boundaries inside an append larger than batch_bytes_max; a batch
 *          never spans two shard buffers); producers recorded each append's size and
 *          timestamp range, so the writer does not walk the records;
 *   encode each batch is LZ4'd (or copied raw) into its reserved slot of one output buffer, the
 *          writer and the helper threads taking batches from a shared atomic counter;
 *   write  the batches are packed and written with one pwrite per segment (8 MiB chunks at
 *          most), rolling the segment first when a batch would push it past segment_bytes;
 *          a write of at least direct_min_bytes sends its SEGLOG_DIRECT_ALIGN-aligned middle
 *          through a second, O_DIRECT descriptor (the device reads it from log->out: no copy
 *          into the page cache, which was most of the writer's CPU at high load) and its
 *          unaligned head and tail through log->fd. The O_DIRECT range always starts at or
 *          after the block holding the previous end, so it never overlaps a page written
 *          through the cache, and nothing lands beyond the end: the file stays exactly the
 *          bytes written, as with plain writes. Readers use their own buffered descriptors (the
 *          kernel drops cached pages a direct write covers). fdatasync on log->fd makes both
 *          kinds durable: it works on the file, not the descriptor;
 *   sync   ALWAYS: when nothing else is in flight or waiting, the writer fdatasyncs itself
 *          (lowest latency at low load); otherwise the group joins the pending FIFO and the
 *          syncer thread is asked to fdatasync through its end, while the writer already takes,
 *          encodes and writes the next group (at most SEGLOG_PIPELINE_MAX groups written and not
 *          yet durable). A direct write starts only after the fdatasyncs requested before it
 *          ended (wait_for_flush_before_direct): the flush overlaps the next group's encoding,
 *          not its write. INTERVAL and NONE: the group is complete after the write;
 *   complete in offset order: the committed (and durable) offset is published, the queue
 *          bounds released, then every append's callback is called (shard by shard, as cut),
 *          and the group's buffers are recycled (seglog_qbuf_recycle). ALWAYS: on the completer
 *          thread as soon as the syncer made a group durable, so that the writer goes on
 *          writing while callbacks run (a callback that wakes a producer thread often yields
 *          its CPU to it; on the writer that stalled the whole pipeline); an inline-synced group
 *          is completed by the writer itself (nothing else is in flight then). Other policies:
 *          on the writer thread after the write.
 *
 * The syncer never touches log->fd while sync_hold is set; the writer sets it (and waits for a
 * running fdatasync to end) before it closes or replaces the descriptor (roll, rollback, reset).
 * The completer starts no group while complete_hold is set; the writer sets it (and waits for a
 * running completion to end) before it completes or fails pending groups itself (failure,
 * reset).
 * At a roll the writer fdatasyncs the old segment itself, which also makes every pending group
 * in it durable.
 *
 * Failure (write, roll or fdatasync): the writer poisons the log, lets a running fdatasync end,
 * completes the pending groups that are durable (they are: success), rolls the files back to
 * the committed position, and only then fails the other groups with the cause.
 */
#include "log/seglog_int.h"

#include "core/diag.h"
#include "core/sched.h"
#include "log/batch.h"
#include "log/segment.h"
#include "tally/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define WRITE_CHUNK_BYTES (8u << 20)

static void writer_poison(struct seglog *log, int err)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&log->poison_err, &expected, err))
        diag_error("seglog: %s: writer poisoned by %s; appends fail until seglog_reset_poison",
                   log->dir, tally_strerror(err));
}

/* fdatasync of fd, timed into the histogram. 0 or TALLY_E*. Writer or syncer thread. */
static int timed_fdatasync(struct seglog *log, int fd)
{
    int64_t t0 = seglog_mono_us();
    int r = log->fs->fdatasync(log->fs->ctx, fd);
    int64_t dt = seglog_mono_us() - t0;
    if (dt < 0) dt = 0;
    int b = 0;
    while (b < SEGLOG_FSYNC_BUCKETS - 1 && (uint64_t)dt > seglog_fsync_bucket_us[b])
        b++;
    atomic_fetch_add_explicit(&log->st_fsync_hist[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&log->st_fsyncs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&log->st_fsync_sum_us, (uint64_t)dt, memory_order_relaxed);
    return r < 0 ? tally_err_from_errno(-r) : TALLY_OK;
}

static int fsync_dir(struct seglog *log)
{
    int r = log->fs->fsync_dir(log->fs->ctx, log->dir);
    return r < 0 ? tally_err_from_errno(-r) : TALLY_OK;
}

static int path_of(struct seglog *log, char *buf, uint64_t base, const char *suffix)
{
    return segment_path(buf, SEGLOG_PATH_MAX, log->dir, base, suffix);
}

/* The writer, syncer and completer threads hold up acknowledgements whenever they wait for a
 * CPU: each asks for a short scheduler slice at start (core/sched.h). */
static void latency_critical(void)
{
    if (sched_latency_critical() != 0) diag_debug("seglog: thread keeps the default CPU slice");
}

/* ---- syncer ------------------------------------------------------------------------------- */

/* Keeps the syncer away from log->fd (waits for a running fdatasync). Writer thread. */
static void syncer_hold(struct seglog *log)
{
    pthread_mutex_lock(&log->qmu);
    log->sync_hold++;
    while (log->sync_busy)
        pthread_cond_wait(&log->qcv, &log->qmu);
    pthread_mutex_unlock(&log->qmu);
}

/* Ends a hold; durable_through (when > 0) is an offset the writer itself made durable. */
static void syncer_release(struct seglog *log, uint64_t durable_through)
{
    pthread_mutex_lock(&log->qmu);
    log->sync_hold--;
    if (durable_through > log->sync_done_end) log->sync_done_end = durable_through;
    pthread_cond_signal(&log->scv);
    pthread_cond_signal(&log->dcv);
    pthread_mutex_unlock(&log->qmu);
}

/* Keeps the completer from starting a group (waits for a running one). Writer thread. */
static void completer_hold(struct seglog *log)
{
    pthread_mutex_lock(&log->qmu);
    log->complete_hold++;
    while (log->completing)
        pthread_cond_wait(&log->qcv, &log->qmu);
    pthread_mutex_unlock(&log->qmu);
}

static void completer_release(struct seglog *log)
{
    pthread_mutex_lock(&log->qmu);
    log->complete_hold--;
    pthread_cond_signal(&log->dcv);
    pthread_mutex_unlock(&log->qmu);
}

static void *syncer_main(void *arg)
{
    struct seglog *log = arg;
    pthread_setname_np(pthread_self(), "tally-logsync");
    latency_critical();
    pthread_mutex_lock(&log->qmu);
    for (;;) {
        while (!log->syncer_stop &&
               (log->sync_err || log->sync_hold || log->sync_req_end <= log->sync_done_end ||
                atomic_load(&log->poison_err)))
            pthread_cond_wait(&log->scv, &log->qmu);
        if (log->syncer_stop) break;
        uint64_t target = log->sync_req_end;
        int fd = log->fd;
        log->sync_busy = 1;
        pthread_mutex_unlock(&log->qmu);
        int r = timed_fdatasync(log, fd);
        pthread_mutex_lock(&log->qmu);
        log->sync_busy = 0;
        if (r)
            log->sync_err = r;
        else if (target > log->sync_done_end)
            log->sync_done_end = target;
        pthread_cond_signal(&log->dcv);    /* the completer completes */
        pthread_cond_broadcast(&log->qcv); /* the writer fails, or stops waiting for a hold */
    }
    pthread_mutex_unlock(&log->qmu);
    return NULL;
}

/* ---- writing ------------------------------------------------------------------------------ */

/* The writer's view of the active segment: its base, size and newest timestamp. */
struct wstate {
    uint64_t base;
    uint64_t bytes;
    uint64_t next; /* next offset */
    int64_t ts_max;
};

static void wstate_load(struct seglog *log, struct wstate *w)
{
    pthread_mutex_lock(&log->smu);
    struct seg *s = &log->segs[log->nsegs - 1];
    w->base = s->base;
    w->bytes = s->bytes;
    w->next = s->end;
    w->ts_max = s->ts_max_ms;
    pthread_mutex_unlock(&log->smu);
}

static void direct_close(struct seglog *log)
{
    if (log->dfd >= 0) log->fs->close(log->fs->ctx, log->dfd);
    log->dfd = -1;
}

/* The O_DIRECT descriptor of the active segment (base), opened on first use; -1 when direct
 * writes are off or the open failed (this write then goes through the page cache). */
static int direct_fd(struct seglog *log, uint64_t base)
{
    if (log->direct_off) return -1;
    if (log->dfd >= 0 && log->dfd_base == base) return log->dfd;
    direct_close(log);
    char path[SEGLOG_PATH_MAX];
    if (path_of(log, path, base, SEGMENT_SUFFIX)) return -1;
    int fd = log->fs->open(log->fs->ctx, path, O_WRONLY | O_DIRECT, 0);
    if (fd == -EINVAL || fd == -EOPNOTSUPP) {
        log->direct_off = 1;
        diag_info("seglog: %s: the file system refuses O_DIRECT; all writes go through the "
                  "page cache",
                  log->dir);
        return -1;
    }
    if (fd < 0) {
        diag_warn("seglog: %s: O_DIRECT open failed (%s); this write goes through the page cache",
                  log->dir, tally_strerror(tally_err_from_errno(-fd)));
        return -1;
    }
    log->dfd = fd;
    log->dfd_base = base;
    return fd;
}

/* ALWAYS: before a direct write, waits until the fdatasyncs requested so far have ended (or
 * failed). A device flush running beside a megabyte-sized direct write slowed both (fdatasync
 * 150 -> 450 us); this way the flush of group N runs while the writer encodes group N+1, and
 * the direct write of N+1 starts after it. Cached writes do not wait: they only fill the page
 * cache. Writer thread. */
static void wait_for_flush_before_direct(struct seglog *log)
{
    if (log->opt.fsync != SEGLOG_FSYNC_ALWAYS) return;
    pthread_mutex_lock(&log->qmu);
    while (log->sync_done_end < log->sync_req_end && !log->sync_err &&
           !atomic_load(&log->poison_err))
        pthread_cond_wait(&log->qcv, &log->qmu);
    pthread_mutex_unlock(&log->qmu);
}

/* Writes buf[0..n) at byte off of the active segment (base): the unaligned head and tail
 * through log->fd, the aligned middle through the O_DIRECT descriptor when it is worth it and
 * buf sits at off's offset modulo SEGLOG_DIRECT_ALIGN. A direct write that fails with EINVAL
 * (alignment the device does not accept; nothing was written) turns direct writes off; one that
 * is short, or stops at an unaligned count, is finished through the page cache. */
static int write_at(struct seglog *log, uint64_t base, const uint8_t *buf, size_t n, uint64_t off)
{
    const struct fsio *fs = log->fs;
    const size_t a = SEGLOG_DIRECT_ALIGN;
    uint32_t min = log->opt.direct_min_bytes;
    size_t head = (size_t)((a - off % a) % a);
    size_t mid = n > head ? (n - head) / a * a : 0;
    int dfd = -1; /* n >= 2 * a leaves a non-empty middle (head < a) */
    if (min > 0 && n >= min && n >= 2 * a && ((uintptr_t)(buf + head) % a) == 0)
        dfd = direct_fd(log, base);
    if (dfd < 0) return fsio_write_all(fs, log->fd, buf, n, off);
    int r = fsio_write_all(fs, log->fd, buf, head, off);
    if (r) return r;
    wait_for_flush_before_direct(log);
    size_t done = head;
    while (done < head + mid) {
        ssize_t k = fs->pwrite(fs->ctx, dfd, buf + done, head + mid - done, off + done);
        if (k == -EINVAL) {
            log->direct_off = 1;
            direct_close(log);
            diag_warn("seglog: %s: an O_DIRECT write was refused (EINVAL); all writes go "
                      "through the page cache",
                      log->dir);
            break;
        }
        if (k < 0) return tally_err_from_errno((int)-k);
        done += (size_t)k;
        atomic_fetch_add_explicit(&log->st_direct_bytes, (uint64_t)k, memory_order_relaxed);
        if (k == 0 || (size_t)k % a != 0) break;
    }
    return fsio_write_all(fs, log->fd, buf + done, n - done, off + done);
}

/* Writes buf[0..n) at the end of the active segment and publishes its new size. */
static int writer_flush(struct seglog *log, struct wstate *w, const uint8_t *buf, size_t n)
{
    if (n == 0) return TALLY_OK;
    int r = write_at(log, w->base, buf, n, w->bytes);
    if (r) return r;
    w->bytes += n;
    pthread_mutex_lock(&log->smu);
    struct seg *s = &log->segs[log->nsegs - 1];
    s->bytes = w->bytes;
    s->end = w->next;
    s->ts_max_ms = w->ts_max;
    pthread_mutex_unlock(&log->smu);
    atomic_store_explicit(&log->written_end, w->next, memory_order_release);
    atomic_fetch_add_explicit(&log->st_bytes, n, memory_order_relaxed);
    return TALLY_OK;
}

/* Closes the active segment (synced, index written) and starts a new one at w->next. Called with
 * the syncer held. */
static int writer_roll(struct seglog *log, struct wstate *w)
{
    int r;
    if (log->opt.fsync != SEGLOG_FSYNC_NONE && (r = timed_fdatasync(log, log->fd))) return r;

    struct segindex copy;
    segindex_init(&copy, log->opt.index_interval_bytes);
    struct segindex_meta m = {w->base, w->next, w->bytes, w->ts_max};
    pthread_mutex_lock(&log->smu);
    struct seg *s = &log->segs[log->nsegs - 1];
    s->closed = 1;
    int copied = segindex_copy(&copy, &s->idx);
    int grown = 1;
    if (log->nsegs == log->capsegs) {
        uint32_t cap = log->capsegs * 2;
        struct seg *n = realloc(log->segs, (size_t)cap * sizeof *n);
        if (n) {
            log->segs = n;
            log->capsegs = cap;
        } else {
            grown = 0;
        }
    }
    if (grown) {
        /* Listed before the file exists, so that a rollback finds and removes it. */
        struct seg *ns = &log->segs[log->nsegs++];
        memset(ns, 0, sizeof *ns);
        ns->base = ns->end = w->next;
        ns->ts_max_ms = INT64_MIN;
        segindex_init(&ns->idx, log->opt.index_interval_bytes);
    }
    pthread_mutex_unlock(&log->smu);

    char path[SEGLOG_PATH_MAX];
    if (copied == TALLY_OK && path_of(log, path, w->base, SEGMENT_INDEX_SUFFIX) == TALLY_OK) {
        int e = segindex_write(log->fs, path, &copy, &m);
        if (e)
            diag_warn("seglog: %s: index not written (%s); it will be rebuilt at open", path,
                      tally_strerror(e));
    }
    segindex_free(&copy);
    if (!grown) return TALLY_ENOMEM;

    direct_close(log);
    log->fs->close(log->fs->ctx, log->fd);
    log->fd = -1;
    if ((r = path_of(log, path, w->next, SEGMENT_SUFFIX))) return r;
    int fd = log->fs->open(log->fs->ctx, path, O_RDWR | O_CREAT | O_EXCL, 0644);
    if (fd < 0) return tally_err_from_errno(-fd);
    log->fd = fd;
    if (log->opt.fsync != SEGLOG_FSYNC_NONE && (r = fsync_dir(log))) return r;
    w->base = w->next;
    w->bytes = 0;
    w->ts_max = INT64_MIN;
    diag_debug("seglog: rolled to %s", path);
    return TALLY_OK;
}

static int out_reserve(struct seglog *log, size_t need)
{
    if (need <= log->outcap) return TALLY_OK;
    size_t cap = log->outcap ? log->outcap : 1u << 20;
    while (cap < need)
        cap *= 2;
    /* Nothing in log->out lives across groups: a fresh block, aligned for O_DIRECT. */
    void *n = NULL;
    if (posix_memalign(&n, SEGLOG_DIRECT_ALIGN, cap)) return TALLY_ENOMEM;
    free(log->out);
    log->out = n;
    log->outcap = cap;
    return TALLY_OK;
}

static int jobs_push(struct seglog *log, const struct bjob *j)
{
    if (log->njobs == log->capjobs) {
        uint32_t cap = log->capjobs ? log->capjobs * 2 : 64;
        struct bjob *n = realloc(log->jobs, (size_t)cap * sizeof *n);
        if (!n) return TALLY_ENOMEM;
        log->jobs = n;
        log->capjobs = cap;
    }
    log->jobs[log->njobs++] = *j;
    return TALLY_OK;
}

/* Ends the batch being cut (if it holds anything) and starts the next one after it. */
static int cut_close(struct seglog *log, struct bjob *cur, size_t *dst)
{
    if (cur->count == 0) return TALLY_OK;
    cur->dst = *dst;
    *dst += batch_encode_bound(cur->raw_len);
    int r = jobs_push(log, cur);
    uint64_t next = cur->base_offset + cur->count;
    memset(cur, 0, sizeof *cur);
    cur->base_offset = next;
    return r;
}

/* Adds a unit (one append, or one record of an append too big for a batch) to the batch being
 * cut, closing that batch first when the unit would push it past batch_bytes_max. */
static int cut_add(struct seglog *log, struct bjob *cur, size_t *dst, const uint8_t *p,
                   uint32_t bytes, uint32_t count, int64_t tmin, int64_t tmax)
{
    if (cur->count > 0 && (uint64_t)cur->raw_len + bytes > log->opt.batch_bytes_max) {
        int r = cut_close(log, cur, dst);
        if (r) return r;
    }
    if (cur->count == 0) {
        cur->src = p;
        cur->ts_min_ms = INT64_MAX;
        cur->ts_max_ms = INT64_MIN;
    }
    cur->raw_len += bytes;
    cur->count += count;
    if (tmin < cur->ts_min_ms) cur->ts_min_ms = tmin;
    if (tmax > cur->ts_max_ms) cur->ts_max_ms = tmax;
    return TALLY_OK;
}

/* A small group whose appends sit in several shard buffers: their bytes are copied, in shard
 * order, into log->stage, and cut from there as if from one buffer. Without it a group got a
 * batch per shard, and every batch costs its header, an LZ4 call and each consumer's per-batch
 * work: at 35k single-event requests a second tally's CPU per event grew by 5 %. Large groups are
 * cut in place (a shard's part then holds many records per batch anyway). */
static int stage_group(struct seglog *log, int qi)
{
    size_t total = 0;
    int parts = 0;
    for (int s = 0; s < SEGLOG_QSHARDS; s++) {
        total += log->sh[s].q[qi].len;
        parts += log->sh[s].q[qi].napps > 0;
    }
    if (parts < 2 || total > SEGLOG_STAGE_BYTES) return 0;
    if (!log->stage && !(log->stage = malloc(SEGLOG_STAGE_BYTES))) return 0;
    size_t at = 0;
    for (int s = 0; s < SEGLOG_QSHARDS; s++) {
        const struct qbuf *b = &log->sh[s].q[qi];
        if (b->len) memcpy(log->stage + at, b->bytes, b->len);
        at += b->len;
    }
    return 1;
}

/* Cuts taken group qi into batches (log->jobs), shard by shard, offsets from first, their places
 * in log->out from byte `start` on; reserves log->out. A batch spans shard buffers only when
 * the group was staged (stage_group); otherwise each shard's part ends its last batch. */
static int writer_cut(struct seglog *log, int qi, uint64_t first, size_t start)
{
    log->njobs = 0;
    struct bjob cur = {.base_offset = first};
    size_t dst = start;
    int r = TALLY_OK;
    int staged = stage_group(log, qi);
    const uint8_t *next_part = log->stage;
    for (int s = 0; s < SEGLOG_QSHARDS && !r; s++) {
        const struct qbuf *b = &log->sh[s].q[qi];
        const uint8_t *p = staged ? next_part : b->bytes;
        if (staged) next_part += b->len;
        for (uint32_t i = 0; i < b->napps && !r; i++) {
            const struct qappend *a = &b->apps[i];
            if (a->bytes <= log->opt.batch_bytes_max) {
                r = cut_add(log, &cur, &dst, p, a->bytes, a->nrec, a->ts_min_ms, a->ts_max_ms);
                p += a->bytes;
                continue;
            }
            for (uint32_t k = 0; k < a->nrec && !r; k++) {
                uint32_t rs = BATCH_RECORD_HEADER_BYTES + batch_get_u32(p);
                int64_t ts = (int64_t)batch_get_u64(p + 4);
                r = cut_add(log, &cur, &dst, p, rs, 1, ts, ts);
                p += rs;
            }
        }
        if (!r && !staged) r = cut_close(log, &cur, &dst);
    }
    if (!r) r = cut_close(log, &cur, &dst);
    if (!r) r = out_reserve(log, dst);
    return r;
}

/* Incompressible data (already compressed or encrypted payloads) would cost a full LZ4 attempt
 * per batch for little: after a batch of at least LZ4_PROBE_BYTES that LZ4 could not shrink by
 * LZ4_MIN_GAIN_PCT, the next batches are stored raw without trying, then LZ4 is tried again. The
 * number skipped starts at LZ4_SKIP_BATCHES and doubles with each further failed probe, up to
 * LZ4_SKIP_BATCHES_MAX (at 256 KiB batches: 32 MiB stored raw between probes, while a probe costs
 * as much as storing ~20 batches raw); a probe that helps brings it back to LZ4_SKIP_BATCHES.
 * Small batches (low load) are cheap to try and say little about the data. */
#define LZ4_SKIP_BATCHES 16
#define LZ4_SKIP_BATCHES_MAX 128
#define LZ4_MIN_GAIN_PCT 10
#define LZ4_PROBE_BYTES (16u << 10)

static void encode_job(struct seglog *log, struct bjob *j)
{
    int try_lz4 = log->opt.compress;
    if (try_lz4 && atomic_load_explicit(&log->lz4_skip, memory_order_relaxed) > 0) {
        atomic_fetch_sub_explicit(&log->lz4_skip, 1, memory_order_relaxed);
        try_lz4 = 0;
    }
    j->enc_len = batch_encode(log->out + j->dst, j->base_offset, j->src, j->raw_len, j->count,
                              j->ts_min_ms, j->ts_max_ms, try_lz4);
    if (!try_lz4 || j->raw_len < LZ4_PROBE_BYTES) return;
    size_t stored = j->enc_len - BATCH_HEADER_BYTES;
    if (stored * 100 > (size_t)j->raw_len * (100 - LZ4_MIN_GAIN_PCT)) {
        int len = atomic_load_explicit(&log->lz4_skip_len, memory_order_relaxed);
        if (len < LZ4_SKIP_BATCHES) len = LZ4_SKIP_BATCHES;
        atomic_store_explicit(&log->lz4_skip, len, memory_order_relaxed);
        atomic_store_explicit(&log->lz4_skip_len,
                              len * 2 > LZ4_SKIP_BATCHES_MAX ? LZ4_SKIP_BATCHES_MAX : len * 2,
                              memory_order_relaxed);
    } else {
        atomic_store_explicit(&log->lz4_skip_len, LZ4_SKIP_BATCHES, memory_order_relaxed);
    }
}

/* Encodes every job; the helper threads take jobs from the same atomic counter. */
static void writer_encode(struct seglog *log)
{
    int helped = log->nhelpers > 0 && log->njobs > 1 && log->opt.compress;
    atomic_store(&log->job_next, 0);
    if (helped) {
        pthread_mutex_lock(&log->hmu);
        log->helpers_done = 0;
        log->job_gen++;
        pthread_cond_broadcast(&log->hcv);
        pthread_mutex_unlock(&log->hmu);
    }
    uint32_t i;
    while ((i = atomic_fetch_add(&log->job_next, 1)) < log->njobs)
        encode_job(log, &log->jobs[i]);
    if (helped) {
        pthread_mutex_lock(&log->hmu);
        while (log->helpers_done < (uint32_t)log->nhelpers)
            pthread_cond_wait(&log->hdcv, &log->hmu);
        pthread_mutex_unlock(&log->hmu);
    }
}

static void *helper_main(void *arg)
{
    struct seglog *log = arg;
    pthread_setname_np(pthread_self(), "tally-logenc");
    uint64_t seen = 0;
    pthread_mutex_lock(&log->hmu);
    for (;;) {
        while (log->job_gen == seen && !log->helpers_stop)
            pthread_cond_wait(&log->hcv, &log->hmu);
        if (log->helpers_stop) break;
        seen = log->job_gen;
        pthread_mutex_unlock(&log->hmu);
        uint32_t i;
        while ((i = atomic_fetch_add(&log->job_next, 1)) < log->njobs)
            encode_job(log, &log->jobs[i]);
        pthread_mutex_lock(&log->hmu);
        log->helpers_done++;
        pthread_cond_signal(&log->hdcv);
    }
    pthread_mutex_unlock(&log->hmu);
    return NULL;
}

/* Cuts, encodes and writes taken group qi. On success *w is the state after it.
 * 0 or TALLY_E*. */
static int writer_write(struct seglog *log, int qi, struct wstate *w)
{
    wstate_load(log, w);
    /* Batches are encoded at their reserved places from `start` on and packed towards it as
     * they are written: log->out[pend, outlen) is packed, not yet written. `start` is the file
     * position modulo SEGLOG_DIRECT_ALIGN, which puts the file's block boundaries on aligned
     * addresses of log->out (the O_DIRECT part of a write). A batch stored raw fills its
     * reservation exactly and stays in place; one that LZ4 shrank moves the next ones towards
     * the start (never forwards: a batch takes at most its reservation). */
    size_t start = (size_t)(w->bytes % SEGLOG_DIRECT_ALIGN);
    int r = writer_cut(log, qi, w->next, start);
    if (r) return r;
    writer_encode(log);
    size_t pend = start, outlen = start;
    for (uint32_t i = 0; i < log->njobs; i++) {
        const struct bjob *j = &log->jobs[i];
        uint64_t at = w->bytes + (outlen - pend);
        if (at > 0 && at + j->enc_len > log->opt.segment_bytes) {
            if ((r = writer_flush(log, w, log->out + pend, outlen - pend))) return r;
            syncer_hold(log);
            uint64_t synced = w->next;
            r = writer_roll(log, w);
            syncer_release(log, r == 0 && log->opt.fsync != SEGLOG_FSYNC_NONE ? synced : 0);
            if (r) return r;
            pend = outlen = 0; /* a new segment starts at byte 0, an aligned address */
            at = 0;
        }
        if (outlen != j->dst) memmove(log->out + outlen, log->out + j->dst, j->enc_len);
        pthread_mutex_lock(&log->smu);
        /* The index is a hint: an entry lost to ENOMEM only makes seeks longer. */
        (void)segindex_note(&log->segs[log->nsegs - 1].idx, (uint32_t)(w->next - w->base),
                            (uint32_t)at);
        pthread_mutex_unlock(&log->smu);
        outlen += j->enc_len;
        w->next += j->count;
        if (j->ts_max_ms > w->ts_max) w->ts_max = j->ts_max_ms;
        atomic_fetch_add_explicit(&log->st_batches, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&log->st_raw_bytes, j->raw_len, memory_order_relaxed);
        atomic_fetch_add_explicit(&log->st_records, j->count, memory_order_relaxed);
        if (outlen - pend >= WRITE_CHUNK_BYTES) {
            if ((r = writer_flush(log, w, log->out + pend, outlen - pend))) return r;
            pend = outlen; /* the file position moved as far as the buffer's */
        }
    }
    return writer_flush(log, w, log->out + pend, outlen - pend);
}

/* ---- completing ---------------------------------------------------------------------------- */

/* Publishes end (at seg_base/pos) as committed, and durable when it was fdatasync'ed. */
static void commit(struct seglog *log, uint64_t end, uint64_t seg_base, uint64_t pos, int durable)
{
    pthread_mutex_lock(&log->smu);
    log->committed_seg = seg_base;
    pthread_mutex_unlock(&log->smu);
    log->committed_pos = pos;
    if (durable) atomic_store_explicit(&log->durable_end, end, memory_order_release);
    atomic_store_explicit(&log->committed_end, end, memory_order_release);
    seglog_notify_committed(log);
}

/* Releases the queue bounds of group qi, calls its callbacks (in offset order: shard by
 * shard), empties its buffers; with pop, also removes the group (pend[0]) from the pipeline and
 * ends `completing`, at the same moment. */
static void finish_group_pop(struct seglog *log, int qi, int err, uint64_t first, int pop)
{
    uint64_t records = 0, bytes = 0;
    for (int s = 0; s < SEGLOG_QSHARDS; s++) {
        records += log->sh[s].q[qi].records;
        bytes += log->sh[s].q[qi].len;
    }
    seglog_bounds_give(log, records, bytes);
    uint64_t off = first;
    for (int s = 0; s < SEGLOG_QSHARDS; s++) {
        struct qbuf *b = &log->sh[s].q[qi];
        for (uint32_t i = 0; i < b->napps; i++) {
            b->apps[i].done(b->apps[i].arg, err, err ? 0 : off);
            off += b->apps[i].nrec;
        }
        seglog_qbuf_recycle(log, b);
    }
    pthread_mutex_lock(&log->qmu);
    log->qbusy[qi] = 0;
    if (pop) {
        memmove(log->pend, log->pend + 1, (size_t)(log->npend - 1) * sizeof *log->pend);
        log->npend--;
        log->completing = 0;
        pthread_cond_broadcast(&log->qcv); /* the writer: room in the pipeline, or a hold */
    }
    pthread_mutex_unlock(&log->qmu);
}

static void finish_group(struct seglog *log, int qi, int err, uint64_t first)
{
    finish_group_pop(log, qi, err, first, 0);
}

/* FSYNC_ALWAYS: completes durable groups, oldest first, while the writer writes the next ones. */
static void *completer_main(void *arg)
{
    struct seglog *log = arg;
    pthread_setname_np(pthread_self(), "tally-logdone");
    latency_critical();
    pthread_mutex_lock(&log->qmu);
    for (;;) {
        while (!log->completer_stop &&
               (log->complete_hold || log->npend == 0 || log->sync_done_end < log->pend[0].end))
            pthread_cond_wait(&log->dcv, &log->qmu);
        if (log->completer_stop) break;
        struct pgroup g = log->pend[0];
        log->completing = 1;
        pthread_mutex_unlock(&log->qmu);
        commit(log, g.end, g.seg_base, g.pos, 1);
        finish_group_pop(log, g.qi, 0, g.first, 1);
        pthread_mutex_lock(&log->qmu);
    }
    pthread_mutex_unlock(&log->qmu);
    return NULL;
}

/* Completes (success) the pending groups that the syncer or a roll made durable, oldest first.
 * Writer thread with the completer held off, qmu not held. */
static void complete_durable(struct seglog *log)
{
    for (;;) {
        pthread_mutex_lock(&log->qmu);
        if (log->npend == 0 || log->sync_done_end < log->pend[0].end) {
            pthread_mutex_unlock(&log->qmu);
            return;
        }
        struct pgroup g = log->pend[0];
        memmove(log->pend, log->pend + 1, (size_t)(log->npend - 1) * sizeof *log->pend);
        log->npend--;
        pthread_mutex_unlock(&log->qmu);
        commit(log, g.end, g.seg_base, g.pos, 1);
        finish_group(log, g.qi, 0, g.first);
    }
}

/* Fails every pending group with err, oldest first. Writer thread with the completer held off,
 * qmu not held. */
static void fail_pending(struct seglog *log, int err)
{
    for (;;) {
        pthread_mutex_lock(&log->qmu);
        if (log->npend == 0) {
            pthread_mutex_unlock(&log->qmu);
            return;
        }
        struct pgroup g = log->pend[0];
        memmove(log->pend, log->pend + 1, (size_t)(log->npend - 1) * sizeof *log->pend);
        log->npend--;
        pthread_mutex_unlock(&log->qmu);
        finish_group(log, g.qi, err, g.first);
    }
}

/*
 * Brings the files back to the committed position (invariant 4): removes the segments created
 * after it, reopens and truncates the one holding it. Used best-effort right after a failure and
 * strictly by reset. The syncer must be held. 0 or TALLY_E*.
 */
static int writer_rollback(struct seglog *log)
{
    const struct fsio *fs = log->fs;
    char path[SEGLOG_PATH_MAX];
    int r;
    pthread_mutex_lock(&log->smu);
    uint64_t cbase = log->committed_seg;
    uint64_t active_base = log->segs[log->nsegs - 1].base;
    pthread_mutex_unlock(&log->smu);
    direct_close(log);
    if (active_base != cbase && log->fd >= 0) {
        fs->close(fs->ctx, log->fd);
        log->fd = -1;
    }
    for (;;) {
        pthread_mutex_lock(&log->smu);
        uint64_t base = log->segs[log->nsegs - 1].base;
        pthread_mutex_unlock(&log->smu);
        if (base == cbase) break;
        const char *suffixes[2] = {SEGMENT_SUFFIX, SEGMENT_INDEX_SUFFIX};
        for (int i = 0; i < 2; i++) {
            if ((r = path_of(log, path, base, suffixes[i]))) return r;
            int e = fs->unlink(fs->ctx, path);
            if (e < 0 && e != -ENOENT) return tally_err_from_errno(-e);
        }
        pthread_mutex_lock(&log->smu);
        seglog_seg_free(&log->segs[--log->nsegs]);
        pthread_mutex_unlock(&log->smu);
    }
    if (log->fd < 0) {
        if ((r = path_of(log, path, cbase, SEGMENT_SUFFIX))) return r;
        int fd = fs->open(fs->ctx, path, O_RDWR, 0);
        if (fd < 0) return tally_err_from_errno(-fd);
        log->fd = fd;
    }
    int e = fs->ftruncate(fs->ctx, log->fd, log->committed_pos);
    if (e < 0) return tally_err_from_errno(-e);
    /* An index written when this segment was rolled during the failed group is now stale. */
    if ((r = path_of(log, path, cbase, SEGMENT_INDEX_SUFFIX))) return r;
    e = fs->unlink(fs->ctx, path);
    if (e < 0 && e != -ENOENT) return tally_err_from_errno(-e);
    uint64_t committed = atomic_load(&log->committed_end);
    pthread_mutex_lock(&log->smu);
    struct seg *s = &log->segs[log->nsegs - 1];
    s->closed = 0;
    s->bytes = log->committed_pos;
    s->end = committed;
    segindex_truncate(&s->idx, log->committed_pos);
    pthread_mutex_unlock(&log->smu);
    atomic_store(&log->written_end, committed);
    return TALLY_OK;
}

/* After a failure: durable pending groups succeed; the files go back to the committed position;
 * only then do the other pending groups and buffer qi (if >= 0) fail, so that a producer told
 * of a failure never finds its records in the files afterwards (unless the rollback failed). */
static void writer_fail(struct seglog *log, int err, int qi, uint64_t first)
{
    writer_poison(log, err);
    syncer_hold(log);
    completer_hold(log);
    complete_durable(log);
    int rb = writer_rollback(log);
    if (rb)
        diag_error("seglog: %s: rollback after failed write failed (%s); "
                   "seglog_reset_poison will retry",
                   log->dir, tally_strerror(rb));
    syncer_release(log, 0);
    fail_pending(log, err);
    completer_release(log);
    if (qi >= 0) finish_group(log, qi, err, first);
}

/* Steps 1-4 of seglog_reset_poison (seglog.h), on the writer thread, nothing pending. */
static int writer_reset(struct seglog *log)
{
    if (atomic_load(&log->poison_err) == 0) return TALLY_OK;
    syncer_hold(log);
    completer_hold(log); /* idle: nothing is pending; held for committed_pos */
    int r = writer_rollback(log);
    uint64_t committed = atomic_load(&log->committed_end);
    if (!r) {
        pthread_mutex_lock(&log->smu);
        struct seg *s = &log->segs[log->nsegs - 1];
        struct segindex_entry e = segindex_lookup(&s->idx, UINT32_MAX);
        uint64_t base = s->base;
        pthread_mutex_unlock(&log->smu);
        struct segment_scan_result res;
        r = segment_scan(log->fs, log->fd, log->committed_pos, base, e.pos, base + e.rel, NULL,
                         &res);
        if (!r &&
            (res.err || res.valid_bytes != log->committed_pos || res.end_offset != committed)) {
            diag_error("seglog: %s: reset_poison: tail of segment %020" PRIu64
                       " does not verify (%s)",
                       log->dir, base, res.err ? res.why : "offsets differ");
            r = res.err && res.err != TALLY_ECORRUPT ? res.err : TALLY_ECORRUPT;
        }
    }
    if (!r && log->opt.fsync != SEGLOG_FSYNC_NONE) {
        r = timed_fdatasync(log, log->fd);
        if (!r) r = fsync_dir(log);
        if (!r) atomic_store(&log->durable_end, committed);
    }
    if (!r) {
        pthread_mutex_lock(&log->qmu);
        log->sync_err = 0;
        log->sync_req_end = log->sync_done_end = committed;
        pthread_mutex_unlock(&log->qmu);
        log->dirty = 0;
        int old = atomic_exchange(&log->poison_err, 0);
        diag_info("seglog: %s: poison (%s) cleared; appending again at offset %" PRIu64, log->dir,
                  tally_strerror(old), committed);
    }
    syncer_release(log, 0);
    completer_release(log);
    return r;
}

static void writer_interval_sync(struct seglog *log)
{
    if (atomic_load(&log->poison_err)) return;
    int r = timed_fdatasync(log, log->fd);
    log->last_sync_ms = seglog_mono_ms();
    if (r) {
        writer_poison(log, r);
        return;
    }
    log->dirty = 0;
    atomic_store(&log->durable_end, atomic_load(&log->committed_end));
}

/* Writes taken group qi; ALWAYS: hands it to the syncer, else completes it. */
static void writer_group(struct seglog *log, int qi)
{
    uint64_t first = atomic_load(&log->written_end);
    int err = atomic_load(&log->poison_err);
    if (err) {
        fail_pending(log, err); /* none: a poisoning failure already resolved them */
        finish_group(log, qi, err, first);
        return;
    }
    struct wstate w;
    err = writer_write(log, qi, &w);
    if (err) {
        writer_fail(log, err, qi, first);
        return;
    }
    if (log->opt.fsync == SEGLOG_FSYNC_ALWAYS) {
        pthread_mutex_lock(&log->qmu);
        /* Nothing else in flight and nothing waiting: fdatasync and complete right here, which
         * saves thread hand-offs of latency (npend == 0: the completer is idle too). Otherwise
         * the syncer overlaps it with the next group, and the completer completes it. */
        int inline_sync = log->npend == 0 && !log->sync_busy && !seglog_fill_has_work(log);
        if (!inline_sync) {
            log->pend[log->npend++] = (struct pgroup){qi, first, w.next, w.base, w.bytes};
            log->sync_req_end = w.next;
            pthread_cond_signal(&log->scv);
        }
        pthread_mutex_unlock(&log->qmu);
        if (!inline_sync) return;
        err = timed_fdatasync(log, log->fd);
        if (err) {
            writer_fail(log, err, qi, first);
            return;
        }
        pthread_mutex_lock(&log->qmu);
        log->sync_req_end = log->sync_done_end = w.next;
        pthread_mutex_unlock(&log->qmu);
        commit(log, w.next, w.base, w.bytes, 1);
        finish_group(log, qi, 0, first);
        return;
    }
    commit(log, w.next, w.base, w.bytes, 0);
    if (log->opt.fsync == SEGLOG_FSYNC_INTERVAL) log->dirty = 1;
    finish_group(log, qi, 0, first);
    if (log->opt.fsync == SEGLOG_FSYNC_INTERVAL &&
        seglog_mono_ms() - log->last_sync_ms >= log->opt.fsync_interval_ms)
        writer_interval_sync(log);
}

/* At close: the final fdatasync (interval) and the active segment's index (a checkpoint). */
static void writer_finish(struct seglog *log)
{
    if (atomic_load(&log->poison_err)) return;
    if (log->opt.fsync == SEGLOG_FSYNC_INTERVAL && log->dirty) writer_interval_sync(log);
    if (atomic_load(&log->poison_err)) return;
    struct segindex copy;
    segindex_init(&copy, log->opt.index_interval_bytes);
    pthread_mutex_lock(&log->smu);
    struct seg *s = &log->segs[log->nsegs - 1];
    struct segindex_meta m = {s->base, s->end, s->bytes, s->ts_max_ms};
    int r = segindex_copy(&copy, &s->idx);
    pthread_mutex_unlock(&log->smu);
    char path[SEGLOG_PATH_MAX];
    if (!r && !path_of(log, path, m.base_offset, SEGMENT_INDEX_SUFFIX))
        r = segindex_write(log->fs, path, &copy, &m);
    if (r)
        diag_warn("seglog: %s: active index not written at close (%s)", log->dir,
                  tally_strerror(r));
    segindex_free(&copy);
}

/* Under qmu: takes the filling group (the next free one, in turn, becomes the filling one, so
 * that every group's buffers are recycled every SEGLOG_QBUFS takes), switching every shard while
 * holding all their mutexes, so that the take is one cut through the queue. */
static int take_buffer(struct seglog *log)
{
    int qi = log->qfill;
    log->qbusy[qi] = 1;
    for (int k = 1; k < SEGLOG_QBUFS; k++) {
        int i = (qi + k) % SEGLOG_QBUFS;
        if (!log->qbusy[i]) {
            log->qfill = i;
            break;
        }
    }
    TALLY_ASSERT(log->qfill != qi);
    for (int s = 0; s < SEGLOG_QSHARDS; s++)
        pthread_mutex_lock(&log->sh[s].mu);
    for (int s = 0; s < SEGLOG_QSHARDS; s++) {
        log->sh[s].fill = log->qfill;
        atomic_store_explicit(&log->sh[s].fill_apps, 0, memory_order_relaxed);
    }
    for (int s = SEGLOG_QSHARDS - 1; s >= 0; s--)
        pthread_mutex_unlock(&log->sh[s].mu);
    return qi;
}

/* Under qmu: the filling group holds appends and the writer may take it now (room in the
 * pipeline, no reset waiting). */
static int can_take(struct seglog *log)
{
    return log->npend < SEGLOG_PIPELINE_MAX && !log->reset_pending && seglog_fill_has_work(log);
}

static void *writer_main(void *arg)
{
    struct seglog *log = arg;
    pthread_setname_np(pthread_self(), "tally-logwrite");
    latency_critical();
    log->last_sync_ms = seglog_mono_ms();
    pthread_mutex_lock(&log->qmu);
    for (;;) {
        if (log->sync_err && !atomic_load(&log->poison_err)) {
            int err = log->sync_err;
            pthread_mutex_unlock(&log->qmu);
            writer_fail(log, err, -1, 0);
            pthread_mutex_lock(&log->qmu);
            continue;
        }
        if (log->reset_pending && log->npend == 0) {
            pthread_mutex_unlock(&log->qmu);
            int r = writer_reset(log);
            pthread_mutex_lock(&log->qmu);
            log->reset_pending = 0;
            log->reset_result = r;
            log->reset_done_gen++;
            pthread_cond_broadcast(&log->resetcv);
            continue;
        }
        if (can_take(log)) {
            int qi = take_buffer(log);
            pthread_mutex_unlock(&log->qmu);
            writer_group(log, qi);
            pthread_mutex_lock(&log->qmu);
            continue;
        }
        if (log->closing && log->npend == 0 && !seglog_fill_has_work(log)) break;
        atomic_store(&log->writer_idle, 1);
        /* Last look after setting writer_idle (seglog.c, "Waking the writer"). */
        if (can_take(log)) {
            atomic_store(&log->writer_idle, 0);
            continue;
        }
        if (log->opt.fsync == SEGLOG_FSYNC_INTERVAL && log->dirty) {
            int64_t wait_ms = log->last_sync_ms + log->opt.fsync_interval_ms - seglog_mono_ms();
            if (wait_ms <= 0) {
                atomic_store(&log->writer_idle, 0);
                pthread_mutex_unlock(&log->qmu);
                writer_interval_sync(log);
                pthread_mutex_lock(&log->qmu);
                continue;
            }
            struct timespec ts;
            seglog_deadline_after_ms(&ts, wait_ms);
            pthread_cond_timedwait(&log->qcv, &log->qmu, &ts);
        } else {
            pthread_cond_wait(&log->qcv, &log->qmu);
        }
        atomic_store(&log->writer_idle, 0);
    }
    pthread_mutex_unlock(&log->qmu);
    writer_finish(log);
    return NULL;
}

void seglog_writer_stop(struct seglog *log)
{
    pthread_mutex_lock(&log->hmu);
    log->helpers_stop = 1;
    pthread_cond_broadcast(&log->hcv);
    pthread_mutex_unlock(&log->hmu);
    for (int i = 0; i < log->nhelpers; i++)
        pthread_join(log->helpers[i], NULL);
    log->nhelpers = 0;
    if (log->syncer_started) {
        pthread_mutex_lock(&log->qmu);
        log->syncer_stop = 1;
        pthread_cond_signal(&log->scv);
        pthread_mutex_unlock(&log->qmu);
        pthread_join(log->syncer, NULL);
        log->syncer_started = 0;
    }
    if (log->completer_started) {
        pthread_mutex_lock(&log->qmu);
        log->completer_stop = 1;
        pthread_cond_signal(&log->dcv);
        pthread_mutex_unlock(&log->qmu);
        pthread_join(log->completer, NULL);
        log->completer_started = 0;
    }
}

int seglog_writer_start(struct seglog *log)
{
    uint64_t end = atomic_load(&log->committed_end);
    log->sync_req_end = log->sync_done_end = end;
    log->qfill = 0;
    for (int s = 0; s < SEGLOG_QSHARDS; s++)
        log->sh[s].fill = 0;
    int e = 0;
    uint32_t want = log->opt.compress ? log->opt.compress_threads : 0;
    for (uint32_t i = 0; i < want && !e; i++)
        if (!(e = pthread_create(&log->helpers[i], NULL, helper_main, log))) log->nhelpers++;
    if (!e && log->opt.fsync == SEGLOG_FSYNC_ALWAYS &&
        !(e = pthread_create(&log->syncer, NULL, syncer_main, log)))
        log->syncer_started = 1;
    if (!e && log->opt.fsync == SEGLOG_FSYNC_ALWAYS &&
        !(e = pthread_create(&log->completer, NULL, completer_main, log)))
        log->completer_started = 1;
    if (!e && !(e = pthread_create(&log->writer, NULL, writer_main, log))) log->writer_started = 1;
    if (e) {
        seglog_writer_stop(log);
        return tally_err_from_errno(e);
    }
    return TALLY_OK;
}
