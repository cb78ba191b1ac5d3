/*
 * node: what this node reads and writes, from the [cluster] keys: the JetStream connection
 * (log_backend = jetstream) and the sources its consumers read (the local log, or the
 * partitions it owns). Main thread, at start and in the offline commands (--rebuild).
 */
#ifndef TALLY_APP_NODE_H
#define TALLY_APP_NODE_H

#include <stddef.h>

#include "core/config.h"
#include "log/jslog.h"
#include "log/seglog.h"
#include "rollup/rollup.h"

/* Opens the JetStream backend configured in cfg (the node name: node_name, else the host
 * name and the listen port, so that two nodes on one host never share durable consumers).
 * 0, or an error after printing why on stderr. */
int node_jslog_open(const struct tally_config *cfg, struct jslog **out);

/* The sources this node consumes: the local log as one source "" (local != NULL), or one
 * source "p<N>" per partition in owned_partitions (all when empty) of js. *out is malloc'd
 * (free it). 0, TALLY_EINVAL (role ingest: no sources), TALLY_ENOMEM. */
int node_sources(const struct tally_config *cfg, struct seglog *local, struct jslog *js,
                 struct rollup_source **out, size_t *n);

#endif
