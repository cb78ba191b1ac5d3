/*
 * peer_umami: Umami's collection API (API.md §3.2), for Umami's tracker script and @umami/node.
 *
 *   POST /api/send   {"type": "event"|"identify"|"performance", "payload": {...}}
 *   POST /api/batch  [{"type": ..., "payload": {...}}, ...]
 *
 * VALIDATION follows Umami's request schema (type an enum; payload an object with exactly one
 * of website/link/pixel, each a UUID; hostname <= 100, language <= 35, screen <= 11, name and
 * tag <= 50 characters; data an object; timestamp an integer; title, url, referrer, id,
 * userAgent, ip, browser, os, device strings; lcp/inp/fcp/ttfb 0..60000, cls 0..100). A
 * failure answers as Umami does: 400 {"error": {"message": "Bad request", "code":
 * "bad-request", "status": 400, "errors": [...], "properties": {...}}} (zod's error tree; we
 * report the first problem found). The UUID must be one of a site's `ids`, else 400
 * {"error": {"message": "Website not found.", "code": "bad-request", "status": 400}}.
 * Tally's own limits, reported the same way: at most 30 data keys after flattening (key <= 300
 * bytes), timestamp within [now - 72 h, now + 5 min].
 *
 * ANSWER: 200 {"cache": TOKEN, "sessionId": UUID, "visitId": UUID} after the event is durable.
 * The tracker only echoes the cache token back (x-umami-cache), which Tally ignores; the token
 * and ids are random and carry no visitor information. /api/batch answers 200 {"size": N,
 * "processed": P, "errors": E, "details": [{"index": i, "response": ERROR_BODY}], "cache": ...}
 * like Umami: invalid entries are reported and skipped, the valid ones appended together. 429
 * (rate limit, browsers are limited per IP) and 503 (log unavailable) use Umami's error shape.
 * Umami drops bots with {"beep": "boop"}; Tally records them flagged (left out of statistics)
 * and answers as for any event.
 *
 * MAPPING: type "event" with a name -> a custom event of that name, without one -> pageview;
 * "identify" and "performance" are acknowledged and not stored (Tally keeps neither session
 * data nor web vitals). url: an absolute http(s) URL is kept as is; a path is joined to
 * https://HOSTNAME (else the site's name). referrer as sent; screen "WxH"; language; data ->
 * props (nested objects flattened to "a.b", arrays as JSON text, strings cut at 2000 bytes);
 * tag -> prop "tag"; id -> the visitor id (hashed with the site); userAgent -> the visitor's
 * User-Agent (else the request's); timestamp (Unix seconds) -> event time. ip, title, browser,
 * os and device are not used (Tally derives them and never takes an IP from an unauthenticated
 * body).
 *
 * THREADS: handlers run on HTTP workers; the decode state is a per-thread arena reset by each
 * request; the answer body is a heap string freed by the answer callback.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "app/ingest.h"
#include "app/peers.h"
#include "core/json_arena.h"
#include "ingest/timefmt.h"
#include "ingest/url.h"
#include "tally/error.h"

#define UMAMI_FLATTEN_DEPTH_MAX 4

struct udec {
    struct app *app;
    struct event_arena *arena;
    int64_t now_ms;
    cJSON *error; /* the error body of the last failed item */
};

enum uresult { U_EVENT, U_NONE, U_INVALID };

/* ---- error bodies -------------------------------------------------------------------------- */

static const char *json_type(const cJSON *it)
{
    if (!it) return "undefined";
    if (cJSON_IsString(it)) return "string";
    if (cJSON_IsNumber(it)) return "number";
    if (cJSON_IsBool(it)) return "boolean";
    if (cJSON_IsNull(it)) return "null";
    if (cJSON_IsArray(it)) return "array";
    return "object";
}

/* {"error": {"message", "code", "status"}} plus, for schema errors, zod's tree with one message
 * at path (key1, then key2 inside it; NULL for fewer levels). */
static cJSON *error_body(const char *message, const char *code, int status, bool tree,
                         const char *key1, const char *key2, const char *text)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddNumberToObject(e, "status", status);
    if (!tree) return root;
    cJSON *node = e;
    const char *keys[2] = {key1, key2};
    for (int i = 0; i < 2 && keys[i]; i++) {
        cJSON_AddArrayToObject(node, "errors");
        cJSON *props = cJSON_AddObjectToObject(node, "properties");
        node = cJSON_AddObjectToObject(props, keys[i]);
    }
    cJSON *errs = cJSON_AddArrayToObject(node, "errors");
    cJSON_AddItemToArray(errs, cJSON_CreateString(text));
    return root;
}

static enum uresult bad(struct udec *d, const char *k1, const char *k2, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static enum uresult bad(struct udec *d, const char *k1, const char *k2, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    cJSON_Delete(d->error);
    d->error = error_body("Bad request", "bad-request", 400, true, k1, k2, text);
    return U_INVALID;
}

static enum uresult website_not_found(struct udec *d)
{
    cJSON_Delete(d->error);
    d->error = error_body("Website not found.", "bad-request", 400, false, NULL, NULL, NULL);
    return U_INVALID;
}

/* ---- schema -------------------------------------------------------------------------------- */

static bool is_uuid(const char *s)
{
    if (strlen(s) != 36) return false;
    if (strcmp(s, "00000000-0000-0000-0000-000000000000") == 0 ||
        strcasecmp(s, "ffffffff-ffff-ffff-ffff-ffffffffffff") == 0)
        return true;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return false;
        } else if (!hex) {
            return false;
        }
    }
    return s[14] >= '1' && s[14] <= '8' && strchr("89abAB", s[19]) != NULL;
}

static size_t chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* The payload members the schema names, in the order they are checked: the string fields, the
 * three ids, data, timestamp, the web vitals. */
enum pfield {
    P_HOSTNAME, P_LANGUAGE, P_REFERRER, P_SCREEN, P_TITLE, P_URL, P_NAME, P_TAG, P_IP,
    P_USER_AGENT, P_ID, P_BROWSER, P_OS, P_DEVICE, /* string fields */
    P_WEBSITE, P_LINK, P_PIXEL,                    /* ids */
    P_DATA, P_TIMESTAMP,
    P_LCP, P_INP, P_CLS, P_FCP, P_TTFB,            /* vitals */
    P_COUNT
};
#define P_STRINGS_END P_WEBSITE
#define P_VITALS_START P_LCP

static const char *const pfield_names[P_COUNT] = {
    "hostname", "language", "referrer", "screen",  "title", "url", "name", "tag",
    "ip",       "userAgent", "id",      "browser", "os",    "device", "website", "link",
    "pixel",    "data",      "timestamp", "lcp",   "inp",   "cls", "fcp", "ttfb",
};

static const int string_max_chars[P_STRINGS_END] = {
    [P_HOSTNAME] = 100, [P_LANGUAGE] = 35, [P_SCREEN] = 11, [P_NAME] = 50, [P_TAG] = 50,
};

static const double vital_max[P_COUNT - P_VITALS_START] = {60000, 60000, 100, 60000, 60000};

/* Each field's first member in the payload, as cJSON_GetObjectItemCaseSensitive would return
 * it, or NULL; found in one pass over the members (a lookup per field walked them 24 times). */
struct pmembers {
    const cJSON *f[P_COUNT];
};

/* f when k is that field's name, else -1. */
static int pfield_is(const char *k, enum pfield f)
{
    return strcmp(k, pfield_names[f]) == 0 ? (int)f : -1;
}

/* The field a member name is, or -1: a switch on the first byte, then the names with it. */
static int pfield_of(const char *k)
{
    int f;
    switch (k[0]) {
    case 'b': return pfield_is(k, P_BROWSER);
    case 'c': return pfield_is(k, P_CLS);
    case 'd': return (f = pfield_is(k, P_DATA)) >= 0 ? f : pfield_is(k, P_DEVICE);
    case 'f': return pfield_is(k, P_FCP);
    case 'h': return pfield_is(k, P_HOSTNAME);
    case 'i':
        if ((f = pfield_is(k, P_ID)) >= 0 || (f = pfield_is(k, P_IP)) >= 0) return f;
        return pfield_is(k, P_INP);
    case 'l':
        if ((f = pfield_is(k, P_LANGUAGE)) >= 0 || (f = pfield_is(k, P_LINK)) >= 0) return f;
        return pfield_is(k, P_LCP);
    case 'n': return pfield_is(k, P_NAME);
    case 'o': return pfield_is(k, P_OS);
    case 'p': return pfield_is(k, P_PIXEL);
    case 'r': return pfield_is(k, P_REFERRER);
    case 's': return pfield_is(k, P_SCREEN);
    case 't':
        if ((f = pfield_is(k, P_TITLE)) >= 0 || (f = pfield_is(k, P_TAG)) >= 0 ||
            (f = pfield_is(k, P_TIMESTAMP)) >= 0)
            return f;
        return pfield_is(k, P_TTFB);
    case 'u': return (f = pfield_is(k, P_URL)) >= 0 ? f : pfield_is(k, P_USER_AGENT);
    case 'w': return pfield_is(k, P_WEBSITE);
    default: return -1;
    }
}

static void pmembers_scan(const cJSON *pl, struct pmembers *pm)
{
    memset(pm, 0, sizeof *pm);
    for (const cJSON *c = pl->child; c; c = c->next) {
        int f = c->string ? pfield_of(c->string) : -1;
        if (f >= 0 && !pm->f[f]) pm->f[f] = c;
    }
}

/* Checks the payload against Umami's schema. */
static enum uresult check_payload(struct udec *d, const struct pmembers *pm)
{
    for (int i = 0; i < P_STRINGS_END; i++) {
        const cJSON *it = pm->f[i];
        if (!it) continue;
        const char *name = pfield_names[i];
        if (!cJSON_IsString(it))
            return bad(d, "payload", name, "Invalid input: expected string, received %s",
                       json_type(it));
        if (!event_text_valid(it->valuestring, strlen(it->valuestring)))
            return bad(d, "payload", name, "Invalid input: not valid UTF-8");
        if (string_max_chars[i] && chars(it->valuestring) > (size_t)string_max_chars[i])
            return bad(d, "payload", name, "Too big: expected string to have <=%d characters",
                       string_max_chars[i]);
    }
    int given = 0;
    for (int i = P_WEBSITE; i <= P_PIXEL; i++) {
        const cJSON *it = pm->f[i];
        if (!it) continue;
        if (!cJSON_IsString(it))
            return bad(d, "payload", pfield_names[i],
                       "Invalid input: expected string, received %s", json_type(it));
        if (!is_uuid(it->valuestring)) return bad(d, "payload", pfield_names[i], "Invalid UUID");
        given++;
    }
    if (given != 1)
        return bad(d, "payload", "website",
                   "Exactly one of website, link, or pixel must be provided");
    const cJSON *data = pm->f[P_DATA];
    if (data && !cJSON_IsObject(data))
        return bad(d, "payload", "data", "Invalid input: expected record, received %s",
                   json_type(data));
    const cJSON *ts = pm->f[P_TIMESTAMP];
    if (ts) {
        double v = NAN;
        if (cJSON_IsNumber(ts)) v = ts->valuedouble;
        else if (cJSON_IsString(ts)) { /* JavaScript's Number(): blank is 0, junk is NaN */
            char *end;
            v = strtod(ts->valuestring, &end);
            if (end == ts->valuestring) v = strspn(end, " \t\n\r") == strlen(end) ? 0 : NAN;
            else if (strspn(end, " \t\n\r") != strlen(end)) v = NAN;
        }
        if (!isfinite(v) || v != floor(v))
            return bad(d, "payload", "timestamp", "Invalid input: expected int, received number");
    }
    for (int i = P_VITALS_START; i < P_COUNT; i++) {
        const cJSON *it = pm->f[i];
        double max = vital_max[i - P_VITALS_START];
        if (!it) continue;
        if (!cJSON_IsNumber(it))
            return bad(d, "payload", pfield_names[i],
                       "Invalid input: expected number, received %s", json_type(it));
        if (it->valuedouble < 0)
            return bad(d, "payload", pfield_names[i], "Too small: expected number to be >=0");
        if (it->valuedouble > max)
            return bad(d, "payload", pfield_names[i], "Too big: expected number to be <=%g",
                       max);
    }
    return U_EVENT;
}

/* ---- mapping ------------------------------------------------------------------------------- */

/* A member's string ("" when absent or not a string). */
static const char *str_of(const struct pmembers *pm, enum pfield f)
{
    const cJSON *it = pm->f[f];
    return cJSON_IsString(it) ? it->valuestring : "";
}

/* sscanf(s, "%ux%u%c", w, h, &tail) == 2, sooner for the usual "1920x1080" (1 to 5 digits each
 * side, nothing else), where sscanf gives exactly those numbers. */
static bool screen_size(const char *s, unsigned *w, unsigned *h)
{
    unsigned v[2] = {0, 0};
    const char *p = s;
    for (int i = 0; i < 2; i++) {
        const char *start = p;
        while (*p >= '0' && *p <= '9' && p - start < 5)
            v[i] = v[i] * 10 + (unsigned)(*p++ - '0');
        if (p == start || (*p >= '0' && *p <= '9') || *p != (i == 0 ? 'x' : 0)) {
            char tail;
            return sscanf(s, "%ux%u%c", w, h, &tail) == 2;
        }
        p++;
    }
    *w = v[0];
    *h = v[1];
    return true;
}

static size_t format_number(double v, char out[EVENT_PROP_NUMBER_BYTES_MAX])
{
    if (v == 0) v = 0;
    if (fabs(v) < 1e15 && v == floor(v))
        return (size_t)snprintf(out, EVENT_PROP_NUMBER_BYTES_MAX, "%lld", (long long)v);
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, EVENT_PROP_NUMBER_BYTES_MAX, "%.*g", prec, v);
        if (strtod(out, NULL) == v) break;
    }
    return (size_t)n;
}

struct flat {
    struct udec *d;
    struct event_prop *props;
    uint32_t n;
    enum uresult r;
};

static void add_prop(struct flat *f, const char *key, size_t klen, const cJSON *v)
{
    if (f->r != U_EVENT || cJSON_IsNull(v)) return;
    if (f->n >= EVENT_PROPS_MAX) {
        f->r = bad(f->d, "payload", "data", "Too many keys: at most %d (after flattening)",
                   EVENT_PROPS_MAX);
        return;
    }
    if (klen == 0 || klen > EVENT_PROP_KEY_BYTES_MAX || !event_text_valid(key, klen)) {
        f->r = bad(f->d, "payload", "data", "Invalid key: keys are 1 to %d bytes of UTF-8",
                   EVENT_PROP_KEY_BYTES_MAX);
        return;
    }
    struct event_prop *p = &f->props[f->n];
    char num[EVENT_PROP_NUMBER_BYTES_MAX];
    const char *val;
    size_t vlen;
    char *printed = NULL;
    if (cJSON_IsString(v)) {
        val = v->valuestring;
        vlen = strlen(val);
        if (!event_text_valid(val, vlen)) {
            f->r = bad(f->d, "payload", "data", "Invalid input: not valid UTF-8");
            return;
        }
        vlen = event_text_prefix(val, vlen, EVENT_PROP_VALUE_BYTES_MAX);
        p->type = EVENT_PROP_STRING;
    } else if (cJSON_IsNumber(v)) {
        if (!isfinite(v->valuedouble)) return;
        vlen = format_number(v->valuedouble, num);
        val = num;
        p->type = EVENT_PROP_NUMBER;
    } else if (cJSON_IsBool(v)) {
        val = cJSON_IsTrue(v) ? "true" : "false";
        vlen = strlen(val);
        p->type = EVENT_PROP_BOOL;
    } else { /* an array: its JSON text */
        printed = cJSON_PrintUnformatted(v);
        if (!printed) {
            f->r = bad(f->d, "payload", "data", "out of memory");
            return;
        }
        val = printed;
        vlen = event_text_prefix(printed, strlen(printed), EVENT_PROP_VALUE_BYTES_MAX);
        p->type = EVENT_PROP_STRING;
    }
    char *k = event_arena_strdup(f->d->arena, key, klen);
    char *s = event_arena_strdup(f->d->arena, val, vlen);
    cJSON_free(printed);
    if (!k || !s) {
        f->r = bad(f->d, "payload", "data", "out of memory");
        return;
    }
    for (uint32_t i = 0; i < f->n; i++)
        if (f->props[i].key.len == klen && memcmp(f->props[i].key.ptr, key, klen) == 0) {
            f->r = bad(f->d, "payload", "data", "Duplicate key after flattening");
            return;
        }
    p->key = (struct event_str){k, klen};
    p->value = (struct event_str){s, vlen};
    f->n++;
}

static void flatten(struct flat *f, const cJSON *obj, char *prefix, size_t plen, int depth)
{
    for (const cJSON *c = obj->child; c && f->r == U_EVENT; c = c->next) {
        size_t klen = strlen(c->string);
        size_t total = plen + (plen ? 1 : 0) + klen;
        if (total > EVENT_PROP_KEY_BYTES_MAX) {
            f->r = bad(f->d, "payload", "data", "Invalid key: keys are 1 to %d bytes of UTF-8",
                       EVENT_PROP_KEY_BYTES_MAX);
            return;
        }
        char key[EVENT_PROP_KEY_BYTES_MAX + 1];
        memcpy(key, prefix, plen);
        size_t at = plen;
        if (plen) key[at++] = '.';
        memcpy(key + at, c->string, klen);
        key[total] = 0;
        if (cJSON_IsObject(c) && depth < UMAMI_FLATTEN_DEPTH_MAX)
            flatten(f, c, key, total, depth + 1);
        else if (cJSON_IsObject(c))
            add_prop(f, key, total, c); /* too deep: JSON text */
        else
            add_prop(f, key, total, c);
    }
}

/* url: absolute http(s) kept; a path joined to https://host. */
static struct event_str event_url(struct udec *d, const char *u, const char *host)
{
    size_t len = strlen(u);
    struct url parsed;
    if (len == 0) return (struct event_str){"", 0};
    if (url_parse(u, len, &parsed) == 0)
        return (struct event_str){u, event_text_prefix(u, len, EVENT_URL_BYTES_MAX)};
    if (strstr(u, "://")) return (struct event_str){"", 0};
    size_t cap = strlen(host) + len + 16;
    char *buf = event_arena_alloc(d->arena, cap);
    if (!buf) return (struct event_str){"", 0};
    int n = snprintf(buf, cap, "https://%s%s%s", host, u[0] == '/' ? "" : "/", u);
    size_t cut = event_text_prefix(buf, (size_t)n, EVENT_URL_BYTES_MAX);
    if (url_parse(buf, cut, &parsed) != 0) return (struct event_str){"", 0};
    return (struct event_str){buf, cut};
}

/* Decodes one {"type", "payload"} object. */
static enum uresult decode_one(struct udec *d, const cJSON *root, struct native_event *ne)
{
    if (!cJSON_IsObject(root))
        return bad(d, NULL, NULL, "Invalid input: expected object, received %s",
                   json_type(root));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "type");
    const char *t = cJSON_IsString(type) ? type->valuestring : "";
    bool is_event = strcmp(t, "event") == 0;
    if (!is_event && strcmp(t, "identify") != 0 && strcmp(t, "performance") != 0)
        return bad(d, "type", NULL,
                   "Invalid option: expected one of \"event\"|\"identify\"|\"performance\"");
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(root, "payload");
    if (!cJSON_IsObject(pl))
        return bad(d, "payload", NULL, "Invalid input: expected object, received %s",
                   json_type(pl));
    struct pmembers pm;
    pmembers_scan(pl, &pm);
    enum uresult r = check_payload(d, &pm);
    if (r != U_EVENT) return r;

    const char *source = str_of(&pm, P_WEBSITE);
    if (!*source) source = str_of(&pm, P_LINK);
    if (!*source) source = str_of(&pm, P_PIXEL);
    const struct site *site;
    if (!config_site_find(d->app->cfg, source) || sites_resolve(d->app->sites, source, &site) != 0)
        return website_not_found(d);

    memset(ne, 0, sizeof *ne);
    struct event *ev = &ne->ev;
    event_init(ev);
    ev->source = EVENT_SOURCE_UMAMI;
    ev->received_ms = d->now_ms;
    ev->ts_ms = d->now_ms;
    ev->site = (struct event_str){site->name, strlen(site->name)};

    const cJSON *ts = pm.f[P_TIMESTAMP];
    if (ts) {
        double s = cJSON_IsNumber(ts) ? ts->valuedouble : strtod(ts->valuestring, NULL);
        if (s != 0) {
            double ms = s * 1000;
            if (ms < (double)(d->now_ms - NATIVE_TS_PAST_MS) ||
                ms > (double)(d->now_ms + NATIVE_TS_FUTURE_MS))
                return bad(d, "payload", "timestamp", "Invalid input: the timestamp must lie "
                           "between 72 hours before and 5 minutes after the server's time");
            ev->ts_ms = (int64_t)ms;
        }
    }
    if (!is_event) return U_NONE;

    const char *name = str_of(&pm, P_NAME);
    if (*name) ev->name = (struct event_str){name, strlen(name)};
    const char *host = str_of(&pm, P_HOSTNAME);
    ev->url = event_url(d, str_of(&pm, P_URL), *host ? host : site->name);
    const char *ref = str_of(&pm, P_REFERRER);
    ev->referrer = (struct event_str){ref, event_text_prefix(ref, strlen(ref),
                                                             EVENT_REFERRER_BYTES_MAX)};
    const char *ua = str_of(&pm, P_USER_AGENT);
    ev->user_agent = (struct event_str){ua, event_text_prefix(ua, strlen(ua),
                                                              EVENT_USER_AGENT_BYTES_MAX)};
    const char *id = str_of(&pm, P_ID);
    ne->visitor_id = (struct event_str){id, event_text_prefix(id, strlen(id),
                                                              NATIVE_VISITOR_ID_BYTES_MAX)};
    unsigned w = 0, h = 0;
    if (screen_size(str_of(&pm, P_SCREEN), &w, &h) && w <= 65535 && h <= 65535) {
        ev->screen_width_px = (uint16_t)w;
        ev->screen_height_px = (uint16_t)h;
    }
    const char *lang = str_of(&pm, P_LANGUAGE);
    size_t ln = strspn(lang, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-");
    if (ln > 0 && lang[ln] == 0) ev->language = (struct event_str){lang, ln};

    struct flat f = {d, event_arena_alloc(d->arena, EVENT_PROPS_MAX * sizeof(struct event_prop)),
                     0, U_EVENT};
    if (!f.props) return bad(d, NULL, NULL, "out of memory");
    const cJSON *data = pm.f[P_DATA];
    if (data) flatten(&f, data, "", 0, 1);
    const cJSON *tag = pm.f[P_TAG];
    if (cJSON_IsString(tag) && tag->valuestring[0]) add_prop(&f, "tag", 3, tag);
    if (f.r != U_EVENT) return f.r;
    ev->props = f.props;
    ev->props_count = f.n;
    return U_EVENT;
}

/* ---- answers ------------------------------------------------------------------------------- */

/* The answer's ids only need to be unique, not secret: a per-thread xorshift generator seeded
 * once from the system (randombytes_buf per request is a getrandom system call each). */
static _Thread_local uint64_t g_rng;

static void random_bytes(unsigned char *b, size_t n)
{
    if (g_rng == 0) {
        randombytes_buf(&g_rng, sizeof g_rng);
        g_rng |= 1;
    }
    for (size_t i = 0; i < n; i += 8) { /* 8 bytes per step: the states never repeat */
        g_rng ^= g_rng << 13;
        g_rng ^= g_rng >> 7;
        g_rng ^= g_rng << 17;
        memcpy(b + i, &g_rng, n - i < 8 ? n - i : 8);
    }
}

/* A version 4 UUID in lower-case hex, NUL-terminated (what "%02x" per byte prints). */
static void random_uuid(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    random_bytes(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    size_t k = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[k++] = '-';
        out[k++] = hex[b[i] >> 4];
        out[k++] = hex[b[i] & 15];
    }
    out[k] = 0;
}

#define UMAMI_TOKEN_BYTES 48 /* 32 random bytes as unpadded URL-safe base64 (43) + NUL */

static void random_token(char out[UMAMI_TOKEN_BYTES])
{
    unsigned char b[32];
    random_bytes(b, sizeof b);
    sodium_bin2base64(out, UMAMI_TOKEN_BYTES, b, sizeof b,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

#define UMAMI_SUCCESS_BYTES 160

static char *success_body(void)
{
    char token[UMAMI_TOKEN_BYTES], sid[37], vid[37];
    random_token(token);
    random_uuid(sid);
    random_uuid(vid);
    char *body = malloc(UMAMI_SUCCESS_BYTES);
    if (!body) return NULL;
    /* {"cache":"TOKEN","sessionId":"UUID","visitId":"UUID"}: 43 + 36 + 36 + 40 bytes < 160. */
    char *p = body;
    const char *parts[] = {"{\"cache\":\"", token, "\",\"sessionId\":\"", sid,
                           "\",\"visitId\":\"", vid, "\"}"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(parts); i++) {
        size_t n = strlen(parts[i]);
        memcpy(p, parts[i], n);
        p += n;
    }
    *p = 0;
    return body;
}

static void respond_json(struct http_exchange *ex, int status, cJSON *obj, const char *extra)
{
    char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!text) {
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    http_exchange_complete(ex, status, "application/json", text, strlen(text), extra);
    cJSON_free(text);
}

/* arg: the success body (heap), sent after the commit. */
static void u_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    (void)accepted;
    char *body = arg;
    http_exchange_complete(ex, 200, "application/json", body, strlen(body), NULL);
    free(body);
}

static void u_error(void *arg, struct http_exchange *ex, int status, const char *msg, int index,
                    const char *extra_headers)
{
    (void)index;
    free(arg);
    if (status == 404) {
        respond_json(ex, 400, error_body("Website not found.", "bad-request", 400, false, NULL,
                                         NULL, NULL), NULL);
        return;
    }
    const char *code = status == 429   ? "too-many-requests"
                       : status == 413 ? "payload-too-large"
                       : status >= 500 ? "server-error"
                                       : "bad-request";
    respond_json(ex, status, error_body(msg, code, status, false, NULL, NULL, NULL),
                 extra_headers);
}

/* ---- handlers ------------------------------------------------------------------------------ */

/* One arena per worker thread, reset by each request (it keeps 64 KiB of chunks). */
static pthread_key_t g_arena_key;
static pthread_once_t g_arena_once = PTHREAD_ONCE_INIT;

static void arena_free(void *a)
{
    event_arena_free(a);
}

static void arena_key_make(void)
{
    pthread_key_create(&g_arena_key, arena_free);
}

static bool setup(struct udec *d, struct app *app)
{
    d->app = app;
    d->now_ms = timefmt_now_ms();
    d->error = NULL;
    pthread_once(&g_arena_once, arena_key_make);
    d->arena = pthread_getspecific(g_arena_key);
    if (!d->arena) {
        d->arena = event_arena_new(16 * 1024, 64 * 1024);
        if (d->arena && pthread_setspecific(g_arena_key, d->arena) != 0) {
            event_arena_free(d->arena);
            d->arena = NULL;
        }
    }
    if (d->arena) event_arena_reset(d->arena);
    return d->arena != NULL;
}

static void drop_invalid(struct app *app, uint64_t n)
{
    metrics_counter_add(app->events_dropped[DROP_INVALID], n);
}

static void on_send(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    struct udec d;
    if (!setup(&d, app)) {
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    cJSON *root = json_arena_parse(req->body, req->body_len);
    struct native_event ne;
    enum uresult r = decode_one(&d, root, &ne);
    if (r == U_INVALID) {
        drop_invalid(app, 1);
        respond_json(ex, 400, d.error, NULL);
        d.error = NULL;
    } else {
        char *body = success_body();
        if (!body) {
            http_respond_error(ex, 503, "out of memory; retry later");
        } else if (r == U_NONE) {
            u_ok(body, ex, 0);
        } else {
            struct ingest_opts o = {0};
            struct ingest_answer ans = {u_ok, u_error, body};
            ingest_submit(app, req, ex, &ne, 1, &o, &ans);
        }
    }
    cJSON_Delete(d.error);
    json_arena_delete(root);
}

static void on_batch(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    struct udec d;
    if (!setup(&d, app)) {
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    cJSON *root = json_arena_parse(req->body, req->body_len);
    cJSON *out = NULL;
    if (!cJSON_IsArray(root)) {
        drop_invalid(app, 1);
        bad(&d, NULL, NULL, "Invalid input: expected array, received %s", json_type(root));
        respond_json(ex, 400, d.error, NULL);
        d.error = NULL;
        goto done;
    }
    int count = cJSON_GetArraySize(root);
    if (count > app->cfg->events_per_request_max) {
        drop_invalid(app, 1);
        char m[96];
        snprintf(m, sizeof m, "Payload too large: at most %lld entries per batch",
                 (long long)app->cfg->events_per_request_max);
        respond_json(ex, 413, error_body(m, "payload-too-large", 413, false, NULL, NULL, NULL),
                     NULL);
        goto done;
    }
    struct native_event *evs =
        event_arena_alloc(d.arena, (size_t)(count ? count : 1) * sizeof *evs);
    out = cJSON_CreateObject();
    cJSON *details = cJSON_CreateArray();
    if (!evs || !out || !details) {
        cJSON_Delete(details);
        http_respond_error(ex, 503, "out of memory; retry later");
        goto done;
    }
    int n = 0, errors = 0, index = 0;
    for (const cJSON *it = root->child; it; it = it->next, index++) {
        enum uresult r = decode_one(&d, it, &evs[n]);
        if (r == U_INVALID) {
            cJSON *det = cJSON_CreateObject();
            cJSON_AddNumberToObject(det, "index", index);
            cJSON_AddItemToObject(det, "response", d.error);
            d.error = NULL;
            cJSON_AddItemToArray(details, det);
            errors++;
        } else if (r == U_EVENT) {
            n++;
        }
    }
    if (errors) drop_invalid(app, (uint64_t)errors);
    char token[48];
    random_token(token);
    cJSON_AddNumberToObject(out, "size", count);
    cJSON_AddNumberToObject(out, "processed", count - errors);
    cJSON_AddNumberToObject(out, "errors", errors);
    cJSON_AddItemToObject(out, "details", details);
    if (errors < count)
        cJSON_AddStringToObject(out, "cache", token);
    else
        cJSON_AddNullToObject(out, "cache");
    char *body = cJSON_PrintUnformatted(out);
    if (!body) {
        http_respond_error(ex, 503, "out of memory; retry later");
    } else if (n == 0) {
        http_exchange_complete(ex, 200, "application/json", body, strlen(body), NULL);
    } else {
        /* u_ok frees with free(): hand it a malloc'd copy of cJSON's text */
        char *copy = strdup(body);
        if (!copy) {
            http_respond_error(ex, 503, "out of memory; retry later");
        } else {
            struct ingest_opts o = {0};
            struct ingest_answer ans = {u_ok, u_error, copy};
            ingest_submit(app, req, ex, evs, (uint32_t)n, &o, &ans);
        }
    }
    cJSON_free(body);
done:
    cJSON_Delete(out);
    cJSON_Delete(d.error);
    json_arena_delete(root);
}

int peer_umami_routes(struct app *app)
{
    struct http_route routes[] = {
        {.methods = HTTP_M(HTTP_POST), .path = "/api/send", .cors = true, .name = "umami_send",
         .handler = on_send, .arg = app},
        {.methods = HTTP_M(HTTP_POST), .path = "/api/batch", .cors = true,
         .name = "umami_batch", .handler = on_batch, .arg = app},
    };
    for (size_t i = 0; i < TALLY_ARRAY_LEN(routes); i++) {
        int rc = http_server_route(app->http, &routes[i]);
        if (rc) return rc;
    }
    return 0;
}
