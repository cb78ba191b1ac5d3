/*
 * Operations endpoints: GET /healthz (JSON: status, the serving process's pid, log offsets,
 * writer state) and GET /metrics (Prometheus text: the metrics registry, then the log's own
 * counters rendered from seglog_stats at scrape time). Both run on a worker thread and do no disk I/O.
 * With log_backend = jetstream the log part is the JetStream connection's (jslog_stats): healthy
 * while connected; the log offsets are the sums over this node's partitions; a role = ingest
 * node has no consumers.
 */
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "app/app_int.h"
#include "log/jslog.h"
#include "http/http_server.h"
#include "rollup/rollup.h"
#include "store/memo.h"
#include "tally/error.h"

/* /healthz of a JetStream node. */
static void healthz_js(struct app *app, struct http_exchange *ex)
{
    struct jslog_stats js;
    jslog_stats(app->js, &js);
    char body[1024];
    int n;
    if (!js.connected) {
        n = snprintf(body, sizeof body, "{\"status\": \"unavailable\", \"error\": \"not "
                                        "connected to NATS JetStream\"}");
        http_exchange_complete(ex, 503, "application/json", body, (size_t)n,
                               "Retry-After: 5\r\n");
        return;
    }
    if (atomic_load(&app->stopping)) {
        n = snprintf(body, sizeof body, "{\"status\": \"stopping\"}");
        http_respond(ex, 503, "application/json", body, (size_t)n);
        return;
    }
    struct rollup_lag lag;
    memset(&lag, 0, sizeof lag);
    if (app->rollups) rollup_service_lag(app->rollups, &lag);
    n = snprintf(body, sizeof body,
                 "{\"status\": \"ok\", \"pid\": %ld, \"log_backend\": \"jetstream\", "
                 "\"publish_pending\": %llu, \"log_end_offset\": %llu, \"consumers\": {"
                 "\"raw\": {\"cursor\": %llu, \"lag\": %llu, \"error\": %d}, "
                 "\"rollup\": {\"cursor\": %llu, \"lag\": %llu, \"error\": %d}}}",
                 (long)getpid(), (unsigned long long)js.pending,
                 (unsigned long long)lag.log_end, (unsigned long long)lag.raw_cursor,
                 (unsigned long long)lag.raw_lag, lag.raw_err,
                 (unsigned long long)lag.rollup_cursor, (unsigned long long)lag.rollup_lag,
                 lag.rollup_err);
    http_respond(ex, 200, "application/json", body, (size_t)n);
}

static void on_healthz(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    (void)req;
    if (!app->log) {
        healthz_js(app, ex);
        return;
    }
    struct seglog_stats st;
    seglog_stats(app->log, &st);
    char body[1024];
    int n;
    if (st.poisoned) {
        n = snprintf(body, sizeof body,
                     "{\"status\": \"unavailable\", \"error\": \"event log cannot take writes: "
                     "%s\", \"log_end_offset\": %llu}",
                     tally_strerror(st.poisoned_err), (unsigned long long)st.committed_offset);
        http_exchange_complete(ex, 503, "application/json", body, (size_t)n,
                               "Retry-After: 5\r\n");
        return;
    }
    if (atomic_load(&app->stopping)) {
        n = snprintf(body, sizeof body, "{\"status\": \"stopping\"}");
        http_respond(ex, 503, "application/json", body, (size_t)n);
        return;
    }
    struct rollup_lag lag;
    rollup_service_lag(app->rollups, &lag);
    n = snprintf(body, sizeof body,
                 "{\"status\": \"ok\", \"pid\": %ld, \"log_start_offset\": %llu, "
                 "\"log_end_offset\": %llu, "
                 "\"log_queue_records\": %llu, \"consumers\": {"
                 "\"raw\": {\"cursor\": %llu, \"lag\": %llu, \"error\": %d}, "
                 "\"rollup\": {\"cursor\": %llu, \"lag\": %llu, \"error\": %d}}}",
                 (long)getpid(), (unsigned long long)st.start_offset,
                 (unsigned long long)st.committed_offset,
                 (unsigned long long)st.queue_records, (unsigned long long)lag.raw_cursor,
                 (unsigned long long)lag.raw_lag, lag.raw_err,
                 (unsigned long long)lag.rollup_cursor, (unsigned long long)lag.rollup_lag,
                 lag.rollup_err);
    http_respond(ex, 200, "application/json", body, (size_t)n);
}

static void gauge(struct evbuffer *b, const char *name, const char *help, const char *type,
                  double v)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type,
                        name, v);
}

static void render_js_stats(struct app *app, struct evbuffer *b)
{
    struct jslog_stats st;
    jslog_stats(app->js, &st);
    gauge(b, "tally_jetstream_connected", "1 while connected to NATS JetStream.", "gauge",
          (double)st.connected);
    gauge(b, "tally_jetstream_published_total", "Events published to JetStream.", "counter",
          (double)st.published);
    gauge(b, "tally_jetstream_acked_total", "Events JetStream acknowledged as stored.",
          "counter", (double)st.acked);
    gauge(b, "tally_jetstream_failed_total", "Events whose publish failed (answered 503).",
          "counter", (double)st.failed);
    gauge(b, "tally_jetstream_pending", "Events published and not yet acknowledged.", "gauge",
          (double)st.pending);
    gauge(b, "tally_jetstream_reconnects_total", "Reconnections to NATS.", "counter",
          (double)st.reconnects);
    evbuffer_add_printf(b, "# HELP tally_jetstream_ack_seconds Publish to acknowledgement.\n"
                           "# TYPE tally_jetstream_ack_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < 16; i++) {
        cum += st.ack_latency_hist[i];
        if (i < 15)
            evbuffer_add_printf(b, "tally_jetstream_ack_seconds_bucket{le=\"%g\"} %llu\n",
                                (double)(100u << i) / 1e6, (unsigned long long)cum);
        else
            evbuffer_add_printf(b, "tally_jetstream_ack_seconds_bucket{le=\"+Inf\"} %llu\n",
                                (unsigned long long)cum);
    }
    evbuffer_add_printf(b, "tally_jetstream_ack_seconds_count %llu\n", (unsigned long long)cum);
}

static void render_log_stats(struct app *app, struct evbuffer *b)
{
    if (app->js) {
        render_js_stats(app, b);
        return;
    }
    struct seglog_stats st;
    seglog_stats(app->log, &st);
    gauge(b, "tally_log_bytes", "Bytes of log segments on disk.", "gauge",
          (double)st.bytes_on_disk);
    gauge(b, "tally_log_segments", "Log segment files.", "gauge", (double)st.segment_count);
    gauge(b, "tally_log_start_offset", "First offset still in the log.", "gauge",
          (double)st.start_offset);
    gauge(b, "tally_log_committed_offset", "End of the committed (acknowledged) records.",
          "gauge", (double)st.committed_offset);
    gauge(b, "tally_log_queue_records", "Records waiting for the log writer.", "gauge",
          (double)st.queue_records);
    gauge(b, "tally_log_queue_bytes", "Bytes waiting for the log writer.", "gauge",
          (double)st.queue_bytes);
    gauge(b, "tally_log_queue_capacity_bytes",
          "Memory held by the log's queue buffers (bounded by 4 x the queue bounds).", "gauge",
          (double)st.queue_capacity_bytes);
    gauge(b, "tally_log_records_written_total", "Records written to the log.", "counter",
          (double)st.records_written);
    gauge(b, "tally_log_batches_written_total",
          "Batches written (a group commit writes one or more).", "counter",
          (double)st.batches_written);
    gauge(b, "tally_log_written_bytes_total", "Encoded batch bytes written.", "counter",
          (double)st.bytes_written);
    gauge(b, "tally_log_direct_written_bytes_total",
          "Of those, bytes written with O_DIRECT (groups of direct_write_min_bytes or more).",
          "counter", (double)st.direct_bytes_written);
    gauge(b, "tally_log_appends_rejected_full_total", "Appends refused: queue full.", "counter",
          (double)st.appends_rejected_full);
    gauge(b, "tally_log_poisoned", "1 when the log writer failed and refuses writes.", "gauge",
          (double)st.poisoned);
    evbuffer_add_printf(b, "# HELP tally_log_fsync_seconds fdatasync latency of the log.\n"
                           "# TYPE tally_log_fsync_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < SEGLOG_FSYNC_BUCKETS; i++) {
        cum += st.fsync_hist[i];
        if (i < SEGLOG_FSYNC_BUCKETS - 1)
            evbuffer_add_printf(b, "tally_log_fsync_seconds_bucket{le=\"%g\"} %llu\n",
                                seglog_fsync_bucket_us[i] / 1e6, (unsigned long long)cum);
        else
            evbuffer_add_printf(b, "tally_log_fsync_seconds_bucket{le=\"+Inf\"} %llu\n",
                                (unsigned long long)cum);
    }
    evbuffer_add_printf(b, "tally_log_fsync_seconds_sum %.6f\ntally_log_fsync_seconds_count "
                           "%llu\n", st.fsync_sum_us / 1e6, (unsigned long long)st.fsync_count);
}

static void on_metrics(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    (void)req;
    struct evbuffer *b = evbuffer_new();
    if (!b || metrics_render(app->metrics, b) != 0) {
        evbuffer_free(b);
        http_respond_error(ex, 503, "out of memory");
        return;
    }
    render_log_stats(app, b);
    struct rollup_lag lag;
    memset(&lag, 0, sizeof lag);
    if (app->rollups) rollup_service_lag(app->rollups, &lag);
    evbuffer_add_printf(b, "# HELP tally_consumer_lag_records Log records not yet processed by "
                           "a consumer.\n# TYPE tally_consumer_lag_records gauge\n"
                           "tally_consumer_lag_records{consumer=\"raw\"} %llu\n"
                           "tally_consumer_lag_records{consumer=\"rollup\"} %llu\n"
                           "# HELP tally_consumer_events_total Events processed by a consumer "
                           "since start.\n# TYPE tally_consumer_events_total counter\n"
                           "tally_consumer_events_total{consumer=\"raw\"} %llu\n"
                           "tally_consumer_events_total{consumer=\"rollup\"} %llu\n"
                           "# HELP tally_consumer_flushes_total Batches of output and cursor a "
                           "consumer wrote since start.\n# TYPE tally_consumer_flushes_total "
                           "counter\ntally_consumer_flushes_total{consumer=\"raw\"} %llu\n"
                           "tally_consumer_flushes_total{consumer=\"rollup\"} %llu\n",
                        (unsigned long long)lag.raw_lag, (unsigned long long)lag.rollup_lag,
                        (unsigned long long)lag.raw_events, (unsigned long long)lag.rollup_events,
                        (unsigned long long)lag.raw_flushes,
                        (unsigned long long)lag.rollup_flushes);
    evbuffer_add_printf(b, "# HELP tally_raw_compacted_hours_total Hours of the raw store rewritten "
                           "as full blocks since start.\n# TYPE tally_raw_compacted_hours_total "
                           "counter\ntally_raw_compacted_hours_total %llu\n"
                           "# HELP tally_raw_compacted_blocks_total Blocks those hours had "
                           "before.\n# TYPE tally_raw_compacted_blocks_total counter\n"
                           "tally_raw_compacted_blocks_total %llu\n",
                        (unsigned long long)lag.compacted_hours,
                        (unsigned long long)lag.compacted_blocks);
    if (app->store) {
        struct memo_stats ms;
        memo_stats(store_memo(app->store), &ms);
        evbuffer_add_printf(b, "# HELP tally_query_cache_lookups_total Day-range breakdowns "
                               "looked up in the query cache, by outcome (stale: kept but a day "
                               "of its range changed since).\n"
                               "# TYPE tally_query_cache_lookups_total counter\n"
                               "tally_query_cache_lookups_total{outcome=\"hit\"} %llu\n"
                               "tally_query_cache_lookups_total{outcome=\"miss\"} %llu\n"
                               "tally_query_cache_lookups_total{outcome=\"stale\"} %llu\n"
                               "# HELP tally_query_cache_bytes Bytes the query cache holds "
                               "(bound: query_cache_bytes_max).\n"
                               "# TYPE tally_query_cache_bytes gauge\n"
                               "tally_query_cache_bytes %llu\n",
                            (unsigned long long)ms.hits, (unsigned long long)ms.misses,
                            (unsigned long long)ms.stale, (unsigned long long)ms.bytes);
    }
    size_t len = evbuffer_get_length(b);
    const void *data = evbuffer_pullup(b, -1);
    http_respond(ex, 200, "text/plain; version=0.0.4", data, len);
    evbuffer_free(b);
}

int ops_routes(struct app *app)
{
    struct http_route health = {.methods = HTTP_M(HTTP_GET), .path = "/healthz",
                                .name = "healthz", .handler = on_healthz, .arg = app};
    struct http_route metrics = {.methods = HTTP_M(HTTP_GET), .path = "/metrics",
                                 .name = "metrics", .handler = on_metrics, .arg = app};
    int rc = http_server_route(app->http, &health);
    return rc ? rc : http_server_route(app->http, &metrics);
}
