#include "tally/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

const char *tally_strerror(int err)
{
    switch (err) {
    case TALLY_OK: return "success";
    case TALLY_EINVAL: return "invalid argument";
    case TALLY_EIO: return "I/O error";
    case TALLY_ENOSPC: return "no space left on device";
    case TALLY_ECORRUPT: return "data corrupt";
    case TALLY_EFULL: return "queue full";
    case TALLY_ENOMEM: return "out of memory";
    case TALLY_EPOISONED: return "disabled by an earlier fatal error";
    case TALLY_ELOCKED: return "data directory locked by another process";
    case TALLY_ENOENT: return "not found";
    case TALLY_ECLOSED: return "shutting down";
    case TALLY_ETOOBIG: return "too large";
    case TALLY_ERANGE: return "out of range";
    case TALLY_EAGAIN: return "try again";
    case TALLY_ETIMEDOUT: return "time budget exceeded";
    case TALLY_ENOTSUP: return "not supported on this path";
    default: return "unknown error";
    }
}

int tally_err_from_errno(int errnum)
{
    switch (errnum) {
    case ENOSPC:
    case EDQUOT: return TALLY_ENOSPC;
    case ENOMEM: return TALLY_ENOMEM;
    case ENOENT: return TALLY_ENOENT;
    default: return TALLY_EIO;
    }
}

void tally_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "tally: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}
