#include "ingest/timefmt.h"

#include <stdbool.h>
#include <time.h>

#include "tally/error.h"

/* Civil-date arithmetic after the well-known era/day-of-era decomposition (400-year eras of
 * 146097 days, March-based years so that the leap day is the last day of a year). */
int64_t timefmt_days_from_civil(int64_t year, unsigned month, unsigned day)
{
    int64_t y = year - (month <= 2);
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;                                      /* [0, 399] */
    int64_t mp = month > 2 ? (int64_t)month - 3 : (int64_t)month + 9; /* [0, 11] */
    int64_t doy = (153 * mp + 2) / 5 + (int64_t)day - 1;              /* [0, 365] */
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;              /* [0, 146096] */
    return era * 146097 + doe - 719468;
}

void timefmt_civil_from_days(int64_t days, int64_t *year, unsigned *month, unsigned *day)
{
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    unsigned d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    unsigned m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
    *year = yoe + era * 400 + (m <= 2);
    *month = m;
    *day = d;
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

unsigned timefmt_days_in_month(int64_t year, unsigned month)
{
    static const unsigned char days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month < 1 || month > 12) return 0;
    if (month == 2 && is_leap(year)) return 29;
    return days[month - 1];
}

int64_t timefmt_day_of_ms(int64_t ms)
{
    int64_t d = ms / TIMEFMT_DAY_MS;
    if (ms % TIMEFMT_DAY_MS < 0) d--;
    return d;
}

/* Reads exactly n decimal digits at s; returns -1 if any is not a digit. */
static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        unsigned c = (unsigned char)s[i] - '0';
        if (c > 9) return -1;
        v = v * 10 + (int)c;
    }
    return v;
}

int timefmt_parse_rfc3339(const char *s, size_t len, int64_t *ms_out)
{
    /* Fixed part: "YYYY-MM-DDTHH:MM:SS" is 19 bytes, then at least "Z". */
    if (len < 20) return TALLY_EINVAL;
    if (s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
        s[16] != ':')
        return TALLY_EINVAL;
    int year = digits(s, 4), mon = digits(s + 5, 2), day = digits(s + 8, 2);
    int hour = digits(s + 11, 2), min = digits(s + 14, 2), sec = digits(s + 17, 2);
    if (year < 0 || mon < 1 || mon > 12 || day < 1 || hour < 0 || hour > 23 || min < 0 ||
        min > 59 || sec < 0 || sec > 59)
        return TALLY_EINVAL;
    if ((unsigned)day > timefmt_days_in_month(year, (unsigned)mon)) return TALLY_EINVAL;

    size_t i = 19;
    int ms = 0;
    if (s[i] == '.') {
        i++;
        size_t start = i;
        while (i < len && (unsigned)((unsigned char)s[i] - '0') <= 9) {
            if (i - start < 3) ms = ms * 10 + (s[i] - '0');
            i++;
        }
        size_t n = i - start;
        if (n == 0 || n > 9) return TALLY_EINVAL;
        for (size_t k = n; k < 3; k++)
            ms *= 10;
    }
    if (i >= len) return TALLY_EINVAL;

    int offset_min = 0;
    if (s[i] == 'Z' || s[i] == 'z') {
        i++;
    } else if (s[i] == '+' || s[i] == '-') {
        if (len - i != 6 || s[i + 3] != ':') return TALLY_EINVAL;
        int oh = digits(s + i + 1, 2), om = digits(s + i + 4, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59) return TALLY_EINVAL;
        offset_min = oh * 60 + om;
        if (s[i] == '-') offset_min = -offset_min;
        i += 6;
    } else {
        return TALLY_EINVAL;
    }
    if (i != len) return TALLY_EINVAL;

    int64_t days = timefmt_days_from_civil(year, (unsigned)mon, (unsigned)day);
    int64_t secs = days * 86400 + hour * 3600 + min * 60 + sec - (int64_t)offset_min * 60;
    *ms_out = secs * 1000 + ms;
    return TALLY_OK;
}

/* Writes v as exactly n decimal digits (v < 10^n). */
static void put_digits(char *out, unsigned v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        out[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

int timefmt_format_rfc3339(int64_t ms, char out[TIMEFMT_RFC3339_BYTES])
{
    out[0] = 0;
    if (ms < TIMEFMT_MS_MIN || ms > TIMEFMT_MS_MAX) return TALLY_ERANGE;
    int64_t days = timefmt_day_of_ms(ms);
    int64_t rem = ms - days * TIMEFMT_DAY_MS; /* [0, day) */
    int64_t year;
    unsigned mon, day;
    timefmt_civil_from_days(days, &year, &mon, &day);
    unsigned msec = (unsigned)(rem % 1000), secs = (unsigned)(rem / 1000);
    put_digits(out, (unsigned)year, 4);
    out[4] = '-';
    put_digits(out + 5, mon, 2);
    out[7] = '-';
    put_digits(out + 8, day, 2);
    out[10] = 'T';
    put_digits(out + 11, secs / 3600, 2);
    out[13] = ':';
    put_digits(out + 14, secs / 60 % 60, 2);
    out[16] = ':';
    put_digits(out + 17, secs % 60, 2);
    out[19] = '.';
    put_digits(out + 20, msec, 3);
    out[23] = 'Z';
    out[24] = 0;
    return TALLY_OK;
}

int64_t timefmt_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t timefmt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
