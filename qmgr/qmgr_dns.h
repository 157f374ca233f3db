/* Asynchronous DNS for the queue manager: c-ares driven by a libevent
 * event_base.  Resolves a mail domain to the hosts and addresses to try (RFC
 * 5321 section 5.1, null MX per RFC 7505), or a KumoMTA mx_list.
 *
 * Callbacks are always called later from the event loop, never from within the
 * call that started the query, and never from inside c-ares, so a callback may
 * start new queries, cancel others or free the resolver. */
#ifndef KUMO_QMGR_DNS_H
#define KUMO_QMGR_DNS_H
#include <event2/event.h>
#include <stddef.h>
#include <sys/socket.h>

#define DNS_MAX_HOSTS 32      /* MX hosts (or mx_list entries) kept per result */
#define DNS_MAX_ADDRS 16      /* addresses kept per host and address family */

struct dns;                      /* a resolver bound to one event_base */

/* servers: NULL to use /etc/resolv.conf (c-ares default init), or a
 * comma-separated "ip[:port]" list (e.g. "127.0.0.1:5353", "[::1]:5353")
 * overriding it.  timeout_ms per try (0 = c-ares default), tries (0 =
 * default).  NULL + err on failure. */
struct dns *dns_new(struct event_base *base, const char *servers, int timeout_ms, int tries,
		    char *err, size_t errlen);
/* Cancels outstanding queries without calling their callbacks.  NULL ok. */
void dns_free(struct dns *d);

struct mx_host {
	char *name;                      /* owned: host name, or the IP text for a literal */
	int preference;                  /* MX preference; list order for mx_list */
	int port;                        /* 0: use the egress path's smtp_port */
	size_t n_addrs;
	struct sockaddr_storage *addrs;  /* owned: resolved addresses (port field 0) */
};

enum dns_status { DNS_OK = 0, DNS_TEMPFAIL = 1, DNS_PERMFAIL = 2 };

struct mx_result {
	enum dns_status status;
	char *error;                     /* owned: why, when status != DNS_OK */
	size_t n_hosts;
	struct mx_host *hosts;           /* owned: in the order to try */
};

/* NULL ok; frees r too. */
void mx_result_free(struct mx_result *r);

/* The callback owns res. */
typedef void (*dns_cb)(void *arg, struct mx_result *res);

struct dns_query;

/* Resolve a mail domain per RFC 5321 section 5.1: MX records sorted by
 * preference (equal preferences in random order, duplicate names merged, at
 * most DNS_MAX_HOSTS), then A and AAAA of each MX host (IPv4 first within a
 * host); hosts whose addresses do not resolve are dropped (if all are dropped:
 * TEMPFAIL if any lookup was a temporary failure, else PERMFAIL).
 * No MX record (NODATA) -> the domain itself is the implicit MX (preference 0).
 * NXDOMAIN -> PERMFAIL.  A null MX (RFC 7505) -> PERMFAIL "domain does not
 * accept mail (null MX)".  SERVFAIL/timeout/refused -> TEMPFAIL.
 * An IP literal "[1.2.3.4]" / "[IPv6:::1]" (also "[::1]") resolves without DNS.
 * Returns NULL only if d is NULL or cb is NULL. */
struct dns_query *dns_resolve_domain(struct dns *d, const char *domain, dns_cb cb, void *arg);

/* An mx_list entry from KumoMTA's make_queue_config protocol.smtp.mx_list: a
 * host name, a bare or bracketed IP ('127.0.0.1', '[10.0.0.1]', '[::1]',
 * '::1'), each optionally with ':port' ('mx.example.com:2525',
 * '127.0.0.1:2526', '[::1]:2526'; a bare IPv6 address takes no port), or the
 * table form {name=..., addr='ip[:port]'} (name: label only, addr used
 * without DNS). */
struct mx_entry {
	char *name;   /* the string form, or the table form's label (may be NULL then) */
	char *addr;   /* NULL for the string form */
};

/* Parses one string entry into host name/IP text (*host, malloc'd; an IP
 * without brackets or "IPv6:") + port (0 if none).  0, or -1 with err. */
int mx_entry_parse(const char *s, char **host, int *port, char *err, size_t errlen);

/* Resolve a whole mx_list in order (preference = index): literals without DNS,
 * names via A/AAAA (no MX lookup).  Same result/callback contract as
 * dns_resolve_domain; an entry that does not parse (or a table form whose addr
 * is not an IP) makes the whole result TEMPFAIL: it is a configuration error,
 * not the recipient's. */
struct dns_query *dns_resolve_list(struct dns *d, const struct mx_entry *list, size_t n,
				   dns_cb cb, void *arg);

/* The callback will not be called.  Only for a query whose callback has not
 * run yet; NULL ok. */
void dns_cancel(struct dns_query *q);

#endif
