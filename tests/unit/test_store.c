/* Unit tests for store (RocksDB wrapper, site registry) and store/raw (blocks, dictionary,
 * scans, retention). */
#include "test.h"

#include <pthread.h>
#include <time.h>

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

static void gen_event(struct gen *g, uint64_t offset, int64_t base_ms)
{
    static const char *names[] = {"pageview", "pageview", "Signup", "Click"};
    static const char *browsers[] = {"Chrome", "Firefox", "Safari", ""};
    static const char *countries[] = {"DE", "US", "FR", ""};
    static const char *sources[] = {"Google", "Direct / None", "Twitter"};
    memset(g, 0, sizeof *g);
    struct devent *e = &g->ev;
    e->offset = offset;
    e->ts_ms = base_ms + (int64_t)(rnd() % (10LL * 3600 * 1000));
    e->received_ms = e->ts_ms + (int64_t)(rnd() % 5000);
    e->visitor = rnd() % 50 + 1;
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
        if (r->ts_ms < hour_ms || r->ts_ms >= hour_ms + RAW_HOUR_MS) c->bad++;
        /* each visitor's rows by (ts, offset): against its previous row in this hour */
        for (size_t k = i; k-- > 0;)
            if (rows[k].visitor == r->visitor) {
                if (rows[k].ts_ms > r->ts_ms ||
                    (rows[k].ts_ms == r->ts_ms && rows[k].offset >= r->offset))
                    c->bad++;
                break;
            }
        c->r[c->n++] = (struct hrow){r->ts_ms, r->offset, r->visitor, r->flags,
                                     r->val[0], r->val[1], r->val[2]};
    }
    return 0;
}

/* flush_every: the mean events per flush. 40: every hour is more runs than raw.c keeps apart
 * (merged); 500: a few runs per hour whose visitors' times interleave (late events fixed in
 * place, the runs handed over one after the other). */
static void hours_vs_scan(unsigned flush_every)
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
    for (int i = 0; i < NEV; i++) {
        gen_event(&g, 5000 + (uint64_t)i, base + (int64_t)(rnd() % 8) * 10 * 3600000LL);
        ASSERT_EQ(raw_writer_add(w, site, &g.ev, 0), 0);
        if (rnd() % flush_every == 0 || i == NEV - 1) {
            ASSERT_EQ(raw_writer_flush(w, b), 0);
            ASSERT_EQ(store_write(s, b), 0);
            raw_writer_commit(w);
            store_batch_clear(b);
        }
    }
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
    struct hcollect c = {.r = got, .last_hour = INT64_MIN, .stop_at = 5};
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
    hours_vs_scan(40);
    hours_vs_scan(500);
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
        uint8_t lo[4], hi[4];
        store_put_be32(lo, site);
        store_put_be32(hi, site + 1);
        struct store_iter *it = store_iter_new(s, STORE_CF_RAW, lo, 4, hi, 4);
        store_iter_seek_first(it);
        ASSERT_TRUE(store_iter_valid(it));
        struct blk bl;
        size_t kl, vl;
        memcpy(bl.key, store_iter_key(it, &kl), 16);
        const uint8_t *v = store_iter_value(it, &vl);
        bl.len = vl;
        bl.val = malloc(vl);
        memcpy(bl.val, v, vl);
        store_iter_free(it);
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

int main(void)
{
    RUN(basics_and_sites);
    RUN(reopen_waits_for_readers_and_keeps_data);
    RUN(raw_exact_and_window);
    RUN(raw_scan_hours_matches_raw_scan);
    RUN(raw_compaction_keeps_every_event);
    block_version = 1; /* the same on blocks of the row layout, which stores still hold */
    RUN(raw_exact_and_window);
    RUN(raw_scan_hours_matches_raw_scan);
    RUN(raw_compaction_keeps_every_event);
    block_version = 2;
    RUN(raw_block_truncation_and_bit_flips);
    RUN(raw_abort_and_restart_keep_dictionary_consistent);
    RUN(raw_corrupt_block);
    return test_summary();
}
