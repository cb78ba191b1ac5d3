/*
 * native: the decoder for POST /v1/events (API.md §3.1) into canonical events.
 *
 * BODY. One JSON object, a JSON array of objects, or NDJSON (objects separated by newlines;
 * blank lines are skipped). With Content-Type application/x-ndjson the body must be NDJSON
 * (an array is refused); otherwise the shape is detected: "[" starts an array, "{" an object,
 * and several newline-separated objects are NDJSON. Whitespace inside an object, newlines
 * included, is allowed in every shape; a leading UTF-8 byte order mark is skipped.
 *
 * SAFETY. Before cJSON sees a byte, a pre-scan checks the body size, finds each event's extent,
 * and rejects: nesting deeper than NATIVE_DEPTH_MAX (so 10,000 nested brackets cost one short
 * scan), unterminated strings, raw control characters in strings, invalid escapes, "\u0000"
 * (strings here are NUL-free), more than events_max events. Each event is then parsed on its
 * own (json_arena_parse over exactly its bytes: cJSON's grammar and tree, nodes from the
 * thread's block, core/json_arena.h), validated, copied into the context's arena, and its tree
 * released, so the working set stays one event wide.
 *
 * VALIDATION. A request is all-or-nothing: the first invalid event fails it, with a message
 * naming the field and the constraint, and the event's index (0-based position in the body;
 * -1 for errors of the body as a whole). The server answers
 *     {"error": message, "index": index}
 * with native_error.http_status: 400 for invalid input, 403 for "ip"/"user_agent" sent without
 * a write key, 413 for a body over body_bytes_max or more than events_max events (the count is
 * checked before each event is scanned, so 413 wins over errors in later events), 503 when
 * memory ran out.
 * Field rules (decisions beyond API.md are marked *):
 *   site        string, required, 1..255 B
 *   name        string 1..120 B; default "pageview"
 *   url         string ≤ 2048 B, an absolute http(s) URL (url.h); required when name is
 *               "pageview"
 *   referrer    string ≤ 2048 B, any text (not validated as a URL: browsers send odd ones)
 *   ts          RFC 3339 string (offset or Z, timefmt.h) or integer epoch ms (a JSON number
 *               with no fraction); in [1970, 9999]; without privilege within
 *               [now − 72 h, now + 5 min]; default: now
 *   visitor_id  string ≤ 256 B (* "" means absent)
 *   id          string ≤ 128 B (* "" means absent)
 *   props       object, ≤ 30 keys, key 1..300 B, * keys unique; values: string ≤ 2000 B,
 *               number (finite; stored as its shortest round-trip text, so 1.50 is "1.5" and
 *               1e3 is "1000" *), or bool (stored as "true"/"false"); * a null value drops the
 *               key; objects and arrays are rejected
 *   revenue     {"amount": number or decimal string, "currency": "EUR"}: * both required, no
 *               other keys; amount finite, * not negative (refunds are not revenue), at most
 *               10^12, rounded half-up to millionths (a string: digits with an optional
 *               fraction, "19.99", no sign or exponent); currency three capitals A-Z
 *   interactive bool, default true
 *   ip          string, a literal IPv4 or IPv6 address; * privileged only, else 403
 *   user_agent  string ≤ 2048 B; * privileged only, else 403
 *   * Every field may be null, meaning absent (except site, which is required).
 *   * Unknown and duplicate fields are rejected, naming the field (strict: a misspelt field
 *     is an error, not silently lost data).
 *   * Every string must be valid UTF-8 (cJSON's \u escapes always are; raw bytes are checked).
 * Numbers are read by cJSON as doubles: ts beyond 2^53 and props numbers with more than 17
 * significant digits lose precision (send such values as strings).
 *
 * OUTPUT. native_event = canonical event (source native, received_ms = now, visitor 0: the
 * server hashes it) + the client's visitor_id and ip. The server fills in the visitor hash,
 * geo, flags (bot, host), user_agent from the request when the event has none, and resolves
 * site (a name or one of its ids) to the canonical name. All strings are NUL-terminated copies
 * in the context's arena.
 *
 * OWNERSHIP AND THREADS. A native_ctx belongs to one thread (one per ingest thread, reused
 * across requests). Events returned by native_decode are owned by the context and stay valid
 * until the next native_decode on it or native_ctx_free.
 */
#ifndef TALLY_INGEST_NATIVE_H
#define TALLY_INGEST_NATIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ingest/event.h"

#define NATIVE_DEPTH_MAX 8
#define NATIVE_VISITOR_ID_BYTES_MAX 256
#define NATIVE_TS_PAST_MS (72LL * 3600 * 1000)
#define NATIVE_TS_FUTURE_MS (5LL * 60 * 1000)
#define NATIVE_REVENUE_UNITS_MAX 1000000000000LL
#define NATIVE_ERROR_BYTES 256

struct native_opts {
    int64_t now_ms;        /* server time: received_ms, default ts, the ts window */
    bool privileged;       /* write/admin key: any ts; ip and user_agent honoured */
    bool ndjson;           /* Content-Type was application/x-ndjson */
    uint32_t events_max;   /* most events per request (>= 1) */
    size_t body_bytes_max; /* largest body accepted */
};

struct native_event {
    struct event ev;
    struct event_str visitor_id; /* client-supplied stable id; empty when absent */
    struct event_str ip;         /* privileged only; empty when absent */
};

struct native_error {
    char message[NATIVE_ERROR_BYTES]; /* UTF-8, no control characters */
    int index;                        /* event index, -1 for the body as a whole */
    int http_status;                  /* 400, 403 or 413 */
};

struct native_ctx;

/* A decode context (arena, scratch); NULL on allocation failure. Free with native_ctx_free. */
struct native_ctx *native_ctx_new(void);
void native_ctx_free(struct native_ctx *ctx); /* NULL is a no-op */

/* Decodes body[0..len) (need not be NUL-terminated). On success returns the number of events
 * (>= 1) and sets *events_out to an array of them (owned by ctx, see above). On failure
 * returns TALLY_EINVAL (400/403), TALLY_ETOOBIG (413) or TALLY_ENOMEM, and native_ctx_error
 * describes it. */
int native_decode(struct native_ctx *ctx, const char *body, size_t len,
                  const struct native_opts *opts, struct native_event **events_out);

/* The error of the last failed native_decode on ctx (owned by ctx). */
const struct native_error *native_ctx_error(const struct native_ctx *ctx);

/* True when a Content-Type header value names NDJSON (application/x-ndjson, any case,
 * parameters ignored). ct need not be NUL-terminated. */
bool native_content_type_is_ndjson(const char *ct, size_t len);

#endif
