/*
 * bots: is a User-Agent a bot (crawler, monitor, scanner, headless browser, HTTP tool)?
 *
 * Sources, in order: (1) a server-side SDK's own User-Agent (ua_is_server_sdk: posthog-node,
 * analytics-node, node, node-fetch, axios, undici) is never a bot (API.md §3); (2) an empty
 * User-Agent is a bot; (3) the crawler-user-agents list (embedded, ~1,500 case-sensitive
 * patterns); (4) a generic rule: the word "bot" (not "cubot", a phone brand), "crawler",
 * "spider", "scraper" or "headless", case-insensitively.
 */
#ifndef TALLY_INGEST_BOTS_H
#define TALLY_INGEST_BOTS_H

#include <stdbool.h>
#include <stdint.h>

typedef enum bots_verdict {
    BOTS_HUMAN = 0,     /* not a bot (including server-side SDKs) */
    BOTS_EMPTY = 1,     /* empty or blank User-Agent */
    BOTS_LISTED = 2,    /* matched a crawler-user-agents pattern */
    BOTS_HEURISTIC = 3, /* matched the generic rule */
} bots_verdict;

typedef struct bots_stats {
    uint32_t patterns_literal; /* plain-string patterns (matched by a 4-byte-prefix index) */
    uint32_t patterns_regex;   /* patterns compiled into the PCRE2 alternation */
    uint32_t patterns_skipped; /* patterns PCRE2 refused */
} bots_stats;

/* Builds the matchers from the embedded list. Call once before other threads use bots_*;
 * a second call without bots_shutdown() returns TALLY_EINVAL. Returns 0, TALLY_ECORRUPT
 * (unparsable list), TALLY_ENOMEM. */
int bots_init(void);

/* Frees what bots_init() built. Call when no thread is inside bots_* any more. */
void bots_shutdown(void);

/* Any thread after bots_init(); ua NUL-terminated, NULL counts as empty. Without bots_init()
 * only rules (1), (2) and (4) apply. Only the first UA_INPUT_BYTES_MAX bytes are examined. */
bots_verdict bots_classify(const char *ua);
bool bots_is_bot(const char *ua);

/* Static name of a verdict: "human", "empty", "listed", "heuristic". */
const char *bots_verdict_name(bots_verdict v);

void bots_get_stats(bots_stats *out);

#endif
