/*
 * store: RocksDB wrapper (see store.h for the column families, the site registry and the
 * exactly-once rule). RocksDB reports errors as malloc'd strings: they go to diag and become
 * TALLY_EIO (TALLY_ENOSPC when the message says the disk is full).
 */
#include "store/store.h"

#include <pthread.h>
#include <stdatomic.h>
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/diag.h"
#include "store/memo.h"
#include "tally/error.h"

#define STORE_RAW_DEL_WINDOW 1024 /* keys */
#define STORE_RAW_DEL_TRIGGER 256 /* deletions in such a window */
#define STORE_REOPEN_FREE_BYTES_MIN (4u << 20) /* store_reopen waits for this much free disk */

static const char *const cf_names[STORE_CF_COUNT] = {"raw", "rollups", "sessions", "dict",
                                                      "meta"};

struct store {
    rocksdb_t *db;
    rocksdb_options_t *db_opts;
    rocksdb_options_t *cf_opts[STORE_CF_COUNT];
    rocksdb_block_based_table_options_t *table_opts;
    rocksdb_cache_t *cache;
    rocksdb_cache_t *raw_cache;                          /* NULL: the raw CF uses cache */
    rocksdb_block_based_table_options_t *raw_table_opts; /* with raw_cache */
    rocksdb_column_family_handle_t *cf[STORE_CF_COUNT];
    rocksdb_writeoptions_t *wopts;
    rocksdb_readoptions_t *ropts;
    bool read_only;
    char *dir;
    /* First write error (TALLY_EIO / TALLY_ENOSPC), 0 while healthy. Once set, store_write
     * refuses without calling RocksDB until store_reopen: RocksDB 7.8 keeps using a WAL writer
     * that saw an error once it resumes (an assertion in Debian's build), so a failed instance
     * is never written again. */
    _Atomic int failed_rc;
    /* Read-held by every call that uses db (an iterator holds it for its life), write-held by
     * store_reopen while it swaps the database: a query thread never sees a closed handle. */
    pthread_rwlock_t life;

    pthread_mutex_t sites_mu; /* guards the registry below */
    char **site_names;        /* index = id; [0] unused */
    uint32_t site_count;      /* highest id in use */

    struct memo *memo; /* derived results and the change clock (memo.h) */
};

struct store_batch {
    struct store *s;
    rocksdb_writebatch_t *wb;
};

struct store_iter {
    struct store *s; /* holds s->life for reading until store_iter_free */
    int status;      /* TALLY_ECLOSED when the store was closed (no db) */
    rocksdb_iterator_t *it;
    rocksdb_readoptions_t *ro;
    uint8_t *lower, *upper;
};

const char *store_cf_name(enum store_cf cf)
{
    return (unsigned)cf < STORE_CF_COUNT ? cf_names[cf] : "?";
}

struct memo *store_memo(struct store *s)
{
    return s->memo;
}

void store_options_default(struct store_options *o)
{
    memset(o, 0, sizeof *o);
    o->block_cache_bytes = 64u << 20;
    o->write_buffer_bytes = 32u << 20;
    o->memo_bytes_max = STORE_MEMO_BYTES_DEFAULT;
}

static int err_code(char *err, const char *what)
{
    int rc = TALLY_EIO;
    if (strstr(err, "No space") || strstr(err, "ENOSPC")) rc = TALLY_ENOSPC;
    diag_error("store: %s: %s", what, err);
    rocksdb_free(err);
    return rc;
}

static int sites_load(struct store *s);

/* Block-based table options over cache: 16 KiB blocks, a 10-bit bloom filter, format 5. */
static rocksdb_block_based_table_options_t *table_options_new(rocksdb_cache_t *cache)
{
    rocksdb_block_based_table_options_t *t = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(t, cache);
    rocksdb_block_based_options_set_filter_policy(t, rocksdb_filterpolicy_create_bloom_full(10));
    rocksdb_block_based_options_set_block_size(t, 16 * 1024);
    rocksdb_block_based_options_set_format_version(t, 5);
    return t;
}

/* One process-wide wrapper of RocksDB's default Env whose flush and compaction threads run at
 * a lower CPU priority, so they yield to ingest and catch up when it is idle. Created once,
 * kept for the life of the process (stores may be opened and closed many times). */
static rocksdb_env_t *g_low_env;
static pthread_once_t g_low_env_once = PTHREAD_ONCE_INIT;

static void low_env_make(void)
{
    g_low_env = rocksdb_create_default_env();
    rocksdb_env_lower_thread_pool_cpu_priority(g_low_env);
    rocksdb_env_lower_high_priority_thread_pool_cpu_priority(g_low_env);
}

static rocksdb_env_t *store_low_priority_env(void)
{
    pthread_once(&g_low_env_once, low_env_make);
    return g_low_env;
}

/* Opens s->db and the CF handles with the options already in s. */
static int db_open(struct store *s)
{
    const char *names[STORE_CF_COUNT + 1];
    const rocksdb_options_t *opts[STORE_CF_COUNT + 1];
    rocksdb_column_family_handle_t *handles[STORE_CF_COUNT + 1];
    names[0] = "default";
    opts[0] = s->db_opts;
    for (int i = 0; i < STORE_CF_COUNT; i++) {
        names[i + 1] = cf_names[i];
        opts[i + 1] = s->cf_opts[i];
    }
    char *err = NULL;
    if (s->read_only)
        s->db = rocksdb_open_for_read_only_column_families(s->db_opts, s->dir,
                                                           STORE_CF_COUNT + 1, names, opts,
                                                           handles, 0, &err);
    else
        s->db = rocksdb_open_column_families(s->db_opts, s->dir, STORE_CF_COUNT + 1, names,
                                             opts, handles, &err);
    if (err) {
        int rc = strstr(err, "lock") ? TALLY_ELOCKED
                 : (strstr(err, "No space") ? TALLY_ENOSPC : TALLY_EIO);
        diag_error("store: open %s: %s", s->dir, err);
        rocksdb_free(err);
        s->db = NULL;
        return rc;
    }
    rocksdb_column_family_handle_destroy(handles[0]);
    for (int i = 0; i < STORE_CF_COUNT; i++) s->cf[i] = handles[i + 1];
    return TALLY_OK;
}

static void db_close(struct store *s)
{
    if (!s->db) return;
    for (int i = 0; i < STORE_CF_COUNT; i++) {
        if (s->cf[i]) rocksdb_column_family_handle_destroy(s->cf[i]);
        s->cf[i] = NULL;
    }
    rocksdb_close(s->db);
    s->db = NULL;
}

int store_open(const struct store_options *opt, struct store **out)
{
    struct store *s = calloc(1, sizeof *s);
    if (!s) return TALLY_ENOMEM;
    pthread_mutex_init(&s->sites_mu, NULL);
    pthread_rwlock_init(&s->life, NULL);
    s->read_only = opt->read_only;
    s->dir = strdup(opt->dir);
    s->memo = memo_new(opt->memo_bytes_max);
    if (!s->dir || !s->memo) {
        store_close(s);
        return TALLY_ENOMEM;
    }
    size_t cache_bytes = opt->block_cache_bytes ? opt->block_cache_bytes : 64u << 20;
    size_t wbuf = opt->write_buffer_bytes ? opt->write_buffer_bytes : 32u << 20;

    s->cache = rocksdb_cache_create_lru(cache_bytes);
    s->table_opts = table_options_new(s->cache);
    if (opt->raw_cache_bytes) { /* the same table options, with the raw CF's own cache */
        s->raw_cache = rocksdb_cache_create_lru(opt->raw_cache_bytes);
        s->raw_table_opts = table_options_new(s->raw_cache);
    }

    s->db_opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->db_opts, 1);
    rocksdb_options_set_create_missing_column_families(s->db_opts, 1);
    rocksdb_options_set_max_background_jobs(s->db_opts, 2);
    /* without the WAL, only flushing all families at once keeps a batch that spans families
     * (output and cursor) whole across a crash */
    if (opt->bulk_writes) rocksdb_options_set_atomic_flush(s->db_opts, 1);
    rocksdb_options_set_keep_log_file_num(s->db_opts, 3);
    /* Only the header lines written at open go to RocksDB's LOG file: in RocksDB 7.8 a LOG
     * write that failed once (disk full) makes every later message an assertion failure in
     * Debian's build. Errors reach us as return values and go to diag. */
    rocksdb_options_set_info_log_level(s->db_opts, 5 /* HEADER_LEVEL */);
    rocksdb_options_set_stats_dump_period_sec(s->db_opts, 0);
    if (opt->background_low_priority)
        rocksdb_options_set_env(s->db_opts, store_low_priority_env());
    for (int i = 0; i < STORE_CF_COUNT; i++) {
        rocksdb_options_t *o = rocksdb_options_create();
        /* raw blocks compress their own columns (raw.h), so a scan decompresses only what
         * it reads; the other families are LZ4-compressed by RocksDB */
        rocksdb_options_set_compression(o, i == STORE_CF_RAW ? rocksdb_no_compression
                                                             : rocksdb_lz4_compression);
        rocksdb_options_set_block_based_table_factory(
            o, i == STORE_CF_RAW && s->raw_table_opts ? s->raw_table_opts : s->table_opts);
        rocksdb_options_set_write_buffer_size(o, i == STORE_CF_META ? (4u << 20) : wbuf);
        rocksdb_options_set_level_compaction_dynamic_level_bytes(o, 1);
        /* raw compaction (raw.h) deletes an hour's small blocks: a table file where any
         * STORE_RAW_DEL_WINDOW keys hold STORE_RAW_DEL_TRIGGER deletions is compacted soon,
         * so scans stop stepping over the tombstones */
        if (i == STORE_CF_RAW)
            rocksdb_options_add_compact_on_deletion_collector_factory(o, STORE_RAW_DEL_WINDOW,
                                                                      STORE_RAW_DEL_TRIGGER);
        s->cf_opts[i] = o;
    }
    int rc = db_open(s);
    if (rc) {
        store_close(s);
        return rc;
    }
    s->wopts = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wopts, opt->sync_writes ? 1 : 0);
    if (opt->bulk_writes) rocksdb_writeoptions_disable_WAL(s->wopts, 1);
    s->ropts = rocksdb_readoptions_create();
    rc = sites_load(s);
    if (rc) {
        store_close(s);
        return rc;
    }
    *out = s;
    return TALLY_OK;
}

int store_failed(struct store *s)
{
    return atomic_load(&s->failed_rc);
}

/* Free bytes for us on the file system of dir (UINT64_MAX when unknown: no floor). */
static uint64_t store_free_bytes(const char *dir)
{
    struct statvfs vfs;
    if (statvfs(dir, &vfs) != 0) return UINT64_MAX;
    return (uint64_t)vfs.f_bavail * vfs.f_frsize;
}

/* Bytes this process holds under dir that closing the database would release: files deleted
 * but still open (from /proc/self/fd) and space allocated beyond the end of the files that
 * remain (RocksDB preallocates its WAL). An estimate for store_reopen's floor check. */
static uint64_t store_held_bytes(const char *dir)
{
    uint64_t held = 0;
    size_t dl = strlen(dir);
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            char link[64], target[4096];
            if (e->d_name[0] == '.') continue;
            snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
            ssize_t n = readlink(link, target, sizeof target - 1);
            if (n <= 0) continue;
            target[n] = 0;
            static const char del[] = " (deleted)";
            size_t dlen = sizeof del - 1;
            if ((size_t)n <= dlen || strcmp(target + n - dlen, del) != 0) continue;
            if (strncmp(target, dir, dl) != 0 || target[dl] != '/') continue;
            struct stat st;
            if (stat(link, &st) == 0) held += (uint64_t)st.st_blocks * 512;
        }
        closedir(d);
    }
    d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            struct stat st;
            if (fstatat(dirfd(d), e->d_name, &st, 0) != 0 || !S_ISREG(st.st_mode)) continue;
            uint64_t alloc = (uint64_t)st.st_blocks * 512;
            if (alloc > (uint64_t)st.st_size) held += alloc - (uint64_t)st.st_size;
        }
        closedir(d);
    }
    return held;
}

int store_reopen(struct store *s)
{
    /* Reopening writes (a new WAL, MANIFEST, OPTIONS, the LOG header); on a still-full disk
     * it would only fail, and a failed LOG write is fatal in RocksDB 7.8. But the failed
     * database itself can hold the missing space: its preallocated WAL, and files it deleted
     * but still has open (seen on a 10 MiB tmpfs: 7.8 MiB, so the floor was never reached
     * while it stayed open). What closing would release counts as free; the database is
     * closed only when that is enough (else reads keep working while the disk is full). */
    uint64_t free_bytes = store_free_bytes(s->dir);
    if (free_bytes < STORE_REOPEN_FREE_BYTES_MIN) {
        uint64_t held = s->db ? store_held_bytes(s->dir) : 0;
        if (free_bytes + held < STORE_REOPEN_FREE_BYTES_MIN) {
            diag_info("store: %llu bytes free in %s (%llu more held by the failed database), "
                      "reopening needs %llu", (unsigned long long)free_bytes, s->dir,
                      (unsigned long long)held,
                      (unsigned long long)STORE_REOPEN_FREE_BYTES_MIN);
            return TALLY_ENOSPC;
        }
        pthread_rwlock_wrlock(&s->life);
        db_close(s);
        pthread_rwlock_unlock(&s->life);
        free_bytes = store_free_bytes(s->dir);
        if (free_bytes < STORE_REOPEN_FREE_BYTES_MIN) {
            diag_info("store: %llu bytes free in %s after closing the failed database, "
                      "reopening needs %llu", (unsigned long long)free_bytes, s->dir,
                      (unsigned long long)STORE_REOPEN_FREE_BYTES_MIN);
            return TALLY_ENOSPC;
        }
    }
    pthread_rwlock_wrlock(&s->life);
    db_close(s);
    int rc = db_open(s);
    pthread_rwlock_unlock(&s->life);
    if (rc) return rc;
    pthread_mutex_lock(&s->sites_mu);
    rc = sites_load(s);
    pthread_mutex_unlock(&s->sites_mu);
    if (rc) {
        pthread_rwlock_wrlock(&s->life);
        db_close(s);
        pthread_rwlock_unlock(&s->life);
        return rc;
    }
    atomic_store(&s->failed_rc, 0);
    return TALLY_OK;
}

void store_close(struct store *s)
{
    if (!s) return;
    db_close(s);
    memo_free(s->memo);
    free(s->dir);
    if (s->wopts) rocksdb_writeoptions_destroy(s->wopts);
    if (s->ropts) rocksdb_readoptions_destroy(s->ropts);
    for (int i = 0; i < STORE_CF_COUNT; i++)
        if (s->cf_opts[i]) rocksdb_options_destroy(s->cf_opts[i]);
    if (s->db_opts) rocksdb_options_destroy(s->db_opts);
    if (s->table_opts) rocksdb_block_based_options_destroy(s->table_opts);
    if (s->cache) rocksdb_cache_destroy(s->cache);
    if (s->raw_table_opts) rocksdb_block_based_options_destroy(s->raw_table_opts);
    if (s->raw_cache) rocksdb_cache_destroy(s->raw_cache);
    if (s->site_names) {
        for (uint32_t i = 0; i <= s->site_count; i++) free(s->site_names[i]);
        free(s->site_names);
    }
    pthread_mutex_destroy(&s->sites_mu);
    pthread_rwlock_destroy(&s->life);
    free(s);
}

static int store_get_locked(struct store *s, enum store_cf cf, const void *key, size_t klen, void **val,
              size_t *len)
{
    char *err = NULL;
    size_t vlen = 0;
    char *v = rocksdb_get_cf(s->db, s->ropts, s->cf[cf], key, klen, &vlen, &err);
    if (err) return err_code(err, "get");
    if (!v) return TALLY_ENOENT;
    /* RocksDB's value is malloc'd by its allocator, which is the process malloc on Debian;
     * copy anyway so that callers may always free() it. */
    void *copy = malloc(vlen ? vlen : 1);
    if (!copy) {
        rocksdb_free(v);
        return TALLY_ENOMEM;
    }
    memcpy(copy, v, vlen);
    rocksdb_free(v);
    *val = copy;
    *len = vlen;
    return TALLY_OK;
}

static int store_multi_get_locked(struct store *s, enum store_cf cf, size_t n, const void *const *keys,
                    const size_t *klens, void **vals, size_t *lens)
{
    if (n == 0) return TALLY_OK;
    const rocksdb_column_family_handle_t **cfs = malloc(n * sizeof *cfs);
    char **errs = calloc(n, sizeof *errs);
    char **raw = calloc(n, sizeof *raw);
    if (!cfs || !errs || !raw) {
        free(cfs);
        free(errs);
        free(raw);
        return TALLY_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) cfs[i] = s->cf[cf];
    rocksdb_multi_get_cf(s->db, s->ropts, cfs, n, (const char *const *)keys, klens, raw, lens,
                         errs);
    int rc = TALLY_OK;
    for (size_t i = 0; i < n; i++) {
        if (errs[i]) {
            if (rc == TALLY_OK) rc = err_code(errs[i], "multi_get");
            else rocksdb_free(errs[i]);
        }
    }
    for (size_t i = 0; i < n; i++) {
        vals[i] = NULL;
        if (raw[i] && rc == TALLY_OK) {
            vals[i] = malloc(lens[i] ? lens[i] : 1);
            if (!vals[i]) rc = TALLY_ENOMEM;
            else memcpy(vals[i], raw[i], lens[i]);
        }
        if (raw[i]) rocksdb_free(raw[i]);
    }
    if (rc != TALLY_OK)
        for (size_t i = 0; i < n; i++) free(vals[i]), vals[i] = NULL;
    free(cfs);
    free(errs);
    free(raw);
    return rc;
}

struct store_batch *store_batch_new(struct store *s)
{
    struct store_batch *b = malloc(sizeof *b);
    if (!b) return NULL;
    b->s = s;
    b->wb = rocksdb_writebatch_create();
    return b;
}

void store_batch_free(struct store_batch *b)
{
    if (!b) return;
    rocksdb_writebatch_destroy(b->wb);
    free(b);
}

void store_batch_clear(struct store_batch *b)
{
    rocksdb_writebatch_clear(b->wb);
}

void store_batch_put(struct store_batch *b, enum store_cf cf, const void *key, size_t klen,
                     const void *val, size_t vlen)
{
    rocksdb_writebatch_put_cf(b->wb, b->s->cf[cf], key, klen, val, vlen);
}

void store_batch_delete(struct store_batch *b, enum store_cf cf, const void *key, size_t klen)
{
    rocksdb_writebatch_delete_cf(b->wb, b->s->cf[cf], key, klen);
}

void store_batch_delete_range(struct store_batch *b, enum store_cf cf, const void *begin,
                              size_t blen, const void *end, size_t elen)
{
    rocksdb_writebatch_delete_range_cf(b->wb, b->s->cf[cf], begin, blen, end, elen);
}

size_t store_batch_bytes(struct store_batch *b)
{
    size_t n = 0;
    rocksdb_writebatch_data(b->wb, &n);
    return n;
}

int store_batch_count(struct store_batch *b)
{
    return rocksdb_writebatch_count(b->wb);
}

static int store_write_locked(struct store *s, struct store_batch *b)
{
    if (s->read_only) return TALLY_ECLOSED;
    int rc = atomic_load(&s->failed_rc);
    if (rc) return rc;
    char *err = NULL;
    rocksdb_write(s->db, s->wopts, b->wb, &err);
    if (!err) return TALLY_OK;
    rc = err_code(err, "write");
    int none = 0;
    atomic_compare_exchange_strong(&s->failed_rc, &none, rc);
    return rc;
}

static struct store_iter *iter_new(struct store *s, enum store_cf cf, const void *lower,
                                   size_t llen, const void *upper, size_t ulen, bool fill_cache)
{
    struct store_iter *it = calloc(1, sizeof *it);
    if (!it) return NULL;
    pthread_rwlock_rdlock(&s->life);
    it->s = s;
    if (!s->db) { /* closed by a failed store_reopen: an empty iterator in error */
        it->status = TALLY_ECLOSED;
        return it;
    }
    it->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(it->ro, fill_cache);
    if (lower) {
        it->lower = malloc(llen ? llen : 1);
        if (!it->lower) goto fail;
        memcpy(it->lower, lower, llen);
        rocksdb_readoptions_set_iterate_lower_bound(it->ro, (const char *)it->lower, llen);
    }
    if (upper) {
        it->upper = malloc(ulen ? ulen : 1);
        if (!it->upper) goto fail;
        memcpy(it->upper, upper, ulen);
        rocksdb_readoptions_set_iterate_upper_bound(it->ro, (const char *)it->upper, ulen);
    }
    it->it = rocksdb_create_iterator_cf(s->db, it->ro, s->cf[cf]);
    return it;
fail:
    store_iter_free(it);
    return NULL;
}

struct store_iter *store_iter_new(struct store *s, enum store_cf cf, const void *lower, size_t llen,
                                  const void *upper, size_t ulen)
{
    return iter_new(s, cf, lower, llen, upper, ulen, true);
}

struct store_iter *store_iter_new_uncached(struct store *s, enum store_cf cf, const void *lower,
                                           size_t llen, const void *upper, size_t ulen)
{
    return iter_new(s, cf, lower, llen, upper, ulen, false);
}

void store_cache_usage(struct store *s, size_t *shared_bytes, size_t *raw_bytes)
{
    *shared_bytes = s->cache ? rocksdb_cache_get_usage(s->cache) : 0;
    *raw_bytes = s->raw_cache ? rocksdb_cache_get_usage(s->raw_cache) : 0;
}

void store_iter_free(struct store_iter *it)
{
    if (!it) return;
    if (it->it) rocksdb_iter_destroy(it->it);
    if (it->ro) rocksdb_readoptions_destroy(it->ro);
    free(it->lower);
    free(it->upper);
    if (it->s) pthread_rwlock_unlock(&it->s->life);
    free(it);
}

void store_iter_seek_first(struct store_iter *it)
{
    if (!it->it) return;
    rocksdb_iter_seek_to_first(it->it);
}

void store_iter_seek_last(struct store_iter *it)
{
    if (!it->it) return;
    rocksdb_iter_seek_to_last(it->it);
}

void store_iter_seek(struct store_iter *it, const void *key, size_t klen)
{
    if (!it->it) return;
    rocksdb_iter_seek(it->it, key, klen);
}

void store_iter_seek_prev(struct store_iter *it, const void *key, size_t klen)
{
    if (!it->it) return;
    rocksdb_iter_seek_for_prev(it->it, key, klen);
}

bool store_iter_valid(struct store_iter *it)
{
    return it->it && rocksdb_iter_valid(it->it) != 0;
}

void store_iter_next(struct store_iter *it)
{
    rocksdb_iter_next(it->it);
}

void store_iter_prev(struct store_iter *it)
{
    rocksdb_iter_prev(it->it);
}

const uint8_t *store_iter_key(struct store_iter *it, size_t *len)
{
    return (const uint8_t *)rocksdb_iter_key(it->it, len);
}

const uint8_t *store_iter_value(struct store_iter *it, size_t *len)
{
    return (const uint8_t *)rocksdb_iter_value(it->it, len);
}

int store_iter_status(struct store_iter *it)
{
    if (it->status) return it->status;
    char *err = NULL;
    rocksdb_iter_get_error(it->it, &err);
    if (err) return err_code(err, "iterate");
    return TALLY_OK;
}

/* ---- site registry ---- */

static int sites_grow(struct store *s, uint32_t id)
{
    /* site_names has room for ids 0..site_count; grow to hold id */
    char **p = realloc(s->site_names, (size_t)(id + 1) * sizeof *p);
    if (!p) return TALLY_ENOMEM;
    for (uint32_t i = s->site_names ? s->site_count + 1 : 0; i <= id; i++) p[i] = NULL;
    s->site_names = p;
    s->site_count = id;
    return TALLY_OK;
}

static int sites_load(struct store *s)
{
    if (s->site_names) /* a reload (store_reopen): start from an empty registry */
        for (uint32_t i = 0; i <= s->site_count; i++) {
            free(s->site_names[i]);
            s->site_names[i] = NULL;
        }
    int rc = sites_grow(s, 0);
    if (rc) return rc;
    s->site_count = 0;
    uint8_t lo = 'I', hi = 'J';
    struct store_iter *it = store_iter_new(s, STORE_CF_META, &lo, 1, &hi, 1);
    if (!it) return TALLY_ENOMEM;
    for (store_iter_seek_first(it); store_iter_valid(it); store_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *v = store_iter_value(it, &vl);
        if (kl != 5 || vl == 0 || vl > STORE_SITE_NAME_BYTES_MAX) continue;
        uint32_t id = store_get_be32(k + 1);
        if (id == 0 || id >= STORE_SITES_MAX) continue;
        if (id > s->site_count && (rc = sites_grow(s, id))) break;
        free(s->site_names[id]);
        s->site_names[id] = strndup((const char *)v, vl);
        if (!s->site_names[id]) {
            rc = TALLY_ENOMEM;
            break;
        }
    }
    if (!rc) rc = store_iter_status(it);
    store_iter_free(it);
    return rc;
}

int store_site_id(struct store *s, const char *name, size_t len, bool create, uint32_t *id)
{
    if (len == 0 || len > STORE_SITE_NAME_BYTES_MAX) return TALLY_EINVAL;
    int rc = TALLY_ENOENT;
    pthread_mutex_lock(&s->sites_mu);
    for (uint32_t i = 1; i <= s->site_count; i++) {
        const char *n = s->site_names[i];
        if (n && strlen(n) == len && memcmp(n, name, len) == 0) {
            *id = i;
            rc = TALLY_OK;
            goto done;
        }
    }
    if (!create) goto done;
    if (s->read_only) {
        rc = TALLY_ECLOSED;
        goto done;
    }
    uint32_t nid = s->site_count + 1;
    if (nid >= STORE_SITES_MAX) {
        rc = TALLY_EFULL;
        goto done;
    }
    char *copy = strndup(name, len);
    if (!copy) {
        rc = TALLY_ENOMEM;
        goto done;
    }
    uint8_t k1[1 + STORE_SITE_NAME_BYTES_MAX], k2[5], v2[4];
    k1[0] = 'S';
    memcpy(k1 + 1, name, len);
    k2[0] = 'I';
    store_put_be32(k2 + 1, nid);
    store_put_be32(v2, nid);
    struct store_batch *b = store_batch_new(s);
    if (!b) {
        free(copy);
        rc = TALLY_ENOMEM;
        goto done;
    }
    store_batch_put(b, STORE_CF_META, k1, 1 + len, v2, 4);
    store_batch_put(b, STORE_CF_META, k2, 5, name, len);
    rc = store_write(s, b);
    store_batch_free(b);
    if (rc == TALLY_OK) rc = sites_grow(s, nid);
    if (rc) {
        free(copy);
        goto done;
    }
    s->site_names[nid] = copy;
    *id = nid;
done:
    pthread_mutex_unlock(&s->sites_mu);
    return rc;
}

int store_site_name(struct store *s, uint32_t id, char *buf, size_t cap)
{
    int rc = TALLY_ENOENT;
    pthread_mutex_lock(&s->sites_mu);
    if (id >= 1 && id <= s->site_count && s->site_names[id]) {
        snprintf(buf, cap, "%s", s->site_names[id]);
        rc = TALLY_OK;
    }
    pthread_mutex_unlock(&s->sites_mu);
    return rc;
}

void store_sites_each(struct store *s, void (*fn)(void *arg, uint32_t id, const char *name),
                      void *arg)
{
    pthread_mutex_lock(&s->sites_mu);
    uint32_t n = s->site_count;
    pthread_mutex_unlock(&s->sites_mu);
    char buf[STORE_SITE_NAME_BYTES_MAX + 1];
    for (uint32_t i = 1; i <= n; i++)
        if (store_site_name(s, i, buf, sizeof buf) == 0) fn(arg, i, buf);
}

/* ---- meta helpers ---- */

int store_meta_get_u64(struct store *s, const char *key, uint64_t *v)
{
    void *val;
    size_t len;
    int rc = store_get(s, STORE_CF_META, key, strlen(key), &val, &len);
    if (rc) return rc;
    if (len != 8) {
        free(val);
        return TALLY_ECORRUPT;
    }
    *v = store_get_be64(val);
    free(val);
    return TALLY_OK;
}

void store_batch_put_u64(struct store_batch *b, const char *key, uint64_t v)
{
    uint8_t buf[8];
    store_put_be64(buf, v);
    store_batch_put(b, STORE_CF_META, key, strlen(key), buf, 8);
}

/* ---- sizes and maintenance ---- */

static uint64_t store_cf_bytes_locked(struct store *s, enum store_cf cf)
{
    uint64_t total = 0;
    const char *props[] = {"rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"};
    for (size_t i = 0; i < 2; i++) {
        char *v = rocksdb_property_value_cf(s->db, s->cf[cf], props[i]);
        if (v) {
            total += strtoull(v, NULL, 10);
            rocksdb_free(v);
        }
    }
    return total;
}

static int store_flush_locked(struct store *s)
{
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    int rc = TALLY_OK;
    for (int i = 0; i < STORE_CF_COUNT && rc == TALLY_OK; i++) {
        char *err = NULL;
        rocksdb_flush_cf(s->db, fo, s->cf[i], &err);
        if (err) rc = err_code(err, "flush");
    }
    rocksdb_flushoptions_destroy(fo);
    return rc;
}

static int store_checkpoint_locked(struct store *s, const char *dir)
{
    char *err = NULL;
    rocksdb_checkpoint_t *cp = rocksdb_checkpoint_object_create(s->db, &err);
    if (err) return err_code(err, "checkpoint");
    /* log_size_for_flush 0: flush the memtables first, so the checkpoint is SST files only
     * (hard links on the same file system) plus the current MANIFEST; nothing to replay. */
    rocksdb_checkpoint_create(cp, dir, 0, &err);
    rocksdb_checkpoint_object_destroy(cp);
    return err ? err_code(err, "checkpoint") : TALLY_OK;
}

static int store_compact_locked(struct store *s, enum store_cf cf)
{
    rocksdb_compact_range_cf(s->db, s->cf[cf], NULL, 0, NULL, 0);
    return TALLY_OK;
}

static int store_property_locked(struct store *s, enum store_cf cf, const char *name, char *buf, size_t cap)
{
    char *v = rocksdb_property_value_cf(s->db, s->cf[cf], name);
    if (!v) return TALLY_ENOENT;
    snprintf(buf, cap, "%s", v);
    rocksdb_free(v);
    return TALLY_OK;
}

/* ---- the public calls that use db: hold `life` for reading (see struct store) ---- */

#define WITH_DB(s, closed, call)                                                               \
    do {                                                                                       \
        pthread_rwlock_rdlock(&(s)->life);                                                     \
        __typeof__(call) r_ = (s)->db ? (call) : (closed);                                     \
        pthread_rwlock_unlock(&(s)->life);                                                     \
        return r_;                                                                             \
    } while (0)

int store_get(struct store *s, enum store_cf cf, const void *key, size_t klen, void **val,
              size_t *len)
{
    WITH_DB(s, TALLY_ECLOSED, store_get_locked(s, cf, key, klen, val, len));
}

int store_multi_get(struct store *s, enum store_cf cf, size_t n, const void *const *keys,
                    const size_t *klens, void **vals, size_t *lens)
{
    WITH_DB(s, TALLY_ECLOSED, store_multi_get_locked(s, cf, n, keys, klens, vals, lens));
}

int store_write(struct store *s, struct store_batch *b)
{
    WITH_DB(s, TALLY_ECLOSED, store_write_locked(s, b));
}

uint64_t store_cf_bytes(struct store *s, enum store_cf cf)
{
    WITH_DB(s, (uint64_t)0, store_cf_bytes_locked(s, cf));
}

int store_flush(struct store *s)
{
    WITH_DB(s, TALLY_ECLOSED, store_flush_locked(s));
}

int store_checkpoint(struct store *s, const char *dir)
{
    WITH_DB(s, TALLY_ECLOSED, store_checkpoint_locked(s, dir));
}

int store_compact(struct store *s, enum store_cf cf)
{
    WITH_DB(s, TALLY_ECLOSED, store_compact_locked(s, cf));
}

int store_property(struct store *s, enum store_cf cf, const char *name, char *buf, size_t cap)
{
    WITH_DB(s, TALLY_ECLOSED, store_property_locked(s, cf, name, buf, cap));
}
