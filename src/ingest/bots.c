/*
 * bots: crawler-user-agents matching. See bots.h for the contract.
 *
 * The list is ~1,500 regexes, but all except a few dozen are plain strings once "\/"-style
 * escapes are undone. Running them as one PCRE2 alternation would try every alternative at
 * every position of the User-Agent; instead:
 *   - plain strings of 4+ bytes are indexed by their first 4 bytes (an open-addressing table
 *     from that 4-byte value to the run of patterns that start with it, in `order`); a scan
 *     looks up the 4 bytes at each position of the User-Agent and compares the candidates,
 *     so the cost is one hash probe per byte;
 *   - plain strings shorter than 4 bytes (a handful) are searched with memmem;
 *   - real regexes are joined into one alternation "(?:p1)|(?:p2)|..." and JIT-compiled; if
 *     the join fails to compile, each is compiled alone and the failures are skipped (counted).
 * Everything is built once by bots_init() and read-only afterwards, so lookups need no lock;
 * PCRE2 match data is per thread (a pthread key).
 */
#include "ingest/bots.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/diag.h"
#include "ingest/dataset.h"
#include "ingest/ua.h"
#include "tally/error.h"

#define BOTS_MATCH_LIMIT 200000
#define BOTS_PATTERN_BYTES_MAX 512

typedef struct lit {
    char *s;
    uint32_t len;
    uint32_t gram;
} lit;

static struct {
    bool ready;
    lit *lits; /* 4+ bytes, sorted by gram */
    uint32_t nlits;
    uint32_t *slot_gram, *slot_first, *slot_count; /* gram 0 = empty slot */
    uint32_t slot_bits;
    lit *shorts;
    uint32_t nshorts;
    pcre2_code **res; /* one alternation, or one per pattern after a failed join */
    uint32_t nres;
    pcre2_match_context *mctx;
    pthread_key_t md_key;
    bool md_key_made;
    bots_stats stats;
} g;

static void md_free(void *p)
{
    pcre2_match_data_free(p);
}

static uint32_t load4(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint32_t slot_of(uint32_t gram)
{
    return (gram * 0x9E3779B1u) >> (32 - g.slot_bits);
}

/* Undoes "\x" escapes of non-alphanumerics; returns false if p uses any other regex syntax. */
static bool as_literal(const char *p, char *out, size_t cap, uint32_t *len_out)
{
    size_t o = 0;
    for (; *p; p++) {
        char c = *p;
        if (c == '\\') {
            c = *++p;
            if (!c || isalnum((unsigned char)c)) return false;
        } else if (strchr("^$.|?*+()[]{}", c)) {
            return false;
        }
        if (o + 1 >= cap) return false;
        out[o++] = c;
    }
    out[o] = 0;
    *len_out = (uint32_t)o;
    return o > 0;
}

static int cmp_gram(const void *a, const void *b)
{
    uint32_t x = ((const lit *)a)->gram, y = ((const lit *)b)->gram;
    return x < y ? -1 : x > y;
}

static int build_index(void)
{
    qsort(g.lits, g.nlits, sizeof *g.lits, cmp_gram);
    g.slot_bits = 4;
    while ((1u << g.slot_bits) < 4 * g.nlits + 16)
        g.slot_bits++;
    size_t n = (size_t)1 << g.slot_bits;
    g.slot_gram = calloc(n, sizeof *g.slot_gram);
    g.slot_first = calloc(n, sizeof *g.slot_first);
    g.slot_count = calloc(n, sizeof *g.slot_count);
    if (!g.slot_gram || !g.slot_first || !g.slot_count) return TALLY_ENOMEM;
    for (uint32_t i = 0; i < g.nlits; i++) {
        uint32_t gram = g.lits[i].gram;
        uint32_t s = slot_of(gram);
        while (g.slot_gram[s] && g.slot_gram[s] != gram)
            s = (s + 1) & (uint32_t)(n - 1);
        if (!g.slot_gram[s]) {
            g.slot_gram[s] = gram;
            g.slot_first[s] = i;
        }
        g.slot_count[s]++;
    }
    return TALLY_OK;
}

static pcre2_code *compile(const char *re, size_t len, bool quiet)
{
    int err;
    PCRE2_SIZE off;
    pcre2_code *c = pcre2_compile((PCRE2_SPTR)re, len, 0, &err, &off, NULL);
    if (!c) {
        if (!quiet) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(err, msg, sizeof msg);
            diag_warn("bots: skipping pattern %.80s: %s", re, (char *)msg);
        }
        return NULL;
    }
    pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);
    return c;
}

static int build_regexes(char **pats, uint32_t n)
{
    if (n == 0) return TALLY_OK;
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += strlen(pats[i]) + 6;
    char *alt = malloc(total + 1);
    g.res = calloc(n, sizeof *g.res);
    if (!alt || !g.res) {
        free(alt);
        return TALLY_ENOMEM;
    }
    size_t o = 0;
    for (uint32_t i = 0; i < n; i++)
        o += (size_t)sprintf(alt + o, "%s(?:%s)", i ? "|" : "", pats[i]);
    g.res[0] = compile(alt, o, true);
    free(alt);
    if (g.res[0]) {
        g.nres = 1;
        g.stats.patterns_regex = n;
        return TALLY_OK;
    }
    for (uint32_t i = 0; i < n; i++) {
        pcre2_code *c = compile(pats[i], strlen(pats[i]), false);
        if (c) {
            g.res[g.nres++] = c;
            g.stats.patterns_regex++;
        } else {
            g.stats.patterns_skipped++;
        }
    }
    return TALLY_OK;
}

static int load_list(void)
{
    dataset_blob blob = dataset_crawler_agents();
    cJSON *root = cJSON_ParseWithLength(blob.data, blob.len);
    if (!cJSON_IsArray(root)) {
        cJSON_Delete(root);
        diag_error("bots: crawler-user-agents.json is not a JSON array");
        return TALLY_ECORRUPT;
    }
    int n = cJSON_GetArraySize(root);
    int rc = TALLY_OK;
    char **regex_pats = calloc((size_t)n + 1, sizeof *regex_pats);
    uint32_t nregex = 0;
    g.lits = calloc((size_t)n + 1, sizeof *g.lits);
    g.shorts = calloc((size_t)n + 1, sizeof *g.shorts);
    if (!regex_pats || !g.lits || !g.shorts) rc = TALLY_ENOMEM;
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        if (rc != TALLY_OK) break;
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(item, "pattern");
        if (!cJSON_IsString(pat) || !pat->valuestring[0]) continue;
        char buf[BOTS_PATTERN_BYTES_MAX];
        uint32_t len;
        char *copy;
        if (as_literal(pat->valuestring, buf, sizeof buf, &len)) {
            copy = strdup(buf);
            if (!copy) {
                rc = TALLY_ENOMEM;
                break;
            }
            if (len >= 4) {
                g.lits[g.nlits++] = (lit){copy, len, load4(copy)};
            } else {
                g.shorts[g.nshorts++] = (lit){copy, len, 0};
            }
        } else {
            copy = strdup(pat->valuestring);
            if (!copy) {
                rc = TALLY_ENOMEM;
                break;
            }
            regex_pats[nregex++] = copy;
        }
    }
    cJSON_Delete(root);
    g.stats.patterns_literal = g.nlits + g.nshorts;
    if (rc == TALLY_OK && g.nlits + nregex == 0) {
        diag_error("bots: crawler-user-agents.json holds no patterns");
        rc = TALLY_ECORRUPT;
    }
    if (rc == TALLY_OK) rc = build_index();
    if (rc == TALLY_OK) rc = build_regexes(regex_pats, nregex);
    for (uint32_t i = 0; regex_pats && i < nregex; i++)
        free(regex_pats[i]);
    free(regex_pats);
    return rc;
}

void bots_shutdown(void)
{
    for (uint32_t i = 0; i < g.nlits; i++)
        free(g.lits[i].s);
    for (uint32_t i = 0; i < g.nshorts; i++)
        free(g.shorts[i].s);
    free(g.lits);
    free(g.shorts);
    free(g.slot_gram);
    free(g.slot_first);
    free(g.slot_count);
    for (uint32_t i = 0; i < g.nres; i++)
        pcre2_code_free(g.res[i]);
    free(g.res);
    pcre2_match_context_free(g.mctx);
    if (g.md_key_made) {
        md_free(pthread_getspecific(g.md_key));
        pthread_setspecific(g.md_key, NULL);
        pthread_key_delete(g.md_key);
    }
    memset(&g, 0, sizeof g);
}

int bots_init(void)
{
    if (g.ready) return TALLY_EINVAL;
    memset(&g, 0, sizeof g);
    if (pthread_key_create(&g.md_key, md_free) != 0) return TALLY_ENOMEM;
    g.md_key_made = true;
    g.mctx = pcre2_match_context_create(NULL);
    int rc = g.mctx ? load_list() : TALLY_ENOMEM;
    if (rc != TALLY_OK) {
        bots_shutdown();
        return rc;
    }
    pcre2_set_match_limit(g.mctx, BOTS_MATCH_LIMIT);
    if (g.stats.patterns_skipped)
        diag_warn("bots: %u crawler patterns could not be compiled and are skipped",
                  g.stats.patterns_skipped);
    g.ready = true;
    return TALLY_OK;
}

static bool listed(const char *ua, size_t len)
{
    if (!g.ready) return false;
    uint32_t mask = (1u << g.slot_bits) - 1;
    for (size_t i = 0; i + 4 <= len; i++) {
        uint32_t gram = load4(ua + i);
        for (uint32_t s = slot_of(gram); g.slot_gram[s]; s = (s + 1) & mask) {
            if (g.slot_gram[s] != gram) continue;
            for (uint32_t k = 0; k < g.slot_count[s]; k++) {
                const lit *l = &g.lits[g.slot_first[s] + k];
                if (l->len <= len - i && memcmp(ua + i, l->s, l->len) == 0) return true;
            }
            break;
        }
    }
    for (uint32_t k = 0; k < g.nshorts; k++)
        if (memmem(ua, len, g.shorts[k].s, g.shorts[k].len)) return true;
    if (g.nres == 0) return false;
    pcre2_match_data *md = pthread_getspecific(g.md_key);
    if (!md) {
        md = pcre2_match_data_create(1, NULL);
        if (!md || pthread_setspecific(g.md_key, md) != 0) {
            pcre2_match_data_free(md);
            return false;
        }
    }
    for (uint32_t k = 0; k < g.nres; k++)
        if (pcre2_match(g.res[k], (PCRE2_SPTR)ua, len, 0, 0, md, g.mctx) >= 0) return true;
    return false;
}

static bool heuristic(const char *ua, size_t len)
{
    char lower[UA_INPUT_BYTES_MAX];
    for (size_t i = 0; i < len; i++)
        lower[i] = (char)tolower((unsigned char)ua[i]);
    static const char *const words[] = {"crawler", "spider", "scraper", "headless"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(words); i++)
        if (memmem(lower, len, words[i], strlen(words[i]))) return true;
    for (const char *p = memmem(lower, len, "bot", 3); p;
         p = memmem(p + 1, len - (size_t)(p + 1 - lower), "bot", 3)) {
        size_t at = (size_t)(p - lower);
        char next = at + 3 < len ? lower[at + 3] : 0;
        if (isalpha((unsigned char)next)) continue; /* "Botswana", "bottom" */
        if (at >= 2 && lower[at - 2] == 'c' && lower[at - 1] == 'u') continue; /* Cubot phones */
        return true;
    }
    return false;
}

bots_verdict bots_classify(const char *ua)
{
    if (!ua) return BOTS_EMPTY;
    size_t len = strnlen(ua, UA_INPUT_BYTES_MAX);
    size_t blank = 0;
    while (blank < len && isspace((unsigned char)ua[blank]))
        blank++;
    if (blank == len) return BOTS_EMPTY;
    if (ua_is_server_sdk(ua)) return BOTS_HUMAN;
    if (listed(ua, len)) return BOTS_LISTED;
    if (heuristic(ua, len)) return BOTS_HEURISTIC;
    return BOTS_HUMAN;
}

bool bots_is_bot(const char *ua)
{
    return bots_classify(ua) != BOTS_HUMAN;
}

const char *bots_verdict_name(bots_verdict v)
{
    switch (v) {
    case BOTS_HUMAN: return "human";
    case BOTS_EMPTY: return "empty";
    case BOTS_LISTED: return "listed";
    case BOTS_HEURISTIC: return "heuristic";
    }
    return "?";
}

void bots_get_stats(bots_stats *out)
{
    *out = g.stats;
}
