/* policyd_lua: the policy's LuaJIT state and the `kumo` module.
 * Entry points: policy_load (new state, kumo module as a global and in
 * package.loaded, the policy's directory first in package.path, then the
 * file is run), policy_load_error, policy_free; for the other units
 * policy_from_lua, policy_push_handlers, policy_event_is_multi,
 * policy_is_rejection, policy_error_text.
 * kumo functions here: on, reject, disconnect, log_error/warn/info/debug,
 * version; the serde and config functions are added by their own units.
 * Failures: a load error (syntax, runtime, out of memory) is kept in the
 * policy as one line of Lua's own "file:line: message" text; the Lua state
 * is then closed.  All Lua work runs under lua_cpcall, so nothing panics. */
#include "policyd/policyd.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include <lualib.h>

#define REJECT_MT "kumo.Rejection"
#define REG_HANDLERS "kumo.handlers"       /* name -> array of functions */
#define REG_WHERE "kumo.handler_where"     /* name -> "file:line" of the first */
#define REG_TOSTRING "kumo.tostring"       /* the original tostring() */

static const char policy_key = 0;  /* registry key (its address) for the policy */

#define ERROR_TEXT_MAX 2000

struct policy *policy_from_lua(lua_State *L)
{
	lua_pushlightuserdata(L, (void *)&policy_key);
	lua_rawget(L, LUA_REGISTRYINDEX);
	struct policy *p = lua_touserdata(L, -1);
	lua_pop(L, 1);
	return p;
}

bool policy_event_is_multi(const char *name)
{
	static const char *const multi[] = {
		"get_queue_config", "get_egress_source", "get_egress_pool",
	};
	for (size_t i = 0; i < sizeof multi / sizeof multi[0]; i++)
		if (strcmp(name, multi[i]) == 0)
			return true;
	return false;
}

int policy_push_handlers(lua_State *L, const char *name)
{
	lua_getfield(L, LUA_REGISTRYINDEX, REG_HANDLERS);
	if (!lua_istable(L, -1)) {
		lua_pop(L, 1);
		return 0;
	}
	lua_getfield(L, -1, name);
	if (!lua_istable(L, -1)) {
		lua_pop(L, 2);
		return 0;
	}
	lua_remove(L, -2);
	return 1;
}

/* --- error values --- */

bool policy_is_rejection(lua_State *L, int idx, int *code, const char **text,
			 const char **mode)
{
	if (!lua_istable(L, idx) || !lua_getmetatable(L, idx))
		return false;
	luaL_getmetatable(L, REJECT_MT);
	int same = lua_rawequal(L, -1, -2);
	lua_pop(L, 2);
	if (!same)
		return false;
	if (idx < 0 && idx > LUA_REGISTRYINDEX)
		idx = lua_gettop(L) + idx + 1;
	lua_getfield(L, idx, "code");
	*code = (int)lua_tointeger(L, -1);
	lua_getfield(L, idx, "text");
	*text = lua_tostring(L, -1);
	lua_getfield(L, idx, "mode");
	*mode = lua_tostring(L, -1);
	lua_pop(L, 3);  /* the strings stay alive: the table holds them */
	if (!*text)
		*text = "";
	if (!*mode)
		*mode = "If421";
	return true;
}

char *policy_error_text(lua_State *L, int idx)
{
	char buf[ERROR_TEXT_MAX + 1];
	int code;
	const char *text, *mode;
	switch (lua_type(L, idx)) {
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		if (len > ERROR_TEXT_MAX)
			len = ERROR_TEXT_MAX;
		memcpy(buf, s, len);
		buf[len] = '\0';
		break;
	}
	case LUA_TNUMBER:
		snprintf(buf, sizeof buf, "%.14g", lua_tonumber(L, idx));
		break;
	default:
		if (policy_is_rejection(L, idx, &code, &text, &mode))
			snprintf(buf, sizeof buf, "rejected: %d %s", code, text);
		else
			snprintf(buf, sizeof buf, "(error object is a %s value)",
				 lua_typename(L, lua_type(L, idx)));
		break;
	}
	/* one line: Lua messages may carry newlines (tracebacks, error("a\nb")) */
	for (char *c = buf; *c; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			*c = ' ';
	return xstrdup(buf);
}

/* --- kumo.on --- */

static void caller_location(lua_State *L, char *out, size_t outlen)
{
	lua_Debug ar;
	if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
		snprintf(out, outlen, "%s:%d", ar.short_src, ar.currentline);
	else
		snprintf(out, outlen, "?");
}

static int l_on(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	struct policy *p = policy_from_lua(L);
	if (p->in_event)
		return luaL_error(L, "kumo.on('%s'): cannot register an event handler "
				  "from inside an event handler", name);
	lua_settop(L, 2);
	lua_getfield(L, LUA_REGISTRYINDEX, REG_HANDLERS);  /* 3 */
	lua_getfield(L, LUA_REGISTRYINDEX, REG_WHERE);     /* 4 */
	lua_getfield(L, 3, name);                           /* 5 */
	if (lua_isnil(L, 5)) {
		char where[LUA_IDSIZE + 32];
		caller_location(L, where, sizeof where);
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushvalue(L, -1);
		lua_setfield(L, 3, name);
		lua_pushstring(L, where);
		lua_setfield(L, 4, name);
		cJSON *s = cJSON_CreateString(name);
		if (!s)
			abort();
		cJSON_AddItemToArray(p->handler_names, s);
	} else if (!policy_event_is_multi(name)) {
		lua_getfield(L, 4, name);
		return luaL_error(L, "%s event already has a handler defined at %s",
				  name, lua_tostring(L, -1));
	}
	lua_pushvalue(L, 2);
	lua_rawseti(L, 5, (int)lua_objlen(L, 5) + 1);
	return 0;
}

/* --- kumo.reject / kumo.disconnect --- */

static int check_code(lua_State *L, const char *fn)
{
	lua_Number n = luaL_checknumber(L, 1);
	if (!(n >= 200 && n <= 599) || n != (lua_Number)(int)n)
		luaL_error(L, "%s: code must be an integer from 200 to 599", fn);
	if (lua_type(L, 2) != LUA_TSTRING)
		luaL_error(L, "%s: message must be a string", fn);
	return (int)n;
}

static int raise_rejection(lua_State *L, int code, const char *mode)
{
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, code);
	lua_setfield(L, -2, "code");
	lua_pushvalue(L, 2);
	lua_setfield(L, -2, "text");
	lua_pushstring(L, mode);
	lua_setfield(L, -2, "mode");
	luaL_getmetatable(L, REJECT_MT);
	lua_setmetatable(L, -2);
	return lua_error(L);
}

static int l_reject(lua_State *L)
{
	int code = check_code(L, "kumo.reject");
	return raise_rejection(L, code, "If421");
}

static int l_disconnect(lua_State *L)
{
	int code = check_code(L, "kumo.disconnect");
	const char *mode = "ForceDisconnect";
	if (!lua_isnoneornil(L, 3)) {
		mode = luaL_checkstring(L, 3);
		if (strcmp(mode, "If421") != 0 && strcmp(mode, "FollowWith421") != 0 &&
		    strcmp(mode, "ForceDisconnect") != 0)
			return luaL_error(L, "invalid disconnect mode '%s'", mode);
	}
	return raise_rejection(L, code, mode);
}

static int l_rejection_tostring(lua_State *L)
{
	int code;
	const char *text, *mode;
	if (!policy_is_rejection(L, 1, &code, &text, &mode))
		return 0;
	lua_pushfstring(L, "%d %s", code, text);
	return 1;
}

/* --- kumo.log_* --- */

static int log_at(lua_State *L, enum klog_level level, const char *prefix)
{
	int n = lua_gettop(L);
	luaL_Buffer b;
	lua_getfield(L, LUA_REGISTRYINDEX, REG_TOSTRING);  /* n + 1 */
	luaL_where(L, 1);                                  /* n + 2 */
	luaL_buffinit(L, &b);
	for (int i = 1; i <= n; i++) {
		if (i > 1)
			luaL_addchar(&b, ' ');
		lua_pushvalue(L, n + 1);
		lua_pushvalue(L, i);
		lua_call(L, 1, 1);
		if (!lua_isstring(L, -1))
			return luaL_error(L, "'tostring' must return a string");
		luaL_addvalue(&b);
	}
	luaL_pushresult(&b);
	size_t len;
	const char *text = lua_tolstring(L, -1, &len);
	char esc[1600];
	log_escape(text, len, esc, sizeof esc);
	log_msg(level, "lua: %s%s%s", lua_tostring(L, n + 2), prefix, esc);
	return 0;
}

static int l_log_error(lua_State *L)
{
	return log_at(L, KLOG_WARN, "error: ");
}

static int l_log_warn(lua_State *L)
{
	return log_at(L, KLOG_WARN, "");
}

static int l_log_info(lua_State *L)
{
	return log_at(L, KLOG_INFO, "");
}

static int l_log_debug(lua_State *L)
{
	return log_at(L, KLOG_DEBUG, "");
}

/* --- state set-up and loading --- */

static int at_panic(lua_State *L)
{
	const char *msg = lua_tostring(L, -1);
	log_fatal("unprotected Lua error: %s", msg ? msg : "?");
}

static void push_kumo_module(lua_State *L)
{
	static const luaL_Reg fns[] = {
		{ "on", l_on },
		{ "reject", l_reject },
		{ "disconnect", l_disconnect },
		{ "log_error", l_log_error },
		{ "log_warn", l_log_warn },
		{ "log_info", l_log_info },
		{ "log_debug", l_log_debug },
		{ NULL, NULL },
	};
	lua_newtable(L);
	luaL_setfuncs(L, fns, 0);
	policy_config_register(L);
	policy_json_register(L);  /* deprecated aliases kumo.json_* */
	lua_newtable(L);
	policy_json_register(L);
	lua_setfield(L, -2, "serde");
	lua_pushliteral(L, POLICY_VERSION);
	lua_setfield(L, -2, "version");
	policy_memo_register(L);
}

static void prepend_package_path(lua_State *L, const char *path)
{
	const char *slash = strrchr(path, '/');
	lua_getglobal(L, "package");
	if (slash)
		lua_pushlstring(L, path, (size_t)(slash - path));
	else
		lua_pushliteral(L, ".");
	lua_pushliteral(L, "/?.lua;");
	lua_getfield(L, -3, "path");
	if (!lua_isstring(L, -1)) {
		lua_pop(L, 1);
		lua_pushliteral(L, "");
	}
	lua_concat(L, 3);
	lua_setfield(L, -2, "path");
	lua_pop(L, 1);
}

static int load_protected(lua_State *L)
{
	struct policy *p = lua_touserdata(L, 1);
	lua_pushlightuserdata(L, (void *)&policy_key);
	lua_pushlightuserdata(L, p);
	lua_rawset(L, LUA_REGISTRYINDEX);

	luaL_openlibs(L);
	lua_getglobal(L, "tostring");
	lua_setfield(L, LUA_REGISTRYINDEX, REG_TOSTRING);
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, REG_HANDLERS);
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, REG_WHERE);

	luaL_newmetatable(L, REJECT_MT);
	lua_pushcfunction(L, l_rejection_tostring);
	lua_setfield(L, -2, "__tostring");
	lua_pushliteral(L, "private");
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
	policy_addr_register(L);
	policy_meta_register(L);
	policy_msg_register(L);

	push_kumo_module(L);
	lua_pushvalue(L, -1);
	lua_setglobal(L, "kumo");
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "loaded");
	lua_pushvalue(L, -3);
	lua_setfield(L, -2, "kumo");
	lua_pop(L, 3);

	prepend_package_path(L, p->path);

	if (luaL_loadfile(L, p->path) != 0)
		return lua_error(L);
	lua_call(L, 0, 0);
	return 0;
}

static struct policy *policy_new(const char *path)
{
	struct policy *p = xcalloc(1, sizeof *p);
	p->path = xstrdup(path);
	p->listeners = cJSON_CreateArray();
	p->spools = cJSON_CreateObject();
	p->handler_names = cJSON_CreateArray();
	if (!p->listeners || !p->spools || !p->handler_names)
		abort();
	return p;
}

struct policy *policy_load(const char *path, char *err, size_t errlen)
{
	struct policy *p = policy_new(path);
	p->L = luaL_newstate();
	if (!p->L) {
		p->load_error = xasprintf("%s: cannot create a Lua state", path);
	} else {
		lua_atpanic(p->L, at_panic);
		if (lua_cpcall(p->L, load_protected, p) != 0) {
			p->load_error = policy_error_text(p->L, -1);
			lua_close(p->L);
			p->L = NULL;
		}
	}
	if (errlen > 0)
		snprintf(err, errlen, "%s", p->load_error ? p->load_error : "");
	return p;
}

const char *policy_load_error(const struct policy *p)
{
	return p ? p->load_error : "no policy";
}

void policy_free(struct policy *p)
{
	if (!p)
		return;
	if (p->L)
		lua_close(p->L);
	free(p->path);
	free(p->load_error);
	cJSON_Delete(p->listeners);
	cJSON_Delete(p->spools);
	cJSON_Delete(p->logs);
	cJSON_Delete(p->resolver);
	cJSON_Delete(p->handler_names);
	cJSON_Delete(p->init_result);
	free(p);
}
