/*
 * sites: the sites ingest accepts, configured ([site NAME]) or auto-created on first event.
 *
 * Configured sites come from the config and never change. With auto_sites, a valid domain-like
 * name that is not configured becomes a site with default settings on its first event; the
 * registry holds at most SITES_AUTO_MAX of those (beyond it: TALLY_EFULL, answered 503), so a
 * client sending random names cannot grow memory without bound. Entries are never removed, so
 * a returned pointer stays valid until sites_free. Any thread may call sites_resolve.
 */
#ifndef TALLY_SITES_H
#define TALLY_SITES_H

#include <stdbool.h>

#include "core/config.h"

#define SITES_AUTO_MAX 10000
#define SITES_NAME_BYTES_MAX 253

struct site {
    const char *name;                 /* owned by the registry */
    const struct config_site *config; /* NULL for auto-created sites (defaults apply) */
};

struct sites;

/* Borrows cfg (must outlive the registry). NULL on OOM. */
struct sites *sites_new(const struct tally_config *cfg);
void sites_free(struct sites *s);

/*
 * Finds the site named `name_or_id` (a site name or one of its ids). When absent and auto_sites
 * is on, creates it if the name is a valid domain. Returns 0 with *out set; TALLY_ENOENT (unknown
 * and auto_sites off), TALLY_EINVAL (not a valid site name), TALLY_EFULL (auto limit reached).
 */
int sites_resolve(struct sites *s, const char *name_or_id, const struct site **out);

/* Whether `host` may send events for the site: its `hosts` list, else the site's name and its
 * subdomains ("www.example.com" for "example.com"). Case-insensitive. */
bool sites_host_allowed(const struct site *site, const char *host);

/* Whether a name is acceptable as an auto-created site name (lowercase domain-like). */
bool sites_name_valid(const char *name);

#endif
