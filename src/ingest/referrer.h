/*
 * referrer: referrer URL + UTM tags -> source, medium, channel (Plausible's conventions).
 *
 * Source: a tagged source (utm_source, else the page URL's `ref`/`source` parameter) wins over
 * the Referer, as in Plausible; a known name or alias is mapped to its canonical spelling
 * ("GOOGLE" -> "Google", "ig" -> "Instagram"), anything else is kept as given. Otherwise a
 * Referer whose host is known (referer-parser's referers.yml, embedded, plus the supplement in
 * referrer.c for current sites) gives that source's name ("Google", "Twitter" for t.co and x.com,
 * "Facebook", "Hacker News", "ChatGPT", ...); an unknown host gives the host without "www.".
 * A Referer on the page's own host (after removing "www."), or on localhost, is a self-referral:
 * it gives no source (internal navigation is not acquisition). No source: "Direct / None".
 *
 * Channel: Plausible's grouping (itself GA4's default channel group plus an "AI Assistants"
 * channel): Cross-network, Paid Shopping, Paid Search, Paid Social, Paid Video, Display,
 * Paid Other, Organic Shopping, Organic Social, Organic Video, AI Assistants, Organic Search,
 * Email, Affiliates, Audio, SMS, Mobile Push Notifications, Referral, Direct — the first rule
 * that holds, from the source's category and utm_medium/utm_source/utm_campaign/click id.
 */
#ifndef TALLY_INGEST_REFERRER_H
#define TALLY_INGEST_REFERRER_H

#include <stdbool.h>
#include <stdint.h>

#define REFERRER_SOURCE_MAX 128       /* bytes incl. NUL; longer sources are truncated */
#define REFERRER_URL_MAX 256          /* bytes incl. NUL of the normalised referrer */
#define REFERRER_INPUT_BYTES_MAX 2048 /* longer referrers are treated as their first 2 KiB */
#define REFERRER_DIRECT "Direct / None"

/* Tags from the landing page's URL; any may be NULL (absent). Borrowed for the call only. */
typedef struct referrer_tags {
    const char *utm_source, *utm_medium, *utm_campaign;
    const char *ref;      /* the `ref` (or `source`) query parameter, used when no utm_source */
    const char *click_id; /* name of an ad click-id parameter present: "gclid", "msclkid", ... */
} referrer_tags;

/* Plain value. Strings are NUL-terminated UTF-8; medium and channel are static strings. */
typedef struct referrer_info {
    char source[REFERRER_SOURCE_MAX]; /* "Google", "blog.example", "Direct / None" */
    char referrer[REFERRER_URL_MAX];  /* host (no "www.") + path without trailing '/', or "" */
    const char *medium;  /* category of a known source: "search", "social", "email", "video",
                            "shopping", "ai", or "" */
    const char *channel; /* "Organic Search", "Referral", "Direct", ... never NULL */
    bool direct;         /* no source at all (source is "Direct / None") */
    bool self_referral;  /* the Referer was on the page's own host (and was ignored) */
} referrer_info;

typedef struct referrer_stats {
    uint32_t hosts;   /* host (or host/path) keys known */
    uint32_t sources; /* distinct source names (plus aliases) */
} referrer_stats;

/* Loads the embedded referers.yml and the supplement. Call once before other threads use
 * referrer_classify; a second call without referrer_shutdown() returns TALLY_EINVAL.
 * Returns 0, TALLY_ECORRUPT (unparsable data), TALLY_ENOMEM. */
int referrer_init(void);

/* Frees what referrer_init() built. Call when no thread is inside referrer_classify any more. */
void referrer_shutdown(void);

/*
 * Classifies one visit's acquisition into *out (caller-owned). ref_url: the Referer (NULL or ""
 * for none); page_host: the landing page's host (NULL: no self-referral check); tags may be
 * NULL. Any thread, concurrently, after referrer_init(); without it no host or name is known
 * (sources are hostnames and tags as given).
 */
void referrer_classify(const char *ref_url, const char *page_host, const referrer_tags *tags,
                       referrer_info *out);

void referrer_get_stats(referrer_stats *out);

#endif
