/* Check suite for lib/hist.c: every value lands in the bucket whose range
 * holds it, buckets are at most 12.5% wide, and quantiles come back as the
 * upper end of the right bucket. */
#include "lib/hist.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

START_TEST(small_values_have_a_bucket_each)
{
	for (uint64_t v = 0; v < 8; v++) {
		ck_assert_uint_eq(hist_bucket(v), v);
		ck_assert_uint_eq(hist_low((unsigned)v), v);
	}
	ck_assert_uint_eq(hist_bucket(8), 8);
	ck_assert_uint_eq(hist_bucket(15), 15);
	ck_assert_uint_eq(hist_bucket(16), 16);
	ck_assert_uint_eq(hist_bucket(17), 16);  /* 16 and 17 share one */
}
END_TEST

START_TEST(every_value_is_inside_its_bucket)
{
	for (uint64_t v = 0; v < 2000000; v += 1 + v / 1000) {
		unsigned b = hist_bucket(v);
		ck_assert_uint_lt(b, HIST_BUCKETS - 1);
		ck_assert_uint_le(hist_low(b), v);
		ck_assert_uint_gt(hist_low(b + 1), v);
		/* no wider than an eighth of its lowest value (above 8) */
		if (v >= 8)
			ck_assert_uint_le((hist_low(b + 1) - hist_low(b)) * 8, hist_low(b));
	}
	/* the buckets are in order */
	for (unsigned b = 0; b + 1 < HIST_BUCKETS; b++)
		ck_assert_uint_lt(hist_low(b), hist_low(b + 1));
}
END_TEST

START_TEST(huge_values_count_in_the_last_bucket)
{
	ck_assert_uint_eq(hist_bucket(UINT64_MAX), HIST_BUCKETS - 1);
	ck_assert_uint_eq(hist_bucket(hist_low(HIST_BUCKETS - 1)), HIST_BUCKETS - 1);
	ck_assert_uint_eq(hist_bucket(hist_low(HIST_BUCKETS - 1) - 1), HIST_BUCKETS - 2);
}
END_TEST

START_TEST(quantiles_name_the_bucket_of_the_rank)
{
	uint64_t c[HIST_BUCKETS];
	memset(c, 0, sizeof c);
	ck_assert_uint_eq(hist_quantile(c, 0.5), 0);
	/* 98 values of 100, one of 1000, one of 50000 */
	c[hist_bucket(100)] = 98;
	c[hist_bucket(1000)] = 1;
	c[hist_bucket(50000)] = 1;
	uint64_t p50 = hist_quantile(c, 0.5), p98 = hist_quantile(c, 0.98);
	uint64_t p99 = hist_quantile(c, 0.99), p100 = hist_quantile(c, 1.0);
	ck_assert_uint_eq(p50, hist_low(hist_bucket(100) + 1) - 1);
	ck_assert_uint_eq(p98, p50);
	ck_assert(p99 >= 1000 && p99 <= 1125);
	ck_assert(p100 >= 50000 && p100 <= 50000 + 50000 / 8);
	/* one value: every quantile is it */
	memset(c, 0, sizeof c);
	c[hist_bucket(7)] = 1;
	ck_assert_uint_eq(hist_quantile(c, 0.01), 7);
	ck_assert_uint_eq(hist_quantile(c, 1.0), 7);
}
END_TEST

static Suite *hist_suite(void)
{
	Suite *s = suite_create("lib_hist");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, small_values_have_a_bucket_each);
	tcase_add_test(tc, every_value_is_inside_its_bucket);
	tcase_add_test(tc, huge_values_count_in_the_last_bucket);
	tcase_add_test(tc, quantiles_name_the_bucket_of_the_rank);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(hist_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
