/*
 * One error space for all of Tally.
 *
 * Every fallible function returns int: 0 (TALLY_OK) on success, a negative TALLY_E* code on
 * failure. tally_strerror() turns a code into a static string (never freed, any thread).
 * Programmer errors are assertions (TALLY_ASSERT), which stay on in release builds.
 */
#ifndef TALLY_ERROR_H
#define TALLY_ERROR_H

enum tally_err {
    TALLY_OK = 0,
    TALLY_EINVAL = -1,    /* invalid argument or input */
    TALLY_EIO = -2,       /* I/O error from the OS */
    TALLY_ENOSPC = -3,    /* no space left on the device */
    TALLY_ECORRUPT = -4,  /* stored data failed validation */
    TALLY_EFULL = -5,     /* a bounded queue or buffer is full: retry later */
    TALLY_ENOMEM = -6,    /* allocation failed */
    TALLY_EPOISONED = -7, /* a previous fatal error disabled this handle */
    TALLY_ELOCKED = -8,   /* another process holds the data directory */
    TALLY_ENOENT = -9,    /* no such file, site or key */
    TALLY_ECLOSED = -10,  /* the handle is shutting down */
    TALLY_ETOOBIG = -11,  /* an input exceeds a configured limit */
    TALLY_ERANGE = -12,   /* an offset or value is out of range */
    TALLY_EAGAIN = -13,   /* not ready yet: try again */
    TALLY_ETIMEDOUT = -14, /* a time budget ran out */
    TALLY_ENOTSUP = -15,  /* this path cannot answer (another one can) */
};

/* Static description of a TALLY_E* code; unknown codes give "unknown error". Any thread. */
const char *tally_strerror(int err);

/* Maps an errno value to a TALLY_E* code (ENOSPC/EDQUOT -> ENOSPC, ENOMEM -> ENOMEM, else EIO). */
int tally_err_from_errno(int errnum);

void tally_assert_fail(const char *expr, const char *file, int line);

/* Always on, also in release builds. */
#define TALLY_ASSERT(e) ((e) ? (void)0 : tally_assert_fail(#e, __FILE__, __LINE__))

#define TALLY_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
