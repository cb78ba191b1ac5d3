/*
 * peer_ga4: Google Analytics 4 Measurement Protocol (API.md §3.2).
 *
 *   POST /mp/collect?measurement_id=G-XXXX&api_secret=SECRET         -> 204, always
 *   POST /debug/mp/collect?measurement_id=G-XXXX&api_secret=SECRET   -> 200 {"validationMessages":
 *                                                                       [...]}, never appends
 *
 * AUTH AND SITE. measurement_id must be one of a site's `ids` and the site must have a
 * `ga4_api_secret`; api_secret is compared with it in constant time (both sides hashed to 32
 * bytes with BLAKE2b, then sodium_memcmp, so neither content nor length leaks). Requests that
 * pass are server-to-server and exempt from the per-IP rate limit (ingest_opts.no_rate_limit).
 *
 * ANSWERS, as Google's endpoints do. Production answers 204 to every request it received, also
 * for malformed payloads, an unknown measurement id or a wrong secret: those append nothing
 * and are counted in tally_events_dropped_total (invalid / unknown_site). The one exception is
 * Tally's own durability: when the log cannot take the append the answer is 503 (or 413), so a
 * client that looks at statuses can retry; GA4 itself never does that. The debug endpoint
 * validates like Google's validation server (which checks neither api_secret nor the
 * measurement id's stream) and answers 200 with every problem found, as
 * {"fieldPath", "description", "validationCode"} with GA4's codes.
 *
 * VALIDATION (GA4's documented limits; the first failure refuses the whole request):
 *   body <= 130 kB, a JSON object; client_id a string, required (web streams); user_id a
 *   string; timestamp_micros an integer (number or digit string) within [now - 72 h,
 *   now + 5 min]; events an array of 1..25 objects; event name required, <= 40 characters,
 *   [A-Za-z][A-Za-z0-9_]*, not a reserved name or prefix (_ firebase_ ga_ google_ gtag.);
 *   params an object of <= 25 entries, names as event names (reserved: firebase_conversion
 *   and the prefixes), values string/number/bool (null ignored; "items" an array of objects),
 *   strings <= 100 characters (page_location 1000, page_referrer 420, page_title 300);
 *   event timestamp_micros as the request's; user_properties <= 25, names <= 24 characters and
 *   not reserved, {"value": scalar} with strings <= 36 characters; currency three capitals;
 *   ip_override an IP address.
 *
 * MAPPING to the canonical event:
 *   page_view -> pageview; other names as sent (custom events).
 *   params.page_location -> url (kept only when it is an absolute http(s) URL, <= 2048 B),
 *   params.page_referrer -> referrer; params.page_title, engagement_time_msec, session_id,
 *   session_number and items are not stored; params.value + params.currency -> revenue when
 *   value is a number >= 0 (else value stays a prop); params.transaction_id of a "purchase"
 *   -> the event's idempotency id (GA4 deduplicates purchases by it); every other param -> a
 *   prop (numbers as their shortest text, bools as "true"/"false").
 *   client_id -> the visitor id (hashed with the site); user_id and user_properties are
 *   validated, not stored. device.language -> language, device.screen_resolution "WxH" ->
 *   screen; ip_override -> the IP used for geo and the anonymous hash (never stored).
 *   Time: the event's timestamp_micros, else the request's, else now.
 *   User-Agent: MP requests come from servers, so the request's User-Agent is the visitor's
 *   only when it is a browser's ("Mozilla/..."); otherwise the stored User-Agent is
 *   "GA4-Measurement-Protocol" (unknown device, not a bot).
 *
 * THREADS: handlers run on HTTP workers; the request state is one block per worker thread,
 * reused by each request (ingest_submit copies what it keeps before returning).
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/ingest.h"
#include "app/peers.h"
#include "core/json_arena.h"
#include "ingest/timefmt.h"
#include "ingest/url.h"
#include "tally/error.h"

#define GA4_BODY_BYTES_MAX (130 * 1024)
#define GA4_EVENTS_MAX 25
#define GA4_PARAMS_MAX 25
#define GA4_USER_PROPS_MAX 25
#define GA4_NAME_CHARS_MAX 40
#define GA4_USER_PROP_NAME_CHARS_MAX 24
#define GA4_USER_PROP_VALUE_CHARS_MAX 36
#define GA4_VALUE_CHARS_MAX 100
#define GA4_MESSAGES_MAX 16
#define GA4_PAST_US (72LL * 3600 * 1000 * 1000)
#define GA4_FUTURE_US (5LL * 60 * 1000 * 1000)
#define GA4_SERVER_UA "GA4-Measurement-Protocol"
#define GA4_NUMBER_BYTES 32

static const char *const reserved_event_names[] = {
    "ad_activeview", "ad_click", "ad_exposure", "ad_impression", "ad_query", "ad_reward",
    "adunit_exposure", "app_background", "app_clear_data", "app_exception", "app_install",
    "app_remove", "app_store_refund", "app_update", "app_upgrade", "dynamic_link_app_open",
    "dynamic_link_app_update", "dynamic_link_first_open", "error", "firebase_campaign",
    "firebase_in_app_message_action", "firebase_in_app_message_dismiss",
    "firebase_in_app_message_impression", "first_open", "first_visit", "in_app_purchase",
    "notification_dismiss", "notification_foreground", "notification_open",
    "notification_receive", "notification_send", "os_update", "session_start",
    "session_start_with_rollout", "user_engagement",
};
static const char *const reserved_prefixes[] = {"_", "firebase_", "ga_", "google_", "gtag."};
static const char *const reserved_user_props[] = {
    "first_open_time", "first_visit_time", "last_deep_link_referrer", "user_id",
    "first_open_after_install",
};

struct ga4_msg {
    char path[48];
    char desc[240];
    const char *code;
};

/* Everything one request needs; one heap block, freed when the handler returns. */
struct ga4_req {
    struct app *app;
    bool debug;
    int64_t now_ms;
    struct ga4_msg msgs[GA4_MESSAGES_MAX];
    int msg_count;
    struct native_event evs[GA4_EVENTS_MAX];
    struct event_prop props[GA4_EVENTS_MAX][GA4_PARAMS_MAX];
    char numbers[GA4_EVENTS_MAX][GA4_PARAMS_MAX][GA4_NUMBER_BYTES];
    char language[EVENT_LANGUAGE_BYTES_MAX + 1];
    char ip[64];
};

static void msg(struct ga4_req *r, const char *path, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void msg(struct ga4_req *r, const char *path, const char *code, const char *fmt, ...)
{
    if (r->msg_count >= GA4_MESSAGES_MAX) return;
    struct ga4_msg *m = &r->msgs[r->msg_count++];
    snprintf(m->path, sizeof m->path, "%s", path);
    m->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->desc, sizeof m->desc, fmt, ap);
    va_end(ap);
}

/* A client string made safe to quote: at most 60 bytes on a character boundary, no quotes,
 * backslashes or control characters (they become '?'). */
static const char *quote(char out[64], const char *s)
{
    size_t len = strlen(s);
    bool text = event_text_valid(s, len);
    size_t n = text ? event_text_prefix(s, len, 60) : (len < 60 ? len : 60);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c < 0x20 || c == 0x7f || c == '"' || c == '\\' || (c >= 0x80 && !text))
                     ? '?' : (char)c;
    }
    out[n] = 0;
    return out;
}

/* Characters (code points) of valid UTF-8. */
static size_t chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static bool has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

static const char *reserved_prefix(const char *name, bool with_gtag)
{
    for (size_t i = 0; i < TALLY_ARRAY_LEN(reserved_prefixes); i++) {
        if (!with_gtag && strcmp(reserved_prefixes[i], "gtag.") == 0) continue;
        if (has_prefix(name, reserved_prefixes[i])) return reserved_prefixes[i];
    }
    return NULL;
}

/* 0: a valid name; otherwise a message was added. what: "name" of an event or "parameter". */
static int check_name(struct ga4_req *r, const char *path, const char *what, int index,
                      const char *name, size_t max_chars)
{
    char q[64];
    if (!event_text_valid(name, strlen(name)) || name[0] == 0) {
        msg(r, path, "NAME_INVALID", "Event at index: [%d] has an empty or invalid %s.", index,
            what);
        return -1;
    }
    if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z'))) {
        msg(r, path, "NAME_INVALID",
            "Event at index: [%d] has invalid %s [%s]. Names must start with an alphabetic "
            "character.", index, what, quote(q, name));
        return -1;
    }
    for (const char *p = name; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_')) {
            msg(r, path, "NAME_INVALID",
                "Event at index: [%d] has invalid %s [%s]. Only alphanumeric characters and "
                "underscores are allowed.", index, what, quote(q, name));
            return -1;
        }
    }
    if (chars(name) > max_chars) {
        msg(r, path, "VALUE_OUT_OF_BOUNDS",
            "Event at index: [%d] has %s [%s] longer than %zu characters.", index, what,
            quote(q, name), max_chars);
        return -1;
    }
    return 0;
}

/* An int64 from a JSON number or a digit string (proto3 JSON allows both). */
static bool get_int64(const cJSON *it, int64_t *out)
{
    if (cJSON_IsNumber(it)) {
        double v = it->valuedouble;
        if (!isfinite(v) || v != floor(v) || fabs(v) > 9.2e18) return false;
        *out = (int64_t)v;
        return true;
    }
    if (cJSON_IsString(it)) {
        const char *s = it->valuestring;
        char *end;
        if (!*s) return false;
        long long v = strtoll(s, &end, 10);
        if (*end) return false;
        *out = v;
        return true;
    }
    return false;
}

static int check_ts(struct ga4_req *r, const char *path, const cJSON *it, int64_t *ts_ms)
{
    int64_t us;
    if (!get_int64(it, &us)) {
        msg(r, path, "VALUE_INVALID", "%s must be an integer number of microseconds since the "
            "Unix epoch.", path);
        return -1;
    }
    int64_t now_us = r->now_ms * 1000;
    if (us < now_us - GA4_PAST_US) {
        msg(r, path, "VALUE_INVALID", "%s [%lld] is more than 72 hours in the past; events can "
            "be backdated up to 72 hours.", path, (long long)us);
        return -1;
    }
    if (us > now_us + GA4_FUTURE_US) {
        msg(r, path, "VALUE_INVALID", "%s [%lld] is in the future.", path, (long long)us);
        return -1;
    }
    *ts_ms = us / 1000;
    return 0;
}

/* The shortest text that reads back as v. */
static size_t format_number(double v, char out[GA4_NUMBER_BYTES])
{
    if (v == 0) v = 0; /* -0 */
    if (fabs(v) < 1e15 && v == floor(v))
        return (size_t)snprintf(out, GA4_NUMBER_BYTES, "%lld", (long long)v);
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, GA4_NUMBER_BYTES, "%.*g", prec, v);
        if (strtod(out, NULL) == v) break;
    }
    return (size_t)n;
}

static size_t value_chars_max(const char *param)
{
    if (strcmp(param, "page_location") == 0) return 1000;
    if (strcmp(param, "page_referrer") == 0) return 420;
    if (strcmp(param, "page_title") == 0) return 300;
    return GA4_VALUE_CHARS_MAX;
}

static bool ignored_param(const char *k)
{
    return strcmp(k, "page_title") == 0 || strcmp(k, "engagement_time_msec") == 0 ||
           strcmp(k, "session_id") == 0 || strcmp(k, "session_number") == 0 ||
           strcmp(k, "items") == 0 || strcmp(k, "timestamp_micros") == 0;
}

static bool currency_valid(const char *c)
{
    return strlen(c) == 3 && c[0] >= 'A' && c[0] <= 'Z' && c[1] >= 'A' && c[1] <= 'Z' &&
           c[2] >= 'A' && c[2] <= 'Z';
}

/* Validates params of event i and maps them into evs[i]. */
static int decode_params(struct ga4_req *r, int i, const cJSON *params)
{
    char q[64];
    struct native_event *ne = &r->evs[i];
    struct event *ev = &ne->ev;
    if (!cJSON_IsObject(params)) {
        msg(r, "events.params", "VALUE_INVALID", "Event at index: [%d] has params that are "
            "not an object.", i);
        return -1;
    }
    int count = cJSON_GetArraySize(params);
    if (count > GA4_PARAMS_MAX) {
        msg(r, "events.params", "EXCEEDED_MAX_ENTITIES", "Event at index: [%d] has %d params, "
            "more than the maximum of %d.", i, count, GA4_PARAMS_MAX);
        return -1;
    }
    const cJSON *value = NULL, *currency = NULL;
    int bad = 0;
    for (const cJSON *p = params->child; p; p = p->next) {
        const char *k = p->string;
        if (check_name(r, "events.params", "parameter name", i, k, GA4_NAME_CHARS_MAX)) {
            bad = -1;
            continue;
        }
        const char *rp = reserved_prefix(k, true);
        if (rp || strcmp(k, "firebase_conversion") == 0) {
            msg(r, "events.params", "NAME_RESERVED", "Event at index: [%d] has parameter [%s] "
                "which is reserved.", i, quote(q, k));
            bad = -1;
            continue;
        }
        if (cJSON_IsNull(p)) continue;
        if (strcmp(k, "items") == 0) {
            bool ok = cJSON_IsArray(p);
            for (const cJSON *it = ok ? p->child : NULL; it; it = it->next)
                ok = ok && cJSON_IsObject(it);
            if (!ok) {
                msg(r, "events.params.items", "VALUE_INVALID", "Event at index: [%d] has items "
                    "that are not an array of objects.", i);
                bad = -1;
            }
            continue;
        }
        if (cJSON_IsString(p)) {
            const char *s = p->valuestring;
            if (!event_text_valid(s, strlen(s))) {
                msg(r, "events.params", "VALUE_INVALID", "Event at index: [%d] has parameter "
                    "[%s] whose value is not valid UTF-8.", i, quote(q, k));
                bad = -1;
                continue;
            }
            size_t max = value_chars_max(k);
            if (chars(s) > max) {
                msg(r, "events.params", "VALUE_OUT_OF_BOUNDS", "Event at index: [%d] has "
                    "parameter [%s] with a value longer than %zu characters.", i, quote(q, k),
                    max);
                bad = -1;
                continue;
            }
        } else if (!cJSON_IsNumber(p) && !cJSON_IsBool(p)) {
            msg(r, "events.params", "VALUE_INVALID", "Event at index: [%d] has parameter [%s] "
                "whose value is not a string, number or boolean.", i, quote(q, k));
            bad = -1;
            continue;
        } else if (cJSON_IsNumber(p) && !isfinite(p->valuedouble)) {
            msg(r, "events.params", "VALUE_INVALID", "Event at index: [%d] has parameter [%s] "
                "whose value is not a finite number.", i, quote(q, k));
            bad = -1;
            continue;
        }
        if (strcmp(k, "value") == 0) value = p;
        if (strcmp(k, "currency") == 0) {
            if (!cJSON_IsString(p) || !currency_valid(p->valuestring)) {
                msg(r, "events.params.currency", "VALUE_INVALID", "Event at index: [%d] has an "
                    "invalid currency; use a three-letter ISO 4217 code like \"EUR\".", i);
                bad = -1;
                continue;
            }
            currency = p;
        }
    }
    if (bad) return bad;

    /* Mapping (all checks passed). */
    if (currency && value && cJSON_IsNumber(value) && value->valuedouble >= 0 &&
        value->valuedouble <= 1e12) {
        ev->has_revenue = true;
        ev->revenue_micros = (int64_t)floor(value->valuedouble * 1e6 + 0.5);
        memcpy(ev->currency, currency->valuestring, 4);
    } else {
        currency = NULL;
        value = NULL;
    }
    struct event_prop *props = r->props[i];
    uint32_t n = 0;
    for (const cJSON *p = params->child; p; p = p->next) {
        const char *k = p->string;
        if (cJSON_IsNull(p) || ignored_param(k) || p == value || p == currency) continue;
        if (strcmp(k, "page_location") == 0 && cJSON_IsString(p)) {
            struct url u;
            size_t len = strlen(p->valuestring);
            if (len <= EVENT_URL_BYTES_MAX && url_parse(p->valuestring, len, &u) == 0)
                ev->url = (struct event_str){p->valuestring, len};
            continue;
        }
        if (strcmp(k, "page_referrer") == 0 && cJSON_IsString(p)) {
            ev->referrer = (struct event_str){p->valuestring, strlen(p->valuestring)};
            continue;
        }
        if (strcmp(k, "transaction_id") == 0 && cJSON_IsString(p) &&
            strcmp(ev->name.ptr, "purchase") == 0) {
            size_t len = strlen(p->valuestring);
            if (len > 0 && len <= EVENT_CLIENT_ID_BYTES_MAX) {
                ev->client_id = (struct event_str){p->valuestring, len};
                continue;
            }
        }
        struct event_prop *pr = &props[n++];
        pr->key = (struct event_str){k, strlen(k)};
        if (cJSON_IsString(p)) {
            pr->type = EVENT_PROP_STRING;
            pr->value = (struct event_str){p->valuestring, strlen(p->valuestring)};
        } else if (cJSON_IsBool(p)) {
            pr->type = EVENT_PROP_BOOL;
            pr->value = cJSON_IsTrue(p) ? (struct event_str){"true", 4}
                                        : (struct event_str){"false", 5};
        } else {
            pr->type = EVENT_PROP_NUMBER;
            char *buf = r->numbers[i][n - 1];
            pr->value = (struct event_str){buf, format_number(p->valuedouble, buf)};
        }
    }
    ev->props = props;
    ev->props_count = n;
    return 0;
}

static int decode_event(struct ga4_req *r, int i, const cJSON *obj, int64_t ts_ms)
{
    char q[64];
    struct native_event *ne = &r->evs[i];
    struct event *ev = &ne->ev;
    if (!cJSON_IsObject(obj)) {
        msg(r, "events", "VALUE_INVALID", "Event at index: [%d] is not an object.", i);
        return -1;
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(obj, "name");
    if (!cJSON_IsString(name) || name->valuestring[0] == 0) {
        msg(r, "events", "VALUE_REQUIRED", "Event at index: [%d] requires a name.", i);
        return -1;
    }
    const char *nm = name->valuestring;
    if (check_name(r, "events", "name", i, nm, GA4_NAME_CHARS_MAX)) return -1;
    const char *rp = reserved_prefix(nm, true);
    if (rp) {
        msg(r, "events", "NAME_RESERVED", "Event at index: [%d] has name [%s] which uses the "
            "reserved prefix [%s].", i, quote(q, nm), rp);
        return -1;
    }
    for (size_t k = 0; k < TALLY_ARRAY_LEN(reserved_event_names); k++) {
        if (strcmp(nm, reserved_event_names[k]) == 0) {
            msg(r, "events", "NAME_RESERVED", "Event at index: [%d] has name [%s] which is "
                "reserved.", i, nm);
            return -1;
        }
    }
    if (strcmp(nm, "page_view") == 0)
        ev->name = (struct event_str){EVENT_DEFAULT_NAME, strlen(EVENT_DEFAULT_NAME)};
    else
        ev->name = (struct event_str){nm, strlen(nm)};
    ev->ts_ms = ts_ms;
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(obj, "timestamp_micros");
    if (ts && !cJSON_IsNull(ts) && check_ts(r, "events.timestamp_micros", ts, &ev->ts_ms))
        return -1;
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(obj, "params");
    if (params && !cJSON_IsNull(params)) return decode_params(r, i, params);
    return 0;
}

static int check_user_properties(struct ga4_req *r, const cJSON *up)
{
    char q[64];
    if (!cJSON_IsObject(up)) {
        msg(r, "user_properties", "VALUE_INVALID", "user_properties must be an object.");
        return -1;
    }
    int count = cJSON_GetArraySize(up);
    if (count > GA4_USER_PROPS_MAX) {
        msg(r, "user_properties", "EXCEEDED_MAX_ENTITIES", "Measurement has %d user "
            "properties, more than the maximum of %d.", count, GA4_USER_PROPS_MAX);
        return -1;
    }
    int bad = 0;
    for (const cJSON *p = up->child; p; p = p->next) {
        const char *k = p->string;
        if (!event_text_valid(k, strlen(k)) || chars(k) > GA4_USER_PROP_NAME_CHARS_MAX ||
            k[0] == 0) {
            msg(r, "user_properties", "NAME_INVALID", "User property [%s] has an invalid name; "
                "names are at most 24 characters.", quote(q, k));
            bad = -1;
            continue;
        }
        bool reserved = reserved_prefix(k, false) != NULL;
        for (size_t i = 0; i < TALLY_ARRAY_LEN(reserved_user_props); i++)
            reserved = reserved || strcmp(k, reserved_user_props[i]) == 0;
        if (reserved) {
            msg(r, "user_properties", "NAME_RESERVED", "User property name [%s] is reserved.",
                quote(q, k));
            bad = -1;
            continue;
        }
        const cJSON *v = cJSON_IsObject(p) ? cJSON_GetObjectItemCaseSensitive(p, "value") : NULL;
        if (!cJSON_IsObject(p)) {
            msg(r, "user_properties", "VALUE_INVALID", "User property [%s] must be an object "
                "like {\"value\": ...}.", quote(q, k));
            bad = -1;
        } else if (cJSON_IsString(v) && (!event_text_valid(v->valuestring,
                                                           strlen(v->valuestring)) ||
                                         chars(v->valuestring) > GA4_USER_PROP_VALUE_CHARS_MAX)) {
            msg(r, "user_properties", "VALUE_OUT_OF_BOUNDS", "User property [%s] has a value "
                "longer than %d characters.", quote(q, k), GA4_USER_PROP_VALUE_CHARS_MAX);
            bad = -1;
        }
    }
    return bad;
}

static void decode_device(struct ga4_req *r, const cJSON *dev)
{
    if (!cJSON_IsObject(dev)) return;
    const cJSON *lang = cJSON_GetObjectItemCaseSensitive(dev, "language");
    if (cJSON_IsString(lang)) {
        size_t n = 0;
        const char *s = lang->valuestring;
        while (n < EVENT_LANGUAGE_BYTES_MAX && ((s[n] >= 'a' && s[n] <= 'z') ||
                                                (s[n] >= 'A' && s[n] <= 'Z') ||
                                                (s[n] >= '0' && s[n] <= '9') || s[n] == '-'))
            n++;
        if (n > 0 && s[n] == 0) {
            memcpy(r->language, s, n + 1);
        }
    }
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(dev, "screen_resolution");
    unsigned w = 0, h = 0;
    char tail;
    if (cJSON_IsString(res) && sscanf(res->valuestring, "%ux%u%c", &w, &h, &tail) == 2 &&
        w <= 65535 && h <= 65535) {
        for (int i = 0; i < GA4_EVENTS_MAX; i++) {
            r->evs[i].ev.screen_width_px = (uint16_t)w;
            r->evs[i].ev.screen_height_px = (uint16_t)h;
        }
    }
}

/* Validates the whole body and fills r->evs. Returns the number of events, or -1 with
 * messages in r (in debug mode as many as found, else at least the first). */
static int decode(struct ga4_req *r, const cJSON *root, const struct http_request *req)
{
    if (!cJSON_IsObject(root)) {
        msg(r, "", "VALUE_INVALID", "Unable to parse Measurement Protocol JSON payload: the "
            "body must be a JSON object.");
        return -1;
    }
    int bad = 0;
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(root, "client_id");
    if (!cid || cJSON_IsNull(cid) || (cJSON_IsString(cid) && cid->valuestring[0] == 0)) {
        msg(r, "client_id", "VALUE_REQUIRED", "Measurement requires a client_id.");
        bad = -1;
    } else if (!cJSON_IsString(cid) || !event_text_valid(cid->valuestring,
                                                         strlen(cid->valuestring))) {
        msg(r, "client_id", "VALUE_INVALID", "client_id must be a string.");
        bad = -1;
    }
    const cJSON *uid = cJSON_GetObjectItemCaseSensitive(root, "user_id");
    if (uid && !cJSON_IsNull(uid) &&
        (!cJSON_IsString(uid) || !event_text_valid(uid->valuestring, strlen(uid->valuestring)))) {
        msg(r, "user_id", "VALUE_INVALID", "user_id must be a UTF-8 string.");
        bad = -1;
    }
    int64_t ts_ms = r->now_ms;
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(root, "timestamp_micros");
    if (ts && !cJSON_IsNull(ts) && check_ts(r, "timestamp_micros", ts, &ts_ms)) bad = -1;
    const cJSON *up = cJSON_GetObjectItemCaseSensitive(root, "user_properties");
    if (up && !cJSON_IsNull(up) && check_user_properties(r, up)) bad = -1;
    const cJSON *npa = cJSON_GetObjectItemCaseSensitive(root, "non_personalized_ads");
    if (npa && !cJSON_IsNull(npa) && !cJSON_IsBool(npa)) {
        msg(r, "non_personalized_ads", "VALUE_INVALID", "non_personalized_ads must be a "
            "boolean.");
        bad = -1;
    }
    const cJSON *ipo = cJSON_GetObjectItemCaseSensitive(root, "ip_override");
    if (ipo && !cJSON_IsNull(ipo)) {
        unsigned char a[16];
        if (!cJSON_IsString(ipo) || strlen(ipo->valuestring) >= sizeof r->ip ||
            (inet_pton(AF_INET, ipo->valuestring, a) != 1 &&
             inet_pton(AF_INET6, ipo->valuestring, a) != 1)) {
            msg(r, "ip_override", "VALUE_INVALID", "ip_override must be an IPv4 or IPv6 "
                "address.");
            bad = -1;
        } else {
            snprintf(r->ip, sizeof r->ip, "%s", ipo->valuestring);
        }
    }
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "events");
    int n = cJSON_IsArray(events) ? cJSON_GetArraySize(events) : 0;
    if (!events || cJSON_IsNull(events) || (cJSON_IsArray(events) && n == 0)) {
        msg(r, "events", "VALUE_REQUIRED", "Measurement requires at least one event.");
        return -1;
    }
    if (!cJSON_IsArray(events)) {
        msg(r, "events", "VALUE_INVALID", "events must be an array.");
        return -1;
    }
    if (n > GA4_EVENTS_MAX) {
        msg(r, "events", "EXCEEDED_MAX_ENTITIES", "Measurement has %d events, more than the "
            "maximum of %d.", n, GA4_EVENTS_MAX);
        return -1;
    }
    int i = 0;
    for (const cJSON *e = events->child; e; e = e->next, i++) {
        struct native_event *ne = &r->evs[i];
        memset(ne, 0, sizeof *ne);
        event_init(&ne->ev);
        ne->ev.source = EVENT_SOURCE_GA4;
        ne->ev.received_ms = r->now_ms;
        if (decode_event(r, i, e, ts_ms)) bad = -1;
    }
    if (bad) return -1;

    decode_device(r, cJSON_GetObjectItemCaseSensitive(root, "device"));
    const char *req_ua = http_request_header(req, "user-agent");
    bool browser = req_ua && strncmp(req_ua, "Mozilla/", 8) == 0;
    size_t cid_len = event_text_prefix(cid->valuestring, strlen(cid->valuestring),
                                       NATIVE_VISITOR_ID_BYTES_MAX);
    for (i = 0; i < n; i++) {
        struct native_event *ne = &r->evs[i];
        ne->visitor_id = (struct event_str){cid->valuestring, cid_len};
        if (r->ip[0]) ne->ip = (struct event_str){r->ip, strlen(r->ip)};
        if (r->language[0])
            ne->ev.language = (struct event_str){r->language, strlen(r->language)};
        if (!browser) ne->ev.user_agent = (struct event_str){GA4_SERVER_UA, strlen(GA4_SERVER_UA)};
    }
    return n;
}

/* ---- answers ------------------------------------------------------------------------------- */

static void respond_messages(struct http_exchange *ex, const struct ga4_req *r)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = root ? cJSON_AddArrayToObject(root, "validationMessages") : NULL;
    for (int i = 0; arr && i < r->msg_count; i++) {
        cJSON *m = cJSON_CreateObject();
        if (!m) break;
        cJSON_AddStringToObject(m, "fieldPath", r->msgs[i].path);
        cJSON_AddStringToObject(m, "description", r->msgs[i].desc);
        cJSON_AddStringToObject(m, "validationCode", r->msgs[i].code);
        cJSON_AddItemToArray(arr, m);
    }
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text) {
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    http_respond(ex, 200, "application/json", text, strlen(text));
    cJSON_free(text);
}

static void ga4_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    (void)arg;
    (void)accepted;
    http_respond(ex, 204, NULL, "", 0);
}

/* Refusals mirror GA4 (2xx, silently) except when the log could not take the events. */
static void ga4_error(void *arg, struct http_exchange *ex, int status, const char *m, int index,
                      const char *extra_headers)
{
    (void)arg;
    (void)index;
    if (status == 503 || status == 413) {
        char body[320], esc[256];
        http_json_escape(esc, sizeof esc, m);
        int n = snprintf(body, sizeof body, "{\"error\": \"%s\"}", esc);
        http_exchange_complete(ex, status, "application/json", body, (size_t)n, extra_headers);
        return;
    }
    http_respond(ex, 204, NULL, "", 0);
}

static const struct ingest_answer ga4_answer = {ga4_ok, ga4_error, NULL};

/* Constant-time comparison of the presented secret with the configured one. */
static bool secret_matches(const char *given, size_t given_len, const char *want)
{
    unsigned char a[32], b[32];
    crypto_generichash(a, sizeof a, (const unsigned char *)given, given_len, NULL, 0);
    crypto_generichash(b, sizeof b, (const unsigned char *)want, strlen(want), NULL, 0);
    return sodium_memcmp(a, b, sizeof a) == 0;
}

static void drop(struct app *app, enum drop_reason why)
{
    metrics_counter_add(app->events_dropped[why], 1);
}

/* One ga4_req per worker thread, reused: it is ~60 KiB, and a malloc/free of that size per
 * request showed up as malloc_consolidate in profiles. */
static pthread_key_t g_req_key;
static pthread_once_t g_req_once = PTHREAD_ONCE_INIT;

static void req_key_make(void)
{
    pthread_key_create(&g_req_key, free);
}

static struct ga4_req *req_get(void)
{
    pthread_once(&g_req_once, req_key_make);
    struct ga4_req *r = pthread_getspecific(g_req_key);
    if (r) return r;
    r = malloc(sizeof *r);
    if (r && pthread_setspecific(g_req_key, r) != 0) {
        free(r);
        r = NULL;
    }
    return r;
}

static void on_collect(struct http_request *req, struct http_exchange *ex, void *arg, bool debug)
{
    struct app *app = arg;
    struct ga4_req *r = req_get();
    if (!r) {
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    r->app = app;
    r->debug = debug;
    r->now_ms = timefmt_now_ms();
    r->msg_count = 0;
    r->language[0] = 0;
    r->ip[0] = 0;

    char mid[EVENT_SITE_BYTES_MAX + 1], secret[256];
    size_t mid_len = 0, secret_len = 0;
    bool have_mid = http_request_query(req, "measurement_id", mid, sizeof mid, &mid_len) == 0 &&
                    mid_len > 0 && strlen(mid) == mid_len;
    bool have_secret = http_request_query(req, "api_secret", secret, sizeof secret,
                                          &secret_len) == 0 && secret_len > 0;
    int n = -1;
    cJSON *root = NULL;
    if (req->body_len > GA4_BODY_BYTES_MAX) {
        msg(r, "", "VALUE_OUT_OF_BOUNDS", "The request body is %zu bytes; it must be smaller "
            "than 130 kB.", req->body_len);
    } else if (!(root = json_arena_parse(req->body, req->body_len))) {
        msg(r, "", "VALUE_INVALID", "Unable to parse Measurement Protocol JSON payload.");
    } else {
        n = decode(r, root, req);
    }
    if (!have_mid)
        msg(r, "measurement_id", "VALUE_REQUIRED", "Measurement requires a measurement_id "
            "query parameter.");

    if (debug) {
        respond_messages(ex, r);
    } else if (n < 0 || !have_mid) {
        drop(app, DROP_INVALID);
        http_respond(ex, 204, NULL, "", 0);
    } else {
        const struct config_site *cs = config_site_find(app->cfg, mid);
        if (!cs || !cs->ga4_api_secret || !cs->ga4_api_secret[0]) {
            drop(app, DROP_UNKNOWN_SITE);
            http_respond(ex, 204, NULL, "", 0);
        } else if (!have_secret || !secret_matches(secret, secret_len, cs->ga4_api_secret)) {
            drop(app, DROP_INVALID);
            http_respond(ex, 204, NULL, "", 0);
        } else {
            for (int i = 0; i < n; i++)
                r->evs[i].ev.site = (struct event_str){cs->name, strlen(cs->name)};
            struct ingest_opts o = {.no_rate_limit = true};
            ingest_submit(app, req, ex, r->evs, (uint32_t)n, &o, &ga4_answer);
        }
    }
    sodium_memzero(secret, sizeof secret);
    cJSON_Delete(root);
}

static void on_mp_collect(struct http_request *req, struct http_exchange *ex, void *arg)
{
    on_collect(req, ex, arg, false);
}

static void on_debug_collect(struct http_request *req, struct http_exchange *ex, void *arg)
{
    on_collect(req, ex, arg, true);
}

int peer_ga4_routes(struct app *app)
{
    struct http_route routes[] = {
        {.methods = HTTP_M(HTTP_POST), .path = "/mp/collect", .cors = true,
         .name = "ga4_collect", .handler = on_mp_collect, .arg = app},
        {.methods = HTTP_M(HTTP_POST), .path = "/debug/mp/collect", .cors = true,
         .name = "ga4_debug_collect", .handler = on_debug_collect, .arg = app},
    };
    for (size_t i = 0; i < TALLY_ARRAY_LEN(routes); i++) {
        int rc = http_server_route(app->http, &routes[i]);
        if (rc) return rc;
    }
    return 0;
}
