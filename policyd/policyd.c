/* kumo-policyd: hosts the Lua policy and answers kumod and kumo-smtpd over
 * the policy socket (lib/ipc.h), which the master hands over already
 * listening at FD_POLICY_LISTEN.
 *   kumo-policyd --policy FILE [--log-level L]
 * One bufferevent per client; a client must run as our uid or as root
 * (SO_PEERCRED).  Each frame goes to a pool of Lua states on worker threads
 * (policyd_pool.c); replies may come back out of order, matched by id.
 * Failures: bad usage or no listening socket at fd 3 -> exit 1 with one
 * line; a policy that fails to load is reported in the replies (the master
 * decides); a malformed frame closes that connection with a warning;
 * SIGTERM/SIGINT -> exit 0. */
#include "policyd/policyd.h"
#include "lib/frame.h"
#include "lib/ipc.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

/* Stop reading from a client whose unread replies pass this size. */
#define OUT_HIGH (4u * 1024u * 1024u)
#define OUT_LOW (1u * 1024u * 1024u)

struct client {
	struct bufferevent *bev;  /* owned; closes the socket */
	unsigned long id;
	struct client *prev, *next;
};

static struct pool *pool;
static struct client *clients;
static struct event_base *loop;
static const char *policy_path;
static int lua_workers_n;
static unsigned generation;   /* bumped by each successful reload */
static unsigned long next_client_id = 1;

static void client_free(struct client *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	bufferevent_free(c->bev);
	free(c);
}

static void reply_ready(void *arg, unsigned long client, const cJSON *req, const cJSON *reply);

/* {"op":"reload"}: the policy file is loaded again in a new pool of Lua
 * states; only if that works does the new pool take over, while the old one
 * finishes what it holds.  init is not run again: listeners, spools and
 * logs need a restart of kumod. */
static cJSON *reload(const cJSON *req)
{
	char err[512];
	cJSON *reply = cJSON_CreateObject();
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(req, "id");
	if (id)
		cJSON_AddItemToObject(reply, "id", cJSON_Duplicate(id, 1));
	struct pool *fresh = pool_new(loop, policy_path, lua_workers_n, reply_ready, NULL, err, sizeof err);
	if (err[0]) {
		pool_free(fresh);
		log_warn("reload: the policy failed to load; the old one keeps serving: %s", err);
		cJSON_AddBoolToObject(reply, "ok", 0);
		cJSON_AddStringToObject(reply, "error", err);
		return reply;
	}
	struct pool *old = pool;
	pool = fresh;
	generation++;
	pool_retire(old);
	log_info("reload: policy %s loaded (generation %u)", policy_path, generation);
	cJSON_AddBoolToObject(reply, "ok", 1);
	cJSON_AddNumberToObject(reply, "generation", generation);
	return reply;
}

static void client_read(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer *out = bufferevent_get_output(bev);
	for (;;) {
		if (evbuffer_get_length(out) > OUT_HIGH) {
			/* the client is not reading its replies: wait for it */
			bufferevent_disable(bev, EV_READ);
			return;
		}
		cJSON *req;
		char err[128];
		int rc = frame_read(in, &req, err, sizeof err);
		if (rc == 0)
			return;
		if (rc < 0) {
			log_warn("client %lu: malformed frame: %s; closing", c->id, err);
			client_free(c);
			return;
		}
		const cJSON *op = cJSON_GetObjectItemCaseSensitive(req, "op");
		if (cJSON_IsString(op) && strcmp(op->valuestring, "reload") == 0) {
			cJSON *reply = reload(req);
			frame_encode(out, reply);
			cJSON_Delete(reply);
			cJSON_Delete(req);
			continue;
		}
		pool_submit(pool, c->id, req);
	}
}

/* A reply from a Lua worker; the client may have gone meanwhile.  Every
 * reply carries the generation, so a client learns of a reload. */
static void reply_ready(void *arg, unsigned long client, const cJSON *req, const cJSON *reply)
{
	(void)arg;
	struct client *c = clients;
	while (c && c->id != client)
		c = c->next;
	if (!c)
		return;
	cJSON_DeleteItemFromObjectCaseSensitive((cJSON *)reply, "generation");
	cJSON_AddNumberToObject((cJSON *)reply, "generation", generation);
	struct evbuffer *out = bufferevent_get_output(c->bev);
	if (frame_encode(out, reply) < 0) {
		cJSON *small = cJSON_CreateObject();
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(req, "id");
		if (!small)
			abort();
		if (id)
			cJSON_AddItemToObject(small, "id", cJSON_Duplicate(id, 1));
		cJSON_AddBoolToObject(small, "ok", 0);
		cJSON_AddStringToObject(small, "error", "reply too large");
		log_warn("client %lu: reply too large", c->id);
		frame_encode(out, small);
		cJSON_Delete(small);
	}
}

static void client_write(struct bufferevent *bev, void *arg)
{
	/* called once the output drained below OUT_LOW */
	if (!(bufferevent_get_enabled(bev) & EV_READ)) {
		bufferevent_enable(bev, EV_READ);
		client_read(bev, arg);
	}
}

static void client_event(struct bufferevent *bev, short what, void *arg)
{
	struct client *c = arg;
	(void)bev;
	if (what & BEV_EVENT_ERROR)
		log_debug("client %lu: %s", c->id, strerror(EVUTIL_SOCKET_ERROR()));
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		client_free(c);
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
	struct event_base *base = evconnlistener_get_base(lst);
	struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!bev) {
		log_warn("policy socket: cannot create a bufferevent; closing");
		close(fd);
		return;
	}
	struct client *c = xcalloc(1, sizeof *c);
	c->bev = bev;
	c->id = next_client_id++;
	c->next = clients;
	if (clients)
		clients->prev = c;
	clients = c;
	bufferevent_setcb(bev, client_read, client_write, client_event, c);
	bufferevent_setwatermark(bev, EV_WRITE, OUT_LOW, 0);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	log_debug("client %lu: connected (pid %d)", c->id, (int)cred.pid);
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
	struct event_base *base = event_base_new();
	if (!base)
		log_fatal("event_base_new failed");
	loop = base;
	policy_path = path;
	lua_workers_n = lua_workers;
	pool = pool_new(base, path, lua_workers, reply_ready, NULL, err, sizeof err);
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

	while (clients)
		client_free(clients);
	event_free(resume);
	evconnlistener_free(lst);
	event_free(sigterm);
	event_free(sigint);
	event_base_free(base);
	pool_free(pool);
	return 0;
}
