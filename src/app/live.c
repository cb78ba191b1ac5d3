/*
 * live: the hub behind GET /api/v1/live?site_id= (WebSocket, RFC 6455; the protocol itself is
 * src/http/http_ws.c).
 *
 * MESSAGES (text frames, one JSON object each):
 *   {"type": "visitors", "site": S, "visitors": N}   on connect, then every LIVE_COUNT_MS:
 *       the realtime visitors (last 5 minutes) through the query engine exactly as
 *       GET /api/v1/stats/realtime/visitors answers it (the planner answers from the rollup
 *       minute cells; null when the query fails); on the ticker thread, never an event loop.
 *       The rollup consumers run a little behind the log, so the count lags by about that.
 *   {"type": "event", "site", "name", "path", "source", "referrer", "country", "device", "ts"}
 *       each event of the site once its append committed (the 202 is on its way): path of
 *       the URL, source as the dashboard shows it ("Google", "Direct / None": the referrer
 *       classifier of src/ingest/referrer.h on the Referer and the URL's tags, as the consumers
 *       will derive it), referrer HOST (not the URL, no query), country from the server's geo
 *       lookup, device class from the User-Agent ("Desktop", "Mobile", "Tablet"); a field
 *       unknown is null. Bots and events
 *       whose host is not allowed are not sent (they are not counted either). Never a visitor
 *       id, IP, User-Agent or query string.
 *   {"type": "dropped", "count": N}   events left out by the rate limit since the last one.
 *
 * AUTH, before the upgrade, as JSON errors: the key from "Authorization: Bearer KEY" or from
 * ?key= (browsers cannot set headers on a WebSocket): 401 missing / unknown key, 404 unknown
 * site, 403 key without read scope for the site; then the handshake (400 / 426) and the
 * connection limit (503 beyond live_connections_max).
 *
 * THREADS AND BOUNDS. Publishing (live_publish) runs on the log writer: under the hub mutex it
 * takes one token per event from each matching socket's bucket (live_events_per_s_max per
 * second, burst one second's worth) and hands the preformatted frame to http_ws_send, which
 * only copies into the socket's bounded queue and wakes its event loop; no token: the event is
 * counted as dropped; a full queue: the socket is cut as a slow consumer. The JSON is built
 * earlier, on the HTTP worker that decoded the request (live_batch_new), and only when a
 * socket is open. The ticker thread (never an event loop) reaps closed sockets, reports drops
 * (at most one message per second per socket) and runs the visitor queries without the mutex.
 */
#include "app/live.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "app/app_int.h"
#include "app/cluster.h"
#include "core/keys.h"
#include "http/http_server.h"
#include "ingest/event.h"
#include "ingest/native.h"
#include "ingest/referrer.h"
#include "ingest/timefmt.h"
#include "ingest/ua.h"
#include "ingest/url.h"
#include "query/query.h"
#include "rollup/tz.h"
#include "store/store.h"
#include "tally/error.h"

#define LIVE_TICK_MS 1000
#define LIVE_COUNT_MS 5000
#define LIVE_PATH_BYTES_MAX 512
#define LIVE_NAME_BYTES_MAX 256
#define LIVE_QUERY_TIMEOUT_MS 2000
#define LIVE_QUERY_MEMORY_MAX (16u << 20)

struct live_sub {
    struct live_sub *next;
    struct http_ws *ws;
    double tokens;
    int64_t refill_ms;
    uint64_t dropped;
    bool dead, need_count;
    char site[STORE_SITE_NAME_BYTES_MAX + 1];
};

struct live {
    struct app *app;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct live_sub *subs;
    _Atomic int open; /* subscribers, including the dead ones not yet reaped */
    bool stop, wake;
    pthread_t thread;
    bool started;
    struct metrics_counter *sent, *dropped, *slow;
};

struct live_item {
    uint32_t site_off, site_len, json_off, json_len;
};

struct live_batch {
    uint32_t n;
    struct live_item *items;
    char *buf;
    size_t len, cap;
};

bool live_active(const struct live *lv)
{
    return lv && atomic_load_explicit(&lv->open, memory_order_relaxed) > 0;
}

/* ---------------------------------------------------------------- batches (HTTP worker) */

static bool buf_put(struct live_batch *b, const char *s, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->buf, cap);
        if (!p) return false;
        b->buf = p;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    return true;
}

/* Appends "key": "value" (JSON-escaped, cut to max bytes) or "key": null when empty. */
static bool put_str(struct live_batch *b, const char *key, const char *v, size_t len, size_t max)
{
    char tmp[LIVE_PATH_BYTES_MAX + 1], esc[(LIVE_PATH_BYTES_MAX + 1) * 6 + 8];
    char head[40];
    int hl = snprintf(head, sizeof head, ", \"%s\": ", key);
    if (!buf_put(b, head, (size_t)hl)) return false;
    if (len == 0) return buf_put(b, "null", 4);
    len = event_text_prefix(v, len, max < LIVE_PATH_BYTES_MAX ? max : LIVE_PATH_BYTES_MAX);
    memcpy(tmp, v, len);
    tmp[len] = 0;
    size_t el = http_json_escape(esc, sizeof esc, tmp);
    return buf_put(b, "\"", 1) && buf_put(b, esc, el) && buf_put(b, "\"", 1);
}

static const char *device_name(uint8_t d)
{
    switch (d) {
    case UA_DEVICE_DESKTOP: return "Desktop";
    case UA_DEVICE_MOBILE: return "Mobile";
    case UA_DEVICE_TABLET: return "Tablet";
    default: return "";
    }
}

static bool batch_add(struct live_batch *b, const struct event *ev, uint8_t device)
{
    struct live_item *it = &b->items[b->n];
    it->json_off = (uint32_t)b->len;
    const char *path = "";
    size_t path_len = 0;
    struct url u;
    if (ev->url.len > 0 && url_parse_any(ev->url.ptr, ev->url.len, &u) == 0) {
        path = u.path;
        path_len = u.path_len;
    }
    const char *ref = "";
    struct url r;
    if (ev->referrer.len > 0 && url_parse_any(ev->referrer.ptr, ev->referrer.len, &r) == 0)
        ref = r.host;
    /* the source, as the consumers will derive it (derive.c: tags of the page URL + Referer) */
    referrer_tags tags;
    memset(&tags, 0, sizeof tags);
    struct url pu;
    struct url_utm utm;
    char tag_ref[128], ref_nt[REFERRER_INPUT_BYTES_MAX + 1];
    bool have_url = ev->url.len > 0 && url_parse(ev->url.ptr, ev->url.len, &pu) == 0;
    if (have_url) {
        url_utm_get(&pu, &utm);
        tags.utm_source = utm.source_len ? utm.source : NULL;
        tags.utm_medium = utm.medium_len ? utm.medium : NULL;
        tags.utm_campaign = utm.campaign_len ? utm.campaign : NULL;
        size_t rl = 0;
        if (pu.query &&
            (url_query_get(pu.query, pu.query_len, "ref", tag_ref, sizeof tag_ref, &rl) ||
             url_query_get(pu.query, pu.query_len, "source", tag_ref, sizeof tag_ref, &rl)) &&
            rl > 0)
            tags.ref = tag_ref;
    }
    size_t rn = ev->referrer.len < REFERRER_INPUT_BYTES_MAX ? ev->referrer.len
                                                            : REFERRER_INPUT_BYTES_MAX;
    if (rn) memcpy(ref_nt, ev->referrer.ptr, rn);
    ref_nt[rn] = 0;
    referrer_info ri;
    referrer_classify(ref_nt, have_url ? pu.host : NULL, &tags, &ri);
    const char *dev = device_name(device);
    char ts[48];
    int tl = snprintf(ts, sizeof ts, ", \"ts\": %lld}", (long long)ev->ts_ms);
    if (!buf_put(b, "{\"type\": \"event\"", 16) ||
        !put_str(b, "site", ev->site.ptr, ev->site.len, STORE_SITE_NAME_BYTES_MAX) ||
        !put_str(b, "name", ev->name.ptr, ev->name.len, LIVE_NAME_BYTES_MAX) ||
        !put_str(b, "path", path, path_len, LIVE_PATH_BYTES_MAX) ||
        !put_str(b, "source", ri.source, strlen(ri.source), LIVE_NAME_BYTES_MAX) ||
        !put_str(b, "referrer", ref, strlen(ref), LIVE_NAME_BYTES_MAX) ||
        !put_str(b, "country", ev->country.ptr, ev->country.len, 8) ||
        !put_str(b, "device", dev, strlen(dev), 16) || !buf_put(b, ts, (size_t)tl))
        return false;
    it->json_len = (uint32_t)(b->len - it->json_off);
    it->site_off = (uint32_t)b->len;
    if (!buf_put(b, ev->site.ptr, ev->site.len)) return false;
    it->site_len = (uint32_t)ev->site.len;
    b->n++;
    return true;
}

struct live_batch *live_batch_new(const struct native_event *evs, const uint8_t *devices,
                                  uint32_t n)
{
    struct live_batch *b = calloc(1, sizeof *b);
    if (!b || !(b->items = calloc(n ? n : 1, sizeof *b->items))) {
        free(b);
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        const struct event *ev = &evs[i].ev;
        if (ev->flags & EVENT_F_ALL) continue;
        if (!batch_add(b, ev, devices[i])) {
            live_batch_free(b);
            return NULL;
        }
    }
    if (b->n == 0) {
        live_batch_free(b);
        return NULL;
    }
    return b;
}

void live_publish_record(struct live *lv, const void *data, size_t len)
{
    if (!live_active(lv)) return;
    struct event_scratch *sc = malloc(sizeof *sc);
    struct native_event ne;
    memset(&ne, 0, sizeof ne);
    if (!sc || event_decode(data, len, &ne.ev, sc) != 0) {
        free(sc);
        return;
    }
    char ua[EVENT_USER_AGENT_BYTES_MAX + 1];
    size_t ul = ne.ev.user_agent.len < sizeof ua - 1 ? ne.ev.user_agent.len : sizeof ua - 1;
    memcpy(ua, ne.ev.user_agent.ptr ? ne.ev.user_agent.ptr : "", ul);
    ua[ul] = 0;
    ua_info ui;
    ua_classify(ua, &ui);
    uint8_t device = (uint8_t)ui.device;
    struct live_batch *b = live_batch_new(&ne, &device, 1);
    live_publish(lv, b);
    live_batch_free(b);
    free(sc);
}

void live_batch_free(struct live_batch *b)
{
    if (!b) return;
    free(b->items);
    free(b->buf);
    free(b);
}

/* ---------------------------------------------------------------- publishing (writer) */

static void refill(struct live *lv, struct live_sub *s, int64_t now)
{
    double rate = (double)app_config(lv->app)->live_events_per_s_max;
    s->tokens += (double)(now - s->refill_ms) * rate / 1000.0;
    if (s->tokens > rate) s->tokens = rate;
    s->refill_ms = now;
}

static void sub_send(struct live *lv, struct live_sub *s, const char *msg, size_t len)
{
    int rc = http_ws_send(s->ws, msg, len);
    if (rc == TALLY_OK) {
        metrics_counter_add(lv->sent, 1);
    } else {
        if (rc == TALLY_EFULL) metrics_counter_add(lv->slow, 1);
        s->dead = true;
    }
}

void live_publish(struct live *lv, const struct live_batch *b)
{
    if (!lv || !b || b->n == 0) return;
    int64_t now = timefmt_mono_ms();
    pthread_mutex_lock(&lv->mu);
    for (struct live_sub *s = lv->subs; s; s = s->next) {
        if (s->dead) continue;
        size_t sl = strlen(s->site);
        bool refilled = false;
        for (uint32_t i = 0; i < b->n && !s->dead; i++) {
            const struct live_item *it = &b->items[i];
            if (it->site_len != sl || memcmp(b->buf + it->site_off, s->site, sl) != 0) continue;
            if (!refilled) {
                refill(lv, s, now);
                refilled = true;
            }
            if (s->tokens < 1.0) {
                s->dropped++;
                metrics_counter_add(lv->dropped, 1);
                continue;
            }
            s->tokens -= 1.0;
            sub_send(lv, s, b->buf + it->json_off, it->json_len);
        }
    }
    pthread_mutex_unlock(&lv->mu);
}

/* ---------------------------------------------------------------- visitor counts (ticker) */

struct count_ctx {
    struct app *app;
    const struct tally_config *cfg;
    uint32_t site_id;
    bool known;
};

/* q_site_fn: the site's zone and id (ticker thread). */
static bool count_site(void *arg, const char *site, struct query *q)
{
    struct count_ctx *c = arg;
    const struct config_site *cs = config_site_find(c->cfg, site);
    const char *name = cs ? cs->name : site;
    uint32_t id = 0;
    if (store_site_id(c->app->store, name, strlen(name), false, &id) != 0) id = 0;
    if ((!cs && id == 0) || strlen(name) > QUERY_SITE_BYTES_MAX) return false;
    const tz_zone *z = NULL;
    if (tz_get(cs && cs->timezone && cs->timezone[0] ? cs->timezone : "UTC", &z) != 0)
        z = tz_utc();
    q->zone = z;
    if (name != q->site) snprintf(q->site, sizeof q->site, "%s", name);
    snprintf(q->currency, sizeof q->currency, "EUR");
    c->site_id = id;
    c->known = true;
    return true;
}

/* The realtime visitors of site from the rollups; -1 when they cannot say. */
static long long count_visitors(struct live *lv, const char *site)
{
    struct count_ctx c = {.app = lv->app, .cfg = app_config(lv->app)};
    const char *names[] = {"site_id"}, *values[] = {site};
    struct query *q = NULL;
    char err[256];
    if (query_parse_v1(Q_API_V1_REALTIME, names, values, 1, timefmt_now_ms(), count_site, &c, &q,
                       err, sizeof err) != 0)
        return -1;
    if (c.site_id == 0) {
        query_free(q);
        return 0; /* a configured site without any data yet */
    }
    struct q_budget bud = {
        .deadline_ms = timefmt_mono_ms() + LIVE_QUERY_TIMEOUT_MS,
        .memory_bytes_max = LIVE_QUERY_MEMORY_MAX,
        .rows_max = 1000,
    };
    char *json = NULL;
    size_t len = 0;
    int rc = query_execute(lv->app->store, c.site_id, q, &bud, Q_PLAN_AUTO, &json, &len, err,
                           sizeof err);
    query_free(q);
    long long v = rc == 0 && json ? strtoll(json, NULL, 10) : -1;
    free(json);
    return v;
}

#define SITES_PER_TICK_MAX 256

static void tick(struct live *lv, bool counts_due)
{
    /* 1. under the mutex: reap, report drops, pick the sites to count */
    static _Thread_local char sites[SITES_PER_TICK_MAX][STORE_SITE_NAME_BYTES_MAX + 1];
    size_t nsites = 0;
    struct live_sub *dead = NULL;
    pthread_mutex_lock(&lv->mu);
    for (struct live_sub **pp = &lv->subs; *pp;) {
        struct live_sub *s = *pp;
        if (!s->dead && http_ws_closed(s->ws)) s->dead = true;
        if (s->dead) {
            *pp = s->next;
            s->next = dead;
            dead = s;
            atomic_fetch_sub_explicit(&lv->open, 1, memory_order_relaxed);
            continue;
        }
        pp = &s->next;
        if (s->dropped) {
            char m[80];
            int n = snprintf(m, sizeof m, "{\"type\": \"dropped\", \"count\": %llu}",
                             (unsigned long long)s->dropped);
            s->dropped = 0;
            sub_send(lv, s, m, (size_t)n);
        }
        if (!counts_due && !s->need_count) continue;
        bool have = false;
        for (size_t i = 0; i < nsites && !have; i++)
            have = strcmp(sites[i], s->site) == 0;
        if (!have && nsites < SITES_PER_TICK_MAX) {
            snprintf(sites[nsites++], sizeof sites[0], "%s", s->site);
            s->need_count = false;
        } else if (have) {
            s->need_count = false;
        }
    }
    pthread_mutex_unlock(&lv->mu);
    while (dead) {
        struct live_sub *n = dead->next;
        http_ws_release(dead->ws, 0);
        free(dead);
        dead = n;
    }
    /* 2. the queries, without the mutex; 3. the answers */
    for (size_t i = 0; i < nsites; i++) {
        long long v = count_visitors(lv, sites[i]);
        char m[STORE_SITE_NAME_BYTES_MAX * 6 + 96], esc[STORE_SITE_NAME_BYTES_MAX * 6 + 8];
        http_json_escape(esc, sizeof esc, sites[i]);
        char num[24];
        snprintf(num, sizeof num, "%lld", v);
        int n = snprintf(m, sizeof m, "{\"type\": \"visitors\", \"site\": \"%s\", \"visitors\": %s}",
                         esc, v < 0 ? "null" : num);
        pthread_mutex_lock(&lv->mu);
        for (struct live_sub *s = lv->subs; s; s = s->next)
            if (!s->dead && strcmp(s->site, sites[i]) == 0) sub_send(lv, s, m, (size_t)n);
        pthread_mutex_unlock(&lv->mu);
    }
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *ticker_main(void *arg)
{
    struct live *lv = arg;
    pthread_setname_np(pthread_self(), "tally-live");
    int64_t next_count = 0;
    for (;;) {
        pthread_mutex_lock(&lv->mu);
        if (!lv->stop && !lv->wake) {
            struct timespec ts;
            deadline_in(&ts, LIVE_TICK_MS);
            pthread_cond_timedwait(&lv->cond, &lv->mu, &ts);
        }
        bool stop = lv->stop;
        lv->wake = false;
        pthread_mutex_unlock(&lv->mu);
        if (stop) break;
        int64_t now = timefmt_mono_ms();
        bool due = now >= next_count;
        if (due) next_count = now + LIVE_COUNT_MS;
        tick(lv, due);
    }
    return NULL;
}

/* ---------------------------------------------------------------- the route (event loop) */

static void respond(struct http_exchange *ex, int status, const char *msg)
{
    if (status == 401) {
        char body[256], esc[200];
        http_json_escape(esc, sizeof esc, msg);
        int n = snprintf(body, sizeof body, "{\"error\": \"%s\"}", esc);
        http_exchange_complete(ex, 401, "application/json", body, (size_t)n,
                               "WWW-Authenticate: Bearer\r\n");
        return;
    }
    http_respond_error(ex, status, msg);
}

static enum key_scope key_scope_for(struct app *app, const struct tally_config *cfg,
                                    const char *key, size_t len, const struct config_site *cs,
                                    bool *known)
{
    enum key_scope a = key_verify(key, len, &cfg->key_digests, NULL);
    enum key_scope b = key_verify(key, len, &app->stored_keys, NULL);
    enum key_scope s = a > b ? a : b;
    *known = s != KEY_SCOPE_NONE;
    for (int i = 0; i < cfg->site_count && !*known; i++) {
        const struct config_list *l = &cfg->sites[i].key_digests;
        if (l->count > 0 && key_verify(key, len, NULL, l) != KEY_SCOPE_NONE) *known = true;
    }
    if (cs && cs->key_digests.count > 0) {
        enum key_scope c = key_verify(key, len, NULL, &cs->key_digests);
        if (c > s) s = c;
    }
    return s;
}

static void on_live(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct live *lv = arg;
    struct app *app = lv->app;
    const struct tally_config *cfg = app_config(app);
    char site[STORE_SITE_NAME_BYTES_MAX + 1], qkey[512];
    size_t site_len = 0, qkey_len = 0;
    int rc = http_request_query(req, "site_id", site, sizeof site, &site_len);
    if (rc != 0 || site_len == 0) {
        respond(ex, 400, rc == TALLY_ETOOBIG ? "site_id: too long" : "missing site_id");
        return;
    }
    const char *key = NULL;
    size_t key_len = 0;
    const char *auth = http_request_header(req, "authorization");
    if (auth) {
        if (strncasecmp(auth, "Bearer ", 7) != 0) {
            respond(ex, 401, "Authorization must be 'Bearer KEY'");
            return;
        }
        key = auth + 7;
        while (*key == ' ')
            key++;
        key_len = strlen(key);
        while (key_len > 0 && (key[key_len - 1] == ' ' || key[key_len - 1] == '\t'))
            key_len--;
    } else if (http_request_query(req, "key", qkey, sizeof qkey, &qkey_len) == 0 && qkey_len) {
        key = qkey;
        key_len = qkey_len;
    }
    if (!key || key_len == 0) {
        respond(ex, 401, "missing API key: send Authorization: Bearer KEY or ?key=KEY");
        return;
    }
    const struct config_site *cs = config_site_find(cfg, site);
    bool known;
    enum key_scope scope = key_scope_for(app, cfg, key, key_len, cs, &known);
    if (!known) {
        respond(ex, 401, "invalid API key");
        return;
    }
    const char *name = cs ? cs->name : site;
    if (app->cluster) {
        uint32_t p = cluster_partition_of(name, strlen(name), cluster_partitions(app->cluster));
        if (!cluster_owns(app->cluster, p)) {
            const char *owner = cluster_owner_url(app->cluster, p);
            char esc[600], eo[600], body[1400];
            char msg[STORE_SITE_NAME_BYTES_MAX + 128];
            snprintf(msg, sizeof msg, "site '%s' (partition %u) is served by the node that owns "
                     "it: connect there", name, p);
            http_json_escape(esc, sizeof esc, msg);
            http_json_escape(eo, sizeof eo, owner ? owner : "");
            int n = owner ? snprintf(body, sizeof body, "{\"error\": \"%s\", \"owner\": \"%s\"}",
                                     esc, eo)
                          : snprintf(body, sizeof body, "{\"error\": \"%s\", \"owner\": null}",
                                     esc);
            http_exchange_complete(ex, 421, "application/json", body, (size_t)n, NULL);
            return;
        }
    }
    uint32_t id = 0;
    /* a point lookup in the site registry (cached by the store), not a scan */
    if (!cs && (!cfg->auto_sites || store_site_id(app->store, name, strlen(name), false, &id) ||
                id == 0)) {
        char msg[STORE_SITE_NAME_BYTES_MAX + 32];
        snprintf(msg, sizeof msg, "unknown site '%s'", name);
        respond(ex, 404, msg);
        return;
    }
    if (!key_scope_allows(scope, KEY_SCOPE_READ)) {
        char msg[STORE_SITE_NAME_BYTES_MAX + 64];
        if (scope == KEY_SCOPE_WRITE)
            snprintf(msg, sizeof msg, "this key has write scope; live needs read or admin scope");
        else
            snprintf(msg, sizeof msg, "this key is not valid for site '%s'", name);
        respond(ex, 403, msg);
        return;
    }
    const char *why;
    int status = http_ws_check(req, &why);
    if (status) {
        if (status == 426) {
            char body[160], esc[128];
            http_json_escape(esc, sizeof esc, why);
            int n = snprintf(body, sizeof body, "{\"error\": \"%s\"}", esc);
            http_exchange_complete(ex, 426, "application/json", body, (size_t)n,
                                   "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
        } else {
            respond(ex, status, why);
        }
        return;
    }
    struct live_sub *s = calloc(1, sizeof *s);
    if (!s) {
        respond(ex, 503, "out of memory; retry later");
        return;
    }
    snprintf(s->site, sizeof s->site, "%s", name);
    pthread_mutex_lock(&lv->mu);
    bool full = lv->stop || atomic_load(&lv->open) >= cfg->live_connections_max;
    if (!full) atomic_fetch_add(&lv->open, 1); /* the slot is taken before the upgrade */
    pthread_mutex_unlock(&lv->mu);
    if (full) {
        free(s);
        http_exchange_complete(ex, 503, "application/json",
                               "{\"error\": \"too many live connections; retry later\"}", 51,
                               "Retry-After: 5\r\n");
        return;
    }
    struct http_ws *ws;
    if (http_ws_accept(ex, NULL, NULL, &ws) != 0) {
        atomic_fetch_sub(&lv->open, 1);
        free(s);
        return;
    }
    s->ws = ws;
    s->tokens = (double)cfg->live_events_per_s_max;
    s->refill_ms = timefmt_mono_ms();
    s->need_count = true;
    pthread_mutex_lock(&lv->mu);
    s->next = lv->subs;
    lv->subs = s;
    lv->wake = true; /* the first count at once */
    pthread_cond_signal(&lv->cond);
    pthread_mutex_unlock(&lv->mu);
}

static double open_gauge(void *arg)
{
    return (double)atomic_load(&((struct live *)arg)->open);
}

int live_routes(struct app *app)
{
    struct live *lv = calloc(1, sizeof *lv);
    if (!lv) return TALLY_ENOMEM;
    lv->app = app;
    pthread_mutex_init(&lv->mu, NULL);
    pthread_cond_init(&lv->cond, NULL);
    lv->sent = metrics_counter(app->metrics, "tally_live_messages_total",
                               "messages pushed on live WebSockets", NULL, 0);
    lv->dropped = metrics_counter(app->metrics, "tally_live_events_dropped_total",
                                  "live events left out by the per-socket rate limit", NULL, 0);
    lv->slow = metrics_counter(app->metrics, "tally_live_slow_consumers_total",
                               "live WebSockets cut because they did not read fast enough",
                               NULL, 0);
    metrics_gauge_fn(app->metrics, "tally_live_connections", "open live WebSockets", NULL,
                     open_gauge, lv);
    if (pthread_create(&lv->thread, NULL, ticker_main, lv) != 0) {
        pthread_mutex_destroy(&lv->mu);
        pthread_cond_destroy(&lv->cond);
        free(lv);
        return TALLY_EIO;
    }
    lv->started = true;
    app->live = lv;
    struct http_route r = {
        .methods = HTTP_M(HTTP_GET),
        .path = "/api/v1/live",
        .name = "api_v1_live",
        .handler = on_live,
        .arg = lv,
    };
    return http_server_route(app->http, &r);
}

void live_free(struct live *lv)
{
    if (!lv) return;
    pthread_mutex_lock(&lv->mu);
    lv->stop = true;
    pthread_cond_signal(&lv->cond);
    pthread_mutex_unlock(&lv->mu);
    if (lv->started) pthread_join(lv->thread, NULL);
    while (lv->subs) {
        struct live_sub *s = lv->subs;
        lv->subs = s->next;
        http_ws_release(s->ws, 1001);
        free(s);
    }
    lv->app->live = NULL;
    pthread_mutex_destroy(&lv->mu);
    pthread_cond_destroy(&lv->cond);
    free(lv);
}
