/* Unit tests for qmgr_ctl.c: the "loc" of a "new" notice, eight decimal
 * numbers that qmgr_loc_numbers reads without strtoull. */
#include "qmgr/qmgr.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_loc_good)
{
	uint64_t v[8];
	ck_assert_int_eq(qmgr_loc_numbers("0 1 22 333 4444 55555 666666 1", v), 0);
	static const uint64_t want[8] = { 0, 1, 22, 333, 4444, 55555, 666666, 1 };
	for (int i = 0; i < 8; i++)
		ck_assert_uint_eq(v[i], want[i]);
	/* 19 digits, the most a number may have */
	ck_assert_int_eq(qmgr_loc_numbers("9999999999999999999 18446744073 4294967295 0 0 0 "
					  "1764035000123456 0", v), 0);
	ck_assert_uint_eq(v[0], 9999999999999999999ull);
	ck_assert_uint_eq(v[2], 4294967295ull);
	ck_assert_uint_eq(v[6], 1764035000123456ull);
	ck_assert_int_eq(qmgr_loc_numbers("007 0 0 0 0 0 0 0", v), 0); /* leading zeros, as strtoull */
	ck_assert_uint_eq(v[0], 7);
}
END_TEST

static const char *const bad[] = {
	"",
	"1 2 3 4 5 6 7",                         /* seven */
	"1 2 3 4 5 6 7 8 9",                     /* nine */
	" 1 2 3 4 5 6 7 8",                      /* leading space */
	"1 2 3 4 5 6 7 8 ",                      /* trailing space */
	"1  2 3 4 5 6 7 8",                      /* two spaces */
	"1\t2 3 4 5 6 7 8",                      /* a tab */
	"+1 2 3 4 5 6 7 8",                      /* a sign */
	"-1 2 3 4 5 6 7 8",
	"1 2 3 4 5 6 7 8x",                      /* a letter */
	"1 2 3a 4 5 6 7 8",
	"10000000000000000000 2 3 4 5 6 7 8",    /* 20 digits */
	"1 2 3 4 5 6 7 99999999999999999999999", /* 23 digits */
};

START_TEST(test_loc_bad)
{
	uint64_t v[8];
	ck_assert_msg(qmgr_loc_numbers(bad[_i], v) == -1, "'%s' was taken", bad[_i]);
}
END_TEST

static Suite *ctl_suite(void)
{
	Suite *s = suite_create("qmgr_ctl");
	TCase *tc = tcase_create("loc");
	tcase_add_test(tc, test_loc_good);
	tcase_add_loop_test(tc, test_loc_bad, 0, (int)(sizeof bad / sizeof bad[0]));
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(ctl_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
