/*
 * End-to-end test harness: runs the real bin/kumod on a loopback port and
 * drives it with a small SMTP client, from Check tests.
 *
 * A test makes an env (a fresh temp dir and a free port), writes a policy
 * into it, starts kumod (in its own process group), talks SMTP to it, looks
 * at the spool and log files it left, and stops it.  Every helper that can
 * fail fails the Check test itself, with the caller's file and line and a
 * message showing what was expected and what came instead (plus the tail of
 * the SMTP transcript and of kumod's output).
 *
 * Cleanup: a passing test calls harness_env_free(), which stops kumod and
 * removes the temp dir.  A failure raised by a harness helper first SIGKILLs
 * the process group of every kumod the failing process started (the temp dir
 * is kept and named in the message).  Check ends a failed test with _exit()
 * (no atexit) and a timed-out one with SIGKILL, so a plain ck_assert failure
 * or a timeout leaves kumod running: each start is recorded in a registry
 * dir, and the tcase's unchecked teardown (in the runner process) SIGKILLs
 * whatever is left there.  Use harness_tcase() to get that wiring.
 *
 * Run as root, the harness adds "--user $KUMO_E2E_USER" (default nobody) to
 * every kumod it starts with --policy (but not --validate), since kumod will
 * not run as root without one, and makes the temp dir world-searchable.
 *
 * Environment: KUMO_BIN (directory holding kumod; default <repo>/bin, where
 * <repo> is $KUMO_SRC or the cwd), KUMO_E2E_KEEP=1 keeps temp dirs,
 * KUMO_E2E_USER as above.
 */
#ifndef HARNESS_H
#define HARNESS_H

#include <stddef.h>
#include <sys/types.h>
#include <check.h>
#include <cjson/cJSON.h>

#include "smtpc.h"

/* Generous, for a noisy 2-core machine and sanitizer builds. */
#define HARNESS_TCASE_TIMEOUT 60   /* seconds, per test */
#define HARNESS_START_TIMEOUT 10   /* seconds until the port accepts */
#define HARNESS_STOP_TIMEOUT 15    /* seconds between SIGTERM and SIGKILL */
#define HARNESS_LOG_TIMEOUT 10     /* seconds to wait for a log record */

/*
 * The policy every test starts from.  @DIR@ is the env's temp dir, @PORT@
 * its port, @EXTRA@ extra start_esmtp_listener fields (each ending with ",").
 * Its resolver is a closed loopback port, so the queue manager cannot find a
 * next hop: accepted messages stay in the spool (TransientFailure records)
 * for the tests that look at them.  Delivery tests route to a sink instead.
 */
#define HARNESS_POLICY_TEMPLATE                                              \
    "local kumo = require 'kumo'\n"                                          \
    "kumo.on('init', function()\n"                                           \
    "  kumo.define_spool { name = 'data', path = '@DIR@/spool/data' }\n"     \
    "  kumo.define_spool { name = 'meta', path = '@DIR@/spool/meta' }\n"     \
    "  kumo.configure_local_logs { log_dir = '@DIR@/logs' }\n"               \
    "  kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' } }\n"  \
    "  kumo.start_esmtp_listener { listen = '127.0.0.1:@PORT@',"             \
    " hostname = 'mx.test.example', @EXTRA@ }\n"                             \
    "end)\n"

#define HARNESS_HOSTNAME "mx.test.example"

struct harness_env {
    char dir[512];          /* the test's temp dir (mkdtemp) */
    char policy[600];       /* policy file path (dir/policy.lua) */
    char out[600];          /* kumod's captured stdout+stderr, this instance */
    int port;               /* loopback port for the listener */
    pid_t pid;              /* kumod pid == its pgid; 0 when not running */
    pid_t pgid;             /* its process group, until everything in it is gone */
    pid_t owner;            /* process that started kumod */
    int instance;           /* how many times kumod was started */
    int last_status;        /* wait status of the last kumod that ended */
    char leftover[512];     /* processes found in the group after kumod exited */
};

/* --- Check wiring --------------------------------------------------------- */

/* A tcase with the e2e timeout and the registry fixture (see above). */
TCase *harness_tcase(const char *name);
/* Runs a one-suite runner with CK_NORMAL; returns the exit status for main. */
int harness_run_suite(Suite *s);

/* --- env, files, ports ---------------------------------------------------- */

/* A fresh temp dir with a free port chosen.  Caller frees. */
#define harness_env_new() harness_env_new_at(__FILE__, __LINE__)
struct harness_env *harness_env_new_at(const char *file, int line);
/* Stops kumod if running, removes the temp dir, frees.  NULL is fine. */
void harness_env_free(struct harness_env *env);

/* A free loopback port from 20000-31999, below the kernel's ephemeral
 * range, so that no program started on port 0 is handed it later. */
int harness_free_port(void);

/* Sleeps ms milliseconds (through signals); the monotonic clock in seconds. */
void harness_pause_ms(long ms);
double harness_now_s(void);

/* Substitutes @DIR@, @PORT@ and @EXTRA@ (with extra, may be NULL). Caller frees. */
char *harness_subst(const struct harness_env *env, const char *tmpl, const char *extra);
/* Writes the substituted template to env->policy. */
#define harness_write_policy(env, tmpl, extra) \
    harness_write_policy_at(__FILE__, __LINE__, env, tmpl, extra)
void harness_write_policy_at(const char *file, int line, struct harness_env *env,
                             const char *tmpl, const char *extra);
/* Writes a file under env->dir (rel path; parent must exist). */
#define harness_write_file(env, rel, data, len) \
    harness_write_file_at(__FILE__, __LINE__, env, rel, data, len)
void harness_write_file_at(const char *file, int line, const struct harness_env *env,
                           const char *rel, const char *data, size_t len);
/* Whole file into a NUL-terminated malloc'd buffer; NULL if it can't be read. */
char *harness_slurp(const char *path, size_t *len);
/* Joins env->dir and rel into a static-free malloc'd path. */
char *harness_path(const struct harness_env *env, const char *rel);

/* The path of the program prog (kumod, kumoctl, kumo-policyd, ...) in the
 * KUMO_BIN directory (see the top), malloc'd. */
char *harness_bin_path(const char *prog);

/* --- kumod lifecycle ------------------------------------------------------ */

/*
 * Starts $KUMO_BIN/kumod --policy env->policy --workers 2 [--user nobody] and
 * waits until the port accepts connections; fails the test with kumod's
 * output if it exits first or the port stays closed.
 */
#define harness_start(env) harness_start_at(__FILE__, __LINE__, env)
void harness_start_at(const char *file, int line, struct harness_env *env);
/* harness_write_policy(HARNESS_POLICY_TEMPLATE, extra) + harness_start. */
#define harness_start_default(env, extra) \
    harness_start_default_at(__FILE__, __LINE__, env, extra)
void harness_start_default_at(const char *file, int line, struct harness_env *env,
                              const char *extra);

/* Forks kumod with argv (argv[0] ignored, replaced by the binary path),
 * output to env->out, in its own process group.  Does not wait. */
#define harness_spawn(env, argv) harness_spawn_at(__FILE__, __LINE__, env, argv)
pid_t harness_spawn_at(const char *file, int line, struct harness_env *env,
                       const char *const argv[]);

/*
 * Runs kumod with argv to completion (up to timeout_s; then SIGKILLs the
 * group and fails the test).  Returns the wait status; *output (may be NULL)
 * gets the captured output, caller frees.  Leftovers as for harness_stop.
 */
#define harness_run(env, argv, timeout_s, output) \
    harness_run_at(__FILE__, __LINE__, env, argv, timeout_s, output)
int harness_run_at(const char *file, int line, struct harness_env *env,
                   const char *const argv[], int timeout_s, char **output);

/*
 * Stops kumod: SIGTERM to its pid, waits up to HARNESS_STOP_TIMEOUT s, then
 * SIGKILL of the process group.  Then gives the group 2 s to empty, notes
 * what is still in it in env->leftover, and SIGKILLs that.  Returns the wait
 * status, or -1 if it was not running.
 * *killed (may be NULL) says whether SIGKILL was needed.
 */
int harness_stop(struct harness_env *env, int *killed);
/* kill(-pgid, SIGKILL) and reap: the whole tree dies at once. */
void harness_kill9(struct harness_env *env);
/* Waits up to timeout_s for kumod to exit on its own; 1 and *status if it
 * did, 0 if still running.  Does not signal anything. */
int harness_wait_exit(struct harness_env *env, int timeout_s, int *status);

/* Human-readable wait status ("exit 0", "signal 9"). Static buffer. */
const char *harness_status_str(int status);

/* kumod's captured output (this instance); caller frees; never NULL. */
char *harness_output(const struct harness_env *env);
/* Waits up to timeout_s for the output to match an extended regex. */
int harness_output_wait_regex(const struct harness_env *env, const char *regex,
                              int timeout_s);
/* Whether text matches the extended regex (REG_ICASE if icase). */
int harness_regex_match(const char *text, const char *regex, int icase);

/* Pids (other than zombies) in process group pgid; returns count and
 * describes them in desc (may be NULL). */
int harness_pgrp_live(pid_t pgid, char *desc, size_t desc_len);
/* Children of pid whose comm equals name; fills pids (up to max). */
int harness_children(pid_t pid, const char *name, pid_t *pids, int max);
/* harness_children once there are want of them, or after timeout_s: kumod
 * opens its listeners before its helpers have exec'd (until then they are
 * named kumod), so a test that looks for them right after harness_start
 * must wait.  Returns how many there are. */
int harness_wait_children(pid_t pid, const char *name, int want, pid_t *pids, int max, int timeout_s);
/* Describes every child of pid ("123 kumo-smtpd, ..."). */
void harness_children_desc(pid_t pid, char *desc, size_t desc_len);

/* 1 if something accepts connections on 127.0.0.1:port. */
int harness_port_open(int port);

/* --- spool and logs ------------------------------------------------------- */

/* Regular files under env->dir/rel, recursively, as paths relative to it;
 * NULL-terminated, caller frees with harness_strv_free. */
char **harness_list_files(const struct harness_env *env, const char *rel);
void harness_strv_free(char **v);
size_t harness_strv_len(char *const *v);

/*
 * A message in the spool under env->dir/spool/{data,meta}, found the way
 * kumo-qmgr finds it (the spool library's spool_list: whole records only,
 * the newest record of the id, not done).  With read_bytes, data and meta
 * hold its bytes and meta text (NUL-terminated, checked against their CRCs).
 * data_path/meta_path are the files holding them (the meta text may be in
 * the segment's journal) at data_off/meta_off.
 */
struct harness_spooled {
    char *data, *meta;
    size_t dlen, mlen;
    char *data_path, *meta_path;
    unsigned long long data_off, meta_off;
};
/* 1 and *out filled (free it with harness_spooled_free), or 0 when the
 * message is not in the spool. */
int harness_spool_lookup(const struct harness_env *env, const char *id, int read_bytes,
                         struct harness_spooled *out);
/* The same for a spool elsewhere (data and meta directories). */
int harness_spool_lookup_in(const char *data, const char *meta, const char *id, int read_bytes,
                            struct harness_spooled *out);
void harness_spooled_free(struct harness_spooled *s);
/* The ids in the spool, one per line, for failure messages. */
char *harness_spool_ids(const struct harness_env *env);

/* Every JSON line of every file under env->dir/logs (zstd segments are
 * decompressed with zstd -dc).  Returns a cJSON array; *bad counts lines
 * that did not parse (may be NULL). */
cJSON *harness_logs_read(const struct harness_env *env, int *bad);
/*
 * Waits up to HARNESS_LOG_TIMEOUT s for a record whose "type" is type and,
 * if id is non-NULL, whose "id" is id.  Returns a detached copy (caller
 * cJSON_Delete's) or NULL.
 */
cJSON *harness_log_wait(const struct harness_env *env, const char *type, const char *id);
/* Same, but with a predicate instead of the id. */
cJSON *harness_log_wait_pred(const struct harness_env *env, const char *type,
                             int (*pred)(const cJSON *rec, void *arg), void *arg);
/* The string field of a JSON object, or NULL. */
const char *harness_json_str(const cJSON *obj, const char *name);
/* A short rendering of the records in the log dir, for failure messages. */
char *harness_logs_summary(const struct harness_env *env);

/* Runs KUMO_BIN/kumoctl --socket <dir>/spool/kumod.sock ARGS (a shell
 * word list); its exit status, and its output (stdout+stderr, caller
 * frees) in *out when out is not NULL. */
int harness_kumoctl(const struct harness_env *env, const char *args, char **out);

/*
 * Test tools from t/tools/ ($KUMO_TOOLS, default build/t): starts
 * "<tool> -p PORT ARGS..." (port 0: the tool picks), waits for its
 * "ready PORT" line and returns its pid (own process group), the port in
 * *port.  Fails the test when it does not come up within 10 s.  Stop it
 * with harness_tool_stop (SIGTERM, then SIGKILL after 5 s; reaped).
 */
#define harness_tool_start(name, port, argv) harness_tool_start_at(__FILE__, __LINE__, name, port, argv)
pid_t harness_tool_start_at(const char *file, int line, const char *name, int *port, const char *const argv[]);
void harness_tool_stop(pid_t pid);

/* Whether the memory [hay, hay+len) contains the NUL-terminated needle. */
int harness_contains(const char *hay, size_t len, const char *needle);

/* Fails the test with file/line and a printf-formatted message. */
void harness_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
/* Appends kumod's output tail and the test dir to a message, for failures. */
char *harness_context(const struct harness_env *env);

#define HFAIL(...) harness_fail(__FILE__, __LINE__, __VA_ARGS__)

/* --- /proc probes for the fault suite ------------------------------------ */

/* One process's resident memory, from /proc/<pid>/status VmRSS. */
struct harness_rss {
    pid_t pid;
    char comm[64];
    long kb;
};
/* Sum of VmRSS (kB) over the live processes in process group pgid (kumod
 * and every helper it started); fills per[0..max) and *n (may be NULL). */
long harness_pgrp_rss_kb(pid_t pgid, struct harness_rss *per, int max, int *n);
/* Which of pids[0..n) holds the server side of the loopback TCP connection
 * 127.0.0.1:port <- 127.0.0.1:peer_port (from /proc/net/tcp and
 * /proc/<pid>/fd); 0 if none does. */
pid_t harness_socket_owner(const pid_t *pids, int n, int port, int peer_port);
/* The four ids of a "Uid:" or "Gid:" line (field) of /proc/<pid>/status:
 * real, effective, saved, filesystem.  1 if found, 0 if pid is gone. */
int harness_proc_ids(pid_t pid, const char *field, unsigned ids[4]);

#endif
