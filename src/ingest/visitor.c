#include "ingest/visitor.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/diag.h"
#include "ingest/timefmt.h"
#include "tally/error.h"

#define FILE_MAGIC "TSLT"
#define FILE_VERSION 1
#define FILE_HEADER_BYTES 24
#define FILE_ENTRY_BYTES (8 + VISITOR_SALT_BYTES)
#define FILE_BYTES_MAX (FILE_HEADER_BYTES + VISITOR_SALT_DAYS_MAX * FILE_ENTRY_BYTES + 8)
#define NO_DAY INT64_MIN

_Static_assert(crypto_shorthash_KEYBYTES == VISITOR_SALT_BYTES, "SipHash key is a salt");
_Static_assert(crypto_shorthash_BYTES == 8, "SipHash gives 64 bits");

/* The salt set as the writer keeps it (under write_mu). */
struct salt_set {
    int n;
    int64_t day[VISITOR_SALT_DAYS_MAX];
    uint8_t salt[VISITOR_SALT_DAYS_MAX][VISITOR_SALT_BYTES];
};

struct visitor_salts {
    /* Immutable after open. */
    char *path, *tmp_path, *dir;

    /* Writer state: the node's own (file) set. Hashing reads only the published copy, which
     * after visitor_salts_adopt holds the adopted set instead. */
    pthread_mutex_t write_mu;
    uint8_t id_key[VISITOR_SALT_BYTES]; /* set at open, then guarded by write_mu */
    struct salt_set set; /* guarded by write_mu */
    bool dirty;          /* guarded by write_mu: set differs from the file */
    bool adopted;        /* guarded by write_mu: the published set came from outside */

    /* Reader-visible copy, published under a seqlock: seq is odd while the writer updates.
     * Everything is atomic so that readers racing a writer are defined behaviour; readers
     * retry when seq changed under them. */
    _Atomic uint64_t seq;
    _Atomic int64_t current_day;
    _Atomic int64_t pub_day[VISITOR_SALT_DAYS_MAX]; /* NO_DAY when the slot is empty */
    _Atomic uint64_t pub_salt[VISITOR_SALT_DAYS_MAX][2];
    _Atomic uint64_t pub_key[2]; /* the id key */
};

/* ---- publication (seqlock) ----------------------------------------------------------------- */

/* Publishes set and key for hashing (under write_mu: one writer at a time). */
static void publish(struct visitor_salts *s, const struct salt_set *set,
                    const uint8_t key[VISITOR_SALT_BYTES], int64_t today)
{
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
    atomic_store_explicit(&s->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&s->current_day, today, memory_order_relaxed);
    uint64_t k[2];
    memcpy(k, key, VISITOR_SALT_BYTES);
    atomic_store_explicit(&s->pub_key[0], k[0], memory_order_relaxed);
    atomic_store_explicit(&s->pub_key[1], k[1], memory_order_relaxed);
    sodium_memzero(k, sizeof k);
    for (int i = 0; i < VISITOR_SALT_DAYS_MAX; i++) {
        uint64_t w[2] = {0, 0};
        int64_t day = NO_DAY;
        if (i < set->n) {
            day = set->day[i];
            memcpy(w, set->salt[i], VISITOR_SALT_BYTES);
        }
        atomic_store_explicit(&s->pub_day[i], day, memory_order_relaxed);
        atomic_store_explicit(&s->pub_salt[i][0], w[0], memory_order_relaxed);
        atomic_store_explicit(&s->pub_salt[i][1], w[1], memory_order_relaxed);
    }
    atomic_store_explicit(&s->seq, seq + 2, memory_order_release);
}

/* Copies the salt for day (or, when not held, the current day's) into key. */
static void salt_for_day(const struct visitor_salts *cs, int64_t day, uint8_t key[16])
{
    struct visitor_salts *s = (struct visitor_salts *)cs; /* atomics are only loaded */
    for (;;) {
        uint64_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (s1 & 1) continue;
        int64_t cur = atomic_load_explicit(&s->current_day, memory_order_relaxed);
        int pick = -1, cur_slot = -1;
        for (int i = 0; i < VISITOR_SALT_DAYS_MAX; i++) {
            int64_t d = atomic_load_explicit(&s->pub_day[i], memory_order_relaxed);
            if (d == day) pick = i;
            if (d == cur) cur_slot = i;
        }
        if (pick < 0) pick = cur_slot;
        uint64_t w[2] = {0, 0};
        if (pick >= 0) {
            w[0] = atomic_load_explicit(&s->pub_salt[pick][0], memory_order_relaxed);
            w[1] = atomic_load_explicit(&s->pub_salt[pick][1], memory_order_relaxed);
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, memory_order_relaxed) == s1) {
            TALLY_ASSERT(pick >= 0); /* rotation always holds today's salt */
            memcpy(key, w, 16);
            return;
        }
    }
}

/* Copies the published id key into key. */
static void id_key_load(const struct visitor_salts *cs, uint8_t key[16])
{
    struct visitor_salts *s = (struct visitor_salts *)cs; /* atomics are only loaded */
    for (;;) {
        uint64_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (s1 & 1) continue;
        uint64_t w[2];
        w[0] = atomic_load_explicit(&s->pub_key[0], memory_order_relaxed);
        w[1] = atomic_load_explicit(&s->pub_key[1], memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, memory_order_relaxed) == s1) {
            memcpy(key, w, 16);
            return;
        }
    }
}

size_t visitor_salts_days(const struct visitor_salts *cs, int64_t *days, size_t cap)
{
    struct visitor_salts *s = (struct visitor_salts *)cs;
    for (;;) {
        uint64_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (s1 & 1) continue;
        int64_t d[VISITOR_SALT_DAYS_MAX];
        for (int i = 0; i < VISITOR_SALT_DAYS_MAX; i++)
            d[i] = atomic_load_explicit(&s->pub_day[i], memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, memory_order_relaxed) != s1) continue;
        size_t n = 0;
        for (int i = 0; i < VISITOR_SALT_DAYS_MAX; i++) {
            if (d[i] == NO_DAY) continue;
            if (n < cap) days[n] = d[i];
            n++;
        }
        return n;
    }
}

/* ---- hashing ------------------------------------------------------------------------------- */

struct msg {
    uint8_t buf[1 + 1 + VISITOR_SITE_BYTES_MAX + 2 + VISITOR_USER_AGENT_BYTES_MAX + 1 +
                VISITOR_IP_BYTES_MAX + 2 + VISITOR_CLIENT_ID_BYTES_MAX];
    size_t len;
};

/* Appends a length-prefixed part (1- or 2-byte big-endian length), cut to max bytes. */
static void msg_part(struct msg *m, const char *p, size_t n, size_t max, int len_bytes)
{
    if (n > max) n = max;
    if (len_bytes == 2) m->buf[m->len++] = (uint8_t)(n >> 8);
    m->buf[m->len++] = (uint8_t)n;
    if (n) memcpy(m->buf + m->len, p, n);
    m->len += n;
}

static uint64_t siphash(const struct msg *m, const uint8_t key[16])
{
    uint8_t out[8];
    crypto_shorthash(out, m->buf, m->len, key);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)out[i] << (8 * i);
    return v;
}

uint64_t visitor_hash_anonymous(const struct visitor_salts *s, int64_t ts_ms, const char *site,
                                size_t site_len, const char *ip, size_t ip_len, const char *ua,
                                size_t ua_len)
{
    struct msg m = {.len = 0};
    m.buf[m.len++] = 'A';
    msg_part(&m, site, site_len, VISITOR_SITE_BYTES_MAX, 1);
    msg_part(&m, ip, ip_len, VISITOR_IP_BYTES_MAX, 1);
    msg_part(&m, ua, ua_len, VISITOR_USER_AGENT_BYTES_MAX, 2);
    uint8_t key[16];
    salt_for_day(s, timefmt_day_of_ms(ts_ms), key);
    uint64_t h = siphash(&m, key);
    sodium_memzero(key, sizeof key);
    return h;
}

uint64_t visitor_hash_client(const struct visitor_salts *s, const char *site, size_t site_len,
                             const char *id, size_t id_len)
{
    struct msg m = {.len = 0};
    m.buf[m.len++] = 'C';
    msg_part(&m, site, site_len, VISITOR_SITE_BYTES_MAX, 1);
    msg_part(&m, id, id_len, VISITOR_CLIENT_ID_BYTES_MAX, 2);
    uint8_t key[16];
    id_key_load(s, key);
    uint64_t h = siphash(&m, key);
    sodium_memzero(key, sizeof key);
    return h;
}

/* ---- file ---------------------------------------------------------------------------------- */

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int load_file(struct visitor_salts *s, bool *found)
{
    *found = false;
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return TALLY_OK;
        diag_error("visitor: cannot open %s: %s", s->path, strerror(errno));
        return tally_err_from_errno(errno);
    }
    uint8_t buf[FILE_BYTES_MAX + 1];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof buf - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int err = tally_err_from_errno(errno);
            diag_error("visitor: cannot read %s: %s", s->path, strerror(errno));
            close(fd);
            return err;
        }
        if (r == 0 || (len += (size_t)r) == sizeof buf) break;
    }
    close(fd);
    *found = true;

    if (len < FILE_HEADER_BYTES + 8 || memcmp(buf, FILE_MAGIC, 4) != 0 || buf[4] != FILE_VERSION ||
        buf[5] > VISITOR_SALT_DAYS_MAX || buf[6] || buf[7] ||
        len != FILE_HEADER_BYTES + (size_t)buf[5] * FILE_ENTRY_BYTES + 8 ||
        XXH64(buf, len - 8, 0) != get_le64(buf + len - 8)) {
        diag_error("visitor: %s is corrupt (delete it to reset all visitor ids)", s->path);
        return TALLY_ECORRUPT;
    }
    memcpy(s->id_key, buf + 8, VISITOR_SALT_BYTES);
    s->set.n = buf[5];
    for (int i = 0; i < s->set.n; i++) {
        const uint8_t *e = buf + FILE_HEADER_BYTES + (size_t)i * FILE_ENTRY_BYTES;
        s->set.day[i] = (int64_t)get_le64(e);
        memcpy(s->set.salt[i], e + 8, VISITOR_SALT_BYTES);
        if (i > 0 && s->set.day[i] <= s->set.day[i - 1]) {
            diag_error("visitor: %s is corrupt (days out of order)", s->path);
            return TALLY_ECORRUPT;
        }
    }
    return TALLY_OK;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return tally_err_from_errno(errno);
        p += w;
        n -= (size_t)w;
    }
    return TALLY_OK;
}

/* Writes the set to salts.tmp, fsyncs, renames over salts and fsyncs the directory. */
static int persist(struct visitor_salts *s)
{
    uint8_t buf[FILE_BYTES_MAX];
    memset(buf, 0, sizeof buf);
    memcpy(buf, FILE_MAGIC, 4);
    buf[4] = FILE_VERSION;
    buf[5] = (uint8_t)s->set.n;
    memcpy(buf + 8, s->id_key, VISITOR_SALT_BYTES);
    size_t len = FILE_HEADER_BYTES;
    for (int i = 0; i < s->set.n; i++) {
        put_le64(buf + len, (uint64_t)s->set.day[i]);
        memcpy(buf + len + 8, s->set.salt[i], VISITOR_SALT_BYTES);
        len += FILE_ENTRY_BYTES;
    }
    put_le64(buf + len, XXH64(buf, len, 0));
    len += 8;

    int fd = open(s->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) goto fail;
    int err = write_all(fd, buf, len);
    if (err == TALLY_OK && fsync(fd) != 0) err = tally_err_from_errno(errno);
    sodium_memzero(buf, sizeof buf);
    if (close(fd) != 0 && err == TALLY_OK) err = tally_err_from_errno(errno);
    if (err != TALLY_OK) {
        diag_error("visitor: cannot write %s: %s", s->tmp_path, tally_strerror(err));
        unlink(s->tmp_path);
        return err;
    }
    if (rename(s->tmp_path, s->path) != 0) goto fail;
    int dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) goto fail;
    err = fsync(dfd) != 0 ? tally_err_from_errno(errno) : TALLY_OK;
    close(dfd);
    if (err != TALLY_OK) {
        diag_error("visitor: cannot fsync %s: %s", s->dir, tally_strerror(err));
        return err;
    }
    return TALLY_OK;
fail:
    err = tally_err_from_errno(errno);
    diag_error("visitor: cannot write %s: %s", s->path, strerror(errno));
    unlink(s->tmp_path);
    return err;
}

/* ---- rotation ------------------------------------------------------------------------------ */

/* Recomputes the set for today (under write_mu); returns whether it changed. */
static bool recompute(struct visitor_salts *s, int64_t today)
{
    struct salt_set next = {.n = 0};
    bool changed = false;
    for (int64_t day = today - 1; day <= today + 1; day++) {
        int found = -1;
        for (int i = 0; i < s->set.n; i++)
            if (s->set.day[i] == day) found = i;
        if (found >= 0) {
            next.day[next.n] = day;
            memcpy(next.salt[next.n], s->set.salt[found], VISITOR_SALT_BYTES);
            next.n++;
        } else if (day >= today) {
            next.day[next.n] = day;
            randombytes_buf(next.salt[next.n], VISITOR_SALT_BYTES);
            next.n++;
            changed = true;
        }
    }
    if (next.n != s->set.n) changed = true; /* some day was dropped */
    s->set = next;
    sodium_memzero(&next, sizeof next);
    return changed;
}

int visitor_salts_rotate(struct visitor_salts *s, int64_t now_ms)
{
    int64_t today = timefmt_day_of_ms(now_ms);
    pthread_mutex_lock(&s->write_mu);
    if (s->adopted) { /* the adopter rotates (cluster_salts_sync) */
        pthread_mutex_unlock(&s->write_mu);
        return TALLY_OK;
    }
    bool changed = recompute(s, today);
    if (changed || atomic_load_explicit(&s->current_day, memory_order_relaxed) != today)
        publish(s, &s->set, s->id_key, today);
    if (changed) s->dirty = true;
    int err = TALLY_OK;
    if (s->dirty) {
        err = persist(s);
        if (err == TALLY_OK) s->dirty = false;
    }
    pthread_mutex_unlock(&s->write_mu);
    return err;
}

int visitor_salts_adopt(struct visitor_salts *s, const uint8_t id_key[VISITOR_SALT_BYTES],
                        const int64_t *days, const uint8_t (*salts)[VISITOR_SALT_BYTES], size_t n,
                        int64_t now_ms)
{
    int64_t today = timefmt_day_of_ms(now_ms);
    if (n == 0 || n > VISITOR_SALT_DAYS_MAX) return TALLY_EINVAL;
    bool has_today = false;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && days[i] <= days[i - 1]) return TALLY_EINVAL;
        if (days[i] == NO_DAY) return TALLY_EINVAL;
        if (days[i] == today) has_today = true;
    }
    if (!has_today) return TALLY_EINVAL; /* hashing falls back on today's salt */
    struct salt_set next = {.n = (int)n};
    for (size_t i = 0; i < n; i++) {
        next.day[i] = days[i];
        memcpy(next.salt[i], salts[i], VISITOR_SALT_BYTES);
    }
    pthread_mutex_lock(&s->write_mu);
    s->adopted = true;
    publish(s, &next, id_key, today);
    pthread_mutex_unlock(&s->write_mu);
    sodium_memzero(&next, sizeof next);
    return TALLY_OK;
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + 1 + strlen(name) + 1;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int visitor_salts_open(const char *data_dir, int64_t now_ms, struct visitor_salts **out)
{
    *out = NULL;
    if (sodium_init() < 0) return TALLY_EIO;
    struct visitor_salts *s = calloc(1, sizeof *s);
    if (!s) return TALLY_ENOMEM;
    s->dir = strdup(data_dir);
    s->path = join(data_dir, VISITOR_SALTS_FILE);
    s->tmp_path = join(data_dir, VISITOR_SALTS_FILE ".tmp");
    pthread_mutex_init(&s->write_mu, NULL);
    atomic_init(&s->seq, 0);
    atomic_init(&s->current_day, NO_DAY);
    for (int i = 0; i < VISITOR_SALT_DAYS_MAX; i++) {
        atomic_init(&s->pub_day[i], NO_DAY);
        atomic_init(&s->pub_salt[i][0], 0);
        atomic_init(&s->pub_salt[i][1], 0);
    }
    atomic_init(&s->pub_key[0], 0);
    atomic_init(&s->pub_key[1], 0);
    if (!s->dir || !s->path || !s->tmp_path) {
        visitor_salts_close(s);
        return TALLY_ENOMEM;
    }
    unlink(s->tmp_path); /* left by a crash between write and rename: never the live file */
    bool found;
    int err = load_file(s, &found);
    if (err != TALLY_OK) {
        visitor_salts_close(s);
        return err;
    }
    if (!found) {
        randombytes_buf(s->id_key, sizeof s->id_key);
        s->dirty = true;
    }
    err = visitor_salts_rotate(s, now_ms);
    if (err != TALLY_OK) {
        visitor_salts_close(s);
        return err;
    }
    *out = s;
    return TALLY_OK;
}

void visitor_salts_close(struct visitor_salts *s)
{
    if (!s) return;
    pthread_mutex_destroy(&s->write_mu);
    sodium_memzero(s->id_key, sizeof s->id_key);
    sodium_memzero(&s->set, sizeof s->set);
    free(s->dir);
    free(s->path);
    free(s->tmp_path);
    free(s);
}
