/*
 * evlog: the event log as ingest and the consumers see it, whatever stores it.
 *
 * Two backends implement it (ops tables):
 *   local      the segmented log in the data directory (seglog.h): one log, every site; it
 *              both takes appends and is read by this node's consumers (evlog_local()).
 *   jetstream  a NATS JetStream cluster (jslog.h): appends are published to one stream per
 *              PARTITION (sites are spread over partitions by a hash of their name,
 *              cluster.h); each partition's stream is read as its own evlog, with offsets
 *              = stream sequence - 1 (dense from 0, like the local log's).
 * A seam for a Kafka-protocol backend: one more ops table, partitions = topic partitions.
 *
 * CONTRACT (what every backend promises; seglog.h has the local details):
 *  - append(recs, partitions, n, done, arg) never blocks on I/O. 0: done(arg, err, first)
 *    is called exactly once later, on a backend thread, err 0 only when EVERY record is
 *    durable by the backend's rule (local: fsync policy; jetstream: the stream's publish
 *    acknowledgement, i.e. stored on a quorum of its replicas). first_offset is meaningful
 *    only for a single-partition log. An error return: nothing queued, done never called
 *    (TALLY_EFULL: bounded queue full; TALLY_EIO/ENOSPC: the log cannot take writes;
 *    TALLY_ECLOSED; TALLY_ENOTSUP: a read-only evlog such as one JetStream partition).
 *  - Readers see offsets in [start_offset, committed_offset), in order, each record once per
 *    pass; a consumer keeps its cursor (the next offset it needs) in its own store, in the
 *    same write as its output (exactly-once); register/advance tell the backend how far it
 *    got (local: retention never deletes past it; jetstream: the durable consumer's position).
 *  - reader_next: 0, TALLY_EAGAIN at the committed end, TALLY_ERANGE (position deleted by
 *    retention: reopen at start_offset), TALLY_ECORRUPT, TALLY_EIO, TALLY_ENOMEM.
 *  - wait(offset, timeout_ms): blocks a consumer thread until committed_offset > offset, the
 *    timeout (TALLY_EAGAIN) or close (TALLY_ECLOSED). Never from an event loop.
 * Threads: as seglog.h (append, offsets and wait from any thread; a reader is used by one
 * thread at a time).
 */
#ifndef TALLY_EVLOG_H
#define TALLY_EVLOG_H

#include <stdint.h>

#include "log/seglog.h"

struct evlog_reader;

struct evlog_ops {
    const char *kind; /* "local", "jetstream" */
    int (*append)(void *impl, const struct seglog_rec *recs, const uint32_t *partitions,
                  uint32_t n, seglog_done_fn done, void *arg);
    int (*poisoned_err)(void *impl);
    uint64_t (*start_offset)(void *impl);
    uint64_t (*committed_offset)(void *impl);
    int (*wait)(void *impl, uint64_t offset, int timeout_ms);
    int (*reader_open)(void *impl, uint64_t from_offset, struct evlog_reader **out);
    int (*reader_next)(struct evlog_reader *r, struct seglog_record *rec);
    uint64_t (*reader_position)(const struct evlog_reader *r);
    void (*reader_close)(struct evlog_reader *r);
    int (*consumer_register)(void *impl, const char *name, uint64_t offset);
    int (*consumer_advance)(void *impl, int id, uint64_t offset);
};

struct evlog {
    const struct evlog_ops *ops;
    void *impl;
};

/* A reader: each backend's readers start with this header (ops of the log that opened it). */
struct evlog_reader {
    const struct evlog_ops *ops;
};

/* The local segmented log as an evlog (borrowed: log must outlive it; partitions ignored).
 * *out is filled in place; no allocation. */
void evlog_local(struct seglog *log, struct evlog *out);

static inline int evlog_append(struct evlog *l, const struct seglog_rec *recs,
                               const uint32_t *partitions, uint32_t n, seglog_done_fn done,
                               void *arg)
{
    return l->ops->append(l->impl, recs, partitions, n, done, arg);
}
static inline int evlog_poisoned_err(struct evlog *l) { return l->ops->poisoned_err(l->impl); }
static inline uint64_t evlog_start_offset(struct evlog *l)
{
    return l->ops->start_offset(l->impl);
}
static inline uint64_t evlog_committed_offset(struct evlog *l)
{
    return l->ops->committed_offset(l->impl);
}
static inline int evlog_wait(struct evlog *l, uint64_t offset, int timeout_ms)
{
    return l->ops->wait(l->impl, offset, timeout_ms);
}
static inline int evlog_reader_open(struct evlog *l, uint64_t from, struct evlog_reader **out)
{
    return l->ops->reader_open(l->impl, from, out);
}
static inline int evlog_reader_next(struct evlog_reader *r, struct seglog_record *rec)
{
    return r->ops->reader_next(r, rec);
}
static inline uint64_t evlog_reader_position(const struct evlog_reader *r)
{
    return r->ops->reader_position(r);
}
static inline void evlog_reader_close(struct evlog_reader *r)
{
    if (r) r->ops->reader_close(r);
}
static inline int evlog_consumer_register(struct evlog *l, const char *name, uint64_t offset)
{
    return l->ops->consumer_register(l->impl, name, offset);
}
static inline int evlog_consumer_advance(struct evlog *l, int id, uint64_t offset)
{
    return l->ops->consumer_advance(l->impl, id, offset);
}

#endif
