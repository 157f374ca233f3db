/* kumo-policyd private header: the loaded policy (a LuaJIT state plus what
 * its init collected) and the internal API shared by the policyd units, so
 * that everything but the socket loop can be unit tested directly.
 *
 *   policyd_lua.c     the Lua state, the `kumo` module, kumo.on, reject/disconnect
 *   policyd_config.c  init-time collectors: start_esmtp_listener, define_spool, ...
 *   policyd_json.c    Lua <-> cJSON conversion and kumo.serde
 *   policyd_addr.c    the EnvelopeAddress userdata
 *   policyd_meta.c    the connection metadata object
 *   policyd_msg.c     the Message object (bytes read from smtpd's file on demand)
 *   policyd_hdr.c     header-block text: fields, decoding, folding (no Lua)
 *   policyd_event.c   policy_handle: one lib/ipc.h request in, one reply out
 *   policyd.c         main(): the socket loop */
#ifndef KUMO_POLICYD_H
#define KUMO_POLICYD_H
#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include <lua.h>

#define POLICY_VERSION "kumomta-c 0.1"

struct policy {
	lua_State *L;        /* owned; NULL once a load failed */
	char *path;          /* owned: the policy file as given */
	char *load_error;    /* owned; NULL when the policy loaded */
	cJSON *listeners;    /* owned array of start_esmtp_listener tables */
	cJSON *spools;       /* owned object: spool name -> definition */
	cJSON *logs;         /* owned configure_local_logs table, or NULL */
	cJSON *resolver;     /* owned kumo.dns.configure_resolver table, or NULL */
	cJSON *handler_names;/* owned array: registered event names, in order */
	cJSON *init_result;  /* owned: the cached init reply (without id), or NULL */
	bool in_event;       /* a request's handler is running: kumo.on refused */
	/* Set by whoever runs policy_handle (the pool): how a Message passed
	 * with "fetch" gets the file of its bytes (lib/ipc.h "msg_file").
	 * Returns the path (owned by the caller), or NULL with err set.
	 * NULL: the bytes cannot be fetched. */
	char *(*fetch)(void *arg, char *err, size_t errlen);
	void *fetch_arg;
};

/* --- public internal API (policyd_lua.c, policyd_event.c) --- */

/* Never NULL: on a load error the policy remembers it (and err has it). */
struct policy *policy_load(const char *path, char *err, size_t errlen);
/* NULL if the policy loaded fine. */
const char *policy_load_error(const struct policy *p);
/* Answers one request; the reply echoes "id".  The caller frees it.  The
 * request stays the caller's to free, but its connection metadata and a
 * message argument's recipients and meta may have been taken out of it. */
cJSON *policy_handle(struct policy *p, cJSON *request);
void policy_free(struct policy *p);

/* --- policyd_lua.c --- */

/* The policy that owns L (stored in its registry). */
struct policy *policy_from_lua(lua_State *L);
/* Pushes the array of handlers for event name and returns 1, or pushes
 * nothing and returns 0 when there is none. */
int policy_push_handlers(lua_State *L, const char *name);
/* true for the multi-handler events (first non-nil return wins). */
bool policy_event_is_multi(const char *name);
/* When the value at idx is a kumo.reject/kumo.disconnect error, fills the
 * fields (pointing into Lua strings, valid while the value is on the stack)
 * and returns true. */
bool policy_is_rejection(lua_State *L, int idx, int *code, const char **text,
			 const char **mode);
/* Describes an error value as one line of text (owned by the caller). */
char *policy_error_text(lua_State *L, int idx);

/* --- policyd_config.c --- */

/* Adds start_esmtp_listener, define_spool, configure_local_logs,
 * make_listener_domain and start_http_listener to the table at the top. */
void policy_config_register(lua_State *L);

/* --- policyd_json.c --- */

#define POLICY_JSON_MAX_DEPTH 64

/* Converts the Lua value at idx to JSON.  NULL with err set when it cannot
 * be serialized (function, thread, foreign userdata, too deep). */
cJSON *policy_json_from_lua(lua_State *L, int idx, char *err, size_t errlen);

enum { POLICY_JSON_ADDR = 1 };  /* {"__addr":"x@y"} becomes an EnvelopeAddress */
/* Pushes j as a Lua value (null -> nil).  0, or -1 with err set (an invalid
 * __addr with POLICY_JSON_ADDR); on -1 the stack above the old top is junk
 * the caller discards. */
int policy_json_push(lua_State *L, const cJSON *j, int flags, char *err, size_t errlen);

/* Parses JSON text that may carry C, C++ and shell style comments. */
cJSON *policy_json_parse_text(const char *text, size_t len, char *err, size_t errlen);

/* Adds json_encode, json_encode_pretty, json_parse, json_load to the table
 * at the top of the stack. */
void policy_json_register(lua_State *L);

/* --- policyd_addr.c --- */

/* Pushes an EnvelopeAddress parsed from email.  0, or -1 with err set
 * (nothing pushed). */
int policy_addr_push(lua_State *L, const char *email, char *err, size_t errlen);
/* The email of the EnvelopeAddress at idx, or NULL if it is not one. */
const char *policy_addr_email(lua_State *L, int idx);
void policy_addr_register(lua_State *L);

/* --- policyd_meta.c --- */

/* Pushes a connection metadata object that takes ownership of obj. */
void policy_meta_push(lua_State *L, cJSON *obj);
/* Takes the metadata back out of the object at idx (which is then detached:
 * its methods raise an error).  NULL if idx is not a live object; *changed
 * tells whether set_meta was called on it, and *delta (when not NULL) gets
 * what it set (policy_meta_delta). */
cJSON *policy_meta_take(lua_State *L, int idx, bool *changed, cJSON **delta);
void policy_meta_register(lua_State *L);
/* get_meta/set_meta on a metadata object, shared with the Message:
 * policy_meta_get pushes obj[name] (nil when absent) and returns 1;
 * policy_meta_set sets obj[name] to the Lua value at idx, raising a Lua
 * error when it is not JSON-serializable; policy_meta_obj_set replaces or
 * adds obj[name] = v, taking ownership of v. */
int policy_meta_get(lua_State *L, const cJSON *obj, const char *name);
void policy_meta_set(lua_State *L, cJSON *obj, const char *name, int idx);
void policy_meta_obj_set(cJSON *obj, const char *name, cJSON *v);
/* The names set on a metadata object, each once, in the order first set:
 * policy_meta_note adds name to *names (an array, created when NULL).
 * policy_meta_delta returns {name: copy of obj[name], ...} for them, the
 * reply's "meta_set" (lib/ipc.h), or NULL when none was set. */
void policy_meta_note(cJSON **names, const char *name);
cJSON *policy_meta_delta(const cJSON *obj, const cJSON *names);

/* --- policyd_hdr.c --- */

struct policy_buf {
	char *p;            /* owned; NUL-terminated once anything was added */
	size_t len, cap;
};
void policy_buf_add(struct policy_buf *b, const void *data, size_t len);
/* Makes room for len more bytes (and a NUL) after p[len]. */
void policy_buf_reserve(struct policy_buf *b, size_t len);
void policy_buf_reset(struct policy_buf *b);   /* empties it, keeps the memory */
void policy_buf_free(struct policy_buf *b);

/* One header field of a block: buf[start, end) is the whole field, folds and
 * line end included; its name is the first name_len bytes; [value,
 * value_end) is the raw value (after the colon and leading blanks, before
 * the final line end, folds included). */
struct policy_hdr_field {
	size_t start, end;
	size_t name_len;
	size_t value, value_end;
};
/* Steps from *pos to the next field of the block buf[0, len); false at the
 * end or at a blank line.  Lines that are not fields (no colon, a name with
 * spaces or control bytes, a fold with nothing to continue) are skipped. */
bool policy_hdr_next(const char *buf, size_t len, size_t *pos, struct policy_hdr_field *f);
/* The field's name equals name, ignoring ASCII case. */
bool policy_hdr_name_is(const char *buf, const struct policy_hdr_field *f, const char *name);
/* Replaces out with the raw value unfolded (each run of blanks and line
 * breaks one space, none at either end, as KumoMTA's unstructured parse)
 * and its RFC 2047 encoded words decoded to UTF-8 (undecodable ones kept,
 * whitespace between two encoded words dropped). */
void policy_hdr_value(const char *raw, size_t len, struct policy_buf *out);
/* Replaces out with value as KumoMTA's encode=true writes it: ASCII words
 * joined by single spaces, folded with CRLF TAB before column 75, a word
 * over 900 bytes split; with 8-bit bytes, those words become RFC 2047
 * "=?UTF-8?Q?...?=" encoded words laid out the same way. */
void policy_hdr_encode(const char *value, size_t len, struct policy_buf *out);
/* Where the header block of a whole message ends, as smtpd computes it: 0
 * when it starts with CRLF, else just past the CRLF before the first empty
 * line, or -1 when there is none. */
long long policy_hdr_block_end(const char *data, size_t len);

/* --- policyd_msg.c --- */

/* Pushes a Message made from the "__msg" object of an event request
 * (lib/ipc.h), taking its "recipients" and "meta" out of it.  0, or -1
 * with err set and nothing pushed (nor taken) when a field is missing or
 * invalid. */
int policy_msg_push(lua_State *L, cJSON *msg, char *err, size_t errlen);
/* Detaches the Message at idx (its methods then raise an error) and
 * returns the reply's "msg" object (with "meta"; with delta also
 * "meta_set" when anything was set, and "prefix" only when the handler
 * changed it).  NULL
 * with err set when idx is not a live Message, or when the edited bytes
 * cannot travel in JSON (a NUL). */
cJSON *policy_msg_take(lua_State *L, int idx, bool delta, char *err, size_t errlen);
void policy_msg_register(lua_State *L);

/* policyd_pool.c: Lua states answering on worker threads.  Where requests
 * come from and where replies go is the caller's (policyd.c): */
struct pool;
struct event_base;
struct pool_ops {
	/* Blocks until there is a request for worker index of p; returns it
	 * (the worker owns it) and its client, or NULL once pool_stopping(p). */
	cJSON *(*next)(struct pool *p, int index, unsigned long *client);
	/* The reply to req, on the worker's thread. */
	void (*done)(unsigned long client, const cJSON *req, const cJSON *reply);
	/* policy->fetch for a Message of req: the path of its file (owned by
	 * the caller), or NULL with err set. */
	char *(*fetch)(unsigned long client, const cJSON *req, char *err, size_t errlen);
};
/* Loads n Lua states and starts their workers.  A policy that fails to
 * load sets err; its workers start (and answer every request with the
 * error) only if serve_failed: at start, so kumod hears why, never on a
 * reload, where the old pool must answer until the new one is good. */
struct pool *pool_new(struct event_base *base, const char *path, int n, const struct pool_ops *ops,
		      bool serve_failed, char *err, size_t errlen);
bool pool_stopping(const struct pool *p);
void pool_free(struct pool *p);  /* stops it and waits for its workers */
/* Stops it without waiting: its workers finish the requests they hold,
 * then the loop frees it. */
void pool_retire(struct pool *p);
void pool_reap(void);  /* at exit: frees the retired pools still finishing */

/* policyd_memo.c: kumo.memoize, added to the kumo table on the stack top */
void policy_memo_register(lua_State *L);

#endif
