/*
 * raw: the raw event store: every derived event, by site and time, for queries that rollups
 * cannot answer (several filters, several dimensions, regexes), exports and funnels.
 *
 * KEYS (raw CF)   site id (u32 BE) | UTC hour (u32 BE, ts_ms / 3600000) | first offset (u64 BE)
 * A value is a BLOCK of up to RAW_BLOCK_EVENTS_MAX events of one site and one UTC hour, written
 * by one consumer flush; "first offset" is the smallest log offset in the block, so keys never
 * collide (an offset lives in exactly one block). A site's events of [from, to) are the blocks of
 * a contiguous key range: one seek and a sequential read.
 *
 * A block's rows are sorted by (visitor, ts, offset), so that a visitor's rows follow each
 * other and repeat most fields. Two layouts; readers take both, writers write version 2.
 *
 * BLOCK LAYOUT version 2 (columns): u8 version = 2, varint count n, then 26 SECTIONS in this
 * order, each as varint byte length + u8 codec + payload: codec 0 = the section's bytes as
 * they are; codec 1 = varint decompressed length (at most RAW_SECTION_BYTES_MAX) + one LZ4
 * block (used when it saves a quarter or more). A reader skips a column it does not need in
 * one step, decompresses only the ones it reads, and reads those as arrays:
 *     visitor      varint r, r x (u64 LE visitor, varint run length >= 1); runs cover n rows
 *     offset       ucol of offset - the key's first offset (the block's smallest)
 *     ts           ucol of ts_ms - the hour's start (0 .. RAW_HOUR_MS - 1)
 *     received     ucol of zigzag(received_ms - ts_ms)
 *     flags        ucol of RAW_F_*
 *     field f      ucol of dictionary ids, one section per field in devent_field order (19)
 *     props        varint m, m x (varint row - previous entry's row (the first: row), varint
 *                  k (1..30), k x (varint key id, varint value id)): the rows with props only
 *     revenue      varint m, m x (varint row delta as for props, svarint micros, varint
 *                  currency id)
 * where a ucol is u8 w then: w = 0: every value 0 (no more bytes); w = 255: one constant,
 * varint; w = 1, 2, 3, 4 or 8: n values of w bytes, little-endian (the narrowest that holds
 * the column). The raw column family is not compressed by RocksDB (the sections are), so a
 * scan decompresses only the columns it reads.
 *
 * BLOCK LAYOUT version 1 (rows; still read). Each row stores only what differs from the row
 * before it:
 *     u8 version = 1, varint count, then per row:
 *     varint mask   bit 0 visitor differs, bit 1 flags differ, bit 2+f string field f differs
 *                   (f in devent_field order), bit 21 props follow, bit 22 revenue follows
 *     [bit 0]  u64 LE visitor
 *     svarint  offset - previous row's offset (first row: - the key's first offset)
 *     svarint  ts_ms - previous row's ts_ms (first row: - the hour's start)
 *     svarint  received_ms - ts_ms
 *     [bit 1]  varint flags (RAW_F_*)
 *     [bit 2+f] varint dictionary id of field f (0 = empty string), for each differing f
 *     [bit 21] varint n (1..30), n x (varint key id, varint value id)
 *     [bit 22] svarint revenue micros, varint currency id
 * The initial "previous row" has visitor 0, flags 0 and every id 0. A block that does not
 * decode exactly is TALLY_ECORRUPT.
 *
 * DICTIONARY (dict CF, per site). Strings are stored once per site and referred to by id:
 *     'S' | site (u32 BE) | string bytes -> id (u32 BE)
 *     'I' | site (u32 BE) | id (u32 BE)  -> string bytes
 *     'N' | site (u32 BE)                -> next id to assign (u32 BE)
 * Ids start at 1 (0 is the empty string) and are assigned in log order by the one raw consumer,
 * in the same write batch as the blocks that use them (so a crash never leaves a block whose
 * ids are unknown, and a replay assigns the same ids again). Filters are evaluated on ids: look
 * the value up once (raw_dict_find, or raw_dict_each for contains/regex), then compare ids.
 *
 * RETENTION. raw_retention deletes whole hours before a cut with one range deletion.
 *
 * THREADS. A raw_writer is owned by one thread (the raw consumer). raw_scan and the dict
 * readers may run on any thread, concurrently with the writer (RocksDB snapshots).
 */
#ifndef TALLY_STORE_RAW_H
#define TALLY_STORE_RAW_H

#include <stdbool.h>
#include <stdint.h>

#include "rollup/devent.h"
#include "store/store.h"

#define RAW_BLOCK_EVENTS_MAX 4096
#define RAW_DICT_CACHE_BYTES_MAX (64u << 20) /* writer's dictionary cache, cleared beyond */
#define RAW_STRING_BYTES_MAX 4096            /* longer strings are cut (at a UTF-8 boundary) */
#define RAW_HOUR_MS 3600000LL
#define RAW_SECTION_BYTES_MAX (1u << 20) /* a v2 section's decompressed size, at most */

#define RAW_F_BOT 0x1u
#define RAW_F_HOST_NOT_ALLOWED 0x2u
#define RAW_F_DUPLICATE 0x4u      /* a repeated client event id (dedup.h) */
#define RAW_F_PAGEVIEW 0x8u
#define RAW_F_NONINTERACTIVE 0x10u
#define RAW_F_EXCLUDED (RAW_F_BOT | RAW_F_HOST_NOT_ALLOWED | RAW_F_DUPLICATE)

struct raw_prop {
    uint32_t key, value; /* dictionary ids */
};

/* One stored event as a scan returns it. */
struct raw_event {
    uint64_t offset;
    int64_t ts_ms, received_ms;
    uint64_t visitor;
    uint32_t flags; /* RAW_F_* */
    uint32_t id[DE_FIELD_COUNT]; /* dictionary ids, 0 = "" */
    uint32_t props_count;
    struct raw_prop props[DE_PROPS_MAX];
    bool has_revenue;
    int64_t revenue_micros;
    uint32_t currency_id;
};

struct raw_writer;

/* A writer for the store s (borrowed; must outlive the writer). NULL on OOM. */
struct raw_writer *raw_writer_new(struct store *s);
void raw_writer_free(struct raw_writer *w);

/* The layout of the blocks w writes: 2 (the default) or 1 (tests of the version-1 reader). */
void raw_writer_set_block_version(struct raw_writer *w, int version);

/* Buffers one event of site site_id. extra_flags adds RAW_F_DUPLICATE. Assigns dictionary ids
 * (pending until raw_writer_commit). 0, TALLY_ENOMEM, TALLY_EIO (dictionary read). */
int raw_writer_add(struct raw_writer *w, uint32_t site_id, const struct devent *ev,
                   uint32_t extra_flags);
/* Events buffered since the last flush. */
size_t raw_writer_pending(const struct raw_writer *w);
/* Appends the buffered events as blocks, and the new dictionary entries, to batch b, and
 * empties the buffer. 0 or TALLY_ENOMEM. */
int raw_writer_flush(struct raw_writer *w, struct store_batch *b);
/* After the batch was written: the new dictionary entries are now durable. */
void raw_writer_commit(struct raw_writer *w);
/* After the batch failed: forget buffered events and pending dictionary entries. */
void raw_writer_abort(struct raw_writer *w);

/* Calls fn for every stored event of site_id with from_ms <= ts_ms < to_ms, block by block in
 * key order (by UTC hour, then by block), rows within a block by (visitor, ts, offset). fn
 * returns 0 to go on, anything else to stop (raw_scan then returns that value). ev is valid for
 * the call only. Excluded events (RAW_F_EXCLUDED) are included: filter on flags.
 * 0, fn's value, TALLY_ECORRUPT, TALLY_EIO. Any thread. */
typedef int (*raw_scan_fn)(void *arg, const struct raw_event *ev);
int raw_scan(struct store *s, uint32_t site_id, int64_t from_ms, int64_t to_ms, raw_scan_fn fn,
             void *arg);

/* ---- projection scan, hour by hour (funnels: visitor state machines over time) ----
 * One stored event reduced to what a per-visitor pass needs: time, identity, visitor, flags and
 * the dictionary ids of up to RAW_ROW_FIELDS_MAX chosen fields and property values. 40 bytes
 * (the time as milliseconds into its hour, which every consumer knows: 48-byte rows with an
 * int64 time cost the decoding and the judging threads ~4 % more CPU on bench/query's filter2);
 * a caller that turns a byte budget into rows_max divides by sizeof(struct raw_row). */
#define RAW_ROW_FIELDS_MAX 4
struct raw_row {
    uint64_t visitor;
    uint64_t offset;
    uint32_t ts_in_hour_ms; /* since the start of its UTC hour (raw_hour_fn's hour_start_ms) */
    uint32_t flags;         /* RAW_F_* */
    /* ids of fields[0..nfields), then (raw_scan_hours_props) of the values of prop_keys[0..
     * nprops); the slots after those are 0 */
    uint32_t val[RAW_ROW_FIELDS_MAX];
};

/* Calls fn once per UTC hour of [from_ms, to_ms) that holds events of site_id, with ALL of
 * that hour's events in the range (every block of the hour), hours in time order, such that
 * EVERY VISITOR'S ROWS COME IN (ts, offset) ORDER: a caller sees each visitor's events in time
 * order while holding one hour. Each block is sorted by (visitor, ts, offset), and so is an
 * hour of one flush. An hour whose blocks form up to 16 sorted runs (a run per flush at most;
 * HOUR_RUNS_KEPT + 1 in raw.c) is delivered as those runs one after
 * the other, each sorted by visitor, so a visitor may appear in several runs; a visitor whose
 * rows across the runs were not in time order (a late event) has them reordered within the
 * places they hold. An hour of more runs is merged into one (visitor, ts, offset) order (a
 * natural merge sort of the runs). rows_max bounds the rows
 * held for one hour (beyond: TALLY_ETOOBIG); at most RAW_SCAN_HOURS_HELD hours are held at once.
 * threads (at most RAW_SCAN_THREADS_MAX): decoding threads started for the call besides the
 * caller's, which decodes too when it would otherwise wait (0: the caller alone); fn always
 * runs on the caller's thread, hour after hour. The threads read through iterators opened one
 * after the other, so a flush landing between two openings may be seen by some hours only.
 * fields: enum devent_field values. 0, fn's value, TALLY_ETOOBIG, TALLY_ENOMEM,
 * TALLY_ECORRUPT, TALLY_EIO, TALLY_EINVAL (a bad field). Any thread. */
#define RAW_SCAN_THREADS_MAX 4
#define RAW_SCAN_HOURS_HELD 8 /* = RAW_CHUNK_SLOTS x RAW_CHUNK_HOURS in raw.c */
typedef int (*raw_hour_fn)(void *arg, int64_t hour_start_ms, const struct raw_row *rows,
                           size_t n);
int raw_scan_hours(struct store *s, uint32_t site_id, int64_t from_ms, int64_t to_ms,
                   const int *fields, size_t nfields, size_t rows_max, unsigned threads,
                   raw_hour_fn fn, void *arg);

/* raw_scan_hours, with property values too: row->val[nfields + i] is the dictionary id of the
 * value of property key id prop_keys[i] on that event (0 when the event lacks that key; the
 * first value when an event holds the key twice); nfields + nprops <= RAW_ROW_FIELDS_MAX (else
 * TALLY_EINVAL). prop_keys is read during the call only. Version-2 blocks then also decompress
 * and walk their props section (nprops = 0 reads it not at all). Same order, threads, limits
 * and results as raw_scan_hours otherwise. */
int raw_scan_hours_props(struct store *s, uint32_t site_id, int64_t from_ms, int64_t to_ms,
                         const int *fields, size_t nfields, const uint32_t *prop_keys,
                         size_t nprops, size_t rows_max, unsigned threads, raw_hour_fn fn,
                         void *arg);

/* The projection of one block value (tools, tests, fuzzing): *rows (malloc'd, caller frees)
 * holds its *n rows in block order (times into the hour of the key). 0, TALLY_ECORRUPT,
 * TALLY_ENOMEM, TALLY_EINVAL. The projection checks bounds and the hour but, unlike
 * raw_block_decode, not every byte of the columns it skips. */
int raw_block_project(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                      const int *fields, size_t nfields, struct raw_row **rows, size_t *n);

/* raw_scan reading only what a caller uses: the ids of the fields in field_mask (bit f: enum
 * devent_field f) and, with with_props, the props; times, visitor, offset, flags and revenue
 * always. Fields outside the mask read as 0 and props as none from version-2 blocks (whose
 * other columns are neither decompressed nor decoded); version-1 blocks give everything.
 * Same results and threads as raw_scan. */
int raw_scan_some(struct store *s, uint32_t site_id, int64_t from_ms, int64_t to_ms,
                  uint32_t field_mask, bool with_props, raw_scan_fn fn, void *arg);

/* Dictionary readers (any thread). raw_dict_find: 0 with *id, TALLY_ENOENT when the site never
 * stored the string ("" is always id 0). raw_dict_string: *out malloc'd (caller frees),
 * NUL-terminated, *len its length; TALLY_ENOENT for an unknown id. raw_dict_each: fn for every
 * string of the site in id order; fn returns non-zero to stop. */
int raw_dict_find(struct store *s, uint32_t site_id, const char *str, uint32_t len,
                  uint32_t *id);
int raw_dict_string(struct store *s, uint32_t site_id, uint32_t id, char **out, uint32_t *len);
int raw_dict_each(struct store *s, uint32_t site_id,
                  int (*fn)(void *arg, uint32_t id, const char *str, uint32_t len), void *arg);

/* Compaction. A live server flushes the raw store every second, so an hour of a site is
 * thousands of small blocks, each its own sorted run: a scan then pays per block, and
 * raw_scan_hours merges thousands of runs. raw_compact_hour rewrites one (site, hour) as the
 * fewest full blocks in (visitor, ts, offset) order, as a rebuild writes them: every block of
 * the hour is read through one iterator, decoded, and in ONE batch its key is deleted and the
 * new blocks are put (keyed by their lowest offset: a block written meanwhile by the raw
 * consumer holds other offsets, so its key is never touched; a new key equal to an old one is
 * put after the delete). Events, fields, props and revenue come out exactly as they went in
 * (ids unchanged, no dictionary writes). Nothing is written when the hour already has no more
 * blocks than its events need or fewer than 2 small ones (under half full). An hour of more
 * than RAW_COMPACT_EVENTS_MAX events is left alone (TALLY_ETOOBIG): its rows are held in
 * memory (~150 bytes each, ~20 MiB at most). Must not run beside raw_retention of the same
 * site (both run on the raw consumer's thread). 0, TALLY_ETOOBIG, TALLY_ENOMEM, TALLY_ECORRUPT, TALLY_EIO. */
#define RAW_COMPACT_EVENTS_MAX 131072
struct raw_compact_stats {
    uint64_t events;
    uint64_t blocks_before, small_before, blocks_after;
};
int raw_compact_hour(struct store *s, uint32_t site_id, uint32_t hour,
                     struct raw_compact_stats *st);

/* Deletes the site's blocks of every UTC hour that ends at or before cut_ms. 0 or TALLY_EIO. */
int raw_retention(struct store *s, uint32_t site_id, int64_t cut_ms);

/* Decodes one block value (for tools and tests): fn per row. 0, fn's value, TALLY_ECORRUPT. */
int raw_block_decode(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                     raw_scan_fn fn, void *arg);

#endif
