/*
 * The server's lifecycle (app_serve) and the offline tools (--check, --dump-log).
 *
 * Start order: data-directory lock -> event log (recovery happens here) -> salts, enrichment
 * data, sites, rate limiter -> store (RocksDB) and the raw/rollup consumer threads, which
 * resume from the cursors saved with their output -> HTTP server (binds) -> routes -> the
 * stored API keys (the first start creates one, query_api.h) -> query workers -> HTTP workers.
 * Signals (TERM, INT) are blocked in every thread and taken by the main thread with
 * sigtimedwait, which also runs the once-a-second chores: salt rotation, log retention, and
 * recovery of the log writer after a failed write (a full disk: seglog_reset_poison once space
 * is back).
 *
 * RELOAD (SIGHUP): the configuration file is read again with the same command-line overrides.
 * An invalid file is refused with its reason (FILE:LINE: key) and the running configuration
 * stays. A valid one becomes a new generation (app_int.h): sites, ids, goals, hosts, currency,
 * key digests, auto_sites, rate limits, events_per_request_max, body_decoded_bytes_max for
 * ingest decoding, query_timeout_ms and query_memory_bytes_max apply to the next request.
 * Keys read once at start keep their value until a restart, and a changed one is named in a
 * warning: listen, threads, the HTTP limits and timeouts, connections_max, cors_origins,
 * trusted_proxies, shutdown_timeout_ms, log_level, geoip_db, query_threads, query_queue_max,
 * every [storage] key (data_dir, fsync, segment_bytes, log retention, queues) and
 * salt_rotation_hours. The rollup consumers keep the site definitions they started with
 * (time zone, ids, hosts, raw retention): a change to those is named in a warning and applies
 * to the rollups after a restart (a new site with default settings needs none).
 *
 * LISTENING SOCKET: bound from `listen`, or inherited: --listen-fd N, or systemd socket
 * activation (LISTEN_PID = our pid and LISTEN_FDS >= 1: descriptor 3; the variables are
 * removed from the environment so children do not inherit them).
 *
 * UPGRADE (SIGUSR2): zero-downtime restart or binary upgrade; the sequence is in upgrade.c.
 * The old process starts the new one on the same listening socket and, once it says ready
 * (configuration valid, enrichment data loaded, socket usable: checked before it waits for the
 * data-directory lock, so its failures leave the old process serving), runs the stop below.
 * The new process takes the lock as soon as the old one releases it (upgrade.h timeouts).
 *
 * Stop order (SIGTERM/SIGINT, or SIGUSR2 once the new process is ready): answer queued Stats
 * API queries 503, stop accepting and drain
 * in-flight requests (their appends complete through the still-running log writer), join the
 * query workers (running queries finish, so none reads the store after it closes), stop the
 * consumers (each flushes its output and cursor in one batch), close the log (drains the
 * queue, durably), then free the HTTP server (responses posted by the last completions are
 * dropped with their connections) and the rest. Exit 0 within shutdown_timeout_ms + the log
 * drain (+ what is left of a running query's time budget).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <sodium.h>

#include "app/app.h"
#include "app/admin.h"
#include "app/app_int.h"
#include "app/backup.h"
#include "app/cluster.h"
#include "app/node.h"
#include "app/peers.h"
#include "app/live.h"
#include "app/query_api.h"
#include "app/upgrade.h"
#include "core/datadir.h"
#include "core/diag.h"
#include "http/http_server.h"
#include "ingest/bots.h"
#include "ingest/event.h"
#include "ingest/referrer.h"
#include "ingest/timefmt.h"
#include "ingest/ua.h"
#include "store/memo.h"
#include "rollup/rollup.h"
#include "store/store.h"
#include "tally/error.h"

#define CHORE_INTERVAL_MS 1000
#define DROPPED_HELP                                                                            \
    "Events refused (rate_limit, invalid, unknown_site, unavailable) or acknowledged but left " \
    "out of statistics (bot, host: at ingest; duplicate: by the rollup consumer)."
#define RETENTION_INTERVAL_MS 60000

static void log_options(const struct tally_config *cfg, const char *dir,
                        struct seglog_options *o)
{
    seglog_options_default(o);
    o->dir = dir;
    o->segment_bytes = (uint64_t)cfg->segment_bytes;
    o->fsync = cfg->fsync == CONFIG_FSYNC_ALWAYS     ? SEGLOG_FSYNC_ALWAYS
               : cfg->fsync == CONFIG_FSYNC_INTERVAL ? SEGLOG_FSYNC_INTERVAL
                                                     : SEGLOG_FSYNC_NONE;
    o->fsync_interval_ms = (uint32_t)cfg->fsync_interval_ms;
    o->queue_records_max = (uint32_t)cfg->queue_events_max;
    o->queue_bytes_max = (uint64_t)cfg->queue_bytes_max;
    o->batch_bytes_max = 16u << 20; /* a whole request fits one batch (see ingest.c) */
    if (o->segment_bytes < (uint64_t)o->batch_bytes_max + 64)
        o->batch_bytes_max = (uint32_t)(o->segment_bytes / 2);
    o->record_bytes_max = 256u << 10; /* > EVENT_ENCODED_BYTES_MAX */
    o->retention_age_ms = (uint64_t)cfg->retention_days * 86400000ULL;
    o->retention_bytes = (uint64_t)cfg->retention_bytes;
    o->direct_min_bytes = (uint32_t)cfg->direct_write_min_bytes;
}

static int open_log(const struct tally_config *cfg, const struct datadir *dd, bool repair,
                    bool read_only, struct seglog **out)
{
    char dir[4096];
    datadir_join(dd, "log", dir, sizeof dir);
    struct seglog_options o;
    log_options(cfg, dir, &o);
    o.repair = repair;
    o.read_only = read_only;
    struct seglog_open_report rep;
    memset(&rep, 0, sizeof rep);
    int rc = seglog_open(&o, out, &rep);
    if (rc != 0) {
        fprintf(stderr, "tally: cannot open the event log in %s: %s%s%s\n", dir,
                tally_strerror(rc), rep.message[0] ? ": " : "", rep.message);
        if (rc == TALLY_ECORRUPT && !repair)
            fprintf(stderr, "tally: start with --repair to quarantine the damaged segment "
                            "(the report names the offsets lost)\n");
        return rc;
    }
    if (rep.message[0]) diag_warn("event log: %s", rep.message);
    for (uint32_t i = 0; i < rep.lost_range_count; i++)
        diag_warn("event log: offsets [%llu, %llu) lost (quarantined)",
                  (unsigned long long)rep.lost[i].first, (unsigned long long)rep.lost[i].end);
    return 0;
}

/* cache_bytes_max: the query memo (store/memo.h); raw_cache_bytes: the raw family's own block
 * cache (0: the shared one; offline tools, which scan once); bulk: writes without RocksDB's
 * WAL, families flushed together (store.h; --rebuild). */
static int open_store(const struct datadir *dd, bool read_only, size_t cache_bytes_max,
                      size_t raw_cache_bytes, bool bulk, struct store **out)
{
    char dir[4096];
    datadir_join(dd, "store", dir, sizeof dir);
    struct store_options o;
    store_options_default(&o);
    o.dir = dir;
    o.read_only = read_only;
    /* Bounded memory next to ingest: 16 MiB block cache, 8 MiB memtables per family. */
    o.block_cache_bytes = 16u << 20;
    o.raw_cache_bytes = raw_cache_bytes;
    o.write_buffer_bytes = 8u << 20;
    o.background_low_priority = !read_only;
    o.bulk_writes = bulk;
    o.memo_bytes_max = cache_bytes_max;
    int rc = store_open(&o, out);
    if (rc != 0)
        fprintf(stderr, "tally: cannot open the store in %s: %s\n", dir, tally_strerror(rc));
    return rc;
}

static int report_lock(const struct tally_config *cfg, int rc, pid_t holder)
{
    if (rc == TALLY_ELOCKED) {
        fprintf(stderr, "tally: data directory %s is locked by another tally process (pid %ld)"
                        "\n", cfg->data_dir, (long)holder);
    } else if (rc != 0) {
        fprintf(stderr, "tally: cannot use data directory %s: %s\n", cfg->data_dir,
                tally_strerror(rc));
    }
    return rc;
}

static int lock_data_dir(const struct tally_config *cfg, struct datadir **dd)
{
    pid_t holder = 0;
    return report_lock(cfg, datadir_open(cfg->data_dir, dd, &holder), holder);
}

/* The new process of an upgrade: waits while the old one drains and closes its stores. */
static int lock_data_dir_wait(const struct tally_config *cfg, struct datadir **dd)
{
    pid_t holder = 0;
    int rc = datadir_open_wait(cfg->data_dir, dd, &holder, UPGRADE_LOCK_TIMEOUT_MS);
    return report_lock(cfg, rc, holder);
}

/* The embedded classifiers (bots before ua: ua caches the bot verdict), for the server and
 * for --rebuild, whose derivations use them too. */
static int load_classifiers(void)
{
    int rc = bots_init();
    if (rc == 0) rc = ua_init(UA_CACHE_ENTRIES_DEFAULT);
    if (rc == 0) rc = referrer_init();
    if (rc != 0)
        fprintf(stderr, "tally: cannot load the embedded enrichment data: %s\n",
                tally_strerror(rc));
    return rc;
}

static void unload_classifiers(void)
{
    referrer_shutdown();
    ua_shutdown();
    bots_shutdown();
}

static int init_enrichment(const struct tally_config *cfg, geo **g)
{
    int rc = load_classifiers();
    if (rc != 0) return rc;
    *g = NULL;
    if (cfg->geoip_db[0]) {
        rc = geo_open(cfg->geoip_db, g);
        if (rc != 0) {
            fprintf(stderr, "tally: [server] geoip_db: cannot open %s: %s\n", cfg->geoip_db,
                    tally_strerror(rc));
            return rc;
        }
    }
    return 0;
}

static void register_metrics(struct app *app)
{
    static const char *const reasons[DROP_REASON_COUNT] = {
        "bot", "host", "rate_limit", "invalid", "unknown_site", "unavailable"};
    app->events_accepted = metrics_counter(app->metrics, "tally_events_accepted_total",
                                           "Events durably appended to the log.", NULL, 0);
    for (int i = 0; i < DROP_REASON_COUNT; i++) {
        const char *labels[] = {"reason", reasons[i], NULL};
        app->events_dropped[i] = metrics_counter(
            app->metrics, "tally_events_dropped_total", DROPPED_HELP, labels, 0);
    }
    app->disk_full_recoveries = metrics_counter(
        app->metrics, "tally_log_writer_recoveries_total",
        "Times the log writer resumed after a failed write (e.g. a full disk).", NULL, 0);
}

static int make_http(struct app *app, int listen_fd)
{
    const struct tally_config *cfg = app->cfg;
    struct http_config hc;
    http_config_defaults(&hc);
    hc.listen = cfg->listen;
    hc.threads = (unsigned)cfg->threads;
    hc.limits.header_bytes_max = (size_t)cfg->header_bytes_max;
    hc.limits.header_count_max = (size_t)cfg->header_count_max;
    hc.limits.url_bytes_max = (size_t)cfg->url_bytes_max;
    hc.limits.body_bytes_max = (size_t)cfg->body_bytes_max;
    hc.limits.body_decoded_bytes_max = (size_t)cfg->body_decoded_bytes_max;
    hc.limits.head_timeout_ms = (uint32_t)cfg->head_timeout_ms;
    hc.limits.body_timeout_ms = (uint32_t)cfg->body_timeout_ms;
    hc.limits.idle_timeout_ms = (uint32_t)cfg->idle_timeout_ms;
    hc.limits.connections_max = (uint32_t)cfg->connections_max;
    hc.cors_origins = (const char *const *)cfg->cors_origins.items;
    hc.cors_origins_count = (size_t)cfg->cors_origins.count;
    hc.metrics = app->metrics;
    hc.listen_fd = listen_fd;
    int rc = http_server_new(&hc, &app->http);
    if (rc != 0) {
        fprintf(stderr, "tally: cannot listen on %s: %s\n", cfg->listen, tally_strerror(rc));
        return rc;
    }
    if ((rc = ingest_routes(app)) || (rc = ops_routes(app)) || (rc = peer_routes(app)))
        return rc;
    if (!app->store) return 0; /* role ingest: the query routes forward (query_api.c) */
    if ((rc = dashboard_routes(app)) || (rc = live_routes(app)) || (rc = admin_routes(app)))
        return rc;
    return 0;
}

/* The stored API keys (DATA_DIR/keys); on the first start without any read key, creates one
 * and prints it with the dashboard URL. A failure is reported and the server runs on. */
static void init_keys(struct app *app, const struct datadir *dd)
{
    char host[256], url[300];
    int port = 0;
    if (config_parse_listen(app->cfg->listen, host, &port) != 0) snprintf(host, sizeof host, "?");
    port = http_server_port(app->http);
    snprintf(url, sizeof url, strchr(host, ':') ? "http://[%s]:%d/" : "http://%s:%d/", host,
             port);
    query_api_keys_init(app->cfg, datadir_path(dd), url, &app->stored_keys);
}

static int parse_proxies(const struct tally_config *cfg, struct cidr_list *out)
{
    out->count = 0;
    for (int i = 0; i < cfg->trusted_proxies.count; i++) {
        if (out->count >= CIDR_LIST_MAX ||
            cidr_parse(cfg->trusted_proxies.items[i], &out->items[out->count]) != 0) {
            fprintf(stderr, "tally: [server] trusted_proxies: '%s' is not a CIDR\n",
                    cfg->trusted_proxies.items[i]);
            return TALLY_EINVAL;
        }
        out->count++;
    }
    return 0;
}

/* Once a second on the main thread. */
static void chores(struct app *app, int64_t *last_retention_ms)
{
    int64_t now = timefmt_now_ms();
    if (app->cluster) {
        int src = cluster_salts_sync(app->cluster, app->salts, now);
        if (src) diag_warn("shared salts: %s (the held ones stay in use)", tally_strerror(src));
    } else {
        visitor_salts_rotate(app->salts, now);
    }
    int err = app->log ? seglog_poisoned_err(app->log) : 0;
    if (err != 0) {
        int rc = seglog_reset_poison(app->log);
        if (rc == 0) {
            metrics_counter_add(app->disk_full_recoveries, 1);
            diag_warn("event log writer recovered after: %s", tally_strerror(err));
        } else {
            diag_warn("event log writer still failing (%s); ingest answers 503",
                      tally_strerror(err));
        }
    }
    if (app->rollups) {
        int rc = rollup_service_recover(app->rollups); /* after a store write error */
        if (rc != 0)
            diag_warn("store still failing (%s); events are kept in the log and processed "
                      "once it reopens", tally_strerror(rc));
    }
    /* A running backup holds the retention lock: retention waits for the next round. */
    if (app->log && now - *last_retention_ms >= RETENTION_INTERVAL_MS &&
        pthread_mutex_trylock(&app->retention_mu) == 0) {
        *last_retention_ms = now;
        struct seglog_retention_result res;
        if (seglog_retention_run(app->log, now, &res) == 0 && res.segments_deleted > 0)
            diag_info("retention: deleted %u log segments (%llu records)", res.segments_deleted,
                      (unsigned long long)res.records_deleted);
        pthread_mutex_unlock(&app->retention_mu);
    }
}

/* ---------------------------------------------------------------- SIGHUP reload */

static bool str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

static bool list_eq(const struct config_list *a, const struct config_list *b)
{
    if (a->count != b->count) return false;
    for (int i = 0; i < a->count; i++)
        if (strcmp(a->items[i], b->items[i]) != 0) return false;
    return true;
}

/* Names the keys read only at start whose value changed (they wait for a restart). */
static void warn_restart_keys(const struct tally_config *o, const struct tally_config *n)
{
    char names[1024] = "";
    size_t len = 0;
#define CHANGED(cond, name)                                                                    \
    do {                                                                                       \
        if ((cond) && len + sizeof(name) + 2 < sizeof names)                                   \
            len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", len ? ", " : "",  \
                                    name);                                                     \
    } while (0)
    CHANGED(!str_eq(o->listen, n->listen), "listen");
    CHANGED(o->threads != n->threads, "threads");
    CHANGED(o->header_bytes_max != n->header_bytes_max ||
                o->header_count_max != n->header_count_max ||
                o->url_bytes_max != n->url_bytes_max || o->body_bytes_max != n->body_bytes_max ||
                o->head_timeout_ms != n->head_timeout_ms ||
                o->body_timeout_ms != n->body_timeout_ms ||
                o->idle_timeout_ms != n->idle_timeout_ms,
            "HTTP limits/timeouts");
    CHANGED(o->connections_max != n->connections_max, "connections_max");
    CHANGED(!list_eq(&o->cors_origins, &n->cors_origins), "cors_origins");
    CHANGED(!list_eq(&o->trusted_proxies, &n->trusted_proxies), "trusted_proxies");
    CHANGED(o->shutdown_timeout_ms != n->shutdown_timeout_ms, "shutdown_timeout_ms");
    CHANGED(!str_eq(o->log_level, n->log_level), "log_level");
    CHANGED(!str_eq(o->geoip_db, n->geoip_db), "geoip_db");
    CHANGED(o->query_threads != n->query_threads, "query_threads");
    CHANGED(o->query_queue_max != n->query_queue_max, "query_queue_max");
    CHANGED(o->raw_cache_bytes != n->raw_cache_bytes, "raw_cache_bytes");
    CHANGED(!str_eq(o->data_dir, n->data_dir), "data_dir");
    CHANGED(o->fsync != n->fsync || o->fsync_interval_ms != n->fsync_interval_ms, "fsync");
    CHANGED(o->segment_bytes != n->segment_bytes || o->retention_days != n->retention_days ||
                o->retention_bytes != n->retention_bytes ||
                o->queue_events_max != n->queue_events_max ||
                o->queue_bytes_max != n->queue_bytes_max ||
                o->direct_write_min_bytes != n->direct_write_min_bytes,
            "[storage] log settings");
    CHANGED(o->salt_rotation_hours != n->salt_rotation_hours, "salt_rotation_hours");
    CHANGED(!str_eq(o->tracker_path, n->tracker_path), "tracker_path");
    CHANGED(o->role != n->role || o->log_backend != n->log_backend ||
                !list_eq(&o->nats_urls, &n->nats_urls) ||
                !str_eq(o->stream_prefix, n->stream_prefix) || o->partitions != n->partitions ||
                o->replicas != n->replicas || !str_eq(o->node_name, n->node_name) ||
                !list_eq(&o->owned_partitions, &n->owned_partitions) ||
                !list_eq(&o->partition_owners, &n->partition_owners) ||
                o->stream_max_age_hours != n->stream_max_age_hours ||
                o->stream_max_bytes != n->stream_max_bytes ||
                o->publish_timeout_ms != n->publish_timeout_ms ||
                o->publish_pending_max != n->publish_pending_max ||
                o->forward_timeout_ms != n->forward_timeout_ms,
            "[cluster]");
#undef CHANGED
    if (len) diag_warn("reload: changed but read only at start (restart to apply): %s", names);
}

/* Whether the rollup consumers would treat site `cs` (in the new config) differently from how
 * they treat it under the configuration they started with. */
static bool site_differs_for_consumers(const struct tally_config *start,
                                       const struct config_site *cs)
{
    const struct config_site *o = config_site_find(start, cs->name);
    if (!o) /* new: the consumers see an unconfigured site (UTC, default hosts, no ids) */
        return !(str_eq(cs->timezone, "UTC") || str_eq(cs->timezone, "")) ||
               cs->hosts.count > 0 || cs->ids.count > 0 || cs->retention_days != 0;
    return !str_eq(o->timezone, cs->timezone) || !list_eq(&o->hosts, &cs->hosts) ||
           !list_eq(&o->ids, &cs->ids) || o->retention_days != cs->retention_days;
}

/* The configuration the consumers run with (main thread only): the one they started with,
 * then the last one rollup_service_reconfigure gave them. */
static const struct tally_config *g_consumers_cfg;

static void reload(struct app *app, const struct app_options *opt,
                   const struct tally_config *start_cfg)
{
    if (!g_consumers_cfg) g_consumers_cfg = start_cfg;
    const struct tally_config *old = app_config(app);
    if (app->generation_count >= APP_GENERATIONS_MAX) {
        diag_error("reload refused: this server has already taken %d configurations; restart "
                   "it to reload again", APP_GENERATIONS_MAX);
        atomic_fetch_add(&app->reloads_failed, 1);
        return;
    }
    char err[CONFIG_ERROR_BYTES_MAX] = "";
    struct tally_config *n = config_new_defaults();
    int rc = n ? 0 : TALLY_ENOMEM;
    if (rc == 0 && opt->config_path) rc = config_load_file(n, opt->config_path, err);
    if (rc == 0 && opt->data_dir) rc = config_set(n, "storage", "data_dir", opt->data_dir, err);
    if (rc == 0 && opt->listen) rc = config_set(n, "server", "listen", opt->listen, err);
    if (rc == 0) rc = config_validate(n, err);
    struct app_generation g = {.cfg = n};
    if (rc == 0 && !(g.sites = sites_new(n))) rc = TALLY_ENOMEM;
    if (rc == 0 && (n->rate_limit_per_ip != old->rate_limit_per_ip ||
                    n->rate_limit_burst != old->rate_limit_burst) &&
        !(g.ratelimit = ratelimit_new(n->rate_limit_per_ip, n->rate_limit_burst)))
        rc = TALLY_ENOMEM;
    if (rc != 0) {
        diag_error("reload refused, the running configuration stays in force: %s",
                   err[0] ? err : tally_strerror(rc));
        sites_free(g.sites);
        config_free(n);
        atomic_fetch_add(&app->reloads_failed, 1);
        return;
    }
    warn_restart_keys(old, n);
    bool consumers_differ = false;
    for (int i = 0; i < n->site_count; i++)
        if (site_differs_for_consumers(g_consumers_cfg, &n->sites[i])) {
            consumers_differ = true;
            diag_warn("reload: [site %s]: time zone, hosts, ids or retention changed: the "
                      "consumers restart with them; events already counted keep their buckets "
                      "(`tally --rebuild` recomputes the past)", n->sites[i].name);
        }
    app->generations[app->generation_count++] = g;
    /* Publish: each pointer is a whole generation; readers load it once per use. */
    if (g.ratelimit) atomic_store_explicit(&app->ratelimit, g.ratelimit, memory_order_release);
    atomic_store_explicit(&app->sites, g.sites, memory_order_release);
    atomic_store_explicit(&app->cfg, n, memory_order_release);
    if (app->store) memo_set_bytes_max(store_memo(app->store), (size_t)n->query_cache_bytes_max);
    if (consumers_differ && app->rollups) {
        g_consumers_cfg = n;
        if (rollup_service_reconfigure(app->rollups, n) != 0)
            diag_warn("reload: the consumers could not restart yet; retrying every second");
    }
    atomic_fetch_add(&app->reloads_total, 1);
    diag_info("reload: configuration %s applied (generation %d: %d sites)",
              opt->config_path ? opt->config_path : "(embedded defaults)",
              app->generation_count, n->site_count);
}

static void free_generations(struct app *app)
{
    for (int i = app->generation_count - 1; i >= 0; i--) {
        struct app_generation *g = &app->generations[i];
        if (g->ratelimit) ratelimit_free(g->ratelimit);
        sites_free(g->sites);
        if (g->cfg) config_free(g->cfg);
    }
    app->generation_count = 0;
}

/* The socket handed over by systemd (sd_listen_fds protocol: LISTEN_PID is us, LISTEN_FDS
 * counts descriptors from 3), or -1. The variables are removed so children do not see them. */
static int systemd_listen_fd(void)
{
    const char *pid_s = getenv("LISTEN_PID"), *fds_s = getenv("LISTEN_FDS");
    int fd = -1;
    if (pid_s && fds_s && strtol(pid_s, NULL, 10) == (long)getpid()) {
        long n = strtol(fds_s, NULL, 10);
        if (n >= 1) fd = 3;
        if (n > 1) diag_warn("socket activation: %ld sockets passed; serving on the first", n);
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return fd;
}

static bool is_listening_socket(int fd)
{
    int acc = 0;
    socklen_t al = sizeof acc;
    return fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) == 0 && acc;
}

/* SIGUSR2: starts the new process (upgrade.c); true when it is ready and this one must stop. */
static bool upgrade(struct app *app)
{
    diag_info("signal %d: upgrade: starting a new process on the listening socket", SIGUSR2);
    char why[600];
    int rc = upgrade_start(http_server_port(app->http), UPGRADE_READY_TIMEOUT_MS, why,
                           sizeof why);
    if (rc != 0) {
        diag_error("upgrade failed, this process keeps serving: %s", why);
        return false;
    }
    diag_info("upgrade: the new process is ready; stopping this one (pid %ld)", (long)getpid());
    return true;
}

static void live_tap(void *arg, const void *data, uint32_t len)
{
    live_publish_record(arg, data, len);
}

/* The processing side (role all or process): the store and the consumers of this node's
 * sources (node.h). 0, or an error after printing why. */
static int start_processing(struct app *app, const struct datadir *dd,
                            struct rollup_source **sources, size_t *nsources)
{
    const struct tally_config *cfg = app->cfg;
    int rc = open_store(dd, false, (size_t)cfg->query_cache_bytes_max, (size_t)cfg->raw_cache_bytes,
                        false, &app->store);
    if (rc != 0) return rc;
    if ((rc = node_sources(cfg, app->log, app->js, sources, nsources)) != 0) {
        fprintf(stderr, "tally: no partitions to consume: %s\n", tally_strerror(rc));
        return rc;
    }
    struct rollup_config rcfg;
    rollup_config_default(&rcfg);
    rcfg.cfg = cfg;
    /* Memory next to ingest (RSS target 128 MiB): flush the consumers' pending output at a
     * few MiB rather than the offline rebuild's hundreds; visitors beyond the in-memory bound
     * are reloaded from the sessions family when they come back. With several sources
     * (JetStream partitions) the budget is shared between their engines. */
    size_t n = *nsources;
    size_t share = n > 1 ? n : 1;
    rcfg.engine.pending_bytes_max = (16u << 20) / share > (2u << 20) ? (16u << 20) / share
                                                                     : (2u << 20);
    rcfg.engine.pending_events_max = 50000 / share > 5000 ? 50000 / share : 5000;
    rcfg.engine.intern_bytes_max = rcfg.engine.pending_bytes_max;
    rcfg.engine.visitors_max = 50000 / share > 5000 ? 50000 / share : 5000;
    rcfg.raw_flush_events_max = 20000 / share > 2000 ? 20000 / share : 2000;
    if ((rc = rollup_service_start(app->store, *sources, n, &rcfg, &app->rollups)) != 0) {
        fprintf(stderr, "tally: cannot start the consumers: %s\n", tally_strerror(rc));
        return rc;
    }
    const char *labels[] = {"reason", "duplicate", NULL};
    metrics_counter_ref(app->metrics, "tally_events_dropped_total", DROPPED_HELP, labels, 0,
                        rollup_service_duplicates(app->rollups));
    return 0;
}

int app_serve(const struct tally_config *cfg, const struct app_options *opt)
{
    struct app app;
    memset(&app, 0, sizeof app);
    app.cfg = cfg;
    pthread_mutex_init(&app.retention_mu, NULL);
    struct datadir *dd = NULL;
    struct rollup_source *sources = NULL;
    size_t nsources = 0;
    int exit_code = 1;
    int listen_fd = opt->listen_fd >= 0 ? opt->listen_fd : systemd_listen_fd();

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* inherited by every thread started below */
    signal(SIGPIPE, SIG_IGN);

    if (sodium_init() < 0) {
        fprintf(stderr, "tally: libsodium failed to start\n");
        upgrade_child_failed("libsodium failed to start");
        return 1;
    }
    if (parse_proxies(cfg, &app.trusted_proxies) != 0) {
        upgrade_child_failed("[server] trusted_proxies is invalid");
        return 2;
    }
    /* Before the lock: what can fail without the data directory fails while an old process
     * handing over (upgrade.c) can still keep serving. */
    if (init_enrichment(cfg, &app.geo) != 0) {
        upgrade_child_failed("cannot load the enrichment data (see the new process's stderr)");
        goto out;
    }
    if (upgrade_is_child()) {
        if (!is_listening_socket(listen_fd)) {
            upgrade_child_failed("descriptor %d is not a listening socket", listen_fd);
            goto out;
        }
        diag_info("upgrade: new process %ld ready; waiting for process %ld to hand over",
                  (long)getpid(), (long)upgrade_parent_pid());
        upgrade_child_ready();
        if (lock_data_dir_wait(cfg, &dd) != 0) goto out;
    } else if (lock_data_dir(cfg, &dd) != 0) {
        goto out;
    }
    app.data_dir = datadir_path(dd);
    bool jetstream = cfg->log_backend == CONFIG_LOG_JETSTREAM;
    if (!jetstream) {
        if (open_log(cfg, dd, opt->repair, false, &app.log) != 0) goto out;
        evlog_local(app.log, &app.sink);
    } else {
        if (node_jslog_open(cfg, &app.js) != 0) goto out;
        jslog_sink(app.js, &app.sink);
    }
    int rc = visitor_salts_open(datadir_path(dd), timefmt_now_ms(), &app.salts);
    if (rc != 0) {
        fprintf(stderr, "tally: cannot open %s/salts: %s\n", datadir_path(dd),
                tally_strerror(rc));
        goto out;
    }
    if (jetstream) {
        char cerr[256] = "";
        if ((rc = cluster_open(cfg, &app.cluster, cerr)) != 0) {
            fprintf(stderr, "tally: [cluster]: %s%s%s\n", tally_strerror(rc), cerr[0] ? ": " : "",
                    cerr);
            goto out;
        }
        /* Before the first event is hashed: every ingest node uses the same salts. */
        if ((rc = cluster_salts_sync(app.cluster, app.salts, timefmt_now_ms())) != 0) {
            fprintf(stderr, "tally: cannot read the shared salts from JetStream: %s\n",
                    tally_strerror(rc));
            goto out;
        }
    }
    app.sites = sites_new(cfg);
    app.ratelimit = ratelimit_new(cfg->rate_limit_per_ip, cfg->rate_limit_burst);
    app.metrics = metrics_new();
    app.generations[0] = (struct app_generation){NULL, app.sites, app.ratelimit};
    app.generation_count = 1;
    if (!app.sites || !app.ratelimit || !app.metrics) goto out;
    register_metrics(&app);
    if (cfg->role != CONFIG_ROLE_INGEST &&
        start_processing(&app, dd, &sources, &nsources) != 0)
        goto out;
    if (make_http(&app, listen_fd) != 0) goto out;
    for (size_t i = 0; app.js && app.live && i < nsources; i++) {
        uint32_t p = (uint32_t)strtoul(sources[i].name + 1, NULL, 10); /* "p<N>" */
        if (jslog_tap(app.js, p, live_tap, app.live) != 0)
            diag_warn("live view: cannot subscribe to partition %u; it shows no events", p);
    }
    init_keys(&app, dd);
    if ((rc = query_api_start(&app, &app.queries)) != 0) {
        fprintf(stderr, "tally: cannot start the query workers: %s\n", tally_strerror(rc));
        goto out;
    }
    if (http_server_start(app.http) != 0) goto out;
    char where[320];
    if (listen_fd >= 0)
        snprintf(where, sizeof where, "inherited socket %d (port %u)", listen_fd,
                 (unsigned)http_server_port(app.http));
    else
        snprintf(where, sizeof where, "%s", cfg->listen);
    if (jetstream)
        diag_info("tally %s serving on %s (role %s, JetStream log at %s, %zu partitions "
                  "consumed here, data in %s)", TALLY_VERSION, where,
                  cfg->role == CONFIG_ROLE_ALL ? "all"
                  : cfg->role == CONFIG_ROLE_INGEST ? "ingest" : "process",
                  cfg->nats_urls.items[0], nsources, cfg->data_dir);
    else
        diag_info("tally %s serving on %s (data in %s, fsync %s)", TALLY_VERSION, where,
                  cfg->data_dir, cfg->fsync == CONFIG_FSYNC_ALWAYS ? "always"
                                 : cfg->fsync == CONFIG_FSYNC_INTERVAL ? "interval" : "none");

    int64_t last_retention_ms = 0;
    for (;;) {
        struct timespec timeout = {CHORE_INTERVAL_MS / 1000, 0};
        int sig = sigtimedwait(&sigs, NULL, &timeout);
        if (sig == SIGTERM || sig == SIGINT) {
            diag_info("signal %d: stopping", sig);
            break;
        }
        if (sig == SIGHUP) {
            reload(&app, opt, cfg);
            continue;
        }
        if (sig == SIGUSR2) {
            if (upgrade(&app)) break;
            continue;
        }
        chores(&app, &last_retention_ms);
    }
    atomic_store(&app.stopping, 1);
    query_api_quiesce(app.queries);
    int cut = http_server_stop(app.http, (uint32_t)cfg->shutdown_timeout_ms);
    if (cut > 0) diag_warn("stop: %d connections cut after the drain timeout", cut);
    exit_code = 0;
out:
    admin_stop(&app); /* a running backup finishes (and answers) before the store closes */
    query_api_free(app.queries); /* joins the query workers: every query answered */
    app.queries = NULL;
    cluster_close(app.cluster); /* after the query workers: they forward through it */
    rollup_service_stop(app.rollups); /* flushes both consumers (output + cursor) */
    free(sources);
    seglog_close(app.log); /* completes every pending append before the server is freed */
    app.log = NULL;
    jslog_close(app.js); /* likewise for JetStream (readers are closed with the consumers) */
    app.js = NULL;
    live_free(app.live); /* no append publishes any more; the ticker reads the store */
    http_server_free(app.http);
    store_close(app.store);
    metrics_free(app.metrics);
    query_api_keys_free(&app.stored_keys);
    free_generations(&app); /* every sites registry and rate limiter, reloaded configs */
    geo_close(app.geo);
    visitor_salts_close(app.salts);
    unload_classifiers();
    datadir_close(dd);
    pthread_mutex_destroy(&app.retention_mu);
    if (exit_code == 0) diag_info("stopped");
    return exit_code;
}

int app_check(const struct tally_config *cfg)
{
    pid_t holder = 0;
    if (datadir_is_locked(cfg->data_dir, &holder)) {
        printf("configuration: ok\ndata directory %s: in use by a running tally (pid %ld); "
               "the event log was not checked\n", cfg->data_dir, (long)holder);
        return 0;
    }
    struct statvfs vfs;
    if (statvfs(cfg->data_dir, &vfs) != 0 && errno != ENOENT) {
        fprintf(stderr, "tally: data directory %s: %s\n", cfg->data_dir, strerror(errno));
        return 1;
    }
    struct datadir *dd;
    if (lock_data_dir(cfg, &dd) != 0) return 1;
    if (cfg->log_backend == CONFIG_LOG_JETSTREAM) {
        printf("configuration: ok\ndata directory %s: ok\nevent log: JetStream (%s, streams "
               "%s_P0..%s_P%lld), not checked offline\n", cfg->data_dir, cfg->nats_urls.items[0],
               cfg->stream_prefix, cfg->stream_prefix, (long long)cfg->partitions - 1);
        datadir_close(dd);
        return 0;
    }
    struct seglog *log = NULL;
    int rc = open_log(cfg, dd, false, true, &log);
    if (rc == TALLY_ENOENT) {
        printf("configuration: ok\ndata directory %s: ok (no event log yet)\n", cfg->data_dir);
        datadir_close(dd);
        return 0;
    }
    if (rc != 0) {
        datadir_close(dd);
        return 1;
    }
    printf("configuration: ok\ndata directory %s: ok\nevent log: offsets [%llu, %llu)\n",
           cfg->data_dir, (unsigned long long)seglog_start_offset(log),
           (unsigned long long)seglog_committed_offset(log));
    seglog_close(log);
    datadir_close(dd);
    return 0;
}

static cJSON *str_json(struct event_str s)
{
    char *tmp = strndup(s.ptr ? s.ptr : "", s.len);
    cJSON *j = cJSON_CreateString(tmp ? tmp : "");
    free(tmp);
    return j;
}

/* One record as a JSON line (the IP is never in a record, so never here). */
static void print_record(const struct seglog_record *rec)
{
    struct event ev;
    struct event_scratch scratch;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "offset", (double)rec->offset);
    if (event_decode(rec->data, rec->len, &ev, &scratch) != 0) {
        cJSON_AddStringToObject(o, "error", "undecodable record");
    } else {
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)ev.visitor);
        cJSON_AddNumberToObject(o, "ts_ms", (double)ev.ts_ms);
        cJSON_AddNumberToObject(o, "received_ms", (double)ev.received_ms);
        cJSON_AddStringToObject(o, "source", event_source_name(ev.source));
        cJSON_AddItemToObject(o, "site", str_json(ev.site));
        cJSON_AddItemToObject(o, "name", str_json(ev.name));
        cJSON_AddItemToObject(o, "url", str_json(ev.url));
        cJSON_AddItemToObject(o, "referrer", str_json(ev.referrer));
        cJSON_AddItemToObject(o, "user_agent", str_json(ev.user_agent));
        cJSON_AddItemToObject(o, "id", str_json(ev.client_id));
        cJSON_AddStringToObject(o, "visitor", hex);
        cJSON_AddItemToObject(o, "country", str_json(ev.country));
        cJSON_AddItemToObject(o, "region", str_json(ev.region));
        cJSON_AddItemToObject(o, "city", str_json(ev.city));
        cJSON_AddBoolToObject(o, "interactive", ev.interactive);
        cJSON *flags = cJSON_AddArrayToObject(o, "flags");
        if (ev.flags & EVENT_F_BOT) cJSON_AddItemToArray(flags, cJSON_CreateString("bot"));
        if (ev.flags & EVENT_F_HOST_NOT_ALLOWED)
            cJSON_AddItemToArray(flags, cJSON_CreateString("host_not_allowed"));
        cJSON *props = cJSON_AddObjectToObject(o, "props");
        for (uint32_t i = 0; i < ev.props_count; i++) {
            char *k = strndup(ev.props[i].key.ptr, ev.props[i].key.len);
            cJSON_AddItemToObject(props, k ? k : "", str_json(ev.props[i].value));
            free(k);
        }
        if (ev.has_revenue) {
            char amount[48];
            long long m = ev.revenue_micros;
            snprintf(amount, sizeof amount, "%lld.%06lld", m / 1000000, m % 1000000);
            cJSON *rv = cJSON_AddObjectToObject(o, "revenue");
            cJSON_AddStringToObject(rv, "amount", amount);
            cJSON_AddStringToObject(rv, "currency", ev.currency);
        }
    }
    char *text = cJSON_PrintUnformatted(o);
    if (text) puts(text);
    free(text);
    cJSON_Delete(o);
}

int app_dump_log(const struct tally_config *cfg, const struct app_options *opt)
{
    if (cfg->log_backend == CONFIG_LOG_JETSTREAM) {
        fprintf(stderr, "tally: --dump-log reads the local log; with log_backend = jetstream "
                        "read the streams with the nats CLI (`nats stream view %s_P<n>`)\n",
                cfg->stream_prefix);
        return 2;
    }
    struct datadir *dd;
    if (lock_data_dir(cfg, &dd) != 0) return 1;
    struct seglog *log = NULL;
    int rc = open_log(cfg, dd, false, true, &log);
    if (rc == TALLY_ENOENT) {
        datadir_close(dd);
        return 0; /* no log yet: nothing to print */
    }
    if (rc != 0) {
        datadir_close(dd);
        return 1;
    }
    uint64_t from = opt->from_offset;
    if (from < seglog_start_offset(log)) from = seglog_start_offset(log);
    struct seglog_reader *r = NULL;
    int exit_code = 0;
    if (from < seglog_committed_offset(log) && seglog_reader_open(log, from, &r) == 0) {
        struct seglog_record rec;
        while ((rc = seglog_reader_next(r, &rec)) == 0) print_record(&rec);
        if (rc != TALLY_EAGAIN) {
            fprintf(stderr, "tally: reading the log: %s\n", tally_strerror(rc));
            exit_code = 1;
        }
    }
    seglog_reader_close(r);
    seglog_close(log);
    datadir_close(dd);
    return exit_code;
}

static void rebuild_progress(void *arg, uint64_t done, uint64_t total)
{
    (void)arg;
    if (total == 0) return;
    fprintf(stderr, "\rrebuild: %llu / %llu records (%.0f%%)", (unsigned long long)done,
            (unsigned long long)total, 100.0 * (double)done / (double)total);
    if (done >= total) fputc('\n', stderr);
}

int app_rebuild(const struct tally_config *cfg, const struct app_options *opt)
{
    if (load_classifiers() != 0) return 1;
    struct datadir *dd;
    if (lock_data_dir(cfg, &dd) != 0) {
        fprintf(stderr, "tally: --rebuild refuses to run while a server holds the data "
                        "directory; stop it first\n");
        return 1;
    }
    struct seglog *log = NULL;
    struct jslog *js = NULL;
    struct store *store = NULL;
    struct rollup_source *src = NULL;
    size_t nsrc = 0;
    int exit_code = 1;
    int rc;
    if (cfg->log_backend == CONFIG_LOG_JETSTREAM) {
        if (cfg->role == CONFIG_ROLE_INGEST) {
            fprintf(stderr, "tally: role = ingest holds no store: nothing to rebuild\n");
            goto out;
        }
        rc = node_jslog_open(cfg, &js);
    } else {
        rc = open_log(cfg, dd, false, true, &log);
        if (rc == TALLY_ENOENT) {
            fprintf(stderr, "tally: no event log in %s: nothing to rebuild\n", cfg->data_dir);
            goto out;
        }
    }
    if (rc != 0 || open_store(dd, false, 0, 0, true, &store) != 0) goto out;
    if (node_sources(cfg, log, js, &src, &nsrc) != 0) goto out;
    struct rollup_rebuild_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.cfg = cfg;
    ro.site = opt->site;
    ro.from_date = opt->from_date;
    ro.to_date = opt->to_date;
    if (isatty(STDERR_FILENO)) ro.progress = rebuild_progress;
    struct rollup_rebuild_summary sum;
    rc = rollup_rebuild(store, src, nsrc, &ro, &sum);
    if (rc != 0) {
        fprintf(stderr, "tally: rebuild failed: %s%s\n", tally_strerror(rc),
                rc == TALLY_EINVAL ? " (check --site and the YYYY-MM-DD dates)" : "");
        exit_code = rc == TALLY_EINVAL ? 2 : 1;
        goto out;
    }
    if (js)
        printf("rebuild: %zu partitions from JetStream, %llu records\n", nsrc,
               (unsigned long long)(sum.log_end - sum.log_start));
    else
        printf("rebuild: log offsets [%llu, %llu)\n", (unsigned long long)sum.log_start,
               (unsigned long long)sum.log_end);
    printf("events read %llu, counted %llu, excluded %llu, duplicates %llu, corrupt %llu\n",
           (unsigned long long)sum.events_read, (unsigned long long)sum.events_counted,
           (unsigned long long)sum.events_excluded, (unsigned long long)sum.events_duplicate,
           (unsigned long long)sum.records_corrupt);
    printf("buckets written %llu, visits written %llu, elapsed %.2f s\n",
           (unsigned long long)sum.buckets_written, (unsigned long long)sum.visits_written,
           sum.elapsed_s);
    printf("digest %s\n", sum.digest.hex);
    exit_code = 0;
out:
    store_close(store);
    free(src);
    seglog_close(log);
    jslog_close(js);
    datadir_close(dd);
    unload_classifiers();
    return exit_code;
}

int app_digest(const struct tally_config *cfg, const struct app_options *opt)
{
    struct datadir *dd;
    if (lock_data_dir(cfg, &dd) != 0) return 1;
    struct store *store = NULL;
    int exit_code = 1;
    if (open_store(dd, false, 0, 0, false, &store) == 0) {
        struct rollup_digest d;
        int rc = rollup_digest(store, opt->site, &d);
        if (rc == 0) {
            printf("digest %s\n", d.hex);
            fprintf(stderr, "cells %llu (%s), visits %llu (%s)\n", (unsigned long long)d.cells,
                    d.cells_hex, (unsigned long long)d.visits, d.visits_hex);
            exit_code = 0;
        } else {
            fprintf(stderr, "tally: digest failed: %s\n", tally_strerror(rc));
        }
    }
    store_close(store);
    datadir_close(dd);
    return exit_code;
}

int app_restore(const char *backup_dir, const char *data_dir)
{
    return backup_restore(backup_dir, data_dir);
}

int app_backup(const char *dir, const char *url, const char *key)
{
    return backup_cli(dir, url, key);
}
