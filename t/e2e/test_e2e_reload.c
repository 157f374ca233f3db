/*
 * End-to-end policy reload: kumoctl reload and SIGHUP load the policy file
 * again while a client keeps sending; a policy that fails to load is
 * refused with its Lua error and the old one keeps serving, answering
 * every call while the broken one loads; no SMTP error, no dropped
 * connection.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

/* The generation tag (@EXTRA@) appears in the banner and the meta. */
#define GEN_POLICY                                                               \
	"local kumo = require 'kumo'\n"                                        \
	"kumo.on('init', function()\n"                                         \
	"  kumo.define_spool { name = 'data', path = '@DIR@/spool/data' }\n"   \
	"  kumo.define_spool { name = 'meta', path = '@DIR@/spool/meta' }\n"   \
	"  kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' } }\n" \
	"  kumo.start_esmtp_listener { listen = '127.0.0.1:@PORT@', hostname = '" HARNESS_HOSTNAME "' }\n" \
	"end)\n"                                                               \
	"kumo.on('smtp_server_mail_from', function(sender, conn_meta) conn_meta:set_meta('x_gen', '@EXTRA@') end)\n" \
	"kumo.on('smtp_server_rewrite_response', function(s, r, c) if s == 220 then return nil, r .. ' gen @EXTRA@' end end)\n"

static void write_gen(struct harness_env *env, const char *g)
{
	harness_write_policy(env, GEN_POLICY, g);
}

static int line_reply(FILE *f, char *buf, size_t len)
{
	for (;;) {
		if (!fgets(buf, (int)len, f))
			return -1;
		if (strlen(buf) < 4 || buf[3] != '-')
			return atoi(buf);
	}
}

/* A client's unbuffered stream to 127.0.0.1:port (exit 100 if refused). */
static FILE *client_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
		_exit(100);
	FILE *f = fdopen(fd, "r+");
	setvbuf(f, NULL, _IONBF, 0);
	return f;
}

/* A child that sends transactions on one connection, new connections now
 * and then, until told to stop; exits with the number of errors. */
static void client_loop(int port, int stop_fd)
{
	int errors = 0, messages = 0;
	while (errors == 0) {
		FILE *f = client_connect(port);
		char buf[1024];
		if (line_reply(f, buf, sizeof buf) != 220)
			errors++;
		for (int i = 0; i < 20 && errors == 0; i++) {
			fputs("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n", f);
			if (line_reply(f, buf, sizeof buf) != 250 || line_reply(f, buf, sizeof buf) != 250 ||
			    line_reply(f, buf, sizeof buf) != 354) {
				errors++;
				break;
			}
			fputs("Subject: r\r\n\r\nx\r\n.\r\n", f);
			if (line_reply(f, buf, sizeof buf) != 250)
				errors++;
			messages++;
		}
		fputs("QUIT\r\n", f);
		line_reply(f, buf, sizeof buf);
		fclose(f);
		char c;
		if (read(stop_fd, &c, 1) >= 0)
			break;
	}
	fprintf(stderr, "reload client: %d messages, %d errors\n", messages, errors);
	_exit(errors ? 1 : 0);
}

static int kumoctl(struct harness_env *env, const char *cmd, char **out)
{
	return harness_kumoctl(env, cmd, out);
}

static void expect_banner(struct harness_env *env, const char *gen)
{
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	char want[200];
	snprintf(want, sizeof want, "220 " HARNESS_HOSTNAME " KumoMTA gen %s", gen);
	smtpc_expect(c, want);
	smtpc_close(c);
}

/* Forks a client running loop(port, stop_fd) until stop_client; the
 * write end of its stop pipe goes to *stop. */
static pid_t start_client(struct harness_env *env, void (*loop)(int, int), int *stop)
{
	int pipefd[2];
	ck_assert_int_eq(pipe(pipefd), 0);
	/* (a client that stopped at an error has closed its end: no SIGPIPE
	 * in stop_client, so the failure is reported) */
	signal(SIGPIPE, SIG_IGN);
	pid_t child = fork();
	ck_assert_int_ge(child, 0);
	if (child == 0) {
		close(pipefd[1]);
		/* nonblocking read end: a byte (or EOF) means stop */
		fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
		loop(env->port, pipefd[0]);
	}
	close(pipefd[0]);
	*stop = pipefd[1];
	return child;
}

/* Stops the client; fails (with kumod's output) unless it saw no error. */
static void stop_client(struct harness_env *env, pid_t child, int stop, const char *what)
{
	(void)!write(stop, "x", 1);
	close(stop);
	int st;
	ck_assert_int_eq(waitpid(child, &st, 0), child);
	if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) /* HFAIL: the output may be long */
		HFAIL("%s (%s)\n%s", what, harness_status_str(st), harness_output(env));
}

/* Appends a line that is not Lua to the policy file. */
static void break_policy(struct harness_env *env)
{
	char *path = harness_path(env, "policy.lua");
	FILE *f = fopen(path, "a");
	ck_assert_ptr_nonnull(f);
	fputs("this is not Lua ((\n", f);
	fclose(f);
	free(path);
}

START_TEST(test_reload_under_load)
{
	struct harness_env *env = harness_env_new();
	write_gen(env, "1");
	harness_start(env);
	expect_banner(env, "1");

	int stop;
	pid_t child = start_client(env, client_loop, &stop);
	usleep(300 * 1000);

	char *out = NULL;
	write_gen(env, "2");
	ck_assert_int_eq(kumoctl(env, "reload", &out), 0);
	free(out);
	expect_banner(env, "2");

	/* a broken policy: refused with the Lua error, generation 2 serves on */
	break_policy(env);
	ck_assert_int_eq(kumoctl(env, "reload", &out), 1);
	ck_assert_msg(strstr(out, "policy.lua:") != NULL, "kumoctl reload said: %s", out);
	free(out);
	expect_banner(env, "2");

	/* SIGHUP does the same */
	write_gen(env, "3");
	kill(env->pid, SIGHUP);
	ck_assert(harness_output_wait_regex(env, "SIGHUP: policy .* reloaded", 10));
	expect_banner(env, "3");

	stop_client(env, child, stop, "the client saw errors across the reloads");
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

/* A child that sends MAIL FROM (a hook call each) and RSET on one
 * connection as fast as the replies come, until told to stop; exits with
 * 1 if any reply was not 250 (the first one is printed). */
static void mail_loop(int port, int stop_fd)
{
	FILE *f = client_connect(port);
	char buf[1024];
	int calls = 0;
	if (line_reply(f, buf, sizeof buf) != 220)
		_exit(101);
	for (;;) {
		char c;
		if (read(stop_fd, &c, 1) >= 0)
			break;
		fputs("MAIL FROM:<a@example.com>\r\n", f);
		if (line_reply(f, buf, sizeof buf) != 250) {
			fprintf(stderr, "mail loop: after %d calls: %s", calls, buf);
			_exit(1);
		}
		fputs("RSET\r\n", f);
		if (line_reply(f, buf, sizeof buf) != 250)
			_exit(2);
		calls++;
	}
	fprintf(stderr, "mail loop: %d calls, no error\n", calls);
	_exit(0);
}

/* While a reload of a broken policy is under way, the old policy answers
 * every call: the broken one's Lua states never take a request.  (They
 * did, for up to 0.1 s per reload, answering with the load error.) */
START_TEST(test_broken_reload_answers_nothing)
{
	struct harness_env *env = harness_env_new();
	write_gen(env, "1");
	harness_start(env);
	int stop;
	pid_t child = start_client(env, mail_loop, &stop);
	usleep(200 * 1000);
	break_policy(env);
	for (int i = 0; i < 100; i++) {
		char *out = NULL;
		ck_assert_int_eq(kumoctl(env, "reload", &out), 1);
		free(out);
	}
	stop_client(env, child, stop, "a call failed during a broken reload");
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("e2e_reload");
	TCase *tc = harness_tcase("reload");
	tcase_add_test(tc, test_reload_under_load);
	tcase_add_test(tc, test_broken_reload_answers_nothing);
	suite_add_tcase(s, tc);
	return harness_run_suite(s);
}
