/*
 * query_api: the HTTP side of the Stats API (API.md §4): POST /api/v2/query and the v1
 * GET /api/v1/stats/{realtime/visitors,aggregate,timeseries,breakdown} endpoints, their
 * authentication, a bounded pool of query workers, and the key created on first start.
 *
 * Threads. Handlers run on the HTTP workers and only authenticate (one hash) and enqueue; the
 * query workers (query_threads of them) parse, check the site, execute and complete the
 * exchange themselves (http_exchange_complete may be called from any thread). Nothing here
 * touches the store on an event loop.
 *
 * Lifecycle (server.c): query_api_start after the store and the HTTP server exist, before
 * http_server_start; query_api_quiesce at SIGTERM (queued queries are answered 503, new ones
 * too; running ones finish); query_api_free before http_server_free and store_close (joins the
 * workers, so every exchange is completed and no query reads a closed store).
 */
#ifndef TALLY_QUERY_API_H
#define TALLY_QUERY_API_H

#include "core/config.h"

struct app;
struct query_api;

/* The file in the data directory holding the digests of stored keys ("SCOPE:DIGEST" lines). */
#define QUERY_API_KEYS_FILE "keys"
#define QUERY_API_KEYS_BYTES_MAX (64u << 10)
/* The row budget of one query (the memory and time budgets are configured). */
#define QUERY_API_ROWS_MAX 1000000u
/* Parameters of one v1 request; more is a 400. */
#define QUERY_API_V1_PARAMS_MAX 32

/*
 * Loads DATA_DIR/keys into *stored (caller owns it: query_api_keys_free). When neither the
 * configuration nor the file holds a key with read (or admin) scope, creates a read key, adds
 * its digest to the file (written atomically, mode 0600) and prints the key once on stderr
 * with the dashboard URL (dashboard_url, e.g. "http://127.0.0.1:8080/") - never with
 * log_backend = jetstream: keys then come from the configuration (a hint is printed). Only
 * digests are ever
 * written. Returns 0, or a TALLY_E* code after printing what is wrong (the server then runs
 * without the stored keys). Main thread, before the HTTP workers start.
 */
int query_api_keys_init(const struct tally_config *cfg, const char *data_dir,
                        const char *dashboard_url, struct config_list *stored);
void query_api_keys_free(struct config_list *stored);

/* Starts the workers and registers the routes and metrics (app->http, app->store,
 * app->metrics and app->stored_keys must be set). 0, TALLY_ENOMEM, TALLY_EIO (no thread).
 * Main thread. */
int query_api_start(struct app *app, struct query_api **out);

/* Answers every queued query 503 and refuses new ones with 503; running queries finish.
 * Idempotent; any thread that is not a query worker. NULL is a no-op. */
void query_api_quiesce(struct query_api *qa);

/* Quiesces, joins the workers (waits for running queries, at most their time budget) and
 * frees. NULL is a no-op. Main thread. */
void query_api_free(struct query_api *qa);

#endif
