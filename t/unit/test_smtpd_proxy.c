/* Unit tests for the PROXY protocol parser: one row per header. */
#include <check.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include "lib/netaddr.h"
#include "smtpd/smtpd.h"

struct row {
	const char *in;
	size_t len;      /* 0: strlen(in) */
	int rc;
	size_t used;
	int local;
	const char *src, *dst; /* "ip:port" when rc == 1 and !local */
};

#define V2SIG "\r\n\r\n\0\r\nQUIT\n"
static const struct row rows[] = {
	{ "PROXY TCP4 1.2.3.4 5.6.7.8 1111 25\r\nEHLO x\r\n", 0, 1, 36, 0, "1.2.3.4:1111", "5.6.7.8:25" },
	{ "PROXY TCP6 2001:db8::1 ::1 4000 2525\r\n", 0, 1, 38, 0, "[2001:db8::1]:4000", "[::1]:2525" },
	{ "PROXY UNKNOWN\r\n", 0, 1, 15, 1, NULL, NULL },
	{ "PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n", 0, 1, 39, 1, NULL, NULL },
	{ "PROXY TCP4 1.2.3.4 5.6.7.8 1111", 0, 0, 0, 0, NULL, NULL },
	{ "PROX", 0, 0, 0, 0, NULL, NULL },
	{ "", 0, 0, 0, 0, NULL, NULL },
	{ "PROXY TCP4 1.2.3.4 5.6.7.8 1111 25\n", 0, -1, 0, 0, NULL, NULL },
	{ "PROXY TCP4 1.2.3.4 5.6.7.8 1111 99999\r\n", 0, -1, 0, 0, NULL, NULL },
	{ "PROXY TCP4 1.2.3.4 5.6.7.8 01 25\r\n", 0, -1, 0, 0, NULL, NULL },
	{ "PROXY TCP4 ::1 5.6.7.8 1 25\r\n", 0, -1, 0, 0, NULL, NULL },
	{ "PROXY TCP5 1.2.3.4 5.6.7.8 1 25\r\n", 0, -1, 0, 0, NULL, NULL },
	{ "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 0, -1, 0, 0, NULL, NULL },
	{ "EHLO x\r\n", 0, -1, 0, 0, NULL, NULL },
	/* v2: PROXY over TCP4, 12 address bytes */
	{ V2SIG "\x21\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x04\x57\x00\x19", 28, 1, 28, 0,
	  "1.2.3.4:1111", "5.6.7.8:25" },
	/* v2 with a TLV after the addresses (ignored) */
	{ V2SIG "\x21\x11\x00\x0f\x01\x02\x03\x04\x05\x06\x07\x08\x04\x57\x00\x19\x04\x00\x00", 31, 1, 31, 0,
	  "1.2.3.4:1111", "5.6.7.8:25" },
	/* v2 LOCAL */
	{ V2SIG "\x20\x00\x00\x00", 16, 1, 16, 1, NULL, NULL },
	/* v2 truncated */
	{ V2SIG "\x21\x11\x00\x0c\x01\x02", 18, 0, 0, 0, NULL, NULL },
	/* v2 bad version */
	{ V2SIG "\x31\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x04\x57\x00\x19", 28, -1, 0, 0, NULL, NULL },
	/* v2 TCP4 with too few address bytes */
	{ V2SIG "\x21\x11\x00\x04\x01\x02\x03\x04", 20, -1, 0, 0, NULL, NULL },
};

START_TEST(proxy_row)
{
	const struct row *r = &rows[_i];
	size_t len = r->len ? r->len : strlen(r->in);
	struct proxy_result res;
	size_t used = 99;
	int rc = proxy_parse((const uint8_t *)r->in, len, &res, &used);
	ck_assert_msg(rc == r->rc, "row %d: rc %d want %d", _i, rc, r->rc);
	if (rc != 1)
		return;
	ck_assert_uint_eq(used, r->used);
	ck_assert_int_eq(res.local, r->local);
	if (!r->local) {
		char a[64], b[64];
		ck_assert_str_eq(netaddr_format((struct sockaddr *)&res.src, a, sizeof a), r->src);
		ck_assert_str_eq(netaddr_format((struct sockaddr *)&res.dst, b, sizeof b), r->dst);
	}
}
END_TEST

START_TEST(v1_too_long)
{
	char buf[200];
	memset(buf, 'A', sizeof buf);
	memcpy(buf, "PROXY ", 6);
	struct proxy_result res;
	size_t used;
	ck_assert_int_eq(proxy_parse((const uint8_t *)buf, sizeof buf, &res, &used), -1);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("smtpd_proxy");
	TCase *tc = tcase_create("rows");
	tcase_add_loop_test(tc, proxy_row, 0, (int)(sizeof rows / sizeof rows[0]));
	tcase_add_test(tc, v1_too_long);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
