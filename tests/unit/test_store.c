/* Unit tests for store (RocksDB wrapper, site registry) and store/raw (blocks, dictionary,
 * scans, retention). */
#include "test.h"

#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store/raw.h"
#include "store/store.h"
#include "tally/error.h"

static struct store *open_store(const char *dir)
{
    struct store_options o;
    store_options_default(&o);
    o.dir = dir;
    o.block_cache_bytes = 4u << 20;
    o.write_buffer_bytes = 1u << 20;
    struct store *s = NULL;
    if (store_open(&o, &s) != 0) abort();
    return s;
}

/* Every key of cf read through an iterator (cached: filling the block cache, or not). */
static size_t read_all(struct store *s, enum store_cf cf, bool cached)
{
    struct store_iter *it = cached ? store_iter_new(s, cf, NULL, 0, NULL, 0)
                                   : store_iter_new_uncached(s, cf, NULL, 0, NULL, 0);
    size_t n = 0;
    for (store_iter_seek_first(it); store_iter_valid(it); store_iter_next(it))
        n++;
    store_iter_free(it);
    return n;
}

/* raw_cache_bytes: the raw family's blocks go to its own cache, the other families' to the
 * shared one; an uncached iterator fills neither; without it, raw blocks share the cache. */
TEST(raw_family_has_its_own_cache)
{
    const char *dir = test_tmpdir();
    struct store_options o;
    store_options_default(&o);
    o.dir = dir;
    o.block_cache_bytes = 8u << 20;
    o.raw_cache_bytes = 8u << 20;
    o.write_buffer_bytes = 4u << 20;
    struct store *s = NULL;
    ASSERT_EQ(store_open(&o, &s), 0);
    struct store_batch *b = store_batch_new(s);
    uint8_t val[1024];
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < 2000; i++) { /* 2 MB in each family, incompressible */
        for (size_t j = 0; j < sizeof val; j++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            val[j] = (uint8_t)x;
        }
        char key[16];
        snprintf(key, sizeof key, "k%08d", i);
        store_batch_put(b, STORE_CF_RAW, key, 9, val, sizeof val);
        store_batch_put(b, STORE_CF_ROLLUPS, key, 9, val, sizeof val);
    }
    ASSERT_EQ(store_write(s, b), 0);
    store_batch_free(b);
    ASSERT_EQ(store_flush(s), 0);
    store_close(s);
    ASSERT_EQ(store_open(&o, &s), 0); /* empty caches */
    size_t shared0, raw0, shared, raw;
    store_cache_usage(s, &shared0, &raw0);
    ASSERT_EQ(read_all(s, STORE_CF_RAW, false), 2000);
    store_cache_usage(s, &shared, &raw);
    ASSERT_TRUE(raw < raw0 + (64u << 10) && shared < shared0 + (64u << 10));
    ASSERT_EQ(read_all(s, STORE_CF_RAW, true), 2000);
    store_cache_usage(s, &shared, &raw);
    ASSERT_TRUE(raw > raw0 + (1u << 20));
    ASSERT_TRUE(shared < shared0 + (64u << 10));
    ASSERT_EQ(read_all(s, STORE_CF_ROLLUPS, true), 2000);
    size_t shared2, raw2;
    store_cache_usage(s, &shared2, &raw2);
    ASSERT_TRUE(shared2 > shared + (1u << 20));
    ASSERT_TRUE(raw2 < raw + (64u << 10));
    store_close(s);
    o.raw_cache_bytes = 0; /* one cache for all */
    ASSERT_EQ(store_open(&o, &s), 0);
    store_cache_usage(s, &shared0, &raw0);
    ASSERT_EQ(raw0, 0);
    ASSERT_EQ(read_all(s, STORE_CF_RAW, true), 2000);
    store_cache_usage(s, &shared, &raw);
    ASSERT_EQ(raw, 0);
    ASSERT_TRUE(shared > shared0 + (1u << 20));
    store_close(s);
}

TEST(basics_and_sites)
{
    const char *dir = test_tmpdir();
    struct store *s = open_store(dir);
    uint32_t a, b, c;
    ASSERT_EQ(store_site_id(s, "a.com", 5, false, &a), TALLY_ENOENT);
    ASSERT_EQ(store_site_id(s, "a.com", 5, true, &a), 0);
    ASSERT_EQ(store_site_id(s, "b.com", 5, true, &b), 0);
    ASSERT_EQ(store_site_id(s, "a.com", 5, true, &c), 0);
    ASSERT_EQ(a, 1);
    ASSERT_EQ(b, 2);
    ASSERT_EQ(c, 1);
    ASSERT_EQ(store_site_id(s, "", 0, true, &c), TALLY_EINVAL);
    struct store_batch *bt = store_batch_new(s);
    store_batch_put(bt, STORE_CF_ROLLUPS, "k1", 2, "v1", 2);
    store_batch_put(bt, STORE_CF_ROLLUPS, "k2", 2, "v2", 2);
    store_batch_put(bt, STORE_CF_ROLLUPS, "k3", 2, "v3", 2);
    store_batch_put_u64(bt, "cursor", 77);
    ASSERT_EQ(store_batch_count(bt), 4);
    ASSERT_EQ(store_write(s, bt), 0);
    store_batch_clear(bt);
    store_batch_delete_range(bt, STORE_CF_ROLLUPS, "k2", 2, "k3", 2);
    ASSERT_EQ(store_write(s, bt), 0);
    store_batch_free(bt);
    store_close(s);

    s = open_store(dir);
    char name[STORE_SITE_NAME_BYTES_MAX + 1];
    ASSERT_EQ(store_site_name(s, 2, name, sizeof name), 0);
    ASSERT_STREQ(name, "b.com");
    ASSERT_EQ(store_site_id(s, "c.com", 5, true, &c), 0);
    ASSERT_EQ(c, 3);
    uint64_t cur = 0;
    ASSERT_EQ(store_meta_get_u64(s, "cursor", &cur), 0);
    ASSERT_EQ(cur, 77);
    void *v;
    size_t vl;
    ASSERT_EQ(store_get(s, STORE_CF_ROLLUPS, "k1", 2, &v, &vl), 0);
    ASSERT_EQ(vl, 2);
    ASSERT_MEMEQ(v, "v1", 2);
    free(v);
    ASSERT_EQ(store_get(s, STORE_CF_ROLLUPS, "k2", 2, &v, &vl), TALLY_ENOENT);
    ASSERT_EQ(store_get(s, STORE_CF_ROLLUPS, "k3", 2, &v, &vl), 0);
    free(v);
    /* multi get and iterators */
    const void *keys[3] = {"k1", "k2", "k3"};
    size_t kl[3] = {2, 2, 2}, lens[3];
    void *vals[3];
    ASSERT_EQ(store_multi_get(s, STORE_CF_ROLLUPS, 3, keys, kl, vals, lens), 0);
    ASSERT_TRUE(vals[0] && !vals[1] && vals[2]);
    free(vals[0]);
    free(vals[2]);
    struct store_iter *it = store_iter_new(s, STORE_CF_ROLLUPS, "k", 1, "l", 1);
    int n = 0;
    for (store_iter_seek_first(it); store_iter_valid(it); store_iter_next(it)) n++;
    ASSERT_EQ(n, 2);
    store_iter_seek_prev(it, "k2", 2);
    ASSERT_TRUE(store_iter_valid(it));
    size_t klen;
    ASSERT_MEMEQ(store_iter_key(it, &klen), "k1", 2);
    store_iter_free(it);
    store_close(s);
    store_close(NULL);
}

/* ---- raw store ---- */

static uint64_t rng;
static uint64_t rnd(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return rng >> 17;
}

static const char *pick(const char *const *a, size_t n)
{
    return a[rnd() % n];
}

/* A generated event with its strings kept in static-lifetime storage. */
struct gen {
    struct devent ev;
    struct devent_prop props[2];
    char path[32];
};

static int64_t gen_spread_ms = 10LL * 3600 * 1000; /* gen_event's times: base + [0, this) */
static uint64_t gen_visitors = 50;                 /* gen_event's visitors: 1 .. this */

static void gen_event(struct gen *g, uint64_t offset, int64_t base_ms)
{
    static const char *names[] = {"pageview", "pageview", "Signup", "Click"};
    static const char *browsers[] = {"Chrome", "Firefox", "Safari", ""};
    static const char *countries[] = {"DE", "US", "FR", ""};
    static const char *sources[] = {"Google", "Direct / None", "Twitter"};
    memset(g, 0, sizeof *g);
    struct devent *e = &g->ev;
    e->offset = offset;
    e->ts_ms = base_ms + (int64_t)(rnd() % (uint64_t)gen_spread_ms);
    e->received_ms = e->ts_ms + (int64_t)(rnd() % 5000);
    e->visitor = rnd() % gen_visitors + 1;
    for (int f = 0; f < DE_FIELD_COUNT; f++) e->str[f] = (struct devent_str){"", 0};
    const char *name = pick(names, 4);
    e->str[DE_NAME] = (struct devent_str){name, (uint32_t)strlen(name)};
    snprintf(g->path, sizeof g->path, "/p/%d", (int)(rnd() % 20));
    e->str[DE_PATH] = (struct devent_str){g->path, (uint32_t)strlen(g->path)};
    e->str[DE_HOSTNAME] = (struct devent_str){"example.com", 11};
    const char *b = pick(browsers, 4), *c = pick(countries, 4), *src = pick(sources, 3);
    e->str[DE_BROWSER] = (struct devent_str){b, (uint32_t)strlen(b)};
    e->str[DE_COUNTRY] = (struct devent_str){c, (uint32_t)strlen(c)};
    e->str[DE_SOURCE] = (struct devent_str){src, (uint32_t)strlen(src)};
    e->pageview = strcmp(name, "pageview") == 0;
    e->interactive = rnd() % 5 != 0;
    e->flags = rnd() % 10 == 0 ? DE_F_BOT : 0;
    if (rnd() % 4 == 0) {
        g->props[0] = (struct devent_prop){{"plan", 4}, {"pro", 3}};
        g->props[1] = (struct devent_prop){{"n", 1}, {"42", 2}};
        e->props = g->props;
        e->props_count = 1 + (uint32_t)(rnd() % 2);
    }
    if (rnd() % 7 == 0) {
        e->has_revenue = true;
        e->revenue_micros = (int64_t)(rnd() % 100000000);
        memcpy(e->currency, rnd() % 2 ? "EUR" : "USD", 4);
    }
}

struct seen {
    struct store *s;
    uint32_t site;
    uint64_t count;
    uint64_t sum_offsets, sum_ts, xor_mix;
};

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x9e3779b97f4a7c15ULL;
    return x ^ (x >> 29);
}

/* A fingerprint of an event from its resolved strings, comparable to the generated one. */
static uint64_t fp_strings(const char *const str[DE_FIELD_COUNT], uint64_t offset, int64_t ts,
                           uint64_t visitor, uint32_t flags, uint32_t nprops, int64_t rev)
{
    uint64_t h = mix(offset) ^ mix((uint64_t)ts + 1) ^ mix(visitor + 7) ^ mix(flags + 99) ^
                 mix(nprops + 1000) ^ mix((uint64_t)rev + 5);
    for (int f = 0; f < DE_FIELD_COUNT; f++) {
        uint64_t x = 1469598103934665603ULL;
        for (const char *p = str[f]; *p; p++) x = (x ^ (uint8_t)*p) * 1099511628211ULL;
        h += mix(x + (uint64_t)f);
    }
    return h;
}

static uint64_t fp_gen(const struct devent *e, uint32_t extra)
{
    char buf[DE_FIELD_COUNT][64];
    const char *str[DE_FIELD_COUNT];
    for (int f = 0; f < DE_FIELD_COUNT; f++) {
        snprintf(buf[f], sizeof buf[f], "%.*s", (int)e->str[f].len, e->str[f].ptr);
        str[f] = buf[f];
    }
    uint32_t flags = extra | (e->flags & DE_F_BOT ? RAW_F_BOT : 0) |
                     (e->pageview ? RAW_F_PAGEVIEW : 0) |
                     (e->interactive ? 0 : RAW_F_NONINTERACTIVE);
    return fp_strings(str, e->offset, e->ts_ms, e->visitor, flags, e->props_count,
                      e->has_revenue ? e->revenue_micros : -1);
}

static int seen_cb(void *arg, const struct raw_event *ev)
{
    struct seen *sn = arg;
    char *strs[DE_FIELD_COUNT];
    const char *cstr[DE_FIELD_COUNT];
    for (int f = 0; f < DE_FIELD_COUNT; f++) {
        uint32_t len;
        if (raw_dict_string(sn->s, sn->site, ev->id[f], &strs[f], &len) != 0) abort();
        cstr[f] = strs[f];
    }
    sn->count++;
    sn->sum_offsets += ev->offset;
    sn->xor_mix += fp_strings(cstr, ev->offset, ev->ts_ms, ev->visitor, ev->flags,
                              ev->props_count, ev->has_revenue ? ev->revenue_micros : -1);
    for (int f = 0; f < DE_FIELD_COUNT; f++) free(strs[f]);
    if (ev->props_count) {
        char *k, *v;
        uint32_t kl, vl;
        if (raw_dict_string(sn->s, sn->site, ev->props[0].key, &k, &kl) != 0) abort();
        if (raw_dict_string(sn->s, sn->site, ev->props[0].value, &v, &vl) != 0) abort();
        if (strcmp(k, "plan") != 0 || strcmp(v, "pro") != 0) abort();
        free(k);
        free(v);
    }
    return 0;
}

#define NEV 3000

static int block_version = 2; /* of the blocks the raw tests write */

TEST(raw_exact_and_window)
{
    const char *dir = test_tmpdir();
    struct store *s = open_store(dir);
    uint32_t site[2];
    ASSERT_EQ(store_site_id(s, "a.com", 5, true, &site[0]), 0);
    ASSERT_EQ(store_site_id(s, "b.com", 5, true, &site[1]), 0);
    rng = 99;
    const int64_t base = 1767225600000LL;
    static struct gen g;
    uint64_t want_fp[2] = {0, 0}, want_n[2] = {0, 0}, wfp = 0, wn = 0;
    const int64_t w_from = base + 2 * 3600000LL + 123, w_to = base + 5 * 3600000LL + 77;
    struct raw_writer *w = raw_writer_new(s);
    raw_writer_set_block_version(w, block_version);
    struct store_batch *b = store_batch_new(s);
    for (int i = 0; i < NEV; i++) {
        gen_event(&g, 9000 + (uint64_t)i, base);
        int si = (int)(rnd() % 2);
        uint32_t extra = rnd() % 13 == 0 ? RAW_F_DUPLICATE : 0;
        ASSERT_EQ(raw_writer_add(w, site[si], &g.ev, extra), 0);
        want_fp[si] += fp_gen(&g.ev, extra);
        want_n[si]++;
        if (si == 0 && g.ev.ts_ms >= w_from && g.ev.ts_ms < w_to) {
            wfp += fp_gen(&g.ev, extra);
            wn++;
        }
        if (rnd() % 300 == 0 || i == NEV - 1) {
            ASSERT_EQ(raw_writer_flush(w, b), 0);
            ASSERT_EQ(store_write(s, b), 0);
            raw_writer_commit(w);
            store_batch_clear(b);
        }
    }
    for (int si = 0; si < 2; si++) {
        struct seen sn = {.s = s, .site = site[si]};
        ASSERT_EQ(raw_scan(s, site[si], 0, INT64_MAX / 2, seen_cb, &sn), 0);
        ASSERT_EQ(sn.count, want_n[si]);
        ASSERT_EQ(sn.xor_mix, want_fp[si]);
    }
    struct seen sn = {.s = s, .site = site[0]};
    ASSERT_EQ(raw_scan(s, site[0], w_from, w_to, seen_cb, &sn), 0);
    ASSERT_EQ(sn.count, wn);
    ASSERT_EQ(sn.xor_mix, wfp);

    /* dictionary lookups */
    uint32_t id;
    ASSERT_EQ(raw_dict_find(s, site[0], "Chrome", 6, &id), 0);
    char *str;
    uint32_t len;
    ASSERT_EQ(raw_dict_string(s, site[0], id, &str, &len), 0);
    ASSERT_STREQ(str, "Chrome");
    free(str);
    ASSERT_EQ(raw_dict_find(s, site[0], "Opera", 5, &id), TALLY_ENOENT);
    ASSERT_EQ(raw_dict_find(s, site[0], "", 0, &id), 0);
    ASSERT_EQ(id, 0);

    /* retention: everything before base + 4 h goes, for site 0 only */
    ASSERT_EQ(raw_retention(s, site[0], base + 4 * 3600000LL), 0);
    struct seen all0 = {.s = s, .site = site[0]}, old0 = {.s = s, .site = site[0]};
    ASSERT_EQ(raw_scan(s, site[0], 0, INT64_MAX / 2, seen_cb, &all0), 0);
    ASSERT_EQ(raw_scan(s, site[0], 0, base + 4 * 3600000LL, seen_cb, &old0), 0);
    ASSERT_EQ(old0.count, 0);
    ASSERT_TRUE(all0.count > 0 && all0.count < want_n[0]);
    struct seen all1 = {.s = s, .site = site[1]};
    ASSERT_EQ(raw_scan(s, site[1], 0, INT64_MAX / 2, seen_cb, &all1), 0);
    ASSERT_EQ(all1.count, want_n[1]);
    raw_writer_free(w);
    store_batch_free(b);
    store_close(s);
}

/* ---- raw_scan_hours: the same rows as raw_scan, hour by hour, (visitor, ts, offset) ---- */

struct hrow {
    int64_t ts;
    uint64_t off, visitor;
    uint32_t flags, name, path, country;
};

static int hrow_by_off(const void *a, const void *b)
{
    const struct hrow *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

struct hcollect {
    struct hrow *r;
    size_t n;
    int64_t last_hour;
    int bad;
    int stop_at, calls;
};

static int hrow_ref(void *arg, const struct raw_event *ev)
{
    struct hcollect *c = arg;
    c->r[c->n++] = (struct hrow){ev->ts_ms, ev->offset, ev->visitor, ev->flags,
                                 ev->id[DE_NAME], ev->id[DE_PATH], ev->id[DE_COUNTRY]};
    return 0;
}

/* hrow_ref that counts (in bad) rows carrying a field outside NAME/PATH/COUNTRY or props */
static int hrow_some(void *arg, const struct raw_event *ev)
{
    struct hcollect *c = arg;
    for (int f = 0; f < DE_FIELD_COUNT; f++)
        if (f != DE_NAME && f != DE_PATH && f != DE_COUNTRY && ev->id[f]) {
            c->bad++;
            break;
        }
    if (ev->props_count) c->bad++;
    return hrow_ref(arg, ev);
}

static int hrow_hour(void *arg, int64_t hour_ms, const struct raw_row *rows, size_t n)
{
    struct hcollect *c = arg;
    if (++c->calls == c->stop_at) return 7;
    if (hour_ms <= c->last_hour || hour_ms % RAW_HOUR_MS || n == 0) c->bad++;
    c->last_hour = hour_ms;
    for (size_t i = 0; i < n; i++) {
        const struct raw_row *r = &rows[i];
        if (r->ts_in_hour_ms >= RAW_HOUR_MS) c->bad++;
        /* each visitor's rows by (ts, offset): against its previous row in this hour */
        for (size_t k = i; k-- > 0;)
            if (rows[k].visitor == r->visitor) {
                if (rows[k].ts_in_hour_ms > r->ts_in_hour_ms ||
                    (rows[k].ts_in_hour_ms == r->ts_in_hour_ms && rows[k].offset >= r->offset))
                    c->bad++;
                break;
            }
        c->r[c->n++] = (struct hrow){hour_ms + r->ts_in_hour_ms,
                                     r->offset,
                                     r->visitor,
                                     r->flags,
                                     r->val[0],
                                     r->val[1],
                                     r->val[2]};
    }
    return 0;
}

/* flush_every: the mean events per flush. 40: every hour is more runs than raw.c keeps apart
 * (merged); 500: a few runs per hour whose visitors' times interleave (late events fixed in
 * place, the runs handed over one after the other: the visitors of the late rows looked up in
 * each run). narrow: every event in two hours, ~1,500 an hour in ~3 runs, of 2,000 visitors,
 * so more late rows than raw.c notes (HOUR_LATE_MAX: the walk over every row finds the late
 * visitors). */
static void hours_vs_scan(unsigned flush_every, bool narrow)
{
    const char *dir = test_tmpdir();
    struct store *s = open_store(dir);
    uint32_t site;
    ASSERT_EQ(store_site_id(s, "a.com", 5, true, &site), 0);
    rng = 7;
    const int64_t base = 1767225600000LL;
    static struct gen g;
    struct raw_writer *w = raw_writer_new(s);
    raw_writer_set_block_version(w, block_version);
    struct store_batch *b = store_batch_new(s);
    /* events over 80 hours arriving in random time order, flushed in small random slices:
     * every hour is several blocks whose times interleave */
    gen_spread_ms = (narrow ? 2 : 10) * 3600000LL;
    gen_visitors = narrow ? 2000 : 50;
    for (int i = 0; i < NEV; i++) {
        int64_t b0 = narrow ? base + 4 * 3600000LL : base + (int64_t)(rnd() % 8) * 10 * 3600000LL;
        gen_event(&g, 5000 + (uint64_t)i, b0);
        ASSERT_EQ(raw_writer_add(w, site, &g.ev, 0), 0);
        if (rnd() % flush_every == 0 || i == NEV - 1) {
            ASSERT_EQ(raw_writer_flush(w, b), 0);
            ASSERT_EQ(store_write(s, b), 0);
            raw_writer_commit(w);
            store_batch_clear(b);
        }
    }
    gen_spread_ms = 10LL * 3600 * 1000;
    gen_visitors = 50;
    raw_writer_free(w);
    store_batch_free(b);
    static struct hrow want[NEV], got[NEV];
    const int64_t from = base + 3 * 3600000LL + 999, to = base + 71 * 3600000LL + 5;
    struct hcollect ref = {.r = want};
    ASSERT_EQ(raw_scan(s, site, from, to, hrow_ref, &ref), 0);
    ASSERT_TRUE(ref.n > NEV / 2);
    qsort(want, ref.n, sizeof *want, hrow_by_off);
    static const int fields[] = {DE_NAME, DE_PATH, DE_COUNTRY};
    for (unsigned threads = 0; threads <= 2; threads++) {
        struct hcollect c = {.r = got, .last_hour = INT64_MIN};
        ASSERT_EQ(raw_scan_hours(s, site, from, to, fields, 3, 0, threads, hrow_hour, &c), 0);
        ASSERT_EQ(c.bad, 0);
        ASSERT_EQ(c.n, ref.n);
        qsort(got, c.n, sizeof *got, hrow_by_off);
        ASSERT_EQ(memcmp(got, want, ref.n * sizeof *want), 0);
    }
    /* raw_scan_some: the same rows and the asked fields; v2 blocks leave the rest empty */
    {
        struct hcollect some = {.r = got};
        ASSERT_EQ(raw_scan_some(s, site, from, to, 1u << DE_NAME | 1u << DE_PATH | 1u << DE_COUNTRY,
                                false, hrow_some, &some),
                  0);
        ASSERT_EQ(some.n, ref.n);
        qsort(got, some.n, sizeof *got, hrow_by_off);
        ASSERT_EQ(memcmp(got, want, ref.n * sizeof *want), 0);
        if (block_version == 2) ASSERT_EQ(some.bad, 0);          /* not decoded */
        if (block_version == 1) ASSERT_TRUE(some.bad > 0);       /* v1: everything is */
    }
    /* fn's value stops the scan (workers included) */
    struct hcollect c = {.r = got, .last_hour = INT64_MIN, .stop_at = narrow ? 2 : 5};
    ASSERT_EQ(raw_scan_hours(s, site, from, to, fields, 3, 0, 2, hrow_hour, &c), 7);
    /* an hour beyond rows_max; bad fields; an empty range */
    c = (struct hcollect){.r = got, .last_hour = INT64_MIN};
    ASSERT_EQ(raw_scan_hours(s, site, from, to, fields, 3, 5, 1, hrow_hour, &c), TALLY_ETOOBIG);
    static const int bad_field[] = {DE_FIELD_COUNT};
    ASSERT_EQ(raw_scan_hours(s, site, from, to, bad_field, 1, 0, 0, hrow_hour, &c), TALLY_EINVAL);
    ASSERT_EQ(raw_scan_hours(s, site, from, to, fields, RAW_ROW_FIELDS_MAX + 1, 0, 0, hrow_hour,
                             &c),
              TALLY_EINVAL);
    c = (struct hcollect){.r = got, .last_hour = INT64_MIN};
    ASSERT_EQ(raw_scan_hours(s, site, to, from, fields, 3, 0, 1, hrow_hour, &c), 0);
    ASSERT_EQ(c.n, 0);
    store_close(s);
}

TEST(raw_scan_hours_matches_raw_scan)
{
    hours_vs_scan(40, false);
    hours_vs_scan(500, false);
    hours_vs_scan(500, true);
}

/* ---- raw_scan_hours_props: field and property value ids, as raw_scan gives them ---- */

/* One row as compared: what raw_row carries, val in raw_row order (fields, then props). */
struct prow {
    int64_t ts;
    uint64_t off, visitor;
    uint32_t flags;
    uint32_t val[RAW_ROW_FIELDS_MAX];
};

static int prow_by_off(const void *a, const void *b)
{
    const struct prow *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

struct pcollect {
    struct prow *r;
    size_t n, cap;
    const int *fields;
    const uint32_t *keys;
    size_t nf, np;
    int64_t last_hour;
    int bad;
    int64_t from, to; /* prow_ref: the rows kept, when to > 0 */
};

/* The expected row from a full event: field ids, then per key the first value it has. */
static int prow_ref(void *arg, const struct raw_event *ev)
{
    struct pcollect *c = arg;
    if (c->to && (ev->ts_ms < c->from || ev->ts_ms >= c->to)) return 0;
    if (c->n == c->cap) abort();
    struct prow *r = &c->r[c->n++];
    *r = (struct prow){
        .ts = ev->ts_ms, .off = ev->offset, .visitor = ev->visitor, .flags = ev->flags};
    for (size_t f = 0; f < c->nf; f++)
        r->val[f] = ev->id[c->fields[f]];
    for (size_t j = 0; j < c->np; j++)
        for (uint32_t k = ev->props_count; k-- > 0;) /* the first of a repeated key wins */
            if (ev->props[k].key == c->keys[j]) r->val[c->nf + j] = ev->props[k].value;
    return 0;
}

static int prow_hour(void *arg, int64_t hour_ms, const struct raw_row *rows, size_t n)
{
    struct pcollect *c = arg;
    if (hour_ms <= c->last_hour || hour_ms % RAW_HOUR_MS || n == 0) c->bad++;
    c->last_hour = hour_ms;
    for (size_t i = 0; i < n; i++) {
        const struct raw_row *r = &rows[i];
        if (r->ts_in_hour_ms >= RAW_HOUR_MS) c->bad++;
        for (size_t k = i; k-- > 0;) /* each visitor's rows by (ts, offset) */
            if (rows[k].visitor == r->visitor) {
                if (rows[k].ts_in_hour_ms > r->ts_in_hour_ms ||
                    (rows[k].ts_in_hour_ms == r->ts_in_hour_ms && rows[k].offset >= r->offset))
                    c->bad++;
                break;
            }
        for (size_t f = c->nf + c->np; f < RAW_ROW_FIELDS_MAX; f++) /* unused slots: 0 */
            if (r->val[f]) c->bad++;
        if (c->n == c->cap) abort();
        struct prow *o = &c->r[c->n++];
        *o = (struct prow){.ts = hour_ms + r->ts_in_hour_ms,
                           .off = r->offset,
                           .visitor = r->visitor,
                           .flags = r->flags};
        memcpy(o->val, r->val, (c->nf + c->np) * sizeof r->val[0]);
    }
    return 0;
}

/* nev events with 0, 1 or several props (keys of a small set, on some events only; now and
 * then a key twice) over `hours` hours, flushed about every flush_every events, in layout
 * version_a or version_b in turn (b != a: hours of both layouts). */
static void write_prop_events(struct store *s, uint32_t site, int64_t base, int nev, int hours,
                              unsigned flush_every, int version_a, int version_b)
{
    static const char *keys[] = {"plan", "n", "color", "size", "lang"};
    static const char *vals[] = {"pro", "free", "42", "red", "XL", "de", "a much longer value"};
    struct raw_writer *w = raw_writer_new(s);
    struct store_batch *b = store_batch_new(s);
    static struct gen g;
    struct devent_prop props[DE_PROPS_MAX];
    int flushes = 0;
    raw_writer_set_block_version(w, version_a);
    for (int i = 0; i < nev; i++) {
        gen_event(&g, 7000 + (uint64_t)i, base);
        g.ev.ts_ms = base + (int64_t)(rnd() % ((uint64_t)hours * RAW_HOUR_MS));
        g.ev.received_ms = g.ev.ts_ms + 10;
        uint32_t np = (uint32_t)(rnd() % 3 ? rnd() % 6 : 0);
        for (uint32_t k = 0; k < np; k++) {
            const char *key = k && rnd() % 10 == 0 ? props[0].key.ptr : pick(keys, 5);
            const char *val = pick(vals, 7);
            props[k] =
                (struct devent_prop){{key, (uint32_t)strlen(key)}, {val, (uint32_t)strlen(val)}};
        }
        g.ev.props = np ? props : NULL;
        g.ev.props_count = np;
        ASSERT_EQ(raw_writer_add(w, site, &g.ev, 0), 0);
        if (rnd() % flush_every == 0 || i == nev - 1) {
            ASSERT_EQ(raw_writer_flush(w, b), 0);
            ASSERT_EQ(store_write(s, b), 0);
            raw_writer_commit(w);
            store_batch_clear(b);
            raw_writer_set_block_version(w, ++flushes % 2 ? version_b : version_a);
        }
    }
    raw_writer_free(w);
    store_batch_free(b);
}

static uint32_t dict_id_of(struct store *s, uint32_t site, const char *str)
{
    uint32_t id = 0;
    if (raw_dict_find(s, site, str, (uint32_t)strlen(str), &id) != 0) abort();
    return id;
}

/* raw_scan_hours_props over [from, to) against raw_scan over the same range, threads 0 and 2:
 * the same rows (by offset) with the same field and property value ids. *n: the rows. */
static void props_vs_scan_range(struct store *s, uint32_t site, int64_t from, int64_t to,
                                const int *fields, size_t nf, const uint32_t *keys, size_t np,
                                size_t *n)
{
    static struct prow want[NEV], got[NEV];
    struct pcollect ref = {
        .r = want, .cap = NEV, .fields = fields, .keys = keys, .nf = nf, .np = np};
    ASSERT_EQ(raw_scan(s, site, from, to, prow_ref, &ref), 0);
    qsort(want, ref.n, sizeof *want, prow_by_off);
    for (unsigned threads = 0; threads <= 2; threads += 2) {
        struct pcollect c = {.r = got,
                             .cap = NEV,
                             .fields = fields,
                             .keys = keys,
                             .nf = nf,
                             .np = np,
                             .last_hour = INT64_MIN};
        ASSERT_EQ(raw_scan_hours_props(s, site, from, to, fields, nf, keys, np, 0, threads,
                                       prow_hour, &c),
                  0);
        ASSERT_EQ(c.bad, 0);
        ASSERT_EQ(c.n, ref.n);
        qsort(got, c.n, sizeof *got, prow_by_off);
        for (size_t i = 0; i < c.n; i++) {
            ASSERT_EQ(got[i].off, want[i].off);
            ASSERT_EQ(got[i].ts, want[i].ts);
            ASSERT_EQ(got[i].visitor, want[i].visitor);
            ASSERT_EQ(got[i].flags, want[i].flags);
            for (size_t f = 0; f < RAW_ROW_FIELDS_MAX; f++)
                ASSERT_EQ(got[i].val[f], want[i].val[f]);
        }
    }
    *n = ref.n;
}

static void props_vs_scan(int version_a, int version_b)
{
    const char *dir = test_tmpdir();
    struct store *s = open_store(dir);
    uint32_t site;
    ASSERT_EQ(store_site_id(s, "a.com", 5, true, &site), 0);
    rng = 17;
    const int64_t base = 1767225600000LL;
    write_prop_events(s, site, base, NEV, 12, 150, version_a, version_b);
    const uint32_t plan = dict_id_of(s, site, "plan"), n_key = dict_id_of(s, site, "n"),
                   color = dict_id_of(s, site, "color"), size = dict_id_of(s, site, "size");
    /* keys no event has: a stored string that is never a key, and an id never assigned */
    const uint32_t chrome = dict_id_of(s, site, "Chrome"), unknown = 999999;
    static const int f3[] = {DE_NAME, DE_PATH, DE_COUNTRY}, f1[] = {DE_PATH},
                     f2[] = {DE_NAME, DE_BROWSER},
                     f4[] = {DE_NAME, DE_PATH, DE_COUNTRY, DE_BROWSER};
    _Static_assert(RAW_ROW_FIELDS_MAX == 4, "the cases below fill every slot");
    const uint32_t k3[] = {plan, color, size}, k1[] = {plan}, k4[] = {n_key, chrome, plan, color},
                   kd[] = {size, unknown, size};
    struct {
        const int *fields;
        size_t nf;
        const uint32_t *keys;
        size_t np;
    } cases[] = {
        {f3, 3, k1, 1},                     /* every slot */
        {NULL, 0, k1, 1}, {NULL, 0, k4, 4}, /* every slot, one key nobody has */
        {f1, 1, kd, 3},                     /* a key twice in the request, one never assigned */
        {f1, 1, k3, 3},   {f4, 4, NULL, 0},
        {f2, 2, NULL, 0}, /* raw_scan_hours' case: the other slots 0 */
    };
    /* a range cutting through its first and last hours */
    const int64_t from = base + 2 * RAW_HOUR_MS + 1234567, to = base + 9 * RAW_HOUR_MS + 5;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = 0;
        props_vs_scan_range(s, site, from, to, cases[i].fields, cases[i].nf, cases[i].keys,
                            cases[i].np, &n);
        ASSERT_TRUE(n > NEV / 2);
    }
    /* a quarter of an hour in the middle of one: most rows of each block are dropped, and
     * the props of the rows kept still come from their own entries */
    size_t n = 0;
    const int64_t mid = base + 5 * RAW_HOUR_MS + 1800000;
    props_vs_scan_range(s, site, mid, mid + 900000, f1, 1, k3, 3, &n);
    ASSERT_TRUE(n > 10 && n < NEV / 24);
    props_vs_scan_range(s, site, mid, mid + 900000, NULL, 0, k4, 4, &n);
    /* the rows really carry props (the comparison is not all zeros) */
    {
        static struct prow got[NEV];
        struct pcollect c = {.r = got, .cap = NEV, .keys = k1, .np = 1, .last_hour = INT64_MIN};
        ASSERT_EQ(raw_scan_hours_props(s, site, from, to, NULL, 0, k1, 1, 0, 1, prow_hour, &c), 0);
        size_t with = 0;
        for (size_t i = 0; i < c.n; i++)
            with += got[i].val[0] != 0;
        ASSERT_TRUE(with > c.n / 10 && with < c.n / 2);
    }
    /* too many slots; keys missing */
    struct pcollect c = {.r = NULL, .last_hour = INT64_MIN};
    ASSERT_EQ(raw_scan_hours_props(s, site, from, to, f3, 3, k3, 2, 0, 0, prow_hour, &c),
              TALLY_EINVAL);
    ASSERT_EQ(raw_scan_hours_props(s, site, from, to, f4, 4, k1, 1, 0, 0, prow_hour, &c),
              TALLY_EINVAL);
    ASSERT_EQ(raw_scan_hours_props(s, site, from, to, NULL, 0, NULL, 1, 0, 0, prow_hour, &c),
              TALLY_EINVAL);
    ASSERT_EQ(raw_scan_hours_props(s, site, from, to, f3, RAW_ROW_FIELDS_MAX + 1, NULL, 0, 0, 0,
                                   prow_hour, &c),
              TALLY_EINVAL);
    store_close(s);
}

TEST(raw_scan_hours_props_matches_raw_scan)
{
    props_vs_scan(block_version, block_version);
    props_vs_scan(block_version, 3 - block_version); /* both layouts in each hour */
}

/* ---- raw_compact_hour: the same events, the fewest blocks ---- */

struct evcopy {
    struct raw_event *ev;
    size_t n;
};

static int evcopy_cb(void *arg, const struct raw_event *ev)
{
    struct evcopy *c = arg;
    c->ev[c->n++] = *ev;
    return 0;
}

static int ev_by_off(const void *a, const void *b)
{
    const struct raw_event *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Every field the store keeps, equal in a and b (in offset order). */
static bool same_events(const struct evcopy *a, const struct evcopy *b)
{
    if (a->n != b->n) return false;
    qsort(a->ev, a->n, sizeof *a->ev, ev_by_off);
    qsort(b->ev, b->n, sizeof *b->ev, ev_by_off);
    for (size_t i = 0; i < a->n; i++) {
        const struct raw_event *x = &a->ev[i], *y = &b->ev[i];
        if (x->offset != y->offset || x->ts_ms != y->ts_ms || x->received_ms != y->received_ms ||
            x->visitor != y->visitor || x->flags != y->flags ||
            memcmp(x->id, y->id, sizeof x->id) || x->props_count != y->props_count ||
            memcmp(x->props, y->props, x->props_count * sizeof *x->props) ||
            x->has_revenue != y->has_revenue ||
            (x->has_revenue &&
             (x->revenue_micros != y->revenue_micros || x->currency_id != y->currency_id)))
            return false;
    }
    return true;
}

static size_t hour_blocks(struct store *s, uint32_t site, uint32_t hour)
{
    uint8_t lo[8], hi[8];
    store_put_be32(lo, site);
    store_put_be32(lo + 4, hour);
    store_put_be32(hi, site);
    store_put_be32(hi + 4, hour + 1);
    struct store_iter *it = store_iter_new(s, STORE_CF_RAW, lo, 8, hi, 8);
    size_t n = 0;
    for (store_iter_seek_first(it); store_iter_valid(it); store_iter_next(it)) n++;
    store_iter_free(it);
    return n;
}

static void write_events(struct store *s, const uint32_t *site, int nsites, int n,
                         uint64_t first_offset, int64_t base, unsigned flush_every)
{
    static struct gen g;
    struct raw_writer *w = raw_writer_new(s);
    raw_writer_set_block_version(w, block_version);
    struct store_batch *b = store_batch_new(s);
    for (int i = 0; i < n; i++) {
        gen_event(&g, first_offset + (uint64_t)i, base);
        if (raw_writer_add(w, site[rnd() % (unsigned)nsites], &g.ev, 0) != 0) abort();
        if (rnd() % flush_every == 0 || i == n - 1) {
            if (raw_writer_flush(w, b) || store_write(s, b)) abort();
            raw_writer_commit(w);
            store_batch_clear(b);
        }
    }
    raw_writer_free(w);
    store_batch_free(b);
}

TEST(raw_compaction_keeps_every_event)
{
    const char *dir = test_tmpdir();
    struct store *s = open_store(dir);
    uint32_t site[2];
    ASSERT_EQ(store_site_id(s, "a.com", 5, true, &site[0]), 0);
    ASSERT_EQ(store_site_id(s, "b.com", 5, true, &site[1]), 0);
    rng = 31;
    const int64_t base = 1767225600000LL; /* 10 hours from here, small flushes */
    const uint32_t h0 = (uint32_t)(base / RAW_HOUR_MS);
    write_events(s, site, 2, NEV, 7000, base, 12);
    static struct raw_event e1[NEV], e2[NEV], f1[NEV], f2[NEV];
    struct evcopy ref = {e1, 0}, other = {e2, 0};
    ASSERT_EQ(raw_scan(s, site[0], 0, INT64_MAX / 2, evcopy_cb, &ref), 0);
    ASSERT_EQ(raw_scan(s, site[1], 0, INT64_MAX / 2, evcopy_cb, &other), 0);
    ASSERT_TRUE(ref.n > NEV / 3);
    size_t before = 0, after = 0;
    for (uint32_t h = h0; h < h0 + 10; h++) {
        size_t nb = hour_blocks(s, site[0], h);
        struct raw_compact_stats st;
        ASSERT_EQ(raw_compact_hour(s, site[0], h, &st), 0);
        ASSERT_EQ(st.blocks_before, nb);
        ASSERT_TRUE(nb > 4);
        ASSERT_EQ(st.blocks_after, 1); /* < 4096 events an hour: one block */
        ASSERT_EQ(hour_blocks(s, site[0], h), 1);
        before += nb;
        after += st.blocks_after;
        /* again: nothing to do */
        ASSERT_EQ(raw_compact_hour(s, site[0], h, &st), 0);
        ASSERT_EQ(st.blocks_before, 1);
        ASSERT_EQ(st.blocks_after, 1);
    }
    ASSERT_TRUE(before > 10 * after);
    struct evcopy got = {f1, 0}, got_other = {f2, 0};
    ASSERT_EQ(raw_scan(s, site[0], 0, INT64_MAX / 2, evcopy_cb, &got), 0);
    ASSERT_TRUE(same_events(&ref, &got));
    ASSERT_EQ(raw_scan(s, site[1], 0, INT64_MAX / 2, evcopy_cb, &got_other), 0);
    ASSERT_TRUE(same_events(&other, &got_other)); /* the other site untouched */
    ASSERT_EQ(hour_blocks(s, site[1], h0 + 3) > 4, 1);
    /* one hour is a single sorted run now: raw_scan_hours sees it as such */
    static struct hrow hr[NEV];
    struct hcollect hc = {.r = hr, .last_hour = INT64_MIN};
    static const int fields[] = {DE_NAME, DE_PATH, DE_COUNTRY};
    ASSERT_EQ(raw_scan_hours(s, site[0], base, base + 10 * RAW_HOUR_MS, fields, 3, 0, 1, hrow_hour,
                             &hc),
              0);
    ASSERT_EQ(hc.bad, 0);
    ASSERT_EQ(hc.n, ref.n);
    /* from the epoch (date_range "all"): the same rows, the empty decades skipped */
    hc = (struct hcollect){.r = hr, .last_hour = INT64_MIN};
    ASSERT_EQ(raw_scan_hours(s, site[0], 0, base + 1000 * RAW_HOUR_MS, fields, 3, 0, 1, hrow_hour,
                             &hc),
              0);
    ASSERT_EQ(hc.bad, 0);
    ASSERT_EQ(hc.n, ref.n);
    /* events arriving after compaction (new offsets, same hours) are kept, and compacted in */
    write_events(s, site, 1, 200, 50000, base, 7);
    ref.n = 0;
    ASSERT_EQ(raw_scan(s, site[0], 0, INT64_MAX / 2, evcopy_cb, &ref), 0);
    ASSERT_EQ(ref.n, got.n + 200);
    for (uint32_t h = h0; h < h0 + 10; h++) {
        struct raw_compact_stats st;
        ASSERT_EQ(raw_compact_hour(s, site[0], h, &st), 0);
        ASSERT_EQ(hour_blocks(s, site[0], h), 1);
    }
    got.n = 0;
    ASSERT_EQ(raw_scan(s, site[0], 0, INT64_MAX / 2, evcopy_cb, &got), 0);
    ASSERT_TRUE(same_events(&ref, &got));
    /* a corrupt block: the hour is left as it is */
    uint8_t key[16];
    store_put_be32(key, site[1]);
    store_put_be32(key + 4, h0 + 2);
    store_put_be64(key + 8, 1);
    struct store_batch *b = store_batch_new(s);
    store_batch_put(b, STORE_CF_RAW, key, 16, "\x02garbage", 8);
    ASSERT_EQ(store_write(s, b), 0);
    size_t nb = hour_blocks(s, site[1], h0 + 2);
    struct raw_compact_stats st;
    ASSERT_EQ(raw_compact_hour(s, site[1], h0 + 2, &st), TALLY_ECORRUPT);
    ASSERT_EQ(hour_blocks(s, site[1], h0 + 2), nb);
    store_batch_clear(b);
    store_batch_delete(b, STORE_CF_RAW, key, 16);
    ASSERT_EQ(store_write(s, b), 0);
    store_batch_free(b);
    got_other.n = 0;
    ASSERT_EQ(raw_scan(s, site[1], 0, INT64_MAX / 2, evcopy_cb, &got_other), 0);
    ASSERT_TRUE(same_events(&other, &got_other));
    /* an empty hour */
    ASSERT_EQ(raw_compact_hour(s, site[0], h0 + 100, &st), 0);
    ASSERT_EQ(st.blocks_before, 0);
    store_close(s);
}

static int count_cb(void *arg, const struct raw_event *ev)
{
    (void)ev;
    (*(int *)arg)++;
    return 0;
}

TEST(raw_abort_and_restart_keep_dictionary_consistent)
{
    const char *dir = test_tmpdir();
    struct store *s = open_store(dir);
    uint32_t site;
    ASSERT_EQ(store_site_id(s, "a.com", 5, true, &site), 0);
    rng = 5;
    static struct gen g;
    const int64_t base = 1767225600000LL;
    struct raw_writer *w = raw_writer_new(s);
    struct store_batch *b = store_batch_new(s);
    uint64_t want = 0;
    int n = 0;
    for (int round = 0; round < 30; round++) {
        uint64_t fp = 0;
        for (int i = 0; i < 50; i++) {
            gen_event(&g, (uint64_t)(round * 100 + i), base);
            ASSERT_EQ(raw_writer_add(w, site, &g.ev, 0), 0);
            fp += fp_gen(&g.ev, 0);
        }
        ASSERT_EQ(raw_writer_flush(w, b), 0);
        if (round % 3 == 1) {
            raw_writer_abort(w); /* the write "failed": nothing of this round is stored */
        } else {
            ASSERT_EQ(store_write(s, b), 0);
            raw_writer_commit(w);
            want += fp;
            n += 50;
        }
        store_batch_clear(b);
        if (round % 7 == 6) {
            raw_writer_free(w);
            store_batch_free(b);
            store_close(s);
            s = open_store(dir);
            w = raw_writer_new(s);
            b = store_batch_new(s);
        }
    }
    struct seen sn = {.s = s, .site = site};
    ASSERT_EQ(raw_scan(s, site, 0, INT64_MAX / 2, seen_cb, &sn), 0);
    ASSERT_EQ(sn.count, n);
    ASSERT_EQ(sn.xor_mix, want);
    int cnt = 0;
    ASSERT_EQ(raw_scan(s, site + 1, 0, INT64_MAX / 2, count_cb, &cnt), 0);
    ASSERT_EQ(cnt, 0);
    raw_writer_free(w);
    store_batch_free(b);
    store_close(s);
}

/* A real block of each layout, truncated at every length and with every bit flipped: the
 * decoders return an error or rows, never read out of bounds (ASan runs this too). */
struct blk {
    uint8_t key[16];
    uint8_t *val;
    size_t len;
};

/* A copy of the site's first raw block (bl->val malloc'd); returns whether it is the site's
 * only block. */
static bool first_block(struct store *s, uint32_t site, struct blk *bl)
{
    uint8_t lo[4], hi[4];
    store_put_be32(lo, site);
    store_put_be32(hi, site + 1);
    struct store_iter *it = store_iter_new(s, STORE_CF_RAW, lo, 4, hi, 4);
    store_iter_seek_first(it);
    ASSERT_TRUE(store_iter_valid(it));
    size_t kl, vl;
    memcpy(bl->key, store_iter_key(it, &kl), 16);
    const uint8_t *v = store_iter_value(it, &vl);
    bl->len = vl;
    bl->val = malloc(vl);
    memcpy(bl->val, v, vl);
    store_iter_next(it);
    bool only = !store_iter_valid(it);
    store_iter_free(it);
    return only;
}

static int grab_block(void *arg, const struct raw_event *ev)
{
    (void)arg;
    (void)ev;
    return 0;
}

TEST(raw_block_truncation_and_bit_flips)
{
    for (int version = 1; version <= 2; version++) {
        const char *dir = test_tmpdir();
        struct store *s = open_store(dir);
        uint32_t site;
        ASSERT_EQ(store_site_id(s, "a.com", 5, true, &site), 0);
        rng = 3;
        const int64_t base = 1767225600000LL;
        static struct gen g;
        struct raw_writer *w = raw_writer_new(s);
        raw_writer_set_block_version(w, version);
        struct store_batch *b = store_batch_new(s);
        for (int i = 0; i < 160; i++) { /* enough rows for LZ4 sections */
            gen_event(&g, 100 + (uint64_t)i, base);
            g.ev.ts_ms = base + i * 1000; /* one hour: one block */
            ASSERT_EQ(raw_writer_add(w, site, &g.ev, 0), 0);
        }
        ASSERT_EQ(raw_writer_flush(w, b), 0);
        ASSERT_EQ(store_write(s, b), 0);
        raw_writer_commit(w);
        raw_writer_free(w);
        store_batch_free(b);
        struct blk bl;
        first_block(s, site, &bl);
        ASSERT_EQ(bl.val[0], version);
        const char *seeds = getenv("RAW_FUZZ_SEEDS"); /* the fuzz target's seed corpus */
        if (seeds) {
            char path[512];
            snprintf(path, sizeof path, "%s/v%d-block", seeds, version);
            FILE *fp = fopen(path, "wb");
            ASSERT_TRUE(fp != NULL);
            fwrite(bl.key, 1, 16, fp);
            fwrite(bl.val, 1, bl.len, fp);
            fclose(fp);
        }
        int cnt = 0;
        ASSERT_EQ(raw_block_decode(bl.key, 16, bl.val, bl.len, count_cb, &cnt), 0);
        ASSERT_EQ(cnt, 160);
        static const int fields[] = {DE_NAME, DE_PATH, DE_COUNTRY};
        struct raw_row *rows;
        size_t n;
        ASSERT_EQ(raw_block_project(bl.key, 16, bl.val, bl.len, fields, 3, &rows, &n), 0);
        ASSERT_EQ(n, 160);
        free(rows);
        for (size_t len = 0; len < bl.len; len++) { /* a cut block never decodes */
            uint8_t *cut = malloc(len ? len : 1);
            memcpy(cut, bl.val, len);
            ASSERT_EQ(raw_block_decode(bl.key, 16, cut, len, grab_block, NULL), TALLY_ECORRUPT);
            int rc = raw_block_project(bl.key, 16, cut, len, fields, 3, &rows, &n);
            ASSERT_TRUE(rc == TALLY_ECORRUPT);
            free(cut);
        }
        for (size_t bit = 0; bit < bl.len * 8; bit++) { /* a flipped bit: an error or rows */
            bl.val[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            int rc = raw_block_decode(bl.key, 16, bl.val, bl.len, grab_block, NULL);
            ASSERT_TRUE(rc == TALLY_OK || rc == TALLY_ECORRUPT);
            rc = raw_block_project(bl.key, 16, bl.val, bl.len, fields, 3, &rows, &n);
            ASSERT_TRUE(rc == TALLY_OK || rc == TALLY_ECORRUPT);
            if (rc == TALLY_OK) free(rows);
            bl.val[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        free(bl.val);
        store_close(s);
    }
}

static int prow_cmp(const void *a, const void *b)
{
    const struct prow *x = a, *y = b;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    if (x->ts != y->ts) return x->ts < y->ts ? -1 : 1;
    if (x->visitor != y->visitor) return x->visitor < y->visitor ? -1 : 1;
    if (x->flags != y->flags) return x->flags < y->flags ? -1 : 1;
    return memcmp(x->val, y->val, sizeof x->val);
}

/* One block with props, cut at every length and with a bit flipped in turn, stored and
 * scanned by raw_scan_hours_props (props of every key, over the whole hour or a middle half
 * of it): an error (TALLY_ECORRUPT) or rows, never a crash or a read out of bounds (ASan); and
 * a block that raw_block_decode accepts gives the rows and values it gives. */
TEST(raw_scan_hours_props_corrupt_blocks)
{
    for (int version = 1; version <= 2; version++) {
        const char *dir = test_tmpdir();
        struct store *s = open_store(dir);
        uint32_t site;
        ASSERT_EQ(store_site_id(s, "a.com", 5, true, &site), 0);
        rng = 5;
        const int64_t base = 1767225600000LL;
        write_prop_events(s, site, base, 80, 1, 1000000, version, version); /* one block */
        struct blk bl;
        ASSERT_TRUE(first_block(s, site, &bl));
        ASSERT_EQ(bl.val[0], version);
        static const int fields[] = {DE_PATH};
        const uint32_t keys[] = {dict_id_of(s, site, "plan"), dict_id_of(s, site, "n"),
                                 dict_id_of(s, site, "color")};
        static struct prow want[200], got[200];
        struct store_batch *b = store_batch_new(s);
        size_t accepted = 0, rejected = 0;
        uint8_t *cut = malloc(bl.len);
        /* t < bl.len: cut to t bytes; then bit t - bl.len flipped, every third (each bit
         * position of a byte in turn) */
        for (size_t t = 0; t < bl.len + bl.len * 8; t += t < bl.len ? 1 : 3) {
            size_t len = bl.len;
            memcpy(cut, bl.val, bl.len);
            if (t < bl.len)
                len = t;
            else
                cut[(t - bl.len) / 8] ^= (uint8_t)(1u << ((t - bl.len) % 8));
            store_batch_clear(b);
            store_batch_put(b, STORE_CF_RAW, bl.key, 16, cut, len);
            ASSERT_EQ(store_write(s, b), 0);
            const int64_t from = t % 2 ? base + 900000 : base,
                          to = from + (t % 2 ? 1800000 : RAW_HOUR_MS);
            struct pcollect ref = {.r = want,
                                   .cap = 200,
                                   .fields = fields,
                                   .keys = keys,
                                   .nf = 1,
                                   .np = 3,
                                   .from = from,
                                   .to = to};
            int rd = raw_block_decode(bl.key, 16, cut, len, prow_ref, &ref);
            struct pcollect c = {.r = got,
                                 .cap = 200,
                                 .fields = fields,
                                 .keys = keys,
                                 .nf = 1,
                                 .np = 3,
                                 .last_hour = INT64_MIN};
            int rc =
                raw_scan_hours_props(s, site, from, to, fields, 1, keys, 3, 0, 0, prow_hour, &c);
            ASSERT_TRUE(rc == TALLY_OK || rc == TALLY_ECORRUPT);
            if (t < bl.len) ASSERT_EQ(rc, TALLY_ECORRUPT); /* a cut block never decodes */
            if (rc) rejected++;
            if (rd != TALLY_OK) continue;
            accepted++;
            ASSERT_EQ(rc, TALLY_OK);
            ASSERT_EQ(c.n, ref.n);
            qsort(want, ref.n, sizeof *want, prow_cmp);
            qsort(got, c.n, sizeof *got, prow_cmp);
            for (size_t i = 0; i < c.n; i++)
                ASSERT_EQ(prow_cmp(&got[i], &want[i]), 0);
        }
        ASSERT_TRUE(accepted > 0 && rejected > bl.len);
        free(cut);
        free(bl.val);
        store_batch_free(b);
        store_close(s);
    }
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    for (; v >= 0x80; v >>= 7)
        p[n++] = (uint8_t)(v | 0x80);
    p[n++] = (uint8_t)v;
    return n;
}

static uint64_t get_varint(const uint8_t **p)
{
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
        uint8_t c = *(*p)++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return v;
    }
}

/* A v2 block with its props section (the one before the last: raw.h's layout) replaced by
 * the props bytes given, stored as they are (codec 0), under key. */
static void put_block_with_props(struct store *s, const uint8_t *key, const uint8_t *val,
                                 size_t vlen, const uint8_t *props, size_t plen)
{
    static uint8_t out[65536];
    const int sections = DE_FIELD_COUNT + 7, props_at = DE_FIELD_COUNT + 5;
    const uint8_t *p = val + 1;
    size_t o = 1;
    out[0] = val[0];
    o += put_varint(out + o, get_varint(&p));
    for (int c = 0; c < sections; c++) {
        uint64_t len = get_varint(&p);
        if (c == props_at) {
            o += put_varint(out + o, plen + 1);
            out[o++] = 0;
            memcpy(out + o, props, plen);
            o += plen;
        } else {
            o += put_varint(out + o, len);
            memcpy(out + o, p, len);
            o += len;
        }
        p += len;
    }
    if (p != val + vlen || o > sizeof out) abort();
    struct store_batch *b = store_batch_new(s);
    store_batch_put(b, STORE_CF_RAW, key, 16, out, o);
    if (store_write(s, b) != 0) abort();
    store_batch_free(b);
}

/* Hand-made props sections of a 4-row v2 block: the values land on their rows (the first of a
 * repeated key; 0 for keys a row lacks), and each malformed section is TALLY_ECORRUPT for
 * raw_scan_hours_props, while raw_scan_hours, which does not read it, still gives the rows. */
TEST(raw_scan_hours_props_malformed_props)
{
    const char *dir = test_tmpdir();
    struct store *s = open_store(dir);
    uint32_t site;
    ASSERT_EQ(store_site_id(s, "a.com", 5, true, &site), 0);
    rng = 11;
    const int64_t base = 1767225600000LL;
    static struct gen g;
    struct raw_writer *w = raw_writer_new(s);
    raw_writer_set_block_version(w, 2);
    struct store_batch *b = store_batch_new(s);
    for (int i = 0; i < 4; i++) {
        gen_event(&g, 300 + (uint64_t)i, base);
        g.ev.ts_ms = base + 1000 * i;
        g.ev.props_count = 0;
        ASSERT_EQ(raw_writer_add(w, site, &g.ev, 0), 0);
    }
    ASSERT_EQ(raw_writer_flush(w, b), 0);
    ASSERT_EQ(store_write(s, b), 0);
    raw_writer_commit(w);
    raw_writer_free(w);
    store_batch_free(b);
    struct blk bl;
    first_block(s, site, &bl);
    ASSERT_EQ(bl.val[0], 2);
    const uint32_t keys[] = {7, 9, 12345};
    static struct prow got[8];
    /* rows 1 and 3: row 1 has key 7 twice (5 first), key 9 = 6; row 3 has key 9 = 8 */
    const uint8_t good[] = {2, 1, 3, 7, 5, 9, 6, 7, 4, 2, 1, 9, 8};
    put_block_with_props(s, bl.key, bl.val, bl.len, good, sizeof good);
    struct pcollect c = {.r = got, .cap = 8, .keys = keys, .np = 3, .last_hour = INT64_MIN};
    ASSERT_EQ(raw_scan_hours_props(s, site, base, base + RAW_HOUR_MS, NULL, 0, keys, 3, 0, 0,
                                   prow_hour, &c),
              0);
    ASSERT_EQ(c.n, 4);
    const uint32_t want[4][3] = {{0, 0, 0}, {5, 6, 0}, {0, 0, 0}, {0, 8, 0}};
    for (size_t i = 0; i < 4; i++) /* one sorted block: rows come in block order */
        for (size_t j = 0; j < 3; j++)
            ASSERT_EQ(got[i].val[j], want[i][j]);
    /* a range that drops rows 0 and 2 (ts + 0 s, + 2 s): rows 1 and 3 keep their own values */
    c = (struct pcollect){.r = got, .cap = 8, .keys = keys, .np = 3, .last_hour = INT64_MIN};
    ASSERT_EQ(raw_scan_hours_props(s, site, base + 2500, base + 3500, NULL, 0, keys + 1, 1, 0, 0,
                                   prow_hour, &c),
              0);
    ASSERT_EQ(c.n, 1);
    ASSERT_EQ(got[0].val[0], 8);
    struct {
        uint8_t b[72];
        size_t len;
    } bad[] = {
        {{1, 4, 1, 1, 1}, 5},                                   /* a row past the block's 4 */
        {{2, 1, 1, 1, 1, 100, 1, 1, 1}, 9},                     /* a delta past them */
        {{1, 1, 0}, 3},                                         /* no pairs */
        {{1, 1, DE_PROPS_MAX + 1}, 3 + 2 * (DE_PROPS_MAX + 1)}, /* more pairs than the most */
        {{1, 1, 1, 7, 5, 0}, 6},                                /* a byte after the entries */
        {{3, 1, 1, 7, 5, 1, 1, 9, 6}, 9},                       /* fewer entries than said */
        {{2, 1, 1, 7, 5, 0, 1, 9, 6}, 9},                       /* a delta of 0: the same row */
        {{2, 2, 1, 7, 5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 9, 6},
         18},                    /* a delta of 2^64 - 1: back to row 1 */
        {{1, 1, 2, 7, 5, 9}, 6}, /* cut inside a pair */
        {{1, 1, 1, 7, 0x85}, 5}, /* cut inside a varint */
    };
    memset(bad[3].b + 3, 1, 2 * (DE_PROPS_MAX + 1)); /* pairs (1, 1) */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put_block_with_props(s, bl.key, bl.val, bl.len, bad[i].b, bad[i].len);
        c = (struct pcollect){.r = got, .cap = 8, .keys = keys, .np = 3, .last_hour = INT64_MIN};
        ASSERT_EQ(raw_scan_hours_props(s, site, base, base + RAW_HOUR_MS, NULL, 0, keys, 3, 0, 0,
                                       prow_hour, &c),
                  TALLY_ECORRUPT);
        c = (struct pcollect){.r = got, .cap = 8, .last_hour = INT64_MIN};
        ASSERT_EQ(raw_scan_hours(s, site, base, base + RAW_HOUR_MS, NULL, 0, 0, 0, prow_hour, &c),
                  0);
        ASSERT_EQ(c.n, 4);
    }
    free(bl.val);
    store_close(s);
}

TEST(raw_corrupt_block)
{
    uint8_t key[16] = {0};
    uint8_t val[] = {1, 2, 0x01, 1, 2, 3};
    int cnt = 0;
    ASSERT_EQ(raw_block_decode(key, 16, val, sizeof val, count_cb, &cnt), TALLY_ECORRUPT);
    uint8_t v2[] = {9, 1};
    ASSERT_EQ(raw_block_decode(key, 16, v2, sizeof v2, count_cb, &cnt), TALLY_ECORRUPT);
    ASSERT_EQ(raw_block_decode(key, 15, v2, sizeof v2, count_cb, &cnt), TALLY_ECORRUPT);
}

struct holder {
    struct store *s;
    int started;
};

/* Holds an iterator for 200 ms: store_reopen must wait for it. */
static void *hold_iterator(void *arg)
{
    struct holder *h = arg;
    struct store_iter *it = store_iter_new(h->s, STORE_CF_META, NULL, 0, NULL, 0);
    __atomic_store_n(&h->started, 1, __ATOMIC_RELEASE);
    struct timespec ts = {0, 200 * 1000000};
    nanosleep(&ts, NULL);
    store_iter_seek_first(it);
    (void)store_iter_valid(it);
    store_iter_free(it);
    return NULL;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

TEST(reopen_waits_for_readers_and_keeps_data)
{
    const char *dir = test_tmpdir();
    struct store *s = open_store(dir);
    uint32_t id;
    ASSERT_EQ(store_site_id(s, "a.example", 9, true, &id), 0);
    struct store_batch *b = store_batch_new(s);
    store_batch_put_u64(b, "k", 42);
    ASSERT_EQ(store_write(s, b), 0);
    ASSERT_EQ(store_failed(s), 0);
    struct holder h = {s, 0};
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, hold_iterator, &h), 0);
    while (!__atomic_load_n(&h.started, __ATOMIC_ACQUIRE)) sched_yield();
    double t0 = mono_s();
    ASSERT_EQ(store_reopen(s), 0);
    ASSERT_TRUE(mono_s() - t0 > 0.1); /* waited for the iterator (held 200 ms) */
    pthread_join(th, NULL);
    uint64_t v = 0;
    ASSERT_EQ(store_meta_get_u64(s, "k", &v), 0);
    ASSERT_EQ(v, 42);
    uint32_t id2;
    ASSERT_EQ(store_site_id(s, "a.example", 9, false, &id2), 0);
    ASSERT_EQ(id2, id);
    ASSERT_EQ(store_write(s, b), 0); /* the batch still works on the reopened database */
    store_batch_free(b);
    store_close(s);
}

/* Bulk writes (store.h, tally --rebuild) skip the WAL. A process that dies without closing
 * loses what was only in memory, but every batch (a rollup-like key in one family and the
 * cursor in the meta family) must be whole or absent: the families flush together. The child
 * writes batches until the rollups family has flushed several times on its own (1 MiB
 * memtables), then dies; the parent reopens and checks that exactly batches 1..cursor are
 * there. Without atomic flushes the big family flushes alone and keys outlive their cursor. */
#define BULK_VALUE_BYTES 2048

static void bulk_key(char *k, uint32_t i)
{
    snprintf(k, 16, "bulk%08u", i);
}

/* Waits (up to 60 s) until no memtable waits for a flush and none runs. */
static void flushes_settle(struct store *s)
{
    for (int i = 0; i < 3000; i++) {
        char imm[32] = "", run[32] = "";
        store_property(s, STORE_CF_ROLLUPS, "rocksdb.num-immutable-mem-table", imm, sizeof imm);
        store_property(s, STORE_CF_ROLLUPS, "rocksdb.num-running-flushes", run, sizeof run);
        if (strcmp(imm, "0") == 0 && strcmp(run, "0") == 0) return;
        usleep(20 * 1000);
    }
}

static _Noreturn void bulk_child(const char *dir, uint32_t batches)
{
    struct store_options o;
    store_options_default(&o);
    o.dir = dir;
    o.block_cache_bytes = 4u << 20;
    o.write_buffer_bytes = 1u << 20;
    o.bulk_writes = true;
    struct store *s = NULL;
    if (store_open(&o, &s) != 0) _exit(2);
    static uint8_t val[BULK_VALUE_BYTES];
    struct store_batch *b = store_batch_new(s);
    for (uint32_t i = 1; i <= batches; i++) {
        char k[16];
        bulk_key(k, i);
        memset(val, (int)(i & 0xff), sizeof val);
        store_batch_clear(b);
        store_batch_put(b, STORE_CF_ROLLUPS, k, strlen(k), val, sizeof val);
        store_batch_put_u64(b, "bulk.cursor", i);
        if (store_write(s, b) != 0) _exit(3);
        if (i == batches - 200) flushes_settle(s);
    }
    _exit(0); /* no store_close: the memtables die with the process */
}

TEST(bulk_writes_lose_only_whole_batches)
{
    const uint32_t batches = 3000; /* ~6 MiB in the rollups family: several flushes */
    const char *dir = test_tmpdir();
    fflush(NULL);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) { /* exec: RocksDB's thread pools do not survive a fork */
        char n[16];
        snprintf(n, sizeof n, "%u", batches);
        execl("/proc/self/exe", "test_store", "--bulk-child", dir, n, (char *)NULL);
        _exit(4);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
    struct store *s = open_store(dir);
    uint64_t cursor = 0;
    int rc = store_meta_get_u64(s, "bulk.cursor", &cursor);
    ASSERT_TRUE(rc == 0 || rc == TALLY_ENOENT);
    ASSERT_TRUE(cursor >= 1000);     /* flushed batches survive */
    ASSERT_TRUE(cursor < batches);   /* the memtable's last ones did not (no WAL) */
    uint32_t present = 0, beyond = 0;
    for (uint32_t i = 1; i <= batches; i++) {
        char k[16];
        bulk_key(k, i);
        void *v = NULL;
        size_t vl = 0;
        int g = store_get(s, STORE_CF_ROLLUPS, k, strlen(k), &v, &vl);
        ASSERT_TRUE(g == 0 || g == TALLY_ENOENT);
        if (g == 0) {
            ASSERT_EQ(vl, BULK_VALUE_BYTES);
            ASSERT_EQ(((uint8_t *)v)[BULK_VALUE_BYTES - 1], i & 0xff);
            present++;
            if (i > cursor) beyond++;
        }
        free(v);
    }
    ASSERT_EQ(beyond, 0);
    ASSERT_EQ(present, cursor);
    store_close(s);

    /* a clean close flushes everything, WAL or not */
    struct store_options o;
    store_options_default(&o);
    o.dir = dir;
    o.bulk_writes = true;
    ASSERT_EQ(store_open(&o, &s), 0);
    struct store_batch *b = store_batch_new(s);
    store_batch_put_u64(b, "bulk.cursor", 7777);
    ASSERT_EQ(store_write(s, b), 0);
    store_batch_free(b);
    store_close(s);
    s = open_store(dir);
    ASSERT_EQ(store_meta_get_u64(s, "bulk.cursor", &cursor), 0);
    ASSERT_EQ(cursor, 7777);
    store_close(s);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--bulk-child") == 0)
        bulk_child(argv[2], (uint32_t)strtoul(argv[3], NULL, 10));
    RUN(basics_and_sites);
    RUN(raw_family_has_its_own_cache);
    RUN(reopen_waits_for_readers_and_keeps_data);
    RUN(raw_exact_and_window);
    RUN(raw_scan_hours_matches_raw_scan);
    RUN(raw_scan_hours_props_matches_raw_scan);
    RUN(raw_compaction_keeps_every_event);
    block_version = 1; /* the same on blocks of the row layout, which stores still hold */
    RUN(raw_exact_and_window);
    RUN(raw_scan_hours_matches_raw_scan);
    RUN(raw_scan_hours_props_matches_raw_scan);
    RUN(raw_compaction_keeps_every_event);
    block_version = 2;
    RUN(raw_block_truncation_and_bit_flips);
    RUN(raw_scan_hours_props_corrupt_blocks);
    RUN(raw_scan_hours_props_malformed_props);
    RUN(raw_abort_and_restart_keep_dictionary_consistent);
    RUN(raw_corrupt_block);
    RUN(bulk_writes_lose_only_whole_batches);
    return test_summary();
}
