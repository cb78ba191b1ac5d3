/*
 * bench/query: latency of the Stats API query engine (query_parse_v2 + query_execute, in
 * process, no HTTP) on the data set of bench/rebuild, next to ClickHouse answering the same
 * questions over the same events. bench/query.sh drives it (data set, ClickHouse server, load);
 * this program has four modes:
 *
 *   query export-sessions STORE   TSV of every visit (sessions CF) on stdout
 *   query export-events STORE     TSV of every counted event on stdout
 *   query run STORE [CH_HTTP_PORT]
 *   query once STORE JSON [RUNS=5]  one v2 query document on Tally: answer, plan, p50/p99
 *
 * EXPORT. The events are what Tally counts: raw_scan of every site, minus excluded events (bot,
 * host not allowed, duplicate) and "engagement" events, strings through the site's dictionary.
 * Like Plausible's events table, each event row carries its VISIT's attributes (source,
 * referrer, channel, UTM, device, browser, OS, geo: the visit's first event's) and the visit's
 * session_id, found in the sessions CF by (visitor, last visit start <= event time); the
 * sessions table is the sessions CF itself (one row per visit, layout in rollup/engine.h),
 * the equivalent of Plausible's sessions table. So ClickHouse answers visits, bounce rate and
 * duration from sessions, and visit filters on events by the visit's attributes, as Plausible
 * does. Columns are listed in bench/clickhouse/schema.sql (same order).
 *
 * RUN. Opens STORE read-only with the server's cache sizes (server.c: 16 MiB block cache,
 * QUERY_CACHE_MB overrides; the raw blocks' own 256 MiB, raw_cache_bytes' default,
 * QUERY_RAW_CACHE_MB overrides, 0 = none; 32 MiB query cache of day breakdowns, store/memo.h,
 * QUERY_MEMO_MB overrides, 0 = off), then for each query of the table below, in order: Tally (one
 * warm-up run with the query cache emptied first, which gives the answer shown and tally_cold_ms,
 * then N timed runs of parse + execute + free (QUERY_LIVE=1: each after marking the range's last
 * day changed, as while today's events arrive),
 * plan Q_PLAN_AUTO unless QUERY_PLAN=rollup|scan|stream), then ClickHouse over HTTP on
 * 127.0.0.1:CH_HTTP_PORT with keep-alive (one warm-up, N timed round trips: from writing the
 * request to the end of the body), with the SQL's date bounds taken from the PARSED Tally
 * query, so both sides read the same ranges. ClickHouse's own durations come from
 * system.query_log (query_duration_ms, whole milliseconds). N: QUERY_REPS_DASHBOARD (50) or
 * QUERY_REPS_ADHOC (20), cut short once one side of one query took QUERY_SECONDS_MAX (20) s
 * and did at least RUNS_MIN runs (p99 of few runs is their maximum). QUERY_ROUNDS (1) repeats
 * the whole table; each figure printed is the median over rounds.
 * Output, one line per query and a summary:
 *   bench=query name=... class=dashboard|adhoc plan=rollup|scan tally_cold_ms=...
 *     tally_p50_ms=... tally_p99_ms=... ch_p50_ms=... ch_p99_ms=... ch_server_p50_ms=...
 *     ratio_p50=... ratio_p99=... ch_cpu_in_tally_ms=...
 *     (ch_cpu_in_tally_ms: the CPU ClickHouse used while Tally's timed runs of the query ran,
 *     from /proc/QUERY_CH_PID/stat, which bench/query.sh sets; "nan" without it)
 *   bench=query_summary events=... counted=... dashboard_p99_ms=... adhoc_p99_ms=...
 *     slowest_ratio=... totals_visitors_tally=... totals_visitors_ch=... agree=yes|no
 *     (events: QUERY_EVENTS, the generated count; counted: the rows ClickHouse holds)
 *     (slowest_ratio: the smallest ratio_p50, ClickHouse / Tally; > 1 means Tally is faster)
 * plus `query-check` lines: the first row of each answer from both sides (exact agreement is not
 * expected: ClickHouse counts visitors with uniq(), an estimate, as Plausible does).
 *
 * THE DATA SET (bench/rebuild.c): 2026-01-01 00:00 UTC + 30 days (sessions start until
 * 2026-01-31 00:00 UTC; the hour after holds their tails), main site example.com (80 % of the
 * events) in Europe/Berlin, pages /page/0../page/999, props key "plan" on a third of the
 * custom events.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ingest/timefmt.h"
#include "query/query.h"
#include "rollup/tz.h"
#include "store/codec.h"
#include "store/memo.h"
#include "store/raw.h"
#include "store/store.h"
#include "tally/error.h"

#define SITE "example.com"
#define SITE_TZ "Europe/Berlin"
/* "now" for relative ranges: 2026-02-01 01:00 UTC (02:00 in Berlin), after the data set's last
 * event. The dashboard's "30d" is then Jan 2..Jan 31 (the last 30 whole local days; the 31st
 * holds the data set's final hours) and its previous period Dec 3..Jan 1 (the first day). */
#define DATA_NOW_MS 1769907600000LL
#define VISIT_ATTRS 18
#define CH_RESPONSE_BYTES_MAX (64u << 20)
#define REPS_MAX 10000
#define ROUNDS_MAX 20
#define RUNS_MIN 5 /* timed runs per query and side, even beyond QUERY_SECONDS_MAX */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "query: %s: %s\n", what, rc ? tally_strerror(rc) : strerror(errno));
    exit(1);
}

/* ------------------------------------------------------------------ export */

/* Interned strings: the few distinct visit attributes, stored once. */
struct intern {
    char **slot;
    size_t cap, n;
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
    return h;
}

static const char *intern(struct intern *t, const char *s, size_t n)
{
    if (t->n * 2 >= t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        char **slot = calloc(cap, sizeof *slot);
        if (!slot) die("intern", TALLY_ENOMEM);
        for (size_t i = 0; i < t->cap; i++) {
            if (!t->slot[i]) continue;
            size_t j = hash_bytes(t->slot[i], strlen(t->slot[i])) & (cap - 1);
            while (slot[j]) j = (j + 1) & (cap - 1);
            slot[j] = t->slot[i];
        }
        free(t->slot);
        t->slot = slot;
        t->cap = cap;
    }
    size_t j = hash_bytes(s, n) & (t->cap - 1);
    for (; t->slot[j]; j = (j + 1) & (t->cap - 1))
        if (strlen(t->slot[j]) == n && memcmp(t->slot[j], s, n) == 0) return t->slot[j];
    t->slot[j] = strndup(s, n);
    if (!t->slot[j]) die("intern", TALLY_ENOMEM);
    t->n++;
    return t->slot[j];
}

static void intern_free(struct intern *t)
{
    for (size_t i = 0; i < t->cap; i++) free(t->slot[i]);
    free(t->slot);
    memset(t, 0, sizeof *t);
}

struct visit {
    uint64_t visitor, id;
    int64_t start_ms, end_ms;
    uint32_t pageviews, events, interactive; /* interactive events besides pageviews */
    const char *a[VISIT_ATTRS]; /* engine.h order: entry, exit, source, referrer, channel,
                                   utm x5, device, browser, browser version, os, os version,
                                   country, region, city */
};

struct site_data {
    uint32_t id;
    char name[STORE_SITE_NAME_BYTES_MAX + 1];
    struct visit *v; /* in key order: (visitor, start) */
    size_t nv, capv;
    char **dict; /* id -> string */
    size_t ndict;
    struct intern strs;
};

static int dict_cb(void *arg, uint32_t id, const char *str, uint32_t len)
{
    struct site_data *d = arg;
    if (id >= d->ndict) {
        size_t n = d->ndict ? d->ndict : 1024;
        while (n <= id) n *= 2;
        char **p = realloc(d->dict, n * sizeof *p);
        if (!p) die("dict", TALLY_ENOMEM);
        memset(p + d->ndict, 0, (n - d->ndict) * sizeof *p);
        d->dict = p;
        d->ndict = n;
    }
    d->dict[id] = strndup(str, len);
    return d->dict[id] ? 0 : 1;
}

static const char *dict_str(const struct site_data *d, uint32_t id)
{
    if (id == 0) return "";
    return id < d->ndict && d->dict[id] ? d->dict[id] : "";
}

static uint64_t next_session_id = 1;

/* Loads the site's visits from the sessions CF (value version 2, rollup/engine.h). */
static void load_visits(struct store *s, struct site_data *d)
{
    uint8_t lo[4], hi[4];
    store_put_be32(lo, d->id);
    store_put_be32(hi, d->id + 1);
    struct store_iter *it = store_iter_new(s, STORE_CF_SESSIONS, lo, 4, hi, 4);
    if (!it) die("sessions iterator", TALLY_ENOMEM);
    for (store_iter_seek_first(it); store_iter_valid(it); store_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = store_iter_key(it, &kl);
        const uint8_t *val = store_iter_value(it, &vl);
        if (kl != 28) die("sessions key", TALLY_ECORRUPT);
        if (d->nv == d->capv) {
            d->capv = d->capv ? d->capv * 2 : 65536;
            d->v = realloc(d->v, d->capv * sizeof *d->v);
            if (!d->v) die("visits", TALLY_ENOMEM);
        }
        struct visit *v = &d->v[d->nv];
        v->visitor = store_get_be64(k + 4);
        v->start_ms = (int64_t)store_get_be64(k + 12);
        struct creader r;
        creader_init(&r, val, vl);
        if (creader_u8(&r) != 2) die("sessions value version", TALLY_ECORRUPT);
        v->end_ms = v->start_ms + creader_svarint(&r);
        (void)creader_svarint(&r); /* last - first offset */
        v->pageviews = (uint32_t)creader_varint(&r);
        v->events = (uint32_t)creader_varint(&r);
        v->interactive = (uint32_t)creader_varint(&r);
        for (int i = 0; i < VISIT_ATTRS; i++) {
            uint32_t n;
            const char *str = creader_str(&r, &n);
            v->a[i] = intern(&d->strs, str, n);
        }
        if (r.err) die("sessions value", TALLY_ECORRUPT);
        v->id = next_session_id++;
        d->nv++;
    }
    int rc = store_iter_status(it);
    store_iter_free(it);
    if (rc) die("sessions scan", rc);
}

/* The visit holding an event of visitor at ts: the last visit of that visitor starting at or
 * before ts (visits of one visitor never overlap). */
static const struct visit *visit_of(const struct site_data *d, uint64_t visitor, int64_t ts)
{
    size_t lo = 0, hi = d->nv; /* first index with (visitor, start) > (visitor, ts) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct visit *v = &d->v[mid];
        if (v->visitor < visitor || (v->visitor == visitor && v->start_ms <= ts)) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0 || d->v[lo - 1].visitor != visitor) return NULL;
    return &d->v[lo - 1];
}

static void site_data_free(struct site_data *d)
{
    for (size_t i = 0; i < d->ndict; i++) free(d->dict[i]);
    free(d->dict);
    free(d->v);
    intern_free(&d->strs);
    memset(d, 0, sizeof *d);
}

/* TSV (ClickHouse TabSeparated) string escaping. */
static void tsv_str(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '\t': fputs("\\t", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\\': fputs("\\\\", f); break;
        default: fputc(*s, f);
        }
    }
}

/* An element of an Array(String) in TSV: a quoted string. */
static void tsv_quoted(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'' || *s == '\\') fputc('\\', f);
        if (*s == '\t') fputs("\\t", f);
        else if (*s == '\n') fputs("\\n", f);
        else fputc(*s, f);
    }
    fputc('\'', f);
}

static void tsv_time(FILE *f, int64_t ms)
{
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char buf[32];
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    fputs(buf, f);
}

struct export_ctx {
    struct site_data *d;
    FILE *out;
    uint32_t engagement_id; /* 0: the site never stored "engagement" */
    uint64_t rows, unmatched, skipped;
};

static int export_event(void *arg, const struct raw_event *ev)
{
    struct export_ctx *x = arg;
    const struct site_data *d = x->d;
    if ((ev->flags & RAW_F_EXCLUDED) ||
        (x->engagement_id && ev->id[DE_NAME] == x->engagement_id)) {
        x->skipped++;
        return 0;
    }
    const struct visit *v = visit_of(d, ev->visitor, ev->ts_ms);
    if (!v) x->unmatched++;
    FILE *f = x->out;
    fprintf(f, "%u\t%llu\t%llu\t", d->id, (unsigned long long)(v ? v->id : 0),
            (unsigned long long)ev->visitor);
    tsv_time(f, ev->ts_ms);
    static const enum devent_field own[] = {DE_NAME, DE_PATH, DE_HOSTNAME};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        fputc('\t', f);
        tsv_str(f, dict_str(d, ev->id[own[i]]));
    }
    /* the visit's attributes: referrer, source, channel, utm x5, device .. city */
    static const int visit_attr[] = {3, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};
    static const enum devent_field ev_attr[] = {
        DE_REFERRER,   DE_SOURCE,      DE_CHANNEL, DE_UTM_SOURCE,   DE_UTM_MEDIUM,
        DE_UTM_CAMPAIGN, DE_UTM_CONTENT, DE_UTM_TERM, DE_DEVICE,    DE_BROWSER,
        DE_BROWSER_VERSION, DE_OS,     DE_OS_VERSION, DE_COUNTRY,   DE_REGION,
        DE_CITY};
    for (size_t i = 0; i < sizeof visit_attr / sizeof visit_attr[0]; i++) {
        fputc('\t', f);
        tsv_str(f, v ? v->a[visit_attr[i]] : dict_str(d, ev->id[ev_attr[i]]));
    }
    fputs("\t[", f);
    for (uint32_t i = 0; i < ev->props_count; i++) {
        if (i) fputc(',', f);
        tsv_quoted(f, dict_str(d, ev->props[i].key));
    }
    fputs("]\t[", f);
    for (uint32_t i = 0; i < ev->props_count; i++) {
        if (i) fputc(',', f);
        tsv_quoted(f, dict_str(d, ev->props[i].value));
    }
    fprintf(f, "]\t%lld\t", (long long)(ev->has_revenue ? ev->revenue_micros : 0));
    tsv_str(f, ev->has_revenue ? dict_str(d, ev->currency_id) : "");
    fputc('\n', f);
    x->rows++;
    return 0;
}

static void export_sessions(const struct site_data *d, FILE *f)
{
    for (size_t i = 0; i < d->nv; i++) {
        const struct visit *v = &d->v[i];
        fprintf(f, "%u\t%llu\t%llu\t", d->id, (unsigned long long)v->id,
                (unsigned long long)v->visitor);
        tsv_time(f, v->start_ms);
        fputc('\t', f);
        tsv_time(f, v->end_ms);
        bool bounce = v->pageviews == 1 && v->interactive == 0;
        fprintf(f, "\t%lld\t%u\t%u\t%d", (long long)(v->end_ms - v->start_ms), v->pageviews,
                v->events, bounce ? 1 : 0);
        for (int k = 0; k < VISIT_ATTRS; k++) {
            fputc('\t', f);
            tsv_str(f, v->a[k]);
        }
        fputc('\n', f);
    }
}

struct site_list {
    uint32_t id[64];
    char name[64][STORE_SITE_NAME_BYTES_MAX + 1];
    size_t n;
};

static void site_list_cb(void *arg, uint32_t id, const char *name)
{
    struct site_list *l = arg;
    if (l->n == 64) return;
    l->id[l->n] = id;
    snprintf(l->name[l->n], sizeof l->name[l->n], "%s", name);
    l->n++;
}

/* The query cache (store/memo.h): QUERY_MEMO_MB, default the server's 32 MiB; 0 = off. */
static size_t memo_bytes(void)
{
    const char *mb = getenv("QUERY_MEMO_MB");
    return (size_t)(mb ? atoi(mb) : 32) << 20;
}

/* Empties the query cache: the next run of a query computes its answer. */
static void memo_forget(struct store *s)
{
    memo_set_bytes_max(store_memo(s), 0);
    memo_set_bytes_max(store_memo(s), memo_bytes());
}

static struct store *open_store(const char *dir)
{
    struct store_options o;
    store_options_default(&o);
    o.dir = dir;
    o.read_only = true;
    const char *mb = getenv("QUERY_CACHE_MB");
    o.block_cache_bytes = (size_t)(mb ? atoi(mb) : 16) << 20; /* the server's (server.c) */
    const char *rmb = getenv("QUERY_RAW_CACHE_MB"); /* raw_cache_bytes' default (config.c) */
    o.raw_cache_bytes = (size_t)(rmb ? atoi(rmb) : 256) << 20;
    o.memo_bytes_max = memo_bytes();
    o.write_buffer_bytes = 8u << 20;
    struct store *s = NULL;
    int rc = store_open(&o, &s);
    if (rc) die(dir, rc);
    return s;
}

static int cmd_export(const char *dir, bool events)
{
    struct store *s = open_store(dir);
    struct site_list sites = {0};
    store_sites_each(s, site_list_cb, &sites);
    static char obuf[1 << 20];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    uint64_t rows = 0, unmatched = 0, skipped = 0;
    for (size_t i = 0; i < sites.n; i++) {
        struct site_data d = {.id = sites.id[i]};
        snprintf(d.name, sizeof d.name, "%s", sites.name[i]);
        load_visits(s, &d);
        if (!events) {
            export_sessions(&d, stdout);
            rows += d.nv;
            site_data_free(&d);
            continue;
        }
        int rc = raw_dict_each(s, d.id, dict_cb, &d);
        if (rc) die("dictionary", rc);
        struct export_ctx x = {.d = &d, .out = stdout};
        if (raw_dict_find(s, d.id, "engagement", 10, &x.engagement_id) != 0)
            x.engagement_id = 0;
        rc = raw_scan(s, d.id, INT64_MIN / 2, INT64_MAX / 2, export_event, &x);
        if (rc) die("raw scan", rc);
        rows += x.rows;
        unmatched += x.unmatched;
        skipped += x.skipped;
        site_data_free(&d);
    }
    if (fflush(stdout) != 0) die("stdout", 0);
    fprintf(stderr, "query: exported %s rows=%llu skipped=%llu without_visit=%llu sites=%zu\n",
            events ? "events" : "sessions", (unsigned long long)rows,
            (unsigned long long)skipped, (unsigned long long)unmatched, sites.n);
    store_close(s);
    tz_shutdown();
    return unmatched ? 1 : 0;
}

/* ------------------------------------------------------------------ ClickHouse over HTTP */

struct ch {
    int port, fd;
    char *buf;
    size_t cap;
};

static void ch_close(struct ch *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

static int ch_connect(struct ch *c)
{
    ch_close(c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        ch_close(c);
        return -1;
    }
    return 0;
}

/* Reads at least one more byte into c->buf at *len. */
static int ch_fill(struct ch *c, size_t *len)
{
    if (*len + 65536 > c->cap) {
        if (c->cap >= CH_RESPONSE_BYTES_MAX) return -1;
        c->cap = c->cap ? c->cap * 2 : 1 << 20;
        c->buf = realloc(c->buf, c->cap + 1);
        if (!c->buf) die("response buffer", TALLY_ENOMEM);
    }
    ssize_t n;
    do n = read(c->fd, c->buf + *len, c->cap - *len);
    while (n < 0 && errno == EINTR);
    if (n <= 0) return -1;
    *len += (size_t)n;
    return 0;
}

/* One POST of sql; the body (NUL-terminated, into c->buf, valid until the next call) in
 * *body and *blen. Returns the HTTP status, or -1 when the connection failed. */
static int ch_post_once(struct ch *c, const char *sql, char **body, size_t *blen)
{
    if (c->fd < 0 && ch_connect(c) != 0) return -1;
    char head[256];
    size_t sl = strlen(sql);
    int hl = snprintf(head, sizeof head,
                      "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %zu\r\n"
                      "Connection: keep-alive\r\n\r\n", sl);
    struct iovec_like {
        const char *p;
        size_t n;
    } parts[2] = {{head, (size_t)hl}, {sql, sl}};
    for (int i = 0; i < 2; i++) {
        size_t off = 0;
        while (off < parts[i].n) {
            ssize_t n = write(c->fd, parts[i].p + off, parts[i].n - off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return -1;
            off += (size_t)n;
        }
    }
    size_t len = 0;
    char *eoh;
    for (;;) {
        if (ch_fill(c, &len) != 0) return -1;
        c->buf[len] = 0;
        if ((eoh = strstr(c->buf, "\r\n\r\n"))) break;
    }
    int status = atoi(c->buf + 9);
    size_t hdr = (size_t)(eoh - c->buf) + 4;
    bool chunked = false, closing = false;
    long long clen = -1;
    for (char *l = strstr(c->buf, "\r\n") + 2; l < eoh; l = strstr(l, "\r\n") + 2) {
        if (strncasecmp(l, "Content-Length:", 15) == 0) clen = atoll(l + 15);
        else if (strncasecmp(l, "Transfer-Encoding:", 18) == 0 && strstr(l, "chunked") &&
                 strstr(l, "chunked") < strstr(l, "\r\n"))
            chunked = true;
        else if (strncasecmp(l, "Connection:", 11) == 0 && strstr(l, "close") &&
                 strstr(l, "close") < strstr(l, "\r\n"))
            closing = true;
    }
    if (chunked) {
        /* decode in place: chunks are moved down to hdr */
        size_t out = hdr, pos = hdr;
        for (;;) {
            char *crlf;
            while (!(crlf = memmem(c->buf + pos, len - pos, "\r\n", 2)))
                if (ch_fill(c, &len) != 0) return -1;
            size_t n = strtoull(c->buf + pos, NULL, 16);
            size_t data = (size_t)(crlf - c->buf) + 2;
            while (len < data + n + 2)
                if (ch_fill(c, &len) != 0) return -1;
            memmove(c->buf + out, c->buf + data, n);
            out += n;
            pos = data + n + 2;
            if (n == 0) break; /* (no trailers from ClickHouse) */
        }
        *blen = out - hdr;
    } else if (clen >= 0) {
        while (len < hdr + (size_t)clen)
            if (ch_fill(c, &len) != 0) return -1;
        *blen = (size_t)clen;
    } else {
        while (ch_fill(c, &len) == 0) {
        }
        *blen = len - hdr;
        closing = true;
    }
    *body = c->buf + hdr;
    (*body)[*blen] = 0;
    if (closing) ch_close(c);
    return status;
}

/* POST with one retry on a fresh connection (keep-alive timeouts). Exits on an HTTP error. */
static char *ch_query(struct ch *c, const char *sql, size_t *blen)
{
    char *body = NULL;
    int st = ch_post_once(c, sql, &body, blen);
    if (st < 0) {
        ch_close(c);
        st = ch_post_once(c, sql, &body, blen);
    }
    if (st != 200) {
        fprintf(stderr, "query: ClickHouse answered %d to:\n%s\n%s\n", st, sql,
                st > 0 && body ? body : "(no answer)");
        exit(1);
    }
    return body;
}

/* ------------------------------------------------------------------ the queries */

enum qclass { DASHBOARD, ADHOC };

struct qdef {
    const char *name;
    enum qclass cls;
    const char *json; /* Tally v2 query */
    /* ClickHouse SQL; $F $T: the range's bounds as DateTime expressions, $CF $CT: the
     * comparison range's, $S: the site, $Z: its zone */
    const char *sql;
};

#define DASH_RANGE "\"date_range\":\"30d\""
#define ALL_RANGE "\"date_range\":[\"2026-01-01\",\"2026-01-31\"]"
#define EV_WHERE "site_id = $S AND timestamp >= $F AND timestamp < $T"
#define SE_WHERE "site_id = $S AND start >= $F AND start < $T"

static const struct qdef queries[] = {
    {"totals", DASHBOARD,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\",\"visits\",\"pageviews\","
     "\"bounce_rate\",\"visit_duration\"]," DASH_RANGE ","
     "\"include\":{\"comparisons\":{\"mode\":\"previous_period\"}}}",
     "SELECT v, visits, pv, round(100 * bounces / visits), round(dur_ms / 1000 / visits), "
     "c_v, c_visits, c_pv FROM "
     "(SELECT 1 AS k, uniqIf(visitor, timestamp >= $F) AS v, "
     "countIf(name = 'pageview' AND timestamp >= $F) AS pv, "
     "uniqIf(visitor, timestamp < $CT) AS c_v, "
     "countIf(name = 'pageview' AND timestamp < $CT) AS c_pv FROM events "
     "WHERE site_id = $S AND ((timestamp >= $F AND timestamp < $T) OR "
     "(timestamp >= $CF AND timestamp < $CT))) "
     "ANY INNER JOIN "
     "(SELECT 1 AS k, countIf(start >= $F) AS visits, sumIf(is_bounce, start >= $F) AS bounces, "
     "sumIf(duration_ms, start >= $F) AS dur_ms, countIf(start < $CT) AS c_visits FROM sessions "
     "WHERE site_id = $S AND ((start >= $F AND start < $T) OR (start >= $CF AND start < $CT))) "
     "USING k"},
    {"timeseries", DASHBOARD,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\",\"pageviews\"]," DASH_RANGE ","
     "\"dimensions\":[\"time:day\"]}",
     "SELECT toDate(timestamp, $Z) AS d, uniq(visitor), countIf(name = 'pageview') "
     "FROM events WHERE " EV_WHERE " GROUP BY d ORDER BY d"},
    {"top_pages", DASHBOARD,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\",\"pageviews\"]," DASH_RANGE ","
     "\"dimensions\":[\"event:page\"],\"order_by\":[[\"visitors\",\"desc\"]],"
     "\"pagination\":{\"limit\":10}}",
     "SELECT pathname, uniq(visitor) AS u, countIf(name = 'pageview') FROM events "
     "WHERE " EV_WHERE " GROUP BY pathname ORDER BY u DESC LIMIT 10"},
    {"top_sources", DASHBOARD,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\"]," DASH_RANGE ","
     "\"dimensions\":[\"visit:source\"],\"order_by\":[[\"visitors\",\"desc\"]],"
     "\"pagination\":{\"limit\":10}}",
     "SELECT source, uniq(visitor) AS u FROM sessions WHERE " SE_WHERE
     " GROUP BY source ORDER BY u DESC LIMIT 10"},
    {"top_countries", DASHBOARD,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\"]," DASH_RANGE ","
     "\"dimensions\":[\"visit:country\"],\"order_by\":[[\"visitors\",\"desc\"]],"
     "\"pagination\":{\"limit\":10}}",
     "SELECT country, uniq(visitor) AS u FROM sessions WHERE " SE_WHERE
     " GROUP BY country ORDER BY u DESC LIMIT 10"},
    {"top_devices", DASHBOARD,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\"]," DASH_RANGE ","
     "\"dimensions\":[\"visit:device\"],\"order_by\":[[\"visitors\",\"desc\"]],"
     "\"pagination\":{\"limit\":10}}",
     "SELECT device, uniq(visitor) AS u FROM sessions WHERE " SE_WHERE
     " GROUP BY device ORDER BY u DESC LIMIT 10"},
    /* realtime: the data set lies in the past, so "the last 5 minutes" is an explicit window at
     * the end of its full traffic: 2026-01-30 23:55-24:00 UTC (sessions start until 24:00) */
    {"realtime", DASHBOARD,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\"],"
     "\"date_range\":[\"2026-01-30T23:55:00Z\",\"2026-01-31T00:00:00Z\"]}",
     "SELECT uniq(visitor) FROM events WHERE " EV_WHERE},
    {"filter2_breakdown", ADHOC,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\",\"pageviews\"]," ALL_RANGE ","
     "\"dimensions\":[\"event:page\"],\"filters\":[[\"is\",\"visit:country\",[\"DE\"]],"
     "[\"is\",\"visit:device\",[\"Desktop\"]]],\"order_by\":[[\"visitors\",\"desc\"]],"
     "\"pagination\":{\"limit\":10}}",
     "SELECT pathname, uniq(visitor) AS u, countIf(name = 'pageview') FROM events "
     "WHERE " EV_WHERE " AND country = 'DE' AND device = 'Desktop' "
     "GROUP BY pathname ORDER BY u DESC LIMIT 10"},
    {"regex_filter", ADHOC,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\",\"visits\",\"pageviews\"]," ALL_RANGE
     ",\"filters\":[[\"matches\",\"event:page\",[\"^/page/1[0-9]*$\"]]]}",
     "SELECT uniq(visitor), uniq(session_id), countIf(name = 'pageview') FROM events "
     "WHERE " EV_WHERE " AND match(pathname, '^/page/1[0-9]*$')"},
    {"props_breakdown", ADHOC,
     "{\"site_id\":\"" SITE "\",\"metrics\":[\"visitors\",\"events\"]," ALL_RANGE ","
     "\"dimensions\":[\"event:props:plan\"],\"order_by\":[[\"visitors\",\"desc\"]],"
     "\"pagination\":{\"limit\":10}}",
     "SELECT if(has(prop_keys, 'plan'), prop_values[indexOf(prop_keys, 'plan')], '(none)') "
     "AS p, uniq(visitor) AS u, count() FROM events WHERE " EV_WHERE
     " GROUP BY p ORDER BY u DESC LIMIT 10"},
};
#define NQUERIES (sizeof queries / sizeof queries[0])

static bool site_cb(void *arg, const char *site, struct query *q)
{
    (void)arg;
    if (strcmp(site, SITE) != 0) return false;
    if (tz_get(SITE_TZ, &q->zone) != 0) return false;
    memcpy(q->currency, "EUR", 4);
    q->ngoals = 0;
    q->goals = NULL;
    return true;
}

/* The SQL of d for the parsed query q (its ranges), tagged with a comment for the query log. */
static char *make_sql(const struct qdef *d, const struct query *q, uint32_t site_id,
                      const char *tag)
{
    size_t cap = strlen(d->sql) * 2 + 512, n = 0;
    char *out = malloc(cap);
    if (!out) die("sql", TALLY_ENOMEM);
    n += (size_t)snprintf(out, cap, "/* %s */ ", tag);
    for (const char *p = d->sql; *p;) {
        char rep[96];
        size_t skip = 0;
        if (strncmp(p, "$CF", 3) == 0) {
            snprintf(rep, sizeof rep, "toDateTime(%lld)", (long long)(q->cmp_range.from_ms / 1000));
            skip = 3;
        } else if (strncmp(p, "$CT", 3) == 0) {
            snprintf(rep, sizeof rep, "toDateTime(%lld)", (long long)(q->cmp_range.to_ms / 1000));
            skip = 3;
        } else if (strncmp(p, "$F", 2) == 0) {
            snprintf(rep, sizeof rep, "toDateTime(%lld)", (long long)(q->range.from_ms / 1000));
            skip = 2;
        } else if (strncmp(p, "$T", 2) == 0) {
            snprintf(rep, sizeof rep, "toDateTime(%lld)", (long long)(q->range.to_ms / 1000));
            skip = 2;
        } else if (strncmp(p, "$S", 2) == 0) {
            snprintf(rep, sizeof rep, "%u", site_id);
            skip = 2;
        } else if (strncmp(p, "$Z", 2) == 0) {
            snprintf(rep, sizeof rep, "'%s'", SITE_TZ);
            skip = 2;
        }
        if (skip) {
            size_t rl = strlen(rep);
            memcpy(out + n, rep, rl);
            n += rl;
            p += skip;
        } else {
            out[n++] = *p++;
        }
        if (n + 128 > cap) die("sql too long", TALLY_ENOMEM);
    }
    out[n] = 0;
    return out;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile (p in (0, 1]) of n values (sorted in place). */
static double pct(double *v, size_t n, double p)
{
    if (!n) return NAN;
    qsort(v, n, sizeof *v, cmp_double);
    size_t k = (size_t)ceil(p * (double)n);
    return v[k ? k - 1 : 0];
}

static double median(double *v, size_t n)
{
    if (!n) return NAN;
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct qres {
    double t50[ROUNDS_MAX], t99[ROUNDS_MAX], c50[ROUNDS_MAX], c99[ROUNDS_MAX];
    double s50[ROUNDS_MAX], s99[ROUNDS_MAX];
    double cold[ROUNDS_MAX]; /* the warm-up run: query cache emptied before it */
    double ch_busy[ROUNDS_MAX]; /* ClickHouse's CPU ms while Tally's timed runs ran */
    int tally_runs, ch_runs; /* timed runs done (last round) */
    char plan[16];
    char *tally_first, *ch_first; /* first answer rows, last round */
};

static int env_int_str(const char *v)
{
    int n = atoi(v);
    return n < 1 ? 1 : n > REPS_MAX ? REPS_MAX : n;
}

static enum q_plan plan_from_env(void)
{
    const char *p = getenv("QUERY_PLAN");
    if (!p || !*p || strcmp(p, "auto") == 0) return Q_PLAN_AUTO;
    if (strcmp(p, "rollup") == 0) return Q_PLAN_ROLLUP;
    if (strcmp(p, "scan") == 0) return Q_PLAN_SCAN;
    if (strcmp(p, "stream") == 0) return Q_PLAN_STREAM;
    fprintf(stderr, "query: QUERY_PLAN is auto, rollup or scan\n");
    exit(2);
}

static int env_int(const char *name, int def, int lo, int hi)
{
    const char *v = getenv(name);
    int n = v && *v ? atoi(v) : def;
    return n < lo ? lo : n > hi ? hi : n;
}

/* One Tally execution: parse, execute, free; the JSON when keep is set (caller frees). */
static void tally_once(struct store *s, uint32_t site_id, const struct qdef *d, enum q_plan plan,
                       char **keep)
{
    char err[512];
    struct query *q = NULL;
    int rc = query_parse_v2(d->json, strlen(d->json), DATA_NOW_MS, site_cb, NULL, &q, err,
                            sizeof err);
    if (rc) {
        fprintf(stderr, "query: %s: parse: %s (%s)\n", d->name, tally_strerror(rc), err);
        exit(1);
    }
    struct q_budget b = {.deadline_ms = timefmt_mono_ms() + 60000,
                         .memory_bytes_max = (size_t)2 << 30,
                         .rows_max = 1000000};
    char *json = NULL;
    size_t len = 0;
    rc = query_execute(s, site_id, q, &b, plan, &json, &len, err, sizeof err);
    if (rc) {
        fprintf(stderr, "query: %s: execute: %s (%s)\n", d->name, tally_strerror(rc), err);
        exit(1);
    }
    query_free(q);
    if (keep) *keep = json;
    else free(json);
}

/* The plan and the first result row of a Tally answer. */
static void tally_summary(const char *json, char *plan, size_t cap, char **first)
{
    cJSON *root = cJSON_Parse(json);
    const cJSON *meta = cJSON_GetObjectItem(root, "meta");
    const cJSON *p = cJSON_GetObjectItem(meta, "plan");
    snprintf(plan, cap, "%s", cJSON_IsString(p) ? p->valuestring : "unknown");
    const cJSON *res = cJSON_GetObjectItem(root, "results");
    const cJSON *row = cJSON_GetArrayItem(res, 0);
    *first = row ? cJSON_PrintUnformatted(row) : strdup("(no rows)");
    cJSON_Delete(root);
}

/* First TSV line of a ClickHouse answer, tabs shown as spaces. */
static char *ch_first_line(const char *body)
{
    size_t n = strcspn(body, "\n");
    char *s = strndup(body, n);
    for (char *p = s; p && *p; p++)
        if (*p == '\t') *p = ' ';
    return s ? s : strdup("");
}

/* ClickHouse's own durations of the queries tagged tag (system.query_log). */
static void ch_server_times(struct ch *c, const char *tag, double *p50, double *p99)
{
    *p50 = *p99 = NAN;
    size_t blen;
    ch_query(c, "SYSTEM FLUSH LOGS", &blen);
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT quantileExact(0.5)(query_duration_ms), quantileExact(0.99)"
             "(query_duration_ms) FROM system.query_log WHERE type = 2 AND "
             "query LIKE '/* %s */%%'", tag);
    char *body = ch_query(c, sql, &blen);
    if (sscanf(body, "%lf\t%lf", p50, p99) != 2) *p50 = *p99 = NAN;
}

static void fmt_ms(char *buf, size_t cap, double v)
{
    if (isnan(v)) snprintf(buf, cap, "na");
    else snprintf(buf, cap, "%.3f", v);
}

/* The memo tag (site << 32 | day bucket in minutes) of the last day of d's range. */
static uint64_t last_day_tag(const struct qdef *d, uint32_t site_id)
{
    char err[512];
    struct query *q = NULL;
    if (query_parse_v2(d->json, strlen(d->json), DATA_NOW_MS, site_cb, NULL, &q, err,
                       sizeof err) != 0)
        return 0;
    int64_t day = tz_bucket_start_ms(q->zone, q->range.to_ms - 1, TZ_DAY);
    query_free(q);
    return (uint64_t)site_id << 32 | (uint64_t)(day / 60000);
}

/* The CPU time (user + system) the process pid has used, in ms; NAN when unknown. */
static double proc_cpu_ms(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return NAN;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the name may hold spaces: fields follow its ')' */
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return NAN;
    return (double)(ut + st) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

static int cmd_run(const char *dir, int ch_port)
{
    struct store *s = open_store(dir);
    uint32_t site_id = 0;
    int rc = store_site_id(s, SITE, strlen(SITE), false, &site_id);
    if (rc) die("site " SITE, rc);
    enum q_plan plan = plan_from_env();
    int reps_dash = env_int("QUERY_REPS_DASHBOARD", 50, 1, REPS_MAX);
    /* QUERY_LIVE=1: before each timed Tally run, the last day of the query's range is marked
     * changed, as the engine does for today while events arrive (the query cache keeps only
     * the state of the days before it) */
    const bool live = getenv("QUERY_LIVE") && atoi(getenv("QUERY_LIVE")) == 1;
    int reps_adhoc = env_int("QUERY_REPS_ADHOC", 20, 1, REPS_MAX);
    int rounds = env_int("QUERY_ROUNDS", 1, 1, ROUNDS_MAX);
    /* QUERY_CH_PID (bench/query.sh sets it): ClickHouse's CPU while Tally's timed runs run
     * (its background work, e.g. query_log flushes, would take a core from them) */
    const long ch_pid = getenv("QUERY_CH_PID") ? atol(getenv("QUERY_CH_PID")) : 0;
    double side_ms_max = 1000.0 * env_int("QUERY_SECONDS_MAX", 20, 1, 3600);
    struct ch c = {.port = ch_port, .fd = -1};
    static struct qres res[NQUERIES];
    double *tv = malloc(REPS_MAX * sizeof *tv), *cv = malloc(REPS_MAX * sizeof *cv);
    if (!tv || !cv) die("samples", TALLY_ENOMEM);
    long run_id = (long)getpid() ^ (long)time(NULL);
    uint64_t counted = 0; /* events loaded into ClickHouse (all sites) */
    const char *ev_env = getenv("QUERY_EVENTS");
    uint64_t events = ev_env ? strtoull(ev_env, NULL, 10) : 0;

    double rtt_ms = NAN; /* ClickHouse's floor: SELECT 1 over the same connection */
    if (ch_port) {
        size_t blen;
        char *b = ch_query(&c, "SELECT count() FROM events", &blen);
        counted = strtoull(b, NULL, 10);
        for (int k = 0; k < 100; k++) {
            double t0 = now_ms();
            ch_query(&c, "SELECT 1", &blen);
            tv[k] = now_ms() - t0;
        }
        rtt_ms = pct(tv, 100, 0.5);
    }
    for (int r = 0; r < rounds; r++) {
        for (size_t i = 0; i < NQUERIES; i++) {
            const struct qdef *d = &queries[i];
            struct qres *qr = &res[i];
            int reps = d->cls == DASHBOARD ? reps_dash : reps_adhoc;
            fprintf(stderr, "query: round %d/%d %s\n", r + 1, rounds, d->name);
            /* Tally: warm-up with an empty query cache (keeps the answer and its time),
             * then the timed runs */
            char *json = NULL;
            memo_forget(s);
            double tc = now_ms();
            tally_once(s, site_id, d, plan, &json);
            qr->cold[r] = now_ms() - tc;
            free(qr->tally_first);
            tally_summary(json, qr->plan, sizeof qr->plan, &qr->tally_first);
            free(json);
            int n = 0;
            uint64_t live_tag = live ? last_day_tag(d, site_id) : 0;
            double ch_cpu0 = ch_pid ? proc_cpu_ms(ch_pid) : NAN;
            for (double start = now_ms(); n < reps;) {
                if (live_tag) memo_note_days(store_memo(s), &live_tag, 1);
                double t0 = now_ms();
                tally_once(s, site_id, d, plan, NULL);
                tv[n++] = now_ms() - t0;
                if (n >= RUNS_MIN && now_ms() - start > side_ms_max) break;
            }
            qr->tally_runs = n;
            qr->ch_busy[r] = ch_pid ? proc_cpu_ms(ch_pid) - ch_cpu0 : NAN;
            qr->t50[r] = pct(tv, (size_t)n, 0.5);
            qr->t99[r] = pct(tv, (size_t)n, 0.99);
            qr->c50[r] = qr->c99[r] = qr->s50[r] = qr->s99[r] = NAN;
            if (!ch_port) continue;
            /* ClickHouse: the same ranges as the parsed query */
            char err[512];
            struct query *q = NULL;
            if ((rc = query_parse_v2(d->json, strlen(d->json), DATA_NOW_MS, site_cb, NULL, &q,
                                     err, sizeof err)) != 0)
                die(err, rc);
            char tag[96];
            snprintf(tag, sizeof tag, "bench:%s:%ld:%d", d->name, run_id, r);
            char warm_tag[96];
            snprintf(warm_tag, sizeof warm_tag, "bench-warmup:%s", d->name);
            char *sql = make_sql(d, q, site_id, tag), *warm = make_sql(d, q, site_id, warm_tag);
            query_free(q);
            ch_close(&c); /* a fresh keep-alive connection for this query's runs */
            size_t blen;
            char *body = ch_query(&c, warm, &blen);
            free(qr->ch_first);
            qr->ch_first = ch_first_line(body);
            n = 0;
            for (double start = now_ms(); n < reps;) {
                double t0 = now_ms();
                ch_query(&c, sql, &blen);
                cv[n++] = now_ms() - t0;
                if (n >= RUNS_MIN && now_ms() - start > side_ms_max) break;
            }
            qr->ch_runs = n;
            qr->c50[r] = pct(cv, (size_t)n, 0.5);
            qr->c99[r] = pct(cv, (size_t)n, 0.99);
            ch_server_times(&c, tag, &qr->s50[r], &qr->s99[r]);
            free(sql);
            free(warm);
        }
    }

    double dash_p99 = 0, adhoc_p99 = 0, slowest = INFINITY;
    const char *slowest_name = "none";
    for (size_t i = 0; i < NQUERIES; i++) {
        const struct qdef *d = &queries[i];
        struct qres *qr = &res[i];
        double t50 = median(qr->t50, (size_t)rounds), t99 = median(qr->t99, (size_t)rounds);
        double c50 = median(qr->c50, (size_t)rounds), c99 = median(qr->c99, (size_t)rounds);
        double s50 = median(qr->s50, (size_t)rounds);
        double cold = median(qr->cold, (size_t)rounds);
        double busy = median(qr->ch_busy, (size_t)rounds);
        double r50 = c50 / t50, r99 = c99 / t99;
        if (d->cls == DASHBOARD && t99 > dash_p99) dash_p99 = t99;
        if (d->cls == ADHOC && t99 > adhoc_p99) adhoc_p99 = t99;
        if (ch_port && r50 < slowest) {
            slowest = r50;
            slowest_name = d->name;
        }
        char a[32], b[32], e[32], f[32], g[32], h[32];
        fmt_ms(h, sizeof h, cold);
        fmt_ms(a, sizeof a, t50);
        fmt_ms(b, sizeof b, t99);
        fmt_ms(e, sizeof e, c50);
        fmt_ms(f, sizeof f, c99);
        fmt_ms(g, sizeof g, s50);
        printf("bench=query name=%s class=%s plan=%s rounds=%d tally_runs=%d ch_runs=%d "
               "tally_cold_ms=%s tally_p50_ms=%s "
               "tally_p99_ms=%s ch_p50_ms=%s ch_p99_ms=%s ch_server_p50_ms=%s ratio_p50=%.1f "
               "ratio_p99=%.1f ch_cpu_in_tally_ms=%.0f\n",
               d->name, d->cls == DASHBOARD ? "dashboard" : "adhoc", qr->plan, rounds,
               qr->tally_runs, qr->ch_runs, h, a, b, e, f, g, ch_port ? r50 : NAN,
               ch_port ? r99 : NAN, busy);
    }
    for (size_t i = 0; i < NQUERIES; i++)
        printf("query-check name=%s tally=%s ch=%s\n", queries[i].name, res[i].tally_first,
               res[i].ch_first ? res[i].ch_first : "(not run)");
    /* the totals query's visitors and pageviews from both sides */
    long long tv_vis = -1, tv_pv = -1, ch_vis = -1, ch_pv = -1;
    cJSON *row = cJSON_Parse(res[0].tally_first);
    const cJSON *m = cJSON_GetObjectItem(row, "metrics");
    if (cJSON_GetArraySize(m) >= 3) {
        tv_vis = (long long)cJSON_GetArrayItem(m, 0)->valuedouble;
        tv_pv = (long long)cJSON_GetArrayItem(m, 2)->valuedouble;
    }
    cJSON_Delete(row);
    if (res[0].ch_first) {
        long long visits;
        if (sscanf(res[0].ch_first, "%lld %lld %lld", &ch_vis, &visits, &ch_pv) != 3)
            ch_vis = ch_pv = -1;
    }
    bool disagree = ch_port && (llabs(tv_vis - ch_vis) > tv_vis / 20 ||
                                llabs(tv_pv - ch_pv) > tv_pv / 100);
    printf("bench=query_summary events=%llu counted=%llu dashboard_p99_ms=%.3f "
           "adhoc_p99_ms=%.3f slowest_ratio=%.1f slowest=%s ch_select1_p50_ms=%.3f "
           "totals_visitors_tally=%lld totals_visitors_ch=%lld totals_pageviews_tally=%lld "
           "totals_pageviews_ch=%lld agree=%s\n",
           (unsigned long long)events, (unsigned long long)counted, dash_p99, adhoc_p99,
           ch_port ? slowest : NAN, slowest_name, rtt_ms, tv_vis, ch_vis, tv_pv, ch_pv,
           !ch_port ? "na" : disagree ? "no" : "yes");
    for (size_t i = 0; i < NQUERIES; i++) {
        free(res[i].tally_first);
        free(res[i].ch_first);
    }
    free(tv);
    free(cv);
    ch_close(&c);
    free(c.buf);
    store_close(s);
    tz_shutdown();
    return 0;
}

/* One query document, timed: for looking into one query by hand. */
static int cmd_once(const char *dir, const char *json, int reps)
{
    struct store *s = open_store(dir);
    uint32_t site_id = 0;
    int rc = store_site_id(s, SITE, strlen(SITE), false, &site_id);
    if (rc) die("site " SITE, rc);
    struct qdef d = {.name = "once", .cls = ADHOC, .json = json};
    enum q_plan plan = plan_from_env();
    char *out = NULL, planbuf[16], *first = NULL;
    double tc = now_ms();
    tally_once(s, site_id, &d, plan, &out);
    tc = now_ms() - tc;
    tally_summary(out, planbuf, sizeof planbuf, &first);
    double *v = malloc((size_t)reps * sizeof *v);
    if (!v) die("samples", TALLY_ENOMEM);
    /* QUERY_TOUCH_DAY_MS=local midnight of a day (ms): that day is marked changed before each
     * timed run, as the engine does for today while events arrive (the query cache then keeps
     * only the state of the days before it) */
    const char *touch = getenv("QUERY_TOUCH_DAY_MS");
    uint64_t tag = touch ? (uint64_t)site_id << 32 | (uint64_t)(atoll(touch) / 60000) : 0;
    for (int k = 0; k < reps; k++) {
        if (touch) memo_note_days(store_memo(s), &tag, 1);
        double t0 = now_ms();
        tally_once(s, site_id, &d, plan, NULL);
        v[k] = now_ms() - t0;
    }
    printf("%s\nplan=%s runs=%d cold_ms=%.3f p50_ms=%.3f p99_ms=%.3f\n", out, planbuf, reps,
           tc, pct(v, (size_t)reps, 0.5), pct(v, (size_t)reps, 0.99));
    free(v);
    free(first);
    free(out);
    store_close(s);
    tz_shutdown();
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "export-events") == 0) return cmd_export(argv[2], true);
    if (argc >= 3 && strcmp(argv[1], "export-sessions") == 0) return cmd_export(argv[2], false);
    if (argc >= 4 && strcmp(argv[1], "once") == 0)
        return cmd_once(argv[2], argv[3], argc > 4 ? env_int_str(argv[4]) : 5);
    if (argc >= 3 && strcmp(argv[1], "run") == 0)
        return cmd_run(argv[2], argc > 3 ? atoi(argv[3]) : 0);
    fprintf(stderr, "usage: query export-events|export-sessions STORE\n"
                    "       query run STORE [CLICKHOUSE_HTTP_PORT]\n"
                    "       query once STORE JSON [RUNS]   (one v2 query, timed)\n"
                    "(bench/query.sh runs the whole benchmark)\n");
    return 2;
}
