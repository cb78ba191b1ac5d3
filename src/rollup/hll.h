/*
 * hll: a mergeable unique-visitor counter: an exact sorted set while small, a HyperLogLog
 * sketch beyond.
 *
 * MODES. An hll starts EXACT: a sorted array of distinct 64-bit items (visitor hashes); its
 * count is exact. When an add or a merge would make it hold more than exact_max items it turns
 * DENSE for good: a HyperLogLog of 2^HLL_P registers (one byte each) over a 64-bit mix of each
 * item. Both modes only grow (there is no removal), and the dense registers are the maximum
 * over the items, so the final state depends only on the set of items added, never on their
 * order, on batching, or on when the switch happened (what determinism of rollups needs).
 *
 * ERROR BOUND. Dense estimates have a relative standard error of 1.04 / sqrt(m) with
 * m = 2^HLL_P = 16384 registers: 0.81 % (about 2.4 % at three standard errors). The estimator
 * is Ertl's improved raw estimator ("New cardinality estimation algorithms for HyperLogLog
 * sketches", 2017), which needs no empirical bias tables and is unbiased over the whole range.
 * Exact mode has no error.
 *
 * SERIALIZED LAYOUT (little-endian; hll_serialize/hll_deserialize; canonical: one state has
 * exactly one encoding)
 *     u8 version = 1
 *     u8 mode: 0 exact, 1 dense
 *     exact: varint n, then n x u64 items, strictly ascending
 *     dense: u8 p (= HLL_P), then 2^p register bytes, each <= 64 - p + 1
 * A blob that breaks any of these rules is TALLY_ECORRUPT.
 *
 * OWNERSHIP AND THREADS. An hll is owned by its creator (hll_free; NULL is a no-op) and used by
 * one thread at a time; the functions keep no global state.
 */
#ifndef TALLY_ROLLUP_HLL_H
#define TALLY_ROLLUP_HLL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HLL_P 14
#define HLL_REGISTERS (1u << HLL_P)
#define HLL_EXACT_MAX_DEFAULT 4096u  /* items held exactly before switching to the sketch */
#define HLL_EXACT_MAX_LIMIT 1048576u /* the largest exact_max accepted */
#define HLL_REL_ERROR 0.008125       /* 1.04 / sqrt(HLL_REGISTERS) */
#define HLL_VERSION 1

struct hll;

/* A new empty (exact) hll holding at most exact_max items exactly (0: the default; values
 * above HLL_EXACT_MAX_LIMIT are clamped). NULL on allocation failure. */
struct hll *hll_new(uint32_t exact_max);
void hll_free(struct hll *h);

/* Adds one item. 0 or TALLY_ENOMEM (the hll is unchanged then). */
int hll_add(struct hll *h, uint64_t item);

/* Adds n items (any order, duplicates allowed); sorts `items` in place. 0 or TALLY_ENOMEM. */
int hll_add_many(struct hll *h, uint64_t *items, size_t n);

/* dst := dst U src. 0 or TALLY_ENOMEM. */
int hll_merge(struct hll *dst, const struct hll *src);

/* Cardinality estimate (the exact count in exact mode). */
double hll_estimate(const struct hll *h);
/* The estimate rounded to the nearest integer. */
uint64_t hll_count(const struct hll *h);

bool hll_is_exact(const struct hll *h);

/* Exact mode: number of items and a pointer to them, strictly ascending, owned by h and valid
 * until h is next modified. Dense mode: returns 0 and *items = NULL. */
size_t hll_items(const struct hll *h, const uint64_t **items);

/* Bytes hll_serialize writes. */
size_t hll_serialized_bytes(const struct hll *h);
/* Writes the serialized form into buf (at least hll_serialized_bytes(h)); returns its size. */
size_t hll_serialize(const struct hll *h, uint8_t *buf);

/* Parses a serialized hll; on success *out is a new hll the caller owns (exact_max as in
 * hll_new). TALLY_ECORRUPT on a malformed blob, TALLY_ENOMEM. */
int hll_deserialize(const uint8_t *buf, size_t len, uint32_t exact_max, struct hll **out);

/* A serialized hll read in place, for callers that gather many blobs before counting: dense
 * mode: *dense, *n = HLL_REGISTERS and the registers in *body (checked); exact mode: *n items
 * of 8 bytes little-endian in *body, NOT checked to ascend (the caller checks while it reads
 * them). 0 or TALLY_ECORRUPT. */
int hll_blob(const uint8_t *buf, size_t len, bool *dense, size_t *n, const uint8_t **body);

/* dst := dst U the dense registers regs (HLL_REGISTERS bytes as hll_blob returns them: already
 * checked). dst turns dense. 0 or TALLY_ENOMEM. */
int hll_merge_dense(struct hll *dst, const uint8_t *regs);

/* dst := dst U (the serialized hll in buf). 0, TALLY_ECORRUPT, TALLY_ENOMEM. */
int hll_merge_serialized(struct hll *dst, const uint8_t *buf, size_t len);

/* Removes every item; the hll becomes exact again (only for reusing an object). */
void hll_clear(struct hll *h);

/* The 64-bit mix applied to items before they are placed in registers (exposed for tests). */
uint64_t hll_mix(uint64_t item);

#endif
