/*
 * engine: sessions and rollups from a stream of (offset, derived event), with exactly-once
 * output: everything an engine has taken in since its last flush is written, together with its
 * cursor, in ONE store batch by engine_flush.
 *
 * VISITS. A visit is a maximal run of one visitor's (site, visitor hash) events, ordered by
 * (event time, offset), in which consecutive events are less than visit_gap_ms apart (30 min).
 * This definition depends only on the SET of events, never on their arrival order, so a late
 * event (any age) that falls into, before, after or between visits extends them or merges two
 * of them; the engine retracts the old visits' contributions and adds the new ones. Entry page,
 * source, referrer, channel, UTM tags, device, browser, OS and geo come from the first event,
 * the exit page from the last; duration = last - first event time; a bounce is a visit with
 * exactly one pageview and no interactive event besides it.
 *
 * WHAT IS COUNTED. Events flagged bot or host-not-allowed, "engagement" events (they feed time
 * on page, they are not events) and duplicates (dedup.h) are left out. Everything else counts
 * per cell.h: add-only per-event contributions (pageviews, events, revenue, visitors of totals
 * and event dimensions) and retractable per-visit contributions (visits, bounces, duration for
 * every dimension; pageviews, events, revenue, visitors of visit dimensions).
 *
 * BUCKETS. Minute and hour cells are computed in the site's time zone (tz.h); day cells are the
 * sums of their hours (a local hour lies in one local day). Minute cells are kept for
 * minute_retention_ms behind the watermark W (largest received_ms so far): at every flush, with
 * cut = the UTC hour at or before W - minute_retention_ms, minute cells before cut are neither
 * written nor kept (one range deletion removes them). Since cut only grows and is a function of
 * W, the minute cells at or after the final cut are the same whatever the flush points were
 * (a rebuild, knowing a lower bound of the final W, does not even compute the older ones).
 *
 * SESSIONS CF. key: site (u32 BE) | visitor (u64 BE) | first ts (u64 BE) | first offset (u64 BE)
 * value (version 2, canonical): u8 2 | svarint last-first ts | svarint last-first offset |
 * varint pageviews, events, interactive non-pageviews | 18 visit attribute strings (entry page,
 * exit page, source, referrer, channel, 5 UTM, device, browser, browser version, OS, OS
 * version, country, region, city; varint length + bytes) | varint n, n x (varint minutes
 * since the previous entry (the first: since first ts's UTC minute; > 0 after the first),
 * varint pageviews, varint events (>= 1, >= pageviews)): the visit's events per UTC minute,
 * so a visit's size is bounded by its duration, not by its number of events (a flood from one
 * visitor stays small) | varint n, n x (svarint ts - first,
 * 3 bytes currency, svarint micros) ascending | varint n, n x (u8 dim, string) of the distinct
 * event dimension values, ascending by (dim, bytes).
 * Every visit is kept (late events of any age find their neighbours); in memory the engine keeps
 * each active visitor's latest visit and loads older ones on demand.
 *
 * STATE IN THE META CF under the prefix P: P "cursor" (next offset), P "wm" (W), P "mcut"
 * (minute cut last purged), P "dd" + dedup entries. All in the flush batch.
 *
 * DETERMINISM. Cells and visits are sums and functions of the set of events read so far (plus W
 * for minute cells), so an incremental run - any batch splits, any kills (drop the engine,
 * reopen from the store, replay from the cursor) - and a rebuild write identical rollups and
 * sessions (rollup.h's digest checks that). The one history-dependent case is the sampling
 * level of visit-dimension cells beyond 16,384 visitors (cell.h).
 *
 * BOUNDS. visitors_max visitors in memory (beyond half of it idle ones, and beyond all of it
 * others, are evicted after a flush; they are always clean then). Of an evicted visitor the
 * engine keeps where their latest visit ends (16 bytes in a hash table, at most 4 x
 * visitors_max of them, forgotten all at once beyond that), so one who comes back a gap or
 * more later starts a visit without reading the store; pending cell deltas are
 * flushed when
 * engine_should_flush() says so (pending_events_max events or pending_bytes_max bytes); the
 * string intern table is cleared (with all in-memory visitors) beyond intern_bytes_max.
 *
 * THREADS. An engine is owned by one thread (with flush_async it runs a flush thread of its
 * own, which writes one handed-over set of deltas at a time). Readers of the store may run
 * concurrently.
 */
#ifndef TALLY_ROLLUP_ENGINE_H
#define TALLY_ROLLUP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rollup/devent.h"
#include "rollup/tz.h"
#include "store/store.h"

#define ENGINE_PREFIX_BYTES_MAX 16

/* The site's IANA time zone ("UTC" when NULL is returned). Called once per site per engine. */
typedef const char *(*engine_tz_fn)(void *arg, const char *site, size_t site_len);

struct engine_opts {
    int64_t visit_gap_ms;        /* default 30 min */
    int64_t minute_retention_ms; /* default 6 h (realtime views need the last 30 min; hours
                                    and days answer everything older) */
    int64_t visitor_idle_ms;     /* beyond half of visitors_max, evict visitors idle this long
                                    behind W; default 2 h */
    size_t visitors_max;         /* in memory (~600 bytes each); default 500,000 */
    size_t pending_events_max;   /* default 500,000 */
    size_t pending_bytes_max;    /* default 256 MiB */
    size_t intern_bytes_max;     /* default 256 MiB */
    size_t dedup_entries_max;    /* default DEDUP_ENTRIES_MAX_DEFAULT */
    /* Meta-CF prefix of the engine's cursor, watermark and dedup state ("rollup."); NULL: keep
     * no state (a filtered rebuild: it starts from nothing and leaves the live state alone). */
    const char *state_prefix;
    uint64_t start_offset; /* the cursor when no state is saved (or kept) */
    /* Filters (rebuild of one site or a date range): only events of this site (NULL: all);
     * with `range`, only cells whose bucket starts in the site's local days [range_from_day,
     * range_to_day) (days since 1970-01-01; each site's own time zone decides the instants). */
    const char *only_site;
    bool range;
    int64_t range_from_day, range_to_day;
    /* The sessions and rollups of every site processed are known to be empty at start (a
     * rebuild deleted them): skips reads the engine knows would find nothing. */
    bool known_empty;
    /* A lower bound of the watermark the run will end with (a rebuild knows the last record's
     * arrival): minute cells before its cut are never kept, so they are not even computed. */
    int64_t watermark_hint_ms;
    /* Flushes write on a thread of the engine's own while the caller goes on adding (a
     * rebuild): engine_flush hands the batch over and returns; engine_sync waits for it. Two
     * sets of cell deltas then exist (one filling, one being written): up to twice
     * pending_bytes_max. Not with a live consumer: its cursor must be durable when it
     * reports it. */
    bool flush_async;
    engine_tz_fn tz_of;
    void *tz_arg;
};

void engine_opts_default(struct engine_opts *o);

struct engine_stats {
    uint64_t events_read;      /* engine_add calls */
    uint64_t events_counted;   /* taken into statistics */
    uint64_t events_excluded;  /* bot / host not allowed */
    uint64_t events_duplicate;
    uint64_t events_filtered;  /* other sites in a filtered rebuild, engagement events */
    uint64_t cells_written;    /* puts into the rollups CF */
    uint64_t cells_deleted;
    uint64_t visits_written;
    uint64_t session_loads;    /* visits read back from the sessions CF */
    uint64_t flushes;
    uint64_t flush_us;         /* time spent in engine_flush (of which writing the batch:) */
    uint64_t write_us;
    uint64_t visitors_in_memory;
};

struct engine;

/* Opens an engine over s (borrowed): reads its cursor, watermark and dedup state under
 * opt->state_prefix. Returns 0 with *out, or TALLY_ENOMEM, TALLY_EIO, TALLY_ECORRUPT. */
int engine_open(struct store *s, const struct engine_opts *opt, struct engine **out);
/* Frees the engine WITHOUT flushing (what was not flushed is lost, and redone from the log by
 * the next engine). NULL is a no-op. */
void engine_close(struct engine *e);

/* The next log offset the engine needs (its saved cursor, then advanced by engine_add). */
uint64_t engine_cursor(const struct engine *e);

/* Takes one event; ev->offset must be >= engine_cursor(). 0, or TALLY_ENOMEM / TALLY_EIO /
 * TALLY_ECORRUPT (the engine is then unusable: close it and open a new one). */
int engine_add(struct engine *e, const struct devent *ev);
/* Whether ev takes part in duplicate detection (the raw consumer applies the same rule): not
 * excluded, not an engagement event, with a client id. */
bool engine_dedup_applies(const struct devent *ev);

/* Advances the cursor past a record that is not an event (undecodable). */
void engine_skip(struct engine *e, uint64_t offset);

/* True when pending work reached a bound: flush now. */
bool engine_should_flush(const struct engine *e);
/* Events taken since the last flush. */
size_t engine_pending(const struct engine *e);

/* Writes all pending output, the cursor and the state in one batch. 0 or an error (then close
 * the engine and open a new one: the store holds the previous flush). With flush_async the
 * batch is handed to the flush thread once the previous one is written (an error of that one
 * is returned here), and the store holds it only after engine_sync. */
int engine_flush(struct engine *e);
/* Waits until no flush is in flight; 0 or the error of the last one (the engine is then
 * unusable). Without flush_async: e's sticky error, at once. */
int engine_sync(struct engine *e);

void engine_get_stats(const struct engine *e, struct engine_stats *out);

#endif
