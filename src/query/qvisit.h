/*
 * qvisit: the visits of a query's scope, one by one, for the executors that need whole visits
 * rather than rows (funnels, exports). Implemented in qscan.c with the raw-store scan's own
 * machinery (compile, scan with backward/forward extension, grouping), so a visit, its
 * attributes and "in scope" mean exactly what they mean for qexec_scan (query.h SEMANTICS).
 *
 * ORDER. Visits come visitor by visitor (all visits of one visitor together, in time order);
 * events within a visit by (ts, offset). Only visits holding at least one event in the range
 * are delivered. Excluded (bot, host not allowed, duplicate) and engagement events never
 * belong to a visit and never appear.
 *
 * THREADS. Runs on the caller's thread; the callback runs on it too. Any thread but never an
 * event loop (a scan may take the whole time budget).
 */
#ifndef TALLY_QUERY_QVISIT_H
#define TALLY_QUERY_QVISIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "query/query.h"

#define QV_FIELDS_MAX 4 /* dictionary fields (enum devent_field) copied per event */

struct qv_event {
    int64_t ts_ms;
    uint64_t offset;   /* log offset: the event's identity */
    uint32_t flags;    /* RAW_F_PAGEVIEW, RAW_F_NONINTERACTIVE (store/raw.h) */
    bool in_scope;     /* matches the query's filters (query.h SEMANTICS) */
    bool in_range;     /* from_ms <= ts_ms < to_ms */
    uint32_t val[QV_FIELDS_MAX]; /* dictionary ids of the requested fields, in their order */
};

struct qv_visit {
    uint64_t visitor;      /* the stored visitor hash */
    uint32_t visitor_seq;  /* dense, 1.., equal for the visits of one visitor */
    const struct qv_event *ev; /* valid for the call only */
    size_t n;
};

/* Returns 0 to go on, anything else to stop (qscan_visits then returns it). */
typedef int (*qv_visit_fn)(void *arg, const struct qv_visit *v);

/* Calls fn for every visit of site_id with an event in r, under the budget b (deadline,
 * memory). fields: up to QV_FIELDS_MAX enum devent_field values whose ids each event carries.
 * q supplies the filters, goals (for event:goal filters) and zone; its range, metrics and
 * dimensions are ignored. 0, fn's value, TALLY_ETIMEDOUT, TALLY_ETOOBIG, TALLY_EIO,
 * TALLY_ECORRUPT, TALLY_ENOMEM, TALLY_EINVAL (a filter the scan cannot evaluate). */
int qscan_visits(struct store *s, uint32_t site_id, const struct query *q, struct q_range r,
                 const struct q_budget *b, const int *fields, size_t nfields, qv_visit_fn fn,
                 void *arg);

/* Whether the whole of s (sl bytes) matches a page pattern: '**' any run of characters, '*'
 * any run without '/' (the goals' rule). Any thread. */
bool qscan_glob_match(const char *pattern, size_t pl, const char *s, size_t sl);

#endif
