/*
 * ua: User-Agent -> browser, browser version, OS, OS version, device class.
 *
 * Rules come from uap-core's regexes.yaml (embedded, see dataset.h), compiled once by ua_init()
 * with PCRE2 (JIT). Results are cached in a bounded, sharded table keyed by the whole
 * User-Agent, because real traffic has few distinct User-Agents and the uncached path runs up
 * to ~1,200 regexes. A server-side SDK's own User-Agent (posthog-node/..., analytics-node...,
 * node, node-fetch, axios, undici) is not a visitor's: it gets an unknown device and empty
 * browser/OS, and is never a bot (API.md §3). The bot verdict (bots.h) rides along in the
 * cache, so one ua_classify() per event answers both questions.
 *
 * Names follow the dashboard conventions (Plausible's where they differ from uap-core):
 * "Chrome Mobile" -> "Chrome", "Mobile Safari" -> "Safari", "Edge" -> "Microsoft Edge",
 * "Mac OS X" -> "Mac", "Linux" -> "GNU/Linux", ...; uap-core's "Other" becomes "".
 */
#ifndef TALLY_INGEST_UA_H
#define TALLY_INGEST_UA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ingest/bots.h"

#define UA_NAME_MAX 48          /* bytes incl. NUL of browser/os names (longer ones truncated) */
#define UA_VERSION_MAX 24       /* bytes incl. NUL of version strings */
#define UA_INPUT_BYTES_MAX 1024 /* longer User-Agents are classified on their first 1 KiB */
#define UA_CACHE_ENTRIES_DEFAULT 16384 /* ~350 B each with its key: ~6 MB */

typedef enum ua_device {
    UA_DEVICE_UNKNOWN = 0, /* no device (server SDK, tools, TVs, consoles, unknown) */
    UA_DEVICE_DESKTOP = 1,
    UA_DEVICE_MOBILE = 2,
    UA_DEVICE_TABLET = 3,
    UA_DEVICE_BOT = 4, /* uap-core's "Spider" device; bot policy itself lives in bots.h */
} ua_device;

/* Plain value: copy it freely. Strings are NUL-terminated valid UTF-8, "" when unknown. */
typedef struct ua_info {
    char browser[UA_NAME_MAX];            /* "Chrome", "Firefox", "Safari", "Microsoft Edge" */
    char browser_version[UA_VERSION_MAX]; /* "120.0" (major.minor), "" if none */
    char os[UA_NAME_MAX];                 /* "Windows", "Mac", "iOS", "Android", "GNU/Linux" */
    char os_version[UA_VERSION_MAX];      /* "10", "10.15", "17.4" */
    ua_device device;
    bool server_sdk;  /* the User-Agent is a server-side SDK or HTTP library, not a visitor */
    bots_verdict bot; /* bots_classify() of the same string, cached with the rest (BOTS_HUMAN
                         for server SDKs); without bots_init() only bots.h's cheap rules */
} ua_info;

typedef struct ua_stats {
    uint64_t cache_hits, cache_misses, cache_evictions;
    uint64_t cache_entries; /* entries currently held (<= cache_capacity) */
    uint64_t cache_capacity;
    uint32_t rules_loaded;       /* regexes compiled */
    uint32_t rules_skipped;      /* regexes PCRE2 refused (skipped, counted, logged once) */
    uint32_t rules_jit;          /* of rules_loaded, compiled by the JIT */
    uint32_t rules_filtered;     /* of rules_loaded, skipped unless one of their literals occurs */
    uint32_t prefilter_literals; /* distinct literals the prefilter looks for */
} ua_stats;

/*
 * Compiles the embedded rules and creates the cache (cache_entries: 0 = no cache, else at least
 * 16 so every shard holds one). Call once, before other threads use ua_classify; a second call
 * without ua_shutdown() returns TALLY_EINVAL. Takes ~30 ms. Returns 0, TALLY_ECORRUPT
 * (unreadable rules), TALLY_ENOMEM.
 */
int ua_init(size_t cache_entries);

/* Frees everything ua_init() made. Call when no thread is inside ua_classify any more. */
void ua_shutdown(void);

/*
 * Classifies ua (NUL-terminated; NULL is treated as "") into *out, which the caller owns. Any
 * thread, concurrently, after ua_init(); without ua_init() everything comes back unknown.
 */
void ua_classify(const char *ua, ua_info *out);

/* As ua_classify, bypassing the cache (benchmarks and tests). */
void ua_classify_uncached(const char *ua, ua_info *out);

/* Turns the literal prefilter (see ua.c) on (the default) or off. Results must not change;
 * tests compare both. Tests and benchmarks only: call while no other thread classifies. */
void ua_set_prefilter(bool on);

/* True for server-side SDK / HTTP library User-Agents (see above). Any thread, no init needed. */
bool ua_is_server_sdk(const char *ua);

/* Static name of a device class: "Desktop", "Mobile", "Tablet", "Bot", or "" for unknown. */
const char *ua_device_name(ua_device device);

/* Counters (approximate while other threads classify). Any thread. */
void ua_get_stats(ua_stats *out);

#endif
