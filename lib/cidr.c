/* cidr: IP blocks as KumoMTA's cidr-map reads them.  "a.b.c.d/n" and
 * "x::y/n" must have their host bits clear; a bare address is a full-length
 * block.  A peer that arrives as an IPv4-mapped IPv6 address (::ffff:a.b.c.d,
 * as on a dual-stack socket) matches IPv4 blocks.
 * Entry points: cidr_parse, cidr_from_sockaddr, cidr_contains,
 * cidr_longest_match, cidr_format.
 * cidr_parse returns -1 with a reason ("bad address", "bad prefix length",
 * "prefix length out of range", "host bits set"); cidr_from_sockaddr returns
 * -1 for a family other than AF_INET/AF_INET6.  Nothing here logs. */
#include "lib/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static unsigned full_len(int family)
{
	return family == AF_INET ? 32 : 128;
}

/* true when the first `prefix` bits of a and b agree */
static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
	size_t whole = prefix / 8;
	unsigned rest = prefix % 8;
	if (memcmp(a, b, whole) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xFFu << (8 - rest));
	return (a[whole] & mask) == (b[whole] & mask);
}

static bool host_bits_clear(const uint8_t *addr, unsigned prefix, unsigned bits)
{
	for (unsigned i = prefix; i < bits; i++)
		if (addr[i / 8] & (0x80u >> (i % 8)))
			return false;
	return true;
}

int cidr_parse(const char *s, struct cidr *out, char *err, size_t errlen)
{
	char buf[INET6_ADDRSTRLEN];
	memset(out, 0, sizeof *out);
	if (!s || !*s) {
		snprintf(err, errlen, "bad address");
		return -1;
	}
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);
	if (alen == 0 || alen >= sizeof buf) {
		snprintf(err, errlen, "bad address");
		return -1;
	}
	memcpy(buf, s, alen);
	buf[alen] = '\0';
	if (inet_pton(AF_INET, buf, out->addr) == 1) {
		out->family = AF_INET;
	} else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
		out->family = AF_INET6;
	} else {
		snprintf(err, errlen, "bad address");
		return -1;
	}
	unsigned bits = full_len(out->family);
	out->prefix = bits;
	if (!slash)
		return 0;
	const char *p = slash + 1;
	size_t digits = strspn(p, "0123456789");
	if (digits == 0 || p[digits] != '\0' || digits > 3) {
		snprintf(err, errlen, "bad prefix length");
		return -1;
	}
	unsigned prefix = 0;
	for (size_t i = 0; i < digits; i++)
		prefix = prefix * 10 + (unsigned)(p[i] - '0');
	if (prefix > bits) {
		snprintf(err, errlen, "prefix length out of range");
		return -1;
	}
	if (!host_bits_clear(out->addr, prefix, bits)) {
		snprintf(err, errlen, "host bits set");
		return -1;
	}
	out->prefix = prefix;
	return 0;
}

int cidr_from_sockaddr(const struct sockaddr *sa, struct cidr *out)
{
	memset(out, 0, sizeof *out);
	if (!sa)
		return -1;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		out->family = AF_INET;
		memcpy(out->addr, &sin->sin_addr, 4);
		out->prefix = 32;
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		out->family = AF_INET6;
		memcpy(out->addr, &sin6->sin6_addr, 16);
		out->prefix = 128;
		return 0;
	}
	return -1;
}

static bool is_v4_mapped(const uint8_t *a)
{
	static const uint8_t pfx[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF };
	return memcmp(a, pfx, sizeof pfx) == 0;
}

bool cidr_contains(const struct cidr *block, const struct cidr *addr)
{
	if (!block || !addr)
		return false;
	if (block->family == addr->family) {
		if (block->prefix > full_len(block->family))
			return false;
		return prefix_equal(block->addr, addr->addr, block->prefix);
	}
	if (block->family == AF_INET && addr->family == AF_INET6 && is_v4_mapped(addr->addr)) {
		if (block->prefix > 32)
			return false;
		return prefix_equal(block->addr, addr->addr + 12, block->prefix);
	}
	return false;
}

int cidr_longest_match(const struct cidr *list, size_t n, const struct cidr *addr)
{
	int best = -1;
	for (size_t i = 0; i < n && i < (size_t)0x7fffffff; i++)
		if (cidr_contains(&list[i], addr) && (best < 0 || list[i].prefix > list[best].prefix))
			best = (int)i;
	return best;
}

const char *cidr_format(const struct cidr *c, char *buf, size_t buflen)
{
	char ip[INET6_ADDRSTRLEN];
	if (buflen == 0)
		return "";
	if (!c || (c->family != AF_INET && c->family != AF_INET6) ||
	    !inet_ntop(c->family, c->addr, ip, sizeof ip)) {
		snprintf(buf, buflen, "?");
		return buf;
	}
	int n;
	if (c->prefix >= full_len(c->family))
		n = snprintf(buf, buflen, "%s", ip);
	else
		n = snprintf(buf, buflen, "%s/%u", ip, c->prefix);
	if (n < 0 || (size_t)n >= buflen)
		buf[0] = '\0';
	return buf;
}
