/*
 * Minimal unit-test harness, header only. Each tests/unit/test_<module>.c is one binary:
 *
 *     TEST(round_trip) { ASSERT_EQ(1, 1); }
 *     int main(void) { RUN(round_trip); return test_summary(); }
 *
 * Each test prints "PASS <binary>.<test>" or "FAIL <binary>.<test>: file:line: what"; tests/run.sh
 * counts those lines. A failed assertion ends the current test (longjmp), not the binary.
 * test_tmpdir() gives a fresh directory under $TMPDIR per call (removed by test_summary()).
 */
#ifndef TALLY_TEST_H
#define TALLY_TEST_H

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static jmp_buf test_jmp_;
static int test_failed_count_, test_passed_count_;
static const char *test_current_;
static char test_tmpdirs_[64][256];
static int test_tmpdir_count_;

#define TEST(name) static void name(void)

#define TEST_FAIL_(...)                                                                         \
    do {                                                                                        \
        printf("FAIL %s: %s:%d: ", test_current_, __FILE__, __LINE__);                          \
        printf(__VA_ARGS__);                                                                    \
        printf("\n");                                                                           \
        fflush(stdout);                                                                         \
        longjmp(test_jmp_, 1);                                                                  \
    } while (0)

#define ASSERT_TRUE(c)                                                                          \
    do {                                                                                        \
        if (!(c)) TEST_FAIL_("expected %s", #c);                                                \
    } while (0)
#define ASSERT_EQ(a, b)                                                                         \
    do {                                                                                        \
        long long a_ = (long long)(a), b_ = (long long)(b);                                     \
        if (a_ != b_) TEST_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_);                     \
    } while (0)
#define ASSERT_NE(a, b)                                                                         \
    do {                                                                                        \
        long long a_ = (long long)(a), b_ = (long long)(b);                                     \
        if (a_ == b_) TEST_FAIL_("%s != %s: both %lld", #a, #b, a_);                            \
    } while (0)
#define ASSERT_STREQ(a, b)                                                                      \
    do {                                                                                        \
        const char *a_ = (a), *b_ = (b);                                                        \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                  \
            TEST_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)",                \
                       b_ ? b_ : "(null)");                                                     \
    } while (0)
#define ASSERT_MEMEQ(a, b, n)                                                                   \
    do {                                                                                        \
        if (memcmp((a), (b), (n)) != 0) TEST_FAIL_("%s and %s differ", #a, #b);                 \
    } while (0)

static inline const char *test_binary_name_(void)
{
    static char name[600];
    if (!name[0]) {
        char buf[512];
        ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = 0;
        const char *slash = strrchr(buf, '/');
        snprintf(name, sizeof name, "%s", slash ? slash + 1 : buf);
    }
    return name;
}

static inline void test_run_(const char *name, void (*fn)(void))
{
    char full[1024];
    snprintf(full, sizeof full, "%s.%s", test_binary_name_(), name);
    test_current_ = full;
    if (setjmp(test_jmp_) == 0) {
        fn();
        printf("PASS %s\n", full);
        test_passed_count_++;
    } else {
        test_failed_count_++;
    }
    fflush(stdout);
}
#define RUN(name) test_run_(#name, name)

/* A fresh empty directory; the harness owns the path string and removes the tree at the end. */
static inline const char *test_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    if (!base) base = "/tmp";
    if (test_tmpdir_count_ >= 64) abort();
    char *p = test_tmpdirs_[test_tmpdir_count_++];
    snprintf(p, 256, "%s/tally-test-XXXXXX", base);
    if (!mkdtemp(p)) abort();
    return p;
}

static int test_rm_cb_(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static inline int test_summary(void)
{
    for (int i = 0; i < test_tmpdir_count_; i++)
        nftw(test_tmpdirs_[i], test_rm_cb_, 16, FTW_DEPTH | FTW_PHYS);
    return test_failed_count_ ? 1 : 0;
}

#endif
