/*
 * http_load: an open-loop, rate-controlled HTTP/1.1 load generator.
 *
 * Design
 * ------
 * Request k (k = 0, 1, 2, ...) is scheduled at t0 + k / rate, whatever happened to the earlier
 * ones. Its latency is measured from that scheduled time to the last byte of its response, so a
 * server that stalls is charged for every request that should have been sent during the stall
 * (no coordinated omission). Requests scheduled while every connection is busy wait in a
 * backlog; because the schedule is a pure function of k, the backlog is just the index range
 * [next_send, next_due) and costs no memory.
 *
 * One thread, one epoll set, C keep-alive connections, at most one request in flight on each
 * (no pipelining). The first W seconds (warm-up) are sent but not recorded; the next D seconds
 * are measured. After the schedule ends the run waits up to --drain-s for outstanding measured
 * requests; any still unanswered are recorded with their latency so far (a lower bound) and
 * counted as timeouts.
 *
 * Responses are parsed as RFC 9112 says: status line, headers (at most HEAD_BYTES_MAX bytes),
 * then a body delimited by Content-Length, chunked coding, or the connection's close; 1xx
 * interim answers are skipped; 204/304 have no body. A response that violates this, a reset,
 * or a close mid-request is an error and the connection is reopened. Memory is bounded by
 * C * (HEAD_BYTES_MAX + small) plus a fixed latency histogram.
 *
 * Latency histogram: log-linear buckets over nanoseconds, exact below 2048 ns, then 1024
 * sub-buckets per power of two (relative error < 0.1 %), up to 2^40 ns (~18 min).
 *
 * Output: exactly one line on stdout,
 *   bench=http_load rate=... achieved_rps=... p50_ms=... p90_ms=... p99_ms=... p999_ms=...
 *   max_ms=... errors=... non2xx=... (and a few more key=value pairs);
 * diagnostics go to stderr. errors counts requests that got no complete response (resets,
 * malformed answers, timeouts: those still unanswered at the end, or in flight longer than
 * --timeout-s); non2xx counts complete responses with another status. For diagnosis:
 * svc_* is latency from the actual send (what a closed-loop tool would report), lag_* how late
 * requests left this process (all connections busy, or this process not running), and
 * hiccup_max_ms the longest this process woke past a deadline it asked for: a large value means
 * the machine stalled the load generator, not that the server was slow.
 * Exit status 0 when the run completed (even with errors), 2 on bad
 * arguments, 1 when no connection could be opened.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_BYTES_MAX 16384
#define LINE_BYTES_MAX 256
#define CONNECTIONS_MAX 10000
#define HEADERS_EXTRA_MAX 16
#define BODY_BYTES_MAX (64u << 20)
#define HIST_SUB_BITS 10
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_SHIFT_MAX 30 /* values up to 2^(HIST_SUB_BITS + 1 + 30) - 1 ns */
#define HIST_BUCKETS (HIST_SUB * (HIST_SHIFT_MAX + 2))
#define RECONNECT_DELAY_NS 50000000ull /* after a failed connect */

/* ---------------------------------------------------------------------------------------- */
/* Clock and histogram                                                                      */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

typedef struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t max_ns;
} hist_t;

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS;
    if (shift > HIST_SHIFT_MAX)
        return HIST_BUCKETS - 1;
    return HIST_SUB * shift + (unsigned)(v >> shift);
}

/* Highest value that falls into bucket i. */
static uint64_t hist_value(unsigned i)
{
    if (i < 2 * HIST_SUB)
        return i;
    unsigned shift = i / HIST_SUB - 1;
    uint64_t mant = i - (uint64_t)HIST_SUB * shift;
    return ((mant + 1) << shift) - 1;
}

static void hist_record(hist_t *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->total++;
    if (v > h->max_ns)
        h->max_ns = v;
}

static double hist_pct_ms(const hist_t *h, double pct)
{
    if (h->total == 0)
        return 0.0;
    uint64_t want = (uint64_t)ceil(pct / 100.0 * (double)h->total);
    if (want == 0)
        want = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t v = hist_value(i);
            return (double)(v < h->max_ns ? v : h->max_ns) / 1e6;
        }
    }
    return (double)h->max_ns / 1e6;
}

/* ---------------------------------------------------------------------------------------- */
/* Options                                                                                  */

typedef struct opts {
    const char *host;
    int port;
    const char *path;
    const char *method;
    const char *body_file;
    const char *content_type;
    const char *headers[HEADERS_EXTRA_MAX];
    int header_count;
    double rate;
    int connections;
    double duration_s;
    double warmup_s;
    double drain_s;
    double timeout_s;
} opts_t;

static void usage(void)
{
    fprintf(stderr,
            "usage: http_load --port P --rate REQ_PER_S [--host 127.0.0.1] [--path /]\n"
            "         [--method POST|GET|PUT] [--body-file F] [--content-type T]\n"
            "         [--header 'Name: value']... [--connections 32] [--duration-s 10]\n"
            "         [--warmup-s 2] [--drain-s 5] [--timeout-s 10]\n"
            "Open-loop: request k is due at k/rate; latency counts from the due time.\n");
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->path = "/";
    o->method = NULL;
    o->connections = 32;
    o->duration_s = 10;
    o->warmup_s = 2;
    o->drain_s = 5;
    o->timeout_s = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "http_load: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        double d = 0;
        if (!strcmp(a, "--host")) {
            o->host = v;
        } else if (!strcmp(a, "--port")) {
            if (parse_double(v, 1, 65535, &d))
                goto bad;
            o->port = (int)d;
        } else if (!strcmp(a, "--path")) {
            o->path = v;
        } else if (!strcmp(a, "--method")) {
            o->method = v;
        } else if (!strcmp(a, "--body-file")) {
            o->body_file = v;
        } else if (!strcmp(a, "--content-type")) {
            o->content_type = v;
        } else if (!strcmp(a, "--header")) {
            if (o->header_count >= HEADERS_EXTRA_MAX || !strchr(v, ':'))
                goto bad;
            o->headers[o->header_count++] = v;
        } else if (!strcmp(a, "--rate")) {
            if (parse_double(v, 0.001, 1e7, &o->rate))
                goto bad;
        } else if (!strcmp(a, "--connections")) {
            if (parse_double(v, 1, CONNECTIONS_MAX, &d))
                goto bad;
            o->connections = (int)d;
        } else if (!strcmp(a, "--duration-s")) {
            if (parse_double(v, 0.001, 86400, &o->duration_s))
                goto bad;
        } else if (!strcmp(a, "--warmup-s")) {
            if (parse_double(v, 0, 86400, &o->warmup_s))
                goto bad;
        } else if (!strcmp(a, "--drain-s")) {
            if (parse_double(v, 0, 3600, &o->drain_s))
                goto bad;
        } else if (!strcmp(a, "--timeout-s")) {
            if (parse_double(v, 0.001, 3600, &o->timeout_s))
                goto bad;
        } else {
            fprintf(stderr, "http_load: unknown option %s\n", a);
            return -1;
        }
        continue;
    bad:
        fprintf(stderr, "http_load: bad value for %s: %s\n", a, v);
        return -1;
    }
    if (o->port == 0 || o->rate <= 0) {
        fprintf(stderr, "http_load: --port and --rate are required\n");
        return -1;
    }
    if (!o->method)
        o->method = o->body_file ? "POST" : "GET";
    return 0;
}

/* Builds head + body into one buffer, sent as is for every request. Caller frees. */
static char *build_request(const opts_t *o, size_t *len_out)
{
    char *body = NULL;
    size_t body_len = 0;
    if (o->body_file) {
        FILE *f = fopen(o->body_file, "rb");
        if (!f) {
            fprintf(stderr, "http_load: cannot open %s: %s\n", o->body_file, strerror(errno));
            return NULL;
        }
        body = malloc(BODY_BYTES_MAX);
        if (!body) {
            fclose(f);
            return NULL;
        }
        body_len = fread(body, 1, BODY_BYTES_MAX, f);
        int too_big = !feof(f);
        fclose(f);
        if (too_big) {
            fprintf(stderr, "http_load: body file larger than %u bytes\n", BODY_BYTES_MAX);
            free(body);
            return NULL;
        }
    }
    size_t cap = body_len + 4096 + strlen(o->path) + strlen(o->host);
    for (int i = 0; i < o->header_count; i++)
        cap += strlen(o->headers[i]) + 2;
    if (o->content_type)
        cap += strlen(o->content_type);
    char *req = malloc(cap);
    if (!req) {
        free(body);
        return NULL;
    }
    int n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: %s:%d\r\n", o->method, o->path, o->host,
                     o->port);
    int has_ua = 0;
    for (int i = 0; i < o->header_count; i++) {
        if (!strncasecmp(o->headers[i], "user-agent:", 11))
            has_ua = 1;
        n += snprintf(req + n, cap - (size_t)n, "%s\r\n", o->headers[i]);
    }
    if (!has_ua)
        n += snprintf(req + n, cap - (size_t)n, "User-Agent: http_load/1\r\n");
    if (o->content_type)
        n += snprintf(req + n, cap - (size_t)n, "Content-Type: %s\r\n", o->content_type);
    if (o->body_file || strcmp(o->method, "GET") != 0)
        n += snprintf(req + n, cap - (size_t)n, "Content-Length: %zu\r\n", body_len);
    n += snprintf(req + n, cap - (size_t)n, "\r\n");
    if (body_len)
        memcpy(req + n, body, body_len);
    free(body);
    *len_out = (size_t)n + body_len;
    return req;
}

/* ---------------------------------------------------------------------------------------- */
/* Connections and response parsing                                                         */

enum conn_state { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };
enum resp_state { R_HEAD, R_BODY_LEN, R_CHUNK_SIZE, R_CHUNK_DATA, R_CHUNK_CRLF, R_TRAILER,
                  R_UNTIL_CLOSE };

typedef struct conn {
    int fd;
    enum conn_state state;
    int in_idle;       /* on the idle stack */
    uint32_t events;   /* epoll interest registered for fd */
    uint64_t served;   /* responses since the connection opened */
    uint64_t retry_ns; /* C_DOWN: when to connect again */
    /* current request */
    uint64_t req_index;
    uint64_t sent_ns;
    size_t write_off;
    /* response parser */
    enum resp_state rs;
    int status;
    int close_after;
    uint64_t body_left;
    size_t head_len;
    size_t line_len;
    char line[LINE_BYTES_MAX];
    char head[HEAD_BYTES_MAX];
} conn_t;

typedef struct run {
    opts_t o;
    char *req;
    size_t req_len;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int ep;
    conn_t *conns;
    int *idle;
    int idle_count;
    int down_count;
    double interval_ns;
    uint64_t t0;
    uint64_t n_warm;  /* requests with index < n_warm are warm-up */
    uint64_t n_total; /* requests scheduled in all */
    uint64_t next_send;
    uint64_t inflight;
    hist_t hist;     /* latency from the due time */
    hist_t svc_hist; /* latency from the first byte sent (service time, for diagnosis) */
    hist_t lag_hist; /* how late each request was sent (client-side queueing, for diagnosis) */
    uint64_t completed, status_class[6], errors, timeouts, conn_errors, last_done_ns;
    uint64_t hiccup_max_ns; /* latest wake-up past a requested deadline (machine stalls) */
} run_t;

static uint64_t due_ns(const run_t *r, uint64_t k)
{
    return r->t0 + (uint64_t)((double)k * r->interval_ns);
}

static int is_measured(const run_t *r, uint64_t k)
{
    return k >= r->n_warm;
}

/* Sets the epoll interest of c; a no-op (no system call) when it does not change. */
static void ep_set(run_t *r, conn_t *c, uint32_t events)
{
    if (c->events == events)
        return;
    c->events = events;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
        fprintf(stderr, "http_load: epoll_ctl: %s\n", strerror(errno));
        exit(1);
    }
}

static void idle_push(run_t *r, conn_t *c)
{
    if (!c->in_idle) {
        c->in_idle = 1;
        r->idle[r->idle_count++] = (int)(c - r->conns);
    }
}

static void conn_open(run_t *r, conn_t *c)
{
    c->state = C_DOWN;
    c->fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fprintf(stderr, "http_load: socket: %s\n", strerror(errno));
        exit(1);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int rc = connect(c->fd, (struct sockaddr *)&r->addr, r->addr_len);
    if (rc != 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        r->conn_errors++;
        c->retry_ns = now_ns() + RECONNECT_DELAY_NS;
        r->down_count++;
        return;
    }
    c->served = 0;
    c->events = EPOLLOUT | EPOLLIN;
    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        fprintf(stderr, "http_load: epoll_ctl add: %s\n", strerror(errno));
        exit(1);
    }
    c->state = C_CONNECTING;
}

/* Records the end (response or failure) of the request in flight on c. */
static void request_done(run_t *r, conn_t *c, int status, uint64_t t)
{
    r->inflight--;
    if (!is_measured(r, c->req_index))
        return;
    uint64_t due = due_ns(r, c->req_index);
    hist_record(&r->hist, t > due ? t - due : 0);
    hist_record(&r->svc_hist, t > c->sent_ns ? t - c->sent_ns : 0);
    hist_record(&r->lag_hist, c->sent_ns > due ? c->sent_ns - due : 0);
    if (status > 0) {
        r->completed++;
        int cls = status / 100;
        r->status_class[cls >= 1 && cls <= 5 ? cls : 0]++;
    } else {
        r->errors++;
    }
    if (t > r->last_done_ns)
        r->last_done_ns = t;
}

/*
 * Closes c; a request in flight on it fails. Reconnects right away, unless the connect failed or
 * the server closed before answering anything (then after a delay, so a refusing server does
 * not make us spin).
 */
static void conn_fail(run_t *r, conn_t *c, int connect_failed)
{
    if (c->served == 0)
        connect_failed = 1;
    if (c->state == C_BUSY)
        request_done(r, c, -1, now_ns());
    if (c->fd >= 0) {
        epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (connect_failed) {
        r->conn_errors++;
        c->state = C_DOWN;
        c->retry_ns = now_ns() + RECONNECT_DELAY_NS;
        r->down_count++;
    } else {
        conn_open(r, c);
    }
}

static void parser_reset(conn_t *c)
{
    c->rs = R_HEAD;
    c->head_len = 0;
    c->line_len = 0;
    c->status = 0;
    c->close_after = 0;
    c->body_left = 0;
}

static void conn_send(run_t *r, conn_t *c)
{
    while (c->write_off < r->req_len) {
        ssize_t n = send(c->fd, r->req + c->write_off, r->req_len - c->write_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->write_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ep_set(r, c, EPOLLIN | EPOLLOUT);
            return;
        }
        conn_fail(r, c, 0);
        return;
    }
    ep_set(r, c, EPOLLIN);
}

static void dispatch(run_t *r, conn_t *c, uint64_t k)
{
    c->state = C_BUSY;
    c->req_index = k;
    c->sent_ns = now_ns();
    c->write_off = 0;
    parser_reset(c);
    r->inflight++;
    conn_send(r, c);
}

/* Case-insensitive search for a token inside a header value. */
static int value_has(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= n; i++)
        if (!strncasecmp(v + i, tok, tl))
            return 1;
    return 0;
}

/* Parses the complete head in c->head[0..head_len). Returns 0 or -1 (malformed). */
static int head_parse(conn_t *c)
{
    const char *p = c->head, *end = c->head + c->head_len;
    if (c->head_len < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
        return -1;
    int minor = p[7] - '0';
    if (p[9] < '1' || p[9] > '9' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
        return -1;
    c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    int keep_alive = minor >= 1, chunked = 0, have_len = 0;
    uint64_t len = 0;
    const char *line = memchr(p, '\n', (size_t)(end - p));
    if (!line)
        return -1;
    line++;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            return -1;
        size_t ll = (size_t)(eol - line);
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        if (ll == 0)
            break;
        const char *colon = memchr(line, ':', ll);
        if (!colon)
            return -1;
        size_t nl = (size_t)(colon - line);
        const char *v = colon + 1;
        size_t vl = ll - nl - 1;
        while (vl && (*v == ' ' || *v == '\t')) {
            v++;
            vl--;
        }
        if (nl == 14 && !strncasecmp(line, "content-length", 14)) {
            uint64_t x = 0;
            size_t i = 0;
            for (; i < vl && v[i] >= '0' && v[i] <= '9'; i++) {
                if (x > (UINT64_MAX - 9) / 10)
                    return -1;
                x = x * 10 + (uint64_t)(v[i] - '0');
            }
            if (i == 0 || (have_len && x != len))
                return -1;
            len = x;
            have_len = 1;
        } else if (nl == 17 && !strncasecmp(line, "transfer-encoding", 17)) {
            chunked = value_has(v, vl, "chunked");
        } else if (nl == 10 && !strncasecmp(line, "connection", 10)) {
            if (value_has(v, vl, "close"))
                keep_alive = 0;
            else if (value_has(v, vl, "keep-alive"))
                keep_alive = 1;
        }
        line = eol + 1;
    }
    c->close_after = !keep_alive;
    if ((c->status >= 100 && c->status < 200) || c->status == 204 || c->status == 304) {
        c->rs = R_BODY_LEN;
        c->body_left = 0;
    } else if (chunked) {
        c->rs = R_CHUNK_SIZE;
        c->line_len = 0;
    } else if (have_len) {
        c->rs = R_BODY_LEN;
        c->body_left = len;
    } else {
        c->rs = R_UNTIL_CLOSE;
        c->close_after = 1;
    }
    return 0;
}

/* Collects one CRLF-terminated line into c->line. Returns bytes used; *done when complete. */
static long line_feed(conn_t *c, const char *p, size_t n, int *done)
{
    *done = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            *done = 1;
            if (c->line_len && c->line[c->line_len - 1] == '\r')
                c->line_len--;
            c->line[c->line_len] = '\0';
            return (long)(i + 1);
        }
        if (c->line_len + 1 >= LINE_BYTES_MAX)
            return -1;
        c->line[c->line_len++] = p[i];
    }
    return (long)n;
}

/*
 * Feeds received bytes to the parser of c. Returns 0 to continue, 1 when a response completed
 * (*used says how many bytes it took), -1 on a protocol error.
 */
static int resp_feed(conn_t *c, const char *p, size_t n, size_t *used)
{
    size_t off = 0;
    while (off < n || (c->rs == R_BODY_LEN && c->body_left == 0)) {
        switch (c->rs) {
        case R_HEAD: {
            size_t take = n - off;
            if (c->head_len + take > HEAD_BYTES_MAX)
                take = HEAD_BYTES_MAX - c->head_len;
            /* Search for the blank line, starting up to 3 bytes back across the seam. */
            size_t from = c->head_len > 3 ? c->head_len - 3 : 0;
            memcpy(c->head + c->head_len, p + off, take);
            size_t total = c->head_len + take;
            size_t end = 0;
            for (size_t i = from; i + 1 < total; i++) {
                if (c->head[i] == '\n' && c->head[i + 1] == '\n') {
                    end = i + 2;
                    break;
                }
                if (i + 3 < total && !memcmp(c->head + i, "\r\n\r\n", 4)) {
                    end = i + 4;
                    break;
                }
            }
            if (!end) {
                if (total >= HEAD_BYTES_MAX)
                    return -1;
                c->head_len = total;
                off += take;
                break;
            }
            off += end - c->head_len;
            c->head_len = end;
            if (head_parse(c) != 0)
                return -1;
            break;
        }
        case R_BODY_LEN: {
            uint64_t take = n - off < c->body_left ? n - off : c->body_left;
            off += take;
            c->body_left -= take;
            if (c->body_left == 0) {
                if (c->status >= 100 && c->status < 200) {
                    parser_reset(c); /* interim answer: the real one follows */
                    break;
                }
                *used = off;
                return 1;
            }
            break;
        }
        case R_CHUNK_SIZE:
        case R_CHUNK_CRLF:
        case R_TRAILER: {
            int done = 0;
            long u = line_feed(c, p + off, n - off, &done);
            if (u < 0)
                return -1;
            off += (size_t)u;
            if (!done)
                break;
            c->line_len = 0;
            if (c->rs == R_CHUNK_CRLF) {
                if (c->line[0] != '\0')
                    return -1;
                c->rs = R_CHUNK_SIZE;
            } else if (c->rs == R_TRAILER) {
                if (c->line[0] == '\0') {
                    *used = off;
                    return 1;
                }
            } else {
                char *e = NULL;
                errno = 0;
                unsigned long long sz = strtoull(c->line, &e, 16);
                if (e == c->line || errno || (*e != '\0' && *e != ';' && *e != ' '))
                    return -1;
                if (sz == 0) {
                    c->rs = R_TRAILER;
                } else {
                    c->rs = R_CHUNK_DATA;
                    c->body_left = sz;
                }
            }
            break;
        }
        case R_CHUNK_DATA: {
            uint64_t take = n - off < c->body_left ? n - off : c->body_left;
            off += take;
            c->body_left -= take;
            if (c->body_left == 0)
                c->rs = R_CHUNK_CRLF;
            break;
        }
        case R_UNTIL_CLOSE:
            off = n;
            break;
        }
    }
    *used = off;
    return 0;
}

static void conn_become_idle(run_t *r, conn_t *c)
{
    c->state = C_IDLE;
    idle_push(r, c);
}

static void conn_readable(run_t *r, conn_t *c)
{
    char buf[65536];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            /* Close or reset. A body delimited by the close is complete now. */
            if (c->state == C_BUSY && c->rs == R_UNTIL_CLOSE) {
                request_done(r, c, c->status, now_ns());
                c->state = C_IDLE;
                c->served++;
            }
            conn_fail(r, c, 0);
            return;
        }
        if (c->state != C_BUSY) {
            /* Bytes nobody asked for: the connection is out of step. */
            conn_fail(r, c, 0);
            return;
        }
        size_t used = 0;
        int rc = resp_feed(c, buf, (size_t)n, &used);
        if (rc < 0) {
            static int reported;
            if (reported++ < 5)
                fprintf(stderr, "http_load: malformed response (status %d)%s\n", c->status,
                        reported == 5 ? "; further ones not reported" : "");
            conn_fail(r, c, 0);
            return;
        }
        if (rc == 1) {
            request_done(r, c, c->status, now_ns());
            c->state = C_IDLE;
            c->served++;
            if (used != (size_t)n || c->close_after || c->write_off < r->req_len) {
                /* Extra bytes, the server closes, or it answered before reading the whole
                 * request: start afresh on a new connection. */
                conn_fail(r, c, 0);
                return;
            }
            conn_become_idle(r, c);
            return;
        }
    }
}

static void conn_event(run_t *r, conn_t *c, uint32_t ev)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0 || (ev & (EPOLLERR | EPOLLHUP))) {
            conn_fail(r, c, 1);
            return;
        }
        if (ev & EPOLLOUT) {
            ep_set(r, c, EPOLLIN);
            conn_become_idle(r, c);
        }
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        conn_readable(r, c);
        if (c->state != C_BUSY || c->fd < 0)
            return;
    }
    if ((ev & EPOLLOUT) && c->state == C_BUSY && c->write_off < r->req_len)
        conn_send(r, c);
}

/* ---------------------------------------------------------------------------------------- */
/* Main loop                                                                                */

static int resolve(run_t *r)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char port[16];
    snprintf(port, sizeof(port), "%d", r->o.port);
    int rc = getaddrinfo(r->o.host, port, &hints, &res);
    if (rc != 0 || !res) {
        fprintf(stderr, "http_load: cannot resolve %s: %s\n", r->o.host, gai_strerror(rc));
        return -1;
    }
    memcpy(&r->addr, res->ai_addr, res->ai_addrlen);
    r->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void wait_events(run_t *r, uint64_t until_ns)
{
    struct epoll_event evs[256];
    uint64_t t = now_ns();
    uint64_t wait = until_ns > t ? until_ns - t : 0;
    struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000ull),
                          .tv_nsec = (long)(wait % 1000000000ull)};
    int n = epoll_pwait2(r->ep, evs, 256, &ts, NULL);
    if (n < 0 && errno == ENOSYS) {
        n = epoll_wait(r->ep, evs, 256, (int)((wait + 999999) / 1000000));
    }
    if (n < 0) {
        if (errno == EINTR)
            return;
        fprintf(stderr, "http_load: epoll_wait: %s\n", strerror(errno));
        exit(1);
    }
    for (int i = 0; i < n; i++)
        conn_event(r, evs[i].data.ptr, evs[i].events);
}

/* Sends due requests on idle connections. */
static void pump(run_t *r, uint64_t t)
{
    while (r->next_send < r->n_total && due_ns(r, r->next_send) <= t && r->idle_count > 0) {
        conn_t *c = &r->conns[r->idle[--r->idle_count]];
        c->in_idle = 0;
        if (c->state != C_IDLE)
            continue;
        dispatch(r, c, r->next_send++);
    }
}

/* Reconnects connections whose delay expired; fails requests in flight for too long. */
static void housekeeping(run_t *r, uint64_t t)
{
    uint64_t timeout_ns = (uint64_t)(r->o.timeout_s * 1e9);
    for (int i = 0; i < r->o.connections; i++) {
        conn_t *c = &r->conns[i];
        if (c->state == C_DOWN && c->retry_ns <= t) {
            r->down_count--;
            conn_open(r, c);
        } else if (c->state == C_BUSY && t - c->sent_ns > timeout_ns) {
            if (is_measured(r, c->req_index))
                r->timeouts++;
            conn_fail(r, c, 0);
        }
    }
}

int main(int argc, char **argv)
{
    static run_t run;
    run_t *r = &run;
    if (parse_args(argc, argv, &r->o) != 0) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* wake within ~1 us of a due time */
    r->req = build_request(&r->o, &r->req_len);
    if (!r->req || resolve(r) != 0)
        return 2;
    r->ep = epoll_create1(EPOLL_CLOEXEC);
    r->conns = calloc((size_t)r->o.connections, sizeof(conn_t));
    r->idle = calloc((size_t)r->o.connections, sizeof(int));
    if (r->ep < 0 || !r->conns || !r->idle) {
        fprintf(stderr, "http_load: out of resources\n");
        return 1;
    }
    for (int i = 0; i < r->o.connections; i++) {
        r->conns[i].fd = -1;
        conn_open(r, &r->conns[i]);
    }
    /* Open every connection before the clock starts (up to 5 s). */
    uint64_t t_open = now_ns();
    while (r->idle_count < r->o.connections && now_ns() - t_open < 5000000000ull) {
        wait_events(r, now_ns() + 10000000ull);
        housekeeping(r, now_ns());
    }
    if (r->idle_count == 0) {
        fprintf(stderr, "http_load: no connection to %s:%d\n", r->o.host, r->o.port);
        return 1;
    }

    r->interval_ns = 1e9 / r->o.rate;
    r->n_warm = (uint64_t)ceil(r->o.warmup_s * r->o.rate);
    r->n_total = r->n_warm + (uint64_t)ceil(r->o.duration_s * r->o.rate);
    r->t0 = now_ns();
    uint64_t measure_start = due_ns(r, r->n_warm);
    uint64_t sched_end = r->t0 + (uint64_t)((r->o.warmup_s + r->o.duration_s) * 1e9);
    uint64_t deadline = sched_end + (uint64_t)(r->o.drain_s * 1e9);
    uint64_t next_house = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= next_house || (r->down_count > 0 && t >= next_house - 90000000ull)) {
            housekeeping(r, t);
            next_house = t + 100000000ull;
        }
        pump(r, t);
        if (r->next_send >= r->n_total && r->inflight == 0)
            break;
        if (t >= deadline)
            break;
        uint64_t until = next_house < deadline ? next_house : deadline;
        if (r->next_send < r->n_total && r->idle_count > 0) {
            uint64_t d = due_ns(r, r->next_send);
            if (d < until)
                until = d;
        }
        if (r->down_count > 0 && t + 10000000ull < until)
            until = t + 10000000ull;
        wait_events(r, until);
        uint64_t woke = now_ns();
        if (woke > until && woke - until > r->hiccup_max_ns && t >= r->t0 + r->o.warmup_s * 1e9)
            r->hiccup_max_ns = woke - until;
    }

    /* Whatever is still outstanding is charged with its latency so far. */
    uint64_t t_end = now_ns();
    for (int i = 0; i < r->o.connections; i++) {
        conn_t *c = &r->conns[i];
        if (c->state == C_BUSY) {
            if (is_measured(r, c->req_index))
                r->timeouts++;
            request_done(r, c, -1, t_end);
        }
        if (c->fd >= 0)
            close(c->fd);
    }
    for (uint64_t k = r->next_send; k < r->n_total; k++) {
        if (is_measured(r, k)) {
            uint64_t due = due_ns(r, k);
            hist_record(&r->hist, t_end > due ? t_end - due : 0);
            r->errors++;
            r->timeouts++;
        }
    }

    double span_s = r->o.duration_s;
    if (r->last_done_ns > measure_start && (double)(r->last_done_ns - measure_start) / 1e9 > span_s)
        span_s = (double)(r->last_done_ns - measure_start) / 1e9;
    uint64_t non2xx = r->completed - r->status_class[2];
    printf("bench=http_load rate=%.0f connections=%d duration_s=%g achieved_rps=%.1f "
           "p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f "
           "requests=%llu errors=%llu non2xx=%llu s2xx=%llu s3xx=%llu s4xx=%llu s5xx=%llu "
           "timeouts=%llu conn_errors=%llu svc_p50_ms=%.3f svc_p99_ms=%.3f "
           "lag_p50_ms=%.3f lag_p99_ms=%.3f hiccup_max_ms=%.3f\n",
           r->o.rate, r->o.connections, r->o.duration_s, (double)r->completed / span_s,
           hist_pct_ms(&r->hist, 50), hist_pct_ms(&r->hist, 90), hist_pct_ms(&r->hist, 99),
           hist_pct_ms(&r->hist, 99.9), (double)r->hist.max_ns / 1e6,
           (unsigned long long)r->hist.total, (unsigned long long)r->errors,
           (unsigned long long)non2xx, (unsigned long long)r->status_class[2],
           (unsigned long long)r->status_class[3], (unsigned long long)r->status_class[4],
           (unsigned long long)r->status_class[5], (unsigned long long)r->timeouts,
           (unsigned long long)r->conn_errors, hist_pct_ms(&r->svc_hist, 50),
           hist_pct_ms(&r->svc_hist, 99), hist_pct_ms(&r->lag_hist, 50),
           hist_pct_ms(&r->lag_hist, 99), (double)r->hiccup_max_ns / 1e6);
    fflush(stdout);
    free(r->conns);
    free(r->idle);
    free(r->req);
    close(r->ep);
    return 0;
}
