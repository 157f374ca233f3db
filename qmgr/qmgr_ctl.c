/* qmgr_ctl: the queue manager's socket (FD_QMGR_LISTEN, lib/ipc.h), for
 * the smtpd workers and kumod.  lib/frame.h frames:
 *   {"op":"new","msgs":[{"id","seg","loc":"<data offset> <length> <crc>
 *        <meta offset> <length> <crc> <stamp> <inline>","meta":{...}},...]}
 *        smtpd: spooled, no reply; loc holds eight decimal numbers, one
 *        space apart (inline: 1 when the data offset is in the meta
 *        file, else 0); meta, when present, is the spooled meta record
 *        itself (without it, it is read back from the segment)
 *   {"id":N,"op":"inject","msgs":[{"id","meta","size"},...]} and then,
 *        right after the frame, the messages' bytes back to back (size
 *        bytes each, not JSON: no encoding either way)
 *        smtpd, deferred_spool: held in memory until the first transient
 *        failure or shutdown
 *        -> {"id":N,"ok":true} | {"id":N,"ok":false,"error":"..."}
 *   {"id":N,"op":"summary"}  -> {"id":N,"ok":true,"summary":{...}}
 *   {"id":N,"op":"flush"}    -> {"id":N,"ok":true,"flushed":K}
 * Only our own uid (or root) may connect (SO_PEERCRED); a bad frame closes
 * the connection.  Entry points: ctl_init, ctl_close. */
#include "qmgr/qmgr.h"
#include "lib/jadd.h"
#include "lib/jsonr.h"
#include "lib/frame.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

static struct evconnlistener *listener;

struct client {
	struct bufferevent *bev;
	struct client *next;
	cJSON *pending;   /* an inject whose bytes are not all here yet */
	size_t need;      /* how many bytes it is waiting for */
};
static struct client *clients;

static void client_drop(struct bufferevent *bev)
{
	for (struct client **pp = &clients; *pp; pp = &(*pp)->next) {
		if ((*pp)->bev == bev) {
			struct client *c = *pp;
			*pp = c->next;
			cJSON_Delete(c->pending);
			free(c);
			break;
		}
	}
	bufferevent_free(bev);
}

static void reply(struct bufferevent *bev, cJSON *r, const cJSON *req)
{
	const cJSON *id = jget(req, "id");
	if (cJSON_IsNumber(id))
		jadd_number(r, "id", id->valuedouble);
	frame_encode(bufferevent_get_output(bev), r);
	cJSON_Delete(r);
}

#define INJECT_BYTES_MAX (64u * 1024u * 1024u)  /* bytes after one inject frame */

/* The bytes an inject frame says follow it; 0 if it is not one, or
 * SIZE_MAX if its sizes are bad. */
static size_t inject_bytes(const cJSON *req)
{
	const cJSON *op = jget(req, "op");
	if (!cJSON_IsString(op) || strcmp(op->valuestring, "inject") != 0)
		return 0;
	size_t total = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, jget(req, "msgs")) {
		const cJSON *size = jget(m, "size");
		if (!cJSON_IsNumber(size) || size->valuedouble < 0 || size->valuedouble > INJECT_BYTES_MAX ||
		    size->valuedouble != (double)(size_t)size->valuedouble)
			return SIZE_MAX;
		total += (size_t)size->valuedouble;
		if (total > INJECT_BYTES_MAX)
			return SIZE_MAX;
	}
	return total;
}

/* One deferred_spool message into the queue, in memory; its bytes are
 * taken from in (all of them, even when it is refused). */
static int inject_one(const cJSON *m, struct evbuffer *in, char *err, size_t errlen)
{
	const cJSON *id = jget(m, "id");
	const cJSON *meta = jget(m, "meta");
	size_t len = (size_t)jget(m, "size")->valuedouble;
	char *bytes = xmalloc(len + 1);
	if (evbuffer_remove(in, bytes, len) != (int)len) {
		free(bytes);
		snprintf(err, errlen, "inject: the message bytes are missing");
		return -1;
	}
	bytes[len] = '\0';
	if (!cJSON_IsString(id) || !spool_id_valid(id->valuestring) || !cJSON_IsString(meta)) {
		free(bytes);
		snprintf(err, errlen, "inject: bad message");
		return -1;
	}
	if (Q->stopping || qmgr_find(id->valuestring)) {
		free(bytes);
		if (Q->stopping)
			snprintf(err, errlen, "the queue manager is stopping");
		return Q->stopping ? -1 : 0;
	}
	cJSON *doc = jsonr_parse_any(meta->valuestring, strlen(meta->valuestring));
	if (!doc) {
		free(bytes);
		snprintf(err, errlen, "inject %s: bad meta", id->valuestring);
		return -1;
	}
	int rc = qmgr_add(id->valuestring, doc, NULL, bytes, len, xstrdup(meta->valuestring), err, errlen);
	cJSON_Delete(doc);
	return rc;
}

int qmgr_loc_numbers(const char *p, uint64_t v[8])
{
	for (int i = 0; i < 8; i++) {
		if (i && *p++ != ' ')
			return -1;
		/* 1 to 19 digits: never past 2^64 */
		const char *d = p;
		uint64_t u = 0;
		while (*p >= '0' && *p <= '9' && p - d < 20)
			u = u * 10 + (uint64_t)(*p++ - '0');
		if (p == d || p - d > 19)
			return -1;
		v[i] = u;
	}
	return *p ? -1 : 0;
}

/* A "new" notice's message: its id and location, or NULL if malformed. */
static const char *notice_loc(const cJSON *m, struct spool_loc *loc)
{
	const cJSON *id = jget(m, "id");
	const cJSON *seg = jget(m, "seg");
	const cJSON *l = jget(m, "loc");
	if (!cJSON_IsString(id) || !spool_id_valid(id->valuestring) || !cJSON_IsString(seg) ||
	    !cJSON_IsString(l))
		return NULL;
	uint64_t v[8];
	if (qmgr_loc_numbers(l->valuestring, v) != 0)
		return NULL;
	memset(loc, 0, sizeof *loc);
	loc->seg = spool_seg_get(&Q->spool, seg->valuestring);
	if (!loc->seg || v[2] > UINT32_MAX || v[4] > UINT32_MAX || v[5] > UINT32_MAX || v[7] > 1)
		return NULL;
	loc->data_off = (uint64_t)v[0];
	loc->data_len = (uint64_t)v[1];
	loc->data_crc = (uint32_t)v[2];
	loc->meta_off = (uint64_t)v[3];
	loc->meta_len = (uint32_t)v[4];
	loc->meta_crc = (uint32_t)v[5];
	loc->stamp = (uint64_t)v[6];
	loc->data_in_meta = v[7] == 1;
	return id->valuestring;
}

static void handle(struct bufferevent *bev, const cJSON *req)
{
	const cJSON *op = jget(req, "op");
	const char *o = cJSON_IsString(op) ? op->valuestring : "";
	if (strcmp(o, "new") == 0) {
		const cJSON *m;
		cJSON_ArrayForEach(m, jget(req, "msgs")) {
			char err[300];
			struct spool_loc loc;
			const char *id = notice_loc(m, &loc);
			if (!id)
				log_warn("a bad notice of a new message; the spool listing will find it");
			else if (qmgr_notice(id, &loc, jget(m, "meta"), err,
					     sizeof err) != 0)
				log_warn("message %.40s: %s", id, err);
		}
		return;
	}
	cJSON *r = cJSON_CreateObject();
	if (strcmp(o, "inject") == 0) {
		char err[300] = "";
		const cJSON *m;
		struct evbuffer *in = bufferevent_get_input(bev);
		cJSON_ArrayForEach(m, jget(req, "msgs")) {
			char e[300] = "";
			/* every message's bytes are read, whatever happens */
			if (inject_one(m, in, e, sizeof e) != 0 && !err[0])
				snprintf(err, sizeof err, "%s", e);
		}
		jadd_bool(r, "ok", !err[0]);
		if (err[0]) {
			log_warn("deferred_spool message refused: %s", err);
			jadd_string(r, "error", err);
		}
	} else if (strcmp(o, "summary") == 0) {
		jadd_bool(r, "ok", 1);
		jadd_item(r, "summary", qmgr_summary());
	} else if (strcmp(o, "flush") == 0) {
		size_t n;
		qmgr_flush(&n);
		jadd_bool(r, "ok", 1);
		jadd_number(r, "flushed", (double)n);
	} else {
		jadd_bool(r, "ok", 0);
		jadd_string(r, "error", "unknown op");
	}
	reply(bev, r, req);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	for (;;) {
		if (c->pending) {
			/* an inject frame waits for the bytes that follow it */
			if (evbuffer_get_length(in) < c->need)
				return;
			cJSON *req = c->pending;
			c->pending = NULL;
			handle(bev, req);
			cJSON_Delete(req);
			continue;
		}
		cJSON *req = NULL;
		char err[200];
		int r = frame_read(in, &req, err, sizeof err);
		if (r == 0)
			return;
		size_t need = r > 0 ? inject_bytes(req) : 0;
		if (r < 0 || need == SIZE_MAX) {
			log_warn("bad frame on the queue manager socket: %s", r < 0 ? err : "bad inject sizes");
			cJSON_Delete(req);
			client_drop(bev);
			return;
		}
		if (need > 0) {
			c->pending = req;
			c->need = need;
			continue;
		}
		handle(bev, req);
		cJSON_Delete(req);
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)arg;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		client_drop(bev);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	(void)arg;
	struct ucred cred;
	socklen_t clen = sizeof cred;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 ||
	    (cred.uid != getuid() && cred.uid != 0)) {
		close(fd);
		return;
	}
	struct bufferevent *bev = bufferevent_socket_new(Q->base, fd, BEV_OPT_CLOSE_ON_FREE);
	struct client *c = xcalloc(1, sizeof *c);
	bufferevent_setcb(bev, on_read, NULL, on_event, c);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	c->bev = bev;
	c->next = clients;
	clients = c;
}

void ctl_init(int listen_fd)
{
	evutil_make_socket_nonblocking(listen_fd);
	listener = evconnlistener_new(Q->base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1,
				      listen_fd);
	if (!listener)
		log_fatal("cannot serve the queue manager socket on descriptor %d", listen_fd);
}

void ctl_close(void)
{
	if (listener)
		evconnlistener_free(listener);
	listener = NULL;
	while (clients)
		client_drop(clients->bev);
}
