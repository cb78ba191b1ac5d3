/*
 * decimal: unsigned integers as decimal text, for hot paths where snprintf costs too much
 * (HTTP status lines and lengths, JSON numbers, small JSON answers). Pure: any thread.
 */
#ifndef TALLY_DECIMAL_H
#define TALLY_DECIMAL_H

#include <stdint.h>

#define DECIMAL_U64_BYTES_MAX 20 /* digits of UINT64_MAX; no NUL is written */

/* Writes v's digits at p (at most DECIMAL_U64_BYTES_MAX, no NUL); returns the end. */
static inline char *decimal_u64(char *p, uint64_t v)
{
    char tmp[DECIMAL_U64_BYTES_MAX];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

#endif
