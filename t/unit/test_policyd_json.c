/* Check suite for policyd/policyd_json.c: Lua -> JSON conversion (a table of
 * Lua expressions and the JSON they give, or the error), JSON -> Lua -> JSON
 * round trips, EnvelopeAddress arguments, and kumo.serde from Lua. */
#include "policyd/policyd.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <lauxlib.h>

static char tmpdir[64];
static struct policy *pol;

static void write_file(const char *name, const char *text)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

static void setup(void)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/policyd-json-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	write_file("policy.lua", "local kumo = require 'kumo'\n");
	char path[256], err[512];
	snprintf(path, sizeof path, "%s/policy.lua", tmpdir);
	pol = policy_load(path, err, sizeof err);
	ck_assert_msg(policy_load_error(pol) == NULL, "load: %s", err);
}

static void teardown(void)
{
	policy_free(pol);
	pol = NULL;
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
}

/* Evaluates "return <expr>" and leaves the value on the stack. */
static void eval(lua_State *L, const char *expr)
{
	char chunk[1024];
	snprintf(chunk, sizeof chunk, "return %s", expr);
	int rc = luaL_loadstring(L, chunk);
	ck_assert_msg(rc == 0, "%s: %s", expr, lua_tostring(L, -1));
	rc = lua_pcall(L, 0, 1, 0);
	ck_assert_msg(rc == 0, "%s: %s", expr, lua_tostring(L, -1));
}

static void assert_json(const cJSON *got, const char *want, const char *what)
{
	cJSON *w = cJSON_Parse(want);
	ck_assert_msg(w != NULL, "%s: bad expected JSON %s", what, want);
	char *text = cJSON_PrintUnformatted(got);
	ck_assert_msg(cJSON_Compare(w, got, 1), "%s: got %s, want %s", what, text, want);
	free(text);
	cJSON_Delete(w);
}

/* --- Lua -> JSON --- */

static const struct {
	const char *lua;
	const char *json;  /* expected, or NULL when an error is expected */
	const char *err;   /* substring of the error */
} to_json[] = {
	{ "nil", "null", NULL },
	{ "true", "true", NULL },
	{ "false", "false", NULL },
	{ "42", "42", NULL },
	{ "-7", "-7", NULL },
	{ "1.5", "1.5", NULL },
	{ "2^53", "9007199254740992", NULL },
	{ "'hi'", "\"hi\"", NULL },
	{ "'quote\" back\\\\ nl\\n'", "\"quote\\\" back\\\\ nl\\n\"", NULL },
	{ "{}", "{}", NULL },
	{ "{1, 2, 3}", "[1,2,3]", NULL },
	{ "{'a', {b = 1}, {}}", "[\"a\",{\"b\":1},{}]", NULL },
	{ "{[1] = 1, [3] = 3}", "{\"1\":1,\"3\":3}", NULL },
	{ "{[2] = 'x'}", "{\"2\":\"x\"}", NULL },
	{ "{1, 2, x = 3}", "{\"1\":1,\"2\":2,\"x\":3}", NULL },
	{ "{[1.5] = true, [-1] = false}", "{\"1.5\":true,\"-1\":false}", NULL },
	{ "{a = {b = {c = {1}}}}", "{\"a\":{\"b\":{\"c\":[1]}}}", NULL },
	{ "{a = nil, b = 'x'}", "{\"b\":\"x\"}", NULL },
	{ "print", NULL, "cannot serialize function" },
	{ "{f = print}", NULL, "cannot serialize function" },
	{ "{1, print}", NULL, "cannot serialize function" },
	{ "coroutine.create(print)", NULL, "cannot serialize thread" },
	{ "io.stdout", NULL, "cannot serialize userdata" },
	{ "{[true] = 1}", NULL, "key of type boolean" },
	{ "{[{}] = 1}", NULL, "key of type table" },
	{ "'a\\0b'", NULL, "NUL byte" },
	{ "(function() local t = {} t.t = t return t end)()", NULL, "deeper than 64" },
	{ "(function() local t = {} t[1] = t return t end)()", NULL, "deeper than 64" },
	{ "(function() local r = {} local t = r for i = 1, 64 do t.x = {} t = t.x end return r end)()",
	  NULL, NULL },  /* exactly 64 levels below the top: fine */
	{ "(function() local r = {} local t = r for i = 1, 65 do t.x = {} t = t.x end return r end)()",
	  NULL, "deeper than 64" },
};

START_TEST(test_lua_to_json)
{
	lua_State *L = pol->L;
	int top = lua_gettop(L);
	eval(L, to_json[_i].lua);
	char err[256] = "";
	cJSON *j = policy_json_from_lua(L, -1, err, sizeof err);
	lua_pop(L, 1);
	ck_assert_int_eq(lua_gettop(L), top);
	if (to_json[_i].json) {
		ck_assert_msg(j != NULL, "%s: %s", to_json[_i].lua, err);
		assert_json(j, to_json[_i].json, to_json[_i].lua);
	} else if (to_json[_i].err) {
		ck_assert_msg(j == NULL, "%s: expected an error", to_json[_i].lua);
		ck_assert_msg(strstr(err, to_json[_i].err) != NULL, "%s: error '%s', want '%s'",
			      to_json[_i].lua, err, to_json[_i].err);
	} else {
		ck_assert_msg(j != NULL, "%s: %s", to_json[_i].lua, err);
	}
	cJSON_Delete(j);
}
END_TEST

/* --- JSON -> Lua -> JSON --- */

static const struct {
	const char *in;
	const char *out;
} round_trip[] = {
	{ "null", "null" },
	{ "true", "true" },
	{ "12345678901", "12345678901" },
	{ "-0.25", "-0.25" },
	{ "\"x\\u00e9y\"", "\"x\\u00e9y\"" },
	{ "[1,\"a\",false]", "[1,\"a\",false]" },
	{ "{\"a\":[1,2,{\"b\":\"c\"}],\"d\":{}}", "{\"a\":[1,2,{\"b\":\"c\"}],\"d\":{}}" },
	{ "{\"a\":null,\"b\":1}", "{\"b\":1}" },    /* null members vanish */
	{ "[]", "{}" },                             /* Lua cannot tell [] from {} */
	{ "[1,null,3]", "{\"1\":1,\"3\":3}" },      /* a hole */
	{ "{\"1\":\"x\"}", "{\"1\":\"x\"}" },       /* string keys stay strings */
	{ "{\"__addr\":\"a@b.example\"}", "{\"__addr\":\"a@b.example\"}" },  /* no flag */
};

START_TEST(test_round_trip)
{
	lua_State *L = pol->L;
	int top = lua_gettop(L);
	cJSON *in = cJSON_Parse(round_trip[_i].in);
	ck_assert_ptr_nonnull(in);
	char err[256];
	ck_assert_int_eq(policy_json_push(L, in, 0, err, sizeof err), 0);
	ck_assert_int_eq(lua_gettop(L), top + 1);
	cJSON *out = policy_json_from_lua(L, -1, err, sizeof err);
	lua_pop(L, 1);
	ck_assert_msg(out != NULL, "%s: %s", round_trip[_i].in, err);
	assert_json(out, round_trip[_i].out, round_trip[_i].in);
	cJSON_Delete(in);
	cJSON_Delete(out);
	ck_assert_int_eq(lua_gettop(L), top);
}
END_TEST

START_TEST(test_addr_args)
{
	lua_State *L = pol->L;
	cJSON *in = cJSON_Parse("[{\"__addr\":\"joe@example.com\"},{\"list\":[{\"__addr\":\"\"}]}]");
	char err[256];
	ck_assert_int_eq(policy_json_push(L, in, POLICY_JSON_ADDR, err, sizeof err), 0);
	lua_setglobal(L, "ARGS");
	eval(L, "ARGS[1].user .. '|' .. ARGS[1].domain .. '|' .. ARGS[1].email .. '|' .. "
		"tostring(ARGS[1]) .. '|' .. ARGS[2].list[1].email .. '|' .. tostring(ARGS[1].nope)");
	ck_assert_str_eq(lua_tostring(L, -1), "joe|example.com|joe@example.com|joe@example.com||nil");
	lua_pop(L, 1);
	/* an EnvelopeAddress serializes as its email */
	lua_getglobal(L, "ARGS");
	cJSON *out = policy_json_from_lua(L, -1, err, sizeof err);
	lua_pop(L, 1);
	ck_assert_ptr_nonnull(out);
	assert_json(out, "[\"joe@example.com\",{\"list\":[\"\"]}]", "addr out");
	cJSON_Delete(out);
	cJSON_Delete(in);

	in = cJSON_Parse("[{\"__addr\":\"not an address\"}]");
	int top = lua_gettop(L);
	ck_assert_int_eq(policy_json_push(L, in, POLICY_JSON_ADDR, err, sizeof err), -1);
	ck_assert_msg(strstr(err, "invalid address 'not an address'") != NULL, "%s", err);
	lua_settop(L, top);
	cJSON_Delete(in);
}
END_TEST

/* --- kumo.serde and the deprecated kumo.json_* from Lua --- */

static const struct {
	const char *lua;     /* an expression giving a string */
	const char *want;    /* exact result, or "~substring" */
} serde[] = {
	{ "kumo.serde.json_encode({1, 2, {a = true}})", "[1,2,{\"a\":true}]" },
	{ "kumo.json_encode('x')", "\"x\"" },
	{ "kumo.serde.json_encode(nil)", "null" },
	{ "kumo.serde.json_encode({})", "{}" },
	{ "kumo.serde.json_encode_pretty({a = {1}})", "{\n\t\"a\":\t[1]\n}" },
	{ "kumo.json_encode_pretty({})", "{\n}" },
	{ "kumo.serde.json_parse('{\"a\": {\"b\": [10, 20]}}').a.b[2]", "20" },
	{ "kumo.json_parse('/* c */ {\"a\": \"x#y//z\", # sh\\n \"b\": 2 // cpp\\n}').a", "x#y//z" },
	{ "tostring(kumo.serde.json_parse('null'))", "nil" },
	{ "select(2, pcall(kumo.serde.json_parse, '{\"a\":'))", "~json_parse: invalid JSON at line 1" },
	{ "select(2, pcall(kumo.serde.json_parse, '{}\\n x'))", "~line 2 column 2" },
	{ "select(2, pcall(kumo.serde.json_encode, {print}))", "~json_encode: cannot serialize function" },
	{ "kumo.serde.json_load(DIR .. '/data.json').name", "data" },
	{ "kumo.json_load(DIR .. '/data.json').list[3]", "c" },
	{ "select(2, pcall(kumo.serde.json_load, DIR .. '/missing.json'))", "~No such file" },
	{ "kumo.version", POLICY_VERSION },
};

START_TEST(test_serde)
{
	lua_State *L = pol->L;
	write_file("data.json", "// config\n{\"name\": \"data\", /* x */ \"list\": [\"a\", \"b\", \"c\"]}\n");
	lua_pushstring(L, tmpdir);
	lua_setglobal(L, "DIR");
	int top = lua_gettop(L);
	eval(L, serde[_i].lua);
	const char *got = lua_tostring(L, -1);
	ck_assert_msg(got != NULL, "%s: not a string", serde[_i].lua);
	if (serde[_i].want[0] == '~')
		ck_assert_msg(strstr(got, serde[_i].want + 1) != NULL, "%s: got '%s'",
			      serde[_i].lua, got);
	else
		ck_assert_msg(strcmp(got, serde[_i].want) == 0, "%s: got '%s', want '%s'",
			      serde[_i].lua, got, serde[_i].want);
	lua_pop(L, 1);
	ck_assert_int_eq(lua_gettop(L), top);
}
END_TEST

START_TEST(test_parse_text)
{
	char err[128];
	cJSON *j = policy_json_parse_text("# only a comment\n[1, /* two */ 2]", 33, err, sizeof err);
	ck_assert_ptr_nonnull(j);
	assert_json(j, "[1,2]", "comments");
	cJSON_Delete(j);
	j = policy_json_parse_text("\"a /* not a comment */ b\"", 25, err, sizeof err);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(j->valuestring, "a /* not a comment */ b");
	cJSON_Delete(j);
	ck_assert_ptr_null(policy_json_parse_text("[1,", 3, err, sizeof err));
	ck_assert_ptr_null(policy_json_parse_text("[1]\0x", 5, err, sizeof err));
	ck_assert_str_eq(err, "JSON text contains a NUL byte");
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("policyd_json");
	TCase *tc = tcase_create("core");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_lua_to_json, 0, sizeof to_json / sizeof to_json[0]);
	tcase_add_loop_test(tc, test_round_trip, 0, sizeof round_trip / sizeof round_trip[0]);
	tcase_add_test(tc, test_addr_args);
	tcase_add_loop_test(tc, test_serde, 0, sizeof serde / sizeof serde[0]);
	tcase_add_test(tc, test_parse_text);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
