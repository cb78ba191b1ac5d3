/*
 * peer_segment: Segment's HTTP Tracking API (API.md §3.2), so a site sending with a Segment SDK
 * (@segment/analytics-node, analytics-python, ...) or raw HTTP can set the SDK's host to Tally.
 *
 * ROUTES. POST /v1/batch, /v1/track, /v1/page, /v1/screen, /v1/identify, /v1/group, /v1/alias,
 * and analytics.js's one-letter forms /v1/t, /v1/p, /v1/s, /v1/i, /v1/g, /v1/a; CORS on all.
 * The single-call routes take one message (its type is the route's); /v1/batch takes
 * {"batch": [messages], "context": {...}, "writeKey": ..., "sentAt": ...}, each message with a
 * "type". Batch-level "context" fields apply to messages that lack them.
 *
 * WRITE KEY. HTTP Basic auth with the key as the user name ("KEY:" base64-encoded), else the
 * body's "writeKey". The key maps to a site through the site's `ids` (or is the site name). A
 * Segment write key is not a secret (analytics.js puts it in every page), so it only names the
 * site: such requests are rate limited per IP and their timestamps must lie within
 * [now - 72 h, now + 5 min] like any unauthenticated ingest. Segment's OAuth form
 * ("Authorization: Bearer TOKEN" with the write key in the body) takes a Tally write or admin
 * key as the token: the request is then privileged (no rate limit, any timestamp: imports).
 *
 * MAPPING (per message):
 *   track          -> custom event named by "event" (cut to 120 bytes); URL, referrer from
 *                     context.page.url / .referrer; properties -> props (peer_sdk.h policy);
 *                     properties.revenue (+ currency, default USD) -> revenue
 *   page, screen   -> pageview; URL from properties.url, else context.page.url, else
 *                     https://SITE + (properties.path or context.page.path), else
 *                     https://SITE/NAME (the message's "name", percent-encoded), else
 *                     https://SITE/; referrer from properties.referrer, else
 *                     context.page.referrer; props: properties without url, path, referrer,
 *                     search, title, plus "name" and "category" when given
 *   identify, group, alias -> validated and acknowledged like Segment, not stored (Tally has
 *                     no user profiles): nothing of them reaches the log
 *   visitor        -> anonymousId, else userId (a string or number): the client visitor id,
 *                     so sessions survive a login (the anonymousId stays the same)
 *   messageId      -> idempotency key (ignored when longer than 128 bytes)
 *   context.userAgent -> the visitor's User-Agent (else the request's); context.screen.width
 *                     /.height and context.locale -> hints
 *   context.ip     -> the visitor's IP for geo. Every Segment message carries a client id, so
 *                     the IP never feeds the visitor hash; honouring it lets a backend forward
 *                     its visitors' addresses, and a sender can only mislabel its own events'
 *                     countries. Without context.ip, a request from a server-side SDK
 *                     (ua_is_server_sdk) has no visitor IP at all (no geo: Segment likewise
 *                     adds the request IP only for client-side calls or context.direct).
 *   timestamp      -> event time, corrected for the client's clock skew as Segment does:
 *                     receivedAt - (sentAt - timestamp) when sentAt (message or request level)
 *                     is given; "originalTimestamp" stands in for a missing "timestamp";
 *                     default now.
 *
 * LIMITS AND ANSWERS. 200 {"success": true} after the append is durable (or at once when the
 * request holds only identify/group/alias). Errors are {"message": "...", "code": "..."}:
 *   400 invalid_request   invalid JSON, a body over 500 KB (batch) or 32 KB (single call), a
 *                         message over 32 KB, more than 2500 messages (or events_per_request_max),
 *                         a missing or unknown type, no userId/anonymousId, a track without
 *                         event, an alias without previousId, a group without groupId, a bad
 *                         timestamp. Segment answers 200 and drops such messages later; Tally
 *                         keeps requests all-or-nothing, so the whole request is refused and the
 *                         message names the index.
 *   401 invalid_write_key no write key, an unknown one, or a Bearer token that is not a Tally
 *                         write key
 *   403 forbidden         the Bearer key is restricted to another site
 *   429 rate_limited (Retry-After), 503 unavailable (Retry-After): the SDKs retry both.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/ingest.h"
#include "app/peer_sdk.h"
#include "app/peers.h"
#include "core/json_arena.h"
#include "ingest/ua.h"

#define SEG_BATCH_BYTES_MAX (500 * 1024)
#define SEG_CALL_BYTES_MAX (32 * 1024)
#define SEG_BATCH_EVENTS_MAX 2500
#define SEG_WRITE_KEY_BYTES_MAX EVENT_SITE_BYTES_MAX
#define SEG_ARENA_CHUNK_BYTES (64 * 1024)
#define SEG_ARENA_RETAIN_BYTES (1024 * 1024)

enum seg_type { T_TRACK, T_PAGE, T_SCREEN, T_IDENTIFY, T_GROUP, T_ALIAS, T_BATCH, T_NONE };

static const char *const type_names[] = {"track", "page", "screen", "identify", "group", "alias"};

struct seg_route {
    const char *path;
    enum seg_type type;
};

static const struct seg_route routes[] = {
    {"/v1/batch", T_BATCH}, {"/v1/track", T_TRACK},       {"/v1/page", T_PAGE},
    {"/v1/screen", T_SCREEN}, {"/v1/identify", T_IDENTIFY}, {"/v1/group", T_GROUP},
    {"/v1/alias", T_ALIAS},   {"/v1/t", T_TRACK},           {"/v1/p", T_PAGE},
    {"/v1/s", T_SCREEN},      {"/v1/i", T_IDENTIFY},        {"/v1/g", T_GROUP},
    {"/v1/a", T_ALIAS},
};

struct seg_route_arg {
    struct app *app;
    enum seg_type type;
};
static struct seg_route_arg route_args[sizeof routes / sizeof routes[0]];

/* Per worker thread, reused across requests. */
struct seg_tls {
    struct event_arena *arena;
    char *print; /* SEG_CALL_BYTES_MAX + 1: measures a batch message's size */
};

static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void tls_free(void *p)
{
    struct seg_tls *t = p;
    if (!t) return;
    event_arena_free(t->arena);
    free(t->print);
    free(t);
}

static void key_make(void)
{
    pthread_key_create(&g_key, tls_free);
}

static struct seg_tls *tls_get(void)
{
    pthread_once(&g_once, key_make);
    struct seg_tls *t = pthread_getspecific(g_key);
    if (t) return t;
    t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->arena = event_arena_new(SEG_ARENA_CHUNK_BYTES, SEG_ARENA_RETAIN_BYTES);
    t->print = malloc(SEG_CALL_BYTES_MAX + 1);
    if (!t->arena || !t->print) {
        tls_free(t);
        return NULL;
    }
    pthread_setspecific(g_key, t);
    return t;
}

/* ---- answers -------------------------------------------------------------------------------- */

static void seg_fail(struct http_exchange *ex, int status, const char *code, const char *msg,
                     const char *extra_headers)
{
    char esc[512], body[700];
    http_json_escape(esc, sizeof esc, msg);
    int n = snprintf(body, sizeof body, "{\"message\": \"%s\", \"code\": \"%s\"}", esc, code);
    http_exchange_complete(ex, status, "application/json", body, (size_t)n, extra_headers);
}

static void seg_success(struct http_exchange *ex)
{
    static const char ok[] = "{\"success\": true}";
    http_exchange_complete(ex, 200, "application/json", ok, sizeof ok - 1, NULL);
}

static void answer_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    (void)arg;
    (void)accepted;
    seg_success(ex);
}

static void answer_error(void *arg, struct http_exchange *ex, int status, const char *msg,
                         int index, const char *extra_headers)
{
    (void)arg;
    (void)index;
    switch (status) {
    case 404: seg_fail(ex, 401, "invalid_write_key", "Invalid write key", NULL); return;
    case 403: seg_fail(ex, 403, "forbidden", msg, NULL); return;
    case 413: seg_fail(ex, 400, "invalid_request", "Exceed payload limit", NULL); return;
    case 429: seg_fail(ex, 429, "rate_limited", msg, extra_headers); return;
    case 400: seg_fail(ex, 400, "invalid_request", msg, NULL); return;
    default: seg_fail(ex, status, "unavailable", msg, extra_headers); return;
    }
}

static const struct ingest_answer seg_answer = {answer_ok, answer_error, NULL};

/* ---- decoding ------------------------------------------------------------------------------- */

/* The context members the decoder reads, found in one pass (first member of each name, as
 * cJSON_GetObjectItemCaseSensitive would return, or NULL; all NULL when ctx is not an object). */
struct seg_ctx {
    const cJSON *page, *screen, *userAgent, *locale, *ip, *direct;
};

struct seg_req {
    struct app *app;
    struct event_arena *arena;
    struct seg_ctx batch_ctx;   /* the batch's context members (all NULL: none) */
    const cJSON *batch_sent_at; /* or NULL */
    const char *write_key;
    const char *site_name;      /* resolved lazily, for synthesized URLs */
    int64_t now_ms;
    bool privileged;
    bool server_sdk;            /* the request comes from a server-side SDK */
    char err[256];
    int err_index;
};

static int bad(struct seg_req *r, int index, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad(struct seg_req *r, int index, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    r->err_index = index;
    return TALLY_EINVAL;
}

static const cJSON **ctx_slot(void *out, const char *k)
{
    struct seg_ctx *c = out;
    switch (k[0]) {
    case 'd': return strcmp(k, "direct") == 0 ? &c->direct : NULL;
    case 'i': return strcmp(k, "ip") == 0 ? &c->ip : NULL;
    case 'l': return strcmp(k, "locale") == 0 ? &c->locale : NULL;
    case 'p': return strcmp(k, "page") == 0 ? &c->page : NULL;
    case 's': return strcmp(k, "screen") == 0 ? &c->screen : NULL;
    case 'u': return strcmp(k, "userAgent") == 0 ? &c->userAgent : NULL;
    default: return NULL;
    }
}

static void ctx_scan(const cJSON *ctx, struct seg_ctx *c)
{
    peer_members_scan(ctx, c, sizeof *c, ctx_slot);
}

/* context.NAME of the message (it), else of the batch (b). */
static const cJSON *ctx_pick(const cJSON *it, const cJSON *b)
{
    return !it || cJSON_IsNull(it) ? b : it;
}

/* The members of a message the decoder reads, found in one pass over it (a lookup per field
 * walked the members a dozen times). Each is the first member of that name, as
 * cJSON_GetObjectItemCaseSensitive would return, or NULL (also when msg is not an object). */
struct seg_msg {
    const cJSON *type, *userId, *anonymousId, *event, *timestamp, *originalTimestamp, *sentAt;
    const cJSON *context, *properties, *messageId, *name, *category, *previousId, *groupId;
};

static const cJSON **msg_slot(void *out, const char *k)
{
    struct seg_msg *m = out;
    switch (k[0]) {
    case 'a': return strcmp(k, "anonymousId") == 0 ? &m->anonymousId : NULL;
    case 'c':
        if (strcmp(k, "context") == 0) return &m->context;
        return strcmp(k, "category") == 0 ? &m->category : NULL;
    case 'e': return strcmp(k, "event") == 0 ? &m->event : NULL;
    case 'g': return strcmp(k, "groupId") == 0 ? &m->groupId : NULL;
    case 'm': return strcmp(k, "messageId") == 0 ? &m->messageId : NULL;
    case 'n': return strcmp(k, "name") == 0 ? &m->name : NULL;
    case 'o': return strcmp(k, "originalTimestamp") == 0 ? &m->originalTimestamp : NULL;
    case 'p':
        if (strcmp(k, "properties") == 0) return &m->properties;
        return strcmp(k, "previousId") == 0 ? &m->previousId : NULL;
    case 's': return strcmp(k, "sentAt") == 0 ? &m->sentAt : NULL;
    case 't':
        if (strcmp(k, "type") == 0) return &m->type;
        return strcmp(k, "timestamp") == 0 ? &m->timestamp : NULL;
    case 'u': return strcmp(k, "userId") == 0 ? &m->userId : NULL;
    default: return NULL;
    }
}

static void msg_scan(const cJSON *msg, struct seg_msg *m)
{
    peer_members_scan(msg, m, sizeof *m, msg_slot);
}

static enum seg_type type_of(const struct seg_msg *m)
{
    const cJSON *t = m->type;
    if (!cJSON_IsString(t) || !t->valuestring) return T_NONE;
    for (int i = 0; i < (int)(sizeof type_names / sizeof type_names[0]); i++)
        if (strcmp(t->valuestring, type_names[i]) == 0) return (enum seg_type)i;
    return T_NONE;
}

static bool has_id(const cJSON *it)
{
    return (cJSON_IsString(it) && it->valuestring && it->valuestring[0]) ||
           (cJSON_IsNumber(it) && isfinite(it->valuedouble));
}

/* The requirements Segment documents for each type. */
static int validate(struct seg_req *r, const struct seg_msg *m, enum seg_type type, int i)
{
    const cJSON *uid = m->userId;
    const cJSON *aid = m->anonymousId;
    if (type == T_ALIAS) {
        if (!has_id(uid)) return bad(r, i, "message %d: alias needs a userId", i);
        if (!has_id(m->previousId)) return bad(r, i, "message %d: alias needs a previousId", i);
        return 0;
    }
    if (!has_id(uid) && !has_id(aid))
        return bad(r, i, "message %d: you must supply either an anonymousId or a userId", i);
    if (type == T_TRACK) {
        const cJSON *e = m->event;
        if (!cJSON_IsString(e) || !e->valuestring || !e->valuestring[0])
            return bad(r, i, "message %d: track needs an event name", i);
        if (!event_text_valid(e->valuestring, strlen(e->valuestring)))
            return bad(r, i, "message %d: event is not valid UTF-8", i);
    }
    if (type == T_GROUP && !has_id(m->groupId))
        return bad(r, i, "message %d: group needs a groupId", i);
    return 0;
}

/* Event time, Segment's way (see the top of the file). */
static int event_time(struct seg_req *r, const struct seg_msg *m, int i, int64_t *ts)
{
    int64_t t, sent;
    int rc = peer_time(m->timestamp, &t);
    if (rc == TALLY_ENOENT) rc = peer_time(m->originalTimestamp, &t);
    if (rc == TALLY_EINVAL)
        return bad(r, i, "message %d: timestamp must be an ISO 8601 date-time", i);
    if (rc == TALLY_ENOENT) {
        *ts = r->now_ms;
        return 0;
    }
    const cJSON *s = m->sentAt;
    if (!s || cJSON_IsNull(s)) s = r->batch_sent_at;
    int src = peer_time(s, &sent);
    if (src == TALLY_EINVAL)
        return bad(r, i, "message %d: sentAt must be an ISO 8601 date-time", i);
    *ts = src == 0 ? r->now_ms - (sent - t) : t;
    if (*ts < 0 || *ts > EVENT_TS_MS_MAX)
        return bad(r, i, "message %d: timestamp is out of range", i);
    if (!r->privileged &&
        (*ts < r->now_ms - NATIVE_TS_PAST_MS || *ts > r->now_ms + NATIVE_TS_FUTURE_MS))
        return bad(r, i, "message %d: timestamp must lie between 72 hours before and 5 minutes "
                   "after the server's time (older imports need a Tally write key as Bearer "
                   "token)", i);
    return 0;
}

static const char *const page_skip_keys[] = {"url", "path", "referrer", "search", "title", NULL};
static const char *const revenue_skip_keys[] = {"revenue", "currency", NULL};

/* The URL of a page or screen view (see the top of the file). */
static int page_url(struct seg_req *r, const struct seg_msg *m, const cJSON *props,
                    const cJSON *page, struct event *ev)
{
    ev->url = peer_url(cJSON_GetObjectItemCaseSensitive(props, "url"));
    if (ev->url.len == 0) ev->url = peer_url(cJSON_GetObjectItemCaseSensitive(page, "url"));
    if (ev->url.len > 0) return 0;
    if (!r->site_name) r->site_name = peer_site_name(r->app, r->write_key);
    if (!r->site_name) return 0; /* ingest_submit answers the unknown key */
    struct event_str path = peer_str(cJSON_GetObjectItemCaseSensitive(props, "path"), 1024);
    if (path.len == 0) path = peer_str(cJSON_GetObjectItemCaseSensitive(page, "path"), 1024);
    bool is_name = false;
    if (path.len == 0) {
        path = peer_str(m->name, 512);
        is_name = true;
    }
    const char *u = peer_synth_url(r->arena, r->site_name, path.ptr, path.len, is_name,
                                   &ev->url.len);
    if (!u) return TALLY_ENOMEM;
    ev->url.ptr = u;
    return 0;
}

static int add_prop_str(struct seg_req *r, struct event_prop *props, uint32_t *count,
                        const char *key, const cJSON *it)
{
    if (*count >= EVENT_PROPS_MAX || !cJSON_IsString(it)) return 0;
    return peer_prop_put(r->arena, props, count, key, strlen(key), true, it);
}

/* One track/page/screen message -> *ne. */
static int decode_event(struct seg_req *r, const struct seg_msg *m, enum seg_type type, int i,
                        struct native_event *ne)
{
    struct event *ev = &ne->ev;
    memset(ne, 0, sizeof *ne);
    event_init(ev);
    ev->source = EVENT_SOURCE_SEGMENT;
    ev->received_ms = r->now_ms;
    ev->site.ptr = r->write_key;
    ev->site.len = strlen(r->write_key);
    int rc = event_time(r, m, i, &ev->ts_ms);
    if (rc) return rc;

    const cJSON *ctx = m->context;
    const cJSON *props = m->properties;
    struct seg_ctx mc;
    ctx_scan(ctx, &mc);
    const struct seg_ctx *bc = &r->batch_ctx;
    const cJSON *page = ctx_pick(mc.page, bc->page);
    const cJSON *screen = ctx_pick(mc.screen, bc->screen);
    struct event_prop *pa = peer_props_new(r->arena);
    if (!pa) return TALLY_ENOMEM;
    uint32_t np = 0;

    if (type == T_TRACK) {
        const cJSON *e = m->event;
        ev->name = peer_str(e, EVENT_NAME_BYTES_MAX);
        ev->url = peer_url(cJSON_GetObjectItemCaseSensitive(page, "url"));
        ev->referrer = peer_str(cJSON_GetObjectItemCaseSensitive(page, "referrer"),
                                EVENT_REFERRER_BYTES_MAX);
        struct peer_skip sk = {false, NULL};
        if (peer_revenue(props, "USD", ev)) sk.keys = revenue_skip_keys;
        rc = peer_props_add(r->arena, pa, &np, "", 0, props, 0, &sk);
    } else {
        if ((rc = page_url(r, m, props, page, ev))) return rc;
        ev->referrer = peer_str(cJSON_GetObjectItemCaseSensitive(props, "referrer"),
                                EVENT_REFERRER_BYTES_MAX);
        if (ev->referrer.len == 0)
            ev->referrer = peer_str(cJSON_GetObjectItemCaseSensitive(page, "referrer"),
                                    EVENT_REFERRER_BYTES_MAX);
        struct peer_skip sk = {false, page_skip_keys};
        rc = peer_props_add(r->arena, pa, &np, "", 0, props, 0, &sk);
        if (!rc)
            rc = add_prop_str(r, pa, &np, "name", m->name);
        if (!rc)
            rc = add_prop_str(r, pa, &np, "category", m->category);
    }
    if (rc) return rc;
    ev->props = pa;
    ev->props_count = np;

    ev->user_agent = peer_str(ctx_pick(mc.userAgent, bc->userAgent), EVENT_USER_AGENT_BYTES_MAX);
    ev->screen_width_px = peer_pixels(cJSON_GetObjectItemCaseSensitive(screen, "width"));
    ev->screen_height_px = peer_pixels(cJSON_GetObjectItemCaseSensitive(screen, "height"));
    ev->language = peer_language(r->arena, ctx_pick(mc.locale, bc->locale));

    const cJSON *mid = m->messageId;
    struct event_str id = peer_str(mid, EVENT_CLIENT_ID_BYTES_MAX + 1);
    if (id.len > 0 && id.len <= EVENT_CLIENT_ID_BYTES_MAX) ev->client_id = id;
    size_t vlen = 0;
    const char *vid = peer_id_text(r->arena, m->anonymousId, &vlen);
    if (!vid) vid = peer_id_text(r->arena, m->userId, &vlen);
    ne->visitor_id = (struct event_str){vid ? vid : "", vid ? vlen : 0};

    ne->ip = peer_ip(ctx_pick(mc.ip, bc->ip));
    if (ne->ip.len == 0 && r->server_sdk && !cJSON_IsTrue(ctx_pick(mc.direct, bc->direct)))
        ne->ip = (struct event_str){"0.0.0.0", 7}; /* no visitor address: no geo */
    return 0;
}

/* The value of a standard base64 digit, else -1. */
static int b64_digit(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* "Basic base64(KEY:)" -> KEY into out (cap bytes). 0, or -1 when malformed or too long. */
static int basic_user(const char *auth, char *out, size_t cap)
{
    const char *p = auth + 6;
    while (*p == ' ') p++;
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0;
    for (; *p && *p != ' ' && *p != '='; p++) {
        int d = b64_digit((unsigned char)*p);
        if (d < 0) return -1;
        acc = (acc << 6) | (unsigned)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            char c = (char)((acc >> bits) & 0xff);
            if (c == ':') {
                out[n] = 0;
                return 0;
            }
            if (n + 1 >= cap || c == 0) return -1;
            out[n++] = c;
        }
    }
    out[n] = 0; /* no colon: the whole value is the key (older clients) */
    return 0;
}

/* The message at index i is at most SEG_CALL_BYTES_MAX bytes as compact JSON. */
static bool message_fits(struct seg_tls *t, cJSON *msg)
{
    return cJSON_PrintPreallocated(msg, t->print, SEG_CALL_BYTES_MAX + 1, false) != 0;
}

static void on_segment(struct http_request *req, struct http_exchange *ex, void *arg)
{
    const struct seg_route_arg *ra = arg;
    struct app *app = ra->app;
    struct seg_tls *t = tls_get();
    if (!t) {
        seg_fail(ex, 503, "unavailable", "out of memory; retry later", "Retry-After: 1\r\n");
        return;
    }
    event_arena_reset(t->arena);
    size_t max = ra->type == T_BATCH ? SEG_BATCH_BYTES_MAX : SEG_CALL_BYTES_MAX;
    if (req->body_len > max) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        seg_fail(ex, 400, "invalid_request", "Exceed payload limit", NULL);
        return;
    }

    /* Authentication first: a wrong key is answered before the body is looked at. */
    struct seg_req r = {.app = app, .arena = t->arena, .now_ms = timefmt_now_ms(),
                        .err_index = -1};
    const struct config_site *key_site = NULL;
    const char *tok;
    size_t tok_len;
    const char *auth = http_request_header(req, "authorization");
    int b = peer_bearer_value(app, auth, &tok, &tok_len, &key_site);
    if (b < 0) {
        seg_fail(ex, 401, "invalid_write_key", "invalid Bearer token (a Tally write key)", NULL);
        return;
    }
    r.privileged = b > 0;
    char basic_key[SEG_WRITE_KEY_BYTES_MAX + 1] = "";
    if (auth && strncasecmp(auth, "Basic ", 6) == 0 &&
        basic_user(auth, basic_key, sizeof basic_key) != 0) {
        seg_fail(ex, 401, "invalid_write_key", "Invalid write key", NULL);
        return;
    }
    const char *ua = http_request_header(req, "user-agent");
    r.server_sdk = peer_server_sdk(ua);

    if (!peer_body_text_valid(req->body, req->body_len)) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        seg_fail(ex, 400, "invalid_request", "Invalid JSON", NULL);
        return;
    }
    cJSON *root = json_arena_parse(req->body, req->body_len);
    if (!cJSON_IsObject(root)) {
        json_arena_delete(root);
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        seg_fail(ex, 400, "invalid_request", "Invalid JSON", NULL);
        return;
    }
    const cJSON *wk = cJSON_GetObjectItemCaseSensitive(root, "writeKey");
    if (basic_key[0]) {
        r.write_key = event_arena_strdup(t->arena, basic_key, strlen(basic_key));
    } else if (cJSON_IsString(wk) && wk->valuestring && wk->valuestring[0] &&
               strlen(wk->valuestring) <= SEG_WRITE_KEY_BYTES_MAX) {
        r.write_key = event_arena_strdup(t->arena, wk->valuestring, strlen(wk->valuestring));
    }
    if (!r.write_key || !r.write_key[0] || !peer_key_acceptable(app, r.write_key)) {
        bool missing = !r.write_key || !r.write_key[0];
        json_arena_delete(root);
        metrics_counter_add(app->events_dropped[missing ? DROP_INVALID : DROP_UNKNOWN_SITE], 1);
        seg_fail(ex, 401, "invalid_write_key", missing ? "Missing write key" : "Invalid write key",
                 NULL);
        return;
    }

    /* The messages: the batch's items, or the body itself. */
    int n = 1;
    const cJSON *items = NULL;
    if (ra->type == T_BATCH) {
        items = cJSON_GetObjectItemCaseSensitive(root, "batch");
        if (!cJSON_IsArray(items)) {
            json_arena_delete(root);
            metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
            seg_fail(ex, 400, "invalid_request", "batch must be an array of messages", NULL);
            return;
        }
        n = cJSON_GetArraySize(items);
        ctx_scan(cJSON_GetObjectItemCaseSensitive(root, "context"), &r.batch_ctx);
    }
    r.batch_sent_at = cJSON_GetObjectItemCaseSensitive(root, "sentAt");
    int limit = SEG_BATCH_EVENTS_MAX < app->cfg->events_per_request_max
                    ? SEG_BATCH_EVENTS_MAX
                    : (int)app->cfg->events_per_request_max;
    if (n > limit) {
        json_arena_delete(root);
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        char msg[96];
        snprintf(msg, sizeof msg, "a batch holds at most %d messages", limit);
        seg_fail(ex, 400, "invalid_request", msg, NULL);
        return;
    }
    struct native_event *evs = n > 0 ? event_arena_alloc(t->arena, (size_t)n * sizeof *evs) : NULL;
    if (n > 0 && !evs) {
        json_arena_delete(root);
        seg_fail(ex, 503, "unavailable", "out of memory; retry later", "Retry-After: 1\r\n");
        return;
    }
    int count = 0, rc = 0, i = 0;
    bool measure = ra->type == T_BATCH && req->body_len > SEG_CALL_BYTES_MAX;
    for (cJSON *msg = items ? items->child : root; msg && rc == 0; i++) {
        struct seg_msg m;
        msg_scan(msg, &m);
        enum seg_type type = ra->type == T_BATCH ? type_of(&m) : ra->type;
        if (!cJSON_IsObject(msg))
            rc = bad(&r, i, "message %d must be an object", i);
        else if (type == T_NONE)
            rc = bad(&r, i, "message %d: type must be one of track, page, screen, identify, "
                     "group, alias", i);
        else if (measure && !message_fits(t, msg))
            rc = bad(&r, i, "Exceed payload limit: message %d is over 32 KB", i);
        else
            rc = validate(&r, &m, type, i);
        if (rc == 0 && (type == T_TRACK || type == T_PAGE || type == T_SCREEN))
            rc = decode_event(&r, &m, type, i, &evs[count++]);
        msg = items ? msg->next : NULL;
    }
    if (rc == TALLY_ENOMEM) {
        seg_fail(ex, 503, "unavailable", "out of memory; retry later", "Retry-After: 1\r\n");
    } else if (rc != 0) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], (uint64_t)(n > 0 ? n : 1));
        seg_fail(ex, 400, "invalid_request", r.err, NULL);
    } else if (count == 0) {
        /* identify/group/alias only (or an empty batch): nothing to store, but the key must
         * still name a site, as it would for events. */
        const struct site *s;
        if (sites_resolve(app->sites, r.write_key, &s) != 0 ||
            (key_site && s->config != key_site))
            seg_fail(ex, 401, "invalid_write_key", "Invalid write key", NULL);
        else
            seg_success(ex);
    } else {
        struct ingest_opts o = {.privileged = r.privileged, .key_site = key_site};
        ingest_submit(app, req, ex, evs, (uint32_t)count, &o, &seg_answer);
    }
    /* Only now: the events point into the tree until ingest_submit has encoded them. */
    json_arena_delete(root);
}

int peer_segment_routes(struct app *app)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        route_args[i] = (struct seg_route_arg){app, routes[i].type};
        struct http_route hr = {
            .methods = HTTP_M(HTTP_POST),
            .path = routes[i].path,
            .cors = true,
            .name = "segment",
            .handler = on_segment,
            .arg = &route_args[i],
        };
        int rc = http_server_route(app->http, &hr);
        if (rc) return rc;
    }
    return 0;
}
