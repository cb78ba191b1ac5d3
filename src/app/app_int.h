/*
 * The running server's shared state, built by app_serve (server.c) on the main thread before
 * the HTTP workers start, read-only afterwards except for the atomics and the modules' own
 * thread-safe handles. Handlers (ingest.c, ops.c, query_api.c) receive it (or, for the query
 * routes, their own state pointing to it) as their route argument.
 */
#ifndef TALLY_APP_INT_H
#define TALLY_APP_INT_H

#include <stdatomic.h>

#include "app/ratelimit.h"
#include "app/sites.h"
#include "core/cidr.h"
#include "core/config.h"
#include "core/metrics.h"
#include "ingest/geo.h"
#include "ingest/visitor.h"
#include "log/seglog.h"

struct http_server;
struct query_api;
struct rollup_service;
struct store;

/* Reasons an event is refused or left out of statistics (tally_events_dropped_total). */
enum drop_reason {
    DROP_BOT,          /* acknowledged, flagged, not counted */
    DROP_HOST,         /* acknowledged, flagged: host not allowed for the site */
    DROP_RATE_LIMIT,   /* refused 429 */
    DROP_INVALID,      /* refused 4xx: malformed or invalid */
    DROP_UNKNOWN_SITE, /* refused 404 */
    DROP_UNAVAILABLE,  /* refused 503: queue full, disk full, log failed, shutting down */
    DROP_REASON_COUNT
};

struct app {
    const struct tally_config *cfg;
    struct seglog *log;
    struct http_server *http;
    struct store *store;             /* raw events, sessions, rollups (RocksDB) */
    struct rollup_service *rollups;  /* raw-store and rollup consumer threads */
    struct metrics *metrics;
    struct sites *sites;
    struct ratelimit *ratelimit;
    struct visitor_salts *salts;
    geo *geo; /* NULL when no geoip_db */
    struct cidr_list trusted_proxies;
    struct metrics_counter *events_accepted;
    struct metrics_counter *events_dropped[DROP_REASON_COUNT];
    struct metrics_counter *disk_full_recoveries;
    struct query_api *queries;       /* the Stats API's workers (query_api.h) */
    struct config_list stored_keys;  /* digests from DATA_DIR/keys, valid for every site */
    _Atomic int stopping;
};

/* Registers POST /v1/events (ingest.c). */
int ingest_routes(struct app *app);
/* Registers GET /healthz and GET /metrics (ops.c). */
int ops_routes(struct app *app);
/* Frees the ingest worker threads' cached state (called at thread exit, via a pthread key). */
void ingest_thread_state_init(void);

#endif
