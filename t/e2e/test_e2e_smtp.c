/*
 * End-to-end SMTP sessions against a real bin/kumod on loopback: greeting,
 * EHLO/HELO, whole transactions with their spool files and log records,
 * pipelining, one message per recipient, relay refusal, concurrent sessions.
 * Each test starts its own kumod from HARNESS_POLICY_TEMPLATE and stops it.
 */
#include "expect.h"
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BANNER "220 " HARNESS_HOSTNAME " KumoMTA"
#define GO_AHEAD "354 Send body; end with CRLF.CRLF"
#define BYE "221 So long, and thanks for all the fish!"

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

static void ehlo(struct smtpc *c)
{
    smtpc_cmd(c, "EHLO client.example");
    char *t = smtpc_expect_code(c, 250);
    free(t);
}

static void quit(struct smtpc *c)
{
    smtpc_chat(c, "QUIT", BYE);
    smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
    smtpc_close(c);
}

START_TEST(test_banner_ehlo_helo)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);

    smtpc_cmd(c, "EHLO client.example");
    char *text = smtpc_expect_code(c, 250);
    char *lines[32];
    int n = split_lines(text, lines, 32);
    char *tr = smtpc_transcript(c, 2000);
    ck_assert_msg(n >= 2, "EHLO reply has a single line:\n%s", tr);
    ck_assert_msg(!strcmp(lines[0], "250-" HARNESS_HOSTNAME " Aloha client.example"),
                  "EHLO first line: want \"250-%s Aloha client.example\", got \"%s\"\n%s",
                  HARNESS_HOSTNAME, lines[0], tr);
    for (int i = 0; i < n; i++) {
        const char *want = i == n - 1 ? "250 " : "250-";
        ck_assert_msg(!strncmp(lines[i], want, 4), "EHLO line %d should start with \"%s\":"
                      " \"%s\"\n%s", i + 1, want, lines[i], tr);
    }
    /* KumoMTA's order for these four; SIZE (our addition) and STARTTLS may
     * sit anywhere after the greeting. */
    const char *ordered[] = { "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8" };
    int last = 0;
    for (int i = 0; i < 4; i++) {
        int at = find_line(lines, n, ordered[i]);
        ck_assert_msg(at > 0, "EHLO reply lacks %s:\n%s", ordered[i], tr);
        ck_assert_msg(at > last, "EHLO: %s should come after %s:\n%s", ordered[i],
                      i ? ordered[i - 1] : "the greeting", tr);
        last = at;
    }
    ck_assert_msg(find_line(lines, n, "SIZE 20971520") > 0,
                  "EHLO reply lacks \"SIZE 20971520\":\n%s", tr);
    free(tr);
    free(text);

    smtpc_chat(c, "HELO client.example", "250 Hello client.example!");
    smtpc_cmd(c, "EHLO [127.0.0.1]");
    smtpc_expect_prefix(c, "250-" HARNESS_HOSTNAME " Aloha [127.0.0.1]\n");
    smtpc_chat(c, "HELO [127.0.0.1]", "250 Hello [127.0.0.1]!");
    quit(c);
    harness_env_free(env);
}
END_TEST

/* KumoMTA advertises STARTTLS before TLS (it makes a self-signed certificate
 * when none is configured). */
START_TEST(test_ehlo_starttls)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    smtpc_cmd(c, "EHLO client.example");
    char *text = smtpc_expect_code(c, 250);
    char *lines[32];
    int n = split_lines(text, lines, 32);
    char *tr = smtpc_transcript(c, 2000);
    ck_assert_msg(find_line(lines, n, "STARTTLS") > 0, "EHLO reply lacks STARTTLS:\n%s", tr);
    free(tr);
    free(text);
    quit(c);
    harness_env_free(env);
}
END_TEST

START_TEST(test_custom_banner)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, "banner = 'Welcome to the test relay',");
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, "220 " HARNESS_HOSTNAME " Welcome to the test relay");
    quit(c);
    harness_env_free(env);
}
END_TEST

START_TEST(test_full_transaction)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    ehlo(c);
    smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
    smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
    smtpc_chat(c, "DATA", GO_AHEAD);
    smtpc_sendf(c, "From: a@example.com\r\nTo: b@example.net\r\nSubject: e2e full\r\n\r\n"
                   "Hello from the full-transaction test.\r\nSecond line.\r\n.\r\n");
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);
    quit(c);

    const char *meta[] = { "a@example.com", "b@example.net", NULL };
    free(expect_spooled(env, ids[0],
                        "Subject: e2e full\r\n\r\nHello from the full-transaction test.\r\n"
                        "Second line.\r\n", meta, NULL));
    expect_reception(env, ids[0], "a@example.com", "b@example.net");
    harness_env_free(env);
}
END_TEST

/* After DATA the transaction is gone: RCPT needs a new MAIL, and a second
 * transaction on the same session gets a new id. */
START_TEST(test_two_transactions_one_session)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    ehlo(c);
    const char *r1[] = { "one@example.net", NULL };
    const char *r2[] = { "two@example.net", NULL };
    char id1[1][33], id2[1][33];
    smtpc_transaction(c, "a@example.com", r1, "Subject: first\r\n\r\nfirst body\r\n", id1);
    smtpc_chat(c, "RCPT TO:<x@example.net>", "503 5.5.0 MAIL FROM must be issued first");
    smtpc_chat(c, "DATA", "503 5.5.0 MAIL FROM must be issued first");
    smtpc_transaction(c, "b@example.com", r2, "Subject: second\r\n\r\nsecond body\r\n", id2);
    ck_assert_msg(strcmp(id1[0], id2[0]) != 0, "two messages got the same id %s", id1[0]);
    quit(c);
    const char *m1[] = { "a@example.com", "one@example.net", NULL };
    const char *m2[] = { "b@example.com", "two@example.net", NULL };
    free(expect_spooled(env, id1[0], "first body\r\n", m1, NULL));
    free(expect_spooled(env, id2[0], "second body\r\n", m2, NULL));
    expect_reception(env, id1[0], "a@example.com", "one@example.net");
    expect_reception(env, id2[0], "b@example.com", "two@example.net");
    harness_env_free(env);
}
END_TEST

START_TEST(test_null_sender_postmaster)
{
    struct harness_env *env = harness_env_new();
    /* A bare Postmaster has no domain to deliver to: kumo-qmgr would bounce
     * it at once and take it out of the spool.  A queue whose next hop
     * cannot be resolved here keeps it there to be looked at. */
    harness_write_policy(env, HARNESS_POLICY_TEMPLATE
                         "kumo.on('smtp_server_message_received', function(msg)\n"
                         "  msg:set_meta('queue', 'held.example')\n"
                         "end)\n", NULL);
    harness_start(env);
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    ehlo(c);
    smtpc_chat(c, "MAIL FROM:<>", "250 OK <>");
    smtpc_cmd(c, "RCPT TO:<Postmaster>");
    smtpc_expect_prefix(c, "250 OK");
    smtpc_chat(c, "DATA", GO_AHEAD);
    smtpc_sendf(c, "Subject: bounce\r\n\r\nnull sender body\r\n.\r\n");
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);
    quit(c);
    const char *meta[] = { "Postmaster", NULL };
    free(expect_spooled(env, ids[0], "null sender body\r\n", meta, NULL));
    expect_reception(env, ids[0], "", NULL);
    harness_env_free(env);
}
END_TEST

/* RFC 2920: EHLO..DATA in one write; replies come back in order. */
START_TEST(test_pipelining)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    smtpc_sendf(c, "EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
                   "RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n");
    smtpc_expect_prefix(c, "250-" HARNESS_HOSTNAME " Aloha client.example\n");
    smtpc_expect(c, "250 OK <a@example.com>");
    smtpc_expect(c, "250 OK <b@example.net>");
    smtpc_expect(c, "250 OK <c@example.net>");
    smtpc_expect(c, GO_AHEAD);
    smtpc_sendf(c, "Subject: pipelined\r\n\r\npipelined body\r\n.\r\n");
    char ids[2][33];
    smtpc_expect_ids(c, 2, ids);
    quit(c);
    const char *mb[] = { "a@example.com", "b@example.net", NULL };
    const char *mc[] = { "a@example.com", "c@example.net", NULL };
    free(expect_spooled(env, ids[0], "pipelined body\r\n", mb, NULL));
    free(expect_spooled(env, ids[1], "pipelined body\r\n", mc, NULL));
    harness_env_free(env);
}
END_TEST

/* A client that does not wait for 354: the body and QUIT arrive in the same
 * write as the commands; they are taken as body after the 354. */
START_TEST(test_pipelining_one_write)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    smtpc_sendf(c, "EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
                   "RCPT TO:<b@example.net>\r\nDATA\r\nSubject: all at once\r\n\r\n"
                   "one write body\r\n.\r\nNOOP\r\nQUIT\r\n");
    smtpc_expect_prefix(c, "250-" HARNESS_HOSTNAME " Aloha client.example\n");
    smtpc_expect(c, "250 OK <a@example.com>");
    smtpc_expect(c, "250 OK <b@example.net>");
    smtpc_expect(c, GO_AHEAD);
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);
    smtpc_expect(c, "250 the goggles do nothing");
    smtpc_expect(c, BYE);
    smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
    smtpc_close(c);
    const char *meta[] = { "a@example.com", "b@example.net", NULL };
    free(expect_spooled(env, ids[0], "one write body\r\n", meta, NULL));
    harness_env_free(env);
}
END_TEST

/* Each recipient becomes its own message (BifurcateAlways). */
START_TEST(test_multi_recipient_ids)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    ehlo(c);
    const char *rcpts[] = { "r1@example.net", "r2@example.org", "r3@example.com", NULL };
    char ids[3][33];
    smtpc_transaction(c, "sender@example.com", rcpts, "Subject: three\r\n\r\nthree ways\r\n",
                      ids);
    quit(c);
    for (int i = 0; i < 3; i++) {
        const char *meta[] = { "sender@example.com", rcpts[i], NULL };
        char *data = expect_spooled(env, ids[i], "three ways\r\n", meta, NULL);
        free(data);
        /* its meta names only its own recipient */
        struct harness_spooled sp;
        ck_assert(harness_spool_lookup(env, ids[i], 1, &sp));
        size_t mlen = sp.mlen;
        char *m = sp.meta;
        for (int j = 0; j < 3; j++)
            ck_assert_msg(j == i || !harness_contains(m, mlen, rcpts[j]),
                          "meta of message %s (for %s) also names %s: %s", ids[i], rcpts[i],
                          rcpts[j], m);
        harness_spooled_free(&sp);
        expect_reception(env, ids[i], "sender@example.com", rcpts[i]);
    }
    harness_env_free(env);
}
END_TEST

static int is_550_rejection(const cJSON *rec, void *arg)
{
    (void)arg;
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(rec, "response");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(resp, "code");
    return cJSON_IsNumber(code) && code->valueint == 550;
}

/* Default relay_hosts is 127.0.0.1 and ::1: a client from 127.0.0.2 may not
 * relay. */
START_TEST(test_relay_refused_source_addr)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = smtpc_connect(env, env->port, "127.0.0.2");
    smtpc_expect(c, BANNER);
    ehlo(c);
    smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
    char want[200];
    snprintf(want, sizeof want, "550 5.7.1 relaying not permitted for 127.0.0.2:%d",
             c->local_port);
    smtpc_chat(c, "RCPT TO:<b@example.net>", want);
    smtpc_chat(c, "DATA", "503 5.5.0 RCPT TO must be issued first");
    smtpc_chat(c, "NOOP", "250 the goggles do nothing");
    quit(c);
    cJSON *rej = harness_log_wait_pred(env, "Rejection", is_550_rejection, NULL);
    if (!rej) {
        char *sum = harness_logs_summary(env);
        HFAIL("no Rejection record with response.code 550 in the log dir within %d s\n%s",
              HARNESS_LOG_TIMEOUT, sum);
    }
    cJSON_Delete(rej);
    harness_env_free(env);
}
END_TEST

START_TEST(test_relay_hosts_cidr_refuses)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, "relay_hosts = { '10.0.0.0/8' },");
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
    char want[200];
    snprintf(want, sizeof want, "550 5.7.1 relaying not permitted for 127.0.0.1:%d",
             c->local_port);
    smtpc_chat(c, "RCPT TO:<b@example.net>", want);
    quit(c);
    harness_env_free(env);
}
END_TEST

START_TEST(test_relay_hosts_cidr_allows)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, "relay_hosts = { '10.0.0.0/8', '127.0.0.0/8' },");
    struct smtpc *c = smtpc_connect(env, env->port, "127.0.0.2");
    smtpc_expect(c, BANNER);
    const char *rcpts[] = { "b@example.net", NULL };
    char ids[1][33];
    smtpc_transaction(c, "a@example.com", rcpts, "Subject: cidr\r\n\r\nallowed\r\n", ids);
    quit(c);
    harness_env_free(env);
}
END_TEST

/* Many sessions at once, their commands interleaved; every message gets its
 * own id and spool files. */
#define NSESS 12
START_TEST(test_concurrent_sessions)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c[NSESS];
    char want[200];
    for (int i = 0; i < NSESS; i++) {
        c[i] = smtpc_connect(env, env->port, NULL);
        smtpc_expect(c[i], BANNER);
    }
    for (int i = 0; i < NSESS; i++)
        smtpc_cmd(c[i], "MAIL FROM:<s%d@example.com>", i);
    for (int i = 0; i < NSESS; i++) {
        snprintf(want, sizeof want, "250 OK <s%d@example.com>", i);
        smtpc_expect(c[i], want);
        smtpc_cmd(c[i], "RCPT TO:<r%d@example.net>", i);
    }
    for (int i = 0; i < NSESS; i++) {
        snprintf(want, sizeof want, "250 OK <r%d@example.net>", i);
        smtpc_expect(c[i], want);
        smtpc_cmd(c[i], "DATA");
    }
    for (int i = 0; i < NSESS; i++) {
        smtpc_expect(c[i], GO_AHEAD);
        smtpc_sendf(c[i], "Subject: concurrent %d\r\n\r\nbody of session %d\r\n", i, i);
    }
    for (int i = 0; i < NSESS; i++)
        smtpc_send(c[i], ".\r\n", 3);
    char ids[NSESS][33];
    for (int i = 0; i < NSESS; i++) {
        char one[1][33];
        smtpc_expect_ids(c[i], 1, one);
        memcpy(ids[i], one[0], 33);
        for (int j = 0; j < i; j++)
            ck_assert_msg(strcmp(ids[i], ids[j]), "sessions %d and %d got the same id %s", j,
                          i, ids[i]);
    }
    for (int i = 0; i < NSESS; i++)
        quit(c[i]);
    for (int i = 0; i < NSESS; i++) {
        char body[64], s[64], r[64];
        snprintf(body, sizeof body, "body of session %d\r\n", i);
        snprintf(s, sizeof s, "s%d@example.com", i);
        snprintf(r, sizeof r, "r%d@example.net", i);
        const char *meta[] = { s, r, NULL };
        free(expect_spooled(env, ids[i], body, meta, NULL));
    }
    harness_env_free(env);
}
END_TEST

static Suite *smtp_suite(void)
{
    Suite *s = suite_create("e2e_smtp");
    TCase *tc = harness_tcase("session");
    tcase_add_test(tc, test_banner_ehlo_helo);
    tcase_add_test(tc, test_ehlo_starttls);
    tcase_add_test(tc, test_custom_banner);
    tcase_add_test(tc, test_full_transaction);
    tcase_add_test(tc, test_two_transactions_one_session);
    tcase_add_test(tc, test_null_sender_postmaster);
    tcase_add_test(tc, test_pipelining);
    tcase_add_test(tc, test_pipelining_one_write);
    tcase_add_test(tc, test_multi_recipient_ids);
    tcase_add_test(tc, test_concurrent_sessions);
    suite_add_tcase(s, tc);
    tc = harness_tcase("relay");
    tcase_add_test(tc, test_relay_refused_source_addr);
    tcase_add_test(tc, test_relay_hosts_cidr_refuses);
    tcase_add_test(tc, test_relay_hosts_cidr_allows);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return harness_run_suite(smtp_suite());
}
