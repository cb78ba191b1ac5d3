/*
 * metrics: see metrics.h for the model. Implementation notes:
 *  - families form a singly linked list in registration order, series a list per family;
 *    lookups (registration only) are linear, which is fine for the few hundred series a
 *    process registers at setup;
 *  - a series stores its label set pre-rendered ("route=\"a\",status=\"200\"") so rendering
 *    does no escaping work per scrape;
 *  - gauges keep a double in a uint64 (bit pattern) so set/add are atomic without a lock;
 *    histogram sums do the same with a CAS loop.
 */
#include "core/metrics.h"

#include <event2/buffer.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally/error.h"

enum metrics_type { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM };
enum series_src { SRC_OWN, SRC_REF, SRC_FN };

struct family;

struct series {
    struct series *next;
    struct family *fam;
    char *labels; /* pre-rendered, without braces; "" when none */
    unsigned flags;
    enum series_src src;
    _Atomic uint64_t value; /* counter value, or gauge double bits */
    const _Atomic uint64_t *ref;
    double (*fn)(void *arg);
    void *arg;
    _Atomic uint64_t *buckets; /* histogram: bounds_count + 1 (last = +Inf), not cumulative */
    _Atomic uint64_t sum_bits;
};

/* The public handle types are the series itself. */
struct metrics_counter {
    struct series s;
};
struct metrics_gauge {
    struct series s;
};
struct metrics_histogram {
    struct series s;
};

struct family {
    struct family *next;
    char *name, *help;
    enum metrics_type type;
    struct series *first, *last;
    double *bounds;
    size_t bounds_count;
};

struct metrics {
    pthread_mutex_t mu;
    struct family *first, *last;
};

static uint64_t dbl_bits(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

static double bits_dbl(uint64_t u)
{
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

struct metrics *metrics_new(void)
{
    struct metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

void metrics_free(struct metrics *m)
{
    if (!m) return;
    struct family *f = m->first;
    while (f) {
        struct family *fn = f->next;
        struct series *s = f->first;
        while (s) {
            struct series *sn = s->next;
            free(s->labels);
            free(s->buckets);
            free(s);
            s = sn;
        }
        free(f->name);
        free(f->help);
        free(f->bounds);
        free(f);
        f = fn;
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static bool name_ok(const char *s, bool colon_ok)
{
    if (!s || !*s) return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon_ok && c == ':');
        if (!alpha && !(p != s && c >= '0' && c <= '9')) return false;
    }
    return true;
}

/* Appends src escaped for a label value (or HELP text when help = true) to dst. */
static size_t escape_into(char *dst, const char *src, bool help)
{
    size_t n = 0;
    for (const char *p = src; *p; p++) {
        if (*p == '\\') {
            dst[n++] = '\\';
            dst[n++] = '\\';
        } else if (*p == '\n') {
            dst[n++] = '\\';
            dst[n++] = 'n';
        } else if (*p == '"' && !help) {
            dst[n++] = '\\';
            dst[n++] = '"';
        } else {
            dst[n++] = *p;
        }
    }
    dst[n] = 0;
    return n;
}

/* Renders a label array into a malloc'd string; NULL on invalid input or OOM. */
static char *render_labels(const char *const *labels)
{
    size_t pairs = 0, bytes = 1;
    for (; labels && labels[2 * pairs]; pairs++) {
        const char *k = labels[2 * pairs], *v = labels[2 * pairs + 1];
        if (pairs >= METRICS_LABELS_MAX || !v || !name_ok(k, false)) return NULL;
        if (strlen(v) > METRICS_LABEL_BYTES_MAX) return NULL;
        bytes += strlen(k) + 2 * strlen(v) + 4;
    }
    char *out = malloc(bytes);
    if (!out) return NULL;
    size_t n = 0;
    for (size_t i = 0; i < pairs; i++) {
        if (i) out[n++] = ',';
        size_t kl = strlen(labels[2 * i]);
        memcpy(out + n, labels[2 * i], kl);
        n += kl;
        out[n++] = '=';
        out[n++] = '"';
        n += escape_into(out + n, labels[2 * i + 1], false);
        out[n++] = '"';
    }
    out[n] = 0;
    return out;
}

static struct family *family_get(struct metrics *m, const char *name, const char *help,
                                 enum metrics_type type, const double *bounds, size_t nb)
{
    for (struct family *f = m->first; f; f = f->next) {
        if (strcmp(f->name, name) != 0) continue;
        if (f->type != type) return NULL;
        if (type == MT_HISTOGRAM &&
            (f->bounds_count != nb || memcmp(f->bounds, bounds, nb * sizeof *bounds) != 0))
            return NULL;
        return f;
    }
    struct family *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->type = type;
    if (type == MT_HISTOGRAM) {
        f->bounds = malloc(nb * sizeof *bounds);
        if (f->bounds) memcpy(f->bounds, bounds, nb * sizeof *bounds);
        f->bounds_count = nb;
    }
    if (!f->name || !f->help || (type == MT_HISTOGRAM && !f->bounds)) {
        free(f->name);
        free(f->help);
        free(f->bounds);
        free(f);
        return NULL;
    }
    if (m->last)
        m->last->next = f;
    else
        m->first = f;
    m->last = f;
    return f;
}

/* Finds or creates the series (name, labels); *created tells which. Caller holds m->mu. */
static struct series *series_get(struct metrics *m, const char *name, const char *help,
                                 enum metrics_type type, const char *const *labels,
                                 const double *bounds, size_t nb, bool *created)
{
    *created = false;
    if (!name_ok(name, true)) return NULL;
    char *lab = render_labels(labels);
    if (!lab) return NULL;
    struct family *f = family_get(m, name, help, type, bounds, nb);
    if (!f) {
        free(lab);
        return NULL;
    }
    for (struct series *s = f->first; s; s = s->next) {
        if (strcmp(s->labels, lab) == 0) {
            free(lab);
            return s;
        }
    }
    struct series *s = calloc(1, sizeof *s);
    if (!s) {
        free(lab);
        return NULL;
    }
    s->fam = f;
    s->labels = lab;
    if (type == MT_HISTOGRAM) {
        s->buckets = calloc(nb + 1, sizeof *s->buckets);
        if (!s->buckets) {
            free(lab);
            free(s);
            return NULL;
        }
    }
    if (f->last)
        f->last->next = s;
    else
        f->first = s;
    f->last = s;
    *created = true;
    return s;
}

struct metrics_counter *metrics_counter(struct metrics *m, const char *name, const char *help,
                                        const char *const *labels, unsigned flags)
{
    if (!m) return NULL;
    bool created;
    pthread_mutex_lock(&m->mu);
    struct series *s = series_get(m, name, help, MT_COUNTER, labels, NULL, 0, &created);
    if (s && created) s->flags = flags;
    if (s && s->src != SRC_OWN) s = NULL;
    pthread_mutex_unlock(&m->mu);
    return (struct metrics_counter *)s;
}

struct metrics_counter *metrics_counter_ref(struct metrics *m, const char *name, const char *help,
                                            const char *const *labels, unsigned flags,
                                            const _Atomic uint64_t *src)
{
    if (!m || !src) return NULL;
    bool created;
    pthread_mutex_lock(&m->mu);
    struct series *s = series_get(m, name, help, MT_COUNTER, labels, NULL, 0, &created);
    if (s && created) {
        s->flags = flags;
        s->src = SRC_REF;
        s->ref = src;
    }
    if (s && (s->src != SRC_REF || s->ref != src)) s = NULL;
    pthread_mutex_unlock(&m->mu);
    return (struct metrics_counter *)s;
}

struct metrics_gauge *metrics_gauge(struct metrics *m, const char *name, const char *help,
                                    const char *const *labels, unsigned flags)
{
    if (!m) return NULL;
    bool created;
    pthread_mutex_lock(&m->mu);
    struct series *s = series_get(m, name, help, MT_GAUGE, labels, NULL, 0, &created);
    if (s && created) s->flags = flags;
    if (s && s->src != SRC_OWN) s = NULL;
    pthread_mutex_unlock(&m->mu);
    return (struct metrics_gauge *)s;
}

struct metrics_gauge *metrics_gauge_fn(struct metrics *m, const char *name, const char *help,
                                       const char *const *labels, double (*fn)(void *arg),
                                       void *arg)
{
    if (!m || !fn) return NULL;
    bool created;
    pthread_mutex_lock(&m->mu);
    struct series *s = series_get(m, name, help, MT_GAUGE, labels, NULL, 0, &created);
    if (s && created) {
        s->src = SRC_FN;
        s->fn = fn;
        s->arg = arg;
    }
    if (s && (s->src != SRC_FN || s->fn != fn || s->arg != arg)) s = NULL;
    pthread_mutex_unlock(&m->mu);
    return (struct metrics_gauge *)s;
}

struct metrics_histogram *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                            const char *const *labels, const double *bounds,
                                            size_t bounds_count)
{
    if (!m || !bounds || bounds_count == 0 || bounds_count > METRICS_BUCKETS_MAX) return NULL;
    for (size_t i = 0; i < bounds_count; i++) {
        if (!isfinite(bounds[i])) return NULL;
        if (i && !(bounds[i] > bounds[i - 1])) return NULL;
    }
    bool created;
    pthread_mutex_lock(&m->mu);
    struct series *s =
        series_get(m, name, help, MT_HISTOGRAM, labels, bounds, bounds_count, &created);
    pthread_mutex_unlock(&m->mu);
    return (struct metrics_histogram *)s;
}

void metrics_counter_add(struct metrics_counter *c, uint64_t n)
{
    if (c) atomic_fetch_add_explicit(&c->s.value, n, memory_order_relaxed);
}

uint64_t metrics_counter_value(const struct metrics_counter *c)
{
    if (!c) return 0;
    if (c->s.src == SRC_REF) return atomic_load_explicit(c->s.ref, memory_order_relaxed);
    return atomic_load_explicit(&c->s.value, memory_order_relaxed);
}

void metrics_gauge_set(struct metrics_gauge *g, double v)
{
    if (g) atomic_store_explicit(&g->s.value, dbl_bits(v), memory_order_relaxed);
}

static void atomic_dbl_add(_Atomic uint64_t *p, double delta)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(p, &old, dbl_bits(bits_dbl(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

void metrics_gauge_add(struct metrics_gauge *g, double delta)
{
    if (g) atomic_dbl_add(&g->s.value, delta);
}

double metrics_gauge_value(const struct metrics_gauge *g)
{
    if (!g) return 0;
    if (g->s.src == SRC_FN) return g->s.fn(g->s.arg);
    return bits_dbl(atomic_load_explicit(&g->s.value, memory_order_relaxed));
}

void metrics_histogram_observe(struct metrics_histogram *h, double v)
{
    if (!h) return;
    const struct family *f = h->s.fam;
    size_t i = 0;
    while (i < f->bounds_count && !(v <= f->bounds[i]))
        i++;
    atomic_fetch_add_explicit(&h->s.buckets[i], 1, memory_order_relaxed);
    atomic_dbl_add(&h->s.sum_bits, v);
}

uint64_t metrics_histogram_count(const struct metrics_histogram *h)
{
    if (!h) return 0;
    uint64_t n = 0;
    for (size_t i = 0; i <= h->s.fam->bounds_count; i++)
        n += atomic_load_explicit(&h->s.buckets[i], memory_order_relaxed);
    return n;
}

/* Shortest of %.15g / %.17g that reads back exactly; Prometheus spellings for the rest. */
static void fmt_double(char *buf, size_t cap, double v)
{
    if (isnan(v)) {
        snprintf(buf, cap, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, cap, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(buf, cap, "%.15g", v);
        if (strtod(buf, NULL) != v) snprintf(buf, cap, "%.17g", v);
    }
}

static const char *type_name(enum metrics_type t)
{
    return t == MT_COUNTER ? "counter" : t == MT_GAUGE ? "gauge" : "histogram";
}

static int render_histogram(struct evbuffer *out, const struct family *f, const struct series *s)
{
    char num[64];
    uint64_t cum = 0;
    const char *sep = s->labels[0] ? "," : "";
    int rc = 0;
    for (size_t i = 0; i <= f->bounds_count; i++) {
        cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < f->bounds_count)
            fmt_double(num, sizeof num, f->bounds[i]);
        else
            snprintf(num, sizeof num, "+Inf");
        rc |= evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%s\"} %llu\n", f->name, s->labels, sep,
                                  num, (unsigned long long)cum) < 0;
    }
    fmt_double(num, sizeof num, bits_dbl(atomic_load_explicit(&s->sum_bits, memory_order_relaxed)));
    const char *lb = s->labels[0] ? "{" : "", *rb = s->labels[0] ? "}" : "";
    rc |= evbuffer_add_printf(out, "%s_sum%s%s%s %s\n", f->name, lb, s->labels, rb, num) < 0;
    rc |= evbuffer_add_printf(out, "%s_count%s%s%s %llu\n", f->name, lb, s->labels, rb,
                              (unsigned long long)cum) < 0;
    return rc ? TALLY_ENOMEM : TALLY_OK;
}

static int render_series(struct evbuffer *out, const struct family *f, const struct series *s)
{
    if (f->type == MT_HISTOGRAM) return render_histogram(out, f, s);
    char num[64];
    if (f->type == MT_COUNTER) {
        uint64_t v = metrics_counter_value((const struct metrics_counter *)s);
        if (v == 0 && (s->flags & METRICS_HIDE_ZERO)) return TALLY_OK;
        snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    } else {
        double v = metrics_gauge_value((const struct metrics_gauge *)s);
        if (v == 0 && (s->flags & METRICS_HIDE_ZERO)) return TALLY_OK;
        fmt_double(num, sizeof num, v);
    }
    int n;
    if (s->labels[0])
        n = evbuffer_add_printf(out, "%s{%s} %s\n", f->name, s->labels, num);
    else
        n = evbuffer_add_printf(out, "%s %s\n", f->name, num);
    return n < 0 ? TALLY_ENOMEM : TALLY_OK;
}

int metrics_render(struct metrics *m, struct evbuffer *out)
{
    if (!m || !out) return TALLY_EINVAL;
    int rc = TALLY_OK;
    pthread_mutex_lock(&m->mu);
    for (const struct family *f = m->first; f && rc == TALLY_OK; f = f->next) {
        char *help = malloc(2 * strlen(f->help) + 1);
        if (!help) {
            rc = TALLY_ENOMEM;
            break;
        }
        escape_into(help, f->help, true);
        if (evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, help, f->name,
                                type_name(f->type)) < 0)
            rc = TALLY_ENOMEM;
        free(help);
        for (const struct series *s = f->first; s && rc == TALLY_OK; s = s->next)
            rc = render_series(out, f, s);
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}
