/*
 * peer_matomo: the Matomo Tracking HTTP API (API.md §3.2), for matomo.js / piwik.js and the
 * server-side Matomo trackers.
 *
 *   GET/POST /matomo.php   (and /piwik.php, the older name Matomo still serves)
 *     parameters in the query string, or for POST in an x-www-form-urlencoded body (a
 *     parameter in the query wins, as PHP's $_GET + $_POST)
 *   POST /matomo.php with a JSON body {"requests": ["?idsite=1&rec=1&...", {...}, ...],
 *     "token_auth": "...", "send_image": 0}: bulk tracking
 *
 * ONE REQUEST, as Matomo's tracker handles it:
 *   - idsite must be one of a configured site's `ids` (or its name; never an auto-created
 *     site): otherwise 400 (invalid request) and nothing is recorded;
 *   - rec=1 is required to record: without it the request is answered as tracked and nothing
 *     is appended (Matomo excludes it); likewise ping=1 (heartbeats) appends nothing;
 *   - token_auth, when it is a Tally write/admin key (global, or of that site), authenticates:
 *     cip (the visitor's IP, for geo and the anonymous hash; never stored) and cdt older than
 *     24 h are honoured only then, and the request is not rate limited. cdt (UTC "YYYY-MM-DD
 *     HH:MM:SS", RFC 3339 or a Unix timestamp) and cdo (seconds before now) set the time; a
 *     cdt in the future or unreadable is ignored (Matomo does so); older than 24 h without a
 *     key is an invalid request (400).
 *   - answer: 200 with a 1x1 transparent GIF (GET: Cache-Control: no-store), or 204 with
 *     send_image=0. Invalid requests get 400 with the same body (Matomo answers 204 there too
 *     when send_image=0). 429 (rate limit) and 503 (log unavailable) are Tally's own.
 *     A GET without any parameter answers 200 with a short HTML note, as Matomo does.
 *
 * MAPPING to the canonical event (the first that applies):
 *   e_c and e_a    custom event named e_a, props category (e_c), name (e_n), value (e_v)
 *   search         "Site Search", props keyword, category (search_cat), count (search_count)
 *   link           "Outbound Link: Click", prop url (the link)
 *   download       "File Download", prop url
 *   idgoal=0       "Ecommerce Order" when ec_id is set (prop order_id, and ec_id is the
 *                  event's idempotency id: Matomo records an order id once), else "Ecommerce
 *                  Cart Update"; revenue in the site's currency
 *   idgoal=N       "Goal N", with revenue when given
 *   c_n            "Content Interaction" (c_i set) or "Content Impression", props content_name,
 *                  content_piece (c_p), content_target (c_t), interaction (c_i)
 *   otherwise      pageview
 *   url -> url (an absolute http(s) URL, else absent), urlref -> referrer, ua -> User-Agent
 *   (else the request's), lang (else Accept-Language) -> language (first tag), res "WxH" ->
 *   screen, dimensionN -> props (while fewer than 30), revenue -> revenue (a decimal >= 0).
 *   Visitor id: uid, else cid (must be 16 hex digits, else the request is invalid), else _id
 *   (used when 16 hex digits). action_name, _cvar, cvar, pv_id, h/m/s, plugins and the other
 *   browser hints are not stored.
 *
 * BULK: each entry is one request as above (a string: its query after '?'; an object: its
 * members as parameters; strings without a query are skipped, as Matomo does). Invalid entries
 * are skipped and counted; the valid ones are appended together (one all-or-nothing append).
 * Answer 200 {"status":"success","tracked":N,"invalid":M}, plus "invalid_indices" when the
 * bulk token_auth is a valid key; 204 when "send_image" is 0; a body that is not JSON, or more
 * entries than events_per_request_max, is refused (400 / 413 {"status":"error",...}).
 *
 * THREADS: handlers run on HTTP workers; the decode state lives in one arena freed before the
 * handler returns; the answer's state is a small heap block freed by the answer callback.
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "app/ingest.h"
#include "app/peers.h"
#include "core/json_arena.h"
#include "core/keys.h"
#include "http/http_url.h"
#include "ingest/timefmt.h"
#include "ingest/url.h"
#include "tally/error.h"

#define MATOMO_SCRATCH_BYTES (16 * 1024)
#define MATOMO_CUSTOM_TS_FREE_S (24 * 3600)    /* cdt newer than this needs no token_auth */
#define MATOMO_TS_PAST_MAX_S (20LL * 365 * 86400) /* older cdt is ignored */
#define MATOMO_DIMENSION_MAX 999

static const unsigned char gif_1x1[] = {
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
};

static const char empty_note[] =
    "This is the tracking endpoint of a Tally server, compatible with Matomo's tracking API "
    "(matomo.php). It records requests that carry idsite and rec=1.\n";

#define MATOMO_PARAMS_MAX 256 /* parameters indexed per request; later ones are ignored */

/* One raw name=value pair of a query string or form body (not decoded). */
struct mkv {
    const char *name, *value;
    size_t name_len, value_len;
};

/* Where one request's parameters come from. The query and the form are split once into kv
 * (query first, so the first match is the query's, as PHP's $_GET + $_POST). */
struct mparams {
    const char *query; /* query string (or a bulk entry's query), may be NULL */
    size_t query_len;
    const char *form; /* x-www-form-urlencoded body, may be NULL */
    size_t form_len;
    const cJSON *obj; /* a bulk entry given as an object, or NULL */
    struct mkv *kv;
    int kv_count;
};

/* Decode state of one HTTP request. */
struct mdec {
    struct app *app;
    struct event_arena *arena;
    int64_t now_ms;
    bool key_valid;                     /* token_auth is a write/admin key */
    const struct config_site *key_site; /* ... restricted to this site, or NULL (all) */
    const char *accept_language;
    char scratch[MATOMO_SCRATCH_BYTES];
};

enum mresult { M_EVENT, M_NONE, M_INVALID };

/* The answer's state (freed by the callback). */
struct manswer {
    bool bulk, send_image, get, show_indices;
    uint32_t tracked_extra; /* bulk: entries tracked without an event (excluded) */
    uint32_t invalid;
    char indices[]; /* bulk: "[1,4]" */
};

/* ---- parameters ---------------------------------------------------------------------------- */

/* 1 found (*out in the arena, NUL-terminated, valid UTF-8 without NUL), 0 absent, -1 bad. */
static int mget(struct mdec *d, const struct mparams *p, const char *name, struct event_str *out)
{
    size_t len = 0;
    int rc = TALLY_ENOENT;
    if (p->obj) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(p->obj, name);
        if (!it || cJSON_IsNull(it)) return 0;
        if (cJSON_IsString(it)) {
            len = strlen(it->valuestring);
            if (len >= sizeof d->scratch) return -1;
            memcpy(d->scratch, it->valuestring, len + 1);
        } else if (cJSON_IsNumber(it)) {
            double v = it->valuedouble;
            len = (size_t)(v == floor(v) && fabs(v) < 1e15
                               ? snprintf(d->scratch, 64, "%lld", (long long)v)
                               : snprintf(d->scratch, 64, "%.17g", v));
        } else if (cJSON_IsBool(it)) {
            len = (size_t)snprintf(d->scratch, 64, "%d", cJSON_IsTrue(it) ? 1 : 0);
        } else {
            return -1;
        }
        rc = 0;
    } else {
        size_t nlen = strlen(name);
        const struct mkv *kv = NULL;
        for (int i = 0; i < p->kv_count && !kv; i++)
            if (p->kv[i].name_len == nlen && memcmp(p->kv[i].name, name, nlen) == 0)
                kv = &p->kv[i];
        if (!kv) return 0;
        rc = http_url_decode(kv->value, kv->value_len, d->scratch, sizeof d->scratch, &len,
                             true);
        if (rc != 0) return -1;
    }
    if (strlen(d->scratch) != len || !event_text_valid(d->scratch, len)) return -1;
    char *s = event_arena_strdup(d->arena, d->scratch, len);
    if (!s) return -1;
    *out = (struct event_str){s, len};
    return 1;
}

/* Splits one "a=1&b=2" source into p->kv. Names with escapes are decoded into the arena
 * (they are rare: Matomo's names are plain ASCII). */
static void index_source(struct mdec *d, struct mparams *p, const char *q, size_t len)
{
    const char *e = q ? q + len : NULL;
    while (q && q < e && p->kv_count < MATOMO_PARAMS_MAX) {
        const char *amp = memchr(q, '&', (size_t)(e - q));
        const char *pe = amp ? amp : e;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        const char *ne = eq ? eq : pe;
        struct mkv kv = {q, eq ? eq + 1 : pe, (size_t)(ne - q), eq ? (size_t)(pe - eq - 1) : 0};
        if (kv.name_len && (memchr(q, '%', kv.name_len) || memchr(q, '+', kv.name_len))) {
            size_t nl;
            char *nm = event_arena_alloc(d->arena, kv.name_len + 1);
            if (nm && http_url_decode(q, kv.name_len, nm, kv.name_len + 1, &nl, true) == 0) {
                kv.name = nm;
                kv.name_len = nl;
            } else {
                kv.name_len = 0;
            }
        }
        if (kv.name_len) p->kv[p->kv_count++] = kv;
        q = pe + 1;
    }
}

static int index_params(struct mdec *d, struct mparams *p)
{
    p->kv_count = 0;
    if (p->obj) return 0;
    if (!p->kv) p->kv = event_arena_alloc(d->arena, MATOMO_PARAMS_MAX * sizeof *p->kv);
    if (!p->kv) return -1; /* decoded values are copied, so a bulk reuses one table */
    index_source(d, p, p->query, p->query_len);
    index_source(d, p, p->form, p->form_len);
    return 0;
}

/* Absent or unreadable parameters read as empty (Matomo's getRequestVar default). */
static struct event_str mstr(struct mdec *d, const struct mparams *p, const char *name)
{
    struct event_str s = {"", 0};
    if (mget(d, p, name, &s) != 1) s = (struct event_str){"", 0};
    return s;
}

static bool params_empty(const struct mparams *p)
{
    if (p->obj) return p->obj->child == NULL;
    return p->query_len == 0 && p->form_len == 0;
}

static bool is_hex16(struct event_str s)
{
    if (s.len != 16) return false;
    for (size_t i = 0; i < 16; i++) {
        char c = s.ptr[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return false;
    }
    return true;
}

/* A Tally key given as token_auth: *valid and *site (NULL: every site). */
static void verify_token(struct app *app, struct event_str tok, bool *valid,
                         const struct config_site **site)
{
    *valid = false;
    *site = NULL;
    if (tok.len == 0) return;
    enum key_scope scope = key_verify(tok.ptr, tok.len, &app->cfg->key_digests, NULL);
    if (scope == KEY_SCOPE_NONE) scope = key_verify(tok.ptr, tok.len, &app->stored_keys, NULL);
    for (int i = 0; scope == KEY_SCOPE_NONE && i < app->cfg->site_count; i++) {
        const struct config_site *s = &app->cfg->sites[i];
        if (s->key_digests.count == 0) continue;
        scope = key_verify(tok.ptr, tok.len, NULL, &s->key_digests);
        if (scope != KEY_SCOPE_NONE) *site = s;
    }
    *valid = scope != KEY_SCOPE_NONE && key_scope_allows(scope, KEY_SCOPE_WRITE);
    if (!*valid) *site = NULL;
}

/* ---- values -------------------------------------------------------------------------------- */

/* cdt: Unix seconds (optionally fractional), "YYYY-MM-DD HH:MM:SS" in UTC, or RFC 3339.
 * 0 and *ms, or -1 when unreadable. */
static int parse_cdt(struct event_str s, int64_t *ms)
{
    char *end;
    if (s.len == 0) return -1;
    if ((s.ptr[0] >= '0' && s.ptr[0] <= '9') && !memchr(s.ptr, '-', s.len)) {
        double v = strtod(s.ptr, &end);
        if (*end || !isfinite(v) || v < 0 || v > 253402300799.0) return -1;
        *ms = (int64_t)(v * 1000);
        return 0;
    }
    int y, mo, dd, h = 0, mi = 0, se = 0, used = 0;
    if (sscanf(s.ptr, "%4d-%2d-%2d %2d:%2d:%2d%n", &y, &mo, &dd, &h, &mi, &se, &used) == 6 &&
        (size_t)used == s.len) {
        if (mo < 1 || mo > 12 || dd < 1 || dd > (int)timefmt_days_in_month(y, (unsigned)mo) ||
            h > 23 || mi > 59 || se > 59 || y < 1970)
            return -1;
        *ms = (timefmt_days_from_civil(y, (unsigned)mo, (unsigned)dd) * 86400 + h * 3600 +
               mi * 60 + se) * 1000LL;
        return 0;
    }
    used = 0;
    if (sscanf(s.ptr, "%4d-%2d-%2d%n", &y, &mo, &dd, &used) == 3 && (size_t)used == s.len) {
        if (mo < 1 || mo > 12 || dd < 1 || dd > (int)timefmt_days_in_month(y, (unsigned)mo) ||
            y < 1970)
            return -1;
        *ms = timefmt_days_from_civil(y, (unsigned)mo, (unsigned)dd) * 86400000LL;
        return 0;
    }
    return timefmt_parse_rfc3339(s.ptr, s.len, ms) == 0 ? 0 : -1;
}

/* A decimal amount >= 0 -> micros. */
static bool parse_amount(struct event_str s, int64_t *micros)
{
    char *end;
    if (s.len == 0 || s.ptr[0] == '-') return false;
    double v = strtod(s.ptr, &end);
    if (*end || !isfinite(v) || v < 0 || v > 1e12) return false;
    *micros = (int64_t)floor(v * 1e6 + 0.5);
    return true;
}

/* The first language tag of a lang parameter or Accept-Language header ("de-DE,de;q=0.9"). */
static struct event_str first_language(struct mdec *d, const char *s)
{
    size_t n = 0;
    while (s[n] == ' ')
        s++;
    while (n < EVENT_LANGUAGE_BYTES_MAX &&
           ((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
            (s[n] >= '0' && s[n] <= '9') || s[n] == '-' || s[n] == '_'))
        n++;
    if (n == 0 || (s[n] && s[n] != ',' && s[n] != ';' && s[n] != ' ')) return (struct event_str){"", 0};
    char *out = event_arena_strdup(d->arena, s, n);
    if (!out) return (struct event_str){"", 0};
    for (size_t i = 0; i < n; i++)
        if (out[i] == '_') out[i] = '-';
    return (struct event_str){out, n};
}

static int add_prop(struct mdec *d, struct event_prop *props, uint32_t *n, const char *key,
                    struct event_str val, bool numeric)
{
    if (val.len == 0 || *n >= EVENT_PROPS_MAX) return 0;
    size_t klen = strlen(key);
    char *k = event_arena_strdup(d->arena, key, klen);
    if (!k) return -1;
    struct event_prop *p = &props[(*n)++];
    p->key = (struct event_str){k, klen};
    p->value = (struct event_str){val.ptr, event_text_prefix(val.ptr, val.len,
                                                            EVENT_PROP_VALUE_BYTES_MAX)};
    p->type = numeric && event_json_number_valid(val.ptr, val.len) &&
                      val.len <= EVENT_PROP_NUMBER_BYTES_MAX
                  ? EVENT_PROP_NUMBER
                  : EVENT_PROP_STRING;
    return 0;
}

static struct event_str text(const char *s)
{
    return (struct event_str){s, strlen(s)};
}

/* ---- one request --------------------------------------------------------------------------- */

/* Decodes one tracking request into *ne. */
static enum mresult decode_one(struct mdec *d, const struct mparams *p, struct event_str bulk_tok,
                               struct native_event *ne, bool *auth_out)
{
    *auth_out = false;
    memset(ne, 0, sizeof *ne);
    struct event *ev = &ne->ev;
    event_init(ev);
    ev->source = EVENT_SOURCE_MATOMO;
    ev->received_ms = d->now_ms;
    ev->ts_ms = d->now_ms;

    struct event_str idsite = mstr(d, p, "idsite");
    const struct site *site = NULL;
    /* Only configured sites (by an id or the name): Matomo's numeric ids are never
     * auto-created sites. */
    if (idsite.len == 0 || idsite.len > EVENT_SITE_BYTES_MAX ||
        !config_site_find(d->app->cfg, idsite.ptr) ||
        sites_resolve(d->app->sites, idsite.ptr, &site) != 0)
        return M_INVALID;
    ev->site = idsite;

    struct event_str tok = bulk_tok.len ? bulk_tok : mstr(d, p, "token_auth");
    bool auth = false;
    if (tok.len) {
        const struct config_site *ks;
        verify_token(d->app, tok, &auth, &ks);
        auth = auth && (!ks || ks == site->config);
    }
    *auth_out = auth;

    /* Time. */
    struct event_str cdt = mstr(d, p, "cdt"), cdo = mstr(d, p, "cdo");
    int64_t ts = 0;
    bool have_ts = false;
    if (cdt.len && parse_cdt(cdt, &ts) == 0) have_ts = true;
    if (cdo.len) {
        char *end;
        double off = strtod(cdo.ptr, &end);
        if (!*end && isfinite(off) && fabs(off) < 1e10) {
            if (!have_ts) ts = d->now_ms;
            ts -= (int64_t)(fabs(off) * 1000);
            have_ts = true;
        }
    }
    if (have_ts && ts <= d->now_ms && ts > d->now_ms - MATOMO_TS_PAST_MAX_S * 1000) {
        if (ts <= d->now_ms - MATOMO_CUSTOM_TS_FREE_S * 1000LL && !auth) return M_INVALID;
        ev->ts_ms = ts;
    }

    /* Visitor. */
    struct event_str uid = mstr(d, p, "uid"), cid = mstr(d, p, "cid"), vid = mstr(d, p, "_id");
    if (cid.len && !is_hex16(cid)) return M_INVALID;
    if (uid.len)
        ne->visitor_id = (struct event_str){uid.ptr, event_text_prefix(uid.ptr, uid.len,
                                                                       NATIVE_VISITOR_ID_BYTES_MAX)};
    else if (cid.len)
        ne->visitor_id = cid;
    else if (is_hex16(vid))
        ne->visitor_id = vid;

    if (auth) {
        struct event_str cip = mstr(d, p, "cip");
        unsigned char a[16];
        if (cip.len && cip.len < 64 &&
            (inet_pton(AF_INET, cip.ptr, a) == 1 || inet_pton(AF_INET6, cip.ptr, a) == 1))
            ne->ip = cip;
    }

    /* Excluded requests: valid, answered, not recorded. */
    struct event_str rec = mstr(d, p, "rec");
    if (rec.len == 0 || atoi(rec.ptr) == 0) return M_NONE;
    struct event_str ping = mstr(d, p, "ping");
    if (ping.len && atoi(ping.ptr) != 0) return M_NONE;

    /* Context. */
    struct event_str u = mstr(d, p, "url");
    if (u.len) {
        struct url parsed;
        size_t len = event_text_prefix(u.ptr, u.len, EVENT_URL_BYTES_MAX);
        if (url_parse(u.ptr, len, &parsed) == 0) ev->url = (struct event_str){u.ptr, len};
    }
    struct event_str ref = mstr(d, p, "urlref");
    ev->referrer = (struct event_str){ref.ptr, event_text_prefix(ref.ptr, ref.len,
                                                                 EVENT_REFERRER_BYTES_MAX)};
    struct event_str ua = mstr(d, p, "ua");
    if (ua.len)
        ev->user_agent = (struct event_str){ua.ptr, event_text_prefix(ua.ptr, ua.len,
                                                                      EVENT_USER_AGENT_BYTES_MAX)};
    struct event_str lang = mstr(d, p, "lang");
    if (lang.len)
        ev->language = first_language(d, lang.ptr);
    else if (d->accept_language)
        ev->language = first_language(d, d->accept_language);
    struct event_str res = mstr(d, p, "res");
    unsigned w = 0, h = 0;
    char tail;
    if (res.len && sscanf(res.ptr, "%ux%u%c", &w, &h, &tail) == 2 && w <= 65535 && h <= 65535) {
        ev->screen_width_px = (uint16_t)w;
        ev->screen_height_px = (uint16_t)h;
    }

    /* What happened. */
    struct event_prop *props = event_arena_alloc(d->arena, EVENT_PROPS_MAX * sizeof *props);
    if (!props) return M_INVALID;
    uint32_t n = 0;
    int err = 0;
    struct event_str e_c = mstr(d, p, "e_c"), e_a = mstr(d, p, "e_a");
    struct event_str search = mstr(d, p, "search"), link = mstr(d, p, "link");
    struct event_str download = mstr(d, p, "download"), idgoal = mstr(d, p, "idgoal");
    struct event_str c_n = mstr(d, p, "c_n");
    struct event_str revenue = mstr(d, p, "revenue");
    bool with_revenue = false;
    if (e_c.len && e_a.len) {
        ev->name = (struct event_str){e_a.ptr, event_text_prefix(e_a.ptr, e_a.len,
                                                                 EVENT_NAME_BYTES_MAX)};
        err |= add_prop(d, props, &n, "category", e_c, false);
        err |= add_prop(d, props, &n, "name", mstr(d, p, "e_n"), false);
        err |= add_prop(d, props, &n, "value", mstr(d, p, "e_v"), true);
    } else if (search.len) {
        ev->name = text("Site Search");
        err |= add_prop(d, props, &n, "keyword", search, false);
        err |= add_prop(d, props, &n, "category", mstr(d, p, "search_cat"), false);
        err |= add_prop(d, props, &n, "count", mstr(d, p, "search_count"), true);
    } else if (link.len) {
        ev->name = text("Outbound Link: Click");
        err |= add_prop(d, props, &n, "url", link, false);
    } else if (download.len) {
        ev->name = text("File Download");
        err |= add_prop(d, props, &n, "url", download, false);
    } else if (idgoal.len) {
        long g = strtol(idgoal.ptr, NULL, 10);
        with_revenue = true;
        if (g == 0) {
            struct event_str ec_id = mstr(d, p, "ec_id");
            ev->name = text(ec_id.len ? "Ecommerce Order" : "Ecommerce Cart Update");
            err |= add_prop(d, props, &n, "order_id", ec_id, false);
            if (ec_id.len && ec_id.len <= EVENT_CLIENT_ID_BYTES_MAX) ev->client_id = ec_id;
        } else {
            char name[32];
            int len = snprintf(name, sizeof name, "Goal %ld", g);
            char *nm = event_arena_strdup(d->arena, name, (size_t)len);
            if (!nm) return M_INVALID;
            ev->name = (struct event_str){nm, (size_t)len};
        }
    } else if (c_n.len) {
        struct event_str c_i = mstr(d, p, "c_i");
        ev->name = text(c_i.len ? "Content Interaction" : "Content Impression");
        err |= add_prop(d, props, &n, "content_name", c_n, false);
        err |= add_prop(d, props, &n, "content_piece", mstr(d, p, "c_p"), false);
        err |= add_prop(d, props, &n, "content_target", mstr(d, p, "c_t"), false);
        err |= add_prop(d, props, &n, "interaction", c_i, false);
    }
    if (with_revenue && revenue.len) {
        int64_t micros;
        if (parse_amount(revenue, &micros)) {
            const char *cur = site->config && site->config->currency && site->config->currency[0]
                                  ? site->config->currency : "EUR";
            if (strlen(cur) == 3) {
                ev->has_revenue = true;
                ev->revenue_micros = micros;
                memcpy(ev->currency, cur, 4);
            }
        }
    }
    /* Custom dimensions: dimension1..dimension999, in number order. */
    if (p->obj) {
        for (const cJSON *it = p->obj->child; it && n < EVENT_PROPS_MAX; it = it->next) {
            char *end;
            if (strncmp(it->string, "dimension", 9) != 0) continue;
            long k = strtol(it->string + 9, &end, 10);
            if (*end || k < 1 || k > MATOMO_DIMENSION_MAX) continue;
            err |= add_prop(d, props, &n, it->string, mstr(d, p, it->string), false);
        }
    } else {
        for (int i = 0; i < p->kv_count && n < EVENT_PROPS_MAX; i++) {
            const struct mkv *kv = &p->kv[i];
            if (kv->name_len <= 9 || kv->name_len >= 13 || memcmp(kv->name, "dimension", 9))
                continue;
            char key[16], *end;
            memcpy(key, kv->name, kv->name_len);
            key[kv->name_len] = 0;
            long k = strtol(key + 9, &end, 10);
            bool dup = false;
            for (uint32_t j = 0; j < n; j++)
                dup = dup || (props[j].key.len == kv->name_len &&
                              memcmp(props[j].key.ptr, key, kv->name_len) == 0);
            if (!*end && k >= 1 && k <= MATOMO_DIMENSION_MAX && !dup)
                err |= add_prop(d, props, &n, key, mstr(d, p, key), false);
        }
    }
    if (err) return M_INVALID;
    ev->props = props;
    ev->props_count = n;
    return M_EVENT;
}

/* ---- answers ------------------------------------------------------------------------------- */

static void send_single(struct http_exchange *ex, const struct manswer *a, int status,
                        const char *extra_headers)
{
    char hdr[128];
    snprintf(hdr, sizeof hdr, "%s%s", a->get ? "Cache-Control: no-store\r\n" : "",
             extra_headers ? extra_headers : "");
    if (!a->send_image && (status == 200 || status == 400)) {
        http_exchange_complete(ex, 204, NULL, "", 0, hdr[0] ? hdr : NULL);
        return;
    }
    http_exchange_complete(ex, status, "image/gif", gif_1x1, sizeof gif_1x1,
                           hdr[0] ? hdr : NULL);
}

static void send_bulk(struct http_exchange *ex, const struct manswer *a, int status,
                      uint32_t tracked, const char *extra_headers)
{
    if (status == 200 && !a->send_image) {
        http_exchange_complete(ex, 204, NULL, "", 0, extra_headers);
        return;
    }
    size_t cap = strlen(a->indices) + 128;
    char *body = malloc(cap);
    if (!body) {
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    int n = snprintf(body, cap, "{\"status\":\"%s\",\"tracked\":%u,\"invalid\":%u%s%s%s}",
                     status == 200 ? "success" : "error", tracked, a->invalid,
                     a->show_indices ? ",\"invalid_indices\":" : "",
                     a->show_indices ? a->indices : "", "");
    http_exchange_complete(ex, status, "application/json", body, (size_t)n, extra_headers);
    free(body);
}

static void m_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    struct manswer *a = arg;
    if (a->bulk)
        send_bulk(ex, a, 200, accepted + a->tracked_extra, NULL);
    else
        send_single(ex, a, 200, NULL);
    free(a);
}

static void m_error(void *arg, struct http_exchange *ex, int status, const char *msg, int index,
                    const char *extra_headers)
{
    struct manswer *a = arg;
    (void)msg;
    (void)index;
    if (status != 429 && status != 503 && status != 413) status = 400;
    if (a->bulk)
        send_bulk(ex, a, status, 0, extra_headers);
    else
        send_single(ex, a, status, extra_headers);
    free(a);
}

/* ---- handler ------------------------------------------------------------------------------- */

static bool body_is_bulk(const struct http_request *req)
{
    size_t i = 0;
    while (i < req->body_len && (req->body[i] == ' ' || req->body[i] == '\n' ||
                                 req->body[i] == '\r' || req->body[i] == '\t'))
        i++;
    return i < req->body_len && req->body[i] == '{' &&
           memmem(req->body, req->body_len, "\"requests\"", 10) != NULL;
}

static struct manswer *answer_new(size_t indices_cap)
{
    struct manswer *a = calloc(1, sizeof *a + indices_cap + 3);
    if (a) memcpy(a->indices, "[]", 3);
    return a;
}

static void on_bulk(struct mdec *d, struct http_request *req, struct http_exchange *ex,
                    struct manswer *a)
{
    struct app *app = d->app;
    cJSON *root = json_arena_parse(req->body, req->body_len);
    const cJSON *reqs = root ? cJSON_GetObjectItemCaseSensitive(root, "requests") : NULL;
    if (!cJSON_IsArray(reqs)) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        send_bulk(ex, a, 400, 0, NULL);
        free(a);
        cJSON_Delete(root);
        return;
    }
    int count = cJSON_GetArraySize(reqs);
    if (count > app->cfg->events_per_request_max) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        send_bulk(ex, a, 413, 0, NULL);
        free(a);
        cJSON_Delete(root);
        return;
    }
    const cJSON *si = cJSON_GetObjectItemCaseSensitive(root, "send_image");
    if ((cJSON_IsString(si) && strcmp(si->valuestring, "0") == 0) ||
        (cJSON_IsNumber(si) && si->valuedouble == 0) || cJSON_IsFalse(si))
        a->send_image = false;
    struct event_str tok = {"", 0};
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "token_auth");
    if (cJSON_IsString(t)) tok = text(t->valuestring);
    if (tok.len) {
        const struct config_site *ks;
        verify_token(app, tok, &d->key_valid, &ks);
        d->key_site = ks;
        a->show_indices = d->key_valid;
    }
    struct native_event *evs = count ? event_arena_alloc(d->arena, (size_t)count * sizeof *evs)
                                     : NULL;
    size_t icap = (size_t)count * 12 + 8, ilen = 1;
    struct manswer *big = answer_new(icap);
    if ((count && !evs) || !big) {
        free(big);
        free(a);
        cJSON_Delete(root);
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    big->bulk = true;
    big->send_image = a->send_image;
    big->show_indices = a->show_indices;
    free(a);
    a = big;
    int n = 0, index = 0;
    bool all_auth = true;
    struct mkv *kv = event_arena_alloc(d->arena, MATOMO_PARAMS_MAX * sizeof *kv);
    for (const cJSON *it = reqs->child; it; it = it->next, index++) {
        struct mparams p = {.kv = kv};
        if (cJSON_IsString(it)) {
            const char *s = it->valuestring, *qm = strchr(s, '?');
            if (!qm || !qm[1]) continue; /* Matomo skips entries without a query */
            p.query = qm + 1;
            p.query_len = strcspn(p.query, "#");
        } else if (cJSON_IsObject(it)) {
            p.obj = it;
        } else {
            continue;
        }
        bool auth;
        enum mresult r = index_params(d, &p) != 0 ? M_INVALID
                                                  : decode_one(d, &p, tok, &evs[n], &auth);
        if (r == M_INVALID) {
            a->invalid++;
            ilen += (size_t)snprintf(a->indices + ilen, icap - ilen, "%s%d",
                                     a->invalid > 1 ? "," : "", index);
        } else if (r == M_NONE) {
            a->tracked_extra++;
        } else {
            all_auth = all_auth && auth;
            n++;
        }
    }
    snprintf(a->indices + ilen, icap - ilen, "]");
    if (a->invalid) metrics_counter_add(app->events_dropped[DROP_INVALID], a->invalid);
    if (n == 0) {
        send_bulk(ex, a, 200, a->tracked_extra, NULL);
        free(a);
    } else {
        struct ingest_opts o = {.privileged = all_auth};
        struct ingest_answer ans = {m_ok, m_error, a};
        ingest_submit(app, req, ex, evs, (uint32_t)n, &o, &ans);
    }
    cJSON_Delete(root);
}

/* Decode state per worker thread, reused across requests: a malloc and free of the 16 KiB
 * scratch and of a fresh arena chunk per request showed up in profiles. */
struct mtls {
    struct mdec dec;
    struct event_arena *arena;
};

static pthread_key_t g_tls_key;
static pthread_once_t g_tls_once = PTHREAD_ONCE_INIT;

static void tls_free(void *p)
{
    struct mtls *t = p;
    if (!t) return;
    event_arena_free(t->arena);
    free(t);
}

static void tls_key_make(void)
{
    pthread_key_create(&g_tls_key, tls_free);
}

static struct mtls *tls_get(void)
{
    pthread_once(&g_tls_once, tls_key_make);
    struct mtls *t = pthread_getspecific(g_tls_key);
    if (t) return t;
    t = malloc(sizeof *t);
    if (!t) return NULL;
    t->arena = event_arena_new(16 * 1024, 64 * 1024);
    if (!t->arena || pthread_setspecific(g_tls_key, t) != 0) {
        tls_free(t);
        return NULL;
    }
    return t;
}

static void on_track(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    struct mtls *t = tls_get();
    struct mdec *d = t ? &t->dec : NULL;
    struct event_arena *arena = t ? t->arena : NULL;
    struct manswer *a = answer_new(0);
    if (!t || !a) {
        free(a);
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    event_arena_reset(arena);
    d->app = app;
    d->arena = arena;
    d->now_ms = timefmt_now_ms();
    d->key_valid = false;
    d->key_site = NULL;
    d->accept_language = http_request_header(req, "accept-language");
    a->get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    a->send_image = true;

    if (req->method == HTTP_POST && body_is_bulk(req)) {
        a->bulk = true;
        on_bulk(d, req, ex, a);
        return;
    }
    const char *ct = http_request_header(req, "content-type");
    struct mparams p = {.query = req->query, .query_len = req->query ? req->query_len : 0};
    if (req->method == HTTP_POST && req->body_len > 0 &&
        (!ct || strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0 ||
         strncasecmp(ct, "text/plain", 10) == 0)) {
        p.form = req->body;
        p.form_len = req->body_len;
    }
    if (index_params(d, &p) != 0) {
        free(a);
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    struct event_str si = mstr(d, &p, "send_image");
    a->send_image = !(si.len == 1 && si.ptr[0] == '0');
    if (params_empty(&p)) {
        http_exchange_complete(ex, a->get ? 200 : 400, "text/html; charset=utf-8", empty_note,
                               sizeof empty_note - 1, NULL);
        free(a);
    } else {
        struct native_event ne;
        bool auth;
        enum mresult r = decode_one(d, &p, (struct event_str){"", 0}, &ne, &auth);
        if (r == M_INVALID) {
            metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
            send_single(ex, a, 400, NULL);
            free(a);
        } else if (r == M_NONE) {
            send_single(ex, a, 200, NULL);
            free(a);
        } else {
            struct ingest_opts o = {.privileged = auth};
            struct ingest_answer ans = {m_ok, m_error, a};
            ingest_submit(app, req, ex, &ne, 1, &o, &ans);
        }
    }
}

int peer_matomo_routes(struct app *app)
{
    static const char *const paths[] = {"/matomo.php", "/piwik.php"};
    static const char *const names[] = {"matomo", "piwik"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(paths); i++) {
        struct http_route r = {
            .methods = HTTP_M(HTTP_GET) | HTTP_M(HTTP_POST),
            .path = paths[i],
            .cors = true,
            .name = names[i],
            .handler = on_track,
            .arg = app,
        };
        int rc = http_server_route(app->http, &r);
        if (rc) return rc;
    }
    return 0;
}
