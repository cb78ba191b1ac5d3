/*
 * funnel: funnels over the raw store (definitions in funnel.h).
 *
 * HOW. funnel_parse builds a v2 document from the request's site_id, date_range and filters
 * and hands it to query_parse_v2, so both APIs share one parser. funnel_compute asks
 * qscan_visits (qvisit.h) for the visits of the range with their name and path ids and "in
 * scope" flags, turns each visit into its step events (a bit mask of the steps each matches),
 * and keeps the best depth per visitor: with window "visit" the best over their visits; with a
 * time window, the visitor's step events of all visits are collected (visits of one visitor
 * arrive together) and judged at once.
 *
 * STEP MATCHING. An event step is one dictionary id (raw_dict_find once; a name the site never
 * stored matches nothing). A page step is a pattern: each distinct path id met is resolved once
 * (raw_dict_string) into the mask of the page steps it matches and cached, so the cost is one
 * dictionary read per distinct path, not per event.
 *
 * DEPTH (funnel_depth). Loose: for each start event matching step 1, a greedy walk forward
 * (take an event for step k as soon as one matches: greedy is optimal for subsequences) until
 * the window closes; a walk that was not cut by the window ends the search, since any later
 * start reaches no further. Strict: from each start, extend while the NEXT step event matches
 * the next step and lies within the window. Both stop early once all steps are reached.
 *
 * BUDGET. The scan's deadline and memory budget (q_budget) apply; the per-visitor scratch of
 * step events is charged against the same memory budget.
 */
#include "query/funnel.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/timefmt.h"
#include "query/qvisit.h"
#include "rollup/u64map.h"
#include "store/raw.h"
#include "tally/error.h"

#define FN_MEMORY_DEFAULT ((size_t)1 << 30)
#define FN_CACHE_DONE (1ULL << 32) /* path cache value: resolved (low bits: the mask) */

/* ---------------------------------------------------------------- parse */

static int ferr(char *err, size_t cap, const char *fmt, const char *a)
{
    snprintf(err, cap, fmt, a ? a : "");
    return TALLY_EINVAL;
}

static int parse_window(const cJSON *w, int64_t *ms, char *err, size_t cap)
{
    *ms = 0;
    if (!w || cJSON_IsNull(w)) return TALLY_OK;
    const char *want = "#/window: expected \"visit\", a number of seconds (1 to 31622400), or "
                       "a duration like \"30m\", \"2h\", \"7d\"%s";
    long long secs;
    if (cJSON_IsNumber(w)) {
        double v = w->valuedouble;
        if (!isfinite(v) || v != floor(v) || v < 1 || v > (double)FUNNEL_WINDOW_S_MAX)
            return ferr(err, cap, want, NULL);
        secs = (long long)v;
    } else if (cJSON_IsString(w)) {
        const char *s = w->valuestring;
        if (strcmp(s, "visit") == 0) return TALLY_OK;
        char *end;
        long long n = strtoll(s, &end, 10);
        if (end == s || *s < '0' || *s > '9' || n < 1 || n > FUNNEL_WINDOW_S_MAX)
            return ferr(err, cap, want, NULL);
        long long unit = strcmp(end, "s") == 0   ? 1
                         : strcmp(end, "m") == 0 ? 60
                         : strcmp(end, "h") == 0 ? 3600
                         : strcmp(end, "d") == 0 ? 86400
                                                 : 0;
        if (unit == 0 || n > FUNNEL_WINDOW_S_MAX / unit) return ferr(err, cap, want, NULL);
        secs = n * unit;
    } else {
        return ferr(err, cap, want, NULL);
    }
    *ms = secs * 1000;
    return TALLY_OK;
}

static int parse_step(const cJSON *st, size_t i, struct funnel_step *out, char *err, size_t cap)
{
    char path[48];
    snprintf(path, sizeof path, "#/steps/%zu", i);
    const cJSON *page = cJSON_GetObjectItemCaseSensitive(st, "page");
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(st, "event");
    if (!cJSON_IsObject(st) || cJSON_GetArraySize(st) != 1 || (!page && !ev))
        return ferr(err, cap, "%s: expected {\"page\": \"/path/pattern\"} or {\"event\": \"Name\"}",
                    path);
    const cJSON *v = page ? page : ev;
    if (!cJSON_IsString(v) || !v->valuestring[0] ||
        strlen(v->valuestring) > FUNNEL_VALUE_BYTES_MAX) {
        snprintf(err, cap, "%s/%s: expected a non-empty string of at most %d bytes", path,
                 page ? "page" : "event", FUNNEL_VALUE_BYTES_MAX);
        return TALLY_EINVAL;
    }
    if (page && v->valuestring[0] != '/') {
        snprintf(err, cap, "%s/page: a page pattern starts with '/' (wildcards: * within a "
                 "segment, ** across)", path);
        return TALLY_EINVAL;
    }
    out->page = page != NULL;
    out->value = strdup(v->valuestring);
    return out->value ? TALLY_OK : TALLY_ENOMEM;
}

static const char *const funnel_keys[] = {"site_id", "date_range", "filters", "steps", "window",
                                          "order"};

static int parse_own(const cJSON *root, struct funnel *f, char *err, size_t cap)
{
    for (const cJSON *k = root->child; k; k = k->next) {
        bool ok = false;
        for (size_t i = 0; i < TALLY_ARRAY_LEN(funnel_keys); i++)
            ok |= strcmp(k->string, funnel_keys[i]) == 0;
        if (!ok)
            return ferr(err, cap, "#/%s: unknown key; accepted: site_id, date_range, filters, "
                        "steps, window, order", k->string);
    }
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(root, "steps");
    int n = cJSON_IsArray(steps) ? cJSON_GetArraySize(steps) : -1;
    if (n < FUNNEL_STEPS_MIN || n > FUNNEL_STEPS_MAX) {
        snprintf(err, cap, "#/steps: required: a list of %d to %d steps, each {\"page\": "
                 "\"/pattern\"} or {\"event\": \"Name\"}", FUNNEL_STEPS_MIN, FUNNEL_STEPS_MAX);
        return TALLY_EINVAL;
    }
    size_t i = 0;
    for (const cJSON *st = steps->child; st; st = st->next, i++) {
        int rc = parse_step(st, i, &f->steps[i], err, cap);
        if (rc) return rc;
        f->nsteps = i + 1;
    }
    int rc = parse_window(cJSON_GetObjectItemCaseSensitive(root, "window"), &f->window_ms, err,
                          cap);
    if (rc) return rc;
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(root, "order");
    if (order) {
        if (!cJSON_IsString(order) ||
            (strcmp(order->valuestring, "loose") && strcmp(order->valuestring, "strict")))
            return ferr(err, cap, "#/order: expected \"loose\" or \"strict\"%s", NULL);
        f->strict = strcmp(order->valuestring, "strict") == 0;
    }
    return TALLY_OK;
}

/* The v2 document {site_id, metrics: ["visitors"], date_range, filters} of the request. */
static char *v2_document(const cJSON *root)
{
    cJSON *doc = cJSON_CreateObject();
    if (!doc) return NULL;
    static const char *const keep[] = {"site_id", "date_range", "filters"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(keep); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keep[i]);
        if (v && !cJSON_AddItemToObject(doc, keep[i], cJSON_Duplicate(v, true))) goto fail;
    }
    cJSON *m = cJSON_AddArrayToObject(doc, "metrics");
    if (!m || !cJSON_AddItemToArray(m, cJSON_CreateString("visitors"))) goto fail;
    char *s = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    return s;
fail:
    cJSON_Delete(doc);
    return NULL;
}

int funnel_parse(const char *json, size_t len, int64_t now_ms, q_site_fn site_fn, void *arg,
                 struct funnel **out, char *err, size_t errcap)
{
    *out = NULL;
    if (len > QUERY_BODY_BYTES_MAX) {
        snprintf(err, errcap, "funnel body larger than %u bytes", QUERY_BODY_BYTES_MAX);
        return TALLY_EINVAL;
    }
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        snprintf(err, errcap, "#: expected a JSON object {site_id, date_range, steps, window, "
                 "order, filters}");
        return TALLY_EINVAL;
    }
    struct funnel *f = calloc(1, sizeof *f);
    int rc = f ? parse_own(root, f, err, errcap) : TALLY_ENOMEM;
    char *doc = rc ? NULL : v2_document(root);
    if (!rc && !doc) rc = TALLY_ENOMEM;
    cJSON_Delete(root);
    if (!rc) rc = query_parse_v2(doc, strlen(doc), now_ms, site_fn, arg, &f->q, err, errcap);
    cJSON_free(doc);
    if (rc) {
        funnel_free(f);
        return rc;
    }
    *out = f;
    return TALLY_OK;
}

void funnel_free(struct funnel *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->nsteps; i++)
        free(f->steps[i].value);
    query_free(f->q);
    free(f);
}

/* ---------------------------------------------------------------- depth */

static size_t depth_loose(const struct funnel_ev *ev, size_t n, size_t K, int64_t w)
{
    size_t best = 0;
    for (size_t i = 0; i < n && best < K; i++) {
        if (!(ev[i].mask & 1)) continue;
        size_t k = 1;
        bool cut = false;
        for (size_t j = i + 1; j < n && k < K; j++) {
            if (w && ev[j].ts_ms - ev[i].ts_ms > w) {
                cut = true;
                break;
            }
            if (ev[j].mask >> k & 1) k++;
        }
        if (k > best) best = k;
        if (!cut) break; /* a later start reaches no further */
    }
    return best;
}

static size_t depth_strict(const struct funnel_ev *ev, size_t n, size_t K, int64_t w)
{
    size_t best = 0;
    for (size_t i = 0; i < n && best < K; i++) {
        if (!(ev[i].mask & 1)) continue;
        size_t k = 1;
        while (k < K && i + k < n && (ev[i + k].mask >> k & 1) &&
               (!w || ev[i + k].ts_ms - ev[i].ts_ms <= w))
            k++;
        if (k > best) best = k;
    }
    return best;
}

size_t funnel_depth(const struct funnel_ev *ev, size_t n, size_t nsteps, bool strict,
                    int64_t window_ms)
{
    TALLY_ASSERT(nsteps <= FUNNEL_STEPS_MAX);
    return strict ? depth_strict(ev, n, nsteps, window_ms) : depth_loose(ev, n, nsteps, window_ms);
}

/* ---------------------------------------------------------------- compute */

struct fctx {
    struct store *s;
    uint32_t site;
    const struct funnel *f;
    uint32_t name_id[FUNNEL_STEPS_MAX];
    bool name_found[FUNNEL_STEPS_MAX];
    uint32_t page_steps; /* mask of the page steps */
    struct u64map paths; /* path id -> FN_CACHE_DONE | mask */
    struct funnel_ev *seq;
    size_t nseq, capseq;
    size_t mem, mem_max;
    uint32_t cur_vseq;
    size_t cur_best;
    struct funnel_result *r;
    int err;
};

static uint32_t path_mask(struct fctx *c, uint32_t id)
{
    if (id == 0 || !c->page_steps) return 0;
    uint64_t *v = u64map_get(&c->paths, id);
    if (v) return (uint32_t)(*v & 0xffffffffu);
    char *str;
    uint32_t len;
    uint32_t mask = 0;
    int rc = raw_dict_string(c->s, c->site, id, &str, &len);
    if (rc == TALLY_OK) {
        for (size_t k = 0; k < c->f->nsteps; k++)
            if (c->f->steps[k].page &&
                qscan_glob_match(c->f->steps[k].value, strlen(c->f->steps[k].value), str, len))
                mask |= 1u << k;
        free(str);
    } else if (rc != TALLY_ENOENT && !c->err) {
        c->err = rc;
    }
    if (!u64map_put(&c->paths, id, FN_CACHE_DONE | mask) && !c->err) c->err = TALLY_ENOMEM;
    return mask;
}

static uint32_t event_mask(struct fctx *c, const struct qv_event *e)
{
    uint32_t m = 0;
    if (e->flags & RAW_F_PAGEVIEW) m |= path_mask(c, e->val[1]);
    for (size_t k = 0; k < c->f->nsteps; k++)
        if (!c->f->steps[k].page && c->name_found[k] && e->val[0] == c->name_id[k]) m |= 1u << k;
    return m;
}

/* The visitor c->cur_vseq is complete: count its best depth. */
static void visitor_done(struct fctx *c)
{
    if (c->f->window_ms)
        c->cur_best = funnel_depth(c->seq, c->nseq, c->f->nsteps, c->f->strict, c->f->window_ms);
    for (size_t k = 0; k < c->cur_best; k++)
        c->r->visitors[k]++;
    c->cur_best = 0;
    c->nseq = 0;
}

static int on_visit(void *arg, const struct qv_visit *v)
{
    struct fctx *c = arg;
    if (v->visitor_seq != c->cur_vseq) {
        if (c->cur_vseq) visitor_done(c);
        c->cur_vseq = v->visitor_seq;
    }
    size_t base = c->f->window_ms ? c->nseq : 0;
    if (base + v->n > c->capseq) {
        size_t cap = c->capseq ? c->capseq : 64;
        while (cap < base + v->n)
            cap *= 2;
        size_t add = (cap - c->capseq) * sizeof *c->seq;
        if (c->mem + add > c->mem_max) return TALLY_ETOOBIG;
        struct funnel_ev *p = realloc(c->seq, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        c->seq = p;
        c->capseq = cap;
        c->mem += add;
    }
    size_t n = base;
    for (size_t i = 0; i < v->n; i++) {
        const struct qv_event *e = &v->ev[i];
        if (!e->in_scope || !e->in_range) continue;
        uint32_t m = event_mask(c, e);
        if (m) c->seq[n++] = (struct funnel_ev){e->ts_ms, m};
    }
    if (c->err) return c->err;
    c->nseq = n;
    if (!c->f->window_ms) {
        size_t d = funnel_depth(c->seq, n, c->f->nsteps, c->f->strict, 0);
        if (d > c->cur_best) c->cur_best = d;
        c->nseq = 0;
    }
    return TALLY_OK;
}

int funnel_compute(struct store *s, uint32_t site_id, const struct funnel *f,
                   const struct q_budget *b, struct funnel_result *r)
{
    memset(r, 0, sizeof *r);
    if (site_id == 0) return TALLY_OK;
    struct fctx c = {.s = s, .site = site_id, .f = f, .r = r};
    c.mem_max = b && b->memory_bytes_max ? b->memory_bytes_max : FN_MEMORY_DEFAULT;
    for (size_t k = 0; k < f->nsteps; k++) {
        if (f->steps[k].page) {
            c.page_steps |= 1u << k;
            continue;
        }
        int rc = raw_dict_find(s, site_id, f->steps[k].value, (uint32_t)strlen(f->steps[k].value),
                               &c.name_id[k]);
        if (rc && rc != TALLY_ENOENT) return rc;
        c.name_found[k] = rc == TALLY_OK;
    }
    static const int fields[] = {DE_NAME, DE_PATH};
    /* the scan's memory budget leaves room for the funnel's own scratch */
    struct q_budget qb = b ? *b : (struct q_budget){0};
    int rc = qscan_visits(s, site_id, f->q, f->q->range, &qb, fields, 2, on_visit, &c);
    if (!rc && c.cur_vseq) visitor_done(&c);
    free(c.seq);
    u64map_free(&c.paths);
    return rc;
}

/* ---------------------------------------------------------------- response */

static double pct(uint64_t a, uint64_t b)
{
    return b ? round((double)a * 10000.0 / (double)b) / 100.0 : 0;
}

static cJSON *response(const struct funnel *f, const struct funnel_result *r)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *steps = cJSON_AddArrayToObject(root, "steps");
    if (!root || !steps) goto fail;
    for (size_t k = 0; k < f->nsteps; k++) {
        const struct funnel_step *st = &f->steps[k];
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(steps, o)) {
            cJSON_Delete(o);
            goto fail;
        }
        char label[FUNNEL_VALUE_BYTES_MAX + 8];
        snprintf(label, sizeof label, "%s%s", st->page ? "Visit " : "", st->value);
        uint64_t v = r->visitors[k], prev = k ? r->visitors[k - 1] : v;
        if (!cJSON_AddNumberToObject(o, "step", (double)(k + 1)) ||
            !cJSON_AddStringToObject(o, "label", label) ||
            !cJSON_AddStringToObject(o, st->page ? "page" : "event", st->value) ||
            !cJSON_AddNumberToObject(o, "visitors", (double)v) ||
            !cJSON_AddNumberToObject(o, "dropoff", (double)(prev - v)) ||
            !cJSON_AddNumberToObject(o, "dropoff_rate", pct(prev - v, prev)) ||
            !cJSON_AddNumberToObject(o, "conversion_rate", pct(v, r->visitors[0])) ||
            !cJSON_AddNumberToObject(o, "conversion_rate_step", pct(v, prev)))
            goto fail;
    }
    uint64_t first = r->visitors[0], last = r->visitors[f->nsteps - 1];
    char from[TIMEFMT_RFC3339_BYTES], to[TIMEFMT_RFC3339_BYTES];
    timefmt_format_rfc3339(f->q->range.from_ms, from);
    timefmt_format_rfc3339(f->q->range.to_ms, to);
    cJSON *meta = cJSON_CreateObject();
    if (!meta || !cJSON_AddItemToObject(root, "meta", meta)) {
        cJSON_Delete(meta);
        goto fail;
    }
    if (!cJSON_AddNumberToObject(root, "visitors", (double)first) ||
        !cJSON_AddNumberToObject(root, "converted", (double)last) ||
        !cJSON_AddNumberToObject(root, "conversion_rate", pct(last, first)) ||
        !cJSON_AddStringToObject(meta, "site_id", f->q->site) ||
        !(f->window_ms ? cJSON_AddNumberToObject(meta, "window", (double)(f->window_ms / 1000))
                       : cJSON_AddStringToObject(meta, "window", "visit")) ||
        !cJSON_AddStringToObject(meta, "order", f->strict ? "strict" : "loose") ||
        !cJSON_AddStringToObject(meta, "from", from) ||
        !cJSON_AddStringToObject(meta, "to", to) ||
        !cJSON_AddBoolToObject(meta, "exact", true))
        goto fail;
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}

int funnel_execute(struct store *s, uint32_t site_id, const struct funnel *f,
                   const struct q_budget *b, char **json, size_t *len, char *err,
                   size_t errcap)
{
    *json = NULL;
    *len = 0;
    struct funnel_result r;
    int rc = funnel_compute(s, site_id, f, b, &r);
    if (rc) {
        snprintf(err, errcap, "funnel: %s", tally_strerror(rc));
        return rc;
    }
    cJSON *root = response(f, &r);
    char *p = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!p) return TALLY_ENOMEM;
    *json = p;
    *len = strlen(p);
    return TALLY_OK;
}
