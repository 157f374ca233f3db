/* smtp-load: an SMTP load generator for loopback benchmarks (issue 7).
 *
 *   smtp-load --host 127.0.0.1 --port P [--sessions N] [--messages M]
 *             [--size S] [--rcpts R] [--duration SECS] [--warmup SECS] [--rate R]
 *   smtp-load --idle --host 127.0.0.1 --port P --sessions N [--duration SECS]
 *
 * Load mode: N sessions on persistent connections (EHLO once), each sending
 * one message after another: MAIL, R x RCPT, DATA (one write when the server
 * advertises PIPELINING, unless --no-pipelining), then the S-byte body and
 * the dot.  Every reply code
 * is checked; a transaction with a wrong code counts as one error (the first
 * wrong reply's text is printed once per distinct text), is abandoned with
 * RSET and the session goes on; a lost connection counts as an error and the
 * session reconnects.  A MAIL refused with 451 4.5.3 (the server's
 * max_messages_per_connection) is not an error: the session QUITs and
 * reconnects at once, as a real client would, and renewed= counts it.
 * Messages completed during --warmup are not counted.
 * With --rate R (messages per second, all sessions together), each session
 * starts a transaction every N/R seconds, the sessions spread evenly over
 * that interval, instead of as soon as the last one ended: latency at a
 * given load rather than at the most the server takes.  A session that
 * falls behind starts its next one at once (no backlog is made up later,
 * so a server slower than R just gets the closed-loop load).
 * The run stops after M counted messages or SECS seconds after the warmup,
 * whichever comes first; transactions then in flight are finished (not
 * counted) and the sessions QUIT.  Output, one line on stdout:
 *   msgs= secs= msg_per_s= mb_per_s= p50_ms= p99_ms= p999_ms= errors= ...
 * Latency is from writing MAIL to reading the final 250 after the dot;
 * mb_per_s counts message bytes (S per message, before dot-stuffing).
 * load_cpu_us_per_msg is this program's CPU time per counted message; with
 * --cpu-pid PID, srv_cpu_us_per_msg and srv_cpu_util are the same for PID
 * and all its descendants (from /proc), over the same measured window:
 * steadier than msg/s on a shared machine.
 *
 * Idle mode: N sessions connect, read the banner, EHLO and then stay idle.
 * Once every session is up (or failed) it prints
 *   idle sessions=N connected=C errors=E
 * and holds the connections until SECS have passed or SIGTERM/SIGINT, then
 * prints the same line again (connections still open) and exits.
 *
 * Only loopback addresses are accepted (127.0.0.0/8, ::1, "localhost").
 * Exit status: 0, or 1 when errors > 0, or 2 for a usage or setup error. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAX_SESSIONS   50000
#define MAX_MESSAGES   100000000UL
#define MAX_SIZE       (64UL * 1024 * 1024)
#define MAX_RCPTS      1000
#define MAX_DURATION   3600.0
#define MAX_WARMUP     600.0
#define MAX_RATE       10000000.0
#define MAX_REPLY_LINE 4096       /* longer without CRLF: protocol error */
#define MAX_CONNECTING 128        /* handshakes in flight at once */
#define MAX_DISTINCT   64         /* distinct error texts remembered */
#define ERR_TEXT       200        /* error text kept, bytes */
#define REPLY_TIMEOUT  30         /* seconds without a reply: error */
#define RETRY_MS       100        /* reconnect delay after a failure */
#define DRAIN_SECS     3          /* at the end, time to finish and QUIT */

enum stage { ST_NONE, ST_BANNER, ST_EHLO, ST_MAIL, ST_RCPT, ST_DATA, ST_DOT,
	     ST_RSET, ST_QUIT, ST_IDLE };

static const char *const stage_name[] = {
	[ST_NONE] = "none", [ST_BANNER] = "banner", [ST_EHLO] = "EHLO",
	[ST_MAIL] = "MAIL", [ST_RCPT] = "RCPT", [ST_DATA] = "DATA",
	[ST_DOT] = "end of data", [ST_RSET] = "RSET", [ST_QUIT] = "QUIT",
	[ST_IDLE] = "idle",
};

struct bench;

struct session {
	struct bench *b;
	struct bufferevent *bev;   /* owned; NULL while not connected */
	struct event *retry;       /* owned; reconnect timer */
	enum stage *expect;        /* owned; replies awaited, in order */
	unsigned nexp, iexp;
	unsigned rcpt_next;        /* without PIPELINING: next RCPT to send */
	bool pipelining;
	bool in_txn;               /* MAIL sent, final reply not yet read */
	bool txn_failed;
	bool renew;                /* the server's message limit: QUIT, reconnect */
	bool up;                   /* banner and EHLO done */
	bool started;              /* connect attempted at least once */
	bool closed;               /* finished for good */
	uint64_t t0;               /* ns, MAIL written */
	uint64_t next_at;          /* --rate: ns, when the next transaction starts */
	struct event *pace;        /* owned; --rate: waits for next_at */
	char first[ERR_TEXT];      /* first line of the reply being read */
};

struct distinct {
	char text[ERR_TEXT + 32];
	unsigned long count;
};

struct bench {
	struct event_base *base;
	struct sockaddr_storage addr;
	socklen_t alen;
	/* options */
	unsigned sessions, rcpts;
	unsigned long messages;
	size_t size;
	double duration, warmup;
	double rate;               /* --rate: messages/s in all, 0: as fast as it goes */
	bool idle;
	bool no_pipelining;        /* ignore PIPELINING when advertised */
	pid_t cpu_pid;             /* --cpu-pid: server whose CPU time is read */
	/* message and commands, built once */
	char *wire;                /* owned; dot-stuffed message + ".\r\n" */
	size_t wire_len;
	char *pipe_cmds;           /* owned; MAIL, RCPT xR, DATA */
	size_t pipe_len;
	char *mail_cmd;            /* owned */
	char **rcpt_cmd;           /* owned, rcpts entries */
	/* sessions */
	struct session *s;         /* owned, sessions entries */
	unsigned next_start, connecting, up, closed;
	bool ready_printed;
	/* measurement */
	uint32_t *lat_us;          /* owned, messages entries */
	unsigned long nlat;
	bool measuring, stopping;
	uint64_t t_measure, t_end;
	uint64_t srv_cpu0, srv_cpu1, self_cpu0, self_cpu1;  /* ns */
	unsigned long errors;
	unsigned long renewed;     /* sessions renewed at the server's message limit */
	struct distinct distinct[MAX_DISTINCT];
	unsigned ndistinct;
	bool distinct_full;
	struct event *ev_warm, *ev_stop, *ev_drain, *ev_int, *ev_term;
};

static void session_connect(struct session *s);
static void session_next(struct session *s);
static void start_more(struct bench *b);

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p) {
		fprintf(stderr, "smtp-load: out of memory\n");
		abort();
	}
	return p;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct timeval tv_of(double secs)
{
	struct timeval tv;
	tv.tv_sec = (time_t)secs;
	tv.tv_usec = (suseconds_t)((secs - (double)tv.tv_sec) * 1e6);
	return tv;
}

/* ---- errors ------------------------------------------------------------- */

/* Copies at most cap-1 bytes of text, replacing what is not printable. */
static void sanitize(char *dst, size_t cap, const char *src, size_t len)
{
	size_t n = len < cap - 1 ? len : cap - 1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)src[i];
		dst[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	dst[n] = '\0';
}

/* One more error; its text is printed the first time it is seen. */
static void note_error(struct bench *b, enum stage st, const char *text)
{
	char key[sizeof b->distinct[0].text];
	snprintf(key, sizeof key, "%s: %s", stage_name[st], text);
	b->errors++;
	for (unsigned i = 0; i < b->ndistinct; i++)
		if (strcmp(b->distinct[i].text, key) == 0) {
			b->distinct[i].count++;
			return;
		}
	if (b->ndistinct == MAX_DISTINCT) {
		if (!b->distinct_full)
			fprintf(stderr, "smtp-load: error: (more distinct errors not shown)\n");
		b->distinct_full = true;
		return;
	}
	snprintf(b->distinct[b->ndistinct].text, sizeof b->distinct[0].text, "%s", key);
	b->distinct[b->ndistinct++].count = 1;
	fprintf(stderr, "smtp-load: error: %s\n", key);
}

/* ---- CPU accounting ----------------------------------------------------- */

struct proc_cpu {
	pid_t pid, ppid;
	uint64_t ticks;
	bool in;
};

/* User plus system CPU time, ns, of process root (all its threads) and of
 * every descendant, read from /proc; processes that exited are not seen. */
static uint64_t tree_cpu_ns(pid_t root)
{
	if (root <= 0)
		return 0;
	DIR *d = opendir("/proc");
	if (!d)
		return 0;
	struct proc_cpu *v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		char *end;
		long pid = strtol(e->d_name, &end, 10);
		if (*end || pid <= 0)
			continue;
		char path[64], buf[1024];
		snprintf(path, sizeof path, "/proc/%ld/stat", pid);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		size_t len = fread(buf, 1, sizeof buf - 1, f);
		fclose(f);
		buf[len] = '\0';
		char *p = strrchr(buf, ')');
		int ppid;
		unsigned long ut, st;
		if (!p || sscanf(p + 1, " %*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
				 &ppid, &ut, &st) != 3)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			v = realloc(v, cap * sizeof *v);
			if (!v)
				abort();
		}
		v[n++] = (struct proc_cpu){ (pid_t)pid, (pid_t)ppid, (uint64_t)ut + st, pid == root };
	}
	closedir(d);
	for (bool changed = true; changed;) {
		changed = false;
		for (size_t i = 0; i < n; i++) {
			if (v[i].in)
				continue;
			for (size_t j = 0; j < n; j++)
				if (v[j].in && v[j].pid == v[i].ppid) {
					v[i].in = changed = true;
					break;
				}
		}
	}
	uint64_t ticks = 0;
	for (size_t i = 0; i < n; i++)
		if (v[i].in)
			ticks += v[i].ticks;
	free(v);
	long hz = sysconf(_SC_CLK_TCK);
	return ticks * (1000000000u / (uint64_t)(hz > 0 ? hz : 100));
}

static uint64_t self_cpu_ns(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000u +
	       ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000u;
}

static void measure_start(struct bench *b)
{
	b->measuring = true;
	b->srv_cpu0 = tree_cpu_ns(b->cpu_pid);
	b->self_cpu0 = self_cpu_ns();
	b->t_measure = now_ns();
}

/* ---- session life ------------------------------------------------------- */

static void check_done(struct bench *b)
{
	if (b->stopping && b->closed == b->sessions)
		event_base_loopbreak(b->base);
}

static void maybe_print_ready(struct bench *b)
{
	if (!b->idle || b->ready_printed)
		return;
	if (b->next_start < b->sessions || b->connecting > 0)
		return;
	b->ready_printed = true;
	printf("idle sessions=%u connected=%u errors=%lu\n", b->sessions, b->up, b->errors);
	fflush(stdout);
}

static void session_drop_bev(struct session *s)
{
	struct bench *b = s->b;
	if (s->bev) {
		bufferevent_free(s->bev);
		s->bev = NULL;
	}
	if (s->up) {
		s->up = false;
		b->up--;
	}
	s->nexp = s->iexp = 0;
	s->in_txn = false;
	s->renew = false;
	evtimer_del(s->pace);
}

static void session_close(struct session *s)
{
	struct bench *b = s->b;
	bool was_connecting = s->bev && !s->up;
	session_drop_bev(s);
	if (was_connecting && b->connecting > 0)
		b->connecting--;
	if (!s->closed) {
		s->closed = true;
		b->closed++;
	}
	start_more(b);
	check_done(b);
}

/* The connection failed: count it, then reconnect (load mode) or give up
 * (idle mode, or the run is ending). */
static void session_fail(struct session *s, enum stage st, const char *text)
{
	struct bench *b = s->b;
	bool was_connecting = s->bev && !s->up;
	if (!b->stopping)
		note_error(b, st, text);
	if (b->idle || b->stopping) {
		session_close(s);
		maybe_print_ready(b);
		return;
	}
	session_drop_bev(s);
	if (was_connecting && b->connecting > 0)
		b->connecting--;
	struct timeval tv = tv_of(RETRY_MS / 1000.0);
	evtimer_add(s->retry, &tv);
	start_more(b);
}

/* After the server's message limit: a new connection at once, not an
 * error. */
static void session_renew(struct session *s)
{
	session_drop_bev(s);
	s->b->renewed++;
	s->b->connecting++;
	session_connect(s);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct session *s = arg;
	if (s->b->stopping) {
		session_close(s);
		return;
	}
	s->b->connecting++;
	session_connect(s);
}

static void expect_push(struct session *s, enum stage st)
{
	s->expect[s->nexp++] = st;
}

static void send_quit(struct session *s)
{
	evtimer_del(s->pace);
	s->nexp = s->iexp = 0;
	expect_push(s, ST_QUIT);
	bufferevent_write(s->bev, "QUIT\r\n", 6);
}

static void begin_stop(struct bench *b);

/* One message accepted: its latency counts once the warmup is over. */
static void record(struct bench *b, uint64_t t0)
{
	if (!b->measuring)
		return;
	uint64_t us = (now_ns() - t0) / 1000u;
	b->lat_us[b->nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
	if (b->nlat == b->messages)
		begin_stop(b);
}

/* Ends the run: sessions between transactions QUIT now, the others when
 * their transaction ends; whatever is not connected closes. */
static void stop_all(struct bench *b)
{
	for (unsigned i = 0; i < b->sessions; i++) {
		struct session *s = &b->s[i];
		if (s->closed)
			continue;
		if (!s->bev) {
			evtimer_del(s->retry);
			session_close(s);
		} else if (s->up && !s->in_txn && !(s->nexp > s->iexp)) {
			send_quit(s);
		} else if (!s->up) {
			session_close(s);
		}
	}
	b->next_start = b->sessions;
	check_done(b);
}

static void begin_stop(struct bench *b)
{
	if (b->stopping)
		return;
	b->t_end = now_ns();
	b->srv_cpu1 = tree_cpu_ns(b->cpu_pid);
	b->self_cpu1 = self_cpu_ns();
	b->measuring = false;
	b->stopping = true;
	struct timeval tv = { DRAIN_SECS, 0 };
	evtimer_add(b->ev_drain, &tv);
	stop_all(b);
}

/* Writes MAIL, RCPT and DATA (together with PIPELINING). */
static void start_txn(struct session *s)
{
	struct bench *b = s->b;
	s->in_txn = true;
	s->txn_failed = false;
	s->t0 = now_ns();
	if (s->pipelining) {
		expect_push(s, ST_MAIL);
		for (unsigned i = 0; i < b->rcpts; i++)
			expect_push(s, ST_RCPT);
		expect_push(s, ST_DATA);
		bufferevent_write(s->bev, b->pipe_cmds, b->pipe_len);
	} else {
		expect_push(s, ST_MAIL);
		s->rcpt_next = 0;
		bufferevent_write(s->bev, b->mail_cmd, strlen(b->mail_cmd));
	}
}

static void pace_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct session *s = arg;
	if (s->b->stopping)
		send_quit(s);
	else
		start_txn(s);
}

/* Starts the next transaction (with --rate, when its turn comes), or
 * QUITs when the run is ending. */
static void session_next(struct session *s)
{
	struct bench *b = s->b;
	s->in_txn = false;
	s->nexp = s->iexp = 0;
	if (b->stopping) {
		send_quit(s);
		return;
	}
	if (b->rate > 0) {
		uint64_t now = now_ns(), every = (uint64_t)(1e9 * b->sessions / b->rate);
		if (!s->next_at) /* the first: this session's place in the interval */
			s->next_at = now + every * (uint64_t)(s - b->s) / b->sessions;
		else
			s->next_at += every;
		if (s->next_at < now)
			s->next_at = now; /* behind: at once, no catching up */
		if (s->next_at > now) {
			struct timeval tv = tv_of((double)(s->next_at - now) / 1e9);
			s->in_txn = true; /* stop_all leaves it to pace_cb */
			evtimer_add(s->pace, &tv);
			return;
		}
	}
	start_txn(s);
}

static void send_rset(struct session *s)
{
	if (s->renew) {
		send_quit(s);  /* its reply renews the session (on_reply) */
		return;
	}
	s->nexp = s->iexp = 0;
	expect_push(s, ST_RSET);
	bufferevent_write(s->bev, "RSET\r\n", 6);
}

/* Marks the transaction failed; the first wrong reply is the one shown. */
static void txn_fail(struct session *s, enum stage st, const char *text)
{
	if (!s->txn_failed && !s->b->stopping)
		note_error(s->b, st, text);
	s->txn_failed = true;
}

/* One complete reply (code, first line text) for stage st.  Returns false
 * when the session was closed or reset and reading must stop. */
static bool on_reply(struct session *s, enum stage st, int code)
{
	struct bench *b = s->b;
	const char *text = s->first;

	if (code == 421) {
		if (st == ST_QUIT) {
			session_close(s);
			return false;
		}
		session_fail(s, st, text);
		return false;
	}
	switch (st) {
	case ST_BANNER:
		if (code != 220) {
			session_fail(s, st, text);
			return false;
		}
		s->nexp = s->iexp = 0;
		expect_push(s, ST_EHLO);
		bufferevent_write(s->bev, "EHLO smtp-load.localhost\r\n", 26);
		return true;
	case ST_EHLO:
		if (code != 250) {
			session_fail(s, st, text);
			return false;
		}
		s->up = true;
		b->up++;
		if (b->connecting > 0)
			b->connecting--;
		start_more(b);
		if (b->idle) {
			s->nexp = s->iexp = 0;
			expect_push(s, ST_IDLE);
			maybe_print_ready(b);
			return true;
		}
		session_next(s);
		return true;
	case ST_MAIL:
		if (code == 451 && strncmp(text, "451 4.5.3", 9) == 0 && !s->txn_failed) {
			/* the server's max_messages_per_connection: not an error */
			s->txn_failed = true;
			s->renew = true;
		} else if (code != 250) {
			txn_fail(s, st, text);
		}
		if (!s->pipelining) {
			if (s->txn_failed) {
				send_rset(s);
				return true;
			}
			expect_push(s, ST_RCPT);
			bufferevent_write(s->bev, b->rcpt_cmd[0], strlen(b->rcpt_cmd[0]));
			s->rcpt_next = 1;
		}
		return true;
	case ST_RCPT:
		if (code != 250 && code != 251)
			txn_fail(s, st, text);
		if (!s->pipelining) {
			if (s->txn_failed) {
				send_rset(s);
				return true;
			}
			if (s->rcpt_next < b->rcpts) {
				const char *c = b->rcpt_cmd[s->rcpt_next++];
				expect_push(s, ST_RCPT);
				bufferevent_write(s->bev, c, strlen(c));
			} else {
				expect_push(s, ST_DATA);
				bufferevent_write(s->bev, "DATA\r\n", 6);
			}
		}
		return true;
	case ST_DATA:
		if (code == 354) {
			expect_push(s, ST_DOT);
			if (s->txn_failed)
				bufferevent_write(s->bev, ".\r\n", 3);  /* abandon */
			else
				evbuffer_add_reference(bufferevent_get_output(s->bev),
						       b->wire, b->wire_len, NULL, NULL);
			return true;
		}
		txn_fail(s, st, text);
		send_rset(s);
		return true;
	case ST_DOT:
		if (!s->txn_failed) {
			if (code == 250)
				record(b, s->t0);
			else
				txn_fail(s, st, text);
		}
		if (s->txn_failed && !b->stopping)
			send_rset(s);
		else
			session_next(s);
		return true;
	case ST_RSET:
		if (code != 250) {
			session_fail(s, st, text);
			return false;
		}
		session_next(s);
		return true;
	case ST_QUIT:
		if (s->renew && !b->stopping) {
			session_renew(s);
			return false;
		}
		session_close(s);
		return false;
	case ST_IDLE:
	case ST_NONE:
		break;
	}
	session_fail(s, st, "unexpected reply");
	return false;
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	for (;;) {
		size_t len;
		char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF_STRICT);
		if (!line) {
			if (evbuffer_get_length(in) > MAX_REPLY_LINE)
				session_fail(s, s->iexp < s->nexp ? s->expect[s->iexp] : ST_NONE,
					     "reply line too long");
			return;
		}
		if (s->iexp >= s->nexp) {
			char t[ERR_TEXT];
			sanitize(t, sizeof t, line, len);
			free(line);
			/* a 421 when idle is the server closing: report its text */
			session_fail(s, s->up ? ST_IDLE : ST_NONE, t);
			return;
		}
		enum stage st = s->expect[s->iexp];
		bool ok = len >= 3 && line[0] >= '2' && line[0] <= '5' &&
			  line[1] >= '0' && line[1] <= '9' && line[2] >= '0' && line[2] <= '9' &&
			  (len == 3 || line[3] == ' ' || line[3] == '-');
		if (!ok) {
			char t[ERR_TEXT];
			sanitize(t, sizeof t, line, len);
			free(line);
			session_fail(s, st, t);
			return;
		}
		bool more = len > 3 && line[3] == '-';
		if (s->first[0] == '\0')
			sanitize(s->first, sizeof s->first, line, len);
		if (st == ST_EHLO && !s->b->no_pipelining && len >= 14 &&
		    strncasecmp(line + 4, "PIPELINING", 10) == 0 &&
		    (len == 14 || line[14] == ' '))
			s->pipelining = true;
		int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		free(line);
		if (more)
			continue;
		s->iexp++;
		bool go_on = on_reply(s, st, code);
		s->first[0] = '\0';
		if (!go_on)
			return;
	}
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct session *s = arg;
	enum stage st = s->iexp < s->nexp ? s->expect[s->iexp] : ST_NONE;

	if (what & BEV_EVENT_CONNECTED) {
		int one = 1;
		setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		s->nexp = s->iexp = 0;
		s->first[0] = '\0';
		expect_push(s, ST_BANNER);
		bufferevent_enable(bev, EV_READ | EV_WRITE);
		return;
	}
	if (st == ST_QUIT && (what & BEV_EVENT_EOF)) {
		if (s->renew && !s->b->stopping)
			session_renew(s);
		else
			session_close(s);
		return;
	}
	char t[ERR_TEXT];
	if (what & BEV_EVENT_TIMEOUT)
		snprintf(t, sizeof t, "no reply within %d s", REPLY_TIMEOUT);
	else if (what & BEV_EVENT_EOF)
		snprintf(t, sizeof t, "connection closed by server");
	else
		snprintf(t, sizeof t, "%s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	if (!s->up && st == ST_NONE)
		st = ST_BANNER;
	session_fail(s, st, t);
}

static void session_connect(struct session *s)
{
	struct bench *b = s->b;
	s->started = true;
	s->bev = bufferevent_socket_new(b->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!s->bev) {
		fprintf(stderr, "smtp-load: bufferevent_socket_new failed\n");
		abort();
	}
	bufferevent_setcb(s->bev, read_cb, NULL, event_cb, s);
	if (!b->idle) {
		struct timeval tv = { REPLY_TIMEOUT, 0 };
		bufferevent_set_timeouts(s->bev, &tv, &tv);
	}
	s->nexp = s->iexp = 0;
	if (bufferevent_socket_connect(s->bev, (struct sockaddr *)&b->addr, (int)b->alen) < 0) {
		char t[ERR_TEXT];
		snprintf(t, sizeof t, "connect: %s", strerror(errno));
		session_fail(s, ST_BANNER, t);
	}
}

/* Keeps up to MAX_CONNECTING handshakes in flight. */
static void start_more(struct bench *b)
{
	while (!b->stopping && b->next_start < b->sessions && b->connecting < MAX_CONNECTING) {
		struct session *s = &b->s[b->next_start++];
		b->connecting++;
		session_connect(s);
	}
}

/* ---- timers and signals ------------------------------------------------- */

static void warm_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	measure_start(arg);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct bench *b = arg;
	if (b->idle) {
		event_base_loopbreak(b->base);
		return;
	}
	begin_stop(b);
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	event_base_loopbreak(((struct bench *)arg)->base);
}

static void signal_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct bench *b = arg;
	if (b->idle || b->stopping) {
		event_base_loopbreak(b->base);
		return;
	}
	begin_stop(b);
}

/* ---- message ------------------------------------------------------------ */

/* Builds an S-byte message (headers, blank line, printable lines of at most
 * 78 characters, CRLF) and its dot-stuffed wire form ending in ".\r\n". */
static int build_message(struct bench *b)
{
	char hdr[512];
	int h = snprintf(hdr, sizeof hdr,
			 "From: smtp-load <load@bench.example>\r\n"
			 "To: <r0@sink.example>\r\n"
			 "Subject: smtp-load test message\r\n"
			 "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
			 "Message-ID: <smtp-load@bench.example>\r\n"
			 "\r\n");
	size_t hlen = (size_t)h;
	if (b->size < hlen + 2) {
		fprintf(stderr, "smtp-load: --size must be at least %zu (the headers)\n", hlen + 2);
		return -1;
	}
	char *msg = xcalloc(b->size, 1);
	memcpy(msg, hdr, hlen);

	size_t rem = b->size - hlen;
	size_t pos = hlen;
	if (rem >= 80) {            /* a lone dot, the line stuffing must save */
		memcpy(msg + pos, ".\r\n", 3);
		pos += 3;
		rem -= 3;
	}
	size_t nfull = rem / 78, last = rem % 78;
	bool stretch = false;       /* one line of 77 absorbs a lone byte */
	if (last == 1) {
		stretch = true;
		last = 0;
	}
	for (size_t line = 0; line < nfull + (last ? 1 : 0); line++) {
		size_t n = line < nfull ? 76 : last - 2;
		if (stretch && line == 0)
			n = 77;
		for (size_t j = 0; j < n; j++) {
			char c;
			if (j == 0 && line % 8 == 3)
				c = '.';                     /* exercise dot-stuffing */
			else if (j % 9 == 8)
				c = ' ';
			else
				c = (char)('!' + (line * 7 + j) % 94);
			msg[pos++] = c;
		}
		msg[pos++] = '\r';
		msg[pos++] = '\n';
	}
	if (pos != b->size) {
		fprintf(stderr, "smtp-load: internal error building the message (%zu != %zu)\n",
			pos, b->size);
		return -1;
	}

	size_t dots = 0;
	for (size_t i = 0; i < b->size; i++)
		if (msg[i] == '.' && (i == 0 || msg[i - 1] == '\n'))
			dots++;
	b->wire_len = b->size + dots + 3;
	b->wire = xcalloc(b->wire_len, 1);
	size_t w = 0;
	for (size_t i = 0; i < b->size; i++) {
		if (msg[i] == '.' && (i == 0 || msg[i - 1] == '\n'))
			b->wire[w++] = '.';
		b->wire[w++] = msg[i];
	}
	memcpy(b->wire + w, ".\r\n", 3);
	free(msg);

	b->mail_cmd = strdup("MAIL FROM:<load@bench.example>\r\n");
	b->rcpt_cmd = xcalloc(b->rcpts, sizeof *b->rcpt_cmd);
	size_t plen = strlen(b->mail_cmd) + 6;
	for (unsigned i = 0; i < b->rcpts; i++) {
		char r[64];
		snprintf(r, sizeof r, "RCPT TO:<r%u@sink.example>\r\n", i);
		b->rcpt_cmd[i] = strdup(r);
		plen += strlen(r);
	}
	b->pipe_cmds = xcalloc(plen + 1, 1);
	size_t p = 0;
	p += (size_t)snprintf(b->pipe_cmds + p, plen + 1 - p, "%s", b->mail_cmd);
	for (unsigned i = 0; i < b->rcpts; i++)
		p += (size_t)snprintf(b->pipe_cmds + p, plen + 1 - p, "%s", b->rcpt_cmd[i]);
	p += (size_t)snprintf(b->pipe_cmds + p, plen + 1 - p, "DATA\r\n");
	b->pipe_len = p;
	return 0;
}

/* ---- options ------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: smtp-load --host ADDR --port P [--sessions N] [--messages M] [--size S]\n"
		"                 [--rcpts R] [--duration SECS] [--warmup SECS] [--no-pipelining]\n"
		"                 [--cpu-pid PID] [--rate MSGS_PER_SEC]\n"
		"       smtp-load --idle --host ADDR --port P --sessions N [--duration SECS]\n"
		"  ADDR must be a loopback address (127.0.0.0/8, ::1, localhost).\n"
		"  defaults: sessions 20, messages 1000000, size 1024, rcpts 1, duration 10,\n"
		"  warmup 0; bounds: sessions %d, messages %lu, size %lu, rcpts %d,\n"
		"  duration %.0f, warmup %.0f, rate %.0f.\n",
		MAX_SESSIONS, MAX_MESSAGES, MAX_SIZE, MAX_RCPTS, MAX_DURATION, MAX_WARMUP, MAX_RATE);
}

static int parse_ulong(const char *name, const char *v, unsigned long lo, unsigned long hi,
		       unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long x = strtoul(v, &end, 10);
	if (errno || end == v || *end || v[0] == '-' || x < lo || x > hi) {
		fprintf(stderr, "smtp-load: --%s: want an integer from %lu to %lu, got '%s'\n",
			name, lo, hi, v);
		return -1;
	}
	*out = x;
	return 0;
}

static int parse_secs(const char *name, const char *v, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double x = strtod(v, &end);
	if (errno || end == v || *end || !(x >= lo && x <= hi)) {
		fprintf(stderr, "smtp-load: --%s: want seconds from %g to %g, got '%s'\n",
			name, lo, hi, v);
		return -1;
	}
	*out = x;
	return 0;
}

/* Fills b->addr from a loopback literal; anything else is refused. */
static int parse_host(struct bench *b, const char *host, unsigned port)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)&b->addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&b->addr;
	memset(&b->addr, 0, sizeof b->addr);
	if (strcmp(host, "localhost") == 0)
		host = "127.0.0.1";
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		if ((ntohl(in4->sin_addr.s_addr) >> 24) != 127)
			goto refuse;
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		b->alen = sizeof *in4;
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			goto refuse;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		b->alen = sizeof *in6;
		return 0;
	}
refuse:
	fprintf(stderr, "smtp-load: --host '%s' refused: only loopback addresses "
		"(127.0.0.0/8, ::1, localhost) are allowed\n", host);
	return -1;
}

/* Raises the descriptor limit to what N sessions need, if allowed. */
static int raise_nofile(unsigned sessions)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)sessions + 32;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 0;
	if (rl.rlim_cur >= need)
		return 0;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < need) {
		fprintf(stderr, "smtp-load: %u sessions need %lu descriptors; the limit is %lu "
			"(raise it with ulimit -n)\n", sessions, (unsigned long)need,
			(unsigned long)rl.rlim_cur);
		return -1;
	}
	return 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array, in ms. */
static double pct_ms(const uint32_t *v, unsigned long n, double p)
{
	if (n == 0)
		return 0.0;
	unsigned long k = (unsigned long)ceil(p * (double)n);
	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	return v[k - 1] / 1000.0;
}

int main(int argc, char **argv)
{
	static struct bench bench;
	struct bench *b = &bench;
	const char *host = NULL;
	unsigned long port = 0, v;
	b->sessions = 20;
	b->messages = 1000000;
	b->size = 1024;
	b->rcpts = 1;
	b->duration = 10;
	b->warmup = 0;

	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'h' },
		{ "port", required_argument, NULL, 'p' },
		{ "sessions", required_argument, NULL, 'n' },
		{ "messages", required_argument, NULL, 'm' },
		{ "size", required_argument, NULL, 's' },
		{ "rcpts", required_argument, NULL, 'r' },
		{ "duration", required_argument, NULL, 'd' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "idle", no_argument, NULL, 'i' },
		{ "no-pipelining", no_argument, NULL, 'P' },
		{ "cpu-pid", required_argument, NULL, 'c' },
		{ "rate", required_argument, NULL, 'R' },
		{ "help", no_argument, NULL, 'H' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'h': host = optarg; break;
		case 'p':
			if (parse_ulong("port", optarg, 1, 65535, &port) < 0)
				return 2;
			break;
		case 'n':
			if (parse_ulong("sessions", optarg, 1, MAX_SESSIONS, &v) < 0)
				return 2;
			b->sessions = (unsigned)v;
			break;
		case 'm':
			if (parse_ulong("messages", optarg, 1, MAX_MESSAGES, &b->messages) < 0)
				return 2;
			break;
		case 's':
			if (parse_ulong("size", optarg, 1, MAX_SIZE, &v) < 0)
				return 2;
			b->size = v;
			break;
		case 'r':
			if (parse_ulong("rcpts", optarg, 1, MAX_RCPTS, &v) < 0)
				return 2;
			b->rcpts = (unsigned)v;
			break;
		case 'd':
			if (parse_secs("duration", optarg, 0.1, MAX_DURATION, &b->duration) < 0)
				return 2;
			break;
		case 'w':
			if (parse_secs("warmup", optarg, 0, MAX_WARMUP, &b->warmup) < 0)
				return 2;
			break;
		case 'i': b->idle = true; break;
		case 'P': b->no_pipelining = true; break;
		case 'c':
			if (parse_ulong("cpu-pid", optarg, 1, INT_MAX, &v) < 0)
				return 2;
			b->cpu_pid = (pid_t)v;
			break;
		case 'R':
			if (parse_secs("rate", optarg, 1, MAX_RATE, &b->rate) < 0)
				return 2;
			break;
		case 'H': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc || !host || !port) {
		usage(stderr);
		return 2;
	}
	if (parse_host(b, host, (unsigned)port) < 0)
		return 2;
	if (raise_nofile(b->sessions) < 0)
		return 2;
	if (!b->idle && build_message(b) < 0)
		return 2;
	signal(SIGPIPE, SIG_IGN);

	/* with --rate, timers to the microsecond (timerfd), not epoll's ms */
	struct event_config *cfg = event_config_new();
	if (cfg && b->rate > 0)
		event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
	b->base = cfg ? event_base_new_with_config(cfg) : NULL;
	if (cfg)
		event_config_free(cfg);
	if (!b->base) {
		fprintf(stderr, "smtp-load: event_base_new failed\n");
		return 2;
	}
	b->s = xcalloc(b->sessions, sizeof *b->s);
	for (unsigned i = 0; i < b->sessions; i++) {
		struct session *s = &b->s[i];
		s->b = b;
		s->expect = xcalloc(b->rcpts + 4, sizeof *s->expect);
		s->retry = evtimer_new(b->base, retry_cb, s);
		s->pace = evtimer_new(b->base, pace_cb, s);
	}
	if (!b->idle)
		b->lat_us = xcalloc(b->messages, sizeof *b->lat_us);

	b->ev_warm = evtimer_new(b->base, warm_cb, b);
	b->ev_stop = evtimer_new(b->base, stop_cb, b);
	b->ev_drain = evtimer_new(b->base, drain_cb, b);
	b->ev_int = evsignal_new(b->base, SIGINT, signal_cb, b);
	b->ev_term = evsignal_new(b->base, SIGTERM, signal_cb, b);
	evsignal_add(b->ev_int, NULL);
	evsignal_add(b->ev_term, NULL);

	struct timeval tv;
	if (b->idle) {
		tv = tv_of(b->duration);
		evtimer_add(b->ev_stop, &tv);
	} else {
		tv = tv_of(b->warmup);
		if (b->warmup > 0) {
			evtimer_add(b->ev_warm, &tv);
		} else {
			measure_start(b);
		}
		tv = tv_of(b->warmup + b->duration);
		evtimer_add(b->ev_stop, &tv);
	}

	start_more(b);
	event_base_dispatch(b->base);

	int status = b->errors > 0;
	if (b->idle) {
		maybe_print_ready(b);
		printf("idle sessions=%u connected=%u errors=%lu\n", b->sessions, b->up, b->errors);
	} else {
		if (!b->t_end)
			b->t_end = now_ns();
		double secs = b->t_measure && b->t_end > b->t_measure
				      ? (double)(b->t_end - b->t_measure) / 1e9 : 0.0;
		qsort(b->lat_us, b->nlat, sizeof *b->lat_us, cmp_u32);
		double rate = secs > 0 ? (double)b->nlat / secs : 0.0;
		printf("msgs=%lu secs=%.2f msg_per_s=%.1f mb_per_s=%.2f p50_ms=%.2f p99_ms=%.2f "
		       "p999_ms=%.2f errors=%lu sessions=%u size=%zu rcpts=%u pipelining=%s offered=%.0f",
		       b->nlat, secs, rate, rate * (double)b->size / 1e6,
		       pct_ms(b->lat_us, b->nlat, 0.50), pct_ms(b->lat_us, b->nlat, 0.99),
		       pct_ms(b->lat_us, b->nlat, 0.999), b->errors, b->sessions, b->size,
		       b->rcpts, b->s[0].pipelining ? "yes" : "no", b->rate);
		if (b->nlat > 0 && b->self_cpu1) {
			printf(" load_cpu_us_per_msg=%.1f",
			       (double)(b->self_cpu1 - b->self_cpu0) / 1e3 / (double)b->nlat);
			if (b->cpu_pid)
				printf(" srv_cpu_us_per_msg=%.1f srv_cpu_util=%.2f",
				       (double)(b->srv_cpu1 - b->srv_cpu0) / 1e3 / (double)b->nlat,
				       secs > 0 ? (double)(b->srv_cpu1 - b->srv_cpu0) / 1e9 / secs : 0.0);
		}
		printf(" renewed=%lu\n", b->renewed);
	}
	for (unsigned i = 0; i < b->ndistinct; i++)
		fprintf(stderr, "smtp-load: %lu x %s\n", b->distinct[i].count, b->distinct[i].text);
	fflush(stdout);

	for (unsigned i = 0; i < b->sessions; i++) {
		if (b->s[i].bev)
			bufferevent_free(b->s[i].bev);
		event_free(b->s[i].retry);
		event_free(b->s[i].pace);
		free(b->s[i].expect);
	}
	free(b->s);
	event_free(b->ev_warm);
	event_free(b->ev_stop);
	event_free(b->ev_drain);
	event_free(b->ev_int);
	event_free(b->ev_term);
	event_base_free(b->base);
	free(b->lat_us);
	free(b->wire);
	free(b->pipe_cmds);
	free(b->mail_cmd);
	for (unsigned i = 0; i < b->rcpts && b->rcpt_cmd; i++)
		free(b->rcpt_cmd[i]);
	free(b->rcpt_cmd);
	return status;
}
