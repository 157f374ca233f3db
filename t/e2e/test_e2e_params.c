/*
 * End-to-end listener parameters (kumo.start_esmtp_listener): client_timeout,
 * max_connections (across workers), max_recipients_per_message,
 * max_messages_per_connection, line_length_hard_limit, invalid_line_endings,
 * relay_hosts strictness, meta/peer/via, the default hostname, IPv6 and
 * several listeners, data_processing_timeout.
 */
#include "expect.h"
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>

#define H HARNESS_HOSTNAME

static void stop(struct harness_env *env)
{
	harness_stop(env, NULL);
	harness_env_free(env);
}

START_TEST(test_client_timeout)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "client_timeout = '1s'");
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	char *t = NULL;
	int code = smtpc_read_reply(c, &t, 10000);
	ck_assert_msg(code == 421 && strcmp(t, "421 4.3.2 " H " idle too long") == 0, "got %d %s", code, t);
	free(t);
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	smtpc_close(c);
	stop(env);
}
END_TEST

/* A session that was greeted with 220. The harness's readiness probe is a session too
 * until its worker reads the probe's close, so a 421 is retried for up to five seconds. */
static struct smtpc *connect_greeted(struct harness_env *env)
{
	for (int i = 0; i < 50; i++) {
		struct smtpc *c = smtpc_connect(env, env->port, NULL);
		char *t = NULL;
		int code = smtpc_read_reply(c, &t, SMTPC_TIMEOUT_MS);
		int busy = code == 421 && t && strstr(t, "too many concurrent sessions");
		free(t);
		if (code == 220)
			return c;
		ck_assert_msg(busy, "connection was neither greeted nor refused as busy (reply %d)", code);
		smtpc_close(c);
		usleep(100 * 1000);
	}
	ck_abort_msg("every connection for five seconds was refused as busy");
	return NULL;
}

START_TEST(test_max_connections_across_workers)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "max_connections = 3");
	struct smtpc *c[3];
	for (int i = 0; i < 3; i++)
		c[i] = connect_greeted(env);
	/* two workers share the count: the fourth is refused whichever accepts it */
	for (int k = 0; k < 4; k++) {
		struct smtpc *x = smtpc_connect(env, env->port, NULL);
		smtpc_expect(x, "421 4.3.2 " H " too many concurrent sessions. Try later");
		smtpc_expect_eof(x, SMTPC_TIMEOUT_MS);
		smtpc_close(x);
	}
	smtpc_chat(c[0], "QUIT", "221 So long, and thanks for all the fish!");
	smtpc_expect_eof(c[0], SMTPC_TIMEOUT_MS);
	smtpc_close(c[0]);
	int ok = 0;
	for (int i = 0; i < 50 && !ok; i++) {
		usleep(100 * 1000);
		struct smtpc *x = smtpc_connect(env, env->port, NULL);
		char *t = NULL;
		ok = smtpc_read_reply(x, &t, SMTPC_TIMEOUT_MS) == 220;
		free(t);
		smtpc_close(x);
	}
	ck_assert_msg(ok, "a slot never came free after a session ended");
	smtpc_close(c[1]);
	smtpc_close(c[2]);
	stop(env);
}
END_TEST

START_TEST(test_recipient_and_message_limits)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "max_recipients_per_message = 2, max_messages_per_connection = 2");
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<r1@example.net>", "250 OK <r1@example.net>");
	smtpc_chat(c, "RCPT TO:<r2@example.net>", "250 OK <r2@example.net>");
	smtpc_chat(c, "RCPT TO:<r3@example.net>", "452 4.5.3 too many recipients");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	smtpc_send(c, "Subject: t\r\n\r\nx\r\n.\r\n", 20);
	char ids[2][33];
	smtpc_expect_ids(c, 2, ids);
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RSET", "250 Reset state");
	/* the third MAIL FROM on this connection gets a transient failure */
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "451 4.5.3 " H " too many messages on this connection");
	smtpc_chat(c, "NOOP", "250 the goggles do nothing");
	smtpc_close(c);
	stop(env);
}
END_TEST

START_TEST(test_line_length_limit)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "line_length_hard_limit = 100");
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	char line[200];
	memset(line, 'x', sizeof line);
	memcpy(line, "NOOP ", 5);
	line[100] = 0;
	smtpc_chat(c, line, "250 the goggles do nothing");
	line[100] = 'x';
	line[101] = 0;
	smtpc_chat(c, line, "500 5.2.3 line too long");
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	char body[300];
	memset(body, 'y', 101);
	snprintf(body + 101, sizeof body - 101, "\r\n.\r\n");
	smtpc_send(c, body, strlen(body));
	smtpc_expect(c, "500 5.2.3 line too long");
	smtpc_chat(c, "NOOP", "250 the goggles do nothing");
	smtpc_close(c);
	stop(env);
}
END_TEST

static void bare_lf_stored(const char *mode, const char *stored)
{
	struct harness_env *env = harness_env_new();
	char extra[200];
	snprintf(extra, sizeof extra, "invalid_line_endings = '%s', trace_headers = { received_header = false,"
		 " supplemental_header = false }", mode);
	harness_start_default(env, extra);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	{ const char *b = "Subject: t\r\n\r\none\ntwo\r\n.\r\n"; smtpc_send(c, b, strlen(b)); }
	char ids[1][33];
	smtpc_expect_ids(c, 1, ids);
	size_t len;
	free(expect_spooled(env, ids[0], stored, NULL, &len));
	smtpc_close(c);
	stop(env);
}

START_TEST(test_invalid_line_endings_allow_and_fix)
{
	bare_lf_stored("Allow", "Subject: t\r\n\r\none\ntwo\r\n");
	bare_lf_stored("Fix", "Subject: t\r\n\r\none\r\ntwo\r\n");
}
END_TEST

START_TEST(test_relay_hosts_strict_cidr)
{
	struct harness_env *env = harness_env_new();
	harness_write_policy(env, HARNESS_POLICY_TEMPLATE, "relay_hosts = { '10.0.0.1/24' }");
	const char *argv[] = { "kumod", "--policy", env->policy, "--validate", NULL };
	char *out = NULL;
	int st = harness_run(env, argv, 20, &out);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exit %s", harness_status_str(st));
	ck_assert_msg(strstr(out, "relay_hosts") && strstr(out, "10.0.0.1/24") && strstr(out, "host bits"),
		      "output: %s", out);
	free(out);
	harness_env_free(env);
}
END_TEST

START_TEST(test_meta_peer_via)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "meta = { x_base = 'b' },"
				   " peer = { ['127.0.0.0/8'] = { banner = 'peer8' }, ['127.0.0.1'] = { banner = 'peer32',"
				   " meta = { x_peer = 'p' } } },"
				   " via = { ['127.0.0.1'] = { hostname = 'via.example' } }");
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 via.example peer32");
	const char *const rcpts[] = { "b@example.net", NULL };
	char ids[1][33];
	smtpc_transaction(c, "a@example.com", rcpts, "Subject: t\r\n\r\nx\r\n", ids);
	static const char *const needles[] = { "\"x_base\":\"b\"", "\"x_peer\":\"p\"", "\"hostname\":\"via.example\"", NULL };
	size_t len;
	free(expect_spooled(env, ids[0], "x\r\n", needles, &len));
	smtpc_close(c);
	/* from 127.0.0.2 only the /8 peer block applies */
	c = smtpc_connect(env, env->port, "127.0.0.2");
	smtpc_expect(c, "220 via.example peer8");
	smtpc_close(c);
	stop(env);
}
END_TEST

#define TWO_LISTENERS                                                            \
	"local kumo = require 'kumo'\n"                                        \
	"kumo.on('init', function()\n"                                         \
	"  kumo.define_spool { name = 'data', path = '@DIR@/spool/data' }\n"   \
	"  kumo.define_spool { name = 'meta', path = '@DIR@/spool/meta' }\n"   \
	"  kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' } }\n" \
	"  kumo.start_esmtp_listener { listen = '127.0.0.1:@PORT@' }\n"        \
	"  kumo.start_esmtp_listener { listen = @EXTRA@, banner = 'second' }\n" \
	"end)\n"

static int ipv6_loopback(void)
{
	int fd = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

START_TEST(test_default_hostname_and_two_listeners)
{
	struct harness_env *env = harness_env_new();
	int port2 = harness_free_port();
	char extra[64];
	int v6 = ipv6_loopback();
	snprintf(extra, sizeof extra, v6 ? "'[::1]:%d'" : "'127.0.0.1:%d'", port2);
	harness_write_policy(env, TWO_LISTENERS, extra);
	harness_start(env);
	char host[256], want[300];
	gethostname(host, sizeof host);
	host[sizeof host - 1] = 0;
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	snprintf(want, sizeof want, "220 %s KumoMTA", host);
	smtpc_expect(c, want);
	smtpc_close(c);
	if (v6) {
		/* the harness client speaks IPv4; check the IPv6 listener by hand */
		int fd = socket(AF_INET6, SOCK_STREAM, 0);
		struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT,
					  .sin6_port = htons((uint16_t)port2) };
		ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
		char buf[512];
		ssize_t n = 0, r;
		while (n < (ssize_t)sizeof buf - 1 && (r = read(fd, buf + n, sizeof buf - 1 - (size_t)n)) > 0) {
			n += r;
			if (memchr(buf, '\n', (size_t)n))
				break;
		}
		buf[n > 0 ? n : 0] = 0;
		snprintf(want, sizeof want, "220 %s second\r\n", host);
		ck_assert_str_eq(buf, want);
		const char *rcpt = "RCPT TO:<x@example.net>\r\n";
		ck_assert(write(fd, "MAIL FROM:<a@b.example>\r\n", 25) == 25);
		ck_assert(write(fd, rcpt, strlen(rcpt)) == (ssize_t)strlen(rcpt));
		usleep(300 * 1000);
		n = read(fd, buf, sizeof buf - 1);
		buf[n > 0 ? n : 0] = 0;
		/* ::1 is in the default relay_hosts */
		ck_assert_msg(strstr(buf, "250 OK <x@example.net>") != NULL, "got %s", buf);
		close(fd);
	} else {
		c = smtpc_connect(env, port2, NULL);
		snprintf(want, sizeof want, "220 %s second", host);
		smtpc_expect(c, want);
		smtpc_close(c);
	}
	stop(env);
}
END_TEST

START_TEST(test_data_processing_timeout)
{
	struct harness_env *env = harness_env_new();
	char *tmpl = NULL;
	if (asprintf(&tmpl, "%s%s", HARNESS_POLICY_TEMPLATE,
		     "kumo.on('smtp_server_mail_from', function(sender)\n"
		     "  local t = os.clock() while os.clock() - t < 4 do end\n"
		     "end)\n") < 0)
		abort();
	harness_write_policy(env, tmpl, "data_processing_timeout = '1s'");
	free(tmpl);
	harness_start(env);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "421 4.3.0 " H " technical difficulties");
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	smtpc_close(c);
	stop(env);
}
END_TEST

START_TEST(test_data_processing_timeout_after_data)
{
	struct harness_env *env = harness_env_new();
	char *tmpl = NULL;
	if (asprintf(&tmpl, "%s%s", HARNESS_POLICY_TEMPLATE,
		     "kumo.on('smtp_server_message_received', function(msg)\n"
		     "  local t = os.clock() while os.clock() - t < 4 do end\n"
		     "end)\n") < 0)
		abort();
	harness_write_policy(env, tmpl, "data_processing_timeout = '1s'");
	free(tmpl);
	harness_start(env);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	smtpc_send(c, "Subject: slow\r\n\r\nx\r\n.\r\n", 23);
	smtpc_expect(c, "451 4.4.5 data_processing_timeout exceeded (rx)");
	/* nothing stored; the session goes on */
	expect_not_spooled(env, "Subject: slow");
	smtpc_chat(c, "NOOP", "250 the goggles do nothing");
	smtpc_close(c);
	stop(env);
}
END_TEST

START_TEST(test_xclient)
{
	/* off by default */
	struct harness_env *env = harness_env_new();
	harness_start_default(env, NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "220 " H " KumoMTA");
	smtpc_chat(c, "XCLIENT ADDR=42.42.42.42", "550 insufficient authorization");
	smtpc_close(c);
	stop(env);

	/* allowed only from 127.0.0.1 (a peer block), re-running the parameters */
	env = harness_env_new();
	char *tmpl = NULL;
	if (asprintf(&tmpl, "%s%s", HARNESS_POLICY_TEMPLATE,
		     "kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)\n"
		     "  return { banner = 'from ' .. conn_meta:get_meta('received_from') }\n"
		     "end)\n") < 0)
		abort();
	harness_write_policy(env, tmpl, "peer = { ['127.0.0.1'] = { allow_xclient = true } }");
	free(tmpl);
	harness_start(env);
	c = smtpc_connect(env, env->port, NULL);
	char want[200];
	snprintf(want, sizeof want, "220 " H " from 127.0.0.1:%d", c->local_port);
	smtpc_expect(c, want);
	smtpc_cmd(c, "EHLO proxy.example");
	char *t = smtpc_expect_code(c, 250);
	ck_assert_msg(strstr(t, "\n250 XCLIENT ADDR PORT DESTADDR DESTPORT") != NULL, "EHLO: %s", t);
	free(t);
	smtpc_chat(c, "XCLIENT ADDR=nonsense", "501 ADDR nonsense is invalid");
	smtpc_chat(c, "XCLIENT PORT=70000", "501 PORT 70000 is invalid");
	smtpc_chat(c, "XCLIENT NAME=x.example", "501 parameter NAME is not supported");
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "XCLIENT ADDR=42.42.42.42", "503 mail transaction in progress");
	smtpc_chat(c, "RSET", "250 Reset state");
	smtpc_chat(c, "XCLIENT ADDR=42.42.42.42 PORT=42", "220 " H " from 42.42.42.42:42");
	/* the new peer is not in relay_hosts, and no longer allowed XCLIENT */
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "550 5.7.1 relaying not permitted for 42.42.42.42:42");
	smtpc_chat(c, "RSET", "250 Reset state");
	smtpc_chat(c, "XCLIENT ADDR=127.0.0.1", "550 insufficient authorization");
	smtpc_close(c);

	/* the meta of a message after XCLIENT names both */
	c = smtpc_connect(env, env->port, NULL);
	smtpc_expect_prefix(c, "220 ");
	smtpc_chat(c, "XCLIENT ADDR=127.0.0.1 PORT=99 DESTADDR=127.0.0.1 DESTPORT=25", "220 " H " from 127.0.0.1:99");
	const char *const rcpts[] = { "b@example.net", NULL };
	char ids[1][33];
	smtpc_transaction(c, "a@example.com", rcpts, "Subject: t\r\n\r\nx\r\n", ids);
	static const char *const needles[] = { "\"received_from\":\"127.0.0.1:99\"", "\"received_via\":\"127.0.0.1:25\"",
					       "\"orig_received_from\":\"127.0.0.1:", NULL };
	size_t len;
	char *data = expect_spooled(env, ids[0], "x\r\n", needles, &len);
	ck_assert_msg(strstr(data, "Received: from unspecified (127.0.0.1)\r\n  by " H " (KumoMTA 127.0.0.1)") != NULL,
		      "stored: %.300s", data);
	free(data);
	smtpc_close(c);
	stop(env);
}
END_TEST

START_TEST(test_proxy_protocol)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "require_proxy_protocol = true");
	/* v1: the banner waits for the header; the addresses are the header's */
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	const char *v1 = "PROXY TCP4 192.0.2.7 127.0.0.1 4711 25\r\n";
	smtpc_send(c, v1, strlen(v1));
	smtpc_expect(c, "220 " H " KumoMTA");
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "550 5.7.1 relaying not permitted for 192.0.2.7:4711");
	smtpc_close(c);

	/* v2, binary, from a relayable address: the meta records both */
	c = smtpc_connect(env, env->port, NULL);
	static const char v2[] = "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01\x00\x2a\x00\x19";
	smtpc_send(c, v2, sizeof v2 - 1);
	smtpc_expect(c, "220 " H " KumoMTA");
	const char *const rcpts[] = { "b@example.net", NULL };
	char ids[1][33];
	smtpc_transaction(c, "a@example.com", rcpts, "Subject: t\r\n\r\nx\r\n", ids);
	static const char *const needles[] = { "\"received_from\":\"127.0.0.1:42\"", "\"received_via\":\"127.0.0.1:25\"",
					       "\"orig_received_from\":\"127.0.0.1:", NULL };
	size_t len;
	free(expect_spooled(env, ids[0], "x\r\n", needles, &len));
	smtpc_close(c);

	/* no header: dropped without a reply */
	c = smtpc_connect(env, env->port, NULL);
	smtpc_send(c, "EHLO x\r\n", 8);
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	smtpc_close(c);
	stop(env);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("e2e_params");
	TCase *tc = harness_tcase("params");
	tcase_add_test(tc, test_client_timeout);
	tcase_add_test(tc, test_max_connections_across_workers);
	tcase_add_test(tc, test_recipient_and_message_limits);
	tcase_add_test(tc, test_line_length_limit);
	tcase_add_test(tc, test_invalid_line_endings_allow_and_fix);
	tcase_add_test(tc, test_relay_hosts_strict_cidr);
	tcase_add_test(tc, test_meta_peer_via);
	tcase_add_test(tc, test_default_hostname_and_two_listeners);
	tcase_add_test(tc, test_data_processing_timeout);
	tcase_add_test(tc, test_data_processing_timeout_after_data);
	tcase_add_test(tc, test_xclient);
	tcase_add_test(tc, test_proxy_protocol);
	suite_add_tcase(s, tc);
	return harness_run_suite(s);
}
