/* Check suite for lib/crc32c.c: one table of inputs and their CRC-32C
 * (the check value, RFC 3720 B.4 vectors and a few strings).  Each input is
 * also fed in two pieces at every split point and one byte at a time, which
 * must give the same value as feeding it whole. */
#include "lib/crc32c.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum fill { TEXT, ZEROS, ONES, ASCENDING, DESCENDING, PATTERN };

struct crc_case {
	enum fill fill;
	const char *text;   /* TEXT only */
	size_t len;         /* others */
	uint32_t crc;
};

static const struct crc_case cases[] = {
	{ TEXT, "", 0, 0x00000000 },
	{ TEXT, "123456789", 0, 0xE3069283 },   /* the check value */
	{ TEXT, "a", 0, 0xC1D04330 },
	{ TEXT, "abc", 0, 0x364B3FB7 },
	{ TEXT, "The quick brown fox jumps over the lazy dog", 0, 0x22620404 },
	{ ZEROS, NULL, 32, 0x8A9136AA },         /* RFC 3720 B.4 */
	{ ONES, NULL, 32, 0x62A8AB43 },
	{ ASCENDING, NULL, 32, 0x46DD794E },
	{ DESCENDING, NULL, 32, 0x113FDB5C },
	{ PATTERN, NULL, 1024, 0x2CDF6E8F },     /* bytes 0..255 four times */
};

static size_t fill(const struct crc_case *c, unsigned char *buf, size_t size)
{
	size_t n = c->fill == TEXT ? strlen(c->text) : c->len;
	ck_assert_uint_le(n, size);
	for (size_t i = 0; i < n; i++) {
		switch (c->fill) {
		case TEXT: buf[i] = (unsigned char)c->text[i]; break;
		case ZEROS: buf[i] = 0; break;
		case ONES: buf[i] = 0xFF; break;
		case ASCENDING: buf[i] = (unsigned char)i; break;
		case DESCENDING: buf[i] = (unsigned char)(n - 1 - i); break;
		case PATTERN: buf[i] = (unsigned char)(i & 0xFF); break;
		}
	}
	return n;
}

START_TEST(test_crc32c_table)
{
	const struct crc_case *c = &cases[_i];
	unsigned char buf[1024];
	size_t n = fill(c, buf, sizeof buf);

	uint32_t whole = crc32c(0, buf, n);
	ck_assert_msg(whole == c->crc, "row %d: got %08x, want %08x", _i, whole, c->crc);

	for (size_t split = 0; split <= n; split++) {
		uint32_t crc = crc32c(0, buf, split);
		crc = crc32c(crc, buf + split, n - split);
		ck_assert_msg(crc == c->crc, "row %d: split at %zu gave %08x", _i, split, crc);
	}

	uint32_t crc = 0;
	for (size_t i = 0; i < n; i++)
		crc = crc32c(crc, buf + i, 1);
	ck_assert_uint_eq(crc, c->crc);
	ck_assert_uint_eq(crc32c(crc, buf, 0), c->crc);   /* empty piece changes nothing */
}
END_TEST

static Suite *crc32c_suite(void)
{
	Suite *s = suite_create("lib_crc32c");
	TCase *tc = tcase_create("table");
	tcase_add_loop_test(tc, test_crc32c_table, 0, (int)(sizeof cases / sizeof cases[0]));
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(crc32c_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
