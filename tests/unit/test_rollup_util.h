/* Helpers shared by the rollup tests: a store in a temp dir, hand-made derived events, an
 * engine driven directly. Header-only, included by test_rollup*.c after test.h. */
#ifndef TALLY_TEST_ROLLUP_UTIL_H
#define TALLY_TEST_ROLLUP_UTIL_H

#include "ingest/timefmt.h"
#include "rollup/engine.h"
#include "rollup/rollup.h"
#include "store/store.h"
#include "tally/error.h"

static inline struct store *tr_open_store(const char *dir)
{
    struct store_options o;
    store_options_default(&o);
    o.dir = dir;
    o.block_cache_bytes = 4u << 20;
    o.write_buffer_bytes = 2u << 20;
    struct store *s = NULL;
    if (store_open(&o, &s) != 0) abort();
    return s;
}

static inline int64_t tr_ts(const char *s)
{
    int64_t ms = 0;
    if (timefmt_parse_rfc3339(s, strlen(s), &ms) != 0) abort();
    return ms;
}

/* A derived event that owns copies of its strings. */
struct tr_event {
    struct devent ev;
    char buf[DE_FIELD_COUNT][96];
    char site[64], client_id[64];
    struct devent_prop props[2];
    char pk[2][32], pv[2][32];
};

static inline void tr_set(struct tr_event *t, int field, const char *v)
{
    snprintf(t->buf[field], sizeof t->buf[field], "%s", v ? v : "");
    t->ev.str[field].ptr = t->buf[field];
    t->ev.str[field].len = (uint32_t)strlen(t->buf[field]);
}

/* A pageview (name "pageview") or custom event on site at ts_ms by visitor. */
static inline void tr_init(struct tr_event *t, const char *site, uint64_t offset, int64_t ts_ms,
                           uint64_t visitor, const char *name, const char *path)
{
    memset(t, 0, sizeof *t);
    for (int f = 0; f < DE_FIELD_COUNT; f++) tr_set(t, f, "");
    snprintf(t->site, sizeof t->site, "%s", site);
    t->ev.site.ptr = t->site;
    t->ev.site.len = (uint32_t)strlen(t->site);
    t->ev.offset = offset;
    t->ev.ts_ms = ts_ms;
    t->ev.received_ms = ts_ms;
    t->ev.visitor = visitor;
    t->ev.interactive = true;
    t->ev.pageview = strcmp(name, "pageview") == 0;
    t->ev.client_id.ptr = t->client_id;
    tr_set(t, DE_NAME, name);
    tr_set(t, DE_PATH, path);
    tr_set(t, DE_HOSTNAME, site);
    tr_set(t, DE_SOURCE, "Direct / None");
    tr_set(t, DE_CHANNEL, "Direct");
    tr_set(t, DE_DEVICE, "Desktop");
    tr_set(t, DE_BROWSER, "Firefox");
}

static inline void tr_prop(struct tr_event *t, const char *k, const char *v)
{
    uint32_t i = t->ev.props_count++;
    snprintf(t->pk[i], sizeof t->pk[i], "%s", k);
    snprintf(t->pv[i], sizeof t->pv[i], "%s", v);
    t->props[i].key = (struct devent_str){t->pk[i], (uint32_t)strlen(t->pk[i])};
    t->props[i].value = (struct devent_str){t->pv[i], (uint32_t)strlen(t->pv[i])};
    t->ev.props = t->props;
}

static inline void tr_client_id(struct tr_event *t, const char *id)
{
    snprintf(t->client_id, sizeof t->client_id, "%s", id);
    t->ev.client_id.ptr = t->client_id;
    t->ev.client_id.len = (uint32_t)strlen(t->client_id);
}

/* After copying a tr_event, its pointers still point into the original: fix them. */
static inline void tr_fix(struct tr_event *t)
{
    for (int f = 0; f < DE_FIELD_COUNT; f++) t->ev.str[f].ptr = t->buf[f];
    t->ev.site.ptr = t->site;
    t->ev.client_id.ptr = t->client_id;
    for (uint32_t i = 0; i < t->ev.props_count; i++) {
        t->props[i].key.ptr = t->pk[i];
        t->props[i].value.ptr = t->pv[i];
    }
    t->ev.props = t->props;
}

static const char *tr_zone_name;
static inline const char *tr_tz(void *arg, const char *site, size_t len)
{
    (void)arg;
    (void)site;
    (void)len;
    return tr_zone_name ? tr_zone_name : "UTC";
}

static inline struct engine *tr_engine(struct store *s)
{
    struct engine_opts o;
    engine_opts_default(&o);
    o.tz_of = tr_tz;
    struct engine *e = NULL;
    if (engine_open(s, &o, &e) != 0) abort();
    return e;
}

static inline uint32_t tr_site(struct store *s, const char *name)
{
    uint32_t id = 0;
    if (store_site_id(s, name, strlen(name), false, &id) != 0) return 0;
    return id;
}

/* Metrics of one value over [from, to) at granularity g. */
static inline struct rollup_metrics tr_read(struct store *s, const char *site, enum tz_gran g,
                                            int dim, const char *value, int64_t from,
                                            int64_t to)
{
    struct rollup_metrics m;
    memset(&m, 0, sizeof m);
    uint32_t id = tr_site(s, site);
    if (id && rollup_read_value(s, id, g, dim, value, strlen(value), from, to, &m) != 0)
        abort();
    return m;
}

#endif
