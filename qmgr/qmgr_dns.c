/* qmgr_dns: asynchronous DNS for the queue manager.  c-ares does the protocol;
 * libevent drives it: c-ares reports the sockets it wants watched through
 * ARES_OPT_SOCK_STATE_CB (one persistent event per socket, read and/or write
 * as asked) and one timer follows ares_timeout(); both call ares_process_fd.
 *
 * Entry points: dns_new, dns_free, dns_resolve_domain (MX, then A and AAAA of
 * each host), dns_resolve_list (a KumoMTA mx_list: A and AAAA only),
 * mx_entry_parse, dns_cancel, mx_result_free.
 *
 * A query holds a count of outstanding c-ares lookups; when it reaches zero
 * the result is built and handed over from a zero-delay event, never from
 * inside c-ares or the starting call.  A cancelled query stays allocated
 * (callback cleared) until its lookups come back.  Failures are results, not
 * return codes: DNS_TEMPFAIL or DNS_PERMFAIL with a reason in error.  Only
 * dns_new and mx_entry_parse fill an error buffer.  Nothing here logs. */
#include "qmgr/qmgr_dns.h"

#include "lib/xalloc.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define DNS_MAX_NAME 253       /* a domain name in text, without the final dot */

struct dns_sock {
	ares_socket_t fd;
	int rd, wr;                  /* what c-ares asked to watch */
	struct event *ev;            /* owned */
	struct dns_sock *next;
};

struct dns {
	struct event_base *base;     /* not owned */
	ares_channel ch;             /* owned */
	struct event *timer;         /* owned: fires at ares_timeout() */
	struct dns_sock *socks;      /* owned: list of watched c-ares sockets */
	struct dns_query *queries;   /* owned: list of every query not yet delivered */
	bool closing;                /* in dns_free: lookups come back destroyed */
	uint64_t rng;                /* xorshift state for MX tie-breaks */
};

struct qhost {
	char *name;                       /* owned */
	int preference;
	int port;
	uint64_t shuffle;                 /* random order among equal preferences */
	size_t n4, n6;
	struct sockaddr_storage *a4;      /* owned: IPv4 addresses */
	struct sockaddr_storage *a6;      /* owned: IPv6 addresses */
};

struct dns_query {
	struct dns *d;                    /* not owned */
	struct dns_query *prev, *next;    /* in d->queries */
	dns_cb cb;
	void *arg;
	struct event *done_ev;            /* owned: delivers the result */
	unsigned pending;                 /* outstanding lookups, plus the starter's hold */
	bool cancelled;
	char *domain;                     /* owned: dns_resolve_domain's domain, else NULL */
	bool implicit;                    /* no MX: the domain is its own mail host */
	size_t n_hosts;
	struct qhost *hosts;              /* owned */
	enum dns_status final;            /* != DNS_OK: decided without addresses */
	char *error;                      /* owned: the reason for final */
	bool tempfail;                    /* an address lookup failed temporarily */
	char *temp_error;                 /* owned: the first such failure */
};

enum lookup_kind { LK_MX, LK_A, LK_AAAA };

/* the argument of one ares_query, freed by its callback */
struct lookup {
	struct dns_query *q;              /* not owned */
	enum lookup_kind kind;
	size_t host;                      /* index into q->hosts for LK_A/LK_AAAA */
};

static void setmsg(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void setmsg(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || errlen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	if (n < 0)
		err[0] = '\0';
}

/* ---- the libevent side of c-ares ----------------------------------------- */

static void dns_rearm(struct dns *d)
{
	struct timeval tv;
	struct timeval *tvp = ares_timeout(d->ch, NULL, &tv);
	if (tvp)
		evtimer_add(d->timer, tvp);
	else
		evtimer_del(d->timer);
}

static void sock_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns *d = arg;
	ares_process_fd(d->ch, (what & EV_READ) ? (ares_socket_t)fd : ARES_SOCKET_BAD,
			(what & EV_WRITE) ? (ares_socket_t)fd : ARES_SOCKET_BAD);
	dns_rearm(d);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct dns *d = arg;
	ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	dns_rearm(d);
}

static void sock_state_cb(void *data, ares_socket_t fd, int rd, int wr)
{
	struct dns *d = data;
	struct dns_sock **pp = &d->socks;
	while (*pp && (*pp)->fd != fd)
		pp = &(*pp)->next;
	struct dns_sock *s = *pp;
	rd = rd != 0;
	wr = wr != 0;
	if (!rd && !wr) {
		if (s) {
			*pp = s->next;
			if (s->ev)
				event_free(s->ev);
			free(s);
		}
		return;
	}
	if (!s) {
		s = xcalloc(1, sizeof *s);
		s->fd = fd;
		s->next = d->socks;
		d->socks = s;
	} else if (s->ev && s->rd == rd && s->wr == wr) {
		return;
	}
	if (s->ev) {
		event_free(s->ev);
		s->ev = NULL;
	}
	s->rd = rd;
	s->wr = wr;
	short what = EV_PERSIST | (rd ? EV_READ : 0) | (wr ? EV_WRITE : 0);
	s->ev = event_new(d->base, fd, what, sock_cb, d);
	if (!s->ev)
		abort();   /* out of memory, as xalloc would */
	if (event_add(s->ev, NULL) != 0) {
		/* not watched: the timer still ends the lookups on this socket */
		event_free(s->ev);
		s->ev = NULL;
	}
}

/* ---- queries ------------------------------------------------------------- */

static uint64_t rng_next(struct dns *d)
{
	uint64_t x = d->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	d->rng = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static void qhost_clear(struct qhost *h)
{
	free(h->name);
	free(h->a4);
	free(h->a6);
	memset(h, 0, sizeof *h);
}

static void query_destroy(struct dns_query *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		q->d->queries = q->next;
	if (q->next)
		q->next->prev = q->prev;
	event_free(q->done_ev);
	for (size_t i = 0; i < q->n_hosts; i++)
		qhost_clear(&q->hosts[i]);
	free(q->hosts);
	free(q->domain);
	free(q->error);
	free(q->temp_error);
	free(q);
}

static struct mx_result *query_result(struct dns_query *q)
{
	struct mx_result *r = xcalloc(1, sizeof *r);
	if (q->final != DNS_OK) {
		r->status = q->final;
		r->error = q->error;
		q->error = NULL;
		return r;
	}
	size_t n = 0;
	for (size_t i = 0; i < q->n_hosts; i++)
		if (q->hosts[i].n4 + q->hosts[i].n6 > 0)
			n++;
	if (n == 0) {
		if (q->tempfail) {
			r->status = DNS_TEMPFAIL;
			r->error = q->temp_error;
			q->temp_error = NULL;
		} else {
			r->status = DNS_PERMFAIL;
			if (q->implicit)
				r->error = xasprintf("no MX, A or AAAA records for %s", q->domain);
			else if (q->domain)
				r->error = xasprintf("no MX host of %s has an address", q->domain);
			else
				r->error = xstrdup("no mx_list host has an address");
		}
		return r;
	}
	r->status = DNS_OK;
	r->hosts = xcalloc(n, sizeof *r->hosts);
	for (size_t i = 0; i < q->n_hosts; i++) {
		struct qhost *h = &q->hosts[i];
		if (h->n4 + h->n6 == 0)
			continue;
		struct mx_host *m = &r->hosts[r->n_hosts++];
		m->name = h->name;
		h->name = NULL;
		m->preference = h->preference;
		m->port = h->port;
		m->n_addrs = h->n4 + h->n6;
		m->addrs = xcalloc(m->n_addrs, sizeof *m->addrs);
		if (h->n4)
			memcpy(m->addrs, h->a4, h->n4 * sizeof *m->addrs);
		if (h->n6)
			memcpy(m->addrs + h->n4, h->a6, h->n6 * sizeof *m->addrs);
	}
	return r;
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct dns_query *q = arg;
	struct mx_result *r = query_result(q);
	dns_cb cb = q->cb;
	void *cbarg = q->arg;
	query_destroy(q);
	cb(cbarg, r);
}

static struct dns_query *query_new(struct dns *d, dns_cb cb, void *arg)
{
	struct dns_query *q = xcalloc(1, sizeof *q);
	q->d = d;
	q->cb = cb;
	q->arg = arg;
	q->done_ev = event_new(d->base, -1, 0, done_cb, q);
	if (!q->done_ev)
		abort();   /* out of memory, as xalloc would */
	q->pending = 1;   /* the starter's hold, dropped by query_release */
	q->next = d->queries;
	if (d->queries)
		d->queries->prev = q;
	d->queries = q;
	return q;
}

/* Drops one hold; the last one schedules delivery (or frees a cancelled
 * query).  In dns_free, dns_free itself frees everything. */
static void query_release(struct dns_query *q)
{
	if (--q->pending > 0 || q->d->closing)
		return;
	if (q->cancelled)
		query_destroy(q);
	else
		event_active(q->done_ev, 0, 1);
}

static void query_fail(struct dns_query *q, enum dns_status st, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Decides the result without addresses; the first decision stands. */
static void query_fail(struct dns_query *q, enum dns_status st, const char *fmt, ...)
{
	if (q->final != DNS_OK)
		return;
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		buf[0] = '\0';
	q->final = st;
	q->error = xstrdup(buf);
}

static enum dns_status classify(int status)
{
	switch (status) {
	case ARES_ENODATA:
	case ARES_ENOTFOUND:
	case ARES_EBADNAME:
		return DNS_PERMFAIL;
	default:
		return DNS_TEMPFAIL;
	}
}

static const char *status_text(int status)
{
	switch (status) {
	case ARES_ENODATA:
		return "NODATA";
	case ARES_ENOTFOUND:
		return "NXDOMAIN";
	case ARES_ESERVFAIL:
		return "SERVFAIL";
	case ARES_EREFUSED:
		return "REFUSED";
	case ARES_ETIMEOUT:
		return "timeout";
	case ARES_ECONNREFUSED:
		/* c-ares 1.18 also says this when every server answered SERVFAIL
		 * or REFUSED (it moves on to the next server on those) */
		return "no usable answer (SERVFAIL, REFUSED or server unreachable)";
	default:
		return ares_strerror(status);
	}
}

static void lookup_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen);

static void lookup_start(struct dns_query *q, enum lookup_kind kind, size_t host, const char *name)
{
	struct lookup *lk = xmalloc(sizeof *lk);
	lk->q = q;
	lk->kind = kind;
	lk->host = host;
	int type = kind == LK_MX ? ns_t_mx : kind == LK_A ? ns_t_a : ns_t_aaaa;
	q->pending++;
	/* may call lookup_cb before returning (bad name, no servers) */
	ares_query(q->d->ch, name, ns_c_in, type, lookup_cb, lk);
}

static void host_lookups(struct dns_query *q, size_t i)
{
	lookup_start(q, LK_A, i, q->hosts[i].name);
	lookup_start(q, LK_AAAA, i, q->hosts[i].name);
}

static bool is_root(const char *name)
{
	return name[0] == '\0' || strcmp(name, ".") == 0;
}

/* case-insensitive, ignoring one final dot on either side */
static bool same_name(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la && a[la - 1] == '.')
		la--;
	if (lb && b[lb - 1] == '.')
		lb--;
	return la == lb && strncasecmp(a, b, la) == 0;
}

static int qhost_cmp(const void *pa, const void *pb)
{
	const struct qhost *a = pa, *b = pb;
	if (a->preference != b->preference)
		return a->preference < b->preference ? -1 : 1;
	if (a->shuffle != b->shuffle)
		return a->shuffle < b->shuffle ? -1 : 1;
	return 0;
}

static void mx_done(struct dns_query *q, int status, const unsigned char *abuf, int alen)
{
	struct ares_mx_reply *mx = NULL;
	if (status == ARES_SUCCESS)
		status = ares_parse_mx_reply(abuf, alen, &mx);
	if (status == ARES_ENODATA) {
		/* RFC 5321 5.1: no MX, the domain is the implicit MX */
		q->implicit = true;
		q->hosts = xcalloc(1, sizeof *q->hosts);
		q->n_hosts = 1;
		size_t len = strlen(q->domain);
		q->hosts[0].name = xstrndup(q->domain, len - (q->domain[len - 1] == '.'));
		host_lookups(q, 0);
		return;
	}
	if (status != ARES_SUCCESS) {
		if (status == ARES_ENOTFOUND)
			query_fail(q, DNS_PERMFAIL, "NXDOMAIN for %s", q->domain);
		else
			query_fail(q, classify(status), "%s looking up MX for %s",
				   status_text(status), q->domain);
		if (mx)
			ares_free_data(mx);
		return;
	}
	size_t n = 0, nulls = 0;
	for (struct ares_mx_reply *m = mx; m; m = m->next) {
		n++;
		if (is_root(m->host))
			nulls++;
	}
	if (n == 0 || nulls == n) {
		if (n == 0)
			query_fail(q, DNS_TEMPFAIL, "empty MX answer for %s", q->domain);
		else
			query_fail(q, DNS_PERMFAIL, "%s does not accept mail (null MX)", q->domain);
		ares_free_data(mx);
		return;
	}
	/* a null MX beside real ones (RFC 7505 says it must not be) is ignored */
	struct qhost *hosts = xcalloc(n, sizeof *hosts);
	size_t nh = 0;
	for (struct ares_mx_reply *m = mx; m; m = m->next) {
		if (is_root(m->host))
			continue;
		size_t j;
		for (j = 0; j < nh; j++)
			if (same_name(hosts[j].name, m->host))
				break;
		if (j < nh) {
			if (m->priority < hosts[j].preference)
				hosts[j].preference = m->priority;
			continue;
		}
		hosts[nh].name = xstrdup(m->host);
		hosts[nh].preference = m->priority;
		hosts[nh].shuffle = rng_next(q->d);
		nh++;
	}
	ares_free_data(mx);
	qsort(hosts, nh, sizeof *hosts, qhost_cmp);
	while (nh > DNS_MAX_HOSTS)
		qhost_clear(&hosts[--nh]);
	q->hosts = hosts;
	q->n_hosts = nh;
	for (size_t i = 0; i < nh; i++)
		host_lookups(q, i);
}

static void addr_done(struct dns_query *q, enum lookup_kind kind, size_t idx, int status,
		      const unsigned char *abuf, int alen)
{
	struct qhost *h = &q->hosts[idx];
	if (status == ARES_SUCCESS && kind == LK_A) {
		struct ares_addrttl t[DNS_MAX_ADDRS];
		int n = DNS_MAX_ADDRS;
		status = ares_parse_a_reply(abuf, alen, NULL, t, &n);
		if (status == ARES_SUCCESS && n > 0) {
			h->a4 = xcalloc((size_t)n, sizeof *h->a4);
			for (int i = 0; i < n; i++) {
				struct sockaddr_in *sin = (struct sockaddr_in *)&h->a4[i];
				sin->sin_family = AF_INET;
				sin->sin_addr = t[i].ipaddr;
			}
			h->n4 = (size_t)n;
		}
	} else if (status == ARES_SUCCESS) {
		struct ares_addr6ttl t[DNS_MAX_ADDRS];
		int n = DNS_MAX_ADDRS;
		status = ares_parse_aaaa_reply(abuf, alen, NULL, t, &n);
		if (status == ARES_SUCCESS && n > 0) {
			h->a6 = xcalloc((size_t)n, sizeof *h->a6);
			for (int i = 0; i < n; i++) {
				struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&h->a6[i];
				sin6->sin6_family = AF_INET6;
				memcpy(&sin6->sin6_addr, &t[i].ip6addr, sizeof sin6->sin6_addr);
			}
			h->n6 = (size_t)n;
		}
	}
	if (status == ARES_SUCCESS || classify(status) == DNS_PERMFAIL)
		return;
	q->tempfail = true;
	if (!q->temp_error)
		q->temp_error = xasprintf("%s looking up %s for %s", status_text(status),
					  kind == LK_A ? "A" : "AAAA", h->name);
}

static void lookup_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	(void)timeouts;
	struct lookup *lk = arg;
	struct dns_query *q = lk->q;
	enum lookup_kind kind = lk->kind;
	size_t host = lk->host;
	free(lk);
	if (q->d->closing)
		return;   /* ares_destroy in dns_free; dns_free frees q */
	if (!q->cancelled) {
		if (kind == LK_MX)
			mx_done(q, status, abuf, alen);
		else
			addr_done(q, kind, host, status, abuf, alen);
	}
	query_release(q);
}

/* ---- addresses and names ------------------------------------------------- */

/* an IPv4 or IPv6 address in s[0..len), no brackets */
static bool parse_ip(const char *s, size_t len, struct sockaddr_storage *ss)
{
	char buf[INET6_ADDRSTRLEN + 1];
	if (len == 0 || len >= sizeof buf)
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		return true;
	}
	return false;
}

/* a host name: LDH labels (underscore tolerated) of 1..63, one final dot allowed */
static bool valid_hostname(const char *s, size_t len)
{
	if (len && s[len - 1] == '.')
		len--;
	if (len == 0 || len > DNS_MAX_NAME)
		return false;
	size_t label = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0;
}

/* a mail domain as c-ares will be asked: labels of 1..63 bytes with no
 * blanks or controls (UTF-8 is left to the DNS), one final dot allowed */
static bool valid_domain(const char *s)
{
	size_t len = strlen(s);
	if (len && s[len - 1] == '.')
		len--;
	if (len == 0 || len > DNS_MAX_NAME)
		return false;
	size_t label = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (c <= ' ' || c == 0x7f || c == '\\')
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0;
}

int mx_entry_parse(const char *s, char **host, int *port, char *err, size_t errlen)
{
	*host = NULL;
	*port = 0;
	if (!s || !*s) {
		setmsg(err, errlen, "empty mx_list entry");
		return -1;
	}
	size_t len = strlen(s);
	if (len > DNS_MAX_NAME + 8) {
		setmsg(err, errlen, "mx_list entry too long");
		return -1;
	}
	const char *h = s, *rest;
	size_t hlen;
	struct sockaddr_storage ss;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close) {
			setmsg(err, errlen, "missing ']' in '%s'", s);
			return -1;
		}
		h = s + 1;
		hlen = (size_t)(close - h);
		if (hlen >= 5 && strncasecmp(h, "IPv6:", 5) == 0) {
			h += 5;
			hlen -= 5;
			if (!parse_ip(h, hlen, &ss) || ss.ss_family != AF_INET6) {
				setmsg(err, errlen, "bad IPv6 literal in '%s'", s);
				return -1;
			}
		} else if (!parse_ip(h, hlen, &ss)) {
			setmsg(err, errlen, "bad address literal in '%s'", s);
			return -1;
		}
		rest = close + 1;
		if (*rest && *rest != ':') {
			setmsg(err, errlen, "unexpected text after ']' in '%s'", s);
			return -1;
		}
	} else {
		const char *c1 = strchr(s, ':');
		if (c1 && strchr(c1 + 1, ':')) {
			/* two colons or more: a bare IPv6 address, which takes no port */
			if (!parse_ip(s, len, &ss) || ss.ss_family != AF_INET6) {
				setmsg(err, errlen, "bad IPv6 address '%s' (use [addr]:port for a port)", s);
				return -1;
			}
			*host = xstrdup(s);
			return 0;
		}
		hlen = c1 ? (size_t)(c1 - s) : len;
		rest = s + hlen;
		if (!parse_ip(h, hlen, &ss) && !valid_hostname(h, hlen)) {
			setmsg(err, errlen, "bad host name in '%s'", s);
			return -1;
		}
	}
	if (*rest == ':') {
		const char *p = rest + 1;
		long v = 0;
		if (!*p) {
			setmsg(err, errlen, "missing port in '%s'", s);
			return -1;
		}
		for (; *p; p++) {
			if (*p < '0' || *p > '9') {
				setmsg(err, errlen, "bad port in '%s'", s);
				return -1;
			}
			v = v * 10 + (*p - '0');
			if (v > 65535) {
				setmsg(err, errlen, "port out of range in '%s'", s);
				return -1;
			}
		}
		if (v == 0) {
			setmsg(err, errlen, "port out of range in '%s'", s);
			return -1;
		}
		*port = (int)v;
	}
	*host = xstrndup(h, hlen);
	return 0;
}

/* ---- entry points -------------------------------------------------------- */

struct dns *dns_new(struct event_base *base, const char *servers, int timeout_ms, int tries,
		    char *err, size_t errlen)
{
	static bool lib_ready;
	if (!base) {
		setmsg(err, errlen, "no event base");
		return NULL;
	}
	if (timeout_ms < 0 || tries < 0) {
		setmsg(err, errlen, "negative DNS timeout or tries");
		return NULL;
	}
	if (servers && !*servers) {
		setmsg(err, errlen, "empty DNS server list");
		return NULL;
	}
	if (!lib_ready) {
		int rc = ares_library_init(ARES_LIB_INIT_ALL);
		if (rc != ARES_SUCCESS) {
			setmsg(err, errlen, "c-ares init: %s", ares_strerror(rc));
			return NULL;
		}
		lib_ready = true;
	}
	struct dns *d = xcalloc(1, sizeof *d);
	d->base = base;
	struct ares_options o;
	memset(&o, 0, sizeof o);
	int mask = ARES_OPT_SOCK_STATE_CB;
	o.sock_state_cb = sock_state_cb;
	o.sock_state_cb_data = d;
	if (timeout_ms > 0) {
		o.timeout = timeout_ms;
		mask |= ARES_OPT_TIMEOUTMS;
	}
	if (tries > 0) {
		o.tries = tries;
		mask |= ARES_OPT_TRIES;
	}
	int rc = ares_init_options(&d->ch, &o, mask);
	if (rc != ARES_SUCCESS) {
		setmsg(err, errlen, "c-ares channel: %s", ares_strerror(rc));
		free(d);
		return NULL;
	}
	if (servers) {
		rc = ares_set_servers_ports_csv(d->ch, servers);
		if (rc != ARES_SUCCESS) {
			setmsg(err, errlen, "DNS servers '%.200s': %s", servers, ares_strerror(rc));
			ares_destroy(d->ch);
			free(d);
			return NULL;
		}
	}
	d->timer = evtimer_new(base, timer_cb, d);
	if (!d->timer)
		abort();   /* out of memory, as xalloc would */
	uint64_t seed = 0;
	if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed || seed == 0)
		seed = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)d;
	d->rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
	return d;
}

void dns_free(struct dns *d)
{
	if (!d)
		return;
	d->closing = true;
	/* calls every lookup back with ARES_EDESTRUCTION and closes the sockets */
	ares_destroy(d->ch);
	while (d->queries)
		query_destroy(d->queries);
	while (d->socks) {
		struct dns_sock *s = d->socks;
		d->socks = s->next;
		if (s->ev)
			event_free(s->ev);
		free(s);
	}
	event_free(d->timer);
	free(d);
}

void mx_result_free(struct mx_result *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n_hosts; i++) {
		free(r->hosts[i].name);
		free(r->hosts[i].addrs);
	}
	free(r->hosts);
	free(r->error);
	free(r);
}

/* "[1.2.3.4]", "[IPv6:::1]" (or "[::1]") as one host for q; else PERMFAIL */
static void domain_literal(struct dns_query *q, const char *domain)
{
	size_t len = strlen(domain);
	const char *h = domain + 1;
	size_t hlen = len >= 2 ? len - 2 : 0;
	struct sockaddr_storage ss;
	bool ok = len >= 2 && domain[len - 1] == ']';
	if (ok && hlen >= 5 && strncasecmp(h, "IPv6:", 5) == 0) {
		h += 5;
		hlen -= 5;
		ok = parse_ip(h, hlen, &ss) && ss.ss_family == AF_INET6;
	} else if (ok) {
		ok = parse_ip(h, hlen, &ss);
	}
	if (!ok) {
		query_fail(q, DNS_PERMFAIL, "unsupported address literal %s", domain);
		return;
	}
	q->hosts = xcalloc(1, sizeof *q->hosts);
	q->n_hosts = 1;
	struct qhost *qh = &q->hosts[0];
	qh->name = xstrndup(h, hlen);
	if (ss.ss_family == AF_INET) {
		qh->a4 = xmalloc(sizeof *qh->a4);
		qh->a4[0] = ss;
		qh->n4 = 1;
	} else {
		qh->a6 = xmalloc(sizeof *qh->a6);
		qh->a6[0] = ss;
		qh->n6 = 1;
	}
}

struct dns_query *dns_resolve_domain(struct dns *d, const char *domain, dns_cb cb, void *arg)
{
	if (!d || !cb)
		return NULL;
	struct dns_query *q = query_new(d, cb, arg);
	if (!domain)
		domain = "";
	/* bounded: anything longer is refused below, and messages stay short */
	q->domain = xstrndup(domain, DNS_MAX_NAME + 16);
	if (domain[0] == '[')
		domain_literal(q, q->domain);
	else if (strlen(domain) > DNS_MAX_NAME + 1 || !valid_domain(domain))
		query_fail(q, DNS_PERMFAIL, "invalid domain '%s'", q->domain);
	else
		lookup_start(q, LK_MX, 0, domain);
	query_release(q);
	dns_rearm(d);
	return q;
}

/* One mx_list entry into h; -1 with err for a configuration error. */
static int list_entry(const struct mx_entry *e, struct qhost *h, bool *literal,
		      char *err, size_t errlen)
{
	char *host = NULL;
	int port = 0;
	const char *text = e->addr ? e->addr : e->name;
	if (!text) {
		setmsg(err, errlen, "entry has neither name nor addr");
		return -1;
	}
	if (mx_entry_parse(text, &host, &port, err, errlen) != 0)
		return -1;
	struct sockaddr_storage ss;
	*literal = parse_ip(host, strlen(host), &ss);
	if (e->addr && !*literal) {
		setmsg(err, errlen, "addr '%.200s' is not an IP address", e->addr);
		free(host);
		return -1;
	}
	h->port = port;
	if (e->addr && e->name) {
		h->name = xstrdup(e->name);
		free(host);
	} else {
		h->name = host;
	}
	if (*literal && ss.ss_family == AF_INET) {
		h->a4 = xmalloc(sizeof *h->a4);
		h->a4[0] = ss;
		h->n4 = 1;
	} else if (*literal) {
		h->a6 = xmalloc(sizeof *h->a6);
		h->a6[0] = ss;
		h->n6 = 1;
	}
	return 0;
}

struct dns_query *dns_resolve_list(struct dns *d, const struct mx_entry *list, size_t n,
				   dns_cb cb, void *arg)
{
	if (!d || !cb)
		return NULL;
	struct dns_query *q = query_new(d, cb, arg);
	if (n == 0 || !list) {
		query_fail(q, DNS_TEMPFAIL, "empty mx_list");
		query_release(q);
		return q;
	}
	if (n > DNS_MAX_HOSTS)
		n = DNS_MAX_HOSTS;
	q->hosts = xcalloc(n, sizeof *q->hosts);
	q->n_hosts = n;
	bool need[DNS_MAX_HOSTS] = { false };
	for (size_t i = 0; i < n; i++) {
		char err[256];
		bool literal = false;
		if (list_entry(&list[i], &q->hosts[i], &literal, err, sizeof err) != 0) {
			query_fail(q, DNS_TEMPFAIL, "mx_list entry %zu: %s", i + 1, err);
			query_release(q);
			return q;
		}
		q->hosts[i].preference = (int)i;
		need[i] = !literal;
	}
	for (size_t i = 0; i < n; i++)
		if (need[i])
			host_lookups(q, i);
	query_release(q);
	dns_rearm(d);
	return q;
}

void dns_cancel(struct dns_query *q)
{
	if (!q || q->cancelled)
		return;
	q->cancelled = true;
	q->cb = NULL;
	if (q->pending == 0)
		query_destroy(q);   /* delivery was scheduled: event_free unschedules it */
}
