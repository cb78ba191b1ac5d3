#include "test.h"

#include "app/ratelimit.h"
#include "core/cidr.h"
#include "tally/error.h"

TEST(bucket_burst_then_rate)
{
    struct ratelimit *rl = ratelimit_new(10, 20);
    uint8_t a[16] = {1}, b[16] = {2};
    ASSERT_EQ(ratelimit_take(rl, a, 15, 1000), 0);
    ASSERT_EQ(ratelimit_take(rl, a, 5, 1000), 0);
    ASSERT_TRUE(ratelimit_take(rl, a, 1, 1000) >= 1); /* empty */
    ASSERT_EQ(ratelimit_take(rl, b, 20, 1000), 0);     /* other clients unaffected */
    ASSERT_EQ(ratelimit_take(rl, a, 10, 2000), 0);     /* 1 s refills 10 */
    ASSERT_TRUE(ratelimit_take(rl, a, 1, 2000) >= 1);
    ASSERT_EQ(ratelimit_take(rl, a, 21, 99999), -1);   /* can never fit */
    ASSERT_EQ(ratelimit_take(rl, a, 20, 99999), 0);    /* refill caps at burst */
    ASSERT_TRUE(ratelimit_take(rl, a, 1, 99999) >= 1);
    ratelimit_free(rl);
}

TEST(disabled_and_bounded)
{
    struct ratelimit *off = ratelimit_new(0, 1);
    uint8_t ip[16] = {0};
    for (int i = 0; i < 1000; i++) ASSERT_EQ(ratelimit_take(off, ip, 100, i), 0);
    ratelimit_free(off);
    struct ratelimit *rl = ratelimit_new(1, 1);
    for (uint32_t i = 0; i < 200000; i++) { /* more clients than slots: no growth, no crash */
        memcpy(ip, &i, 4);
        ASSERT_EQ(ratelimit_take(rl, ip, 1, 5), 0);
    }
    ratelimit_free(rl);
}

TEST(cidr_matching)
{
    struct cidr c;
    uint8_t ip[16];
    ASSERT_EQ(cidr_parse("10.0.0.0/8", &c), 0);
    ASSERT_EQ(cidr_parse_ip("10.1.2.3", ip), 0);
    ASSERT_TRUE(cidr_match(&c, ip));
    ASSERT_EQ(cidr_parse_ip("11.1.2.3", ip), 0);
    ASSERT_TRUE(!cidr_match(&c, ip));
    ASSERT_EQ(cidr_parse("127.0.0.1", &c), 0);
    ASSERT_EQ(cidr_parse_ip("127.0.0.1", ip), 0);
    ASSERT_TRUE(cidr_match(&c, ip));
    ASSERT_EQ(cidr_parse("fd00::/8", &c), 0);
    ASSERT_EQ(cidr_parse_ip("fd12::1", ip), 0);
    ASSERT_TRUE(cidr_match(&c, ip));
    ASSERT_EQ(cidr_parse("10.0.0.0/33", &c), TALLY_EINVAL);
    ASSERT_EQ(cidr_parse("nonsense/8", &c), TALLY_EINVAL);
    ASSERT_EQ(cidr_parse("10.0.0.0/x", &c), TALLY_EINVAL);
}

int main(void)
{
    RUN(bucket_burst_then_rate);
    RUN(disabled_and_bounded);
    RUN(cidr_matching);
    return test_summary();
}
