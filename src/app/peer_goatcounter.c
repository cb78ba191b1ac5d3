/*
 * peer_goatcounter: GoatCounter's two ingest endpoints (goatcounter.com/help/pixel,
 * /help/api), so that count.js, a hand-written <img src=".../count?p=/x">, and backends posting
 * to the API can point at Tally unchanged.
 *
 * SITE. GoatCounter names a site by the host the request is sent to (CODE.goatcounter.com or a
 * custom domain). Tally does the same: the Host header (port removed, lowercased) is resolved
 * as a site name or one of a site's `ids`; when that fails and the host has several labels, its
 * first label is tried, so `ids = mycode` maps mycode.tally.example.com (GoatCounter's "site
 * code") to the site. For POST /api/v0/count a key restricted to one site names that site
 * whatever the Host; a global key uses the Host. Unknown: 400 "no site at this domain".
 *
 * GET|POST /count (count.js uses navigator.sendBeacon, a POST with the query string, falling
 * back to an image GET). Query parameters: p path (or the event name when e), t title, r
 * referrer, e event flag (true/false/1/0/on/off/yes/no), s screen width (or the deprecated
 * "width,height,scale"), q the page's query string (campaign tags), b bot flag (0, or >= 150
 * from count.js's checks; 1..149 is refused), rnd and anything else ignored. Accept-Language
 * gives the language; the visitor is the request's IP and User-Agent; the time is now. Answer:
 * the 1x1 GIF, 200 after the durable append; 400 with the GIF and an X-Goatcounter header
 * saying why (as GoatCounter); 429/503 from ingest likewise. A browser prefetch (Purpose or
 * Sec-Purpose: prefetch) is answered 200 and not recorded, as GoatCounter does; so is HEAD.
 *
 * POST /api/v0/count. Authorization: "Bearer TOKEN" or Basic with the token as the password;
 * the token is a Tally write or admin key (`tally key new --scope write [--site NAME]`), so
 * only the token changes when moving a backend over. Missing or malformed: 401
 * {"error": "..."} with WWW-Authenticate: Basic realm=GoatCounter; unknown: 401; a read key:
 * 403 "requires count permissions". Content-Type must be application/json (415). Body
 * {"no_sessions": bool, "filter": ["ip"], "hits": [{path, title, event, ref, size, query, bot,
 * user_agent, location, language, ip, created_at, session}]}: 1..500 hits ("no hits", "maximum
 * amount of pageviews in one batch is 500": 400 {"error"}); created_at RFC 3339, any past time,
 * at most 5 s ahead; session -> the visitor id (hashed with the site), else user_agent + ip; a
 * hit with neither is an error unless no_sessions (then the request's IP and the hit's or the
 * request's User-Agent make the visitor); location "NL" sets the country.
 * Errors follow GoatCounter's documented contract: 400 {"errors": {"INDEX": "message"}} lists
 * the invalid hits, and "any pageviews not listed have been processed and shouldn't be sent
 * again" — so the valid hits of such a batch ARE appended (durably, before the answer), and a
 * batch with no valid hit appends nothing. All valid: 202 {"status":"ok"}.
 *
 * MAPPING to the canonical event: a pageview's path becomes https://SITE + path (+ "?" + q when
 * the path has no query), so pages, hosts and UTM tags derive as for other formats; GoatCounter's
 * path cleaning is applied (trimmed, one leading "/", no trailing "/"). An event's name is its
 * path without leading "/" ("(no event name)" when empty), cut to 120 bytes; events have no
 * URL. The title is kept as the prop "title". A client's bot hint (count.js's b >= 150, the
 * API's bot > 0) is acknowledged like a success and not recorded: Tally's bot verdict is a
 * function of the User-Agent, re-judged by every rebuild, so a hint stored in the log would
 * not survive one; GoatCounter leaves such hits out of its statistics too.
 *
 * THREADS. Handlers run on an HTTP worker; hits live in one allocation freed after
 * ingest_submit returns; the API's answer context is freed by its callback.
 */
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "app/ingest.h"
#include "app/peer_util.h"
#include "app/peers.h"
#include "core/json_arena.h"
#include "core/keys.h"
#include "ingest/timefmt.h"
#include "ingest/url.h"
#include "tally/error.h"

#define GC_PATH_BYTES_MAX 2048
#define GC_TITLE_BYTES_MAX 1024
#define GC_REF_BYTES_MAX 2048
#define GC_UA_BYTES_MAX 512
#define GC_QUERY_BYTES_MAX 2048
#define GC_HITS_MAX 500
#define GC_FUTURE_MS 5000
#define GC_ERROR_BYTES 200

/* One hit as sent, before mapping. Strings are (ptr, len), valid UTF-8, not NUL-terminated. */
struct gc_in {
    struct event_str path, title, ref, query, user_agent, language, session, location, ip;
    bool event;
    double width; /* 0: unknown */
    long long bot;
    int64_t ts_ms;
};

/* One mapped hit: the event and the buffers it points into. */
struct gc_hit {
    struct native_event ne;
    struct event_prop title;
    char url[EVENT_URL_BYTES_MAX + 1];
    char name[EVENT_NAME_BYTES_MAX + 1];
    char country[3];
};

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Maps in -> out for site `site` (a canonical name). NULL, or the reason (in err). */
static const char *gc_map(const struct gc_in *in, const char *site, int64_t now_ms,
                          struct gc_hit *out, char err[GC_ERROR_BYTES])
{
    memset(out, 0, sizeof *out);
    struct event *ev = &out->ne.ev;
    event_init(ev);
    ev->source = EVENT_SOURCE_GOATCOUNTER;
    ev->received_ms = now_ms;
    ev->ts_ms = in->ts_ms ? in->ts_ms : now_ms;
    if (in->ts_ms > now_ms + GC_FUTURE_MS) return "created_at: in the future";
    if (in->ref.len > GC_REF_BYTES_MAX) return "ref: must be at most 2048 bytes";
    if (in->title.len > GC_TITLE_BYTES_MAX) return "title: must be at most 1024 bytes";
    if (in->user_agent.len > GC_UA_BYTES_MAX) return "user_agent_header: must be at most 512 bytes";
    if (in->width > 2147483647.0) {
        snprintf(err, GC_ERROR_BYTES, "size: screen size %.0f is out of range of int32", in->width);
        return err;
    }
    if (in->path.len > GC_PATH_BYTES_MAX) {
        snprintf(err, GC_ERROR_BYTES,
                 "ignored because path is longer than 2048 bytes (%zu "
                 "bytes)",
                 in->path.len);
        return err;
    }
    const char *p = in->path.ptr ? in->path.ptr : "";
    size_t n = in->path.len;
    while (n && is_space(*p))
        p++, n--;
    while (n && is_space(p[n - 1]))
        n--;
    if (in->event) {
        while (n && *p == '/')
            p++, n--;
        if (n == 0) p = "(no event name)", n = strlen(p);
        n = event_text_prefix(p, n, EVENT_NAME_BYTES_MAX);
        memcpy(out->name, p, n);
        out->name[n] = 0;
        ev->name = (struct event_str){out->name, n};
    } else {
        if (n == 0) return "path: must be set";
        while (n && *p == '/')
            p++, n--;
        while (n && p[n - 1] == '/')
            n--;
        int len = snprintf(out->url, sizeof out->url, "https://%s/%.*s", site, (int)n, p);
        if (len < 0 || (size_t)len >= sizeof out->url) return "path: too long for a URL";
        size_t q = in->query.len;
        const char *qs = in->query.ptr;
        if (q && *qs == '?') qs++, q--;
        if (q && !memchr(out->url, '?', (size_t)len) && (size_t)len + 1 + q < sizeof out->url) {
            out->url[len++] = '?';
            memcpy(out->url + len, qs, q);
            len += (int)q;
            out->url[len] = 0;
        }
        ev->url = (struct event_str){out->url, (size_t)len};
    }
    ev->referrer = in->ref;
    if (in->title.len) {
        out->title = (struct event_prop){{"title", 5}, in->title, EVENT_PROP_STRING};
        ev->props = &out->title;
        ev->props_count = 1;
    }
    if (in->width >= 1 && in->width <= 65535) ev->screen_width_px = (uint16_t)in->width;
    ev->user_agent = in->user_agent;
    bool lang_ok = in->language.len > 0 && in->language.len <= EVENT_LANGUAGE_BYTES_MAX;
    for (size_t i = 0; lang_ok && i < in->language.len; i++) {
        char c = in->language.ptr[i];
        lang_ok = isalnum((unsigned char)c) || c == '-';
    }
    if (lang_ok) ev->language = in->language;
    if (in->location.len >= 2 && isupper((unsigned char)in->location.ptr[0]) &&
        isupper((unsigned char)in->location.ptr[1]) &&
        (in->location.len == 2 || in->location.ptr[2] == '-')) {
        memcpy(out->country, in->location.ptr, 2);
        ev->country = (struct event_str){out->country, 2};
    }
    out->ne.visitor_id = in->session;
    out->ne.ip = in->ip;
    return NULL;
}

/* ---- site from the Host header ---------------------------------------------------------- */

/* Resolves the request's Host (see the header). 0 with *site, else an error with host_out
 * holding the host for the message. */
static int gc_site(struct app *app, const struct http_request *req, const struct site **site,
                   char host_out[EVENT_SITE_BYTES_MAX + 1])
{
    struct sites *sites = atomic_load_explicit(&app->sites, memory_order_acquire);
    const char *h = http_request_header(req, "host");
    size_t n = 0;
    host_out[0] = 0;
    if (!h) return TALLY_ENOENT;
    if (*h == '[') { /* IPv6 literal */
        h++;
        while (h[n] && h[n] != ']')
            n++;
    } else {
        while (h[n] && h[n] != ':')
            n++;
    }
    if (n == 0 || n > EVENT_SITE_BYTES_MAX) return TALLY_EINVAL;
    for (size_t i = 0; i < n; i++)
        host_out[i] = (char)tolower((unsigned char)h[i]);
    host_out[n] = 0;
    if (n && host_out[n - 1] == '.') host_out[--n] = 0;
    int rc = sites_resolve(sites, host_out, site);
    if (rc == 0 || rc == TALLY_EFULL) return rc;
    const char *dot = strchr(host_out, '.');
    if (!dot || dot == host_out) return rc;
    char code[EVENT_SITE_BYTES_MAX + 1];
    memcpy(code, host_out, (size_t)(dot - host_out));
    code[dot - host_out] = 0;
    int rc2 = sites_resolve(sites, code, site);
    return rc2 == 0 ? 0 : rc;
}

/* ---- GET|POST /count ------------------------------------------------------------------- */

#define GIF_HEADERS "Cross-Origin-Resource-Policy: cross-origin\r\nCache-Control: no-store\r\n"

static void count_gif(struct http_exchange *ex, int status, const char *why, const char *extra)
{
    char hdr[512], val[256] = "";
    if (why) peer_header_value(val, sizeof val, why);
    snprintf(hdr, sizeof hdr, GIF_HEADERS "%s%s%s%s", why ? "X-Goatcounter: " : "", val,
             why ? "\r\n" : "", extra ? extra : "");
    http_exchange_complete(ex, status, "image/gif", peer_gif(), PEER_GIF_BYTES, hdr);
}

static void count_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    (void)arg;
    (void)accepted;
    count_gif(ex, 200, NULL, NULL);
}

static void count_error(void *arg, struct http_exchange *ex, int status, const char *msg, int index,
                        const char *extra_headers)
{
    (void)arg;
    (void)index;
    count_gif(ex, status, msg, extra_headers);
}

/* "true"/"1"/"on"/"yes" -> 1, "false"/"0"/"off"/"no"/"" -> 0, else -1. */
static int parse_bool(const char *s)
{
    static const char *const yes[] = {"true", "1", "on", "yes", "t"};
    static const char *const no[] = {"false", "0", "off", "no", "f", ""};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (strcasecmp(s, yes[i]) == 0) return 1;
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (strcasecmp(s, no[i]) == 0) return 0;
    return -1;
}

/* "1920" or "1920,1080,2": the first value; false when any part is not a number. */
static bool parse_size(const char *s, double *w)
{
    *w = 0;
    if (!*s) return true;
    bool first = true;
    for (;;) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !isfinite(v)) return false;
        if (first) *w = v;
        first = false;
        if (*end == 0) return true;
        if (*end != ',') return false;
        s = end + 1;
    }
}

struct count_params {
    char p[GC_PATH_BYTES_MAX + 2], t[GC_TITLE_BYTES_MAX + 2], r[GC_REF_BYTES_MAX + 2];
    char q[GC_QUERY_BYTES_MAX + 2], e[16], s[64], b[24], lang[EVENT_LANGUAGE_BYTES_MAX + 1];
};

/* Query parameter `name` into out: 0 (found, *s set), 1 absent, -1 bad (message set). */
static int qparam(const struct http_request *req, const char *name, char *out, size_t cap,
                  struct event_str *s, const char **why)
{
    size_t len;
    int rc = http_request_query(req, name, out, cap, &len);
    if (rc == TALLY_ENOENT) return 1;
    if (rc == TALLY_ETOOBIG) {
        *why = strcmp(name, "p") == 0 ? "ignored because path is longer than 2048 bytes"
                                      : "error decoding parameters: a value is too long";
        return -1;
    }
    if (rc != 0 || strlen(out) != len || !event_text_valid(out, len)) {
        *why = "error decoding parameters: invalid percent-encoding or UTF-8";
        return -1;
    }
    if (s) *s = (struct event_str){out, len};
    return 0;
}

static const char *count_decode(const struct http_request *req, struct count_params *cp,
                                struct gc_in *in)
{
    const char *why = NULL;
    memset(in, 0, sizeof *in);
    if (qparam(req, "p", cp->p, sizeof cp->p, &in->path, &why) < 0 ||
        qparam(req, "t", cp->t, sizeof cp->t, &in->title, &why) < 0 ||
        qparam(req, "r", cp->r, sizeof cp->r, &in->ref, &why) < 0 ||
        qparam(req, "q", cp->q, sizeof cp->q, &in->query, &why) < 0)
        return why;
    int rc = qparam(req, "e", cp->e, sizeof cp->e, NULL, &why);
    if (rc < 0) return why;
    if (rc == 0) {
        int v = parse_bool(cp->e);
        if (v < 0) return "error decoding parameters: e is not a boolean";
        in->event = v == 1;
    }
    rc = qparam(req, "s", cp->s, sizeof cp->s, NULL, &why);
    if (rc < 0) return why;
    if (rc == 0 && !parse_size(cp->s, &in->width))
        return "error decoding parameters: s is not a number";
    rc = qparam(req, "b", cp->b, sizeof cp->b, NULL, &why);
    if (rc < 0) return why;
    if (rc == 0 && cp->b[0]) {
        char *end;
        long long v = strtoll(cp->b, &end, 10);
        if (*end || v < 0) return "error decoding parameters: b is not a number";
        if (v > 0 && v < 150) return "wrong value: b must be 0 or >= 150";
        in->bot = v;
    }
    /* Accept-Language: the first tag. */
    const char *al = http_request_header(req, "accept-language");
    if (al) {
        while (*al == ' ')
            al++;
        size_t n = strcspn(al, ",; ");
        if (n > 0 && n < sizeof cp->lang) {
            memcpy(cp->lang, al, n);
            cp->lang[n] = 0;
            in->language = (struct event_str){cp->lang, n};
        }
    }
    return NULL;
}

static bool is_prefetch(const struct http_request *req)
{
    const char *names[] = {"purpose", "sec-purpose", "x-purpose", "x-moz"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = http_request_header(req, names[i]);
        if (v && strcasestr(v, "prefetch")) return true;
    }
    return false;
}

static void on_count(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    if (is_prefetch(req) || req->method == HTTP_HEAD) {
        count_gif(ex, 200, NULL, NULL);
        return;
    }
    char host[EVENT_SITE_BYTES_MAX + 1], why_buf[GC_ERROR_BYTES + 300];
    const struct site *site;
    int rc = gc_site(app, req, &site, host);
    if (rc == TALLY_EFULL) {
        count_gif(ex, 503, "too many sites; retry later", "Retry-After: 1\r\n");
        return;
    }
    if (rc != 0) {
        metrics_counter_add(app->events_dropped[DROP_UNKNOWN_SITE], 1);
        snprintf(why_buf, sizeof why_buf, "no site at this domain (\"%s\")", host);
        count_gif(ex, 400, why_buf, NULL);
        return;
    }
    struct count_params cp;
    struct gc_in in;
    struct gc_hit hit;
    char err[GC_ERROR_BYTES];
    const char *why = count_decode(req, &cp, &in);
    if (!why) why = gc_map(&in, site->name, timefmt_now_ms(), &hit, err);
    if (why) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        snprintf(why_buf, sizeof why_buf, "%s%s",
                 strncmp(why, "error", 5) == 0 || strncmp(why, "wrong", 5) == 0 ||
                         strncmp(why, "ignored", 7) == 0
                     ? ""
                     : "not valid: ",
                 why);
        count_gif(ex, 400, why_buf, NULL);
        return;
    }
    if (in.bot > 0) { /* see the header: acknowledged, not recorded */
        count_gif(ex, 200, NULL, NULL);
        return;
    }
    hit.ne.ev.site = (struct event_str){site->name, strlen(site->name)};
    struct ingest_opts o = {.privileged = false};
    struct ingest_answer ans = {count_ok, count_error, NULL};
    ingest_submit(app, req, ex, &hit.ne, 1, &o, &ans);
}

/* ---- POST /api/v0/count ---------------------------------------------------------------- */

#define AUTH_HEADERS "WWW-Authenticate: Basic realm=GoatCounter\r\n"

static void api_error(struct http_exchange *ex, int status, const char *msg, const char *extra)
{
    char esc[600], body[700];
    http_json_escape(esc, sizeof esc, msg);
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}", esc);
    http_exchange_complete(ex, status, "application/json", body, (size_t)n, extra);
}

/* The API token from Authorization into tok (cap bytes); NULL or the 401 message. */
static const char *api_token(const struct http_request *req, char *tok, size_t cap)
{
    const char *auth = http_request_header(req, "authorization");
    if (!auth || !*auth) return "no Authorization header";
    char scheme[16], cred[512], rest[2];
    if (sscanf(auth, "%15s %511s %1s", scheme, cred, rest) != 2)
        return "wrong format for Authorization header";
    if (strcmp(scheme, "Bearer") == 0) {
        if (strlen(cred) >= cap) return "unknown token";
        snprintf(tok, cap, "%s", cred);
        return NULL;
    }
    if (strcmp(scheme, "Basic") != 0) return "wrong format for Authorization header";
    unsigned char raw[400];
    size_t raw_len;
    if (sodium_base642bin(raw, sizeof raw - 1, cred, strlen(cred), NULL, &raw_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return "wrong format for Authorization header";
    raw[raw_len] = 0;
    const char *colon = memchr(raw, ':', raw_len);
    if (!colon || !colon[1]) return "wrong format for Authorization header";
    if (strlen(colon + 1) >= cap) return "unknown token";
    snprintf(tok, cap, "%s", colon + 1);
    return NULL;
}

/* The API answer's context: the errors of invalid hits, sent with the answer. */
struct api_ctx {
    size_t errors_len;
    char errors[]; /* {"errors":{...}} or empty */
};

static void api_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    struct api_ctx *c = arg;
    (void)accepted;
    if (c->errors_len)
        http_exchange_complete(ex, 400, "application/json", c->errors, c->errors_len, NULL);
    else
        http_exchange_complete(ex, 202, "application/json", "{\"status\":\"ok\"}", 15, NULL);
    free(c);
}

static void api_err(void *arg, struct http_exchange *ex, int status, const char *msg, int index,
                    const char *extra_headers)
{
    (void)index;
    free(arg);
    api_error(ex, status, msg, extra_headers);
}

static struct event_str jstr(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsString(v) || !v->valuestring) return (struct event_str){NULL, 0};
    return (struct event_str){v->valuestring, strlen(v->valuestring)};
}

/* One JSON hit -> in; NULL or the reason. */
static const char *api_hit(const cJSON *h, struct gc_in *in, bool no_sessions, int64_t now_ms)
{
    memset(in, 0, sizeof *in);
    if (!cJSON_IsObject(h)) return "a hit must be a JSON object";
    in->path = jstr(h, "path");
    in->title = jstr(h, "title");
    in->ref = jstr(h, "ref");
    in->query = jstr(h, "query");
    in->user_agent = jstr(h, "user_agent");
    in->location = jstr(h, "location");
    in->language = jstr(h, "language");
    in->session = jstr(h, "session");
    struct event_str ip = jstr(h, "ip");
    uint8_t ip16[16];
    char ipbuf[64];
    if (ip.len && ip.len < sizeof ipbuf) {
        memcpy(ipbuf, ip.ptr, ip.len);
        ipbuf[ip.len] = 0;
        if (cidr_parse_ip(ipbuf, ip16) == 0) in->ip = ip;
    }
    const struct event_str *texts[] = {&in->path,  &in->title,      &in->ref,
                                       &in->query, &in->user_agent, &in->session};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (texts[i]->len && !event_text_valid(texts[i]->ptr, texts[i]->len))
            return "a value is not valid UTF-8";
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(h, "event");
    if (cJSON_IsBool(e))
        in->event = cJSON_IsTrue(e);
    else if (cJSON_IsNumber(e))
        in->event = e->valuedouble != 0;
    else if (cJSON_IsString(e)) {
        int v = parse_bool(e->valuestring);
        if (v < 0) return "event: not a boolean";
        in->event = v == 1;
    } else if (e && !cJSON_IsNull(e))
        return "event: not a boolean";
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(h, "size");
    if (cJSON_IsNumber(s))
        in->width = s->valuedouble;
    else if (cJSON_IsArray(s) && cJSON_IsNumber(s->child))
        in->width = s->child->valuedouble;
    else if (cJSON_IsString(s) && !parse_size(s->valuestring, &in->width))
        return "size: not a number";
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(h, "bot");
    if (cJSON_IsNumber(b) && b->valuedouble > 0) in->bot = (long long)b->valuedouble;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(h, "created_at");
    if (cJSON_IsString(c) && c->valuestring[0]) {
        if (timefmt_parse_rfc3339(c->valuestring, strlen(c->valuestring), &in->ts_ms) != 0 ||
            in->ts_ms < 0)
            return "created_at: not an RFC 3339 time (like 2026-01-31T12:00:00Z) after 1970";
        if (in->ts_ms == 0) in->ts_ms = 1; /* 0 means "now" in gc_in */
    } else if (c && !cJSON_IsNull(c)) {
        return "created_at: not an RFC 3339 time";
    }
    (void)now_ms;
    if (!in->session.len && !(in->user_agent.len && in->ip.len) && !no_sessions)
        return "session or browser/IP not set; use no_sessions if you don't want to track "
               "unique visits";
    return NULL;
}

/* The key's scope and site restriction (global lists: the config's and the data dir's). */
static enum key_scope api_key(struct app *app, const struct tally_config *cfg, const char *tok,
                              const struct config_site **key_site)
{
    size_t len = strlen(tok);
    *key_site = NULL;
    enum key_scope scope = key_verify(tok, len, &cfg->key_digests, &app->stored_keys);
    for (int i = 0; scope == KEY_SCOPE_NONE && i < cfg->site_count; i++) {
        const struct config_site *s = &cfg->sites[i];
        if (s->key_digests.count == 0) continue;
        scope = key_verify(tok, len, NULL, &s->key_digests);
        if (scope != KEY_SCOPE_NONE) *key_site = s;
    }
    return scope;
}

/* Resolves the API request's site; answers and returns NULL when there is none. */
static const struct site *api_site(struct app *app, const struct http_request *req,
                                   struct http_exchange *ex, const struct config_site *key_site)
{
    const struct site *site = NULL;
    char host[EVENT_SITE_BYTES_MAX + 1], msg[EVENT_SITE_BYTES_MAX + 64];
    if (key_site) {
        struct sites *sites = atomic_load_explicit(&app->sites, memory_order_acquire);
        if (sites_resolve(sites, key_site->name, &site) == 0) return site;
        snprintf(host, sizeof host, "%s", key_site->name);
    } else {
        int rc = gc_site(app, req, &site, host);
        if (rc == 0) return site;
        if (rc == TALLY_EFULL) {
            api_error(ex, 503, "too many sites; retry later", "Retry-After: 1\r\n");
            return NULL;
        }
    }
    metrics_counter_add(app->events_dropped[DROP_UNKNOWN_SITE], 1);
    snprintf(msg, sizeof msg, "no site at this domain (\"%s\")", host);
    api_error(ex, 400, msg, NULL);
    return NULL;
}

static bool content_type_json(const char *ct)
{
    if (!ct) return false;
    while (*ct == ' ')
        ct++;
    size_t n = strlen("application/json");
    return strncasecmp(ct, "application/json", n) == 0 &&
           (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ');
}

/* Checks the body's top level; NULL or the 400 message. Sets *hits, *no_sessions. */
static const char *api_body(const cJSON *root, uint32_t max, const cJSON **hits, bool *no_sessions,
                            char msg[GC_ERROR_BYTES])
{
    if (!cJSON_IsObject(root)) return "invalid JSON: the body must be a JSON object";
    const cJSON *ns = cJSON_GetObjectItemCaseSensitive(root, "no_sessions");
    *no_sessions = cJSON_IsTrue(ns);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "filter");
    for (const cJSON *x = cJSON_IsArray(f) ? f->child : NULL; x; x = x->next)
        if (!cJSON_IsString(x) || strcmp(x->valuestring, "ip") != 0) {
            snprintf(msg, GC_ERROR_BYTES, "unknown value in Filter: [%.60s]",
                     cJSON_IsString(x) ? x->valuestring : "?");
            return msg;
        }
    *hits = cJSON_GetObjectItemCaseSensitive(root, "hits");
    int n = cJSON_IsArray(*hits) ? cJSON_GetArraySize(*hits) : 0;
    if (n == 0) return "no hits";
    if ((uint32_t)n > max) {
        snprintf(msg, GC_ERROR_BYTES, "maximum amount of pageviews in one batch is %u", max);
        return msg;
    }
    return NULL;
}

static void on_api_count(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    const struct tally_config *cfg = app_config(app);
    char tok[KEY_TEXT_BYTES + 64], msg[GC_ERROR_BYTES];
    const char *why = api_token(req, tok, sizeof tok);
    const struct config_site *key_site = NULL;
    if (why) {
        api_error(ex, 401, why, AUTH_HEADERS);
        return;
    }
    enum key_scope scope = api_key(app, cfg, tok, &key_site);
    sodium_memzero(tok, sizeof tok);
    if (scope == KEY_SCOPE_NONE) {
        api_error(ex, 401, "unknown token", AUTH_HEADERS);
        return;
    }
    if (!key_scope_allows(scope, KEY_SCOPE_WRITE)) {
        api_error(ex, 403, "requires count permissions", NULL);
        return;
    }
    if (req->body_len && !content_type_json(http_request_header(req, "content-type"))) {
        api_error(ex, 415, "Content-Type must be application/json", NULL);
        return;
    }
    cJSON *root = NULL;
    if (event_text_valid(req->body, req->body_len))
        root = json_arena_parse(req->body, req->body_len);
    uint32_t max = GC_HITS_MAX;
    if (cfg->events_per_request_max > 0 && (uint32_t)cfg->events_per_request_max < max)
        max = (uint32_t)cfg->events_per_request_max;
    const cJSON *hits = NULL;
    bool no_sessions = false;
    why = root ? api_body(root, max, &hits, &no_sessions, msg) : "invalid JSON in the body";
    const struct site *site = NULL;
    if (why) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        api_error(ex, 400, why, NULL);
    } else if ((site = api_site(app, req, ex, key_site)) != NULL) {
        int n = cJSON_GetArraySize(hits);
        struct gc_hit *hv = malloc((size_t)n * sizeof *hv);
        struct native_event *evs = malloc((size_t)n * sizeof *evs);
        /* {"errors":{"INDEX":"message",...}}: at most n entries of GC_ERROR_BYTES * 2 + 16. */
        size_t ecap = 32 + (size_t)n * (GC_ERROR_BYTES * 2 + 24);
        struct api_ctx *ctx = malloc(sizeof *ctx + ecap);
        if (!hv || !evs || !ctx) {
            free(ctx);
            api_error(ex, 503, "out of memory; retry later", "Retry-After: 1\r\n");
        } else {
            int64_t now = timefmt_now_ms();
            uint32_t good = 0, bad = 0;
            size_t el = (size_t)snprintf(ctx->errors, ecap, "{\"errors\":{");
            int i = 0;
            for (const cJSON *h = hits->child; h; h = h->next, i++) {
                struct gc_in in;
                char err[GC_ERROR_BYTES], esc[GC_ERROR_BYTES * 2];
                const char *e = api_hit(h, &in, no_sessions, now);
                if (!e) e = gc_map(&in, site->name, now, &hv[i], err);
                if (e) {
                    http_json_escape(esc, sizeof esc, e);
                    el += (size_t)snprintf(ctx->errors + el, ecap - el, "%s\"%d\":\"%s\"",
                                           bad ? "," : "", i, esc);
                    bad++;
                    continue;
                }
                if (in.bot > 0) continue; /* see the header: acknowledged, not recorded */
                hv[i].ne.ev.site = (struct event_str){site->name, strlen(site->name)};
                evs[good++] = hv[i].ne;
            }
            el += (size_t)snprintf(ctx->errors + el, ecap - el, "}}");
            ctx->errors_len = bad ? el : 0;
            if (bad) metrics_counter_add(app->events_dropped[DROP_INVALID], bad);
            if (good == 0) {
                if (bad)
                    http_exchange_complete(ex, 400, "application/json", ctx->errors, el, NULL);
                else
                    http_exchange_complete(ex, 202, "application/json", "{\"status\":\"ok\"}", 15,
                                           NULL);
                free(ctx);
            } else {
                struct ingest_opts o = {.privileged = true, .key_site = key_site};
                struct ingest_answer ans = {api_ok, api_err, ctx};
                ingest_submit(app, req, ex, evs, good, &o, &ans);
            }
        }
        free(hv);
        free(evs);
    }
    json_arena_delete(root);
}

int peer_goatcounter_routes(struct app *app)
{
    struct http_route count = {
        .methods = HTTP_M(HTTP_GET) | HTTP_M(HTTP_POST),
        .path = "/count",
        .cors = true,
        .name = "goatcounter_count",
        .handler = on_count,
        .arg = app,
    };
    struct http_route api = {
        .methods = HTTP_M(HTTP_POST),
        .path = "/api/v0/count",
        .cors = true,
        .name = "goatcounter_api_count",
        .handler = on_api_count,
        .arg = app,
    };
    int rc = http_server_route(app->http, &count);
    return rc ? rc : http_server_route(app->http, &api);
}
