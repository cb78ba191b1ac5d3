/*
 * consumer: the log-reading loops behind rollup.h's service and rebuild (internal header).
 *
 * A feeder turns a log record into a derived event: decode (event.h), resolve the site name or
 * id to the configured site (cached per consumer), derive (derive.h). A rawcons is the raw
 * store's consumer state (writer, dedup, cursor, watermark), persisted under RAW_STATE_PREFIX.
 * consumer_run_* read the log from the consumer's cursor to the committed end (catch-up), or
 * until told to stop when `live` (then waiting for new records), flushing per the config.
 * One thread per loop.
 */
#ifndef TALLY_ROLLUP_CONSUMER_H
#define TALLY_ROLLUP_CONSUMER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "log/evlog.h"
#include "rollup/derive.h"
#include "rollup/engine.h"
#include "rollup/rollup.h"

struct feeder;

struct feeder *feeder_new(const struct tally_config *cfg);
void feeder_free(struct feeder *f);
/* 0 with *out (valid until the next call), or TALLY_ECORRUPT for a record that is no event. */
int feeder_derive(struct feeder *f, uint64_t offset, const void *data, size_t len,
                  struct devent *out);
uint64_t feeder_corrupt(const struct feeder *f);

/* Progress and control shared with other threads. */
struct consumer_status {
    _Atomic uint64_t cursor;
    _Atomic uint64_t events;
    _Atomic uint64_t flushes; /* output + cursor batches written (since start) */
    _Atomic uint64_t wakeups; /* live: times it was woken by new records after catching up */
    _Atomic uint64_t duplicates; /* rollup: events left out as duplicates (since start) */
    _Atomic uint64_t excluded;   /* rollup: bot / host-not-allowed events left out */
    _Atomic uint64_t compacted_hours;  /* raw: hours rewritten by compaction (since start) */
    _Atomic uint64_t compacted_blocks; /* raw: blocks those hours had before */
    _Atomic int err;
    atomic_bool stop;
    void (*progress)(void *arg, uint64_t done, uint64_t total);
    void *progress_arg;
};

/* Runs the rollup engine described by eopt (its state prefix decides where the cursor lives;
 * without one, from `from_offset`) over the log up to `end_offset` (UINT64_MAX: the committed
 * end at each step; with live, forever until st->stop). stats_out may be NULL. */
int consumer_run_rollup(struct store *s, struct evlog *log, const struct rollup_config *cfg,
                        const struct engine_opts *eopt, uint64_t from_offset,
                        uint64_t end_offset, bool live, struct consumer_status *st,
                        struct engine_stats *stats_out);

/* Runs the raw consumer likewise; its state lives under prefix (rollup_source_prefixes). */
int consumer_run_raw(struct store *s, struct evlog *log, const char *prefix,
                     const struct rollup_config *cfg, uint64_t end_offset, bool live,
                     struct consumer_status *st);


#endif
