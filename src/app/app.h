/*
 * app: the entry points of the binary's modes, wired from the modules. main.c parses the command
 * line and calls exactly one of these on the main thread.
 * Each returns the process exit code: 0 success, 1 runtime error, 2 usage/configuration error.
 */
#ifndef TALLY_APP_H
#define TALLY_APP_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"

#define TALLY_VERSION "0.1.0"

struct app_options {
    bool repair;          /* --repair: quarantine corrupt closed log segments at open */
    uint64_t from_offset; /* --dump-log --from */
    const char *site;      /* --rebuild/--digest --site */
    const char *from_date; /* --rebuild --from YYYY-MM-DD */
    const char *to_date;   /* --rebuild --to YYYY-MM-DD */
    /* Serve: where the configuration came from, so that SIGHUP re-reads it the same way. */
    const char *config_path; /* --config FILE, NULL: embedded defaults only */
    const char *data_dir;    /* --data-dir override, or NULL */
    const char *listen;      /* --listen override, or NULL */
    int listen_fd;           /* --listen-fd N: serve on this inherited socket; -1: none (then
                                LISTEN_FDS/LISTEN_PID of systemd socket activation apply) */
};

/* Serves until SIGTERM/SIGINT. Takes the data-directory lock. */
int app_serve(const struct tally_config *cfg, const struct app_options *opt);

/* `tally restore BACKUP DATA_DIR` (backup.h). */
int app_restore(const char *backup_dir, const char *data_dir);

/* `tally backup DIR --url URL --key KEY` (backup.h). */
int app_backup(const char *dir, const char *url, const char *key);

/* --check: validates the data directory (the configuration was validated by main). */
int app_check(const struct tally_config *cfg);

/* --dump-log: prints the log's records from an offset as NDJSON on stdout. */
int app_dump_log(const struct tally_config *cfg, const struct app_options *opt);

/* --rebuild: recomputes sessions and rollups from the log; prints a summary and the digest. */
int app_rebuild(const struct tally_config *cfg, const struct app_options *opt);

/* --digest: prints the digest of the current sessions and rollups without changing them. */
int app_digest(const struct tally_config *cfg, const struct app_options *opt);

#endif
