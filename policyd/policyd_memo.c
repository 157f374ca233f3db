/* policyd_memo: kumo.memoize(fn, {name, ttl, capacity, ...}).  Entry point:
 * policy_memo_register (adds kumo.memoize to the table on the stack top).
 * The cache is named: memoized functions made with the same name share it,
 * for the life of this kumo-policyd.  An entry lives ttl seconds; beyond
 * capacity entries the eldest is evicted.  Arguments are keyed by their
 * JSON form; results are kept as given and deep-copied on every hit, so a
 * caller that changes a returned table does not change the cache.
 * Bad parameters raise a Lua error naming the parameter. */
#include "policyd/policyd.h"
#include "lib/duration.h"

#include <time.h>
#include <lauxlib.h>

static int l_now(lua_State *L)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
	return 1;
}

static int l_duration(lua_State *L)
{
	double secs;
	char err[160];
	if (lua_type(L, 1) == LUA_TNUMBER) {
		secs = lua_tonumber(L, 1);
		if (secs < 0)
			return luaL_error(L, "memoize: ttl must not be negative");
	} else if (lua_type(L, 1) != LUA_TSTRING) {
		return luaL_error(L, "memoize: ttl is required (a duration such as '5 minutes')");
	} else if (duration_parse(lua_tostring(L, 1), &secs, err, sizeof err) != 0) {
		return luaL_error(L, "memoize: ttl: %s", err);
	}
	lua_pushnumber(L, secs);
	return 1;
}

static const char memo_lua[] =
	"local kumo, now, duration = ...\n"
	"local caches = {}\n"
	"local known = { name = true, ttl = true, capacity = true, invalidate_with_epoch = true,\n"
	"  populate_timeout = true, retry_on_populate_timeout = true, allow_stale_reads = true }\n"
	"local function copy(v)\n"
	"  if type(v) ~= 'table' then return v end\n"
	"  local t = {}\n"
	"  for k, x in pairs(v) do t[k] = copy(x) end\n"
	"  return setmetatable(t, getmetatable(v))\n"
	"end\n"
	"local function pack(...) return { n = select('#', ...), ... } end\n"
	"return function(fn, params)\n"
	"  if type(fn) ~= 'function' then error('memoize: expected a function', 2) end\n"
	"  if type(params) ~= 'table' then error('memoize: expected a table of parameters', 2) end\n"
	"  for k in pairs(params) do\n"
	"    if not known[k] then error(\"memoize: unknown parameter '\" .. tostring(k) .. \"'\", 2) end\n"
	"  end\n"
	"  if type(params.name) ~= 'string' then error('memoize: name is required', 2) end\n"
	"  local ttl = duration(params.ttl)\n"
	"  local cap = params.capacity\n"
	"  if type(cap) ~= 'number' or cap < 1 or cap % 1 ~= 0 then\n"
	"    error('memoize: capacity must be a positive integer', 2)\n"
	"  end\n"
	"  local c = caches[params.name]\n"
	"  if not c then\n"
	"    c = { map = {}, keys = {}, seqs = {}, head = 1, tail = 0, count = 0, seq = 0 }\n"
	"    caches[params.name] = c\n"
	"  end\n"
	"  return function(...)\n"
	"    local key = kumo.serde.json_encode(pack(...))\n"
	"    local e = c.map[key]\n"
	"    local t = now()\n"
	"    if e and e.expires > t then\n"
	"      local r = copy(e.results)\n"
	"      return unpack(r, 1, r.n)\n"
	"    end\n"
	"    local r = pack(fn(...))\n"
	"    if not e then c.count = c.count + 1 end\n"
	"    c.seq = c.seq + 1\n"
	"    c.map[key] = { results = copy(r), expires = t + ttl, seq = c.seq }\n"
	"    c.tail = c.tail + 1\n"
	"    c.keys[c.tail] = key\n"
	"    c.seqs[c.tail] = c.seq\n"
	"    while c.count > cap and c.head <= c.tail do\n"
	"      local k, s = c.keys[c.head], c.seqs[c.head]\n"
	"      c.keys[c.head], c.seqs[c.head] = nil, nil\n"
	"      c.head = c.head + 1\n"
	"      local old = c.map[k]\n"
	"      if old and old.seq == s then c.map[k] = nil; c.count = c.count - 1 end\n"
	"    end\n"
	"    return unpack(r, 1, r.n)\n"
	"  end\n"
	"end\n";

void policy_memo_register(lua_State *L)
{
	int kumo = lua_gettop(L);
	if (luaL_loadbuffer(L, memo_lua, sizeof memo_lua - 1, "=kumo.memoize") != 0)
		lua_error(L);
	lua_pushvalue(L, kumo);
	lua_pushcfunction(L, l_now);
	lua_pushcfunction(L, l_duration);
	lua_call(L, 3, 1);
	lua_setfield(L, kumo, "memoize");
}
