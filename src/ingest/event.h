/*
 * event: the canonical event record every ingest format decodes into, its validity rule, and
 * its binary encoding in the log.
 *
 * WHAT IS STORED
 * The log keeps the inputs that are safe to keep and what only ingest can know: site name,
 * event name, URL, referrer, raw User-Agent (so a rebuild can re-classify), event time, arrival
 * time, the visitor hash, geo (country/region/city looked up by the server), props, revenue,
 * the interactive flag, the client's idempotency id, the wire format it came in, ingest flags
 * (bot, host not allowed: judged at ingest, re-judged by a rebuild) and optional client hints
 * (screen size, language). Never an IP address. Everything derived (hostname, path, UTM,
 * source/channel, browser/OS/device) is recomputed from these inputs by derivation functions,
 * at ingest and again at rebuild, so it is not stored.
 *
 * VALIDITY (event_validate; enforced by event_encode and event_decode alike)
 *  1. Every string is valid UTF-8 without NUL bytes and within its EVENT_*_BYTES_MAX.
 *  2. site and name are non-empty.
 *  3. ts_ms and received_ms lie in [0, EVENT_TS_MS_MAX] (1970 .. end of 9999).
 *  4. source < EVENT_SOURCE_COUNT; flags only holds EVENT_F_* bits.
 *  5. country is empty or two ASCII capitals; region is empty or printable ASCII; language is
 *     empty or ASCII letters, digits and '-'.
 *  6. At most EVENT_PROPS_MAX props; keys non-empty and distinct; a STRING value is any text,
 *     a NUMBER value is a JSON number (at most EVENT_PROP_NUMBER_BYTES_MAX bytes), a BOOL value
 *     is "true" or "false".
 *  7. Revenue, when present: 0 <= amount_micros <= EVENT_REVENUE_MICROS_MAX and a currency of
 *     three ASCII capitals.
 *
 * BYTE LAYOUT, version 1 (one record; the log frames and checksums records, so a record has
 * neither its own length nor a checksum: it ends exactly where its input ends)
 *     u8      version = 1
 *     u8      source (enum event_source)
 *     varint  bits: 0 BOT, 1 HOST_NOT_ALLOWED, 2 NON_INTERACTIVE, 3 HAS_GEO, 4 HAS_REVENUE,
 *             5 HAS_PROPS, 6 HAS_HINTS; any other bit set is corruption
 *     svarint ts_ms
 *     svarint received_ms - ts_ms
 *     8 bytes visitor hash, little-endian
 *     str     site, name, url, referrer, user_agent, client_id
 *     [GEO]     str country, region, city                        (at least one non-empty)
 *     [REVENUE] svarint amount_micros, 3 bytes currency
 *     [PROPS]   varint n (1..30), then n x (u8 type, str key, str value)
 *     [HINTS]   varint screen_width_px, varint screen_height_px, str language (not all zero)
 * varint = unsigned LEB128, at most 10 bytes, minimal (no redundant trailing 0x80/0x00 groups);
 * svarint = zigzag-mapped varint; str = varint byte length, then the bytes (no NUL).
 * The encoding is canonical: one event has exactly one encoding, and any byte string that
 * decodes re-encodes to itself (the fuzz target checks this). A later format bumps the version
 * byte; this decoder rejects any version but 1.
 *
 * STRINGS are (pointer, length) pairs, not NUL-terminated in general. An event never owns its
 * strings: they point into whatever the producer decoded (a request body, an arena, a log
 * record). event_decode points them into the record bytes, so a decoded event is valid only
 * while the record bytes and the scratch it was given live.
 *
 * THREADS: every function here is reentrant; an arena is used by one thread at a time.
 */
#ifndef TALLY_INGEST_EVENT_H
#define TALLY_INGEST_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EVENT_FORMAT_VERSION 1

#define EVENT_SITE_BYTES_MAX 255
#define EVENT_NAME_BYTES_MAX 120
#define EVENT_URL_BYTES_MAX 2048
#define EVENT_REFERRER_BYTES_MAX 2048
#define EVENT_USER_AGENT_BYTES_MAX 2048
#define EVENT_CLIENT_ID_BYTES_MAX 128
#define EVENT_COUNTRY_BYTES_MAX 2
#define EVENT_REGION_BYTES_MAX 16
#define EVENT_CITY_BYTES_MAX 128
#define EVENT_LANGUAGE_BYTES_MAX 35
#define EVENT_PROPS_MAX 30
#define EVENT_PROP_KEY_BYTES_MAX 300
#define EVENT_PROP_VALUE_BYTES_MAX 2000
#define EVENT_PROP_NUMBER_BYTES_MAX 32
#define EVENT_TS_MS_MAX 253402300799999LL              /* 9999-12-31T23:59:59.999Z */
#define EVENT_REVENUE_MICROS_MAX 1000000000000000000LL /* 10^12 currency units */
#define EVENT_DEFAULT_NAME "pageview"

/* Upper bound of one encoded record: header, 12 strings at their maxima, revenue, props. */
#define EVENT_ENCODED_BYTES_MAX                                                                    \
    (64 +                                                                                          \
     (EVENT_SITE_BYTES_MAX + EVENT_NAME_BYTES_MAX + EVENT_URL_BYTES_MAX +                          \
      EVENT_REFERRER_BYTES_MAX + EVENT_USER_AGENT_BYTES_MAX + EVENT_CLIENT_ID_BYTES_MAX +          \
      EVENT_COUNTRY_BYTES_MAX + EVENT_REGION_BYTES_MAX + EVENT_CITY_BYTES_MAX +                    \
      EVENT_LANGUAGE_BYTES_MAX + 10 * 3) +                                                         \
     EVENT_PROPS_MAX * (1 + EVENT_PROP_KEY_BYTES_MAX + EVENT_PROP_VALUE_BYTES_MAX + 2 * 3))

enum event_source {
    EVENT_SOURCE_NATIVE = 0,
    EVENT_SOURCE_PLAUSIBLE = 1,
    EVENT_SOURCE_GA4 = 2,
    EVENT_SOURCE_SEGMENT = 3,
    EVENT_SOURCE_UMAMI = 4,
    EVENT_SOURCE_POSTHOG = 5,
    EVENT_SOURCE_GOATCOUNTER = 6,
    EVENT_SOURCE_MATOMO = 7,
    EVENT_SOURCE_PIXEL = 8,
    EVENT_SOURCE_COUNT = 9
};

/* Ingest verdicts, kept so that statistics leave the event out and a rebuild can re-judge. */
#define EVENT_F_BOT 0x1u
#define EVENT_F_HOST_NOT_ALLOWED 0x2u
#define EVENT_F_ALL (EVENT_F_BOT | EVENT_F_HOST_NOT_ALLOWED)

struct event_str {
    const char *ptr; /* may be NULL when len == 0; not NUL-terminated in general */
    size_t len;
};

enum event_prop_type { EVENT_PROP_STRING = 0, EVENT_PROP_NUMBER = 1, EVENT_PROP_BOOL = 2 };

struct event_prop {
    struct event_str key;
    struct event_str value; /* a number or bool as its JSON text: "19.5", "true" */
    uint8_t type;           /* enum event_prop_type */
};

struct event {
    uint8_t source;      /* enum event_source */
    uint32_t flags;      /* EVENT_F_* */
    bool interactive;    /* false: does not end a bounce */
    int64_t ts_ms;       /* event time, epoch ms */
    int64_t received_ms; /* arrival time at the server, epoch ms */
    uint64_t visitor;    /* visitor hash (visitor.h) */
    struct event_str site, name, url, referrer, user_agent, client_id;
    struct event_str country, region, city;     /* geo: ISO 3166-1 alpha-2, subdivision, city */
    uint16_t screen_width_px, screen_height_px; /* 0: unknown */
    struct event_str language;                  /* e.g. "en-US"; empty: unknown */
    bool has_revenue;
    int64_t revenue_micros; /* amount in millionths of the currency unit */
    char currency[4];       /* three capitals and a NUL */
    const struct event_prop *props;
    uint32_t props_count;
};

/* Storage event_decode points props into. One per decoded event that must stay alive. */
struct event_scratch {
    struct event_prop props[EVENT_PROPS_MAX];
};

/* Sets *ev to the defaults: everything empty/zero, source native, name "pageview" (a static
 * string), interactive. */
void event_init(struct event *ev);

/* 0 when ev satisfies the validity rule above, else TALLY_EINVAL. */
int event_validate(const struct event *ev);

/* Encodes a valid ev into buf[0..cap). Returns the number of bytes written (> 0),
 * TALLY_EINVAL when ev is not valid, TALLY_ETOOBIG when cap is too small (a cap of
 * EVENT_ENCODED_BYTES_MAX always suffices). */
int event_encode(const struct event *ev, uint8_t *buf, size_t cap);

/* Decodes one record of exactly len bytes into *out. Returns 0, or TALLY_ECORRUPT for anything
 * malformed (never reads outside bytes[0..len)). out's strings point into bytes and out->props
 * into scratch: both must outlive every use of *out. On error *out is unspecified. */
int event_decode(const uint8_t *bytes, size_t len, struct event *out,
                 struct event_scratch *scratch);

/* True when s[0..len) is valid UTF-8 (no overlong forms, surrogates or code points above
 * U+10FFFF) and holds no NUL byte. */
bool event_text_valid(const char *s, size_t len);

/* The longest prefix of s[0..len) that is at most max bytes and does not split a UTF-8
 * sequence (s must be valid UTF-8). */
size_t event_text_prefix(const char *s, size_t len, size_t max);

/* True when s[0..len) is a JSON number (RFC 8259 grammar). */
bool event_json_number_valid(const char *s, size_t len);

/* Name of a source ("native", "plausible", ...), "unknown" when out of range. */
const char *event_source_name(unsigned source);

/* True when ev->name is "pageview". */
bool event_is_pageview(const struct event *ev);

/*
 * event_arena: bump allocation for decoders, so a request's events, strings and props cost a
 * few mallocs at most and are freed at once. Memory returned stays valid until the next
 * event_arena_reset or event_arena_free. Reset keeps up to retain_bytes of chunks for reuse,
 * so a steady stream of similar requests allocates nothing. Growth is bounded by what the
 * caller puts in (decoders bound it by the request body size). One thread at a time.
 */
struct event_arena;

/* chunk_bytes: size of each chunk (larger requests get a chunk of their own); retain_bytes:
 * chunk bytes kept across resets. NULL on allocation failure. */
struct event_arena *event_arena_new(size_t chunk_bytes, size_t retain_bytes);
void event_arena_free(struct event_arena *a); /* NULL is a no-op */
void event_arena_reset(struct event_arena *a);
/* n bytes aligned to 16; NULL on allocation failure. n == 0 gives a valid unique pointer. */
void *event_arena_alloc(struct event_arena *a, size_t n);
/* Copies s[0..len) and a NUL; NULL on allocation failure. */
char *event_arena_strdup(struct event_arena *a, const char *s, size_t len);
/* Bytes handed out since the last reset (for limits and tests). */
size_t event_arena_used(const struct event_arena *a);

#endif
