/*
 * seglog direct writes (direct_min_bytes): large group writes send their block-aligned middle
 * through an O_DIRECT descriptor and their unaligned head and tail through the cached one.
 *
 * A checking fsio layer sits between the log and the real file system: it records which
 * descriptors were opened with O_DIRECT and refuses (EINVAL, as the kernel does) any write on
 * them whose offset, length or memory address is not a multiple of 4096, so the tests fail on
 * an alignment mistake whatever the file system under /tmp accepts. It can also refuse O_DIRECT
 * opens or writes, or make direct writes short, to drive the fallbacks.
 */
#include "test.h"
#include "test_seglog_util.h"

#include <errno.h>
#include <stdatomic.h>

#define CHK_FDS 4096
#define ALIGN 4096u

enum chk_mode { CHK_PLAIN, CHK_REFUSE_OPEN, CHK_REFUSE_WRITE, CHK_SHORT };

struct chk {
    struct fsio fs;
    const struct fsio *base;
    enum chk_mode mode;
    _Atomic int direct_fd[CHK_FDS];
    _Atomic int shadow_fd[CHK_FDS]; /* the same file without O_DIRECT (for CHK_SHORT) */
    _Atomic uint64_t direct_opens, direct_bytes, cached_bytes, misaligned;
    _Atomic uint64_t short_seq;
    uint64_t stat_direct_bytes; /* what the logs of round_trip reported (seglog_stats) */
    /* An fdatasync and a direct write running at the same time (either started during the
     * other); fdatasyncs take at least sync_delay_us, so that an overlap is likely to happen. */
    unsigned sync_delay_us;
    _Atomic int syncing, direct_writing;
    _Atomic uint64_t syncs, overlaps;
};

static int chk_open(void *ctx, const char *path, int flags, unsigned mode)
{
    struct chk *c = ctx;
    if (flags & O_DIRECT) {
        atomic_fetch_add(&c->direct_opens, 1);
        if (c->mode == CHK_REFUSE_OPEN) return -EINVAL;
    }
    int fd = c->base->open(c->base->ctx, path, flags, mode);
    if (fd < 0 || fd >= CHK_FDS) return fd;
    atomic_store(&c->direct_fd[fd], (flags & O_DIRECT) != 0);
    atomic_store(&c->shadow_fd[fd], -1);
    if (flags & O_DIRECT)
        atomic_store(&c->shadow_fd[fd], c->base->open(c->base->ctx, path, O_WRONLY, 0));
    return fd;
}

static int chk_close(void *ctx, int fd)
{
    struct chk *c = ctx;
    if (fd >= 0 && fd < CHK_FDS) {
        atomic_store(&c->direct_fd[fd], 0);
        int sh = atomic_exchange(&c->shadow_fd[fd], -1);
        if (sh >= 0) c->base->close(c->base->ctx, sh);
    }
    return c->base->close(c->base->ctx, fd);
}

static ssize_t chk_pwrite(void *ctx, int fd, const void *buf, size_t n, uint64_t off)
{
    struct chk *c = ctx;
    if (fd < 0 || fd >= CHK_FDS || !atomic_load(&c->direct_fd[fd])) {
        atomic_fetch_add(&c->cached_bytes, n);
        return c->base->pwrite(c->base->ctx, fd, buf, n, off);
    }
    if (off % ALIGN || n % ALIGN || (uintptr_t)buf % ALIGN) {
        atomic_fetch_add(&c->misaligned, 1);
        return -EINVAL;
    }
    if (c->mode == CHK_REFUSE_WRITE) return -EINVAL;
    if (c->mode == CHK_SHORT && n > ALIGN) {
        /* Alternately a short aligned count (the log goes on with O_DIRECT) and a short
         * unaligned one, whose last bytes a real O_DIRECT descriptor would refuse: they go
         * through the shadow descriptor (the log must then finish through the cache). */
        if (atomic_fetch_add(&c->short_seq, 1) % 2 == 0) {
            n = n / 2 / ALIGN * ALIGN;
        } else {
            size_t aligned = n / 2 / ALIGN * ALIGN;
            ssize_t r = aligned ? c->base->pwrite(c->base->ctx, fd, buf, aligned, off) : 0;
            if (r != (ssize_t)aligned) return r < 0 ? r : -EIO;
            r = c->base->pwrite(c->base->ctx, atomic_load(&c->shadow_fd[fd]),
                                (const uint8_t *)buf + aligned, 100, off + aligned);
            if (r != 100) return r < 0 ? r : -EIO;
            atomic_fetch_add(&c->direct_bytes, aligned + 100);
            return (ssize_t)(aligned + 100);
        }
        if (n == 0) n = ALIGN;
    }
    atomic_fetch_add(&c->direct_writing, 1);
    if (atomic_load(&c->syncing)) atomic_fetch_add(&c->overlaps, 1);
    ssize_t r = c->base->pwrite(c->base->ctx, fd, buf, n, off);
    atomic_fetch_sub(&c->direct_writing, 1);
    if (r > 0) atomic_fetch_add(&c->direct_bytes, (uint64_t)r);
    return r;
}

/* The other calls go to the base table with the base's own context. */
#define CHK_BASE(ctx) (((struct chk *)(ctx))->base)
static ssize_t chk_pread(void *ctx, int fd, void *buf, size_t n, uint64_t off)
{
    return CHK_BASE(ctx)->pread(CHK_BASE(ctx)->ctx, fd, buf, n, off);
}
static int chk_fdatasync(void *ctx, int fd)
{
    struct chk *c = ctx;
    atomic_fetch_add(&c->syncing, 1);
    atomic_fetch_add(&c->syncs, 1);
    if (atomic_load(&c->direct_writing)) atomic_fetch_add(&c->overlaps, 1);
    if (c->sync_delay_us) usleep(c->sync_delay_us);
    int r = c->base->fdatasync(c->base->ctx, fd);
    atomic_fetch_sub(&c->syncing, 1);
    return r;
}
static int chk_ftruncate(void *ctx, int fd, uint64_t len)
{
    return CHK_BASE(ctx)->ftruncate(CHK_BASE(ctx)->ctx, fd, len);
}
static int chk_fstat(void *ctx, int fd, struct stat *st)
{
    return CHK_BASE(ctx)->fstat(CHK_BASE(ctx)->ctx, fd, st);
}
static int chk_rename(void *ctx, const char *from, const char *to)
{
    return CHK_BASE(ctx)->rename(CHK_BASE(ctx)->ctx, from, to);
}
static int chk_unlink(void *ctx, const char *path)
{
    return CHK_BASE(ctx)->unlink(CHK_BASE(ctx)->ctx, path);
}
static int chk_mkdir(void *ctx, const char *path, unsigned mode)
{
    return CHK_BASE(ctx)->mkdir(CHK_BASE(ctx)->ctx, path, mode);
}
static int chk_fsync_dir(void *ctx, const char *path)
{
    return CHK_BASE(ctx)->fsync_dir(CHK_BASE(ctx)->ctx, path);
}
static int chk_list_dir(void *ctx, const char *path, int (*each)(void *arg, const char *name),
                        void *arg)
{
    return CHK_BASE(ctx)->list_dir(CHK_BASE(ctx)->ctx, path, each, arg);
}

static void chk_init(struct chk *c, const struct fsio *base, enum chk_mode mode)
{
    memset(c, 0, sizeof *c);
    c->base = fsio_or_real(base);
    c->mode = mode;
    c->fs = (struct fsio){
        c,         chk_open,   chk_close,  chk_pwrite, chk_pread,     chk_fdatasync, chk_ftruncate,
        chk_fstat, chk_rename, chk_unlink, chk_mkdir,  chk_fsync_dir, chk_list_dir};
}

/* Appends `groups` appends of `per` records and waits for each: each is one large group (the
 * writer is idle). Record keys are kbase + offset, lengths up to maxlen (tu_read_check's rule).
 * 0, an append's error, or -1000 when an append did not land at the next offset. */
static int append_groups(struct seglog *log, uint64_t kbase, int groups, uint32_t per,
                         uint32_t maxlen)
{
    struct seglog_rec *recs = calloc(per, sizeof *recs);
    uint8_t *bufs = malloc((size_t)per * maxlen);
    int r = 0;
    for (int g = 0; g < groups && !r; g++) {
        uint64_t off0 = seglog_committed_offset(log);
        for (uint32_t i = 0; i < per; i++) {
            uint64_t k = kbase + off0 + i;
            uint32_t len = tu_len(k, maxlen);
            tu_fill(bufs + (size_t)i * maxlen, len, k);
            recs[i] = (struct seglog_rec){bufs + (size_t)i * maxlen, len, (int64_t)(1000 + k)};
        }
        uint64_t first = 0;
        r = append_sync(log, recs, per, &first);
        if (!r && first != off0) r = -1000;
    }
    free(recs);
    free(bufs);
    return r;
}

/* Opens a log in a fresh directory over c, writes 40 groups of 150 records (up to 3000 bytes
 * each: 40-300 KB per group) across several 1 MiB segments, checks them, reopens with full
 * verification and checks them again. */
static void round_trip(struct chk *c, uint32_t direct_min)
{
    struct seglog_options o;
    tu_opts(&o, test_tmpdir());
    o.fs = &c->fs;
    o.segment_bytes = 1 << 20;
    o.batch_bytes_max = 64 << 10;
    o.record_bytes_max = 3000;
    o.direct_min_bytes = direct_min;
    o.compress = 0; /* the sizes above are then what reaches the disk */
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(append_groups(log, 7, 40, 150, 3000), 0);
    ASSERT_EQ(tu_read_check(log, 0, 7, 3000), 40 * 150);
    struct seglog_stats st;
    seglog_stats(log, &st);
    ASSERT_TRUE(st.segment_count >= 4);
    c->stat_direct_bytes = st.direct_bytes_written;
    seglog_close(log);

    struct seglog_open_report rep;
    o.verify = SEGLOG_VERIFY_ALL;
    ASSERT_EQ(seglog_open(&o, &log, &rep), 0);
    ASSERT_EQ(rep.torn_bytes, 0);
    ASSERT_EQ(rep.indexes_rebuilt, 0);
    ASSERT_EQ(seglog_committed_offset(log), 40 * 150);
    ASSERT_EQ(tu_read_check(log, 0, 7, 3000), 40 * 150);
    /* Appending after a reopen continues at an unaligned end. */
    ASSERT_EQ(append_groups(log, 7, 5, 150, 3000), 0);
    ASSERT_EQ(tu_read_check(log, 0, 7, 3000), 45 * 150);
    seglog_stats(log, &st);
    c->stat_direct_bytes += st.direct_bytes_written;
    seglog_close(log);
    ASSERT_EQ(atomic_load(&c->misaligned), 0);
}

/* Whether the file system under $TMPDIR takes O_DIRECT at all (tmpfs before Linux 6.6 does
 * not: the log then writes everything through the cache, which the fallback tests cover). */
static int tmpdir_takes_o_direct(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/probe", test_tmpdir());
    int fd = open(path, O_WRONLY | O_CREAT | O_DIRECT, 0644);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

TEST(large_writes_go_direct_aligned_and_read_back)
{
    struct chk c;
    chk_init(&c, NULL, CHK_PLAIN);
    round_trip(&c, 64 << 10);
    if (!tmpdir_takes_o_direct()) {
        fprintf(stderr, "note: $TMPDIR refuses O_DIRECT; only the fallback was checked\n");
        ASSERT_EQ(atomic_load(&c.direct_bytes), 0);
        return;
    }
    ASSERT_TRUE(atomic_load(&c.direct_opens) >= 4); /* one per segment written directly */
    /* Most bytes bypass the cache; heads and tails (< 4 KiB each) and indexes do not. */
    uint64_t d = atomic_load(&c.direct_bytes), b = atomic_load(&c.cached_bytes);
    ASSERT_TRUE(d > 8 * b);
    ASSERT_EQ(c.stat_direct_bytes, d);
}

TEST(direct_min_bytes_zero_never_opens_direct)
{
    struct chk c;
    chk_init(&c, NULL, CHK_PLAIN);
    round_trip(&c, 0);
    ASSERT_EQ(atomic_load(&c.direct_opens), 0);
    ASSERT_EQ(atomic_load(&c.direct_bytes), 0);
}

TEST(small_groups_stay_cached)
{
    struct chk c;
    chk_init(&c, NULL, CHK_PLAIN);
    struct seglog_options o;
    tu_opts(&o, test_tmpdir());
    o.fs = &c.fs;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    uint64_t first;
    ASSERT_EQ(tu_append_keys(log, 0, 300, 2000, &first), 0); /* one record per group */
    ASSERT_EQ(tu_read_check(log, 0, 0, 2000), 300);
    seglog_close(log);
    ASSERT_EQ(atomic_load(&c.direct_opens), 0);
}

/* A refused O_DIRECT open, or a refused first direct write: the log goes on through the cache
 * and asks once per open log (two in round_trip), never again. */
static void refused(enum chk_mode mode)
{
    struct chk c;
    chk_init(&c, NULL, mode);
    round_trip(&c, 64 << 10);
    ASSERT_EQ(atomic_load(&c.direct_opens), 2);
    ASSERT_EQ(atomic_load(&c.direct_bytes), 0);
}

TEST(refused_open_falls_back_to_the_cache)
{
    refused(CHK_REFUSE_OPEN);
}

TEST(refused_write_falls_back_to_the_cache)
{
    refused(CHK_REFUSE_WRITE);
}

TEST(short_direct_writes_are_finished)
{
    struct chk c;
    chk_init(&c, NULL, CHK_SHORT);
    round_trip(&c, 64 << 10);
    if (!tmpdir_takes_o_direct()) return;             /* nothing was written directly */
    ASSERT_TRUE(atomic_load(&c.short_seq) >= 2 * 45); /* two per group: aligned, unaligned */
}

#define FL_THREADS 8
#define FL_APPENDS 150
#define FL_RECS 4

struct fl_producer {
    struct seglog *log;
    uint64_t key0;
    int err;
};

/* Appends FL_APPENDS appends of FL_RECS records (keys key0.., up to 2000 bytes each), each
 * waited for: with FL_THREADS of these, groups of several appends pile up behind the syncer. */
static void *fl_main(void *arg)
{
    struct fl_producer *p = arg;
    uint8_t *bufs = malloc((size_t)FL_RECS * 2000);
    for (int a = 0; a < FL_APPENDS && !p->err; a++) {
        struct seglog_rec recs[FL_RECS];
        for (uint32_t i = 0; i < FL_RECS; i++) {
            uint64_t k = p->key0 + (uint64_t)a * FL_RECS + i;
            uint32_t len = tu_len(k, 2000);
            tu_fill(bufs + (size_t)i * 2000, len, k);
            recs[i] = (struct seglog_rec){bufs + (size_t)i * 2000, len, (int64_t)k};
        }
        p->err = append_sync(p->log, recs, FL_RECS, NULL);
    }
    free(bufs);
    return NULL;
}

/* Under concurrent load with fsync always, a group large enough for O_DIRECT is written only
 * after the fdatasyncs requested before it have ended (a flush beside a large direct write
 * slowed both on a real device), and the syncer never starts one during a direct write. Every
 * record reads back with its content. */
TEST(direct_writes_never_run_beside_an_fdatasync)
{
    if (!tmpdir_takes_o_direct()) return; /* nothing would be written directly */
    struct chk c;
    chk_init(&c, NULL, CHK_PLAIN);
    c.sync_delay_us = 300;
    struct seglog_options o;
    tu_opts(&o, test_tmpdir());
    o.fs = &c.fs;
    o.segment_bytes = 4 << 20;
    o.batch_bytes_max = 16 << 10;
    o.record_bytes_max = 2000;
    o.direct_min_bytes = 8192;
    o.compress = 0;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    struct fl_producer ps[FL_THREADS];
    pthread_t t[FL_THREADS];
    for (int i = 0; i < FL_THREADS; i++) {
        ps[i] = (struct fl_producer){log, (uint64_t)i << 32, 0};
        pthread_create(&t[i], NULL, fl_main, &ps[i]);
    }
    for (int i = 0; i < FL_THREADS; i++) {
        pthread_join(t[i], NULL);
        ASSERT_EQ(ps[i].err, 0);
    }
    uint64_t end = seglog_committed_offset(log);
    ASSERT_EQ(end, (uint64_t)FL_THREADS * FL_APPENDS * FL_RECS);
    struct seglog_reader *r;
    ASSERT_EQ(seglog_reader_open(log, 0, &r), 0);
    struct seglog_record rec;
    uint64_t n = 0;
    uint8_t buf[2000];
    while (seglog_reader_next(r, &rec) == 0) {
        uint64_t k = (uint64_t)rec.ts_ms;
        uint32_t len = tu_len(k, 2000);
        tu_fill(buf, len, k);
        ASSERT_EQ(rec.offset, n);
        ASSERT_TRUE(rec.len == len && memcmp(rec.data, buf, len) == 0);
        n++;
    }
    seglog_reader_close(r);
    ASSERT_EQ(n, end);
    struct seglog_stats st;
    seglog_stats(log, &st);
    seglog_close(log);
    /* The load did what the test is about: many direct writes, many more fdatasyncs than the
     * few a lone producer's inline syncs would explain, groups of several appends (one
     * fdatasync per group; the 8 producers sit on 8 queue shards, so a group's batches do not
     * tell). */
    ASSERT_TRUE(atomic_load(&c.direct_bytes) > (1u << 20));
    ASSERT_TRUE(atomic_load(&c.syncs) >= 20);
    ASSERT_TRUE(atomic_load(&c.syncs) < (uint64_t)FL_THREADS * FL_APPENDS / 2);
    ASSERT_EQ(atomic_load(&c.overlaps), 0);
    ASSERT_EQ(atomic_load(&c.misaligned), 0);
}

/* Power cuts in the middle of split writes (the fault layer drops O_DIRECT, keeps the split):
 * every acknowledged group survives, the torn rest is cut at a batch boundary. */
TEST(power_cut_during_split_writes_keeps_acknowledged_groups)
{
    for (uint64_t seed = 1; seed <= 30; seed++) {
        struct fsio_fault *f = fsio_fault_new(NULL, seed);
        fsio_fault_skip_real_sync(f, 1);
        if (seed % 2) fsio_fault_cut_mode(f, FSIO_FAULT_CUT_KEEP_PREFIX);
        if (seed % 3 == 0) fsio_fault_short_writes(f, 30);
        struct chk c;
        chk_init(&c, fsio_fault_fs(f), CHK_PLAIN);
        struct seglog_options o;
        tu_opts(&o, test_tmpdir());
        o.fs = &c.fs;
        o.segment_bytes = 256 << 10;
        o.batch_bytes_max = 16 << 10;
        o.record_bytes_max = 2000;
        o.direct_min_bytes = 8192;
        o.compress = (int)(seed % 2);
        struct seglog *log;
        ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
        fsio_fault_power_cut_at_write(f, 3 + seed * 7 % 40);
        uint64_t acked = 0;
        for (int g = 0; g < 60; g++) {
            if (append_groups(log, 100, 1, 20 + (uint32_t)(seed * g % 40), 2000)) break;
            acked = seglog_committed_offset(log);
        }
        seglog_close(log);
        fsio_fault_restart(f);
        o.fs = NULL; /* the files as the power cut left them */
        ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
        ASSERT_TRUE(seglog_committed_offset(log) >= acked);
        ASSERT_EQ(tu_read_check(log, 0, 100, 2000), (long)seglog_committed_offset(log));
        seglog_close(log);
        ASSERT_EQ(atomic_load(&c.misaligned), 0);
        fsio_fault_free(f);
    }
}

int main(void)
{
    RUN(large_writes_go_direct_aligned_and_read_back);
    RUN(direct_min_bytes_zero_never_opens_direct);
    RUN(small_groups_stay_cached);
    RUN(refused_open_falls_back_to_the_cache);
    RUN(refused_write_falls_back_to_the_cache);
    RUN(short_direct_writes_are_finished);
    RUN(power_cut_during_split_writes_keeps_acknowledged_groups);
    RUN(direct_writes_never_run_beside_an_fdatasync);
    return test_summary();
}
