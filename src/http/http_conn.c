/*
 * http_conn: the connection state machine of the HTTP server (model in http_server.h, shared
 * structures in http_internal.h). Invariants:
 *
 *  1. A connection (struct conn) belongs to one worker and is only touched on that worker's
 *     thread. Its exchanges form a FIFO (q_head..q_tail) in request order; only q_head may be
 *     written out, and only once it is EX_DONE and its body is no longer being read.
 *  2. Connection states: C_HEAD (waiting for / parsing a head), C_BODY (reading the body of
 *     `cur`, always q_tail), C_LINGER (final response sent, sending side shut down, discarding
 *     input until EOF or linger_ms). `no_more` stops parsing new heads (close pending);
 *     `closing` says a response with "Connection: close" was written.
 *  3. Exchange phases: EX_READING (head parsed, body arriving) -> EX_HANDLER (handed to the
 *     handler; only the completer touches the response fields) -> EX_DONE (response stored,
 *     back with the worker). Requests the server answers itself go straight to EX_DONE.
 *     A completion from another thread stores the response in the exchange and pushes it on
 *     the worker's inbox; the worker alone frees exchanges, so no refcount is needed: a
 *     connection that dies detaches its EX_HANDLER exchanges (conn = NULL, kept on the
 *     worker's detached list) and frees the others; a detached exchange is freed when its
 *     completion arrives.
 *  4. Re-entrancy: every callback holds `busy` while it runs; http_conn_kill closes the socket and
 *     detaches at once but frees the struct only when busy drops to 0; code re-checks `dead`
 *     after anything that may kill.
 *  5. Timers: one lazy timer per connection. Deadlines are plain fields (head start, body end,
 *     last activity, write progress, linger end); the timer is only re-armed when a deadline
 *     moves earlier than the armed time, and on firing it re-evaluates them. So the per-request
 *     hot path stores a timestamp and never touches the timer heap.
 */
#include "http/http_internal.h"

#include <errno.h>
#include <event2/event.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/decimal.h"
#include "core/metrics.h"
#include "http/http_inflate.h"
#include "http/http_url.h"
#include "tally/error.h"

static void conn_write_now(struct conn *c);

/* ---- exchanges ---- */

static void *ex_alloc(struct http_exchange *ex, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (EX_ARENA_BYTES - ex->arena_used >= n) {
        void *p = ex->arena + ex->arena_used;
        ex->arena_used += n;
        return p;
    }
    struct block *b = malloc(sizeof *b + n);
    if (!b) return NULL;
    b->next = ex->blocks;
    ex->blocks = b;
    return b->data;
}

static struct http_exchange *ex_new(struct worker *w)
{
    struct http_exchange *ex = w->pool;
    if (ex) {
        w->pool = ex->next;
        w->pool_count--;
    } else {
        ex = malloc(sizeof *ex);
        if (!ex) return NULL;
    }
    memset(ex, 0, offsetof(struct http_exchange, arena));
    ex->qn.kind = Q_DONE;
    ex->w = w;
    atomic_init(&ex->completed, 0);
    ex->req.body = "";
    ex->req.method_name = "";
    ex->req.target = "";
    ex->req.path = "";
    ex->req.client_ip = "";
    ex->req.route_name = "none";
    return ex;
}

void http_ex_free(struct worker *w, struct http_exchange *ex)
{
    if (ex->stream) {
        http_stream_detach(ex->stream);
        ex->stream = NULL;
    }
    if (ex->ws) {
        http_ws_detach(ex->ws);
        ex->ws = NULL;
    }
    struct block *b = ex->blocks;
    while (b) {
        struct block *n = b->next;
        free(b);
        b = n;
    }
    if (ex->body_heap) free(ex->body);
    free(ex->xhdr);
    if (w->pool_count < EX_POOL_MAX) {
        ex->next = w->pool;
        w->pool = ex;
        w->pool_count++;
    } else {
        free(ex);
    }
}

static void detached_add(struct worker *w, struct http_exchange *ex)
{
    ex->conn = NULL;
    ex->dprev = NULL;
    ex->dnext = w->detached;
    if (w->detached) w->detached->dprev = ex;
    w->detached = ex;
    STAT_ADD(w->srv, st_detached, 1);
}

void http_detached_remove(struct worker *w, struct http_exchange *ex)
{
    if (ex->dprev)
        ex->dprev->dnext = ex->dnext;
    else if (w->detached == ex)
        w->detached = ex->dnext;
    if (ex->dnext) ex->dnext->dprev = ex->dprev;
    ex->dprev = ex->dnext = NULL;
}

static int xhdr_append(struct http_exchange *ex, const char *s, size_t n)
{
    if (ex->xhdr_len + n > ex->xhdr_cap) {
        size_t cap = ex->xhdr_cap ? ex->xhdr_cap : 128;
        while (cap < ex->xhdr_len + n)
            cap *= 2;
        char *p = realloc(ex->xhdr, cap);
        if (!p) return TALLY_ENOMEM;
        ex->xhdr = p;
        ex->xhdr_cap = cap;
    }
    memcpy(ex->xhdr + ex->xhdr_len, s, n);
    ex->xhdr_len += n;
    return TALLY_OK;
}

size_t http_json_escape(char *dst, size_t cap, const char *msg)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p && n + 7 < cap; p++) {
        if (*p == '"' || *p == '\\') {
            dst[n++] = '\\';
            dst[n++] = (char)*p;
        } else if (*p < 0x20) {
            n += (size_t)snprintf(dst + n, cap - n, "\\u%04x", *p);
        } else {
            dst[n++] = (char)*p;
        }
    }
    dst[n] = 0;
    return n;
}

static const char oom_body[] = "{\"error\": \"out of memory\"}";

/* Stores a server-made JSON error response in ex (from the worker or the completer). */
static void ex_set_error(struct http_exchange *ex, int status, const char *msg)
{
    size_t cap = strlen(msg) * 6 + 16;
    char *b = ex_alloc(ex, cap + 16);
    ex->status = status;
    ex->ctype = "application/json";
    ex->ctype_len = 16;
    if (!b) {
        ex->rbody = oom_body;
        ex->rbody_len = sizeof oom_body - 1;
        return;
    }
    size_t n = (size_t)snprintf(b, cap, "{\"error\": \"");
    n += http_json_escape(b + n, cap - n - 3, msg);
    memcpy(b + n, "\"}", 3);
    ex->rbody = b;
    ex->rbody_len = n + 2;
}

/* Copies a response into ex; false on OOM. */
static bool ex_store(struct http_exchange *ex, int status, const char *ctype, const void *body,
                     size_t len, const char *extra, size_t xlen)
{
    ex->status = status;
    ex->ctype = NULL;
    ex->ctype_len = 0;
    if (ctype) {
        size_t n = strlen(ctype);
        char *p = ex_alloc(ex, n + 1);
        if (!p) return false;
        memcpy(p, ctype, n + 1);
        ex->ctype = p;
        ex->ctype_len = n;
    }
    ex->rbody = NULL;
    ex->rbody_len = len;
    if (len && !ex->head_only) {
        char *p = ex_alloc(ex, len);
        if (!p) return false;
        memcpy(p, body, len);
        ex->rbody = p;
    }
    return xlen == 0 || xhdr_append(ex, extra, xlen) == TALLY_OK;
}

static void ex_store_oom(struct http_exchange *ex)
{
    ex->status = 503;
    ex->ctype = "application/json";
    ex->ctype_len = 16;
    ex->rbody = oom_body;
    ex->rbody_len = sizeof oom_body - 1;
    ex->xhdr_len = 0;
}

bool http_ex_store(struct http_exchange *ex, int status, const char *ctype, const char *extra,
                   size_t xlen)
{
    if (ex_store(ex, status, ctype, NULL, 0, extra, xlen)) return true;
    ex_store_oom(ex);
    return false;
}

/* ---- output ---- */

static bool out_reserve(struct conn *c, size_t need)
{
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_cap - c->out_len >= need) return true;
    if (c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_cap - c->out_len >= need) return true;
    }
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap - c->out_len < need)
        cap *= 2;
    char *p = realloc(c->out, cap);
    if (!p) return false;
    c->out = p;
    c->out_cap = cap;
    return true;
}

static inline char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}
#define PUTS(p, lit) put((p), (lit), sizeof(lit) - 1)

static void worker_date(struct worker *w)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = time(NULL);
    if (t == w->date_sec && w->date_len) return;
    w->date_sec = t;
    struct tm tm;
    gmtime_r(&t, &tm);
    int n = snprintf(w->date, sizeof w->date, "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                     days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900,
                     tm.tm_hour, tm.tm_min, tm.tm_sec);
    w->date_len = n > 0 && (size_t)n < sizeof w->date ? (size_t)n : 0;
}

static const char *cors_origin(const struct http_server *srv, const struct http_exchange *ex,
                               bool *vary)
{
    *vary = false;
    if (srv->cors_any) return "*";
    const char *origin = http_request_header(&ex->req, "origin");
    if (!origin) return NULL;
    for (size_t i = 0; i < srv->cors_count; i++) {
        if (strcmp(srv->cors_origins[i], origin) == 0) {
            *vary = true;
            return origin;
        }
    }
    return NULL;
}

/*
 * Writes the response of ex (== q_head) into the output buffer, counts it, pops and frees ex.
 * Returns false when the connection died (output cap or OOM); ex is freed either way.
 */
static bool conn_emit(struct conn *c, struct http_exchange *ex, int status, const char *ctype,
                      size_t ctype_len, const void *body, size_t blen, const char *extra,
                      size_t xlen)
{
    struct worker *w = c->w;
    struct http_server *srv = w->srv;
    TALLY_ASSERT(c->q_head == ex && c->cur != ex);
    bool upgrade = status == 101 && ex->ws && !ex->head_only;
    bool bodyless = status == 204 || status == 304 || status == 101;
    bool send_body = !bodyless && !ex->head_only && blen > 0;
    bool close = !upgrade && (ex->close_after ||
                              (srv->cfg.close_on_error && status >= 400 && ex == c->q_tail));
    bool vary = false;
    const char *acao = ex->cors ? cors_origin(srv, ex, &vary) : NULL;
    size_t acao_len = acao ? strlen(acao) : 0;
    const char *reason = http_status_reason(status);
    size_t reason_len = strlen(reason);
    worker_date(w);
    size_t need = 32 + reason_len + w->date_len + 20 + ctype_len + 40 + 26 + 48 + acao_len +
                  ex->xhdr_len + xlen + (send_body ? blen : 0);

    size_t pending = c->out_len - c->out_off;
    if (pending && pending + need > srv->cfg.limits.out_bytes_max) {
        /* The client has not taken earlier output: try once more, then give up on it. */
        conn_write_now(c);
        if (c->dead) return false;
        pending = c->out_len - c->out_off;
        if (pending && pending + need > srv->cfg.limits.out_bytes_max) {
            STAT_ADD(srv, st_overflow, 1);
            http_conn_kill(c);
            return false;
        }
    }
    if (!out_reserve(c, need)) {
        http_conn_kill(c);
        return false;
    }
    char *p = c->out + c->out_len;
    p = PUTS(p, "HTTP/1.1 ");
    p = decimal_u64(p, (uint64_t)status);
    *p++ = ' ';
    p = put(p, reason, reason_len);
    p = PUTS(p, "\r\n");
    p = put(p, w->date, w->date_len);
    if (ctype) {
        p = PUTS(p, "Content-Type: ");
        p = put(p, ctype, ctype_len);
        p = PUTS(p, "\r\n");
    }
    const bool stream = ex->stream != NULL && !ex->head_only && !bodyless;
    if (stream) {
        /* HTTP/1.0 has no chunked framing: the end of the body is the end of the connection */
        ex->stream_chunked = ex->req.version_minor >= 1;
        if (ex->stream_chunked)
            p = PUTS(p, "Transfer-Encoding: chunked\r\n");
        else
            close = true;
    } else if (ex->stream) {
        p = PUTS(p, "Transfer-Encoding: chunked\r\n"); /* HEAD: what GET would send */
    } else if (!bodyless) {
        p = PUTS(p, "Content-Length: ");
        p = decimal_u64(p, blen);
        p = PUTS(p, "\r\n");
    }
    if (close)
        p = PUTS(p, "Connection: close\r\n");
    else if (ex->req.version_minor == 0)
        p = PUTS(p, "Connection: keep-alive\r\n");
    if (acao) {
        p = PUTS(p, "Access-Control-Allow-Origin: ");
        p = put(p, acao, acao_len);
        p = PUTS(p, "\r\n");
        if (vary) p = PUTS(p, "Vary: Origin\r\n");
    }
    if (ex->xhdr_len) p = put(p, ex->xhdr, ex->xhdr_len);
    if (xlen) p = put(p, extra, xlen);
    p = PUTS(p, "\r\n");
    if (send_body) p = put(p, body, blen);
    c->out_len = (size_t)(p - c->out);

    unsigned slot = status >= 0 && status < 600 ? http_status_slot[status] : NSTATUS - 1;
    metrics_counter_add(ex->route ? ex->route->status_ctr[slot] : srv->none_ctr[slot], 1);
    STAT_ADD(srv, st_requests, 1);
    if (ex->t0_ns) metrics_histogram_observe(srv->latency, (double)(mono_ns() - ex->t0_ns) / 1e9);

    if (upgrade) {
        /* the connection is the WebSocket's from here on (the request was the last one) */
        struct http_ws *ws = ex->ws;
        ex->ws = NULL;
        http_conn_pop(c, ex, false);
        http_ws_attach(c, ws);
        return true;
    }
    if (stream) {
        /* the body comes from the producer (http_stream_pump); ex stays at q_head */
        ex->phase = EX_STREAMING;
        ex->close_after = close;
        return true;
    }
    http_conn_pop(c, ex, close);
    return true;
}

void http_conn_pop(struct conn *c, struct http_exchange *ex, bool close)
{
    TALLY_ASSERT(c->q_head == ex);
    c->q_head = ex->next;
    if (!c->q_head) c->q_tail = NULL;
    c->q_count--;
    http_ex_free(c->w, ex);
    if (close) {
        c->closing = true;
        c->no_more = true;
        if (c->in_len > c->in_off) c->unread = true;
        c->in_off = c->in_len = 0;
        c->head_partial = false;
    }
}

bool http_conn_emit_out(struct conn *c, const char *data, size_t len)
{
    if (!out_reserve(c, len)) {
        http_conn_kill(c);
        return false;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return true;
}

/*
 * The last response is out. Closing a socket with unread input makes the kernel send a reset,
 * which can destroy that response before the client reads it; so when the client may still be
 * sending (a refused body, garbage after a bad head), shut down our side and read-and-discard
 * until EOF, LINGER_QUIET_MS without bytes, or linger_ms in total. Otherwise close at once.
 */
static void conn_begin_linger(struct conn *c)
{
    struct worker *w = c->w;
    uint32_t linger = w->srv->cfg.limits.linger_ms;
    if (c->peer_eof || w->stopping || linger == 0) {
        http_conn_kill(c);
        return;
    }
    if (!c->unread) {
        char buf[1024];
        ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EINTR)) {
            http_conn_kill(c); /* nothing pending (EAGAIN), EOF or error: a plain close */
            return;
        }
    }
    shutdown(c->fd, SHUT_WR);
    c->state = C_LINGER;
    c->cur = NULL;
    c->in_off = c->in_len = 0;
    c->linger_deadline_ms = w->now_ms + linger;
    c->linger_quiet_ms = w->now_ms + (linger < LINGER_QUIET_MS ? linger : LINGER_QUIET_MS);
}

/* Sends as much pending output as the socket takes. */
static void conn_write_now(struct conn *c)
{
    struct http_server *srv = c->w->srv;
    size_t pending;
    bool progress = false;
    while ((pending = c->out_len - c->out_off) > 0) {
        ssize_t n = send(c->fd, c->out + c->out_off, pending, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
            STAT_ADD(srv, st_tx, (uint64_t)n);
            progress = true;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        http_conn_kill(c);
        return;
    }
    uint64_t now = c->w->now_ms;
    if (pending) {
        if (progress || !c->write_deadline_ms)
            c->write_deadline_ms = now + srv->cfg.limits.write_timeout_ms;
        if (!c->writing) {
            event_add(c->ev_write, NULL);
            c->writing = true;
        }
        return;
    }
    c->write_deadline_ms = 0;
    c->out_off = c->out_len = 0;
    if (c->out_cap > OUT_KEEP_BYTES) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    if (c->writing) {
        event_del(c->ev_write);
        c->writing = false;
    }
    if (progress) c->active_ms = now;
    if (c->closing && c->state != C_LINGER) conn_begin_linger(c);
}

/* Writes every finished response at the head of the queue, then sends. */
void http_conn_flush(struct conn *c)
{
again:
    while (!c->dead && c->q_head && c->q_head != c->cur) {
        struct http_exchange *ex = c->q_head;
        if (ex->phase == EX_STREAMING) {
            if (!http_stream_pump(c, ex)) break; /* more to come from the producer */
            continue;
        }
        if (ex->phase != EX_DONE) break;
        conn_emit(c, ex, ex->status, ex->ctype, ex->ctype_len, ex->rbody, ex->rbody_len, NULL, 0);
    }
    if (c->dead) return;
    if (c->state == C_WS) {
        if (!c->closing) http_ws_input(c);
        if (!c->dead && !c->closing) http_ws_pump(c);
        if (c->dead) return;
        if (c->out_len > c->out_off) conn_write_now(c);
        if (!c->dead && c->ws) http_ws_note_output(c);
        return;
    }
    struct http_exchange *cur = c->cur;
    if (cur && cur == c->q_head && cur->want_continue && !cur->continue_sent &&
        !cur->body_started && cur->phase == EX_READING) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (!out_reserve(c, sizeof cont)) {
            http_conn_kill(c);
            return;
        }
        memcpy(c->out + c->out_len, cont, sizeof cont - 1);
        c->out_len += sizeof cont - 1;
        cur->continue_sent = true;
    }
    if (c->out_len > c->out_off) conn_write_now(c);
    /* The socket took everything at once (no write event armed): a stream the window had
     * stopped would wait for a wake-up that never comes. Each round sends its bytes or arms
     * the write event, so this ends. */
    if (!c->dead && c->out_len == c->out_off && c->q_head && c->q_head != c->cur &&
        c->q_head->phase == EX_STREAMING && http_stream_ready(c->q_head->stream))
        goto again;
}

/* ---- connection lifecycle ---- */

static void conn_free_mem(struct conn *c)
{
    free(c->in);
    free(c->out);
    free(c);
}

void http_conn_release(struct conn *c)
{
    if (--c->busy == 0 && c->dead) conn_free_mem(c);
}

void http_conn_kill(struct conn *c)
{
    if (c->dead) return;
    struct worker *w = c->w;
    struct http_server *srv = w->srv;
    c->dead = true;
    struct http_exchange *ex = c->q_head;
    while (ex) {
        struct http_exchange *next = ex->next;
        ex->next = NULL;
        if (ex->phase == EX_HANDLER)
            detached_add(w, ex);
        else
            http_ex_free(w, ex);
        ex = next;
    }
    c->q_head = c->q_tail = c->cur = NULL;
    c->q_count = 0;
    if (c->ws) {
        http_ws_detach(c->ws);
        c->ws = NULL;
    }
    event_free(c->ev_read);
    event_free(c->ev_write);
    event_free(c->ev_timer);
    c->ev_read = c->ev_write = c->ev_timer = NULL;
    close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    atomic_fetch_sub_explicit(&w->nconns, 1, RELAXED);
    atomic_fetch_sub_explicit(&srv->st_open, 1, RELAXED);
    if (w->stopping && !w->conns) event_base_loopbreak(w->base);
    if (!c->busy) conn_free_mem(c);
}

static void conn_arm(struct conn *c, uint64_t at)
{
    uint64_t now = c->w->now_ms;
    uint64_t ms = at > now ? at - now : 0;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    event_add(c->ev_timer, &tv);
    c->timer_at = at;
}

/* Read interest, the end of a finished connection, and the deadline timer. */
void http_conn_update(struct conn *c)
{
    if (c->dead) return;
    const struct http_limits *L = &c->w->srv->cfg.limits;
    size_t pending = c->out_len - c->out_off;
    if (!c->closing && c->no_more && c->q_count == 0 && pending == 0 && c->state == C_HEAD) {
        http_conn_kill(c);
        return;
    }
    bool want;
    if (c->peer_eof)
        want = false;
    else if (c->state == C_LINGER)
        want = true;
    else if (c->closing)
        want = false;
    else if (c->state == C_BODY || c->state == C_WS)
        want = true;
    else if (c->no_more)
        want = false;
    else
        want = c->q_count < L->pipeline_max && pending < OUT_HIGH_WATER;
    if (want != c->reading) {
        if (want)
            event_add(c->ev_read, NULL);
        else
            event_del(c->ev_read);
        c->reading = want;
    }

    uint64_t dl = 0;
    if (c->state == C_LINGER)
        dl =
            c->linger_quiet_ms < c->linger_deadline_ms ? c->linger_quiet_ms : c->linger_deadline_ms;
    else if (c->state == C_BODY && want)
        dl = c->body_deadline_ms;
    else if (c->head_partial && want)
        dl = c->head_start_ms + L->head_timeout_ms;
    else if (c->q_count == 0 && pending == 0 && !c->closing && c->state == C_HEAD)
        dl = c->active_ms + L->idle_timeout_ms;
    if (c->write_deadline_ms && (!dl || c->write_deadline_ms < dl)) dl = c->write_deadline_ms;
    if (dl && (!c->timer_at || dl < c->timer_at)) conn_arm(c, dl);
}

static void queue_push(struct conn *c, struct http_exchange *ex)
{
    ex->conn = c;
    ex->next = NULL;
    if (c->q_tail)
        c->q_tail->next = ex;
    else
        c->q_head = ex;
    c->q_tail = ex;
    c->q_count++;
    c->nreq++;
}

/* Answers `status` after the requests already queued, then closes. */
static void conn_fail(struct conn *c, int status, const char *msg)
{
    struct http_exchange *ex = ex_new(c->w);
    if (!ex) {
        http_conn_kill(c);
        return;
    }
    queue_push(c, ex);
    ex_set_error(ex, status, msg);
    ex->phase = EX_DONE;
    ex->close_after = true;
    c->no_more = true;
    c->unread = true;
    c->in_off = c->in_len = 0;
    c->head_partial = false;
}

/* The request whose body is being read fails: answer `status` for it, then close. */
static void conn_fail_current(struct conn *c, int status, const char *msg)
{
    struct http_exchange *ex = c->cur;
    c->cur = NULL;
    c->state = C_HEAD;
    if (ex->phase == EX_READING) {
        ex->xhdr_len = 0;
        ex_set_error(ex, status, msg);
        ex->phase = EX_DONE;
    }
    ex->close_after = true;
    c->no_more = true;
    c->unread = true;
    c->in_off = c->in_len = 0;
    c->head_partial = false;
}

/* ---- requests ---- */

static void conn_dispatch(struct conn *c, struct http_exchange *ex)
{
    struct worker *w = c->w;
    const struct http_limits *L = &w->srv->cfg.limits;
    if (ex->body) ex->body[ex->body_len] = 0;
    if (ex->coding != HTTP_CODING_IDENTITY && ex->body_len > 0) {
        char *dec;
        size_t dlen;
        int rc = http_inflate_body(w->inflate, ex->coding, ex->body, ex->body_len,
                                   L->body_decoded_bytes_max, &dec, &dlen);
        if (rc != TALLY_OK) {
            if (rc == TALLY_ETOOBIG)
                ex_set_error(ex, 413, "decoded request body too large");
            else if (rc == TALLY_ECORRUPT)
                ex_set_error(ex, 400, "invalid gzip/deflate request body");
            else
                ex_set_error(ex, 503, "out of memory");
            ex->phase = EX_DONE;
            return;
        }
        if (ex->body_heap) free(ex->body);
        ex->body = dec;
        ex->body_len = dlen;
        ex->body_cap = dlen + 1;
        ex->body_heap = true;
    }
    ex->req.body = ex->body ? ex->body : "";
    ex->req.body_len = ex->body_len;
    ex->phase = EX_HANDLER;
    struct route *rt = ex->route;
    rt->fn(&ex->req, ex, rt->arg); /* ex may be completed and freed from here on */
}

/* Room for n more body bytes and the NUL; grows geometrically, never beyond cap_max. */
static bool body_reserve(struct http_exchange *ex, size_t n, size_t cap_max)
{
    if (ex->body_len + n + 1 <= ex->body_cap) return true;
    size_t cap = ex->body_cap ? ex->body_cap : 1024;
    while (cap < ex->body_len + n + 1)
        cap *= 2;
    if (cap > cap_max) cap = cap_max;
    if (cap < ex->body_len + n + 1) return false;
    char *p;
    if (ex->body_heap) {
        p = realloc(ex->body, cap);
    } else {
        p = malloc(cap);
        if (p && ex->body_len) memcpy(p, ex->body, ex->body_len);
    }
    if (!p) return false;
    ex->body = p;
    ex->body_cap = cap;
    ex->body_heap = true;
    return true;
}

static bool body_append(struct http_exchange *ex, const char *d, size_t n, size_t cap_max)
{
    if (!body_reserve(ex, n, cap_max)) return false;
    memcpy(ex->body + ex->body_len, d, n);
    ex->body_len += n;
    return true;
}

/* Consumes body bytes of c->cur; true when the body is complete (state back to C_HEAD). */
static bool conn_body(struct conn *c)
{
    struct http_exchange *ex = c->cur;
    size_t avail = c->in_len - c->in_off;
    const char *p = c->in + c->in_off;
    if (!ex->chunked) {
        size_t n = avail < ex->body_need ? avail : (size_t)ex->body_need;
        if (n && !ex->discard && !body_append(ex, p, n, ex->body_len + (size_t)ex->body_need + 1)) {
            http_conn_kill(c);
            return false;
        }
        if (n) ex->body_started = true;
        ex->body_need -= n;
        c->in_off += n;
        if (ex->body_need) return false;
    } else {
        while (avail > 0 && !http_chunked_done(&ex->ch)) {
            const char *d;
            size_t dl;
            ssize_t r = http_parse_chunked(&ex->ch, p, avail, &d, &dl);
            if (r < 0) {
                conn_fail_current(c, http_perr_status(ex->ch.err), http_perr_message(ex->ch.err));
                return false;
            }
            ex->body_started = true;
            if (dl && !ex->discard &&
                !body_append(ex, d, dl, c->w->srv->cfg.limits.body_bytes_max + 1)) {
                http_conn_kill(c);
                return false;
            }
            p += r;
            avail -= (size_t)r;
            c->in_off += (size_t)r;
        }
        if (!http_chunked_done(&ex->ch)) return false;
    }
    c->cur = NULL;
    c->state = C_HEAD;
    if (ex->phase == EX_READING) conn_dispatch(c, ex);
    return true;
}

/* Sets an early (pre-body) answer for ex; the body, if any, is discarded or the conn closed. */
static void ex_early(struct http_exchange *ex, int status, const char *msg)
{
    if (msg) {
        ex_set_error(ex, status, msg);
    } else {
        ex->status = status;
        ex->ctype = NULL;
        ex->rbody = NULL;
        ex->rbody_len = 0;
    }
    ex->phase = EX_DONE;
}

static void ex_preflight(struct http_exchange *ex, const struct http_server *srv,
                         const struct group *g)
{
    char buf[512];
    int n;
    if (!g->cors) {
        n = snprintf(buf, sizeof buf, "Allow: %s\r\n", g->allow);
    } else {
        const char *hdrs = srv->cors_allow_headers;
        if (!hdrs) hdrs = http_request_header(&ex->req, "access-control-request-headers");
        if (!hdrs || !*hdrs) hdrs = "Content-Type, Authorization, Content-Encoding";
        n = snprintf(buf, sizeof buf,
                     "Access-Control-Allow-Methods: %s\r\nAccess-Control-Allow-Headers: %.300s\r\n"
                     "Access-Control-Max-Age: %u\r\n",
                     g->allow, hdrs, srv->cfg.cors_max_age_s);
    }
    ex_early(ex, 204, NULL);
    if (n > 0 && (size_t)n < sizeof buf && xhdr_append(ex, buf, (size_t)n) != TALLY_OK)
        ex_store_oom(ex);
}

/* Copies a parsed head into a new exchange, routes it, and starts its body. */
static struct http_exchange *conn_begin(struct conn *c, const struct http_head *h,
                                        const struct http_header *hdrs, size_t head_len)
{
    struct worker *w = c->w;
    struct http_server *srv = w->srv;
    const struct http_limits *L = &srv->cfg.limits;
    struct http_exchange *ex = ex_new(w);
    if (!ex) {
        http_conn_kill(c);
        return NULL;
    }
    queue_push(c, ex);
    ex->t0_ns = mono_ns();
    const char *base = c->in + c->in_off;
    size_t hc = h->headers_count, iplen = strlen(c->ip);
    char *copy = ex_alloc(ex, head_len + 1);
    struct http_header *harr = ex_alloc(ex, (hc ? hc : 1) * sizeof *harr);
    char *path = ex_alloc(ex, h->path_len + 2);
    char *ip = ex_alloc(ex, iplen + 1);
    struct sockaddr *peer = ex_alloc(ex, c->peer_len);
    if (!copy || !harr || !path || !ip || !peer) {
        http_conn_kill(c);
        return NULL;
    }
    c->in_off += head_len;
    memcpy(copy, base, head_len);
    copy[head_len] = 0;
#define REBASE(ptr) (copy + ((ptr)-base))
    struct http_request *r = &ex->req;
    r->method = h->method_id;
    char *m = REBASE(h->method);
    m[h->method_len] = 0;
    r->method_name = m;
    char *t = REBASE(h->target);
    t[h->target_len] = 0;
    r->target = t;
    if (h->path_len) {
        memcpy(path, REBASE(h->path), h->path_len);
        path[h->path_len] = 0;
        r->path_len = h->path_len;
    } else {
        path[0] = (h->target_len == 1 && t[0] == '*') ? '*' : '/';
        path[1] = 0;
        r->path_len = 1;
    }
    r->path = path;
    if (h->query) {
        r->query = REBASE(h->query);
        r->query_len = h->query_len;
    }
    for (size_t i = 0; i < hc; i++) {
        char *name = REBASE(hdrs[i].name), *value = REBASE(hdrs[i].value);
        harr[i] = (struct http_header){name, hdrs[i].name_len, value, hdrs[i].value_len};
        name[hdrs[i].name_len] = 0;
        value[hdrs[i].value_len] = 0;
    }
#undef REBASE
    r->version_minor = h->version_minor;
    r->headers = harr;
    r->headers_count = hc;
    memcpy(ip, c->ip, iplen + 1);
    r->client_ip = ip;
    memcpy(peer, &c->peer, c->peer_len);
    r->peer = peer;
    r->peer_len = c->peer_len;
    ex->head_only = h->method_id == HTTP_HEAD;
    if (!h->keep_alive || w->stopping) {
        ex->close_after = true;
        c->no_more = true;
    }
    if (http_header_find(hdrs, h->headers_count, "upgrade")) {
        /* The bytes after this head may be another protocol's: parse no further request,
         * and close unless the route switches protocols (http_ws.c). */
        ex->close_after = true;
        c->no_more = true;
    }
    ex->chunked = h->chunked;
    ex->coding = h->content_coding;
    bool has_body = h->chunked || h->content_length > 0;

    struct group *g = http_router_group(srv, r->path, r->path_len);
    struct route *rt = NULL;
    if (g) {
        rt = g->by_method[h->method_id];
        if (!rt && h->method_id == HTTP_HEAD) rt = g->by_method[HTTP_GET];
        ex->cors = g->cors;
        ex->route = rt ? rt : g->first;
        r->route_name = ex->route->name;
    }
    if (!g) {
        ex_early(ex, 404, "not found");
    } else if (!rt && h->method_id == HTTP_OPTIONS) {
        ex_preflight(ex, srv, g);
    } else if (!rt) {
        ex_early(ex, 405, "method not allowed");
        char buf[128];
        int n = snprintf(buf, sizeof buf, "Allow: %s\r\n", g->allow);
        if (n > 0 && (size_t)n < sizeof buf && xhdr_append(ex, buf, (size_t)n) != TALLY_OK)
            ex_store_oom(ex);
    }

    if (ex->phase == EX_DONE && has_body && h->expect_continue) {
        /* Refused before the body: the client may not send it at all, so do not wait. */
        ex->close_after = true;
        c->no_more = true;
        c->unread = true;
        return ex;
    }
    if (has_body) {
        ex->discard = ex->phase == EX_DONE;
        ex->want_continue = h->expect_continue;
        c->state = C_BODY;
        c->cur = ex;
        c->body_deadline_ms = w->now_ms + L->body_timeout_ms;
        if (h->chunked) {
            http_chunked_init(&ex->ch, L->body_bytes_max);
        } else {
            ex->body_need = (uint64_t)h->content_length;
            size_t want = (size_t)h->content_length + 1;
            if (!ex->discard && want <= BODY_EAGER_BYTES) {
                /* Small bodies: exact size, usually inside the arena. Larger ones grow
                 * with what arrives (body_reserve), so announcing a size costs nothing. */
                ex->body = ex_alloc(ex, want);
                if (!ex->body) {
                    http_conn_kill(c);
                    return NULL;
                }
                ex->body_cap = want;
            }
        }
        return ex;
    }
    if (ex->phase == EX_READING) conn_dispatch(c, ex);
    return ex;
}

/* Parses and runs as many requests as the input holds, then writes and re-arms. */
void http_conn_process(struct conn *c)
{
    struct worker *w = c->w;
    struct http_server *srv = w->srv;
    const struct http_limits *L = &srv->cfg.limits;
    while (!c->dead) {
        if (c->state == C_BODY) {
            if (!conn_body(c)) break;
            continue;
        }
        if (c->state != C_HEAD || c->no_more) break;
        size_t avail = c->in_len - c->in_off;
        if (avail == 0) {
            c->head_partial = false;
            break;
        }
        if (c->q_count >= L->pipeline_max || c->out_len - c->out_off >= OUT_HIGH_WATER) break;
        const char *p = c->in + c->in_off;
        if (c->head_partial && avail < L->header_bytes_max &&
            avail < c->parsed_len + PARSE_STEP_BYTES) {
            /* Only re-parse once the end of the head may be there (or every step bytes). */
            size_t from = c->scan_len > 3 ? c->scan_len - 3 : 0;
            if (!memmem(p + from, avail - from, "\r\n\r\n", 4)) {
                c->scan_len = avail;
                break;
            }
        }
        struct http_head h;
        enum http_perr e;
        int r = http_parse_request(p, avail, &srv->plim, &h, w->hdrs, L->header_count_max, &e);
        if (r == -2) {
            if (!c->head_partial) {
                c->head_partial = true;
                c->head_start_ms = w->now_ms;
            }
            c->parsed_len = c->scan_len = avail;
            break;
        }
        c->head_partial = false;
        c->parsed_len = c->scan_len = 0;
        if (r < 0) {
            conn_fail(c, http_perr_status(e), http_perr_message(e));
            break;
        }
        if (!conn_begin(c, &h, w->hdrs, (size_t)r)) break;
    }
    if (c->dead) return;
    http_conn_flush(c);
    http_conn_update(c);
}

/* ---- event callbacks ---- */

static bool in_reserve(struct conn *c)
{
    const struct http_limits *L = &c->w->srv->cfg.limits;
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
    if (c->in_cap - c->in_len >= READ_SPACE_MIN) return true;
    if (c->in_off) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
        if (c->in_cap - c->in_len >= READ_SPACE_MIN) return true;
    }
    size_t max = L->header_bytes_max + 2 * READ_SPACE_MIN;
    if (max < IN_BYTES_MIN) max = IN_BYTES_MIN;
    if (c->in_cap >= max) return c->in_cap > c->in_len;
    size_t cap = c->in_cap ? c->in_cap * 2 : IN_BYTES_MIN;
    if (cap > max) cap = max;
    char *p = realloc(c->in, cap);
    if (!p) return false;
    c->in = p;
    c->in_cap = cap;
    return true;
}

static void conn_linger_read(struct conn *c)
{
    char buf[LINGER_READ_BYTES];
    for (int i = 0; i < 8; i++) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            c->linger_quiet_ms = c->w->now_ms + LINGER_QUIET_MS;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        http_conn_kill(c); /* EOF or error: done */
        return;
    }
}

static void conn_on_eof(struct conn *c)
{
    c->peer_eof = true;
    if (c->state == C_WS) {
        /* A close answer still being written goes out first; otherwise the peer left
         * without a close frame. */
        if (c->closing) {
            http_conn_flush(c);
            http_conn_update(c);
        } else {
            http_conn_kill(c);
        }
        return;
    }
    if (c->state == C_BODY) {
        if (c->cur->phase == EX_READING) {
            conn_fail_current(c, 400, "request body truncated (connection closed)");
        } else {
            c->cur = NULL;
            c->state = C_HEAD;
        }
    }
    c->no_more = true;
    c->in_off = c->in_len = 0;
    c->head_partial = false;
    http_conn_flush(c);
    http_conn_update(c);
}

static void conn_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct conn *c = arg;
    struct worker *w = c->w;
    struct http_server *srv = w->srv;
    w->now_ms = mono_ms();
    c->busy++;
    if (c->state == C_LINGER) {
        conn_linger_read(c);
        http_conn_release(c);
        return;
    }
    ssize_t n;
    struct http_exchange *ex = c->cur;
    if (c->state == C_BODY && !ex->chunked && !ex->discard && c->in_off == c->in_len &&
        ex->body_need >= IN_BYTES_MIN) {
        /* Large Content-Length body with nothing buffered: read straight into place. */
        size_t chunk = ex->body_need < BODY_EAGER_BYTES ? (size_t)ex->body_need : BODY_EAGER_BYTES;
        if (!body_reserve(ex, chunk, ex->body_len + (size_t)ex->body_need + 1)) {
            http_conn_kill(c);
            http_conn_release(c);
            return;
        }
        size_t room = ex->body_cap - ex->body_len - 1;
        n = recv(fd, ex->body + ex->body_len, room < ex->body_need ? room : (size_t)ex->body_need,
                 0);
        if (n > 0) {
            ex->body_len += (size_t)n;
            ex->body_need -= (uint64_t)n;
            ex->body_started = true;
        }
    } else {
        if (!in_reserve(c)) {
            http_conn_kill(c);
            http_conn_release(c);
            return;
        }
        n = recv(fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) c->in_len += (size_t)n;
    }
    if (n > 0) {
        STAT_ADD(srv, st_rx, (uint64_t)n);
        c->active_ms = w->now_ms;
        http_conn_process(c);
    } else if (n == 0) {
        conn_on_eof(c);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        http_conn_kill(c);
    }
    http_conn_release(c);
}

static void conn_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    c->w->now_ms = mono_ms();
    c->busy++;
    conn_write_now(c);
    if (!c->dead) http_conn_process(c); /* output drained: parsing may resume */
    http_conn_release(c);
}

static void conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    struct worker *w = c->w;
    struct http_server *srv = w->srv;
    const struct http_limits *L = &srv->cfg.limits;
    uint64_t now = w->now_ms = mono_ms();
    char msg[96];
    c->timer_at = 0;
    c->busy++;
    if (c->write_deadline_ms && now >= c->write_deadline_ms) {
        STAT_ADD(srv, st_to_write, 1);
        http_conn_kill(c);
    } else if (c->state == C_LINGER) {
        if (now >= c->linger_deadline_ms || now >= c->linger_quiet_ms) http_conn_kill(c);
    } else if (c->state == C_BODY && c->reading && now >= c->body_deadline_ms) {
        STAT_ADD(srv, st_to_body, 1);
        snprintf(msg, sizeof msg, "request body not received within %u ms", L->body_timeout_ms);
        conn_fail_current(c, 408, msg);
    } else if (c->head_partial && c->reading && now >= c->head_start_ms + L->head_timeout_ms) {
        STAT_ADD(srv, st_to_head, 1);
        snprintf(msg, sizeof msg, "request head not received within %u ms", L->head_timeout_ms);
        conn_fail(c, 408, msg);
    } else if (c->state == C_HEAD && !c->head_partial && c->q_count == 0 &&
               c->out_len == c->out_off && !c->closing &&
               now >= c->active_ms + L->idle_timeout_ms) {
        STAT_ADD(srv, st_to_idle, 1);
        http_conn_kill(c);
    }
    if (!c->dead) {
        http_conn_flush(c);
        http_conn_update(c);
    }
    http_conn_release(c);
}

static void addr_string(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    out[0] = 0;
    if (ss->ss_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out, (socklen_t)cap);
    } else if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            inet_ntop(AF_INET, &a->s6_addr[12], out, (socklen_t)cap);
        else
            inet_ntop(AF_INET6, a, out, (socklen_t)cap);
    }
}

void http_conn_new(struct worker *w, int fd, const struct sockaddr_storage *ss, socklen_t sl)
{
    struct http_server *srv = w->srv;
    struct conn *c = calloc(1, sizeof *c);
    if (c) {
        c->ev_read = event_new(w->base, fd, EV_READ | EV_PERSIST, conn_on_read, c);
        c->ev_write = event_new(w->base, fd, EV_WRITE | EV_PERSIST, conn_on_write, c);
        c->ev_timer = evtimer_new(w->base, conn_on_timer, c);
    }
    if (!c || !c->ev_read || !c->ev_write || !c->ev_timer) {
        if (c) {
            if (c->ev_read) event_free(c->ev_read);
            if (c->ev_write) event_free(c->ev_write);
            if (c->ev_timer) event_free(c->ev_timer);
            free(c);
        }
        close(fd);
        atomic_fetch_sub_explicit(&w->nconns, 1, RELAXED);
        atomic_fetch_sub_explicit(&srv->st_open, 1, RELAXED);
        return;
    }
    c->w = w;
    c->fd = fd;
    c->peer_len = sl <= sizeof c->peer ? sl : sizeof c->peer;
    memcpy(&c->peer, ss, c->peer_len);
    addr_string(ss, c->ip, sizeof c->ip);
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    c->active_ms = w->now_ms;
    http_conn_update(c); /* starts reading and arms the idle deadline */
}

/* ---- handler-facing API ---- */

const char *http_request_header(const struct http_request *req, const char *name)
{
    const struct http_header *h = http_header_find(req->headers, req->headers_count, name);
    return h ? h->value : NULL;
}

int http_request_query(const struct http_request *req, const char *name, char *out, size_t out_cap,
                       size_t *out_len)
{
    return http_url_param(req->query, req->query_len, name, out, out_cap, out_len);
}

void http_exchange_complete(struct http_exchange *ex, int status, const char *content_type,
                            const void *body, size_t len, const char *extra_headers)
{
    TALLY_ASSERT(ex && status >= 200 && status <= 599);
    TALLY_ASSERT(atomic_exchange(&ex->completed, 1) == 0); /* completed twice */
    size_t xlen = extra_headers ? strlen(extra_headers) : 0;
    TALLY_ASSERT(xlen == 0 || (xlen >= 2 && memcmp(extra_headers + xlen - 2, "\r\n", 2) == 0));
    struct worker *w = ex->w;
    if (http_tls_worker != w) {
        if (!ex_store(ex, status, content_type, body, len, extra_headers, xlen)) ex_store_oom(ex);
        http_worker_push(w, &ex->qn);
        return;
    }
    /* On the exchange's own worker. */
    struct conn *c = ex->conn;
    if (!c) {
        http_detached_remove(w, ex);
        http_ex_free(w, ex);
        return;
    }
    ex->phase = EX_DONE;
    c->busy++;
    if (c->q_head == ex && !c->dead) {
        /* Next in line: format straight from the caller's buffers, no copy. */
        conn_emit(c, ex, status, content_type, content_type ? strlen(content_type) : 0, body, len,
                  extra_headers, xlen);
    } else if (!ex_store(ex, status, content_type, body, len, extra_headers, xlen)) {
        ex_store_oom(ex);
    }
    /* Outside a connection callback, write now; inside, the callback does it on return. */
    if (c->busy == 1 && !c->dead) http_conn_process(c);
    http_conn_release(c);
}

void http_respond(struct http_exchange *ex, int status, const char *content_type, const void *body,
                  size_t len)
{
    http_exchange_complete(ex, status, content_type, body, len, NULL);
}

void http_respond_error(struct http_exchange *ex, int status, const char *message)
{
    char small[512];
    size_t cap = strlen(message) * 6 + 32;
    char *buf = cap <= sizeof small ? small : malloc(cap);
    if (!buf) {
        http_respond(ex, status, "application/json", oom_body, sizeof oom_body - 1);
        return;
    }
    size_t n = (size_t)snprintf(buf, cap, "{\"error\": \"");
    n += http_json_escape(buf + n, cap - n - 3, message);
    memcpy(buf + n, "\"}", 3);
    http_respond(ex, status, "application/json", buf, n + 2);
    if (buf != small) free(buf);
}

int http_exchange_add_header(struct http_exchange *ex, const char *name, const char *value)
{
    if (!name || !*name || !value) return TALLY_EINVAL;
    for (const char *p = name; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch)) return TALLY_EINVAL;
    }
    if (strpbrk(value, "\r\n")) return TALLY_EINVAL;
    size_t nl = strlen(name), vl = strlen(value);
    if (xhdr_append(ex, name, nl) || xhdr_append(ex, ": ", 2) || xhdr_append(ex, value, vl) ||
        xhdr_append(ex, "\r\n", 2))
        return TALLY_ENOMEM;
    return TALLY_OK;
}

const struct http_request *http_exchange_request(const struct http_exchange *ex)
{
    return &ex->req;
}

struct event_base *http_exchange_base(const struct http_exchange *ex)
{
    return ex->w->base;
}

unsigned http_exchange_worker(const struct http_exchange *ex)
{
    return ex->w->index;
}
