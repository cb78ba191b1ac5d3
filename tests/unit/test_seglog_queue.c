/*
 * seglog append queue (seglog.c, "Queue design"): producer threads spread over SEGLOG_QSHARDS
 * shards; the writer takes one group through all shards at once.
 *
 * - every append gets its offsets exactly once, appends of one thread keep their order, and
 *   each completion reports the offset its records are read back at (more threads than shards,
 *   so shards are shared, with the writer taking groups in the middle of the stream);
 * - an idle writer is always woken: threads append one record at a time, each waiting for its
 *   completion with a deadline, so that a lost wake-up fails instead of hanging;
 * - the queue buffers' capacity stays under its limit, follows a burst up and comes back down
 *   once the load is small again;
 * - a small group spread over shards is staged into one batch (or batches that span shards);
 *   a large one is cut per shard, in place.
 */
#include "test.h"
#include "test_seglog_util.h"

#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#define ORD_THREADS 24
#define ORD_APPENDS 1500
#define ORD_WINDOW 32

struct ord_slot {
    _Atomic uint64_t first; /* offset + 1 once completed */
    _Atomic int err;
};

struct ord_thread {
    struct seglog *log;
    int id;
    _Atomic int inflight;
    struct ord_slot slots[ORD_APPENDS];
    int append_err;
};

struct ord_cb {
    struct ord_thread *t;
    uint32_t seq;
};

static struct ord_cb g_cbs[ORD_THREADS][ORD_APPENDS];

static void ord_done(void *arg, int err, uint64_t first_offset)
{
    struct ord_cb *cb = arg;
    struct ord_slot *s = &cb->t->slots[cb->seq];
    atomic_store(&s->err, err);
    atomic_store(&s->first, first_offset + 1);
    atomic_fetch_sub(&cb->t->inflight, 1);
}

/* Record of (thread, seq, part): 1 to 3 records per append, so that offsets and appends differ.
 */
static uint32_t ord_parts(uint32_t seq)
{
    return 1 + seq % 3;
}

static void *ord_main(void *arg)
{
    struct ord_thread *t = arg;
    for (uint32_t seq = 0; seq < ORD_APPENDS; seq++) {
        while (atomic_load(&t->inflight) >= ORD_WINDOW)
            sched_yield();
        uint32_t words[3][3];
        struct seglog_rec recs[3];
        uint32_t n = ord_parts(seq);
        for (uint32_t p = 0; p < n; p++) {
            words[p][0] = (uint32_t)t->id;
            words[p][1] = seq;
            words[p][2] = p;
            recs[p] = (struct seglog_rec){words[p], sizeof words[p], (int64_t)seq};
        }
        g_cbs[t->id][seq] = (struct ord_cb){t, seq};
        atomic_fetch_add(&t->inflight, 1);
        int r;
        while ((r = seglog_append(t->log, recs, n, ord_done, &g_cbs[t->id][seq])) == TALLY_EFULL)
            sched_yield();
        if (r) {
            atomic_fetch_sub(&t->inflight, 1);
            t->append_err = r;
            return NULL;
        }
    }
    while (atomic_load(&t->inflight) > 0)
        sched_yield();
    return NULL;
}

TEST(threads_keep_their_order_and_offsets_are_given_once)
{
    const char *dir = test_tmpdir();
    struct seglog_options o;
    tu_opts(&o, dir);
    o.fsync = SEGLOG_FSYNC_ALWAYS;
    /* Below what ONE thread puts in flight (32 appends of 1-3 records, in microseconds, while
     * each group waits for an fdatasync), so EFULL is met even when the threads run one at a
     * time (a busy machine). */
    o.queue_records_max = 40;
    static struct ord_thread ts[ORD_THREADS];
    memset(ts, 0, sizeof ts);
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    pthread_t th[ORD_THREADS];
    for (int i = 0; i < ORD_THREADS; i++) {
        ts[i].log = log;
        ts[i].id = i;
        ASSERT_EQ(pthread_create(&th[i], NULL, ord_main, &ts[i]), 0);
    }
    struct seglog_stats st;
    for (int i = 0; i < 50; i++) {
        seglog_stats(log, &st);
        ASSERT_TRUE(st.queue_capacity_bytes <= st.queue_capacity_max_bytes);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    for (int i = 0; i < ORD_THREADS; i++)
        pthread_join(th[i], NULL);
    uint64_t total = 0;
    for (int i = 0; i < ORD_THREADS; i++) {
        ASSERT_EQ(ts[i].append_err, 0);
        for (uint32_t seq = 0; seq < ORD_APPENDS; seq++) {
            ASSERT_EQ(atomic_load(&ts[i].slots[seq].err), 0);
            ASSERT_TRUE(atomic_load(&ts[i].slots[seq].first) > 0);
            total += ord_parts(seq);
        }
    }
    seglog_stats(log, &st);
    ASSERT_EQ(st.committed_offset, total);
    ASSERT_EQ(st.appends_total, (uint64_t)ORD_THREADS * ORD_APPENDS);
    ASSERT_EQ(st.queue_records, 0);
    ASSERT_EQ(st.queue_bytes, 0);
    ASSERT_TRUE(st.appends_rejected_full > 0); /* the bounds were taken and given back */

    /* Read back: each record where its completion said, each thread's records in its order. */
    uint32_t next_seq[ORD_THREADS] = {0};
    uint32_t next_part[ORD_THREADS] = {0};
    struct seglog_reader *rd;
    ASSERT_EQ(seglog_reader_open(log, 0, &rd), 0);
    struct seglog_record rec;
    uint64_t n = 0;
    while (seglog_reader_next(rd, &rec) == 0) {
        ASSERT_EQ(rec.offset, n);
        ASSERT_EQ(rec.len, 12);
        uint32_t w[3];
        memcpy(w, rec.data, sizeof w);
        ASSERT_TRUE(w[0] < ORD_THREADS);
        ASSERT_EQ(w[1], next_seq[w[0]]);
        ASSERT_EQ(w[2], next_part[w[0]]);
        if (w[2] == 0) ASSERT_EQ(atomic_load(&ts[w[0]].slots[w[1]].first), rec.offset + 1);
        if (++next_part[w[0]] == ord_parts(w[1])) {
            next_part[w[0]] = 0;
            next_seq[w[0]]++;
        }
        n++;
    }
    seglog_reader_close(rd);
    ASSERT_EQ(n, total);
    for (int i = 0; i < ORD_THREADS; i++)
        ASSERT_EQ(next_seq[i], ORD_APPENDS);
    seglog_close(log);
}

#define WAKE_THREADS 16
#define WAKE_APPENDS 1500
#define WAKE_DEADLINE_S 10

struct wake_thread {
    struct seglog *log;
    uint64_t seed;
    int err;      /* an append or completion error */
    int timedout; /* a completion did not come within the deadline */
};

static void *wake_main(void *arg)
{
    struct wake_thread *t = arg;
    struct tsync s; /* its condition variable on CLOCK_MONOTONIC, for the deadline */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s.cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s.mu, NULL);
    for (int i = 0; i < WAKE_APPENDS && !t->err && !t->timedout; i++) {
        s.done = 0;
        struct seglog_rec rec = {"w", 1, i};
        int r = seglog_append(t->log, &rec, 1, tsync_done, &s);
        if (r) {
            t->err = r;
            break;
        }
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += WAKE_DEADLINE_S;
        pthread_mutex_lock(&s.mu);
        while (!s.done && pthread_cond_timedwait(&s.cv, &s.mu, &dl) == 0) {
        }
        if (!s.done) t->timedout = 1;
        if (s.err) t->err = s.err;
        pthread_mutex_unlock(&s.mu);
        /* 0-63 us apart: the writer goes idle between many of them */
        struct timespec gap = {0, (long)(tu_rng(&t->seed) % 64) * 1000};
        if (gap.tv_nsec) nanosleep(&gap, NULL);
    }
    if (t->timedout) {
        /* the completion may still come: wait for it (the log is closed after the joins) */
        pthread_mutex_lock(&s.mu);
        while (!s.done)
            pthread_cond_wait(&s.cv, &s.mu);
        pthread_mutex_unlock(&s.mu);
    }
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    return NULL;
}

/* Each fsync policy has its own idle path (ALWAYS completes on the completer, INTERVAL waits
 * with a deadline). */
static void idle_writer_woken(enum seglog_fsync policy)
{
    const char *dir = test_tmpdir();
    struct seglog_options o;
    tu_opts(&o, dir);
    o.fsync = policy;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    struct wake_thread ts[WAKE_THREADS];
    pthread_t th[WAKE_THREADS];
    for (int i = 0; i < WAKE_THREADS; i++) {
        ts[i] = (struct wake_thread){log, 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1), 0, 0};
        ASSERT_EQ(pthread_create(&th[i], NULL, wake_main, &ts[i]), 0);
    }
    for (int i = 0; i < WAKE_THREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < WAKE_THREADS; i++) {
        ASSERT_EQ(ts[i].timedout, 0);
        ASSERT_EQ(ts[i].err, 0);
    }
    ASSERT_EQ(seglog_committed_offset(log), (uint64_t)WAKE_THREADS * WAKE_APPENDS);
    seglog_close(log);
}

TEST(idle_writer_is_always_woken_none)
{
    idle_writer_woken(SEGLOG_FSYNC_NONE);
}

TEST(idle_writer_is_always_woken_interval)
{
    idle_writer_woken(SEGLOG_FSYNC_INTERVAL);
}

TEST(idle_writer_is_always_woken_always)
{
    idle_writer_woken(SEGLOG_FSYNC_ALWAYS);
}

TEST(queue_capacity_follows_the_load)
{
    const char *dir = test_tmpdir();
    struct seglog_options o;
    tu_opts(&o, dir);
    o.fsync = SEGLOG_FSYNC_NONE;
    o.queue_bytes_max = 16u << 20;
    o.queue_records_max = 1u << 20;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    struct seglog_stats st;
    seglog_stats(log, &st);
    ASSERT_EQ(st.queue_capacity_bytes, 0); /* nothing allocated before the first append */
    ASSERT_TRUE(st.queue_capacity_max_bytes >= 4 * o.queue_bytes_max);

    struct blocker g;
    blocker_init(&g);
    struct seglog_rec one = {"x", 1, 1};
    ASSERT_EQ(blocker_hold(log, &g, &one), 0);

    /* A burst of 8 MiB piles up behind the blocked writer, in one group. */
    static uint8_t big[4000];
    memset(big, 'b', sizeof big);
    int burst = 0;
    for (uint64_t bytes = 0; bytes < (8u << 20); bytes += sizeof big + 12, burst++) {
        struct seglog_rec rec = {big, sizeof big, 2};
        ASSERT_EQ(seglog_append(log, &rec, 1, count_done, &g), 0);
    }
    seglog_stats(log, &st);
    ASSERT_TRUE(st.queue_capacity_bytes >= (8u << 20));
    ASSERT_TRUE(st.queue_capacity_bytes <= st.queue_capacity_max_bytes);
    blocker_release(&g, 1 + burst);

    /* Small appends again: within a few groups every group's buffers were used lightly once,
     * and the burst's buffer was given back. */
    for (int i = 0; i < 4 * 4; i++)
        ASSERT_EQ(append_sync(log, &one, 1, NULL), 0);
    seglog_stats(log, &st);
    ASSERT_TRUE(st.queue_capacity_bytes < (2u << 20));
    ASSERT_EQ(g.errors, 0);
    seglog_close(log);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cv);
}

#define STAGE_THREADS 8 /* fresh threads: they take 8 consecutive shards, i.e. all of them */

struct stage_thread {
    struct seglog *log;
    uint32_t len;
    uint8_t tag;
    struct blocker *b;
    int err;
};

static void *stage_main(void *arg)
{
    struct stage_thread *t = arg;
    uint8_t buf[10000];
    memset(buf, t->tag, t->len);
    struct seglog_rec rec = {buf, t->len, t->tag};
    t->err = seglog_append(t->log, &rec, 1, count_done, t->b);
    return NULL;
}

/* One group with one append from each of 8 threads (8 shards), behind a blocked writer; returns
 * the batches it was written as, after checking every record's content and that the group's
 * records are in shard order (the threads' tags, which follow their shards). */
static uint64_t stage_round(uint32_t len, uint32_t batch_bytes_max)
{
    const char *dir = test_tmpdir();
    struct seglog_options o;
    tu_opts(&o, dir);
    o.fsync = SEGLOG_FSYNC_NONE;
    o.batch_bytes_max = batch_bytes_max;
    o.record_bytes_max = len;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    struct blocker b;
    blocker_init(&b);
    struct seglog_rec one = {"x", 1, 0};
    ASSERT_EQ(blocker_hold(log, &b, &one), 0);
    struct stage_thread ts[STAGE_THREADS];
    pthread_t th[STAGE_THREADS];
    for (int i = 0; i < STAGE_THREADS; i++) {
        ts[i] = (struct stage_thread){log, len, (uint8_t)('a' + i), &b, 0};
        ASSERT_EQ(pthread_create(&th[i], NULL, stage_main, &ts[i]), 0);
        pthread_join(th[i], NULL); /* one after the other: shard order == tag order */
        ASSERT_EQ(ts[i].err, 0);
    }
    struct seglog_stats st0, st;
    seglog_stats(log, &st0);
    blocker_release(&b, 1 + STAGE_THREADS);
    ASSERT_EQ(b.errors, 0);
    seglog_stats(log, &st);
    struct seglog_reader *rd;
    ASSERT_EQ(seglog_reader_open(log, 1, &rd), 0);
    struct seglog_record rec;
    int n = 0;
    /* The shards' order in the group starts wherever the round robin stood: the tags come in
     * a rotation of a..h. */
    uint8_t first_tag = 0;
    while (seglog_reader_next(rd, &rec) == 0) {
        ASSERT_EQ(rec.len, len);
        uint8_t tag = ((const uint8_t *)rec.data)[0];
        if (n == 0) first_tag = tag;
        ASSERT_EQ(tag, 'a' + (first_tag - 'a' + n) % STAGE_THREADS);
        for (uint32_t k = 0; k < len; k++)
            ASSERT_EQ(((const uint8_t *)rec.data)[k], tag);
        n++;
    }
    seglog_reader_close(rd);
    ASSERT_EQ(n, STAGE_THREADS);
    seglog_close(log);
    pthread_mutex_destroy(&b.mu);
    pthread_cond_destroy(&b.cv);
    return st.batches_written - st0.batches_written;
}

TEST(a_small_group_from_many_shards_is_one_batch)
{
    /* 8 x 500 bytes: one batch, not one per shard */
    ASSERT_EQ(stage_round(500, 256u << 10), 1);
    /* 8 x 3000 bytes with 8 KiB batches: 4 batches, each of two records from two shards */
    ASSERT_EQ(stage_round(3000, 8192), 4);
    /* 8 x 6000 bytes is 48 KiB, still staged: one 64 KiB batch */
    ASSERT_EQ(stage_round(6000, 64u << 10), 1);
}

TEST(a_large_group_is_cut_per_shard)
{
    /* 8 x 9000 bytes passes the 64 KiB staging size: each shard's part is cut in place and ends
     * its own batch */
    ASSERT_EQ(stage_round(9000, 256u << 10), 8);
}

int main(void)
{
    RUN(threads_keep_their_order_and_offsets_are_given_once);
    RUN(idle_writer_is_always_woken_none);
    RUN(idle_writer_is_always_woken_interval);
    RUN(idle_writer_is_always_woken_always);
    RUN(queue_capacity_follows_the_load);
    RUN(a_small_group_from_many_shards_is_one_batch);
    RUN(a_large_group_is_cut_per_shard);
    return test_summary();
}
