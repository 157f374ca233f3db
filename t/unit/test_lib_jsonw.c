/* Check suite for lib/jsonw.c: for a table of documents, json_print gives
 * the text cJSON_PrintUnformatted gives (the frames and logs depended on
 * cJSON's output before), and frames made with it read back. */
#include "lib/frame.h"
#include "lib/jsonw.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const docs[] = {
	"{}",
	"[]",
	"null",
	"true",
	"\"\"",
	"0",
	"-0.5",
	"[1,-2,3.25,1e300,-2.5e-7,0.1,123456789012345]",
	"{\"a\":{\"b\":{\"c\":[{},[],null,false,true]}}}",
	"\"escapes \\\" \\\\ / \\b \\f \\n \\r \\t \\u0001 \\u001f end\"",
	"\"\\u00e9t\\u00e9 \\u20ac \\ud83d\\ude00\"",
	"{\"\":\"empty key\",\"k\\n\":\"newline in a key\"}",
	"{\"id\":\"0123456789abcdef0123456789abcdef\",\"meta\":{\"received_from\":\"127.0.0.1:2525\","
	"\"port\":2525,\"ratio\":0.3333333333333333},\"recipient\":[\"a@b.example\",\"c@d.example\"]}",
	"\"\\\"\\\"\\\"\"",
	"\"tail escape\\n\"",
	"\"\\nhead escape\"",
};

START_TEST(same_text_as_cjson)
{
	cJSON *j = cJSON_Parse(docs[_i]);
	ck_assert_msg(j != NULL, "test document %d does not parse", _i);
	char *want = cJSON_PrintUnformatted(j);
	size_t len = 0;
	char *got = json_print(j, &len);
	ck_assert_str_eq(got, want);
	ck_assert_uint_eq(len, strlen(want));
	free(want);
	free(got);
	cJSON_Delete(j);
}
END_TEST

START_TEST(long_strings)
{
	/* runs without escapes, and escapes at every position, at lengths
	 * around the buffer's growth */
	for (size_t n = 0; n < 300; n += 7) {
		char *s = malloc(n + 1);
		for (size_t i = 0; i < n; i++)
			s[i] = (char)(i % 11 == 3 ? '"' : i % 13 == 5 ? '\n' : 'a' + (char)(i % 26));
		s[n] = '\0';
		cJSON *j = cJSON_CreateString(s);
		char *want = cJSON_PrintUnformatted(j);
		char *got = json_print(j, NULL);
		ck_assert_str_eq(got, want);
		free(want);
		free(got);
		cJSON_Delete(j);
		free(s);
	}
}
END_TEST

/* Strings are scanned sixteen bytes at a time (SSE2), then eight, for what
 * needs an escape:
 * each byte from 0x00 to 0xff at each position of strings of 1 to 40
 * bytes (next to runs of plain letters and of bytes of 0x80 and above)
 * prints as cJSON prints it. */
START_TEST(every_byte_at_every_position)
{
	for (size_t n = 1; n <= 40; n++) {
		for (size_t pos = 0; pos < n; pos++) {
			for (int c = 1; c < 256; c++) {  /* 0 would end the string */
				char s[48];
				for (size_t i = 0; i < n; i++)
					s[i] = (char)(i % 5 == 4 ? 0xc3 : 'a' + (int)(i % 26));
				s[pos] = (char)c;
				s[n] = '\0';
				cJSON *j = cJSON_CreateString(s);
				char *want = cJSON_PrintUnformatted(j);
				char *got = json_print(j, NULL);
				ck_assert_msg(strcmp(got, want) == 0, "byte 0x%02x at %zu of %zu: %s, not %s", c,
					      pos, n, got, want);
				free(want);
				free(got);
				cJSON_Delete(j);
			}
		}
	}
}
END_TEST

/* Whole numbers up to 2^53 are printed exactly (cJSON's 15 significant
 * digits would round 9007199254740991). */
START_TEST(whole_numbers_exact)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddNumberToObject(j, "a", 9007199254740991.0);
	cJSON_AddNumberToObject(j, "b", -1234567890123456.0);
	char *got = json_print(j, NULL);
	ck_assert_str_eq(got, "{\"a\":9007199254740991,\"b\":-1234567890123456}");
	free(got);
	cJSON_Delete(j);
}
END_TEST

START_TEST(frames_read_back)
{
	cJSON *j = cJSON_Parse(docs[12]);
	size_t len;
	uint8_t *f = frame_text(j, &len);
	ck_assert_ptr_nonnull(f);
	cJSON *back = NULL;
	size_t used = 0;
	char err[200];
	ck_assert_int_eq(frame_decode(f, len, &back, &used, err, sizeof err), 1);
	ck_assert_uint_eq(used, len);
	ck_assert(cJSON_Compare(j, back, 1));
	cJSON_Delete(back);
	cJSON_Delete(j);
	free(f);
}
END_TEST

static Suite *jsonw_suite(void)
{
	Suite *s = suite_create("lib_jsonw");
	TCase *tc = tcase_create("jsonw");
	tcase_add_loop_test(tc, same_text_as_cjson, 0, (int)(sizeof docs / sizeof docs[0]));
	tcase_add_test(tc, long_strings);
	tcase_add_test(tc, every_byte_at_every_position);
	tcase_add_test(tc, whole_numbers_exact);
	tcase_add_test(tc, frames_read_back);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(jsonw_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
