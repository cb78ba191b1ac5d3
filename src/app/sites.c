#include "app/sites.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tally/error.h"

struct sites {
    const struct tally_config *cfg;
    pthread_rwlock_t lock;
    struct site *configured; /* cfg->site_count entries */
    struct site **autos;     /* SITES_AUTO_MAX slots */
    int auto_count;
};

struct sites *sites_new(const struct tally_config *cfg)
{
    struct sites *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->cfg = cfg;
    pthread_rwlock_init(&s->lock, NULL);
    s->configured = calloc((size_t)cfg->site_count + 1, sizeof(struct site));
    s->autos = calloc(SITES_AUTO_MAX, sizeof(struct site *));
    if (!s->configured || !s->autos) {
        sites_free(s);
        return NULL;
    }
    for (int i = 0; i < cfg->site_count; i++) {
        s->configured[i].name = cfg->sites[i].name;
        s->configured[i].config = &cfg->sites[i];
    }
    return s;
}

void sites_free(struct sites *s)
{
    if (!s) return;
    for (int i = 0; i < s->auto_count; i++) {
        free((char *)s->autos[i]->name);
        free(s->autos[i]);
    }
    free(s->autos);
    free(s->configured);
    pthread_rwlock_destroy(&s->lock);
    free(s);
}

bool sites_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > SITES_NAME_BYTES_MAX || name[0] == '.' || name[0] == '-' ||
        name[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                  c == '_';
        if (!ok) return false;
        if (c == '.' && name[i + 1] == '.') return false;
    }
    return true;
}

static const struct site *find_auto(struct sites *s, const char *name)
{
    for (int i = 0; i < s->auto_count; i++)
        if (strcmp(s->autos[i]->name, name) == 0) return s->autos[i];
    return NULL;
}

int sites_resolve(struct sites *s, const char *name_or_id, const struct site **out)
{
    const struct config_site *cs = config_site_find(s->cfg, name_or_id);
    if (cs) {
        *out = &s->configured[cs - s->cfg->sites];
        return 0;
    }
    if (!s->cfg->auto_sites) return TALLY_ENOENT;
    if (!sites_name_valid(name_or_id)) return TALLY_EINVAL;
    /* Linear scan is fine at this bound for now; a hash index is the next step if it shows. */
    pthread_rwlock_rdlock(&s->lock);
    const struct site *found = find_auto(s, name_or_id);
    pthread_rwlock_unlock(&s->lock);
    if (found) {
        *out = found;
        return 0;
    }
    pthread_rwlock_wrlock(&s->lock);
    found = find_auto(s, name_or_id);
    int rc = 0;
    if (!found) {
        if (s->auto_count >= SITES_AUTO_MAX) {
            rc = TALLY_EFULL;
        } else {
            struct site *n = calloc(1, sizeof *n);
            char *name = strdup(name_or_id);
            if (!n || !name) {
                free(n);
                free(name);
                rc = TALLY_ENOMEM;
            } else {
                n->name = name;
                s->autos[s->auto_count++] = n;
                found = n;
            }
        }
    }
    pthread_rwlock_unlock(&s->lock);
    if (rc == 0) *out = found;
    return rc;
}

static bool host_matches(const char *host, const char *pattern)
{
    size_t h = strlen(host), p = strlen(pattern);
    if (h == p) return strcasecmp(host, pattern) == 0;
    return h > p && host[h - p - 1] == '.' && strcasecmp(host + h - p, pattern) == 0;
}

bool sites_host_allowed(const struct site *site, const char *host)
{
    if (site->config && site->config->hosts.count > 0) {
        for (int i = 0; i < site->config->hosts.count; i++)
            if (strcasecmp(site->config->hosts.items[i], host) == 0) return true;
        return false;
    }
    return host_matches(host, site->name);
}
