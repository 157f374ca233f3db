/* master_child: starting, watching and restarting the helper processes.
 * Each child is forked and exec'd (it starts clean, with only the
 * descriptors it is given at the numbers fixed in lib/ipc.h).  A child that
 * dies is restarted after a back-off that doubles (to 30 s) while it keeps
 * dying within 10 s of its start; the log says so.  A child gets SIGTERM
 * when kumod dies (PR_SET_PDEATHSIG), so none is left serving headless.
 * Entry points: child_spawn, child_reap, children_running. */
#include "master/master.h"
#include "lib/ipc.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double monotime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *child_name(const struct child *c)
{
	return c->kind == CHILD_POLICYD ? "kumo-policyd" : c->kind == CHILD_QMGR ? "kumo-qmgr" : "kumo-smtpd";
}

/* In the child: place src[i] at dst[i], close everything else above 2. */
static void place_fds(const int *src, const int *dst, int n)
{
	int tmp[64];
	for (int i = 0; i < n && i < 64; i++) {
		tmp[i] = fcntl(src[i], F_DUPFD, 100);
		if (tmp[i] < 0)
			_exit(127);
	}
	for (int i = 0; i < n && i < 64; i++) {
		if (dup2(tmp[i], dst[i]) < 0)
			_exit(127);
		/* dup2 clears FD_CLOEXEC on the new descriptor */
	}
	int top = 3;
	for (int i = 0; i < n; i++)
		if (dst[i] >= top)
			top = dst[i] + 1;
	close_range((unsigned)top, ~0U, 0);
}

void child_spawn(struct master *m, struct child *c)
{
	/* a new worker starts with no sessions: the old one's are gone */
	if (c->kind == CHILD_SMTPD && m->counters)
		for (size_t i = 0; i < m->n_listen; i++)
			__atomic_store_n(&m->counters[(size_t)c->index * m->n_listen + i], 0, __ATOMIC_SEQ_CST);
	char path[4200];
	snprintf(path, sizeof path, "%s/%s", m->bindir, child_name(c));
	m->pid = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		log_warn("cannot fork %s: %s", child_name(c), strerror(errno));
		return;
	}
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		if (m->drop && getuid() == 0 && (setgroups(0, NULL) != 0 || setgid(m->run_gid) != 0 || setuid(m->run_uid) != 0)) {
			fprintf(stderr, "kumod: cannot switch %s to uid %d: %s\n", child_name(c), (int)m->run_uid,
				strerror(errno));
			_exit(127);
		}
		/* a child never outlives kumod: SIGTERM (drain and exit) when it
		 * dies.  Set after the uid change, which would clear it. */
		if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != m->pid)
			_exit(127);
		if (c->kind == CHILD_POLICYD) {
			int src[1] = { m->policy_listen_fd }, dst[1] = { FD_POLICY_LISTEN };
			place_fds(src, dst, 1);
			const char *argv[] = { path, "--policy", m->policy, "--log-level", m->log_level, NULL };
			execv(path, (char *const *)argv);
		} else if (c->kind == CHILD_QMGR) {
			int src[2] = { m->config_fd, m->qmgr_listen_fd }, dst[2] = { FD_CONFIG, FD_QMGR_LISTEN };
			place_fds(src, dst, 2);
			const char *argv[] = { path, NULL };
			execv(path, (char *const *)argv);
		} else {
			int n = 2 + (int)m->n_listen;
			int *src = xcalloc((size_t)n, sizeof *src), *dst = xcalloc((size_t)n, sizeof *dst);
			src[0] = m->config_fd;
			dst[0] = FD_CONFIG;
			src[1] = m->counters_fd;
			dst[1] = FD_COUNTERS;
			for (size_t i = 0; i < m->n_listen; i++) {
				src[2 + i] = m->listen_fds[i];
				dst[2 + i] = FD_LISTEN_BASE + (int)i;
			}
			place_fds(src, dst, n);
			char idx[16];
			snprintf(idx, sizeof idx, "%d", c->index);
			const char *argv[] = { path, "--worker", idx, NULL };
			execv(path, (char *const *)argv);
		}
		fprintf(stderr, "kumod: cannot run %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	c->pid = pid;
	c->started = monotime();
	log_debug("started %s[%d]", child_name(c), (int)pid);
}

static struct master *the_master;

static void do_restart(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct child *c = arg;
	if (!the_master->stopping)
		child_spawn(the_master, c);
}

static void schedule_restart(struct master *m, struct child *c, int status)
{
	double lived = monotime() - c->started;
	char how[96];
	if (WIFSIGNALED(status))
		snprintf(how, sizeof how, "killed by signal %d (%s)%s", WTERMSIG(status),
			 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
	else
		snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
	if (lived < 10) {
		c->backoff = c->backoff < 0.5 ? 0.5 : c->backoff * 2;
		if (c->backoff > 30)
			c->backoff = 30;
	} else {
		c->backoff = 0.1;
	}
	log_warn("%s[%d] %s after %.1f s; restarting in %.1f s%s", child_name(c), (int)c->pid, how, lived,
		 c->backoff, lived < 10 ? " (dying early: throttled)" : "");
	c->pid = 0;
	the_master = m;
	if (!c->restart)
		c->restart = evtimer_new(m->base, do_restart, c);
	struct timeval tv = { (time_t)c->backoff, (suseconds_t)((c->backoff - (double)(time_t)c->backoff) * 1e6) };
	evtimer_add(c->restart, &tv);
}

void child_reap(struct master *m)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct child *c = NULL;
		if (m->policyd.pid == pid)
			c = &m->policyd;
		if (m->qmgr.pid == pid)
			c = &m->qmgr;
		for (int i = 0; !c && i < m->n_workers; i++)
			if (m->workers[i].pid == pid)
				c = &m->workers[i];
		if (!c)
			continue;
		if (m->stopping) {
			if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
				log_warn("%s[%d] ended with status %d during shutdown", child_name(c), (int)pid, status);
			c->pid = 0;
			continue;
		}
		schedule_restart(m, c, status);
	}
}

int children_running(const struct master *m)
{
	int n = (m->policyd.pid ? 1 : 0) + (m->qmgr.pid ? 1 : 0);
	for (int i = 0; i < m->n_workers; i++)
		n += m->workers[i].pid ? 1 : 0;
	return n;
}
