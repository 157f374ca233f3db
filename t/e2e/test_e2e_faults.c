/*
 * End-to-end faults (issue 8, hardening): slow clients cut at
 * client_timeout, 200 simultaneous 10 MB messages (peak memory of the
 * whole process tree measured), kill -9 of a worker mid-DATA, of
 * kumo-policyd while sessions wait on it and of kumod itself, a full spool
 * file system (ENOSPC), a corrupted spool at start, an open-relay probe
 * from a non-relay address, and the modes and owners of what the relay
 * leaves on disk and of its processes.
 *
 * Each test asserts what the client sees (never a 250 for what was not
 * stored) and what is on disk and in the logs afterwards.  No assertion
 * is on a time: waits are generous, for a shared 2-core machine.
 */
#include "expect.h"
#include "harness.h"
#include "lib/logrec.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#define H HARNESS_HOSTNAME
#define BANNER "220 " H " KumoMTA"
#define GO_AHEAD "354 Send body; end with CRLF.CRLF"
#define IDLE "421 4.3.2 " H " idle too long"

static struct smtpc *session(struct harness_env *env, const char *src)
{
	struct smtpc *c = smtpc_connect(env, env->port, src);
	smtpc_expect(c, BANNER);
	smtpc_cmd(c, "EHLO client.example");
	free(smtpc_expect_code(c, 250));
	return c;
}

/* One whole transaction without failing the test; 1 if it got its 250
 * (and the id in id, when not NULL). */
static int try_transaction(struct harness_env *env, const char *marker, char id[33])
{
	struct smtpc *c = smtpc_try_connect(env, env->port, NULL);
	if (!c)
		return 0;
	char body[200];
	snprintf(body, sizeof body, "Subject: probe\r\n\r\n%s\r\n.\r\n", marker);
	const char *cmds[] = { NULL, "MAIL FROM:<a@example.com>\r\n", "RCPT TO:<b@example.net>\r\n",
			       "DATA\r\n", body };
	const int codes[] = { 220, 250, 250, 354, 250 };
	int ok = 1;
	for (int i = 0; i < 5 && ok; i++) {
		char *t = NULL;
		if (cmds[i] && smtpc_try_send(c, cmds[i], strlen(cmds[i])) != 0)
			ok = 0;
		else
			ok = smtpc_read_reply(c, &t, 10000) == codes[i];
		if (ok && i == 4 && id)
			ok = sscanf(t, "250 OK ids=%32s", id) == 1 && smtpc_is_spool_id(id);
		free(t);
	}
	smtpc_close(c);
	return ok;
}

static int count_records(struct harness_env *env, const char *type)
{
	cJSON *arr = harness_logs_read(env, NULL);
	int n = 0;
	const cJSON *rec;
	cJSON_ArrayForEach(rec, arr) {
		const char *t = harness_json_str(rec, "type");
		n += t && !strcmp(t, type);
	}
	cJSON_Delete(arr);
	return n;
}

/* Waits up to HARNESS_LOG_TIMEOUT s for at least n records of this type;
 * returns how many there are. */
static int wait_records(struct harness_env *env, const char *type, int n)
{
	double end = harness_now_s() + HARNESS_LOG_TIMEOUT;
	int have;
	while ((have = count_records(env, type)) < n && harness_now_s() < end)
		harness_pause_ms(100);
	return have;
}

/* No Reception record names this sender (read once a record written
 * now would have left kumod's buffers, see LOGREC_FLUSH_MS). */
static void expect_no_reception_from(struct harness_env *env, const char *sender)
{
	harness_pause_ms(3 * LOGREC_FLUSH_MS);
	cJSON *arr = harness_logs_read(env, NULL);
	const cJSON *rec;
	cJSON_ArrayForEach(rec, arr) {
		const char *t = harness_json_str(rec, "type");
		const char *s = harness_json_str(rec, "sender");
		if (t && !strcmp(t, "Reception") && s && !strcmp(s, sender)) {
			char *txt = cJSON_PrintUnformatted(rec);
			ck_abort_msg("a Reception record for sender %s, whose message never got a 250:\n%s",
				     sender, txt);
		}
	}
	cJSON_Delete(arr);
}

static void expect_dir_empty(struct harness_env *env, const char *rel)
{
	char **v = harness_list_files(env, rel);
	size_t n = harness_strv_len(v);
	ck_assert_msg(n == 0, "%s/%s holds %zu file(s), first %s", env->dir, rel, n, n ? v[0] : "");
	harness_strv_free(v);
}

/* ---- sink and a policy that relays to it -------------------------------- */

#define RELAY_POLICY                                                             \
	"local kumo = require 'kumo'\n"                                        \
	"kumo.on('init', function()\n"                                         \
	"  kumo.define_spool { name = 'data', path = '@DIR@/spool/data' }\n"   \
	"  kumo.define_spool { name = 'meta', path = '@DIR@/spool/meta' }\n"   \
	"  kumo.configure_local_logs { log_dir = '@DIR@/logs' }\n"             \
	"  kumo.start_esmtp_listener { listen = '127.0.0.1:@PORT@',"           \
	" hostname = 'mx.test.example' }\n"                                    \
	"end)\n"                                                               \
	"kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)\n" \
	"  return kumo.make_queue_config { protocol = { smtp = { mx_list = { '127.0.0.1:%d' } } },"\
	" retry_interval = '1 seconds' }\n"                                    \
	"end)\n"                                                               \
	"kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)\n" \
	"  return kumo.make_egress_path { enable_tls = 'Disabled', prohibited_hosts = {} }\n" \
	"end)\n"

static void relay_policy(struct harness_env *env, int sink_port)
{
	char text[4096];
	snprintf(text, sizeof text, RELAY_POLICY, sink_port);
	harness_write_policy(env, text, NULL);
}

static pid_t sink_start(struct harness_env *env, int *port, const char *rule)
{
	char *dir = harness_path(env, "sink");
	mkdir(dir, 0755);
	const char *argv[] = { "-d", dir, rule ? "--rule" : NULL, rule, NULL };
	pid_t pid = harness_tool_start("sink", port, argv);
	free(dir);
	return pid;
}

/* How many of the sink's messages contain needle (all of them: NULL). */
static size_t sink_count(struct harness_env *env, const char *needle)
{
	char *dir = harness_path(env, "sink");
	size_t n = 0;
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		if (l <= 4 || strcmp(e->d_name + l - 4, ".eml") != 0)
			continue;
		if (!needle) {
			n++;
			continue;
		}
		char path[1200];
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		size_t len;
		char *m = harness_slurp(path, &len);
		n += m && harness_contains(m, len, needle);
		free(m);
	}
	if (d)
		closedir(d);
	free(dir);
	return n;
}

static size_t sink_wait(struct harness_env *env, size_t n, int secs)
{
	size_t have = 0;
	double end = harness_now_s() + secs;
	while ((have = sink_count(env, NULL)) < n && harness_now_s() < end)
		harness_pause_ms(100);
	return have;
}

/* ---- 1. slow clients ---------------------------------------------------- */

static void expect_idle_cut(struct smtpc *c, const char *what)
{
	char *t = NULL;
	int code = smtpc_read_reply(c, &t, 15000);
	if (code != 421 || !t || strcmp(t, IDLE) != 0) {
		char *tr = smtpc_transcript(c, 2000);
		ck_abort_msg("%s: want '%s' and a close (client_timeout 2 s); got %d '%s'\n%s", what, IDLE,
			     code, t ? t : "", tr);
	}
	free(t);
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	smtpc_close(c);
}

/* Sends text one byte at a time, gap_ms apart, until the server answers;
 * returns that answer's code (text in *reply) and how many bytes went. */
static int trickle(struct smtpc *c, const char *text, int gap_ms, char **reply, size_t *sent)
{
	size_t n = strlen(text);
	*sent = 0;
	for (size_t i = 0; i < n; i++) {
		if (smtpc_try_send(c, text + i, 1) != 0)
			break;
		*sent = i + 1;
		int code = smtpc_read_reply(c, reply, gap_ms);
		if (code != SMTPC_TIMEOUT)
			return code;
		free(*reply);
		*reply = NULL;
	}
	return smtpc_read_reply(c, reply, 15000);
}

static void expect_trickle_cut(struct smtpc *c, const char *text, const char *what)
{
	char *t = NULL;
	size_t sent = 0;
	int code = trickle(c, text, 3000, &t, &sent);
	if (code != 421 || !t || strcmp(t, IDLE) != 0 || sent >= strlen(text)) {
		char *tr = smtpc_transcript(c, 2000);
		ck_abort_msg("%s, a byte every 3 s: want '%s' before the text is complete; got %d '%s'"
			     " after %zu of %zu bytes\n%s", what, IDLE, code, t ? t : "", sent, strlen(text), tr);
	}
	free(t);
	smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
	smtpc_close(c);
}

START_TEST(test_slowloris)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, "client_timeout = '2 seconds',");
	/* silent after the banner */
	struct smtpc *silent = smtpc_connect(env, env->port, NULL);
	smtpc_expect(silent, BANNER);
	/* half a command, then nothing */
	struct smtpc *half = session(env, NULL);
	smtpc_sendf(half, "MAIL FROM:<slow@exa");
	/* half a message, then nothing */
	struct smtpc *data = session(env, NULL);
	smtpc_chat(data, "MAIL FROM:<slow@example.com>", "250 OK <slow@example.com>");
	smtpc_chat(data, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(data, "DATA", GO_AHEAD);
	smtpc_sendf(data, "Subject: slowloris\r\n\r\nslowloris-data-marker");
	/* meanwhile the relay serves others */
	const char *rcpts[] = { "b@example.net", NULL };
	char ids[2][33];
	struct smtpc *good = session(env, NULL);
	smtpc_transaction(good, "good@example.com", rcpts, "Subject: ok\r\n\r\nduring\r\n", ids);
	smtpc_chat(good, "QUIT", "221 So long, and thanks for all the fish!");
	smtpc_close(good);
	expect_idle_cut(silent, "silent after the banner");
	expect_idle_cut(half, "half a MAIL command");
	expect_idle_cut(data, "half a message in DATA");

	/* a byte every 3 s (longer than client_timeout): cut at the first gap */
	struct smtpc *t1 = smtpc_connect(env, env->port, NULL);
	smtpc_expect(t1, BANNER);
	expect_trickle_cut(t1, "EHLO slow.example\r\n", "EHLO");
	struct smtpc *t2 = session(env, NULL);
	smtpc_chat(t2, "MAIL FROM:<slow@example.com>", "250 OK <slow@example.com>");
	smtpc_chat(t2, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(t2, "DATA", GO_AHEAD);
	expect_trickle_cut(t2, "Subject: trickle\r\n\r\ntrickle-data-marker\r\n.\r\n", "DATA");

	/* and afterwards too */
	good = session(env, NULL);
	smtpc_transaction(good, "good@example.com", rcpts, "Subject: ok\r\n\r\nafter\r\n", ids + 1);
	smtpc_close(good);
	expect_reception(env, ids[0], "good@example.com", "b@example.net");
	expect_reception(env, ids[1], "good@example.com", "b@example.net");
	expect_not_spooled(env, "slowloris-data-marker");
	expect_not_spooled(env, "trickle-data-marker");
	expect_no_reception_from(env, "slow@example.com");
	ck_assert_int_eq(wait_records(env, "Reception", 2), 2);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

/* ---- 2. many big messages at once ---------------------------------------- */

#define BIG_SESSIONS 200
#define BIG_SIZE (10 * 1000 * 1000) /* bytes of body per message */

/* The bound on the peak, in halves of the data in flight: a message is
 * held once while it streams in (1x plus allocator slack), so 1.5x means
 * "never twice".  Under AddressSanitizer (make check's second pass builds
 * the relay and this test with it) shadow memory, redzones and the freed-
 * memory quarantine add about 70%, measured; 2.5x still tells once from
 * twice there. */
#if defined(__SANITIZE_ADDRESS__)
#define BIG_BOUND_HALVES 5
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BIG_BOUND_HALVES 5
#endif
#endif
#ifndef BIG_BOUND_HALVES
#define BIG_BOUND_HALVES 3
#endif

struct big_conn {
	int fd;
	int state;                /* 0 banner, 1 commands out, 2 three replies, 3 body out, 4 final, 5 done */
	int replies;              /* replies still awaited in state 2 */
	char rbuf[1024];
	size_t rlen;
	char head[160];
	size_t head_len;
	const char *out[3];       /* what state 1 or 3 sends, in order */
	size_t out_len[3], seg, off;
	int code;                 /* the final reply */
	char text[200];
};

struct sampler {
	pid_t pgid;
	volatile int stop;
	long peak_kb;
	long samples;
	struct harness_rss peak[16]; /* each process's own peak */
	int npeak;
};

static void *sampler_main(void *arg)
{
	struct sampler *s = arg;
	while (!s->stop) {
		struct harness_rss per[16];
		int n = 0;
		long kb = harness_pgrp_rss_kb(s->pgid, per, 16, &n);
		if (kb > s->peak_kb)
			s->peak_kb = kb;
		for (int i = 0; i < n; i++) {
			int j = 0;
			while (j < s->npeak && s->peak[j].pid != per[i].pid)
				j++;
			if (j == s->npeak && s->npeak < 16)
				s->peak[s->npeak++] = per[i];
			else if (j < s->npeak && per[i].kb > s->peak[j].kb)
				s->peak[j].kb = per[i].kb;
		}
		s->samples++;
		harness_pause_ms(100);
	}
	return NULL;
}

/* One complete reply line out of c->rbuf: 1 and its code for a final line,
 * 0 for a continuation or nothing complete yet (*code -1). */
static int big_line(struct big_conn *c, int *code)
{
	char *nl = memchr(c->rbuf, '\n', c->rlen);
	*code = -1;
	if (!nl)
		return 0;
	size_t l = (size_t)(nl - c->rbuf) + 1;
	int final = l >= 5 && c->rbuf[3] != '-';
	if (final) {
		*code = atoi(c->rbuf);
		snprintf(c->text, sizeof c->text, "%.*s", (int)(l > 2 ? l - 2 : l), c->rbuf);
	}
	memmove(c->rbuf, c->rbuf + l, c->rlen - l);
	c->rlen -= l;
	return final;
}

/* kB of MemAvailable, or -1 */
static long mem_available_kb(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[200];
	long kb = -1;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "MemAvailable: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

START_TEST(test_many_big_messages)
{
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	ck_assert_msg(rl.rlim_cur > BIG_SESSIONS + 64, "RLIMIT_NOFILE %lu is too low", (unsigned long)rl.rlim_cur);
	struct harness_env *env = harness_env_new();
	/* the test spools 2 GB and holds it in memory at once (more under
	 * ASan): on a machine without that room it says so and stops */
	struct statvfs vfs;
	double need = (double)BIG_SESSIONS * BIG_SIZE;
	long avail_kb = mem_available_kb();
	if (statvfs(env->dir, &vfs) == 0 && (double)vfs.f_bavail * vfs.f_frsize < 2.5 * need) {
		printf("e2e_faults: 200 x 10 MB skipped: %.1f GB free where the spool goes, %.1f GB needed\n",
		       (double)vfs.f_bavail * vfs.f_frsize / 1e9, 2.5 * need / 1e9);
		harness_env_free(env);
		return;
	}
	if (avail_kb >= 0 && (double)avail_kb * 1024 < 3 * need) {
		printf("e2e_faults: 200 x 10 MB skipped: %.1f GB of memory available, %.1f GB needed\n",
		       (double)avail_kb / 1e6, 3 * need / 1e9);
		harness_env_free(env);
		return;
	}
	harness_start_default(env, "max_message_size = 16 * 1024 * 1024,");
	/* one shared body: 78-character lines, no leading dots */
	char *body = malloc(BIG_SIZE);
	for (size_t i = 0; i < BIG_SIZE; i++)
		body[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : (char)('a' + (i % 80) % 26);
	memcpy(body + BIG_SIZE - 2, "\r\n", 2);
	static const char cmds[] = "MAIL FROM:<big@example.com>\r\nRCPT TO:<big@example.net>\r\nDATA\r\n";
	static const char dot[] = ".\r\n";

	/* settle, then the idle figure */
	harness_pause_ms(1000);
	long base_kb = harness_pgrp_rss_kb(env->pgid, NULL, 0, NULL);
	struct sampler smp = { .pgid = env->pgid };
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, sampler_main, &smp), 0);
	double t0 = harness_now_s();

	struct big_conn *cs = calloc(BIG_SESSIONS, sizeof *cs);
	struct pollfd *pfd = calloc(BIG_SESSIONS, sizeof *pfd);
	for (int i = 0; i < BIG_SESSIONS; i++) {
		struct big_conn *c = &cs[i];
		c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)env->port) };
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		ck_assert_msg(c->fd >= 0 && connect(c->fd, (struct sockaddr *)&a, sizeof a) == 0,
			      "connection %d: %s", i, strerror(errno));
		fcntl(c->fd, F_SETFL, O_NONBLOCK);
		c->head_len = (size_t)snprintf(c->head, sizeof c->head, "Subject: big %d\r\nX-Big: big-marker-%03d\r\n\r\n", i, i);
		c->code = -1;
	}
	int done = 0;
	double end = harness_now_s() + 280;
	while (done < BIG_SESSIONS && harness_now_s() < end) {
		for (int i = 0; i < BIG_SESSIONS; i++) {
			pfd[i].fd = cs[i].state == 5 ? -1 : cs[i].fd;
			pfd[i].events = (cs[i].state == 1 || cs[i].state == 3) ? POLLOUT : POLLIN;
			pfd[i].revents = 0;
		}
		if (poll(pfd, BIG_SESSIONS, 1000) < 0 && errno != EINTR)
			ck_abort_msg("poll: %s", strerror(errno));
		for (int i = 0; i < BIG_SESSIONS; i++) {
			struct big_conn *c = &cs[i];
			if (!pfd[i].revents || c->state == 5)
				continue;
			if (c->state == 1 || c->state == 3) {
				while (c->seg < 3 && c->out[c->seg]) {
					ssize_t w = send(c->fd, c->out[c->seg] + c->off, c->out_len[c->seg] - c->off, MSG_NOSIGNAL);
					if (w < 0 && (errno == EAGAIN || errno == EINTR))
						break;
					if (w <= 0) { /* the server closed: read its last word */
						c->state = 4;
						break;
					}
					c->off += (size_t)w;
					if (c->off == c->out_len[c->seg]) {
						c->seg++;
						c->off = 0;
					}
				}
				if (c->state != 4 && (c->seg == 3 || !c->out[c->seg]))
					c->state = c->state == 1 ? 2 : 4;
				if (c->state == 2)
					c->replies = 3;
				continue;
			}
			ssize_t r = recv(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - 1 - c->rlen, 0);
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (r <= 0) {
				if (c->code < 0)
					snprintf(c->text, sizeof c->text, "connection closed in state %d", c->state);
				c->state = 5;
				done++;
				continue;
			}
			c->rlen += (size_t)r;
			while ((c->state == 0 || c->state == 2 || c->state == 4) && memchr(c->rbuf, '\n', c->rlen)) {
				int code;
				if (!big_line(c, &code))
					continue;
				if (c->state == 0) {
					c->out[0] = cmds;
					c->out_len[0] = sizeof cmds - 1;
					c->out[1] = NULL;
					c->seg = c->off = 0;
					if (code != 220)
						c->code = code;
					c->state = code == 220 ? 1 : 5;
				} else if (c->state == 2) {
					int want = c->replies == 1 ? 354 : 250;
					if (code != want) {
						c->code = code;
						c->state = 5;
					} else if (--c->replies == 0) {
						c->out[0] = c->head;
						c->out_len[0] = c->head_len;
						c->out[1] = body;
						c->out_len[1] = BIG_SIZE;
						c->out[2] = dot;
						c->out_len[2] = sizeof dot - 1;
						c->seg = c->off = 0;
						c->state = 3;
					}
				} else {
					c->code = code;
					c->state = 5;
				}
				if (c->state == 5) {
					(void)!send(c->fd, "QUIT\r\n", 6, MSG_NOSIGNAL);
					done++;
				}
			}
		}
	}
	double secs = harness_now_s() - t0;
	smp.stop = 1;
	pthread_join(th, NULL);
	free(body);

	int ok = 0, soft = 0;
	char first_bad[300] = "";
	char (*ids)[33] = calloc(BIG_SESSIONS, sizeof *ids);
	for (int i = 0; i < BIG_SESSIONS; i++) {
		struct big_conn *c = &cs[i];
		if (c->code == 250 && sscanf(c->text, "250 OK ids=%32s", ids[ok]) == 1)
			ok++;
		else if (c->code >= 400 && c->code < 500)
			soft++;
		else if (!first_bad[0])
			snprintf(first_bad, sizeof first_bad, "session %d: state %d, reply %d '%s'", i, c->state,
				 c->code, c->text);
		close(c->fd);
	}
	printf("e2e_faults: %d sessions x %d bytes: %d got 250, %d a 4xx, in %.1f s; peak RSS of the"
	       " kumod process tree %.1f MB (idle %.1f MB, %ld samples every 100 ms)\n", BIG_SESSIONS, BIG_SIZE,
	       ok, soft, secs, smp.peak_kb / 1024.0, base_kb / 1024.0, smp.samples);
	for (int i = 0; i < smp.npeak; i++)
		printf("e2e_faults:   %d %s peak %.1f MB\n", (int)smp.peak[i].pid, smp.peak[i].comm,
		       smp.peak[i].kb / 1024.0);
	fflush(stdout);
	ck_assert_msg(done == BIG_SESSIONS, "only %d of %d sessions finished within 280 s", done, BIG_SESSIONS);
	ck_assert_msg(!first_bad[0], "a session ended without a 250 or a 4xx: %s", first_bad);
	ck_assert_msg(ok + soft == BIG_SESSIONS, "%d 250s and %d 4xx of %d", ok, soft, BIG_SESSIONS);
	/* each message is held once while it streams in and written out of
	 * that same memory: never twice the data in flight (see BIG_BOUND_HALVES) */
	long data_kb = (long)BIG_SESSIONS * (BIG_SIZE / 1024);
	ck_assert_msg(smp.peak_kb < base_kb + data_kb * BIG_BOUND_HALVES / 2, "peak RSS %ld kB for %ld kB of"
		      " messages (idle %ld kB; bound %d/2 of the data): the data is held more than once",
		      smp.peak_kb, data_kb, base_kb, BIG_BOUND_HALVES);
	/* every 250 is a whole message in the spool */
	for (int i = 0; i < ok; i++) {
		struct harness_spooled sp;
		int found = harness_spool_lookup(env, ids[i], 0, &sp);
		ck_assert_msg(found && sp.dlen > BIG_SIZE, "message %s: %s, %zu bytes", ids[i],
			      found ? "spooled" : "not in the spool", sp.dlen);
		harness_spooled_free(&sp);
	}
	free(ids);
	free(cs);
	free(pfd);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

/* ---- 3. kill -9 of a worker mid-DATA ------------------------------------ */

static int smtpd_pids(struct harness_env *env, pid_t *pids)
{
	return harness_children(env->pid, "kumo-smtpd", pids, 16);
}

/* Waits up to 10 s for kumod to have n children named name (they open no
 * port of their own: the listeners are kumod's, so the port opens before
 * the helpers have exec'd); returns how many it has, pids in pids[16]. */
static int wait_kids(struct harness_env *env, const char *name, int n, pid_t *pids)
{
	return harness_wait_children(env->pid, name, n, pids, 16, 10);
}

START_TEST(test_kill_worker_mid_data)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, NULL);
	pid_t w[16];
	ck_assert_int_eq(wait_kids(env, "kumo-smtpd", 2, w), 2);
	double end;
	/* a few sessions, to find one on each worker */
	struct smtpc *cs[8];
	pid_t owner[8];
	for (int i = 0; i < 8; i++) {
		cs[i] = session(env, NULL);
		owner[i] = harness_socket_owner(w, 2, env->port, cs[i]->local_port);
		ck_assert_msg(owner[i] == w[0] || owner[i] == w[1], "no worker (%d, %d) holds connection %d",
			      (int)w[0], (int)w[1], i);
	}
	struct smtpc *victim = cs[0], *other = NULL;
	pid_t dead = owner[0];
	for (int i = 1; i < 8; i++)
		if (owner[i] != dead && !other)
			other = cs[i];
	smtpc_chat(victim, "MAIL FROM:<victim@example.com>", "250 OK <victim@example.com>");
	smtpc_chat(victim, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(victim, "DATA", GO_AHEAD);
	smtpc_sendf(victim, "Subject: partial\r\n\r\npartial-marker first half\r\n");
	if (other) { /* a transaction on the other worker, half done */
		smtpc_chat(other, "MAIL FROM:<other@example.com>", "250 OK <other@example.com>");
		smtpc_chat(other, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
		smtpc_chat(other, "DATA", GO_AHEAD);
		smtpc_sendf(other, "Subject: other\r\n\r\nother-marker first half\r\n");
	}
	harness_pause_ms(500); /* let the worker read what was sent */
	ck_assert_int_eq(kill(dead, SIGKILL), 0);

	/* the client sees the connection go, and no reply */
	char *t = NULL;
	int code = smtpc_read_reply(victim, &t, SMTPC_TIMEOUT_MS);
	ck_assert_msg(code == SMTPC_EOF || code == SMTPC_ERR, "after kill -9 of its worker the client got %d"
		      " '%s' (want the connection closed without a reply)", code, t ? t : "");
	printf("e2e_faults: mid-DATA, kill -9 of kumo-smtpd[%d]: the client sees %s\n", (int)dead,
	       code == SMTPC_EOF ? "EOF" : "a connection reset");
	free(t);
	/* the end of the message goes nowhere */
	smtpc_try_send(victim, "second half\r\n.\r\n", 16);
	code = smtpc_read_reply(victim, &t, 2000);
	ck_assert_msg(code < 200, "after the final dot on a dead connection: %d '%s'", code, t ? t : "");
	free(t);
	smtpc_close(victim);

	/* the worker is replaced */
	pid_t now[16];
	int n = 0, fresh = 0;
	end = harness_now_s() + 30;
	do {
		harness_pause_ms(100);
		n = smtpd_pids(env, now);
		fresh = 0;
		for (int i = 0; i < n && i < 16; i++)
			fresh += now[i] != w[0] && now[i] != w[1];
	} while (!(n == 2 && fresh == 1) && harness_now_s() < end);
	char desc[512];
	harness_children_desc(env->pid, desc, sizeof desc);
	ck_assert_msg(n == 2 && fresh == 1 && now[0] != dead && now[1] != dead, "kumod did not replace"
		      " kumo-smtpd[%d] within 30 s; its children: %s", (int)dead, desc);

	/* the session on the other worker did not notice */
	char ids[2][33];
	if (other) {
		smtpc_sendf(other, "other second half\r\n.\r\n");
		smtpc_expect_ids(other, 1, ids);
		expect_reception(env, ids[0], "other@example.com", "b@example.net");
	} else {
		printf("e2e_faults: all 8 sessions landed on worker %d; the survivor check was skipped\n", (int)dead);
	}
	for (int i = 1; i < 8; i++)
		smtpc_close(cs[i]);
	/* a new session works */
	end = harness_now_s() + 20;
	while (!try_transaction(env, "after-kill", ids[1]) && harness_now_s() < end)
		harness_pause_ms(200);
	struct smtpc *c = session(env, NULL);
	const char *rcpts[] = { "b@example.net", NULL };
	smtpc_transaction(c, "new@example.com", rcpts, "Subject: n\r\n\r\nnew session\r\n", ids + 1);
	smtpc_close(c);
	expect_reception(env, ids[1], "new@example.com", "b@example.net");
	/* nothing of the partial message, anywhere */
	expect_not_spooled(env, "partial-marker");
	expect_no_reception_from(env, "victim@example.com");
	expect_dir_empty(env, "spool/data/new");
	expect_dir_empty(env, "spool/meta/new");
	/* not after a restart either */
	harness_stop(env, NULL);
	harness_start(env);
	ck_assert_msg(harness_output_wait_regex(env, "recovered [0-9]+ message", 10), "no recovery line\n%s",
		      harness_context(env));
	expect_not_spooled(env, "partial-marker");
	expect_dir_empty(env, "spool/data/new");
	harness_stop(env, NULL);
	expect_no_reception_from(env, "victim@example.com");
	harness_env_free(env);
}
END_TEST

/* ---- 4. kill -9 of policyd while sessions wait on it --------------------- */

#define SLOW_POLICY HARNESS_POLICY_TEMPLATE                                     \
	"kumo.on('smtp_server_mail_from', function(sender, conn_meta)\n"         \
	"  if sender.user == 'slow' then os.execute('sleep 3') end\n"            \
	"end)\n"

START_TEST(test_kill_policyd_while_waiting)
{
	struct harness_env *env = harness_env_new();
	harness_write_policy(env, SLOW_POLICY, NULL);
	harness_start(env);
	pid_t pol[16], w[16], w2[16];
	ck_assert_int_eq(wait_kids(env, "kumo-policyd", 1, pol), 1);
	ck_assert_int_eq(wait_kids(env, "kumo-smtpd", 2, w), 2);
	double end;
	/* a session that is idle across the restart */
	struct smtpc *idle = session(env, NULL);
	struct smtpc *cs[4];
	for (int i = 0; i < 4; i++) {
		cs[i] = session(env, NULL);
		smtpc_cmd(cs[i], "MAIL FROM:<slow@example.com>");
	}
	harness_pause_ms(800); /* they are waiting on the handler now */
	ck_assert_int_eq(kill(pol[0], SIGKILL), 0);
	for (int i = 0; i < 4; i++) {
		char *t = NULL;
		int code = smtpc_read_reply(cs[i], &t, SMTPC_TIMEOUT_MS);
		ck_assert_msg(code >= 400 && code < 500, "session %d waiting on policyd when it was killed: got"
			      " %d '%s' (want a 4xx)\n%s", i, code, t ? t : "", harness_context(env));
		if (i == 0)
			printf("e2e_faults: MAIL FROM waiting on policyd when it was killed: %s\n", t);
		free(t);
		smtpc_close(cs[i]);
	}
	/* replaced within seconds */
	pid_t now[4];
	int n = 0;
	end = harness_now_s() + 30;
	while (!((n = harness_children(env->pid, "kumo-policyd", now, 4)) == 1 && now[0] != pol[0]) &&
	       harness_now_s() < end)
		harness_pause_ms(100);
	ck_assert_msg(n == 1 && now[0] != pol[0], "kumo-policyd[%d] not replaced within 30 s\n%s", (int)pol[0],
		      harness_context(env));
	/* the workers lived through it */
	ck_assert_int_eq(smtpd_pids(env, w2), 2);
	ck_assert_msg((w2[0] == w[0] || w2[0] == w[1]) && (w2[1] == w[0] || w2[1] == w[1]),
		      "kumo-smtpd workers changed (%d %d -> %d %d) when policyd died", (int)w[0], (int)w[1],
		      (int)w2[0], (int)w2[1]);
	/* new sessions work, and so does the one that idled through it */
	char ids[2][33];
	end = harness_now_s() + 20;
	int ok = 0;
	while (!(ok = try_transaction(env, "after-policyd", ids[0])) && harness_now_s() < end)
		harness_pause_ms(200);
	ck_assert_msg(ok, "no transaction succeeded within 20 s of the new policyd\n%s", harness_context(env));
	const char *rcpts[] = { "b@example.net", NULL };
	smtpc_transaction(idle, "fast@example.com", rcpts, "Subject: i\r\n\r\nidle through it\r\n", ids + 1);
	smtpc_close(idle);
	/* and the slow handler again answers 250, after its sleep */
	struct smtpc *c = session(env, NULL);
	smtpc_chat(c, "MAIL FROM:<slow@example.com>", "250 OK <slow@example.com>");
	smtpc_close(c);
	expect_no_reception_from(env, "slow@example.com");
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

/* ---- 5. kill -9 of kumod itself ------------------------------------------ */

static int alive(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t r = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (r <= 0)
		return 0;
	buf[r] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

START_TEST(test_kill9_master_only)
{
	struct harness_env *env = harness_env_new();
	int sport = 0;
	/* the first five deliveries are deferred: some messages are still
	 * queued, some delivered, when kumod dies */
	pid_t sink = sink_start(env, &sport, "DOT:5:451 4.3.0 try later");
	relay_policy(env, sport);
	harness_start(env);
	struct smtpc *c = session(env, NULL);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	enum { N = 20 };
	char ids[N + 1][33];
	for (int i = 0; i < N; i++) {
		char body[100];
		snprintf(body, sizeof body, "Subject: n%d\r\n\r\nmaster-marker-%03d\r\n", i, i);
		smtpc_transaction(c, "sender@example.com", rcpts, body, ids + i);
	}
	smtpc_close(c);
	pid_t kids[16];
	int nk = 0;
	const char *names[] = { "kumo-smtpd", "kumo-qmgr", "kumo-policyd" };
	const int counts[] = { 2, 1, 1 };
	for (int k = 0; k < 3; k++) {
		pid_t p[16];
		int n = wait_kids(env, names[k], counts[k], p);
		ck_assert_int_eq(n, counts[k]);
		memcpy(kids + nk, p, (size_t)n * sizeof *p);
		nk += n;
	}
	char kdesc[512];
	harness_children_desc(env->pid, kdesc, sizeof kdesc);
	pid_t pgid = env->pgid;

	ck_assert_int_eq(kill(env->pid, SIGKILL), 0);
	int st = 0;
	ck_assert(harness_wait_exit(env, 10, &st));
	/* the children learn of it (parent-death signal: SIGTERM) and drain:
	 * none is left serving headless, and the port closes */
	int live = nk;
	for (int t = 0; t < 200 && live; t++) {
		harness_pause_ms(100);
		live = 0;
		for (int i = 0; i < nk; i++)
			live += alive(kids[i]);
	}
	char pdesc[512];
	harness_pgrp_live(pgid, pdesc, sizeof pdesc);
	printf("e2e_faults: kill -9 of kumod: children were [%s]; %d of %d still run: [%s]; port %d %s\n", kdesc,
	       live, nk, pdesc, env->port, harness_port_open(env->port) ? "still accepts connections" : "is closed");
	fflush(stdout);
	ck_assert_msg(live == 0, "%d children of the killed kumod still run after 20 s: [%s]", live, pdesc);
	ck_assert_msg(!harness_port_open(env->port), "the port still accepts connections without kumod");
	int extra = 0;
	/* what the harness does on a restart: kill what is left of the group */
	harness_kill9(env);
	ck_assert_msg(harness_pgrp_live(pgid, pdesc, sizeof pdesc) == 0, "group %d still has %s", (int)pgid, pdesc);
	harness_start(env);
	size_t want = N + (size_t)extra;
	size_t got = sink_wait(env, want, 60);
	for (int i = 0; i < N; i++) {
		char m[40];
		snprintf(m, sizeof m, "master-marker-%03d", i);
		ck_assert_msg(sink_count(env, m) >= 1, "acknowledged message %d (%s) was lost after kill -9 of"
			      " kumod and a restart (%zu in the sink)\n%s", i, ids[i], got, expect_spool_listing(env));
	}
	if (extra)
		ck_assert_msg(sink_count(env, "master-marker-orphan") >= 1, "the message the orphans acknowledged"
			      " (%s) was lost", ids[N]);
	printf("e2e_faults: after the restart the sink holds %zu messages for %zu acknowledged\n",
	       sink_count(env, NULL), want);
	harness_stop(env, NULL);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

/* ---- 6. full disk -------------------------------------------------------- */

/* A 1 MB tmpfs for the spool, mounted by the runner for the tcase (so a
 * failed test cannot leave it mounted). */
static char small_fs[256];
static int small_fs_mounted;
static char small_fs_why[256];

static void small_fs_setup(void)
{
	char tmpl[] = "/tmp/kumo-e2e-enospc.XXXXXX";
	if (!mkdtemp(tmpl)) {
		snprintf(small_fs_why, sizeof small_fs_why, "mkdtemp: %s", strerror(errno));
		return;
	}
	snprintf(small_fs, sizeof small_fs, "%s", tmpl);
	chmod(small_fs, 0755);
	if (mount("tmpfs", small_fs, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=0755") == 0)
		small_fs_mounted = 1;
	else
		snprintf(small_fs_why, sizeof small_fs_why, "mount -t tmpfs: %s", strerror(errno));
}

static void small_fs_teardown(void)
{
	if (small_fs_mounted && umount2(small_fs, MNT_DETACH) != 0)
		fprintf(stderr, "e2e_faults: umount %s: %s\n", small_fs, strerror(errno));
	small_fs_mounted = 0;
	if (small_fs[0])
		rmdir(small_fs);
}

#define SMALL_FS_POLICY                                                          \
	"local kumo = require 'kumo'\n"                                        \
	"kumo.on('init', function()\n"                                         \
	"  kumo.define_spool { name = 'data', path = '%s/data' }\n"            \
	"  kumo.define_spool { name = 'meta', path = '%s/meta' }\n"            \
	"  kumo.configure_local_logs { log_dir = '@DIR@/logs' }\n"             \
	"  kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' } }\n" \
	"  kumo.start_esmtp_listener { listen = '127.0.0.1:@PORT@',"           \
	" hostname = 'mx.test.example' }\n"                                    \
	"end)\n"

/* One transaction on c whose body is `size` bytes with marker in it;
 * returns the final reply's code and text. */
static int send_sized(struct smtpc *c, const char *sender, const char *marker, size_t size, char **text)
{
	char cmd[200];
	snprintf(cmd, sizeof cmd, "MAIL FROM:<%s>", sender);
	smtpc_cmd(c, "%s", cmd);
	free(smtpc_expect_code(c, 250));
	smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
	smtpc_chat(c, "DATA", GO_AHEAD);
	smtpc_sendf(c, "Subject: %s\r\n\r\n%s\r\n", marker, marker);
	char line[82];
	memset(line, 'x', 78);
	memcpy(line + 78, "\r\n", 3);
	for (size_t n = 0; n < size; n += 80)
		smtpc_send(c, line, 80);
	smtpc_send(c, ".\r\n", 3);
	return smtpc_read_reply(c, text, SMTPC_TIMEOUT_MS);
}

static void expect_no_storage(struct smtpc *c, int code, const char *text, const char *what)
{
	int ok = (code == 452 && harness_regex_match(text, "^452 4\\.3\\.1 .*insufficient system storage$", 0)) ||
		 (code == 421 && harness_regex_match(text, "^421 4\\.3\\.2 .*disk is too full", 0));
	if (!ok) {
		char *tr = smtpc_transcript(c, 1500);
		ck_abort_msg("%s on a full spool: want 452 4.3.1 ... insufficient system storage or 421 4.3.2 ..."
			     " disk is too full; got %d '%s'\n%s", what, code, text ? text : "", tr);
	}
	printf("e2e_faults: %s: %s\n", what, text);
	fflush(stdout);
}

START_TEST(test_full_disk)
{
	if (!small_fs_mounted) {
		printf("e2e_faults: test_full_disk skipped: no small file system (%s)\n", small_fs_why);
		fflush(stdout);
		return;
	}
	struct harness_env *env = harness_env_new();
	char text[2048];
	snprintf(text, sizeof text, SMALL_FS_POLICY, small_fs, small_fs);
	harness_write_policy(env, text, NULL);
	harness_start(env);
	struct smtpc *c = session(env, NULL);
	char *t = NULL;
	int code = send_sized(c, "ok1@example.com", "fits-marker", 1000, &t);
	ck_assert_msg(code == 250, "a small message on an empty spool: %d %s", code, t);
	free(t);
	/* bigger than the whole file system */
	code = send_sized(c, "big@example.com", "toobig-marker", 1536 * 1024, &t);
	expect_no_storage(c, code, t, "a 1.5 MB message on a 1 MB spool");
	free(t);
	smtpc_chat(c, "NOOP", "250 the goggles do nothing");
	/* fill what is left, then a small one */
	char *filler = NULL;
	ck_assert(asprintf(&filler, "%s/filler", small_fs) > 0);
	int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	static char block[16384];
	while (write(fd, block, sizeof block) > 0)
		;
	ck_assert_int_eq(errno, ENOSPC);
	while (write(fd, block, 512) > 0)
		;
	close(fd);
	/* Segments are appended to: a small message may still fit in a page
	 * the spool already holds, and is then stored (and must be there).
	 * Within a few messages the space runs out. */
	char marker[64];
	int fitted = 0;
	for (;;) {
		snprintf(marker, sizeof marker, "nospace-marker-%d", fitted);
		code = send_sized(c, "small@example.com", marker, 100, &t);
		if (code != 250 || fitted == 16)
			break;
		const char *ids = strstr(t, "ids=");
		ck_assert_msg(ids, "250 without ids: %s", t);
		struct harness_spooled sp;
		char sd[300], sm[300];
		snprintf(sd, sizeof sd, "%s/data", small_fs);
		snprintf(sm, sizeof sm, "%s/meta", small_fs);
		ck_assert_msg(harness_spool_lookup_in(sd, sm, ids + 4, 1, &sp) &&
			      harness_contains(sp.data, sp.dlen, marker),
			      "message %s was accepted on a full spool but is not in it", ids + 4);
		harness_spooled_free(&sp);
		free(t);
		fitted++;
	}
	expect_no_storage(c, code, t, "a small message");
	free(t);
	ck_assert_msg(harness_output_wait_regex(env, "not stored: .*No space left on device", 5),
		      "kumod did not log the ENOSPC\n%s", harness_context(env));
	/* room again: it accepts again */
	unlink(filler);
	free(filler);
	code = send_sized(c, "ok2@example.com", "again-marker", 1000, &t);
	ck_assert_msg(code == 250, "after space came back: %d %s", code, t);
	free(t);
	smtpc_chat(c, "QUIT", "221 So long, and thanks for all the fish!");
	smtpc_close(c);
	/* nothing of the refused messages stayed behind */
	char *grep = NULL;
	ck_assert(asprintf(&grep, "grep -rlE -D skip 'toobig-marker|%s|big@example.com'"
			   " '%s' >/dev/null 2>&1", marker, small_fs) > 0);
	ck_assert_msg(system(grep) != 0, "a refused message left bytes in the spool %s", small_fs);
	free(grep);
	DIR *d;
	const char *news[] = { "data/new", "meta/new" };
	for (int i = 0; i < 2; i++) {
		char p[400];
		snprintf(p, sizeof p, "%s/%s", small_fs, news[i]);
		d = opendir(p);
		ck_assert_ptr_nonnull(d);
		struct dirent *e;
		while ((e = readdir(d)))
			ck_assert_msg(e->d_name[0] == '.', "leftover %s/%s", p, e->d_name);
		closedir(d);
	}
	expect_no_reception_from(env, "big@example.com");
	ck_assert_int_eq(wait_records(env, "Reception", 2 + fitted), 2 + fitted);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

/* ---- 7. corrupted spool --------------------------------------------------- */

/* Flips bits (mask) of the byte at off of path, in place. */
static void flip_byte(const char *path, unsigned long long off, unsigned char mask)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	ck_assert_msg(fd >= 0, "open %s", path);
	unsigned char b;
	ck_assert_int_eq(pread(fd, &b, 1, (off_t)off), 1);
	b ^= mask;
	ck_assert_int_eq(pwrite(fd, &b, 1, (off_t)off), 1);
	close(fd);
}

START_TEST(test_corrupted_spool)
{
	struct harness_env *env = harness_env_new();
	/* first run: no route, so the messages stay in the spool */
	harness_start_default(env, NULL);
	struct smtpc *c = session(env, NULL);
	const char *rcpts[] = { "rcpt@dest.example", NULL };
	char ids[4][33];
	for (int i = 0; i < 4; i++) {
		char body[100];
		snprintf(body, sizeof body, "Subject: c%d\r\n\r\ncorrupt-marker-%d\r\n", i, i);
		smtpc_transaction(c, "sender@example.com", rcpts, body, ids + i);
	}
	smtpc_close(c);
	int killed = 0;
	harness_stop(env, &killed);
	ck_assert(!killed);
	/* 0: a byte of its data in the data segment flipped; 1: a bit of its
	 * meta text in the meta segment flipped */
	struct harness_spooled d0, m1;
	ck_assert_msg(harness_spool_lookup(env, ids[0], 0, &d0) && harness_spool_lookup(env, ids[1], 0, &m1),
		      "messages missing from the spool\n%s", expect_spool_listing(env));
	flip_byte(d0.data_path, d0.data_off + d0.dlen / 2, 0x20);
	flip_byte(m1.meta_path, m1.meta_off + m1.mlen / 3, 0x04);
	harness_spooled_free(&d0);
	harness_spooled_free(&m1);

	/* second run: a route to the sink */
	int sport = 0;
	pid_t sink = sink_start(env, &sport, NULL);
	relay_policy(env, sport);
	harness_start(env);
	for (int i = 0; i < 2; i++) {
		char re[120];
		snprintf(re, sizeof re, "message %.32s quarantined", ids[i]);
		ck_assert_msg(harness_output_wait_regex(env, re, 10), "no warning /%s/\n%s", re, harness_context(env));
	}
	ck_assert_msg(harness_output_wait_regex(env, "recovered 2 messages \\(2 quarantined", 10),
		      "want 2 recovered and 2 quarantined\n%s", harness_context(env));
	for (int i = 0; i < 2; i++) {
		const char *sp[] = { "spool/data/quarantine", "spool/meta/quarantine" };
		for (int k = 0; k < 2; k++) {
			char rel[200];
			snprintf(rel, sizeof rel, "%s/%s", sp[k], ids[i]);
			char *p = harness_path(env, rel);
			ck_assert_msg(access(p, F_OK) == 0, "message %s not in %s\n%s", ids[i], sp[k],
				      expect_spool_listing(env));
			free(p);
		}
	}
	size_t got = sink_wait(env, 2, 30);
	ck_assert_msg(got == 2, "%zu messages delivered, want the 2 intact ones", got);
	ck_assert_int_eq(sink_count(env, "corrupt-marker-2"), 1);
	ck_assert_int_eq(sink_count(env, "corrupt-marker-3"), 1);
	harness_pause_ms(2000); /* a late delivery of a damaged one would show now */
	ck_assert_int_eq(sink_count(env, NULL), 2);
	for (int i = 2; i < 4; i++) {
		cJSON *r = harness_log_wait(env, "Delivery", ids[i]);
		ck_assert_msg(r != NULL, "no Delivery record for %s", ids[i]);
		cJSON_Delete(r);
	}
	harness_stop(env, NULL);
	harness_tool_stop(sink);
	harness_env_free(env);
}
END_TEST

/* ---- 8. open relay -------------------------------------------------------- */

#define RELAY_TO_POLICY HARNESS_POLICY_TEMPLATE                                  \
	"kumo.on('get_listener_domain', function(domain, listener, conn_meta)\n" \
	"  if domain == 'allowed.example' then\n"                                \
	"    return kumo.make_listener_domain { relay_to = true }\n"             \
	"  end\n"                                                                \
	"end)\n"

START_TEST(test_open_relay)
{
	struct harness_env *env = harness_env_new();
	harness_write_policy(env, RELAY_TO_POLICY, NULL);
	harness_start(env);
	struct smtpc *c = session(env, "127.0.0.2");
	char deny[200];
	snprintf(deny, sizeof deny, "550 5.7.1 relaying not permitted for 127.0.0.2:%d", c->local_port);
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<b@allowed.example>", "250 OK <b@allowed.example>");
	const char *refused[] = {
		"RCPT TO:<c@other.example>",
		"RCPT TO:<c@sub.allowed.example>",
		"RCPT TO:<c@allowed.example.other.example>",
		"RCPT TO:<c@allowed.exampl>",
		"RCPT TO:<postmaster@other.example>",
	};
	for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
		smtpc_chat(c, refused[i], deny);
	/* a source route naming the allowed domain must not carry mail elsewhere */
	smtpc_cmd(c, "RCPT TO:<@allowed.example:c@other.example>");
	char *t = NULL;
	int code = smtpc_read_reply(c, &t, SMTPC_TIMEOUT_MS);
	ck_assert_msg(code >= 500 && code < 600, "a source route via the relay_to domain: %d '%s'", code, t ? t : "");
	printf("e2e_faults: RCPT TO:<@allowed.example:c@other.example> from 127.0.0.2: %s\n", t);
	free(t);
	char ids[2][33];
	smtpc_chat(c, "DATA", GO_AHEAD);
	smtpc_sendf(c, "Subject: r\r\n\r\nrelay-marker\r\n.\r\n");
	smtpc_expect_ids(c, 1, ids);
	const char *meta[] = { "\"recipient\":\"b@allowed.example\"", NULL };
	free(expect_spooled(env, ids[0], "relay-marker", meta, NULL));
	expect_not_spooled(env, "other.example");
	/* the sender's domain being a relay_to domain opens nothing */
	smtpc_chat(c, "MAIL FROM:<x@allowed.example>", "250 OK <x@allowed.example>");
	smtpc_chat(c, "RCPT TO:<c@other.example>", deny);
	smtpc_chat(c, "DATA", "503 5.5.0 RCPT TO must be issued first");
	smtpc_chat(c, "RSET", "250 Reset state");
	smtpc_chat(c, "QUIT", "221 So long, and thanks for all the fish!");
	smtpc_close(c);
	/* the default relay_hosts still lets 127.0.0.1 relay anywhere */
	c = session(env, NULL);
	smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
	smtpc_chat(c, "RCPT TO:<c@other.example>", "250 OK <c@other.example>");
	smtpc_close(c);
	ck_assert_int_ge(wait_records(env, "Rejection", 7), 7);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

/* Clients that send a message and leave without waiting for its reply:
 * the spool writer sends the 250 on the socket itself right after the
 * commit, so a socket closed meanwhile must stay open (its number not
 * reused by the next session) until the writer is done with it.  Every
 * message is stored and logged all the same, and the sessions that follow,
 * on descriptors just freed, get their own replies. */
START_TEST(test_client_leaves_during_commit)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, NULL);
	enum { LEAVERS = 30 };
	for (int i = 0; i < LEAVERS; i++) {
		struct smtpc *c = session(env, NULL);
		smtpc_sendf(c, "MAIL FROM:<leaver%d@example.com>\r\n", i);
		free(smtpc_expect_code(c, 250));
		smtpc_chat(c, "RCPT TO:<x@example.com>", "250 OK <x@example.com>");
		smtpc_chat(c, "DATA", GO_AHEAD);
		smtpc_sendf(c, "Subject: leaving\r\n\r\nleaver %d\r\n.\r\n", i);
		smtpc_close(c);  /* at once: the reply is not read */
		/* a session on the descriptor just freed, now or a little later */
		if (i % 3 == 0) {
			c = session(env, NULL);
			char ids[1][33];
			smtpc_chat(c, "MAIL FROM:<stayer@example.com>", "250 OK <stayer@example.com>");
			smtpc_chat(c, "RCPT TO:<x@example.com>", "250 OK <x@example.com>");
			smtpc_chat(c, "DATA", GO_AHEAD);
			smtpc_sendf(c, "Subject: staying\r\n\r\nstayer %d\r\n.\r\n", i);
			smtpc_expect_ids(c, 1, ids);
			smtpc_chat(c, "QUIT", "221 So long, and thanks for all the fish!");
			smtpc_close(c);
		}
	}
	int want = LEAVERS + (LEAVERS + 2) / 3;
	ck_assert_int_eq(wait_records(env, "Reception", want), want);
	char *ids = harness_spool_ids(env);
	int n = -1;
	ck_assert_msg(sscanf(ids, "%d message", &n) == 1 && n == want, "want %d messages: %s", want, ids);
	free(ids);
	char *out = harness_output(env);
	ck_assert_msg(!strstr(out, "Bad file descriptor") && !strstr(out, "not stored"), "kumod output:\n%s", out);
	int gone = 0;
	for (const char *p = out; (p = strstr(p, "stored after the client disconnected")); p++)
		gone++;
	printf("e2e_faults: %d clients left before the reply; %d of them before their commit returned\n",
	       LEAVERS, gone);
	free(out);
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

/* ---- 9. files and privileges ------------------------------------------------ */

static void expect_private(struct harness_env *env, const char *rel, uid_t owner, int *checked)
{
	char *base = harness_path(env, rel);
	DIR *d = opendir(base);
	struct stat st;
	ck_assert_msg(stat(base, &st) == 0, "%s: %s", base, strerror(errno));
	ck_assert_msg((st.st_mode & 0077) == 0 && st.st_uid == owner, "%s: mode %04o owner %u (want no"
		      " access for group or others, owner %u)", base, (unsigned)(st.st_mode & 07777),
		      (unsigned)st.st_uid, (unsigned)owner);
	(*checked)++;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char sub[600];
		snprintf(sub, sizeof sub, "%s/%s", rel, e->d_name);
		char *p = harness_path(env, sub);
		ck_assert_int_eq(lstat(p, &st), 0);
		if (S_ISDIR(st.st_mode))
			expect_private(env, sub, owner, checked);
		else {
			ck_assert_msg((st.st_mode & 0077) == 0 && st.st_uid == owner, "%s: mode %04o owner %u (want"
				      " no access for group or others, owner %u)", p, (unsigned)(st.st_mode & 07777),
				      (unsigned)st.st_uid, (unsigned)owner);
			(*checked)++;
		}
		free(p);
	}
	if (d)
		closedir(d);
	free(base);
}

START_TEST(test_files_and_privileges)
{
	struct harness_env *env = harness_env_new();
	harness_start_default(env, NULL);
	struct smtpc *c = session(env, NULL);
	const char *rcpts[] = { "b@example.net", NULL };
	char ids[1][33];
	smtpc_transaction(c, "a@example.com", rcpts, "Subject: p\r\n\r\nprivate\r\n", ids);
	smtpc_close(c);
	expect_reception(env, ids[0], "a@example.com", "b@example.net");
	if (geteuid() != 0) {
		printf("e2e_faults: test_files_and_privileges: not root, only the modes are checked\n");
	}
	const char *user = getenv("KUMO_E2E_USER");
	struct passwd *pw = getpwnam(user && *user ? user : "nobody");
	ck_assert_ptr_nonnull(pw);
	uid_t owner = geteuid() == 0 ? pw->pw_uid : geteuid();
	int checked = 0;
	expect_private(env, "spool/data", owner, &checked);
	expect_private(env, "spool/meta", owner, &checked);
	expect_private(env, "logs", owner, &checked);
	ck_assert_int_ge(checked, 10); /* dirs, new/, quarantine/, lock, a message, a log file */
	char *sock = harness_path(env, "spool/kumod.sock");
	struct stat st;
	ck_assert_msg(stat(sock, &st) == 0 && S_ISSOCK(st.st_mode), "no control socket at %s", sock);
	ck_assert_msg((st.st_mode & 0077) == 0, "%s: mode %04o", sock, (unsigned)(st.st_mode & 07777));
	free(sock);
	if (geteuid() == 0) {
		pid_t pids[16];
		int n = 0;
		const char *names[] = { "kumo-smtpd", "kumo-qmgr", "kumo-policyd" };
		const int counts[] = { 2, 1, 1 };
		for (int k = 0; k < 3; k++) {
			pid_t p[16];
			int got = wait_kids(env, names[k], counts[k], p);
			ck_assert_msg(got == counts[k], "%d %s, want %d", got, names[k], counts[k]);
			memcpy(pids + n, p, (size_t)got * sizeof *p);
			n += got;
		}
		pids[n++] = env->pid;
		for (int i = 0; i < n; i++) {
			unsigned u[4], g[4];
			ck_assert(harness_proc_ids(pids[i], "Uid", u) && harness_proc_ids(pids[i], "Gid", g));
			for (int k = 0; k < 4; k++)
				ck_assert_msg(u[k] == pw->pw_uid && g[k] == pw->pw_gid, "pid %d runs as uid %u %u %u %u"
					      " gid %u %u %u %u (want %u/%u everywhere)", (int)pids[i], u[0], u[1], u[2],
					      u[3], g[0], g[1], g[2], g[3], (unsigned)pw->pw_uid, (unsigned)pw->pw_gid);
			char path[64], line[256];
			snprintf(path, sizeof path, "/proc/%d/status", (int)pids[i]);
			FILE *f = fopen(path, "r");
			ck_assert_ptr_nonnull(f);
			while (fgets(line, sizeof line, f)) {
				unsigned long long caps = 0;
				if (sscanf(line, "CapEff: %llx", &caps) == 1 || sscanf(line, "CapPrm: %llx", &caps) == 1)
					ck_assert_msg(caps == 0, "pid %d keeps capabilities: %s", (int)pids[i], line);
				if (!strncmp(line, "Groups:", 7))
					ck_assert_msg(strspn(line + 7, " \t\n") == strlen(line + 7), "pid %d keeps"
						      " supplementary groups: %s", (int)pids[i], line);
			}
			fclose(f);
		}
	}
	harness_stop(env, NULL);
	harness_env_free(env);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("e2e_faults");
	TCase *tc = harness_tcase("faults");
	tcase_add_test(tc, test_slowloris);
	tcase_add_test(tc, test_kill_worker_mid_data);
	tcase_add_test(tc, test_kill_policyd_while_waiting);
	tcase_add_test(tc, test_kill9_master_only);
	tcase_add_test(tc, test_corrupted_spool);
	tcase_add_test(tc, test_open_relay);
	tcase_add_test(tc, test_client_leaves_during_commit);
	tcase_add_test(tc, test_files_and_privileges);
	suite_add_tcase(s, tc);
	tc = harness_tcase("full_disk");
	tcase_add_unchecked_fixture(tc, small_fs_setup, small_fs_teardown);
	tcase_add_test(tc, test_full_disk);
	suite_add_tcase(s, tc);
	tc = harness_tcase("load");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_many_big_messages);
	suite_add_tcase(s, tc);
	return harness_run_suite(s);
}
