/*
 * seglog internals shared by seglog.c (queue, open/close, stats), seglog_writer.c (writer,
 * syncer and encode helper threads), seglog_open.c (recovery), seglog_reader.c and
 * seglog_retention.c. Not for use outside src/log/.
 *
 * Threads: producers (any), the writer, the syncer and the completer (FSYNC_ALWAYS only),
 * compress_threads encode helpers, readers and consumers (any), the caller of retention (any).
 * Locks (each a leaf unless said otherwise):
 *   qmu  queue buffer ownership (qfill, qbusy[]), the writer wake-up and reset handshake, and
 *        the writer/syncer/completer pipeline (pend[], sync_*, complet* fields);
 *   sh[s].mu  shard s of the append queue (its filling buffer). Producers hold only their own
 *        shard's mu (never with another lock). The two exceptions hold several locks, always in
 *        the order qmu, then sh[0].mu .. sh[SEGLOG_QSHARDS-1].mu: the writer taking the filling
 *        group, and seglog_close setting `closing`;
 *   smu  the segment list (and each segment's index), committed_seg, the consumer registry,
 *        the reader count;
 *   hmu  the encode helpers' job handshake;
 * seglog_wait shares no lock with the writer side: see commit_seq below and seglog.c.
 * Offsets published lock-free (atomics): committed_end, durable_end, written_end, poison_err.
 * log->fd is changed only by the writer, with the syncer held off (sync_hold).
 * Completing (commit, then the callbacks) runs on ONE thread at a time, oldest group first: the
 * completer (FSYNC_ALWAYS, while it has set `completing`), or the writer (other policies; under
 * ALWAYS only when pend[] is empty, or with the completer held off by complete_hold). So
 * committed_pos and committed_seg are written by the completing thread, and the writer reads
 * committed_pos only with the completer held off or idle.
 *
 * Invariants:
 *   1. segs[] is sorted by base; segs[i].end <= segs[i+1].base (equal unless a repair left a
 *      hole); only segs[nsegs-1] is active (closed == 0).
 *   2. start <= durable_end <= committed_end <= written_end == segs[last].end (writer side).
 *   3. committed_end is always at a batch boundary, and the bytes of every batch below it are
 *      written (and under ALWAYS, fdatasync'ed) before it is published (release store).
 *   4. (committed_seg, committed_pos) is the file position of committed_end; nothing at or
 *      before it is ever truncated, and retention never deletes segment committed_seg or later.
 */
#ifndef TALLY_SEGLOG_INT_H
#define TALLY_SEGLOG_INT_H

#include "log/seglog.h"
#include "log/segindex.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define SEGLOG_PATH_MAX 4096

/* O_DIRECT writes: file offset, length and memory address are multiples of this (4 KiB covers
 * the logical block size of every common device; a file system that wants more fails the write
 * with EINVAL and the log goes on through the page cache). */
#define SEGLOG_DIRECT_ALIGN 4096u

struct seg {
    uint64_t base;
    uint64_t end;      /* offset after the last record written to it */
    uint64_t bytes;    /* file size as far as the log knows (valid bytes) */
    int64_t ts_max_ms; /* INT64_MIN when empty */
    int closed;
    struct segindex idx;
};

/* One accepted append waiting in the queue (its records follow the previous append's). */
struct qappend {
    seglog_done_fn done;
    void *arg;
    uint32_t nrec;
    uint32_t bytes; /* its records' bytes in the queue (12 + len each) */
    int64_t ts_min_ms, ts_max_ms;
};

/* One batch to encode: a slice of a taken queue half and its place in the output buffer. */
struct bjob {
    const uint8_t *src;
    uint32_t raw_len;
    uint32_t count;
    int64_t ts_min_ms, ts_max_ms;
    uint64_t base_offset;
    size_t dst;     /* offset in log->out, batch_encode_bound(raw_len) bytes reserved */
    size_t enc_len; /* set by the encoder */
};

#define SEGLOG_COMPRESS_THREADS_MAX 4

/* Queue buffers: one filling, one being written, the others written and waiting for fdatasync.
 * A queue "buffer" qi is a group: shard s's part of it is sh[s].q[qi]. */
#define SEGLOG_QBUFS 4
#define SEGLOG_PIPELINE_MAX (SEGLOG_QBUFS - 1)

/* Producer threads spread over this many queue shards (a thread keeps its shard): with one
 * queue mutex, 64 producers on 2 cores spent about 40 % of the process's CPU in that mutex
 * (spinning and cache-line transfers). */
#define SEGLOG_QSHARDS 8

/* Queue buffers start at QBUF_BYTES_MIN and double; QBUF_APPS_MIN appends likewise. After a
 * group completes, a buffer that used less than a quarter of a capacity above these is freed
 * (seglog_writer.c), so that capacity follows the load rather than its peak. */
#define SEGLOG_QBUF_BYTES_MIN (64u << 10)

/* A group of at most this many bytes spread over several shards is copied together before it is
 * cut, so that it makes one batch rather than one per shard (seglog_writer.c: stage_group). */
#define SEGLOG_STAGE_BYTES (64u << 10)
#define SEGLOG_QBUF_APPS_MIN 256u

/* A group written under FSYNC_ALWAYS: waiting for the syncer to make it durable, then for the
 * completer, which removes it from pend[] only after its callbacks ran (so npend counts every
 * queue buffer that the writer handed on and that is not free yet). */
struct pgroup {
    int qi;            /* its queue buffer */
    uint64_t first;    /* offset of its first record */
    uint64_t end;      /* offset after its last record */
    uint64_t seg_base; /* segment and file position of end */
    uint64_t pos;
};

/* One half of the double-buffered queue: records in batch raw form, plus the appends. */
struct qbuf {
    uint8_t *bytes;
    size_t len, cap;
    struct qappend *apps;
    uint32_t napps, capapps;
    uint32_t records;
};

/* One queue shard: its producers' part of each group. fill and the q[fill] contents change
 * under mu only; fill_apps mirrors q[fill].napps for the writer's lock-free check. */
struct qshard {
    pthread_mutex_t mu;
    int fill;                   /* the group this shard's producers append to (== qfill) */
    _Atomic uint32_t fill_apps; /* appends in q[fill] */
    _Atomic uint64_t appends;   /* accepted, for seglog_stats (written under mu) */
    struct qbuf q[SEGLOG_QBUFS];
};

struct seglog_consumer {
    int used;
    uint64_t offset;
    char name[SEGLOG_CONSUMER_NAME_MAX + 1];
};

struct seglog {
    struct seglog_options opt;
    char dir[SEGLOG_PATH_MAX];
    const struct fsio *fs;

    /* smu: segments, consumers, readers */
    pthread_mutex_t smu;
    struct seg *segs;
    uint32_t nsegs, capsegs;
    uint64_t committed_seg; /* base of the segment holding committed_end (invariant 4) */
    struct seglog_consumer consumers[SEGLOG_CONSUMERS_MAX];
    uint32_t readers_open;

    /* the append queue: SEGLOG_QSHARDS shards (cache-line aligned, own allocation) */
    struct qshard *sh;
    uint64_t qcap_max_bytes;
    /* Queue bounds, lock-free: records and bytes from seglog_append until completion, and the
     * capacity of all queue buffers (held to qcap_max_bytes). Every append writes them: the
     * padding keeps them off the cache lines of the fields producers only read. */
    char pad_bounds0[64];
    _Atomic uint64_t queued_records, queued_bytes;
    _Atomic uint64_t qcap_bytes;
    char pad_bounds1[64];

    /* qmu: queue buffer ownership and writer handshake */
    pthread_mutex_t qmu;
    pthread_cond_t qcv;     /* writer waits for work */
    pthread_cond_t resetcv; /* reset_poison waits for the writer */
    uint8_t qbusy[SEGLOG_QBUFS]; /* taken by the writer, not yet completed */
    int qfill;                   /* the group producers append to */
    int closing; /* set under qmu and every shard's mu; producers read it under theirs */
    _Atomic int writer_idle; /* written under qmu; producers read it without (seglog.c) */
    /* FSYNC_ALWAYS pipeline (qmu): the syncer thread fdatasyncs while the writer writes on, and
     * the completer thread runs the callbacks of durable groups while both go on */
    struct pgroup pend[SEGLOG_PIPELINE_MAX]; /* FIFO, oldest first */
    int npend;
    uint64_t sync_req_end;  /* written through here: please make it durable */
    uint64_t sync_done_end; /* durable through here */
    int sync_err;           /* the syncer's fdatasync failed (it stops) */
    int sync_busy;          /* an fdatasync is running */
    int sync_hold;          /* the writer is changing log->fd: start nothing */
    int syncer_stop;
    pthread_cond_t scv; /* the syncer waits for work */
    pthread_t syncer;
    int syncer_started;
    int completing;    /* the completer is completing pend[0] (outside qmu) */
    int complete_hold; /* the writer completes or fails pend[] itself: start nothing */
    int completer_stop;
    pthread_cond_t dcv; /* the completer waits for a durable group */
    pthread_t completer;
    int completer_started;
    int reset_pending;
    int reset_result;
    uint64_t reset_done_gen;

    /* seglog_wait (lock-free, seglog.c): bumped after each new committed offset; futex word */
    _Atomic uint32_t commit_seq;
    _Atomic int nwaiters;
    _Atomic int wait_closing;

    _Atomic uint64_t committed_end;
    _Atomic uint64_t durable_end;
    _Atomic uint64_t written_end;
    _Atomic int poison_err;

    /* encode helpers (hmu): LZ4 batches of a group in parallel with the writer thread */
    pthread_mutex_t hmu;
    pthread_cond_t hcv;  /* helpers wait for a job */
    pthread_cond_t hdcv; /* the writer waits for helpers to finish it */
    pthread_t helpers[SEGLOG_COMPRESS_THREADS_MAX];
    int nhelpers;
    int helpers_stop;
    uint64_t job_gen;      /* bumped for each group handed out */
    uint32_t helpers_done; /* helpers finished with job_gen */
    struct bjob *jobs;     /* owned by the writer; read by helpers during a job */
    uint32_t njobs, capjobs;
    _Atomic uint32_t job_next;
    _Atomic int lz4_skip;     /* batches left to store raw without trying LZ4 (it did not help) */
    _Atomic int lz4_skip_len; /* batches to skip after the next failed LZ4 probe */

    /* writer thread only */
    pthread_t writer;
    int writer_started;
    int fd; /* active segment, O_RDWR; -1 in read-only mode */
    int dfd;           /* active segment again, O_WRONLY | O_DIRECT, opened at its first large
                          write (seglog_writer.c); -1 when none */
    uint64_t dfd_base; /* the segment dfd belongs to */
    int direct_off;    /* the file system refused O_DIRECT: every write goes through fd */
    uint64_t committed_pos;
    uint8_t *out; /* SEGLOG_DIRECT_ALIGN-aligned (seglog_writer.c: packing) */
    uint8_t *stage; /* SEGLOG_STAGE_BYTES, allocated at the first staged group */
    size_t outcap;
    int dirty;            /* interval: written since the last fdatasync */
    int64_t last_sync_ms; /* monotonic */

    /* statistics */
    _Atomic uint64_t st_rejected_full, st_records, st_batches, st_bytes, st_raw_bytes;
    _Atomic uint64_t st_direct_bytes;
    _Atomic uint64_t st_fsyncs, st_fsync_sum_us;
    _Atomic uint64_t st_fsync_hist[SEGLOG_FSYNC_BUCKETS];
};

/* seglog.c */
/* Wakes seglog_wait callers after committed_end changed. Any thread, no lock held needed. */
void seglog_notify_committed(struct seglog *log);
int64_t seglog_mono_us(void);
int64_t seglog_mono_ms(void);
void seglog_deadline_after_ms(struct timespec *ts, int64_t ms);
void seglog_seg_free(struct seg *s);
/* Index of the last segment with base <= off, or -1. Caller holds smu. */
int seglog_seg_find(const struct seglog *log, uint64_t off);
/* seglog_writer.c: starts the writer (and syncer, encode helpers); stops them after the writer
 * drained (closing set). */
int seglog_writer_start(struct seglog *log);
void seglog_writer_stop(struct seglog *log);
/* Frees everything open allocated (no thread running). */
void seglog_free(struct seglog *log);
/* Gives records and bytes back to the queue bounds (an append refused after taking them, or a
 * completed group). Any thread, lock-free. */
void seglog_bounds_give(struct seglog *log, uint64_t records, uint64_t bytes);
/* 1 when some shard's filling buffer holds an append. Writer thread (lock-free loads). */
int seglog_fill_has_work(struct seglog *log);
/* Frees the memory of a completed queue buffer that used less than a quarter of its capacity
 * (above the minimum sizes), and empties it. Its owner only: the thread completing it. */
void seglog_qbuf_recycle(struct seglog *log, struct qbuf *b);

/* seglog_open.c: recovery; fills log->segs and opens the active segment. */
int seglog_recover(struct seglog *log, struct seglog_open_report *rep);

#endif
