/*
 * End-to-end relaying (issue 5): the real kumod accepts mail and its queue
 * manager delivers it to a sink SMTP server (t/tools/sink.c) on loopback,
 * retries, bounces, expires, survives kill -9 of the whole tree, speaks
 * STARTTLS to a sink that offers it, and resolves MX records against a DNS
 * server the test starts (t/tools/dnsd.c).
 */
#include "expect.h"
#include "harness.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* @QUEUE@, @PATH@, @LISTENER@ and @INIT@ are filled by policy(). */
#define RELAY_POLICY                                                             \
	"local kumo = require 'kumo'\n"                                        \
	"kumo.on('init', function()\n"                                         \
	"  kumo.define_spool { name = 'data', path = '@DIR@/spool/data' }\n"   \
	"  kumo.define_spool { name = 'meta', path = '@DIR@/spool/meta' }\n"   \
	"  kumo.configure_local_logs { log_dir = '@DIR@/logs' }\n"             \
	"  @INIT@\n"                                                           \
	"  kumo.start_esmtp_listener { listen = '127.0.0.1:@PORT@',"           \
	" hostname = 'mx.test.example', @LISTENER@ }\n"                        \
	"end)\n"                                                               \
	"kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)\n" \
	"  return kumo.make_queue_config { @QUEUE@ }\n"                        \
	"end)\n"                                                               \
	"kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)\n" \
	"  return kumo.make_egress_path { @PATH@ }\n"                          \
	"end)\n"                                                               \
	"@HANDLERS@\n"

static char *replace(const char *s, const char *key, const char *val)
{
	const char *p = strstr(s, key);
	if (!p)
		return strdup(s);
	size_t n = strlen(s) - strlen(key) + strlen(val) + 1;
	char *out = malloc(n);
	snprintf(out, n, "%.*s%s%s", (int)(p - s), s, val, p + strlen(key));
	return out;
}

/* Writes the relay policy with the given pieces (NULL: defaults), and
 * more handlers at the end. */
static void policy_h(struct harness_env *env, const char *init, const char *listener, const char *queue,
		     const char *path, const char *handlers)
{
	char *h = replace(RELAY_POLICY, "@HANDLERS@", handlers ? handlers : "");
	char *a = replace(h, "@INIT@", init ? init : "");
	free(h);
	char *b = replace(a, "@LISTENER@", listener ? listener : "");
	char *c = replace(b, "@QUEUE@", queue ? queue : "");
	char *d = replace(c, "@PATH@", path ? path : "enable_tls = 'Disabled', prohibited_hosts = {}");
	harness_write_policy(env, d, NULL);
	free(a);
	free(b);
	free(c);
	free(d);
}

static void policy(struct harness_env *env, const char *init, const char *listener, const char *queue,
		   const char *path)
{
	policy_h(env, init, listener, queue, path, NULL);
}

/* The usual queue config: everything to the sink at 127.0.0.1:port. */
static char *to_sink(int port, const char *more)
{
	char *q = malloc(512);
	snprintf(q, 512, "protocol = { smtp = { mx_list = { '127.0.0.1:%d' } } }, %s", port,
		 more ? more : "retry_interval = '1 seconds'");
	return q;
}

static pid_t sink_start(struct harness_env *env, int *port, const char *const extra[])
{
	char *dir = harness_path(env, "sink");
	mkdir(dir, 0755);
	const char *argv[16] = { "-d", dir };
	int n = 2;
	for (int i = 0; extra && extra[i] && n < 15; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	pid_t pid = harness_tool_start("sink", port, argv);
	free(dir);
	return pid;
}

/* A sink, and kumod started with a policy that relays every message to
 * it (listener and egress path extras as for policy); the sink's pid. */
static pid_t start_relaying_to_sink(struct harness_env *env, const char *listener, const char *path)
{
	int sport = 0;
	pid_t sink = sink_start(env, &sport, NULL);
	char *q = to_sink(sport, NULL);
	policy(env, NULL, listener, q, path);
	free(q);
	harness_start(env);
	return sink;
}

/* The sink's messages (sorted names), NULL-terminated. */
static char **sink_files(struct harness_env *env)
{
	char *dir = harness_path(env, "sink");
	char **v = calloc(1, sizeof *v);
	size_t n = 0;
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		if (l > 4 && strcmp(e->d_name + l - 4, ".eml") == 0) {
			v = realloc(v, (n + 2) * sizeof *v);
			size_t pl = strlen(dir) + l + 2;
			v[n] = malloc(pl);
			snprintf(v[n], pl, "%s/%s", dir, e->d_name);
			v[++n] = NULL;
		}
	}
	if (d)
		closedir(d);
	free(dir);
	return v;
}

/* Waits up to secs for the sink to hold n messages; returns how many. */
static size_t sink_wait(struct harness_env *env, size_t n, int secs)
{
	size_t have = 0;
	for (int i = 0; i < secs * 10; i++) {
		char **v = sink_files(env);
		have = harness_strv_len(v);
		harness_strv_free(v);
		if (have >= n)
			break;
		usleep(100000);
	}
	return have;
}

static char *sink_message(struct harness_env *env, size_t i)
{
	char **v = sink_files(env);
	char *text = NULL;
	if (i < harness_strv_len(v)) {
		size_t len;
		text = harness_slurp(v[i], &len);
	}
	harness_strv_free(v);
	return text;
}

static void send_msg(struct harness_env *env, const char *const rcpts[], const char *body, char ids[][33])
{
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect_prefix(c, "220 ");
	smtpc_cmd(c, "EHLO client.example");
	free(smtpc_expect_code(c, 250));
	smtpc_transaction(c, "sender@example.com", rcpts, body, ids);
	smtpc_cmd(c, "QUIT");
	free(smtpc_expect_code(c, 221));
	smtpc_close(c);
}

static int num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? (int)v->valuedouble : -1;
}

static int resp_code(const cJSON *rec)
{
	return num(cJSON_GetObjectItemCaseSensitive(rec, "response"), "code");
}

static cJSON *wait_record(struct harness_env *env, const char *type, const char *id)
{
	cJSON *r = harness_log_wait(env, type, id);
	if (!r) {
		char *sum = harness_logs_summary(env);
		char *ctx = harness_context(env);
		/* HFAIL: both together can pass Check's message limit */
		HFAIL("no %s record for %s within %d s\nrecords:\n%s\n%s", type, id ? id : "any",
		      HARNESS_LOG_TIMEOUT, sum, ctx);
	}
	return r;
}

/* Whether the message is still in the spool (not done). */
static int in_spool(struct harness_env *env, const char *id)
{
	struct harness_spooled sp;
	int found = harness_spool_lookup(env, id, 0, &sp);
	harness_spooled_free(&sp);
	return found;
}

static void stop_clean(struct harness_env *env)
{
	int killed = 0;
	int st = harness_stop(env, &killed);
	ck_assert_msg(!killed && WIFEXITED(st) && WEXITSTATUS(st) == 0, "kumod did not stop cleanly: %s",
		      harness_status_str(st));
}

/* ---- delivery ------------------------------------------------------------ */

START_TEST(test_single_delivery_headers_intact)
{
	struct harness_env *env = harness_env_new();
	pid_t sink = start_relaying_to_sink(env, NULL, NULL);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: relay me\r\nX-Custom: kept\r\n\r\nline one\r\n..leading dot\r\n", ids);
	cJSON *d = wait_record(env, "Delivery", ids[0]);
	ck_assert_int_eq(resp_code(d), 250);
	ck_assert_str_eq(harness_json_str(d, "queue"), "dest.example");
	ck_assert_int_eq(num(d, "num_attempts"), 1);
	ck_assert_str_eq(harness_json_str(d, "delivery_protocol"), "ESMTP");
	const cJSON *pa = cJSON_GetObjectItemCaseSensitive(d, "peer_address");
	ck_assert_str_eq(harness_json_str(pa, "addr"), "127.0.0.1");
	ck_assert_str_eq(harness_json_str(cJSON_GetObjectItemCaseSensitive(d, "response"), "command"), ".");
	cJSON_Delete(d);
	ck_assert_int_eq(sink_wait(env, 1, 10), 1);
	char *m = sink_message(env, 0);
	ck_assert_ptr_nonnull(m);
	ck_assert_msg(strstr(m, "X-Sink-Mail-From: sender@example.com\r\n"), "envelope sender: %s", m);
	ck_assert_msg(strstr(m, "X-Sink-Rcpt-To: rcpt@dest.example\r\n"), "envelope recipient: %s", m);
	ck_assert_msg(strstr(m, "\r\nReceived: from client.example"), "Received header: %s", m);
	ck_assert_msg(strstr(m, "Subject: relay me\r\nX-Custom: kept\r\n\r\nline one\r\n.leading dot\r\n"),
		      "headers and body (dot-unstuffed once in, stuffed again out): %s", m);
	free(m);
	/* delivered means gone from the spool */
	for (int i = 0; i < 50 && in_spool(env, ids[0]); i++)
		usleep(100000);
	ck_assert_msg(!in_spool(env, ids[0]), "delivered message still spooled");
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

/* kumo-smtpd's notice carries each message's spooled meta record, up to
 * 64 KiB; a larger one is read back from the spool by kumo-qmgr.  Both
 * kinds are delivered, with their meta. */
START_TEST(test_notice_with_and_without_meta)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	pid_t sink = sink_start(env, &sport, NULL);
	char *q = to_sink(sport, NULL);
	policy_h(env, NULL, NULL, q, NULL,
		 "kumo.on('smtp_server_message_received', function(msg)\n"
		 "  local n = tonumber(msg:get_first_named_header_value('x-pad'))\n"
		 "  msg:set_meta('x_pad', string.rep('p', n))\n"
		 "  msg:set_meta('tenant', 't' .. n)\n"
		 "end)\n");
	free(q);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char small[1][33], big[1][33];
	send_msg(env, rcpts, "Subject: small\r\nX-Pad: 10\r\n\r\nsmall body\r\n", small);
	send_msg(env, rcpts, "Subject: big\r\nX-Pad: 70000\r\n\r\nbig body\r\n", big);
	for (int i = 0; i < 2; i++) {
		cJSON *d = wait_record(env, "Delivery", i ? big[0] : small[0]);
		ck_assert_int_eq(resp_code(d), 250);
		/* the meta decided the queue: tenant@domain */
		ck_assert_str_eq(harness_json_str(d, "queue"), i ? "t70000@dest.example" : "t10@dest.example");
		cJSON_Delete(d);
	}
	ck_assert_int_eq(sink_wait(env, 2, 10), 2);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_multi_recipient_batch)
{
	struct harness_env *env = harness_env_new();
	pid_t sink = start_relaying_to_sink(env, "batch_handling = 'BatchByDomain'", NULL);
	/* one message for the three: one id */
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect_prefix(c, "220 ");
	smtpc_cmd(c, "EHLO client.example");
	free(smtpc_expect_code(c, 250));
	smtpc_chat(c, "MAIL FROM:<sender@example.com>", "250 OK <sender@example.com>");
	smtpc_chat(c, "RCPT TO:<one@dest.example>", "250 OK <one@dest.example>");
	smtpc_chat(c, "RCPT TO:<two@dest.example>", "250 OK <two@dest.example>");
	smtpc_chat(c, "RCPT TO:<three@dest.example>", "250 OK <three@dest.example>");
	smtpc_cmd(c, "DATA");
	free(smtpc_expect_code(c, 354));
	smtpc_send(c, "Subject: three\r\n\r\nto three\r\n.\r\n", 31);
	char ids[1][33];
	smtpc_expect_ids(c, 1, ids);
	smtpc_close(c);
	cJSON *d = wait_record(env, "Delivery", ids[0]);
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(d, "recipient");
	ck_assert_msg(cJSON_IsArray(r) && cJSON_GetArraySize(r) == 3, "recipient field of a batch");
	cJSON_Delete(d);
	ck_assert_int_eq(sink_wait(env, 1, 10), 1);
	char *m = sink_message(env, 0);
	ck_assert_msg(strstr(m, "X-Sink-Rcpt-To: one@dest.example\r\nX-Sink-Rcpt-To: two@dest.example\r\n"
				"X-Sink-Rcpt-To: three@dest.example\r\n"),
		      "one transaction with three recipients: %s", m);
	free(m);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_bifurcated_recipients)
{
	struct harness_env *env = harness_env_new();
	pid_t sink = start_relaying_to_sink(env, NULL, NULL);
	const char *rcpts[] = { "one@a.example", "two@b.example", NULL };
	char ids[2][33];
	send_msg(env, rcpts, "Subject: two\r\n\r\nsplit\r\n", ids);
	cJSON_Delete(wait_record(env, "Delivery", ids[0]));
	cJSON_Delete(wait_record(env, "Delivery", ids[1]));
	ck_assert_int_eq(sink_wait(env, 2, 10), 2);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_tempfail_then_success)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	const char *rules[] = { "--rule", "DOT:1:451 4.3.0 try again later", NULL };
	pid_t sink = sink_start(env, &sport, rules);
	char *q = to_sink(sport, NULL);
	policy(env, NULL, NULL, q, NULL);
	free(q);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: retry\r\n\r\nretry me\r\n", ids);
	cJSON *t = wait_record(env, "TransientFailure", ids[0]);
	ck_assert_int_eq(resp_code(t), 451);
	ck_assert_int_eq(num(t, "num_attempts"), 1);
	cJSON_Delete(t);
	/* still spooled between the tries */
	cJSON *d = wait_record(env, "Delivery", ids[0]);
	ck_assert_int_eq(num(d, "num_attempts"), 2);
	cJSON_Delete(d);
	ck_assert_int_eq(sink_wait(env, 1, 5), 1);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_permanent_failure_bounces)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	const char *rules[] = { "--rule", "RCPT:0:550 5.1.1 no such user", NULL };
	pid_t sink = sink_start(env, &sport, rules);
	char *q = to_sink(sport, NULL);
	policy(env, NULL, NULL, q, NULL);
	free(q);
	harness_start(env);
	const char *rcpts[] = { "nobody@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: bounce\r\n\r\nbounce me\r\n", ids);
	cJSON *b = wait_record(env, "Bounce", ids[0]);
	ck_assert_int_eq(resp_code(b), 550);
	const cJSON *resp = cJSON_GetObjectItemCaseSensitive(b, "response");
	ck_assert_str_eq(harness_json_str(resp, "content"), "no such user");
	ck_assert_str_eq(harness_json_str(resp, "command"), "RCPT TO");
	cJSON_Delete(b);
	for (int i = 0; i < 50 && in_spool(env, ids[0]); i++)
		usleep(100000);
	ck_assert(!in_spool(env, ids[0]));
	ck_assert_int_eq(sink_wait(env, 1, 1), 0);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_expiration)
{
	struct harness_env *env = harness_env_new();
	int dead = harness_free_port();
	char *q = to_sink(dead, "retry_interval = '1 seconds', max_age = '3 seconds'");
	policy(env, NULL, NULL, q, NULL);
	free(q);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: expire\r\n\r\nexpire me\r\n", ids);
	cJSON *t = wait_record(env, "TransientFailure", ids[0]);
	const cJSON *ec = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, "response"),
							    "enhanced_code");
	ck_assert_msg(num(ec, "class") == 4 && num(ec, "subject") == 4 && num(ec, "detail") == 1,
		      "connection refused is a 4.4.1");
	cJSON_Delete(t);
	cJSON *e = wait_record(env, "Expiration", ids[0]);
	ck_assert_int_ge(num(e, "num_attempts"), 2);
	cJSON_Delete(e);
	ck_assert(!in_spool(env, ids[0]));
	stop_clean(env);
	harness_env_free(env);
}
END_TEST

START_TEST(test_dead_then_alive_and_flush)
{
	struct harness_env *env = harness_env_new();
	int sport = harness_free_port();
	char *q = to_sink(sport, "retry_interval = '1 hours'");
	policy(env, NULL, NULL, q, NULL);
	free(q);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: later\r\n\r\nwait for me\r\n", ids);
	cJSON_Delete(wait_record(env, "TransientFailure", ids[0]));
	char *out = NULL;
	ck_assert_int_eq(harness_kumoctl(env, "queue-summary", &out), 0);
	ck_assert_msg(strstr(out, "dest.example") && strstr(out, "1 message(s): 1 waiting"),
		      "queue-summary: %s", out);
	free(out);
	ck_assert_int_eq(harness_kumoctl(env, "status", &out), 0);
	cJSON *st = cJSON_Parse(out);
	const cJSON *queue = cJSON_GetObjectItemCaseSensitive(st, "queue");
	ck_assert_msg(cJSON_IsObject(queue) && num(queue, "messages") == 1 && num(queue, "waiting") == 1,
		      "status: %s", out);
	cJSON_Delete(st);
	free(out);
	/* the next hop comes up; an hour is long: flush */
	pid_t sink = sink_start(env, &sport, NULL);
	ck_assert_int_eq(harness_kumoctl(env, "flush", &out), 0);
	ck_assert_msg(strstr(out, "1 waiting message(s)"), "flush: %s", out);
	free(out);
	cJSON *d = wait_record(env, "Delivery", ids[0]);
	ck_assert_int_eq(num(d, "num_attempts"), 2);
	cJSON_Delete(d);
	ck_assert_int_eq(sink_wait(env, 1, 5), 1);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_kill9_then_restart_delivers_all)
{
	struct harness_env *env = harness_env_new();
	int sport = harness_free_port();
	char *q = to_sink(sport, "retry_interval = '1 hours'");
	policy(env, NULL, NULL, q, NULL);
	free(q);
	harness_start(env);
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect_prefix(c, "220 ");
	smtpc_cmd(c, "EHLO client.example");
	free(smtpc_expect_code(c, 250));
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	for (int i = 0; i < 100; i++) {
		char body[100], ids[1][33];
		snprintf(body, sizeof body, "Subject: n%d\r\n\r\nmarker-%03d\r\n", i, i);
		smtpc_transaction(c, "sender@example.com", rcpts, body, ids);
	}
	smtpc_close(c);
	harness_kill9(env);
	pid_t sink = sink_start(env, &sport, NULL);
	harness_start(env);
	size_t got = sink_wait(env, 100, 40);
	ck_assert_msg(got == 100, "%zu of 100 acknowledged messages arrived after kill -9 and restart", got);
	/* each exactly once */
	char **v = sink_files(env);
	int seen[100] = { 0 };
	for (size_t i = 0; v[i]; i++) {
		size_t len;
		char *m = harness_slurp(v[i], &len);
		char *p = m ? strstr(m, "marker-") : NULL;
		if (p)
			seen[atoi(p + 7) % 100]++;
		free(m);
	}
	harness_strv_free(v);
	for (int i = 0; i < 100; i++)
		ck_assert_msg(seen[i] == 1, "marker-%03d arrived %d times", i, seen[i]);
	stop_clean(env);
	ck_assert_int_eq(sink_wait(env, 101, 1), 100);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_starttls_to_sink)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	const char *tls[] = { "--tls-self-signed", NULL };
	pid_t sink = sink_start(env, &sport, tls);
	char *q = to_sink(sport, NULL);
	policy(env, NULL, NULL, q, "enable_tls = 'OpportunisticInsecure', prohibited_hosts = {}");
	free(q);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: tls\r\n\r\nover tls\r\n", ids);
	cJSON *d = wait_record(env, "Delivery", ids[0]);
	const char *ver = harness_json_str(d, "tls_protocol_version");
	ck_assert_msg(ver && strncmp(ver, "TLSv1.", 6) == 0, "tls_protocol_version in the Delivery record");
	cJSON_Delete(d);
	ck_assert_int_eq(sink_wait(env, 1, 5), 1);
	char *m = sink_message(env, 0);
	ck_assert_msg(strstr(m, "X-Sink-TLS: TLSv1."), "the sink saw TLS: %s", m);
	free(m);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_opportunistic_verifying_fails_on_self_signed)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	const char *tls[] = { "--tls-self-signed", NULL };
	pid_t sink = sink_start(env, &sport, tls);
	char *q = to_sink(sport, "retry_interval = '1 hours'");
	policy(env, NULL, NULL, q, "enable_tls = 'Opportunistic', prohibited_hosts = {}");
	free(q);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: tls\r\n\r\nnot in clear\r\n", ids);
	cJSON *t = wait_record(env, "TransientFailure", ids[0]);
	cJSON_Delete(t);
	ck_assert_int_eq(sink_wait(env, 1, 1), 0);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_prohibited_loopback_by_default)
{
	struct harness_env *env = harness_env_new();
	pid_t sink = start_relaying_to_sink(env, NULL, "enable_tls = 'Disabled'");
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: loop\r\n\r\nloop\r\n", ids);
	cJSON *b = wait_record(env, "Bounce", ids[0]);
	ck_assert_int_eq(resp_code(b), 550);
	ck_assert_str_eq(harness_json_str(cJSON_GetObjectItemCaseSensitive(b, "response"), "content"),
			 "127.0.0.1 is on the list of prohibited_hosts");
	cJSON_Delete(b);
	ck_assert_int_eq(sink_wait(env, 1, 1), 0);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_mx_resolution_with_test_dns)
{
	struct harness_env *env = harness_env_new();
	int sport = 0, dport = 0;
	pid_t sink = sink_start(env, &sport, NULL);
	const char *zone = "dest.test MX 10 mx1.dest.test\n"
			   "dest.test MX 20 mx2.dest.test\n"
			   "mx1.dest.test A 127.0.0.1\n"
			   "mx2.dest.test A 127.0.0.1\n"
			   "nomx.test A 127.0.0.1\n";
	harness_write_file(env, "zone", zone, strlen(zone));
	char *zpath = harness_path(env, "zone");
	const char *dargs[] = { "-z", zpath, NULL };
	pid_t dnsd = harness_tool_start("dnsd", &dport, dargs);
	free(zpath);
	char init[200], path[200];
	snprintf(init, sizeof init, "kumo.dns.configure_resolver { name_servers = { '127.0.0.1:%d' } }", dport);
	snprintf(path, sizeof path, "smtp_port = %d, enable_tls = 'Disabled', prohibited_hosts = {}", sport);
	policy(env, init, NULL, "retry_interval = '1 seconds'", path);
	harness_start(env);
	const char *rcpts[] = { "user@dest.test", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: mx\r\n\r\nvia mx\r\n", ids);
	cJSON *d = wait_record(env, "Delivery", ids[0]);
	const char *site = harness_json_str(d, "site");
	ck_assert_msg(site && strstr(site, "mx1.dest.test") && strstr(site, "mx2.dest.test"), "site: %s", site);
	ck_assert_msg(strstr(harness_json_str(cJSON_GetObjectItemCaseSensitive(d, "peer_address"), "name"),
			     "mx1.dest.test"), "the preferred MX first");
	cJSON_Delete(d);
	/* no MX: the domain's own address (RFC 5321 5.1) */
	const char *r2[] = { "user@nomx.test", NULL };
	send_msg(env, r2, "Subject: a\r\n\r\nvia a\r\n", ids);
	cJSON_Delete(wait_record(env, "Delivery", ids[0]));
	/* NXDOMAIN: bounce */
	const char *r3[] = { "user@missing.test", NULL };
	send_msg(env, r3, "Subject: nx\r\n\r\nnowhere\r\n", ids);
	cJSON *b = wait_record(env, "Bounce", ids[0]);
	ck_assert_int_eq(resp_code(b), 550);
	cJSON_Delete(b);
	ck_assert_int_eq(sink_wait(env, 2, 5), 2);
	stop_clean(env);
	harness_tool_stop(dnsd);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

/* ---- deferred_spool ----------------------------------------------------------- */

static int spooled_count(struct harness_env *env)
{
	char **v = harness_list_files(env, "spool/meta");
	int n = 0;
	for (size_t i = 0; v && v[i]; i++)
		n += smtpc_is_spool_id(strrchr(v[i], '/') ? strrchr(v[i], '/') + 1 : v[i]);
	harness_strv_free(v);
	return n;
}

START_TEST(test_deferred_spool_delivered_from_memory)
{
	struct harness_env *env = harness_env_new();
	pid_t sink = start_relaying_to_sink(env, "deferred_spool = true", NULL);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: fast\r\n\r\nfrom memory\r\n", ids);
	cJSON_Delete(wait_record(env, "Delivery", ids[0]));
	ck_assert_int_eq(sink_wait(env, 1, 5), 1);
	char **segs = harness_list_files(env, "spool/meta/seg");
	ck_assert_msg(!in_spool(env, ids[0]) && harness_strv_len(segs) == 0,
		      "a deferred_spool message delivered at the first try never touches the spool"
		      " (%zu segment files)", harness_strv_len(segs));
	harness_strv_free(segs);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_deferred_spool_written_at_first_transient_failure)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	const char *rules[] = { "--rule", "DOT:1:451 4.3.0 not yet", NULL };
	pid_t sink = sink_start(env, &sport, rules);
	char *q = to_sink(sport, "retry_interval = '1 hours'");
	policy(env, NULL, "deferred_spool = true", q, NULL);
	free(q);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: later\r\n\r\ndeferred-marker\r\n", ids);
	cJSON_Delete(wait_record(env, "TransientFailure", ids[0]));
	const char *meta[] = { "sender@example.com", "rcpt@dest.example", NULL };
	free(expect_spooled(env, ids[0], "deferred-marker", meta, NULL));
	/* durable now: a kill -9 and a restart still deliver it */
	harness_kill9(env);
	harness_start(env);
	cJSON_Delete(wait_record(env, "Delivery", ids[0]));
	ck_assert_int_eq(sink_wait(env, 1, 5), 1);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_deferred_spool_written_at_shutdown)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	const char *rules[] = { "--rule", "CONNECT:0:hang", NULL };
	pid_t hang = sink_start(env, &sport, rules);
	char *q = to_sink(sport, "retry_interval = '1 hours'");
	policy(env, NULL, "deferred_spool = true", q, NULL);
	free(q);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: hold\r\n\r\nshutdown-marker\r\n", ids);
	usleep(300000);
	ck_assert_int_eq(spooled_count(env), 0);
	/* in flight (the next hop never greets): a clean stop writes it */
	stop_clean(env);
	const char *meta[] = { "sender@example.com", "rcpt@dest.example", NULL };
	free(expect_spooled(env, ids[0], "shutdown-marker", meta, NULL));
	harness_tool_stop(hang);
	pid_t sink = sink_start(env, &sport, NULL);
	harness_start(env);
	cJSON_Delete(wait_record(env, "Delivery", ids[0]));
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

/* Many deferred_spool messages failing their first try at about the same
 * time (the next hop refuses connections) are written to the spool
 * together, at the end of kumo-qmgr's loop pass: every one of them must be
 * there, durable (kill -9), and delivered exactly once after a restart. */
START_TEST(test_deferred_spool_failures_written_together)
{
	enum { SESSIONS = 4, PER = 15, N = SESSIONS * PER };
	struct harness_env *env = harness_env_new();
	int sport = harness_free_port();
	char *q = to_sink(sport, "retry_interval = '1 hours'");
	policy(env, NULL, "deferred_spool = true", q, NULL);
	free(q);
	harness_start(env);
	pid_t qmgr[2], now[2];
	ck_assert_int_eq(harness_wait_children(env->pid, "kumo-qmgr", 1, qmgr, 2, 10), 1);
	struct smtpc *c[SESSIONS];
	for (int k = 0; k < SESSIONS; k++) {
		c[k] = smtpc_connect(env, env->port, NULL);
		smtpc_expect_prefix(c[k], "220 ");
		smtpc_cmd(c[k], "EHLO client.example");
		free(smtpc_expect_code(c[k], 250));
	}
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[N][33];
	for (int i = 0; i < N; i++) {
		char body[100];
		snprintf(body, sizeof body, "Subject: together %d\r\n\r\ntogether-marker-%d\r\n", i, i);
		smtpc_transaction(c[i % SESSIONS], "sender@example.com", rcpts, body, &ids[i]);
	}
	for (int k = 0; k < SESSIONS; k++)
		smtpc_close(c[k]);
	for (int i = 0; i < N; i++)
		cJSON_Delete(wait_record(env, "TransientFailure", ids[i]));
	int stored = 0;
	for (int t = 0; t < 100 && stored < N; t++) {
		stored = 0;
		for (int i = 0; i < N; i++)
			stored += in_spool(env, ids[i]);
		if (stored < N)
			usleep(100000);
	}
	ck_assert_msg(stored == N, "%d of %d failed deferred_spool messages are in the spool", stored, N);
	/* written by kumo-qmgr, not by the workers' fallback after it died */
	ck_assert_msg(harness_children(env->pid, "kumo-qmgr", now, 2) == 1 && now[0] == qmgr[0],
		      "kumo-qmgr was replaced during the test\n%s", harness_context(env));
	harness_kill9(env);
	pid_t sink = sink_start(env, &sport, NULL);
	harness_start(env);
	for (int i = 0; i < N; i++)
		cJSON_Delete(wait_record(env, "Delivery", ids[i]));
	ck_assert_int_eq(sink_wait(env, N, 10), N);
	usleep(300000);
	char **got = sink_files(env);
	size_t have = harness_strv_len(got);
	harness_strv_free(got);
	ck_assert_uint_eq(have, N); /* none twice */
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

/* ---- faults --------------------------------------------------------------------- */

START_TEST(test_qmgr_kill9_is_replaced_and_loses_nothing)
{
	struct harness_env *env = harness_env_new();
	int sport = harness_free_port();
	char *q = to_sink(sport, "retry_interval = '1 hours'");
	policy(env, NULL, NULL, q, NULL);
	free(q);
	harness_start(env);
	const char *rcpts[] = { "a@dest.example", "b@dest.example", "c@dest.example", NULL };
	char ids[3][33];
	send_msg(env, rcpts, "Subject: q\r\n\r\nqmgr-kill\r\n", ids);
	for (int i = 0; i < 3; i++)
		cJSON_Delete(wait_record(env, "TransientFailure", ids[i]));
	pid_t pids[4];
	ck_assert_int_eq(harness_wait_children(env->pid, "kumo-qmgr", 1, pids, 4, 10), 1);
	pid_t old = pids[0];
	kill(old, SIGKILL);
	pid_t sink = sink_start(env, &sport, NULL);
	/* kumod restarts it; the new one finds the three in the spool */
	int replaced = 0;
	for (int i = 0; i < 100 && !replaced; i++) {
		usleep(100000);
		replaced = harness_children(env->pid, "kumo-qmgr", pids, 4) == 1 && pids[0] != old;
	}
	ck_assert_msg(replaced, "kumo-qmgr was not restarted within 10 s");
	for (int i = 0; i < 3; i++)
		cJSON_Delete(wait_record(env, "Delivery", ids[i]));
	ck_assert_int_eq(sink_wait(env, 3, 5), 3);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

/* Records of this type for this id in the log dir. */
static int records_for(struct harness_env *env, const char *type, const char *id)
{
	cJSON *arr = harness_logs_read(env, NULL);
	int n = 0;
	const cJSON *r;
	cJSON_ArrayForEach(r, arr) {
		const char *t = harness_json_str(r, "type"), *i = harness_json_str(r, "id");
		n += t && i && !strcmp(t, type) && !strcmp(i, id);
	}
	cJSON_Delete(arr);
	return n;
}

/* A message stored while kumo-qmgr is away: the new kumo-qmgr finds it
 * in the spool and delivers it; the worker's notice of it, held back until
 * it reconnects, comes after that and must not queue it again. */
START_TEST(test_late_notice_is_not_a_second_delivery)
{
	struct harness_env *env = harness_env_new();
	pid_t sink = start_relaying_to_sink(env, NULL, NULL);
	pid_t pids[4];
	ck_assert_int_eq(harness_wait_children(env->pid, "kumo-qmgr", 1, pids, 4, 10), 1);
	pid_t old = pids[0];
	kill(old, SIGKILL);
	const char *rcpts[] = { "once@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: once\r\n\r\nlate-notice\r\n", ids);
	cJSON_Delete(wait_record(env, "Delivery", ids[0]));
	/* the notice has come by now (a worker tries again every second) */
	harness_pause_ms(2000);
	ck_assert_int_eq(records_for(env, "Delivery", ids[0]), 1);
	ck_assert_int_eq(sink_wait(env, 2, 1), 1);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

START_TEST(test_policyd_down_is_a_transient_failure)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	pid_t sink = sink_start(env, &sport, NULL);
	/* get_queue_config raises: the queue's messages wait, never bounce */
	char *q = to_sink(sport, "retry_interval = '1 hours'");
	char queue[600];
	snprintf(queue, sizeof queue, "%s, max_age = error('no config today')", q);
	free(q);
	policy(env, NULL, NULL, queue, NULL);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[1][33];
	send_msg(env, rcpts, "Subject: p\r\n\r\npolicy-error\r\n", ids);
	cJSON *t = wait_record(env, "TransientFailure", ids[0]);
	const char *content = harness_json_str(cJSON_GetObjectItemCaseSensitive(t, "response"), "content");
	ck_assert_msg(content && strstr(content, "no config today"), "the Lua error is the reason: %s", content);
	cJSON_Delete(t);
	ck_assert_int_eq(sink_wait(env, 1, 1), 0);
	ck_assert(in_spool(env, ids[0]));
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

/* ---- deferred_queue ---------------------------------------------------------- */

#define DEFERRED_HANDLERS                                                        \
	"kumo.on('smtp_server_message_received', function(msg)\n"             \
	"  kumo.reject(550, '5.7.1 message_received must not run')\n"          \
	"end)\n"                                                               \
	"kumo.on('smtp_server_message_deferred_inject', function(msg, conn_meta)\n" \
	"  if msg:recipient().user == 'refuse' then\n"                          \
	"    kumo.reject(550, '5.7.1 refused later')\n"                          \
	"  end\n"                                                              \
	"  msg:prepend_header('X-Deferred', 'injected ' .. tostring(conn_meta:get_meta('received_from') ~= nil))\n" \
	"  msg:set_meta('tenant', 't1')\n"                                     \
	"end)\n"

START_TEST(test_deferred_queue_runs_deferred_inject)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	pid_t sink = sink_start(env, &sport, NULL);
	char *q = to_sink(sport, NULL);
	policy_h(env, NULL, "deferred_queue = true", q, NULL, DEFERRED_HANDLERS);
	free(q);
	harness_start(env);
	const char *rcpts[] = { "rcpt@dest.example", "refuse@dest.example", NULL };
	char ids[2][33];
	send_msg(env, rcpts, "Subject: deferred\r\n\r\nlater\r\n", ids);
	cJSON *r = wait_record(env, "Reception", ids[0]);
	ck_assert_str_eq(harness_json_str(r, "queue"), "deferred_smtp_inject.kumomta.internal");
	cJSON_Delete(r);
	cJSON_Delete(wait_record(env, "DeferredInjectionRebind", ids[0]));
	cJSON *d = wait_record(env, "Delivery", ids[0]);
	ck_assert_str_eq(harness_json_str(d, "queue"), "t1@dest.example");
	cJSON_Delete(d);
	cJSON *b = wait_record(env, "Bounce", ids[1]);
	ck_assert_int_eq(resp_code(b), 550);
	cJSON_Delete(b);
	ck_assert_int_eq(sink_wait(env, 1, 5), 1);
	char *m = sink_message(env, 0);
	ck_assert_msg(strstr(m, "X-Deferred: injected true\r\n"),
		      "the handler's header, and conn_meta from the message meta: %s", m);
	free(m);
	stop_clean(env);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

/* A message waiting for a retry does not keep a mostly finished spool
 * segment on disk: once the segment is sealed (here by a clean stop and
 * the start-up scan), the queue manager writes the message again in its
 * own segment and the old one goes, and the message stays exactly once. */
START_TEST(test_waiting_message_leaves_sparse_segment)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	const char *rules[] = { "--rule", "RCPT:0:451 4.3.0 later:held.example", NULL };
	pid_t sink = sink_start(env, &sport, rules);
	char *q = to_sink(sport, "retry_interval = '1 hours'");
	policy(env, NULL, NULL, q, NULL);
	free(q);
	harness_start(env);
	const char *rcpts[] = { "a@one.example", "b@two.example", "c@held.example", NULL };
	char ids[3][33];
	send_msg(env, rcpts, "Subject: sparse\r\n\r\nsparse-marker\r\n", ids);
	cJSON_Delete(wait_record(env, "Delivery", ids[0]));
	cJSON_Delete(wait_record(env, "Delivery", ids[1]));
	cJSON_Delete(wait_record(env, "TransientFailure", ids[2]));
	struct harness_spooled sp;
	ck_assert(harness_spool_lookup(env, ids[2], 0, &sp));
	char *old = strdup(sp.data_path);
	harness_spooled_free(&sp);
	stop_clean(env);

	harness_start(env);
	ck_assert_msg(harness_output_wait_regex(env, "1 waiting message moved out of sparse segments", 20),
		      "the waiting message was not moved\n%s", harness_context(env));
	for (int i = 0; i < 50 && access(old, F_OK) == 0; i++)
		usleep(100000);
	ck_assert_msg(access(old, F_OK) != 0, "segment %s is still there", old);
	ck_assert(harness_spool_lookup(env, ids[2], 1, &sp));
	ck_assert_str_ne(sp.data_path, old);
	ck_assert(harness_contains(sp.data, sp.dlen, "sparse-marker\r\n"));
	ck_assert(harness_contains(sp.meta, sp.mlen, "c@held.example"));
	harness_spooled_free(&sp);
	stop_clean(env);
	char *listing = harness_spool_ids(env);
	ck_assert_msg(strncmp(listing, "1 message(s)", 12) == 0, "%s", listing);
	free(listing);
	free(old);
	ck_assert_int_eq(sink_wait(env, 2, 1), 2);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("e2e_delivery");
	TCase *tc = harness_tcase("delivery");
	tcase_add_test(tc, test_single_delivery_headers_intact);
	tcase_add_test(tc, test_notice_with_and_without_meta);
	tcase_add_test(tc, test_multi_recipient_batch);
	tcase_add_test(tc, test_bifurcated_recipients);
	tcase_add_test(tc, test_tempfail_then_success);
	tcase_add_test(tc, test_permanent_failure_bounces);
	tcase_add_test(tc, test_expiration);
	tcase_add_test(tc, test_dead_then_alive_and_flush);
	tcase_add_test(tc, test_kill9_then_restart_delivers_all);
	tcase_add_test(tc, test_starttls_to_sink);
	tcase_add_test(tc, test_opportunistic_verifying_fails_on_self_signed);
	tcase_add_test(tc, test_prohibited_loopback_by_default);
	tcase_add_test(tc, test_mx_resolution_with_test_dns);
	tcase_add_test(tc, test_deferred_spool_delivered_from_memory);
	tcase_add_test(tc, test_deferred_spool_written_at_first_transient_failure);
	tcase_add_test(tc, test_deferred_spool_written_at_shutdown);
	tcase_add_test(tc, test_deferred_spool_failures_written_together);
	tcase_add_test(tc, test_qmgr_kill9_is_replaced_and_loses_nothing);
	tcase_add_test(tc, test_late_notice_is_not_a_second_delivery);
	tcase_add_test(tc, test_policyd_down_is_a_transient_failure);
	tcase_add_test(tc, test_deferred_queue_runs_deferred_inject);
	tcase_add_test(tc, test_waiting_message_leaves_sparse_segment);
	suite_add_tcase(s, tc);
	return harness_run_suite(s);
}
