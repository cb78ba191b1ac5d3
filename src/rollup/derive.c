/* derive: see derive.h. */
#include "rollup/derive.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ingest/bots.h"
#include "ingest/referrer.h"
#include "ingest/ua.h"
#include "ingest/url.h"
#include "tally/error.h"

static const char *const field_names[DE_FIELD_COUNT] = {
    "name",          "hostname",    "path",        "referrer",        "source",
    "channel",       "utm_source",  "utm_medium",  "utm_campaign",    "utm_content",
    "utm_term",      "device",      "browser",     "browser_version", "os",
    "os_version",    "country",     "region",      "city",
};

const char *devent_field_name(enum devent_field f)
{
    return (unsigned)f < DE_FIELD_COUNT ? field_names[f] : "?";
}

struct ua_entry {
    XXH128_hash_t key;
    bool used, bot;
    ua_info info;
};

/* referrer_classify is a pure function of its inputs: cache it like the User-Agent. */
struct ref_entry {
    XXH128_hash_t key;
    bool used;
    referrer_info info;
};

struct derive_ctx {
    struct event ev;
    struct event_scratch es;
    struct ua_entry ua_cache[DERIVE_UA_CACHE_ENTRIES];
    struct ref_entry ref_cache[DERIVE_REF_CACHE_ENTRIES];
    XXH3_state_t *xs;
    /* per-event scratch */
    struct url url;
    struct url_utm utm;
    referrer_info ref;
    ua_info ua;
    char ua_nt[EVENT_USER_AGENT_BYTES_MAX + 1];
    char ref_nt[EVENT_REFERRER_BYTES_MAX + 1];
    char tag_ref[URL_UTM_BYTES_MAX + 1];
    struct devent_prop props[EVENT_PROPS_MAX];
};

struct derive_ctx *derive_ctx_new(void)
{
    struct derive_ctx *c = calloc(1, sizeof(struct derive_ctx));
    if (!c) return NULL;
    c->xs = XXH3_createState();
    if (!c->xs) {
        free(c);
        return NULL;
    }
    return c;
}

void derive_ctx_free(struct derive_ctx *c)
{
    if (!c) return;
    XXH3_freeState(c->xs);
    free(c);
}

/* The referrer cache's key: each part as a tag byte (0: NULL, 1: present) followed, when
 * present, by its bytes and NUL (so NULL differs from "" and parts cannot run together). The
 * key is hashed in one call when it fits REF_KEY_BYTES_MAX (nearly always), else streamed: the
 * same bytes, so the same hash. */
#define REF_KEY_PARTS 7
#define REF_KEY_BYTES_MAX 1024

static void hash_part(XXH3_state_t *xs, const char *s)
{
    size_t n = s ? strlen(s) + 1 : 0;
    uint8_t tag = s ? 1 : 0;
    XXH3_128bits_update(xs, &tag, 1);
    if (n) XXH3_128bits_update(xs, s, n);
}

static XXH128_hash_t ref_key_hash(XXH3_state_t *xs, const char *const part[REF_KEY_PARTS])
{
    uint8_t key[REF_KEY_BYTES_MAX];
    size_t len = 0, n[REF_KEY_PARTS];
    for (int i = 0; i < REF_KEY_PARTS; i++) {
        n[i] = part[i] ? strlen(part[i]) + 1 : 0;
        len += 1 + n[i];
    }
    if (len > sizeof key) {
        XXH3_128bits_reset(xs);
        for (int i = 0; i < REF_KEY_PARTS; i++)
            hash_part(xs, part[i]);
        return XXH3_128bits_digest(xs);
    }
    uint8_t *p = key;
    for (int i = 0; i < REF_KEY_PARTS; i++) {
        *p++ = part[i] ? 1 : 0;
        memcpy(p, part[i] ? part[i] : "", n[i]);
        p += n[i];
    }
    return XXH3_128bits(key, len);
}

static void classify_referrer(struct derive_ctx *c, const char *host, const referrer_tags *t)
{
    const char *const part[REF_KEY_PARTS] = {c->ref_nt,      host,   t->utm_source,
                                             t->utm_medium,  t->utm_campaign, t->ref,
                                             t->click_id};
    XXH128_hash_t h = ref_key_hash(c->xs, part);
    struct ref_entry *e = &c->ref_cache[h.low64 % DERIVE_REF_CACHE_ENTRIES];
    if (!e->used || !XXH128_isEqual(e->key, h)) {
        referrer_classify(c->ref_nt, host, t, &e->info);
        e->key = h;
        e->used = true;
    }
    c->ref = e->info;
}

int derive_decode(struct derive_ctx *c, const void *rec, size_t len, struct event **ev)
{
    int rc = event_decode(rec, len, &c->ev, &c->es);
    if (rc) return rc;
    *ev = &c->ev;
    return TALLY_OK;
}

static struct devent_str S(const char *p, size_t len)
{
    struct devent_str s = {p ? p : "", (uint32_t)len};
    if (!p) s.len = 0;
    return s;
}

static struct devent_str SZ(const char *p)
{
    return S(p, p ? strlen(p) : 0);
}

static void classify_ua(struct derive_ctx *c, const struct event *ev, bool *bot)
{
    size_t n = ev->user_agent.len;
    if (n > EVENT_USER_AGENT_BYTES_MAX) n = EVENT_USER_AGENT_BYTES_MAX;
    if (n) memcpy(c->ua_nt, ev->user_agent.ptr, n);
    c->ua_nt[n] = 0;
    XXH128_hash_t h = XXH3_128bits(c->ua_nt, n);
    struct ua_entry *e = &c->ua_cache[h.low64 % DERIVE_UA_CACHE_ENTRIES];
    if (!e->used || !XXH128_isEqual(e->key, h)) {
        ua_classify(c->ua_nt, &e->info);
        e->bot = bots_is_bot(c->ua_nt);
        e->key = h;
        e->used = true;
    }
    c->ua = e->info;
    *bot = e->bot;
}

static const char *click_id_of(const struct url *u, char *buf, size_t cap)
{
    static const char *const ids[] = {"gclid",  "msclkid", "fbclid", "ttclid", "twclid",
                                      "dclid",  "wbraid",  "gbraid", "li_fat_id"};
    if (!u->query) return NULL;
    size_t len;
    for (size_t i = 0; i < TALLY_ARRAY_LEN(ids); i++)
        if (url_query_get(u->query, u->query_len, ids[i], buf, cap, &len)) return ids[i];
    return NULL;
}

void derive_event(struct derive_ctx *c, const struct event *ev, uint64_t offset,
                  const char *site_name, const char *const *hosts, size_t host_count,
                  struct devent *out)
{
    memset(out, 0, sizeof *out);
    out->offset = offset;
    out->ts_ms = ev->ts_ms;
    out->received_ms = ev->received_ms;
    out->visitor = ev->visitor;
    out->site = SZ(site_name);
    out->interactive = ev->interactive;
    out->pageview = event_is_pageview(ev);
    out->client_id = S(ev->client_id.ptr, ev->client_id.len);
    for (int f = 0; f < DE_FIELD_COUNT; f++) out->str[f] = S("", 0);
    out->str[DE_NAME] = S(ev->name.ptr, ev->name.len);

    bool have_url = ev->url.len > 0 && url_parse(ev->url.ptr, ev->url.len, &c->url) == 0;
    referrer_tags tags;
    memset(&tags, 0, sizeof tags);
    char click_buf[64];
    if (have_url) {
        out->str[DE_HOSTNAME] = S(c->url.host, c->url.host_len);
        out->str[DE_PATH] = S(c->url.path, c->url.path_len);
        url_utm_get(&c->url, &c->utm);
        out->str[DE_UTM_SOURCE] = S(c->utm.source, c->utm.source_len);
        out->str[DE_UTM_MEDIUM] = S(c->utm.medium, c->utm.medium_len);
        out->str[DE_UTM_CAMPAIGN] = S(c->utm.campaign, c->utm.campaign_len);
        out->str[DE_UTM_CONTENT] = S(c->utm.content, c->utm.content_len);
        out->str[DE_UTM_TERM] = S(c->utm.term, c->utm.term_len);
        tags.utm_source = c->utm.source_len ? c->utm.source : NULL;
        tags.utm_medium = c->utm.medium_len ? c->utm.medium : NULL;
        tags.utm_campaign = c->utm.campaign_len ? c->utm.campaign : NULL;
        size_t rl = 0;
        if (c->url.query &&
            (url_query_get(c->url.query, c->url.query_len, "ref", c->tag_ref,
                           sizeof c->tag_ref, &rl) ||
             url_query_get(c->url.query, c->url.query_len, "source", c->tag_ref,
                           sizeof c->tag_ref, &rl)) &&
            rl > 0)
            tags.ref = c->tag_ref;
        tags.click_id = click_id_of(&c->url, click_buf, sizeof click_buf);
    }
    size_t rn = ev->referrer.len;
    if (rn > EVENT_REFERRER_BYTES_MAX) rn = EVENT_REFERRER_BYTES_MAX;
    if (rn) memcpy(c->ref_nt, ev->referrer.ptr, rn);
    c->ref_nt[rn] = 0;
    classify_referrer(c, have_url ? c->url.host : NULL, &tags);
    out->str[DE_SOURCE] = SZ(c->ref.source);
    out->str[DE_REFERRER] = SZ(c->ref.referrer);
    out->str[DE_CHANNEL] = SZ(c->ref.channel);

    bool bot = false;
    classify_ua(c, ev, &bot);
    out->str[DE_DEVICE] = SZ(ua_device_name(c->ua.device));
    out->str[DE_BROWSER] = SZ(c->ua.browser);
    out->str[DE_BROWSER_VERSION] = SZ(c->ua.browser_version);
    out->str[DE_OS] = SZ(c->ua.os);
    out->str[DE_OS_VERSION] = SZ(c->ua.os_version);
    out->str[DE_COUNTRY] = S(ev->country.ptr, ev->country.len);
    out->str[DE_REGION] = S(ev->region.ptr, ev->region.len);
    out->str[DE_CITY] = S(ev->city.ptr, ev->city.len);

    if (bot) out->flags |= DE_F_BOT;
    if (have_url && site_name &&
        !url_host_allowed(c->url.host, c->url.host_len, site_name, strlen(site_name), hosts,
                          host_count))
        out->flags |= DE_F_HOST_NOT_ALLOWED;

    uint32_t np = ev->props_count > EVENT_PROPS_MAX ? EVENT_PROPS_MAX : ev->props_count;
    for (uint32_t i = 0; i < np; i++) {
        c->props[i].key = S(ev->props[i].key.ptr, ev->props[i].key.len);
        c->props[i].value = S(ev->props[i].value.ptr, ev->props[i].value.len);
    }
    out->props_count = np;
    out->props = c->props;
    out->has_revenue = ev->has_revenue;
    if (ev->has_revenue) {
        out->revenue_micros = ev->revenue_micros;
        memcpy(out->currency, ev->currency, 4);
    }
}
