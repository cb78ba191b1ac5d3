#include "core/diag.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum diag_level g_level_min = DIAG_INFO;
static FILE *g_out;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void diag_init(enum diag_level level_min, FILE *out)
{
    g_level_min = level_min;
    g_out = out;
}

int diag_level_parse(const char *name)
{
    static const char *const names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++)
        if (strcmp(name, names[i]) == 0) return i;
    return -1;
}

static long now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void write_line(enum diag_level level, const char *msg)
{
    char line[1200];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000L, level_names[level], msg);
    if (n < 0) return;
    if ((size_t)n >= sizeof line) {
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    FILE *out = g_out ? g_out : stderr;
    fflush(out);
    ssize_t w = write(fileno(out), line, (size_t)n);
    (void)w;
}

void diag_emit(struct diag_site *site, enum diag_level level, const char *fmt, ...)
{
    if (level < g_level_min || level >= DIAG_OFF) return;
    long now = now_mono_ms();
    int suppressed_before = 0;
    pthread_mutex_lock(&g_mu);
    if (now - site->window_start_ms >= DIAG_WINDOW_MS) {
        suppressed_before = site->suppressed;
        site->window_start_ms = now;
        site->count_in_window = 0;
        site->suppressed = 0;
    }
    int emit = site->count_in_window < DIAG_BURST_MAX;
    if (emit)
        site->count_in_window++;
    else
        site->suppressed++;
    pthread_mutex_unlock(&g_mu);

    char msg[1024];
    if (suppressed_before > 0) {
        snprintf(msg, sizeof msg, "(%d similar messages suppressed)", suppressed_before);
        write_line(level, msg);
    }
    if (!emit) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    write_line(level, msg);
}
