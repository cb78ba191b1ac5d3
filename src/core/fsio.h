/*
 * fsio: the file-system calls of Tally's storage code, through a table of function pointers so
 * that tests can inject faults (see core/fsio_fault.h) without touching the code under test.
 *
 * Conventions of the table (every implementation keeps them):
 * - Functions return 0 (or a byte count / a descriptor >= 0) on success and -errno on failure,
 *   so the original cause (ENOSPC, EIO, ...) survives to the caller. EINTR is retried inside.
 * - pwrite may be short (fewer bytes than asked, still > 0); callers use fsio_write_all().
 * - fdatasync makes the file's data durable; fsync_dir makes the directory entries durable
 *   (a newly created, renamed or unlinked name survives a power cut only after fsync_dir).
 * - list_dir calls each(arg, name) for every entry except "." and ".."; a non-zero return from
 *   each stops the listing and is returned.
 * - Any thread may call any function concurrently, as with the system calls themselves.
 *
 * The helpers below convert to TALLY_E* codes (tally_err_from_errno).
 */
#ifndef TALLY_FSIO_H
#define TALLY_FSIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

struct fsio {
    void *ctx; /* owned by whoever built the table; passed to every call */
    int (*open)(void *ctx, const char *path, int flags, unsigned mode);
    int (*close)(void *ctx, int fd);
    ssize_t (*pwrite)(void *ctx, int fd, const void *buf, size_t n, uint64_t off);
    ssize_t (*pread)(void *ctx, int fd, void *buf, size_t n, uint64_t off);
    int (*fdatasync)(void *ctx, int fd);
    int (*ftruncate)(void *ctx, int fd, uint64_t len);
    int (*fstat)(void *ctx, int fd, struct stat *st);
    int (*rename)(void *ctx, const char *from, const char *to);
    int (*unlink)(void *ctx, const char *path);
    int (*mkdir)(void *ctx, const char *path, unsigned mode);
    int (*fsync_dir)(void *ctx, const char *path);
    int (*list_dir)(void *ctx, const char *path, int (*each)(void *arg, const char *name),
                    void *arg);
};

/* The real implementation (plain POSIX calls). Static table, never freed; any thread. */
const struct fsio *fsio_real(void);

/* fs itself, or fsio_real() when fs is NULL. */
const struct fsio *fsio_or_real(const struct fsio *fs);

/* Writes all n bytes at off, looping over short writes. 0 or TALLY_E* (ENOSPC kept as such).
 * On failure some prefix of the bytes may have been written. */
int fsio_write_all(const struct fsio *fs, int fd, const void *buf, size_t n, uint64_t off);

/* Reads up to n bytes at off, looping until n bytes or end of file; *got = bytes read.
 * 0 or TALLY_E*. */
int fsio_read_full(const struct fsio *fs, int fd, void *buf, size_t n, uint64_t off, size_t *got);

/* Size of an open file in bytes. 0 or TALLY_E*. */
int fsio_file_size(const struct fsio *fs, int fd, uint64_t *size);

#endif
