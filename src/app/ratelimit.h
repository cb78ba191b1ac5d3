/*
 * ratelimit: per-client-IP token buckets for unauthenticated ingest.
 *
 * A fixed-capacity table (RATELIMIT_SLOTS_MAX entries in shards, each under its own mutex), so
 * memory is bounded whatever the number of client IPs. A bucket holds `burst` tokens and refills
 * at `rate_per_s`; taking n tokens either succeeds whole or fails whole (a request is
 * all-or-nothing). When a shard is full, the bucket that was touched longest ago is reused: an
 * evicted client starts again with a full bucket, which errs on the side of accepting traffic.
 * Any thread may call ratelimit_take.
 */
#ifndef TALLY_RATELIMIT_H
#define TALLY_RATELIMIT_H

#include <stdint.h>

#define RATELIMIT_SHARDS 64
#define RATELIMIT_SLOTS_PER_SHARD 1024 /* 65,536 clients tracked at once */

struct ratelimit;

/* rate_per_s = 0 disables limiting (take always succeeds). Caller owns the result. */
struct ratelimit *ratelimit_new(int64_t rate_per_s, int64_t burst);
void ratelimit_free(struct ratelimit *rl);

/*
 * Takes n tokens for the client `ip` (16-byte form) at monotonic time now_ms. Returns 0 when
 * allowed; otherwise the number of whole seconds (>= 1) after which the request would fit
 * (for Retry-After). A request larger than the burst can never fit: it returns -1.
 */
int64_t ratelimit_take(struct ratelimit *rl, const uint8_t ip[16], int64_t n, int64_t now_ms);

#endif
