/*
 * End-to-end hostile clients: SMTP smuggling in every invalid_line_endings
 * mode, 10,000 pipelined RCPTs, 2,000 simultaneous connections, a client
 * that sends commands and never reads the replies.  The relay
 * must keep serving, answer in order and never make a second message out
 * of one DATA.
 */
#include "expect.h"
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define H HARNESS_HOSTNAME

static const char *const modes[] = { "Deny", "Allow", "Fix" };
static const char *const smuggles[] = {
	"\n.\r\n", "\r\n.\n", "\r.\r\n", "\n.\n",
};

/* "<smuggle>MAIL FROM:<evil@x>..." inside one DATA never yields a second
 * message, whatever the mode: one reply to the DATA, and nothing spooled
 * holds the smuggled sender as its own message. */
START_TEST(test_smuggling_every_mode)
{
	const char *mode = modes[_i];
	struct harness_env *env = harness_env_new();
	char extra[64];
	snprintf(extra, sizeof extra, "invalid_line_endings = '%s'", mode);
	harness_start_default(env, extra);
	for (size_t k = 0; k < sizeof smuggles / sizeof smuggles[0]; k++) {
		struct smtpc *c = smtpc_connect(env, env->port, NULL);
		smtpc_expect(c, "220 " H " KumoMTA");
		smtpc_chat(c, "MAIL FROM:<good@example.com>", "250 OK <good@example.com>");
		smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
		smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
		char body[512];
		int n = snprintf(body, sizeof body,
				 "Subject: t\r\n\r\nbefore%sMAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\n"
				 "DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n",
				 smuggles[k]);
		smtpc_send(c, body, (size_t)n);
		char *t = NULL;
		int code = smtpc_read_reply(c, &t, SMTPC_TIMEOUT_MS);
		if (strcmp(mode, "Deny") == 0)
			ck_assert_msg(code == 552, "%s/%zu: got %d %s", mode, k, code, t ? t : "");
		else
			ck_assert_msg(code == 250 && strncmp(t, "250 OK ids=", 11) == 0 && !strchr(t + 11, ' '),
				      "%s/%zu: got %d %s", mode, k, code, t ? t : "");
		free(t);
		/* no second reply: the smuggled commands were message text */
		smtpc_chat(c, "NOOP", "250 the goggles do nothing");
		smtpc_close(c);
	}
	/* no message has the smuggled sender as its envelope sender */
	expect_not_spooled(env, "\"sender\":\"evil@example.org\"");
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

START_TEST(test_ten_thousand_pipelined_rcpts)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	size_t cap = 10000 * 40, len = 0;
	char *all = malloc(cap);
	for (int i = 0; i < 10000; i++)
		len += (size_t)snprintf(all + len, cap - len, "RCPT TO:<r%d@example.net>\r\n", i);
	smtpc_send(c, all, len);
	free(all);
	/* in order: 1,024 accepted (the default limit), the rest 452 */
	for (int i = 0; i < 10000; i++) {
		char *t = NULL;
		int code = smtpc_read_reply(c, &t, SMTPC_TIMEOUT_MS);
		int want = i < 1024 ? 250 : 452;
		ck_assert_msg(code == want, "RCPT %d: got %d %s", i, code, t ? t : "");
		if (i < 1024) {
			char w[64];
			snprintf(w, sizeof w, "250 OK <r%d@example.net>", i);
			ck_assert_str_eq(t, w);
		}
		free(t);
	}
	smtpc_chat(c, "RSET", "250 Reset state");
	smtpc_close(c);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

#define FLOOD_NOOPS 500000
static const char noop_reply[] = "250 the goggles do nothing\r\n";

struct flood {
	int fd;
	size_t sent;
};

static void *flood_noops(void *arg)
{
	struct flood *f = arg;
	static const char chunk[] = "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
				    "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n";
	for (int i = 0; i < FLOOD_NOOPS / 10; i++) {
		size_t done = 0;
		while (done < sizeof chunk - 1) {
			ssize_t w = write(f->fd, chunk + done, sizeof chunk - 1 - done);
			if (w <= 0)
				return NULL;
			done += (size_t)w;
		}
		__atomic_add_fetch(&f->sent, 10, __ATOMIC_RELAXED);
	}
	return NULL;
}

/* One process's VmRSS (kB), from the table of kumod's process group. */
static long worker_rss_kb(struct harness_env *env, pid_t pid)
{
	struct harness_rss per[32];
	int n = 0;
	harness_pgrp_rss_kb(env->pgid, per, 32, &n);
	for (int i = 0; i < n; i++)
		if (per[i].pid == pid)
			return per[i].kb;
	ck_abort_msg("worker %d is not in kumod's process group", (int)pid);
	return 0;
}

/* A client that pipelines 500,000 NOOPs and reads nothing: kumo-smtpd stops
 * reading its commands while REPLY_BACKLOG_MAX bytes of replies wait, so its
 * memory does not grow with the 14 MB of replies (a worker that read on
 * grew by about 11 MB); once the client reads, every reply arrives, in
 * order, none lost. */
START_TEST(test_client_that_never_reads)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	smtpc_chat(c, "NOOP", "250 the goggles do nothing");
	/* the worker that serves this connection */
	pid_t w[16];
	int nw = harness_children(env->pid, "kumo-smtpd", w, 16);
	pid_t worker = harness_socket_owner(w, nw, env->port, c->local_port);
	ck_assert_msg(worker > 0, "no worker holds the connection");
	long rss0 = worker_rss_kb(env, worker);
	int small = 65536; /* so the kernel's buffers do not take it all */
	setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
	struct flood f = { .fd = c->fd };
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, flood_noops, &f), 0);
	/* the server reads until the replies back up, then waits */
	size_t last = (size_t)-1;
	while (__atomic_load_n(&f.sent, __ATOMIC_RELAXED) != last) {
		last = __atomic_load_n(&f.sent, __ATOMIC_RELAXED);
		harness_pause_ms(500);
	}
	/* (how many the kernel's buffers take depends on how far TCP
	 * autotuning grew them: up to all of them; what must not grow with
	 * them is the worker) */
	ck_assert_uint_gt(last, 0);
	long grew = worker_rss_kb(env, worker) - rss0;
#if !defined(__SANITIZE_ADDRESS__)
	/* (under ASan, freed buffers stay resident in its quarantine) */
	ck_assert_msg(grew < 4096, "the worker grew by %ld kB for a client that reads nothing", grew);
#endif
	(void)grew;
	/* now read: every reply, in order */
	size_t got = 0, at = 0;
	char buf[65536];
	struct timeval tv = { 10, 0 };
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	while (got < FLOOD_NOOPS) {
		ssize_t r = read(c->fd, buf, sizeof buf);
		ck_assert_msg(r > 0, "read failed after %zu of %d replies", got, FLOOD_NOOPS);
		for (ssize_t i = 0; i < r; i++) {
			if (buf[i] != noop_reply[at]) /* (an assertion per byte is slow) */
				ck_abort_msg("reply %zu differs at byte %zu", got, at);
			if (++at == sizeof noop_reply - 1) {
				at = 0;
				got++;
			}
		}
	}
	ck_assert_int_eq(pthread_join(th, NULL), 0);
	ck_assert_int_eq((int)f.sent, FLOOD_NOOPS);
	smtpc_chat(c, "QUIT", "221 So long, and thanks for all the fish!");
	smtpc_close(c);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

START_TEST(test_two_thousand_connections)
{
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < 2200 && rl.rlim_max >= 2200) {
		rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	getrlimit(RLIMIT_NOFILE, &rl);
	int want = rl.rlim_cur >= 2200 ? 2000 : (int)rl.rlim_cur - 200;
	struct harness_env *env = harness_env_new();
	harness_start_default(env, NULL);
	int *fds = calloc((size_t)want, sizeof *fds);
	int opened = 0;
	for (int i = 0; i < want; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)env->port) };
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
			if (fd >= 0)
				close(fd);
			break;
		}
		fds[opened++] = fd;
	}
	ck_assert_msg(opened >= want * 9 / 10, "only %d of %d connections opened", opened, want);
	/* each one gets its banner */
	int banners = 0;
	for (int i = 0; i < opened; i++) {
		char buf[128];
		struct timeval tv = { 10, 0 };
		setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		ssize_t r = read(fds[i], buf, sizeof buf - 1);
		if (r > 4 && strncmp(buf, "220 ", 4) == 0)
			banners++;
	}
	ck_assert_msg(banners == opened, "%d of %d connections got a banner", banners, opened);
	for (int i = 0; i < opened; i++)
		close(fds[i]);
	free(fds);
	/* then it serves normally */
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	const char *const rcpts[] = { "b@example.net", NULL };
	char ids[1][33];
	smtpc_transaction(c, "a@example.com", rcpts, "Subject: t\r\n\r\nafter the flood\r\n", ids);
	smtpc_close(c);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("e2e_hostile");
	TCase *tc = harness_tcase("hostile");
	tcase_add_loop_test(tc, test_smuggling_every_mode, 0, 3);
	tcase_add_test(tc, test_ten_thousand_pipelined_rcpts);
	tcase_add_test(tc, test_two_thousand_connections);
	tcase_add_test(tc, test_client_that_never_reads);
	suite_add_tcase(s, tc);
	return harness_run_suite(s);
}
