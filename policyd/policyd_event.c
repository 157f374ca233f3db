/* policyd_event: answers one lib/ipc.h request (op init, hello or event)
 * with one reply that echoes its "id".
 * Entry point: policy_handle.  "init" runs the policy's init handler once
 * and caches the outcome (the relay asks once per policyd); "event" converts
 * the arguments, inserts the connection metadata object at meta_pos, calls
 * the handler(s) and reports ok/reject/error with the metadata afterwards
 * (when the handler changed it).
 * An argument {"__msg":{...}} becomes a Message (policyd_msg.c); the reply
 * then carries its "msg" object (envelope, meta and edits) with ok and
 * reject results.
 * Failures never escape: a bad request or a missing handler is
 * {"ok":false,...}; a Lua error in a handler is "result":"error"; even an
 * out-of-memory error inside Lua only ends the request (all Lua work runs
 * under lua_cpcall, so the stack is left as it was found). */
#include "policyd/policyd.h"
#include "lib/jadd.h"
#include "lib/xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>

static cJSON *need(cJSON *j)
{
	if (!j)
		abort();  /* cJSON out of memory: same policy as xalloc */
	return j;
}

static cJSON *fail(cJSON *reply, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static cJSON *fail(cJSON *reply, const char *fmt, ...)
{
	char msg[2300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	jadd_bool(reply, "ok", 0);
	jadd_string(reply, "error", msg);
	return reply;
}

/* --- init --- */

static int init_protected(lua_State *L)
{
	if (policy_push_handlers(L, "init")) {
		lua_rawgeti(L, -1, 1);
		lua_call(L, 0, 0);
	}
	return 0;
}

static cJSON *run_init(struct policy *p)
{
	cJSON *r = need(cJSON_CreateObject());
	p->in_event = true;
	int rc = lua_cpcall(p->L, init_protected, p);
	p->in_event = false;
	if (rc != 0) {
		char *msg = policy_error_text(p->L, -1);
		lua_pop(p->L, 1);
		fail(r, "%s", msg);
		free(msg);
		return r;
	}
	jadd_bool(r, "ok", 1);
	cJSON *config = need(jadd_object(r, "config"));
	jadd_item(config, "listeners", need(cJSON_Duplicate(p->listeners, 1)));
	jadd_item(config, "spools", need(cJSON_Duplicate(p->spools, 1)));
	jadd_item(config, "logs",
			      need(p->logs ? cJSON_Duplicate(p->logs, 1) : cJSON_CreateNull()));
	if (p->resolver)
		jadd_item(config, "resolver", need(cJSON_Duplicate(p->resolver, 1)));
	jadd_item(config, "handlers", need(cJSON_Duplicate(p->handler_names, 1)));
	return r;
}

static cJSON *handle_init(struct policy *p, cJSON *reply)
{
	if (p->load_error)
		return fail(reply, "%s", p->load_error);
	if (!p->init_result)
		p->init_result = run_init(p);
	for (const cJSON *c = p->init_result->child; c; c = c->next)
		cJSON_AddItemToObject(reply, c->string, need(cJSON_Duplicate(c, 1)));
	return reply;
}

static cJSON *handle_hello(struct policy *p, cJSON *reply)
{
	if (p->load_error)
		return fail(reply, "%s", p->load_error);
	jadd_bool(reply, "ok", 1);
	jadd_item(reply, "handlers", need(cJSON_Duplicate(p->handler_names, 1)));
	jadd_number(reply, "generation", 0);
	return reply;
}

/* --- event --- */

enum outcome { OUT_OK, OUT_REJECT, OUT_ERROR, OUT_BAD, OUT_NOHANDLER };

struct event_ctx {
	struct policy *p;
	const char *event;
	cJSON *args;          /* array, the request's */
	int meta_pos;         /* -1: no connection metadata argument */
	cJSON *request;       /* for its "meta", taken out when pushed */
	cJSON *req_meta;      /* that "meta" member, NULL if none */

	enum outcome outcome;
	cJSON *ret;           /* owned: first return value (OUT_OK) */
	cJSON *ret2;          /* owned: second return value, NULL if none */
	cJSON *meta_after;    /* owned: the metadata after the call */
	bool meta_changed;    /* set_meta was called on it */
	bool delta;           /* the reply says what was set ("meta_set") */
	cJSON *meta_delta;    /* owned: what set_meta set (delta only) */
	cJSON *msg_after;     /* owned: the Message argument's reply object */
	int code;             /* OUT_REJECT */
	char *text;           /* owned (OUT_REJECT) */
	char *mode;           /* owned (OUT_REJECT) */
	char *error;          /* owned (OUT_ERROR, OUT_BAD) */
};

static void ctx_clear(struct event_ctx *c)
{
	cJSON_Delete(c->ret);
	cJSON_Delete(c->ret2);
	cJSON_Delete(c->meta_after);
	cJSON_Delete(c->meta_delta);
	cJSON_Delete(c->msg_after);
	free(c->text);
	free(c->mode);
	free(c->error);
	c->ret = c->ret2 = c->meta_after = c->meta_delta = c->msg_after = NULL;
	c->text = c->mode = c->error = NULL;
}

/* The "__msg" object when the argument a is a message reference. */
static cJSON *msg_ref(cJSON *a)
{
	return cJSON_IsObject(a) ? jget(a, "__msg") : NULL;
}

/* Pushes the handler arguments; returns how many, or -1 (OUT_BAD set).
 * *meta_idx and *msg_idx are the stack slots of the connection metadata
 * and of the Message, 0 when there is none. */
static int push_args(lua_State *L, struct event_ctx *c, int *meta_idx, int *msg_idx)
{
	int nargs = cJSON_GetArraySize(c->args);
	int n = 0;
	cJSON *a = c->args->child;
	luaL_checkstack(L, nargs + 2, "too many arguments");
	*meta_idx = *msg_idx = 0;
	for (int i = 0; i <= nargs; i++) {
		if (i == c->meta_pos) {
			/* the request's metadata object, taken out of it (no copy) */
			cJSON *meta = c->req_meta ? cJSON_DetachItemViaPointer(c->request, c->req_meta) : NULL;
			c->req_meta = NULL;
			policy_meta_push(L, meta ? meta : need(cJSON_CreateObject()));
			*meta_idx = lua_gettop(L);
			n++;
		}
		if (i == nargs)
			break;
		char err[400];
		cJSON *m = msg_ref(a);
		if (m && *msg_idx) {
			c->outcome = OUT_BAD;
			c->error = xasprintf("bad request: args[%d]: a second message argument", i);
			return -1;
		}
		int rc = m ? policy_msg_push(L, m, err, sizeof err)
			   : policy_json_push(L, a, POLICY_JSON_ADDR, err, sizeof err);
		if (rc < 0) {
			c->outcome = OUT_BAD;
			c->error = xasprintf("bad request: args[%d]: %s", i, err);
			return -1;
		}
		if (m)
			*msg_idx = lua_gettop(L);
		a = a->next;
		n++;
	}
	return n;
}

/* Detaches the Message argument and keeps its reply object; a message
 * that cannot be returned turns an ok or a reject into an error. */
static void take_msg(lua_State *L, struct event_ctx *c, int msg_idx)
{
	char err[300];
	c->msg_after = policy_msg_take(L, msg_idx, c->delta, err, sizeof err);
	if (!c->msg_after && (c->outcome == OUT_OK || c->outcome == OUT_REJECT)) {
		c->outcome = OUT_ERROR;
		free(c->error);
		c->error = xasprintf("%s: %s", c->event, err);
	}
}

/* The first return value is nil (or absent). */
static bool returned_nil(lua_State *L, int base, int nret)
{
	return nret == 0 || lua_isnil(L, base + 1);
}

static void take_returns(lua_State *L, struct event_ctx *c, int base, int nret)
{
	char err[300];
	c->ret = policy_json_from_lua(L, base + 1, err, sizeof err);  /* none -> null */
	if (c->ret && nret >= 2) {
		c->ret2 = policy_json_from_lua(L, base + 2, err, sizeof err);
		if (!c->ret2) {
			cJSON_Delete(c->ret);
			c->ret = NULL;
		}
	}
	if (!c->ret) {
		c->outcome = OUT_ERROR;
		c->error = xasprintf("%s: return value: %s", c->event, err);
	}
}

static void take_error(lua_State *L, struct event_ctx *c)
{
	int code;
	const char *text, *mode;
	if (policy_is_rejection(L, -1, &code, &text, &mode)) {
		c->outcome = OUT_REJECT;
		c->code = code;
		c->text = xstrdup(text);
		c->mode = xstrdup(mode);
	} else {
		c->outcome = OUT_ERROR;
		c->error = policy_error_text(L, -1);
	}
}

static int event_protected(lua_State *L)
{
	struct event_ctx *c = lua_touserdata(L, 1);
	if (!policy_push_handlers(L, c->event)) {
		/* after a reload the caller may not know yet that the handler is
		 * gone: no handler means the event's default behaviour */
		c->outcome = OUT_NOHANDLER;
		return 0;
	}
	int handlers = lua_gettop(L);
	int meta_idx, msg_idx;
	int first_arg = handlers + 1;
	int nargs = push_args(L, c, &meta_idx, &msg_idx);
	if (nargs < 0)
		return 0;
	size_t nh = lua_objlen(L, handlers);
	c->outcome = OUT_OK;
	for (size_t k = 1; k <= nh; k++) {
		int base = lua_gettop(L);
		luaL_checkstack(L, nargs + 1, "too many arguments");
		lua_rawgeti(L, handlers, (int)k);
		for (int i = 0; i < nargs; i++)
			lua_pushvalue(L, first_arg + i);
		c->p->in_event = true;
		int rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
		c->p->in_event = false;
		if (rc != 0) {
			take_error(L, c);
			break;
		}
		int nret = lua_gettop(L) - base;
		if (k < nh && returned_nil(L, base, nret)) {
			lua_settop(L, base);  /* multi-handler event: next one */
			continue;
		}
		take_returns(L, c, base, nret);
		break;
	}
	if (meta_idx)
		c->meta_after = policy_meta_take(L, meta_idx, &c->meta_changed,
						 c->delta ? &c->meta_delta : NULL);
	if (msg_idx)
		take_msg(L, c, msg_idx);
	return 0;
}

/* The request for "then" (lib/ipc.h), the event that follows this one in
 * the same transaction, or NULL when it may not run here: it gets the
 * connection metadata as this handler left it, and a message argument
 * sent without "meta" is this event's message continued, which it may be
 * only if the handler changed nothing of it but its meta (that meta is
 * then its meta).  Otherwise smtpd sends the event itself, after applying
 * this reply, as it would without "then". */
static cJSON *then_request(cJSON *req, cJSON *then, struct event_ctx *c)
{
	cJSON *args = jget(then, "args");
	const cJSON *event = jget(then, "event");
	if (!cJSON_IsString(event) || (args && !cJSON_IsArray(args)))
		return NULL;
	for (cJSON *a = args ? args->child : NULL; a; a = a->next) {
		cJSON *m = msg_ref(a);
		if (!cJSON_IsObject(m) || jget(m, "meta") ||
		    cJSON_IsTrue(jget(m, "meta_from_conn")))
			continue;
		const cJSON *was = c->msg_after;
		if (!was || jget(was, "data") ||
		    jget(was, "prefix") ||
		    jget(was, "headers") ||
		    !cJSON_Compare(jget(was, "sender"),
				   jget(m, "sender"), 1) ||
		    !cJSON_Compare(jget(was, "recipients"),
				   jget(m, "recipients"), 1))
			return NULL;
		/* with delta this reply has no use for the whole meta: moved */
		cJSON *meta = c->delta ? jdetach(c->msg_after, "meta")
				       : cJSON_Duplicate(jget(was, "meta"), 1);
		jadd_item(m, "meta", meta ? meta : need(cJSON_CreateObject()));
	}
	cJSON *next = need(cJSON_CreateObject());
	jadd_item(next, "event", need(cJSON_Duplicate(event, 1)));
	if (args)
		jadd_item(next, "args", cJSON_DetachItemViaPointer(then, args));
	cJSON *pos = jget(then, "meta_pos");
	if (pos)
		jadd_item(next, "meta_pos", cJSON_DetachItemViaPointer(then, pos));
	cJSON *after = jget(then, "then");
	if (after)
		jadd_item(next, "then", cJSON_DetachItemViaPointer(then, after));
	/* the connection metadata as this handler left it (or as it came,
	 * when this event had no conn_meta argument) */
	cJSON *meta = c->meta_after;
	if (meta && c->meta_changed && !c->delta)
		meta = need(cJSON_Duplicate(meta, 1));  /* this reply's "meta" too */
	else if (meta)
		c->meta_after = NULL;
	else
		meta = jdetach(req, "meta");
	if (meta)
		jadd_item(next, "meta", meta);
	return next;
}

/* Events one request may run: itself and the "then"s after it. */
#define THEN_MAX 4

/* A message argument sent with "meta_from_conn" (lib/ipc.h) gets a copy of
 * the request's connection metadata as its metadata. */
static void meta_from_conn(const cJSON *meta, cJSON *args)
{
	for (cJSON *a = args->child; a; a = a->next) {
		cJSON *m = msg_ref(a);
		if (!cJSON_IsObject(m) || jget(m, "meta") ||
		    !cJSON_IsTrue(jget(m, "meta_from_conn")))
			continue;
		jadd_item(m, "meta", need(cJSON_IsObject(meta) ? cJSON_Duplicate(meta, 1)
									: cJSON_CreateObject()));
	}
}

/* depth: how many events of the request ran before this one; delta: the
 * request asked for "meta_set" instead of whole metadata objects. */
static cJSON *handle_event(struct policy *p, cJSON *req, cJSON *reply, int depth, bool delta)
{
	/* the members, in one pass (a frame has no key twice: lib/frame.c) */
	cJSON *event = NULL, *args = NULL, *meta_pos = NULL, *meta = NULL, *then = NULL;
	for (cJSON *m = req->child; m; m = m->next) {
		const char *k = m->string;
		cJSON **slot = NULL;
		switch (k ? k[0] : '\0') {
		case 'e': slot = strcmp(k, "event") == 0 ? &event : NULL; break;
		case 'a': slot = strcmp(k, "args") == 0 ? &args : NULL; break;
		case 'm': slot = strcmp(k, "meta_pos") == 0 ? &meta_pos : strcmp(k, "meta") == 0 ? &meta : NULL; break;
		case 't': slot = strcmp(k, "then") == 0 ? &then : NULL; break;
		}
		if (slot && !*slot)
			*slot = m;
	}
	static cJSON empty_array = { .type = cJSON_Array };  /* never changed */

	if (!cJSON_IsString(event) || !event->valuestring[0])
		return fail(reply, "bad request: missing event");
	if (args && !cJSON_IsArray(args))
		return fail(reply, "bad request: args must be an array");
	if (meta && !cJSON_IsObject(meta))
		return fail(reply, "bad request: meta must be an object");
	if (!args)
		args = &empty_array;
	int nargs = cJSON_GetArraySize(args);
	int pos = -1;
	if (meta_pos && !cJSON_IsNull(meta_pos)) {
		double d = cJSON_IsNumber(meta_pos) ? meta_pos->valuedouble : -1;
		if (!(d >= 0 && d <= nargs) || d != (double)(int)d)
			return fail(reply, "bad request: meta_pos must be an integer from 0 to %d",
				    nargs);
		pos = (int)d;
	}
	if (p->load_error)
		return fail(reply, "%s", p->load_error);
	meta_from_conn(meta, args);

	struct event_ctx c = {
		.p = p, .event = event->valuestring, .args = args, .meta_pos = pos, .request = req,
		.req_meta = meta,
		.outcome = OUT_ERROR, .delta = delta,
	};
	lua_State *L = p->L;
	int rc = lua_cpcall(L, event_protected, &c);
	p->in_event = false;
	if (rc != 0) {
		char *msg = policy_error_text(L, -1);
		lua_pop(L, 1);
		ctx_clear(&c);
		fail(reply, "policyd: %s: %s", event->valuestring, msg);
		free(msg);
		return reply;
	}
	switch (c.outcome) {
	case OUT_BAD:
		fail(reply, "%s", c.error);
		break;
	case OUT_NOHANDLER:
		jadd_bool(reply, "ok", 1);
		jadd_string(reply, "result", "ok");
		jadd_null(reply, "ret");
		jadd_bool(reply, "nohandler", 1);
		break;
	case OUT_ERROR:
		jadd_bool(reply, "ok", 1);
		jadd_string(reply, "result", "error");
		jadd_string(reply, "error", c.error ? c.error : "unknown error");
		break;
	case OUT_REJECT:
		jadd_bool(reply, "ok", 1);
		jadd_string(reply, "result", "reject");
		jadd_number(reply, "code", c.code);
		jadd_string(reply, "text", c.text);
		jadd_string(reply, "mode", c.mode);
		break;
	case OUT_OK:
		jadd_bool(reply, "ok", 1);
		jadd_string(reply, "result", "ok");
		jadd_item(reply, "ret", c.ret ? c.ret : need(cJSON_CreateNull()));
		c.ret = NULL;
		if (c.ret2) {
			jadd_item(reply, "ret2", c.ret2);
			c.ret2 = NULL;
		}
		break;
	}
	cJSON *next = c.outcome == OUT_OK && cJSON_IsObject(then) && depth + 1 < THEN_MAX
			      ? then_request(req, then, &c) : NULL;
	/* the reply carries the metadata only when the handler changed it:
	 * the whole object, or with delta what was set in it */
	if ((c.outcome == OUT_OK || c.outcome == OUT_REJECT) && c.meta_changed) {
		if (!delta && c.meta_after) {
			jadd_item(reply, "meta", c.meta_after);
			c.meta_after = NULL;
		} else if (delta && c.meta_delta) {  /* meta_after may be the next event's now */
			jadd_item(reply, "meta_set", c.meta_delta);
			c.meta_delta = NULL;
		}
	}
	if ((c.outcome == OUT_OK || c.outcome == OUT_REJECT) && c.msg_after) {
		if (delta)  /* "meta" stayed for then_request; the reply has meta_set */
			jdelete(c.msg_after, "meta");
		jadd_item(reply, "msg", c.msg_after);
		c.msg_after = NULL;
	}
	ctx_clear(&c);
	if (next) {
		cJSON *r = need(cJSON_CreateObject());
		jadd_item(reply, "then", handle_event(p, next, r, depth + 1, delta));
		cJSON_Delete(next);
	}
	return reply;
}

cJSON *policy_handle(struct policy *p, cJSON *request)
{
	cJSON *reply = need(cJSON_CreateObject());
	const cJSON *id = jget(request, "id");
	if (!id)
		return fail(reply, "bad request: missing id");
	jadd_item(reply, "id", need(cJSON_Duplicate(id, 1)));
	const cJSON *op = jget(request, "op");
	if (!cJSON_IsString(op))
		return fail(reply, "bad request: missing op");
	if (strcmp(op->valuestring, "init") == 0)
		return handle_init(p, reply);
	if (strcmp(op->valuestring, "hello") == 0)
		return handle_hello(p, reply);
	if (strcmp(op->valuestring, "event") == 0)
		return handle_event(p, request, reply, 0,
				    cJSON_IsTrue(jget(request, "delta")));
	char esc[120];
	size_t n = strlen(op->valuestring);
	snprintf(esc, sizeof esc, "%.100s%s", op->valuestring, n > 100 ? "..." : "");
	return fail(reply, "unknown op '%s'", esc);
}
