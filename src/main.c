/*
 * tally: command-line entry. Parses flags, loads the configuration (embedded defaults, then
 * --config FILE, then flags), and runs one mode. Exit codes: 0 success, 1 runtime error,
 * 2 usage or configuration error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/app.h"
#include "app/upgrade.h"
#include "core/config.h"
#include "core/diag.h"
#include "core/keys.h"

static const char usage_text[] =
    "usage: tally [--config FILE] [--data-dir DIR] [--listen HOST:PORT] [--repair]\n"
    "       tally --check [--config FILE] [--data-dir DIR]\n"
    "       tally --dump-log [--from OFFSET] [--config FILE] [--data-dir DIR]\n"
    "       tally --rebuild [--site NAME] [--from DATE] [--to DATE] [--config FILE] [--data-dir DIR]\n"
    "       tally --digest [--site NAME] [--config FILE] [--data-dir DIR]\n"
    "       tally key new [--site NAME] [--scope read|write|admin]\n"
    "       tally backup DIR [--url http://HOST:PORT] [--key KEY] [--config FILE]\n"
    "       tally restore BACKUP_DIR DATA_DIR\n"
    "       tally --help | --help-config | --version\n"
    "\n"
    "Serves the Tally analytics server. Flags override the configuration file, which overrides\n"
    "the embedded defaults (127.0.0.1:8080, data in ./data, fsync always, auto_sites on).\n"
    "\n"
    "  --config FILE       INI configuration (see config.example.ini, --help-config)\n"
    "  --data-dir DIR      [storage] data_dir\n"
    "  --listen HOST:PORT  [server] listen\n"
    "  --listen-fd N       serve on the inherited listening socket N instead of binding\n"
    "                      (systemd socket activation via LISTEN_FDS works without it)\n"
    "  --repair            quarantine corrupt closed log segments instead of refusing to start\n"
    "  --check             validate the configuration and the data directory, then exit\n"
    "                      (0 all well, 2 configuration error, 1 data-directory problem)\n"
    "  --dump-log          print the event log's records as NDJSON (offline tool)\n"
    "  --from OFFSET       first log offset for --dump-log (default 0)\n"
    "  --rebuild           recompute sessions and rollups from the event log (server stopped);\n"
    "                      prints events read, buckets written, elapsed and the digest\n"
    "  --site NAME         limit --rebuild / --digest to one site\n"
    "  --from/--to DATE    limit --rebuild to local days YYYY-MM-DD (inclusive)\n"
    "  --digest            print the digest of the current sessions and rollups\n"
    "  --help-config       list every configuration key with unit, default and range\n"
    "  --version           print the version\n"
    "\n"
    "backup: asks the running server (--url, default from listen) to write an online backup\n"
    "into DIR (absent or empty); the admin key comes from --key or TALLY_ADMIN_KEY.\n"
    "restore: copies a backup into an empty data directory (server stopped). SIGHUP reloads\n"
    "the configuration file. SIGUSR2 restarts without dropping a connection: a new process\n"
    "(the file at the path this one was started from, so replace that file first to upgrade)\n"
    "takes over the listening socket, then this one drains and exits.\n";

enum mode { MODE_SERVE, MODE_CHECK, MODE_DUMP, MODE_REBUILD, MODE_DIGEST };

static int usage_error(const char *msg, const char *arg);

/* `tally key new`: stdout is exactly two lines (the key, and the digest line to paste into the
 * configuration); guidance goes to stderr. Only the digest is ever stored. */
static int key_new(int argc, char **argv)
{
    const char *site = NULL;
    enum key_scope scope = KEY_SCOPE_READ;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--site") && i + 1 < argc) {
            site = argv[++i];
        } else if (!strcmp(argv[i], "--scope") && i + 1 < argc) {
            scope = key_scope_parse(argv[++i]);
            if (scope == KEY_SCOPE_NONE)
                return usage_error("--scope must be read, write or admin", argv[i]);
        } else {
            return usage_error("unknown argument to key new", argv[i]);
        }
    }
    char key[KEY_TEXT_BYTES], line[KEY_DIGEST_LINE_BYTES];
    if (key_generate(scope, key, line) != 0) {
        fprintf(stderr, "tally: cannot generate a key (libsodium failed to start)\n");
        return 1;
    }
    printf("key = %s\nkey_digests = %s\n", key, line);
    fflush(stdout);
    if (site)
        fprintf(stderr, "Add the key_digests line to [site %s] (append with a comma if the "
                        "key already has digests). The key is shown only now.\n", site);
    else
        fprintf(stderr, "Add the key_digests line to [auth] (append with a comma if it "
                        "already has digests). The key is shown only now.\n");
    return 0;
}

/* `tally backup DIR [--url URL] [--key KEY] [--config FILE]`. */
static int backup_cmd(int argc, char **argv)
{
    const char *dir = NULL, *url = NULL, *key = getenv("TALLY_ADMIN_KEY"), *config = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--url") && i + 1 < argc)
            url = argv[++i];
        else if (!strcmp(argv[i], "--key") && i + 1 < argc)
            key = argv[++i];
        else if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config = argv[++i];
        else if (argv[i][0] != '-' && !dir)
            dir = argv[i];
        else
            return usage_error("unknown argument to backup", argv[i]);
    }
    if (!dir) return usage_error("backup needs a target directory", NULL);
    if (!key || !*key) return usage_error("backup needs an admin key (--key or TALLY_ADMIN_KEY)",
                                          NULL);
    char buf[300];
    if (!url) {
        struct tally_config *cfg = config_new_defaults();
        char err[CONFIG_ERROR_BYTES_MAX], host[256];
        int port = 0;
        if (!cfg) return 1;
        if (config && config_load_file(cfg, config, err) != 0) {
            fprintf(stderr, "tally: configuration error: %s\n", err);
            config_free(cfg);
            return 2;
        }
        if (config_parse_listen(cfg->listen, host, &port) != 0) host[0] = 0;
        config_free(cfg);
        if (!host[0] || !strcmp(host, "0.0.0.0")) snprintf(host, sizeof host, "127.0.0.1");
        if (!strcmp(host, "::")) snprintf(host, sizeof host, "::1");
        snprintf(buf, sizeof buf, strchr(host, ':') ? "http://[%s]:%d" : "http://%s:%d", host,
                 port);
        url = buf;
    }
    return app_backup(dir, url, key);
}

static int usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, "tally: %s%s%s\n%s", msg, arg ? ": " : "", arg ? arg : "", usage_text);
    return 2;
}

int main(int argc, char **argv)
{
    const char *config_path = NULL, *data_dir = NULL, *listen = NULL, *from_arg = NULL;
    enum mode mode = MODE_SERVE;
    struct app_options opt = {0};

    opt.listen_fd = -1;
    upgrade_init(argc, argv); /* the executable and arguments a SIGUSR2 upgrade re-runs */
    if (argc >= 2 && !strcmp(argv[1], "backup")) return backup_cmd(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "restore")) {
        if (argc != 4) return usage_error("usage: tally restore BACKUP_DIR DATA_DIR", NULL);
        return app_restore(argv[2], argv[3]);
    }
    if (argc >= 2 && !strcmp(argv[1], "key")) {
        if (argc >= 3 && !strcmp(argv[2], "new")) return key_new(argc, argv);
        return usage_error("unknown key command (try: tally key new)", argc >= 3 ? argv[2] : NULL);
    }

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_next = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("tally %s\n", TALLY_VERSION);
            return 0;
        } else if (!strcmp(a, "--help-config")) {
            config_print_keys(stdout);
            return 0;
        } else if (!strcmp(a, "--config") && has_next) {
            config_path = argv[++i];
        } else if (!strcmp(a, "--data-dir") && has_next) {
            data_dir = argv[++i];
        } else if (!strcmp(a, "--listen") && has_next) {
            listen = argv[++i];
        } else if (!strcmp(a, "--listen-fd") && has_next) {
            char *end;
            long fd = strtol(argv[++i], &end, 10);
            if (*end || fd < 0 || fd > 65535) return usage_error("--listen-fd needs a descriptor",
                                                                 argv[i]);
            opt.listen_fd = (int)fd;
        } else if (!strcmp(a, "--repair")) {
            opt.repair = true;
        } else if (!strcmp(a, "--check")) {
            mode = MODE_CHECK;
        } else if (!strcmp(a, "--dump-log")) {
            mode = MODE_DUMP;
        } else if (!strcmp(a, "--rebuild")) {
            mode = MODE_REBUILD;
        } else if (!strcmp(a, "--digest")) {
            mode = MODE_DIGEST;
        } else if (!strcmp(a, "--site") && has_next) {
            opt.site = argv[++i];
        } else if (!strcmp(a, "--from") && has_next) {
            from_arg = argv[++i];
        } else if (!strcmp(a, "--to") && has_next) {
            opt.to_date = argv[++i];
        } else if (!strcmp(a, "--config") || !strcmp(a, "--data-dir") ||
                   !strcmp(a, "--listen") || !strcmp(a, "--from") || !strcmp(a, "--to") ||
                   !strcmp(a, "--listen-fd") ||
                   !strcmp(a, "--site")) {
            return usage_error("missing value for", a);
        } else {
            return usage_error("unknown argument", a);
        }
    }

    if (from_arg && mode == MODE_DUMP) {
        char *end;
        opt.from_offset = strtoull(from_arg, &end, 10);
        if (*end || !*from_arg) return usage_error("--from needs a log offset", from_arg);
    } else if (from_arg) {
        opt.from_date = from_arg;
    }

    struct tally_config *cfg = config_new_defaults();
    if (!cfg) return 1;
    char err[CONFIG_ERROR_BYTES_MAX];
    int rc = 0;
    if (config_path) rc = config_load_file(cfg, config_path, err);
    if (rc == 0 && data_dir) rc = config_set(cfg, "storage", "data_dir", data_dir, err);
    if (rc == 0 && listen) rc = config_set(cfg, "server", "listen", listen, err);
    opt.config_path = config_path;
    opt.data_dir = data_dir;
    opt.listen = listen;
    if (rc == 0) rc = config_validate(cfg, err);
    if (rc != 0) {
        fprintf(stderr, "tally: configuration error: %s\n", err);
        upgrade_child_failed("configuration error: %s", err);
        config_free(cfg);
        return 2;
    }
    diag_init((enum diag_level)diag_level_parse(cfg->log_level), NULL);

    int exit_code;
    switch (mode) {
    case MODE_CHECK:
        exit_code = app_check(cfg);
        break;
    case MODE_DUMP:
        exit_code = app_dump_log(cfg, &opt);
        break;
    case MODE_REBUILD:
        exit_code = app_rebuild(cfg, &opt);
        break;
    case MODE_DIGEST:
        exit_code = app_digest(cfg, &opt);
        break;
    default:
        exit_code = app_serve(cfg, &opt);
        break;
    }
    config_free(cfg);
    return exit_code;
}
