/* CIDR blocks and IP addresses, strict like KumoMTA's cidr-map: the host
 * bits of "a.b.c.d/n" must be zero ("10.0.0.1/24" is an error), a bare
 * address is a /32 or /128.  IPv4-mapped IPv6 peers (::ffff:a.b.c.d) match
 * IPv4 blocks. */
#ifndef KUMO_CIDR_H
#define KUMO_CIDR_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
	int family;        /* AF_INET or AF_INET6 */
	uint8_t addr[16];  /* network bytes; 4 used for AF_INET */
	unsigned prefix;   /* 0..32 or 0..128 */
};

/* 0 on success; -1 with a reason ("host bits set", "bad address", ...). */
int cidr_parse(const char *s, struct cidr *out, char *err, size_t errlen);

/* Fills an address as a full-length block from a socket address. 0 / -1. */
int cidr_from_sockaddr(const struct sockaddr *sa, struct cidr *out);

/* true when the address (a full-length cidr from cidr_from_sockaddr or a
 * parsed bare IP) lies within block. */
bool cidr_contains(const struct cidr *block, const struct cidr *addr);

/* Index of the longest-prefix block of list[0..n) containing addr, or -1. */
int cidr_longest_match(const struct cidr *list, size_t n, const struct cidr *addr);

/* Formats a block as "a.b.c.d/n" or "x::y/n" (no "/n" for full length). */
const char *cidr_format(const struct cidr *c, char *buf, size_t buflen);

#endif
