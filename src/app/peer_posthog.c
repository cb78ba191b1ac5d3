/*
 * peer_posthog: PostHog's capture API (API.md §3.2), so a site sending with posthog-js,
 * posthog-node or raw HTTP can set the SDK's api_host to Tally.
 *
 * ROUTES. POST /batch/, /capture/, /e/, /i/v0/e/ (each also without the trailing slash), CORS
 * on all. Every route takes every body shape, as PostHog's capture does:
 *   - a single event {"api_key"|"token", "event", "distinct_id", "properties", "timestamp",
 *     "uuid", "offset"};
 *   - a batch {"api_key"|"token", "batch": [events], "sent_at", "historical_migration"};
 *   - a JSON array of events (posthog-js), each carrying its token;
 *   - {"api_key", "data": [events] or a JSON string of them};
 *   - a form body (application/x-www-form-urlencoded) "data=..." whose value is JSON or
 *     base64-encoded JSON (older posthog-js), optionally with "compression=...";
 * gzip bodies come with Content-Encoding: gzip (decoded by the HTTP server), with
 * ?compression=gzip-js / gzip (posthog-js), or bare (detected by the gzip magic bytes, as
 * PostHog does). lz64 (lz-string) bodies are refused with 400.
 *
 * TOKEN. The project token ("api_key" or "token" at the top, else per event "token",
 * "api_key", "$token" or properties.token; an "Authorization: Bearer" value that is not a
 * Tally key counts too) maps to a site through the site's `ids`. A project token is public
 * (posthog-js embeds it in every page), so it only names the site: requests are rate limited
 * per IP and event times must lie within [now - 72 h, now + 5 min]. With
 * "Authorization: Bearer" and a Tally write or admin key the request is privileged (no rate
 * limit, any time: imports).
 *
 * MAPPING (per event):
 *   $pageview      -> pageview; URL from properties.$current_url, else https://SITE +
 *                     $pathname, else https://SITE/; referrer from $referrer ("$direct" means
 *                     none)
 *   $screen        -> pageview (mobile SDKs): $current_url, else https://SITE/$screen_name
 *   other $-events -> PostHog's own machinery ($autocapture, $pageleave, $identify,
 *                     $create_alias, $set, $groupidentify, $feature_flag_called, $exception,
 *                     $web_vitals, $snapshot, survey and replay events, ...): validated and
 *                     acknowledged, not stored (Tally counts pageviews and goals, not clicks
 *                     or person updates)
 *   any other name -> custom event (name cut to 120 bytes), URL $current_url, referrer
 *                     $referrer
 *   properties     -> props by the peer_sdk.h policy, without the $-prefixed ones (PostHog's
 *                     own: $lib, $browser, $session_id, ...) and "token" / "distinct_id";
 *                     properties.revenue (+ currency, default USD) -> revenue
 *   distinct_id    -> client visitor id (top-level distinct_id or $distinct_id, else
 *                     properties.distinct_id; numbers as text; first 200 characters)
 *   uuid           -> idempotency key
 *   $raw_user_agent -> the visitor's User-Agent (else the request's); $screen_width,
 *                     $screen_height, $browser_language -> hints
 *   $ip            -> the visitor's IP for geo (only geo: the visitor hash comes from
 *                     distinct_id, which every event has). $geoip_disable: true (posthog-node's
 *                     default), or a server-side SDK request without $ip: no geo.
 *   time           -> PostHog's rule: timestamp + (now - sent_at) when both are given (clock
 *                     skew; sent_at from the body or the "_" query parameter in ms;
 *                     properties.$ignore_sent_at turns it off), else timestamp, else
 *                     now - offset (ms), else now.
 *
 * ANSWERS. 200 {"status": 1} after the append is durable (as PostHog's capture API documents
 * it; PostHog Cloud's newer capture service writes the same code as "Ok"). Errors are PostHog's
 * documented JSON {"type": ..., "code": ..., "detail": ...}:
 *   400 validation_error  no data, invalid JSON/gzip/base64, lz64, an event without "event" or
 *                         without distinct_id, an invalid uuid or timestamp (the detail names
 *                         the event index; the request is all-or-nothing)
 *   401 authentication_error  no token (missing_api_key), an unknown one or several different
 *                         ones (invalid_api_key)
 *   403 authentication_error  the Bearer key is restricted to another site
 *   413 validation_error  more events than events_per_request_max, or a body too large once
 *                         decoded (posthog-node halves its batch on 413)
 *   429 / 503 with Retry-After (the SDKs retry both)
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
#include "http/http_inflate.h"
#include "http/http_url.h"
#include "ingest/ua.h"

#define PH_TOKEN_BYTES_MAX EVENT_SITE_BYTES_MAX
#define PH_DISTINCT_ID_CHARS_MAX 200
#define PH_ARENA_CHUNK_BYTES (64 * 1024)
#define PH_ARENA_RETAIN_BYTES (1024 * 1024)

static const char *const paths[] = {"/batch/", "/batch", "/capture/", "/capture", "/e/",
                                    "/e",      "/i/v0/e/", "/i/v0/e"};

/* Per worker thread, reused across requests. */
struct ph_tls {
    struct event_arena *arena;
    struct http_inflate *inflate;
};

static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void tls_free(void *p)
{
    struct ph_tls *t = p;
    if (!t) return;
    event_arena_free(t->arena);
    http_inflate_free(t->inflate);
    free(t);
}

static void key_make(void)
{
    pthread_key_create(&g_key, tls_free);
}

static struct ph_tls *tls_get(void)
{
    pthread_once(&g_once, key_make);
    struct ph_tls *t = pthread_getspecific(g_key);
    if (t) return t;
    t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->arena = event_arena_new(PH_ARENA_CHUNK_BYTES, PH_ARENA_RETAIN_BYTES);
    t->inflate = http_inflate_new();
    if (!t->arena || !t->inflate) {
        tls_free(t);
        return NULL;
    }
    pthread_setspecific(g_key, t);
    return t;
}

/* ---- answers -------------------------------------------------------------------------------- */

static void ph_fail(struct http_exchange *ex, int status, const char *type, const char *code,
                    const char *detail, const char *extra_headers)
{
    char esc[512], body[800];
    http_json_escape(esc, sizeof esc, detail);
    int n = snprintf(body, sizeof body, "{\"type\": \"%s\", \"code\": \"%s\", \"detail\": \"%s\"}",
                     type, code, esc);
    http_exchange_complete(ex, status, "application/json", body, (size_t)n, extra_headers);
}

static void ph_invalid(struct http_exchange *ex, const char *code, const char *detail)
{
    ph_fail(ex, 400, "validation_error", code, detail, NULL);
}

static const char MISSING_KEY[] =
    "API key not provided. You can find your project API key in your PostHog project settings.";
static const char INVALID_KEY[] =
    "Project API key invalid. You can find your project API key in your PostHog project settings.";

static void ph_success(struct http_exchange *ex)
{
    static const char ok[] = "{\"status\": 1}";
    http_exchange_complete(ex, 200, "application/json", ok, sizeof ok - 1, NULL);
}

static void answer_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    (void)arg;
    (void)accepted;
    ph_success(ex);
}

static void answer_error(void *arg, struct http_exchange *ex, int status, const char *msg,
                         int index, const char *extra_headers)
{
    (void)arg;
    (void)index;
    switch (status) {
    case 404:
        ph_fail(ex, 401, "authentication_error", "invalid_api_key", INVALID_KEY, NULL);
        return;
    case 403: ph_fail(ex, 403, "authentication_error", "permission_denied", msg, NULL); return;
    case 400: ph_invalid(ex, "invalid_payload", msg); return;
    case 413: ph_fail(ex, 413, "validation_error", "payload_too_large", msg, NULL); return;
    case 429: ph_fail(ex, 429, "throttled", "rate_limited", msg, extra_headers); return;
    default: ph_fail(ex, status, "server_error", "unavailable", msg, extra_headers); return;
    }
}

static const struct ingest_answer ph_answer = {answer_ok, answer_error, NULL};

/* ---- body decoding -------------------------------------------------------------------------- */

static bool is_gzip(const char *b, size_t n)
{
    return n >= 3 && (unsigned char)b[0] == 0x1f && (unsigned char)b[1] == 0x8b &&
           (unsigned char)b[2] == 8;
}

/* Standard or URL-safe base64, padding optional, whitespace skipped, in place. -1 if invalid. */
static int base64_decode_inplace(char *s, size_t len, size_t *out_len)
{
    unsigned acc = 0;
    int bits = 0;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+' || c == '-') v = 62;
        else if (c == '/' || c == '_') v = 63;
        else if (c == '=') break;
        else if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        else return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            s[k++] = (char)((acc >> bits) & 0xff);
        }
    }
    *out_len = k;
    return 0;
}

struct ph_body {
    const char *json; /* the JSON text to parse */
    size_t len;
    char *owned;      /* malloc'd buffer behind json, or NULL */
};

/* Inflates b into body->owned. 0, or answers and returns -1. */
static int gunzip(struct ph_tls *t, struct app *app, struct http_exchange *ex, const char *b,
                  size_t n, struct ph_body *body)
{
    char *out;
    size_t out_len;
    int rc = http_inflate_body(t->inflate, HTTP_CODING_GZIP, b, n,
                               (size_t)app->cfg->body_decoded_bytes_max, &out, &out_len);
    if (rc == TALLY_ETOOBIG) {
        ph_fail(ex, 413, "validation_error", "payload_too_large",
                "the decompressed body is too large", NULL);
        return -1;
    }
    if (rc != 0) {
        ph_invalid(ex, "invalid_payload", "Malformed request data: invalid gzip data");
        return -1;
    }
    free(body->owned);
    body->owned = out;
    body->json = out;
    body->len = out_len;
    return 0;
}

static bool form_content_type(const char *ct)
{
    return ct && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0;
}

/* Finds the JSON text of the request (see the top of the file). 0, or answers and returns -1. */
static int decode_body(struct ph_tls *t, struct app *app, const struct http_request *req,
                       struct http_exchange *ex, struct ph_body *body)
{
    char comp[16] = "";
    size_t comp_len;
    if (http_request_query(req, "compression", comp, sizeof comp, &comp_len) != 0) comp[0] = 0;
    const char *b = req->body;
    size_t n = req->body_len;
    body->json = b;
    body->len = n;
    if (n == 0) {
        ph_invalid(ex, "no_data", "No data found. Make sure to use a POST request when sending "
                   "the payload in the body of the request.");
        return -1;
    }
    const char *ct = http_request_header(req, "content-type");
    /* A form body: "data=..." (curl and old clients label JSON as a form too, so a body that
     * is JSON or gzip is taken as such whatever its Content-Type). */
    bool json_like = b[0] == '{' || b[0] == '[' || is_gzip(b, n);
    if ((form_content_type(ct) && !json_like) || (n > 5 && memcmp(b, "data=", 5) == 0)) {
        char *data = malloc(n + 1);
        if (!data) {
            ph_fail(ex, 503, "server_error", "unavailable", "out of memory", "Retry-After: 1\r\n");
            return -1;
        }
        size_t dlen;
        char fcomp[16];
        size_t fcomp_len;
        if (http_url_param(b, n, "compression", fcomp, sizeof fcomp, &fcomp_len) == 0)
            memcpy(comp, fcomp, fcomp_len + 1);
        if (http_url_param(b, n, "data", data, n + 1, &dlen) != 0 || dlen == 0) {
            free(data);
            ph_invalid(ex, "no_data", "No data found in the form body (field 'data').");
            return -1;
        }
        body->owned = data;
        body->json = data;
        body->len = dlen;
        if (data[0] != '{' && data[0] != '[' && !is_gzip(data, dlen)) {
            if (base64_decode_inplace(data, dlen, &body->len) != 0) {
                ph_invalid(ex, "invalid_payload", "Malformed request data: invalid base64");
                return -1;
            }
        }
    }
    if (strcmp(comp, "lz64") == 0 || strcmp(comp, "lz-string") == 0) {
        ph_invalid(ex, "invalid_payload", "Malformed request data: lz64 compression is not "
                   "supported; send gzip-js or no compression");
        return -1;
    }
    if (strcmp(comp, "gzip-js") == 0 || strcmp(comp, "gzip") == 0 ||
        is_gzip(body->json, body->len))
        return gunzip(t, app, ex, body->json, body->len, body);
    return 0;
}

/* ---- event decoding ------------------------------------------------------------------------- */

struct ph_req {
    struct app *app;
    struct event_arena *arena;
    const char *token;          /* the site's identifier, arena copy */
    const char *site_name;      /* resolved lazily, for synthesized URLs */
    int64_t now_ms;
    int64_t sent_at_ms;
    bool has_sent_at;
    bool privileged;
    bool server_sdk;
    char err[256];
    const char *err_code;
};

static int bad(struct ph_req *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad(struct ph_req *r, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    r->err_code = code;
    return TALLY_EINVAL;
}

/* The members of a body or event object the decoder reads, found in one pass over it (a lookup
 * per name walked the members a dozen times). Each is the first member of that name, as
 * cJSON_GetObjectItemCaseSensitive would return, or NULL (also when obj is not an object). */
struct ph_obj {
    const cJSON *api_key, *token, *dollar_token, *sent_at, *batch, *data, *event, *properties;
    const cJSON *distinct_id, *dollar_distinct_id, *uuid, *timestamp, *offset;
};

static const cJSON **obj_slot(void *out, const char *k)
{
    struct ph_obj *o = out;
    switch (k[0]) {
    case '$':
        if (strcmp(k, "$token") == 0) return &o->dollar_token;
        return strcmp(k, "$distinct_id") == 0 ? &o->dollar_distinct_id : NULL;
    case 'a': return strcmp(k, "api_key") == 0 ? &o->api_key : NULL;
    case 'b': return strcmp(k, "batch") == 0 ? &o->batch : NULL;
    case 'd':
        if (strcmp(k, "distinct_id") == 0) return &o->distinct_id;
        return strcmp(k, "data") == 0 ? &o->data : NULL;
    case 'e': return strcmp(k, "event") == 0 ? &o->event : NULL;
    case 'o': return strcmp(k, "offset") == 0 ? &o->offset : NULL;
    case 'p': return strcmp(k, "properties") == 0 ? &o->properties : NULL;
    case 's': return strcmp(k, "sent_at") == 0 ? &o->sent_at : NULL;
    case 't':
        if (strcmp(k, "token") == 0) return &o->token;
        return strcmp(k, "timestamp") == 0 ? &o->timestamp : NULL;
    case 'u': return strcmp(k, "uuid") == 0 ? &o->uuid : NULL;
    default: return NULL;
    }
}

static void obj_scan(const cJSON *obj, struct ph_obj *o)
{
    peer_members_scan(obj, o, sizeof *o, obj_slot);
}

/* The token an event carries, or NULL. */
static const char *event_token(const cJSON *ev)
{
    struct ph_obj o;
    obj_scan(ev, &o);
    const cJSON *names[] = {o.token, o.api_key, o.dollar_token};
    for (size_t i = 0; i < 3; i++) {
        const cJSON *it = names[i];
        if (cJSON_IsString(it) && it->valuestring && it->valuestring[0]) return it->valuestring;
    }
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o.properties, "token");
    if (cJSON_IsString(it) && it->valuestring && it->valuestring[0]) return it->valuestring;
    return NULL;
}

static bool uuid_valid(const char *s)
{
    /* 8-4-4-4-12 hex digits (any version), or 32 hex digits. */
    size_t n = strlen(s), hexes = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if ((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')) {
            hexes++;
        } else if (c == '-' && (i == 8 || i == 13 || i == 18 || i == 23) && n == 36) {
            continue;
        } else {
            return false;
        }
    }
    return hexes == 32;
}

/* The properties decode_event reads, found in one pass over the members (a PostHog event
 * carries some 30 of them; a lookup per field walked them a dozen times). Each is the first
 * member of that name, as cJSON_GetObjectItemCaseSensitive would return, or NULL. */
struct ph_props {
    const cJSON *current_url, *pathname, *screen_name, *referrer, *raw_user_agent;
    const cJSON *screen_width, *screen_height, *browser_language, *ip, *geoip_disable;
    const cJSON *ignore_sent_at, *distinct_id;
};

/* The slot of a property name props_scan keeps, or NULL. A switch on the second byte first:
 * most of PostHog's own properties ($os, $lib, $time, ...) are then rejected without a
 * string comparison. */
static const cJSON **props_slot(void *out, const char *k)
{
    struct ph_props *pp = out;
    if (k[0] == 'd') return strcmp(k, "distinct_id") == 0 ? &pp->distinct_id : NULL;
    if (k[0] != '$') return NULL;
    switch (k[1]) {
    case 'b': return strcmp(k, "$browser_language") == 0 ? &pp->browser_language : NULL;
    case 'c': return strcmp(k, "$current_url") == 0 ? &pp->current_url : NULL;
    case 'g': return strcmp(k, "$geoip_disable") == 0 ? &pp->geoip_disable : NULL;
    case 'i':
        if (strcmp(k, "$ip") == 0) return &pp->ip;
        return strcmp(k, "$ignore_sent_at") == 0 ? &pp->ignore_sent_at : NULL;
    case 'p': return strcmp(k, "$pathname") == 0 ? &pp->pathname : NULL;
    case 'r':
        if (strcmp(k, "$referrer") == 0) return &pp->referrer;
        return strcmp(k, "$raw_user_agent") == 0 ? &pp->raw_user_agent : NULL;
    case 's':
        if (strcmp(k, "$screen_width") == 0) return &pp->screen_width;
        if (strcmp(k, "$screen_height") == 0) return &pp->screen_height;
        return strcmp(k, "$screen_name") == 0 ? &pp->screen_name : NULL;
    default: return NULL;
    }
}

static void props_scan(const cJSON *props, struct ph_props *pp)
{
    peer_members_scan(props, pp, sizeof *pp, props_slot);
}

/* distinct_id: top-level distinct_id / $distinct_id, else properties.distinct_id; at most
 * PH_DISTINCT_ID_CHARS_MAX characters. NULL when absent or empty. */
static const char *distinct_id(struct ph_req *r, const struct ph_obj *eo,
                               const struct ph_props *pp, size_t *len)
{
    const char *id = peer_id_text(r->arena, eo->distinct_id, len);
    if (!id)
        id = peer_id_text(r->arena, eo->dollar_distinct_id, len);
    if (!id)
        id = peer_id_text(r->arena, pp->distinct_id, len);
    if (!id) return NULL;
    size_t chars = 0, i = 0;
    for (; i < *len; i++) {
        if (((unsigned char)id[i] & 0xc0) != 0x80 && chars++ == PH_DISTINCT_ID_CHARS_MAX) break;
    }
    *len = i;
    return id;
}

static int event_time(struct ph_req *r, const struct ph_obj *eo, const struct ph_props *pp,
                      int i, int64_t *ts)
{
    int64_t t;
    int rc = peer_time(eo->timestamp, &t);
    if (rc == TALLY_EINVAL)
        return bad(r, "invalid_payload", "Invalid payload: event %d has an invalid timestamp", i);
    const cJSON *off = eo->offset;
    bool skew = r->has_sent_at && !cJSON_IsTrue(pp->ignore_sent_at);
    if (rc == 0)
        *ts = skew ? r->now_ms + (t - r->sent_at_ms) : t;
    else if (cJSON_IsNumber(off) && isfinite(off->valuedouble) && off->valuedouble >= 0 &&
             off->valuedouble < 1e13)
        *ts = r->now_ms - (int64_t)off->valuedouble;
    else
        *ts = r->now_ms;
    if (*ts < 0 || *ts > EVENT_TS_MS_MAX)
        return bad(r, "invalid_payload", "Invalid payload: event %d has a timestamp out of range",
                   i);
    if (!r->privileged &&
        (*ts < r->now_ms - NATIVE_TS_PAST_MS || *ts > r->now_ms + NATIVE_TS_FUTURE_MS))
        return bad(r, "invalid_payload", "Invalid payload: event %d: timestamp must lie between "
                   "72 hours before and 5 minutes after the server's time (older imports need "
                   "a Tally write key as Bearer token)", i);
    return 0;
}

static const char *const ph_skip_keys[] = {"token", "distinct_id", NULL};
static const char *const ph_skip_revenue_keys[] = {"token", "distinct_id", "revenue", "currency",
                                                   NULL};

/* The URL of a $pageview or $screen. */
static int view_url(struct ph_req *r, const struct ph_props *pp, bool screen, struct event *ev)
{
    ev->url = peer_url(pp->current_url);
    if (ev->url.len > 0) return 0;
    if (!r->site_name) r->site_name = peer_site_name(r->app, r->token);
    if (!r->site_name) return 0; /* ingest_submit answers the unknown token */
    struct event_str p = peer_str(screen ? pp->screen_name : pp->pathname, 1024);
    const char *u = peer_synth_url(r->arena, r->site_name, p.ptr, p.len, screen, &ev->url.len);
    if (!u) return TALLY_ENOMEM;
    ev->url.ptr = u;
    return 0;
}

/* Validates one event; sets *store when it becomes a Tally event and decodes it into *ne. */
static int decode_event(struct ph_req *r, const cJSON *e, int i, struct native_event *ne,
                        bool *store)
{
    *store = false;
    if (!cJSON_IsObject(e)) return bad(r, "invalid_payload", "Invalid payload: event %d is not "
                                       "an object", i);
    struct ph_obj eo;
    obj_scan(e, &eo);
    const cJSON *name = eo.event;
    if (!cJSON_IsString(name) || !name->valuestring || !name->valuestring[0])
        return bad(r, "invalid_event", "Invalid payload: All events must have the event name "
                   "field 'event'! (event %d)", i);
    const char *nm = name->valuestring;
    if (!event_text_valid(nm, strlen(nm)))
        return bad(r, "invalid_event", "Invalid payload: event %d: 'event' is not valid UTF-8", i);
    const cJSON *props = eo.properties;
    if (props && !cJSON_IsNull(props) && !cJSON_IsObject(props))
        return bad(r, "invalid_payload", "Invalid payload: event %d: 'properties' must be an "
                   "object", i);
    struct ph_props pp;
    props_scan(props, &pp);
    size_t vlen = 0;
    const char *vid = distinct_id(r, &eo, &pp, &vlen);
    if (!vid)
        return bad(r, "invalid_payload", "Invalid payload: All events must have the event field "
                   "'distinct_id'! (event %d)", i);
    const cJSON *uuid = eo.uuid;
    const char *uuid_s = cJSON_IsString(uuid) && uuid->valuestring && uuid->valuestring[0]
                             ? uuid->valuestring
                             : NULL;
    if (uuid && !cJSON_IsNull(uuid) && !(cJSON_IsString(uuid) && uuid->valuestring))
        return bad(r, "invalid_payload", "Invalid payload: event %d: uuid must be a string", i);
    if (uuid_s && !uuid_valid(uuid_s))
        return bad(r, "invalid_payload", "Invalid payload: event %d: uuid is not a UUID", i);
    struct event *ev = &ne->ev;
    memset(ne, 0, sizeof *ne);
    event_init(ev);
    int rc = event_time(r, &eo, &pp, i, &ev->ts_ms);
    if (rc) return rc;

    bool pageview = strcmp(nm, "$pageview") == 0, screen = strcmp(nm, "$screen") == 0;
    if (nm[0] == '$' && !pageview && !screen) return 0; /* acknowledged, not stored */
    *store = true;
    ev->source = EVENT_SOURCE_POSTHOG;
    ev->received_ms = r->now_ms;
    ev->site.ptr = r->token;
    ev->site.len = strlen(r->token);
    ne->visitor_id = (struct event_str){vid, vlen};
    if (uuid_s) ev->client_id = (struct event_str){uuid_s, strlen(uuid_s)};
    if (pageview || screen) {
        rc = view_url(r, &pp, screen, ev);
    } else {
        ev->name = peer_str(name, EVENT_NAME_BYTES_MAX);
        ev->url = peer_url(pp.current_url);
    }
    if (rc) return rc;
    const cJSON *ref = pp.referrer;
    if (!(cJSON_IsString(ref) && ref->valuestring && strcmp(ref->valuestring, "$direct") == 0))
        ev->referrer = peer_str(ref, EVENT_REFERRER_BYTES_MAX);

    struct event_prop *pa = peer_props_new(r->arena);
    if (!pa) return TALLY_ENOMEM;
    uint32_t np = 0;
    struct peer_skip sk = {true, ph_skip_keys};
    if (!pageview && !screen && peer_revenue(props, "USD", ev)) sk.keys = ph_skip_revenue_keys;
    if ((rc = peer_props_add(r->arena, pa, &np, "", 0, props, 0, &sk))) return rc;
    ev->props = pa;
    ev->props_count = np;

    ev->user_agent = peer_str(pp.raw_user_agent, EVENT_USER_AGENT_BYTES_MAX);
    ev->screen_width_px = peer_pixels(pp.screen_width);
    ev->screen_height_px = peer_pixels(pp.screen_height);
    ev->language = peer_language(r->arena, pp.browser_language);
    ne->ip = peer_ip(pp.ip);
    if (ne->ip.len == 0 &&
        (r->server_sdk || cJSON_IsTrue(pp.geoip_disable)))
        ne->ip = (struct event_str){"0.0.0.0", 7}; /* no visitor address: no geo */
    return 0;
}

/* The events of the parsed body and its request-level token. NULL with *fail set when the
 * shape is wrong. `data` may hold a JSON string of events, parsed into *extra. */
static const cJSON *events_of(const cJSON *root, const cJSON **req_token, const cJSON **sent_at,
                              cJSON **extra, bool *single)
{
    *single = false;
    if (cJSON_IsArray(root)) return root;
    if (!cJSON_IsObject(root)) return NULL;
    struct ph_obj ro;
    obj_scan(root, &ro);
    *req_token = ro.api_key;
    if (!*req_token) *req_token = ro.token;
    *sent_at = ro.sent_at;
    const cJSON *batch = ro.batch;
    if (batch) return cJSON_IsArray(batch) ? batch : NULL;
    const cJSON *data = ro.data;
    if (data && !ro.event) {
        if (cJSON_IsArray(data)) return data;
        if (cJSON_IsObject(data)) {
            *single = true;
            return data;
        }
        if (cJSON_IsString(data) && data->valuestring) {
            char *s = data->valuestring;
            size_t n = strlen(s);
            if (s[0] != '{' && s[0] != '[' && base64_decode_inplace(s, n, &n) != 0) return NULL;
            if (!event_text_valid(s, n)) return NULL;
            *extra = json_arena_parse(s, n);
            if (cJSON_IsArray(*extra)) return *extra;
            if (cJSON_IsObject(*extra)) {
                *single = true;
                return *extra;
            }
        }
        return NULL;
    }
    *single = true;
    return root;
}

static void on_capture(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    struct ph_tls *t = tls_get();
    if (!t) {
        ph_fail(ex, 503, "server_error", "unavailable", "out of memory; retry later",
                "Retry-After: 1\r\n");
        return;
    }
    event_arena_reset(t->arena);
    struct ph_req r = {.app = app, .arena = t->arena, .now_ms = timefmt_now_ms()};
    const struct config_site *key_site = NULL;
    const char *bearer_tok;
    size_t bearer_len;
    int b = peer_bearer(app, req, &bearer_tok, &bearer_len, &key_site);
    r.privileged = b > 0;
    const char *ua = http_request_header(req, "user-agent");
    r.server_sdk = peer_server_sdk(ua);

    struct ph_body body = {0};
    if (decode_body(t, app, req, ex, &body) != 0) {
        free(body.owned);
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        return;
    }
    cJSON *root = NULL, *extra = NULL;
    if (peer_body_text_valid(body.json, body.len))
        root = json_arena_parse(body.json, body.len);
    free(body.owned);
    const cJSON *req_token = NULL, *sent_at = NULL;
    bool single;
    const cJSON *evs_json = root ? events_of(root, &req_token, &sent_at, &extra, &single) : NULL;
    if (!evs_json) {
        json_arena_delete(extra);
        json_arena_delete(root);
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        ph_invalid(ex, "invalid_payload", "Malformed request data: invalid JSON");
        return;
    }

    int n = single ? 1 : cJSON_GetArraySize(evs_json);
    const cJSON *first = single ? evs_json : evs_json->child;
    /* The token: request level, else the events' (all the same), else a Bearer value. */
    const char *token = cJSON_IsString(req_token) && req_token->valuestring &&
                                req_token->valuestring[0]
                            ? req_token->valuestring
                            : NULL;
    bool several = false;
    if (!token) {
        const cJSON *e = first;
        for (int i = 0; i < n && e; i++, e = single ? NULL : e->next) {
            const char *tk = event_token(e);
            if (tk && token && strcmp(tk, token) != 0) several = true;
            if (tk && !token) token = tk;
        }
    }
    char bearer_copy[PH_TOKEN_BYTES_MAX + 1];
    if (!token && b < 0 && bearer_len > 0 && bearer_len <= PH_TOKEN_BYTES_MAX) {
        memcpy(bearer_copy, bearer_tok, bearer_len);
        bearer_copy[bearer_len] = 0;
        token = bearer_copy;
    }
    if (!token || several || strlen(token) > PH_TOKEN_BYTES_MAX ||
        !peer_key_acceptable(app, token)) {
        json_arena_delete(extra);
        json_arena_delete(root);
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        if (!token)
            ph_fail(ex, 401, "authentication_error", "missing_api_key", MISSING_KEY, NULL);
        else
            ph_fail(ex, 401, "authentication_error", "invalid_api_key",
                    several ? "batch submitted with inconsistent api_key values" : INVALID_KEY,
                    NULL);
        return;
    }
    r.token = event_arena_strdup(t->arena, token, strlen(token));
    int64_t sa;
    if (peer_time(sent_at, &sa) == 0) {
        r.sent_at_ms = sa;
        r.has_sent_at = true;
    } else {
        char q[24];
        size_t ql;
        if (http_request_query(req, "_", q, sizeof q, &ql) == 0) {
            long long v = strtoll(q, NULL, 10);
            if (v > 1577836800000LL && v < EVENT_TS_MS_MAX) { /* ms after 2020, as PostHog */
                r.sent_at_ms = v;
                r.has_sent_at = true;
            }
        }
    }

    if (n > app->cfg->events_per_request_max) {
        json_arena_delete(extra);
        json_arena_delete(root);
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        char msg[96];
        snprintf(msg, sizeof msg, "a request holds at most %lld events",
                 (long long)app->cfg->events_per_request_max);
        ph_fail(ex, 413, "validation_error", "payload_too_large", msg, NULL);
        return;
    }
    struct native_event *evs = n > 0 ? event_arena_alloc(t->arena, (size_t)n * sizeof *evs) : NULL;
    int count = 0, rc = 0;
    if (n > 0 && !evs) rc = TALLY_ENOMEM;
    if (n == 0) rc = bad(&r, "invalid_payload", "Invalid payload: the request holds no event");
    const cJSON *e = first;
    for (int i = 0; i < n && e && rc == 0; i++, e = single ? NULL : e->next) {
        bool store;
        rc = decode_event(&r, e, i, &evs[count], &store);
        if (rc == 0 && store) count++;
    }
    if (rc == TALLY_ENOMEM) {
        ph_fail(ex, 503, "server_error", "unavailable", "out of memory; retry later",
                "Retry-After: 1\r\n");
    } else if (rc != 0) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], (uint64_t)(n > 0 ? n : 1));
        ph_invalid(ex, r.err_code, r.err);
    } else if (count == 0) {
        /* Only PostHog-internal events: nothing to store, but the token must name a site. */
        const struct site *s;
        if (sites_resolve(app->sites, r.token, &s) != 0 || (key_site && s->config != key_site))
            ph_fail(ex, 401, "authentication_error", "invalid_api_key", INVALID_KEY, NULL);
        else
            ph_success(ex);
    } else {
        struct ingest_opts o = {.privileged = r.privileged, .key_site = key_site};
        ingest_submit(app, req, ex, evs, (uint32_t)count, &o, &ph_answer);
    }
    /* Only now: the events point into the trees until ingest_submit has encoded them. */
    json_arena_delete(extra);
    json_arena_delete(root);
}

int peer_posthog_routes(struct app *app)
{
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        struct http_route hr = {
            .methods = HTTP_M(HTTP_POST),
            .path = paths[i],
            .cors = true,
            .name = "posthog",
            .handler = on_capture,
            .arg = app,
        };
        int rc = http_server_route(app->http, &hr);
        if (rc) return rc;
    }
    return 0;
}
