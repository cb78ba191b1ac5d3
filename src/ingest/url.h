/*
 * url: the URL derivations ingest and rebuild share: parse an absolute URL into scheme, host,
 * port, path and query; look up query parameters; extract UTM parameters; take a referrer's
 * host; decide whether a host may send events for a site.
 *
 * ACCEPTED URLS (url_parse; url_parse_any for referrers allows any scheme)
 *     scheme "://" [userinfo "@"] host [":" port] [path] ["?" query] ["#" fragment]
 *  - scheme: http or https (any case) for url_parse; letters, digits, "+-." starting with a
 *    letter for url_parse_any.
 *  - host: a registered name of ASCII letters, digits, "-", "_", "." and UTF-8 bytes (IDNs as
 *    browsers send them), or an IP literal in brackets ("[::1]", stored without brackets).
 *    Stored lowercased (ASCII only) with one trailing dot removed; empty hosts are rejected.
 *  - port: decimal 0..65535; absent (or empty) means 80 for http, 443 for https, 0 otherwise.
 *  - path: as given (percent-encoding is kept, nothing is decoded), "/" when empty.
 *  - the whole URL: valid UTF-8 without control characters, spaces or DEL, at most
 *    URL_BYTES_MAX bytes; userinfo is skipped (never stored separately).
 * Anything else is rejected with TALLY_EINVAL. Parsing allocates nothing: the url struct points
 * into the input except for host, which is a lowercased copy.
 *
 * QUERY VALUES are percent-decoded ("+" is a space). When decoding yields invalid UTF-8 (or
 * a NUL), the raw undecoded value is returned instead, so results are always valid text.
 * Values longer than the caller's buffer are cut at a UTF-8 boundary.
 *
 * HOST RULE (url_host_allowed): with no configured hosts, a site accepts events from its own
 * name and every subdomain of it, where a leading "www." of the site name is ignored (site
 * "www.example.com" accepts example.com and *.example.com). A configured entry "example.com"
 * matches example.com and its subdomains; "*.example.com" only the subdomains. Comparison is
 * case-insensitive; one trailing dot is ignored.
 *
 * All functions are pure and callable from any thread.
 */
#ifndef TALLY_INGEST_URL_H
#define TALLY_INGEST_URL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define URL_BYTES_MAX 8192
#define URL_HOST_BYTES_MAX 255
#define URL_UTM_BYTES_MAX 256

struct url {
    const char *scheme; /* as given, points into the input */
    size_t scheme_len;
    char host[URL_HOST_BYTES_MAX + 1]; /* lowercased, NUL-terminated */
    size_t host_len;
    uint16_t port;
    bool port_explicit;
    const char *path; /* into the input, or a static "/" */
    size_t path_len;
    const char *query; /* into the input, after '?', before '#'; NULL when there is no '?' */
    size_t query_len;
};

/* Parses an absolute http(s) URL s[0..len). 0 or TALLY_EINVAL. */
int url_parse(const char *s, size_t len, struct url *out);
/* Like url_parse, for any scheme with an authority ("android-app://com.example/"). */
int url_parse_any(const char *s, size_t len, struct url *out);

/* Finds the first parameter named key (compared after percent-decoding) in query[0..len) and
 * writes its decoded value (NUL-terminated, cut to fit cap - 1 bytes at a UTF-8 boundary) to
 * out. Returns true when found (a parameter without "=" has an empty value). cap must be >= 1. */
bool url_query_get(const char *query, size_t len, const char *key, char *out, size_t cap,
                   size_t *out_len);

struct url_utm {
    char source[URL_UTM_BYTES_MAX + 1], medium[URL_UTM_BYTES_MAX + 1],
        campaign[URL_UTM_BYTES_MAX + 1], content[URL_UTM_BYTES_MAX + 1],
        term[URL_UTM_BYTES_MAX + 1];
    size_t source_len, medium_len, campaign_len, content_len, term_len; /* 0: absent/empty */
};

/* Extracts utm_source, utm_medium, utm_campaign, utm_content and utm_term from u's query. */
void url_utm_get(const struct url *u, struct url_utm *out);

/* host without a leading "www." (case-insensitive) when something follows it; *len updated. */
const char *url_host_strip_www(const char *host, size_t *len);

/* True when host (as url_parse produced it) may send events for site under the rule above.
 * allowed: allowed_count configured host entries (NUL-terminated), may be NULL when 0. */
bool url_host_allowed(const char *host, size_t host_len, const char *site, size_t site_len,
                      const char *const *allowed, size_t allowed_count);

/* The referrer's host, lowercased and without a leading "www.", into out (NUL-terminated).
 * Returns its length, or 0 when the referrer has no parseable host (empty, relative, junk).
 * cap must be > URL_HOST_BYTES_MAX. */
size_t url_referrer_host(const char *ref, size_t len, char *out, size_t cap);

#endif
