/*
 * Helpers shared by the seglog unit tests (header only, included by test_seglog*.c after
 * test.h): synchronous appends, deterministic record contents, reading a whole log, and small
 * file utilities.
 */
#ifndef TALLY_TEST_SEGLOG_UTIL_H
#define TALLY_TEST_SEGLOG_UTIL_H

#include "core/fsio.h"
#include "core/fsio_fault.h"
#include "log/batch.h"
#include "log/seglog.h"
#include "tally/error.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct tsync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int err;
    uint64_t off;
};

static inline void tsync_done(void *arg, int err, uint64_t first_offset)
{
    struct tsync *s = arg;
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    s->err = err;
    s->off = first_offset;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Appends and waits for the completion. Returns the append's or the completion's error. */
static inline int append_sync(struct seglog *log, const struct seglog_rec *recs, uint32_t n,
                              uint64_t *first)
{
    struct tsync s = {.done = 0};
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    int r = seglog_append(log, recs, n, tsync_done, &s);
    if (r == 0) {
        pthread_mutex_lock(&s.mu);
        while (!s.done)
            pthread_cond_wait(&s.cv, &s.mu);
        pthread_mutex_unlock(&s.mu);
        r = s.err;
        if (first) *first = s.off;
    }
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    return r;
}

/* A completion that blocks the completing thread (the writer under policy none) until released,
 * and one that only counts; both on a struct blocker. */
struct blocker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered, release;
    int completions;
    int errors;
};

static inline void blocker_done(void *arg, int err, uint64_t off)
{
    (void)off;
    struct blocker *b = arg;
    pthread_mutex_lock(&b->mu);
    b->entered = 1;
    pthread_cond_broadcast(&b->cv);
    while (!b->release)
        pthread_cond_wait(&b->cv, &b->mu);
    b->completions++;
    if (err) b->errors++;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static inline void count_done(void *arg, int err, uint64_t off)
{
    (void)off;
    struct blocker *b = arg;
    pthread_mutex_lock(&b->mu);
    b->completions++;
    if (err) b->errors++;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

/* A zeroed blocker with its mutex and condition variable ready. */
static inline void blocker_init(struct blocker *b)
{
    memset(b, 0, sizeof *b);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
}

/* Appends rec with blocker_done and returns once that callback holds the completing thread (the
 * writer under policy none), so that later appends pile up behind it. 0 or the append's error. */
static inline int blocker_hold(struct seglog *log, struct blocker *b, const struct seglog_rec *rec)
{
    pthread_mutex_lock(&b->mu);
    b->entered = 0;
    b->release = 0;
    pthread_mutex_unlock(&b->mu);
    int r = seglog_append(log, rec, 1, blocker_done, b);
    if (r) return r;
    pthread_mutex_lock(&b->mu);
    while (!b->entered)
        pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    return 0;
}

/* Lets a held callback return, then waits until b counted `completions` completions. */
static inline void blocker_release(struct blocker *b, int completions)
{
    pthread_mutex_lock(&b->mu);
    b->release = 1;
    pthread_cond_broadcast(&b->cv);
    while (b->completions < completions)
        pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
}

static inline uint64_t tu_rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Deterministic content of the record with key k and length len. */
static inline void tu_fill(uint8_t *buf, uint32_t len, uint64_t k)
{
    uint64_t s = k * 7919 + len;
    for (uint32_t i = 0; i < len; i++) {
        if (i % 8 == 0) s = tu_rng(&s);
        buf[i] = (uint8_t)(s >> (8 * (i % 8)));
    }
}

/* Length used for record key k (varied, sometimes 0). */
static inline uint32_t tu_len(uint64_t k, uint32_t max)
{
    uint64_t s = k ^ 0xABCDEFull;
    uint32_t l = (uint32_t)(tu_rng(&s) % (max + 1));
    return k % 17 == 0 ? 0 : l;
}

/* Appends records with keys [k0, k0 + n) one append each (sync). Offsets must follow. */
static inline int tu_append_keys(struct seglog *log, uint64_t k0, uint32_t n, uint32_t maxlen,
                                 uint64_t *first)
{
    uint8_t *buf = malloc(maxlen ? maxlen : 1);
    int r = 0;
    for (uint32_t i = 0; i < n && !r; i++) {
        uint64_t k = k0 + i;
        uint32_t len = tu_len(k, maxlen);
        tu_fill(buf, len, k);
        struct seglog_rec rec = {buf, len, (int64_t)(1000 + k)};
        uint64_t off;
        r = append_sync(log, &rec, 1, &off);
        if (!r && i == 0 && first) *first = off;
    }
    free(buf);
    return r;
}

/* Reads from `from` to the committed end; checks each record against key = offset - from + k0.
 * Returns the number of records read, or a negative error / -1000 on a content mismatch. */
static inline long tu_read_check(struct seglog *log, uint64_t from, uint64_t k0, uint32_t maxlen)
{
    struct seglog_reader *r;
    int rc = seglog_reader_open(log, from, &r);
    if (rc) return rc;
    uint8_t *buf = malloc(maxlen ? maxlen : 1);
    long n = 0;
    struct seglog_record rec;
    while ((rc = seglog_reader_next(r, &rec)) == 0) {
        uint64_t k = k0 + (rec.offset - from);
        uint32_t len = tu_len(k, maxlen);
        if (rec.offset != from + (uint64_t)n || rec.len != len ||
            rec.ts_ms != (int64_t)(1000 + k)) {
            n = -1000;
            break;
        }
        tu_fill(buf, len, k);
        if (len && memcmp(buf, rec.data, len) != 0) {
            n = -1000;
            break;
        }
        n++;
    }
    if (n >= 0 && rc != TALLY_EAGAIN) n = rc;
    seglog_reader_close(r);
    free(buf);
    return n;
}

static inline void tu_opts(struct seglog_options *o, const char *dir)
{
    seglog_options_default(o);
    o->dir = dir;
}

static inline int tu_read_file(const char *path, uint8_t **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *data = malloc(n > 0 ? (size_t)n : 1);
    *len = fread(*data, 1, (size_t)(n > 0 ? n : 0), f);
    fclose(f);
    return 0;
}

static inline int tu_write_file(const char *path, const uint8_t *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    fclose(f);
    return w == len ? 0 : -1;
}

static inline long tu_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static inline const char *tu_seg_path(char *buf, size_t cap, const char *dir, uint64_t base,
                                      const char *suffix)
{
    snprintf(buf, cap, "%s/%020llu%s", dir, (unsigned long long)base, suffix);
    return buf;
}

#endif
