/* Check suite for lib/base64.c: one table of (bytes, base64) pairs.  A row
 * with bytes is checked both ways (encode gives the text, decode gives the
 * bytes back); a row without bytes is text that decoding must refuse. */
#include "lib/base64.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct base64_case {
	const char *raw;    /* NULL: enc is invalid */
	size_t rawlen;
	const char *enc;
	size_t enclen;
};

#define BOTH(raw, enc) { raw, sizeof(raw) - 1, enc, sizeof(enc) - 1 }
#define INVALID(enc) { NULL, 0, enc, sizeof(enc) - 1 }

static const struct base64_case cases[] = {
	/* RFC 4648 section 10 */
	BOTH("", ""),
	BOTH("f", "Zg=="),
	BOTH("fo", "Zm8="),
	BOTH("foo", "Zm9v"),
	BOTH("foob", "Zm9vYg=="),
	BOTH("fooba", "Zm9vYmE="),
	BOTH("foobar", "Zm9vYmFy"),
	/* binary, the whole alphabet's edges */
	BOTH("\0", "AA=="),
	BOTH("\0\0\0", "AAAA"),
	BOTH("\xff\xfe\xfd", "//79"),
	BOTH("\xfb\xff", "+/8="),
	BOTH("\x00\x10\x83\x10\x51\x87\x20\x92\x8b\x30\xd3\x8f\x41\x14\x93\x51\x55\x97"
	     "\x61\x96\x9b\x71\xd7\x9f\x82\x18\xa3\x92\x59\xa7\xa2\x9a\xab\xb2\xdb\xaf"
	     "\xc3\x1c\xb3\xd3\x5d\xb7\xe3\x9e\xbb\xf3\xdf\xbf",
	     "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"),
	BOTH("hello\0world", "aGVsbG8Ad29ybGQ="),
	/* bad length */
	INVALID("A"),
	INVALID("Zg"),
	INVALID("Zg="),
	INVALID("Zm9vY"),
	/* bad padding */
	INVALID("===="),
	INVALID("Z==="),
	INVALID("Zg==Zg=="),
	INVALID("Zm=v"),
	INVALID("Zm9v===="),
	/* non-zero bits after the data */
	INVALID("Zh=="),
	INVALID("Zm9="),
	INVALID("QR=="),
	/* bytes outside the alphabet */
	INVALID("Zm9v\n"),
	INVALID("Zm9v\r\nYmFy"),
	INVALID("Zm 9"),
	INVALID("Zm9v-A=="),
	INVALID("Zm9v_w=="),
	INVALID("Zg\0="),
	INVALID("Zm9\x80"),
};

START_TEST(test_base64_table)
{
	const struct base64_case *c = &cases[_i];
	size_t outlen = 12345;
	unsigned char *dec = base64_decode(c->enc, c->enclen, &outlen);
	if (!c->raw) {
		ck_assert_msg(dec == NULL, "row %d: invalid input decoded", _i);
		return;
	}
	ck_assert_msg(dec != NULL, "row %d: \"%s\" did not decode", _i, c->enc);
	ck_assert_uint_eq(outlen, c->rawlen);
	ck_assert(memcmp(dec, c->raw, c->rawlen) == 0);
	ck_assert_int_eq(dec[outlen], '\0');
	free(dec);

	char *enc = base64_encode(c->raw, c->rawlen);
	ck_assert_str_eq(enc, c->enc);
	free(enc);
}
END_TEST

static Suite *base64_suite(void)
{
	Suite *s = suite_create("lib_base64");
	TCase *tc = tcase_create("table");
	tcase_add_loop_test(tc, test_base64_table, 0, (int)(sizeof cases / sizeof cases[0]));
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(base64_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
