/* qmgr_smtp: the outbound SMTP client (see qmgr_smtp.h for the protocol
 * behaviour, the callback and idle rules).
 * Entry points: smtp_client_connect, smtp_client_send, smtp_client_quit,
 * smtp_client_free, the accessors, smtp_client_ssl_ctx, tls_mode_parse,
 * smtp_timeouts_default, smtp_result_clear, smtp_msg_check.
 * How it fails: never by return value once connecting; every failure is a
 * reply handed to failed() or done(), synthesized (421 with an enhanced
 * code) when the server gave none.  Out of memory aborts (xalloc, and the
 * few libevent constructors that only fail that way).
 *
 * Inside: one state per awaited reply, one timer re-armed per step, one
 * reply accumulator.  The bufferevents defer their callbacks, so nothing
 * calls back from inside an API function; each event entry point counts
 * itself in busy, and a free requested during a callback only marks the
 * client (zombie) until the outermost entry point returns. */
#include "qmgr/qmgr_smtp.h"
#include "lib/str.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#define BODY_CHUNK (16 * 1024) /* data bytes stuffed per pass */
#define OUT_HIGH (128 * 1024)  /* queue message data up to this much output */
#define OUT_LOW (32 * 1024)    /* write callback once output drains to this */
#define QUIT_WAIT_DEFAULT 5.0  /* QUIT reply wait when timeouts.rset is "no limit" */

enum state {
	ST_CONNECTING,
	ST_BANNER,
	ST_EHLO,
	ST_HELO,
	ST_STARTTLS,
	ST_HANDSHAKE,
	ST_IDLE,
	ST_RSET,
	ST_MAIL,
	ST_RCPT,
	ST_DATA,
	ST_BODY,      /* writing the message; no reply expected yet */
	ST_DOT,       /* waiting for the reply to the end of data */
	ST_DUMMY_DOT, /* RFC 2920 3.1: a lone "." after an unwanted 354 */
	ST_IDLE_QUIT, /* idle timeout: QUIT sent, failed() follows */
	ST_QUIT,      /* the owner quit: QUIT sent, then free */
	ST_DEAD,      /* failed() or a fatal done() was called; owner frees */
};

struct smtp_client {
	struct event_base *base;    /* not owned */
	struct bufferevent *bev;    /* owned: the socket, or the TLS filter over it */
	struct event *timer;        /* owned: the current step's deadline */
	SSL_CTX *verify_ctx;        /* owned reference, or NULL */
	SSL_CTX *insecure_ctx;      /* owned reference, or NULL */
	char *ehlo_name;            /* owned */
	char *peer_name;            /* owned, or NULL */
	enum tls_mode tls;
	struct smtp_timeouts to;
	struct smtp_client_cbs cbs; /* zeroed once the owner quits or frees */
	void *arg;
	char peer[NETADDR_STRLEN];
	enum state state;
	int busy;             /* depth of event entry points on the stack */
	bool zombie;          /* freed while busy: destroyed when busy drops to 0 */
	bool usable;          /* connected and in step with the server */
	bool tls_active;
	bool esmtp;
	bool offered_starttls; /* sticky: the first EHLO offered it */
	bool need_rset;        /* the server may still hold an open transaction */
	unsigned ext;          /* SMTP_EXT_* of the last EHLO */
	size_t max_size;
	char *tls_version;     /* owned, or NULL */
	char *tls_cipher;      /* owned, or NULL */
	char *pending_fail;    /* owned: the connect failed at once; reported from the timer */
	/* the reply being read */
	int rcode;             /* 0: no line of it yet */
	char *rtext;           /* owned */
	size_t rlen;
	size_t rcap;
	/* the transaction */
	const struct smtp_msg *msg; /* not owned */
	struct smtp_result res;     /* owned contents: rcpt[] */
	bool pipelined;
	bool sent_rset;
	struct smtp_reply rset_r;   /* owned text */
	struct smtp_reply mail_r;   /* owned text */
	struct smtp_reply data_r;   /* owned text */
	size_t rcpt_i;              /* the RCPT whose reply comes next */
	size_t accepted;            /* RCPTs answered 2xx */
	size_t off;                 /* message bytes queued so far */
	bool bol;                   /* the next message byte starts a line */
};

static void on_input(struct smtp_client *c);

/* ---- small things ------------------------------------------------------ */

static const struct {
	const char *name;
	enum tls_mode mode;
} tls_names[] = {
	{ "Opportunistic", TLS_OPPORTUNISTIC },
	{ "OpportunisticInsecure", TLS_OPPORTUNISTIC_INSECURE },
	{ "Required", TLS_REQUIRED },
	{ "RequiredInsecure", TLS_REQUIRED_INSECURE },
	{ "Disabled", TLS_DISABLED },
};

int tls_mode_parse(const char *s, enum tls_mode *out)
{
	for (size_t i = 0; s && i < sizeof tls_names / sizeof tls_names[0]; i++) {
		if (strcmp(s, tls_names[i].name) == 0) {
			*out = tls_names[i].mode;
			return 0;
		}
	}
	return -1;
}

const char *tls_mode_name(enum tls_mode m)
{
	for (size_t i = 0; i < sizeof tls_names / sizeof tls_names[0]; i++)
		if (tls_names[i].mode == m)
			return tls_names[i].name;
	return "?";
}

void smtp_timeouts_default(struct smtp_timeouts *t)
{
	*t = (struct smtp_timeouts){
		.connect = 60,
		.banner = 60,
		.ehlo = 300,
		.mail_from = 300,
		.rcpt_to = 300,
		.data = 300,
		.data_dot = 300,
		.rset = 5,
		.idle = 5,
		.starttls = 5,
	};
}

void smtp_result_clear(struct smtp_result *r)
{
	if (!r)
		return;
	free(r->final.text);
	for (size_t i = 0; i < r->n_rcpt; i++)
		free(r->rcpt[i].text);
	free(r->rcpt);
	memset(r, 0, sizeof *r);
}

static bool is2xx(int code)
{
	return code >= 200 && code < 300;
}

static void reply_clear(struct smtp_reply *r)
{
	free(r->text);
	r->text = NULL;
	r->code = 0;
}

/* An envelope address fit to go between <> on one command line. */
static int addr_check(const char *a, const char *what, char *err, size_t errlen)
{
	if (!a) {
		snprintf(err, errlen, "%s is missing", what);
		return -1;
	}
	size_t n = strlen(a);
	if (n > SMTP_ADDR_MAX) {
		snprintf(err, errlen, "%s is longer than %d bytes", what, SMTP_ADDR_MAX);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)a[i];
		if (ch < 0x20 || ch == 0x7f || ch == '<' || ch == '>') {
			snprintf(err, errlen, "%s has a control character or an angle bracket", what);
			return -1;
		}
	}
	return 0;
}

int smtp_msg_check(const struct smtp_msg *m, char *err, size_t errlen)
{
	if (!m || (m->len && !m->data)) {
		snprintf(err, errlen, "no message");
		return -1;
	}
	if (m->n_recipients == 0 || !m->recipients) {
		snprintf(err, errlen, "no recipient");
		return -1;
	}
	if (addr_check(m->sender, "the sender", err, errlen) < 0)
		return -1;
	for (size_t i = 0; i < m->n_recipients; i++)
		if (addr_check(m->recipients[i], "a recipient", err, errlen) < 0)
			return -1;
	return 0;
}

/* Whether s[0..n) has a byte of 0x80 or above: eight bytes at a time
 * (a whole message is checked before each MAIL FROM). */
static bool has_8bit(const char *s, size_t n)
{
	size_t i = 0;
	for (uint64_t x; i + 8 <= n; i += 8) {
		memcpy(&x, s + i, 8);
		if (x & 0x8080808080808080ull)
			return true;
	}
	for (; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

static void put(struct smtp_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct smtp_client *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(bufferevent_get_output(c->bev), fmt, ap);
	va_end(ap);
}

/* A command without arguments, as it is. */
#define put_lit(c, s) evbuffer_add(bufferevent_get_output((c)->bev), "" s, sizeof(s) - 1)

static void arm(struct smtp_client *c, double secs)
{
	event_del(c->timer);
	if (secs <= 0)
		return;
	struct timeval tv;
	tv.tv_sec = (time_t)secs;
	tv.tv_usec = (suseconds_t)((secs - (double)tv.tv_sec) * 1e6);
	evtimer_add(c->timer, &tv);
}

/* The name of the step awaiting a reply, as a result's command. */
static const char *step_name(enum state s)
{
	switch (s) {
	case ST_CONNECTING: return "connect";
	case ST_BANNER: return "banner";
	case ST_EHLO: return "EHLO";
	case ST_HELO: return "HELO";
	case ST_STARTTLS: return "STARTTLS";
	case ST_HANDSHAKE: return "TLS handshake";
	case ST_RSET: return "RSET";
	case ST_MAIL: return "MAIL FROM";
	case ST_RCPT: return "RCPT TO";
	case ST_DATA: return "DATA";
	case ST_BODY:
	case ST_DOT:
	case ST_DUMMY_DOT: return "data_dot";
	case ST_IDLE:
	case ST_IDLE_QUIT:
	case ST_QUIT:
	case ST_DEAD: break;
	}
	return "QUIT";
}

static double step_timeout(const struct smtp_client *c, enum state s)
{
	switch (s) {
	case ST_CONNECTING: return c->to.connect;
	case ST_BANNER: return c->to.banner;
	case ST_EHLO:
	case ST_HELO: return c->to.ehlo;
	case ST_STARTTLS:
	case ST_HANDSHAKE: return c->to.starttls;
	case ST_IDLE: return c->to.idle;
	case ST_RSET: return c->to.rset;
	case ST_MAIL: return c->to.mail_from;
	case ST_RCPT: return c->to.rcpt_to;
	case ST_DATA:
	case ST_BODY: return c->to.data;
	case ST_DOT:
	case ST_DUMMY_DOT: return c->to.data_dot;
	case ST_IDLE_QUIT:
	case ST_QUIT: return c->to.rset > 0 ? c->to.rset : QUIT_WAIT_DEFAULT;
	case ST_DEAD: break;
	}
	return 0;
}

static void enter_state(struct smtp_client *c, enum state s)
{
	c->state = s;
	arm(c, step_timeout(c, s));
}

/* ---- lifetime ---------------------------------------------------------- */

static void txn_reset(struct smtp_client *c)
{
	smtp_result_clear(&c->res);
	reply_clear(&c->rset_r);
	reply_clear(&c->mail_r);
	reply_clear(&c->data_r);
	c->msg = NULL;
	c->sent_rset = false;
	c->rcpt_i = 0;
	c->accepted = 0;
	c->off = 0;
}

static void destroy(struct smtp_client *c)
{
	if (c->bev)
		bufferevent_free(c->bev); /* the TLS filter frees the socket under it */
	if (c->timer)
		event_free(c->timer);
	SSL_CTX_free(c->verify_ctx);
	SSL_CTX_free(c->insecure_ctx);
	txn_reset(c);
	free(c->ehlo_name);
	free(c->peer_name);
	free(c->tls_version);
	free(c->tls_cipher);
	free(c->pending_fail);
	free(c->rtext);
	free(c);
}

void smtp_client_free(struct smtp_client *c)
{
	if (!c || c->zombie)
		return;
	memset(&c->cbs, 0, sizeof c->cbs);
	if (c->busy) {
		c->zombie = true;
		event_del(c->timer);
		if (c->bev)
			bufferevent_disable(c->bev, EV_READ | EV_WRITE);
		return;
	}
	destroy(c);
}

static void enter(struct smtp_client *c)
{
	c->busy++;
}

static void leave(struct smtp_client *c)
{
	if (--c->busy == 0 && c->zombie)
		destroy(c);
}

/* The session is over before ready, or while idle: tell the owner, who
 * frees.  why->text stays the caller's. */
static void fail(struct smtp_client *c, const struct smtp_reply *why, bool permanent)
{
	c->state = ST_DEAD;
	event_del(c->timer);
	if (c->bev)
		bufferevent_disable(c->bev, EV_READ);
	if (c->cbs.failed)
		c->cbs.failed(c, why, permanent, c->arg);
}

static void fail_text(struct smtp_client *c, const char *text)
{
	struct smtp_reply why = { 421, (char *)text };
	fail(c, &why, false);
}

/* Ends the transaction: final (moved in) decides it. */
static void txn_done(struct smtp_client *c, const char *command, struct smtp_reply final, bool conn_failed)
{
	struct smtp_result r = c->res;
	memset(&c->res, 0, sizeof c->res);
	r.command = command;
	r.final = final;
	r.connection_failed = conn_failed;
	const struct smtp_msg *m = c->msg;
	txn_reset(c);
	if (conn_failed) {
		c->usable = false;
		c->state = ST_DEAD;
		event_del(c->timer);
		if (c->bev)
			bufferevent_disable(c->bev, EV_READ);
	} else {
		enter_state(c, ST_IDLE);
	}
	if (c->cbs.done)
		c->cbs.done(c, m, &r, c->arg);
	smtp_result_clear(&r);
}

/* The connection broke (closed, error, timeout, garbage): text is a
 * synthesized 421's text. */
static void conn_lost(struct smtp_client *c, const char *text)
{
	c->usable = false;
	switch (c->state) {
	case ST_DEAD:
		return;
	case ST_QUIT:
		smtp_client_free(c);
		return;
	case ST_IDLE_QUIT:
		fail_text(c, "4.4.2 idle timeout");
		return;
	case ST_RSET:
	case ST_MAIL:
	case ST_RCPT:
	case ST_DATA:
	case ST_BODY:
	case ST_DOT:
	case ST_DUMMY_DOT:
		txn_done(c, step_name(c->state), (struct smtp_reply){ 421, xstrdup(text) }, true);
		return;
	case ST_IDLE:
	case ST_CONNECTING:
	case ST_BANNER:
	case ST_EHLO:
	case ST_HELO:
	case ST_STARTTLS:
	case ST_HANDSHAKE:
		fail_text(c, text);
		return;
	}
}

static void conn_lostf(struct smtp_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_lostf(struct smtp_client *c, const char *fmt, ...)
{
	char text[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	conn_lost(c, text);
}

/* ---- session set-up ---------------------------------------------------- */

static void go_ready(struct smtp_client *c)
{
	enter_state(c, ST_IDLE);
	if (c->cbs.ready)
		c->cbs.ready(c, c->arg);
}

static void parse_ehlo(struct smtp_client *c, const char *text)
{
	c->ext = 0;
	c->max_size = 0;
	const char *line = strchr(text, '\n'); /* the first line is the greeting */
	while (line) {
		line++;
		const char *end = strchr(line, '\n');
		size_t n = end ? (size_t)(end - line) : strlen(line);
		size_t kw = 0;
		while (kw < n && line[kw] != ' ')
			kw++;
#define KW(s) (kw == sizeof(s) - 1 && strncasecmp(line, s, kw) == 0)
		if (KW("PIPELINING")) {
			c->ext |= SMTP_EXT_PIPELINING;
		} else if (KW("STARTTLS")) {
			c->ext |= SMTP_EXT_STARTTLS;
		} else if (KW("8BITMIME")) {
			c->ext |= SMTP_EXT_8BITMIME;
		} else if (KW("SMTPUTF8")) {
			c->ext |= SMTP_EXT_SMTPUTF8;
		} else if (KW("SIZE")) {
			c->ext |= SMTP_EXT_SIZE;
			if (kw < n) {
				char num[32];
				size_t len = n - kw - 1 < sizeof num - 1 ? n - kw - 1 : sizeof num - 1;
				memcpy(num, line + kw + 1, len);
				num[len] = '\0';
				c->max_size = (size_t)strtoull(num, NULL, 10);
			}
		}
#undef KW
		line = end;
	}
	if (!c->tls_active && (c->ext & SMTP_EXT_STARTTLS))
		c->offered_starttls = true;
}

/* EHLO or HELO succeeded: STARTTLS as the mode asks, or ready. */
static void after_hello(struct smtp_client *c)
{
	if (c->tls_active || c->tls == TLS_DISABLED) {
		go_ready(c);
	} else if (c->ext & SMTP_EXT_STARTTLS) {
		put_lit(c, "STARTTLS\r\n");
		enter_state(c, ST_STARTTLS);
	} else if (c->tls == TLS_REQUIRED || c->tls == TLS_REQUIRED_INSECURE) {
		char text[300];
		snprintf(text, sizeof text, "4.7.10 enable_tls is %s but %s did not offer STARTTLS",
			 tls_mode_name(c->tls), c->peer);
		fail_text(c, text);
	} else {
		go_ready(c);
	}
}

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/* The server said 220 to STARTTLS: wrap the socket in a TLS filter. */
static void begin_tls(struct smtp_client *c)
{
	bool insecure = c->tls == TLS_OPPORTUNISTIC_INSECURE || c->tls == TLS_REQUIRED_INSECURE;
	SSL_CTX *ctx = insecure ? c->insecure_ctx : c->verify_ctx;
	c->usable = false; /* the server now waits for a handshake */
	if (!ctx) {
		fail_text(c, "4.7.5 TLS handshake not started: no TLS context for this mode");
		return;
	}
	SSL *ssl = SSL_new(ctx);
	if (!ssl) {
		char e[256];
		ERR_error_string_n(ERR_get_error(), e, sizeof e);
		ERR_clear_error();
		char text[400];
		snprintf(text, sizeof text, "4.7.5 TLS handshake not started: %s", e);
		fail_text(c, text);
		return;
	}
	if (c->peer_name && !is_ip_literal(c->peer_name))
		SSL_set_tlsext_host_name(ssl, c->peer_name);
	if (!insecure && c->peer_name) {
		if (is_ip_literal(c->peer_name))
			X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), c->peer_name);
		else
			SSL_set1_host(ssl, c->peer_name);
	}
	/* RFC 3207 and the STARTTLS injection attacks: nothing the server sent
	 * after its 220 in clear text may be read as if it came under TLS */
	struct evbuffer *in = bufferevent_get_input(c->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	struct bufferevent *tls = bufferevent_openssl_filter_new(c->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
								 BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!tls)
		abort(); /* only allocation fails here */
	bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
	c->bev = tls;
	bufferevent_setcb(tls, read_cb, write_cb, event_cb, c);
	bufferevent_setwatermark(tls, EV_WRITE, OUT_LOW, 0);
	bufferevent_enable(tls, EV_READ | EV_WRITE);
	enter_state(c, ST_HANDSHAKE);
}

static void tls_done(struct smtp_client *c)
{
	SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
	const SSL_CIPHER *ci = SSL_get_current_cipher(ssl);
	const char *name = ci ? SSL_CIPHER_standard_name(ci) : NULL;
	if (!name && ci)
		name = SSL_CIPHER_get_name(ci);
	c->tls_version = xstrdup(SSL_get_version(ssl));
	c->tls_cipher = xstrdup(name ? name : "");
	c->tls_active = true;
	c->usable = true;
	/* RFC 3207 4.2: forget what was learnt before TLS, ask again */
	c->ext = 0;
	c->max_size = 0;
	put(c, "EHLO %s\r\n", c->ehlo_name);
	enter_state(c, ST_EHLO);
}

static void tls_failed(struct smtp_client *c, struct bufferevent *bev, short what)
{
	char e[256] = "";
	unsigned long err;
	while ((err = bufferevent_get_openssl_error(bev)) != 0)
		if (!e[0])
			ERR_error_string_n(err, e, sizeof e);
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	char text[600];
	if (vr != X509_V_OK)
		snprintf(text, sizeof text, "4.7.5 TLS handshake with %s failed: certificate verify failed (%s)",
			 c->peer, X509_verify_cert_error_string(vr));
	else if (e[0])
		snprintf(text, sizeof text, "4.7.5 TLS handshake with %s failed: %s", c->peer, e);
	else
		snprintf(text, sizeof text, "4.7.5 TLS handshake with %s failed: %s", c->peer,
			 (what & BEV_EVENT_EOF) ? "connection closed by peer" : "connection error");
	c->usable = false;
	fail_text(c, text);
}

/* ---- replies ------------------------------------------------------------ */

static void on_banner(struct smtp_client *c, struct smtp_reply *r)
{
	if (is2xx(r->code)) {
		put(c, "EHLO %s\r\n", c->ehlo_name);
		enter_state(c, ST_EHLO);
		return;
	}
	if (r->code == 421)
		c->usable = false;
	fail(c, r, r->code >= 500);
}

static void on_ehlo(struct smtp_client *c, struct smtp_reply *r)
{
	if (is2xx(r->code)) {
		c->esmtp = true;
		parse_ehlo(c, r->text);
		after_hello(c);
		return;
	}
	if (r->code >= 500) {
		put(c, "HELO %s\r\n", c->ehlo_name);
		enter_state(c, ST_HELO);
		return;
	}
	if (r->code == 421)
		c->usable = false;
	fail(c, r, false);
}

static void on_helo(struct smtp_client *c, struct smtp_reply *r)
{
	if (is2xx(r->code)) {
		c->esmtp = false;
		c->ext = 0;
		c->max_size = 0;
		after_hello(c);
		return;
	}
	if (r->code == 421)
		c->usable = false;
	fail(c, r, r->code >= 500);
}

static void on_starttls(struct smtp_client *c, struct smtp_reply *r)
{
	if (is2xx(r->code)) {
		begin_tls(c);
		return;
	}
	if (r->code == 421)
		c->usable = false;
	fail(c, r, false);
}

/* head, addr, tail and CRLF as one line of output, without printf (a
 * MAIL FROM and a RCPT TO per message). */
static void put_cmd(struct smtp_client *c, const char *head, const char *addr, const char *tail)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	char line[1024];
	size_t n = str_join3(line, sizeof line - 2, head, addr, tail);
	if (n >= sizeof line - 2) { /* cut: a long address */
		evbuffer_add_printf(out, "%s%s%s\r\n", head, addr, tail);
		return;
	}
	memcpy(line + n, "\r\n", 2);
	evbuffer_add(out, line, n + 2);
}

static void put_mail(struct smtp_client *c)
{
	const struct smtp_msg *m = c->msg;
	char params[96] = ">";
	size_t n = 1;
	if (c->ext & SMTP_EXT_SIZE) {
		/* " SIZE=<len>", the digits written backwards */
		char digits[24], *d = digits + sizeof digits;
		size_t v = m->len;
		do
			*--d = (char)('0' + v % 10);
		while (v /= 10);
		memcpy(params + n, " SIZE=", 6);
		n += 6;
		memcpy(params + n, d, (size_t)(digits + sizeof digits - d));
		n += (size_t)(digits + sizeof digits - d);
	}
	if ((c->ext & SMTP_EXT_8BITMIME) && has_8bit(m->data, m->len)) {
		memcpy(params + n, " BODY=8BITMIME", 14);
		n += 14;
	}
	bool utf8 = has_8bit(m->sender, strlen(m->sender));
	for (size_t i = 0; !utf8 && i < m->n_recipients; i++)
		utf8 = has_8bit(m->recipients[i], strlen(m->recipients[i]));
	if (utf8 && (c->ext & SMTP_EXT_SMTPUTF8)) {
		memcpy(params + n, " SMTPUTF8", 9);
		n += 9;
	}
	params[n] = '\0';
	put_cmd(c, "MAIL FROM:<", m->sender, params);
}

static void put_rcpt(struct smtp_client *c, size_t i)
{
	put_cmd(c, "RCPT TO:<", c->msg->recipients[i], ">");
}

/* Queues message data up to OUT_HIGH bytes of output, dot-stuffing; once
 * all is queued, the terminator, and the wait for its reply. */
static void body_more(struct smtp_client *c)
{
	const struct smtp_msg *m = c->msg;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	while (c->off < m->len && evbuffer_get_length(out) < OUT_HIGH) {
		size_t end = m->len - c->off > BODY_CHUNK ? c->off + BODY_CHUNK : m->len;
		while (c->off < end) {
			if (c->bol && m->data[c->off] == '.')
				evbuffer_add(out, ".", 1);
			/* one add up to the next line that starts with '.' (stuffed
			 * on the next turn), or to the chunk's end */
			const char *hit = NULL, *e = m->data + end;
			for (const char *q = m->data + c->off;
			     (q = memchr(q, '\n', (size_t)(e - q))) != NULL && q + 1 < e; q++) {
				if (q[1] == '.') {
					hit = q;
					break;
				}
			}
			size_t stop = hit ? (size_t)(hit - m->data) + 1 : end;
			evbuffer_add(out, m->data + c->off, stop - c->off);
			c->bol = m->data[stop - 1] == '\n';
			c->off = stop;
		}
	}
	if (c->off < m->len)
		return;
	if (m->len == 0 || (m->len >= 2 && m->data[m->len - 2] == '\r' && m->data[m->len - 1] == '\n'))
		evbuffer_add(out, ".\r\n", 3);
	else
		evbuffer_add(out, "\r\n.\r\n", 5);
	enter_state(c, ST_DOT);
}

/* Did the envelope fail?  Then *bad is the deciding reply and *cmd names
 * its command.  Order: RSET, MAIL, all RCPTs, DATA. */
static bool envelope_failed(struct smtp_client *c, struct smtp_reply **bad, const char **cmd)
{
	if (c->sent_rset && !is2xx(c->rset_r.code)) {
		*bad = &c->rset_r;
		*cmd = "RSET";
		return true;
	}
	if (!is2xx(c->mail_r.code)) {
		*bad = &c->mail_r;
		*cmd = "MAIL FROM";
		return true;
	}
	if (c->accepted == 0) {
		size_t i = c->res.n_rcpt;
		while (i > 1 && c->res.rcpt[i - 1].code == 0)
			i--;
		*bad = &c->res.rcpt[i - 1];
		*cmd = "RCPT TO";
		return true;
	}
	if (c->data_r.code / 100 != 3) {
		*bad = &c->data_r;
		*cmd = "DATA";
		return true;
	}
	return false;
}

static struct smtp_reply reply_take(struct smtp_client *c, struct smtp_reply *r)
{
	struct smtp_reply out = *r;
	if (r >= c->res.rcpt && r < c->res.rcpt + c->res.n_rcpt) {
		out.text = xstrdup(r->text ? r->text : ""); /* stays in rcpt[] too */
	} else {
		r->text = NULL;
		r->code = 0;
	}
	return out;
}

/* The envelope is answered as far as it goes (lock-step: stopped at the
 * first failure; pipelined: through DATA): the body, or the end. */
static void envelope_end(struct smtp_client *c)
{
	struct smtp_reply *bad;
	const char *cmd;
	if (!envelope_failed(c, &bad, &cmd)) {
		c->need_rset = true; /* until the end of data is answered */
		c->off = 0;
		c->bol = true;
		enter_state(c, ST_BODY);
		body_more(c);
		return;
	}
	if (c->data_r.code / 100 == 3) {
		put_lit(c, ".\r\n"); /* RFC 2920 3.1 */
		enter_state(c, ST_DUMMY_DOT);
		return;
	}
	c->need_rset = (c->sent_rset && !is2xx(c->rset_r.code)) || is2xx(c->mail_r.code);
	txn_done(c, cmd, reply_take(c, bad), false);
}

static void on_txn_reply(struct smtp_client *c, struct smtp_reply *r)
{
	if (r->code == 421) {
		c->usable = false;
		txn_done(c, step_name(c->state), reply_take(c, r), true);
		return;
	}
	switch (c->state) {
	case ST_RSET:
		c->rset_r = reply_take(c, r);
		if (!c->pipelined && !is2xx(c->rset_r.code)) {
			envelope_end(c);
			return;
		}
		enter_state(c, ST_MAIL);
		if (!c->pipelined)
			put_mail(c);
		return;
	case ST_MAIL:
		c->mail_r = reply_take(c, r);
		if (!c->pipelined && !is2xx(c->mail_r.code)) {
			envelope_end(c);
			return;
		}
		c->rcpt_i = 0;
		enter_state(c, ST_RCPT);
		if (!c->pipelined)
			put_rcpt(c, 0);
		return;
	case ST_RCPT:
		if (is2xx(r->code))
			c->accepted++;
		c->res.rcpt[c->rcpt_i++] = reply_take(c, r);
		if (c->rcpt_i < c->res.n_rcpt) {
			enter_state(c, ST_RCPT);
			if (!c->pipelined)
				put_rcpt(c, c->rcpt_i);
			return;
		}
		if (!c->pipelined && c->accepted == 0) {
			envelope_end(c);
			return;
		}
		enter_state(c, ST_DATA);
		if (!c->pipelined)
			put_lit(c, "DATA\r\n");
		return;
	case ST_DATA:
		c->data_r = reply_take(c, r);
		envelope_end(c);
		return;
	case ST_BODY: /* answered before the end of data: out of step */
		c->usable = false;
		txn_done(c, "data_dot", reply_take(c, r), true);
		return;
	case ST_DOT:
		c->need_rset = false;
		txn_done(c, "data_dot", reply_take(c, r), false);
		return;
	case ST_DUMMY_DOT: {
		c->need_rset = false;
		struct smtp_reply *bad;
		const char *cmd;
		envelope_failed(c, &bad, &cmd);
		txn_done(c, cmd, reply_take(c, bad), false);
		return;
	}
	default:
		return;
	}
}

static void on_reply(struct smtp_client *c, struct smtp_reply *r)
{
	switch (c->state) {
	case ST_BANNER: on_banner(c, r); return;
	case ST_EHLO: on_ehlo(c, r); return;
	case ST_HELO: on_helo(c, r); return;
	case ST_STARTTLS: on_starttls(c, r); return;
	case ST_IDLE: /* unsolicited: the server is closing, or confused */
		c->usable = false;
		fail(c, r, false);
		return;
	case ST_IDLE_QUIT:
		c->usable = false; /* QUIT answered: the server is closing */
		fail_text(c, "4.4.2 idle timeout");
		return;
	case ST_QUIT: smtp_client_free(c); return;
	case ST_RSET:
	case ST_MAIL:
	case ST_RCPT:
	case ST_DATA:
	case ST_BODY:
	case ST_DOT:
	case ST_DUMMY_DOT: on_txn_reply(c, r); return;
	case ST_CONNECTING:
	case ST_HANDSHAKE:
	case ST_DEAD: return;
	}
}

static bool reading(const struct smtp_client *c)
{
	return !c->zombie && c->state != ST_CONNECTING && c->state != ST_HANDSHAKE && c->state != ST_DEAD;
}

/* One reply line: "NNN text", "NNN-text" or "NNN". */
static int parse_line(const char *line, size_t n, int *code, bool *last, const char **text)
{
	if (n < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' || line[2] < '0' ||
	    line[2] > '9')
		return -1;
	*code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	if (n == 3) {
		*last = true;
		*text = line + 3; /* empty */
		return 0;
	}
	if (line[3] != ' ' && line[3] != '-')
		return -1;
	*last = line[3] == ' ';
	*text = line + 4;
	return 0;
}

static int reply_append(struct smtp_client *c, const char *text, size_t n)
{
	size_t need = c->rlen + (c->rlen ? 1 : 0) + n + 1;
	if (need > SMTP_REPLY_MAX)
		return -1;
	if (need > c->rcap) {
		size_t cap = c->rcap ? c->rcap : 256;
		while (cap < need)
			cap *= 2;
		c->rtext = xrealloc(c->rtext, cap);
		c->rcap = cap;
	}
	if (c->rlen)
		c->rtext[c->rlen++] = '\n';
	memcpy(c->rtext + c->rlen, text, n);
	c->rlen += n;
	c->rtext[c->rlen] = '\0';
	return 0;
}

static void on_input(struct smtp_client *c)
{
	while (reading(c)) {
		struct evbuffer *in = bufferevent_get_input(c->bev);
		size_t eol_len = 0;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
		if (p.pos < 0) {
			if (evbuffer_get_length(in) > SMTP_REPLY_LINE_MAX + 1)
				conn_lostf(c, "4.4.2 reply line from %s longer than %d bytes", c->peer,
					   SMTP_REPLY_LINE_MAX);
			return;
		}
		if ((size_t)p.pos > SMTP_REPLY_LINE_MAX) {
			conn_lostf(c, "4.4.2 reply line from %s longer than %d bytes", c->peer, SMTP_REPLY_LINE_MAX);
			return;
		}
		char line[SMTP_REPLY_LINE_MAX + 1];
		size_t n = (size_t)p.pos;
		evbuffer_remove(in, line, n);
		evbuffer_drain(in, eol_len);
		line[n] = '\0';
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
				line[i] = '?'; /* NUL and friends would cut or garble the text */
		int code;
		bool last;
		const char *text;
		if (parse_line(line, n, &code, &last, &text) < 0 || (c->rcode && code != c->rcode)) {
			conn_lostf(c, "4.4.2 malformed reply from %s", c->peer);
			return;
		}
		c->rcode = code;
		if (reply_append(c, text, n - (size_t)(text - line)) < 0) {
			conn_lostf(c, "4.4.2 reply from %s longer than %d bytes", c->peer, SMTP_REPLY_MAX);
			return;
		}
		if (!last)
			continue;
		struct smtp_reply r = { c->rcode, c->rtext ? c->rtext : xstrdup("") };
		c->rcode = 0;
		c->rtext = NULL;
		c->rlen = c->rcap = 0;
		on_reply(c, &r);
		free(r.text); /* NULL when a handler kept it */
	}
}

/* ---- event entry points ------------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct smtp_client *c = arg;
	enter(c);
	on_input(c);
	leave(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct smtp_client *c = arg;
	enter(c);
	if (c->state == ST_BODY && !c->zombie) {
		arm(c, c->to.data); /* progress */
		body_more(c);
	}
	leave(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct smtp_client *c = arg;
	enter(c);
	if (what & BEV_EVENT_CONNECTED) {
		if (c->state == ST_CONNECTING) {
			int one = 1;
			evutil_socket_t fd = bufferevent_getfd(bev);
			if (fd >= 0)
				setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
			c->usable = true;
			enter_state(c, ST_BANNER);
		} else if (c->state == ST_HANDSHAKE) {
			tls_done(c);
		}
	} else if (c->state == ST_HANDSHAKE) {
		tls_failed(c, bev, what);
	} else if (c->state == ST_CONNECTING) {
		int e = EVUTIL_SOCKET_ERROR();
		conn_lostf(c, "4.4.1 connection to %s failed: %s", c->peer,
			   e ? evutil_socket_error_to_string(e) : "unknown error");
	} else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (what & BEV_EVENT_EOF)
			on_input(c); /* a last reply may precede the close */
		if (!c->zombie) {
			char why[300] = "connection closed by peer";
			if (!(what & BEV_EVENT_EOF)) {
				unsigned long e = bufferevent_get_openssl_error(bev);
				int se = EVUTIL_SOCKET_ERROR();
				if (e) {
					char s[256];
					ERR_error_string_n(e, s, sizeof s);
					snprintf(why, sizeof why, "TLS error: %s", s);
					while (bufferevent_get_openssl_error(bev))
						;
				} else {
					snprintf(why, sizeof why, "connection error: %s",
						 se ? evutil_socket_error_to_string(se) : "unknown");
				}
			}
			if (c->state == ST_IDLE)
				conn_lostf(c, "4.4.2 %s while idle", why);
			else if (c->state == ST_BODY)
				conn_lostf(c, "4.4.2 %s while sending message data", why);
			else if (c->state == ST_BANNER)
				conn_lostf(c, "4.4.2 %s before the banner", why);
			else
				conn_lostf(c, "4.4.2 %s while waiting for %s reply", why, step_name(c->state));
		}
	}
	leave(c);
}

static void timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	struct smtp_client *c = arg;
	enter(c);
	if (c->pending_fail) {
		char *text = c->pending_fail;
		c->pending_fail = NULL;
		c->usable = false;
		fail_text(c, text);
		free(text);
	} else {
		switch (c->state) {
		case ST_IDLE:
			put_lit(c, "QUIT\r\n");
			enter_state(c, ST_IDLE_QUIT);
			break;
		case ST_CONNECTING:
			conn_lostf(c, "4.4.1 timeout connecting to %s", c->peer);
			break;
		case ST_BANNER:
			conn_lostf(c, "4.4.2 timeout waiting for banner from %s", c->peer);
			break;
		case ST_HANDSHAKE:
			conn_lostf(c, "4.7.5 timeout in TLS handshake with %s", c->peer);
			break;
		case ST_BODY:
			conn_lostf(c, "4.4.2 timeout sending message data to %s", c->peer);
			break;
		case ST_IDLE_QUIT:
		case ST_QUIT:
			conn_lost(c, "");
			break;
		case ST_DEAD:
			break;
		default:
			conn_lostf(c, "4.4.2 timeout waiting for %s reply", step_name(c->state));
			break;
		}
	}
	leave(c);
}

/* ---- API ---------------------------------------------------------------- */

struct smtp_client *smtp_client_connect(struct event_base *base, const struct sockaddr *addr, socklen_t alen,
					const struct smtp_client_opts *o, SSL_CTX *verify_ctx,
					SSL_CTX *insecure_ctx, const struct smtp_client_cbs *cbs, void *arg)
{
	struct smtp_client *c = xcalloc(1, sizeof *c);
	c->base = base;
	c->ehlo_name = xstrdup(o->ehlo_name && o->ehlo_name[0] ? o->ehlo_name : "localhost");
	for (char *p = c->ehlo_name; *p; p++)
		if ((unsigned char)*p <= 0x20 || *p == 0x7f)
			*p = '-'; /* one word on one line */
	c->peer_name = o->peer_name ? xstrdup(o->peer_name) : NULL;
	c->tls = o->tls;
	c->to = o->timeouts;
	if (cbs)
		c->cbs = *cbs;
	c->arg = arg;
	if (verify_ctx && SSL_CTX_up_ref(verify_ctx))
		c->verify_ctx = verify_ctx;
	if (insecure_ctx && SSL_CTX_up_ref(insecure_ctx))
		c->insecure_ctx = insecure_ctx;
	netaddr_format(addr, c->peer, sizeof c->peer);
	c->timer = evtimer_new(base, timer_cb, c);
	c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!c->timer || !c->bev)
		abort(); /* only allocation fails here */
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	c->state = ST_CONNECTING;
	if (bufferevent_socket_connect(c->bev, (struct sockaddr *)addr, (int)alen) < 0) {
		int e = errno;
		c->pending_fail = xasprintf("4.4.1 connection to %s failed: %s", c->peer,
					    e ? strerror(e) : "cannot connect");
		struct timeval now = { 0, 0 };
		evtimer_add(c->timer, &now);
		return c;
	}
	arm(c, c->to.connect);
	return c;
}

bool smtp_client_idle(const struct smtp_client *c)
{
	return c && !c->zombie && c->state == ST_IDLE && c->usable;
}

int smtp_client_send(struct smtp_client *c, const struct smtp_msg *m)
{
	char err[128];
	if (!smtp_client_idle(c) || smtp_msg_check(m, err, sizeof err) < 0)
		return -1;
	txn_reset(c);
	c->msg = m;
	c->res.n_rcpt = m->n_recipients;
	c->res.rcpt = xcalloc(m->n_recipients, sizeof *c->res.rcpt);
	c->pipelined = (c->ext & SMTP_EXT_PIPELINING) != 0;
	c->sent_rset = c->need_rset;
	if (c->sent_rset)
		put_lit(c, "RSET\r\n");
	if (c->pipelined || !c->sent_rset)
		put_mail(c);
	if (c->pipelined) {
		for (size_t i = 0; i < m->n_recipients; i++)
			put_rcpt(c, i);
		put_lit(c, "DATA\r\n");
	}
	enter_state(c, c->sent_rset ? ST_RSET : ST_MAIL);
	return 0;
}

void smtp_client_quit(struct smtp_client *c)
{
	if (!c || c->zombie)
		return;
	memset(&c->cbs, 0, sizeof c->cbs);
	bool in_step = c->usable && c->bev &&
		       (c->state == ST_IDLE || c->state == ST_DEAD || c->state == ST_IDLE_QUIT);
	if (!in_step) {
		smtp_client_free(c);
		return;
	}
	if (c->state != ST_IDLE_QUIT)
		put_lit(c, "QUIT\r\n");
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	enter_state(c, ST_QUIT);
}

const char *smtp_client_tls_version(const struct smtp_client *c)
{
	return c->tls_version;
}

const char *smtp_client_tls_cipher(const struct smtp_client *c)
{
	return c->tls_cipher;
}

unsigned smtp_client_extensions(const struct smtp_client *c)
{
	return c->ext | (c->offered_starttls ? SMTP_EXT_STARTTLS : 0);
}

size_t smtp_client_max_size(const struct smtp_client *c)
{
	return c->max_size;
}

bool smtp_client_esmtp(const struct smtp_client *c)
{
	return c->esmtp;
}

const char *smtp_client_peer(const struct smtp_client *c)
{
	return c->peer;
}

SSL_CTX *smtp_client_ssl_ctx(bool verify, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		goto fail;
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
		goto fail;
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
	if (verify) {
		if (SSL_CTX_set_default_verify_paths(ctx) != 1)
			goto fail;
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
fail:;
	unsigned long e = ERR_get_error();
	char buf[256];
	ERR_error_string_n(e, buf, sizeof buf);
	ERR_clear_error();
	snprintf(err, errlen, "TLS client context: %s", e ? buf : "unknown error");
	SSL_CTX_free(ctx);
	return NULL;
}
