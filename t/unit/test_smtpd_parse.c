/* Unit tests for smtpd_parse: one row per command line. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include "smtpd/smtpd.h"

struct row {
	const char *line;
	enum parse_status st;
	enum verb verb;
	const char *email; /* MAIL/RCPT address on success */
	int has_size;
	unsigned long long size;
};

static const struct row rows[] = {
	{ "EHLO client.example", PARSE_OK, V_EHLO, NULL, 0, 0 },
	{ "ehlo client.example", PARSE_OK, V_EHLO, NULL, 0, 0 },
	{ "HELO [192.0.2.1]", PARSE_OK, V_HELO, NULL, 0, 0 },
	{ "EHLO [IPv6:2001:db8::1]", PARSE_OK, V_EHLO, NULL, 0, 0 },
	{ "EHLO", PARSE_SYNTAX, V_EHLO, NULL, 0, 0 },
	{ "EHLO bad_domain!", PARSE_SYNTAX, V_EHLO, NULL, 0, 0 },
	{ "MAIL FROM:<a@example.com>", PARSE_OK, V_MAIL, "a@example.com", 0, 0 },
	{ "mail from:<a@example.com>", PARSE_OK, V_MAIL, "a@example.com", 0, 0 },
	{ "MAIL FROM: <a@example.com>", PARSE_OK, V_MAIL, "a@example.com", 0, 0 },
	{ "MAIL FROM:<>", PARSE_OK, V_MAIL, "", 0, 0 },
	{ "MAIL FROM:<a@example.com> SIZE=1000", PARSE_OK, V_MAIL, "a@example.com", 1, 1000 },
	{ "MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8", PARSE_OK, V_MAIL, "a@example.com", 0, 0 },
	{ "MAIL FROM:<a@example.com> SIZE=abc", PARSE_BAD_PARAM, V_MAIL, NULL, 0, 0 },
	{ "MAIL FROM:<a b@c>", PARSE_BAD_SENDER, V_MAIL, NULL, 0, 0 },
	{ "MAIL FROM:a@example.com", PARSE_BAD_SENDER, V_MAIL, NULL, 0, 0 },
	{ "MAIL TO:<a@example.com>", PARSE_SYNTAX, V_MAIL, NULL, 0, 0 },
	{ "MAIL", PARSE_SYNTAX, V_MAIL, NULL, 0, 0 },
	{ "RCPT TO:<b@example.net>", PARSE_OK, V_RCPT, "b@example.net", 0, 0 },
	{ "RCPT TO:<Postmaster>", PARSE_OK, V_RCPT, "Postmaster", 0, 0 },
	{ "RCPT TO:<>", PARSE_BAD_RCPT, V_RCPT, NULL, 0, 0 },
	{ "RCPT TO:<a@b:25>", PARSE_BAD_RCPT, V_RCPT, NULL, 0, 0 },
	{ "RCPT TO:<\"john doe\"@example.net>", PARSE_OK, V_RCPT, "\"john doe\"@example.net", 0, 0 },
	{ "RCPT TO:<@relay.example:u@example.net>", PARSE_OK, V_RCPT, "u@example.net", 0, 0 },
	{ "DATA", PARSE_OK, V_DATA, NULL, 0, 0 },
	{ "DATA ", PARSE_SYNTAX, V_DATA, NULL, 0, 0 },
	{ "QUIT", PARSE_OK, V_QUIT, NULL, 0, 0 },
	{ "QUIT ", PARSE_SYNTAX, V_QUIT, NULL, 0, 0 },
	{ "RSET", PARSE_OK, V_RSET, NULL, 0, 0 },
	{ "NOOP", PARSE_OK, V_NOOP, NULL, 0, 0 },
	{ "NOOP anything at all", PARSE_OK, V_NOOP, NULL, 0, 0 },
	{ "VRFY postmaster", PARSE_UNKNOWN, V_OTHER, NULL, 0, 0 },
	{ "EXPN list", PARSE_UNKNOWN, V_OTHER, NULL, 0, 0 },
	{ "HELP", PARSE_UNKNOWN, V_OTHER, NULL, 0, 0 },
	{ "BDAT 10", PARSE_UNKNOWN, V_OTHER, NULL, 0, 0 },
	{ "FOO", PARSE_UNKNOWN, V_OTHER, NULL, 0, 0 },
	{ "", PARSE_SYNTAX_DIAG, V_NONE, NULL, 0, 0 },
	{ " NOOP", PARSE_SYNTAX_DIAG, V_NONE, NULL, 0, 0 },
	{ "12345", PARSE_SYNTAX_DIAG, V_NONE, NULL, 0, 0 },
	{ "NOOP \xff\xfe", PARSE_BAD_UTF8, V_NONE, NULL, 0, 0 },
	{ "MAIL FROM:<\xc3\xa9t\xc3\xa9@example.com> SMTPUTF8", PARSE_OK, V_MAIL,
	  "\xc3\xa9t\xc3\xa9@example.com", 0, 0 },
	{ "STARTTLS", PARSE_OK, V_STARTTLS, NULL, 0, 0 },
	{ "AUTH PLAIN", PARSE_OK, V_AUTH, NULL, 0, 0 },
	{ "AUTH", PARSE_SYNTAX, V_AUTH, NULL, 0, 0 },
};

START_TEST(parse_row)
{
	const struct row *r = &rows[_i];
	struct smtp_cmd cmd;
	enum parse_status st = smtp_cmd_parse(r->line, strlen(r->line), &cmd);
	ck_assert_msg(st == r->st, "'%s': status %d, want %d (%s)", r->line, st, r->st, cmd.diag);
	if (r->verb != V_NONE)
		ck_assert_msg(cmd.verb == r->verb, "'%s': verb %d, want %d", r->line, cmd.verb, r->verb);
	if (st == PARSE_OK && r->email)
		ck_assert_str_eq(cmd.addr.email, r->email);
	if (st == PARSE_OK) {
		ck_assert_int_eq(cmd.has_size, r->has_size);
		if (r->has_size)
			ck_assert_uint_eq(cmd.size, r->size);
	}
	smtp_cmd_free(&cmd);
}
END_TEST

START_TEST(nul_byte_is_rejected)
{
	struct smtp_cmd cmd;
	const char line[] = "NOOP a\0b";
	ck_assert_int_eq(smtp_cmd_parse(line, sizeof line - 1, &cmd), PARSE_BAD_UTF8);
	smtp_cmd_free(&cmd);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("smtpd_parse");
	TCase *tc = tcase_create("rows");
	tcase_add_loop_test(tc, parse_row, 0, (int)(sizeof rows / sizeof rows[0]));
	tcase_add_test(tc, nul_byte_is_rejected);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
