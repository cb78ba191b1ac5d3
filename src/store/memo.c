/* memo: see memo.h for the clock, the validity rule and the limits. */
#include "store/memo.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "tally/error.h"

struct tag {
    uint64_t tag; /* site << 32 | bucket */
    uint64_t seq; /* of its last change */
};

struct entry {
    struct entry *next;             /* hash chain */
    struct entry *lru_prev, *lru_next; /* lru_next: toward the least recently used */
    uint64_t hash, built;
    size_t klen, vlen;
    uint8_t *key, *val;
};

struct memo {
    pthread_mutex_t mu;
    /* clock */
    uint64_t seq, floor;
    struct tag *tags; /* ascending by tag */
    size_t ntags, tcap;
    /* results */
    struct entry **buckets;
    size_t nbuckets, entries, bytes, bytes_max;
    struct entry *lru_head, *lru_tail; /* head: most recently used */
    uint64_t hits, misses, stale;
};

struct memo *memo_new(size_t bytes_max)
{
    struct memo *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->nbuckets = 256;
    m->buckets = calloc(m->nbuckets, sizeof *m->buckets);
    if (!m->buckets) {
        free(m);
        return NULL;
    }
    pthread_mutex_init(&m->mu, NULL);
    m->bytes_max = bytes_max;
    return m;
}

static size_t entry_bytes(const struct entry *e)
{
    return sizeof *e + e->klen + e->vlen;
}

static void entry_unlink(struct memo *m, struct entry *e)
{
    struct entry **pp = &m->buckets[e->hash & (m->nbuckets - 1)];
    while (*pp != e) pp = &(*pp)->next;
    *pp = e->next;
    if (e->lru_prev) e->lru_prev->lru_next = e->lru_next;
    else m->lru_head = e->lru_next;
    if (e->lru_next) e->lru_next->lru_prev = e->lru_prev;
    else m->lru_tail = e->lru_prev;
    m->entries--;
    m->bytes -= entry_bytes(e);
    free(e->key);
    free(e->val);
    free(e);
}

static void evict_to(struct memo *m, size_t bytes_max)
{
    while (m->lru_tail && m->bytes > bytes_max) entry_unlink(m, m->lru_tail);
}

void memo_free(struct memo *m)
{
    if (!m) return;
    evict_to(m, 0);
    free(m->buckets);
    free(m->tags);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void memo_set_bytes_max(struct memo *m, size_t bytes_max)
{
    pthread_mutex_lock(&m->mu);
    m->bytes_max = bytes_max;
    evict_to(m, bytes_max);
    pthread_mutex_unlock(&m->mu);
}

/* ---- clock ---- */

/* Index of the first tag >= key (binary search over the sorted array). */
static size_t tag_lower(const struct memo *m, uint64_t key)
{
    size_t lo = 0, hi = m->ntags;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->tags[mid].tag < key) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Everything before now reads as changed at the current sequence. */
static void tags_reset(struct memo *m)
{
    m->ntags = 0;
    m->floor = m->seq;
}

static void tag_set(struct memo *m, uint64_t tag)
{
    size_t i = tag_lower(m, tag);
    if (i < m->ntags && m->tags[i].tag == tag) {
        m->tags[i].seq = m->seq;
        return;
    }
    if (m->ntags == m->tcap) {
        size_t cap = m->tcap ? m->tcap * 2 : 256;
        struct tag *t = m->ntags < MEMO_TAGS_MAX ? realloc(m->tags, cap * sizeof *t) : NULL;
        if (!t) {
            tags_reset(m);
            return;
        }
        m->tags = t;
        m->tcap = cap;
    }
    memmove(m->tags + i + 1, m->tags + i, (m->ntags - i) * sizeof *m->tags);
    m->tags[i] = (struct tag){tag, m->seq};
    m->ntags++;
}

uint64_t memo_now(struct memo *m)
{
    pthread_mutex_lock(&m->mu);
    uint64_t s = m->seq;
    pthread_mutex_unlock(&m->mu);
    return s;
}

void memo_note_days(struct memo *m, const uint64_t *site_buckets, size_t n)
{
    if (n == 0) return;
    pthread_mutex_lock(&m->mu);
    m->seq++;
    for (size_t i = 0; i < n && m->floor != m->seq; i++) tag_set(m, site_buckets[i]);
    pthread_mutex_unlock(&m->mu);
}

void memo_note_all(struct memo *m)
{
    pthread_mutex_lock(&m->mu);
    m->seq++;
    tags_reset(m);
    pthread_mutex_unlock(&m->mu);
}

uint64_t memo_range_seq(struct memo *m, uint32_t site, uint32_t bucket_lo, uint32_t bucket_hi)
{
    pthread_mutex_lock(&m->mu);
    uint64_t best = m->floor;
    const uint64_t s = (uint64_t)site << 32, end = s | bucket_hi;
    for (size_t i = tag_lower(m, s | bucket_lo); i < m->ntags && m->tags[i].tag < end; i++)
        if (m->tags[i].seq > best) best = m->tags[i].seq;
    pthread_mutex_unlock(&m->mu);
    return best;
}

/* ---- results ---- */

static struct entry *find(struct memo *m, const void *key, size_t klen, uint64_t h)
{
    for (struct entry *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0) return e;
    return NULL;
}

static void lru_front(struct memo *m, struct entry *e)
{
    if (m->lru_head == e) return;
    if (e->lru_prev) e->lru_prev->lru_next = e->lru_next;
    if (e->lru_next) e->lru_next->lru_prev = e->lru_prev;
    else if (m->lru_tail == e) m->lru_tail = e->lru_prev;
    e->lru_prev = NULL;
    e->lru_next = m->lru_head;
    if (m->lru_head) m->lru_head->lru_prev = e;
    m->lru_head = e;
    if (!m->lru_tail) m->lru_tail = e;
}

int memo_get(struct memo *m, const void *key, size_t klen, uint64_t built_min, void **val,
             size_t *len)
{
    uint64_t h = XXH3_64bits(key, klen);
    int rc = 0;
    pthread_mutex_lock(&m->mu);
    struct entry *e = find(m, key, klen, h);
    if (!e) {
        m->misses++;
    } else if (e->built < built_min) {
        m->stale++;
        entry_unlink(m, e);
    } else {
        void *p = malloc(e->vlen ? e->vlen : 1);
        if (!p) {
            rc = TALLY_ENOMEM;
        } else {
            if (e->vlen) memcpy(p, e->val, e->vlen);
            *val = p;
            *len = e->vlen;
            m->hits++;
            lru_front(m, e);
            rc = 1;
        }
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static void grow_buckets(struct memo *m)
{
    size_t n = m->nbuckets * 2;
    struct entry **b = calloc(n, sizeof *b);
    if (!b) return; /* longer chains, still correct */
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct entry *e = m->buckets[i];
        while (e) {
            struct entry *next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

bool memo_put(struct memo *m, const void *key, size_t klen, const void *val, size_t len,
              uint64_t built)
{
    struct entry *e = calloc(1, sizeof *e);
    if (!e) return false;
    e->key = malloc(klen ? klen : 1);
    e->val = malloc(len ? len : 1);
    if (!e->key || !e->val) {
        free(e->key);
        free(e->val);
        free(e);
        return false;
    }
    if (klen) memcpy(e->key, key, klen);
    if (len) memcpy(e->val, val, len);
    e->klen = klen;
    e->vlen = len;
    e->built = built;
    e->hash = XXH3_64bits(key, klen);
    pthread_mutex_lock(&m->mu);
    bool kept = entry_bytes(e) <= m->bytes_max / 4;
    struct entry *old = find(m, key, klen, e->hash);
    if (old && (!kept || old->built <= built)) entry_unlink(m, old);
    else if (old) kept = false; /* a newer result is already there */
    if (kept) {
        if (m->entries + 1 > m->nbuckets) grow_buckets(m);
        struct entry **b = &m->buckets[e->hash & (m->nbuckets - 1)];
        e->next = *b;
        *b = e;
        e->lru_next = m->lru_head;
        if (m->lru_head) m->lru_head->lru_prev = e;
        m->lru_head = e;
        if (!m->lru_tail) m->lru_tail = e;
        m->entries++;
        m->bytes += entry_bytes(e);
        evict_to(m, m->bytes_max);
    }
    pthread_mutex_unlock(&m->mu);
    if (!kept) {
        free(e->key);
        free(e->val);
        free(e);
    }
    return kept;
}

void memo_stats(struct memo *m, struct memo_stats *out)
{
    pthread_mutex_lock(&m->mu);
    out->hits = m->hits;
    out->misses = m->misses;
    out->stale = m->stale;
    out->entries = m->entries;
    out->bytes = m->bytes;
    out->bytes_max = m->bytes_max;
    pthread_mutex_unlock(&m->mu);
}
