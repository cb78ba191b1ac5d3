/*
 * cluster: partitions, owners, query forwarding and the shared salts (design in cluster.h).
 *
 * OWNERSHIP TABLE. Built once at open from owned_partitions and partition_owners (already
 * checked by config_validate): owned[p] and owner[p] (a pointer into the owner URLs, trailing
 * '/' removed). Immutable afterwards, so any thread may look up.
 *
 * FORWARDING. One libcurl easy handle per thread (a pthread key, cleaned up at thread exit),
 * reset before every request so that nothing of the previous one leaks into the next, while
 * its connection cache (keep-alive connections to the owners) survives the reset. curl never
 * uses signals (CURLOPT_NOSIGNAL: the process is multi-threaded), never follows redirects, only
 * speaks http/https, and the answer is buffered up to CLUSTER_FORWARD_BODY_BYTES_MAX.
 *
 * SHARED SALTS. Bucket "<prefix>_SALTS" (history 1, replicas as the streams), keys:
 *     idkey     16 bytes: the id key of client-supplied ids (visitor.h)
 *     day.<n>   16 bytes: the salt of UTC day n (days since 1970-01-01, decimal, may be < 0)
 * A value of any other length is refused (TALLY_EIO, logged): no node hashes with it.
 * A sync reads idkey and day.<today-1 .. today+1>; a missing idkey, today's or tomorrow's salt
 * is created with kvStore_Create, which succeeds for exactly one node (the others fail and read
 * the winner's value); yesterday's is never created (as visitor.c's local rule). Everything is
 * read before anything is adopted, so a failed sync leaves the visitor_salts as they were.
 * Once per UTC day (and at the first sync) every day.<n> with n < today-1 is purged: its
 * subject ("$KV.<bucket>.day.<n>") is purged from the bucket's stream ("KV_<bucket>"), the
 * key-value layout every NATS client shares, which removes the salt and leaves no marker behind
 * (kvStore_PurgeDeletes, which would remove kvStore_Purge's markers, leaks in libnats 3.4.1).
 * A sync reads the bucket when the UTC day changed since the last successful one, when it is
 * for another visitor_salts, or CLUSTER_SALTS_READ_INTERVAL_MS after the last read; after a
 * failure it retries every CLUSTER_SALTS_RETRY_MS, and the calls in between change nothing and
 * return 0 (the failure itself was returned and logged once per attempt).
 */
#include "app/cluster.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "core/diag.h"
#include "http/http_server.h"
#include "ingest/timefmt.h"
#include "ingest/visitor.h"
#include "tally/error.h"

#define CLUSTER_CONNECT_TIMEOUT_MS 30000       /* open: connect + bucket, JetStream leader */
#define CLUSTER_NATS_REQUEST_TIMEOUT_MS 5000   /* one KV request */
#define CLUSTER_SALTS_READ_INTERVAL_MS 60000   /* re-read the bucket at most this often */
#define CLUSTER_SALTS_RETRY_MS 5000            /* after a failed sync */
#define CLUSTER_SALTS_MSG_BYTES_MAX 1024       /* the bucket's max message size (headers too) */
#define CLUSTER_URL_BYTES_MAX 2048             /* base URL + path and query */
#define CLUSTER_HEADER_BYTES_MAX 8192          /* one forwarded header line */
#define CLUSTER_ERR_BYTES 256

struct cluster {
    const struct tally_config *cfg; /* borrowed */
    uint32_t partitions;
    unsigned char owned[CONFIG_PARTITIONS_MAX];
    const char *owner[CONFIG_PARTITIONS_MAX]; /* into urls; NULL: none configured */
    char **urls;
    int url_count;

    /* Shared salts (log_backend = jetstream): main thread only. */
    natsConnection *nc;
    jsCtx *js;
    kvStore *kv;
    char bucket[64];
    const struct visitor_salts *synced_into; /* the last successful sync's target */
    int64_t synced_day;                      /* its UTC day */
    bool failed;                             /* the last sync failed: retrying */
    int64_t next_read_ms;                    /* wall clock: the next read is due */
    int64_t purged_day;                      /* the day old salts were last purged */
};

/* ---- partitions and owners ------------------------------------------------------------------ */

uint32_t cluster_partition_of(const char *site, size_t len, uint32_t partitions)
{
    TALLY_ASSERT(partitions > 0);
    return (uint32_t)(XXH64(site, len, 0) % partitions);
}

bool cluster_owns(const struct cluster *c, uint32_t p)
{
    return p < c->partitions && c->owned[p];
}

const char *cluster_owner_url(const struct cluster *c, uint32_t p)
{
    return p < c->partitions ? c->owner[p] : NULL;
}

uint32_t cluster_partitions(const struct cluster *c)
{
    return c->partitions;
}

static int build_table(struct cluster *c, const struct tally_config *cfg, char *err)
{
    char why[CONFIG_ERROR_BYTES_MAX];
    c->partitions = (uint32_t)cfg->partitions;
    bool consumes = cfg->role != CONFIG_ROLE_INGEST;
    memset(c->owned, consumes && cfg->owned_partitions.count == 0 ? 1 : 0, sizeof c->owned);
    for (int i = 0; consumes && i < cfg->owned_partitions.count; i++) {
        const char *it = cfg->owned_partitions.items[i];
        if (config_parse_partition_range(it, strlen(it), cfg->partitions, c->owned, why)) {
            snprintf(err, CLUSTER_ERR_BYTES, "owned_partitions: %s", why);
            return TALLY_EINVAL;
        }
    }
    if (cfg->partition_owners.count > 0) {
        c->urls = calloc((size_t)cfg->partition_owners.count, sizeof *c->urls);
        if (!c->urls) return TALLY_ENOMEM;
    }
    for (int i = 0; i < cfg->partition_owners.count; i++) {
        const char *it = cfg->partition_owners.items[i];
        const char *eq = strchr(it, '=');
        unsigned char one[CONFIG_PARTITIONS_MAX] = {0};
        if (!eq || config_parse_partition_range(it, (size_t)(eq - it), cfg->partitions, one,
                                                why)) {
            snprintf(err, CLUSTER_ERR_BYTES, "partition_owners: '%.100s' is not RANGE=URL", it);
            return TALLY_EINVAL;
        }
        const char *url = eq + 1;
        while (*url == ' ' || *url == '\t') url++;
        size_t n = strlen(url);
        while (n > 0 && (url[n - 1] == '/' || url[n - 1] == ' ' || url[n - 1] == '\t')) n--;
        if (n == 0 || n > CLUSTER_URL_BYTES_MAX / 2 || strpbrk(url, "\r\n")) {
            snprintf(err, CLUSTER_ERR_BYTES, "partition_owners: '%.100s': bad URL", it);
            return TALLY_EINVAL;
        }
        if (!(c->urls[c->url_count] = strndup(url, n))) return TALLY_ENOMEM;
        for (int64_t p = 0; p < cfg->partitions; p++)
            if (one[p]) c->owner[p] = c->urls[c->url_count];
        c->url_count++;
    }
    return TALLY_OK;
}

/* ---- libcurl, per thread -------------------------------------------------------------------- */

static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_curl_key;
static int g_curl_err = TALLY_OK;

static void curl_handle_free(void *h)
{
    curl_easy_cleanup(h);
}

static void curl_init_once(void)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        g_curl_err = TALLY_EIO;
        return;
    }
    if (pthread_key_create(&g_curl_key, curl_handle_free) != 0) g_curl_err = TALLY_ENOMEM;
}

/* The calling thread's easy handle (created on first use), or NULL. */
static CURL *thread_curl(void)
{
    if (g_curl_err != TALLY_OK) return NULL;
    CURL *h = pthread_getspecific(g_curl_key);
    if (h) return h;
    h = curl_easy_init();
    if (h && pthread_setspecific(g_curl_key, h) != 0) {
        curl_easy_cleanup(h);
        h = NULL;
    }
    return h;
}

/* ---- shared salts: NATS --------------------------------------------------------------------- */

static void nats_why(char *err, const char *what, natsStatus st)
{
    const char *last = nats_GetLastError(NULL);
    snprintf(err, CLUSTER_ERR_BYTES, "%s: %s%s%s", what, natsStatus_GetText(st),
             last && last[0] ? ": " : "", last && last[0] ? last : "");
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Connects and binds (or creates) the bucket, retrying until CLUSTER_CONNECT_TIMEOUT_MS. */
static int salts_open(struct cluster *c, const struct tally_config *cfg, char *err)
{
    snprintf(c->bucket, sizeof c->bucket, "%s_SALTS", cfg->stream_prefix);
    int64_t deadline = timefmt_mono_ms() + CLUSTER_CONNECT_TIMEOUT_MS;
    natsOptions *o = NULL;
    natsStatus st = natsOptions_Create(&o);
    if (st == NATS_OK)
        st = natsOptions_SetServers(o, (const char **)cfg->nats_urls.items,
                                    cfg->nats_urls.count);
    if (st == NATS_OK) st = natsOptions_SetName(o, "tally-salts");
    if (st == NATS_OK) st = natsOptions_SetTimeout(o, 2000);
    if (st == NATS_OK) st = natsOptions_SetMaxReconnect(o, -1); /* forever */
    if (st == NATS_OK) st = natsOptions_SetReconnectWait(o, 500);
    if (st != NATS_OK) {
        nats_why(err, "NATS options", st);
        natsOptions_Destroy(o);
        return TALLY_EINVAL;
    }
    for (;;) {
        st = natsConnection_Connect(&c->nc, o);
        if (st == NATS_OK || timefmt_mono_ms() >= deadline) break;
        sleep_ms(250);
    }
    natsOptions_Destroy(o);
    if (st != NATS_OK) {
        nats_why(err, "cannot connect to NATS", st);
        return TALLY_EIO;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = CLUSTER_NATS_REQUEST_TIMEOUT_MS;
    if ((st = natsConnection_JetStream(&c->js, c->nc, &jo)) != NATS_OK) {
        nats_why(err, "JetStream context", st);
        return TALLY_EIO;
    }
    for (;;) {
        st = js_KeyValue(&c->kv, c->js, c->bucket);
        if (st == NATS_NOT_FOUND) {
            kvConfig kc;
            kvConfig_Init(&kc);
            kc.Bucket = c->bucket;
            kc.Description = "Tally: shared visitor id key and daily salts";
            kc.History = 1;
            kc.Replicas = (int)cfg->replicas;
            kc.StorageType = js_FileStorage;
            kc.MaxValueSize = CLUSTER_SALTS_MSG_BYTES_MAX;
            st = js_CreateKeyValue(&c->kv, c->js, &kc);
            if (st == NATS_OK) diag_info("cluster: created the salts bucket %s", c->bucket);
        }
        if (st == NATS_OK) return TALLY_OK;
        if (timefmt_mono_ms() >= deadline) break;
        sleep_ms(250); /* no JetStream leader yet, or another node created the bucket */
    }
    nats_why(err, "cannot open the salts bucket", st);
    return TALLY_EIO;
}

/* Reads key's 16-byte value into out; when absent and create is set, creates it with a random
 * value (the winner's value when another node created it first). 0, TALLY_ENOENT (absent, not
 * created), TALLY_EIO. */
static int kv_salt(struct cluster *c, const char *key, bool create, uint8_t out[16])
{
    char why[CLUSTER_ERR_BYTES] = "";
    for (int attempt = 0; attempt < 2; attempt++) {
        kvEntry *e = NULL;
        natsStatus st = kvStore_Get(&e, c->kv, key);
        if (st == NATS_OK) {
            int len = kvEntry_ValueLen(e);
            if (len != VISITOR_SALT_BYTES) {
                kvEntry_Destroy(e);
                diag_error("cluster: %s/%s holds %d bytes, not %d: refusing to hash with it "
                           "(purge the key to have it re-created)", c->bucket, key, len,
                           VISITOR_SALT_BYTES);
                return TALLY_EIO;
            }
            memcpy(out, kvEntry_Value(e), VISITOR_SALT_BYTES);
            kvEntry_Destroy(e);
            return TALLY_OK;
        }
        if (st != NATS_NOT_FOUND) {
            nats_why(why, key, st);
            diag_warn("cluster: cannot read %s/%s", c->bucket, why);
            return TALLY_EIO;
        }
        if (!create) return TALLY_ENOENT;
        if (attempt > 0) break; /* created by nobody, found by nobody */
        uint8_t fresh[VISITOR_SALT_BYTES];
        randombytes_buf(fresh, sizeof fresh);
        uint64_t rev = 0;
        st = kvStore_Create(&rev, c->kv, key, fresh, (int)sizeof fresh);
        if (st == NATS_OK) {
            memcpy(out, fresh, sizeof fresh);
            sodium_memzero(fresh, sizeof fresh);
            diag_info("cluster: created %s/%s", c->bucket, key);
            return TALLY_OK;
        }
        sodium_memzero(fresh, sizeof fresh);
        nats_why(why, key, st); /* most likely another node won the race: read its value */
    }
    diag_warn("cluster: cannot create %s/%s", c->bucket, why);
    return TALLY_EIO;
}

/* Purges every day.<n> with n < today - 1. Failures are logged and retried the next day. The
 * keys come from the bucket stream's subject list (stream info with a subject filter), not
 * from kvStore_Keys: that one reads through a watcher subscription which libnats 3.4 destroys
 * under its own read loop (the race of nats.c #637, see jslog.c). A subject that holds only a
 * delete or purge marker is listed too, and purged with the rest (no marker is left). */
static int purge_old_days(struct cluster *c, int64_t today)
{
    char stream[96], filter[160];
    snprintf(stream, sizeof stream, "KV_%s", c->bucket);
    snprintf(filter, sizeof filter, "$KV.%s.day.>", c->bucket);
    const size_t prefix = strlen(filter) - 5; /* "$KV.<bucket>." */
    jsOptions io;
    jsOptions_Init(&io);
    io.Wait = CLUSTER_NATS_REQUEST_TIMEOUT_MS;
    io.Stream.Info.SubjectsFilter = filter;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetStreamInfo(&si, c->js, stream, &io, &jerr);
    if (st != NATS_OK) {
        char why[CLUSTER_ERR_BYTES];
        nats_why(why, "subjects", st);
        diag_warn("cluster: cannot list %s: %s", c->bucket, why);
        jsStreamInfo_Destroy(si);
        return TALLY_EIO;
    }
    int rc = TALLY_OK, purged = 0;
    const jsStreamStateSubjects *subs = si ? si->State.Subjects : NULL;
    for (int i = 0; subs && i < subs->Count; i++) {
        const char *subject = subs->List[i].Subject;
        if (!subject || strlen(subject) <= prefix || strncmp(subject, filter, prefix) != 0)
            continue;
        const char *k = subject + prefix;
        if (strncmp(k, "day.", 4) != 0) continue;
        char *end;
        long long day = strtoll(k + 4, &end, 10);
        if (end == k + 4 || *end || day >= today - 1) continue;
        jsOptions o;
        jsOptions_Init(&o);
        o.Wait = CLUSTER_NATS_REQUEST_TIMEOUT_MS;
        o.Stream.Purge.Subject = subject;
        jerr = 0;
        if ((st = js_PurgeStream(c->js, stream, &o, &jerr)) != NATS_OK) {
            char why[CLUSTER_ERR_BYTES];
            nats_why(why, k, st);
            diag_warn("cluster: cannot purge %s/%s", c->bucket, why);
            rc = TALLY_EIO;
        } else {
            purged++;
        }
    }
    jsStreamInfo_Destroy(si);
    if (purged > 0) diag_info("cluster: purged %d old salt(s) from %s", purged, c->bucket);
    return rc;
}

static int salts_read_and_adopt(struct cluster *c, struct visitor_salts *s, int64_t now_ms)
{
    int64_t today = timefmt_day_of_ms(now_ms);
    if (natsConnection_Status(c->nc) != NATS_CONN_STATUS_CONNECTED) {
        diag_warn("cluster: not connected to NATS; the shared salts cannot be read");
        return TALLY_EIO;
    }
    uint8_t key[VISITOR_SALT_BYTES];
    uint8_t salts[VISITOR_SALT_DAYS_MAX][VISITOR_SALT_BYTES];
    int64_t days[VISITOR_SALT_DAYS_MAX];
    size_t n = 0;
    int rc = kv_salt(c, "idkey", true, key);
    for (int64_t d = today - 1; rc == TALLY_OK && d <= today + 1; d++) {
        char name[32];
        snprintf(name, sizeof name, "day.%" PRId64, d);
        rc = kv_salt(c, name, d >= today, salts[n]);
        if (rc == TALLY_OK)
            days[n++] = d;
        else if (rc == TALLY_ENOENT)
            rc = TALLY_OK; /* no salt of yesterday: never created afresh */
    }
    if (rc == TALLY_OK) rc = visitor_salts_adopt(s, key, days, (const uint8_t(*)[16])salts, n,
                                                 now_ms);
    sodium_memzero(key, sizeof key);
    sodium_memzero(salts, sizeof salts);
    if (rc != TALLY_OK) return rc == TALLY_EINVAL ? TALLY_EIO : rc;
    if (c->purged_day != today && purge_old_days(c, today) == TALLY_OK) c->purged_day = today;
    return TALLY_OK;
}

int cluster_salts_sync(struct cluster *c, struct visitor_salts *s, int64_t now_ms)
{
    if (!c->kv) return visitor_salts_rotate(s, now_ms);
    int64_t today = timefmt_day_of_ms(now_ms);
    /* a wall clock set back by more than the interval must not stop the reads */
    bool due = now_ms >= c->next_read_ms ||
               c->next_read_ms - now_ms > CLUSTER_SALTS_READ_INTERVAL_MS;
    bool fresh = c->synced_into == s && c->synced_day == today;
    if (!due && (fresh || c->failed)) return TALLY_OK; /* fresh, or waiting to retry */
    int rc = salts_read_and_adopt(c, s, now_ms);
    if (rc != TALLY_OK) {
        c->failed = true;
        c->next_read_ms = now_ms + CLUSTER_SALTS_RETRY_MS;
        return TALLY_EIO;
    }
    c->failed = false;
    c->synced_into = s;
    c->synced_day = today;
    c->next_read_ms = now_ms + CLUSTER_SALTS_READ_INTERVAL_MS;
    return TALLY_OK;
}

/* ---- open / close --------------------------------------------------------------------------- */

int cluster_open(const struct tally_config *cfg, struct cluster **out, char *err)
{
    *out = NULL;
    err[0] = 0;
    if (cfg->partitions < 1 || cfg->partitions > CONFIG_PARTITIONS_MAX) {
        snprintf(err, CLUSTER_ERR_BYTES, "partitions must be 1-%d", CONFIG_PARTITIONS_MAX);
        return TALLY_EINVAL;
    }
    pthread_once(&g_curl_once, curl_init_once);
    if (g_curl_err != TALLY_OK) {
        snprintf(err, CLUSTER_ERR_BYTES, "cannot initialise libcurl");
        return g_curl_err;
    }
    if (sodium_init() < 0) {
        snprintf(err, CLUSTER_ERR_BYTES, "cannot initialise libsodium");
        return TALLY_EIO;
    }
    struct cluster *c = calloc(1, sizeof *c);
    if (!c) return TALLY_ENOMEM;
    c->cfg = cfg;
    c->synced_day = INT64_MIN;
    c->purged_day = INT64_MIN;
    int rc = build_table(c, cfg, err);
    if (rc == TALLY_OK && cfg->log_backend == CONFIG_LOG_JETSTREAM) rc = salts_open(c, cfg, err);
    if (rc != TALLY_OK) {
        if (rc == TALLY_ENOMEM && !err[0]) snprintf(err, CLUSTER_ERR_BYTES, "out of memory");
        cluster_close(c);
        return rc;
    }
    *out = c;
    return TALLY_OK;
}

void cluster_close(struct cluster *c)
{
    if (!c) return;
    kvStore_Destroy(c->kv);
    jsCtx_Destroy(c->js);
    if (c->nc) {
        natsConnection_Close(c->nc);
        natsConnection_Destroy(c->nc);
    }
    for (int i = 0; i < c->url_count; i++) free(c->urls[i]);
    free(c->urls);
    free(c);
}

/* ---- forwarding ----------------------------------------------------------------------------- */

struct body_sink {
    char *buf;
    size_t len, cap;
    bool too_big;
};

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
    struct body_sink *k = arg;
    size_t add = size * nmemb;
    if (add > CLUSTER_FORWARD_BODY_BYTES_MAX - k->len) {
        k->too_big = true;
        return 0; /* CURLE_WRITE_ERROR */
    }
    if (k->len + add + 1 > k->cap) {
        size_t cap = k->cap ? k->cap : 4096;
        while (cap < k->len + add + 1) cap *= 2;
        if (cap > CLUSTER_FORWARD_BODY_BYTES_MAX + 1) cap = CLUSTER_FORWARD_BODY_BYTES_MAX + 1;
        char *nb = realloc(k->buf, cap);
        if (!nb) return 0;
        k->buf = nb;
        k->cap = cap;
    }
    memcpy(k->buf + k->len, p, add);
    k->len += add;
    k->buf[k->len] = 0;
    return add;
}

/* Fills out with status and {"error": "<printf>"}. 0 or TALLY_ENOMEM. */
__attribute__((format(printf, 3, 4)))
static int fail_response(struct cluster_response *out, int status, const char *fmt, ...)
{
    char msg[512], esc[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    http_json_escape(esc, sizeof esc, msg);
    size_t cap = strlen(esc) + 16;
    free(out->body);
    out->body = malloc(cap);
    out->status = status;
    snprintf(out->content_type, sizeof out->content_type, "application/json");
    if (!out->body) {
        out->body_len = 0;
        return TALLY_ENOMEM;
    }
    out->body_len = (size_t)snprintf(out->body, cap, "{\"error\": \"%s\"}", esc);
    return TALLY_OK;
}

/* Appends "Name: value" to *list; false on OOM. value must be free of CR/LF. */
static bool add_header(struct curl_slist **list, const char *name, const char *value)
{
    char line[CLUSTER_HEADER_BYTES_MAX];
    int n = snprintf(line, sizeof line, "%s: %s", name, value);
    if (n < 0 || (size_t)n >= sizeof line) return false;
    struct curl_slist *l = curl_slist_append(*list, line);
    if (!l) return false;
    *list = l;
    return true;
}

static bool header_ok(const char *v)
{
    return !v || (strlen(v) < CLUSTER_HEADER_BYTES_MAX - 64 && !strpbrk(v, "\r\n"));
}

int cluster_forward(struct cluster *c, const char *base_url, const char *method,
                    const char *path_and_query, const char *authorization,
                    const char *content_type, const void *body, size_t body_len,
                    struct cluster_response *out)
{
    memset(out, 0, sizeof *out);
    char url[CLUSTER_URL_BYTES_MAX];
    int un = snprintf(url, sizeof url, "%s%s", base_url, path_and_query);
    if (un < 0 || (size_t)un >= sizeof url)
        return fail_response(out, 502, "the forwarded URL is longer than %d bytes",
                             CLUSTER_URL_BYTES_MAX);
    if (!header_ok(authorization) || !header_ok(content_type) || strpbrk(url, " \r\n"))
        return fail_response(out, 502, "the request cannot be forwarded (bad header or URL)");
    CURL *h = thread_curl();
    if (!h) return fail_response(out, 502, "cannot forward: libcurl is not available");
    curl_easy_reset(h); /* keeps the connection cache */

    struct curl_slist *hdrs = NULL;
    bool ok = add_header(&hdrs, CLUSTER_FORWARDED_HEADER, "1");
    if (ok && authorization) ok = add_header(&hdrs, "Authorization", authorization);
    /* "Content-Type:" with nothing removes curl's default form type */
    if (ok) ok = content_type ? add_header(&hdrs, "Content-Type", content_type)
                              : (hdrs = curl_slist_append(hdrs, "Content-Type:")) != NULL;
    if (ok) ok = (hdrs = curl_slist_append(hdrs, "Expect:")) != NULL; /* no 100-continue */
    if (!ok) {
        curl_slist_free_all(hdrs);
        return TALLY_ENOMEM;
    }

    struct body_sink sink = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    long timeout_ms = (long)c->cfg->forward_timeout_ms;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "tally-forward");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    if (!strcmp(method, "GET")) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else if (!strcmp(method, "HEAD")) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(method, "POST") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? (const char *)body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }

    CURLcode cc = curl_easy_perform(h);
    long status = 0;
    const char *ct = NULL;
    if (cc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct);
    }
    int rc;
    if (cc == CURLE_OPERATION_TIMEDOUT) {
        rc = fail_response(out, 504, "the node owning this site (%s) did not answer within "
                           "%ld ms", base_url, timeout_ms);
    } else if (cc == CURLE_WRITE_ERROR && sink.too_big) {
        rc = fail_response(out, 502, "the answer of the node owning this site (%s) is larger "
                           "than %u bytes", base_url, CLUSTER_FORWARD_BODY_BYTES_MAX);
    } else if (cc != CURLE_OK) {
        rc = fail_response(out, 502, "cannot reach the node owning this site (%s): %s", base_url,
                           errbuf[0] ? errbuf : curl_easy_strerror(cc));
    } else if (status < 200 || status > 599 ||
               (ct && (strlen(ct) >= sizeof out->content_type || strpbrk(ct, "\r\n")))) {
        rc = fail_response(out, 502, "the node owning this site (%s) answered garbage",
                           base_url);
    } else {
        out->status = (int)status;
        snprintf(out->content_type, sizeof out->content_type, "%s", ct ? ct : "");
        if (!sink.buf) sink.buf = calloc(1, 1);
        out->body = sink.buf;
        out->body_len = sink.len;
        sink.buf = NULL;
        rc = out->body ? TALLY_OK : TALLY_ENOMEM;
    }
    if (cc != CURLE_OK) /* the path without the query string */
        diag_warn("cluster: forwarding %s %s%.*s failed: %s", method, base_url,
                  (int)strcspn(path_and_query, "?"), path_and_query,
                  errbuf[0] ? errbuf : curl_easy_strerror(cc));
    free(sink.buf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(hdrs);
    return rc;
}
