/* policyd_config: the kumo functions a policy calls (normally from its init
 * handler) to describe the relay: start_esmtp_listener (validated with
 * lib/params.h and appended to the policy's listeners), define_spool
 * (recorded by name), configure_local_logs (kept as JSON; one configuration
 * is supported, a later call replaces an earlier one with a warning),
 * make_listener_domain (validated, relay_from as CIDR blocks, and returned
 * as is), start_http_listener (accepted and ignored: there is no HTTP
 * listener), and for delivery make_queue_config and make_egress_path
 * (validated and returned as tables, which kumo-qmgr reads) and
 * dns.configure_resolver (recorded for kumo-qmgr).
 * Entry point: policy_config_register.  Bad parameters raise a Lua error
 * "<function>: <reason>" with the caller's file:line in front. */
#include "policyd/policyd.h"
#include "lib/jadd.h"
#include "lib/cidr.h"
#include "lib/duration.h"
#include "lib/log.h"
#include "lib/params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>

enum vtype {
	V_STRING = 1,
	V_NUMBER = 2,
	V_BOOL = 4,
	V_STRLIST = 8,   /* array of strings; {} counts as an empty one */
	V_TABLE = 16,    /* any object ({} included) */
};

struct pdef {
	const char *name;
	int types;                  /* enum vtype bits */
	const char *const *choices; /* for V_STRING: allowed values, NULL-terminated */
	bool required;
};

static const char *vtype_text(int types)
{
	switch (types) {
	case V_STRING: return "a string";
	case V_NUMBER: return "a number";
	case V_BOOL: return "a boolean";
	case V_STRLIST: return "a list of strings";
	case V_TABLE: return "a table";
	case V_STRING | V_NUMBER: return "a string or a number";
	case V_STRING | V_BOOL: return "a string or a boolean";
	case V_STRING | V_STRLIST: return "a string or a list of strings";
	default: return "of another type";
	}
}

static bool is_strlist(const cJSON *j)
{
	if (cJSON_IsObject(j))
		return j->child == NULL;
	if (!cJSON_IsArray(j))
		return false;
	for (const cJSON *c = j->child; c; c = c->next)
		if (!cJSON_IsString(c))
			return false;
	return true;
}

static bool type_ok(const cJSON *v, int types)
{
	return ((types & V_STRING) && cJSON_IsString(v)) ||
	       ((types & V_NUMBER) && cJSON_IsNumber(v)) ||
	       ((types & V_BOOL) && cJSON_IsBool(v)) ||
	       ((types & V_STRLIST) && is_strlist(v)) ||
	       ((types & V_TABLE) && cJSON_IsObject(v));
}

static const struct pdef *find_def(const struct pdef *defs, const char *name)
{
	for (; defs->name; defs++)
		if (strcmp(defs->name, name) == 0)
			return defs;
	return NULL;
}

/* Checks the object t against defs.  0, or -1 with a reason. */
static int check_params(const cJSON *t, const struct pdef *defs, char *err, size_t errlen)
{
	if (!cJSON_IsObject(t)) {
		snprintf(err, errlen, "expected a table of named parameters");
		return -1;
	}
	for (const cJSON *c = t->child; c; c = c->next) {
		const struct pdef *d = find_def(defs, c->string);
		if (!d) {
			snprintf(err, errlen, "unknown parameter '%.100s'", c->string);
			return -1;
		}
		if (!type_ok(c, d->types)) {
			snprintf(err, errlen, "'%s' must be %s", d->name, vtype_text(d->types));
			return -1;
		}
		if (d->choices && cJSON_IsString(c)) {
			const char *const *ch = d->choices;
			while (*ch && strcmp(*ch, c->valuestring) != 0)
				ch++;
			if (!*ch) {
				snprintf(err, errlen, "invalid %s '%.100s'", d->name, c->valuestring);
				return -1;
			}
		}
	}
	for (; defs->name; defs++) {
		if (defs->required && !cJSON_GetObjectItemCaseSensitive(t, defs->name)) {
			snprintf(err, errlen, "missing required parameter '%s'", defs->name);
			return -1;
		}
	}
	return 0;
}

/* {} stands for an empty list in Lua: store it as [] */
static void fix_empty_lists(cJSON *t, const struct pdef *defs)
{
	for (; defs->name; defs++) {
		if (!(defs->types & V_STRLIST))
			continue;
		cJSON *v = cJSON_GetObjectItemCaseSensitive(t, defs->name);
		if (cJSON_IsObject(v)) {
			cJSON *arr = cJSON_CreateArray();
			if (!arr)
				abort();
			cJSON_ReplaceItemInObjectCaseSensitive(t, defs->name, arr);
		}
	}
}

/* Converts argument 1 (a table) and checks it; raises "<fn>: <reason>". */
static cJSON *table_arg(lua_State *L, const char *fn, const struct pdef *defs)
{
	char err[300];
	luaL_checktype(L, 1, LUA_TTABLE);
	cJSON *t = policy_json_from_lua(L, 1, err, sizeof err);
	if (t && defs && check_params(t, defs, err, sizeof err) < 0) {
		cJSON_Delete(t);
		t = NULL;
	}
	if (!t)
		luaL_error(L, "%s: %s", fn, err);
	if (defs)
		fix_empty_lists(t, defs);
	return t;
}

static int l_start_esmtp_listener(lua_State *L)
{
	struct policy *p = policy_from_lua(L);
	cJSON *t = table_arg(L, "start_esmtp_listener", NULL);
	char err[300];
	if (!cJSON_IsObject(t)) {
		cJSON_Delete(t);
		return luaL_error(L, "start_esmtp_listener: expected a table of named parameters");
	}
	if (params_check(t, PARAMS_TOP, err, sizeof err) < 0) {
		cJSON_Delete(t);
		return luaL_error(L, "start_esmtp_listener: %s", err);
	}
	cJSON_AddItemToArray(p->listeners, t);
	return 0;
}

static const char *const spool_kinds[] = { "LocalDisk", "RocksDB", NULL };

static const struct pdef spool_params[] = {
	{ "name", V_STRING, NULL, true },
	{ "path", V_STRING, NULL, true },
	{ "kind", V_STRING, spool_kinds, false },
	{ "flush", V_BOOL, NULL, false },
	{ "min_free_space", V_STRING | V_NUMBER, NULL, false },
	{ "min_free_inodes", V_STRING | V_NUMBER, NULL, false },
	{ "rocks_params", V_TABLE, NULL, false },
	{ NULL, 0, NULL, false },
};

static int l_define_spool(lua_State *L)
{
	struct policy *p = policy_from_lua(L);
	cJSON *t = table_arg(L, "define_spool", spool_params);
	const char *name = jget(t, "name")->valuestring;
	const char *path = jget(t, "path")->valuestring;
	if (!name[0] || !path[0]) {
		cJSON_Delete(t);
		return luaL_error(L, "define_spool: name and path must not be empty");
	}
	if (cJSON_GetObjectItemCaseSensitive(p->spools, name)) {
		char n[128];
		snprintf(n, sizeof n, "%s", name);
		cJSON_Delete(t);
		return luaL_error(L, "define_spool: spool '%s' is already defined", n);
	}
	if (!jget(t, "kind"))
		jadd_string(t, "kind", "LocalDisk");
	if (!jget(t, "flush"))
		jadd_bool(t, "flush", 0);
	cJSON_AddItemToObject(p->spools, name, t);
	return 0;
}

static const struct pdef log_params[] = {
	{ "log_dir", V_STRING, NULL, true },
	{ "max_file_size", V_NUMBER, NULL, false },
	{ "max_segment_duration", V_STRING | V_NUMBER, NULL, false },
	{ "compression_level", V_NUMBER, NULL, false },
	{ "headers", V_STRLIST, NULL, false },
	{ "meta", V_STRLIST, NULL, false },
	{ "per_record", V_TABLE, NULL, false },
	{ "back_pressure", V_NUMBER, NULL, false },
	{ "min_free_space", V_STRING | V_NUMBER, NULL, false },
	{ "min_free_inodes", V_STRING | V_NUMBER, NULL, false },
	{ "filter_event", V_STRING, NULL, false },
	{ NULL, 0, NULL, false },
};

static int l_configure_local_logs(lua_State *L)
{
	struct policy *p = policy_from_lua(L);
	cJSON *t = table_arg(L, "configure_local_logs", log_params);
	if (!jget(t, "log_dir")->valuestring[0]) {
		cJSON_Delete(t);
		return luaL_error(L, "configure_local_logs: log_dir must not be empty");
	}
	if (p->logs)
		log_warn("configure_local_logs called again: only one local log "
			 "configuration is supported, the last one is used");
	cJSON_Delete(p->logs);
	p->logs = t;
	return 0;
}

static const char *const arf_modes[] = { "Ignore", "LogThenRelay", "LogThenDrop", NULL };

static const struct pdef domain_params[] = {
	{ "relay_to", V_BOOL, NULL, false },
	{ "relay_from", V_STRING | V_STRLIST, NULL, false },
	{ "log_arf", V_STRING | V_BOOL, arf_modes, false },
	{ "log_oob", V_STRING | V_BOOL, arf_modes, false },
	{ NULL, 0, NULL, false },
};

static void check_cidr(const char *s, char *msg, size_t msglen)
{
	struct cidr block;
	char why[128];
	if (cidr_parse(s, &block, why, sizeof why) < 0)
		snprintf(msg, msglen, "'%.100s': %s", s, why);
}

static int l_make_listener_domain(lua_State *L)
{
	cJSON *t = table_arg(L, "make_listener_domain", domain_params);
	const cJSON *from = jget(t, "relay_from");
	char msg[300] = "";
	if (cJSON_IsString(from)) {
		check_cidr(from->valuestring, msg, sizeof msg);
	} else if (from) {
		for (const cJSON *c = from->child; c && !msg[0]; c = c->next)
			check_cidr(c->valuestring, msg, sizeof msg);
	}
	cJSON_Delete(t);
	if (msg[0])
		return luaL_error(L, "make_listener_domain: relay_from: %s", msg);
	lua_settop(L, 1);
	return 1;
}

/* Delivery.  Parameters kumo-qmgr applies are marked; the others are
 * KumoMTA's names, accepted so a KumoMTA policy loads, and ignored (the man
 * page lists which).  An unknown name is an error, as in KumoMTA. */
static const struct pdef queue_params[] = {
	{ "retry_interval", V_STRING | V_NUMBER, NULL, false },      /* applied */
	{ "max_retry_interval", V_STRING | V_NUMBER, NULL, false },  /* applied */
	{ "max_age", V_STRING | V_NUMBER, NULL, false },             /* applied */
	{ "protocol", V_TABLE, NULL, false },                        /* applied: smtp.mx_list */
	{ "egress_pool", V_STRING, NULL, false },                    /* recorded */
	{ "max_message_rate", V_STRING, NULL, false },
	{ "reap_interval", V_STRING | V_NUMBER, NULL, false },
	{ "refresh_interval", V_STRING | V_NUMBER, NULL, false },
	{ "refresh_strategy", V_STRING, NULL, false },
	{ "shrink_policy", V_TABLE, NULL, false },
	{ "strategy", V_STRING, NULL, false },
	{ "timerwheel_tick_interval", V_STRING | V_NUMBER, NULL, false },
	{ NULL, 0, NULL, false },
};

static const char *const tls_modes[] = { "Opportunistic", "OpportunisticInsecure", "Required",
					 "RequiredInsecure", "Disabled", NULL };

static const struct pdef path_params[] = {
	{ "smtp_port", V_NUMBER, NULL, false },                      /* applied */
	{ "enable_tls", V_STRING, tls_modes, false },                /* applied */
	{ "connection_limit", V_STRING | V_NUMBER, NULL, false },    /* applied */
	{ "max_deliveries_per_connection", V_NUMBER, NULL, false },  /* applied */
	{ "prohibited_hosts", V_STRLIST, NULL, false },              /* applied */
	{ "skip_hosts", V_STRLIST, NULL, false },                    /* applied */
	{ "ehlo_domain", V_STRING, NULL, false },                    /* applied */
	{ "connect_timeout", V_STRING | V_NUMBER, NULL, false },     /* applied: every *_timeout */
	{ "banner_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "ehlo_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "mail_from_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "rcpt_to_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "data_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "data_dot_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "rset_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "idle_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "starttls_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "system_shutdown_timeout", V_STRING | V_NUMBER, NULL, false },
	{ "additional_connection_limits", V_TABLE, NULL, false },
	{ "aggressive_connection_opening", V_BOOL, NULL, false },
	{ "allow_smtp_auth_plain_without_tls", V_BOOL, NULL, false },
	{ "consecutive_connection_failures_before_delay", V_NUMBER, NULL, false },
	{ "enable_dane", V_BOOL, NULL, false },
	{ "enable_mta_sts", V_BOOL, NULL, false },
	{ "enable_pipelining", V_BOOL, NULL, false },
	{ "enable_rset", V_BOOL, NULL, false },
	{ "ip_lookup_strategy", V_STRING, NULL, false },
	{ "max_connection_rate", V_STRING, NULL, false },
	{ "max_message_rate", V_STRING, NULL, false },
	{ "max_ready", V_NUMBER, NULL, false },
	{ "provider_name", V_STRING, NULL, false },
	{ "reconnect_strategy", V_STRING, NULL, false },
	{ "refresh_interval", V_STRING | V_NUMBER, NULL, false },
	{ "refresh_strategy", V_STRING, NULL, false },
	{ "remember_broken_tls", V_STRING | V_NUMBER, NULL, false },
	{ "smtp_auth_plain_username", V_STRING, NULL, false },
	{ "smtp_auth_plain_password", V_STRING | V_TABLE, NULL, false },
	{ "suspended", V_BOOL, NULL, false },
	{ "tls_prefer_openssl", V_BOOL, NULL, false },
	{ "openssl_cipher_list", V_STRING, NULL, false },
	{ "openssl_cipher_suites", V_STRING, NULL, false },
	{ "openssl_options", V_STRING, NULL, false },
	{ "rustls_cipher_suites", V_STRLIST, NULL, false },
	{ "use_lmtp", V_BOOL, NULL, false },
	{ NULL, 0, NULL, false },
};

static int check_duration(const cJSON *t, const char *name, char *msg, size_t msglen)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, name);
	double secs;
	char why[128];
	if (cJSON_IsString(v) && duration_parse(v->valuestring, &secs, why, sizeof why) != 0) {
		snprintf(msg, msglen, "%s: %s", name, why);
		return -1;
	}
	if (cJSON_IsNumber(v) && v->valuedouble < 0) {
		snprintf(msg, msglen, "%s: must not be negative", name);
		return -1;
	}
	return 0;
}

static int l_make_queue_config(lua_State *L)
{
	cJSON *t = table_arg(L, "make_queue_config", queue_params);
	char msg[300] = "";
	static const char *const durs[] = { "retry_interval", "max_retry_interval", "max_age", NULL };
	for (int i = 0; durs[i] && !msg[0]; i++)
		check_duration(t, durs[i], msg, sizeof msg);
	const cJSON *proto = jget(t, "protocol");
	if (proto && !msg[0]) {
		const cJSON *smtp = jget(proto, "smtp");
		if (!cJSON_IsObject(smtp) || cJSON_GetArraySize(proto) != 1) {
			snprintf(msg, sizeof msg, "protocol: only { smtp = { mx_list = {...} } } is supported");
		} else {
			const cJSON *mx = jget(smtp, "mx_list");
			if (!mx || !(cJSON_IsArray(mx) || (cJSON_IsObject(mx) && !mx->child)))
				snprintf(msg, sizeof msg, "protocol.smtp.mx_list must be a list");
			for (const cJSON *e = mx ? mx->child : NULL; e && !msg[0]; e = e->next) {
				const cJSON *addr = jget(e, "addr");
				if (!cJSON_IsString(e) && !(cJSON_IsObject(e) && cJSON_IsString(addr)))
					snprintf(msg, sizeof msg,
						 "protocol.smtp.mx_list: each entry is a host name, an address or "
						 "{ name = ..., addr = ... }");
			}
		}
	}
	cJSON_Delete(t);
	if (msg[0])
		return luaL_error(L, "make_queue_config: %s", msg);
	lua_settop(L, 1);
	return 1;
}

static int l_make_egress_path(lua_State *L)
{
	cJSON *t = table_arg(L, "make_egress_path", path_params);
	char msg[300] = "";
	for (const struct pdef *d = path_params; d->name && !msg[0]; d++)
		if (strstr(d->name, "_timeout"))
			check_duration(t, d->name, msg, sizeof msg);
	static const char *const lists[] = { "prohibited_hosts", "skip_hosts", NULL };
	for (int i = 0; lists[i] && !msg[0]; i++) {
		const cJSON *l = cJSON_GetObjectItemCaseSensitive(t, lists[i]);
		for (const cJSON *c = l ? l->child : NULL; c && !msg[0]; c = c->next) {
			char why[300] = "";
			check_cidr(c->valuestring, why, sizeof why);
			if (why[0])
				snprintf(msg, sizeof msg, "%s: %s", lists[i], why);
		}
	}
	const cJSON *port = jget(t, "smtp_port");
	if (port && !msg[0] && (port->valuedouble < 1 || port->valuedouble > 65535))
		snprintf(msg, sizeof msg, "smtp_port must be 1..65535");
	cJSON_Delete(t);
	if (msg[0])
		return luaL_error(L, "make_egress_path: %s", msg);
	lua_settop(L, 1);
	return 1;
}

static const struct pdef resolver_params[] = {
	{ "name_servers", V_STRLIST, NULL, false },
	{ "options", V_TABLE, NULL, false },
	{ "domain", V_STRING, NULL, false },
	{ "search", V_STRLIST, NULL, false },
	{ NULL, 0, NULL, false },
};

/* kumo.dns.configure_resolver { name_servers = { '127.0.0.1:53' },
 * options = { timeout = '5s', attempts = 2 } }: the DNS servers kumo-qmgr
 * asks instead of /etc/resolv.conf's. */
static int l_configure_resolver(lua_State *L)
{
	struct policy *p = policy_from_lua(L);
	cJSON *t = table_arg(L, "dns.configure_resolver", resolver_params);
	const cJSON *ns = jget(t, "name_servers");
	if (!ns || !ns->child) {
		cJSON_Delete(t);
		return luaL_error(L, "dns.configure_resolver: name_servers must list at least one server");
	}
	cJSON_Delete(p->resolver);
	p->resolver = t;
	return 0;
}

static int l_start_http_listener(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	log_info("kumo.start_http_listener: there is no HTTP listener in this relay; ignored");
	return 0;
}

void policy_config_register(lua_State *L)
{
	static const luaL_Reg fns[] = {
		{ "start_esmtp_listener", l_start_esmtp_listener },
		{ "define_spool", l_define_spool },
		{ "configure_local_logs", l_configure_local_logs },
		{ "make_listener_domain", l_make_listener_domain },
		{ "start_http_listener", l_start_http_listener },
		{ "make_queue_config", l_make_queue_config },
		{ "make_egress_path", l_make_egress_path },
		{ NULL, NULL },
	};
	luaL_setfuncs(L, fns, 0);
	static const luaL_Reg dns[] = {
		{ "configure_resolver", l_configure_resolver },
		{ NULL, NULL },
	};
	lua_newtable(L);
	luaL_setfuncs(L, dns, 0);
	lua_setfield(L, -2, "dns");
}
