/*
 * geo: IP address -> country, region, city, from a MaxMind DB (MMDB) file.
 *
 * Works with MaxMind's layout (GeoLite2/GeoIP2 Country and City: country.iso_code, falling back
 * to registered_country.iso_code; subdivisions[0].iso_code; city.names.en) and with
 * ip-location-db's layout (country_code; state1 as a region name; city), which is what
 * scripts/fetch_data.sh fetches (third_party/data/geo-whois-asn-country.mmdb, country only).
 * The database is a file the configuration points to, not embedded. No raw IP is kept.
 */
#ifndef TALLY_INGEST_GEO_H
#define TALLY_INGEST_GEO_H

#include <sys/socket.h>

#define GEO_DEFAULT_PATH "third_party/data/geo-whois-asn-country.mmdb"
#define GEO_REGION_MAX 16 /* "US-CA": ISO 3166-2 */
#define GEO_NAME_MAX 96   /* region and city names, UTF-8, truncated on a character */

typedef struct geo geo;

/* Plain value; "" where the database has nothing. */
typedef struct geo_info {
    char country[3];                /* ISO 3166-1 alpha-2, upper case: "US" */
    char region[GEO_REGION_MAX];    /* ISO 3166-2 "CC-RR" (MaxMind city databases only) */
    char region_name[GEO_NAME_MAX]; /* "California" (ip-location-db city databases only) */
    char city[GEO_NAME_MAX];        /* English name */
} geo_info;

/*
 * Opens (memory-maps) the database at path. On success *out is a handle the caller owns
 * (geo_close). Errors: TALLY_ENOENT (no such file), TALLY_ECORRUPT (not a valid MMDB, or it has
 * neither a country field nor a city field), TALLY_EIO, TALLY_ENOMEM; a message naming the file
 * and the reason is written to diag. Any thread.
 */
int geo_open(const char *path, geo **out);

/* Unmaps and frees; NULL is a no-op. No lookup may be running on it. */
void geo_close(geo *g);

/*
 * Looks up a textual IPv4 or IPv6 address ("8.8.8.8", "2001:db8::1", "::ffff:1.2.3.4") and
 * fills *out (caller-owned). An address the database does not know (private ranges, say)
 * gives an all-empty *out and TALLY_OK. Returns TALLY_EINVAL if ip is not an address,
 * TALLY_ECORRUPT if the database is damaged at that entry. Any thread, concurrently: the
 * handle is read-only after geo_open.
 */
int geo_lookup(const geo *g, const char *ip, geo_info *out);

/* As geo_lookup, for a socket address (AF_INET or AF_INET6; v4-mapped v6 is looked up as v4). */
int geo_lookup_sockaddr(const geo *g, const struct sockaddr *sa, geo_info *out);

/* The database's metadata type ("GeoLite2-City", "geo-whois-asn-country", ...). Owned by g. */
const char *geo_database_type(const geo *g);

#endif
