/* logrec: KumoMTA-shaped JSON log records (see logrec.h).
 * Entry points: logrec_open, logrec_put, logrec_flush, logrec_attach,
 * logrec_close.  Records are printed with lib/jsonw.h into a buffer
 * written once per event-loop pass, not once per record.
 * Write failures are returned to the caller, which logs them once. */
#include "lib/logrec.h"
#include "lib/xalloc.h"
#include "lib/str.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include "lib/duration.h"
#include "lib/jsonw.h"
#include "lib/log.h"

#include <event2/event.h>

static int mkdirs(const char *path)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
		return -1;
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
				return -1;
			*p = '/';
		}
	}
	if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
		return -1;
	struct stat st;
	return stat(tmp, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static void make_nodeid(char out[37])
{
	char hex[33] = "";
	FILE *f = fopen("/etc/machine-id", "r");
	if (f) {
		if (!fgets(hex, sizeof hex, f))
			hex[0] = '\0';
		fclose(f);
	}
	if (strlen(hex) != 32) {
		unsigned char r[16];
		if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
			memset(r, 0x5a, sizeof r);
		for (int i = 0; i < 16; i++)
			snprintf(hex + 2 * i, 3, "%02x", r[i]);
	}
	snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

int logrec_open(struct logrec *lr, const cJSON *conf, char *err, size_t errlen)
{
	memset(lr, 0, sizeof *lr);
	lr->fd = -1;
	lr->max_file_size = 1000000000;
	make_nodeid(lr->nodeid);
	if (!conf || cJSON_IsNull(conf))
		return 0;
	const cJSON *dir = cJSON_GetObjectItemCaseSensitive(conf, "log_dir");
	if (!cJSON_IsString(dir) || !dir->valuestring[0]) {
		snprintf(err, errlen, "configure_local_logs: log_dir must be a directory path");
		return -1;
	}
	const cJSON *mfs = cJSON_GetObjectItemCaseSensitive(conf, "max_file_size");
	if (cJSON_IsNumber(mfs) && mfs->valuedouble >= 1)
		lr->max_file_size = (size_t)mfs->valuedouble;
	const cJSON *msd = cJSON_GetObjectItemCaseSensitive(conf, "max_segment_duration");
	if (msd) {
		char why[128];
		if (cJSON_IsNumber(msd)) {
			lr->max_segment_duration = msd->valuedouble;
		} else if (!cJSON_IsString(msd) ||
			   duration_parse(msd->valuestring, &lr->max_segment_duration, why, sizeof why) != 0) {
			snprintf(err, errlen, "configure_local_logs: max_segment_duration: bad duration");
			return -1;
		}
	}
	if (mkdirs(dir->valuestring) != 0) {
		snprintf(err, errlen, "cannot create log directory %s: %s", dir->valuestring, strerror(errno));
		return -1;
	}
	if (access(dir->valuestring, W_OK) != 0) {
		snprintf(err, errlen, "log directory %s is not writable: %s", dir->valuestring, strerror(errno));
		return -1;
	}
	lr->dir = xstrdup(dir->valuestring);
	return 0;
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	char err[300];
	if (logrec_flush(arg, err, sizeof err) != 0)
		log_warn("log records: %s", err);
}

static void flush_soon(void *arg)
{
	struct timeval tv = { 0, LOGREC_FLUSH_MS * 1000 };
	evtimer_add(arg, &tv);
}

void logrec_attach(struct logrec *lr, struct event_base *base)
{
	lr->flush_ev = evtimer_new(base, flush_cb, lr);
	lr->want_flush = flush_soon;
	lr->want_flush_arg = lr->flush_ev;
}

void logrec_close(struct logrec *lr)
{
	char err[200];
	logrec_flush(lr, err, sizeof err);
	if (lr->flush_ev)
		event_free(lr->flush_ev);
	lr->flush_ev = NULL;
	lr->want_flush = NULL;
	if (lr->fd >= 0)
		close(lr->fd);
	jbuf_free(&lr->buf);
	free(lr->dir);
	lr->dir = NULL;
	lr->fd = -1;
}

void logrec_rfc3339(double t, char *buf, size_t buflen)
{
	time_t sec = (time_t)floor(t);
	long nsec = (long)((t - (double)sec) * 1e9);
	if (nsec < 0)
		nsec = 0;
	if (nsec > 999999999)
		nsec = 999999999;
	/* the date and time of the last two seconds asked for, per thread (a
	 * record has its own time and its message's creation time) */
	static __thread time_t last_sec[2] = { -1, -1 };
	static __thread char last[2][64];
	static __thread int next_slot;
	int k = sec == last_sec[0] ? 0 : sec == last_sec[1] ? 1 : -1;
	if (k < 0) {
		k = next_slot;
		next_slot ^= 1;
		struct tm tm;
		gmtime_r(&sec, &tm);
		snprintf(last[k], sizeof last[k], "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
		last_sec[k] = sec;
	}
	/* "%s.%09ldZ" */
	char out[80];
	size_t n = strlen(last[k]);
	memcpy(out, last[k], n);
	out[n] = '.';
	for (int i = 9; i >= 1; i--, nsec /= 10)
		out[n + (size_t)i] = (char)('0' + nsec % 10);
	out[n + 10] = 'Z';
	out[n + 11] = '\0';
	str_copy(buf, buflen, out);
}

static double now_real(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The enhanced status code at the start of text ("4.3.0 ..."): 1 and its
 * three numbers and where the rest starts, or 0. */
static int enhanced_code(const char *text, int *c, int *sub, int *det, const char **rest)
{
	int n = 0;
	/* the usual shape, d.ddd.ddd, read by hand; anything else as sscanf
	 * reads it (the same numbers for every input) */
	const char *q = text;
	int v[3] = { 0, 0, 0 };
	bool plain = q[0] >= '0' && q[0] <= '9';
	if (plain) {
		v[0] = q[0] - '0';
		q++;
		for (int part = 1; part < 3 && plain; part++) {
			int digits = 0;
			plain = *q++ == '.';
			while (plain && digits < 3 && *q >= '0' && *q <= '9') {
				v[part] = v[part] * 10 + (*q++ - '0');
				digits++;
			}
			plain = plain && digits > 0 && !(*q >= '0' && *q <= '9');
		}
	}
	if (plain) {
		*c = v[0];
		*sub = v[1];
		*det = v[2];
		n = (int)(q - text);
	}
	if (((plain && n > 0) || (!plain && sscanf(text, "%1d.%3d.%3d%n", c, sub, det, &n) == 3 && n > 0)) &&
	    (text[n] == ' ' || text[n] == '\0') && *c >= 2 && *c <= 5) {
		text += n;
		while (*text == ' ')
			text++;
		*rest = text;
		return 1;
	}
	*rest = text;
	return 0;
}

static int logrec_written(struct logrec *lr, bool was_empty, char *err, size_t errlen);

/* a string literal, without counting its bytes by hand */
#define LIT(b, s) jbuf_lit((b), "" s, sizeof(s) - 1)
/* ,"k": for one of our own keys (a literal: nothing to escape) */
#define key(b, k) LIT(b, ",\"" k "\":")

static void str_or(struct jbuf *b, const char *s, bool null_if_missing)
{
	if (s)
		jbuf_str(b, s);
	else if (null_if_missing)
		LIT(b, "null");
	else
		LIT(b, "\"\"");
}

int logrec_put(struct logrec *lr, const struct logrec_fields *f, char *err, size_t errlen)
{
	if (!lr->dir)
		return 0;
	bool was_empty = lr->buf.len == 0;
	struct jbuf *b = &lr->buf;
	double now = now_real(), created = f->created > 0 ? f->created : now;
	char t[48];
	LIT(b, "{\"type\":");
	jbuf_str(b, f->type);
	key(b, "id");
	str_or(b, f->id, false);
	key(b, "sender");
	str_or(b, f->sender, false);
	key(b, "recipient");
	if (f->recipient_json)
		jbuf_value(b, f->recipient_json);
	else
		str_or(b, f->recipient, false);
	key(b, "queue");
	str_or(b, f->queue, false);
	key(b, "site");
	str_or(b, f->site, false);
	key(b, "size");
	jbuf_num(b, f->size);
	key(b, "response");
	if (!f->response) {
		LIT(b, "null");
	} else {
		int c, sub, det;
		const char *rest;
		LIT(b, "{\"code\":");
		jbuf_num(b, f->code);
		if (enhanced_code(f->text ? f->text : "", &c, &sub, &det, &rest)) {
			LIT(b, ",\"enhanced_code\":{\"class\":");
			jbuf_num(b, c);
			LIT(b, ",\"subject\":");
			jbuf_num(b, sub);
			LIT(b, ",\"detail\":");
			jbuf_num(b, det);
			LIT(b, "}");
		} else {
			LIT(b, ",\"enhanced_code\":null");
		}
		key(b, "content");
		jbuf_str(b, rest);
		key(b, "command");
		str_or(b, f->command, true);
		LIT(b, "}");
	}
	key(b, "peer_address");
	if (f->peer_addr) {
		LIT(b, "{\"name\":");
		str_or(b, f->peer_name, false);
		key(b, "addr");
		jbuf_str(b, f->peer_addr);
		LIT(b, "}");
	} else {
		LIT(b, "null");
	}
	key(b, "timestamp");
	jbuf_num(b, floor(now));
	key(b, "event_time");
	logrec_rfc3339(now, t, sizeof t);
	jbuf_str(b, t);
	key(b, "created");
	jbuf_num(b, floor(created));
	key(b, "created_time");
	logrec_rfc3339(created, t, sizeof t);
	jbuf_str(b, t);
	key(b, "num_attempts");
	jbuf_num(b, f->num_attempts);
	key(b, "bounce_classification");
	jbuf_str(b, "Uncategorized");
	key(b, "egress_pool");
	str_or(b, f->egress_pool, true);
	key(b, "egress_source");
	str_or(b, f->egress_source, true);
	LIT(b, ",\"source_address\":null,\"feedback_report\":null,\"meta\":{},\"headers\":{}");
	key(b, "delivery_protocol");
	str_or(b, f->delivery_protocol, true);
	key(b, "reception_protocol");
	jbuf_str(b, "ESMTP");
	key(b, "nodeid");
	jbuf_str(b, lr->nodeid);
	if (f->session_id) {
		key(b, "session_id");
		jbuf_str(b, f->session_id);
	}
	for (const cJSON *x = f->extra ? f->extra->child : NULL; x; x = x->next) {
		LIT(b, ",");
		jbuf_str(b, x->string);
		LIT(b, ":");
		jbuf_value(b, x);
	}
	LIT(b, "}\n");
	return logrec_written(lr, was_empty, err, errlen);
}

static int open_segment(struct logrec *lr, char *err, size_t errlen)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	for (int attempt = 0; attempt < 100; attempt++) {
		struct tm tm;
		gmtime_r(&ts.tv_sec, &tm);
		char path[4200];
		snprintf(path, sizeof path, "%s/%04d%02d%02d-%02d%02d%02d.%09ld", lr->dir, tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec);
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
		if (fd >= 0) {
			lr->fd = fd;
			lr->written = 0;
			lr->synced = 0;
			lr->opened = ts.tv_sec;
			return 0;
		}
		if (errno != EEXIST) {
			snprintf(err, errlen, "cannot create log segment %s: %s", path, strerror(errno));
			return -1;
		}
		ts.tv_nsec++;
	}
	snprintf(err, errlen, "cannot find a free log segment name in %s", lr->dir);
	return -1;
}

/* Writes the buffer to the current segment (a new one when the size or
 * age limit is reached: records are not split across segments). */
int logrec_flush(struct logrec *lr, char *err, size_t errlen)
{
	if (!lr->dir || lr->buf.len == 0)
		return 0;
	int rc = 0;
	if (lr->fd >= 0 && (lr->written + lr->buf.len > lr->max_file_size ||
			    (lr->max_segment_duration > 0 &&
			     (double)(time(NULL) - lr->opened) >= lr->max_segment_duration))) {
		close(lr->fd);
		lr->fd = -1;
	}
	if (lr->fd < 0 && open_segment(lr, err, errlen) != 0) {
		rc = -1;
	} else {
		size_t done = 0;
		while (done < lr->buf.len) {
			ssize_t w = write(lr->fd, lr->buf.p + done, lr->buf.len - done);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				snprintf(err, errlen, "log write: %s", w < 0 ? strerror(errno) : "short write");
				rc = -1;
				break;
			}
			done += (size_t)w;
		}
		lr->written += done;
		if (lr->written - lr->synced >= LOGREC_SYNC_BYTES) {
			sync_file_range(lr->fd, (off64_t)lr->synced, (off64_t)(lr->written - lr->synced),
					SYNC_FILE_RANGE_WRITE);
			lr->synced = lr->written;
		}
	}
	lr->buf.len = 0; /* what could not be written is dropped, and reported */
	return rc;
}

/* A record was added to the buffer: written now if the buffer is full (or
 * nobody flushes later), else a flush is asked for. */
static int logrec_written(struct logrec *lr, bool was_empty, char *err, size_t errlen)
{
	if (lr->buf.len >= LOGREC_BUF_MAX || (lr->max_file_size && lr->buf.len >= lr->max_file_size))
		return logrec_flush(lr, err, errlen);
	if (was_empty) {
		if (!lr->want_flush)
			return logrec_flush(lr, err, errlen); /* nobody flushes later: now */
		lr->want_flush(lr->want_flush_arg);
	}
	return 0;
}

