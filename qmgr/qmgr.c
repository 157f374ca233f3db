/* kumo-qmgr: the queue manager.  Started by kumod with the configuration
 * JSON on FD_CONFIG and its listening socket on FD_QMGR_LISTEN (lib/ipc.h).
 * It loads every message in the spool, learns of new ones from the smtpd
 * workers, and delivers them (qmgr_queue.c).  A periodic listing of the
 * spool picks up any message whose notice was lost.  SIGTERM: no new
 * deliveries, in-memory messages are written to the spool, transactions in
 * flight have QMGR_STOP_GRACE seconds to finish, exit 0. */
#include "qmgr/qmgr.h"
#include "lib/jadd.h"
#include "lib/conffd.h"
#include "lib/ipc.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QMGR_STOP_GRACE 5       /* seconds for transactions in flight at SIGTERM */
#define QMGR_RESCAN_SECS 300    /* the spool listing for lost notices */
#define QMGR_TICK_SECS 30       /* sealing and removing finished segments */

struct load_stats {
	size_t loaded, failed;
};

static void found(void *arg, const char *id, const struct spool_loc *loc, const char *meta,
		  size_t meta_len)
{
	struct load_stats *st = arg;
	if (qmgr_find(id))
		return;
	char err[300];
	if (!meta) {
		st->failed++;
		log_warn("message %s: its meta cannot be read from segment %s", id, spool_seg_name(loc->seg));
	} else if (qmgr_load(id, loc, meta, meta_len, err, sizeof err) == 0) {
		struct qmsg *m = qmgr_find(id);
		if (m)
			m->listed = true; /* its notice may still come: see qmgr_notice */
		st->loaded++;
	} else {
		st->failed++;
		log_warn("message %s: %s", id, err);
	}
}

static void load_spool(bool first)
{
	struct load_stats st = { 0, 0 };
	char err[300];
	/* at start every segment; later only those that grew since */
	if ((first ? spool_list : spool_list_changed)(&Q->spool, found, &st, err, sizeof err) != 0) {
		log_warn("%s", err);
		return;
	}
	size_t removed = spool_reap(&Q->spool);
	if (first)
		log_info("queue: %zu message%s to deliver from the spool", st.loaded, st.loaded == 1 ? "" : "s");
	else if (st.loaded)
		log_warn("queue: %zu spooled message%s had not been announced; queued now", st.loaded,
			 st.loaded == 1 ? "" : "s");
	if (removed)
		log_debug("spool: %zu finished segment%s removed", removed, removed == 1 ? "" : "s");
}

/* Every QMGR_TICK_SECS: seal our own segment if it is old and remove
 * finished segments; every QMGR_RESCAN_SECS, list the spool as well. */
static void on_rescan(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	static unsigned ticks;
	if (Q->stopping)
		return;
	spool_commit(&Q->spool, NULL, 0);
	if (++ticks % (QMGR_RESCAN_SECS / QMGR_TICK_SECS) == 0) {
		qmgr_listed_done_expire(false);
		load_spool(false);
	} else {
		spool_reap(&Q->spool);
	}
}

static void check_stopped(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (Q->n_flight == 0)
		event_base_loopexit(Q->base, NULL);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	log_warn("%zu transaction%s still in flight at the shutdown deadline; they will be retried", Q->n_flight,
		 Q->n_flight == 1 ? "" : "s");
	event_base_loopexit(Q->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	if (Q->stopping)
		return;
	log_debug("signal %d: stopping deliveries", (int)sig);
	qmgr_stop();
	ctl_close();
	struct timeval tick = { 0, 100000 }, grace = { QMGR_STOP_GRACE, 0 };
	Q->stop_timer = event_new(Q->base, -1, EV_PERSIST, check_stopped, NULL);
	event_add(Q->stop_timer, &tick);
	event_base_once(Q->base, -1, EV_TIMEOUT, on_deadline, NULL, &grace);
}

static char *resolver_servers(const cJSON *r, int *timeout_ms, int *tries)
{
	*timeout_ms = 0;
	*tries = 0;
	const cJSON *ns = jget(r, "name_servers");
	if (!ns || !ns->child)
		return NULL;
	size_t len = 1;
	for (const cJSON *c = ns->child; c; c = c->next)
		len += cJSON_IsString(c) ? strlen(c->valuestring) + 1 : 0;
	char *csv = xcalloc(1, len);
	size_t used = 0;
	for (const cJSON *c = ns->child; c; c = c->next) {
		if (!cJSON_IsString(c))
			continue;
		int w = snprintf(csv + used, len - used, "%s%s", used ? "," : "", c->valuestring);
		if (w > 0 && (size_t)w < len - used)
			used += (size_t)w;
	}
	const cJSON *opts = jget(r, "options");
	const cJSON *att = jget(opts, "attempts");
	if (cJSON_IsNumber(att))
		*tries = (int)att->valuedouble;
	return csv;
}

int main(int argc, char **argv)
{
	log_init("kumo-qmgr");
	if (argc > 1)
		log_fatal("usage: kumo-qmgr (started by kumod)");
	(void)argv;
	signal(SIGPIPE, SIG_IGN);
	char err[400];
	cJSON *conf = conffd_read(FD_CONFIG, err, sizeof err);
	if (!conf)
		log_fatal("%s", err);
	Q = xcalloc(1, sizeof *Q);
	Q->base = event_base_new();
	if (!Q->base)
		log_fatal("cannot create the event loop");
	/* caught from now on (a SIGTERM during start-up waits for the loop) */
	struct event *sigterm = evsignal_new(Q->base, SIGTERM, on_signal, NULL);
	struct event *sigint = evsignal_new(Q->base, SIGINT, on_signal, NULL);
	evsignal_add(sigterm, NULL);
	evsignal_add(sigint, NULL);
	const cJSON *lvl = jget(conf, "log_level");
	if (cJSON_IsString(lvl) && log_level_parse(lvl->valuestring) >= 0)
		log_set_level((enum klog_level)log_level_parse(lvl->valuestring));
	if (gethostname(Q->hostname, sizeof Q->hostname - 1) != 0 || !Q->hostname[0])
		snprintf(Q->hostname, sizeof Q->hostname, "localhost");

	const cJSON *spools = jget(conf, "spools");
	const cJSON *dp = jget(jget(spools, "data"), "path");
	const cJSON *mp = jget(jget(spools, "meta"), "path");
	if (!cJSON_IsString(dp) || !cJSON_IsString(mp))
		log_fatal("configuration lacks the data and meta spools");
	if (spool_open(&Q->spool, dp->valuestring, mp->valuestring, err, sizeof err) != 0)
		log_fatal("%s", err);
	if (logrec_open(&Q->logs, jget(conf, "logs"), err, sizeof err) != 0)
		log_fatal("%s", err);
	logrec_attach(&Q->logs, Q->base);
	int timeout_ms, tries;
	char *servers = resolver_servers(jget(conf, "resolver"), &timeout_ms, &tries);
	Q->dns = dns_new(Q->base, servers, timeout_ms, tries, err, sizeof err);
	free(servers);
	if (!Q->dns)
		log_fatal("resolver: %s", err);
	Q->ssl_verify = smtp_client_ssl_ctx(true, err, sizeof err);
	if (!Q->ssl_verify)
		log_fatal("TLS: %s", err);
	Q->ssl_insecure = smtp_client_ssl_ctx(false, err, sizeof err);
	if (!Q->ssl_insecure)
		log_fatal("TLS: %s", err);
	const cJSON *ps = jget(conf, "policy_socket");
	Q->policy = qpolicy_new(Q->base, cJSON_IsString(ps) ? ps->valuestring : "");
	cJSON_Delete(conf);

	qmgr_queue_init();
	ctl_init(FD_QMGR_LISTEN);
	load_spool(true);
	Q->rescan_timer = event_new(Q->base, -1, EV_PERSIST, on_rescan, NULL);
	struct timeval rescan = { QMGR_TICK_SECS, 0 };
	event_add(Q->rescan_timer, &rescan);

	event_base_dispatch(Q->base);

	qmgr_queue_free();
	ctl_close();
	qpolicy_free(Q->policy);
	dns_free(Q->dns);
	SSL_CTX_free(Q->ssl_verify);
	SSL_CTX_free(Q->ssl_insecure);
	logrec_close(&Q->logs);
	spool_close(&Q->spool);
	event_free(Q->rescan_timer);
	if (Q->stop_timer)
		event_free(Q->stop_timer);
	event_free(sigterm);
	event_free(sigint);
	event_base_free(Q->base);
	free(Q);
	return 0;
}
