/* smtpd_qmgr: tells kumo-qmgr about the messages this worker stored, so it
 * delivers them at once: {"op":"new","ids":[...]} frames (lib/ipc.h), no
 * reply.  While the queue manager is away (restarting), notices wait in
 * memory (bounded) and go out on reconnection; a notice lost anyway (this
 * worker dies, the bound is hit) is harmless, since the queue manager lists
 * the spool at start and every few minutes.
 * Entry points: qmgr_client_new, qmgr_notify, qmgr_client_free. */
#include "smtpd/smtpd.h"
#include "lib/frame.h"
#include "lib/log.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define QMGR_BACKLOG_MAX (4u * 1024u * 1024u)  /* bytes of notices kept while away */

struct qmgr_client {
	struct event_base *base;
	char *sockname;            /* owned */
	struct bufferevent *bev;   /* NULL while away */
	struct evbuffer *backlog;  /* owned: frames not yet handed to bev */
	struct event *retry;
	bool connected;
	bool warned;
};

static void qc_connect(struct qmgr_client *qc);

static void qc_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	qc_connect(arg);
}

static void qc_drop(struct qmgr_client *qc)
{
	if (qc->bev) {
		bufferevent_free(qc->bev);
		qc->bev = NULL;
	}
	qc->connected = false;
	struct timeval tv = { 1, 0 };
	evtimer_add(qc->retry, &tv);
}

static void qc_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct qmgr_client *qc = arg;
	if (what & BEV_EVENT_CONNECTED) {
		qc->connected = true;
		qc->warned = false;
		evbuffer_add_buffer(bufferevent_get_output(qc->bev), qc->backlog);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		qc_drop(qc);
}

static void qc_read(struct bufferevent *bev, void *arg)
{
	(void)arg;
	/* nothing is expected back */
	evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
}

static void qc_connect(struct qmgr_client *qc)
{
	if (qc->bev || !qc->sockname[0])
		return;
	struct sockaddr_un sun;
	socklen_t len = netaddr_unix(qc->sockname, &sun);
	qc->bev = bufferevent_socket_new(qc->base, -1, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(qc->bev, qc_read, NULL, qc_event, qc);
	bufferevent_enable(qc->bev, EV_READ | EV_WRITE);
	if (len == 0 || bufferevent_socket_connect(qc->bev, (struct sockaddr *)&sun, (int)len) != 0)
		qc_drop(qc);
}

struct qmgr_client *qmgr_client_new(struct event_base *base, const char *sockname)
{
	struct qmgr_client *qc = xcalloc(1, sizeof *qc);
	qc->base = base;
	qc->sockname = xstrdup(sockname ? sockname : "");
	qc->backlog = evbuffer_new();
	qc->retry = evtimer_new(base, qc_retry, qc);
	qc_connect(qc);
	return qc;
}

void qmgr_notify(struct qmgr_client *qc, const char *const *ids, size_t n)
{
	if (!qc || n == 0)
		return;
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "new");
	cJSON *a = cJSON_AddArrayToObject(req, "ids");
	for (size_t i = 0; i < n; i++)
		cJSON_AddItemToArray(a, cJSON_CreateString(ids[i]));
	log_debug("notifying kumo-qmgr of %zu message(s)%s", n, qc->connected ? "" : " (queued: not connected)");
	if (qc->connected) {
		frame_encode(bufferevent_get_output(qc->bev), req);
	} else if (evbuffer_get_length(qc->backlog) < QMGR_BACKLOG_MAX) {
		frame_encode(qc->backlog, req);
	} else if (!qc->warned) {
		log_warn("kumo-qmgr is away and the notice backlog is full; it will find the messages in the spool");
		qc->warned = true;
	}
	cJSON_Delete(req);
}

void qmgr_client_free(struct qmgr_client *qc)
{
	if (!qc)
		return;
	if (qc->bev)
		bufferevent_free(qc->bev);
	evbuffer_free(qc->backlog);
	event_free(qc->retry);
	free(qc->sockname);
	free(qc);
}
