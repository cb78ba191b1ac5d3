/*
 * fsio_fault: an fsio table that forwards to another one (normally the real file system) and
 * injects faults, for tests. It models what a crash can do to files:
 *
 * - Per file (by path) it tracks the synced length: the file size at its last successful
 *   fdatasync. A file that existed before the layer first opened it counts as synced as it is.
 * - A newly created or renamed name is "durable" only after fsync_dir on its parent directory
 *   (the parent is the path up to the last '/', spelled as the caller spelled it).
 * - fsio_fault_power_cut() simulates losing power: every tracked file is truncated back to its
 *   synced length (or, in FSIO_FAULT_CUT_KEEP_PREFIX mode, keeps a random prefix of its
 *   unsynced bytes, as a disk may have written some of them back), every non-durable name is
 *   removed, every open descriptor becomes dead (all calls on it fail with EIO, close only
 *   releases it), and every call fails with EIO until fsio_fault_restart(). The code under test
 *   simply stops using its handles, as after a crash.
 * - fsio_fault_power_cut_at_write() makes the power fail in the middle of a later pwrite.
 * - Limits of the model: a truncation or an overwrite inside the synced length is assumed to
 *   reach the disk at once, and unlink is immediate. Directories are not tracked.
 *
 * Injected faults: short writes (a random prefix is written, at least one byte), ENOSPC once a
 * byte budget is used up (the write that crosses it is short, the next fails), fdatasync failing
 * with a chosen errno after N successes (the data then stays unsynced, like Linux after a
 * failed writeback).
 *
 * Threads: every function may be called from any thread; the layer serialises its calls with one
 * mutex (tests only: speed is not a goal). fsio_fault_free() must come after every user of the
 * table is gone.
 */
#ifndef TALLY_FSIO_FAULT_H
#define TALLY_FSIO_FAULT_H

#include "core/fsio.h"

#include <stdint.h>

struct fsio_fault;

/* New layer over base (NULL: the real file system); seed drives the random choices.
 * Returns NULL when out of memory. The caller owns it and frees it with fsio_fault_free(). */
struct fsio_fault *fsio_fault_new(const struct fsio *base, uint64_t seed);
void fsio_fault_free(struct fsio_fault *f);

/* The table to hand to the code under test; valid until fsio_fault_free(). */
const struct fsio *fsio_fault_fs(struct fsio_fault *f);

/* Every pwrite is short with probability percent/100 (0 turns it off). */
void fsio_fault_short_writes(struct fsio_fault *f, int percent);

/* After bytes more bytes have been written, writes fail with ENOSPC (-1: unlimited, the default;
 * calling it again resets the budget, e.g. "space came back"). */
void fsio_fault_space_limit(struct fsio_fault *f, int64_t bytes);

/* After `after` more successful fdatasync/fsync_dir calls, the next `count` ones fail with
 * errnum (e.g. EIO) and sync nothing. */
void fsio_fault_fsync_fail(struct fsio_fault *f, uint32_t after, uint32_t count, int errnum);

/* When on, fdatasync and fsync_dir only update the model and skip the real call (fast tests;
 * the model, not the disk, then defines durability). Off by default. */
void fsio_fault_skip_real_sync(struct fsio_fault *f, int on);

/* Each pwrite (after its effect) then takes us more microseconds, slept outside the layer's
 * lock: a slow disk, so that a test can act while a write is in progress. 0: off (default). */
void fsio_fault_write_delay_us(struct fsio_fault *f, uint32_t us);

enum fsio_fault_cut_mode {
    FSIO_FAULT_CUT_DROP_UNSYNCED = 0, /* default: files go back to their synced length */
    FSIO_FAULT_CUT_KEEP_PREFIX = 1,   /* a random prefix of the unsynced bytes survives */
};
void fsio_fault_cut_mode(struct fsio_fault *f, enum fsio_fault_cut_mode mode);

/* Simulated power cut, see above. */
void fsio_fault_power_cut(struct fsio_fault *f);

/* The power fails during the n-th pwrite from now (n >= 1): a random prefix of that write
 * reaches the file, then the power cut happens and the call fails with EIO. 0 disarms. */
void fsio_fault_power_cut_at_write(struct fsio_fault *f, uint64_t n);

/* After a power cut: the machine "boots" again, calls work, files on disk count as synced. */
void fsio_fault_restart(struct fsio_fault *f);

struct fsio_fault_stats {
    uint64_t bytes_written;
    uint64_t writes;
    uint64_t short_writes;
    uint64_t enospc_errors;
    uint64_t syncs;
    uint64_t sync_errors;
    uint64_t bytes_dropped_by_cut; /* unsynced bytes removed by power cuts */
    uint64_t names_dropped_by_cut; /* non-durable names removed by power cuts */
};
void fsio_fault_get_stats(struct fsio_fault *f, struct fsio_fault_stats *st);

#endif
