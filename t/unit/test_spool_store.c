/* Unit tests for the spool: ids, trailers, group commit, scan and
 * quarantine, against a real directory under /tmp. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "spool/spool.h"

static char dir[64];

static void setup(void)
{
	snprintf(dir, sizeof dir, "/tmp/kumo-spool-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static void open_spool(struct spool *s)
{
	char d[128], m[128], err[256];
	snprintf(d, sizeof d, "%s/data", dir);
	snprintf(m, sizeof m, "%s/meta", dir);
	ck_assert_msg(spool_open(s, d, m, err, sizeof err) == 0, "%s", err);
}

START_TEST(ids_are_unique_ordered_and_dated)
{
	char prev[SPOOL_ID_LEN + 1] = "";
	for (int i = 0; i < 10000; i++) {
		char id[SPOOL_ID_LEN + 1];
		spool_id_new(id);
		ck_assert(spool_id_valid(id));
		ck_assert_int_eq(id[12], '1'); /* version 1 */
		if (prev[0])
			ck_assert_str_ne(id, prev);
		memcpy(prev, id, sizeof id);
	}
	double t = spool_id_time(prev);
	ck_assert(t > (double)time(NULL) - 5 && t < (double)time(NULL) + 5);
	ck_assert(!spool_id_valid("0123"));
	ck_assert(!spool_id_valid("0123456789abcdef0123456789ABCDEF"));
}
END_TEST

struct trailer_row {
	const char *payload;
	int corrupt_at; /* -1: intact; else flip the byte at this offset */
	int truncate;   /* bytes cut off the end */
	int ok;
};

static const struct trailer_row trailer_rows[] = {
	{ "hello\r\n", -1, 0, 1 },
	{ "", -1, 0, 1 },
	{ "hello\r\n", 0, 0, 0 },
	{ "hello\r\n", -1, 1, 0 },
	{ "hello\r\n", -1, 20, 0 },
	{ "hello\r\n", 12, 0, 0 }, /* inside the trailer's length */
};

START_TEST(trailer_row)
{
	const struct trailer_row *r = &trailer_rows[_i];
	struct iovec v = { (void *)r->payload, strlen(r->payload) };
	char t[SPOOL_TRAILER_LEN + 1];
	spool_trailer_make(t, &v, 1);
	char buf[256];
	size_t n = (size_t)snprintf(buf, sizeof buf, "%s%s", r->payload, t);
	if (r->corrupt_at >= 0)
		buf[r->corrupt_at] ^= 0x20;
	n -= (size_t)r->truncate;
	size_t plen = 0;
	char err[128];
	int rc = spool_trailer_check(buf, n, &plen, err, sizeof err);
	ck_assert_int_eq(rc == 0, r->ok);
	if (r->ok)
		ck_assert_uint_eq(plen, strlen(r->payload));
}
END_TEST

START_TEST(commit_then_scan_finds_everything)
{
	struct spool s;
	open_spool(&s);
	struct spool_item items[50];
	const char *body1 = "Subject: t\r\n\r\n", *body2 = "body\r\n";
	struct iovec v[2] = { { (void *)body1, strlen(body1) }, { (void *)body2, strlen(body2) } };
	for (int i = 0; i < 50; i++) {
		memset(&items[i], 0, sizeof items[i]);
		spool_id_new(items[i].id);
		items[i].data = v;
		items[i].data_cnt = 2;
		items[i].meta = "{\"sender\":\"a@b\"}\n";
		items[i].meta_len = strlen(items[i].meta);
	}
	ck_assert_uint_eq(spool_commit(&s, items, 50), 0);
	char *payload;
	size_t len;
	char err[256];
	ck_assert_msg(spool_read(&s, "data", items[7].id, &payload, &len, err, sizeof err) == 0, "%s", err);
	ck_assert_str_eq(payload, "Subject: t\r\n\r\nbody\r\n");
	free(payload);
	struct spool_scan_stats st;
	ck_assert_int_eq(spool_scan(&s, NULL, NULL, NULL, &st, err, sizeof err), 0);
	ck_assert_uint_eq(st.found, 50);
	ck_assert_uint_eq(st.quarantined, 0);
	ck_assert_int_eq(spool_remove(&s, items[0].id, err, sizeof err), 0);
	ck_assert_int_eq(spool_scan(&s, NULL, NULL, NULL, &st, err, sizeof err), 0);
	ck_assert_uint_eq(st.found, 49);
	spool_close(&s);
}
END_TEST

static void count_id(void *arg, const char *id)
{
	ck_assert(spool_id_valid(id));
	(*(int *)arg)++;
}

/* spool_list names the messages without touching anything: a temporary
 * file in new/ stays, a removed message is not listed */
START_TEST(list_names_whole_messages_only)
{
	struct spool s;
	open_spool(&s);
	struct spool_item items[5];
	struct iovec v = { (void *)"x\r\n", 3 };
	for (int i = 0; i < 5; i++) {
		memset(&items[i], 0, sizeof items[i]);
		spool_id_new(items[i].id);
		items[i].data = &v;
		items[i].data_cnt = 1;
		items[i].meta = "{}\n";
		items[i].meta_len = 3;
	}
	ck_assert_uint_eq(spool_commit(&s, items, 5), 0);
	char path[300], err[256];
	snprintf(path, sizeof path, "%s/meta/new/inflight", dir);
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	ck_assert_int_eq(spool_remove(&s, items[2].id, err, sizeof err), 0);
	int n = 0;
	ck_assert_int_eq(spool_list(&s, count_id, &n, err, sizeof err), 0);
	ck_assert_int_eq(n, 4);
	ck_assert_int_eq(access(path, F_OK), 0);
	spool_close(&s);
}
END_TEST

static int warned;
static void count_warn(void *arg, const char *id, const char *why)
{
	(void)arg;
	(void)id;
	(void)why;
	warned++;
}

START_TEST(damaged_files_are_quarantined_and_temps_swept)
{
	struct spool s;
	open_spool(&s);
	struct spool_item items[3];
	struct iovec v = { (void *)"x\r\n", 3 };
	for (int i = 0; i < 3; i++) {
		memset(&items[i], 0, sizeof items[i]);
		spool_id_new(items[i].id);
		items[i].data = &v;
		items[i].data_cnt = 1;
		items[i].meta = "{}\n";
		items[i].meta_len = 3;
	}
	ck_assert_uint_eq(spool_commit(&s, items, 3), 0);
	char path[256];
	/* truncate one data file, corrupt one meta file */
	snprintf(path, sizeof path, "%s/data/%.2s/%s", dir, items[0].id, items[0].id);
	ck_assert_int_eq(truncate(path, 10), 0);
	snprintf(path, sizeof path, "%s/meta/%.2s/%s", dir, items[1].id, items[1].id);
	int fd = open(path, O_WRONLY);
	ck_assert_int_eq(pwrite(fd, "X", 1, 0), 1);
	close(fd);
	snprintf(path, sizeof path, "%s/meta/new/leftover", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	close(fd);
	struct spool_scan_stats st;
	char err[256];
	warned = 0;
	ck_assert_int_eq(spool_scan(&s, NULL, count_warn, NULL, &st, err, sizeof err), 0);
	ck_assert_uint_eq(st.found, 1);
	ck_assert_uint_eq(st.quarantined, 2);
	ck_assert_uint_eq(st.swept, 1);
	ck_assert_int_eq(warned, 2);
	snprintf(path, sizeof path, "%s/meta/quarantine/%s", dir, items[1].id);
	ck_assert_int_eq(access(path, F_OK), 0);
	spool_close(&s);
}
END_TEST

START_TEST(lock_is_exclusive)
{
	struct spool a, b;
	open_spool(&a);
	open_spool(&b);
	char err[256];
	ck_assert_int_eq(spool_lock(&a, err, sizeof err), 0);
	/* flock locks belong to the open file description: b's is separate */
	ck_assert_int_eq(spool_lock(&b, err, sizeof err), -1);
	ck_assert_ptr_nonnull(strstr(err, "locked by pid"));
	spool_close(&a);
	spool_close(&b);
}
END_TEST

START_TEST(unwritable_path_fails)
{
	struct spool s;
	char f[128], d[160], err[256];
	snprintf(f, sizeof f, "%s/afile", dir);
	int fd = open(f, O_WRONLY | O_CREAT, 0600);
	close(fd);
	snprintf(d, sizeof d, "%s/spool", f);
	ck_assert_int_eq(spool_open(&s, d, d, err, sizeof err), -1);
	ck_assert_ptr_nonnull(strstr(err, d));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("spool");
	TCase *tc = tcase_create("store");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, ids_are_unique_ordered_and_dated);
	tcase_add_loop_test(tc, trailer_row, 0, (int)(sizeof trailer_rows / sizeof trailer_rows[0]));
	tcase_add_test(tc, commit_then_scan_finds_everything);
	tcase_add_test(tc, list_names_whole_messages_only);
	tcase_add_test(tc, damaged_files_are_quarantined_and_temps_swept);
	tcase_add_test(tc, lock_is_exclusive);
	tcase_add_test(tc, unwritable_path_fails);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
