/* qmgr_policy: the queue manager's client of kumo-policyd, for the
 * delivery events (get_queue_config, get_egress_path_config).  One stream
 * connection, opened when needed, requests matched to replies by id, each
 * bounded by a timer.  When policyd is gone, late or answers an error, the
 * callback gets the error text; it always runs from the event loop.
 * Entry points: qpolicy_new, qpolicy_call, qpolicy_cancel, qpolicy_free. */
#include "qmgr/qmgr.h"
#include "lib/jadd.h"
#include "lib/frame.h"
#include "lib/log.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>

#define QPOLICY_TIMEOUT 30   /* seconds per call */

struct qcall {
	struct qcall *next;
	uint64_t id;
	qpolicy_cb cb;
	void *arg;
	struct event *timer;   /* deadline, or a zero timer delivering a result */
	cJSON *reply;          /* owned, once answered */
	char *error;           /* owned */
	struct qpolicy *p;
};

struct qpolicy {
	struct event_base *base;
	char *sockname;        /* owned */
	struct bufferevent *bev;
	uint64_t next_id;
	struct qcall *calls;
};

static struct qcall *call_take(struct qpolicy *p, uint64_t id)
{
	for (struct qcall **pp = &p->calls; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			struct qcall *c = *pp;
			*pp = c->next;
			return c;
		}
	}
	return NULL;
}

static void call_free(struct qcall *c)
{
	event_free(c->timer);
	cJSON_Delete(c->reply);
	free(c->error);
	free(c);
}

static void call_fire(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct qcall *c = arg;
	if (!call_take(c->p, c->id))
		return;
	if (!c->reply && !c->error)
		c->error = xstrdup("policy call timed out");
	c->cb(c->arg, c->reply, c->error);
	call_free(c);
}

/* Finish a call from the loop, soon, with reply or error. */
static void call_finish(struct qcall *c, cJSON *reply, const char *error)
{
	c->reply = reply;
	c->error = error ? xstrdup(error) : NULL;
	struct timeval zero = { 0, 0 };
	evtimer_add(c->timer, &zero);
}

static void drop(struct qpolicy *p, const char *why)
{
	if (p->bev) {
		bufferevent_free(p->bev);
		p->bev = NULL;
	}
	for (struct qcall *c = p->calls; c; c = c->next)
		if (!c->reply && !c->error)
			call_finish(c, NULL, why);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct qpolicy *p = arg;
	for (;;) {
		cJSON *doc = NULL;
		char err[200];
		int r = frame_read(bufferevent_get_input(bev), &doc, err, sizeof err);
		if (r == 0)
			return;
		if (r < 0) {
			log_warn("kumo-policyd sent a bad frame: %s", err);
			drop(p, "policyd sent a bad frame");
			return;
		}
		const cJSON *id = jget(doc, "id");
		const cJSON *gen = jget(doc, "generation");
		if (cJSON_IsNumber(gen) && (uint64_t)gen->valuedouble != Q->generation) {
			Q->generation = (uint64_t)gen->valuedouble;
			qmgr_policy_changed();
		}
		struct qcall *c = NULL;
		for (c = p->calls; c && cJSON_IsNumber(id); c = c->next)
			if (c->id == (uint64_t)id->valuedouble)
				break;
		if (!c || !cJSON_IsNumber(id) || c->reply || c->error) {
			cJSON_Delete(doc);
			continue;
		}
		const cJSON *ok = jget(doc, "ok");
		const cJSON *result = jget(doc, "result");
		const cJSON *error = jget(doc, "error");
		char why[600];
		if (!cJSON_IsTrue(ok) || !cJSON_IsString(result) || strcmp(result->valuestring, "ok") != 0) {
			if (cJSON_IsString(error))
				snprintf(why, sizeof why, "%s", error->valuestring);
			else if (cJSON_IsString(result) && strcmp(result->valuestring, "reject") == 0)
				snprintf(why, sizeof why, "the handler called kumo.reject");
			else
				snprintf(why, sizeof why, "policyd answered without a result");
			/* the reply goes along: a rejection carries its code and text */
			call_finish(c, doc, why);
		} else {
			call_finish(c, doc, NULL);
		}
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct qpolicy *p = arg;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		drop(p, "kumo-policyd is not available");
}

static int ensure_connected(struct qpolicy *p)
{
	if (p->bev)
		return 0;
	struct sockaddr_un sun;
	socklen_t len = netaddr_unix(p->sockname, &sun);
	p->bev = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(p->bev, on_read, NULL, on_event, p);
	bufferevent_enable(p->bev, EV_READ | EV_WRITE);
	if (len == 0 || bufferevent_socket_connect(p->bev, (struct sockaddr *)&sun, (int)len) != 0) {
		bufferevent_free(p->bev);
		p->bev = NULL;
		return -1;
	}
	return 0;
}

struct qpolicy *qpolicy_new(struct event_base *base, const char *sockname)
{
	struct qpolicy *p = xcalloc(1, sizeof *p);
	p->base = base;
	p->sockname = xstrdup(sockname);
	p->next_id = 1;
	return p;
}

uint64_t qpolicy_call(struct qpolicy *p, const char *event, cJSON *args, qpolicy_cb cb, void *arg)
{
	return qpolicy_call_meta(p, event, args, -1, NULL, cb, arg);
}

uint64_t qpolicy_call_meta(struct qpolicy *p, const char *event, cJSON *args, int meta_pos, cJSON *meta,
			   qpolicy_cb cb, void *arg)
{
	struct qcall *c = xcalloc(1, sizeof *c);
	c->id = p->next_id++;
	c->cb = cb;
	c->arg = arg;
	c->p = p;
	c->timer = evtimer_new(p->base, call_fire, c);
	c->next = p->calls;
	p->calls = c;
	cJSON *req = cJSON_CreateObject();
	jadd_number(req, "id", (double)c->id);
	jadd_string(req, "op", "event");
	jadd_string(req, "event", event);
	jadd_item(req, "args", args);
	if (meta) {
		jadd_number(req, "meta_pos", meta_pos);
		jadd_item(req, "meta", meta);
	}
	if (ensure_connected(p) != 0) {
		call_finish(c, NULL, "cannot connect to kumo-policyd");
	} else if (frame_encode(bufferevent_get_output(p->bev), req) != 0) {
		call_finish(c, NULL, "policy request too large");
	} else {
		struct timeval tv = { QPOLICY_TIMEOUT, 0 };
		evtimer_add(c->timer, &tv);
	}
	cJSON_Delete(req);
	return c->id;
}

void qpolicy_cancel(struct qpolicy *p, uint64_t id)
{
	struct qcall *c = call_take(p, id);
	if (c)
		call_free(c);
}

void qpolicy_free(struct qpolicy *p)
{
	if (!p)
		return;
	while (p->calls) {
		struct qcall *c = p->calls;
		p->calls = c->next;
		call_free(c);
	}
	if (p->bev)
		bufferevent_free(p->bev);
	free(p->sockname);
	free(p);
}
