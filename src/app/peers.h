/*
 * peers: the ingest endpoints of other analytics products' wire formats (API.md §3.2), so a
 * site running their tracker or SDK can point it at Tally and change nothing else. One module
 * per peer (peer_NAME.c) decodes its format into native_events and hands them to ingest_submit
 * (app/ingest.h), answering in the peer's own format. A peer's identifiers (a Umami website
 * UUID, a GA4 measurement id, a Segment write key, a PostHog project key) map to a site through
 * the site's `ids` (sites_resolve accepts them as site names).
 *
 * THREADS. Routes are registered by the main thread before the server starts; handlers run on
 * the HTTP worker threads.
 */
#ifndef TALLY_APP_PEERS_H
#define TALLY_APP_PEERS_H

#include "app/app_int.h"

/* Registers every peer's routes. 0 or the first error. */
int peer_routes(struct app *app);

int peer_plausible_routes(struct app *app);   /* POST /api/event */
int peer_pixel_routes(struct app *app);       /* GET /p.gif */
int peer_goatcounter_routes(struct app *app); /* GET /count, POST /api/v0/count */
int peer_segment_routes(struct app *app);     /* POST /v1/batch|track|page|screen|identify|group|alias */
int peer_posthog_routes(struct app *app);     /* POST /batch/, /capture/, /e/, /i/v0/e/ */
int peer_ga4_routes(struct app *app);         /* POST /mp/collect, /debug/mp/collect */
int peer_matomo_routes(struct app *app);      /* GET/POST /matomo.php */
int peer_umami_routes(struct app *app);       /* POST /api/send, /api/batch */

#endif
