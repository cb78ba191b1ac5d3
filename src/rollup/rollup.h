/*
 * rollup: the processing core's public face: the consumer threads of the server, `tally
 * --rebuild` and `tally --digest`, and reads of rollup cells for the query engine.
 *
 * CONSUMERS (rollup_service_*). Two threads read the event log from their own cursors:
 *  - raw: derives each record (derive.h) and stores it in the raw store (store/raw.h), with
 *    duplicates flagged (dedup.h); state under "raw." in the meta CF;
 *  - rollup: derives each record and feeds the engine (engine.h); state under "rollup.".
 * Each writes its output and its cursor in one batch, at least every flush_interval_ms while
 * events arrive (freshness: an acknowledged event is in the rollups within about a second), and
 * registers its cursor with the log so retention keeps what it still needs. A failed write
 * (disk full, ...) drops the consumer's memory and resumes from the stored cursor a second
 * later: nothing lost, nothing doubled. Raw retention: once an hour, each site's blocks older
 * than its retention_days are deleted.
 *
 * REBUILD. rollup_rebuild recomputes sessions and rollups from the log: everything, one site,
 * and/or a range of local days. A full rebuild clears the rollup consumer's outputs and state
 * and runs the same engine from the first offset, so its result IS what the consumer would have
 * produced. A filtered rebuild first brings the consumer up to the log end (so that what is
 * outside the filter is current), deletes the filtered cells (and the sites' visits, which it
 * rewrites, identical where they lie outside the range), then replays the whole log with a
 * memory-only engine that writes only inside the filter. It sets "rollup.rebuilding" in the meta
 * CF while it runs; rollup_service_start warns when it finds it (an interrupted rebuild: run it
 * again). Nothing else may write the store meanwhile (the binary holds the data-dir lock).
 *
 * DIGEST. XXH3-128 sum over every rollup cell and every visit, each hashed in a canonical form
 * that names its site (site ids are per store), so an incremental store and a rebuilt one
 * compare equal exactly when their contents are equal; order-independent, so it needs no sort.
 * Printed as 32 hex digits.
 *
 * READS. Cells of [from_ms, to_ms): every bucket of granularity g whose key instant lies in the
 * range. Unique visitors across several buckets are unions of the cells' visitor sets (exact
 * while every set is exact; otherwise estimates within the bounds of cell.h), never sums.
 * Values are raw strings ("" where the event had none; the query layer shows "(none)").
 *
 * THREADS. A service is started and stopped by one thread. Reads and digests may run on any
 * thread at any time (RocksDB snapshots). rollup_rebuild runs on the caller's thread and must
 * not overlap a running service on the same store.
 */
#ifndef TALLY_ROLLUP_H
#define TALLY_ROLLUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "rollup/cell.h"
#include "rollup/engine.h"
#include "rollup/tz.h"
#include "log/evlog.h"
#include "store/store.h"

struct seglog;

#define ROLLUP_DIGEST_HEX 33
#define ROLLUP_CURRENCIES_MAX 8 /* currencies reported per metrics record (ascending codes) */
#define ROLLUP_STATE_PREFIX "rollup."
#define RAW_STATE_PREFIX "raw."

/* ---- reads ---- */

struct rollup_metrics {
    int64_t pageviews, events, visits, bounces, duration_ms;
    uint64_t visitors;
    bool visitors_exact;
    uint32_t nrev; /* currencies with revenue (at most ROLLUP_CURRENCIES_MAX reported) */
    struct cell_rev rev[ROLLUP_CURRENCIES_MAX];
};

/* Metrics of one value (dim ROLLUP_DIM_TOTAL with value "" for the site total) summed over the
 * buckets of g in [from_ms, to_ms). 0 (all zero when nothing is stored), TALLY_EIO,
 * TALLY_ECORRUPT, TALLY_ENOMEM. */
int rollup_read_value(struct store *s, uint32_t site, enum tz_gran g, int dim, const char *value,
                      size_t vlen, int64_t from_ms, int64_t to_ms, struct rollup_metrics *out);

/* One call per stored bucket of g in [from_ms, to_ms), ascending, with that bucket's metrics of
 * the value. fn returns 0 to go on. */
typedef int (*rollup_series_fn)(void *arg, int64_t bucket_ms, const struct rollup_metrics *m);
int rollup_read_series(struct store *s, uint32_t site, enum tz_gran g, int dim,
                       const char *value, size_t vlen, int64_t from_ms, int64_t to_ms,
                       rollup_series_fn fn, void *arg);

/* One call per value of dim present in [from_ms, to_ms), with its metrics over the range, in
 * ascending byte order of the values (the caller sorts by metric). At most values_max values
 * are aggregated (0: ROLLUP_BREAKDOWN_VALUES_MAX); beyond it TALLY_ETOOBIG. */
#define ROLLUP_BREAKDOWN_VALUES_MAX 1000000
typedef int (*rollup_breakdown_fn)(void *arg, const char *value, size_t vlen,
                                   const struct rollup_metrics *m);
int rollup_read_breakdown(struct store *s, uint32_t site, enum tz_gran g, int dim,
                          int64_t from_ms, int64_t to_ms, size_t values_max,
                          rollup_breakdown_fn fn, void *arg);
/* The same, for day cells (TZ_DAY) cached in the store's memo in two parts: the answer over
 * the whole range, and the state (sums and visitor sets) of [from_ms, split_ms), so that when
 * the days from split_ms on change (today), only their cells are read again. split_ms outside
 * (from_ms, to_ms): no split. The answer is the same with or without the memo. */
int rollup_read_breakdown_split(struct store *s, uint32_t site, enum tz_gran g, int dim,
                                int64_t from_ms, int64_t split_ms, int64_t to_ms,
                                size_t values_max, rollup_breakdown_fn fn, void *arg);

/* Metrics summed over every value of dim that pred accepts (pred NULL: every value), with
 * visitors as ONE union over those values' cells (so a visitor seen with two accepted values
 * counts once). one_value: the caller cannot use an answer over several values (summing
 * visits of several values of an EVENT dimension would count a visit once per value), so
 * reading stops at the second distinct accepted value with TALLY_ENOTSUP, before the rest of
 * the range is read. Same errors as rollup_read_value. */
typedef bool (*rollup_value_pred)(void *arg, const char *value, size_t vlen);
int rollup_read_matching(struct store *s, uint32_t site, enum tz_gran g, int dim,
                         rollup_value_pred pred, void *parg, int64_t from_ms, int64_t to_ms,
                         bool one_value, struct rollup_metrics *out);
/* The same per stored bucket of g (ascending; buckets with no accepted value are skipped). */
int rollup_read_series_matching(struct store *s, uint32_t site, enum tz_gran g, int dim,
                                rollup_value_pred pred, void *parg, int64_t from_ms, int64_t to_ms,
                                bool one_value, rollup_series_fn fn, void *arg);

/* ---- digest ---- */

struct rollup_digest {
    char hex[ROLLUP_DIGEST_HEX];        /* everything */
    char cells_hex[ROLLUP_DIGEST_HEX];  /* the rollup cells alone */
    char visits_hex[ROLLUP_DIGEST_HEX]; /* the visits alone */
    uint64_t cells;  /* rollup cells hashed */
    uint64_t visits; /* visits hashed */
};

/* Digest of the sessions and rollups of every site (site NULL) or of one site. */
int rollup_digest(struct store *s, const char *site, struct rollup_digest *out);

/* ---- consumers ---- */

struct rollup_config {
    const struct tally_config *cfg; /* sites: time zones, hosts, ids, retention; NULL: none */
    struct engine_opts engine;      /* tuning; state_prefix and filters are set internally */
    int64_t flush_interval_ms;      /* default 1000 */
    size_t raw_flush_events_max;    /* default 100,000 */
};

void rollup_config_default(struct rollup_config *c);

struct rollup_lag {
    uint64_t log_end;         /* committed offset of the log */
    uint64_t raw_cursor, rollup_cursor;
    uint64_t raw_lag, rollup_lag; /* log_end - cursor */
    uint64_t raw_events, rollup_events; /* events processed since start */
    uint64_t raw_flushes, rollup_flushes; /* output batches written since start */
    uint64_t raw_wakeups, rollup_wakeups; /* woken by new records after catching up */
    int raw_err, rollup_err;  /* last error (0 when healthy) */
    uint64_t duplicates;      /* events the rollup consumer left out as duplicates, since start */
    uint64_t excluded;        /* bot / host-not-allowed events it left out, since start */
    uint64_t compacted_hours, compacted_blocks; /* raw compaction since start (consumer.c) */
};

struct rollup_service;

/* One log the service consumes. SOURCES: the local log is one source named "" (state under
 * "raw." and "rollup."); with JetStream each owned partition is a source named "p<N>" (state
 * under "raw.p<N>." and "rollup.p<N>."). A site lives in exactly one source, so the sources'
 * consumers write disjoint raw blocks, visits and cells of the one store; each keeps its own
 * cursor, watermark and dedup state in the same write batch as its output. */
#define ROLLUP_SOURCES_MAX 1024
#define ROLLUP_SOURCE_NAME_MAX 15
struct rollup_source {
    struct evlog log;                        /* borrowed: outlives the service */
    char name[ROLLUP_SOURCE_NAME_MAX + 1];   /* "" or "p<N>" */
};

/* The meta-CF state prefixes of a source name ("" -> "raw.", "rollup."). */
void rollup_source_prefixes(const char *name, char raw[32], char roll[32]);

/* Starts two consumer threads (raw, rollup) per source. s and the sources' logs are borrowed
 * (they outlive the service); src and cfg are copied (cfg's tally_config pointer is
 * borrowed). 0, TALLY_EINVAL (nsrc 0 or > ROLLUP_SOURCES_MAX), TALLY_ENOMEM. Lag and counters
 * below are sums over the sources. */
int rollup_service_start(struct store *s, const struct rollup_source *src, size_t nsrc,
                         const struct rollup_config *cfg, struct rollup_service **out);
/* Flushes what both consumers hold, stops and joins the threads, frees. NULL is a no-op. */
void rollup_service_stop(struct rollup_service *svc);
/* For the thread that started the service (the server's chores), never concurrently with
 * start/stop. When the store is marked failed (store_failed: a write error such as a full
 * disk), stops both consumers, reopens the store and restarts them from their stored cursors;
 * also restarts consumers a previous attempt left stopped. 0 (nothing to do, or recovered),
 * or the reopen error (consumers stay stopped; call again later). */
int rollup_service_recover(struct rollup_service *svc);
/* Same thread as start/stop: stops both consumers (each flushes its output and cursor), makes
 * cfg (borrowed: it must outlive the service) their configuration (sites, time zones, hosts,
 * ids, retention) and starts them again from their stored cursors. Events already processed
 * keep what they were counted with (a changed time zone applies to new events; `--rebuild`
 * recomputes the past). 0 or TALLY_ENOMEM (then rollup_service_recover restarts them). */
int rollup_service_reconfigure(struct rollup_service *svc, const struct tally_config *cfg);
/* The rollup consumer's duplicate counter (since start), for a metrics_counter_ref; valid
 * until rollup_service_stop. */
const _Atomic uint64_t *rollup_service_duplicates(const struct rollup_service *svc);
/* Cursors and lag (for /healthz and /metrics). Any thread. */
void rollup_service_lag(struct rollup_service *svc, struct rollup_lag *out);

/* ---- rebuild ---- */

struct rollup_rebuild_opts {
    const struct tally_config *cfg; /* NULL: every site UTC, default hosts */
    const char *site;               /* NULL: every site */
    const char *from_date, *to_date; /* "YYYY-MM-DD", inclusive local days; NULL: unbounded */
    void (*progress)(void *arg, uint64_t done, uint64_t total); /* records; may be NULL */
    void *progress_arg;
    struct engine_opts engine;      /* tuning (engine_opts_default when zeroed) */
};

struct rollup_rebuild_summary {
    uint64_t log_start, log_end;    /* offsets replayed [start, end) */
    uint64_t events_read, events_counted, events_excluded, events_duplicate;
    uint64_t records_corrupt;       /* records that did not decode (skipped) */
    uint64_t buckets_written;       /* rollup cells written */
    uint64_t visits_written;
    double elapsed_s;
    double flush_s, write_s;        /* of elapsed: in engine flushes, of which batch writes */
    struct rollup_digest digest;    /* of the whole store after the rebuild */
};

/* See REBUILD above, over every source (the local log, or this node's partitions: each
 * replayed from its start with its own state prefix; log_start/log_end are sums).
 * 0, TALLY_EINVAL (bad date or site), or the first I/O error. */
int rollup_rebuild(struct store *s, const struct rollup_source *src, size_t nsrc,
                   const struct rollup_rebuild_opts *opt, struct rollup_rebuild_summary *out);

/* Parses "YYYY-MM-DD" into days since 1970-01-01. 0 or TALLY_EINVAL. */
int rollup_parse_date(const char *s, int64_t *day);

/* Time zone of a site under cfg (the engine's tz callback); "UTC" when not configured. */
const char *rollup_site_tz(const struct tally_config *cfg, const char *site, size_t len);

#endif
