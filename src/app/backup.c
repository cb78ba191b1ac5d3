/*
 * backup: see backup.h for the backup's layout and why it is consistent.
 *
 * The log copy works on files, not through a reader: a closed segment never changes again
 * (retention may unlink it; a hard link keeps its bytes), and the segment holding the snapshot
 * offset C is read from its start, batch header by batch header, copying whole batches while
 * they end at or before C. Batches never straddle C (C is a committed end, always a batch
 * boundary), so the copy's last segment ends exactly at C, and the restore's recovery finds no
 * torn tail. Checksums are not verified here; the restored log's open verifies every batch.
 */
#include "app/backup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "app/app.h"
#include "ingest/timefmt.h"
#include "log/batch.h"
#include "log/seglog.h"
#include "log/segment.h"
#include "store/store.h"
#include "tally/error.h"

#define BACKUP_FORMAT_VERSION 1
#define MANIFEST_NAME "MANIFEST.json"
#define COPY_CHUNK_BYTES (1u << 20)
#define SEGMENTS_MAX 1000000

static int fail(struct backup_result *out, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->message, sizeof out->message, fmt, ap);
    va_end(ap);
    return rc;
}

static int errno_rc(int e)
{
    return e == ENOSPC ? TALLY_ENOSPC : e == ENOENT ? TALLY_ENOENT : TALLY_EIO;
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

/* Writes all of buf; 0 or -1 (errno). */
static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads exactly n bytes at pos; returns bytes read (< n at end of file) or -1. */
static ssize_t read_at(int fd, void *buf, size_t n, uint64_t pos)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(pos + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Copies the first `limit` bytes of src (all when UINT64_MAX) into a new file dst, fsync'ed.
 * 0 or -1 (errno). *copied gets the bytes copied. */
static int copy_file(const char *src, const char *dst, uint64_t limit, uint64_t *copied)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return -1;
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
        int e = errno;
        close(in);
        errno = e;
        return -1;
    }
    char *buf = malloc(COPY_CHUNK_BYTES);
    uint64_t pos = 0;
    int rc = buf ? 0 : -1;
    while (rc == 0 && pos < limit) {
        size_t want = COPY_CHUNK_BYTES;
        if (limit - pos < want) want = (size_t)(limit - pos);
        ssize_t r = read_at(in, buf, want, pos);
        if (r < 0) rc = -1;
        if (r <= 0) break;
        if (write_all(out, buf, (size_t)r) != 0) rc = -1;
        pos += (uint64_t)r;
        if ((size_t)r < want) break;
    }
    int e = errno;
    free(buf);
    if (rc == 0 && fsync(out) != 0) rc = -1;
    if (rc != 0) e = errno;
    close(out);
    close(in);
    if (copied) *copied += pos;
    errno = e;
    return rc;
}

/* A hard link when src and dst share a file system, else a copy. 0 or -1 (errno). */
static int link_or_copy(const char *src, const char *dst, uint64_t *copied)
{
    if (link(src, dst) == 0) return 0;
    if (errno != EXDEV && errno != EPERM && errno != EMLINK) return -1;
    return copy_file(src, dst, UINT64_MAX, copied);
}

/* Byte length of the prefix of segment file `path` (first offset `base`) made of whole
 * batches that end at or before `end_offset`. 0 or a TALLY_E* code with out->message. */
static int segment_prefix_bytes(const char *path, uint64_t base, uint64_t end_offset,
                                uint64_t *bytes, struct backup_result *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(out, errno_rc(errno), "%s: %s", path, strerror(errno));
    uint64_t pos = 0, next = base;
    int rc = 0;
    while (next < end_offset) {
        uint8_t hdr[BATCH_HEADER_BYTES];
        struct batch_header h;
        ssize_t r = read_at(fd, hdr, sizeof hdr, pos);
        if (r != (ssize_t)sizeof hdr || batch_header_decode(hdr, sizeof hdr, &h) != 0 ||
            h.base_offset != next) {
            rc = fail(out, TALLY_ECORRUPT, "%s: no valid batch for offset %llu at byte %llu",
                      path, (unsigned long long)next, (unsigned long long)pos);
            break;
        }
        if (h.base_offset + h.record_count > end_offset) {
            rc = fail(out, TALLY_ECORRUPT, "%s: batch [%llu, %llu) straddles offset %llu", path,
                      (unsigned long long)h.base_offset,
                      (unsigned long long)(h.base_offset + h.record_count),
                      (unsigned long long)end_offset);
            break;
        }
        pos += batch_total_bytes(&h);
        next = h.base_offset + h.record_count;
    }
    close(fd);
    *bytes = pos;
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Segment bases in `dir`, sorted. Caller frees *bases. */
static int list_segments(const char *dir, uint64_t **bases, size_t *n, struct backup_result *out)
{
    *bases = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return fail(out, errno_rc(errno), "%s: %s", dir, strerror(errno));
    size_t cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t b;
        if (!segment_name_parse(de->d_name, &b)) continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            uint64_t *p = cap <= SEGMENTS_MAX ? realloc(*bases, cap * sizeof *p) : NULL;
            if (!p) {
                rc = fail(out, TALLY_ENOMEM, "too many log segments");
                break;
            }
            *bases = p;
        }
        (*bases)[(*n)++] = b;
    }
    closedir(d);
    if (rc == 0 && *n) qsort(*bases, *n, sizeof **bases, cmp_u64);
    return rc;
}

/* Copies the log's segments up to end_offset into dest_log. */
static int backup_log(const char *log_dir, const char *dest_log, uint64_t start,
                      uint64_t end_offset, struct backup_result *out)
{
    uint64_t *bases;
    size_t n;
    int rc = list_segments(log_dir, &bases, &n, out);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        uint64_t base = bases[i];
        bool whole = i + 1 < n && bases[i + 1] <= end_offset;
        if (base >= end_offset || (i + 1 < n && bases[i + 1] <= start)) continue;
        char src[PATH_MAX], dst[PATH_MAX];
        if (segment_path(src, sizeof src, log_dir, base, SEGMENT_SUFFIX) != 0 ||
            segment_path(dst, sizeof dst, dest_log, base, SEGMENT_SUFFIX) != 0) {
            rc = fail(out, TALLY_EINVAL, "path too long under %s", dest_log);
            break;
        }
        if (whole) {
            /* Closed and wholly before the snapshot: immutable, so a hard link will do. */
            if (link_or_copy(src, dst, &out->bytes) != 0) {
                rc = fail(out, errno_rc(errno), "%s -> %s: %s", src, dst, strerror(errno));
                break;
            }
            char isrc[PATH_MAX], idst[PATH_MAX];
            if (segment_path(isrc, sizeof isrc, log_dir, base, SEGMENT_INDEX_SUFFIX) == 0 &&
                segment_path(idst, sizeof idst, dest_log, base, SEGMENT_INDEX_SUFFIX) == 0)
                (void)link_or_copy(isrc, idst, &out->bytes); /* optional: rebuilt when absent */
        } else {
            uint64_t len = 0;
            rc = segment_prefix_bytes(src, base, end_offset, &len, out);
            if (rc == 0 && copy_file(src, dst, len, &out->bytes) != 0)
                rc = fail(out, errno_rc(errno), "%s -> %s: %s", src, dst, strerror(errno));
        }
        if (rc == 0) out->segments++;
    }
    free(bases);
    if (rc == 0 && fsync_path(dest_log) != 0)
        rc = fail(out, errno_rc(errno), "%s: %s", dest_log, strerror(errno));
    return rc;
}

/* The data directory's top-level regular files (salts, keys, ...), except the lock. */
static int backup_files(const char *data_dir, const char *dest, struct backup_result *out)
{
    DIR *d = opendir(data_dir);
    if (!d) return fail(out, errno_rc(errno), "%s: %s", data_dir, strerror(errno));
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "LOCK")) continue;
        char src[PATH_MAX], dst[PATH_MAX];
        struct stat st;
        snprintf(src, sizeof src, "%s/%s", data_dir, de->d_name);
        snprintf(dst, sizeof dst, "%s/%s", dest, de->d_name);
        if (lstat(src, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (copy_file(src, dst, UINT64_MAX, &out->bytes) != 0 && errno != ENOENT)
            rc = fail(out, errno_rc(errno), "%s: %s", src, strerror(errno));
    }
    closedir(d);
    return rc;
}

static int write_manifest(const char *dest, const struct backup_result *r,
                          struct backup_result *out)
{
    char when[40], path[PATH_MAX], tmp[PATH_MAX];
    time_t t = (time_t)(r->created_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "format", "tally-backup");
    cJSON_AddNumberToObject(m, "version", BACKUP_FORMAT_VERSION);
    cJSON_AddStringToObject(m, "tally_version", TALLY_VERSION);
    cJSON_AddNumberToObject(m, "created_ms", (double)r->created_ms);
    cJSON_AddStringToObject(m, "created", when);
    cJSON_AddNumberToObject(m, "log_start_offset", (double)r->log_start_offset);
    cJSON_AddNumberToObject(m, "log_end_offset", (double)r->log_end_offset);
    cJSON_AddNumberToObject(m, "segments", r->segments);
    cJSON_AddNumberToObject(m, "bytes", (double)r->bytes);
    char *text = cJSON_Print(m);
    cJSON_Delete(m);
    if (!text) return fail(out, TALLY_ENOMEM, "manifest: out of memory");
    snprintf(path, sizeof path, "%s/%s", dest, MANIFEST_NAME);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dest, MANIFEST_NAME);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = 0;
    if (fd < 0 || write_all(fd, text, strlen(text)) != 0 || write_all(fd, "\n", 1) != 0 ||
        fsync(fd) != 0)
        rc = fail(out, errno_rc(errno), "%s: %s", tmp, strerror(errno));
    if (fd >= 0) close(fd);
    free(text);
    if (rc == 0 && (rename(tmp, path) != 0 || fsync_path(dest) != 0))
        rc = fail(out, errno_rc(errno), "%s: %s", path, strerror(errno));
    return rc;
}

/* Creates dest, or accepts it when it is an empty directory. */
static int make_empty_dir(const char *dest, char *msg, size_t cap)
{
    if (mkdir(dest, 0700) == 0) return 0;
    if (errno != EEXIST) {
        snprintf(msg, cap, "cannot create %s: %s", dest, strerror(errno));
        return errno_rc(errno);
    }
    DIR *d = opendir(dest);
    if (!d) {
        snprintf(msg, cap, "%s exists and is not a directory", dest);
        return TALLY_EINVAL;
    }
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) rc = TALLY_EINVAL;
    closedir(d);
    if (rc) snprintf(msg, cap, "%s is not empty", dest);
    return rc;
}

int backup_run(struct store *s, struct seglog *log, const char *data_dir, const char *dest,
               struct backup_result *out)
{
    memset(out, 0, sizeof *out);
    int64_t t0 = timefmt_mono_ms();
    out->created_ms = timefmt_now_ms();
    if (dest[0] != '/') return fail(out, TALLY_EINVAL, "dir must be an absolute path");
    int rc = make_empty_dir(dest, out->message, sizeof out->message);
    if (rc) return rc;
    char path[PATH_MAX], log_dir[PATH_MAX], dest_log[PATH_MAX];
    snprintf(path, sizeof path, "%s/store", dest);
    snprintf(log_dir, sizeof log_dir, "%s/log", data_dir);
    snprintf(dest_log, sizeof dest_log, "%s/log", dest);
    /* 1. the store (its cursors are <= the committed offset read next) */
    rc = store_checkpoint(s, path);
    if (rc) return fail(out, rc, "store checkpoint into %s: %s", path, tally_strerror(rc));
    /* 2. the snapshot offset, 3. the log up to it (none with JetStream: log == NULL, the
     * events stay in the streams and the store's cursors say where this node was) */
    if (log) {
        out->log_start_offset = seglog_start_offset(log);
        out->log_end_offset = seglog_committed_offset(log);
        if (mkdir(dest_log, 0700) != 0)
            return fail(out, errno_rc(errno), "%s: %s", dest_log, strerror(errno));
        rc = backup_log(log_dir, dest_log, out->log_start_offset, out->log_end_offset, out);
    }
    if (rc == 0) rc = backup_files(data_dir, dest, out);
    out->elapsed_s = (double)(timefmt_mono_ms() - t0) / 1000.0;
    if (rc == 0) rc = write_manifest(dest, out, out);
    return rc;
}

/* ---------------------------------------------------------------- restore */

/* Copies directory src into dst (created) recursively: regular files and directories. */
static int copy_tree(const char *src, const char *dst, uint64_t *bytes, char *msg, size_t cap)
{
    if (mkdir(dst, 0700) != 0 && errno != EEXIST) {
        snprintf(msg, cap, "%s: %s", dst, strerror(errno));
        return 1;
    }
    DIR *d = opendir(src);
    if (!d) {
        snprintf(msg, cap, "%s: %s", src, strerror(errno));
        return 1;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            !strcmp(de->d_name, MANIFEST_NAME) || !strcmp(de->d_name, "LOCK"))
            continue;
        char s[PATH_MAX], t[PATH_MAX];
        snprintf(s, sizeof s, "%s/%s", src, de->d_name);
        snprintf(t, sizeof t, "%s/%s", dst, de->d_name);
        struct stat st;
        if (lstat(s, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            rc = copy_tree(s, t, bytes, msg, cap);
        } else if (S_ISREG(st.st_mode) && copy_file(s, t, UINT64_MAX, bytes) != 0) {
            snprintf(msg, cap, "%s -> %s: %s", s, t, strerror(errno));
            rc = 1;
        }
    }
    closedir(d);
    if (rc == 0) fsync_path(dst);
    return rc;
}

static cJSON *read_manifest(const char *src, char *msg, size_t cap)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", src, MANIFEST_NAME);
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(msg, cap, "%s: %s (an incomplete or not a Tally backup)", path,
                 strerror(errno));
        return NULL;
    }
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *m = cJSON_Parse(buf);
    const cJSON *fmt = cJSON_GetObjectItem(m, "format");
    const cJSON *ver = cJSON_GetObjectItem(m, "version");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "tally-backup") ||
        !cJSON_IsNumber(ver) || ver->valueint != BACKUP_FORMAT_VERSION ||
        !cJSON_IsNumber(cJSON_GetObjectItem(m, "log_end_offset"))) {
        snprintf(msg, cap, "%s: not a Tally backup manifest of version %d", path,
                 BACKUP_FORMAT_VERSION);
        cJSON_Delete(m);
        return NULL;
    }
    return m;
}

int backup_restore(const char *src, const char *data_dir)
{
    char msg[1024] = "";
    cJSON *m = read_manifest(src, msg, sizeof msg);
    if (!m) {
        fprintf(stderr, "tally: restore: %s\n", msg);
        return 1;
    }
    uint64_t end = (uint64_t)cJSON_GetObjectItem(m, "log_end_offset")->valuedouble;
    const cJSON *created = cJSON_GetObjectItem(m, "created");
    char created_s[64];
    snprintf(created_s, sizeof created_s, "%s",
             cJSON_IsString(created) ? created->valuestring : "?");
    cJSON_Delete(m);
    if (make_empty_dir(data_dir, msg, sizeof msg) != 0) {
        fprintf(stderr, "tally: restore: %s (restore only into an empty data directory)\n",
                msg);
        return 2;
    }
    uint64_t bytes = 0;
    if (copy_tree(src, data_dir, &bytes, msg, sizeof msg) != 0) {
        fprintf(stderr, "tally: restore: %s\n", msg);
        return 1;
    }
    fsync_path(data_dir);
    /* Check the restored log as the server will open it. */
    char log_dir[PATH_MAX];
    snprintf(log_dir, sizeof log_dir, "%s/log", data_dir);
    struct seglog_options o;
    seglog_options_default(&o);
    o.dir = log_dir;
    o.read_only = 1;
    struct seglog *log = NULL;
    struct seglog_open_report rep;
    memset(&rep, 0, sizeof rep);
    int rc = seglog_open(&o, &log, &rep);
    if (rc != 0 && !(rc == TALLY_ENOENT && end == 0)) {
        fprintf(stderr, "tally: restore: the restored log does not open: %s%s%s\n",
                tally_strerror(rc), rep.message[0] ? ": " : "", rep.message);
        return 1;
    }
    uint64_t got = log ? seglog_committed_offset(log) : 0;
    seglog_close(log);
    if (got != end) {
        fprintf(stderr, "tally: restore: the restored log ends at offset %llu, the manifest "
                        "says %llu\n", (unsigned long long)got, (unsigned long long)end);
        return 1;
    }
    printf("restored backup of %s into %s: log offsets up to %llu, %llu bytes\n", created_s,
           data_dir, (unsigned long long)end, (unsigned long long)bytes);
    return 0;
}

/* ---------------------------------------------------------------- the command */

/* Parses "http://HOST:PORT[/]" ("[v6]" hosts too). 0 or -1. */
static int parse_url(const char *url, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *p = url;
    if (!strncmp(p, "http://", 7)) p += 7;
    const char *hs = p, *he;
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (!he) return -1;
        p = he + 1;
    } else {
        he = p + strcspn(p, ":/");
        p = he;
    }
    if ((size_t)(he - hs) >= hcap || he == hs) return -1;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = 0;
    snprintf(port, pcap, "80");
    if (*p == ':') {
        size_t n = strcspn(p + 1, "/");
        if (n == 0 || n >= pcap) return -1;
        memcpy(port, p + 1, n);
        port[n] = 0;
    }
    return 0;
}

static int connect_to(const char *host, const char *port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) != 0) return -1;
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

int backup_cli(const char *dir, const char *url, const char *key)
{
    char abs[PATH_MAX], host[256], port[16];
    if (dir[0] == '/') {
        snprintf(abs, sizeof abs, "%s", dir);
    } else {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd)) {
            fprintf(stderr, "tally: backup: cannot read the current directory\n");
            return 1;
        }
        if ((size_t)snprintf(abs, sizeof abs, "%s/%s", cwd, dir) >= sizeof abs) {
            fprintf(stderr, "tally: backup: path too long\n");
            return 2;
        }
    }
    if (parse_url(url, host, sizeof host, port, sizeof port) != 0) {
        fprintf(stderr, "tally: backup: --url must be http://HOST:PORT: %s\n", url);
        return 2;
    }
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "dir", abs);
    char *body = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    if (!body) return 1;
    int fd = connect_to(host, port);
    if (fd < 0) {
        fprintf(stderr, "tally: backup: cannot connect to %s: is the server running?\n", url);
        free(body);
        return 1;
    }
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "POST /api/v1/admin/backup HTTP/1.1\r\nHost: %s:%s\r\n"
                      "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      host, port, key, strlen(body));
    int ok = hn > 0 && (size_t)hn < sizeof head && write_all(fd, head, (size_t)hn) == 0 &&
             write_all(fd, body, strlen(body)) == 0;
    free(body);
    char resp[16384];
    size_t n = 0;
    while (ok && n < sizeof resp - 1) {
        ssize_t r = read(fd, resp + n, sizeof resp - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t)r;
    }
    close(fd);
    resp[n] = 0;
    int status = 0;
    if (!ok || sscanf(resp, "HTTP/1.%*d %d", &status) != 1) {
        fprintf(stderr, "tally: backup: no answer from %s\n", url);
        return 1;
    }
    const char *rb = strstr(resp, "\r\n\r\n");
    rb = rb ? rb + 4 : "";
    if (status == 200) {
        printf("%s\n", rb);
        return 0;
    }
    fprintf(stderr, "tally: backup failed (HTTP %d): %s\n", status, rb);
    return status == 400 || status == 401 || status == 403 || status == 409 ? 2 : 1;
}
