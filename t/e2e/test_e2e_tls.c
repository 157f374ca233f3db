/*
 * End-to-end STARTTLS (RFC 3207) against a real bin/kumod on loopback:
 * advertising, a whole transaction over TLS with the project's client and
 * with `openssl s_client -starttls smtp`, the TLS facts in the spool meta
 * file, plaintext pipelined after STARTTLS discarded, the session reset by
 * the handshake, STARTTLS twice, TLS 1.1 refused, a failed handshake
 * closing the connection, certificate files made at test time, start-up
 * errors for bad certificate settings, AUTH before TLS.
 * Each test starts its own kumod from HARNESS_POLICY_TEMPLATE and stops it.
 */
#include "expect.h"
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#define BANNER "220 " HARNESS_HOSTNAME " KumoMTA"
#define GO_AHEAD "354 Send body; end with CRLF.CRLF"
#define BYE "221 So long, and thanks for all the fish!"
#define READY "220 Ready to Start TLS"
#define NO_MAIL "503 5.5.0 MAIL FROM must be issued first"
#define TLS_TWICE "501 Cannot STARTTLS as TLS is already active"

/* Splits a multi-line reply into its lines (pointers into text). */
static int split_lines(char *text, char **lines, int max)
{
    int n = 0;
    for (char *p = text; p && n < max;) {
        lines[n++] = p;
        char *nl = strchr(p, '\n');
        if (nl)
            *nl++ = 0;
        p = nl;
    }
    return n;
}

static int find_line(char **lines, int n, const char *want)
{
    for (int i = 0; i < n; i++)
        if (strlen(lines[i]) >= 4 && !strcmp(lines[i] + 4, want))
            return i;
    return -1;
}

/* EHLO; returns whether STARTTLS was advertised, failing the test if it was
 * not the last line when it was. */
#define ehlo_starttls(c) ehlo_starttls_at(__FILE__, __LINE__, c)
static int ehlo_starttls_at(const char *file, int line, struct smtpc *c)
{
    smtpc_cmd_at(file, line, c, "EHLO client.example");
    char *text = smtpc_expect_code_at(file, line, c, 250);
    char *lines[32];
    int n = split_lines(text, lines, 32);
    int at = find_line(lines, n, "STARTTLS");
    if (at >= 0 && at != n - 1) {
        char *tr = smtpc_transcript(c, 2000);
        harness_fail(file, line, "EHLO: STARTTLS should be the last extension line:\n%s", tr);
    }
    free(text);
    return at >= 0;
}

/* Fails the test at the caller's line with a message and c's transcript. */
#define FAIL_TR(c, ...) fail_tr(__FILE__, __LINE__, c, __VA_ARGS__)
static void fail_tr(const char *file, int line, struct smtpc *c, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));
static void fail_tr(const char *file, int line, struct smtpc *c, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        abort();
    va_end(ap);
    char *tr = smtpc_transcript(c, 2500);
    harness_fail(file, line, "%s\n--- SMTP transcript ---\n%s--- end ---", msg, tr);
}

static struct smtpc *session(struct harness_env *env)
{
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    return c;
}

static void quit(struct smtpc *c)
{
    smtpc_chat(c, "QUIT", BYE);
    smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
    smtpc_close(c);
}

/* QUIT at the end of a TLS session whose point is elsewhere: the 221 (or
 * its absence) is test_quit_over_tls's business, so a close without it is
 * let through here; anything else still fails. */
#define quit_tls(c) quit_tls_at(__FILE__, __LINE__, c)
static void quit_tls_at(const char *file, int line, struct smtpc *c)
{
    smtpc_cmd_at(file, line, c, "QUIT");
    char *got = NULL;
    int code = smtpc_read_reply(c, &got, SMTPC_TIMEOUT_MS);
    if (code != SMTPC_EOF && !(code == 221 && !strcmp(got, BYE)))
        fail_tr(file, line, c, "QUIT: expected \"%s\" (or a close), got %d \"%s\"", BYE, code,
                got ? got : "");
    free(got);
    smtpc_expect_eof_at(file, line, c, SMTPC_TIMEOUT_MS);
    smtpc_close(c);
}

/* The JSON document on the first line of the message's spool meta file;
 * caller cJSON_Delete's. */

/* meta.meta[name] of a parsed meta file, or NULL. */
static const char *conn_meta(const cJSON *m, const char *name)
{
    return harness_json_str(cJSON_GetObjectItemCaseSensitive(m, "meta"), name);
}

/* ---- running other programs --------------------------------------------- */

/*
 * Runs argv (PATH search) with stdin from /dev/null and stdout+stderr to a
 * file under env->dir; waits up to timeout_s (then SIGKILLs it by pid and
 * fails).  Returns the wait status; *output (may be NULL) gets the output.
 */
#define run_prog(env, argv, timeout_s, output) \
    run_prog_at(__FILE__, __LINE__, env, argv, timeout_s, output)
static int run_prog_at(const char *file, int line, const struct harness_env *env,
                       const char *const argv[], int timeout_s, char **output)
{
    char *out = harness_path(env, "prog.out");
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        harness_fail(file, line, "cannot create %s: %s", out, strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        harness_fail(file, line, "fork: %s", strerror(errno));
    if (pid == 0) {
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0)
            dup2(nul, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        signal(SIGPIPE, SIG_DFL);
        execvp(argv[0], (char *const *)argv);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fd);
    double end = harness_now_s() + timeout_s;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (harness_now_s() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            char *o = harness_slurp(out, NULL);
            harness_fail(file, line, "%s did not finish within %d s; its output:\n%s", argv[0],
                         timeout_s, o ? o : "");
        }
        harness_pause_ms(20);
    }
    if (output) {
        *output = harness_slurp(out, NULL);
        if (!*output)
            *output = strdup("");
    }
    free(out);
    return st;
}

/*
 * Makes dir (under env->dir, 0755) holding cert.pem and key.pem (0644, so
 * kumod's --user can read them): a self-signed RSA certificate for cn made
 * with the openssl CLI.  Returns the absolute paths (caller frees).
 */
#define make_cert(env, dir, cn, cert, key) make_cert_at(__FILE__, __LINE__, env, dir, cn, cert, key)
static void make_cert_at(const char *file, int line, const struct harness_env *env,
                         const char *dir, const char *cn, char **cert, char **key)
{
    char *d = harness_path(env, dir);
    if (mkdir(d, 0755) != 0 && errno != EEXIST)
        harness_fail(file, line, "mkdir %s: %s", d, strerror(errno));
    chmod(d, 0755);
    char subj[300];
    snprintf(subj, sizeof subj, "/CN=%s", cn);
    char *c = NULL, *k = NULL;
    if (asprintf(&c, "%s/cert.pem", d) < 0 || asprintf(&k, "%s/key.pem", d) < 0)
        abort();
    const char *argv[] = { "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                           subj, "-days", "2", "-keyout", k, "-out", c, NULL };
    char *out = NULL;
    int st = run_prog_at(file, line, env, argv, 30, &out);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        harness_fail(file, line, "openssl req failed (%s):\n%s", harness_status_str(st), out);
    free(out);
    if (chmod(c, 0644) != 0 || chmod(k, 0644) != 0)
        harness_fail(file, line, "chmod %s, %s: %s", c, k, strerror(errno));
    free(d);
    *cert = c;
    *key = k;
}

/*
 * `openssl s_client -starttls smtp -connect 127.0.0.1:PORT -quiet [extra]`
 * with its stdin and stdout on one end of a socketpair (a pipe both ways)
 * and its stderr in env->dir/s_client.err; the other end is wrapped in an
 * smtpc, so the test reads the server's replies as s_client prints them.
 */
struct sclient {
    pid_t pid;
    struct smtpc *c;
    char *err_path;   /* owned */
};

#define sclient_start(env, extra) sclient_start_at(__FILE__, __LINE__, env, extra)
static struct sclient *sclient_start_at(const char *file, int line,
                                        const struct harness_env *env, const char *extra)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        harness_fail(file, line, "socketpair: %s", strerror(errno));
    struct sclient *s = calloc(1, sizeof *s);
    if (!s)
        abort();
    s->err_path = harness_path(env, "s_client.err");
    int errfd = open(s->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (errfd < 0)
        harness_fail(file, line, "cannot create %s: %s", s->err_path, strerror(errno));
    char connect[64];
    snprintf(connect, sizeof connect, "127.0.0.1:%d", env->port);
    s->pid = fork();
    if (s->pid < 0)
        harness_fail(file, line, "fork: %s", strerror(errno));
    if (s->pid == 0) {
        dup2(sv[1], 0);
        dup2(sv[1], 1);
        dup2(errfd, 2);
        signal(SIGPIPE, SIG_DFL);
        const char *argv[] = { "openssl", "s_client", "-starttls", "smtp", "-connect", connect,
                               "-quiet", extra, NULL };
        execvp(argv[0], (char *const *)argv);
        dprintf(2, "exec openssl: %s\n", strerror(errno));
        _exit(127);
    }
    close(sv[1]);
    close(errfd);
    s->c = smtpc_attach(env, sv[0]);
    return s;
}

static char *sclient_err(const struct sclient *s)
{
    char *e = harness_slurp(s->err_path, NULL);
    return e ? e : strdup("");
}

/* Like smtpc_expect_prefix, but the failure also shows s_client's stderr. */
#define sclient_expect(s, prefix) sclient_expect_at(__FILE__, __LINE__, s, prefix)
static char *sclient_expect_at(const char *file, int line, struct sclient *s,
                               const char *prefix)
{
    char *got = NULL;
    int code = smtpc_read_reply(s->c, &got, SMTPC_TIMEOUT_MS);
    if (code <= 0 || strncmp(got, prefix, strlen(prefix))) {
        char *tr = smtpc_transcript(s->c, 2500);
        char *err = sclient_err(s);
        char *ctx = harness_context(s->c->env);
        harness_fail(file, line, "openssl s_client: expected a reply starting with\n    %s\n"
                     "got (code %d):\n    %s\n--- transcript (s_client's stdin/stdout) ---\n"
                     "%s--- s_client stderr ---\n%s\n%s", prefix, code, got ? got : "", tr,
                     err, ctx);
    }
    return got;
}

/* Waits up to timeout_s for s_client to exit, then SIGKILLs it by pid. */
static int sclient_finish(struct sclient *s, int timeout_s)
{
    double end = harness_now_s() + timeout_s;
    int st = -1;
    for (;;) {
        pid_t r = waitpid(s->pid, &st, WNOHANG);
        if (r == s->pid || (r < 0 && errno == ECHILD))
            break;
        if (harness_now_s() >= end) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
            st = -1;
            break;
        }
        harness_pause_ms(20);
    }
    smtpc_close(s->c);
    free(s->err_path);
    free(s);
    return st;
}

/* ---- tests -------------------------------------------------------------- */

/* STARTTLS is advertised (last) before TLS and not after it; a whole
 * transaction over TLS; the self-signed certificate names the listener's
 * hostname; the TLS version and cipher are in the message's meta. */
START_TEST(test_transaction_over_tls)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    if (!ehlo_starttls(c))
        FAIL_TR(c, "EHLO before TLS lacks STARTTLS");
    smtpc_starttls(c);
    if (strcmp(c->tls_peer_cn, HARNESS_HOSTNAME))
        FAIL_TR(c, "self-signed certificate: CN \"%s\", want \"%s\"", c->tls_peer_cn,
                HARNESS_HOSTNAME);
    if (strcmp(c->tls_version, "TLSv1.2") && strcmp(c->tls_version, "TLSv1.3"))
        FAIL_TR(c, "negotiated %s", c->tls_version);
    if (ehlo_starttls(c))
        FAIL_TR(c, "EHLO after TLS still advertises STARTTLS");
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction(c, "a@example.com", rcpts,
                      "Subject: over tls\r\n\r\nsent over TLS\r\n", ids);
    char version[sizeof c->tls_version], cipher[sizeof c->tls_cipher];
    memcpy(version, c->tls_version, sizeof version);
    memcpy(cipher, c->tls_cipher, sizeof cipher);
    quit_tls(c);

    const char *needles[] = { "tls_protocol_version", "tls_cipher", NULL };
    free(expect_spooled(env, ids[0], "sent over TLS\r\n", needles, NULL));
    cJSON *m = meta_json(env, ids[0]);
    const char *v = conn_meta(m, "tls_protocol_version"), *ci = conn_meta(m, "tls_cipher");
    char *txt = cJSON_PrintUnformatted(m);
    if (!v || strcmp(v, version) || !ci || strcmp(ci, cipher))
        HFAIL("meta.tls_protocol_version/tls_cipher should be the client's \"%s\"/\"%s\": %s",
              version, cipher, txt);
    free(txt);
    cJSON_Delete(m);
    expect_reception(env, ids[0], "a@example.com", "b@example.net");
    harness_env_free(env);
}
END_TEST

/* QUIT over TLS gets its 221 before the server closes (libevent's TLS
 * filter must have pushed the reply down to the socket before it is
 * freed). */
START_TEST(test_quit_over_tls)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    ck_assert(ehlo_starttls(c));
    smtpc_starttls(c);
    smtpc_chat(c, "QUIT", BYE);
    smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
    smtpc_close(c);
    harness_env_free(env);
}
END_TEST

/* SIGTERM: an idle TLS session gets its 421 over TLS, then the close. */
START_TEST(test_shutdown_421_over_tls)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    ck_assert(ehlo_starttls(c));
    smtpc_starttls(c);
    ck_assert(!ehlo_starttls(c));
    ck_assert_int_eq(kill(env->pid, SIGTERM), 0);
    smtpc_expect(c, "421 4.3.2 " HARNESS_HOSTNAME " shutting down");
    smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
    smtpc_close(c);
    harness_env_free(env);
}
END_TEST

/* The OpenSSL CLI as the client: s_client does EHLO and STARTTLS, then the
 * test types a transaction through its stdin. */
START_TEST(test_openssl_s_client)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct sclient *s = sclient_start(env, NULL);
    smtpc_cmd(s->c, "EHLO client.example");
    char *ehlo = sclient_expect(s, "250-" HARNESS_HOSTNAME " Aloha client.example\n");
    ck_assert_msg(!strstr(ehlo, "STARTTLS"), "EHLO over TLS advertises STARTTLS:\n%s", ehlo);
    free(ehlo);
    smtpc_cmd(s->c, "MAIL FROM:<cli@example.com>");
    free(sclient_expect(s, "250 OK <cli@example.com>"));
    smtpc_cmd(s->c, "RCPT TO:<rcpt@example.net>");
    free(sclient_expect(s, "250 OK <rcpt@example.net>"));
    smtpc_cmd(s->c, "DATA");
    free(sclient_expect(s, GO_AHEAD));
    smtpc_sendf(s->c, "Subject: s_client\r\n\r\nfrom openssl s_client\r\n.\r\n");
    char *ok = sclient_expect(s, "250 OK ids=");
    char id[33] = "";
    if (strlen(ok) >= 11 + 32)
        memcpy(id, ok + 11, 32);
    ck_assert_msg(smtpc_is_spool_id(id), "not an id in \"%s\"", ok);
    free(ok);
    /* the 221 over TLS is test_quit_over_tls's business */
    smtpc_cmd(s->c, "QUIT");
    char *bye = NULL;
    int code = smtpc_read_reply(s->c, &bye, SMTPC_TIMEOUT_MS);
    if (code != SMTPC_EOF && !(code == 221 && !strcmp(bye, BYE))) {
        char *err = sclient_err(s);
        HFAIL("QUIT through s_client: got %d \"%s\"\ns_client stderr:\n%s", code, bye, err);
    }
    free(bye);
    int st = sclient_finish(s, 10);
    ck_assert_msg(st != -1, "openssl s_client still running 10 s after QUIT; killed");
    const char *needles[] = { "cli@example.com", "tls_protocol_version", "tls_cipher", NULL };
    free(expect_spooled(env, id, "from openssl s_client\r\n", needles, NULL));
    harness_env_free(env);
}
END_TEST

/* RFC 3207 4.2: a command pipelined after STARTTLS in plaintext is dropped,
 * not run inside the TLS session. */
START_TEST(test_pipelined_plaintext_discarded)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    const char burst[] = "EHLO client.example\r\nSTARTTLS\r\nMAIL FROM:<smuggled@x.example>\r\n";
    smtpc_send(c, burst, sizeof burst - 1);
    free(smtpc_expect_code(c, 250));
    smtpc_expect(c, READY);
    if (c->rlen)
        FAIL_TR(c, "plaintext after the 220 (a reply to the smuggled command?): %.*s",
                (int)c->rlen, c->rbuf);
    char err[700];
    if (smtpc_tls_handshake(c, NULL, SMTPC_TIMEOUT_MS, err, sizeof err, NULL) != 0)
        FAIL_TR(c, "handshake: %s", err);
    /* had the MAIL FROM survived, this would be 250 */
    smtpc_chat(c, "RCPT TO:<a@b.example>", NO_MAIL);
    ck_assert(!ehlo_starttls(c));
    smtpc_chat(c, "RCPT TO:<a@b.example>", NO_MAIL);
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction(c, "real@example.com", rcpts, "Subject: after\r\n\r\nreal one\r\n", ids);
    quit_tls(c);
    cJSON *m = meta_json(env, ids[0]);
    const char *sender = harness_json_str(m, "sender");
    ck_assert_msg(sender && !strcmp(sender, "real@example.com"), "sender %s",
                  sender ? sender : "(none)");
    cJSON_Delete(m);
    expect_not_spooled(env, "smuggled");
    harness_env_free(env);
}
END_TEST

/* The handshake resets the session: a MAIL FROM given before STARTTLS is
 * gone, and EHLO must be said again. */
START_TEST(test_transaction_forgotten)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    ck_assert(ehlo_starttls(c));
    smtpc_chat(c, "MAIL FROM:<before@example.com>", "250 OK <before@example.com>");
    smtpc_starttls(c);
    smtpc_chat(c, "RCPT TO:<a@b.example>", NO_MAIL);
    ck_assert(!ehlo_starttls(c));
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction(c, "after@example.com", rcpts, "Subject: x\r\n\r\nafter tls\r\n", ids);
    quit_tls(c);
    expect_not_spooled(env, "before@example.com");
    harness_env_free(env);
}
END_TEST

START_TEST(test_starttls_twice)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    ck_assert(ehlo_starttls(c));
    smtpc_starttls(c);
    smtpc_chat(c, "STARTTLS", TLS_TWICE);
    ck_assert(!ehlo_starttls(c));
    smtpc_chat(c, "STARTTLS", TLS_TWICE);
    /* the session still works */
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction(c, "a@example.com", rcpts, "Subject: x\r\n\r\ntwice\r\n", ids);
    quit_tls(c);
    harness_env_free(env);
}
END_TEST

/* The server's minimum is TLS 1.2: a client that offers at most TLS 1.1
 * fails the handshake and the connection is closed. */
START_TEST(test_tls11_refused)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    ck_assert(ehlo_starttls(c));
    smtpc_chat(c, "STARTTLS", READY);
    /* OpenSSL 3 only offers TLS 1.1 at security level 0 */
    struct smtpc_tls_opts o = { .max_version = TLS1_1_VERSION, .security_level_0 = 1,
                                .cipher_list = "DEFAULT:@SECLEVEL=0" };
    char err[700];
    int lib_refused = 0;
    int r = smtpc_tls_handshake(c, &o, SMTPC_TIMEOUT_MS, err, sizeof err, &lib_refused);
    if (r != 0 && lib_refused) {
        fprintf(stderr, "%s:%d: SKIP test_tls11_refused: this OpenSSL will not even offer"
                " TLS 1.1 (%s)\n", __FILE__, __LINE__, err);
        smtpc_close(c);
        harness_env_free(env);
        return;
    }
    if (r == 0)
        FAIL_TR(c, "the server accepted a TLS 1.1-only client: negotiated %s %s",
                c->tls_version, c->tls_cipher);
    /* whatever alert the server sent, then it must close */
    free(smtpc_read_until_eof(c, 10000, NULL));
    smtpc_close(c);

    /* and the CLI says the same */
    char connect[64];
    snprintf(connect, sizeof connect, "127.0.0.1:%d", env->port);
    const char *argv[] = { "openssl", "s_client", "-starttls", "smtp", "-connect", connect,
                           "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", NULL };
    char *out = NULL;
    int st = run_prog(env, argv, 20, &out);
    /* (it prints "Protocol : TLSv1.1" even on failure: that is what it asked for) */
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0 &&
                  harness_regex_match(out, "New, \\(NONE\\), Cipher is \\(NONE\\)", 0),
                  "openssl s_client -tls1_1 should fail (%s):\n%s", harness_status_str(st),
                  out);
    free(out);

    /* the server is still fine for a TLS 1.2 client */
    c = session(env);
    ck_assert(ehlo_starttls(c));
    struct smtpc_tls_opts t12 = { .max_version = TLS1_2_VERSION };
    smtpc_starttls_opts(c, &t12);
    ck_assert_msg(!strcmp(c->tls_version, "TLSv1.2"), "negotiated %s", c->tls_version);
    quit_tls(c);
    harness_env_free(env);
}
END_TEST

/* Plaintext where the ClientHello should be: the handshake fails and the
 * connection is closed, with no SMTP reply to the plaintext. */
START_TEST(test_failed_handshake_closes)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    ck_assert(ehlo_starttls(c));
    smtpc_chat(c, "STARTTLS", READY);
    harness_pause_ms(200); /* let the server drain the socket and start the handshake */
    smtpc_cmd(c, "EHLO client.example");
    size_t len = 0;
    char *rest = smtpc_read_until_eof(c, 15000, &len);
    if (harness_contains(rest, len, "250"))
        FAIL_TR(c, "an SMTP reply to plaintext sent in place of the ClientHello");
    free(rest);
    smtpc_close(c);
    /* kumod is still serving */
    c = session(env);
    quit(c);
    harness_env_free(env);
}
END_TEST

/* tls_certificate/tls_private_key files made at test time. */
START_TEST(test_certificate_files)
{
    struct harness_env *env = harness_env_new();
    char *cert, *key;
    make_cert(env, "tls", "files.test.example", &cert, &key);
    char extra[1400];
    snprintf(extra, sizeof extra, "tls_certificate = '%s', tls_private_key = '%s',", cert, key);
    harness_start_default(env, extra);
    struct smtpc *c = session(env);
    ck_assert(ehlo_starttls(c));
    smtpc_starttls(c);
    if (strcmp(c->tls_peer_cn, "files.test.example"))
        FAIL_TR(c, "certificate CN \"%s\", want \"files.test.example\"", c->tls_peer_cn);
    ck_assert(!ehlo_starttls(c));
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction(c, "a@example.com", rcpts, "Subject: x\r\n\r\nfile cert\r\n", ids);
    quit_tls(c);
    free(cert);
    free(key);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_missing_certificate)
{
    struct harness_env *env = harness_env_new();
    char extra[1400];
    snprintf(extra, sizeof extra, "tls_certificate = '%s/nope/cert.pem', tls_private_key ="
             " '%s/nope/key.pem',", env->dir, env->dir);
    harness_write_policy(env, HARNESS_POLICY_TEMPLATE, extra);
    expect_startup_failure(env, NULL, "tls_certificate.*nope/cert\\.pem", 1);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_certificate_only)
{
    struct harness_env *env = harness_env_new();
    char *cert, *key;
    make_cert(env, "tls", "files.test.example", &cert, &key);
    char extra[1400];
    snprintf(extra, sizeof extra, "tls_certificate = '%s',", cert);
    harness_write_policy(env, HARNESS_POLICY_TEMPLATE, extra);
    expect_startup_failure(env, NULL, "tls_private_key", 1);
    free(cert);
    free(key);
    harness_env_free(env);
}
END_TEST

START_TEST(test_startup_key_mismatch)
{
    struct harness_env *env = harness_env_new();
    char *cert1, *key1, *cert2, *key2;
    make_cert(env, "one", "one.test.example", &cert1, &key1);
    make_cert(env, "two", "two.test.example", &cert2, &key2);
    char extra[1400];
    snprintf(extra, sizeof extra, "tls_certificate = '%s', tls_private_key = '%s',", cert1,
             key2);
    harness_write_policy(env, HARNESS_POLICY_TEMPLATE, extra);
    expect_startup_failure(env, NULL, "tls_private_key", 1);
    free(cert1);
    free(key1);
    free(cert2);
    free(key2);
    harness_env_free(env);
}
END_TEST

/* Before TLS: AUTH PLAIN wants an encrypted channel, AUTH LOGIN is not
 * offered at all; a message received in plaintext has no TLS facts. */
START_TEST(test_before_tls)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    ck_assert(ehlo_starttls(c));
    smtpc_chat(c, "AUTH PLAIN AHVzZXIAcGFzcw==",
               "524 5.7.11 AUTH PLAIN requires an encrypted channel");
    smtpc_chat(c, "AUTH LOGIN", "504 5.5.4 AUTH LOGIN not supported");
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction(c, "a@example.com", rcpts, "Subject: x\r\n\r\nplain\r\n", ids);
    quit(c);
    cJSON *m = meta_json(env, ids[0]);
    char *txt = cJSON_PrintUnformatted(m);
    ck_assert_msg(!conn_meta(m, "tls_protocol_version") && !conn_meta(m, "tls_cipher"),
                  "a plaintext message has TLS meta: %s", txt);
    free(txt);
    cJSON_Delete(m);
    harness_env_free(env);
}
END_TEST

static Suite *tls_suite(void)
{
    Suite *s = suite_create("e2e_tls");
    TCase *tc = harness_tcase("starttls");
    tcase_add_test(tc, test_transaction_over_tls);
    tcase_add_test(tc, test_quit_over_tls);
    tcase_add_test(tc, test_shutdown_421_over_tls);
    tcase_add_test(tc, test_openssl_s_client);
    tcase_add_test(tc, test_pipelined_plaintext_discarded);
    tcase_add_test(tc, test_transaction_forgotten);
    tcase_add_test(tc, test_starttls_twice);
    tcase_add_test(tc, test_tls11_refused);
    tcase_add_test(tc, test_failed_handshake_closes);
    tcase_add_test(tc, test_before_tls);
    suite_add_tcase(s, tc);
    tc = harness_tcase("certificates");
    tcase_add_test(tc, test_certificate_files);
    tcase_add_test(tc, test_startup_missing_certificate);
    tcase_add_test(tc, test_startup_certificate_only);
    tcase_add_test(tc, test_startup_key_mismatch);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return harness_run_suite(tls_suite());
}
