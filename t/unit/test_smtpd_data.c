/* Unit tests for the DATA reader: each row is the bytes after "DATA\r\n",
 * the expected stored message, the flags, and how many bytes are consumed
 * (the rest is the next command).  Every row is also fed one byte at a
 * time, so chunk boundaries cannot matter. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "smtpd/smtpd.h"

struct row {
	const char *in;
	enum invalid_line_endings ile;
	size_t max_size, max_line;
	int done;
	const char *out;      /* stored message when done and not too big */
	int too_big, too_long, bad_endings;
	size_t rest;          /* bytes left unconsumed after the terminator */
};

#define BIG 1000000
static const struct row rows[] = {
	{ "Subject: x\r\n\r\nbody\r\n.\r\n", ILE_DENY, BIG, 998, 1, "Subject: x\r\n\r\nbody\r\n", 0, 0, 0, 0 },
	{ ".\r\n", ILE_DENY, BIG, 998, 1, "", 0, 0, 0, 0 },
	{ "..leading\r\n.\r\n", ILE_DENY, BIG, 998, 1, ".leading\r\n", 0, 0, 0, 0 },
	{ "a\r\n..x\r\n...\r\n.\r\n", ILE_DENY, BIG, 998, 1, "a\r\n.x\r\n..\r\n", 0, 0, 0, 0 },
	{ "a\r\n.x\r\n.\r\n", ILE_DENY, BIG, 998, 1, "a\r\nx\r\n", 0, 0, 0, 0 },
	{ "a\r\n.\r\nMAIL FROM:<x@y>\r\n", ILE_DENY, BIG, 998, 1, "a\r\n", 0, 0, 0, 17 },
	{ "a\r\nb", ILE_DENY, BIG, 998, 0, NULL, 0, 0, 0, 0 },
	/* smuggling: none of these end the data */
	{ "a\n.\r\nMAIL FROM:<x@y>\r\n", ILE_DENY, BIG, 998, 0, NULL, 0, 0, 1, 0 },
	{ "a\r\n.\nMAIL FROM:<x@y>\r\n", ILE_DENY, BIG, 998, 0, NULL, 0, 0, 1, 0 },
	{ "a\r.\r\nMAIL FROM:<x@y>\r\n", ILE_DENY, BIG, 998, 0, NULL, 0, 0, 1, 0 },
	{ "a\n.\r\nb\r\n.\r\n", ILE_ALLOW, BIG, 998, 1, "a\n.\r\nb\r\n", 0, 0, 1, 0 },
	{ "a\n.\r\nb\r\n.\r\n", ILE_FIX, BIG, 998, 1, "a\r\n.\r\nb\r\n", 0, 0, 1, 0 },
	{ "a\rb\r\n.\r\n", ILE_FIX, BIG, 998, 1, "a\r\nb\r\n", 0, 0, 1, 0 },
	{ "a\rb\r\n.\r\n", ILE_DENY, BIG, 998, 1, "a\rb\r\n", 0, 0, 1, 0 },
	{ "0123456789\r\n.\r\n", ILE_DENY, 5, 998, 1, NULL, 1, 0, 0, 0 },
	{ "0123456789\r\n.\r\n", ILE_DENY, 12, 998, 1, "0123456789\r\n", 0, 0, 0, 0 },
	{ "0123456789\r\n.\r\n", ILE_DENY, BIG, 10, 1, "0123456789\r\n", 0, 0, 0, 0 },
	{ "01234567890\r\n.\r\n", ILE_DENY, BIG, 10, 1, NULL, 0, 1, 0, 0 },
	{ ".\rx\r\n.\r\n", ILE_DENY, BIG, 998, 1, "\rx\r\n", 0, 0, 1, 0 },
};

static void check_row(const struct row *r, size_t step)
{
	struct data_reader dr;
	data_reader_init(&dr, r->max_size, r->max_line, r->ile);
	struct evbuffer *out = evbuffer_new();
	size_t len = strlen(r->in), used = 0;
	while (used < len && dr.state != DR_DONE) {
		size_t n = len - used < step ? len - used : step;
		size_t u = data_reader_feed(&dr, r->in + used, n, out);
		used += u;
		if (u < n)
			break;
	}
	ck_assert_msg((dr.state == DR_DONE) == r->done, "'%s' step %zu: done=%d", r->in, step, dr.state == DR_DONE);
	ck_assert_int_eq(dr.too_big, r->too_big);
	ck_assert_int_eq(dr.line_too_long, r->too_long);
	ck_assert_int_eq(dr.bad_line_endings, r->bad_endings);
	if (r->done)
		ck_assert_uint_eq(len - used, r->rest);
	if (r->out) {
		size_t n = evbuffer_get_length(out);
		char *got = malloc(n + 1);
		evbuffer_remove(out, got, n);
		got[n] = '\0';
		ck_assert_msg(strcmp(got, r->out) == 0, "'%s' step %zu: stored '%s'", r->in, step, got);
		free(got);
	}
	evbuffer_free(out);
}

START_TEST(data_row)
{
	check_row(&rows[_i], 1 << 20);
	check_row(&rows[_i], 1);
	check_row(&rows[_i], 3);
}
END_TEST

/* One feed of in (in chunks of step bytes) to its end: what is stored,
 * how much was used and the flags, as one string. */
static char *feed_all(const char *in, size_t len, size_t step, enum invalid_line_endings ile)
{
	struct data_reader dr;
	data_reader_init(&dr, BIG, 30, ile);
	struct evbuffer *out = evbuffer_new();
	size_t used = 0;
	while (used < len && dr.state != DR_DONE) {
		size_t n = len - used < step ? len - used : step;
		size_t u = data_reader_feed(&dr, in + used, n, out);
		used += u;
		if (u < n)
			break;
	}
	size_t n = evbuffer_get_length(out);
	char *got = malloc(n + 64);
	evbuffer_remove(out, got, n);
	snprintf(got + n, 64, "|%zu|%d%d%d%d", used, dr.state == DR_DONE, dr.too_big, dr.line_too_long,
		 dr.bad_line_endings);
	evbuffer_free(out);
	return got;
}

/* Random bodies of 'a', '.', CR and LF: however they are cut into chunks,
 * the reader stores and consumes the same (its scan looks ahead for CR
 * and LF within a chunk, so chunking is what could break it). */
START_TEST(random_bodies_any_chunking)
{
	static const char alphabet[] = "aaaa..\r\r\n\n";
	unsigned seed = 12345u + (unsigned)_i;
	char in[400];
	for (int k = 0; k < 2000; k++) {
		size_t len = (size_t)(rand_r(&seed) % 300);
		for (size_t i = 0; i < len; i++)
			in[i] = alphabet[rand_r(&seed) % (sizeof alphabet - 1)];
		enum invalid_line_endings ile = (enum invalid_line_endings)(k % 3);
		char *whole = feed_all(in, len, len ? len : 1, ile);
		size_t steps[] = { 1, 2, 7 };
		for (size_t s = 0; s < 3; s++) {
			char *cut = feed_all(in, len, steps[s], ile);
			ck_assert_msg(strcmp(whole, cut) == 0, "case %d (mode %d, step %zu): '%.*s'", k, (int)ile,
				      steps[s], (int)len, in);
			free(cut);
		}
		free(whole);
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("smtpd_data");
	TCase *tc = tcase_create("rows");
	tcase_add_loop_test(tc, data_row, 0, (int)(sizeof rows / sizeof rows[0]));
	tcase_add_loop_test(tc, random_bodies_any_chunking, 0, 4);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
