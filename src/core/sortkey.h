/*
 * sortkey: in-place sorts of arrays of one element type under an order given as a macro,
 * generated per type with SORTKEY_DEFINE(name, T, LESS). LESS(a, b) takes two pointers to T and
 * is true when *a must come before *b (a strict weak order).
 *
 * Why not qsort: glibc's qsort is a merge sort that calls the comparison through a function
 * pointer and copies through a malloc'd buffer. The rollup flush sorts millions of visitor ids
 * and cell keys per rebuild (qsort was a sixth of the flushing thread's time); with the order in
 * line the same work takes a fraction of it.
 *
 * Algorithm: introsort. Quicksort with a median-of-three pivot; slices of SORTKEY_SMALL
 * elements or fewer by insertion sort; past 2 * log2(n) levels of partitioning a slice goes to
 * heapsort, so the worst case stays O(n log n) on any input (sorted, reversed, all equal,
 * adversarial). The smaller side is recursed into and the larger one looped on, so the stack
 * depth is at most log2(n) frames. Not stable: equal elements may come out in any order.
 *
 * Header-only, no allocation; any thread (the array belongs to the caller). sortkey_u64 is
 * the one instance for plain 64-bit integers.
 */
#ifndef TALLY_CORE_SORTKEY_H
#define TALLY_CORE_SORTKEY_H

#include <stddef.h>
#include <stdint.h>

#define SORTKEY_SMALL 16

#define SORTKEY_DEFINE(name, T, LESS)                                                              \
    static inline void name##_insertion_(T *a, size_t n)                                           \
    {                                                                                              \
        for (size_t i = 1; i < n; i++) {                                                           \
            T x = a[i];                                                                            \
            size_t j = i;                                                                          \
            while (j > 0 && LESS(&x, &a[j - 1])) {                                                 \
                a[j] = a[j - 1];                                                                   \
                j--;                                                                               \
            }                                                                                      \
            a[j] = x;                                                                              \
        }                                                                                          \
    }                                                                                              \
    static inline void name##_sift_(T *a, size_t root, size_t n)                                   \
    {                                                                                              \
        T x = a[root];                                                                             \
        for (;;) {                                                                                 \
            size_t c = 2 * root + 1;                                                               \
            if (c >= n) break;                                                                     \
            if (c + 1 < n && LESS(&a[c], &a[c + 1])) c++;                                          \
            if (!LESS(&x, &a[c])) break;                                                           \
            a[root] = a[c];                                                                        \
            root = c;                                                                              \
        }                                                                                          \
        a[root] = x;                                                                               \
    }                                                                                              \
    static inline void name##_heap_(T *a, size_t n)                                                \
    {                                                                                              \
        for (size_t i = n / 2; i-- > 0;)                                                           \
            name##_sift_(a, i, n);                                                                 \
        for (size_t end = n; end-- > 1;) {                                                         \
            T t = a[0];                                                                            \
            a[0] = a[end];                                                                         \
            a[end] = t;                                                                            \
            name##_sift_(a, 0, end);                                                               \
        }                                                                                          \
    }                                                                                              \
    static inline void name##_intro_(T *a, size_t n, unsigned depth)                               \
    {                                                                                              \
        while (n > SORTKEY_SMALL) {                                                                \
            if (depth-- == 0) {                                                                    \
                name##_heap_(a, n);                                                                \
                return;                                                                            \
            }                                                                                      \
            /* a[0] <= a[n / 2] <= a[n - 1]; the middle is the pivot */                            \
            T *m = a + n / 2, *l = a + n - 1, t;                                                   \
            if (LESS(m, a)) t = *m, *m = *a, *a = t;                                               \
            if (LESS(l, m)) {                                                                      \
                t = *l, *l = *m, *m = t;                                                           \
                if (LESS(m, a)) t = *m, *m = *a, *a = t;                                           \
            }                                                                                      \
            T p = *m;                                                                              \
            /* Hoare partition over [0, n): afterwards [0, j] <= p <= [j + 1, n) */                \
            size_t i = 0, j = n - 1;                                                               \
            for (;;) {                                                                             \
                while (LESS(&a[i], &p))                                                            \
                    i++;                                                                           \
                while (LESS(&p, &a[j]))                                                            \
                    j--;                                                                           \
                if (i >= j) break;                                                                 \
                t = a[i], a[i] = a[j], a[j] = t;                                                   \
                i++, j--;                                                                          \
            }                                                                                      \
            size_t left = j + 1, right = n - left;                                                 \
            if (left < right) {                                                                    \
                name##_intro_(a, left, depth);                                                     \
                a += left;                                                                         \
                n = right;                                                                         \
            } else {                                                                               \
                name##_intro_(a + left, right, depth);                                             \
                n = left;                                                                          \
            }                                                                                      \
        }                                                                                          \
        name##_insertion_(a, n);                                                                   \
    }                                                                                              \
    static inline void name(T *a, size_t n)                                                        \
    {                                                                                              \
        unsigned depth = 0;                                                                        \
        for (size_t k = n; k > 1; k >>= 1)                                                         \
            depth += 2;                                                                            \
        name##_intro_(a, n, depth);                                                                \
    }

/* Plain 64-bit integers, ascending (visitor ids: cells and sketches). */
#define SORTKEY_U64_LESS(a, b) (*(a) < *(b))
SORTKEY_DEFINE(sortkey_u64, uint64_t, SORTKEY_U64_LESS)

#endif
