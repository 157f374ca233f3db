/* Unit tests for listener parameters: validation rows, defaults and the
 * peer/via merge order. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lib/params.h"
#include "lib/toml.h"

struct row {
	const char *json;
	enum params_level level;
	const char *err; /* NULL: valid; else a substring of the error */
};

static const struct row rows[] = {
	{ "{\"listen\":\"127.0.0.1:2525\"}", PARAMS_TOP, NULL },
	{ "{\"listen\":\"[::1]:25\",\"hostname\":\"mx.example\"}", PARAMS_TOP, NULL },
	{ "{\"listen\":\"::1:25\"}", PARAMS_TOP, "brackets" },
	{ "{\"listen\":\"127.0.0.1\"}", PARAMS_TOP, "listen" },
	{ "{\"listen\":\"127.0.0.1:99999\"}", PARAMS_TOP, "port" },
	{ "{\"listen\":\"127.0.0.1:25\"}", PARAMS_NESTED, "listen" },
	{ "{\"max_connections\":10}", PARAMS_NESTED, "max_connections" },
	{ "{\"bannr\":\"x\"}", PARAMS_TOP, "unknown listener parameter 'bannr'" },
	{ "{\"banner\":\"hi\"}", PARAMS_NESTED, NULL },
	{ "{\"banner\":\"a\\r\\nb\"}", PARAMS_TOP, "line breaks" },
	{ "{\"client_timeout\":\"1 minute\"}", PARAMS_TOP, NULL },
	{ "{\"client_timeout\":\"soon\"}", PARAMS_TOP, "client_timeout" },
	{ "{\"client_timeout\":30}", PARAMS_TOP, NULL },
	{ "{\"max_message_size\":-1}", PARAMS_TOP, "max_message_size" },
	{ "{\"max_message_size\":1.5}", PARAMS_TOP, "max_message_size" },
	{ "{\"max_recipients_per_message\":0}", PARAMS_TOP, "at least 1" },
	{ "{\"relay_hosts\":[\"10.0.0.0/24\",\"::1\"]}", PARAMS_TOP, NULL },
	{ "{\"relay_hosts\":[\"10.0.0.1/24\"]}", PARAMS_TOP, "relay_hosts: '10.0.0.1/24'" },
	{ "{\"relay_hosts\":{}}", PARAMS_TOP, NULL },
	{ "{\"relay_hosts\":\"10.0.0.0/8\"}", PARAMS_TOP, "relay_hosts" },
	{ "{\"invalid_line_endings\":\"Fix\"}", PARAMS_TOP, NULL },
	{ "{\"invalid_line_endings\":\"fix\"}", PARAMS_TOP, "invalid_line_endings" },
	{ "{\"batch_handling\":\"BatchByDomain\"}", PARAMS_TOP, NULL },
	{ "{\"batch_handling\":\"Sometimes\"}", PARAMS_TOP, "batch_handling" },
	{ "{\"deferred_spool\":\"yes\"}", PARAMS_TOP, "deferred_spool" },
	{ "{\"trace_headers\":{\"received_header\":false,\"include_meta_names\":[\"tenant\"]}}", PARAMS_TOP, NULL },
	{ "{\"trace_headers\":{\"recieved_header\":false}}", PARAMS_TOP, "recieved_header" },
	{ "{\"tls_certificate\":\"/etc/cert.pem\"}", PARAMS_TOP, NULL },
	{ "{\"tls_certificate\":{\"vault_mount\":\"secret\",\"vault_path\":\"tls/x\"}}", PARAMS_TOP, NULL },
	{ "{\"tls_certificate\":{\"vault_mount\":\"secret\"}}", PARAMS_TOP, "tls_certificate" },
	{ "{\"meta\":{\"x\":1}}", PARAMS_TOP, NULL },
	{ "{\"peer\":{\"10.0.0.0/8\":{\"banner\":\"p\"}}}", PARAMS_TOP, NULL },
	{ "{\"peer\":{\"10.0.0.1/8\":{\"banner\":\"p\"}}}", PARAMS_TOP, "host bits" },
	{ "{\"via\":{\"10.0.0.1\":{\"listen\":\"1.2.3.4:25\"}}}", PARAMS_TOP, "listen" },
	{ "{\"via\":{\"10.0.0.1\":{\"bannr\":\"x\"}}}", PARAMS_TOP, "bannr" },
	{ "[1,2]", PARAMS_TOP, "table" },
	{ "{\"require_proxy_protocol\":true}", PARAMS_TOP, NULL },
	{ "{\"require_proxy_protocol\":false,\"allow_xclient\":true}", PARAMS_TOP, NULL },
};

START_TEST(check_row)
{
	const struct row *r = &rows[_i];
	cJSON *j = cJSON_Parse(r->json);
	ck_assert_ptr_nonnull(j);
	char err[300] = "";
	int rc = params_check(j, r->level, err, sizeof err);
	if (!r->err)
		ck_assert_msg(rc == 0, "%s: %s", r->json, err);
	else
		ck_assert_msg(rc == -1 && strstr(err, r->err), "%s: rc %d err '%s', want '%s'", r->json, rc, err, r->err);
	cJSON_Delete(j);
}
END_TEST

START_TEST(defaults_match_kumomta)
{
	struct listener_params p;
	params_defaults(&p, "mx.example");
	ck_assert_str_eq(p.listen, "127.0.0.1:2025");
	ck_assert_str_eq(p.banner, "KumoMTA");
	ck_assert_str_eq(p.hostname, "mx.example");
	ck_assert(p.client_timeout == 60);
	ck_assert(p.data_processing_timeout == 300);
	ck_assert_uint_eq(p.max_message_size, 20 * 1024 * 1024);
	ck_assert_uint_eq(p.max_recipients_per_message, 1024);
	ck_assert_uint_eq(p.max_messages_per_connection, 10000);
	ck_assert_uint_eq(p.line_length_hard_limit, 998);
	ck_assert_uint_eq(p.data_buffer_size, 128 * 1024);
	ck_assert_uint_eq(p.max_connections, 32768);
	ck_assert_int_eq(p.invalid_line_endings, ILE_DENY);
	ck_assert_int_eq(p.batch_handling, BATCH_BIFURCATE_ALWAYS);
	ck_assert_str_eq(p.trace_headers.header_name, "X-KumoRef");
	struct cidr lo, other;
	char err[64];
	cidr_parse("127.0.0.1", &lo, err, sizeof err);
	cidr_parse("127.0.0.2", &other, err, sizeof err);
	ck_assert(params_relay_allowed(&p, &lo));
	ck_assert(!params_relay_allowed(&p, &other));
	params_free(&p);
}
END_TEST

START_TEST(peer_then_via_then_longest_prefix)
{
	const char *json = "{\"banner\":\"base\",\"hostname\":\"h0\",\"meta\":{\"a\":1},"
			   "\"peer\":{\"10.0.0.0/8\":{\"banner\":\"peer8\",\"meta\":{\"b\":2}},"
			   "\"10.1.0.0/16\":{\"banner\":\"peer16\",\"hostname\":\"h1\"}},"
			   "\"via\":{\"192.0.2.1\":{\"hostname\":\"via\"}}}";
	cJSON *j = cJSON_Parse(json);
	struct cidr peer, local, far;
	char err[300];
	cidr_parse("10.1.2.3", &peer, err, sizeof err);
	cidr_parse("192.0.2.1", &local, err, sizeof err);
	cidr_parse("192.0.2.9", &far, err, sizeof err);
	struct listener_params p;
	params_defaults(&p, "x");
	ck_assert_int_eq(params_apply(&p, j, PARAMS_TOP, &peer, &local, err, sizeof err), 0);
	ck_assert_str_eq(p.banner, "peer16");   /* longest prefix wins */
	ck_assert_str_eq(p.hostname, "via");    /* via applies after peer */
	ck_assert_ptr_nonnull(cJSON_GetObjectItem(p.meta, "a"));
	ck_assert_ptr_null(cJSON_GetObjectItem(p.meta, "b")); /* only the best peer block */
	params_free(&p);
	params_defaults(&p, "x");
	ck_assert_int_eq(params_apply(&p, j, PARAMS_TOP, &peer, &far, err, sizeof err), 0);
	ck_assert_str_eq(p.hostname, "h1");
	/* a dynamic table goes on top */
	cJSON *dyn = cJSON_Parse("{\"banner\":\"dyn\"}");
	ck_assert_int_eq(params_apply(&p, dyn, PARAMS_NESTED, &peer, &far, err, sizeof err), 0);
	ck_assert_str_eq(p.banner, "dyn");
	cJSON_Delete(dyn);
	params_free(&p);
	cJSON_Delete(j);
}
END_TEST

/* Every listener parameter the code accepts has an entry in kumo-policy(5):
 * a tagged paragraph whose first line names it (".B name" or in ".BR"). */
START_TEST(every_parameter_is_documented)
{
	const char *src = getenv("KUMO_SRC");
	char path[4096];
	snprintf(path, sizeof path, "%s/man/kumo-policy.5", src ? src : ".");
	FILE *f = fopen(path, "r");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	static char page[1 << 18];
	size_t n = fread(page, 1, sizeof page - 1, f);
	fclose(f);
	page[n] = 0;
	for (size_t i = 0; params_name(i); i++) {
		const char *name = params_name(i);
		bool found = false;
		/* look for ".TP\n.B name\n" or ".TP\n.BR ... name ..." */
		for (const char *p = strstr(page, ".TP\n"); p && !found; p = strstr(p + 1, ".TP\n")) {
			const char *line = p + 4, *end = strchr(line, '\n');
			if (!end || (strncmp(line, ".B ", 3) != 0 && strncmp(line, ".BR ", 4) != 0))
				continue;
			size_t len = strlen(name);
			for (const char *q = line; q && q < end; q = strstr(q + 1, name)) {
				q = strstr(q, name);
				if (!q || q >= end)
					break;
				if ((q[-1] == ' ' || q[-1] == '"') && (q[len] == ' ' || q[len] == '\n' || q[len] == '"')) {
					found = true;
					break;
				}
			}
		}
		ck_assert_msg(found, "listener parameter '%s' has no entry in %s", name, path);
	}
}
END_TEST

/* conf/listener_params.toml, the documented example, stays valid. */
START_TEST(example_toml_is_valid)
{
	const char *src = getenv("KUMO_SRC");
	char path[4096];
	snprintf(path, sizeof path, "%s/conf/listener_params.toml", src ? src : ".");
	FILE *f = fopen(path, "r");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	static char text[1 << 16];
	size_t n = fread(text, 1, sizeof text - 1, f);
	fclose(f);
	char err[300];
	cJSON *j = toml_parse(text, n, err, sizeof err);
	ck_assert_msg(j != NULL, "%s: %s", path, err);
	ck_assert_msg(params_check(j, PARAMS_NESTED, err, sizeof err) == 0, "%s: %s", path, err);
	cJSON_Delete(j);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("params");
	TCase *tc = tcase_create("params");
	tcase_add_loop_test(tc, check_row, 0, (int)(sizeof rows / sizeof rows[0]));
	tcase_add_test(tc, defaults_match_kumomta);
	tcase_add_test(tc, peer_then_via_then_longest_prefix);
	tcase_add_test(tc, every_parameter_is_documented);
	tcase_add_test(tc, example_toml_is_valid);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
