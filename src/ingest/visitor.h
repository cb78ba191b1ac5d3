/*
 * visitor: visitor ids as keyed hashes, and the daily salts that key them.
 *
 * IDS. A visitor id is a 64-bit SipHash-2-4 (libsodium crypto_shorthash, 16-byte key):
 *  - anonymous (no client id): key = the salt of the event's UTC day, message = ("A", site, IP,
 *    User-Agent). Without the salt nobody can recompute it from an IP, and once the salt is
 *    deleted not even we can: ids of different days cannot be linked.
 *  - client-supplied stable id (native visitor_id, Segment userId/anonymousId, PostHog
 *    distinct_id, ...): key = a persistent secret id key, message = ("C", site, client id), so
 *    the same id gives the same visitor on every day, and different sites never share ids.
 * Each part of a message is length-prefixed (no ambiguity between "ab"+"c" and "a"+"bc"); only
 * the first VISITOR_*_BYTES_MAX bytes of each input count. site must be the site's canonical
 * name (not one of its ids) so that all of a site's aliases give the same visitor.
 *
 * SALTS. One random 16-byte salt per UTC day (randombytes_buf). visitor_salts_rotate(now) keeps
 * exactly the salts of yesterday, today and tomorrow: it creates today's and tomorrow's when
 * missing (tomorrow's in advance, so that events just after midnight find their salt even if
 * the rotation timer runs late) and deletes every other day's, so no salt outlives its day by
 * more than 24 h (48 h after its day began). Yesterday's salt is never created afresh, only
 * kept. An anonymous hash uses the salt of the event's day when held, else today's (the
 * current day of the last rotation): events older than yesterday (imports, late batches)
 * hash with today's salt. Visits spanning midnight UTC therefore get two visitor ids, as in
 * Plausible.
 *
 * FILE <data_dir>/salts (0600), rewritten whenever the set changes by writing salts.tmp,
 * fsync, rename over salts, fsync of the directory; a crash leaves either the old or the new
 * file, and a stale salts.tmp is removed at open. Layout, little-endian:
 *     0   4  magic "TSLT"
 *     4   1  version = 1
 *     5   1  count n (0..3)
 *     6   2  zero
 *     8  16  id key
 *    24  n x (8 day number (days since 1970-01-01, signed), 16 salt), days strictly ascending
 *    ..   8  XXH64 (seed 0) of all preceding bytes
 * A file that fails any check is TALLY_ECORRUPT: visitor_salts_open refuses it rather than
 * silently re-keying (deleting the file is the operator's explicit reset of all ids).
 *
 * ADOPTED SETS (cluster.h, log_backend = jetstream). visitor_salts_adopt replaces what hashing
 * uses with a set supplied from outside (the id key and the salts of the shared JetStream
 * bucket), published under the same seqlock as a rotation, the id key included. From the first
 * adoption on, the handle's set is owned by whoever adopts: visitor_salts_rotate changes
 * nothing (it would invent salts no other node has) and the adopted set is NOT written to the
 * salts file. The bucket is the only copy that matters: a node that cannot reach it cannot
 * publish events either (same JetStream), and copies on every node's disk would outlive the
 * bucket's purge of old days. The file keeps the node's own local set, untouched, used again
 * only if the node returns to the local backend.
 *
 * THREADS. Hashing is lock-free and writes no shared memory (a seqlock over atomics); any
 * thread may hash while another rotates. Rotation serialises on an internal mutex and does
 * the file I/O (a few hundred bytes, once a day): call it from a timer, not an event loop's
 * hot path.
 */
#ifndef TALLY_INGEST_VISITOR_H
#define TALLY_INGEST_VISITOR_H

#include <stddef.h>
#include <stdint.h>

#define VISITOR_SALT_BYTES 16
#define VISITOR_SALTS_FILE "salts"
#define VISITOR_SALT_DAYS_MAX 3
#define VISITOR_SITE_BYTES_MAX 255
#define VISITOR_IP_BYTES_MAX 64
#define VISITOR_USER_AGENT_BYTES_MAX 2048
#define VISITOR_CLIENT_ID_BYTES_MAX 1024

struct visitor_salts;

/* Loads <data_dir>/salts (creating it, with a new id key, when absent) and rotates for now_ms.
 * On success *out owns the handle (free with visitor_salts_close) and 0 is returned; else
 * TALLY_ECORRUPT (bad file), TALLY_EIO/TALLY_ENOSPC (file system), TALLY_ENOMEM. */
int visitor_salts_open(const char *data_dir, int64_t now_ms, struct visitor_salts **out);

/* Frees the handle; no other thread may use it any more. NULL is a no-op. */
void visitor_salts_close(struct visitor_salts *s);

/* Makes the held salts exactly yesterday's (if held), today's and tomorrow's for now_ms, and
 * persists the set when it changed (or an earlier write failed). The in-memory set changes
 * even when writing fails; then TALLY_EIO/TALLY_ENOSPC is returned and the next call retries
 * the write. On an adopted handle: nothing, 0. Any thread. */
int visitor_salts_rotate(struct visitor_salts *s, int64_t now_ms);

/* Makes hashing use exactly id_key and the n salts (days[i], salts[i]) for now_ms: n in
 * 1..VISITOR_SALT_DAYS_MAX, days strictly ascending, today's day (UTC, of now_ms) among them.
 * The handle becomes adopted (see ADOPTED SETS above: rotation stops, nothing is written).
 * Inputs are copied. 0, or TALLY_EINVAL (s unchanged). Any thread. */
int visitor_salts_adopt(struct visitor_salts *s, const uint8_t id_key[VISITOR_SALT_BYTES],
                        const int64_t *days, const uint8_t (*salts)[VISITOR_SALT_BYTES], size_t n,
                        int64_t now_ms);

/* Anonymous visitor id for an event at ts_ms (see the salt rule above). Any thread. */
uint64_t visitor_hash_anonymous(const struct visitor_salts *s, int64_t ts_ms, const char *site,
                                size_t site_len, const char *ip, size_t ip_len, const char *ua,
                                size_t ua_len);

/* Visitor id for a client-supplied stable id, the same on every day. Any thread. */
uint64_t visitor_hash_client(const struct visitor_salts *s, const char *site, size_t site_len,
                             const char *id, size_t id_len);

/* Writes the day numbers of the held salts, ascending, into days (up to cap) and returns how
 * many are held. For tests and /metrics. Any thread. */
size_t visitor_salts_days(const struct visitor_salts *s, int64_t *days, size_t cap);

#endif
