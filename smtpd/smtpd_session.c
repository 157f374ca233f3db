/* smtpd_session: one SMTP connection from accept to close.
 * Entry points: session_accept (from the listener), session_reply (every
 * reply goes through here: smtp_server_rewrite_response, framing of
 * multi-line texts, Rejection records, disconnect modes), session_resume
 * (the command pump), session_close, smtpd_drain_sessions.
 * A session with a policy call or spool job outstanding is "busy": the pump
 * reads no further command until the reply for the current one is written.
 * A session is freed only when nothing is in flight for it. */
#include "smtpd/smtpd.h"
#include "lib/jadd.h"
#include "lib/log.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

struct smtpd *smtpd; /* the worker; set up by main() */

void session_free(struct session *s);
static void start_session(struct session *s);
static void meta_from_params(struct session *s);
static void dynamic_done(void *ctx, const cJSON *reply, const char *error);
static void send_banner(struct session *s);
static int params_again(struct session *s);

static struct timeval tv_of(double secs)
{
	struct timeval tv = { (time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6) };
	return tv;
}

static void make_uuid4(char out[37])
{
	unsigned char r[16];
	if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
		memset(r, 0x42, sizeof r);
	r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
	r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
		 r[13], r[14], r[15]);
}

static void under_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void close_ev_cb(evutil_socket_t fd, short what, void *arg);

/* ---------------------------------------------------------------- replies */

static void log_rejection(struct session *s, int code, const char *text)
{
	if (code < 400 || code > 599)
		return;
	if (code == 421 && strncmp(text, "4.3.2 ", 6) == 0)
		return;
	struct logrec_fields f = {
		.type = "Rejection", .id = "",
		.sender = s->txn && !s->txn->sender.is_null && s->txn->sender.email ? s->txn->sender.email : NULL,
		.response = true, .code = code, .text = text, .command = s->cur_cmd,
		.peer_name = s->ehlo_domain ? s->ehlo_domain : "", .peer_addr = s->peer_ip_str,
		.session_id = s->session_id,
	};
	char err[200];
	if (logrec_put(&smtpd->logs, &f, err, sizeof err) != 0)
		log_warn("session %s: %s", s->session_id, err);
}

/* Closing happens from the loop, never inside the call that asked for it,
 * and only once everything written has left: for TLS the filter's output
 * and then, after a close_notify, the socket's buffer underneath. */
static void close_check(struct session *s)
{
	if (s->state == SS_DEAD)
		return;
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) > 0)
		return; /* the write callback calls again */
	if (s->tls) {
		struct bufferevent *under = bufferevent_get_underlying(s->bev);
		if (!s->tls_closed) {
			s->tls_closed = true;
			SSL_shutdown(bufferevent_openssl_get_ssl(s->bev));
		}
		struct evbuffer *uo = under ? bufferevent_get_output(under) : NULL;
		if (uo && evbuffer_get_length(uo) > 0) {
			if (!s->under_cb)
				s->under_cb = evbuffer_add_cb(uo, under_drained, s);
			return;
		}
	}
	session_close(s);
}

static void under_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	(void)info;
	struct session *s = arg;
	if (evbuffer_get_length(buf) == 0)
		event_active(s->close_ev, EV_TIMEOUT, 0);
}

static void close_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	close_check(arg);
}

static void finish_close(struct bufferevent *bev, void *arg)
{
	(void)bev;
	close_check(arg);
}

/* Replies on a plain session are written by the loop itself, once per
 * pass (session_flush_all), straight to the socket: no write event is
 * armed and disarmed around every reply, and replies to pipelined commands
 * leave together.  Only what the socket does not take is left to the
 * bufferevent, with its write event (and write timeout) enabled until the
 * output drains (on_write).  TLS sessions write through their filter. */
static void queue_flush(struct session *s)
{
	s->flush_held = false;
	if (s->tls || s->flush_queued)
		return;
	s->flush_queued = true;
	s->flush_next = smtpd->flushq;
	smtpd->flushq = s;
	event_active(smtpd->flush_ev, EV_TIMEOUT, 0);
}

static void unqueue_flush(struct session *s)
{
	if (!s->flush_queued)
		return;
	for (struct session **pp = &smtpd->flushq; *pp; pp = &(*pp)->flush_next)
		if (*pp == s) {
			*pp = s->flush_next;
			break;
		}
	s->flush_queued = false;
}

/* The replies of a session that stopped reading (write_blocked) left. */
static void unblock(struct session *s)
{
	if (!s->write_blocked || s->state == SS_CLOSING || s->state == SS_DEAD)
		return;
	s->write_blocked = false;
	session_resume(s);
}

/* Whether a whole command line waits in the session's input. */
static bool pipelined_line(struct session *s)
{
	size_t eol_len = 0;
	struct evbuffer_ptr eol = evbuffer_search_eol(bufferevent_get_input(s->bev), NULL, &eol_len,
						      EVBUFFER_EOL_CRLF);
	return eol.pos >= 0;
}

void session_flush_all(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	struct session *s;
	while ((s = smtpd->flushq) != NULL) {
		smtpd->flushq = s->flush_next;
		s->flush_queued = false;
		if (!s->bev || s->tls || s->state == SS_DEAD)
			continue;
		struct evbuffer *out = bufferevent_get_output(s->bev);
		if (evbuffer_get_length(out) == 0)
			continue;
		if (s->policy_req && s->state == SS_WAIT && pipelined_line(s)) {
			/* A hook runs for a command the client sent behind the
			 * ones answered so far: it is not waiting for these
			 * replies to go on, so they leave with the next ones as
			 * one write (RFC 2920 3.2), once the hook is answered
			 * (queue_flush, session_resume). */
			s->flush_held = true;
			continue;
		}
		/* errors and short writes: the bufferevent retries the write
		 * and reports a failure to on_event.  It keeps its output
		 * frozen at the start except while it writes; so does this. */
		evbuffer_unfreeze(out, 1);
		int w = evbuffer_write(out, bufferevent_getfd(s->bev));
		evbuffer_freeze(out, 1);
		if (w < 0 || evbuffer_get_length(out) > 0)
			bufferevent_enable(s->bev, EV_WRITE);
		else
			unblock(s);
	}
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
		return;
	if (!s->tls)
		bufferevent_disable(bev, EV_WRITE);
	unblock(s);
}

/* Closes once the output is flushed. */
void close_after_flush(struct session *s)
{
	if (s->state == SS_CLOSING || s->state == SS_DEAD)
		return;
	s->state = SS_CLOSING;
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_enable(s->bev, EV_WRITE);
	struct timeval tv = tv_of(s->p.client_timeout > 0 ? s->p.client_timeout : 10);
	bufferevent_set_timeouts(s->bev, NULL, &tv);
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
	bufferevent_setcb(s->bev, NULL, finish_close, on_event, s);
	event_active(s->close_ev, EV_TIMEOUT, 0);
}

/* Adds len bytes to out, less the first *skip of them (already sent by
 * the spool writer, early_reply), which it counts down. */
static void add_unsent(struct evbuffer *out, const char *p, size_t len, size_t *skip)
{
	size_t k = *skip < len ? *skip : len;
	*skip -= k;
	if (len > k)
		evbuffer_add(out, p + k, len - k);
}

static void write_reply(struct session *s, int code, const char *text, enum disc_mode mode)
{
	if (s->state == SS_CLOSING || s->state == SS_DEAD)
		return;
	struct evbuffer *out = bufferevent_get_output(s->bev);
	const char *p = text;
	size_t skip = s->early_skip;
	s->early_skip = 0;
	do {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		bool last = !nl || nl[1] == '\0';
		size_t m = n;
		if (m > 0 && p[m - 1] == '\r')
			m--;
		/* "%d%c%.*s\r\n", without printf: code is 200..599 */
		char line[512];
		line[0] = (char)('0' + code / 100 % 10);
		line[1] = (char)('0' + code / 10 % 10);
		line[2] = (char)('0' + code % 10);
		line[3] = last ? ' ' : '-';
		if (m + 6 <= sizeof line) {
			memcpy(line + 4, p, m);
			memcpy(line + 4 + m, "\r\n", 2);
			add_unsent(out, line, m + 6, &skip);
		} else {
			add_unsent(out, line, 4, &skip);
			add_unsent(out, p, m, &skip);
			add_unsent(out, "\r\n", 2, &skip);
		}
		p = nl ? nl + 1 : p + n;
		if (last)
			break;
	} while (*p);
	queue_flush(s);
	log_rejection(s, code, text);
	bool disconnect = mode == DISC_FORCE || mode == DISC_FOLLOW421 || code == 421;
	if (mode == DISC_FOLLOW421 && code != 421)
		evbuffer_add_printf(out, "421 %s disconnecting due to previous error\r\n", s->p.hostname);
	if (disconnect)
		close_after_flush(s);
}

static void after_rewrite(void *ctx, const cJSON *reply, const char *error)
{
	struct session *s = ctx;
	s->policy_req = 0;
	int code = s->pend_code;
	const char *text = s->pend_text;
	if (error) {
		log_warn("session %s: smtp_server_rewrite_response: %s", s->session_id, error);
	} else {
		const cJSON *res = jget(reply, "result");
		if (cJSON_IsString(res) && strcmp(res->valuestring, "ok") == 0) {
			const cJSON *st = jget(reply, "ret");
			const cJSON *tx = jget(reply, "ret2");
			if (cJSON_IsNumber(st) && st->valuedouble >= 200 && st->valuedouble <= 599)
				code = (int)st->valuedouble;
			else if (st && !cJSON_IsNull(st))
				log_warn("session %s: smtp_server_rewrite_response returned a bad status", s->session_id);
			if (cJSON_IsString(tx))
				text = tx->valuestring;
			else if (tx && !cJSON_IsNull(tx))
				log_warn("session %s: smtp_server_rewrite_response returned a bad text", s->session_id);
		} else {
			const cJSON *e = jget(reply, "error");
			log_warn("session %s: smtp_server_rewrite_response failed: %s", s->session_id,
				 cJSON_IsString(e) ? e->valuestring : "rejected");
		}
	}
	write_reply(s, code, text, s->pend_mode);
	free(s->pend_text);
	s->pend_text = NULL;
	void (*after)(struct session *) = s->after_reply;
	s->after_reply = NULL;
	if (s->state != SS_CLOSING && s->state != SS_DEAD && after)
		after(s);
	else if (s->state == SS_DEAD)
		session_free(s);
}

void session_reply(struct session *s, int code, const char *text, enum disc_mode mode,
		   void (*after)(struct session *s))
{
	if (s->state == SS_CLOSING || s->state == SS_DEAD)
		return;
	/* a reply the spool writer sent (early_reply) was not to be rewritten,
	 * even if a reload has added a handler since */
	if (!s->early_skip && policy_has_ev(smtpd->policy, PEV_REWRITE_RESPONSE)) {
		s->pend_code = code;
		s->pend_text = xstrdup(text);
		s->pend_mode = mode;
		s->after_reply = after;
		cJSON *args = cJSON_CreateArray();
		cJSON_AddItemToArray(args, cJSON_CreateNumber(code));
		cJSON_AddItemToArray(args, cJSON_CreateString(text));
		cJSON_AddItemToArray(args, s->cur_cmd ? cJSON_CreateString(s->cur_cmd) : cJSON_CreateNull());
		s->policy_req = policy_call(smtpd->policy, "smtp_server_rewrite_response", args, 3, s->meta,
					    s->p.data_processing_timeout, after_rewrite, s);
		return;
	}
	write_reply(s, code, text, mode);
	if (s->state != SS_CLOSING && after)
		after(s);
}

void session_technical_difficulties(struct session *s, const char *why)
{
	char text[300];
	log_warn("session %s: %s", s->session_id, why);
	snprintf(text, sizeof text, "4.3.0 %s technical difficulties", s->p.hostname);
	session_reply(s, 421, text, DISC_FORCE, NULL);
}

/* ---------------------------------------------------------------- the pump */

static void reply_shutting_down(struct session *s)
{
	char text[300];
	snprintf(text, sizeof text, "4.3.2 %s shutting down", s->p.hostname);
	free(s->cur_cmd);
	s->cur_cmd = NULL;
	session_reply(s, 421, text, DISC_FORCE, NULL);
}

void session_resume(struct session *s)
{
	if (s->flush_held)
		queue_flush(s);
	if (s->state == SS_WAIT)
		s->state = SS_CMD;
	if (s->pumping || s->state == SS_DEAD)
		return; /* the outer pump goes on (a reply written synchronously) */
	s->pumping = true;
	struct evbuffer *in = bufferevent_get_input(s->bev);
	while (s->state == SS_CMD || s->state == SS_DATA) {
		if (s->state == SS_DATA) {
			data_input(s);
			if (s->state == SS_DATA)
				break; /* need more bytes */
			continue;
		}
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > REPLY_BACKLOG_MAX) {
			/* a client that does not read its replies: stop reading
			 * its commands until they have left (on_write, or
			 * session_flush_all), so the output cannot grow */
			s->write_blocked = true;
			break;
		}
		size_t avail = evbuffer_get_length(in);
		if (smtpd->draining && !s->txn && avail == 0) {
			reply_shutting_down(s);
			break;
		}
		size_t eol_len = 0;
		struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
		size_t limit = s->auth_pending ? auth_line_max() : s->p.line_length_hard_limit;
		if (eol.pos < 0) {
			if (avail > limit + 2) {
				/* an over-long line: drop what we have, keep skipping */
				evbuffer_drain(in, avail);
				s->discarding_line = true;
			}
			break;
		}
		size_t len = (size_t)eol.pos;
		if (s->discarding_line || len > limit) {
			evbuffer_drain(in, len + eol_len);
			s->discarding_line = false;
			free(s->cur_cmd);
			s->cur_cmd = NULL;
			s->state = SS_WAIT;
			if (s->auth_pending) {
				s->auth_pending = false;
				session_reply(s, 500, "5.5.6 authentication exchange line too long", DISC_NONE,
					      session_resume);
			} else {
				session_reply(s, 500, "5.2.3 line too long", DISC_NONE, session_resume);
			}
			continue;
		}
		char stackbuf[1024];
		char *line = len < sizeof stackbuf ? stackbuf : xmalloc(len + 1);
		evbuffer_remove(in, line, len);
		evbuffer_drain(in, eol_len);
		line[len] = '\0';
		s->state = SS_WAIT;
		if (s->auth_pending)
			auth_response(s, line, len);
		else
			cmd_dispatch(s, line, len);
		if (line != stackbuf)
			free(line);
	}
	s->pumping = false;
	if (s->state == SS_DEAD)
		session_free(s);
}

/* ---------------------------------------------------------------- events */

static void on_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct session *s = arg;
	if (s->state == SS_CMD || s->state == SS_DATA)
		session_resume(s);
	else if (s->state == SS_PROXY)
		proxy_input(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	if (what & BEV_EVENT_TIMEOUT) {
		if (s->state == SS_PROXY) {
			log_info("session %s: no PROXY header from %s in time; dropped", s->session_id, s->peer_str);
			session_close(s);
			return;
		}
		if ((what & BEV_EVENT_READING) && s->state != SS_CLOSING) {
			if (s->state == SS_WAIT || s->spool_pending) {
				/* waiting on us, not on the client */
				bufferevent_enable(bev, EV_READ);
				return;
			}
			char text[300];
			snprintf(text, sizeof text, "4.3.2 %s idle too long", s->p.hostname);
			free(s->cur_cmd);
			s->cur_cmd = NULL;
			log_info("session %s: %s idle too long", s->session_id, s->peer_str);
			s->state = SS_WAIT; /* read nothing more; the reply may go through policy */
			session_reply(s, 421, text, DISC_FORCE, NULL);
			return;
		}
		session_close(s);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		session_close(s);
}

void session_set_callbacks(struct session *s)
{
	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
}

/* ---------------------------------------------------------------- lifecycle */

/* This worker's count of sessions on l, in the table all workers share. */
static uint64_t *counter_slot(struct listener *l)
{
	return &smtpd->counters[(size_t)smtpd->worker * smtpd->n_listeners + (size_t)l->index];
}

/* Sessions on l across every worker. */
static uint64_t listener_sessions(struct listener *l)
{
	uint64_t total = 0;
	for (int w = 0; w < smtpd->n_workers; w++)
		total += __atomic_load_n(&smtpd->counters[(size_t)w * smtpd->n_listeners + (size_t)l->index],
					 __ATOMIC_SEQ_CST);
	return total;
}

void session_free(struct session *s)
{
	if (s->policy_req || s->spool_pending)
		return; /* freed when the answer arrives */
	unqueue_flush(s);
	if (s->prev)
		s->prev->next = s->next;
	else
		smtpd->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	smtpd->n_sessions--;
	__atomic_sub_fetch(counter_slot(s->listener), 1, __ATOMIC_RELAXED);
	if (s->txn)
		txn_free(s->txn);
	if (s->bev)
		bufferevent_free(s->bev);
	event_free(s->close_ev);
	params_free(&s->p);
	cJSON_Delete(s->meta);
	free(s->ehlo_domain);
	free(s->then_rcpt);
	cJSON_Delete(s->then_reply);
	free(s->cur_cmd);
	free(s->pend_text);
	free(s);
	if (smtpd->draining && smtpd->n_sessions == 0)
		event_base_loopexit(smtpd->base, NULL);
}

void session_close(struct session *s)
{
	if (s->state == SS_DEAD)
		return;
	s->state = SS_DEAD;
	if (s->bev) {
		if (s->early_pending) {
			/* the spool writer may still send on it: closed when its
			 * job returns (spool_finished), so the number is not reused */
			bufferevent_setfd(s->bev, -1);
			s->early_fd_held = true;
		}
		if (s->under_cb) {
			struct bufferevent *under = bufferevent_get_underlying(s->bev);
			if (under)
				evbuffer_remove_cb_entry(bufferevent_get_output(under), s->under_cb);
			s->under_cb = NULL;
		}
		bufferevent_free(s->bev);
		s->bev = NULL;
	}
	if (s->policy_req) {
		policy_cancel(smtpd->policy, s->policy_req);
		s->policy_req = 0;
	}
	if (s->pumping)
		return; /* the pump frees it when it unwinds */
	session_free(s);
}

void session_accept(struct listener *l, int fd, struct sockaddr *sa, int salen)
{
	(void)salen;
	/* Count this session first and then sum every worker's count, with sequentially
	 * consistent operations: of two workers accepting the last free slot at once, at
	 * least one sees the other and refuses, so the limit is never exceeded. */
	__atomic_add_fetch(counter_slot(l), 1, __ATOMIC_SEQ_CST);
	if (smtpd->draining || (l->base.max_connections && listener_sessions(l) > l->base.max_connections)) {
		__atomic_sub_fetch(counter_slot(l), 1, __ATOMIC_RELAXED);
		char line[400];
		int n = smtpd->draining
			? snprintf(line, sizeof line, "421 4.3.2 %s shutting down\r\n", l->base.hostname)
			: snprintf(line, sizeof line, "421 4.3.2 %s too many concurrent sessions. Try later\r\n",
				   l->base.hostname);
		ssize_t w = write(fd, line, (size_t)n);
		(void)w;
		close(fd);
		return;
	}
	struct session *s = xcalloc(1, sizeof *s);
	s->sid = ++smtpd->next_sid;
	s->listener = l;
	make_uuid4(s->session_id);
	memcpy(&s->peer, sa, sa->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
	socklen_t ll = sizeof s->local;
	getsockname(fd, (struct sockaddr *)&s->local, &ll);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	netaddr_format((struct sockaddr *)&s->peer, s->peer_str, sizeof s->peer_str);
	netaddr_format((struct sockaddr *)&s->local, s->local_str, sizeof s->local_str);
	netaddr_format_ip((struct sockaddr *)&s->peer, s->peer_ip_str, sizeof s->peer_ip_str);
	cidr_from_sockaddr((struct sockaddr *)&s->peer, &s->peer_ip);
	cidr_from_sockaddr((struct sockaddr *)&s->local, &s->local_ip);

	s->next = smtpd->sessions;
	if (s->next)
		s->next->prev = s;
	smtpd->sessions = s;
	smtpd->n_sessions++;

	s->bev = bufferevent_socket_new(smtpd->base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_disable(s->bev, EV_WRITE); /* see queue_flush */
	s->close_ev = evtimer_new(smtpd->base, close_ev_cb, s);
	session_set_callbacks(s);

	char err[300];
	s->meta = cJSON_CreateObject();
	params_defaults(&s->p, l->base.hostname);
	if (params_apply(&s->p, l->table, PARAMS_TOP, &s->peer_ip, &s->local_ip, err, sizeof err) != 0) {
		bufferevent_enable(s->bev, EV_WRITE);
		session_technical_difficulties(s, err);
		return;
	}
	jadd_string(s->meta, "reception_protocol", "ESMTP");
	jadd_string(s->meta, "received_via", s->local_str);
	jadd_string(s->meta, "received_from", s->peer_str);
	meta_from_params(s);
	size_t wm = s->p.data_buffer_size > 65536 ? s->p.data_buffer_size : 65536;
	bufferevent_setwatermark(s->bev, EV_READ, 0, wm);
	struct timeval tv = tv_of(s->p.client_timeout);
	bufferevent_set_timeouts(s->bev, &tv, &tv);
	if (s->p.require_proxy_protocol) {
		/* the proxy's header comes first; nothing is sent before it */
		s->state = SS_PROXY;
		bufferevent_enable(s->bev, EV_READ);
		return;
	}
	s->state = SS_WAIT;
	start_session(s);
}

/* ------------------------------------------- dynamic parameters, accepted */

/* The parameters' meta entries and hostname into the connection meta. */
static void meta_from_params(struct session *s)
{
	const cJSON *m;
	cJSON_ArrayForEach(m, s->p.meta) {
		jdelete(s->meta, m->string);
		cJSON_AddItemToObject(s->meta, m->string, cJSON_Duplicate(m, 1));
	}
	jdelete(s->meta, "hostname");
	jadd_string(s->meta, "hostname", s->p.hostname);
}

static void apply_meta_reply(struct session *s, const cJSON *reply)
{
	cJSON *m = policy_reply_take(reply, "meta");
	if (cJSON_IsObject(m)) {
		cJSON_Delete(s->meta);
		s->meta = m;
	} else {
		cJSON_Delete(m);
	}
	policy_meta_apply(s->meta, reply);
}

/* Shared handling of an event reply: returns 1 when the caller should go
 * on (result ok), 0 when the session was answered (reject or error). */
int session_event_result(struct session *s, const cJSON *reply, const char *error,
			 const char *event, bool reject_ends_session)
{
	s->policy_req = 0;
	if (s->state == SS_DEAD) {
		session_free(s);
		return 0;
	}
	if (error) {
		char why[300];
		snprintf(why, sizeof why, "%s: %s", event, error);
		session_technical_difficulties(s, why);
		return 0;
	}
	const cJSON *ok = jget(reply, "ok");
	const cJSON *res = jget(reply, "result");
	if (!cJSON_IsTrue(ok) || !cJSON_IsString(res)) {
		const cJSON *e = jget(reply, "error");
		char why[600];
		snprintf(why, sizeof why, "%s: %s", event, cJSON_IsString(e) ? e->valuestring : "bad reply");
		session_technical_difficulties(s, why);
		return 0;
	}
	apply_meta_reply(s, reply);
	if (strcmp(res->valuestring, "ok") == 0)
		return 1;
	if (strcmp(res->valuestring, "reject") == 0) {
		const cJSON *code = jget(reply, "code");
		const cJSON *text = jget(reply, "text");
		const cJSON *mode = jget(reply, "mode");
		enum disc_mode dm = DISC_IF421;
		if (cJSON_IsString(mode) && strcmp(mode->valuestring, "ForceDisconnect") == 0)
			dm = DISC_FORCE;
		else if (cJSON_IsString(mode) && strcmp(mode->valuestring, "FollowWith421") == 0)
			dm = DISC_FOLLOW421;
		if (reject_ends_session && dm == DISC_IF421)
			dm = DISC_FORCE;
		int c = cJSON_IsNumber(code) ? (int)code->valuedouble : 451;
		session_reply(s, c, cJSON_IsString(text) ? text->valuestring : "", dm,
			      reject_ends_session ? NULL : session_resume);
		return 0;
	}
	const cJSON *e = jget(reply, "error");
	char why[600];
	snprintf(why, sizeof why, "%s: %s", event, cJSON_IsString(e) ? e->valuestring : "failed");
	session_technical_difficulties(s, why);
	return 0;
}

static void send_banner(struct session *s)
{
	char text[600];
	snprintf(text, sizeof text, "%s %s", s->p.hostname, s->p.banner);
	s->state = SS_WAIT;
	session_reply(s, 220, text, DISC_NONE, session_resume);
}

static void accepted_done(void *ctx, const cJSON *reply, const char *error)
{
	struct session *s = ctx;
	if (session_event_result(s, reply, error, "smtp_server_connection_accepted", true))
		send_banner(s);
}

static void connection_accepted(struct session *s)
{
	if (!policy_has_ev(smtpd->policy, PEV_CONNECTION_ACCEPTED)) {
		send_banner(s);
		return;
	}
	s->policy_req = policy_call(smtpd->policy, "smtp_server_connection_accepted", cJSON_CreateArray(), 0,
				    s->meta, s->p.data_processing_timeout, accepted_done, s);
}

static void dynamic_done(void *ctx, const cJSON *reply, const char *error)
{
	struct session *s = ctx;
	if (!session_event_result(s, reply, error, "smtp_server_get_dynamic_parameters", true))
		return;
	const cJSON *ret = jget(reply, "ret");
	if (ret && !cJSON_IsNull(ret)) {
		char err[300];
		if (!cJSON_IsObject(ret)) {
			session_technical_difficulties(s, "smtp_server_get_dynamic_parameters: expected a table");
			return;
		}
		if (params_apply(&s->p, ret, PARAMS_NESTED, &s->peer_ip, &s->local_ip, err, sizeof err) != 0) {
			char why[400];
			snprintf(why, sizeof why, "smtp_server_get_dynamic_parameters: %s", err);
			session_technical_difficulties(s, why);
			return;
		}
		meta_from_params(s);
		struct timeval tv = tv_of(s->p.client_timeout);
		bufferevent_set_timeouts(s->bev, &tv, &tv);
	}
	if (s->reevaluating) {
		/* after XCLIENT: the (new) banner, no connection_accepted */
		s->reevaluating = false;
		send_banner(s);
		return;
	}
	connection_accepted(s);
}

static void start_session(struct session *s)
{
	bufferevent_enable(s->bev, EV_READ | (s->tls ? EV_WRITE : 0));
	if (!policy_has_ev(smtpd->policy, PEV_GET_DYNAMIC_PARAMETERS)) {
		connection_accepted(s);
		return;
	}
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, cJSON_CreateString(s->local_str));
	s->policy_req = policy_call(smtpd->policy, "smtp_server_get_dynamic_parameters", args, 1, s->meta,
				    s->p.data_processing_timeout, dynamic_done, s);
}

void session_set_addresses(struct session *s, const struct sockaddr_storage *peer,
			   const struct sockaddr_storage *local)
{
	if (!jget(s->meta, "orig_received_from")) {
		jadd_string(s->meta, "orig_received_from", s->peer_str);
		jadd_string(s->meta, "orig_received_via", s->local_str);
	}
	s->peer = *peer;
	s->local = *local;
	netaddr_format((struct sockaddr *)&s->peer, s->peer_str, sizeof s->peer_str);
	netaddr_format((struct sockaddr *)&s->local, s->local_str, sizeof s->local_str);
	netaddr_format_ip((struct sockaddr *)&s->peer, s->peer_ip_str, sizeof s->peer_ip_str);
	cidr_from_sockaddr((struct sockaddr *)&s->peer, &s->peer_ip);
	cidr_from_sockaddr((struct sockaddr *)&s->local, &s->local_ip);
	jdelete(s->meta, "received_from");
	jdelete(s->meta, "received_via");
	jadd_string(s->meta, "received_from", s->peer_str);
	jadd_string(s->meta, "received_via", s->local_str);
}

/* Parameters from scratch for the session's current addresses. */
static int params_again(struct session *s)
{
	char err[300];
	params_free(&s->p);
	params_defaults(&s->p, s->listener->base.hostname);
	if (params_apply(&s->p, s->listener->table, PARAMS_TOP, &s->peer_ip, &s->local_ip, err, sizeof err) != 0) {
		session_technical_difficulties(s, err);
		return -1;
	}
	meta_from_params(s);
	return 0;
}

/* The PROXY header was read: parameters for the addresses it gave, then
 * the session starts as any other (dynamic parameters, accepted, banner). */
void session_after_proxy(struct session *s)
{
	if (params_again(s) == 0)
		start_session(s);
}

/* After XCLIENT changed the addresses: the parameters are computed again
 * from the defaults (listener table, peer, via, then the dynamic table),
 * and the session answers with the banner they give. */
void session_reevaluate(struct session *s)
{
	if (params_again(s) != 0)
		return;
	if (!policy_has_ev(smtpd->policy, PEV_GET_DYNAMIC_PARAMETERS)) {
		send_banner(s);
		return;
	}
	s->reevaluating = true;
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, cJSON_CreateString(s->local_str));
	s->policy_req = policy_call(smtpd->policy, "smtp_server_get_dynamic_parameters", args, 1, s->meta,
				    s->p.data_processing_timeout, dynamic_done, s);
}

/* ---------------------------------------------------------------- drain */

static void drain_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	struct session *s = smtpd->sessions;
	while (s) {
		struct session *next = s->next;
		if (s->state != SS_CLOSING && s->state != SS_DEAD) {
			char text[300];
			snprintf(text, sizeof text, "421 4.3.2 %s shutting down\r\n", s->p.hostname);
			evbuffer_add(bufferevent_get_output(s->bev), text, strlen(text));
			close_after_flush(s);
		}
		s = next;
	}
	/* whatever is still flushing gets a moment, then the loop ends */
	struct timeval tv = { 1, 0 };
	event_base_loopexit(smtpd->base, &tv);
}

void smtpd_drain_sessions(void)
{
	if (smtpd->draining)
		return;
	smtpd->draining = true;
	for (size_t i = 0; i < smtpd->n_listeners; i++)
		if (smtpd->listeners[i].evl)
			evconnlistener_disable(smtpd->listeners[i].evl);
	struct session *s = smtpd->sessions;
	while (s) {
		struct session *next = s->next;
		if (s->state == SS_CMD && !s->txn &&
		    evbuffer_get_length(bufferevent_get_input(s->bev)) == 0)
			reply_shutting_down(s);
		s = next;
	}
	if (smtpd->n_sessions == 0) {
		event_base_loopexit(smtpd->base, NULL);
		return;
	}
	smtpd->drain_timer = evtimer_new(smtpd->base, drain_deadline, NULL);
	struct timeval tv = { 10, 0 };
	evtimer_add(smtpd->drain_timer, &tv);
}
