/* policyd_meta: the connection metadata object passed to smtp_server_*
 * handlers: conn_meta:get_meta(name) and conn_meta:set_meta(name, value),
 * backed by the "meta" object of the request, which goes back to smtpd in
 * the reply when set_meta was called.  Values must be JSON-serializable;
 * set_meta raises a Lua error otherwise.  Once the request is answered the
 * object is detached and its methods raise an error (a handler that kept it
 * in a global cannot write into a later session).
 * Entry points: policy_meta_register, policy_meta_push, policy_meta_take;
 * policy_meta_get/policy_meta_set/policy_meta_obj_set, the same get/set on
 * any object, for the Message's metadata. */
#include "policyd/policyd.h"
#include "lib/jadd.h"

#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>

#define META_MT "kumo.ConnectionMeta"

struct lua_meta {
	cJSON *obj;    /* owned object; NULL once detached */
	bool changed;  /* set_meta was called */
	cJSON *names;  /* owned: the names set (policy_meta_note), or NULL */
};

static struct lua_meta *check_meta(lua_State *L, int idx)
{
	struct lua_meta *m = luaL_checkudata(L, idx, META_MT);
	if (!m->obj)
		luaL_error(L, "connection metadata used after its event returned");
	return m;
}

int policy_meta_get(lua_State *L, const cJSON *obj, const char *name)
{
	const cJSON *v = jfind(obj, name);
	char err[200];
	if (policy_json_push(L, v, 0, err, sizeof err) < 0)
		return luaL_error(L, "get_meta: %s", err);
	return 1;
}

void policy_meta_obj_set(cJSON *obj, const char *name, cJSON *v)
{
	if (jfind(obj, name))
		cJSON_ReplaceItemInObjectCaseSensitive(obj, name, v);
	else
		cJSON_AddItemToObject(obj, name, v);
}

void policy_meta_set(lua_State *L, cJSON *obj, const char *name, int idx)
{
	char err[200];
	cJSON *v = policy_json_from_lua(L, idx, err, sizeof err);
	if (!v)
		luaL_error(L, "set_meta '%s': %s", name, err);
	policy_meta_obj_set(obj, name, v);
}

void policy_meta_note(cJSON **names, const char *name)
{
	if (!*names && !(*names = cJSON_CreateArray()))
		abort();  /* cJSON out of memory: same policy as xalloc */
	for (const cJSON *n = (*names)->child; n; n = n->next)
		if (strcmp(n->valuestring, name) == 0)
			return;
	cJSON *n = cJSON_CreateString(name);
	if (!n)
		abort();
	cJSON_AddItemToArray(*names, n);
}

cJSON *policy_meta_delta(const cJSON *obj, const cJSON *names)
{
	if (!names || !names->child)
		return NULL;
	cJSON *d = cJSON_CreateObject();
	if (!d)
		abort();
	for (const cJSON *n = names->child; n; n = n->next) {
		const cJSON *v = jfind(obj, n->valuestring);
		cJSON *copy = v ? cJSON_Duplicate(v, 1) : NULL;
		if (v && !copy)
			abort();
		if (copy)
			cJSON_AddItemToObject(d, n->valuestring, copy);
	}
	return d;
}

static int l_get_meta(lua_State *L)
{
	struct lua_meta *m = check_meta(L, 1);
	const char *name = luaL_checkstring(L, 2);
	return policy_meta_get(L, m->obj, name);
}

static int l_set_meta(lua_State *L)
{
	struct lua_meta *m = check_meta(L, 1);
	const char *name = luaL_checkstring(L, 2);
	policy_meta_set(L, m->obj, name, 3);
	m->changed = true;
	policy_meta_note(&m->names, name);
	return 0;
}

static int l_meta_gc(lua_State *L)
{
	struct lua_meta *m = luaL_checkudata(L, 1, META_MT);
	cJSON_Delete(m->obj);
	cJSON_Delete(m->names);
	m->obj = NULL;
	m->names = NULL;
	return 0;
}

static int l_meta_tostring(lua_State *L)
{
	luaL_checkudata(L, 1, META_MT);
	lua_pushliteral(L, "ConnectionMeta");
	return 1;
}

void policy_meta_register(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{ "get_meta", l_get_meta },
		{ "set_meta", l_set_meta },
		{ NULL, NULL },
	};
	luaL_newmetatable(L, META_MT);
	lua_pushcfunction(L, l_meta_gc);
	lua_setfield(L, -2, "__gc");
	lua_pushcfunction(L, l_meta_tostring);
	lua_setfield(L, -2, "__tostring");
	lua_newtable(L);
	luaL_setfuncs(L, methods, 0);
	lua_setfield(L, -2, "__index");
	lua_pushliteral(L, "ConnectionMeta");
	lua_setfield(L, -2, "__name");
	lua_pop(L, 1);
}

void policy_meta_push(lua_State *L, cJSON *obj)
{
	/* Created empty first, so a Lua error in between cannot leak obj
	 * twice; obj is owned by the userdata from the assignment on. */
	struct lua_meta *m = lua_newuserdata(L, sizeof *m);
	m->obj = NULL;
	m->changed = false;
	m->names = NULL;
	luaL_getmetatable(L, META_MT);
	lua_setmetatable(L, -2);
	m->obj = obj;
}

cJSON *policy_meta_take(lua_State *L, int idx, bool *changed, cJSON **delta)
{
	struct lua_meta *m = luaL_testudata(L, idx, META_MT);
	*changed = false;
	if (delta)
		*delta = NULL;
	if (!m)
		return NULL;
	cJSON *obj = m->obj;
	m->obj = NULL;
	*changed = m->changed;
	if (delta && obj)
		*delta = policy_meta_delta(obj, m->names);
	cJSON_Delete(m->names);
	m->names = NULL;
	return obj;
}
