/* Check suite for lib/addr.c: one table of paths, bare emails and domains,
 * each with the expected result (email/user/domain and bytes consumed) or a
 * substring of the expected error.  Every accepted address is also copied
 * with addr_copy and freed; every rejected one must leave *out all NULL. */
#include "lib/addr.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum mode { PATH, EMAIL, DOMAIN };

struct addr_case {
	enum mode mode;
	int flags;
	const char *in;
	int rc;
	size_t consumed;     /* PATH only; 0: the whole input */
	const char *email;   /* expected on success */
	const char *user;
	const char *domain;
	const char *why;     /* substring of the error on failure */
};

#define B ADDR_REQUIRE_BRACKETS
#define N ADDR_ALLOW_NULL
#define P ADDR_ALLOW_POSTMASTER

#define OK(fl, in, em, us, dom) { PATH, fl, in, 0, 0, em, us, dom, NULL }
#define OKC(fl, in, used, em, us, dom) { PATH, fl, in, 0, used, em, us, dom, NULL }
#define BAD(fl, in, why) { PATH, fl, in, -1, 0, NULL, NULL, NULL, why }
#define EOK(in, em, us, dom) { EMAIL, 0, in, 0, 0, em, us, dom, NULL }
#define EBAD(in, why) { EMAIL, 0, in, -1, 0, NULL, NULL, NULL, why }
#define DOK(in) { DOMAIN, 0, in, 0, 0, NULL, NULL, NULL, NULL }
#define DBAD(in) { DOMAIN, 0, in, -1, 0, NULL, NULL, NULL, NULL }

#define A10 "aaaaaaaaaa"
#define L63 A10 A10 A10 A10 A10 A10 "aaa"
#define L64 A10 A10 A10 A10 A10 A10 "aaaa"
#define D255 L63 "." L63 "." L63 "." L63   /* 4 * 63 + 3 = 255 octets */

static const struct addr_case cases[] = {
	/* plain paths */
	OK(B, "<user@example.com>", "user@example.com", "user", "example.com"),
	OK(B, "<a@b>", "a@b", "a", "b"),
	OK(B, "<first.last+tag@sub.example.co.uk>", "first.last+tag@sub.example.co.uk",
	   "first.last+tag", "sub.example.co.uk"),
	OK(B, "<!#$%&'*+-/=?^_`{|}~@example.com>", "!#$%&'*+-/=?^_`{|}~@example.com",
	   "!#$%&'*+-/=?^_`{|}~", "example.com"),
	OK(B, "<User@Example.COM>", "User@Example.COM", "User", "Example.COM"),
	OK(B, "<user@1.2.3.4>", "user@1.2.3.4", "user", "1.2.3.4"),
	OK(B, "<user@xn--bcher-kva.example>", "user@xn--bcher-kva.example", "user",
	   "xn--bcher-kva.example"),
	/* trailing bytes are left to the caller */
	OKC(B, "<user@example.com> SIZE=100", 18, "user@example.com", "user", "example.com"),
	OKC(B, "<user@example.com>>", 18, "user@example.com", "user", "example.com"),
	/* quoted local parts keep their quotes */
	OK(B, "<\"john doe\"@example.com>", "\"john doe\"@example.com", "\"john doe\"",
	   "example.com"),
	OK(B, "<\"a\\\"b\\\\c\"@example.com>", "\"a\\\"b\\\\c\"@example.com", "\"a\\\"b\\\\c\"",
	   "example.com"),
	OK(B, "<\"a@b>c\"@example.com>", "\"a@b>c\"@example.com", "\"a@b>c\"", "example.com"),
	OK(B, "<\"\"@example.com>", "\"\"@example.com", "\"\"", "example.com"),
	OK(B, "<\"\xc3\xbc x\"@example.com>", "\"\xc3\xbc x\"@example.com", "\"\xc3\xbc x\"",
	   "example.com"),
	BAD(B, "<\"unterminated@example.com>", "unterminated"),
	BAD(B, "<\"a\x01" "b\"@example.com>", "control character"),
	BAD(B, "<\"a\\\x01\"@example.com>", "quoted-pair"),
	BAD(B, "<\"\xc3\"@example.com>", "UTF-8"),
	/* address literals */
	OK(B, "<user@[192.0.2.1]>", "user@[192.0.2.1]", "user", "[192.0.2.1]"),
	OK(B, "<user@[001.002.003.004]>", "user@[001.002.003.004]", "user",
	   "[001.002.003.004]"),
	OK(B, "<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]", "user",
	   "[IPv6:2001:db8::1]"),
	OK(B, "<user@[ipv6:::1]>", "user@[ipv6:::1]", "user", "[ipv6:::1]"),
	OK(B, "<user@[IPv6:::ffff:192.0.2.1]>", "user@[IPv6:::ffff:192.0.2.1]", "user",
	   "[IPv6:::ffff:192.0.2.1]"),
	OK(B, "<user@[x-tag:some-content]>", "user@[x-tag:some-content]", "user",
	   "[x-tag:some-content]"),
	BAD(B, "<user@[300.1.1.1]>", "IPv4"),
	BAD(B, "<user@[1.2.3]>", "IPv4"),
	BAD(B, "<user@[1.2.3.4.5]>", "IPv4"),
	BAD(B, "<user@[IPv6:2001:db8::g]>", "IPv6"),
	BAD(B, "<user@[IPv6:1.2.3.4]>", "IPv6"),
	BAD(B, "<user@[IPv6:fe80::1%eth0]>", "IPv6"),
	BAD(B, "<user@[tag:]>", "address literal"),
	BAD(B, "<user@[:content]>", "address literal"),
	BAD(B, "<user@[-tag:x]>", "address literal"),
	BAD(B, "<user@[192.0.2.1>", "unterminated"),
	BAD(B, "<user@[]>", "empty address literal"),
	/* the null sender */
	OK(B | N, "<>", "", "", ""),
	OKC(B | N, "<> SIZE=10", 2, "", "", ""),
	BAD(B, "<>", "null"),
	BAD(B | P, "<>", "null"),
	/* <Postmaster> */
	OK(B | P, "<Postmaster>", "Postmaster", "postmaster", ""),
	OK(B | P, "<POSTMASTER>", "Postmaster", "postmaster", ""),
	OKC(B | P, "<postmaster> NOTIFY=NEVER", 12, "Postmaster", "postmaster", ""),
	OKC(P, "Postmaster NOTIFY=NEVER", 10, "Postmaster", "postmaster", ""),
	BAD(B, "<postmaster>", "Postmaster"),
	BAD(B | N, "<Postmaster>", "Postmaster"),
	OK(B, "<postmaster@example.com>", "postmaster@example.com", "postmaster",
	   "example.com"),
	BAD(B | P, "<Postmaster", "missing '@'"),
	/* source routes are dropped */
	OK(B, "<@a.example,@b.example:user@c.example>", "user@c.example", "user", "c.example"),
	OK(B, "<@a.example:user@c.example>", "user@c.example", "user", "c.example"),
	BAD(B, "<@a.example,b.example:user@c.example>", "source route"),
	BAD(B, "<@a.example user@c.example>", "source route"),
	BAD(B, "<@example.com>", "source route"),
	BAD(B, "<@:user@example.com>", "source route"),
	/* SMTPUTF8 */
	OK(B, "<\xce\xb4\xce\xbf\xce\xba\xce\xb9\xce\xbc\xce\xae@\xcf\x80\xce\xb1\xcf\x81.example>",
	   "\xce\xb4\xce\xbf\xce\xba\xce\xb9\xce\xbc\xce\xae@\xcf\x80\xce\xb1\xcf\x81.example",
	   "\xce\xb4\xce\xbf\xce\xba\xce\xb9\xce\xbc\xce\xae", "\xcf\x80\xce\xb1\xcf\x81.example"),
	OK(B, "<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a>",
	   "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a",
	   "\xe7\x94\xa8\xe6\x88\xb7", "\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a"),
	OK(B, "<user@b\xc3\xbc" "cher.example>", "user@b\xc3\xbc" "cher.example", "user",
	   "b\xc3\xbc" "cher.example"),
	OK(B, "<\xf0\x9f\x98\x80@example.com>", "\xf0\x9f\x98\x80@example.com", "\xf0\x9f\x98\x80",
	   "example.com"),
	BAD(B, "<\xc3\x28@example.com>", "UTF-8"),            /* bad continuation */
	BAD(B, "<\xc0\xaf@example.com>", "UTF-8"),            /* overlong '/' */
	BAD(B, "<\xe0\x80\xaf@example.com>", "UTF-8"),        /* overlong, 3 bytes */
	BAD(B, "<\xed\xa0\x80@example.com>", "UTF-8"),        /* surrogate */
	BAD(B, "<\xf4\x90\x80\x80@example.com>", "UTF-8"),    /* above U+10FFFF */
	BAD(B, "<\x80@example.com>", "UTF-8"),                /* stray continuation */
	BAD(B, "<a@ex\xff" "ample.com>", "UTF-8"),
	BAD(B, "<a@example.\xe4\xb8>", "UTF-8"),              /* truncated */
	/* lengths */
	OK(B, "<" L64 "@example.com>", L64 "@example.com", L64, "example.com"),
	BAD(B, "<" L64 "a@example.com>", "64"),
	BAD(B, "<\"" L63 "\"@example.com>", "64"),              /* quotes count */
	OK(B, "<a@" D255 ">", "a@" D255, "a", D255),
	BAD(B, "<a@" D255 "a>", "255"),
	/* dot-string and domain syntax */
	BAD(B, "<.user@example.com>", "starts with a dot"),
	BAD(B, "<user.@example.com>", "ends with a dot"),
	BAD(B, "<us..er@example.com>", "two dots"),
	BAD(B, "<user@-example.com>", "hyphen"),
	BAD(B, "<user@example-.com>", "hyphen"),
	BAD(B, "<user@example..com>", "empty domain label"),
	BAD(B, "<user@example.com.>", "ends with a dot"),
	BAD(B, "<user@.example.com>", "starts with a dot"),
	BAD(B, "<user@>", "missing domain"),
	BAD(B, "<@>", "source route"),
	BAD(B, "<userexample.com>", "missing '@'"),
	BAD(B, "<user@host@example.com>", "unexpected character"),
	BAD(B, "<user name@example.com>", "missing '@'"),
	BAD(B, "<user@exa_mple.com>", "unexpected character"),
	BAD(B, "< user@example.com>", "bad local part"),
	BAD(B, "<user@example.com >", "unexpected character"),
	/* port suffixes */
	BAD(B, "<a@b:25>", "unexpected character"),
	BAD(0, "a@b:25", "unexpected character"),
	/* brackets */
	BAD(B, "user@example.com", "enclosed in <>"),
	BAD(B | N | P, "", "empty"),
	BAD(B, "<user@example.com", "missing '>'"),
	BAD(0, "user@example.com>", "unexpected character"),
	OK(0, "user@example.com", "user@example.com", "user", "example.com"),
	OKC(0, "user@example.com SIZE=1", 16, "user@example.com", "user", "example.com"),
	OK(0, "<user@example.com>", "user@example.com", "user", "example.com"),
	BAD(0, "Postmaster", "Postmaster"),
	/* bare emails */
	EOK("user@example.com", "user@example.com", "user", "example.com"),
	EOK("", "", "", ""),
	EOK("postmaster", "Postmaster", "postmaster", ""),
	EOK("PostMaster", "Postmaster", "postmaster", ""),
	EOK("\"a b\"@example.com", "\"a b\"@example.com", "\"a b\"", "example.com"),
	EOK("user@[IPv6:::1]", "user@[IPv6:::1]", "user", "[IPv6:::1]"),
	EOK("postmaster@example.com", "postmaster@example.com", "postmaster", "example.com"),
	EBAD("<user@example.com>", "bad local part"),
	EBAD("user@example.com ", "unexpected character"),
	EBAD("a@b:25", "unexpected character"),
	EBAD("user", "missing '@'"),
	EBAD("postmaster ", "missing '@'"),
	EBAD("\xc3\x28@example.com", "UTF-8"),
	/* addr_valid_domain */
	DOK("example.com"),
	DOK("a"),
	DOK("b\xc3\xbc" "cher.example"),
	DOK(D255),
	DBAD(""),
	DBAD("-a.example"),
	DBAD("a..example"),
	DBAD("a.example."),
	DBAD("[192.0.2.1]"),
	DBAD("a b"),
	DBAD("a@b"),
	DBAD(D255 "a"),
	DBAD("ex\xff" "ample"),
};

static void check_fields(const struct smtp_addr *a, const struct addr_case *c)
{
	ck_assert_str_eq(a->email, c->email);
	ck_assert_str_eq(a->user, c->user);
	ck_assert_str_eq(a->domain, c->domain);
	ck_assert(a->is_null == (strcmp(c->email, "") == 0));
	ck_assert(a->is_postmaster == (strcmp(c->email, "Postmaster") == 0));
}

START_TEST(test_addr_table)
{
	const struct addr_case *c = &cases[_i];
	struct smtp_addr a;
	char err[128] = "";
	size_t used = 12345;
	int rc;

	if (c->mode == DOMAIN) {
		bool ok = addr_valid_domain(c->in, strlen(c->in));
		ck_assert_msg(ok == (c->rc == 0), "row %d: addr_valid_domain(\"%s\") = %d",
			      _i, c->in, ok);
		return;
	}
	if (c->mode == PATH)
		rc = addr_parse_path(c->in, strlen(c->in), c->flags, &a, &used, err, sizeof err);
	else
		rc = addr_parse_email(c->in, &a, err, sizeof err);
	ck_assert_msg(rc == c->rc, "row %d: \"%s\" gave %d (%s), want %d", _i, c->in, rc, err,
		      c->rc);
	if (rc != 0) {
		ck_assert_msg(strstr(err, c->why) != NULL, "row %d: \"%s\": error \"%s\" lacks \"%s\"",
			      _i, c->in, err, c->why);
		ck_assert(a.email == NULL && a.user == NULL && a.domain == NULL);
		addr_free(&a);
		return;
	}
	check_fields(&a, c);
	if (c->mode == PATH)
		ck_assert_uint_eq(used, c->consumed ? c->consumed : strlen(c->in));

	struct smtp_addr copy;
	addr_copy(&copy, &a);
	addr_free(&a);
	ck_assert(a.email == NULL);
	addr_free(&a); /* twice is harmless */
	check_fields(&copy, c);

	/* the email form parses back to the same address */
	struct smtp_addr again;
	ck_assert_msg(addr_parse_email(copy.email, &again, err, sizeof err) == 0,
		      "row %d: email \"%s\" does not parse back: %s", _i, copy.email, err);
	check_fields(&again, c);
	addr_free(&again);
	addr_free(&copy);
}
END_TEST

static Suite *addr_suite(void)
{
	Suite *s = suite_create("lib_addr");
	TCase *tc = tcase_create("table");
	tcase_add_loop_test(tc, test_addr_table, 0, (int)(sizeof cases / sizeof cases[0]));
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(addr_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
