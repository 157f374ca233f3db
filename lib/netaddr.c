/* netaddr: parse and print "ip:port" socket addresses.
 * Entry points: netaddr_parse, netaddr_format, netaddr_format_ip, and
 * netaddr_unix for Unix socket names. */
#include "lib/netaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int netaddr_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len,
		  char *err, size_t errlen)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon;
	memset(ss, 0, sizeof *ss);
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':') {
			snprintf(err, errlen, "'%s' is not of the form [ipv6]:port", s);
			return -1;
		}
		size_t hl = (size_t)(close - s - 1);
		if (hl == 0 || hl >= sizeof host) {
			snprintf(err, errlen, "'%s' has a bad IPv6 address", s);
			return -1;
		}
		memcpy(host, s + 1, hl);
		host[hl] = '\0';
		colon = close + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon || colon == s) {
			snprintf(err, errlen, "'%s' is not of the form ip:port", s);
			return -1;
		}
		size_t hl = (size_t)(colon - s);
		if (hl >= sizeof host) {
			snprintf(err, errlen, "'%s' has a bad address", s);
			return -1;
		}
		memcpy(host, s, hl);
		host[hl] = '\0';
		if (strchr(host, ':')) {
			snprintf(err, errlen, "'%s': IPv6 addresses need brackets, as in [::1]:25", s);
			return -1;
		}
	}
	char *end;
	const char *ps = colon + 1;
	if (*ps < '0' || *ps > '9') {
		snprintf(err, errlen, "'%s' has a bad port", s);
		return -1;
	}
	unsigned long port = strtoul(ps, &end, 10);
	if (*end != '\0' || port > 65535) {
		snprintf(err, errlen, "'%s' has a bad port", s);
		return -1;
	}
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (s[0] != '[' && inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		*len = sizeof *sin;
		return 0;
	}
	if (s[0] == '[' && inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		*len = sizeof *sin6;
		return 0;
	}
	snprintf(err, errlen, "'%s' does not hold an IP address", s);
	return -1;
}

socklen_t netaddr_unix(const char *name, struct sockaddr_un *sun)
{
	size_t n = strlen(name);
	memset(sun, 0, sizeof *sun);
	sun->sun_family = AF_UNIX;
	if (n == 0 || n >= sizeof sun->sun_path)
		return 0;
	if (name[0] == '@') {
		/* abstract: a leading NUL, and the length says where it ends */
		memcpy(sun->sun_path + 1, name + 1, n - 1);
		return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	}
	memcpy(sun->sun_path, name, n);
	return (socklen_t)sizeof *sun;
}

static int mapped_v4(const struct sockaddr_in6 *sin6, struct in_addr *out)
{
	if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
		return 0;
	memcpy(out, &sin6->sin6_addr.s6_addr[12], 4);
	return 1;
}

const char *netaddr_format_ip(const struct sockaddr *sa, char *buf, size_t buflen)
{
	char ip[INET6_ADDRSTRLEN];
	if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		struct in_addr v4;
		if (mapped_v4(sin6, &v4))
			inet_ntop(AF_INET, &v4, ip, sizeof ip);
		else
			inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
	} else {
		snprintf(ip, sizeof ip, "unknown");
	}
	snprintf(buf, buflen, "%s", ip);
	return buf;
}

const char *netaddr_format(const struct sockaddr *sa, char *buf, size_t buflen)
{
	char ip[INET6_ADDRSTRLEN];
	netaddr_format_ip(sa, ip, sizeof ip);
	if (sa->sa_family == AF_INET) {
		snprintf(buf, buflen, "%s:%u", ip, ntohs(((const struct sockaddr_in *)sa)->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		struct in_addr v4;
		if (mapped_v4(sin6, &v4))
			snprintf(buf, buflen, "%s:%u", ip, ntohs(sin6->sin6_port));
		else
			snprintf(buf, buflen, "[%s]:%u", ip, ntohs(sin6->sin6_port));
	} else {
		snprintf(buf, buflen, "%s", ip);
	}
	return buf;
}
