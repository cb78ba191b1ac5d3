/*
 * http_parser: a strict HTTP/1.1 request-head parser and chunked-body decoder (RFC 9112).
 *
 * Style of picohttpparser: nothing is allocated, nothing in the input is modified, results are
 * pointers into the caller's buffer written into caller-owned structs. http_parse_request
 * returns the number of bytes of the head (> 0), -2 when the buffer holds an incomplete but so
 * far valid head, or -1 on error with an enum http_perr saying why; http_perr_status maps it to
 * the status to answer (400, 413, 414, 415, 417, 431, 501, 505) and http_perr_message to a
 * client-facing message. Every error closes the connection in the server.
 *
 * Strictness (each rule is a smuggling or desync risk when relaxed):
 *  - lines end in CRLF; a bare CR or a bare LF anywhere in the head is an error;
 *  - request line: token method, one SP, request-target of visible ASCII (no '#'), one SP,
 *    "HTTP/" DIGIT "." DIGIT; 1.0 and 1.1 accepted, other well-formed versions give 505;
 *  - methods GET HEAD POST PUT DELETE OPTIONS PATCH; other tokens give 501;
 *  - target forms: origin-form ("/..."), absolute-form ("http(s)://authority[/...]"),
 *    asterisk-form ("*", OPTIONS only); anything else 400;
 *  - header names are tokens directly followed by ':' (no space before the colon); values may
 *    hold HTAB, SP, visible ASCII and obs-text (0x80-0xFF), never NUL or other controls;
 *    leading/trailing SP/HTAB are trimmed; a line starting with SP/HTAB (obs-fold) is an error;
 *  - framing: Content-Length is 1*DIGIT (no sign, no list, no overflow) and may appear once
 *    (even two equal copies are refused); Transfer-Encoding must be exactly "chunked"
 *    (case-insensitive), once, never together with Content-Length, never in HTTP/1.0;
 *  - Host is required in HTTP/1.1 and may appear once;
 *  - Content-Encoding: identity, gzip, x-gzip or deflate (one value), else 415;
 *  - Expect: only "100-continue" (HTTP/1.1; ignored in 1.0), else 417;
 *  - empty lines (CRLF) before the request line are skipped (RFC 9112 2.2) and count towards
 *    the head size.
 * Limits: the head (including those leading CRLFs) may not exceed header_bytes_max (431), the
 * request-target url_bytes_max (414), the number of header lines header_count_max (431), and a
 * Content-Length body_bytes_max (413). Errors are reported as soon as the bytes seen prove
 * them, so feeding a head byte by byte gives -2 until the complete head or the first error.
 *
 * Chunked decoder: an incremental state machine (http_chunked). Each call consumes framing and
 * at most one run of data, and returns that run as a pointer into the input. Rules: chunk-size
 * is 1-16 hex digits; chunk extensions (";name[=value]" after optional SP/HTAB) are accepted and
 * ignored, at most HTTP_CHUNK_EXT_BYTES_MAX bytes in total per body; data must be followed by
 * CRLF; trailer fields are validated like header fields and dropped, at most
 * HTTP_TRAILER_BYTES_MAX bytes; the decoded size may not exceed body_bytes_max (413).
 *
 * Threads: all functions are pure (reentrant) and may be called from any thread.
 */
#ifndef TALLY_HTTP_PARSER_H
#define TALLY_HTTP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum http_method {
    HTTP_METHOD_NONE = 0,
    HTTP_GET,
    HTTP_HEAD,
    HTTP_POST,
    HTTP_PUT,
    HTTP_DELETE,
    HTTP_OPTIONS,
    HTTP_PATCH,
};
#define HTTP_METHOD_COUNT 8
#define HTTP_M(m) (1u << (m)) /* method bit for masks: HTTP_M(HTTP_GET) | HTTP_M(HTTP_POST) */

/* "GET", "HEAD", ...; "" for HTTP_METHOD_NONE. Static strings. */
const char *http_method_name(enum http_method m);

enum http_coding { HTTP_CODING_IDENTITY = 0, HTTP_CODING_GZIP, HTTP_CODING_DEFLATE };

enum http_perr {
    HTTP_PERR_NONE = 0,
    HTTP_PERR_METHOD_CHAR,         /* 400 */
    HTTP_PERR_METHOD_UNKNOWN,      /* 501 */
    HTTP_PERR_REQUEST_LINE,        /* 400 */
    HTTP_PERR_TARGET_CHAR,         /* 400 */
    HTTP_PERR_TARGET_FORM,         /* 400 */
    HTTP_PERR_TARGET_TOO_LONG,     /* 414 */
    HTTP_PERR_VERSION,             /* 400 */
    HTTP_PERR_VERSION_UNSUPPORTED, /* 505 */
    HTTP_PERR_BARE_CR,             /* 400 */
    HTTP_PERR_BARE_LF,             /* 400 */
    HTTP_PERR_OBS_FOLD,            /* 400 */
    HTTP_PERR_HEADER_NAME,         /* 400 */
    HTTP_PERR_HEADER_VALUE,        /* 400 */
    HTTP_PERR_HEADERS_TOO_MANY,    /* 431 */
    HTTP_PERR_HEAD_TOO_LARGE,      /* 431 */
    HTTP_PERR_HOST_MISSING,        /* 400 */
    HTTP_PERR_HOST_DUPLICATE,      /* 400 */
    HTTP_PERR_CL_INVALID,          /* 400 */
    HTTP_PERR_CL_DUPLICATE,        /* 400 */
    HTTP_PERR_TE_UNSUPPORTED,      /* 400 */
    HTTP_PERR_TE_DUPLICATE,        /* 400 */
    HTTP_PERR_TE_AND_CL,           /* 400 */
    HTTP_PERR_TE_HTTP10,           /* 400 */
    HTTP_PERR_BODY_TOO_LARGE,      /* 413 */
    HTTP_PERR_EXPECT,              /* 417 */
    HTTP_PERR_CODING,              /* 415 */
    HTTP_PERR_CHUNK_SIZE,          /* 400 */
    HTTP_PERR_CHUNK_SIZE_TOO_LONG, /* 400 */
    HTTP_PERR_CHUNK_EXT,           /* 400 */
    HTTP_PERR_CHUNK_EXT_TOO_LONG,  /* 400 */
    HTTP_PERR_CHUNK_CRLF,          /* 400 */
    HTTP_PERR_TRAILER,             /* 400 */
    HTTP_PERR_TRAILER_TOO_LARGE,   /* 431 */
    HTTP_PERR_COUNT
};

/* HTTP status to answer for an error (400 for unknown codes). */
int http_perr_status(enum http_perr e);
/* Static client-facing message, e.g. "duplicate Content-Length header". */
const char *http_perr_message(enum http_perr e);

struct http_header {
    const char *name; /* token, not NUL-terminated (points into the parsed buffer) */
    size_t name_len;
    const char *value; /* trimmed of SP/HTAB */
    size_t value_len;
};

struct http_parse_limits {
    size_t header_bytes_max; /* whole head, leading CRLFs included */
    size_t url_bytes_max;    /* request-target */
    size_t header_count_max; /* header lines */
    uint64_t body_bytes_max; /* largest Content-Length accepted */
};

/* Parsed head: pointers into the buffer given to http_parse_request. */
struct http_head {
    const char *method;
    size_t method_len;
    enum http_method method_id;
    const char *target; /* the raw request-target */
    size_t target_len;
    const char *path;  /* origin path inside target (not decoded); path_len 0 for "*" and for */
    size_t path_len;   /* an absolute-form target without a path (means "/") */
    const char *query; /* after '?', or NULL when the target has no '?' */
    size_t query_len;
    int version_minor; /* 0 or 1 */
    size_t headers_count;
    int64_t content_length; /* -1 when absent */
    bool chunked;
    bool keep_alive;      /* after this request (version default and Connection tokens) */
    bool expect_continue; /* HTTP/1.1 with "Expect: 100-continue" */
    enum http_coding content_coding;
};

/*
 * Parses the request head at the start of buf[0, len). Header fields go to headers[0, n), at
 * most min(headers_cap, lim->header_count_max). Returns the head length in bytes (through the
 * empty line), -2 when more bytes are needed, -1 on error with *err set. On success *head and
 * headers point into buf; on -2/-1 their contents are unspecified.
 */
int http_parse_request(const char *buf, size_t len, const struct http_parse_limits *lim,
                       struct http_head *head, struct http_header *headers, size_t headers_cap,
                       enum http_perr *err);

/*
 * Splits a request-target into path and query (see struct http_head). Returns 0, or -1 when it
 * is no accepted target form. Asterisk-form gives *path_len = 0 and *asterisk = true.
 */
int http_parse_target(const char *target, size_t len, const char **path, size_t *path_len,
                      const char **query, size_t *query_len, bool *asterisk);

/* Case-insensitive ASCII comparison of a[0, n) and the NUL-terminated b (whole length). */
bool http_token_eq(const char *a, size_t n, const char *b);

/* The first header named `name` (case-insensitive) or NULL. */
const struct http_header *http_header_find(const struct http_header *headers, size_t count,
                                           const char *name);

#define HTTP_CHUNK_SIZE_DIGITS_MAX 16
#define HTTP_CHUNK_EXT_BYTES_MAX 4096
#define HTTP_TRAILER_BYTES_MAX 8192

/* Chunked decoder state; zero it with http_chunked_init. Owned by the caller. */
struct http_chunked {
    int state;
    unsigned digits; /* hex digits of the current size line */
    uint64_t size;   /* size being parsed, then bytes left in the current chunk */
    uint64_t total;  /* decoded bytes so far */
    uint64_t body_bytes_max;
    size_t ext_bytes;     /* chunk-extension bytes so far (whole body) */
    size_t trailer_bytes; /* trailer-section bytes so far */
    enum http_perr err;   /* set when http_parse_chunked returned -1 */
};

void http_chunked_init(struct http_chunked *d, uint64_t body_bytes_max);

/*
 * Feeds buf[0, len). Returns the number of bytes consumed (0..len) or -1 on error (d->err).
 * *data and *data_len give the data run found in this call (inside buf; *data_len 0 when none): a
 * call consumes at most one run, so loop until the input is used up or http_chunked_done. Bytes
 * after the end of the chunked body (the next request) are never consumed.
 */
ssize_t http_parse_chunked(struct http_chunked *d, const char *buf, size_t len, const char **data,
                           size_t *data_len);
bool http_chunked_done(const struct http_chunked *d);

#endif
