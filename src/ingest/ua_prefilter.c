/*
 * ua_prefilter: required-literal analysis of regexes. See ua_prefilter.h for the contract.
 *
 * Analysis (in the manner of RE2's FilteredRE2), over the regex syntax uap-core uses: literal
 * characters, escapes of punctuation, \d \w \s \S \b, classes, '.', '^', '$', (...),
 * (?:...), '|', and the quantifiers ? * + {m,n} (lazy or possessive too). A requirement is a
 * conjunction of clauses; a clause is an OR-set of literals (lower case, 3..32 bytes):
 *   - a run of literal characters that every match contains contiguously is a clause of one
 *     literal (a class of one byte, or of one letter in both cases, counts as that letter;
 *     a longer run is cut to its first 32 bytes, which are required as well);
 *   - an atom with minimum 0 contributes nothing, and breaks the run;
 *   - a concatenation is the conjunction of its runs and of its required groups' clauses;
 *   - an alternation of several branches is one clause: the union of each branch's best
 *     clause (longest shortest literal, then fewest literals), or nothing if a branch has none;
 *   - anything else (lookaround, inline flags, backreferences, \x escapes) makes the whole
 *     regex "always run".
 * Only weakening steps are ever taken (dropping a clause, comparing case-insensitively), so a
 * regex is never skipped for a string it could match. test_ua compares filtered and unfiltered
 * classification on thousands of strings, and fuzz_ua does so on every input.
 *
 * Scan: literals are indexed by their first 3 bytes (open addressing from that 24-bit value to
 * the run of literals in `gram_order` that start with it); a scan probes once per position of
 * the lower-cased string and compares the few candidates. rule_lits stores each regex's
 * clauses as [length, id, id, ...] runs.
 */
#include "ingest/ua_prefilter.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "tally/error.h"

struct ua_prefilter {
    char **lits; /* distinct lower-case literals; ids are indices */
    uint8_t *lit_len;
    uint32_t nlits, lits_cap;
    uint32_t *lit_hash_slots; /* build-time dedupe: id + 1, 0 = empty */
    uint32_t lit_hash_cap;
    uint32_t *rule_lits;
    uint32_t nrule_lits, rule_lits_cap;
    uint32_t *gram_key, *gram_first, *gram_count, *gram_order; /* 3-byte prefix index */
    uint32_t gram_bits;
};

#define PF_LIT_BYTES_MIN 3
#define PF_LIT_BYTES_MAX 32
#define PF_SET_MAX 512   /* an OR-set with more literals is treated as "no requirement" */
#define PF_CLAUSES_MAX 8 /* clauses kept per rule (the rest are dropped: a weaker filter) */

typedef struct litset {
    bool any; /* no requirement */
    uint32_t n;
    char (*v)[PF_LIT_BYTES_MAX + 1];
} litset;

/* A conjunction of OR-sets: a match must contain a literal of every clause. */
typedef struct req {
    uint32_t n;
    litset c[PF_CLAUSES_MAX];
} req;

typedef struct pf_parser {
    const char *p, *end;
    bool fail;
    int depth;
} pf_parser;

static void litset_free(litset *s)
{
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static void req_free(req *r)
{
    for (uint32_t i = 0; i < r->n; i++)
        litset_free(&r->c[i]);
    r->n = 0;
}

static litset litset_any(void)
{
    return (litset){.any = true};
}

static litset litset_one(const char *lit, size_t len)
{
    litset s = {0};
    s.v = malloc(sizeof *s.v);
    if (!s.v) return litset_any();
    memcpy(s.v[0], lit, len);
    s.v[0][len] = 0;
    s.n = 1;
    return s;
}

/* Union of two OR-sets (either branch may match); consumes both. */
static litset litset_union(litset a, litset b)
{
    if (a.any || b.any || a.n + b.n > PF_SET_MAX) {
        litset_free(&a);
        litset_free(&b);
        return litset_any();
    }
    void *v = realloc(a.v, (a.n + b.n) * sizeof *a.v);
    if (!v) {
        litset_free(&a);
        litset_free(&b);
        return litset_any();
    }
    a.v = v;
    memcpy(a.v + a.n, b.v, b.n * sizeof *b.v);
    a.n += b.n;
    litset_free(&b);
    return a;
}

/* How selective an OR-set is: its shortest literal's length (0: useless). */
static size_t litset_score(const litset *s)
{
    if (s->any || s->n == 0) return 0;
    size_t m = SIZE_MAX;
    for (uint32_t i = 0; i < s->n; i++) {
        size_t l = strlen(s->v[i]);
        if (l < m) m = l;
    }
    return m;
}

/* Adds a clause to r (consumes it); a useless clause, or one beyond the cap, is dropped,
 * which only weakens the filter. */
static void req_and(req *r, litset c)
{
    if (litset_score(&c) < PF_LIT_BYTES_MIN || r->n == PF_CLAUSES_MAX) {
        litset_free(&c);
        return;
    }
    r->c[r->n++] = c;
}

/* Moves the best clause out of r (the one with the highest score, then fewest literals) and
 * frees the rest; "any" if r has none. */
static litset req_best(req *r)
{
    int best = -1;
    for (uint32_t i = 0; i < r->n; i++) {
        if (best < 0) {
            best = (int)i;
            continue;
        }
        size_t si = litset_score(&r->c[i]), sb = litset_score(&r->c[best]);
        if (si > sb || (si == sb && r->c[i].n < r->c[best].n)) best = (int)i;
    }
    litset out = best >= 0 ? r->c[best] : litset_any();
    if (best >= 0) r->c[best] = (litset){0};
    req_free(r);
    return out;
}

static req pf_alt(pf_parser *ps);

/* Parses a quantifier at ps->p if any; returns its minimum (1 when there is none) and sets
 * *single when the atom occurs exactly once. */
static unsigned pf_quant(pf_parser *ps, bool *single)
{
    *single = true;
    const char *p = ps->p;
    unsigned min = 1;
    if (p < ps->end && (*p == '?' || *p == '*' || *p == '+')) {
        min = *p == '+' ? 1 : 0;
        p++;
        *single = false;
    } else if (p < ps->end && *p == '{') {
        const char *q = p + 1;
        unsigned lo = 0, digits = 0;
        while (q < ps->end && isdigit((unsigned char)*q) && digits < 6) {
            lo = lo * 10 + (unsigned)(*q++ - '0');
            digits++;
        }
        bool ok = digits > 0;
        if (ok && q < ps->end && *q == ',') {
            q++;
            while (q < ps->end && isdigit((unsigned char)*q))
                q++;
        }
        if (ok && q < ps->end && *q == '}') {
            p = q + 1;
            min = lo;
            *single = false; /* {1} is rare; treat every brace as "not exactly once" */
        }
    }
    if (!*single && p < ps->end && (*p == '?' || *p == '+')) p++; /* lazy / possessive */
    ps->p = p;
    return min;
}

/* Parses a character class after '['; returns the lower-case byte if the class is one byte
 * (or one letter in both cases), else -1. */
static int pf_class(pf_parser *ps)
{
    const char *p = ps->p;
    bool neg = p < ps->end && *p == '^';
    if (neg) p++;
    int chars[4], n = 0;
    bool simple = !neg;
    bool first = true;
    while (p < ps->end && (*p != ']' || first)) {
        first = false;
        int c = (unsigned char)*p;
        if (c == '\\') {
            if (p + 1 >= ps->end) break;
            c = (unsigned char)p[1];
            if (isalnum(c)) simple = false; /* \d, \w, ... */
            p += 2;
        } else if (c == '[') {
            simple = false;
            p++;
        } else {
            p++;
        }
        if (p < ps->end && *p == '-' && p + 1 < ps->end && p[1] != ']') simple = false;
        if (n < 4) chars[n] = c;
        n++;
    }
    if (p >= ps->end) {
        ps->fail = true;
        return -1;
    }
    ps->p = p + 1; /* past ']' */
    if (!simple) return -1;
    if (n == 1) return tolower(chars[0]);
    if (n == 2 && chars[0] != chars[1] && tolower(chars[0]) == tolower(chars[1]))
        return tolower(chars[0]);
    return -1;
}

enum { PF_LIT, PF_NONLIT, PF_ZERO, PF_GROUP };

/* A sequence of atoms: the conjunction of every literal run and every required group. */
static req pf_concat(pf_parser *ps)
{
    req r = {0};
    char run[PF_LIT_BYTES_MAX + 1];
    size_t runlen = 0;
#define PF_FLUSH()                                                                                 \
    do {                                                                                           \
        if (runlen >= PF_LIT_BYTES_MIN) req_and(&r, litset_one(run, runlen));                      \
        runlen = 0;                                                                                \
    } while (0)
    while (ps->p < ps->end && !ps->fail && *ps->p != '|' && *ps->p != ')') {
        int kind = PF_NONLIT, ch = 0;
        req sub = {0};
        char c = *ps->p++;
        if (c == '(') {
            if (ps->p < ps->end && *ps->p == '?') {
                if (ps->p + 1 < ps->end && ps->p[1] == ':') {
                    ps->p += 2;
                } else {
                    ps->fail = true; /* lookaround, inline flags, named groups: give up */
                    break;
                }
            }
            if (++ps->depth > 50) {
                ps->fail = true;
                break;
            }
            sub = pf_alt(ps);
            ps->depth--;
            if (ps->p >= ps->end || *ps->p != ')') {
                ps->fail = true;
                req_free(&sub);
                break;
            }
            ps->p++;
            kind = PF_GROUP;
        } else if (c == '[') {
            ch = pf_class(ps);
            kind = ch >= 0 ? PF_LIT : PF_NONLIT;
        } else if (c == '\\') {
            if (ps->p >= ps->end) {
                ps->fail = true;
                break;
            }
            char e = *ps->p++;
            if (e == 'b' || e == 'B') {
                kind = PF_ZERO;
            } else if (strchr("dDwWsS", e)) {
                kind = PF_NONLIT;
            } else if (isalnum((unsigned char)e)) {
                ps->fail = true; /* \x.., \1, \Q...: not in uap-core; give up */
                break;
            } else {
                kind = PF_LIT;
                ch = tolower((unsigned char)e);
            }
        } else if (c == '.') {
            kind = PF_NONLIT;
        } else if (c == '^' || c == '$') {
            kind = PF_ZERO;
        } else if (c == '*' || c == '+' || c == '?' || c == '{') {
            ps->fail = true; /* a quantifier with nothing before it, or a literal brace */
            break;
        } else {
            kind = PF_LIT;
            ch = tolower((unsigned char)c);
        }
        bool single = true;
        unsigned min = kind == PF_ZERO ? 1 : pf_quant(ps, &single);
        if (min == 0) {
            PF_FLUSH();
            req_free(&sub);
            continue;
        }
        if (kind == PF_LIT) {
            if (runlen < PF_LIT_BYTES_MAX) run[runlen++] = (char)ch;
            if (!single) PF_FLUSH();
        } else if (kind == PF_GROUP) {
            PF_FLUSH();
            for (uint32_t i = 0; i < sub.n; i++) {
                req_and(&r, sub.c[i]);
                sub.c[i] = (litset){0};
            }
            sub.n = 0;
        } else {
            PF_FLUSH();
        }
    }
    PF_FLUSH();
#undef PF_FLUSH
    return r;
}

/* Branches: one branch keeps its whole conjunction; several give one clause, the union of
 * each branch's best clause (none if some branch has none). */
static req pf_alt(pf_parser *ps)
{
    req first = pf_concat(ps);
    if (ps->fail || ps->p >= ps->end || *ps->p != '|') return first;
    litset u = req_best(&first);
    while (!ps->fail && ps->p < ps->end && *ps->p == '|') {
        ps->p++;
        req b = pf_concat(ps);
        u = litset_union(u, req_best(&b));
    }
    req r = {0};
    req_and(&r, u);
    return r;
}

/* The requirement of a whole regex (no clauses when it cannot be analysed). */
static req pf_analyse(const char *regex)
{
    pf_parser ps = {regex, regex + strlen(regex), false, 0};
    req r = pf_alt(&ps);
    if (ps.fail || ps.p != ps.end) req_free(&r);
    return r;
}

static uint32_t lit_id(ua_prefilter *pf, const char *lit, bool *oom)
{
    size_t len = strlen(lit);
    uint64_t h = XXH3_64bits(lit, len);
    if (2 * (pf->nlits + 1) > pf->lit_hash_cap) {
        uint32_t cap = pf->lit_hash_cap ? pf->lit_hash_cap * 2 : 4096;
        uint32_t *slots = calloc(cap, sizeof *slots);
        if (!slots) {
            *oom = true;
            return 0;
        }
        for (uint32_t i = 0; i < pf->lit_hash_cap; i++) {
            if (!pf->lit_hash_slots[i]) continue;
            uint32_t id = pf->lit_hash_slots[i] - 1;
            uint32_t s = (uint32_t)XXH3_64bits(pf->lits[id], pf->lit_len[id]) & (cap - 1);
            while (slots[s])
                s = (s + 1) & (cap - 1);
            slots[s] = id + 1;
        }
        free(pf->lit_hash_slots);
        pf->lit_hash_slots = slots;
        pf->lit_hash_cap = cap;
    }
    uint32_t s = (uint32_t)h & (pf->lit_hash_cap - 1);
    for (; pf->lit_hash_slots[s]; s = (s + 1) & (pf->lit_hash_cap - 1)) {
        uint32_t id = pf->lit_hash_slots[s] - 1;
        if (pf->lit_len[id] == len && memcmp(pf->lits[id], lit, len) == 0) return id;
    }
    if (pf->nlits == pf->lits_cap) {
        uint32_t cap = pf->lits_cap ? pf->lits_cap * 2 : 1024;
        char **v = realloc(pf->lits, cap * sizeof *v);
        uint8_t *l = v ? realloc(pf->lit_len, cap) : NULL;
        if (v) pf->lits = v;
        if (!v || !l) {
            *oom = true;
            return 0;
        }
        pf->lit_len = l;
        pf->lits_cap = cap;
    }
    pf->lits[pf->nlits] = strdup(lit);
    if (!pf->lits[pf->nlits]) {
        *oom = true;
        return 0;
    }
    pf->lit_len[pf->nlits] = (uint8_t)len;
    pf->lit_hash_slots[s] = pf->nlits + 1;
    return pf->nlits++;
}

int ua_prefilter_add(ua_prefilter *pf, const char *regex, uint32_t *first, uint32_t *count)
{
    req q = pf_analyse(regex);
    *first = pf->nrule_lits;
    *count = 0;
    uint32_t need = 0;
    for (uint32_t i = 0; i < q.n; i++)
        need += 1 + q.c[i].n;
    if (pf->nrule_lits + need > pf->rule_lits_cap) {
        uint32_t cap = pf->rule_lits_cap ? pf->rule_lits_cap : 1024;
        while (cap < pf->nrule_lits + need)
            cap *= 2;
        uint32_t *v = realloc(pf->rule_lits, cap * sizeof *v);
        if (!v) {
            req_free(&q);
            return TALLY_ENOMEM;
        }
        pf->rule_lits = v;
        pf->rule_lits_cap = cap;
    }
    bool oom = false;
    for (uint32_t i = 0; i < q.n && !oom; i++) {
        pf->rule_lits[pf->nrule_lits++] = q.c[i].n;
        for (uint32_t k = 0; k < q.c[i].n && !oom; k++)
            pf->rule_lits[pf->nrule_lits++] = lit_id(pf, q.c[i].v[k], &oom);
    }
    req_free(&q);
    if (oom) return TALLY_ENOMEM;
    *count = pf->nrule_lits - *first;
    return TALLY_OK;
}

static uint32_t pf_gram(const char *p)
{
    return (uint32_t)(unsigned char)p[0] | (uint32_t)(unsigned char)p[1] << 8 |
           (uint32_t)(unsigned char)p[2] << 16;
}

static uint32_t pf_slot(const ua_prefilter *pf, uint32_t gram)
{
    return (gram * 0x9E3779B1u) >> (32 - pf->gram_bits);
}

static int pf_cmp_ids(const void *a, const void *b, void *ctx)
{
    const ua_prefilter *pf = ctx;
    uint32_t x = pf_gram(pf->lits[*(const uint32_t *)a]);
    uint32_t y = pf_gram(pf->lits[*(const uint32_t *)b]);
    return x < y ? -1 : x > y;
}

int ua_prefilter_build(ua_prefilter *pf)
{
    free(pf->lit_hash_slots);
    pf->lit_hash_slots = NULL;
    pf->lit_hash_cap = 0;
    pf->gram_bits = 4;
    while ((1u << pf->gram_bits) < 4 * pf->nlits + 16)
        pf->gram_bits++;
    size_t n = (size_t)1 << pf->gram_bits;
    pf->gram_key = calloc(n, sizeof *pf->gram_key);
    pf->gram_first = calloc(n, sizeof *pf->gram_first);
    pf->gram_count = calloc(n, sizeof *pf->gram_count);
    pf->gram_order = malloc((pf->nlits + 1) * sizeof *pf->gram_order);
    if (!pf->gram_key || !pf->gram_first || !pf->gram_count || !pf->gram_order) return TALLY_ENOMEM;
    for (uint32_t i = 0; i < pf->nlits; i++)
        pf->gram_order[i] = i;
    qsort_r(pf->gram_order, pf->nlits, sizeof *pf->gram_order, pf_cmp_ids, pf);
    for (uint32_t i = 0; i < pf->nlits; i++) {
        uint32_t gram = pf_gram(pf->lits[pf->gram_order[i]]);
        uint32_t s = pf_slot(pf, gram);
        while (pf->gram_key[s] && pf->gram_key[s] != gram)
            s = (s + 1) & (uint32_t)(n - 1);
        if (!pf->gram_key[s]) {
            pf->gram_key[s] = gram;
            pf->gram_first[s] = i;
        }
        pf->gram_count[s]++;
    }
    return TALLY_OK;
}

void ua_prefilter_scan(const ua_prefilter *pf, const char *lower, size_t len, uint64_t *present)
{
    if (!pf->gram_key) return;
    uint32_t mask = (1u << pf->gram_bits) - 1;
    for (size_t i = 0; i + PF_LIT_BYTES_MIN <= len; i++) {
        uint32_t gram = pf_gram(lower + i);
        for (uint32_t s = pf_slot(pf, gram); pf->gram_key[s]; s = (s + 1) & mask) {
            if (pf->gram_key[s] != gram) continue;
            for (uint32_t k = 0; k < pf->gram_count[s]; k++) {
                uint32_t id = pf->gram_order[pf->gram_first[s] + k];
                if (pf->lit_len[id] <= len - i &&
                    memcmp(lower + i, pf->lits[id], pf->lit_len[id]) == 0)
                    present[id / 64] |= 1ull << (id % 64);
            }
            break;
        }
    }
}

bool ua_prefilter_may_match(const ua_prefilter *pf, uint32_t first, uint32_t count,
                            const uint64_t *present)
{
    if (count == 0 || !present) return true;
    const uint32_t *w = pf->rule_lits + first, *end = w + count;
    while (w < end) {
        uint32_t n = *w++;
        bool hit = false;
        for (uint32_t i = 0; i < n && !hit; i++)
            hit = present[w[i] / 64] >> (w[i] % 64) & 1;
        if (!hit) return false;
        w += n;
    }
    return true;
}

void ua_prefilter_free(ua_prefilter *pf)
{
    if (!pf) return;
    for (uint32_t i = 0; i < pf->nlits; i++)
        free(pf->lits[i]);
    free(pf->lits);
    free(pf->lit_len);
    free(pf->lit_hash_slots);
    free(pf->rule_lits);
    free(pf->gram_key);
    free(pf->gram_first);
    free(pf->gram_count);
    free(pf->gram_order);
    free(pf);
}

ua_prefilter *ua_prefilter_new(void)
{
    return calloc(1, sizeof(ua_prefilter));
}

uint32_t ua_prefilter_literals(const ua_prefilter *pf)
{
    return pf ? pf->nlits : 0;
}
