#include "core/datadir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally/error.h"

struct datadir {
    char *path;
    int lock_fd;
};

static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return TALLY_EINVAL;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) return tally_err_from_errno(errno);
            buf[i] = c;
        }
    }
    return 0;
}

static pid_t read_pid(int fd)
{
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    return n > 0 ? (pid_t)atol(buf) : 0;
}

int datadir_open(const char *path, struct datadir **out, pid_t *holder_pid)
{
    *out = NULL;
    if (holder_pid) *holder_pid = 0;
    int rc = mkdir_p(path);
    if (rc) return rc;
    char lock_path[4200];
    snprintf(lock_path, sizeof lock_path, "%s/LOCK", path);
    int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return tally_err_from_errno(errno);
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (holder_pid) *holder_pid = read_pid(fd);
        close(fd);
        return e == EWOULDBLOCK ? TALLY_ELOCKED : tally_err_from_errno(e);
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        close(fd);
        return TALLY_EIO;
    }
    struct datadir *dd = calloc(1, sizeof *dd);
    if (!dd) {
        close(fd);
        return TALLY_ENOMEM;
    }
    dd->path = strdup(path);
    dd->lock_fd = fd;
    *out = dd;
    return 0;
}

#define DATADIR_WAIT_POLL_MS 2

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Polling rather than a blocking flock: a blocking flock cannot be given a deadline without a
 * signal, and the poll interval (2 ms) is small next to the old process's drain. */
int datadir_open_wait(const char *path, struct datadir **out, pid_t *holder_pid,
                      uint32_t timeout_ms)
{
    uint64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        int rc = datadir_open(path, out, holder_pid);
        if (rc != TALLY_ELOCKED || mono_ms() >= deadline) return rc;
        struct timespec ts = {0, DATADIR_WAIT_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}

void datadir_close(struct datadir *dd)
{
    if (!dd) return;
    close(dd->lock_fd); /* releases the flock */
    free(dd->path);
    free(dd);
}

const char *datadir_path(const struct datadir *dd)
{
    return dd->path;
}

int datadir_join(const struct datadir *dd, const char *name, char *buf, size_t buf_bytes)
{
    int n = snprintf(buf, buf_bytes, "%s/%s", dd->path, name);
    return (n < 0 || (size_t)n >= buf_bytes) ? TALLY_ETOOBIG : 0;
}

int datadir_is_locked(const char *path, pid_t *holder_pid)
{
    char lock_path[4200];
    snprintf(lock_path, sizeof lock_path, "%s/LOCK", path);
    int fd = open(lock_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    int locked = 0;
    if (flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
        locked = 1;
        if (holder_pid) *holder_pid = read_pid(fd);
    }
    close(fd);
    return locked;
}
