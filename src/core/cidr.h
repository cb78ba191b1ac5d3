/*
 * cidr: IPv4/IPv6 network lists, for `trusted_proxies`.
 * A list is built once from the configuration and then read-only: any thread may match.
 */
#ifndef TALLY_CIDR_H
#define TALLY_CIDR_H

#include <stdint.h>
#include <sys/socket.h>

#define CIDR_LIST_MAX 256

struct cidr {
    uint8_t addr[16]; /* IPv4 stored as ::ffff:a.b.c.d */
    int prefix_bits;  /* over the 128-bit form */
};

struct cidr_list {
    int count;
    struct cidr items[CIDR_LIST_MAX];
};

/* Parses "10.0.0.0/8", "::1/128", "127.0.0.1" (a host). 0 or TALLY_EINVAL. */
int cidr_parse(const char *text, struct cidr *out);

/* Parses an IP address (v4 or v6) into the 16-byte form. 0 or TALLY_EINVAL. */
int cidr_parse_ip(const char *text, uint8_t out[16]);

/* Converts a sockaddr (AF_INET/AF_INET6) into the 16-byte form. 0 or TALLY_EINVAL. */
int cidr_from_sockaddr(const struct sockaddr *sa, uint8_t out[16]);

int cidr_match(const struct cidr *c, const uint8_t ip[16]);
int cidr_list_match(const struct cidr_list *l, const uint8_t ip[16]);

#endif
