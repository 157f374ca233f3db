/* log: diagnostic lines to stderr (foreground) or syslog (daemonized).
 * A single write() per line keeps lines from several processes whole. */
#include "lib/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static char log_ident[32] = "kumo";
static enum klog_level log_level = KLOG_INFO;
static int log_syslog;

static const char *const level_names[] = { "fatal", "warn", "info", "debug" };

void log_init(const char *ident)
{
	snprintf(log_ident, sizeof log_ident, "%s", ident);
	const char *env = getenv("KUMOD_LOG");
	if (env) {
		int l = log_level_parse(env);
		if (l >= 0)
			log_level = (enum klog_level)l;
	}
}

void log_set_level(enum klog_level level)
{
	log_level = level;
}

int log_level_parse(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (strcasecmp(s, level_names[i]) == 0)
			return i;
	if (strcasecmp(s, "error") == 0)
		return KLOG_WARN;
	return -1;
}

void log_use_syslog(int on)
{
	if (on && !log_syslog)
		openlog(log_ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
	log_syslog = on;
}

static void log_vmsg(enum klog_level level, const char *fmt, va_list ap)
{
	char text[2048];
	vsnprintf(text, sizeof text, fmt, ap);
	if (log_syslog) {
		static const int prio[] = { LOG_CRIT, LOG_WARNING, LOG_INFO, LOG_DEBUG };
		syslog(prio[level], "%s: %s", level_names[level], text);
		return;
	}
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	char line[2300];
	int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d]: %s: %s\n",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, log_ident, (int)getpid(),
			 level_names[level], text);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof line) {
		n = sizeof line - 1;
		line[n - 1] = '\n';
	}
	ssize_t w = write(2, line, (size_t)n);
	(void)w;
}

void log_msg(enum klog_level level, const char *fmt, ...)
{
	if (level > log_level)
		return;
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

void log_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(KLOG_FATAL, fmt, ap);
	va_end(ap);
	exit(1);
}

const char *log_escape(const char *in, size_t len, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;
	if (outlen == 0)
		return out;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c >= 0x20 && c < 0x7f && c != '\\') {
			if (o + 1 >= outlen)
				break;
			out[o++] = (char)c;
		} else {
			if (o + 4 >= outlen)
				break;
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
	return out;
}
