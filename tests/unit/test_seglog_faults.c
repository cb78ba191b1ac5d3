/*
 * seglog under injected faults (core/fsio_fault.h): ENOSPC and fdatasync EIO poison the writer
 * (failing append and all later ones report errors, never success), reset_poison recovers, and
 * simulated power cuts with 2-4 concurrent producers never lose or duplicate an acknowledged
 * record. Real syncs are skipped: the fault layer's model defines durability.
 */
#include "test.h"
#include "test_seglog_util.h"

#include "core/diag.h"

#include <errno.h>
#include <stdatomic.h>
#include <sys/stat.h>

static struct fsio_fault *new_fault(uint64_t seed)
{
    struct fsio_fault *f = fsio_fault_new(NULL, seed);
    fsio_fault_skip_real_sync(f, 1);
    return f;
}

static void small_opts(struct seglog_options *o, const char *dir, struct fsio_fault *f)
{
    tu_opts(o, dir);
    o->fs = fsio_fault_fs(f);
    o->segment_bytes = 64 << 10;
    o->batch_bytes_max = 4096;
    o->record_bytes_max = 1000;
    o->index_interval_bytes = 1024;
}

static int append_key(struct seglog *log, uint64_t key, uint64_t *off)
{
    uint8_t buf[1000];
    uint32_t len = tu_len(key, 1000);
    tu_fill(buf, len, key);
    struct seglog_rec rec = {buf, len, (int64_t)(1000 + key)};
    return append_sync(log, &rec, 1, off);
}

TEST(enospc_poisons_and_reset_recovers)
{
    const char *dir = test_tmpdir();
    struct fsio_fault *f = new_fault(1);
    struct seglog_options o;
    small_opts(&o, dir, f);
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_append_keys(log, 0, 20, 1000, NULL), 0);
    struct seglog_stats st;
    seglog_stats(log, &st);
    uint64_t bytes_before = st.bytes_on_disk;

    fsio_fault_space_limit(f, 100); /* the next write is short, then ENOSPC */
    uint64_t off;
    ASSERT_EQ(append_key(log, 21, &off), TALLY_ENOSPC);
    ASSERT_EQ(seglog_poisoned_err(log), TALLY_ENOSPC);
    struct seglog_rec rec = {"x", 1, 0};
    ASSERT_EQ(seglog_append(log, &rec, 1, tsync_done, NULL), TALLY_ENOSPC);
    ASSERT_EQ(seglog_committed_offset(log), 20);
    ASSERT_EQ(tu_read_check(log, 0, 0, 1000), 20);
    /* The partial batch was cut off at once. */
    seglog_stats(log, &st);
    ASSERT_EQ(st.poisoned, 1);
    ASSERT_EQ(st.poisoned_err, TALLY_ENOSPC);
    ASSERT_EQ(st.bytes_on_disk, bytes_before);
    char p[512];
    ASSERT_EQ(tu_file_size(tu_seg_path(p, sizeof p, dir, st.start_offset, ".seg")) > 0, 1);

    /* Reset while the disk is still full: the log is made consistent, appends fail again. */
    ASSERT_EQ(seglog_reset_poison(log), 0);
    ASSERT_EQ(seglog_poisoned_err(log), 0);
    ASSERT_EQ(append_key(log, 21, &off), TALLY_ENOSPC);
    ASSERT_EQ(seglog_poisoned_err(log), TALLY_ENOSPC);
    /* Space is back. */
    fsio_fault_space_limit(f, -1);
    ASSERT_EQ(seglog_reset_poison(log), 0);
    ASSERT_EQ(seglog_reset_poison(log), 0); /* healthy: a no-op */
    ASSERT_EQ(tu_append_keys(log, 20, 10, 1000, &off), 0);
    ASSERT_EQ(off, 20);
    seglog_close(log);
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_read_check(log, 0, 0, 1000), 30);
    seglog_close(log);
    fsio_fault_free(f);
}

TEST(fsync_eio_poisons_and_reset_recovers)
{
    const char *dir = test_tmpdir();
    struct fsio_fault *f = new_fault(2);
    struct seglog_options o;
    small_opts(&o, dir, f);
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_append_keys(log, 0, 20, 1000, NULL), 0);
    fsio_fault_fsync_fail(f, 0, 2, EIO);
    uint64_t off;
    ASSERT_EQ(append_key(log, 99, &off), TALLY_EIO);
    ASSERT_EQ(seglog_poisoned_err(log), TALLY_EIO);
    ASSERT_EQ(append_key(log, 99, &off), TALLY_EIO);
    ASSERT_EQ(seglog_committed_offset(log), 20);
    ASSERT_EQ(tu_read_check(log, 0, 0, 1000), 20);
    /* The second injected failure hits the reset's own fdatasync: still poisoned, same cause. */
    ASSERT_EQ(seglog_reset_poison(log), TALLY_EIO);
    ASSERT_EQ(seglog_poisoned_err(log), TALLY_EIO);
    ASSERT_EQ(seglog_reset_poison(log), 0);
    ASSERT_EQ(tu_append_keys(log, 20, 5, 1000, &off), 0);
    ASSERT_EQ(off, 20);
    struct seglog_stats st;
    seglog_stats(log, &st);
    ASSERT_EQ(st.durable_offset, 25);
    seglog_close(log);
    /* The failed append's record is gone; everything acknowledged is there. */
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_read_check(log, 0, 0, 1000), 25);
    seglog_close(log);
    fsio_fault_free(f);
}

TEST(interval_sync_failure_poisons)
{
    const char *dir = test_tmpdir();
    struct fsio_fault *f = new_fault(3);
    struct seglog_options o;
    small_opts(&o, dir, f);
    o.fsync = SEGLOG_FSYNC_INTERVAL;
    o.fsync_interval_ms = 5;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_append_keys(log, 0, 9, 1000, NULL), 0);
    struct seglog_stats st;
    for (int i = 0; i < 1000; i++) { /* wait for the periodic fdatasync (no timing assertion) */
        seglog_stats(log, &st);
        if (st.durable_offset == 9) break;
        usleep(2000);
    }
    ASSERT_EQ(st.durable_offset, 9);
    /* The next periodic fdatasync fails: the record was acknowledged after its write. */
    fsio_fault_fsync_fail(f, 0, 1, EIO);
    ASSERT_EQ(tu_append_keys(log, 9, 1, 1000, NULL), 0);
    for (int i = 0; i < 1000 && !seglog_poisoned_err(log); i++)
        usleep(2000);
    ASSERT_EQ(seglog_poisoned_err(log), TALLY_EIO);
    seglog_stats(log, &st);
    ASSERT_EQ(st.durable_offset, 9);
    ASSERT_EQ(tu_read_check(log, 0, 0, 1000), 10); /* written records stay readable */
    ASSERT_EQ(seglog_reset_poison(log), 0);
    seglog_stats(log, &st);
    ASSERT_EQ(st.durable_offset, 10);
    ASSERT_EQ(tu_append_keys(log, 10, 10, 1000, NULL), 0);
    seglog_close(log);
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_read_check(log, 0, 0, 1000), 20);
    seglog_close(log);
    fsio_fault_free(f);
}

/* Random ENOSPC points (including during segment rolls) with short writes: the log holds
 * exactly the acknowledged appends, in order, after reset and after reopen. */
TEST(enospc_random_points_exact_content)
{
    const char *base = test_tmpdir();
    for (uint64_t seed = 0; seed < 40; seed++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/s%llu", base, (unsigned long long)seed);
        struct fsio_fault *f = new_fault(seed);
        fsio_fault_short_writes(f, (int)(seed % 3) * 25);
        struct seglog_options o;
        small_opts(&o, dir, f);
        struct seglog *log;
        ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
        uint64_t rng = seed * 31 + 7;
        fsio_fault_space_limit(f, (int64_t)(tu_rng(&rng) % (200 << 10)));
        uint64_t acked = 0, key = 0;
        int err = 0;
        while (!err && key < 2000) {
            uint64_t off;
            err = append_key(log, key, &off);
            if (!err) {
                ASSERT_EQ(off, acked);
                acked++;
                key++;
            }
        }
        if (key < 2000) {
            ASSERT_EQ(err, TALLY_ENOSPC);
            ASSERT_EQ(seglog_poisoned_err(log), TALLY_ENOSPC);
        }
        ASSERT_EQ(seglog_committed_offset(log), acked);
        ASSERT_EQ(tu_read_check(log, 0, 0, 1000), (long)acked);
        fsio_fault_space_limit(f, -1);
        ASSERT_EQ(seglog_reset_poison(log), 0);
        /* keys continue with the offset: the failed key is retried, as a producer would */
        ASSERT_EQ(tu_append_keys(log, acked, 5, 1000, NULL), 0);
        seglog_close(log);
        ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
        ASSERT_EQ(tu_read_check(log, 0, 0, 1000), (long)acked + 5);
        seglog_close(log);
        fsio_fault_free(f);
    }
}

/* ---- power cut with concurrent producers ---------------------------------------------------- */

#define PC_APPENDS_MAX 2000

struct pc_ack {
    uint64_t first;
    uint64_t key0;
    uint32_t n;
};

struct pc_shared {
    struct fsio_fault *fault;
    atomic_int acks;
    int cut_after;
    atomic_int cut;
};

struct pc_producer {
    struct pc_shared *sh;
    struct seglog *log;
    int id;
    uint64_t rng;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
    struct pc_ack acks[PC_APPENDS_MAX];
    int nacks;
    int errors;
};

struct pc_call {
    struct pc_producer *p;
    uint64_t key0;
    uint32_t n;
};

static void pc_done(void *arg, int err, uint64_t first)
{
    struct pc_call *c = arg;
    struct pc_producer *p = c->p;
    pthread_mutex_lock(&p->mu);
    if (!err)
        p->acks[p->nacks++] = (struct pc_ack){first, c->key0, c->n};
    else
        p->errors++;
    p->inflight--;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    free(c);
    if (!err && atomic_fetch_add(&p->sh->acks, 1) + 1 == p->sh->cut_after) {
        /* Power fails right after this acknowledgement, from the writer thread. */
        fsio_fault_power_cut(p->sh->fault);
        atomic_store(&p->sh->cut, 1);
    }
}

static uint64_t pc_key(int producer, uint64_t seq)
{
    return ((uint64_t)producer << 32) | seq;
}

static void *pc_main(void *arg)
{
    struct pc_producer *p = arg;
    uint8_t buf[3][600];
    uint64_t seq = 0;
    for (int i = 0; i < PC_APPENDS_MAX && !atomic_load(&p->sh->cut); i++) {
        pthread_mutex_lock(&p->mu);
        while (p->inflight >= 8)
            pthread_cond_wait(&p->cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
        uint32_t n = 1 + (uint32_t)(tu_rng(&p->rng) % 3);
        struct seglog_rec recs[3];
        struct pc_call *c = malloc(sizeof *c);
        c->p = p;
        c->key0 = pc_key(p->id, seq);
        c->n = n;
        for (uint32_t j = 0; j < n; j++) {
            uint64_t k = pc_key(p->id, seq++);
            uint32_t len = tu_len(k, 600);
            tu_fill(buf[j], len, k);
            recs[j] = (struct seglog_rec){buf[j], len, (int64_t)k};
        }
        pthread_mutex_lock(&p->mu);
        p->inflight++;
        pthread_mutex_unlock(&p->mu);
        int r = seglog_append(p->log, recs, n, pc_done, c);
        if (r) {
            pthread_mutex_lock(&p->mu);
            p->inflight--;
            pthread_mutex_unlock(&p->mu);
            free(c);
            if (r != TALLY_EFULL) break;
        }
    }
    pthread_mutex_lock(&p->mu);
    while (p->inflight > 0)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Key of the record at each offset after recovery (the timestamp carries it), with every
 * record's content checked against its key. */
static uint64_t *pc_read_all(struct seglog *log, uint64_t *count, int *bad)
{
    uint64_t end = seglog_committed_offset(log);
    uint64_t *keys = calloc(end ? end : 1, sizeof *keys);
    struct seglog_reader *r;
    *count = 0;
    *bad = seglog_reader_open(log, 0, &r);
    if (*bad) return keys;
    struct seglog_record rec;
    uint64_t n = 0;
    uint8_t buf[600];
    int rc;
    while ((rc = seglog_reader_next(r, &rec)) == 0) {
        uint64_t key = (uint64_t)rec.ts_ms;
        uint32_t len = tu_len(key, 600);
        tu_fill(buf, len, key);
        if (rec.offset != n || n >= end)
            *bad = 10;
        else if (rec.len != len || memcmp(buf, rec.data, len) != 0)
            *bad = 11;
        if (*bad) break;
        keys[n++] = key;
    }
    if (!*bad && rc != TALLY_EAGAIN) *bad = rc;
    seglog_reader_close(r);
    *count = n;
    return keys;
}

static int cmp_key(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* mode 0: power cut (after the N-th acknowledgement or during the N-th write); acknowledged
 * records survive. mode 1: an fdatasync EIO or ENOSPC under load, then reset_poison; the log then
 * holds exactly the acknowledged records (failed ones are rolled back) and accepts more. */
static void fault_round(const char *base, uint64_t seed, int mode)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%c%llu", base, mode ? 'e' : 'p', (unsigned long long)seed);
    struct fsio_fault *f = new_fault(seed);
    if (seed % 4 == 1) fsio_fault_short_writes(f, 20);
    /* Half the rounds keep a random part of the unsynced bytes (torn tails to recover). */
    if (seed % 2) fsio_fault_cut_mode(f, FSIO_FAULT_CUT_KEEP_PREFIX);
    struct seglog_options o;
    small_opts(&o, dir, f);
    o.record_bytes_max = 600;
    if (seed % 5 == 0) o.verify = SEGLOG_VERIFY_TAIL;
    /* Most rounds split their larger writes as for O_DIRECT (the layer drops the flag itself):
     * faults then also hit a write's head, middle or tail part. */
    if (seed % 3 != 2) o.direct_min_bytes = 8192;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    uint64_t rng = seed * 977 + 3;
    struct pc_shared sh = {.fault = f};
    /* The power fails either right after the N-th acknowledgement or in the middle of the
     * writer's N-th write. */
    if (mode == 1) {
        sh.cut_after = -1;
        if (seed % 2)
            fsio_fault_fsync_fail(f, (uint32_t)(tu_rng(&rng) % 100), 1, EIO);
        else
            fsio_fault_space_limit(f, (int64_t)(tu_rng(&rng) % (300 << 10)));
    } else if (seed % 3 == 0) {
        sh.cut_after = -1;
        fsio_fault_power_cut_at_write(f, 1 + tu_rng(&rng) % 150);
    } else {
        sh.cut_after = 1 + (int)(tu_rng(&rng) % 400);
    }
    int np = 2 + (int)(seed % 3);
    struct pc_producer *ps = calloc((size_t)np, sizeof *ps);
    pthread_t t[4];
    for (int i = 0; i < np; i++) {
        ps[i].sh = &sh;
        ps[i].log = log;
        ps[i].id = i;
        ps[i].rng = tu_rng(&rng);
        pthread_mutex_init(&ps[i].mu, NULL);
        pthread_cond_init(&ps[i].cv, NULL);
        pthread_create(&t[i], NULL, pc_main, &ps[i]);
    }
    for (int i = 0; i < np; i++)
        pthread_join(t[i], NULL);
    if (mode == 1) {
        /* Before any reset, the files already hold nothing beyond the committed end: a
         * read-only look (as a restart would see it) finds exactly the committed records. */
        struct seglog_options ro = o;
        ro.read_only = 1;
        struct seglog *look;
        ASSERT_EQ(seglog_open(&ro, &look, NULL), 0);
        ASSERT_EQ(seglog_committed_offset(look), seglog_committed_offset(log));
        seglog_close(look);
        fsio_fault_space_limit(f, -1);
        ASSERT_EQ(seglog_reset_poison(log), 0);
        uint64_t extra = 0, ykey = pc_key(99, 0);
        uint8_t ybuf[600];
        uint32_t ylen = tu_len(ykey, 600);
        tu_fill(ybuf, ylen, ykey);
        ASSERT_EQ(append_sync(log, &(struct seglog_rec){ybuf, ylen, (int64_t)ykey}, 1, &extra), 0);
        ASSERT_EQ(extra, seglog_committed_offset(log) - 1);
        seglog_close(log);
    } else {
        if (!atomic_load(&sh.cut)) fsio_fault_power_cut(f);
        seglog_close(log); /* the crashed process's handles: every call fails now */
        fsio_fault_restart(f);
    }

    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    uint64_t count = 0;
    int bad = 0;
    uint64_t *keys = pc_read_all(log, &count, &bad);
    ASSERT_EQ(bad, 0);
    /* Every acknowledged record is at the offset its completion reported. */
    uint64_t acked_records = 0;
    for (int i = 0; i < np; i++) {
        for (int a = 0; a < ps[i].nacks; a++) {
            struct pc_ack *ack = &ps[i].acks[a];
            for (uint32_t j = 0; j < ack->n; j++) {
                uint64_t off = ack->first + j;
                ASSERT_TRUE(off < count);
                ASSERT_EQ(keys[off], ack->key0 + j);
                acked_records++;
            }
        }
    }
    ASSERT_TRUE(count >= acked_records);
    if (mode == 1) {
        ASSERT_EQ(count, acked_records + 1);       /* nothing of a failed append is left */
        ASSERT_EQ(keys[count - 1], pc_key(99, 0)); /* the record appended after the reset */
    }
    /* Exactly once: no key twice. */
    qsort(keys, count, sizeof *keys, cmp_key);
    for (uint64_t i = 1; i < count; i++)
        ASSERT_TRUE(keys[i] != keys[i - 1]);
    /* Offsets are dense and in order (checked while reading) and a fresh append continues. */
    uint64_t first = 0;
    ASSERT_EQ(append_sync(log, &(struct seglog_rec){"z", 1, 1}, 1, &first), 0);
    ASSERT_EQ(first, count);
    seglog_close(log);
    free(keys);
    for (int i = 0; i < np; i++) {
        pthread_mutex_destroy(&ps[i].mu);
        pthread_cond_destroy(&ps[i].cv);
    }
    free(ps);
    fsio_fault_free(f);
}

TEST(power_cut_never_loses_acknowledged_records)
{
    const char *base = test_tmpdir();
    for (uint64_t seed = 0; seed < 200; seed++)
        fault_round(base, seed, 0);
}

TEST(io_errors_under_load_roll_back_exactly)
{
    const char *base = test_tmpdir();
    for (uint64_t seed = 0; seed < 40; seed++)
        fault_round(base, seed, 1);
}

int main(void)
{
    diag_init(DIAG_OFF, NULL);
    RUN(enospc_poisons_and_reset_recovers);
    RUN(fsync_eio_poisons_and_reset_recovers);
    RUN(interval_sync_failure_poisons);
    RUN(enospc_random_points_exact_content);
    RUN(power_cut_never_loses_acknowledged_records);
    RUN(io_errors_under_load_roll_back_exactly);
    return test_summary();
}
