/* fsio: the real table and the fault injector (short writes, ENOSPC, fsync EIO, power cut). */
#include "test.h"

#include "core/fsio.h"
#include "core/fsio_fault.h"
#include "tally/error.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static int count_each(void *arg, const char *name)
{
    (void)name;
    (*(int *)arg)++;
    return 0;
}

TEST(real_calls_and_errno)
{
    const struct fsio *fs = fsio_real();
    ASSERT_TRUE(fsio_or_real(NULL) == fs);
    const char *dir = test_tmpdir();
    char a[512], b[512], sub[512];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(sub, sizeof sub, "%s/sub", dir);
    ASSERT_EQ(fs->open(fs->ctx, a, O_RDONLY, 0), -ENOENT);
    int fd = fs->open(fs->ctx, a, O_RDWR | O_CREAT | O_EXCL, 0644);
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ(fsio_write_all(fs, fd, "hello world", 11, 0), 0);
    ASSERT_EQ(fsio_write_all(fs, fd, "W", 1, 6), 0);
    uint64_t size;
    ASSERT_EQ(fsio_file_size(fs, fd, &size), 0);
    ASSERT_EQ(size, 11);
    char buf[32];
    size_t got;
    ASSERT_EQ(fsio_read_full(fs, fd, buf, sizeof buf, 0, &got), 0);
    ASSERT_EQ(got, 11);
    ASSERT_MEMEQ(buf, "hello World", 11);
    ASSERT_EQ(fs->fdatasync(fs->ctx, fd), 0);
    ASSERT_EQ(fs->ftruncate(fs->ctx, fd, 5), 0);
    ASSERT_EQ(fsio_file_size(fs, fd, &size), 0);
    ASSERT_EQ(size, 5);
    ASSERT_EQ(fs->close(fs->ctx, fd), 0);
    ASSERT_EQ(fs->rename(fs->ctx, a, b), 0);
    ASSERT_EQ(fs->mkdir(fs->ctx, sub, 0755), 0);
    ASSERT_EQ(fs->mkdir(fs->ctx, sub, 0755), -EEXIST);
    ASSERT_EQ(fs->fsync_dir(fs->ctx, dir), 0);
    int n = 0;
    ASSERT_EQ(fs->list_dir(fs->ctx, dir, count_each, &n), 0);
    ASSERT_EQ(n, 2);
    ASSERT_EQ(fs->unlink(fs->ctx, b), 0);
    ASSERT_EQ(fs->unlink(fs->ctx, b), -ENOENT);
    ASSERT_EQ(fs->fsync_dir(fs->ctx, b), -ENOENT);
}

TEST(short_writes_still_write_everything)
{
    const char *dir = test_tmpdir();
    struct fsio_fault *f = fsio_fault_new(NULL, 5);
    const struct fsio *fs = fsio_fault_fs(f);
    fsio_fault_short_writes(f, 90);
    char p[512];
    snprintf(p, sizeof p, "%s/x", dir);
    int fd = fs->open(fs->ctx, p, O_RDWR | O_CREAT, 0644);
    uint8_t data[5000], back[5000];
    for (int i = 0; i < 5000; i++)
        data[i] = (uint8_t)(i * 31);
    ASSERT_EQ(fsio_write_all(fs, fd, data, sizeof data, 0), 0);
    size_t got;
    ASSERT_EQ(fsio_read_full(fs, fd, back, sizeof back, 0, &got), 0);
    ASSERT_EQ(got, 5000);
    ASSERT_MEMEQ(data, back, 5000);
    struct fsio_fault_stats st;
    fsio_fault_get_stats(f, &st);
    ASSERT_TRUE(st.short_writes > 3);
    ASSERT_EQ(st.bytes_written, 5000);
    fs->close(fs->ctx, fd);
    fsio_fault_free(f);
}

TEST(enospc_after_budget)
{
    const char *dir = test_tmpdir();
    struct fsio_fault *f = fsio_fault_new(NULL, 6);
    const struct fsio *fs = fsio_fault_fs(f);
    char p[512];
    snprintf(p, sizeof p, "%s/x", dir);
    int fd = fs->open(fs->ctx, p, O_RDWR | O_CREAT, 0644);
    fsio_fault_space_limit(f, 1000);
    uint8_t data[600] = {0};
    ASSERT_EQ(fsio_write_all(fs, fd, data, 600, 0), 0);
    ASSERT_EQ(fsio_write_all(fs, fd, data, 600, 600), TALLY_ENOSPC);
    ASSERT_EQ(file_size(p), 1000);
    ASSERT_EQ(fs->pwrite(fs->ctx, fd, data, 1, 0), -ENOSPC);
    fsio_fault_space_limit(f, -1);
    ASSERT_EQ(fsio_write_all(fs, fd, data, 600, 1000), 0);
    fs->close(fs->ctx, fd);
    fsio_fault_free(f);
}

TEST(fsync_failures_after_n)
{
    const char *dir = test_tmpdir();
    struct fsio_fault *f = fsio_fault_new(NULL, 7);
    const struct fsio *fs = fsio_fault_fs(f);
    char p[512];
    snprintf(p, sizeof p, "%s/x", dir);
    int fd = fs->open(fs->ctx, p, O_RDWR | O_CREAT, 0644);
    fsio_fault_fsync_fail(f, 2, 2, EIO);
    ASSERT_EQ(fs->fdatasync(fs->ctx, fd), 0);
    ASSERT_EQ(fs->fsync_dir(fs->ctx, dir), 0);
    ASSERT_EQ(fs->fdatasync(fs->ctx, fd), -EIO);
    ASSERT_EQ(fs->fdatasync(fs->ctx, fd), -EIO);
    ASSERT_EQ(fs->fdatasync(fs->ctx, fd), 0);
    fs->close(fs->ctx, fd);
    fsio_fault_free(f);
}

TEST(power_cut_drops_unsynced_bytes_and_names)
{
    const char *dir = test_tmpdir();
    struct fsio_fault *f = fsio_fault_new(NULL, 8);
    fsio_fault_skip_real_sync(f, 1);
    const struct fsio *fs = fsio_fault_fs(f);
    char old[512], fresh[512], synced_name[512];
    snprintf(old, sizeof old, "%s/old", dir);
    snprintf(fresh, sizeof fresh, "%s/fresh", dir);
    snprintf(synced_name, sizeof synced_name, "%s/named", dir);
    /* A file that existed before counts as synced as it was. */
    FILE *pf = fopen(old, "wb");
    fwrite("0123456789", 1, 10, pf);
    fclose(pf);
    int fo = fs->open(fs->ctx, old, O_RDWR, 0);
    ASSERT_EQ(fsio_write_all(fs, fo, "abc", 3, 10), 0);
    ASSERT_EQ(fs->fdatasync(fs->ctx, fo), 0);
    ASSERT_EQ(fsio_write_all(fs, fo, "unsynced", 8, 13), 0);
    /* A new file without a directory sync vanishes; with one it stays (synced part). */
    int ff = fs->open(fs->ctx, fresh, O_RDWR | O_CREAT, 0644);
    ASSERT_EQ(fsio_write_all(fs, ff, "x", 1, 0), 0);
    ASSERT_EQ(fs->fdatasync(fs->ctx, ff), 0);
    int fn = fs->open(fs->ctx, synced_name, O_RDWR | O_CREAT, 0644);
    ASSERT_EQ(fs->fsync_dir(fs->ctx, dir), 0);
    ASSERT_EQ(fsio_write_all(fs, fn, "yy", 2, 0), 0);
    /* fresh was created before the directory sync too: it survives. Create a later one. */
    char later[512];
    snprintf(later, sizeof later, "%s/later", dir);
    int fl = fs->open(fs->ctx, later, O_RDWR | O_CREAT, 0644);
    ASSERT_EQ(fsio_write_all(fs, fl, "zz", 2, 0), 0);
    ASSERT_EQ(fs->fdatasync(fs->ctx, fl), 0);

    fsio_fault_power_cut(f);
    ASSERT_EQ(file_size(old), 13);
    ASSERT_EQ(file_size(fresh), 1);
    ASSERT_EQ(file_size(synced_name), 0);
    ASSERT_EQ(file_size(later), -1);
    /* Everything fails while the power is off; old handles stay dead after the restart. */
    ASSERT_EQ(fs->pwrite(fs->ctx, fo, "q", 1, 0), -EIO);
    ASSERT_EQ(fs->open(fs->ctx, old, O_RDONLY, 0), -EIO);
    fsio_fault_restart(f);
    ASSERT_EQ(fs->pwrite(fs->ctx, fo, "q", 1, 0), -EIO);
    ASSERT_EQ(fs->fdatasync(fs->ctx, fo), -EIO);
    ASSERT_EQ(fs->close(fs->ctx, fo), 0);
    fs->close(fs->ctx, ff);
    fs->close(fs->ctx, fn);
    fs->close(fs->ctx, fl);
    int fd = fs->open(fs->ctx, old, O_RDWR, 0);
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ(fsio_write_all(fs, fd, "more", 4, 13), 0);
    /* After the restart, what is on disk counts as synced: a second cut keeps the 13 bytes. */
    fsio_fault_power_cut(f);
    ASSERT_EQ(file_size(old), 13);
    fsio_fault_restart(f);
    fs->close(fs->ctx, fd);
    struct fsio_fault_stats st;
    fsio_fault_get_stats(f, &st);
    ASSERT_EQ(st.bytes_dropped_by_cut, 8 + 2 + 4);
    ASSERT_EQ(st.names_dropped_by_cut, 1);
    fsio_fault_free(f);
}

TEST(power_cut_modes_and_at_write)
{
    const char *dir = test_tmpdir();
    for (uint64_t seed = 0; seed < 20; seed++) {
        struct fsio_fault *f = fsio_fault_new(NULL, seed);
        fsio_fault_skip_real_sync(f, 1);
        fsio_fault_cut_mode(f, FSIO_FAULT_CUT_KEEP_PREFIX);
        const struct fsio *fs = fsio_fault_fs(f);
        char p[512];
        snprintf(p, sizeof p, "%s/k%llu", dir, (unsigned long long)seed);
        int fd = fs->open(fs->ctx, p, O_RDWR | O_CREAT, 0644);
        fs->fsync_dir(fs->ctx, dir);
        uint8_t data[100] = {1};
        ASSERT_EQ(fsio_write_all(fs, fd, data, 40, 0), 0);
        ASSERT_EQ(fs->fdatasync(fs->ctx, fd), 0);
        fsio_fault_power_cut_at_write(f, 2);
        ASSERT_EQ(fsio_write_all(fs, fd, data, 30, 40), 0);
        ASSERT_EQ(fsio_write_all(fs, fd, data, 30, 70), TALLY_EIO); /* power fails here */
        long s = file_size(p);
        ASSERT_TRUE(s >= 40 && s <= 100);
        fs->close(fs->ctx, fd);
        fsio_fault_free(f);
    }
}

int main(void)
{
    RUN(real_calls_and_errno);
    RUN(short_writes_still_write_everything);
    RUN(enospc_after_budget);
    RUN(fsync_failures_after_n);
    RUN(power_cut_drops_unsynced_bytes_and_names);
    RUN(power_cut_modes_and_at_write);
    return test_summary();
}
