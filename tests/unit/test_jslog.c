/*
 * test_jslog: the JetStream event log (jslog.h) against real nats-server processes that the
 * test starts (free loopback ports, temporary store directories) and kills by PID: one server
 * for the single-node cases, three (R3) for the cluster case. Without /usr/sbin/nats-server
 * the binary prints one PASS line saying it skipped.
 */
#include "log/jslog.h"
#include "tally/error.h"
#include "nats_test.h"
#include "test.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#define SRV_MAX 8

static pid_t live_pids[SRV_MAX * 4];
static int live_count;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Starts s (nats_test.h) and remembers its PID so that kill_all can stop it. */
static int srv_start(struct nats_srv *s, const struct nats_srv *all, int n)
{
    int rc = nats_srv_start(s, all, n, "tally_test");
    if (s->pid > 0 && live_count < (int)TALLY_ARRAY_LEN(live_pids))
        live_pids[live_count++] = s->pid;
    return rc;
}

static void srv_kill(struct nats_srv *s)
{
    if (s->pid <= 0) return;
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    for (int i = 0; i < live_count; i++)
        if (live_pids[i] == s->pid) live_pids[i] = 0;
    s->pid = 0;
}

/* SIGSTOP, and wait until every thread of the server is stopped (kill() only queues it: a
 * thread running on another core could still answer a message sent right after). */
static void srv_freeze(struct nats_srv *s)
{
    kill(s->pid, SIGSTOP);
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)s->pid);
    for (int tries = 0; tries < 2000; tries++) {
        DIR *d = opendir(dir);
        if (!d) return;
        int running = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char path[128], buf[512];
            snprintf(path, sizeof path, "%s/%s/stat", dir, e->d_name);
            FILE *f = fopen(path, "r");
            if (!f) continue;
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            buf[n] = 0;
            const char *rp = strrchr(buf, ')'); /* "pid (comm) S ..." */
            if (rp && rp[1] == ' ' && rp[2] != 'T' && rp[2] != 't') running++;
        }
        closedir(d);
        if (!running) return;
        msleep(1);
    }
}

static void kill_all(void)
{
    for (int i = 0; i < live_count; i++)
        if (live_pids[i] > 0) {
            kill(live_pids[i], SIGKILL);
            waitpid(live_pids[i], NULL, 0);
            live_pids[i] = 0;
        }
}

static void srv_init(struct nats_srv *s, const char *name)
{
    memset(s, 0, sizeof *s);
    s->port = nats_free_port();
    s->cport = nats_free_port();
    snprintf(s->dir, sizeof s->dir, "%s", test_tmpdir());
    snprintf(s->name, sizeof s->name, "%s", name);
}

/* ------------------------------------------------------------------ completions */

struct comp {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, errors, last_err;
};

static void comp_init(struct comp *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static void comp_cb(void *arg, int err, uint64_t first)
{
    (void)first;
    struct comp *c = arg;
    pthread_mutex_lock(&c->mu);
    c->done++;
    if (err) {
        c->errors++;
        c->last_err = err;
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Waits until c->done >= n or timeout; returns c->done. */
static int comp_wait(struct comp *c, int n, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    pthread_mutex_lock(&c->mu);
    while (c->done < n && now_ms() < end) {
        pthread_mutex_unlock(&c->mu);
        msleep(5);
        pthread_mutex_lock(&c->mu);
    }
    int d = c->done;
    pthread_mutex_unlock(&c->mu);
    return d;
}

/* ------------------------------------------------------------------ fixtures */

static struct nats_srv S1;
static const char *S1_URL[1];
static char s1_url[64];

static void opts_single(struct jslog_options *o, uint32_t partitions)
{
    memset(o, 0, sizeof *o);
    o->urls = S1_URL;
    o->url_count = 1;
    o->prefix = "TT";
    o->node = "testnode";
    o->partitions = partitions;
    o->replicas = 1;
    o->publish_timeout_ms = 1000;
    o->pending_max = 1024;
    o->connect_timeout_ms = 15000;
}

static void rec_bytes(int i, char *buf, uint32_t *len)
{
    int n = snprintf(buf, 64, "rec-%d-", i);
    int extra = (i * 37) % 300;
    for (int k = 0; k < extra; k++)
        buf[n + k] = (char)('a' + (i + k) % 26);
    *len = (uint32_t)(n + extra);
    if (i == 7) *len = 0; /* an empty record too */
}

/* Reads from r until TALLY_EAGAIN (waiting up to timeout_ms for at least `want` records). */
static int read_all(struct evlog *l, struct evlog_reader *r, int want, uint64_t *offs,
                    char (*data)[400], uint32_t *lens, int64_t *ts, int cap, int timeout_ms)
{
    int got = 0;
    int64_t end = now_ms() + timeout_ms;
    while (got < cap) {
        struct seglog_record rec;
        int rc = evlog_reader_next(r, &rec);
        if (rc == 0) {
            offs[got] = rec.offset;
            if (data) memcpy(data[got], rec.data, rec.len < 400 ? rec.len : 400);
            if (lens) lens[got] = rec.len;
            if (ts) ts[got] = rec.ts_ms;
            got++;
            continue;
        }
        if (rc != TALLY_EAGAIN) return rc;
        if (got >= want || now_ms() > end) break;
        evlog_wait(l, evlog_reader_position(r), 100);
    }
    return got;
}

/* read_all for a reader across a JetStream leader election: when the reader fails (it can
 * lose its consumer with the leader) or returns nothing for 5 s below the committed end (seen
 * in CI runs), it is reopened at its position and reading goes on, as the log's consumers do
 * (consumer.c: READER_STALL_MS, "resuming from the stored cursor"); *reopened counts those.
 * Records, or the last error once timeout_ms has passed. */
static int read_all_reopen(struct evlog *l, struct evlog_reader **r, int want, uint64_t *offs,
                           char (*data)[400], int cap, int timeout_ms, int *reopened)
{
    int got = 0;
    int64_t end = now_ms() + timeout_ms;
    uint64_t pos = evlog_reader_position(*r); /* the next record's offset */
    int64_t empty_since = 0;                   /* 0: the last read returned a record */
    while (got < cap) {
        struct seglog_record rec;
        int rc = *r ? evlog_reader_next(*r, &rec) : TALLY_EIO;
        if (rc == 0) {
            offs[got] = rec.offset;
            memcpy(data[got], rec.data, rec.len < 400 ? rec.len : 400);
            got++;
            pos = rec.offset + 1;
            empty_since = 0;
            continue;
        }
        if (rc != TALLY_EAGAIN) {
            if (now_ms() > end) return rc;
            evlog_reader_close(*r);
            *r = NULL;
            (*reopened)++;
            msleep(100);
            if (evlog_reader_open(l, pos, r) != 0) *r = NULL;
            continue;
        }
        if (got >= want || now_ms() > end) break;
        /* nothing for 5 s below the committed end: reopened, as consumer.c does */
        if (pos >= evlog_committed_offset(l)) {
            empty_since = 0;
        } else if (!empty_since) {
            empty_since = now_ms();
        } else if (now_ms() - empty_since > 5000) {
            evlog_reader_close(*r);
            *r = NULL;
            (*reopened)++;
            empty_since = 0;
            if (evlog_reader_open(l, pos, r) != 0) *r = NULL;
            continue;
        }
        evlog_wait(l, evlog_reader_position(*r), 100);
    }
    return got;
}

/* ------------------------------------------------------------------ tests */

TEST(append_and_read_back)
{
    struct jslog_options o;
    opts_single(&o, 3);
    struct jslog *js = NULL;
    char err[256];
    ASSERT_EQ(jslog_open(&o, &js, err), 0);
    struct evlog sink, part[3];
    jslog_sink(js, &sink);
    for (uint32_t p = 0; p < 3; p++)
        jslog_partition(js, p, &part[p]);
    ASSERT_STREQ(sink.ops->kind, "jetstream");
    ASSERT_EQ(evlog_poisoned_err(&sink), 0);

    static char bufs[30][400];
    struct seglog_rec recs[30];
    uint32_t parts[30];
    for (int i = 0; i < 30; i++) {
        uint32_t len;
        rec_bytes(i, bufs[i], &len);
        recs[i] = (struct seglog_rec){bufs[i], len, 1000 + i};
        parts[i] = (uint32_t)(i % 3);
    }
    struct comp c;
    comp_init(&c);
    for (int k = 0; k < 3; k++)
        ASSERT_EQ(evlog_append(&sink, recs + 10 * k, parts + 10 * k, 10, comp_cb, &c), 0);
    ASSERT_EQ(comp_wait(&c, 3, 5000), 3);
    ASSERT_EQ(c.errors, 0);
    /* read-only partitions; the sink does not read */
    ASSERT_EQ(evlog_append(&part[0], recs, parts, 1, comp_cb, &c), TALLY_ENOTSUP);
    struct evlog_reader *r = NULL;
    ASSERT_EQ(evlog_reader_open(&sink, 0, &r), TALLY_ENOTSUP);
    ASSERT_EQ(evlog_append(&sink, recs, (uint32_t[]){3}, 1, comp_cb, &c), TALLY_EINVAL);

    for (uint32_t p = 0; p < 3; p++) {
        ASSERT_EQ(evlog_committed_offset(&part[p]), 10);
        ASSERT_EQ(evlog_start_offset(&part[p]), 0);
        ASSERT_EQ(evlog_reader_open(&part[p], 0, &r), 0);
        uint64_t offs[16];
        static char data[16][400];
        uint32_t lens[16];
        int64_t ts[16];
        int n = read_all(&part[p], r, 10, offs, data, lens, ts, 16, 5000);
        ASSERT_EQ(n, 10);
        for (int k = 0; k < 10; k++) {
            int i = 3 * k + (int)p; /* the k-th record sent to p */
            ASSERT_EQ(offs[k], k);
            ASSERT_EQ(lens[k], recs[i].len);
            ASSERT_MEMEQ(data[k], bufs[i], recs[i].len);
            ASSERT_EQ(ts[k], 1000 + i);
        }
        ASSERT_EQ(evlog_reader_position(r), 10);
        struct seglog_record rec;
        ASSERT_EQ(evlog_reader_next(r, &rec), TALLY_EAGAIN);
        evlog_reader_close(r);
    }
    /* from the middle */
    ASSERT_EQ(evlog_reader_open(&part[1], 4, &r), 0);
    uint64_t offs[16];
    static char data[16][400];
    int n = read_all(&part[1], r, 6, offs, data, NULL, NULL, 16, 5000);
    ASSERT_EQ(n, 6);
    ASSERT_EQ(offs[0], 4);
    ASSERT_MEMEQ(data[0], bufs[13], recs[13].len);
    ASSERT_EQ(offs[5], 9);
    evlog_reader_close(r);
    /* beyond the end */
    ASSERT_EQ(evlog_reader_open(&part[1], 11, &r), TALLY_ERANGE);

    struct jslog_stats st;
    jslog_stats(js, &st);
    ASSERT_EQ(st.published, 30);
    ASSERT_EQ(st.acked, 30);
    ASSERT_EQ(st.failed, 0);
    ASSERT_EQ(st.pending, 0);
    ASSERT_EQ(st.connected, 1);
    uint64_t h = 0;
    for (int i = 0; i < 16; i++)
        h += st.ack_latency_hist[i];
    ASSERT_EQ(h, 30);
    jslog_close(js);
    ASSERT_EQ(c.done, 3); /* exactly once each */
}

static int consumer_exists(const char *stream, const char *name)
{
    natsConnection *nc = NULL;
    jsCtx *jc = NULL;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    int ok = 0;
    if (natsConnection_ConnectTo(&nc, s1_url) == NATS_OK &&
        natsConnection_JetStream(&jc, nc, NULL) == NATS_OK &&
        js_GetConsumerInfo(&ci, jc, stream, name, NULL, &jerr) == NATS_OK)
        ok = 1;
    jsConsumerInfo_Destroy(ci);
    jsCtx_Destroy(jc);
    natsConnection_Destroy(nc);
    return ok;
}

static int append_n(struct evlog *sink, uint32_t p, int first, int n)
{
    static char bufs[64][400];
    struct seglog_rec recs[64];
    uint32_t parts[64];
    for (int i = 0; i < n; i++) {
        uint32_t len;
        rec_bytes(first + i, bufs[i], &len);
        recs[i] = (struct seglog_rec){bufs[i], len, first + i};
        parts[i] = p;
    }
    struct comp c;
    comp_init(&c);
    int rc = evlog_append(sink, recs, parts, (uint32_t)n, comp_cb, &c);
    if (rc) return rc;
    if (comp_wait(&c, 1, 5000) != 1) return TALLY_ETIMEDOUT;
    return c.errors ? c.last_err : 0;
}

TEST(durable_reader_reopen)
{
    struct jslog_options o;
    opts_single(&o, 3);
    struct jslog *js = NULL;
    ASSERT_EQ(jslog_open(&o, &js, NULL), 0);
    struct evlog sink, p0;
    jslog_sink(js, &sink);
    jslog_partition(js, 0, &p0);
    uint64_t base = evlog_committed_offset(&p0); /* 10 from the previous test */
    ASSERT_EQ(base, 10);

    ASSERT_EQ(evlog_consumer_register(&p0, "a.b", 0), TALLY_EINVAL);
    int id = evlog_consumer_register(&p0, "raw", 0);
    ASSERT_TRUE(id >= 0);
    ASSERT_EQ(evlog_consumer_register(&p0, "raw", 2), id);
    ASSERT_EQ(evlog_consumer_advance(&p0, id, 3), 0);
    ASSERT_EQ(evlog_consumer_advance(&p0, id + 5, 3), TALLY_ENOENT);

    struct evlog_reader *r = NULL, *eph = NULL;
    ASSERT_EQ(evlog_reader_open(&p0, 0, &r), 0);
    ASSERT_TRUE(consumer_exists("TT_P0", "testnode_raw_P0"));
    /* a second reader while the durable is in use: an ephemeral of its own */
    ASSERT_EQ(evlog_reader_open(&p0, 0, &eph), 0);

    uint64_t offs[64];
    int n = read_all(&p0, r, 4, offs, NULL, NULL, NULL, 4, 5000);
    ASSERT_EQ(n, 4);
    ASSERT_EQ(offs[3], 3);
    evlog_reader_close(r);

    ASSERT_EQ(append_n(&sink, 0, 100, 5), 0);
    ASSERT_EQ(evlog_committed_offset(&p0), base + 5);
    /* reopen at the cursor: the durable is re-created there */
    ASSERT_EQ(evlog_reader_open(&p0, 4, &r), 0);
    n = read_all(&p0, r, 11, offs, NULL, NULL, NULL, 64, 5000);
    ASSERT_EQ(n, 11);
    for (int i = 0; i < n; i++)
        ASSERT_EQ(offs[i], 4 + i);
    evlog_reader_close(r);

    n = read_all(&p0, eph, 15, offs, NULL, NULL, NULL, 64, 5000);
    ASSERT_EQ(n, 15);
    for (int i = 0; i < n; i++)
        ASSERT_EQ(offs[i], i);
    evlog_reader_close(eph);
    jslog_close(js);
}

struct waitarg {
    struct evlog *l;
    uint64_t offset;
    int timeout_ms;
    int rc;
    int64_t ms;
};

static void *wait_thread(void *arg)
{
    struct waitarg *w = arg;
    int64_t t0 = now_ms();
    w->rc = evlog_wait(w->l, w->offset, w->timeout_ms);
    w->ms = now_ms() - t0;
    return NULL;
}

TEST(wait_wakes)
{
    struct jslog_options o;
    opts_single(&o, 3);
    struct jslog *js = NULL, *other = NULL;
    ASSERT_EQ(jslog_open(&o, &js, NULL), 0);
    o.node = "othernode";
    ASSERT_EQ(jslog_open(&o, &other, NULL), 0); /* another node: sees it via the refresh */
    struct evlog sink, p2, q2;
    jslog_sink(js, &sink);
    jslog_partition(js, 2, &p2);
    jslog_partition(other, 2, &q2);
    uint64_t c = evlog_committed_offset(&p2);
    ASSERT_EQ(c, 10);
    ASSERT_EQ(evlog_wait(&p2, c - 1, 0), 0);
    int64_t t0 = now_ms();
    ASSERT_EQ(evlog_wait(&p2, c, 150), TALLY_EAGAIN);
    ASSERT_TRUE(now_ms() - t0 >= 140);

    struct waitarg a = {&p2, c, 5000, -99, 0}, b = {&q2, c, 5000, -99, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, wait_thread, &a);
    pthread_create(&tb, NULL, wait_thread, &b);
    msleep(300);
    ASSERT_EQ(append_n(&sink, 2, 200, 1), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ASSERT_EQ(a.rc, 0);
    ASSERT_EQ(b.rc, 0);
    ASSERT_TRUE(a.ms >= 250 && a.ms < 2000);
    ASSERT_TRUE(b.ms >= 250 && b.ms < 2000);
    ASSERT_EQ(evlog_committed_offset(&q2), c + 1);

    /* close wakes a waiter with TALLY_ECLOSED */
    struct waitarg w = {&q2, c + 100, -1, -99, 0};
    pthread_t tw;
    pthread_create(&tw, NULL, wait_thread, &w);
    msleep(100);
    jslog_close(other);
    pthread_join(tw, NULL);
    ASSERT_EQ(w.rc, TALLY_ECLOSED);
    jslog_close(js);
}

TEST(pending_max_and_timeout)
{
    struct jslog_options o;
    opts_single(&o, 3);
    o.pending_max = 4;
    struct jslog *js = NULL;
    ASSERT_EQ(jslog_open(&o, &js, NULL), 0);
    struct evlog sink;
    jslog_sink(js, &sink);
    char b[8] = "x";
    struct seglog_rec recs[5];
    uint32_t parts[5] = {0, 1, 2, 0, 1};
    for (int i = 0; i < 5; i++)
        recs[i] = (struct seglog_rec){b, 1, i};
    struct comp c;
    comp_init(&c);
    ASSERT_EQ(evlog_append(&sink, recs, parts, 5, comp_cb, &c), TALLY_ETOOBIG);

    srv_freeze(&S1); /* the server takes the bytes but answers nothing */
    ASSERT_EQ(evlog_append(&sink, recs, parts, 4, comp_cb, &c), 0);
    ASSERT_EQ(evlog_append(&sink, recs, parts, 1, comp_cb, &c), TALLY_EFULL);
    kill(S1.pid, SIGCONT);
    ASSERT_EQ(comp_wait(&c, 1, 3000), 1);
    ASSERT_EQ(c.errors, 0);

    /* a lost ack is an error after publish_timeout_ms, never a hang */
    srv_freeze(&S1);
    int64_t t0 = now_ms();
    ASSERT_EQ(evlog_append(&sink, recs, parts, 2, comp_cb, &c), 0);
    int d = comp_wait(&c, 2, 4000);
    int64_t ms = now_ms() - t0;
    kill(S1.pid, SIGCONT);
    ASSERT_EQ(d, 2);
    ASSERT_EQ(c.errors, 1);
    ASSERT_EQ(c.last_err, TALLY_ETIMEDOUT);
    ASSERT_TRUE(ms >= 900 && ms < 2500);
    msleep(200);
    ASSERT_EQ(c.done, 2); /* once */
    /* and it works again */
    ASSERT_EQ(evlog_append(&sink, recs, parts, 3, comp_cb, &c), 0);
    ASSERT_EQ(comp_wait(&c, 3, 3000), 3);
    ASSERT_EQ(c.errors, 1);

    /* close completes what is in flight */
    srv_freeze(&S1);
    ASSERT_EQ(evlog_append(&sink, recs, parts, 2, comp_cb, &c), 0);
    t0 = now_ms();
    jslog_close(js);
    ms = now_ms() - t0;
    kill(S1.pid, SIGCONT);
    ASSERT_EQ(c.done, 4);
    ASSERT_EQ(c.errors, 2);
    ASSERT_TRUE(ms < 4000);
}

TEST(consumer_deleted_under_reader)
{
    struct jslog_options o;
    opts_single(&o, 1);
    o.prefix = "GONE";
    struct jslog *js = NULL;
    ASSERT_EQ(jslog_open(&o, &js, NULL), 0);
    struct evlog sink, p0;
    jslog_sink(js, &sink);
    jslog_partition(js, 0, &p0);
    ASSERT_EQ(append_n(&sink, 0, 0, 4), 0);
    ASSERT_TRUE(evlog_consumer_register(&p0, "raw", 0) >= 0);
    struct evlog_reader *r = NULL;
    ASSERT_EQ(evlog_reader_open(&p0, 0, &r), 0);
    uint64_t offs[16];
    ASSERT_EQ(read_all(&p0, r, 4, offs, NULL, NULL, NULL, 4, 5000), 4);
    natsConnection *nc = NULL;
    jsCtx *jc = NULL;
    jsErrCode jerr = 0;
    ASSERT_EQ(natsConnection_ConnectTo(&nc, s1_url), NATS_OK);
    ASSERT_EQ(natsConnection_JetStream(&jc, nc, NULL), NATS_OK);
    ASSERT_EQ(js_DeleteConsumer(jc, "GONE_P0", "testnode_raw_P0", NULL, &jerr), NATS_OK);
    jsCtx_Destroy(jc);
    natsConnection_Destroy(nc);
    ASSERT_EQ(append_n(&sink, 0, 4, 3), 0);
    int64_t t0 = now_ms();
    int n = read_all(&p0, r, 3, offs, NULL, NULL, NULL, 16, 8000);
    ASSERT_EQ(n, 3);
    ASSERT_EQ(offs[0], 4);
    ASSERT_EQ(offs[2], 6);
    ASSERT_TRUE(now_ms() - t0 < 4000);
    ASSERT_TRUE(consumer_exists("GONE_P0", "testnode_raw_P0"));
    evlog_reader_close(r);
    jslog_close(js);
}

TEST(server_down_and_back)
{
    struct jslog_options o;
    opts_single(&o, 2);
    o.prefix = "DOWN";
    struct jslog *js = NULL;
    ASSERT_EQ(jslog_open(&o, &js, NULL), 0);
    struct evlog sink, p0;
    jslog_sink(js, &sink);
    jslog_partition(js, 0, &p0);
    ASSERT_EQ(append_n(&sink, 0, 0, 3), 0);

    /* in flight when the server dies */
    srv_freeze(&S1);
    char b[4] = "y";
    struct seglog_rec rec = {b, 1, 1};
    uint32_t p = 0;
    struct comp c;
    comp_init(&c);
    int64_t t0 = now_ms();
    ASSERT_EQ(evlog_append(&sink, &rec, &p, 1, comp_cb, &c), 0);
    srv_kill(&S1);
    ASSERT_EQ(comp_wait(&c, 1, 3000), 1);
    ASSERT_TRUE(c.errors == 1);
    ASSERT_TRUE(now_ms() - t0 < 1500);

    /* while it is down: every append fails, at once or through done, never 0 */
    int accepted = 0;
    for (int i = 0; i < 20; i++) {
        int rc = evlog_append(&sink, &rec, &p, 1, comp_cb, &c);
        if (rc == 0)
            accepted++;
        else
            ASSERT_TRUE(rc == TALLY_EIO);
        msleep(20);
    }
    ASSERT_EQ(comp_wait(&c, 1 + accepted, 2500), 1 + accepted);
    ASSERT_EQ(c.errors, 1 + accepted);
    ASSERT_EQ(evlog_poisoned_err(&sink), TALLY_EIO);
    struct evlog_reader *r = NULL;
    ASSERT_EQ(evlog_reader_open(&p0, 0, &r), 0); /* made when the cluster is back */
    struct seglog_record rr;
    ASSERT_EQ(evlog_reader_next(r, &rr), TALLY_EAGAIN);

    ASSERT_EQ(srv_start(&S1, &S1, 1), 0);
    int ok = 0;
    for (int64_t end = now_ms() + 15000; !ok && now_ms() < end; msleep(50))
        ok = append_n(&sink, 0, 10, 2) == 0;
    ASSERT_TRUE(ok);
    ASSERT_EQ(evlog_poisoned_err(&sink), 0);
    struct jslog_stats st;
    jslog_stats(js, &st);
    ASSERT_TRUE(st.reconnects >= 1);
    ASSERT_EQ(st.connected, 1);
    /* the earlier reader now reads everything stored: dense offsets from 0 */
    uint64_t offs[64];
    uint64_t committed = evlog_committed_offset(&p0);
    ASSERT_TRUE(committed >= 5);
    int n = read_all(&p0, r, (int)committed, offs, NULL, NULL, NULL, 64, 10000);
    ASSERT_EQ(n, (int)committed);
    for (int i = 0; i < n; i++)
        ASSERT_EQ(offs[i], i);
    evlog_reader_close(r);
    jslog_close(js);
}

struct regarg {
    struct evlog *l;
    const char *name;
    int ok;
};

static void *register_and_open(void *arg)
{
    struct regarg *a = arg;
    struct evlog_reader *r = NULL;
    a->ok = evlog_consumer_register(a->l, a->name, 0) >= 0 && evlog_reader_open(a->l, 0, &r) == 0;
    evlog_reader_close(r);
    return NULL;
}

TEST(durable_names_per_thread)
{
    struct jslog_options o;
    opts_single(&o, 3);
    struct jslog *js = NULL;
    ASSERT_EQ(jslog_open(&o, &js, NULL), 0);
    struct evlog p1;
    jslog_partition(js, 1, &p1);
    struct regarg a = {&p1, "raw", 0}, b = {&p1, "rollup", 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, register_and_open, &a);
    pthread_create(&tb, NULL, register_and_open, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ASSERT_TRUE(a.ok && b.ok);
    ASSERT_TRUE(consumer_exists("TT_P1", "testnode_raw_P1"));
    ASSERT_TRUE(consumer_exists("TT_P1", "testnode_rollup_P1"));
    jslog_close(js);
}

TEST(retention_gives_erange)
{
    struct jslog_options o;
    opts_single(&o, 1);
    o.prefix = "RET";
    o.max_age_ms = 1000;
    struct jslog *js = NULL;
    ASSERT_EQ(jslog_open(&o, &js, NULL), 0);
    struct evlog sink, p0;
    jslog_sink(js, &sink);
    jslog_partition(js, 0, &p0);
    ASSERT_EQ(append_n(&sink, 0, 0, 5), 0);
    struct evlog_reader *r = NULL;
    ASSERT_EQ(evlog_reader_open(&p0, 0, &r), 0); /* created at 0, nothing read yet */
    /* the server expires them after max_age */
    int64_t end = now_ms() + 5000;
    while (evlog_start_offset(&p0) < 5 && now_ms() < end)
        msleep(100);
    ASSERT_EQ(evlog_start_offset(&p0), 5);
    ASSERT_EQ(append_n(&sink, 0, 5, 3), 0);
    struct seglog_record rec;
    int rc = TALLY_EAGAIN;
    for (int i = 0; i < 50 && rc == TALLY_EAGAIN; i++)
        rc = evlog_reader_next(r, &rec);
    ASSERT_EQ(rc, TALLY_ERANGE);
    ASSERT_EQ(evlog_reader_next(r, &rec), TALLY_ERANGE); /* stays */
    evlog_reader_close(r);
    ASSERT_EQ(evlog_reader_open(&p0, 2, &r), TALLY_ERANGE);
    ASSERT_EQ(evlog_reader_open(&p0, 5, &r), 0);
    uint64_t offs[8];
    ASSERT_EQ(read_all(&p0, r, 3, offs, NULL, NULL, NULL, 8, 5000), 3);
    ASSERT_EQ(offs[0], 5);
    ASSERT_EQ(offs[2], 7);
    evlog_reader_close(r);
    jslog_close(js);
}

TEST(deleted_message_is_skipped)
{
    struct jslog_options o;
    opts_single(&o, 1);
    o.prefix = "DEL";
    struct jslog *js = NULL;
    ASSERT_EQ(jslog_open(&o, &js, NULL), 0);
    struct evlog sink, p0;
    jslog_sink(js, &sink);
    jslog_partition(js, 0, &p0);
    ASSERT_EQ(append_n(&sink, 0, 0, 6), 0);
    natsConnection *nc = NULL;
    jsCtx *jc = NULL;
    jsErrCode jerr = 0;
    ASSERT_EQ(natsConnection_ConnectTo(&nc, s1_url), NATS_OK);
    ASSERT_EQ(natsConnection_JetStream(&jc, nc, NULL), NATS_OK);
    ASSERT_EQ(js_DeleteMsg(jc, "DEL_P0", 4, NULL, &jerr), NATS_OK); /* offset 3 */
    jsCtx_Destroy(jc);
    natsConnection_Destroy(nc);
    struct evlog_reader *r = NULL;
    ASSERT_EQ(evlog_reader_open(&p0, 0, &r), 0);
    uint64_t offs[8];
    ASSERT_EQ(read_all(&p0, r, 5, offs, NULL, NULL, NULL, 8, 5000), 5);
    ASSERT_EQ(offs[2], 2);
    ASSERT_EQ(offs[3], 4);
    ASSERT_EQ(offs[4], 5);
    evlog_reader_close(r);
    /* opened right at the hole */
    ASSERT_EQ(evlog_reader_open(&p0, 3, &r), 0);
    ASSERT_EQ(read_all(&p0, r, 2, offs, NULL, NULL, NULL, 8, 5000), 2);
    ASSERT_EQ(offs[0], 4);
    evlog_reader_close(r);
    jslog_close(js);
}

/* Readers closed while the server is still answering their pull request: the connection's read
 * loop delivers to a subscription the reader has just dropped. jslog.c destroys dropped
 * subscriptions late (SUBSCRIPTIONS ARE DESTROYED LATE); destroyed at once, libnats 3.4 uses
 * them after they were freed, which this test shows under ASan within a few hundred rounds. */
TEST(reader_churn_while_delivering)
{
    struct jslog_options o;
    opts_single(&o, 1);
    o.prefix = "CHURN";
    struct jslog *js = NULL;
    ASSERT_EQ(jslog_open(&o, &js, NULL), 0);
    struct evlog sink, p0;
    jslog_sink(js, &sink);
    jslog_partition(js, 0, &p0);
    for (int k = 0; k < 20; k++)
        ASSERT_EQ(append_n(&sink, 0, 64 * k, 64), 0);
    ASSERT_EQ(evlog_committed_offset(&p0), 1280);
    int rounds = 0;
    for (int64_t end = now_ms() + 3000; now_ms() < end; rounds++) {
        uint64_t from = (uint64_t)rounds * 97 % 1000;
        struct evlog_reader *r = NULL;
        ASSERT_EQ(evlog_reader_open(&p0, from, &r), 0);
        struct seglog_record rec;
        int rc;
        for (int64_t until = now_ms() + 5000;
             (rc = evlog_reader_next(r, &rec)) == TALLY_EAGAIN && now_ms() < until;)
            msleep(1);
        ASSERT_EQ(rc, 0);
        ASSERT_EQ(rec.offset, from);
        evlog_reader_close(r); /* the rest of the batch (up to 256 records) still arriving */
    }
    printf("# churn: %d readers opened, read from and closed in 3 s\n", rounds);
    ASSERT_TRUE(rounds >= 20);
    jslog_close(js);
}

TEST(cluster_r3_survives_a_server)
{
    struct nats_srv c3[3];
    const char *urls[3];
    char ub[3][64];
    for (int i = 0; i < 3; i++) {
        char nm[8];
        snprintf(nm, sizeof nm, "n%d", i);
        srv_init(&c3[i], nm);
        snprintf(ub[i], sizeof ub[i], "nats://127.0.0.1:%d", c3[i].port);
        urls[i] = ub[i];
    }
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(srv_start(&c3[i], c3, 3), 0);
    struct jslog_options o;
    memset(&o, 0, sizeof o);
    o.urls = urls;
    o.url_count = 3;
    o.prefix = "CL";
    o.node = "clnode";
    o.partitions = 2;
    o.replicas = 3;
    o.publish_timeout_ms = 2000;
    o.pending_max = 4096;
    o.connect_timeout_ms = 20000;
    struct jslog *js = NULL;
    char err[256] = "";
    int rc = jslog_open(&o, &js, err);
    if (rc) TEST_FAIL_("jslog_open: %d %s", rc, err);
    struct evlog sink, p0;
    jslog_sink(js, &sink);
    jslog_partition(js, 0, &p0);

    enum { N1 = 100, N2 = 100 };
    for (int i = 0; i < N1; i++)
        ASSERT_EQ(append_n(&sink, (uint32_t)(i % 2), 1000 + i, 1), 0);
    ASSERT_TRUE(evlog_consumer_register(&p0, "raw", 0) >= 0);
    struct evlog_reader *r = NULL;
    ASSERT_EQ(evlog_reader_open(&p0, 0, &r), 0);
    static uint64_t offs[1024];
    static char data[1024][400];
    int n = read_all(&p0, r, N1 / 2, offs, data, NULL, NULL, 1024, 5000);
    ASSERT_EQ(n, N1 / 2);

    /* kill the leader of partition 0's stream (and of its consumer, most likely) */
    int victim = -1;
    {
        natsConnection *nc = NULL;
        jsCtx *jc = NULL;
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        if (natsConnection_ConnectTo(&nc, ub[1]) == NATS_OK &&
            natsConnection_JetStream(&jc, nc, NULL) == NATS_OK &&
            js_GetStreamInfo(&si, jc, "CL_P0", NULL, &jerr) == NATS_OK && si->Cluster &&
            si->Cluster->Leader)
            for (int i = 0; i < 3; i++)
                if (strcmp(si->Cluster->Leader, c3[i].name) == 0) victim = i;
        jsStreamInfo_Destroy(si);
        jsCtx_Destroy(jc);
        natsConnection_Destroy(nc);
    }
    ASSERT_TRUE(victim >= 0);
    srv_kill(&c3[victim]);
    int64_t t0 = now_ms();
    int retries = 0;
    for (int i = 0; i < N2; i++) {
        while ((rc = append_n(&sink, (uint32_t)(i % 2), 2000 + i, 1)) != 0) {
            retries++;
            if (now_ms() - t0 > 25000) TEST_FAIL_("append %d still failing: %d", i, rc);
            msleep(50);
        }
    }
    /* the reader opened before the kill continues (reopened at its position if the election
     * cost it its consumer, as consumers do): everything once, in order (records of retried
     * appends may be stored twice: the contract lets consumers drop repeats) */
    int reopened = 0;
    int m = read_all_reopen(&p0, &r, (int)evlog_committed_offset(&p0) - n, offs + n, data + n,
                            1024 - n, 20000, &reopened);
    if (m <= 0) TEST_FAIL_("read after the kill: %d (reader reopened %d times)", m, reopened);
    n += m;
    ASSERT_EQ((uint64_t)n, evlog_committed_offset(&p0));
    for (int i = 0; i < n; i++)
        ASSERT_EQ(offs[i], i);
    for (int i = 0; i < N2; i += 2) {
        char want[32];
        snprintf(want, sizeof want, "rec-%d-", 2000 + i);
        int found = 0;
        for (int k = 0; k < n && !found; k++)
            found = memcmp(data[k], want, strlen(want)) == 0;
        if (!found) TEST_FAIL_("record %s missing", want);
    }
    evlog_reader_close(r);
    struct jslog_stats st;
    jslog_stats(js, &st);
    printf("# cluster: killed the stream leader %s; %d appends retried, all acked and read "
           "%lld ms after the kill (reader reopened %d times)\n",
           c3[victim].name, retries, (long long)(now_ms() - t0), reopened);
    jslog_close(js);
    for (int i = 0; i < 3; i++)
        srv_kill(&c3[i]);
}

int main(void)
{
    if (access(NATS_BIN, X_OK) != 0) {
        printf("PASS %s.all: skipped (no %s)\n", test_binary_name_(), NATS_BIN);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    atexit(kill_all);
    srv_init(&S1, "s1");
    snprintf(s1_url, sizeof s1_url, "nats://127.0.0.1:%d", S1.port);
    S1_URL[0] = s1_url;
    if (srv_start(&S1, &S1, 1) != 0) {
        printf("FAIL %s.start: nats-server did not start\n", test_binary_name_());
        kill_all();
        return 1;
    }
    RUN(append_and_read_back);
    RUN(durable_reader_reopen);
    RUN(durable_names_per_thread);
    RUN(wait_wakes);
    RUN(pending_max_and_timeout);
    RUN(retention_gives_erange);
    RUN(deleted_message_is_skipped);
    RUN(consumer_deleted_under_reader);
    RUN(reader_churn_while_delivering);
    RUN(server_down_and_back);
    RUN(cluster_r3_survives_a_server);
    kill_all();
    return test_summary();
}
