/*
 * seglog recovery: torn-tail sweep (every truncation length of the last batch), bit-flip sweep
 * (every bit of the last two batches), corruption and gaps in closed segments (refused, then
 * repaired with exact lost offsets), VERIFY_TAIL behaviour. The file system is the fault layer
 * with real syncs skipped, so hundreds of reopenings stay fast.
 */
#include "test.h"
#include "test_seglog_util.h"

#include "core/diag.h"

#include <dirent.h>

static struct fsio_fault *g_fault;

static void fast_opts(struct seglog_options *o, const char *dir)
{
    tu_opts(o, dir);
    o->fs = fsio_fault_fs(g_fault);
}

/* Sorted bases of the segments in dir; returns the count. */
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

/* Positions of the batches in a segment image; returns the count. */
static int batch_positions(const uint8_t *data, size_t len, size_t *pos, int max)
{
    int n = 0;
    size_t p = 0;
    while (p < len && n < max) {
        struct batch_header h;
        if (batch_header_decode(data + p, len - p, &h)) break;
        pos[n++] = p;
        p += (size_t)batch_total_bytes(&h);
    }
    return n;
}

/* Writes 6 batches of 3 small records (keys = offsets 0..17) into a fresh log; returns the
 * segment image. */
static void make_six_batches(const char *dir, uint8_t **img, size_t *len, size_t *pos)
{
    struct seglog_options o;
    fast_opts(&o, dir);
    struct seglog *log;
    TALLY_ASSERT(seglog_open(&o, &log, NULL) == 0);
    uint8_t buf[3][24];
    for (uint64_t b = 0; b < 6; b++) {
        struct seglog_rec recs[3];
        for (int j = 0; j < 3; j++) {
            uint64_t k = b * 3 + (uint64_t)j;
            uint32_t l = tu_len(k, 24);
            tu_fill(buf[j], l, k);
            recs[j] = (struct seglog_rec){buf[j], l, (int64_t)(1000 + k)};
        }
        uint64_t first;
        TALLY_ASSERT(append_sync(log, recs, 3, &first) == 0 && first == b * 3);
    }
    seglog_close(log);
    char p[512];
    TALLY_ASSERT(tu_read_file(tu_seg_path(p, sizeof p, dir, 0, ".seg"), img, len) == 0);
    TALLY_ASSERT(batch_positions(*img, *len, pos, 16) == 6);
}

/* Reopens dir with the segment replaced by img[0..len); checks recovery to `expect_end`. */
static void check_recovers(const char *dir, const uint8_t *img, size_t len, uint64_t expect_end,
                           uint64_t expect_torn, int verify, int append_after)
{
    char p[512];
    tu_seg_path(p, sizeof p, dir, 0, ".seg");
    TALLY_ASSERT(tu_write_file(p, img, len) == 0);
    unlink(tu_seg_path(p, sizeof p, dir, 0, ".idx"));
    struct seglog_options o;
    fast_opts(&o, dir);
    o.verify = verify;
    struct seglog *log;
    struct seglog_open_report rep;
    ASSERT_EQ(seglog_open(&o, &log, &rep), 0);
    ASSERT_EQ(rep.end_offset, expect_end);
    ASSERT_EQ(rep.torn_bytes, expect_torn);
    ASSERT_EQ(seglog_committed_offset(log), expect_end);
    ASSERT_EQ(tu_read_check(log, 0, 0, 24), (long)expect_end);
    if (append_after) {
        uint64_t first;
        ASSERT_EQ(tu_append_keys(log, expect_end, 2, 24, &first), 0);
        ASSERT_EQ(first, expect_end);
        ASSERT_EQ(tu_read_check(log, 0, 0, 24), (long)expect_end + 2);
    }
    seglog_close(log);
    tu_seg_path(p, sizeof p, dir, 0, ".seg");
    if (!append_after) ASSERT_EQ(tu_file_size(p), (long)(len - expect_torn));
}

TEST(torn_tail_every_length_of_last_batch)
{
    const char *dir = test_tmpdir();
    uint8_t *img;
    size_t len, pos[16];
    make_six_batches(dir, &img, &len, pos);
    size_t last = len - pos[5];
    for (size_t cut = 0; cut < last; cut++)
        check_recovers(dir, img, pos[5] + cut, 15, cut, cut % 2, cut % 16 == 1);
    /* The full image loses nothing. */
    check_recovers(dir, img, len, 18, 0, SEGLOG_VERIFY_ALL, 0);
    /* Torn in the middle of the fourth batch too (several batches lost at once). */
    check_recovers(dir, img, pos[3] + 10, 9, 10, SEGLOG_VERIFY_ALL, 1);
    free(img);
}

TEST(bit_flip_every_bit_of_last_two_batches)
{
    const char *dir = test_tmpdir();
    uint8_t *img;
    size_t len, pos[16];
    make_six_batches(dir, &img, &len, pos);
    uint8_t *copy = malloc(len);
    for (size_t byte = pos[4]; byte < len; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, img, len);
            copy[byte] ^= (uint8_t)(1u << bit);
            int in_last = byte >= pos[5];
            uint64_t end = in_last ? 15 : 12;
            uint64_t torn = len - (in_last ? pos[5] : pos[4]);
            check_recovers(dir, copy, len, end, torn, bit % 2, 0);
        }
    }
    free(copy);
    free(img);
}

/* A log of several segments, keys = offsets. Returns the number of segments. */
static int make_segments(const char *dir, uint64_t *bases, uint64_t *end)
{
    struct seglog_options o;
    fast_opts(&o, dir);
    o.segment_bytes = 64 << 10;
    o.batch_bytes_max = 4096;
    o.record_bytes_max = 1000;
    o.index_interval_bytes = 1024;
    struct seglog *log;
    TALLY_ASSERT(seglog_open(&o, &log, NULL) == 0);
    TALLY_ASSERT(tu_append_keys(log, 0, 500, 1000, NULL) == 0);
    *end = seglog_committed_offset(log);
    seglog_close(log);
    return list_bases(dir, bases, 64);
}

static void seg_opts(struct seglog_options *o, const char *dir)
{
    fast_opts(o, dir);
    o->segment_bytes = 64 << 10;
    o->batch_bytes_max = 4096;
    o->record_bytes_max = 1000;
    o->index_interval_bytes = 1024;
}

/* Reads everything; checks key == offset and that exactly [a, b) is missing. */
static void check_all_but(struct seglog *log, uint64_t a, uint64_t b, uint64_t end)
{
    struct seglog_reader *r;
    uint64_t expect = a == 0 ? b : 0;
    ASSERT_EQ(seglog_start_offset(log), expect);
    ASSERT_EQ(seglog_reader_open(log, expect, &r), 0);
    struct seglog_record rec;
    uint8_t buf[1000];
    int rc;
    while ((rc = seglog_reader_next(r, &rec)) == 0) {
        ASSERT_EQ(rec.offset, expect);
        uint32_t l = tu_len(rec.offset, 1000);
        tu_fill(buf, l, rec.offset);
        ASSERT_EQ(rec.len, l);
        ASSERT_MEMEQ(buf, rec.data, l);
        expect++;
        if (expect == a) expect = b;
    }
    ASSERT_EQ(rc, TALLY_EAGAIN);
    ASSERT_EQ(expect, end);
    seglog_reader_close(r);
}

TEST(closed_segment_corruption_refused_then_repaired)
{
    const char *dir = test_tmpdir();
    uint64_t bases[64], end;
    int n = make_segments(dir, bases, &end);
    ASSERT_TRUE(n >= 4);
    char p[512], q[600];
    uint8_t *img;
    size_t len;
    ASSERT_EQ(tu_read_file(tu_seg_path(p, sizeof p, dir, bases[1], ".seg"), &img, &len), 0);
    img[len / 2] ^= 0x40;
    ASSERT_EQ(tu_write_file(p, img, len), 0);
    free(img);

    struct seglog_options o;
    seg_opts(&o, dir);
    struct seglog *log;
    struct seglog_open_report rep;
    ASSERT_EQ(seglog_open(&o, &log, &rep), TALLY_ECORRUPT);
    char name[32];
    snprintf(name, sizeof name, "%020llu.seg", (unsigned long long)bases[1]);
    ASSERT_TRUE(strstr(rep.message, name) != NULL);
    /* Refusing changed nothing. */
    ASSERT_EQ(tu_file_size(p), (long)len);
    snprintf(q, sizeof q, "%s/quarantine", dir);
    ASSERT_EQ(tu_file_size(q), -1);

    o.repair = 1;
    ASSERT_EQ(seglog_open(&o, &log, &rep), 0);
    ASSERT_EQ(rep.segments_quarantined, 1);
    ASSERT_EQ(rep.lost_range_count, 1);
    ASSERT_EQ(rep.lost[0].first, bases[1]);
    ASSERT_EQ(rep.lost[0].end, bases[2]);
    ASSERT_EQ(rep.lost_records, bases[2] - bases[1]);
    ASSERT_EQ(rep.end_offset, end);
    ASSERT_TRUE(strstr(rep.message, "lost offsets") != NULL);
    snprintf(q, sizeof q, "%s/quarantine/%020llu.seg", dir, (unsigned long long)bases[1]);
    ASSERT_EQ(tu_file_size(q), (long)len);
    ASSERT_EQ(tu_file_size(p), -1);
    check_all_but(log, bases[1], bases[2], end);
    /* Readers starting inside the hole land on the next segment. */
    struct seglog_reader *r;
    struct seglog_record rec;
    ASSERT_EQ(seglog_reader_open(log, bases[1] + 1, &r), 0);
    ASSERT_EQ(seglog_reader_next(r, &rec), 0);
    ASSERT_EQ(rec.offset, bases[2]);
    seglog_reader_close(r);
    uint64_t first;
    ASSERT_EQ(tu_append_keys(log, end, 10, 1000, &first), 0);
    ASSERT_EQ(first, end);
    seglog_close(log);

    /* The accepted hole is remembered: a plain open works and reports nothing new. */
    o.repair = 0;
    ASSERT_EQ(seglog_open(&o, &log, &rep), 0);
    ASSERT_EQ(rep.lost_range_count, 0);
    check_all_but(log, bases[1], bases[2], end + 10);
    seglog_close(log);
}

TEST(missing_segment_is_a_gap)
{
    const char *dir = test_tmpdir();
    uint64_t bases[64], end;
    int n = make_segments(dir, bases, &end);
    ASSERT_TRUE(n >= 4);
    char p[512];
    unlink(tu_seg_path(p, sizeof p, dir, bases[2], ".seg"));
    struct seglog_options o;
    seg_opts(&o, dir);
    struct seglog *log;
    struct seglog_open_report rep;
    ASSERT_EQ(seglog_open(&o, &log, &rep), TALLY_ECORRUPT);
    ASSERT_TRUE(strstr(rep.message, "gap") != NULL);
    o.repair = 1;
    ASSERT_EQ(seglog_open(&o, &log, &rep), 0);
    ASSERT_EQ(rep.segments_quarantined, 0);
    ASSERT_EQ(rep.lost_range_count, 1);
    ASSERT_EQ(rep.lost[0].first, bases[2]);
    ASSERT_EQ(rep.lost[0].end, bases[3]);
    check_all_but(log, bases[2], bases[3], end);
    seglog_close(log);
}

TEST(first_segment_quarantined_moves_start)
{
    const char *dir = test_tmpdir();
    uint64_t bases[64], end;
    int n = make_segments(dir, bases, &end);
    ASSERT_TRUE(n >= 3);
    char p[512];
    uint8_t *img;
    size_t len;
    /* A torn end of a closed segment is corruption too (it was fsync'ed before the roll). */
    ASSERT_EQ(tu_read_file(tu_seg_path(p, sizeof p, dir, bases[0], ".seg"), &img, &len), 0);
    ASSERT_EQ(tu_write_file(p, img, len - 5), 0);
    free(img);
    struct seglog_options o;
    seg_opts(&o, dir);
    struct seglog *log;
    struct seglog_open_report rep;
    o.verify = SEGLOG_VERIFY_TAIL;
    ASSERT_EQ(seglog_open(&o, &log, &rep), TALLY_ECORRUPT);
    o.repair = 1;
    ASSERT_EQ(seglog_open(&o, &log, &rep), 0);
    ASSERT_EQ(rep.lost_range_count, 1);
    ASSERT_EQ(rep.lost[0].first, 0);
    ASSERT_EQ(rep.lost[0].end, bases[1]);
    ASSERT_EQ(rep.start_offset, bases[1]);
    ASSERT_EQ(seglog_start_offset(log), bases[1]);
    struct seglog_reader *r;
    ASSERT_EQ(seglog_reader_open(log, 0, &r), TALLY_ERANGE);
    check_all_but(log, 0, bases[1], end);
    seglog_close(log);
}

TEST(verify_tail_trusts_indexed_middle_but_readers_catch_it)
{
    const char *dir = test_tmpdir();
    uint64_t bases[64], end;
    int n = make_segments(dir, bases, &end);
    ASSERT_TRUE(n >= 3);
    char p[512];
    uint8_t *img;
    size_t len, pos[256];
    ASSERT_EQ(tu_read_file(tu_seg_path(p, sizeof p, dir, bases[0], ".seg"), &img, &len), 0);
    int nb = batch_positions(img, len, pos, 256);
    ASSERT_TRUE(nb > 4);
    img[pos[1] + 60] ^= 1; /* a payload byte of the second batch, far before the last entry */
    ASSERT_EQ(tu_write_file(p, img, len), 0);
    free(img);
    struct seglog_options o;
    seg_opts(&o, dir);
    o.verify = SEGLOG_VERIFY_TAIL;
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    struct seglog_reader *r;
    ASSERT_EQ(seglog_reader_open(log, 0, &r), 0);
    struct seglog_record rec;
    int rc;
    uint64_t got = 0;
    while ((rc = seglog_reader_next(r, &rec)) == 0)
        got++;
    ASSERT_EQ(rc, TALLY_ECORRUPT);
    ASSERT_TRUE(got > 0 && got < bases[1]);
    ASSERT_EQ(seglog_reader_next(r, &rec), TALLY_ECORRUPT); /* stays before it */
    seglog_reader_close(r);
    seglog_close(log);
    /* VERIFY_ALL refuses it at open. */
    o.verify = SEGLOG_VERIFY_ALL;
    ASSERT_EQ(seglog_open(&o, &log, NULL), TALLY_ECORRUPT);
}

TEST(active_segment_checkpoint_under_verify_tail)
{
    const char *dir = test_tmpdir();
    uint64_t bases[64], end;
    int n = make_segments(dir, bases, &end);
    /* The active segment's index was written at close: torn bytes after it are cut. */
    char p[512];
    tu_seg_path(p, sizeof p, dir, bases[n - 1], ".seg");
    long size = tu_file_size(p);
    FILE *f = fopen(p, "ab");
    fwrite("garbage-garbage-garbage", 1, 23, f);
    fclose(f);
    struct seglog_options o;
    seg_opts(&o, dir);
    o.verify = SEGLOG_VERIFY_TAIL;
    struct seglog *log;
    struct seglog_open_report rep;
    ASSERT_EQ(seglog_open(&o, &log, &rep), 0);
    ASSERT_EQ(rep.torn_bytes, 23);
    ASSERT_EQ(rep.end_offset, end);
    ASSERT_EQ(tu_file_size(p), size);
    ASSERT_EQ(tu_read_check(log, 0, 0, 1000), (long)end);
    seglog_close(log);
}

TEST(stray_tmp_files_removed_and_foreign_files_ignored)
{
    const char *dir = test_tmpdir();
    char p[512];
    snprintf(p, sizeof p, "%s/00000000000000000000.idx.tmp", dir);
    ASSERT_EQ(tu_write_file(p, (const uint8_t *)"x", 1), 0);
    char other[512];
    snprintf(other, sizeof other, "%s/README", dir);
    ASSERT_EQ(tu_write_file(other, (const uint8_t *)"x", 1), 0);
    struct seglog_options o;
    fast_opts(&o, dir);
    struct seglog *log;
    ASSERT_EQ(seglog_open(&o, &log, NULL), 0);
    ASSERT_EQ(tu_file_size(p), -1);
    ASSERT_EQ(tu_file_size(other), 1);
    seglog_close(log);
}

int main(void)
{
    diag_init(DIAG_OFF, NULL);
    g_fault = fsio_fault_new(NULL, 1);
    fsio_fault_skip_real_sync(g_fault, 1);
    RUN(torn_tail_every_length_of_last_batch);
    RUN(bit_flip_every_bit_of_last_two_batches);
    RUN(closed_segment_corruption_refused_then_repaired);
    RUN(missing_segment_is_a_gap);
    RUN(first_segment_quarantined_moves_start);
    RUN(verify_tail_trusts_indexed_middle_but_readers_catch_it);
    RUN(active_segment_checkpoint_under_verify_tail);
    RUN(stray_tmp_files_removed_and_foreign_files_ignored);
    int r = test_summary();
    fsio_fault_free(g_fault);
    return r;
}
