/* node: see node.h. */
#include "app/node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tally/error.h"

int node_jslog_open(const struct tally_config *cfg, struct jslog **out)
{
    char host[256] = "";
    const char *node = cfg->node_name;
    if (!node[0]) {
        if (gethostname(host, sizeof host - 1) != 0 || !host[0]) snprintf(host, sizeof host, "node");
        /* durable consumer names allow letters, digits, '-' and '_' */
        for (char *p = host; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
                *p = '_';
        /* two nodes on one host must not share durable consumer names: add the port */
        char lh[256];
        int port = 0;
        if (config_parse_listen(cfg->listen, lh, &port) == 0 && port > 0) {
            size_t hl = strlen(host);
            if (hl > sizeof host - 8) hl = sizeof host - 8;
            snprintf(host + hl, sizeof host - hl, "_%d", port);
        }
        node = host;
    }
    struct jslog_options o;
    memset(&o, 0, sizeof o);
    o.urls = (const char *const *)cfg->nats_urls.items;
    o.url_count = cfg->nats_urls.count;
    o.prefix = cfg->stream_prefix;
    o.node = node;
    o.partitions = (uint32_t)cfg->partitions;
    o.replicas = (uint32_t)cfg->replicas;
    o.max_age_ms = cfg->stream_max_age_hours * 3600000LL;
    o.max_bytes = cfg->stream_max_bytes;
    o.publish_timeout_ms = cfg->publish_timeout_ms;
    o.pending_max = (uint32_t)cfg->publish_pending_max;
    o.connect_timeout_ms = 30000;
    char err[256] = "";
    int rc = jslog_open(&o, out, err);
    if (rc != 0)
        fprintf(stderr, "tally: cannot use the JetStream log (%s): %s%s%s\n",
                cfg->nats_urls.count ? cfg->nats_urls.items[0] : "?", tally_strerror(rc),
                err[0] ? ": " : "", err);
    return rc;
}

int node_sources(const struct tally_config *cfg, struct seglog *local, struct jslog *js,
                 struct rollup_source **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (local) {
        struct rollup_source *s = calloc(1, sizeof *s);
        if (!s) return TALLY_ENOMEM;
        evlog_local(local, &s->log);
        *out = s;
        *n = 1;
        return TALLY_OK;
    }
    if (!js || cfg->role == CONFIG_ROLE_INGEST) return TALLY_EINVAL;
    unsigned char set[CONFIG_PARTITIONS_MAX];
    memset(set, cfg->owned_partitions.count ? 0 : 1, sizeof set);
    char err[CONFIG_ERROR_BYTES_MAX];
    for (int i = 0; i < cfg->owned_partitions.count; i++) {
        const char *it = cfg->owned_partitions.items[i];
        if (config_parse_partition_range(it, strlen(it), cfg->partitions, set, err))
            return TALLY_EINVAL; /* config_validate checked it */
    }
    size_t count = 0;
    for (int64_t p = 0; p < cfg->partitions; p++) count += set[p];
    if (count == 0) return TALLY_EINVAL;
    struct rollup_source *s = calloc(count, sizeof *s);
    if (!s) return TALLY_ENOMEM;
    size_t k = 0;
    for (int64_t p = 0; p < cfg->partitions; p++) {
        if (!set[p]) continue;
        jslog_partition(js, (uint32_t)p, &s[k].log);
        snprintf(s[k].name, sizeof s[k].name, "p%lld", (long long)p);
        k++;
    }
    *out = s;
    *n = count;
    return TALLY_OK;
}
