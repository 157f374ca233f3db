/*
 * Assertions about what kumod left behind: spool files for a message id and
 * the JSON log records.  Each fails the Check test at the caller's line with
 * what it looked for and what it found.
 */
#ifndef EXPECT_H
#define EXPECT_H

#include "harness.h"

/*
 * The message `id` has a file under spool/data containing data_needle (if
 * not NULL) and a file under spool/meta containing each of meta_needles
 * (NULL-terminated, may be NULL).  Returns the data file's content (caller
 * frees) and its length in *len (may be NULL).
 */
#define expect_spooled(env, id, data_needle, meta_needles, len) \
    expect_spooled_at(__FILE__, __LINE__, env, id, data_needle, meta_needles, len)
char *expect_spooled_at(const char *file, int line, const struct harness_env *env,
                        const char *id, const char *data_needle,
                        const char *const meta_needles[], size_t *len);

/* No file under spool/data or spool/meta contains needle. */
#define expect_not_spooled(env, needle) expect_not_spooled_at(__FILE__, __LINE__, env, needle)
void expect_not_spooled_at(const char *file, int line, const struct harness_env *env,
                           const char *needle);

/*
 * Within HARNESS_LOG_TIMEOUT, the log dir holds a Reception record for id
 * with this sender and recipient (a string, or an array holding it) and
 * reception_protocol "ESMTP".
 */
#define expect_reception(env, id, sender, rcpt) \
    expect_reception_at(__FILE__, __LINE__, env, id, sender, rcpt)
void expect_reception_at(const char *file, int line, const struct harness_env *env,
                         const char *id, const char *sender, const char *rcpt);

/* The JSON on the first line of the message's spool meta file (caller
 * deletes); fails the test when there is none. */
#define meta_json(env, id) expect_meta_json_at(__FILE__, __LINE__, env, id)
cJSON *expect_meta_json_at(const char *file, int line, const struct harness_env *env, const char *id);

/* A listing of spool/data and spool/meta, for failure messages; caller frees. */
char *expect_spool_listing(const struct harness_env *env);


/* kumod with this policy (env's when NULL) must fail to start: non-zero
 * exit, one output line matching regex, nothing left running and, if
 * check_port, nothing listening on env's port. */
#define expect_startup_failure(env, policy, regex, check_port) \
    expect_startup_failure_at(__FILE__, __LINE__, env, policy, regex, check_port)
void expect_startup_failure_at(const char *file, int line, struct harness_env *env,
                               const char *policy, const char *regex, int check_port);

#endif
