/*
 * referrer: source and channel classification. See referrer.h for the contract.
 *
 * Tables, built once by referrer_init() and read-only afterwards (so lookups take no lock):
 *   names: canonical source names, each with a category (search, social, email, video,
 *          shopping, ai, or none) and a "paid" flag (aliases such as "fb-ads");
 *   name_map: lower-case name or alias -> names index;
 *   host_map: lower-case host, or host + "/" + path prefix (no trailing '/'), -> names index;
 *   path_hosts: hosts that have at least one host/path key, so plain hosts skip path probes.
 * Load order: referers.yml (first occurrence of a host wins: its "unknown" section exists to
 * pin hosts before the broader search entries), then the supplement below, which overrides
 * hosts and categories (referers.yml is from 2014: it lacks ChatGPT, Threads, Bluesky, and
 * calls duckduckgo.com "DuckDuckGoL"). A name met in several sections takes the first
 * non-"unknown" category.
 *
 * Host lookup: for h = host, then h with its first label removed, ... (while h keeps a dot):
 * h/seg1/seg2/seg3, h/seg1/seg2, h/seg1 (only if h has path keys), then h. So
 * l.facebook.com finds facebook.com and google.de/imgres finds "Google Images".
 */
#include "ingest/referrer.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <yaml.h>

#include "core/diag.h"
#include "ingest/dataset.h"
#include "tally/error.h"

#define HOST_BYTES_MAX 256
#define KEY_BYTES_MAX 512
#define TAG_BYTES_MAX 256 /* utm values are compared on their first 255 bytes */
#define PATH_SEGMENTS_MAX 3

enum cat { CAT_NONE = 0, CAT_SEARCH, CAT_SOCIAL, CAT_EMAIL, CAT_VIDEO, CAT_SHOPPING, CAT_AI };

static const char *const cat_names[] = {"", "search", "social", "email", "video", "shopping", "ai"};

/* ---- the supplement: current sources missing from, or named differently in, referers.yml ---- */

typedef struct supp {
    const char *name;
    enum cat cat;
    const char *hosts; /* space-separated; "android-app://pkg" for Android app referrers */
} supp;

static const supp supplement[] = {
    {"Google", CAT_SEARCH,
     "google.com www.google.com google.co.uk google.de google.fr google.ca google.com.au "
     "google.co.in google.co.jp google.es google.it google.nl google.com.br google.pl "
     "android-app://com.google.android.googlequicksearchbox"},
    {"Bing", CAT_SEARCH, "bing.com www.bing.com cn.bing.com m.bing.com ntp.msn.com"},
    {"DuckDuckGo", CAT_SEARCH, "duckduckgo.com html.duckduckgo.com lite.duckduckgo.com"},
    {"Brave", CAT_SEARCH, "search.brave.com"},
    {"Ecosia", CAT_SEARCH, "ecosia.org www.ecosia.org"},
    {"Kagi", CAT_SEARCH, "kagi.com"},
    {"Startpage", CAT_SEARCH, "startpage.com www.startpage.com"},
    {"Qwant", CAT_SEARCH, "qwant.com www.qwant.com lite.qwant.com"},
    {"Yandex", CAT_SEARCH,
     "yandex.ru yandex.com ya.ru yandex.com.tr yandex.kz yandex.by yandex.ua yandex.eu "
     "yandex.fr yandex.uz yandex.tm"},
    {"Baidu", CAT_SEARCH, "baidu.com www.baidu.com m.baidu.com"},
    {"Naver", CAT_SEARCH, "search.naver.com m.search.naver.com naver.com"},
    {"Sogou", CAT_SEARCH, "sogou.com m.sogou.com wap.sogou.com"},
    {"Yahoo!", CAT_SEARCH, "search.yahoo.com yahoo.com"},
    {"Facebook", CAT_SOCIAL,
     "facebook.com l.facebook.com lm.facebook.com m.facebook.com fb.me fb.com "
     "android-app://com.facebook.katana"},
    {"Instagram", CAT_SOCIAL, "instagram.com l.instagram.com android-app://com.instagram.android"},
    {"Twitter", CAT_SOCIAL,
     "twitter.com t.co x.com mobile.twitter.com android-app://com.twitter.android"},
    {"LinkedIn", CAT_SOCIAL, "linkedin.com lnkd.in android-app://com.linkedin.android"},
    {"Reddit", CAT_SOCIAL,
     "reddit.com old.reddit.com out.reddit.com redd.it android-app://com.reddit.frontpage"},
    {"Hacker News", CAT_SOCIAL, "news.ycombinator.com"},
    {"GitHub", CAT_SOCIAL, "github.com"},
    {"Pinterest", CAT_SOCIAL, "pinterest.com pin.it"},
    {"Threads", CAT_SOCIAL, "threads.net threads.com l.threads.net l.threads.com"},
    {"Bluesky", CAT_SOCIAL, "bsky.app go.bsky.app bsky.social"},
    {"Mastodon", CAT_SOCIAL,
     "mastodon.social mastodon.online mstdn.social fosstodon.org hachyderm.io "
     "infosec.exchange mas.to"},
    {"TikTok", CAT_SOCIAL, "tiktok.com vm.tiktok.com"},
    {"Telegram", CAT_SOCIAL, "t.me web.telegram.org webk.telegram.org org.telegram.messenger"},
    {"Discord", CAT_SOCIAL, "discord.com discordapp.com ptb.discord.com canary.discord.com"},
    {"Slack", CAT_SOCIAL, "slack.com app.slack.com android-app://com.Slack"},
    {"Microsoft Teams", CAT_SOCIAL, "teams.microsoft.com statics.teams.cdn.office.net"},
    {"WhatsApp", CAT_SOCIAL, "web.whatsapp.com wa.me whatsapp.com"},
    {"Product Hunt", CAT_SOCIAL, "producthunt.com"},
    {"Quora", CAT_SOCIAL, "quora.com"},
    {"VKontakte", CAT_SOCIAL, "vk.com vkontakte.ru m.vk.com"},
    {"Lobsters", CAT_SOCIAL, "lobste.rs"},
    {"YouTube", CAT_VIDEO, "youtube.com m.youtube.com youtu.be music.youtube.com"},
    {"Vimeo", CAT_VIDEO, "vimeo.com"},
    {"Twitch", CAT_VIDEO, "twitch.tv m.twitch.tv"},
    {"Dailymotion", CAT_VIDEO, "dailymotion.com"},
    {"Amazon", CAT_SHOPPING,
     "amazon.com amazon.co.uk amazon.de amazon.fr amazon.it amazon.es amazon.ca amazon.co.jp "
     "amazon.in amazon.com.au amazon.nl"},
    {"eBay", CAT_SHOPPING, "ebay.com ebay.co.uk ebay.de ebay.fr"},
    {"Etsy", CAT_SHOPPING, "etsy.com"},
    {"AliExpress", CAT_SHOPPING, "aliexpress.com"},
    {"Temu", CAT_SHOPPING, "temu.com"},
    {"Walmart", CAT_SHOPPING, "walmart.com"},
    {"ChatGPT", CAT_AI, "chatgpt.com chat.openai.com"},
    {"Perplexity", CAT_AI, "perplexity.ai"},
    {"Claude", CAT_AI, "claude.ai"},
    {"Google Gemini", CAT_AI, "gemini.google.com"},
    {"Copilot", CAT_AI, "copilot.microsoft.com"},
    {"DeepSeek", CAT_AI, "chat.deepseek.com"},
    {"Grok", CAT_AI, "grok.com"},
    {"Phind", CAT_AI, "phind.com"},
    {"Gmail", CAT_EMAIL, "mail.google.com android-app://com.google.android.gm"},
    {"Outlook.com", CAT_EMAIL,
     "outlook.live.com outlook.office.com outlook.office365.com mail.live.com"},
    {"Proton Mail", CAT_EMAIL, "mail.proton.me mail.protonmail.com"},
    {"Fastmail", CAT_EMAIL, "app.fastmail.com"},
    {"Wikipedia", CAT_NONE, "wikipedia.org"},
    {"Linktree", CAT_NONE, "linktr.ee"},
};

/* utm_source shorthands; an alias ending in "ad"/"ads", or "adwords", marks paid traffic. */
static const char *const aliases[][2] = {
    {"fb", "Facebook"},
    {"fb-ads", "Facebook"},
    {"fbads", "Facebook"},
    {"fbad", "Facebook"},
    {"facebook-ads", "Facebook"},
    {"facebook_ads", "Facebook"},
    {"facebook_ad", "Facebook"},
    {"facebook_feed_ad", "Facebook"},
    {"ig", "Instagram"},
    {"instagram_ads", "Instagram"},
    {"yt", "YouTube"},
    {"yt-ads", "YouTube"},
    {"youtube_ads", "YouTube"},
    {"x", "Twitter"},
    {"twitter-ads", "Twitter"},
    {"reddit-ads", "Reddit"},
    {"adwords", "Google"},
    {"google_ads", "Google"},
    {"google-ads", "Google"},
    {"googleads", "Google"},
    {"gads", "Google"},
    {"google ads", "Google"},
    {"bing_ads", "Bing"},
    {"bing-ads", "Bing"},
    {"microsoft_ads", "Bing"},
    {"linkedin_ads", "LinkedIn"},
    {"linkedin-ads", "LinkedIn"},
    {"tiktokads", "TikTok"},
    {"tiktok_ads", "TikTok"},
    {"tik.tok", "TikTok"},
    {"hn", "Hacker News"},
    {"duckduckgo", "DuckDuckGo"},
    {"chatgpt.com", "ChatGPT"},
    {"openai", "ChatGPT"},
    {"producthunt", "Product Hunt"},
    {"hackernews", "Hacker News"},
    {"ycombinator", "Hacker News"},
    {"gmail", "Gmail"},
    {"outlook", "Outlook.com"},
};

/* ---- a string -> uint32 hash map (open addressing, owned keys) ---- */

typedef struct strmap {
    char **keys;
    uint32_t *vals;
    uint32_t cap, n; /* cap is a power of two, n <= cap / 2 */
} strmap;

static uint64_t key_hash(const char *k, size_t len)
{
    return XXH3_64bits(k, len);
}

static int strmap_grow(strmap *m)
{
    uint32_t cap = m->cap ? m->cap * 2 : 1024;
    char **keys = calloc(cap, sizeof *keys);
    uint32_t *vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return TALLY_ENOMEM;
    }
    for (uint32_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        uint32_t s = (uint32_t)key_hash(m->keys[i], strlen(m->keys[i])) & (cap - 1);
        while (keys[s])
            s = (s + 1) & (cap - 1);
        keys[s] = m->keys[i];
        vals[s] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return TALLY_OK;
}

static int64_t strmap_get(const strmap *m, const char *k, size_t len)
{
    if (!m->cap) return -1;
    for (uint32_t s = (uint32_t)key_hash(k, len) & (m->cap - 1); m->keys[s];
         s = (s + 1) & (m->cap - 1))
        if (strncmp(m->keys[s], k, len) == 0 && m->keys[s][len] == 0) return m->vals[s];
    return -1;
}

/* Inserts k -> v; an existing key is overwritten only if `replace`. */
static int strmap_put(strmap *m, const char *k, uint32_t v, bool replace)
{
    if (2 * (m->n + 1) > m->cap && strmap_grow(m) != TALLY_OK) return TALLY_ENOMEM;
    size_t len = strlen(k);
    uint32_t s = (uint32_t)key_hash(k, len) & (m->cap - 1);
    for (; m->keys[s]; s = (s + 1) & (m->cap - 1)) {
        if (strcmp(m->keys[s], k) == 0) {
            if (replace) m->vals[s] = v;
            return TALLY_OK;
        }
    }
    m->keys[s] = strdup(k);
    if (!m->keys[s]) return TALLY_ENOMEM;
    m->vals[s] = v;
    m->n++;
    return TALLY_OK;
}

static void strmap_free(strmap *m)
{
    for (uint32_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---- tables ---- */

typedef struct name_entry {
    char *name;
    uint8_t cat;
    bool paid;
} name_entry;

static struct {
    bool ready;
    name_entry *names;
    uint32_t nnames, cap;
    strmap name_map, host_map, path_hosts;
} g;

static void lower_copy(char *dst, size_t cap, const char *src, size_t len)
{
    if (len >= cap) len = cap - 1;
    for (size_t i = 0; i < len; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[len] = 0;
}

/* Index of `name` (case-insensitive), added if new. force: set cat even if one is set. */
static int name_index(const char *name, enum cat cat, bool force, uint32_t *idx)
{
    char low[REFERRER_SOURCE_MAX];
    lower_copy(low, sizeof low, name, strlen(name));
    int64_t found = strmap_get(&g.name_map, low, strlen(low));
    if (found >= 0) {
        name_entry *e = &g.names[found];
        if (force || (e->cat == CAT_NONE && cat != CAT_NONE)) e->cat = (uint8_t)cat;
        if (force) { /* the supplement's spelling wins ("YouTube" over "Youtube") */
            char *copy = strdup(name);
            if (!copy) return TALLY_ENOMEM;
            free(e->name);
            e->name = copy;
        }
        *idx = (uint32_t)found;
        return TALLY_OK;
    }
    if (g.nnames == g.cap) {
        uint32_t cap = g.cap ? g.cap * 2 : 256;
        name_entry *v = realloc(g.names, cap * sizeof *v);
        if (!v) return TALLY_ENOMEM;
        g.names = v;
        g.cap = cap;
    }
    name_entry *e = &g.names[g.nnames];
    e->name = strdup(name);
    if (!e->name) return TALLY_ENOMEM;
    e->cat = (uint8_t)cat;
    e->paid = false;
    *idx = g.nnames++;
    return strmap_put(&g.name_map, low, *idx, false);
}

/* Registers a host or host/path key (lower-cased, trailing '/' dropped). */
static int host_add(const char *key, uint32_t idx, bool replace)
{
    char low[KEY_BYTES_MAX];
    size_t len = strlen(key);
    while (len > 0 && key[len - 1] == '/')
        len--;
    if (len == 0) return TALLY_OK;
    lower_copy(low, sizeof low, key, len);
    const char *slash = strncmp(low, "android-app://", 14) == 0 ? NULL : strchr(low, '/');
    if (slash) {
        char host[HOST_BYTES_MAX];
        lower_copy(host, sizeof host, low, (size_t)(slash - low));
        int rc = strmap_put(&g.path_hosts, host, 1, false);
        if (rc != TALLY_OK) return rc;
    }
    return strmap_put(&g.host_map, low, idx, replace);
}

static enum cat cat_of_medium(const char *m)
{
    if (strcmp(m, "search") == 0) return CAT_SEARCH;
    if (strcmp(m, "social") == 0) return CAT_SOCIAL;
    if (strcmp(m, "email") == 0) return CAT_EMAIL;
    return CAT_NONE;
}

static const char *yscalar(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int load_source(yaml_document_t *doc, const char *name, enum cat cat, yaml_node_t *m)
{
    if (!m || m->type != YAML_MAPPING_NODE) return TALLY_OK;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        const char *k = yscalar(yaml_document_get_node(doc, p->key));
        yaml_node_t *seq = yaml_document_get_node(doc, p->value);
        if (!k || strcmp(k, "domains") != 0 || !seq || seq->type != YAML_SEQUENCE_NODE) continue;
        uint32_t idx;
        int rc = name_index(name, cat, false, &idx);
        for (yaml_node_item_t *it = seq->data.sequence.items.start;
             rc == TALLY_OK && it < seq->data.sequence.items.top; it++) {
            const char *host = yscalar(yaml_document_get_node(doc, *it));
            if (host) rc = host_add(host, idx, false);
        }
        if (rc != TALLY_OK) return rc;
    }
    return TALLY_OK;
}

static int load_referers_yml(void)
{
    yaml_document_t doc;
    int rc = dataset_yaml_load(dataset_referers(), "referrer: referers.yml", &doc);
    if (rc != TALLY_OK) return rc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    for (yaml_node_pair_t *p = rc ? NULL : root->data.mapping.pairs.start;
         p && rc == TALLY_OK && p < root->data.mapping.pairs.top; p++) {
        const char *medium = yscalar(yaml_document_get_node(&doc, p->key));
        yaml_node_t *srcs = yaml_document_get_node(&doc, p->value);
        if (!medium || !srcs || srcs->type != YAML_MAPPING_NODE) continue;
        for (yaml_node_pair_t *q = srcs->data.mapping.pairs.start;
             rc == TALLY_OK && q < srcs->data.mapping.pairs.top; q++) {
            const char *name = yscalar(yaml_document_get_node(&doc, q->key));
            if (name)
                rc = load_source(&doc, name, cat_of_medium(medium),
                                 yaml_document_get_node(&doc, q->value));
        }
    }
    yaml_document_delete(&doc);
    return rc;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int load_supplement(void)
{
    for (size_t i = 0; i < TALLY_ARRAY_LEN(supplement); i++) {
        uint32_t idx;
        int rc = name_index(supplement[i].name, supplement[i].cat, true, &idx);
        const char *p = supplement[i].hosts;
        while (rc == TALLY_OK && *p) {
            size_t n = strcspn(p, " ");
            char host[KEY_BYTES_MAX];
            if (n > 0 && n < sizeof host) {
                memcpy(host, p, n);
                host[n] = 0;
                rc = host_add(host, idx, true);
            }
            p += n;
            while (*p == ' ')
                p++;
        }
        if (rc != TALLY_OK) return rc;
    }
    for (size_t i = 0; i < TALLY_ARRAY_LEN(aliases); i++) {
        uint32_t idx;
        int rc = name_index(aliases[i][1], CAT_NONE, false, &idx);
        if (rc == TALLY_OK) rc = strmap_put(&g.name_map, aliases[i][0], idx, true);
        if (rc != TALLY_OK) return rc;
    }
    return TALLY_OK;
}

void referrer_shutdown(void)
{
    for (uint32_t i = 0; i < g.nnames; i++)
        free(g.names[i].name);
    free(g.names);
    strmap_free(&g.name_map);
    strmap_free(&g.host_map);
    strmap_free(&g.path_hosts);
    memset(&g, 0, sizeof g);
}

int referrer_init(void)
{
    if (g.ready) return TALLY_EINVAL;
    memset(&g, 0, sizeof g);
    int rc = load_referers_yml();
    if (rc == TALLY_OK) rc = load_supplement();
    if (rc != TALLY_OK) {
        referrer_shutdown();
        return rc;
    }
    g.ready = true;
    return TALLY_OK;
}

void referrer_get_stats(referrer_stats *out)
{
    out->hosts = g.host_map.n;
    out->sources = g.name_map.n;
}

/* ---- URL handling ---- */

typedef struct url_parts {
    char scheme[16];
    char host[HOST_BYTES_MAX]; /* lower case, no port, no trailing dot */
    const char *path;          /* from the first '/' after the host, up to '?' or '#' */
    size_t path_len;
} url_parts;

static bool host_byte_ok(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_' || c >= 0x80;
}

/* Parses scheme://[user@]host[:port][/path][?query][#frag]; false if not of that shape. */
static bool parse_url(const char *u, size_t len, url_parts *p)
{
    memset(p, 0, sizeof *p);
    while (len > 0 && isspace((unsigned char)*u))
        u++, len--;
    while (len > 0 && isspace((unsigned char)u[len - 1]))
        len--;
    size_t i = 0;
    while (i < len && (isalnum((unsigned char)u[i]) || u[i] == '+' || u[i] == '-' || u[i] == '.'))
        i++;
    if (i == 0 || i >= sizeof p->scheme || len - i < 3 || memcmp(u + i, "://", 3) != 0)
        return false;
    lower_copy(p->scheme, sizeof p->scheme, u, i);
    const char *a = u + i + 3, *end = u + len;
    const char *ae = a;
    while (ae < end && *ae != '/' && *ae != '?' && *ae != '#')
        ae++;
    const char *at = NULL;
    for (const char *q = a; q < ae; q++)
        if (*q == '@') at = q;
    if (at) a = at + 1;
    const char *he;
    if (a < ae && *a == '[') {
        he = memchr(a, ']', (size_t)(ae - a));
        if (!he) return false;
        a++;
    } else {
        he = a;
        while (he < ae && *he != ':')
            he++;
    }
    size_t hl = (size_t)(he - a);
    while (hl > 0 && a[hl - 1] == '.')
        hl--;
    if (hl == 0 || hl >= sizeof p->host) return false;
    for (size_t k = 0; k < hl; k++)
        if (!host_byte_ok((unsigned char)a[k]) && a[k] != ':') return false;
    lower_copy(p->host, sizeof p->host, a, hl);
    if (ae < end && *ae == '/') {
        const char *pe = ae;
        while (pe < end && *pe != '?' && *pe != '#')
            pe++;
        p->path = ae;
        p->path_len = (size_t)(pe - ae);
    }
    return true;
}

static const char *strip_www(const char *h)
{
    return strncmp(h, "www.", 4) == 0 ? h + 4 : h;
}

/* Host lookup as described at the top; returns a names index or -1. */
static int64_t lookup_host(const char *host, const char *path, size_t path_len)
{
    for (const char *h = host; h;) {
        size_t hl = strlen(h);
        if (path_len > 1 && strmap_get(&g.path_hosts, h, hl) >= 0) {
            size_t cut[PATH_SEGMENTS_MAX], ncut = 0;
            for (size_t k = 1; k <= path_len && ncut < PATH_SEGMENTS_MAX; k++)
                if (k == path_len || path[k] == '/') cut[ncut++] = k;
            for (size_t c = ncut; c-- > 0;) {
                char key[KEY_BYTES_MAX];
                if (hl + cut[c] >= sizeof key) continue;
                memcpy(key, h, hl);
                lower_copy(key + hl, sizeof key - hl, path, cut[c]);
                size_t kl = hl + cut[c];
                while (kl > hl && key[kl - 1] == '/')
                    kl--;
                int64_t v = strmap_get(&g.host_map, key, kl);
                if (v >= 0) return v;
            }
        }
        int64_t v = strmap_get(&g.host_map, h, hl);
        if (v >= 0) return v;
        const char *dot = strchr(h, '.');
        h = dot && strchr(dot + 1, '.') ? dot + 1 : NULL;
    }
    return -1;
}

/* Copies src[0..len) as valid UTF-8 (invalid bytes '?', controls ' '), never splitting a
 * character at the truncation point. */
static void copy_clean(char *dst, size_t cap, const char *src, size_t len)
{
    size_t o = 0, i = 0;
    const unsigned char *p = (const unsigned char *)src;
    while (i < len && o + 1 < cap) {
        unsigned c = p[i];
        size_t n = c < 0x80             ? 1
                   : (c & 0xE0) == 0xC0 ? 2
                   : (c & 0xF0) == 0xE0 ? 3
                   : (c & 0xF8) == 0xF0 ? 4
                                        : 0;
        bool ok = n > 0 && i + n <= len && !(n == 2 && c < 0xC2) && !(n == 4 && c > 0xF4);
        for (size_t k = 1; ok && k < n; k++)
            if ((p[i + k] & 0xC0) != 0x80) ok = false;
        if (!ok) {
            dst[o++] = '?';
            i++;
            continue;
        }
        if (o + n + 1 > cap) break;
        if (n == 1 && (c < 0x20 || c == 0x7F))
            dst[o++] = ' ';
        else
            memcpy(dst + o, p + i, n), o += n;
        i += n;
    }
    dst[o] = 0;
}

/* ---- channel (Plausible's rule order; every input lower case) ---- */

static bool contains(const char *s, const char *needle)
{
    return strstr(s, needle) != NULL;
}

static bool paid_medium(const char *m)
{
    return contains(m, "cp") || strcmp(m, "ppc") == 0 || strcmp(m, "retargeting") == 0 ||
           strncmp(m, "paid", 4) == 0;
}

/* "shopping" anywhere, or "shop" at the start or after a byte outside a-d, f-z. */
static bool shopping_campaign(const char *c)
{
    if (contains(c, "shopping")) return true;
    for (const char *p = strstr(c, "shop"); p; p = strstr(p + 1, "shop")) {
        if (p == c) return true;
        char b = p[-1];
        if (!((b >= 'a' && b <= 'd') || (b >= 'f' && b <= 'z'))) return true;
    }
    return false;
}

static bool contains_email_tag(const char *s)
{
    static const char *const tags[] = {"email", "e-mail", "e_mail", "e mail", "newsletter"};
    for (size_t i = 0; i < TALLY_ARRAY_LEN(tags); i++)
        if (contains(s, tags[i])) return true;
    return false;
}

typedef struct chan_in {
    const char *source; /* lower case, "" when none */
    enum cat cat;
    const char *medium, *campaign, *utm_source, *click_id;
    bool paid_source;
} chan_in;

static const char *channel_of(const chan_in *c)
{
    const char *m = c->medium;
    bool paid = paid_medium(m);
    if (contains(c->campaign, "cross-network")) return "Cross-network";
    if ((c->cat == CAT_SHOPPING || shopping_campaign(c->campaign)) && paid) return "Paid Shopping";
    if ((c->cat == CAT_SEARCH && (paid || c->paid_source)) ||
        (strcmp(c->source, "google") == 0 && strcmp(c->click_id, "gclid") == 0) ||
        (strcmp(c->source, "bing") == 0 && strcmp(c->click_id, "msclkid") == 0))
        return "Paid Search";
    if (c->cat == CAT_SOCIAL && (paid || c->paid_source)) return "Paid Social";
    if (c->cat == CAT_VIDEO && (paid || c->paid_source)) return "Paid Video";
    if (!strcmp(m, "display") || !strcmp(m, "banner") || !strcmp(m, "expandable") ||
        !strcmp(m, "interstitial") || !strcmp(m, "cpm"))
        return "Display";
    if (paid) return "Paid Other";
    if (c->cat == CAT_SHOPPING || shopping_campaign(c->campaign)) return "Organic Shopping";
    if (c->cat == CAT_SOCIAL || !strcmp(m, "social") || !strcmp(m, "social-network") ||
        !strcmp(m, "social-media") || !strcmp(m, "sm") || !strcmp(m, "social network") ||
        !strcmp(m, "social media"))
        return "Organic Social";
    if (c->cat == CAT_VIDEO || contains(m, "video")) return "Organic Video";
    if (c->cat == CAT_AI) return "AI Assistants";
    if (c->cat == CAT_SEARCH) return "Organic Search";
    if (c->cat == CAT_EMAIL || contains_email_tag(c->utm_source) || contains_email_tag(m))
        return "Email";
    if (!strcmp(m, "affiliate")) return "Affiliates";
    if (!strcmp(m, "audio")) return "Audio";
    if (!strcmp(c->utm_source, "sms") || !strcmp(m, "sms")) return "SMS";
    if (ends_with(m, "push") || contains(m, "mobile") || contains(m, "notification") ||
        !strcmp(c->source, "firebase"))
        return "Mobile Push Notifications";
    if (!strcmp(m, "referral") || !strcmp(m, "app") || !strcmp(m, "link") || c->source[0])
        return "Referral";
    return "Direct";
}

/* ---- classify ---- */

/* Plausible's "paid source": one of the aliases ending in "ad"/"ads", or "adwords". */
static bool paid_alias(const char *low)
{
    if (!ends_with(low, "ad") && !ends_with(low, "ads") && strcmp(low, "adwords") != 0)
        return false;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(aliases); i++)
        if (strcmp(low, aliases[i][0]) == 0) return true;
    return false;
}

static const char *nonempty(const char *s)
{
    if (!s) return NULL;
    while (isspace((unsigned char)*s))
        s++;
    return *s ? s : NULL;
}

static void lower_tag(char *dst, const char *src)
{
    src = nonempty(src);
    if (!src) {
        dst[0] = 0;
        return;
    }
    size_t len = strnlen(src, TAG_BYTES_MAX - 1);
    while (len > 0 && isspace((unsigned char)src[len - 1]))
        len--;
    lower_copy(dst, TAG_BYTES_MAX, src, len);
}

void referrer_classify(const char *ref_url, const char *page_host, const referrer_tags *tags,
                       referrer_info *out)
{
    static const referrer_tags none;
    if (!tags) tags = &none;
    memset(out, 0, sizeof *out);
    out->medium = "";
    int64_t known = -1;
    bool have_source = false;

    url_parts u;
    bool have_ref = false;
    if (ref_url && ref_url[0] &&
        parse_url(ref_url, strnlen(ref_url, REFERRER_INPUT_BYTES_MAX), &u) &&
        (!strcmp(u.scheme, "http") || !strcmp(u.scheme, "https") ||
         !strcmp(u.scheme, "android-app"))) {
        bool android = !strcmp(u.scheme, "android-app");
        char page[HOST_BYTES_MAX] = "";
        if (page_host) {
            size_t pl = strcspn(page_host, ":/");
            if (pl >= sizeof page) pl = 0; /* no such host name: no self-referral check */
            lower_copy(page, sizeof page, page_host, pl);
            while (pl > 0 && page[pl - 1] == '.')
                page[--pl] = 0;
        }
        if (!android && (!strcmp(u.host, "localhost") ||
                         (page[0] && !strcmp(strip_www(u.host), strip_www(page))))) {
            out->self_referral = true;
        } else {
            have_ref = true;
            char norm[REFERRER_URL_MAX + HOST_BYTES_MAX];
            size_t pl = u.path_len;
            while (pl > 0 && u.path[pl - 1] == '/')
                pl--;
            int n = snprintf(norm, sizeof norm, "%s%s", android ? "android-app://" : "",
                             android ? u.host : strip_www(u.host));
            size_t room = sizeof norm - (size_t)n - 1;
            if (pl > room) pl = room;
            memcpy(norm + n, u.path ? u.path : "", pl);
            norm[(size_t)n + pl] = 0;
            copy_clean(out->referrer, sizeof out->referrer, norm, strlen(norm));
        }
    }

    /* 1. a tagged source wins */
    const char *tagged = nonempty(tags->utm_source);
    if (!tagged) tagged = nonempty(tags->ref);
    if (tagged) {
        char low[TAG_BYTES_MAX];
        lower_tag(low, tagged);
        if (g.ready) {
            known = strmap_get(&g.name_map, low, strlen(low));
            if (known < 0) known = lookup_host(low, "", 0);
        }
        if (known < 0) {
            size_t tl = strnlen(tagged, TAG_BYTES_MAX - 1);
            while (tl > 0 && isspace((unsigned char)tagged[tl - 1]))
                tl--;
            copy_clean(out->source, sizeof out->source, tagged, tl);
        }
        have_source = true;
    } else if (have_ref) {
        /* 2. the Referer */
        if (g.ready) {
            if (!strcmp(u.scheme, "android-app")) {
                char key[HOST_BYTES_MAX + 16];
                snprintf(key, sizeof key, "android-app://%s", u.host);
                known = strmap_get(&g.host_map, key, strlen(key));
            } else {
                known = lookup_host(u.host, u.path, u.path_len);
            }
        }
        if (known < 0) {
            const char *h = strip_www(u.host);
            char src[HOST_BYTES_MAX + 32];
            snprintf(src, sizeof src, "%s%s",
                     strcmp(u.scheme, "android-app") ? "" : "android-app://", h);
            copy_clean(out->source, sizeof out->source, src, strlen(src));
        }
        have_source = true;
    }
    if (known >= 0) {
        const name_entry *e = &g.names[known];
        copy_clean(out->source, sizeof out->source, e->name, strlen(e->name));
        out->medium = cat_names[e->cat];
    }
    if (!out->source[0]) have_source = false;

    char source_low[REFERRER_SOURCE_MAX] = "";
    if (have_source) lower_copy(source_low, sizeof source_low, out->source, strlen(out->source));
    char medium[TAG_BYTES_MAX], campaign[TAG_BYTES_MAX], utm_src[TAG_BYTES_MAX],
        click[TAG_BYTES_MAX];
    lower_tag(medium, tags->utm_medium);
    lower_tag(campaign, tags->utm_campaign);
    lower_tag(utm_src, tags->utm_source);
    lower_tag(click, tags->click_id);
    bool paid_source = utm_src[0] && paid_alias(utm_src);
    chan_in c = {
        .source = source_low,
        .cat = known >= 0 ? (enum cat)g.names[known].cat : CAT_NONE,
        .medium = medium,
        .campaign = campaign,
        .utm_source = utm_src,
        .click_id = click,
        .paid_source = paid_source,
    };
    out->channel = channel_of(&c);
    if (!have_source) {
        out->direct = true;
        snprintf(out->source, sizeof out->source, "%s", REFERRER_DIRECT);
    }
}
