/*
 * peer_plausible: Plausible's Events API, POST /api/event (plausible.io/docs/events-api), as
 * its tracker script, its npm package (@plausible-analytics/tracker) and server-side senders
 * use it. The body is one JSON object (Content-Type application/json or text/plain: the tracker
 * sends text/plain so that browsers need no preflight; the type is not checked).
 *
 * FIELDS. Long and short keys, the short one winning when both are present and it is neither
 * null nor false (Plausible reads `body["n"] || body["name"]`):
 *   n/name      string (or integer), required, <= 120 bytes; "pageview" is a pageview,
 *               "engagement" (time on page and scroll depth, sent by the tracker when a page is
 *               left) needs an integer sd (0..100, larger is 100) or e (ms); it is stored with
 *               props scroll_depth and engagement_time and is never counted as an event
 *   u/url       string, required, <= 2000 bytes, any scheme but data:
 *   d/domain    string: one site, or several separated by commas (one event per site, as
 *               Plausible records one per domain); each is trimmed and a leading "www." is
 *               removed; absent: the url's host; a site is a Tally site name or one of its ids
 *   r/referrer  string, cut to 2000 bytes
 *   m/meta/p/props  object, or a string holding a JSON object; loose values are skipped
 *               (peer_util.h); over 30 pairs the rest is discarded
 *   revenue/$   {"amount": number or decimal string, "currency": "EUR"} or that object as a
 *               JSON string; an invalid one is discarded and the event kept (as documented)
 *   i/interactive  bool, default true
 *   w/screen_width  integer, kept as the screen width hint
 *   h/hashMode, v (tracker version) are accepted and ignored: the canonical event has no
 *   hash-routing flag yet, so a hash-routed page is counted under its path without #fragment.
 * Unknown keys are ignored (the tracker adds new ones over time). The event time is the
 * server's arrival time: Plausible accepts no client timestamps.
 *
 * HEADERS. User-Agent is the visitor's (no header: ingest's rule, a bot). X-Forwarded-For: as
 * Plausible documents for server-side senders, the first valid address of the list is the
 * visitor's and feeds the visitor hash and geo, whoever sends it; the per-IP rate limit keeps
 * using the connection's address (or, behind trusted proxies, ingest's rightmost rule), so a
 * spoofed header cannot escape it. X-Debug-Request: true answers 200 with that IP and records
 * nothing.
 *
 * ANSWERS, as Plausible's controller: 202 "ok" (text/plain) once the events are durably in the
 * log; a domain that is not a site is dropped (not appended) and counted in an
 * x-plausible-dropped header, still 202 — so an unknown domain alone gives 202 with nothing
 * appended; invalid input is 400 {"errors": {"field": ["message"]}} with Plausible's field names
 * and messages (request, event_name, url, domain, props) and nothing appended. Tally's own
 * refusals keep their status with a Plausible-shaped body: 429 (per-IP rate limit, with
 * Retry-After), 503 (log unavailable), 413.
 *
 * THREADS. The handler runs on an HTTP worker; it keeps the parsed tree until ingest_submit
 * returns (the events point into it), and the answer callbacks only complete the exchange.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "app/ingest.h"
#include "app/peer_util.h"
#include "app/peers.h"
#include "core/json_arena.h"
#include "ingest/timefmt.h"
#include "ingest/url.h"
#include "tally/error.h"

#define PLAUSIBLE_DOMAINS_MAX 32
#define PLAUSIBLE_URL_BYTES_MAX 2000
#define PLAUSIBLE_REFERRER_BYTES_MAX 2000
#define PLAUSIBLE_ERRORS_MAX 8
#define PLAUSIBLE_ENGAGEMENT_MS_MAX (30LL * 24 * 3600 * 1000)

struct perrs {
    const char *field[PLAUSIBLE_ERRORS_MAX];
    char msg[PLAUSIBLE_ERRORS_MAX][200];
    int n;
};

static void perr(struct perrs *e, const char *field, const char *msg)
{
    if (e->n == PLAUSIBLE_ERRORS_MAX) return;
    e->field[e->n] = field;
    snprintf(e->msg[e->n], sizeof e->msg[0], "%s", msg);
    e->n++;
}

/* {"errors": {"field": ["msg", ...], ...}} with the fields in alphabetical order (as Plausible's
 * small maps serialize). */
static void respond_errors(struct http_exchange *ex, int status, const struct perrs *e,
                           const char *extra_headers)
{
    char body[4096];
    size_t n = (size_t)snprintf(body, sizeof body, "{\"errors\":{");
    bool done[PLAUSIBLE_ERRORS_MAX] = {0};
    bool first_field = true;
    for (;;) {
        int pick = -1;
        for (int i = 0; i < e->n; i++)
            if (!done[i] && (pick < 0 || strcmp(e->field[i], e->field[pick]) < 0)) pick = i;
        if (pick < 0) break;
        n += (size_t)snprintf(body + n, sizeof body - n, "%s\"%s\":[", first_field ? "" : ",",
                              e->field[pick]);
        first_field = false;
        bool first = true;
        for (int i = 0; i < e->n; i++) {
            if (done[i] || strcmp(e->field[i], e->field[pick]) != 0) continue;
            char esc[400];
            http_json_escape(esc, sizeof esc, e->msg[i]);
            n += (size_t)snprintf(body + n, sizeof body - n, "%s\"%s\"", first ? "" : ",", esc);
            first = false;
            done[i] = true;
        }
        n += (size_t)snprintf(body + n, sizeof body - n, "]");
    }
    n += (size_t)snprintf(body + n, sizeof body - n, "}}");
    http_exchange_complete(ex, status, "application/json", body, n, extra_headers);
}

static void respond_ok(struct http_exchange *ex, uint32_t dropped)
{
    char hdr[64] = "";
    if (dropped) snprintf(hdr, sizeof hdr, "x-plausible-dropped: %u\r\n", dropped);
    http_exchange_complete(ex, 202, "text/plain; charset=utf-8", "ok", 2, dropped ? hdr : NULL);
}

/* Answers: arg carries the number of domains dropped before the append. */
static void plausible_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    (void)accepted;
    respond_ok(ex, (uint32_t)(uintptr_t)arg);
}

static void plausible_error(void *arg, struct http_exchange *ex, int status, const char *msg,
                            int index, const char *extra_headers)
{
    (void)index;
    if (status == 404) { /* a site vanished between our lookup and ingest's: dropped */
        respond_ok(ex, (uint32_t)(uintptr_t)arg + 1);
        return;
    }
    struct perrs e = {.n = 0};
    perr(&e, "request", msg);
    respond_errors(ex, status, &e, extra_headers);
}

/* body[a] || body[b], Elixir style: a value that is absent, null or false yields to b. */
static const cJSON *pick(const cJSON *root, const char *a, const char *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, a);
    if (v && !cJSON_IsNull(v) && !cJSON_IsFalse(v)) return v;
    v = cJSON_GetObjectItemCaseSensitive(root, b);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* An integer (number without fraction, or a string of digits) in [0, max]; -1 otherwise. */
static long long int_field(const cJSON *v, long long max, bool clamp)
{
    double d;
    if (cJSON_IsNumber(v)) {
        d = v->valuedouble;
    } else if (cJSON_IsString(v) && v->valuestring && v->valuestring[0]) {
        char *end;
        d = strtod(v->valuestring, &end);
        if (*end || strchr(v->valuestring, '.') || strchr(v->valuestring, 'e') ||
            strchr(v->valuestring, 'E'))
            return -1;
    } else {
        return -1;
    }
    if (!isfinite(d) || d != floor(d) || d < 0) return -1;
    if (d > (double)max) return clamp ? max : -1;
    return (long long)d;
}

/* A JSON string holding an object, parsed (caller frees), or NULL. */
static cJSON *parse_embedded(const cJSON *v)
{
    if (!cJSON_IsString(v) || !v->valuestring) return NULL;
    cJSON *o = json_arena_parse(v->valuestring, strlen(v->valuestring));
    if (o && !cJSON_IsObject(o)) {
        json_arena_delete(o);
        o = NULL;
    }
    return o;
}

/* Everything decoded from one request, shared by its per-domain events. */
struct decoded {
    struct event ev; /* without site */
    struct peer_props props;
    char name_num[24];
    char sd_text[8], e_text[24];
    cJSON *props_doc, *revenue_doc; /* embedded JSON strings, parsed (owned) */
    const char *domains;            /* d/domain, trimmed, NULL: from the URL */
    size_t domains_len;
    char url_host[URL_HOST_BYTES_MAX + 1];
};

static void decode_name(const cJSON *root, struct decoded *d, struct perrs *e)
{
    const cJSON *v = pick(root, "n", "name");
    if (!v) {
        perr(e, "event_name", "can't be blank");
        return;
    }
    if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble) &&
        fabs(v->valuedouble) < 1e15) {
        snprintf(d->name_num, sizeof d->name_num, "%.0f", v->valuedouble);
        d->ev.name = (struct event_str){d->name_num, strlen(d->name_num)};
        return;
    }
    if (!cJSON_IsString(v) || !v->valuestring) {
        perr(e, "event_name", "is invalid");
        return;
    }
    if (peer_blank(v->valuestring)) {
        perr(e, "event_name", "can't be blank");
        return;
    }
    size_t n = strlen(v->valuestring);
    if (n > EVENT_NAME_BYTES_MAX) {
        perr(e, "event_name", "should be at most 120 character(s)");
        return;
    }
    d->ev.name = (struct event_str){v->valuestring, n};
}

static void decode_url(const cJSON *root, struct decoded *d, struct perrs *e)
{
    const cJSON *v = pick(root, "u", "url");
    if (!v) {
        perr(e, "url", "is required");
        return;
    }
    if (!cJSON_IsString(v) || !v->valuestring) {
        perr(e, "url", "must be a valid url");
        return;
    }
    const char *u = v->valuestring;
    size_t n = strlen(u);
    if (n > PLAUSIBLE_URL_BYTES_MAX) {
        perr(e, "url", "must be a valid url");
        return;
    }
    if (strncasecmp(u, "data:", 5) == 0) {
        perr(e, "url", "scheme is not allowed");
        return;
    }
    d->ev.url = (struct event_str){u, n};
    struct url pu;
    if (url_parse_any(u, n, &pu) == 0) {
        size_t hl = pu.host_len;
        const char *h = url_host_strip_www(pu.host, &hl);
        memmove(d->url_host, h, hl);
        d->url_host[hl] = 0;
    }
}

static void decode_engagement(const cJSON *root, struct decoded *d, struct perrs *e)
{
    long long sd = int_field(cJSON_GetObjectItemCaseSensitive(root, "sd"), 100, true);
    long long ms = int_field(cJSON_GetObjectItemCaseSensitive(root, "e"),
                             PLAUSIBLE_ENGAGEMENT_MS_MAX - 1, false);
    if (sd < 0 && ms <= 0) {
        perr(e, "event_name",
             "engagement event requires a valid integer value for at least "
             "one of 'sd' or 'e' fields");
        return;
    }
    /* The page's props ride on its pageview; an engagement event carries its measures. */
    d->props.count = 0;
    if (sd >= 0) {
        snprintf(d->sd_text, sizeof d->sd_text, "%lld", sd);
        peer_props_add(&d->props, "scroll_depth", d->sd_text, strlen(d->sd_text),
                       EVENT_PROP_NUMBER);
    }
    if (ms > 0) {
        snprintf(d->e_text, sizeof d->e_text, "%lld", ms);
        peer_props_add(&d->props, "engagement_time", d->e_text, strlen(d->e_text),
                       EVENT_PROP_NUMBER);
    }
}

static void decode_revenue(const cJSON *root, struct decoded *d)
{
    const cJSON *v = pick(root, "revenue", "$");
    if (cJSON_IsString(v)) v = d->revenue_doc = parse_embedded(v);
    if (!cJSON_IsObject(v)) return;
    const cJSON *amount = cJSON_GetObjectItemCaseSensitive(v, "amount");
    const cJSON *cur = cJSON_GetObjectItemCaseSensitive(v, "currency");
    int64_t micros;
    if (!amount || !cJSON_IsString(cur) || !peer_currency_valid(cur->valuestring) ||
        !peer_amount_micros(amount, &micros))
        return; /* Plausible: the event is recorded, the revenue discarded */
    d->ev.has_revenue = true;
    d->ev.revenue_micros = micros;
    memcpy(d->ev.currency, cur->valuestring, 4);
}

static void decode(const cJSON *root, struct decoded *d, int64_t now_ms, struct perrs *e)
{
    event_init(&d->ev);
    d->ev.source = EVENT_SOURCE_PLAUSIBLE;
    d->ev.ts_ms = d->ev.received_ms = now_ms;
    decode_name(root, d, e);
    decode_url(root, d, e);

    const cJSON *r = pick(root, "r", "referrer");
    if (cJSON_IsString(r) && r->valuestring) {
        size_t n = strlen(r->valuestring);
        d->ev.referrer = (struct event_str){
            r->valuestring, event_text_prefix(r->valuestring, n, PLAUSIBLE_REFERRER_BYTES_MAX)};
    }

    const cJSON *p = pick(root, "m", "meta");
    if (!p) p = pick(root, "p", "props");
    if (cJSON_IsString(p)) p = d->props_doc = parse_embedded(p);
    const char *perr_msg = peer_props_take(p, &d->props);
    if (perr_msg) perr(e, "props", perr_msg);

    if (d->ev.name.len == 10 && memcmp(d->ev.name.ptr, "engagement", 10) == 0)
        decode_engagement(root, d, e);
    d->ev.props = d->props.props;
    d->ev.props_count = d->props.count;

    decode_revenue(root, d);

    const cJSON *i = cJSON_GetObjectItemCaseSensitive(root, "i");
    if (!cJSON_IsBool(i)) i = cJSON_GetObjectItemCaseSensitive(root, "interactive");
    if (cJSON_IsBool(i)) d->ev.interactive = cJSON_IsTrue(i);

    long long w = int_field(pick(root, "w", "screen_width"), 65535, false);
    if (w > 0) d->ev.screen_width_px = (uint16_t)w;

    const cJSON *dom = pick(root, "d", "domain");
    if (cJSON_IsString(dom) && dom->valuestring) {
        const char *s = dom->valuestring;
        size_t n = strlen(s);
        while (n && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r'))
            s++, n--;
        while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
            n--;
        if (n == 0) perr(e, "domain", "can't be blank");
        d->domains = s;
        d->domains_len = n;
    } else if (d->ev.url.len && !d->url_host[0]) {
        perr(e, "domain", "can't be blank");
    }
}

static void on_debug(struct app *app, const struct http_request *req, struct http_exchange *ex)
{
    char ip[64];
    if (!peer_xff_first_ip(http_request_header(req, "x-forwarded-for"), ip, sizeof ip))
        ingest_client_ip(app, req, ip, sizeof ip);
    http_exchange_complete(ex, 200, "text/plain; charset=utf-8", ip, strlen(ip), NULL);
}

/* One native event per domain that is a site; the others are counted in *dropped. */
static uint32_t expand_domains(struct app *app, const struct decoded *d, struct native_event *evs,
                               const char *ip, uint32_t *dropped)
{
    struct sites *sites = atomic_load_explicit(&app->sites, memory_order_acquire);
    const char *s = d->domains ? d->domains : d->url_host;
    size_t len = d->domains ? d->domains_len : strlen(d->url_host);
    uint32_t n = 0;
    *dropped = 0;
    size_t i = 0;
    while (i <= len) {
        size_t j = i;
        while (j < len && s[j] != ',')
            j++;
        const char *a = s + i, *b = s + j;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (b - a > 4 && strncasecmp(a, "www.", 4) == 0) a += 4;
        char name[EVENT_SITE_BYTES_MAX + 1];
        size_t nl = (size_t)(b - a);
        const struct site *site = NULL;
        int rc = TALLY_ENOENT;
        if (nl > 0 && nl <= EVENT_SITE_BYTES_MAX) {
            memcpy(name, a, nl);
            name[nl] = 0;
            rc = sites_resolve(sites, name, &site);
        }
        if (rc == 0 || rc == TALLY_EFULL) { /* EFULL: ingest answers 503 */
            if (n == PLAUSIBLE_DOMAINS_MAX) break;
            struct native_event *ne = &evs[n++];
            memset(ne, 0, sizeof *ne);
            ne->ev = d->ev;
            ne->ev.site = rc == 0 ? (struct event_str){site->name, strlen(site->name)}
                                  : (struct event_str){a, nl};
            if (ip[0]) ne->ip = (struct event_str){ip, strlen(ip)};
        } else {
            (*dropped)++;
        }
        i = j + 1;
    }
    return n;
}

static void on_event(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    const char *dbg = http_request_header(req, "x-debug-request");
    if (dbg && strcasecmp(dbg, "true") == 0) {
        on_debug(app, req, ex);
        return;
    }
    struct perrs e = {.n = 0};
    cJSON *root = NULL;
    if (event_text_valid(req->body, req->body_len))
        root = json_arena_parse(req->body, req->body_len);
    if (!cJSON_IsObject(root)) {
        json_arena_delete(root);
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        perr(&e, "request", "Unable to parse request body as json");
        respond_errors(ex, 400, &e, NULL);
        return;
    }
    struct decoded d;
    memset(&d, 0, sizeof d);
    decode(root, &d, timefmt_now_ms(), &e);
    if (e.n) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        respond_errors(ex, 400, &e, NULL);
    } else {
        char ip[64] = "";
        peer_xff_first_ip(http_request_header(req, "x-forwarded-for"), ip, sizeof ip);
        struct native_event evs[PLAUSIBLE_DOMAINS_MAX];
        uint32_t dropped;
        uint32_t n = expand_domains(app, &d, evs, ip, &dropped);
        if (dropped) metrics_counter_add(app->events_dropped[DROP_UNKNOWN_SITE], dropped);
        if (n == 0) {
            respond_ok(ex, dropped);
        } else {
            struct ingest_opts o = {.privileged = false};
            struct ingest_answer ans = {plausible_ok, plausible_error, (void *)(uintptr_t)dropped};
            ingest_submit(app, req, ex, evs, n, &o, &ans);
        }
    }
    json_arena_delete(d.props_doc);
    json_arena_delete(d.revenue_doc);
    json_arena_delete(root);
}

int peer_plausible_routes(struct app *app)
{
    struct http_route r = {
        .methods = HTTP_M(HTTP_POST),
        .path = "/api/event",
        .cors = true,
        .name = "plausible_event",
        .handler = on_event,
        .arg = app,
    };
    return http_server_route(app->http, &r);
}
