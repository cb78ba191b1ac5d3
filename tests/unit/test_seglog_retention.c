/* seglog retention and consumer registration: by size, by age, consumer holds, active kept. */
#include "test.h"
#include "test_seglog_util.h"

#include "core/diag.h"

#include <dirent.h>

static struct fsio_fault *g_fault;

static void ret_opts(struct seglog_options *o, const char *dir)
{
    tu_opts(o, dir);
    o->fs = fsio_fault_fs(g_fault);
    o->segment_bytes = 64 << 10;
    o->batch_bytes_max = 4096;
    o->record_bytes_max = 1000;
    o->index_interval_bytes = 1024;
}

static int list_bases(const char *dir, uint64_t *bases, int max)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) && n < max) {
        size_t l = strlen(e->d_name);
        if (l == 24 && strcmp(e->d_name + 20, ".seg") == 0)
            bases[n++] = strtoull(e->d_name, NULL, 10);
    }
    if (d) closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (bases[j] < bases[i]) {
                uint64_t t = bases[i];
                bases[i] = bases[j];
                bases[j] = t;
            }
    return n;
}

static long seg_size(const char *dir, uint64_t base)
{
    char p[512];
    return tu_file_size(tu_seg_path(p, sizeof p, dir, base, ".seg"));
}

TEST(size_retention_waits_for_consumers)
{
    const char *dir = test_tmpdir();
    struct seglog_options o;
    ret_opts(&o, dir);
    o.retention_bytes = 100 << 10;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_append_keys(log, 0, 700, 1000, NULL), 0);
    uint64_t bases[64];
    int n = list_bases(dir, bases, 64);
    ASSERT_TRUE(n >= 6);
    uint64_t end = seglog_committed_offset(log);

    int id = seglog_consumer_register(log, "rollup", 0);
    ASSERT_TRUE(id >= 0);
    struct seglog_retention_result res;
    ASSERT_EQ(seglog_retention_run(log, 0, &res), 0);
    ASSERT_EQ(res.segments_deleted, 0);
    ASSERT_EQ(res.blocked_by_consumer, 1);
    ASSERT_EQ(res.start_offset, 0);

    /* Passed the first two segments (and one record into the third). */
    ASSERT_EQ(seglog_consumer_advance(log, id, bases[2] + 1), 0);
    long s0 = seg_size(dir, bases[0]), s1 = seg_size(dir, bases[1]);
    ASSERT_EQ(seglog_retention_run(log, 0, &res), 0);
    ASSERT_EQ(res.segments_deleted, 2);
    ASSERT_EQ(res.bytes_deleted, (uint64_t)(s0 + s1));
    ASSERT_EQ(res.records_deleted, bases[2]);
    ASSERT_EQ(res.start_offset, bases[2]);
    ASSERT_EQ(res.blocked_by_consumer, 1);
    ASSERT_EQ(seg_size(dir, bases[0]), -1);
    ASSERT_EQ(seg_size(dir, bases[1]), -1);
    ASSERT_EQ(seglog_start_offset(log), bases[2]);
    struct seglog_reader *r;
    ASSERT_EQ(seglog_reader_open(log, 0, &r), TALLY_ERANGE);
    ASSERT_EQ(tu_read_check(log, bases[2], bases[2], 1000), (long)(end - bases[2]));

    /* Consumer at the end: size rule deletes down to the limit, never the active segment. */
    ASSERT_EQ(seglog_consumer_advance(log, id, end), 0);
    ASSERT_EQ(seglog_retention_run(log, 0, &res), 0);
    ASSERT_EQ(res.blocked_by_consumer, 0);
    struct seglog_stats st;
    seglog_stats(log, &st);
    ASSERT_TRUE(st.bytes_on_disk <= o.retention_bytes);
    ASSERT_TRUE(st.segment_count >= 1);
    ASSERT_EQ(seg_size(dir, bases[n - 1]) >= 0, 1);
    /* Consumers' registration: same name, same id; limits. */
    ASSERT_EQ(seglog_consumer_register(log, "rollup", 5), id);
    ASSERT_EQ(seglog_consumer_unregister(log, id), 0);
    ASSERT_EQ(seglog_consumer_unregister(log, id), TALLY_ENOENT);
    ASSERT_EQ(seglog_consumer_advance(log, id, 1), TALLY_ENOENT);
    ASSERT_EQ(seglog_consumer_register(log, "", 0), TALLY_EINVAL);
    char name[80];
    for (int i = 0; i < SEGLOG_CONSUMERS_MAX; i++) {
        snprintf(name, sizeof name, "c%d", i);
        ASSERT_TRUE(seglog_consumer_register(log, name, end) >= 0);
    }
    ASSERT_EQ(seglog_consumer_register(log, "one-too-many", 0), TALLY_EFULL);
    seglog_close(log);

    /* The deletions hold across a reopen. */
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    uint64_t start = seglog_start_offset(log);
    ASSERT_TRUE(start > bases[2]);
    ASSERT_EQ(tu_read_check(log, start, start, 1000), (long)(end - start));
    seglog_close(log);
}

TEST(age_retention_by_newest_record)
{
    const char *dir = test_tmpdir();
    struct seglog_options o;
    ret_opts(&o, dir);
    o.retention_age_ms = 500;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_append_keys(log, 0, 700, 1000, NULL), 0); /* ts = 1000 + offset */
    uint64_t bases[64];
    int n = list_bases(dir, bases, 64);
    ASSERT_TRUE(n >= 5);
    /* Segment i's newest record has ts 1000 + bases[i+1] - 1. With now = 1000 + bases[3] - 1
     * + 500, segments 0 and 1 are older than 500 ms, segment 2 (newest = cutoff) is not. */
    int64_t now = 1000 + (int64_t)bases[3] - 1 + 500;
    struct seglog_retention_result res;
    ASSERT_EQ(seglog_retention_run(log, now, &res), 0);
    ASSERT_EQ(res.segments_deleted, 2);
    ASSERT_EQ(res.start_offset, bases[2]);
    ASSERT_EQ(seglog_retention_run(log, now + 1, &res), 0);
    ASSERT_EQ(res.segments_deleted, 1);
    ASSERT_EQ(res.start_offset, bases[3]);
    /* Far future: every closed segment goes, the active one stays. */
    ASSERT_EQ(seglog_retention_run(log, INT64_MAX, &res), 0);
    struct seglog_stats st;
    seglog_stats(log, &st);
    ASSERT_EQ(st.segment_count, 1);
    ASSERT_EQ(st.start_offset, bases[n - 1]);
    ASSERT_EQ(tu_read_check(log, bases[n - 1], bases[n - 1], 1000),
              (long)(seglog_committed_offset(log) - bases[n - 1]));
    /* Appending still works after everything old is gone. */
    uint64_t first;
    ASSERT_EQ(tu_append_keys(log, 700, 3, 1000, &first), 0);
    ASSERT_EQ(first, 700);
    seglog_close(log);
}

TEST(active_segment_never_deleted)
{
    const char *dir = test_tmpdir();
    struct seglog_options o;
    ret_opts(&o, dir);
    o.retention_bytes = 1;
    o.retention_age_ms = 1;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_append_keys(log, 0, 20, 1000, NULL), 0);
    struct seglog_retention_result res;
    ASSERT_EQ(seglog_retention_run(log, INT64_MAX, &res), 0);
    ASSERT_EQ(res.segments_deleted, 0);
    ASSERT_EQ(tu_read_check(log, 0, 0, 1000), 20);
    seglog_close(log);
    /* No limits configured: nothing is ever due. */
    o.retention_bytes = 0;
    o.retention_age_ms = 0;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_append_keys(log, 20, 300, 1000, NULL), 0);
    ASSERT_EQ(seglog_retention_run(log, INT64_MAX, &res), 0);
    ASSERT_EQ(res.segments_deleted, 0);
    seglog_close(log);
}

TEST(unregistered_reader_overtaken_by_retention)
{
    const char *dir = test_tmpdir();
    struct seglog_options o;
    ret_opts(&o, dir);
    o.retention_bytes = 1;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_append_keys(log, 0, 500, 1000, NULL), 0);
    uint64_t bases[64];
    int n = list_bases(dir, bases, 64);
    ASSERT_TRUE(n >= 4);
    struct seglog_reader *r;
    ASSERT_EQ(seglog_reader_open(log, 0, &r), 0);
    struct seglog_record rec;
    ASSERT_EQ(seglog_reader_next(r, &rec), 0);
    /* A registered consumer at bases[2] holds segment 2 onwards. */
    int id = seglog_consumer_register(log, "raw", bases[2]);
    struct seglog_retention_result res;
    ASSERT_EQ(seglog_retention_run(log, 0, &res), 0);
    ASSERT_EQ(res.segments_deleted, 2);
    /* The reader finishes the segment it has open, then finds the next one gone. */
    uint64_t got = 1;
    int rc;
    while ((rc = seglog_reader_next(r, &rec)) == 0) {
        ASSERT_EQ(rec.offset, got);
        got++;
    }
    ASSERT_EQ(rc, TALLY_ERANGE);
    ASSERT_EQ(got, bases[1]);
    seglog_reader_close(r);
    ASSERT_EQ(seglog_consumer_unregister(log, id), 0);
    seglog_close(log);
}

int main(void)
{
    diag_init(DIAG_OFF, NULL);
    g_fault = fsio_fault_new(NULL, 9);
    fsio_fault_skip_real_sync(g_fault, 1);
    RUN(size_retention_waits_for_consumers);
    RUN(age_retention_by_newest_record);
    RUN(active_segment_never_deleted);
    RUN(unregistered_reader_overtaken_by_retention);
    int r = test_summary();
    fsio_fault_free(g_fault);
    return r;
}
