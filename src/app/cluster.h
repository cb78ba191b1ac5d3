/*
 * cluster: what a node needs to know about the others (docs/cluster.md).
 *
 * PARTITIONS. A site belongs to partition xxh64(canonical site name, seed 0) % partitions
 * (cluster_partition_of): every node computes the same answer from the same configuration.
 * Events are published to their site's partition; a processing node consumes the partitions
 * listed in owned_partitions (empty: all) and holds those sites' raw events, visits and
 * rollups. partition_owners maps partitions to the base URL of the node that owns them.
 *
 * FORWARDING. A query for a site whose partition this node does not own is sent to the
 * owner's URL as it came (method, path and query string, Authorization, Content-Type, body)
 * and the owner's answer (status, Content-Type, body) is relayed; a site with no known owner
 * gets 503 {"error": ...}. A forwarded request carries "X-Tally-Forwarded: 1"; a node never
 * forwards a request that has it (no loops: it answers 421 instead). Routing at the load
 * balancer by site is the documented alternative.
 *
 * SHARED SALTS (jetstream backend). Ingest nodes must hash a visitor the same way, so the
 * daily salts and the id key live in a replicated JetStream key-value bucket
 * "<prefix>_SALTS" (replicas as the streams): key "idkey" and "day.<n>" (n = days since
 * 1970-01-01). The first node that needs a day's salt creates it (kvStore_Create: exactly one
 * wins, the others read the winner's); days older than yesterday are purged. Each node adopts
 * exactly the bucket's set into its visitor_salts (visitor.h), so no node invents its own.
 *
 * THREADS. open/close and cluster_salts_sync: the main thread (server start and chores).
 * Lookups: any thread (immutable after open). cluster_forward: a query worker thread (it
 * blocks for up to forward_timeout_ms).
 */
#ifndef TALLY_APP_CLUSTER_H
#define TALLY_APP_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

struct cluster;
struct visitor_salts;

#define CLUSTER_FORWARD_BODY_BYTES_MAX (64u << 20) /* relayed answers larger than this: 502 */
#define CLUSTER_FORWARDED_HEADER "X-Tally-Forwarded"

/* The partition of a site (its canonical name). Pure; any thread. */
uint32_t cluster_partition_of(const char *site, size_t len, uint32_t partitions);

/* Builds the node's view from cfg (borrowed: must outlive the cluster). With log_backend =
 * jetstream, also connects to NATS for the salts bucket (creating it when missing; waiting up
 * to 30 s for a JetStream leader). 0, TALLY_EINVAL/TALLY_EIO with a message in err (256). */
int cluster_open(const struct tally_config *cfg, struct cluster **out, char *err);
void cluster_close(struct cluster *c);

/* true when this node consumes partition p (role all or process, and p is in
 * owned_partitions or that list is empty); false for role ingest. */
bool cluster_owns(const struct cluster *c, uint32_t p);
/* Base URL of p's owner from partition_owners ("http://host:port", no trailing slash), or
 * NULL when none is configured. */
const char *cluster_owner_url(const struct cluster *c, uint32_t p);
uint32_t cluster_partitions(const struct cluster *c);

struct cluster_response {
    int status;            /* HTTP status of the owner's answer; 502/504 when it failed */
    char content_type[128];
    char *body;            /* malloc'd (free it), NUL-terminated; may be an error JSON */
    size_t body_len;
};

/* Sends the request to base_url + path_and_query (libcurl, keep-alive connections reused per
 * thread) with the given headers and body, adding X-Tally-Forwarded: 1, and waits at most
 * forward_timeout_ms. Always fills *out: the owner's answer, or 502 {"error": "..."} when it
 * could not be reached / answered garbage, 504 on timeout. 0, or TALLY_ENOMEM. */
int cluster_forward(struct cluster *c, const char *base_url, const char *method,
                    const char *path_and_query, const char *authorization,
                    const char *content_type, const void *body, size_t body_len,
                    struct cluster_response *out);

/* jetstream backend: makes s hold exactly the bucket's id key and salts of yesterday, today
 * and tomorrow for now_ms, creating the missing ones in the bucket first. Cheap when nothing
 * changed (at most one bucket read per minute). 0 or TALLY_EIO (s unchanged; retry later).
 * With the local backend: visitor_salts_rotate(s, now_ms). Main thread. */
int cluster_salts_sync(struct cluster *c, struct visitor_salts *s, int64_t now_ms);

#endif
