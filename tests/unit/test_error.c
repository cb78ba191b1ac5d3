#include "test.h"
#include "tally/error.h"
#include "core/diag.h"
#include <errno.h>

TEST(strerror_known_and_unknown)
{
    ASSERT_STREQ(tally_strerror(TALLY_ENOSPC), "no space left on device");
    ASSERT_STREQ(tally_strerror(-999), "unknown error");
    ASSERT_EQ(tally_err_from_errno(ENOSPC), TALLY_ENOSPC);
    ASSERT_EQ(tally_err_from_errno(EIO), TALLY_EIO);
}

TEST(diag_rate_limits_repeats)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = tmpfile();
    diag_init(DIAG_INFO, f);
    for (int i = 0; i < 50; i++) diag_warn("repeat %d", i);
    diag_debug("hidden");
    fflush(f);
    fseek(f, 0, SEEK_SET);
    int lines = 0;
    while (getline(&buf, &len, f) > 0) {
        lines++;
        ASSERT_TRUE(strstr(buf, " WARN repeat ") != NULL);
    }
    free(buf);
    fclose(f);
    diag_init(DIAG_INFO, NULL);
    ASSERT_EQ(lines, DIAG_BURST_MAX);
}

int main(void)
{
    RUN(strerror_known_and_unknown);
    RUN(diag_rate_limits_repeats);
    return test_summary();
}
