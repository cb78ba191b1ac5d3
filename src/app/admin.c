/*
 * admin: the admin-scope operations endpoints (see admin.h).
 */
#include "app/admin.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "app/app_int.h"
#include "app/backup.h"
#include "core/diag.h"
#include "core/keys.h"
#include "http/http_server.h"
#include "tally/error.h"

struct admin {
    struct app *app;
    pthread_mutex_t mu;
    bool running;     /* a backup thread is running (guarded by mu) */
    bool joinable;    /* th was started and not yet joined (main thread or a handler, mu) */
    pthread_t th;
    struct http_exchange *ex; /* the running backup's exchange */
    char dir[PATH_MAX];
};

/* The key's scope from the global lists ([auth] and DATA_DIR/keys). */
static enum key_scope key_scope_of(struct app *app, const struct http_request *req)
{
    const char *auth = http_request_header(req, "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) return KEY_SCOPE_NONE;
    const char *key = auth + 7;
    while (*key == ' ') key++;
    const struct tally_config *cfg = app_config(app);
    return key_verify(key, strlen(key), &cfg->key_digests, &app->stored_keys);
}

static void *backup_main(void *arg)
{
    struct admin *ad = arg;
    pthread_setname_np(pthread_self(), "tally-backup");
    struct app *app = ad->app;
    struct backup_result r;
    diag_info("backup into %s: started", ad->dir);
    pthread_mutex_lock(&app->retention_mu);
    int rc = backup_run(app->store, app->log, app->data_dir, ad->dir, &r);
    pthread_mutex_unlock(&app->retention_mu);
    char body[2048];
    int n;
    struct http_exchange *ex = ad->ex;
    if (rc == 0) {
        char dir[PATH_MAX + 64];
        http_json_escape(dir, sizeof dir, ad->dir);
        n = snprintf(body, sizeof body,
                     "{\"dir\": \"%s\", \"log_start_offset\": %llu, \"log_end_offset\": %llu, "
                     "\"segments\": %u, \"bytes\": %llu, \"elapsed_s\": %.3f}",
                     dir, (unsigned long long)r.log_start_offset,
                     (unsigned long long)r.log_end_offset, r.segments,
                     (unsigned long long)r.bytes, r.elapsed_s);
        diag_info("backup into %s: done, log offsets [%llu, %llu), %u segments, %.3f s",
                  ad->dir, (unsigned long long)r.log_start_offset,
                  (unsigned long long)r.log_end_offset, r.segments, r.elapsed_s);
        http_respond(ex, 200, "application/json", body, (size_t)n);
    } else {
        snprintf(body, sizeof body, "backup failed: %s: %s", tally_strerror(rc), r.message);
        diag_error("backup into %s: %s", ad->dir, body);
        http_respond_error(ex, rc == TALLY_EINVAL ? 400 : 500, body);
    }
    pthread_mutex_lock(&ad->mu);
    ad->ex = NULL;
    ad->running = false;
    pthread_mutex_unlock(&ad->mu);
    return NULL;
}

static void on_backup(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    struct admin *ad = app->admin;
    enum key_scope scope = key_scope_of(app, req);
    if (scope == KEY_SCOPE_NONE) {
        static const char msg[] =
            "{\"error\": \"an admin key is required: Authorization: Bearer KEY\"}";
        http_exchange_complete(ex, 401, "application/json", msg, sizeof msg - 1,
                               "WWW-Authenticate: Bearer\r\n");
        return;
    }
    if (!key_scope_allows(scope, KEY_SCOPE_ADMIN)) {
        http_respond_error(ex, 403, "this key has no admin scope");
        return;
    }
    cJSON *b = cJSON_ParseWithLength(req->body, req->body_len);
    const cJSON *dir = cJSON_GetObjectItem(b, "dir");
    if (!cJSON_IsString(dir) || dir->valuestring[0] != '/' ||
        strlen(dir->valuestring) >= sizeof ad->dir - 64) {
        cJSON_Delete(b);
        http_respond_error(ex, 400, "dir: an absolute path on the server is required");
        return;
    }
    if (atomic_load(&app->stopping)) {
        cJSON_Delete(b);
        http_respond_error(ex, 503, "the server is stopping");
        return;
    }
    pthread_mutex_lock(&ad->mu);
    if (ad->running) {
        pthread_mutex_unlock(&ad->mu);
        cJSON_Delete(b);
        http_respond_error(ex, 409, "a backup is already running");
        return;
    }
    if (ad->joinable) pthread_join(ad->th, NULL); /* finished: returns at once */
    ad->joinable = false;
    snprintf(ad->dir, sizeof ad->dir, "%s", dir->valuestring);
    cJSON_Delete(b);
    ad->ex = ex;
    ad->running = true;
    if (pthread_create(&ad->th, NULL, backup_main, ad) != 0) {
        ad->running = false;
        ad->ex = NULL;
        pthread_mutex_unlock(&ad->mu);
        http_respond_error(ex, 503, "cannot start the backup thread");
        return;
    }
    ad->joinable = true;
    pthread_mutex_unlock(&ad->mu);
}

int admin_routes(struct app *app)
{
    struct admin *ad = calloc(1, sizeof *ad);
    if (!ad) return TALLY_ENOMEM;
    ad->app = app;
    pthread_mutex_init(&ad->mu, NULL);
    app->admin = ad;
    struct http_route r = {.methods = HTTP_M(HTTP_POST),
                           .path = "/api/v1/admin/backup",
                           .name = "admin_backup",
                           .handler = on_backup,
                           .arg = app};
    return http_server_route(app->http, &r);
}

void admin_stop(struct app *app)
{
    struct admin *ad = app ? app->admin : NULL;
    if (!ad) return;
    pthread_mutex_lock(&ad->mu);
    bool join = ad->joinable;
    ad->joinable = false;
    pthread_mutex_unlock(&ad->mu);
    if (join) pthread_join(ad->th, NULL);
    pthread_mutex_destroy(&ad->mu);
    free(ad);
    app->admin = NULL;
}
