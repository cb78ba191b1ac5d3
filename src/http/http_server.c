/*
 * http_server: server lifecycle, worker threads and their inboxes, accepting, metrics (model
 * in http_server.h; the connection state machine is in http_conn.c).
 *
 * Inbox: each worker has a mutex-protected FIFO of qnodes and an eventfd. A producer appends
 * and writes the eventfd only when the inbox was not already signalled; the worker takes the
 * whole list at once, clears the flag, and handles the nodes in order. Node kinds: Q_DONE (an
 * exchange completed on another thread), Q_POST (run a function), Q_CONN (an accepted socket
 * handed over by worker 0), Q_STOP / Q_FORCE (shutdown, nodes embedded in struct worker).
 *
 * Shutdown: Q_STOP makes a worker stop accepting, close idle connections and let the others
 * finish; a worker leaves its loop when it has no connection left. http_server_stop waits for
 * all workers up to the drain deadline, then sends Q_FORCE (cut everything) and joins them.
 */
#include "http/http_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/metrics.h"
#include "core/sched.h"
#include "http/http_inflate.h"
#include "tally/error.h"

_Thread_local struct worker *http_tls_worker;

/* ---- status codes ---- */

static const int status_list[] = {101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400,
                                  401, 403, 404, 405, 406, 408, 409, 410, 411, 412, 413, 414,
                                  415, 416, 417, 422, 429, 431, 500, 501, 502, 503, 504, 505};
_Static_assert(TALLY_ARRAY_LEN(status_list) + 1 == NSTATUS, "NSTATUS matches status_list");
unsigned char http_status_slot[600];
static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
    evthread_use_pthreads();
    for (size_t i = 0; i < 600; i++)
        http_status_slot[i] = NSTATUS - 1;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(status_list); i++)
        http_status_slot[status_list[i]] = (unsigned char)i;
}

const char *http_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* ---- config ---- */

void http_config_defaults(struct http_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->listen = "127.0.0.1:8080";
    cfg->threads = 2;
    cfg->backlog = 1024;
    cfg->listen_fd = -1;
    cfg->limits = (struct http_limits){
        .header_bytes_max = 16384,
        .header_count_max = 100,
        .url_bytes_max = 8192,
        .body_bytes_max = 1u << 20,
        .body_decoded_bytes_max = 8u << 20,
        .head_timeout_ms = 10000,
        .body_timeout_ms = 30000,
        .idle_timeout_ms = 60000,
        .write_timeout_ms = 30000,
        .linger_ms = 2000,
        .connections_max = 10000,
        .pipeline_max = 32,
        .out_bytes_max = 4u << 20,
    };
    cfg->cors_max_age_s = 86400;
    cfg->close_on_error = true;
}

/* ---- inbox ---- */

void http_worker_push(struct worker *w, struct qnode *n)
{
    n->next = NULL;
    pthread_mutex_lock(&w->qlock);
    if (w->qt)
        w->qt->next = n;
    else
        w->qh = n;
    w->qt = n;
    bool wake = !w->qsignaled;
    w->qsignaled = true;
    pthread_mutex_unlock(&w->qlock);
    if (wake) {
        uint64_t one = 1;
        ssize_t r = write(w->efd, &one, sizeof one);
        (void)r; /* EAGAIN only when the counter is saturated: a wake-up is pending anyway */
    }
}

/* ---- accepting ---- */

static struct worker *pick_worker(struct http_server *srv)
{
    struct worker *best = &srv->workers[0];
    unsigned bn = atomic_load_explicit(&best->nconns, RELAXED);
    for (unsigned i = 1; i < srv->nworkers; i++) {
        unsigned n = atomic_load_explicit(&srv->workers[i].nconns, RELAXED);
        if (n < bn) {
            best = &srv->workers[i];
            bn = n;
        }
    }
    return best;
}

static void reject_busy(struct http_server *srv, int fd)
{
    char buf[4096];
    for (int i = 0; i < 4 && recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0; i++) {
    }
    ssize_t n = send(fd, srv->resp503, srv->resp503_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
    shutdown(fd, SHUT_WR);
    close(fd);
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    if (w->ev_listen && !w->stopping) event_add(w->ev_listen, NULL);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    struct worker *w = arg;
    struct http_server *srv = w->srv;
    w->now_ms = mono_ms();
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            diag_warn("http: accept: %s", strerror(errno));
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                struct timeval tv = {0, ACCEPT_RETRY_MS * 1000};
                event_del(w->ev_listen);
                event_add(w->ev_accept_retry, &tv);
            }
            return;
        }
        if (atomic_fetch_add_explicit(&srv->st_open, 1, RELAXED) >=
            srv->cfg.limits.connections_max) {
            atomic_fetch_sub_explicit(&srv->st_open, 1, RELAXED);
            STAT_ADD(srv, st_rejected, 1);
            reject_busy(srv, fd);
            continue;
        }
        STAT_ADD(srv, st_accepted, 1);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct worker *t = pick_worker(srv);
        atomic_fetch_add_explicit(&t->nconns, 1, RELAXED);
        if (t == w) {
            http_conn_new(w, fd, &ss, sl);
            continue;
        }
        struct conn_node *n = malloc(sizeof *n);
        if (!n) {
            close(fd);
            atomic_fetch_sub_explicit(&t->nconns, 1, RELAXED);
            atomic_fetch_sub_explicit(&srv->st_open, 1, RELAXED);
            continue;
        }
        n->qn.kind = Q_CONN;
        n->fd = fd;
        n->len = sl <= sizeof n->addr ? sl : sizeof n->addr;
        memcpy(&n->addr, &ss, n->len);
        http_worker_push(t, &n->qn);
    }
}

/* ---- worker ---- */

static void worker_close_listener(struct worker *w)
{
    struct http_server *srv = w->srv;
    if (w->ev_listen) {
        event_free(w->ev_listen);
        w->ev_listen = NULL;
        if (srv->lfd >= 0) close(srv->lfd);
        srv->lfd = -1;
    }
    if (w->ev_accept_retry) event_del(w->ev_accept_retry);
}

static void worker_stop(struct worker *w)
{
    w->stopping = true;
    bool had_listener = w->ev_listen != NULL;
    worker_close_listener(w);
    if (had_listener) { /* every connection accepted so far has been handed off */
        pthread_mutex_lock(&w->srv->mu);
        w->srv->accept_closed = true;
        pthread_cond_broadcast(&w->srv->cond);
        pthread_mutex_unlock(&w->srv->mu);
    }
    struct conn *c = w->conns;
    while (c) {
        struct conn *next = c->next;
        c->busy++;
        bool idle = c->state == C_HEAD && c->q_count == 0 && c->nreq > 0 &&
                    c->in_len == c->in_off && !c->head_partial;
        if (c->state == C_HEAD && c->q_count == 0 && !idle) {
            /* A connection that has not delivered its request yet (fresh, or a head on its
             * way): it may finish one request, answered with Connection: close (the head
             * timeout and the drain timeout bound it). Killing it would refuse a client that
             * the listening socket had already accepted (a restart must refuse none). */
        } else if (c->state == C_LINGER || idle) {
            http_conn_kill(c); /* closing already, or keep-alive and idle between requests */
        } else if (c->state == C_WS) {
            http_ws_stop(c); /* close 1001, then the connection ends once it is written */
            http_conn_flush(c);
            http_conn_update(c);
        } else {
            c->no_more = true;
            if (c->q_tail) c->q_tail->close_after = true;
            if (c->state == C_HEAD) {
                c->in_off = c->in_len = 0;
                c->head_partial = false;
            }
            http_conn_flush(c);
            http_conn_update(c);
        }
        http_conn_release(c);
        c = next;
    }
    if (!w->conns) event_base_loopbreak(w->base);
}

static void worker_force(struct worker *w)
{
    w->stopping = true;
    worker_close_listener(w);
    while (w->conns) {
        STAT_ADD(w->srv, st_forced, 1);
        http_conn_kill(w->conns);
    }
    event_base_loopbreak(w->base);
}

static void worker_handle(struct worker *w, struct qnode *n)
{
    switch (n->kind) {
    case Q_DONE: {
        struct http_exchange *ex = (struct http_exchange *)n;
        ex->phase = EX_DONE;
        struct conn *c = ex->conn;
        if (!c) {
            http_detached_remove(w, ex);
            http_ex_free(w, ex);
            break;
        }
        c->busy++;
        http_conn_process(c);
        http_conn_release(c);
        break;
    }
    case Q_POST: {
        struct post_node *p = (struct post_node *)n;
        p->fn(p->arg);
        free(p);
        break;
    }
    case Q_CONN: {
        struct conn_node *cn = (struct conn_node *)n;
        if (w->stopping) {
            close(cn->fd);
            atomic_fetch_sub_explicit(&w->nconns, 1, RELAXED);
            atomic_fetch_sub_explicit(&w->srv->st_open, 1, RELAXED);
        } else {
            http_conn_new(w, cn->fd, &cn->addr, cn->len);
        }
        free(cn);
        break;
    }
    case Q_STREAM: http_stream_wake(w, n); break;
    case Q_WS: http_ws_wake(w, n); break;
    case Q_STOP: worker_stop(w); break;
    case Q_FORCE: worker_force(w); break;
    default: break;
    }
}

static struct qnode *worker_take(struct worker *w)
{
    pthread_mutex_lock(&w->qlock);
    struct qnode *n = w->qh;
    w->qh = w->qt = NULL;
    w->qsignaled = false;
    pthread_mutex_unlock(&w->qlock);
    return n;
}

static void worker_on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct worker *w = arg;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof v);
    (void)r;
    w->now_ms = mono_ms();
    struct qnode *n = worker_take(w);
    while (n) {
        struct qnode *next = n->next;
        worker_handle(w, n);
        n = next;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pthread_setname_np(pthread_self(), "tally-http");
    struct http_server *srv = w->srv;
    /* Short slice: a worker that wakes preempts background work (core/sched.h). */
    if (sched_latency_critical() != 0) diag_debug("http: worker keeps the default CPU slice");
    http_tls_worker = w;
    w->now_ms = mono_ms();
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    http_tls_worker = NULL;
    pthread_mutex_lock(&srv->mu);
    w->exited = true;
    srv->exited++;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->mu);
    return NULL;
}

static int worker_init(struct http_server *srv, struct worker *w, unsigned index)
{
    w->srv = srv;
    w->index = index;
    w->efd = -1;
    pthread_mutex_init(&w->qlock, NULL);
    w->stop_node.kind = Q_STOP;
    w->force_node.kind = Q_FORCE;
    struct event_config *ec = event_config_new();
    if (!ec) return TALLY_ENOMEM;
    /* Each base is used by its own thread only (cross-thread work goes through the inbox). */
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    w->base = event_base_new_with_config(ec);
    event_config_free(ec);
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->hdrs = calloc(srv->cfg.limits.header_count_max, sizeof *w->hdrs);
    w->inflate = http_inflate_new();
    if (!w->base || w->efd < 0 || !w->hdrs || !w->inflate) return TALLY_ENOMEM;
    w->ev_wake = event_new(w->base, w->efd, EV_READ | EV_PERSIST, worker_on_wake, w);
    if (!w->ev_wake || event_add(w->ev_wake, NULL) != 0) return TALLY_ENOMEM;
    return TALLY_OK;
}

static void worker_destroy(struct worker *w)
{
    /* Inbox leftovers: completions of detached exchanges, posts, hand-overs. */
    struct qnode *n = w->base ? worker_take(w) : NULL;
    while (n) {
        struct qnode *next = n->next;
        if (n->kind == Q_DONE || n->kind == Q_POST || n->kind == Q_CONN || n->kind == Q_STREAM ||
            n->kind == Q_WS) {
            if (n->kind == Q_CONN) w->stopping = true;
            worker_handle(w, n);
        }
        n = next;
    }
    while (w->conns)
        http_conn_kill(w->conns);
    /* Stream wake-ups posted while the connections were being cut hold a reference. */
    for (n = w->base ? worker_take(w) : NULL; n;) {
        struct qnode *next = n->next;
        if (n->kind == Q_DONE || n->kind == Q_POST || n->kind == Q_STREAM || n->kind == Q_WS)
            worker_handle(w, n);
        n = next;
    }
    size_t left = 0;
    while (w->detached) {
        struct http_exchange *ex = w->detached;
        http_detached_remove(w, ex);
        http_ex_free(w, ex);
        left++;
    }
    if (left) diag_warn("http: %zu exchanges never completed were freed at shutdown", left);
    while (w->pool) {
        struct http_exchange *ex = w->pool;
        w->pool = ex->next;
        free(ex);
    }
    if (w->ev_wake) event_free(w->ev_wake);
    if (w->ev_listen) event_free(w->ev_listen);
    if (w->ev_accept_retry) event_free(w->ev_accept_retry);
    if (w->base) event_base_free(w->base);
    if (w->efd >= 0) close(w->efd);
    free(w->hdrs);
    http_inflate_free(w->inflate);
    pthread_mutex_destroy(&w->qlock);
}

/* ---- server ---- */

static int parse_listen(const char *s, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *h, *he, *p;
    if (s[0] == '[') {
        h = s + 1;
        he = strchr(h, ']');
        if (!he || he[1] != ':') return TALLY_EINVAL;
        p = he + 2;
    } else {
        he = strrchr(s, ':');
        if (!he || memchr(s, ':', (size_t)(he - s))) return TALLY_EINVAL; /* v6 needs [] */
        h = s;
        p = he + 1;
    }
    size_t hl = (size_t)(he - h), pl = strlen(p);
    if (hl >= hcap || pl == 0 || pl > 5 || pl >= pcap) return TALLY_EINVAL;
    for (size_t i = 0; i < pl; i++)
        if (p[i] < '0' || p[i] > '9') return TALLY_EINVAL;
    if (atoi(p) > 65535) return TALLY_EINVAL;
    memcpy(host, h, hl);
    host[hl] = 0;
    memcpy(port, p, pl + 1);
    return TALLY_OK;
}

/* Adopts an inherited listening socket (cfg.listen_fd): it must be a listening stream socket. */
static int server_adopt(struct http_server *srv, int fd)
{
    int type = 0, acc = 0;
    socklen_t tl = sizeof type, al = sizeof acc;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) != 0 || !acc) {
        diag_error("http: inherited descriptor %d is not a listening TCP socket", fd);
        return TALLY_EINVAL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
        diag_error("http: inherited descriptor %d: %s", fd, strerror(errno));
        return TALLY_EIO;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
        (ss.ss_family == AF_INET || ss.ss_family == AF_INET6))
        srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);
    srv->lfd = fd;
    return TALLY_OK;
}

static int server_listen(struct http_server *srv)
{
    if (srv->cfg.listen_fd >= 0) return server_adopt(srv, srv->cfg.listen_fd);
    char host[256], port[8];
    if (parse_listen(srv->listen, host, sizeof host, port, sizeof port) != TALLY_OK) {
        diag_error("http: listen address \"%s\" is not HOST:PORT or [IPV6]:PORT", srv->listen);
        return TALLY_EINVAL;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gr = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gr != 0) {
        diag_error("http: listen %s: %s", srv->listen, gai_strerror(gr));
        return TALLY_EINVAL;
    }
    int err = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, srv->cfg.backlog) != 0) {
            err = errno;
            close(fd);
            continue;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
            srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                       : ((struct sockaddr_in *)&ss)->sin_port);
        srv->lfd = fd;
        break;
    }
    freeaddrinfo(res);
    if (srv->lfd < 0) {
        diag_error("http: cannot listen on %s: %s", srv->listen, strerror(err ? err : EINVAL));
        return TALLY_EIO;
    }
    return TALLY_OK;
}

static int config_check(const struct http_config *cfg)
{
    const struct http_limits *L = &cfg->limits;
    const char *bad = NULL;
    if (!cfg->listen)
        bad = "listen";
    else if (cfg->backlog < 1)
        bad = "backlog";
    else if (cfg->threads < 1 || cfg->threads > THREADS_MAX)
        bad = "threads";
    else if (L->header_bytes_max < 64 || L->header_bytes_max > (1u << 24))
        bad = "header_bytes_max";
    else if (L->header_count_max < 1 || L->header_count_max > 10000)
        bad = "header_count_max";
    else if (L->url_bytes_max < 1)
        bad = "url_bytes_max";
    else if (L->body_bytes_max > (1ull << 31))
        bad = "body_bytes_max";
    else if (L->body_decoded_bytes_max > (1ull << 31))
        bad = "body_decoded_bytes_max";
    else if (!L->head_timeout_ms)
        bad = "head_timeout_ms";
    else if (!L->body_timeout_ms)
        bad = "body_timeout_ms";
    else if (!L->idle_timeout_ms)
        bad = "idle_timeout_ms";
    else if (!L->write_timeout_ms)
        bad = "write_timeout_ms";
    else if (!L->connections_max)
        bad = "connections_max";
    else if (!L->pipeline_max)
        bad = "pipeline_max";
    else if (L->out_bytes_max < 1024)
        bad = "out_bytes_max";
    if (bad) diag_error("http: invalid configuration value for %s", bad);
    return bad ? TALLY_EINVAL : TALLY_OK;
}

static double gauge_open(void *arg)
{
    struct http_server *srv = arg;
    return (double)atomic_load_explicit(&srv->st_open, RELAXED);
}

static void server_metrics(struct http_server *srv)
{
    struct metrics *m = srv->metrics;
    metrics_gauge_fn(m, "tally_http_connections_open", "Open HTTP connections.", NULL, gauge_open, srv);
    metrics_counter_ref(m, "tally_http_connections_accepted_total", "HTTP connections accepted.", NULL, 0,
                        &srv->st_accepted);
    metrics_counter_ref(m, "tally_http_connections_rejected_total", "HTTP connections refused with 503.",
                        (const char *[]){"reason", "connections_max", NULL}, 0, &srv->st_rejected);
    static const char *phases[] = {"head", "body", "idle", "write"};
    _Atomic uint64_t *tos[] = {&srv->st_to_head, &srv->st_to_body, &srv->st_to_idle,
                               &srv->st_to_write};
    for (int i = 0; i < 4; i++)
        metrics_counter_ref(m, "tally_http_timeouts_total", "HTTP connections ended by a deadline.",
                            (const char *[]){"phase", phases[i], NULL}, 0, tos[i]);
    metrics_counter_ref(m, "tally_http_output_overflows_total",
                        "HTTP connections closed because the client did not read its responses.",
                        NULL, 0, &srv->st_overflow);
    metrics_counter_ref(m, "tally_http_received_bytes_total", "Bytes received on HTTP connections.", NULL,
                        0, &srv->st_rx);
    metrics_counter_ref(m, "tally_http_sent_bytes_total", "Bytes sent on HTTP connections.", NULL, 0,
                        &srv->st_tx);
    metrics_counter_ref(m, "tally_http_exchanges_detached_total",
                        "Requests whose client left before the response.", NULL, 0,
                        &srv->st_detached);
    static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                    0.1,    0.25,  0.5,    1,     2.5,  5,     10};
    srv->latency = metrics_histogram(m, "tally_http_request_duration_seconds",
                                     "Time from a complete request head to its response.", NULL,
                                     bounds, TALLY_ARRAY_LEN(bounds));
}

static void status_counters(struct http_server *srv, const char *route,
                            struct metrics_counter **out)
{
    for (size_t i = 0; i < NSTATUS; i++) {
        char code[8];
        if (i < TALLY_ARRAY_LEN(status_list))
            snprintf(code, sizeof code, "%d", status_list[i]);
        else
            snprintf(code, sizeof code, "other");
        out[i] = metrics_counter(
            srv->metrics, "tally_http_requests_total", "HTTP requests answered, by route and status.",
            (const char *[]){"route", route, "status", code, NULL}, METRICS_HIDE_ZERO);
    }
}

int http_server_new(const struct http_config *cfg, struct http_server **out)
{
    *out = NULL;
    pthread_once(&global_once, global_init);
    if (config_check(cfg) != TALLY_OK) return TALLY_EINVAL;
    struct http_server *srv = calloc(1, sizeof *srv);
    if (!srv) return TALLY_ENOMEM;
    srv->cfg = *cfg;
    srv->lfd = -1;
    pthread_mutex_init(&srv->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&srv->cond, &ca);
    pthread_condattr_destroy(&ca);
    int rc = TALLY_ENOMEM;
    srv->listen = strdup(cfg->listen);
    srv->cors_allow_headers = cfg->cors_allow_headers ? strdup(cfg->cors_allow_headers) : NULL;
    if (!srv->listen || (cfg->cors_allow_headers && !srv->cors_allow_headers)) goto fail;
    srv->cfg.listen = srv->listen;
    srv->cfg.cors_allow_headers = srv->cors_allow_headers;
    srv->cors_any = cfg->cors_origins_count == 0;
    if (cfg->cors_origins_count) {
        srv->cors_origins = calloc(cfg->cors_origins_count, sizeof *srv->cors_origins);
        if (!srv->cors_origins) goto fail;
        for (size_t i = 0; i < cfg->cors_origins_count; i++) {
            if (strcmp(cfg->cors_origins[i], "*") == 0) srv->cors_any = true;
            srv->cors_origins[i] = strdup(cfg->cors_origins[i]);
            if (!srv->cors_origins[i]) goto fail;
            srv->cors_count++;
        }
    }
    srv->cfg.cors_origins = NULL;
    srv->metrics = cfg->metrics;
    if (!srv->metrics) {
        srv->metrics = metrics_new();
        srv->own_metrics = true;
        if (!srv->metrics) goto fail;
    }
    const struct http_limits *L = &cfg->limits;
    srv->plim = (struct http_parse_limits){
        .header_bytes_max = L->header_bytes_max,
        .url_bytes_max = L->url_bytes_max,
        .header_count_max = L->header_count_max,
        .body_bytes_max = L->body_bytes_max,
    };
    static const char body503[] = "{\"error\": \"too many connections, retry later\"}";
    srv->resp503_len =
        (size_t)snprintf(srv->resp503, sizeof srv->resp503,
                         "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s",
                         sizeof body503 - 1, body503);
    srv->nworkers = cfg->threads;
    srv->workers = calloc(srv->nworkers, sizeof *srv->workers);
    if (!srv->workers) goto fail;
    for (unsigned i = 0; i < srv->nworkers; i++) {
        rc = worker_init(srv, &srv->workers[i], i);
        if (rc != TALLY_OK) goto fail;
    }
    rc = server_listen(srv);
    if (rc != TALLY_OK) goto fail;
    struct worker *w0 = &srv->workers[0];
    w0->ev_listen = event_new(w0->base, srv->lfd, EV_READ | EV_PERSIST, on_accept, w0);
    w0->ev_accept_retry = evtimer_new(w0->base, on_accept_retry, w0);
    if (!w0->ev_listen || !w0->ev_accept_retry) {
        rc = TALLY_ENOMEM;
        goto fail;
    }
    server_metrics(srv);
    status_counters(srv, "none", srv->none_ctr);
    *out = srv;
    return TALLY_OK;
fail:
    http_server_free(srv);
    return rc;
}

int http_server_route(struct http_server *srv, const struct http_route *route)
{
    if (!srv || !route || srv->started || !route->path || route->path[0] != '/' ||
        !route->handler || !route->methods || (route->methods & ~((1u << HTTP_METHOD_COUNT) - 2)))
        return TALLY_EINVAL;
    if (srv->nroutes == srv->routes_cap) {
        size_t cap = srv->routes_cap ? srv->routes_cap * 2 : 16;
        struct route **p = realloc(srv->routes, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        srv->routes = p;
        srv->routes_cap = cap;
    }
    struct route *r = calloc(1, sizeof *r);
    if (!r) return TALLY_ENOMEM;
    r->methods = route->methods;
    r->path = strdup(route->path);
    r->path_len = strlen(route->path);
    r->prefix = route->prefix;
    r->cors = route->cors;
    r->fn = route->handler;
    r->arg = route->arg;
    if (route->name) {
        r->name = strdup(route->name);
    } else if (r->path) {
        r->name = malloc(r->path_len + 2);
        if (r->name) snprintf(r->name, r->path_len + 2, "%s%s", r->path, r->prefix ? "*" : "");
    }
    if (!r->path || !r->name) {
        free(r->path);
        free(r->name);
        free(r);
        return TALLY_ENOMEM;
    }
    srv->routes[srv->nroutes++] = r;
    return TALLY_OK;
}

uint16_t http_server_port(const struct http_server *srv)
{
    return srv->port;
}

struct metrics *http_server_metrics(struct http_server *srv)
{
    return srv->metrics;
}

int http_server_start(struct http_server *srv)
{
    if (srv->started) return TALLY_EINVAL;
    int rc = http_router_build(srv);
    if (rc != TALLY_OK) return rc;
    for (size_t i = 0; i < srv->nroutes; i++)
        status_counters(srv, srv->routes[i]->name, srv->routes[i]->status_ctr);
    if (event_add(srv->workers[0].ev_listen, NULL) != 0) return TALLY_EIO;
    srv->started = true;
    for (unsigned i = 0; i < srv->nworkers; i++) {
        struct worker *w = &srv->workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            diag_error("http: cannot start worker thread %u", i);
            http_server_stop(srv, 0);
            return TALLY_EIO;
        }
        w->thread_started = true;
    }
    return TALLY_OK;
}

int http_server_stop(struct http_server *srv, uint32_t drain_timeout_ms)
{
    if (!srv || !srv->started || srv->stopped) return 0;
    srv->stopped = true;
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += drain_timeout_ms / 1000;
    dl.tv_nsec += (long)(drain_timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    /* Worker 0 (the acceptor) first: once it has closed the listener, every connection it
     * accepted is already queued (FIFO) at its worker ahead of that worker's stop, so none is
     * handed to a worker that has stopped. */
    if (srv->workers[0].thread_started) {
        http_worker_push(&srv->workers[0], &srv->workers[0].stop_node);
        pthread_mutex_lock(&srv->mu);
        while (!srv->accept_closed && !srv->workers[0].exited)
            if (pthread_cond_timedwait(&srv->cond, &srv->mu, &dl) == ETIMEDOUT) break;
        pthread_mutex_unlock(&srv->mu);
    }
    for (unsigned i = 1; i < srv->nworkers; i++)
        if (srv->workers[i].thread_started)
            http_worker_push(&srv->workers[i], &srv->workers[i].stop_node);
    unsigned running = 0;
    for (unsigned i = 0; i < srv->nworkers; i++)
        running += srv->workers[i].thread_started;
    pthread_mutex_lock(&srv->mu);
    while (srv->exited < running) {
        if (pthread_cond_timedwait(&srv->cond, &srv->mu, &dl) == ETIMEDOUT) break;
    }
    bool all = srv->exited >= running;
    pthread_mutex_unlock(&srv->mu);
    if (!all) {
        for (unsigned i = 0; i < srv->nworkers; i++) {
            struct worker *w = &srv->workers[i];
            pthread_mutex_lock(&srv->mu);
            bool exited = w->exited;
            pthread_mutex_unlock(&srv->mu);
            if (w->thread_started && !exited) http_worker_push(w, &w->force_node);
        }
    }
    for (unsigned i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].thread_started) pthread_join(srv->workers[i].thread, NULL);
    return (int)atomic_load(&srv->st_forced);
}

void http_server_free(struct http_server *srv)
{
    if (!srv) return;
    if (srv->started && !srv->stopped) http_server_stop(srv, 0);
    for (unsigned i = 0; srv->workers && i < srv->nworkers; i++) {
        struct worker *w = &srv->workers[i];
        if (w->srv) worker_destroy(w);
    }
    free(srv->workers);
    if (srv->lfd >= 0) close(srv->lfd);
    for (size_t i = 0; i < srv->nroutes; i++) {
        free(srv->routes[i]->path);
        free(srv->routes[i]->name);
        free(srv->routes[i]);
    }
    free(srv->routes);
    free(srv->groups);
    free(srv->prefixes);
    free(srv->htab);
    for (size_t i = 0; i < srv->cors_count; i++)
        free(srv->cors_origins[i]);
    free(srv->cors_origins);
    free(srv->cors_allow_headers);
    free(srv->listen);
    if (srv->own_metrics) metrics_free(srv->metrics);
    pthread_cond_destroy(&srv->cond);
    pthread_mutex_destroy(&srv->mu);
    free(srv);
}

void http_server_stats(const struct http_server *srv, struct http_server_stats *st)
{
    struct http_server *s = (struct http_server *)srv;
    st->connections_open = atomic_load_explicit(&s->st_open, RELAXED);
    st->connections_accepted = atomic_load_explicit(&s->st_accepted, RELAXED);
    st->connections_rejected = atomic_load_explicit(&s->st_rejected, RELAXED);
    st->requests = atomic_load_explicit(&s->st_requests, RELAXED);
    st->timeouts_head = atomic_load_explicit(&s->st_to_head, RELAXED);
    st->timeouts_body = atomic_load_explicit(&s->st_to_body, RELAXED);
    st->timeouts_idle = atomic_load_explicit(&s->st_to_idle, RELAXED);
    st->timeouts_write = atomic_load_explicit(&s->st_to_write, RELAXED);
    st->output_overflows = atomic_load_explicit(&s->st_overflow, RELAXED);
    st->bytes_received = atomic_load_explicit(&s->st_rx, RELAXED);
    st->bytes_sent = atomic_load_explicit(&s->st_tx, RELAXED);
    st->exchanges_detached = atomic_load_explicit(&s->st_detached, RELAXED);
}

int http_server_post(struct http_server *srv, unsigned worker, void (*fn)(void *arg), void *arg)
{
    if (!srv || worker >= srv->nworkers || !fn) return TALLY_EINVAL;
    if (srv->stopped) return TALLY_ECLOSED;
    struct post_node *p = malloc(sizeof *p);
    if (!p) return TALLY_ENOMEM;
    p->qn.kind = Q_POST;
    p->fn = fn;
    p->arg = arg;
    http_worker_push(&srv->workers[worker], &p->qn);
    return TALLY_OK;
}

int http_exchange_post(struct http_exchange *ex, void (*fn)(void *arg), void *arg)
{
    return http_server_post(ex->w->srv, ex->w->index, fn, arg);
}
