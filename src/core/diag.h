/*
 * diag: diagnostics for operators (never call it "log": the event log is seglog).
 *
 * One line per message: "2026-11-26T13:51:33.123Z LEVEL message". Lines go to stderr (or the
 * stream given to diag_init) with one write(2) each, so threads never interleave within a line.
 * Repeats are rate-limited per call site: at most DIAG_BURST_MAX lines per call site per
 * DIAG_WINDOW_MS; the rest are counted and reported once the window ends ("... N similar
 * messages suppressed"). Any thread may call every function here.
 */
#ifndef TALLY_DIAG_H
#define TALLY_DIAG_H

#include <stdio.h>

enum diag_level { DIAG_DEBUG = 0, DIAG_INFO = 1, DIAG_WARN = 2, DIAG_ERROR = 3, DIAG_OFF = 4 };

#define DIAG_WINDOW_MS 1000
#define DIAG_BURST_MAX 5

/* Sets the minimum level and the output stream (NULL: stderr). Call before threads start. */
void diag_init(enum diag_level level_min, FILE *out);
/* Parses "debug|info|warn|error|off"; returns -1 when unknown. */
int diag_level_parse(const char *name);

struct diag_site {
    long window_start_ms; /* owned by diag; guarded by diag's mutex */
    int count_in_window;
    int suppressed;
};

void diag_emit(struct diag_site *site, enum diag_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define DIAG_(level, ...)                                                                       \
    do {                                                                                        \
        static struct diag_site diag_site_;                                                     \
        diag_emit(&diag_site_, level, __VA_ARGS__);                                             \
    } while (0)
#define diag_debug(...) DIAG_(DIAG_DEBUG, __VA_ARGS__)
#define diag_info(...) DIAG_(DIAG_INFO, __VA_ARGS__)
#define diag_warn(...) DIAG_(DIAG_WARN, __VA_ARGS__)
#define diag_error(...) DIAG_(DIAG_ERROR, __VA_ARGS__)

#endif
