/* master_control: kumod's control socket, for kumoctl.  A Unix stream
 * socket (mode 0600) speaking lib/frame.h frames: one request per
 * connection, {"op":"status"|"stop"|"version"|"reload"|"queue-summary"|
 * "flush"}, one reply (the queue ones are forwarded to kumo-qmgr).  A client is a
 * stranger: its uid is checked with SO_PEERCRED (our uid or root only) and
 * what it sends is bounded.  Entry point: control_open. */
#include "master/master.h"
#include "lib/ipc.h"
#include "lib/frame.h"
#include "lib/log.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#define CONTROL_MAX_REQUEST 65536

static double started_at;

static void ctl_reply(struct bufferevent *bev, cJSON *reply)
{
	frame_encode(bufferevent_get_output(bev), reply);
	cJSON_Delete(reply);
}

/* "spool_commits": the workers' group commits (lib/ipc.h), summed. */
static void add_commit_stats(cJSON *r, const struct master *m)
{
	const struct ipc_commit_stats *st =
		(const struct ipc_commit_stats *)((const char *)m->counters +
						  IPC_COMMIT_STATS_OFF(m->n_workers, m->n_listen));
	uint64_t commits = 0, messages = 0, failed = 0, us = 0, hist[HIST_BUCKETS] = { 0 };
	for (int w = 0; w < m->n_workers; w++) {
		commits += __atomic_load_n(&st[w].commits, __ATOMIC_RELAXED);
		messages += __atomic_load_n(&st[w].messages, __ATOMIC_RELAXED);
		failed += __atomic_load_n(&st[w].failed, __ATOMIC_RELAXED);
		us += __atomic_load_n(&st[w].us_total, __ATOMIC_RELAXED);
		for (unsigned b = 0; b < HIST_BUCKETS; b++)
			hist[b] += __atomic_load_n(&st[w].us_hist[b], __ATOMIC_RELAXED);
	}
	cJSON *c = cJSON_AddObjectToObject(r, "spool_commits");
	cJSON_AddNumberToObject(c, "commits", (double)commits);
	cJSON_AddNumberToObject(c, "messages", (double)messages);
	cJSON_AddNumberToObject(c, "failed", (double)failed);
	cJSON_AddNumberToObject(c, "messages_per_commit",
				commits ? (double)(messages * 100 / commits) / 100.0 : 0);
	cJSON_AddNumberToObject(c, "mean_ms", commits ? (double)(us / commits) / 1000.0 : 0);
	static const struct { const char *name; double q; } qs[] = {
		{ "p50_ms", 0.5 }, { "p90_ms", 0.9 }, { "p99_ms", 0.99 }, { "p999_ms", 0.999 },
		{ "max_ms", 1.0 },
	};
	for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++)
		cJSON_AddNumberToObject(c, qs[i].name, (double)hist_quantile(hist, qs[i].q) / 1000.0);
}

static cJSON *status_doc(struct master *m)
{
	cJSON *r = cJSON_CreateObject();
	cJSON_AddBoolToObject(r, "ok", 1);
	cJSON_AddStringToObject(r, "version", KUMOD_VERSION);
	cJSON_AddNumberToObject(r, "pid", getpid());
	cJSON_AddNumberToObject(r, "uptime", monotime() - started_at);
	cJSON_AddNumberToObject(r, "policyd_pid", m->policyd.pid);
	cJSON *w = cJSON_AddArrayToObject(r, "worker_pids");
	for (int i = 0; i < m->n_workers; i++)
		cJSON_AddItemToArray(w, cJSON_CreateNumber(m->workers[i].pid));
	cJSON_AddItemToObject(r, "listeners", cJSON_Duplicate(m->listen_names, 1));
	uint64_t sessions = 0;
	for (size_t i = 0; m->counters && i < (size_t)m->n_workers * m->n_listen; i++)
		sessions += __atomic_load_n(&m->counters[i], __ATOMIC_RELAXED);
	cJSON_AddNumberToObject(r, "sessions", (double)sessions);
	cJSON_AddNumberToObject(r, "qmgr_pid", m->qmgr.pid);
	char err[300];
	cJSON *q = m->stopping ? NULL : master_qmgr_request(m, "summary", 2000, err, sizeof err);
	const cJSON *sum = cJSON_GetObjectItemCaseSensitive(q, "summary");
	if (cJSON_IsObject(sum)) {
		cJSON *counts = cJSON_AddObjectToObject(r, "queue");
		static const char *const keys[] = { "messages", "waiting", "due", "ready", "in_flight", "connections" };
		for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
			const cJSON *v = cJSON_GetObjectItemCaseSensitive(sum, keys[i]);
			cJSON_AddNumberToObject(counts, keys[i], cJSON_IsNumber(v) ? v->valuedouble : 0);
		}
	} else {
		cJSON_AddNullToObject(r, "queue");
	}
	cJSON_Delete(q);
	if (m->counters)
		add_commit_stats(r, m);
	cJSON_AddStringToObject(r, "policy", m->policy);
	cJSON_AddBoolToObject(r, "stopping", m->stopping);
	return r;
}

static void ctl_written(struct bufferevent *bev, void *arg)
{
	(void)arg;
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		bufferevent_free(bev);
}

static void ctl_read(struct bufferevent *bev, void *arg)
{
	struct master *m = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	if (evbuffer_get_length(in) > CONTROL_MAX_REQUEST) {
		bufferevent_free(bev);
		return;
	}
	cJSON *req;
	char err[128];
	int rc = frame_read(in, &req, err, sizeof err);
	if (rc == 0)
		return;
	if (rc < 0) {
		log_info("control: bad request: %s", err);
		bufferevent_free(bev);
		return;
	}
	const cJSON *op = cJSON_GetObjectItemCaseSensitive(req, "op");
	cJSON *reply;
	if (cJSON_IsString(op) && strcmp(op->valuestring, "status") == 0) {
		reply = status_doc(m);
	} else if (cJSON_IsString(op) && strcmp(op->valuestring, "version") == 0) {
		reply = cJSON_CreateObject();
		cJSON_AddBoolToObject(reply, "ok", 1);
		cJSON_AddStringToObject(reply, "version", KUMOD_VERSION);
	} else if (cJSON_IsString(op) && strcmp(op->valuestring, "reload") == 0) {
		char err[1024];
		reply = cJSON_CreateObject();
		if (master_reload(m, err, sizeof err) == 0) {
			log_info("control: policy %s reloaded", m->policy);
			cJSON_AddBoolToObject(reply, "ok", 1);
		} else {
			log_warn("control: policy reload failed; the old policy keeps serving: %s", err);
			cJSON_AddBoolToObject(reply, "ok", 0);
			cJSON_AddStringToObject(reply, "error", err);
		}
	} else if (cJSON_IsString(op) &&
		   (strcmp(op->valuestring, "queue-summary") == 0 || strcmp(op->valuestring, "flush") == 0)) {
		char err[300];
		bool flush = strcmp(op->valuestring, "flush") == 0;
		reply = master_qmgr_request(m, flush ? "flush" : "summary", 5000, err, sizeof err);
		if (!reply) {
			reply = cJSON_CreateObject();
			cJSON_AddBoolToObject(reply, "ok", 0);
			cJSON_AddStringToObject(reply, "error", err);
		} else {
			cJSON_DeleteItemFromObject(reply, "id");
			if (flush)
				log_info("control: flush: %d waiting message(s) made due",
					 cJSON_GetObjectItemCaseSensitive(reply, "flushed")
						 ? (int)cJSON_GetObjectItemCaseSensitive(reply, "flushed")->valuedouble : 0);
		}
	} else if (cJSON_IsString(op) && strcmp(op->valuestring, "stop") == 0) {
		reply = cJSON_CreateObject();
		cJSON_AddBoolToObject(reply, "ok", 1);
		log_info("control: stop requested");
		raise(SIGTERM);
	} else {
		reply = cJSON_CreateObject();
		cJSON_AddBoolToObject(reply, "ok", 0);
		cJSON_AddStringToObject(reply, "error", "unknown command");
	}
	cJSON_Delete(req);
	bufferevent_setcb(bev, NULL, ctl_written, NULL, m);
	ctl_reply(bev, reply);
}

static void ctl_event(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	(void)arg;
	bufferevent_free(bev);
}

static void ctl_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	struct master *m = arg;
	struct ucred cred;
	socklen_t cl = sizeof cred;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 ||
	    (cred.uid != 0 && cred.uid != geteuid())) {
		log_info("control: refused a client with uid %d", (int)cred.uid);
		close(fd);
		return;
	}
	struct bufferevent *bev = bufferevent_socket_new(m->base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(bev, ctl_read, NULL, ctl_event, m);
	struct timeval tv = { 10, 0 };
	bufferevent_set_timeouts(bev, &tv, &tv);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

int control_open(struct master *m, const char *path, char *err, size_t errlen)
{
	started_at = monotime();
	struct sockaddr_un sun;
	if (netaddr_unix(path, &sun) == 0) {
		snprintf(err, errlen, "control socket path %s is too long", path);
		return -1;
	}
	/* a socket file left by a kumod that died: remove it if nobody answers */
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0) {
		if (connect(probe, (struct sockaddr *)&sun, sizeof sun) == 0) {
			close(probe);
			snprintf(err, errlen, "another kumod is serving the control socket %s", path);
			return -1;
		}
		close(probe);
	}
	unlink(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	mode_t old = umask(0177);
	int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sun, sizeof sun);
	umask(old);
	if (rc != 0 || listen(fd, 16) != 0) {
		snprintf(err, errlen, "cannot create control socket %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	m->control = evconnlistener_new(m->base, ctl_accept, m, LEV_OPT_CLOSE_ON_FREE, -1, fd);
	m->control_path = xstrdup(path);
	return 0;
}

void control_close(struct master *m)
{
	if (m->control) {
		evconnlistener_free(m->control);
		m->control = NULL;
		unlink(m->control_path);
	}
	free(m->control_path);
	m->control_path = NULL;
}
