/*
 * jslog: the event log on a NATS JetStream cluster (the `jetstream` evlog backend, evlog.h).
 *
 * STREAMS. One stream per partition p in [0, partitions): name "<prefix>_P<p>", subject
 * "<prefix>.events.<p>", file storage, `replicas` replicas, limits retention (max_age,
 * max_bytes from the options; 0 = unlimited), discard old. jslog_open creates missing streams
 * (retrying while the cluster has no JetStream leader yet, up to connect_timeout_ms) and
 * accepts existing ones (their replicas/limits are updated to the options; if the cluster
 * refuses the update, e.g. more replicas than servers, the stream is used as it is, with a
 * warning, provided it holds the partition's subject).
 *
 * MESSAGES. One record = one message on its partition's subject. Payload: the record bytes
 * exactly as given to append (event.h's encoding). Header "Tally-Ts" = the record's ts_ms in
 * decimal. Offsets: offset = stream sequence - 1 (dense from 0 while nothing is deleted;
 * retention moves start_offset forward).
 *
 * PUBLISHING (jslog_sink). append() publishes every record asynchronously (js_PublishMsgAsync);
 * done(arg, err, 0) runs once ALL of the append's records got their publish acknowledgement
 * (the stream stored the message on a quorum of replicas), or at the first error, before the
 * append's other records are answered (TALLY_EIO: NATS error / negative ack / no responders
 * during a leader election; TALLY_ETIMEDOUT: no ack within publish_timeout_ms; TALLY_ECLOSED:
 * timed out while closing). Acked records of a failed append stay in the stream: the client
 * retries the request, and consumers drop repeated event ids (dedup.h) - so ingest answers 202
 * only after every record is durable, and an error never hides a loss. append never blocks:
 * beyond pending_max records in flight it returns TALLY_EFULL (TALLY_ETOOBIG when n alone is
 * over pending_max, or a record plus its header is over the server's max_payload); while the
 * connection is down it fails at once with TALLY_EIO (nothing queued); a partition >=
 * partitions (or partitions NULL with more than one) is TALLY_EINVAL. done runs on a NATS
 * library thread (the ack thread), or on jslog's refresh thread for an append whose publishing
 * failed half-way; never on the caller's thread. Closing completes every pending append
 * (acked, or failed within publish_timeout_ms). Messages go out at once (no 1 ms write
 * coalescing): the idle publish -> ack latency is one round trip.
 *
 * READING (jslog_partition). Each partition is an evlog whose reader is a JetStream pull
 * consumer, ack policy none, filtered to the partition's subject, one in-memory replica
 * (re-created when lost),
 * created (or re-created: deleted first) at reader_open to deliver from stream sequence
 * from_offset + 1. Its name:
 *   - "<node>_<consumer>_P<p>", durable, when the THREAD opening the reader registered
 *     `consumer` on this partition (evlog_consumer_register: "raw", "rollup") last and no other
 *     open reader of this process uses that registration - the consumer threads register and
 *     then open (consumer.c), so each live consumer has its own durable. Node names must be
 *     unique among the processes sharing the cluster.
 *   - otherwise an ephemeral consumer (catch-up, rebuild and tool readers, a second reader),
 *     deleted at reader_close or by the server after 60 s without a fetch.
 * The consumer's own cursor in RocksDB is the truth: after a crash the reader is re-created at
 * that cursor, so nothing is skipped and nothing counted twice. reader_open: TALLY_ERANGE when
 * from_offset < start_offset, or > committed_offset as the cluster says at that moment; a
 * consumer that cannot be created now (no quorum) is created by reader_next later. Records are
 * fetched by no-wait pull requests (up to 256 messages, 1 MiB; one larger record alone);
 * reader_next blocks at most one fetch round trip (given up after 1 s) and, after a failure,
 * a retry pause of at most 1 s (so that a caller looping on TALLY_EAGAIN + wait does not spin);
 * TALLY_EAGAIN at the end. Every message's stream sequence is checked against the reader's
 * position: repeats are dropped, and a jump (deliveries lost on a dead connection, a consumer
 * lost with its server) re-creates the consumer at the position, as does a consumer that
 * stops answering (gone, 3 fetches unanswered, or nothing delivered for 5 s while the stream
 * holds more). If the position itself was
 * deleted by retention (max_age/max_bytes), reader_next returns TALLY_ERANGE and keeps
 * returning it: reopen at start_offset. A message deleted inside the stream by hand is skipped.
 * committed_offset = the stream's last sequence, known from this process's publish acks, from
 * fetched messages' metadata, and from stream info that a background thread fetches every
 * ~50 ms for partitions in use (a waiter, an open reader, or an offsets call in the last 2 s;
 * the others 8 per tick, round-robin); start_offset = first sequence - 1. wait() blocks on
 * committed_offset. consumer_register: names of 1-32 letters, digits, '-', '_' (TALLY_EINVAL),
 * up to 32 per partition (TALLY_EFULL), same name = same id; advance only records the offset
 * (the durable's position is where it delivered). On the sink: offsets 0, wait / reader_open /
 * register / advance TALLY_ENOTSUP.
 *
 * FAILURES. The connection fails over between nats_urls and reconnects forever (100 ms apart);
 * while the cluster has no quorum, publishes fail (503 to clients) and readers return
 * TALLY_EAGAIN (consumers wait). poisoned_err is 0 while connected, TALLY_EIO while
 * disconnected, TALLY_ECLOSED once closing.
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

/* Refuses appends, wakes waiters (TALLY_ECLOSED) and waits for them to return, completes pending
 * appends (see above: at most publish_timeout_ms + 2 s), stops the refresh thread, closes the
 * connection, frees. Every reader must be closed first and no other call may be running or
 * made (wait() may be blocked: it returns TALLY_ECLOSED). NULL is a no-op. Not from a done
 * callback. */
void jslog_close(struct jslog *js);

/* The append side (all partitions); reads return TALLY_ENOTSUP. Borrowed: valid until close. */
void jslog_sink(struct jslog *js, struct evlog *out);

/* Partition p's stream as a readable evlog (append returns TALLY_ENOTSUP). */
void jslog_partition(struct jslog *js, uint32_t p, struct evlog *out);

/* TAP: fn(arg, data, len) for every record published to partition p from now on, by any
 * node, as it is published (a plain NATS subscription to the subject: best effort, at most
 * once, possibly before or without the stream's acknowledgement; for the live view, never for
 * counting). fn runs on a NATS library thread and must be short; it gets no calls once
 * jslog_close starts. Undelivered messages beyond 65,536 (64 MiB) are dropped. Main thread,
 * after open; one tap per partition. 0, TALLY_EINVAL, TALLY_EIO, TALLY_ENOMEM. */
typedef void (*jslog_tap_fn)(void *arg, const void *data, uint32_t len);
int jslog_tap(struct jslog *js, uint32_t p, jslog_tap_fn fn, void *arg);

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
