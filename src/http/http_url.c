/* http_url: see http_url.h. */
#include "http/http_url.h"

#include <string.h>

#include "tally/error.h"

#define PARAM_NAME_BYTES_MAX 256

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int http_url_decode(const char *in, size_t len, char *out, size_t out_cap, size_t *out_len,
                    bool plus_is_space)
{
    size_t n = 0;
    if (out_cap == 0) return TALLY_ETOOBIG;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '%') {
            if (i + 2 >= len) return TALLY_EINVAL;
            int hi = hexval((unsigned char)in[i + 1]), lo = hexval((unsigned char)in[i + 2]);
            if (hi < 0 || lo < 0) return TALLY_EINVAL;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (n + 1 >= out_cap) {
            out[n] = 0;
            return TALLY_ETOOBIG;
        }
        out[n++] = (char)c;
    }
    out[n] = 0;
    if (out_len) *out_len = n;
    return TALLY_OK;
}

int http_url_param(const char *query, size_t query_len, const char *name, char *out, size_t out_cap,
                   size_t *out_len)
{
    const char *p = query, *end = query ? query + query_len : NULL;
    size_t name_len = strlen(name);
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        const char *ke = eq ? eq : pe;
        char key[PARAM_NAME_BYTES_MAX];
        size_t klen;
        if (ke > p && http_url_decode(p, (size_t)(ke - p), key, sizeof key, &klen, true) == 0 &&
            klen == name_len && memcmp(key, name, name_len) == 0) {
            const char *v = eq ? eq + 1 : pe;
            return http_url_decode(v, (size_t)(pe - v), out, out_cap, out_len, true);
        }
        p = amp ? amp + 1 : end;
    }
    return TALLY_ENOENT;
}
