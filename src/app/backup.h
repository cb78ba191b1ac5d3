/*
 * backup: online backups of a serving data directory, and their restore.
 *
 * A backup is a directory:
 *   store/          a RocksDB checkpoint (store_checkpoint): every column family at one instant
 *   log/            the log's segments up to the snapshot offset: closed segments hard-linked
 *                   (copied across file systems), the segment holding the snapshot offset copied
 *                   batch by batch up to it, so it ends exactly at a batch boundary
 *   salts, keys...  the data directory's top-level files (not LOCK)
 *   MANIFEST.json   written last (fsync'ed, then the directory): a backup without it is
 *                   incomplete and restore refuses it.
 *                   {"format": "tally-backup", "version": 1, "tally_version", "created_ms",
 *                    "created", "log_start_offset", "log_end_offset", "segments", "bytes"}
 *
 * CONSISTENCY. The checkpoint is taken first, then the committed log offset C is read, then the
 * log is copied up to C. Each consumer writes its output and its cursor in one RocksDB batch,
 * so the checkpoint holds outputs matching its cursors, and those cursors are <= C (consumers
 * only read committed records). A server started on the restored copy resumes its consumers
 * from those cursors and catches up to C: nothing is counted twice, nothing acknowledged before
 * C is missing, and every answer equals what a rebuild of the log copy gives. Log retention
 * must not run during a backup (it could delete a segment between the checkpoint's cursor
 * and C): the server holds its retention lock around backup_run.
 *
 * Threads: backup_run on any thread while the server serves (it only reads the log's files and
 * calls store_checkpoint); backup_restore offline, with no server on the target.
 */
#ifndef TALLY_BACKUP_H
#define TALLY_BACKUP_H

#include <stddef.h>
#include <stdint.h>

struct seglog;
struct store;

struct backup_result {
    uint64_t log_start_offset; /* first offset in the copied log */
    uint64_t log_end_offset;   /* the snapshot offset C: every record before it is copied */
    uint32_t segments;         /* segment files in the backup */
    uint64_t bytes;            /* bytes copied (hard links count nothing) */
    int64_t created_ms;
    double elapsed_s;
    char message[512];         /* failure: what and where */
};

/*
 * Backs up the serving data directory `data_dir` (its log is `log`, its store `s`) into `dest`,
 * an absolute path that must not exist or be an empty directory (its parent must exist).
 * 0 with *out filled, or a TALLY_E* code with out->message. On failure `dest` may hold a
 * partial backup without MANIFEST.json.
 */
int backup_run(struct store *s, struct seglog *log, const char *data_dir, const char *dest,
               struct backup_result *out);

/*
 * Copies the backup in `src` (MANIFEST.json required) into `data_dir`, which must be absent or
 * empty, then opens the restored log to check it ends at the manifest's offset. Prints a
 * summary on stdout. Returns the exit code (0, 1 runtime error, 2 usage).
 */
int backup_restore(const char *src, const char *data_dir);

/*
 * `tally backup DIR --url URL --key KEY`: asks the server at URL (http://HOST:PORT) to back up
 * into DIR (made absolute here) through POST /api/v1/admin/backup with the admin key. Prints
 * the server's answer. Returns the exit code.
 */
int backup_cli(const char *dir, const char *url, const char *key);

#endif
