/*
 * live: GET /api/v1/live?site_id= (API.md §4), a WebSocket pushing one site's realtime visitor
 * count and its events as they are acknowledged. See live.c for the design.
 *
 * Lifecycle (server.c): live_routes (declared in app_int.h) creates the hub as app->live and
 * registers the route, before http_server_start; live_free after seglog_close (no ingest
 * completion may publish any more) and before store_close (the ticker reads the store).
 */
#ifndef TALLY_LIVE_H
#define TALLY_LIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct live;
struct live_batch;
struct native_event;

/* Whether any live socket is open (one relaxed load): ingest builds batches only then. NULL:
 * false. Any thread. */
bool live_active(const struct live *lv);

/*
 * Summaries of n acknowledged-to-be events (ingest worker thread, before the append): site,
 * name, path, referrer host, country, device (devices[i], a ua_device) and time, formatted as
 * the socket's JSON; bots and events of hosts not allowed are left out, and nothing
 * identifying a visitor is ever copied. NULL on OOM or when nothing is left (caller owns it:
 * live_batch_free).
 */
struct live_batch *live_batch_new(const struct native_event *evs, const uint8_t *devices,
                                  uint32_t n);
void live_batch_free(struct live_batch *b);

/* Pushes a batch whose events were committed to the subscribed sockets (any thread; called
 * on the log writer: never blocks on a client, only takes the hub's mutex briefly). */
void live_publish(struct live *lv, const struct live_batch *b);

/* One encoded log record (event.h), as JetStream's tap delivers it on a processing node
 * (jslog_tap): decoded, summarised and pushed as live_publish does. Cheap when no socket is
 * open. Any thread. */
void live_publish_record(struct live *lv, const void *data, size_t len);

/* Closes every socket (1001), joins the ticker, frees. NULL is a no-op. Main thread. */
void live_free(struct live *lv);

#endif
