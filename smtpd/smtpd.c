/* kumo-smtpd: an SMTP worker.  Started by kumod with the config JSON on
 * FD_CONFIG and the listening sockets from FD_LISTEN_BASE (lib/ipc.h); it
 * runs one libevent loop over all its sessions, a spool writer thread and
 * a connection to kumo-policyd.  SIGTERM drains: listeners close, idle
 * sessions get 421, transactions in flight have 10 s to finish. */
#include "smtpd/smtpd.h"
#include "lib/jadd.h"
#include "lib/conffd.h"
#include "lib/ipc.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ACCEPT_PAUSE_US 2000   /* a worker over its share lets the others accept */

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct listener *l = arg;
	if (!smtpd->draining && l->evl)
		evconnlistener_enable(l->evl);
}

/* Every worker accepts on the same socket, and the one that wakes first
 * would take a whole burst of connections while the others idle.  A worker
 * holding more than its share of a listener's sessions (the table all
 * workers share, lib/ipc.h) stops accepting for ACCEPT_PAUSE_US, so the
 * kernel hands the next ones to another.  When the others are gone, this
 * only slows accepting to one per pause until kumod restarts them. */
static void on_accept(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct listener *l = arg;
	session_accept(l, fd, sa, salen);
	if (smtpd->n_workers < 2)
		return;
	uint64_t mine = 0, total = 0;
	for (int w = 0; w < smtpd->n_workers; w++) {
		uint64_t n = __atomic_load_n(&smtpd->counters[(size_t)w * smtpd->n_listeners + (size_t)l->index],
					     __ATOMIC_RELAXED);
		total += n;
		if (w == smtpd->worker)
			mine = n;
	}
	if (mine > total / (uint64_t)smtpd->n_workers + 1) {
		evconnlistener_disable(evl);
		struct timeval tv = { 0, ACCEPT_PAUSE_US };
		evtimer_add(l->resume, &tv);
	}
}

static void on_accept_error(struct evconnlistener *evl, void *arg)
{
	(void)evl;
	struct listener *l = arg;
	int err = EVUTIL_SOCKET_ERROR();
	log_warn("accept on %s: %s", l->listen_str, evutil_socket_error_to_string(err));
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	log_debug("signal %d: draining %zu sessions", (int)sig, smtpd->n_sessions);
	smtpd_drain_sessions();
}

int main(int argc, char **argv)
{
	log_init("kumo-smtpd");
	int worker = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--worker") == 0 && i + 1 < argc)
			worker = atoi(argv[++i]);
		else
			log_fatal("usage: kumo-smtpd [--worker N] (started by kumod)");
	}
	signal(SIGPIPE, SIG_IGN);
	char cerr[200];
	cJSON *conf = conffd_read(FD_CONFIG, cerr, sizeof cerr);
	if (!conf)
		log_fatal("%s", cerr);
	smtpd = xcalloc(1, sizeof *smtpd);
	smtpd->base = event_base_new();
	if (!smtpd->base)
		log_fatal("cannot create the event loop");

	smtpd->flush_ev = event_new(smtpd->base, -1, 0, session_flush_all, NULL);
	smtpd->worker = worker;
	const cJSON *lvl = jget(conf, "log_level");
	if (cJSON_IsString(lvl) && log_level_parse(lvl->valuestring) >= 0)
		log_set_level((enum klog_level)log_level_parse(lvl->valuestring));

	char err[400];
	const cJSON *spools = jget(conf, "spools");
	const cJSON *dp = jget(jget(spools, "data"), "path");
	const cJSON *mp = jget(jget(spools, "meta"), "path");
	if (!cJSON_IsString(dp) || !cJSON_IsString(mp))
		log_fatal("configuration lacks the data and meta spools");
	if (spool_open(&smtpd->spool, dp->valuestring, mp->valuestring, err, sizeof err) != 0)
		log_fatal("%s", err);
	if (logrec_open(&smtpd->logs, jget(conf, "logs"), err, sizeof err) != 0)
		log_fatal("%s", err);
	logrec_attach(&smtpd->logs, smtpd->base);
	smtpd->writer = spool_writer_new(smtpd->base, &smtpd->spool);

	const cJSON *ps = jget(conf, "policy_socket");
	smtpd->policy = policy_client_new(smtpd->base, cJSON_IsString(ps) ? ps->valuestring : "",
					  jget(conf, "handlers"));

	const cJSON *qs = jget(conf, "qmgr_socket");
	smtpd->qmgr = qmgr_client_new(smtpd->base, cJSON_IsString(qs) ? qs->valuestring : "");

	const cJSON *ls = jget(conf, "listeners");
	smtpd->n_listeners = (size_t)cJSON_GetArraySize(ls);
	smtpd->listeners = xcalloc(smtpd->n_listeners ? smtpd->n_listeners : 1, sizeof *smtpd->listeners);
	size_t i = 0;
	const cJSON *lt;
	cJSON_ArrayForEach(lt, ls) {
		struct listener *l = &smtpd->listeners[i];
		l->index = (int)i;
		l->table = cJSON_Duplicate(lt, 1);
		params_defaults(&l->base, NULL);
		if (params_apply(&l->base, l->table, PARAMS_TOP, NULL, NULL, err, sizeof err) != 0)
			log_fatal("listener %zu: %s", i, err);
		snprintf(l->listen_str, sizeof l->listen_str, "%s", l->base.listen);
		int fd = FD_LISTEN_BASE + (int)i;
		evutil_make_socket_nonblocking(fd);
		l->evl = evconnlistener_new(smtpd->base, on_accept, l, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
					    -1, fd);
		if (!l->evl)
			log_fatal("cannot serve listener %s on descriptor %d", l->listen_str, fd);
		evconnlistener_set_error_cb(l->evl, on_accept_error);
		l->resume = evtimer_new(smtpd->base, on_resume, l);
		i++;
	}
	const cJSON *nw = jget(conf, "workers");
	smtpd->n_workers = cJSON_IsNumber(nw) ? (int)nw->valuedouble : 1;
	if (smtpd->worker >= smtpd->n_workers)
		log_fatal("worker %d of %d", smtpd->worker, smtpd->n_workers);
	size_t clen = IPC_SHARED_LEN(smtpd->n_workers, smtpd->n_listeners);
	smtpd->counters = mmap(NULL, clen, PROT_READ | PROT_WRITE, MAP_SHARED, FD_COUNTERS, 0);
	if (smtpd->counters == MAP_FAILED)
		log_fatal("session counters on descriptor %d: %s", FD_COUNTERS, strerror(errno));
	spool_writer_set_stats(smtpd->writer,
			       (struct ipc_commit_stats *)((char *)smtpd->counters +
							   IPC_COMMIT_STATS_OFF(smtpd->n_workers, smtpd->n_listeners)) +
				       smtpd->worker);
	close(FD_COUNTERS);
	tls_setup(jget(conf, "tls_self_signed"),
		  jget(conf, "tls_vault"));
	cJSON_Delete(conf);

	smtpd->sigterm_ev = evsignal_new(smtpd->base, SIGTERM, on_signal, NULL);
	smtpd->sigint_ev = evsignal_new(smtpd->base, SIGINT, on_signal, NULL);
	evsignal_add(smtpd->sigterm_ev, NULL);
	evsignal_add(smtpd->sigint_ev, NULL);
	log_debug("worker %d serving %zu listeners", smtpd->worker, smtpd->n_listeners);

	event_base_dispatch(smtpd->base);

	/* drained: the writer finishes what it holds before we go */
	spool_writer_free(smtpd->writer);
	smtpd->writer = NULL;
	while (smtpd->sessions) {
		struct session *s = smtpd->sessions;
		s->policy_req = 0;
		s->spool_pending = false;
		s->early_pending = false;  /* the writer is gone */
		session_close(s);
	}
	for (i = 0; i < smtpd->n_listeners; i++) {
		if (smtpd->listeners[i].evl)
			evconnlistener_free(smtpd->listeners[i].evl);
		if (smtpd->listeners[i].resume)
			event_free(smtpd->listeners[i].resume);
		cJSON_Delete(smtpd->listeners[i].table);
		params_free(&smtpd->listeners[i].base);
	}
	tls_teardown();
	free(smtpd->listeners);
	policy_client_free(smtpd->policy);
	qmgr_client_free(smtpd->qmgr);
	logrec_close(&smtpd->logs);
	spool_close(&smtpd->spool);
	if (smtpd->drain_timer)
		event_free(smtpd->drain_timer);
	event_free(smtpd->flush_ev);
	event_free(smtpd->sigterm_ev);
	event_free(smtpd->sigint_ev);
	event_base_free(smtpd->base);
	free(smtpd);
	return 0;
}
