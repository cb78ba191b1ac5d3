/*
 * geo: libmaxminddb wrapper. See geo.h for the contract.
 *
 * The MMDB_s is opened with MMDB_MODE_MMAP and never written after geo_open, which is what
 * makes concurrent lookups safe (libmaxminddb only reads the mapping). Addresses are parsed
 * with inet_pton (no resolver involved); an IPv4-mapped IPv6 address is looked up as IPv4,
 * because not every database aliases ::ffff:0:0/96 to its IPv4 tree.
 */
#include "ingest/geo.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <maxminddb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/diag.h"
#include "tally/error.h"

struct geo {
    MMDB_s db;
};

int geo_open(const char *path, geo **out)
{
    *out = NULL;
    if (!path || !path[0]) return TALLY_EINVAL;
    struct stat st;
    if (stat(path, &st) != 0) {
        int err = errno;
        diag_error("geo: cannot open database %s: %s", path, strerror(err));
        return err == ENOENT || err == ENOTDIR ? TALLY_ENOENT : tally_err_from_errno(err);
    }
    geo *g = calloc(1, sizeof *g);
    if (!g) return TALLY_ENOMEM;
    int rc = MMDB_open(path, MMDB_MODE_MMAP, &g->db);
    if (rc != MMDB_SUCCESS) {
        diag_error("geo: %s is not a usable MaxMind DB: %s", path, MMDB_strerror(rc));
        free(g);
        if (rc == MMDB_OUT_OF_MEMORY_ERROR) return TALLY_ENOMEM;
        if (rc == MMDB_IO_ERROR) return TALLY_EIO;
        return TALLY_ECORRUPT;
    }
    *out = g;
    return TALLY_OK;
}

void geo_close(geo *g)
{
    if (!g) return;
    MMDB_close(&g->db);
    free(g);
}

const char *geo_database_type(const geo *g)
{
    return g && g->db.metadata.database_type ? g->db.metadata.database_type : "";
}

/* Copies a UTF-8 string value at the given path into dst; returns false if absent. */
static bool get_string(MMDB_entry_s *e, char *dst, size_t cap, const char *const *path)
{
    MMDB_entry_data_s d;
    dst[0] = 0;
    if (MMDB_aget_value(e, &d, path) != MMDB_SUCCESS || !d.has_data ||
        d.type != MMDB_DATA_TYPE_UTF8_STRING)
        return false;
    size_t n = d.data_size;
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)d.utf8_string[n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)d.utf8_string[i];
        dst[i] = c < 0x20 || c == 0x7F ? ' ' : (char)c;
    }
    dst[n] = 0;
    return n > 0;
}

static void set_country(char dst[3], const char *src)
{
    dst[0] = 0;
    if (strlen(src) != 2 || !isalpha((unsigned char)src[0]) || !isalpha((unsigned char)src[1]))
        return;
    dst[0] = (char)toupper((unsigned char)src[0]);
    dst[1] = (char)toupper((unsigned char)src[1]);
    dst[2] = 0;
    if (strcmp(dst, "ZZ") == 0) dst[0] = 0; /* "unknown" in several databases */
}

static void fill(MMDB_entry_s *e, geo_info *out)
{
    static const char *const p_country[] = {"country", "iso_code", NULL};
    static const char *const p_reg_country[] = {"registered_country", "iso_code", NULL};
    static const char *const p_country_code[] = {"country_code", NULL};
    static const char *const p_subdiv[] = {"subdivisions", "0", "iso_code", NULL};
    static const char *const p_city[] = {"city", "names", "en", NULL};
    static const char *const p_city_plain[] = {"city", NULL};
    static const char *const p_state1[] = {"state1", NULL};
    char tmp[GEO_NAME_MAX];

    if (get_string(e, tmp, sizeof tmp, p_country) ||
        get_string(e, tmp, sizeof tmp, p_reg_country) ||
        get_string(e, tmp, sizeof tmp, p_country_code))
        set_country(out->country, tmp);
    if (out->country[0] && get_string(e, tmp, sizeof tmp, p_subdiv)) {
        size_t n = strlen(tmp); /* ISO 3166-2 subdivision codes are 1-3 characters */
        if (n <= 3) {
            memcpy(out->region, out->country, 2);
            out->region[2] = '-';
            memcpy(out->region + 3, tmp, n + 1);
        }
    }
    get_string(e, out->region_name, sizeof out->region_name, p_state1);
    if (!get_string(e, out->city, sizeof out->city, p_city))
        get_string(e, out->city, sizeof out->city, p_city_plain);
}

int geo_lookup_sockaddr(const geo *g, const struct sockaddr *sa, geo_info *out)
{
    memset(out, 0, sizeof *out);
    if (!g || !sa) return TALLY_EINVAL;
    struct sockaddr_in v4;
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            memset(&v4, 0, sizeof v4);
            v4.sin_family = AF_INET;
            memcpy(&v4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
            sa = (const struct sockaddr *)&v4;
        }
    } else if (sa->sa_family != AF_INET) {
        return TALLY_EINVAL;
    }
    int mmdb_err = MMDB_SUCCESS;
    /* MMDB_lookup_sockaddr takes a non-const MMDB_s but does not modify it. */
    MMDB_lookup_result_s r = MMDB_lookup_sockaddr((MMDB_s *)&g->db, sa, &mmdb_err);
    if (mmdb_err == MMDB_IPV6_LOOKUP_IN_IPV4_DATABASE_ERROR) return TALLY_OK;
    if (mmdb_err != MMDB_SUCCESS) return TALLY_ECORRUPT;
    if (r.found_entry) fill(&r.entry, out);
    return TALLY_OK;
}

int geo_lookup(const geo *g, const char *ip, geo_info *out)
{
    memset(out, 0, sizeof *out);
    if (!g || !ip) return TALLY_EINVAL;
    char buf[INET6_ADDRSTRLEN + 8];
    size_t n = strnlen(ip, sizeof buf);
    if (n == 0 || n >= sizeof buf) return TALLY_EINVAL;
    memcpy(buf, ip, n + 1);
    if (buf[0] == '[' && buf[n - 1] == ']') { /* "[2001:db8::1]" as in URLs */
        memmove(buf, buf + 1, n - 2);
        buf[n - 2] = 0;
    }
    struct sockaddr_in s4;
    struct sockaddr_in6 s6;
    memset(&s4, 0, sizeof s4);
    memset(&s6, 0, sizeof s6);
    if (inet_pton(AF_INET, buf, &s4.sin_addr) == 1) {
        s4.sin_family = AF_INET;
        return geo_lookup_sockaddr(g, (const struct sockaddr *)&s4, out);
    }
    if (inet_pton(AF_INET6, buf, &s6.sin6_addr) == 1) {
        s6.sin6_family = AF_INET6;
        return geo_lookup_sockaddr(g, (const struct sockaddr *)&s6, out);
    }
    return TALLY_EINVAL;
}
