/*
 * ua_prefilter: skip regexes that cannot match, by the literals they require.
 *
 * Built for uap-core's ~1,200 rules (ua.c), where calling PCRE2 on every rule costs far more
 * than the few rules that can actually match: each regex is analysed once into clauses
 * (sets of lower-case literals); a string can match the regex only if, for every clause, it
 * contains at least one of the clause's literals (case-insensitively). Per string, one scan
 * finds which literals occur; ua_prefilter_may_match() then answers per rule in a few loads.
 * A regex the analyser does not fully understand gets no clauses (it always runs), so the
 * filter is sound by construction: it never skips a regex that could match.
 *
 * Lifecycle: ua_prefilter_new, ua_prefilter_add per regex, ua_prefilter_build once; after
 * that the object is read-only and any thread may scan/may_match concurrently.
 */
#ifndef TALLY_INGEST_UA_PREFILTER_H
#define TALLY_INGEST_UA_PREFILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ua_prefilter ua_prefilter;

/* NULL when out of memory. The caller owns it (ua_prefilter_free; NULL is a no-op). */
ua_prefilter *ua_prefilter_new(void);
void ua_prefilter_free(ua_prefilter *pf);

/* Analyses one regex (PCRE2 syntax, as in uap-core; its case flag does not matter since
 * literals compare case-insensitively) and returns its requirement as (first, count), which
 * the caller stores with the regex; count 0 means "always run". Returns 0 or TALLY_ENOMEM.
 * Builder thread only, before ua_prefilter_build. */
int ua_prefilter_add(ua_prefilter *pf, const char *regex, uint32_t *first, uint32_t *count);

/* Indexes the literals once every regex is added. Returns 0 or TALLY_ENOMEM. */
int ua_prefilter_build(ua_prefilter *pf);

/* Distinct literals: a scan needs a bitset of (literals + 63) / 64 uint64_t words. */
uint32_t ua_prefilter_literals(const ua_prefilter *pf);

/* Sets bit i of present (caller-owned, zeroed, sized as above) for each literal i occurring in
 * lower[0..len), which must already be ASCII-lower-cased. Any thread after build. */
void ua_prefilter_scan(const ua_prefilter *pf, const char *lower, size_t len, uint64_t *present);

/* False only if the regex (first, count) cannot match the scanned string; present NULL: true. */
bool ua_prefilter_may_match(const ua_prefilter *pf, uint32_t first, uint32_t count,
                            const uint64_t *present);

#endif
