/* Unit tests for streamed responses (http_stream_*, http_server.h): a producer thread streams a
 * large body in small writes (chunked framing, byte-exact, keep-alive afterwards, pipelined
 * requests answered in order), back-pressure bounds what is queued when the client does not
 * read, a client that disconnects makes the producer's writes fail with TALLY_ECLOSED, HTTP/1.0
 * gets a body ended by the close, HEAD gets the head only. */
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/http_server.h"
#include "tally/error.h"
#include "test.h"

#define WINDOW (16u << 10)

struct job {
    struct http_exchange *ex;
    size_t total, step;
    int timeout_ms;
};

static atomic_int last_rc;           /* the producer's last write result */
static atomic_size_t accepted_bytes; /* bytes the producer got in */
static atomic_int producers_done;

static void *producer(void *arg)
{
    struct job *j = arg;
    struct http_stream *st;
    if (http_stream_start(j->ex, 200, "text/plain", "X-Stream: yes\r\n", WINDOW, &st) != 0) {
        free(j);
        return NULL;
    }
    char buf[8192];
    int rc = 0;
    for (size_t off = 0; off < j->total && rc == 0;) {
        size_t n = j->total - off < j->step ? j->total - off : j->step;
        for (size_t i = 0; i < n; i++) buf[i] = (char)('a' + (off + i) % 26);
        rc = http_stream_write(st, buf, n, j->timeout_ms);
        if (rc == 0) {
            off += n;
            atomic_fetch_add(&accepted_bytes, n);
        }
    }
    atomic_store(&last_rc, rc);
    if (rc == 0)
        http_stream_finish(st);
    else
        http_stream_abort(st);
    atomic_fetch_add(&producers_done, 1);
    free(j);
    return NULL;
}

static void h_stream(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)arg;
    char v[32];
    size_t n;
    struct job *j = calloc(1, sizeof *j);
    j->ex = ex;
    j->total = http_request_query(req, "n", v, sizeof v, &n) == 0 ? strtoul(v, NULL, 10) : 1000;
    j->step = 1000;
    j->timeout_ms = http_request_query(req, "t", v, sizeof v, &n) == 0 ? atoi(v) : -1;
    pthread_t t;
    TALLY_ASSERT(pthread_create(&t, NULL, producer, j) == 0);
    pthread_detach(t);
}

static void h_hello(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)req;
    (void)arg;
    http_respond(ex, 200, "text/plain", "hello", 5);
}

static struct http_server *start(void)
{
    struct http_config cfg;
    http_config_defaults(&cfg);
    cfg.listen = "127.0.0.1:0";
    cfg.threads = 2;
    cfg.limits.write_timeout_ms = 1000;
    struct http_server *srv;
    TALLY_ASSERT(http_server_new(&cfg, &srv) == 0);
    struct http_route r1 = {.methods = HTTP_M(HTTP_GET), .path = "/s", .handler = h_stream};
    struct http_route r2 = {.methods = HTTP_M(HTTP_GET), .path = "/hello", .handler = h_hello};
    TALLY_ASSERT(http_server_route(srv, &r1) == 0 && http_server_route(srv, &r2) == 0);
    TALLY_ASSERT(http_server_start(srv) == 0);
    atomic_store(&producers_done, 0);
    atomic_store(&accepted_bytes, 0);
    return srv;
}

static int cli(struct http_server *srv, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(http_server_port(srv))};
    a.sin_addr.s_addr = htonl(0x7f000001);
    TALLY_ASSERT(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    return fd;
}

static void sends(int fd, const char *s)
{
    TALLY_ASSERT(send(fd, s, strlen(s), MSG_NOSIGNAL) == (ssize_t)strlen(s));
}

/* Reads until `until` appears after `from` (or EOF / 5 s); returns the malloc'd bytes. */
static char *recv_until(int fd, const char *until, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 5000) <= 0) break;
        if (n + 65536 > cap) b = realloc(b, (cap *= 2) + 1);
        ssize_t r = recv(fd, b + n, cap - n, 0);
        if (r <= 0) break;
        n += (size_t)r;
        b[n] = 0;
        if (until && memmem(b, n, until, strlen(until))) break;
    }
    b[n] = 0;
    *len = n;
    return b;
}

/* Decodes a chunked body starting at p; returns its length into out (or -1 when malformed). */
static long dechunk(const char *p, const char *end, char *out)
{
    long n = 0;
    for (;;) {
        char *e;
        unsigned long sz = strtoul(p, &e, 16);
        if (e == p || e + 2 > end || memcmp(e, "\r\n", 2)) return -1;
        p = e + 2;
        if (sz == 0) return memcmp(p, "\r\n", 2) == 0 ? n : -1;
        if (p + sz + 2 > end) return -1;
        memcpy(out + n, p, sz);
        n += (long)sz;
        p += sz + 2;
    }
}

TEST(streams_large_body_chunked_then_keeps_alive)
{
    struct http_server *srv = start();
    int fd = cli(srv, 0);
    /* pipelined: the stream, then a plain request that must wait for it */
    sends(fd, "GET /s?n=1000000 HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    size_t len;
    char *b = recv_until(fd, "\r\n\r\nhello", &len);
    ASSERT_TRUE(strstr(b, "HTTP/1.1 200") == b);
    ASSERT_TRUE(strstr(b, "Transfer-Encoding: chunked\r\n") != NULL);
    ASSERT_TRUE(strstr(b, "X-Stream: yes\r\n") != NULL);
    ASSERT_TRUE(strstr(b, "Content-Length") == NULL || strstr(b, "Content-Length") >
                strstr(b, "0\r\n\r\nHTTP/1.1"));
    char *body = strstr(b, "\r\n\r\n") + 4;
    char *out = malloc(1000000);
    long n = dechunk(body, b + len, out);
    ASSERT_EQ(n, 1000000);
    bool same = true;
    for (long i = 0; i < n; i++) same &= out[i] == (char)('a' + i % 26);
    ASSERT_TRUE(same);
    ASSERT_TRUE(strstr(body, "0\r\n\r\nHTTP/1.1 200 OK") != NULL);
    free(out);
    free(b);
    close(fd);
    ASSERT_EQ(atomic_load(&last_rc), 0);
    http_server_stop(srv, 2000);
    http_server_free(srv);
}

TEST(back_pressure_bounds_queued_bytes_and_disconnect_aborts)
{
    struct http_server *srv = start();
    int fd = cli(srv, 4096);
    /* the client reads nothing; writes wait at most 50 ms each, then EAGAIN */
    sends(fd, "GET /s?n=200000000&t=50 HTTP/1.1\r\nHost: x\r\n\r\n");
    for (int i = 0; i < 200 && atomic_load(&producers_done) == 0; i++) usleep(10000);
    ASSERT_EQ(atomic_load(&producers_done), 1);
    ASSERT_EQ(atomic_load(&last_rc), TALLY_EAGAIN);
    /* what the producer got in: socket buffers + output window + stream window, far from
     * the 200 MB it wanted */
    ASSERT_TRUE(atomic_load(&accepted_bytes) < (8u << 20));
    close(fd);

    /* now a producer that waits forever: the client goes away and the write fails */
    atomic_store(&producers_done, 0);
    fd = cli(srv, 4096);
    sends(fd, "GET /s?n=200000000 HTTP/1.1\r\nHost: x\r\n\r\n");
    char tmp[100];
    ASSERT_TRUE(recv(fd, tmp, sizeof tmp, 0) > 0);
    close(fd);
    for (int i = 0; i < 500 && atomic_load(&producers_done) == 0; i++) usleep(10000);
    ASSERT_EQ(atomic_load(&producers_done), 1);
    ASSERT_EQ(atomic_load(&last_rc), TALLY_ECLOSED);
    http_server_stop(srv, 2000);
    http_server_free(srv);
}

TEST(http10_body_ends_with_close_and_head_gets_head_only)
{
    struct http_server *srv = start();
    int fd = cli(srv, 0);
    sends(fd, "GET /s?n=5000 HTTP/1.0\r\n\r\n");
    size_t len;
    char *b = recv_until(fd, NULL, &len); /* until the server closes */
    ASSERT_TRUE(strstr(b, "Transfer-Encoding") == NULL);
    ASSERT_TRUE(strstr(b, "Connection: close") != NULL);
    ASSERT_EQ((long)(b + len - (strstr(b, "\r\n\r\n") + 4)), 5000);
    free(b);
    close(fd);

    atomic_store(&producers_done, 0);
    fd = cli(srv, 0);
    sends(fd, "HEAD /s?n=100000 HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    b = recv_until(fd, "hello", &len);
    ASSERT_TRUE(strstr(b, "HTTP/1.1 200") == b);
    char *second = strstr(b, "\r\n\r\n") + 4;
    ASSERT_TRUE(strncmp(second, "HTTP/1.1 200", 12) == 0); /* no body bytes between */
    free(b);
    close(fd);
    for (int i = 0; i < 500 && atomic_load(&producers_done) == 0; i++) usleep(10000);
    ASSERT_EQ(atomic_load(&last_rc), TALLY_ECLOSED);
    http_server_stop(srv, 2000);
    http_server_free(srv);
}

int main(void)
{
    RUN(streams_large_body_chunked_then_keeps_alive);
    RUN(back_pressure_bounds_queued_bytes_and_disconnect_aborts);
    RUN(http10_body_ends_with_close_and_head_gets_head_only);
    return test_summary();
}
