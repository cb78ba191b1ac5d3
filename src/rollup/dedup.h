/*
 * dedup: client event ids seen again within 24 h are duplicates, decided as a pure function of
 * the log so that both consumers and every rebuild agree.
 *
 * RULE. Walk the log in offset order, keeping W = the largest received_ms seen so far (the
 * current event included; W never decreases, unlike received_ms, which threads may stamp a few
 * ms out of order). An event with a non-empty client id, of site S, is a DUPLICATE when an
 * earlier accepted event of S had the same id and that first arrival's W lies less than
 * DEDUP_WINDOW_MS before the current W. Otherwise it is accepted and becomes the id's first
 * arrival (at the current W). Ids are compared through a 64-bit key: XXH3-64 of the id seeded
 * with XXH3-64 of the site name (two different ids colliding is a 2^-64 event).
 *
 * STATE. key -> first arrival W, for arrivals within the window; entries whose arrival falls
 * DEDUP_WINDOW_MS or more behind W can never match again and are expired (a min-heap by
 * (arrival, key) finds them). Bound: at most entries_max entries; beyond, the oldest go early
 * (in (arrival, key) order, so the choice is itself a function of the log) and the window is
 * effectively shorter for that traffic.
 *
 * PERSISTENCE (optional, meta CF): one blob per hour of first arrivals (layout in dedup.c).
 * dedup_flush adds the changed hours (and the deletion of expired ones) to the consumer's
 * batch, the same batch as its cursor; dedup_load reads them back after a restart and rebuilds
 * exactly the in-memory state the consumer had at that cursor.
 *
 * THREADS: one owner thread.
 */
#ifndef TALLY_ROLLUP_DEDUP_H
#define TALLY_ROLLUP_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define DEDUP_WINDOW_MS (24LL * 3600 * 1000)
#define DEDUP_ENTRIES_MAX_DEFAULT (4u << 20)
#define DEDUP_PREFIX_BYTES_MAX 16

struct dedup;

/* prefix: the meta-CF key prefix for persistence, or NULL for memory only. entries_max 0 =
 * the default. NULL on OOM. */
struct dedup *dedup_new(const char *prefix, size_t entries_max);
void dedup_free(struct dedup *d);

/* Loads persisted entries (those not expired at watermark_ms). 0 or TALLY_EIO/ENOMEM. */
int dedup_load(struct dedup *d, struct store *s, int64_t watermark_ms);

/* Decides one event (see RULE); watermark_ms is W including this event. true: duplicate.
 * A failed allocation accepts the event (and counts in dedup_oom). */
bool dedup_check(struct dedup *d, const char *site, size_t site_len, const char *id,
                 size_t id_len, int64_t watermark_ms);

/* Expires old entries for watermark_ms and adds all changes since the last flush to b. */
void dedup_flush(struct dedup *d, struct store_batch *b, int64_t watermark_ms);
/* Forget unflushed changes tracking (after a successful write). */
void dedup_commit(struct dedup *d);

size_t dedup_entries(const struct dedup *d);
uint64_t dedup_oom(const struct dedup *d);

#endif
