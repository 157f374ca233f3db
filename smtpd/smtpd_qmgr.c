/* smtpd_qmgr: tells kumo-qmgr about the messages this worker stored, so it
 * delivers them at once: {"op":"new","msgs":[...]} frames (qmgr_ctl.c), no
 * reply; each message's spooled meta record goes along (up to 64 KiB).
 * The messages of the commits of one millisecond (QMGR_NOTICE_DELAY_US)
 * go in one notice: the queue manager wakes once for them, not once per
 * commit.  While the queue manager is away (restarting), notices wait in
 * memory (bounded) and go out on reconnection; a notice lost anyway (this
 * worker dies, the bound is hit) is harmless, since the queue manager lists
 * the spool at start and every few minutes.
 * deferred_spool messages go the same way, as
 * {"id":N,"op":"inject","msgs":[{"id","meta","size"}]} followed by their
 * bytes as they are, answered {"id":N,"ok":true}; the 250 waits for that
 * answer.  If the queue manager
 * is away, does not answer, or the message is large, it is stored durably
 * instead: never a 250 for a message nobody holds.
 * Entry points: qmgr_client_new, qmgr_notify, qmgr_inject, qmgr_client_free. */
#include "smtpd/smtpd.h"
#include "lib/jadd.h"
#include "lib/frame.h"
#include "lib/jsonw.h"
#include "lib/log.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define QMGR_BACKLOG_MAX (4u * 1024u * 1024u)  /* bytes of notices kept while away */
#define INJECT_MAX (8u * 1024u * 1024u)         /* bigger deferred messages are spooled */
#define INJECT_TIMEOUT 10                        /* seconds for the queue manager's answer */
#define QMGR_NOTICE_META_MAX (64u * 1024u)       /* larger meta: read back from the spool */
#define QMGR_NOTICE_MAX (1024u * 1024u)          /* nor past this much notice */
#define QMGR_NOTICE_DELAY_US 1000                /* a notice gathers messages this long */

struct inject {
	struct inject *next;
	uint64_t id;
	struct spool_job *job;
	struct event *timer;
	struct qmgr_client *qc;
};

struct qmgr_client {
	struct event_base *base;
	char *sockname;            /* owned */
	struct bufferevent *bev;   /* NULL while away */
	struct evbuffer *backlog;  /* owned: frames not yet handed to bev */
	struct event *retry;
	bool connected;
	bool warned;
	uint64_t next_id;
	struct inject *injects;    /* waiting for an answer */
	struct jbuf held;          /* the next notice's messages, comma-separated */
	struct event *held_ev;     /* sends it */
};

/* The job is answered: ok, or each item failed with why. */
static void inject_finish(struct inject *in, const char *why)
{
	struct qmgr_client *qc = in->qc;
	for (struct inject **pp = &qc->injects; *pp; pp = &(*pp)->next) {
		if (*pp == in) {
			*pp = in->next;
			break;
		}
	}
	struct spool_job *job = in->job;
	job->failed = 0;
	for (size_t i = 0; i < job->n; i++) {
		job->items[i].result = why ? -1 : 0;
		if (why) {
			snprintf(job->items[i].err, sizeof job->items[i].err, "%s", why);
			job->failed++;
		}
	}
	event_free(in->timer);
	free(in);
	job->done(job, job->ctx);
}

static void inject_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	inject_finish(arg, "kumo-qmgr did not answer");
}

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
	while (qc->injects)
		inject_finish(qc->injects, "kumo-qmgr went away");
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
	struct qmgr_client *qc = arg;
	for (;;) {
		cJSON *doc = NULL;
		char err[200];
		int r = frame_read(bufferevent_get_input(bev), &doc, err, sizeof err);
		if (r == 0)
			return;
		if (r < 0) {
			log_warn("kumo-qmgr sent a bad frame: %s", err);
			qc_drop(qc);
			return;
		}
		const cJSON *id = jget(doc, "id");
		const cJSON *ok = jget(doc, "ok");
		const cJSON *e = jget(doc, "error");
		for (struct inject *in = qc->injects; in && cJSON_IsNumber(id); in = in->next) {
			if (in->id == (uint64_t)id->valuedouble) {
				inject_finish(in, cJSON_IsTrue(ok) ? NULL
					      : cJSON_IsString(e) ? e->valuestring : "kumo-qmgr refused it");
				break;
			}
		}
		cJSON_Delete(doc);
	}
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

/* The gathered messages go out as one notice (or into the backlog). */
static void notice_send(struct qmgr_client *qc)
{
	if (qc->held.len == 0)
		return;
	evtimer_del(qc->held_ev);
	struct jbuf *b = &qc->held;
	jbuf_add(b, "]}", 2);
	if (qc->connected) {
		frame_encode_text(bufferevent_get_output(qc->bev), b->p, b->len);
	} else if (evbuffer_get_length(qc->backlog) < QMGR_BACKLOG_MAX) {
		frame_encode_text(qc->backlog, b->p, b->len);
	} else if (!qc->warned) {
		log_warn("kumo-qmgr is away and the notice backlog is full; it will find the messages in the spool");
		qc->warned = true;
	}
	b->len = 0; /* the buffer is kept for the next notice */
}

static void held_due(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	notice_send(arg);
}

struct qmgr_client *qmgr_client_new(struct event_base *base, const char *sockname)
{
	struct qmgr_client *qc = xcalloc(1, sizeof *qc);
	qc->base = base;
	qc->sockname = xstrdup(sockname ? sockname : "");
	qc->backlog = evbuffer_new();
	qc->retry = evtimer_new(base, qc_retry, qc);
	qc->held_ev = evtimer_new(base, held_due, qc);
	qc_connect(qc);
	return qc;
}

void qmgr_notify(struct qmgr_client *qc, const struct spool_item *const *items, size_t n)
{
	if (!qc || n == 0)
		return;
	/* written directly: ids and segment names are hex, the rest numbers */
	struct jbuf b = qc->held;
	for (size_t i = 0; i < n; i++) {
		const struct spool_item *it = items[i];
		const struct spool_loc *l = &it->loc;
		if (b.len >= QMGR_NOTICE_MAX) {
			qc->held = b;
			notice_send(qc);
			b = qc->held;
		}
		if (b.len == 0)
			jbuf_add(&b, "{\"op\":\"new\",\"msgs\":[{\"id\":\"", 27);
		else
			jbuf_add(&b, ",{\"id\":\"", 8);
		jbuf_add(&b, it->id, SPOOL_ID_LEN);
		jbuf_add(&b, "\",\"seg\":\"", 9);
		jbuf_add(&b, it->seg_name, SPOOL_SEG_NAME_LEN);
		jbuf_add(&b, "\",\"loc\":\"", 9);
		uint64_t v[] = { l->data_off, l->data_len, l->data_crc, l->meta_off, l->meta_len, l->meta_crc,
				 l->stamp, l->data_in_meta };
		/* one string of eight decimal numbers: the queue manager reads
		 * it with strtoull, not as eight JSON numbers (strtod) */
		for (size_t k = 0; k < 8; k++) {
			char d[24], *e = d + sizeof d, *p = e;
			uint64_t u = v[k];
			do
				*--p = (char)('0' + u % 10);
			while (u /= 10);
			if (k)
				*--p = ' ';
			jbuf_add(&b, p, (size_t)(e - p));
		}
		jbuf_add(&b, "\"", 1);
		/* the spooled meta record itself (one JSON object), so that the
		 * queue manager need not read it back from the segment */
		size_t ml = it->meta_len;
		while (ml > 0 && (it->meta[ml - 1] == '\n' || it->meta[ml - 1] == ' '))
			ml--;
		if (ml > 1 && ml <= QMGR_NOTICE_META_MAX && it->meta[0] == '{' &&
		    b.len + ml <= QMGR_NOTICE_MAX) {
			jbuf_add(&b, ",\"meta\":", 8);
			jbuf_add(&b, it->meta, ml);
		}
		jbuf_add(&b, "}", 1);
	}
	qc->held = b;
	if (b.len >= QMGR_NOTICE_MAX) {
		notice_send(qc);
	} else if (!evtimer_pending(qc->held_ev, NULL)) {
		struct timeval tv = { 0, QMGR_NOTICE_DELAY_US };
		evtimer_add(qc->held_ev, &tv);
	}
}

int qmgr_inject(struct qmgr_client *qc, struct spool_job *job)
{
	if (!qc || !qc->connected)
		return -1;
	size_t total = 0;
	for (size_t i = 0; i < job->n; i++)
		for (int k = 0; k < job->items[i].data_cnt; k++)
			total += job->items[i].data[k].iov_len;
	if (total > INJECT_MAX)
		return -1;
	struct inject *in = xcalloc(1, sizeof *in);
	in->id = ++qc->next_id;
	in->job = job;
	in->qc = qc;
	cJSON *req = cJSON_CreateObject();
	jadd_number(req, "id", (double)in->id);
	jadd_string(req, "op", "inject");
	cJSON *msgs = jadd_array(req, "msgs");
	for (size_t i = 0; i < job->n; i++) {
		const struct spool_item *it = &job->items[i];
		size_t len = 0;
		for (int k = 0; k < it->data_cnt; k++)
			len += it->data[k].iov_len;
		cJSON *m = cJSON_CreateObject();
		jadd_string(m, "id", it->id);
		jadd_item(m, "meta", cJSON_CreateString(it->meta));
		jadd_number(m, "size", (double)len);
		cJSON_AddItemToArray(msgs, m);
	}
	struct evbuffer *out = bufferevent_get_output(qc->bev);
	int rc = frame_encode(out, req);
	cJSON_Delete(req);
	if (rc != 0) {
		free(in);
		return -1;
	}
	/* the bytes follow the frame as they are */
	for (size_t i = 0; i < job->n; i++)
		for (int k = 0; k < job->items[i].data_cnt; k++)
			evbuffer_add(out, job->items[i].data[k].iov_base, job->items[i].data[k].iov_len);
	in->timer = evtimer_new(qc->base, inject_timeout, in);
	struct timeval tv = { INJECT_TIMEOUT, 0 };
	evtimer_add(in->timer, &tv);
	in->next = qc->injects;
	qc->injects = in;
	job->in_memory = true;
	return 0;
}

void qmgr_client_free(struct qmgr_client *qc)
{
	if (!qc)
		return;
	/* at exit the sessions are gone: drop what is unanswered (the 250 was
	 * not sent, so the client will send it again) */
	while (qc->injects) {
		struct inject *in = qc->injects;
		qc->injects = in->next;
		event_free(in->timer);
		free(in->job->items);
		free(in->job);
		free(in);
	}
	/* what was gathered goes out if the socket takes it now; anything
	 * lost is found by the queue manager's listing of the spool */
	notice_send(qc);
	if (qc->bev) {
		struct evbuffer *out = bufferevent_get_output(qc->bev);
		if (qc->connected && evbuffer_get_length(out) > 0)
			evbuffer_write(out, bufferevent_getfd(qc->bev));
		bufferevent_free(qc->bev);
	}
	jbuf_free(&qc->held);
	event_free(qc->held_ev);
	evbuffer_free(qc->backlog);
	event_free(qc->retry);
	free(qc->sockname);
	free(qc);
}
