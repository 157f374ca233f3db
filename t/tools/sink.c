/* sink: an SMTP server that stores what it accepts, for the tests of the
 * outbound client and the end-to-end suites.
 *
 *   sink -p PORT -d DIR [--tls CERTFILE KEYFILE | --tls-self-signed]
 *        [--rule RULE]... [--pipelining | --no-pipelining]
 *
 * Listens on 127.0.0.1:PORT (0: any free port), prints "ready PORT\n" once
 * listening, serves until SIGTERM or SIGINT, then exits 0.  Errors before
 * that exit 1 (2 for bad usage) with a reason on stderr.
 *
 * Each accepted message becomes DIR/<seq>.eml (seq counts from 1; written
 * as DIR/.tmp.<seq> and renamed): "X-Sink-Mail-From: <sender>", one
 * "X-Sink-Rcpt-To: <rcpt>" per accepted recipient, "X-Sink-TLS: <version>
 * <cipher>" under TLS, "X-Sink-Peer: <ip:port>" (the <> are placeholders:
 * the values stand bare; each line ends in CRLF), then the message as
 * received, dot-unstuffed.  DIR/connections holds the number of
 * connections accepted so far (rewritten by rename on each accept), and
 * DIR/log gets one line per command received: "<conn> <command line>",
 * with " +" appended when more input was already buffered behind it (the
 * client pipelined).
 *
 * --rule 'CMD:N:REPLY[:MATCH]' scripts a reply.  CMD is CONNECT (the
 * banner), EHLO, HELO, STARTTLS, MAIL, RCPT, DATA (the 354 step), DOT
 * (after the message), RSET, NOOP or QUIT; N is how many times the rule
 * applies (0: always), counted across connections; REPLY is a reply line
 * ("451 4.3.0 try later"; it cannot contain ':'), or "close" (close at
 * once, no reply) or "hang" (never answer; input is discarded until the
 * client closes).  MATCH, optional, limits the rule to commands whose
 * argument contains it.  Rules of one CMD are tried in order; the first
 * that matches and has uses left wins.  The reply code decides what
 * happens: MAIL 2xx opens the transaction, RCPT 2xx accepts the
 * recipient, DATA 3xx starts the data, DOT 2xx stores the message (if it
 * has a recipient), STARTTLS 2xx starts TLS (with --tls*), CONNECT 421
 * closes after the banner and any other non-2xx banner answers 503 to all
 * but QUIT.
 *
 * EHLO offers PIPELINING (unless --no-pipelining), 8BITMIME, SIZE and,
 * with --tls or --tls-self-signed (a certificate for "localhost"),
 * STARTTLS.  Verbs: HELO EHLO STARTTLS MAIL RCPT DATA RSET NOOP QUIT. */
#include "lib/netaddr.h"
#include "lib/tls.h"
#include "lib/xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#define CMD_LINE_MAX 4096                   /* bytes of a command line */
#define DATA_LINE_MAX (1024 * 1024)         /* bytes of a message line */
#define MSG_MAX (64UL * 1024 * 1024)        /* bytes of a message (SIZE) */
#define RCPT_MAX 1000                       /* recipients per transaction */
#define HOSTNAME "sink.test"

struct rule {
	char cmd[16];
	long left;   /* uses left; -1: always */
	char *reply; /* owned */
	char *match; /* owned, or NULL */
};

struct session;

struct sink {
	struct event_base *base;     /* owned */
	struct evconnlistener *lis;  /* owned */
	SSL_CTX *tls;                /* owned, NULL without --tls* */
	bool pipelining;
	const char *dir;             /* argv */
	struct rule *rules;          /* owned array */
	size_t n_rules;
	unsigned long conns;
	unsigned long seq;
	int logfd;
	struct session *sessions;    /* owned list */
};

struct session {
	struct session *next, *prev;
	struct sink *sink;
	struct bufferevent *bev; /* owned: socket, or the TLS filter over it */
	unsigned long id;
	char peer[NETADDR_STRLEN];
	char *tls_version;       /* owned, NULL before TLS */
	char *tls_cipher;        /* owned */
	bool helo;
	bool rejecting;          /* non-2xx banner: 503 to all but QUIT */
	bool hang;
	bool in_data;
	bool closing;            /* close once the output is flushed */
	bool gone;               /* close now */
	bool starttls;           /* begin TLS once the read loop unwinds */
	char *mail_from;         /* owned; NULL: no transaction */
	char **rcpts;            /* owned array of owned strings */
	size_t n_rcpts;
	struct evbuffer *msg;    /* owned: the message being received */
	bool too_big;
};

/* Closing under TLS: the filter has handed the last reply to the socket
 * bufferevent, which has not written it yet; push it out now (one small
 * reply on loopback) rather than lose it with the free. */
static void flush_under(struct session *s)
{
	struct bufferevent *u = s->bev ? bufferevent_get_underlying(s->bev) : NULL;
	struct evbuffer *o = u ? bufferevent_get_output(u) : NULL;
	if (o && evbuffer_get_length(o)) {
		evbuffer_unfreeze(o, 1); /* a bufferevent keeps its output's start frozen */
		evbuffer_write(o, bufferevent_getfd(u));
		evbuffer_freeze(o, 1);
	}
}

static void session_free(struct session *s)
{
	if (!s)
		return;
	if (s->prev)
		s->prev->next = s->next;
	else
		s->sink->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	if (s->bev)
		bufferevent_free(s->bev);
	for (size_t i = 0; i < s->n_rcpts; i++)
		free(s->rcpts[i]);
	free(s->rcpts);
	free(s->mail_from);
	free(s->tls_version);
	free(s->tls_cipher);
	if (s->msg)
		evbuffer_free(s->msg);
	free(s);
}

static void txn_reset(struct session *s)
{
	for (size_t i = 0; i < s->n_rcpts; i++)
		free(s->rcpts[i]);
	free(s->rcpts);
	s->rcpts = NULL;
	s->n_rcpts = 0;
	free(s->mail_from);
	s->mail_from = NULL;
	evbuffer_drain(s->msg, evbuffer_get_length(s->msg));
	s->too_big = false;
	s->in_data = false;
}

static void reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct session *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(bufferevent_get_output(s->bev), fmt, ap);
	va_end(ap);
	evbuffer_add(bufferevent_get_output(s->bev), "\r\n", 2);
}

/* Writes path atomically (a temporary name beside it, then rename). */
static int write_atomic(const char *dir, const char *name, const char *tmpname, const struct iovec *v, int nv)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	if (snprintf(tmp, sizeof tmp, "%s/%s", dir, tmpname) >= (int)sizeof tmp ||
	    snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
		return -1;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	for (int i = 0; i < nv; i++) {
		const char *p = v[i].iov_base;
		size_t left = v[i].iov_len;
		while (left) {
			ssize_t n = write(fd, p, left);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				close(fd);
				unlink(tmp);
				return -1;
			}
			p += n;
			left -= (size_t)n;
		}
	}
	if (close(fd) < 0 || rename(tmp, path) < 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

static void log_line(struct session *s, const char *line, size_t n, bool more)
{
	if (s->sink->logfd < 0)
		return;
	char buf[CMD_LINE_MAX + 64];
	int k = snprintf(buf, sizeof buf, "%lu ", s->id);
	size_t len = (size_t)k;
	for (size_t i = 0; i < n && len < sizeof buf - 4; i++) {
		unsigned char ch = (unsigned char)line[i];
		buf[len++] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
	}
	if (more) {
		buf[len++] = ' ';
		buf[len++] = '+';
	}
	buf[len++] = '\n';
	if (write(s->sink->logfd, buf, len) < 0) {
		/* a test tool: a lost log line shows in the test that reads it */
	}
}

static struct rule *rule_for(struct sink *k, const char *cmd, const char *arg)
{
	for (size_t i = 0; i < k->n_rules; i++) {
		struct rule *r = &k->rules[i];
		if (strcmp(r->cmd, cmd) != 0 || r->left == 0)
			continue;
		if (r->match && (!arg || !strstr(arg, r->match)))
			continue;
		if (r->left > 0)
			r->left--;
		return r;
	}
	return NULL;
}

/* Applies a rule: "close" and "hang" here (returning 0), else the reply
 * line is sent and its code returned. */
static int rule_reply(struct session *s, const struct rule *r)
{
	if (strcmp(r->reply, "close") == 0) {
		s->gone = true;
		return 0;
	}
	if (strcmp(r->reply, "hang") == 0) {
		s->hang = true;
		return 0;
	}
	reply(s, "%s", r->reply);
	return atoi(r->reply);
}

/* "<addr> params" -> addr (owned), or NULL */
static char *path_arg(const char *p)
{
	while (*p == ' ')
		p++;
	if (*p != '<')
		return NULL;
	const char *end = strchr(p + 1, '>');
	if (!end)
		return NULL;
	return xstrndup(p + 1, (size_t)(end - p - 1));
}

/* Writes the message file; 0, or -1 with errno. */
static int store(struct session *s, unsigned long *seq)
{
	struct sink *k = s->sink;
	*seq = ++k->seq;
	struct evbuffer *h = evbuffer_new();
	evbuffer_add_printf(h, "X-Sink-Mail-From: %s\r\n", s->mail_from);
	for (size_t i = 0; i < s->n_rcpts; i++)
		evbuffer_add_printf(h, "X-Sink-Rcpt-To: %s\r\n", s->rcpts[i]);
	if (s->tls_version)
		evbuffer_add_printf(h, "X-Sink-TLS: %s %s\r\n", s->tls_version, s->tls_cipher);
	evbuffer_add_printf(h, "X-Sink-Peer: %s\r\n", s->peer);
	struct iovec v[2];
	v[0].iov_len = evbuffer_get_length(h);
	v[0].iov_base = evbuffer_pullup(h, -1);
	v[1].iov_len = evbuffer_get_length(s->msg);
	v[1].iov_base = v[1].iov_len ? evbuffer_pullup(s->msg, -1) : (void *)"";
	char name[64], tmp[64];
	snprintf(name, sizeof name, "%lu.eml", *seq);
	snprintf(tmp, sizeof tmp, ".tmp.%lu", *seq);
	int rc = write_atomic(k->dir, name, tmp, v, 2);
	int e = errno;
	evbuffer_free(h);
	errno = e;
	return rc;
}

static void end_of_data(struct session *s)
{
	const struct rule *r = rule_for(s->sink, "DOT", NULL);
	s->in_data = false;
	bool special = r && (strcmp(r->reply, "close") == 0 || strcmp(r->reply, "hang") == 0);
	int code = r && !special ? atoi(r->reply) : 0;
	unsigned long seq;
	if (special) {
		rule_reply(s, r);
	} else if (r && !(code >= 200 && code < 300 && s->n_rcpts && !s->too_big)) {
		rule_reply(s, r);
	} else if (!r && s->too_big) {
		reply(s, "552 5.3.4 message too big");
	} else if (!r && s->n_rcpts == 0) {
		reply(s, "554 5.5.1 no valid recipients");
	} else if (store(s, &seq) < 0) {
		reply(s, "451 4.3.0 cannot store the message: %s", strerror(errno));
	} else if (r) {
		rule_reply(s, r);
	} else {
		reply(s, "250 2.0.0 Ok: queued as %lu", seq);
	}
	if (!s->hang)
		txn_reset(s);
}

static void data_line(struct session *s, const char *line, size_t n)
{
	if (n == 1 && line[0] == '.') {
		end_of_data(s);
		return;
	}
	if (n && line[0] == '.') {
		line++;
		n--;
	}
	if (s->too_big || evbuffer_get_length(s->msg) + n + 2 > MSG_MAX) {
		s->too_big = true;
		return;
	}
	evbuffer_add(s->msg, line, n);
	evbuffer_add(s->msg, "\r\n", 2);
}

static void ehlo_reply(struct session *s, const char *arg)
{
	const char *ext[5];
	size_t n = 0;
	if (s->sink->pipelining)
		ext[n++] = "PIPELINING";
	ext[n++] = "8BITMIME";
	ext[n++] = "SIZE 67108864";
	if (s->sink->tls && !s->tls_version)
		ext[n++] = "STARTTLS";
	reply(s, "250-%s greets %s", HOSTNAME, arg);
	for (size_t i = 0; i < n; i++)
		reply(s, "250%c%s", i + 1 < n ? '-' : ' ', ext[i]);
}

static void command(struct session *s, char *line, size_t n, bool more)
{
	struct sink *k = s->sink;
	log_line(s, line, n, more);
	char verb[16];
	size_t vl = 0;
	while (vl < n && line[vl] != ' ' && line[vl] != ':' && vl < sizeof verb - 1) {
		verb[vl] = (char)toupper((unsigned char)line[vl]);
		vl++;
	}
	verb[vl] = '\0';
	const char *arg = line + vl;
	while (*arg == ' ')
		arg++;
	/* MAIL FROM: / RCPT TO: carry the path after the colon */
	const char *path = NULL;
	if (strcmp(verb, "MAIL") == 0 && strncasecmp(arg, "FROM:", 5) == 0)
		path = arg + 5;
	if (strcmp(verb, "RCPT") == 0 && strncasecmp(arg, "TO:", 3) == 0)
		path = arg + 3;

	static const char *const known[] = { "EHLO", "HELO", "STARTTLS", "MAIL", "RCPT",
					     "DATA", "RSET", "NOOP", "QUIT" };
	bool is_known = false;
	for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
		is_known |= strcmp(verb, known[i]) == 0;
	if (!is_known) {
		reply(s, "500 5.5.2 unrecognized command");
		return;
	}
	if (s->rejecting && strcmp(verb, "QUIT") != 0) {
		reply(s, "503 5.5.1 bad sequence of commands");
		return;
	}
	const struct rule *r = rule_for(k, verb, arg);
	int code = 0;
	if (r) {
		code = rule_reply(s, r);
		if (code == 0)
			return; /* closed or hung */
	}
	bool ok = code >= 200 && code < 300;

	if (strcmp(verb, "EHLO") == 0 || strcmp(verb, "HELO") == 0) {
		if (!r && !*arg) {
			reply(s, "501 5.5.4 %s needs a domain", verb);
			return;
		}
		if (!r && verb[0] == 'E')
			ehlo_reply(s, arg);
		else if (!r)
			reply(s, "250 %s", HOSTNAME);
		if (!r || ok) {
			s->helo = true;
			txn_reset(s);
		}
	} else if (strcmp(verb, "STARTTLS") == 0) {
		if (!r && (!k->tls || s->tls_version)) {
			reply(s, k->tls ? "503 5.5.1 TLS already active" : "502 5.5.1 STARTTLS not offered");
			return;
		}
		if (!r)
			reply(s, "220 2.0.0 Ready to start TLS");
		if ((!r || ok) && k->tls && !s->tls_version)
			s->starttls = true;
	} else if (strcmp(verb, "MAIL") == 0) {
		char *a = path ? path_arg(path) : NULL;
		if (!r) {
			if (!s->helo) {
				reply(s, "503 5.5.1 send EHLO or HELO first");
			} else if (s->mail_from) {
				reply(s, "503 5.5.1 nested MAIL command");
			} else if (!a) {
				reply(s, "501 5.5.4 syntax: MAIL FROM:<address>");
			} else {
				reply(s, "250 2.1.0 Ok");
				ok = true;
			}
		}
		if (ok) {
			txn_reset(s);
			s->mail_from = a ? a : xstrdup("");
			a = NULL;
		}
		free(a);
	} else if (strcmp(verb, "RCPT") == 0) {
		char *a = path ? path_arg(path) : NULL;
		if (!r) {
			if (!s->mail_from) {
				reply(s, "503 5.5.1 need MAIL before RCPT");
			} else if (!a) {
				reply(s, "501 5.5.4 syntax: RCPT TO:<address>");
			} else if (s->n_rcpts >= RCPT_MAX) {
				reply(s, "452 4.5.3 too many recipients");
			} else {
				reply(s, "250 2.1.5 Ok");
				ok = true;
			}
		}
		if (ok && s->n_rcpts < RCPT_MAX) {
			s->rcpts = xrealloc(s->rcpts, (s->n_rcpts + 1) * sizeof *s->rcpts);
			s->rcpts[s->n_rcpts++] = a ? a : xstrdup("");
			a = NULL;
		}
		free(a);
	} else if (strcmp(verb, "DATA") == 0) {
		if (!r) {
			if (!s->mail_from)
				reply(s, "503 5.5.1 need MAIL before DATA");
			else if (!s->n_rcpts)
				reply(s, "554 5.5.1 no valid recipients");
			else
				code = 354;
			if (code == 354)
				reply(s, "354 End data with <CR><LF>.<CR><LF>");
		}
		if (code / 100 == 3) {
			if (!s->mail_from)
				s->mail_from = xstrdup("");
			s->in_data = true;
		}
	} else if (strcmp(verb, "RSET") == 0) {
		if (!r)
			reply(s, "250 2.0.0 Ok");
		txn_reset(s);
	} else if (strcmp(verb, "NOOP") == 0) {
		if (!r)
			reply(s, "250 2.0.0 Ok");
	} else if (strcmp(verb, "QUIT") == 0) {
		if (!r)
			reply(s, "221 2.0.0 Bye");
		s->closing = true;
	}
}

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static void begin_tls(struct session *s)
{
	s->starttls = false;
	txn_reset(s);
	s->helo = false;
	struct evbuffer *in = bufferevent_get_input(s->bev);
	evbuffer_drain(in, evbuffer_get_length(in)); /* RFC 3207 4.2 */
	SSL *ssl = SSL_new(s->sink->tls);
	struct bufferevent *tls = ssl ? bufferevent_openssl_filter_new(s->sink->base, s->bev, ssl,
								       BUFFEREVENT_SSL_ACCEPTING,
								       BEV_OPT_CLOSE_ON_FREE)
				      : NULL;
	if (!tls) {
		fprintf(stderr, "sink: cannot start TLS\n");
		SSL_free(ssl);
		s->gone = true;
		return;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
	s->bev = tls;
	bufferevent_setcb(tls, read_cb, write_cb, event_cb, s);
	bufferevent_enable(tls, EV_READ | EV_WRITE);
}

/* After the read loop: close, start TLS, or go on. */
static void settle(struct session *s)
{
	if (s->gone) {
		session_free(s);
	} else if (s->closing) {
		bufferevent_disable(s->bev, EV_READ);
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0) {
			flush_under(s);
			session_free(s);
		}
	} else if (s->starttls) {
		begin_tls(s);
		if (s->gone)
			session_free(s);
	}
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct session *s = arg;
	struct evbuffer *in = bufferevent_get_input(s->bev);
	while (!s->gone && !s->closing && !s->starttls) {
		if (s->hang) {
			evbuffer_drain(in, evbuffer_get_length(in));
			break;
		}
		size_t eol_len = 0;
		size_t max = s->in_data ? DATA_LINE_MAX : CMD_LINE_MAX;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len,
							    s->in_data ? EVBUFFER_EOL_CRLF_STRICT
								       : EVBUFFER_EOL_CRLF);
		if (p.pos < 0 ? evbuffer_get_length(in) > max : (size_t)p.pos > max) {
			reply(s, "500 5.5.2 line too long");
			s->closing = true;
			break;
		}
		if (p.pos < 0)
			break;
		size_t n = (size_t)p.pos;
		char *line = xmalloc(n + 1);
		evbuffer_remove(in, line, n);
		evbuffer_drain(in, eol_len);
		line[n] = '\0';
		if (s->in_data)
			data_line(s, line, n);
		else
			command(s, line, n, evbuffer_get_length(in) > 0);
		free(line);
	}
	settle(s);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	if (s->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		flush_under(s);
		session_free(s);
	}
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	if (what & BEV_EVENT_CONNECTED) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		if (ssl) {
			s->tls_version = xstrdup(SSL_get_version(ssl));
			s->tls_cipher = xstrdup(SSL_get_cipher_name(ssl));
		}
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		session_free(s);
}

static void write_connections(struct sink *k)
{
	char buf[32];
	int n = snprintf(buf, sizeof buf, "%lu\n", k->conns);
	struct iovec v = { buf, (size_t)n };
	if (write_atomic(k->dir, "connections", ".tmp.connections", &v, 1) < 0)
		fprintf(stderr, "sink: cannot write %s/connections: %s\n", k->dir, strerror(errno));
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	(void)l;
	(void)salen;
	struct sink *k = arg;
	k->conns++;
	write_connections(k);
	struct session *s = xcalloc(1, sizeof *s);
	s->sink = k;
	s->id = k->conns;
	netaddr_format(sa, s->peer, sizeof s->peer);
	s->msg = evbuffer_new();
	s->bev = bufferevent_socket_new(k->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!s->msg || !s->bev) {
		fprintf(stderr, "sink: out of memory\n");
		exit(1);
	}
	s->next = k->sessions;
	if (k->sessions)
		k->sessions->prev = s;
	k->sessions = s;
	bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	const struct rule *r = rule_for(k, "CONNECT", NULL);
	int code = r ? rule_reply(s, r) : 220;
	if (!r)
		reply(s, "220 %s ESMTP sink", HOSTNAME);
	if (code == 421)
		s->closing = true;
	else if (code && (code < 200 || code >= 300))
		s->rejecting = true;
	settle(s);
}

static void on_signal(evutil_socket_t sig, short ev, void *arg)
{
	(void)sig;
	(void)ev;
	event_base_loopbreak(arg);
}

static int parse_rule(const char *spec, struct rule *r)
{
	memset(r, 0, sizeof *r);
	const char *c1 = strchr(spec, ':');
	const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c1 || !c2 || c1 == spec || (size_t)(c1 - spec) >= sizeof r->cmd)
		return -1;
	memcpy(r->cmd, spec, (size_t)(c1 - spec));
	static const char *const cmds[] = { "CONNECT", "EHLO", "HELO", "STARTTLS", "MAIL", "RCPT",
					    "DATA",    "DOT",  "RSET", "NOOP",     "QUIT" };
	bool known = false;
	for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
		known |= strcmp(r->cmd, cmds[i]) == 0;
	char *end;
	long n = strtol(c1 + 1, &end, 10);
	if (!known || end != c2 || n < 0)
		return -1;
	r->left = n == 0 ? -1 : n;
	const char *c3 = strchr(c2 + 1, ':');
	r->reply = c3 ? xstrndup(c2 + 1, (size_t)(c3 - c2 - 1)) : xstrdup(c2 + 1);
	r->match = c3 ? xstrdup(c3 + 1) : NULL;
	if (strcmp(r->reply, "close") != 0 && strcmp(r->reply, "hang") != 0) {
		int code = atoi(r->reply);
		if (code < 200 || code > 599 || strlen(r->reply) < 3) {
			free(r->reply);
			free(r->match);
			return -1;
		}
	}
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: sink -p PORT -d DIR [--tls CERTFILE KEYFILE | --tls-self-signed]\n"
			"            [--rule 'CMD:N:REPLY[:MATCH]']... [--pipelining | --no-pipelining]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct sink k = { .pipelining = true, .logfd = -1 };
	long port = -1;
	const char *cert = NULL, *key = NULL;
	bool self_signed = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-p") == 0 && i + 1 < argc) {
			char *end;
			port = strtol(argv[++i], &end, 10);
			if (*end || port < 0 || port > 65535)
				usage();
		} else if (strcmp(a, "-d") == 0 && i + 1 < argc) {
			k.dir = argv[++i];
		} else if (strcmp(a, "--tls") == 0 && i + 2 < argc) {
			cert = argv[++i];
			key = argv[++i];
		} else if (strcmp(a, "--tls-self-signed") == 0) {
			self_signed = true;
		} else if (strcmp(a, "--rule") == 0 && i + 1 < argc) {
			k.rules = xrealloc(k.rules, (k.n_rules + 1) * sizeof *k.rules);
			if (parse_rule(argv[++i], &k.rules[k.n_rules]) < 0) {
				fprintf(stderr, "sink: bad rule '%s'\n", argv[i]);
				usage();
			}
			k.n_rules++;
		} else if (strcmp(a, "--pipelining") == 0) {
			k.pipelining = true;
		} else if (strcmp(a, "--no-pipelining") == 0) {
			k.pipelining = false;
		} else {
			usage();
		}
	}
	if (port < 0 || !k.dir || (cert && self_signed))
		usage();
	signal(SIGPIPE, SIG_IGN);

	char err[512];
	if (cert) {
		k.tls = tls_server_ctx(cert, key, NULL, NULL, err, sizeof err);
	} else if (self_signed) {
		char *cpem = NULL, *kpem = NULL;
		if (tls_self_signed("localhost", &cpem, &kpem, err, sizeof err) == 0)
			k.tls = tls_server_ctx(NULL, NULL, cpem, kpem, err, sizeof err);
		free(cpem);
		free(kpem);
	}
	if ((cert || self_signed) && !k.tls) {
		fprintf(stderr, "sink: %s\n", err);
		return 1;
	}
	char logpath[PATH_MAX];
	snprintf(logpath, sizeof logpath, "%s/log", k.dir);
	k.logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (k.logfd < 0) {
		fprintf(stderr, "sink: %s: %s\n", logpath, strerror(errno));
		return 1;
	}
	write_connections(&k);

	k.base = event_base_new();
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	k.lis = k.base ? evconnlistener_new_bind(k.base, accept_cb, &k, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
						 128, (struct sockaddr *)&sin, sizeof sin)
		       : NULL;
	if (!k.lis) {
		fprintf(stderr, "sink: cannot listen on 127.0.0.1:%ld: %s\n", port, strerror(errno));
		return 1;
	}
	struct sockaddr_in bound;
	socklen_t blen = sizeof bound;
	if (getsockname(evconnlistener_get_fd(k.lis), (struct sockaddr *)&bound, &blen) < 0) {
		fprintf(stderr, "sink: getsockname: %s\n", strerror(errno));
		return 1;
	}
	struct event *term = evsignal_new(k.base, SIGTERM, on_signal, k.base);
	struct event *intr = evsignal_new(k.base, SIGINT, on_signal, k.base);
	event_add(term, NULL);
	event_add(intr, NULL);
	printf("ready %u\n", ntohs(bound.sin_port));
	fflush(stdout);

	event_base_dispatch(k.base);

	while (k.sessions)
		session_free(k.sessions);
	evconnlistener_free(k.lis);
	event_free(term);
	event_free(intr);
	event_base_free(k.base);
	SSL_CTX_free(k.tls);
	for (size_t i = 0; i < k.n_rules; i++) {
		free(k.rules[i].reply);
		free(k.rules[i].match);
	}
	free(k.rules);
	close(k.logfd);
	return 0;
}
