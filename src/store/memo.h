/*
 * memo: the store's in-memory cache of derived results (a 30-day breakdown, say) and the
 * change clock that tells when one is stale.
 *
 * CHANGE CLOCK. Writers tag what they change as (site, bucket): bucket = the key instant, in
 * minutes, of a DAY rollup cell (rollup/cell.h). After the batch that changed them is
 * COMMITTED, a writer calls memo_note_days: the clock's sequence rises by one and every tag
 * given records it. memo_note_all marks everything changed (a rebuild deletes cells
 * wholesale). memo_range_seq(site, lo, hi) is the highest sequence recorded for any of the
 * site's buckets in [lo, hi) (tags are kept sorted, so a 30-day range reads 30 of them).
 *
 * VALIDITY (the invariant the cache rests on). A reader takes built = memo_now() BEFORE it
 * reads the store, computes a result and stores it with memo_put(.., built). A later reader
 * may use it iff memo_range_seq(range) <= built: any change committed after the first reader's
 * reads was noted after them, so with a sequence > built; a change noted before `built` was
 * committed before the reads began, so the result holds it. A lookup passes that bound as
 * `built_min`; an older entry is dropped.
 *
 * LIMITS. Results: at most bytes_max bytes of keys and values (least recently used first out;
 * a result over bytes_max / 4 is not kept; bytes_max 0 keeps nothing). Tags: at most
 * MEMO_TAGS_MAX; beyond it the table is cleared and a floor takes its place (every range then
 * reads as changed at the floor's sequence: conservative, never stale). A tag that changes
 * costs a binary search, a new one also a move of the tags after it (a new day per site per
 * day: rare).
 *
 * THREADS. Every function may be called from any thread (one mutex; values are copied in and
 * out under it, so callers own what they get).
 */
#ifndef TALLY_STORE_MEMO_H
#define TALLY_STORE_MEMO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MEMO_TAGS_MAX 262144u

struct memo;

struct memo_stats {
    uint64_t hits, misses, stale; /* lookups: found valid, not found, found but stale */
    uint64_t entries, bytes;      /* held now */
    uint64_t bytes_max;
};

/* NULL on allocation failure. */
struct memo *memo_new(size_t bytes_max);
void memo_free(struct memo *m);
/* Changes the results' size bound (evicting at once when it shrinks). */
void memo_set_bytes_max(struct memo *m, size_t bytes_max);

/* ---- change clock ---- */
uint64_t memo_now(struct memo *m);
/* After committing changes to the given (site << 32 | day bucket) tags. */
void memo_note_days(struct memo *m, const uint64_t *site_buckets, size_t n);
void memo_note_all(struct memo *m);
uint64_t memo_range_seq(struct memo *m, uint32_t site, uint32_t bucket_lo, uint32_t bucket_hi);

/* ---- results ---- */
/* A copy of the value under key if one was stored with built >= built_min: 1 and *val
 * (malloc'd, the caller frees) and *len; 0 when there is none; TALLY_ENOMEM. */
int memo_get(struct memo *m, const void *key, size_t klen, uint64_t built_min, void **val,
             size_t *len);
/* Stores a copy (replacing an entry under key). false when not kept (too large, no memory). */
bool memo_put(struct memo *m, const void *key, size_t klen, const void *val, size_t len,
              uint64_t built);

void memo_stats(struct memo *m, struct memo_stats *out);

#endif
