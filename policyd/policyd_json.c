/* policyd_json: converts between Lua values and cJSON, and provides
 * kumo.serde.json_encode/json_encode_pretty/json_parse/json_load and
 * kumo.serde.toml_encode/toml_encode_pretty/toml_parse/toml_load (lib/toml).
 *
 * Lua -> JSON: nil -> null, booleans, integral numbers as integers, strings,
 * a table with keys exactly 1..n -> array, an empty table -> {}, any other
 * table -> object (number keys stringified), an EnvelopeAddress -> its email.
 * Functions, threads, other userdata, NUL bytes in strings, non-string keys
 * other than numbers and nesting deeper than POLICY_JSON_MAX_DEPTH (cycles)
 * fail with a reason in the caller's buffer; nothing is raised, except that
 * Lua itself may raise when it runs out of memory.
 * JSON -> Lua: object -> table, array -> 1..n table, null -> nil.
 * JSON text may carry C, C++ and shell style comments (as KumoMTA allows). */
#include "policyd/policyd.h"
#include "lib/jadd.h"
#include "lib/toml.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>

#define JSON_LOAD_MAX (64u * 1024u * 1024u)

static cJSON *need(cJSON *j)
{
	if (!j)
		abort();  /* cJSON out of memory: same policy as xalloc */
	return j;
}

static void number_key(lua_Number n, char *buf, size_t len)
{
	if (n == floor(n) && fabs(n) < 9.007199254740992e15)
		snprintf(buf, len, "%lld", (long long)n);
	else
		snprintf(buf, len, "%.17g", n);
}

/* Counts the entries of the table at idx; *is_array when the keys are
 * exactly the integers 1..n with n >= 1. */
static size_t table_shape(lua_State *L, int idx, bool *is_array)
{
	size_t count = 0;
	lua_Number max = 0;
	bool ints = true;
	lua_pushnil(L);
	while (lua_next(L, idx) != 0) {
		lua_pop(L, 1);
		count++;
		if (ints && lua_type(L, -1) == LUA_TNUMBER) {
			lua_Number k = lua_tonumber(L, -1);
			if (k >= 1 && k == floor(k)) {
				if (k > max)
					max = k;
			} else {
				ints = false;
			}
		} else {
			ints = false;
		}
	}
	*is_array = ints && count > 0 && max == (lua_Number)count;
	return count;
}

static cJSON *from_lua(lua_State *L, int idx, int depth, char *err, size_t errlen);

static cJSON *table_from_lua(lua_State *L, int idx, int depth, char *err, size_t errlen)
{
	bool is_array;
	size_t n = table_shape(L, idx, &is_array);
	if (is_array) {
		cJSON *arr = need(cJSON_CreateArray());
		for (size_t i = 1; i <= n; i++) {
			lua_rawgeti(L, idx, (int)i);
			cJSON *v = from_lua(L, lua_gettop(L), depth + 1, err, errlen);
			lua_pop(L, 1);
			if (!v) {
				cJSON_Delete(arr);
				return NULL;
			}
			cJSON_AddItemToArray(arr, v);
		}
		return arr;
	}
	cJSON *obj = need(cJSON_CreateObject());
	lua_pushnil(L);
	while (lua_next(L, idx) != 0) {
		char numbuf[48];
		const char *key;
		switch (lua_type(L, -2)) {
		case LUA_TSTRING: {
			size_t klen;
			key = lua_tolstring(L, -2, &klen);
			if (strlen(key) != klen) {
				snprintf(err, errlen, "cannot serialize a key containing a NUL byte");
				lua_pop(L, 2);
				cJSON_Delete(obj);
				return NULL;
			}
			break;
		}
		case LUA_TNUMBER:
			number_key(lua_tonumber(L, -2), numbuf, sizeof numbuf);
			key = numbuf;
			break;
		default:
			snprintf(err, errlen, "cannot serialize a table key of type %s",
				 lua_typename(L, lua_type(L, -2)));
			lua_pop(L, 2);
			cJSON_Delete(obj);
			return NULL;
		}
		cJSON *v = from_lua(L, lua_gettop(L), depth + 1, err, errlen);
		if (!v) {
			lua_pop(L, 2);
			cJSON_Delete(obj);
			return NULL;
		}
		jdelete(obj, key);
		cJSON_AddItemToObject(obj, key, v);
		lua_pop(L, 1);
	}
	return obj;
}

static cJSON *from_lua(lua_State *L, int idx, int depth, char *err, size_t errlen)
{
	if (depth > POLICY_JSON_MAX_DEPTH) {
		snprintf(err, errlen, "cannot serialize: nesting deeper than %d (a cycle?)",
			 POLICY_JSON_MAX_DEPTH);
		return NULL;
	}
	if (!lua_checkstack(L, 4)) {
		snprintf(err, errlen, "cannot serialize: Lua stack exhausted");
		return NULL;
	}
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
	case LUA_TNONE:
		return need(cJSON_CreateNull());
	case LUA_TBOOLEAN:
		return need(cJSON_CreateBool(lua_toboolean(L, idx)));
	case LUA_TNUMBER:
		return need(cJSON_CreateNumber(lua_tonumber(L, idx)));
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		if (strlen(s) != len) {
			snprintf(err, errlen, "cannot serialize a string containing a NUL byte");
			return NULL;
		}
		return need(cJSON_CreateString(s));
	}
	case LUA_TTABLE:
		return table_from_lua(L, idx, depth, err, errlen);
	case LUA_TUSERDATA: {
		const char *email = policy_addr_email(L, idx);
		if (email)
			return need(cJSON_CreateString(email));
		break;
	}
	default:
		break;
	}
	snprintf(err, errlen, "cannot serialize %s", lua_typename(L, lua_type(L, idx)));
	return NULL;
}

cJSON *policy_json_from_lua(lua_State *L, int idx, char *err, size_t errlen)
{
	if (idx < 0 && idx > LUA_REGISTRYINDEX)
		idx = lua_gettop(L) + idx + 1;
	return from_lua(L, idx, 0, err, errlen);
}

static int push(lua_State *L, const cJSON *j, int flags, int depth, char *err, size_t errlen)
{
	luaL_checkstack(L, 4, "JSON nested too deeply");
	if (cJSON_IsObject(j)) {
		const cJSON *addr = jget(j, "__addr");
		if ((flags & POLICY_JSON_ADDR) && cJSON_IsString(addr))
			return policy_addr_push(L, addr->valuestring, err, errlen);
		lua_createtable(L, 0, cJSON_GetArraySize(j));
		for (const cJSON *c = j->child; c; c = c->next) {
			if (!c->string || cJSON_IsNull(c))
				continue;
			lua_pushstring(L, c->string);
			if (push(L, c, flags, depth + 1, err, errlen) < 0)
				return -1;
			lua_rawset(L, -3);
		}
		return 0;
	}
	if (cJSON_IsArray(j)) {
		lua_createtable(L, cJSON_GetArraySize(j), 0);
		int i = 1;
		for (const cJSON *c = j->child; c; c = c->next, i++) {
			if (push(L, c, flags, depth + 1, err, errlen) < 0)
				return -1;
			lua_rawseti(L, -2, i);
		}
		return 0;
	}
	if (cJSON_IsString(j))
		lua_pushstring(L, j->valuestring);
	else if (cJSON_IsNumber(j))
		lua_pushnumber(L, j->valuedouble);
	else if (cJSON_IsTrue(j))
		lua_pushboolean(L, 1);
	else if (cJSON_IsFalse(j))
		lua_pushboolean(L, 0);
	else
		lua_pushnil(L);
	return 0;
}

int policy_json_push(lua_State *L, const cJSON *j, int flags, char *err, size_t errlen)
{
	if (!j) {
		lua_pushnil(L);
		return 0;
	}
	return push(L, j, flags, 0, err, errlen);
}

/* Blanks out comments outside strings: / * ... * /, // to end of line and
 * # to end of line.  The copy keeps byte offsets, so errors point right. */
static char *strip_comments(const char *in, size_t len)
{
	char *out = xmalloc(len + 1);
	memcpy(out, in, len);
	out[len] = '\0';
	size_t i = 0;
	while (i < len) {
		char c = out[i];
		if (c == '"') {
			i++;
			while (i < len && out[i] != '"') {
				if (out[i] == '\\' && i + 1 < len)
					i++;
				i++;
			}
			i++;
		} else if (c == '#' || (c == '/' && i + 1 < len && out[i + 1] == '/')) {
			while (i < len && out[i] != '\n')
				out[i++] = ' ';
		} else if (c == '/' && i + 1 < len && out[i + 1] == '*') {
			out[i++] = ' ';
			out[i++] = ' ';
			while (i < len && !(out[i] == '*' && i + 1 < len && out[i + 1] == '/')) {
				if (out[i] != '\n')
					out[i] = ' ';
				i++;
			}
			for (int k = 0; k < 2 && i < len; k++)
				out[i++] = ' ';
		} else {
			i++;
		}
	}
	return out;
}

cJSON *policy_json_parse_text(const char *text, size_t len, char *err, size_t errlen)
{
	char *clean = strip_comments(text, len);
	const char *end = NULL;
	cJSON *j = NULL;
	if (strlen(clean) != len)
		snprintf(err, errlen, "JSON text contains a NUL byte");
	else if (!(j = cJSON_ParseWithOpts(clean, &end, 1))) {
		size_t off = end && end >= clean ? (size_t)(end - clean) : 0;
		size_t line = 1, col = 1;
		for (size_t i = 0; i < off && i < len; i++) {
			if (clean[i] == '\n') {
				line++;
				col = 1;
			} else {
				col++;
			}
		}
		snprintf(err, errlen, "invalid JSON at line %zu column %zu", line, col);
	}
	free(clean);
	return j;
}

/* --- kumo.serde functions --- */

static int encode(lua_State *L, bool pretty)
{
	char err[256];
	luaL_checkany(L, 1);
	cJSON *j = policy_json_from_lua(L, 1, err, sizeof err);
	if (!j)
		return luaL_error(L, "json_encode: %s", err);
	char *text = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!text)
		abort();
	lua_pushstring(L, text);  /* may raise on OOM: text leaks then */
	free(text);
	return 1;
}

static int l_json_encode(lua_State *L)
{
	return encode(L, false);
}

static int l_json_encode_pretty(lua_State *L)
{
	return encode(L, true);
}

static int push_parsed(lua_State *L, cJSON *j, const char *what)
{
	char err[256];
	/* lua_pushstring and friends may raise: keep j anchored in a userdata
	 * would be overkill; a leak on Lua OOM is accepted. */
	int rc = policy_json_push(L, j, 0, err, sizeof err);
	cJSON_Delete(j);
	if (rc < 0)
		return luaL_error(L, "%s: %s", what, err);
	return 1;
}

static int l_json_parse(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	char err[256];
	cJSON *j = policy_json_parse_text(s, len, err, sizeof err);
	if (!j)
		return luaL_error(L, "json_parse: %s", err);
	return push_parsed(L, j, "json_parse");
}

/* Reads a whole file (bounded); NULL with *why set on failure. */
static char *slurp(const char *path, size_t *lenp, const char **why)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		*why = strerror(errno);
		return NULL;
	}
	size_t cap = 4096, len = 0;
	char *buf = xmalloc(cap);
	for (;;) {
		if (len == cap) {
			if (cap >= JSON_LOAD_MAX) {
				fclose(f);
				free(buf);
				*why = "file too large";
				return NULL;
			}
			cap *= 2;
			buf = xrealloc(buf, cap);
		}
		size_t r = fread(buf + len, 1, cap - len, f);
		if (r == 0)
			break;
		len += r;
	}
	int failed = ferror(f);
	fclose(f);
	if (failed) {
		free(buf);
		*why = "read error";
		return NULL;
	}
	*lenp = len;
	return buf;
}

static int toml_encode_common(lua_State *L, int pretty, const char *what)
{
	char err[256];
	luaL_checkany(L, 1);
	cJSON *j = policy_json_from_lua(L, 1, err, sizeof err);
	if (!j)
		return luaL_error(L, "%s: %s", what, err);
	char *text = toml_encode(j, pretty, err, sizeof err);
	cJSON_Delete(j);
	if (!text)
		return luaL_error(L, "%s: %s", what, err);
	lua_pushstring(L, text);
	free(text);
	return 1;
}

static int l_toml_encode(lua_State *L)
{
	return toml_encode_common(L, 0, "toml_encode");
}

static int l_toml_encode_pretty(lua_State *L)
{
	return toml_encode_common(L, 1, "toml_encode_pretty");
}

static int l_toml_parse(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	char err[256];
	cJSON *j = toml_parse(s, len, err, sizeof err);
	if (!j)
		return luaL_error(L, "toml_parse: %s", err);
	return push_parsed(L, j, "toml_parse");
}

static int l_toml_load(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	size_t len;
	const char *why = "read error";
	char *buf = slurp(path, &len, &why);
	if (!buf)
		return luaL_error(L, "toml_load: %s: %s", path, why);
	char err[256];
	cJSON *j = toml_parse(buf, len, err, sizeof err);
	free(buf);
	if (!j)
		return luaL_error(L, "toml_load: %s: %s", path, err);
	return push_parsed(L, j, "toml_load");
}

static int l_json_load(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	size_t len;
	const char *why = "read error";
	char *buf = slurp(path, &len, &why);
	if (!buf)
		return luaL_error(L, "json_load: %s: %s", path, why);
	char err[512];
	cJSON *j = policy_json_parse_text(buf, len, err, sizeof err);
	free(buf);
	if (!j)
		return luaL_error(L, "json_load: %s: %s", path, err);
	return push_parsed(L, j, "json_load");
}

void policy_json_register(lua_State *L)
{
	static const luaL_Reg fns[] = {
		{ "json_encode", l_json_encode },
		{ "json_encode_pretty", l_json_encode_pretty },
		{ "json_parse", l_json_parse },
		{ "json_load", l_json_load },
		{ "toml_encode", l_toml_encode },
		{ "toml_encode_pretty", l_toml_encode_pretty },
		{ "toml_parse", l_toml_parse },
		{ "toml_load", l_toml_load },
		{ NULL, NULL },
	};
	luaL_setfuncs(L, fns, 0);
}
