/*
 * peer_sdk: helpers shared by the decoders of the server-side SDK formats (peer_segment.c,
 * peer_posthog.c). Both carry free-form JSON "properties", ISO 8601 timestamps corrected for
 * the sender's clock skew, a stable client id, and an optional Tally write key as a Bearer
 * token. Private to those two files: every function is static (unused ones cost nothing).
 *
 * PROPERTIES -> props (the policy both peers document):
 *   - string, number and boolean values become props (numbers as their shortest round-trip
 *     text, booleans as "true"/"false"); null values are skipped;
 *   - nested objects are flattened with dotted keys ("product.sku") down to
 *     PEER_PROP_DEPTH_MAX levels; deeper objects and all arrays are skipped;
 *   - keys longer than EVENT_PROP_KEY_BYTES_MAX bytes, empty keys and keys already taken are
 *     skipped; string values longer than EVENT_PROP_VALUE_BYTES_MAX bytes are cut on a
 *     character boundary;
 *   - the first EVENT_PROPS_MAX props in document order are kept, the rest dropped.
 * Nothing here fails a request: the peers accept any JSON there, so Tally keeps what fits.
 *
 * OWNERSHIP. The strings these helpers put into an event point into the request's cJSON tree
 * where they can (values, top-level keys, URLs) and into the caller's arena otherwise (number
 * texts, flattened keys, normalised languages): the caller deletes the tree only after
 * ingest_submit has returned (which encodes the events before it returns).
 *
 * THREADS. Everything runs on the HTTP worker thread of the request; the arena passed in is
 * the caller's per-thread arena, reset per request.
 */
#ifndef TALLY_APP_PEER_SDK_H
#define TALLY_APP_PEER_SDK_H

#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "app/app_int.h"
#include "core/keys.h"
#include "http/http_server.h"
#include "ingest/event.h"
#include "ingest/timefmt.h"
#include "ingest/ua.h"
#include "ingest/url.h"
#include "tally/error.h"

#define PEER_PROP_DEPTH_MAX 3
/* Helpers a module does not use cost nothing and warn about nothing. */
#define PEER_FN static __attribute__((unused))
#define PEER_NUMBER_BYTES 32

/* u in decimal at out, with a '.' before the last `point` digits (0: none; at least one digit
 * before the point). Returns the length; out is NUL-terminated. */
PEER_FN size_t peer_decimal_text(uint64_t u, unsigned point, bool neg, char *out)
{
    char rev[24];
    size_t k = 0, n = 0;
    do {
        rev[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u || k <= point);
    if (neg) out[n++] = '-';
    while (k) {
        if (k == point) out[n++] = '.';
        out[n++] = rev[--k];
    }
    out[n] = 0;
    return n;
}

/* The shortest text that reads back as v ("19.5", "1000"); -0 is "0". What the printf loop at
 * the end prints, sooner for integers below 10^15 ("%.0f") and for decimals of at most 15
 * digits between 10^-4 and 10^15: when m / 10^k == v for an integer m < 10^15 and the smallest
 * such k (both operands exact, one correctly rounded division, so v is the double nearest
 * the decimal), that decimal is v rounded to 15 significant digits (v lies within half an ulp
 * of it, far less than half a unit of its 15th digit), which is what "%.15g" prints in plain
 * notation for an exponent of -4 to 14, without trailing zeros; strtod reads it back as v. */
PEER_FN size_t peer_number_text(double v, char out[PEER_NUMBER_BYTES])
{
    static const double p10[16] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
    if (v == 0) {
        memcpy(out, "0", 2);
        return 1;
    }
    double a = fabs(v);
    if (a < 1e15 && v == floor(v)) return peer_decimal_text((uint64_t)a, 0, v < 0, out);
    if (a >= 1e-4 && a < 1e15) {
        for (unsigned k = 1; k <= 15; k++) {
            double m = nearbyint(a * p10[k]);
            if (m >= 1e15) break;
            if (m / p10[k] == a) return peer_decimal_text((uint64_t)m, k, v < 0, out);
        }
    }
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, PEER_NUMBER_BYTES, "%.*g", prec, v);
        if (strtod(out, NULL) == v) break;
    }
    return (size_t)n;
}

/* A JSON string or number as text (ids may be numbers): the tree's string or an arena copy of
 * the number's text, or NULL when absent, empty, of another type (or on OOM). *len is set. */
PEER_FN const char *peer_id_text(struct event_arena *a, const cJSON *it, size_t *len)
{
    char num[PEER_NUMBER_BYTES];
    size_t n;
    if (cJSON_IsString(it) && it->valuestring) {
        n = strlen(it->valuestring);
        if (n == 0 || !event_text_valid(it->valuestring, n)) return NULL;
        *len = n;
        return it->valuestring;
    }
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) return NULL;
    n = peer_number_text(it->valuedouble, num);
    char *p = event_arena_strdup(a, num, n);
    if (p) *len = n;
    return p;
}

/* A string member as an event_str pointing into the cJSON tree (valid while the tree lives),
 * cut to max bytes on a character boundary; empty when absent, not a string or not UTF-8. */
PEER_FN struct event_str peer_str(const cJSON *it, size_t max)
{
    struct event_str s = {"", 0};
    if (!cJSON_IsString(it) || !it->valuestring) return s;
    size_t n = strlen(it->valuestring);
    if (!event_text_valid(it->valuestring, n)) return s;
    s.ptr = it->valuestring;
    s.len = event_text_prefix(it->valuestring, n, max);
    return s;
}

/* A URL field: kept when it is an absolute http(s) URL of at most EVENT_URL_BYTES_MAX bytes. */
PEER_FN struct event_str peer_url(const cJSON *it)
{
    struct event_str s = {"", 0};
    if (!cJSON_IsString(it) || !it->valuestring) return s;
    size_t n = strlen(it->valuestring);
    struct url u;
    if (n == 0 || n > EVENT_URL_BYTES_MAX || !event_text_valid(it->valuestring, n) ||
        url_parse(it->valuestring, n, &u) != 0)
        return s;
    s.ptr = it->valuestring;
    s.len = n;
    return s;
}

/* "https://SITE/" + path (or a name percent-encoded as one path segment) for page and screen
 * views that carry no URL. path_is_name: encode '/' too. NULL on OOM. */
PEER_FN const char *peer_synth_url(struct event_arena *a, const char *site, const char *path,
                                  size_t path_len, bool path_is_name, size_t *len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t cap = EVENT_URL_BYTES_MAX;
    char *out = event_arena_alloc(a, cap + 1);
    if (!out) return NULL;
    int n = snprintf(out, cap, "https://%s/", site);
    size_t k = n > 0 ? (size_t)n : 0;
    size_t i = (!path_is_name && path_len > 0 && path[0] == '/') ? 1 : 0;
    for (; i < path_len && k + 3 < cap; i++) {
        unsigned char c = (unsigned char)path[i];
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_' || c == '.' || c == '~' ||
                     (!path_is_name && (c == '/' || c == '?' || c == '=' || c == '&' ||
                                        c == '%' || c == '+' || c == ':' || c == '@'));
        if (plain) {
            out[k++] = (char)c;
        } else {
            out[k++] = '%';
            out[k++] = hex[c >> 4];
            out[k++] = hex[c & 15];
        }
    }
    out[k] = 0;
    *len = k;
    return out;
}

/* An ISO 8601 timestamp: RFC 3339, or an RFC 3339 date-time without a zone (read as UTC, as
 * Python's isoformat() writes naive times). 0, TALLY_ENOENT when absent or null, TALLY_EINVAL. */
PEER_FN int peer_time(const cJSON *it, int64_t *ms)
{
    if (!it || cJSON_IsNull(it)) return TALLY_ENOENT;
    if (!cJSON_IsString(it) || !it->valuestring) return TALLY_EINVAL;
    const char *s = it->valuestring;
    size_t n = strlen(s);
    if (timefmt_parse_rfc3339(s, n, ms) == 0) return 0;
    char buf[48];
    if (n < 19 || n + 2 > sizeof buf) return TALLY_EINVAL;
    memcpy(buf, s, n);
    buf[n] = 'Z';
    if (timefmt_parse_rfc3339(buf, n + 1, ms) != 0) return TALLY_EINVAL;
    return 0;
}

/* Which top-level property keys the flattening leaves out. */
struct peer_skip {
    bool dollar;               /* keys starting with '$' (PostHog's own properties) */
    const char *const *keys;   /* NULL-terminated list, or NULL */
};

PEER_FN bool peer_skipped(const struct peer_skip *sk, const char *key)
{
    if (!sk) return false;
    if (sk->dollar && key[0] == '$') return true;
    for (const char *const *k = sk->keys; k && *k; k++)
        if (strcmp(*k, key) == 0) return true;
    return false;
}

PEER_FN bool peer_prop_taken(const struct event_prop *props, uint32_t n, const char *k, size_t len)
{
    for (uint32_t i = 0; i < n; i++)
        if (props[i].key.len == len && memcmp(props[i].key.ptr, k, len) == 0) return true;
    return false;
}

/* Adds one scalar prop (key already complete). key_stable: key outlives the event (a key of
 * the tree), else it is copied into the arena. 0, or TALLY_ENOMEM. */
PEER_FN int peer_prop_put(struct event_arena *a, struct event_prop *props, uint32_t *count,
                         const char *key, size_t klen, bool key_stable, const cJSON *c)
{
    char num[PEER_NUMBER_BYTES];
    const char *val;
    size_t vlen;
    uint8_t type;
    bool val_stable = true;
    if (cJSON_IsString(c) && c->valuestring) {
        val = c->valuestring;
        vlen = strlen(val);
        if (!event_text_valid(val, vlen)) return 0;
        vlen = event_text_prefix(val, vlen, EVENT_PROP_VALUE_BYTES_MAX);
        type = EVENT_PROP_STRING;
    } else if (cJSON_IsNumber(c)) {
        if (!isfinite(c->valuedouble)) return 0;
        vlen = peer_number_text(c->valuedouble, num);
        val = num;
        val_stable = false;
        type = EVENT_PROP_NUMBER;
    } else if (cJSON_IsBool(c)) {
        val = cJSON_IsTrue(c) ? "true" : "false";
        vlen = cJSON_IsTrue(c) ? 4 : 5;
        type = EVENT_PROP_BOOL;
    } else {
        return 0; /* null, arrays */
    }
    if (peer_prop_taken(props, *count, key, klen)) return 0;
    const char *k = key_stable ? key : event_arena_strdup(a, key, klen);
    const char *v = val_stable ? val : event_arena_strdup(a, val, vlen);
    if (!k || !v) return TALLY_ENOMEM;
    props[*count] = (struct event_prop){{k, klen}, {v, vlen}, type};
    (*count)++;
    return 0;
}

/* Flattens obj's members (see the policy above) into props[*count..EVENT_PROPS_MAX).
 * prefix: the dotted path so far ("" at the top). 0, or TALLY_ENOMEM. */
PEER_FN int peer_props_add(struct event_arena *a, struct event_prop *props, uint32_t *count,
                          const char *prefix, size_t prefix_len, const cJSON *obj, int depth,
                          const struct peer_skip *sk)
{
    if (!cJSON_IsObject(obj)) return 0;
    for (const cJSON *c = obj->child; c && *count < EVENT_PROPS_MAX; c = c->next) {
        const char *k = c->string;
        if (!k || !k[0]) continue;
        if (depth == 0 && peer_skipped(sk, k)) continue; /* before the UTF-8 check: cheaper */
        size_t klen = strlen(k);
        if (!event_text_valid(k, klen)) continue;
        size_t full = prefix_len + (prefix_len ? 1 : 0) + klen;
        if (full > EVENT_PROP_KEY_BYTES_MAX) continue;
        if (prefix_len == 0 && !cJSON_IsObject(c)) {
            /* A top-level scalar: the tree's key as it is, no copy. */
            int rc = peer_prop_put(a, props, count, k, klen, true, c);
            if (rc) return rc;
            continue;
        }
        char key[EVENT_PROP_KEY_BYTES_MAX + 1];
        size_t n = 0;
        if (prefix_len) {
            memcpy(key, prefix, prefix_len);
            key[prefix_len] = '.';
            n = prefix_len + 1;
        }
        memcpy(key + n, k, klen);
        key[full] = 0;
        int rc;
        if (cJSON_IsObject(c))
            rc = depth + 1 < PEER_PROP_DEPTH_MAX
                     ? peer_props_add(a, props, count, key, full, c, depth + 1, sk)
                     : 0;
        else
            rc = peer_prop_put(a, props, count, key, full, false, c);
        if (rc) return rc;
    }
    return 0;
}

/* An arena array for an event's props (EVENT_PROPS_MAX slots). NULL on OOM. */
PEER_FN struct event_prop *peer_props_new(struct event_arena *a)
{
    return event_arena_alloc(a, EVENT_PROPS_MAX * sizeof(struct event_prop));
}

/* properties.revenue (a non-negative number or decimal string, at most 10^12) with
 * properties.currency (ISO 4217, any case; default_currency when absent) -> ev's revenue.
 * Returns true when mapped (the caller then leaves both keys out of the props). */
PEER_FN bool peer_revenue(const cJSON *props, const char *default_currency, struct event *ev)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(props, "revenue");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(props, "currency");
    double v;
    if (cJSON_IsNumber(r)) {
        v = r->valuedouble;
    } else if (cJSON_IsString(r) && r->valuestring && r->valuestring[0]) {
        char *end;
        v = strtod(r->valuestring, &end);
        if (*end) return false;
    } else {
        return false;
    }
    if (!isfinite(v) || v < 0 || v > 1e12) return false;
    char cur[4];
    if (c && !cJSON_IsNull(c)) {
        const char *s = cJSON_IsString(c) ? c->valuestring : NULL;
        if (!s || strlen(s) != 3) return false;
        for (int i = 0; i < 3; i++) {
            char ch = s[i];
            if (ch >= 'a' && ch <= 'z') ch = (char)(ch - 32);
            if (ch < 'A' || ch > 'Z') return false;
            cur[i] = ch;
        }
        cur[3] = 0;
    } else {
        memcpy(cur, default_currency, 4);
    }
    ev->has_revenue = true;
    ev->revenue_micros = (int64_t)floor(v * 1e6 + 0.5);
    memcpy(ev->currency, cur, 4);
    return true;
}

/* A locale like "en-US" or "en_US" as a language hint (letters, digits, '-'), else empty. */
PEER_FN struct event_str peer_language(struct event_arena *a, const cJSON *it)
{
    struct event_str s = {"", 0};
    if (!cJSON_IsString(it) || !it->valuestring) return s;
    size_t n = strlen(it->valuestring);
    if (n == 0 || n > EVENT_LANGUAGE_BYTES_MAX) return s;
    char *p = event_arena_strdup(a, it->valuestring, n);
    if (!p) return s;
    for (size_t i = 0; i < n; i++) {
        char c = p[i] == '_' ? '-' : p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return s;
        p[i] = c;
    }
    s.ptr = p;
    s.len = n;
    return s;
}

/* A screen dimension (1..65535 pixels), else 0. */
PEER_FN uint16_t peer_pixels(const cJSON *it)
{
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) return 0;
    double v = it->valuedouble;
    return v >= 1 && v <= 65535 ? (uint16_t)v : 0;
}

/* An IP literal (IPv4 or IPv6) in the tree, else empty. */
PEER_FN struct event_str peer_ip(const cJSON *it)
{
    struct event_str s = {"", 0};
    uint8_t ip16[16];
    if (!cJSON_IsString(it) || !it->valuestring) return s;
    size_t n = strlen(it->valuestring);
    if (n == 0 || n > 45 || cidr_parse_ip(it->valuestring, ip16) != 0) return s;
    s.ptr = it->valuestring;
    s.len = n;
    return s;
}

/* auth (an Authorization header value, or NULL) is "Bearer KEY" with KEY a Tally write or
 * admin key: returns 1 and sets *key_site (the key's site restriction, or NULL). 0 when there
 * is no Bearer header; -1 when the Bearer value is not such a key (*token and *token_len then
 * point at it, for peers that take their own tokens that way). */
PEER_FN int peer_bearer_value(struct app *app, const char *auth, const char **token,
                             size_t *token_len, const struct config_site **key_site)
{
    *key_site = NULL;
    *token = NULL;
    *token_len = 0;
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) return 0;
    const char *key = auth + 7;
    while (*key == ' ') key++;
    size_t len = strlen(key);
    while (len > 0 && key[len - 1] == ' ') len--;
    *token = key;
    *token_len = len;
    enum key_scope scope = key_verify(key, len, &app->cfg->key_digests, NULL);
    if (scope == KEY_SCOPE_NONE) scope = key_verify(key, len, &app->stored_keys, NULL);
    for (int i = 0; scope == KEY_SCOPE_NONE && i < app->cfg->site_count; i++) {
        const struct config_site *s = &app->cfg->sites[i];
        if (s->key_digests.count == 0) continue;
        scope = key_verify(key, len, NULL, &s->key_digests);
        if (scope != KEY_SCOPE_NONE) *key_site = s;
    }
    if (!key_scope_allows(scope, KEY_SCOPE_WRITE)) {
        *key_site = NULL;
        return -1;
    }
    return 1;
}

/* peer_bearer_value of the request's Authorization header. */
PEER_FN int peer_bearer(struct app *app, const struct http_request *req, const char **token,
                       size_t *token_len, const struct config_site **key_site)
{
    return peer_bearer_value(app, http_request_header(req, "authorization"), token, token_len,
                             key_site);
}

/* Whether a peer's write key / project token may name a site: one of a configured site's ids
 * or its name, or a domain-like name (with a dot) that auto_sites may create. A bare token that
 * is configured nowhere ("phc_...", a Segment key) is refused (401) rather than auto-creating a
 * site named after it. */
PEER_FN bool peer_key_acceptable(struct app *app, const char *key)
{
    return config_site_find(app->cfg, key) != NULL || strchr(key, '.') != NULL;
}

/* The canonical name of the site a peer's identifier maps to, or NULL (unknown, invalid). */
PEER_FN const char *peer_site_name(struct app *app, const char *id)
{
    const struct site *s;
    return sites_resolve(app->sites, id, &s) == 0 ? s->name : NULL;
}

/* ua_is_server_sdk(ua), answered at once for the usual browser User-Agent: every prefix it
 * knows starts with one of "pPaAnNuU@" (after spaces), "Mozilla/..." does not. */
PEER_FN bool peer_server_sdk(const char *ua)
{
    if (!ua) return false;
    const char *p = ua;
    while (*p == ' ')
        p++;
    char c = (char)(*p | 0x20);
    if (c != 'p' && c != 'a' && c != 'n' && c != 'u' && *p != '@') return false;
    return ua_is_server_sdk(ua);
}

/* The members of obj a decoder reads, found in one pass (a lookup per name would walk the
 * members once per name): out (size bytes) is zeroed, then for each member in document order
 * slot(out, name) gives where to keep it (NULL: not read) and the slot takes the member unless
 * it is set already, so each slot ends with the first member of its name, as
 * cJSON_GetObjectItemCaseSensitive would return, or NULL (also when obj is not an object). */
typedef const cJSON **(*peer_slot_fn)(void *out, const char *name);

PEER_FN void peer_members_scan(const cJSON *obj, void *out, size_t size, peer_slot_fn slot)
{
    memset(out, 0, size);
    if (!cJSON_IsObject(obj)) return;
    for (const cJSON *c = obj->child; c; c = c->next) {
        const cJSON **s = c->string ? slot(out, c->string) : NULL;
        if (s && !*s) *s = c;
    }
}

/* True when s[0..len) is valid UTF-8 without NUL bytes; a JSON body must be, before cJSON reads
 * it (cJSON does not check raw bytes). */
PEER_FN bool peer_body_text_valid(const char *s, size_t len)
{
    return event_text_valid(s, len);
}

#endif
