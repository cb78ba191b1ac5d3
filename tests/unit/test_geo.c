#include "test.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include "ingest/geo.h"
#include "tally/error.h"

/* The repository root: the working directory when run by tests/run.sh or make, else derived
 * from this binary's path (build/<variant>/tests/test_geo). */
static const char *repo_root(void)
{
    static char root[PATH_MAX];
    if (root[0]) return root;
    struct stat st;
    if (stat("tests/tools/mmdb_write.py", &st) == 0) {
        snprintf(root, sizeof root, ".");
        return root;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    for (int up = 0; up < 4; up++) {
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
    }
    snprintf(root, sizeof root, "%s", exe);
    return root;
}

static void path_in_root(char *out, size_t cap, const char *rel)
{
    snprintf(out, cap, "%s/%s", repo_root(), rel);
}

TEST(missing_file_is_a_clear_error)
{
    geo *g = (geo *)1;
    ASSERT_EQ(geo_open("/nonexistent/dir/GeoLite2-City.mmdb", &g), TALLY_ENOENT);
    ASSERT_TRUE(g == NULL);
    ASSERT_EQ(geo_open("", &g), TALLY_EINVAL);
    geo_close(NULL);
}

TEST(not_an_mmdb_is_corrupt)
{
    char path[512];
    snprintf(path, sizeof path, "%s/junk.mmdb", test_tmpdir());
    FILE *f = fopen(path, "wb");
    ASSERT_TRUE(f != NULL);
    fputs("this is not a MaxMind database, just some bytes\n", f);
    fclose(f);
    geo *g;
    ASSERT_EQ(geo_open(path, &g), TALLY_ECORRUPT);
}

TEST(real_country_database)
{
    char path[PATH_MAX];
    path_in_root(path, sizeof path, GEO_DEFAULT_PATH);
    geo *g;
    int rc = geo_open(path, &g);
    if (rc != TALLY_OK) TEST_FAIL_("%s: %s (run scripts/fetch_data.sh)", path, tally_strerror(rc));
    geo_info o;
    ASSERT_EQ(geo_lookup(g, "8.8.8.8", &o), TALLY_OK);
    ASSERT_STREQ(o.country, "US");
    ASSERT_STREQ(o.region, "");
    ASSERT_STREQ(o.city, "");
    ASSERT_EQ(geo_lookup(g, "1.1.1.1", &o), TALLY_OK);
    ASSERT_STREQ(o.country, "AU"); /* APNIC's research prefix, registered in Australia */
    ASSERT_EQ(geo_lookup(g, "193.0.6.139", &o), TALLY_OK); /* RIPE NCC, Amsterdam */
    ASSERT_STREQ(o.country, "NL");
    ASSERT_EQ(geo_lookup(g, "2001:4860:4860::8888", &o), TALLY_OK);
    ASSERT_STREQ(o.country, "US");
    ASSERT_EQ(geo_lookup(g, "::ffff:8.8.8.8", &o), TALLY_OK);
    ASSERT_STREQ(o.country, "US");
    ASSERT_EQ(geo_lookup(g, "10.1.2.3", &o), TALLY_OK); /* private: unknown, not an error */
    ASSERT_STREQ(o.country, "");
    ASSERT_EQ(geo_lookup(g, "not-an-ip", &o), TALLY_EINVAL);
    ASSERT_EQ(geo_lookup(g, "1.2.3", &o), TALLY_EINVAL);
    ASSERT_EQ(geo_lookup(g, "", &o), TALLY_EINVAL);
    ASSERT_EQ(geo_lookup(g, NULL, &o), TALLY_EINVAL);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "8.8.4.4", &sa.sin_addr);
    ASSERT_EQ(geo_lookup_sockaddr(g, (struct sockaddr *)&sa, &o), TALLY_OK);
    ASSERT_STREQ(o.country, "US");
    ASSERT_TRUE(strlen(geo_database_type(g)) > 0);
    geo_close(g);
}

TEST(city_layouts_from_generated_database)
{
    char tool[PATH_MAX], db[PATH_MAX], cmd[3 * PATH_MAX];
    path_in_root(tool, sizeof tool, "tests/tools/mmdb_write.py");
    snprintf(db, sizeof db, "%s/tiny.mmdb", test_tmpdir());
    snprintf(cmd, sizeof cmd, "python3 '%s' '%s'", tool, db);
    if (system(cmd) != 0) TEST_FAIL_("could not run %s", cmd);
    geo *g;
    ASSERT_EQ(geo_open(db, &g), TALLY_OK);
    ASSERT_STREQ(geo_database_type(g), "Tally-Test-City");
    geo_info o;
    /* MaxMind layout */
    ASSERT_EQ(geo_lookup(g, "8.8.8.8", &o), TALLY_OK);
    ASSERT_STREQ(o.country, "US");
    ASSERT_STREQ(o.region, "US-CA");
    ASSERT_STREQ(o.city, "Mountain View");
    ASSERT_EQ(geo_lookup(g, "81.2.69.142", &o), TALLY_OK);
    ASSERT_STREQ(o.region, "GB-ENG"); /* the first (largest) subdivision */
    ASSERT_STREQ(o.city, "London");
    ASSERT_EQ(geo_lookup(g, "[2001:db8::1]", &o), TALLY_OK); /* registered_country fallback */
    ASSERT_STREQ(o.country, "DE");
    /* ip-location-db layout */
    ASSERT_EQ(geo_lookup(g, "192.0.2.200", &o), TALLY_OK);
    ASSERT_STREQ(o.country, "FR");
    ASSERT_STREQ(o.region, "");
    ASSERT_STREQ(o.region_name, "\xc3\x8ele-de-France");
    ASSERT_STREQ(o.city, "Paris");
    ASSERT_EQ(geo_lookup(g, "198.51.100.7", &o), TALLY_OK); /* "ZZ" means unknown */
    ASSERT_STREQ(o.country, "");
    ASSERT_EQ(geo_lookup(g, "203.0.113.1", &o), TALLY_OK); /* long name: cut on a character */
    size_t n = strlen(o.city);
    ASSERT_TRUE(n < GEO_NAME_MAX && n % 2 == 0);
    ASSERT_EQ(geo_lookup(g, "9.9.9.9", &o), TALLY_OK);
    ASSERT_STREQ(o.country, "");
    geo_close(g);
}

int main(void)
{
    RUN(missing_file_is_a_clear_error);
    RUN(not_an_mmdb_is_corrupt);
    RUN(real_country_database);
    RUN(city_layouts_from_generated_database);
    return test_summary();
}
