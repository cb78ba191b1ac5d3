/*
 * export: raw events out of the raw store (what and why in export.h).
 *
 * PER SLICE [t, t + w):
 *  1. With filters: qscan_visits over the slice (visits are rebuilt whole, also across the
 *     slice's edges, so visit filters see the same visit as a query would) collects the offsets
 *     of the events in scope and in the slice; sorted, they are looked up by binary search.
 *  2. raw_scan of the slice: every counted event (and, with filters, every collected offset)
 *     becomes one line, written into an output batch handed to write_fn when full.
 * The next slice is twice as wide after an empty one (up to 64 days), half as wide after one
 * above EXPORT_SLICE_EVENTS_HIGH events (down to one hour), so "all" over a sparse history
 * costs few seeks and a dense day cannot take all the memory.
 */
#include "app/export.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/referrer.h"
#include "ingest/timefmt.h"
#include "query/qvisit.h"
#include "rollup/u64map.h"
#include "store/raw.h"
#include "tally/error.h"

#define SLICE_MS_MAX (64 * EXPORT_SLICE_MS)
#define SLICE_MS_MIN (3600 * 1000LL)

struct buf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void b_put(struct buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void b_puts(struct buf *b, const char *s)
{
    b_put(b, s, strlen(s));
}

static void b_json(struct buf *b, const char *s, size_t n)
{
    b_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\') continue;
        b_put(b, s + run, i - run);
        char esc[8];
        if (ch == '"' || ch == '\\')
            snprintf(esc, sizeof esc, "\\%c", ch);
        else
            snprintf(esc, sizeof esc, "\\u%04x", ch);
        b_puts(b, esc);
        run = i + 1;
    }
    b_put(b, s + run, n - run);
    b_put(b, "\"", 1);
}

static void b_csv(struct buf *b, const char *s, size_t n)
{
    if (!memchr(s, '"', n) && !memchr(s, ',', n) && !memchr(s, '\n', n) && !memchr(s, '\r', n)) {
        b_put(b, s, n);
        return;
    }
    b_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') b_put(b, "\"", 1);
        b_put(b, s + i, 1);
    }
    b_put(b, "\"", 1);
}

/* Appends the query-string encoding of s. */
static void b_pct(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '_' || ch == '.' || ch == '~' || ch == '/') {
            b_put(b, s + i, 1);
        } else {
            char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
            b_put(b, e, 3);
        }
    }
}

struct str {
    const char *p;
    uint32_t n;
};

struct ex {
    struct store *s;
    uint32_t site;
    const struct query *q;
    enum export_format fmt;
    size_t mem_max;
    int64_t slice_timeout_ms;
    export_write_fn write_fn;
    void *arg;
    uint32_t eng_id;
    bool eng_found;
    /* dictionary cache: id -> index into strs */
    struct u64map cache;
    struct str *strs;
    size_t nstrs, capstrs, cache_bytes;
    /* in-scope offsets of the current slice (filters only) */
    uint64_t *offs;
    size_t noffs, capoffs;
    bool filtered;
    int64_t slice_from, slice_to;
    size_t slice_events;
    struct buf out, line, url;
    int err;
};

static void cache_clear(struct ex *x)
{
    for (size_t i = 0; i < x->nstrs; i++)
        free((char *)x->strs[i].p);
    x->nstrs = 0;
    x->cache_bytes = 0;
    u64map_clear(&x->cache);
}

/* The string of dictionary id (owned by the cache until the next cache_clear). */
static struct str dict(struct ex *x, uint32_t id)
{
    if (id == 0) return (struct str){"", 0};
    uint64_t *v = u64map_get(&x->cache, id);
    if (v) return x->strs[*v];
    char *s;
    uint32_t n;
    int rc = raw_dict_string(x->s, x->site, id, &s, &n);
    if (rc) {
        if (rc != TALLY_ENOENT && !x->err) x->err = rc;
        return (struct str){"", 0};
    }
    if (x->nstrs == x->capstrs) {
        size_t cap = x->capstrs ? x->capstrs * 2 : 256;
        struct str *p = realloc(x->strs, cap * sizeof *p);
        if (!p) {
            free(s);
            if (!x->err) x->err = TALLY_ENOMEM;
            return (struct str){"", 0};
        }
        x->strs = p;
        x->capstrs = cap;
    }
    x->strs[x->nstrs] = (struct str){s, n};
    if (!u64map_put(&x->cache, id, x->nstrs)) {
        free(s);
        if (!x->err) x->err = TALLY_ENOMEM;
        return (struct str){"", 0};
    }
    x->cache_bytes += n + 48;
    return x->strs[x->nstrs++];
}

static int flush_out(struct ex *x, bool force)
{
    if (x->out.oom) return TALLY_ENOMEM;
    if (x->out.n == 0 || (!force && x->out.n < EXPORT_OUT_BYTES)) return TALLY_OK;
    int rc = x->write_fn(x->arg, x->out.p, x->out.n);
    x->out.n = 0;
    return rc;
}

static const char *const utm_names[] = {"utm_source", "utm_medium", "utm_campaign", "utm_content",
                                        "utm_term"};

/* The URL of an event (empty without a hostname and a path) into x->url. */
static void build_url(struct ex *x, const struct raw_event *e, const struct str *f)
{
    struct buf *u = &x->url;
    u->n = 0;
    const struct str host = f[DE_HOSTNAME], path = f[DE_PATH];
    if (host.n == 0) return;
    b_puts(u, "https://");
    b_put(u, host.p, host.n);
    if (path.n)
        b_put(u, path.p, path.n);
    else
        b_puts(u, "/");
    char sep = '?';
    for (int k = 0; k < 5; k++) {
        const struct str v = f[DE_UTM_SOURCE + k];
        if (!v.n) continue;
        b_put(u, &sep, 1);
        b_puts(u, utm_names[k]);
        b_puts(u, "=");
        b_pct(u, v.p, v.n);
        sep = '&';
    }
    /* Would the source be derived again from referrer + UTM? If not, it came from a ref or
     * source parameter: say so. */
    const struct str src = f[DE_SOURCE], ref = f[DE_REFERRER];
    if (src.n == 0 || f[DE_UTM_SOURCE].n) return;
    char refurl[REFERRER_URL_MAX + 16], hostz[512], us[8][256];
    snprintf(refurl, sizeof refurl, "%s%.*s", ref.n ? "https://" : "", (int)ref.n, ref.p);
    snprintf(hostz, sizeof hostz, "%.*s", (int)host.n, host.p);
    referrer_tags t = {0};
    const char **tp[3] = {&t.utm_source, &t.utm_medium, &t.utm_campaign};
    for (int k = 0; k < 3; k++)
        if (f[DE_UTM_SOURCE + k].n) {
            snprintf(us[k], sizeof us[k], "%.*s", (int)f[DE_UTM_SOURCE + k].n,
                     f[DE_UTM_SOURCE + k].p);
            *tp[k] = us[k];
        }
    referrer_info info;
    referrer_classify(refurl, hostz, &t, &info);
    if (strlen(info.source) == src.n && memcmp(info.source, src.p, src.n) == 0) return;
    b_put(u, &sep, 1);
    b_puts(u, "ref=");
    b_pct(u, src.p, src.n);
    (void)e;
}

static void revenue_text(const struct raw_event *e, char *out, size_t cap)
{
    int64_t m = e->revenue_micros;
    const char *sign = m < 0 ? "-" : "";
    uint64_t a = m < 0 ? (uint64_t)0 - (uint64_t)m : (uint64_t)m;
    char frac[8];
    snprintf(frac, sizeof frac, "%06llu", (unsigned long long)(a % 1000000));
    size_t fl = 6;
    while (fl > 2 && frac[fl - 1] == '0')
        fl--;
    frac[fl] = 0;
    snprintf(out, cap, "%s%llu.%s", sign, (unsigned long long)(a / 1000000), frac);
}

static void props_json(struct ex *x, struct buf *b, const struct raw_event *e)
{
    b_puts(b, "{");
    for (uint32_t i = 0; i < e->props_count; i++) {
        struct str k = dict(x, e->props[i].key);
        struct str v = dict(x, e->props[i].value);
        if (i) b_puts(b, ",");
        b_json(b, k.p, k.n);
        b_puts(b, ":");
        b_json(b, v.p, v.n);
    }
    b_puts(b, "}");
}

static void line_ndjson(struct ex *x, const struct raw_event *e, const struct str *f,
                        const char *ts, const char *vid, const char *id)
{
    struct buf *b = &x->out;
    b_puts(b, "{\"site\":");
    b_json(b, x->q->site, strlen(x->q->site));
    b_puts(b, ",\"name\":");
    b_json(b, f[DE_NAME].p, f[DE_NAME].n);
    if (x->url.n) {
        b_puts(b, ",\"url\":");
        b_json(b, x->url.p, x->url.n);
    }
    if (f[DE_REFERRER].n) {
        struct buf *r = &x->line;
        r->n = 0;
        b_puts(r, "https://");
        b_put(r, f[DE_REFERRER].p, f[DE_REFERRER].n);
        b_puts(b, ",\"referrer\":");
        b_json(b, r->oom ? "" : r->p, r->oom ? 0 : r->n);
    }
    b_puts(b, ",\"ts\":\"");
    b_puts(b, ts);
    b_puts(b, "\",\"visitor_id\":\"");
    b_puts(b, vid);
    b_puts(b, "\",\"id\":\"");
    b_puts(b, id);
    b_puts(b, "\"");
    if (e->props_count) {
        b_puts(b, ",\"props\":");
        props_json(x, b, e);
    }
    if (e->has_revenue) {
        char amt[40];
        revenue_text(e, amt, sizeof amt);
        struct str cur = dict(x, e->currency_id);
        b_puts(b, ",\"revenue\":{\"amount\":\"");
        b_puts(b, amt);
        b_puts(b, "\",\"currency\":");
        b_json(b, cur.p, cur.n);
        b_puts(b, "}");
    }
    if (e->flags & RAW_F_NONINTERACTIVE) b_puts(b, ",\"interactive\":false");
    b_puts(b, "}\n");
}

static const char csv_header[] =
    "site,name,url,referrer,ts,visitor_id,id,props,revenue_amount,revenue_currency,interactive,"
    "hostname,path,source,channel,utm_source,utm_medium,utm_campaign,utm_content,utm_term,device,"
    "browser,browser_version,os,os_version,country,region,city\n";

static void line_csv(struct ex *x, const struct raw_event *e, const struct str *f,
                     const char *ts, const char *vid, const char *id)
{
    struct buf *b = &x->out;
    b_csv(b, x->q->site, strlen(x->q->site));
    b_puts(b, ",");
    b_csv(b, f[DE_NAME].p, f[DE_NAME].n);
    b_puts(b, ",");
    b_csv(b, x->url.n ? x->url.p : "", x->url.n);
    b_puts(b, ",");
    if (f[DE_REFERRER].n) {
        struct buf r = {0};
        b_puts(&r, "https://");
        b_put(&r, f[DE_REFERRER].p, f[DE_REFERRER].n);
        b_csv(b, r.oom ? "" : r.p, r.oom ? 0 : r.n);
        free(r.p);
    }
    b_puts(b, ",");
    b_puts(b, ts);
    b_puts(b, ",");
    b_puts(b, vid);
    b_puts(b, ",");
    b_puts(b, id);
    b_puts(b, ",");
    if (e->props_count) {
        struct buf p = {0};
        props_json(x, &p, e);
        b_csv(b, p.oom ? "" : p.p, p.oom ? 0 : p.n);
        free(p.p);
    }
    b_puts(b, ",");
    if (e->has_revenue) {
        char amt[40];
        revenue_text(e, amt, sizeof amt);
        struct str cur = dict(x, e->currency_id);
        b_puts(b, amt);
        b_puts(b, ",");
        b_csv(b, cur.p, cur.n);
    } else {
        b_puts(b, ",");
    }
    b_puts(b, e->flags & RAW_F_NONINTERACTIVE ? ",false" : ",true");
    static const int cols[] = {DE_HOSTNAME,    DE_PATH,         DE_SOURCE,       DE_CHANNEL,
                               DE_UTM_SOURCE,  DE_UTM_MEDIUM,   DE_UTM_CAMPAIGN, DE_UTM_CONTENT,
                               DE_UTM_TERM,    DE_DEVICE,       DE_BROWSER,      DE_BROWSER_VERSION,
                               DE_OS,          DE_OS_VERSION,   DE_COUNTRY,      DE_REGION,
                               DE_CITY};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(cols); i++) {
        b_puts(b, ",");
        b_csv(b, f[cols[i]].p, f[cols[i]].n);
    }
    b_puts(b, "\n");
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int on_raw(void *arg, const struct raw_event *e)
{
    struct ex *x = arg;
    if (e->flags & RAW_F_EXCLUDED) return 0;
    if (x->eng_found && e->id[DE_NAME] == x->eng_id) return 0;
    if (x->filtered && !bsearch(&e->offset, x->offs, x->noffs, sizeof *x->offs, u64_cmp)) return 0;
    x->slice_events++;
    if (x->cache_bytes > EXPORT_CACHE_BYTES_MAX) cache_clear(x);
    struct str f[DE_FIELD_COUNT];
    for (int k = 0; k < DE_FIELD_COUNT; k++)
        f[k] = dict(x, e->id[k]);
    char ts[TIMEFMT_RFC3339_BYTES], vid[24], id[24];
    timefmt_format_rfc3339(e->ts_ms, ts);
    snprintf(vid, sizeof vid, "v%016llx", (unsigned long long)e->visitor);
    snprintf(id, sizeof id, "x%llx", (unsigned long long)e->offset);
    build_url(x, e, f);
    if (x->url.oom) return TALLY_ENOMEM;
    if (x->fmt == EXPORT_CSV)
        line_csv(x, e, f, ts, vid, id);
    else
        line_ndjson(x, e, f, ts, vid, id);
    if (x->err) return x->err;
    return flush_out(x, false);
}

static int on_visit(void *arg, const struct qv_visit *v)
{
    struct ex *x = arg;
    for (size_t i = 0; i < v->n; i++) {
        const struct qv_event *e = &v->ev[i];
        if (!e->in_scope || e->ts_ms < x->slice_from || e->ts_ms >= x->slice_to) continue;
        if (x->noffs == x->capoffs) {
            size_t cap = x->capoffs ? x->capoffs * 2 : 1024;
            if (cap * sizeof *x->offs > x->mem_max) return TALLY_ETOOBIG;
            uint64_t *p = realloc(x->offs, cap * sizeof *p);
            if (!p) return TALLY_ENOMEM;
            x->offs = p;
            x->capoffs = cap;
        }
        x->offs[x->noffs++] = e->offset;
    }
    return 0;
}

static int slice(struct ex *x, int64_t from, int64_t to)
{
    x->slice_from = from;
    x->slice_to = to;
    x->slice_events = 0;
    x->noffs = 0;
    if (x->filtered) {
        struct q_budget b = {
            .deadline_ms = x->slice_timeout_ms ? timefmt_mono_ms() + x->slice_timeout_ms : 0,
            .memory_bytes_max = x->mem_max};
        int rc = qscan_visits(x->s, x->site, x->q, (struct q_range){from, to}, &b, NULL, 0,
                              on_visit, x);
        if (rc) return rc;
        if (x->noffs == 0) return TALLY_OK;
        qsort(x->offs, x->noffs, sizeof *x->offs, u64_cmp);
    }
    return raw_scan(x->s, x->site, from, to, on_raw, x);
}

int export_run(struct store *s, uint32_t site_id, const struct query *q, enum export_format fmt,
               size_t memory_bytes_max, int64_t slice_timeout_ms, export_write_fn write_fn,
               void *arg)
{
    struct ex x = {.s = s, .site = site_id, .q = q, .fmt = fmt, .write_fn = write_fn,
                   .arg = arg, .slice_timeout_ms = slice_timeout_ms};
    x.mem_max = memory_bytes_max ? memory_bytes_max : ((size_t)1 << 30);
    x.filtered = q->filter != NULL;
    int rc = TALLY_OK;
    if (fmt == EXPORT_CSV) b_puts(&x.out, csv_header);
    if (site_id != 0) {
        rc = raw_dict_find(s, site_id, "engagement", 10, &x.eng_id);
        x.eng_found = rc == TALLY_OK;
        if (rc == TALLY_ENOENT) rc = TALLY_OK;
    }
    int64_t w = EXPORT_SLICE_MS;
    for (int64_t t = q->range.from_ms; !rc && site_id != 0 && t < q->range.to_ms;) {
        int64_t end = q->range.to_ms - t < w ? q->range.to_ms : t + w;
        rc = slice(&x, t, end);
        if (rc) break;
        t = end;
        if (x.slice_events == 0 && w < SLICE_MS_MAX)
            w *= 2;
        else if (x.slice_events > EXPORT_SLICE_EVENTS_HIGH && w > SLICE_MS_MIN)
            w /= 2;
    }
    if (!rc) rc = flush_out(&x, true);
    cache_clear(&x);
    u64map_free(&x.cache);
    free(x.strs);
    free(x.offs);
    free(x.out.p);
    free(x.line.p);
    free(x.url.p);
    return rc;
}
