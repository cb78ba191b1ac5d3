/*
 * config: Tally's configuration, loaded from the embedded defaults, then an INI file, then
 * command-line flags (each overrides the one before).
 *
 * The loader is table-driven: every key is one row (section, name, type, bounds, default, unit,
 * doc line) in config.c. The same table sets the defaults, validates values, and prints the
 * documented key list (`tally --help-config`). Unknown sections or keys, duplicate keys, and
 * values out of range are errors that name the file, the line and the key.
 *
 * Ownership: struct tally_config and everything it points to is owned by the config; free it with
 * config_free(). After loading, the config is read-only and may be read from any thread.
 */
#ifndef TALLY_CONFIG_H
#define TALLY_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_SITES_MAX 4096
#define CONFIG_LIST_ITEMS_MAX 256
#define CONFIG_ERROR_BYTES_MAX 512

enum config_fsync { CONFIG_FSYNC_ALWAYS = 0, CONFIG_FSYNC_INTERVAL = 1, CONFIG_FSYNC_NONE = 2 };
enum config_role { CONFIG_ROLE_ALL = 0, CONFIG_ROLE_INGEST = 1, CONFIG_ROLE_PROCESS = 2 };
enum config_log_backend { CONFIG_LOG_LOCAL = 0, CONFIG_LOG_JETSTREAM = 1 };
#define CONFIG_PARTITIONS_MAX 1024

/* A comma-separated list; items trimmed, empty items dropped. */
struct config_list {
    int count;
    char **items;
};

struct config_site {
    char *name;          /* the site's domain, from [site NAME] */
    char *timezone;      /* IANA name, default "UTC" */
    struct config_list hosts;
    struct config_list ids;
    char *ga4_api_secret;
    char *currency;      /* ISO 4217, default "EUR" */
    struct config_list key_digests;
    struct config_list goals;
    int64_t retention_days; /* raw-event retention; 0 = keep */
};

struct tally_config {
    /* [server] */
    char *listen;                   /* "host:port" */
    int64_t threads;
    int64_t header_bytes_max;
    int64_t header_count_max;
    int64_t url_bytes_max;
    int64_t body_bytes_max;
    int64_t body_decoded_bytes_max;
    int64_t head_timeout_ms;
    int64_t body_timeout_ms;
    int64_t idle_timeout_ms;
    int64_t connections_max;
    int64_t events_per_request_max;
    int64_t rate_limit_per_ip;
    int64_t rate_limit_burst;
    struct config_list trusted_proxies;
    bool auto_sites;
    struct config_list cors_origins;
    int64_t shutdown_timeout_ms;
    char *log_level;
    char *geoip_db;
    int64_t query_threads;
    int64_t query_queue_max;
    int64_t query_timeout_ms;
    int64_t query_memory_bytes_max;
    int64_t query_cache_bytes_max;  /* answers of day-range breakdowns kept (store/memo.h) */
    int64_t raw_cache_bytes;        /* the raw store's own block cache (store.h) */
    char *tracker_path;             /* extra first-party path of the tracker script */
    int64_t live_connections_max;   /* GET /api/v1/live WebSockets open at once */
    int64_t live_events_per_s_max;  /* events pushed per second per live WebSocket */
    /* [storage] */
    char *data_dir;
    int64_t fsync;                  /* enum config_fsync */
    int64_t fsync_interval_ms;
    int64_t segment_bytes;
    int64_t retention_days;
    int64_t retention_bytes;
    int64_t queue_events_max;
    int64_t queue_bytes_max;
    int64_t direct_write_min_bytes;
    /* [privacy] */
    int64_t salt_rotation_hours;
    /* [auth] */
    struct config_list key_digests;
    /* [cluster] (cluster.h) */
    int64_t role;                   /* enum config_role */
    int64_t log_backend;            /* enum config_log_backend */
    struct config_list nats_urls;
    char *stream_prefix;
    int64_t partitions;
    int64_t replicas;
    char *node_name;                /* "" = the host name */
    struct config_list owned_partitions;  /* "FIRST-LAST" or "N" items; empty = all */
    struct config_list partition_owners;  /* "FIRST-LAST=URL" items */
    int64_t stream_max_age_hours;
    int64_t stream_max_bytes;
    int64_t publish_timeout_ms;
    int64_t publish_pending_max;
    int64_t forward_timeout_ms;

    int site_count;
    struct config_site *sites;

    char source_path[512];          /* the file loaded, "" for embedded defaults only */
};

/* A new config holding the embedded defaults. Caller owns it (config_free). NULL on OOM. */
struct tally_config *config_new_defaults(void);

/*
 * Loads an INI file over the current values of cfg. Returns 0, or TALLY_EINVAL with a message
 * "FILE:LINE: ..." naming the key in err (caller's buffer of CONFIG_ERROR_BYTES_MAX bytes), or
 * TALLY_ENOENT when the file cannot be read. Caller thread only (before the server starts).
 */
int config_load_file(struct tally_config *cfg, const char *path, char *err);

/* As config_load_file, from a string; `name` stands for the file name in messages. */
int config_load_string(struct tally_config *cfg, const char *text, const char *name, char *err);

/* Sets one key from the command line ("server", "listen", value); same validation. */
int config_set(struct tally_config *cfg, const char *section, const char *key, const char *value,
               char *err);

/* Cross-key checks after loading (e.g. listen parses, time zones exist). 0 or TALLY_EINVAL. */
int config_validate(const struct tally_config *cfg, char *err);

void config_free(struct tally_config *cfg);

/* Site lookup by name or by one of its ids. NULL when absent. Any thread (config is read-only). */
const struct config_site *config_site_find(const struct tally_config *cfg, const char *name_or_id);

/* Writes every key of the table with type, bounds, unit, default and doc line (for --help). */
void config_print_keys(FILE *out);

/* Splits "host:port" / "[v6]:port". 0 or TALLY_EINVAL. host buffer of 256 bytes. */
int config_parse_listen(const char *listen, char *host, int *port);

/* Parses a partition list ("0-7", "12": the items of owned_partitions, or the range before '='
 * in partition_owners) into set[0..partitions) (1 = listed). 0 or TALLY_EINVAL with a message
 * in err (CONFIG_ERROR_BYTES_MAX). Any thread. */
int config_parse_partition_range(const char *item, size_t len, int64_t partitions,
                                 unsigned char *set, char *err);

/* Number of rows in the key table and the name of row i as "section.key" (tests, docs). */
int config_key_count(void);
const char *config_key_name(int i, const char **section);

#endif
