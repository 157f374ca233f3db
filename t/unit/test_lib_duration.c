/* Check suite for lib/duration.c: one table of strings with the seconds
 * expected, or (ok false) a substring of the expected error. */
#include "lib/duration.h"

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct duration_case {
	const char *in;
	bool ok;
	double secs;
	const char *why;
};

#define OK(in, secs) { in, true, secs, NULL }
#define BAD(in, why) { in, false, 0, why }

static const struct duration_case cases[] = {
	/* plain numbers are seconds */
	OK("30", 30),
	OK("1.5", 1.5),
	OK("0", 0),
	OK(" 30 ", 30),
	/* one term */
	OK("300s", 300),
	OK("1.5s", 1.5),
	OK("5m", 300),
	OK("1 minute", 60),
	OK("20 minutes", 1200),
	OK("2 min", 120),
	OK("2 mins", 120),
	OK("1h", 3600),
	OK("1hr", 3600),
	OK("3 hrs", 10800),
	OK("1 hour", 3600),
	OK("2 hours", 7200),
	OK("1 sec", 1),
	OK("2 secs", 2),
	OK("1 second", 1),
	OK("10 seconds", 10),
	OK("100ms", 0.1),
	OK("1msec", 0.001),
	OK("250millis", 0.25),
	OK("10us", 1e-5),
	OK("10usec", 1e-5),
	OK("10micros", 1e-5),
	OK("5ns", 5e-9),
	OK("5nsec", 5e-9),
	OK("5nanos", 5e-9),
	OK("1d", 86400),
	OK("1 day", 86400),
	OK("2 days", 172800),
	OK("1w", 604800),
	OK("1 week", 604800),
	OK("2weeks", 1209600),
	OK("1M", 2630016),
	OK("1 month", 2630016),
	OK("2 months", 5260032),
	OK("1y", 31557600),
	OK("1 year", 31557600),
	OK("2 years", 63115200),
	/* several terms */
	OK("1h 30m", 5400),
	OK("1h30m", 5400),
	OK("2h 37min", 9420),
	OK("1h 1m 1s", 3661),
	OK("1 h 30 m", 5400),
	OK("  5m  ", 300),
	OK("1m 500ms", 60.5),
	/* errors */
	BAD("", "empty"),
	BAD("   ", "empty"),
	BAD(NULL, "empty"),
	BAD("-5s", "sign"),
	BAD("+5s", "sign"),
	BAD("5x", "unknown unit"),
	BAD("5 S", "unknown unit"),
	BAD("5MS", "unknown unit"),
	BAD("5 mins later", "expected a number"),
	BAD("1e3", "unknown unit"),
	BAD("5m!", "expected a number"),
	BAD("5m,3s", "expected a number"),
	BAD("1h 30", "missing unit"),
	BAD("30 40", "missing unit"),
	BAD("30!", "missing unit"),
	BAD("m", "expected a number"),
	BAD("1..5s", "expected a number"),
	BAD("1.s", "expected a number"),
	BAD(".5s", "expected a number"),
	BAD("nan", "expected a number"),
	BAD("inf", "expected a number"),
	BAD("1000000000000y", "too large"),
};

START_TEST(test_duration_table)
{
	const struct duration_case *c = &cases[_i];
	char err[128] = "";
	double secs = -1;
	int rc = duration_parse(c->in, &secs, err, sizeof err);
	if (!c->ok) {
		ck_assert_msg(rc == -1, "row %d: \"%s\" gave %g", _i, c->in ? c->in : "(null)", secs);
		ck_assert_msg(strstr(err, c->why) != NULL, "row %d: error \"%s\" lacks \"%s\"", _i,
			      err, c->why);
		return;
	}
	ck_assert_msg(rc == 0, "row %d: \"%s\": %s", _i, c->in, err);
	ck_assert_msg(fabs(secs - c->secs) <= 1e-9 * fmax(1, c->secs),
		      "row %d: \"%s\" gave %.12g, want %.12g", _i, c->in, secs, c->secs);
}
END_TEST

static Suite *duration_suite(void)
{
	Suite *s = suite_create("lib_duration");
	TCase *tc = tcase_create("table");
	tcase_add_loop_test(tc, test_duration_table, 0, (int)(sizeof cases / sizeof cases[0]));
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(duration_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
