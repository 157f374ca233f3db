/* qmgr_smtp: the outbound SMTP client the queue manager delivers with.
 *
 * One struct smtp_client is one connection to one next-hop address, driven
 * by libevent (a socket bufferevent, wrapped in a bufferevent_openssl filter
 * after STARTTLS).  It connects, reads the banner, says EHLO (HELO when EHLO
 * gets a 5xx), upgrades with STARTTLS as enum tls_mode asks (KumoMTA's
 * enable_tls), says EHLO again, and calls ready().  The owner then hands it
 * transactions one at a time with smtp_client_send(); each ends in done().
 * Nothing here logs: every outcome reaches the owner as a struct smtp_reply
 * (the server's, or a synthesized one) and the owner logs it once.
 *
 * Callback rules:
 *  - No callback runs from inside smtp_client_connect / smtp_client_send /
 *    smtp_client_quit / smtp_client_free; they all come from the event loop.
 *  - Inside any callback the owner may call smtp_client_send (from ready or
 *    done), smtp_client_quit or smtp_client_free on this client.
 *  - After failed(), or after a done() whose result has connection_failed,
 *    the client is dead: smtp_client_send returns -1 and the owner must call
 *    smtp_client_quit (polite when the connection is still in step, e.g.
 *    after a 554 banner or a missing STARTTLS) or smtp_client_free.
 *
 * Idle rule: the client is idle from ready() and from the end of each
 * transaction until the next smtp_client_send().  If it stays idle for
 * timeouts.idle seconds, it sends QUIT, waits up to timeouts.rset seconds
 * for the reply or the close, and then calls failed() with
 * 421 "4.4.2 idle timeout" (permanent false).  Meanwhile
 * smtp_client_idle() is false and smtp_client_send() returns -1.  The peer
 * closing, or sending any reply, while the client is idle also ends in
 * failed() (with a synthesized 421, or the server's own reply).
 *
 * Transactions: MAIL FROM (with SIZE= when the server offers SIZE,
 * BODY=8BITMIME when the data has 8-bit bytes and the server offers
 * 8BITMIME, SMTPUTF8 when an address is not ASCII and the server offers
 * it), one RCPT TO per recipient, DATA, the dot-stuffed data, ".".  With
 * PIPELINING offered, RSET (when needed), MAIL, every RCPT and DATA go out
 * in one write and the replies are read in order (RFC 2920); otherwise each
 * command waits for the previous reply and nothing follows a failed MAIL or
 * a set of RCPTs that all failed.  If DATA was pipelined and answered 354
 * although MAIL or every RCPT failed, a lone "." is sent and its reply
 * discarded (RFC 2920 3.1).  RSET precedes a transaction only when the
 * previous one left the server's transaction open (MAIL accepted, no end
 * of data reached).  A 421 reply to any command ends the transaction with
 * connection_failed set.
 *
 * Dot-stuffing: a "." is inserted before every "." that starts the data or
 * follows a LF (CRLF or bare LF: a bare "\n." could end the message at a
 * lenient receiver otherwise, the way KumoMTA stuffs).  "\r\n" is appended
 * when the data does not end with CRLF, then ".\r\n".
 *
 * Limits: a reply line of more than SMTP_REPLY_LINE_MAX bytes, a reply of
 * more than SMTP_REPLY_MAX bytes, a malformed reply line or continuation
 * lines with another code are connection failures (synthesized 421).
 * Control characters in replies become '?'.
 *
 * The process must ignore SIGPIPE (libevent writes with writev).
 */
#ifndef KUMO_QMGR_SMTP_H
#define KUMO_QMGR_SMTP_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#define SMTP_REPLY_LINE_MAX 4096   /* bytes of one reply line, without CRLF */
#define SMTP_REPLY_MAX (64 * 1024) /* bytes of one (multi-line) reply */
#define SMTP_ADDR_MAX 1000         /* bytes of an envelope address */

/* KumoMTA's enable_tls values */
enum tls_mode { TLS_OPPORTUNISTIC, TLS_OPPORTUNISTIC_INSECURE, TLS_REQUIRED, TLS_REQUIRED_INSECURE, TLS_DISABLED };
/* "Opportunistic", "OpportunisticInsecure", "Required", "RequiredInsecure",
 * "Disabled" (exact spelling).  0, or -1 for anything else. */
int tls_mode_parse(const char *s, enum tls_mode *out);
/* The KumoMTA spelling of m ("?" if out of range). */
const char *tls_mode_name(enum tls_mode m);

/* Seconds for each step; 0 or less means no limit.  KumoMTA's
 * make_egress_path defaults in ().  Each timer covers the wait for one
 * reply (a pipelined batch re-arms it per reply), except: connect (TCP
 * connect), starttls (the 220 and then, again, the handshake), data (while
 * the message is being written: re-armed whenever the output drains) and
 * data_dot (from the last byte queued to the reply to "."). */
struct smtp_timeouts {
	double connect;   /* 60 */
	double banner;    /* 60 */
	double ehlo;      /* 300, also HELO */
	double mail_from; /* 300 */
	double rcpt_to;   /* 300 */
	double data;      /* 300 */
	double data_dot;  /* 300 */
	double rset;      /* 5, also the QUIT reply */
	double idle;      /* 5 */
	double starttls;  /* 5 */
};
void smtp_timeouts_default(struct smtp_timeouts *t);

struct smtp_client_opts {
	const char *ehlo_name;        /* our host name for EHLO/HELO; copied */
	const char *peer_name;        /* MX host name: SNI and certificate name check; copied; may be NULL
				       * (then a verifying mode checks the chain only) */
	enum tls_mode tls;
	struct smtp_timeouts timeouts;
};

struct smtp_reply {
	int code;   /* 200..599, or 0: no reply (never sent, or not answered) */
	char *text; /* owned: the text after the code, lines joined with "\n" ("2.0.0 Ok: queued as X") */
};

/* One transaction; not owned by the client, must live until done() (or
 * until the client is freed). */
struct smtp_msg {
	const char *sender;               /* reverse path without <>, "" for the null sender */
	const char *const *recipients;    /* forward paths without <> */
	size_t n_recipients;              /* at least 1 */
	const char *data;                 /* the message, CRLF line endings */
	size_t len;
};

struct smtp_result {
	/* static string naming the step that answered last: "RSET",
	 * "MAIL FROM", "RCPT TO", "DATA" or "data_dot" */
	const char *command;
	/* the reply that decides the transaction: to the end of data; or the
	 * failing RSET/MAIL/DATA reply; or, when every RCPT failed, the last
	 * RCPT failure; or a synthesized 421 for a connection failure
	 * ("4.4.2 connection closed by peer", "4.4.2 timeout waiting for
	 * data_dot reply", ...) */
	struct smtp_reply final;
	/* owned array of n_recipients: each RCPT's reply, code 0 if never sent
	 * or not answered.  A recipient is delivered iff its code and
	 * final.code are both 2xx. */
	struct smtp_reply *rcpt;
	size_t n_rcpt;
	bool connection_failed; /* the connection is unusable after this */
};
/* Frees what r owns and zeroes it; accepts NULL. */
void smtp_result_clear(struct smtp_result *r);

struct smtp_client;

struct smtp_client_cbs {
	/* connected, banner 2xx, EHLO (or HELO) done, TLS done as the mode
	 * requires: ready for smtp_client_send */
	void (*ready)(struct smtp_client *c, void *arg);
	/* the connection failed before ready, or the session ended (peer
	 * closed, idle timeout, unsolicited reply) while idle.  why: the
	 * server's banner/EHLO/HELO/STARTTLS reply, or a synthesized 421 (its
	 * text starts with an enhanced code: 4.4.1 connect, 4.4.2 closed or
	 * timed out, 4.7.5 TLS handshake, 4.7.10 TLS Required but not
	 * offered).  permanent: the server answered 5xx to the banner or to
	 * both EHLO and HELO.  why is valid only during the call.  The owner
	 * must then free (or quit) the client. */
	void (*failed)(struct smtp_client *c, const struct smtp_reply *why, bool permanent, void *arg);
	/* a transaction finished (success or not).  r belongs to the client and
	 * is cleared when done() returns; to keep it, copy the struct and zero
	 * *r (then smtp_result_clear the copy later). */
	void (*done)(struct smtp_client *c, const struct smtp_msg *m, struct smtp_result *r, void *arg);
};

/* Starts connecting to addr.  verify_ctx serves Opportunistic and Required,
 * insecure_ctx the *Insecure modes (see smtp_client_ssl_ctx); either may be
 * NULL when the mode does not need it (a needed NULL context makes STARTTLS
 * fail like a handshake).  The client takes its own references.  Never
 * NULL: every failure, even an immediate one, arrives later through
 * failed(). */
struct smtp_client *smtp_client_connect(struct event_base *base, const struct sockaddr *addr, socklen_t alen,
					const struct smtp_client_opts *o, SSL_CTX *verify_ctx,
					SSL_CTX *insecure_ctx, const struct smtp_client_cbs *cbs, void *arg);
/* Whether smtp_client_send would take m: a recipient at least, every
 * address at most SMTP_ADDR_MAX bytes without control characters or angle
 * brackets.  0, or -1 with a reason. */
int smtp_msg_check(const struct smtp_msg *m, char *err, size_t errlen);
/* Starts a transaction.  -1 (and nothing sent) unless the client is idle
 * (see smtp_client_idle), or when m has no recipient or an address longer
 * than SMTP_ADDR_MAX or with a control character (see smtp_msg_check). */
int smtp_client_send(struct smtp_client *c, const struct smtp_msg *m);
/* true when smtp_client_send would be accepted now */
bool smtp_client_idle(const struct smtp_client *c);
/* No more callbacks.  When the session is idle, or dead but still in step
 * with the server, sends QUIT and frees itself after the reply, the close
 * or timeouts.rset seconds; otherwise (mid-transaction, mid-handshake,
 * connection gone) it is the same as smtp_client_free.  A client quitting
 * holds events on its base until then. */
void smtp_client_quit(struct smtp_client *c);
/* Drops the connection at once; no more callbacks.  Accepts NULL. */
void smtp_client_free(struct smtp_client *c);

/* After ready: the TLS protocol version and cipher (IANA name), e.g.
 * "TLSv1.3" and "TLS_AES_256_GCM_SHA384", or NULL without TLS. */
const char *smtp_client_tls_version(const struct smtp_client *c);
const char *smtp_client_tls_cipher(const struct smtp_client *c);

/* What the last EHLO reply offered (STARTTLS: what the first one did). */
#define SMTP_EXT_PIPELINING 0x01u
#define SMTP_EXT_STARTTLS 0x02u
#define SMTP_EXT_SIZE 0x04u
#define SMTP_EXT_8BITMIME 0x08u
#define SMTP_EXT_SMTPUTF8 0x10u
unsigned smtp_client_extensions(const struct smtp_client *c);
/* The SIZE parameter offered, 0 when none (or none given). */
size_t smtp_client_max_size(const struct smtp_client *c);
/* false after a HELO fallback */
bool smtp_client_esmtp(const struct smtp_client *c);
/* "ip:port" / "[ipv6]:port" of the peer */
const char *smtp_client_peer(const struct smtp_client *c);

/* A client context: TLS 1.2 and later; verify: the system CA store
 * (SSL_CTX_set_default_verify_paths) and SSL_VERIFY_PEER, the host name
 * check on peer_name being set per connection; !verify: no verification.
 * NULL with a reason. */
SSL_CTX *smtp_client_ssl_ctx(bool verify, char *err, size_t errlen);

#endif
