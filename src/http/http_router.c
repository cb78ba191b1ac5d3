/*
 * http_router: the route table. Routes that share (path, prefix) form a group, the unit of the
 * 404 / 405 / OPTIONS decisions; exact groups sit in an open-addressing hash table (FNV-1a),
 * prefix groups in a list sorted longest first. Built once at http_server_start, read-only
 * afterwards, so lookups from any worker need no lock.
 */
#include "http/http_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "tally/error.h"

static uint32_t path_hash(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

struct group *http_router_group(const struct http_server *srv, const char *path, size_t len)
{
    if (srv->htab) {
        size_t i = path_hash(path, len) & srv->hmask;
        while (srv->htab[i]) {
            struct group *g = &srv->groups[srv->htab[i] - 1];
            if (g->path_len == len && memcmp(g->path, path, len) == 0) return g;
            i = (i + 1) & srv->hmask;
        }
    }
    for (size_t i = 0; i < srv->nprefixes; i++) {
        struct group *g = srv->prefixes[i];
        if (len >= g->path_len && memcmp(g->path, path, g->path_len) == 0) return g;
    }
    return NULL;
}

static int group_cmp_len(const void *a, const void *b)
{
    const struct group *x = *(struct group *const *)a, *y = *(struct group *const *)b;
    return x->path_len < y->path_len ? 1 : x->path_len > y->path_len ? -1 : 0;
}

static void group_allow(struct group *g)
{
    static const enum http_method order[] = {HTTP_GET,   HTTP_HEAD,   HTTP_POST,   HTTP_PUT,
                                             HTTP_PATCH, HTTP_DELETE, HTTP_OPTIONS};
    unsigned m = g->methods | HTTP_M(HTTP_OPTIONS);
    if (m & HTTP_M(HTTP_GET)) m |= HTTP_M(HTTP_HEAD);
    size_t n = 0;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(order); i++) {
        if (!(m & HTTP_M(order[i]))) continue;
        n += (size_t)snprintf(g->allow + n, sizeof g->allow - n, "%s%s", n ? ", " : "",
                              http_method_name(order[i]));
    }
}

int http_router_build(struct http_server *srv)
{
    srv->groups = calloc(srv->nroutes ? srv->nroutes : 1, sizeof *srv->groups);
    srv->prefixes = calloc(srv->nroutes ? srv->nroutes : 1, sizeof *srv->prefixes);
    if (!srv->groups || !srv->prefixes) return TALLY_ENOMEM;
    size_t nexact = 0;
    for (size_t i = 0; i < srv->nroutes; i++) {
        struct route *r = srv->routes[i];
        struct group *g = NULL;
        for (size_t k = 0; k < srv->ngroups && !g; k++) {
            struct group *x = &srv->groups[k];
            if (x->prefix == r->prefix && x->path_len == r->path_len &&
                memcmp(x->path, r->path, r->path_len) == 0)
                g = x;
        }
        if (!g) {
            g = &srv->groups[srv->ngroups++];
            g->path = r->path;
            g->path_len = r->path_len;
            g->prefix = r->prefix;
            g->first = r;
            if (r->prefix)
                srv->prefixes[srv->nprefixes++] = g;
            else
                nexact++;
        }
        for (int m = 1; m < HTTP_METHOD_COUNT; m++) {
            if (!(r->methods & HTTP_M(m))) continue;
            if (g->by_method[m]) {
                diag_error("http: two routes for %s %s", http_method_name(m), r->path);
                return TALLY_EINVAL;
            }
            g->by_method[m] = r;
        }
        g->methods |= r->methods;
        g->cors |= r->cors;
    }
    for (size_t k = 0; k < srv->ngroups; k++)
        group_allow(&srv->groups[k]);
    qsort(srv->prefixes, srv->nprefixes, sizeof *srv->prefixes, group_cmp_len);
    size_t size = 16;
    while (size < nexact * 2)
        size *= 2;
    srv->htab = calloc(size, sizeof *srv->htab);
    if (!srv->htab) return TALLY_ENOMEM;
    srv->hmask = size - 1;
    for (size_t k = 0; k < srv->ngroups; k++) {
        struct group *g = &srv->groups[k];
        if (g->prefix) continue;
        size_t i = path_hash(g->path, g->path_len) & srv->hmask;
        while (srv->htab[i])
            i = (i + 1) & srv->hmask;
        srv->htab[i] = (uint32_t)(k + 1);
    }
    return TALLY_OK;
}
