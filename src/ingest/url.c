#include "ingest/url.h"

#include <string.h>

#include "ingest/event.h"
#include "tally/error.h"

static bool is_alpha(unsigned char c)
{
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(unsigned char c)
{
    return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

static unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

static bool ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return false;
    return true;
}

/* Registered-name host bytes: letters, digits, "-", "_", "." and UTF-8 (validated earlier). */
static bool host_byte(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || c == '-' || c == '_' || c == '.' || c >= 0x80;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* No byte <= 0x20 (controls, space), no DEL, and valid UTF-8. Eight bytes at a time while the
 * text is printable ASCII, the common case: a word passes when no byte is below 0x21, equal to
 * 0x7f or has its high bit set (exact, not heuristic: each test is the classic "has a byte
 * less than n" / "has a zero byte" word trick, which is exact as a yes/no answer). */
static bool url_bytes_ok(const char *s, size_t len)
{
    size_t i = 0;
    bool ascii = true;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        uint64_t below = (w - ONES * 0x21) & ~w & HIGHS;
        uint64_t x = w ^ (ONES * 0x7f);
        uint64_t del = (x - ONES) & ~x & HIGHS;
        if (below | del | (w & HIGHS)) break;
    }
    for (; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f) return false;
        if (c >= 0x80) ascii = false;
    }
    return ascii || event_text_valid(s, len);
}

static int parse(const char *s, size_t len, struct url *out, bool any_scheme)
{
    if (len == 0 || len > URL_BYTES_MAX) return TALLY_EINVAL;
    if (!url_bytes_ok(s, len)) return TALLY_EINVAL;

    /* scheme */
    size_t i = 0;
    if (!is_alpha((unsigned char)s[0])) return TALLY_EINVAL;
    while (i < len && (is_alpha((unsigned char)s[i]) || is_digit((unsigned char)s[i]) ||
                       s[i] == '+' || s[i] == '-' || s[i] == '.'))
        i++;
    if (len - i < 3 || s[i] != ':' || s[i + 1] != '/' || s[i + 2] != '/') return TALLY_EINVAL;
    out->scheme = s;
    out->scheme_len = i;
    uint16_t default_port = 0;
    if (i == 4 && ieq(s, "http", 4)) {
        default_port = 80;
    } else if (i == 5 && ieq(s, "https", 5)) {
        default_port = 443;
    } else if (!any_scheme) {
        return TALLY_EINVAL;
    }
    i += 3;

    /* authority: up to the first '/', '?' or '#' */
    size_t auth = i, auth_end = i;
    while (auth_end < len && s[auth_end] != '/' && s[auth_end] != '?' && s[auth_end] != '#')
        auth_end++;
    size_t h = auth;
    for (size_t k = auth; k < auth_end; k++)
        if (s[k] == '@') h = k + 1; /* userinfo ends at the last '@' */

    size_t host_start, host_end, port_at;
    if (h < auth_end && s[h] == '[') {
        size_t k = h + 1;
        while (k < auth_end && (is_hex((unsigned char)s[k]) || s[k] == ':' || s[k] == '.'))
            k++;
        if (k >= auth_end || s[k] != ']' || k == h + 1) return TALLY_EINVAL;
        host_start = h + 1;
        host_end = k;
        port_at = k + 1;
        if (port_at < auth_end && s[port_at] != ':') return TALLY_EINVAL;
    } else {
        size_t k = h;
        while (k < auth_end && host_byte((unsigned char)s[k]))
            k++;
        if (k < auth_end && s[k] != ':') return TALLY_EINVAL;
        host_start = h;
        host_end = k;
        port_at = k;
        if (host_end > host_start && s[host_end - 1] == '.') host_end--; /* "example.com." */
        if (host_end == host_start || s[host_start] == '.') return TALLY_EINVAL;
        for (size_t j = host_start + 1; j < host_end; j++)
            if (s[j] == '.' && s[j - 1] == '.') return TALLY_EINVAL;
    }
    size_t host_len = host_end - host_start;
    if (host_len > URL_HOST_BYTES_MAX) return TALLY_EINVAL;
    for (size_t j = 0; j < host_len; j++)
        out->host[j] = (char)lower((unsigned char)s[host_start + j]);
    out->host[host_len] = 0;
    out->host_len = host_len;

    out->port = default_port;
    out->port_explicit = false;
    if (port_at < auth_end) { /* s[port_at] == ':' */
        uint32_t port = 0;
        size_t k = port_at + 1;
        if (auth_end - k > 5) return TALLY_EINVAL;
        for (; k < auth_end; k++) {
            if (!is_digit((unsigned char)s[k])) return TALLY_EINVAL;
            port = port * 10 + (uint32_t)(s[k] - '0');
        }
        if (port > 65535) return TALLY_EINVAL;
        if (auth_end > port_at + 1) {
            out->port = (uint16_t)port;
            out->port_explicit = true;
        }
    }

    /* path, query; the fragment is ignored */
    const char *hash = memchr(s + auth_end, '#', len - auth_end);
    size_t end = hash ? (size_t)(hash - s) : len;
    const char *qm = memchr(s + auth_end, '?', end - auth_end);
    size_t p = auth_end, q = qm ? (size_t)(qm - s) : end;
    if (q == p) {
        out->path = "/";
        out->path_len = 1;
    } else {
        out->path = s + p;
        out->path_len = q - p;
    }
    out->query = qm ? qm + 1 : NULL;
    out->query_len = qm ? end - q - 1 : 0;
    return TALLY_OK;
}

int url_parse(const char *s, size_t len, struct url *out)
{
    return parse(s, len, out, false);
}

int url_parse_any(const char *s, size_t len, struct url *out)
{
    return parse(s, len, out, true);
}

/* ---- query --------------------------------------------------------------------------------- */

static int hexval(unsigned char c)
{
    if (is_digit(c)) return c - '0';
    return (c | 0x20) - 'a' + 10;
}

/* Percent-decodes src[0..n) ("+" is a space) into dst, writing at most cap bytes. Returns the
 * number written; *truncated says whether more would have followed. */
static size_t pct_decode(const char *src, size_t n, char *dst, size_t cap, bool *truncated)
{
    size_t o = 0;
    *truncated = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%' && n - i > 2 && is_hex((unsigned char)src[i + 1]) &&
                   is_hex((unsigned char)src[i + 2])) {
            c = (unsigned char)(hexval((unsigned char)src[i + 1]) * 16 +
                                hexval((unsigned char)src[i + 2]));
            i += 2;
        }
        if (o == cap) {
            *truncated = true;
            break;
        }
        dst[o++] = (char)c;
    }
    return o;
}

/* Drops an incomplete UTF-8 sequence at the end of s[0..n) (left by truncation). */
static size_t trim_partial(const char *s, size_t n)
{
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xc0) == 0x80) continue;
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

/* Decodes a parameter value into out[0..cap) under the rule in url.h. */
static size_t value_copy(const char *raw, size_t n, char *out, size_t cap)
{
    bool truncated;
    size_t o = pct_decode(raw, n, out, cap - 1, &truncated);
    if (truncated) o = trim_partial(out, o);
    if (!event_text_valid(out, o)) {
        if (event_text_valid(raw, n)) {
            o = event_text_prefix(raw, n, cap - 1);
            memcpy(out, raw, o);
        } else {
            o = 0;
        }
    }
    out[o] = 0;
    return o;
}

/* Calls visit(key, key_len, raw value, raw len, ctx) for each parameter in order; stops when
 * visit returns true. Keys are passed percent-decoded (cut at 64 bytes, enough for any key we
 * look up: a longer key is passed with key_len 65 so it matches nothing). */
typedef bool (*param_visit_fn)(const char *key, size_t key_len, const char *val, size_t val_len,
                               void *ctx);

static void query_each(const char *q, size_t len, param_visit_fn visit, void *ctx)
{
    size_t i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && q[end] != '&')
            end++;
        size_t eq = i;
        while (eq < end && q[eq] != '=')
            eq++;
        char key[65];
        bool truncated;
        size_t key_len = pct_decode(q + i, eq - i, key, 64, &truncated);
        if (truncated) key_len = 65;
        const char *val = eq < end ? q + eq + 1 : q + end;
        size_t val_len = eq < end ? end - eq - 1 : 0;
        if (end > i && visit(key, key_len, val, val_len, ctx)) return;
        i = end + 1;
    }
}

struct get_ctx {
    const char *key;
    size_t key_len;
    const char *val;
    size_t val_len;
    bool found;
};

static bool get_visit(const char *key, size_t key_len, const char *val, size_t val_len, void *p)
{
    struct get_ctx *g = p;
    if (key_len != g->key_len || memcmp(key, g->key, key_len) != 0) return false;
    g->val = val;
    g->val_len = val_len;
    g->found = true;
    return true;
}

bool url_query_get(const char *query, size_t len, const char *key, char *out, size_t cap,
                   size_t *out_len)
{
    struct get_ctx g = {key, strlen(key), NULL, 0, false};
    if (query) query_each(query, len, get_visit, &g);
    size_t n = g.found ? value_copy(g.val, g.val_len, out, cap) : 0;
    if (!g.found) out[0] = 0;
    if (out_len) *out_len = n;
    return g.found;
}

struct utm_ctx {
    struct url_utm *u;
    bool seen[5];
};

static bool utm_visit(const char *key, size_t key_len, const char *val, size_t val_len, void *p)
{
    static const char *const names[5] = {"source", "medium", "campaign", "content", "term"};
    struct utm_ctx *c = p;
    if (key_len < 5 || memcmp(key, "utm_", 4) != 0) return false;
    char *const dst[5] = {c->u->source, c->u->medium, c->u->campaign, c->u->content, c->u->term};
    size_t *const dst_len[5] = {&c->u->source_len, &c->u->medium_len, &c->u->campaign_len,
                                &c->u->content_len, &c->u->term_len};
    for (int i = 0; i < 5; i++) {
        size_t n = strlen(names[i]);
        if (key_len - 4 != n || memcmp(key + 4, names[i], n) != 0) continue;
        if (!c->seen[i]) { /* the first occurrence wins */
            c->seen[i] = true;
            *dst_len[i] = value_copy(val, val_len, dst[i], URL_UTM_BYTES_MAX + 1);
        }
        break;
    }
    return false;
}

void url_utm_get(const struct url *u, struct url_utm *out)
{
    struct utm_ctx c = {out, {false}};
    memset(out, 0, sizeof *out);
    if (u->query) query_each(u->query, u->query_len, utm_visit, &c);
}

/* ---- hosts --------------------------------------------------------------------------------- */

const char *url_host_strip_www(const char *host, size_t *len)
{
    if (*len > 4 && ieq(host, "www.", 4)) {
        *len -= 4;
        return host + 4;
    }
    return host;
}

static size_t strip_dot(const char *s, size_t n)
{
    return (n > 0 && s[n - 1] == '.') ? n - 1 : n;
}

/* host equals dom, or (when subs) is a subdomain of it; subs_only excludes equality. */
static bool domain_match(const char *host, size_t hl, const char *dom, size_t dl, bool subs_only)
{
    if (dl == 0) return false;
    if (!subs_only && hl == dl && ieq(host, dom, dl)) return true;
    return hl > dl + 1 && host[hl - dl - 1] == '.' && ieq(host + hl - dl, dom, dl);
}

bool url_host_allowed(const char *host, size_t host_len, const char *site, size_t site_len,
                      const char *const *allowed, size_t allowed_count)
{
    host_len = strip_dot(host, host_len);
    if (host_len == 0) return false;
    if (allowed_count == 0) {
        size_t dl = strip_dot(site, site_len);
        const char *dom = url_host_strip_www(site, &dl);
        return domain_match(host, host_len, dom, dl, false);
    }
    for (size_t i = 0; i < allowed_count; i++) {
        const char *e = allowed[i];
        size_t el = strip_dot(e, strlen(e));
        bool subs_only = el > 2 && e[0] == '*' && e[1] == '.';
        if (subs_only) {
            e += 2;
            el -= 2;
        }
        if (domain_match(host, host_len, e, el, subs_only)) return true;
    }
    return false;
}

size_t url_referrer_host(const char *ref, size_t len, char *out, size_t cap)
{
    struct url u;
    out[0] = 0;
    if (cap <= URL_HOST_BYTES_MAX || url_parse_any(ref, len, &u) != TALLY_OK) return 0;
    size_t n = u.host_len;
    const char *h = url_host_strip_www(u.host, &n);
    memcpy(out, h, n);
    out[n] = 0;
    return n;
}
