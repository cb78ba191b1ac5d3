/*
 * fsio_fault: fault-injecting fsio for tests (model described in fsio_fault.h).
 *
 * Bookkeeping: a list of tracked files (path, synced length, durable-name flag, generation) and a
 * table indexed by descriptor that points at the tracked file and says whether the descriptor died
 * in a power cut. Entries are never freed before fsio_fault_free(); a power cut + restart starts a
 * new generation and lookups only match the current one.
 */
#include "core/fsio_fault.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct ff_file {
    char *path;
    uint64_t synced_len;
    int durable;  /* the name survives a power cut */
    int unlinked; /* no longer reachable by path */
    uint32_t gen;
};

struct ff_fd {
    struct ff_file *file; /* NULL: slot unused */
    int dead;
};

struct fsio_fault {
    struct fsio fs;
    const struct fsio *base;
    pthread_mutex_t mu;
    uint64_t rng;
    uint32_t gen;
    int down; /* between power_cut and restart */
    int short_percent;
    int64_t space_left; /* -1: unlimited */
    uint32_t sync_ok_left;
    uint32_t sync_fail_left;
    int sync_errnum;
    int skip_real_sync;
    uint32_t write_delay_us;
    int cut_mode;
    uint64_t cut_at_write; /* 0: off; else writes left until the power fails */
    struct ff_file **files;
    size_t nfiles, capfiles;
    struct ff_fd *fds;
    size_t capfds;
    struct fsio_fault_stats st;
};

static uint64_t ff_rand(struct fsio_fault *f)
{
    /* splitmix64: small, seeded, good enough for picking faults. */
    uint64_t z = (f->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void ff_cut_locked(struct fsio_fault *f);

static struct ff_file *ff_find(struct fsio_fault *f, const char *path)
{
    for (size_t i = 0; i < f->nfiles; i++) {
        struct ff_file *e = f->files[i];
        if (e->gen == f->gen && !e->unlinked && strcmp(e->path, path) == 0) return e;
    }
    return NULL;
}

static struct ff_file *ff_add(struct fsio_fault *f, const char *path, uint64_t synced, int durable)
{
    if (f->nfiles == f->capfiles) {
        size_t cap = f->capfiles ? f->capfiles * 2 : 16;
        struct ff_file **n = realloc(f->files, cap * sizeof *n);
        if (!n) return NULL;
        f->files = n;
        f->capfiles = cap;
    }
    struct ff_file *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->path = strdup(path);
    if (!e->path) {
        free(e);
        return NULL;
    }
    e->synced_len = synced;
    e->durable = durable;
    e->gen = f->gen;
    f->files[f->nfiles++] = e;
    return e;
}

static struct ff_fd *ff_slot(struct fsio_fault *f, int fd)
{
    if (fd < 0 || (size_t)fd >= f->capfds || !f->fds[fd].file) return NULL;
    return &f->fds[fd];
}

static int ff_parent_is(const char *path, const char *dir)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return strcmp(dir, ".") == 0;
    size_t n = (size_t)(slash - path);
    return strlen(dir) == n && memcmp(path, dir, n) == 0;
}

static int ff_open(void *ctx, const char *path, int flags, unsigned mode)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int r = -EIO;
    if (f->down) goto out;
    struct stat st;
    int existed = stat(path, &st) == 0;
    /* The model has no page cache, so O_DIRECT means nothing to it; and an injected short
     * write of a random length would be refused by a real O_DIRECT descriptor. */
    r = f->base->open(f->base->ctx, path, flags & ~O_DIRECT, mode);
    if (r < 0) goto out;
    struct ff_file *e = ff_find(f, path);
    if (!e) {
        /* A file found on disk counts as synced as it is; a file we create starts empty. */
        uint64_t len = 0;
        if (existed && !(flags & O_TRUNC)) len = (uint64_t)st.st_size;
        e = ff_add(f, path, len, existed);
    } else if (flags & O_TRUNC) {
        e->synced_len = 0;
    }
    if (!e) goto nomem;
    if ((size_t)r >= f->capfds) {
        size_t cap = (size_t)r + 64;
        struct ff_fd *n = realloc(f->fds, cap * sizeof *n);
        if (!n) goto nomem;
        memset(n + f->capfds, 0, (cap - f->capfds) * sizeof *n);
        f->fds = n;
        f->capfds = cap;
    }
    f->fds[r].file = e;
    f->fds[r].dead = 0;
    goto out;
nomem:
    f->base->close(f->base->ctx, r);
    r = -ENOMEM;
out:
    pthread_mutex_unlock(&f->mu);
    return r;
}

static int ff_close(void *ctx, int fd)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    struct ff_fd *s = ff_slot(f, fd);
    if (s) s->file = NULL;
    int r = f->base->close(f->base->ctx, fd);
    pthread_mutex_unlock(&f->mu);
    return r;
}

/* Returns NULL and sets *err when the descriptor may not be used now. */
static struct ff_fd *ff_usable(struct fsio_fault *f, int fd, int *err)
{
    struct ff_fd *s = ff_slot(f, fd);
    if (f->down || (s && s->dead)) {
        *err = -EIO;
        return NULL;
    }
    *err = 0;
    return s;
}

static ssize_t ff_pwrite(void *ctx, int fd, const void *buf, size_t n, uint64_t off)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int err;
    ssize_t r;
    ff_usable(f, fd, &err);
    if (err) {
        r = err;
        goto out;
    }
    size_t want = n;
    if (f->space_left >= 0) {
        if (f->space_left == 0 && n > 0) {
            f->st.enospc_errors++;
            r = -ENOSPC;
            goto out;
        }
        if ((uint64_t)f->space_left < want) want = (size_t)f->space_left;
    }
    if (want > 1 && f->short_percent > 0 && (int)(ff_rand(f) % 100) < f->short_percent) {
        want = 1 + (size_t)(ff_rand(f) % (want - 1));
        f->st.short_writes++;
    }
    int cut_now = f->cut_at_write > 0 && --f->cut_at_write == 0;
    if (cut_now) want = (size_t)(ff_rand(f) % (want + 1));
    r = want ? f->base->pwrite(f->base->ctx, fd, buf, want, off) : 0;
    if (cut_now) {
        ff_cut_locked(f);
        r = -EIO;
        goto out;
    }
    if (r > 0) {
        f->st.bytes_written += (uint64_t)r;
        f->st.writes++;
        if (f->space_left >= 0) f->space_left -= r;
    }
out:;
    uint32_t delay_us = f->write_delay_us;
    pthread_mutex_unlock(&f->mu);
    if (delay_us) usleep(delay_us);
    return r;
}

static ssize_t ff_pread(void *ctx, int fd, void *buf, size_t n, uint64_t off)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int err;
    ff_usable(f, fd, &err);
    ssize_t r = err ? err : f->base->pread(f->base->ctx, fd, buf, n, off);
    pthread_mutex_unlock(&f->mu);
    return r;
}

/* Decides whether this sync call fails; 0 or -errno. */
static int ff_sync_verdict(struct fsio_fault *f)
{
    f->st.syncs++;
    if (f->sync_ok_left > 0) {
        f->sync_ok_left--;
        return 0;
    }
    if (f->sync_fail_left > 0) {
        f->sync_fail_left--;
        f->st.sync_errors++;
        return -f->sync_errnum;
    }
    return 0;
}

static int ff_fdatasync(void *ctx, int fd)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int r;
    struct ff_fd *s = ff_usable(f, fd, &r);
    if (r) goto out;
    r = ff_sync_verdict(f);
    if (r) goto out;
    if (!f->skip_real_sync) r = f->base->fdatasync(f->base->ctx, fd);
    if (r == 0 && s) {
        struct stat st;
        r = f->base->fstat(f->base->ctx, fd, &st);
        if (r == 0) s->file->synced_len = (uint64_t)st.st_size;
    }
out:
    pthread_mutex_unlock(&f->mu);
    return r;
}

static int ff_ftruncate(void *ctx, int fd, uint64_t len)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int r;
    struct ff_fd *s = ff_usable(f, fd, &r);
    if (r) goto out;
    r = f->base->ftruncate(f->base->ctx, fd, len);
    if (r == 0 && s && len < s->file->synced_len) s->file->synced_len = len;
out:
    pthread_mutex_unlock(&f->mu);
    return r;
}

static int ff_fstat(void *ctx, int fd, struct stat *st)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int r;
    ff_usable(f, fd, &r);
    if (!r) r = f->base->fstat(f->base->ctx, fd, st);
    pthread_mutex_unlock(&f->mu);
    return r;
}

static int ff_rename(void *ctx, const char *from, const char *to)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int r = -EIO;
    if (f->down) goto out;
    r = f->base->rename(f->base->ctx, from, to);
    if (r) goto out;
    struct ff_file *old = ff_find(f, to);
    if (old) old->unlinked = 1;
    struct ff_file *e = ff_find(f, from);
    if (e) {
        char *p = strdup(to);
        if (!p) {
            r = -ENOMEM;
            goto out;
        }
        free(e->path);
        e->path = p;
        e->durable = 0;
    } else {
        struct stat st;
        uint64_t len = stat(to, &st) == 0 ? (uint64_t)st.st_size : 0;
        if (!ff_add(f, to, len, 0)) r = -ENOMEM;
    }
out:
    pthread_mutex_unlock(&f->mu);
    return r;
}

static int ff_unlink(void *ctx, const char *path)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int r = -EIO;
    if (f->down) goto out;
    r = f->base->unlink(f->base->ctx, path);
    if (r == 0) {
        struct ff_file *e = ff_find(f, path);
        if (e) e->unlinked = 1;
    }
out:
    pthread_mutex_unlock(&f->mu);
    return r;
}

static int ff_mkdir(void *ctx, const char *path, unsigned mode)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int r = f->down ? -EIO : f->base->mkdir(f->base->ctx, path, mode);
    pthread_mutex_unlock(&f->mu);
    return r;
}

static int ff_fsync_dir(void *ctx, const char *path)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int r = -EIO;
    if (f->down) goto out;
    r = ff_sync_verdict(f);
    if (r) goto out;
    if (!f->skip_real_sync) r = f->base->fsync_dir(f->base->ctx, path);
    if (r) goto out;
    for (size_t i = 0; i < f->nfiles; i++) {
        struct ff_file *e = f->files[i];
        if (e->gen == f->gen && !e->unlinked && ff_parent_is(e->path, path)) e->durable = 1;
    }
out:
    pthread_mutex_unlock(&f->mu);
    return r;
}

static int ff_list_dir(void *ctx, const char *path, int (*each)(void *arg, const char *name),
                       void *arg)
{
    struct fsio_fault *f = ctx;
    pthread_mutex_lock(&f->mu);
    int down = f->down;
    pthread_mutex_unlock(&f->mu);
    /* The callback may call back into the layer, so the listing runs without the mutex. */
    if (down) return -EIO;
    return f->base->list_dir(f->base->ctx, path, each, arg);
}

struct fsio_fault *fsio_fault_new(const struct fsio *base, uint64_t seed)
{
    struct fsio_fault *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->base = fsio_or_real(base);
    pthread_mutex_init(&f->mu, NULL);
    f->rng = seed;
    f->space_left = -1;
    f->sync_errnum = EIO;
    f->fs = (struct fsio){
        .ctx = f,
        .open = ff_open,
        .close = ff_close,
        .pwrite = ff_pwrite,
        .pread = ff_pread,
        .fdatasync = ff_fdatasync,
        .ftruncate = ff_ftruncate,
        .fstat = ff_fstat,
        .rename = ff_rename,
        .unlink = ff_unlink,
        .mkdir = ff_mkdir,
        .fsync_dir = ff_fsync_dir,
        .list_dir = ff_list_dir,
    };
    return f;
}

void fsio_fault_free(struct fsio_fault *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->nfiles; i++) {
        free(f->files[i]->path);
        free(f->files[i]);
    }
    free(f->files);
    free(f->fds);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

const struct fsio *fsio_fault_fs(struct fsio_fault *f)
{
    return &f->fs;
}

void fsio_fault_short_writes(struct fsio_fault *f, int percent)
{
    pthread_mutex_lock(&f->mu);
    f->short_percent = percent;
    pthread_mutex_unlock(&f->mu);
}

void fsio_fault_space_limit(struct fsio_fault *f, int64_t bytes)
{
    pthread_mutex_lock(&f->mu);
    f->space_left = bytes < 0 ? -1 : bytes;
    pthread_mutex_unlock(&f->mu);
}

void fsio_fault_fsync_fail(struct fsio_fault *f, uint32_t after, uint32_t count, int errnum)
{
    pthread_mutex_lock(&f->mu);
    f->sync_ok_left = after;
    f->sync_fail_left = count;
    f->sync_errnum = errnum;
    pthread_mutex_unlock(&f->mu);
}

void fsio_fault_write_delay_us(struct fsio_fault *f, uint32_t us)
{
    pthread_mutex_lock(&f->mu);
    f->write_delay_us = us;
    pthread_mutex_unlock(&f->mu);
}

void fsio_fault_skip_real_sync(struct fsio_fault *f, int on)
{
    pthread_mutex_lock(&f->mu);
    f->skip_real_sync = on;
    pthread_mutex_unlock(&f->mu);
}

/* The power cut itself; caller holds f->mu. */
static void ff_cut_locked(struct fsio_fault *f)
{
    for (size_t i = 0; i < f->nfiles; i++) {
        struct ff_file *e = f->files[i];
        if (e->gen != f->gen || e->unlinked) continue;
        if (!e->durable) {
            if (f->base->unlink(f->base->ctx, e->path) == 0) f->st.names_dropped_by_cut++;
            e->unlinked = 1;
            continue;
        }
        struct stat st;
        if (stat(e->path, &st) != 0 || (uint64_t)st.st_size <= e->synced_len) continue;
        uint64_t keep = e->synced_len;
        if (f->cut_mode == FSIO_FAULT_CUT_KEEP_PREFIX)
            keep += ff_rand(f) % ((uint64_t)st.st_size - e->synced_len + 1);
        int fd = f->base->open(f->base->ctx, e->path, O_WRONLY, 0);
        if (fd < 0) continue;
        if (f->base->ftruncate(f->base->ctx, fd, keep) == 0)
            f->st.bytes_dropped_by_cut += (uint64_t)st.st_size - keep;
        f->base->close(f->base->ctx, fd);
    }
    for (size_t i = 0; i < f->capfds; i++)
        if (f->fds[i].file) f->fds[i].dead = 1;
    f->down = 1;
}

void fsio_fault_power_cut(struct fsio_fault *f)
{
    pthread_mutex_lock(&f->mu);
    ff_cut_locked(f);
    pthread_mutex_unlock(&f->mu);
}

void fsio_fault_cut_mode(struct fsio_fault *f, enum fsio_fault_cut_mode mode)
{
    pthread_mutex_lock(&f->mu);
    f->cut_mode = (int)mode;
    pthread_mutex_unlock(&f->mu);
}

void fsio_fault_power_cut_at_write(struct fsio_fault *f, uint64_t n)
{
    pthread_mutex_lock(&f->mu);
    f->cut_at_write = n;
    pthread_mutex_unlock(&f->mu);
}

void fsio_fault_restart(struct fsio_fault *f)
{
    pthread_mutex_lock(&f->mu);
    f->gen++;
    f->down = 0;
    pthread_mutex_unlock(&f->mu);
}

void fsio_fault_get_stats(struct fsio_fault *f, struct fsio_fault_stats *st)
{
    pthread_mutex_lock(&f->mu);
    *st = f->st;
    pthread_mutex_unlock(&f->mu);
}
