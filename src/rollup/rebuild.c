/* rebuild: `tally --rebuild` (see rollup.h, REBUILD). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "ingest/event.h"
#include "ingest/timefmt.h"
#include "log/evlog.h"
#include "rollup/consumer.h"
#include "rollup/rollup.h"
#include "store/memo.h"
#include "tally/error.h"

#define MARKER_KEY ROLLUP_STATE_PREFIX "rebuilding"

int rollup_parse_date(const char *s, int64_t *day)
{
    if (!s || strlen(s) != 10 || s[4] != '-' || s[7] != '-') return TALLY_EINVAL;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9')) return TALLY_EINVAL;
    int64_t y = atoi(s);
    unsigned m = (unsigned)atoi(s + 5), d = (unsigned)atoi(s + 8);
    if (y < 1970 || m < 1 || m > 12 || d < 1 || d > timefmt_days_in_month(y, m))
        return TALLY_EINVAL;
    *day = timefmt_days_from_civil(y, m, d);
    return TALLY_OK;
}

static uint32_t ceil_min(int64_t ms)
{
    return ms <= 0 ? 0 : (uint32_t)((ms + 59999) / 60000);
}

struct sel {
    uint32_t ids[STORE_SITES_MAX > 4096 ? 4096 : STORE_SITES_MAX];
    size_t n;
    bool all;
};

static void collect_site(void *arg, uint32_t id, const char *name)
{
    (void)name;
    struct sel *sel = arg;
    if (sel->n < TALLY_ARRAY_LEN(sel->ids)) sel->ids[sel->n++] = id;
}

/* Local-day range of a site in ms. */
static void site_range(struct store *s, const struct tally_config *cfg, uint32_t id,
                       int64_t from_day, int64_t to_day, int64_t *from_ms, int64_t *to_ms)
{
    char name[STORE_SITE_NAME_BYTES_MAX + 1] = "";
    store_site_name(s, id, name, sizeof name);
    const tz_zone *z = NULL;
    if (tz_get(rollup_site_tz(cfg, name, strlen(name)), &z) != 0) z = tz_utc();
    int64_t y;
    unsigned m, d;
    timefmt_civil_from_days(from_day, &y, &m, &d);
    *from_ms = tz_day_start_ms(z, y, m, d);
    timefmt_civil_from_days(to_day, &y, &m, &d);
    *to_ms = tz_day_start_ms(z, y, m, d);
}

/* Deletes what a filtered rebuild recomputes: the sites' visits, and their cells (in range). */
static int delete_filtered(struct store *s, const struct tally_config *cfg,
                           const struct sel *sel, bool range, int64_t from_day, int64_t to_day)
{
    struct store_batch *b = store_batch_new(s);
    if (!b) return TALLY_ENOMEM;
    for (size_t i = 0; i < sel->n; i++) {
        uint32_t id = sel->ids[i];
        uint8_t lo[10], hi[10];
        store_put_be32(lo, id);
        store_put_be32(hi, id + 1);
        store_batch_delete_range(b, STORE_CF_SESSIONS, lo, 4, hi, 4);
        int64_t from_ms = 0, to_ms = INT64_MAX;
        if (range) site_range(s, cfg, id, from_day, to_day, &from_ms, &to_ms);
        for (int g = TZ_HOUR; g <= TZ_DAY; g++) {
            if (!range) {
                cell_key_prefix(lo, g, id, 0);
                cell_key_prefix(hi, g, id + 1, 0);
                store_batch_delete_range(b, STORE_CF_ROLLUPS, lo, 5, hi, 5);
                continue;
            }
            for (int dim = 0; dim < ROLLUP_DIM_COUNT; dim++) {
                cell_key_prefix(lo, g, id, dim);
                cell_key_prefix(hi, g, id, dim);
                store_put_be32(lo + 6, ceil_min(from_ms));
                store_put_be32(hi + 6, ceil_min(to_ms));
                store_batch_delete_range(b, STORE_CF_ROLLUPS, lo, 10, hi, 10);
            }
        }
    }
    /* minute cells lead with the bucket: walk them (at most the retention window) */
    uint8_t mlo[1] = {'m'}, mhi[1] = {'n'};
    struct store_iter *it = store_iter_new(s, STORE_CF_ROLLUPS, mlo, 1, mhi, 1);
    int rc = it ? TALLY_OK : TALLY_ENOMEM;
    if (it) store_iter_seek_first(it);
    for (; !rc && store_iter_valid(it); store_iter_next(it)) {
        size_t kl;
        const uint8_t *k = store_iter_key(it, &kl);
        int g, dim;
        uint32_t site, bucket;
        const char *v;
        size_t vl;
        if (!cell_key_parse(k, kl, &g, &site, &dim, &bucket, &v, &vl)) continue;
        bool hit = false;
        for (size_t i = 0; i < sel->n && !hit; i++) hit = sel->ids[i] == site;
        if (!hit) continue;
        if (range) {
            int64_t from_ms, to_ms, ms = (int64_t)bucket * 60000;
            site_range(s, cfg, site, from_day, to_day, &from_ms, &to_ms);
            if (ms < from_ms || ms >= to_ms) continue;
        }
        store_batch_delete(b, STORE_CF_ROLLUPS, k, kl);
    }
    if (it && !rc) rc = store_iter_status(it);
    store_iter_free(it);
    if (!rc) store_batch_put_u64(b, MARKER_KEY, 1);
    if (!rc) rc = store_write(s, b);
    store_batch_free(b);
    memo_note_all(store_memo(s)); /* cached range results may cover deleted cells */
    return rc;
}

/* The arrival time of the log's last record: a lower bound of the final watermark. */
static int64_t last_received(struct evlog *log, uint64_t start, uint64_t end)
{
    if (end <= start) return 0;
    struct evlog_reader *r = NULL;
    if (evlog_reader_open(log, end - 1, &r) != 0) return 0;
    int64_t received = 0;
    struct seglog_record rec;
    int n = evlog_reader_next(r, &rec);
    for (int tries = 0; n == TALLY_EAGAIN && tries < 50; tries++) { /* a remote log: 5 s */
        evlog_wait(log, end - 1, 100);
        n = evlog_reader_next(r, &rec);
    }
    if (n == 0) {
        struct event ev;
        struct event_scratch *sc = malloc(sizeof *sc);
        if (sc && event_decode(rec.data, rec.len, &ev, sc) == 0) received = ev.received_ms;
        free(sc);
    }
    evlog_reader_close(r);
    return received;
}

static int delete_all(struct store *s)
{
    struct store_batch *b = store_batch_new(s);
    if (!b) return TALLY_ENOMEM;
    const uint8_t lo[1] = {0x00}, hi[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    store_batch_delete_range(b, STORE_CF_ROLLUPS, lo, 1, hi, 8);
    store_batch_delete_range(b, STORE_CF_SESSIONS, lo, 1, hi, 8);
    const char *p = ROLLUP_STATE_PREFIX; /* "rollup." .. "rollup/" */
    char end[32];
    snprintf(end, sizeof end, "%s", p);
    end[strlen(end) - 1]++;
    store_batch_delete_range(b, STORE_CF_META, p, strlen(p), end, strlen(end));
    int rc = store_write(s, b);
    store_batch_free(b);
    memo_note_all(store_memo(s)); /* cached range results cover deleted cells */
    return rc;
}

int rollup_rebuild(struct store *s, const struct rollup_source *src, size_t nsrc,
                   const struct rollup_rebuild_opts *opt, struct rollup_rebuild_summary *out)
{
    memset(out, 0, sizeof *out);
    if (nsrc == 0 || nsrc > ROLLUP_SOURCES_MAX) return TALLY_EINVAL;
    int64_t t0 = timefmt_mono_ms();
    int64_t from_day = 0, to_day = 0;
    bool range = opt->from_date || opt->to_date;
    if (opt->from_date && rollup_parse_date(opt->from_date, &from_day)) return TALLY_EINVAL;
    if (opt->to_date && rollup_parse_date(opt->to_date, &to_day)) return TALLY_EINVAL;
    if (!opt->from_date) from_day = 0;
    if (!opt->to_date) to_day = timefmt_days_from_civil(9999, 12, 30);
    else to_day += 1; /* inclusive */
    if (range && to_day <= from_day) return TALLY_EINVAL;

    const char *site = opt->site;
    if (site && opt->cfg) {
        const struct config_site *cs = config_site_find(opt->cfg, site);
        if (cs) site = cs->name;
    }
    if (site && !site[0]) return TALLY_EINVAL;
    bool full = !site && !range;

    struct rollup_config rc_cfg;
    rollup_config_default(&rc_cfg);
    rc_cfg.cfg = opt->cfg;
    struct engine_opts eo0;
    if (opt->engine.visit_gap_ms) eo0 = opt->engine;
    else engine_opts_default(&eo0);

    /* Per source: its live prefix, and the range replayed. */
    struct srcrange {
        char raw[32], roll[32];
        uint64_t start, end;
    } *sr = calloc(nsrc, sizeof *sr);
    if (!sr) return TALLY_ENOMEM;
    struct evlog *logs = calloc(nsrc, sizeof *logs);
    if (!logs) {
        free(sr);
        return TALLY_ENOMEM;
    }
    int rc = TALLY_OK;
    for (size_t i = 0; i < nsrc; i++) {
        logs[i] = src[i].log;
        rollup_source_prefixes(src[i].name, sr[i].raw, sr[i].roll);
    }
    if (!full) {
        /* bring the live state up to the end first: outside the filter it stays as it is */
        for (size_t i = 0; i < nsrc && !rc; i++) {
            struct engine_opts live = eo0;
            live.state_prefix = sr[i].roll;
            live.only_site = NULL;
            live.range = false;
            live.known_empty = false;
            rc = consumer_run_rollup(s, &logs[i], &rc_cfg, &live, 0, UINT64_MAX, false, NULL,
                                     NULL);
        }
    }
    for (size_t i = 0; i < nsrc && !rc; i++) {
        sr[i].start = evlog_start_offset(&logs[i]);
        sr[i].end = evlog_committed_offset(&logs[i]);
        out->log_start += sr[i].start;
        out->log_end += sr[i].end;
    }

    static struct sel sel;
    if (!rc && full) {
        rc = delete_all(s);
    } else if (!rc) {
        sel.n = 0;
        if (site) {
            uint32_t id;
            int r = store_site_id(s, site, strlen(site), false, &id);
            if (r == 0) sel.ids[sel.n++] = id;
            else if (r != TALLY_ENOENT) rc = r;
        } else {
            store_sites_each(s, collect_site, &sel);
        }
        if (!rc) rc = delete_filtered(s, opt->cfg, &sel, range, from_day, to_day);
    }

    struct consumer_status st;
    memset(&st, 0, sizeof st);
    st.progress = opt->progress;
    st.progress_arg = opt->progress_arg;
    for (size_t i = 0; i < nsrc && !rc; i++) {
        struct engine_opts eo = eo0;
        if (full) {
            eo.state_prefix = sr[i].roll;
            eo.only_site = NULL;
            eo.range = false;
        } else {
            eo.state_prefix = NULL;
            eo.only_site = site;
            eo.range = range;
            eo.range_from_day = from_day;
            eo.range_to_day = to_day;
        }
        eo.known_empty = true;
        eo.flush_async = true; /* the batches are written while the next one is computed */
        eo.watermark_hint_ms = last_received(&logs[i], sr[i].start, sr[i].end);
        struct engine_stats es;
        memset(&es, 0, sizeof es);
        rc = consumer_run_rollup(s, &logs[i], &rc_cfg, &eo, sr[i].start, sr[i].end, false, &st,
                                 &es);
        out->events_read += es.events_read;
        out->events_counted += es.events_counted;
        out->events_excluded += es.events_excluded;
        out->events_duplicate += es.events_duplicate;
        out->buckets_written += es.cells_written;
        out->visits_written += es.visits_written;
        out->flush_s += (double)es.flush_us / 1e6;
        out->write_s += (double)es.write_us / 1e6;
    }
    free(sr);
    free(logs);
    if (rc) return rc;
    if (!full) {
        struct store_batch *b = store_batch_new(s);
        if (!b) return TALLY_ENOMEM;
        store_batch_delete(b, STORE_CF_META, MARKER_KEY, strlen(MARKER_KEY));
        rc = store_write(s, b);
        store_batch_free(b);
        if (rc) return rc;
    }
    out->records_corrupt = out->log_end - out->log_start > out->events_read
                               ? out->log_end - out->log_start - out->events_read
                               : 0;
    rc = rollup_digest(s, NULL, &out->digest);
    out->elapsed_s = (double)(timefmt_mono_ms() - t0) / 1000.0;
    return rc;
}
