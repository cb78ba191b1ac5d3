/*
 * timefmt: RFC 3339 timestamps <-> epoch milliseconds (UTC), and the proleptic Gregorian
 * calendar arithmetic behind them.
 *
 * Accepted input (strict RFC 3339 "date-time"):
 *     YYYY-MM-DD ("T"|"t") HH:MM:SS [ "." 1*9DIGIT ] ( "Z" | "z" | ("+"|"-") HH:MM )
 * Year 0000..9999; month 01..12; day within the month (leap years honoured, so 2026-02-29 and
 * 2026-02-30 are rejected); hour 00..23 (24:00 is rejected); minute 00..59; second 00..59 (leap
 * second 60 is rejected: epoch time has no place for it); offset hour 00..23, minute 00..59.
 * Fractional digits beyond milliseconds are truncated toward the earlier instant (floor), so
 * "…:00.9999Z" is …:00.999. No space separator, no missing seconds, no trailing bytes.
 *
 * Every function here is pure (no allocation, no global state) and callable from any thread.
 */
#ifndef TALLY_INGEST_TIMEFMT_H
#define TALLY_INGEST_TIMEFMT_H

#include <stddef.h>
#include <stdint.h>

#define TIMEFMT_DAY_MS 86400000LL
/* "YYYY-MM-DDTHH:MM:SS.mmmZ" plus the terminating NUL. */
#define TIMEFMT_RFC3339_BYTES 25
/* 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z as epoch ms: the formattable range. */
#define TIMEFMT_MS_MIN (-62167219200000LL)
#define TIMEFMT_MS_MAX 253402300799999LL

/* Parses s[0..len) (not NUL-terminated) as an RFC 3339 date-time; on success stores the epoch
 * milliseconds in *ms_out and returns 0, else TALLY_EINVAL (*ms_out untouched). The offset may
 * move the instant outside [TIMEFMT_MS_MIN, TIMEFMT_MS_MAX] by up to a day: callers range-check. */
int timefmt_parse_rfc3339(const char *s, size_t len, int64_t *ms_out);

/* Writes ms as "YYYY-MM-DDTHH:MM:SS.mmmZ" (NUL-terminated, always 24 characters) into out.
 * Returns 0, or TALLY_ERANGE when ms lies outside [TIMEFMT_MS_MIN, TIMEFMT_MS_MAX] (out then
 * holds an empty string). */
int timefmt_format_rfc3339(int64_t ms, char out[TIMEFMT_RFC3339_BYTES]);

/* Days since 1970-01-01 of a civil date (month 1..12, day 1..31; not validated). */
int64_t timefmt_days_from_civil(int64_t year, unsigned month, unsigned day);
/* Inverse of timefmt_days_from_civil. */
void timefmt_civil_from_days(int64_t days, int64_t *year, unsigned *month, unsigned *day);
/* Days in a month of a year (proleptic Gregorian), 0 for a month outside 1..12. */
unsigned timefmt_days_in_month(int64_t year, unsigned month);
/* floor(ms / TIMEFMT_DAY_MS): the UTC day number of an instant, also for negative ms. */
int64_t timefmt_day_of_ms(int64_t ms);

/* Wall-clock time (CLOCK_REALTIME) in epoch milliseconds. */
int64_t timefmt_now_ms(void);
/* Milliseconds of CLOCK_MONOTONIC (for deadlines and intervals; never jumps). Any thread. */
int64_t timefmt_mono_ms(void);

#endif
