/* dnsd: a tiny authoritative DNS server for the tests.
 *
 *   dnsd -p PORT -z ZONEFILE
 *
 * Binds 127.0.0.1:PORT over UDP and TCP, prints "ready" (with -p 0, which
 * picks a free port: "ready PORT") on stdout once bound, and answers until
 * SIGTERM or SIGINT.  Zone file lines, '#' starts a comment:
 *
 *   name A 192.0.2.1
 *   name AAAA 2001:db8::1
 *   name MX 10 mx1.example.test      ("0 ." is a null MX)
 *   name SERVFAIL                    always SERVFAIL for the name
 *   name REFUSED                     always REFUSED
 *   name DROP                        never answer (for timeouts)
 *   name DELAY ms                    answer after ms milliseconds
 *
 * Names are case-insensitive, a trailing dot optional.  A name with lines but
 * none of the asked type gets NOERROR with no answers (NODATA); an unknown
 * name gets NXDOMAIN.  Queries are parsed with every length checked; one that
 * does not parse gets FORMERR (or nothing, when too short for an id).  A UDP
 * answer over 512 bytes is sent as an empty answer with TC set, so a resolver
 * retries over TCP.  Bad usage or a bad zone: a message on stderr, exit 2. */
#include "lib/xalloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define T_A 1
#define T_MX 15
#define T_AAAA 28
#define T_ANY 255
#define C_IN 1
#define RC_FORMERR 1
#define RC_SERVFAIL 2
#define RC_NXDOMAIN 3
#define RC_NOTIMP 4
#define RC_REFUSED 5
#define UDP_MAX 512
#define MSG_MAX 65535
#define MAX_NAMES 4096
#define MAX_RRS 64            /* per name */
#define MAX_DELAY_MS 600000
#define TCP_MAX_CONNS 64

struct rr {
	int type;
	size_t len;
	uint8_t data[258];        /* rdata in wire form: MX is 2 + a name of at most 256 */
};

struct zname {
	char name[256];           /* lower case, no final dot; "" is the root */
	bool servfail, refused, drop;
	int delay_ms;
	size_t n_rrs;
	struct rr *rrs;           /* owned */
};

static struct zname *zone;    /* owned */
static size_t n_zone;

struct conn {
	struct bufferevent *bev;  /* owned; NULL once closed */
	int refs;                 /* the connection itself + delayed replies */
	struct conn *prev, *next; /* in conns, until freed */
};

struct delayed {
	struct event *ev;         /* owned: the delay */
	struct delayed *prev, *next;  /* in jobs */
	uint8_t *msg;             /* owned */
	size_t len;
	int ufd;                  /* UDP: reply from this socket to peer */
	struct sockaddr_storage peer;
	socklen_t peerlen;
	struct conn *conn;        /* TCP: reply on this connection (a reference) */
};

static struct event_base *base;
static struct conn *conns;    /* owned: open connections (and closed ones still referenced) */
static struct delayed *jobs;  /* owned: replies waiting for their delay */
static int n_conns;

/* ---- zone ---------------------------------------------------------------- */

/* lower case, final dot dropped; false if too long */
static bool norm_name(const char *in, char *out, size_t outlen)
{
	size_t len = strlen(in);
	if (len > 0 && in[len - 1] == '.')
		len--;
	if (len >= outlen || len > 253)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
	}
	out[len] = '\0';
	return true;
}

/* text name -> wire labels; returns the length or 0 on a bad name */
static size_t encode_name(const char *name, uint8_t *out, size_t outlen)
{
	char n[256];
	if (!norm_name(name, n, sizeof n))
		return 0;
	size_t pos = 0;
	const char *p = n;
	while (*p) {
		const char *dot = strchr(p, '.');
		size_t l = dot ? (size_t)(dot - p) : strlen(p);
		if (l == 0 || l > 63 || pos + 1 + l + 1 > outlen)
			return 0;
		out[pos++] = (uint8_t)l;
		memcpy(out + pos, p, l);
		pos += l;
		p += l;
		if (*p == '.')
			p++;
	}
	if (pos + 1 > outlen)
		return 0;
	out[pos++] = 0;
	return pos;
}

static struct zname *zone_find(const char *name)
{
	for (size_t i = 0; i < n_zone; i++)
		if (strcmp(zone[i].name, name) == 0)
			return &zone[i];
	return NULL;
}

static void die_zone(const char *file, int line, const char *why)
{
	fprintf(stderr, "dnsd: %s:%d: %s\n", file, line, why);
	exit(2);
}

static void zone_load(const char *file)
{
	FILE *f = fopen(file, "r");
	if (!f) {
		fprintf(stderr, "dnsd: %s: %s\n", file, strerror(errno));
		exit(2);
	}
	char line[1024];
	int lineno = 0;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		size_t ll = strlen(line);
		if (ll == sizeof line - 1 && line[ll - 1] != '\n')
			die_zone(file, lineno, "line too long");
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char *save = NULL;
		char *name = strtok_r(line, " \t\r\n", &save);
		if (!name)
			continue;
		char *type = strtok_r(NULL, " \t\r\n", &save);
		char *v1 = strtok_r(NULL, " \t\r\n", &save);
		char *v2 = strtok_r(NULL, " \t\r\n", &save);
		char *extra = strtok_r(NULL, " \t\r\n", &save);
		if (!type)
			die_zone(file, lineno, "missing type");
		if (extra)
			die_zone(file, lineno, "extra text");
		char key[256];
		if (!norm_name(name, key, sizeof key))
			die_zone(file, lineno, "name too long");
		struct zname *z = zone_find(key);
		if (!z) {
			if (n_zone == MAX_NAMES)
				die_zone(file, lineno, "too many names");
			zone = xrealloc(zone, (n_zone + 1) * sizeof *zone);
			z = &zone[n_zone++];
			memset(z, 0, sizeof *z);
			memcpy(z->name, key, strlen(key) + 1);
		}
		struct rr r;
		memset(&r, 0, sizeof r);
		if (strcasecmp(type, "SERVFAIL") == 0 || strcasecmp(type, "REFUSED") == 0 ||
		    strcasecmp(type, "DROP") == 0) {
			if (v1)
				die_zone(file, lineno, "extra text");
			if (strcasecmp(type, "SERVFAIL") == 0)
				z->servfail = true;
			else if (strcasecmp(type, "REFUSED") == 0)
				z->refused = true;
			else
				z->drop = true;
			continue;
		}
		if (strcasecmp(type, "DELAY") == 0) {
			char *end;
			if (!v1 || v2)
				die_zone(file, lineno, "DELAY takes milliseconds");
			long ms = strtol(v1, &end, 10);
			if (*end || ms < 0 || ms > MAX_DELAY_MS)
				die_zone(file, lineno, "bad DELAY");
			z->delay_ms = (int)ms;
			continue;
		}
		if (strcasecmp(type, "A") == 0) {
			if (!v1 || v2 || inet_pton(AF_INET, v1, r.data) != 1)
				die_zone(file, lineno, "bad A address");
			r.type = T_A;
			r.len = 4;
		} else if (strcasecmp(type, "AAAA") == 0) {
			if (!v1 || v2 || inet_pton(AF_INET6, v1, r.data) != 1)
				die_zone(file, lineno, "bad AAAA address");
			r.type = T_AAAA;
			r.len = 16;
		} else if (strcasecmp(type, "MX") == 0) {
			char *end;
			if (!v1 || !v2)
				die_zone(file, lineno, "MX takes a preference and a host");
			long pref = strtol(v1, &end, 10);
			if (*end || pref < 0 || pref > 65535)
				die_zone(file, lineno, "bad MX preference");
			size_t nl = strcmp(v2, ".") == 0 ? (r.data[2] = 0, 1)
							 : encode_name(v2, r.data + 2, sizeof r.data - 2);
			if (nl == 0)
				die_zone(file, lineno, "bad MX host");
			r.data[0] = (uint8_t)(pref >> 8);
			r.data[1] = (uint8_t)pref;
			r.type = T_MX;
			r.len = 2 + nl;
		} else {
			die_zone(file, lineno, "unknown type");
		}
		if (z->n_rrs == MAX_RRS)
			die_zone(file, lineno, "too many records for one name");
		z->rrs = xrealloc(z->rrs, (z->n_rrs + 1) * sizeof *z->rrs);
		z->rrs[z->n_rrs++] = r;
	}
	if (ferror(f)) {
		fprintf(stderr, "dnsd: %s: read error\n", file);
		exit(2);
	}
	fclose(f);
}

static void zone_free(void)
{
	for (size_t i = 0; i < n_zone; i++)
		free(zone[i].rrs);
	free(zone);
	zone = NULL;
	n_zone = 0;
}

/* ---- answering ----------------------------------------------------------- */

static void put16(uint8_t *p, unsigned v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/* Builds the reply to q[0..qlen) in out (cap bytes, at least 512).  Returns
 * its length, or 0 for no reply; *delay_ms is set to the name's delay. */
static size_t answer(const uint8_t *q, size_t qlen, uint8_t *out, size_t cap, int *delay_ms)
{
	*delay_ms = 0;
	if (qlen < 12 || (q[2] & 0x80))
		return 0;   /* no id to answer, or a response */
	unsigned opcode = (q[2] >> 3) & 0x0f;
	unsigned qdcount = (unsigned)q[4] << 8 | q[5];
	memset(out, 0, 12);
	out[0] = q[0];
	out[1] = q[1];
	out[2] = (uint8_t)(0x80 | (opcode << 3) | 0x04 | (q[2] & 0x01));   /* QR AA RD */
	if (opcode != 0) {
		out[3] = RC_NOTIMP;
		return 12;
	}
	if (qdcount != 1) {
		out[3] = RC_FORMERR;
		return 12;
	}
	/* the question: labels, no compression in a query */
	char name[256];
	size_t nlen = 0, pos = 12;
	bool odd = false;   /* a byte no zone name can hold: the name is unknown */
	for (;;) {
		if (pos >= qlen) {
			out[3] = RC_FORMERR;
			return 12;
		}
		size_t l = q[pos];
		if (l == 0) {
			pos++;
			break;
		}
		if (l > 63 || pos + 1 + l > qlen || nlen + l + 1 >= sizeof name) {
			out[3] = RC_FORMERR;
			return 12;
		}
		if (nlen)
			name[nlen++] = '.';
		for (size_t i = 0; i < l; i++) {
			uint8_t c = q[pos + 1 + i];
			if (c >= 'A' && c <= 'Z')
				c = (uint8_t)(c - 'A' + 'a');
			if (c <= ' ' || c == '.' || c >= 0x7f)
				odd = true;
			name[nlen++] = (char)c;
		}
		pos += 1 + l;
	}
	name[nlen] = '\0';
	if (pos + 4 > qlen) {
		out[3] = RC_FORMERR;
		return 12;
	}
	unsigned qtype = (unsigned)q[pos] << 8 | q[pos + 1];
	unsigned qclass = (unsigned)q[pos + 2] << 8 | q[pos + 3];
	size_t qend = pos + 4;
	size_t qsize = qend - 12;
	if (12 + qsize > cap) {
		out[3] = RC_FORMERR;
		return 12;
	}
	memcpy(out + 12, q + 12, qsize);
	put16(out + 4, 1);
	size_t len = 12 + qsize;
	struct zname *z = odd ? NULL : zone_find(name);
	if (!z) {
		out[3] = RC_NXDOMAIN;
		return len;
	}
	if (z->drop)
		return 0;
	*delay_ms = z->delay_ms;
	if (z->servfail) {
		out[3] = RC_SERVFAIL;
		return len;
	}
	if (z->refused || qclass != C_IN) {
		out[3] = RC_REFUSED;
		return len;
	}
	unsigned ancount = 0;
	for (size_t i = 0; i < z->n_rrs; i++) {
		const struct rr *r = &z->rrs[i];
		if (qtype != T_ANY && (unsigned)r->type != qtype)
			continue;
		if (len + 12 + r->len > cap) {
			/* does not fit: an empty truncated answer */
			out[2] |= 0x02;
			put16(out + 6, 0);
			return 12 + qsize;
		}
		uint8_t *p = out + len;
		put16(p, 0xc00c);   /* the name in the question */
		put16(p + 2, (unsigned)r->type);
		put16(p + 4, C_IN);
		put16(p + 6, 0);
		put16(p + 8, 300);   /* TTL */
		put16(p + 10, (unsigned)r->len);
		memcpy(p + 12, r->data, r->len);
		len += 12 + r->len;
		put16(out + 6, ++ancount);
	}
	return len;
}

/* ---- transports ---------------------------------------------------------- */

static void conn_unref(struct conn *c)
{
	if (--c->refs > 0)
		return;
	if (c->bev)
		bufferevent_free(c->bev);
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
	n_conns--;
}

static void conn_close(struct conn *c)
{
	if (!c->bev)
		return;
	bufferevent_free(c->bev);
	c->bev = NULL;
	conn_unref(c);
}

static void send_reply(int ufd, const struct sockaddr_storage *peer, socklen_t peerlen,
		       struct conn *c, const uint8_t *msg, size_t len)
{
	if (c) {
		if (!c->bev)
			return;
		uint8_t hdr[2];
		put16(hdr, (unsigned)len);
		struct evbuffer *o = bufferevent_get_output(c->bev);
		evbuffer_add(o, hdr, 2);
		evbuffer_add(o, msg, len);
		return;
	}
	/* a lost UDP reply is a test's timeout, as on a real network */
	(void)sendto(ufd, msg, len, 0, (const struct sockaddr *)peer, peerlen);
}

static void delayed_free(struct delayed *j)
{
	if (j->prev)
		j->prev->next = j->next;
	else
		jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	event_free(j->ev);
	if (j->conn)
		conn_unref(j->conn);
	free(j->msg);
	free(j);
}

static void delayed_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct delayed *j = arg;
	send_reply(j->ufd, &j->peer, j->peerlen, j->conn, j->msg, j->len);
	delayed_free(j);
}

static void reply(int ufd, const struct sockaddr_storage *peer, socklen_t peerlen,
		  struct conn *c, const uint8_t *q, size_t qlen)
{
	static uint8_t out[MSG_MAX];
	int delay_ms;
	size_t len = answer(q, qlen, out, c ? MSG_MAX : UDP_MAX, &delay_ms);
	if (len == 0)
		return;
	if (delay_ms == 0) {
		send_reply(ufd, peer, peerlen, c, out, len);
		return;
	}
	struct delayed *j = xcalloc(1, sizeof *j);
	j->msg = xmalloc(len);
	memcpy(j->msg, out, len);
	j->len = len;
	j->ufd = ufd;
	if (peer)
		j->peer = *peer;
	j->peerlen = peerlen;
	if (c) {
		j->conn = c;
		c->refs++;
	}
	j->next = jobs;
	if (jobs)
		jobs->prev = j;
	jobs = j;
	struct timeval tv = { delay_ms / 1000, (delay_ms % 1000) * 1000 };
	j->ev = evtimer_new(base, delayed_cb, j);
	if (!j->ev || evtimer_add(j->ev, &tv) != 0)
		abort();
}

static void udp_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	(void)arg;
	uint8_t buf[MSG_MAX];
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage peer;
		socklen_t peerlen = sizeof peer;
		ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&peer, &peerlen);
		if (n < 0)
			return;
		reply(fd, &peer, peerlen, NULL, buf, (size_t)n);
	}
}

static void tcp_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	uint8_t msg[MSG_MAX];
	for (;;) {
		uint8_t hdr[2];
		if (evbuffer_copyout(in, hdr, 2) != 2)
			return;
		size_t len = (size_t)hdr[0] << 8 | hdr[1];
		if (evbuffer_get_length(in) < 2 + len)
			return;
		evbuffer_drain(in, 2);
		if (evbuffer_remove(in, msg, len) != (int)len) {
			conn_close(c);
			return;
		}
		reply(-1, NULL, 0, c, msg, len);
	}
}

static void tcp_event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		conn_close(arg);
}

static void accept_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	(void)arg;
	int cfd = accept(fd, NULL, NULL);
	if (cfd < 0)
		return;
	if (n_conns >= TCP_MAX_CONNS || evutil_make_socket_nonblocking(cfd) != 0) {
		close(cfd);
		return;
	}
	struct conn *c = xcalloc(1, sizeof *c);
	c->bev = bufferevent_socket_new(base, cfd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		close(cfd);
		free(c);
		return;
	}
	c->refs = 1;
	n_conns++;
	c->next = conns;
	if (conns)
		conns->prev = c;
	conns = c;
	bufferevent_setcb(c->bev, tcp_read_cb, NULL, tcp_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, 4 * (MSG_MAX + 2));
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	event_base_loopbreak(base);
}

/* binds type on 127.0.0.1:port; -1 with errno */
static int bind_sock(int type, int port)
{
	int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	if (type == SOCK_STREAM)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0 ||
	    (type == SOCK_STREAM && listen(fd, 16) != 0)) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int bound_port(int fd)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof sin;
	if (getsockname(fd, (struct sockaddr *)&sin, &len) != 0)
		return -1;
	return ntohs(sin.sin_port);
}

static void usage(void)
{
	fprintf(stderr, "usage: dnsd -p PORT -z ZONEFILE\n");
	exit(2);
}

int main(int argc, char **argv)
{
	long port = -1;
	const char *zfile = NULL;
	int opt;
	while ((opt = getopt(argc, argv, "p:z:")) != -1) {
		char *end;
		switch (opt) {
		case 'p':
			port = strtol(optarg, &end, 10);
			if (*optarg == '\0' || *end || port < 0 || port > 65535)
				usage();
			break;
		case 'z':
			zfile = optarg;
			break;
		default:
			usage();
		}
	}
	if (port < 0 || !zfile || optind != argc)
		usage();
	zone_load(zfile);
	signal(SIGPIPE, SIG_IGN);

	int ufd = -1, tfd = -1;
	for (int attempt = 0; attempt < 50 && tfd < 0; attempt++) {
		ufd = bind_sock(SOCK_DGRAM, (int)port);
		if (ufd < 0)
			break;
		int p = bound_port(ufd);
		tfd = p < 0 ? -1 : bind_sock(SOCK_STREAM, p);
		if (tfd < 0) {
			int e = errno;
			close(ufd);
			ufd = -1;
			errno = e;
			if (port != 0 || e != EADDRINUSE)
				break;
		}
	}
	if (ufd < 0 || tfd < 0) {
		fprintf(stderr, "dnsd: bind 127.0.0.1:%ld: %s\n", port, strerror(errno));
		return 2;
	}

	base = event_base_new();
	if (!base) {
		fprintf(stderr, "dnsd: event_base_new failed\n");
		return 2;
	}
	struct event *uev = event_new(base, ufd, EV_READ | EV_PERSIST, udp_cb, NULL);
	struct event *tev = event_new(base, tfd, EV_READ | EV_PERSIST, accept_cb, NULL);
	struct event *sterm = evsignal_new(base, SIGTERM, signal_cb, NULL);
	struct event *sint = evsignal_new(base, SIGINT, signal_cb, NULL);
	if (!uev || !tev || !sterm || !sint || event_add(uev, NULL) || event_add(tev, NULL) ||
	    event_add(sterm, NULL) || event_add(sint, NULL)) {
		fprintf(stderr, "dnsd: cannot set up events\n");
		return 2;
	}
	if (port == 0)
		printf("ready %d\n", bound_port(ufd));
	else
		printf("ready\n");
	fflush(stdout);

	event_base_dispatch(base);

	while (jobs)
		delayed_free(jobs);
	while (conns) {
		struct conn *c = conns;
		c->refs = 1;
		if (c->bev)
			conn_close(c);
		else
			conn_unref(c);
	}
	event_free(uev);
	event_free(tev);
	event_free(sterm);
	event_free(sint);
	close(ufd);
	close(tfd);
	event_base_free(base);
	zone_free();
	return 0;
}
