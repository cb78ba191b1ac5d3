/*
 * Table-driven configuration loader. See config.h for the rules.
 *
 * Invariants:
 *  1. Every key that exists is a row in g_keys (or g_site_keys for [site NAME] sections); nothing
 *     else is accepted.
 *  2. A value is validated (type, bounds) before it replaces the current one; on error the config
 *     keeps its previous value and the first error is reported with file and line.
 *  3. A key given twice in one file is an error (a typo'd duplicate would silently win otherwise).
 */
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tally/error.h"

enum key_type { KT_INT, KT_BOOL, KT_STR, KT_ENUM, KT_LIST };

struct key_def {
    const char *section;
    const char *name;
    enum key_type type;
    size_t offset;
    int64_t min, max;
    const char *def;    /* default, as it would be written in the file */
    const char *unit;
    const char *doc;
    const char *const *enum_names;
};

static const char *const fsync_names[] = {"always", "interval", "none", NULL};
static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const role_names[] = {"all", "ingest", "process", NULL};
static const char *const backend_names[] = {"local", "jetstream", NULL};

#define CO(f) offsetof(struct tally_config, f)
#define SO(f) offsetof(struct config_site, f)
#define KiB 1024LL
#define MiB (1024LL * 1024)
#define GiB (1024LL * 1024 * 1024)

static const struct key_def g_keys[] = {
    {"server", "listen", KT_STR, CO(listen), 0, 0, "127.0.0.1:8080", "host:port",
     "address to serve HTTP on; [::1]:8080 for IPv6", NULL},
    {"server", "threads", KT_INT, CO(threads), 1, 64, "2", "threads",
     "HTTP worker threads, each with its own event loop", NULL},
    {"server", "header_bytes_max", KT_INT, CO(header_bytes_max), 1 * KiB, 1 * MiB, "16384", "bytes",
     "largest request head (request line + headers); larger gets 431", NULL},
    {"server", "header_count_max", KT_INT, CO(header_count_max), 8, 1000, "100", "headers",
     "most header fields in one request; more gets 431", NULL},
    {"server", "url_bytes_max", KT_INT, CO(url_bytes_max), 256, 64 * KiB, "8192", "bytes",
     "longest request target; longer gets 414", NULL},
    {"server", "body_bytes_max", KT_INT, CO(body_bytes_max), 1 * KiB, 256 * MiB, "1048576", "bytes",
     "largest request body as sent; larger gets 413", NULL},
    {"server", "body_decoded_bytes_max", KT_INT, CO(body_decoded_bytes_max), 1 * KiB, 1 * GiB,
     "8388608", "bytes", "largest body after gzip/deflate decoding; larger gets 413", NULL},
    {"server", "head_timeout_ms", KT_INT, CO(head_timeout_ms), 100, 600000, "10000", "ms",
     "total time allowed to receive a request head (slowloris guard)", NULL},
    {"server", "body_timeout_ms", KT_INT, CO(body_timeout_ms), 100, 3600000, "30000", "ms",
     "total time allowed to receive a request body", NULL},
    {"server", "idle_timeout_ms", KT_INT, CO(idle_timeout_ms), 100, 3600000, "60000", "ms",
     "keep-alive connection idle time before it is closed", NULL},
    {"server", "connections_max", KT_INT, CO(connections_max), 1, 1000000, "10000", "connections",
     "open connections; beyond it new ones get 503 and are closed", NULL},
    {"server", "events_per_request_max", KT_INT, CO(events_per_request_max), 1, 100000, "1000",
     "events", "most events in one ingest request; more gets 413", NULL},
    {"server", "rate_limit_per_ip", KT_INT, CO(rate_limit_per_ip), 0, 1000000, "0", "events/s",
     "sustained events per second per client IP for unauthenticated ingest; 0 = off", NULL},
    {"server", "rate_limit_burst", KT_INT, CO(rate_limit_burst), 1, 10000000, "200", "events",
     "events a client IP may send at once before the rate applies", NULL},
    {"server", "trusted_proxies", KT_LIST, CO(trusted_proxies), 0, 0, "", "CIDR list",
     "peers whose X-Forwarded-For is believed (e.g. 127.0.0.1/32, 10.0.0.0/8)", NULL},
    {"server", "auto_sites", KT_BOOL, CO(auto_sites), 0, 0, "true", "bool",
     "create a site on its first event; when false unknown sites get 404", NULL},
    {"server", "cors_origins", KT_LIST, CO(cors_origins), 0, 0, "*", "origin list",
     "origins allowed to send ingest requests from browsers; * = any", NULL},
    {"server", "shutdown_timeout_ms", KT_INT, CO(shutdown_timeout_ms), 0, 60000, "8000", "ms",
     "on SIGTERM, time allowed for in-flight requests before connections are cut", NULL},
    {"server", "log_level", KT_ENUM, CO(log_level), 0, 0, "info", "level",
     "diagnostics level: debug, info, warn, error", level_names},
    {"server", "geoip_db", KT_STR, CO(geoip_db), 0, 0, "", "path",
     "MaxMind-format .mmdb file for country/region/city; empty = no geo", NULL},
    {"server", "query_threads", KT_INT, CO(query_threads), 1, 64, "2", "threads",
     "Stats API query workers (queries run off the HTTP event loops)", NULL},
    {"server", "query_queue_max", KT_INT, CO(query_queue_max), 1, 100000, "64", "queries",
     "Stats API queries waiting for a worker; beyond it queries get 503", NULL},
    {"server", "query_timeout_ms", KT_INT, CO(query_timeout_ms), 10, 3600000, "10000", "ms",
     "time budget of one Stats API query; beyond it the query gets 503", NULL},
    {"server", "query_memory_bytes_max", KT_INT, CO(query_memory_bytes_max), 1 * MiB, 64 * GiB,
     "268435456", "bytes", "memory budget of one Stats API query; beyond it the query gets 400",
     NULL},
    {"server", "query_cache_bytes_max", KT_INT, CO(query_cache_bytes_max), 0, 4 * GiB, "33554432",
     "bytes",
     "answers of whole-day breakdowns (the dashboard's top lists) kept in memory and reused "
     "until a day of their range changes; 0 keeps none",
     NULL},
    {"server", "raw_cache_bytes", KT_INT, CO(raw_cache_bytes), 0, 64 * GiB, "268435456", "bytes",
     "cache of the raw event blocks that ad-hoc queries, funnels and exports scan (filled by "
     "their reads only); 0 shares the store's 16 MiB cache. Takes effect at start",
     NULL},
    {"server", "live_connections_max", KT_INT, CO(live_connections_max), 1, 1000000, "1000",
     "connections", "open GET /api/v1/live WebSockets; beyond it new ones get 503", NULL},
    {"server", "live_events_per_s_max", KT_INT, CO(live_events_per_s_max), 1, 100000, "50",
     "messages/s",
     "events pushed per second on one live WebSocket; the excess is dropped and "
     "counted in a \"dropped\" message",
     NULL},
    {"server", "tracker_path", KT_STR, CO(tracker_path), 0, 0, "/js/script.js", "URL path",
     "another path serving the tracker script (a first-party name ad-blockers do not know); "
     "/js/script.js is always served too",
     NULL},
    {"storage", "data_dir", KT_STR, CO(data_dir), 0, 0, "./data", "path",
     "directory holding the event log, the store and the salts", NULL},
    {"storage", "fsync", KT_ENUM, CO(fsync), 0, 0, "always", "policy",
     "always: fdatasync before acknowledging; interval: ack after write, fdatasync every "
     "fsync_interval_ms (a crash of the machine may lose that window); none: tests only",
     fsync_names},
    {"storage", "fsync_interval_ms", KT_INT, CO(fsync_interval_ms), 1, 60000, "100", "ms",
     "fdatasync period for fsync = interval", NULL},
    {"storage", "segment_bytes", KT_INT, CO(segment_bytes), 1 * MiB, 1 * GiB, "134217728", "bytes",
     "size at which the log rolls to a new segment file", NULL},
    {"storage", "retention_days", KT_INT, CO(retention_days), 0, 36500, "0", "days",
     "delete closed log segments older than this; 0 = keep forever", NULL},
    {"storage", "retention_bytes", KT_INT, CO(retention_bytes), 0, 1LL << 50, "0", "bytes",
     "delete the oldest closed log segments above this total; 0 = no limit", NULL},
    {"storage", "queue_events_max", KT_INT, CO(queue_events_max), 1000, 100000000, "1000000",
     "events", "events waiting for the log writer; beyond it ingest gets 503", NULL},
    {"storage", "queue_bytes_max", KT_INT, CO(queue_bytes_max), 1 * MiB, 4 * GiB, "268435456",
     "bytes", "bytes waiting for the log writer; beyond it ingest gets 503", NULL},
    {"storage", "direct_write_min_bytes", KT_INT, CO(direct_write_min_bytes), 0, 1 * GiB, "524288",
     "bytes",
     "a log write at least this large goes to the disk with O_DIRECT (its 4 KiB-aligned "
     "middle), without a copy into the page cache; smaller ones, and all on a file system "
     "without O_DIRECT, through the cache; 0 = never",
     NULL},
    {"privacy", "salt_rotation_hours", KT_INT, CO(salt_rotation_hours), 1, 168, "24", "hours",
     "visitor-hash salt lifetime; the previous salt is kept, older ones deleted", NULL},
    {"auth", "key_digests", KT_LIST, CO(key_digests), 0, 0, "", "SCOPE:DIGEST list",
     "digests of API keys valid for every site (from `tally key new`)", NULL},
    {"cluster", "role", KT_ENUM, CO(role), 0, 0, "all", "role",
     "all: one node does everything; ingest: validate and publish only (needs jetstream); "
     "process: consume its partitions, store, roll up, answer queries (needs jetstream)",
     role_names},
    {"cluster", "log_backend", KT_ENUM, CO(log_backend), 0, 0, "local", "backend",
     "local: the segmented log in data_dir; jetstream: a NATS JetStream cluster (nats_urls)",
     backend_names},
    {"cluster", "nats_urls", KT_LIST, CO(nats_urls), 0, 0, "nats://127.0.0.1:4222", "URL list",
     "NATS servers to connect to (any of them; the client fails over between them)", NULL},
    {"cluster", "stream_prefix", KT_STR, CO(stream_prefix), 0, 0, "TALLY", "name",
     "JetStream stream names are PREFIX_P<n>, subjects PREFIX.events.<n> (letters, digits, "
     "'-', '_')",
     NULL},
    {"cluster", "partitions", KT_INT, CO(partitions), 1, CONFIG_PARTITIONS_MAX, "16", "partitions",
     "sites are spread over this many streams by a hash of their name; the "
     "same on every node, fixed once data exists",
     NULL},
    {"cluster", "replicas", KT_INT, CO(replicas), 1, 5, "3", "replicas",
     "JetStream replicas of each stream; an event is acknowledged once a quorum stored it", NULL},
    {"cluster", "node_name", KT_STR, CO(node_name), 0, 0, "", "name",
     "this node's name in durable consumer names; empty = the host name and the listen port", NULL},
    {"cluster", "owned_partitions", KT_LIST, CO(owned_partitions), 0, 0, "", "range list",
     "partitions this node consumes (role process or all), e.g. 0-7,12; empty = all", NULL},
    {"cluster", "partition_owners", KT_LIST, CO(partition_owners), 0, 0, "", "RANGE=URL list",
     "which node answers queries for which partitions, e.g. "
     "0-7=http://10.0.0.2:8080, 8-15=http://10.0.0.3:8080; queries for a site owned "
     "elsewhere are forwarded there",
     NULL},
    {"cluster", "stream_max_age_hours", KT_INT, CO(stream_max_age_hours), 0, 876000, "0", "hours",
     "JetStream retention by age (what --rebuild can replay); 0 = keep", NULL},
    {"cluster", "stream_max_bytes", KT_INT, CO(stream_max_bytes), 0, 1LL << 50, "0", "bytes",
     "JetStream retention by size per stream; 0 = no limit", NULL},
    {"cluster", "publish_timeout_ms", KT_INT, CO(publish_timeout_ms), 100, 600000, "5000", "ms",
     "wait this long for JetStream's acknowledgement before answering 503", NULL},
    {"cluster", "publish_pending_max", KT_INT, CO(publish_pending_max), 100, 10000000, "65536",
     "events", "events published and not yet acknowledged; beyond it ingest gets 503", NULL},
    {"cluster", "forward_timeout_ms", KT_INT, CO(forward_timeout_ms), 100, 3600000, "30000", "ms",
     "time limit of a query forwarded to the node owning its site", NULL},
};

static const struct key_def g_site_keys[] = {
    {"site", "timezone", KT_STR, SO(timezone), 0, 0, "UTC", "IANA zone",
     "time zone of the site's day/hour buckets, e.g. Europe/Berlin", NULL},
    {"site", "hosts", KT_LIST, SO(hosts), 0, 0, "", "host list",
     "hosts allowed to send events; empty = the site's name and its subdomains", NULL},
    {"site", "ids", KT_LIST, SO(ids), 0, 0, "", "id list",
     "other identifiers of the site (Umami UUID, GA4 measurement id, Segment write key, ...)",
     NULL},
    {"site", "ga4_api_secret", KT_STR, SO(ga4_api_secret), 0, 0, "", "string",
     "GA4 Measurement Protocol api_secret accepted for this site", NULL},
    {"site", "currency", KT_STR, SO(currency), 0, 0, "EUR", "ISO 4217",
     "currency of the revenue metrics", NULL},
    {"site", "key_digests", KT_LIST, SO(key_digests), 0, 0, "", "SCOPE:DIGEST list",
     "digests of API keys valid for this site only", NULL},
    {"site", "goals", KT_LIST, SO(goals), 0, 0, "", "goal list",
     "goals, e.g. event:Signup, page:/pricing, page:/blog/**", NULL},
    {"site", "retention_days", KT_INT, SO(retention_days), 0, 36500, "0", "days",
     "raw-event retention in the store; 0 = keep", NULL},
};

int config_key_count(void)
{
    return (int)(TALLY_ARRAY_LEN(g_keys) + TALLY_ARRAY_LEN(g_site_keys));
}

const char *config_key_name(int i, const char **section)
{
    const struct key_def *k = i < (int)TALLY_ARRAY_LEN(g_keys)
                                  ? &g_keys[i]
                                  : &g_site_keys[i - (int)TALLY_ARRAY_LEN(g_keys)];
    if (section) *section = k->section;
    return k->name;
}

static void list_free(struct config_list *l)
{
    for (int i = 0; i < l->count; i++) free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

static int list_parse(const char *value, struct config_list *out, char *err)
{
    struct config_list l = {0, NULL};
    const char *p = value;
    while (*p) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        if (b > a) {
            if (l.count >= CONFIG_LIST_ITEMS_MAX) {
                snprintf(err, CONFIG_ERROR_BYTES_MAX, "more than %d items",
                         CONFIG_LIST_ITEMS_MAX);
                list_free(&l);
                return TALLY_EINVAL;
            }
            char **items = realloc(l.items, sizeof(char *) * (size_t)(l.count + 1));
            if (!items) {
                list_free(&l);
                return TALLY_ENOMEM;
            }
            l.items = items;
            l.items[l.count++] = strndup(a, (size_t)(b - a));
        }
        p = comma ? comma + 1 : end;
    }
    list_free(out);
    *out = l;
    return 0;
}

static int parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on") || !strcmp(v, "1")) {
        *out = true;
        return 0;
    }
    if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off") || !strcmp(v, "0")) {
        *out = false;
        return 0;
    }
    return TALLY_EINVAL;
}

/* Applies `value` to the field `k` of the struct at base. Message (without location) in err. */
static int apply_key(const struct key_def *k, void *base, const char *value, char *err)
{
    char *field = (char *)base + k->offset;
    switch (k->type) {
    case KT_INT: {
        errno = 0;
        char *end;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end) {
            snprintf(err, CONFIG_ERROR_BYTES_MAX, "key '%s': '%s' is not an integer (%s)",
                     k->name, value, k->unit);
            return TALLY_EINVAL;
        }
        if (v < k->min || v > k->max) {
            snprintf(err, CONFIG_ERROR_BYTES_MAX,
                     "key '%s': %lld is out of range [%lld, %lld] (%s)", k->name, v,
                     (long long)k->min, (long long)k->max, k->unit);
            return TALLY_EINVAL;
        }
        *(int64_t *)field = v;
        return 0;
    }
    case KT_BOOL:
        if (parse_bool(value, (bool *)field) != 0) {
            snprintf(err, CONFIG_ERROR_BYTES_MAX, "key '%s': '%s' is not a boolean (true/false)",
                     k->name, value);
            return TALLY_EINVAL;
        }
        return 0;
    case KT_STR: {
        char *copy = strdup(value);
        if (!copy) return TALLY_ENOMEM;
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case KT_ENUM:
        for (int i = 0; k->enum_names[i]; i++) {
            if (strcmp(value, k->enum_names[i]) == 0) {
                if (k->offset == CO(log_level) && k->enum_names == level_names) {
                    char *copy = strdup(value);
                    if (!copy) return TALLY_ENOMEM;
                    free(*(char **)field);
                    *(char **)field = copy;
                } else {
                    *(int64_t *)field = i;
                }
                return 0;
            }
        }
        {
            char names[200] = "";
            for (int i = 0; k->enum_names[i]; i++) {
                if (i) strncat(names, ", ", sizeof names - strlen(names) - 1);
                strncat(names, k->enum_names[i], sizeof names - strlen(names) - 1);
            }
            snprintf(err, CONFIG_ERROR_BYTES_MAX, "key '%s': '%s' is not one of: %s", k->name,
                     value, names);
        }
        return TALLY_EINVAL;
    case KT_LIST: {
        char msg[CONFIG_ERROR_BYTES_MAX];
        int rc = list_parse(value, (struct config_list *)field, msg);
        if (rc) snprintf(err, CONFIG_ERROR_BYTES_MAX, "key '%s': %s", k->name, msg);
        return rc;
    }
    }
    return TALLY_EINVAL;
}

static struct config_site *site_get(struct tally_config *cfg, const char *name, char *err)
{
    for (int i = 0; i < cfg->site_count; i++)
        if (strcmp(cfg->sites[i].name, name) == 0) return &cfg->sites[i];
    if (cfg->site_count >= CONFIG_SITES_MAX) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "more than %d sites", CONFIG_SITES_MAX);
        return NULL;
    }
    struct config_site *sites =
        realloc(cfg->sites, sizeof(struct config_site) * (size_t)(cfg->site_count + 1));
    if (!sites) return NULL;
    cfg->sites = sites;
    struct config_site *s = &sites[cfg->site_count];
    memset(s, 0, sizeof *s);
    s->name = strdup(name);
    char tmp[CONFIG_ERROR_BYTES_MAX];
    for (size_t i = 0; i < TALLY_ARRAY_LEN(g_site_keys); i++)
        apply_key(&g_site_keys[i], s, g_site_keys[i].def, tmp);
    cfg->site_count++;
    return s;
}

static int site_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 253) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || c == ':')) return 0;
    }
    return 1;
}

/* Keys seen in the current file, to refuse duplicates: "section\x1fkey". */
struct load_ctx {
    struct tally_config *cfg;
    char first_err[CONFIG_ERROR_BYTES_MAX];
    int failed;
    char **seen;
    int seen_count;
};

static int seen_check(struct load_ctx *lc, const char *section, const char *key)
{
    char buf[600];
    snprintf(buf, sizeof buf, "%s\x1f%s", section, key);
    for (int i = 0; i < lc->seen_count; i++)
        if (strcmp(lc->seen[i], buf) == 0) return 1;
    char **seen = realloc(lc->seen, sizeof(char *) * (size_t)(lc->seen_count + 1));
    if (!seen) return 0;
    lc->seen = seen;
    lc->seen[lc->seen_count++] = strdup(buf);
    return 0;
}

static int set_in(struct tally_config *cfg, const char *section, const char *key,
                  const char *value, char *err)
{
    if (strncmp(section, "site ", 5) == 0 || strcmp(section, "site") == 0) {
        const char *name = section + 4;
        while (*name == ' ') name++;
        if (!site_name_valid(name)) {
            snprintf(err, CONFIG_ERROR_BYTES_MAX,
                     "section [%s]: a site section is [site NAME] with NAME the site's domain",
                     section);
            return TALLY_EINVAL;
        }
        for (size_t i = 0; i < TALLY_ARRAY_LEN(g_site_keys); i++) {
            if (strcmp(g_site_keys[i].name, key) == 0) {
                struct config_site *s = site_get(cfg, name, err);
                if (!s) return TALLY_EINVAL;
                return apply_key(&g_site_keys[i], s, value, err);
            }
        }
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "unknown key '%s' in section [%s]", key, section);
        return TALLY_EINVAL;
    }
    int section_known = 0;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(g_keys); i++) {
        if (strcmp(g_keys[i].section, section) != 0) continue;
        section_known = 1;
        if (strcmp(g_keys[i].name, key) == 0) return apply_key(&g_keys[i], cfg, value, err);
    }
    if (!section_known && strcmp(section, "privacy") != 0 && strcmp(section, "auth") != 0)
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "unknown section [%s] (key '%s')", section, key);
    else
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "unknown key '%s' in section [%s]", key, section);
    return TALLY_EINVAL;
}

static int ini_cb(void *user, const char *section, const char *name, const char *value)
{
    struct load_ctx *lc = user;
    char err[CONFIG_ERROR_BYTES_MAX];
    if (!section[0]) {
        snprintf(err, sizeof err, "key '%s' outside of any section", name);
    } else if (seen_check(lc, section, name)) {
        snprintf(err, sizeof err, "key '%s' given twice in section [%s]", name, section);
    } else if (set_in(lc->cfg, section, name, value, err) == 0) {
        return 1;
    }
    if (!lc->failed) {
        lc->failed = 1;
        snprintf(lc->first_err, sizeof lc->first_err, "%s", err);
    }
    return 0;
}

#define CONFIG_FILE_BYTES_MAX (4u << 20) /* a configuration file */

static void ini_setup(void)
{
    ini_use_stack = false;
    ini_allow_realloc = true;
    ini_max_line = 1 << 20;
    ini_allow_multiline = false;
    ini_stop_on_first_error = true;
}

static int finish_load(struct load_ctx *lc, int rc, const char *name, char *err)
{
    for (int i = 0; i < lc->seen_count; i++) free(lc->seen[i]);
    free(lc->seen);
    if (rc == 0) return 0;
    if (rc == -1) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s: cannot open: %s", name, strerror(errno));
        return TALLY_ENOENT;
    }
    if (rc == -2) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s: out of memory", name);
        return TALLY_ENOMEM;
    }
    if (lc->failed)
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s:%d: %s", name, rc, lc->first_err);
    else
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s:%d: syntax error (expected [section] or "
                 "key = value)", name, rc);
    return TALLY_EINVAL;
}

/* inih calls us only for key = value lines, so a [site NAME] section without keys (a site with
 * every default) would be invisible: declare every site section first, by its header line. */
static int declare_sites(struct tally_config *cfg, const char *text, const char *name,
                         char *err)
{
    int line = 0;
    for (const char *p = text; *p;) {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        line++;
        const char *a = p, *b = p + n;
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        if (b - a > 6 && *a == '[' && b[-1] == ']' && strncmp(a + 1, "site", 4) == 0 &&
            isspace((unsigned char)a[5])) {
            char sname[300];
            const char *x = a + 5, *y = b - 1;
            while (x < y && isspace((unsigned char)*x)) x++;
            while (y > x && isspace((unsigned char)y[-1])) y--;
            size_t len = (size_t)(y - x);
            if (len > 0 && len < sizeof sname) {
                memcpy(sname, x, len);
                sname[len] = 0;
                char e2[CONFIG_ERROR_BYTES_MAX];
                /* invalid names are reported by the key pass, with its message */
                if (site_name_valid(sname) && !site_get(cfg, sname, e2)) {
                    snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s:%d: %s", name, line, e2);
                    return TALLY_EINVAL;
                }
            }
        }
        p = eol ? eol + 1 : p + n;
    }
    return 0;
}

int config_load_file(struct tally_config *cfg, const char *path, char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s: cannot open: %s", path, strerror(errno));
        return TALLY_ENOENT;
    }
    char *text = malloc(CONFIG_FILE_BYTES_MAX + 1);
    size_t n = text ? fread(text, 1, CONFIG_FILE_BYTES_MAX + 1, f) : 0;
    int rerr = ferror(f);
    fclose(f);
    if (!text) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s: out of memory", path);
        return TALLY_ENOMEM;
    }
    if (rerr || n > CONFIG_FILE_BYTES_MAX) {
        free(text);
        snprintf(err, CONFIG_ERROR_BYTES_MAX, rerr ? "%s: cannot read" :
                 "%s: larger than %u bytes", path, (unsigned)CONFIG_FILE_BYTES_MAX);
        return TALLY_EINVAL;
    }
    text[n] = 0;
    int rc = config_load_string(cfg, text, path, err);
    free(text);
    snprintf(cfg->source_path, sizeof cfg->source_path, "%s", path);
    return rc;
}

int config_load_string(struct tally_config *cfg, const char *text, const char *name, char *err)
{
    int rc = declare_sites(cfg, text, name, err);
    if (rc) return rc;
    struct load_ctx lc = {.cfg = cfg};
    ini_setup();
    rc = ini_parse_string(text, ini_cb, &lc);
    return finish_load(&lc, rc, name, err);
}

int config_set(struct tally_config *cfg, const char *section, const char *key, const char *value,
               char *err)
{
    return set_in(cfg, section, key, value, err);
}

struct tally_config *config_new_defaults(void)
{
    struct tally_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) return NULL;
    char err[CONFIG_ERROR_BYTES_MAX];
    for (size_t i = 0; i < TALLY_ARRAY_LEN(g_keys); i++) {
        int rc = apply_key(&g_keys[i], cfg, g_keys[i].def, err);
        TALLY_ASSERT(rc == 0);
    }
    return cfg;
}

static void site_free(struct config_site *s)
{
    free(s->name);
    free(s->timezone);
    free(s->ga4_api_secret);
    free(s->currency);
    list_free(&s->hosts);
    list_free(&s->ids);
    list_free(&s->key_digests);
    list_free(&s->goals);
}

void config_free(struct tally_config *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(g_keys); i++) {
        char *field = (char *)cfg + g_keys[i].offset;
        if (g_keys[i].type == KT_STR || (g_keys[i].type == KT_ENUM && g_keys[i].offset ==
                                                                          CO(log_level)))
            free(*(char **)field);
        else if (g_keys[i].type == KT_LIST)
            list_free((struct config_list *)field);
    }
    for (int i = 0; i < cfg->site_count; i++) site_free(&cfg->sites[i]);
    free(cfg->sites);
    free(cfg);
}

int config_parse_listen(const char *listen, char *host, int *port)
{
    const char *colon;
    size_t hlen;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':') return TALLY_EINVAL;
        hlen = (size_t)(close - listen - 1);
        if (hlen == 0 || hlen > 255) return TALLY_EINVAL;
        memcpy(host, listen + 1, hlen);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon) return TALLY_EINVAL;
        hlen = (size_t)(colon - listen);
        if (hlen == 0 || hlen > 255 || memchr(listen, ':', hlen)) return TALLY_EINVAL;
        memcpy(host, listen, hlen);
    }
    host[hlen] = 0;
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || p < 0 || p > 65535) return TALLY_EINVAL;
    *port = (int)p;
    return 0;
}

static int zone_exists(const char *tz)
{
    if (strcmp(tz, "UTC") == 0) return 1;
    if (strstr(tz, "..") || tz[0] == '/' || !tz[0]) return 0;
    char path[512];
    snprintf(path, sizeof path, "/usr/share/zoneinfo/%s", tz);
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The tracker's extra path must not shadow an API route or contain anything a URL would
 * escape: it is matched against the raw request path. */
static bool tracker_path_valid(const char *p)
{
    size_t n = strlen(p);
    if (n < 2 || n > 200 || p[0] != '/' || p[n - 1] == '/') return false;
    if (!strncmp(p, "/api/", 5) || !strncmp(p, "/v1/", 4) || !strncmp(p, "/dashboard/", 11))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)p[i]) && !strchr("-._~/", p[i])) return false;
    return strstr(p, "//") == NULL && strstr(p, "/.") == NULL;
}

static bool stream_prefix_valid(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > 32) return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)p[i]) && p[i] != '-' && p[i] != '_') return false;
    return true;
}

static int validate_cluster(const struct tally_config *cfg, const char *where, char *err)
{
    char why[CONFIG_ERROR_BYTES_MAX];
    if (cfg->role != CONFIG_ROLE_ALL && cfg->log_backend != CONFIG_LOG_JETSTREAM) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX,
                 "%s: [cluster] role: '%s' needs log_backend = jetstream (a local log is one "
                 "node's)", where, role_names[cfg->role]);
        return TALLY_EINVAL;
    }
    if (!stream_prefix_valid(cfg->stream_prefix)) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX,
                 "%s: [cluster] stream_prefix: '%s' must be 1-32 letters, digits, '-' or '_'",
                 where, cfg->stream_prefix);
        return TALLY_EINVAL;
    }
    if (cfg->log_backend == CONFIG_LOG_JETSTREAM && cfg->nats_urls.count == 0) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s: [cluster] nats_urls is empty", where);
        return TALLY_EINVAL;
    }
    unsigned char set[CONFIG_PARTITIONS_MAX];
    for (int i = 0; i < cfg->owned_partitions.count; i++) {
        const char *it = cfg->owned_partitions.items[i];
        if (config_parse_partition_range(it, strlen(it), cfg->partitions, set, why)) {
            snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s: [cluster] owned_partitions: %s", where,
                     why);
            return TALLY_EINVAL;
        }
    }
    memset(set, 0, sizeof set);
    for (int i = 0; i < cfg->partition_owners.count; i++) {
        const char *it = cfg->partition_owners.items[i];
        const char *eq = strchr(it, '=');
        unsigned char one[CONFIG_PARTITIONS_MAX] = {0};
        if (!eq || (strncmp(eq + 1, "http://", 7) != 0 && strncmp(eq + 1, "https://", 8) != 0)) {
            snprintf(err, CONFIG_ERROR_BYTES_MAX,
                     "%s: [cluster] partition_owners: '%s' is not RANGE=http://host:port", where,
                     it);
            return TALLY_EINVAL;
        }
        if (config_parse_partition_range(it, (size_t)(eq - it), cfg->partitions, one, why)) {
            snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s: [cluster] partition_owners: %s", where,
                     why);
            return TALLY_EINVAL;
        }
        for (int64_t p = 0; p < cfg->partitions; p++) {
            if (one[p] && set[p]) {
                snprintf(err, CONFIG_ERROR_BYTES_MAX,
                         "%s: [cluster] partition_owners: partition %lld has two owners", where,
                         (long long)p);
                return TALLY_EINVAL;
            }
            set[p] |= one[p];
        }
    }
    return 0;
}

int config_validate(const struct tally_config *cfg, char *err)
{
    char host[256];
    int port;
    const char *where = cfg->source_path[0] ? cfg->source_path : "configuration";
    if (config_parse_listen(cfg->listen, host, &port) != 0) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX,
                 "%s: [server] listen: '%s' is not host:port (e.g. 127.0.0.1:8080)", where,
                 cfg->listen);
        return TALLY_EINVAL;
    }
    if (!tracker_path_valid(cfg->tracker_path)) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX,
                 "%s: [server] tracker_path: '%s' must be a path like /js/app.js: it starts with "
                 "/, has only letters, digits and -._~/, at most 200 bytes, and is not under "
                 "/api/ or /v1/", where, cfg->tracker_path);
        return TALLY_EINVAL;
    }
    if (!cfg->data_dir[0]) {
        snprintf(err, CONFIG_ERROR_BYTES_MAX, "%s: [storage] data_dir is empty", where);
        return TALLY_EINVAL;
    }
    for (int i = 0; i < cfg->site_count; i++) {
        const struct config_site *s = &cfg->sites[i];
        if (!zone_exists(s->timezone)) {
            snprintf(err, CONFIG_ERROR_BYTES_MAX,
                     "%s: [site %s] timezone: '%s' is not an IANA time zone", where, s->name,
                     s->timezone);
            return TALLY_EINVAL;
        }
        if (strlen(s->currency) != 3 || !isupper((unsigned char)s->currency[0]) ||
            !isupper((unsigned char)s->currency[1]) || !isupper((unsigned char)s->currency[2])) {
            snprintf(err, CONFIG_ERROR_BYTES_MAX,
                     "%s: [site %s] currency: '%s' is not an ISO 4217 code like EUR", where,
                     s->name, s->currency);
            return TALLY_EINVAL;
        }
        for (int j = 0; j < s->ids.count; j++) {
            const struct config_site *other = config_site_find(cfg, s->ids.items[j]);
            if (other && other != s) {
                snprintf(err, CONFIG_ERROR_BYTES_MAX,
                         "%s: [site %s] ids: '%s' already names site %s", where, s->name,
                         s->ids.items[j], other->name);
                return TALLY_EINVAL;
            }
        }
    }
    return validate_cluster(cfg, where, err);
}

int config_parse_partition_range(const char *item, size_t len, int64_t partitions,
                                 unsigned char *set, char *err)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf) goto bad;
    memcpy(buf, item, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    long a = strtol(buf, &end, 10), b = a;
    if (end == buf || errno) goto bad;
    if (*end == '-') {
        char *s2 = end + 1;
        b = strtol(s2, &end, 10);
        if (end == s2 || errno) goto bad;
    }
    if (*end || a < 0 || b < a || b >= partitions) goto bad;
    for (long i = a; i <= b; i++) set[i] = 1;
    return 0;
bad:
    snprintf(err, CONFIG_ERROR_BYTES_MAX,
             "'%.*s' is not a partition N or range FIRST-LAST within 0-%lld", (int)(len > 60 ? 60 : len),
             item, (long long)partitions - 1);
    return TALLY_EINVAL;
}

const struct config_site *config_site_find(const struct tally_config *cfg, const char *name_or_id)
{
    for (int i = 0; i < cfg->site_count; i++)
        if (strcmp(cfg->sites[i].name, name_or_id) == 0) return &cfg->sites[i];
    for (int i = 0; i < cfg->site_count; i++)
        for (int j = 0; j < cfg->sites[i].ids.count; j++)
            if (strcmp(cfg->sites[i].ids.items[j], name_or_id) == 0) return &cfg->sites[i];
    return NULL;
}

static void print_table(FILE *out, const struct key_def *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct key_def *k = &keys[i];
        fprintf(out, "  %-24s %-14s default %s", k->name, k->unit,
                k->def[0] ? k->def : "(empty)");
        if (k->type == KT_INT) fprintf(out, ", range [%lld, %lld]", (long long)k->min,
                                       (long long)k->max);
        fprintf(out, "\n      %s\n", k->doc);
    }
}

void config_print_keys(FILE *out)
{
    const char *section = "";
    for (size_t i = 0; i < TALLY_ARRAY_LEN(g_keys); i++) {
        if (strcmp(section, g_keys[i].section) != 0) {
            section = g_keys[i].section;
            fprintf(out, "[%s]\n", section);
        }
        print_table(out, &g_keys[i], 1);
    }
    fprintf(out, "[site NAME]\n");
    print_table(out, g_site_keys, TALLY_ARRAY_LEN(g_site_keys));
}
