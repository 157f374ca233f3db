/*
 * End-to-end trace headers: the Received header in KumoMTA's exact format
 * and the supplemental X-KumoRef header (base64 of JSON with the magic key,
 * the recipient and include_meta_names values, folded at 75 columns), each
 * switchable off, with a configurable header name.
 */
#include "expect.h"
#include "harness.h"
#include "lib/base64.h"

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *send_one(struct harness_env *env, const char *rcpt, char id[33])
{
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect_prefix(c, "220 ");
	smtpc_cmd(c, "EHLO client.example");
	free(smtpc_expect_code(c, 250));
	const char *const rcpts[] = { rcpt, NULL };
	char ids[1][33];
	smtpc_transaction(c, "a@example.com", rcpts, "Subject: t\r\n\r\nbody\r\n", ids);
	memcpy(id, ids[0], 33);
	smtpc_close(c);
	size_t len;
	return expect_spooled(env, id, "body", NULL, &len);
}

/* The stored data up to the trailer line, NUL-terminated (caller frees). */
static char *header_value(const char *data, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = data; p && *p; p = strstr(p, "\r\n") ? strstr(p, "\r\n") + 2 : NULL) {
		if (strncmp(p, name, n) == 0 && p[n] == ':') {
			const char *v = p + n + 2, *end = v;
			/* unfold: continuation lines start with a tab or space */
			for (;;) {
				const char *crlf = strstr(end, "\r\n");
				if (!crlf)
					break;
				end = crlf;
				if (crlf[2] == '\t' || crlf[2] == ' ')
					end = crlf + 2;
				else
					break;
			}
			char *out = malloc((size_t)(end - v) + 1), *o = out;
			for (const char *q = v; q < end; q++)
				if (*q != '\r' && *q != '\n' && *q != '\t')
					*o++ = *q;
			*o = 0;
			return out;
		}
		if (p[0] == '\r' && p[1] == '\n')
			break;
	}
	return NULL;
}

START_TEST(test_received_and_kumoref_defaults)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, NULL);
	char id[33];
	char *data = send_one(env, "recip@example.com", id);
	/* X-KumoRef is the first header, Received the second */
	ck_assert_msg(strncmp(data, "X-KumoRef: eyJfQF8iOiJcXF8vIiwicmVjaXBpZW50IjoicmVjaXBAZXhhbXBsZS5jb20ifQ==\r\n"
				    "Received: from client.example (127.0.0.1)\r\n"
				    "  by " HARNESS_HOSTNAME " (KumoMTA 127.0.0.1) \r\n"
				    "  with ESMTP id ", 170) == 0, "stored: %.300s", data);
	char want[200];
	snprintf(want, sizeof want, "with ESMTP id %s for <recip@example.com>;\r\n  ", id);
	ck_assert_msg(strstr(data, want) != NULL, "stored: %.300s", data);
	/* RFC 2822 date, day not zero-padded, +0000 */
	regex_t re;
	ck_assert_int_eq(regcomp(&re, "for <recip@example.com>;\r\n  (Mon|Tue|Wed|Thu|Fri|Sat|Sun), [1-9][0-9]? "
				      "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) 20[0-9][0-9] "
				      "[0-2][0-9]:[0-5][0-9]:[0-6][0-9] \\+0000\r\nSubject: t\r\n", REG_EXTENDED), 0);
	ck_assert_msg(regexec(&re, data, 0, NULL, 0) == 0, "stored: %.400s", data);
	regfree(&re);
	free(data);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

START_TEST(test_kumoref_meta_names_and_folding)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "meta = { tenant = 'acme', campaign = 'spring-sale-with-a-long-name' },"
				   " trace_headers = { include_meta_names = { 'tenant', 'campaign', 'unset' },"
				   " header_name = 'X-Trace' }");
	char id[33];
	char *data = send_one(env, "someone.with.a.long.address@example.com", id);
	ck_assert_msg(strncmp(data, "X-Trace: ", 9) == 0, "stored: %.300s", data);
	/* folded: lines of 75 base64 characters, continued with CRLF TAB */
	const char *first_end = strstr(data, "\r\n");
	ck_assert_int_eq((int)(first_end - data), 9 + 75);
	ck_assert_int_eq(first_end[2], '\t');
	char *v = header_value(data, "X-Trace");
	size_t n;
	unsigned char *json = base64_decode(v, strlen(v), &n);
	ck_assert_ptr_nonnull(json);
	ck_assert_str_eq((char *)json, "{\"_@_\":\"\\\\_/\",\"campaign\":\"spring-sale-with-a-long-name\","
				       "\"recipient\":\"someone.with.a.long.address@example.com\","
				       "\"tenant\":\"acme\",\"unset\":null}");
	free(json);
	free(v);
	free(data);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

START_TEST(test_trace_headers_off)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "trace_headers = { received_header = false, supplemental_header = false }");
	char id[33];
	char *data = send_one(env, "r@example.com", id);
	ck_assert_msg(strncmp(data, "Subject: t\r\n\r\nbody\r\n", 20) == 0, "stored: %.300s", data);
	free(data);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

START_TEST(test_batch_kumoref_lists_recipients)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "batch_handling = 'BatchByDomain'");
	struct smtpc *c = smtpc_connect(env, env->port, NULL);
	smtpc_expect_prefix(c, "220 ");
	smtpc_chat(c, "MAIL FROM:<s@example.com>", "250 OK <s@example.com>");
	smtpc_chat(c, "RCPT TO:<a@x.example>", "250 OK <a@x.example>");
	smtpc_chat(c, "RCPT TO:<b@y.example>", "250 OK <b@y.example>");
	smtpc_chat(c, "RCPT TO:<c@X.example>", "250 OK <c@X.example>");
	smtpc_chat(c, "DATA", "354 Send body; end with CRLF.CRLF");
	smtpc_send(c, "Subject: t\r\n\r\nbody\r\n.\r\n", 23);
	/* one message per domain (compared without case): two ids */
	char *reply = smtpc_expect_code(c, 250);
	char ids[2][33];
	int end = 0;
	ck_assert_msg(sscanf(reply, "250 OK ids=%32s %32s%n", ids[0], ids[1], &end) == 2 && reply[end] == '\0',
		      "DATA reply: %s", reply);
	free(reply);
	smtpc_close(c);
	size_t len;
	char *data = expect_spooled(env, ids[0], "body", NULL, &len);
	char *v = header_value(data, "X-KumoRef");
	size_t n;
	unsigned char *json = base64_decode(v, strlen(v), &n);
	ck_assert_str_eq((char *)json, "{\"_@_\":\"\\\\_/\",\"recipient\":[\"a@x.example\",\"c@X.example\"]}");
	ck_assert_msg(strstr(data, "for <a@x.example>;") != NULL, "stored: %.300s", data);
	free(json);
	free(v);
	free(data);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("e2e_trace");
	TCase *tc = harness_tcase("trace");
	tcase_add_test(tc, test_received_and_kumoref_defaults);
	tcase_add_test(tc, test_kumoref_meta_names_and_folding);
	tcase_add_test(tc, test_trace_headers_off);
	tcase_add_test(tc, test_batch_kumoref_lists_recipients);
	suite_add_tcase(s, tc);
	return harness_run_suite(s);
}
