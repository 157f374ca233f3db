/*
 * End-to-end AUTH PLAIN after STARTTLS: smtp_server_auth_plain decides,
 * KumoMTA's replies for every failure, authn_id/authz_id in the meta, an
 * authenticated client may relay, credentials never reach the logs.
 */
#include "expect.h"
#include "harness.h"
#include "lib/base64.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AUTH_POLICY                                                              \
	"kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)\n" \
	"  conn_meta:set_meta('x_authz_seen', authz)\n"                        \
	"  return authc == 'user' and password == 'secret'\n"                  \
	"end)\n"

static struct harness_env *start(const char *handlers)
{
	struct harness_env *env = harness_env_new();
	char *tmpl = NULL;
	if (asprintf(&tmpl, "%s%s", HARNESS_POLICY_TEMPLATE, handlers) < 0)
		abort();
	/* nobody may relay without authenticating */
	harness_write_policy(env, tmpl, "relay_hosts = {}");
	free(tmpl);
	harness_start(env);
	return env;
}

static char *plain(const char *authz, const char *authc, const char *pw)
{
	char buf[256];
	size_t n = (size_t)snprintf(buf, sizeof buf, "%s%c%s%c%s", authz, 0, authc, 0, pw);
	return base64_encode(buf, n);
}

static struct smtpc *tls_session(struct harness_env *env)
{
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect_prefix(c, "220 ");
	smtpc_cmd(c, "EHLO client.example");
	free(smtpc_expect_code(c, 250));
	smtpc_starttls(c);
	smtpc_cmd(c, "EHLO client.example");
	char *t = smtpc_expect_code(c, 250);
	ck_assert_msg(strstr(t, "\n250 AUTH PLAIN") != NULL, "EHLO after TLS: %s", t);
	free(t);
	return c;
}

START_TEST(test_auth_then_relay)
{
	struct harness_env *env = start(AUTH_POLICY);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect_prefix(c, "220 ");
	smtpc_chat(c, "AUTH PLAIN AHVzZXIAc2VjcmV0", "524 5.7.11 AUTH PLAIN requires an encrypted channel");
	smtpc_chat(c, "AUTH LOGIN", "504 5.5.4 AUTH LOGIN not supported");
	smtpc_close(c);

	c = tls_session(env);
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	char want[128];
	snprintf(want, sizeof want, "550 5.7.1 relaying not permitted for 127.0.0.1:%d", c->local_port);
	smtpc_chat(c, "RCPT TO:<b@example.net>", want);
	smtpc_chat(c, "AUTH PLAIN AHVzZXIAc2VjcmV0", "503 5.5.1 AUTH not permitted inside a transaction");
	smtpc_chat(c, "RSET", "250 Reset state");
	char *bad = plain("", "user", "wrong");
	char cmd[300];
	snprintf(cmd, sizeof cmd, "AUTH PLAIN %s", bad);
	smtpc_chat(c, cmd, "535 5.7.8 AUTH invalid");
	free(bad);
	char *good = plain("", "user", "secret");
	snprintf(cmd, sizeof cmd, "AUTH PLAIN %s", good);
	smtpc_chat(c, cmd, "235 2.7.0 AUTH OK!");
	smtpc_chat(c, cmd, "503 5.5.1 AUTH me once, can't get authed again!");
	free(good);
	const char *const rcpts[] = { "b@example.net", NULL };
	char ids[1][33];
	smtpc_transaction(c, "a@example.com", rcpts, "Subject: t\r\n\r\nbody\r\n", ids);
	static const char *const needles[] = { "\"authn_id\":\"user\"", "\"authz_id\":\"user\"",
					       "\"x_authz_seen\":\"user\"", NULL };
	size_t len;
	char *data = expect_spooled(env, ids[0], "body", needles, &len);
	ck_assert_msg(strstr(data, "  with ESMTPSA (") != NULL, "stored: %.400s", data);
	free(data);
	smtpc_close(c);
	/* no log record holds the password (base64 of either attempt); read
	 * after the stop, which writes every buffered record */
	harness_stop(env, NULL);
	char *logs = harness_logs_summary(env);
	ck_assert_msg(strstr(logs, "AHVzZXIAd3Jvbmc") == NULL && strstr(logs, "AHVzZXIAc2VjcmV0") == NULL,
		      "credentials in the logs: %s", logs);
	free(logs);
	harness_env_free(env);
}
END_TEST

struct auth_row {
	const char *send;   /* after "AUTH PLAIN" and the 334, or NULL for none */
	const char *reply;
};

static const struct auth_row rows[] = {
	{ "AHVzZXIAc2VjcmV0", "235 2.7.0 AUTH OK!" },
	{ "YWRtaW4AdXNlcgBzZWNyZXQ=", "235 2.7.0 AUTH OK!" },   /* authz admin */
	{ "*", "501 5.5.0 AUTH cancelled by client" },
	{ "!!notbase64!!", "501 5.5.2 Invalid base64 response" },
	{ "dXNlcgBzZWNyZXQ=", "501 5.5.2 Invalid decoded PLAIN response" }, /* two fields */
	{ "AP8A/w==", "501 5.5.2 Invalid UTF8 in decoded PLAIN response" },
	{ "AHVzZXIAbm9wZQ==", "535 5.7.8 AUTH invalid" },
};

START_TEST(test_auth_continuation_rows)
{
	struct harness_env *env = start(AUTH_POLICY);
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		struct smtpc *c = tls_session(env);
		smtpc_chat(c, "AUTH PLAIN", "334  ");
		smtpc_chat(c, rows[i].send, rows[i].reply);
		smtpc_chat(c, "NOOP", "250 the goggles do nothing");
		smtpc_close(c);
	}
	/* an over-long exchange line */
	struct smtpc *c = tls_session(env);
	smtpc_chat(c, "AUTH PLAIN", "334  ");
	char *line = malloc(20001);
	memset(line, 'A', 20000);
	line[20000] = 0;
	smtpc_chat(c, line, "500 5.5.6 authentication exchange line too long");
	free(line);
	smtpc_chat(c, "NOOP", "250 the goggles do nothing");
	smtpc_close(c);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

START_TEST(test_auth_without_handler_fails)
{
	struct harness_env *env = start("");
	struct smtpc *c = tls_session(env);
	smtpc_chat(c, "AUTH PLAIN AHVzZXIAc2VjcmV0", "535 5.7.8 AUTH invalid");
	smtpc_close(c);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("e2e_auth");
	TCase *tc = harness_tcase("auth");
	tcase_add_test(tc, test_auth_then_relay);
	tcase_add_test(tc, test_auth_continuation_rows);
	tcase_add_test(tc, test_auth_without_handler_fails);
	suite_add_tcase(s, tc);
	return harness_run_suite(s);
}
