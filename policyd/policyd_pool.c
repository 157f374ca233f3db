/* policyd_pool: several Lua states answering in parallel.  Each worker
 * thread owns one struct policy (its own lua_State with the policy loaded)
 * and loops: it asks ops->next for a request (policyd.c: from the shared
 * queue, or by reading a client socket itself when the queue is empty, so
 * that a request wakes one thread only), answers it and hands the reply to
 * ops->done on its own thread.  Requests carry all the state they need
 * (the connection metadata travels in each), so any worker may serve any
 * request; replies can come back out of order and are matched by id.
 * "init" always runs on the first state (under that state's lock, by
 * whichever worker got it).  A Message passed with "fetch" (lib/ipc.h)
 * calls ops->fetch with the request being answered.
 * A pool replaced by a reload is retired without blocking the loop: its
 * workers finish the request they hold and return (ops->next returns NULL
 * once the pool is stopping), each telling the loop through a pipe, and the
 * loop frees the pool when the last one has gone (pool_reap at exit).
 * Entry points: pool_new, pool_stopping, pool_retire, pool_free, pool_reap.
 * kumo.memoize caches are per Lua state. */
#include "policyd/policyd.h"
#include "lib/jadd.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>

struct worker {
	struct pool *pool;
	pthread_t thread;
	pthread_mutex_t mu;    /* held while its policy answers a request */
	struct policy *policy; /* owned */
	int index;
	bool started;
};

struct pool {
	pthread_mutex_t mu;    /* exited */
	bool stop;             /* atomic */
	int exited;            /* workers that have returned */
	bool retiring;         /* replaced by a reload: freed once empty */
	struct pool *next_retiring;
	int pipe_fd[2];
	struct event *notify;
	struct worker *workers;
	int n;
	const struct pool_ops *ops;
};

/* What a worker is answering: the fetch hook's argument. */
struct current {
	const struct pool_ops *ops;
	unsigned long client;
	const cJSON *req;
};

static struct pool *retiring;  /* loop thread only */

/* policy->fetch: the client of the request being answered writes the file. */
static char *pool_fetch(void *arg, char *err, size_t errlen)
{
	const struct current *cur = arg;
	return cur->ops->fetch(cur->client, cur->req, err, errlen);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct pool *p = w->pool;
	for (;;) {
		unsigned long client;
		cJSON *req = p->ops->next(p, w->index, &client);
		if (!req)
			break;
		const cJSON *op = jget(req, "op");
		bool init = cJSON_IsString(op) && strcmp(op->valuestring, "init") == 0;
		struct worker *on = init ? &p->workers[0] : w;
		struct current cur = { p->ops, client, req };
		pthread_mutex_lock(&on->mu);
		on->policy->fetch = pool_fetch;
		on->policy->fetch_arg = &cur;
		cJSON *reply = policy_handle(on->policy, req);
		on->policy->fetch = NULL;
		on->policy->fetch_arg = NULL;
		pthread_mutex_unlock(&on->mu);
		p->ops->done(client, req, reply);
		cJSON_Delete(req);
		cJSON_Delete(reply);
	}
	pthread_mutex_lock(&p->mu);
	p->exited++;
	char b = 1;
	ssize_t r = write(p->pipe_fd[1], &b, 1); /* a retiring pool may now go */
	(void)r;
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void retiring_unlink(struct pool *p)
{
	for (struct pool **pp = &retiring; *pp; pp = &(*pp)->next_retiring) {
		if (*pp == p) {
			*pp = p->next_retiring;
			return;
		}
	}
}

/* A worker returned: a retired pool whose workers have all gone is freed. */
static void pool_notify(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct pool *p = arg;
	char buf[64];
	while (read(fd, buf, sizeof buf) > 0)
		;
	pthread_mutex_lock(&p->mu);
	bool empty = p->retiring && p->exited == p->n;
	pthread_mutex_unlock(&p->mu);
	if (empty) {
		retiring_unlink(p);
		pool_free(p);
	}
}

struct pool *pool_new(struct event_base *base, const char *path, int n, const struct pool_ops *ops,
		      bool serve_failed, char *err, size_t errlen)
{
	struct pool *p = xcalloc(1, sizeof *p);
	pthread_mutex_init(&p->mu, NULL);
	p->ops = ops;
	p->n = n;
	if (pipe2(p->pipe_fd, O_NONBLOCK | O_CLOEXEC) != 0)
		log_fatal("policy pool: pipe: %s", strerror(errno));
	p->notify = event_new(base, p->pipe_fd[0], EV_READ | EV_PERSIST, pool_notify, p);
	event_add(p->notify, NULL);
	p->workers = xcalloc((size_t)n, sizeof *p->workers);
	err[0] = '\0';
	/* every state is loaded before any worker takes a request: init may
	 * need the first one while the others start */
	for (int i = 0; i < n; i++) {
		struct worker *w = &p->workers[i];
		w->pool = p;
		w->index = i;
		pthread_mutex_init(&w->mu, NULL);
		char e[512];
		w->policy = policy_load(path, e, sizeof e);
		if (i == 0 && policy_load_error(w->policy))
			snprintf(err, errlen, "%s", e);
		/* the policy file runs once per state: its top level must be idempotent,
		 * as in KumoMTA, where every new Lua context runs it again */
	}
	if (err[0] && !serve_failed)
		return p; /* no worker takes a request from the shared sockets */
	for (int i = 0; i < n; i++) {
		if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0)
			log_fatal("policy pool: cannot start a thread");
		p->workers[i].started = true;
	}
	return p;
}

bool pool_stopping(const struct pool *p)
{
	return __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE);
}

static void pool_stop(struct pool *p)
{
	__atomic_store_n(&p->stop, true, __ATOMIC_RELEASE);
	for (int i = 0; i < p->n; i++) {
		struct worker *w = &p->workers[i];
		if (w->started) {
			pthread_join(w->thread, NULL);
			w->started = false;
		}
		policy_free(w->policy);
		w->policy = NULL;
	}
}

/* Reload: the workers finish the requests they hold, send the replies and
 * return; the loop then frees the pool. */
void pool_retire(struct pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->retiring = true;
	pthread_mutex_unlock(&p->mu);
	__atomic_store_n(&p->stop, true, __ATOMIC_RELEASE);
	p->next_retiring = retiring;
	retiring = p;
}

/* At exit: the retired pools still finishing. */
void pool_reap(void)
{
	while (retiring) {
		struct pool *p = retiring;
		retiring = p->next_retiring;
		pool_free(p);
	}
}

void pool_free(struct pool *p)
{
	if (!p)
		return;
	pool_stop(p);
	event_free(p->notify);
	close(p->pipe_fd[0]);
	close(p->pipe_fd[1]);
	for (int i = 0; i < p->n; i++)
		pthread_mutex_destroy(&p->workers[i].mu);
	pthread_mutex_destroy(&p->mu);
	free(p->workers);
	free(p);
}
