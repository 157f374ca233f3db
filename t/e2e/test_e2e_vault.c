/*
 * End-to-end HashiCorp Vault key sources and tls_required_client_ca
 * against a real bin/kumod on loopback, with t/tools/vaultd standing in
 * for Vault and certificates made at test time with the openssl CLI:
 * certificate and key read from Vault once at start (STARTTLS then shows
 * that certificate), address and token from $VAULT_ADDR/$VAULT_TOKEN,
 * chunked replies, HTTPS with $VAULT_CACERT, and the start-up errors (bad
 * token, unreachable or silent Vault, missing field or secret, no token,
 * an untrusted HTTPS certificate); then client certificates: one signed
 * by the configured CA sets tls_peer_subject_name in the connection meta
 * (and so in the message meta), one signed by another CA or none leaves
 * it unset and the session goes on; the CA itself from Vault; a Vault
 * source named only by dynamic parameters is not fetched (454).
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BANNER "220 " HARNESS_HOSTNAME " KumoMTA"
#define BYE "221 So long, and thanks for all the fish!"
#define TOKEN "hvs.test-token-1"

/* Runs argv (PATH search) to completion within 30 s, output to a file in
 * env->dir; fails the test unless it exits 0. */
#define run_ok(env, argv) run_ok_at(__FILE__, __LINE__, env, argv)
static void run_ok_at(const char *file, int line, const struct harness_env *env, const char *const argv[])
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
        execvp(argv[0], (char *const *)argv);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fd);
    int st = 0;
    for (int waited = 0;; waited += 20) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            break;
        if (waited > 30000) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            harness_fail(file, line, "%s %s did not finish within 30 s", argv[0], argv[1]);
        }
        harness_pause_ms(20);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char *o = harness_slurp(out, NULL);
        harness_fail(file, line, "%s %s failed (%s):\n%s", argv[0], argv[1], harness_status_str(st),
                     o ? o : "");
    }
    free(out);
}

/* env->dir/name (0755, so kumod's --user can read what is in it). */
static char *subdir(const struct harness_env *env, const char *name)
{
    char *d = harness_path(env, name);
    if (mkdir(d, 0755) != 0 && errno != EEXIST)
        ck_abort_msg("mkdir %s: %s", d, strerror(errno));
    chmod(d, 0755);
    return d;
}

static char *join(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        abort();
    return p;
}

static void readable(const char *path)
{
    if (chmod(path, 0644) != 0)
        ck_abort_msg("chmod %s: %s", path, strerror(errno));
}

/*
 * A self-signed EC certificate in dir/cert.pem with key dir/key.pem:
 * subject subj, with subjectAltName san when given ("DNS:localhost").
 * openssl req -x509 makes it a CA (v3_ca: basicConstraints CA:TRUE), so
 * it serves as a client CA too.
 */
#define make_self_signed(env, dir, subj, san) make_self_signed_at(__FILE__, __LINE__, env, dir, subj, san)
static void make_self_signed_at(const char *file, int line, const struct harness_env *env, const char *dir,
                                const char *subj, const char *san)
{
    char *d = subdir(env, dir), *c = join(d, "cert.pem"), *k = join(d, "key.pem");
    char ext[300];
    snprintf(ext, sizeof ext, "subjectAltName=%s", san ? san : "");
    const char *argv[] = { "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                           "-nodes", "-subj", subj, "-days", "2", "-keyout", k, "-out", c,
                           san ? "-addext" : NULL, ext, NULL };
    run_ok_at(file, line, env, argv);
    readable(c);
    readable(k);
    free(d);
    free(c);
    free(k);
}

/* dir/cert.pem + dir/key.pem: a client certificate for subj signed by
 * the CA in ca_dir (made by make_self_signed). */
#define make_signed(env, dir, ca_dir, subj) make_signed_at(__FILE__, __LINE__, env, dir, ca_dir, subj)
static void make_signed_at(const char *file, int line, const struct harness_env *env, const char *dir,
                           const char *ca_dir, const char *subj)
{
    char *d = subdir(env, dir), *c = join(d, "cert.pem"), *k = join(d, "key.pem"), *csr = join(d, "req.pem");
    char *cad = harness_path(env, ca_dir), *cac = join(cad, "cert.pem"), *cak = join(cad, "key.pem");
    char *serial = join(d, "serial");
    const char *req[] = { "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-nodes", "-subj", subj, "-keyout", k, "-out", csr, NULL };
    run_ok_at(file, line, env, req);
    const char *sign[] = { "openssl", "x509", "-req", "-in", csr, "-CA", cac, "-CAkey", cak,
                           "-CAserial", serial, "-CAcreateserial", "-days", "2", "-out", c, NULL };
    run_ok_at(file, line, env, sign);
    readable(c);
    readable(k);
    free(d);
    free(c);
    free(k);
    free(csr);
    free(cad);
    free(cac);
    free(cak);
    free(serial);
}

/* Starts vaultd with these extra arguments (NULL-terminated, at most 16)
 * and the log file env->dir/vault.log; its port in *port. */
static pid_t vaultd_start(const struct harness_env *env, int *port, const char *const *extra)
{
    char *log = harness_path(env, "vault.log");
    const char *argv[24] = { "-t", TOKEN, "-l", log };
    size_t n = 4;
    for (size_t i = 0; extra && extra[i] && n < 22; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    *port = 0;
    pid_t pid = harness_tool_start("vaultd", port, argv);
    free(log);
    return pid;
}

/* "-s" arguments: "secret/<path>=<field>=@<env->dir>/<file>" (static buffer per slot). */
static const char *spec(const struct harness_env *env, int slot, const char *path, const char *field,
                        const char *file)
{
    static char buf[8][1024];
    snprintf(buf[slot], sizeof buf[slot], "secret/%s=%s=@%s/%s", path, field, env->dir, file);
    return buf[slot];
}

/* The requests vaultd logged ("GET /v1/... 200" lines). */
static char *vault_log(const struct harness_env *env)
{
    char *p = harness_path(env, "vault.log");
    char *log = harness_slurp(p, NULL);
    free(p);
    return log ? log : strdup("");
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static struct smtpc *session(struct harness_env *env)
{
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    smtpc_cmd(c, "EHLO client.example");
    free(smtpc_expect_code(c, 250));
    return c;
}

/* QUIT over TLS: a 221 or a plain close. */
static void quit(struct smtpc *c)
{
    smtpc_cmd(c, "QUIT");
    char *got = NULL;
    int code = smtpc_read_reply(c, &got, SMTPC_TIMEOUT_MS);
    ck_assert_msg(code == SMTPC_EOF || (code == 221 && !strcmp(got, BYE)), "QUIT: %d %s", code, got ? got : "");
    free(got);
    smtpc_close(c);
}


/* STARTTLS (with a client certificate from dir, when not NULL), then a
 * message; returns the message meta's tls_peer_subject_name as compact
 * JSON, or NULL when it is not set (caller frees). */
#define tls_message(env, dir) tls_message_at(__FILE__, __LINE__, env, dir)
static char *tls_message_at(const char *file, int line, struct harness_env *env, const char *dir)
{
    struct smtpc *c = smtpc_connect_at(file, line, env, env->port, NULL);
    smtpc_expect_at(file, line, c, BANNER, 0);
    smtpc_cmd_at(file, line, c, "EHLO client.example");
    free(smtpc_expect_code_at(file, line, c, 250));
    char *d = dir ? harness_path(env, dir) : NULL, *cert = d ? join(d, "cert.pem") : NULL;
    char *key = d ? join(d, "key.pem") : NULL;
    struct smtpc_tls_opts o = { .cert_file = cert, .key_file = key };
    smtpc_starttls_at(file, line, c, &o);
    smtpc_cmd_at(file, line, c, "EHLO client.example");
    free(smtpc_expect_code_at(file, line, c, 250));
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction_at(file, line, c, "a@example.com", rcpts, "Subject: x\r\n\r\nclient cert\r\n", ids);
    quit(c);
    cJSON *m = expect_meta_json_at(file, line, env, ids[0]);
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(m, "meta");
    if (!harness_json_str(meta, "tls_cipher"))
        harness_fail(file, line, "message %s: no TLS facts in its meta", ids[0]);
    const cJSON *sn = cJSON_GetObjectItemCaseSensitive(meta, "tls_peer_subject_name");
    char *out = sn ? cJSON_PrintUnformatted(sn) : NULL;
    /* the Reception record carries the same, as KumoMTA logs it */
    cJSON *rec = harness_log_wait(env, "Reception", ids[0]);
    if (!rec)
        harness_fail(file, line, "message %s: no Reception record", ids[0]);
    const cJSON *rsn = cJSON_GetObjectItemCaseSensitive(rec, "tls_peer_subject_name");
    if (sn ? !cJSON_Compare(sn, rsn, 1) : rsn != NULL)
        harness_fail(file, line, "message %s: tls_peer_subject_name in the Reception record differs from "
                     "the meta's", ids[0]);
    cJSON_Delete(rec);
    cJSON_Delete(m);
    free(d);
    free(cert);
    free(key);
    return out;
}

/* Writes the policy with extra listener fields (printf-formatted). */
static void policy(struct harness_env *env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void policy(struct harness_env *env, const char *fmt, ...)
{
    va_list ap;
    char *extra = NULL;
    va_start(ap, fmt);
    if (vasprintf(&extra, fmt, ap) < 0)
        abort();
    va_end(ap);
    harness_write_policy(env, HARNESS_POLICY_TEMPLATE, extra);
    free(extra);
}

/* A mail certificate (CN=vault.test.example) in env->dir/mail. */
static void mail_cert(struct harness_env *env)
{
    make_self_signed(env, "mail", "/CN=vault.test.example", "DNS:vault.test.example");
}

#define VAULT_CERT(port, token) \
    "tls_certificate = { vault_mount = 'secret', vault_path = 'tls/mx.cert', vault_key = 'certificate'," \
    " vault_address = 'http://127.0.0.1:" port "', vault_token = '" token "' },"
#define VAULT_KEY(port, token) \
    "tls_private_key = { vault_mount = 'secret', vault_path = 'tls/mx.key'," \
    " vault_address = 'http://127.0.0.1:" port "', vault_token = '" token "' },"

/* ---- Vault key sources -------------------------------------------------- */

START_TEST(test_cert_and_key_from_vault)
{
    struct harness_env *env = harness_env_new();
    mail_cert(env);
    int vport;
    const char *extra[] = { "-s", spec(env, 0, "tls/mx.cert", "certificate", "mail/cert.pem"),
                            "-s", spec(env, 1, "tls/mx.key", "key", "mail/key.pem"), NULL };
    pid_t vd = vaultd_start(env, &vport, extra);
    policy(env, VAULT_CERT("%d", TOKEN) VAULT_KEY("%d", TOKEN), vport, vport);
    harness_start(env);
    /* several sessions, on both workers */
    for (int i = 0; i < 4; i++) {
        struct smtpc *c = session(env);
        smtpc_starttls(c);
        ck_assert_msg(!strcmp(c->tls_peer_cn, "vault.test.example"), "certificate CN \"%s\"", c->tls_peer_cn);
        if (i == 0) {
            smtpc_cmd(c, "EHLO client.example");
            free(smtpc_expect_code(c, 250));
            const char *rcpts[] = { "b@example.net", NULL };
            char ids[1][33];
            smtpc_transaction(c, "a@example.com", rcpts, "Subject: x\r\n\r\nvault cert\r\n", ids);
        }
        quit(c);
    }
    /* read once, at start, by kumod: one GET per secret, none by the workers */
    char *log = vault_log(env);
    ck_assert_msg(count_lines(log) == 2 && strstr(log, "GET /v1/secret/data/tls/mx.cert 200\n") &&
                  strstr(log, "GET /v1/secret/data/tls/mx.key 200\n"), "vaultd saw:\n%s", log);
    free(log);
    harness_env_free(env);
    harness_tool_stop(vd);
}
END_TEST

/* vault_address and vault_token omitted: $VAULT_ADDR and $VAULT_TOKEN;
 * vaultd answers with chunked bodies. */
START_TEST(test_env_address_and_token)
{
    struct harness_env *env = harness_env_new();
    mail_cert(env);
    int vport;
    const char *extra[] = { "-c", "-s", spec(env, 0, "tls/mx.cert", "key", "mail/cert.pem"),
                            "-s", spec(env, 1, "tls/mx.key", "key", "mail/key.pem"), NULL };
    pid_t vd = vaultd_start(env, &vport, extra);
    char addr[64];
    snprintf(addr, sizeof addr, "http://127.0.0.1:%d", vport);
    setenv("VAULT_ADDR", addr, 1);
    setenv("VAULT_TOKEN", TOKEN, 1);
    policy(env, "tls_certificate = { vault_mount = 'secret', vault_path = 'tls/mx.cert' },"
                " tls_private_key = { vault_mount = 'secret', vault_path = 'tls/mx.key' },");
    harness_start(env);
    struct smtpc *c = session(env);
    smtpc_starttls(c);
    ck_assert_msg(!strcmp(c->tls_peer_cn, "vault.test.example"), "certificate CN \"%s\"", c->tls_peer_cn);
    quit(c);
    char *log = vault_log(env);
    ck_assert_msg(count_lines(log) == 2, "vaultd saw:\n%s", log);
    free(log);
    harness_env_free(env);
    harness_tool_stop(vd);
}
END_TEST

START_TEST(test_bad_token)
{
    struct harness_env *env = harness_env_new();
    mail_cert(env);
    int vport;
    const char *extra[] = { "-s", spec(env, 0, "tls/mx.cert", "certificate", "mail/cert.pem"),
                            "-s", spec(env, 1, "tls/mx.key", "key", "mail/key.pem"), NULL };
    pid_t vd = vaultd_start(env, &vport, extra);
    policy(env, VAULT_CERT("%d", "hvs.wrong") VAULT_KEY("%d", TOKEN), vport, vport);
    expect_startup_failure(env, NULL,
                           "^kumod: listener 127\\.0\\.0\\.1:[0-9]+: tls_certificate: HashiCorp Vault "
                           "secret/tls/mx\\.cert \\(field 'certificate'\\) at http://127\\.0\\.0\\.1:[0-9]+: "
                           "HTTP 403 Forbidden: permission denied$", 1);
    char *out = harness_output(env);
    ck_assert_msg(!strstr(out, "hvs.wrong"), "the token is in kumod's output:\n%s", out);
    free(out);
    harness_env_free(env);
    harness_tool_stop(vd);
}
END_TEST

START_TEST(test_unreachable)
{
    struct harness_env *env = harness_env_new();
    int closed = harness_free_port();
    policy(env, VAULT_CERT("%d", TOKEN) VAULT_KEY("%d", TOKEN), closed, closed);
    expect_startup_failure(env, NULL,
                           "listener 127\\.0\\.0\\.1:[0-9]+: tls_certificate: HashiCorp Vault .*: "
                           "cannot connect to 127\\.0\\.0\\.1:[0-9]+: Connection refused", 1);
    harness_env_free(env);
}
END_TEST

/* A Vault that accepts and never answers: the 5 s read timeout. */
START_TEST(test_silent_vault)
{
    struct harness_env *env = harness_env_new();
    int vport;
    const char *extra[] = { "--hang", NULL };
    pid_t vd = vaultd_start(env, &vport, extra);
    policy(env, VAULT_CERT("%d", TOKEN) VAULT_KEY("%d", TOKEN), vport, vport);
    time_t t0 = time(NULL);
    expect_startup_failure(env, NULL, "tls_certificate: HashiCorp Vault .*: reading the response: timed out after 5 s",
                           1);
    ck_assert_msg(time(NULL) - t0 <= 12, "the timeout took %ld s", (long)(time(NULL) - t0));
    harness_env_free(env);
    harness_tool_stop(vd);
}
END_TEST

/* No such field, no such secret, no token at all: each a start-up error. */
START_TEST(test_missing_field_secret_token)
{
    struct harness_env *env = harness_env_new();
    mail_cert(env);
    int vport;
    const char *extra[] = { "-s", spec(env, 0, "tls/mx.cert", "key", "mail/cert.pem"),
                            "-s", spec(env, 1, "tls/mx.key", "key", "mail/key.pem"), NULL };
    pid_t vd = vaultd_start(env, &vport, extra);
    /* the secret exists, its 'certificate' field does not */
    policy(env, VAULT_CERT("%d", TOKEN) VAULT_KEY("%d", TOKEN), vport, vport);
    expect_startup_failure(env, NULL, "listener .*: tls_certificate: .*the secret has no field 'certificate'", 1);
    /* no such secret */
    policy(env, VAULT_KEY("%d", TOKEN) "tls_certificate = { vault_mount = 'secret', vault_path = 'tls/nope',"
                " vault_address = 'http://127.0.0.1:%d', vault_token = '" TOKEN "' },", vport, vport);
    expect_startup_failure(env, NULL, "listener .*: tls_certificate: HashiCorp Vault secret/tls/nope .*"
                           "HTTP 404 Not Found$", 1);
    /* no token in the table or the environment */
    unsetenv("VAULT_TOKEN");
    policy(env, "tls_certificate = { vault_mount = 'secret', vault_path = 'tls/mx.cert',"
                " vault_address = 'http://127.0.0.1:%d', vault_token = '" TOKEN "' },"
                " tls_private_key = { vault_mount = 'secret', vault_path = 'tls/mx.key',"
                " vault_address = 'http://127.0.0.1:%d' },", vport, vport);
    expect_startup_failure(env, NULL, "listener .*: tls_private_key: HashiCorp Vault: no vault_token, and "
                           "\\$VAULT_TOKEN is not set", 1);
    /* in a peer block too */
    policy(env, "peer = { ['10.0.0.0/8'] = { tls_certificate = { vault_mount = 'secret', vault_path = 'tls/gone',"
                " vault_address = 'http://127.0.0.1:%d', vault_token = '" TOKEN "' } } },", vport);
    expect_startup_failure(env, NULL, "listener .*: peer\\['10\\.0\\.0\\.0/8'\\]\\.tls_certificate: .*HTTP 404", 1);
    harness_env_free(env);
    harness_tool_stop(vd);
}
END_TEST

/* https: the server certificate must verify (the system store, plus
 * $VAULT_CACERT). */
START_TEST(test_https)
{
    struct harness_env *env = harness_env_new();
    mail_cert(env);
    make_self_signed(env, "vault", "/CN=localhost", "DNS:localhost");
    char *vc = harness_path(env, "vault/cert.pem"), *vk = harness_path(env, "vault/key.pem");
    int vport;
    const char *extra[] = { "--tls", vc, vk, "-s", spec(env, 0, "tls/mx.cert", "key", "mail/cert.pem"),
                            "-s", spec(env, 1, "tls/mx.key", "key", "mail/key.pem"), NULL };
    pid_t vd = vaultd_start(env, &vport, extra);
    unsetenv("VAULT_CACERT");
    policy(env, "tls_certificate = { vault_mount = 'secret', vault_path = 'tls/mx.cert',"
                " vault_address = 'https://localhost:%d', vault_token = '" TOKEN "' },"
                " tls_private_key = { vault_mount = 'secret', vault_path = 'tls/mx.key',"
                " vault_address = 'https://localhost:%d', vault_token = '" TOKEN "' },", vport, vport);
    expect_startup_failure(env, NULL, "tls_certificate: HashiCorp Vault .*: TLS: the server certificate does not"
                           " verify: self-signed certificate", 1);
    setenv("VAULT_CACERT", vc, 1);
    harness_start(env);
    struct smtpc *c = session(env);
    smtpc_starttls(c);
    ck_assert_msg(!strcmp(c->tls_peer_cn, "vault.test.example"), "certificate CN \"%s\"", c->tls_peer_cn);
    quit(c);
    char *log = vault_log(env);
    ck_assert_msg(count_lines(log) == 2, "vaultd saw:\n%s", log);
    free(log);
    free(vc);
    free(vk);
    harness_env_free(env);
    harness_tool_stop(vd);
}
END_TEST

/* A Vault source that only smtp_server_get_dynamic_parameters names was
 * not read at start: STARTTLS is 454, the session goes on. */
START_TEST(test_dynamic_not_fetched)
{
    struct harness_env *env = harness_env_new();
    mail_cert(env);
    int vport;
    const char *extra[] = { "-s", spec(env, 0, "tls/mx.cert", "certificate", "mail/cert.pem"),
                            "-s", spec(env, 1, "tls/mx.key", "key", "mail/key.pem"), NULL };
    pid_t vd = vaultd_start(env, &vport, extra);
    char *tmpl = NULL;
    if (asprintf(&tmpl, "%s%s", HARNESS_POLICY_TEMPLATE,
                 "kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)\n"
                 "  return { tls_certificate = { vault_mount = 'secret', vault_path = 'tls/other.cert' } }\n"
                 "end)\n") < 0)
        abort();
    char *ex = NULL;
    if (asprintf(&ex, VAULT_CERT("%d", TOKEN) VAULT_KEY("%d", TOKEN), vport, vport) < 0)
        abort();
    harness_write_policy(env, tmpl, ex);
    harness_start(env);
    struct smtpc *c = session(env);
    smtpc_chat(c, "STARTTLS", "454 4.7.0 TLS not available due to temporary reason");
    smtpc_chat(c, "NOOP", "250 the goggles do nothing");
    smtpc_chat(c, "QUIT", BYE);
    smtpc_close(c);
    ck_assert_int_eq(harness_output_wait_regex(env, "tls_certificate: the Vault secret secret/tls/other\\.cert"
                                               " was not read by kumod at start", 5), 1);
    free(tmpl);
    free(ex);
    harness_env_free(env);
    harness_tool_stop(vd);
}
END_TEST

/* ---- tls_required_client_ca --------------------------------------------- */

#define CLIENT_SUBJECT "/C=US/O=Kumo Test/OU=Relays/CN=client.test.example"
#define CLIENT_NAMES "[\"C=US\",\"O=Kumo Test\",\"OU=Relays\",\"CN=client.test.example\"]"

/* Two CAs and a client certificate from each: env->dir/{ca1,ca2,good,other}. */
static void client_certs(struct harness_env *env)
{
    make_self_signed(env, "ca1", "/CN=Kumo Test CA", NULL);
    make_self_signed(env, "ca2", "/CN=Other CA", NULL);
    make_signed(env, "good", "ca1", CLIENT_SUBJECT);
    make_signed(env, "other", "ca2", "/CN=stranger.test.example");
}

static struct harness_env *start_client_ca_file(void)
{
    struct harness_env *env = harness_env_new();
    client_certs(env);
    policy(env, "tls_required_client_ca = '%s/ca1/cert.pem',", env->dir);
    harness_start(env);
    return env;
}

START_TEST(test_client_ca_verified)
{
    struct harness_env *env = start_client_ca_file();
    char *sn = tls_message(env, "good");
    ck_assert_msg(sn && !strcmp(sn, CLIENT_NAMES), "tls_peer_subject_name %s, want %s", sn ? sn : "unset",
                  CLIENT_NAMES);
    free(sn);
    harness_env_free(env);
}
END_TEST

START_TEST(test_client_ca_other_ca)
{
    struct harness_env *env = start_client_ca_file();
    char *sn = tls_message(env, "other");
    ck_assert_msg(!sn, "tls_peer_subject_name %s for a certificate of another CA", sn);
    harness_env_free(env);
}
END_TEST

START_TEST(test_client_ca_no_certificate)
{
    struct harness_env *env = start_client_ca_file();
    char *sn = tls_message(env, NULL);
    ck_assert_msg(!sn, "tls_peer_subject_name %s without a client certificate", sn);
    /* without tls_required_client_ca, a client certificate is not even asked for */
    harness_stop(env, NULL);
    harness_start_default(env, NULL);
    sn = tls_message(env, "good");
    ck_assert_msg(!sn, "tls_peer_subject_name %s with no tls_required_client_ca", sn);
    harness_env_free(env);
}
END_TEST

/* The CA from Vault (a KeySource), the certificate and key from files. */
START_TEST(test_client_ca_from_vault)
{
    struct harness_env *env = harness_env_new();
    client_certs(env);
    mail_cert(env);
    int vport;
    const char *extra[] = { "-s", spec(env, 0, "tls/client-ca", "key", "ca1/cert.pem"), NULL };
    pid_t vd = vaultd_start(env, &vport, extra);
    policy(env, "tls_certificate = '%s/mail/cert.pem', tls_private_key = '%s/mail/key.pem',"
                " tls_required_client_ca = { vault_mount = 'secret', vault_path = 'tls/client-ca',"
                " vault_address = 'http://127.0.0.1:%d', vault_token = '" TOKEN "' },",
           env->dir, env->dir, vport);
    harness_start(env);
    char *sn = tls_message(env, "good");
    ck_assert_msg(sn && !strcmp(sn, CLIENT_NAMES), "tls_peer_subject_name %s, want %s", sn ? sn : "unset",
                  CLIENT_NAMES);
    free(sn);
    sn = tls_message(env, "other");
    ck_assert_msg(!sn, "tls_peer_subject_name %s for a certificate of another CA", sn);
    harness_env_free(env);
    harness_tool_stop(vd);
}
END_TEST

START_TEST(test_client_ca_bad_file)
{
    struct harness_env *env = harness_env_new();
    policy(env, "tls_required_client_ca = '%s/nope/ca.pem',", env->dir);
    expect_startup_failure(env, NULL, "listener .*: tls_required_client_ca .*nope/ca\\.pem", 1);
    mail_cert(env);
    policy(env, "tls_required_client_ca = '%s/mail/key.pem',", env->dir);
    expect_startup_failure(env, NULL, "listener .*: tls_required_client_ca .*key\\.pem: no PEM certificate", 1);
    harness_env_free(env);
}
END_TEST

static Suite *vault_suite(void)
{
    Suite *s = suite_create("e2e_vault");
    TCase *tc = harness_tcase("vault");
    tcase_add_test(tc, test_cert_and_key_from_vault);
    tcase_add_test(tc, test_env_address_and_token);
    tcase_add_test(tc, test_bad_token);
    tcase_add_test(tc, test_unreachable);
    tcase_add_test(tc, test_silent_vault);
    tcase_add_test(tc, test_missing_field_secret_token);
    tcase_add_test(tc, test_https);
    tcase_add_test(tc, test_dynamic_not_fetched);
    suite_add_tcase(s, tc);
    tc = harness_tcase("client_ca");
    tcase_add_test(tc, test_client_ca_verified);
    tcase_add_test(tc, test_client_ca_other_ca);
    tcase_add_test(tc, test_client_ca_no_certificate);
    tcase_add_test(tc, test_client_ca_from_vault);
    tcase_add_test(tc, test_client_ca_bad_file);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return harness_run_suite(vault_suite());
}
