/* Diagnostic log (not the JSON log records): one line per event with the
 * program name, pid, level and text, to stderr or to syslog when daemonized.
 * Levels follow blame: FATAL (this process cannot go on), WARN (our side or
 * the environment), INFO (client misbehaviour, notable events), DEBUG. */
#ifndef KUMO_LOG_H
#define KUMO_LOG_H
#include <stddef.h>

enum klog_level { KLOG_FATAL = 0, KLOG_WARN = 1, KLOG_INFO = 2, KLOG_DEBUG = 3 };

void log_init(const char *ident);
void log_set_level(enum klog_level level);
/* parse "fatal|warn|info|debug"; -1 when unknown */
int log_level_parse(const char *s);
void log_use_syslog(int on);
void log_msg(enum klog_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* logs then exits 1 */
void log_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Copies untrusted text into out (capped, non-printables as \xNN). */
const char *log_escape(const char *in, size_t len, char *out, size_t outlen);

#define log_warn(...)  log_msg(KLOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(KLOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(KLOG_DEBUG, __VA_ARGS__)

#endif
