/*
 * peer_util: small helpers shared by the browser-facing peer formats (peer_plausible.c,
 * peer_pixel.c, peer_goatcounter.c). Private to src/app; every function is static inline so a
 * module that does not use one pays nothing for it.
 *
 * PROPS (peer_props_take). Trackers send custom properties loosely typed; Plausible's rules are
 * the model, because its tracker is the one most sites run: a value that is null, an object,
 * an array or blank (empty or only leading whitespace) is skipped, as is a blank key; numbers
 * and booleans are kept with their type (their text: 1.5 -> "1.5", true -> "true"); beyond
 * EVENT_PROPS_MAX usable pairs the rest is discarded; a key over EVENT_PROP_KEY_BYTES_MAX or a
 * value over EVENT_PROP_VALUE_BYTES_MAX bytes, invalid UTF-8, or a duplicate key is an error
 * (the caller answers 400 in its own format).
 *
 * OWNERSHIP. Strings written into a struct peer_props point into the cJSON tree or into the
 * struct itself: both must outlive the event that uses them (until ingest_submit returns).
 * Any thread.
 */
#ifndef TALLY_APP_PEER_UTIL_H
#define TALLY_APP_PEER_UTIL_H

#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cidr.h"
#include "ingest/event.h"

struct peer_props {
    struct event_prop props[EVENT_PROPS_MAX];
    char numbers[EVENT_PROPS_MAX][EVENT_PROP_NUMBER_BYTES_MAX];
    uint32_t count;
};

/* The shortest text that reads back as v ("-0" is "0"). */
static inline size_t peer_format_number(double v, char out[EVENT_PROP_NUMBER_BYTES_MAX])
{
    if (v == 0) v = 0; /* -0 */
    int n = 0;
    if (fabs(v) < 1e15 && v == floor(v)) {
        n = snprintf(out, EVENT_PROP_NUMBER_BYTES_MAX, "%.0f", v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            n = snprintf(out, EVENT_PROP_NUMBER_BYTES_MAX, "%.*g", prec, v);
            if (strtod(out, NULL) == v) break;
        }
    }
    return (size_t)n;
}

static inline bool peer_blank(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\f' || *s == '\v')
        s++;
    return *s == 0;
}

/* Adds the usable pairs of a JSON object to *out (see the header). Returns NULL, or a message
 * naming the problem. obj not an object: nothing is added (Plausible ignores such props). */
static inline const char *peer_props_take(const cJSON *obj, struct peer_props *out)
{
    out->count = 0;
    if (!cJSON_IsObject(obj)) return NULL;
    for (const cJSON *c = obj->child; c; c = c->next) {
        const char *key = c->string;
        if (!key || peer_blank(key)) continue;
        struct event_prop *p = &out->props[out->count];
        const char *val;
        size_t vlen;
        if (cJSON_IsString(c) && c->valuestring) {
            val = c->valuestring;
            if (peer_blank(val)) continue;
            vlen = strlen(val);
            p->type = EVENT_PROP_STRING;
        } else if (cJSON_IsNumber(c) && isfinite(c->valuedouble)) {
            vlen = peer_format_number(c->valuedouble, out->numbers[out->count]);
            val = out->numbers[out->count];
            p->type = EVENT_PROP_NUMBER;
        } else if (cJSON_IsBool(c)) {
            val = cJSON_IsTrue(c) ? "true" : "false";
            vlen = strlen(val);
            p->type = EVENT_PROP_BOOL;
        } else {
            continue; /* null, object, array */
        }
        if (out->count == EVENT_PROPS_MAX) break; /* the rest is discarded */
        size_t klen = strlen(key);
        if (klen > EVENT_PROP_KEY_BYTES_MAX || vlen > EVENT_PROP_VALUE_BYTES_MAX)
            return "keys should have at most 300 bytes and values 2000 bytes";
        if (!event_text_valid(key, klen) || !event_text_valid(val, vlen))
            return "keys and values must be valid UTF-8";
        for (uint32_t i = 0; i < out->count; i++)
            if (out->props[i].key.len == klen && memcmp(out->props[i].key.ptr, key, klen) == 0)
                return "duplicate key";
        p->key = (struct event_str){key, klen};
        p->value = (struct event_str){val, vlen};
        out->count++;
    }
    return NULL;
}

/* Appends one prop (a string the caller keeps alive) unless the set is full or has the key. */
static inline void peer_props_add(struct peer_props *pp, const char *key, const char *val,
                                  size_t vlen, uint8_t type)
{
    if (pp->count == EVENT_PROPS_MAX) return;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < pp->count; i++)
        if (pp->props[i].key.len == klen && memcmp(pp->props[i].key.ptr, key, klen) == 0) return;
    pp->props[pp->count++] = (struct event_prop){{key, klen}, {val, vlen}, type};
}

/* A decimal string ("19.99", optional fraction, no sign or exponent) or a finite non-negative
 * number as millionths, rounded half-up. false when not such a value or above 10^12 units. */
static inline bool peer_amount_micros(const cJSON *amount, int64_t *micros)
{
    if (cJSON_IsNumber(amount)) {
        double v = amount->valuedouble;
        if (!isfinite(v) || v < 0 || v > 1e12) return false;
        *micros = (int64_t)floor(v * 1e6 + 0.5);
        return *micros <= EVENT_REVENUE_MICROS_MAX;
    }
    if (!cJSON_IsString(amount) || !amount->valuestring) return false;
    const char *s = amount->valuestring;
    int64_t units = 0, frac = 0;
    size_t i = 0;
    if (!(s[0] >= '0' && s[0] <= '9')) return false;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        units = units * 10 + (s[i] - '0');
        if (units > 1000000000000LL) return false;
    }
    int k = 0, up = 0;
    if (s[i] == '.') {
        i++;
        if (!(s[i] >= '0' && s[i] <= '9')) return false;
        for (; s[i] >= '0' && s[i] <= '9'; i++, k++) {
            if (k < 6)
                frac = frac * 10 + (s[i] - '0');
            else if (k == 6)
                up = s[i] >= '5';
        }
    }
    for (; k < 6; k++)
        frac *= 10;
    if (s[i] != 0) return false;
    *micros = units * 1000000 + frac + up;
    return *micros <= EVENT_REVENUE_MICROS_MAX;
}

static inline bool peer_currency_valid(const char *c)
{
    return c && strlen(c) == 3 && c[0] >= 'A' && c[0] <= 'Z' && c[1] >= 'A' && c[1] <= 'Z' &&
           c[2] >= 'A' && c[2] <= 'Z';
}

/* Copies text into a header value: printable ASCII only (others become '?'), cut to cap - 1. */
static inline void peer_header_value(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    for (; src[n] && n + 1 < cap; n++) {
        unsigned char c = (unsigned char)src[n];
        dst[n] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[n] = 0;
}

/* The first valid IP address of an X-Forwarded-For list, into out (cap >= 64). */
static inline bool peer_xff_first_ip(const char *xff, char *out, size_t cap)
{
    if (!xff) return false;
    while (*xff) {
        while (*xff == ' ' || *xff == '\t' || *xff == ',')
            xff++;
        const char *start = xff;
        while (*xff && *xff != ',')
            xff++;
        const char *end = xff;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        size_t n = (size_t)(end - start);
        if (n == 0 || n >= cap) continue;
        memcpy(out, start, n);
        out[n] = 0;
        uint8_t ip16[16];
        if (cidr_parse_ip(out, ip16) == 0) return true;
    }
    return false;
}

#define PEER_GIF_BYTES 43

/* A transparent 1x1 GIF: the body of every pixel answer. */
static inline const unsigned char *peer_gif(void)
{
    static const unsigned char gif[PEER_GIF_BYTES] = {
        0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
    };
    return gif;
}

#endif
