/*
 * End-to-end policy events against a real bin/kumod: each test writes a
 * KumoMTA policy (the harness's init plus handlers), starts kumod and plays
 * a transcript.  Covers smtp_server_get_dynamic_parameters,
 * connection_accepted, ehlo, mail_from, rcpt_to, rewrite_response,
 * get_listener_domain, kumo.reject/kumo.disconnect modes, connection meta,
 * Lua errors, and policyd dying (4xx, never 250).
 */
#include "expect.h"
#include "harness.h"
#include "lib/frame.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <event2/buffer.h>

#define BANNER "220 " HARNESS_HOSTNAME " KumoMTA"
#define TROUBLE "421 4.3.0 " HARNESS_HOSTNAME " technical difficulties"

static struct harness_env *start_with(const char *handlers, const char *extra)
{
	struct harness_env *env = harness_env_new();
	char *tmpl = NULL;
	if (asprintf(&tmpl, "%s%s", HARNESS_POLICY_TEMPLATE, handlers) < 0)
		abort();
	harness_write_policy(env, tmpl, extra);
	free(tmpl);
	harness_start(env);
	return env;
}

static void finish(struct harness_env *env, struct smtpc *c)
{
	if (c)
		smtpc_close(c);
	harness_stop(env, NULL);
	harness_env_free(env);
}

START_TEST(test_dynamic_parameters_and_accepted)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)\n"
		"  return { banner = 'dyn ' .. listener, meta = { x_dyn = 'yes' } }\n"
		"end)\n"
		"kumo.on('smtp_server_connection_accepted', function(conn_meta)\n"
		"  conn_meta:set_meta('x_from', conn_meta:get_meta('received_from'))\n"
		"  conn_meta:set_meta('x_list', { 1, 'two', true })\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	char want[128];
	snprintf(want, sizeof want, "220 %s dyn 127.0.0.1:%d", HARNESS_HOSTNAME, env->port);
	smtpc_expect(c, want);
	static const char *const rcpts[] = { "b@example.net", NULL };
	char ids[1][33];
	smtpc_transaction(c, "a@example.com", rcpts, "Subject: t\r\n\r\nhello\r\n", ids);
	/* the connection meta set by the hooks reaches the message meta */
	static const char *const needles[] = { "\"x_dyn\":\"yes\"", "\"x_from\":\"127.0.0.1:",
					       "\"x_list\":[1,\"two\",true]", "\"reception_protocol\":\"ESMTP\"", NULL };
	free(expect_spooled(env, ids[0], "hello", needles, NULL));
	finish(env, c);
}
END_TEST

START_TEST(test_reject_before_banner_ends_session)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_connection_accepted', function(conn_meta)\n"
		"  kumo.reject(554, '5.7.1 go away')\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, "554 5.7.1 go away");
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	finish(env, c);
}
END_TEST

START_TEST(test_dynamic_parameters_bad_table)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)\n"
		"  return { listen = '127.0.0.1:1' }\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, TROUBLE);
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	finish(env, c);
}
END_TEST

START_TEST(test_ehlo_extensions_replaced)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_ehlo', function(domain, conn_meta, extensions)\n"
		"  if domain == 'reject.example' then kumo.reject(550, '5.7.1 not you') end\n"
		"  table.insert(extensions, 'X-FOO')\n"
		"  return extensions\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_chat(c, "EHLO reject.example", "550 5.7.1 not you");
	smtpc_cmd(c, "EHLO client.example");
	char *t = smtpc_expect_code(c, 250);
	ck_assert_msg(strstr(t, "\n250 X-FOO") != NULL, "EHLO reply: %s", t);
	ck_assert_msg(strstr(t, "250-PIPELINING") != NULL, "EHLO reply: %s", t);
	free(t);
	finish(env, c);
}
END_TEST

START_TEST(test_disconnect_modes)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_mail_from', function(sender, conn_meta)\n"
		"  if sender.domain == 'force.example' then kumo.disconnect(451, 'no thank you') end\n"
		"  if sender.domain == 'follow.example' then kumo.disconnect(451, 'no thank you', 'FollowWith421') end\n"
		"  if sender.domain == 'if421.example' then kumo.disconnect(451, '4.7.1 later', 'If421') end\n"
		"  if sender.domain == 'bad.example' then kumo.disconnect(451, 'x', 'Sometimes') end\n"
		"  if sender.domain == 'reject.example' then kumo.reject(550, '5.7.1 rejected ' .. tostring(sender)) end\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_chat(c, "MAIL FROM:<a@force.example>", "451 no thank you");
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	smtpc_close(c);

	c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_chat(c, "MAIL FROM:<a@follow.example>", "451 no thank you");
	smtpc_expect(c, "421 " HARNESS_HOSTNAME " disconnecting due to previous error");
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	smtpc_close(c);

	c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_chat(c, "MAIL FROM:<a@if421.example>", "451 4.7.1 later");
	smtpc_chat(c, "MAIL FROM:<u@reject.example>", "550 5.7.1 rejected u@reject.example");
	smtpc_chat(c, "MAIL FROM:<a@bad.example>", TROUBLE);
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	finish(env, c);
}
END_TEST

START_TEST(test_lua_error_is_technical_difficulties)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_rcpt_to', function(recipient, conn_meta)\n"
		"  if recipient.user == 'boom' then error('boom') end\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<ok@example.net>", "250 OK <ok@example.net>");
	smtpc_chat(c, "RCPT TO:<boom@example.net>", TROUBLE);
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	ck_assert(harness_output_wait_regex(env, "policy.lua:[0-9]+: boom", 5));
	finish(env, c);
}
END_TEST

START_TEST(test_rewrite_response)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_rewrite_response', function(status, response, command, conn_meta)\n"
		"  if command == nil and status == 220 then return nil, response .. ' (rewritten)' end\n"
		"  if command == 'DATA' and status == 250 then return 250, 'super fantastic!\\n' .. response end\n"
		"  if command == 'NOOP boom' then error('rewrite failed') end\n"
		"  if command == 'NOOP close' then return 421, '4.7.0 closing' end\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER " (rewritten)");
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	smtpc_send(c, "Subject: t\r\n\r\nhi\r\n.\r\n", 21);
	char *t = smtpc_expect_code(c, 250);
	ck_assert_msg(strncmp(t, "250-super fantastic!\n250 OK ids=", 32) == 0, "DATA reply: %s", t);
	free(t);
	smtpc_chat(c, "NOOP boom", "250 the goggles do nothing");
	smtpc_chat(c, "NOOP close", "421 4.7.0 closing");
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	finish(env, c);
}
END_TEST

START_TEST(test_listener_domain_relay)
{
	struct harness_env *env = start_with(
		"kumo.on('get_listener_domain', function(domain, listener, conn_meta)\n"
		"  if domain == 'example.com' then return kumo.make_listener_domain { relay_to = true } end\n"
		"  if domain == 'send.example' then return kumo.make_listener_domain { relay_from = { '127.0.0.0/8' } } end\n"
		"end)\n", "relay_hosts = {}");
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_chat(c, "MAIL FROM:<a@other.example>", "250 OK <a@other.example>");
	smtpc_chat(c, "RCPT TO:<x@example.com>", "250 OK <x@example.com>");
	char want[128];
	snprintf(want, sizeof want, "550 5.7.1 relaying not permitted for 127.0.0.1:%d", c->local_port);
	smtpc_chat(c, "RCPT TO:<x@example.net>", want);
	smtpc_chat(c, "RSET", "250 Reset state");
	smtpc_chat(c, "MAIL FROM:<a@send.example>", "250 OK <a@send.example>");
	smtpc_chat(c, "RCPT TO:<x@example.net>", "250 OK <x@example.net>");
	finish(env, c);
}
END_TEST

START_TEST(test_dead_policyd_gives_4xx_never_250)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_mail_from', function(sender, conn_meta)\n"
		"  if sender.domain == 'slow.example' then\n"
		"    local t = os.clock() while os.clock() - t < 3 do end\n"
		"  end\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	pid_t pids[4];
	int n = harness_children(env->pid, "kumo-policyd", pids, 4);
	ck_assert_int_eq(n, 1);
	/* policyd dies while it holds the call: the client gets a 4xx */
	smtpc_cmd(c, "MAIL FROM:<a@slow.example>");
	usleep(500 * 1000);
	kill(pids[0], SIGKILL);
	smtpc_expect(c, TROUBLE);
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	smtpc_close(c);
	ck_assert(harness_output_wait_regex(env, "kumo-policyd\\[[0-9]+\\] killed by signal 9", 5));
	/* calls made while it restarts wait for the new policyd (the master
	 * holds the listening socket), so policy keeps being applied */
	c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	n = harness_wait_children(env->pid, "kumo-policyd", 1, pids, 4, 10);
	ck_assert_int_eq(n, 1);
	finish(env, c);
}
END_TEST

START_TEST(test_double_registration_is_a_load_error)
{
	struct harness_env *env = harness_env_new();
	char *tmpl = NULL;
	if (asprintf(&tmpl, "%s%s", HARNESS_POLICY_TEMPLATE,
		     "kumo.on('smtp_server_ehlo', function() end)\n"
		     "kumo.on('smtp_server_ehlo', function() end)\n") < 0)
		abort();
	harness_write_policy(env, tmpl, NULL);
	free(tmpl);
	const char *argv[] = { "kumod", "--policy", env->policy, "--validate", NULL };
	char *out = NULL;
	int status = harness_run(env, argv, 20, &out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "exit %s", harness_status_str(status));
	ck_assert_msg(strstr(out, "already has a handler defined at") != NULL, "output: %s", out);
	free(out);
	harness_env_free(env);
}
END_TEST

START_TEST(test_message_received_edits_and_meta)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_message_received', function(msg, conn_meta)\n"
		"  msg:prepend_header('X-Added', 'yes')\n"
		"  msg:set_meta('x_subject', msg:get_first_named_header_value('subject'))\n"
		"  msg:set_meta('x_has_received', msg:get_data():find('Received: from client.example', 1, true) ~= nil)\n"
		"  msg:set_meta('x_rcpt', tostring(msg:recipient()))\n"
		"  if msg:sender().domain == 'blackhole.example' then msg:set_meta('queue', 'null') end\n"
		"  if msg:sender().domain == 'reject.example' then kumo.reject(550, '5.7.1 not this one') end\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_cmd(c, "EHLO client.example");
	free(smtpc_expect_code(c, 250));
	static const char *const rcpts[] = { "b@example.net", NULL };
	char ids[1][33];
	smtpc_transaction(c, "a@example.com", rcpts, "Subject: Hello there\r\n\r\nbody\r\n", ids);
	static const char *const needles[] = { "\"x_subject\":\"Hello there\"", "\"x_has_received\":true",
					       "\"x_rcpt\":\"b@example.net\"", NULL };
	size_t len;
	char *data = expect_spooled(env, ids[0], "body", needles, &len);
	/* X-KumoRef first, then what the hook prepended, then Received */
	ck_assert_msg(strncmp(data, "X-KumoRef: ", 11) == 0, "stored: %.300s", data);
	char *added = strstr(data, "X-Added: yes\r\nReceived: from client.example");
	ck_assert_msg(added != NULL, "stored: %.400s", data);
	free(data);

	/* queue 'null': accepted, logged, not stored */
	smtpc_transaction(c, "a@blackhole.example", rcpts, "Subject: x\r\n\r\nbody\r\n", ids);
	expect_not_spooled(env, ids[0]);
	cJSON *rec = harness_log_wait(env, "Reception", ids[0]);
	ck_assert_ptr_nonnull(rec);
	cJSON_Delete(rec);

	/* a rejection rejects the transaction; nothing stored */
	smtpc_chat(c, "MAIL FROM:<a@reject.example>", "250 OK <a@reject.example>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	smtpc_send(c, "Subject: x\r\n\r\nbody\r\n.\r\n", 23);
	smtpc_expect(c, "550 5.7.1 not this one");
	/* the transaction is gone: a new one starts cleanly */
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	finish(env, c);
}
END_TEST

START_TEST(test_smtp_server_data_changes_recipients)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_data', function(msg, conn_meta)\n"
		"  msg:set_recipient({ 'c@example.org', 'd@example.org' })\n"
		"  msg:append_header('X-Data', 'seen')\n"
		"  msg:set_meta('x_count', #msg:recipient_list())\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	smtpc_send(c, "Subject: x\r\n\r\nbody\r\n.\r\n", 23);
	char *reply = smtpc_expect_code(c, 250);
	char ids[2][33];
	int end = 0;
	ck_assert_msg(sscanf(reply, "250 OK ids=%32s %32s%n", ids[0], ids[1], &end) == 2 && reply[end] == '\0',
		      "DATA reply: %s", reply);
	free(reply);
	static const char *const n0[] = { "\"recipient\":\"c@example.org\"", "\"x_count\":2", NULL };
	static const char *const n1[] = { "\"recipient\":\"d@example.org\"", NULL };
	size_t len;
	char *d0 = expect_spooled(env, ids[0], "Subject: x\r\nX-Data: seen\r\n\r\nbody", n0, &len);
	char *d1 = expect_spooled(env, ids[1], "X-Data: seen", n1, &len);
	free(d0);
	free(d1);
	finish(env, c);
}
END_TEST

/* smtp_server_data and smtp_server_message_received together: kumo-smtpd
 * sends the second along with the first (lib/ipc.h "then") when the
 * transaction is one message, and policyd runs it only if data changed
 * nothing but meta.  Either way each handler sees what it would see one
 * after the other: data's meta, the stored message's id, the edits. */
START_TEST(test_data_then_message_received)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_data', function(msg, conn_meta)\n"
		"  conn_meta:set_meta('x_data_conn', 'c1')\n"
		"  msg:set_meta('x_data', 'd1')\n"
		"  msg:set_meta('x_saw_conn', msg:get_meta('received_via') ~= nil)\n"
		"  msg:set_meta('hostname', 'h2')\n"
		"  local s = msg:get_first_named_header_value('subject')\n"
		"  if s == 'hdr' then msg:append_header('X-Data', 'seen') end\n"
		"  if s == 'rcpt' then msg:set_recipient('c@example.org') end\n"
		"  if s == 'reject' then kumo.reject(550, '5.7.1 data says no') end\n"
		"end)\n"
		"kumo.on('smtp_server_message_received', function(msg, conn_meta)\n"
		"  local n = (conn_meta:get_meta('x_n') or 0) + 1\n"
		"  conn_meta:set_meta('x_n', n)\n"
		"  msg:set_meta('x_rcvd', { n, msg:id(), msg:get_meta('x_data'),\n"
		"    conn_meta:get_meta('x_data_conn'), tostring(msg:recipient()),\n"
		"    msg:get_first_named_header_value('x-data') or 'none',\n"
		"    msg:get_first_named_header_value('received') ~= nil })\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_cmd(c, "EHLO client.example");
	free(smtpc_expect_code(c, 250));
	static const char *const one[] = { "b@example.net", NULL };
	static const char *const two[] = { "b@example.net", "e@example.org", NULL };
	static const struct {
		const char *subject;
		const char *const *rcpts;
		int n_ids;
		const char *tail; /* of x_rcvd, after the id */
	} txns[] = {
		{ "plain", one, 1, "\"d1\",\"c1\",\"b@example.net\",\"none\",true]" },
		{ "hdr", one, 1, "\"d1\",\"c1\",\"b@example.net\",\"seen\",true]" },
		{ "rcpt", one, 1, "\"d1\",\"c1\",\"c@example.org\",\"none\",true]" },
		{ "two", two, 2, "\"d1\",\"c1\",\"b@example.net\",\"none\",true]" },
	};
	int n = 0;
	for (size_t i = 0; i < sizeof txns / sizeof txns[0]; i++) {
		char body[64], ids[2][33];
		snprintf(body, sizeof body, "Subject: %s\r\n\r\nbody\r\n", txns[i].subject);
		smtpc_cmd(c, "MAIL FROM:<a@example.com>");
		free(smtpc_expect_code(c, 250));
		for (const char *const *r = txns[i].rcpts; *r; r++) {
			char cmd[80];
			snprintf(cmd, sizeof cmd, "RCPT TO:<%s>", *r);
			smtpc_cmd(c, cmd);
			free(smtpc_expect_code(c, 250));
		}
		smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
		smtpc_send(c, body, strlen(body));
		smtpc_send(c, ".\r\n", 3);
		smtpc_expect_ids(c, txns[i].n_ids, ids);
		/* the first message of the transaction; its Received header once */
		char want[300];
		snprintf(want, sizeof want, "\"x_rcvd\":[%d,\"%s\",%s", ++n, ids[0], txns[i].tail);
		/* the message's meta began as the connection's; a name the
		 * handler set again changed where it was */
		const char *const needles[] = { want, "\"x_data\":\"d1\"", "\"x_saw_conn\":true",
						 "\"hostname\":\"h2\"", NULL };
		char *data = expect_spooled(env, ids[0], "body", needles, NULL);
		char *rcv = strstr(data, "Received: from client.example");
		ck_assert_msg(rcv && !strstr(rcv + 1, "Received:") && strstr(rcv, ids[0]),
			      "txn %zu stored: %.500s", i, data);
		free(data);
		n += txns[i].n_ids - 1;
	}
	/* data's reject ends the transaction before message_received */
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	const char *rej = "Subject: reject\r\n\r\nbody\r\n.\r\n";
	smtpc_send(c, rej, strlen(rej));
	smtpc_expect(c, "550 5.7.1 data says no");
	/* and the connection's x_n went on from where the last message left it */
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	const char *last = "Subject: last\r\n\r\nbody\r\n.\r\n";
	smtpc_send(c, last, strlen(last));
	char ids[1][33];
	smtpc_expect_ids(c, 1, ids);
	char want[200];
	snprintf(want, sizeof want, "\"x_rcvd\":[%d,\"%s\",\"d1\"", n + 1, ids[0]);
	const char *const needles[] = { want, NULL };
	free(expect_spooled(env, ids[0], "body", needles, NULL));
	finish(env, c);
}
END_TEST

/* A pipelined RCPT after a MAIL: kumo-smtpd sends smtp_server_rcpt_to
 * along with smtp_server_mail_from (lib/ipc.h "then").  The RCPT's handler
 * must see the metadata the MAIL's left, run once per RCPT, and not at all
 * after a rejected MAIL. */
START_TEST(test_pipelined_mail_then_rcpt)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_mail_from', function(sender, conn_meta)\n"
		"  conn_meta:set_meta('x_mail', sender.email)\n"
		"  if sender.domain == 'reject.example' then kumo.reject(550, '5.7.1 not from you') end\n"
		"end)\n"
		"kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)\n"
		"  conn_meta:set_meta('x_calls', (conn_meta:get_meta('x_calls') or 0) + 1)\n"
		"  conn_meta:set_meta('x_seen', conn_meta:get_meta('x_mail') .. '>' .. rcpt.email)\n"
		"  if rcpt.user == 'no' then kumo.reject(550, '5.1.1 no such user') end\n"
		"end)\n"
		"kumo.on('smtp_server_message_received', function(msg, conn_meta)\n"
		"  msg:set_meta('x_got', { conn_meta:get_meta('x_calls'), conn_meta:get_meta('x_seen') })\n"
		"end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_cmd(c, "EHLO client.example");
	free(smtpc_expect_code(c, 250));
	char ids[1][33];

	const char *g1 = "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n";
	smtpc_send(c, g1, strlen(g1));
	smtpc_expect(c, "250 OK <a@example.com>");
	smtpc_expect(c, "250 OK <b@example.net>");
	smtpc_expect(c, "354 Send body; end with CRLF.CRLF");
	smtpc_send(c, "Subject: 1\r\n\r\nx\r\n.\r\n", 20);
	smtpc_expect_ids(c, 1, ids);
	static const char *const n1[] = { "\"x_got\":[1,\"a@example.com>b@example.net\"]", NULL };
	free(expect_spooled(env, ids[0], "x\r\n", n1, NULL));

	/* the MAIL is refused: its RCPT never reaches the handler */
	const char *g2 = "MAIL FROM:<a@reject.example>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n";
	smtpc_send(c, g2, strlen(g2));
	smtpc_expect(c, "550 5.7.1 not from you");
	smtpc_expect(c, "503 5.5.0 MAIL FROM must be issued first");
	smtpc_expect(c, "503 5.5.0 MAIL FROM must be issued first");

	/* the first RCPT refused by its handler, the second accepted */
	const char *g3 = "MAIL FROM:<c@example.com>\r\nRCPT TO:<no@example.net>\r\n"
			 "RCPT TO:<d@example.net>\r\nDATA\r\n";
	smtpc_send(c, g3, strlen(g3));
	smtpc_expect(c, "250 OK <c@example.com>");
	smtpc_expect(c, "550 5.1.1 no such user");
	smtpc_expect(c, "250 OK <d@example.net>");
	smtpc_expect(c, "354 Send body; end with CRLF.CRLF");
	smtpc_send(c, "Subject: 3\r\n\r\ny\r\n.\r\n", 20);
	smtpc_expect_ids(c, 1, ids);
	static const char *const n3[] = { "\"x_got\":[3,\"c@example.com>d@example.net\"]", NULL };
	free(expect_spooled(env, ids[0], "y\r\n", n3, NULL));

	/* one command at a time, as before */
	smtpc_chat(c, "MAIL FROM:<e@example.com>", "250 OK <e@example.com>");
	smtpc_chat(c, "RCPT TO:<f@example.net>", "250 OK <f@example.net>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	smtpc_send(c, "Subject: 4\r\n\r\nz\r\n.\r\n", 20);
	smtpc_expect_ids(c, 1, ids);
	static const char *const n4[] = { "\"x_got\":[4,\"e@example.com>f@example.net\"]", NULL };
	free(expect_spooled(env, ids[0], "z\r\n", n4, NULL));
	finish(env, c);
}
END_TEST

/* Seed 002, first example, as written (only the listen address differs):
 * via blocks for 10.0.0.1/10.0.0.2 do not match a loopback connection. */
#define SEED002_VERBATIM                                                         \
	"local kumo = require 'kumo'\n"                                        \
	"kumo.on('init', function()\n"                                         \
	"  kumo.define_spool { name = 'data', path = '@DIR@/spool/data' }\n"   \
	"  kumo.define_spool { name = 'meta', path = '@DIR@/spool/meta' }\n"   \
	"  kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' } }\n" \
	"kumo.start_esmtp_listener {\n"                                        \
	"listen = '127.0.0.1:@PORT@',\n"                                       \
	"}\n"                                                                  \
	"end)\n"                                                               \
	"kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)\n" \
	"return {\n"                                                           \
	"via = {\n"                                                            \
	"-- When clients connect to this server via its 10.0.0.1 IP\n"        \
	"['10.0.0.1'] = {\n"                                                   \
	"hostname = 'mx.example-customer.com',\n"                             \
	"tls_certificate = '/path/to/customer1.cert',\n"                      \
	"tls_private_key = '/path/to/customer1.key',\n"                       \
	"},\n"                                                                 \
	"['10.0.0.2'] = {\n"                                                   \
	"hostname = 'mx.other-customer.com',\n"                               \
	"tls_certificate = '/path/to/customer2.cert',\n"                      \
	"tls_private_key = '/path/to/customer2.key',\n"                       \
	"},\n"                                                                 \
	"},\n"                                                                 \
	"}\n"                                                                  \
	"end)\n"

START_TEST(test_seed002_verbatim)
{
	struct harness_env *env = harness_env_new();
	harness_write_policy(env, SEED002_VERBATIM, NULL);
	harness_start(env);
	char host[256], want[300];
	gethostname(host, sizeof host);
	host[sizeof host - 1] = 0;
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	snprintf(want, sizeof want, "220 %s KumoMTA", host);
	smtpc_expect(c, want);
	smtpc_chat(c, "NOOP", "250 the goggles do nothing");
	finish(env, c);
}
END_TEST

/* Seed 002, second example: the overrides in a TOML file with
 * [via.'IP'] sections, loaded through kumo.memoize. */
START_TEST(test_seed002_toml_and_memoize)
{
	struct harness_env *env = harness_env_new();
	const char *toml = "[via.'127.0.0.1']\n"
			   "hostname = 'mx.example-customer.com'\n"
			   "\n"
			   "[via.'10.0.0.2']\n"
			   "hostname = 'mx.other-customer.com'\n"
			   "tls_certificate = '/path/to/customer2.cert'\n"
			   "tls_private_key = '/path/to/customer2.key'\n";
	harness_write_file(env, "listener_params.toml", toml, strlen(toml));
	char *tmpl = NULL;
	if (asprintf(&tmpl, "%s%s", HARNESS_POLICY_TEMPLATE,
		     "local loads = 0\n"
		     "local cached_load = kumo.memoize(function(path)\n"
		     "  loads = loads + 1\n"
		     "  local t = kumo.serde.toml_load(path)\n"
		     "  t.meta = { x_loads = loads }\n"
		     "  return t\n"
		     "end, { name = 'listener_params', ttl = '5 minutes', capacity = 10 })\n"
		     "kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)\n"
		     "  return cached_load '@DIR@/listener_params.toml'\n"
		     "end)\n") < 0)
		abort();
	/* the template sets hostname; the TOML's via block overrides it */
	harness_write_policy(env, tmpl, NULL);
	free(tmpl);
	harness_start(env);
	static const char *const rcpts[] = { "b@example.net", NULL };
	static const char *const needles[] = { "\"x_loads\":1", "\"hostname\":\"mx.example-customer.com\"", NULL };
	for (int i = 0; i < 3; i++) {
		struct smtpc *c = smtpc_connect(env, env->port, NULL);
		smtpc_expect(c, "220 mx.example-customer.com KumoMTA");
		char ids[1][33];
		smtpc_transaction(c, "a@example.com", rcpts, "Subject: t\r\n\r\nx\r\n", ids);
		size_t len;
		/* loaded once: every session sees the first load's count */
		free(expect_spooled(env, ids[0], "x\r\n", needles, &len));
		smtpc_close(c);
	}
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

/* A smtp_server_mail_from handler for senders one@ and two@ that returns
 * only once the other's has started (a file each in @DIR@/rv), or rejects
 * after 20 s alone. */
#define RENDEZVOUS_HANDLER \
	"local function exists(p) local f = io.open(p) if f then f:close() return true end return false end\n" \
	"kumo.on('smtp_server_mail_from', function(sender, conn_meta)\n" \
	"  local me, other = '@DIR@/rv/' .. sender.user, '@DIR@/rv/' .. (sender.user == 'one' and 'two' or 'one')\n" \
	"  io.open(me, 'w'):close()\n" \
	"  local t = os.time()\n" \
	"  while not exists(other) do\n" \
	"    if os.time() - t > 20 then kumo.reject(451, '4.3.0 alone') end\n" \
	"  end\n" \
	"end)\n"

/* Two hooks that each wait for the other can only both finish when two Lua
 * states run at once: a proof of parallel policy workers, with no timing
 * assertion (a single state would fall through the 20 s wait and reject). */
START_TEST(test_lua_workers_run_in_parallel)
{
	struct harness_env *env = start_with(RENDEZVOUS_HANDLER, NULL);
	/* kumo-policyd may run as nobody: the rendezvous directory is open to it */
	char *rv = harness_path(env, "rv");
	ck_assert_int_eq(mkdir(rv, 0777), 0);
	ck_assert_int_eq(chmod(rv, 0777), 0);
	free(rv);
	struct smtpc *a = smtpc_connect(env, env->port, NULL);
	struct smtpc *b = smtpc_connect(env, env->port, NULL);
	smtpc_expect(a, BANNER);
	smtpc_expect(b, BANNER);
	smtpc_cmd(a, "MAIL FROM:<one@example.com>");
	smtpc_cmd(b, "MAIL FROM:<two@example.com>");
	smtpc_expect(a, "250 OK <one@example.com>");
	smtpc_expect(b, "250 OK <two@example.com>");
	smtpc_close(b);
	finish(env, a);
}
END_TEST

/* Two requests that reach kumo-policyd in one read are queued for the
 * worker that read them, which answers them in turn; a handler that does
 * not return must not hold the other one: another worker takes it (woken
 * by the steal timer, or at the latest by its idle tick).  policyd runs
 * here by itself, on a listening socket of the test's, so that both frames
 * go in one write().  The handlers wait for each other as above: if the
 * reader kept the second request, the first would be rejected after 20 s. */
START_TEST(test_policyd_shares_one_read_between_workers)
{
	struct harness_env *env = harness_env_new();
	char *tmpl = NULL;
	if (asprintf(&tmpl, "%s%s", HARNESS_POLICY_TEMPLATE, RENDEZVOUS_HANDLER) < 0)
		abort();
	harness_write_policy(env, tmpl, NULL);
	free(tmpl);
	char *rv = harness_path(env, "rv");
	ck_assert_int_eq(mkdir(rv, 0777), 0);
	free(rv);

	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int n = snprintf(sun.sun_path, sizeof sun.sun_path, "%s/pd.sock", env->dir);
	ck_assert(n > 0 && (size_t)n < sizeof sun.sun_path);
	int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_ge(lfd, 0);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sun, sizeof sun), 0);
	ck_assert_int_eq(listen(lfd, 4), 0);
	char *prog = harness_bin_path("kumo-policyd");
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (dup2(lfd, 3) < 0)
			_exit(127);
		execl(prog, "kumo-policyd", "--policy", env->policy, "--lua-workers", "2", (char *)NULL);
		_exit(127);
	}
	free(prog);
	close(lfd);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);

	/* both requests in one write */
	struct evbuffer *both = evbuffer_new();
	const char *users[2] = { "one", "two" };
	for (int i = 0; i < 2; i++) {
		char json[256];
		snprintf(json, sizeof json,
			 "{\"id\":%d,\"op\":\"event\",\"event\":\"smtp_server_mail_from\","
			 "\"args\":[{\"__addr\":\"%s@example.com\"}],\"meta_pos\":1,\"meta\":{}}",
			 i + 1, users[i]);
		ck_assert_int_eq(frame_encode_text(both, json, strlen(json)), 0);
	}
	size_t len = evbuffer_get_length(both);
	ck_assert_int_eq(write(fd, evbuffer_pullup(both, -1), len), (ssize_t)len);
	evbuffer_free(both);

	bool seen[2] = { false, false };
	for (int i = 0; i < 2; i++) {
		cJSON *reply = NULL;
		char err[256];
		ck_assert_msg(frame_recv_fd(fd, &reply, 60000, err, sizeof err) == 0, "reply %d: %s", i, err);
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(reply, "id");
		const char *result = harness_json_str(reply, "result");
		char *text = cJSON_PrintUnformatted(reply);
		ck_assert_msg(cJSON_IsNumber(id) && (id->valueint == 1 || id->valueint == 2), "reply: %s", text);
		ck_assert_msg(result && strcmp(result, "ok") == 0, "reply: %s", text);
		seen[id->valueint - 1] = true;
		free(text);
		cJSON_Delete(reply);
	}
	ck_assert(seen[0] && seen[1]);
	close(fd);
	kill(pid, SIGTERM);
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "kumo-policyd: %s", harness_status_str(status));
	harness_env_free(env);
}
END_TEST

/* The examples of seed pages 003 (smtp_server_rewrite_response) and 004
 * (kumo.disconnect), each pasted verbatim after the harness's init. */
static const struct seed_row {
	const char *handler;
	const char *const replies[3]; /* to MAIL FROM, then what follows */
	int eof;                      /* the session ends after them */
} seed_rows[] = {
	{ "kumo.on('smtp_server_mail_from', function(sender)\n"
	  "  kumo.disconnect(421, 'mta.example.com go away!')\n"
	  "  -- this line is not reached\n"
	  "  -- The service responds to the peer with '421 mta.example.com go away!'\n"
	  "  -- and then drops the connection\n"
	  "end)\n",
	  { "421 mta.example.com go away!", NULL }, 1 },
	{ "kumo.on('smtp_server_mail_from', function(sender)\n"
	  "  kumo.disconnect(451, 'no thank you')\n"
	  "  -- this line is not reached\n"
	  "  -- The service responds to the peer with '451 no thank you'\n"
	  "  -- and then drops the connection\n"
	  "end)\n",
	  { "451 no thank you", NULL }, 1 },
	{ "kumo.on('smtp_server_mail_from', function(sender)\n"
	  "  kumo.disconnect(451, 'no thank you', 'FollowWith421')\n"
	  "  -- this line is not reached\n"
	  "  -- The service responds to the peer with '451 no thank you\\r\\n421 HOSTNAME disconnecting due to previous error'\n"
	  "  -- and then drops the connection\n"
	  "end)\n",
	  { "451 no thank you", "421 " HARNESS_HOSTNAME " disconnecting due to previous error", NULL }, 1 },
	{ "kumo.on(\n"
	  "'smtp_server_rewrite_response',\n"
	  "function(status, response, command, conn_meta)\n"
	  "if command == 'DATA' and status == 250 then\n"
	  "return 250, 'super fantastic!\\n' .. response\n"
	  "end\n"
	  "-- leave the status and response unchanged\n"
	  "end\n"
	  ")\n",
	  { "250 OK <a@example.com>", NULL }, 0 },
};

START_TEST(test_seed_examples_verbatim)
{
	const struct seed_row *r = &seed_rows[_i];
	struct harness_env *env = start_with(r->handler, NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	smtpc_cmd(c, "MAIL FROM:<a@example.com>");
	for (int k = 0; r->replies[k]; k++)
		smtpc_expect(c, r->replies[k]);
	if (r->eof) {
		smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	} else {
		smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
		smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
		smtpc_send(c, "Subject: t\r\n\r\nx\r\n.\r\n", 20);
		char *t = smtpc_expect_code(c, 250);
		ck_assert_msg(strncmp(t, "250-super fantastic!\n250 OK ids=", 32) == 0, "DATA reply: %s", t);
		free(t);
	}
	finish(env, c);
}
END_TEST

/* Pipelined MAIL/RCPT/DATA/body with a handler on every step: each reply
 * comes from a policy callback, and the next command must see the state the
 * previous one left (the benchmark found DATA answered 503 here). */
START_TEST(test_pipelined_group_with_hooks)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_mail_from', function(sender, conn_meta) end)\n"
		"kumo.on('smtp_server_rcpt_to', function(recipient, conn_meta) end)\n"
		"kumo.on('smtp_server_ehlo', function(domain, conn_meta, ext) end)\n"
		"kumo.on('smtp_server_data', function(msg, conn_meta) end)\n"
		"kumo.on('smtp_server_message_received', function(msg, conn_meta) end)\n", NULL);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect(c, BANNER);
	const char *group = "EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
			    "DATA\r\nSubject: t\r\n\r\nx\r\n.\r\nMAIL FROM:<a@example.com>\r\n"
			    "RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\nSubject: u\r\n\r\ny\r\n.\r\n"
			    "QUIT\r\n";
	smtpc_send(c, group, strlen(group));
	free(smtpc_expect_code(c, 250));
	smtpc_expect(c, "250 OK <a@example.com>");
	smtpc_expect(c, "250 OK <b@example.net>");
	smtpc_expect(c, "354 Send body; end with CRLF.CRLF");
	char ids[2][33];
	smtpc_expect_ids(c, 1, ids);
	smtpc_expect(c, "250 OK <a@example.com>");
	smtpc_expect(c, "250 OK <b@example.net>");
	smtpc_expect(c, "250 OK <c@example.net>");
	smtpc_expect(c, "354 Send body; end with CRLF.CRLF");
	smtpc_expect_ids(c, 2, ids);
	smtpc_expect(c, "221 So long, and thanks for all the fish!");
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	finish(env, c);
}
END_TEST

/* Reads from fd until the bytes read so far contain want (or 5 s pass);
 * returns what was read, NUL-terminated. */
static char *raw_read_until(int fd, const char *want, char *buf, size_t cap)
{
	size_t have = 0;
	buf[0] = '\0';
	for (int i = 0; i < 50 && !strstr(buf, want) && have + 1 < cap; i++) {
		struct pollfd pf = { fd, POLLIN, 0 };
		if (poll(&pf, 1, 100) <= 0)
			continue;
		ssize_t r = recv(fd, buf + have, cap - 1 - have, 0);
		if (r <= 0)
			break;
		have += (size_t)r;
		buf[have] = '\0';
	}
	return buf;
}

/* RFC 2920 3.2: the replies to a pipelined group leave as a unit.  While a
 * slow rcpt_to hook runs for a RCPT the client sent behind its MAIL, the
 * MAIL reply is held and leaves with the RCPT and DATA replies in one
 * write, so the client's first read after sending the group has all three. */
START_TEST(test_pipelined_replies_leave_together)
{
	struct harness_env *env = start_with(
		"kumo.on('smtp_server_mail_from', function(sender, conn_meta) end)\n"
		"kumo.on('smtp_server_rcpt_to', function(recipient, conn_meta)\n"
		"  local t = os.clock() while os.clock() - t < 0.3 do end\n"
		"end)\n", NULL);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)env->port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	char buf[4096];
	ck_assert_ptr_nonnull(strstr(raw_read_until(fd, "\r\n", buf, sizeof buf), BANNER));
	const char *ehlo = "EHLO client.example\r\n";
	ck_assert_int_eq(send(fd, ehlo, strlen(ehlo), 0), (ssize_t)strlen(ehlo));
	ck_assert_ptr_nonnull(strstr(raw_read_until(fd, "\r\n250 ", buf, sizeof buf), "PIPELINING"));
	raw_read_until(fd, "STARTTLS\r\n", buf, sizeof buf); /* the rest of the EHLO reply */
	const char *group = "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n";
	ck_assert_int_eq(send(fd, group, strlen(group), 0), (ssize_t)strlen(group));
	struct pollfd pf = { fd, POLLIN, 0 };
	ck_assert_int_eq(poll(&pf, 1, 5000), 1);
	ssize_t r = recv(fd, buf, sizeof buf - 1, 0);
	ck_assert_int_gt(r, 0);
	buf[r] = '\0';
	ck_assert_msg(strstr(buf, "250 OK <a@example.com>\r\n250 OK <b@example.net>\r\n354 ") == buf,
		      "the first read after the group had:\n%s", buf);
	close(fd);
	finish(env, NULL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("e2e_policy");
	TCase *tc = harness_tcase("events");
	tcase_add_test(tc, test_dynamic_parameters_and_accepted);
	tcase_add_test(tc, test_reject_before_banner_ends_session);
	tcase_add_test(tc, test_dynamic_parameters_bad_table);
	tcase_add_test(tc, test_ehlo_extensions_replaced);
	tcase_add_test(tc, test_disconnect_modes);
	tcase_add_test(tc, test_lua_error_is_technical_difficulties);
	tcase_add_test(tc, test_rewrite_response);
	tcase_add_test(tc, test_listener_domain_relay);
	tcase_add_test(tc, test_dead_policyd_gives_4xx_never_250);
	tcase_add_test(tc, test_double_registration_is_a_load_error);
	tcase_add_test(tc, test_message_received_edits_and_meta);
	tcase_add_test(tc, test_smtp_server_data_changes_recipients);
	tcase_add_test(tc, test_data_then_message_received);
	tcase_add_test(tc, test_pipelined_mail_then_rcpt);
	tcase_add_test(tc, test_seed002_verbatim);
	tcase_add_test(tc, test_lua_workers_run_in_parallel);
	tcase_add_test(tc, test_policyd_shares_one_read_between_workers);
	tcase_add_test(tc, test_pipelined_group_with_hooks);
	tcase_add_test(tc, test_pipelined_replies_leave_together);
	tcase_add_loop_test(tc, test_seed_examples_verbatim, 0, (int)(sizeof seed_rows / sizeof seed_rows[0]));
	tcase_add_test(tc, test_seed002_toml_and_memoize);
	suite_add_tcase(s, tc);
	return harness_run_suite(s);
}
