/* Check suite for lib/logrec.c: logrec_put writes KumoMTA's record shape,
 * records are buffered until a flush (or the buffer bound), and the RFC 3339
 * times.  The printer itself is checked in test_lib_jsonw. */
#include "lib/logrec.h"

#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/time.h>
#include <event2/event.h>

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

static int flush_asked;
static void count_flush(void *arg)
{
	(void)arg;
	flush_asked++;
}

/* A record of about size bytes (the sender pads it). */
static int put_sized(struct logrec *lr, size_t size)
{
	static char pad[4096];
	size_t n = size < sizeof pad ? size : sizeof pad - 1;
	memset(pad, 'a', n);
	pad[n] = '\0';
	struct logrec_fields f = { .type = "Reception", .id = "0123456789abcdef0123456789abcdef",
				   .sender = pad, .response = true, .code = 250, .text = "" };
	char err[300];
	return logrec_put(lr, &f, err, sizeof err);
}

static int count_lines(const char *s)
{
	int lines = 0;
	for (const char *p = s; *p; p++)
		lines += *p == '\n';
	return lines;
}

START_TEST(unbuffered_without_want_flush)
{
	struct logrec lr;
	open_logs(&lr);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(put_sized(&lr, 10), 0);
	/* with nobody to flush later (no want_flush), each record is written */
	char *got = read_logs();
	ck_assert_int_eq(count_lines(got), 3);
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
		ck_assert_int_eq(put_sized(&lr, 10), 0);
	ck_assert_int_eq(flush_asked, 1); /* once, when the buffer stopped being empty */
	char *got = read_logs();
	ck_assert_str_eq(got, "");
	free(got);
	ck_assert_int_eq(logrec_flush(&lr, err, sizeof err), 0);
	got = read_logs();
	ck_assert_int_eq(count_lines(got), 5);
	free(got);
	ck_assert_int_eq(put_sized(&lr, 10), 0);
	ck_assert_int_eq(flush_asked, 2);
	/* close writes what is left */
	logrec_close(&lr);
	got = read_logs();
	ck_assert_int_eq(count_lines(got), 6);
	free(got);
}
END_TEST

/* Attached to a loop: a record waits in the buffer, not past a pass of the
 * loop but until LOGREC_FLUSH_MS have gone by. */
START_TEST(attached_flushes_after_the_delay)
{
	struct event_base *base = event_base_new();
	struct logrec lr;
	open_logs(&lr);
	logrec_attach(&lr, base);
	ck_assert_int_eq(put_sized(&lr, 10), 0);
	ck_assert_int_eq(put_sized(&lr, 10), 0);
	event_base_loop(base, EVLOOP_NONBLOCK);
	char *got = read_logs();
	ck_assert_str_eq(got, "");
	free(got);
	struct timeval t0, t1;
	gettimeofday(&t0, NULL);
	ck_assert_int_eq(event_base_loop(base, EVLOOP_ONCE), 0);
	gettimeofday(&t1, NULL);
	double waited_ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_usec - t0.tv_usec) / 1e3;
	got = read_logs();
	ck_assert_int_eq(count_lines(got), 2);
	free(got);
	/* the timer, not something else, woke the loop: no sooner than the delay */
	ck_assert_double_ge(waited_ms, LOGREC_FLUSH_MS * 0.5);
	logrec_close(&lr);
	event_base_free(base);
}
END_TEST

START_TEST(buffer_bound_writes)
{
	struct logrec lr;
	open_logs(&lr);
	lr.want_flush = count_flush;
	size_t n = 0;
	/* records of about 1.5 KB: the buffer is written once it holds 64 KB */
	for (; n < 200; n++) {
		ck_assert_int_eq(put_sized(&lr, 1000), 0);
		if (lr.buf.len == 0)
			break;
	}
	ck_assert_uint_gt(n, 30);
	ck_assert_uint_lt(n, 100);
	char *got = read_logs();
	ck_assert_uint_ge(strlen(got), LOGREC_BUF_MAX);
	free(got);
	logrec_close(&lr);
}
END_TEST

/* Times asked for in this order, so that logrec_rfc3339's cache of the
 * last two seconds is hit, missed and refilled. */
static const struct {
	double t;
	const char *want;
} rfc3339_rows[] = {
	{ 0, "1970-01-01T00:00:00.000000000Z" },
	{ 1763949632.5, "2025-11-24T02:00:32.500000000Z" },
	/* the same second again (cached), then another */
	{ 1763949632.25, "2025-11-24T02:00:32.250000000Z" },
	{ 951782400.125, "2000-02-29T00:00:00.125000000Z" }, /* 2000-02-29 */
	/* two seconds in turn (a record's time and its message's creation
	 * time), three times, then a third that takes one's place */
	{ 1763949632.75, "2025-11-24T02:00:32.750000000Z" },
	{ 951782400.5, "2000-02-29T00:00:00.500000000Z" },
	{ 1763949632.75, "2025-11-24T02:00:32.750000000Z" },
	{ 951782400.5, "2000-02-29T00:00:00.500000000Z" },
	{ 1763949632.75, "2025-11-24T02:00:32.750000000Z" },
	{ 951782400.5, "2000-02-29T00:00:00.500000000Z" },
	{ 1763949633.0, "2025-11-24T02:00:33.000000000Z" },
	{ 951782400.0, "2000-02-29T00:00:00.000000000Z" },
	{ 1763949632.0, "2025-11-24T02:00:32.000000000Z" },
};

START_TEST(rfc3339_times)
{
	char buf[64];
	for (size_t i = 0; i < sizeof rfc3339_rows / sizeof rfc3339_rows[0]; i++) {
		logrec_rfc3339(rfc3339_rows[i].t, buf, sizeof buf);
		ck_assert_msg(strcmp(buf, rfc3339_rows[i].want) == 0, "row %zu: got %s, want %s", i, buf,
			      rfc3339_rows[i].want);
	}
	/* a buffer too short gets the start, terminated */
	char small[11];
	logrec_rfc3339(0, small, sizeof small);
	ck_assert_str_eq(small, "1970-01-01");
}
END_TEST

/* logrec_put writes KumoMTA's record: the fields every record has, in
 * this order, with what the caller set; times aside (each call reads the
 * clock).  want: the response object the text gives. */
static cJSON *expected(const struct logrec *lr, const struct logrec_fields *f, const char *want_response)
{
	cJSON *r = cJSON_CreateObject();
	cJSON_AddStringToObject(r, "type", f->type);
	cJSON_AddStringToObject(r, "id", f->id ? f->id : "");
	cJSON_AddStringToObject(r, "sender", f->sender ? f->sender : "");
	if (f->recipient_json)
		cJSON_AddItemToObject(r, "recipient", cJSON_Duplicate(f->recipient_json, 1));
	else
		cJSON_AddStringToObject(r, "recipient", f->recipient ? f->recipient : "");
	cJSON_AddStringToObject(r, "queue", f->queue ? f->queue : "");
	cJSON_AddStringToObject(r, "site", f->site ? f->site : "");
	cJSON_AddNumberToObject(r, "size", f->size);
	cJSON_AddItemToObject(r, "response", want_response ? cJSON_Parse(want_response) : cJSON_CreateNull());
	if (f->peer_addr) {
		cJSON *pa = cJSON_AddObjectToObject(r, "peer_address");
		cJSON_AddStringToObject(pa, "name", f->peer_name ? f->peer_name : "");
		cJSON_AddStringToObject(pa, "addr", f->peer_addr);
	} else {
		cJSON_AddNullToObject(r, "peer_address");
	}
	if (f->created > 0) {
		char t[48];
		cJSON_AddNumberToObject(r, "created", floor(f->created));
		logrec_rfc3339(f->created, t, sizeof t);
		cJSON_AddStringToObject(r, "created_time", t);
	}
	cJSON_AddNumberToObject(r, "num_attempts", f->num_attempts);
	cJSON_AddStringToObject(r, "bounce_classification", "Uncategorized");
	cJSON_AddItemToObject(r, "egress_pool", f->egress_pool ? cJSON_CreateString(f->egress_pool) : cJSON_CreateNull());
	cJSON_AddItemToObject(r, "egress_source",
			      f->egress_source ? cJSON_CreateString(f->egress_source) : cJSON_CreateNull());
	cJSON_AddNullToObject(r, "source_address");
	cJSON_AddNullToObject(r, "feedback_report");
	cJSON_AddObjectToObject(r, "meta");
	cJSON_AddObjectToObject(r, "headers");
	cJSON_AddItemToObject(r, "delivery_protocol",
			      f->delivery_protocol ? cJSON_CreateString(f->delivery_protocol) : cJSON_CreateNull());
	cJSON_AddStringToObject(r, "reception_protocol", "ESMTP");
	cJSON_AddStringToObject(r, "nodeid", lr->nodeid);
	if (f->session_id)
		cJSON_AddStringToObject(r, "session_id", f->session_id);
	for (const cJSON *x = f->extra ? f->extra->child : NULL; x; x = x->next)
		cJSON_AddItemToObject(r, x->string, cJSON_Duplicate(x, 1));
	return r;
}

/* The times every record has: present, then removed for the comparison
 * (created too when it is "now"). */
static void drop_times(cJSON *r, bool created_now)
{
	const char *keys[] = { "timestamp", "event_time", "created", "created_time" };
	for (int i = 0; i < (created_now ? 4 : 2); i++) {
		ck_assert_msg(cJSON_GetObjectItemCaseSensitive(r, keys[i]), "no %s", keys[i]);
		cJSON_DeleteItemFromObjectCaseSensitive(r, keys[i]);
	}
}

START_TEST(put_writes_the_record)
{
	cJSON *rcpts = cJSON_Parse("[\"a@x.example\",\"b@y.example\"]");
	cJSON *extra = cJSON_Parse("{\"tls_cipher\":\"TLS_AES_256_GCM_SHA384\",\"tls_peer_subject_name\":[\"CN=x\"]}");
	const struct {
		struct logrec_fields f;
		const char *response;
	} cases[] = {
		{ { .type = "Reception", .id = "0123456789abcdef0123456789abcdef", .created = 1763949632.25,
		    .sender = "s@example.com", .recipient = "r@example.net", .queue = "example.net", .size = 1296,
		    .response = true, .code = 250, .text = "", .peer_name = "client.example", .peer_addr = "127.0.0.1",
		    .session_id = "20639a16-9eed-4214-95a2-bb66cc400d6c" },
		  "{\"code\":250,\"enhanced_code\":null,\"content\":\"\",\"command\":null}" },
		{ { .type = "TransientFailure", .id = "fedcba9876543210fedcba9876543210", .created = 1763949632.5,
		    .sender = "", .recipient_json = rcpts, .queue = "camp:t@y.example", .site = "unspecified->(a|b)",
		    .size = 0, .response = true, .code = 451, .text = "4.4.4 no usable \"answer\"\n", .command = "RCPT TO",
		    .num_attempts = 3, .egress_pool = "unspecified", .egress_source = "unspecified",
		    .delivery_protocol = "ESMTP", .session_id = "s", .extra = extra },
		  "{\"code\":451,\"enhanced_code\":{\"class\":4,\"subject\":4,\"detail\":4},"
		  "\"content\":\"no usable \\\"answer\\\"\\n\",\"command\":\"RCPT TO\"}" },
		{ { .type = "Rejection", .response = true, .code = 550, .text = "5.7.1 relaying not permitted",
		    .command = "RCPT TO:<x@y>", .peer_addr = "::1" },
		  "{\"code\":550,\"enhanced_code\":{\"class\":5,\"subject\":7,\"detail\":1},"
		  "\"content\":\"relaying not permitted\",\"command\":\"RCPT TO:<x@y>\"}" },
		{ { .type = "Expiration", .id = "00000000000000000000000000000000", .created = 1.0, .response = true,
		    .code = 551, .text = "5.4.7 Next delivery time would be after the expiration time" },
		  "{\"code\":551,\"enhanced_code\":{\"class\":5,\"subject\":4,\"detail\":7},"
		  "\"content\":\"Next delivery time would be after the expiration time\",\"command\":null}" },
		{ { .type = "Bounce", .response = true, .code = 554, .text = "9.1.1 not an enhanced code" },
		  "{\"code\":554,\"enhanced_code\":null,\"content\":\"9.1.1 not an enhanced code\",\"command\":null}" },
		/* four digits in a part: not an enhanced code */
		{ { .type = "Bounce", .response = true, .code = 554, .text = "5.1.1234 no" },
		  "{\"code\":554,\"enhanced_code\":null,\"content\":\"5.1.1234 no\",\"command\":null}" },
		/* the code alone, and one with leading zeros */
		{ { .type = "Delivery", .response = true, .code = 250, .text = "2.0.0" },
		  "{\"code\":250,\"enhanced_code\":{\"class\":2,\"subject\":0,\"detail\":0},"
		  "\"content\":\"\",\"command\":null}" },
		{ { .type = "Bounce", .response = true, .code = 550, .text = "5.01.010 old" },
		  "{\"code\":550,\"enhanced_code\":{\"class\":5,\"subject\":1,\"detail\":10},"
		  "\"content\":\"old\",\"command\":null}" },
		{ { .type = "Bounce", .response = false }, NULL },
	};
	char err[300];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct logrec lr;
		open_logs(&lr);
		lr.want_flush = count_flush; /* keep the record in the buffer */
		ck_assert_int_eq(logrec_put(&lr, &cases[i].f, err, sizeof err), 0);
		cJSON *put = cJSON_ParseWithLength(lr.buf.p, lr.buf.len);
		ck_assert_msg(put != NULL, "case %zu: not JSON: %.*s", i, (int)lr.buf.len, lr.buf.p);
		ck_assert_msg(lr.buf.p[lr.buf.len - 1] == '\n', "case %zu: no newline", i);
		cJSON *want = expected(&lr, &cases[i].f, cases[i].response);
		drop_times(put, cases[i].f.created <= 0);
		char *a = cJSON_PrintUnformatted(put), *b = cJSON_PrintUnformatted(want);
		ck_assert_msg(strcmp(a, b) == 0, "case %zu:\nput  %s\nwant %s", i, a, b);
		free(a);
		free(b);
		cJSON_Delete(put);
		cJSON_Delete(want);
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
	tcase_add_test(tc, unbuffered_without_want_flush);
	tcase_add_test(tc, buffered_until_flush);
	tcase_add_test(tc, buffer_bound_writes);
	tcase_add_test(tc, attached_flushes_after_the_delay);
	tcase_add_test(tc, rfc3339_times);
	tcase_add_test(tc, put_writes_the_record);
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
