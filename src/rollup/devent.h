/*
 * devent: a derived event, the plain record both consumers (raw store, sessions/rollups) take.
 *
 * A log record holds what ingest knew (event.h); a devent adds what is derived from it
 * (hostname, path and UTM from the URL; source, referrer and channel from the referrer and the
 * tags; browser, OS and device from the User-Agent) and re-judges the ingest verdicts (bot,
 * host not allowed). derive.h makes one from a log record; tests build them by hand.
 *
 * Strings are (pointer, length) pairs that are never NULL ("" with length 0 when absent) and
 * hold no NUL. A devent owns nothing: its strings point into whatever the producer keeps alive
 * (the log record and a derive_scratch) until the consumer has taken the event.
 */
#ifndef TALLY_ROLLUP_DEVENT_H
#define TALLY_ROLLUP_DEVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The string fields, in the order the raw store encodes them. */
enum devent_field {
    DE_NAME = 0,     /* event name ("pageview" for pageviews) */
    DE_HOSTNAME,     /* of the page URL */
    DE_PATH,         /* of the page URL ("" without a URL) */
    DE_REFERRER,     /* normalized referrer (host + path), "" for none or self-referral */
    DE_SOURCE,       /* "Google", "Direct / None", ... */
    DE_CHANNEL,      /* "Organic Search", "Direct", ... */
    DE_UTM_SOURCE,
    DE_UTM_MEDIUM,
    DE_UTM_CAMPAIGN,
    DE_UTM_CONTENT,
    DE_UTM_TERM,
    DE_DEVICE,       /* "Desktop", "Mobile", "Tablet", "" */
    DE_BROWSER,
    DE_BROWSER_VERSION,
    DE_OS,
    DE_OS_VERSION,
    DE_COUNTRY,
    DE_REGION,
    DE_CITY,
    DE_FIELD_COUNT
};

#define DE_F_BOT 0x1u              /* left out of statistics */
#define DE_F_HOST_NOT_ALLOWED 0x2u /* left out of statistics */
#define DE_F_EXCLUDED (DE_F_BOT | DE_F_HOST_NOT_ALLOWED)

#define DE_PROPS_MAX 30

struct devent_str {
    const char *ptr;
    uint32_t len;
};

struct devent_prop {
    struct devent_str key, value;
};

struct devent {
    uint64_t offset;      /* log offset: the event's identity and its tie-breaker */
    int64_t ts_ms;        /* event time */
    int64_t received_ms;  /* arrival at the server */
    uint64_t visitor;     /* visitor hash */
    struct devent_str site;
    struct devent_str str[DE_FIELD_COUNT];
    struct devent_str client_id; /* idempotency key, "" for none */
    bool pageview;
    bool interactive;
    uint32_t flags; /* DE_F_* */
    uint32_t props_count;
    const struct devent_prop *props;
    bool has_revenue;
    int64_t revenue_micros;
    char currency[4];
};

/* Short name of a field ("name", "hostname", "path", ...). */
const char *devent_field_name(enum devent_field f);

#endif
