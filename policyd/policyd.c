/* kumo-policyd: hosts the Lua policy and answers kumod and kumo-smtpd over
 * the policy socket (lib/ipc.h), which the master hands over already
 * listening at FD_POLICY_LISTEN.
 *   kumo-policyd --policy FILE [--lua-workers N] [--log-level L]
 * A client must run as our uid or as root (SO_PEERCRED).  The loop
 * accepts clients, reloads the policy and flushes what a client's socket
 * did not take; the Lua workers (policyd_pool.c) do the rest.  An idle
 * worker waits on an epoll set of the client sockets (one-shot, so one
 * reader per socket at a time): the one the kernel wakes reads the frames
 * and answers them in turn; they wait in a shared queue meanwhile.  Only
 * when the queue has not emptied for STEAL_US (a slow handler, or more
 * requests than one worker keeps up with) is another idle worker woken, by
 * a timer, to take the next one; and so on every STEAL_US.  So a request
 * costs no wakeup of its own, and a slow handler holds only its own
 * worker (and, for STEAL_US, the requests read with it).  Replies are written to the
 * socket by the worker (client_send) and may come back out of order,
 * matched by id.  A worker may ask the client for a message file while it
 * answers (msg_file, lib/ipc.h); the answer, a frame without "op", goes
 * back to it, and while it waits it reads that client's socket itself, so
 * the answer arrives even when every worker is waiting.
 * Failures: bad usage or no listening socket at fd 3 -> exit 1 with one
 * line; a policy that fails to load is reported in the replies (the master
 * decides); a malformed frame closes that connection with a warning;
 * SIGTERM/SIGINT -> exit 0. */
#include "policyd/policyd.h"
#include "lib/jadd.h"
#include "lib/frame.h"
#include "lib/ipc.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

/* Stop reading from a client whose unread replies pass this size. */
#define OUT_HIGH (4u * 1024u * 1024u)
#define OUT_LOW (1u * 1024u * 1024u)
/* A queued request waits this long for the worker that read it before
 * another idle worker is woken for it (us). */
#define STEAL_US 1000
/* Bytes asked of a client socket per read. */
#define READ_CHUNK 65536
/* An idle worker looks at its pool's stop flag this often (ms). */
#define IDLE_TICK_MS 100
/* How long a worker waits for smtpd to write a message file (ms). */
#define FETCH_TIMEOUT_MS 60000

struct client {
	int fd;                   /* closed with the last reference */
	unsigned long id;
	int refs;                 /* under out_mu: the list's, and each user's */
	bool gone;                /* under out_mu: out of the list */
	bool paused;              /* under out_mu: not read until its replies drain */
	pthread_mutex_t read_mu;  /* held by whoever reads the socket */
	struct evbuffer *in;      /* owned, under read_mu: a partial frame */
	struct evbuffer *out;     /* owned, under out_mu: bytes not yet written */
	struct event *write_ev;   /* owned: armed while out is not empty */
	struct client *prev, *next;
};

/* The client list, the clients' output and their references.  Taken
 * before libevent's own lock (event_add of write_ev). */
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static struct client *clients;

/* Requests read but not yet taken by a worker. */
struct qitem {
	struct qitem *next;
	unsigned long client;
	cJSON *req;  /* owned */
};
static pthread_mutex_t q_mu = PTHREAD_MUTEX_INITIALIZER;
static struct qitem *q_head, **q_tail = &q_head;

/* A worker waiting for the answer to its msg_file request. */
struct fetch {
	struct fetch *next;
	uint64_t id;
	unsigned long client;
	cJSON *answer;   /* owned, once answered */
	bool gone;       /* the client went away */
	int efd;         /* eventfd: answered or gone */
};
static pthread_mutex_t fetch_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fetch *fetches;
static uint64_t fetch_next;

/* reload requests, for the loop */
static pthread_mutex_t reload_mu = PTHREAD_MUTEX_INITIALIZER;
static struct qitem *reloads, **reloads_tail = &reloads;
static struct event *reload_ev;

static int ep = -1;        /* the client sockets (data: client id), wake_fd (0), steal_fd (STEAL_DATA) */
static int wake_fd = -1;   /* eventfd, edge-triggered: a queued request for an idle worker now */
static int steal_fd = -1;  /* timerfd, edge-triggered: the same, once the queue is STEAL_US old */
static bool steal_armed;   /* under q_mu */
#define STEAL_DATA UINT64_MAX
static struct pool *pool;
static struct event_base *loop;
static const char *policy_path;
static int lua_workers_n;
static unsigned generation;   /* bumped by each successful reload; atomic */
static unsigned long next_client_id = 1;

/* --- clients: references, output --- */

static struct client *client_get(unsigned long id)
{
	pthread_mutex_lock(&out_mu);
	struct client *c = clients;
	while (c && c->id != id)
		c = c->next;
	if (c)
		c->refs++;
	pthread_mutex_unlock(&out_mu);
	return c;
}

static void client_put(struct client *c)
{
	pthread_mutex_lock(&out_mu);
	bool last = --c->refs == 0;
	pthread_mutex_unlock(&out_mu);
	if (!last)
		return;
	close(c->fd);
	evbuffer_free(c->in);
	evbuffer_free(c->out);
	pthread_mutex_destroy(&c->read_mu);
	free(c);
}

static void fetch_client_gone(unsigned long client);

/* The client is closed or broke the protocol (any thread): out of the
 * list and the epoll set; its waiting workers give up. */
static void client_lost(struct client *c)
{
	pthread_mutex_lock(&out_mu);
	bool was = c->gone;
	if (!was) {
		c->gone = true;
		if (c->prev)
			c->prev->next = c->next;
		else
			clients = c->next;
		if (c->next)
			c->next->prev = c->prev;
	}
	pthread_mutex_unlock(&out_mu);
	if (was)
		return;
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	fetch_client_gone(c->id);
	event_free(c->write_ev);  /* waits for a client_write running in the loop */
	c->write_ev = NULL;
	client_put(c);  /* the list's reference */
}

/* Reads the socket again (out_mu held), unless its replies are piling up. */
static void client_arm_locked(struct client *c)
{
	if (c->gone)
		return;
	if (evbuffer_get_length(c->out) > OUT_HIGH) {
		c->paused = true;  /* the client is not reading its replies: wait for it */
		return;
	}
	c->paused = false;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, .data.u64 = c->id };
	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Sends one frame (out_mu held): straight to the socket when nothing is
 * queued before it, else (and for what the socket does not take) into the
 * queue that write_ev flushes.  A broken socket is left to the reader. */
static void client_send_locked(struct client *c, const uint8_t *buf, size_t len)
{
	if (evbuffer_get_length(c->out) == 0) {
		ssize_t w;
		do
			w = send(c->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		while (w < 0 && errno == EINTR);
		if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return;
		if (w < 0)
			w = 0;
		if ((size_t)w == len)
			return;
		buf += w;
		len -= (size_t)w;
		event_add(c->write_ev, NULL);
	}
	evbuffer_add(c->out, buf, len);
}

/* Sends doc to client id if it is still there; any thread.  -1: too large. */
static int client_send(unsigned long id, const cJSON *doc)
{
	size_t len;
	uint8_t *buf = frame_text(doc, &len);
	if (!buf)
		return -1;
	pthread_mutex_lock(&out_mu);
	struct client *c = clients;
	while (c && c->id != id)
		c = c->next;
	if (c)
		client_send_locked(c, buf, len);
	pthread_mutex_unlock(&out_mu);
	free(buf);
	return 0;
}

/* The loop: the socket takes more; once the queue is below OUT_LOW, a
 * client paused for not reading its replies is read again. */
static void client_write(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct client *c = arg;
	pthread_mutex_lock(&out_mu);
	if (evbuffer_write(c->out, fd) < 0 && errno != EAGAIN && errno != EINTR)
		evbuffer_drain(c->out, evbuffer_get_length(c->out)); /* the reader sees the error */
	size_t left = evbuffer_get_length(c->out);
	if (left > 0)
		event_add(c->write_ev, NULL);
	if (c->paused && left < OUT_LOW)
		client_arm_locked(c);
	pthread_mutex_unlock(&out_mu);
}

/* --- requests: reading, the queue, the reload hand-over --- */

static void wake_one(void)
{
	uint64_t one = 1;
	ssize_t r = write(wake_fd, &one, sizeof one);
	(void)r;
}

/* The queue was left non-empty (more) or empty by whoever holds q_mu: the
 * steal timer runs while there is something queued, and only then. */
static void steal_timer_locked(bool more)
{
	if (more == steal_armed)
		return;
	struct itimerspec its = { .it_value = { 0, more ? STEAL_US * 1000L : 0 } };
	timerfd_settime(steal_fd, 0, &its, NULL);
	steal_armed = more;
}

static void queue_push(struct qitem ***tail, pthread_mutex_t *mu, unsigned long client, cJSON *req)
{
	struct qitem *q = xcalloc(1, sizeof *q);
	q->client = client;
	q->req = req;
	pthread_mutex_lock(mu);
	**tail = q;
	*tail = &q->next;
	pthread_mutex_unlock(mu);
}

static bool fetch_answer(unsigned long client, cJSON *answer);

/* One frame from client c (read_mu held). */
static void dispatch(struct client *c, cJSON *doc)
{
	const cJSON *op = jget(doc, "op");
	if (!op && fetch_answer(c->id, doc))
		return;  /* smtpd's answer to a worker's msg_file */
	if (cJSON_IsString(op) && strcmp(op->valuestring, "reload") == 0) {
		queue_push(&reloads_tail, &reload_mu, c->id, doc);
		event_active(reload_ev, EV_READ, 0);
		return;
	}
	queue_push(&q_tail, &q_mu, c->id, doc);
}

/* One read of up to READ_CHUNK bytes into in, as evbuffer_read but without
 * its FIONREAD ioctl before each read. */
static ssize_t read_some(struct evbuffer *in, int fd)
{
	struct evbuffer_iovec v[2];
	int nv = evbuffer_reserve_space(in, READ_CHUNK, v, 2);
	if (nv <= 0) {
		errno = ENOMEM;
		return -1;
	}
	struct iovec iov[2];
	size_t want = READ_CHUNK;
	for (int i = 0; i < nv; i++) {
		iov[i].iov_base = v[i].iov_base;
		iov[i].iov_len = v[i].iov_len < want ? v[i].iov_len : want;
		want -= iov[i].iov_len;
	}
	ssize_t n = readv(fd, iov, nv);
	size_t left = n > 0 ? (size_t)n : 0;
	int used = 0;
	for (; used < nv && left > 0; used++) {
		if (v[used].iov_len > left)
			v[used].iov_len = left;
		left -= v[used].iov_len;
	}
	evbuffer_commit_space(in, v, used);
	return n;
}

/* Reads what the socket has and queues its whole frames (read_mu held).
 * false: the client is lost (closed, failed, or a malformed frame). */
static bool client_read_locked(struct client *c)
{
	bool ok = true;
	for (int i = 0; i < 64; i++) {
		ssize_t n = read_some(c->in, c->fd);
		if (n == READ_CHUNK)
			continue;
		if (n > 0)
			break;  /* a short read took all there was */
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0) {
			ok = false;
		} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
			log_debug("client %lu: %s", c->id, strerror(errno));
			ok = false;
		}
		break;
	}
	for (;;) {
		cJSON *doc;
		char err[128];
		int rc = frame_read(c->in, &doc, err, sizeof err);
		if (rc == 0)
			break;
		if (rc < 0) {
			log_warn("client %lu: malformed frame: %s; closing", c->id, err);
			ok = false;
			break;
		}
		dispatch(c, doc);
	}
	return ok;
}

/* The epoll set said client id is readable: this worker is its reader. */
static void serve_readable(unsigned long id)
{
	struct client *c = client_get(id);
	if (!c)
		return;
	pthread_mutex_lock(&c->read_mu);
	bool ok = client_read_locked(c);
	pthread_mutex_unlock(&c->read_mu);
	if (ok) {
		pthread_mutex_lock(&out_mu);
		client_arm_locked(c);
		pthread_mutex_unlock(&out_mu);
	} else {
		client_lost(c);
	}
	client_put(c);
}

/* pool_ops.next: the oldest queued request, or else the next one read
 * from a socket by this worker. */
static cJSON *next_request(struct pool *p, int index, unsigned long *client)
{
	(void)index;
	for (;;) {
		pthread_mutex_lock(&q_mu);
		struct qitem *q = pool_stopping(p) ? NULL : q_head;
		if (q) {
			q_head = q->next;
			if (!q_head)
				q_tail = &q_head;
		}
		steal_timer_locked(q_head != NULL);
		pthread_mutex_unlock(&q_mu);
		if (q) {
			cJSON *req = q->req;
			*client = q->client;
			free(q);
			return req;
		}
		if (pool_stopping(p))
			return NULL;
		struct epoll_event ev;
		int n = epoll_wait(ep, &ev, 1, IDLE_TICK_MS);
		if (n <= 0)
			continue;
		if (ev.data.u64 == 0 || ev.data.u64 == STEAL_DATA) {
			uint64_t v;
			ssize_t r = read(ev.data.u64 ? steal_fd : wake_fd, &v, sizeof v);
			(void)r;
			if (ev.data.u64) {
				pthread_mutex_lock(&q_mu);
				steal_armed = false;  /* fired: taking one re-arms it */
				pthread_mutex_unlock(&q_mu);
			}
			continue;
		}
		serve_readable((unsigned long)ev.data.u64);
	}
}

/* --- replies --- */

/* pool_ops.done: every reply carries the generation, so a client learns
 * of a reload. */
static void reply_ready(unsigned long client, const cJSON *req, const cJSON *reply)
{
	double g = (double)__atomic_load_n(&generation, __ATOMIC_RELAXED);
	cJSON *have = jget(reply, "generation");  /* hello's placeholder */
	if (have)
		cJSON_SetNumberValue(have, g);
	else
		jadd_number((cJSON *)reply, "generation", g);
	if (client_send(client, reply) < 0) {
		cJSON *small = cJSON_CreateObject();
		const cJSON *id = jget(req, "id");
		if (!small)
			abort();
		if (id)
			jadd_item(small, "id", cJSON_Duplicate(id, 1));
		jadd_bool(small, "ok", 0);
		jadd_string(small, "error", "reply too large");
		log_warn("client %lu: reply too large", client);
		client_send(client, small);
		cJSON_Delete(small);
	}
}

/* --- msg_file --- */

static bool fetch_answer(unsigned long client, cJSON *answer)
{
	const cJSON *id = jget(answer, "id");
	if (!cJSON_IsNumber(id))
		return false;
	bool found = false;
	pthread_mutex_lock(&fetch_mu);
	for (struct fetch *f = fetches; f; f = f->next) {
		if (f->client == client && (double)f->id == id->valuedouble && !f->answer) {
			f->answer = answer;
			uint64_t one = 1;
			ssize_t r = write(f->efd, &one, sizeof one);
			(void)r;
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&fetch_mu);
	return found;
}

static void fetch_client_gone(unsigned long client)
{
	pthread_mutex_lock(&fetch_mu);
	for (struct fetch *f = fetches; f; f = f->next) {
		if (f->client == client) {
			f->gone = true;
			uint64_t one = 1;
			ssize_t r = write(f->efd, &one, sizeof one);
			(void)r;
		}
	}
	pthread_mutex_unlock(&fetch_mu);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* pool_ops.fetch: asks the client of req to write the file of its message
 * argument, and waits for the path, reading that client's socket meanwhile
 * (another worker may read the answer too: then it wakes us). */
static char *fetch_file(unsigned long client, const cJSON *req, char *err, size_t errlen)
{
	struct fetch f;
	memset(&f, 0, sizeof f);
	f.client = client;
	f.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (f.efd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		return NULL;
	}
	pthread_mutex_lock(&fetch_mu);
	f.id = ++fetch_next;
	f.next = fetches;
	fetches = &f;
	pthread_mutex_unlock(&fetch_mu);

	cJSON *ask = cJSON_CreateObject();
	if (!ask)
		abort();
	const cJSON *rid = jget(req, "id");
	jadd_number(ask, "id", (double)f.id);
	jadd_string(ask, "op", "msg_file");
	jadd_item(ask, "req", rid ? cJSON_Duplicate(rid, 1) : cJSON_CreateNull());
	client_send(client, ask);
	cJSON_Delete(ask);

	struct client *c = client_get(client);
	long long deadline = now_ms() + FETCH_TIMEOUT_MS;
	bool timed_out = false;
	for (;;) {
		pthread_mutex_lock(&fetch_mu);
		bool done = f.answer || f.gone;
		pthread_mutex_unlock(&fetch_mu);
		if (done || !c)
			break;
		if (pthread_mutex_trylock(&c->read_mu) == 0) {
			bool ok = client_read_locked(c);
			pthread_mutex_unlock(&c->read_mu);
			if (!ok)
				client_lost(c);
			pthread_mutex_lock(&q_mu);
			bool queued = q_head != NULL;
			pthread_mutex_unlock(&q_mu);
			if (queued)
				wake_one();  /* an idle worker for what it read */
			pthread_mutex_lock(&fetch_mu);
			done = f.answer || f.gone;
			pthread_mutex_unlock(&fetch_mu);
			if (done)
				break;
		}
		/* until the socket has more (or another worker read the answer) */
		long long left = deadline - now_ms();
		if (left <= 0) {
			timed_out = true;
			break;
		}
		struct pollfd pfd[2] = { { .fd = c->fd, .events = POLLIN }, { .fd = f.efd, .events = POLLIN } };
		poll(pfd, 2, (int)left);
	}
	pthread_mutex_lock(&fetch_mu);
	for (struct fetch **fp = &fetches; *fp; fp = &(*fp)->next) {
		if (*fp == &f) {
			*fp = f.next;
			break;
		}
	}
	pthread_mutex_unlock(&fetch_mu);
	close(f.efd);
	if (c)
		client_put(c);

	char *path = NULL;
	if (f.answer) {
		const cJSON *ok = jget(f.answer, "ok");
		const cJSON *pv = jget(f.answer, "path");
		const cJSON *e = jget(f.answer, "error");
		if (cJSON_IsTrue(ok) && cJSON_IsString(pv) && pv->valuestring[0])
			path = xstrdup(pv->valuestring);
		else
			snprintf(err, errlen, "smtpd: %.300s", cJSON_IsString(e) ? e->valuestring : "no file");
		cJSON_Delete(f.answer);
	} else {
		snprintf(err, errlen, timed_out ? "smtpd did not write the file in time" : "smtpd went away");
	}
	return path;
}

static const struct pool_ops ops = {
	.next = next_request,
	.done = reply_ready,
	.fetch = fetch_file,
};

/* --- the loop: reload, accept --- */

/* {"op":"reload"}: the policy file is loaded again in a new pool of Lua
 * states; only if that works does the new pool take over, while the old one
 * finishes what it holds.  init is not run again: listeners, spools and
 * logs need a restart of kumod. */
static cJSON *reload(const cJSON *req)
{
	char err[512];
	cJSON *reply = cJSON_CreateObject();
	const cJSON *id = jget(req, "id");
	if (id)
		jadd_item(reply, "id", cJSON_Duplicate(id, 1));
	/* a broken policy's workers never start: until pool_free, they would
	 * take requests from the shared sockets and answer them with its error */
	struct pool *fresh = pool_new(loop, policy_path, lua_workers_n, &ops, false, err, sizeof err);
	if (err[0]) {
		pool_free(fresh);
		log_warn("reload: the policy failed to load; the old one keeps serving: %s", err);
		jadd_bool(reply, "ok", 0);
		jadd_string(reply, "error", err);
		return reply;
	}
	struct pool *old = pool;
	pool = fresh;
	unsigned g = __atomic_add_fetch(&generation, 1, __ATOMIC_RELAXED);
	pool_retire(old);
	log_info("reload: policy %s loaded (generation %u)", policy_path, g);
	jadd_bool(reply, "ok", 1);
	jadd_number(reply, "generation", g);
	return reply;
}

static void on_reload(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	pthread_mutex_lock(&reload_mu);
	struct qitem *q = reloads;
	reloads = NULL;
	reloads_tail = &reloads;
	pthread_mutex_unlock(&reload_mu);
	while (q) {
		struct qitem *next = q->next;
		cJSON *reply = reload(q->req);
		client_send(q->client, reply);
		cJSON_Delete(reply);
		cJSON_Delete(q->req);
		free(q);
		q = next;
	}
}

static void on_accept(struct evconnlistener *lst, evutil_socket_t fd,
		      struct sockaddr *sa, int salen, void *arg)
{
	(void)sa;
	(void)salen;
	(void)arg;
	struct ucred cred;
	socklen_t len = sizeof cred;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		log_warn("policy socket: SO_PEERCRED: %s; closing", strerror(errno));
		close(fd);
		return;
	}
	if (cred.uid != getuid() && cred.uid != 0) {
		log_warn("policy socket: refused pid %d uid %u (not ours)", (int)cred.pid,
			 (unsigned)cred.uid);
		close(fd);
		return;
	}
	struct client *c = xcalloc(1, sizeof *c);
	c->fd = fd;
	c->id = next_client_id++;
	c->refs = 1;
	pthread_mutex_init(&c->read_mu, NULL);
	c->in = evbuffer_new();
	c->out = evbuffer_new();
	c->write_ev = event_new(evconnlistener_get_base(lst), fd, EV_WRITE, client_write, c);
	if (!c->in || !c->out || !c->write_ev)
		log_fatal("out of memory");
	evutil_make_socket_nonblocking(fd);
	pthread_mutex_lock(&out_mu);
	c->next = clients;
	if (clients)
		clients->prev = c;
	clients = c;
	pthread_mutex_unlock(&out_mu);
	log_debug("client %lu: connected (pid %d)", c->id, (int)cred.pid);
	/* from here on a worker may serve it, and even free it */
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, .data.u64 = c->id };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
		log_fatal("epoll_ctl: %s", strerror(errno));
}

static void resume_accept(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	evconnlistener_enable(arg);
}

/* Out of descriptors and the like: pause accepting for a second rather
 * than spin on a listener that stays readable. */
static void on_accept_error(struct evconnlistener *lst, void *arg)
{
	struct event *resume = arg;
	int e = EVUTIL_SOCKET_ERROR();
	log_warn("policy socket: accept: %s; pausing 1s", evutil_socket_error_to_string(e));
	evconnlistener_disable(lst);
	struct timeval tv = { 1, 0 };
	evtimer_add(resume, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	log_info("signal %d: exiting", (int)sig);
	event_base_loopexit(arg, NULL);
}

static void usage(void)
{
	fprintf(stderr, "usage: kumo-policyd --policy FILE [--lua-workers N] [--log-level fatal|warn|info|debug]\n");
	exit(1);
}

static void check_listen_fd(int fd)
{
	struct stat st;
	int listening = 0;
	socklen_t len = sizeof listening;
	if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
		log_fatal("fd %d is not a socket: kumo-policyd is started by kumod", fd);
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening)
		log_fatal("fd %d is not a listening socket: kumo-policyd is started by kumod", fd);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "policy", required_argument, NULL, 'p' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "lua-workers", required_argument, NULL, 'w' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = NULL;
	int level = -1;
	long nproc = sysconf(_SC_NPROCESSORS_ONLN);
	int lua_workers = nproc > 1 ? (int)nproc : 2;
	int ch;
	log_init("kumo-policyd");
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'p':
			path = optarg;
			break;
		case 'w':
			lua_workers = atoi(optarg);
			if (lua_workers < 1 || lua_workers > 64) {
				fprintf(stderr, "kumo-policyd: --lua-workers must be 1 to 64\n");
				exit(1);
			}
			break;
		case 'l':
			level = log_level_parse(optarg);
			if (level < 0) {
				fprintf(stderr, "kumo-policyd: unknown log level '%s'\n", optarg);
				exit(1);
			}
			break;
		default:
			usage();
		}
	}
	if (!path || optind != argc)
		usage();
	if (level >= 0)
		log_set_level((enum klog_level)level);
	check_listen_fd(FD_POLICY_LISTEN);
	signal(SIGPIPE, SIG_IGN);
	cJSON_Hooks hooks = { xmalloc, free };  /* cJSON out of memory aborts too */
	cJSON_InitHooks(&hooks);

	char err[512];
	/* workers arm write events and wake the loop for a reload */
	if (evthread_use_pthreads() != 0)
		log_fatal("libevent has no thread support");
	struct event_base *base = event_base_new();
	if (!base)
		log_fatal("event_base_new failed");
	loop = base;
	policy_path = path;
	lua_workers_n = lua_workers;
	ep = epoll_create1(EPOLL_CLOEXEC);
	wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ep < 0 || wake_fd < 0)
		log_fatal("epoll/eventfd: %s", strerror(errno));
	struct epoll_event wev = { .events = EPOLLIN | EPOLLET, .data.u64 = 0 };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, wake_fd, &wev) != 0)
		log_fatal("epoll_ctl: %s", strerror(errno));
	steal_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	struct epoll_event sev = { .events = EPOLLIN | EPOLLET, .data.u64 = STEAL_DATA };
	if (steal_fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, steal_fd, &sev) != 0)
		log_fatal("timerfd: %s", strerror(errno));
	reload_ev = event_new(base, -1, 0, on_reload, NULL);
	if (!reload_ev)
		log_fatal("cannot create an event");
	pool = pool_new(base, path, lua_workers, &ops, true, err, sizeof err);
	if (err[0])
		log_debug("policy %s failed to load: %s", path, err);  /* kumod reports it */
	else
		log_debug("policy %s loaded in %d Lua states", path, lua_workers);
	evutil_make_socket_nonblocking(FD_POLICY_LISTEN);
	evutil_make_socket_closeonexec(FD_POLICY_LISTEN);
	struct evconnlistener *lst = evconnlistener_new(base, on_accept, NULL,
							LEV_OPT_CLOSE_ON_FREE, 0,
							FD_POLICY_LISTEN);
	if (!lst)
		log_fatal("cannot listen on fd %d", FD_POLICY_LISTEN);
	struct event *resume = evtimer_new(base, resume_accept, lst);
	if (!resume)
		log_fatal("cannot create a timer");
	evconnlistener_set_cb(lst, on_accept, resume);  /* arg of the error callback */
	evconnlistener_set_error_cb(lst, on_accept_error);
	struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
	struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
	if (!sigterm || !sigint || evsignal_add(sigterm, NULL) < 0 ||
	    evsignal_add(sigint, NULL) < 0)
		log_fatal("cannot install signal events");

	event_base_dispatch(base);

	for (;;) {
		pthread_mutex_lock(&out_mu);
		struct client *c = clients;
		if (c)
			c->refs++;  /* a worker may be losing it too */
		pthread_mutex_unlock(&out_mu);
		if (!c)
			break;
		client_lost(c);
		client_put(c);
	}
	event_free(resume);
	evconnlistener_free(lst);
	event_free(sigterm);
	event_free(sigint);
	pool_free(pool);  /* before the base: the pools' events are in it */
	pool_reap();
	event_free(reload_ev);
	/* what came too late: no client is left to answer */
	struct qitem *lists[2] = { q_head, reloads };
	for (int k = 0; k < 2; k++) {
		while (lists[k]) {
			struct qitem *q = lists[k];
			lists[k] = q->next;
			cJSON_Delete(q->req);
			free(q);
		}
	}
	close(ep);
	close(wake_fd);
	close(steal_fd);
	event_base_free(base);
	return 0;
}
