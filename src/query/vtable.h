/*
 * vtable: the memory of the open-addressing visitor tables of the streaming executors (funnel.c's
 * stream plan, qscan.c's stream form). A table is mapped, not malloc'd: zero pages, and huge
 * pages where the system grants them (a visitor table of 10^5..10^6 entries is random access
 * over megabytes: with 4 KiB pages nearly every probe also missed the TLB; measured on
 * bench/funnel). Header-only; any thread (each table belongs to one query).
 */
#ifndef TALLY_QUERY_VTABLE_H
#define TALLY_QUERY_VTABLE_H

#include <stddef.h>
#include <sys/mman.h>

#define VTABLE_HUGE_BYTES (2u << 20) /* tables at least this large ask for huge pages */

/* bytes of zeroed memory, or NULL. */
static inline void *vtable_map(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    if (bytes >= VTABLE_HUGE_BYTES) (void)madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

/* Releases what vtable_map returned (p may be NULL). */
static inline void vtable_unmap(void *p, size_t bytes)
{
    if (p) munmap(p, bytes);
}

#endif
