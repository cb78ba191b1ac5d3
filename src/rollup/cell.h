/*
 * cell: one rollup cell = the metrics of one (site, granularity, dimension, bucket, value), its
 * key and value layouts in the rollups CF, and how deltas are applied to it.
 *
 * DIMENSIONS (API.md §4). ROLLUP_DIM_TOTAL is the site total (value ""). Event dimensions take
 * their value from each event; visit dimensions from the visit the event belongs to (entry page
 * and acquisition/device/geo from the visit's first event, exit page from its last).
 *
 * METRICS AND BUCKETS. pageviews, events and revenue count each event in the bucket of its own
 * time; visits, bounces and total visit duration count each visit in the bucket of its first
 * event. For an event dimension value X, "visits" are the visits that hold at least one event
 * with X (what a filter `event:page is X` selects), with their bounces and durations. For a
 * visit dimension value X, every metric covers the events and visits of visits whose attribute
 * is X. Unique visitors: a visitor counts in every bucket and value in which they had an event.
 *
 * UNIQUES AND RETRACTION. Totals and event dimensions only ever gain members (a late event or a
 * merge of visits never takes an event away from a page or a name), so they use an add-only
 * hll (hll.h): exact up to CELL_UNIQ_EXACT_MAX visitors, HyperLogLog (0.81 % standard error)
 * beyond; the state depends only on the set of members, so it is deterministic. Visit
 * dimensions lose members when visits merge or change their first/last event (exit page), so
 * they keep an exact MULTISET: visitor -> number of the visitor's visits that put them there;
 * retraction decrements, a member leaves at zero. A multiset beyond CELL_VISIT_SET_MAX members
 * is SAMPLED: level k keeps only visitors whose mix(visitor) < 2^(64-k) and estimates
 * |members| * 2^k (relative standard error about 1/sqrt(CELL_VISIT_SET_MAX) = 0.8 %); k rises by
 * one each time the kept set exceeds the maximum and never falls. Within a level, adds and
 * retractions stay exact, so sampled cells remain retractable; only the moment k rises depends
 * on history (a cell beyond 16,384 visitors in one bucket), the one case where two runs over
 * the same log could differ (by the sampling level of that cell).
 *
 * KEYS (rollups CF)
 *   hour/day  'h'|'d' | site (u32 BE) | dim (u8) | bucket (u32 BE) | value bytes
 *   minute    'm'     | bucket (u32 BE) | site (u32 BE) | dim (u8) | value bytes
 * bucket = the bucket's key instant (tz.h) in minutes since the epoch. Minute cells lead with
 * the bucket so that expiring old minutes is one range deletion for all sites. A props value is
 * "KEY" 0x00 "VALUE".
 *
 * VALUE (version 1; canonical: one state has one encoding; an all-empty cell is deleted)
 *     u8 version = 1
 *     varint present: bit 0 pageviews, 1 events, 2 visits, 3 bounces, 4 duration, 5 revenue,
 *                     6 uniques (hll), 7 uniques (multiset)
 *     svarint each present counter (pageviews, events, visits, bounces, duration ms)
 *     [5] varint n, n x (3 bytes currency, svarint micros), currencies ascending, no zero sums
 *     [6] varint length, hll blob (hll.h)
 *     [7] u8 level k, varint n, n x (u64 LE visitor, varint count >= 1), visitors ascending
 *
 * THREADS: pure functions over caller-owned cells; any thread.
 */
#ifndef TALLY_ROLLUP_CELL_H
#define TALLY_ROLLUP_CELL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rollup/hll.h"
#include "rollup/tz.h"
#include "store/codec.h"

enum rollup_dim {
    ROLLUP_DIM_TOTAL = 0,
    /* event dimensions */
    ROLLUP_DIM_PAGE,
    ROLLUP_DIM_HOSTNAME,
    ROLLUP_DIM_NAME,
    ROLLUP_DIM_PROP, /* value "KEY\0VALUE" */
    /* visit dimensions */
    ROLLUP_DIM_ENTRY_PAGE,
    ROLLUP_DIM_EXIT_PAGE,
    ROLLUP_DIM_SOURCE,
    ROLLUP_DIM_REFERRER,
    ROLLUP_DIM_CHANNEL,
    ROLLUP_DIM_UTM_SOURCE,
    ROLLUP_DIM_UTM_MEDIUM,
    ROLLUP_DIM_UTM_CAMPAIGN,
    ROLLUP_DIM_UTM_CONTENT,
    ROLLUP_DIM_UTM_TERM,
    ROLLUP_DIM_DEVICE,
    ROLLUP_DIM_BROWSER,
    ROLLUP_DIM_BROWSER_VERSION,
    ROLLUP_DIM_OS,
    ROLLUP_DIM_OS_VERSION,
    ROLLUP_DIM_COUNTRY,
    ROLLUP_DIM_REGION,
    ROLLUP_DIM_CITY,
    ROLLUP_DIM_COUNT
};

#define ROLLUP_DIM_FIRST_VISIT ROLLUP_DIM_ENTRY_PAGE
#define ROLLUP_VISIT_DIMS (ROLLUP_DIM_COUNT - ROLLUP_DIM_FIRST_VISIT)

#define CELL_UNIQ_EXACT_MAX 16384u
#define CELL_VISIT_SET_MAX 16384u
#define CELL_VERSION 1
#define CELL_KEY_BYTES_MAX (10 + 8192)

static inline bool rollup_dim_is_visit(int dim)
{
    return dim >= ROLLUP_DIM_FIRST_VISIT;
}

/* API name of a dimension: "event:page", "visit:source", "event:props" (for PROP), "total". */
const char *rollup_dim_name(enum rollup_dim d);
/* Inverse of rollup_dim_name; -1 when unknown ("event:props:KEY" maps to ROLLUP_DIM_PROP). */
int rollup_dim_parse(const char *name);

struct cell_rev {
    char cur[4];
    int64_t micros;
};

struct cell_mentry {
    uint64_t visitor;
    int64_t count;
};

struct cell {
    int64_t pageviews, events, visits, bounces, duration_ms;
    struct cell_rev *rev;
    uint32_t nrev, caprev;
    struct hll *hll; /* add-only uniques, or NULL */
    struct cell_mentry *ms; /* multiset uniques, visitors ascending, counts >= 1 */
    size_t nms, capms;
    uint8_t level; /* multiset sampling level */
    bool has_ms;
};

void cell_init(struct cell *c);
void cell_free(struct cell *c); /* frees what it holds; the struct itself is the caller's */
bool cell_is_empty(const struct cell *c);

/* Decodes a stored value into a freshly initialised c. 0, TALLY_ECORRUPT, TALLY_ENOMEM. */
int cell_decode(const void *val, size_t len, struct cell *c);
/* Appends the canonical encoding to b. */
void cell_encode(const struct cell *c, struct cbuf *b);

/* Encodes (appends to b) the cell that holds exactly: the counters of c (its revenue, sets and
 * multiset are ignored), revenue rev[0..nrev) (ascending currencies, no zero sums), the
 * add-only members set[0..nset) (ascending, distinct) and the multiset ms[0..nms) (ascending,
 * counts >= 1), the same bytes as cell_encode of that cell. A fast path for cells with no
 * stored state; false (nothing appended) when a set is too large for its exact form. */
bool cell_encode_fresh(const struct cell *c, const struct cell_rev *rev, uint32_t nrev,
                       const uint64_t *set, size_t nset, const struct cell_mentry *ms,
                       size_t nms, struct cbuf *b);

/* Adds revenue (micros may be negative for retraction); zero sums disappear. 0 or ENOMEM. */
int cell_add_revenue(struct cell *c, const char cur[3], int64_t micros);
/* Adds visitors to the add-only set (sorts items in place). 0 or TALLY_ENOMEM. */
int cell_add_uniques(struct cell *c, uint64_t *items, size_t n);
/* Applies multiset deltas (visitor, +/-count), any order (sorted in place; equal visitors are
 * summed). Counts that fall to zero leave; a count below zero is clamped to leave (never
 * happens in a consistent store). 0 or TALLY_ENOMEM. */
int cell_apply_multiset(struct cell *c, struct cell_mentry *d, size_t n);
/* dst += src (counters, revenue, both kinds of uniques: sets unite, multisets add). */
int cell_merge(struct cell *dst, const struct cell *src);

/* Sorts ascending (insertion sort for short arrays, qsort beyond). */
void cell_sort_u64(uint64_t *v, size_t n);
void cell_sort_mentries(struct cell_mentry *v, size_t n); /* by visitor */

/* Unique visitors of the cell: estimate, and whether it is exact. */
uint64_t cell_visitors(const struct cell *c, bool *exact);

/* A stored value read in place (no allocation): counters decoded, revenue and visitor sets
 * left in the value's bytes, which must outlive the view. cell_view_parse checks the layout
 * except the entries of the sets, which cell_union_add_view checks as it reads them. */
struct cell_view {
    int64_t pageviews, events, visits, bounces, duration_ms;
    const uint8_t *rev; /* nrev x (3 bytes currency, svarint micros) */
    size_t rev_len;
    uint32_t nrev;
    const uint8_t *hll; /* serialized hll (hll.h), or NULL */
    size_t hll_len;
    const uint8_t *ms; /* nms x (u64 LE visitor, varint count) */
    size_t ms_len, nms;
    uint8_t level;
    bool has_ms;
};
int cell_view_parse(const void *val, size_t len, struct cell_view *v); /* 0, TALLY_ECORRUPT */
/* sum += the view's revenue. 0, TALLY_ECORRUPT, TALLY_ENOMEM. */
int cell_view_add_revenue(const struct cell_view *v, struct cell *sum);

/* Unions cells' visitor sets across buckets (for ranges): feed cells, then read. Multisets
 * count a visitor once however many visits; sampled sets combine at the highest level. Items
 * are gathered and deduplicated at the count (cell.c), so feeding k cells of n items costs
 * O(k n), not O(k^2 n). */
struct cell_union;
struct cell_union *cell_union_new(void);
void cell_union_free(struct cell_union *u);
int cell_union_add(struct cell_union *u, const struct cell *c);
/* The same from a view; TALLY_ECORRUPT when its sets are malformed. */
int cell_union_add_view(struct cell_union *u, const struct cell_view *v);
/* A union's state, appended to out (in-process form: native byte order, for the query cache;
 * never persisted); its sets are compacted first. Not after a count (TALLY_EINVAL). */
int cell_union_save(struct cell_union *u, struct cbuf *out);
/* Rewrites the union's sets as sorted distinct runs (what a count or a save does first), so
 * that cell_union_saved_bytes_max becomes exact. 0, TALLY_ENOMEM, TALLY_EINVAL after a count. */
int cell_union_compact(struct cell_union *u);
/* An upper bound of the bytes cell_union_save would append now (exact after a compaction). */
size_t cell_union_saved_bytes_max(const struct cell_union *u);
/* Adds a saved state at p (as if the cells it came from were added); *used = its bytes.
 * TALLY_ECORRUPT when it does not parse, TALLY_ENOMEM. */
int cell_union_add_saved(struct cell_union *u, const uint8_t *p, size_t len, size_t *used);
/* The count ends the union: no adds after it (a second count returns the same answer). */
uint64_t cell_union_count(const struct cell_union *u, bool *exact);

/* Key building/parsing. gran is enum tz_gran; bucket_min the bucket key in minutes. Returns
 * the key length (the value is cut to fit CELL_KEY_BYTES_MAX). */
size_t cell_key(uint8_t *out, int gran, uint32_t site, int dim, uint32_t bucket_min,
                const char *value, size_t vlen);
/* Parses a key; *value points into key. false when the key is not a cell key. */
bool cell_key_parse(const uint8_t *key, size_t klen, int *gran, uint32_t *site, int *dim,
                    uint32_t *bucket_min, const char **value, size_t *vlen);
/* The key prefix of (gran, site, dim) for hour/day cells (bucket and value follow): 6 bytes. */
size_t cell_key_prefix(uint8_t *out, int gran, uint32_t site, int dim);

#endif
