/* Unit tests for the spool: ids, the lock, and the segments (group commit,
 * reading back, listing, the queue manager's journal, removal, rolling,
 * recovery at start), against a real directory under /tmp.  Other writers
 * are forked children where a test needs a second process. */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "lib/crc32c.h"
#include "spool/spool.h"

/* What the tests know of the record layout (see spool.c): a 76-byte header
 * -- "KSR1", the type at 4 (2 = SEAL, 5 = INLINE), the meta length at 8,
 * the data length (or a SEAL's message count) at 24 (64-bit little endian),
 * the header's CRC-32C at 72 -- then the meta text and its CRC-32C, and in
 * an INLINE record the message bytes.  A SEAL has no meta text: 80 bytes. */
#define REC_HDR 76
#define REC_MIN 80
#define REC_SEAL 2
#define REC_INLINE 5

static char dir[64];
/* The "store" case runs with two files per segment (inline_data cleared
 * after spool_open), the "inline" case with one (the default on one
 * device, as /tmp/<dir>/data and /tmp/<dir>/meta are). */
static bool inline_mode;

static void setup(void)
{
	snprintf(dir, sizeof dir, "/tmp/kumo-spool-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void setup_inline(void)
{
	setup();
	inline_mode = true;
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* The spool's clock: spool.c reads gettimeofday (and only spool.c does),
 * for segment names, stamps and ages.  This definition takes the place of
 * libc's in the test program, so a test can age a segment by moving time
 * forward.  Each test runs in its own process, but put it back anyway. */
static int64_t clock_skew_us;

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
	(void)tz;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 + clock_skew_us;
	tv->tv_sec = (time_t)(us / 1000000);
	tv->tv_usec = (suseconds_t)(us % 1000000);
	return 0;
}

/* ---- helpers ------------------------------------------------------------- */

static int try_open(struct spool *s)
{
	char d[128], m[128], err[256];
	snprintf(d, sizeof d, "%s/data", dir);
	snprintf(m, sizeof m, "%s/meta", dir);
	int rc = spool_open(s, d, m, err, sizeof err);
	if (rc == 0) {
		ck_assert(s->inline_data);
		s->inline_data = inline_mode;
	}
	return rc;
}

static void open_spool(struct spool *s)
{
	char d[128], m[128], err[256];
	snprintf(d, sizeof d, "%s/data", dir);
	snprintf(m, sizeof m, "%s/meta", dir);
	ck_assert_msg(spool_open(s, d, m, err, sizeof err) == 0, "%s", err);
	ck_assert(s->inline_data);
	s->inline_data = inline_mode;
}

static bool is_seg_name(const char *n)
{
	for (int i = 0; i < SPOOL_SEG_NAME_LEN; i++)
		if (!((n[i] >= '0' && n[i] <= '9') || (n[i] >= 'a' && n[i] <= 'f')))
			return false;
	return n[SPOOL_SEG_NAME_LEN] == '\0';
}

/* The writer's pid, as the last 8 hex digits of a segment name. */
static bool seg_of_pid(const char *name, pid_t pid)
{
	char want[16];
	snprintf(want, sizeof want, "%08x", (unsigned)pid);
	return strcmp(name + 16, want) == 0;
}

/* <dir>/<which>/seg/<name><suffix> */
static void seg_path(char *buf, size_t len, const char *which, const char *name, const char *suffix)
{
	snprintf(buf, len, "%s/%s/seg/%s%s", dir, which, name, suffix);
}

static bool exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* The file holding the segment's message bytes: its data file, or with
 * inline_data its meta file. */
static void bytes_path(char *buf, size_t len, const char *name)
{
	seg_path(buf, len, inline_mode ? "meta" : "data", name, "");
}

/* A count of a segment's files (meta, data, journal) as the two-file
 * layout has them, in the layout under test (no data file inline). */
static int files(int two_file_count)
{
	return inline_mode && two_file_count > 0 ? two_file_count - 1 : two_file_count;
}

/* How many of the segment's three files are there. */
static int seg_files(const char *name)
{
	char p[256];
	int n = 0;
	seg_path(p, sizeof p, "meta", name, "");
	n += exists(p);
	seg_path(p, sizeof p, "data", name, "");
	n += exists(p);
	seg_path(p, sizeof p, "meta", name, ".j");
	n += exists(p);
	return n;
}

static off_t file_size(const char *path)
{
	struct stat st;
	ck_assert_msg(stat(path, &st) == 0, "%s is missing", path);
	return st.st_size;
}

/* Entries in <dir>/<sub>, without . and .. */
static int dir_count(const char *sub)
{
	char p[256];
	snprintf(p, sizeof p, "%s/%s", dir, sub);
	DIR *d = opendir(p);
	ck_assert_ptr_nonnull(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	unsigned char c;
	ck_assert_int_eq(pread(fd, &c, 1, off), 1);
	c ^= 0x01;
	ck_assert_int_eq(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

static void append_bytes(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_APPEND);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static void read_at(const char *path, off_t off, void *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, buf, len, off), (ssize_t)len);
	close(fd);
}

static char *slurp(const char *path, size_t *len)
{
	size_t size = (size_t)file_size(path);
	char *buf = malloc(size + 1);
	ck_assert_ptr_nonnull(buf);
	if (size)
		read_at(path, 0, buf, size);
	*len = size;
	return buf;
}

static void touch(const char *sub)
{
	char p[256];
	snprintf(p, sizeof p, "%s/%s", dir, sub);
	int fd = open(p, O_WRONLY | O_CREAT, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "partial", 7), 7);
	close(fd);
}

static uint64_t le64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Where the records of a meta file end: a writer's segment has zeros past
 * them (prepared for the next records), a sealed one nothing. */
static off_t records_end(const char *path)
{
	size_t len;
	unsigned char *b = (unsigned char *)slurp(path, &len);
	size_t off = 0;
	while (off + REC_MIN <= len && memcmp(b + off, "KSR1", 4) == 0)
		off += REC_MIN + le32(b + off + 8) + (b[off + 4] == REC_INLINE ? le64(b + off + 24) : 0);
	free(b);
	return (off_t)off;
}

/* The segment's meta file ends with a whole SEAL record; *count gets the
 * number of messages it gives. */
static bool ends_with_seal(const char *name, uint64_t *count)
{
	char p[256];
	seg_path(p, sizeof p, "meta", name, "");
	unsigned char r[REC_MIN];
	off_t size = file_size(p);
	if (size < REC_MIN)
		return false;
	read_at(p, size - REC_MIN, r, REC_MIN);
	if (memcmp(r, "KSR1", 4) != 0 || r[4] != REC_SEAL || le32(r + 72) != crc32c(0, r, 72) ||
	    le32(r + 8) != 0)
		return false;
	*count = le64(r + 24);
	return true;
}

/* A test message: its id, bytes in three pieces (one empty) and meta. */
struct msg {
	char id[SPOOL_ID_LEN + 1];
	char head[64];
	char *body;  /* owned */
	size_t body_len;
	char meta[160];
	struct iovec iov[3];
};

static void msg_make(struct msg *m, int n, const char *tag)
{
	memset(m, 0, sizeof *m);
	spool_id_new(m->id);
	snprintf(m->head, sizeof m->head, "Subject: %s %d\r\n\r\n", tag, n);
	m->body_len = 20 + (size_t)n * 37 % 500;
	m->body = malloc(m->body_len);
	ck_assert_ptr_nonnull(m->body);
	static const char abc[] = "abcdefghijklmnopqrstuvwxyz0123456789\r\n";
	for (size_t i = 0; i < m->body_len; i++)
		m->body[i] = abc[(i + (size_t)n + strlen(tag)) % (sizeof abc - 1)];
	snprintf(m->meta, sizeof m->meta, "{\"sender\":\"s%d@%s.example\",\"n\":%d}\n", n, tag, n);
	m->iov[0] = (struct iovec){ m->head, strlen(m->head) };
	m->iov[1] = (struct iovec){ m->head, 0 };
	m->iov[2] = (struct iovec){ m->body, m->body_len };
}

static void msgs_make(struct msg *m, size_t n, const char *tag)
{
	for (size_t i = 0; i < n; i++)
		msg_make(&m[i], (int)i, tag);
}

static void msgs_free(struct msg *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(m[i].body);
		m[i].body = NULL;
	}
}

static size_t msg_len(const struct msg *m)
{
	return strlen(m->head) + m->body_len;
}

/* The message's bytes as one buffer (caller frees). */
static char *msg_data(const struct msg *m, size_t *len)
{
	size_t h = strlen(m->head);
	*len = h + m->body_len;
	char *buf = malloc(*len);
	ck_assert_ptr_nonnull(buf);
	memcpy(buf, m->head, h);
	memcpy(buf + h, m->body, m->body_len);
	return buf;
}

static void item_of(struct spool_item *it, const struct msg *m)
{
	memset(it, 0, sizeof *it);
	memcpy(it->id, m->id, sizeof it->id);
	it->data = m->iov;
	it->data_cnt = 3;
	it->meta = m->meta;
	it->meta_len = strlen(m->meta);
	it->result = 12345; /* must be set by spool_commit */
	snprintf(it->err, sizeof it->err, "stale");
}

/* Commits m[0, n) as one batch; every item must be stored. */
static void commit_msgs(struct spool *s, const struct msg *m, struct spool_item *it, size_t n)
{
	for (size_t i = 0; i < n; i++)
		item_of(&it[i], &m[i]);
	ck_assert_uint_eq(spool_commit(s, it, n), 0);
	for (size_t i = 0; i < n; i++) {
		ck_assert_int_eq(it[i].result, 0);
		ck_assert_str_eq(it[i].err, "");
		ck_assert_msg(is_seg_name(it[i].seg_name), "segment name '%s'", it[i].seg_name);
		ck_assert_ptr_nonnull(it[i].loc.seg);
		ck_assert_str_eq(spool_seg_name(it[i].loc.seg), it[i].seg_name);
		ck_assert_uint_eq(it[i].loc.data_len, msg_len(&m[i]));
		ck_assert_uint_eq(it[i].loc.meta_len, strlen(m[i].meta));
		ck_assert(!it[i].loc.meta_in_journal);
	}
}

/* spool_read_data and spool_read_meta give exactly the message's bytes. */
static void check_read(struct spool *s, const struct spool_loc *loc, const struct msg *m)
{
	char *got, err[256];
	size_t len, want_len;
	ck_assert_msg(spool_read_data(s, loc, &got, &len, err, sizeof err) == 0, "%s", err);
	char *want = msg_data(m, &want_len);
	ck_assert_uint_eq(len, want_len);
	ck_assert(memcmp(got, want, len) == 0);
	free(want);
	free(got);
	ck_assert_msg(spool_read_meta(s, loc, &got, &len, err, sizeof err) == 0, "%s", err);
	ck_assert_uint_eq(len, strlen(m->meta));
	ck_assert_str_eq(got, m->meta);
	free(got);
}

/* What spool_list reported. */
struct hit {
	char id[SPOOL_ID_LEN + 1];
	char seg[SPOOL_SEG_NAME_LEN + 1];  /* loc.seg may go once its segment does */
	struct spool_loc loc;
	char *meta;                        /* NULL when it could not be read */
	size_t meta_len;
};

struct hits {
	struct hit *v;
	size_t n, cap;
};

static void on_found(void *arg, const char *id, const struct spool_loc *loc, const char *meta,
		     size_t meta_len)
{
	struct hits *h = arg;
	ck_assert(spool_id_valid(id));
	ck_assert_ptr_nonnull(loc);
	ck_assert_ptr_nonnull(loc->seg);
	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 64;
		h->v = realloc(h->v, h->cap * sizeof *h->v);
		ck_assert_ptr_nonnull(h->v);
	}
	struct hit *x = &h->v[h->n++];
	memset(x, 0, sizeof *x);
	memcpy(x->id, id, SPOOL_ID_LEN + 1);
	snprintf(x->seg, sizeof x->seg, "%s", spool_seg_name(loc->seg));
	x->loc = *loc;
	if (meta) {
		x->meta = malloc(meta_len + 1);
		ck_assert_ptr_nonnull(x->meta);
		memcpy(x->meta, meta, meta_len);
		x->meta[meta_len] = '\0';
	}
	x->meta_len = meta_len;
}

static void hits_free(struct hits *h)
{
	for (size_t i = 0; i < h->n; i++)
		free(h->v[i].meta);
	free(h->v);
	memset(h, 0, sizeof *h);
}

static void list(struct spool *s, struct hits *h)
{
	char err[256];
	memset(h, 0, sizeof *h);
	ck_assert_msg(spool_list(s, on_found, h, err, sizeof err) == 0, "%s", err);
}

/* The hit for id (NULL if none); an id is reported at most once. */
static struct hit *hit_of(struct hits *h, const char *id)
{
	struct hit *found = NULL;
	for (size_t i = 0; i < h->n; i++) {
		if (strcmp(h->v[i].id, id) != 0)
			continue;
		ck_assert_msg(!found, "%s reported twice", id);
		found = &h->v[i];
	}
	return found;
}

/* The listing has m, with its meta text and bytes. */
static struct hit *check_listed(struct spool *s, struct hits *h, const struct msg *m)
{
	struct hit *x = hit_of(h, m->id);
	ck_assert_msg(x != NULL, "%s is not listed", m->id);
	ck_assert_ptr_nonnull(x->meta);
	ck_assert_uint_eq(x->meta_len, strlen(m->meta));
	ck_assert_str_eq(x->meta, m->meta);
	check_read(s, &x->loc, m);
	return x;
}

/* A listing of s has exactly the n messages of m, each as check_listed
 * wants it. */
static void expect_listing(struct spool *s, const struct msg *m, size_t n)
{
	struct hits h;
	list(s, &h);
	ck_assert_uint_eq(h.n, n);
	for (size_t i = 0; i < n; i++)
		check_listed(s, &h, &m[i]);
	hits_free(&h);
}

/* Holds and finishes every listed message, as the queue manager does. */
static void hold_and_done_all(struct spool *s, struct hits *h)
{
	char err[256];
	for (size_t i = 0; i < h->n; i++)
		spool_hold(s, &h->v[i].loc);
	for (size_t i = 0; i < h->n; i++)
		ck_assert_msg(spool_done(s, &h->v[i].loc, h->v[i].id, err, sizeof err) == 0, "%s", err);
}

/* What spool_scan called back with. */
struct scan_log {
	char found[64][SPOOL_ID_LEN + 1];
	size_t nfound;
	char warned[16][SPOOL_ID_LEN + 1];
	char why[16][300];
	size_t nwarn;
};

static void scan_found(void *arg, const char *id)
{
	struct scan_log *lg = arg;
	ck_assert(spool_id_valid(id));
	ck_assert_uint_lt(lg->nfound, 64);
	snprintf(lg->found[lg->nfound++], SPOOL_ID_LEN + 1, "%s", id);
}

static void scan_warn(void *arg, const char *id, const char *why)
{
	struct scan_log *lg = arg;
	ck_assert_ptr_nonnull(why);
	ck_assert(why[0] != '\0');
	ck_assert_uint_lt(lg->nwarn, 16);
	snprintf(lg->warned[lg->nwarn], SPOOL_ID_LEN + 1, "%s", id);
	snprintf(lg->why[lg->nwarn], sizeof lg->why[0], "%s", why);
	lg->nwarn++;
}

/* A start-up scan in a spool of its own, as kumod does. */
static void scan(struct scan_log *lg, struct spool_scan_stats *st)
{
	struct spool s;
	char err[256];
	open_spool(&s);
	memset(lg, 0, sizeof *lg);
	memset(st, 0xff, sizeof *st); /* every field must be set */
	ck_assert_msg(spool_scan(&s, scan_found, scan_warn, lg, st, err, sizeof err) == 0, "%s", err);
	ck_assert_uint_eq(st->found, lg->nfound);
	spool_close(&s);
}

static bool in_log(char (*v)[SPOOL_ID_LEN + 1], size_t n, const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i], id) == 0)
			return true;
	return false;
}

/* A writer in another process: commits m[0, n) (one batch), sends the
 * segment name (25 bytes) up *ready, and if release is true waits until
 * the parent closes *release before it leaves.  It leaves with _exit and no
 * spool_close (no SEAL: as if killed) unless seal is true.  Only _exit
 * codes report its failures (Check's asserts belong to the parent). */
static pid_t fork_writer(const struct msg *m, size_t n, bool seal, bool release, int *ready, int *rel)
{
	int rp[2], lp[2];
	ck_assert_int_eq(pipe(rp), 0);
	ck_assert_int_eq(pipe(lp), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(rp[0]);
		close(lp[1]);
		struct spool s;
		if (try_open(&s) != 0)
			_exit(2);
		struct spool_item *it = calloc(n, sizeof *it);
		if (!it)
			_exit(3);
		for (size_t i = 0; i < n; i++)
			item_of(&it[i], &m[i]);
		if (spool_commit(&s, it, n) != 0)
			_exit(4);
		for (size_t i = 0; i < n; i++)
			if (it[i].result != 0 || strcmp(it[i].seg_name, it[0].seg_name) != 0)
				_exit(5);
		if (write(rp[1], it[0].seg_name, SPOOL_SEG_NAME_LEN + 1) != SPOOL_SEG_NAME_LEN + 1)
			_exit(6);
		if (release) {
			char c;
			while (read(lp[0], &c, 1) > 0)
				;
		}
		if (seal)
			spool_close(&s);
		_exit(0);
	}
	close(rp[1]);
	close(lp[0]);
	*ready = rp[0];
	*rel = lp[1];
	return pid;
}

static void read_seg_name(int fd, char name[SPOOL_SEG_NAME_LEN + 1])
{
	size_t got = 0;
	while (got < SPOOL_SEG_NAME_LEN + 1) {
		ssize_t r = read(fd, name + got, SPOOL_SEG_NAME_LEN + 1 - got);
		ck_assert_msg(r > 0, "the writer failed before it committed");
		got += (size_t)r;
	}
	ck_assert(is_seg_name(name));
}

static void wait_exit0(pid_t pid)
{
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer status %d", status);
}

/* ---- ids, lock, open -------------------------------------------------------- */

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

/* A forked child (a worker) draws its own node: its ids never share the
 * last 12 digits with its parent's, even within the same 100 ns. */
START_TEST(ids_differ_after_fork)
{
	char parent[SPOOL_ID_LEN + 1], child[SPOOL_ID_LEN + 1] = "";
	spool_id_new(parent);
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char id[SPOOL_ID_LEN + 1];
		spool_id_new(id);
		_exit(write(fds[1], id, SPOOL_ID_LEN) == SPOOL_ID_LEN ? 0 : 1);
	}
	close(fds[1]);
	ck_assert_int_eq(read(fds[0], child, SPOOL_ID_LEN), SPOOL_ID_LEN);
	close(fds[0]);
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert(spool_id_valid(child));
	ck_assert_msg(strcmp(parent + 20, child + 20) != 0, "same node after fork: %s %s", parent, child);
	char again[SPOOL_ID_LEN + 1];
	spool_id_new(again);
	ck_assert_str_eq(again + 20, parent + 20); /* the parent keeps its own */
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

/* ---- commit, read, list ------------------------------------------------------ */

/* Several batches land in one segment, named by time and pid; each message
 * reads back exactly, through the writer and through another spool (as
 * the queue manager would), and spool_list finds each once. */
START_TEST(commit_then_list)
{
	struct spool w, r;
	open_spool(&w);
	enum { N = 12 };
	static const size_t batch[] = { 4, 1, 7 };
	struct msg m[N];
	struct spool_item it[N];
	msgs_make(m, N, "list");
	ck_assert_int_eq(dir_count("meta/seg"), 0); /* nothing before the first commit */
	size_t k = 0;
	for (size_t b = 0; b < 3; k += batch[b], b++)
		commit_msgs(&w, &m[k], &it[k], batch[b]);
	const char *name = it[0].seg_name;
	ck_assert(seg_of_pid(name, getpid()));
	for (size_t i = 0; i < N; i++) {
		ck_assert_str_eq(it[i].seg_name, name);
		ck_assert_ptr_eq(it[i].loc.seg, it[0].loc.seg);
		ck_assert(it[i].loc.data_in_meta == inline_mode);
		/* two files: back to back; inline: each after its record,
		 * which is the header, the meta text and its CRC */
		if (i)
			ck_assert_uint_eq(it[i].loc.data_off, it[i - 1].loc.data_off + it[i - 1].loc.data_len +
					  (inline_mode ? REC_MIN + it[i].loc.meta_len : 0));
		if (inline_mode)
			ck_assert_uint_eq(it[i].loc.data_off, it[i].loc.meta_off + it[i].loc.meta_len + 4);
		check_read(&w, &it[i].loc, &m[i]);
	}
	/* the bytes really are there, in <data>/seg/<name> or inline in
	 * <meta>/seg/<name> */
	char want[256];
	bytes_path(want, sizeof want, name);
	char *dp = spool_data_path(&w, &it[5].loc);
	ck_assert_str_eq(dp, want);
	free(dp);
	/* and past the last of them, only the zeros prepared for the next */
	off_t end = (off_t)(it[N - 1].loc.data_off + it[N - 1].loc.data_len);
	ck_assert_int_ge(file_size(want), end);
	size_t dlen;
	char *all = slurp(want, &dlen);
	for (size_t i = (size_t)end; i < dlen; i++)
		ck_assert_msg(all[i] == 0, "byte %zu past the data is not zero", i);
	free(all);
	char *whole = slurp(want, &dlen), *one = msg_data(&m[5], &dlen);
	ck_assert(memcmp(whole + it[5].loc.data_off, one, dlen) == 0);
	free(whole);
	free(one);
	ck_assert_int_eq(seg_files(name), files(2)); /* no journal yet */

	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, N);
	for (size_t i = 0; i < N; i++) {
		struct hit *x = check_listed(&r, &h, &m[i]);
		ck_assert_str_eq(x->seg, name);
		ck_assert_uint_eq(x->loc.data_off, it[i].loc.data_off);
		ck_assert_uint_eq(x->loc.data_crc, it[i].loc.data_crc);
		ck_assert_uint_eq(x->loc.stamp, it[i].loc.stamp);
	}
	hits_free(&h);
	/* listing changes nothing: a second one gives the same */
	list(&r, &h);
	ck_assert_uint_eq(h.n, N);
	hits_free(&h);
	spool_close(&r);
	spool_close(&w);
	msgs_free(m, N);
}
END_TEST

/* Empty data and meta, more pieces than one pwritev takes, a big message;
 * and a commit of nothing creates nothing. */
START_TEST(odd_items_round_trip)
{
	struct spool w, r;
	open_spool(&w);
	ck_assert_uint_eq(spool_commit(&w, NULL, 0), 0);
	ck_assert_int_eq(dir_count("meta/seg"), 0);
	ck_assert_int_eq(dir_count("data/seg"), 0);

	enum { PIECES = 150, BIG = 300 * 1000 };
	static char text[PIECES * 7];
	struct iovec pieces[PIECES];
	size_t plen = 0;
	for (int i = 0; i < PIECES; i++) {
		size_t n = (size_t)(i % 7); /* some pieces are empty */
		for (size_t j = 0; j < n; j++)
			text[plen + j] = (char)('A' + (i + (int)j) % 26);
		pieces[i] = (struct iovec){ text + plen, n };
		plen += n;
	}
	char *big = malloc(BIG);
	ck_assert_ptr_nonnull(big);
	for (size_t i = 0; i < BIG; i++)
		big[i] = (char)(i * 131 % 251);
	struct iovec bigv = { big, BIG };
	struct spool_item it[3];
	memset(it, 0, sizeof it);
	for (int i = 0; i < 3; i++)
		spool_id_new(it[i].id);
	it[0].data = NULL;
	it[0].data_cnt = 0;
	it[0].meta = "";
	it[0].meta_len = 0;
	it[1].data = pieces;
	it[1].data_cnt = PIECES;
	it[1].meta = "{\"pieces\":150}";
	it[1].meta_len = strlen(it[1].meta);
	it[2].data = &bigv;
	it[2].data_cnt = 1;
	it[2].meta = "{\"big\":true}\n";
	it[2].meta_len = strlen(it[2].meta);
	ck_assert_uint_eq(spool_commit(&w, it, 3), 0);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(it[i].result, 0);
	ck_assert_uint_eq(it[0].loc.data_len, 0);
	ck_assert_uint_eq(it[1].loc.data_len, plen);
	ck_assert_uint_eq(it[2].loc.data_len, BIG);

	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 3);
	char *got, err[256];
	size_t len;
	struct hit *x = hit_of(&h, it[0].id);
	ck_assert_ptr_nonnull(x);
	ck_assert_ptr_nonnull(x->meta); /* empty, but readable */
	ck_assert_uint_eq(x->meta_len, 0);
	ck_assert_msg(spool_read_data(&r, &x->loc, &got, &len, err, sizeof err) == 0, "%s", err);
	ck_assert_uint_eq(len, 0);
	free(got);
	x = hit_of(&h, it[1].id);
	ck_assert_ptr_nonnull(x);
	ck_assert_str_eq(x->meta, "{\"pieces\":150}");
	ck_assert_msg(spool_read_data(&r, &x->loc, &got, &len, err, sizeof err) == 0, "%s", err);
	ck_assert_uint_eq(len, plen);
	ck_assert(memcmp(got, text, plen) == 0);
	free(got);
	x = hit_of(&h, it[2].id);
	ck_assert_ptr_nonnull(x);
	ck_assert_str_eq(x->meta, "{\"big\":true}\n");
	ck_assert_msg(spool_read_data(&r, &x->loc, &got, &len, err, sizeof err) == 0, "%s", err);
	ck_assert_uint_eq(len, BIG);
	ck_assert(memcmp(got, big, BIG) == 0);
	free(got);
	hits_free(&h);
	spool_close(&r);
	spool_close(&w);

	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, 3);
	ck_assert_uint_eq(st.quarantined, 0);
	ck_assert_uint_eq(lg.nwarn, 0);
	free(big);
}
END_TEST

/* spool_seg_get knows a segment by the name its writer announced. */
START_TEST(seg_get_by_name)
{
	struct spool w, r;
	open_spool(&w);
	struct msg m[1];
	struct spool_item it[1];
	msgs_make(m, 1, "get");
	commit_msgs(&w, m, it, 1);
	open_spool(&r);
	char upper[SPOOL_SEG_NAME_LEN + 1], nothex[SPOOL_SEG_NAME_LEN + 1], longer[SPOOL_SEG_NAME_LEN + 2];
	snprintf(upper, sizeof upper, "%s", it[0].seg_name);
	upper[20] = 'A';
	snprintf(nothex, sizeof nothex, "%s", it[0].seg_name);
	nothex[3] = 'g';
	snprintf(longer, sizeof longer, "%s0", it[0].seg_name);
	ck_assert_ptr_null(spool_seg_get(&r, NULL));
	ck_assert_ptr_null(spool_seg_get(&r, ""));
	ck_assert_ptr_null(spool_seg_get(&r, "0123"));
	ck_assert_ptr_null(spool_seg_get(&r, longer));
	ck_assert_ptr_null(spool_seg_get(&r, upper));
	ck_assert_ptr_null(spool_seg_get(&r, nothex));
	ck_assert_ptr_null(spool_seg_get(&r, "../../../../../etc/passw"));
	struct spool_seg *g = spool_seg_get(&r, it[0].seg_name);
	ck_assert_ptr_nonnull(g);
	ck_assert_str_eq(spool_seg_name(g), it[0].seg_name);
	ck_assert_ptr_eq(spool_seg_get(&r, it[0].seg_name), g);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 1);
	ck_assert_ptr_eq(h.v[0].loc.seg, g); /* the same segment, not a copy */
	char want[256];
	bytes_path(want, sizeof want, it[0].seg_name);
	char *dp = spool_data_path(&r, &h.v[0].loc);
	ck_assert_str_eq(dp, want);
	free(dp);
	/* a loc made from the announcement reads the message */
	struct spool_loc loc = it[0].loc;
	loc.seg = g;
	check_read(&r, &loc, &m[0]);
	hits_free(&h);
	spool_close(&r);
	spool_close(&w);
	msgs_free(m, 1);
}
END_TEST

/* A record cut short at the end of a live segment is not listed, and the
 * listing leaves it alone; the writer's next commit goes over it. */
START_TEST(list_skips_a_torn_tail_and_changes_nothing)
{
	struct spool w, r;
	open_spool(&w);
	struct msg m[4];
	struct spool_item it[4];
	msgs_make(m, 4, "torn");
	commit_msgs(&w, m, it, 3);
	char p[256];
	seg_path(p, sizeof p, "meta", it[0].seg_name, "");
	unsigned char head[REC_HDR + 10];
	read_at(p, 0, head, sizeof head);
	off_t size = file_size(p);
	append_bytes(p, head, sizeof head); /* a whole header, its meta cut */
	open_spool(&r);
	expect_listing(&r, m, 3);
	ck_assert_int_eq(file_size(p), size + (off_t)sizeof head);
	commit_msgs(&w, &m[3], &it[3], 1);
	ck_assert_str_eq(it[3].seg_name, it[0].seg_name);
	expect_listing(&r, m, 4);
	spool_close(&r);
	spool_close(&w);
	msgs_free(m, 4);
}
END_TEST

/* ---- the queue manager's journal -------------------------------------------- */

/* The queue manager holds and finishes every message: DONE records go to
 * the journal, nothing is listed any more, the files stay while the writer
 * still appends, and go (all three) once it sealed the segment. */
START_TEST(done_then_segment_removed)
{
	struct spool w, r, r2;
	open_spool(&w);
	enum { N = 9 };
	struct msg m[N];
	struct spool_item it[N];
	msgs_make(m, N, "done");
	commit_msgs(&w, m, it, 2);
	commit_msgs(&w, &m[2], &it[2], 3);
	commit_msgs(&w, &m[5], &it[5], 4);
	char name[SPOOL_SEG_NAME_LEN + 1];
	memcpy(name, it[0].seg_name, sizeof name);
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, N);
	for (int i = 0; i < N; i++)
		check_listed(&r, &h, &m[i]);
	hold_and_done_all(&r, &h);
	hits_free(&h);
	/* the writer has not sealed it: everything stays */
	ck_assert_int_eq(seg_files(name), files(3));
	list(&r, &h);
	ck_assert_uint_eq(h.n, 0);
	hits_free(&h);
	open_spool(&r2);
	list(&r2, &h);
	ck_assert_uint_eq(h.n, 0);
	hits_free(&h);
	spool_close(&r2);
	ck_assert_int_eq(seg_files(name), files(3));

	spool_close(&w);
	uint64_t count = 0;
	ck_assert(ends_with_seal(name, &count));
	ck_assert_uint_eq(count, N);
	ck_assert_uint_eq(spool_reap(&r), 1);
	ck_assert_int_eq(seg_files(name), files(0));
	ck_assert_int_eq(dir_count("meta/seg"), 0);
	ck_assert_int_eq(dir_count("data/seg"), 0);
	ck_assert_uint_eq(spool_reap(&r), 0);
	list(&r, &h);
	ck_assert_uint_eq(h.n, 0);
	hits_free(&h);
	spool_close(&r);
	msgs_free(m, N);
}
END_TEST

/* A new meta goes to the journal; reads and listings see it from then on,
 * the last one wins, and a restart's scan keeps it. */
START_TEST(update_meta_replaces_meta)
{
	struct spool w, r, r2;
	open_spool(&w);
	struct msg m[3];
	struct spool_item it[3];
	msgs_make(m, 3, "upd");
	commit_msgs(&w, m, it, 3);
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 3);
	struct spool_loc loc = hit_of(&h, m[1].id)->loc;
	hits_free(&h);
	spool_hold(&r, &loc);
	char err[256], *got;
	size_t len;
	const char *m1 = "{\"sender\":\"changed@example\",\"recipients\":[\"a@b\",\"c@d\",\"e@f\"]}\n";
	const char *m2 = "{\"v\":2}\n";
	ck_assert_msg(spool_update_meta(&r, &loc, m[1].id, m1, strlen(m1), err, sizeof err) == 0, "%s", err);
	ck_assert(loc.meta_in_journal);
	ck_assert_msg(spool_read_meta(&r, &loc, &got, &len, err, sizeof err) == 0, "%s", err);
	ck_assert_uint_eq(len, strlen(m1));
	ck_assert_str_eq(got, m1);
	free(got);
	char jp[256];
	seg_path(jp, sizeof jp, "meta", it[0].seg_name, ".j");
	ck_assert(exists(jp));
	ck_assert_msg(spool_update_meta(&r, &loc, m[1].id, m2, strlen(m2), err, sizeof err) == 0, "%s", err);
	ck_assert_msg(spool_read_meta(&r, &loc, &got, &len, err, sizeof err) == 0, "%s", err);
	ck_assert_str_eq(got, m2);
	free(got);
	/* the bytes did not change */
	ck_assert_msg(spool_read_data(&r, &loc, &got, &len, err, sizeof err) == 0, "%s", err);
	size_t wlen;
	char *want = msg_data(&m[1], &wlen);
	ck_assert_uint_eq(len, wlen);
	ck_assert(memcmp(got, want, len) == 0);
	free(want);
	free(got);

	open_spool(&r2);
	list(&r2, &h);
	ck_assert_uint_eq(h.n, 3);
	check_listed(&r2, &h, &m[0]);
	check_listed(&r2, &h, &m[2]);
	struct hit *x = hit_of(&h, m[1].id);
	ck_assert_ptr_nonnull(x);
	ck_assert(x->loc.meta_in_journal);
	ck_assert_str_eq(x->meta, m2);
	ck_assert_uint_eq(x->meta_len, strlen(m2));
	hits_free(&h);
	spool_close(&r2);
	spool_close(&r);
	spool_close(&w);

	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, 3);
	ck_assert_uint_eq(st.quarantined, 0);
	open_spool(&r2);
	list(&r2, &h);
	ck_assert_uint_eq(h.n, 3);
	ck_assert_str_eq(hit_of(&h, m[1].id)->meta, m2);
	hits_free(&h);
	spool_close(&r2);
	msgs_free(m, 3);
}
END_TEST

/* A META record whose text is damaged is passed over: the meta before it
 * counts, for spool_list and for the scan (nothing is quarantined). */
START_TEST(damaged_meta_record_is_passed_over)
{
	struct spool w, r, r2;
	open_spool(&w);
	struct msg m[2];
	struct spool_item it[2];
	msgs_make(m, 2, "jm");
	commit_msgs(&w, m, it, 2);
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	struct spool_loc loc = hit_of(&h, m[0].id)->loc;
	hits_free(&h);
	spool_hold(&r, &loc);
	char err[256];
	const char *m1 = "{\"v\":1}\n", *m2 = "{\"v\":2}\n";
	ck_assert_msg(spool_update_meta(&r, &loc, m[0].id, m1, strlen(m1), err, sizeof err) == 0, "%s", err);
	ck_assert_msg(spool_update_meta(&r, &loc, m[0].id, m2, strlen(m2), err, sizeof err) == 0, "%s", err);
	char jp[256];
	seg_path(jp, sizeof jp, "meta", it[0].seg_name, ".j");
	flip_byte(jp, (off_t)loc.meta_off + 2);
	open_spool(&r2);
	list(&r2, &h);
	ck_assert_uint_eq(h.n, 2);
	ck_assert_str_eq(hit_of(&h, m[0].id)->meta, m1);
	check_listed(&r2, &h, &m[1]);
	hits_free(&h);
	spool_close(&r2);
	spool_close(&r);
	spool_close(&w);
	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, 2);
	ck_assert_uint_eq(st.quarantined, 0);
	open_spool(&r2);
	list(&r2, &h);
	ck_assert_str_eq(hit_of(&h, m[0].id)->meta, m1);
	hits_free(&h);
	spool_close(&r2);
	msgs_free(m, 2);
}
END_TEST

/* ---- rolling ----------------------------------------------------------------- */

static int str_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

static int hit_cmp(const void *a, const void *b)
{
	return strcmp(((const struct hit *)a)->id, ((const struct hit *)b)->id);
}

/* A writer moves to a new segment once the next batch would pass
 * SPOOL_SEG_MAX_MSGS, sealing the full one with its count; finishing the
 * full one removes it at once, the new one stays until it is sealed. */
START_TEST(roll_at_max_msgs)
{
	enum { B = 1000 };
	const size_t total = SPOOL_SEG_MAX_MSGS + B;
	struct spool w, r;
	open_spool(&w);
	struct spool_item *it = calloc(B, sizeof *it);
	char (*ids)[SPOOL_ID_LEN + 1] = calloc(total, sizeof *ids);
	ck_assert_ptr_nonnull(it);
	ck_assert_ptr_nonnull(ids);
	struct iovec v = { (void *)"x\r\n", 3 };
	char name1[SPOOL_SEG_NAME_LEN + 1] = "", name2[SPOOL_SEG_NAME_LEN + 1] = "";
	for (size_t k = 0; k < total; k += B) {
		for (size_t i = 0; i < B; i++) {
			memset(&it[i], 0, sizeof it[i]);
			spool_id_new(it[i].id);
			memcpy(ids[k + i], it[i].id, sizeof ids[0]);
			it[i].data = &v;
			it[i].data_cnt = 1;
			it[i].meta = "{}\n";
			it[i].meta_len = 3;
		}
		ck_assert_uint_eq(spool_commit(&w, it, B), 0);
		char *want = k < SPOOL_SEG_MAX_MSGS ? name1 : name2;
		if (!want[0])
			memcpy(want, it[0].seg_name, SPOOL_SEG_NAME_LEN + 1);
		for (size_t i = 0; i < B; i++) {
			ck_assert_int_eq(it[i].result, 0);
			ck_assert_str_eq(it[i].seg_name, want);
		}
	}
	ck_assert_str_ne(name1, name2);
	ck_assert_int_lt(strcmp(name1, name2), 0); /* names increase */
	ck_assert(seg_of_pid(name1, getpid()) && seg_of_pid(name2, getpid()));
	uint64_t count = 0;
	ck_assert(ends_with_seal(name1, &count));
	ck_assert_uint_eq(count, SPOOL_SEG_MAX_MSGS);
	ck_assert(!ends_with_seal(name2, &count));

	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, total);
	qsort(h.v, h.n, sizeof *h.v, hit_cmp);
	qsort(ids, total, sizeof *ids, str_cmp);
	size_t in1 = 0;
	for (size_t i = 0; i < total; i++) {
		ck_assert_str_eq(h.v[i].id, ids[i]); /* each once, none missing */
		in1 += strcmp(h.v[i].seg, name1) == 0;
	}
	ck_assert_uint_eq(in1, SPOOL_SEG_MAX_MSGS);
	/* finish the first segment's messages: it goes with the last of them */
	struct hits h1 = { 0 }, h2 = { 0 };
	for (size_t i = 0; i < h.n; i++) {
		struct hits *to = strcmp(h.v[i].seg, name1) == 0 ? &h1 : &h2;
		on_found(to, h.v[i].id, &h.v[i].loc, NULL, 0);
	}
	hits_free(&h);
	hold_and_done_all(&r, &h1);
	hits_free(&h1);
	ck_assert_int_eq(seg_files(name1), files(0));
	ck_assert_int_eq(seg_files(name2), files(2));
	hold_and_done_all(&r, &h2);
	hits_free(&h2);
	ck_assert_int_eq(seg_files(name2), files(3));
	spool_close(&w);
	ck_assert(ends_with_seal(name2, &count));
	ck_assert_uint_eq(count, B);
	ck_assert_uint_eq(spool_reap(&r), 1);
	ck_assert_int_eq(dir_count("meta/seg"), 0);
	ck_assert_int_eq(dir_count("data/seg"), 0);
	spool_close(&r);
	free(it);
	free(ids);
}
END_TEST

/* A writer moves to a new segment once its data file has reached
 * SPOOL_SEG_MAX_BYTES. */
START_TEST(roll_at_max_bytes)
{
	struct spool w, r;
	open_spool(&w);
	char *big = calloc(1, SPOOL_SEG_MAX_BYTES);
	ck_assert_ptr_nonnull(big);
	big[0] = 'B';
	struct iovec bv = { big, SPOOL_SEG_MAX_BYTES };
	struct msg m[2];
	struct spool_item it[3];
	msgs_make(m, 2, "bytes");
	commit_msgs(&w, m, it, 1); /* a small one first: the big one passes the limit */
	memset(&it[1], 0, sizeof it[1]);
	spool_id_new(it[1].id);
	it[1].data = &bv;
	it[1].data_cnt = 1;
	it[1].meta = "{}";
	it[1].meta_len = 2;
	ck_assert_uint_eq(spool_commit(&w, &it[1], 1), 0);
	ck_assert_str_eq(it[1].seg_name, it[0].seg_name); /* a message is never split */
	commit_msgs(&w, &m[1], &it[2], 1);
	ck_assert_str_ne(it[2].seg_name, it[0].seg_name);
	uint64_t count = 0;
	ck_assert(ends_with_seal(it[0].seg_name, &count));
	ck_assert_uint_eq(count, 2);
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 3);
	check_listed(&r, &h, &m[0]);
	check_listed(&r, &h, &m[1]);
	struct hit *x = hit_of(&h, it[1].id);
	ck_assert_ptr_nonnull(x);
	ck_assert_uint_eq(x->loc.data_len, SPOOL_SEG_MAX_BYTES);
	hits_free(&h);
	spool_close(&r);
	spool_close(&w);
	free(big);
	msgs_free(m, 2);
}
END_TEST

/* A segment older than SPOOL_SEG_MAX_AGE is sealed by the next commit,
 * which starts another.  smtpd's writer thread, when idle, calls
 * spool_commit with nothing to seal an old segment (smtpd_spool.c), so the
 * queue manager can remove it once its messages are done. */
START_TEST(roll_at_max_age_and_idle_seal)
{
	struct spool w;
	open_spool(&w);
	struct msg m[2];
	struct spool_item it[2];
	msgs_make(m, 2, "age");
	commit_msgs(&w, m, it, 1);
	clock_skew_us = (int64_t)(SPOOL_SEG_MAX_AGE + 1) * 1000000;
	commit_msgs(&w, &m[1], &it[1], 1);
	uint64_t count = 0;
	ck_assert_str_ne(it[0].seg_name, it[1].seg_name);
	ck_assert(ends_with_seal(it[0].seg_name, &count));
	ck_assert_uint_eq(count, 1);
	ck_assert(!ends_with_seal(it[1].seg_name, &count));
	/* the writer goes idle past the age of the second segment */
	clock_skew_us = (int64_t)(2 * SPOOL_SEG_MAX_AGE + 2) * 1000000;
	ck_assert_uint_eq(spool_commit(&w, NULL, 0), 0);
	bool sealed = ends_with_seal(it[1].seg_name, &count);
	clock_skew_us = 0;
	ck_assert_int_eq(dir_count("meta/seg"), 2); /* and no segment was started */
	ck_assert_msg(sealed, "spool_commit(s, NULL, 0) did not seal segment %s, %.0f s old",
		      it[1].seg_name, SPOOL_SEG_MAX_AGE + 1);
	ck_assert_uint_eq(count, 1);
	spool_close(&w);
	msgs_free(m, 2);
}
END_TEST

/* Two writer processes never share a segment. */
START_TEST(processes_write_their_own_segments)
{
	struct msg m[4];
	msgs_make(m, 4, "proc");
	int ready, rel;
	pid_t pid = fork_writer(m, 2, true, false, &ready, &rel);
	char cname[SPOOL_SEG_NAME_LEN + 1];
	read_seg_name(ready, cname);
	close(ready);
	close(rel);
	wait_exit0(pid);
	struct spool w, r;
	open_spool(&w);
	struct spool_item it[2];
	commit_msgs(&w, &m[2], it, 2);
	ck_assert_str_ne(cname, it[0].seg_name);
	ck_assert(seg_of_pid(cname, pid));
	ck_assert(seg_of_pid(it[0].seg_name, getpid()));
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 4);
	for (int i = 0; i < 4; i++)
		ck_assert_str_eq(check_listed(&r, &h, &m[i])->seg, i < 2 ? cname : it[0].seg_name);
	hits_free(&h);
	spool_close(&r);
	spool_close(&w);
	msgs_free(m, 4);
}
END_TEST

/* spool_list_changed reports what is new since the last listing on the
 * same spool: a segment that did not grow is not read again. */
START_TEST(list_changed_reads_only_what_grew)
{
	struct msg m[5];
	struct spool_item it[5];
	msgs_make(m, 5, "changed");
	struct spool w, r;
	open_spool(&w);
	commit_msgs(&w, m, it, 3);
	open_spool(&r);
	struct hits h;
	char err[256];
	memset(&h, 0, sizeof h);
	ck_assert_msg(spool_list_changed(&r, on_found, &h, err, sizeof err) == 0, "%s", err);
	ck_assert_uint_eq(h.n, 3); /* never listed: read */
	hits_free(&h);
	memset(&h, 0, sizeof h);
	ck_assert(spool_list_changed(&r, on_found, &h, err, sizeof err) == 0);
	ck_assert_uint_eq(h.n, 3); /* changed within the last second: read again */
	hits_free(&h);
	/* the meta file last changed 2 s ago: listed once more, then not */
	char mp[256];
	seg_path(mp, sizeof mp, "meta", it[0].seg_name, "");
	struct timespec ago[2];
	clock_gettime(CLOCK_REALTIME, &ago[0]);
	ago[0].tv_sec -= 2;
	ago[1] = ago[0];
	ck_assert_int_eq(utimensat(AT_FDCWD, mp, ago, 0), 0);
	memset(&h, 0, sizeof h);
	ck_assert(spool_list_changed(&r, on_found, &h, err, sizeof err) == 0);
	ck_assert_uint_eq(h.n, 3);
	hits_free(&h);
	memset(&h, 0, sizeof h);
	ck_assert(spool_list_changed(&r, on_found, &h, err, sizeof err) == 0);
	ck_assert_uint_eq(h.n, 0); /* nothing changed */
	hits_free(&h);
	off_t before = file_size(mp);
	commit_msgs(&w, m + 3, it + 3, 2); /* the same segment grows */
	/* into the zeros prepared for it: the size stays, the mtime does not */
	ck_assert_int_eq(file_size(mp), before);
	memset(&h, 0, sizeof h);
	ck_assert(spool_list_changed(&r, on_found, &h, err, sizeof err) == 0);
	ck_assert_uint_eq(h.n, 5); /* it is read again, whole */
	hits_free(&h);
	list(&r, &h); /* spool_list reads everything every time */
	ck_assert_uint_eq(h.n, 5);
	hits_free(&h);
	spool_close(&r);
	spool_close(&w);
	msgs_free(m, 5);
}
END_TEST

/* ---- writers that are gone -------------------------------------------------- */

/* A segment without SEAL stays while its writer lives, even with every
 * message done; once the writer is gone, spool_reap removes it. */
START_TEST(unsealed_segment_of_a_gone_writer_is_reaped)
{
	enum { N = 5 };
	struct msg m[N];
	msgs_make(m, N, "gone");
	int ready, rel;
	pid_t pid = fork_writer(m, N, false, true, &ready, &rel);
	char name[SPOOL_SEG_NAME_LEN + 1];
	read_seg_name(ready, name);
	close(ready);
	ck_assert(seg_of_pid(name, pid));
	struct spool r;
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, N);
	for (int i = 0; i < N; i++)
		check_listed(&r, &h, &m[i]);
	hold_and_done_all(&r, &h);
	hits_free(&h);
	ck_assert_uint_eq(spool_reap(&r), 0); /* the writer still runs */
	ck_assert_int_eq(seg_files(name), files(3));
	close(rel); /* let it go, without a SEAL */
	wait_exit0(pid);
	uint64_t count;
	ck_assert(!ends_with_seal(name, &count));
	ck_assert_uint_eq(spool_reap(&r), 1);
	ck_assert_int_eq(seg_files(name), files(0));
	ck_assert_int_eq(dir_count("meta/seg"), 0);
	ck_assert_int_eq(dir_count("data/seg"), 0);
	spool_close(&r);
	msgs_free(m, N);
}
END_TEST

/* A writer killed mid-commit: the scan drops the torn record, seals the
 * segment, and the last spool_done then removes it without spool_reap. */
START_TEST(scan_seals_a_dead_writers_segment)
{
	enum { N = 5 };
	struct msg m[N];
	msgs_make(m, N, "dead");
	int ready, rel;
	pid_t pid = fork_writer(m, N, false, false, &ready, &rel);
	char name[SPOOL_SEG_NAME_LEN + 1];
	read_seg_name(ready, name);
	close(ready);
	close(rel);
	wait_exit0(pid);
	char p[256];
	seg_path(p, sizeof p, "meta", name, "");
	/* the torn record: its first 30 bytes, where the next record goes */
	off_t size = records_end(p);
	unsigned char rec[30];
	read_at(p, 0, rec, sizeof rec);
	int tfd = open(p, O_WRONLY);
	ck_assert_int_ge(tfd, 0);
	ck_assert_int_eq(pwrite(tfd, rec, sizeof rec, size), (ssize_t)sizeof rec);
	close(tfd);

	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, N);
	ck_assert_uint_eq(st.swept, 1);
	ck_assert_uint_eq(st.quarantined, 0);
	ck_assert_uint_eq(st.segments, 1);
	ck_assert_uint_eq(st.removed, 0);
	ck_assert_uint_eq(lg.nwarn, 0);
	for (int i = 0; i < N; i++)
		ck_assert(in_log(lg.found, lg.nfound, m[i].id));
	uint64_t count = 0;
	ck_assert_int_eq(file_size(p), size + REC_MIN);
	ck_assert(ends_with_seal(name, &count));
	ck_assert_uint_eq(count, N);
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, N);
	ck_assert_uint_eq(st.swept, 0);
	ck_assert_int_eq(file_size(p), size + REC_MIN);

	struct spool r;
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, N);
	uint64_t data_end = 0;
	for (int i = 0; i < N; i++) {
		struct hit *x = check_listed(&r, &h, &m[i]);
		if (x->loc.data_off + x->loc.data_len > data_end)
			data_end = x->loc.data_off + x->loc.data_len;
	}
	/* the zeros the writer had prepared past its data are cut too */
	char dp[256];
	seg_path(dp, sizeof dp, "data", name, "");
	if (inline_mode)
		ck_assert(!exists(dp));
	else
		ck_assert_int_eq(file_size(dp), (off_t)data_end);
	hold_and_done_all(&r, &h);
	hits_free(&h);
	ck_assert_int_eq(seg_files(name), files(0));
	ck_assert_uint_eq(spool_reap(&r), 0);
	spool_close(&r);
	msgs_free(m, N);
}
END_TEST

/* ---- recovery at start -------------------------------------------------------- */

/* Damaged bytes or meta, and data cut short, are quarantined (both files,
 * warn with the id); a torn tail and temporary files are swept; the rest is
 * found, by this scan, by the next one and by spool_list. */
START_TEST(scan_quarantines_damage_and_sweeps)
{
	enum { N = 7 };
	struct spool w;
	open_spool(&w);
	struct msg m[N];
	struct spool_item it[N];
	msgs_make(m, N, "scan");
	commit_msgs(&w, m, it, 3);
	commit_msgs(&w, &m[3], &it[3], 4);
	const char *name = it[0].seg_name;
	spool_close(&w);
	char dp[256], mp[256], qp[256];
	bytes_path(dp, sizeof dp, name);
	seg_path(mp, sizeof mp, "meta", name, "");
	/* m0: a byte of its data; m1: a byte of its meta text; m6 (the last
	 * in the data file): cut short.  Inline, a file that ends inside a
	 * message's bytes is a torn commit (scan_drops_a_dead_commit): there
	 * m6 has its fifth byte changed instead. */
	flip_byte(dp, (off_t)(it[0].loc.data_off + it[0].loc.data_len / 2));
	flip_byte(mp, (off_t)(it[1].loc.meta_off + 3));
	if (inline_mode)
		flip_byte(dp, (off_t)(it[6].loc.data_off + 4));
	else
		ck_assert_int_eq(truncate(dp, (off_t)(it[6].loc.data_off + 5)), 0);
	off_t msize = file_size(mp);
	unsigned char rec[30];
	read_at(mp, 0, rec, sizeof rec);
	append_bytes(mp, rec, sizeof rec);
	touch("data/new/tmp1");
	touch("meta/new/tmp2");

	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, N - 3);
	ck_assert_uint_eq(st.quarantined, 3);
	ck_assert_uint_eq(st.swept, 3); /* the torn record and two temporary files */
	ck_assert_uint_eq(st.segments, 1);
	ck_assert_uint_eq(st.removed, 0);
	ck_assert_uint_eq(lg.nwarn, 3);
	for (int i = 0; i < N; i++) {
		bool bad = i == 0 || i == 1 || i == 6;
		ck_assert_msg(in_log(lg.warned, lg.nwarn, m[i].id) == bad, "message %d", i);
		ck_assert_msg(in_log(lg.found, lg.nfound, m[i].id) == !bad, "message %d", i);
	}
	ck_assert_int_eq(dir_count("data/new"), 0);
	ck_assert_int_eq(dir_count("meta/new"), 0);
	ck_assert_int_eq(file_size(mp), msize); /* cut back, still sealed */
	uint64_t count = 0;
	ck_assert(ends_with_seal(name, &count));
	ck_assert_uint_eq(count, N);
	/* what is left of each quarantined message is in both quarantines */
	size_t len, wlen;
	char *got, *want;
	snprintf(qp, sizeof qp, "%s/data/quarantine/%s", dir, m[0].id);
	got = slurp(qp, &len);
	want = msg_data(&m[0], &wlen);
	ck_assert_uint_eq(len, wlen);
	ck_assert(memcmp(got, want, len) != 0); /* the damaged copy, as found */
	want[wlen / 2] ^= 0x01;
	ck_assert(memcmp(got, want, len) == 0);
	free(got);
	free(want);
	snprintf(qp, sizeof qp, "%s/meta/quarantine/%s", dir, m[0].id);
	got = slurp(qp, &len);
	ck_assert_uint_eq(len, strlen(m[0].meta));
	ck_assert(memcmp(got, m[0].meta, len) == 0);
	free(got);
	snprintf(qp, sizeof qp, "%s/data/quarantine/%s", dir, m[1].id);
	got = slurp(qp, &len);
	want = msg_data(&m[1], &wlen);
	ck_assert_uint_eq(len, wlen);
	ck_assert(memcmp(got, want, len) == 0);
	free(got);
	free(want);
	snprintf(qp, sizeof qp, "%s/meta/quarantine/%s", dir, m[1].id);
	ck_assert_int_eq(file_size(qp), (off_t)strlen(m[1].meta));
	snprintf(qp, sizeof qp, "%s/data/quarantine/%s", dir, m[6].id);
	ck_assert_int_eq(file_size(qp), inline_mode ? (off_t)it[6].loc.data_len : 5);
	snprintf(qp, sizeof qp, "%s/meta/quarantine/%s", dir, m[6].id);
	ck_assert(exists(qp));
	ck_assert_int_eq(dir_count("data/quarantine"), 3);
	ck_assert_int_eq(dir_count("meta/quarantine"), 3);

	/* a second scan finds the same and does nothing more */
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, N - 3);
	ck_assert_uint_eq(st.quarantined, 0);
	ck_assert_uint_eq(st.swept, 0);
	ck_assert_uint_eq(lg.nwarn, 0);
	for (int i = 2; i < 6; i++)
		ck_assert(in_log(lg.found, lg.nfound, m[i].id));
	ck_assert_int_eq(file_size(mp), msize);

	struct spool r;
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, N - 3);
	for (int i = 2; i < 6; i++)
		check_listed(&r, &h, &m[i]);
	/* the survivors done, the segment goes; the quarantine stays */
	hold_and_done_all(&r, &h);
	hits_free(&h);
	ck_assert_int_eq(seg_files(name), files(0));
	ck_assert_int_eq(dir_count("data/quarantine"), 3);
	spool_close(&r);
	msgs_free(m, N);
}
END_TEST

/* What a torn tail can look like after a crash in a commit. */
struct tail_row {
	const char *what;
	int kind;     /* 0: a record's first len bytes; 1: len zeros; 2: len bytes of garbage */
	size_t len;   /* 0 with kind 0: the whole first record less one byte */
	bool swept;   /* else damaged: quarantined as <seg>.<offset>, with a warning */
};

static const struct tail_row tail_rows[] = {
	{ "30 bytes of a record", 0, 30, true },
	{ "a header and part of its meta", 0, REC_HDR + 10, true },
	{ "a record less its last byte", 0, 0, true },
	{ "zeros", 1, 200, true },
	{ "a few zeros", 1, 3, true },
	{ "garbage", 2, 100, false },
};

START_TEST(scan_drops_a_torn_tail)
{
	const struct tail_row *row = &tail_rows[_i];
	enum { N = 3 };
	struct spool w;
	open_spool(&w);
	struct msg m[N];
	struct spool_item it[N];
	msgs_make(m, N, "tail");
	commit_msgs(&w, m, it, N);
	char name[SPOOL_SEG_NAME_LEN + 1];
	memcpy(name, it[0].seg_name, sizeof name);
	spool_close(&w);
	char mp[256];
	seg_path(mp, sizeof mp, "meta", name, "");
	off_t msize = file_size(mp);
	size_t len = row->len ? row->len : REC_MIN + strlen(m[0].meta) - 1;
	unsigned char *tail = calloc(1, len);
	ck_assert_ptr_nonnull(tail);
	if (row->kind == 0) {
		read_at(mp, 0, tail, len);
		if (inline_mode && len >= REC_HDR) {
			/* a torn INLINE header says where its own bytes start */
			uint64_t at = (uint64_t)msize + REC_MIN + le32(tail + 8);
			for (int i = 0; i < 8; i++)
				tail[16 + i] = (unsigned char)(at >> (8 * i));
			uint32_t c = crc32c(0, tail, 72);
			for (int i = 0; i < 4; i++)
				tail[72 + i] = (unsigned char)(c >> (8 * i));
		}
	}
	else if (row->kind == 2)
		for (size_t i = 0; i < len; i++)
			tail[i] = (unsigned char)(0x5a + i);
	append_bytes(mp, tail, len);

	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_msg(st.found == N, "%s: found %zu", row->what, st.found);
	ck_assert_uint_eq(st.quarantined, 0);
	ck_assert_uint_eq(st.swept, row->swept ? 1 : 0);
	ck_assert_uint_eq(lg.nwarn, row->swept ? 0 : 1);
	ck_assert_int_eq(file_size(mp), msize);
	uint64_t count = 0;
	ck_assert(ends_with_seal(name, &count));
	ck_assert_uint_eq(count, N);
	if (!row->swept) {
		char qp[256];
		snprintf(qp, sizeof qp, "%s/meta/quarantine/%s.%lld", dir, name, (long long)msize);
		size_t qlen;
		char *q = slurp(qp, &qlen);
		ck_assert_uint_eq(qlen, len);
		ck_assert(memcmp(q, tail, len) == 0);
		free(q);
		ck_assert_str_eq(lg.warned[0], name);
	} else {
		ck_assert_int_eq(dir_count("meta/quarantine"), 0);
	}
	free(tail);
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, N);
	ck_assert_uint_eq(st.swept + st.quarantined + lg.nwarn, 0);
	struct spool r;
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, N);
	for (int i = 0; i < N; i++)
		check_listed(&r, &h, &m[i]);
	hits_free(&h);
	spool_close(&r);
	msgs_free(m, N);
}
END_TEST

static void zero_range(const char *path, off_t off, size_t len)
{
	int fd = open(path, O_WRONLY);
	ck_assert_int_ge(fd, 0);
	char *z = calloc(1, len);
	ck_assert_ptr_nonnull(z);
	ck_assert_int_eq(pwrite(fd, z, len, off), (ssize_t)len);
	free(z);
	close(fd);
}

/* What a crash between a commit's meta records and its bytes reaching the
 * disk can leave (spool_commit starts both files' writes together), and
 * what damage looks like instead. */
struct dead_row {
	const char *what;
	int kind;      /* 0: the last message's bytes zeros; 1: the data file cut at the
			* second commit's start; 2: zeros from the middle of the last
			* message's bytes (not at a page boundary); 3: its last byte zero
			* after the 4 KiB page boundary in it; 4: cut inside the last one */
	int dropped;   /* messages dropped silently as a dead commit */
	int damaged;   /* quarantined with a warning */
	/* inline, where the bytes and the cuts are in the meta file: the
	 * messages lost, the sweeps (a dead commit, or a torn tail however
	 * many records it cuts) and the quarantined */
	int lost_inline, swept_inline, damaged_inline;
};

static const struct dead_row dead_rows[] = {
	{ "the last message's bytes are zeros", 0, 1, 0, 1, 1, 0 },
	{ "the data file ends where the second commit starts", 1, 2, 0, 2, 1, 0 },
	{ "zeros from inside the bytes' only page", 2, 0, 1, 1, 0, 1 },
	{ "zeros from the page boundary inside the bytes", 3, 1, 0, 1, 1, 0 },
	{ "the data file ends inside the last message", 4, 0, 1, 1, 1, 0 },
};

START_TEST(scan_drops_a_dead_commit)
{
	const struct dead_row *row = &dead_rows[_i];
	enum { N = 5 };
	struct spool w;
	open_spool(&w);
	struct msg m[N];
	struct spool_item it[N];
	msgs_make(m, N, "dead");
	if (row->kind == 3) {
		/* the last message's bytes cross a 4 KiB boundary of the file */
		free(m[N - 1].body);
		m[N - 1].body_len = 9000;
		m[N - 1].body = malloc(m[N - 1].body_len);
		ck_assert_ptr_nonnull(m[N - 1].body);
		memset(m[N - 1].body, 'x', m[N - 1].body_len - 2);
		memcpy(m[N - 1].body + m[N - 1].body_len - 2, "\r\n", 2);
		m[N - 1].iov[2] = (struct iovec){ m[N - 1].body, m[N - 1].body_len };
	}
	commit_msgs(&w, m, it, 3);
	commit_msgs(&w, &m[3], &it[3], 2);
	char name[SPOOL_SEG_NAME_LEN + 1];
	memcpy(name, it[0].seg_name, sizeof name);
	spool_close(&w);
	char dp[256];
	bytes_path(dp, sizeof dp, name);
	const struct spool_loc *last = &it[N - 1].loc;
	uint64_t end = last->data_off + last->data_len;
	switch (row->kind) {
	case 0:
		zero_range(dp, (off_t)last->data_off, (size_t)last->data_len);
		break;
	case 1:
		ck_assert_int_eq(truncate(dp, (off_t)it[3].loc.data_off), 0);
		break;
	case 2:
		/* (the bytes must lie in one page for this to be damage) */
		ck_assert_uint_le((end - 1) & ~(uint64_t)4095, last->data_off);
		zero_range(dp, (off_t)(last->data_off + last->data_len / 2), (size_t)(last->data_len - last->data_len / 2));
		break;
	case 3: {
		uint64_t page = (end - 1) & ~(uint64_t)4095;
		ck_assert_uint_gt(page, last->data_off);
		zero_range(dp, (off_t)page, (size_t)(end - page));
		break;
	}
	case 4:
		ck_assert_int_eq(truncate(dp, (off_t)(last->data_off + 7)), 0);
		break;
	}

	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	int lost = row->dropped + row->damaged, swept = row->dropped, damaged = row->damaged;
	if (inline_mode) {
		lost = row->lost_inline;
		swept = row->swept_inline;
		damaged = row->damaged_inline;
	}
	ck_assert_msg(st.found == (size_t)(N - lost), "%s: found %zu", row->what, st.found);
	ck_assert_uint_eq(st.quarantined, (size_t)damaged);
	ck_assert_uint_eq(st.swept, (size_t)swept);
	ck_assert_uint_eq(lg.nwarn, (size_t)damaged);
	for (int i = 0; i < N; i++)
		ck_assert_msg(in_log(lg.found, lg.nfound, m[i].id) == (i < N - lost), "%s: message %d", row->what, i);
	ck_assert_int_eq(dir_count("data/quarantine"), damaged);
	ck_assert_int_eq(dir_count("meta/quarantine"), damaged);
	/* marked done: a second scan finds the rest and nothing else */
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, (size_t)(N - lost));
	ck_assert_uint_eq(st.swept + st.quarantined + lg.nwarn, 0);
	msgs_free(m, N);
}
END_TEST

/* A damaged header on the last message record: the rest of the file is
 * copied to quarantine/<seg>.<offset> with a warning naming the segment,
 * the file is cut there and sealed again, the messages before it found. */
START_TEST(scan_damaged_last_header)
{
	enum { N = 4 };
	struct spool w;
	open_spool(&w);
	struct msg m[N];
	struct spool_item it[N];
	msgs_make(m, N, "hdr");
	commit_msgs(&w, m, it, N);
	char name[SPOOL_SEG_NAME_LEN + 1];
	memcpy(name, it[0].seg_name, sizeof name);
	spool_close(&w);
	char mp[256], qp[256];
	seg_path(mp, sizeof mp, "meta", name, "");
	off_t rec = (off_t)it[N - 1].loc.meta_off - REC_HDR;
	off_t size0 = file_size(mp); /* the records and the writer's SEAL */
	flip_byte(mp, rec + 50); /* inside the id */
	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, N - 1);
	ck_assert_uint_eq(lg.nwarn, 1);
	ck_assert_str_eq(lg.warned[0], name);
	for (int i = 0; i < N - 1; i++)
		ck_assert(in_log(lg.found, lg.nfound, m[i].id));
	snprintf(qp, sizeof qp, "%s/meta/quarantine/%s.%lld", dir, name, (long long)rec);
	ck_assert(exists(qp));
	uint64_t count = 0;
	/* the damaged bytes stay (the writer's SEAL after them is read); a new
	 * SEAL counts the messages that can be found */
	ck_assert_int_eq(file_size(mp), size0 + REC_MIN);
	ck_assert(ends_with_seal(name, &count));
	ck_assert_uint_eq(count, N - 1);
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, N - 1);
	ck_assert_uint_eq(lg.nwarn, 0);
	msgs_free(m, N);
}
END_TEST

/* A damaged header in the middle of a segment must not cost the whole
 * messages after it: each is found, or at least its bytes are kept in
 * quarantine/<id>.  (The segment's data file goes once what the scan
 * found is done, and with it the bytes of everything it did not find.) */
START_TEST(scan_damaged_header_keeps_later_messages)
{
	enum { N = 4 };
	struct spool w;
	open_spool(&w);
	struct msg m[N];
	struct spool_item it[N];
	msgs_make(m, N, "mid");
	commit_msgs(&w, m, it, N);
	char name[SPOOL_SEG_NAME_LEN + 1];
	memcpy(name, it[0].seg_name, sizeof name);
	spool_close(&w);
	char mp[256], qp[256];
	seg_path(mp, sizeof mp, "meta", name, "");
	flip_byte(mp, (off_t)it[1].loc.meta_off - REC_HDR + 50);
	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_uint_ge(lg.nwarn, 1);
	ck_assert(in_log(lg.found, lg.nfound, m[0].id));
	for (int i = 2; i < N; i++) {
		snprintf(qp, sizeof qp, "%s/data/quarantine/%s", dir, m[i].id);
		ck_assert_msg(in_log(lg.found, lg.nfound, m[i].id) || exists(qp),
			      "message %d (%s), whole, after a damaged header: neither found nor"
			      " quarantined", i, m[i].id);
	}
	msgs_free(m, N);
}
END_TEST

/* ---- the same id twice ----------------------------------------------------------- */

/* The newest record of an id wins (the queue manager rewrote it through
 * another writer); the scan marks the older done, and its segment, with
 * nothing else in it, goes. */
START_TEST(duplicate_id_newest_wins)
{
	struct spool a, b, r;
	open_spool(&a);
	open_spool(&b);
	struct msg ma[2], mb[1];
	struct spool_item ia[2], ib[1];
	msgs_make(ma, 2, "old");
	msgs_make(mb, 1, "new");
	memcpy(mb[0].id, ma[0].id, sizeof mb[0].id); /* X */
	commit_msgs(&a, ma, ia, 1);
	commit_msgs(&b, mb, ib, 1);
	ck_assert_str_ne(ia[0].seg_name, ib[0].seg_name);
	ck_assert_uint_gt(ib[0].loc.stamp, ia[0].loc.stamp);
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 1);
	ck_assert_str_eq(check_listed(&r, &h, &mb[0])->seg, ib[0].seg_name);
	hits_free(&h);
	spool_close(&r);
	commit_msgs(&a, &ma[1], &ia[1], 1); /* Y, after X, in A's segment */
	char na[SPOOL_SEG_NAME_LEN + 1];
	memcpy(na, ia[0].seg_name, sizeof na);
	spool_close(&a);
	spool_close(&b);

	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, 2);
	ck_assert_uint_eq(st.quarantined, 0);
	ck_assert(in_log(lg.found, lg.nfound, ma[1].id));
	ck_assert(in_log(lg.found, lg.nfound, mb[0].id));
	open_spool(&r);
	list(&r, &h);
	ck_assert_uint_eq(h.n, 2);
	ck_assert_str_eq(check_listed(&r, &h, &mb[0])->seg, ib[0].seg_name);
	check_listed(&r, &h, &ma[1]);
	/* Y done: A's segment holds nothing else (X's older copy is done) */
	struct hits hy = { 0 };
	struct hit *y = hit_of(&h, ma[1].id);
	on_found(&hy, y->id, &y->loc, NULL, 0);
	hold_and_done_all(&r, &hy);
	hits_free(&hy);
	hits_free(&h);
	ck_assert_int_eq(seg_files(na), files(0));
	list(&r, &h);
	ck_assert_uint_eq(h.n, 1);
	check_listed(&r, &h, &mb[0]);
	hits_free(&h);
	spool_close(&r);
	msgs_free(ma, 2);
	msgs_free(mb, 1);
}
END_TEST

/* The same id twice in one segment: the newer copy wins, before and after a
 * start-up scan (which marks the older done in the segment's journal). */
START_TEST(duplicate_id_in_one_segment_survives_scan)
{
	struct spool w, r;
	open_spool(&w);
	struct msg m[2];
	struct spool_item it[2];
	msgs_make(m, 2, "dup");
	memcpy(m[1].id, m[0].id, sizeof m[1].id);
	commit_msgs(&w, m, it, 1);
	commit_msgs(&w, &m[1], &it[1], 1);
	ck_assert_str_eq(it[0].seg_name, it[1].seg_name);
	spool_close(&w);
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 1);
	check_listed(&r, &h, &m[1]);
	hits_free(&h);
	spool_close(&r);

	struct scan_log lg;
	struct spool_scan_stats st;
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, 1);
	ck_assert(in_log(lg.found, lg.nfound, m[1].id));
	open_spool(&r);
	list(&r, &h);
	ck_assert_msg(h.n == 1, "after the scan, spool_list finds %zu copies of %s (want the newer)",
		      h.n, m[1].id);
	check_listed(&r, &h, &m[1]);
	hits_free(&h);
	spool_close(&r);
	scan(&lg, &st);
	ck_assert_uint_eq(st.found, 1);
	msgs_free(m, 2);
}
END_TEST

/* The queue manager rewrites a message it holds (qmgr_inject.c): it commits
 * the new copy to its own segment, then marks the old copy done.  When the
 * old copy was in that same segment, a restart must still find the new. */
START_TEST(rewrite_in_own_segment_survives_restart)
{
	struct spool q, r;
	open_spool(&q);
	struct msg m[2];
	struct spool_item it[2];
	msgs_make(m, 2, "rw");
	memcpy(m[1].id, m[0].id, sizeof m[1].id);
	char err[256];
	commit_msgs(&q, m, it, 1);
	spool_hold(&q, &it[0].loc);
	commit_msgs(&q, &m[1], &it[1], 1);
	ck_assert_str_eq(it[0].seg_name, it[1].seg_name);
	ck_assert_msg(spool_done(&q, &it[0].loc, m[0].id, err, sizeof err) == 0, "%s", err);
	spool_hold(&q, &it[1].loc);
	check_read(&q, &it[1].loc, &m[1]);
	spool_close(&q); /* the queue manager stops, the message still queued */

	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_msg(h.n == 1, "after a restart, spool_list finds %zu copies of %s (want the newer)",
		      h.n, m[1].id);
	check_listed(&r, &h, &m[1]);
	hits_free(&h);
	spool_close(&r);
	msgs_free(m, 2);
}
END_TEST

/* spool_any_sparse, which lets kumo-qmgr skip its walk over every waiting
 * message: true only once a sealed segment's held messages take at most
 * half of its data file. */
START_TEST(any_sparse_follows_the_held_messages)
{
	struct spool w, r;
	open_spool(&w);
	struct msg m[4];
	struct spool_item it[4];
	msgs_make(m, 4, "sp");
	commit_msgs(&w, m, it, 4);
	spool_close(&w); /* sealed */
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 4);
	ck_assert(!spool_any_sparse(&r)); /* nothing held */
	for (size_t i = 0; i < 3; i++)
		spool_hold(&r, &h.v[i].loc);
	ck_assert(!spool_any_sparse(&r)); /* three of four held: more than half */
	char err[256];
	for (size_t i = 0; i < 2; i++)
		ck_assert_msg(spool_done(&r, &h.v[i].loc, h.v[i].id, err, sizeof err) == 0, "%s", err);
	ck_assert(spool_any_sparse(&r)); /* one of four */
	hits_free(&h);
	spool_close(&r);
	msgs_free(m, 4);
}
END_TEST

/* ---- a commit that fails ------------------------------------------------------- */

static void set_fsize(rlim_t cur)
{
	struct rlimit rl;
	getrlimit(RLIMIT_FSIZE, &rl);
	rl.rlim_cur = cur;
	setrlimit(RLIMIT_FSIZE, &rl);
}

/* The flushes of a commit: where spool_open found one_flush, a commit
 * inside the prepared part of the data file makes one fdatasync (the meta
 * file's); the first commit of a segment (nothing prepared yet), a batch
 * larger than what is prepared, and a spool without one_flush make two.
 * Every message reads back either way. */
START_TEST(one_flush_inside_the_prepared_part)
{
	struct spool w;
	open_spool(&w);
	struct statfs fs;
	ck_assert_int_eq(statfs(dir, &fs), 0);
	bool in_place = fs.f_type == EXT4_SUPER_MAGIC || fs.f_type == XFS_SUPER_MAGIC;
	if (!in_place)
		ck_assert(!w.one_flush);
	ck_assert_msg(strncmp(w.flush_mode, w.one_flush ? "one flush" : "two flushes",
			      w.one_flush ? 9 : 11) == 0, "flush_mode '%s'", w.flush_mode);
	enum { N = 5 };
	struct msg m[N];
	struct spool_item it[N];
	msgs_make(m, N, "flush");
	/* a big one: past the 64 KiB first prepared beyond the first commit */
	free(m[2].body);
	m[2].body_len = 200 * 1024;
	m[2].body = calloc(1, m[2].body_len);
	ck_assert_ptr_nonnull(m[2].body);
	m[2].iov[2] = (struct iovec){ m[2].body, m[2].body_len };
	uint64_t once = w.one_flush ? 1 : 2;
	uint64_t f = w.commit_flushes;
	commit_msgs(&w, &m[0], &it[0], 1);
	ck_assert_uint_eq(w.commit_flushes - f, 2);  /* a new segment */
	f = w.commit_flushes;
	commit_msgs(&w, &m[1], &it[1], 1);
	ck_assert_uint_eq(w.commit_flushes - f, once);
	f = w.commit_flushes;
	commit_msgs(&w, &m[2], &it[2], 1);
	ck_assert_uint_eq(w.commit_flushes - f, 2);  /* larger than the prepared part */
	f = w.commit_flushes;
	commit_msgs(&w, &m[3], &it[3], 1);
	ck_assert_uint_eq(w.commit_flushes - f, once);
	w.one_flush = false;
	f = w.commit_flushes;
	commit_msgs(&w, &m[4], &it[4], 1);
	ck_assert_uint_eq(w.commit_flushes - f, 2);
	for (size_t i = 0; i < N; i++)
		check_read(&w, &it[i].loc, &m[i]);
	spool_close(&w);
	msgs_free(m, N);
}
END_TEST

/* Inline, a listing can read a commit's write while it is under way: a
 * whole record whose bytes are not all there yet (here: zeros) is not
 * reported, the records after it are, and a later listing reports it once
 * its bytes are there. */
START_TEST(list_inline_waits_for_the_bytes)
{
	struct spool w, r;
	open_spool(&w);
	ck_assert(w.inline_data);
	struct msg m[3];
	struct spool_item it[3];
	msgs_make(m, 3, "inflight");
	commit_msgs(&w, m, it, 3);
	char p[256];
	seg_path(p, sizeof p, "meta", it[0].seg_name, "");
	const struct spool_loc *l = &it[1].loc;
	char *saved = malloc((size_t)l->data_len);
	ck_assert_ptr_nonnull(saved);
	read_at(p, (off_t)l->data_off, saved, (size_t)l->data_len);
	zero_range(p, (off_t)(l->data_off + l->data_len / 2), (size_t)(l->data_len - l->data_len / 2));
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 2);
	check_listed(&r, &h, &m[0]);
	check_listed(&r, &h, &m[2]);
	ck_assert_ptr_null(hit_of(&h, m[1].id));
	hits_free(&h);
	int fd = open(p, O_WRONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, saved, (size_t)l->data_len, (off_t)l->data_off), (ssize_t)l->data_len);
	close(fd);
	free(saved);
	expect_listing(&r, m, 3);
	spool_close(&r);
	spool_close(&w);
	msgs_free(m, 3);
}
END_TEST

/* Inline, every commit is one write and one flush, whatever its size and
 * whether its segment is new; spool_commit_mode says so. */
START_TEST(inline_commit_is_one_flush)
{
	struct spool w;
	open_spool(&w);
	ck_assert(w.inline_data);
	ck_assert(strncmp(spool_commit_mode(&w), "one write and one flush per commit", 34) == 0);
	enum { N = 4 };
	struct msg m[N];
	struct spool_item it[N];
	msgs_make(m, N, "inl");
	free(m[2].body);
	m[2].body_len = 300 * 1024; /* past what is prepared */
	m[2].body = calloc(1, m[2].body_len);
	ck_assert_ptr_nonnull(m[2].body);
	memcpy(m[2].body + m[2].body_len - 2, "\r\n", 2);
	m[2].iov[2] = (struct iovec){ m[2].body, m[2].body_len };
	for (size_t i = 0; i < N; i++) {
		uint64_t f = w.commit_flushes;
		commit_msgs(&w, &m[i], &it[i], 1);
		ck_assert_uint_eq(w.commit_flushes - f, 1);
		ck_assert(it[i].loc.data_in_meta);
	}
	for (size_t i = 0; i < N; i++)
		check_read(&w, &it[i].loc, &m[i]);
	ck_assert_int_eq(dir_count("data/seg"), 0);
	ck_assert_int_eq(dir_count("meta/seg"), 1);
	spool_close(&w);
	msgs_free(m, N);
}
END_TEST

/* Data and meta on different file systems: two flushes, and the log line
 * says why.  (/dev/shm is a tmpfs; skipped where there is none.) */
START_TEST(two_flushes_across_devices)
{
	struct stat a, b;
	if (stat("/dev/shm", &a) != 0 || stat(dir, &b) != 0 || a.st_dev == b.st_dev)
		return;
	char d[128], m[128], err[256];
	snprintf(d, sizeof d, "%s/data", dir);
	snprintf(m, sizeof m, "/dev/shm/kumo-spool-meta-%d", (int)getpid());
	struct spool w;
	ck_assert_msg(spool_open(&w, d, m, err, sizeof err) == 0, "%s", err);
	ck_assert(!w.one_flush);
	ck_assert(!w.inline_data);
	ck_assert_str_eq(w.flush_mode, "two flushes per commit: data and meta are on different devices");
	ck_assert_str_eq(spool_commit_mode(&w), w.flush_mode);
	spool_close(&w);
	char cmd[160];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", m);
	ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* A commit whose data, or whose meta, cannot be written (a file size limit
 * stands in for a full disk) fails every item and leaves nothing: both
 * files are cut back, nothing is listed, the next commit works. */
START_TEST(failed_commit_leaves_nothing)
{
	struct spool w, r;
	open_spool(&w);
	struct msg m[12];
	struct spool_item it[12];
	msgs_make(m, 12, "fail");
	commit_msgs(&w, m, it, 3);
	const char *name = it[0].seg_name;
	char dp[256], mp[256];
	bytes_path(dp, sizeof dp, name);
	seg_path(mp, sizeof mp, "meta", name, "");
	/* where the data and the records end (zeros are prepared past both;
	 * inline, both are the meta file) */
	off_t dsize = (off_t)(it[2].loc.data_off + it[2].loc.data_len), msize = records_end(mp);
	ck_assert(!inline_mode || dsize == msize);
	rlim_t limit = (rlim_t)(dsize > msize ? dsize : msize) + 64;
	static char bigbody[8000], bigmeta[8000];
	memset(bigbody, 'b', sizeof bigbody);
	memset(bigmeta, ' ', sizeof bigmeta);
	bigmeta[0] = '{';
	bigmeta[sizeof bigmeta - 1] = '}';
	struct rlimit old;
	getrlimit(RLIMIT_FSIZE, &old);
	signal(SIGXFSZ, SIG_IGN);

	/* the data cannot be written */
	struct spool_item f[3];
	for (int i = 0; i < 3; i++) {
		item_of(&f[i], &m[3 + i]);
		m[3 + i].iov[2] = (struct iovec){ bigbody, sizeof bigbody };
	}
	set_fsize(limit);
	size_t failed = spool_commit(&w, f, 3);
	set_fsize(old.rlim_cur);
	ck_assert_uint_eq(failed, 3);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(f[i].result, -1);
		ck_assert_msg(strstr(f[i].err, inline_mode ? "write segment" : "data") != NULL, "err: %s", f[i].err);
	}
	ck_assert_int_eq(file_size(dp), dsize);
	ck_assert_int_eq(file_size(mp), msize);

	/* the data can, the meta cannot */
	static const struct iovec tiny = { (void *)"x\r\n", 3 };
	for (int i = 0; i < 3; i++) {
		item_of(&f[i], &m[6 + i]);
		f[i].data = &tiny;
		f[i].data_cnt = 1;
		f[i].meta = bigmeta;
		f[i].meta_len = sizeof bigmeta;
	}
	set_fsize(limit);
	failed = spool_commit(&w, f, 3);
	set_fsize(old.rlim_cur);
	ck_assert_uint_eq(failed, 3);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(f[i].result, -1);
		ck_assert_msg(strstr(f[i].err, inline_mode ? "write segment" : "meta") != NULL, "err: %s",
			      f[i].err);
	}
	ck_assert_int_eq(file_size(dp), dsize);
	ck_assert_int_eq(file_size(mp), msize);

	/* and the next commit goes on in the same segment */
	commit_msgs(&w, &m[9], &it[9], 3);
	ck_assert_str_eq(it[9].seg_name, name);
	ck_assert_uint_eq(it[9].loc.data_off, (uint64_t)dsize + (inline_mode ? REC_MIN + it[9].loc.meta_len : 0));
	open_spool(&r);
	struct hits h;
	list(&r, &h);
	ck_assert_uint_eq(h.n, 6);
	for (int i = 0; i < 12; i++) {
		if (i < 3 || i >= 9)
			check_listed(&r, &h, &m[i]);
		else
			ck_assert_ptr_null(hit_of(&h, m[i].id));
	}
	hits_free(&h);
	spool_close(&r);
	spool_close(&w);
	msgs_free(m, 12);
}
END_TEST

/* The cases that hold in either layout of a segment. */
static void add_layout_tests(TCase *tc)
{
	tcase_add_test(tc, commit_then_list);
	tcase_add_test(tc, odd_items_round_trip);
	tcase_add_test(tc, seg_get_by_name);
	tcase_add_test(tc, list_skips_a_torn_tail_and_changes_nothing);
	tcase_add_test(tc, done_then_segment_removed);
	tcase_add_test(tc, update_meta_replaces_meta);
	tcase_add_test(tc, damaged_meta_record_is_passed_over);
	tcase_add_test(tc, roll_at_max_msgs);
	tcase_add_test(tc, roll_at_max_bytes);
	tcase_add_test(tc, roll_at_max_age_and_idle_seal);
	tcase_add_test(tc, processes_write_their_own_segments);
	tcase_add_test(tc, list_changed_reads_only_what_grew);
	tcase_add_test(tc, unsealed_segment_of_a_gone_writer_is_reaped);
	tcase_add_test(tc, scan_seals_a_dead_writers_segment);
	tcase_add_test(tc, scan_quarantines_damage_and_sweeps);
	tcase_add_loop_test(tc, scan_drops_a_torn_tail, 0, (int)(sizeof tail_rows / sizeof tail_rows[0]));
	tcase_add_loop_test(tc, scan_drops_a_dead_commit, 0, (int)(sizeof dead_rows / sizeof dead_rows[0]));
	tcase_add_test(tc, scan_damaged_last_header);
	tcase_add_test(tc, scan_damaged_header_keeps_later_messages);
	tcase_add_test(tc, duplicate_id_newest_wins);
	tcase_add_test(tc, duplicate_id_in_one_segment_survives_scan);
	tcase_add_test(tc, rewrite_in_own_segment_survives_restart);
	tcase_add_test(tc, any_sparse_follows_the_held_messages);
	tcase_add_test(tc, failed_commit_leaves_nothing);
}

int main(void)
{
	Suite *s = suite_create("spool");
	TCase *tc = tcase_create("store");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, ids_are_unique_ordered_and_dated);
	tcase_add_test(tc, ids_differ_after_fork);
	tcase_add_test(tc, lock_is_exclusive);
	tcase_add_test(tc, unwritable_path_fails);
	add_layout_tests(tc);
	tcase_add_test(tc, one_flush_inside_the_prepared_part);
	tcase_add_test(tc, two_flushes_across_devices);
	suite_add_tcase(s, tc);
	/* the same behaviour with the message bytes in the meta file */
	TCase *ti = tcase_create("inline");
	tcase_add_checked_fixture(ti, setup_inline, teardown);
	tcase_set_timeout(ti, 60);
	add_layout_tests(ti);
	tcase_add_test(ti, inline_commit_is_one_flush);
	tcase_add_test(ti, list_inline_waits_for_the_bytes);
	suite_add_tcase(s, ti);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
