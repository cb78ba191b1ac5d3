/*
 * seglog: Tally's segmented append-only event log (our Kafka).
 *
 * A directory of segment files named by the offset of their first record; each segment is a
 * sequence of record batches (byte layout and validity rule: batch.h; segment files and the
 * recovery scan: segment.h; sparse index: segindex.h). Offsets are per record and dense: a batch
 * covers [base, base + count), the next batch starts at base + count.
 *
 * Writing (group commit). Producers on any thread call seglog_append(): it copies the records
 * into a bounded queue and returns at once (TALLY_EFULL when the queue is full: it never blocks
 * and never grows past queue_records_max / queue_bytes_max). ONE writer thread takes everything
 * waiting, cuts it into batches of at most batch_bytes_max raw bytes (an append no larger than
 * that is never split, so it survives a crash whole or not at all), LZ4s them (helped by
 * compress_threads helper threads; stored raw when LZ4 does not help), writes them with one
 * pwrite per segment touched (8 MiB chunks at most), then, per fsync policy:
 *   always   (default) fdatasync, then complete: an acknowledged record survives power loss.
 *            The fdatasync runs on an internal syncer thread so that the writer already writes
 *            the next groups meanwhile (at most 3 groups written and not yet durable).
 *   interval complete after the write; fdatasync at most fsync_interval_ms later. LOSS WINDOW:
 *            an OS crash or power cut can lose records acknowledged in the last
 *            fsync_interval_ms plus the duration of one write + fdatasync (a process crash
 *            loses nothing that was acknowledged: the bytes are in the page cache).
 *   none     never fdatasync (tests only): an OS crash can lose anything not written back.
 * Then every append's done(arg, err, first_offset) is called, in offset order, ON THE LOG'S
 * COMPLETION THREAD: under always the completer thread (so the writer and the syncer go on
 * with the next groups meanwhile), or the writer itself for a group it synced inline because
 * nothing else was in flight; under interval and none the writer thread. One callback runs at a
 * time. Callbacks must be short and non-blocking (they delay every completion behind them);
 * they may call seglog_append, never seglog_close, seglog_reset_poison or seglog_wait.
 * Producers hop back to their own thread themselves (the HTTP server posts to its event loop,
 * the bench bumps an atomic counter and wakes its thread only when needed).
 * Order: the queue is sharded by calling thread (seglog.c). Appends from one thread get
 * increasing offsets; appends from threads racing each other get them in either order.
 * A segment is rolled (closed, fdatasync'ed unless policy none, its index written, a new one
 * created and the directory fsync'ed) before a batch would push it past segment_bytes; a
 * batch never straddles segments.
 *
 * Visibility. committed offset = the end of what was completed as success: after fdatasync
 * (always) or after the write (interval, none). Readers never see records at or beyond it.
 *
 * Poison. A failed write, fdatasync or roll poisons the writer: the group being written and
 * everything queued complete with the error (TALLY_EIO or TALLY_ENOSPC, the original cause),
 * later appends fail at once with it (seglog_poisoned_err()), nothing is retried blindly and
 * nothing is reported durable that is not. Bytes written for failed appends are truncated away
 * before their callbacks run, so no batch of a failed append is left to look valid later (if
 * the truncation also fails, they may survive a restart: a failed append may or may not be in
 * the log, a successful one always is). seglog_reset_poison() recovers without a restart.
 *
 * Reading. Readers (any thread, one reader per thread at a time) iterate records from any
 * offset, seeking with the index; at the committed end they return TALLY_EAGAIN ("no more for
 * now") and the consumer thread can block in seglog_wait(). Consumers own their cursors but
 * register them so that retention never deletes what they still need.
 *
 * Recovery at open: see seglog_open().
 */
#ifndef TALLY_SEGLOG_H
#define TALLY_SEGLOG_H

#include "core/fsio.h"

#include <stdint.h>

struct seglog;
struct seglog_reader;

enum seglog_fsync {
    SEGLOG_FSYNC_ALWAYS = 0,
    SEGLOG_FSYNC_INTERVAL = 1,
    SEGLOG_FSYNC_NONE = 2,
};

enum seglog_verify {
    SEGLOG_VERIFY_ALL = 0,  /* open checksums every batch of every segment (disk-speed scan) */
    SEGLOG_VERIFY_TAIL = 1, /* closed segments with a valid index are checked at their tail
                               only; the active one from its last checkpoint */
};

struct seglog_options {
    const char *dir;               /* log directory; created when missing (parent must exist) */
    uint64_t segment_bytes;        /* roll before exceeding; default 64 MiB, [64 KiB, 1 GiB],
                                      >= batch_bytes_max + 64 */
    enum seglog_fsync fsync;       /* default SEGLOG_FSYNC_ALWAYS */
    uint32_t fsync_interval_ms;    /* policy interval; default 100, [1, 60000] */
    uint32_t queue_records_max;    /* records waiting or being written; default 65536 */
    uint64_t queue_bytes_max;      /* their bytes (data + 12 per record); default 32 MiB.
                                      Memory: at most about 5x this (four queue buffers + the
                                      encode buffer), allocated as load requires */
    uint32_t batch_bytes_max;      /* raw payload of one batch; default 256 KiB, [4 KiB, 32 MiB] */
    uint32_t record_bytes_max;     /* one record's data; default 128 KiB,
                                      <= batch_bytes_max - 12 and <= queue_bytes_max - 12 */
    uint64_t retention_age_ms;     /* delete closed segments whose newest record is older;
                                      0 (default) = keep */
    uint64_t retention_bytes;      /* delete oldest closed segments while the log is larger;
                                      0 (default) = no limit */
    uint32_t index_interval_bytes; /* one index entry per this many log bytes; default 16 KiB,
                                      [1 KiB, 16 MiB] */
    int compress;                  /* 1 (default): LZ4 per batch when it helps; 0: store raw */
    uint32_t compress_threads;     /* helper threads that LZ4 a group's batches in parallel
                                      with the writer thread; default 1, [0, 4] */
    uint32_t direct_min_bytes;     /* a write of a group (or of an 8 MiB chunk of one) at least
                                      this large sends its 4 KiB-aligned middle through an
                                      O_DIRECT descriptor: no copy into the page cache; default
                                      512 KiB, 0 = never; below 8 KiB it acts as 8 KiB */
    enum seglog_verify verify;     /* default SEGLOG_VERIFY_ALL */
    int repair;                    /* quarantine bad closed segments instead of failing */
    int read_only;                 /* no writer: readers only, a snapshot of what is valid at
                                      open; nothing on disk is changed (offline tools) */
    const struct fsio *fs;         /* NULL: the real file system */
};

/* Fills o with the defaults above (dir NULL: the caller must set it). Any thread. */
void seglog_options_default(struct seglog_options *o);

#define SEGLOG_LOST_RANGES_MAX 16

/* What open found and did. Filled by seglog_open when given (caller-owned memory). */
struct seglog_open_report {
    char message[512];             /* failure: why (also sent to diag); success: summary of any
                                      repair/truncation, "" when nothing happened */
    uint64_t torn_bytes;           /* bytes truncated from the active segment's tail */
    uint32_t indexes_rebuilt;      /* .idx files missing or damaged, rebuilt from the data */
    uint32_t segments_quarantined; /* moved to <dir>/quarantine/ (repair) */
    uint32_t lost_range_count;     /* entries used in lost[] */
    struct {
        uint64_t first, end; /* offsets [first, end) no longer in the log */
    } lost[SEGLOG_LOST_RANGES_MAX];
    uint64_t lost_records; /* total over all lost ranges (also those beyond lost[]) */
    uint64_t start_offset; /* first offset in the log after open */
    uint64_t end_offset;   /* next offset to be written */
};

/*
 * Opens (creating if needed) the log in opt->dir and starts the writer thread (none when
 * read_only). *out is owned by the caller until seglog_close(). opt is copied (dir too); opt->fs
 * must outlive the log. Call from any thread; the log's functions are then usable from any
 * thread as documented on each.
 *
 * Recovery: segments are checked in offset order (segment.h validity rule).
 * - Active (last) segment: validated from its checkpoint (the index written at the last clean
 *   close or roll, if it fits the data; else its start). Everything from the first invalid batch
 *   on is a torn tail: truncated, with a diag_warn naming the file and the bytes dropped.
 * - A closed segment with an invalid batch, a gap or overlap in offsets between segments:
 *   TALLY_ECORRUPT with report->message, unless opt->repair: then each bad closed segment (and
 *   its index) is moved to <dir>/quarantine/ and the offsets no longer available are listed in
 *   report->lost (and in diag). An overlap is refused even with repair. The log keeps the hole:
 *   readers skip from the end of one segment to the start of the next.
 * - Missing or damaged indexes are rebuilt from the data (closed segments: written back).
 * - Offsets continue after the highest valid one.
 * Errors: TALLY_EINVAL (options), TALLY_ECORRUPT, TALLY_ENOENT (read_only and no log),
 * TALLY_EIO/ENOSPC/ENOMEM.
 */
int seglog_open(const struct seglog_options *opt, struct seglog **out,
                struct seglog_open_report *report);

/* Stops accepting appends (TALLY_ECLOSED), lets the writer drain the queue (every pending append
 * completes, durably per policy; interval: a final fdatasync), writes the active segment's
 * index, stops the thread, closes the files, frees the log. Readers must be closed first; no
 * other call may be running or made on this log (seglog_wait returns TALLY_ECLOSED as soon as
 * close starts, so consumer threads can leave). NULL is a no-op. Not from a done callback. */
void seglog_close(struct seglog *log);

/* One record to append: data is copied during seglog_append (the caller keeps ownership). */
struct seglog_rec {
    const void *data;
    uint32_t len; /* 0 allowed; <= record_bytes_max */
    int64_t ts_ms;
};

/* Called once per successful seglog_append, on the log's completion thread (the top of this file).
 * err is 0 (records [first_offset, first_offset + n) are committed) or a TALLY_E* code (they
 * were not; they may or may not survive in the log). */
typedef void (*seglog_done_fn)(void *arg, int err, uint64_t first_offset);

/*
 * Queues n >= 1 records as one unit (they get consecutive offsets and one completion). Any thread;
 * never blocks on I/O (holds the queue mutex for a memcpy). Returns 0: queued, done(arg, ...)
 * will be called exactly once later. Returns an error: not queued, done is never called:
 *   TALLY_EFULL (queue bounds reached: retry later / answer 429-503), TALLY_ETOOBIG (a record
 *   over record_bytes_max, or the append could never fit the queue bounds), TALLY_EINVAL,
 *   TALLY_ECLOSED (closing or read-only), or the poison error (TALLY_EIO, TALLY_ENOSPC, ...).
 */
int seglog_append(struct seglog *log, const struct seglog_rec *recs, uint32_t n,
                  seglog_done_fn done, void *arg);

/* 0 when healthy, else the error that poisoned the writer (the first cause). Any thread. */
int seglog_poisoned_err(struct seglog *log);

/*
 * Recovers from poison without a restart (e.g. after a disk-full, once space is back). Blocks
 * the calling thread (not the writer thread, not a callback) while the writer thread:
 *   1. removes every segment file created after the committed position and truncates the
 *      segment holding it to exactly the committed position: no byte of a failed append
 *      remains and no offset that a reader may have seen is reused;
 *   2. re-reads and checksums the batches at the end of that segment up to the committed
 *      position (from its last index entry), so the tail it will append to is sound;
 *   3. fdatasyncs that segment and fsyncs the directory (unless policy none): everything
 *      committed is durable again (under interval this also closes the loss window);
 *   4. clears the poison: appends are accepted again, offsets continue at the committed end.
 * Returns 0 when the log is healthy (or was not poisoned); otherwise the error of the failed
 * step, and the log stays poisoned with its original cause. Appends that failed are never
 * replayed: producers retry them.
 */
int seglog_reset_poison(struct seglog *log);

/* First offset still in the log (grows with retention). Any thread. */
uint64_t seglog_start_offset(struct seglog *log);

/* End of committed records: readers see offsets < this. Any thread, lock-free. */
uint64_t seglog_committed_offset(struct seglog *log);

/* Blocks the calling thread until the committed offset is > offset (record `offset` readable),
 * or timeout_ms passes (< 0: no timeout). 0, TALLY_EAGAIN (timeout), TALLY_ECLOSED (closing).
 * For consumer threads; never from an event loop or a callback. */
int seglog_wait(struct seglog *log, uint64_t offset, int timeout_ms);

/* One record returned by a reader; data is owned by the reader and valid until its next call. */
struct seglog_record {
    uint64_t offset;
    int64_t ts_ms;
    const void *data;
    uint32_t len;
};

/* Opens a reader positioned at from_offset (start_offset <= from_offset <= committed).
 * *out is owned by the caller until seglog_reader_close (before seglog_close). Any thread; a
 * reader is used by one thread at a time. TALLY_ERANGE when from_offset is outside that range
 * (e.g. deleted by retention: reopen at seglog_start_offset()). */
int seglog_reader_open(struct seglog *log, uint64_t from_offset, struct seglog_reader **out);

/* Next record: 0 and *rec filled; TALLY_EAGAIN at the committed end (poll or seglog_wait);
 * TALLY_ERANGE when the reader's position was deleted by retention (it was not registered, or
 * went behind its registered offset); TALLY_ECORRUPT when a batch fails validation (the reader
 * stays before it); TALLY_EIO/ENOMEM. Reads run concurrently with the writer. */
int seglog_reader_next(struct seglog_reader *r, struct seglog_record *rec);

/* Offset of the record the next seglog_reader_next would return. */
uint64_t seglog_reader_position(const struct seglog_reader *r);

/* Closes the reader and its file; NULL is a no-op. */
void seglog_reader_close(struct seglog_reader *r);

#define SEGLOG_CONSUMERS_MAX 32
#define SEGLOG_CONSUMER_NAME_MAX 63

/* Registers a consumer whose cursor is at offset (the next offset it needs). Returns its id
 * (>= 0) or TALLY_EFULL (SEGLOG_CONSUMERS_MAX) / TALLY_EINVAL (name empty or too long).
 * Registering a name again returns the same id and sets its offset. Registrations live in
 * memory: register again after each open, before running retention. Any thread. */
int seglog_consumer_register(struct seglog *log, const char *name, uint64_t offset);

/* Moves a consumer's cursor: it no longer needs offsets < offset. Any value is accepted
 * (moving back for a rebuild is fine while the data is there). 0 or TALLY_ENOENT. Any thread. */
int seglog_consumer_advance(struct seglog *log, int id, uint64_t offset);

/* Forgets a consumer. 0 or TALLY_ENOENT. Any thread. */
int seglog_consumer_unregister(struct seglog *log, int id);

struct seglog_retention_result {
    uint32_t segments_deleted;
    uint64_t bytes_deleted;
    uint64_t records_deleted;
    uint64_t start_offset;   /* first offset in the log afterwards */
    int blocked_by_consumer; /* 1 when a segment due for deletion was kept for a consumer */
};

/*
 * Applies retention_age_ms and retention_bytes (from the options) at time now_ms (wall clock,
 * same clock as the records' ts_ms): deletes whole CLOSED segments, oldest first, while the oldest
 * one is due (its newest record older than now_ms - retention_age_ms, or the log larger than
 * retention_bytes) and every registered consumer has passed all of its offsets. Never the active
 * segment (nor one the writer may need back). Stops at the first segment it must keep, so the log
 * stays contiguous. Any thread except a done callback (the server calls it from a timer; it does
 * file I/O). res may be NULL. 0 or TALLY_E* (read-only: TALLY_ECLOSED).
 */
int seglog_retention_run(struct seglog *log, int64_t now_ms, struct seglog_retention_result *res);

/* fdatasync latency histogram: bucket i counts syncs <= seglog_fsync_bucket_us[i] (and above the
 * previous bound); the last bucket counts the rest (+Inf). */
#define SEGLOG_FSYNC_BUCKETS 14
extern const uint32_t seglog_fsync_bucket_us[SEGLOG_FSYNC_BUCKETS - 1];

struct seglog_stats {
    uint64_t start_offset;     /* first offset in the log */
    uint64_t end_offset;       /* next offset to be written (written + not yet completed) */
    uint64_t committed_offset; /* readers see below this */
    uint64_t durable_offset;   /* fdatasync'ed below this */
    uint64_t bytes_on_disk;    /* segment bytes */
    uint32_t segment_count;
    uint64_t queue_records; /* waiting or being written */
    uint64_t queue_bytes;
    uint64_t queue_capacity_bytes;     /* memory held by the queue buffers (seglog.c: Bounds) */
    uint64_t queue_capacity_max_bytes; /* its limit: 4 x the queue bounds' worth + minimums */
    uint64_t appends_total;         /* accepted by seglog_append */
    uint64_t appends_rejected_full; /* TALLY_EFULL answers */
    uint64_t records_written;
    uint64_t batches_written;
    uint64_t bytes_written;     /* encoded batch bytes */
    uint64_t raw_bytes_written; /* the same batches before compression */
    uint64_t direct_bytes_written; /* of bytes_written, those written with O_DIRECT */
    uint64_t fsync_count;
    uint64_t fsync_hist[SEGLOG_FSYNC_BUCKETS];
    uint64_t fsync_sum_us;
    int poisoned;     /* 1 when poisoned */
    int poisoned_err; /* its cause */
};

/* Snapshot of the counters (each read atomically, not all at one instant). Any thread. */
void seglog_stats(struct seglog *log, struct seglog_stats *st);

#endif
