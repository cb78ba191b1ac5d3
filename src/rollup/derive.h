/*
 * derive: a canonical event (ingest/event.h) -> a derived event (devent.h), the one place where
 * both consumers and the rebuild turn log records into what they count, so that an incremental
 * run and a rebuild derive exactly the same values.
 *
 * Derivations: hostname, path and UTM tags from the URL (url.h); source, normalized referrer
 * and channel from the referrer and the tags (referrer.h; the landing page's host decides
 * self-referrals); browser, versions, OS and device from the User-Agent (ua.h); the bot verdict
 * (bots.h) and the host rule (url_host_allowed with the site's configured hosts) are judged
 * again, so a rebuild applies improved lists. Events without a URL are not host-checked.
 *
 * A derive_ctx caches User-Agent verdicts (ua_info and bot) in a direct-mapped table keyed by
 * the XXH3-128 of the User-Agent (DERIVE_UA_CACHE_ENTRIES entries), because the bot check has
 * no cache of its own and real traffic has few distinct User-Agents; likewise referrer
 * classifications, keyed by the XXH3-128 of all their inputs (referrer, page host, tags). The
 * caches only avoid recomputation: results never depend on their state.
 *
 * THREADS. A derive_ctx is used by one thread at a time (one per consumer thread). ua_init,
 * bots_init and referrer_init must have run (else everything is classified as unknown, which is
 * deterministic too, but not useful).
 */
#ifndef TALLY_ROLLUP_DERIVE_H
#define TALLY_ROLLUP_DERIVE_H

#include <stddef.h>
#include <stdint.h>

#include "ingest/event.h"
#include "rollup/devent.h"

#define DERIVE_UA_CACHE_ENTRIES 4096
#define DERIVE_REF_CACHE_ENTRIES 4096

struct derive_ctx;

/* NULL on OOM. Caller owns it (derive_ctx_free; NULL is a no-op). */
struct derive_ctx *derive_ctx_new(void);
void derive_ctx_free(struct derive_ctx *c);

/*
 * Derives *out from ev (log offset `offset`). site_name is the site's canonical name (it
 * replaces ev->site, which may be one of the site's ids); hosts/host_count the site's
 * configured allowed hosts (NULL/0: the default rule). out's strings point into ev's strings,
 * into site_name and into c: valid until the next derive_event on c, or until those go away.
 */
void derive_event(struct derive_ctx *c, const struct event *ev, uint64_t offset,
                  const char *site_name, const char *const *hosts, size_t host_count,
                  struct devent *out);

/* Decodes a log record (event_decode) into the context's own scratch: *ev stays valid until
 * the next derive_decode on c and while rec lives. 0 or TALLY_ECORRUPT. */
int derive_decode(struct derive_ctx *c, const void *rec, size_t len, struct event **ev);

#endif
