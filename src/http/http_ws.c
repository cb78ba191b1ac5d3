/*
 * http_ws: WebSocket connections (RFC 6455) taken over from an HTTP exchange (API in
 * http_server.h: http_ws_check / _accept / _send / _closed / _release).
 *
 * HANDSHAKE. A route checks the request (http_ws_check: GET, HTTP/1.1, "Upgrade: websocket",
 * "Connection: upgrade", Sec-WebSocket-Version 13, a Sec-WebSocket-Key of 16 base64 bytes)
 * and answers its own errors as usual; http_ws_accept then completes the exchange with
 * "101 Switching Protocols" and Sec-WebSocket-Accept = base64(SHA-1(key + GUID)). A request
 * carrying an Upgrade header stops the connection from parsing later heads (http_conn.c), so
 * the bytes after it are the client's first frames, never a pipelined request; a non-101
 * answer closes the connection. When the 101 is written in request order the connection
 * switches to state C_WS and belongs to this file.
 *
 * SHA-1. Ours (below, FIPS 180-4, checked against the RFC 3174 vectors in
 * tests/unit/test_ws.c): the handshake is its only use, where it is a fixed transform and not
 * a security primitive, so one 60-line function beats a new library dependency.
 *
 * INPUT (worker thread). Frames are parsed as they arrive, so a frame larger than the
 * connection's input buffer streams through it: a data frame's payload is unmasked straight
 * into the message being reassembled (at most message_bytes_max, else close 1009); control
 * frames (<= 125 bytes, never fragmented) wait until whole in the buffer. Rules, each a
 * close with 1002 unless said otherwise: client frames must be masked; reserved bits must be
 * 0; opcodes are 0 (continuation), 1 (text), 2 (binary), 8 (close), 9 (ping), 10 (pong);
 * a continuation needs a message in progress and a new text/binary frame must not interrupt
 * one; a text message must be valid UTF-8 (1007). Ping is answered by a pong with the same
 * payload, pong ignored; complete client messages are validated and discarded (the server
 * only pushes). A close frame is answered with a close frame echoing its status (1000 when it
 * had none), then the connection ends; after the server sent a close it discards input.
 *
 * OUTPUT. Producers on any thread call http_ws_send: the message is framed (unmasked text
 * frame) into the shared queue under the mutex and the worker is woken through the
 * connection's own inbox node (Q_WS), at most one wake-up pending. The worker moves whole
 * frames to the connection's output. BOUND: a message is refused (TALLY_EFULL) when the queue
 * plus the connection's unsent output (as of the worker's last look) would exceed
 * queue_bytes_max; the connection is then cut as a slow consumer. Nothing grows without
 * bound whatever the client does; a client reading nothing is also cut after write_timeout_ms.
 *
 * LIFETIME. Reference counted under the mutex: the producer's handle (http_ws_release), the
 * exchange's, later the connection's (http_ws_detach when the exchange or connection is
 * freed), and one while the node is posted.
 */
#include "http/http_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tally/error.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEEP_BYTES (64 * 1024) /* a drained queue larger than this is freed */

enum { OP_CONT = 0, OP_TEXT = 1, OP_BINARY = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };

struct http_ws {
    struct qnode qn; /* Q_WS: first member, the node is the handle */
    struct worker *w;
    pthread_mutex_t mu;
    /* shared, under mu */
    char *buf; /* framed messages waiting for the worker: buf[off..len) */
    size_t off, len, cap;
    size_t out_pending; /* the connection's unsent output at the worker's last look */
    bool posted, aborted, overflow;
    uint16_t close_code; /* asked by the producer, 0: none */
    int refs;
    /* worker thread only */
    struct conn *conn;
    size_t queue_max, msg_max;
    bool close_sent, in_frame, frame_fin;
    uint8_t frame_op, msg_op; /* msg_op: opcode of the message in progress, 0 none */
    uint8_t mask[4];
    unsigned mask_pos;
    uint64_t frame_left;
    char *msg;
    size_t msg_len, msg_cap;
};

/* ---- SHA-1 (FIPS 180-4) and base64 (RFC 4648) ---- */

static uint32_t rol32(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32 - n));
}

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999u;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1u;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDCu;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6u;
        }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol32(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

void http_sha1(const void *data, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    const uint8_t *p = data;
    size_t left = len;
    for (; left >= 64; left -= 64, p += 64)
        sha1_block(h, p);
    uint8_t tail[128] = {0};
    memcpy(tail, p, left);
    tail[left] = 0x80;
    size_t tlen = left + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[tlen - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha1_block(h, tail);
    if (tlen == 128) sha1_block(h, tail + 64);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t base64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

void http_ws_accept_key(const char *key, char out[29])
{
    char buf[128];
    int n = snprintf(buf, sizeof buf, "%.60s%s", key, WS_GUID);
    uint8_t d[20];
    http_sha1(buf, (size_t)n, d);
    base64_encode(d, 20, out);
}

/* ---- UTF-8 (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF) ---- */

bool http_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return false;
        }
        if ((size_t)(end - p) < k + 1) return false;
        if (p[1] < lo || p[1] > hi) return false;
        for (size_t i = 2; i <= k; i++)
            if ((p[i] & 0xC0) != 0x80) return false;
        p += k + 1;
    }
    return true;
}

/* ---- handshake ---- */

/* Whether the comma-separated header value holds token (case-insensitive). */
static bool has_token(const char *v, const char *token)
{
    size_t tl = strlen(token);
    while (v && *v) {
        while (*v == ' ' || *v == '\t' || *v == ',') v++;
        const char *e = v;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > v && (t[-1] == ' ' || t[-1] == '\t')) t--;
        if ((size_t)(t - v) == tl && strncasecmp(v, token, tl) == 0) return true;
        v = e;
    }
    return false;
}

static bool key_valid(const char *k)
{
    if (!k || strlen(k) != 24 || strcmp(k + 22, "==") != 0) return false;
    for (int i = 0; i < 22; i++)
        if (!strchr(b64, k[i]) || k[i] == 0) return false;
    return true;
}

int http_ws_check(const struct http_request *req, const char **msg)
{
    if (req->method != HTTP_GET) {
        *msg = "a WebSocket handshake is a GET request";
        return 400;
    }
    if (req->version_minor < 1) {
        *msg = "a WebSocket handshake needs HTTP/1.1";
        return 400;
    }
    if (!has_token(http_request_header(req, "upgrade"), "websocket")) {
        *msg = "this endpoint speaks WebSocket: send Upgrade: websocket";
        return 426;
    }
    if (!has_token(http_request_header(req, "connection"), "upgrade")) {
        *msg = "a WebSocket handshake needs Connection: Upgrade";
        return 400;
    }
    const char *v = http_request_header(req, "sec-websocket-version");
    if (!v || strcmp(v, "13") != 0) {
        *msg = "unsupported Sec-WebSocket-Version (13 is supported)";
        return 426;
    }
    if (!key_valid(http_request_header(req, "sec-websocket-key"))) {
        *msg = "Sec-WebSocket-Key must be 16 bytes in base64";
        return 400;
    }
    *msg = NULL;
    return 0;
}

void http_ws_config_defaults(struct http_ws_config *cfg)
{
    cfg->message_bytes_max = 64u << 10;
    cfg->queue_bytes_max = 256u << 10;
}

static void ws_free(struct http_ws *ws)
{
    pthread_mutex_destroy(&ws->mu);
    free(ws->buf);
    free(ws->msg);
    free(ws);
}

static void ws_unref(struct http_ws *ws)
{
    pthread_mutex_lock(&ws->mu);
    bool last = --ws->refs == 0;
    pthread_mutex_unlock(&ws->mu);
    if (last) ws_free(ws);
}

/* With mu held: makes sure the worker looks at the queue (pushed under the lock, as in
 * http_stream.c: the worker never takes a ws lock while holding its inbox lock). */
static void ws_post_locked(struct http_ws *ws)
{
    if (ws->posted || ws->aborted) return;
    ws->posted = true;
    ws->refs++;
    http_worker_push(ws->w, &ws->qn);
}

int http_ws_accept(struct http_exchange *ex, const struct http_ws_config *cfg,
                   const char *extra_headers, struct http_ws **out)
{
    TALLY_ASSERT(ex && out);
    *out = NULL;
    const char *key = http_request_header(&ex->req, "sec-websocket-key");
    TALLY_ASSERT(key_valid(key)); /* http_ws_check first */
    char accept[29];
    http_ws_accept_key(key, accept);
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr,
                     "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s",
                     accept, extra_headers ? extra_headers : "");
    struct http_ws *ws = calloc(1, sizeof *ws);
    if (!ws || n < 0 || (size_t)n >= sizeof hdr) {
        free(ws);
        http_respond_error(ex, 503, "out of memory");
        return TALLY_ENOMEM;
    }
    struct http_ws_config def;
    if (!cfg) {
        http_ws_config_defaults(&def);
        cfg = &def;
    }
    ws->qn.kind = Q_WS;
    ws->w = ex->w;
    ws->queue_max = cfg->queue_bytes_max;
    ws->msg_max = cfg->message_bytes_max;
    ws->refs = 2; /* the producer and the exchange (later the connection) */
    pthread_mutex_init(&ws->mu, NULL);
    TALLY_ASSERT(atomic_exchange(&ex->completed, 1) == 0); /* completed twice */
    if (!http_ex_store(ex, 101, NULL, hdr, (size_t)n)) {
        ws_free(ws);
        http_worker_push(ex->w, &ex->qn); /* a 503 was stored */
        return TALLY_ENOMEM;
    }
    ex->ws = ws;
    *out = ws;
    http_worker_push(ex->w, &ex->qn); /* the worker writes the 101 in order, then switches */
    return TALLY_OK;
}

/* ---- producer side (any thread) ---- */

static size_t frame_head(uint8_t *h, uint8_t op, size_t len)
{
    h[0] = (uint8_t)(0x80 | op);
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[9 - i] = (uint8_t)((uint64_t)len >> (8 * i));
    return 10;
}

int http_ws_send(struct http_ws *ws, const char *text, size_t len)
{
    TALLY_ASSERT(ws && (len == 0 || text));
    uint8_t head[10];
    size_t hl = frame_head(head, OP_TEXT, len);
    int rc = TALLY_OK;
    pthread_mutex_lock(&ws->mu);
    if (ws->aborted || ws->overflow || ws->close_code) {
        rc = TALLY_ECLOSED;
    } else if ((ws->len - ws->off) + ws->out_pending + hl + len > ws->queue_max) {
        ws->overflow = true; /* the worker cuts the connection */
        ws_post_locked(ws);
        rc = TALLY_EFULL;
    } else {
        if (ws->off && ws->len + hl + len > ws->cap) {
            memmove(ws->buf, ws->buf + ws->off, ws->len - ws->off);
            ws->len -= ws->off;
            ws->off = 0;
        }
        if (ws->len + hl + len > ws->cap) {
            size_t cap = ws->cap ? ws->cap : 4096;
            while (cap < ws->len + hl + len)
                cap *= 2;
            char *p = realloc(ws->buf, cap);
            if (!p) rc = TALLY_ENOMEM;
            if (p) {
                ws->buf = p;
                ws->cap = cap;
            }
        }
        if (rc == TALLY_OK) {
            memcpy(ws->buf + ws->len, head, hl);
            memcpy(ws->buf + ws->len + hl, text, len);
            ws->len += hl + len;
            ws_post_locked(ws);
        }
    }
    pthread_mutex_unlock(&ws->mu);
    return rc;
}

bool http_ws_closed(struct http_ws *ws)
{
    pthread_mutex_lock(&ws->mu);
    bool c = ws->aborted || ws->overflow;
    pthread_mutex_unlock(&ws->mu);
    return c;
}

void http_ws_release(struct http_ws *ws, uint16_t close_code)
{
    if (!ws) return;
    pthread_mutex_lock(&ws->mu);
    if (close_code && !ws->close_code) {
        ws->close_code = close_code;
        ws_post_locked(ws);
    }
    bool last = --ws->refs == 0;
    pthread_mutex_unlock(&ws->mu);
    if (last) ws_free(ws);
}

/* ---- worker side ---- */

void http_ws_detach(struct http_ws *ws)
{
    pthread_mutex_lock(&ws->mu);
    ws->conn = NULL;
    ws->aborted = true;
    pthread_mutex_unlock(&ws->mu);
    ws_unref(ws);
}

void http_ws_attach(struct conn *c, struct http_ws *ws)
{
    c->ws = ws;
    ws->conn = c;
    c->state = C_WS;
}

void http_ws_wake(struct worker *w, struct qnode *n)
{
    (void)w;
    struct http_ws *ws = (struct http_ws *)n;
    pthread_mutex_lock(&ws->mu);
    ws->posted = false;
    pthread_mutex_unlock(&ws->mu);
    struct conn *c = ws->conn; /* worker thread: stable here */
    if (c && !c->dead) {
        c->busy++;
        http_conn_flush(c);
        http_conn_update(c);
        http_conn_release(c);
    }
    ws_unref(ws);
}

/* Queues a control frame (server frames are not masked). False when the connection died. */
static bool ws_control(struct conn *c, uint8_t op, const void *payload, size_t len)
{
    uint8_t head[10];
    size_t hl = frame_head(head, op, len);
    if (!http_conn_emit_out(c, (const char *)head, hl)) return false;
    return len == 0 || http_conn_emit_out(c, payload, len);
}

/* Sends a close frame with `code` (once) and ends the connection once it is written. */
static void ws_close(struct conn *c, uint16_t code)
{
    struct http_ws *ws = c->ws;
    if (ws->close_sent) return;
    ws->close_sent = true;
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    if (!ws_control(c, OP_CLOSE, p, code ? 2 : 0)) return;
    c->closing = true;
    c->no_more = true;
    c->in_off = c->in_len = 0;
}

void http_ws_stop(struct conn *c)
{
    ws_close(c, 1001); /* going away */
}

void http_ws_pump(struct conn *c)
{
    struct http_ws *ws = c->ws;
    pthread_mutex_lock(&ws->mu);
    bool overflow = ws->overflow;
    uint16_t code = ws->close_code;
    if (!overflow && !ws->close_sent && ws->len > ws->off) {
        if (!http_conn_emit_out(c, ws->buf + ws->off, ws->len - ws->off)) {
            pthread_mutex_unlock(&ws->mu); /* killed: detached, aborted */
            return;
        }
        ws->off = ws->len = 0;
        if (ws->cap > WS_KEEP_BYTES) {
            free(ws->buf);
            ws->buf = NULL;
            ws->cap = 0;
        }
    }
    pthread_mutex_unlock(&ws->mu);
    if (overflow) {
        STAT_ADD(c->w->srv, st_overflow, 1);
        http_conn_kill(c); /* a slow consumer: cut, never buffered without bound */
        return;
    }
    if (code) ws_close(c, code);
}

void http_ws_note_output(struct conn *c)
{
    struct http_ws *ws = c->ws;
    pthread_mutex_lock(&ws->mu);
    ws->out_pending = c->out_len - c->out_off;
    pthread_mutex_unlock(&ws->mu);
}

static bool close_code_valid(unsigned code)
{
    if (code >= 3000 && code <= 4999) return true;
    return code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006;
}

/* A complete control frame. False when the connection is closing or dead. */
static bool ws_on_control(struct conn *c, uint8_t op, const uint8_t *p, size_t n)
{
    if (op == OP_PING) {
        if (c->out_len - c->out_off + n > c->ws->queue_max) {
            STAT_ADD(c->w->srv, st_overflow, 1);
            http_conn_kill(c); /* pings whose pongs are never read */
            return false;
        }
        return ws_control(c, OP_PONG, p, n);
    }
    if (op == OP_PONG) return true;
    /* close */
    uint16_t code = 1000;
    if (n == 1) {
        code = 1002;
    } else if (n >= 2) {
        unsigned got = (unsigned)p[0] << 8 | p[1];
        if (!close_code_valid(got))
            code = 1002;
        else if (!http_utf8_valid((const char *)p + 2, n - 2))
            code = 1007;
        else
            code = (uint16_t)got;
    }
    ws_close(c, code);
    return false;
}

/* A complete data message: validated, then discarded (this server only pushes). */
static bool ws_on_message(struct conn *c)
{
    struct http_ws *ws = c->ws;
    bool ok = ws->msg_op != OP_TEXT || http_utf8_valid(ws->msg, ws->msg_len);
    ws->msg_op = 0;
    ws->msg_len = 0;
    if (ws->msg_cap > WS_KEEP_BYTES) {
        free(ws->msg);
        ws->msg = NULL;
        ws->msg_cap = 0;
    }
    if (!ok) {
        ws_close(c, 1007);
        return false;
    }
    return true;
}

/* Parses a frame head at p[0..avail); returns its length, 0 when incomplete, -1 after closing
 * the connection for a bad frame. */
static int ws_head(struct conn *c, const uint8_t *p, size_t avail)
{
    struct http_ws *ws = c->ws;
    if (avail < 2) return 0;
    bool fin = p[0] & 0x80, masked = p[1] & 0x80;
    uint8_t op = p[0] & 0x0F;
    uint64_t len = p[1] & 0x7F;
    size_t hl = 2;
    if (len == 126) {
        if (avail < 4) return 0;
        len = (uint64_t)p[2] << 8 | p[3];
        hl = 4;
    } else if (len == 127) {
        if (avail < 10) return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        hl = 10;
    }
    if (masked && avail < hl + 4) return 0; /* (an unmasked frame fails below at once) */
    uint16_t err = 0;
    bool control = op >= 8;
    if ((p[0] & 0x70) || !masked || (op > OP_BINARY && op < OP_CLOSE) || op > OP_PONG)
        err = 1002;
    else if (control && (!fin || len > 125))
        err = 1002;
    else if (op == OP_CONT && !ws->msg_op)
        err = 1002;
    else if ((op == OP_TEXT || op == OP_BINARY) && ws->msg_op)
        err = 1002;
    else if (len >> 63)
        err = 1002;
    else if (!control && len > ws->msg_max - ws->msg_len)
        err = 1009;
    if (err) {
        ws_close(c, err);
        return -1;
    }
    memcpy(ws->mask, p + hl, 4);
    ws->mask_pos = 0;
    ws->frame_op = op;
    ws->frame_fin = fin;
    ws->frame_left = len;
    ws->in_frame = true;
    if (op == OP_TEXT || op == OP_BINARY) ws->msg_op = op;
    return (int)(hl + 4);
}

static bool msg_reserve(struct http_ws *ws, size_t n)
{
    if (ws->msg_len + n <= ws->msg_cap) return true;
    size_t cap = ws->msg_cap ? ws->msg_cap : 1024;
    while (cap < ws->msg_len + n)
        cap *= 2;
    char *p = realloc(ws->msg, cap);
    if (!p) return false;
    ws->msg = p;
    ws->msg_cap = cap;
    return true;
}

void http_ws_input(struct conn *c)
{
    struct http_ws *ws = c->ws;
    while (!c->dead && !ws->close_sent && c->in_len > c->in_off) {
        const uint8_t *p = (const uint8_t *)c->in + c->in_off;
        size_t avail = c->in_len - c->in_off;
        if (!ws->in_frame) {
            int hl = ws_head(c, p, avail);
            if (hl <= 0) return;
            c->in_off += (size_t)hl;
            if (ws->frame_left > 0) continue;
        } else if (ws->frame_op >= 8) {
            if (avail < ws->frame_left) return; /* control frames are read whole */
        }
        p = (const uint8_t *)c->in + c->in_off;
        avail = c->in_len - c->in_off;
        if (ws->frame_op >= 8) {
            uint8_t pay[125];
            size_t n = (size_t)ws->frame_left;
            for (size_t i = 0; i < n; i++)
                pay[i] = p[i] ^ ws->mask[i & 3];
            c->in_off += n;
            ws->in_frame = false;
            if (!ws_on_control(c, ws->frame_op, pay, n)) return;
            continue;
        }
        size_t n = avail < ws->frame_left ? avail : (size_t)ws->frame_left;
        if (!msg_reserve(ws, n)) {
            http_conn_kill(c);
            return;
        }
        char *d = ws->msg + ws->msg_len;
        for (size_t i = 0; i < n; i++)
            d[i] = (char)(p[i] ^ ws->mask[(ws->mask_pos + i) & 3]);
        ws->mask_pos = (unsigned)((ws->mask_pos + n) & 3);
        ws->msg_len += n;
        ws->frame_left -= n;
        c->in_off += n;
        if (ws->frame_left) return;
        ws->in_frame = false;
        if (ws->frame_fin && !ws_on_message(c)) return;
    }
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
}
