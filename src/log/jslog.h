/*
 * jslog: the event log on a NATS JetStream cluster (the `jetstream` evlog backend, evlog.h).
 *
 * STREAMS. One stream per partition p in [0, partitions): name "<prefix>_P<p>", subject
 * "<prefix>.events.<p>", file storage, `replicas` replicas, limits retention (max_age,
 * max_bytes from the options; 0 = unlimited), discard old. jslog_open creates missing streams
 * (retrying while the cluster has no JetStream leader yet, up to connect_timeout_ms) and
 * accepts existing ones (their replicas/limits are updated to the options).
 *
 * MESSAGES. One record = one message on its partition's subject. Payload: the record bytes
 * exactly as given to append (event.h's encoding). Header "Tally-Ts" = the record's ts_ms in
 * decimal. Offsets: offset = stream sequence - 1 (dense from 0 while nothing is deleted;
 * retention moves start_offset forward).
 *
 * PUBLISHING (jslog_sink). append() publishes every record asynchronously (js_PublishMsgAsync);
 * done(arg, err, 0) runs once ALL of the append's records got their publish acknowledgement
 * (the stream stored the message on a quorum of replicas), or with the first error
 * (TALLY_EIO: NATS error / negative ack; TALLY_ETIMEDOUT: no ack within publish_timeout_ms;
 * TALLY_ECLOSED: closing). Acked records of a failed append stay in the stream: the client
 * retries the request, and consumers drop repeated event ids (dedup.h) - so ingest answers 202
 * only after every record is durable, and an error never hides a loss. append never blocks:
 * beyond pending_max records in flight it returns TALLY_EFULL. done runs on a NATS library
 * thread. Closing completes every pending append (acked, or TALLY_ECLOSED after at most
 * publish_timeout_ms).
 *
 * READING (jslog_partition). Each partition is an evlog whose reader is a durable JetStream
 * pull consumer named "<node>_<consumer>_P<p>" (consumer = the name given to
 * evlog_consumer_register, "raw" or "rollup"; the reader without a registration uses
 * "<node>_reader_P<p>"), created (or re-created) at reader_open to deliver from stream sequence
 * from_offset + 1, ack policy none, filtered to the partition's subject, replicas as the
 * stream. The consumer's own cursor in RocksDB is the truth: after a crash the reader is
 * re-created at that cursor, so nothing is skipped and nothing counted twice. Records are
 * fetched in batches (up to 256 messages, 1 MiB); reader_next never blocks longer than one
 * fetch round trip (no-wait fetch); TALLY_EAGAIN at the end. committed_offset = the stream's
 * last sequence (refreshed by a background thread every ~50 ms and from fetched messages'
 * metadata); wait() blocks on it.
 *
 * FAILURES. The connection fails over between nats_urls and reconnects forever; while the
 * cluster has no quorum, publishes fail (503 to clients) and readers return TALLY_EAGAIN
 * (consumers wait). poisoned_err is 0 while connected, TALLY_EIO while disconnected.
 *
 * THREADS. jslog_open/close: one thread (the server's main thread). Everything else: any
 * thread, as evlog.h says.
 */
#ifndef TALLY_JSLOG_H
#define TALLY_JSLOG_H

#include <stdint.h>

#include "log/evlog.h"

#define JSLOG_URLS_MAX 16
#define JSLOG_FETCH_BATCH 256

struct jslog;

struct jslog_options {
    const char *const *urls;       /* nats://host:port, at least one */
    int url_count;
    const char *prefix;            /* stream prefix, e.g. "TALLY" */
    const char *node;              /* node name for durable consumer names */
    uint32_t partitions;           /* [1, CONFIG_PARTITIONS_MAX] */
    uint32_t replicas;             /* [1, 5] */
    int64_t max_age_ms;            /* stream retention; 0 = keep */
    int64_t max_bytes;             /* per stream; 0 = no limit */
    int64_t publish_timeout_ms;    /* default 5000 */
    uint32_t pending_max;          /* records in flight; default 65536 */
    int64_t connect_timeout_ms;    /* at open: connect + create streams; default 30000 */
};

/* Connects, ensures the streams exist, starts the refresh thread. 0 with *out, or TALLY_EIO
 * (with a message in err, 256 bytes) when the cluster cannot be reached or has no JetStream
 * leader within connect_timeout_ms, TALLY_EINVAL, TALLY_ENOMEM. */
int jslog_open(const struct jslog_options *opt, struct jslog **out, char *err);

/* Completes pending appends (see above), closes readers' subscriptions' connection, frees.
 * Every reader must be closed first. NULL is a no-op. */
void jslog_close(struct jslog *js);

/* The append side (all partitions); reads return TALLY_ENOTSUP. Borrowed: valid until close. */
void jslog_sink(struct jslog *js, struct evlog *out);

/* Partition p's stream as a readable evlog (append returns TALLY_ENOTSUP). */
void jslog_partition(struct jslog *js, uint32_t p, struct evlog *out);

/* Counters for /metrics. Any thread. */
struct jslog_stats {
    uint64_t published, acked, failed; /* records */
    uint64_t pending;                  /* in flight now */
    uint64_t ack_latency_hist[16];     /* publish -> ack, bucket i: <= 2^i * 100 us; last: more */
    uint64_t reconnects;
    int connected;
};
void jslog_stats(struct jslog *js, struct jslog_stats *out);

#endif
