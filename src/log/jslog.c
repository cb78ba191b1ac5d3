/*
 * jslog: the event log on NATS JetStream (contract: jslog.h). How it works inside:
 *
 * PUBLISHING. append() turns each record into a natsMsg (payload = the record, header
 * Tally-Ts), registers it in the in-flight table (pointer -> its append, publish time,
 * partition) and hands it to js_PublishMsgAsync with MaxWait = publish_timeout_ms. The library
 * calls ack_handler once per message, on its reply-subscription thread: with the stream's
 * publish acknowledgement, a negative ack, or its own timeout (MaxWait passed). ack_handler
 * finds the message's append in the table and counts it down.
 *   Invariants (all under js->mu): every message in the table belongs to exactly one live
 *   append; js->pending == entries in the table + records reserved by appends still inside
 *   append() <= pending_max; an append is freed when its reference count (one per message still
 *   in the table, one for the publishing thread, one while it waits on the deferred list)
 *   drops to 0; its done runs exactly once: `claimed` is set, under the mutex, by whoever calls
 *   it: the handler of its first failed message (done(arg, err, 0) at once), the handler of
 *   its last acknowledged message (done(arg, 0, 0)), or, when a publish fails inside append()
 *   after some messages went out, the refresh thread (the deferred list): done never runs on
 *   the thread that called append.
 * The table is open addressing keyed by the message pointer, grown (rehashed under the mutex)
 * up to 2 x pending_max slots, so memory follows load.
 *
 * READING. A reader owns a private inbox subscription (a new inbox per consumer creation, so
 * an old consumer's late deliveries never reach it) and pulls by hand: a request
 * {"batch":256,"max_bytes":1048576,"no_wait":true} to $JS.API.CONSUMER.MSG.NEXT.<stream>.<c>
 * with reply subject <inbox>.<request number>. The server answers at once with what it has, then
 * ends the request with a status (404 nothing, 408 partial batch, 409 max bytes) unless the
 * batch was filled. Statuses of older requests are recognised by their subject and ignored.
 * Every delivered message carries its stream sequence in its reply subject ($JS.ACK...); the
 * reader checks it against its own position (next offset + 1):
 *   - lower: a repeat (an older request's late delivery): dropped;
 *   - higher, on the first message after the consumer was (re)created: the sequences between
 *     were deleted. Below the stream's first sequence (retention): TALLY_ERANGE, sticky (the
 *     caller reopens at start_offset). Inside the stream (a deleted message, js_GetMsg says
 *     so): skipped. If js_GetMsg finds it, it was delivered and lost: re-create;
 *   - higher, later: deliveries were lost (ack policy none delivers once: to a connection that
 *     died, or the consumer was taken over); the consumer is re-created at the position.
 * So a reader returns each stored record exactly once, in order, whatever happens to its
 * consumer. A consumer is also re-created when a fetch goes unanswered and the consumer is
 * gone (deleted, an expired ephemeral), after 3 unanswered fetches in a row (a lost leader),
 * and after JSLOG_STALL_MS of "nothing" while the stream is known to hold more (a consumer that
 * stopped delivering). Re-creation failures back off (100 ms doubling
 * to JSLOG_RETRY_MS_MAX); reader_next sleeps that backoff rather than let a caller spin on
 * TALLY_EAGAIN while committed_offset says there is more.
 *
 * OFFSETS. Per partition: last_seq (committed_offset) and first_seq (start_offset + 1), both
 * only grow. Sources: the stream info fetched at open and by the refresh thread (every
 * JSLOG_REFRESH_MS for partitions in use: with a waiter, an open reader, or asked for in the
 * last JSLOG_ACTIVE_MS; the others round-robin, JSLOG_IDLE_REFRESH_PER_TICK per tick), this
 * process's publish acks (their sequence) and fetched messages (sequence + pending).
 *
 * CLOSING. Appends are refused (TALLY_ECLOSED), waiters wake (TALLY_ECLOSED) and close waits
 * until they have left,
 * js_PublishAsyncComplete waits for the library's last ack callback (every message has a
 * MaxWait, so at most publish_timeout_ms); the refresh thread runs the deferred callbacks and
 * stops; the connection is closed and its closed callback awaited (the library's last
 * callback into us) before anything is freed. If the library did not finish in time, the
 * remaining appends complete with TALLY_ECLOSED and the handle is deliberately leaked rather
 * than freed under a callback that may still run.
 *
 * SUBSCRIPTIONS ARE DESTROYED LATE. libnats 3.4 (Debian 12's) reads a subscription from the
 * connection's table and uses it after letting go of the table's lock without holding a
 * reference (nats.c issue #637, fixed in 3.6): a subscription that another thread unsubscribes
 * and destroys in that window is used after it was freed (seen here: an ASan SEGV in
 * natsConn_processMsg on the read loop thread, in 1 of ~20 runs of test_jslog, as a reader
 * closed while a pull request's status was arriving). So a subscription this module drops is
 * unsubscribed at once (nothing new is delivered to it) and destroyed only once it has waited
 * JSLOG_SUB_GRAVE_MS in js->grave (checked when another is dropped and on every refresh tick),
 * or once natsConnection_Close has returned (it joins the read loop). Invariant: every
 * subscription in js->grave is unsubscribed and referenced by nothing of ours.
 */
#include "log/jslog.h"

#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/diag.h"
#include "tally/error.h"

#define JSLOG_FETCH_BYTES_MAX (1u << 20) /* per pull request */
#define JSLOG_FETCH_TIMEOUT_MS 1000      /* an unanswered pull request is given up */
#define JSLOG_FETCH_TIMEOUTS_MAX 3       /* in a row: re-create the consumer */
#define JSLOG_REFRESH_MS 50              /* stream info of partitions in use */
#define JSLOG_ACTIVE_MS 2000             /* "in use" after an offsets call */
#define JSLOG_IDLE_REFRESH_PER_TICK 8    /* partitions not in use, round-robin */
#define JSLOG_API_WAIT_MS 2000           /* JetStream API requests (consumers, streams) */
#define JSLOG_INFO_WAIT_MS 500           /* the refresh thread's stream info requests */
#define JSLOG_TAP_PENDING_MSGS 65536        /* a tap's undelivered messages; more are dropped */
#define JSLOG_TAP_PENDING_BYTES (64 << 20)
#define JSLOG_STALL_MS 5000              /* no progress while more is committed */
#define JSLOG_RETRY_MS_MIN 100
#define JSLOG_RETRY_MS_MAX 1000
#define JSLOG_EPHEMERAL_INACTIVE_MS 60000 /* server removes an idle ephemeral consumer */
#define JSLOG_CLOSE_GRACE_MS 2000         /* beyond publish_timeout_ms, at close */
#define JSLOG_CONSUMERS_MAX 32            /* registered names per partition */
#define JSLOG_CONSUMER_NAME_MAX 32
#define JSLOG_NAME_BYTES 160 /* stream, subject, consumer names */
#define JSLOG_TS_HEADER "Tally-Ts"
#define JSLOG_HIST_BUCKETS 16
#define JSLOG_MAP_MIN 1024
#define JSLOG_TL_REGS 8 /* a thread's recent registrations */
#define JSLOG_SUB_GRAVE_MS 2000 /* a dropped subscription waits this long before it is freed */

struct jslog;

struct jsreg {
    char name[JSLOG_CONSUMER_NAME_MAX + 1];
    uint64_t offset;
    bool reader_open; /* a reader of this process uses the durable now */
};

struct jspart {
    struct jslog *js;
    uint32_t p;
    char stream[JSLOG_NAME_BYTES];
    char subject[JSLOG_NAME_BYTES];
    _Atomic uint64_t first_seq; /* stream FirstSeq seen (0: none yet) */
    _Atomic uint64_t last_seq;  /* stream LastSeq seen = committed_offset */
    _Atomic int waiters;
    _Atomic int readers;
    _Atomic int64_t used_ms; /* last offsets call (monotonic) */
    pthread_mutex_t mu;      /* wait's condvar; regs */
    pthread_cond_t cv;
    struct jsreg regs[JSLOG_CONSUMERS_MAX];
    int nregs;
    natsSubscription *tap; /* jslog_tap: a plain subscription to the subject */
    jslog_tap_fn tap_fn;
    void *tap_arg;
};

struct jsappend {
    seglog_done_fn done;
    void *arg;
    uint32_t n, acked, refs;
    int err;
    bool claimed;
    struct jsappend *next_deferred;
};

struct pubent {
    natsMsg *msg; /* NULL: free slot */
    struct jsappend *ap;
    int64_t t0_us;
    uint32_t p;
};

struct jslog {
    char *urls[JSLOG_URLS_MAX];
    int url_count;
    char prefix[64];
    char node[64];
    uint32_t partitions, replicas;
    int64_t max_age_ms, max_bytes, publish_timeout_ms, connect_timeout_ms;
    uint32_t pending_max;
    uint64_t serial; /* this handle's number in the process (thread-local registrations) */

    natsOptions *nopts;
    natsConnection *nc;
    jsCtx *jsc;
    int64_t max_payload;

    _Atomic int closing;
    _Atomic uint64_t reconnects;
    _Atomic uint64_t published, acked, failed;
    _Atomic uint64_t hist[JSLOG_HIST_BUCKETS];

    pthread_mutex_t mu; /* map, pending, deferred, conn flags, stop */
    pthread_cond_t cv;  /* refresh thread wake-up; connect and close waits */
    struct pubent *map;
    size_t map_cap, map_count;
    uint64_t pending;
    struct jsappend *deferred_head, *deferred_tail;
    bool conn_up, conn_closed, stop;
    pthread_t thread;
    bool thread_started;
    uint32_t rr;

    pthread_mutex_t grave_mu; /* grave: dropped subscriptions (SUBSCRIPTIONS ARE DESTROYED LATE) */
    struct jsgrave {
        natsSubscription *sub;
        int64_t at_ms; /* when it was dropped */
    } * grave;
    size_t grave_count, grave_cap;

    struct jspart *parts;
};

struct jsreader {
    struct evlog_reader base; /* first */
    struct jspart *part;
    bool durable;
    int reg_id;                      /* the registration whose durable this reader uses, or -1 */
    char consumer[JSLOG_NAME_BYTES]; /* durable name, or the ephemeral's name once created */
    char next_subject[2 * JSLOG_NAME_BYTES];
    natsInbox *inbox;
    natsSubscription *sub;
    char reply[JSLOG_NAME_BYTES]; /* reply subject of the open request */
    uint64_t reqno;
    bool req_open;
    int req_left, req_msgs;
    int64_t req_deadline_ms;
    bool no_max_bytes; /* one message larger than max bytes: next request without */
    uint64_t position; /* next offset */
    bool have_consumer, fresh, erange;
    int timeouts;
    int64_t retry_at_ms;
    int retry_ms;
    int64_t stall_since_ms; /* first "nothing" answer while the stream had more; 0: none */
    natsMsg *cur;           /* the message the last returned record points into */
};

static const struct evlog_ops sink_ops, part_ops;
static _Atomic uint64_t jslog_serial_next = 1;

static _Thread_local struct {
    uint64_t serial;
    uint32_t p;
    int id;
} tl_regs[JSLOG_TL_REGS];
static _Thread_local unsigned tl_next;

/* ------------------------------------------------------------------------------ helpers */

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_ms(void)
{
    return mono_us() / 1000;
}

static void sleep_ms(int64_t ms)
{
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Destroys the subscriptions in js->grave that were dropped JSLOG_SUB_GRAVE_MS ago or earlier,
 * or all of them when `all` (only once the connection's read loop has stopped). Any thread. */
static void graves_reap(struct jslog *js, bool all)
{
    int64_t now = mono_ms();
    pthread_mutex_lock(&js->grave_mu);
    size_t keep = 0;
    for (size_t i = 0; i < js->grave_count; i++) {
        if (all || now - js->grave[i].at_ms >= JSLOG_SUB_GRAVE_MS)
            natsSubscription_Destroy(js->grave[i].sub);
        else
            js->grave[keep++] = js->grave[i];
    }
    js->grave_count = keep;
    pthread_mutex_unlock(&js->grave_mu);
}

/* Unsubscribes sub now and destroys it later (SUBSCRIPTIONS ARE DESTROYED LATE); the caller
 * forgets it. If the grave cannot grow (no memory) sub is left allocated: a leak rather than
 * a use after free. Any thread. */
static void sub_bury(struct jslog *js, natsSubscription *sub)
{
    if (!sub) return;
    natsSubscription_Unsubscribe(sub);
    graves_reap(js, false);
    pthread_mutex_lock(&js->grave_mu);
    if (js->grave_count == js->grave_cap) {
        size_t cap = js->grave_cap ? 2 * js->grave_cap : 16;
        struct jsgrave *g = realloc(js->grave, cap * sizeof *g);
        if (g) {
            js->grave = g;
            js->grave_cap = cap;
        }
    }
    if (js->grave_count < js->grave_cap)
        js->grave[js->grave_count++] = (struct jsgrave){sub, mono_ms()};
    pthread_mutex_unlock(&js->grave_mu);
}

static void deadline_after_ms(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static void atomic_max_u64(_Atomic uint64_t *a, uint64_t v)
{
    uint64_t cur = atomic_load(a);
    while (v > cur && !atomic_compare_exchange_weak(a, &cur, v)) {
    }
}

/* Letters, digits, '-' and '_' are kept; anything else becomes '_' (NATS names). */
static void sanitize_name(char *dst, size_t cap, const char *src, const char *fallback)
{
    if (!src || !src[0]) src = fallback;
    size_t i = 0;
    for (; src[i] && i + 1 < cap; i++) {
        char c = src[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        dst[i] = ok ? c : '_';
    }
    dst[i] = 0;
}

static bool name_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > JSLOG_CONSUMER_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

static void api_opts(jsOptions *o, int64_t wait_ms)
{
    jsOptions_Init(o);
    o->Wait = wait_ms > 0 ? wait_ms : 1;
}

static const char *nats_err_text(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    return t && t[0] ? t : natsStatus_GetText(s);
}

static bool conn_is_up(struct jslog *js)
{
    return natsConnection_Status(js->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* ------------------------------------------------------------------------------ offsets */

static void part_wake(struct jspart *pt)
{
    if (atomic_load(&pt->waiters) == 0) return;
    pthread_mutex_lock(&pt->mu);
    pthread_cond_broadcast(&pt->cv);
    pthread_mutex_unlock(&pt->mu);
}

/* Raises what is known of the stream (never lowers it). */
static void part_seen(struct jspart *pt, uint64_t first_seq, uint64_t last_seq)
{
    if (first_seq) atomic_max_u64(&pt->first_seq, first_seq);
    uint64_t old = atomic_load(&pt->last_seq);
    if (last_seq > old) {
        atomic_max_u64(&pt->last_seq, last_seq);
        part_wake(pt);
    }
}

/* Fresh stream info for pt. 0, or TALLY_EIO / TALLY_EAGAIN (disconnected). */
static int part_refresh(struct jspart *pt, int64_t wait_ms)
{
    struct jslog *js = pt->js;
    if (!conn_is_up(js)) return TALLY_EAGAIN;
    jsOptions o;
    api_opts(&o, wait_ms);
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js->jsc, pt->stream, &o, &jerr);
    if (s != NATS_OK || !si) return TALLY_EIO;
    part_seen(pt, si->State.FirstSeq, si->State.LastSeq);
    jsStreamInfo_Destroy(si);
    return TALLY_OK;
}

static uint64_t part_start(struct jspart *pt)
{
    uint64_t f = atomic_load(&pt->first_seq), l = atomic_load(&pt->last_seq);
    uint64_t s = f ? f - 1 : 0;
    return s < l ? s : l;
}

/* ------------------------------------------------------------------------------ in-flight map */

static size_t map_slot(const struct jslog *js, const natsMsg *m)
{
    uint64_t h = (uint64_t)(uintptr_t)m;
    h ^= h >> 29;
    h *= 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
    return (size_t)h & (js->map_cap - 1);
}

static void map_put_raw(struct jslog *js, const struct pubent *e)
{
    size_t i = map_slot(js, e->msg);
    while (js->map[i].msg)
        i = (i + 1) & (js->map_cap - 1);
    js->map[i] = *e;
    js->map_count++;
}

/* Makes room for `more` entries at load <= 1/2. Under js->mu. */
static int map_reserve(struct jslog *js, size_t more)
{
    size_t need = (js->map_count + more) * 2;
    if (need <= js->map_cap) return TALLY_OK;
    size_t cap = js->map_cap ? js->map_cap : JSLOG_MAP_MIN;
    while (cap < need)
        cap *= 2;
    struct pubent *nm = calloc(cap, sizeof *nm);
    if (!nm) return TALLY_ENOMEM;
    struct pubent *old = js->map;
    size_t old_cap = js->map_cap;
    js->map = nm;
    js->map_cap = cap;
    js->map_count = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].msg) map_put_raw(js, &old[i]);
    free(old);
    return TALLY_OK;
}

/* Removes m; returns its entry (msg NULL when absent). Under js->mu. */
static struct pubent map_take(struct jslog *js, const natsMsg *m)
{
    struct pubent out = {0};
    if (!js->map_cap) return out;
    size_t mask = js->map_cap - 1, i = map_slot(js, m);
    while (js->map[i].msg && js->map[i].msg != m)
        i = (i + 1) & mask;
    if (!js->map[i].msg) return out;
    out = js->map[i];
    js->map[i].msg = NULL;
    js->map_count--;
    /* backward-shift deletion keeps every probe chain unbroken */
    size_t hole = i, j = (i + 1) & mask;
    while (js->map[j].msg) {
        size_t home = map_slot(js, js->map[j].msg);
        bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            js->map[hole] = js->map[j];
            js->map[j].msg = NULL;
            hole = j;
        }
        j = (j + 1) & mask;
    }
    return out;
}

/* ------------------------------------------------------------------------------ publishing */

static void hist_add(struct jslog *js, int64_t us)
{
    int i = 0;
    while (i < JSLOG_HIST_BUCKETS - 1 && us > (int64_t)100 << i)
        i++;
    atomic_fetch_add(&js->hist[i], 1);
}

static int pub_err(const jsPubAckErr *pae, const struct jslog *js)
{
    if (atomic_load(&js->closing) && pae->Err == NATS_TIMEOUT) return TALLY_ECLOSED;
    return pae->Err == NATS_TIMEOUT ? TALLY_ETIMEDOUT : TALLY_EIO;
}

static void ack_handler(jsCtx *jsc, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)jsc;
    struct jslog *js = closure;
    int64_t now = mono_us();
    seglog_done_fn done = NULL;
    void *arg = NULL;
    int derr = 0;
    bool fr = false;
    pthread_mutex_lock(&js->mu);
    struct pubent e = map_take(js, msg);
    if (!e.msg) { /* failed at close already */
        pthread_mutex_unlock(&js->mu);
        natsMsg_Destroy(msg);
        return;
    }
    struct jsappend *ap = e.ap;
    js->pending--;
    int err = pa ? 0 : pae ? pub_err(pae, js) : TALLY_EIO;
    if (!err) ap->acked++;
    if (err && !ap->claimed) {
        ap->claimed = true;
        ap->err = err;
        done = ap->done;
        arg = ap->arg;
        derr = err;
    } else if (!err && ap->acked == ap->n && !ap->claimed) {
        ap->claimed = true;
        done = ap->done;
        arg = ap->arg;
    }
    fr = --ap->refs == 0;
    pthread_mutex_unlock(&js->mu);

    if (pa) {
        atomic_fetch_add(&js->acked, 1);
        hist_add(js, now - e.t0_us);
        if (e.p < js->partitions) part_seen(&js->parts[e.p], 0, pa->Sequence);
    } else {
        atomic_fetch_add(&js->failed, 1);
        if (pae)
            diag_warn("jslog: publish to %s failed: %s (%d)", js->parts[e.p].subject,
                      pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err),
                      (int)pae->ErrCode);
    }
    if (done) done(arg, derr, 0);
    if (fr) free(ap);
    natsMsg_Destroy(msg);
}

/* Queues ap's error completion for the refresh thread. Under js->mu; ap->claimed is set. */
static void defer_done(struct jslog *js, struct jsappend *ap)
{
    ap->refs++;
    ap->next_deferred = NULL;
    if (js->deferred_tail)
        js->deferred_tail->next_deferred = ap;
    else
        js->deferred_head = ap;
    js->deferred_tail = ap;
    pthread_cond_broadcast(&js->cv);
}

static void run_deferred(struct jslog *js)
{
    for (;;) {
        pthread_mutex_lock(&js->mu);
        struct jsappend *ap = js->deferred_head;
        if (ap) {
            js->deferred_head = ap->next_deferred;
            if (!js->deferred_head) js->deferred_tail = NULL;
        }
        pthread_mutex_unlock(&js->mu);
        if (!ap) return;
        ap->done(ap->arg, ap->err, 0);
        pthread_mutex_lock(&js->mu);
        bool fr = --ap->refs == 0;
        pthread_mutex_unlock(&js->mu);
        if (fr) free(ap);
    }
}

static int make_msg(struct jslog *js, const struct seglog_rec *r, uint32_t p, natsMsg **out)
{
    char ts[24];
    snprintf(ts, sizeof ts, "%" PRId64, r->ts_ms);
    natsMsg *m = NULL;
    natsStatus s =
        natsMsg_Create(&m, js->parts[p].subject, NULL, (const char *)r->data, (int)r->len);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, JSLOG_TS_HEADER, ts);
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        return s == NATS_NO_MEMORY ? TALLY_ENOMEM : TALLY_EIO;
    }
    *out = m;
    return TALLY_OK;
}

static int sink_append(void *impl, const struct seglog_rec *recs, const uint32_t *partitions,
                       uint32_t n, seglog_done_fn done, void *arg)
{
    struct jslog *js = impl;
    if (n == 0 || !recs || !done) return TALLY_EINVAL;
    if (!partitions && js->partitions != 1) return TALLY_EINVAL;
    if (atomic_load(&js->closing)) return TALLY_ECLOSED;
    if (n > js->pending_max) return TALLY_ETOOBIG;
    for (uint32_t i = 0; i < n; i++) {
        if (partitions && partitions[i] >= js->partitions) return TALLY_EINVAL;
        if (recs[i].len && !recs[i].data) return TALLY_EINVAL;
        /* payload + our header must fit the server's max_payload */
        if ((int64_t)recs[i].len + 64 > js->max_payload) return TALLY_ETOOBIG;
    }
    if (!conn_is_up(js)) return TALLY_EIO;

    natsMsg *stackv[64];
    natsMsg **msgs = n <= 64 ? stackv : calloc(n, sizeof *msgs);
    struct jsappend *ap = calloc(1, sizeof *ap);
    if (!msgs || !ap) {
        if (msgs != stackv) free(msgs);
        free(ap);
        return TALLY_ENOMEM;
    }
    ap->done = done;
    ap->arg = arg;
    ap->n = n;
    ap->refs = n + 1;
    int rc = TALLY_OK;
    uint32_t made = 0;
    for (; made < n && !rc; made++) {
        rc = make_msg(js, &recs[made], partitions ? partitions[made] : 0, &msgs[made]);
        if (rc) break;
    }
    if (!rc) {
        pthread_mutex_lock(&js->mu);
        if (js->pending + n > js->pending_max)
            rc = TALLY_EFULL;
        else
            rc = map_reserve(js, n);
        if (!rc) {
            int64_t t0 = mono_us();
            js->pending += n;
            for (uint32_t i = 0; i < n; i++) {
                struct pubent e = {msgs[i], ap, t0, partitions ? partitions[i] : 0};
                map_put_raw(js, &e);
            }
        }
        pthread_mutex_unlock(&js->mu);
    }
    if (rc) {
        for (uint32_t i = 0; i < made; i++)
            natsMsg_Destroy(msgs[i]);
        if (msgs != stackv) free(msgs);
        free(ap);
        return rc;
    }

    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = js->publish_timeout_ms;
    uint32_t sent = 0;
    natsStatus s = NATS_OK;
    for (; sent < n; sent++) {
        natsMsg *m = msgs[sent];
        s = js_PublishMsgAsync(js->jsc, &m, &po);
        if (s != NATS_OK) break; /* m is still ours: not in the library's table */
        atomic_fetch_add(&js->published, 1);
    }
    pthread_mutex_lock(&js->mu);
    if (sent < n) {
        /* The unsent messages never get a callback: take them back. */
        for (uint32_t i = sent; i < n; i++)
            map_take(js, msgs[i]);
        js->pending -= n - sent;
        ap->refs -= n - sent;
        if (sent == 0) {
            pthread_mutex_unlock(&js->mu);
            for (uint32_t i = 0; i < n; i++)
                natsMsg_Destroy(msgs[i]);
            if (msgs != stackv) free(msgs);
            free(ap);
            diag_warn("jslog: publish failed: %s", nats_err_text(s));
            return s == NATS_NO_MEMORY ? TALLY_ENOMEM : TALLY_EIO;
        }
        if (!ap->claimed) {
            ap->claimed = true;
            ap->err = s == NATS_NO_MEMORY ? TALLY_ENOMEM : TALLY_EIO;
            defer_done(js, ap);
        }
    }
    bool fr = --ap->refs == 0;
    pthread_mutex_unlock(&js->mu);
    for (uint32_t i = sent; i < n; i++)
        natsMsg_Destroy(msgs[i]);
    if (msgs != stackv) free(msgs);
    if (fr) free(ap);
    return TALLY_OK;
}

/* ------------------------------------------------------------------------------ refresh thread */

static bool part_active(struct jspart *pt, int64_t now)
{
    return atomic_load(&pt->waiters) > 0 || atomic_load(&pt->readers) > 0 ||
           now - atomic_load(&pt->used_ms) < JSLOG_ACTIVE_MS;
}

static void *refresh_main(void *arg)
{
    struct jslog *js = arg;
    pthread_setname_np(pthread_self(), "tally-jsrefresh");
    for (;;) {
        run_deferred(js);
        graves_reap(js, false);
        pthread_mutex_lock(&js->mu);
        bool stop = js->stop;
        pthread_mutex_unlock(&js->mu);
        if (stop) break;
        int64_t now = mono_ms();
        if (conn_is_up(js)) {
            uint32_t idle_done = 0;
            for (uint32_t p = 0; p < js->partitions; p++) {
                struct jspart *pt = &js->parts[p];
                if (part_active(pt, now)) part_refresh(pt, JSLOG_INFO_WAIT_MS);
                if (atomic_load(&js->closing)) break;
            }
            for (uint32_t k = 0; k < js->partitions && idle_done < JSLOG_IDLE_REFRESH_PER_TICK;
                 k++) {
                struct jspart *pt = &js->parts[js->rr++ % js->partitions];
                if (part_active(pt, now)) continue;
                part_refresh(pt, JSLOG_INFO_WAIT_MS);
                idle_done++;
            }
        }
        struct timespec dl;
        deadline_after_ms(&dl, JSLOG_REFRESH_MS);
        pthread_mutex_lock(&js->mu);
        while (!js->stop && !js->deferred_head) {
            if (pthread_cond_timedwait(&js->cv, &js->mu, &dl) == ETIMEDOUT) break;
        }
        pthread_mutex_unlock(&js->mu);
    }
    run_deferred(js);
    return NULL;
}

/* ------------------------------------------------------------------------------ connection */

static void on_connected(natsConnection *nc, void *closure)
{
    (void)nc;
    struct jslog *js = closure;
    pthread_mutex_lock(&js->mu);
    js->conn_up = true;
    pthread_cond_broadcast(&js->cv);
    pthread_mutex_unlock(&js->mu);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    struct jslog *js = closure;
    if (!atomic_load(&js->closing)) diag_warn("jslog: disconnected from NATS; reconnecting");
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    struct jslog *js = closure;
    atomic_fetch_add(&js->reconnects, 1);
    char url[256] = "";
    natsConnection_GetConnectedUrl(nc, url, sizeof url);
    diag_info("jslog: reconnected to %s", url);
}

static void on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    struct jslog *js = closure;
    pthread_mutex_lock(&js->mu);
    js->conn_closed = true;
    pthread_cond_broadcast(&js->cv);
    pthread_mutex_unlock(&js->mu);
}

static int connect_nats(struct jslog *js, int64_t deadline_ms, char *err)
{
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    js->nopts = o;
    char name[128];
    snprintf(name, sizeof name, "tally-%s", js->node);
    if (s == NATS_OK) s = natsOptions_SetServers(o, (const char **)js->urls, js->url_count);
    if (s == NATS_OK) s = natsOptions_SetName(o, name);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(o, 100);
    if (s == NATS_OK) s = natsOptions_SetReconnectJitter(o, 50, 50);
    if (s == NATS_OK) s = natsOptions_SetTimeout(o, 2000);
    if (s == NATS_OK) s = natsOptions_SetPingInterval(o, 2000);
    if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(o, 3);
    if (s == NATS_OK) s = natsOptions_SetFailRequestsOnDisconnect(o, true);
    /* each message is written at once: the library would otherwise wait 1 ms to coalesce */
    if (s == NATS_OK) s = natsOptions_SetSendAsap(o, true);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(o, on_disconnected, js);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(o, on_reconnected, js);
    if (s == NATS_OK) s = natsOptions_SetClosedCB(o, on_closed, js);
    if (s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(o, true, on_connected, js);
    if (s != NATS_OK) {
        snprintf(err, 256, "NATS options: %s", nats_err_text(s));
        return s == NATS_NO_MEMORY ? TALLY_ENOMEM : TALLY_EINVAL;
    }
    s = natsConnection_Connect(&js->nc, o);
    if (s == NATS_OK) {
        pthread_mutex_lock(&js->mu);
        js->conn_up = true;
        pthread_mutex_unlock(&js->mu);
    } else if (s != NATS_NOT_YET_CONNECTED) {
        snprintf(err, 256, "connect: %s", nats_err_text(s));
        return TALLY_EIO;
    }
    pthread_mutex_lock(&js->mu);
    while (!js->conn_up) {
        int64_t left = deadline_ms - mono_ms();
        if (left <= 0) break;
        struct timespec dl;
        deadline_after_ms(&dl, left);
        pthread_cond_timedwait(&js->cv, &js->mu, &dl);
    }
    bool up = js->conn_up;
    pthread_mutex_unlock(&js->mu);
    if (!up) {
        snprintf(err, 256, "no NATS server reachable within %lld ms",
                 (long long)js->connect_timeout_ms);
        return TALLY_EIO;
    }
    js->max_payload = natsConnection_GetMaxPayload(js->nc);
    if (js->max_payload <= 0) js->max_payload = 1 << 20;

    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = JSLOG_API_WAIT_MS;
    jo.PublishAsync.AckHandler = ack_handler;
    jo.PublishAsync.AckHandlerClosure = js;
    jo.PublishAsync.MaxPending = 0; /* no library bound: ours is pending_max (never blocks) */
    jo.PublishAsync.StallWait = 1;
    s = natsConnection_JetStream(&js->jsc, js->nc, &jo);
    if (s != NATS_OK) {
        snprintf(err, 256, "JetStream context: %s", nats_err_text(s));
        return TALLY_EIO;
    }
    return TALLY_OK;
}

/* Errors that waiting will not fix. */
static bool stream_err_permanent(jsErrCode e)
{
    return e == JSStreamReplicasNotSupportedErr || e == JSNotEnabledErr ||
           e == JSStreamInvalidConfig || e == JSStreamSubjectOverlapErr || e == JSStreamMismatchErr;
}

static int ensure_stream(struct jslog *js, struct jspart *pt, int64_t deadline_ms, char *err)
{
    const char *subj = pt->subject;
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = pt->stream;
    cfg.Subjects = &subj;
    cfg.SubjectsLen = 1;
    cfg.Retention = js_LimitsPolicy;
    cfg.Storage = js_FileStorage;
    cfg.Replicas = js->replicas;
    cfg.MaxAge = js->max_age_ms > 0 ? js->max_age_ms * 1000000 : 0;
    cfg.MaxBytes = js->max_bytes > 0 ? js->max_bytes : -1;
    cfg.MaxMsgs = -1;
    cfg.Discard = js_DiscardOld;
    char last[200] = "no answer";
    for (;;) {
        int64_t left = deadline_ms - mono_ms();
        if (left <= 0) break;
        jsOptions o;
        api_opts(&o, left < JSLOG_API_WAIT_MS ? left : JSLOG_API_WAIT_MS);
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_AddStream(&si, js->jsc, &cfg, &o, &jerr);
        if (s != NATS_OK && jerr == JSStreamNameExistErr) {
            /* exists with other settings: bring replicas and limits to ours */
            jerr = 0;
            s = js_UpdateStream(&si, js->jsc, &cfg, &o, &jerr);
            if (s != NATS_OK && jerr != 0 && jerr != JSClusterNotAvailErr) {
                /* refused for good (e.g. replicas the cluster cannot place): use it as it is
                 * when it holds our subject */
                diag_warn("jslog: stream %s exists with other settings and the update was "
                          "refused (%s); using it as it is",
                          pt->stream, nats_err_text(s));
                jerr = 0;
                s = js_GetStreamInfo(&si, js->jsc, pt->stream, &o, &jerr);
                bool ours = false;
                for (int i = 0; s == NATS_OK && si && si->Config && i < si->Config->SubjectsLen;
                     i++)
                    if (strcmp(si->Config->Subjects[i], subj) == 0) ours = true;
                if (s == NATS_OK && si && !ours) {
                    snprintf(err, 256, "stream %s exists without subject %s", pt->stream, subj);
                    jsStreamInfo_Destroy(si);
                    return TALLY_EIO;
                }
            }
        }
        if (s == NATS_OK && si) {
            part_seen(pt, si->State.FirstSeq, si->State.LastSeq);
            jsStreamInfo_Destroy(si);
            return TALLY_OK;
        }
        jsStreamInfo_Destroy(si);
        snprintf(last, sizeof last, "%s (%d)", nats_err_text(s), (int)jerr);
        if (stream_err_permanent(jerr)) {
            snprintf(err, 256, "stream %s: %s", pt->stream, last);
            return TALLY_EIO;
        }
        sleep_ms(200);
    }
    snprintf(err, 256, "stream %s not ready within %lld ms (JetStream leader?): %s", pt->stream,
             (long long)js->connect_timeout_ms, last);
    return TALLY_EIO;
}

/* ------------------------------------------------------------------------------ open/close */

static void js_free(struct jslog *js)
{
    if (js->parts) {
        for (uint32_t p = 0; p < js->partitions; p++) {
            pthread_mutex_destroy(&js->parts[p].mu);
            pthread_cond_destroy(&js->parts[p].cv);
        }
    }
    free(js->parts);
    for (int i = 0; i < js->url_count; i++)
        free(js->urls[i]);
    natsOptions_Destroy(js->nopts);
    free(js->map);
    graves_reap(js, true); /* buried after the connection closed, if any */
    free(js->grave);
    pthread_mutex_destroy(&js->grave_mu);
    pthread_mutex_destroy(&js->mu);
    pthread_cond_destroy(&js->cv);
    free(js);
}

/* Closes the connection and waits for the library's closed callback: after it, no callback
 * of this connection runs again. false when it did not come in time. */
static bool close_conn(struct jslog *js)
{
    if (!js->nc) return true;
    jsCtx_Destroy(js->jsc);
    js->jsc = NULL;
    natsConnection_Close(js->nc); /* returns once the read loop has stopped */
    graves_reap(js, true);
    struct timespec dl;
    deadline_after_ms(&dl, 5000);
    pthread_mutex_lock(&js->mu);
    while (!js->conn_closed)
        if (pthread_cond_timedwait(&js->cv, &js->mu, &dl) == ETIMEDOUT) break;
    bool closed = js->conn_closed;
    pthread_mutex_unlock(&js->mu);
    natsConnection_Destroy(js->nc);
    js->nc = NULL;
    return closed;
}

int jslog_open(const struct jslog_options *opt, struct jslog **out, char *err)
{
    char dummy[256];
    if (!err) err = dummy;
    err[0] = 0;
    *out = NULL;
    if (!opt || !opt->urls || opt->url_count < 1 || opt->url_count > JSLOG_URLS_MAX ||
        opt->partitions < 1 || opt->partitions > 1024 || opt->replicas > 5 || !opt->prefix ||
        !opt->prefix[0] || strlen(opt->prefix) > 32) {
        snprintf(err, 256, "invalid options");
        return TALLY_EINVAL;
    }
    struct jslog *js = calloc(1, sizeof *js);
    if (!js) return TALLY_ENOMEM;
    pthread_mutex_init(&js->mu, NULL);
    pthread_mutex_init(&js->grave_mu, NULL);
    cond_init_mono(&js->cv);
    js->serial = atomic_fetch_add(&jslog_serial_next, 1);
    for (int i = 0; i < opt->url_count; i++) {
        js->urls[i] = strdup(opt->urls[i] ? opt->urls[i] : "");
        if (!js->urls[i]) {
            js_free(js);
            return TALLY_ENOMEM;
        }
        js->url_count = i + 1;
    }
    sanitize_name(js->prefix, sizeof js->prefix, opt->prefix, "TALLY");
    sanitize_name(js->node, sizeof js->node, opt->node, "node");
    js->partitions = opt->partitions;
    js->replicas = opt->replicas ? opt->replicas : 1;
    js->max_age_ms = opt->max_age_ms > 0 ? opt->max_age_ms : 0;
    js->max_bytes = opt->max_bytes > 0 ? opt->max_bytes : 0;
    js->publish_timeout_ms = opt->publish_timeout_ms > 0 ? opt->publish_timeout_ms : 5000;
    js->pending_max = opt->pending_max ? opt->pending_max : 65536;
    js->connect_timeout_ms = opt->connect_timeout_ms > 0 ? opt->connect_timeout_ms : 30000;
    js->parts = calloc(js->partitions, sizeof *js->parts);
    if (!js->parts) {
        js_free(js);
        return TALLY_ENOMEM;
    }
    for (uint32_t p = 0; p < js->partitions; p++) {
        struct jspart *pt = &js->parts[p];
        pt->js = js;
        pt->p = p;
        snprintf(pt->stream, sizeof pt->stream, "%s_P%u", js->prefix, p);
        snprintf(pt->subject, sizeof pt->subject, "%s.events.%u", js->prefix, p);
        pthread_mutex_init(&pt->mu, NULL);
        cond_init_mono(&pt->cv);
    }
    int64_t deadline = mono_ms() + js->connect_timeout_ms;
    int rc = connect_nats(js, deadline, err);
    for (uint32_t p = 0; !rc && p < js->partitions; p++)
        rc = ensure_stream(js, &js->parts[p], deadline, err);
    if (!rc) {
        if (pthread_create(&js->thread, NULL, refresh_main, js) != 0)
            rc = TALLY_ENOMEM;
        else
            js->thread_started = true;
    }
    if (rc) {
        atomic_store(&js->closing, 1);
        if (!close_conn(js)) return rc; /* a callback may still come: leak rather than crash */
        js_free(js);
        return rc;
    }
    *out = js;
    return TALLY_OK;
}

static void on_tap(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    struct jspart *pt = closure;
    if (!atomic_load(&pt->js->closing))
        pt->tap_fn(pt->tap_arg, natsMsg_GetData(msg), (uint32_t)natsMsg_GetDataLength(msg));
    natsMsg_Destroy(msg);
}

int jslog_tap(struct jslog *js, uint32_t p, jslog_tap_fn fn, void *arg)
{
    if (!js || p >= js->partitions || !fn || js->parts[p].tap) return TALLY_EINVAL;
    struct jspart *pt = &js->parts[p];
    pt->tap_fn = fn;
    pt->tap_arg = arg;
    natsStatus s = natsConnection_Subscribe(&pt->tap, js->nc, pt->subject, on_tap, pt);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(pt->tap, JSLOG_TAP_PENDING_MSGS,
                                              JSLOG_TAP_PENDING_BYTES);
    if (s != NATS_OK) {
        sub_bury(js, pt->tap); /* subscribed, perhaps, before SetPendingLimits failed */
        pt->tap = NULL;
        return s == NATS_NO_MEMORY ? TALLY_ENOMEM : TALLY_EIO;
    }
    return TALLY_OK;
}

void jslog_close(struct jslog *js)
{
    if (!js) return;
    atomic_store(&js->closing, 1);
    for (uint32_t p = 0; p < js->partitions; p++) {
        if (!js->parts[p].tap) continue;
        sub_bury(js, js->parts[p].tap); /* no new tap callbacks */
        js->parts[p].tap = NULL;
    }
    for (uint32_t p = 0; p < js->partitions; p++) {
        pthread_mutex_lock(&js->parts[p].mu);
        pthread_cond_broadcast(&js->parts[p].cv);
        pthread_mutex_unlock(&js->parts[p].mu);
    }
    /* Woken waiters leave (TALLY_ECLOSED) before their mutex goes away. */
    bool waiters_left = false;
    for (uint32_t p = 0; p < js->partitions; p++) {
        struct jspart *pt = &js->parts[p];
        for (int64_t end = mono_ms() + JSLOG_CLOSE_GRACE_MS;;) {
            pthread_mutex_lock(&pt->mu);
            int w = atomic_load(&pt->waiters);
            pthread_mutex_unlock(&pt->mu);
            if (w == 0) break;
            if (mono_ms() > end) {
                waiters_left = true;
                break;
            }
            sleep_ms(1);
        }
    }
    /* Every message has a MaxWait: the library answers each within publish_timeout_ms. */
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = js->publish_timeout_ms + JSLOG_CLOSE_GRACE_MS;
    natsStatus s = js_PublishAsyncComplete(js->jsc, &po);
    pthread_mutex_lock(&js->mu);
    js->stop = true;
    pthread_cond_broadcast(&js->cv);
    pthread_mutex_unlock(&js->mu);
    if (js->thread_started) pthread_join(js->thread, NULL);

    /* Whatever the library did not answer (it should have): fail it here. A late callback
     * then finds no entry and only frees its message. */
    bool leak = false;
    struct jsappend *fail = NULL;
    pthread_mutex_lock(&js->mu);
    if (s != NATS_OK || js->map_count) {
        leak = true;
        for (size_t i = 0; i < js->map_cap; i++) {
            struct pubent e = js->map[i];
            if (!e.msg) continue;
            js->map[i].msg = NULL;
            js->pending--;
            struct jsappend *ap = e.ap;
            if (!ap->claimed) {
                ap->claimed = true;
                ap->err = TALLY_ECLOSED;
                ap->refs++;
                ap->next_deferred = fail;
                fail = ap;
            }
            if (--ap->refs == 0) free(ap);
        }
        js->map_count = 0;
    }
    pthread_mutex_unlock(&js->mu);
    while (fail) {
        struct jsappend *ap = fail;
        fail = ap->next_deferred;
        ap->done(ap->arg, ap->err, 0);
        pthread_mutex_lock(&js->mu);
        bool fr = --ap->refs == 0;
        pthread_mutex_unlock(&js->mu);
        if (fr) free(ap);
    }
    if (!close_conn(js) || waiters_left) leak = true;
    if (leak) {
        diag_error("jslog: the NATS library or a waiter did not finish in time at close; the "
                   "handle is left allocated");
        return;
    }
    js_free(js);
}

/* ------------------------------------------------------------------------------ sink evlog */

static int js_poisoned(void *impl)
{
    struct jslog *js = impl;
    if (atomic_load(&js->closing)) return TALLY_ECLOSED;
    return conn_is_up(js) ? TALLY_OK : TALLY_EIO;
}

static uint64_t sink_zero(void *impl)
{
    (void)impl;
    return 0;
}

static int sink_wait(void *impl, uint64_t offset, int timeout_ms)
{
    (void)impl;
    (void)offset;
    (void)timeout_ms;
    return TALLY_ENOTSUP;
}

static int sink_reader_open(void *impl, uint64_t from, struct evlog_reader **out)
{
    (void)impl;
    (void)from;
    *out = NULL;
    return TALLY_ENOTSUP;
}

static int sink_register(void *impl, const char *name, uint64_t offset)
{
    (void)impl;
    (void)name;
    (void)offset;
    return TALLY_ENOTSUP;
}

static int sink_advance(void *impl, int id, uint64_t offset)
{
    (void)impl;
    (void)id;
    (void)offset;
    return TALLY_ENOTSUP;
}

/* ------------------------------------------------------------------------------ partition evlog */

static int part_append(void *impl, const struct seglog_rec *recs, const uint32_t *partitions,
                       uint32_t n, seglog_done_fn done, void *arg)
{
    (void)impl;
    (void)recs;
    (void)partitions;
    (void)n;
    (void)done;
    (void)arg;
    return TALLY_ENOTSUP;
}

static int part_poisoned(void *impl)
{
    return js_poisoned(((struct jspart *)impl)->js);
}

static uint64_t part_start_offset(void *impl)
{
    struct jspart *pt = impl;
    atomic_store(&pt->used_ms, mono_ms());
    return part_start(pt);
}

static uint64_t part_committed(void *impl)
{
    struct jspart *pt = impl;
    atomic_store(&pt->used_ms, mono_ms());
    return atomic_load(&pt->last_seq);
}

static int part_wait(void *impl, uint64_t offset, int timeout_ms)
{
    struct jspart *pt = impl;
    struct jslog *js = pt->js;
    atomic_store(&pt->used_ms, mono_ms());
    if (atomic_load(&js->closing)) return TALLY_ECLOSED;
    if (atomic_load(&pt->last_seq) > offset) return TALLY_OK;
    struct timespec dl;
    if (timeout_ms >= 0) deadline_after_ms(&dl, timeout_ms);
    int rc = TALLY_OK;
    pthread_mutex_lock(&pt->mu);
    atomic_fetch_add(&pt->waiters, 1);
    for (;;) {
        if (atomic_load(&js->closing)) {
            rc = TALLY_ECLOSED;
            break;
        }
        if (atomic_load(&pt->last_seq) > offset) break;
        if (timeout_ms < 0) {
            pthread_cond_wait(&pt->cv, &pt->mu);
        } else if (pthread_cond_timedwait(&pt->cv, &pt->mu, &dl) == ETIMEDOUT) {
            if (atomic_load(&pt->last_seq) <= offset) rc = TALLY_EAGAIN;
            break;
        }
    }
    atomic_fetch_sub(&pt->waiters, 1);
    pthread_mutex_unlock(&pt->mu);
    return rc;
}

static int part_register(void *impl, const char *name, uint64_t offset)
{
    struct jspart *pt = impl;
    if (!name_valid(name)) return TALLY_EINVAL;
    int id = -1;
    pthread_mutex_lock(&pt->mu);
    for (int i = 0; i < pt->nregs; i++)
        if (strcmp(pt->regs[i].name, name) == 0) id = i;
    if (id < 0 && pt->nregs < JSLOG_CONSUMERS_MAX) {
        id = pt->nregs++;
        snprintf(pt->regs[id].name, sizeof pt->regs[id].name, "%s", name);
    }
    if (id >= 0) pt->regs[id].offset = offset;
    pthread_mutex_unlock(&pt->mu);
    if (id < 0) return TALLY_EFULL;
    /* remembered for this thread's next reader_open on this partition */
    unsigned slot = JSLOG_TL_REGS;
    for (unsigned i = 0; i < JSLOG_TL_REGS; i++)
        if (tl_regs[i].serial == pt->js->serial && tl_regs[i].p == pt->p) slot = i;
    if (slot == JSLOG_TL_REGS) slot = tl_next++ % JSLOG_TL_REGS;
    tl_regs[slot].serial = pt->js->serial;
    tl_regs[slot].p = pt->p;
    tl_regs[slot].id = id;
    return id;
}

static int part_advance(void *impl, int id, uint64_t offset)
{
    struct jspart *pt = impl;
    int rc = TALLY_ENOENT;
    pthread_mutex_lock(&pt->mu);
    if (id >= 0 && id < pt->nregs) {
        pt->regs[id].offset = offset;
        rc = TALLY_OK;
    }
    pthread_mutex_unlock(&pt->mu);
    return rc;
}

/* Claims the registration this thread made last on pt for a new reader: its id (the name
 * copied into buf), or -1 when there is none or another open reader already uses it. */
static int tl_claim(struct jspart *pt, char *buf, size_t cap)
{
    int id = -1;
    for (unsigned i = 0; i < JSLOG_TL_REGS; i++)
        if (tl_regs[i].serial == pt->js->serial && tl_regs[i].p == pt->p) id = tl_regs[i].id;
    if (id < 0) return -1;
    pthread_mutex_lock(&pt->mu);
    if (id < pt->nregs && !pt->regs[id].reader_open) {
        pt->regs[id].reader_open = true;
        snprintf(buf, cap, "%s", pt->regs[id].name);
    } else {
        id = -1;
    }
    pthread_mutex_unlock(&pt->mu);
    return id;
}

/* ------------------------------------------------------------------------------ readers */

/* Stream sequence and pending count from a delivered message's reply subject:
 *   $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
 *   $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>...
 * false when it is not one. */
static bool parse_ack_reply(const char *reply, uint64_t *sseq, uint64_t *pending)
{
    static const char pre[] = "$JS.ACK.";
    if (!reply || strncmp(reply, pre, sizeof pre - 1) != 0) return false;
    const char *tok[16];
    size_t len[16];
    int n = 0;
    const char *p = reply + sizeof pre - 1;
    while (n < 16) {
        const char *dot = strchr(p, '.');
        tok[n] = p;
        len[n] = dot ? (size_t)(dot - p) : strlen(p);
        n++;
        if (!dot) break;
        p = dot + 1;
    }
    int is, ip;
    if (n == 7) {
        is = 3;
        ip = 6;
    } else if (n >= 9) {
        is = 5;
        ip = 8;
    } else {
        return false;
    }
    uint64_t v[2] = {0, 0};
    int idx[2] = {is, ip};
    for (int k = 0; k < 2; k++) {
        if (len[idx[k]] == 0 || len[idx[k]] > 20) return false;
        for (size_t i = 0; i < len[idx[k]]; i++) {
            char c = tok[idx[k]][i];
            if (c < '0' || c > '9') return false;
            v[k] = v[k] * 10 + (uint64_t)(c - '0');
        }
    }
    *sseq = v[0];
    *pending = v[1];
    return true;
}

static void reader_drop_sub(struct jsreader *r)
{
    if (r->sub) {
        sub_bury(r->part->js, r->sub);
        r->sub = NULL;
    }
    r->req_open = false;
}

static int reader_subscribe(struct jsreader *r)
{
    struct jslog *js = r->part->js;
    char subj[JSLOG_NAME_BYTES];
    snprintf(subj, sizeof subj, "%s.*", r->inbox);
    natsStatus s = natsConnection_SubscribeSync(&r->sub, js->nc, subj);
    if (s != NATS_OK) {
        r->sub = NULL;
        return TALLY_EIO;
    }
    /* a request asks for at most one batch; old ones' leftovers are dropped by sequence */
    int64_t bytes = 8 * (int64_t)JSLOG_FETCH_BYTES_MAX;
    if (bytes < 2 * js->max_payload + (int64_t)JSLOG_FETCH_BYTES_MAX)
        bytes = 2 * js->max_payload + (int64_t)JSLOG_FETCH_BYTES_MAX;
    natsSubscription_SetPendingLimits(r->sub, 4 * JSLOG_FETCH_BATCH,
                                      bytes > INT32_MAX ? INT32_MAX : (int)bytes);
    return TALLY_OK;
}

/* (Re)creates the reader's consumer to deliver from position + 1, on a new subscription. */
static int reader_create(struct jsreader *r)
{
    struct jspart *pt = r->part;
    struct jslog *js = pt->js;
    if (!conn_is_up(js)) return TALLY_EAGAIN;
    reader_drop_sub(r);
    jsOptions o;
    api_opts(&o, JSLOG_API_WAIT_MS);
    jsErrCode jerr = 0;
    if (r->durable || (r->have_consumer && r->consumer[0])) {
        natsStatus d = js_DeleteConsumer(js->jsc, pt->stream, r->consumer, &o, &jerr);
        if (d != NATS_OK && jerr != JSConsumerNotFoundErr) {
            diag_warn("jslog: cannot delete consumer %s on %s: %s", r->consumer, pt->stream,
                      nats_err_text(d));
            return TALLY_EIO;
        }
        if (!r->durable) r->consumer[0] = 0;
    }
    r->have_consumer = false;
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    if (r->durable)
        cc.Durable = r->consumer;
    else
        cc.InactiveThreshold = (int64_t)JSLOG_EPHEMERAL_INACTIVE_MS * 1000000;
    cc.DeliverPolicy = js_DeliverByStartSequence;
    cc.OptStartSeq = r->position + 1;
    cc.AckPolicy = js_AckNone;
    cc.FilterSubject = pt->subject;
    /* The position that counts is the caller's cursor (kept with its output), and the
     * consumer is re-created at it whenever it vanishes: its own state needs no replication.
     * One in-memory replica spares the servers a Raft group per consumer. */
    cc.Replicas = 1;
    cc.MemoryStorage = true;
    jsConsumerInfo *ci = NULL;
    jerr = 0;
    natsStatus s = js_AddConsumer(&ci, js->jsc, pt->stream, &cc, &o, &jerr);
    if (s != NATS_OK || !ci) {
        diag_warn("jslog: cannot create consumer %s on %s: %s (%d)",
                  r->durable ? r->consumer : "(ephemeral)", pt->stream, nats_err_text(s),
                  (int)jerr);
        jsConsumerInfo_Destroy(ci);
        return TALLY_EIO;
    }
    snprintf(r->consumer, sizeof r->consumer, "%s", ci->Name);
    jsConsumerInfo_Destroy(ci);
    r->have_consumer = true;
    snprintf(r->next_subject, sizeof r->next_subject, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", pt->stream,
             r->consumer);
    /* a new inbox: late deliveries of the old consumer cannot reach the new subscription */
    natsInbox *inbox = NULL;
    if (natsInbox_Create(&inbox) != NATS_OK) return TALLY_ENOMEM;
    natsInbox_Destroy(r->inbox);
    r->inbox = inbox;
    if (reader_subscribe(r) != 0) return TALLY_EIO;
    r->fresh = true;
    r->timeouts = 0;
    r->no_max_bytes = false;
    r->stall_since_ms = 0;
    return TALLY_OK;
}

/* A failure that makes reader_next answer TALLY_EAGAIN: wait (bounded) before the next try so
 * that a caller whose wait() returns at once does not spin. */
static int reader_backoff(struct jsreader *r)
{
    r->retry_ms = r->retry_ms ? r->retry_ms * 2 : JSLOG_RETRY_MS_MIN;
    if (r->retry_ms > JSLOG_RETRY_MS_MAX) r->retry_ms = JSLOG_RETRY_MS_MAX;
    r->retry_at_ms = mono_ms() + r->retry_ms;
    return TALLY_EAGAIN;
}

static int reader_send(struct jsreader *r)
{
    struct jslog *js = r->part->js;
    char body[96];
    if (r->no_max_bytes)
        snprintf(body, sizeof body, "{\"batch\":1,\"no_wait\":true}");
    else
        snprintf(body, sizeof body, "{\"batch\":%d,\"max_bytes\":%u,\"no_wait\":true}",
                 JSLOG_FETCH_BATCH, JSLOG_FETCH_BYTES_MAX);
    r->reqno++;
    snprintf(r->reply, sizeof r->reply, "%s.%" PRIu64, r->inbox, r->reqno);
    natsStatus s =
        natsConnection_PublishRequest(js->nc, r->next_subject, r->reply, body, (int)strlen(body));
    if (s != NATS_OK) return TALLY_EIO;
    r->req_open = true;
    r->req_left = r->no_max_bytes ? 1 : JSLOG_FETCH_BATCH;
    r->req_msgs = 0;
    r->no_max_bytes = false;
    r->req_deadline_ms = mono_ms() + JSLOG_FETCH_TIMEOUT_MS;
    return TALLY_OK;
}

/* The first message after (re)creation skipped sequences [exp, seq): deleted, or lost?
 * 1: deleted (skip), 0: re-create, TALLY_ERANGE: below the stream's start. */
static int reader_check_skip(struct jsreader *r, uint64_t exp)
{
    struct jspart *pt = r->part;
    struct jslog *js = pt->js;
    if (part_refresh(pt, JSLOG_API_WAIT_MS) != 0) return 0;
    if (exp < atomic_load(&pt->first_seq)) return TALLY_ERANGE;
    jsOptions o;
    api_opts(&o, JSLOG_API_WAIT_MS);
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetMsg(&m, js->jsc, pt->stream, exp, &o, &jerr);
    natsMsg_Destroy(m);
    if (s != NATS_OK && jerr == JSNoMessageFoundErr) return 1;
    return 0;
}

static int64_t header_ts(natsMsg *m)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, JSLOG_TS_HEADER, &v) != NATS_OK || !v) return 0;
    return strtoll(v, NULL, 10);
}

/* An unanswered pull request: is the consumer gone (deleted, an ephemeral expired)? */
static bool reader_consumer_gone(struct jsreader *r)
{
    struct jspart *pt = r->part;
    struct jslog *js = pt->js;
    if (!conn_is_up(js)) return false;
    jsOptions o;
    api_opts(&o, JSLOG_API_WAIT_MS);
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js->jsc, pt->stream, r->consumer, &o, &jerr);
    jsConsumerInfo_Destroy(ci);
    return s != NATS_OK && jerr == JSConsumerNotFoundErr;
}

/* The end of a pull request (or an older one's): READ_ON to go on reading, else the code
 * reader_next returns. Takes m. */
#define READ_ON 1
static int reader_on_status(struct jsreader *r, natsMsg *m, const char *status)
{
    struct jspart *pt = r->part;
    bool current = r->req_open && strcmp(natsMsg_GetSubject(m), r->reply) == 0;
    char code[4] = "";
    snprintf(code, sizeof code, "%s", status);
    const char *desc = NULL;
    natsMsgHeader_Get(m, "Description", &desc);
    bool max_bytes = desc && strstr(desc, "MaxBytes");
    bool deleted = desc && strstr(desc, "Deleted");
    natsMsg_Destroy(m);
    if (!current) return READ_ON; /* an older request's end */
    r->req_open = false;
    r->retry_ms = 0;
    if (strcmp(code, "409") == 0 && max_bytes) {
        if (r->req_msgs == 0) r->no_max_bytes = true; /* one record > max bytes */
        return READ_ON;
    }
    if (strcmp(code, "404") == 0 || strcmp(code, "408") == 0) {
        /* Nothing more now. If the stream has more (a replica behind, or a consumer that
         * stopped delivering), pace the caller, and re-create after a while. */
        uint64_t committed = atomic_load(&pt->last_seq);
        if (r->position >= committed) {
            r->stall_since_ms = 0;
        } else if (!r->stall_since_ms) {
            r->stall_since_ms = mono_ms();
        } else if (mono_ms() - r->stall_since_ms > JSLOG_STALL_MS) {
            diag_warn("jslog: consumer %s on %s delivers nothing at offset %" PRIu64
                      " (committed %" PRIu64 "); re-creating it",
                      r->consumer, pt->stream, r->position, committed);
            r->stall_since_ms = 0;
            r->have_consumer = false;
        }
        if (r->position < committed) sleep_ms(2);
        return TALLY_EAGAIN;
    }
    if (deleted || strcmp(code, "503") == 0) r->have_consumer = false;
    return reader_backoff(r);
}

/* A delivered message: READ_ON (dropped), 0 (*rec filled, the reader keeps m), or
 * TALLY_ERANGE. Takes m. */
static int reader_on_msg(struct jsreader *r, natsMsg *m, struct seglog_record *rec)
{
    struct jspart *pt = r->part;
    if (r->req_open) {
        r->req_msgs++;
        if (--r->req_left <= 0) r->req_open = false;
    }
    uint64_t seq = 0, pend = 0;
    if (!parse_ack_reply(natsMsg_GetReply(m), &seq, &pend) || seq == 0) {
        natsMsg_Destroy(m);
        return READ_ON;
    }
    part_seen(pt, 0, seq + pend);
    uint64_t exp = r->position + 1;
    if (seq < exp) { /* a repeat */
        natsMsg_Destroy(m);
        return READ_ON;
    }
    if (seq > exp) {
        natsMsg_Destroy(m);
        int k = r->fresh ? reader_check_skip(r, exp) : 0;
        if (k == TALLY_ERANGE) {
            r->erange = true;
            return TALLY_ERANGE;
        }
        if (k == 1) {
            diag_warn("jslog: %s: sequence %" PRIu64 " was deleted; skipping it", pt->stream, exp);
            r->position = exp; /* and ask again from the next one: the consumer says */
        } else {
            diag_info("jslog: %s: consumer %s jumped from %" PRIu64 " to %" PRIu64
                      " (deleted, or deliveries lost); re-creating it at %" PRIu64,
                      pt->stream, r->consumer, exp, seq, exp);
            /* again right after a re-creation, unexplained: do not loop at full speed */
            if (r->fresh) reader_backoff(r);
        }
        r->have_consumer = false;
        return READ_ON;
    }
    r->fresh = false;
    r->retry_ms = 0;
    r->position = seq;
    r->stall_since_ms = 0;
    r->cur = m;
    rec->offset = seq - 1;
    rec->ts_ms = header_ts(m);
    rec->data = natsMsg_GetData(m);
    rec->len = (uint32_t)natsMsg_GetDataLength(m);
    return TALLY_OK;
}

static int r_next(struct evlog_reader *base, struct seglog_record *rec)
{
    struct jsreader *r = (struct jsreader *)base;
    struct jslog *js = r->part->js;
    natsMsg_Destroy(r->cur);
    r->cur = NULL;
    if (r->erange) return TALLY_ERANGE;
    for (;;) {
        if (atomic_load(&js->closing)) return TALLY_ECLOSED;
        int64_t now = mono_ms();
        if (r->retry_at_ms > now) sleep_ms(r->retry_at_ms - now);
        r->retry_at_ms = 0;
        if (!r->have_consumer || !r->sub) {
            if (reader_create(r) != 0) return reader_backoff(r);
        }
        if (!r->req_open) {
            if (!conn_is_up(js)) return reader_backoff(r);
            if (reader_send(r) != 0) return reader_backoff(r);
        }
        int64_t left = r->req_deadline_ms - mono_ms();
        natsMsg *m = NULL;
        natsStatus s = left > 0 ? natsSubscription_NextMsg(&m, r->sub, left) : NATS_TIMEOUT;
        if (s == NATS_TIMEOUT) {
            r->req_open = false;
            if (++r->timeouts >= JSLOG_FETCH_TIMEOUTS_MAX || reader_consumer_gone(r))
                r->have_consumer = false;
            return reader_backoff(r);
        }
        if (s != NATS_OK) { /* closed/invalid subscription, slow consumer, no responders */
            r->req_open = false;
            r->have_consumer = false;
            return reader_backoff(r);
        }
        r->timeouts = 0;
        const char *status = NULL;
        int rc;
        if (natsMsg_GetDataLength(m) == 0 && natsMsgHeader_Get(m, "Status", &status) == NATS_OK &&
            status)
            rc = reader_on_status(r, m, status);
        else
            rc = reader_on_msg(r, m, rec);
        if (rc != READ_ON) return rc;
    }
}

static uint64_t r_position(const struct evlog_reader *base)
{
    return ((const struct jsreader *)base)->position;
}

static void r_close(struct evlog_reader *base)
{
    struct jsreader *r = (struct jsreader *)base;
    if (!r) return;
    struct jspart *pt = r->part;
    struct jslog *js = pt->js;
    natsMsg_Destroy(r->cur);
    reader_drop_sub(r);
    if (!r->durable && r->have_consumer && conn_is_up(js)) {
        /* best effort: an ephemeral left behind expires after its inactive threshold */
        jsOptions o;
        api_opts(&o, 500);
        jsErrCode jerr = 0;
        js_DeleteConsumer(js->jsc, pt->stream, r->consumer, &o, &jerr);
    }
    natsInbox_Destroy(r->inbox);
    if (r->reg_id >= 0) {
        pthread_mutex_lock(&pt->mu);
        pt->regs[r->reg_id].reader_open = false;
        pthread_mutex_unlock(&pt->mu);
    }
    atomic_fetch_sub(&pt->readers, 1);
    free(r);
}

static int part_reader_open(void *impl, uint64_t from, struct evlog_reader **out)
{
    struct jspart *pt = impl;
    struct jslog *js = pt->js;
    *out = NULL;
    if (atomic_load(&js->closing)) return TALLY_ECLOSED;
    /* range check on fresh numbers when the cluster answers, else on what is known */
    if (part_refresh(pt, JSLOG_API_WAIT_MS) == 0) {
        if (from < part_start(pt) || from > atomic_load(&pt->last_seq)) return TALLY_ERANGE;
    } else if (from < part_start(pt)) {
        return TALLY_ERANGE;
    }
    struct jsreader *r = calloc(1, sizeof *r);
    if (!r) return TALLY_ENOMEM;
    r->base.ops = &part_ops;
    r->part = pt;
    r->position = from;
    char name[JSLOG_CONSUMER_NAME_MAX + 1];
    r->reg_id = tl_claim(pt, name, sizeof name);
    if (r->reg_id >= 0) {
        r->durable = true;
        snprintf(r->consumer, sizeof r->consumer, "%s_%s_P%u", js->node, name, pt->p);
    }
    atomic_fetch_add(&pt->readers, 1);
    /* a consumer that cannot be made now is made by reader_next (TALLY_EAGAIN until then) */
    if (reader_create(r) != 0) reader_backoff(r);
    *out = &r->base;
    return TALLY_OK;
}

/* ------------------------------------------------------------------------------ public */

static const struct evlog_ops sink_ops = {
    .kind = "jetstream",
    .append = sink_append,
    .poisoned_err = js_poisoned,
    .start_offset = sink_zero,
    .committed_offset = sink_zero,
    .wait = sink_wait,
    .reader_open = sink_reader_open,
    .reader_next = r_next,
    .reader_position = r_position,
    .reader_close = r_close,
    .consumer_register = sink_register,
    .consumer_advance = sink_advance,
};

static const struct evlog_ops part_ops = {
    .kind = "jetstream",
    .append = part_append,
    .poisoned_err = part_poisoned,
    .start_offset = part_start_offset,
    .committed_offset = part_committed,
    .wait = part_wait,
    .reader_open = part_reader_open,
    .reader_next = r_next,
    .reader_position = r_position,
    .reader_close = r_close,
    .consumer_register = part_register,
    .consumer_advance = part_advance,
};

void jslog_sink(struct jslog *js, struct evlog *out)
{
    out->ops = &sink_ops;
    out->impl = js;
}

void jslog_partition(struct jslog *js, uint32_t p, struct evlog *out)
{
    TALLY_ASSERT(p < js->partitions);
    out->ops = &part_ops;
    out->impl = &js->parts[p];
}

void jslog_stats(struct jslog *js, struct jslog_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!js) return;
    out->published = atomic_load(&js->published);
    out->acked = atomic_load(&js->acked);
    out->failed = atomic_load(&js->failed);
    pthread_mutex_lock(&js->mu);
    out->pending = js->pending;
    pthread_mutex_unlock(&js->mu);
    for (int i = 0; i < JSLOG_HIST_BUCKETS; i++)
        out->ack_latency_hist[i] = atomic_load(&js->hist[i]);
    out->reconnects = atomic_load(&js->reconnects);
    out->connected = js->nc && conn_is_up(js);
}
