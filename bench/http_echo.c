/*
 * http_echo: the HTTP front end alone, for load generators (wrk, bench/http_load).
 *
 *   http_echo [--seconds S] [--port P] [--threads N] [--defer]
 *
 * Serves until S seconds have passed (default 10): any path answers 204 to GET/HEAD/POST,
 * except POST /event which answers 202 {"accepted": 1} (CORS enabled). With --defer, POST
 * /event is completed from a separate thread, like the log writer completes ingest requests
 * after a group commit (everything queued while it was busy forms the next batch). Prints "port=P"
 * on stdout as soon as it listens (port 0 = ephemeral), then at the end exactly one line:
 *   bench=http_echo seconds=S requests=N rps=R threads=T
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "http/http_server.h"

#define DEFER_BATCH_MAX 4096

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct http_exchange *batch[DEFER_BATCH_MAX];
static int batch_len;
static atomic_bool stopping;

static void h_204(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)req;
    (void)arg;
    http_respond(ex, 204, NULL, NULL, 0);
}

static void h_event(struct http_request *req, struct http_exchange *ex, void *arg)
{
    (void)req;
    bool defer = arg != NULL;
    if (defer) {
        pthread_mutex_lock(&mu);
        if (batch_len < DEFER_BATCH_MAX) {
            if (batch_len == 0) pthread_cond_signal(&cv);
            batch[batch_len++] = ex;
            ex = NULL;
        }
        pthread_mutex_unlock(&mu);
        if (!ex) return;
        http_respond_error(ex, 503, "queue full");
        return;
    }
    http_respond(ex, 202, "application/json", "{\"accepted\": 1}", 15);
}

/* Completes deferred exchanges in batches, as a group-committing writer would. */
static void *committer(void *arg)
{
    (void)arg;
    static struct http_exchange *mine[DEFER_BATCH_MAX];
    for (;;) {
        pthread_mutex_lock(&mu);
        while (batch_len == 0 && !atomic_load(&stopping)) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_nsec += 10000000;
            if (dl.tv_nsec >= 1000000000) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&cv, &mu, &dl);
        }
        int n = batch_len;
        memcpy(mine, batch, (size_t)n * sizeof *mine);
        batch_len = 0;
        pthread_mutex_unlock(&mu);
        for (int i = 0; i < n; i++)
            http_respond(mine[i], 202, "application/json", "{\"accepted\": 1}", 15);
        if (n == 0 && atomic_load(&stopping)) break;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    unsigned seconds = 10, threads = 2, port = 0;
    bool defer = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--defer") == 0)
            defer = true;
        else {
            fprintf(stderr, "usage: http_echo [--seconds S] [--port P] [--threads N] [--defer]\n");
            return 2;
        }
    }
    struct http_config cfg;
    http_config_defaults(&cfg);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", port);
    cfg.listen = listen;
    cfg.threads = threads;
    struct http_server *srv;
    if (http_server_new(&cfg, &srv) != 0) return 1;
    struct http_route event = {HTTP_M(HTTP_POST),       "/event", false, true, "event", h_event,
                               defer ? (void *)1 : NULL};
    struct http_route any = {
        HTTP_M(HTTP_GET) | HTTP_M(HTTP_POST), "/", true, false, "any", h_204, NULL};
    if (http_server_route(srv, &event) != 0 || http_server_route(srv, &any) != 0) return 1;
    pthread_t th;
    if (defer) pthread_create(&th, NULL, committer, NULL);
    if (http_server_start(srv) != 0) return 1;
    printf("port=%u\n", http_server_port(srv));
    fflush(stdout);
    sleep(seconds);
    http_server_stop(srv, 1000);
    atomic_store(&stopping, true);
    if (defer) pthread_join(th, NULL);
    struct http_server_stats st;
    http_server_stats(srv, &st);
    printf("bench=http_echo seconds=%u requests=%llu rps=%.0f threads=%u\n", seconds,
           (unsigned long long)st.requests, (double)st.requests / (seconds ? seconds : 1), threads);
    http_server_free(srv);
    return 0;
}
