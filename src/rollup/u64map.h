/*
 * u64map: an open-addressing hash map from non-zero 64-bit keys to 64-bit values (linear
 * probing, at most half full, backward-shift deletion so there are no tombstones). Header-only;
 * one thread at a time. Key 0 is reserved: callers map it to another value.
 * Arrays of HUGEMAP_HUGE_BYTES or more come from core/hugemap.h (mapped, huge pages: see there
 * why), smaller ones from malloc.
 */
#ifndef TALLY_ROLLUP_U64MAP_H
#define TALLY_ROLLUP_U64MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/hugemap.h"

struct u64map {
    uint64_t *keys;
    uint64_t *vals;
    size_t cap; /* power of two, or 0 */
    size_t n;
};

static inline uint64_t u64map_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
}

/* cap entries of 8 bytes: zeroed (keys) or not (values); NULL on failure. */
static inline uint64_t *u64map_array(size_t cap, bool zero)
{
    size_t bytes = cap * sizeof(uint64_t);
    if (bytes < HUGEMAP_HUGE_BYTES) return zero ? calloc(cap, sizeof(uint64_t)) : malloc(bytes);
    return hugemap_alloc(bytes); /* zero pages */
}

static inline void u64map_array_free(uint64_t *p, size_t cap)
{
    if (!p) return;
    if (cap * sizeof(uint64_t) < HUGEMAP_HUGE_BYTES)
        free(p);
    else
        hugemap_free(p, cap * sizeof(uint64_t));
}

static inline void u64map_free(struct u64map *m)
{
    u64map_array_free(m->keys, m->cap);
    u64map_array_free(m->vals, m->cap);
    memset(m, 0, sizeof *m);
}

static inline void u64map_clear(struct u64map *m)
{
    if (m->keys) memset(m->keys, 0, m->cap * sizeof *m->keys);
    m->n = 0;
}

static inline uint64_t *u64map_get(const struct u64map *m, uint64_t k)
{
    if (!m->cap) return NULL;
    size_t mask = m->cap - 1, i = (size_t)u64map_hash(k) & mask;
    for (;;) {
        if (m->keys[i] == k) return &m->vals[i];
        if (m->keys[i] == 0) return NULL;
        i = (i + 1) & mask;
    }
}

static inline bool u64map_grow(struct u64map *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint64_t *keys = u64map_array(cap, true), *vals = u64map_array(cap, false);
    if (!keys || !vals) {
        u64map_array_free(keys, cap);
        u64map_array_free(vals, cap);
        return false;
    }
    for (size_t j = 0; j < m->cap; j++) {
        if (!m->keys[j]) continue;
        size_t i = (size_t)u64map_hash(m->keys[j]) & (cap - 1);
        while (keys[i]) i = (i + 1) & (cap - 1);
        keys[i] = m->keys[j];
        vals[i] = m->vals[j];
    }
    u64map_array_free(m->keys, m->cap);
    u64map_array_free(m->vals, m->cap);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return true;
}

/* Sets m[k] = v. false on allocation failure. */
static inline bool u64map_put(struct u64map *m, uint64_t k, uint64_t v)
{
    if ((m->n + 1) * 2 > m->cap && !u64map_grow(m)) return false;
    size_t mask = m->cap - 1, i = (size_t)u64map_hash(k) & mask;
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & mask;
    if (!m->keys[i]) {
        m->keys[i] = k;
        m->n++;
    }
    m->vals[i] = v;
    return true;
}

/* Removes k; true when it was present. */
static inline bool u64map_del(struct u64map *m, uint64_t k)
{
    if (!m->cap) return false;
    size_t mask = m->cap - 1, i = (size_t)u64map_hash(k) & mask;
    while (m->keys[i] != k) {
        if (!m->keys[i]) return false;
        i = (i + 1) & mask;
    }
    /* backward-shift: move later entries of the probe run into the hole */
    size_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->keys[j]) break;
        size_t home = (size_t)u64map_hash(m->keys[j]) & mask;
        /* can the entry at j move to hole? only if hole lies cyclically in [home, j) */
        bool move = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (move) {
            m->keys[hole] = m->keys[j];
            m->vals[hole] = m->vals[j];
            hole = j;
        }
    }
    m->keys[hole] = 0;
    m->n--;
    return true;
}

#endif
