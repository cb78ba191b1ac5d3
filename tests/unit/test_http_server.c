/*
 * http_server: the real server in-process on 127.0.0.1 port 0 with test routes (immediate ones,
 * deferred ones completed from a helper thread after a delay, posted ones), driven by plain
 * blocking sockets. Deadlines in the server are short (hundreds of ms); the test itself only
 * waits for events (a response, a close) with generous upper bounds, never for a duration.
 */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <zlib.h>

#include "core/metrics.h"
#include "http/http_server.h"
#include "tally/error.h"
#include "test.h"

#define WAIT_MS 5000 /* upper bound for anything the test waits for */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- deferred completer thread ---- */

struct pending {
    struct http_exchange *ex;
    uint64_t due_ms;
    char body[64];
    size_t big;
};

static pthread_mutex_t cmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ccv = PTHREAD_COND_INITIALIZER;
static struct pending pend[512];
static int npend;
static bool cstop;
static pthread_t cthread;
static atomic_int deferred_started, deferred_completing, deferred_done, handled;
static atomic_int in_flight_max; /* most deferred exchanges outstanding at a handler call */

static void *completer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&cmu);
    while (!cstop || npend) {
        if (!npend) {
            pthread_cond_wait(&ccv, &cmu);
            continue;
        }
        int best = 0;
        for (int i = 1; i < npend; i++)
            if (pend[i].due_ms < pend[best].due_ms) best = i;
        uint64_t now = now_ms();
        if (pend[best].due_ms > now) {
            pthread_mutex_unlock(&cmu);
            sleep_ms((unsigned)(pend[best].due_ms - now < 5 ? pend[best].due_ms - now : 5));
            pthread_mutex_lock(&cmu);
            continue;
        }
        struct pending p = pend[best];
        pend[best] = pend[--npend];
        atomic_fetch_add(&deferred_completing, 1);
        pthread_mutex_unlock(&cmu);
        if (p.big) {
            char *b = malloc(p.big);
            memset(b, 'd', p.big);
            http_respond(p.ex, 200, "text/plain", b, p.big);
            free(b);
        } else {
            http_exchange_complete(p.ex, 200, "text/plain", p.body, strlen(p.body),
                                   "X-Deferred: yes\r\n");
        }
        atomic_fetch_add(&deferred_done, 1);
        pthread_mutex_lock(&cmu);
    }
    pthread_mutex_unlock(&cmu);
    return NULL;
}

static void defer(struct http_exchange *ex, unsigned ms, const char *body, size_t big)
{
    pthread_mutex_lock(&cmu);
    TALLY_ASSERT(npend < (int)TALLY_ARRAY_LEN(pend));
    struct pending *p = &pend[npend++];
    p->ex = ex;
    p->due_ms = now_ms() + ms;
    snprintf(p->body, sizeof p->body, "%s", body);
    p->big = big;
    atomic_fetch_add(&deferred_started, 1);
    pthread_cond_signal(&ccv);
    pthread_mutex_unlock(&cmu);
}

static void wait_deferred_drained(void)
{
    uint64_t end = now_ms() + WAIT_MS;
    while (atomic_load(&deferred_done) < atomic_load(&deferred_started) && now_ms() < end)
        sleep_ms(2);
    TALLY_ASSERT(atomic_load(&deferred_done) == atomic_load(&deferred_started));
}

/* ---- routes ---- */

static unsigned query_uint(const struct http_request *req, const char *name, unsigned dflt)
{
    char v[32];
    if (http_request_query(req, name, v, sizeof v, NULL) != 0) return dflt;
    return (unsigned)strtoul(v, NULL, 10);
}

static void h_hello(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)req;
    (void)arg;
    atomic_fetch_add(&handled, 1);
    http_respond(ex, 200, "text/plain", "hello", 5);
}

static void h_echo(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)arg;
    atomic_fetch_add(&handled, 1);
    char hdr[64];
    snprintf(hdr, sizeof hdr, "%zu", req->body_len);
    TALLY_ASSERT(req->body[req->body_len] == 0);
    http_exchange_add_header(ex, "X-Body-Len", hdr);
    http_respond(ex, 200, "application/octet-stream", req->body, req->body_len);
}

static void h_defer(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)arg;
    char id[32] = "";
    http_request_query(req, "id", id, sizeof id, NULL);
    atomic_fetch_add(&handled, 1);
    int outstanding = atomic_load(&deferred_started) - atomic_load(&deferred_completing) + 1;
    if (outstanding > atomic_load(&in_flight_max)) atomic_store(&in_flight_max, outstanding);
    defer(ex, query_uint(req, "ms", 10), id, query_uint(req, "big", 0));
}

static void h_ingest(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)req;
    (void)arg;
    atomic_fetch_add(&handled, 1);
    http_respond(ex, 202, "application/json", "{\"accepted\": 1}", 15);
}

static void h_big(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)arg;
    size_t n = query_uint(req, "n", 1000);
    char *b = malloc(n ? n : 1);
    memset(b, 'b', n);
    http_respond(ex, 200, "text/plain", b, n);
    free(b);
}

static void posted(void *arg)
{
    struct http_exchange *ex = arg;
    TALLY_ASSERT(http_exchange_base(ex) != NULL);
    http_respond(ex, 200, "text/plain", "posted", 6);
}

static void h_post(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)req;
    (void)arg;
    TALLY_ASSERT(http_exchange_worker(ex) < 2);
    TALLY_ASSERT(http_exchange_post(ex, posted, ex) == 0);
}

static void h_info(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)arg;
    char name[64] = "-";
    http_request_query(req, "name", name, sizeof name, NULL);
    const char *t = http_request_header(req, "x-test");
    char out[512];
    int n = snprintf(out, sizeof out, "%s|%s|%s|%s|%s|%s|%s", req->method_name, req->path,
                     req->query ? req->query : "(null)", name, t ? t : "(none)", req->client_ip,
                     req->route_name);
    http_respond(ex, 200, "text/plain", out, (size_t)n);
}

static void h_fail(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)req;
    (void)arg;
    http_exchange_add_header(ex, "Retry-After", "3");
    http_respond_error(ex, 429, "slow \"down\"\n");
}

static void add_routes(struct http_server *srv)
{
    const struct http_route routes[] = {
        {HTTP_M(HTTP_GET), "/hello", false, false, "hello", h_hello, NULL},
        {HTTP_M(HTTP_POST) | HTTP_M(HTTP_PUT), "/echo", false, false, "echo", h_echo, NULL},
        {HTTP_M(HTTP_GET) | HTTP_M(HTTP_POST), "/defer", false, false, "defer", h_defer, NULL},
        {HTTP_M(HTTP_POST), "/ingest", false, true, "ingest", h_ingest, NULL},
        {HTTP_M(HTTP_GET), "/big", false, false, NULL, h_big, NULL},
        {HTTP_M(HTTP_GET), "/post", false, false, "post", h_post, NULL},
        {HTTP_M(HTTP_GET), "/static/", true, false, "static", h_info, NULL},
        {HTTP_M(HTTP_GET), "/static/exact", false, false, "exact", h_info, NULL},
        {HTTP_M(HTTP_GET) | HTTP_M(HTTP_POST), "/info", false, false, "info", h_info, NULL},
        {HTTP_M(HTTP_GET), "/fail", false, false, "fail", h_fail, NULL},
    };
    for (size_t i = 0; i < TALLY_ARRAY_LEN(routes); i++)
        TALLY_ASSERT(http_server_route(srv, &routes[i]) == 0);
}

static void test_config(struct http_config *cfg)
{
    http_config_defaults(cfg);
    cfg->listen = "127.0.0.1:0";
    cfg->threads = 2;
    cfg->limits.linger_ms = 500;
}

static struct http_server *start(const struct http_config *cfg)
{
    struct http_server *srv;
    TALLY_ASSERT(http_server_new(cfg, &srv) == 0);
    add_routes(srv);
    TALLY_ASSERT(http_server_start(srv) == 0);
    return srv;
}

static void finish(struct http_server *srv)
{
    wait_deferred_drained();
    http_server_stop(srv, 2000);
    http_server_free(srv);
}

static struct http_server_stats stats(struct http_server *srv)
{
    struct http_server_stats st;
    http_server_stats(srv, &st);
    return st;
}

/* Polls until cond holds or WAIT_MS passes. */
#define WAIT_FOR(cond)                                                                             \
    do {                                                                                           \
        uint64_t end_ = now_ms() + WAIT_MS;                                                        \
        while (!(cond) && now_ms() < end_)                                                         \
            sleep_ms(2);                                                                           \
        ASSERT_TRUE(cond);                                                                         \
    } while (0)

/* ---- client ---- */

struct client {
    int fd;
    char *buf;
    size_t len, cap;
};

static struct client cli_open_addr(int family, uint16_t port)
{
    struct client c = {.fd = socket(family, SOCK_STREAM, 0)};
    TALLY_ASSERT(c.fd >= 0);
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        a->sin6_addr = in6addr_loopback;
        sl = sizeof *a;
    }
    TALLY_ASSERT(connect(c.fd, (struct sockaddr *)&ss, sl) == 0);
    return c;
}

static struct client cli_open(struct http_server *srv)
{
    return cli_open_addr(AF_INET, http_server_port(srv));
}

static void cli_close(struct client *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

static void cli_send(struct client *c, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        TALLY_ASSERT(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

static void cli_sends(struct client *c, const char *s)
{
    cli_send(c, s, strlen(s));
}

/* Reads more bytes into the buffer; 0 on EOF/reset, -1 on timeout. */
static int cli_fill(struct client *c, int timeout_ms)
{
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    if (poll(&pfd, 1, timeout_ms) <= 0) return -1;
    if (c->cap - c->len < 65536) {
        c->cap = c->cap ? c->cap * 2 + 65536 : 65536;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n <= 0) return 0;
    c->len += (size_t)n;
    return 1;
}

struct resp {
    int status;
    char head[8192];
    char *body;
    size_t body_len;
};

static const char *resp_header(const struct resp *r, const char *name)
{
    static _Thread_local char val[1024]; /* the concurrent test reads from threads */
    size_t nl = strlen(name);
    const char *p = strstr(r->head, "\r\n");
    while (p && p[2] != '\r') {
        p += 2;
        const char *e = strstr(p, "\r\n");
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            snprintf(val, sizeof val, "%.*s", (int)(e - v), v);
            return val;
        }
        p = e;
    }
    return NULL;
}

/* Reads one response (skipping nothing); returns false on EOF/timeout before it completes. */
static bool cli_response(struct client *c, struct resp *r, bool head_request)
{
    memset(r, 0, sizeof *r);
    uint64_t end = now_ms() + WAIT_MS;
    char *eoh;
    while (!c->buf || !(eoh = memmem(c->buf, c->len, "\r\n\r\n", 4))) {
        if (now_ms() > end || cli_fill(c, 100) == 0) return false;
    }
    size_t hl = (size_t)(eoh - c->buf) + 4;
    TALLY_ASSERT(hl < sizeof r->head);
    memcpy(r->head, c->buf, hl);
    r->head[hl] = 0;
    r->status = atoi(r->head + 9);
    const char *cl = resp_header(r, "content-length");
    size_t blen =
        cl && !head_request && r->status != 204 && r->status != 100 ? strtoul(cl, NULL, 10) : 0;
    while (c->len < hl + blen) {
        if (now_ms() > end || cli_fill(c, 100) == 0) return false;
    }
    r->body = malloc(blen + 1);
    memcpy(r->body, c->buf + hl, blen);
    r->body[blen] = 0;
    r->body_len = blen;
    memmove(c->buf, c->buf + hl + blen, c->len - hl - blen);
    c->len -= hl + blen;
    return true;
}

static void resp_free(struct resp *r)
{
    free(r->body);
    r->body = NULL;
}

/* True when the server closes the connection (EOF or reset) within WAIT_MS; data discarded. */
static bool cli_wait_closed(struct client *c)
{
    uint64_t end = now_ms() + WAIT_MS;
    while (now_ms() < end) {
        int r = cli_fill(c, 50);
        if (r == 0) return true;
        if (r == 1) c->len = 0;
    }
    return false;
}

/* A request on a fresh connection; returns the response. */
static struct resp one_request(struct http_server *srv, const char *raw)
{
    struct client c = cli_open(srv);
    cli_sends(&c, raw);
    struct resp r;
    if (!cli_response(&c, &r, false)) {
        r.status = -1;
        r.body = calloc(1, 1);
    }
    cli_close(&c);
    return r;
}

#define EXPECT_STATUS(r, st) ASSERT_EQ((r).status, (st))
#define EXPECT_JSON_ERROR(r)                                                                       \
    do {                                                                                           \
        const char *ct_ = resp_header(&(r), "content-type");                                       \
        ASSERT_TRUE(ct_ &&strcmp(ct_, "application/json") == 0);                                   \
        ASSERT_TRUE(strncmp((r).body, "{\"error\": \"", 11) == 0 && (r).body_len > 14);            \
    } while (0)

/* ---- tests ---- */

TEST(keep_alive_and_basics)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    struct client c = cli_open(srv);
    struct resp r;
    for (int i = 0; i < 3; i++) {
        cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
        ASSERT_TRUE(cli_response(&c, &r, false));
        EXPECT_STATUS(r, 200);
        ASSERT_STREQ(r.body, "hello");
        ASSERT_STREQ(resp_header(&r, "content-length"), "5");
        ASSERT_STREQ(resp_header(&r, "content-type"), "text/plain");
        ASSERT_TRUE(resp_header(&r, "date") != NULL);
        ASSERT_TRUE(resp_header(&r, "connection") == NULL);
        resp_free(&r);
    }
    /* 405 with Allow, then (close_on_error) the connection closes. */
    cli_sends(&c, "DELETE /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 405);
    EXPECT_JSON_ERROR(r);
    ASSERT_STREQ(resp_header(&r, "allow"), "GET, HEAD, OPTIONS");
    ASSERT_STREQ(resp_header(&r, "connection"), "close");
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);

    r = one_request(srv, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_STATUS(r, 404);
    EXPECT_JSON_ERROR(r);
    resp_free(&r);
    /* Handler error with extra header and escaped message. */
    r = one_request(srv, "GET /fail HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_STATUS(r, 429);
    ASSERT_STREQ(resp_header(&r, "retry-after"), "3");
    ASSERT_STREQ(r.body, "{\"error\": \"slow \\\"down\\\"\\u000a\"}");
    resp_free(&r);
    finish(srv);
}

TEST(keep_alive_after_error_when_configured)
{
    struct http_config cfg;
    test_config(&cfg);
    cfg.close_on_error = false;
    struct http_server *srv = start(&cfg);
    struct client c = cli_open(srv);
    struct resp r;
    /* A 404 with a body: the body is read and discarded, the connection stays usable. */
    cli_sends(&c, "POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd"
                  "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 404);
    ASSERT_TRUE(resp_header(&r, "connection") == NULL);
    resp_free(&r);
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 200);
    resp_free(&r);
    /* Same with a chunked body. */
    cli_sends(&c, "POST /hello HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "3\r\nabc\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 405);
    resp_free(&r);
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 200);
    resp_free(&r);
    cli_close(&c);
    finish(srv);
}

TEST(pipelining_keeps_order_with_deferred)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    struct client c = cli_open(srv);
    cli_sends(&c, "GET /defer?ms=300&id=first HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET /defer?ms=5&id=third HTTP/1.1\r\nHost: t\r\n\r\n"
                  "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz"
                  "\r\n" /* an extra empty line between requests is allowed */
                  "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET /post HTTP/1.1\r\nHost: t\r\n\r\n");
    const char *want[] = {"first", "hello", "third", "xyz", "", "posted"};
    for (int i = 0; i < 6; i++) {
        struct resp r;
        ASSERT_TRUE(cli_response(&c, &r, i == 4));
        EXPECT_STATUS(r, 200);
        ASSERT_STREQ(r.body, want[i]);
        if (i == 0) ASSERT_STREQ(resp_header(&r, "x-deferred"), "yes");
        if (i == 3) ASSERT_STREQ(resp_header(&r, "x-body-len"), "3");
        if (i == 4) ASSERT_STREQ(resp_header(&r, "content-length"), "5");
        resp_free(&r);
    }
    cli_close(&c);
    finish(srv);
}

TEST(pipeline_max_bounds_in_flight)
{
    struct http_config cfg;
    test_config(&cfg);
    cfg.limits.pipeline_max = 2;
    struct http_server *srv = start(&cfg);
    wait_deferred_drained();
    atomic_store(&in_flight_max, 0);
    struct client c = cli_open(srv);
    char req[2048] = "";
    for (int i = 0; i < 8; i++) {
        char one[128];
        snprintf(one, sizeof one, "GET /defer?ms=20&id=r%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
        strcat(req, one);
    }
    cli_sends(&c, req);
    for (int i = 0; i < 8; i++) {
        struct resp r;
        char want[8];
        snprintf(want, sizeof want, "r%d", i);
        ASSERT_TRUE(cli_response(&c, &r, false));
        ASSERT_STREQ(r.body, want);
        resp_free(&r);
    }
    ASSERT_EQ(atomic_load(&in_flight_max), 2);
    cli_close(&c);
    finish(srv);
}

static size_t gz(const void *in, size_t len, int wbits, unsigned char **out)
{
    size_t cap = len + 1024;
    *out = malloc(cap);
    z_stream z;
    memset(&z, 0, sizeof z);
    deflateInit2(&z, 6, Z_DEFLATED, wbits, 8, Z_DEFAULT_STRATEGY);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = *out;
    z.avail_out = (uInt)cap;
    TALLY_ASSERT(deflate(&z, Z_FINISH) == Z_STREAM_END);
    size_t n = cap - z.avail_out;
    deflateEnd(&z);
    return n;
}

TEST(bodies_chunked_gzip_deflate)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    struct client c = cli_open(srv);
    struct resp r;
    /* Chunked, sent in small pieces with an extension and a trailer. */
    const char *parts[] = {"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-",
                           "Encoding: chunked\r\n",
                           "\r\n5;x=1\r",
                           "\nhel",
                           "lo\r\n6\r\n world\r\n0\r\nX-T: 1\r\n",
                           "\r\n"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(parts); i++) {
        cli_sends(&c, parts[i]);
        sleep_ms(1);
    }
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 200);
    ASSERT_STREQ(r.body, "hello world");
    resp_free(&r);

    /* gzip, deflate (zlib) and raw deflate bodies, one of them 200 KB. */
    size_t big = 200000;
    char *text = malloc(big);
    for (size_t i = 0; i < big; i++)
        text[i] = (char)('a' + (i * 7919) % 26);
    const char *names[] = {"gzip", "deflate", "deflate"};
    int wbits[] = {31, 15, -15};
    size_t sizes[] = {big, 100, 1000};
    for (int k = 0; k < 3; k++) {
        unsigned char *z;
        size_t zn = gz(text, sizes[k], wbits[k], &z);
        char head[256];
        snprintf(head, sizeof head,
                 "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: %s\r\n"
                 "Content-Length: %zu\r\n\r\n",
                 names[k], zn);
        cli_sends(&c, head);
        cli_send(&c, z, zn);
        free(z);
        ASSERT_TRUE(cli_response(&c, &r, false));
        EXPECT_STATUS(r, 200);
        ASSERT_EQ(r.body_len, sizes[k]);
        ASSERT_MEMEQ(r.body, text, sizes[k]);
        resp_free(&r);
    }
    /* A large plain Content-Length body (read straight into place). */
    char head[128];
    snprintf(head, sizeof head, "PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n",
             big);
    cli_sends(&c, head);
    sleep_ms(5);
    cli_send(&c, text, big);
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 200);
    ASSERT_EQ(r.body_len, big);
    ASSERT_MEMEQ(r.body, text, big);
    resp_free(&r);
    free(text);
    cli_close(&c);

    /* Broken gzip is 400; unknown coding 415. */
    r = one_request(srv, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\n"
                         "Content-Length: 10\r\n\r\n\x1f\x8b\x08garbage");
    EXPECT_STATUS(r, 400);
    EXPECT_JSON_ERROR(r);
    resp_free(&r);
    r = one_request(srv, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: br\r\n"
                         "Content-Length: 2\r\n\r\n{}");
    EXPECT_STATUS(r, 415);
    EXPECT_JSON_ERROR(r);
    resp_free(&r);
    finish(srv);
}

TEST(limits_431_413_414_zip_bomb)
{
    struct http_config cfg;
    test_config(&cfg);
    cfg.limits.body_decoded_bytes_max = 1u << 20;
    struct http_server *srv = start(&cfg);
    struct resp r;
    /* 431: one huge header, the whole request sent at once (linger keeps the answer). */
    size_t n = 70000;
    char *req = malloc(n + 100);
    int hl = snprintf(req, 100, "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + hl, 'a', n);
    memcpy(req + hl + n, "\r\n\r\n", 5);
    struct client c = cli_open(srv);
    cli_send(&c, req, strlen(req));
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 431);
    EXPECT_JSON_ERROR(r);
    ASSERT_STREQ(resp_header(&r, "connection"), "close");
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);
    /* 414 */
    memcpy(req, "GET /", 5);
    memset(req + 5, 'a', 9000);
    strcpy(req + 9005, " HTTP/1.1\r\nHost: t\r\n\r\n");
    r = one_request(srv, req);
    EXPECT_STATUS(r, 414);
    resp_free(&r);
    free(req);
    /* 431: too many header lines. */
    char many[4096] = "GET /hello HTTP/1.1\r\nHost: t\r\n";
    for (int i = 0; i < 100; i++)
        sprintf(many + strlen(many), "X-%d: v\r\n", i);
    strcat(many, "\r\n");
    r = one_request(srv, many);
    EXPECT_STATUS(r, 431);
    ASSERT_TRUE(strstr(r.body, "too many header fields") != NULL);
    resp_free(&r);
    /* 413 from Content-Length, before any body byte. */
    c = cli_open(srv);
    cli_sends(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n");
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 413);
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);
    /* 413 while reading chunks (a 2 MiB chunk announced, then sent: linger absorbs it). */
    c = cli_open(srv);
    cli_sends(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "200000\r\n");
    char *junk = calloc(1, 1 << 21);
    cli_send(&c, junk, 1 << 21);
    free(junk);
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 413);
    resp_free(&r);
    cli_close(&c);
    /* Zip bomb: 10 MB of zeros compress to ~10 KB; decoded cap 1 MiB. */
    size_t bn = 10u << 20;
    char *zeros = calloc(1, bn);
    unsigned char *z;
    size_t zn = gz(zeros, bn, 31, &z);
    free(zeros);
    c = cli_open(srv);
    char head[200];
    snprintf(head, sizeof head,
             "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\n"
             "Content-Length: %zu\r\n\r\n",
             zn);
    cli_sends(&c, head);
    cli_send(&c, z, zn);
    free(z);
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 413);
    EXPECT_JSON_ERROR(r);
    ASSERT_TRUE(strstr(r.body, "decoded") != NULL);
    resp_free(&r);
    cli_close(&c);
    /* Framing errors close the connection: TE gzip, CL+TE, bare LF. */
    const char *bad[] = {
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /hello HTTP/1.1\nHost: t\r\n\r\n",
        "GET /hello HTTP/1.1\r\n\r\n",
        "GET /hello HTTP/2.0\r\nHost: t\r\n\r\n",
        "BREW /hello HTTP/1.1\r\nHost: t\r\n\r\n",
    };
    int want[] = {400, 400, 400, 400, 505, 501};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(bad); i++) {
        c = cli_open(srv);
        cli_sends(&c, bad[i]);
        ASSERT_TRUE(cli_response(&c, &r, false));
        EXPECT_STATUS(r, want[i]);
        EXPECT_JSON_ERROR(r);
        resp_free(&r);
        ASSERT_TRUE(cli_wait_closed(&c));
        cli_close(&c);
    }
    finish(srv);
}

TEST(slowloris_head_and_trickled_body)
{
    struct http_config cfg;
    test_config(&cfg);
    cfg.limits.head_timeout_ms = 300;
    cfg.limits.body_timeout_ms = 300;
    struct http_server *srv = start(&cfg);
    /* Head: one byte every 20 ms never completes; the total deadline answers 408 and closes. */
    struct client c = cli_open(srv);
    cli_sends(&c, "GET /hello HTTP/1.1\r\nX-Slow: ");
    struct resp r;
    bool got = false;
    for (int i = 0; i < WAIT_MS / 20 && !got; i++) {
        if (send(c.fd, "a", 1, MSG_NOSIGNAL) != 1) break;
        got = cli_fill(&c, 20) != -1;
    }
    ASSERT_TRUE(got);
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 408);
    EXPECT_JSON_ERROR(r);
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);
    ASSERT_EQ(stats(srv).timeouts_head, 1);
    /* Body: the head is complete, the body trickles. */
    c = cli_open(srv);
    cli_sends(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
    got = false;
    for (int i = 0; i < WAIT_MS / 20 && !got; i++) {
        if (send(c.fd, "b", 1, MSG_NOSIGNAL) != 1) break;
        got = cli_fill(&c, 20) != -1;
    }
    ASSERT_TRUE(got);
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 408);
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);
    ASSERT_EQ(stats(srv).timeouts_body, 1);
    finish(srv);
}

TEST(idle_keep_alive_closes)
{
    struct http_config cfg;
    test_config(&cfg);
    cfg.limits.idle_timeout_ms = 200;
    struct http_server *srv = start(&cfg);
    struct client c = cli_open(srv);
    cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    struct resp r;
    ASSERT_TRUE(cli_response(&c, &r, false));
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);
    /* A connection that never sends a byte is idle too. */
    c = cli_open(srv);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);
    ASSERT_TRUE(stats(srv).timeouts_idle >= 2);
    WAIT_FOR(stats(srv).connections_open == 0);
    finish(srv);
}

TEST(max_connections_503)
{
    struct http_config cfg;
    test_config(&cfg);
    cfg.limits.connections_max = 2;
    struct http_server *srv = start(&cfg);
    struct client a = cli_open(srv), b = cli_open(srv);
    struct resp r;
    cli_sends(&a, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    cli_sends(&b, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_TRUE(cli_response(&a, &r, false));
    resp_free(&r);
    ASSERT_TRUE(cli_response(&b, &r, false));
    resp_free(&r);
    struct client x = cli_open(srv);
    ASSERT_TRUE(cli_response(&x, &r, false));
    EXPECT_STATUS(r, 503);
    EXPECT_JSON_ERROR(r);
    ASSERT_STREQ(resp_header(&r, "connection"), "close");
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&x));
    cli_close(&x);
    ASSERT_EQ(stats(srv).connections_rejected, 1);
    /* Room again once one closes. */
    cli_close(&a);
    WAIT_FOR(stats(srv).connections_open == 1);
    x = cli_open(srv);
    cli_sends(&x, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_TRUE(cli_response(&x, &r, false));
    EXPECT_STATUS(r, 200);
    resp_free(&r);
    cli_close(&x);
    cli_close(&b);
    finish(srv);
}

TEST(graceful_stop_completes_in_flight)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    uint16_t port = http_server_port(srv);
    struct client idle = cli_open(srv);
    struct resp r;
    cli_sends(&idle, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_TRUE(cli_response(&idle, &r, false));
    resp_free(&r);
    int before = atomic_load(&deferred_started);
    struct client busy = cli_open(srv);
    cli_sends(&busy, "GET /defer?ms=300&id=inflight HTTP/1.1\r\nHost: t\r\n\r\n");
    WAIT_FOR(atomic_load(&deferred_started) == before + 1);
    ASSERT_EQ(http_server_stop(srv, WAIT_MS), 0);
    ASSERT_TRUE(cli_response(&busy, &r, false));
    EXPECT_STATUS(r, 200);
    ASSERT_STREQ(r.body, "inflight");
    ASSERT_STREQ(resp_header(&r, "connection"), "close");
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&busy));
    ASSERT_TRUE(cli_wait_closed(&idle));
    cli_close(&busy);
    cli_close(&idle);
    /* Not accepting any more. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ASSERT_TRUE(connect(fd, (struct sockaddr *)&a, sizeof a) != 0);
    close(fd);
    ASSERT_EQ(http_server_stop(srv, 0), 0); /* idempotent */
    finish(srv);
}

TEST(stop_deadline_cuts_and_detaches)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    int before = atomic_load(&deferred_started);
    struct client c = cli_open(srv);
    cli_sends(&c, "GET /defer?ms=400&id=late HTTP/1.1\r\nHost: t\r\n\r\n");
    WAIT_FOR(atomic_load(&deferred_started) == before + 1);
    ASSERT_EQ(http_server_stop(srv, 50), 1);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);
    /* The late completion lands on the stopped worker's inbox; free reclaims it. */
    wait_deferred_drained();
    ASSERT_EQ(stats(srv).exchanges_detached, 1);
    http_server_free(srv);
}

TEST(client_gone_before_deferred_completion)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    /* Reset: the server sees the error at once and detaches the exchange. */
    int before = atomic_load(&deferred_started);
    struct client c = cli_open(srv);
    cli_sends(&c, "GET /defer?ms=200&id=x HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET /defer?ms=100&id=y HTTP/1.1\r\nHost: t\r\n\r\n"
                  "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    WAIT_FOR(atomic_load(&deferred_started) == before + 2);
    struct linger lg = {1, 0};
    setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    cli_close(&c);
    WAIT_FOR(stats(srv).exchanges_detached == 2);
    wait_deferred_drained();
    /* Half-close: the client shuts its side; responses still go out, then the server closes. */
    before = atomic_load(&deferred_started);
    c = cli_open(srv);
    cli_sends(&c, "GET /defer?ms=100&id=half HTTP/1.1\r\nHost: t\r\n\r\n");
    WAIT_FOR(atomic_load(&deferred_started) == before + 1);
    shutdown(c.fd, SHUT_WR);
    struct resp r;
    ASSERT_TRUE(cli_response(&c, &r, false));
    ASSERT_STREQ(r.body, "half");
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);
    /* Plain close (FIN) before completion: the write later fails or is dropped, safely. */
    before = atomic_load(&deferred_started);
    c = cli_open(srv);
    cli_sends(&c, "GET /defer?ms=100&id=fin HTTP/1.1\r\nHost: t\r\n\r\n");
    WAIT_FOR(atomic_load(&deferred_started) == before + 1);
    cli_close(&c);
    wait_deferred_drained();
    WAIT_FOR(stats(srv).connections_open == 0);
    finish(srv);
}

TEST(cors_preflight)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    struct resp r =
        one_request(srv, "OPTIONS /ingest HTTP/1.1\r\nHost: t\r\n"
                         "Origin: https://a.example\r\n"
                         "Access-Control-Request-Method: POST\r\n"
                         "Access-Control-Request-Headers: content-type, x-umami\r\n\r\n");
    EXPECT_STATUS(r, 204);
    ASSERT_STREQ(resp_header(&r, "access-control-allow-origin"), "*");
    ASSERT_STREQ(resp_header(&r, "access-control-allow-methods"), "POST, OPTIONS");
    ASSERT_STREQ(resp_header(&r, "access-control-allow-headers"), "content-type, x-umami");
    ASSERT_STREQ(resp_header(&r, "access-control-max-age"), "86400");
    ASSERT_TRUE(resp_header(&r, "content-length") == NULL);
    resp_free(&r);
    r = one_request(srv, "POST /ingest HTTP/1.1\r\nHost: t\r\nOrigin: https://a.example\r\n"
                         "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}");
    EXPECT_STATUS(r, 202);
    ASSERT_STREQ(resp_header(&r, "access-control-allow-origin"), "*");
    resp_free(&r);
    /* Non-CORS route: OPTIONS answers Allow, no CORS headers. */
    r = one_request(srv, "OPTIONS /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_STATUS(r, 204);
    ASSERT_STREQ(resp_header(&r, "allow"), "POST, PUT, OPTIONS");
    ASSERT_TRUE(resp_header(&r, "access-control-allow-origin") == NULL);
    resp_free(&r);
    finish(srv);

    /* An origin list: listed origins are echoed (Vary: Origin), others get nothing. */
    test_config(&cfg);
    const char *origins[] = {"https://ok.example"};
    cfg.cors_origins = origins;
    cfg.cors_origins_count = 1;
    cfg.cors_allow_headers = "Content-Type";
    srv = start(&cfg);
    r = one_request(srv, "OPTIONS /ingest HTTP/1.1\r\nHost: t\r\nOrigin: https://ok.example\r\n"
                         "Access-Control-Request-Headers: x-other\r\n\r\n");
    ASSERT_STREQ(resp_header(&r, "access-control-allow-origin"), "https://ok.example");
    ASSERT_STREQ(resp_header(&r, "vary"), "Origin");
    ASSERT_STREQ(resp_header(&r, "access-control-allow-headers"), "Content-Type");
    resp_free(&r);
    r = one_request(srv, "POST /ingest HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\n"
                         "Content-Length: 0\r\n\r\n");
    EXPECT_STATUS(r, 202);
    ASSERT_TRUE(resp_header(&r, "access-control-allow-origin") == NULL);
    resp_free(&r);
    finish(srv);
}

TEST(expect_continue)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    struct client c = cli_open(srv);
    struct resp r;
    cli_sends(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  "Content-Length: 5\r\n\r\n");
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 100);
    resp_free(&r);
    cli_sends(&c, "12345");
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 200);
    ASSERT_STREQ(r.body, "12345");
    resp_free(&r);
    /* Behind a deferred request: the 100 comes after the earlier response, in order. */
    cli_sends(&c, "GET /defer?ms=150&id=d HTTP/1.1\r\nHost: t\r\n\r\n"
                  "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  "Content-Length: 2\r\n\r\n");
    ASSERT_TRUE(cli_response(&c, &r, false));
    ASSERT_STREQ(r.body, "d");
    resp_free(&r);
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 100);
    resp_free(&r);
    cli_sends(&c, "ok");
    ASSERT_TRUE(cli_response(&c, &r, false));
    ASSERT_STREQ(r.body, "ok");
    resp_free(&r);
    cli_close(&c);
    /* Refused before the body: final status, no 100, connection closed. */
    const char *refused[] = {
        "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n",
        "POST /nope HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\n",
    };
    int want[] = {413, 404, 417};
    for (int i = 0; i < 3; i++) {
        c = cli_open(srv);
        cli_sends(&c, refused[i]);
        ASSERT_TRUE(cli_response(&c, &r, false));
        EXPECT_STATUS(r, want[i]);
        resp_free(&r);
        ASSERT_TRUE(cli_wait_closed(&c));
        cli_close(&c);
    }
    finish(srv);
}

TEST(http10_and_head)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    struct client c = cli_open(srv);
    struct resp r;
    cli_sends(&c, "GET /hello HTTP/1.0\r\n\r\n");
    ASSERT_TRUE(cli_response(&c, &r, false));
    EXPECT_STATUS(r, 200);
    ASSERT_STREQ(resp_header(&r, "connection"), "close");
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&c));
    cli_close(&c);
    c = cli_open(srv);
    for (int i = 0; i < 2; i++) {
        cli_sends(&c, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        ASSERT_TRUE(cli_response(&c, &r, false));
        ASSERT_STREQ(resp_header(&r, "connection"), "keep-alive");
        ASSERT_STREQ(r.body, "hello");
        resp_free(&r);
    }
    /* HTTP/1.1 Connection: close is honoured. */
    cli_sends(&c, "HEAD /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    ASSERT_TRUE(cli_response(&c, &r, true));
    EXPECT_STATUS(r, 200);
    ASSERT_STREQ(resp_header(&r, "content-length"), "5");
    ASSERT_STREQ(resp_header(&r, "connection"), "close");
    resp_free(&r);
    ASSERT_TRUE(cli_wait_closed(&c));
    ASSERT_EQ(c.len, 0); /* no body after the HEAD response */
    cli_close(&c);
    finish(srv);
}

TEST(request_fields_and_routing)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    struct resp r = one_request(srv, "GET /info?name=J%C3%BCrgen+X&x=1 HTTP/1.1\r\nHost: t\r\n"
                                     "x-TEST:  v1 \r\n\r\n");
    ASSERT_STREQ(r.body, "GET|/info|name=J%C3%BCrgen+X&x=1|J\xc3\xbcrgen X|v1|127.0.0.1|info");
    resp_free(&r);
    r = one_request(srv, "GET /static/a/b%20c HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_STREQ(r.body, "GET|/static/a/b%20c|(null)|-|(none)|127.0.0.1|static");
    resp_free(&r);
    r = one_request(srv, "GET /static/exact? HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_STREQ(r.body, "GET|/static/exact||-|(none)|127.0.0.1|exact");
    resp_free(&r);
    r = one_request(srv, "GET http://t.example/info HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_STREQ(r.body, "GET|/info|(null)|-|(none)|127.0.0.1|info");
    resp_free(&r);
    r = one_request(srv, "GET /static HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_STATUS(r, 404);
    resp_free(&r);
    finish(srv);
}

TEST(slow_reader_is_closed)
{
    struct http_config cfg;
    test_config(&cfg);
    cfg.limits.write_timeout_ms = 300;
    cfg.limits.out_bytes_max = 256 * 1024;
    struct http_server *srv = start(&cfg);
    /* Never reads: the write deadline closes it. Responses are larger than what the kernel
     * buffers on loopback (tcp_wmem max 4 MiB + a tiny receive window). */
    int small = 4096;
    struct client c = {.fd = socket(AF_INET, SOCK_STREAM, 0)};
    setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(http_server_port(srv)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ASSERT_EQ(connect(c.fd, (struct sockaddr *)&a, sizeof a), 0);
    for (int i = 0; i < 4; i++)
        cli_sends(&c, "GET /big?n=8000000 HTTP/1.1\r\nHost: t\r\n\r\n");
    WAIT_FOR(stats(srv).timeouts_write == 1);
    WAIT_FOR(stats(srv).connections_open == 0);
    cli_close(&c);
    /* Deferred big responses completing together overflow the output cap. */
    c.fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    ASSERT_EQ(connect(c.fd, (struct sockaddr *)&a, sizeof a), 0);
    for (int i = 0; i < 3; i++)
        cli_sends(&c, "GET /defer?ms=100&big=6000000 HTTP/1.1\r\nHost: t\r\n\r\n");
    WAIT_FOR(stats(srv).output_overflows == 1);
    WAIT_FOR(stats(srv).connections_open == 0);
    cli_close(&c);
    finish(srv);
}

static void *client_thread(void *arg)
{
    struct http_server *srv = arg;
    struct client c = cli_open(srv);
    int ok = 0;
    for (int i = 0; i < 100; i++) {
        char req[128];
        bool deferred = i % 3 == 0;
        snprintf(req, sizeof req,
                 deferred ? "GET /defer?ms=1&id=%d HTTP/1.1\r\nHost: t\r\n\r\n"
                          : "POST /echo HTTP/1.1\r\nHost: t\r\n"
                            "Content-Length: 4\r\n\r\n%04d",
                 i);
        cli_sends(&c, req);
        struct resp r;
        if (!cli_response(&c, &r, false)) {
            fprintf(stderr, "DEBUG %d: no response\n", i);
            break;
        }
        char want[16];
        snprintf(want, sizeof want, deferred ? "%d" : "%04d", i);
        ok += r.status == 200 && strcmp(r.body, want) == 0;
        if (!(r.status == 200 && strcmp(r.body, want) == 0))
            fprintf(stderr, "DEBUG %d: status %d body '%s' want '%s'\n", i, r.status, r.body, want);
        resp_free(&r);
    }
    cli_close(&c);
    return (void *)(intptr_t)ok;
}

TEST(concurrent_clients)
{
    struct http_config cfg;
    test_config(&cfg);
    struct http_server *srv = start(&cfg);
    pthread_t th[8];
    for (int i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, client_thread, srv);
    int total = 0;
    for (int i = 0; i < 8; i++) {
        void *ok;
        pthread_join(th[i], &ok);
        total += (int)(intptr_t)ok;
    }
    ASSERT_EQ(total, 800);
    finish(srv);
}

TEST(metrics_exported)
{
    struct http_config cfg;
    test_config(&cfg);
    struct metrics *m = metrics_new();
    cfg.metrics = m;
    struct http_server *srv = start(&cfg);
    ASSERT_TRUE(http_server_metrics(srv) == m);
    struct client c = cli_open(srv);
    struct resp r;
    for (int i = 0; i < 3; i++) {
        cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
        ASSERT_TRUE(cli_response(&c, &r, false));
        resp_free(&r);
    }
    cli_close(&c);
    r = one_request(srv, "GET /missing HTTP/1.1\r\nHost: t\r\n\r\n");
    resp_free(&r);
    WAIT_FOR(stats(srv).requests == 4);
    struct evbuffer *out = evbuffer_new();
    ASSERT_EQ(metrics_render(m, out), 0);
    evbuffer_add(out, "", 1);
    const char *text = (const char *)evbuffer_pullup(out, -1);
    ASSERT_TRUE(strstr(text, "tally_http_requests_total{route=\"hello\",status=\"200\"} 3\n") != NULL);
    ASSERT_TRUE(strstr(text, "tally_http_requests_total{route=\"none\",status=\"404\"} 1\n") != NULL);
    ASSERT_TRUE(strstr(text, "status=\"500\"") == NULL); /* zero cells hidden */
    ASSERT_TRUE(strstr(text, "tally_http_connections_accepted_total 2\n") != NULL);
    ASSERT_TRUE(strstr(text, "# TYPE tally_http_request_duration_seconds histogram\n") != NULL);
    ASSERT_TRUE(strstr(text, "tally_http_request_duration_seconds_count 4\n") != NULL);
    evbuffer_free(out);
    finish(srv);
    metrics_free(m);
}

TEST(config_and_ipv6)
{
    struct http_config cfg;
    struct http_server *srv;
    test_config(&cfg);
    const char *bad[] = {"127.0.0.1", "::1:80", "[::1]80", "127.0.0.1:99999", "h:x"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(bad); i++) {
        cfg.listen = bad[i];
        ASSERT_EQ(http_server_new(&cfg, &srv), TALLY_EINVAL);
    }
    test_config(&cfg);
    cfg.threads = 0;
    ASSERT_EQ(http_server_new(&cfg, &srv), TALLY_EINVAL);
    /* Port in use. */
    test_config(&cfg);
    struct http_server *a = start(&cfg);
    char listen[32];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", http_server_port(a));
    cfg.listen = listen;
    ASSERT_EQ(http_server_new(&cfg, &srv), TALLY_EIO);
    finish(a);
    /* Duplicate route. */
    test_config(&cfg);
    ASSERT_EQ(http_server_new(&cfg, &srv), 0);
    struct http_route rt = {HTTP_M(HTTP_GET), "/x", false, false, NULL, h_hello, NULL};
    ASSERT_EQ(http_server_route(srv, &rt), 0);
    ASSERT_EQ(http_server_route(srv, &rt), 0);
    ASSERT_EQ(http_server_start(srv), TALLY_EINVAL);
    http_server_free(srv);
    /* Never started: free is enough. */
    ASSERT_EQ(http_server_new(&cfg, &srv), 0);
    http_server_free(srv);
    http_server_free(NULL);
    /* IPv6 loopback, when the machine has it. */
    test_config(&cfg);
    cfg.listen = "[::1]:0";
    if (http_server_new(&cfg, &srv) != 0) {
        printf("note: no IPv6 loopback, skipped\n");
        return;
    }
    add_routes(srv);
    ASSERT_EQ(http_server_start(srv), 0);
    struct client c = cli_open_addr(AF_INET6, http_server_port(srv));
    cli_sends(&c, "GET /info HTTP/1.1\r\nHost: t\r\n\r\n");
    struct resp r;
    ASSERT_TRUE(cli_response(&c, &r, false));
    ASSERT_STREQ(r.body, "GET|/info|(null)|-|(none)|::1|info");
    resp_free(&r);
    cli_close(&c);
    finish(srv);
}

/* TEST_ONLY=name runs one test (debugging aid). */
#define RUN_F(name)                                                                                \
    do {                                                                                           \
        const char *only_ = getenv("TEST_ONLY");                                                   \
        if (!only_ || strcmp(only_, #name) == 0) RUN(name);                                        \
    } while (0)

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    pthread_create(&cthread, NULL, completer_main, NULL);
    RUN_F(keep_alive_and_basics);
    RUN_F(keep_alive_after_error_when_configured);
    RUN_F(pipelining_keeps_order_with_deferred);
    RUN_F(pipeline_max_bounds_in_flight);
    RUN_F(bodies_chunked_gzip_deflate);
    RUN_F(limits_431_413_414_zip_bomb);
    RUN_F(slowloris_head_and_trickled_body);
    RUN_F(idle_keep_alive_closes);
    RUN_F(max_connections_503);
    RUN_F(graceful_stop_completes_in_flight);
    RUN_F(stop_deadline_cuts_and_detaches);
    RUN_F(client_gone_before_deferred_completion);
    RUN_F(cors_preflight);
    RUN_F(expect_continue);
    RUN_F(http10_and_head);
    RUN_F(request_fields_and_routing);
    RUN_F(slow_reader_is_closed);
    RUN_F(concurrent_clients);
    RUN_F(metrics_exported);
    RUN_F(config_and_ipv6);
    pthread_mutex_lock(&cmu);
    cstop = true;
    pthread_cond_signal(&ccv);
    pthread_mutex_unlock(&cmu);
    pthread_join(cthread, NULL);
    return test_summary();
}
