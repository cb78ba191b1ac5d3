#include "core/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "tally/error.h"

int cidr_parse_ip(const char *text, uint8_t out[16])
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, text, &a4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &a4, 4);
        return 0;
    }
    if (inet_pton(AF_INET6, text, &a6) == 1) {
        memcpy(out, &a6, 16);
        return 0;
    }
    return TALLY_EINVAL;
}

int cidr_from_sockaddr(const struct sockaddr *sa, uint8_t out[16])
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &s4->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return 0;
    }
    return TALLY_EINVAL;
}

int cidr_parse(const char *text, struct cidr *out)
{
    char buf[64];
    size_t n = strlen(text);
    if (n >= sizeof buf) return TALLY_EINVAL;
    memcpy(buf, text, n + 1);
    char *slash = strchr(buf, '/');
    int bits = -1;
    if (slash) {
        *slash = 0;
        char *end;
        long b = strtol(slash + 1, &end, 10);
        if (end == slash + 1 || *end || b < 0) return TALLY_EINVAL;
        bits = (int)b;
    }
    if (cidr_parse_ip(buf, out->addr) != 0) return TALLY_EINVAL;
    int is_v4 = strchr(buf, ':') == NULL;
    if (bits < 0) bits = is_v4 ? 32 : 128;
    if (bits > (is_v4 ? 32 : 128)) return TALLY_EINVAL;
    out->prefix_bits = is_v4 ? bits + 96 : bits;
    return 0;
}

int cidr_match(const struct cidr *c, const uint8_t ip[16])
{
    int full = c->prefix_bits / 8, rest = c->prefix_bits % 8;
    if (memcmp(c->addr, ip, (size_t)full) != 0) return 0;
    if (rest == 0) return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (c->addr[full] & mask) == (ip[full] & mask);
}

int cidr_list_match(const struct cidr_list *l, const uint8_t ip[16])
{
    for (int i = 0; i < l->count; i++)
        if (cidr_match(&l->items[i], ip)) return 1;
    return 0;
}
