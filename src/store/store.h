/*
 * store: Tally's RocksDB database, the only code that includes <rocksdb/c.h>.
 *
 * COLUMN FAMILIES (key layouts are documented by the modules that own them)
 *   raw       events by (site, hour, first offset): blocks of many events   (store/raw.h)
 *   rollups   cells by (site, granularity, dimension, bucket, value)         (rollup/cell.h)
 *   sessions  visits by (site, visitor, start)                               (rollup/engine.h)
 *   dict      site-scoped string dictionary of the raw store                 (store/raw.h)
 *   meta      consumer cursors and state, the site registry, markers
 * Every CF but raw (whose blocks compress their own columns) uses LZ4 compression; all use a
 * 10-bit bloom filter and one shared LRU block cache, except that the raw CF may have its own
 * (store_options.raw_cache_bytes): the blocks ad-hoc queries, funnels and exports scan then stay
 * in the process, unevicted by the rollups' cell reads of ingest or by the OS dropping its page
 * cache, and a scan reads them without a pread copy (bench/RESULTS.md, session 11).
 *
 * SITE REGISTRY (meta CF). Sites are numbered for key prefixes: "S" name -> u32 id (BE) and
 * "I" u32 id (BE) -> name; ids start at 1 and are assigned on first use, written at once (before
 * any batch that uses the id, so the WAL's prefix order keeps them consistent after a crash).
 * Ids are per database: two stores may number the same site differently, so anything compared
 * across stores (digests) maps ids back to names.
 *
 * EXACTLY-ONCE. A consumer writes its output and its cursor in one store_batch with one
 * store_write: RocksDB applies a write batch atomically, and after a crash recovers a prefix of
 * the writes in order, so output and cursor always agree. Writes go to the WAL without fsync by
 * default: a process crash loses nothing; an OS crash may lose the last writes of the store,
 * cursor included, which the consumer then redoes from the durable event log.
 *
 * THREADS. A store may be used from any thread concurrently (RocksDB is thread-safe); a batch
 * or an iterator is used by one thread at a time. Returned values are malloc'd and owned by the
 * caller (free()).
 */
#ifndef TALLY_STORE_H
#define TALLY_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum store_cf {
    STORE_CF_RAW = 0,
    STORE_CF_ROLLUPS = 1,
    STORE_CF_SESSIONS = 2,
    STORE_CF_DICT = 3,
    STORE_CF_META = 4,
    STORE_CF_COUNT = 5,
};

#define STORE_SITES_MAX 65536
#define STORE_SITE_NAME_BYTES_MAX 255

struct store;
struct store_batch;
struct store_iter;

struct store_options {
    const char *dir;                 /* database directory (created when missing) */
    size_t block_cache_bytes;        /* shared LRU cache; default 64 MiB */
    size_t raw_cache_bytes;          /* the raw CF's own LRU cache; 0: the shared one (default) */
    size_t write_buffer_bytes;       /* memtable size per CF; default 32 MiB */
    bool read_only;                  /* open for reading only (digest, offline tools) */
    bool sync_writes;                /* fsync the WAL on every store_write; default false */
    bool background_low_priority;    /* RocksDB flush/compaction threads at a lower CPU
                                        priority (the server: ingest first); default false */
    bool bulk_writes;                /* offline bulk writing (tally --rebuild): writes skip
                                        RocksDB's write-ahead log and the families' memtables
                                        are flushed together (atomic_flush), so after a crash
                                        the store is as of its last flush, every write batch
                                        whole or absent across all families; closing flushes
                                        what is in memory. Not for the server: a crash would
                                        lose acknowledged consumer progress (re-read from the
                                        log, but slower to restart). Default false */
    size_t memo_bytes_max;           /* derived results kept in memory (memo.h); 0: none;
                                        default STORE_MEMO_BYTES_DEFAULT */
};

#define STORE_MEMO_BYTES_DEFAULT (32u << 20)

void store_options_default(struct store_options *o);

/* The store's memo (memo.h): the cache of derived results and the change clock that writers
 * of rollup cells advance. Owned by the store, valid until store_close. Any thread. */
struct memo *store_memo(struct store *s);

/* Opens (creating) the database. *out is owned by the caller (store_close). Errors:
 * TALLY_EIO (RocksDB refused; the reason goes to diag), TALLY_ELOCKED (another process holds
 * the database), TALLY_ENOMEM. */
int store_open(const struct store_options *opt, struct store **out);
/* Closes and frees; NULL is a no-op. No batch or iterator of this store may be in use. */
void store_close(struct store *s);

/* WRITE FAILURES. The first store_write that RocksDB refuses with an I/O error (disk full,
 * EIO) marks the store failed: from then on store_write returns that error at once without
 * touching RocksDB (whose 7.8 WAL writer must not be used again after an error), reads still
 * work. store_failed gives the error (0 while healthy); store_reopen closes and reopens the
 * database (RocksDB recovers its WAL), reloads the site registry and clears the mark: 0, or
 * TALLY_ENOSPC while the disk has less than 4 MiB free, counting what the failed database
 * holds (deleted files it keeps open, its preallocated WAL: when that makes enough, it is
 * closed first; else nothing changed and reads keep working), or the open error
 * (the store stays failed and closed; call again later). store_reopen needs
 * its own thread: it waits until no other call or iterator uses the database (queries may
 * run meanwhile: they wait, and see TALLY_ECLOSED if the reopen failed). Consumer threads
 * must be stopped first (their batches hold CF handles). */
int store_failed(struct store *s);
int store_reopen(struct store *s);

/* Point read: *val (malloc'd, caller frees) and *len; TALLY_ENOENT when absent; TALLY_EIO. */
int store_get(struct store *s, enum store_cf cf, const void *key, size_t klen, void **val,
              size_t *len);

/* n point reads in one call. vals[i] gets a malloc'd value or NULL when absent; lens[i] its
 * length. 0, or TALLY_EIO when any read failed (then every vals[i] is NULL). */
int store_multi_get(struct store *s, enum store_cf cf, size_t n, const void *const *keys,
                    const size_t *klens, void **vals, size_t *lens);

/* Write batches: collect puts and deletes, then store_write applies them atomically. A batch
 * belongs to the store it was made for (it records that store's CF handles). NULL on OOM. */
struct store_batch *store_batch_new(struct store *s);
void store_batch_free(struct store_batch *b);
void store_batch_clear(struct store_batch *b);
void store_batch_put(struct store_batch *b, enum store_cf cf, const void *key, size_t klen,
                     const void *val, size_t vlen);
void store_batch_delete(struct store_batch *b, enum store_cf cf, const void *key, size_t klen);
/* Deletes every key in [begin, end). */
void store_batch_delete_range(struct store_batch *b, enum store_cf cf, const void *begin,
                              size_t blen, const void *end, size_t elen);
size_t store_batch_bytes(struct store_batch *b);
int store_batch_count(struct store_batch *b);

/* Applies the batch atomically (the batch is left as it was; clear it to reuse).
 * 0, TALLY_EIO, TALLY_ENOSPC, TALLY_ECLOSED (read-only store). */
int store_write(struct store *s, struct store_batch *b);

/* Iterators over one CF, restricted to keys in [lower, upper) (either may be NULL: unbounded);
 * the bounds are copied. The iterator reads a consistent snapshot taken at creation. */
struct store_iter *store_iter_new(struct store *s, enum store_cf cf, const void *lower,
                                  size_t llen, const void *upper, size_t ulen);
/* store_iter_new whose reads leave the block cache as it was (a pass over data about to be
 * rewritten, such as raw compaction, must not evict what queries keep reading). */
struct store_iter *store_iter_new_uncached(struct store *s, enum store_cf cf, const void *lower,
                                           size_t llen, const void *upper, size_t ulen);
void store_iter_free(struct store_iter *it);
/* Bytes held by the shared block cache and by the raw CF's own (0 when it has none). */
void store_cache_usage(struct store *s, size_t *shared_bytes, size_t *raw_bytes);
void store_iter_seek_first(struct store_iter *it);
void store_iter_seek_last(struct store_iter *it);
/* Positions at the first key >= key. */
void store_iter_seek(struct store_iter *it, const void *key, size_t klen);
/* Positions at the last key <= key. */
void store_iter_seek_prev(struct store_iter *it, const void *key, size_t klen);
bool store_iter_valid(struct store_iter *it);
void store_iter_next(struct store_iter *it);
void store_iter_prev(struct store_iter *it);
/* Key and value of the current entry: owned by the iterator, valid until it moves. */
const uint8_t *store_iter_key(struct store_iter *it, size_t *len);
const uint8_t *store_iter_value(struct store_iter *it, size_t *len);
/* 0, or TALLY_EIO when the iteration stopped on an error (check when !valid). */
int store_iter_status(struct store_iter *it);

/* Site registry (see the top of this file). Returns 0 with *id; TALLY_ENOENT when the site is
 * unknown and create is false; TALLY_EFULL at STORE_SITES_MAX sites; TALLY_EINVAL for an empty
 * or too long name; TALLY_EIO. Any thread. */
int store_site_id(struct store *s, const char *name, size_t len, bool create, uint32_t *id);
/* Name of a site id into buf (NUL-terminated; cap >= STORE_SITE_NAME_BYTES_MAX + 1).
 * 0 or TALLY_ENOENT. Any thread. */
int store_site_name(struct store *s, uint32_t id, char *buf, size_t cap);
/* Every registered site: calls fn(arg, id, name) in id order. */
void store_sites_each(struct store *s, void (*fn)(void *arg, uint32_t id, const char *name),
                      void *arg);

/* Meta helpers: a u64 value under a text key (cursors, watermarks). store_meta_get_u64 gives
 * TALLY_ENOENT when absent; store_batch_put_u64 adds the write to a batch. */
int store_meta_get_u64(struct store *s, const char *key, uint64_t *v);
void store_batch_put_u64(struct store_batch *b, const char *key, uint64_t v);

/* Approximate bytes of one CF on disk (SST files) plus its memtables. */
uint64_t store_cf_bytes(struct store *s, enum store_cf cf);
/* Flushes memtables of every CF to SST files (waits). 0 or TALLY_EIO. */
int store_flush(struct store *s);
/* Compacts a whole CF (waits): applies deletions and range deletions to the files. */
int store_compact(struct store *s, enum store_cf cf);
/* A RocksDB property of a CF ("rocksdb.estimate-num-keys", ...) into buf; 0 or TALLY_ENOENT. */
int store_property(struct store *s, enum store_cf cf, const char *name, char *buf, size_t cap);

/* Name of a CF ("raw", "rollups", ...). */
const char *store_cf_name(enum store_cf cf);

/* Big-endian helpers for key building (keys sort bytewise). */
/*
 * Writes a consistent point-in-time copy of the whole database (every column family) into
 * `dir`, which must not exist (its parent must): a RocksDB checkpoint, SST files hard-linked
 * when on the same file system, copied otherwise. Because every consumer writes its output and
 * its cursor in one batch, the copy holds matching outputs and cursors. Any thread, concurrently
 * with reads and writes. 0, TALLY_EIO (RocksDB refused: the reason goes to diag), TALLY_ECLOSED.
 */
int store_checkpoint(struct store *s, const char *dir);

static inline void store_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void store_put_be64(uint8_t *p, uint64_t v)
{
    store_put_be32(p, (uint32_t)(v >> 32));
    store_put_be32(p + 4, (uint32_t)v);
}
static inline uint32_t store_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t store_get_be64(const uint8_t *p)
{
    return (uint64_t)store_get_be32(p) << 32 | store_get_be32(p + 4);
}

#endif
