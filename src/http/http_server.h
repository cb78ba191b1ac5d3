/*
 * http_server: Tally's HTTP/1.1 front end on libevent 2.1 (event_base + raw sockets; evhttp is
 * not used: it has no head/body limits and only an inactivity timeout).
 *
 * Threads. `threads` workers, each with its own event_base. Worker 0 also owns the listening
 * socket and hands every accepted connection to the worker with the fewest connections, so a
 * connection lives on one worker for its whole life. Handlers run on that worker. Each worker
 * has a mutex-protected inbox drained on an eventfd wake-up: other threads use it to complete
 * deferred exchanges, to post functions, and to hand over connections.
 *
 * Requests. A connection reads into one reused buffer; heads are parsed in place by
 * http_parser (strict, see http_parser.h), then copied with the body into the exchange's own
 * arena, so an exchange stays valid while the connection moves on (pipelining) or goes away.
 * Up to pipeline_max requests per connection are in flight; responses are always written in
 * request order, whatever order handlers complete them in.
 *
 * Exchange lifecycle and ownership:
 *   1. the worker calls the route's handler with (req, ex); from then on the handler side owns
 *      the exchange;
 *   2. the owner completes it exactly once (http_respond / http_respond_error /
 *      http_exchange_complete), from the handler itself or later from ANY thread;
 *   3. completion hands the exchange back to its worker, which writes the response in order and
 *      frees the exchange. `req` and `ex` must not be touched after the completing call.
 * If the client disconnects first, the exchange is detached and kept until it is completed;
 * the response is then dropped. Every exchange must be completed before http_server_free.
 *
 * Errors the server answers itself, all with a JSON body {"error": "..."}: parse and framing
 * errors (400/414/431/501/505, connection closed), body limits (413, decided from
 * Content-Length before the body is read, or while reading chunks, or while decoding gzip),
 * 415 unknown Content-Encoding, 417 unknown Expect, 404 unknown path, 405 wrong method (with
 * Allow), 408 head/body deadline (connection closed), 503 beyond connections_max (closed).
 * "Expect: 100-continue" gets "100 Continue" when the body is about to be read (in pipeline
 * order), or the final error status instead when the request is refused before its body.
 *
 * Closing: a response that closes the connection carries "Connection: close" (requests that
 * asked for it, HTTP/1.0 without keep-alive, server errors, and with close_on_error any 4xx/5xx
 * that is the last request in flight). When the client may still be sending (a refused body,
 * bytes after a bad head) the server shuts down its sending side and reads and discards until
 * EOF, 500 ms without bytes, or linger_ms in total, so the client reads the answer instead of a
 * connection reset; otherwise it closes at once. Clients that stop reading are closed after
 * write_timeout_ms without progress, or at once when queued responses exceed out_bytes_max.
 *
 * Memory bound per connection: input buffer <= header_bytes_max + 2 KiB, unsent output about
 * out_bytes_max, pipeline_max exchanges each holding its head plus the body bytes actually
 * received (<= body_bytes_max, and <= body_decoded_bytes_max once decoded). Connections are
 * bounded by connections_max.
 */
#ifndef TALLY_HTTP_SERVER_H
#define TALLY_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "http/http_parser.h"

struct event_base;
struct metrics;
struct http_server;
struct http_exchange;

/* Limits; http_config_defaults sets the documented defaults. 0 is not "unlimited". */
struct http_limits {
    size_t header_bytes_max;       /* request line + headers: 16384 (431) */
    size_t header_count_max;       /* header lines: 100 (431) */
    size_t url_bytes_max;          /* request-target: 8192 (414) */
    size_t body_bytes_max;         /* body as sent (after de-chunking): 1 MiB (413) */
    size_t body_decoded_bytes_max; /* after gzip/deflate: 8 MiB (413) */
    uint32_t head_timeout_ms;      /* total, first byte of a head to its end: 10000 (408) */
    uint32_t body_timeout_ms;      /* total, end of head to end of body: 30000 (408) */
    uint32_t idle_timeout_ms;      /* keep-alive (or new) connection without request: 60000 */
    uint32_t write_timeout_ms;     /* unsent output without any progress: 30000 (closed) */
    uint32_t linger_ms;            /* max discard time after a closing response: 2000 (0: none) */
    uint32_t connections_max;      /* open connections, all workers: 10000 (503 beyond) */
    uint32_t pipeline_max;         /* requests in flight per connection: 32 (then stop reading) */
    size_t out_bytes_max;          /* unsent response bytes per connection: 4 MiB (closed) */
};

struct http_config {
    const char *listen; /* "HOST:PORT", "[IPV6]:PORT"; port 0 = ephemeral. "127.0.0.1:8080" */
    unsigned threads;   /* worker threads, 1..64: 2 */
    int backlog;        /* listen(2) backlog: 1024 */
    /* >= 0: serve on this already listening TCP socket (inherited: systemd socket activation,
     * --listen-fd, a binary upgrade) instead of binding `listen`; on success the server owns it
     * (sets it non-blocking and close-on-exec, closes it in http_server_free). -1: bind. */
    int listen_fd;
    struct http_limits limits;
    /*
     * CORS for routes registered with cors = true: the allowed origins. NULL/0 or an entry "*"
     * means any origin ("Access-Control-Allow-Origin: *"); otherwise a request Origin found in
     * the list is echoed (with "Vary: Origin") and others get no CORS header.
     */
    const char *const *cors_origins;
    size_t cors_origins_count;
    /* Access-Control-Allow-Headers of preflights; NULL: echo the request's
     * Access-Control-Request-Headers (else "Content-Type, Authorization, Content-Encoding") */
    const char *cors_allow_headers;
    uint32_t cors_max_age_s; /* preflight cache: 86400 */
    bool close_on_error;     /* close after a 4xx/5xx when no other request is in flight: true */
    struct metrics *metrics; /* registry to use (not owned); NULL: a private one */
};

/* Fills cfg with the defaults above (listen "127.0.0.1:8080"). */
void http_config_defaults(struct http_config *cfg);

/*
 * The request as handlers see it. All strings are NUL-terminated and owned by the exchange:
 * valid until the exchange is completed. Read-only for handlers.
 */
struct http_request {
    enum http_method method; /* HTTP_HEAD also when a GET route serves it */
    const char *method_name;
    const char *target; /* raw request-target */
    const char *path;   /* raw path, not percent-decoded ("/" for "http://host") */
    size_t path_len;
    const char *query; /* raw query after '?', or NULL */
    size_t query_len;
    int version_minor;                 /* HTTP/1.<minor> */
    const struct http_header *headers; /* name/value also NUL-terminated */
    size_t headers_count;
    const char *body; /* decoded body ("" when none), NUL-terminated */
    size_t body_len;
    const char *client_ip; /* numeric address of the TCP peer ("::1", "127.0.0.1") */
    const struct sockaddr *peer;
    socklen_t peer_len;
    const char *route_name; /* the matched route's metrics name */
};

/* Value of the first header `name` (case-insensitive), NUL-terminated, or NULL. */
const char *http_request_header(const struct http_request *req, const char *name);
/* Percent-decoded query parameter: see http_url_param (0, TALLY_ENOENT/EINVAL/ETOOBIG). */
int http_request_query(const struct http_request *req, const char *name, char *out, size_t out_cap,
                       size_t *out_len);

/* Called on the connection's worker thread with the complete, decoded request. */
typedef void (*http_handler_fn)(struct http_request *req, struct http_exchange *ex, void *arg);

struct http_route {
    unsigned methods; /* HTTP_M(HTTP_GET) | HTTP_M(HTTP_POST) ...; GET also serves HEAD */
    const char *path; /* exact path ("/api/event"), or prefix when prefix = true */
    bool prefix;      /* exact routes win over prefixes; the longest prefix wins */
    bool cors;        /* answer OPTIONS preflight, add Access-Control-Allow-Origin */
    const char *name; /* label in metrics; NULL: the path */
    http_handler_fn handler;
    void *arg;
};

/*
 * Creates the server: validates cfg, binds and listens (so the port is known at once), creates
 * the workers' event bases. Nothing runs until http_server_start. Strings in cfg are copied.
 * Returns 0 and *out, TALLY_EINVAL for a bad config (diag says which), TALLY_EIO when the
 * address cannot be bound, TALLY_ENOMEM. Caller thread only.
 */
int http_server_new(const struct http_config *cfg, struct http_server **out);

/* Adds a route (strings copied). Before http_server_start only. 0, TALLY_EINVAL, ENOMEM. */
int http_server_route(struct http_server *srv, const struct http_route *route);

/* The bound port (useful with port 0). Any thread. */
uint16_t http_server_port(const struct http_server *srv);

/* The metrics registry in use (the configured one or the private one). Any thread. */
struct metrics *http_server_metrics(struct http_server *srv);

/* Starts the worker threads. Once. 0, TALLY_EIO/ENOMEM (then nothing runs). */
int http_server_start(struct http_server *srv);

/*
 * Graceful stop, blocking, from a thread that is not a worker: stops accepting, closes idle
 * connections (and partially received heads), lets requests whose head has arrived finish
 * (their responses say "Connection: close"), for up to drain_timeout_ms; then cuts the
 * remaining connections (their uncompleted exchanges are detached) and joins the workers.
 * Returns the number of connections that had to be cut (0 = clean). Idempotent.
 */
int http_server_stop(struct http_server *srv, uint32_t drain_timeout_ms);

/*
 * Stops (with a zero drain) if still running, then frees everything. Exchanges still not
 * completed are freed too: completing one afterwards is a use-after-free, so the owners of
 * deferred exchanges must complete them first (e.g. fail them with 503 on shutdown). Functions
 * posted but not yet run are run on the calling thread. NULL is a no-op.
 */
void http_server_free(struct http_server *srv);

/* Counters for tests and /healthz (also exported as metrics). Any thread. */
struct http_server_stats {
    uint64_t connections_open;
    uint64_t connections_accepted;
    uint64_t connections_rejected; /* beyond connections_max */
    uint64_t requests;             /* responses written, all statuses */
    uint64_t timeouts_head, timeouts_body, timeouts_idle, timeouts_write;
    uint64_t output_overflows; /* connections closed at out_bytes_max */
    uint64_t bytes_received, bytes_sent;
    uint64_t exchanges_detached; /* client gone before completion */
};
void http_server_stats(const struct http_server *srv, struct http_server_stats *st);

/*
 * Completion. Each exchange is completed exactly once, from any thread. The body (copied) is
 * sent as is; content_type NULL sends no Content-Type. extra_headers is NULL or complete header
 * lines, each ending in "\r\n" (e.g. "Retry-After: 1\r\n"); Content-Length, Connection and Date
 * are the server's. For HEAD requests the body is not sent (its length is). Status 200..599.
 * After the call, req and ex belong to the server again.
 */
void http_exchange_complete(struct http_exchange *ex, int status, const char *content_type,
                            const void *body, size_t len, const char *extra_headers);
/* http_exchange_complete without extra headers. */
void http_respond(struct http_exchange *ex, int status, const char *content_type, const void *body,
                  size_t len);
/* Completes with {"error": message} (JSON-escaped), Content-Type application/json. */
void http_respond_error(struct http_exchange *ex, int status, const char *message);

/* Writes msg as the inside of a JSON string ('"', '\\' and control characters escaped) into
 * dst (cap bytes including the NUL, cut short rather than overflow); returns the length
 * written. Any thread. */
size_t http_json_escape(char *dst, size_t cap, const char *msg);
/*
 * Adds a response header before completion (by the current owner). Name must be a token,
 * value free of CR/LF/NUL. 0, TALLY_EINVAL, TALLY_ENOMEM.
 */
int http_exchange_add_header(struct http_exchange *ex, const char *name, const char *value);

/* The request of an exchange (valid until completion). */
const struct http_request *http_exchange_request(const struct http_exchange *ex);
/* The worker's event_base: only usable from code running on that worker. */
struct event_base *http_exchange_base(const struct http_exchange *ex);
/* Index (0..threads-1) of the worker owning the exchange. Any thread. */
unsigned http_exchange_worker(const struct http_exchange *ex);
/*
 * Runs fn(arg) on worker `worker` soon (any thread; from the worker itself it runs on a later
 * loop iteration). 0, TALLY_ENOMEM, TALLY_EINVAL (no such worker), TALLY_ECLOSED (stopped).
 */
int http_server_post(struct http_server *srv, unsigned worker, void (*fn)(void *arg), void *arg);
/* http_server_post to the exchange's worker. */
int http_exchange_post(struct http_exchange *ex, void (*fn)(void *arg), void *arg);

/*
 * Streamed responses (http_stream.c), for bodies too large or too slow to build at once
 * (exports). Instead of completing the exchange, its owner starts a stream: the head (status,
 * content type, extra headers, "Transfer-Encoding: chunked"; HTTP/1.0 clients get a body that
 * ends when the connection closes) is written in request order, then every
 * http_stream_write becomes one or more chunks, and http_stream_finish writes the last chunk.
 *
 * Back-pressure: at most window_bytes (0: HTTP_STREAM_WINDOW_DEFAULT) wait in the stream and
 * about as much in the connection's output; beyond that http_stream_write waits for the client
 * (timeout_ms < 0: as long as it takes; > 0: at most that long, then TALLY_EAGAIN with nothing
 * written; 0: TALLY_EAGAIN at once). Memory per stream is therefore bounded whatever the
 * client does. A client that stops reading is cut after write_timeout_ms like any other.
 *
 * Abort: when the exchange goes away (client disconnected, write timeout, server stopping, a
 * HEAD request, which gets the head only) http_stream_write returns TALLY_ECLOSED from then
 * on: the producer should stop. http_stream_abort ends a stream whose producer failed midway:
 * the connection is closed without the final chunk, so the client sees a truncated body, never
 * a complete-looking one.
 *
 * Ownership and threads: http_stream_start completes the exchange (req and ex must not be
 * touched afterwards; copy what the producer needs first) and returns a handle the caller owns
 * until exactly one call of http_stream_finish or http_stream_abort. Any thread, but a producer
 * on the exchange's own worker thread must use timeout_ms 0 (it would wait for itself).
 */
#define HTTP_STREAM_WINDOW_DEFAULT (256u << 10)
struct http_stream;

/* 0 with *out; TALLY_ENOMEM (the exchange is then completed with 503 and *out is NULL). */
int http_stream_start(struct http_exchange *ex, int status, const char *content_type,
                      const char *extra_headers, size_t window_bytes, struct http_stream **out);
/* Queues len bytes (copied). 0, TALLY_EAGAIN (window full, see above), TALLY_ECLOSED (the
 * client is gone: stop producing), TALLY_ENOMEM. */
int http_stream_write(struct http_stream *st, const void *data, size_t len, int timeout_ms);
/* Whether the client is gone (the next write would return TALLY_ECLOSED). */
bool http_stream_closed(struct http_stream *st);
/* Ends the body (the bytes already written are still sent) and releases the handle. 0, or
 * TALLY_ECLOSED when the client was gone. */
int http_stream_finish(struct http_stream *st);
/* Ends the response as failed (see above) and releases the handle. NULL is a no-op. */
void http_stream_abort(struct http_stream *st);

/*
 * WebSocket (RFC 6455, http_ws.c; its header comment has the protocol rules). A GET route takes
 * the connection over: it checks the handshake with http_ws_check (and answers the returned
 * status itself, e.g. with http_respond_error), does its own checks (auth...), then calls
 * http_ws_accept, which completes the exchange with 101 and returns a handle. Once the 101 is
 * written the connection speaks WebSocket: the server answers pings, reassembles, validates
 * and discards client messages, handles the close handshake and closes bad frames with
 * 1002 / 1007 / 1009. The handle's owner pushes text messages from any thread.
 *
 * Bounds: a client message (reassembled) is at most message_bytes_max (1009 beyond); unsent
 * server messages (queue + connection output) at most queue_bytes_max: a send beyond it
 * fails with TALLY_EFULL and the connection is cut (slow consumer).
 *
 * Ownership: the handle is the caller's until exactly one http_ws_release, whatever happens
 * to the connection. A request carrying an Upgrade header ends its connection's pipeline (the
 * following bytes are frames); an answer other than 101 closes the connection.
 */
struct http_ws;
struct http_ws_config {
    size_t message_bytes_max; /* reassembled client message: 64 KiB (close 1009 beyond) */
    size_t queue_bytes_max;   /* unsent server messages: 256 KiB (slow consumer cut beyond) */
};
void http_ws_config_defaults(struct http_ws_config *cfg);
/* 0 when req is a valid WebSocket handshake, else the status to answer (400, or 426 for a
 * wrong Upgrade / version) with *msg saying why. Any thread (the request must be valid). */
int http_ws_check(const struct http_request *req, const char **msg);
/* Completes ex with 101 (extra_headers: NULL or complete lines) and returns the handle in
 * *out. cfg NULL: the defaults. 0, or TALLY_ENOMEM (ex then completed with 503, *out NULL).
 * Any thread; the request must have passed http_ws_check. */
int http_ws_accept(struct http_exchange *ex, const struct http_ws_config *cfg,
                   const char *extra_headers, struct http_ws **out);
/* Queues one text message (copied; must be UTF-8). Any thread. 0; TALLY_EFULL: the client is
 * too slow and is being disconnected; TALLY_ECLOSED: the connection is gone or closing;
 * TALLY_ENOMEM. */
int http_ws_send(struct http_ws *ws, const char *text, size_t len);
/* Whether the connection is gone (or being cut): the owner should release the handle. */
bool http_ws_closed(struct http_ws *ws);
/* Releases the handle; a non-zero close_code first closes the connection with that status
 * (e.g. 1001 going away) if it is still open. NULL is a no-op. Any thread. */
void http_ws_release(struct http_ws *ws, uint16_t close_code);

/* Reason phrase for a status ("Not Found"); "Unknown" for others. */
const char *http_status_reason(int status);

#endif
