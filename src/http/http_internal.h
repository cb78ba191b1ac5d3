/*
 * http_internal: structures shared by the HTTP server's files (private to src/http/).
 *
 *   http_server.c  server lifecycle, workers and their inboxes, accepting, metrics
 *   http_conn.c    the connection state machine, exchanges, responses (see its invariants)
 *   http_router.c  route table: exact paths by hash, prefixes longest first
 *
 * Threads: a struct conn and its exchanges belong to one worker thread; struct worker fields
 * are that worker's except the inbox (qlock) and nconns (atomic); struct http_server is
 * read-only after http_server_start except the atomic counters.
 */
#ifndef TALLY_HTTP_INTERNAL_H
#define TALLY_HTTP_INTERNAL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "http/http_parser.h"
#include "http/http_server.h"

struct event;
struct event_base;
struct metrics_counter;
struct metrics_histogram;
struct http_inflate;

#define THREADS_MAX 64
#define IN_BYTES_MIN 4096          /* first input buffer */
#define READ_SPACE_MIN 1024        /* free input space wanted before a read */
#define PARSE_STEP_BYTES 1024      /* re-parse a partial head at least every this many bytes */
#define OUT_HIGH_WATER (64 * 1024) /* stop parsing new requests above this unsent output */
#define OUT_KEEP_BYTES (64 * 1024) /* a drained output buffer larger than this is freed */
#define EX_ARENA_BYTES 3072        /* inline arena per exchange (head copy, small bodies) */
#define EX_POOL_MAX 256            /* free exchanges kept per worker */
#define ACCEPT_BATCH 32
#define ACCEPT_RETRY_MS 100 /* pause after EMFILE & co */
#define LINGER_READ_BYTES 16384
#define LINGER_QUIET_MS 500          /* lingering ends after this long without client bytes */
#define BODY_EAGER_BYTES (64 * 1024) /* larger bodies grow with the bytes actually received */

#define NSTATUS 38 /* status_list in http_server.c, plus "other" */

enum { Q_DONE = 1, Q_POST, Q_CONN, Q_STOP, Q_FORCE, Q_STREAM, Q_WS };

struct qnode {
    struct qnode *next;
    int kind;
};

struct post_node {
    struct qnode qn;
    void (*fn)(void *arg);
    void *arg;
};

struct conn_node {
    struct qnode qn;
    int fd;
    socklen_t len;
    struct sockaddr_storage addr;
};

struct block {
    struct block *next;
    void *pad; /* keeps data 16-byte aligned */
    char data[];
};

struct route {
    unsigned methods;
    char *path;
    size_t path_len;
    bool prefix, cors;
    char *name;
    http_handler_fn fn;
    void *arg;
    struct metrics_counter *status_ctr[NSTATUS];
};

/* Routes sharing one (path, prefix): the unit of 404/405/OPTIONS decisions. */
struct group {
    const char *path;
    size_t path_len;
    bool prefix, cors;
    unsigned methods;
    struct route *by_method[HTTP_METHOD_COUNT];
    struct route *first;
    char allow[96]; /* "GET, HEAD, POST, OPTIONS" */
};

/* EX_STREAMING: a streamed response (http_stream.c) whose head is written and whose body is
 * being pumped from its producer; it stays at q_head until the producer finishes. */
enum { EX_READING = 0, EX_HANDLER, EX_DONE, EX_STREAMING };
/* C_WS: upgraded to WebSocket (http_ws.c) */
enum { C_HEAD = 0, C_BODY, C_LINGER, C_WS };

struct worker;
struct conn;

struct http_exchange {
    struct qnode qn; /* inbox node (Q_DONE) */
    struct worker *w;
    struct conn *conn;                   /* NULL when detached; worker thread only */
    struct http_exchange *next;          /* connection FIFO or pool */
    struct http_exchange *dprev, *dnext; /* worker's detached list */
    _Atomic int completed;
    int phase;
    bool close_after, head_only, want_continue, continue_sent, body_started, discard;
    bool chunked, cors;
    enum http_coding coding;
    struct http_request req;
    struct route *route; /* for metrics and dispatch; NULL: unrouted */
    uint64_t body_need;  /* Content-Length bytes still to read */
    struct http_chunked ch;
    char *body;
    size_t body_len, body_cap;
    bool body_heap;
    /* response (stored by the completer unless written directly) */
    int status;
    const char *ctype;
    size_t ctype_len;
    const char *rbody;
    size_t rbody_len;
    char *xhdr; /* extra header lines, malloc'd */
    size_t xhdr_len, xhdr_cap;
    uint64_t t0_ns;
    struct http_stream *stream; /* a streamed response (http_stream.c), else NULL */
    bool stream_chunked;        /* the streamed body is sent with chunked framing */
    struct http_ws *ws;         /* http_ws_accept: the connection switches after the 101 */
    /* arena */
    size_t arena_used;
    struct block *blocks;
    _Alignas(16) char arena[EX_ARENA_BYTES];
};

struct conn {
    struct worker *w;
    struct conn *prev, *next;
    int fd;
    struct event *ev_read, *ev_write, *ev_timer;
    bool reading, writing, dead, no_more, closing, peer_eof, head_partial;
    bool unread; /* closing while the client may still be sending: linger */
    uint32_t nreq; /* requests parsed on this connection (0: fresh) */
    int state;
    int busy;
    char *in;
    size_t in_off, in_len, in_cap;
    size_t parsed_len, scan_len; /* partial head: bytes seen by the last parse / scan */
    char *out;
    size_t out_off, out_len, out_cap;
    struct http_exchange *q_head, *q_tail, *cur;
    unsigned q_count;
    struct http_ws *ws; /* state C_WS */
    uint64_t timer_at, head_start_ms, body_deadline_ms, active_ms, write_deadline_ms;
    uint64_t linger_deadline_ms, linger_quiet_ms;
    char ip[INET6_ADDRSTRLEN];
    socklen_t peer_len;
    struct sockaddr_storage peer;
};

struct worker {
    struct http_server *srv;
    unsigned index;
    struct event_base *base;
    pthread_t thread;
    bool thread_started;
    int efd;
    struct event *ev_wake;
    pthread_mutex_t qlock;
    struct qnode *qh, *qt;
    bool qsignaled;
    struct qnode stop_node, force_node;
    struct conn *conns;
    _Atomic unsigned nconns; /* assigned, including hand-overs in flight */
    struct http_exchange *pool;
    unsigned pool_count;
    struct http_exchange *detached;
    struct http_header *hdrs; /* parse scratch */
    struct http_inflate *inflate;
    uint64_t now_ms;
    bool stopping, exited;
    time_t date_sec;
    size_t date_len;
    char date[64];
    struct event *ev_listen, *ev_accept_retry;
};

struct http_server {
    struct http_config cfg;
    char *listen;
    char **cors_origins;
    size_t cors_count;
    bool cors_any;
    char *cors_allow_headers;
    struct http_parse_limits plim;
    int lfd;
    uint16_t port;
    struct worker *workers;
    unsigned nworkers;
    struct route **routes;
    size_t nroutes, routes_cap;
    struct group *groups;
    size_t ngroups;
    uint32_t *htab; /* exact groups: index + 1, open addressing */
    size_t hmask;
    struct group **prefixes; /* longest first */
    size_t nprefixes;
    struct metrics *metrics;
    bool own_metrics;
    struct metrics_counter *none_ctr[NSTATUS];
    struct metrics_histogram *latency;
    _Atomic uint64_t st_open, st_accepted, st_rejected, st_requests, st_to_head, st_to_body,
        st_to_idle, st_to_write, st_overflow, st_rx, st_tx, st_detached, st_forced;
    bool started;
    atomic_bool stopped;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    unsigned exited;
    bool accept_closed; /* worker 0 closed the listener (under mu): no handoff follows */
    char resp503[256];
    size_t resp503_len;
};

extern _Thread_local struct worker *http_tls_worker; /* the worker running on this thread */
extern unsigned char http_status_slot[600];          /* status code -> metrics slot */

#define RELAXED memory_order_relaxed
#define STAT_ADD(srv, field, n) atomic_fetch_add_explicit(&(srv)->field, (n), RELAXED)

static inline uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* http_server.c */
void http_worker_push(struct worker *w, struct qnode *n); /* any thread */

/* http_conn.c (worker thread) */
void http_conn_new(struct worker *w, int fd, const struct sockaddr_storage *ss, socklen_t sl);
void http_conn_kill(struct conn *c);
void http_conn_process(struct conn *c);
void http_conn_flush(struct conn *c);
void http_conn_update(struct conn *c);
void http_conn_release(struct conn *c);
void http_ex_free(struct worker *w, struct http_exchange *ex);
void http_detached_remove(struct worker *w, struct http_exchange *ex);

/* http_conn.c, for http_stream.c */
bool http_ex_store(struct http_exchange *ex, int status, const char *ctype, const char *extra,
                   size_t xlen); /* any thread, by the completer; false on OOM (503 stored) */
bool http_conn_emit_out(struct conn *c, const char *data, size_t len); /* false: conn killed */
void http_conn_pop(struct conn *c, struct http_exchange *ex, bool close); /* frees ex */

/* http_stream.c (worker thread unless said otherwise) */
bool http_stream_pump(struct conn *c, struct http_exchange *ex); /* true: done and popped */
/* The producer left bytes (or the end) that the last pump did not take. */
bool http_stream_ready(struct http_stream *st);
void http_stream_detach(struct http_stream *st); /* the exchange is being freed */
void http_stream_wake(struct worker *w, struct qnode *n); /* a Q_STREAM node */

/* http_ws.c (worker thread unless said otherwise) */
void http_ws_attach(struct conn *c, struct http_ws *ws); /* after the 101: state C_WS */
void http_ws_input(struct conn *c);       /* parses the frames in c->in */
void http_ws_pump(struct conn *c);        /* moves queued messages to the output */
void http_ws_note_output(struct conn *c); /* publishes the unsent output size (the bound) */
void http_ws_stop(struct conn *c);        /* server stopping: close 1001 */
void http_ws_detach(struct http_ws *ws);  /* the exchange or connection is being freed */
void http_ws_wake(struct worker *w, struct qnode *n); /* a Q_WS node */
/* exposed for tests (any thread) */
void http_sha1(const void *data, size_t len, uint8_t out[20]);
void http_ws_accept_key(const char *key, char out[29]);
bool http_utf8_valid(const char *s, size_t n);

/* http_router.c (build: before start; lookup: any thread after) */
int http_router_build(struct http_server *srv);
struct group *http_router_group(const struct http_server *srv, const char *path, size_t len);

#endif
