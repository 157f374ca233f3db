/* Socket addresses as KumoMTA prints and parses them: "1.2.3.4:25",
 * "[::1]:25" (Rust SocketAddr syntax). */
#ifndef KUMO_NETADDR_H
#define KUMO_NETADDR_H
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#define NETADDR_STRLEN 64

/* Parses "ip:port" / "[ipv6]:port".  0, or -1 with a reason. */
int netaddr_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len,
		  char *err, size_t errlen);
/* "ip:port" or "[ipv6]:port"; IPv4-mapped IPv6 printed as IPv4. */
const char *netaddr_format(const struct sockaddr *sa, char *buf, size_t buflen);
/* A Unix socket address for name: a path, or "@name" in the abstract
 * namespace.  Returns the address length, or 0 if the name is too long. */
socklen_t netaddr_unix(const char *name, struct sockaddr_un *sun);

/* The bare IP, no port or brackets. */
const char *netaddr_format_ip(const struct sockaddr *sa, char *buf, size_t buflen);

#endif
