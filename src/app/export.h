/*
 * export: GET /api/v1/export: a site's raw events as NDJSON (re-importable through
 * POST /v1/events) or CSV (every stored field), streamed with bounded memory.
 *
 * WHAT IS EXPORTED. The counted events (query.h SEMANTICS: not bot, not host-not-allowed, not
 * duplicate, not "engagement") of the date range that are in scope of the filters (an event
 * filter selects events, a visit filter the events of matching visits), in store order (by
 * UTC hour, then by visitor). NDJSON lines hold only fields of the native format (API.md §3.1),
 * so a line posted back with a write key is accepted as is:
 *   site        the site's name
 *   name        the event name
 *   url         "https://" + hostname + path, plus the stored UTM parameters, plus ref=SOURCE
 *               when the stored source would not otherwise be derived again (a source that came
 *               from a ref/source parameter). The raw store keeps hostname, path and UTM values,
 *               not the original query string, scheme or fragment. Absent for events without
 *               a URL.
 *   referrer    "https://" + the normalised referrer (host + path), absent when none
 *   ts          RFC 3339 with milliseconds, UTC
 *   visitor_id  "v" + 16 hex digits of the stored visitor hash: the same visitor gets the same
 *               id, so visits and visitor counts survive an import. The hash is keyed (for
 *               anonymous visitors with a salt that rotates daily): it reveals no IP address
 *               nor User-Agent, and no IP is stored anywhere to export.
 *   id          "x" + the log offset (hex): importing the same file twice within 24 h counts
 *               once (API.md §3 idempotency)
 *   props       custom properties (values as stored: strings)
 *   revenue     {"amount": "12.34", "currency": "EUR"}
 *   interactive false for non-interactive events (absent otherwise)
 * Not in NDJSON (the native format has no field for them; they come from the User-Agent and
 * the IP at ingest): device, browser, OS and versions, country, region, city. CSV has one
 * column per native field above (props as a JSON object, revenue as amount and currency)
 * plus every derived field (hostname, path, source, channel, UTM, device, browser, OS,
 * geography).
 *
 * MEMORY. The range is processed in time slices (one day, widened over empty stretches,
 * narrowed when a slice is large); a filtered slice first collects the offsets of its events
 * in scope (a scan rebuilding visits, under the query budget), then the slice is read again
 * and written through. Strings come from a bounded cache of the dictionary. So memory is
 * bounded by one slice, whatever the range.
 *
 * THREADS. Runs on the caller's thread (a query worker), never an event loop.
 */
#ifndef TALLY_APP_EXPORT_H
#define TALLY_APP_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "query/query.h"

struct store;

enum export_format { EXPORT_NDJSON = 0, EXPORT_CSV };

#define EXPORT_SLICE_MS (24LL * 3600 * 1000)
#define EXPORT_OUT_BYTES (64u << 10)           /* output batch handed to write_fn */
#define EXPORT_CACHE_BYTES_MAX (16u << 20)      /* dictionary string cache, cleared beyond */
#define EXPORT_SLICE_EVENTS_HIGH 2000000u       /* a slice above this halves the next one */

/* Receives output in order; returns 0 to go on, anything else stops the export (returned). */
typedef int (*export_write_fn)(void *arg, const char *data, size_t len);

/* Exports site_id's events of q->range in scope of q's filters (q->site names them). b: the
 * memory budget and a deadline per slice (deadline_ms is ignored; slice_timeout_ms is used
 * per slice scan, 0: none). 0, write_fn's value, TALLY_ETIMEDOUT, TALLY_ETOOBIG, TALLY_EIO,
 * TALLY_ECORRUPT, TALLY_ENOMEM. */
int export_run(struct store *s, uint32_t site_id, const struct query *q, enum export_format fmt,
               size_t memory_bytes_max, int64_t slice_timeout_ms, export_write_fn write_fn,
               void *arg);

#endif
