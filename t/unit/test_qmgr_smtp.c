/* Check suite for qmgr/qmgr_smtp.c: the outbound SMTP client against the
 * sink (t/tools/sink.c, found in $KUMO_TOOLS, default build/t), started
 * per test on a free loopback port in a directory under one temp dir that
 * the runner process makes and removes.  The sink dies with the test
 * process (PR_SET_PDEATHSIG) if a test fails or times out; a passing test
 * stops it with SIGTERM and expects exit status 0 (so a sanitizer report
 * from the sink fails the test).
 *
 * Tables: tls_modes (parsing), sessions (connection set-up: TLS modes,
 * HELO fallback, refused banners), txns (transaction outcomes, each row run
 * against a pipelining and a lock-step sink), stuffing (data round trips).
 * The rest are single cases: timeouts, idle, connection loss, big data. */
#include "qmgr/qmgr_smtp.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define RUN_SECS 30.0 /* per wait for the client's callbacks */
#define MAX_MSGS 8

static char top_dir[64]; /* made by the runner process before the tests fork */

static void top_setup(void)
{
	snprintf(top_dir, sizeof top_dir, "/tmp/kumo-qsmtp-XXXXXX");
	if (!mkdtemp(top_dir)) {
		perror("mkdtemp");
		exit(1);
	}
}

static void top_teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", top_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", top_dir);
}

/* ---- the sink ------------------------------------------------------------ */

struct sink {
	pid_t pid;
	int port;
	char dir[PATH_MAX];
};

static void sink_start(struct sink *k, const char *const *args)
{
	snprintf(k->dir, sizeof k->dir, "%s/sink-XXXXXX", top_dir);
	ck_assert_ptr_nonnull(mkdtemp(k->dir));
	const char *tools = getenv("KUMO_TOOLS");
	char path[PATH_MAX];
	int pl = snprintf(path, sizeof path, "%s/sink", tools && *tools ? tools : "build/t");
	ck_assert(pl > 0 && (size_t)pl < sizeof path);
	ck_assert_msg(access(path, X_OK) == 0, "%s: %s (set KUMO_TOOLS)", path, strerror(errno));
	const char *argv[32] = { path, "-p", "0", "-d", k->dir };
	size_t n = 5;
	for (size_t i = 0; args && args[i]; i++) {
		ck_assert(n < 31);
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	pid_t parent = getpid();
	k->pid = fork();
	ck_assert_int_ge(k->pid, 0);
	if (k->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(1);
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execv(path, (char *const *)argv);
		_exit(127);
	}
	close(fds[1]);
	char buf[64];
	size_t got = 0;
	while (got < sizeof buf - 1 && !memchr(buf, '\n', got)) {
		struct pollfd p = { fds[0], POLLIN, 0 };
		ck_assert_msg(poll(&p, 1, 10000) == 1, "sink did not say ready");
		ssize_t r = read(fds[0], buf + got, sizeof buf - 1 - got);
		ck_assert_msg(r > 0, "sink exited before ready");
		got += (size_t)r;
	}
	buf[got] = '\0';
	close(fds[0]);
	ck_assert_msg(sscanf(buf, "ready %d", &k->port) == 1 && k->port > 0, "sink said: %s", buf);
}

static void sink_stop(struct sink *k)
{
	int st;
	ck_assert_int_eq(kill(k->pid, SIGTERM), 0);
	ck_assert_int_eq(waitpid(k->pid, &st, 0), k->pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "sink ended with status 0x%x", st);
}

/* The whole of DIR/name (NUL-terminated; *len without it), or NULL. */
static char *slurp(const struct sink *k, const char *name, size_t *len)
{
	char path[PATH_MAX + 64];
	int pl = snprintf(path, sizeof path, "%s/%s", k->dir, name);
	ck_assert(pl > 0 && (size_t)pl < sizeof path);
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	size_t r;
	while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
		n += r;
		if (cap - n - 1 == 0)
			buf = realloc(buf, cap *= 2);
	}
	fclose(f);
	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
}

static int count_eml(const struct sink *k)
{
	DIR *d = opendir(k->dir);
	ck_assert_ptr_nonnull(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		if (l > 4 && strcmp(e->d_name + l - 4, ".eml") == 0)
			n++;
	}
	closedir(d);
	return n;
}

static int connections(const struct sink *k)
{
	char *s = slurp(k, "connections", NULL);
	ck_assert_ptr_nonnull(s);
	int n = atoi(s);
	free(s);
	return n;
}

/* Splits a stored file at the end of the X-Sink- lines. */
static const char *eml_body(const char *eml)
{
	const char *p = eml;
	while (strncmp(p, "X-Sink-", 7) == 0) {
		const char *nl = strstr(p, "\r\n");
		ck_assert_ptr_nonnull(nl);
		p = nl + 2;
	}
	return p;
}

/* The comma-separated X-Sink-Rcpt-To values of a stored file. */
static void eml_rcpts(const char *eml, char *out, size_t outlen)
{
	out[0] = '\0';
	size_t n = 0;
	for (const char *p = strstr(eml, "X-Sink-Rcpt-To: "); p; p = strstr(p + 1, "X-Sink-Rcpt-To: ")) {
		const char *v = p + 16, *e = strstr(v, "\r\n");
		n += (size_t)snprintf(out + n, outlen - n, "%s%.*s", n ? "," : "", (int)(e - v), v);
	}
}

/* ---- driving the client ---------------------------------------------------- */

struct tctx {
	struct event_base *base;
	struct event *deadline;
	struct smtp_client *c;
	SSL_CTX *verify_ctx, *insecure_ctx;
	struct smtp_msg msgs[MAX_MSGS];
	size_t n_msgs, next;
	bool stay_idle;        /* ready: send nothing */
	bool timed_out, finished;
	bool ready;
	bool failed;
	int fail_code;
	char fail_text[600];
	bool permanent;
	struct smtp_result res[MAX_MSGS];
	size_t n_res;
	double t_sent, t_done; /* of the last transaction */
	char tls_version[64], tls_cipher[128];
	unsigned ext;
	size_t max_size;
	bool esmtp;
	int send_when_busy;    /* smtp_client_send's answer while a transaction runs */
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void finish(struct tctx *t, bool quit)
{
	if (quit)
		smtp_client_quit(t->c);
	else
		smtp_client_free(t->c);
	t->c = NULL;
	t->finished = true;
}

static void send_next(struct tctx *t)
{
	if (t->next >= t->n_msgs) {
		finish(t, true);
		return;
	}
	t->t_sent = now();
	ck_assert_int_eq(smtp_client_send(t->c, &t->msgs[t->next++]), 0);
	t->send_when_busy = smtp_client_send(t->c, &t->msgs[0]);
}

static void on_ready(struct smtp_client *c, void *arg)
{
	struct tctx *t = arg;
	ck_assert_ptr_eq(c, t->c);
	ck_assert(!t->ready);
	t->ready = true;
	ck_assert(smtp_client_idle(c));
	const char *v = smtp_client_tls_version(c), *ci = smtp_client_tls_cipher(c);
	snprintf(t->tls_version, sizeof t->tls_version, "%s", v ? v : "");
	snprintf(t->tls_cipher, sizeof t->tls_cipher, "%s", ci ? ci : "");
	t->ext = smtp_client_extensions(c);
	t->max_size = smtp_client_max_size(c);
	t->esmtp = smtp_client_esmtp(c);
	if (!t->stay_idle)
		send_next(t);
}

static void on_failed(struct smtp_client *c, const struct smtp_reply *why, bool permanent, void *arg)
{
	struct tctx *t = arg;
	ck_assert_ptr_eq(c, t->c);
	ck_assert(!t->failed);
	t->failed = true;
	t->fail_code = why->code;
	snprintf(t->fail_text, sizeof t->fail_text, "%s", why->text);
	t->permanent = permanent;
	ck_assert(!smtp_client_idle(c));
	ck_assert_int_eq(smtp_client_send(c, &t->msgs[0]), -1);
	finish(t, true); /* polite where the session still allows it */
}

static void on_done(struct smtp_client *c, const struct smtp_msg *m, struct smtp_result *r, void *arg)
{
	struct tctx *t = arg;
	ck_assert_ptr_eq(c, t->c);
	ck_assert_ptr_eq(m, &t->msgs[t->next - 1]);
	ck_assert_uint_lt(t->n_res, MAX_MSGS);
	t->t_done = now();
	t->res[t->n_res++] = *r; /* keep it */
	memset(r, 0, sizeof *r);
	if (t->res[t->n_res - 1].connection_failed)
		finish(t, false);
	else
		send_next(t);
}

static const struct smtp_client_cbs cbs = { on_ready, on_failed, on_done };

static void on_deadline(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	struct tctx *t = arg;
	t->timed_out = true;
}

static void tctx_init(struct tctx *t)
{
	memset(t, 0, sizeof *t);
	t->base = event_base_new();
	ck_assert_ptr_nonnull(t->base);
	t->deadline = evtimer_new(t->base, on_deadline, t);
	char err[256];
	t->verify_ctx = smtp_client_ssl_ctx(true, err, sizeof err);
	ck_assert_msg(t->verify_ctx != NULL, "%s", err);
	t->insecure_ctx = smtp_client_ssl_ctx(false, err, sizeof err);
	ck_assert_msg(t->insecure_ctx != NULL, "%s", err);
	t->send_when_busy = 99;
}

static void tctx_free(struct tctx *t)
{
	for (size_t i = 0; i < t->n_res; i++)
		smtp_result_clear(&t->res[i]);
	smtp_client_free(t->c);
	event_free(t->deadline);
	event_base_free(t->base);
	SSL_CTX_free(t->verify_ctx);
	SSL_CTX_free(t->insecure_ctx);
}

static void test_timeouts(struct smtp_timeouts *to)
{
	smtp_timeouts_default(to);
	to->connect = 10;
	to->idle = 30;
}

static void start_client(struct tctx *t, int port, enum tls_mode tls, const struct smtp_timeouts *to)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct smtp_client_opts o = { .ehlo_name = "client.test", .peer_name = "localhost", .tls = tls };
	if (to)
		o.timeouts = *to;
	else
		test_timeouts(&o.timeouts);
	t->c = smtp_client_connect(t->base, (struct sockaddr *)&sin, sizeof sin, &o, t->verify_ctx,
				   t->insecure_ctx, &cbs, t);
	ck_assert_ptr_nonnull(t->c);
	char peer[32];
	snprintf(peer, sizeof peer, "127.0.0.1:%d", port);
	ck_assert_str_eq(smtp_client_peer(t->c), peer);
	ck_assert(!smtp_client_idle(t->c));
}

/* Runs the loop until the script finishes. */
static void run_script(struct tctx *t)
{
	struct timeval tv = { (time_t)RUN_SECS, 0 };
	evtimer_add(t->deadline, &tv);
	while (!t->finished && !t->timed_out)
		event_base_loop(t->base, EVLOOP_ONCE);
	ck_assert_msg(!t->timed_out, "no outcome within %.0f s", RUN_SECS);
	event_del(t->deadline);
}

/* ... then until a quitting client is gone (no events left). */
static void run(struct tctx *t)
{
	run_script(t);
	event_base_dispatch(t->base);
}

static void add_msg(struct tctx *t, const char *sender, const char *const *rcpts, size_t n, const char *data,
		    size_t len)
{
	ck_assert_uint_lt(t->n_msgs, MAX_MSGS);
	t->msgs[t->n_msgs++] = (struct smtp_msg){ sender, rcpts, n, data, len };
}

/* data as the sink must store it: CRLF appended unless it ends so (or is empty) */
static char *stored_form(const char *data, size_t len, size_t *out_len)
{
	bool crlf = len == 0 || (len >= 2 && data[len - 2] == '\r' && data[len - 1] == '\n');
	char *s = malloc(len + 3);
	memcpy(s, data, len);
	if (!crlf) {
		s[len++] = '\r';
		s[len++] = '\n';
	}
	s[len] = '\0';
	*out_len = len;
	return s;
}

static void check_stored(const struct sink *k, int seq, const char *data, size_t len)
{
	char name[32];
	snprintf(name, sizeof name, "%d.eml", seq);
	size_t n;
	char *eml = slurp(k, name, &n);
	ck_assert_msg(eml != NULL, "%s/%s missing", k->dir, name);
	size_t want_len;
	char *want = stored_form(data, len, &want_len);
	const char *body = eml_body(eml);
	size_t body_len = n - (size_t)(body - eml);
	ck_assert_msg(body_len == want_len && memcmp(body, want, want_len) == 0,
		      "%s: stored %zu bytes, want %zu: [%.200s]", name, body_len, want_len, body);
	free(want);
	free(eml);
}

/* ---- tls_mode_parse --------------------------------------------------------- */

static const struct {
	const char *in;
	int rc;
	enum tls_mode mode;
} tls_modes[] = {
	{ "Opportunistic", 0, TLS_OPPORTUNISTIC },
	{ "OpportunisticInsecure", 0, TLS_OPPORTUNISTIC_INSECURE },
	{ "Required", 0, TLS_REQUIRED },
	{ "RequiredInsecure", 0, TLS_REQUIRED_INSECURE },
	{ "Disabled", 0, TLS_DISABLED },
	{ "opportunistic", -1, 0 },
	{ "Optional", -1, 0 },
	{ "", -1, 0 },
	{ NULL, -1, 0 },
};

START_TEST(tls_mode_row)
{
	enum tls_mode m = TLS_DISABLED;
	ck_assert_int_eq(tls_mode_parse(tls_modes[_i].in, &m), tls_modes[_i].rc);
	if (tls_modes[_i].rc == 0) {
		ck_assert_int_eq(m, tls_modes[_i].mode);
		ck_assert_str_eq(tls_mode_name(m), tls_modes[_i].in);
	}
}
END_TEST

START_TEST(defaults_and_msg_check)
{
	struct smtp_timeouts t;
	smtp_timeouts_default(&t);
	ck_assert(t.connect == 60 && t.banner == 60 && t.ehlo == 300 && t.mail_from == 300 && t.rcpt_to == 300 &&
		  t.data == 300 && t.data_dot == 300 && t.rset == 5 && t.idle == 5 && t.starttls == 5);
	static const struct {
		const char *sender, *rcpt;
		int rc;
	} rows[] = {
		{ "a@x", "b@y", 0 },
		{ "", "b@y", 0 },
		{ "a@x", "b@y\r\nRSET", -1 },
		{ "a@x\n", "b@y", -1 },
		{ "a@x", "b@y> NOTIFY=NEVER", -1 },
		{ NULL, "b@y", -1 },
	};
	char err[128];
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		const char *r[] = { rows[i].rcpt };
		struct smtp_msg m = { rows[i].sender, r, 1, "x", 1 };
		ck_assert_msg(smtp_msg_check(&m, err, sizeof err) == rows[i].rc, "row %zu", i);
	}
	const char *r[] = { "b@y" };
	struct smtp_msg none = { "a@x", r, 0, "", 0 };
	ck_assert_int_eq(smtp_msg_check(&none, err, sizeof err), -1);
	char *long_addr = malloc(SMTP_ADDR_MAX + 2);
	memset(long_addr, 'a', SMTP_ADDR_MAX + 1);
	long_addr[SMTP_ADDR_MAX + 1] = '\0';
	struct smtp_msg big = { long_addr, r, 1, "", 0 };
	ck_assert_int_eq(smtp_msg_check(&big, err, sizeof err), -1);
	free(long_addr);
	smtp_result_clear(NULL);
	smtp_client_free(NULL);
}
END_TEST

/* ---- sessions: set-up outcomes ------------------------------------------------- */

struct session_row {
	const char *name;
	const char *args[6]; /* sink arguments */
	enum tls_mode tls;
	bool ready;          /* else failed() */
	int code;            /* failed: code */
	const char *text;    /* failed: substring of the reason */
	bool permanent;
	bool tls_used;       /* ready: TLS in use (and in the stored file) */
	bool esmtp;
	const char *logged;  /* substring of the sink log, or NULL */
	const char *not_logged;
	double banner;       /* banner timeout, 0: the test default */
};

static const struct session_row sessions[] = {
	{ "OpportunisticInsecure uses STARTTLS", { "--tls-self-signed" }, TLS_OPPORTUNISTIC_INSECURE, true, 0, NULL,
	  false, true, true, "1 STARTTLS", NULL, 0 },
	{ "RequiredInsecure uses STARTTLS", { "--tls-self-signed" }, TLS_REQUIRED_INSECURE, true, 0, NULL, false,
	  true, true, "1 STARTTLS", NULL, 0 },
	{ "Opportunistic refuses a self-signed certificate", { "--tls-self-signed" }, TLS_OPPORTUNISTIC, false, 421,
	  "certificate verify failed", false, false, true, "1 STARTTLS", "MAIL", 0 },
	{ "Required refuses a self-signed certificate", { "--tls-self-signed" }, TLS_REQUIRED, false, 421,
	  "certificate verify failed", false, false, true, "1 STARTTLS", "MAIL", 0 },
	{ "Required without STARTTLS offered", { NULL }, TLS_REQUIRED, false, 421, "did not offer STARTTLS", false,
	  false, true, "1 QUIT", "MAIL", 0 },
	{ "RequiredInsecure without STARTTLS offered", { NULL }, TLS_REQUIRED_INSECURE, false, 421,
	  "4.7.10 enable_tls is RequiredInsecure", false, false, true, NULL, "MAIL", 0 },
	{ "Opportunistic without STARTTLS: plain text", { NULL }, TLS_OPPORTUNISTIC, true, 0, NULL, false, false,
	  true, NULL, "STARTTLS", 0 },
	{ "Disabled never uses STARTTLS", { "--tls-self-signed" }, TLS_DISABLED, true, 0, NULL, false, false, true,
	  NULL, "STARTTLS", 0 },
	{ "HELO when EHLO gets 500", { "--rule", "EHLO:0:500 5.5.1 no EHLO here", "--tls-self-signed", 0 },
	  TLS_OPPORTUNISTIC, true, 0, NULL, false, false, false, "1 HELO client.test", "STARTTLS", 0 },
	{ "EHLO and HELO refused: permanent", { "--rule", "EHLO:0:500 5.5.1 no", "--rule", "HELO:0:550 5.7.1 go away", 0 },
	  TLS_OPPORTUNISTIC, false, 550, "5.7.1 go away", true, false, false, "1 QUIT", "MAIL", 0 },
	{ "EHLO 451: transient", { "--rule", "EHLO:0:451 4.3.0 busy" }, TLS_OPPORTUNISTIC, false, 451, "4.3.0 busy",
	  false, false, false, "1 QUIT", "HELO", 0 },
	{ "banner 554: permanent, then QUIT", { "--rule", "CONNECT:0:554 5.7.1 no service" }, TLS_OPPORTUNISTIC,
	  false, 554, "5.7.1 no service", true, false, false, "1 QUIT", "EHLO", 0 },
	{ "banner 421: transient", { "--rule", "CONNECT:0:421 4.3.2 busy" }, TLS_OPPORTUNISTIC, false, 421,
	  "4.3.2 busy", false, false, false, NULL, "EHLO", 0 },
	{ "closed before the banner", { "--rule", "CONNECT:0:close" }, TLS_OPPORTUNISTIC, false, 421,
	  "connection closed by peer before the banner", false, false, false, NULL, "EHLO", 0 },
	{ "STARTTLS refused", { "--tls-self-signed", "--rule", "STARTTLS:0:454 4.7.0 TLS not available", 0 },
	  TLS_OPPORTUNISTIC_INSECURE, false, 454, "4.7.0 TLS not available", false, false, true, "1 QUIT", "MAIL", 0 },
	{ "banner that never ends times out", { "--rule", "CONNECT:0:220-sink.test first line of two", 0 },
	  TLS_OPPORTUNISTIC, false, 421, "4.4.2 timeout waiting for banner from 127.0.0.1:", false, false, false,
	  NULL, "EHLO", 0.5 },
};

START_TEST(session_row)
{
	const struct session_row *row = &sessions[_i];
	struct sink k;
	sink_start(&k, row->args);
	struct tctx t;
	tctx_init(&t);
	static const char *const rcpt[] = { "rcpt@example.com" };
	static const char data[] = "Subject: session\r\n\r\nhello\r\n";
	add_msg(&t, "sender@example.com", rcpt, 1, data, sizeof data - 1);
	struct smtp_timeouts to;
	test_timeouts(&to);
	if (row->banner)
		to.banner = row->banner;
	start_client(&t, k.port, row->tls, &to);
	run(&t);
	ck_assert_msg(t.ready == row->ready, "%s: ready %d, failed %d %d %s", row->name, t.ready, t.failed,
		      t.fail_code, t.fail_text);
	if (row->ready) {
		ck_assert_uint_eq(t.n_res, 1);
		ck_assert_int_eq(t.res[0].final.code, 250);
		ck_assert_str_eq(t.res[0].command, "data_dot");
		ck_assert_int_eq(t.esmtp, row->esmtp);
		char *eml = slurp(&k, "1.eml", NULL);
		ck_assert_ptr_nonnull(eml);
		if (row->tls_used) {
			ck_assert_msg(strncmp(t.tls_version, "TLSv1.", 6) == 0, "version %s", t.tls_version);
			ck_assert(t.tls_cipher[0] != '\0');
			ck_assert(t.ext & SMTP_EXT_STARTTLS);
			char line[256];
			snprintf(line, sizeof line, "X-Sink-TLS: %s ", t.tls_version);
			ck_assert_msg(strstr(eml, line) != NULL, "%s", eml);
		} else {
			ck_assert_str_eq(t.tls_version, "");
			ck_assert_ptr_null(strstr(eml, "X-Sink-TLS:"));
		}
		if (row->esmtp) {
			ck_assert(t.ext & SMTP_EXT_PIPELINING);
			ck_assert(t.ext & SMTP_EXT_SIZE);
			ck_assert(t.ext & SMTP_EXT_8BITMIME);
			ck_assert_uint_eq(t.max_size, 67108864);
		} else {
			ck_assert_uint_eq(t.ext, 0);
		}
		free(eml);
	} else {
		ck_assert_msg(t.failed, "%s: no failed()", row->name);
		ck_assert_int_eq(t.fail_code, row->code);
		ck_assert_msg(strstr(t.fail_text, row->text) != NULL, "%s: reason '%s'", row->name, t.fail_text);
		ck_assert_int_eq(t.permanent, row->permanent);
		ck_assert_int_eq(count_eml(&k), 0);
	}
	char *log = slurp(&k, "log", NULL);
	ck_assert_ptr_nonnull(log);
	if (row->logged)
		ck_assert_msg(strstr(log, row->logged) != NULL, "%s: log lacks '%s':\n%s", row->name, row->logged, log);
	if (row->not_logged)
		ck_assert_msg(strstr(log, row->not_logged) == NULL, "%s: log has '%s':\n%s", row->name,
			      row->not_logged, log);
	free(log);
	ck_assert_int_eq(connections(&k), 1);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

/* ---- transactions ---------------------------------------------------------------- */

#define D1 "Subject: one\r\nFrom: <s@example.com>\r\n\r\nHello\r\n"
#define D2 "Subject: two\r\n\r\n.dotted\r\nno final CRLF"

struct txn_want {
	int code;
	const char *command;
	const char *rcpt_pipe; /* comma-separated rcpt[] codes, pipelined */
	const char *rcpt_lock; /* the same in lock-step, NULL: as rcpt_pipe */
};

struct txn_row {
	const char *name;
	const char *rules[4];
	struct {
		const char *rcpts; /* comma-separated */
		const char *data;
	} msgs[3];
	struct txn_want want[3];
	const char *stored[3]; /* the stored files' recipients, in order */
	bool rset_pipe, rset_lock; /* RSET appears in the sink log */
};

static const struct txn_row txns[] = {
	{ "two of three recipients accepted",
	  { "RCPT:0:550 5.1.1 no such user:bad@" },
	  { { "a@x.test,bad@x.test,c@x.test", D1 } },
	  { { 250, "data_dot", "250,550,250", NULL } },
	  { "a@x.test,c@x.test" },
	  false, false },
	{ "451 at the end of data, then success on the same connection",
	  { "DOT:1:451 4.3.0 try later" },
	  { { "a@x.test", D1 }, { "b@x.test", D2 } },
	  { { 451, "data_dot", "250", NULL }, { 250, "data_dot", "250", NULL } },
	  { "b@x.test" },
	  false, false },
	{ "550 to MAIL, then success",
	  { "MAIL:1:550 5.7.1 sender rejected" },
	  { { "a@x.test", D1 }, { "b@x.test", D1 } },
	  { { 550, "MAIL FROM", "503", "0" }, { 250, "data_dot", "250", NULL } },
	  { "b@x.test" },
	  false, false },
	{ "every recipient refused, then RSET and success",
	  { "RCPT:0:550 5.1.1 no such user:bad@" },
	  { { "bad@x.test,bad@y.test", D1 }, { "a@x.test", D1 } },
	  { { 550, "RCPT TO", "550,550", NULL }, { 250, "data_dot", "250", NULL } },
	  { "a@x.test" },
	  true, true },
	{ "every recipient refused and DATA answered 354 anyway: a lone dot",
	  { "RCPT:0:550 5.1.1 no such user:bad@", "DATA:1:354 go ahead" },
	  { { "bad@x.test", D1 }, { "a@x.test", D2 } },
	  { { 550, "RCPT TO", "550", NULL }, { 250, "data_dot", "250", NULL } },
	  { "a@x.test" },
	  false, true },
	{ "DATA refused, then RSET and success",
	  { "DATA:1:451 4.3.2 not now" },
	  { { "a@x.test", D1 }, { "b@x.test", D1 } },
	  { { 451, "DATA", "250", NULL }, { 250, "data_dot", "250", NULL } },
	  { "b@x.test" },
	  true, true },
	{ "three messages on one connection, one empty",
	  { NULL },
	  { { "a@x.test", D1 }, { "b@x.test", "" }, { "c@x.test,d@x.test", D2 } },
	  { { 250, "data_dot", "250", NULL }, { 250, "data_dot", "250", NULL }, { 250, "data_dot", "250,250", NULL } },
	  { "a@x.test", "b@x.test", "c@x.test,d@x.test" },
	  false, false },
};

static size_t split(const char *s, char *buf, size_t buflen, const char **out, size_t max)
{
	snprintf(buf, buflen, "%s", s);
	size_t n = 0;
	for (char *p = strtok(buf, ","); p && n < max; p = strtok(NULL, ","))
		out[n++] = p;
	return n;
}

START_TEST(txn_row)
{
	const struct txn_row *row = &txns[_i / 2];
	bool pipelining = _i % 2 == 0;
	const char *args[12];
	size_t na = 0;
	args[na++] = pipelining ? "--pipelining" : "--no-pipelining";
	for (size_t i = 0; i < 4 && row->rules[i]; i++) {
		args[na++] = "--rule";
		args[na++] = row->rules[i];
	}
	args[na] = NULL;
	struct sink k;
	sink_start(&k, args);
	struct tctx t;
	tctx_init(&t);
	char rbuf[3][256];
	const char *rcpts[3][8];
	size_t n_msgs = 0;
	for (size_t i = 0; i < 3 && row->msgs[i].rcpts; i++, n_msgs++) {
		size_t n = split(row->msgs[i].rcpts, rbuf[i], sizeof rbuf[i], rcpts[i], 8);
		add_msg(&t, "sender@example.com", rcpts[i], n, row->msgs[i].data, strlen(row->msgs[i].data));
	}
	start_client(&t, k.port, TLS_OPPORTUNISTIC, NULL);
	run(&t);
	ck_assert_msg(t.ready, "%s: not ready: %d %s", row->name, t.fail_code, t.fail_text);
	ck_assert_int_eq(t.send_when_busy, -1);
	ck_assert_int_eq((t.ext & SMTP_EXT_PIPELINING) != 0, pipelining);
	ck_assert_uint_eq(t.n_res, n_msgs);
	for (size_t i = 0; i < n_msgs; i++) {
		const struct txn_want *w = &row->want[i];
		const struct smtp_result *r = &t.res[i];
		ck_assert_msg(r->final.code == w->code && strcmp(r->command, w->command) == 0,
			      "%s (%s) msg %zu: %d %s '%s', want %d %s", row->name, pipelining ? "pipelined" : "lock-step",
			      i, r->final.code, r->command, r->final.text, w->code, w->command);
		ck_assert(!r->connection_failed);
		ck_assert_ptr_nonnull(r->final.text);
		char got[128] = "";
		size_t n = 0;
		for (size_t j = 0; j < r->n_rcpt; j++)
			n += (size_t)snprintf(got + n, sizeof got - n, "%s%d", j ? "," : "", r->rcpt[j].code);
		const char *want = pipelining || !w->rcpt_lock ? w->rcpt_pipe : w->rcpt_lock;
		ck_assert_msg(strcmp(got, want) == 0, "%s msg %zu: rcpt codes %s, want %s", row->name, i, got, want);
	}
	size_t stored = 0;
	while (stored < 3 && row->stored[stored])
		stored++;
	ck_assert_int_eq(count_eml(&k), (int)stored);
	int seq = 1;
	for (size_t i = 0; i < n_msgs; i++) {
		if (t.res[i].final.code != 250)
			continue;
		char name[32], got[256];
		snprintf(name, sizeof name, "%d.eml", seq);
		char *eml = slurp(&k, name, NULL);
		ck_assert_ptr_nonnull(eml);
		ck_assert_msg(strncmp(eml, "X-Sink-Mail-From: sender@example.com\r\n", 38) == 0, "%s", eml);
		ck_assert_ptr_nonnull(strstr(eml, "X-Sink-Peer: 127.0.0.1:"));
		eml_rcpts(eml, got, sizeof got);
		ck_assert_str_eq(got, row->stored[seq - 1]);
		free(eml);
		check_stored(&k, seq, row->msgs[i].data, strlen(row->msgs[i].data));
		seq++;
	}
	ck_assert_int_eq(connections(&k), 1);
	char *log = slurp(&k, "log", NULL);
	ck_assert_ptr_nonnull(log);
	bool rset = strstr(log, " RSET") != NULL;
	ck_assert_msg(rset == (pipelining ? row->rset_pipe : row->rset_lock), "%s: RSET %d in\n%s", row->name,
		      rset, log);
	/* pipelined: MAIL arrived with more behind it; lock-step: never */
	const char *mail = strstr(log, "MAIL FROM:<sender@example.com>");
	ck_assert_ptr_nonnull(mail);
	const char *eol = strchr(mail, '\n');
	bool more = eol - mail > 2 && eol[-1] == '+' && eol[-2] == ' ';
	if (pipelining)
		ck_assert_msg(more, "not pipelined:\n%s", log);
	else
		ck_assert_msg(strstr(log, " +\n") == NULL, "pipelined to a lock-step server:\n%s", log);
	ck_assert_msg(strstr(log, " SIZE=") != NULL, "no SIZE parameter:\n%s", log);
	/* the first message's size, exactly */
	char want[64];
	snprintf(want, sizeof want, "MAIL FROM:<sender@example.com> SIZE=%zu\n", strlen(row->msgs[0].data));
	ck_assert_msg(strncmp(mail, want, strlen(want) - 1) == 0 && (mail[strlen(want) - 1] == '\n' ||
		      mail[strlen(want) - 1] == ' '), "want %s in\n%s", want, log);
	free(log);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

/* ---- dot-stuffing round trips --------------------------------------------------------- */

static const char *const stuffing[] = {
	"From: a@x.test\r\nTo: b@y.test\r\nSubject: headers intact\r\n\r\nbody\r\n",
	"Subject: dots\r\n\r\n.line\r\n..\r\n.\r\nend\r\n",
	".first line starts with a dot\r\nsecond\r\n",
	"line\r\n.\r\nafter a lone dot, no final CRLF",
	"no newline at all",
	".",
	"..",
	"ends with a bare CR\r",
	"ends with a bare LF\n",
	"",
	"\r\n.\r\n",
	"Subject: 8bit\r\n\r\ncaf\xc3\xa9\r\n",
};

START_TEST(stuffing_round_trip)
{
	bool pipelining = _i == 0;
	const char *args[] = { pipelining ? "--pipelining" : "--no-pipelining", NULL };
	struct sink k;
	sink_start(&k, args);
	struct tctx t;
	tctx_init(&t);
	static const char *const rcpt[] = { "r@example.com" };
	size_t n = sizeof stuffing / sizeof stuffing[0];
	ck_assert_uint_le(n, MAX_MSGS * 2);
	/* two connections' worth: MAX_MSGS per client */
	for (size_t base = 0; base < n; base += MAX_MSGS) {
		if (base) {
			tctx_free(&t);
			tctx_init(&t);
		}
		for (size_t i = base; i < n && i < base + MAX_MSGS; i++)
			add_msg(&t, "", rcpt, 1, stuffing[i], strlen(stuffing[i]));
		start_client(&t, k.port, TLS_DISABLED, NULL);
		run(&t);
		ck_assert(t.ready);
		ck_assert_uint_eq(t.n_res, t.n_msgs);
		for (size_t i = 0; i < t.n_res; i++)
			ck_assert_msg(t.res[i].final.code == 250, "msg %zu: %d %s", base + i, t.res[i].final.code,
				      t.res[i].final.text);
	}
	for (size_t i = 0; i < n; i++)
		check_stored(&k, (int)i + 1, stuffing[i], strlen(stuffing[i]));
	char *eml = slurp(&k, "1.eml", NULL);
	ck_assert_msg(strncmp(eml, "X-Sink-Mail-From: \r\n", 20) == 0, "null sender: %s", eml);
	free(eml);
	char *log = slurp(&k, "log", NULL);
	ck_assert_msg(strstr(log, "BODY=8BITMIME") != NULL, "8-bit data without BODY=8BITMIME:\n%s", log);
	ck_assert_msg(strstr(log, "MAIL FROM:<> SIZE=") != NULL, "%s", log);
	free(log);
	ck_assert_int_eq(connections(&k), 2);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

/* ---- big data, plain and under TLS: chunked writes, stuffing across chunks ---- */

START_TEST(big_message)
{
	bool tls = _i == 1;
	const char *args[] = { tls ? "--tls-self-signed" : "--pipelining", NULL };
	struct sink k;
	sink_start(&k, args);
	struct tctx t;
	tctx_init(&t);
	size_t cap = 3 * 1024 * 1024 + 50000, len = 0;
	char *data = malloc(cap);
	for (unsigned i = 0; len < 3 * 1024 * 1024; i++)
		len += (size_t)snprintf(data + len, cap - len, "%s%07u some text to fill the line%s",
					i % 3 == 0 ? "." : "", i, i % 1000 == 999 ? "\r\n.\r\n" : "\r\n");
	/* a long line without CRLF spanning several 16 KB chunks, then the end */
	memset(data + len, '.', 40000);
	len += 40000;
	static const char *const rcpt[] = { "big@example.com" };
	add_msg(&t, "s@example.com", rcpt, 1, data, len);
	start_client(&t, k.port, tls ? TLS_OPPORTUNISTIC_INSECURE : TLS_OPPORTUNISTIC, NULL);
	run(&t);
	ck_assert(t.ready);
	ck_assert_uint_eq(t.n_res, 1);
	ck_assert_msg(t.res[0].final.code == 250, "%d %s", t.res[0].final.code, t.res[0].final.text);
	ck_assert_int_eq(tls, t.tls_version[0] != '\0');
	check_stored(&k, 1, data, len);
	free(data);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

/* Lines that start with a dot right at the 16 KB chunk edges of body_more:
 * the CRLF ends one chunk and the dot opens the next. */
START_TEST(stuffing_at_chunk_edges)
{
	const char *args[] = { "--pipelining", NULL };
	struct sink k;
	sink_start(&k, args);
	struct tctx t;
	tctx_init(&t);
	size_t len = 0;
	char *data = malloc(3 * 16384);
	memset(data, 'x', 16382);
	len = 16382;
	memcpy(data + len, "\r\n.edge\r\n", 9);
	len += 9;
	memset(data + len, 'y', 32766 - len);
	len = 32766;
	memcpy(data + len, "\r\n.\r\nend\r\n", 10);
	len += 10;
	ck_assert(data[16383] == '\n' && data[16384] == '.' && data[32767] == '\n' && data[32768] == '.');
	static const char *const rcpt[] = { "edge@example.com" };
	add_msg(&t, "s@example.com", rcpt, 1, data, len);
	start_client(&t, k.port, TLS_DISABLED, NULL);
	run(&t);
	ck_assert(t.ready);
	ck_assert_uint_eq(t.n_res, 1);
	ck_assert_msg(t.res[0].final.code == 250, "%d %s", t.res[0].final.code, t.res[0].final.text);
	check_stored(&k, 1, data, len);
	free(data);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

/* ---- failures in and around transactions ---------------------------------------- */

START_TEST(connect_refused)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof sin;
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	close(fd); /* nothing listens there now */
	struct tctx t;
	tctx_init(&t);
	static const char *const rcpt[] = { "r@example.com" };
	add_msg(&t, "s@example.com", rcpt, 1, "x\r\n", 3);
	start_client(&t, ntohs(sin.sin_port), TLS_OPPORTUNISTIC, NULL);
	run(&t);
	ck_assert(!t.ready);
	ck_assert(t.failed);
	ck_assert_int_eq(t.fail_code, 421);
	ck_assert_msg(strstr(t.fail_text, "4.4.1 connection to 127.0.0.1:") == t.fail_text, "%s", t.fail_text);
	ck_assert_msg(strstr(t.fail_text, "refused") != NULL, "%s", t.fail_text);
	ck_assert(!t.permanent);
	tctx_free(&t);
}
END_TEST

START_TEST(dot_hang_times_out)
{
	const char *args[] = { "--rule", "DOT:0:hang", NULL };
	struct sink k;
	sink_start(&k, args);
	struct tctx t;
	tctx_init(&t);
	static const char *const rcpt[] = { "r@example.com" };
	add_msg(&t, "s@example.com", rcpt, 1, D1, strlen(D1));
	add_msg(&t, "s@example.com", rcpt, 1, D1, strlen(D1)); /* never sent */
	struct smtp_timeouts to;
	test_timeouts(&to);
	to.data_dot = 0.5;
	start_client(&t, k.port, TLS_OPPORTUNISTIC, &to);
	run(&t);
	ck_assert_uint_eq(t.n_res, 1);
	const struct smtp_result *r = &t.res[0];
	ck_assert(r->connection_failed);
	ck_assert_int_eq(r->final.code, 421);
	ck_assert_str_eq(r->command, "data_dot");
	ck_assert_msg(strstr(r->final.text, "timeout waiting for data_dot reply") != NULL, "%s", r->final.text);
	ck_assert_int_eq(r->rcpt[0].code, 250);
	double waited = t.t_done - t.t_sent;
	ck_assert_msg(waited >= 0.45 && waited < 5, "waited %.3f s", waited);
	ck_assert_int_eq(count_eml(&k), 0);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

START_TEST(idle_timeout_quits)
{
	struct sink k;
	sink_start(&k, NULL);
	struct tctx t;
	tctx_init(&t);
	t.stay_idle = true;
	struct smtp_timeouts to;
	test_timeouts(&to);
	to.idle = 0.3;
	double t0 = now();
	start_client(&t, k.port, TLS_OPPORTUNISTIC, &to);
	run(&t);
	ck_assert(t.ready);
	ck_assert(t.failed);
	ck_assert_int_eq(t.fail_code, 421);
	ck_assert_str_eq(t.fail_text, "4.4.2 idle timeout");
	ck_assert(!t.permanent);
	ck_assert(now() - t0 >= 0.25);
	char *log = slurp(&k, "log", NULL);
	size_t n = strlen(log);
	ck_assert_msg(n > 7 && strcmp(log + n - 7, "1 QUIT\n") == 0, "%s", log);
	ck_assert_msg(strstr(log, "QUIT") == strstr(log, "1 QUIT\n") + 2 && !strstr(strstr(log, "QUIT") + 1, "QUIT"),
		      "one QUIT only:\n%s", log);
	free(log);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

static const struct {
	const char *rule;
	const char *command;
	const char *text;
} losses[] = {
	{ "MAIL:1:421 4.3.2 shutting down", "MAIL FROM", "4.3.2 shutting down" },
	{ "RCPT:1:421 4.3.2 shutting down", "RCPT TO", "4.3.2 shutting down" },
	{ "DATA:0:close", NULL, "4.4.2 connection closed by peer while waiting for" },
	{ "DOT:0:close", "data_dot", "4.4.2 connection closed by peer while waiting for data_dot reply" },
	{ "DOT:0:421 4.3.2 bye", "data_dot", "4.3.2 bye" },
};

START_TEST(connection_lost_mid_transaction)
{
	bool pipelining = _i % 2 == 0;
	const char *args[] = { pipelining ? "--pipelining" : "--no-pipelining", "--rule", losses[_i / 2].rule, NULL };
	struct sink k;
	sink_start(&k, args);
	struct tctx t;
	tctx_init(&t);
	static const char *const rcpt[] = { "r@example.com" };
	add_msg(&t, "s@example.com", rcpt, 1, D1, strlen(D1));
	add_msg(&t, "s@example.com", rcpt, 1, D1, strlen(D1));
	start_client(&t, k.port, TLS_OPPORTUNISTIC, NULL);
	run(&t);
	ck_assert_uint_eq(t.n_res, 1);
	const struct smtp_result *r = &t.res[0];
	ck_assert(r->connection_failed);
	ck_assert_int_eq(r->final.code, 421);
	if (losses[_i / 2].command)
		ck_assert_str_eq(r->command, losses[_i / 2].command);
	ck_assert_msg(strstr(r->final.text, losses[_i / 2].text) != NULL, "%s: %s", losses[_i / 2].rule,
		      r->final.text);
	ck_assert_int_eq(count_eml(&k), 0);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

/* quit from ready(): QUIT goes out, the client frees itself after 221 */
START_TEST(quit_when_ready)
{
	struct sink k;
	sink_start(&k, NULL);
	struct tctx t;
	tctx_init(&t); /* no messages: ready() quits at once */
	start_client(&t, k.port, TLS_OPPORTUNISTIC, NULL);
	run(&t);
	ck_assert(t.ready && !t.failed);
	char *log = slurp(&k, "log", NULL);
	ck_assert_msg(strstr(log, "1 QUIT\n") != NULL, "%s", log);
	free(log);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

/* a client freed while connecting and one freed from inside nothing: no callbacks */
START_TEST(free_at_once)
{
	struct sink k;
	sink_start(&k, NULL);
	struct tctx t;
	tctx_init(&t);
	start_client(&t, k.port, TLS_OPPORTUNISTIC, NULL);
	smtp_client_free(t.c);
	t.c = NULL;
	struct timeval tv = { 0, 300000 };
	event_base_loopexit(t.base, &tv);
	event_base_dispatch(t.base);
	ck_assert(!t.ready && !t.failed && t.n_res == 0);
	tctx_free(&t);
	sink_stop(&k);
}
END_TEST

/* ---- replies the sink cannot produce: a raw server in the test's own loop ---- */

struct raw_server {
	struct evconnlistener *lis;
	struct bufferevent *bev;
	int port;
	const char *banner; /* sent on accept */
	size_t banner_len;
	const char *reply;  /* sent after the first line received (EHLO), then nothing */
	size_t reply_len;
	bool close_after;   /* close once the reply is written */
	bool answered;
};

static void raw_read(struct bufferevent *bev, void *arg)
{
	struct raw_server *r = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	if (!r->answered && r->reply && evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_CRLF).pos >= 0) {
		r->answered = true;
		bufferevent_write(bev, r->reply, r->reply_len);
	}
	evbuffer_drain(in, evbuffer_get_length(in));
}

static void raw_written(struct bufferevent *bev, void *arg)
{
	struct raw_server *r = arg;
	if (r->answered && r->close_after) {
		bufferevent_free(bev);
		r->bev = NULL;
	}
}

static void raw_event(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	struct raw_server *r = arg;
	bufferevent_free(bev);
	r->bev = NULL;
}

static void raw_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	(void)sa;
	(void)salen;
	struct raw_server *r = arg;
	ck_assert_ptr_null(r->bev);
	r->bev = bufferevent_socket_new(evconnlistener_get_base(l), fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(r->bev, raw_read, raw_written, raw_event, r);
	bufferevent_enable(r->bev, EV_READ | EV_WRITE);
	bufferevent_write(r->bev, r->banner, r->banner_len);
}

static void raw_start(struct raw_server *r, struct event_base *base)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r->lis = evconnlistener_new_bind(base, raw_accept, r, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 8,
					 (struct sockaddr *)&sin, sizeof sin);
	ck_assert_ptr_nonnull(r->lis);
	socklen_t sl = sizeof sin;
	ck_assert_int_eq(getsockname(evconnlistener_get_fd(r->lis), (struct sockaddr *)&sin, &sl), 0);
	r->port = ntohs(sin.sin_port);
}

static void raw_stop(struct raw_server *r)
{
	if (r->bev)
		bufferevent_free(r->bev);
	evconnlistener_free(r->lis);
}

#define EHLO_OK "250-raw.test\r\n250 PIPELINING\r\n"

struct raw_row {
	const char *name;
	const char *banner; /* NULL: made by kind */
	size_t banner_len;
	int kind;           /* 1: one 5000-byte line; 2: 20 lines of 4000 bytes; 3: one line of exactly 4096 */
	const char *reply;
	size_t reply_len;
	bool close_after;
	bool ready;
	int code;           /* failed() code */
	const char *text;   /* failed() reason substring; ready: the EHLO-derived check below */
};

#define BYTES(s) s, sizeof(s) - 1
static const struct raw_row raws[] = {
	{ "continuation with another code", BYTES("220-raw.test\r\n221 raw.test\r\n"), 0, NULL, 0, false, false, 421,
	  "4.4.2 malformed reply from 127.0.0.1:" },
	{ "code with a letter", BYTES("2x0 raw.test\r\n"), 0, NULL, 0, false, false, 421, "malformed reply" },
	{ "code out of range", BYTES("120 raw.test\r\n"), 0, NULL, 0, false, false, 421, "malformed reply" },
	{ "no separator after the code", BYTES("220raw.test\r\n"), 0, NULL, 0, false, false, 421, "malformed reply" },
	{ "reply line over 4096 bytes", NULL, 0, 1, NULL, 0, false, false, 421, "longer than 4096 bytes" },
	{ "reply over 64 KB", NULL, 0, 2, NULL, 0, false, false, 421, "longer than 65536 bytes" },
	{ "reply line of exactly 4096 bytes", NULL, 0, 3, BYTES(EHLO_OK), false, true, 0, NULL },
	{ "bare code, bare LF, NUL byte", BYTES("220\n"), 0, BYTES("250-raw.\0test\n250 PIPELINING\n"), false, true,
	  0, NULL },
	{ "unsolicited reply while idle", BYTES("220 raw.test\r\n"), 0, BYTES(EHLO_OK "421 4.3.2 going away\r\n"),
	  false, true, 421, "4.3.2 going away" },
	{ "EHLO answered 421", BYTES("220 raw.test\r\n"), 0, BYTES("421 4.3.2 too busy\r\n"), false, false, 421,
	  "4.3.2 too busy" },
	{ "peer closes while idle", BYTES("220 raw.test\r\n"), 0, BYTES(EHLO_OK), true, true, 421,
	  "4.4.2 connection closed by peer while idle" },
};

START_TEST(raw_row)
{
	const struct raw_row *row = &raws[_i];
	struct tctx t;
	tctx_init(&t);
	t.stay_idle = true;
	char *made = NULL;
	struct raw_server r = { .banner = row->banner, .banner_len = row->banner_len, .reply = row->reply,
				.reply_len = row->reply_len, .close_after = row->close_after };
	if (row->kind) {
		made = malloc(100000);
		size_t n = 0;
		if (row->kind == 1 || row->kind == 3) {
			size_t line = row->kind == 1 ? 5000 : 4096;
			n += (size_t)snprintf(made, 100000, "220 ");
			memset(made + n, 'a', line - 4);
			n = line;
		} else {
			for (int i = 0; i < 20; i++) {
				n += (size_t)snprintf(made + n, 100000 - n, "220-");
				memset(made + n, 'b', 3996);
				n += 3996;
				made[n++] = '\r';
				made[n++] = '\n';
			}
		}
		if (row->kind != 2) {
			made[n++] = '\r';
			made[n++] = '\n';
		}
		r.banner = made;
		r.banner_len = n;
	}
	raw_start(&r, t.base);
	struct smtp_timeouts to;
	test_timeouts(&to);
	to.idle = 0.3; /* ready rows end in the idle timeout unless told otherwise */
	start_client(&t, r.port, TLS_OPPORTUNISTIC, &to);
	run_script(&t);
	raw_stop(&r);
	event_base_dispatch(t.base);
	ck_assert_msg(t.ready == row->ready, "%s: ready %d: %d %s", row->name, t.ready, t.fail_code, t.fail_text);
	ck_assert(t.failed);
	if (row->ready && !row->text) {
		ck_assert_str_eq(t.fail_text, "4.4.2 idle timeout");
		ck_assert_uint_eq(t.ext, SMTP_EXT_PIPELINING);
	} else {
		ck_assert_int_eq(t.fail_code, row->code);
		ck_assert_msg(strstr(t.fail_text, row->text) != NULL, "%s: %s", row->name, t.fail_text);
		ck_assert(!t.permanent);
	}
	free(made);
	tctx_free(&t);
}
END_TEST

static Suite *smtp_suite(void)
{
	Suite *s = suite_create("qmgr_smtp");
	TCase *tc = tcase_create("client");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, top_setup, top_teardown);
	tcase_add_loop_test(tc, tls_mode_row, 0, sizeof tls_modes / sizeof tls_modes[0]);
	tcase_add_test(tc, defaults_and_msg_check);
	tcase_add_loop_test(tc, session_row, 0, sizeof sessions / sizeof sessions[0]);
	tcase_add_loop_test(tc, txn_row, 0, 2 * (sizeof txns / sizeof txns[0]));
	tcase_add_loop_test(tc, stuffing_round_trip, 0, 2);
	tcase_add_test(tc, stuffing_at_chunk_edges);
	tcase_add_loop_test(tc, big_message, 0, 2);
	tcase_add_test(tc, connect_refused);
	tcase_add_test(tc, dot_hang_times_out);
	tcase_add_test(tc, idle_timeout_quits);
	tcase_add_loop_test(tc, connection_lost_mid_transaction, 0, 2 * (sizeof losses / sizeof losses[0]));
	tcase_add_loop_test(tc, raw_row, 0, sizeof raws / sizeof raws[0]);
	tcase_add_test(tc, quit_when_ready);
	tcase_add_test(tc, free_at_once);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	SRunner *sr = srunner_create(smtp_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
