/* Check suite for lib/cidr.c, three tables:
 *  - parse: text -> formatted block, or a substring of the error;
 *  - contains: block, peer address -> match?  The peer goes through a real
 *    sockaddr and cidr_from_sockaddr, as smtpd does it;
 *  - longest: a peer against the first n blocks of one list -> index. */
#include "lib/cidr.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

struct parse_case {
	const char *in;
	const char *out;   /* cidr_format result; NULL: parse must fail */
	const char *why;   /* error substring when out is NULL */
	size_t buflen;     /* for cidr_format; 0: a roomy buffer */
};

static const struct parse_case parse_cases[] = {
	{ "10.0.0.0/8", "10.0.0.0/8", NULL, 0 },
	{ "10.0.0.1", "10.0.0.1", NULL, 0 },
	{ "10.0.0.1/32", "10.0.0.1", NULL, 0 },
	{ "0.0.0.0/0", "0.0.0.0/0", NULL, 0 },
	{ "192.168.1.128/25", "192.168.1.128/25", NULL, 0 },
	{ "10.0.0.0/08", "10.0.0.0/8", NULL, 0 },
	{ "::1", "::1", NULL, 0 },
	{ "::/0", "::/0", NULL, 0 },
	{ "2001:db8::/32", "2001:db8::/32", NULL, 0 },
	{ "2001:DB8:0:0:0:0:0:1/128", "2001:db8::1", NULL, 0 },
	{ "::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104", NULL, 0 },
	{ "10.0.0.1/24", NULL, "host bits set", 0 },
	{ "192.168.1.64/25", NULL, "host bits set", 0 },
	{ "0.0.0.1/0", NULL, "host bits set", 0 },
	{ "2001:db8::1/32", NULL, "host bits set", 0 },
	{ "10.0.0.0/33", NULL, "out of range", 0 },
	{ "2001:db8::/129", NULL, "out of range", 0 },
	{ "10.0.0.0/", NULL, "bad prefix", 0 },
	{ "10.0.0.0/-1", NULL, "bad prefix", 0 },
	{ "10.0.0.0/+8", NULL, "bad prefix", 0 },
	{ "10.0.0.0/8x", NULL, "bad prefix", 0 },
	{ "10.0.0.0/ 8", NULL, "bad prefix", 0 },
	{ "10.0.0.0/0008", NULL, "bad prefix", 0 },
	{ "10.0.0.0/8/8", NULL, "bad prefix", 0 },
	{ "10.0.0/8", NULL, "bad address", 0 },
	{ "256.0.0.0/8", NULL, "bad address", 0 },
	{ " 10.0.0.0/8", NULL, "bad address", 0 },
	{ "fe80::1%eth0", NULL, "bad address", 0 },
	{ "example.com", NULL, "bad address", 0 },
	{ "/8", NULL, "bad address", 0 },
	{ "", NULL, "bad address", 0 },
	/* cidr_format with a buffer too small gives "" rather than a cut address */
	{ "10.0.0.0/8", "", NULL, 10 },
	{ "10.0.0.0/8", "10.0.0.0/8", NULL, 11 },
};

START_TEST(test_cidr_parse)
{
	const struct parse_case *c = &parse_cases[_i];
	struct cidr b;
	char err[128] = "", buf[64];
	int rc = cidr_parse(c->in, &b, err, sizeof err);
	if (!c->out) {
		ck_assert_msg(rc == -1, "row %d: \"%s\" parsed", _i, c->in);
		ck_assert_msg(strstr(err, c->why) != NULL, "row %d: \"%s\": error \"%s\" lacks \"%s\"",
			      _i, c->in, err, c->why);
		return;
	}
	ck_assert_msg(rc == 0, "row %d: \"%s\": %s", _i, c->in, err);
	ck_assert_str_eq(cidr_format(&b, buf, c->buflen ? c->buflen : sizeof buf), c->out);
}
END_TEST

struct contains_case {
	const char *block;
	const char *peer;
	bool match;
};

static const struct contains_case contains_cases[] = {
	{ "10.0.0.0/8", "10.1.2.3", true },
	{ "10.0.0.0/8", "11.0.0.0", false },
	{ "10.0.0.0/8", "::ffff:10.1.2.3", true },      /* v4-mapped peer */
	{ "10.0.0.0/8", "::ffff:11.1.2.3", false },
	{ "10.0.0.0/8", "::10.1.2.3", false },          /* v4-compatible is not mapped */
	{ "10.0.0.0/9", "10.127.255.255", true },
	{ "10.0.0.0/9", "10.128.0.0", false },
	{ "192.168.1.128/25", "192.168.1.200", true },
	{ "192.168.1.128/25", "192.168.1.127", false },
	{ "0.0.0.0/0", "1.2.3.4", true },
	{ "0.0.0.0/0", "::ffff:1.2.3.4", true },
	{ "0.0.0.0/0", "2001:db8::1", false },
	{ "::/0", "2001:db8::1", true },
	{ "::/0", "1.2.3.4", false },
	{ "2001:db8::/32", "2001:db8:ffff::1", true },
	{ "2001:db8::/32", "2001:db9::1", false },
	{ "2001:db8::/33", "2001:db8:8000::", false },
	{ "127.0.0.1", "127.0.0.1", true },
	{ "127.0.0.1", "127.0.0.2", false },
	{ "127.0.0.1", "::ffff:127.0.0.1", true },
	{ "::1", "::1", true },
	{ "::1", "127.0.0.1", false },
	{ "::ffff:0:0/96", "::ffff:1.2.3.4", true },
};

/* a full-length cidr for text, through a sockaddr as smtpd gets it */
static void peer_from_text(const char *text, struct cidr *out)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
	} else {
		ck_assert_int_eq(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
		sin6->sin6_family = AF_INET6;
	}
	ck_assert_int_eq(cidr_from_sockaddr((struct sockaddr *)&ss, out), 0);
}

START_TEST(test_cidr_contains)
{
	const struct contains_case *c = &contains_cases[_i];
	struct cidr b, peer, bare;
	char err[128];
	ck_assert_int_eq(cidr_parse(c->block, &b, err, sizeof err), 0);
	peer_from_text(c->peer, &peer);
	ck_assert_msg(cidr_contains(&b, &peer) == c->match, "row %d: %s in %s", _i, c->peer,
		      c->block);
	/* a parsed bare address behaves like the sockaddr one */
	ck_assert_int_eq(cidr_parse(c->peer, &bare, err, sizeof err), 0);
	ck_assert(cidr_contains(&b, &bare) == c->match);
}
END_TEST

static const char *const blocks[] = {
	"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "2001:db8::/32", "::/0",
	"10.1.0.0/16",
};

struct longest_case {
	const char *peer;
	size_t n;      /* consider blocks[0..n) */
	int index;
};

static const struct longest_case longest_cases[] = {
	{ "10.1.2.3", 7, 3 },
	{ "10.1.9.9", 7, 2 },          /* the first of two equal blocks wins */
	{ "10.2.0.0", 7, 1 },
	{ "8.8.8.8", 7, 0 },
	{ "::ffff:10.1.2.3", 7, 3 },
	{ "::ffff:8.8.8.8", 7, 0 },
	{ "2001:db8::5", 7, 4 },
	{ "2001:db9::", 7, 5 },
	{ "2001:db9::", 4, -1 },
	{ "10.1.2.3", 3, 2 },
	{ "10.1.2.3", 0, -1 },
};

START_TEST(test_cidr_longest)
{
	const struct longest_case *c = &longest_cases[_i];
	struct cidr list[sizeof blocks / sizeof blocks[0]], peer;
	char err[128];
	for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++)
		ck_assert_int_eq(cidr_parse(blocks[i], &list[i], err, sizeof err), 0);
	peer_from_text(c->peer, &peer);
	ck_assert_int_eq(cidr_longest_match(list, c->n, &peer), c->index);
}
END_TEST

START_TEST(test_cidr_from_unix)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct cidr c;
	ck_assert_int_eq(cidr_from_sockaddr((struct sockaddr *)&sun, &c), -1);
}
END_TEST

static Suite *cidr_suite(void)
{
	Suite *s = suite_create("lib_cidr");
	TCase *tc = tcase_create("tables");
	tcase_add_loop_test(tc, test_cidr_parse, 0, (int)(sizeof parse_cases / sizeof parse_cases[0]));
	tcase_add_loop_test(tc, test_cidr_contains, 0,
			    (int)(sizeof contains_cases / sizeof contains_cases[0]));
	tcase_add_loop_test(tc, test_cidr_longest, 0,
			    (int)(sizeof longest_cases / sizeof longest_cases[0]));
	tcase_add_test(tc, test_cidr_from_unix);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(cidr_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
