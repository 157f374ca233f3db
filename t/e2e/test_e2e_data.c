/*
 * End-to-end DATA phase: dot-stuffing (including a first line starting with
 * ".." and an empty body, both of which KumoMTA gets wrong), the size limit,
 * bare CR/LF, over-long body lines, 8-bit bodies stored byte for byte, a
 * large body, and a terminator split across TCP segments.  Each test starts
 * its own kumod and checks what landed in the spool.
 */
#include "expect.h"
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BANNER "220 " HARNESS_HOSTNAME " KumoMTA"
#define GO_AHEAD "354 Send body; end with CRLF.CRLF"
#define BYE "221 So long, and thanks for all the fish!"
#define GOGGLES "250 the goggles do nothing"

static struct smtpc *session(struct harness_env *env)
{
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    smtpc_cmd(c, "EHLO client.example");
    free(smtpc_expect_code(c, 250));
    return c;
}

static void begin_data(struct smtpc *c)
{
    smtpc_chat(c, "MAIL FROM:<a@example.com>", "250 OK <a@example.com>");
    smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
    smtpc_chat(c, "DATA", GO_AHEAD);
}

static void quit(struct smtpc *c)
{
    smtpc_chat(c, "QUIT", BYE);
    smtpc_expect_eof(c, SMTPC_TIMEOUT_MS);
    smtpc_close(c);
}

START_TEST(test_dot_stuffing)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    begin_data(c);
    /* First line "..leading": a client stuffed ".leading". */
    smtpc_sendf(c, "..leading\r\nSubject: dots\r\n\r\nmid\r\n..x\r\n...\r\n"
                   "x.\r\n .\r\n.. \r\nend\r\n.\r\n");
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);
    quit(c);
    size_t len = 0;
    char *data = expect_spooled(env, ids[0], "\r\nmid\r\n.x\r\n..\r\nx.\r\n .\r\n. \r\n"
                                "end\r\n", NULL, &len);
    int first_ok = (len >= 10 && !memcmp(data, ".leading\r\n", 10)) ||
                   harness_contains(data, len, "\n.leading\r\n");
    ck_assert_msg(first_ok && !harness_contains(data, len, "..leading"),
                  "a first body line \"..leading\" must be stored as \".leading\"; spool data:"
                  "\n%.*s", (int)(len > 600 ? 600 : len), data);
    ck_assert_msg(!harness_contains(data, len, "\n..x"), "\"..x\" stored unstuffed");
    free(data);
    harness_env_free(env);
}
END_TEST

/* ".": DATA followed at once by the terminator is an empty message. */
START_TEST(test_empty_body)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    begin_data(c);
    smtpc_send(c, ".\r\n", 3);
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);
    smtpc_chat(c, "NOOP", GOGGLES);
    quit(c);
    const char *meta[] = { "a@example.com", "b@example.net", NULL };
    free(expect_spooled(env, ids[0], NULL, meta, NULL));
    harness_env_free(env);
}
END_TEST

/* The terminator arrives in pieces: the server must not miss it nor take a
 * partial one for it. */
START_TEST(test_terminator_split)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    begin_data(c);
    const char *pieces[] = { "Subject: split\r\n\r\nsplit body\r", "\n", ".", "\r", "\n" };
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
        smtpc_send(c, pieces[i], strlen(pieces[i]));
        harness_pause_ms(150);
    }
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);
    /* and again: a stuffed "..x" split after its first dot, then the
     * terminator split after its CR */
    begin_data(c);
    const char *more[] = { "a\r\n.", ".x\r\n", "b\r\n.\r", "\n" };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        smtpc_send(c, more[i], strlen(more[i]));
        harness_pause_ms(150);
    }
    char ids2[1][33];
    smtpc_expect_ids(c, 1, ids2);
    quit(c);
    free(expect_spooled(env, ids[0], "\r\n\r\nsplit body\r\n", NULL, NULL));
    free(expect_spooled(env, ids2[0], "a\r\n.x\r\nb\r\n", NULL, NULL));
    harness_env_free(env);
}
END_TEST

START_TEST(test_max_message_size)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, "max_message_size = 1000,");
    struct smtpc *c = smtpc_connect(env, env->port, NULL);
    smtpc_expect(c, BANNER);
    smtpc_cmd(c, "EHLO client.example");
    char *ehlo = smtpc_expect_code(c, 250);
    ck_assert_msg(strstr(ehlo, "\n250-SIZE 1000\n") || strstr(ehlo, "\n250 SIZE 1000"),
                  "EHLO should advertise SIZE 1000:\n%s", ehlo);
    free(ehlo);

    /* under the limit: accepted */
    begin_data(c);
    smtpc_sendf(c, "Subject: small\r\n\r\nsmall-message-marker\r\n.\r\n");
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);

    /* over it: refused after the final dot, session still usable */
    begin_data(c);
    smtpc_sendf(c, "Subject: big\r\n\r\nbig-message-marker\r\n");
    char line[82];
    memset(line, 'y', 78);
    memcpy(line + 78, "\r\n", 3);
    for (int i = 0; i < 64; i++)
        smtpc_send(c, line, 80);
    smtpc_send(c, ".\r\n", 3);
    smtpc_expect(c, "552 5.3.4 message too big");
    smtpc_chat(c, "NOOP", GOGGLES);
    /* the transaction is gone */
    smtpc_chat(c, "RCPT TO:<b@example.net>", "503 5.5.0 MAIL FROM must be issued first");
    smtpc_chat(c, "MAIL FROM:<a@example.com> SIZE=1001", "552 5.3.4 message too big");
    smtpc_chat(c, "MAIL FROM:<a@example.com> SIZE=1000", "250 OK <a@example.com>");
    quit(c);
    free(expect_spooled(env, ids[0], "small-message-marker\r\n", NULL, NULL));
    expect_not_spooled(env, "big-message-marker");
    harness_env_free(env);
}
END_TEST

START_TEST(test_bare_lf)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    begin_data(c);
    smtpc_sendf(c, "Subject: lf\r\n\r\nbare-lf-marker\nsecond\r\n.\r\n");
    smtpc_expect(c, "552 5.6.0 message data must use CRLF for line endings");
    smtpc_chat(c, "NOOP", GOGGLES);
    begin_data(c);
    smtpc_sendf(c, "Subject: cr\r\n\r\nbare-cr-marker\rsecond\r\n.\r\n");
    smtpc_expect(c, "552 5.6.0 message data must use CRLF for line endings");
    smtpc_chat(c, "NOOP", GOGGLES);
    quit(c);
    expect_not_spooled(env, "bare-lf-marker");
    expect_not_spooled(env, "bare-cr-marker");
    harness_env_free(env);
}
END_TEST

/* A body line over line_length_hard_limit (998): 500 5.2.3 after the dot. */
START_TEST(test_data_line_too_long)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    begin_data(c);
    smtpc_sendf(c, "Subject: long\r\n\r\nlong-line-marker\r\n");
    char line[1503];
    memset(line, 'z', 1500);
    memcpy(line + 1500, "\r\n", 3);
    smtpc_send(c, line, 1502);
    smtpc_send(c, ".\r\n", 3);
    smtpc_expect(c, "500 5.2.3 line too long");
    smtpc_chat(c, "NOOP", GOGGLES);
    quit(c);
    expect_not_spooled(env, "long-line-marker");
    harness_env_free(env);
}
END_TEST

/* 8BITMIME: every byte value but NUL, CR and LF survives as sent. */
START_TEST(test_8bit_body_exact)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    smtpc_chat(c, "MAIL FROM:<a@example.com> BODY=8BITMIME", "250 OK <a@example.com>");
    smtpc_chat(c, "RCPT TO:<b@example.net>", "250 OK <b@example.net>");
    smtpc_chat(c, "DATA", GO_AHEAD);
    char body[400];
    size_t n = (size_t)snprintf(body, sizeof body, "Subject: 8bit\r\n\r\n");
    for (int b = 1; b < 256; b++) {
        if (b == '\r' || b == '\n')
            continue;
        body[n++] = (char)b;
        if (b % 64 == 0) {
            body[n++] = '\r';
            body[n++] = '\n';
        }
    }
    memcpy(body + n, "\r\n", 2);
    n += 2;
    body[n] = 0;
    smtpc_send(c, body, n);
    smtpc_send(c, ".\r\n", 3);
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);
    quit(c);
    free(expect_spooled(env, ids[0], body, NULL, NULL));
    harness_env_free(env);
}
END_TEST

/* A 2 MB message streams through and is stored whole. */
START_TEST(test_large_message)
{
    struct harness_env *env = harness_env_new();
    harness_start_default(env, NULL);
    struct smtpc *c = session(env);
    begin_data(c);
    size_t lines = 2 * 1024 * 1024 / 80, n = 0;
    char *body = malloc(lines * 80 + 64);
    n += (size_t)sprintf(body, "Subject: large\r\n\r\n");
    for (size_t i = 0; i < lines; i++)
        n += (size_t)sprintf(body + n, "%08zu %068d\r\n", i, 0);
    smtpc_send(c, body, n);
    smtpc_send(c, ".\r\n", 3);
    char ids[1][33];
    smtpc_expect_ids(c, 1, ids);
    quit(c);
    size_t len = 0;
    char *data = expect_spooled(env, ids[0], NULL, NULL, &len);
    ck_assert_msg(len >= n && memmem(data, len, body, n) != NULL,
                  "spool data (%zu bytes) does not hold the %zu-byte body intact", len, n);
    free(data);
    free(body);
    harness_env_free(env);
}
END_TEST

static Suite *data_suite(void)
{
    Suite *s = suite_create("e2e_data");
    TCase *tc = harness_tcase("data");
    tcase_add_test(tc, test_dot_stuffing);
    tcase_add_test(tc, test_empty_body);
    tcase_add_test(tc, test_terminator_split);
    tcase_add_test(tc, test_max_message_size);
    tcase_add_test(tc, test_bare_lf);
    tcase_add_test(tc, test_data_line_too_long);
    tcase_add_test(tc, test_8bit_body_exact);
    tcase_add_test(tc, test_large_message);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return harness_run_suite(data_suite());
}
