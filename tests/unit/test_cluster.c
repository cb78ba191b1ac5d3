/* cluster: partitions, ownership, forwarding to a tiny HTTP server, adopted salts, and the
 * shared salts bucket on a real nats-server (when /usr/sbin/nats-server exists). */
#include "nats_test.h"
#include "test.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <xxhash.h>

#include <curl/curl.h>

#include "app/app_int.h"
#include "app/cluster.h"
#include "app/query_api.h"
#include "core/config.h"
#include "core/keys.h"
#include "http/http_server.h"
#include "core/diag.h"
#include "ingest/timefmt.h"
#include "ingest/visitor.h"
#include "tally/error.h"

#define DAY TIMEFMT_DAY_MS
static const int64_t T0 = 1767225600000LL + 10 * 3600 * 1000; /* 2026-01-01T10:00Z */

static struct tally_config *cfg_with(const char *const *kv)
{
    struct tally_config *cfg = config_new_defaults();
    char err[CONFIG_ERROR_BYTES_MAX];
    for (int i = 0; kv && kv[i]; i += 3)
        if (config_set(cfg, kv[i], kv[i + 1], kv[i + 2], err) != 0)
            TEST_FAIL_("config_set %s.%s: %s", kv[i], kv[i + 1], err);
    return cfg;
}

static struct cluster *open_ok(const struct tally_config *cfg)
{
    struct cluster *c = NULL;
    char err[256] = "";
    int rc = cluster_open(cfg, &c, err);
    if (rc != 0) TEST_FAIL_("cluster_open: %s: %s", tally_strerror(rc), err);
    return c;
}

/* ---- partitions ---------------------------------------------------------------------------- */

TEST(partition_of_is_stable)
{
    /* Every node, every version must agree: these values are part of the data layout. */
    ASSERT_EQ(cluster_partition_of("example.com", 11, 16), 9);
    ASSERT_EQ(cluster_partition_of("blog.example.org", 16, 16), 1);
    ASSERT_EQ(cluster_partition_of("a", 1, 16), 11);
    ASSERT_EQ(cluster_partition_of("shop.example.net", 16, 16), 4);
    ASSERT_EQ(cluster_partition_of("example.com", 11, 7), 4);
    ASSERT_EQ(cluster_partition_of("example.com", 11, 1024), 649);
    ASSERT_EQ(cluster_partition_of("example.com", 11, 1), 0);
    ASSERT_EQ(cluster_partition_of("a", 1, 16), XXH64("a", 1, 0) % 16);
    /* only the given bytes count */
    ASSERT_EQ(cluster_partition_of("example.comXYZ", 11, 16), 9);
}

TEST(partition_of_spreads)
{
    enum { N = 16000, P = 16 };
    int count[P] = {0};
    for (int i = 0; i < N; i++) {
        char name[64];
        int n = snprintf(name, sizeof name, "site%d.example.com", i);
        uint32_t p = cluster_partition_of(name, (size_t)n, P);
        ASSERT_TRUE(p < P);
        count[p]++;
    }
    for (int p = 0; p < P; p++) { /* expected 1000 each; 4 sigma is about 125 */
        if (count[p] < 850 || count[p] > 1150) TEST_FAIL_("partition %d got %d", p, count[p]);
    }
}

/* ---- ownership and owners ------------------------------------------------------------------ */

TEST(ownership_and_owner_urls)
{
    struct tally_config *cfg = cfg_with((const char *const[]){
        "cluster", "partitions", "16",
        "cluster", "owned_partitions", "0-3, 9",
        "cluster", "partition_owners",
        "0-3=http://10.0.0.1:8080/, 4-8=https://b.example:443,9=http://c:1///",
        NULL});
    cfg->role = CONFIG_ROLE_PROCESS; /* validation would want jetstream; not needed here */
    struct cluster *c = open_ok(cfg);
    ASSERT_EQ(cluster_partitions(c), 16);
    for (uint32_t p = 0; p < 16; p++)
        ASSERT_EQ(cluster_owns(c, p), p <= 3 || p == 9);
    ASSERT_TRUE(!cluster_owns(c, 16));
    ASSERT_STREQ(cluster_owner_url(c, 0), "http://10.0.0.1:8080");
    ASSERT_STREQ(cluster_owner_url(c, 3), "http://10.0.0.1:8080");
    ASSERT_STREQ(cluster_owner_url(c, 4), "https://b.example:443");
    ASSERT_STREQ(cluster_owner_url(c, 8), "https://b.example:443");
    ASSERT_STREQ(cluster_owner_url(c, 9), "http://c:1");
    ASSERT_TRUE(cluster_owner_url(c, 10) == NULL);
    ASSERT_TRUE(cluster_owner_url(c, 15) == NULL);
    ASSERT_TRUE(cluster_owner_url(c, 99) == NULL);
    cluster_close(c);

    /* role ingest owns nothing, whatever owned_partitions says */
    cfg->role = CONFIG_ROLE_INGEST;
    c = open_ok(cfg);
    for (uint32_t p = 0; p < 16; p++) ASSERT_TRUE(!cluster_owns(c, p));
    ASSERT_STREQ(cluster_owner_url(c, 5), "https://b.example:443");
    cluster_close(c);
    config_free(cfg);

    /* role all with no list owns everything */
    cfg = cfg_with((const char *const[]){"cluster", "partitions", "4", NULL});
    c = open_ok(cfg);
    for (uint32_t p = 0; p < 4; p++) ASSERT_TRUE(cluster_owns(c, p));
    ASSERT_TRUE(cluster_owner_url(c, 0) == NULL);
    cluster_close(c);
    cluster_close(NULL);
    config_free(cfg);
}

TEST(salts_sync_local_backend_rotates)
{
    struct tally_config *cfg = cfg_with(NULL);
    struct cluster *c = open_ok(cfg);
    struct visitor_salts *s = NULL;
    ASSERT_EQ(visitor_salts_open(test_tmpdir(), T0, &s), 0);
    int64_t days[4];
    ASSERT_EQ(cluster_salts_sync(c, s, T0 + 2 * DAY), 0);
    ASSERT_EQ(visitor_salts_days(s, days, 4), 3);
    ASSERT_EQ(days[0], timefmt_day_of_ms(T0) + 1); /* was tomorrow's */
    ASSERT_EQ(days[2], timefmt_day_of_ms(T0) + 3);
    visitor_salts_close(s);
    cluster_close(c);
    config_free(cfg);
}

/* ---- adopted salts (visitor.h) ------------------------------------------------------------- */

static uint64_t anon(const struct visitor_salts *s, int64_t ts)
{
    return visitor_hash_anonymous(s, ts, "example.com", 11, "192.0.2.1", 9, "UA/1", 4);
}

static uint64_t client(const struct visitor_salts *s)
{
    return visitor_hash_client(s, "example.com", 11, "user-42", 7);
}

static size_t read_file(const char *dir, const char *name, uint8_t *buf, size_t cap)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    if (!f) return 0;
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

TEST(adopt_exact_set)
{
    const char *d1 = test_tmpdir(), *d2 = test_tmpdir();
    struct visitor_salts *a = NULL, *b = NULL;
    ASSERT_EQ(visitor_salts_open(d1, T0, &a), 0);
    ASSERT_EQ(visitor_salts_open(d2, T0, &b), 0);
    ASSERT_NE(anon(a, T0), anon(b, T0)); /* independent local salts */
    ASSERT_NE(client(a), client(b));
    uint8_t before[256], after[256];
    size_t nb = read_file(d1, "salts", before, sizeof before);
    ASSERT_TRUE(nb > 0);
    uint64_t local_client = client(a);

    int64_t today = timefmt_day_of_ms(T0);
    uint8_t key[16], salts[3][16];
    memset(key, 7, sizeof key);
    for (int i = 0; i < 3; i++) memset(salts[i], 0x40 + i, 16);
    int64_t days[3] = {today - 1, today, today + 1};
    const uint8_t(*cs)[16] = (const uint8_t(*)[16])salts;

    /* invalid sets change nothing */
    int64_t no_today[2] = {today + 1, today + 2};
    ASSERT_EQ(visitor_salts_adopt(a, key, no_today, cs, 2, T0), TALLY_EINVAL);
    int64_t unordered[2] = {today + 1, today};
    ASSERT_EQ(visitor_salts_adopt(a, key, unordered, cs, 2, T0), TALLY_EINVAL);
    ASSERT_EQ(visitor_salts_adopt(a, key, days, cs, 0, T0), TALLY_EINVAL);
    ASSERT_EQ(visitor_salts_adopt(a, key, days, cs, 4, T0), TALLY_EINVAL);
    ASSERT_EQ(client(a), local_client);

    ASSERT_EQ(visitor_salts_adopt(a, key, days, cs, 3, T0), 0);
    ASSERT_EQ(visitor_salts_adopt(b, key, days, cs, 3, T0), 0);
    ASSERT_EQ(client(a), client(b));
    ASSERT_NE(client(a), local_client);
    for (int64_t ts = T0 - DAY; ts <= T0 + DAY; ts += DAY) ASSERT_EQ(anon(a, ts), anon(b, ts));
    ASSERT_NE(anon(a, T0), anon(a, T0 + DAY));
    ASSERT_EQ(anon(a, T0 + 5 * DAY), anon(a, T0)); /* not held: today's */
    int64_t held[4];
    ASSERT_EQ(visitor_salts_days(a, held, 4), 3);
    ASSERT_EQ(held[0], today - 1);
    ASSERT_EQ(held[2], today + 1);

    /* adopted: rotation changes nothing, and the node's own file stays as it was */
    uint64_t h = anon(a, T0 + DAY);
    ASSERT_EQ(visitor_salts_rotate(a, T0 + 3 * DAY), 0);
    ASSERT_EQ(visitor_salts_days(a, held, 4), 3);
    ASSERT_EQ(anon(a, T0 + DAY), h);
    size_t na = read_file(d1, "salts", after, sizeof after);
    ASSERT_EQ(na, nb);
    ASSERT_MEMEQ(before, after, nb);

    /* a later adoption replaces the whole set */
    int64_t two[2] = {today + 1, today + 2};
    ASSERT_EQ(visitor_salts_adopt(a, key, two, cs, 2, T0 + DAY), 0);
    ASSERT_EQ(visitor_salts_days(a, held, 4), 2);
    ASSERT_EQ(anon(a, T0 + DAY), anon(b, T0 - DAY)); /* salts[0]: today+1 in a, today-1 in b */
    visitor_salts_close(a);
    visitor_salts_close(b);

    /* reopened from the untouched file: the local set again */
    ASSERT_EQ(visitor_salts_open(d1, T0, &a), 0);
    ASSERT_EQ(client(a), local_client);
    visitor_salts_close(a);
}

/* ---- a tiny HTTP server -------------------------------------------------------------------- */

struct tiny {
    int lfd;
    uint16_t port;
    pthread_t th;
    _Atomic int stop;
    int delay_ms;
    const char *status_line; /* "200 OK" */
    const char *content_type;
    const char *body;
    pthread_mutex_t mu;
    char last[16384]; /* the last complete request, raw */
    size_t last_len;
    int requests, accepts;
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Length of a complete request at the start of buf (headers + Content-Length), or 0. */
static size_t request_len(const char *buf, size_t len)
{
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - buf) + 4, body = 0;
    for (const char *p = buf; p < end; p++) {
        if ((p == buf || p[-1] == '\n') && !strncasecmp(p, "content-length:", 15))
            body = strtoul(p + 15, NULL, 10);
    }
    return len >= head + body ? head + body : 0;
}

static void *tiny_main(void *arg)
{
    struct tiny *t = arg;
    enum { CONNS = 8 };
    int fd[CONNS];
    char *buf[CONNS];
    size_t len[CONNS];
    for (int i = 0; i < CONNS; i++) {
        fd[i] = -1;
        buf[i] = malloc(sizeof t->last);
        len[i] = 0;
    }
    while (!atomic_load(&t->stop)) {
        struct pollfd p[CONNS + 1];
        p[0] = (struct pollfd){.fd = t->lfd, .events = POLLIN};
        for (int i = 0; i < CONNS; i++) p[i + 1] = (struct pollfd){.fd = fd[i], .events = POLLIN};
        if (poll(p, CONNS + 1, 50) <= 0) continue;
        if (p[0].revents & POLLIN) {
            int c = accept(t->lfd, NULL, NULL);
            for (int i = 0; c >= 0 && i < CONNS; i++) {
                if (fd[i] < 0) {
                    fd[i] = c;
                    len[i] = 0;
                    c = -1;
                }
            }
            if (c >= 0) close(c);
            pthread_mutex_lock(&t->mu);
            t->accepts++;
            pthread_mutex_unlock(&t->mu);
        }
        for (int i = 0; i < CONNS; i++) {
            if (fd[i] < 0 || !(p[i + 1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t r = read(fd[i], buf[i] + len[i], sizeof t->last - len[i]);
            if (r <= 0) {
                close(fd[i]);
                fd[i] = -1;
                continue;
            }
            len[i] += (size_t)r;
            size_t n = request_len(buf[i], len[i]);
            if (n == 0) continue;
            pthread_mutex_lock(&t->mu);
            memcpy(t->last, buf[i], n);
            t->last[n] = 0;
            t->last_len = n;
            t->requests++;
            pthread_mutex_unlock(&t->mu);
            memmove(buf[i], buf[i] + n, len[i] - n);
            len[i] -= n;
            if (t->delay_ms) sleep_ms(t->delay_ms);
            char resp[4096];
            int m = snprintf(resp, sizeof resp,
                             "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n%s",
                             t->status_line, t->content_type, strlen(t->body), t->body);
            if (send(fd[i], resp, (size_t)m, MSG_NOSIGNAL) != m) {
                close(fd[i]);
                fd[i] = -1;
            }
        }
    }
    for (int i = 0; i < CONNS; i++) {
        if (fd[i] >= 0) close(fd[i]);
        free(buf[i]);
    }
    return NULL;
}

static void tiny_start(struct tiny *t)
{
    memset(t, 0, sizeof *t);
    t->status_line = "200 OK";
    t->content_type = "application/json";
    t->body = "{\"results\": []}";
    pthread_mutex_init(&t->mu, NULL);
    t->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(t->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(t->lfd, 16) != 0 ||
        getsockname(t->lfd, (struct sockaddr *)&a, &al) != 0)
        TEST_FAIL_("tiny server: %s", strerror(errno));
    t->port = ntohs(a.sin_port);
    pthread_create(&t->th, NULL, tiny_main, t);
}

static void tiny_stop(struct tiny *t)
{
    atomic_store(&t->stop, 1);
    pthread_join(t->th, NULL);
    close(t->lfd);
    pthread_mutex_destroy(&t->mu);
}

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd);
    return ntohs(a.sin_port);
}

static bool has(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

TEST(forward_relays_request_and_answer)
{
    static struct tiny t; /* the thread outlives a failed assertion's longjmp otherwise */
    tiny_start(&t);
    struct tally_config *cfg = cfg_with(NULL);
    cfg->forward_timeout_ms = 3000;
    struct cluster *c = open_ok(cfg);
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%u", (unsigned)t.port);
    const char *q = "{\"site_id\": \"example.com\", \"metrics\": [\"visitors\"]}";
    struct cluster_response r;
    ASSERT_EQ(cluster_forward(c, base, "POST", "/api/v2/query?debug=1", "Bearer k3y",
                              "application/json", q, strlen(q), &r), 0);
    ASSERT_EQ(r.status, 200);
    ASSERT_STREQ(r.content_type, "application/json");
    ASSERT_STREQ(r.body, "{\"results\": []}");
    ASSERT_EQ(r.body_len, strlen("{\"results\": []}"));
    free(r.body);
    pthread_mutex_lock(&t.mu);
    ASSERT_TRUE(!strncmp(t.last, "POST /api/v2/query?debug=1 HTTP/1.1\r\n", 37));
    ASSERT_TRUE(has(t.last, "\r\nAuthorization: Bearer k3y\r\n"));
    ASSERT_TRUE(has(t.last, "\r\nContent-Type: application/json\r\n"));
    ASSERT_TRUE(has(t.last, "\r\nX-Tally-Forwarded: 1\r\n"));
    ASSERT_TRUE(!has(t.last, "Expect:"));
    ASSERT_TRUE(t.last_len > strlen(q) && !strcmp(t.last + t.last_len - strlen(q), q));
    pthread_mutex_unlock(&t.mu);

    /* a GET with another answer; the keep-alive connection is reused */
    t.status_line = "404 Not Found";
    t.content_type = "text/plain; charset=utf-8";
    t.body = "no such site";
    ASSERT_EQ(cluster_forward(c, base, "GET", "/api/v1/stats/aggregate?site_id=a.example",
                              "Bearer k3y", NULL, NULL, 0, &r), 0);
    ASSERT_EQ(r.status, 404);
    ASSERT_STREQ(r.content_type, "text/plain; charset=utf-8");
    ASSERT_STREQ(r.body, "no such site");
    free(r.body);
    pthread_mutex_lock(&t.mu);
    ASSERT_TRUE(!strncmp(t.last, "GET /api/v1/stats/aggregate?site_id=a.example HTTP/1.1\r\n",
                         56));
    ASSERT_TRUE(!has(t.last, "Content-Type"));
    ASSERT_TRUE(has(t.last, "\r\nX-Tally-Forwarded: 1\r\n"));
    ASSERT_EQ(t.requests, 2);
    ASSERT_EQ(t.accepts, 1);
    pthread_mutex_unlock(&t.mu);

    /* an empty answer body is "" */
    t.status_line = "200 OK";
    t.body = "";
    ASSERT_EQ(cluster_forward(c, base, "POST", "/api/v1/funnel", NULL, NULL, NULL, 0, &r), 0);
    ASSERT_EQ(r.status, 200);
    ASSERT_TRUE(r.body && r.body_len == 0 && r.body[0] == 0);
    free(r.body);
    pthread_mutex_lock(&t.mu);
    ASSERT_TRUE(!has(t.last, "Authorization"));
    ASSERT_TRUE(!has(t.last, "Content-Type"));
    pthread_mutex_unlock(&t.mu);

    /* a header with CR/LF is never sent */
    ASSERT_EQ(cluster_forward(c, base, "GET", "/x", "Bearer a\r\nX-Evil: 1", NULL, NULL, 0, &r),
              0);
    ASSERT_EQ(r.status, 502);
    free(r.body);

    /* a slow owner: 504 after forward_timeout_ms */
    cluster_close(c);
    cfg->forward_timeout_ms = 300;
    c = open_ok(cfg);
    t.delay_ms = 1500;
    int64_t t0 = timefmt_mono_ms();
    ASSERT_EQ(cluster_forward(c, base, "GET", "/api/v1/stats/aggregate", "Bearer k3y", NULL,
                              NULL, 0, &r), 0);
    int64_t took = timefmt_mono_ms() - t0;
    ASSERT_EQ(r.status, 504);
    ASSERT_STREQ(r.content_type, "application/json");
    ASSERT_TRUE(has(r.body, "\"error\": \"") && has(r.body, "300 ms"));
    ASSERT_TRUE(took >= 250 && took < 1400);
    free(r.body);
    tiny_stop(&t);

    /* an unreachable owner: 502 */
    snprintf(base, sizeof base, "http://127.0.0.1:%u", (unsigned)free_port());
    ASSERT_EQ(cluster_forward(c, base, "GET", "/api/v1/stats/aggregate", "Bearer k3y", NULL,
                              NULL, 0, &r), 0);
    ASSERT_EQ(r.status, 502);
    ASSERT_STREQ(r.content_type, "application/json");
    ASSERT_TRUE(has(r.body, "{\"error\": \"cannot reach"));
    free(r.body);
    cluster_close(c);
    config_free(cfg);
}

/* ---- the query API forwards (query_api.c) --------------------------------------------------- */

struct reply {
    long status;
    char body[4096];
    size_t len;
    char ct[128];
};

static size_t reply_body(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t add = size * n;
    if (add > sizeof r->body - 1 - r->len) add = sizeof r->body - 1 - r->len;
    memcpy(r->body + r->len, p, add);
    r->len += add;
    r->body[r->len] = 0;
    return size * n;
}

/* One request to the node (key NULL: no Authorization); extra: one more header or NULL. */
static struct reply ask(uint16_t port, const char *method, const char *path, const char *key,
                        const char *body, const char *extra)
{
    struct reply r;
    memset(&r, 0, sizeof r);
    char url[512], auth[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", (unsigned)port, path);
    CURL *h = curl_easy_init();
    struct curl_slist *hd = NULL;
    if (key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        hd = curl_slist_append(hd, auth);
    }
    if (body) hd = curl_slist_append(hd, "Content-Type: application/json");
    if (extra) hd = curl_slist_append(hd, extra);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, reply_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    if (!strcmp(method, "POST")) curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
    if (curl_easy_perform(h) == CURLE_OK) {
        const char *ct = NULL;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
        curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct);
        snprintf(r.ct, sizeof r.ct, "%s", ct ? ct : "");
    }
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    return r;
}

TEST(query_api_forwards_to_the_owner)
{
    static struct tiny t;
    tiny_start(&t);
    t.body = "{\"results\": [{\"metrics\": [42]}]}";
    char key[KEY_TEXT_BYTES], line[KEY_DIGEST_LINE_BYTES], owners[128];
    ASSERT_EQ(key_generate(KEY_SCOPE_READ, key, line), 0);
    /* example.com is in partition 9 of 16, shop.example.net in 4 (partition_of_is_stable) */
    snprintf(owners, sizeof owners, "9=http://127.0.0.1:%u/", (unsigned)t.port);
    struct tally_config *cfg = cfg_with((const char *const[]){
        "cluster", "partitions", "16",
        "cluster", "partition_owners", owners,
        "auth", "key_digests", line,
        "server", "auto_sites", "false", /* unknown sites: 404 here (else the owner decides) */
        NULL});
    char err[CONFIG_ERROR_BYTES_MAX];
    ASSERT_EQ(config_load_string(cfg, "[site example.com]\nids = alias-1\n"
                                      "[site shop.example.net]\n", "test", err), 0);
    cfg->role = CONFIG_ROLE_INGEST; /* owns nothing, has no store */

    struct app app;
    memset(&app, 0, sizeof app);
    atomic_init(&app.cfg, cfg);
    app.metrics = metrics_new();
    app.cluster = open_ok(cfg);
    struct http_config hc;
    http_config_defaults(&hc);
    hc.listen = "127.0.0.1:0";
    hc.threads = 1;
    hc.metrics = app.metrics;
    ASSERT_EQ(http_server_new(&hc, &app.http), 0);
    ASSERT_EQ(query_api_start(&app, &app.queries), 0);
    ASSERT_EQ(http_server_start(app.http), 0);
    uint16_t port = http_server_port(app.http);

    const char *q = "{\"site_id\": \"alias-1\", \"metrics\": [\"visitors\"], "
                    "\"date_range\": \"7d\"}";
    struct reply r = ask(port, "POST", "/api/v2/query", key, q, NULL);
    ASSERT_EQ(r.status, 200);
    ASSERT_STREQ(r.body, t.body);
    ASSERT_STREQ(r.ct, "application/json");
    pthread_mutex_lock(&t.mu);
    ASSERT_EQ(t.requests, 1);
    ASSERT_TRUE(!strncmp(t.last, "POST /api/v2/query HTTP/1.1\r\n", 29));
    ASSERT_TRUE(has(t.last, "X-Tally-Forwarded: 1\r\n"));
    ASSERT_TRUE(has(t.last, key));
    ASSERT_TRUE(!strcmp(t.last + t.last_len - strlen(q), q));
    pthread_mutex_unlock(&t.mu);

    /* v1 with its query string; the owner's status is relayed */
    t.status_line = "400 Bad Request";
    t.body = "{\"error\": \"from the owner\"}";
    const char *v1 = "/api/v1/stats/aggregate?site_id=example.com&period=7d&metrics=visitors";
    r = ask(port, "GET", v1, key, NULL, NULL);
    ASSERT_EQ(r.status, 400);
    ASSERT_STREQ(r.body, t.body);
    pthread_mutex_lock(&t.mu);
    ASSERT_EQ(t.requests, 2);
    ASSERT_TRUE(!strncmp(t.last + 4, v1, strlen(v1)));
    pthread_mutex_unlock(&t.mu);

    /* answered here, never forwarded: no key, bad key, unknown site, bad query */
    ASSERT_EQ(ask(port, "POST", "/api/v2/query", NULL, q, NULL).status, 401);
    ASSERT_EQ(ask(port, "POST", "/api/v2/query", "tly_wrong", q, NULL).status, 401);
    r = ask(port, "POST", "/api/v2/query", key,
            "{\"site_id\": \"nope.example\", \"metrics\": [\"visitors\"], "
            "\"date_range\": \"7d\"}", NULL);
    ASSERT_EQ(r.status, 404);
    ASSERT_EQ(ask(port, "POST", "/api/v2/query", key, "{", NULL).status, 400);
    /* already forwarded once: 421, no loop */
    r = ask(port, "POST", "/api/v2/query", key, q, "X-Tally-Forwarded: 1");
    ASSERT_EQ(r.status, 421);
    ASSERT_TRUE(has(r.body, "\"error\""));
    /* the export is not forwarded: 421 naming the owner */
    r = ask(port, "GET", "/api/v1/export?site_id=example.com", key, NULL, NULL);
    ASSERT_EQ(r.status, 421);
    char want[96];
    snprintf(want, sizeof want, "\"owner\": \"http://127.0.0.1:%u\"", (unsigned)t.port);
    ASSERT_TRUE(has(r.body, want));
    /* a partition without an owner: 503 naming it */
    r = ask(port, "POST", "/api/v1/funnel", key,
            "{\"site_id\": \"shop.example.net\", \"date_range\": \"7d\", \"steps\": "
            "[{\"page\": \"/\"}, {\"page\": \"/buy\"}]}", NULL);
    ASSERT_EQ(r.status, 503);
    ASSERT_TRUE(has(r.body, "partition 4"));
    pthread_mutex_lock(&t.mu);
    ASSERT_EQ(t.requests, 2);
    pthread_mutex_unlock(&t.mu);

    /* the owner is down: 502 relayed as JSON */
    tiny_stop(&t);
    r = ask(port, "POST", "/api/v2/query", key, q, NULL);
    ASSERT_EQ(r.status, 502);
    ASSERT_TRUE(has(r.body, "cannot reach"));

    http_server_stop(app.http, 1000);
    query_api_free(app.queries);
    http_server_free(app.http);
    cluster_close(app.cluster);
    metrics_free(app.metrics);
    config_free(cfg);
}

/* ---- shared salts on nats-server ----------------------------------------------------------- */

static pid_t g_nats_pid = -1;
static uint16_t g_nats_port;

static void nats_stop(void)
{
    if (g_nats_pid > 0) {
        kill(g_nats_pid, SIGTERM);
        waitpid(g_nats_pid, NULL, 0);
        g_nats_pid = -1;
    }
}

static bool nats_start(void)
{
    struct nats_srv srv = {.port = free_port()};
    g_nats_port = (uint16_t)srv.port;
    snprintf(srv.dir, sizeof srv.dir, "%s", test_tmpdir());
    snprintf(srv.name, sizeof srv.name, "salts");
    int rc = nats_srv_start(&srv, &srv, 1, "");
    if (srv.pid > 0) {
        g_nats_pid = srv.pid;
        atexit(nats_stop);
    }
    return rc == 0;
}

/* The bucket's day numbers (sorted) through an independent connection; -1 on error. */
static int bucket_days(const char *bucket, int64_t *days, int cap)
{
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%u", (unsigned)g_nats_port);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    kvStore *kv = NULL;
    kvKeysList keys = {0};
    int n = -1;
    if (natsConnection_ConnectTo(&nc, url) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_KeyValue(&kv, js, bucket) == NATS_OK) {
        natsStatus st = kvStore_Keys(&keys, kv, NULL);
        if (st == NATS_OK || st == NATS_NOT_FOUND) {
            n = 0;
            for (int i = 0; i < keys.Count; i++) {
                if (strncmp(keys.Keys[i], "day.", 4) != 0 || n >= cap) continue;
                int64_t d = strtoll(keys.Keys[i] + 4, NULL, 10);
                int j = n++;
                while (j > 0 && days[j - 1] > d) {
                    days[j] = days[j - 1];
                    j--;
                }
                days[j] = d;
            }
        }
        kvKeysList_Destroy(&keys);
    }
    kvStore_Destroy(kv);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return n;
}

/* How many messages (values and markers) the bucket's stream holds for key; -1 on error. */
static int bucket_history(const char *bucket, const char *key)
{
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%u", (unsigned)g_nats_port);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    kvStore *kv = NULL;
    kvEntryList l = {0};
    int n = -1;
    if (natsConnection_ConnectTo(&nc, url) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_KeyValue(&kv, js, bucket) == NATS_OK) {
        kvWatchOptions wo;
        kvWatchOptions_Init(&wo);
        wo.Timeout = 5000;
        natsStatus st = kvStore_History(&l, kv, key, &wo);
        n = st == NATS_NOT_FOUND ? 0 : st == NATS_OK ? l.Count : -1;
        kvEntryList_Destroy(&l);
    }
    kvStore_Destroy(kv);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return n;
}

/* Purges one key of the bucket (simulates an operator or another node's change). */
static bool bucket_purge(const char *bucket, const char *key)
{
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%u", (unsigned)g_nats_port);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    kvStore *kv = NULL;
    bool ok = natsConnection_ConnectTo(&nc, url) == NATS_OK &&
              natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
              js_KeyValue(&kv, js, bucket) == NATS_OK && kvStore_Purge(kv, key, NULL) == NATS_OK;
    kvStore_Destroy(kv);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return ok;
}

static void expect_same_ids(const struct visitor_salts *a, const struct visitor_salts *b,
                            int64_t now)
{
    if (client(a) != client(b)) TEST_FAIL_("client ids differ");
    for (int64_t ts = now - DAY; ts <= now + DAY; ts += DAY)
        if (anon(a, ts) != anon(b, ts)) TEST_FAIL_("anonymous ids differ at %lld", (long long)ts);
}

TEST(shared_salts_on_nats)
{
    if (access(NATS_BIN, X_OK) != 0) {
        printf("SKIP %s: no %s\n", test_current_, NATS_BIN);
        return;
    }
    if (!nats_start()) TEST_FAIL_("nats-server did not start");
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%u", (unsigned)g_nats_port);
    struct tally_config *cfg = cfg_with((const char *const[]){
        "cluster", "log_backend", "jetstream",
        "cluster", "nats_urls", url,
        "cluster", "stream_prefix", "TT",
        "cluster", "replicas", "1",
        NULL});
    struct cluster *c1 = open_ok(cfg), *c2 = open_ok(cfg);
    struct visitor_salts *s1 = NULL, *s2 = NULL;
    ASSERT_EQ(visitor_salts_open(test_tmpdir(), T0, &s1), 0);
    ASSERT_EQ(visitor_salts_open(test_tmpdir(), T0, &s2), 0);
    ASSERT_NE(client(s1), client(s2));
    int64_t D = timefmt_day_of_ms(T0), days[8];

    /* both adopt the bucket's set: the first creates, the second reads */
    ASSERT_EQ(cluster_salts_sync(c1, s1, T0), 0);
    ASSERT_EQ(cluster_salts_sync(c2, s2, T0), 0);
    expect_same_ids(s1, s2, T0);
    ASSERT_EQ(visitor_salts_days(s1, days, 8), 2); /* yesterday is never created */
    ASSERT_EQ(days[0], D);
    ASSERT_EQ(days[1], D + 1);
    ASSERT_EQ(bucket_days("TT_SALTS", days, 8), 2);
    ASSERT_EQ(days[0], D);
    ASSERT_EQ(days[1], D + 1);

    /* cheap: no read within a minute of the last, then a read */
    uint64_t today_id = anon(s1, T0);
    char key[32];
    snprintf(key, sizeof key, "day.%lld", (long long)D);
    ASSERT_TRUE(bucket_purge("TT_SALTS", key));
    ASSERT_EQ(cluster_salts_sync(c1, s1, T0 + 30000), 0);
    ASSERT_EQ(anon(s1, T0), today_id); /* not read */
    ASSERT_EQ(cluster_salts_sync(c1, s1, T0 + 61000), 0);
    ASSERT_NE(anon(s1, T0), today_id); /* re-created */
    ASSERT_EQ(cluster_salts_sync(c2, s2, T0 + 61000), 0);
    expect_same_ids(s1, s2, T0); /* the second read the first's */

    /* the day rolls over: read at once (10 s after the last read), one new salt */
    int64_t midnight = (D + 1) * DAY;
    ASSERT_EQ(cluster_salts_sync(c1, s1, midnight - 10000), 0);
    ASSERT_EQ(cluster_salts_sync(c2, s2, midnight - 10000), 0);
    uint64_t id_d = anon(s1, T0), id_d1 = anon(s1, T0 + DAY), cid = client(s1);
    ASSERT_EQ(cluster_salts_sync(c1, s1, midnight + 1000), 0);
    ASSERT_EQ(visitor_salts_days(s1, days, 8), 3);
    ASSERT_EQ(days[0], D);
    ASSERT_EQ(days[2], D + 2);
    ASSERT_EQ(anon(s1, T0), id_d);          /* yesterday's kept */
    ASSERT_EQ(anon(s1, T0 + DAY), id_d1);   /* today's was tomorrow's */
    ASSERT_EQ(client(s1), cid);             /* the id key never changes */
    ASSERT_EQ(bucket_days("TT_SALTS", days, 8), 3);
    ASSERT_EQ(days[2], D + 2);
    ASSERT_EQ(cluster_salts_sync(c2, s2, midnight + 2000), 0);
    expect_same_ids(s1, s2, T0 + DAY);
    ASSERT_EQ(bucket_days("TT_SALTS", days, 8), 3); /* c2 created nothing */

    /* the next day: day D is older than yesterday and purged */
    ASSERT_EQ(cluster_salts_sync(c2, s2, midnight + DAY + 1000), 0);
    ASSERT_EQ(bucket_days("TT_SALTS", days, 8), 3);
    ASSERT_EQ(days[0], D + 1);
    ASSERT_EQ(days[2], D + 3);
    ASSERT_EQ(bucket_history("TT_SALTS", key), 0); /* day D: gone, no marker left either */
    snprintf(key, sizeof key, "day.%lld", (long long)(D + 1));
    ASSERT_EQ(bucket_history("TT_SALTS", key), 1);
    ASSERT_EQ(cluster_salts_sync(c1, s1, midnight + DAY + 1000), 0);
    expect_same_ids(s1, s2, T0 + 2 * DAY);
    ASSERT_EQ(client(s2), cid);

    /* a third node starting later adopts the same set */
    struct cluster *c3 = open_ok(cfg);
    struct visitor_salts *s3 = NULL;
    ASSERT_EQ(visitor_salts_open(test_tmpdir(), T0, &s3), 0);
    ASSERT_EQ(cluster_salts_sync(c3, s3, midnight + DAY + 5000), 0);
    expect_same_ids(s1, s3, T0 + 2 * DAY);

    /* NATS gone: the sync fails, the held set stays in use, retries are spaced */
    nats_stop();
    uint64_t held = anon(s3, T0 + 2 * DAY);
    int64_t now = midnight + DAY + 70000;
    ASSERT_EQ(cluster_salts_sync(c3, s3, now), TALLY_EIO);
    ASSERT_EQ(anon(s3, T0 + 2 * DAY), held);
    ASSERT_EQ(cluster_salts_sync(c3, s3, now + 1000), 0); /* waiting to retry */
    ASSERT_EQ(cluster_salts_sync(c3, s3, now + 6000), TALLY_EIO);

    visitor_salts_close(s1);
    visitor_salts_close(s2);
    visitor_salts_close(s3);
    cluster_close(c1);
    cluster_close(c2);
    cluster_close(c3);
    config_free(cfg);
}

int main(void)
{
    /* failures are asserted, not read from the log (TEST_DIAG=1 shows it) */
    diag_init(getenv("TEST_DIAG") ? DIAG_INFO : DIAG_OFF, getenv("TEST_DIAG") ? stderr : NULL);
    RUN(partition_of_is_stable);
    RUN(partition_of_spreads);
    RUN(ownership_and_owner_urls);
    RUN(salts_sync_local_backend_rotates);
    RUN(adopt_exact_set);
    RUN(forward_relays_request_and_answer);
    RUN(query_api_forwards_to_the_owner);
    RUN(shared_salts_on_nats);
    nats_stop();
    nats_CloseAndWait(5000); /* the library's threads and connections, for the leak checker */
    return test_summary();
}
