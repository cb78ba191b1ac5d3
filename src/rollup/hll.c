/*
 * hll: see hll.h for the modes, the error bound and the serialized layout.
 *
 * Register rule (dense mode): x = hll_mix(item); register index = the top HLL_P bits of x;
 * value = 1 + the number of leading zeros of the remaining 64 - HLL_P bits (64 - HLL_P + 1 when
 * they are all zero). A register holds the maximum value seen.
 */
#include "rollup/hll.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/sortkey.h"
#include "tally/error.h"

#define HLL_Q (64 - HLL_P)

struct hll {
    uint32_t exact_max;
    bool dense;
    uint64_t *items; /* exact: sorted distinct items */
    size_t count, cap;
    uint8_t *reg; /* dense: HLL_REGISTERS bytes */
};

uint64_t hll_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

struct hll *hll_new(uint32_t exact_max)
{
    struct hll *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    if (exact_max == 0) exact_max = HLL_EXACT_MAX_DEFAULT;
    if (exact_max > HLL_EXACT_MAX_LIMIT) exact_max = HLL_EXACT_MAX_LIMIT;
    h->exact_max = exact_max;
    return h;
}

void hll_free(struct hll *h)
{
    if (!h) return;
    free(h->items);
    free(h->reg);
    free(h);
}

void hll_clear(struct hll *h)
{
    free(h->reg);
    h->reg = NULL;
    h->dense = false;
    h->count = 0;
}

bool hll_is_exact(const struct hll *h)
{
    return !h->dense;
}

size_t hll_items(const struct hll *h, const uint64_t **items)
{
    if (h->dense) {
        *items = NULL;
        return 0;
    }
    *items = h->items;
    return h->count;
}

static inline void reg_add(uint8_t *reg, uint64_t item)
{
    uint64_t x = hll_mix(item);
    uint32_t idx = (uint32_t)(x >> HLL_Q);
    uint64_t w = x << HLL_P; /* the remaining bits, left-aligned */
    uint8_t v = w ? (uint8_t)(__builtin_clzll(w) + 1) : (uint8_t)(HLL_Q + 1);
    if (v > HLL_Q + 1) v = HLL_Q + 1;
    if (v > reg[idx]) reg[idx] = v;
}

/* dst[i] := max(dst[i], src[i]) over every register; a select, so the compiler vectorizes it
 * (the branch on each byte mispredicted: merging 30 dense cells was half of a series query). */
static void regs_max(uint8_t *restrict dst, const uint8_t *restrict src)
{
    for (uint32_t i = 0; i < HLL_REGISTERS; i++) dst[i] = dst[i] > src[i] ? dst[i] : src[i];
}

static int to_dense(struct hll *h)
{
    uint8_t *reg = calloc(HLL_REGISTERS, 1);
    if (!reg) return TALLY_ENOMEM;
    for (size_t i = 0; i < h->count; i++) reg_add(reg, h->items[i]);
    h->reg = reg;
    h->dense = true;
    free(h->items);
    h->items = NULL;
    h->count = h->cap = 0;
    return TALLY_OK;
}

static int reserve(struct hll *h, size_t n)
{
    if (n <= h->cap) return TALLY_OK;
    size_t cap = h->cap ? h->cap : 8;
    while (cap < n) cap *= 2;
    uint64_t *p = realloc(h->items, cap * sizeof *p);
    if (!p) return TALLY_ENOMEM;
    h->items = p;
    h->cap = cap;
    return TALLY_OK;
}

int hll_add(struct hll *h, uint64_t item)
{
    if (h->dense) {
        reg_add(h->reg, item);
        return TALLY_OK;
    }
    size_t lo = 0, hi = h->count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (h->items[mid] < item) lo = mid + 1;
        else hi = mid;
    }
    if (lo < h->count && h->items[lo] == item) return TALLY_OK;
    if (h->count + 1 > h->exact_max) {
        int rc = to_dense(h);
        if (rc) return rc;
        reg_add(h->reg, item);
        return TALLY_OK;
    }
    int rc = reserve(h, h->count + 1);
    if (rc) return rc;
    memmove(h->items + lo + 1, h->items + lo, (h->count - lo) * sizeof *h->items);
    h->items[lo] = item;
    h->count++;
    return TALLY_OK;
}

/* Merges the sorted distinct arrays a (the hll's) and b into the hll (exact mode). */
static int merge_sorted(struct hll *h, const uint64_t *b, size_t nb)
{
    /* count the union first, to decide the mode */
    size_t i = 0, j = 0, n = 0;
    while (i < h->count && j < nb) {
        if (h->items[i] < b[j]) i++;
        else if (h->items[i] > b[j]) j++;
        else i++, j++;
        n++;
    }
    n += (h->count - i) + (nb - j);
    if (n == h->count) return TALLY_OK;
    if (n > h->exact_max) {
        int rc = to_dense(h);
        if (rc) return rc;
        for (size_t k = 0; k < nb; k++) reg_add(h->reg, b[k]);
        return TALLY_OK;
    }
    uint64_t *out = malloc((n ? n : 1) * sizeof *out);
    if (!out) return TALLY_ENOMEM;
    i = j = 0;
    size_t k = 0;
    while (i < h->count && j < nb) {
        if (h->items[i] < b[j]) out[k++] = h->items[i++];
        else if (h->items[i] > b[j]) out[k++] = b[j++];
        else out[k++] = h->items[i++], j++;
    }
    while (i < h->count) out[k++] = h->items[i++];
    while (j < nb) out[k++] = b[j++];
    free(h->items);
    h->items = out;
    h->count = h->cap = n;
    return TALLY_OK;
}

int hll_add_many(struct hll *h, uint64_t *items, size_t n)
{
    if (n == 0) return TALLY_OK;
    if (h->dense) {
        for (size_t i = 0; i < n; i++) reg_add(h->reg, items[i]);
        return TALLY_OK;
    }
    sortkey_u64(items, n);
    size_t u = 1;
    for (size_t i = 1; i < n; i++)
        if (items[i] != items[u - 1]) items[u++] = items[i];
    return merge_sorted(h, items, u);
}

int hll_merge(struct hll *dst, const struct hll *src)
{
    if (src->dense) return hll_merge_dense(dst, src->reg);
    if (dst->dense) {
        for (size_t i = 0; i < src->count; i++) reg_add(dst->reg, src->items[i]);
        return TALLY_OK;
    }
    return merge_sorted(dst, src->items, src->count);
}

static double ertl_sigma(double x)
{
    if (x >= 1.0) return INFINITY;
    double y = 1.0, z = x, zp;
    do {
        x *= x;
        zp = z;
        z += x * y;
        y += y;
    } while (z != zp);
    return z;
}

static double ertl_tau(double x)
{
    if (x <= 0.0 || x >= 1.0) return 0.0;
    double y = 1.0, z = 1.0 - x, zp;
    do {
        x = sqrt(x);
        zp = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
    } while (z != zp);
    return z / 3.0;
}

double hll_estimate(const struct hll *h)
{
    if (!h->dense) return (double)h->count;
    /* four histograms: neighbouring registers mostly hold the same value, and one counter
     * incremented back to back waits for its own store each time */
    uint32_t c4[4][HLL_Q + 2], c[HLL_Q + 2];
    memset(c4, 0, sizeof c4);
    for (uint32_t i = 0; i < HLL_REGISTERS; i += 4) {
        c4[0][h->reg[i]]++;
        c4[1][h->reg[i + 1]]++;
        c4[2][h->reg[i + 2]]++;
        c4[3][h->reg[i + 3]]++;
    }
    for (int k = 0; k < HLL_Q + 2; k++) c[k] = c4[0][k] + c4[1][k] + c4[2][k] + c4[3][k];
    const double m = HLL_REGISTERS;
    if (c[0] == HLL_REGISTERS) return 0.0;
    double z = m * ertl_tau(1.0 - c[HLL_Q + 1] / m);
    for (int k = HLL_Q; k >= 1; k--) z = 0.5 * (z + c[k]);
    z += m * ertl_sigma(c[0] / m);
    const double alpha_inf = 1.0 / (2.0 * log(2.0));
    return alpha_inf * m * m / z;
}

uint64_t hll_count(const struct hll *h)
{
    if (!h->dense) return h->count;
    return (uint64_t)llround(hll_estimate(h));
}

static size_t varint_bytes(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) v >>= 7, n++;
    return n;
}

size_t hll_serialized_bytes(const struct hll *h)
{
    if (h->dense) return 3 + HLL_REGISTERS;
    return 2 + varint_bytes(h->count) + 8 * h->count;
}

size_t hll_serialize(const struct hll *h, uint8_t *buf)
{
    uint8_t *p = buf;
    *p++ = HLL_VERSION;
    if (h->dense) {
        *p++ = 1;
        *p++ = HLL_P;
        memcpy(p, h->reg, HLL_REGISTERS);
        return 3 + HLL_REGISTERS;
    }
    *p++ = 0;
    uint64_t v = h->count;
    while (v >= 0x80) *p++ = (uint8_t)(v | 0x80), v >>= 7;
    *p++ = (uint8_t)v;
    for (size_t i = 0; i < h->count; i++) {
        uint64_t x = h->items[i];
        for (int b = 0; b < 8; b++) *p++ = (uint8_t)(x >> (8 * b));
    }
    return (size_t)(p - buf);
}

/* Parses the blob's header; exact: *n and *items (raw LE bytes, NOT checked to ascend);
 * dense: *regs (checked). */
static int parse_header(const uint8_t *buf, size_t len, int *mode, size_t *n,
                        const uint8_t **body)
{
    if (len < 2 || buf[0] != HLL_VERSION || buf[1] > 1) return TALLY_ECORRUPT;
    *mode = buf[1];
    if (*mode == 1) {
        if (len != 3 + HLL_REGISTERS || buf[2] != HLL_P) return TALLY_ECORRUPT;
        uint8_t top = 0;
        for (uint32_t i = 0; i < HLL_REGISTERS; i++) top = buf[3 + i] > top ? buf[3 + i] : top;
        if (top > HLL_Q + 1) return TALLY_ECORRUPT;
        *body = buf + 3;
        *n = HLL_REGISTERS;
        return TALLY_OK;
    }
    size_t pos = 2;
    uint64_t v = 0;
    int shift = 0;
    for (;;) {
        if (pos >= len || shift > 63) return TALLY_ECORRUPT;
        uint8_t b = buf[pos++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            if (b == 0 && shift > 0) return TALLY_ECORRUPT; /* not minimal */
            break;
        }
        shift += 7;
    }
    if (v > HLL_EXACT_MAX_LIMIT || len - pos != v * 8) return TALLY_ECORRUPT;
    *n = (size_t)v;
    *body = buf + pos;
    return TALLY_OK;
}

/* parse_header, and exact items checked to ascend strictly. */
static int parse(const uint8_t *buf, size_t len, int *mode, size_t *n, const uint8_t **body)
{
    int rc = parse_header(buf, len, mode, n, body);
    if (rc || *mode == 1) return rc;
    uint64_t prev = 0;
    for (size_t i = 0; i < *n; i++) {
        uint64_t x = 0;
        for (int b = 0; b < 8; b++) x |= (uint64_t)(*body)[8 * i + b] << (8 * b);
        if (i > 0 && x <= prev) return TALLY_ECORRUPT;
        prev = x;
    }
    return TALLY_OK;
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t x = 0;
    for (int b = 0; b < 8; b++) x |= (uint64_t)p[b] << (8 * b);
    return x;
}

int hll_merge_dense(struct hll *dst, const uint8_t *regs)
{
    int rc;
    if (!dst->dense && (rc = to_dense(dst))) return rc;
    regs_max(dst->reg, regs);
    return TALLY_OK;
}

int hll_blob(const uint8_t *buf, size_t len, bool *dense, size_t *n, const uint8_t **body)
{
    int mode;
    int rc = parse_header(buf, len, &mode, n, body);
    if (!rc) *dense = mode == 1;
    return rc;
}

int hll_merge_serialized(struct hll *dst, const uint8_t *buf, size_t len)
{
    int mode;
    size_t n;
    const uint8_t *body;
    int rc = parse(buf, len, &mode, &n, &body);
    if (rc) return rc;
    if (mode == 1) return hll_merge_dense(dst, body);
    if (dst->dense) {
        for (size_t i = 0; i < n; i++) reg_add(dst->reg, load_le64(body + 8 * i));
        return TALLY_OK;
    }
    uint64_t *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!tmp) return TALLY_ENOMEM;
    for (size_t i = 0; i < n; i++) tmp[i] = load_le64(body + 8 * i);
    rc = merge_sorted(dst, tmp, n);
    free(tmp);
    return rc;
}

int hll_deserialize(const uint8_t *buf, size_t len, uint32_t exact_max, struct hll **out)
{
    struct hll *h = hll_new(exact_max);
    if (!h) return TALLY_ENOMEM;
    int mode;
    size_t n;
    const uint8_t *body;
    int rc = parse(buf, len, &mode, &n, &body);
    if (rc) {
        hll_free(h);
        return rc;
    }
    if (mode == 1) {
        h->reg = malloc(HLL_REGISTERS);
        if (!h->reg) {
            hll_free(h);
            return TALLY_ENOMEM;
        }
        memcpy(h->reg, body, HLL_REGISTERS);
        h->dense = true;
    } else if (n > 0) {
        if ((rc = reserve(h, n))) {
            hll_free(h);
            return rc;
        }
        for (size_t i = 0; i < n; i++) h->items[i] = load_le64(body + 8 * i);
        h->count = n;
        if (n > h->exact_max && (rc = to_dense(h))) {
            hll_free(h);
            return rc;
        }
    }
    *out = h;
    return TALLY_OK;
}
