#include "ingest/native.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/decimal.h"
#include "core/json_arena.h"
#include "ingest/timefmt.h"
#include "ingest/url.h"
#include "tally/error.h"

#define ARENA_CHUNK_BYTES (64 * 1024)
#define ARENA_RETAIN_BYTES (1024 * 1024)
#define NAME_QUOTE_BYTES 40 /* longest field/key name quoted in an error message */

struct seg {
    size_t off, len;
};

struct native_ctx {
    struct event_arena *arena;
    struct seg *segs; /* extents of the events found by the pre-scan */
    size_t segs_count, segs_cap;
    struct native_error err;
};

struct native_ctx *native_ctx_new(void)
{
    struct native_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    ctx->arena = event_arena_new(ARENA_CHUNK_BYTES, ARENA_RETAIN_BYTES);
    if (!ctx->arena) {
        free(ctx);
        return NULL;
    }
    return ctx;
}

void native_ctx_free(struct native_ctx *ctx)
{
    if (!ctx) return;
    event_arena_free(ctx->arena);
    free(ctx->segs);
    free(ctx);
}

const struct native_error *native_ctx_error(const struct native_ctx *ctx)
{
    return &ctx->err;
}

bool native_content_type_is_ndjson(const char *ct, size_t len)
{
    static const char want[] = "application/x-ndjson";
    size_t n = sizeof want - 1, i = 0;
    while (i < len && (ct[i] == ' ' || ct[i] == '\t'))
        i++;
    if (len - i < n) return false;
    for (size_t k = 0; k < n; k++) {
        char c = ct[i + k];
        if (c >= 'A' && c <= 'Z') c = (char)(c | 0x20);
        if (c != want[k]) return false;
    }
    i += n;
    return i == len || ct[i] == ';' || ct[i] == ' ' || ct[i] == '\t';
}

/* ---- errors -------------------------------------------------------------------------------- */

static int fail(struct native_ctx *ctx, int index, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct native_ctx *ctx, int index, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err.message, sizeof ctx->err.message, fmt, ap);
    va_end(ap);
    ctx->err.index = index;
    ctx->err.http_status = status;
    return status == 413 ? TALLY_ETOOBIG : TALLY_EINVAL;
}

static int fail_nomem(struct native_ctx *ctx)
{
    snprintf(ctx->err.message, sizeof ctx->err.message, "out of memory");
    ctx->err.index = -1;
    ctx->err.http_status = 503;
    return TALLY_ENOMEM;
}

/* A client-chosen name made safe to quote in a message: at most NAME_QUOTE_BYTES bytes cut at a
 * character boundary (then "..."), control characters, quotes and backslashes as '?', and
 * every non-ASCII byte as '?' when the name is not valid UTF-8. */
static const char *quote(char out[NAME_QUOTE_BYTES + 4], const char *name)
{
    size_t len = strlen(name);
    bool text = event_text_valid(name, len);
    size_t n = text ? event_text_prefix(name, len, NAME_QUOTE_BYTES)
                    : (len < NAME_QUOTE_BYTES ? len : NAME_QUOTE_BYTES);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        out[i] =
            (c < 0x20 || c == 0x7f || c == '"' || c == '\\' || c == '\'' || (c >= 0x80 && !text))
                ? '?'
                : (char)c;
    }
    if (n < len) memcpy(out + n, "...", 3), n += 3;
    out[n] = 0;
    return out;
}

/* ---- pre-scan ------------------------------------------------------------------------------ */

enum { K_OTHER = 0, K_QUOTE, K_OPEN, K_CLOSE };
static const unsigned char outer_kind[256] = {
    ['"'] = K_QUOTE, ['{'] = K_OPEN, ['['] = K_OPEN, ['}'] = K_CLOSE, [']'] = K_CLOSE,
};
/* Bytes that end the fast path inside a string: controls, quote, backslash. */
/* clang-format off */
static const unsigned char string_special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x00..0x0f */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x10..0x1f */
    ['"'] = 1, ['\\'] = 1,
};
/* clang-format on */

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static bool hex4(const char *p)
{
    for (int i = 0; i < 4; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'))) return false;
    }
    return true;
}

/* b[*pos] is '"': moves *pos past the closing quote. */
static int scan_string(struct native_ctx *ctx, const char *b, size_t len, size_t *pos, int index)
{
    size_t i = *pos + 1;
    for (;;) {
        /* Eight bytes at a time until a word holds '"', '\\' or a control byte (exact word
         * tests: "has a zero byte" after xor, "has a byte below 0x20"). */
        for (; i + 8 <= len; i += 8) {
            uint64_t w, q, bs;
            memcpy(&w, b + i, 8);
            q = w ^ (ONES * '"');
            bs = w ^ (ONES * '\\');
            if (((q - ONES) & ~q & HIGHS) | ((bs - ONES) & ~bs & HIGHS) |
                ((w - ONES * 0x20) & ~w & HIGHS))
                break;
        }
        while (i < len && !string_special[(unsigned char)b[i]])
            i++;
        if (i >= len) return fail(ctx, index, 400, "invalid JSON: unterminated string");
        unsigned char c = (unsigned char)b[i];
        if (c == '"') {
            *pos = i + 1;
            return TALLY_OK;
        }
        if (c != '\\')
            return fail(ctx, index, 400,
                        "invalid JSON at byte %zu: control character 0x%02x in a string must "
                        "be escaped",
                        i, c);
        if (len - i < 2) return fail(ctx, index, 400, "invalid JSON: unterminated string");
        char e = b[i + 1];
        if (e == 'u') {
            if (len - i < 6 || !hex4(b + i + 2))
                return fail(ctx, index, 400, "invalid JSON at byte %zu: bad \\u escape", i);
            if (memcmp(b + i + 2, "0000", 4) == 0)
                return fail(ctx, index, 400,
                            "invalid string at byte %zu: \\u0000 (NUL) is not allowed", i);
            i += 6;
        } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                   e == 'r' || e == 't') {
            i += 2;
        } else {
            return fail(ctx, index, 400, "invalid JSON at byte %zu: bad escape sequence", i);
        }
    }
}

/* b[*pos] is '{' (or '['): moves *pos past the matching bracket, checking nesting depth. */
static int scan_value(struct native_ctx *ctx, const char *b, size_t len, size_t *pos, int index)
{
    char stack[NATIVE_DEPTH_MAX];
    int depth = 0;
    size_t i = *pos;
    while (i < len) {
        unsigned char c = (unsigned char)b[i];
        switch (outer_kind[c]) {
        case K_OTHER: i++; break;
        case K_QUOTE: {
            int err = scan_string(ctx, b, len, &i, index);
            if (err) return err;
            break;
        }
        case K_OPEN:
            if (depth == NATIVE_DEPTH_MAX)
                return fail(ctx, index, 400, "JSON nesting deeper than %d levels",
                            NATIVE_DEPTH_MAX);
            stack[depth++] = (char)c;
            i++;
            break;
        default: /* K_CLOSE */
            if (depth == 0 || stack[depth - 1] != (c == '}' ? '{' : '['))
                return fail(ctx, index, 400, "invalid JSON at byte %zu: unbalanced '%c'", i, c);
            depth--;
            i++;
            if (depth == 0) {
                *pos = i;
                return TALLY_OK;
            }
            break;
        }
    }
    return fail(ctx, index, 400, "invalid JSON: the body ends inside an event");
}

static size_t skip_ws(const char *b, size_t i, size_t len)
{
    while (i < len && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t'))
        i++;
    return i;
}

/* Called before each event is scanned, so the index of any error is below events_max. */
static int check_count(struct native_ctx *ctx, const struct native_opts *o)
{
    if (ctx->segs_count >= o->events_max)
        return fail(ctx, -1, 413, "the request holds more than %u events", o->events_max);
    return TALLY_OK;
}

static int push_seg(struct native_ctx *ctx, const struct native_opts *o, size_t off, size_t len)
{
    if (ctx->segs_count == ctx->segs_cap) {
        size_t cap = ctx->segs_cap ? ctx->segs_cap * 2 : 128;
        if (cap > o->events_max) cap = o->events_max;
        struct seg *s = realloc(ctx->segs, cap * sizeof *s);
        if (!s) return fail_nomem(ctx);
        ctx->segs = s;
        ctx->segs_cap = cap;
    }
    ctx->segs[ctx->segs_count].off = off;
    ctx->segs[ctx->segs_count].len = len;
    ctx->segs_count++;
    return TALLY_OK;
}

/* Finds every event's extent; see the header for what it rejects. */
static int prescan(struct native_ctx *ctx, const char *b, size_t len, const struct native_opts *o)
{
    int err;
    size_t i = (len >= 3 && memcmp(b, "\xef\xbb\xbf", 3) == 0) ? 3 : 0; /* BOM */
    i = skip_ws(b, i, len);
    if (i == len) return fail(ctx, -1, 400, "the body holds no events");
    if (b[i] == '[') {
        if (o->ndjson)
            return fail(ctx, -1, 400,
                        "an NDJSON body holds one JSON object per line, not an array");
        i = skip_ws(b, i + 1, len);
        if (i < len && b[i] == ']') {
            if (skip_ws(b, i + 1, len) != len)
                return fail(ctx, -1, 400, "invalid JSON at byte %zu: data after the array",
                            skip_ws(b, i + 1, len));
            return fail(ctx, -1, 400, "the body holds no events");
        }
        for (;;) {
            int index = (int)ctx->segs_count;
            if (i >= len) return fail(ctx, -1, 400, "invalid JSON: the array is not closed");
            if ((err = check_count(ctx, o))) return err;
            if (b[i] != '{') return fail(ctx, index, 400, "an event must be a JSON object");
            size_t start = i;
            if ((err = scan_value(ctx, b, len, &i, index))) return err;
            if ((err = push_seg(ctx, o, start, i - start))) return err;
            i = skip_ws(b, i, len);
            if (i >= len) return fail(ctx, -1, 400, "invalid JSON: the array is not closed");
            if (b[i] == ',') {
                i = skip_ws(b, i + 1, len);
                continue;
            }
            if (b[i] == ']') break;
            return fail(ctx, index, 400,
                        "invalid JSON at byte %zu: expected ',' or ']' after an event", i);
        }
        i = skip_ws(b, i + 1, len);
        if (i != len)
            return fail(ctx, -1, 400, "invalid JSON at byte %zu: data after the array", i);
        return TALLY_OK;
    }
    for (;;) {
        int index = (int)ctx->segs_count;
        if ((err = check_count(ctx, o))) return err;
        if (b[i] != '{') return fail(ctx, index, 400, "an event must be a JSON object");
        size_t start = i;
        if ((err = scan_value(ctx, b, len, &i, index))) return err;
        if ((err = push_seg(ctx, o, start, i - start))) return err;
        while (i < len && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r'))
            i++;
        if (i < len && b[i] != '\n')
            return fail(ctx, index, 400,
                        "invalid JSON at byte %zu: expected a newline, then another event or "
                        "the end of the body",
                        i);
        i = skip_ws(b, i, len);
        if (i == len) return TALLY_OK;
    }
}

/* ---- fields -------------------------------------------------------------------------------- */

enum field {
    F_SITE,
    F_NAME,
    F_URL,
    F_REFERRER,
    F_TS,
    F_VISITOR_ID,
    F_ID,
    F_PROPS,
    F_REVENUE,
    F_INTERACTIVE,
    F_IP,
    F_USER_AGENT,
    F_COUNT
};
static const char *const field_names[F_COUNT] = {
    "site", "name",  "url",     "referrer",    "ts", "visitor_id",
    "id",   "props", "revenue", "interactive", "ip", "user_agent",
};

static int field_of(const char *k)
{
    for (int f = 0; f < F_COUNT; f++)
        if (k[0] == field_names[f][0] && strcmp(k, field_names[f]) == 0) return f;
    return -1;
}

/* Everything one event's checks need. */
struct dec {
    struct native_ctx *ctx;
    const struct native_opts *o;
    int index;
};

static int dfail(const struct dec *d, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int dfail(const struct dec *d, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->ctx->err.message, sizeof d->ctx->err.message, fmt, ap);
    va_end(ap);
    d->ctx->err.index = d->index;
    d->ctx->err.http_status = status;
    return TALLY_EINVAL;
}

/* A string field of at most max bytes (min_len 0 or 1) copied into the arena. */
static int get_string(const struct dec *d, const cJSON *it, const char *field, size_t max,
                      size_t min_len, struct event_str *out)
{
    if (!cJSON_IsString(it) || !it->valuestring)
        return dfail(d, 400, "field '%s' must be a string", field);
    size_t n = strlen(it->valuestring);
    if (n > max) return dfail(d, 400, "field '%s' must be at most %zu bytes", field, max);
    if (n < min_len) return dfail(d, 400, "field '%s' must not be empty", field);
    if (!event_text_valid(it->valuestring, n))
        return dfail(d, 400, "field '%s' is not valid UTF-8", field);
    char *p = event_arena_strdup(d->ctx->arena, it->valuestring, n);
    if (!p) return fail_nomem(d->ctx);
    out->ptr = p;
    out->len = n;
    return TALLY_OK;
}

static int get_ts(const struct dec *d, const cJSON *it, int64_t *ts)
{
    if (cJSON_IsString(it)) {
        const char *s = it->valuestring;
        if (timefmt_parse_rfc3339(s, strlen(s), ts) != TALLY_OK)
            return dfail(d, 400,
                         "field 'ts' must be an RFC 3339 date-time with a time zone, like "
                         "2026-01-31T12:00:00Z");
    } else if (cJSON_IsNumber(it)) {
        double v = it->valuedouble;
        if (!isfinite(v) || v != floor(v))
            return dfail(d, 400, "field 'ts' must be an integer number of epoch milliseconds");
        if (v < 0 || v > (double)EVENT_TS_MS_MAX)
            return dfail(d, 400, "field 'ts' is out of range (years 1970 to 9999)");
        *ts = (int64_t)v;
    } else {
        return dfail(d, 400, "field 'ts' must be an RFC 3339 string or integer epoch milliseconds");
    }
    if (*ts < 0 || *ts > EVENT_TS_MS_MAX)
        return dfail(d, 400, "field 'ts' is out of range (years 1970 to 9999)");
    if (!d->o->privileged &&
        (*ts < d->o->now_ms - NATIVE_TS_PAST_MS || *ts > d->o->now_ms + NATIVE_TS_FUTURE_MS))
        return dfail(d, 400,
                     "field 'ts' must lie between 72 hours before and 5 minutes after the "
                     "server's time (other times need a write key)");
    return TALLY_OK;
}

/* The shortest text that reads back as v (JSON number grammar; -0 is "0"). */
static size_t format_number(double v, char out[EVENT_PROP_NUMBER_BYTES_MAX])
{
    if (v == 0) {
        out[0] = '0';
        out[1] = 0;
        return 1;
    }
    if (fabs(v) < 1e15 && v == floor(v)) { /* integers, the common case, without printf */
        char *p = out;
        if (v < 0) *p++ = '-';
        p = decimal_u64(p, (uint64_t)(v < 0 ? -v : v));
        *p = 0;
        return (size_t)(p - out);
    }
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, EVENT_PROP_NUMBER_BYTES_MAX, "%.*g", prec, v);
        if (strtod(out, NULL) == v) break;
    }
    return (size_t)n;
}

static int get_props(const struct dec *d, const cJSON *obj, struct event *ev)
{
    char q[NAME_QUOTE_BYTES + 4];
    if (!cJSON_IsObject(obj)) return dfail(d, 400, "field 'props' must be an object");
    int n = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        n++;
    if (n > EVENT_PROPS_MAX)
        return dfail(d, 400, "field 'props' has %d keys (at most %d)", n, EVENT_PROPS_MAX);
    if (n == 0) return TALLY_OK;
    struct event_prop *props = event_arena_alloc(d->ctx->arena, (size_t)n * sizeof *props);
    if (!props) return fail_nomem(d->ctx);
    uint32_t count = 0;
    for (const cJSON *c = obj->child; c; c = c->next) {
        const char *key = c->string;
        size_t klen = strlen(key);
        if (klen == 0) return dfail(d, 400, "field 'props' has an empty key");
        if (!event_text_valid(key, klen))
            return dfail(d, 400, "field 'props' has a key that is not valid UTF-8");
        if (klen > EVENT_PROP_KEY_BYTES_MAX)
            return dfail(d, 400, "key 'props.%s' must be at most %d bytes", quote(q, key),
                         EVENT_PROP_KEY_BYTES_MAX);
        for (const cJSON *p = obj->child; p != c; p = p->next)
            if (strcmp(p->string, key) == 0)
                return dfail(d, 400, "duplicate key 'props.%s'", quote(q, key));
        struct event_prop *pr = &props[count];
        char num[EVENT_PROP_NUMBER_BYTES_MAX];
        const char *val;
        size_t vlen;
        if (cJSON_IsNull(c)) continue;
        if (cJSON_IsString(c)) {
            val = c->valuestring;
            vlen = strlen(val);
            if (vlen > EVENT_PROP_VALUE_BYTES_MAX)
                return dfail(d, 400, "field 'props.%s' must be at most %d bytes", quote(q, key),
                             EVENT_PROP_VALUE_BYTES_MAX);
            if (!event_text_valid(val, vlen))
                return dfail(d, 400, "field 'props.%s' is not valid UTF-8", quote(q, key));
            pr->type = EVENT_PROP_STRING;
        } else if (cJSON_IsNumber(c)) {
            if (!isfinite(c->valuedouble))
                return dfail(d, 400, "field 'props.%s' must be a finite number", quote(q, key));
            vlen = format_number(c->valuedouble, num);
            val = num;
            pr->type = EVENT_PROP_NUMBER;
        } else if (cJSON_IsBool(c)) {
            val = cJSON_IsTrue(c) ? "true" : "false";
            vlen = strlen(val);
            pr->type = EVENT_PROP_BOOL;
        } else {
            return dfail(d, 400, "field 'props.%s' must be a string, number or boolean",
                         quote(q, key));
        }
        char *k = event_arena_strdup(d->ctx->arena, key, klen);
        char *v = event_arena_strdup(d->ctx->arena, val, vlen);
        if (!k || !v) return fail_nomem(d->ctx);
        pr->key.ptr = k;
        pr->key.len = klen;
        pr->value.ptr = v;
        pr->value.len = vlen;
        count++;
    }
    ev->props = props;
    ev->props_count = count;
    return TALLY_OK;
}

#define AMOUNT_ERROR "field 'revenue.amount' must be a number or a decimal string like \"19.99\""
#define AMOUNT_RANGE "field 'revenue.amount' must be at most 1000000000000"
#define AMOUNT_NEGATIVE "field 'revenue.amount' must not be negative"

/* "123.456" -> micros, rounded half-up at the seventh fraction digit. */
static int amount_from_string(const struct dec *d, const char *s, int64_t *micros)
{
    size_t i = 0;
    int64_t units = 0, frac = 0;
    if (s[0] == '-') return dfail(d, 400, AMOUNT_NEGATIVE);
    if (!(s[0] >= '0' && s[0] <= '9')) return dfail(d, 400, AMOUNT_ERROR);
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        units = units * 10 + (s[i] - '0');
        if (units > NATIVE_REVENUE_UNITS_MAX) return dfail(d, 400, AMOUNT_RANGE);
    }
    int round_up = 0;
    if (s[i] == '.') {
        i++;
        if (!(s[i] >= '0' && s[i] <= '9')) return dfail(d, 400, AMOUNT_ERROR);
        int k = 0;
        for (; s[i] >= '0' && s[i] <= '9'; i++, k++) {
            if (k < 6)
                frac = frac * 10 + (s[i] - '0');
            else if (k == 6)
                round_up = s[i] >= '5';
        }
        for (; k < 6; k++)
            frac *= 10;
    }
    if (s[i] != 0) return dfail(d, 400, AMOUNT_ERROR);
    *micros = units * 1000000 + frac + round_up;
    if (*micros > EVENT_REVENUE_MICROS_MAX) return dfail(d, 400, AMOUNT_RANGE);
    return TALLY_OK;
}

static int get_revenue(const struct dec *d, const cJSON *obj, struct event *ev)
{
    char q[NAME_QUOTE_BYTES + 4];
    if (!cJSON_IsObject(obj))
        return dfail(d, 400,
                     "field 'revenue' must be an object like {\"amount\": 19.99, \"currency\": "
                     "\"EUR\"}");
    const cJSON *amount = NULL, *currency = NULL;
    for (const cJSON *c = obj->child; c; c = c->next) {
        const cJSON **slot = strcmp(c->string, "amount") == 0     ? &amount
                             : strcmp(c->string, "currency") == 0 ? &currency
                                                                  : NULL;
        if (!slot) return dfail(d, 400, "unknown field 'revenue.%s'", quote(q, c->string));
        if (*slot) return dfail(d, 400, "duplicate field 'revenue.%s'", c->string);
        *slot = c;
    }
    if (!amount || cJSON_IsNull(amount)) return dfail(d, 400, "field 'revenue.amount' is required");
    if (!currency || cJSON_IsNull(currency))
        return dfail(d, 400, "field 'revenue.currency' is required");
    int64_t micros = 0;
    if (cJSON_IsNumber(amount)) {
        double v = amount->valuedouble;
        if (!isfinite(v)) return dfail(d, 400, "field 'revenue.amount' must be a finite number");
        if (v < 0) return dfail(d, 400, AMOUNT_NEGATIVE);
        if (v > (double)NATIVE_REVENUE_UNITS_MAX) return dfail(d, 400, AMOUNT_RANGE);
        micros = (int64_t)floor(v * 1e6 + 0.5);
        if (micros > EVENT_REVENUE_MICROS_MAX) micros = EVENT_REVENUE_MICROS_MAX;
    } else if (cJSON_IsString(amount)) {
        int err = amount_from_string(d, amount->valuestring, &micros);
        if (err) return err;
    } else {
        return dfail(d, 400, AMOUNT_ERROR);
    }
    const char *cur = cJSON_IsString(currency) ? currency->valuestring : NULL;
    if (!cur || strlen(cur) != 3 || cur[0] < 'A' || cur[0] > 'Z' || cur[1] < 'A' || cur[1] > 'Z' ||
        cur[2] < 'A' || cur[2] > 'Z')
        return dfail(d, 400,
                     "field 'revenue.currency' must be three capital letters (ISO 4217), like "
                     "\"EUR\"");
    ev->has_revenue = true;
    ev->revenue_micros = micros;
    memcpy(ev->currency, cur, 4);
    return TALLY_OK;
}

static int get_ip(const struct dec *d, const cJSON *it, struct event_str *out)
{
    if (!cJSON_IsString(it)) return dfail(d, 400, "field 'ip' must be a string");
    const char *s = it->valuestring;
    size_t n = strlen(s);
    unsigned char addr[16];
    if (n > 64 || (inet_pton(AF_INET, s, addr) != 1 && inet_pton(AF_INET6, s, addr) != 1))
        return dfail(d, 400, "field 'ip' must be an IPv4 or IPv6 address");
    char *p = event_arena_strdup(d->ctx->arena, s, n);
    if (!p) return fail_nomem(d->ctx);
    out->ptr = p;
    out->len = n;
    return TALLY_OK;
}

static int decode_field(const struct dec *d, int f, const cJSON *it, struct native_event *ne)
{
    struct event *ev = &ne->ev;
    switch (f) {
    case F_SITE: return get_string(d, it, "site", EVENT_SITE_BYTES_MAX, 1, &ev->site);
    case F_NAME: return get_string(d, it, "name", EVENT_NAME_BYTES_MAX, 1, &ev->name);
    case F_URL: return get_string(d, it, "url", EVENT_URL_BYTES_MAX, 0, &ev->url);
    case F_REFERRER:
        return get_string(d, it, "referrer", EVENT_REFERRER_BYTES_MAX, 0, &ev->referrer);
    case F_TS: return get_ts(d, it, &ev->ts_ms);
    case F_VISITOR_ID:
        return get_string(d, it, "visitor_id", NATIVE_VISITOR_ID_BYTES_MAX, 0, &ne->visitor_id);
    case F_ID: return get_string(d, it, "id", EVENT_CLIENT_ID_BYTES_MAX, 0, &ev->client_id);
    case F_PROPS: return get_props(d, it, ev);
    case F_REVENUE: return get_revenue(d, it, ev);
    case F_INTERACTIVE:
        if (!cJSON_IsBool(it)) return dfail(d, 400, "field 'interactive' must be true or false");
        ev->interactive = cJSON_IsTrue(it);
        return TALLY_OK;
    case F_IP:
        if (!d->o->privileged) return dfail(d, 403, "field 'ip' requires a write key");
        return get_ip(d, it, &ne->ip);
    default: /* F_USER_AGENT */
        if (!d->o->privileged) return dfail(d, 403, "field 'user_agent' requires a write key");
        return get_string(d, it, "user_agent", EVENT_USER_AGENT_BYTES_MAX, 0, &ev->user_agent);
    }
}

static int decode_event(const struct dec *d, const cJSON *obj, struct native_event *ne)
{
    char q[NAME_QUOTE_BYTES + 4];
    memset(ne, 0, sizeof *ne);
    event_init(&ne->ev);
    ne->ev.source = EVENT_SOURCE_NATIVE;
    ne->ev.ts_ms = d->o->now_ms;
    ne->ev.received_ms = d->o->now_ms;
    unsigned seen = 0;
    for (const cJSON *c = obj->child; c; c = c->next) {
        int f = field_of(c->string);
        if (f < 0) return dfail(d, 400, "unknown field '%s'", quote(q, c->string));
        if (seen & (1u << f)) return dfail(d, 400, "duplicate field '%s'", field_names[f]);
        seen |= 1u << f;
        if (cJSON_IsNull(c)) continue;
        int err = decode_field(d, f, c, ne);
        if (err) return err;
    }
    struct event *ev = &ne->ev;
    if (ev->site.len == 0) return dfail(d, 400, "field 'site' is required");
    if (ev->url.len == 0) {
        if (event_is_pageview(ev)) return dfail(d, 400, "field 'url' is required for pageviews");
    } else {
        struct url u;
        if (url_parse(ev->url.ptr, ev->url.len, &u) != TALLY_OK)
            return dfail(d, 400, "field 'url' must be an absolute http(s) URL");
    }
    return TALLY_OK;
}

/* ---- entry --------------------------------------------------------------------------------- */

int native_decode(struct native_ctx *ctx, const char *body, size_t len,
                  const struct native_opts *opts, struct native_event **events_out)
{
    TALLY_ASSERT(opts->events_max >= 1);
    *events_out = NULL;
    memset(&ctx->err, 0, sizeof ctx->err);
    event_arena_reset(ctx->arena);
    ctx->segs_count = 0;
    if (len > opts->body_bytes_max)
        return fail(ctx, -1, 413, "the body is larger than %zu bytes", opts->body_bytes_max);
    int err = prescan(ctx, body, len, opts);
    if (err) return err;

    size_t n = ctx->segs_count;
    struct native_event *events = event_arena_alloc(ctx->arena, n * sizeof *events);
    if (!events) return fail_nomem(ctx);
    for (size_t i = 0; i < n; i++) {
        struct dec d = {ctx, opts, (int)i};
        const char *start = body + ctx->segs[i].off, *end = NULL;
        /* json_arena_parse refuses exactly the texts cJSON refuses, without a malloc per node;
         * cJSON parses a refused text again only to name the byte where it failed. */
        cJSON *root = json_arena_parse(start, ctx->segs[i].len);
        if (!root) {
            cJSON *again = cJSON_ParseWithLengthOpts(start, ctx->segs[i].len, &end, 0);
            cJSON_Delete(again); /* NULL: same grammar */
            size_t at =
                end && end >= body && end <= body + len ? (size_t)(end - body) : ctx->segs[i].off;
            return dfail(&d, 400, "invalid JSON at byte %zu", at);
        }
        err = decode_event(&d, root, &events[i]);
        json_arena_delete(root); /* decode_event only reads the tree (json_arena.h rule 4) */
        if (err) return err;
    }
    *events_out = events;
    return (int)n;
}
