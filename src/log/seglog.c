/*
 * seglog: options, open/close, the append queue (producer side), seglog_wait and stats. The
 * writer side (group commit, syncer, encode helpers, roll, poison, reset) is seglog_writer.c,
 * recovery seglog_open.c, readers seglog_reader.c, consumers and retention seglog_retention.c;
 * the shared struct and its lock/invariant rules are in seglog_int.h; the format in batch.h,
 * segment.h and segindex.h.
 *
 * Queue design. SEGLOG_QBUFS groups: one is filling, the others are with the writer (being
 * written, or written and waiting for their fdatasync). Each group is split into SEGLOG_QSHARDS
 * shard buffers (struct qbuf), and each producer thread appends to one shard, picked once per
 * thread (round robin over the threads that append), so producers on different shards never
 * share a lock; they share one cache line, the bounds counters'. A producer memcpys its records,
 * already in the batch's raw record form, into its shard's filling buffer under the shard's mutex
 * and notes the append (callback, record count, bytes, timestamp range); no allocation happens once
 * the buffers have grown to their working size, and the mutex is held only for that copy. The
 * writer takes a group by switching every shard to the next free group, holding every shard's mutex
 * at once, so a take is one cut through all shards; the group's offsets follow shard order, then
 * append order within a shard.
 *
 * Order: appends from one thread get increasing offsets (one shard, FIFO). Appends from
 * different threads that are in flight together get offsets in either order (they did before
 * too: they raced for the queue lock); an append made after another one's completion always
 * lands after it.
 *
 * Bounds. The queue bounds count every record from seglog_append until its completion
 * (lock-free counters: add, and take back when over), so the records held in all buffers
 * together never exceed queue_records_max / queue_bytes_max. The buffers' capacity is counted
 * too and held to qcap_max_bytes: 4 times the bounds' own worth (the 4 groups a single queue had)
 * plus every buffer's minimum size; a buffer that outgrew its use is freed after its group
 * completes (seglog_qbuf_recycle).
 *
 * Waking the writer. A producer whose append is the first in its shard's filling buffer reads
 * writer_idle after publishing its fill_apps (both seq_cst), and the writer sets writer_idle
 * before it checks every shard's fill_apps one last time (seq_cst too): either the writer sees
 * the append, or the producer sees the idle writer and signals qcv under qmu.
 */
#include "log/seglog_int.h"

#include "core/diag.h"
#include "log/batch.h"
#include "tally/error.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

const uint32_t seglog_fsync_bucket_us[SEGLOG_FSYNC_BUCKETS - 1] = {
    100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000,
};

void seglog_options_default(struct seglog_options *o)
{
    memset(o, 0, sizeof *o);
    o->segment_bytes = 64ull << 20;
    o->fsync = SEGLOG_FSYNC_ALWAYS;
    o->fsync_interval_ms = 100;
    o->queue_records_max = 65536;
    o->queue_bytes_max = 32ull << 20;
    o->batch_bytes_max = 256u << 10;
    o->record_bytes_max = 128u << 10;
    o->compress_threads = 1;
    o->direct_min_bytes = 512u << 10;
    o->index_interval_bytes = 16u << 10;
    o->compress = 1;
    o->verify = SEGLOG_VERIFY_ALL;
}

int64_t seglog_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t seglog_mono_ms(void)
{
    return seglog_mono_us() / 1000;
}

void seglog_deadline_after_ms(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static int options_check(const struct seglog_options *o, char *msg, size_t cap)
{
    const char *bad = NULL;
    if (!o->dir || !o->dir[0] || strlen(o->dir) > SEGLOG_PATH_MAX - 64)
        bad = "dir missing or too long";
    else if (o->segment_bytes < (64u << 10) || o->segment_bytes > (1ull << 30))
        bad = "segment_bytes outside [64 KiB, 1 GiB]";
    else if (o->batch_bytes_max < (4u << 10) || o->batch_bytes_max > (32u << 20))
        bad = "batch_bytes_max outside [4 KiB, 32 MiB]";
    else if (o->segment_bytes < (uint64_t)o->batch_bytes_max + 64)
        bad = "segment_bytes below batch_bytes_max + 64";
    else if (o->record_bytes_max > o->batch_bytes_max - BATCH_RECORD_HEADER_BYTES)
        bad = "record_bytes_max above batch_bytes_max - 12";
    else if (o->queue_records_max < 1 || o->queue_bytes_max < 1024 ||
             o->queue_bytes_max > (4ull << 30))
        bad = "queue_records_max or queue_bytes_max out of range";
    else if ((uint64_t)o->record_bytes_max + BATCH_RECORD_HEADER_BYTES > o->queue_bytes_max)
        bad = "record_bytes_max above queue_bytes_max - 12";
    else if (o->fsync != SEGLOG_FSYNC_ALWAYS && o->fsync != SEGLOG_FSYNC_INTERVAL &&
             o->fsync != SEGLOG_FSYNC_NONE)
        bad = "unknown fsync policy";
    else if (o->fsync_interval_ms < 1 || o->fsync_interval_ms > 60000)
        bad = "fsync_interval_ms outside [1, 60000]";
    else if (o->index_interval_bytes < 1024 || o->index_interval_bytes > (16u << 20))
        bad = "index_interval_bytes outside [1 KiB, 16 MiB]";
    else if (o->verify != SEGLOG_VERIFY_ALL && o->verify != SEGLOG_VERIFY_TAIL)
        bad = "unknown verify mode";
    else if (o->compress_threads > SEGLOG_COMPRESS_THREADS_MAX)
        bad = "compress_threads above 4";
    else if (o->repair && o->read_only)
        bad = "repair needs a writable log";
    if (!bad) return TALLY_OK;
    snprintf(msg, cap, "seglog: invalid options: %s", bad);
    return TALLY_EINVAL;
}

void seglog_seg_free(struct seg *s)
{
    segindex_free(&s->idx);
}

int seglog_seg_find(const struct seglog *log, uint64_t off)
{
    int lo = 0, hi = (int)log->nsegs - 1, ans = -1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (log->segs[mid].base <= off) {
            ans = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return ans;
}

static void qbuf_free(struct qbuf *b)
{
    free(b->bytes);
    free(b->apps);
}

void seglog_free(struct seglog *log)
{
    if (!log) return;
    if (log->fd >= 0) log->fs->close(log->fs->ctx, log->fd);
    if (log->dfd >= 0) log->fs->close(log->fs->ctx, log->dfd);
    for (uint32_t i = 0; i < log->nsegs; i++)
        seglog_seg_free(&log->segs[i]);
    free(log->segs);
    if (log->sh) {
        for (int s = 0; s < SEGLOG_QSHARDS; s++) {
            for (int i = 0; i < SEGLOG_QBUFS; i++)
                qbuf_free(&log->sh[s].q[i]);
            pthread_mutex_destroy(&log->sh[s].mu);
        }
        free(log->sh);
    }
    free(log->out);
    free(log->stage);
    free(log->jobs);
    pthread_mutex_destroy(&log->smu);
    pthread_mutex_destroy(&log->qmu);
    pthread_mutex_destroy(&log->hmu);
    pthread_cond_destroy(&log->qcv);
    pthread_cond_destroy(&log->resetcv);
    pthread_cond_destroy(&log->hcv);
    pthread_cond_destroy(&log->hdcv);
    pthread_cond_destroy(&log->scv);
    pthread_cond_destroy(&log->dcv);
    free(log);
}

int seglog_open(const struct seglog_options *opt, struct seglog **out,
                struct seglog_open_report *report)
{
    struct seglog_open_report scratch;
    if (!report) report = &scratch;
    memset(report, 0, sizeof *report);
    *out = NULL;
    if (!opt) return TALLY_EINVAL;
    int r = options_check(opt, report->message, sizeof report->message);
    if (r) {
        diag_error("%s", report->message);
        return r;
    }
    struct seglog *log = calloc(1, sizeof *log);
    void *shm = NULL;
    if (!log || posix_memalign(&shm, 64, SEGLOG_QSHARDS * sizeof *log->sh)) {
        free(log);
        return TALLY_ENOMEM;
    }
    memset(shm, 0, SEGLOG_QSHARDS * sizeof *log->sh);
    log->sh = shm;
    log->opt = *opt;
    snprintf(log->dir, sizeof log->dir, "%s", opt->dir);
    log->opt.dir = log->dir;
    log->fs = fsio_or_real(opt->fs);
    log->fd = -1;
    log->dfd = -1;
    pthread_mutex_init(&log->smu, NULL);
    pthread_mutex_init(&log->hmu, NULL);
    pthread_mutex_init(&log->qmu, NULL);
    /* Shards on their own cache lines. Producers hold a shard's mutex only for a memcpy:
     * spinning briefly beats sleeping when two of them meet there. */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    for (int s = 0; s < SEGLOG_QSHARDS; s++)
        pthread_mutex_init(&log->sh[s].mu, &ma);
    pthread_mutexattr_destroy(&ma);
    log->qcap_max_bytes =
        4 * (opt->queue_bytes_max + (uint64_t)opt->queue_records_max * sizeof(struct qappend)) +
        (uint64_t)SEGLOG_QSHARDS * SEGLOG_QBUFS *
            (SEGLOG_QBUF_BYTES_MIN + SEGLOG_QBUF_APPS_MIN * sizeof(struct qappend));
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&log->qcv, &ca);
    pthread_cond_init(&log->resetcv, &ca);
    pthread_cond_init(&log->hcv, &ca);
    pthread_cond_init(&log->hdcv, &ca);
    pthread_cond_init(&log->scv, &ca);
    pthread_cond_init(&log->dcv, &ca);
    pthread_condattr_destroy(&ca);

    r = seglog_recover(log, report);
    if (!r && !opt->read_only) r = seglog_writer_start(log);
    if (r) {
        seglog_free(log);
        return r;
    }
    *out = log;
    return TALLY_OK;
}

/* ---- producers ---------------------------------------------------------------------------- */

/* Counts delta more bytes of queue buffer capacity; 0 when that would pass qcap_max_bytes. */
static int qcap_grow(struct seglog *log, uint64_t delta)
{
    uint64_t now = atomic_fetch_add(&log->qcap_bytes, delta) + delta;
    if (now <= log->qcap_max_bytes) return 1;
    atomic_fetch_sub(&log->qcap_bytes, delta);
    return 0;
}

/* Makes room in b for one more append of `bytes`. 0, TALLY_ENOMEM, or TALLY_EFULL when the
 * buffers' capacity is at qcap_max_bytes. Under the shard's mu. */
static int qbuf_reserve(struct seglog *log, struct qbuf *b, size_t bytes)
{
    size_t bytes_max = (size_t)log->opt.queue_bytes_max;
    if (b->len + bytes > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : SEGLOG_QBUF_BYTES_MIN;
        if (cap < b->len + bytes) cap = b->len + bytes;
        if (cap > bytes_max && bytes_max >= b->len + bytes) cap = bytes_max;
        if (!qcap_grow(log, cap - b->cap)) return TALLY_EFULL;
        uint8_t *n = realloc(b->bytes, cap);
        if (!n) {
            atomic_fetch_sub(&log->qcap_bytes, cap - b->cap);
            return TALLY_ENOMEM;
        }
        b->bytes = n;
        b->cap = cap;
    }
    if (b->napps == b->capapps) {
        uint32_t cap = b->capapps ? b->capapps * 2 : SEGLOG_QBUF_APPS_MIN;
        uint64_t delta = (uint64_t)(cap - b->capapps) * sizeof(struct qappend);
        if (!qcap_grow(log, delta)) return TALLY_EFULL;
        struct qappend *n = realloc(b->apps, (size_t)cap * sizeof *n);
        if (!n) {
            atomic_fetch_sub(&log->qcap_bytes, delta);
            return TALLY_ENOMEM;
        }
        b->apps = n;
        b->capapps = cap;
    }
    return TALLY_OK;
}

void seglog_qbuf_recycle(struct seglog *log, struct qbuf *b)
{
    if (b->cap > SEGLOG_QBUF_BYTES_MIN && b->len < b->cap / 4) {
        free(b->bytes);
        b->bytes = NULL;
        atomic_fetch_sub(&log->qcap_bytes, b->cap);
        b->cap = 0;
    }
    if (b->capapps > SEGLOG_QBUF_APPS_MIN && b->napps < b->capapps / 4) {
        free(b->apps);
        b->apps = NULL;
        atomic_fetch_sub(&log->qcap_bytes, (uint64_t)b->capapps * sizeof(struct qappend));
        b->capapps = 0;
    }
    b->len = 0;
    b->napps = 0;
    b->records = 0;
}

/* The calling thread's queue shard: threads take shards round robin at their first append (to
 * any log) and keep it. */
static uint32_t my_shard(void)
{
    static _Atomic uint32_t next_shard;
    static _Thread_local uint32_t shard_plus1;
    if (!shard_plus1)
        shard_plus1 =
            atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed) % SEGLOG_QSHARDS + 1;
    return shard_plus1 - 1;
}

void seglog_bounds_give(struct seglog *log, uint64_t records, uint64_t bytes)
{
    atomic_fetch_sub(&log->queued_records, records);
    atomic_fetch_sub(&log->queued_bytes, bytes);
}

/* Takes n records and `bytes` into the queue bounds; 0 when they do not fit. */
static int bounds_take(struct seglog *log, uint32_t n, uint64_t bytes)
{
    uint64_t rec = atomic_fetch_add(&log->queued_records, n) + n;
    uint64_t by = atomic_fetch_add(&log->queued_bytes, bytes) + bytes;
    if (rec <= log->opt.queue_records_max && by <= log->opt.queue_bytes_max) return 1;
    seglog_bounds_give(log, n, bytes);
    return 0;
}

int seglog_fill_has_work(struct seglog *log)
{
    for (int s = 0; s < SEGLOG_QSHARDS; s++)
        if (atomic_load(&log->sh[s].fill_apps) > 0) return 1;
    return 0;
}

int seglog_append(struct seglog *log, const struct seglog_rec *recs, uint32_t n,
                  seglog_done_fn done, void *arg)
{
    if (!log || !recs || n == 0 || !done) return TALLY_EINVAL;
    if (log->opt.read_only) return TALLY_ECLOSED;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (recs[i].len > log->opt.record_bytes_max) return TALLY_ETOOBIG;
        if (recs[i].len && !recs[i].data) return TALLY_EINVAL;
        bytes += BATCH_RECORD_HEADER_BYTES + (uint64_t)recs[i].len;
    }
    if (n > log->opt.queue_records_max || bytes > log->opt.queue_bytes_max) return TALLY_ETOOBIG;

    struct qshard *sh = &log->sh[my_shard()];
    int first = 0, taken = 0;
    pthread_mutex_lock(&sh->mu);
    int r = TALLY_OK;
    if (log->closing) {
        r = TALLY_ECLOSED;
    } else if ((r = atomic_load_explicit(&log->poison_err, memory_order_relaxed)) != 0) {
        /* fail fast with the original cause */
    } else if (!(taken = bounds_take(log, n, bytes))) {
        r = TALLY_EFULL;
    } else {
        struct qbuf *b = &sh->q[sh->fill];
        r = qbuf_reserve(log, b, (size_t)bytes);
        if (!r) {
            uint8_t *p = b->bytes + b->len;
            int64_t tmin = INT64_MAX, tmax = INT64_MIN;
            for (uint32_t i = 0; i < n; i++) {
                p += batch_put_record(p, recs[i].data, recs[i].len, recs[i].ts_ms);
                if (recs[i].ts_ms < tmin) tmin = recs[i].ts_ms;
                if (recs[i].ts_ms > tmax) tmax = recs[i].ts_ms;
            }
            b->len += (size_t)bytes;
            b->records += n;
            b->apps[b->napps++] = (struct qappend){done, arg, n, (uint32_t)bytes, tmin, tmax};
            /* Only the first append's store must be seq_cst ("Waking the writer"): the writer
             * only asks whether fill_apps > 0, and a full fence per append cost more than the
             * copy. */
            first = b->napps == 1;
            atomic_store_explicit(&sh->fill_apps, b->napps,
                                  first ? memory_order_seq_cst : memory_order_relaxed);
            atomic_store_explicit(&sh->appends,
                                  atomic_load_explicit(&sh->appends, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&sh->mu);
    if (r && taken) seglog_bounds_give(log, n, bytes);
    if (r == TALLY_EFULL)
        atomic_fetch_add_explicit(&log->st_rejected_full, 1, memory_order_relaxed);
    /* Only the first append of a shard's buffer wakes an idle writer: an idle writer that finds
     * work waiting is held back by the pipeline (the completer wakes it) or a reset. */
    if (first && atomic_load(&log->writer_idle)) {
        pthread_mutex_lock(&log->qmu);
        pthread_cond_signal(&log->qcv);
        pthread_mutex_unlock(&log->qmu);
    }
    return r;
}

int seglog_poisoned_err(struct seglog *log)
{
    return atomic_load(&log->poison_err);
}

uint64_t seglog_committed_offset(struct seglog *log)
{
    return atomic_load_explicit(&log->committed_end, memory_order_acquire);
}

uint64_t seglog_start_offset(struct seglog *log)
{
    pthread_mutex_lock(&log->smu);
    uint64_t s = log->nsegs ? log->segs[0].base : seglog_committed_offset(log);
    pthread_mutex_unlock(&log->smu);
    return s;
}

int seglog_reset_poison(struct seglog *log)
{
    if (log->opt.read_only) return TALLY_ECLOSED;
    pthread_mutex_lock(&log->qmu);
    if (log->closing) {
        pthread_mutex_unlock(&log->qmu);
        return TALLY_ECLOSED;
    }
    /* Wait for a reset already in progress, then run our own (it is a no-op when healthy). */
    while (log->reset_pending)
        pthread_cond_wait(&log->resetcv, &log->qmu);
    log->reset_pending = 1;
    uint64_t gen = log->reset_done_gen;
    pthread_cond_signal(&log->qcv);
    while (log->reset_done_gen == gen)
        pthread_cond_wait(&log->resetcv, &log->qmu);
    int r = log->reset_result;
    pthread_mutex_unlock(&log->qmu);
    return r;
}

/* ---- consumers' side ---------------------------------------------------------------------- */

/*
 * Waiting for the committed offset shares no lock with the completing thread (a waiter that
 * held one while descheduled would stall acknowledgements): a waiter counts itself in
 * nwaiters, reads commit_seq, checks the committed offset, and sleeps on commit_seq only if it
 * is unchanged; the completing thread publishes the offset, bumps commit_seq, then wakes the
 * sleepers if nwaiters > 0. All seq_cst: either the waiter sees the new offset or the bump, or
 * the completing thread sees the waiter and wakes it.
 */
int seglog_wait(struct seglog *log, uint64_t offset, int timeout_ms)
{
    if (seglog_committed_offset(log) > offset) return TALLY_OK;
    int64_t deadline_us = timeout_ms >= 0 ? seglog_mono_us() + (int64_t)timeout_ms * 1000 : 0;
    atomic_fetch_add(&log->nwaiters, 1);
    int r;
    for (;;) {
        uint32_t seq = atomic_load(&log->commit_seq);
        if (seglog_committed_offset(log) > offset) {
            r = TALLY_OK;
            break;
        }
        if (atomic_load(&log->wait_closing)) {
            r = TALLY_ECLOSED;
            break;
        }
        struct timespec rel, *relp = NULL;
        if (timeout_ms >= 0) {
            int64_t left_us = deadline_us - seglog_mono_us();
            if (left_us <= 0) {
                r = TALLY_EAGAIN;
                break;
            }
            rel.tv_sec = (time_t)(left_us / 1000000);
            rel.tv_nsec = (long)(left_us % 1000000) * 1000;
            relp = &rel;
        }
        syscall(SYS_futex, (uint32_t *)&log->commit_seq, FUTEX_WAIT_PRIVATE, seq, relp, NULL, 0);
    }
    atomic_fetch_sub(&log->nwaiters, 1);
    return r;
}

void seglog_notify_committed(struct seglog *log)
{
    atomic_fetch_add(&log->commit_seq, 1);
    if (atomic_load(&log->nwaiters) > 0)
        syscall(SYS_futex, (uint32_t *)&log->commit_seq, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL,
                0);
}

void seglog_close(struct seglog *log)
{
    if (!log) return;
    /* Waiters leave with TALLY_ECLOSED; close is rare, so it polls for them to be gone. */
    atomic_store(&log->wait_closing, 1);
    while (atomic_load(&log->nwaiters) > 0) {
        seglog_notify_committed(log);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    if (log->writer_started) {
        pthread_mutex_lock(&log->qmu);
        for (int s = 0; s < SEGLOG_QSHARDS; s++)
            pthread_mutex_lock(&log->sh[s].mu);
        log->closing = 1;
        for (int s = SEGLOG_QSHARDS - 1; s >= 0; s--)
            pthread_mutex_unlock(&log->sh[s].mu);
        pthread_cond_signal(&log->qcv);
        pthread_mutex_unlock(&log->qmu);
        pthread_join(log->writer, NULL);
        seglog_writer_stop(log);
    }
    pthread_mutex_lock(&log->smu);
    uint32_t readers = log->readers_open;
    pthread_mutex_unlock(&log->smu);
    TALLY_ASSERT(readers == 0);
    seglog_free(log);
}

void seglog_stats(struct seglog *log, struct seglog_stats *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&log->smu);
    st->segment_count = log->nsegs;
    st->start_offset = log->nsegs ? log->segs[0].base : 0;
    for (uint32_t i = 0; i < log->nsegs; i++)
        st->bytes_on_disk += log->segs[i].bytes;
    pthread_mutex_unlock(&log->smu);
    st->queue_records = atomic_load(&log->queued_records);
    st->queue_bytes = atomic_load(&log->queued_bytes);
    st->queue_capacity_bytes = atomic_load(&log->qcap_bytes);
    st->queue_capacity_max_bytes = log->qcap_max_bytes;
    st->end_offset = atomic_load(&log->written_end);
    st->committed_offset = atomic_load(&log->committed_end);
    st->durable_offset = atomic_load(&log->durable_end);
    for (int s = 0; s < SEGLOG_QSHARDS; s++)
        st->appends_total += atomic_load_explicit(&log->sh[s].appends, memory_order_relaxed);
    st->appends_rejected_full = atomic_load(&log->st_rejected_full);
    st->records_written = atomic_load(&log->st_records);
    st->batches_written = atomic_load(&log->st_batches);
    st->bytes_written = atomic_load(&log->st_bytes);
    st->raw_bytes_written = atomic_load(&log->st_raw_bytes);
    st->direct_bytes_written = atomic_load(&log->st_direct_bytes);
    st->fsync_count = atomic_load(&log->st_fsyncs);
    st->fsync_sum_us = atomic_load(&log->st_fsync_sum_us);
    for (int i = 0; i < SEGLOG_FSYNC_BUCKETS; i++)
        st->fsync_hist[i] = atomic_load(&log->st_fsync_hist[i]);
    st->poisoned_err = atomic_load(&log->poison_err);
    st->poisoned = st->poisoned_err != 0;
}
