/* Check suite for lib/logrec.c: records are printed as cJSON prints them,
 * buffered until a flush (or the buffer bound), and the RFC 3339 times. */
#include "lib/logrec.h"

#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];

static void setup(void)
{
	snprintf(dir, sizeof dir, "/tmp/kumo-logrec-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static void open_logs(struct logrec *lr)
{
	char conf[200], err[300];
	snprintf(conf, sizeof conf, "{\"log_dir\":\"%s/logs\"}", dir);
	cJSON *c = cJSON_Parse(conf);
	ck_assert_msg(logrec_open(lr, c, err, sizeof err) == 0, "%s", err);
	cJSON_Delete(c);
}

/* Everything in the log directory (one segment expected), or "" if none. */
static char *read_logs(void)
{
	char path[200];
	snprintf(path, sizeof path, "%s/logs", dir);
	DIR *d = opendir(path);
	ck_assert_ptr_nonnull(d);
	char *all = calloc(1, 1);
	size_t len = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char f[600];
		snprintf(f, sizeof f, "%s/%s", path, e->d_name);
		FILE *fp = fopen(f, "r");
		ck_assert_ptr_nonnull(fp);
		char buf[4096];
		size_t n;
		while ((n = fread(buf, 1, sizeof buf, fp)) > 0) {
			all = realloc(all, len + n + 1);
			memcpy(all + len, buf, n);
			len += n;
			all[len] = '\0';
		}
		fclose(fp);
	}
	closedir(d);
	return all;
}

/* Values that exercise every branch of the printer. */
static cJSON *sample(int i)
{
	cJSON *r = cJSON_CreateObject();
	cJSON_AddStringToObject(r, "plain", "hello");
	cJSON_AddStringToObject(r, "escapes", "q\"b\\s/\b\f\n\r\t\x01\x1f end");
	cJSON_AddStringToObject(r, "utf8", "caf\xc3\xa9 \xe2\x82\xac");
	cJSON_AddStringToObject(r, "", "empty key");
	cJSON_AddNumberToObject(r, "zero", 0);
	cJSON_AddNumberToObject(r, "int", 1763949632 + i);
	cJSON_AddNumberToObject(r, "neg", -42);
	cJSON_AddNumberToObject(r, "big", 999999999999999.0); /* 15 digits: cJSON is exact */
	cJSON_AddNumberToObject(r, "huge", 1e300);
	cJSON_AddNumberToObject(r, "frac", 0.1 + i);
	cJSON_AddNumberToObject(r, "third", 1.0 / 3.0);
	cJSON_AddNumberToObject(r, "tiny", -2.5e-7);
	cJSON_AddTrueToObject(r, "t");
	cJSON_AddFalseToObject(r, "f");
	cJSON_AddNullToObject(r, "n");
	cJSON_AddItemToObject(r, "raw", cJSON_CreateRaw("[1,2,3]"));
	cJSON *a = cJSON_AddArrayToObject(r, "arr");
	cJSON_AddItemToArray(a, cJSON_CreateString("x"));
	cJSON_AddItemToArray(a, cJSON_CreateNumber(7));
	cJSON_AddItemToArray(a, cJSON_CreateArray());
	cJSON *o = cJSON_AddObjectToObject(r, "obj");
	cJSON_AddItemToObject(o, "inner", cJSON_CreateObject());
	cJSON_AddStringToObject(o, "k", "v");
	return r;
}

START_TEST(prints_as_cjson_does)
{
	struct logrec lr;
	open_logs(&lr);
	char want[8192] = "", err[300];
	for (int i = 0; i < 3; i++) {
		cJSON *r = sample(i);
		char *text = cJSON_PrintUnformatted(r);
		strcat(want, text);
		strcat(want, "\n");
		free(text);
		ck_assert_int_eq(logrec_write(&lr, r, err, sizeof err), 0);
	}
	/* with nobody to flush later (no want_flush), each record is written */
	char *got = read_logs();
	ck_assert_str_eq(got, want);
	free(got);
	logrec_close(&lr);
}
END_TEST

static int flush_asked;
static void count_flush(void *arg)
{
	(void)arg;
	flush_asked++;
}

/* Whole numbers up to 2^53 are printed exactly (cJSON's 15 significant
 * digits would round 9007199254740991). */
START_TEST(whole_numbers_exact)
{
	struct logrec lr;
	open_logs(&lr);
	char err[300];
	cJSON *r = cJSON_CreateObject();
	cJSON_AddNumberToObject(r, "a", 9007199254740991.0);
	cJSON_AddNumberToObject(r, "b", -1234567890123456.0);
	ck_assert_int_eq(logrec_write(&lr, r, err, sizeof err), 0);
	char *got = read_logs();
	ck_assert_str_eq(got, "{\"a\":9007199254740991,\"b\":-1234567890123456}\n");
	free(got);
	logrec_close(&lr);
}
END_TEST

START_TEST(buffered_until_flush)
{
	struct logrec lr;
	open_logs(&lr);
	lr.want_flush = count_flush;
	flush_asked = 0;
	char err[300];
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(logrec_write(&lr, sample(i), err, sizeof err), 0);
	ck_assert_int_eq(flush_asked, 1); /* once, when the buffer stopped being empty */
	char *got = read_logs();
	ck_assert_str_eq(got, "");
	free(got);
	ck_assert_int_eq(logrec_flush(&lr, err, sizeof err), 0);
	got = read_logs();
	int lines = 0;
	for (char *p = got; *p; p++)
		lines += *p == '\n';
	ck_assert_int_eq(lines, 5);
	free(got);
	ck_assert_int_eq(logrec_write(&lr, sample(9), err, sizeof err), 0);
	ck_assert_int_eq(flush_asked, 2);
	/* close writes what is left */
	logrec_close(&lr);
	got = read_logs();
	lines = 0;
	for (char *p = got; *p; p++)
		lines += *p == '\n';
	ck_assert_int_eq(lines, 6);
	free(got);
}
END_TEST

START_TEST(buffer_bound_writes)
{
	struct logrec lr;
	open_logs(&lr);
	lr.want_flush = count_flush;
	char err[300];
	size_t n = 0;
	char *got = NULL;
	/* records of about 1 KB: the buffer is written once it holds 64 KB */
	for (; n < 200; n++) {
		cJSON *r = cJSON_CreateObject();
		char big[1000];
		memset(big, 'a', sizeof big - 1);
		big[sizeof big - 1] = '\0';
		cJSON_AddStringToObject(r, "big", big);
		ck_assert_int_eq(logrec_write(&lr, r, err, sizeof err), 0);
		if (lr.buf.len == 0)
			break;
	}
	ck_assert_uint_gt(n, 50);
	ck_assert_uint_lt(n, 100);
	got = read_logs();
	ck_assert_uint_ge(strlen(got), LOGREC_BUF_MAX);
	free(got);
	logrec_close(&lr);
}
END_TEST

START_TEST(rfc3339_times)
{
	char buf[64];
	logrec_rfc3339(0, buf, sizeof buf);
	ck_assert_str_eq(buf, "1970-01-01T00:00:00.000000000Z");
	logrec_rfc3339(1763949632.5, buf, sizeof buf);
	ck_assert_str_eq(buf, "2025-11-24T02:00:32.500000000Z");
	/* the same second again (cached), then another */
	logrec_rfc3339(1763949632.25, buf, sizeof buf);
	ck_assert_str_eq(buf, "2025-11-24T02:00:32.250000000Z");
	logrec_rfc3339(951782400.125, buf, sizeof buf); /* 2000-02-29 */
	ck_assert_str_eq(buf, "2000-02-29T00:00:00.125000000Z");
}
END_TEST

/* logrec_put writes the record logrec_new and the callers' replacements
 * made: the same JSON, times aside (each call reads the clock). */
static cJSON *by_tree(struct logrec *lr, const struct logrec_fields *f)
{
	cJSON *r = logrec_new(lr, f->type, f->id ? f->id : "", f->created);
	if (f->sender)
		cJSON_ReplaceItemInObjectCaseSensitive(r, "sender", cJSON_CreateString(f->sender));
	if (f->recipient_json)
		cJSON_ReplaceItemInObjectCaseSensitive(r, "recipient", cJSON_Duplicate(f->recipient_json, 1));
	else if (f->recipient)
		cJSON_ReplaceItemInObjectCaseSensitive(r, "recipient", cJSON_CreateString(f->recipient));
	if (f->queue)
		cJSON_ReplaceItemInObjectCaseSensitive(r, "queue", cJSON_CreateString(f->queue));
	if (f->site)
		cJSON_ReplaceItemInObjectCaseSensitive(r, "site", cJSON_CreateString(f->site));
	cJSON_ReplaceItemInObjectCaseSensitive(r, "size", cJSON_CreateNumber(f->size));
	if (f->response)
		cJSON_ReplaceItemInObjectCaseSensitive(r, "response", logrec_response(f->code, f->text, f->command));
	if (f->peer_addr) {
		cJSON *pa = cJSON_CreateObject();
		cJSON_AddStringToObject(pa, "name", f->peer_name ? f->peer_name : "");
		cJSON_AddStringToObject(pa, "addr", f->peer_addr);
		cJSON_ReplaceItemInObjectCaseSensitive(r, "peer_address", pa);
	}
	cJSON_ReplaceItemInObjectCaseSensitive(r, "num_attempts", cJSON_CreateNumber(f->num_attempts));
	if (f->egress_pool)
		cJSON_ReplaceItemInObjectCaseSensitive(r, "egress_pool", cJSON_CreateString(f->egress_pool));
	if (f->egress_source)
		cJSON_ReplaceItemInObjectCaseSensitive(r, "egress_source", cJSON_CreateString(f->egress_source));
	if (f->delivery_protocol)
		cJSON_ReplaceItemInObjectCaseSensitive(r, "delivery_protocol", cJSON_CreateString(f->delivery_protocol));
	if (f->session_id)
		cJSON_AddStringToObject(r, "session_id", f->session_id);
	for (const cJSON *x = f->extra ? f->extra->child : NULL; x; x = x->next)
		cJSON_AddItemToObject(r, x->string, cJSON_Duplicate(x, 1));
	return r;
}

static void drop_times(cJSON *r)
{
	cJSON_DeleteItemFromObjectCaseSensitive(r, "timestamp");
	cJSON_DeleteItemFromObjectCaseSensitive(r, "event_time");
}

START_TEST(put_matches_new)
{
	cJSON *rcpts = cJSON_Parse("[\"a@x.example\",\"b@y.example\"]");
	cJSON *extra = cJSON_Parse("{\"tls_cipher\":\"TLS_AES_256_GCM_SHA384\",\"tls_peer_subject_name\":[\"CN=x\"]}");
	const struct logrec_fields cases[] = {
		{ .type = "Reception", .id = "0123456789abcdef0123456789abcdef", .created = 1763949632.25,
		  .sender = "s@example.com", .recipient = "r@example.net", .queue = "example.net", .size = 1296,
		  .response = true, .code = 250, .text = "", .peer_name = "client.example", .peer_addr = "127.0.0.1",
		  .session_id = "20639a16-9eed-4214-95a2-bb66cc400d6c" },
		{ .type = "TransientFailure", .id = "fedcba9876543210fedcba9876543210", .created = 1763949632.5,
		  .sender = "", .recipient_json = rcpts, .queue = "camp:t@y.example", .site = "unspecified->(a|b)",
		  .size = 0, .response = true, .code = 451, .text = "4.4.4 no usable \"answer\"\n", .command = "RCPT TO",
		  .num_attempts = 3, .egress_pool = "unspecified", .egress_source = "unspecified",
		  .delivery_protocol = "ESMTP", .session_id = "s", .extra = extra },
		{ .type = "Rejection", .response = true, .code = 550, .text = "5.7.1 relaying not permitted",
		  .command = "RCPT TO:<x@y>", .peer_addr = "::1" },
		{ .type = "Expiration", .id = "00000000000000000000000000000000", .created = 1.0,
		  .response = true, .code = 551, .text = "5.4.7 Next delivery time would be after the expiration time" },
		{ .type = "Bounce", .response = false, .text = "9.1.1 not an enhanced code" },
	};
	char err[300];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct logrec lr;
		open_logs(&lr);
		lr.want_flush = count_flush; /* keep the record in the buffer */
		ck_assert_int_eq(logrec_put(&lr, &cases[i], err, sizeof err), 0);
		cJSON *put = cJSON_ParseWithLength(lr.buf.p, lr.buf.len);
		ck_assert_msg(put != NULL, "case %zu: not JSON: %.*s", i, (int)lr.buf.len, lr.buf.p);
		ck_assert_msg(lr.buf.p[lr.buf.len - 1] == '\n', "case %zu: no newline", i);
		cJSON *tree = by_tree(&lr, &cases[i]);
		drop_times(put);
		drop_times(tree);
		if (cases[i].created <= 0) { /* created is now too */
			cJSON_DeleteItemFromObjectCaseSensitive(put, "created_time");
			cJSON_DeleteItemFromObjectCaseSensitive(tree, "created_time");
		}
		char *a = cJSON_PrintUnformatted(put), *b = cJSON_PrintUnformatted(tree);
		ck_assert_msg(cJSON_Compare(put, tree, 1), "case %zu:\nput  %s\ntree %s", i, a, b);
		free(a);
		free(b);
		cJSON_Delete(put);
		cJSON_Delete(tree);
		logrec_close(&lr);
	}
	cJSON_Delete(rcpts);
	cJSON_Delete(extra);
}
END_TEST

static Suite *logrec_suite(void)
{
	Suite *s = suite_create("lib_logrec");
	TCase *tc = tcase_create("logrec");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, prints_as_cjson_does);
	tcase_add_test(tc, whole_numbers_exact);
	tcase_add_test(tc, buffered_until_flush);
	tcase_add_test(tc, buffer_bound_writes);
	tcase_add_test(tc, rfc3339_times);
	tcase_add_test(tc, put_matches_new);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(logrec_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
