/*
 * The Stats API over HTTP (API.md §4). See query_api.h for the threads and the lifecycle.
 *
 * REQUEST FLOW.
 *   HTTP worker (event loop), cheap and bounded:
 *     1. Authorization: Bearer KEY. Missing, malformed, or matching no digest at all (global
 *        [auth], any site's, or the stored DATA_DIR/keys) -> 401 with WWW-Authenticate: Bearer,
 *        before anything is parsed, so unauthenticated clients never take a queue slot.
 *     2. v2: a body above QUERY_BODY_BYTES_MAX -> 413 (the HTTP layer refuses far larger ones).
 *     3. Enqueue; a full queue (query_queue_max) -> 503 with Retry-After: 1.
 *   Query worker:
 *     4. Parse (query_parse_v2 / query_parse_v1). The parser asks site_lookup for the site:
 *        known = configured, or with auto_sites a site the store has data for. Parse errors
 *        -> 400 with the parser's message; unknown site -> 404.
 *     5. The key's scope for THIS site (global lists and the site's own list) must cover read:
 *        else 403. X-Tally-Plan (rollup|scan) needs admin scope: else 403.
 *     6. query_execute under the budget (query_timeout_ms, query_memory_bytes_max,
 *        QUERY_API_ROWS_MAX) -> 200, or 503 (time budget), 400 (memory/row budget).
 *     7. Complete the exchange from the worker thread.
 *
 * CLUSTER (app->cluster set; cluster.h). In step 4 the parser's site lookup computes the
 * site's partition from its canonical name (the configured site's name when site_id is one of
 * its ids). When this node does not own it, the lookup does not touch the store (NULL on an
 * ingest node) and marks the query for forwarding; the parse (cheap, same configuration on
 * every node) and the scope check (5) still run here, so malformed or unauthorised queries
 * never leave the node. Then, instead of 6:
 *   - a request that already carries X-Tally-Forwarded -> 421 {"error"} (no loops);
 *   - no owner in partition_owners -> 503 {"error"} naming the partition;
 *   - GET /api/v1/export (a stream, not buffered) -> 421 {"error", "owner": URL}: clients
 *     export from the owner directly;
 *   - else cluster_forward to the owner (blocking this worker up to forward_timeout_ms) and
 *     relay its status, Content-Type and body (502/504 when it failed).
 * A site unknown here (not configured, auto_sites on) is forwarded too: the owner has its data
 * and decides (404 or the answer).
 *
 * INVARIANTS. Every accepted exchange is completed exactly once: by the worker that ran it,
 * or with 503 by query_api_quiesce while it was still queued. Keys are never logged nor echoed;
 * the key text is read from the request (owned by the exchange) and never copied.
 *
 * FIRST-START KEY. DATA_DIR/keys holds "SCOPE:DIGEST" lines (like [auth] key_digests), loaded at
 * start as one more global list. When no read-capable digest exists anywhere, a read key is
 * created, its digest appended to the file (tmp + fsync + rename + directory fsync, mode 0600)
 * and the key itself printed once on stderr: it exists nowhere else.
 */
#include "app/query_api.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "app/app_int.h"
#include "app/cluster.h"
#include "app/export.h"
#include "core/diag.h"
#include "core/fsio.h"
#include "core/keys.h"
#include "http/http_server.h"
#include "http/http_url.h"
#include "ingest/timefmt.h"
#include "query/funnel.h"
#include "query/query.h"
#include "rollup/tz.h"
#include "store/store.h"
#include "tally/error.h"

#define ERR_BYTES_MAX 1024 /* error messages (parser messages are shorter) */

/* Statuses counted in tally_query_responses_total; anything else is "other". */
static const int g_statuses[] = {200, 400, 401, 403, 404, 413, 421, 500, 502, 503, 504};
#define NSTATUS (TALLY_ARRAY_LEN(g_statuses) + 1)

/* What a job computes: a Stats API query, a funnel, or an export (streamed). */
enum qkind { QK_QUERY = 0, QK_FUNNEL, QK_EXPORT };

struct qjob {
    struct qjob *next;
    struct http_exchange *ex;
    const struct http_request *req; /* owned by the exchange */
    enum qkind kind;
    enum q_api api;
    const char *key;                /* in the request's Authorization header */
    size_t key_len;
    enum key_scope global_scope;    /* from [auth] and DATA_DIR/keys */
    int64_t arrived_us;             /* monotonic, for the latency histogram */
};

#define ROUTES 7

struct route_arg {
    struct query_api *qa;
    enum qkind kind;
    enum q_api api;
};

struct query_api {
    struct app *app;
    struct route_arg route_args[ROUTES];
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct qjob *head, *tail;
    size_t queued;
    size_t queue_max;
    bool closing; /* quiesced: refuse and fail queued */
    bool stop;    /* workers exit when the queue is empty */
    pthread_t *threads;
    size_t nthreads;
    struct metrics_counter *responses[NSTATUS];
    struct metrics_histogram *latency;
    struct metrics_gauge *queue_len, *running;
};

/* ---------------------------------------------------------------- responses and metrics */

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void count(struct query_api *qa, int status, int64_t arrived_us)
{
    size_t i = 0;
    while (i < TALLY_ARRAY_LEN(g_statuses) && g_statuses[i] != status) i++;
    metrics_counter_add(qa->responses[i], 1);
    metrics_histogram_observe(qa->latency, (double)(mono_us() - arrived_us) / 1e6);
}

/* Completes ex with {"error": msg} (any thread). */
static void respond_error(struct query_api *qa, struct http_exchange *ex, int64_t arrived_us,
                          int status, const char *msg, const char *extra_headers)
{
    char esc[ERR_BYTES_MAX * 2];
    char body[sizeof esc + 32];
    http_json_escape(esc, sizeof esc, msg);
    int n = snprintf(body, sizeof body, "{\"error\": \"%s\"}", esc);
    count(qa, status, arrived_us);
    http_exchange_complete(ex, status, "application/json", body, (size_t)n, extra_headers);
}

static void respond_401(struct query_api *qa, struct http_exchange *ex, int64_t arrived_us,
                        const char *msg)
{
    respond_error(qa, ex, arrived_us, 401, msg, "WWW-Authenticate: Bearer\r\n");
}

static void register_metrics(struct query_api *qa, struct metrics *m)
{
    for (size_t i = 0; i < NSTATUS; i++) {
        char code[8];
        if (i < TALLY_ARRAY_LEN(g_statuses))
            snprintf(code, sizeof code, "%d", g_statuses[i]);
        else
            snprintf(code, sizeof code, "other");
        qa->responses[i] = metrics_counter(
            m, "tally_query_responses_total", "Stats API requests answered, by status.",
            (const char *[]){"status", code, NULL}, METRICS_HIDE_ZERO);
    }
    static const double bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,  0.5,    1,     2.5,  5,     10,   30};
    qa->latency = metrics_histogram(m, "tally_query_duration_seconds",
                                    "Stats API requests: time from arrival (queue wait "
                                    "included) to the response.",
                                    NULL, bounds, TALLY_ARRAY_LEN(bounds));
    qa->queue_len = metrics_gauge(m, "tally_query_queue_length",
                                  "Stats API queries waiting for a query worker.", NULL, 0);
    qa->running = metrics_gauge(m, "tally_query_running", "Stats API queries being executed.",
                                NULL, 0);
}

/* ---------------------------------------------------------------- keys */

static enum key_scope digest_scope(const char *line)
{
    const char *colon = strchr(line, ':');
    char name[8];
    size_t n = colon ? (size_t)(colon - line) : 0;
    if (n == 0 || n >= sizeof name) return KEY_SCOPE_NONE;
    memcpy(name, line, n);
    name[n] = 0;
    return key_scope_parse(name);
}

static bool list_can_read(const struct config_list *l)
{
    for (int i = 0; i < l->count; i++)
        if (key_scope_allows(digest_scope(l->items[i]), KEY_SCOPE_READ)) return true;
    return false;
}

void query_api_keys_free(struct config_list *stored)
{
    if (!stored) return;
    for (int i = 0; i < stored->count; i++) free(stored->items[i]);
    free(stored->items);
    stored->items = NULL;
    stored->count = 0;
}

static int list_add(struct config_list *l, const char *s, size_t n)
{
    if (l->count >= CONFIG_LIST_ITEMS_MAX) return TALLY_ETOOBIG;
    char **items = realloc(l->items, sizeof(char *) * (size_t)(l->count + 1));
    if (!items) return TALLY_ENOMEM;
    l->items = items;
    if (!(l->items[l->count] = strndup(s, n))) return TALLY_ENOMEM;
    l->count++;
    return 0;
}

/* Reads the key file into *out (lines trimmed; empty lines and '#' comments skipped).
 * TALLY_ENOENT when there is no file. */
static int keys_read(const char *path, struct config_list *out)
{
    const struct fsio *fs = fsio_real();
    int fd = fs->open(fs->ctx, path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return fd == -ENOENT ? TALLY_ENOENT : tally_err_from_errno(-fd);
    char *buf = malloc(QUERY_API_KEYS_BYTES_MAX + 1);
    size_t got = 0;
    int rc = buf ? fsio_read_full(fs, fd, buf, QUERY_API_KEYS_BYTES_MAX + 1, 0, &got)
                 : TALLY_ENOMEM;
    fs->close(fs->ctx, fd);
    if (rc == 0 && got > QUERY_API_KEYS_BYTES_MAX) rc = TALLY_ETOOBIG;
    for (size_t i = 0; rc == 0 && i < got;) {
        size_t end = i;
        while (end < got && buf[end] != '\n') end++;
        size_t a = i, b = end;
        while (a < b && (buf[a] == ' ' || buf[a] == '\t' || buf[a] == '\r')) a++;
        while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t' || buf[b - 1] == '\r')) b--;
        if (b > a && buf[a] != '#') rc = list_add(out, buf + a, b - a);
        i = end + 1;
    }
    free(buf);
    return rc;
}

/* Writes the lines of l to path atomically (path.tmp, fdatasync, rename, directory fsync). */
static int keys_write(const char *dir, const char *path, const struct config_list *l)
{
    const struct fsio *fs = fsio_real();
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    fs->unlink(fs->ctx, tmp); /* a leftover may have another mode */
    int fd = fs->open(fs->ctx, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return tally_err_from_errno(-fd);
    int rc = 0;
    uint64_t off = 0;
    for (int i = 0; rc == 0 && i < l->count; i++) {
        size_t n = strlen(l->items[i]);
        rc = fsio_write_all(fs, fd, l->items[i], n, off);
        if (rc == 0) rc = fsio_write_all(fs, fd, "\n", 1, off + n);
        off += n + 1;
    }
    if (rc == 0) {
        int r = fs->fdatasync(fs->ctx, fd);
        if (r < 0) rc = tally_err_from_errno(-r);
    }
    int r = fs->close(fs->ctx, fd);
    if (rc == 0 && r < 0) rc = tally_err_from_errno(-r);
    if (rc == 0 && (r = fs->rename(fs->ctx, tmp, path)) < 0) rc = tally_err_from_errno(-r);
    if (rc != 0) {
        fs->unlink(fs->ctx, tmp);
        return rc;
    }
    r = fs->fsync_dir(fs->ctx, dir);
    return r < 0 ? tally_err_from_errno(-r) : 0;
}

static bool config_can_read(const struct tally_config *cfg)
{
    if (list_can_read(&cfg->key_digests)) return true;
    for (int i = 0; i < cfg->site_count; i++)
        if (list_can_read(&cfg->sites[i].key_digests)) return true;
    return false;
}

int query_api_keys_init(const struct tally_config *cfg, const char *data_dir,
                        const char *dashboard_url, struct config_list *stored)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", data_dir, QUERY_API_KEYS_FILE);
    int rc = keys_read(path, stored);
    if (rc != 0 && rc != TALLY_ENOENT) {
        fprintf(stderr, "tally: cannot read %s: %s; its keys are not accepted\n", path,
                tally_strerror(rc));
        query_api_keys_free(stored);
        return rc;
    }
    if (cfg->log_backend == CONFIG_LOG_JETSTREAM && stored->count > 0)
        fprintf(stderr, "tally: the keys in %s are valid on this node only; queries forwarded "
                        "to other nodes need keys from the shared configuration ([auth] or "
                        "[site] key_digests)\n", path);
    if (config_can_read(cfg) || list_can_read(stored)) return 0;
    if (cfg->log_backend == CONFIG_LOG_JETSTREAM) {
        /* A key created here would exist on this node only: every node must accept the same
         * keys, so in a cluster they come from the (shared) configuration. */
        fprintf(stderr, "tally: no API key with read scope is configured; in a cluster, create "
                        "one with `tally key new` and add its digest to [auth] key_digests (or "
                        "a [site]'s key_digests) in the configuration every node uses\n");
        return 0;
    }

    char key[KEY_TEXT_BYTES], line[KEY_DIGEST_LINE_BYTES];
    if ((rc = key_generate(KEY_SCOPE_READ, key, line)) != 0 ||
        (rc = list_add(stored, line, strlen(line))) != 0 ||
        (rc = keys_write(data_dir, path, stored)) != 0) {
        fprintf(stderr, "tally: cannot create the first API key in %s: %s; configure one with "
                        "`tally key new`\n", path, tally_strerror(rc));
        memset(key, 0, sizeof key);
        query_api_keys_free(stored);
        return rc;
    }
    fprintf(stderr,
            "tally: no API key with read scope was configured, so one was created. It is shown "
            "this once; only its digest is stored (in %s):\n"
            "tally:   key = %s\n"
            "tally: dashboard: %s (Stats API: Authorization: Bearer KEY)\n",
            path, key, dashboard_url);
    fflush(stderr);
    memset(key, 0, sizeof key);
    return 0;
}

/* The key's scope from the lists valid for every site. */
static enum key_scope scope_global(struct app *app, const char *key, size_t len)
{
    enum key_scope a = key_verify(key, len, &app->cfg->key_digests, NULL);
    enum key_scope b = key_verify(key, len, &app->stored_keys, NULL);
    return a > b ? a : b;
}

/* Whether the key matches any site's own list (the site is checked after parsing). */
static bool matches_some_site(struct app *app, const char *key, size_t len)
{
    for (int i = 0; i < app->cfg->site_count; i++) {
        const struct config_list *l = &app->cfg->sites[i].key_digests;
        if (l->count > 0 && key_verify(key, len, NULL, l) != KEY_SCOPE_NONE) return true;
    }
    return false;
}

/* ---------------------------------------------------------------- the queue */

static struct qjob *pop(struct query_api *qa)
{
    struct qjob *j = qa->head;
    if (!j) return NULL;
    qa->head = j->next;
    if (!qa->head) qa->tail = NULL;
    qa->queued--;
    metrics_gauge_add(qa->queue_len, -1);
    return j;
}

/* 0, or TALLY_EFULL / TALLY_ECLOSED (the caller answers 503 and keeps the job). */
static int push(struct query_api *qa, struct qjob *j)
{
    pthread_mutex_lock(&qa->mu);
    int rc = qa->closing ? TALLY_ECLOSED : qa->queued >= qa->queue_max ? TALLY_EFULL : 0;
    if (rc == 0) {
        j->next = NULL;
        if (qa->tail)
            qa->tail->next = j;
        else
            qa->head = j;
        qa->tail = j;
        qa->queued++;
        metrics_gauge_add(qa->queue_len, 1);
        pthread_cond_signal(&qa->cond);
    }
    pthread_mutex_unlock(&qa->mu);
    return rc;
}

void query_api_quiesce(struct query_api *qa)
{
    if (!qa) return;
    pthread_mutex_lock(&qa->mu);
    qa->closing = true;
    struct qjob *list = NULL, **tailp = &list;
    struct qjob *j;
    while ((j = pop(qa)) != NULL) {
        *tailp = j;
        tailp = &j->next;
        j->next = NULL;
    }
    pthread_mutex_unlock(&qa->mu);
    while ((j = list) != NULL) {
        list = j->next;
        respond_error(qa, j->ex, j->arrived_us, 503, "server is shutting down; retry later",
                      "Retry-After: 1\r\n");
        free(j);
    }
}

/* ---------------------------------------------------------------- one query */

struct site_ctx {
    struct app *app;
    bool known;
    const struct config_site *cs; /* NULL: an auto-created site */
    uint32_t site_id;             /* 0: no data yet (or forwarded) */
    int err;                      /* a store error while looking the site up */
    bool forward;                 /* another node owns the site's partition (cluster.h) */
    uint32_t partition;           /* the site's partition (with forward) */
    char name[QUERY_SITE_BYTES_MAX + 1];
};

/* The parser's q_site_fn (query worker thread). */
static bool site_lookup(void *arg, const char *site, struct query *q)
{
    struct site_ctx *c = arg;
    struct app *app = c->app;
    const struct config_site *cs = config_site_find(app->cfg, site);
    const char *name = cs ? cs->name : site;
    uint32_t id = 0;
    if (app->cluster) {
        uint32_t p = cluster_partition_of(name, strlen(name), cluster_partitions(app->cluster));
        c->forward = !cluster_owns(app->cluster, p);
        c->partition = p;
    }
    if (c->forward) {
        /* the owner has the data: an unconfigured site (auto_sites) is its call */
        if (!cs && !app->cfg->auto_sites) return false;
    } else if (!app->store) {
        c->err = TALLY_ENOTSUP; /* no store and no cluster: cannot happen (role ingest) */
        return false;
    } else {
        int rc = store_site_id(app->store, name, strlen(name), false, &id);
        if (rc != 0 && rc != TALLY_ENOENT && rc != TALLY_EINVAL) {
            c->err = rc;
            return false;
        }
        if (rc != 0) id = 0;
        if (!cs && (!app->cfg->auto_sites || id == 0)) return false;
    }
    if (strlen(name) > QUERY_SITE_BYTES_MAX) return false;
    const tz_zone *z = NULL;
    if (tz_get(cs && cs->timezone && cs->timezone[0] ? cs->timezone : "UTC", &z) != 0)
        z = tz_utc();
    q->zone = z;
    if (name != q->site) snprintf(q->site, sizeof q->site, "%s", name); /* id -> name */
    snprintf(q->currency, sizeof q->currency, "%s",
             cs && cs->currency && cs->currency[0] ? cs->currency : "EUR");
    /* The configuration's own list: the parser copies it (qparse.c). */
    q->ngoals = cs ? (size_t)cs->goals.count : 0;
    q->goals = cs && cs->goals.count > 0 ? cs->goals.items : NULL;
    c->known = true;
    c->cs = cs;
    c->site_id = id;
    snprintf(c->name, sizeof c->name, "%s", name);
    return true;
}

/* Splits and percent-decodes the query string into names/values (pointers into *arena,
 * caller frees). Returns the count, or -1 with a message in err. */
static int v1_params(const struct http_request *req, const char **names, const char **values,
                     char **arena, char *err, size_t errcap)
{
    *arena = NULL;
    const char *qs = req->query ? req->query : "";
    size_t len = req->query ? req->query_len : 0;
    char *buf = malloc(len + 2 * QUERY_API_V1_PARAMS_MAX + 2);
    if (!buf) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    *arena = buf;
    int n = 0;
    size_t used = 0;
    for (size_t i = 0; i < len;) {
        size_t end = i;
        while (end < len && qs[end] != '&') end++;
        if (end > i) {
            if (n >= QUERY_API_V1_PARAMS_MAX) {
                snprintf(err, errcap, "more than %d query parameters", QUERY_API_V1_PARAMS_MAX);
                return -1;
            }
            const char *eq = memchr(qs + i, '=', end - i);
            size_t nlen = eq ? (size_t)(eq - (qs + i)) : end - i;
            const char *v = eq ? eq + 1 : qs + end;
            size_t vlen = (size_t)(qs + end - v);
            size_t dn, dv;
            char *name = buf + used;
            if (http_url_decode(qs + i, nlen, name, nlen + 1, &dn, true) != 0) {
                snprintf(err, errcap, "a query parameter name has a bad %%-escape");
                return -1;
            }
            char *value = name + dn + 1;
            if (http_url_decode(v, vlen, value, vlen + 1, &dv, true) != 0 ||
                strlen(value) != dv || strlen(name) != dn) {
                snprintf(err, errcap, "query parameter '%.64s': bad %%-escape or NUL byte",
                         name);
                return -1;
            }
            used += dn + dv + 2;
            names[n] = name;
            values[n] = value;
            n++;
        }
        i = end + 1;
    }
    return n;
}

/* The export's parameters (site_id, date_range, filters, format) as a v2 document; date_range
 * is a v2 keyword ("30d", "all", ...) or two dates "FROM,TO". 0, or TALLY_EINVAL with err. */
static int export_document(const struct http_request *req, char **doc, enum export_format *fmt,
                           char *err, size_t errcap)
{
    char *v = malloc(QUERY_BODY_BYTES_MAX + 1);
    cJSON *d = cJSON_CreateObject();
    int rc = v && d ? TALLY_OK : TALLY_ENOMEM;
    size_t n;
    *fmt = EXPORT_NDJSON;
    if (!rc && http_request_query(req, "format", v, 16, &n) == 0) {
        if (strcmp(v, "csv") == 0)
            *fmt = EXPORT_CSV;
        else if (strcmp(v, "ndjson") != 0) {
            snprintf(err, errcap, "format: expected ndjson or csv");
            rc = TALLY_EINVAL;
        }
    }
    if (!rc) {
        if (http_request_query(req, "site_id", v, QUERY_SITE_BYTES_MAX + 1, &n) != 0) {
            snprintf(err, errcap, "site_id: required (the site's domain)");
            rc = TALLY_EINVAL;
        } else if (!cJSON_AddStringToObject(d, "site_id", v)) {
            rc = TALLY_ENOMEM;
        }
    }
    if (!rc) {
        if (http_request_query(req, "date_range", v, 128, &n) != 0) snprintf(v, 128, "all");
        char *comma = strchr(v, ',');
        cJSON *r;
        if (comma) {
            *comma = 0;
            const char *two[2] = {v, comma + 1};
            r = cJSON_CreateStringArray(two, 2);
        } else {
            r = cJSON_CreateString(v);
        }
        if (!r || !cJSON_AddItemToObject(d, "date_range", r)) rc = TALLY_ENOMEM;
    }
    if (!rc && http_request_query(req, "filters", v, QUERY_BODY_BYTES_MAX + 1, &n) == 0) {
        cJSON *f = cJSON_ParseWithLength(v, n);
        if (!f || !cJSON_IsArray(f)) {
            cJSON_Delete(f);
            snprintf(err, errcap, "filters: expected a JSON list of v2 filters, like "
                     "[[\"is\", \"visit:source\", [\"Google\"]]]");
            rc = TALLY_EINVAL;
        } else if (!cJSON_AddItemToObject(d, "filters", f)) {
            rc = TALLY_ENOMEM;
        }
    }
    cJSON *m = rc ? NULL : cJSON_AddArrayToObject(d, "metrics");
    if (!rc && (!m || !cJSON_AddItemToArray(m, cJSON_CreateString("visitors")))) rc = TALLY_ENOMEM;
    *doc = rc ? NULL : cJSON_PrintUnformatted(d);
    if (!rc && !*doc) rc = TALLY_ENOMEM;
    cJSON_Delete(d);
    free(v);
    return rc;
}

static int parse(struct qjob *j, struct site_ctx *sc, struct query **q, struct funnel **fn,
                 enum export_format *fmt, char *err, size_t errcap)
{
    int64_t now = timefmt_now_ms();
    if (j->kind == QK_FUNNEL) {
        int rc = funnel_parse(j->req->body, j->req->body_len, now, site_lookup, sc, fn, err,
                              errcap);
        if (rc == 0) *q = (*fn)->q;
        return rc;
    }
    if (j->kind == QK_EXPORT) {
        char *doc = NULL;
        int rc = export_document(j->req, &doc, fmt, err, errcap);
        if (rc == 0) rc = query_parse_v2(doc, strlen(doc), now, site_lookup, sc, q, err, errcap);
        cJSON_free(doc);
        return rc;
    }
    if (j->api == Q_API_V2)
        return query_parse_v2(j->req->body, j->req->body_len, now, site_lookup, sc, q, err,
                              errcap);
    const char *names[QUERY_API_V1_PARAMS_MAX], *values[QUERY_API_V1_PARAMS_MAX];
    char *arena;
    int n = v1_params(j->req, names, values, &arena, err, errcap);
    int rc = n < 0 ? TALLY_EINVAL
                   : query_parse_v1(j->api, names, values, (size_t)n, now, site_lookup, sc, q,
                                    err, errcap);
    free(arena);
    return rc;
}

/* The X-Tally-Plan override: 0 with *plan, or an HTTP status with a message. */
static int plan_override(const struct http_request *req, enum key_scope scope, enum q_plan *plan,
                         char *err, size_t errcap)
{
    *plan = Q_PLAN_AUTO;
    const char *h = http_request_header(req, "x-tally-plan");
    if (!h) return 0;
    if (scope != KEY_SCOPE_ADMIN) {
        snprintf(err, errcap, "X-Tally-Plan needs a key with admin scope");
        return 403;
    }
    if (!strcasecmp(h, "rollup"))
        *plan = Q_PLAN_ROLLUP;
    else if (!strcasecmp(h, "scan"))
        *plan = Q_PLAN_SCAN;
    else if (!strcasecmp(h, "stream"))
        *plan = Q_PLAN_STREAM;
    else if (strcasecmp(h, "auto") != 0) {
        snprintf(err, errcap, "X-Tally-Plan must be rollup, scan, stream or auto");
        return 400;
    }
    return 0;
}

static void respond_exec_error(struct query_api *qa, struct qjob *j, const struct site_ctx *sc,
                               int rc, const char *err);

static void execute(struct query_api *qa, struct qjob *j, const struct site_ctx *sc,
                    const struct query *q, enum q_plan plan)
{
    const struct tally_config *cfg = qa->app->cfg;
    struct q_budget b = {
        .deadline_ms = timefmt_mono_ms() + cfg->query_timeout_ms,
        .memory_bytes_max = (size_t)cfg->query_memory_bytes_max,
        .rows_max = QUERY_API_ROWS_MAX,
    };
    char *json = NULL;
    size_t len = 0;
    char err[ERR_BYTES_MAX / 2] = "";
    int rc = query_execute(qa->app->store, sc->site_id, q, &b, plan, &json, &len, err,
                           sizeof err);
    if (rc == 0) {
        const char *hdr = plan == Q_PLAN_ROLLUP   ? "X-Tally-Plan: rollup\r\n"
                          : plan == Q_PLAN_SCAN   ? "X-Tally-Plan: scan\r\n"
                          : plan == Q_PLAN_STREAM ? "X-Tally-Plan: stream\r\n"
                                                  : NULL;
        count(qa, 200, j->arrived_us);
        http_exchange_complete(j->ex, 200, "application/json", json, len, hdr);
        free(json);
        return;
    }
    free(json);
    respond_exec_error(qa, j, sc, rc, err);
}

/* The answer to an execution error rc (err: the executor's message, may be empty). */
static void respond_exec_error(struct query_api *qa, struct qjob *j, const struct site_ctx *sc,
                               int rc, const char *err)
{
    const struct tally_config *cfg = qa->app->cfg;
    char msg[ERR_BYTES_MAX];
    switch (rc) {
    case TALLY_ETIMEDOUT:
        snprintf(msg, sizeof msg, "query exceeded its time budget of %lld ms",
                 (long long)cfg->query_timeout_ms);
        respond_error(qa, j->ex, j->arrived_us, 503, msg, NULL);
        return;
    case TALLY_ETOOBIG:
        snprintf(msg, sizeof msg, "query exceeded its memory budget of %lld bytes "
                 "(query_memory_bytes_max) or its row budget of %u rows; narrow the date range, "
                 "the dimensions or the filters", (long long)cfg->query_memory_bytes_max,
                 QUERY_API_ROWS_MAX);
        respond_error(qa, j->ex, j->arrived_us, 400, msg, NULL);
        return;
    case TALLY_EINVAL:
    case TALLY_ENOTSUP:
        snprintf(msg, sizeof msg, "%s", err[0] ? err
                 : rc == TALLY_ENOTSUP ? "this query cannot be answered by the plan asked for "
                                         "in X-Tally-Plan" : "invalid query");
        respond_error(qa, j->ex, j->arrived_us, 400, msg, NULL);
        return;
    case TALLY_ENOMEM:
        respond_error(qa, j->ex, j->arrived_us, 503, "out of memory; retry later",
                      "Retry-After: 1\r\n");
        return;
    default:
        diag_error("query on site %s failed: %s%s%s", sc->name, tally_strerror(rc),
                   err[0] ? ": " : "", err);
        snprintf(msg, sizeof msg, "query failed: %s", tally_strerror(rc));
        respond_error(qa, j->ex, j->arrived_us, 500, msg, NULL);
    }
}

static void execute_funnel(struct query_api *qa, struct qjob *j, const struct site_ctx *sc,
                           const struct funnel *f)
{
    const struct tally_config *cfg = qa->app->cfg;
    struct q_budget b = {
        .deadline_ms = timefmt_mono_ms() + cfg->query_timeout_ms,
        .memory_bytes_max = (size_t)cfg->query_memory_bytes_max,
        .rows_max = QUERY_API_ROWS_MAX,
    };
    char *json = NULL;
    size_t len = 0;
    char err[ERR_BYTES_MAX / 2] = "";
    int rc = funnel_execute(qa->app->store, sc->site_id, f, &b, &json, &len, err, sizeof err);
    if (rc == 0) {
        count(qa, 200, j->arrived_us);
        http_exchange_complete(j->ex, 200, "application/json", json, len, NULL);
    } else {
        respond_exec_error(qa, j, sc, rc, "");
    }
    free(json);
}

/* The export's sink: starts the streamed response on the first bytes, so that an error before
 * any output is still an ordinary error response. */
struct export_sink {
    struct query_api *qa;
    struct qjob *j;
    enum export_format fmt;
    struct http_stream *st;
    bool started;
};

static int export_start(struct export_sink *k)
{
    char hdr[160];
    snprintf(hdr, sizeof hdr, "Content-Disposition: attachment; filename=\"export.%s\"\r\n"
             "Cache-Control: no-store\r\n", k->fmt == EXPORT_CSV ? "csv" : "ndjson");
    k->started = true;
    count(k->qa, 200, k->j->arrived_us);
    return http_stream_start(k->j->ex, 200,
                             k->fmt == EXPORT_CSV ? "text/csv; charset=utf-8"
                                                  : "application/x-ndjson",
                             hdr, 0, &k->st);
}

static int export_write(void *arg, const char *data, size_t len)
{
    struct export_sink *k = arg;
    if (!k->started) {
        int rc = export_start(k);
        if (rc) return TALLY_ECLOSED; /* the exchange was completed with 503 */
    }
    /* Waits while the client is slow; a client that stops reading is cut by the HTTP layer
     * after write_timeout_ms, which turns into TALLY_ECLOSED here. */
    return http_stream_write(k->st, data, len, -1);
}

static void execute_export(struct query_api *qa, struct qjob *j, const struct site_ctx *sc,
                           const struct query *q, enum export_format fmt)
{
    const struct tally_config *cfg = qa->app->cfg;
    struct export_sink k = {.qa = qa, .j = j, .fmt = fmt};
    int rc = export_run(qa->app->store, sc->site_id, q, fmt, (size_t)cfg->query_memory_bytes_max,
                        cfg->query_timeout_ms, export_write, &k);
    if (!k.started) {
        if (rc == 0 && (rc = export_start(&k)) != 0) return; /* an empty export */
        if (rc != 0) {
            respond_exec_error(qa, j, sc, rc, "");
            return;
        }
    }
    if (rc == 0) {
        http_stream_finish(k.st);
    } else {
        if (rc != TALLY_ECLOSED)
            diag_warn("export of site %s failed midway: %s", sc->name, tally_strerror(rc));
        http_stream_abort(k.st);
    }
}

/* The answer for a site another node owns (see CLUSTER above); completes j->ex. */
static void forward_job(struct query_api *qa, struct qjob *j, const struct site_ctx *sc)
{
    struct cluster *cl = qa->app->cluster;
    const struct http_request *req = j->req;
    const char *owner = cluster_owner_url(cl, sc->partition);
    char msg[ERR_BYTES_MAX];
    if (http_request_header(req, CLUSTER_FORWARDED_HEADER)) {
        snprintf(msg, sizeof msg, "this node does not own partition %u (site '%s') and the "
                 "request was already forwarded once: the forwarding node's partition_owners "
                 "names the wrong node", sc->partition, sc->name);
        respond_error(qa, j->ex, j->arrived_us, 421, msg, NULL);
        return;
    }
    if (!owner) {
        snprintf(msg, sizeof msg, "no node is configured to answer for partition %u (site '%s'):"
                 " add it to [cluster] partition_owners", sc->partition, sc->name);
        respond_error(qa, j->ex, j->arrived_us, 503, msg, NULL);
        return;
    }
    if (j->kind == QK_EXPORT) {
        char esc_msg[ERR_BYTES_MAX * 2], esc_owner[ERR_BYTES_MAX * 2];
        char body[sizeof esc_msg + sizeof esc_owner + 32];
        snprintf(msg, sizeof msg, "site '%s' (partition %u) is exported by the node that owns "
                 "it: send this request to %s", sc->name, sc->partition, owner);
        http_json_escape(esc_msg, sizeof esc_msg, msg);
        http_json_escape(esc_owner, sizeof esc_owner, owner);
        int n = snprintf(body, sizeof body, "{\"error\": \"%s\", \"owner\": \"%s\"}", esc_msg,
                         esc_owner);
        count(qa, 421, j->arrived_us);
        http_exchange_complete(j->ex, 421, "application/json", body, (size_t)n, NULL);
        return;
    }
    size_t plen = req->path_len + (req->query ? req->query_len + 1 : 0);
    char *pq = malloc(plen + 1);
    if (!pq) {
        respond_error(qa, j->ex, j->arrived_us, 503, "out of memory; retry later",
                      "Retry-After: 1\r\n");
        return;
    }
    memcpy(pq, req->path, req->path_len);
    if (req->query) {
        pq[req->path_len] = '?';
        memcpy(pq + req->path_len + 1, req->query, req->query_len);
    }
    pq[plen] = 0;
    /* HEAD is asked as GET: the answer's length is then the real one */
    const char *method = req->method == HTTP_HEAD ? "GET" : req->method_name;
    struct cluster_response r;
    int rc = cluster_forward(cl, owner, method, pq, http_request_header(req, "authorization"),
                             http_request_header(req, "content-type"), req->body, req->body_len,
                             &r);
    free(pq);
    if (rc != 0 || !r.body) {
        free(r.body);
        respond_error(qa, j->ex, j->arrived_us, 503, "out of memory; retry later",
                      "Retry-After: 1\r\n");
        return;
    }
    count(qa, r.status, j->arrived_us);
    http_exchange_complete(j->ex, r.status, r.content_type[0] ? r.content_type : NULL, r.body,
                           r.body_len, NULL);
    free(r.body);
}

/* Steps 4-7 of the flow; completes j->ex. */
static void run_job(struct query_api *qa, struct qjob *j)
{
    struct site_ctx sc;
    memset(&sc, 0, sizeof sc);
    sc.app = qa->app;
    struct query *q = NULL;
    struct funnel *fn = NULL;
    enum export_format fmt = EXPORT_NDJSON;
    char err[ERR_BYTES_MAX / 2] = "";
    int rc = parse(j, &sc, &q, &fn, &fmt, err, sizeof err);
    if (rc != 0) {
        if (sc.err != 0) {
            char msg[ERR_BYTES_MAX];
            diag_error("query: site lookup failed: %s", tally_strerror(sc.err));
            snprintf(msg, sizeof msg, "site lookup failed: %s", tally_strerror(sc.err));
            respond_error(qa, j->ex, j->arrived_us, 500, msg, NULL);
        } else if (rc == TALLY_ENOENT) {
            respond_error(qa, j->ex, j->arrived_us, 404, err[0] ? err : "unknown site", NULL);
        } else if (rc == TALLY_ENOMEM) {
            respond_error(qa, j->ex, j->arrived_us, 503, "out of memory; retry later",
                          "Retry-After: 1\r\n");
        } else {
            respond_error(qa, j->ex, j->arrived_us, 400, err[0] ? err : "invalid query", NULL);
        }
        return;
    }
    TALLY_ASSERT(sc.known);
    enum key_scope scope = j->global_scope;
    if (sc.cs && sc.cs->key_digests.count > 0) {
        enum key_scope s = key_verify(j->key, j->key_len, NULL, &sc.cs->key_digests);
        if (s > scope) scope = s;
    }
    char msg[ERR_BYTES_MAX];
    if (!key_scope_allows(scope, KEY_SCOPE_READ)) {
        if (scope == KEY_SCOPE_WRITE)
            snprintf(msg, sizeof msg, "this key has write scope; queries need read or admin "
                     "scope");
        else
            snprintf(msg, sizeof msg, "this key is not valid for site '%s'", sc.name);
        respond_error(qa, j->ex, j->arrived_us, 403, msg, NULL);
    } else if (sc.forward) {
        forward_job(qa, j, &sc);
    } else if (j->kind == QK_FUNNEL) {
        execute_funnel(qa, j, &sc, fn);
    } else if (j->kind == QK_EXPORT) {
        execute_export(qa, j, &sc, q, fmt);
    } else {
        enum q_plan plan;
        int status = plan_override(j->req, scope, &plan, msg, sizeof msg);
        if (status != 0)
            respond_error(qa, j->ex, j->arrived_us, status, msg, NULL);
        else
            execute(qa, j, &sc, q, plan);
    }
    if (fn)
        funnel_free(fn); /* owns q */
    else
        query_free(q);
}

static void *worker_main(void *arg)
{
    struct query_api *qa = arg;
    pthread_setname_np(pthread_self(), "tally-query");
    for (;;) {
        pthread_mutex_lock(&qa->mu);
        while (!qa->head && !qa->stop) pthread_cond_wait(&qa->cond, &qa->mu);
        struct qjob *j = pop(qa);
        pthread_mutex_unlock(&qa->mu);
        if (!j) break; /* stop and nothing queued */
        metrics_gauge_add(qa->running, 1);
        run_job(qa, j);
        metrics_gauge_add(qa->running, -1);
        free(j);
    }
    return NULL;
}

/* ---------------------------------------------------------------- handlers (event loop) */

static void on_query(struct http_request *req, struct http_exchange *ex, void *arg)
{
    const struct route_arg *ra = arg;
    struct query_api *qa = ra->qa;
    struct app *app = qa->app;
    int64_t now = mono_us();
    const char *auth = http_request_header(req, "authorization");
    if (!auth) {
        respond_401(qa, ex, now, "missing API key: send Authorization: Bearer KEY");
        return;
    }
    if (strncasecmp(auth, "Bearer ", 7) != 0) {
        respond_401(qa, ex, now, "Authorization must be 'Bearer KEY'");
        return;
    }
    const char *key = auth + 7;
    while (*key == ' ') key++;
    size_t key_len = strlen(key);
    while (key_len > 0 && (key[key_len - 1] == ' ' || key[key_len - 1] == '\t')) key_len--;
    enum key_scope gs = scope_global(app, key, key_len);
    if (gs == KEY_SCOPE_NONE && !matches_some_site(app, key, key_len)) {
        respond_401(qa, ex, now, "invalid API key");
        return;
    }
    if ((ra->kind == QK_FUNNEL || (ra->kind == QK_QUERY && ra->api == Q_API_V2)) &&
        req->body_len > QUERY_BODY_BYTES_MAX) {
        char msg[96];
        snprintf(msg, sizeof msg, "query body larger than %u bytes", QUERY_BODY_BYTES_MAX);
        respond_error(qa, ex, now, 413, msg, NULL);
        return;
    }
    struct qjob *j = calloc(1, sizeof *j);
    if (!j) {
        respond_error(qa, ex, now, 503, "out of memory; retry later", "Retry-After: 1\r\n");
        return;
    }
    *j = (struct qjob){.ex = ex, .req = req, .kind = ra->kind, .api = ra->api, .key = key,
                       .key_len = key_len,
                       .global_scope = gs, .arrived_us = now};
    int rc = push(qa, j);
    if (rc != 0) {
        free(j);
        respond_error(qa, ex, now, 503, rc == TALLY_EFULL ? "query queue full; retry later"
                                                          : "server is shutting down; retry later",
                      "Retry-After: 1\r\n");
    }
}

static int routes(struct query_api *qa)
{
    static const struct {
        unsigned methods;
        const char *path, *name;
        enum q_api api;
        enum qkind kind;
    } defs[] = {
        {HTTP_M(HTTP_POST), "/api/v2/query", "api_v2_query", Q_API_V2, QK_QUERY},
        {HTTP_M(HTTP_GET), "/api/v1/stats/realtime/visitors", "api_v1_realtime",
         Q_API_V1_REALTIME, QK_QUERY},
        {HTTP_M(HTTP_GET), "/api/v1/stats/aggregate", "api_v1_aggregate", Q_API_V1_AGGREGATE,
         QK_QUERY},
        {HTTP_M(HTTP_GET), "/api/v1/stats/timeseries", "api_v1_timeseries",
         Q_API_V1_TIMESERIES, QK_QUERY},
        {HTTP_M(HTTP_GET), "/api/v1/stats/breakdown", "api_v1_breakdown", Q_API_V1_BREAKDOWN,
         QK_QUERY},
        {HTTP_M(HTTP_POST), "/api/v1/funnel", "api_v1_funnel", Q_API_V2, QK_FUNNEL},
        {HTTP_M(HTTP_GET), "/api/v1/export", "api_v1_export", Q_API_V2, QK_EXPORT},
    };
    _Static_assert(TALLY_ARRAY_LEN(defs) == ROUTES, "one route_arg per route");
    for (size_t i = 0; i < TALLY_ARRAY_LEN(defs); i++) {
        qa->route_args[i] = (struct route_arg){qa, defs[i].kind, defs[i].api};
        struct http_route r = {.methods = defs[i].methods, .path = defs[i].path,
                               .name = defs[i].name, .handler = on_query,
                               .arg = &qa->route_args[i]};
        int rc = http_server_route(qa->app->http, &r);
        if (rc != 0) return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- lifecycle */

int query_api_start(struct app *app, struct query_api **out)
{
    *out = NULL;
    struct query_api *qa = calloc(1, sizeof *qa);
    if (!qa) return TALLY_ENOMEM;
    qa->app = app;
    qa->queue_max = (size_t)app->cfg->query_queue_max;
    pthread_mutex_init(&qa->mu, NULL);
    pthread_cond_init(&qa->cond, NULL);
    register_metrics(qa, app->metrics);
    int rc = routes(qa);
    size_t want = (size_t)app->cfg->query_threads;
    qa->threads = rc == 0 ? calloc(want, sizeof(pthread_t)) : NULL;
    if (rc == 0 && !qa->threads) rc = TALLY_ENOMEM;
    for (size_t i = 0; rc == 0 && i < want; i++) {
        if (pthread_create(&qa->threads[i], NULL, worker_main, qa) != 0)
            rc = TALLY_EIO;
        else
            qa->nthreads++;
    }
    *out = qa; /* also on failure: query_api_free joins what started */
    return rc;
}

void query_api_free(struct query_api *qa)
{
    if (!qa) return;
    query_api_quiesce(qa);
    pthread_mutex_lock(&qa->mu);
    qa->stop = true;
    pthread_cond_broadcast(&qa->cond);
    pthread_mutex_unlock(&qa->mu);
    for (size_t i = 0; i < qa->nthreads; i++) pthread_join(qa->threads[i], NULL);
    free(qa->threads);
    pthread_cond_destroy(&qa->cond);
    pthread_mutex_destroy(&qa->mu);
    free(qa);
}
