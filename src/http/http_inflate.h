/*
 * http_inflate: decodes gzip / deflate request bodies (Content-Encoding) with zlib, with a hard
 * cap on the decoded size so a small "zip bomb" cannot make the server allocate gigabytes.
 *
 * gzip: one or more concatenated gzip members (RFC 1952). deflate: the zlib format (RFC 1950)
 * as HTTP specifies, or raw deflate (RFC 1951), which some clients send by mistake; the two are
 * told apart by the zlib header check. Bytes after the end of the stream are an error.
 *
 * Threads: one struct http_inflate per thread (it keeps zlib state between calls to avoid
 * re-allocating the window for every request); it is not shared.
 */
#ifndef TALLY_HTTP_INFLATE_H
#define TALLY_HTTP_INFLATE_H

#include <stddef.h>

#include "http/http_parser.h"

struct http_inflate;

/* A new decoder; caller owns it. NULL on OOM. */
struct http_inflate *http_inflate_new(void);
void http_inflate_free(struct http_inflate *inf);

/*
 * Decodes in[0, in_len) with `coding` (GZIP or DEFLATE). On success returns 0 and a malloc'd,
 * NUL-terminated *out of *out_len bytes (caller frees). Errors: TALLY_ETOOBIG when the decoded
 * size would exceed out_bytes_max (answer 413), TALLY_ECORRUPT for invalid or truncated data
 * (400), TALLY_ENOMEM, TALLY_EINVAL for another coding.
 */
int http_inflate_body(struct http_inflate *inf, enum http_coding coding, const void *in,
                      size_t in_len, size_t out_bytes_max, char **out, size_t *out_len);

#endif
