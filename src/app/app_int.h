/*
 * The running server's shared state, built by app_serve (server.c) on the main thread before
 * the HTTP workers start, read-only afterwards except for the atomics and the modules' own
 * thread-safe handles.
 *
 * CONFIGURATION GENERATIONS (SIGHUP reload, server.c). `cfg`, `sites` and `ratelimit` are
 * atomic pointers to immutable generations. A reload builds a complete new generation on the
 * main thread and publishes it with release stores; readers load the pointer (acquire) and
 * see a whole, consistent generation. Old generations are never freed while the process runs
 * (a reader may still hold one), only at exit after every thread is joined; a server takes at
 * most APP_GENERATIONS_MAX of them (later reloads are refused: restart to reset), which bounds
 * that memory. A reader that needs several fields consistent takes ONE snapshot with
 * app_config() and reads everything from it (never `app->cfg` twice in one request). Handlers (ingest.c, ops.c, query_api.c) receive it (or, for the query
 * routes, their own state pointing to it) as their route argument.
 */
#ifndef TALLY_APP_INT_H
#define TALLY_APP_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "app/ratelimit.h"
#include "app/sites.h"
#include "core/cidr.h"
#include "core/config.h"
#include "core/metrics.h"
#include "ingest/geo.h"
#include "ingest/visitor.h"
#include "log/evlog.h"
#include "log/seglog.h"

struct cluster;
struct http_server;
struct jslog;
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

#define APP_GENERATIONS_MAX 64

/* One configuration generation and what is built from it; owned by struct app. */
struct app_generation {
    struct tally_config *cfg; /* NULL for generation 0 (owned by main) */
    struct sites *sites;
    struct ratelimit *ratelimit; /* NULL when the previous generation's is kept */
};

struct admin;
struct live;

struct app {
    _Atomic(const struct tally_config *) cfg; /* the current generation: see above */
    struct seglog *log;   /* the local log; NULL with log_backend = jetstream */
    struct evlog sink;    /* where ingest appends: the local log or JetStream (evlog.h) */
    struct jslog *js;     /* log_backend = jetstream: the NATS connection (jslog.h); else NULL */
    struct cluster *cluster; /* partitions, owners, forwarding (cluster.h); NULL: one node */
    struct http_server *http;
    struct store *store;             /* raw events, sessions, rollups (RocksDB); NULL for
                                        role = ingest */
    struct rollup_service *rollups;  /* raw-store and rollup consumer threads */
    struct metrics *metrics;
    _Atomic(struct sites *) sites;         /* built from cfg; same generation rules */
    _Atomic(struct ratelimit *) ratelimit; /* replaced only when its limits change */
    struct visitor_salts *salts;
    geo *geo; /* NULL when no geoip_db */
    struct cidr_list trusted_proxies;
    struct metrics_counter *events_accepted;
    struct metrics_counter *events_dropped[DROP_REASON_COUNT];
    struct metrics_counter *disk_full_recoveries;
    struct query_api *queries;       /* the Stats API's workers (query_api.h) */
    struct config_list stored_keys;  /* digests from DATA_DIR/keys, valid for every site */
    _Atomic int stopping;
    /* Additions for operations (server.c, admin.c, backup.c). */
    const char *data_dir;            /* the locked data directory (owned by its datadir) */
    pthread_mutex_t retention_mu;    /* held by the log-retention chore and by a backup */
    struct admin *admin;             /* admin endpoints' state (admin.h) */
    struct app_generation generations[APP_GENERATIONS_MAX];
    int generation_count;            /* main thread only */
    _Atomic uint64_t reloads_total, reloads_failed;
    struct live *live;               /* GET /api/v1/live's hub (live.h); NULL before routes */
};

/* The current configuration generation: one acquire load. Any thread. */
static inline const struct tally_config *app_config(struct app *app)
{
    return atomic_load_explicit(&app->cfg, memory_order_acquire);
}

/* Registers POST /v1/events (ingest.c). */
int ingest_routes(struct app *app);
/* Registers GET /healthz and GET /metrics (ops.c). */
int ops_routes(struct app *app);
/* Registers GET /, the dashboard files, the tracker and GET /api/v1/sites (dashboard.c). */
int dashboard_routes(struct app *app);
/* Creates app->live and registers GET /api/v1/live (live.c; needs app->store). */
int live_routes(struct app *app);
/* Frees the ingest worker threads' cached state (called at thread exit, via a pthread key). */
void ingest_thread_state_init(void);

#endif
