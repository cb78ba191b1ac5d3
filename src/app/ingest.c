/*
 * Native ingest: POST /v1/events (API.md §3.1), end to end.
 *
 * On the connection's worker thread: authenticate (optional Bearer key), decode and validate the
 * body (native.h: all-or-nothing), resolve every event's site, take rate-limit tokens for the
 * whole request (unauthenticated only), then enrich each event (visitor hash from the daily salt
 * or the client's id, geo from the client IP, bot and host verdicts as flags) and encode it
 * (event.h). All records of the request go to the log in ONE evlog_append, so they get
 * consecutive offsets and one completion. The worker does not wait: the log writer calls
 * ingest_done after the group commit (fdatasync under fsync = always), which completes the
 * exchange with 202 {"accepted": N} — http_exchange_complete hands it back to the worker.
 *
 * Invariant: 202 is only ever sent from ingest_done with err == 0, i.e. after the log reported
 * the records committed. Every other path answers an error and appends nothing.
 * The client IP is used for the visitor hash, geo and the rate limit, and is never stored.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app/app_int.h"
#include "app/cluster.h"
#include "app/ingest.h"
#include "app/live.h"
#include "core/decimal.h"
#include "core/keys.h"
#include "http/http_server.h"
#include "ingest/event.h"
#include "ingest/native.h"
#include "ingest/timefmt.h"
#include "ingest/ua.h"
#include "ingest/url.h"
#include "tally/error.h"

#define INGEST_ENCODE_CHUNK_BYTES (256 * 1024)

/* Per worker thread, reused across requests. */
struct ingest_tls {
    struct native_ctx *native;
    uint8_t *enc;
    size_t enc_cap;
    struct seglog_rec *recs;
    uint32_t *parts; /* each record's partition (JetStream; cluster.h) */
    size_t recs_cap;
};

static pthread_key_t g_tls_key;
static pthread_once_t g_tls_once = PTHREAD_ONCE_INIT;

static void tls_free(void *p)
{
    struct ingest_tls *t = p;
    if (!t) return;
    native_ctx_free(t->native);
    free(t->enc);
    free(t->recs);
    free(t->parts);
    free(t);
}

static void tls_key_make(void)
{
    pthread_key_create(&g_tls_key, tls_free);
}

void ingest_thread_state_init(void)
{
    pthread_once(&g_tls_once, tls_key_make);
}

static struct ingest_tls *tls_get(void)
{
    ingest_thread_state_init();
    struct ingest_tls *t = pthread_getspecific(g_tls_key);
    if (t) return t;
    t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->native = native_ctx_new();
    if (!t->native) {
        free(t);
        return NULL;
    }
    pthread_setspecific(g_tls_key, t);
    return t;
}

static void drop(struct app *app, enum drop_reason r, uint64_t n)
{
    metrics_counter_add(app->events_dropped[r], n);
}

/* The visitor's IP: the TCP peer, or from X-Forwarded-For when the peer is a trusted proxy
 * (the rightmost address that is not itself a trusted proxy). Writes the text into out. */
static void client_ip(struct app *app, const struct http_request *req, char *out, size_t cap,
                      uint8_t ip16[16])
{
    snprintf(out, cap, "%s", req->client_ip);
    if (cidr_parse_ip(out, ip16) != 0) memset(ip16, 0, 16);
    if (app->trusted_proxies.count == 0 || !cidr_list_match(&app->trusted_proxies, ip16)) return;
    const char *xff = http_request_header(req, "x-forwarded-for");
    if (!xff) return;
    const char *end = xff + strlen(xff);
    while (end > xff) {
        const char *start = end;
        while (start > xff && start[-1] != ',') start--;
        const char *a = start, *b = end;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
        char cand[64];
        uint8_t cand16[16];
        size_t n = (size_t)(b - a);
        if (n == 0 || n >= sizeof cand) return;
        memcpy(cand, a, n);
        cand[n] = 0;
        if (cidr_parse_ip(cand, cand16) != 0) return; /* junk: keep the last good address */
        snprintf(out, cap, "%s", cand);
        memcpy(ip16, cand16, 16);
        if (!cidr_list_match(&app->trusted_proxies, cand16)) return;
        end = start > xff ? start - 1 : xff;
    }
}

static void respond_json_error(struct http_exchange *ex, int status, const char *msg, int index,
                               const char *extra_headers)
{
    char body[NATIVE_ERROR_BYTES * 2 + 64];
    char esc[NATIVE_ERROR_BYTES * 2];
    http_json_escape(esc, sizeof esc, msg);
    int n = index >= 0 ? snprintf(body, sizeof body, "{\"error\": \"%s\", \"index\": %d}", esc,
                                  index)
                       : snprintf(body, sizeof body, "{\"error\": \"%s\"}", esc);
    http_exchange_complete(ex, status, "application/json", body, (size_t)n, extra_headers);
}

struct pending {
    struct app *app;
    struct http_exchange *ex;
    struct ingest_answer ans;
    uint32_t count;
    uint32_t bots;
    uint32_t hosts;
    struct live_batch *live; /* summaries for GET /api/v1/live, or NULL (live.h) */
};

/* On the log's completion thread: short, non-blocking (http_exchange_complete only queues). */
/* The 503 text for a failed append: names the backend (JetStream: a publish timeout means no
 * acknowledgement within publish_timeout_ms). */
static void log_failure_text(const struct app *app, int err, char *msg, size_t cap)
{
    if (app->js && err == TALLY_ETIMEDOUT)
        snprintf(msg, cap, "JetStream did not acknowledge the events within publish_timeout_ms "
                 "(no quorum or overloaded); retry later");
    else if (app->js)
        snprintf(msg, cap, "JetStream cannot take the events: %s; retry later",
                 tally_strerror(err));
    else
        snprintf(msg, cap, "the event log cannot take writes: %s; retry later",
                 tally_strerror(err));
}

static void ingest_done(void *arg, int err, uint64_t first_offset)
{
    struct pending *p = arg;
    (void)first_offset;
    if (err == 0) {
        metrics_counter_add(p->app->events_accepted, p->count);
        drop(p->app, DROP_BOT, p->bots);
        drop(p->app, DROP_HOST, p->hosts);
        live_publish(p->app->live, p->live); /* committed: push to live sockets */
        p->ans.ok(p->ans.arg, p->ex, p->count);
    } else {
        char msg[200];
        log_failure_text(p->app, err, msg, sizeof msg);
        drop(p->app, DROP_UNAVAILABLE, p->count);
        p->ans.error(p->ans.arg, p->ex, 503, msg, -1,
                     err == TALLY_ENOSPC ? "Retry-After: 5\r\n" : "Retry-After: 1\r\n");
    }
    live_batch_free(p->live);
    free(p);
}

static void refuse_append(struct app *app, struct http_exchange *ex, int rc, uint32_t n,
                          const struct ingest_answer *a)
{
    drop(app, DROP_UNAVAILABLE, n);
    switch (rc) {
    case TALLY_EFULL:
        a->error(a->arg, ex, 503, "ingest queue full; retry later", -1, "Retry-After: 1\r\n");
        return;
    case TALLY_ENOSPC:
        a->error(a->arg, ex, 503, "disk full: events cannot be stored; retry later", -1,
                 "Retry-After: 5\r\n");
        return;
    case TALLY_ECLOSED:
        a->error(a->arg, ex, 503, "server is shutting down; retry later", -1,
                 "Retry-After: 1\r\n");
        return;
    case TALLY_ETOOBIG:
        a->error(a->arg, ex, 413, "request too large for one log append", -1, NULL);
        return;
    default: {
        char msg[200];
        log_failure_text(app, rc, msg, sizeof msg);
        a->error(a->arg, ex, 503, msg, -1, "Retry-After: 1\r\n");
    }
    }
}

/* The native endpoint's answers: 202 {"accepted": N}, errors as {"error", "index"}. */
static void native_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    (void)arg;
    /* Formatted by hand: this runs once per request on the log's completion thread, where
     * snprintf was ~1% of the server's CPU under single-event load. */
    static const char head[] = "{\"accepted\": ";
    char body[sizeof head + DECIMAL_U64_BYTES_MAX + 1];
    memcpy(body, head, sizeof head - 1);
    char *end = decimal_u64(body + sizeof head - 1, accepted);
    *end++ = '}';
    http_exchange_complete(ex, 202, "application/json", body, (size_t)(end - body), NULL);
}

static void native_error(void *arg, struct http_exchange *ex, int status, const char *msg,
                         int index, const char *extra_headers)
{
    (void)arg;
    respond_json_error(ex, status, msg, index, extra_headers);
}

static const struct ingest_answer native_answer = {native_ok, native_error, NULL};

/* Authorization: none (0), or a verified write/admin key (*privileged, *key_site set). Answers
 * 401/403 itself and returns -1 when the key is missing its scope or invalid. */
static int authorize(struct app *app, const struct http_request *req, struct http_exchange *ex,
                     bool *privileged, const struct config_site **key_site)
{
    *privileged = false;
    *key_site = NULL;
    const char *auth = http_request_header(req, "authorization");
    if (!auth) return 0;
    if (strncasecmp(auth, "Bearer ", 7) != 0) {
        respond_json_error(ex, 401, "Authorization must be 'Bearer KEY'", -1, NULL);
        return -1;
    }
    const char *key = auth + 7;
    while (*key == ' ') key++;
    size_t len = strlen(key);
    const struct tally_config *cfg = app_config(app); /* one generation for the request */
    enum key_scope scope = key_verify(key, len, &cfg->key_digests, NULL);
    for (int i = 0; scope == KEY_SCOPE_NONE && i < cfg->site_count; i++) {
        const struct config_site *s = &cfg->sites[i];
        if (s->key_digests.count == 0) continue;
        scope = key_verify(key, len, NULL, &s->key_digests);
        if (scope != KEY_SCOPE_NONE) *key_site = s;
    }
    if (scope == KEY_SCOPE_NONE) {
        respond_json_error(ex, 401, "invalid API key", -1, NULL);
        return -1;
    }
    if (!key_scope_allows(scope, KEY_SCOPE_WRITE)) {
        respond_json_error(ex, 403, "this key has read scope; ingest with a key needs write "
                           "or admin scope", -1, NULL);
        return -1;
    }
    *privileged = true;
    return 0;
}

static int ensure_capacity(struct ingest_tls *t, size_t enc_need, size_t recs_need)
{
    if (enc_need > t->enc_cap) {
        size_t cap = t->enc_cap ? t->enc_cap : INGEST_ENCODE_CHUNK_BYTES;
        while (cap < enc_need) cap *= 2;
        uint8_t *p = realloc(t->enc, cap);
        if (!p) return TALLY_ENOMEM;
        t->enc = p;
        t->enc_cap = cap;
    }
    if (recs_need > t->recs_cap) {
        struct seglog_rec *r = realloc(t->recs, recs_need * sizeof *r);
        if (!r) return TALLY_ENOMEM;
        t->recs = r;
        uint32_t *pp = realloc(t->parts, recs_need * sizeof *pp);
        if (!pp) return TALLY_ENOMEM;
        t->parts = pp;
        t->recs_cap = recs_need;
    }
    return 0;
}

/* The request's User-Agent, at most EVENT_USER_AGENT_BYTES_MAX bytes cut on a character
 * boundary. A User-Agent that is not valid UTF-8 is treated as absent (and so as a bot, like an
 * empty one): browsers send ASCII, and a linear check keeps hostile headers cheap. */
static struct event_str request_user_agent(const struct http_request *req)
{
    const char *ua = http_request_header(req, "user-agent");
    struct event_str s = {"", 0};
    if (!ua) return s;
    size_t len = strlen(ua);
    if (!event_text_valid(ua, len)) return s;
    s.ptr = ua;
    s.len = event_text_prefix(ua, len, EVENT_USER_AGENT_BYTES_MAX);
    return s;
}

static void on_events(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    const struct tally_config *cfg = app_config(app);
    struct ingest_tls *t = tls_get();
    if (!t) {
        respond_json_error(ex, 503, "out of memory; retry later", -1, "Retry-After: 1\r\n");
        return;
    }
    bool privileged;
    const struct config_site *key_site;
    if (authorize(app, req, ex, &privileged, &key_site) != 0) {
        drop(app, DROP_INVALID, 1);
        return;
    }
    const char *ct = http_request_header(req, "content-type");
    struct native_opts opts = {
        .now_ms = timefmt_now_ms(),
        .privileged = privileged,
        .ndjson = ct && native_content_type_is_ndjson(ct, strlen(ct)),
        .events_max = (uint32_t)cfg->events_per_request_max,
        .body_bytes_max = (size_t)cfg->body_decoded_bytes_max,
    };
    struct native_event *evs;
    int n = native_decode(t->native, req->body, req->body_len, &opts, &evs);
    if (n < 0) {
        const struct native_error *e = native_ctx_error(t->native);
        drop(app, DROP_INVALID, 1);
        respond_json_error(ex, e->http_status ? e->http_status : 400, e->message, e->index, NULL);
        return;
    }

    struct ingest_opts o = {.privileged = privileged, .key_site = key_site};
    ingest_submit(app, req, ex, evs, (uint32_t)n, &o, &native_answer);
}

void ingest_submit(struct app *app, const struct http_request *req, struct http_exchange *ex,
                   struct native_event *evs, uint32_t count, const struct ingest_opts *o,
                   const struct ingest_answer *ans)
{
    struct ingest_tls *t = tls_get();
    if (!t) {
        ans->error(ans->arg, ex, 503, "out of memory; retry later", -1, "Retry-After: 1\r\n");
        return;
    }
    const int n = (int)count;
    const bool privileged = o->privileged;
    const struct config_site *key_site = o->key_site;
    /* Sites first (404 before rate limiting: a wrong site is not worth tokens). */
    const struct site *sites_of[n > 0 ? n : 1];
    for (int i = 0; i < n; i++) {
        char name[EVENT_SITE_BYTES_MAX + 1];
        size_t len = evs[i].ev.site.len;
        memcpy(name, evs[i].ev.site.ptr, len);
        name[len] = 0;
        int rc = sites_resolve(app->sites, name, &sites_of[i]);
        if (rc == 0 && key_site && sites_of[i]->config != key_site) {
            char msg[EVENT_SITE_BYTES_MAX + 80];
            snprintf(msg, sizeof msg, "field 'site': this key is not valid for site '%s'",
                     name);
            drop(app, DROP_INVALID, (uint64_t)n);
            ans->error(ans->arg, ex, 403, msg, i, NULL);
            return;
        }
        if (rc != 0) {
            char msg[EVENT_SITE_BYTES_MAX + 120];
            int status = 400;
            if (rc == TALLY_ENOENT) {
                status = 404;
                snprintf(msg, sizeof msg, "field 'site': unknown site '%s'", name);
                drop(app, DROP_UNKNOWN_SITE, (uint64_t)n);
            } else if (rc == TALLY_EFULL) {
                status = 503;
                snprintf(msg, sizeof msg, "field 'site': too many sites; '%s' cannot be "
                         "created", name);
                drop(app, DROP_UNAVAILABLE, (uint64_t)n);
            } else {
                snprintf(msg, sizeof msg, "field 'site': '%s' is not a valid site name (a "
                         "lowercase domain like example.com, or a configured id)", name);
                drop(app, DROP_INVALID, (uint64_t)n);
            }
            ans->error(ans->arg, ex, status, msg, i, NULL);
            return;
        }
    }

    char ip_text[64];
    uint8_t ip16[16];
    client_ip(app, req, ip_text, sizeof ip_text, ip16);
    if (!privileged && !o->no_rate_limit) {
        int64_t wait_s = ratelimit_take(app->ratelimit, ip16, n, timefmt_mono_ms());
        if (wait_s != 0) {
            char hdr[64];
            snprintf(hdr, sizeof hdr, "Retry-After: %lld\r\n",
                     (long long)(wait_s > 0 ? wait_s : 60));
            drop(app, DROP_RATE_LIMIT, (uint64_t)n);
            ans->error(ans->arg, ex, 429, wait_s > 0 ? "rate limit exceeded for this client; "
                               "retry later" : "more events in one request than this client's "
                               "rate-limit burst", -1, hdr);
            return;
        }
    }

    struct event_str req_ua = request_user_agent(req);
    struct pending *p = calloc(1, sizeof *p);
    if (!p || ensure_capacity(t, 0, (size_t)n) != 0) {
        free(p);
        ans->error(ans->arg, ex, 503, "out of memory; retry later", -1, "Retry-After: 1\r\n");
        return;
    }
    size_t used = 0;
    uint8_t devices[n > 0 ? n : 1]; /* for the live summaries */
    for (int i = 0; i < n; i++) {
        struct event *ev = &evs[i].ev;
        const struct site *site = sites_of[i];
        ev->site.ptr = site->name;
        ev->site.len = strlen(site->name);
        t->parts[i] = app->cluster ? cluster_partition_of(ev->site.ptr, ev->site.len,
                                                          cluster_partitions(app->cluster))
                                   : 0;
        if (ev->user_agent.len == 0) ev->user_agent = req_ua;
        const char *ip = ip_text;
        char ev_ip[64];
        if (evs[i].ip.len > 0 && evs[i].ip.len < sizeof ev_ip) {
            memcpy(ev_ip, evs[i].ip.ptr, evs[i].ip.len);
            ev_ip[evs[i].ip.len] = 0;
            ip = ev_ip;
        }
        if (evs[i].visitor_id.len > 0)
            ev->visitor = visitor_hash_client(app->salts, ev->site.ptr, ev->site.len,
                                              evs[i].visitor_id.ptr, evs[i].visitor_id.len);
        else
            ev->visitor = visitor_hash_anonymous(app->salts, ev->ts_ms, ev->site.ptr,
                                                 ev->site.len, ip, strlen(ip),
                                                 ev->user_agent.ptr, ev->user_agent.len);
        geo_info gi;
        if (app->geo && geo_lookup(app->geo, ip, &gi) == 0) {
            ev->country = (struct event_str){gi.country, strlen(gi.country)};
            ev->region = (struct event_str){gi.region, strlen(gi.region)};
            ev->city = (struct event_str){gi.city, event_text_prefix(gi.city, strlen(gi.city),
                                                                      EVENT_CITY_BYTES_MAX)};
        }
        char ua_buf[EVENT_USER_AGENT_BYTES_MAX + 1];
        memcpy(ua_buf, ev->user_agent.ptr, ev->user_agent.len);
        ua_buf[ev->user_agent.len] = 0;
        ua_info ui;
        ua_classify(ua_buf, &ui);
        devices[i] = (uint8_t)ui.device;
        if (ui.bot != BOTS_HUMAN) {
            ev->flags |= EVENT_F_BOT;
            p->bots++;
        }
        if (ev->url.len > 0) {
            struct url u;
            if (url_parse(ev->url.ptr, ev->url.len, &u) == 0 &&
                !sites_host_allowed(site, u.host)) {
                ev->flags |= EVENT_F_HOST_NOT_ALLOWED;
                p->hosts++;
            }
        }
        if (ensure_capacity(t, used + EVENT_ENCODED_BYTES_MAX, (size_t)n) != 0) {
            free(p);
            ans->error(ans->arg, ex, 503, "out of memory; retry later", -1, "Retry-After: 1\r\n");
            return;
        }
        int len = event_encode(ev, t->enc + used, t->enc_cap - used);
        if (len < 0) {
            free(p);
            drop(app, DROP_INVALID, (uint64_t)n);
            ans->error(ans->arg, ex, 400, "event cannot be stored (invalid after enrichment)", i,
                               NULL);
            return;
        }
        t->recs[i] = (struct seglog_rec){NULL, (uint32_t)len, ev->ts_ms};
        t->recs[i].data = (const void *)(uintptr_t)used; /* fixed up below (buffer may move) */
        used += (size_t)len;
    }
    for (int i = 0; i < n; i++) t->recs[i].data = t->enc + (uintptr_t)t->recs[i].data;
    p->app = app;
    p->ex = ex;
    p->ans = *ans;
    p->count = (uint32_t)n;
    /* With JetStream the live view is fed from the streams (live_publish_record), so that it
     * also shows what other nodes ingested. */
    if (!app->js && live_active(app->live)) p->live = live_batch_new(evs, devices, (uint32_t)n);
    int rc = evlog_append(&app->sink, t->recs, t->parts, (uint32_t)n, ingest_done, p);
    if (rc != 0) {
        live_batch_free(p->live);
        free(p);
        refuse_append(app, ex, rc, (uint32_t)n, ans);
    }
}

void ingest_client_ip(struct app *app, const struct http_request *req, char *out, size_t cap)
{
    uint8_t ip16[16];
    client_ip(app, req, out, cap, ip16);
}

int ingest_routes(struct app *app)
{
    struct http_route r = {
        .methods = HTTP_M(HTTP_POST),
        .path = "/v1/events",
        .cors = true,
        .name = "v1_events",
        .handler = on_events,
        .arg = app,
    };
    return http_server_route(app->http, &r);
}
