/*
 * http_url: percent-decoding and query-string (application/x-www-form-urlencoded) lookup.
 *
 * Decoding rules: "%XX" (two hex digits, either case) is one byte; a '%' not followed by two hex
 * digits is an error (TALLY_EINVAL) rather than passed through, so two decoders never disagree
 * about the same input; with plus_is_space (query strings and form bodies) '+' is a space.
 * Decoded bytes may include NUL: callers that need C strings check the returned length.
 *
 * Pure functions: any thread; nothing is allocated; outputs are caller-owned buffers.
 */
#ifndef TALLY_HTTP_URL_H
#define TALLY_HTTP_URL_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Decodes in[0, len) into out (out_cap bytes, always NUL-terminated when out_cap > 0).
 * Returns 0 and *out_len, TALLY_EINVAL on a bad escape, TALLY_ETOOBIG when out is too small.
 * out may equal in (decoding in place never writes ahead of reading).
 */
int http_url_decode(const char *in, size_t len, char *out, size_t out_cap, size_t *out_len,
                    bool plus_is_space);

/*
 * Finds the first parameter whose decoded name equals `name` in a query string or form body
 * ("a=1&b=x%20y"; ';' is not a separator) and decodes its value into out. A parameter without
 * '=' has the empty value. Returns 0, TALLY_ENOENT when absent, TALLY_EINVAL on a bad escape in
 * the value, TALLY_ETOOBIG when out is too small. query may be NULL (no parameters).
 */
int http_url_param(const char *query, size_t query_len, const char *name, char *out, size_t out_cap,
                   size_t *out_len);

#endif
