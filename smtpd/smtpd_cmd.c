/* smtpd_cmd: the SMTP verbs.  Each verb is a row of verb_table: the verb, a
 * check that needs no policy (sequence, limits), and the step that runs
 * once policy agrees.  Entry point: cmd_dispatch (one command line), and
 * data_input (bytes while in DATA).  Every handler ends by calling
 * session_reply, whose continuation resumes the pump. */
#include "smtpd/smtpd.h"
#include "lib/str.h"
#include "lib/jadd.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct verb_row {
	enum verb verb;
	void (*run)(struct session *s, struct smtp_cmd *cmd);
};

void reply_ok(struct session *s, int code, const char *text)
{
	session_reply(s, code, text, DISC_NONE, session_resume);
}

void replyf(struct session *s, int code, const char *fmt, ...)
{
	char text[1200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	reply_ok(s, code, text);
}

void reply_cat(struct session *s, int code, const char *a, const char *b, const char *c)
{
	char text[1200];
	str_join3(text, sizeof text, a, b, c);
	reply_ok(s, code, text);
}

void txn_free(struct txn *t)
{
	if (!t)
		return;
	addr_free(&t->sender);
	for (size_t i = 0; i < t->n_rcpts; i++)
		addr_free(&t->rcpts[i].addr);
	free(t->rcpts);
	if (t->body)
		evbuffer_free(t->body);
	message_free(t);
	free(t);
}

void txn_reset(struct session *s)
{
	txn_free(s->txn);
	s->txn = NULL;
}

cJSON *addr_arg(const struct smtp_addr *a)
{
	cJSON *o = cJSON_CreateObject();
	jadd_string(o, "__addr", a->email ? a->email : "");
	return o;
}

/* ---------------------------------------------------------------- EHLO/HELO */

struct ehlo_ctx {
	struct session *s;
	char *domain;
	bool esmtp;
	cJSON *extensions;
};

static void ehlo_finish(struct session *s, const char *domain, bool esmtp, const cJSON *ext)
{
	txn_reset(s); /* RFC 5321 4.1.4: a later EHLO resets the state as RSET does */
	free(s->ehlo_domain);
	s->ehlo_domain = xstrdup(domain);
	jdelete(s->meta, "ehlo_domain");
	jadd_string(s->meta, "ehlo_domain", domain);
	if (!esmtp) {
		replyf(s, 250, "Hello %s!", domain);
		return;
	}
	size_t cap = 256, len = 0;
	char *text = xmalloc(cap);
	len = (size_t)snprintf(text, cap, "%s Aloha %s", s->p.hostname, domain);
	const cJSON *e;
	cJSON_ArrayForEach(e, ext) {
		if (!cJSON_IsString(e))
			continue;
		size_t n = strlen(e->valuestring);
		if (len + n + 2 >= cap) {
			cap = (len + n + 2) * 2;
			text = xrealloc(text, cap);
		}
		text[len++] = '\n';
		memcpy(text + len, e->valuestring, n + 1);
		len += n;
	}
	reply_ok(s, 250, text);
	free(text);
}

static void ehlo_done(void *arg, const cJSON *reply, const char *error)
{
	struct ehlo_ctx *c = arg;
	struct session *s = c->s;
	const char *event = c->esmtp ? "smtp_server_ehlo" : "smtp_server_helo";
	if (session_event_result(s, reply, error, "smtp_server_ehlo", false)) {
		const cJSON *ret = jget(reply, "ret");
		const cJSON *ext = c->extensions;
		bool ok = true;
		if (c->esmtp && ret && !cJSON_IsNull(ret)) {
			/* a returned list replaces the advertised extensions */
			if (cJSON_IsArray(ret) || (cJSON_IsObject(ret) && !ret->child)) {
				const cJSON *e;
				cJSON_ArrayForEach(e, ret) ok &= cJSON_IsString(e) && !strpbrk(e->valuestring, "\r\n");
				ext = ret;
			} else {
				ok = false;
			}
		}
		if (ok) {
			ehlo_finish(s, c->domain, c->esmtp, ext);
		} else {
			char why[200];
			snprintf(why, sizeof why, "%s: expected a list of extension strings", event);
			session_technical_difficulties(s, why);
		}
	}
	free(c->domain);
	cJSON_Delete(c->extensions);
	free(c);
}

static cJSON *default_extensions(struct session *s)
{
	cJSON *ext = cJSON_CreateArray();
	cJSON_AddItemToArray(ext, cJSON_CreateString("PIPELINING"));
	cJSON_AddItemToArray(ext, cJSON_CreateString("ENHANCEDSTATUSCODES"));
	cJSON_AddItemToArray(ext, cJSON_CreateString("8BITMIME"));
	cJSON_AddItemToArray(ext, cJSON_CreateString("SMTPUTF8"));
	char size[48];
	snprintf(size, sizeof size, "SIZE %zu", s->p.max_message_size);
	cJSON_AddItemToArray(ext, cJSON_CreateString(size));
	if (tls_available(s))
		cJSON_AddItemToArray(ext, cJSON_CreateString("STARTTLS"));
	else if (s->tls)
		cJSON_AddItemToArray(ext, cJSON_CreateString("AUTH PLAIN"));
	if (s->p.allow_xclient)
		cJSON_AddItemToArray(ext, cJSON_CreateString("XCLIENT ADDR PORT DESTADDR DESTPORT"));
	return ext;
}

static void run_hello(struct session *s, struct smtp_cmd *cmd)
{
	bool esmtp = cmd->verb == V_EHLO;
	char *domain = xstrndup(cmd->arg, cmd->arglen);
	cJSON *ext = esmtp ? default_extensions(s) : cJSON_CreateArray();
	if (!policy_has_ev(smtpd->policy, PEV_EHLO)) {
		ehlo_finish(s, domain, esmtp, ext);
		free(domain);
		cJSON_Delete(ext);
		return;
	}
	struct ehlo_ctx *c = xcalloc(1, sizeof *c);
	c->s = s;
	c->domain = domain;
	c->esmtp = esmtp;
	c->extensions = ext;
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, cJSON_CreateString(domain));
	if (esmtp)
		cJSON_AddItemToArray(args, cJSON_Duplicate(ext, 1));
	s->policy_req = policy_call(smtpd->policy, "smtp_server_ehlo", args, 1, s->meta,
				    s->p.data_processing_timeout, ehlo_done, c);
}

/* ---------------------------------------------------------------- MAIL */

struct addr_ctx {
	struct session *s;
	struct smtp_addr addr;
};

static void mail_accept(struct session *s, struct smtp_addr *sender)
{
	struct txn *t = xcalloc(1, sizeof *t);
	t->sender = *sender;
	memset(sender, 0, sizeof *sender);
	s->txn = t;
	reply_cat(s, 250, "OK <", t->sender.email, ">");
}

static void mail_done(void *arg, const cJSON *reply, const char *error)
{
	struct addr_ctx *c = arg;
	cJSON *then = policy_reply_take(reply, "then");
	if (session_event_result(c->s, reply, error, "smtp_server_mail_from", false)) {
		/* kept before the 250, whose continuation runs the RCPT */
		cJSON_Delete(c->s->then_reply);
		c->s->then_reply = then;
		then = NULL;
		mail_accept(c->s, &c->addr);
	}
	cJSON_Delete(then);
	addr_free(&c->addr);
	free(c);
}

/* smtp_server_rcpt_to for the next command line, to go along with
 * smtp_server_mail_from (lib/ipc.h "then"), or NULL.  Only when that line
 * is already here, is a RCPT that parses, and would reach its hook right
 * after a MAIL that policyd accepts without another policy call in
 * between: relaying allowed without get_listener_domain, and no
 * smtp_server_rewrite_response for the MAIL's 250.  policyd runs it only
 * if the MAIL's handler returned ok, with the metadata that handler left:
 * what the RCPT's hook would see one after the other. */
static cJSON *rcpt_then(struct session *s)
{
	if (!policy_has_ev(smtpd->policy, PEV_RCPT_TO) ||
	    policy_has_ev(smtpd->policy, PEV_REWRITE_RESPONSE) ||
	    s->p.max_recipients_per_message < 1 || s->auth_pending ||
	    !(s->authenticated || params_relay_allowed(&s->p, &s->peer_ip)))
		return NULL;
	struct evbuffer *in = bufferevent_get_input(s->bev);
	size_t eol_len = 0;
	struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
	char line[1024];
	if (eol.pos < 5 || (size_t)eol.pos > s->p.line_length_hard_limit || (size_t)eol.pos >= sizeof line)
		return NULL;
	size_t len = (size_t)eol.pos;
	evbuffer_copyout(in, line, len);
	line[len] = '\0';
	if (strncasecmp(line, "RCPT ", 5) != 0)
		return NULL;
	struct smtp_cmd cmd;
	cJSON *then = NULL;
	if (smtp_cmd_parse(line, len, &cmd) == PARSE_OK && cmd.verb == V_RCPT && cmd.addr.email) {
		free(s->then_rcpt);
		s->then_rcpt = xstrdup(cmd.addr.email);
		cJSON *args = cJSON_CreateArray();
		cJSON_AddItemToArray(args, addr_arg(&cmd.addr));
		then = policy_then("smtp_server_rcpt_to", args, 1);
	}
	smtp_cmd_free(&cmd);
	return then;
}

static void run_mail(struct session *s, struct smtp_cmd *cmd)
{
	if (s->txn) {
		reply_ok(s, 503, "5.5.0 MAIL FROM already issued; you must RSET first");
		return;
	}
	s->mail_count++;
	if (s->mail_count > s->p.max_messages_per_connection) {
		replyf(s, 451, "4.5.3 %s too many messages on this connection", s->p.hostname);
		return;
	}
	if (cmd->has_size && cmd->size > s->p.max_message_size) {
		reply_ok(s, 552, "5.3.4 message too big");
		return;
	}
	if (!policy_has_ev(smtpd->policy, PEV_MAIL_FROM)) {
		mail_accept(s, &cmd->addr);
		return;
	}
	struct addr_ctx *c = xcalloc(1, sizeof *c);
	c->s = s;
	c->addr = cmd->addr;
	memset(&cmd->addr, 0, sizeof cmd->addr);
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, addr_arg(&c->addr));
	s->policy_req = policy_call_then(smtpd->policy, "smtp_server_mail_from", args, 1, s->meta,
					 rcpt_then(s), s->p.data_processing_timeout, mail_done, c);
}

/* ---------------------------------------------------------------- RCPT */

static void rcpt_accept(struct session *s, struct smtp_addr *rcpt)
{
	struct txn *t = s->txn;
	if (t->n_rcpts == t->cap_rcpts) {
		t->cap_rcpts = t->cap_rcpts ? t->cap_rcpts * 2 : 4;
		t->rcpts = xrealloc(t->rcpts, t->cap_rcpts * sizeof *t->rcpts);
	}
	/* state first, reply last: the reply's continuation may run the next
	 * pipelined command at once */
	struct smtp_addr *a = &t->rcpts[t->n_rcpts++].addr;
	*a = *rcpt;
	memset(rcpt, 0, sizeof *rcpt);
	reply_cat(s, 250, "OK <", a->email, ">");
}

static void rcpt_done(void *arg, const cJSON *reply, const char *error)
{
	struct addr_ctx *c = arg;
	if (session_event_result(c->s, reply, error, "smtp_server_rcpt_to", false)) {
		if (c->s->txn)
			rcpt_accept(c->s, &c->addr);
		else
			session_technical_difficulties(c->s, "transaction vanished during smtp_server_rcpt_to");
	}
	addr_free(&c->addr);
	free(c);
}

/* Relay allowed: recipient limit, then smtp_server_rcpt_to. */
static void rcpt_relay_ok(struct session *s, struct addr_ctx *c)
{
	if (s->txn->n_rcpts >= s->p.max_recipients_per_message) {
		reply_ok(s, 452, "4.5.3 too many recipients");
	} else if (s->then_reply && s->then_rcpt && strcmp(s->then_rcpt, c->addr.email) == 0) {
		/* answered along with the MAIL before it */
		cJSON *r = s->then_reply;
		s->then_reply = NULL;
		rcpt_done(c, r, NULL);
		cJSON_Delete(r);
		return;
	} else if (!policy_has_ev(smtpd->policy, PEV_RCPT_TO)) {
		rcpt_accept(s, &c->addr);
	} else {
		cJSON *args = cJSON_CreateArray();
		cJSON_AddItemToArray(args, addr_arg(&c->addr));
		s->policy_req = policy_call(smtpd->policy, "smtp_server_rcpt_to", args, 1, s->meta,
					    s->p.data_processing_timeout, rcpt_done, c);
		return;
	}
	addr_free(&c->addr);
	free(c);
}

static void rcpt_refuse(struct session *s, struct addr_ctx *c)
{
	replyf(s, 550, "5.7.1 relaying not permitted for %s", s->peer_str);
	addr_free(&c->addr);
	free(c);
}

/* get_listener_domain for the recipient domain (stage 0: relay_to) and
 * then for the sender domain (stage 1: relay_from holds the peer). */
struct domain_ctx {
	struct addr_ctx *c;
	int stage;
};

static void ask_listener_domain(struct session *s, struct domain_ctx *d);

static void listener_domain_done(void *arg, const cJSON *reply, const char *error)
{
	struct domain_ctx *d = arg;
	struct addr_ctx *c = d->c;
	struct session *s = c->s;
	if (!session_event_result(s, reply, error, "get_listener_domain", false)) {
		addr_free(&c->addr);
		free(c);
		free(d);
		return;
	}
	const cJSON *ret = jget(reply, "ret");
	bool allowed = false;
	if (ret && !cJSON_IsNull(ret) && !cJSON_IsObject(ret)) {
		session_technical_difficulties(s, "get_listener_domain: expected a listener domain or nil");
		addr_free(&c->addr);
		free(c);
		free(d);
		return;
	}
	if (d->stage == 0) {
		allowed = cJSON_IsTrue(jget(ret, "relay_to"));
	} else {
		const cJSON *from = jget(ret, "relay_from"), *e;
		cJSON_ArrayForEach(e, from) {
			struct cidr block;
			char why[100];
			if (cJSON_IsString(e) && cidr_parse(e->valuestring, &block, why, sizeof why) == 0 &&
			    cidr_contains(&block, &s->peer_ip))
				allowed = true;
		}
	}
	if (allowed) {
		free(d);
		rcpt_relay_ok(s, c);
		return;
	}
	if (d->stage == 0 && s->txn && s->txn->sender.domain && s->txn->sender.domain[0]) {
		d->stage = 1;
		ask_listener_domain(s, d);
		return;
	}
	free(d);
	rcpt_refuse(s, c);
}

static void ask_listener_domain(struct session *s, struct domain_ctx *d)
{
	const char *domain = d->stage == 0 ? d->c->addr.domain : s->txn->sender.domain;
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, cJSON_CreateString(domain ? domain : ""));
	cJSON_AddItemToArray(args, cJSON_CreateString(s->local_str));
	s->policy_req = policy_call(smtpd->policy, "get_listener_domain", args, 2, s->meta,
				    s->p.data_processing_timeout, listener_domain_done, d);
}

static void run_rcpt(struct session *s, struct smtp_cmd *cmd)
{
	if (!s->txn) {
		reply_ok(s, 503, "5.5.0 MAIL FROM must be issued first");
		return;
	}
	struct addr_ctx *c = xcalloc(1, sizeof *c);
	c->s = s;
	c->addr = cmd->addr;
	memset(&cmd->addr, 0, sizeof cmd->addr);
	if (s->authenticated || params_relay_allowed(&s->p, &s->peer_ip)) {
		rcpt_relay_ok(s, c);
	} else if (policy_has_ev(smtpd->policy, PEV_GET_LISTENER_DOMAIN)) {
		struct domain_ctx *d = xcalloc(1, sizeof *d);
		d->c = c;
		ask_listener_domain(s, d);
	} else {
		rcpt_refuse(s, c);
	}
}

/* ---------------------------------------------------------------- DATA */

static void enter_data(struct session *s)
{
	struct txn *t = s->txn;
	t->body = evbuffer_new();
	data_reader_init(&t->dr, s->p.max_message_size, s->p.line_length_hard_limit,
			 s->p.invalid_line_endings);
	s->state = SS_DATA;
	session_resume(s);
}

static void run_data(struct session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	if (!s->txn) {
		reply_ok(s, 503, "5.5.0 MAIL FROM must be issued first");
		return;
	}
	if (s->txn->n_rcpts == 0) {
		reply_ok(s, 503, "5.5.0 RCPT TO must be issued first");
		return;
	}
	session_reply(s, 354, "Send body; end with CRLF.CRLF", DISC_NONE, enter_data);
}

void data_input(struct session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	struct txn *t = s->txn;
	while (evbuffer_get_length(in) > 0 && t->dr.state != DR_DONE) {
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		size_t used = data_reader_feed(&t->dr, v.iov_base, v.iov_len, t->body);
		evbuffer_drain(in, used);
	}
	if (t->dr.state == DR_DONE)
		data_complete(s);
}

/* ---------------------------------------------------------------- the rest */

static void run_rset(struct session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	txn_reset(s);
	reply_ok(s, 250, "Reset state");
}

static void run_noop(struct session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	reply_ok(s, 250, "the goggles do nothing");
}

static void run_quit(struct session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	session_reply(s, 221, "So long, and thanks for all the fish!", DISC_FORCE, NULL);
}

/* VRFY, EXPN, HELP, BDAT, LHLO and any other verb: not offered. */
static void run_not_offered(struct session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	reply_ok(s, 502, "5.5.1 Command unimplemented");
}

static const struct verb_row verb_table[V__COUNT] = {
	[V_EHLO] = { V_EHLO, run_hello },
	[V_HELO] = { V_HELO, run_hello },
	[V_MAIL] = { V_MAIL, run_mail },
	[V_RCPT] = { V_RCPT, run_rcpt },
	[V_DATA] = { V_DATA, run_data },
	[V_RSET] = { V_RSET, run_rset },
	[V_NOOP] = { V_NOOP, run_noop },
	[V_QUIT] = { V_QUIT, run_quit },
	[V_STARTTLS] = { V_STARTTLS, run_starttls },
	[V_AUTH] = { V_AUTH, run_auth },
	[V_XCLIENT] = { V_XCLIENT, run_xclient },
	[V_OTHER] = { V_OTHER, run_not_offered },
};

void cmd_dispatch(struct session *s, const char *line, size_t len)
{
	free(s->cur_cmd);
	s->cur_cmd = xstrndup(line, len > 512 ? 512 : len);
	struct smtp_cmd cmd;
	enum parse_status st = smtp_cmd_parse(line, len, &cmd);
	if (cmd.verb == V_AUTH) {
		/* never log or hand on the credentials of an initial response */
		char *sp = strchr(s->cur_cmd, ' ');
		if (sp && (sp = strchr(sp + 1, ' ')))
			*sp = '\0';
	}
	switch (st) {
	case PARSE_OK:
		verb_table[cmd.verb].run(s, &cmd);
		break;
	case PARSE_UNKNOWN:
		reply_ok(s, 502, "5.5.1 Command unimplemented");
		break;
	case PARSE_SYNTAX:
		reply_ok(s, 501, "Syntax error in command or arguments");
		break;
	case PARSE_SYNTAX_DIAG:
		replyf(s, 501, "Syntax error in command or arguments: %s", cmd.diag);
		break;
	case PARSE_BAD_SENDER:
		reply_ok(s, 501, "5.1.7 Bad sender's mailbox address syntax");
		break;
	case PARSE_BAD_RCPT:
		reply_ok(s, 501, "5.1.3 Invalid recipient address syntax");
		break;
	case PARSE_BAD_UTF8:
		reply_ok(s, 501, "5.5.2 Invalid UTF-8 in command");
		break;
	case PARSE_BAD_PARAM:
		replyf(s, 501, "5.5.4 %s", cmd.diag);
		break;
	}
	smtp_cmd_free(&cmd);
	/* A RCPT answered along with its MAIL is for the command just run:
	 * the MAIL's answer comes from the loop, after the MAIL's own dispatch,
	 * and the next line is that RCPT.  If it did not take it, nothing will. */
	if (s->then_reply) {
		cJSON_Delete(s->then_reply);
		s->then_reply = NULL;
	}
}
