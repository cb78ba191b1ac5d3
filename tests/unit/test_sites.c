#include "test.h"

#include "app/sites.h"
#include "tally/error.h"

TEST(configured_auto_and_hosts)
{
    char err[CONFIG_ERROR_BYTES_MAX];
    struct tally_config *cfg = config_new_defaults();
    ASSERT_EQ(config_load_string(cfg, "[site example.com]\nids = G-1\n[site b.org]\n"
                                      "hosts = shop.b.org\n", "t", err), 0);
    struct sites *s = sites_new(cfg);
    const struct site *a, *b;
    ASSERT_EQ(sites_resolve(s, "G-1", &a), 0);
    ASSERT_STREQ(a->name, "example.com");
    ASSERT_TRUE(sites_host_allowed(a, "example.com"));
    ASSERT_TRUE(sites_host_allowed(a, "WWW.Example.com"));
    ASSERT_TRUE(!sites_host_allowed(a, "badexample.com"));
    ASSERT_TRUE(!sites_host_allowed(a, "example.com.evil.net"));
    ASSERT_EQ(sites_resolve(s, "b.org", &b), 0);
    ASSERT_TRUE(sites_host_allowed(b, "shop.b.org"));
    ASSERT_TRUE(!sites_host_allowed(b, "b.org"));
    ASSERT_EQ(sites_resolve(s, "new.site", &a), 0);
    ASSERT_EQ(sites_resolve(s, "new.site", &b), 0);
    ASSERT_TRUE(a == b && a->config == NULL);
    ASSERT_EQ(sites_resolve(s, "Bad Name", &a), TALLY_EINVAL);
    ASSERT_EQ(sites_resolve(s, "", &a), TALLY_EINVAL);
    sites_free(s);
    cfg->auto_sites = false;
    s = sites_new(cfg);
    ASSERT_EQ(sites_resolve(s, "new.site", &a), TALLY_ENOENT);
    ASSERT_EQ(sites_resolve(s, "example.com", &a), 0);
    sites_free(s);
    config_free(cfg);
}

TEST(auto_sites_bounded)
{
    struct tally_config *cfg = config_new_defaults();
    struct sites *s = sites_new(cfg);
    const struct site *a;
    char name[64];
    for (int i = 0; i < SITES_AUTO_MAX; i++) {
        snprintf(name, sizeof name, "s%d.example", i);
        ASSERT_EQ(sites_resolve(s, name, &a), 0);
    }
    ASSERT_EQ(sites_resolve(s, "one-more.example", &a), TALLY_EFULL);
    ASSERT_EQ(sites_resolve(s, "s5.example", &a), 0);
    sites_free(s);
    config_free(cfg);
}

int main(void)
{
    RUN(configured_auto_and_hosts);
    RUN(auto_sites_bounded);
    return test_summary();
}
