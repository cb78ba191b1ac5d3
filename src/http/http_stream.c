/*
 * http_stream: streamed responses (API in http_server.h: http_stream_start / _write / _finish
 * / _abort). A producer on any thread hands bytes over; the connection's worker frames them as
 * HTTP/1.1 chunks (or, for HTTP/1.0, a body that ends with the connection) and writes them in
 * request order like any other response.
 *
 * SHARED STATE. struct http_stream is shared by the producer and the worker and guarded by its
 * mutex: the pending bytes (buf[off..len)), `finished` / `failed` (set by the producer) and
 * `aborted` (set by the worker when the exchange goes away: client disconnected, write
 * timeout, output overflow, HEAD request, server stop). `ex` is the worker's alone.
 *
 * BACK-PRESSURE. The worker moves pending bytes into the connection's output only while that
 * output holds less than `window` unsent bytes, and wakes the producer (condition variable)
 * whenever it took bytes. http_stream_write waits while more than `window` bytes are pending.
 * So a stream holds at most about 2 x window + one write in memory, whatever the client does.
 *
 * WAKE-UPS. The worker pumps when the producer posted, when the socket becomes writable, and
 * again after a flush that sent everything at once (http_conn_flush): a pump stopped only by
 * the window must not wait for a wake-up that no one will send. The producer posts the stream's own queue node (Q_STREAM) to the worker when it
 * added bytes or finished and no wake-up is pending (`posted`); so a fast producer costs one
 * wake-up per batch of writes, not per write, and no allocation.
 *
 * LIFETIME. Reference counted under the mutex: one reference for the producer (dropped by
 * http_stream_finish / http_stream_abort), one for the exchange (dropped by
 * http_stream_detach when the worker frees it), one while the node is posted. The last one
 * frees the stream.
 */
#include "http/http_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tally/error.h"

#define STREAM_KEEP_BYTES (64 * 1024) /* a drained buffer larger than this is freed */

struct http_stream {
    struct qnode qn; /* Q_STREAM: first member, the node is the stream */
    struct worker *w;
    struct http_exchange *ex; /* worker thread only; NULL once the exchange is freed */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *buf;
    size_t off, len, cap;
    size_t window;
    bool finished, failed, aborted, posted;
    int refs;
};

static void stream_unref_locked(struct http_stream *st, bool *freed)
{
    *freed = --st->refs == 0;
}

static void stream_free(struct http_stream *st)
{
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st->buf);
    free(st);
}

static void stream_unref(struct http_stream *st)
{
    bool freed;
    pthread_mutex_lock(&st->mu);
    stream_unref_locked(st, &freed);
    pthread_mutex_unlock(&st->mu);
    if (freed) stream_free(st);
}

/* With st->mu held: makes sure the worker will look at the stream; true when the caller must
 * push the node (after unlocking is not safe: push under the lock, see below). */
static void stream_post_locked(struct http_stream *st)
{
    if (st->posted || st->aborted) return;
    st->posted = true;
    st->refs++;
    /* Pushed under the stream lock: the worker never holds its inbox lock while taking a
     * stream lock, so the order stream -> inbox cannot deadlock, and the worker cannot detach
     * (and the server cannot be freed) between the `aborted` check and the push. */
    http_worker_push(st->w, &st->qn);
}

int http_stream_start(struct http_exchange *ex, int status, const char *content_type,
                      const char *extra_headers, size_t window_bytes, struct http_stream **out)
{
    TALLY_ASSERT(ex && out && status >= 200 && status <= 599);
    TALLY_ASSERT(atomic_exchange(&ex->completed, 1) == 0); /* completed twice */
    size_t xlen = extra_headers ? strlen(extra_headers) : 0;
    TALLY_ASSERT(xlen == 0 || (xlen >= 2 && memcmp(extra_headers + xlen - 2, "\r\n", 2) == 0));
    *out = NULL;
    struct http_stream *st = calloc(1, sizeof *st);
    if (!st || !http_ex_store(ex, status, content_type, extra_headers, xlen)) {
        free(st);
        if (!st) http_ex_store(ex, 503, "application/json", NULL, 0);
        http_worker_push(ex->w, &ex->qn); /* completes with what was stored (503 on OOM) */
        return TALLY_ENOMEM;
    }
    st->qn.kind = Q_STREAM;
    st->w = ex->w;
    st->ex = ex;
    st->window = window_bytes ? window_bytes : HTTP_STREAM_WINDOW_DEFAULT;
    st->refs = 2; /* the producer and the exchange */
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    ex->stream = st;
    *out = st;
    http_worker_push(ex->w, &ex->qn); /* Q_DONE: the worker writes the head in order */
    return TALLY_OK;
}

static void deadline_after(struct timespec *ts, int timeout_ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int http_stream_write(struct http_stream *st, const void *data, size_t len, int timeout_ms)
{
    TALLY_ASSERT(st && (len == 0 || data));
    TALLY_ASSERT(http_tls_worker != st->w || timeout_ms == 0); /* would wait for itself */
    struct timespec dl;
    if (timeout_ms > 0) deadline_after(&dl, timeout_ms);
    pthread_mutex_lock(&st->mu);
    TALLY_ASSERT(!st->finished);
    int rc = TALLY_OK;
    while (!st->aborted && st->len - st->off > st->window) {
        if (timeout_ms == 0) {
            rc = TALLY_EAGAIN;
            break;
        }
        int e = timeout_ms < 0 ? pthread_cond_wait(&st->cv, &st->mu)
                               : pthread_cond_timedwait(&st->cv, &st->mu, &dl);
        if (e == ETIMEDOUT) {
            rc = TALLY_EAGAIN;
            break;
        }
    }
    if (st->aborted) rc = TALLY_ECLOSED;
    if (rc == TALLY_OK && len > 0) {
        if (st->off && st->len + len > st->cap) {
            memmove(st->buf, st->buf + st->off, st->len - st->off);
            st->len -= st->off;
            st->off = 0;
        }
        if (st->len + len > st->cap) {
            size_t cap = st->cap ? st->cap : 4096;
            while (cap < st->len + len)
                cap *= 2;
            char *p = realloc(st->buf, cap);
            if (!p) {
                rc = TALLY_ENOMEM;
            } else {
                st->buf = p;
                st->cap = cap;
            }
        }
        if (rc == TALLY_OK) {
            memcpy(st->buf + st->len, data, len);
            st->len += len;
            stream_post_locked(st);
        }
    }
    pthread_mutex_unlock(&st->mu);
    return rc;
}

bool http_stream_closed(struct http_stream *st)
{
    pthread_mutex_lock(&st->mu);
    bool a = st->aborted;
    pthread_mutex_unlock(&st->mu);
    return a;
}

static int stream_end(struct http_stream *st, bool failed)
{
    if (!st) return TALLY_OK;
    pthread_mutex_lock(&st->mu);
    TALLY_ASSERT(!st->finished);
    st->finished = true;
    st->failed = failed;
    int rc = st->aborted ? TALLY_ECLOSED : TALLY_OK;
    stream_post_locked(st);
    bool freed;
    stream_unref_locked(st, &freed);
    pthread_mutex_unlock(&st->mu);
    if (freed) stream_free(st);
    return rc;
}

int http_stream_finish(struct http_stream *st)
{
    return stream_end(st, false);
}

void http_stream_abort(struct http_stream *st)
{
    stream_end(st, true);
}

/* ---- worker side ---- */

void http_stream_detach(struct http_stream *st)
{
    pthread_mutex_lock(&st->mu);
    st->ex = NULL;
    st->aborted = true;
    pthread_cond_broadcast(&st->cv);
    bool freed;
    stream_unref_locked(st, &freed);
    pthread_mutex_unlock(&st->mu);
    if (freed) stream_free(st);
}

void http_stream_wake(struct worker *w, struct qnode *n)
{
    (void)w;
    struct http_stream *st = (struct http_stream *)n;
    pthread_mutex_lock(&st->mu);
    st->posted = false;
    pthread_mutex_unlock(&st->mu);
    struct http_exchange *ex = st->ex; /* worker thread: stable here */
    struct conn *c = ex ? ex->conn : NULL;
    if (c && !c->dead) {
        c->busy++;
        http_conn_process(c);
        http_conn_release(c);
    }
    stream_unref(st);
}

bool http_stream_ready(struct http_stream *st)
{
    pthread_mutex_lock(&st->mu);
    bool r = !st->aborted && (st->len > st->off || st->finished);
    pthread_mutex_unlock(&st->mu);
    return r;
}

bool http_stream_pump(struct conn *c, struct http_exchange *ex)
{
    struct http_stream *st = ex->stream;
    size_t window = st->window;
    bool took = false, failed, done;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        size_t pending = c->out_len - c->out_off;
        size_t avail = st->len - st->off;
        if (avail == 0 || pending >= window) break;
        size_t n = avail < window - pending ? avail : window - pending;
        char head[24];
        int hl = ex->stream_chunked ? snprintf(head, sizeof head, "%zx\r\n", n) : 0;
        if ((hl && !http_conn_emit_out(c, head, (size_t)hl)) ||
            !http_conn_emit_out(c, st->buf + st->off, n) ||
            (hl && !http_conn_emit_out(c, "\r\n", 2))) {
            pthread_mutex_unlock(&st->mu); /* killed: ex was freed and the stream aborted */
            return false;
        }
        st->off += n;
        took = true;
    }
    if (st->off == st->len) {
        st->off = st->len = 0;
        if (st->cap > STREAM_KEEP_BYTES && !st->finished) {
            free(st->buf);
            st->buf = NULL;
            st->cap = 0;
        }
    }
    if (took) pthread_cond_broadcast(&st->cv);
    failed = st->finished && st->failed;
    done = st->finished && st->len == st->off;
    pthread_mutex_unlock(&st->mu);
    if (failed) {
        /* the producer gave up mid-body: a truncated message, never a complete-looking one */
        http_conn_kill(c);
        return false;
    }
    if (!done) return false;
    if (ex->stream_chunked && !http_conn_emit_out(c, "0\r\n\r\n", 5)) return false;
    http_conn_pop(c, ex, ex->close_after);
    return true;
}
