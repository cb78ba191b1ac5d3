/*
 * dedup: see dedup.h for the rule and the bound.
 *
 * PERSISTED LAYOUT (meta CF): prefix | hour (u32 BE) -> blob of n x (u64 LE key, u64 LE first)
 * where hour = first / 3,600,000 of the entries in it. One blob per hour of first arrivals, so
 * a flush rewrites the current hour's blob (one put) instead of writing one key per id, and
 * expiry deletes whole hours. A blob may keep an entry that a later first arrival of the same
 * id replaced (in a later hour); loading reads the hours in order, so the later one wins, and
 * keeps only what the window and the entry bound keep in memory: the live set is always the
 * newest min(n, entries_max) entries of the window in (first, key) order, because eviction
 * only ever removes the oldest and new entries are never older than any live one.
 */
#include "rollup/dedup.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "rollup/u64map.h"
#include "tally/error.h"

#define HOUR_MS 3600000LL
#define HOURS_KEPT 27 /* ring of recent arrival hours: the 24 h window plus slack */

struct hent {
    int64_t first;
    uint64_t key;
};

struct hour_keys {
    int64_t hour; /* -1: unused */
    uint64_t *keys;
    size_t n, cap;
    bool dirty;
};

struct dedup {
    char prefix[DEDUP_PREFIX_BYTES_MAX];
    size_t prefix_len;
    bool persist;
    size_t entries_max;
    struct u64map map; /* key -> first arrival (W) */
    struct hent *heap; /* min-heap by (first, key); entries may be stale */
    size_t nheap, capheap;
    struct hour_keys hours[HOURS_KEPT]; /* keys by hour of first arrival (persisting only) */
    int64_t purged_before; /* hours below this were deleted from the store */
    uint64_t oom;
};

struct dedup *dedup_new(const char *prefix, size_t entries_max)
{
    struct dedup *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    if (prefix) {
        d->persist = true;
        d->prefix_len = strnlen(prefix, DEDUP_PREFIX_BYTES_MAX - 1);
        memcpy(d->prefix, prefix, d->prefix_len);
    }
    d->entries_max = entries_max ? entries_max : DEDUP_ENTRIES_MAX_DEFAULT;
    for (int i = 0; i < HOURS_KEPT; i++) d->hours[i].hour = -1;
    return d;
}

void dedup_free(struct dedup *d)
{
    if (!d) return;
    u64map_free(&d->map);
    free(d->heap);
    for (int i = 0; i < HOURS_KEPT; i++) free(d->hours[i].keys);
    free(d);
}

size_t dedup_entries(const struct dedup *d)
{
    return d->map.n;
}

uint64_t dedup_oom(const struct dedup *d)
{
    return d->oom;
}

static bool hless(const struct hent *a, const struct hent *b)
{
    return a->first < b->first || (a->first == b->first && a->key < b->key);
}

static bool heap_push(struct dedup *d, int64_t first, uint64_t key)
{
    if (d->nheap == d->capheap) {
        size_t cap = d->capheap ? d->capheap * 2 : 1024;
        struct hent *p = realloc(d->heap, cap * sizeof *p);
        if (!p) return false;
        d->heap = p;
        d->capheap = cap;
    }
    size_t i = d->nheap++;
    d->heap[i] = (struct hent){first, key};
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!hless(&d->heap[i], &d->heap[parent])) break;
        struct hent t = d->heap[i];
        d->heap[i] = d->heap[parent];
        d->heap[parent] = t;
        i = parent;
    }
    return true;
}

static void heap_pop(struct dedup *d)
{
    d->heap[0] = d->heap[--d->nheap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < d->nheap && hless(&d->heap[l], &d->heap[m])) m = l;
        if (r < d->nheap && hless(&d->heap[r], &d->heap[m])) m = r;
        if (m == i) break;
        struct hent t = d->heap[i];
        d->heap[i] = d->heap[m];
        d->heap[m] = t;
        i = m;
    }
}

/* Removes the heap's top entry from the map when it is live; stale tops are just dropped. */
static void pop_top(struct dedup *d)
{
    struct hent top = d->heap[0];
    heap_pop(d);
    uint64_t *v = u64map_get(&d->map, top.key);
    if (v && (int64_t)*v == top.first) u64map_del(&d->map, top.key);
}

static void expire(struct dedup *d, int64_t watermark_ms)
{
    while (d->nheap && d->heap[0].first <= watermark_ms - DEDUP_WINDOW_MS) pop_top(d);
}

static uint64_t key_of(const char *site, size_t site_len, const char *id, size_t id_len)
{
    uint64_t k = XXH3_64bits_withSeed(id, id_len, XXH3_64bits(site, site_len));
    return k ? k : 1;
}

/* Remembers key under its arrival hour (for the hour's blob). */
static void hour_add(struct dedup *d, int64_t first, uint64_t key)
{
    if (!d->persist) return;
    int64_t hour = first / HOUR_MS;
    struct hour_keys *h = &d->hours[hour % HOURS_KEPT];
    if (h->hour != hour) {
        h->hour = hour;
        h->n = 0;
    }
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        uint64_t *p = realloc(h->keys, cap * sizeof *p);
        if (!p) {
            d->oom++;
            return;
        }
        h->keys = p;
        h->cap = cap;
    }
    h->keys[h->n++] = key;
    h->dirty = true;
}

/* Inserts or replaces an entry, keeping the bound (see the file comment). */
static bool insert(struct dedup *d, uint64_t key, int64_t first)
{
    if (d->map.n + 1 > d->entries_max && !u64map_get(&d->map, key)) {
        expire(d, first);
        while (d->map.n + 1 > d->entries_max && d->nheap) pop_top(d);
    }
    return u64map_put(&d->map, key, (uint64_t)first) && heap_push(d, first, key);
}

bool dedup_check(struct dedup *d, const char *site, size_t site_len, const char *id,
                 size_t id_len, int64_t watermark_ms)
{
    if (id_len == 0) return false;
    uint64_t key = key_of(site, site_len, id, id_len);
    uint64_t *v = u64map_get(&d->map, key);
    if (v && watermark_ms - (int64_t)*v < DEDUP_WINDOW_MS) return true;
    if (!insert(d, key, watermark_ms)) {
        d->oom++;
        return false;
    }
    hour_add(d, watermark_ms, key);
    return false;
}

static size_t hour_key(const struct dedup *d, int64_t hour, uint8_t *k)
{
    memcpy(k, d->prefix, d->prefix_len);
    store_put_be32(k + d->prefix_len, (uint32_t)hour);
    return d->prefix_len + 4;
}

void dedup_flush(struct dedup *d, struct store_batch *b, int64_t watermark_ms)
{
    expire(d, watermark_ms);
    if (!d->persist || !b) return;
    uint8_t k[DEDUP_PREFIX_BYTES_MAX + 4];
    for (int i = 0; i < HOURS_KEPT; i++) {
        struct hour_keys *h = &d->hours[i];
        if (h->hour < 0 || !h->dirty) continue;
        /* the hour's live entries: those whose first arrival is still in this hour */
        uint8_t *blob = malloc(h->n * 16 + 1);
        if (!blob) {
            d->oom++;
            continue;
        }
        size_t n = 0;
        for (size_t j = 0; j < h->n; j++) {
            uint64_t *v = u64map_get(&d->map, h->keys[j]);
            if (!v || (int64_t)*v / HOUR_MS != h->hour) continue;
            for (int x = 0; x < 8; x++) blob[n * 16 + (size_t)x] = (uint8_t)(h->keys[j] >> (8 * x));
            for (int x = 0; x < 8; x++) blob[n * 16 + 8 + (size_t)x] = (uint8_t)(*v >> (8 * x));
            n++;
        }
        size_t kl = hour_key(d, h->hour, k);
        if (n) store_batch_put(b, STORE_CF_META, k, kl, blob, n * 16);
        else store_batch_delete(b, STORE_CF_META, k, kl);
        free(blob);
    }
    /* hours that fell out of the window: delete their blobs once */
    int64_t keep_from = (watermark_ms - DEDUP_WINDOW_MS) / HOUR_MS;
    if (keep_from > d->purged_before) {
        uint8_t lo[DEDUP_PREFIX_BYTES_MAX + 4], hi[DEDUP_PREFIX_BYTES_MAX + 4];
        size_t ll = hour_key(d, d->purged_before, lo), hl = hour_key(d, keep_from, hi);
        store_batch_delete_range(b, STORE_CF_META, lo, ll, hi, hl);
        d->purged_before = keep_from;
    }
}

void dedup_commit(struct dedup *d)
{
    for (int i = 0; i < HOURS_KEPT; i++) d->hours[i].dirty = false;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t x = 0;
    for (int i = 0; i < 8; i++) x |= (uint64_t)p[i] << (8 * i);
    return x;
}

int dedup_load(struct dedup *d, struct store *s, int64_t watermark_ms)
{
    if (!d->persist) return TALLY_OK;
    int64_t from = (watermark_ms - DEDUP_WINDOW_MS) / HOUR_MS;
    if (from < 0) from = 0;
    d->purged_before = from;
    uint8_t lo[DEDUP_PREFIX_BYTES_MAX + 4], hi[DEDUP_PREFIX_BYTES_MAX + 4];
    size_t ll = hour_key(d, from, lo);
    memcpy(hi, d->prefix, d->prefix_len);
    memset(hi + d->prefix_len, 0xff, 4);
    struct store_iter *it = store_iter_new(s, STORE_CF_META, lo, ll, hi, d->prefix_len + 4);
    if (!it) return TALLY_ENOMEM;
    int rc = TALLY_OK;
    for (store_iter_seek_first(it); !rc && store_iter_valid(it); store_iter_next(it)) {
        size_t kl, vl;
        store_iter_key(it, &kl);
        const uint8_t *v = store_iter_value(it, &vl);
        if (kl != d->prefix_len + 4 || vl % 16) continue;
        for (size_t j = 0; j + 16 <= vl && !rc; j += 16) {
            uint64_t key = le64(v + j);
            int64_t first = (int64_t)le64(v + j + 8);
            if (first <= watermark_ms - DEDUP_WINDOW_MS) continue;
            uint64_t *cur = u64map_get(&d->map, key);
            if (cur && (int64_t)*cur >= first) continue;
            if (!insert(d, key, first)) rc = TALLY_ENOMEM;
            else hour_add(d, first, key);
        }
    }
    if (!rc) rc = store_iter_status(it);
    store_iter_free(it);
    dedup_commit(d);
    return rc;
}
