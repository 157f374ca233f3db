/* Unit tests for qmgr_config.c: queue names as KumoMTA forms them, and
 * get_queue_config / get_egress_path_config answers read with KumoMTA's
 * defaults. */
#include "qmgr/qmgr.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static const struct {
	const char *campaign, *tenant, *domain, *routing, *want;
} names[] = {
	/* the eight rows of KumoMTA's queues.md table */
	{ "camp", "ten", "d.example", NULL, "camp:ten@d.example" },
	{ "camp", "ten", "d.example", "r.example", "camp:ten@d.example!r.example" },
	{ NULL, "ten", "d.example", NULL, "ten@d.example" },
	{ NULL, "ten", "d.example", "r.example", "ten@d.example!r.example" },
	{ "camp", NULL, "d.example", NULL, "camp:@d.example" },
	{ "camp", NULL, "d.example", "r.example", "camp:@d.example!r.example" },
	{ NULL, NULL, "d.example", NULL, "d.example" },
	{ NULL, NULL, "d.example", "r.example", "d.example!r.example" },
};

START_TEST(test_queue_name)
{
	char *n = queue_name(names[_i].campaign, names[_i].tenant, names[_i].domain, names[_i].routing);
	ck_assert_str_eq(n, names[_i].want);
	free(n);
}
END_TEST

static cJSON *J(const char *text)
{
	cJSON *j = cJSON_Parse(text);
	ck_assert_msg(j != NULL, "bad test JSON: %s", text);
	return j;
}

START_TEST(test_queue_defaults)
{
	struct queue_config c;
	char err[200];
	ck_assert_int_eq(queue_config_parse(NULL, &c, err, sizeof err), 0);
	ck_assert(c.retry_interval == 1200.0);
	ck_assert(c.max_age == 7 * 86400.0);
	ck_assert(c.max_retry_interval == 0);
	ck_assert_ptr_null(c.mx_list);
	queue_config_free(&c);
	cJSON *empty = J("{}");
	ck_assert_int_eq(queue_config_parse(empty, &c, err, sizeof err), 0);
	ck_assert(c.retry_interval == 1200.0);
	queue_config_free(&c);
	cJSON_Delete(empty);
}
END_TEST

START_TEST(test_queue_values)
{
	struct queue_config c;
	char err[200];
	cJSON *j = J("{\"retry_interval\":\"1 minute\",\"max_retry_interval\":\"1 hour\",\"max_age\":\"2 days\","
		     "\"egress_pool\":\"pool0\",\"protocol\":{\"smtp\":{\"mx_list\":[\"mx.example.com:2025\","
		     "{\"name\":\"mx2\",\"addr\":\"10.0.0.1\"},{\"addr\":\"10.0.0.2:26\"}]}}}");
	ck_assert_int_eq(queue_config_parse(j, &c, err, sizeof err), 0);
	ck_assert(c.retry_interval == 60.0);
	ck_assert(c.max_retry_interval == 3600.0);
	ck_assert(c.max_age == 2 * 86400.0);
	ck_assert_str_eq(c.egress_pool, "pool0");
	ck_assert_uint_eq(c.n_mx, 3);
	ck_assert_str_eq(c.mx_list[0].name, "mx.example.com:2025");
	ck_assert_ptr_null(c.mx_list[0].addr);
	ck_assert_str_eq(c.mx_list[1].name, "mx2");
	ck_assert_str_eq(c.mx_list[1].addr, "10.0.0.1");
	ck_assert_str_eq(c.mx_list[2].name, "10.0.0.2:26");
	ck_assert_str_eq(c.mx_list[2].addr, "10.0.0.2:26");
	queue_config_free(&c);
	cJSON_Delete(j);
}
END_TEST

START_TEST(test_queue_bad)
{
	static const char *const bad[] = {
		"\"not a table\"",
		"{\"retry_interval\":\"soon\"}",
		"{\"max_age\":true}",
		"{\"protocol\":{\"smtp\":{\"mx_list\":\"mx.example.com\"}}}",
		"{\"protocol\":{\"smtp\":{\"mx_list\":[]}}}",
		"{\"protocol\":{\"smtp\":{\"mx_list\":[42]}}}",
		"{\"protocol\":{}}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct queue_config c;
		char err[200] = "";
		cJSON *j = J(bad[i]);
		ck_assert_msg(queue_config_parse(j, &c, err, sizeof err) == -1, "accepted %s", bad[i]);
		ck_assert_msg(err[0], "no reason for %s", bad[i]);
		cJSON_Delete(j);
	}
}
END_TEST

static bool prohibits(const struct egress_path *p, const char *ip)
{
	struct cidr a;
	char err[100];
	ck_assert_int_eq(cidr_parse(ip, &a, err, sizeof err), 0);
	for (size_t i = 0; i < p->n_prohibited; i++)
		if (cidr_contains(&p->prohibited[i], &a))
			return true;
	return false;
}

START_TEST(test_path_defaults)
{
	struct egress_path p;
	char err[200];
	ck_assert_int_eq(egress_path_parse(NULL, &p, err, sizeof err), 0);
	ck_assert_int_eq(p.smtp_port, 25);
	ck_assert_int_eq(p.tls, TLS_OPPORTUNISTIC);
	ck_assert_int_eq(p.connection_limit, 32);
	ck_assert_int_eq(p.max_deliveries_per_connection, 1024);
	ck_assert(p.timeouts.connect == 60 && p.timeouts.banner == 60 && p.timeouts.data_dot == 300);
	ck_assert(p.timeouts.idle == 5 && p.timeouts.rset == 5 && p.timeouts.starttls == 5);
	/* KumoMTA's default prohibited_hosts: loopback and the any-addresses */
	ck_assert(prohibits(&p, "127.0.0.1"));
	ck_assert(prohibits(&p, "127.255.0.9"));
	ck_assert(prohibits(&p, "::1"));
	ck_assert(prohibits(&p, "0.0.0.0"));
	ck_assert(prohibits(&p, "::"));
	ck_assert(!prohibits(&p, "192.0.2.1"));
	ck_assert_uint_eq(p.n_skip, 0);
	egress_path_free(&p);
}
END_TEST

START_TEST(test_path_values)
{
	struct egress_path p;
	char err[200];
	cJSON *j = J("{\"smtp_port\":2526,\"enable_tls\":\"RequiredInsecure\",\"connection_limit\":\"4\","
		     "\"max_deliveries_per_connection\":7,\"prohibited_hosts\":{},\"skip_hosts\":[\"10.0.0.0/8\"],"
		     "\"ehlo_domain\":\"out.example\",\"connect_timeout\":\"2s\",\"data_dot_timeout\":9,"
		     "\"idle_timeout\":\"1 minute\"}");
	ck_assert_int_eq(egress_path_parse(j, &p, err, sizeof err), 0);
	ck_assert_int_eq(p.smtp_port, 2526);
	ck_assert_int_eq(p.tls, TLS_REQUIRED_INSECURE);
	ck_assert_int_eq(p.connection_limit, 4);
	ck_assert_int_eq(p.max_deliveries_per_connection, 7);
	ck_assert_uint_eq(p.n_prohibited, 0);   /* {} is the empty list, as in Lua */
	ck_assert_uint_eq(p.n_skip, 1);
	ck_assert_str_eq(p.ehlo_domain, "out.example");
	ck_assert(p.timeouts.connect == 2 && p.timeouts.data_dot == 9 && p.timeouts.idle == 60);
	ck_assert(p.timeouts.banner == 60);
	egress_path_free(&p);
	cJSON_Delete(j);
}
END_TEST

START_TEST(test_path_bad)
{
	static const char *const bad[] = {
		"[1]",
		"{\"enable_tls\":\"Sometimes\"}",
		"{\"prohibited_hosts\":[\"10.0.0.1/8\"]}",
		"{\"skip_hosts\":[\"not-an-ip\"]}",
		"{\"connect_timeout\":\"forever\"}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct egress_path p;
		char err[200] = "";
		cJSON *j = J(bad[i]);
		ck_assert_msg(egress_path_parse(j, &p, err, sizeof err) == -1, "accepted %s", bad[i]);
		ck_assert_msg(err[0], "no reason for %s", bad[i]);
		cJSON_Delete(j);
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("qmgr_config");
	TCase *tc = tcase_create("config");
	tcase_add_loop_test(tc, test_queue_name, 0, (int)(sizeof names / sizeof names[0]));
	tcase_add_test(tc, test_queue_defaults);
	tcase_add_test(tc, test_queue_values);
	tcase_add_test(tc, test_queue_bad);
	tcase_add_test(tc, test_path_defaults);
	tcase_add_test(tc, test_path_values);
	tcase_add_test(tc, test_path_bad);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
