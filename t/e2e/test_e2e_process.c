/*
 * End-to-end process behaviour of bin/kumod: a message acknowledged with 250
 * survives kill -9 of the whole process tree and is found again at restart;
 * SIGTERM answers idle sessions 421 and exits 0; dead workers and policyd
 * are restarted; bad start-up input gives a one-line error, a non-zero exit
 * and nothing left running or listening; --validate, --version, --help.
 */
#include "expect.h"
#include "harness.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BANNER "220 " HARNESS_HOSTNAME " KumoMTA"
#define GO_AHEAD "354 Send body; end with CRLF.CRLF"
#define BYE "221 So long, and thanks for all the fish!"
#define SHUTDOWN "421 4.3.2 " HARNESS_HOSTNAME " shutting down"

/* Whether 127.0.0.1:port can be bound again (SO_REUSEADDR, as a restarted
 * server would), i.e. nobody listens on it any more. */
static int port_bindable(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { 0 };
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    int ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 1) == 0;
    close(fd);
    return ok;
}

/* A listening socket on 127.0.0.1:port, held by the test. */
static int hold_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = { 0 };
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    ck_assert_msg(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 8) == 0,
                  "cannot hold port %d: %s", port, strerror(errno));
    return fd;
}

static struct smtpc *session(struct harness_env *env)
{
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    smtpc_cmd(c, "EHLO client.example");
    free(smtpc_expect_code(c, 250));
    return c;
}

/* ---- durability --------------------------------------------------------- */

START_TEST(test_kill9_durability)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction(c, "a@example.com", rcpts, "Subject: durable\r\n\r\ndurable-marker\r\n",
                      ids);
    /* the 250 is in: kill the whole tree at once, no chance to flush */
    harness_kill9(env);
    smtpc_close(c);
    const char *meta[] = { "a@example.com", "b@example.net", NULL };
    free(expect_spooled(env, ids[0], "durable-marker\r\n", meta, NULL));

    harness_start(env);
    if (!harness_output_wait_regex(env, "recovered 1 message", 10)) {
        char *ctx = harness_context(env);
        ck_abort_msg("restarted kumod did not log /recovered 1 message/ within 10 s (message"
                     " %s)\n%s", ids[0], ctx);
    }
    free(expect_spooled(env, ids[0], "durable-marker\r\n", meta, NULL));
    /* and it serves again */
    c = session(env);
    smtpc_chat(c, "QUIT", BYE);
    smtpc_close(c);
    int killed = 0;
    int st = harness_stop(env, &killed);
    ck_assert_msg(!killed && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "kumod did not exit 0 on SIGTERM: %s%s", harness_status_str(st),
                  killed ? " (needed SIGKILL)" : "");
    /* still there after a clean stop too */
    free(expect_spooled(env, ids[0], "durable-marker\r\n", meta, NULL));
    harness_env_free(env);
}
END_TEST

/* ---- SIGTERM ------------------------------------------------------------ */

START_TEST(test_sigterm_idle_sessions)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *a = session(env);
    struct smtpc *b = smtpc_connect(env, env->port, NULL);
    smtpc_expect(b, BANNER);
    pid_t pgid = env->pgid;
    ck_assert_int_eq(kill(env->pid, SIGTERM), 0);
    smtpc_expect(a, SHUTDOWN);
    smtpc_expect_eof(a, SMTPC_TIMEOUT_MS);
    smtpc_expect(b, SHUTDOWN);
    smtpc_expect_eof(b, SMTPC_TIMEOUT_MS);
    smtpc_close(a);
    smtpc_close(b);
    int st = 0;
    if (!harness_wait_exit(env, HARNESS_STOP_TIMEOUT, &st)) {
        char *ctx = harness_context(env);
        ck_abort_msg("kumod still running %d s after SIGTERM with only idle sessions\n%s",
                     HARNESS_STOP_TIMEOUT, ctx);
    }
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kumod ended with %s after SIGTERM"
                  " (want exit 0)\n%s", harness_status_str(st), harness_context(env));
    harness_stop(env, NULL); /* reaps the group, noting leftovers */
    ck_assert_msg(!env->leftover[0], "processes of kumod's group %d still running after it"
                  " exited: %s", (int)pgid, env->leftover);
    ck_assert_msg(!harness_port_open(env->port), "port %d still accepts connections after"
                  " kumod exited", env->port);
    ck_assert_msg(port_bindable(env->port), "port %d cannot be bound after kumod exited",
                  env->port);
    harness_env_free(env);
}
END_TEST

/* A transaction in flight at SIGTERM is finished (250), then the session,
 * now idle, gets the 421. */
START_TEST(test_sigterm_inflight_transaction)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
    smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
    smtpc_chat(c, "DATA", GO_AHEAD);
    smtpc_sendf(c, "Subject: in flight\r\n\r\nfirst half\r\n");
    ck_assert_int_eq(kill(env->pid, SIGTERM), 0);
    harness_pause_ms(1000);
    smtpc_sendf(c, "second half inflight-marker\r\n.\r\n");
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);
    smtpc_expect(c, SHUTDOWN);
    smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
    smtpc_close(c);
    int st = 0;
    if (!harness_wait_exit(env, HARNESS_STOP_TIMEOUT, &st)) {
        char *ctx = harness_context(env);
        ck_abort_msg("kumod still running %d s after SIGTERM\n%s", HARNESS_STOP_TIMEOUT, ctx);
    }
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kumod ended with %s after SIGTERM"
                  " (want exit 0)", harness_status_str(st));
    harness_stop(env, NULL);
    ck_assert_msg(!env->leftover[0], "processes left after kumod exited: %s", env->leftover);
    free(expect_spooled(env, ids[0], "first half\r\nsecond half inflight-marker\r\n", NULL,
                        NULL));
    harness_env_free(env);
}
END_TEST

/* ---- supervision -------------------------------------------------------- */

/* Waits up to timeout_s for `want` children named name, none of them in
 * old[0..nold); returns how many there are. */
static int wait_children(pid_t parent, const char *name, int want, const pid_t *old, int nold,
                         pid_t *pids, int timeout_s)
{
    double end = harness_now_s() + timeout_s;
    int n = 0;
    for (;;) {
        n = harness_children(parent, name, pids, 16);
        int fresh = 0;
        for (int i = 0; i < n && i < 16; i++) {
            int is_old = 0;
            for (int j = 0; j < nold; j++)
                is_old |= pids[i] == old[j];
            fresh += !is_old;
        }
        if (fresh == want && n == want)
            return n;
        if (harness_now_s() >= end)
            return n;
        harness_pause_ms(100);
    }
}

/* One whole transaction without failing the test; 1 if it got its 250. */
static int try_transaction(struct harness_env *env)
{
    struct smtpc *c = smtpc_try_connect(env, env->port, NULL);
    if (!c)
        return 0;
    const char *cmds[] = { NULL, "MAIL FROM:<a@example.com>\r\n", "RCPT TO:<b@example.net>\r\n",
                           "DATA\r\n", "Subject: retry\r\n\r\nafter restart\r\n.\r\n" };
    const int codes[] = { 220, 250, 250, 354, 250 };
    int ok = 1;
    for (int i = 0; i < 5 && ok; i++) {
        if (cmds[i] && smtpc_try_send(c, cmds[i], strlen(cmds[i])) != 0)
            ok = 0;
        else
            ok = smtpc_read_reply(c, NULL, 5000) == codes[i];
    }
    smtpc_close(c);
    return ok;
}

START_TEST(test_worker_restart)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    pid_t old[16], now[16];
    int n = wait_children(env->pid, "kumo-smtpd", 2, NULL, 0, old, 10);
    char desc[512];
    harness_children_desc(env->pid, desc, sizeof desc);
    ck_assert_msg(n == 2, "want 2 kumo-smtpd children of kumod (--workers 2), found %d;"
                  " its children: %s", n, desc);
    for (int i = 0; i < 2; i++)
        kill(old[i], SIGKILL);
    n = wait_children(env->pid, "kumo-smtpd", 2, old, 2, now, 30);
    harness_children_desc(env->pid, desc, sizeof desc);
    ck_assert_msg(n == 2 && now[0] != old[0] && now[0] != old[1] && now[1] != old[0] &&
                  now[1] != old[1], "after SIGKILL of both workers (%d, %d), kumod did not"
                  " start 2 new ones within 30 s; its children: %s\n%s", (int)old[0],
                  (int)old[1], desc, harness_context(env));
    double end = harness_now_s() + 20;
    while (!try_transaction(env) && harness_now_s() < end)
        harness_pause_ms(200);
    struct smtpc *c = session(env);
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction(c, "a@example.com", rcpts, "Subject: w\r\n\r\nnew worker\r\n", ids);
    smtpc_close(c);
    harness_env_free(env);
}
END_TEST

/* The "spool_commits" object of `kumoctl status` (the caller frees it). */
static cJSON *commit_stats(struct harness_env *env)
{
    char *out = NULL;
    ck_assert_int_eq(harness_kumoctl(env, "status", &out), 0);
    cJSON *doc = cJSON_Parse(out);
    ck_assert_msg(doc != NULL, "kumoctl status is not JSON: %s", out);
    cJSON *c = cJSON_DetachItemFromObjectCaseSensitive(doc, "spool_commits");
    ck_assert_msg(cJSON_IsObject(c), "kumoctl status has no spool_commits: %s", out);
    cJSON_Delete(doc);
    free(out);
    return c;
}

static double stat_num(const cJSON *c, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    ck_assert_msg(cJSON_IsNumber(v), "spool_commits.%s is not a number", key);
    return v->valuedouble;
}

/* kumoctl status sums the workers' group commits; one session sending one
 * message at a time makes one commit per message, and a worker restarted
 * after SIGKILL goes on adding to the sums. */
START_TEST(test_status_counts_commits)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    cJSON *c = commit_stats(env);
    ck_assert(stat_num(c, "commits") == 0 && stat_num(c, "messages") == 0);
    ck_assert(stat_num(c, "p50_ms") == 0 && stat_num(c, "mean_ms") == 0);
    cJSON_Delete(c);

    struct smtpc *s = session(env);
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    for (int i = 0; i < 5; i++)
        smtpc_transaction(s, "a@example.com", rcpts, "Subject: c\r\n\r\ncount me\r\n", ids);
    smtpc_close(s);
    c = commit_stats(env);
    ck_assert_int_eq((int)stat_num(c, "messages"), 5);
    ck_assert_int_eq((int)stat_num(c, "commits"), 5);
    ck_assert(stat_num(c, "messages_per_commit") == 1);
    ck_assert(stat_num(c, "failed") == 0);
    double p50 = stat_num(c, "p50_ms"), p99 = stat_num(c, "p99_ms"), p999 = stat_num(c, "p999_ms");
    double max = stat_num(c, "max_ms");
    ck_assert_msg(p50 > 0 && p50 <= p99 && p99 <= p999 && p999 <= max && stat_num(c, "mean_ms") > 0,
                  "p50 %g p99 %g p99.9 %g max %g", p50, p99, p999, max);
    cJSON_Delete(c);

    pid_t old[16], now[16];
    ck_assert_int_eq(wait_children(env->pid, "kumo-smtpd", 2, NULL, 0, old, 10), 2);
    for (int i = 0; i < 2; i++)
        kill(old[i], SIGKILL);
    ck_assert_int_eq(wait_children(env->pid, "kumo-smtpd", 2, old, 2, now, 30), 2);
    double end = harness_now_s() + 20;
    while (!try_transaction(env) && harness_now_s() < end)
        harness_pause_ms(200);
    c = commit_stats(env);
    ck_assert_msg(stat_num(c, "messages") >= 6, "messages %g after the restart",
                  stat_num(c, "messages"));
    cJSON_Delete(c);
    harness_env_free(env);
}
END_TEST

START_TEST(test_policyd_restart)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    pid_t old[16], now[16];
    int n = wait_children(env->pid, "kumo-policyd", 1, NULL, 0, old, 10);
    char desc[512];
    harness_children_desc(env->pid, desc, sizeof desc);
    ck_assert_msg(n == 1, "want 1 kumo-policyd child of kumod, found %d; its children: %s", n,
                  desc);
    kill(old[0], SIGKILL);
    n = wait_children(env->pid, "kumo-policyd", 1, old, 1, now, 30);
    harness_children_desc(env->pid, desc, sizeof desc);
    ck_assert_msg(n == 1 && now[0] != old[0], "kumod did not restart kumo-policyd (was %d)"
                  " within 30 s; its children: %s\n%s", (int)old[0], desc, harness_context(env));
    double end = harness_now_s() + 20;
    int ok = 0;
    while (!(ok = try_transaction(env)) && harness_now_s() < end)
        harness_pause_ms(200);
    if (!ok) {
        /* show what a session looks like now */
        struct smtpc *c = session(env);
        const char *rcpts[] = { "b@example.net", NULL };
        char ids[1][33];
        smtpc_transaction(c, "a@example.com", rcpts, "Subject: p\r\n\r\nnew policyd\r\n", ids);
        smtpc_close(c);
    }
    harness_env_free(env);
}
END_TEST

/* ---- start-up errors ---------------------------------------------------- */

START_TEST(test_startup_missing_policy)
{
    struct harness_env *env = harness_env_new();
    char *missing = harness_path(env, "nope.lua");
    expect_startup_failure(env, missing, "nope\\.lua", 1);
    free(missing);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_syntax_error)
{
    struct harness_env *env = harness_env_new();
    harness_write_policy(env, "local kumo = require 'kumo'\n"
                              "kumo.on('init', function()\n"
                              "  local x = = 1\n"
                              "end)\n", NULL);
    expect_startup_failure(env, NULL, "policy\\.lua:3:", 1);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_runtime_error)
{
    struct harness_env *env = harness_env_new();
    harness_write_policy(env, "local kumo = require 'kumo'\n"
                              "kumo.on('init', function()\n"
                              "  error('boom')\n"
                              "end)\n", NULL);
    expect_startup_failure(env, NULL, "policy\\.lua:3:.*boom", 1);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_unknown_listener_param)
{
    struct harness_env *env = harness_env_new();
    harness_write_policy(env, HARNESS_POLICY_TEMPLATE, "bannr = 'x',");
    expect_startup_failure(env, NULL, "bannr", 1);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_no_spool)
{
    struct harness_env *env = harness_env_new();
    harness_write_policy(env, "local kumo = require 'kumo'\n"
                              "kumo.on('init', function()\n"
                              "  kumo.configure_local_logs { log_dir = '@DIR@/logs' }\n"
                              "  kumo.start_esmtp_listener { listen = '127.0.0.1:@PORT@',"
                              " hostname = 'mx.test.example' }\n"
                              "end)\n", NULL);
    expect_startup_failure(env, NULL, "spool", 1);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_port_in_use)
{
    struct harness_env *env = harness_env_new();
    harness_write_policy(env, HARNESS_POLICY_TEMPLATE, NULL);
    int fd = hold_port(env->port);
    char re[64];
    snprintf(re, sizeof re, "in use|%d", env->port);
    expect_startup_failure(env, NULL, re, 0);
    close(fd);
    ck_assert_msg(!harness_port_open(env->port), "something listens on port %d after kumod"
                  " failed", env->port);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_unwritable_spool)
{
    struct harness_env *env = harness_env_new();
    harness_write_file(env, "afile", "not a directory\n", 16);
    harness_write_policy(env, "local kumo = require 'kumo'\n"
                              "kumo.on('init', function()\n"
                              "  kumo.define_spool { name = 'data', path = '@DIR@/afile/spool' }\n"
                              "  kumo.define_spool { name = 'meta', path = '@DIR@/spool/meta' }\n"
                              "  kumo.configure_local_logs { log_dir = '@DIR@/logs' }\n"
                              "  kumo.start_esmtp_listener { listen = '127.0.0.1:@PORT@',"
                              " hostname = 'mx.test.example' }\n"
                              "end)\n", NULL);
    expect_startup_failure(env, NULL, "afile", 1);
    harness_env_free(env);
}
END_TEST

/* ---- command line ------------------------------------------------------- */

START_TEST(test_validate_good)
{
    struct harness_env *env = harness_env_new();
    harness_write_policy(env, HARNESS_POLICY_TEMPLATE, NULL);
    const char *argv[] = { "kumod", "--validate", "--policy", env->policy, NULL };
    char *out = NULL;
    int st = harness_run(env, argv, 15, &out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kumod --validate on a good policy:"
                  " %s (want exit 0)\noutput:\n%s", harness_status_str(st), out);
    ck_assert_msg(!env->leftover[0], "processes left after --validate: %s", env->leftover);
    ck_assert_msg(!harness_port_open(env->port), "port %d open after --validate", env->port);
    free(out);
    harness_env_free(env);
}
END_TEST

START_TEST(test_validate_bad)
{
    struct harness_env *env = harness_env_new();
    harness_write_policy(env, "local kumo = require 'kumo'\n"
                              "kumo.on('init', function()\n"
                              "  local x = = 1\n"
                              "end)\n", NULL);
    const char *argv[] = { "kumod", "--validate", "--policy", env->policy, NULL };
    char *out = NULL;
    int st = harness_run(env, argv, 15, &out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "kumod --validate on a broken policy:"
                  " %s (want exit 1)\noutput:\n%s", harness_status_str(st), out);
    ck_assert_msg(harness_regex_match(out, "policy\\.lua:3:", 0), "kumod --validate should"
                  " print the Lua error (policy.lua:3: ...); output:\n%s", out);
    free(out);

    harness_write_policy(env, "local kumo = require 'kumo'\n"
                              "kumo.on('init', function()\n"
                              "  error('validate-boom')\n"
                              "end)\n", NULL);
    st = harness_run(env, argv, 15, &out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "kumod --validate with an error in"
                  " init: %s (want exit 1)\noutput:\n%s", harness_status_str(st), out);
    ck_assert_msg(harness_regex_match(out, "validate-boom", 0), "kumod --validate should"
                  " print the error raised in init; output:\n%s", out);
    free(out);
    harness_env_free(env);
}
END_TEST

START_TEST(test_version)
{
    struct harness_env *env = harness_env_new();
    const char *argv[] = { "kumod", "--version", NULL };
    char *out = NULL;
    int st = harness_run(env, argv, 15, &out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kumod --version: %s\noutput:\n%s",
                  harness_status_str(st), out);
    ck_assert_msg(harness_regex_match(out, "[0-9]", 0), "kumod --version printed no version:"
                  "\n%s", out);
    free(out);
    harness_env_free(env);
}
END_TEST

START_TEST(test_help)
{
    struct harness_env *env = harness_env_new();
    const char *argv[] = { "kumod", "--help", NULL };
    char *out = NULL;
    int st = harness_run(env, argv, 15, &out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kumod --help: %s\noutput:\n%s",
                  harness_status_str(st), out);
    ck_assert_msg(strstr(out, "--policy"), "kumod --help does not mention --policy:\n%s", out);
    free(out);
    harness_env_free(env);
}
END_TEST

START_TEST(test_unknown_option)
{
    struct harness_env *env = harness_env_new();
    const char *argv[] = { "kumod", "--no-such-option", NULL };
    char *out = NULL;
    int st = harness_run(env, argv, 15, &out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0 && out[0], "kumod --no-such-option"
                  " should fail with a message; got %s, output:\n%s", harness_status_str(st),
                  out);
    free(out);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_policy_writable_by_others)
{
    struct harness_env *env = harness_env_new();
    harness_write_policy(env, HARNESS_POLICY_TEMPLATE, NULL);
    ck_assert_int_eq(chmod(env->policy, 0666), 0);
    expect_startup_failure(env, NULL, "writable by other users", 1);
    harness_env_free(env);
}
END_TEST

/* A second kumod on the same spool is refused while the first runs. */
START_TEST(test_startup_spool_locked)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct harness_env *other = harness_env_new();
    /* same spool directories, another port */
    char *tmpl = harness_subst(env, HARNESS_POLICY_TEMPLATE, NULL);
    char port[16], other_port[16];
    snprintf(port, sizeof port, ":%d'", env->port);
    snprintf(other_port, sizeof other_port, ":%d'", other->port);
    char *at = strstr(tmpl, port);
    ck_assert_ptr_nonnull(at);
    char *text = NULL;
    ck_assert(asprintf(&text, "%.*s%s%s", (int)(at - tmpl), tmpl, other_port, at + strlen(port)) > 0);
    harness_write_file(other, "policy.lua", text, strlen(text));
    free(text);
    free(tmpl);
    expect_startup_failure(other, NULL, "locked by pid [0-9]+", 1);
    harness_env_free(other);
    harness_stop(env, NULL);
    harness_env_free(env);
}
END_TEST

/* Started as root, every process of the relay runs as --user. */
START_TEST(test_children_not_root)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    if (geteuid() != 0) {
        harness_stop(env, NULL);
        harness_env_free(env);
        return; /* nothing to check: not started as root */
    }
    pid_t pids[16];
    int n = 0;
    /* the port opens before the workers are forked, and a child is named
     * after its program only once it has exec'd: wait for all of them */
    int workers = 0, policyd = 0, qmgr = 0;
    for (int tries = 0; tries < 100; tries++) {
        n = workers = harness_children(env->pid, "kumo-smtpd", pids, 16);
        n += policyd = harness_children(env->pid, "kumo-policyd", pids + n, 16 - n);
        n += qmgr = harness_children(env->pid, "kumo-qmgr", pids + n, 16 - n);
        if (workers >= 1 && policyd == 1 && qmgr == 1)
            break;
        usleep(100000);
    }
    ck_assert_msg(workers >= 1 && policyd == 1 && qmgr == 1, "children: %d workers, %d policyd, %d qmgr",
                  workers, policyd, qmgr);
    pids[n++] = env->pid;
    for (int i = 0; i < n; i++) {
        char path[64], line[256];
        snprintf(path, sizeof path, "/proc/%d/status", (int)pids[i]);
        FILE *f = fopen(path, "r");
        ck_assert_ptr_nonnull(f);
        unsigned ruid = 0, euid = 0;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "Uid: %u %u", &ruid, &euid) == 2)
                break;
        fclose(f);
        ck_assert_msg(ruid != 0 && euid != 0, "pid %d runs as uid %u/%u", (int)pids[i], ruid, euid);
    }
    harness_stop(env, NULL);
    harness_env_free(env);
}
END_TEST

/* ---- systemd readiness (sd_notify) ------------------------------------------ */

/* Waits up to secs for a datagram on fd containing want; 1 if seen. */
static int notify_wait(int fd, const char *want, int secs, char *last, size_t lastlen)
{
    time_t end = time(NULL) + secs;
    while (time(NULL) < end) {
        struct timeval tv = { 0, 200000 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[512];
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n <= 0)
            continue;
        buf[n] = 0;
        snprintf(last, lastlen, "%s", buf);
        if (strstr(buf, want))
            return 1;
    }
    return 0;
}

START_TEST(test_sd_notify)
{
    struct harness_env *env = harness_env_new();
    char *path = harness_path(env, "notify.sock");
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    chmod(path, 0777);  /* kumod may run as another user */
    setenv("NOTIFY_SOCKET", path, 1);
    harness_start_default(env, NULL);
    char last[512] = "";
    ck_assert_msg(notify_wait(fd, "READY=1", 10, last, sizeof last), "no READY=1 (last: '%s')", last);
    char want[64];
    snprintf(want, sizeof want, "MAINPID=%d", (int)env->pid);
    ck_assert_msg(strstr(last, want), "READY=1 names kumod's pid: '%s'", last);
    char *out = NULL;
    ck_assert_int_eq(harness_kumoctl(env, "reload", &out), 0);
    free(out);
    ck_assert_msg(notify_wait(fd, "RELOADING=1", 10, last, sizeof last), "no RELOADING=1 (last: '%s')", last);
    ck_assert_msg(notify_wait(fd, "READY=1", 10, last, sizeof last), "no READY=1 after reload (last: '%s')", last);
    int killed = 0;
    harness_stop(env, &killed);
    ck_assert_msg(notify_wait(fd, "STOPPING=1", 5, last, sizeof last), "no STOPPING=1 (last: '%s')", last);
    close(fd);
    unsetenv("NOTIFY_SOCKET");
    free(path);
    harness_env_free(env);
}
END_TEST

static Suite *process_suite(void)
{
    Suite *s = suite_create("e2e_process");
    TCase *tc = harness_tcase("lifecycle");
    tcase_add_test(tc, test_kill9_durability);
    tcase_add_test(tc, test_sigterm_idle_sessions);
    tcase_add_test(tc, test_sigterm_inflight_transaction);
    tcase_add_test(tc, test_worker_restart);
    tcase_add_test(tc, test_policyd_restart);
    tcase_add_test(tc, test_status_counts_commits);
    suite_add_tcase(s, tc);
    tc = harness_tcase("startup");
    tcase_add_test(tc, test_startup_missing_policy);
    tcase_add_test(tc, test_startup_syntax_error);
    tcase_add_test(tc, test_startup_runtime_error);
    tcase_add_test(tc, test_startup_unknown_listener_param);
    tcase_add_test(tc, test_startup_no_spool);
    tcase_add_test(tc, test_startup_port_in_use);
    tcase_add_test(tc, test_startup_unwritable_spool);
    tcase_add_test(tc, test_startup_policy_writable_by_others);
    tcase_add_test(tc, test_startup_spool_locked);
    tcase_add_test(tc, test_children_not_root);
    tcase_add_test(tc, test_sd_notify);
    suite_add_tcase(s, tc);
    tc = harness_tcase("cli");
    tcase_add_test(tc, test_validate_good);
    tcase_add_test(tc, test_validate_bad);
    tcase_add_test(tc, test_version);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_unknown_option);
    suite_add_tcase(s, tc);
    return s;
}


int main(void)
{
    return harness_run_suite(process_suite());
}
