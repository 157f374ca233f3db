/* Check suite for lib/str.h: str_copy and str_join3 write and return what
 * snprintf with "%s" and "%s%s%s" writes and returns, for every buffer
 * size from 0 to past the whole; str_put appends without a NUL. */
#include "lib/str.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_copy_as_snprintf)
{
	static const char *const src[] = { "", "a", "hello", "0123456789abcdef0123" };
	for (size_t i = 0; i < sizeof src / sizeof src[0]; i++) {
		for (size_t cap = 0; cap <= strlen(src[i]) + 2; cap++) {
			char got[32], want[32];
			memset(got, 'x', sizeof got);
			memset(want, 'x', sizeof want);
			size_t n = str_copy(got, cap, src[i]);
			int w = snprintf(want, cap, "%s", src[i]);
			ck_assert_uint_eq(n, (size_t)w);
			ck_assert_msg(memcmp(got, want, sizeof got) == 0, "'%s' cap %zu", src[i], cap);
		}
	}
}
END_TEST

START_TEST(test_join3_as_snprintf)
{
	static const char *const part[] = { "", "OK <", "a@b.example", ">", "0123456789" };
	size_t np = sizeof part / sizeof part[0];
	for (size_t a = 0; a < np; a++)
		for (size_t b = 0; b < np; b++)
			for (size_t c = 0; c < np; c++) {
				size_t whole = strlen(part[a]) + strlen(part[b]) + strlen(part[c]);
				for (size_t cap = 0; cap <= whole + 2; cap++) {
					char got[64], want[64];
					memset(got, 'x', sizeof got);
					memset(want, 'x', sizeof want);
					size_t n = str_join3(got, cap, part[a], part[b], part[c]);
					int w = snprintf(want, cap, "%s%s%s", part[a], part[b], part[c]);
					ck_assert_uint_eq(n, (size_t)w);
					ck_assert_msg(memcmp(got, want, sizeof got) == 0, "cap %zu", cap);
				}
			}
}
END_TEST

START_TEST(test_put)
{
	char buf[16];
	memset(buf, 'x', sizeof buf);
	char *o = str_put(str_put(buf, "ab"), "cde");
	ck_assert_ptr_eq(o, buf + 5);
	ck_assert(memcmp(buf, "abcdex", 6) == 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("lib_str");
	TCase *tc = tcase_create("str");
	tcase_add_test(tc, test_copy_as_snprintf);
	tcase_add_test(tc, test_join3_as_snprintf);
	tcase_add_test(tc, test_put);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
