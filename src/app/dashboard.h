/*
 * dashboard: the built-in dashboard, the tracker script and the site list the dashboard needs.
 *
 * Routes (registered by dashboard_routes, declared in app_int.h):
 *   GET /                      the dashboard page (src/app/dashboard/index.html)
 *   GET /dashboard/NAME        its assets: app.js, app.css, uplot.js, uplot.css
 *   GET /js/script.js          the tracker (src/app/tracker/script.js), and the same file at
 *   GET [server] tracker_path  a first-party path of the operator's choosing
 *   GET /api/v1/sites          the sites the Bearer key may read:
 *       200 {"sites": [{"name": "example.com", "timezone": "UTC", "configured": true}, ...],
 *            "truncated": false}
 *       configured sites first (in configuration order), then, for keys valid for every site
 *       and with auto_sites on, the sites created by their first event (oldest first); at most
 *       DASHBOARD_SITES_MAX entries ("truncated": true beyond). 401 without a valid key (with
 *       WWW-Authenticate: Bearer), 403 for a key without read scope.
 *
 * Static files are embedded (src/app/assets.S), compressed with gzip once at start and served
 * with an ETag (If-None-Match gives 304), Vary: Accept-Encoding and Content-Encoding: gzip when
 * the client accepts it. The tracker is cached for a day by browsers (it sits at a stable URL
 * that many pages load); the dashboard files are revalidated on every load (no-cache + ETag), so
 * an upgraded binary is picked up at once. Everything is read-only after dashboard_routes, so
 * the handlers run on any HTTP worker without locks; the site list takes the store's registry
 * mutex for a copy of each name.
 */
#ifndef TALLY_DASHBOARD_H
#define TALLY_DASHBOARD_H

/* Most sites listed by GET /api/v1/sites. */
#define DASHBOARD_SITES_MAX 1000
/* The tracker's Cache-Control max-age. */
#define DASHBOARD_TRACKER_MAX_AGE_S 86400

#endif
