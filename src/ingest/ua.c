/*
 * ua: uap-core rules + a bounded cache. See ua.h for the contract.
 *
 * Rule semantics (uap-core docs/specification.md): three ordered lists (user_agent_parsers,
 * os_parsers, device_parsers); in each, the first regex that matches anywhere in the string wins
 * (unanchored, case-sensitive unless regex_flag: 'i'). A field takes its *_replacement when the
 * rule has one, with $1..$9 replaced by the capture groups (an unset group is ""), else the
 * capture group of its position (family $1, major $2, minor $3, patch $4; device model $1).
 * Results are trimmed; an empty result is absent. A regex PCRE2 cannot compile is skipped and
 * counted (ua_get_stats), never fatal. Before calling PCRE2, each rule asks ua_prefilter
 * whether the string contains the literals it requires (one scan per string); that skips
 * ~95% of the calls and makes an uncached classification ~15x faster, without changing
 * results.
 *
 * Cache layout: UA_SHARDS shards, chosen by the top bits of XXH3(ua). Each shard has its own
 * mutex, a fixed array of `cap` entries, and a bucket index of 2*cap chains (int32 entry
 * numbers, -1 ends a chain). When the array is full, CLOCK picks the victim: the hand skips
 * (and clears) entries whose ref bit is set, so an entry hit since the hand last passed
 * survives one more round. Invariants: count <= cap; every used entry is on exactly one chain,
 * the one of its hash; keys are private copies, freed on eviction. Classification of a miss
 * runs without the shard lock; two threads missing on the same key may both classify it, and
 * the second insert finds the first and keeps it (same result either way).
 */
#include "ingest/ua.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <yaml.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/diag.h"
#include "ingest/dataset.h"
#include "ingest/ua_prefilter.h"
#include "tally/error.h"

#define UA_SHARDS 16
#define UA_GROUPS_MAX 20      /* match data size: uap rules use < 10 groups */
#define UA_MATCH_LIMIT 200000 /* PCRE2 match limit per regex: a hostile UA cannot spin */
#define UA_DEPTH_LIMIT 10000
#define UA_JIT_STACK_BYTES_MAX (512 * 1024)
#define UA_FIELD_BYTES_MAX 256 /* scratch size for one substituted field */
#define UA_PREFILTER_WORDS 128 /* up to 8,192 distinct literals (uap-core has ~2,000) */

enum { KIND_UA = 0, KIND_OS = 1, KIND_DEVICE = 2, KIND_COUNT = 3 };

/* Replacement slots: UA family,v1,v2,v3; OS os,v1,v2,v3,v4; device family,brand,model. */
#define REPL_MAX 5

typedef struct ua_rule {
    pcre2_code *re;
    char *repl[REPL_MAX]; /* NULL = no replacement given */
    uint32_t lit_first;   /* its requirement in g.pf (ua_prefilter_add) */
    uint32_t lit_count;   /* 0: the rule always runs */
} ua_rule;

typedef struct ua_rules {
    ua_rule *v;
    size_t n, cap;
} ua_rules;

typedef struct cache_entry {
    uint64_t hash;
    char *key;
    uint32_t key_len;
    int32_t next;
    uint8_t ref;
    ua_info info;
} cache_entry;

typedef struct cache_shard {
    pthread_mutex_t mu;
    int32_t *buckets;
    uint32_t bucket_mask;
    cache_entry *entries;
    uint32_t cap, count, hand;
    uint64_t hits, misses, evictions;
} cache_shard;

static struct {
    bool ready;
    ua_rules rules[KIND_COUNT];
    pcre2_match_context *mctx;
    pthread_key_t tls_key;
    bool tls_key_made;
    cache_shard *shards; /* NULL: no cache */
    uint32_t skipped, jit;
    ua_prefilter *pf;
    bool prefilter_off;
} g;

/* ---- per-thread match data and JIT stack ---- */

typedef struct ua_tls {
    pcre2_match_data *md;
    pcre2_jit_stack *jit_stack;
    uint64_t present[UA_PREFILTER_WORDS]; /* prefilter scratch: one bit per literal */
} ua_tls;

static void tls_free(void *p)
{
    ua_tls *t = p;
    if (!t) return;
    pcre2_match_data_free(t->md);
    pcre2_jit_stack_free(t->jit_stack);
    free(t);
}

static ua_tls *tls_get(void)
{
    ua_tls *t = pthread_getspecific(g.tls_key);
    if (t) return t;
    t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->md = pcre2_match_data_create(UA_GROUPS_MAX, NULL);
    t->jit_stack = pcre2_jit_stack_create(32 * 1024, UA_JIT_STACK_BYTES_MAX, NULL);
    if (!t->md || pthread_setspecific(g.tls_key, t) != 0) {
        tls_free(t);
        return NULL;
    }
    return t;
}

/* Called by PCRE2 during a JIT match, on the matching thread. */
static pcre2_jit_stack *jit_stack_for_thread(void *unused)
{
    (void)unused;
    ua_tls *t = pthread_getspecific(g.tls_key);
    return t ? t->jit_stack : NULL;
}

/* ---- server-side SDKs ---- */

bool ua_is_server_sdk(const char *ua)
{
    if (!ua) return false;
    while (*ua == ' ')
        ua++;
    /* Prefixes, compared case-insensitively; the byte after must not continue a word. */
    static const char *const prefixes[] = {
        "posthog-",
        "analytics-node",
        "@segment/analytics",
        "analytics-python",
        "analytics-ruby",
        "analytics-go",
        "analytics-java",
        "analytics-php",
        "node-fetch",
        "axios",
        "undici",
        "node",
        "@umami/node",
        "umami-node",
        "plausible-",
    };
    for (size_t i = 0; i < TALLY_ARRAY_LEN(prefixes); i++) {
        size_t n = strlen(prefixes[i]);
        if (strncasecmp(ua, prefixes[i], n) != 0) continue;
        char c = ua[n];
        if (prefixes[i][n - 1] == '-') return true;
        if (c == 0 || c == '/' || c == ' ' || c == '-' || c == '(' || c == ';') return true;
    }
    return false;
}

/* ---- loading ---- */

static const char *yscalar(yaml_document_t *doc, yaml_node_t *n)
{
    if (!n || n->type != YAML_SCALAR_NODE) return NULL;
    (void)doc;
    return (const char *)n->data.scalar.value;
}

static int repl_slot(int kind, const char *key)
{
    static const char *const names[KIND_COUNT][REPL_MAX] = {
        {"family_replacement", "v1_replacement", "v2_replacement", "v3_replacement", NULL},
        {"os_replacement", "os_v1_replacement", "os_v2_replacement", "os_v3_replacement",
         "os_v4_replacement"},
        {"device_replacement", "brand_replacement", "model_replacement", NULL, NULL},
    };
    for (int i = 0; i < REPL_MAX; i++)
        if (names[kind][i] && strcmp(names[kind][i], key) == 0) return i;
    return -1;
}

static int add_rule(int kind, yaml_document_t *doc, yaml_node_t *map)
{
    const char *regex = NULL, *flag = NULL;
    ua_rule r = {0};
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        const char *k = yscalar(doc, yaml_document_get_node(doc, p->key));
        const char *v = yscalar(doc, yaml_document_get_node(doc, p->value));
        if (!k || !v) continue;
        if (strcmp(k, "regex") == 0) {
            regex = v;
        } else if (strcmp(k, "regex_flag") == 0) {
            flag = v;
        } else {
            int slot = repl_slot(kind, k);
            if (slot >= 0 && !r.repl[slot]) {
                r.repl[slot] = strdup(v);
                if (!r.repl[slot]) goto nomem;
            }
        }
    }
    if (!regex) goto skip;
    uint32_t opts = (flag && strchr(flag, 'i')) ? PCRE2_CASELESS : 0;
    int err;
    PCRE2_SIZE off;
    r.re = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, opts, &err, &off, NULL);
    if (!r.re) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(err, msg, sizeof msg);
        diag_warn("ua: skipping uap-core regex %.80s: %s at %zu", regex, (char *)msg, (size_t)off);
        goto skip;
    }
    if (pcre2_jit_compile(r.re, PCRE2_JIT_COMPLETE) == 0) g.jit++;
    if (ua_prefilter_add(g.pf, regex, &r.lit_first, &r.lit_count) != TALLY_OK) goto nomem;
    ua_rules *rs = &g.rules[kind];
    if (rs->n == rs->cap) {
        size_t cap = rs->cap ? rs->cap * 2 : 256;
        ua_rule *v = realloc(rs->v, cap * sizeof *v);
        if (!v) goto nomem;
        rs->v = v;
        rs->cap = cap;
    }
    rs->v[rs->n++] = r;
    return TALLY_OK;
skip:
    g.skipped++;
    for (int i = 0; i < REPL_MAX; i++)
        free(r.repl[i]);
    return TALLY_OK;
nomem:
    pcre2_code_free(r.re);
    for (int i = 0; i < REPL_MAX; i++)
        free(r.repl[i]);
    return TALLY_ENOMEM;
}

static int load_rules(void)
{
    yaml_document_t doc;
    int rc = dataset_yaml_load(dataset_uap_regexes(), "ua: regexes.yaml", &doc);
    if (rc != TALLY_OK) return rc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    static const char *const lists[KIND_COUNT] = {"user_agent_parsers", "os_parsers",
                                                  "device_parsers"};
    for (yaml_node_pair_t *p = rc ? NULL : root->data.mapping.pairs.start;
         p && p < root->data.mapping.pairs.top && rc == TALLY_OK; p++) {
        const char *k = yscalar(&doc, yaml_document_get_node(&doc, p->key));
        yaml_node_t *seq = yaml_document_get_node(&doc, p->value);
        int kind = -1;
        for (int i = 0; k && i < KIND_COUNT; i++)
            if (strcmp(k, lists[i]) == 0) kind = i;
        if (kind < 0 || !seq || seq->type != YAML_SEQUENCE_NODE) continue;
        for (yaml_node_item_t *it = seq->data.sequence.items.start;
             it < seq->data.sequence.items.top && rc == TALLY_OK; it++) {
            yaml_node_t *m = yaml_document_get_node(&doc, *it);
            if (m && m->type == YAML_MAPPING_NODE) rc = add_rule(kind, &doc, m);
        }
    }
    if (rc == TALLY_OK && (g.rules[KIND_UA].n == 0 || g.rules[KIND_OS].n == 0)) {
        diag_error("ua: regexes.yaml has no user_agent_parsers/os_parsers");
        rc = TALLY_ECORRUPT;
    }
    yaml_document_delete(&doc);
    return rc;
}

/* ---- matching ---- */

/* Copies group n (1-based) of the last match into dst (size cap); returns its length. */
static size_t group_copy(const char *s, pcre2_match_data *md, int rc, unsigned n, char *dst,
                         size_t cap)
{
    dst[0] = 0;
    if ((int)n >= rc) return 0;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    if (ov[2 * n] == PCRE2_UNSET) return 0;
    size_t len = ov[2 * n + 1] - ov[2 * n];
    if (len >= cap) len = cap - 1;
    memcpy(dst, s + ov[2 * n], len);
    dst[len] = 0;
    return len;
}

static void trim(char *s)
{
    size_t n = strlen(s), a = 0;
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    while (a < n && isspace((unsigned char)s[a]))
        a++;
    memmove(s, s + a, n - a);
    s[n - a] = 0;
}

/*
 * Field value: the replacement with $1..$9 substituted, else capture group `dflt` (0: none).
 * Writes into dst (cap bytes), trimmed.
 */
static void field(const char *s, pcre2_match_data *md, int rc, const char *repl, unsigned dflt,
                  char *dst, size_t cap)
{
    if (!repl) {
        if (dflt)
            group_copy(s, md, rc, dflt, dst, cap);
        else
            dst[0] = 0;
        trim(dst);
        return;
    }
    size_t o = 0;
    for (const char *p = repl; *p && o + 1 < cap; p++) {
        if (p[0] == '$' && p[1] >= '1' && p[1] <= '9') {
            char tmp[UA_FIELD_BYTES_MAX];
            size_t len = group_copy(s, md, rc, (unsigned)(p[1] - '0'), tmp, sizeof tmp);
            if (len > cap - 1 - o) len = cap - 1 - o;
            memcpy(dst + o, tmp, len);
            o += len;
            p++;
        } else {
            dst[o++] = *p;
        }
    }
    dst[o] = 0;
    trim(dst);
}

/* Runs the rules of one kind; returns the matching rule (md holds its match) or NULL. */
static const ua_rule *first_match(int kind, const char *s, size_t len, pcre2_match_data *md,
                                  const uint64_t *present, int *rc_out)
{
    const ua_rules *rs = &g.rules[kind];
    for (size_t i = 0; i < rs->n; i++) {
        if (!ua_prefilter_may_match(g.pf, rs->v[i].lit_first, rs->v[i].lit_count, present))
            continue;
        int rc = pcre2_match(rs->v[i].re, (PCRE2_SPTR)s, len, 0, 0, md, g.mctx);
        if (rc > 0) {
            *rc_out = rc;
            return &rs->v[i];
        }
        if (rc == 0) { /* ovector too small: cannot happen with UA_GROUPS_MAX, treat as match */
            *rc_out = UA_GROUPS_MAX;
            return &rs->v[i];
        }
    }
    return NULL;
}

/* Copies src into dst (cap bytes) as valid UTF-8: control bytes become spaces, invalid
 * sequences '?', and truncation never splits a character. */
static void copy_clean(char *dst, size_t cap, const char *src)
{
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)src;
    while (*p && o + 1 < cap) {
        unsigned c = *p;
        size_t n = c < 0x80             ? 1
                   : (c & 0xE0) == 0xC0 ? 2
                   : (c & 0xF0) == 0xE0 ? 3
                   : (c & 0xF8) == 0xF0 ? 4
                                        : 0;
        bool ok = n > 0 && !(n == 2 && c < 0xC2) && !(n == 4 && c > 0xF4);
        for (size_t i = 1; ok && i < n; i++)
            if ((p[i] & 0xC0) != 0x80) ok = false;
        if (!ok) {
            dst[o++] = '?';
            p++;
            continue;
        }
        if (o + n + 1 > cap) break;
        if (n == 1 && (c < 0x20 || c == 0x7F)) {
            dst[o++] = ' ';
        } else {
            memcpy(dst + o, p, n);
            o += n;
        }
        p += n;
    }
    dst[o] = 0;
}

static void version_join(char *dst, size_t cap, const char *major, const char *minor)
{
    char tmp[2 * UA_FIELD_BYTES_MAX + 2];
    if (!major[0]) {
        dst[0] = 0;
        return;
    }
    if (minor[0])
        snprintf(tmp, sizeof tmp, "%s.%s", major, minor);
    else
        snprintf(tmp, sizeof tmp, "%s", major);
    copy_clean(dst, cap, tmp);
}

static const char *rename_browser(const char *f)
{
    static const char *const map[][2] = {
        {"Other", ""},
        {"Chrome Mobile", "Chrome"},
        {"Chrome Mobile iOS", "Chrome"},
        {"Mobile Safari", "Safari"},
        {"Mobile Safari UI/WKWebView", "Safari"},
        {"Firefox Mobile", "Firefox"},
        {"Firefox iOS", "Firefox"},
        {"Edge", "Microsoft Edge"},
        {"Edge Mobile", "Microsoft Edge"},
        {"Samsung Internet", "Samsung Browser"},
        {"Opera Mobile", "Opera"},
        {"IE", "Internet Explorer"},
        {"IE Mobile", "Internet Explorer"},
    };
    for (size_t i = 0; i < TALLY_ARRAY_LEN(map); i++)
        if (strcmp(f, map[i][0]) == 0) return map[i][1];
    return f;
}

static const char *rename_os(const char *f)
{
    static const char *const map[][2] = {
        {"Other", ""},
        {"Mac OS X", "Mac"},
        {"Mac OS", "Mac"},
        {"Linux", "GNU/Linux"},
    };
    for (size_t i = 0; i < TALLY_ARRAY_LEN(map); i++)
        if (strcmp(f, map[i][0]) == 0) return map[i][1];
    return f;
}

static bool in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0) return true;
    return false;
}

/*
 * Device class from uap-core's device family/brand/model, the OS family (uap-core's name) and
 * the raw string. Order matters: bots, then explicit tablets, phones, then by OS.
 */
static ua_device device_class(const char *ua, const char *dev_family, const char *os)
{
    static const char *const desktop_os[] = {
        "Windows",      "Mac OS X",      "Mac OS",     "Linux",      "Ubuntu",        "Debian",
        "Fedora",       "Red Hat",       "SUSE",       "openSUSE",   "Mint",          "Arch Linux",
        "Gentoo",       "CentOS",        "Kubuntu",    "Xubuntu",    "Mandriva",      "Slackware",
        "Chrome OS",    "FreeBSD",       "OpenBSD",    "NetBSD",     "Solaris",       "Haiku",
        "BeOS",         "Windows XP",    "Windows 7",  "Windows 98", "Windows 95",    "Windows NT",
        "Windows 2000", "Windows Vista", "Windows ME", "PCLinuxOS",  "elementary OS", "Manjaro",
    };
    static const char *const mobile_os[] = {
        "Windows Phone", "BlackBerry OS", "KaiOS", "Symbian OS",   "Symbian^3",
        "Firefox OS",    "Sailfish",      "Bada",  "Ubuntu Touch", "Windows Mobile",
        "MeeGo",         "Maemo",         "Tizen",
    };
    /* TVs, streaming sticks and consoles: no class (they often claim Linux or Android). */
    static const char *const tv_marks[] = {
        "SmartTV",  "SMART-TV", "SMARTTV",     "SmartHub", " TV Safari", "Android TV",
        "GoogleTV", "CrKey",    "BRAVIA",      "Web0S",    "webOS.TV",   "HbbTV",
        "Roku",     "; AFT",    "PlayStation", "Xbox",     "Nintendo",
    };
    bool mobile_token = strstr(ua, "Mobile") || strstr(ua, "Mobi/");
    if (strcmp(dev_family, "Spider") == 0) return UA_DEVICE_BOT;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(tv_marks); i++)
        if (strstr(ua, tv_marks[i])) return UA_DEVICE_UNKNOWN;
    if (strncmp(dev_family, "iPad", 4) == 0 || strcmp(dev_family, "Generic Tablet") == 0 ||
        strstr(dev_family, "Kindle") || strcmp(os, "BlackBerry Tablet OS") == 0)
        return UA_DEVICE_TABLET;
    if (strncmp(dev_family, "iPhone", 6) == 0 || strncmp(dev_family, "iPod", 4) == 0 ||
        strcmp(dev_family, "Generic Smartphone") == 0 ||
        strcmp(dev_family, "Generic Feature Phone") == 0)
        return UA_DEVICE_MOBILE;
    if (strcmp(os, "iOS") == 0) return UA_DEVICE_MOBILE;
    if (strcmp(os, "Android") == 0 || strcmp(os, "HarmonyOS") == 0 || strcmp(os, "Fire OS") == 0) {
        if (strstr(ua, "Tablet") || strstr(dev_family, "Tab")) return UA_DEVICE_TABLET;
        return mobile_token ? UA_DEVICE_MOBILE : UA_DEVICE_TABLET;
    }
    if (in_list(os, mobile_os, TALLY_ARRAY_LEN(mobile_os))) return UA_DEVICE_MOBILE;
    if (strncmp(os, "Windows", 7) == 0 && strstr(os, "Phone")) return UA_DEVICE_MOBILE;
    if (in_list(os, desktop_os, TALLY_ARRAY_LEN(desktop_os))) return UA_DEVICE_DESKTOP;
    return UA_DEVICE_UNKNOWN;
}

static void classify_uncached(const char *ua, size_t len, ua_info *out)
{
    memset(out, 0, sizeof *out);
    out->bot = bots_classify(ua);
    if (ua_is_server_sdk(ua)) {
        out->server_sdk = true;
        return;
    }
    if (!g.ready) return;
    ua_tls *t = tls_get();
    if (!t) return;
    pcre2_match_data *md = t->md;
    char f0[UA_FIELD_BYTES_MAX], f1[UA_FIELD_BYTES_MAX], f2[UA_FIELD_BYTES_MAX];
    int rc;
    uint64_t *present = NULL;
    uint32_t nlits = ua_prefilter_literals(g.pf);
    if (!g.prefilter_off && nlits <= 64 * UA_PREFILTER_WORDS) {
        char lower[UA_INPUT_BYTES_MAX + 1];
        for (size_t i = 0; i < len; i++)
            lower[i] = (char)tolower((unsigned char)ua[i]);
        memset(t->present, 0, (nlits + 63) / 64 * sizeof *t->present);
        ua_prefilter_scan(g.pf, lower, len, t->present);
        present = t->present;
    }

    const ua_rule *r = first_match(KIND_UA, ua, len, md, present, &rc);
    if (r) {
        field(ua, md, rc, r->repl[0], 1, f0, sizeof f0);
        field(ua, md, rc, r->repl[1], 2, f1, sizeof f1);
        field(ua, md, rc, r->repl[2], 3, f2, sizeof f2);
        copy_clean(out->browser, sizeof out->browser, rename_browser(f0[0] ? f0 : "Other"));
        if (out->browser[0]) version_join(out->browser_version, UA_VERSION_MAX, f1, f2);
    }

    char os_family[UA_FIELD_BYTES_MAX] = "Other";
    r = first_match(KIND_OS, ua, len, md, present, &rc);
    if (r) {
        field(ua, md, rc, r->repl[0], 1, os_family, sizeof os_family);
        if (!os_family[0]) strcpy(os_family, "Other");
        field(ua, md, rc, r->repl[1], 2, f1, sizeof f1);
        field(ua, md, rc, r->repl[2], 3, f2, sizeof f2);
        copy_clean(out->os, sizeof out->os, rename_os(os_family));
        if (out->os[0]) version_join(out->os_version, UA_VERSION_MAX, f1, f2);
    }

    char dev_family[UA_FIELD_BYTES_MAX] = "Other";
    r = first_match(KIND_DEVICE, ua, len, md, present, &rc);
    if (r) {
        field(ua, md, rc, r->repl[0], 1, dev_family, sizeof dev_family);
        if (!dev_family[0]) strcpy(dev_family, "Other");
    }
    out->device = device_class(ua, dev_family, os_family);
}

/* ---- cache ---- */

static void cache_free(void)
{
    if (!g.shards) return;
    for (int s = 0; s < UA_SHARDS; s++) {
        cache_shard *sh = &g.shards[s];
        for (uint32_t i = 0; i < sh->count; i++)
            free(sh->entries[i].key);
        free(sh->entries);
        free(sh->buckets);
        pthread_mutex_destroy(&sh->mu);
    }
    free(g.shards);
    g.shards = NULL;
}

static int cache_new(size_t entries)
{
    if (entries == 0) return TALLY_OK;
    if (entries < UA_SHARDS) entries = UA_SHARDS;
    if (entries > (1u << 24)) return TALLY_EINVAL;
    g.shards = calloc(UA_SHARDS, sizeof *g.shards);
    if (!g.shards) return TALLY_ENOMEM;
    uint32_t cap = (uint32_t)(entries / UA_SHARDS);
    uint32_t nb = 1;
    while (nb < 2 * cap)
        nb <<= 1;
    for (int s = 0; s < UA_SHARDS; s++) {
        cache_shard *sh = &g.shards[s];
        pthread_mutex_init(&sh->mu, NULL);
        sh->cap = cap;
        sh->bucket_mask = nb - 1;
        sh->entries = calloc(cap, sizeof *sh->entries);
        sh->buckets = malloc(nb * sizeof *sh->buckets);
        if (!sh->entries || !sh->buckets) {
            /* count is 0 everywhere, so cache_free frees only what exists */
            cache_free();
            return TALLY_ENOMEM;
        }
        memset(sh->buckets, 0xff, nb * sizeof *sh->buckets);
    }
    return TALLY_OK;
}

static cache_entry *shard_find(cache_shard *sh, uint64_t h, const char *key, size_t len)
{
    for (int32_t i = sh->buckets[h & sh->bucket_mask]; i >= 0; i = sh->entries[i].next) {
        cache_entry *e = &sh->entries[i];
        if (e->hash == h && e->key_len == len && memcmp(e->key, key, len) == 0) return e;
    }
    return NULL;
}

static void shard_unlink(cache_shard *sh, int32_t idx)
{
    int32_t *link = &sh->buckets[sh->entries[idx].hash & sh->bucket_mask];
    while (*link != idx) {
        TALLY_ASSERT(*link >= 0);
        link = &sh->entries[*link].next;
    }
    *link = sh->entries[idx].next;
}

static void shard_insert(cache_shard *sh, uint64_t h, const char *key, size_t len,
                         const ua_info *info)
{
    if (shard_find(sh, h, key, len)) return;
    char *copy = malloc(len + 1);
    if (!copy) return; /* caching is best effort */
    memcpy(copy, key, len);
    copy[len] = 0;
    int32_t idx;
    if (sh->count < sh->cap) {
        idx = (int32_t)sh->count++;
    } else {
        for (;;) {
            cache_entry *e = &sh->entries[sh->hand];
            if (!e->ref) break;
            e->ref = 0;
            sh->hand = (sh->hand + 1) % sh->cap;
        }
        idx = (int32_t)sh->hand;
        sh->hand = (sh->hand + 1) % sh->cap;
        shard_unlink(sh, idx);
        free(sh->entries[idx].key);
        sh->evictions++;
    }
    cache_entry *e = &sh->entries[idx];
    e->hash = h;
    e->key = copy;
    e->key_len = (uint32_t)len;
    e->ref = 0;
    e->info = *info;
    uint32_t b = (uint32_t)(h & sh->bucket_mask);
    e->next = sh->buckets[b];
    sh->buckets[b] = idx;
}

/* ---- public ---- */

void ua_classify_uncached(const char *ua, ua_info *out)
{
    if (!ua) ua = "";
    size_t len = strnlen(ua, UA_INPUT_BYTES_MAX);
    if (ua[len] != 0) {
        char buf[UA_INPUT_BYTES_MAX + 1];
        memcpy(buf, ua, len);
        buf[len] = 0;
        classify_uncached(buf, len, out);
        return;
    }
    classify_uncached(ua, len, out);
}

void ua_classify(const char *ua, ua_info *out)
{
    if (!ua) ua = "";
    if (!g.shards) {
        ua_classify_uncached(ua, out);
        return;
    }
    size_t len = strnlen(ua, UA_INPUT_BYTES_MAX);
    uint64_t h = XXH3_64bits(ua, len);
    cache_shard *sh = &g.shards[h >> 60];
    pthread_mutex_lock(&sh->mu);
    cache_entry *e = shard_find(sh, h, ua, len);
    if (e) {
        e->ref = 1;
        *out = e->info;
        sh->hits++;
        pthread_mutex_unlock(&sh->mu);
        return;
    }
    sh->misses++;
    pthread_mutex_unlock(&sh->mu);
    ua_classify_uncached(ua, out);
    pthread_mutex_lock(&sh->mu);
    shard_insert(sh, h, ua, len, out);
    pthread_mutex_unlock(&sh->mu);
}

void ua_set_prefilter(bool on)
{
    g.prefilter_off = !on;
}

const char *ua_device_name(ua_device device)
{
    switch (device) {
    case UA_DEVICE_DESKTOP: return "Desktop";
    case UA_DEVICE_MOBILE: return "Mobile";
    case UA_DEVICE_TABLET: return "Tablet";
    case UA_DEVICE_BOT: return "Bot";
    default: return "";
    }
}

void ua_get_stats(ua_stats *out)
{
    memset(out, 0, sizeof *out);
    for (int k = 0; k < KIND_COUNT; k++)
        out->rules_loaded += (uint32_t)g.rules[k].n;
    out->rules_skipped = g.skipped;
    out->rules_jit = g.jit;
    out->prefilter_literals = ua_prefilter_literals(g.pf);
    for (int k = 0; k < KIND_COUNT; k++)
        for (size_t i = 0; i < g.rules[k].n; i++)
            out->rules_filtered += g.rules[k].v[i].lit_count > 0;
    if (!g.shards) return;
    for (int s = 0; s < UA_SHARDS; s++) {
        cache_shard *sh = &g.shards[s];
        pthread_mutex_lock(&sh->mu);
        out->cache_hits += sh->hits;
        out->cache_misses += sh->misses;
        out->cache_evictions += sh->evictions;
        out->cache_entries += sh->count;
        out->cache_capacity += sh->cap;
        pthread_mutex_unlock(&sh->mu);
    }
}

void ua_shutdown(void)
{
    cache_free();
    for (int k = 0; k < KIND_COUNT; k++) {
        for (size_t i = 0; i < g.rules[k].n; i++) {
            pcre2_code_free(g.rules[k].v[i].re);
            for (int j = 0; j < REPL_MAX; j++)
                free(g.rules[k].v[i].repl[j]);
        }
        free(g.rules[k].v);
    }
    pcre2_match_context_free(g.mctx);
    ua_prefilter_free(g.pf);
    if (g.tls_key_made) {
        /* The calling thread's scratch; other threads' are freed by their key destructor. */
        tls_free(pthread_getspecific(g.tls_key));
        pthread_setspecific(g.tls_key, NULL);
        pthread_key_delete(g.tls_key);
    }
    memset(&g, 0, sizeof g);
}

int ua_init(size_t cache_entries)
{
    if (g.ready) return TALLY_EINVAL;
    memset(&g, 0, sizeof g);
    if (pthread_key_create(&g.tls_key, tls_free) != 0) return TALLY_ENOMEM;
    g.tls_key_made = true;
    g.mctx = pcre2_match_context_create(NULL);
    g.pf = ua_prefilter_new();
    if (!g.mctx || !g.pf) goto nomem;
    pcre2_set_match_limit(g.mctx, UA_MATCH_LIMIT);
    pcre2_set_depth_limit(g.mctx, UA_DEPTH_LIMIT);
    pcre2_jit_stack_assign(g.mctx, jit_stack_for_thread, NULL);
    int rc = load_rules();
    if (rc == TALLY_OK) rc = ua_prefilter_build(g.pf);
    if (rc == TALLY_OK) rc = cache_new(cache_entries);
    if (rc != TALLY_OK) {
        ua_shutdown();
        return rc;
    }
    if (g.skipped)
        diag_warn("ua: %u uap-core regexes could not be compiled and are skipped", g.skipped);
    g.ready = true;
    return TALLY_OK;
nomem:
    ua_shutdown();
    return TALLY_ENOMEM;
}
