/* policyd_pool: several Lua states answering in parallel.  Each worker
 * thread owns one struct policy (its own lua_State with the policy loaded),
 * takes requests from one queue and hands replies back to the event loop
 * through a pipe.  Requests carry all the state they need (the connection
 * metadata travels in each), so any worker may serve any request; replies
 * can come back out of order and are matched by id.  "init" runs on the
 * first state only.  Entry points: pool_new, pool_submit, pool_free.
 * kumo.memoize caches are per Lua state. */
#include "policyd/policyd.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>

struct job {
	struct job *next;
	unsigned long client;
	cJSON *req;    /* owned */
	cJSON *reply;  /* owned, once answered */
};

struct worker {
	struct pool *pool;
	pthread_t thread;
	struct policy *policy; /* owned */
	int index;
};

struct pool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job *queue, **queue_tail;
	struct job *init_queue, **init_tail; /* init: worker 0 only */
	struct job *done, **done_tail;
	bool stop;
	int pipe_fd[2];
	struct event *notify;
	struct worker *workers;
	int n;
	pool_done_cb done_cb;
	void *arg;
};

static struct job *take(struct pool *p, int index)
{
	if (index == 0 && p->init_queue) {
		struct job *j = p->init_queue;
		p->init_queue = j->next;
		if (!p->init_queue)
			p->init_tail = &p->init_queue;
		return j;
	}
	struct job *j = p->queue;
	if (j) {
		p->queue = j->next;
		if (!p->queue)
			p->queue_tail = &p->queue;
	}
	return j;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct pool *p = w->pool;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		struct job *j;
		while (!(j = take(p, w->index)) && !p->stop)
			pthread_cond_wait(&p->cv, &p->mu);
		if (!j)
			break;
		pthread_mutex_unlock(&p->mu);
		j->reply = policy_handle(w->policy, j->req);
		pthread_mutex_lock(&p->mu);
		j->next = NULL;
		*p->done_tail = j;
		p->done_tail = &j->next;
		char b = 1;
		ssize_t r = write(p->pipe_fd[1], &b, 1);
		(void)r; /* a full pipe already wakes the loop */
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void pool_notify(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct pool *p = arg;
	char buf[256];
	while (read(fd, buf, sizeof buf) > 0)
		;
	pthread_mutex_lock(&p->mu);
	struct job *done = p->done;
	p->done = NULL;
	p->done_tail = &p->done;
	pthread_mutex_unlock(&p->mu);
	while (done) {
		struct job *next = done->next;
		p->done_cb(p->arg, done->client, done->req, done->reply);
		cJSON_Delete(done->req);
		cJSON_Delete(done->reply);
		free(done);
		done = next;
	}
}

struct pool *pool_new(struct event_base *base, const char *path, int n, pool_done_cb cb, void *arg,
		      char *err, size_t errlen)
{
	struct pool *p = xcalloc(1, sizeof *p);
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->queue_tail = &p->queue;
	p->init_tail = &p->init_queue;
	p->done_tail = &p->done;
	p->done_cb = cb;
	p->arg = arg;
	p->n = n;
	if (pipe2(p->pipe_fd, O_NONBLOCK | O_CLOEXEC) != 0)
		log_fatal("policy pool: pipe: %s", strerror(errno));
	p->notify = event_new(base, p->pipe_fd[0], EV_READ | EV_PERSIST, pool_notify, p);
	event_add(p->notify, NULL);
	p->workers = xcalloc((size_t)n, sizeof *p->workers);
	err[0] = '\0';
	for (int i = 0; i < n; i++) {
		struct worker *w = &p->workers[i];
		w->pool = p;
		w->index = i;
		char e[512];
		w->policy = policy_load(path, e, sizeof e);
		if (i == 0 && policy_load_error(w->policy))
			snprintf(err, errlen, "%s", e);
		/* the policy file runs once per state: its top level must be idempotent,
		 * as in KumoMTA, where every new Lua context runs it again */
		if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
			log_fatal("policy pool: cannot start a thread");
	}
	return p;
}

void pool_submit(struct pool *p, unsigned long client, cJSON *req)
{
	struct job *j = xcalloc(1, sizeof *j);
	j->client = client;
	j->req = req;
	const cJSON *op = cJSON_GetObjectItemCaseSensitive(req, "op");
	bool init = cJSON_IsString(op) && strcmp(op->valuestring, "init") == 0;
	pthread_mutex_lock(&p->mu);
	if (init) {
		*p->init_tail = j;
		p->init_tail = &j->next;
		pthread_cond_broadcast(&p->cv);
	} else {
		*p->queue_tail = j;
		p->queue_tail = &j->next;
		pthread_cond_signal(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
}

static void pool_stop(struct pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n; i++) {
		pthread_join(p->workers[i].thread, NULL);
		policy_free(p->workers[i].policy);
		p->workers[i].policy = NULL;
	}
}

/* Reload: the workers finish every request already queued, their replies
 * are delivered, then the pool goes. */
void pool_retire(struct pool *p)
{
	pool_stop(p);
	pool_notify(p->pipe_fd[0], EV_READ, p);
	pool_free(p);
}

const char *pool_load_error(struct pool *p)
{
	return policy_load_error(p->workers[0].policy);
}

void pool_free(struct pool *p)
{
	if (!p)
		return;
	pool_stop(p);
	/* whatever was answered but not yet sent is dropped with the clients */
	struct job *lists[3] = { p->queue, p->init_queue, p->done };
	for (int k = 0; k < 3; k++) {
		while (lists[k]) {
			struct job *next = lists[k]->next;
			cJSON_Delete(lists[k]->req);
			cJSON_Delete(lists[k]->reply);
			free(lists[k]);
			lists[k] = next;
		}
	}
	event_free(p->notify);
	close(p->pipe_fd[0]);
	close(p->pipe_fd[1]);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->workers);
	free(p);
}
