/* Check suite for policyd_event.c, policyd_lua.c and policyd_config.c:
 * policy files are written to a temporary directory, loaded, and sent
 * requests through policy_handle.  Expected replies are JSON where a string
 * "~text" matches any string containing text (file names vary). */
#include "policyd/policyd.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static void setup(void)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/policyd-event-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
}

static void write_file(const char *name, const char *text)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

static struct policy *load_src(const char *src, char *err, size_t errlen)
{
	char path[256];
	write_file("policy.lua", src);
	snprintf(path, sizeof path, "%s/policy.lua", tmpdir);
	struct policy *p = policy_load(path, err, errlen);
	ck_assert_ptr_nonnull(p);
	return p;
}

static struct policy *load_ok(const char *src)
{
	char err[1024];
	struct policy *p = load_src(src, err, sizeof err);
	ck_assert_msg(policy_load_error(p) == NULL, "load failed: %s", err);
	return p;
}

/* expected JSON vs actual; "~x" strings match by substring */
static bool match(const cJSON *want, const cJSON *got)
{
	if (cJSON_IsString(want) && want->valuestring[0] == '~')
		return cJSON_IsString(got) && strstr(got->valuestring, want->valuestring + 1);
	if (cJSON_IsObject(want)) {
		if (!cJSON_IsObject(got) || cJSON_GetArraySize(want) != cJSON_GetArraySize(got))
			return false;
		for (const cJSON *w = want->child; w; w = w->next)
			if (!match(w, cJSON_GetObjectItemCaseSensitive(got, w->string)))
				return false;
		return true;
	}
	if (cJSON_IsArray(want)) {
		if (!cJSON_IsArray(got) || cJSON_GetArraySize(want) != cJSON_GetArraySize(got))
			return false;
		for (const cJSON *w = want->child, *g = got->child; w; w = w->next, g = g->next)
			if (!match(w, g))
				return false;
		return true;
	}
	return got && cJSON_Compare(want, got, 1);
}

/* Sends request (JSON text) and checks the reply against want (JSON text);
 * also checks that the Lua stack is balanced. */
static void expect(struct policy *p, const char *request, const char *want)
{
	cJSON *req = cJSON_Parse(request);
	ck_assert_msg(req != NULL, "bad request JSON: %s", request);
	cJSON *w = cJSON_Parse(want);
	ck_assert_msg(w != NULL, "bad expected JSON: %s", want);
	int top = p->L ? lua_gettop(p->L) : 0;
	cJSON *reply = policy_handle(p, req);
	ck_assert_ptr_nonnull(reply);
	if (p->L)
		ck_assert_int_eq(lua_gettop(p->L), top);
	char *text = cJSON_PrintUnformatted(reply);
	ck_assert_msg(match(w, reply), "request %s\n  got  %s\n  want %s", request, text, want);
	free(text);
	cJSON_Delete(reply);
	cJSON_Delete(req);
	cJSON_Delete(w);
}

/* --- init, hello, loading --- */

static const char init_policy[] =
	"local kumo = require 'kumo'\n"
	"local helper = require 'helper'\n"
	"kumo.on('init', function()\n"
	"  kumo.start_esmtp_listener { listen = '127.0.0.1:2525', hostname = helper.host,\n"
	"                              relay_hosts = { '10.0.0.0/8' } }\n"
	"  kumo.start_esmtp_listener { listen = '[::1]:2526', meta = { x_a = 1 } }\n"
	"  kumo.define_spool { name = 'data', path = '/var/spool/kumo/data' }\n"
	"  kumo.define_spool { name = 'meta', path = '/var/spool/kumo/meta', kind = 'RocksDB',\n"
	"                      flush = true, min_free_space = '10%' }\n"
	"  kumo.configure_local_logs { log_dir = '/var/log/kumo', headers = {},\n"
	"                              meta = { 'x_a' }, max_segment_duration = '1 minute' }\n"
	"  kumo.start_http_listener { listen = '127.0.0.1:8000' }\n"
	"end)\n"
	"kumo.on('smtp_server_ehlo', function() end)\n"
	"kumo.on('get_queue_config', function() end)\n"
	"kumo.on('get_queue_config', function() end)\n";

START_TEST(test_init_config)
{
	write_file("helper.lua", "return { host = 'mx.example.com' }\n");
	struct policy *p = load_ok(init_policy);
	const char *want =
		"{\"id\":1,\"ok\":true,\"config\":{"
		"\"listeners\":[{\"listen\":\"127.0.0.1:2525\",\"hostname\":\"mx.example.com\","
		"\"relay_hosts\":[\"10.0.0.0/8\"]},{\"listen\":\"[::1]:2526\",\"meta\":{\"x_a\":1}}],"
		"\"spools\":{\"data\":{\"name\":\"data\",\"path\":\"/var/spool/kumo/data\","
		"\"kind\":\"LocalDisk\",\"flush\":false},"
		"\"meta\":{\"name\":\"meta\",\"path\":\"/var/spool/kumo/meta\",\"kind\":\"RocksDB\","
		"\"flush\":true,\"min_free_space\":\"10%\"}},"
		"\"logs\":{\"log_dir\":\"/var/log/kumo\",\"headers\":[],\"meta\":[\"x_a\"],"
		"\"max_segment_duration\":\"1 minute\"},"
		"\"handlers\":[\"init\",\"smtp_server_ehlo\",\"get_queue_config\"]}}";
	expect(p, "{\"id\":1,\"op\":\"init\"}", want);
	/* init runs once; a second request gets the same answer */
	expect(p, "{\"id\":1,\"op\":\"init\"}", want);
	expect(p, "{\"id\":7,\"op\":\"hello\"}",
	       "{\"id\":7,\"ok\":true,\"handlers\":[\"init\",\"smtp_server_ehlo\","
	       "\"get_queue_config\"],\"generation\":0}");
	policy_free(p);
}
END_TEST

START_TEST(test_init_minimal)
{
	struct policy *p = load_ok("-- nothing at all\n");
	expect(p, "{\"id\":\"x\",\"op\":\"init\"}",
	       "{\"id\":\"x\",\"ok\":true,\"config\":{\"listeners\":[],\"spools\":{},"
	       "\"logs\":null,\"handlers\":[]}}");
	policy_free(p);
}
END_TEST

/* A policy that fails; the error (load or init) must contain want. */
static const struct {
	const char *src;
	bool at_load;       /* fails in policy_load rather than in init */
	const char *want;
} bad_policies[] = {
	{ "local kumo = require 'kumo'\nkumo.on('init', function()\n  x = = 1\nend)\n", true,
	  "policy.lua:3: unexpected symbol near '='" },
	{ "local kumo = require 'kumo'\n\nerror('boom at load')\n", true,
	  "policy.lua:3: boom at load" },
	{ "kumo.on('init', function()\n  local t = nil\n  return t.x\nend)\n", false,
	  "policy.lua:3: attempt to index local 't' (a nil value)" },
	{ "kumo.on('init', function()\n  error('multi\\nline')\nend)\n", false,
	  "policy.lua:2: multi line" },
	{ "kumo.on('smtp_server_ehlo', function() end)\nkumo.on('smtp_server_ehlo', function() end)\n",
	  true, "policy.lua:2: smtp_server_ehlo event already has a handler defined at " },
	{ "kumo.on('init', function() end)\n\n\nkumo.on('init', print)\n", true,
	  "init event already has a handler defined at " },
	{ "kumo.on('my_event', print)\nkumo.on('my_event', print)\n", true,
	  "my_event event already has a handler defined at " },
	{ "kumo.on('x', 'notafunction')\n", true, "function expected" },
	{ "kumo.on('init', function()\n kumo.start_esmtp_listener { listen = '127.0.0.1:25', bannr = 'x' }\nend)\n",
	  false, "policy.lua:2: start_esmtp_listener: unknown listener parameter 'bannr'" },
	{ "kumo.on('init', function()\n kumo.start_esmtp_listener { 'x' }\nend)\n",
	  false, "start_esmtp_listener: expected a table" },
	{ "kumo.on('init', function()\n kumo.start_esmtp_listener { listen = print }\nend)\n",
	  false, "start_esmtp_listener: cannot serialize function" },
	{ "kumo.on('init', function()\n kumo.define_spool { name = 'data', path = '/x', colour = 1 }\nend)\n",
	  false, "policy.lua:2: define_spool: unknown parameter 'colour'" },
	{ "kumo.on('init', function()\n kumo.define_spool { name = 'data' }\nend)\n",
	  false, "define_spool: missing required parameter 'path'" },
	{ "kumo.on('init', function()\n kumo.define_spool { name = 'data', path = '/x', kind = 'Tape' }\nend)\n",
	  false, "define_spool: invalid kind 'Tape'" },
	{ "kumo.on('init', function()\n kumo.define_spool { name = 'data', path = '/x', flush = 'yes' }\nend)\n",
	  false, "define_spool: 'flush' must be a boolean" },
	{ "kumo.on('init', function()\n kumo.define_spool { name = 'd', path = '/x' }\n"
	  " kumo.define_spool { name = 'd', path = '/y' }\nend)\n",
	  false, "policy.lua:3: define_spool: spool 'd' is already defined" },
	{ "kumo.on('init', function()\n kumo.configure_local_logs { max_file_size = 10 }\nend)\n",
	  false, "configure_local_logs: missing required parameter 'log_dir'" },
	{ "kumo.on('init', function()\n kumo.configure_local_logs { log_dir = '/x', colour = 1 }\nend)\n",
	  false, "configure_local_logs: unknown parameter 'colour'" },
	{ "kumo.on('init', function()\n kumo.configure_local_logs { log_dir = '/x', headers = { 1 } }\nend)\n",
	  false, "configure_local_logs: 'headers' must be a list of strings" },
	{ "kumo.on('init', function()\n kumo.on('smtp_server_ehlo', print)\nend)\n",
	  false, "policy.lua:2: kumo.on('smtp_server_ehlo'): cannot register an event handler "
	  "from inside an event handler" },
	{ "kumo.on('init', function()\n kumo.reject(550, 'not now')\nend)\n",
	  false, "rejected: 550 not now" },
	{ "local missing = require 'no_such_module'\n", true, "module 'no_such_module' not found" },
	{ "kumo.on('init', function()\n kumo.define_spool { name = '', path = '/x' }\nend)\n",
	  false, "define_spool: name and path must not be empty" },
};

START_TEST(test_bad_policy)
{
	char err[1024];
	struct policy *p = load_src(bad_policies[_i].src, err, sizeof err);
	char want[600];
	snprintf(want, sizeof want, "{\"id\":2,\"ok\":false,\"error\":\"~%s\"}", bad_policies[_i].want);
	if (bad_policies[_i].at_load) {
		const char *e = policy_load_error(p);
		ck_assert_msg(e != NULL, "policy %d loaded", _i);
		ck_assert_msg(strstr(e, bad_policies[_i].want) != NULL, "got '%s', want '%s'", e,
			      bad_policies[_i].want);
		ck_assert_str_eq(err, e);
		ck_assert_ptr_null(strchr(e, '\n'));
		expect(p, "{\"id\":2,\"op\":\"hello\"}", want);
		expect(p, "{\"id\":2,\"op\":\"event\",\"event\":\"x\",\"args\":[]}", want);
	} else {
		ck_assert_msg(policy_load_error(p) == NULL, "load failed: %s", err);
	}
	expect(p, "{\"id\":2,\"op\":\"init\"}", want);
	policy_free(p);
}
END_TEST

START_TEST(test_missing_file)
{
	char err[512];
	struct policy *p = policy_load("/nonexistent/dir/policy.lua", err, sizeof err);
	ck_assert_ptr_nonnull(policy_load_error(p));
	ck_assert_msg(strstr(err, "cannot open /nonexistent/dir/policy.lua") != NULL, "%s", err);
	expect(p, "{\"id\":3,\"op\":\"init\"}", "{\"id\":3,\"ok\":false,\"error\":\"~cannot open\"}");
	policy_free(p);
	policy_free(NULL);
}
END_TEST

START_TEST(test_duplicate_location)
{
	char err[1024];
	struct policy *p = load_src("local kumo = require 'kumo'\n"
				    "kumo.on('smtp_server_rcpt_to', function() end)\n"
				    "\n"
				    "kumo.on('smtp_server_rcpt_to', function() end)\n",
				    err, sizeof err);
	ck_assert_ptr_nonnull(policy_load_error(p));
	/* names the line of the first registration and fails at the second */
	ck_assert_msg(strstr(err, "policy.lua:4: smtp_server_rcpt_to event already has a "
			     "handler defined at ") != NULL, "%s", err);
	ck_assert_msg(strstr(err, "policy.lua:2") != NULL, "%s", err);
	policy_free(p);
}
END_TEST

/* --- events --- */

static const char event_policy[] =
	"local kumo = require 'kumo'\n"
	"kumo.on('smtp_server_connection_accepted', function(meta)\n"
	"  meta:set_meta('x_seen', { a = 1, list = { 'p', 'q' } })\n"
	"  meta:set_meta('x_n', 5)\n"
	"  meta:set_meta('received_from', nil)\n"
	"end)\n"
	"kumo.on('smtp_server_ehlo', function(domain, meta, ext)\n"
	"  if domain == 'reject.example' then kumo.reject(550, '5.7.1 no') end\n"
	"  if domain == 'disc.example' then kumo.disconnect(421, 'go away') end\n"
	"  if domain == 'follow.example' then kumo.disconnect(451, 'nope', 'FollowWith421') end\n"
	"  if domain == 'if421.example' then kumo.disconnect(451, 'nope', 'If421') end\n"
	"  if domain == 'force.example' then kumo.disconnect(550, 'bye', 'ForceDisconnect') end\n"
	"  if domain == 'badmode.example' then kumo.disconnect(451, 'nope', 'Sometimes') end\n"
	"  if domain == 'badcode.example' then kumo.reject(99, 'x') end\n"
	"  if domain == 'floatcode.example' then kumo.reject(550.5, 'x') end\n"
	"  if domain == 'badtext.example' then kumo.reject(550, {}) end\n"
	"  if domain == 'boom.example' then error('boom') end\n"
	"  if domain == 'tableerr.example' then error({}) end\n"
	"  if domain == 'badret.example' then return print end\n"
	"  if domain == 'recurse.example' then local function f() return 1 + f() end return f() end\n"
	"  meta:set_meta('ehlo_domain', domain)\n"
	"  table.insert(ext, 'X-FOO')\n"
	"  return ext\n"
	"end)\n"
	"kumo.on('smtp_server_mail_from', function(sender, meta)\n"
	"  meta:set_meta('x_from', { sender.user, sender.domain, sender.email, tostring(sender) })\n"
	"  return sender\n"
	"end)\n"
	"kumo.on('smtp_server_rewrite_response', function(status, text, cmd, meta)\n"
	"  return 451, 'rewritten ' .. text\n"
	"end)\n"
	"kumo.on('smtp_server_get_dynamic_parameters', function(listener, meta)\n"
	"  return { banner = meta:get_meta('received_from') .. ' via ' .. listener,\n"
	"           hostname = meta:get_meta('hostname'), x = meta:get_meta('x_none') }\n"
	"end)\n"
	"kumo.on('get_listener_domain', function(domain, listener, meta)\n"
	"  if domain == 'relay.example' then return kumo.make_listener_domain { relay_to = true,\n"
	"      relay_from = { '10.0.0.0/8' }, log_arf = 'LogThenDrop', log_oob = false } end\n"
	"  if domain == 'bad.example' then return kumo.make_listener_domain { relay = true } end\n"
	"  if domain == 'cidr.example' then return kumo.make_listener_domain {\n"
	"      relay_from = { '10.0.0.0/8', 'bogus' } } end\n"
	"  if domain == 'arf.example' then return kumo.make_listener_domain { log_arf = 'Maybe' } end\n"
	"end)\n"
	"kumo.on('x_setfn', function(meta) meta:set_meta('f', print) end)\n"
	"kumo.on('x_on', function() kumo.on('y', print) end)\n"
	"kumo.on('get_queue_config', function(d) if d == 'a' then return 'first' end end)\n"
	"kumo.on('get_queue_config', function(d) if d ~= 'c' then return 'second', 2 end end)\n"
	"kumo.on('x_reject_meta', function(meta)\n"
	"  meta:set_meta('x_before', true)\n"
	"  kumo.reject(550, 'no')\n"
	"end)\n"
	"kumo.on('x_pcall', function()\n"
	"  local ok, e = pcall(kumo.reject, 550, 'caught')\n"
	"  return ok, tostring(e)\n"
	"end)\n"
	"kumo.on('x_rethrow', function()\n"
	"  local ok, e = pcall(kumo.disconnect, 421, 'again')\n"
	"  error(e)\n"
	"end)\n"
	"kumo.on('x_ret2', function() return nil, 'two' end)\n"
	"kumo.on('x_none', function() end)\n"
	"kumo.on('x_twice', function(meta)\n"
	"  meta:set_meta('a', 1) meta:set_meta('b', 2) meta:set_meta('a', 3)\n"
	"end)\n"
	"kumo.on('x_args', function(...) return { n = select('#', ...), ... } end)\n"
	"kumo.on('x_serde', function(s) return kumo.serde.json_parse(s) end)\n"
	"kumo.on('x_keep', function(meta) KEPT = meta end)\n"
	"kumo.on('x_use_kept', function() return KEPT:get_meta('a') end)\n"
	"kumo.on('x_log', function(meta)\n"
	"  kumo.log_info('hello', 1, true, nil, {})\n"
	"  kumo.log_debug('debug')\n"
	"  kumo.log_warn('warn')\n"
	"  kumo.log_error('error')\n"
	"  return kumo.version\n"
	"end)\n";

#define META "\"meta\":{\"received_from\":\"10.1.2.3:4567\",\"received_via\":\"127.0.0.1:25\"," \
	     "\"hostname\":\"mx.example\",\"reception_protocol\":\"ESMTP\"}"
#define META_OUT "{\"received_from\":\"10.1.2.3:4567\",\"received_via\":\"127.0.0.1:25\"," \
		 "\"hostname\":\"mx.example\",\"reception_protocol\":\"ESMTP\""

static const struct {
	const char *request;
	const char *reply;
} events[] = {
	/* set_meta persists into the reply meta (nil stores null) */
	{ "{\"id\":1,\"op\":\"event\",\"event\":\"smtp_server_connection_accepted\",\"args\":[],"
	  "\"meta_pos\":0," META "}",
	  "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta\":{"
	  "\"received_from\":null,\"received_via\":\"127.0.0.1:25\",\"hostname\":\"mx.example\","
	  "\"reception_protocol\":\"ESMTP\",\"x_seen\":{\"a\":1,\"list\":[\"p\",\"q\"]},\"x_n\":5}}" },
	/* ehlo: args around the meta, list returned */
	{ "{\"id\":2,\"op\":\"event\",\"event\":\"smtp_server_ehlo\","
	  "\"args\":[\"ok.example\",[\"PIPELINING\",\"8BITMIME\"]],\"meta_pos\":1," META "}",
	  "{\"id\":2,\"ok\":true,\"result\":\"ok\",\"ret\":[\"PIPELINING\",\"8BITMIME\",\"X-FOO\"],"
	  "\"meta\":" META_OUT ",\"ehlo_domain\":\"ok.example\"}}" },
	{ "{\"id\":3,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"reject.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":3,\"ok\":true,\"result\":\"reject\",\"code\":550,\"text\":\"5.7.1 no\","
	  "\"mode\":\"If421\"}" },
	{ "{\"id\":4,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"disc.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":4,\"ok\":true,\"result\":\"reject\",\"code\":421,\"text\":\"go away\","
	  "\"mode\":\"ForceDisconnect\"}" },
	{ "{\"id\":5,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"follow.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":5,\"ok\":true,\"result\":\"reject\",\"code\":451,\"text\":\"nope\","
	  "\"mode\":\"FollowWith421\"}" },
	{ "{\"id\":6,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"if421.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":6,\"ok\":true,\"result\":\"reject\",\"code\":451,\"text\":\"nope\","
	  "\"mode\":\"If421\"}" },
	{ "{\"id\":7,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"force.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":7,\"ok\":true,\"result\":\"reject\",\"code\":550,\"text\":\"bye\","
	  "\"mode\":\"ForceDisconnect\"}" },
	{ "{\"id\":8,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"badmode.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":8,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"~policy.lua:13: invalid disconnect mode 'Sometimes'\"}" },
	{ "{\"id\":9,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"badcode.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":9,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"~kumo.reject: code must be an integer from 200 to 599\"}" },
	{ "{\"id\":10,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"floatcode.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":10,\"ok\":true,\"result\":\"error\",\"error\":\"~code must be an integer\"}" },
	{ "{\"id\":11,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"badtext.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":11,\"ok\":true,\"result\":\"error\",\"error\":\"~message must be a string\"}" },
	{ "{\"id\":12,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"boom.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":12,\"ok\":true,\"result\":\"error\",\"error\":\"~policy.lua:17: boom\"}" },
	{ "{\"id\":13,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"tableerr.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":13,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"(error object is a table value)\"}" },
	{ "{\"id\":14,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"badret.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":14,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"smtp_server_ehlo: return value: cannot serialize function\"}" },
	{ "{\"id\":15,\"op\":\"event\",\"event\":\"smtp_server_ehlo\",\"args\":[\"recurse.example\",[]],"
	  "\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":15,\"ok\":true,\"result\":\"error\",\"error\":\"~stack overflow\"}" },
	/* EnvelopeAddress fields and tostring; an address returns as its email */
	{ "{\"id\":16,\"op\":\"event\",\"event\":\"smtp_server_mail_from\","
	  "\"args\":[{\"__addr\":\"joe@example.com\"}],\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":16,\"ok\":true,\"result\":\"ok\",\"ret\":\"joe@example.com\",\"meta\":{"
	  "\"x_from\":[\"joe\",\"example.com\",\"joe@example.com\",\"joe@example.com\"]}}" },
	{ "{\"id\":17,\"op\":\"event\",\"event\":\"smtp_server_mail_from\","
	  "\"args\":[{\"__addr\":\"\"}],\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":17,\"ok\":true,\"result\":\"ok\",\"ret\":\"\",\"meta\":{"
	  "\"x_from\":[\"\",\"\",\"\",\"\"]}}" },
	{ "{\"id\":18,\"op\":\"event\",\"event\":\"smtp_server_mail_from\","
	  "\"args\":[{\"__addr\":\"not an address\"}],\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":18,\"ok\":false,"
	  "\"error\":\"~bad request: args[0]: invalid address 'not an address'\"}" },
	/* two return values; the metadata comes back only when set_meta changed it */
	{ "{\"id\":19,\"op\":\"event\",\"event\":\"smtp_server_rewrite_response\","
	  "\"args\":[250,\"OK\",null],\"meta_pos\":3,\"meta\":{}}",
	  "{\"id\":19,\"ok\":true,\"result\":\"ok\",\"ret\":451,\"ret2\":\"rewritten OK\"}" },
	{ "{\"id\":20,\"op\":\"event\",\"event\":\"x_ret2\",\"args\":[]}",
	  "{\"id\":20,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"ret2\":\"two\"}" },
	{ "{\"id\":21,\"op\":\"event\",\"event\":\"x_none\"}",
	  "{\"id\":21,\"ok\":true,\"result\":\"ok\",\"ret\":null}" },
	/* get_meta of predefined values */
	{ "{\"id\":22,\"op\":\"event\",\"event\":\"smtp_server_get_dynamic_parameters\","
	  "\"args\":[\"127.0.0.1:25\"],\"meta_pos\":1," META "}",
	  "{\"id\":22,\"ok\":true,\"result\":\"ok\",\"ret\":{\"banner\":\"10.1.2.3:4567 via "
	  "127.0.0.1:25\",\"hostname\":\"mx.example\"}}" },
	{ "{\"id\":23,\"op\":\"event\",\"event\":\"get_listener_domain\","
	  "\"args\":[\"relay.example\",\"127.0.0.1:25\"],\"meta_pos\":2,\"meta\":{}}",
	  "{\"id\":23,\"ok\":true,\"result\":\"ok\",\"ret\":{\"relay_to\":true,"
	  "\"relay_from\":[\"10.0.0.0/8\"],\"log_arf\":\"LogThenDrop\",\"log_oob\":false}}" },
	{ "{\"id\":24,\"op\":\"event\",\"event\":\"get_listener_domain\","
	  "\"args\":[\"other.example\",\"127.0.0.1:25\"],\"meta_pos\":2,\"meta\":{}}",
	  "{\"id\":24,\"ok\":true,\"result\":\"ok\",\"ret\":null}" },
	{ "{\"id\":25,\"op\":\"event\",\"event\":\"get_listener_domain\","
	  "\"args\":[\"bad.example\",\"127.0.0.1:25\"],\"meta_pos\":2,\"meta\":{}}",
	  "{\"id\":25,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"~make_listener_domain: unknown parameter 'relay'\"}" },
	{ "{\"id\":251,\"op\":\"event\",\"event\":\"get_listener_domain\","
	  "\"args\":[\"cidr.example\",\"127.0.0.1:25\"],\"meta_pos\":2,\"meta\":{}}",
	  "{\"id\":251,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"~make_listener_domain: relay_from: 'bogus': \"}" },
	{ "{\"id\":252,\"op\":\"event\",\"event\":\"get_listener_domain\","
	  "\"args\":[\"arf.example\",\"127.0.0.1:25\"],\"meta_pos\":2,\"meta\":{}}",
	  "{\"id\":252,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"~make_listener_domain: invalid log_arf 'Maybe'\"}" },
	{ "{\"id\":26,\"op\":\"event\",\"event\":\"x_setfn\",\"args\":[],\"meta_pos\":0,\"meta\":{}}",
	  "{\"id\":26,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"~set_meta 'f': cannot serialize function\"}" },
	{ "{\"id\":27,\"op\":\"event\",\"event\":\"x_on\",\"args\":[]}",
	  "{\"id\":27,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"~cannot register an event handler from inside an event handler\"}" },
	/* multi-handler event: the first non-nil return wins */
	{ "{\"id\":28,\"op\":\"event\",\"event\":\"get_queue_config\",\"args\":[\"a\"]}",
	  "{\"id\":28,\"ok\":true,\"result\":\"ok\",\"ret\":\"first\"}" },
	{ "{\"id\":29,\"op\":\"event\",\"event\":\"get_queue_config\",\"args\":[\"b\"]}",
	  "{\"id\":29,\"ok\":true,\"result\":\"ok\",\"ret\":\"second\",\"ret2\":2}" },
	{ "{\"id\":30,\"op\":\"event\",\"event\":\"get_queue_config\",\"args\":[\"c\"]}",
	  "{\"id\":30,\"ok\":true,\"result\":\"ok\",\"ret\":null}" },
	/* meta set before a reject is kept */
	{ "{\"id\":31,\"op\":\"event\",\"event\":\"x_reject_meta\",\"args\":[],\"meta_pos\":0,"
	  "\"meta\":{\"a\":1}}",
	  "{\"id\":31,\"ok\":true,\"result\":\"reject\",\"code\":550,\"text\":\"no\","
	  "\"mode\":\"If421\",\"meta\":{\"a\":1,\"x_before\":true}}" },
	{ "{\"id\":32,\"op\":\"event\",\"event\":\"x_pcall\",\"args\":[]}",
	  "{\"id\":32,\"ok\":true,\"result\":\"ok\",\"ret\":false,\"ret2\":\"550 caught\"}" },
	{ "{\"id\":33,\"op\":\"event\",\"event\":\"x_rethrow\",\"args\":[]}",
	  "{\"id\":33,\"ok\":true,\"result\":\"reject\",\"code\":421,\"text\":\"again\","
	  "\"mode\":\"ForceDisconnect\"}" },
	/* arguments in order, meta in the middle, JSON null as nil */
	{ "{\"id\":34,\"op\":\"event\",\"event\":\"x_args\",\"args\":[1,\"two\",{\"k\":[true]},null],"
	  "\"meta_pos\":4,\"meta\":{}}",
	  "{\"id\":34,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"x_args: return value: cannot serialize userdata\"}" },
	{ "{\"id\":35,\"op\":\"event\",\"event\":\"x_args\",\"args\":[1,\"two\",{\"k\":[true]}]}",
	  "{\"id\":35,\"ok\":true,\"result\":\"ok\",\"ret\":{\"n\":3,\"1\":1,\"2\":\"two\","
	  "\"3\":{\"k\":[true]}}}" },
	{ "{\"id\":36,\"op\":\"event\",\"event\":\"x_serde\",\"args\":[\"{\\\"a\\\": [1, 2]} # c\"]}",
	  "{\"id\":36,\"ok\":true,\"result\":\"ok\",\"ret\":{\"a\":[1,2]}}" },
	{ "{\"id\":37,\"op\":\"event\",\"event\":\"x_log\",\"args\":[],\"meta_pos\":0,\"meta\":{}}",
	  "{\"id\":37,\"ok\":true,\"result\":\"ok\",\"ret\":\"" POLICY_VERSION "\"}" },
	/* bad requests */
	{ "{\"id\":40,\"op\":\"event\",\"event\":\"no_such_event\",\"args\":[]}",
	  "{\"id\":40,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"nohandler\":true}" },
	{ "{\"id\":41,\"op\":\"event\",\"args\":[]}",
	  "{\"id\":41,\"ok\":false,\"error\":\"bad request: missing event\"}" },
	{ "{\"id\":42,\"op\":\"event\",\"event\":\"x_none\",\"args\":{}}",
	  "{\"id\":42,\"ok\":false,\"error\":\"bad request: args must be an array\"}" },
	{ "{\"id\":43,\"op\":\"event\",\"event\":\"x_none\",\"args\":[],\"meta_pos\":1,\"meta\":{}}",
	  "{\"id\":43,\"ok\":false,\"error\":\"bad request: meta_pos must be an integer from 0 to 0\"}" },
	{ "{\"id\":44,\"op\":\"event\",\"event\":\"x_none\",\"args\":[1],\"meta_pos\":0.5}",
	  "{\"id\":44,\"ok\":false,\"error\":\"~bad request: meta_pos\"}" },
	{ "{\"id\":45,\"op\":\"event\",\"event\":\"x_none\",\"args\":[],\"meta_pos\":0,\"meta\":[]}",
	  "{\"id\":45,\"ok\":false,\"error\":\"bad request: meta must be an object\"}" },
	{ "{\"id\":46,\"op\":\"event\",\"event\":7}",
	  "{\"id\":46,\"ok\":false,\"error\":\"bad request: missing event\"}" },
	{ "{\"id\":47,\"op\":\"reload\"}",
	  "{\"id\":47,\"ok\":false,\"error\":\"unknown op 'reload'\"}" },
	{ "{\"id\":48}",
	  "{\"id\":48,\"ok\":false,\"error\":\"bad request: missing op\"}" },
	{ "{\"op\":\"hello\"}",
	  "{\"ok\":false,\"error\":\"bad request: missing id\"}" },
	{ "{\"id\":49,\"op\":\"event\",\"event\":\"x_none\",\"args\":[],\"meta_pos\":0}",
	  "{\"id\":49,\"ok\":true,\"result\":\"ok\",\"ret\":null}" },
	/* "then": the next events run with the metadata as the one before left it;
	 * one without a change of its own has no "meta" */
	{ "{\"id\":51,\"op\":\"event\",\"event\":\"smtp_server_mail_from\","
	  "\"args\":[{\"__addr\":\"a@b.example\"}],\"meta_pos\":1,\"meta\":{\"a\":1},"
	  "\"then\":{\"event\":\"x_none\",\"args\":[],\"meta_pos\":0,"
	  "\"then\":{\"event\":\"x_reject_meta\",\"args\":[],\"meta_pos\":0}}}",
	  "{\"id\":51,\"ok\":true,\"result\":\"ok\",\"ret\":\"a@b.example\",\"meta\":{\"a\":1,"
	  "\"x_from\":[\"a\",\"b.example\",\"a@b.example\",\"a@b.example\"]},"
	  "\"then\":{\"ok\":true,\"result\":\"ok\",\"ret\":null,"
	  "\"then\":{\"ok\":true,\"result\":\"reject\",\"code\":550,\"text\":\"no\","
	  "\"mode\":\"If421\",\"meta\":{\"a\":1,"
	  "\"x_from\":[\"a\",\"b.example\",\"a@b.example\",\"a@b.example\"],\"x_before\":true}}}}" },
	/* at most 4 events per request: the fifth is not run */
	{ "{\"id\":55,\"op\":\"event\",\"event\":\"x_none\",\"args\":[],"
	  "\"then\":{\"event\":\"x_none\",\"args\":[],\"then\":{\"event\":\"x_none\",\"args\":[],"
	  "\"then\":{\"event\":\"x_ret2\",\"args\":[],\"then\":{\"event\":\"x_ret2\",\"args\":[]}}}}}",
	  "{\"id\":55,\"ok\":true,\"result\":\"ok\",\"ret\":null,"
	  "\"then\":{\"ok\":true,\"result\":\"ok\",\"ret\":null,"
	  "\"then\":{\"ok\":true,\"result\":\"ok\",\"ret\":null,"
	  "\"then\":{\"ok\":true,\"result\":\"ok\",\"ret\":null,\"ret2\":\"two\"}}}}" },
	/* ... and none after a reject, an error or a missing handler */
	{ "{\"id\":52,\"op\":\"event\",\"event\":\"x_reject_meta\",\"args\":[],\"meta_pos\":0,"
	  "\"meta\":{},\"then\":{\"event\":\"x_none\",\"args\":[]}}",
	  "{\"id\":52,\"ok\":true,\"result\":\"reject\",\"code\":550,\"text\":\"no\","
	  "\"mode\":\"If421\",\"meta\":{\"x_before\":true}}" },
	{ "{\"id\":53,\"op\":\"event\",\"event\":\"x_setfn\",\"args\":[],\"meta_pos\":0,"
	  "\"meta\":{},\"then\":{\"event\":\"x_none\",\"args\":[]}}",
	  "{\"id\":53,\"ok\":true,\"result\":\"error\",\"error\":\"~cannot serialize function\"}" },
	{ "{\"id\":54,\"op\":\"event\",\"event\":\"no_such_event\",\"args\":[],"
	  "\"then\":{\"event\":\"x_none\",\"args\":[]}}",
	  "{\"id\":54,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"nohandler\":true}" },
	/* "delta": what was set ("meta_set"), each name once, its last value;
	 * nothing when nothing was set; "then"s say only their own */
	{ "{\"id\":56,\"op\":\"event\",\"event\":\"smtp_server_connection_accepted\","
	  "\"delta\":true,\"args\":[],\"meta_pos\":0," META "}",
	  "{\"id\":56,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta_set\":{"
	  "\"x_seen\":{\"a\":1,\"list\":[\"p\",\"q\"]},\"x_n\":5,\"received_from\":null}}" },
	{ "{\"id\":57,\"op\":\"event\",\"event\":\"x_twice\",\"delta\":true,\"args\":[],"
	  "\"meta_pos\":0,\"meta\":{\"b\":0,\"z\":1}}",
	  "{\"id\":57,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta_set\":{\"a\":3,\"b\":2}}" },
	{ "{\"id\":58,\"op\":\"event\",\"event\":\"x_none\",\"delta\":true,\"args\":[],"
	  "\"meta_pos\":0,\"meta\":{\"b\":0}}",
	  "{\"id\":58,\"ok\":true,\"result\":\"ok\",\"ret\":null}" },
	{ "{\"id\":59,\"op\":\"event\",\"event\":\"smtp_server_mail_from\",\"delta\":true,"
	  "\"args\":[{\"__addr\":\"a@b.example\"}],\"meta_pos\":1,\"meta\":{\"a\":1},"
	  "\"then\":{\"event\":\"x_none\",\"args\":[],\"meta_pos\":0,"
	  "\"then\":{\"event\":\"x_reject_meta\",\"args\":[],\"meta_pos\":0}}}",
	  "{\"id\":59,\"ok\":true,\"result\":\"ok\",\"ret\":\"a@b.example\",\"meta_set\":{"
	  "\"x_from\":[\"a\",\"b.example\",\"a@b.example\",\"a@b.example\"]},"
	  "\"then\":{\"ok\":true,\"result\":\"ok\",\"ret\":null,"
	  "\"then\":{\"ok\":true,\"result\":\"reject\",\"code\":550,\"text\":\"no\","
	  "\"mode\":\"If421\",\"meta_set\":{\"x_before\":true}}}}" },
	/* set_meta of the value it had still counts as a change */
	{ "{\"id\":50,\"op\":\"event\",\"event\":\"smtp_server_mail_from\","
	  "\"args\":[{\"__addr\":\"a@b.example\"}],\"meta_pos\":1,"
	  "\"meta\":{\"x_from\":[\"a\",\"b.example\",\"a@b.example\",\"a@b.example\"]}}",
	  "{\"id\":50,\"ok\":true,\"result\":\"ok\",\"ret\":\"a@b.example\",\"meta\":{"
	  "\"x_from\":[\"a\",\"b.example\",\"a@b.example\",\"a@b.example\"]}}" },
};

START_TEST(test_events)
{
	struct policy *p = load_ok(event_policy);
	expect(p, events[_i].request, events[_i].reply);
	policy_free(p);
}
END_TEST

/* "meta_set" lists the names in the order they were first set, which is
 * the order smtpd adds the new ones in. */
START_TEST(test_meta_set_order)
{
	struct policy *p = load_ok(event_policy);
	cJSON *req = cJSON_Parse("{\"id\":1,\"op\":\"event\",\"event\":\"x_twice\",\"delta\":true,"
				 "\"args\":[],\"meta_pos\":0,\"meta\":{\"b\":0}}");
	cJSON *reply = policy_handle(p, req);
	char *text = cJSON_PrintUnformatted(reply);
	ck_assert_msg(strstr(text, "\"meta_set\":{\"a\":3,\"b\":2}") != NULL, "%s", text);
	free(text);
	cJSON_Delete(reply);
	cJSON_Delete(req);
	policy_free(p);
}
END_TEST

/* One state serving many requests in a row stays consistent. */
START_TEST(test_events_in_sequence)
{
	struct policy *p = load_ok(event_policy);
	for (int round = 0; round < 3; round++)
		for (size_t i = 0; i < sizeof events / sizeof events[0]; i++)
			expect(p, events[i].request, events[i].reply);
	ck_assert_int_eq(lua_gettop(p->L), 0);
	policy_free(p);
}
END_TEST

/* A conn_meta object kept past its event is detached, not dangling. */
START_TEST(test_meta_kept)
{
	struct policy *p = load_ok(event_policy);
	expect(p, "{\"id\":1,\"op\":\"event\",\"event\":\"x_keep\",\"args\":[],\"meta_pos\":0,"
	       "\"meta\":{\"a\":1}}",
	       "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null}");
	expect(p, "{\"id\":2,\"op\":\"event\",\"event\":\"x_use_kept\",\"args\":[]}",
	       "{\"id\":2,\"ok\":true,\"result\":\"error\","
	       "\"error\":\"~connection metadata used after its event returned\"}");
	policy_free(p);
}
END_TEST

/* Oversized and deeply nested arguments end the request, not the daemon. */
START_TEST(test_huge_args)
{
	struct policy *p = load_ok(event_policy);
	cJSON *req = cJSON_Parse("{\"id\":1,\"op\":\"event\",\"event\":\"x_args\"}");
	cJSON *args = cJSON_AddArrayToObject(req, "args");
	for (int i = 0; i < 20000; i++)
		cJSON_AddItemToArray(args, cJSON_CreateNumber(i));
	cJSON *reply = policy_handle(p, req);
	ck_assert_int_eq(lua_gettop(p->L), 0);
	ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(reply, "ok")));
	ck_assert_msg(strstr(cJSON_GetObjectItem(reply, "error")->valuestring, "stack overflow"),
		      "%s", cJSON_GetObjectItem(reply, "error")->valuestring);
	cJSON_Delete(reply);
	cJSON_Delete(req);

	char deep[2200];
	size_t n = 0;
	n += (size_t)snprintf(deep, sizeof deep, "{\"id\":2,\"op\":\"event\",\"event\":\"x_args\",\"args\":");
	for (int i = 0; i < 900; i++)
		deep[n++] = '[';
	for (int i = 0; i < 900; i++)
		deep[n++] = ']';
	snprintf(deep + n, sizeof deep - n, "}");
	expect(p, deep, "{\"id\":2,\"ok\":true,\"result\":\"error\","
	       "\"error\":\"~x_args: return value: cannot serialize: nesting deeper than 64\"}");
	policy_free(p);
}
END_TEST

START_TEST(test_require_kumo)
{
	write_file("lib_mod.lua", "local k = require 'kumo'\nreturn { same = (k == kumo) }\n");
	struct policy *p = load_ok("local m = require 'lib_mod'\n"
				   "assert(m.same, 'require kumo gives the global')\n"
				   "assert(package.loaded.kumo == kumo)\n"
				   "assert(type(kumo.serde.json_encode) == 'function')\n"
				   "assert(kumo.version == '" POLICY_VERSION "')\n"
				   "kumo.on('x', function() return m.same end)\n");
	expect(p, "{\"id\":1,\"op\":\"event\",\"event\":\"x\",\"args\":[]}",
	       "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":true}");
	policy_free(p);
}
END_TEST

START_TEST(test_logs_last_wins)
{
	struct policy *p = load_ok("kumo.on('init', function()\n"
				   "  kumo.configure_local_logs { log_dir = '/a' }\n"
				   "  kumo.configure_local_logs { log_dir = '/b', per_record = {} }\n"
				   "end)\n");
	expect(p, "{\"id\":1,\"op\":\"init\"}",
	       "{\"id\":1,\"ok\":true,\"config\":{\"listeners\":[],\"spools\":{},"
	       "\"logs\":{\"log_dir\":\"/b\",\"per_record\":{}},\"handlers\":[\"init\"]}}");
	policy_free(p);
}
END_TEST

START_TEST(test_memoize)
{
	struct policy *p = load_ok(
		"local calls = 0\n"
		"local f = kumo.memoize(function(x, y)\n"
		"  calls = calls + 1\n"
		"  return { v = x, calls = calls }, y\n"
		"end, { name = 'n', ttl = '1 minute', capacity = 2 })\n"
		"local g = kumo.memoize(function() calls = calls + 100 return 1 end, { name = 'z', ttl = 0, capacity = 1 })\n"
		"kumo.on('x', function()\n"
		"  local a = f('a')\n"
		"  a.v = 'changed by the caller'\n"
		"  local b = f('a')\n"
		"  assert(b.v == 'a' and calls == 1, 'hit, and a copy')\n"
		"  local _, y = f('a', 'y')\n"
		"  assert(y == 'y' and calls == 2, 'other arguments miss')\n"
		"  f('b'); f('c')\n"
		"  assert(calls == 4)\n"
		"  f('a')\n"
		"  assert(calls == 5, 'the eldest was evicted at capacity')\n"
		"  g(); g()\n"
		"  assert(calls == 205, 'ttl 0 never hits')\n"
		"  local ok, err = pcall(kumo.memoize, f, { name = 'q', ttl = '1 minute' })\n"
		"  assert(not ok and err:find('capacity'), err)\n"
		"  ok, err = pcall(kumo.memoize, f, { name = 'q', ttl = 'soon', capacity = 1 })\n"
		"  assert(not ok and err:find('ttl'), err)\n"
		"  ok, err = pcall(kumo.memoize, f, { name = 'q', ttl = 1, capacity = 1, colour = 1 })\n"
		"  assert(not ok and err:find('colour'), err)\n"
		"  return calls\n"
		"end)\n");
	expect(p, "{\"id\":1,\"op\":\"event\",\"event\":\"x\",\"args\":[]}",
	       "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":205}");
	policy_free(p);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("policyd_event");
	TCase *tc = tcase_create("core");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_init_config);
	tcase_add_test(tc, test_init_minimal);
	tcase_add_loop_test(tc, test_bad_policy, 0, sizeof bad_policies / sizeof bad_policies[0]);
	tcase_add_test(tc, test_missing_file);
	tcase_add_test(tc, test_duplicate_location);
	tcase_add_loop_test(tc, test_events, 0, sizeof events / sizeof events[0]);
	tcase_add_test(tc, test_events_in_sequence);
	tcase_add_test(tc, test_meta_set_order);
	tcase_add_test(tc, test_meta_kept);
	tcase_add_test(tc, test_huge_args);
	tcase_add_test(tc, test_require_kumo);
	tcase_add_test(tc, test_logs_last_wins);
	tcase_add_test(tc, test_memoize);
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
