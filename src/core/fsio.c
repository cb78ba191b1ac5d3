/* fsio: the real implementation (POSIX calls, EINTR retried, -errno returned) and helpers. */
#include "core/fsio.h"

#include "tally/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int real_open(void *ctx, const char *path, int flags, unsigned mode)
{
    (void)ctx;
    int fd;
    do
        fd = open(path, flags | O_CLOEXEC, (mode_t)mode);
    while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

static int real_close(void *ctx, int fd)
{
    (void)ctx;
    /* close() is not retried on EINTR: on Linux the descriptor is gone either way. */
    return close(fd) == 0 ? 0 : -errno;
}

static ssize_t real_pwrite(void *ctx, int fd, const void *buf, size_t n, uint64_t off)
{
    (void)ctx;
    ssize_t r;
    do
        r = pwrite(fd, buf, n, (off_t)off);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

static ssize_t real_pread(void *ctx, int fd, void *buf, size_t n, uint64_t off)
{
    (void)ctx;
    ssize_t r;
    do
        r = pread(fd, buf, n, (off_t)off);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

static int real_fdatasync(void *ctx, int fd)
{
    (void)ctx;
    int r;
    do
        r = fdatasync(fd);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

static int real_ftruncate(void *ctx, int fd, uint64_t len)
{
    (void)ctx;
    int r;
    do
        r = ftruncate(fd, (off_t)len);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

static int real_fstat(void *ctx, int fd, struct stat *st)
{
    (void)ctx;
    return fstat(fd, st) == 0 ? 0 : -errno;
}

static int real_rename(void *ctx, const char *from, const char *to)
{
    (void)ctx;
    return rename(from, to) == 0 ? 0 : -errno;
}

static int real_unlink(void *ctx, const char *path)
{
    (void)ctx;
    return unlink(path) == 0 ? 0 : -errno;
}

static int real_mkdir(void *ctx, const char *path, unsigned mode)
{
    (void)ctx;
    return mkdir(path, (mode_t)mode) == 0 ? 0 : -errno;
}

static int real_fsync_dir(void *ctx, const char *path)
{
    (void)ctx;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r;
    do
        r = fsync(fd);
    while (r < 0 && errno == EINTR);
    int err = r < 0 ? -errno : 0;
    close(fd);
    return err;
}

static int real_list_dir(void *ctx, const char *path, int (*each)(void *arg, const char *name),
                         void *arg)
{
    (void)ctx;
    DIR *d = opendir(path);
    if (!d) return -errno;
    int r = 0;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno) r = -errno;
            break;
        }
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        r = each(arg, e->d_name);
        if (r) break;
    }
    closedir(d);
    return r;
}

static const struct fsio real_fs = {
    .ctx = NULL,
    .open = real_open,
    .close = real_close,
    .pwrite = real_pwrite,
    .pread = real_pread,
    .fdatasync = real_fdatasync,
    .ftruncate = real_ftruncate,
    .fstat = real_fstat,
    .rename = real_rename,
    .unlink = real_unlink,
    .mkdir = real_mkdir,
    .fsync_dir = real_fsync_dir,
    .list_dir = real_list_dir,
};

const struct fsio *fsio_real(void)
{
    return &real_fs;
}

const struct fsio *fsio_or_real(const struct fsio *fs)
{
    return fs ? fs : &real_fs;
}

int fsio_write_all(const struct fsio *fs, int fd, const void *buf, size_t n, uint64_t off)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = fs->pwrite(fs->ctx, fd, p, n, off);
        if (w < 0) return tally_err_from_errno((int)-w);
        if (w == 0) return TALLY_EIO; /* no progress: never loop forever */
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return TALLY_OK;
}

int fsio_read_full(const struct fsio *fs, int fd, void *buf, size_t n, uint64_t off, size_t *got)
{
    unsigned char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t r = fs->pread(fs->ctx, fd, p + done, n - done, off + done);
        if (r < 0) {
            *got = done;
            return tally_err_from_errno((int)-r);
        }
        if (r == 0) break;
        done += (size_t)r;
    }
    *got = done;
    return TALLY_OK;
}

int fsio_file_size(const struct fsio *fs, int fd, uint64_t *size)
{
    struct stat st;
    int r = fs->fstat(fs->ctx, fd, &st);
    if (r < 0) return tally_err_from_errno(-r);
    *size = (uint64_t)st.st_size;
    return TALLY_OK;
}
