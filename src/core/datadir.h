/*
 * datadir: the data directory and its lock.
 *
 * Layout under data_dir:
 *   LOCK       flock(2)-ed exclusively by the one process using the directory; holds its PID
 *   log/       the segmented event log (seglog)
 *   store/     RocksDB (raw events, rollups, sessions, dictionaries, metadata)
 *   salts      visitor-hash salts (privacy)
 *
 * The lock is advisory but every Tally entry point (server, --rebuild, --check, --repair) takes
 * it, so two processes never share one data directory. The kernel drops it when the process
 * dies, so a crash never leaves a stale lock behind.
 */
#ifndef TALLY_DATADIR_H
#define TALLY_DATADIR_H

#include <stdint.h>
#include <sys/types.h>

struct datadir;

/*
 * Creates the directory (and parents) if missing and takes the lock. On TALLY_ELOCKED, *holder_pid
 * is the PID written by the holder (0 when unknown). Caller owns *out (datadir_close).
 */
int datadir_open(const char *path, struct datadir **out, pid_t *holder_pid);

/*
 * datadir_open, but while another process holds the lock, retries every few milliseconds for up
 * to timeout_ms (then TALLY_ELOCKED with *holder_pid). For the new process of a binary upgrade,
 * which waits for the old one to close its stores (upgrade.h). Caller thread only.
 */
int datadir_open_wait(const char *path, struct datadir **out, pid_t *holder_pid,
                      uint32_t timeout_ms);

/* Releases the lock. NULL is a no-op. */
void datadir_close(struct datadir *dd);

/* The directory path (owned by dd) and a sub-path joined into buf. */
const char *datadir_path(const struct datadir *dd);
int datadir_join(const struct datadir *dd, const char *name, char *buf, size_t buf_bytes);

/* Whether another process holds the lock at `path` (0 no, 1 yes with *holder_pid). */
int datadir_is_locked(const char *path, pid_t *holder_pid);

#endif
