/* consumer: see consumer.h (and rollup.h for the service's promises). */
#include "rollup/consumer.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <time.h>

#include "core/diag.h"
#include "ingest/timefmt.h"
#include "log/evlog.h"
#include "rollup/dedup.h"
#include "store/raw.h"
#include "store/strtab.h"
#include "tally/error.h"

#define SITE_CACHE_MAX 65536
#define RETRY_DELAY_MS 1000
#define WAIT_MS 100
/* A live consumer that has read everything the log holds flushes what it holds once
 * CAUGHT_UP_FLUSH_MS have passed since its last flush, and waits no longer than that for new
 * records while it holds some. So an acknowledged event is in queries within about this much
 * plus one flush, and under steady load a consumer flushes at most 1000 / CAUGHT_UP_FLUSH_MS
 * times a second: flushing at every catch-up (each read burst, a few hundred events at
 * 60,000 events/s) cost the rollup consumer 1-2 ms per flush, most of a core. */
#define CAUGHT_UP_FLUSH_MS 100
/* A live consumer woken by new records after it caught up sleeps CAUGHT_UP_LINGER_MS before
 * reading them, so that it reads the records of many group commits per wake-up instead of
 * waking for each (under fsync `always` at 30,000 single-event requests a second that is
 * ~8,000 commits a second, each waking both consumers). Freshness costs at most this much. */
#define CAUGHT_UP_LINGER_MS 10
/* The raw consumer also flushes once its pending events hold this many string and property
 * bytes, so one batch stays small next to a nearly full disk (a whole backlog written at
 * once after a disk-full recovery could fill it again) and next to its memory bound. */
#define RAW_FLUSH_BYTES_MAX (1u << 20)
#define RAW_RETENTION_INTERVAL_MS (3600LL * 1000)
/* A live reader that returns nothing for this long while the log's committed end is beyond
 * its position is reopened there (seen with JetStream: after a stream leader was killed, a
 * reader could stay empty; test_jslog cluster_r3_survives_a_server). */
#define READER_STALL_MS 5000
/* Raw compaction (raw_compact_hour): each hour of every site is compacted once,
 * when it ended RAW_COMPACT_GRACE_HOURS ago (late events mostly in), if it is not older than
 * RAW_COMPACT_LOOKBACK_HOURS: a restart revisits those (cheap for compact hours: only block
 * headers are read), and they stay clear of raw retention, whose cut is a day old at least
 * (retention_days >= 1), since in a multi-partition node another consumer may run it. At most
 * RAW_COMPACT_HOURS_PER_TICK hours per tick, so the consumer goes back to the log quickly. */
#define RAW_COMPACT_INTERVAL_MS (60LL * 1000)
#define RAW_COMPACT_GRACE_HOURS 2
#define RAW_COMPACT_LOOKBACK_HOURS 20
#define RAW_COMPACT_HOURS_PER_TICK 8

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------------- feeder */

struct fsite {
    const char *name; /* canonical name: the config's, or a copy of the event's */
    const char *const *hosts;
    size_t host_count;
    char *owned;
};

struct feeder {
    const struct tally_config *cfg;
    struct derive_ctx *dctx;
    struct strtab *names; /* site string as sent -> index into sites */
    struct fsite *sites;
    size_t nsites, capsites;
    uint64_t corrupt;
    char buf[EVENT_SITE_BYTES_MAX + 1];
};

struct feeder *feeder_new(const struct tally_config *cfg)
{
    struct feeder *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->cfg = cfg;
    f->dctx = derive_ctx_new();
    f->names = strtab_new();
    if (!f->dctx || !f->names) {
        feeder_free(f);
        return NULL;
    }
    return f;
}

void feeder_free(struct feeder *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->nsites; i++) free(f->sites[i].owned);
    free(f->sites);
    strtab_free(f->names);
    derive_ctx_free(f->dctx);
    free(f);
}

uint64_t feeder_corrupt(const struct feeder *f)
{
    return f->corrupt;
}

static const struct fsite *feeder_site(struct feeder *f, const struct event *ev)
{
    int64_t i = strtab_find(f->names, 0, ev->site.ptr, (uint32_t)ev->site.len);
    if (i >= 0) return &f->sites[i];
    if (f->nsites >= SITE_CACHE_MAX) {
        for (size_t k = 0; k < f->nsites; k++) free(f->sites[k].owned);
        f->nsites = 0;
        strtab_clear(f->names);
    }
    size_t n = ev->site.len < EVENT_SITE_BYTES_MAX ? ev->site.len : EVENT_SITE_BYTES_MAX;
    memcpy(f->buf, ev->site.ptr, n);
    f->buf[n] = 0;
    struct fsite st = {0};
    const struct config_site *cs = f->cfg ? config_site_find(f->cfg, f->buf) : NULL;
    if (cs) {
        st.name = cs->name;
        st.hosts = (const char *const *)cs->hosts.items;
        st.host_count = (size_t)cs->hosts.count;
    } else {
        st.owned = strdup(f->buf);
        if (!st.owned) return NULL;
        st.name = st.owned;
    }
    if (f->nsites == f->capsites) {
        size_t cap = f->capsites ? f->capsites * 2 : 16;
        struct fsite *p = realloc(f->sites, cap * sizeof *p);
        if (!p) {
            free(st.owned);
            return NULL;
        }
        f->sites = p;
        f->capsites = cap;
    }
    i = strtab_intern(f->names, 0, ev->site.ptr, (uint32_t)ev->site.len, NULL);
    if (i < 0 || (size_t)i != f->nsites) {
        free(st.owned);
        return NULL;
    }
    f->sites[f->nsites++] = st;
    return &f->sites[i];
}

int feeder_derive(struct feeder *f, uint64_t offset, const void *data, size_t len,
                  struct devent *out)
{
    struct event *ev;
    if (derive_decode(f->dctx, data, len, &ev) != 0) {
        f->corrupt++;
        return TALLY_ECORRUPT;
    }
    const struct fsite *st = feeder_site(f, ev);
    if (!st) return TALLY_ENOMEM;
    derive_event(f->dctx, ev, offset, st->name, st->hosts, st->host_count, out);
    return TALLY_OK;
}

/* ---------------------------------------------------------------- time zones */

const char *rollup_site_tz(const struct tally_config *cfg, const char *site, size_t len)
{
    if (!cfg) return "UTC";
    char buf[EVENT_SITE_BYTES_MAX + 1];
    if (len > EVENT_SITE_BYTES_MAX) len = EVENT_SITE_BYTES_MAX;
    memcpy(buf, site, len);
    buf[len] = 0;
    const struct config_site *cs = config_site_find(cfg, buf);
    return cs && cs->timezone && cs->timezone[0] ? cs->timezone : "UTC";
}

static const char *engine_tz(void *arg, const char *site, size_t len)
{
    return rollup_site_tz(arg, site, len);
}

/* ---------------------------------------------------------------- shared loop */

struct loop_ops {
    void *ctx;
    uint64_t (*cursor)(void *ctx);
    int (*add)(void *ctx, const struct devent *ev);
    void (*skip)(void *ctx, uint64_t offset);
    bool (*should_flush)(void *ctx);
    size_t (*pending)(void *ctx);
    int (*flush)(void *ctx);
    void (*tick)(void *ctx); /* optional: called once per loop iteration */
};

static void report(struct consumer_status *st, uint64_t cursor, uint64_t from, uint64_t end)
{
    if (!st) return;
    atomic_store(&st->cursor, cursor);
    if (st->progress) st->progress(st->progress_arg, cursor - from, end - from);
}

struct loop_state {
    struct evlog *log;
    const struct loop_ops *ops;
    struct consumer_status *st;
    int consumer_id;
    uint64_t from, end;
    int64_t last_flush;
};

/* Flushes, then tells the log and the status where the consumer is. */
static int do_flush(struct loop_state *ls)
{
    int rc = ls->ops->flush(ls->ops->ctx);
    ls->last_flush = timefmt_mono_ms();
    if (rc) return rc;
    if (ls->st) atomic_fetch_add(&ls->st->flushes, 1);
    uint64_t cur = ls->ops->cursor(ls->ops->ctx);
    if (ls->consumer_id >= 0) evlog_consumer_advance(ls->log, ls->consumer_id, cur);
    report(ls->st, cur, ls->from, ls->end);
    return TALLY_OK;
}

/* Reads [cursor, end) (or live) feeding ops. Returns 0 at the end/stop, or an error. */
static int loop(struct evlog *log, struct feeder *fd, const struct loop_ops *ops,
                uint64_t end_offset, bool live, int64_t flush_interval_ms,
                struct consumer_status *st, const char *name, int consumer_id)
{
    uint64_t cursor = ops->cursor(ops->ctx);
    uint64_t start = evlog_start_offset(log);
    if (cursor < start) {
        diag_warn("%s consumer: offsets [%llu, %llu) were deleted from the log before they "
                  "were consumed", name, (unsigned long long)cursor, (unsigned long long)start);
        cursor = start;
    }
    uint64_t end = end_offset == UINT64_MAX ? evlog_committed_offset(log) : end_offset;
    report(st, ops->cursor(ops->ctx), cursor, end > cursor ? end : cursor);
    if (!live && cursor >= end) return TALLY_OK;
    struct evlog_reader *r = NULL;
    int rc = evlog_reader_open(log, cursor, &r);
    if (rc) return rc;
    struct loop_state ls = {log, ops, st, consumer_id, cursor, end, timefmt_mono_ms()};
    uint64_t since_report = 0;
    int64_t empty_since_ms = 0; /* monotonic; 0: the last read returned a record */
    while (!rc) {
        if (st && atomic_load(&st->stop)) break;
        if (ops->tick) ops->tick(ops->ctx);
        if (!live && evlog_reader_position(r) >= end) break;
        struct seglog_record rec;
        int n = evlog_reader_next(r, &rec);
        if (n != TALLY_EAGAIN) empty_since_ms = 0;
        if (n == 0) {
            if (!live && rec.offset >= end) break;
            struct devent de;
            int d = feeder_derive(fd, rec.offset, rec.data, rec.len, &de);
            if (d == TALLY_ECORRUPT) ops->skip(ops->ctx, rec.offset);
            else if (d) rc = d;
            else rc = ops->add(ops->ctx, &de);
            if (st) atomic_fetch_add(&st->events, 1);
            if (!rc && ops->should_flush(ops->ctx)) rc = do_flush(&ls);
            if (++since_report >= 65536) {
                since_report = 0;
                report(st, ops->cursor(ops->ctx), ls.from, ls.end);
            }
        } else if (n == TALLY_EAGAIN) {
            if (!live) {
                /* A catch-up run to a known end: a remote log (JetStream) may answer "nothing
                 * yet" before the end (a fetch in flight, a leader election); wait for it. */
                if (evlog_reader_position(r) >= end || (st && atomic_load(&st->stop))) break;
                if (evlog_wait(log, evlog_reader_position(r), WAIT_MS) == TALLY_ECLOSED) break;
                continue;
            }
            int64_t now = timefmt_mono_ms();
            if (ops->pending(ops->ctx) && now - ls.last_flush >= CAUGHT_UP_FLUSH_MS) {
                rc = do_flush(&ls);
                now = timefmt_mono_ms();
            }
            uint64_t pos = evlog_reader_position(r);
            if (pos >= evlog_committed_offset(log)) empty_since_ms = 0;
            else if (!empty_since_ms) empty_since_ms = now;
            if (!rc && empty_since_ms && now - empty_since_ms > READER_STALL_MS) {
                diag_warn("%s consumer: no record for %lld ms below the log's committed end; "
                          "reopening the reader at %llu", name, (long long)READER_STALL_MS,
                          (unsigned long long)pos);
                evlog_reader_close(r);
                r = NULL;
                empty_since_ms = 0;
                rc = evlog_reader_open(log, pos, &r);
                continue;
            }
            if (!rc) {
                ls.end = evlog_committed_offset(log);
                int64_t wait_ms = WAIT_MS;
                if (ops->pending(ops->ctx)) {
                    int64_t left_ms = CAUGHT_UP_FLUSH_MS - (now - ls.last_flush);
                    if (left_ms < wait_ms) wait_ms = left_ms < 1 ? 1 : left_ms;
                }
                int w = evlog_wait(log, evlog_reader_position(r), (int)wait_ms);
                if (w == TALLY_ECLOSED) break;
                if (w == TALLY_OK && st) atomic_fetch_add(&st->wakeups, 1);
                if (w == TALLY_OK && !(st && atomic_load(&st->stop)))
                    sleep_ms(CAUGHT_UP_LINGER_MS);
            }
        } else if (n == TALLY_ERANGE) {
            uint64_t s0 = evlog_start_offset(log);
            diag_warn("%s consumer: the log moved past the reader (retention); resuming at %llu",
                      name, (unsigned long long)s0);
            evlog_reader_close(r);
            r = NULL;
            rc = evlog_reader_open(log, s0, &r);
        } else {
            rc = n;
        }
        if (!rc && live && ops->pending(ops->ctx) &&
            timefmt_mono_ms() - ls.last_flush >= flush_interval_ms)
            rc = do_flush(&ls);
    }
    if (!rc && ops->pending(ops->ctx)) rc = do_flush(&ls);
    if (!rc) report(st, ops->cursor(ops->ctx), ls.from, ls.end);
    evlog_reader_close(r);
    return rc;
}

/* ---------------------------------------------------------------- pipelined catch-up */

/*
 * Catch-up runs (rebuilds, the raw store filling up) spend about a third of their time decoding
 * and deriving records. A reader thread does that into batches of deep-copied devents while
 * the caller's thread feeds the previous batch to the consumer: the two overlap on two cores.
 * Batches are handed over through a small bounded queue (PIPE_BATCHES), so memory stays
 * bounded; the order of events is unchanged, so results are identical to the plain loop.
 */
#define PIPE_EVENTS 2048
#define PIPE_BATCHES 4

struct pbatch {
    struct devent ev[PIPE_EVENTS];
    bool corrupt[PIPE_EVENTS];
    size_t n;
    char *arena;
    size_t alen, acap;
    struct devent_prop *props;
    size_t nprops, capprops;
    int err;  /* the reader's error, ending the stream */
    bool end; /* no more batches */
};

struct pipe {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pbatch *full[PIPE_BATCHES], *empty[PIPE_BATCHES];
    size_t nfull, nempty, head; /* full is a FIFO ring from head */
    bool stop;
    /* reader side */
    struct evlog *log;
    struct feeder *fd;
    uint64_t from, end;
};

static bool arena_copy(struct pbatch *b, struct devent_str *s)
{
    if (s->len == 0) {
        s->ptr = "";
        return true;
    }
    if (b->alen + s->len > b->acap) return false;
    memcpy(b->arena + b->alen, s->ptr, s->len);
    s->ptr = b->arena + b->alen; /* fixed up after the batch is complete (arena may move) */
    b->alen += s->len;
    return true;
}

static bool arena_reserve(struct pbatch *b, size_t need)
{
    if (b->alen + need <= b->acap) return true;
    size_t cap = b->acap ? b->acap : (1u << 20);
    while (cap < b->alen + need) cap *= 2;
    char *p = realloc(b->arena, cap);
    if (!p) return false;
    /* rebase every pointer already copied into the arena */
    for (size_t i = 0; i < b->n; i++) {
        struct devent *e = &b->ev[i];
        struct devent_str *all[DE_FIELD_COUNT + 2];
        for (int f = 0; f < DE_FIELD_COUNT; f++) all[f] = &e->str[f];
        all[DE_FIELD_COUNT] = &e->site;
        all[DE_FIELD_COUNT + 1] = &e->client_id;
        for (int f = 0; f < DE_FIELD_COUNT + 2; f++)
            if (all[f]->len) all[f]->ptr = p + (all[f]->ptr - b->arena);
    }
    for (size_t i = 0; i < b->nprops; i++) {
        if (b->props[i].key.len) b->props[i].key.ptr = p + (b->props[i].key.ptr - b->arena);
        if (b->props[i].value.len)
            b->props[i].value.ptr = p + (b->props[i].value.ptr - b->arena);
    }
    b->arena = p;
    b->acap = cap;
    return true;
}

/* Appends a deep copy of ev to the batch. false on allocation failure. */
static bool batch_add(struct pbatch *b, const struct devent *ev)
{
    size_t need = ev->site.len + ev->client_id.len;
    for (int f = 0; f < DE_FIELD_COUNT; f++) need += ev->str[f].len;
    for (uint32_t i = 0; i < ev->props_count; i++)
        need += ev->props[i].key.len + ev->props[i].value.len;
    if (!arena_reserve(b, need)) return false;
    if (b->nprops + ev->props_count > b->capprops) {
        size_t cap = b->capprops ? b->capprops * 2 : 1024;
        while (cap < b->nprops + ev->props_count) cap *= 2;
        struct devent_prop *p = realloc(b->props, cap * sizeof *p);
        if (!p) return false;
        /* props pointers of earlier events are fixed when the batch is handed over */
        b->props = p;
        b->capprops = cap;
    }
    struct devent *e = &b->ev[b->n];
    *e = *ev;
    for (int f = 0; f < DE_FIELD_COUNT; f++) arena_copy(b, &e->str[f]);
    arena_copy(b, &e->site);
    arena_copy(b, &e->client_id);
    for (uint32_t i = 0; i < ev->props_count; i++) {
        b->props[b->nprops + i] = ev->props[i];
        arena_copy(b, &b->props[b->nprops + i].key);
        arena_copy(b, &b->props[b->nprops + i].value);
    }
    e->props = (const struct devent_prop *)(uintptr_t)b->nprops; /* an index until handed over */
    b->nprops += ev->props_count;
    b->corrupt[b->n] = false;
    b->n++;
    return true;
}

static void batch_seal(struct pbatch *b)
{
    for (size_t i = 0; i < b->n; i++)
        if (!b->corrupt[i]) b->ev[i].props = b->props + (uintptr_t)b->ev[i].props;
}

static struct pbatch *pipe_take_empty(struct pipe *p)
{
    pthread_mutex_lock(&p->mu);
    while (!p->nempty && !p->stop) pthread_cond_wait(&p->cv, &p->mu);
    struct pbatch *b = p->stop ? NULL : p->empty[--p->nempty];
    pthread_mutex_unlock(&p->mu);
    return b;
}

static void pipe_put_full(struct pipe *p, struct pbatch *b)
{
    pthread_mutex_lock(&p->mu);
    p->full[(p->head + p->nfull) % PIPE_BATCHES] = b;
    p->nfull++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void *pipe_reader(void *arg)
{
    struct pipe *p = arg;
    pthread_setname_np(pthread_self(), "tally-readahead");
    struct evlog_reader *r = NULL;
    int rc = evlog_reader_open(p->log, p->from, &r);
    for (;;) {
        struct pbatch *b = pipe_take_empty(p);
        if (!b) break;
        b->n = b->alen = b->nprops = 0;
        b->err = 0;
        b->end = false;
        while (!rc && b->n < PIPE_EVENTS) {
            if (evlog_reader_position(r) >= p->end) {
                b->end = true;
                break;
            }
            struct seglog_record rec;
            int n = evlog_reader_next(r, &rec);
            if (n == TALLY_EAGAIN && evlog_reader_position(r) < p->end) {
                /* not fetched yet from a remote log: wait (see loop()) */
                if (evlog_wait(p->log, evlog_reader_position(r), WAIT_MS) == TALLY_ECLOSED) {
                    b->end = true;
                    break;
                }
                continue;
            }
            if (n == TALLY_EAGAIN || (n == 0 && rec.offset >= p->end)) {
                b->end = true;
                break;
            }
            if (n) {
                rc = n;
                break;
            }
            struct devent de;
            int d = feeder_derive(p->fd, rec.offset, rec.data, rec.len, &de);
            if (d == TALLY_ECORRUPT) {
                memset(&b->ev[b->n], 0, sizeof b->ev[b->n]);
                b->ev[b->n].offset = rec.offset;
                b->corrupt[b->n++] = true;
            } else if (d || !batch_add(b, &de)) {
                rc = d ? d : TALLY_ENOMEM;
            }
        }
        if (rc) {
            b->err = rc;
            b->end = true;
        }
        batch_seal(b);
        bool last = b->end;
        pipe_put_full(p, b);
        if (last) break;
    }
    evlog_reader_close(r);
    return NULL;
}

static void pbatch_free(struct pbatch *b)
{
    if (!b) return;
    free(b->arena);
    free(b->props);
    free(b);
}

/* As loop() without live mode, with decoding and deriving on a second thread. */
static int loop_pipelined(struct evlog *log, struct feeder *fd, const struct loop_ops *ops,
                          uint64_t end_offset, struct consumer_status *st, const char *name)
{
    uint64_t cursor = ops->cursor(ops->ctx);
    uint64_t start = evlog_start_offset(log);
    if (cursor < start) {
        diag_warn("%s consumer: offsets [%llu, %llu) were deleted from the log before they "
                  "were consumed", name, (unsigned long long)cursor, (unsigned long long)start);
        cursor = start;
    }
    uint64_t end = end_offset == UINT64_MAX ? evlog_committed_offset(log) : end_offset;
    report(st, ops->cursor(ops->ctx), cursor, end > cursor ? end : cursor);
    if (cursor >= end) return TALLY_OK;
    struct pipe *p = calloc(1, sizeof *p);
    if (!p) return TALLY_ENOMEM;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->log = log;
    p->fd = fd;
    p->from = cursor;
    p->end = end;
    int rc = TALLY_OK;
    for (int i = 0; i < PIPE_BATCHES; i++) {
        struct pbatch *b = calloc(1, sizeof *b);
        if (!b) rc = TALLY_ENOMEM;
        else p->empty[p->nempty++] = b;
    }
    pthread_t th;
    bool started = !rc && pthread_create(&th, NULL, pipe_reader, p) == 0;
    if (!rc && !started) rc = TALLY_ENOMEM;
    struct loop_state ls = {log, ops, st, -1, cursor, end, timefmt_mono_ms()};
    bool done = !started;
    while (!done && !rc) {
        pthread_mutex_lock(&p->mu);
        while (!p->nfull) pthread_cond_wait(&p->cv, &p->mu);
        struct pbatch *b = p->full[p->head];
        p->head = (p->head + 1) % PIPE_BATCHES;
        p->nfull--;
        pthread_mutex_unlock(&p->mu);
        for (size_t i = 0; i < b->n && !rc; i++) {
            if (b->corrupt[i]) ops->skip(ops->ctx, b->ev[i].offset);
            else rc = ops->add(ops->ctx, &b->ev[i]);
            if (st) atomic_fetch_add(&st->events, 1);
            if (!rc && ops->should_flush(ops->ctx)) rc = do_flush(&ls);
        }
        if (!rc) rc = b->err;
        done = b->end;
        if (st && atomic_load(&st->stop)) done = true;
        pthread_mutex_lock(&p->mu);
        p->empty[p->nempty++] = b;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        report(st, ops->cursor(ops->ctx), ls.from, ls.end);
    }
    if (started) {
        pthread_mutex_lock(&p->mu);
        p->stop = true;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(th, NULL);
    }
    for (size_t i = 0; i < p->nempty; i++) pbatch_free(p->empty[i]);
    for (size_t i = 0; i < p->nfull; i++) pbatch_free(p->full[(p->head + i) % PIPE_BATCHES]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
    if (!rc && ops->pending(ops->ctx)) rc = do_flush(&ls);
    return rc;
}

/* ---------------------------------------------------------------- rollup consumer */

/* The loop's context for the rollup engine: after each flush, the events the engine left out
 * (duplicates, exclusions) since the last flush are added to the status counters. */
struct eng_ctx {
    struct engine *e;
    struct consumer_status *st;
    uint64_t dup_seen, excl_seen;
};

static uint64_t eng_cursor(void *c)
{
    return engine_cursor(((struct eng_ctx *)c)->e);
}
static int eng_add(void *c, const struct devent *ev)
{
    return engine_add(((struct eng_ctx *)c)->e, ev);
}
static void eng_skip(void *c, uint64_t off)
{
    engine_skip(((struct eng_ctx *)c)->e, off);
}
static bool eng_should(void *c)
{
    return engine_should_flush(((struct eng_ctx *)c)->e);
}
static size_t eng_pending(void *c)
{
    return engine_pending(((struct eng_ctx *)c)->e);
}
static int eng_flush(void *c)
{
    struct eng_ctx *x = c;
    int rc = engine_flush(x->e);
    if (rc == 0 && x->st) {
        struct engine_stats es;
        engine_get_stats(x->e, &es);
        atomic_fetch_add(&x->st->duplicates, es.events_duplicate - x->dup_seen);
        atomic_fetch_add(&x->st->excluded, es.events_excluded - x->excl_seen);
        x->dup_seen = es.events_duplicate;
        x->excl_seen = es.events_excluded;
    }
    return rc;
}

int consumer_run_rollup(struct store *s, struct evlog *log, const struct rollup_config *cfg,
                        const struct engine_opts *eopt, uint64_t from_offset,
                        uint64_t end_offset, bool live, struct consumer_status *st,
                        struct engine_stats *stats_out)
{
    struct engine_opts o = *eopt;
    o.tz_of = engine_tz;
    o.tz_arg = (void *)cfg->cfg;
    int rc = TALLY_OK;
    for (;;) {
        struct engine *e = NULL;
        struct feeder *fd = feeder_new(cfg->cfg);
        o.start_offset = from_offset;
        rc = fd ? engine_open(s, &o, &e) : TALLY_ENOMEM;
        int cid = -1;
        if (!rc && live) cid = evlog_consumer_register(log, "rollup", engine_cursor(e));
        if (!rc) {
            struct eng_ctx ectx = {e, st, 0, 0};
            struct loop_ops ops = {&ectx,       eng_cursor,  eng_add,   eng_skip,
                                   eng_should,  eng_pending, eng_flush, NULL};
            rc = live ? loop(log, fd, &ops, end_offset, true, cfg->flush_interval_ms, st,
                             "rollup", cid)
                      : loop_pipelined(log, fd, &ops, end_offset, st, "rollup");
        }
        if (!rc && e) rc = engine_sync(e); /* flush_async: the last batch written */
        if (e && stats_out) engine_get_stats(e, stats_out);
        if (st) atomic_store(&st->err, rc);
        engine_close(e);
        feeder_free(fd);
        if (!rc || !live || (st && atomic_load(&st->stop))) break;
        diag_error("rollup consumer: %s; resuming from the stored cursor", tally_strerror(rc));
        sleep_ms(RETRY_DELAY_MS);
    }
    return rc;
}

/* ---------------------------------------------------------------- raw consumer */

static void raw_retention_run(struct store *s, const struct tally_config *cfg)
{
    if (!cfg) return;
    int64_t now = timefmt_now_ms();
    for (int i = 0; i < cfg->site_count; i++) {
        const struct config_site *cs = &cfg->sites[i];
        if (cs->retention_days <= 0) continue;
        uint32_t id;
        if (store_site_id(s, cs->name, strlen(cs->name), false, &id) != 0) continue;
        int rc = raw_retention(s, id, now - cs->retention_days * 86400000LL);
        if (rc) diag_warn("raw retention of %s: %s", cs->name, tally_strerror(rc));
    }
}

struct rawcons {
    struct store *s;
    char key_cursor[48], key_wm[48]; /* <prefix>cursor, <prefix>wm */
    const struct tally_config *cfg;
    int64_t next_retention_ms; /* monotonic; 0: retention off (catch-up runs) */
    int64_t next_compact_ms;   /* monotonic; 0: compaction off (catch-up runs) */
    struct consumer_status *st;
    uint32_t *compacted; /* per site id (STORE_SITES_MAX): the hour compacted through, 0: none */
    struct raw_writer *w;
    struct dedup *dd;
    struct store_batch *b;
    uint64_t cursor;
    int64_t wm;
    size_t pending, flush_max;
    size_t pending_bytes; /* the pending events' string and property bytes (an estimate) */
    struct strtab *site_names; /* site name -> index into site_ids */
    uint32_t *site_ids;
    size_t nsites, capsites;
};

static void rawcons_free(struct rawcons *c)
{
    if (!c) return;
    raw_writer_free(c->w);
    dedup_free(c->dd);
    store_batch_free(c->b);
    strtab_free(c->site_names);
    free(c->site_ids);
    free(c->compacted);
    free(c);
}

static int rawcons_open(struct store *s, const char *prefix, size_t flush_max,
                        struct rawcons **out)
{
    struct rawcons *c = calloc(1, sizeof *c);
    if (!c) return TALLY_ENOMEM;
    c->s = s;
    c->flush_max = flush_max;
    char dd[48];
    snprintf(c->key_cursor, sizeof c->key_cursor, "%scursor", prefix);
    snprintf(c->key_wm, sizeof c->key_wm, "%swm", prefix);
    snprintf(dd, sizeof dd, "%sdd", prefix);
    c->w = raw_writer_new(s);
    c->dd = dedup_new(dd, 0);
    c->b = store_batch_new(s);
    c->site_names = strtab_new();
    int rc = (!c->w || !c->dd || !c->b || !c->site_names) ? TALLY_ENOMEM : TALLY_OK;
    uint64_t v;
    if (!rc) {
        int r = store_meta_get_u64(s, c->key_cursor, &v);
        if (r == 0) c->cursor = v;
        else if (r != TALLY_ENOENT) rc = r;
    }
    if (!rc) {
        int r = store_meta_get_u64(s, c->key_wm, &v);
        if (r == 0) c->wm = (int64_t)v;
        else if (r != TALLY_ENOENT) rc = r;
    }
    if (!rc) rc = dedup_load(c->dd, s, c->wm);
    if (rc) {
        rawcons_free(c);
        return rc;
    }
    *out = c;
    return TALLY_OK;
}

static uint64_t raw_cursor(void *p)
{
    return ((struct rawcons *)p)->cursor;
}

static int raw_add(void *p, const struct devent *ev)
{
    struct rawcons *c = p;
    c->cursor = ev->offset + 1;
    c->pending++;
    for (int f = 0; f < DE_FIELD_COUNT; f++) c->pending_bytes += ev->str[f].len;
    for (uint32_t k = 0; k < ev->props_count; k++)
        c->pending_bytes += ev->props[k].key.len + ev->props[k].value.len;
    if (ev->received_ms > c->wm) c->wm = ev->received_ms;
    uint32_t site;
    int64_t i = strtab_find(c->site_names, 0, ev->site.ptr, ev->site.len);
    if (i >= 0) {
        site = c->site_ids[i];
    } else {
        int rc = store_site_id(c->s, ev->site.ptr, ev->site.len, true, &site);
        if (rc) return rc;
        if (c->nsites == c->capsites) {
            size_t cap = c->capsites ? c->capsites * 2 : 16;
            uint32_t *ids = realloc(c->site_ids, cap * sizeof *ids);
            if (!ids) return TALLY_ENOMEM;
            c->site_ids = ids;
            c->capsites = cap;
        }
        i = strtab_intern(c->site_names, 0, ev->site.ptr, ev->site.len, NULL);
        if (i < 0 || (size_t)i != c->nsites) return TALLY_ENOMEM;
        c->site_ids[c->nsites++] = site;
    }
    bool dup = engine_dedup_applies(ev) && dedup_check(c->dd, ev->site.ptr, ev->site.len,
                                                       ev->client_id.ptr, ev->client_id.len,
                                                       c->wm);
    return raw_writer_add(c->w, site, ev, dup ? RAW_F_DUPLICATE : 0);
}

struct compact_walk {
    struct rawcons *c;
    int64_t first, last; /* the hours to look at */
    int budget;          /* hours left for this tick */
};

static void compact_site(void *arg, uint32_t id, const char *name)
{
    struct compact_walk *cw = arg;
    struct rawcons *c = cw->c;
    if (id >= STORE_SITES_MAX) return;
    int64_t h = (int64_t)c->compacted[id] + 1;
    if (h < cw->first) h = cw->first;
    for (; h <= cw->last && h > 0 && cw->budget > 0; h++, cw->budget--) {
        struct raw_compact_stats st;
        int rc = raw_compact_hour(c->s, id, (uint32_t)h, &st);
        if (rc && rc != TALLY_ETOOBIG)
            diag_warn("raw compaction of %s, hour %lld: %s", name, (long long)h,
                      tally_strerror(rc));
        c->compacted[id] = (uint32_t)h;
        if (!rc && st.blocks_after < st.blocks_before && c->st) {
            atomic_fetch_add(&c->st->compacted_hours, 1);
            atomic_fetch_add(&c->st->compacted_blocks, st.blocks_before);
        }
    }
}

/* Compacts every site's closed hours not compacted yet, RAW_COMPACT_HOURS_PER_TICK at most. */
static void raw_compact_run(struct rawcons *c)
{
    const int64_t now_h = timefmt_now_ms() / RAW_HOUR_MS;
    struct compact_walk cw = {.c = c, .first = now_h - RAW_COMPACT_LOOKBACK_HOURS,
                              .last = now_h - RAW_COMPACT_GRACE_HOURS - 1, /* ended GRACE ago */
                              .budget = RAW_COMPACT_HOURS_PER_TICK};
    if (!c->compacted && !(c->compacted = calloc(STORE_SITES_MAX, sizeof *c->compacted))) {
        c->next_compact_ms = timefmt_mono_ms() + RAW_COMPACT_INTERVAL_MS;
        return;
    }
    store_sites_each(c->s, compact_site, &cw);
    /* more to do: again at the next tick */
    c->next_compact_ms = timefmt_mono_ms() + (cw.budget > 0 ? RAW_COMPACT_INTERVAL_MS : 0);
}

static void raw_tick(void *p)
{
    struct rawcons *c = p;
    if (c->next_compact_ms && timefmt_mono_ms() >= c->next_compact_ms) raw_compact_run(c);
    if (!c->next_retention_ms || timefmt_mono_ms() < c->next_retention_ms) return;
    raw_retention_run(c->s, c->cfg);
    c->next_retention_ms = timefmt_mono_ms() + RAW_RETENTION_INTERVAL_MS;
}

static void raw_skip(void *p, uint64_t off)
{
    struct rawcons *c = p;
    if (off >= c->cursor) c->cursor = off + 1;
    c->pending++;
}

static bool raw_should(void *p)
{
    struct rawcons *c = p;
    return c->pending >= c->flush_max || c->pending_bytes >= RAW_FLUSH_BYTES_MAX;
}

static size_t raw_pending(void *p)
{
    return ((struct rawcons *)p)->pending;
}

static int raw_flush(void *p)
{
    struct rawcons *c = p;
    store_batch_clear(c->b);
    int rc = raw_writer_flush(c->w, c->b);
    if (!rc) {
        dedup_flush(c->dd, c->b, c->wm);
        store_batch_put_u64(c->b, c->key_cursor, c->cursor);
        store_batch_put_u64(c->b, c->key_wm, (uint64_t)c->wm);
        rc = store_write(c->s, c->b);
    }
    store_batch_clear(c->b);
    if (rc) {
        raw_writer_abort(c->w);
        return rc;
    }
    raw_writer_commit(c->w);
    dedup_commit(c->dd);
    c->pending = 0;
    c->pending_bytes = 0;
    return TALLY_OK;
}

int consumer_run_raw(struct store *s, struct evlog *log, const char *prefix,
                     const struct rollup_config *cfg, uint64_t end_offset, bool live,
                     struct consumer_status *st)
{
    int rc;
    for (;;) {
        struct rawcons *c = NULL;
        struct feeder *fd = feeder_new(cfg->cfg);
        rc = fd ? rawcons_open(s, prefix, cfg->raw_flush_events_max, &c) : TALLY_ENOMEM;
        int cid = -1;
        if (!rc && live) {
            cid = evlog_consumer_register(log, "raw", c->cursor);
            c->cfg = cfg->cfg;
            c->next_retention_ms = timefmt_mono_ms(); /* at start, then hourly */
            c->next_compact_ms = timefmt_mono_ms(); /* at start, then each minute */
            c->st = st;
        }
        if (!rc) {
            struct loop_ops ops = {c,          raw_cursor,  raw_add,   raw_skip,
                                   raw_should, raw_pending, raw_flush, raw_tick};
            rc = live ? loop(log, fd, &ops, end_offset, true, cfg->flush_interval_ms, st, "raw",
                             cid)
                      : loop_pipelined(log, fd, &ops, end_offset, st, "raw");
        }
        if (st) atomic_store(&st->err, rc);
        rawcons_free(c);
        feeder_free(fd);
        if (!rc || !live || (st && atomic_load(&st->stop))) break;
        diag_error("raw consumer: %s; resuming from the stored cursor", tally_strerror(rc));
        sleep_ms(RETRY_DELAY_MS);
    }
    return rc;
}

/* ---------------------------------------------------------------- service */

void rollup_config_default(struct rollup_config *c)
{
    memset(c, 0, sizeof *c);
    engine_opts_default(&c->engine);
    c->flush_interval_ms = 1000;
    c->raw_flush_events_max = 100000;
}

#define CONSUMER_NICE 10 /* nice value of the consumer threads in the server */

struct part;

struct worker {
    pthread_t th;
    bool started;
    struct consumer_status st;
    struct part *part;
    bool raw;
};

/* One source the service consumes, with its two consumers. */
struct part {
    struct rollup_service *svc;
    struct evlog log;
    char raw_prefix[32], rollup_prefix[32]; /* "raw." / "raw.p3." and "rollup." / ... */
    struct worker raw, roll;
};

struct rollup_service {
    struct store *s;
    struct rollup_config cfg;
    size_t nparts;
    struct part *parts;
    _Atomic uint64_t duplicates; /* sum over the parts, refreshed by rollup_service_lag */
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct part *pt = w->part;
    struct rollup_service *svc = pt->svc;
    pthread_setname_np(pthread_self(), w->raw ? "tally-raw" : "tally-rollup");
    /* Consumers are background work: under a CPU shortage ingest (acknowledgements) goes
     * first and the consumers' lag grows, to be caught up when load drops. Linux applies a
     * nice value to the calling thread only. */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), CONSUMER_NICE) != 0)
        diag_debug("consumer: setpriority failed; running at normal priority");
    if (w->raw) {
        consumer_run_raw(svc->s, &pt->log, pt->raw_prefix, &svc->cfg, UINT64_MAX, true, &w->st);
    } else {
        struct engine_opts o = svc->cfg.engine;
        o.state_prefix = pt->rollup_prefix;
        o.only_site = NULL;
        o.range = false;
        o.known_empty = false;
        consumer_run_rollup(svc->s, &pt->log, &svc->cfg, &o, 0, UINT64_MAX, true, &w->st,
                            NULL);
    }
    return NULL;
}

/* Starts every worker thread (their stop flags cleared). 0 or TALLY_ENOMEM (then the
 * caller stops those that run). */
static int workers_start(struct rollup_service *svc)
{
    for (size_t p = 0; p < svc->nparts; p++) {
        struct worker *ws[2] = {&svc->parts[p].raw, &svc->parts[p].roll};
        for (int i = 0; i < 2; i++) {
            ws[i]->part = &svc->parts[p];
            ws[i]->raw = i == 0;
            atomic_store(&ws[i]->st.stop, false);
            if (pthread_create(&ws[i]->th, NULL, worker_main, ws[i]) != 0) return TALLY_ENOMEM;
            ws[i]->started = true;
        }
    }
    return TALLY_OK;
}

/* Stops and joins the worker threads (each flushes what it holds first). */
static void workers_stop(struct rollup_service *svc)
{
    for (size_t p = 0; p < svc->nparts; p++) {
        atomic_store(&svc->parts[p].raw.st.stop, true);
        atomic_store(&svc->parts[p].roll.st.stop, true);
    }
    for (size_t p = 0; p < svc->nparts; p++) {
        struct part *pt = &svc->parts[p];
        if (pt->raw.started) pthread_join(pt->raw.th, NULL);
        if (pt->roll.started) pthread_join(pt->roll.th, NULL);
        pt->raw.started = pt->roll.started = false;
    }
}

static bool workers_running(const struct rollup_service *svc)
{
    for (size_t p = 0; p < svc->nparts; p++)
        if (!svc->parts[p].raw.started || !svc->parts[p].roll.started) return false;
    return true;
}

void rollup_source_prefixes(const char *name, char raw[32], char roll[32])
{
    if (!name || !name[0]) {
        snprintf(raw, 32, "%s", RAW_STATE_PREFIX);
        snprintf(roll, 32, "%s", ROLLUP_STATE_PREFIX);
    } else {
        snprintf(raw, 32, "%s%s.", RAW_STATE_PREFIX, name);
        snprintf(roll, 32, "%s%s.", ROLLUP_STATE_PREFIX, name);
    }
}

int rollup_service_start(struct store *s, const struct rollup_source *src, size_t nsrc,
                         const struct rollup_config *cfg, struct rollup_service **out)
{
    if (nsrc == 0 || nsrc > ROLLUP_SOURCES_MAX) return TALLY_EINVAL;
    struct rollup_service *svc = calloc(1, sizeof *svc);
    if (!svc) return TALLY_ENOMEM;
    svc->parts = calloc(nsrc, sizeof *svc->parts);
    if (!svc->parts) {
        free(svc);
        return TALLY_ENOMEM;
    }
    svc->nparts = nsrc;
    svc->s = s;
    svc->cfg = *cfg;
    for (size_t i = 0; i < nsrc; i++) {
        svc->parts[i].svc = svc;
        svc->parts[i].log = src[i].log;
        rollup_source_prefixes(src[i].name, svc->parts[i].raw_prefix,
                               svc->parts[i].rollup_prefix);
    }
    if (svc->cfg.flush_interval_ms <= 0) svc->cfg.flush_interval_ms = 1000;
    if (!svc->cfg.raw_flush_events_max) svc->cfg.raw_flush_events_max = 100000;
    uint64_t marker;
    if (store_meta_get_u64(s, ROLLUP_STATE_PREFIX "rebuilding", &marker) == 0)
        diag_warn("a rebuild of the rollups was interrupted: run `tally --rebuild` again");
    if (workers_start(svc) != 0) {
        rollup_service_stop(svc);
        return TALLY_ENOMEM;
    }
    *out = svc;
    return TALLY_OK;
}

void rollup_service_stop(struct rollup_service *svc)
{
    if (!svc) return;
    workers_stop(svc);
    free(svc->parts);
    free(svc);
}

int rollup_service_reconfigure(struct rollup_service *svc, const struct tally_config *cfg)
{
    workers_stop(svc); /* each flushes what it holds, cursor included */
    svc->cfg.cfg = cfg;
    int rc = workers_start(svc);
    if (rc) workers_stop(svc); /* rollup_service_recover starts them again later */
    return rc;
}

int rollup_service_recover(struct rollup_service *svc)
{
    int failed = store_failed(svc->s);
    if (!failed && workers_running(svc)) return TALLY_OK;
    workers_stop(svc);
    if (failed) {
        int rc = store_reopen(svc->s);
        if (rc) return rc;
        diag_warn("store reopened after a write error (%s); consumers resume from their "
                  "stored cursors", tally_strerror(failed));
    }
    int rc = workers_start(svc);
    if (rc) workers_stop(svc);
    return rc;
}

void rollup_service_lag(struct rollup_service *svc, struct rollup_lag *out)
{
    memset(out, 0, sizeof *out);
    for (size_t p = 0; p < svc->nparts; p++) {
        struct part *pt = &svc->parts[p];
        uint64_t end = evlog_committed_offset(&pt->log);
        uint64_t rc = atomic_load(&pt->raw.st.cursor), oc = atomic_load(&pt->roll.st.cursor);
        out->log_end += end;
        out->raw_cursor += rc;
        out->rollup_cursor += oc;
        out->raw_lag += end > rc ? end - rc : 0;
        out->rollup_lag += end > oc ? end - oc : 0;
        out->raw_events += atomic_load(&pt->raw.st.events);
        out->rollup_events += atomic_load(&pt->roll.st.events);
        out->raw_flushes += atomic_load(&pt->raw.st.flushes);
        out->rollup_flushes += atomic_load(&pt->roll.st.flushes);
        out->raw_wakeups += atomic_load(&pt->raw.st.wakeups);
        out->rollup_wakeups += atomic_load(&pt->roll.st.wakeups);
        out->duplicates += atomic_load(&pt->roll.st.duplicates);
        out->excluded += atomic_load(&pt->roll.st.excluded);
        out->compacted_hours += atomic_load(&pt->raw.st.compacted_hours);
        out->compacted_blocks += atomic_load(&pt->raw.st.compacted_blocks);
        int re = atomic_load(&pt->raw.st.err), oe = atomic_load(&pt->roll.st.err);
        if (!out->raw_err) out->raw_err = re;
        if (!out->rollup_err) out->rollup_err = oe;
    }
    atomic_store(&svc->duplicates, out->duplicates);
}

const _Atomic uint64_t *rollup_service_duplicates(const struct rollup_service *svc)
{
    if (svc->nparts == 1) return &svc->parts[0].roll.st.duplicates;
    return &svc->duplicates; /* refreshed by rollup_service_lag (each /metrics scrape) */
}
