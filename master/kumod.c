/* kumod: the master.  Starts kumo-policyd, has it run the policy's init
 * event, reads the HashiCorp Vault key sources the listeners name, checks
 * the spools and logs it asked for, binds the listeners,
 * drops privileges, forks the kumo-smtpd workers (which inherit the
 * listening sockets) and supervises them.  SIGTERM/SIGINT: graceful stop
 * (workers drain, then policyd), exit 0.  Bad start-up input: one line on
 * stderr, exit 1, nothing left bound or running. */
#include "master/master.h"
#include "lib/frame.h"
#include "lib/ipc.h"
#include "lib/log.h"
#include "lib/logrec.h"
#include "lib/netaddr.h"
#include "lib/params.h"
#include "lib/tls.h"
#include "lib/vault.h"
#include "lib/xalloc.h"
#include "spool/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static struct master M;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kumod --policy FILE [--workers N] [--user USER] [--control-socket PATH]\n"
		"             [--daemonize --pidfile FILE] [--log-level LEVEL] [--validate]\n"
		"       kumod --help | --version\n"
		"Runs the relay: a master, a policy daemon and N SMTP workers (see kumod(8)).\n");
}

static void kill_children_now(void)
{
	if (M.policyd.pid > 0)
		kill(M.policyd.pid, SIGKILL);
	if (M.qmgr.pid > 0)
		kill(M.qmgr.pid, SIGKILL);
	for (int i = 0; i < M.n_workers; i++)
		if (M.workers && M.workers[i].pid > 0)
			kill(M.workers[i].pid, SIGKILL);
	while (waitpid(-1, NULL, 0) > 0)
		;
}

/* Start-up failure: one line, nothing left running, exit 1. */
static void startup_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void startup_fail(const char *fmt, ...)
{
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++)
		if (*p == '\n')
			*p = ' ';
	fprintf(stderr, "kumod: %s\n", msg);
	kill_children_now();
	if (M.control_path)
		unlink(M.control_path);
	exit(1);
}

/* Where kumo-smtpd and kumo-policyd are: beside kumod (the build tree's
 * bin/), else ../libexec/kumomta from it (an installed tree). */
static char *helper_dir(void)
{
	char buf[4096];
	ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
	if (n <= 0)
		return xstrdup(".");
	buf[n] = '\0';
	char *dir = xstrdup(dirname(buf));
	char probe[4200];
	snprintf(probe, sizeof probe, "%s/kumo-smtpd", dir);
	if (access(probe, X_OK) == 0)
		return dir;
	char *installed = xasprintf("%s/../libexec/kumomta", dir);
	free(dir);
	return installed;
}

/* A listening socket in the abstract namespace for a helper (policyd,
 * qmgr); its name has our pid and random bytes. */
static int helper_listen(const char *what, char *name, size_t namelen)
{
	unsigned char r[6];
	if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
		memset(r, 7, sizeof r);
	snprintf(name, namelen, "@kumomta-%d-%02x%02x%02x%02x%02x%02x-%s", (int)getpid(), r[0], r[1], r[2],
		 r[3], r[4], r[5], what);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_un sun;
	socklen_t len = netaddr_unix(name, &sun);
	if (bind(fd, (struct sockaddr *)&sun, len) != 0 || listen(fd, 512) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int policy_connect(const char *name)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sun;
	socklen_t len = netaddr_unix(name, &sun);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, len) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* Asks policyd to run init; returns the config or exits. */
static cJSON *run_init(void)
{
	int fd = policy_connect(M.policy_sock);
	if (fd < 0)
		startup_fail("cannot reach kumo-policyd: %s", strerror(errno));
	cJSON *req = cJSON_CreateObject();
	cJSON_AddNumberToObject(req, "id", 1);
	cJSON_AddStringToObject(req, "op", "init");
	char err[256];
	cJSON *reply = NULL;
	if (frame_send_fd(fd, req, err, sizeof err) != 0 || frame_recv_fd(fd, &reply, 120000, err, sizeof err) != 0) {
		int status;
		if (M.policyd.pid > 0 && waitpid(M.policyd.pid, &status, WNOHANG) == M.policyd.pid)
			M.policyd.pid = 0;
		startup_fail("kumo-policyd did not answer the init request: %s", err);
	}
	cJSON_Delete(req);
	close(fd);
	const cJSON *ok = cJSON_GetObjectItemCaseSensitive(reply, "ok");
	if (!cJSON_IsTrue(ok)) {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(reply, "error");
		startup_fail("%s", cJSON_IsString(e) ? e->valuestring : "policy init failed");
	}
	cJSON *config = cJSON_DetachItemFromObjectCaseSensitive(reply, "config");
	cJSON_Delete(reply);
	if (!cJSON_IsObject(config))
		startup_fail("kumo-policyd sent no configuration");
	return config;
}

static const char *spool_path(const cJSON *config, const char *name)
{
	const cJSON *sp = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(config, "spools"), name);
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(sp, "path");
	return cJSON_IsString(p) ? p->valuestring : NULL;
}

static void scan_found(void *arg, const char *id)
{
	(void)arg;
	(void)id;
}

static void scan_warn(void *arg, const char *id, const char *why)
{
	(void)arg;
	if (strlen(id) == SPOOL_SEG_NAME_LEN)
		log_warn("spool: part of segment %s quarantined: %s", id, why);
	else
		log_warn("spool: message %s quarantined: %s", id, why);
}

/* One key source of a listener table: when it is a HashiCorp Vault
 * table, reads it (unless an earlier one named the same secret field) and
 * adds it to fetched; the table keeps where the value came from, with the
 * address resolved and without the token.  where: "tls_certificate",
 * "peer['10.0.0.0/8'].tls_private_key", ... */
static void fetch_vault_source(cJSON *ks, cJSON *fetched, const char *listen, const char *where)
{
	if (!cJSON_IsObject(ks) || !cJSON_GetObjectItemCaseSensitive(ks, "vault_mount") ||
	    cJSON_GetObjectItemCaseSensitive(ks, "key_data"))
		return; /* key_data, when given too, is what the workers use */
	char err[1200];
	struct vault_source src;
	if (vault_source_parse(ks, &src, err, sizeof err) != 0)
		startup_fail("listener %s: %s: HashiCorp Vault: %s", listen, where, err);
	cJSON_DeleteItemFromObjectCaseSensitive(ks, "vault_token");
	cJSON_DeleteItemFromObjectCaseSensitive(ks, "vault_address");
	cJSON_DeleteItemFromObjectCaseSensitive(ks, "vault_key");
	cJSON_AddStringToObject(ks, "vault_address", src.address);
	cJSON_AddStringToObject(ks, "vault_key", src.key);
	if (!vault_lookup(fetched, ks)) {
		char *value = vault_read(&src, err, sizeof err);
		if (!value) {
			char *what = vault_source_describe(&src);
			startup_fail("listener %s: %s: HashiCorp Vault %s: %s", listen, where, what, err);
		}
		cJSON_AddItemToArray(fetched, vault_fetched_entry(&src, value));
		log_debug("listener %s: %s: read %s/%s from %s", listen, where, src.mount, src.path, src.address);
		free(value);
	}
	vault_source_free(&src);
}

/* The key sources of one table and, recursively, of its peer/via blocks. */
static void fetch_vault_table(cJSON *table, cJSON *fetched, const char *listen, const char *prefix)
{
	static const char *const names[] = { "tls_certificate", "tls_private_key", "tls_required_client_ca" };
	char where[512];
	for (int i = 0; i < 3; i++) {
		snprintf(where, sizeof where, "%s%s", prefix, names[i]);
		fetch_vault_source(cJSON_GetObjectItemCaseSensitive(table, names[i]), fetched, listen, where);
	}
	static const char *const maps[] = { "peer", "via" };
	for (int i = 0; i < 2; i++) {
		cJSON *block;
		cJSON_ArrayForEach(block, cJSON_GetObjectItemCaseSensitive(table, maps[i])) {
			snprintf(where, sizeof where, "%s%s['%s'].", prefix, maps[i], block->string);
			fetch_vault_table(block, fetched, listen, where);
		}
	}
}

/* Reads every HashiCorp Vault key source the listeners name, once, while
 * kumod still has the environment and privileges it was started with:
 * the values go to the workers as config "tls_vault" (see vault_lookup),
 * so they never talk to Vault.  Any failure is a start-up error. */
static void fetch_vault(cJSON *config)
{
	cJSON *fetched = cJSON_CreateArray();
	char err[600];
	cJSON *l;
	cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(config, "listeners")) {
		if (params_check(l, PARAMS_TOP, err, sizeof err) != 0)
			startup_fail("listener: %s", err);
		const cJSON *la = cJSON_GetObjectItemCaseSensitive(l, "listen");
		fetch_vault_table(l, fetched, cJSON_IsString(la) ? la->valuestring : "127.0.0.1:2025", "");
	}
	cJSON_AddItemToObject(config, "tls_vault", fetched);
}

/* A key source as a file path or PEM text (key_data, or a value
 * fetch_vault read). */
static void key_source(const cJSON *config, const cJSON *v, const char **file, const char **pem)
{
	*file = cJSON_IsString(v) ? v->valuestring : NULL;
	const cJSON *kd = cJSON_GetObjectItemCaseSensitive(v, "key_data");
	*pem = cJSON_IsString(kd) ? kd->valuestring
	     : cJSON_IsObject(v) ? vault_lookup(cJSON_GetObjectItemCaseSensitive(config, "tls_vault"), v)
	     : NULL;
}

/* Checks the TLS material each listener names (as the user the workers
 * run as, so files they cannot read fail here) and makes a self-signed
 * certificate for the others, once, for all the workers. */
static void prepare_tls(cJSON *config)
{
	const cJSON *listeners = cJSON_GetObjectItemCaseSensitive(config, "listeners");
	cJSON *made = cJSON_CreateArray();
	const cJSON *l;
	char err[600];
	cJSON_ArrayForEach(l, listeners) {
		struct listener_params p;
		params_defaults(&p, NULL);
		if (params_apply(&p, l, PARAMS_TOP, NULL, NULL, err, sizeof err) != 0)
			startup_fail("listener: %s", err);
		const cJSON *c = p.tls_certificate, *k = p.tls_private_key;
		cJSON *entry = cJSON_CreateObject();
		if (c || k) {
			if (!c || !k)
				startup_fail("listener %s: tls_certificate and tls_private_key must be given together", p.listen);
			const char *cf, *cpem, *kf, *kpem;
			key_source(config, c, &cf, &cpem);
			key_source(config, k, &kf, &kpem);
			if (!(cf || cpem) || !(kf || kpem))
				startup_fail("listener %s: %s: no value from its key source", p.listen,
					     cf || cpem ? "tls_private_key" : "tls_certificate");
			SSL_CTX *ctx = tls_server_ctx(cf, kf, cpem, kpem, err, sizeof err);
			if (!ctx)
				startup_fail("listener %s: %s", p.listen, err);
			SSL_CTX_free(ctx);
		} else {
			char *cert, *key;
			if (tls_self_signed(p.hostname, &cert, &key, err, sizeof err) != 0)
				startup_fail("listener %s: self-signed certificate: %s", p.listen, err);
			cJSON_AddStringToObject(entry, "cert", cert);
			cJSON_AddStringToObject(entry, "key", key);
			free(cert);
			free(key);
		}
		if (p.tls_required_client_ca) {
			const char *af, *apem;
			key_source(config, p.tls_required_client_ca, &af, &apem);
			X509_STORE *store;
			STACK_OF(X509_NAME) *names;
			if (!af && !apem)
				startup_fail("listener %s: tls_required_client_ca: no value from its key source", p.listen);
			if (tls_ca_load(af, apem, &store, &names, err, sizeof err) != 0)
				startup_fail("listener %s: %s", p.listen, err);
			X509_STORE_free(store);
			sk_X509_NAME_pop_free(names, X509_NAME_free);
		}
		cJSON_AddItemToArray(made, entry);
		params_free(&p);
	}
	cJSON_AddItemToObject(config, "tls_self_signed", made);
}

static int make_config_fd(const cJSON *config)
{
	cJSON *c = cJSON_Duplicate(config, 1);
	cJSON_AddStringToObject(c, "policy_socket", M.policy_sock);
	cJSON_AddStringToObject(c, "qmgr_socket", M.qmgr_sock);
	cJSON_AddStringToObject(c, "log_level", M.log_level);
	cJSON_AddNumberToObject(c, "workers", M.n_workers);
	char *text = cJSON_PrintUnformatted(c);
	cJSON_Delete(c);
	int fd = memfd_create("kumod-config", MFD_CLOEXEC);
	if (fd < 0)
		startup_fail("memfd_create: %s", strerror(errno));
	size_t len = strlen(text), off = 0;
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);
		if (w <= 0)
			startup_fail("cannot write the worker configuration: %s", strerror(errno));
		off += (size_t)w;
	}
	free(text);
	return fd;
}

/* Resolves --user before any child starts: every child switches to it. */
static void resolve_user(const char *user)
{
	struct passwd *pw = getpwnam(user);
	if (!pw)
		startup_fail("--user %s: no such user", user);
	if (getuid() != 0) {
		if (pw->pw_uid != getuid())
			startup_fail("--user %s needs kumod to be started as root", user);
		return;
	}
	M.drop = true;
	M.run_uid = pw->pw_uid;
	M.run_gid = pw->pw_gid;
}

/* The master's own switch, once the listeners are bound. */
static void drop_privileges(const char *user, const char *data, const char *meta, const char *logdir)
{
	if (!M.drop)
		return;
	const char *paths[] = { data, meta, logdir, M.control_path };
	static const char *const subs[] = { "", "/new", "/quarantine", "/lock", "/seg" };
	for (int i = 0; i < 4; i++) {
		for (int k = 0; k < (i < 2 ? 5 : 1) && paths[i]; k++) {
			char p[4200];
			snprintf(p, sizeof p, "%s%s", paths[i], subs[k]);
			if (chown(p, M.run_uid, M.run_gid) != 0 && errno != ENOENT)
				startup_fail("cannot give %s to %s: %s", p, user, strerror(errno));
		}
	}
	/* the segments (and journals) the start-up scan wrote to, as root */
	for (int i = 0; i < 2; i++) {
		char p[4200];
		snprintf(p, sizeof p, "%s/seg", paths[i]);
		DIR *d = opendir(p);
		struct dirent *e;
		while (d && (e = readdir(d)) != NULL)
			if (e->d_name[0] != '.' &&
			    fchownat(dirfd(d), e->d_name, M.run_uid, M.run_gid, AT_SYMLINK_NOFOLLOW) != 0 &&
			    errno != ENOENT)
				startup_fail("cannot give %s/%s to %s: %s", p, e->d_name, user, strerror(errno));
		if (d)
			closedir(d);
	}
	if (setgroups(0, NULL) != 0 || setgid(M.run_gid) != 0 || setuid(M.run_uid) != 0)
		startup_fail("cannot switch to user %s: %s", user, strerror(errno));
}

/* Shutdown goes in order: the workers drain (they hand messages to the
 * queue manager), then the queue manager writes what it holds in memory,
 * then policyd, which the others ask until the end. */
static void stop_next(void)
{
	int workers = 0;
	for (int i = 0; i < M.n_workers; i++)
		workers += M.workers[i].pid ? 1 : 0;
	if (workers)
		return;
	if (M.qmgr.pid > 0) {
		if (!M.qmgr_told) {
			kill(M.qmgr.pid, SIGTERM);
			M.qmgr_told = true;
		}
		return;
	}
	if (M.policyd.pid > 0 && !M.policyd_told) {
		kill(M.policyd.pid, SIGTERM);
		M.policyd_told = true;
	}
}

static void on_sigchld(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	child_reap(&M);
	if (M.stopping) {
		stop_next();
		if (children_running(&M) == 0)
			event_base_loopexit(M.base, NULL);
	}
}

static void stop_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	log_warn("children still running at the shutdown deadline; killing them");
	kill_children_now();
	event_base_loopexit(M.base, NULL);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	if (M.stopping)
		return;
	M.stopping = true;
	log_info("signal %d: shutting down", (int)sig);
	master_notify("STOPPING=1");
	for (int i = 0; i < M.n_workers; i++)
		if (M.workers[i].restart)
			evtimer_del(M.workers[i].restart);
	if (M.policyd.restart)
		evtimer_del(M.policyd.restart);
	if (M.qmgr.restart)
		evtimer_del(M.qmgr.restart);
	for (int i = 0; i < M.n_workers; i++)
		if (M.workers[i].pid > 0)
			kill(M.workers[i].pid, SIGTERM);
	stop_next();
	if (children_running(&M) == 0) {
		event_base_loopexit(M.base, NULL);
		return;
	}
	M.stop_timer = evtimer_new(M.base, stop_deadline, NULL);
	struct timeval tv = { 15, 0 };
	evtimer_add(M.stop_timer, &tv);
}

static int reload_policyd(struct master *m, char *err, size_t errlen);

int master_reload(struct master *m, char *err, size_t errlen)
{
	master_notify("RELOADING=1");
	int rc = reload_policyd(m, err, errlen);
	master_notify("READY=1");
	return rc;
}

static int reload_policyd(struct master *m, char *err, size_t errlen)
{
	int fd = policy_connect(m->policy_sock);
	if (fd < 0) {
		snprintf(err, errlen, "cannot reach kumo-policyd: %s", strerror(errno));
		return -1;
	}
	cJSON *req = cJSON_CreateObject();
	cJSON_AddNumberToObject(req, "id", 1);
	cJSON_AddStringToObject(req, "op", "reload");
	cJSON *reply = NULL;
	char why[256];
	int rc = -1;
	if (frame_send_fd(fd, req, why, sizeof why) != 0 || frame_recv_fd(fd, &reply, 120000, why, sizeof why) != 0) {
		snprintf(err, errlen, "kumo-policyd did not answer the reload: %s", why);
	} else if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(reply, "error");
		snprintf(err, errlen, "%s", cJSON_IsString(e) ? e->valuestring : "reload failed");
	} else {
		rc = 0;
	}
	cJSON_Delete(req);
	cJSON_Delete(reply);
	close(fd);
	return rc;
}

cJSON *master_qmgr_request(struct master *m, const char *op, int timeout_ms, char *err, size_t errlen)
{
	int fd = policy_connect(m->qmgr_sock);
	if (fd < 0) {
		snprintf(err, errlen, "cannot reach kumo-qmgr: %s", strerror(errno));
		return NULL;
	}
	cJSON *req = cJSON_CreateObject();
	cJSON_AddNumberToObject(req, "id", 1);
	cJSON_AddStringToObject(req, "op", op);
	cJSON *reply = NULL;
	char why[256];
	if (frame_send_fd(fd, req, why, sizeof why) != 0 || frame_recv_fd(fd, &reply, timeout_ms, why, sizeof why) != 0) {
		snprintf(err, errlen, "kumo-qmgr did not answer: %s", why);
		reply = NULL;
	}
	cJSON_Delete(req);
	close(fd);
	return reply;
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	char err[1024];
	if (master_reload(&M, err, sizeof err) == 0)
		log_info("SIGHUP: policy %s reloaded", M.policy);
	else
		log_warn("SIGHUP: policy reload failed; the old policy keeps serving: %s", err);
}

static void daemonize(const char *pidfile)
{
	pid_t pid = fork();
	if (pid < 0)
		startup_fail("fork: %s", strerror(errno));
	if (pid > 0)
		_exit(0);
	setsid();
	int fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	log_use_syslog(1);
	if (pidfile) {
		char tmp[4200];
		snprintf(tmp, sizeof tmp, "%s.tmp.%d", pidfile, (int)getpid());
		FILE *f = fopen(tmp, "w");
		if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0 || rename(tmp, pidfile) != 0)
			log_warn("cannot write pid file %s: %s", pidfile, strerror(errno));
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "policy", required_argument, NULL, 'p' },
		{ "control-socket", required_argument, NULL, 'c' },
		{ "workers", required_argument, NULL, 'w' },
		{ "user", required_argument, NULL, 'u' },
		{ "daemonize", no_argument, NULL, 'd' },
		{ "pidfile", required_argument, NULL, 'P' },
		{ "validate", no_argument, NULL, 'V' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'v' },
		{ NULL, 0, NULL, 0 },
	};
	const char *policy = "/opt/kumomta/etc/policy/init.lua", *user = NULL, *pidfile = NULL;
	const char *control_path = NULL;
	bool validate = false, daemon_mode = false;
	long workers = sysconf(_SC_NPROCESSORS_ONLN);
	M.log_level = "info";
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'p': policy = optarg; break;
		case 'c': control_path = optarg; break;
		case 'w': {
			char *end;
			workers = strtol(optarg, &end, 10);
			if (*end || workers < 1 || workers > 256) {
				fprintf(stderr, "kumod: --workers must be a number from 1 to 256\n");
				return 1;
			}
			break;
		}
		case 'u': user = optarg; break;
		case 'd': daemon_mode = true; break;
		case 'P': pidfile = optarg; break;
		case 'V': validate = true; break;
		case 'l':
			if (log_level_parse(optarg) < 0) {
				fprintf(stderr, "kumod: --log-level must be fatal, warn, info or debug\n");
				return 1;
			}
			M.log_level = optarg;
			break;
		case 'h': usage(stdout); return 0;
		case 'v': printf("kumod %s\n", KUMOD_VERSION); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 1;
	}
	if (workers < 1)
		workers = 1;
	log_init("kumod");
	log_set_level((enum klog_level)log_level_parse(M.log_level));
	signal(SIGPIPE, SIG_IGN);
	if (access(policy, R_OK) != 0)
		startup_fail("cannot read policy %s: %s", policy, strerror(errno));
	struct stat pst;
	if (stat(policy, &pst) == 0 && (pst.st_mode & S_IWOTH))
		startup_fail("policy %s is writable by other users (mode %04o): refusing to run it", policy,
			     (unsigned)(pst.st_mode & 07777));
	if (getuid() == 0 && !user && !validate)
		startup_fail("started as root: --user USER is required (give --user root to really run as root)");
	if (user && strcmp(user, "root") == 0)
		log_warn("--user root: every process runs as root; use a dedicated user in production");
	M.policy = xstrdup(policy);
	M.bindir = helper_dir();
	if (user)
		resolve_user(user);
	char sockname[108];
	M.policy_listen_fd = helper_listen("policyd", sockname, sizeof sockname);
	if (M.policy_listen_fd < 0)
		startup_fail("cannot create the policy socket: %s", strerror(errno));
	M.policy_sock = xstrdup(sockname);
	M.qmgr_listen_fd = helper_listen("qmgr", sockname, sizeof sockname);
	if (M.qmgr_listen_fd < 0)
		startup_fail("cannot create the queue manager socket: %s", strerror(errno));
	M.qmgr_sock = xstrdup(sockname);

	/* block SIGCHLD etc. until the loop handles them */
	M.base = event_base_new();
	if (!M.base)
		startup_fail("cannot create the event loop");
	struct event *ev_chld = evsignal_new(M.base, SIGCHLD, on_sigchld, NULL);
	evsignal_add(ev_chld, NULL);

	M.policyd.kind = CHILD_POLICYD;
	child_spawn(&M, &M.policyd);
	cJSON *config = run_init();

	const char *data = spool_path(config, "data"), *meta = spool_path(config, "meta");
	if (!data || !meta)
		startup_fail("no spool defined: the policy's init must call kumo.define_spool for both 'data' and 'meta'");
	if (validate) {
		printf("policy %s: OK\n", policy);
		kill_children_now();
		cJSON_Delete(config);
		free(M.policy);
		free(M.bindir);
		free(M.policy_sock);
		event_free(ev_chld);
		event_base_free(M.base);
		return 0;
	}
	fetch_vault(config);
	const cJSON *sps = cJSON_GetObjectItemCaseSensitive(config, "spools");
	const cJSON *sp;
	cJSON_ArrayForEach(sp, sps) {
		const cJSON *kind = cJSON_GetObjectItemCaseSensitive(sp, "kind");
		if (cJSON_IsString(kind) && strcmp(kind->valuestring, "LocalDisk") != 0)
			log_warn("spool '%s': kind '%s' is stored as this relay's own file spool", sp->string,
				 kind->valuestring);
	}
	char err[1024];
	struct spool spool;
	if (spool_open(&spool, data, meta, err, sizeof err) != 0)
		startup_fail("%s", err);
	if (spool_lock(&spool, err, sizeof err) != 0)
		startup_fail("%s", err);
	log_info("spool: %s", spool_commit_mode(&spool));
	struct logrec lr;
	const cJSON *logs = cJSON_GetObjectItemCaseSensitive(config, "logs");
	if (logrec_open(&lr, logs, err, sizeof err) != 0)
		startup_fail("%s", err);
	const cJSON *listeners = cJSON_GetObjectItemCaseSensitive(config, "listeners");
	if (listeners_bind(listeners, &M.listen_fds, &M.n_listen, err, sizeof err) != 0)
		startup_fail("%s", err);
	if (M.n_listen == 0)
		log_warn("the policy starts no listener: nothing will be received");
	M.listen_names = cJSON_CreateArray();
	const cJSON *lt;
	cJSON_ArrayForEach(lt, listeners) {
		const cJSON *la = cJSON_GetObjectItemCaseSensitive(lt, "listen");
		cJSON_AddItemToArray(M.listen_names, cJSON_CreateString(cJSON_IsString(la) ? la->valuestring : "127.0.0.1:2025"));
	}
	/* default control socket: beside the meta spool, inside the relay's own tree */
	char default_ctl[4200];
	if (!control_path) {
		char tmp[4096];
		snprintf(tmp, sizeof tmp, "%s", meta);
		snprintf(default_ctl, sizeof default_ctl, "%s/kumod.sock", dirname(tmp));
		control_path = default_ctl;
	}
	if (control_open(&M, control_path, err, sizeof err) != 0)
		startup_fail("%s", err);

	struct spool_scan_stats st;
	if (spool_scan(&spool, scan_found, scan_warn, NULL, &st, err, sizeof err) != 0)
		startup_fail("%s", err);
	log_info("spool: recovered %zu message%s (%zu quarantined, %zu torn records or temporary files"
		 " removed; %zu segment%s kept, %zu finished ones removed)", st.found, st.found == 1 ? "" : "s",
		 st.quarantined, st.swept, st.segments, st.segments == 1 ? "" : "s", st.removed);

	if (user) {
		drop_privileges(user, data, meta, lr.dir);
		/* the workers will open the spool as this user: prove they can */
		struct spool probe;
		if (spool_open(&probe, data, meta, err, sizeof err) != 0)
			startup_fail("as user %s: %s", user, err);
		spool_close(&probe);
		if (lr.dir && access(lr.dir, W_OK | X_OK) != 0)
			startup_fail("as user %s: log directory %s is not writable: %s", user, lr.dir, strerror(errno));
	}
	logrec_close(&lr);

	prepare_tls(config);
	M.n_workers = (int)workers;
	M.config_fd = make_config_fd(config);
	cJSON_Delete(config);
	if (daemon_mode) {
		daemonize(pidfile);
		/* policyd was forked by the process that has just exited: it gets
		 * SIGTERM (parent death) and is not ours to restart; start ours */
		M.policyd.pid = 0;
		child_spawn(&M, &M.policyd);
		/* the lock (inherited with its descriptor) names the daemon's pid */
		char pid[32];
		int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
		if (ftruncate(spool.lock_fd, 0) != 0 || pwrite(spool.lock_fd, pid, (size_t)n, 0) != n)
			log_warn("cannot write the pid into %s/lock: %s", meta, strerror(errno));
	}

	M.n_workers = (int)workers;
	M.workers = xcalloc((size_t)M.n_workers, sizeof *M.workers);
	size_t counters_len = IPC_SHARED_LEN(M.n_workers, M.n_listen);
	M.counters_fd = memfd_create("kumod-counters", MFD_CLOEXEC);
	if (M.counters_fd < 0 || ftruncate(M.counters_fd, (off_t)counters_len) != 0)
		startup_fail("session counters: %s", strerror(errno));
	M.counters = mmap(NULL, counters_len, PROT_READ | PROT_WRITE, MAP_SHARED, M.counters_fd, 0);
	if (M.counters == MAP_FAILED)
		startup_fail("session counters: mmap: %s", strerror(errno));
	M.qmgr.kind = CHILD_QMGR;
	child_spawn(&M, &M.qmgr);
	for (int i = 0; i < M.n_workers; i++) {
		M.workers[i].kind = CHILD_SMTPD;
		M.workers[i].index = i;
		child_spawn(&M, &M.workers[i]);
	}
	log_info("kumod %s: %d worker%s, %zu listener%s", KUMOD_VERSION, M.n_workers,
		 M.n_workers == 1 ? "" : "s", M.n_listen, M.n_listen == 1 ? "" : "s");
	if (master_notify("READY=1") != 0)
		log_warn("cannot notify systemd ($NOTIFY_SOCKET) that kumod is ready");

	struct event *ev_term = evsignal_new(M.base, SIGTERM, on_stop, NULL);
	struct event *ev_int = evsignal_new(M.base, SIGINT, on_stop, NULL);
	struct event *ev_hup = evsignal_new(M.base, SIGHUP, on_hup, NULL);
	evsignal_add(ev_term, NULL);
	evsignal_add(ev_int, NULL);
	evsignal_add(ev_hup, NULL);
	event_base_dispatch(M.base);

	for (size_t i = 0; i < M.n_listen; i++)
		close(M.listen_fds[i]);
	control_close(&M);
	cJSON_Delete(M.listen_names);
	log_info("stopped");
	spool_close(&spool);
	return 0;
}
