/* policyd_msg: the KumoMTA Message object handed to smtp_server_data and
 * smtp_server_message_received.  The request carries the envelope, the
 * message metadata and the path of the file kumo-smtpd wrote, or "fetch":
 * kumo-smtpd writes the file only when asked, through the policy's fetch
 * hook (lib/ipc.h "msg_file"), the first time a method needs the bytes;
 * the bytes are read only when a method needs them: get_data reads the
 * whole file; header lookups and header edits other than prepend_header
 * read just the header block [0, hdr_end) with pread, once.
 * Edits are kept cheaply: prepend_header grows a prefix; append and remove
 * change an in-memory copy of the header block; set_data replaces
 * everything (prefix and header edits are dropped; later header methods
 * work on the new data).  policy_msg_take turns the edits into the
 * reply's "msg" object: sender, recipients and meta always, with "delta"
 * "meta_set" (what the handler set, lib/ipc.h) when anything was, then "data"
 * after set_data (or when the header lines of a message without a blank
 * line were edited, since "headers" cannot say where they end), else
 * "prefix" when non-empty or changed (with "delta", only when changed) and
 * "headers" when the block changed.
 * Entry points: policy_msg_register, policy_msg_push, policy_msg_take.
 * Failures: an invalid __msg object makes policy_msg_push return -1 (a bad
 * request); a missing or short file, a bad argument and any use of a
 * Message after its event returned are Lua errors saying why.  Every buffer
 * is owned by the Message and freed by its __gc, so a Lua error in the
 * middle of a method leaks nothing. */
#include "policyd/policyd.h"
#include "lib/jadd.h"
#include "lib/addr.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <lauxlib.h>

#define MSG_MT "kumo.Message"
#define MSG_SIZE_MAX 1e15  /* far above any max_message_size */

struct msg {
	char *id;                 /* owned */
	char *sender;             /* owned email; "" is the null sender */
	cJSON *recipients;        /* owned array of email strings */
	cJSON *meta;              /* owned object */
	cJSON *meta_names;        /* owned: the names set in meta (policy_meta_note) */
	char *path;               /* owned: smtpd's file holding the bytes;
				   * NULL until fetched ("fetch") */
	size_t offset;            /* where the bytes start in it (a spool segment) */
	bool data_set;            /* set_data was called: the bytes are in data */
	struct policy_buf data;   /* owned: set_data's bytes */
	size_t size;              /* length of the bytes (the file's or data's) */
	long long hdr_end;        /* their header block is [0, hdr_end); -1: no blank line */
	struct policy_buf prefix; /* owned: header lines to put before the message */
	bool prefix_sent;         /* the request had a "prefix" */
	bool prefix_changed;      /* not the "prefix" of the request any more */
	struct policy_buf hdr;    /* owned: copy of the header block, once loaded */
	bool hdr_loaded;
	bool hdr_changed;         /* hdr differs from the bytes' own block */
	struct policy_buf tmp;    /* owned scratch */
	struct policy_buf tmp2;   /* owned scratch */
	cJSON *building;          /* owned: set_recipient's new list, while checked */
};

struct lua_msg {
	struct msg *m;  /* owned; NULL once detached */
};

static cJSON *need(cJSON *j)
{
	if (!j)
		abort();  /* cJSON out of memory: same policy as xalloc */
	return j;
}

static void msg_free(struct msg *m)
{
	if (!m)
		return;
	free(m->id);
	free(m->sender);
	cJSON_Delete(m->recipients);
	cJSON_Delete(m->meta);
	cJSON_Delete(m->meta_names);
	free(m->path);
	policy_buf_free(&m->data);
	policy_buf_free(&m->prefix);
	policy_buf_free(&m->hdr);
	policy_buf_free(&m->tmp);
	policy_buf_free(&m->tmp2);
	cJSON_Delete(m->building);
	free(m);
}

static struct msg *check_msg(lua_State *L)
{
	struct lua_msg *ud = luaL_checkudata(L, 1, MSG_MT);
	if (!ud->m)
		luaL_error(L, "message used after its event returned");
	return ud->m;
}

static void swap_buf(struct policy_buf *a, struct policy_buf *b)
{
	struct policy_buf t = *a;
	*a = *b;
	*b = t;
}

/* --- the bytes --- */

/* Length of the header region: the block, or everything without a blank line. */
static size_t hdr_region(const struct msg *m)
{
	return m->hdr_end >= 0 ? (size_t)m->hdr_end : m->size;
}

/* Appends bytes [off, off + len) of the message as received (or as
 * set_data left it) to out; raises a Lua error naming the file when it
 * cannot be read in full. */
static void src_append(lua_State *L, struct msg *m, size_t off, size_t len, struct policy_buf *out)
{
	policy_buf_add(out, "", 0);
	if (len == 0)
		return;
	if (m->data_set) {
		policy_buf_add(out, m->data.p + off, len);
		return;
	}
	if (!m->path) {
		/* smtpd writes the file now; a failure is the handler's error */
		struct policy *p = policy_from_lua(L);
		char err[400];
		if (!p->fetch)
			luaL_error(L, "message data: the bytes cannot be fetched here");
		m->path = p->fetch(p->fetch_arg, err, sizeof err);
		if (!m->path)
			luaL_error(L, "message data: %s", err);
	}
	int fd = open(m->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		luaL_error(L, "message data %s: %s", m->path, strerror(errno));
	policy_buf_reserve(out, len);
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(fd, out->p + out->len + got, len - got, (off_t)(m->offset + off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = errno;
			close(fd);
			if (r < 0)
				luaL_error(L, "message data %s: %s", m->path, strerror(e));
			luaL_error(L, "message data %s: the file ends at byte %f of %f",
				   m->path, (lua_Number)(off + got), (lua_Number)m->size);
		}
		got += (size_t)r;
	}
	close(fd);
	out->len += len;
	out->p[out->len] = '\0';
}

/* Makes m->hdr the header region, reading it if need be. */
static void load_hdr(lua_State *L, struct msg *m)
{
	if (m->hdr_loaded)
		return;
	policy_buf_reset(&m->hdr);
	src_append(L, m, 0, hdr_region(m), &m->hdr);
	m->hdr_loaded = true;
}

/* The whole message after the edits, without reading anything: only when
 * the bytes are in memory (set_data) or all in hdr (no blank line). */
static void compose_mem(struct msg *m, struct policy_buf *out)
{
	size_t h = hdr_region(m);
	policy_buf_reset(out);
	policy_buf_add(out, m->prefix.p, m->prefix.len);
	if (m->hdr_loaded)
		policy_buf_add(out, m->hdr.p, m->hdr.len);
	else if (m->data_set)
		policy_buf_add(out, m->data.p, h);
	if (m->data_set)
		policy_buf_add(out, m->data.p + h, m->size - h);
}

/* --- header fields over the prefix, then the header block --- */

struct cursor {
	int region;  /* 0: prefix, 1: header block, 2: done */
	size_t pos;
};

static bool next_field(struct msg *m, struct cursor *c, const char **buf,
		       struct policy_hdr_field *f)
{
	for (; c->region < 2; c->region++, c->pos = 0) {
		struct policy_buf *b = c->region == 0 ? &m->prefix : &m->hdr;
		if (b->p && policy_hdr_next(b->p, b->len, &c->pos, f)) {
			*buf = b->p;
			return true;
		}
	}
	return false;
}

struct match {
	lua_State *L;
	const char *name;  /* one name, or NULL */
	int list;          /* or the stack index of a names table; 0: X- headers */
};

static bool matches(const struct match *mt, const char *buf, const struct policy_hdr_field *f)
{
	if (mt->name)
		return policy_hdr_name_is(buf, f, mt->name);
	if (mt->list) {
		size_t n = lua_objlen(mt->L, mt->list);
		for (size_t i = 1; i <= n; i++) {
			lua_rawgeti(mt->L, mt->list, (int)i);
			const char *s = lua_tostring(mt->L, -1);  /* checked: a string */
			bool hit = s && policy_hdr_name_is(buf, f, s);
			lua_pop(mt->L, 1);
			if (hit)
				return true;
		}
		return false;
	}
	return f->name_len >= 2 && (buf[f->start] == 'X' || buf[f->start] == 'x') &&
	       buf[f->start + 1] == '-';
}

/* The optional names list at idx: its index, or 0 for none (nil, absent or
 * empty: all X- headers, as KumoMTA). */
static int names_arg(lua_State *L, int idx, const char *fn)
{
	if (lua_isnoneornil(L, idx))
		return 0;
	if (!lua_istable(L, idx))
		luaL_error(L, "%s: expected a list of header names", fn);
	size_t n = lua_objlen(L, idx);
	for (size_t i = 1; i <= n; i++) {
		lua_rawgeti(L, idx, (int)i);
		int t = lua_type(L, -1);
		lua_pop(L, 1);
		if (t != LUA_TSTRING)
			luaL_error(L, "%s: header name %d is not a string", fn, (int)i);
	}
	return n ? idx : 0;
}

/* Drops the fields of b that match; returns how many went. */
static size_t filter(struct msg *m, struct policy_buf *b, const struct match *mt)
{
	if (!b->p)
		return 0;
	policy_buf_reset(&m->tmp);
	policy_buf_add(&m->tmp, "", 0);
	size_t pos = 0, kept = 0, removed = 0;
	struct policy_hdr_field f;
	while (policy_hdr_next(b->p, b->len, &pos, &f)) {
		if (!matches(mt, b->p, &f))
			continue;
		policy_buf_add(&m->tmp, b->p + kept, f.start - kept);
		kept = f.end;
		removed++;
	}
	if (removed) {
		policy_buf_add(&m->tmp, b->p + kept, b->len - kept);
		swap_buf(b, &m->tmp);
	}
	return removed;
}

static void remove_matching(struct msg *m, const struct match *mt)
{
	if (filter(m, &m->prefix, mt))
		m->prefix_changed = true;
	if (filter(m, &m->hdr, mt))
		m->hdr_changed = true;
}

static void push_value(lua_State *L, struct msg *m, const char *buf,
		       const struct policy_hdr_field *f)
{
	policy_hdr_value(buf + f->value, f->value_end - f->value, &m->tmp);
	lua_pushlstring(L, m->tmp.p, m->tmp.len);
}

/* --- envelope --- */

/* Puts in out the email of the string or EnvelopeAddress at idx; false
 * with why set when it is neither or does not parse. */
static bool value_email(lua_State *L, int idx, struct policy_buf *out, char *why, size_t whylen)
{
	policy_buf_reset(out);
	if (lua_type(L, idx) == LUA_TSTRING) {
		size_t n;
		const char *s = lua_tolstring(L, idx, &n);
		struct smtp_addr a;
		char w[160];
		if (strlen(s) != n) {
			snprintf(why, whylen, "address contains a NUL byte");
			return false;
		}
		if (addr_parse_email(s, &a, w, sizeof w) < 0) {
			snprintf(why, whylen, "invalid address '%.200s': %s", s, w);
			return false;
		}
		policy_buf_add(out, a.email, strlen(a.email));
		addr_free(&a);
		return true;
	}
	const char *e = policy_addr_email(L, idx);
	if (!e) {
		snprintf(why, whylen, "expected a string or an EnvelopeAddress, got %s",
			 luaL_typename(L, idx));
		return false;
	}
	policy_buf_add(out, e, strlen(e));
	return true;
}

static void push_addr(lua_State *L, const char *email)
{
	char err[300];
	if (policy_addr_push(L, email, err, sizeof err) < 0)
		luaL_error(L, "%s", err);
}

static int l_id(lua_State *L)
{
	struct msg *m = check_msg(L);
	lua_pushstring(L, m->id);
	return 1;
}

static int l_sender(lua_State *L)
{
	struct msg *m = check_msg(L);
	push_addr(L, m->sender);
	return 1;
}

static int l_set_sender(lua_State *L)
{
	struct msg *m = check_msg(L);
	char why[400];
	if (!value_email(L, 2, &m->tmp2, why, sizeof why))
		return luaL_error(L, "set_sender: %s", why);
	free(m->sender);
	m->sender = xstrdup(m->tmp2.p);
	return 0;
}

static void push_recipient_list(lua_State *L, struct msg *m)
{
	int n = cJSON_GetArraySize(m->recipients);
	lua_createtable(L, n, 0);
	int i = 1;
	for (const cJSON *r = m->recipients->child; r; r = r->next, i++) {
		push_addr(L, r->valuestring);
		lua_rawseti(L, -2, i);
	}
}

static int l_recipient(lua_State *L)
{
	struct msg *m = check_msg(L);
	int n = cJSON_GetArraySize(m->recipients);
	if (n == 0)
		lua_pushnil(L);
	else if (n == 1)
		push_addr(L, m->recipients->child->valuestring);
	else
		push_recipient_list(L, m);
	return 1;
}

static int l_recipient_list(lua_State *L)
{
	struct msg *m = check_msg(L);
	push_recipient_list(L, m);
	return 1;
}

static void add_recipient(lua_State *L, struct msg *m, int idx, int i)
{
	char why[400];
	if (!value_email(L, idx, &m->tmp2, why, sizeof why)) {
		if (i)
			luaL_error(L, "set_recipient: recipient %d: %s", i, why);
		luaL_error(L, "set_recipient: %s", why);
	}
	cJSON_AddItemToArray(m->building, need(cJSON_CreateString(m->tmp2.p)));
}

static int l_set_recipient(lua_State *L)
{
	struct msg *m = check_msg(L);
	cJSON_Delete(m->building);
	m->building = need(cJSON_CreateArray());
	if (lua_type(L, 2) == LUA_TTABLE) {
		int n = (int)lua_objlen(L, 2);
		if (n == 0)
			return luaL_error(L, "set_recipient: empty recipient list");
		for (int i = 1; i <= n; i++) {
			lua_rawgeti(L, 2, i);
			add_recipient(L, m, lua_gettop(L), i);
			lua_pop(L, 1);
		}
	} else {
		add_recipient(L, m, 2, 0);
	}
	cJSON_Delete(m->recipients);
	m->recipients = m->building;
	m->building = NULL;
	return 0;
}

/* --- metadata --- */

static int l_get_meta(lua_State *L)
{
	struct msg *m = check_msg(L);
	const char *name = luaL_checkstring(L, 2);
	return policy_meta_get(L, m->meta, name);
}

static int l_set_meta(lua_State *L)
{
	struct msg *m = check_msg(L);
	const char *name = luaL_checkstring(L, 2);
	policy_meta_set(L, m->meta, name, 3);
	policy_meta_note(&m->meta_names, name);
	return 0;
}

/* --- data --- */

static int l_get_data(lua_State *L)
{
	struct msg *m = check_msg(L);
	size_t h = hdr_region(m);
	policy_buf_reset(&m->tmp);
	policy_buf_add(&m->tmp, m->prefix.p, m->prefix.len);
	if (m->hdr_loaded) {
		policy_buf_add(&m->tmp, m->hdr.p, m->hdr.len);
		src_append(L, m, h, m->size - h, &m->tmp);
	} else {
		src_append(L, m, 0, m->size, &m->tmp);
	}
	lua_pushlstring(L, m->tmp.p, m->tmp.len);
	policy_buf_free(&m->tmp);  /* a whole message: do not keep a second copy */
	return 1;
}

static int l_set_data(lua_State *L)
{
	struct msg *m = check_msg(L);
	size_t len;
	const char *s = luaL_checklstring(L, 2, &len);
	if (memchr(s, '\0', len))
		return luaL_error(L, "set_data: the data contains a NUL byte");
	policy_buf_reset(&m->data);
	policy_buf_add(&m->data, s, len);
	m->data_set = true;
	m->size = len;
	m->hdr_end = policy_hdr_block_end(s, len);
	policy_buf_free(&m->prefix);
	policy_buf_free(&m->hdr);
	m->hdr_loaded = false;
	m->hdr_changed = false;
	return 0;
}

/* --- adding headers --- */

struct new_header {
	const char *name;
	const char *value;
	size_t value_len;
	bool encode;
};

static void header_args(lua_State *L, const char *fn, struct new_header *h)
{
	size_t nlen;
	h->name = luaL_checklstring(L, 2, &nlen);
	h->value = luaL_checklstring(L, 3, &h->value_len);
	h->encode = lua_toboolean(L, 4);
	bool ok = nlen > 0;
	for (size_t i = 0; ok && i < nlen; i++) {
		unsigned char c = (unsigned char)h->name[i];
		ok = c >= 33 && c <= 126 && c != ':';
	}
	if (!ok)
		luaL_error(L, "%s: invalid header name '%s'", fn, h->name);
	if (memchr(h->value, '\0', h->value_len))
		luaL_error(L, "%s: the value contains a NUL byte", fn);
}

/* Appends "Name: value\r\n" to out (no CRLF added when the value ends in
 * one, as KumoMTA); with encode, the value is folded/encoded first. */
static void emit(struct msg *m, struct policy_buf *out, const struct new_header *h)
{
	const char *v = h->value;
	size_t vlen = h->value_len;
	if (h->encode) {
		policy_hdr_encode(v, vlen, &m->tmp2);
		v = m->tmp2.p;
		vlen = m->tmp2.len;
	}
	policy_buf_add(out, h->name, strlen(h->name));
	policy_buf_add(out, ": ", 2);
	policy_buf_add(out, v, vlen);
	if (!(vlen >= 2 && v[vlen - 2] == '\r' && v[vlen - 1] == '\n'))
		policy_buf_add(out, "\r\n", 2);
}

static int l_prepend_header(lua_State *L)
{
	struct msg *m = check_msg(L);
	struct new_header h;
	header_args(L, "prepend_header", &h);
	policy_buf_reset(&m->tmp);
	emit(m, &m->tmp, &h);
	policy_buf_add(&m->tmp, m->prefix.p, m->prefix.len);
	swap_buf(&m->tmp, &m->prefix);
	m->prefix_changed = true;
	return 0;
}

static int l_append_header(lua_State *L)
{
	struct msg *m = check_msg(L);
	struct new_header h;
	header_args(L, "append_header", &h);
	if (m->hdr_end < 0)
		return luaL_error(L, "append_header could not find the end of the header block");
	load_hdr(L, m);
	emit(m, &m->hdr, &h);
	m->hdr_changed = true;
	return 0;
}

/* --- reading and removing headers --- */

static int l_get_first_named_header_value(lua_State *L)
{
	struct msg *m = check_msg(L);
	const char *name = luaL_checkstring(L, 2);
	load_hdr(L, m);
	struct cursor c = { 0, 0 };
	const char *buf;
	struct policy_hdr_field f;
	while (next_field(m, &c, &buf, &f)) {
		if (policy_hdr_name_is(buf, &f, name)) {
			push_value(L, m, buf, &f);
			return 1;
		}
	}
	lua_pushnil(L);
	return 1;
}

static int l_get_all_named_header_values(lua_State *L)
{
	struct msg *m = check_msg(L);
	const char *name = luaL_checkstring(L, 2);
	load_hdr(L, m);
	lua_newtable(L);
	struct cursor c = { 0, 0 };
	const char *buf;
	struct policy_hdr_field f;
	int i = 1;
	while (next_field(m, &c, &buf, &f)) {
		if (policy_hdr_name_is(buf, &f, name)) {
			push_value(L, m, buf, &f);
			lua_rawseti(L, -2, i++);
		}
	}
	return 1;
}

static int l_get_all_headers(lua_State *L)
{
	struct msg *m = check_msg(L);
	load_hdr(L, m);
	lua_newtable(L);
	struct cursor c = { 0, 0 };
	const char *buf;
	struct policy_hdr_field f;
	int i = 1;
	while (next_field(m, &c, &buf, &f)) {
		lua_createtable(L, 2, 0);
		lua_pushlstring(L, buf + f.start, f.name_len);
		lua_rawseti(L, -2, 1);
		push_value(L, m, buf, &f);
		lua_rawseti(L, -2, 2);
		lua_rawseti(L, -2, i++);
	}
	return 1;
}

static int l_remove_all_named_headers(lua_State *L)
{
	struct msg *m = check_msg(L);
	struct match mt = { .L = L, .name = luaL_checkstring(L, 2) };
	load_hdr(L, m);
	remove_matching(m, &mt);
	return 0;
}

static int l_remove_x_headers(lua_State *L)
{
	struct msg *m = check_msg(L);
	struct match mt = { .L = L, .list = names_arg(L, 2, "remove_x_headers") };
	load_hdr(L, m);
	remove_matching(m, &mt);
	return 0;
}

/* X-Foo-Bar: v becomes meta x_foo_bar = "v" (lower case, '-' -> '_'). */
static int l_import_x_headers(lua_State *L)
{
	struct msg *m = check_msg(L);
	struct match mt = { .L = L, .list = names_arg(L, 2, "import_x_headers") };
	load_hdr(L, m);
	struct cursor c = { 0, 0 };
	const char *buf;
	struct policy_hdr_field f;
	while (next_field(m, &c, &buf, &f)) {
		if (!matches(&mt, buf, &f))
			continue;
		policy_buf_reset(&m->tmp2);
		for (size_t i = 0; i < f.name_len; i++) {
			char ch = buf[f.start + i];
			ch = ch == '-' ? '_' : (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
			policy_buf_add(&m->tmp2, &ch, 1);
		}
		policy_hdr_value(buf + f.value, f.value_end - f.value, &m->tmp);
		policy_meta_obj_set(m->meta, m->tmp2.p, need(cJSON_CreateString(m->tmp.p)));
		policy_meta_note(&m->meta_names, m->tmp2.p);
	}
	return 0;
}

/* --- the userdata --- */

static int l_msg_gc(lua_State *L)
{
	struct lua_msg *ud = luaL_checkudata(L, 1, MSG_MT);
	msg_free(ud->m);
	ud->m = NULL;
	return 0;
}

static int l_msg_tostring(lua_State *L)
{
	struct lua_msg *ud = luaL_checkudata(L, 1, MSG_MT);
	if (ud->m)
		lua_pushfstring(L, "Message(%s)", ud->m->id);
	else
		lua_pushliteral(L, "Message(detached)");
	return 1;
}

void policy_msg_register(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{ "id", l_id },
		{ "get_meta", l_get_meta },
		{ "set_meta", l_set_meta },
		{ "sender", l_sender },
		{ "set_sender", l_set_sender },
		{ "recipient", l_recipient },
		{ "recipient_list", l_recipient_list },
		{ "set_recipient", l_set_recipient },
		{ "get_data", l_get_data },
		{ "set_data", l_set_data },
		{ "prepend_header", l_prepend_header },
		{ "append_header", l_append_header },
		{ "get_first_named_header_value", l_get_first_named_header_value },
		{ "get_all_named_header_values", l_get_all_named_header_values },
		{ "get_all_headers", l_get_all_headers },
		{ "remove_all_named_headers", l_remove_all_named_headers },
		{ "import_x_headers", l_import_x_headers },
		{ "remove_x_headers", l_remove_x_headers },
		{ NULL, NULL },
	};
	luaL_newmetatable(L, MSG_MT);
	lua_pushcfunction(L, l_msg_gc);
	lua_setfield(L, -2, "__gc");
	lua_pushcfunction(L, l_msg_tostring);
	lua_setfield(L, -2, "__tostring");
	lua_newtable(L);
	luaL_setfuncs(L, methods, 0);
	lua_setfield(L, -2, "__index");
	lua_pushliteral(L, "Message");
	lua_setfield(L, -2, "__name");
	lua_pop(L, 1);
}

/* --- request and reply --- */

static bool valid_email(const char *s, char *why, size_t whylen)
{
	struct smtp_addr a;
	if (addr_parse_email(s, &a, why, whylen) < 0)
		return false;
	addr_free(&a);
	return true;
}

/* A whole number in [lo, hi] from a JSON number. */
static bool json_int(const cJSON *j, double lo, double hi, double *out)
{
	if (!cJSON_IsNumber(j))
		return false;
	double d = j->valuedouble;
	if (!(d >= lo && d <= hi) || d != floor(d))
		return false;
	*out = d;
	return true;
}

/* The members of a "__msg" object, found in one pass over it (a frame
 * has no key twice: lib/frame.c). */
struct msg_fields {
	cJSON *id, *sender, *recipients, *meta, *path, *fetch, *size, *hdr_end, *offset, *prefix;
};

static void msg_fields(const cJSON *j, struct msg_fields *f)
{
	memset(f, 0, sizeof *f);
	for (cJSON *c = j->child; c; c = c->next) {
		const char *k = c->string;
		cJSON **slot = NULL;
		switch (k ? k[0] : '\0') {
		case 'i': slot = strcmp(k, "id") == 0 ? &f->id : NULL; break;
		case 's': slot = strcmp(k, "sender") == 0 ? &f->sender : strcmp(k, "size") == 0 ? &f->size : NULL; break;
		case 'r': slot = strcmp(k, "recipients") == 0 ? &f->recipients : NULL; break;
		case 'm': slot = strcmp(k, "meta") == 0 ? &f->meta : NULL; break;
		case 'p': slot = strcmp(k, "path") == 0 ? &f->path : strcmp(k, "prefix") == 0 ? &f->prefix : NULL; break;
		case 'f': slot = strcmp(k, "fetch") == 0 ? &f->fetch : NULL; break;
		case 'h': slot = strcmp(k, "hdr_end") == 0 ? &f->hdr_end : NULL; break;
		case 'o': slot = strcmp(k, "offset") == 0 ? &f->offset : NULL; break;
		}
		if (slot && !*slot)
			*slot = c;
	}
}

static int check_request(const struct msg_fields *f, double *size, double *hdr_end, double *offset,
			 char *err, size_t errlen)
{
	char why[160];
	const cJSON *id = f->id, *sender = f->sender, *rcpts = f->recipients, *meta = f->meta;
	const cJSON *path = f->path;
	if (!cJSON_IsString(id) || !id->valuestring[0]) {
		snprintf(err, errlen, "__msg: missing id");
		return -1;
	}
	if (!cJSON_IsString(sender)) {
		snprintf(err, errlen, "__msg: missing sender");
		return -1;
	}
	if (!valid_email(sender->valuestring, why, sizeof why)) {
		snprintf(err, errlen, "__msg: invalid sender '%.200s': %s", sender->valuestring, why);
		return -1;
	}
	if (!cJSON_IsArray(rcpts)) {
		snprintf(err, errlen, "__msg: recipients must be an array");
		return -1;
	}
	for (const cJSON *r = rcpts->child; r; r = r->next) {
		if (!cJSON_IsString(r)) {
			snprintf(err, errlen, "__msg: recipients must be strings");
			return -1;
		}
		if (!valid_email(r->valuestring, why, sizeof why)) {
			snprintf(err, errlen, "__msg: invalid recipient '%.200s': %s", r->valuestring, why);
			return -1;
		}
	}
	if (meta && !cJSON_IsObject(meta)) {
		snprintf(err, errlen, "__msg: meta must be an object");
		return -1;
	}
	if ((!cJSON_IsString(path) || !path->valuestring[0]) && !cJSON_IsTrue(f->fetch)) {
		snprintf(err, errlen, "__msg: missing path");
		return -1;
	}
	if (!json_int(f->size, 0, MSG_SIZE_MAX, size)) {
		snprintf(err, errlen, "__msg: size must be a whole number of bytes");
		return -1;
	}
	if (!json_int(f->hdr_end, -1, *size, hdr_end)) {
		snprintf(err, errlen, "__msg: hdr_end must be a whole number from -1 to size");
		return -1;
	}
	const cJSON *off = f->offset;
	if (off && (!cJSON_IsString(path) || !json_int(off, 0, 9007199254740992.0, offset))) {
		snprintf(err, errlen, "__msg: offset must be a whole number, with a path");
		return -1;
	}
	return 0;
}

int policy_msg_push(lua_State *L, cJSON *j, char *err, size_t errlen)
{
	double size, hdr_end, offset = 0;
	if (!cJSON_IsObject(j)) {
		snprintf(err, errlen, "__msg must be an object");
		return -1;
	}
	struct msg_fields f;
	msg_fields(j, &f);
	if (check_request(&f, &size, &hdr_end, &offset, err, errlen) < 0)
		return -1;
	/* The userdata exists (and will be collected) before anything is
	 * allocated for it, so a Lua error here cannot leak. */
	struct lua_msg *ud = lua_newuserdata(L, sizeof *ud);
	ud->m = NULL;
	luaL_getmetatable(L, MSG_MT);
	lua_setmetatable(L, -2);
	struct msg *m = xcalloc(1, sizeof *m);
	ud->m = m;
	cJSON *meta = f.meta ? cJSON_DetachItemViaPointer(j, f.meta) : NULL;
	m->id = xstrdup(f.id->valuestring);
	m->sender = xstrdup(f.sender->valuestring);
	m->recipients = cJSON_DetachItemViaPointer(j, f.recipients);
	m->meta = meta ? meta : need(cJSON_CreateObject());
	const cJSON *path = f.path;
	if (cJSON_IsString(path) && path->valuestring[0])
		m->path = xstrdup(path->valuestring);
	m->size = (size_t)size;
	m->offset = (size_t)offset;
	m->hdr_end = (long long)hdr_end;
	/* header lines smtpd already put before the file's bytes (Received):
	 * part of the message for every method, returned in the reply's prefix */
	const cJSON *prefix = f.prefix;
	if (cJSON_IsString(prefix)) {
		policy_buf_add(&m->prefix, prefix->valuestring, strlen(prefix->valuestring));
		m->prefix_sent = true;
	}
	return 0;
}

static cJSON *take_fail(cJSON *r, struct msg *m, char *err, size_t errlen, const char *what)
{
	snprintf(err, errlen, "message %s: the edited %s contains a NUL byte", m->id, what);
	cJSON_Delete(r);
	msg_free(m);
	return NULL;
}

cJSON *policy_msg_take(lua_State *L, int idx, bool delta, char *err, size_t errlen)
{
	struct lua_msg *ud = luaL_testudata(L, idx, MSG_MT);
	if (!ud || !ud->m) {
		snprintf(err, errlen, "not a live message");
		return NULL;
	}
	struct msg *m = ud->m;
	ud->m = NULL;
	cJSON *r = need(cJSON_CreateObject());
	jadd_item(r, "sender", need(cJSON_CreateString(m->sender)));
	jadd_item(r, "recipients", m->recipients);
	m->recipients = NULL;
	cJSON *set = delta ? policy_meta_delta(m->meta, m->meta_names) : NULL;
	jadd_item(r, "meta", m->meta);
	m->meta = NULL;
	if (set)
		jadd_item(r, "meta_set", set);
	if (m->data_set || (m->hdr_changed && m->hdr_end < 0)) {
		compose_mem(m, &m->tmp);
		if (memchr(m->tmp.p, '\0', m->tmp.len))
			return take_fail(r, m, err, errlen, "message");
		jadd_item(r, "data", need(cJSON_CreateString(m->tmp.p)));
	} else {
		/* with delta, only a prefix that is not the one sent; "" when
		 * the handler removed every line of the one sent */
		bool said = m->prefix.len || (m->prefix_changed && m->prefix_sent);
		if (delta ? said && m->prefix_changed : said)
			jadd_item(r, "prefix",
					      need(cJSON_CreateString(m->prefix.len ? m->prefix.p : "")));
		if (m->hdr_changed) {
			if (memchr(m->hdr.p, '\0', m->hdr.len))
				return take_fail(r, m, err, errlen, "header block");
			jadd_item(r, "headers", need(cJSON_CreateString(m->hdr.p)));
		}
	}
	msg_free(m);
	return r;
}
