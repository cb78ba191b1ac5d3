/*
 * The built-in dashboard, the tracker script and GET /api/v1/sites (see dashboard.h).
 *
 * STATIC FILES. Each embedded file (assets.S) is one row of g_files. dashboard_routes fills
 * g_served once, on the main thread before the workers start: the plain bytes (pointing into
 * .rodata), a gzip copy (zlib level 9, kept only when smaller) and an ETag (XXH3 of the plain
 * bytes, so identical files keep their tag across builds). Afterwards everything is read-only:
 * the handlers only pick a representation. The gzip copies live until the process exits (they
 * are reachable from g_served, so leak checkers stay quiet).
 *
 * THE SITE LIST. The query API knows a site when it is configured, or (with auto_sites) when the
 * store has data for it; the list follows the same rule, restricted to what the key may read:
 * a key valid for every site ([auth] or DATA_DIR/keys) sees all of them, a site's own key sees
 * that site. It runs on the event loop: a bounded walk of the configuration and of the store's
 * in-memory site registry, never a database read.
 */
#include "app/dashboard.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <xxhash.h>
#include <zlib.h>

#include "app/app_int.h"
#include "core/keys.h"
#include "http/http_server.h"
#include "store/store.h"
#include "tally/error.h"

#define BLOB(sym) extern const unsigned char sym##_start[], sym##_end[]
BLOB(tally_asset_tracker_js);
BLOB(tally_asset_index_html);
BLOB(tally_asset_app_js);
BLOB(tally_asset_app_css);
BLOB(tally_asset_uplot_js);
BLOB(tally_asset_uplot_css);

enum cache { CACHE_REVALIDATE, CACHE_DAY };

struct file_def {
    const char *path; /* URL path it is served at */
    const char *type;
    const unsigned char *start, *end;
    enum cache cache;
};

#define FILE_DEF(p, t, sym, c)                                                                     \
    {                                                                                              \
        p, t, sym##_start, sym##_end, c                                                            \
    }
static const struct file_def g_files[] = {
    FILE_DEF("/js/script.js", "text/javascript; charset=utf-8", tally_asset_tracker_js, CACHE_DAY),
    FILE_DEF("/", "text/html; charset=utf-8", tally_asset_index_html, CACHE_REVALIDATE),
    FILE_DEF("/dashboard/app.js", "text/javascript; charset=utf-8", tally_asset_app_js,
             CACHE_REVALIDATE),
    FILE_DEF("/dashboard/app.css", "text/css; charset=utf-8", tally_asset_app_css,
             CACHE_REVALIDATE),
    FILE_DEF("/dashboard/uplot.js", "text/javascript; charset=utf-8", tally_asset_uplot_js,
             CACHE_REVALIDATE),
    FILE_DEF("/dashboard/uplot.css", "text/css; charset=utf-8", tally_asset_uplot_css,
             CACHE_REVALIDATE),
};
#define NFILES TALLY_ARRAY_LEN(g_files)
#define TRACKER 0 /* index of the tracker in g_files */

struct served {
    const struct file_def *def;
    size_t len;
    unsigned char *gz; /* NULL when gzip does not make it smaller */
    size_t gz_len;
    char etag[24]; /* "\"" 16 hex "\"" */
};

static struct served g_served[NFILES];

/* The page's headers: no framing by other sites, no referrer leaking the dashboard's URL, and
 * scripts, styles and requests from this origin only. */
#define PAGE_HEADERS                                                                               \
    "X-Content-Type-Options: nosniff\r\n"                                                          \
    "Referrer-Policy: no-referrer\r\n"                                                             \
    "X-Frame-Options: DENY\r\n"                                                                    \
    "Content-Security-Policy: default-src 'self'; img-src 'self' data:; object-src 'none'; "       \
    "base-uri 'none'; frame-ancestors 'none'\r\n"

/* ---------------------------------------------------------------- static files */

static int gzip_file(struct served *sv)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    /* windowBits 15 + 16: a gzip wrapper; memLevel 9, the best ratio */
    if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return TALLY_ENOMEM;
    uLong cap = deflateBound(&z, (uLong)sv->len);
    unsigned char *out = malloc(cap);
    if (!out) {
        deflateEnd(&z);
        return TALLY_ENOMEM;
    }
    z.next_in = (Bytef *)sv->def->start;
    z.avail_in = (uInt)sv->len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    int zr = deflate(&z, Z_FINISH);
    size_t n = (size_t)z.total_out;
    deflateEnd(&z);
    if (zr != Z_STREAM_END || n >= sv->len) {
        free(out);
        return zr == Z_STREAM_END ? 0 : TALLY_EIO;
    }
    sv->gz = out;
    sv->gz_len = n;
    return 0;
}

static int prepare_files(void)
{
    if (g_served[0].def) return 0; /* once per process (tests may start several servers) */
    for (size_t i = 0; i < NFILES; i++) {
        struct served *sv = &g_served[i];
        sv->def = &g_files[i];
        sv->len = (size_t)(g_files[i].end - g_files[i].start);
        snprintf(sv->etag, sizeof sv->etag, "\"%016llx\"",
                 (unsigned long long)XXH3_64bits(g_files[i].start, sv->len));
        int rc = gzip_file(sv);
        if (rc != 0) return rc;
    }
    return 0;
}

/* Whether an Accept-Encoding value accepts gzip: a "gzip" or "*" token without q=0. */
static bool accepts_gzip(const char *ae)
{
    for (const char *p = ae; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *tok = p;
        while (*p && *p != ',' && *p != ';' && *p != ' ' && *p != '\t')
            p++;
        size_t n = (size_t)(p - tok);
        bool match = (n == 4 && !strncasecmp(tok, "gzip", 4)) || (n == 1 && *tok == '*');
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        if (match) {
            const char *q = strstr(p, "q=");
            bool zero = false;
            if (q && q < end) {
                zero = q[2] == '0';
                for (const char *c = q + 3; zero && c < end && *c != ' ' && *c != ';'; c++)
                    zero = *c == '.' || *c == '0';
            }
            if (!zero) return true;
        }
        p = end;
    }
    return false;
}

/* Whether If-None-Match lists etag (or is "*"). */
static bool etag_matches(const char *inm, const char *etag)
{
    if (!inm) return false;
    if (strchr(inm, '*')) return true;
    size_t n = strlen(etag);
    for (const char *p = strstr(inm, etag + 1); p; p = strstr(p + 1, etag + 1))
        if (p > inm && p[-1] == '"' && p[n - 2] == '"') return true;
    return false;
}

static void on_file(struct http_request *req, struct http_exchange *ex, void *arg)
{
    const struct served *sv = arg;
    char hdrs[1024];
    const char *cache = sv->def->cache == CACHE_DAY
                            ? "public, max-age=86400, stale-while-revalidate=604800"
                            : "no-cache";
    bool page = sv->def->cache == CACHE_REVALIDATE;
    bool gz = sv->gz && accepts_gzip(http_request_header(req, "accept-encoding"));
    _Static_assert(DASHBOARD_TRACKER_MAX_AGE_S == 86400, "max-age in the header above");
    snprintf(hdrs, sizeof hdrs, "Cache-Control: %s\r\nETag: %s\r\nVary: Accept-Encoding\r\n%s%s%s",
             cache, sv->etag, gz ? "Content-Encoding: gzip\r\n" : "", page ? PAGE_HEADERS : "",
             /* the tracker is loaded by other sites' pages */
             page ? ""
                  : "Access-Control-Allow-Origin: *\r\nCross-Origin-Resource-Policy: "
                    "cross-origin\r\n");
    if (etag_matches(http_request_header(req, "if-none-match"), sv->etag)) {
        http_exchange_complete(ex, 304, NULL, NULL, 0, hdrs);
        return;
    }
    http_exchange_complete(ex, 200, sv->def->type, gz ? sv->gz : sv->def->start,
                           gz ? sv->gz_len : sv->len, hdrs);
}

/* ---------------------------------------------------------------- GET /api/v1/sites */

struct site_list {
    const struct tally_config *cfg;
    cJSON *arr;
    int count;
    bool truncated;
};

static bool list_add(struct site_list *l, const char *name, const struct config_site *cs)
{
    if (l->count >= DASHBOARD_SITES_MAX) {
        l->truncated = true;
        return false;
    }
    cJSON *o = cJSON_CreateObject();
    if (!o) return false;
    cJSON_AddItemToArray(l->arr, o);
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "timezone",
                            cs && cs->timezone && cs->timezone[0] ? cs->timezone : "UTC");
    cJSON_AddBoolToObject(o, "configured", cs != NULL);
    l->count++;
    return true;
}

/* store_sites_each callback: the auto-created sites (configured ones are listed already). */
static void add_stored(void *arg, uint32_t id, const char *name)
{
    (void)id;
    struct site_list *l = arg;
    if (config_site_find(l->cfg, name)) return;
    list_add(l, name, NULL);
}

static void respond_json_error(struct http_exchange *ex, int status, const char *msg)
{
    if (status == 401) {
        char body[256], esc[200];
        http_json_escape(esc, sizeof esc, msg);
        int n = snprintf(body, sizeof body, "{\"error\": \"%s\"}", esc);
        http_exchange_complete(ex, 401, "application/json", body, (size_t)n,
                               "WWW-Authenticate: Bearer\r\n");
        return;
    }
    http_respond_error(ex, status, msg);
}

static void on_sites(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    const struct tally_config *cfg = app_config(app); /* one snapshot for the whole request */
    const char *auth = http_request_header(req, "authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) {
        respond_json_error(ex, 401, "missing API key: send Authorization: Bearer KEY");
        return;
    }
    const char *key = auth + 7;
    while (*key == ' ')
        key++;
    size_t key_len = strlen(key);
    while (key_len > 0 && (key[key_len - 1] == ' ' || key[key_len - 1] == '\t'))
        key_len--;

    enum key_scope a = key_verify(key, key_len, &cfg->key_digests, NULL);
    enum key_scope b = key_verify(key, key_len, &app->stored_keys, NULL);
    enum key_scope global = a > b ? a : b;
    bool any = global != KEY_SCOPE_NONE, readable = key_scope_allows(global, KEY_SCOPE_READ);

    struct site_list l = {.cfg = cfg, .arr = cJSON_CreateArray()};
    cJSON *root = cJSON_CreateObject();
    if (!l.arr || !root) {
        cJSON_Delete(l.arr);
        cJSON_Delete(root);
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    for (int i = 0; i < cfg->site_count; i++) {
        const struct config_site *cs = &cfg->sites[i];
        bool ok = readable;
        if (!ok && cs->key_digests.count > 0) {
            enum key_scope s = key_verify(key, key_len, NULL, &cs->key_digests);
            any = any || s != KEY_SCOPE_NONE;
            ok = key_scope_allows(s, KEY_SCOPE_READ);
        }
        if (ok && !list_add(&l, cs->name, cs)) break;
    }
    if (readable && cfg->auto_sites && app->store) store_sites_each(app->store, add_stored, &l);

    if (!any) {
        cJSON_Delete(l.arr);
        cJSON_Delete(root);
        respond_json_error(ex, 401, "invalid API key");
        return;
    }
    if (l.count == 0 && !readable) {
        cJSON_Delete(l.arr);
        cJSON_Delete(root);
        http_respond_error(ex, 403,
                           "this key has write scope; the site list needs read or "
                           "admin scope");
        return;
    }
    cJSON_AddItemToObject(root, "sites", l.arr);
    cJSON_AddBoolToObject(root, "truncated", l.truncated);
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) {
        http_respond_error(ex, 503, "out of memory; retry later");
        return;
    }
    http_exchange_complete(ex, 200, "application/json", json, strlen(json),
                           "Cache-Control: no-store\r\n");
    free(json);
}

/* ---------------------------------------------------------------- routes */

static int route(struct app *app, const char *path, const char *name, http_handler_fn fn, void *arg)
{
    struct http_route r = {
        .methods = HTTP_M(HTTP_GET), .path = path, .name = name, .handler = fn, .arg = arg};
    return http_server_route(app->http, &r);
}

int dashboard_routes(struct app *app)
{
    int rc = prepare_files();
    for (size_t i = 0; rc == 0 && i < NFILES; i++)
        rc = route(app, g_files[i].path, i == TRACKER ? "tracker" : "dashboard", on_file,
                   &g_served[i]);
    const char *tp = app_config(app)->tracker_path; /* read once: a reload needs a restart */
    if (rc == 0 && tp && tp[0] && strcmp(tp, g_files[TRACKER].path) != 0)
        rc = route(app, tp, "tracker", on_file, &g_served[TRACKER]);
    if (rc == 0) rc = route(app, "/api/v1/sites", "api_v1_sites", on_sites, app);
    return rc;
}
