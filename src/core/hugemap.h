/*
 * hugemap: zeroed memory for large random-access tables (visitor tables of the streaming
 * executors, query/funnel.c and query/qscan.c; the arrays of big rollup/u64map.h maps). Mapped,
 * not malloc'd: zero pages from the kernel, returned to the system when freed, and, from
 * HUGEMAP_HUGE_BYTES on, huge pages where the system grants them. A table of 10^5..10^6 entries
 * is random access over megabytes: with 4 KiB pages nearly every probe also missed the TLB
 * (measured on bench/funnel), and a map grown by doubling through 4 KiB pages took ~12,000 page
 * faults a query (perf, bench/query's filter2). Header-only; any thread.
 */
#ifndef TALLY_CORE_HUGEMAP_H
#define TALLY_CORE_HUGEMAP_H

#include <stddef.h>
#include <sys/mman.h>

#define HUGEMAP_HUGE_BYTES (2u << 20) /* mappings at least this large ask for huge pages */

/* bytes of zeroed memory, or NULL. */
static inline void *hugemap_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    if (bytes >= HUGEMAP_HUGE_BYTES) (void)madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

/* Releases what hugemap_alloc returned for the same bytes (p may be NULL). */
static inline void hugemap_free(void *p, size_t bytes)
{
    if (p) munmap(p, bytes);
}

#endif
