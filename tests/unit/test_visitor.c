/* Visitor ids and daily salts: stability, separation, rotation, persistence, file safety. */
#include "test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/stat.h>

#include "core/diag.h"
#include "ingest/timefmt.h"
#include "ingest/visitor.h"
#include "tally/error.h"

#define DAY TIMEFMT_DAY_MS
static const int64_t T0 = 1767225600000LL + 10 * 3600 * 1000; /* 2026-01-01T10:00Z */

static uint64_t anon(const struct visitor_salts *s, int64_t ts, const char *site, const char *ip,
                     const char *ua)
{
    return visitor_hash_anonymous(s, ts, site, strlen(site), ip, strlen(ip), ua, strlen(ua));
}

static struct visitor_salts *open_at(const char *dir, int64_t now)
{
    struct visitor_salts *s = NULL;
    int err = visitor_salts_open(dir, now, &s);
    if (err) TEST_FAIL_("visitor_salts_open: %s", tally_strerror(err));
    return s;
}

static bool file_exists(const char *dir, const char *name)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

TEST(fresh_dir_creates_file)
{
    const char *dir = test_tmpdir();
    struct visitor_salts *s = open_at(dir, T0);
    ASSERT_TRUE(file_exists(dir, "salts"));
    ASSERT_TRUE(!file_exists(dir, "salts.tmp"));
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/salts", dir);
    ASSERT_EQ(stat(p, &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0600);
    ASSERT_EQ(st.st_size, 24 + 2 * 24 + 8); /* today and tomorrow */
    int64_t days[4];
    int64_t today = timefmt_day_of_ms(T0);
    ASSERT_EQ(visitor_salts_days(s, days, 4), 2);
    ASSERT_EQ(days[0], today);
    ASSERT_EQ(days[1], today + 1);
    visitor_salts_close(s);
    visitor_salts_close(NULL);
}

TEST(stable_within_day_and_separated)
{
    struct visitor_salts *s = open_at(test_tmpdir(), T0);
    const char *ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0";
    uint64_t h = anon(s, T0, "example.com", "203.0.113.7", ua);
    ASSERT_TRUE(h == anon(s, T0 + 3600 * 1000, "example.com", "203.0.113.7", ua));
    ASSERT_TRUE(h == anon(s, T0 - 10 * 3600 * 1000, "example.com", "203.0.113.7", ua));
    ASSERT_TRUE(h != anon(s, T0, "example.org", "203.0.113.7", ua));
    ASSERT_TRUE(h != anon(s, T0, "example.com", "203.0.113.8", ua));
    ASSERT_TRUE(h != anon(s, T0, "example.com", "203.0.113.7", "curl/8.0"));
    /* tomorrow's salt already exists and differs */
    ASSERT_TRUE(h != anon(s, T0 + DAY, "example.com", "203.0.113.7", ua));
    /* length prefixes: moving a byte between parts changes the hash */
    ASSERT_TRUE(anon(s, T0, "ab", "c", "d") != anon(s, T0, "a", "bc", "d"));
    /* client ids: stable across days, separated by site and id, unlike anonymous ids */
    uint64_t c = visitor_hash_client(s, "example.com", 11, "user-1", 6);
    ASSERT_TRUE(c == visitor_hash_client(s, "example.com", 11, "user-1", 6));
    ASSERT_TRUE(c != visitor_hash_client(s, "example.org", 11, "user-1", 6));
    ASSERT_TRUE(c != visitor_hash_client(s, "example.com", 11, "user-2", 6));
    ASSERT_TRUE(visitor_hash_client(s, "example.com", 11, "x", 1) !=
                anon(s, T0, "example.com", "", "x"));
    visitor_salts_close(s);
}

TEST(rotation_and_deletion)
{
    const char *dir = test_tmpdir();
    struct visitor_salts *s = open_at(dir, T0);
    int64_t today = timefmt_day_of_ms(T0), days[4];
    const char *ip = "198.51.100.1", *ua = "UA";
    uint64_t d0 = anon(s, T0, "e.com", ip, ua), d1 = anon(s, T0 + DAY, "e.com", ip, ua);

    /* next day: yesterday's salt kept, so its events still hash the same */
    ASSERT_EQ(visitor_salts_rotate(s, T0 + DAY), 0);
    ASSERT_EQ(visitor_salts_days(s, days, 4), 3);
    ASSERT_EQ(days[0], today);
    ASSERT_EQ(days[2], today + 2);
    ASSERT_TRUE(anon(s, T0, "e.com", ip, ua) == d0);
    ASSERT_TRUE(anon(s, T0 + DAY, "e.com", ip, ua) == d1);
    /* rotating again the same day changes nothing */
    ASSERT_EQ(visitor_salts_rotate(s, T0 + DAY + 3600 * 1000), 0);
    ASSERT_TRUE(anon(s, T0, "e.com", ip, ua) == d0);

    /* two days later: day 0's salt is gone (>= 48 h after its start); its events fall back to
     * today's salt, so the old id is unrecoverable */
    ASSERT_EQ(visitor_salts_rotate(s, T0 + 2 * DAY), 0);
    ASSERT_EQ(visitor_salts_days(s, days, 4), 3);
    ASSERT_EQ(days[0], today + 1);
    uint64_t d2 = anon(s, T0 + 2 * DAY, "e.com", ip, ua);
    ASSERT_TRUE(anon(s, T0, "e.com", ip, ua) != d0);
    ASSERT_TRUE(anon(s, T0, "e.com", ip, ua) == d2);
    ASSERT_TRUE(anon(s, T0 + DAY, "e.com", ip, ua) == d1);
    ASSERT_TRUE(d0 != d1 && d1 != d2 && d0 != d2);

    /* a long pause: only today and tomorrow (yesterday's is never created afresh) */
    ASSERT_EQ(visitor_salts_rotate(s, T0 + 10 * DAY), 0);
    ASSERT_EQ(visitor_salts_days(s, days, 4), 2);
    ASSERT_EQ(days[0], today + 10);
    /* the file agrees: reopening gives the same days and hashes */
    uint64_t d10 = anon(s, T0 + 10 * DAY, "e.com", ip, ua);
    uint64_t c = visitor_hash_client(s, "e.com", 5, "id", 2);
    visitor_salts_close(s);
    s = open_at(dir, T0 + 10 * DAY);
    ASSERT_EQ(visitor_salts_days(s, days, 4), 2);
    ASSERT_EQ(days[0], today + 10);
    ASSERT_TRUE(anon(s, T0 + 10 * DAY, "e.com", ip, ua) == d10);
    ASSERT_TRUE(visitor_hash_client(s, "e.com", 5, "id", 2) == c);
    visitor_salts_close(s);
}

TEST(persisted_across_reopen)
{
    const char *dir = test_tmpdir();
    struct visitor_salts *s = open_at(dir, T0);
    uint64_t a = anon(s, T0, "e.com", "::1", "UA");
    uint64_t c = visitor_hash_client(s, "e.com", 5, "u", 1);
    visitor_salts_close(s);
    s = open_at(dir, T0 + 60 * 1000);
    ASSERT_TRUE(anon(s, T0, "e.com", "::1", "UA") == a);
    ASSERT_TRUE(visitor_hash_client(s, "e.com", 5, "u", 1) == c);
    visitor_salts_close(s);
    /* another data dir: other keys */
    s = open_at(test_tmpdir(), T0);
    ASSERT_TRUE(anon(s, T0, "e.com", "::1", "UA") != a);
    ASSERT_TRUE(visitor_hash_client(s, "e.com", 5, "u", 1) != c);
    visitor_salts_close(s);
}

static void write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    fwrite(p, 1, n, f);
    fclose(f);
}

static size_t read_file(const char *dir, const char *name, uint8_t *p, size_t cap)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(p, 1, cap, f);
    fclose(f);
    return n;
}

TEST(file_safety)
{
    const char *dir = test_tmpdir();
    struct visitor_salts *s = open_at(dir, T0);
    uint64_t a = anon(s, T0, "e.com", "1.2.3.4", "UA");
    visitor_salts_close(s);

    /* a stale salts.tmp (crash between write and rename) is ignored and removed */
    write_file(dir, "salts.tmp", "garbage", 7);
    s = open_at(dir, T0);
    ASSERT_TRUE(!file_exists(dir, "salts.tmp"));
    ASSERT_TRUE(anon(s, T0, "e.com", "1.2.3.4", "UA") == a);
    visitor_salts_close(s);

    /* any damage to the file is refused, never silently re-keyed */
    uint8_t good[256], bad[256];
    size_t n = read_file(dir, "salts", good, sizeof good);
    ASSERT_EQ(n, 80);
    ASSERT_MEMEQ(good, "TSLT", 4);
    for (size_t i = 0; i < n; i += 7) {
        memcpy(bad, good, n);
        bad[i] ^= 0x10;
        write_file(dir, "salts", bad, n);
        struct visitor_salts *t = NULL;
        ASSERT_EQ(visitor_salts_open(dir, T0, &t), TALLY_ECORRUPT);
        ASSERT_TRUE(t == NULL);
    }
    write_file(dir, "salts", good, n - 1); /* truncated */
    struct visitor_salts *t = NULL;
    ASSERT_EQ(visitor_salts_open(dir, T0, &t), TALLY_ECORRUPT);
    write_file(dir, "salts", good, 0); /* empty */
    ASSERT_EQ(visitor_salts_open(dir, T0, &t), TALLY_ECORRUPT);
    write_file(dir, "salts", good, n);
    s = open_at(dir, T0);
    ASSERT_TRUE(anon(s, T0, "e.com", "1.2.3.4", "UA") == a);
    visitor_salts_close(s);

    /* an unwritable directory: open fails with an I/O error, nothing is leaked */
    ASSERT_TRUE(visitor_salts_open("/nonexistent/dir", T0, &t) < 0);
    ASSERT_TRUE(t == NULL);
}

struct race {
    struct visitor_salts *s;
    atomic_int stop;
    atomic_int bad;
};

static void *hasher(void *p)
{
    struct race *r = p;
    uint64_t ref = visitor_hash_client(r->s, "e.com", 5, "u", 1);
    while (!r->stop) {
        if (visitor_hash_client(r->s, "e.com", 5, "u", 1) != ref) r->bad = 1;
        (void)anon(r->s, T0, "e.com", "1.1.1.1", "UA");
    }
    return NULL;
}

/* Hashing concurrently with rotation is safe (run under ASan/TSan-like stress). */
TEST(concurrent_rotation)
{
    struct race r = {open_at(test_tmpdir(), T0), 0, 0};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, hasher, &r);
    for (int d = 1; d <= 20; d++)
        ASSERT_EQ(visitor_salts_rotate(r.s, T0 + d * DAY), 0);
    r.stop = 1;
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    ASSERT_EQ(r.bad, 0);
    visitor_salts_close(r.s);
}

int main(void)
{
    diag_init(DIAG_OFF, NULL); /* the corrupt-file cases log errors on purpose */
    RUN(fresh_dir_creates_file);
    RUN(stable_within_day_and_separated);
    RUN(rotation_and_deletion);
    RUN(persisted_across_reopen);
    RUN(file_safety);
    RUN(concurrent_rotation);
    return test_summary();
}
