/*
 * ingest: the shared tail of every ingest endpoint (the native POST /v1/events in ingest.c and
 * the peers' wire formats in peer_*.c): site resolution (names and configured ids), the key's
 * site restriction, the per-IP rate limit, enrichment (visitor hash, geo, bot and host
 * verdicts), encoding, and ONE seglog_append for the whole request. Endpoints only decode their
 * format into native_events (ingest/native.h: an event plus the optional client visitor id and
 * privileged IP) and say how to answer.
 *
 * INVARIANT (durability): ans->ok is called only from the log's completion with the
 * records committed (fdatasync under fsync = always); every other path calls ans->error and
 * appends nothing. Exactly one of the two is called, exactly once, for each ingest_submit.
 *
 * THREADS. ingest_submit runs on the connection's HTTP worker thread (a route handler). The
 * answer callbacks run on that worker thread (errors found before the append) or on the log's
 * completion thread (after the append, seglog.h): they must be short and only complete the exchange
 * (http_exchange_complete queues the response back to the worker). evs and the strings they
 * point to need only live until ingest_submit returns (it encodes them before returning).
 */
#ifndef TALLY_APP_INGEST_H
#define TALLY_APP_INGEST_H

#include <stdbool.h>
#include <stdint.h>

#include "app/app_int.h"
#include "http/http_server.h"
#include "ingest/native.h"

struct ingest_answer {
    /* After the commit: answer success (N events acknowledged). */
    void (*ok)(void *arg, struct http_exchange *ex, uint32_t accepted);
    /* Any refusal: status (404 unknown site, 403 key not valid for the site, 400 invalid,
     * 429 rate limit, 503 unavailable, 413), a message, the event index (-1: the request) and
     * extra header lines ("Retry-After: N\r\n") or NULL. The peer maps it to its own format. */
    void (*error)(void *arg, struct http_exchange *ex, int status, const char *msg, int index,
                  const char *extra_headers);
    void *arg; /* must stay valid until ok or error has been called */
};

struct ingest_opts {
    bool privileged;                   /* a verified write/admin key: no rate limit */
    const struct config_site *key_site; /* the key is restricted to this site, or NULL */
    bool no_rate_limit;                 /* the endpoint authenticated otherwise (a GA4 api
                                           secret, ...) and is exempt */
};

/* ev.site of each event is the site's name or one of its configured ids (as sent); ev.ts_ms,
 * ev.received_ms, url, name, props... as decoded; ev.user_agent empty -> the request's
 * User-Agent header; ev.visitor is computed here. count >= 1. */
void ingest_submit(struct app *app, const struct http_request *req, struct http_exchange *ex,
                   struct native_event *evs, uint32_t count, const struct ingest_opts *o,
                   const struct ingest_answer *ans);

/* The visitor's IP text as ingest sees it (peer, or X-Forwarded-For behind trusted proxies). */
void ingest_client_ip(struct app *app, const struct http_request *req, char *out, size_t cap);

#endif
