/*
 * Spool and log assertions for end-to-end tests (see expect.h).  Messages
 * are found in the spool with the spool library (harness_spool_lookup), as
 * kumo-qmgr finds them.
 */
#include "expect.h"

#include <sys/wait.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *expect_spool_listing(const struct harness_env *env)
{
    return harness_spool_ids(env);
}

/* Shows a file's content escaped and capped, for failure messages. */
static char *show(const char *data, size_t len)
{
    size_t cap = len > 800 ? 800 : len;
    char *s = malloc(cap * 4 + 32);
    if (!s)
        abort();
    size_t k = 0;
    for (size_t i = 0; i < cap; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == '\r') {
            memcpy(s + k, "\\r", 2);
            k += 2;
        } else if (c == '\n') {
            memcpy(s + k, "\\n", 2);
            k += 2;
        } else if (c >= 0x20 && c < 0x7f) {
            s[k++] = (char)c;
        } else {
            k += (size_t)sprintf(s + k, "\\x%02x", c);
        }
    }
    if (cap < len)
        k += (size_t)sprintf(s + k, "[... %zu more]", len - cap);
    s[k] = 0;
    return s;
}

char *expect_spooled_at(const char *file, int line, const struct harness_env *env,
                        const char *id, const char *data_needle,
                        const char *const meta_needles[], size_t *lenp)
{
    struct harness_spooled sp;
    if (!harness_spool_lookup(env, id, 1, &sp)) {
        char *l = expect_spool_listing(env);
        harness_fail(file, line, "message %s is not in the spool\n%s", id, l);
    }
    char *data = sp.data, *meta = sp.meta;
    size_t dlen = sp.dlen, mlen = sp.mlen;
    const char *dpath = sp.data_path, *mpath = sp.meta_path;
    if (data_needle && !harness_contains(data, dlen, data_needle)) {
        char *a = show(data_needle, strlen(data_needle)), *b = show(data, dlen);
        harness_fail(file, line, "spooled data of %s (%s) does not contain\n    \"%s\"\n"
                     "its content:\n    \"%s\"", id, dpath, a, b);
    }
    for (int i = 0; meta_needles && meta_needles[i]; i++)
        if (!harness_contains(meta, mlen, meta_needles[i])) {
            char *b = show(meta, mlen);
            harness_fail(file, line, "spooled meta of %s (%s) does not contain \"%s\"\n"
                         "its content:\n    \"%s\"", id, mpath, meta_needles[i], b);
        }
    sp.data = NULL; /* the caller's */
    harness_spooled_free(&sp);
    if (lenp)
        *lenp = dlen;
    return data;
}

void expect_not_spooled_at(const char *file, int line, const struct harness_env *env,
                           const char *needle)
{
    const char *dirs[] = { "spool/data", "spool/meta", NULL };
    for (int d = 0; dirs[d]; d++) {
        char **files = harness_list_files(env, dirs[d]);
        for (char **f = files; *f; f++) {
            char *path = NULL;
            if (asprintf(&path, "%s/%s/%s", env->dir, dirs[d], *f) < 0)
                abort();
            size_t len = 0;
            char *data = harness_slurp(path, &len);
            if (data && harness_contains(data, len, needle))
                harness_fail(file, line, "%s holds \"%s\", from a message that was refused",
                             path, needle);
            free(data);
            free(path);
        }
        harness_strv_free(files);
    }
}

static int recipient_has(const cJSON *rec, const char *rcpt)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(rec, "recipient");
    if (cJSON_IsString(r))
        return !strcmp(r->valuestring, rcpt);
    const cJSON *it;
    if (!cJSON_IsArray(r))
        return 0;
    cJSON_ArrayForEach(it, r) {
        if (cJSON_IsString(it) && !strcmp(it->valuestring, rcpt))
            return 1;
    }
    return 0;
}

void expect_reception_at(const char *file, int line, const struct harness_env *env,
                         const char *id, const char *sender, const char *rcpt)
{
    cJSON *rec = harness_log_wait(env, "Reception", id);
    if (!rec) {
        char *sum = harness_logs_summary(env);
        harness_fail(file, line, "no {\"type\":\"Reception\",\"id\":\"%s\"} record in the log"
                     " dir within %d s\n%s", id, HARNESS_LOG_TIMEOUT, sum);
    }
    const char *s = harness_json_str(rec, "sender");
    const char *proto = harness_json_str(rec, "reception_protocol");
    const char *why = NULL;
    if (!s || strcmp(s, sender))
        why = "sender";
    else if (rcpt && !recipient_has(rec, rcpt))
        why = "recipient";
    else if (!proto || strcmp(proto, "ESMTP"))
        why = "reception_protocol (want \"ESMTP\")";
    if (why) {
        char *txt = cJSON_PrintUnformatted(rec);
        harness_fail(file, line, "Reception record for %s has the wrong %s (want sender"
                     " \"%s\", recipient \"%s\"):\n    %s", id, why, sender,
                     rcpt ? rcpt : "(any)", txt);
    }
    cJSON_Delete(rec);
}

/*
 * Runs kumod on env's policy (or on `policy` if not NULL) and expects: a
 * non-zero exit within 15 s, one output line matching `regex` (extended,
 * case-insensitive), at most 3 lines in all, nothing left running and (if
 * check_port) nothing listening on the port.
 */
void expect_startup_failure_at(const char *file, int line, struct harness_env *env,
                                      const char *policy, const char *regex, int check_port)
{
    const char *argv[] = { "kumod", "--policy", policy ? policy : env->policy, "--workers",
                           "2", NULL };
    char *out = NULL;
    int st = harness_run_at(file, line, env, argv, 15, &out);
    int lines = 0;
    for (const char *p = out; *p;) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        lines += l > 0;
        p += l + (nl != NULL);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) == 0)
        harness_fail(file, line, "kumod should exit non-zero; it ended with %s\noutput:\n%s",
                     harness_status_str(st), out);
    if (!harness_regex_match(out, regex, 1))
        harness_fail(file, line, "kumod's error should match /%s/ on one line; its output"
                     " (%s):\n%s", regex, harness_status_str(st), out);
    if (lines > 3)
        harness_fail(file, line, "kumod should print a one-line error; it printed %d lines:\n%s",
                     lines, out);
    if (env->leftover[0])
        harness_fail(file, line, "processes left running after kumod exited: %s",
                     env->leftover);
    if (check_port && harness_port_open(env->port))
        harness_fail(file, line, "port %d accepts connections after kumod failed", env->port);
    free(out);
}

cJSON *expect_meta_json_at(const char *file, int line, const struct harness_env *env, const char *id)
{
    struct harness_spooled sp;
    if (!harness_spool_lookup(env, id, 1, &sp)) {
        char *l = expect_spool_listing(env);
        harness_fail(file, line, "message %s is not in the spool\n%s", id, l);
    }
    char *nl = memchr(sp.meta, '\n', sp.mlen);
    cJSON *j = cJSON_ParseWithLength(sp.meta, nl ? (size_t)(nl - sp.meta) : sp.mlen);
    if (!cJSON_IsObject(j))
        harness_fail(file, line, "%s: the meta of %s is not a JSON object: %.400s", sp.meta_path, id,
                     sp.meta);
    harness_spooled_free(&sp);
    return j;
}
