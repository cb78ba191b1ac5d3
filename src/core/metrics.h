/*
 * metrics: a small Prometheus metrics registry (text exposition format 0.0.4).
 *
 * Model. A registry holds families (one metric name, its HELP text and TYPE) and each family
 * holds series (one label set). Series are registered once, at setup, and the caller keeps the
 * returned pointer: the hot path is then a single relaxed atomic add on that series, with no
 * lock and no lookup. Registering the same (name, labels) twice returns the same series, so
 * modules may register idempotently. Series live until metrics_free; nothing is ever removed.
 *
 * Kinds:
 *  - counter: a monotonic uint64 (metrics_counter_add), or a view of a caller-owned atomic
 *    (metrics_counter_ref) that is read at render time;
 *  - gauge: a double set/added atomically, or computed by a callback at render time;
 *  - histogram: fixed bucket upper bounds given at registration (all series of a family share
 *    them); observe() is two atomic adds plus a CAS on the sum.
 *
 * Rendering (metrics_render) takes the registry mutex (also taken by registration), writes
 * "# HELP" / "# TYPE" once per family, then every series in registration order. Label values
 * are escaped (\\, \", \n), HELP text too (\\, \n). Series flagged METRICS_HIDE_ZERO are left
 * out while their value is 0 (used for large pre-registered tables such as requests by route
 * and status, where most cells stay empty).
 *
 * Invalid names (metric names must match [a-zA-Z_:][a-zA-Z0-9_:]*, label names
 * [a-zA-Z_][a-zA-Z0-9_]*), a name already registered with another type, or OOM make the
 * register functions return NULL; every update function accepts NULL and does nothing, so a
 * missing metric never breaks the caller.
 *
 * Threads: every function may be called from any thread. Render and registration serialize on
 * one mutex; updates are lock-free. Gauge callbacks run on the rendering thread under the mutex
 * (they must not call back into the registry).
 */
#ifndef TALLY_METRICS_H
#define TALLY_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct metrics;
struct metrics_counter;
struct metrics_gauge;
struct metrics_histogram;

#define METRICS_HIDE_ZERO 1u /* leave the series out of the output while its value is 0 */

#define METRICS_LABELS_MAX 8        /* label pairs per series */
#define METRICS_LABEL_BYTES_MAX 256 /* bytes of one label value */
#define METRICS_BUCKETS_MAX 32      /* histogram bucket bounds */

/* A new empty registry; caller owns it (metrics_free). NULL on OOM. */
struct metrics *metrics_new(void);
/* Frees the registry and every series; NULL is a no-op. No other thread may use it any more. */
void metrics_free(struct metrics *m);

/*
 * Registration. `labels` is NULL or a NULL-terminated array of alternating names and values:
 * (const char *[]){"route", "events", "status", "202", NULL}. Strings are copied. The returned
 * series is owned by the registry and valid until metrics_free. NULL on invalid input or OOM.
 */
struct metrics_counter *metrics_counter(struct metrics *m, const char *name, const char *help,
                                        const char *const *labels, unsigned flags);
/* A counter whose value is read from *src (owned by the caller, must outlive the registry). */
struct metrics_counter *metrics_counter_ref(struct metrics *m, const char *name, const char *help,
                                            const char *const *labels, unsigned flags,
                                            const _Atomic uint64_t *src);
struct metrics_gauge *metrics_gauge(struct metrics *m, const char *name, const char *help,
                                    const char *const *labels, unsigned flags);
/* A gauge computed at render time by fn(arg) (called under the registry mutex). */
struct metrics_gauge *metrics_gauge_fn(struct metrics *m, const char *name, const char *help,
                                       const char *const *labels, double (*fn)(void *arg),
                                       void *arg);
/*
 * A histogram with `bounds_count` strictly increasing finite upper bounds (a +Inf bucket is
 * implied). Every series of one family must use the same bounds, else NULL.
 */
struct metrics_histogram *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                            const char *const *labels, const double *bounds,
                                            size_t bounds_count);

/* Updates: lock-free, any thread, NULL is a no-op. */
void metrics_counter_add(struct metrics_counter *c, uint64_t n);
uint64_t metrics_counter_value(const struct metrics_counter *c);
void metrics_gauge_set(struct metrics_gauge *g, double v);
void metrics_gauge_add(struct metrics_gauge *g, double delta);
double metrics_gauge_value(const struct metrics_gauge *g);
void metrics_histogram_observe(struct metrics_histogram *h, double v);
/* Number of observations so far (the +Inf bucket). */
uint64_t metrics_histogram_count(const struct metrics_histogram *h);

/*
 * Appends the whole registry in Prometheus text format to `out` (libevent evbuffer, caller
 * owned). Returns 0 or TALLY_ENOMEM. Content type: "text/plain; version=0.0.4".
 */
int metrics_render(struct metrics *m, struct evbuffer *out);

#endif
