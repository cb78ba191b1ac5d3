/*
 * admin: operations endpoints that need an admin-scope key (API.md §5 additions).
 *
 *   POST /api/v1/admin/backup {"dir": "/absolute/path"}
 *       Takes an online backup into dir (absent or empty, on the server's file system; see
 *       backup.h). One at a time (409 while one runs). The answer comes when the backup is
 *       complete: 200 {"dir", "log_start_offset", "log_end_offset", "segments", "bytes",
 *       "elapsed_s"}; 400 bad body or dir, 401 no/unknown key, 403 not admin, 500 with the
 *       reason when the backup failed (the partial directory has no MANIFEST.json).
 *
 * The backup runs on its own thread, holding the server's retention lock; the HTTP worker only
 * checks the key and starts it. admin_stop joins a running backup (the server calls it after
 * the HTTP drain and before the store closes).
 */
#ifndef TALLY_ADMIN_H
#define TALLY_ADMIN_H

struct app;

/* Registers the admin routes and allocates app->admin. Main thread, before the HTTP start. */
int admin_routes(struct app *app);
/* Waits for a running backup (its exchange is completed) and frees app->admin. NULL-safe. */
void admin_stop(struct app *app);

#endif
