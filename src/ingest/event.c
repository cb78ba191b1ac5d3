#include "ingest/event.h"

#include <stdlib.h>
#include <string.h>

#include "tally/error.h"

/* Bits of the record's "bits" varint (see the layout in event.h). */
#define W_BOT 0x01u
#define W_HOST_NOT_ALLOWED 0x02u
#define W_NON_INTERACTIVE 0x04u
#define W_GEO 0x08u
#define W_REVENUE 0x10u
#define W_PROPS 0x20u
#define W_HINTS 0x40u
#define W_ALL 0x7fu

_Static_assert(EVENT_F_BOT == W_BOT && EVENT_F_HOST_NOT_ALLOWED == W_HOST_NOT_ALLOWED,
               "flags map onto the low wire bits");

static const char *const source_names[EVENT_SOURCE_COUNT] = {
    "native", "plausible", "ga4", "segment", "umami", "posthog", "goatcounter", "matomo", "pixel",
};

const char *event_source_name(unsigned source)
{
    return source < EVENT_SOURCE_COUNT ? source_names[source] : "unknown";
}

void event_init(struct event *ev)
{
    memset(ev, 0, sizeof *ev);
    ev->source = EVENT_SOURCE_NATIVE;
    ev->interactive = true;
    ev->name.ptr = EVENT_DEFAULT_NAME;
    ev->name.len = sizeof EVENT_DEFAULT_NAME - 1;
}

bool event_is_pageview(const struct event *ev)
{
    return ev->name.len == sizeof EVENT_DEFAULT_NAME - 1 &&
           memcmp(ev->name.ptr, EVENT_DEFAULT_NAME, ev->name.len) == 0;
}

/* ---- text ---------------------------------------------------------------------------------- */

bool event_text_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path, 8 bytes at a time: no high bit and no zero byte. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            uint64_t zero = (w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL;
            if ((w & 0x8080808080808080ULL) | zero) break;
            i += 8;
        }
        if (i >= len) break;
        unsigned c = s[i];
        if (c < 0x80) {
            if (c == 0) return false;
            i++;
            continue;
        }
        size_t n;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            if (c == 0xe0)
                lo = 0xa0; /* overlong */
            else if (c == 0xed)
                hi = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            if (c == 0xf0)
                lo = 0x90; /* overlong */
            else if (c == 0xf4)
                hi = 0x8f; /* above U+10FFFF */
        } else {
            return false;
        }
        if (len - i - 1 < n) return false;
        if (s[i + 1] < lo || s[i + 1] > hi) return false;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xc0) != 0x80) return false;
        i += n + 1;
    }
    return true;
}

size_t event_text_prefix(const char *s, size_t len, size_t max)
{
    if (len <= max) return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

bool event_json_number_valid(const char *s, size_t len)
{
    size_t i = 0;
    if (i < len && s[i] == '-') i++;
    if (i >= len) return false;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
    } else {
        return false;
    }
    if (i < len && s[i] == '.') {
        size_t start = ++i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start) return false;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) i++;
        size_t start = i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start) return false;
    }
    return i == len;
}

/* ---- validity ------------------------------------------------------------------------------ */

static bool str_ok(struct event_str s, size_t max)
{
    if (s.len > max) return false;
    if (s.len == 0) return true;
    return s.ptr != NULL && event_text_valid(s.ptr, s.len);
}

static bool is_upper(char c)
{
    return c >= 'A' && c <= 'Z';
}

static bool country_ok(struct event_str s)
{
    return s.len == 0 || (s.len == 2 && is_upper(s.ptr[0]) && is_upper(s.ptr[1]));
}

static bool region_ok(struct event_str s)
{
    if (s.len > EVENT_REGION_BYTES_MAX) return false;
    for (size_t i = 0; i < s.len; i++)
        if (s.ptr[i] < 0x20 || s.ptr[i] > 0x7e) return false;
    return true;
}

static bool language_ok(struct event_str s)
{
    if (s.len > EVENT_LANGUAGE_BYTES_MAX) return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= 'a' && c <= 'z') || is_upper(c) || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

static bool props_ok(const struct event_prop *p, uint32_t n)
{
    if (n > EVENT_PROPS_MAX) return false;
    if (n > 0 && p == NULL) return false;
    for (uint32_t i = 0; i < n; i++) {
        if (p[i].key.len == 0 || !str_ok(p[i].key, EVENT_PROP_KEY_BYTES_MAX)) return false;
        switch (p[i].type) {
        case EVENT_PROP_STRING:
            if (!str_ok(p[i].value, EVENT_PROP_VALUE_BYTES_MAX)) return false;
            break;
        case EVENT_PROP_NUMBER:
            if (p[i].value.len > EVENT_PROP_NUMBER_BYTES_MAX ||
                !event_json_number_valid(p[i].value.ptr, p[i].value.len))
                return false;
            break;
        case EVENT_PROP_BOOL:
            if (!((p[i].value.len == 4 && memcmp(p[i].value.ptr, "true", 4) == 0) ||
                  (p[i].value.len == 5 && memcmp(p[i].value.ptr, "false", 5) == 0)))
                return false;
            break;
        default: return false;
        }
        for (uint32_t j = 0; j < i; j++)
            if (p[j].key.len == p[i].key.len &&
                memcmp(p[j].key.ptr, p[i].key.ptr, p[i].key.len) == 0)
                return false;
    }
    return true;
}

int event_validate(const struct event *ev)
{
    bool ok = ev->source < EVENT_SOURCE_COUNT && (ev->flags & ~EVENT_F_ALL) == 0 &&
              ev->ts_ms >= 0 && ev->ts_ms <= EVENT_TS_MS_MAX && ev->received_ms >= 0 &&
              ev->received_ms <= EVENT_TS_MS_MAX && ev->site.len > 0 && ev->name.len > 0 &&
              str_ok(ev->site, EVENT_SITE_BYTES_MAX) && str_ok(ev->name, EVENT_NAME_BYTES_MAX) &&
              str_ok(ev->url, EVENT_URL_BYTES_MAX) &&
              str_ok(ev->referrer, EVENT_REFERRER_BYTES_MAX) &&
              str_ok(ev->user_agent, EVENT_USER_AGENT_BYTES_MAX) &&
              str_ok(ev->client_id, EVENT_CLIENT_ID_BYTES_MAX) && country_ok(ev->country) &&
              region_ok(ev->region) && str_ok(ev->city, EVENT_CITY_BYTES_MAX) &&
              language_ok(ev->language) && props_ok(ev->props, ev->props_count);
    if (ok && ev->has_revenue)
        ok = ev->revenue_micros >= 0 && ev->revenue_micros <= EVENT_REVENUE_MICROS_MAX &&
             is_upper(ev->currency[0]) && is_upper(ev->currency[1]) && is_upper(ev->currency[2]) &&
             ev->currency[3] == 0;
    return ok ? TALLY_OK : TALLY_EINVAL;
}

/* ---- encoding ------------------------------------------------------------------------------ */

struct wbuf {
    uint8_t *p;
    size_t len, cap;
    bool overflow;
};

static void put_bytes(struct wbuf *w, const void *src, size_t n)
{
    if (w->overflow || w->cap - w->len < n) {
        w->overflow = true;
        return;
    }
    if (n) memcpy(w->p + w->len, src, n);
    w->len += n;
}

static void put_u8(struct wbuf *w, uint8_t v)
{
    put_bytes(w, &v, 1);
}

static void put_varint(struct wbuf *w, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    while (v >= 0x80) {
        tmp[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    tmp[n++] = (uint8_t)v;
    put_bytes(w, tmp, n);
}

static uint64_t zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static int64_t unzigzag(uint64_t v)
{
    return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

static void put_str(struct wbuf *w, struct event_str s)
{
    put_varint(w, s.len);
    put_bytes(w, s.ptr, s.len);
}

static bool has_geo(const struct event *ev)
{
    return ev->country.len || ev->region.len || ev->city.len;
}

static bool has_hints(const struct event *ev)
{
    return ev->screen_width_px || ev->screen_height_px || ev->language.len;
}

int event_encode(const struct event *ev, uint8_t *buf, size_t cap)
{
    if (event_validate(ev) != TALLY_OK) return TALLY_EINVAL;
    struct wbuf w = {buf, 0, cap, false};
    uint64_t bits = ev->flags;
    if (!ev->interactive) bits |= W_NON_INTERACTIVE;
    if (has_geo(ev)) bits |= W_GEO;
    if (ev->has_revenue) bits |= W_REVENUE;
    if (ev->props_count) bits |= W_PROPS;
    if (has_hints(ev)) bits |= W_HINTS;

    put_u8(&w, EVENT_FORMAT_VERSION);
    put_u8(&w, ev->source);
    put_varint(&w, bits);
    put_varint(&w, zigzag(ev->ts_ms));
    put_varint(&w, zigzag(ev->received_ms - ev->ts_ms));
    uint8_t vh[8];
    for (int i = 0; i < 8; i++)
        vh[i] = (uint8_t)(ev->visitor >> (8 * i));
    put_bytes(&w, vh, 8);
    put_str(&w, ev->site);
    put_str(&w, ev->name);
    put_str(&w, ev->url);
    put_str(&w, ev->referrer);
    put_str(&w, ev->user_agent);
    put_str(&w, ev->client_id);
    if (bits & W_GEO) {
        put_str(&w, ev->country);
        put_str(&w, ev->region);
        put_str(&w, ev->city);
    }
    if (bits & W_REVENUE) {
        put_varint(&w, zigzag(ev->revenue_micros));
        put_bytes(&w, ev->currency, 3);
    }
    if (bits & W_PROPS) {
        put_varint(&w, ev->props_count);
        for (uint32_t i = 0; i < ev->props_count; i++) {
            put_u8(&w, ev->props[i].type);
            put_str(&w, ev->props[i].key);
            put_str(&w, ev->props[i].value);
        }
    }
    if (bits & W_HINTS) {
        put_varint(&w, ev->screen_width_px);
        put_varint(&w, ev->screen_height_px);
        put_str(&w, ev->language);
    }
    if (w.overflow) return TALLY_ETOOBIG;
    return (int)w.len;
}

/* ---- decoding ------------------------------------------------------------------------------ */

struct rbuf {
    const uint8_t *p;
    size_t pos, len;
    bool bad;
};

static uint8_t get_u8(struct rbuf *r)
{
    if (r->bad || r->pos >= r->len) {
        r->bad = true;
        return 0;
    }
    return r->p[r->pos++];
}

/* Minimal LEB128 of at most 10 bytes whose value fits in 64 bits. */
static uint64_t get_varint(struct rbuf *r)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->bad || r->pos >= r->len) break;
        uint8_t b = r->p[r->pos++];
        if (shift == 63 && b > 1) break; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            if (b == 0 && shift > 0) break; /* redundant high group: not minimal */
            return v;
        }
    }
    r->bad = true;
    return 0;
}

static struct event_str get_str(struct rbuf *r, size_t max)
{
    struct event_str s = {NULL, 0};
    uint64_t n = get_varint(r);
    if (r->bad || n > max || n > r->len - r->pos) {
        r->bad = true;
        return s;
    }
    s.ptr = (const char *)r->p + r->pos;
    s.len = (size_t)n;
    r->pos += (size_t)n;
    return s;
}

int event_decode(const uint8_t *bytes, size_t len, struct event *out, struct event_scratch *scratch)
{
    struct rbuf r = {bytes, 0, len, false};
    memset(out, 0, sizeof *out);
    if (get_u8(&r) != EVENT_FORMAT_VERSION) return TALLY_ECORRUPT;
    out->source = get_u8(&r);
    uint64_t bits = get_varint(&r);
    if (r.bad || (bits & ~(uint64_t)W_ALL)) return TALLY_ECORRUPT;
    out->flags = (uint32_t)(bits & EVENT_F_ALL);
    out->interactive = !(bits & W_NON_INTERACTIVE);
    out->ts_ms = unzigzag(get_varint(&r));
    int64_t delta = unzigzag(get_varint(&r));
    if (r.bad || out->ts_ms < 0 || out->ts_ms > EVENT_TS_MS_MAX) return TALLY_ECORRUPT;
    /* ts is in range, so a delta outside +-2^62 cannot give a valid received_ms. */
    if (delta > EVENT_TS_MS_MAX || delta < -EVENT_TS_MS_MAX) return TALLY_ECORRUPT;
    out->received_ms = out->ts_ms + delta;
    if (r.bad || len - r.pos < 8) return TALLY_ECORRUPT;
    for (int i = 0; i < 8; i++)
        out->visitor |= (uint64_t)bytes[r.pos + i] << (8 * i);
    r.pos += 8;
    out->site = get_str(&r, EVENT_SITE_BYTES_MAX);
    out->name = get_str(&r, EVENT_NAME_BYTES_MAX);
    out->url = get_str(&r, EVENT_URL_BYTES_MAX);
    out->referrer = get_str(&r, EVENT_REFERRER_BYTES_MAX);
    out->user_agent = get_str(&r, EVENT_USER_AGENT_BYTES_MAX);
    out->client_id = get_str(&r, EVENT_CLIENT_ID_BYTES_MAX);
    if (bits & W_GEO) {
        out->country = get_str(&r, EVENT_COUNTRY_BYTES_MAX);
        out->region = get_str(&r, EVENT_REGION_BYTES_MAX);
        out->city = get_str(&r, EVENT_CITY_BYTES_MAX);
        if (!r.bad && !has_geo(out)) return TALLY_ECORRUPT;
    }
    if (bits & W_REVENUE) {
        out->has_revenue = true;
        out->revenue_micros = unzigzag(get_varint(&r));
        if (r.bad || len - r.pos < 3) return TALLY_ECORRUPT;
        memcpy(out->currency, bytes + r.pos, 3);
        out->currency[3] = 0;
        r.pos += 3;
    }
    if (bits & W_PROPS) {
        uint64_t n = get_varint(&r);
        if (r.bad || n == 0 || n > EVENT_PROPS_MAX) return TALLY_ECORRUPT;
        for (uint64_t i = 0; i < n; i++) {
            struct event_prop *p = &scratch->props[i];
            p->type = get_u8(&r);
            p->key = get_str(&r, EVENT_PROP_KEY_BYTES_MAX);
            p->value = get_str(&r, EVENT_PROP_VALUE_BYTES_MAX);
        }
        out->props = scratch->props;
        out->props_count = (uint32_t)n;
    }
    if (bits & W_HINTS) {
        uint64_t sw = get_varint(&r), sh = get_varint(&r);
        if (sw > UINT16_MAX || sh > UINT16_MAX) return TALLY_ECORRUPT;
        out->screen_width_px = (uint16_t)sw;
        out->screen_height_px = (uint16_t)sh;
        out->language = get_str(&r, EVENT_LANGUAGE_BYTES_MAX);
        if (!r.bad && !has_hints(out)) return TALLY_ECORRUPT;
    }
    if (r.bad || r.pos != len) return TALLY_ECORRUPT;
    if (event_validate(out) != TALLY_OK) return TALLY_ECORRUPT;
    return TALLY_OK;
}

/* ---- arena --------------------------------------------------------------------------------- */

struct arena_chunk {
    struct arena_chunk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
};

struct event_arena {
    struct arena_chunk *first, *cur;
    size_t chunk_bytes, retain_bytes, used_total;
};

struct event_arena *event_arena_new(size_t chunk_bytes, size_t retain_bytes)
{
    struct event_arena *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->chunk_bytes = chunk_bytes < 1024 ? 1024 : chunk_bytes;
    a->retain_bytes = retain_bytes;
    return a;
}

void event_arena_free(struct event_arena *a)
{
    if (!a) return;
    struct arena_chunk *c = a->first;
    while (c) {
        struct arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    free(a);
}

void event_arena_reset(struct event_arena *a)
{
    size_t kept = 0;
    struct arena_chunk **link = &a->first;
    while (*link) {
        struct arena_chunk *c = *link;
        if (kept + c->cap <= a->retain_bytes) {
            kept += c->cap;
            c->used = 0;
            link = &c->next;
        } else {
            *link = c->next;
            free(c);
        }
    }
    a->cur = a->first;
    a->used_total = 0;
}

void *event_arena_alloc(struct event_arena *a, size_t n)
{
    size_t need = (n + 15) & ~(size_t)15;
    if (need < n) return NULL;
    if (need == 0) need = 16;
    /* Walk forward through retained chunks before asking malloc for a new one. */
    struct arena_chunk *c = a->cur;
    while (c && c->cap - c->used < need) {
        if (!c->next) break;
        c = c->next;
    }
    if (!c || c->cap - c->used < need) {
        size_t cap = need > a->chunk_bytes ? need : a->chunk_bytes;
        if (cap > SIZE_MAX - sizeof(struct arena_chunk)) return NULL;
        struct arena_chunk *nc = malloc(sizeof *nc + cap);
        if (!nc) return NULL;
        nc->cap = cap;
        nc->used = 0;
        if (c) {
            nc->next = c->next;
            c->next = nc;
        } else {
            nc->next = NULL;
            a->first = nc;
        }
        c = nc;
    }
    a->cur = c;
    void *p = c->data + c->used;
    c->used += need;
    a->used_total += need;
    return p;
}

char *event_arena_strdup(struct event_arena *a, const char *s, size_t len)
{
    char *p = event_arena_alloc(a, len + 1);
    if (!p) return NULL;
    if (len) memcpy(p, s, len);
    p[len] = 0;
    return p;
}

size_t event_arena_used(const struct event_arena *a)
{
    return a->used_total;
}
