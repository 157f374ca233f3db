/* smtpd_policy: the worker's client of kumo-policyd.  One stream connection
 * per worker, requests multiplexed by id, every call bounded by a timer.
 * Entry points: policy_client_new, policy_has_ev, policy_call, policy_cancel,
 * policy_set_msg_file.  policyd may ask, while a call is in flight, for the
 * file holding a message argument's bytes ("msg_file", lib/ipc.h): it is
 * answered at once from the call's file callback.
 * When policyd is down, late or answers nonsense, the callback gets an
 * error (the session then answers 4xx); the client reconnects with
 * back-off.  Callbacks always run from the event loop.
 * Requests are written by the loop once per pass (pc_flush), straight to
 * the socket, as the sessions' replies are: the requests of every session
 * served in one pass leave in one write, and no write event is armed and
 * disarmed around each.  Only what the socket does not take (or what waits
 * for the connection) is left to the bufferevent's write event. */
#include "smtpd/smtpd.h"
#include "lib/jadd.h"
#include "lib/frame.h"
#include "lib/log.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PENDING_BUCKETS 1024

struct pending {
	struct pending *next;
	uint64_t id;
	policy_cb cb;
	void *ctx;
	struct event *timer;
	struct policy_client *pc;
	cJSON *reply;       /* set when answered, delivered from a zero timer */
	char *error;        /* owned */
	policy_file_cb file_cb; /* answers "msg_file" for this call, or NULL */
};

struct policy_client {
	struct event_base *base;
	char *sockname;               /* owned; '@' prefix = abstract */
	struct bufferevent *bev;
	bool connected;               /* bev's connect finished */
	struct event *flush_ev;       /* active: requests wait in bev's output */
	struct event *reconnect_ev;
	double backoff;
	uint64_t next_id;
	struct pending *buckets[PENDING_BUCKETS];
	char **handlers;              /* owned */
	size_t n_handlers;
	uint32_t has_ev;              /* bit e: handlers has pev_name[e] */
	double generation;            /* policyd's, from its replies */
	uint64_t hello_id;            /* a hello in flight, 0 if none */
};

static void pc_connect(struct policy_client *pc);

static struct pending **bucket(struct policy_client *pc, uint64_t id)
{
	return &pc->buckets[id % PENDING_BUCKETS];
}

/* The call in flight with this id (a JSON number; NULL if none or not a
 * number), left where it is. */
static struct pending *pending_find(struct policy_client *pc, const cJSON *id)
{
	if (!cJSON_IsNumber(id))
		return NULL;
	uint64_t want = (uint64_t)id->valuedouble;
	struct pending *p = *bucket(pc, want);
	while (p && p->id != want)
		p = p->next;
	return p;
}

static struct pending *pending_take(struct policy_client *pc, uint64_t id)
{
	for (struct pending **pp = bucket(pc, id); *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			struct pending *p = *pp;
			*pp = p->next;
			return p;
		}
	}
	return NULL;
}

static void pending_free(struct pending *p)
{
	if (p->timer)
		event_free(p->timer);
	cJSON_Delete(p->reply);
	free(p->error);
	free(p);
}

/* fires either at the deadline or (re-armed with 0 s) to deliver a result */
static void pending_fire(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pending *p = arg;
	struct policy_client *pc = p->pc;
	if (!pending_take(pc, p->id))
		return;
	if (!p->reply && !p->error)
		p->error = xstrdup(POLICY_TIMEOUT);
	p->cb(p->ctx, p->reply, p->error);
	pending_free(p);
}

static void pending_finish(struct pending *p, cJSON *reply, const char *error)
{
	if (p->reply || p->error) {
		cJSON_Delete(reply);
		return;
	}
	p->reply = reply;
	p->error = error ? xstrdup(error) : NULL;
	struct timeval zero = { 0, 0 };
	evtimer_add(p->timer, &zero);
}

static void fail_all(struct policy_client *pc, const char *why)
{
	for (size_t b = 0; b < PENDING_BUCKETS; b++)
		for (struct pending *p = pc->buckets[b]; p; p = p->next)
			pending_finish(p, NULL, why);
}

static void pc_drop(struct policy_client *pc, const char *why)
{
	if (pc->bev) {
		bufferevent_free(pc->bev);
		pc->bev = NULL;
		pc->connected = false;
		log_warn("policyd connection lost: %s", why);
	}
	fail_all(pc, "policyd is not available");
	pc->generation = -1; /* a restarted policyd: learn its handlers again */
	struct timeval tv = { (time_t)pc->backoff, (suseconds_t)((pc->backoff - (long)pc->backoff) * 1e6) };
	evtimer_add(pc->reconnect_ev, &tv);
	pc->backoff = pc->backoff < 2 ? pc->backoff * 2 : 2;
}

static const char *const pev_name[PEV_COUNT] = {
	[PEV_CONNECTION_ACCEPTED] = "smtp_server_connection_accepted",
	[PEV_EHLO] = "smtp_server_ehlo",
	[PEV_MAIL_FROM] = "smtp_server_mail_from",
	[PEV_RCPT_TO] = "smtp_server_rcpt_to",
	[PEV_DATA] = "smtp_server_data",
	[PEV_MESSAGE_RECEIVED] = "smtp_server_message_received",
	[PEV_REWRITE_RESPONSE] = "smtp_server_rewrite_response",
	[PEV_AUTH_PLAIN] = "smtp_server_auth_plain",
	[PEV_GET_DYNAMIC_PARAMETERS] = "smtp_server_get_dynamic_parameters",
	[PEV_GET_LISTENER_DOMAIN] = "get_listener_domain",
};

static void set_handlers(struct policy_client *pc, const cJSON *handlers)
{
	for (size_t i = 0; i < pc->n_handlers; i++)
		free(pc->handlers[i]);
	free(pc->handlers);
	size_t n = (size_t)cJSON_GetArraySize(handlers), i = 0;
	pc->handlers = xcalloc(n + 1, sizeof(char *));
	const cJSON *h;
	cJSON_ArrayForEach(h, handlers) {
		if (cJSON_IsString(h))
			pc->handlers[i++] = xstrdup(h->valuestring);
	}
	pc->n_handlers = i;
	pc->has_ev = 0;
	for (size_t k = 0; k < pc->n_handlers; k++)
		for (int e = 0; e < PEV_COUNT; e++)
			if (strcmp(pc->handlers[k], pev_name[e]) == 0)
				pc->has_ev |= 1u << e;
}

static void hello_done(void *ctx, const cJSON *reply, const char *error)
{
	struct policy_client *pc = ctx;
	pc->hello_id = 0;
	if (error || !cJSON_IsTrue(jget(reply, "ok"))) {
		log_warn("policyd: cannot refresh the handler list after a reload");
		return;
	}
	set_handlers(pc, jget(reply, "handlers"));
	log_info("policyd generation %.0f: %zu event handlers", pc->generation, pc->n_handlers);
}

static void send_hello(struct policy_client *pc);

/* Queues one frame for the end of this loop pass (pc_flush); -1: it is
 * too large. */
static int pc_send(struct policy_client *pc, const cJSON *doc)
{
	if (frame_encode(bufferevent_get_output(pc->bev), doc) != 0)
		return -1;
	event_active(pc->flush_ev, EV_TIMEOUT, 0);
	return 0;
}

/* The loop's pass is done: what it queued goes to the socket in one write.
 * While the write event is enabled (connecting, or the socket was full)
 * the bufferevent writes; so it does after an error, to report it to
 * pc_event. */
static void pc_flush(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct policy_client *pc = arg;
	if (!pc->bev || !pc->connected || (bufferevent_get_enabled(pc->bev) & EV_WRITE))
		return;
	struct evbuffer *out = bufferevent_get_output(pc->bev);
	if (evbuffer_get_length(out) == 0)
		return;
	int w = evbuffer_write(out, bufferevent_getfd(pc->bev));
	if (w < 0 || evbuffer_get_length(out) > 0)
		bufferevent_enable(pc->bev, EV_WRITE);
}

/* The bufferevent wrote the rest: the loop writes again.  (Before the
 * connection is reported, libevent calls this for a connect that finished
 * at once; its write event must stay enabled to report it.) */
static void pc_written(struct bufferevent *bev, void *arg)
{
	struct policy_client *pc = arg;
	if (pc->connected && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		bufferevent_disable(bev, EV_WRITE);
}

/* {"id":N,"op":"msg_file","req":R} from policyd: the file of the message
 * argument of call R, written now if it was not yet. */
static void answer_msg_file(struct policy_client *pc, const cJSON *doc)
{
	const cJSON *id = jget(doc, "id");
	const cJSON *req = jget(doc, "req");
	cJSON *r = cJSON_CreateObject();
	if (id)
		jadd_item(r, "id", cJSON_Duplicate(id, 1));
	struct pending *p = pending_find(pc, req);
	char err[300];
	const char *path = NULL;
	if (!p || p->reply || p->error)
		snprintf(err, sizeof err, "no such call in flight");
	else if (!p->file_cb)
		snprintf(err, sizeof err, "the call has no message file");
	else
		path = p->file_cb(p->ctx, err, sizeof err);
	jadd_bool(r, "ok", path != NULL);
	if (path)
		jadd_string(r, "path", path);
	else
		jadd_string(r, "error", err);
	pc_send(pc, r);
	cJSON_Delete(r);
}

static void pc_read(struct bufferevent *bev, void *arg)
{
	struct policy_client *pc = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	for (;;) {
		cJSON *doc;
		char err[128];
		int rc = frame_read(in, &doc, err, sizeof err);
		if (rc == 0)
			return;
		if (rc < 0) {
			pc_drop(pc, err);
			return;
		}
		const cJSON *op = jget(doc, "op");
		if (cJSON_IsString(op) && strcmp(op->valuestring, "msg_file") == 0) {
			answer_msg_file(pc, doc);
			cJSON_Delete(doc);
			continue;
		}
		const cJSON *gen = jget(doc, "generation");
		if (cJSON_IsNumber(gen) && gen->valuedouble > pc->generation) {
			/* the policy was reloaded: learn its handlers */
			pc->generation = gen->valuedouble;
			if (!pc->hello_id)
				send_hello(pc);
		}
		struct pending *p = pending_find(pc, jget(doc, "id"));
		if (!p || p->reply || p->error) {
			cJSON_Delete(doc); /* an answer for a call that was cancelled */
			continue;
		}
		/* answered here, in the loop's read callback: no timer pass */
		pending_take(pc, p->id);
		p->reply = doc;
		p->cb(p->ctx, p->reply, NULL);
		pending_free(p);
	}
}

cJSON *policy_reply_take(const cJSON *reply, const char *key)
{
	/* the reply is the client's, freed after the callback: taking a
	 * member out of it is the callback's to do */
	return reply ? jdetach((cJSON *)reply, key) : NULL;
}

cJSON *policy_then(const char *event, cJSON *args, int meta_pos)
{
	cJSON *then = cJSON_CreateObject();
	jadd_string(then, "event", event);
	jadd_item(then, "args", args);
	jadd_number(then, "meta_pos", meta_pos);
	return then;
}

void policy_meta_apply(cJSON *meta, const cJSON *obj)
{
	cJSON *set = policy_reply_take(obj, "meta_set");
	while (cJSON_IsObject(set) && set->child) {
		cJSON *v = cJSON_DetachItemViaPointer(set, set->child);
		cJSON *old = v->string ? jfind(meta, v->string) : NULL;
		if (old)
			cJSON_ReplaceItemViaPointer(meta, old, v);  /* in its place, name kept */
		else if (v->string)
			cJSON_AddItemToObject(meta, v->string, v);  /* copies the name first */
		else
			cJSON_Delete(v);
	}
	cJSON_Delete(set);
}

static void pc_event(struct bufferevent *bev, short what, void *arg)
{
	struct policy_client *pc = arg;
	if (what & BEV_EVENT_CONNECTED) {
		pc->backoff = 0.05;
		pc->connected = true;
		/* what was queued meanwhile goes with the write event */
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			bufferevent_disable(bev, EV_WRITE);
		return;
	}
	pc_drop(pc, (what & BEV_EVENT_EOF) ? "closed by policyd" : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void pc_reconnect(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	pc_connect(arg);
}

static void pc_connect(struct policy_client *pc)
{
	struct sockaddr_un sun;
	socklen_t len = netaddr_unix(pc->sockname, &sun);
	pc->bev = bufferevent_socket_new(pc->base, -1, BEV_OPT_CLOSE_ON_FREE);
	pc->connected = false;
	bufferevent_setcb(pc->bev, pc_read, pc_written, pc_event, pc);
	bufferevent_enable(pc->bev, EV_READ | EV_WRITE); /* the write event sees the connect */
	if (len == 0 || bufferevent_socket_connect(pc->bev, (struct sockaddr *)&sun, (int)len) != 0)
		pc_drop(pc, "connect failed");
}

struct policy_client *policy_client_new(struct event_base *base, const char *sockname,
					const cJSON *handlers)
{
	struct policy_client *pc = xcalloc(1, sizeof *pc);
	pc->base = base;
	pc->sockname = xstrdup(sockname);
	pc->backoff = 0.05;
	pc->next_id = 1;
	pc->reconnect_ev = evtimer_new(base, pc_reconnect, pc);
	pc->flush_ev = event_new(base, -1, 0, pc_flush, pc);
	set_handlers(pc, handlers);
	if (sockname[0])
		pc_connect(pc);
	return pc;
}

void policy_client_free(struct policy_client *pc)
{
	if (!pc)
		return;
	for (size_t b = 0; b < PENDING_BUCKETS; b++) {
		struct pending *p = pc->buckets[b];
		while (p) {
			struct pending *next = p->next;
			pending_free(p);
			p = next;
		}
	}
	if (pc->bev)
		bufferevent_free(pc->bev);
	event_free(pc->reconnect_ev);
	event_free(pc->flush_ev);
	for (size_t i = 0; i < pc->n_handlers; i++)
		free(pc->handlers[i]);
	free(pc->handlers);
	free(pc->sockname);
	free(pc);
}

bool policy_has_ev(const struct policy_client *pc, enum policy_ev ev)
{
	return pc->has_ev >> ev & 1u;
}

static uint64_t send_request(struct policy_client *pc, const char *op, const char *event, cJSON *args,
			     int meta_pos, const cJSON *meta, cJSON *then, double timeout,
			     policy_cb cb, void *ctx);

static void send_hello(struct policy_client *pc)
{
	pc->hello_id = send_request(pc, "hello", NULL, NULL, -1, NULL, NULL, 30, hello_done, pc);
}

uint64_t policy_call(struct policy_client *pc, const char *event, cJSON *args, int meta_pos,
		     const cJSON *meta, double timeout, policy_cb cb, void *ctx)
{
	return send_request(pc, "event", event, args, meta_pos, meta, NULL, timeout, cb, ctx);
}

uint64_t policy_call_then(struct policy_client *pc, const char *event, cJSON *args, int meta_pos,
			  const cJSON *meta, cJSON *then, double timeout, policy_cb cb, void *ctx)
{
	return send_request(pc, "event", event, args, meta_pos, meta, then, timeout, cb, ctx);
}

static uint64_t send_request(struct policy_client *pc, const char *op, const char *event, cJSON *args,
			     int meta_pos, const cJSON *meta, cJSON *then, double timeout,
			     policy_cb cb, void *ctx)
{
	struct pending *p = xcalloc(1, sizeof *p);
	p->id = pc->next_id++;
	p->cb = cb;
	p->ctx = ctx;
	p->pc = pc;
	p->timer = evtimer_new(pc->base, pending_fire, p);
	p->next = *bucket(pc, p->id);
	*bucket(pc, p->id) = p;

	if (!pc->bev) {
		/* reconnect now: kumod holds the listening socket, so the call
		 * waits (up to its deadline) for a restarting policyd */
		evtimer_del(pc->reconnect_ev);
		pc_connect(pc);
	}
	if (!pc->bev) {
		cJSON_Delete(args);
		cJSON_Delete(then);
		pending_finish(p, NULL, "policyd is not available");
		return p->id;
	}
	cJSON *req = cJSON_CreateObject();
	jadd_number(req, "id", (double)p->id);
	jadd_string(req, "op", op);
	if (event) {
		jadd_string(req, "event", event);
		/* changed metadata comes back as what was set ("meta_set") */
		jadd_bool(req, "delta", 1);
	}
	if (args)
		jadd_item(req, "args", args);
	if (meta_pos >= 0) {
		jadd_number(req, "meta_pos", meta_pos);
		cJSON_AddItemReferenceToObject(req, "meta", (cJSON *)meta); /* printed, not copied */
	}
	if (then)
		jadd_item(req, "then", then);
	if (pc_send(pc, req) != 0) {
		cJSON_Delete(req);
		pending_finish(p, NULL, "policy request too large");
		return p->id;
	}
	cJSON_Delete(req);
	if (timeout <= 0)
		timeout = 300;
	struct timeval tv = { (time_t)timeout, (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6) };
	evtimer_add(p->timer, &tv);
	return p->id;
}

void policy_set_msg_file(struct policy_client *pc, uint64_t id, policy_file_cb cb)
{
	struct pending *p = *bucket(pc, id);
	while (p && p->id != id)
		p = p->next;
	if (p)
		p->file_cb = cb;
}

void policy_cancel(struct policy_client *pc, uint64_t id)
{
	struct pending *p = pending_take(pc, id);
	if (p)
		pending_free(p);
}
