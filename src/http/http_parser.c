/*
 * http_parser: see http_parser.h for the accepted grammar, limits and error rules.
 *
 * The head parser rescans from the start on every call (like picohttpparser); the server only
 * calls it again once a complete head may be present, so the rescanning cost stays linear.
 * Scanning is bounded by min(len, header_bytes_max): running out of bytes at the limit means
 * the head is too large (431), before it means "incomplete" (-2).
 */
#include "http/http_parser.h"

#include <string.h>

#define METHOD_BYTES_MAX 16

/* RFC 9110 tchar. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1,         ['&'] = 1,         ['\''] = 1,
    ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1,         ['^'] = 1,         ['_'] = 1,
    ['`'] = 1, ['|'] = 1, ['~'] = 1, ['0' ... '9'] = 1, ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1,
};

/* Field-value bytes: HTAB, SP, VCHAR, obs-text. */
static const unsigned char vchar[256] = {
    ['\t'] = 1,
    [0x20 ... 0x7e] = 1,
    [0x80 ... 0xff] = 1,
};

/* Request-target bytes: visible ASCII without '#'. */
static const unsigned char tgtchar[256] = {
    [0x21 ... 0x22] = 1,
    [0x24 ... 0x7e] = 1,
};

static const struct {
    int status;
    const char *message;
} perr_table[HTTP_PERR_COUNT] = {
    [HTTP_PERR_NONE] = {200, "no error"},
    [HTTP_PERR_METHOD_CHAR] = {400, "invalid character in method"},
    [HTTP_PERR_METHOD_UNKNOWN] = {501, "method not implemented"},
    [HTTP_PERR_REQUEST_LINE] = {400, "malformed request line"},
    [HTTP_PERR_TARGET_CHAR] = {400, "invalid character in request target"},
    [HTTP_PERR_TARGET_FORM] = {400, "unsupported request target form"},
    [HTTP_PERR_TARGET_TOO_LONG] = {414, "request target too long"},
    [HTTP_PERR_VERSION] = {400, "malformed HTTP version"},
    [HTTP_PERR_VERSION_UNSUPPORTED] = {505, "HTTP version not supported (use HTTP/1.1)"},
    [HTTP_PERR_BARE_CR] = {400, "bare CR in request head"},
    [HTTP_PERR_BARE_LF] = {400, "bare LF in request head (lines must end in CRLF)"},
    [HTTP_PERR_OBS_FOLD] = {400, "obsolete line folding in header field"},
    [HTTP_PERR_HEADER_NAME] = {400, "invalid character in header field name"},
    [HTTP_PERR_HEADER_VALUE] = {400, "invalid character in header field value"},
    [HTTP_PERR_HEADERS_TOO_MANY] = {431, "too many header fields"},
    [HTTP_PERR_HEAD_TOO_LARGE] = {431, "request head too large"},
    [HTTP_PERR_HOST_MISSING] = {400, "missing Host header"},
    [HTTP_PERR_HOST_DUPLICATE] = {400, "duplicate Host header"},
    [HTTP_PERR_CL_INVALID] = {400, "invalid Content-Length"},
    [HTTP_PERR_CL_DUPLICATE] = {400, "duplicate Content-Length header"},
    [HTTP_PERR_TE_UNSUPPORTED] = {400, "unsupported Transfer-Encoding (only chunked)"},
    [HTTP_PERR_TE_DUPLICATE] = {400, "duplicate Transfer-Encoding header"},
    [HTTP_PERR_TE_AND_CL] = {400, "both Transfer-Encoding and Content-Length"},
    [HTTP_PERR_TE_HTTP10] = {400, "Transfer-Encoding in an HTTP/1.0 request"},
    [HTTP_PERR_BODY_TOO_LARGE] = {413, "request body too large"},
    [HTTP_PERR_EXPECT] = {417, "unsupported expectation (only 100-continue)"},
    [HTTP_PERR_CODING] = {415, "unsupported Content-Encoding (identity, gzip, deflate)"},
    [HTTP_PERR_CHUNK_SIZE] = {400, "invalid chunk size"},
    [HTTP_PERR_CHUNK_SIZE_TOO_LONG] = {400, "chunk size too long"},
    [HTTP_PERR_CHUNK_EXT] = {400, "invalid chunk extension"},
    [HTTP_PERR_CHUNK_EXT_TOO_LONG] = {400, "chunk extensions too long"},
    [HTTP_PERR_CHUNK_CRLF] = {400, "missing CRLF in chunked body"},
    [HTTP_PERR_TRAILER] = {400, "invalid trailer field"},
    [HTTP_PERR_TRAILER_TOO_LARGE] = {431, "trailer section too large"},
};

int http_perr_status(enum http_perr e)
{
    if ((unsigned)e >= HTTP_PERR_COUNT || e == HTTP_PERR_NONE) return 400;
    return perr_table[e].status;
}

const char *http_perr_message(enum http_perr e)
{
    if ((unsigned)e >= HTTP_PERR_COUNT) return "bad request";
    return perr_table[e].message;
}

static const char *const method_names[HTTP_METHOD_COUNT] = {
    "", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
};

const char *http_method_name(enum http_method m)
{
    return (unsigned)m < HTTP_METHOD_COUNT ? method_names[m] : "";
}

static enum http_method method_lookup(const char *m, size_t n)
{
    /* Methods are case-sensitive (RFC 9110 9.1). */
    for (int i = 1; i < HTTP_METHOD_COUNT; i++)
        if (strlen(method_names[i]) == n && memcmp(method_names[i], m, n) == 0)
            return (enum http_method)i;
    return HTTP_METHOD_NONE;
}

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

bool http_token_eq(const char *a, size_t n, const char *b)
{
    size_t i = 0;
    for (; i < n; i++) {
        if (!b[i] || lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return false;
    }
    return b[i] == 0;
}

const struct http_header *http_header_find(const struct http_header *headers, size_t count,
                                           const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (http_token_eq(headers[i].name, headers[i].name_len, name)) return &headers[i];
    return NULL;
}

int http_parse_target(const char *t, size_t len, const char **path, size_t *path_len,
                      const char **query, size_t *query_len, bool *asterisk)
{
    *asterisk = false;
    *query = NULL;
    *query_len = 0;
    const char *end = t + len, *p;
    if (len == 1 && t[0] == '*') {
        *asterisk = true;
        *path = t;
        *path_len = 0;
        return 0;
    }
    if (len > 0 && t[0] == '/') {
        p = t;
    } else {
        size_t skip;
        if (len >= 7 && http_token_eq(t, 7, "http://"))
            skip = 7;
        else if (len >= 8 && http_token_eq(t, 8, "https://"))
            skip = 8;
        else
            return -1;
        const char *auth = t + skip;
        p = auth;
        while (p < end && *p != '/' && *p != '?')
            p++;
        if (p == auth) return -1; /* empty authority */
    }
    const char *q = memchr(p, '?', (size_t)(end - p));
    *path = p;
    *path_len = (size_t)((q ? q : end) - p);
    if (q) {
        *query = q + 1;
        *query_len = (size_t)(end - q - 1);
    }
    return 0;
}

/* Facts gathered from header fields while scanning. */
struct facts {
    bool host, te, te_bad, cl, close, keep, expect_continue, expect_other, coding_seen;
    bool coding_bad;
    int64_t cl_value;
    enum http_coding coding;
};

static enum http_perr parse_content_length(const char *v, size_t n, int64_t *out)
{
    if (n == 0 || n > 18) return HTTP_PERR_CL_INVALID; /* 18 digits cannot overflow int64 */
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return HTTP_PERR_CL_INVALID;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return HTTP_PERR_NONE;
}

static void parse_connection(struct facts *f, const char *v, size_t n)
{
    const char *end = v + n;
    while (v < end) {
        while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
            v++;
        const char *s = v;
        while (v < end && *v != ',')
            v++;
        const char *e = v;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (http_token_eq(s, (size_t)(e - s), "close")) f->close = true;
        if (http_token_eq(s, (size_t)(e - s), "keep-alive")) f->keep = true;
    }
}

static enum http_perr note_header(struct facts *f, const char *name, size_t nlen, const char *v,
                                  size_t vlen)
{
    switch (nlen) {
    case 4:
        if (http_token_eq(name, nlen, "host")) {
            if (f->host) return HTTP_PERR_HOST_DUPLICATE;
            f->host = true;
        }
        break;
    case 6:
        if (http_token_eq(name, nlen, "expect")) {
            if (http_token_eq(v, vlen, "100-continue"))
                f->expect_continue = true;
            else
                f->expect_other = true;
        }
        break;
    case 10:
        if (http_token_eq(name, nlen, "connection")) parse_connection(f, v, vlen);
        break;
    case 14:
        if (http_token_eq(name, nlen, "content-length")) {
            if (f->cl) return HTTP_PERR_CL_DUPLICATE;
            f->cl = true;
            return parse_content_length(v, vlen, &f->cl_value);
        }
        break;
    case 16:
        if (http_token_eq(name, nlen, "content-encoding")) {
            if (f->coding_seen) f->coding_bad = true; /* several codings: not supported */
            f->coding_seen = true;
            if (http_token_eq(v, vlen, "gzip") || http_token_eq(v, vlen, "x-gzip"))
                f->coding = HTTP_CODING_GZIP;
            else if (http_token_eq(v, vlen, "deflate"))
                f->coding = HTTP_CODING_DEFLATE;
            else if (!http_token_eq(v, vlen, "identity"))
                f->coding_bad = true;
        }
        break;
    case 17:
        if (http_token_eq(name, nlen, "transfer-encoding")) {
            if (f->te) return HTTP_PERR_TE_DUPLICATE;
            f->te = true;
            if (!http_token_eq(v, vlen, "chunked")) return HTTP_PERR_TE_UNSUPPORTED;
        }
        break;
    default: break;
    }
    return HTTP_PERR_NONE;
}

#define FAIL(e)                                                                                    \
    do {                                                                                           \
        *err = (e);                                                                                \
        return -1;                                                                                 \
    } while (0)
#define NEED(cond)                                                                                 \
    do {                                                                                           \
        if (!(cond)) goto incomplete;                                                              \
    } while (0)

/* Request line; returns the position after its CRLF, NULL for incomplete, or sets *err. */
static const char *parse_request_line(const char *p, const char *end,
                                      const struct http_parse_limits *lim, struct http_head *h,
                                      enum http_perr *err)
{
    const char *m = p;
    while (p < end && tchar[(unsigned char)*p] && p - m <= METHOD_BYTES_MAX)
        p++;
    if (p - m > METHOD_BYTES_MAX) {
        *err = HTTP_PERR_METHOD_UNKNOWN;
        return NULL;
    }
    if (p == end) return NULL;
    if (*p != ' ') {
        bool eol = p != m && (*p == '\r' || *p == '\n');
        *err = eol ? HTTP_PERR_REQUEST_LINE : HTTP_PERR_METHOD_CHAR;
        return NULL;
    }
    if (p == m) {
        *err = HTTP_PERR_REQUEST_LINE;
        return NULL;
    }
    h->method = m;
    h->method_len = (size_t)(p - m);
    h->method_id = method_lookup(m, h->method_len);
    if (h->method_id == HTTP_METHOD_NONE) {
        *err = HTTP_PERR_METHOD_UNKNOWN;
        return NULL;
    }
    p++;

    const char *t = p;
    const char *tend = (size_t)(end - t) > lim->url_bytes_max ? t + lim->url_bytes_max + 1 : end;
    while (p < tend && tgtchar[(unsigned char)*p])
        p++;
    if ((size_t)(p - t) > lim->url_bytes_max) {
        *err = HTTP_PERR_TARGET_TOO_LONG;
        return NULL;
    }
    if (p == end) return NULL;
    if (*p != ' ') {
        *err = (*p == '\r' || *p == '\n') ? HTTP_PERR_REQUEST_LINE : HTTP_PERR_TARGET_CHAR;
        return NULL;
    }
    if (p == t) {
        *err = HTTP_PERR_REQUEST_LINE; /* two spaces: empty target */
        return NULL;
    }
    h->target = t;
    h->target_len = (size_t)(p - t);
    bool asterisk;
    if (http_parse_target(t, h->target_len, &h->path, &h->path_len, &h->query, &h->query_len,
                          &asterisk) != 0 ||
        (asterisk && h->method_id != HTTP_OPTIONS)) {
        *err = HTTP_PERR_TARGET_FORM;
        return NULL;
    }
    p++;

    static const char proto[] = "HTTP/";
    for (int i = 0; i < 8; i++) {
        if (p + i == end) return NULL;
        char c = p[i];
        bool ok = i < 5 ? c == proto[i] : i == 6 ? c == '.' : (c >= '0' && c <= '9');
        if (!ok) {
            *err = HTTP_PERR_VERSION;
            return NULL;
        }
    }
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1')) {
        *err = HTTP_PERR_VERSION_UNSUPPORTED;
        return NULL;
    }
    h->version_minor = p[7] - '0';
    p += 8;
    if (p == end) return NULL;
    if (*p != '\r') {
        *err = *p == '\n' ? HTTP_PERR_BARE_LF : HTTP_PERR_REQUEST_LINE;
        return NULL;
    }
    if (p + 1 == end) return NULL;
    if (p[1] != '\n') {
        *err = HTTP_PERR_BARE_CR;
        return NULL;
    }
    return p + 2;
}

static enum http_perr finish_head(struct http_head *h, const struct facts *f,
                                  const struct http_parse_limits *lim)
{
    if (h->version_minor == 1 && !f->host) return HTTP_PERR_HOST_MISSING;
    if (f->te && f->cl) return HTTP_PERR_TE_AND_CL;
    if (f->te && h->version_minor == 0) return HTTP_PERR_TE_HTTP10;
    if (f->cl && (uint64_t)f->cl_value > lim->body_bytes_max) return HTTP_PERR_BODY_TOO_LARGE;
    if (h->version_minor == 1 && f->expect_other) return HTTP_PERR_EXPECT;
    if (f->coding_bad) return HTTP_PERR_CODING;
    h->content_length = f->cl ? f->cl_value : -1;
    h->chunked = f->te;
    h->expect_continue = h->version_minor == 1 && f->expect_continue;
    h->content_coding = f->coding;
    h->keep_alive = h->version_minor == 1 ? !f->close : (f->keep && !f->close);
    return HTTP_PERR_NONE;
}

int http_parse_request(const char *buf, size_t len, const struct http_parse_limits *lim,
                       struct http_head *h, struct http_header *headers, size_t headers_cap,
                       enum http_perr *err)
{
    *err = HTTP_PERR_NONE;
    const char *p = buf;
    const char *end = buf + (len < lim->header_bytes_max ? len : lim->header_bytes_max);
    size_t cap = headers_cap < lim->header_count_max ? headers_cap : lim->header_count_max;
    struct facts f = {.coding = HTTP_CODING_IDENTITY};
    h->headers_count = 0;

    /* Empty lines before the request line. */
    for (;;) {
        NEED(p < end);
        if (*p == '\n') FAIL(HTTP_PERR_BARE_LF);
        if (*p != '\r') break;
        NEED(p + 1 < end);
        if (p[1] != '\n') FAIL(HTTP_PERR_BARE_CR);
        p += 2;
    }

    const char *q = parse_request_line(p, end, lim, h, err);
    if (!q) {
        if (*err != HTTP_PERR_NONE) return -1;
        goto incomplete;
    }
    p = q;

    size_t n = 0;
    for (;;) {
        NEED(p < end);
        char c = *p;
        if (c == '\r') {
            NEED(p + 1 < end);
            if (p[1] != '\n') FAIL(HTTP_PERR_BARE_CR);
            p += 2;
            break;
        }
        if (c == '\n') FAIL(HTTP_PERR_BARE_LF);
        if (c == ' ' || c == '\t') FAIL(HTTP_PERR_OBS_FOLD);
        if (n == cap) FAIL(HTTP_PERR_HEADERS_TOO_MANY);

        const char *name = p;
        while (p < end && tchar[(unsigned char)*p])
            p++;
        NEED(p < end);
        if (*p != ':' || p == name) FAIL(HTTP_PERR_HEADER_NAME);
        size_t nlen = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *v = p;
        while (p < end && vchar[(unsigned char)*p])
            p++;
        NEED(p < end);
        if (*p != '\r') FAIL(*p == '\n' ? HTTP_PERR_BARE_LF : HTTP_PERR_HEADER_VALUE);
        NEED(p + 1 < end);
        if (p[1] != '\n') FAIL(HTTP_PERR_BARE_CR);
        const char *ve = p;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        p += 2;

        headers[n].name = name;
        headers[n].name_len = nlen;
        headers[n].value = v;
        headers[n].value_len = (size_t)(ve - v);
        n++;
        enum http_perr e = note_header(&f, name, nlen, v, (size_t)(ve - v));
        if (e != HTTP_PERR_NONE) FAIL(e);
    }
    h->headers_count = n;
    enum http_perr e = finish_head(h, &f, lim);
    if (e != HTTP_PERR_NONE) FAIL(e);
    return (int)(p - buf);

incomplete:
    if (len >= lim->header_bytes_max) FAIL(HTTP_PERR_HEAD_TOO_LARGE);
    return -2;
}

/* ---- chunked decoder ---- */

enum {
    CH_SIZE = 0, /* hex digits */
    CH_EXT_WS,   /* SP/HTAB after the digits: only more BWS or ';' may follow */
    CH_EXT,      /* inside chunk extensions, until CR */
    CH_SIZE_LF,  /* LF ending the size line */
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER, /* start of a trailer line (or the final CRLF) */
    CH_TR_NAME,
    CH_TR_VALUE,
    CH_TR_LF,
    CH_END_LF,
    CH_DONE,
};

void http_chunked_init(struct http_chunked *d, uint64_t body_bytes_max)
{
    memset(d, 0, sizeof *d);
    d->state = CH_SIZE;
    d->body_bytes_max = body_bytes_max;
}

bool http_chunked_done(const struct http_chunked *d)
{
    return d->state == CH_DONE;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

#define CFAIL(e)                                                                                   \
    do {                                                                                           \
        d->err = (e);                                                                              \
        return -1;                                                                                 \
    } while (0)

ssize_t http_parse_chunked(struct http_chunked *d, const char *buf, size_t len, const char **data,
                           size_t *data_len)
{
    const char *p = buf, *end = buf + len;
    *data = NULL;
    *data_len = 0;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        switch (d->state) {
        case CH_SIZE: {
            int h = hexval(c);
            if (h >= 0) {
                if (++d->digits > HTTP_CHUNK_SIZE_DIGITS_MAX) CFAIL(HTTP_PERR_CHUNK_SIZE_TOO_LONG);
                d->size = (d->size << 4) | (uint64_t)h;
                p++;
                break;
            }
            if (d->digits == 0) CFAIL(HTTP_PERR_CHUNK_SIZE);
            /* Checked once the size is complete, so an over-long size line is a 400. */
            if (d->size > d->body_bytes_max - d->total) CFAIL(HTTP_PERR_BODY_TOO_LARGE);
            if (c == '\r')
                d->state = CH_SIZE_LF;
            else if (c == ';')
                d->state = CH_EXT;
            else if (c == ' ' || c == '\t')
                d->state = CH_EXT_WS;
            else
                CFAIL(HTTP_PERR_CHUNK_SIZE);
            p++;
            break;
        }
        case CH_EXT_WS:
            if (c == ';')
                d->state = CH_EXT;
            else if (c != ' ' && c != '\t')
                CFAIL(HTTP_PERR_CHUNK_EXT);
            if (++d->ext_bytes > HTTP_CHUNK_EXT_BYTES_MAX) CFAIL(HTTP_PERR_CHUNK_EXT_TOO_LONG);
            p++;
            break;
        case CH_EXT:
            if (c == '\r') {
                d->state = CH_SIZE_LF;
            } else {
                if (!vchar[c]) CFAIL(HTTP_PERR_CHUNK_EXT);
                if (++d->ext_bytes > HTTP_CHUNK_EXT_BYTES_MAX) CFAIL(HTTP_PERR_CHUNK_EXT_TOO_LONG);
            }
            p++;
            break;
        case CH_SIZE_LF:
            if (c != '\n') CFAIL(HTTP_PERR_CHUNK_CRLF);
            p++;
            d->digits = 0;
            d->state = d->size ? CH_DATA : CH_TRAILER;
            break;
        case CH_DATA: {
            size_t avail = (size_t)(end - p);
            size_t n = d->size < avail ? (size_t)d->size : avail;
            *data = p;
            *data_len = n;
            d->size -= n;
            d->total += n;
            p += n;
            if (d->size == 0) d->state = CH_DATA_CR;
            return p - buf;
        }
        case CH_DATA_CR:
            if (c != '\r') CFAIL(HTTP_PERR_CHUNK_CRLF);
            d->state = CH_DATA_LF;
            p++;
            break;
        case CH_DATA_LF:
            if (c != '\n') CFAIL(HTTP_PERR_CHUNK_CRLF);
            d->state = CH_SIZE;
            p++;
            break;
        case CH_TRAILER:
        case CH_TR_NAME:
        case CH_TR_VALUE:
        case CH_TR_LF:
            if (++d->trailer_bytes > HTTP_TRAILER_BYTES_MAX) CFAIL(HTTP_PERR_TRAILER_TOO_LARGE);
            if (d->state == CH_TRAILER) {
                if (c == '\r')
                    d->state = CH_END_LF;
                else if (tchar[c])
                    d->state = CH_TR_NAME;
                else
                    CFAIL(HTTP_PERR_TRAILER);
            } else if (d->state == CH_TR_NAME) {
                if (c == ':')
                    d->state = CH_TR_VALUE;
                else if (!tchar[c])
                    CFAIL(HTTP_PERR_TRAILER);
            } else if (d->state == CH_TR_VALUE) {
                if (c == '\r')
                    d->state = CH_TR_LF;
                else if (!vchar[c])
                    CFAIL(HTTP_PERR_TRAILER);
            } else {
                if (c != '\n') CFAIL(HTTP_PERR_TRAILER);
                d->state = CH_TRAILER;
            }
            p++;
            break;
        case CH_END_LF:
            if (c != '\n') CFAIL(HTTP_PERR_CHUNK_CRLF);
            d->state = CH_DONE;
            return p + 1 - buf;
        case CH_DONE:
        default: return p - buf;
        }
    }
    return p - buf;
}
