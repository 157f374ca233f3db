/* kumo-smtpd private header: one worker process, one libevent loop, many
 * sessions.  Connection state (struct session) and transaction state
 * (struct txn) are separate; a transaction lives from MAIL to RSET, the end
 * of DATA or the disconnect.  A session waiting on policyd or the spool is
 * parked: it reads nothing until the answer comes, so pipelined commands
 * are answered in order. */
#ifndef KUMO_SMTPD_H
#define KUMO_SMTPD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "lib/addr.h"
#include "lib/cidr.h"
#include "lib/logrec.h"
#include "lib/params.h"
#include "spool/spool.h"

/* ---- command parsing (smtpd_parse.c, pure) ---- */
enum verb {
	V_NONE = 0, V_EHLO, V_HELO, V_MAIL, V_RCPT, V_DATA, V_RSET, V_NOOP, V_QUIT,
	V_STARTTLS, V_AUTH, V_XCLIENT, V_OTHER, V__COUNT
};

enum parse_status {
	PARSE_OK = 0,
	PARSE_UNKNOWN,      /* 502 5.5.1 Command unimplemented */
	PARSE_SYNTAX,       /* 501 Syntax error in command or arguments */
	PARSE_SYNTAX_DIAG,  /* 501 Syntax error in command or arguments: <diag> */
	PARSE_BAD_SENDER,   /* 501 5.1.7 Bad sender's mailbox address syntax */
	PARSE_BAD_RCPT,     /* 501 5.1.3 Invalid recipient address syntax */
	PARSE_BAD_UTF8,     /* 501 5.5.2 Invalid UTF-8 in command */
	PARSE_BAD_PARAM,    /* 501 5.5.4 with diag: bad ESMTP parameter */
};

struct smtp_cmd {
	enum verb verb;
	const char *arg;       /* points into the line: the rest after the verb */
	size_t arglen;
	struct smtp_addr addr; /* MAIL/RCPT: owned, free with smtp_cmd_free */
	bool has_size;         /* MAIL: SIZE= given */
	uint64_t size;
	char diag[160];        /* PARSE_SYNTAX_DIAG/PARSE_BAD_PARAM detail */
};

/* line excludes the CRLF. */
enum parse_status smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *cmd);
void smtp_cmd_free(struct smtp_cmd *cmd);
bool utf8_valid(const char *s, size_t len);

/* ---- DATA reader (smtpd_data.c, pure) ---- */
enum dr_state { DR_BOL = 0, DR_MID, DR_CR, DR_DOT, DR_DOTCR, DR_DONE };

struct data_reader {
	enum dr_state state;
	size_t max_size;     /* bytes beyond this are counted, not kept */
	size_t max_line;     /* octets per line, excluding CRLF */
	enum invalid_line_endings ile;
	size_t size;         /* unstuffed bytes seen (kept or not) */
	size_t line_len;
	bool too_big;
	bool line_too_long;
	bool bad_line_endings; /* a bare CR or LF was seen */
};

void data_reader_init(struct data_reader *r, size_t max_size, size_t max_line,
		      enum invalid_line_endings ile);
/* Consumes bytes of in[0..len) up to and including the terminating
 * CRLF.CRLF, appending the unstuffed message to out (bare CR/LF rewritten
 * to CRLF in Fix mode).  Returns the bytes consumed; r->state is DR_DONE
 * once the terminator was read. */
size_t data_reader_feed(struct data_reader *r, const char *in, size_t len, struct evbuffer *out);

/* ---- policyd client (smtpd_policy.c) ---- */
struct policy_client;
/* reply is the whole reply frame (ok/result/...), or NULL with error set.
 * The client frees it after the callback, which may take members out of it
 * with policy_reply_take rather than copy them. */
typedef void (*policy_cb)(void *ctx, const cJSON *reply, const char *error);
/* The member key of a reply, detached (the caller owns it), or NULL. */
cJSON *policy_reply_take(const cJSON *reply, const char *key);
/* Takes obj's "meta_set" (lib/ipc.h) into meta: each name it has replaced
 * where it is, or added at the end, as policyd set them. */
void policy_meta_apply(cJSON *meta, const cJSON *obj);
#define POLICY_TIMEOUT "policy call timed out" /* the error of a late call */

struct policy_client *policy_client_new(struct event_base *base, const char *sockname,
					const cJSON *handlers);
void policy_client_free(struct policy_client *pc);

/* smtpd_qmgr.c: notices of stored messages to kumo-qmgr */
struct spool_job;
struct qmgr_client;
struct qmgr_client *qmgr_client_new(struct event_base *base, const char *sockname);
void qmgr_notify(struct qmgr_client *qc, const struct spool_item *const *items, size_t n);
/* deferred_spool: hands the job's messages to kumo-qmgr in memory.  0: the
 * job's done callback runs when it answers (items' result 0 when it holds
 * them, -1 with err when not); -1: not possible now (not connected, too
 * big), nothing happened and the caller stores the job durably. */
int qmgr_inject(struct qmgr_client *qc, struct spool_job *job);
void qmgr_client_free(struct qmgr_client *qc);
/* The events kumo-smtpd asks about before it sends them (policy_has_ev):
 * a bit each, set from the handler list, instead of comparing names. */
enum policy_ev {
	PEV_CONNECTION_ACCEPTED,
	PEV_EHLO,
	PEV_MAIL_FROM,
	PEV_RCPT_TO,
	PEV_DATA,
	PEV_MESSAGE_RECEIVED,
	PEV_REWRITE_RESPONSE,
	PEV_AUTH_PLAIN,
	PEV_GET_DYNAMIC_PARAMETERS,
	PEV_GET_LISTENER_DOMAIN,
	PEV_COUNT
};
/* Whether the policy has a handler for ev. */
bool policy_has_ev(const struct policy_client *pc, enum policy_ev ev);
/* Sends an event; args is consumed, and printed before this returns (so it
 * may hold references to the caller's objects).  The callback runs exactly
 * once (from the loop, never inside this call) unless policy_cancel is
 * called first. */
uint64_t policy_call(struct policy_client *pc, const char *event, cJSON *args, int meta_pos,
		     const cJSON *meta, double timeout, policy_cb cb, void *ctx);
/* The same with "then" (lib/ipc.h), consumed likewise: the event to run
 * next if this one returns ok; its reply, if policyd ran it, is the
 * reply's "then". */
uint64_t policy_call_then(struct policy_client *pc, const char *event, cJSON *args, int meta_pos,
			  const cJSON *meta, cJSON *then, double timeout, policy_cb cb, void *ctx);
/* The "then" object for event with args (consumed), the connection
 * metadata at meta_pos. */
cJSON *policy_then(const char *event, cJSON *args, int meta_pos);
void policy_cancel(struct policy_client *pc, uint64_t id);
/* For a call whose arguments include a message passed with "fetch" (lib/ipc.h):
 * when policyd asks for the bytes ("msg_file"), cb(ctx of the call) writes
 * them to a file and returns its path, or NULL with err set. */
typedef const char *(*policy_file_cb)(void *ctx, char *err, size_t errlen);
void policy_set_msg_file(struct policy_client *pc, uint64_t id, policy_file_cb cb);

/* ---- spool writer thread (smtpd_spool.c) ---- */
struct spool_job;
typedef void (*spool_done_cb)(struct spool_job *job, void *ctx);
struct spool_job {
	struct spool_job *next;
	struct spool_item *items;   /* owned array */
	size_t n;
	size_t failed;
	spool_done_cb done;
	void *ctx;
	bool in_memory;             /* handed to kumo-qmgr (deferred_spool), not stored */
	/* The reply to send the client on early_fd as soon as the commit has
	 * stored every item, from the writer thread (see store()); NULL: none.
	 * early_sent: how many of its bytes the writer sent. */
	char *early;                /* owned */
	size_t early_len, early_sent;
	int early_fd;
};
struct spool_writer;
struct spool_writer *spool_writer_new(struct event_base *base, struct spool *spool);
/* Where the writer counts its commits from now on (lib/ipc.h); NULL: nowhere. */
struct ipc_commit_stats;
void spool_writer_set_stats(struct spool_writer *w, struct ipc_commit_stats *stats);
void spool_writer_submit(struct spool_writer *w, struct spool_job *job);
void spool_writer_free(struct spool_writer *w);  /* finishes queued jobs first */

/* ---- the worker ---- */
struct listener {
	int index;
	cJSON *table;                 /* owned: the start_esmtp_listener table */
	struct listener_params base;  /* the table applied over defaults (no peer/via) */
	struct evconnlistener *evl;
	struct ssl_ctx_st *self_signed; /* owned: context with kumod's self-signed cert */
	char listen_str[64];
	struct event *resume;         /* owned: re-enables evl after a fair-share pause */
};

struct smtpd {
	struct event_base *base;
	struct listener *listeners;
	size_t n_listeners;
	struct policy_client *policy;
	struct qmgr_client *qmgr;
	struct spool spool;
	struct spool_writer *writer;
	struct logrec logs;
	int worker;
	bool draining;
	struct session *sessions;     /* all live sessions (doubly linked) */
	struct session *flushq;       /* plain sessions with replies to write */
	struct event *flush_ev;       /* owned: writes them, once per loop pass */
	size_t n_sessions;
	uint64_t next_sid;
	struct event *sigterm_ev, *sigint_ev, *drain_timer;
	uint64_t *counters;           /* shared [workers][listeners], see lib/ipc.h */
	int n_workers;
};

extern struct smtpd *smtpd;

enum disc_mode { DISC_NONE = 0, DISC_IF421, DISC_FORCE, DISC_FOLLOW421 };

struct rcpt {
	struct smtp_addr addr;
};

/* One message made from a transaction at the end of DATA: a batch of
 * recipients (one each, or one per domain), its id, meta and the edits
 * the policy made to the bytes. */
struct batch {
	char id[SPOOL_ID_LEN + 1];
	char *sender;            /* owned */
	cJSON *recipients;       /* owned: array of email strings */
	cJSON *meta;             /* owned: message meta */
	char *prefix;            /* owned or NULL: bytes before the message */
	char *headers;           /* owned or NULL: replaces [0,hdr_end) */
	char *data;              /* owned or NULL: replaces everything */
	size_t data_len;
	struct iovec *iov;       /* owned: what is stored */
	int iovcnt;
	size_t size;             /* bytes stored */
	char *meta_text;         /* owned: the meta spool file's JSON */
	bool discard;            /* queue 'null': logged, not stored */
};

struct txn {
	struct smtp_addr sender;
	struct rcpt *rcpts;      /* owned */
	size_t n_rcpts, cap_rcpts;
	struct evbuffer *body;   /* owned: the unstuffed message */
	struct data_reader dr;
	/* end of DATA (smtpd_message.c) */
	struct batch proto;      /* the whole transaction, as smtp_server_data sees it */
	struct batch *batches;   /* owned */
	size_t n_batches, cur;
	struct iovec *vec;       /* owned: the body as iovecs */
	int nvec;
	long long hdr_end;       /* see lib/ipc.h; -1: no blank line */
	char *msg_path;          /* owned: file policyd reads the bytes from */
	/* smtp_server_message_received sent along with smtp_server_data
	 * ("then"), for a transaction that is one message */
	char first_id[SPOOL_ID_LEN + 1]; /* that message's id, "" if not sent */
	char *first_received;    /* owned: its Received header, or NULL */
	cJSON *then_reply;       /* owned: its reply, once data's came back */
};

/* Replies a session may have unwritten before its commands wait. */
#define REPLY_BACKLOG_MAX (64u * 1024u)

enum sess_state { SS_CMD = 0, SS_DATA, SS_WAIT, SS_PROXY, SS_CLOSING, SS_DEAD };

struct session {
	struct session *prev, *next;
	uint64_t sid;
	char session_id[37];           /* uuid, in log records */
	struct listener *listener;
	struct bufferevent *bev;
	struct listener_params p;      /* effective parameters */
	struct sockaddr_storage peer, local;
	struct cidr peer_ip, local_ip;
	char peer_str[64], local_str[64], peer_ip_str[48];
	cJSON *meta;                   /* owned: connection metadata */
	char *ehlo_domain;             /* owned */
	enum sess_state state;
	struct txn *txn;               /* owned */
	size_t mail_count;             /* MAIL FROM commands on this connection */
	uint64_t policy_req;           /* in flight, 0 if none */
	bool spool_pending;            /* a job is at the writer */
	bool early_pending;            /* ... whose reply the writer may send on our socket */
	bool early_fd_held;            /* closed: the socket waits for that job to return */
	size_t early_skip;             /* bytes of the next reply the writer already sent */
	bool discarding_line;          /* skipping an over-long command line */
	bool pumping;                  /* inside session_resume's loop */
	bool tls;                      /* STARTTLS done (or under way) */
	bool authenticated;            /* AUTH PLAIN succeeded */
	bool reevaluating;             /* XCLIENT: dynamic parameters again */
	bool auth_pending;             /* the next line answers "334 " */
	bool tls_closed;               /* close_notify sent (or not to be sent) */
	struct evbuffer_cb_entry *under_cb; /* waiting for the socket buffer to drain */
	struct session *flush_next;    /* on smtpd->flushq while flush_queued */
	bool flush_queued;             /* replies to write at the end of this loop pass */
	bool flush_held;               /* replies kept back while a hook for the next pipelined
					* command runs (session_flush_all) */
	bool write_blocked;            /* commands wait: replies past REPLY_BACKLOG_MAX */
	struct event *close_ev;        /* owned: runs close_check from the loop */
	/* smtp_server_rcpt_to for the pipelined RCPT after a MAIL, sent along
	 * with smtp_server_mail_from (lib/ipc.h "then") */
	char *then_rcpt;               /* owned: that RCPT's address, or NULL */
	cJSON *then_reply;             /* owned: its reply, until that RCPT runs */
	/* current command, for rewrite_response and Rejection records */
	char *cur_cmd;                 /* owned */
	/* a reply waiting for smtp_server_rewrite_response */
	int pend_code;
	char *pend_text;               /* owned */
	enum disc_mode pend_mode;
	void (*after_reply)(struct session *s); /* continuation once written */
	struct event *timer;           /* client_timeout / drain */
};

/* smtpd_session.c */
void session_accept(struct listener *l, int fd, struct sockaddr *sa, int salen);
void session_reply(struct session *s, int code, const char *text, enum disc_mode mode,
		   void (*after)(struct session *s));
void session_resume(struct session *s);   /* unpark and process buffered input */
void session_close(struct session *s);
void session_free(struct session *s);   /* no-op while something is in flight */
/* Common handling of a policy event reply: 1 = go on (result ok, conn meta
 * updated); 0 = the session was answered (reject/error) or has gone. */
int session_event_result(struct session *s, const cJSON *reply, const char *error,
			 const char *event, bool reject_ends_session);
void session_technical_difficulties(struct session *s, const char *why);
void smtpd_drain_sessions(void);

void session_set_callbacks(struct session *s);
/* The loop-pass write of queued replies (smtpd->flush_ev's callback). */
void session_flush_all(evutil_socket_t fd, short what, void *arg);
void close_after_flush(struct session *s);
void session_reevaluate(struct session *s);
/* New client/local addresses (XCLIENT, PROXY): meta, originals kept. */
void session_set_addresses(struct session *s, const struct sockaddr_storage *peer,
			   const struct sockaddr_storage *local);
void session_after_proxy(struct session *s);

/* smtpd_tls.c */
/* self_signed: kumod's "tls_self_signed"; vault: its "tls_vault" */
void tls_setup(const cJSON *self_signed, const cJSON *vault);
void tls_teardown(void);
bool tls_available(struct session *s);
void run_starttls(struct session *s, struct smtp_cmd *cmd);

/* smtpd_proxy.c */
#define PROXY_MAX 552 /* v1 is at most 107 bytes; v2 here at most 16 + 536 */
struct proxy_result {
	bool local;                  /* keep the real addresses */
	struct sockaddr_storage src, dst;
};
/* 1: a header of *used bytes; 0: need more; -1: not a valid header */
int proxy_parse(const uint8_t *buf, size_t len, struct proxy_result *out, size_t *used);
void proxy_input(struct session *s);

/* smtpd_xclient.c */
void run_xclient(struct session *s, struct smtp_cmd *cmd);

/* smtpd_auth.c */
void run_auth(struct session *s, struct smtp_cmd *cmd);
void auth_response(struct session *s, const char *line, size_t len);
size_t auth_line_max(void);

/* smtpd_message.c: the end of DATA */
void data_complete(struct session *s);
void message_free(struct txn *t);

/* smtpd_cmd.c */
void cmd_dispatch(struct session *s, const char *line, size_t len);
void txn_free(struct txn *t);
void txn_reset(struct session *s);
cJSON *addr_arg(const struct smtp_addr *a);
void reply_ok(struct session *s, int code, const char *text);
void replyf(struct session *s, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* reply_ok with the text a, b and c put together (cut at 1199 bytes, as
 * replyf), without printf: for the replies every message gets. */
void reply_cat(struct session *s, int code, const char *a, const char *b, const char *c);
void data_input(struct session *s);
#endif
