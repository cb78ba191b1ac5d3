/*
 * tz: IANA time zones for bucketing: UTC instant -> the start of its local minute, hour and day
 * (as a UTC instant) and the local label of a bucket. Built on glib's GTimeZone (tzdata).
 *
 * BUCKET RULE. A bucket is a local wall-clock label: the minute "2026-10-25 02:15", the hour
 * "2026-10-25 02:00", the day "2026-10-25". An instant belongs to the bucket of its local wall
 * time; the bucket's key is the FIRST instant whose local time carries that label. So:
 *  - spring forward (Europe/Berlin 2026-03-29 02:00 -> 03:00): the hour 02 does not exist; the day
 *    has 23 hours; no bucket is ever created for a label that does not exist;
 *  - fall back (2026-10-25 03:00 -> 02:00): the hour 02 happens twice and is ONE bucket of two
 *    real hours (key: the first 02:00); the day has 25 hours. Minute buckets of the repeated hour
 *    are likewise one bucket per label (as ClickHouse's toStartOfMinute(toTimeZone(...))).
 *  - half-hour and 45-minute zones (Asia/Kolkata +05:30, Asia/Kathmandu +05:45): buckets start
 *    at local :00, i.e. at UTC :30 / :15.
 *  - a day whose midnight does not exist (a DST change at 00:00) starts at the first instant of
 *    that date (01:00); a skipped date (Pacific/Apia 2011-12-30) has no bucket.
 *
 * HOW. Each zone keeps, per UTC year, a table of its offset changes, found by probing GTimeZone
 * every TZ_PROBE_STEP_S seconds and bisecting each change to the second (two changes closer than
 * the probe step would be missed; no zone has those). Bucketing an instant is then a binary
 * search in a few entries plus arithmetic; near an offset change a slower exact path considers
 * every constant-offset segment around the instant. Year tables are built lazily and published
 * with release/acquire atomics, so readers take no lock.
 *
 * BOUNDS. Zones are cached by name for the life of the process (until tz_shutdown); only names
 * GTimeZone knows are cached, so the cache is bounded by the tz database (~600 names) and by
 * TZ_ZONES_MAX. Instants are epoch ms in [0, TIMEFMT_MS_MAX] (1970..9999); others are clamped.
 *
 * THREADS. Every function may be called from any thread, concurrently. A returned tz_zone is
 * owned by the cache and valid until tz_shutdown (call it when no thread uses zones any more).
 */
#ifndef TALLY_ROLLUP_TZ_H
#define TALLY_ROLLUP_TZ_H

#include <stddef.h>
#include <stdint.h>

#define TZ_ZONES_MAX 1024
#define TZ_NAME_BYTES_MAX 64
#define TZ_PROBE_STEP_S 3600
#define TZ_LABEL_BYTES 20 /* "YYYY-MM-DD HH:MM:SS" + NUL */

typedef struct tz_zone tz_zone;

enum tz_gran { TZ_MINUTE = 0, TZ_HOUR = 1, TZ_DAY = 2 };
#define TZ_GRAN_COUNT 3

/* The zone named `name` (an IANA identifier such as "Europe/Berlin", or "UTC"). Returns 0 with
 * *out set, TALLY_ENOENT when the name is unknown (or empty/too long), TALLY_EFULL when
 * TZ_ZONES_MAX zones are cached, TALLY_ENOMEM. */
int tz_get(const char *name, const tz_zone **out);

/* The UTC zone (never fails). */
const tz_zone *tz_utc(void);

/* The zone's identifier, owned by the zone. */
const char *tz_name(const tz_zone *z);

/* Offset of local time from UTC at instant ts_ms, in seconds (+3600 for CET). */
int32_t tz_offset_s(const tz_zone *z, int64_t ts_ms);

/* Key (first UTC instant, ms) of the bucket of granularity g holding ts_ms. */
int64_t tz_bucket_start_ms(const tz_zone *z, int64_t ts_ms, enum tz_gran g);

/* All three bucket keys at once: out[TZ_MINUTE], out[TZ_HOUR], out[TZ_DAY]. */
void tz_buckets_ms(const tz_zone *z, int64_t ts_ms, int64_t out[TZ_GRAN_COUNT]);

/* Label of the bucket keyed start_ms: "YYYY-MM-DD" (day), "YYYY-MM-DD HH:00:00" (hour),
 * "YYYY-MM-DD HH:MM:00" (minute), written NUL-terminated into buf (>= TZ_LABEL_BYTES).
 * Returns the label's length. */
size_t tz_label(const tz_zone *z, int64_t start_ms, enum tz_gran g, char *buf, size_t cap);

/* First UTC instant (ms) whose local time is at or after local midnight of the date y-m-d; for
 * an ordinary day that is the key of its day bucket. For ranges: [day_start(D), day_start(D+1)). */
int64_t tz_day_start_ms(const tz_zone *z, int64_t y, unsigned m, unsigned d);

/* Local civil date of an instant. */
void tz_local_date(const tz_zone *z, int64_t ts_ms, int64_t *y, unsigned *m, unsigned *d);

/* Frees every cached zone. No thread may use a zone afterwards; tz_get works again after it. */
void tz_shutdown(void);

#endif
