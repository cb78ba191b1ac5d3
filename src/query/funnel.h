/*
 * funnel: POST /api/v1/funnel (API.md §4): how many visitors went through 2-8 ordered steps,
 * computed exactly from the raw store.
 *
 * REQUEST  {"site_id": "a.com", "date_range": <as in v2>, "filters": <as in v2>,
 *           "steps": [{"page": "/pricing"}, {"page": "/signup"}, {"event": "Signup"}],
 *           "window": "visit" | SECONDS | "30m" | "2h" | "7d",   (default "visit")
 *           "order": "loose" | "strict"}                          (default "loose")
 * site_id, date_range and filters are parsed by the v2 parser (the same messages, the same
 * rules), so filters select events and visits exactly as in a v2 query.
 *
 * DEFINITIONS
 *  - A step event: an event in scope (query.h SEMANTICS: it matches the event filters and its
 *    visit the visit filters) whose time lies in the date range, and that matches some step: a
 *    page step by a pageview whose whole path matches the pattern ('*' = any run without '/',
 *    '**' = any run, as goals), an event step by an event of that name. Other events (and step
 *    events out of scope or out of range) are invisible to the funnel.
 *  - The sequence of a visitor: with window "visit", each of their visits separately (the
 *    engine's visits, query.h); with a window of W seconds, all their step events in the range,
 *    visits ignored, and the steps reached must lie within W of the first step's event
 *    (ts(step k) - ts(step 1) <= W).
 *  - Loose order: steps 1..k reached = events e1 < e2 < ... < ek (by time, then log order) with
 *    ei matching step i; anything may lie between them. Strict order: e1..ek must be CONSECUTIVE
 *    step events of the sequence (no other step event between two of them; events that match
 *    no step do not count). One event stands for at most one step; an event matching several
 *    steps may stand for any of them; a step listed twice needs two events.
 *  - visitors(k): distinct visitors whose best sequence (over their visits, or over start events
 *    with a window) reached step k. visitors(1) >= visitors(2) >= ... by construction.
 *  - Per step: visitors, dropoff = visitors(k-1) - visitors(k) (0 for step 1), dropoff_rate =
 *    dropoff / visitors(k-1) in percent, conversion_rate = visitors(k) / visitors(1) in percent
 *    (from the first step), conversion_rate_step = visitors(k) / visitors(k-1); percents have 2
 *    decimals (0 when the denominator is 0).
 *
 * THREADS. A struct funnel is immutable after parsing. funnel_execute runs on the caller's
 * thread, never an event loop (a scan may take the whole time budget).
 */
#ifndef TALLY_QUERY_FUNNEL_H
#define TALLY_QUERY_FUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "query/query.h"

#define FUNNEL_STEPS_MIN 2
#define FUNNEL_STEPS_MAX 8
#define FUNNEL_VALUE_BYTES_MAX 1024          /* a page pattern or an event name */
#define FUNNEL_WINDOW_S_MAX (366LL * 86400)  /* the longest window */

struct funnel_step {
    bool page;   /* page pattern, else event name */
    char *value; /* the pattern or the name */
};

/* How funnel_compute reads the raw store. AUTO: STREAM when the funnel has no filters, else
 * VISITS. VISITS: whole visits from qscan_visits (every event of the range held; filters of
 * any kind). STREAM: the events hour by hour (raw_scan_hours), a few bytes of state per
 * visitor; only without filters. Both give the same counts (test_funnel checks it). */
enum funnel_plan { FUNNEL_PLAN_AUTO = 0, FUNNEL_PLAN_VISITS, FUNNEL_PLAN_STREAM };

struct funnel {
    struct query *q; /* site, zone, range, filters (parsed by query_parse_v2) */
    enum funnel_plan plan; /* AUTO after parsing; tests and benches may force one */
    size_t nsteps;
    struct funnel_step steps[FUNNEL_STEPS_MAX];
    int64_t window_ms; /* 0: within one visit */
    bool strict;
};

/* Parses a funnel request. Same results as query_parse_v2: 0 with *out (funnel_free), or
 * TALLY_EINVAL with a message naming the field in err, TALLY_ENOENT (unknown site),
 * TALLY_ENOMEM. Any thread. */
int funnel_parse(const char *json, size_t len, int64_t now_ms, q_site_fn site_fn, void *arg,
                 struct funnel **out, char *err, size_t errcap);
void funnel_free(struct funnel *f);

/* Step counts of one funnel. */
struct funnel_result {
    uint64_t visitors[FUNNEL_STEPS_MAX];
};

/* One event of a sequence as the step matcher sees it (tests drive funnel_depth directly). */
struct funnel_ev {
    int64_t ts_ms;
    uint32_t mask; /* bit k: the event matches step k */
};

/* The number of steps reached (0..nsteps) by the best sequence within ev[0..n) (in time order)
 * under the order and window rules above (window_ms 0: no window). Pure; any thread. */
size_t funnel_depth(const struct funnel_ev *ev, size_t n, size_t nsteps, bool strict,
                    int64_t window_ms);

/* Computes f over site_id's raw events under budget b (f->plan). 0, TALLY_ETIMEDOUT,
 * TALLY_ETOOBIG, TALLY_EIO, TALLY_ECORRUPT, TALLY_ENOMEM, TALLY_EINVAL (STREAM forced on a
 * funnel with filters). */
int funnel_compute(struct store *s, uint32_t site_id, const struct funnel *f,
                   const struct q_budget *b, struct funnel_result *r);

/* funnel_compute, then the response body into *json (malloc'd, caller frees): {"steps": [...],
 * "visitors", "converted", "conversion_rate", "meta": {...}}. Errors as funnel_compute, with
 * a message in err. */
int funnel_execute(struct store *s, uint32_t site_id, const struct funnel *f,
                   const struct q_budget *b, char **json, size_t *len, char *err,
                   size_t errcap);

#endif
