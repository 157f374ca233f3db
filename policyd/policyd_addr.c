/* policyd_addr: the EnvelopeAddress userdata handed to smtp_server_mail_from,
 * smtp_server_rcpt_to and friends.  Fields .user, .domain and .email (as
 * lib/addr.h parses them); tostring(addr) gives the email.
 * Entry points: policy_addr_register (at state creation), policy_addr_push,
 * policy_addr_email.  A string that does not parse as an address makes
 * policy_addr_push return -1 with the reason; nothing is raised then. */
#include "policyd/policyd.h"
#include "lib/addr.h"

#include <stdio.h>
#include <string.h>
#include <lauxlib.h>

#define ADDR_MT "kumo.EnvelopeAddress"

struct lua_addr {
	struct smtp_addr a;  /* owned strings; all NULL until parsed */
};

static struct lua_addr *check_addr(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, ADDR_MT);
}

static int l_addr_gc(lua_State *L)
{
	struct lua_addr *ud = check_addr(L, 1);
	addr_free(&ud->a);
	memset(&ud->a, 0, sizeof ud->a);
	return 0;
}

static int l_addr_tostring(lua_State *L)
{
	struct lua_addr *ud = check_addr(L, 1);
	lua_pushstring(L, ud->a.email ? ud->a.email : "");
	return 1;
}

static int l_addr_index(lua_State *L)
{
	struct lua_addr *ud = check_addr(L, 1);
	const char *key = lua_tostring(L, 2);
	const char *v = NULL;
	if (!key)
		v = NULL;
	else if (strcmp(key, "email") == 0)
		v = ud->a.email;
	else if (strcmp(key, "user") == 0)
		v = ud->a.user;
	else if (strcmp(key, "domain") == 0)
		v = ud->a.domain;
	else {
		lua_pushnil(L);
		return 1;
	}
	if (v)
		lua_pushstring(L, v);
	else
		lua_pushnil(L);
	return 1;
}

static int l_addr_eq(lua_State *L)
{
	struct lua_addr *a = check_addr(L, 1);
	struct lua_addr *b = check_addr(L, 2);
	lua_pushboolean(L, a->a.email && b->a.email && strcmp(a->a.email, b->a.email) == 0);
	return 1;
}

void policy_addr_register(lua_State *L)
{
	static const luaL_Reg mt[] = {
		{ "__gc", l_addr_gc },
		{ "__tostring", l_addr_tostring },
		{ "__index", l_addr_index },
		{ "__eq", l_addr_eq },
		{ NULL, NULL },
	};
	luaL_newmetatable(L, ADDR_MT);
	luaL_setfuncs(L, mt, 0);
	lua_pushliteral(L, "EnvelopeAddress");
	lua_setfield(L, -2, "__name");
	lua_pop(L, 1);
}

int policy_addr_push(lua_State *L, const char *email, char *err, size_t errlen)
{
	/* The userdata exists (and will be collected) before anything is
	 * allocated for it, so a Lua error here cannot leak the strings. */
	struct lua_addr *ud = lua_newuserdata(L, sizeof *ud);
	memset(ud, 0, sizeof *ud);
	luaL_getmetatable(L, ADDR_MT);
	lua_setmetatable(L, -2);
	char why[160];
	if (addr_parse_email(email, &ud->a, why, sizeof why) < 0) {
		memset(&ud->a, 0, sizeof ud->a);
		lua_pop(L, 1);
		snprintf(err, errlen, "invalid address '%.200s': %s", email, why);
		return -1;
	}
	return 0;
}

const char *policy_addr_email(lua_State *L, int idx)
{
	void *p = lua_touserdata(L, idx);
	if (!p || !lua_getmetatable(L, idx))
		return NULL;
	luaL_getmetatable(L, ADDR_MT);
	int same = lua_rawequal(L, -1, -2);
	lua_pop(L, 2);
	if (!same)
		return NULL;
	const struct lua_addr *ud = p;
	return ud->a.email ? ud->a.email : "";
}
