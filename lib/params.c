/* params: ESMTP listener parameters.  Entry points: params_defaults,
 * params_check (validate a table, recursing into peer/via), params_apply
 * (merge a table over effective parameters in KumoMTA's order),
 * params_relay_allowed.  Unknown keys are errors, as in KumoMTA; each error
 * names the parameter and the reason. */
#include "lib/params.h"
#include "lib/duration.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum ptype { PT_STRING, PT_BOOL, PT_SIZE, PT_DURATION, PT_SPECIAL };

struct param_def {
	const char *name;
	enum ptype type;
	bool top_only;
	size_t offset; /* into struct listener_params, for the simple types */
};

#define OFF(f) offsetof(struct listener_params, f)

static const struct param_def param_defs[] = {
	{ "listen", PT_STRING, true, OFF(listen) },
	{ "hostname", PT_STRING, false, OFF(hostname) },
	{ "banner", PT_STRING, false, OFF(banner) },
	{ "client_timeout", PT_DURATION, false, OFF(client_timeout) },
	{ "data_buffer_size", PT_SIZE, false, OFF(data_buffer_size) },
	{ "data_processing_timeout", PT_DURATION, false, OFF(data_processing_timeout) },
	{ "deferred_spool", PT_BOOL, false, OFF(deferred_spool) },
	{ "deferred_queue", PT_BOOL, false, OFF(deferred_queue) },
	{ "invalid_line_endings", PT_SPECIAL, false, 0 },
	{ "line_length_hard_limit", PT_SIZE, false, OFF(line_length_hard_limit) },
	{ "max_connections", PT_SIZE, true, OFF(max_connections) },
	{ "max_message_size", PT_SIZE, false, OFF(max_message_size) },
	{ "max_messages_per_connection", PT_SIZE, false, OFF(max_messages_per_connection) },
	{ "max_recipients_per_message", PT_SIZE, false, OFF(max_recipients_per_message) },
	{ "relay_hosts", PT_SPECIAL, false, 0 },
	{ "tls_certificate", PT_SPECIAL, false, 0 },
	{ "tls_private_key", PT_SPECIAL, false, 0 },
	{ "tls_required_client_ca", PT_SPECIAL, false, 0 },
	{ "trace_headers", PT_SPECIAL, false, 0 },
	{ "allow_xclient", PT_BOOL, false, OFF(allow_xclient) },
	{ "require_proxy_protocol", PT_BOOL, false, OFF(require_proxy_protocol) },
	{ "batch_handling", PT_SPECIAL, false, 0 },
	{ "meta", PT_SPECIAL, false, 0 },
	{ "peer", PT_SPECIAL, false, 0 },
	{ "via", PT_SPECIAL, false, 0 },
};

const char *params_name(size_t i)
{
	return i < sizeof param_defs / sizeof param_defs[0] ? param_defs[i].name : NULL;
}

static const struct param_def *find_def(const char *name)
{
	for (size_t i = 0; i < sizeof param_defs / sizeof param_defs[0]; i++)
		if (strcmp(param_defs[i].name, name) == 0)
			return &param_defs[i];
	return NULL;
}

void params_defaults(struct listener_params *p, const char *hostname)
{
	memset(p, 0, sizeof *p);
	char host[256];
	if (!hostname) {
		if (gethostname(host, sizeof host) != 0)
			snprintf(host, sizeof host, "localhost");
		host[sizeof host - 1] = '\0';
		hostname = host;
	}
	p->listen = xstrdup("127.0.0.1:2025");
	p->hostname = xstrdup(hostname);
	p->banner = xstrdup("KumoMTA");
	p->client_timeout = 60;
	p->data_buffer_size = 128 * 1024;
	p->data_processing_timeout = 300;
	p->invalid_line_endings = ILE_DENY;
	p->line_length_hard_limit = 998;
	p->max_connections = 32768;
	p->max_message_size = 20 * 1024 * 1024;
	p->max_messages_per_connection = 10000;
	p->max_recipients_per_message = 1024;
	p->n_relay_hosts = 2;
	p->relay_hosts = xcalloc(2, sizeof *p->relay_hosts);
	char err[64];
	cidr_parse("127.0.0.1", &p->relay_hosts[0], err, sizeof err);
	cidr_parse("::1", &p->relay_hosts[1], err, sizeof err);
	p->trace_headers.received_header = true;
	p->trace_headers.supplemental_header = true;
	p->trace_headers.header_name = xstrdup("X-KumoRef");
	p->batch_handling = BATCH_BIFURCATE_ALWAYS;
	p->meta = cJSON_CreateObject();
}

static void free_trace(struct trace_headers *t)
{
	free(t->header_name);
	for (size_t i = 0; i < t->n_include_meta_names; i++)
		free(t->include_meta_names[i]);
	free(t->include_meta_names);
	memset(t, 0, sizeof *t);
}

void params_free(struct listener_params *p)
{
	if (!p)
		return;
	free(p->listen);
	free(p->hostname);
	free(p->banner);
	free(p->relay_hosts);
	cJSON_Delete(p->tls_certificate);
	cJSON_Delete(p->tls_private_key);
	cJSON_Delete(p->tls_required_client_ca);
	free_trace(&p->trace_headers);
	cJSON_Delete(p->meta);
	memset(p, 0, sizeof *p);
}

/* A Lua {} arrives as an empty JSON object; accept it where a list is meant. */
static bool is_list(const cJSON *v)
{
	return cJSON_IsArray(v) || (cJSON_IsObject(v) && v->child == NULL);
}

static int get_size(const cJSON *v, size_t *out, const char *name, char *err, size_t errlen)
{
	if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble) ||
	    v->valuedouble > 9007199254740992.0) {
		snprintf(err, errlen, "%s: expected a non-negative integer", name);
		return -1;
	}
	*out = (size_t)v->valuedouble;
	return 0;
}

static int get_duration(const cJSON *v, double *out, const char *name, char *err, size_t errlen)
{
	char why[128];
	if (cJSON_IsNumber(v) && v->valuedouble >= 0) {
		*out = v->valuedouble;
		return 0;
	}
	if (cJSON_IsString(v) && duration_parse(v->valuestring, out, why, sizeof why) == 0)
		return 0;
	if (!cJSON_IsString(v))
		snprintf(why, sizeof why, "expected a duration such as '1 minute'");
	snprintf(err, errlen, "%s: %s", name, why);
	return -1;
}

static int check_key_source(const cJSON *v, const char *name, char *err, size_t errlen)
{
	if (cJSON_IsString(v))
		return 0;
	if (!cJSON_IsObject(v)) {
		snprintf(err, errlen, "%s: expected a file path or a key source table", name);
		return -1;
	}
	static const char *const keys[] = { "key_data", "vault_mount", "vault_path", "vault_address",
					    "vault_token", "vault_key", NULL };
	const cJSON *k;
	cJSON_ArrayForEach(k, v) {
		bool ok = false;
		for (int i = 0; keys[i]; i++)
			ok |= strcmp(k->string, keys[i]) == 0;
		if (!ok) {
			snprintf(err, errlen, "%s: unknown key source field '%s'", name, k->string);
			return -1;
		}
		if (!cJSON_IsString(k)) {
			snprintf(err, errlen, "%s.%s: expected a string", name, k->string);
			return -1;
		}
	}
	if (!cJSON_GetObjectItemCaseSensitive(v, "key_data") &&
	    !(cJSON_GetObjectItemCaseSensitive(v, "vault_mount") &&
	      cJSON_GetObjectItemCaseSensitive(v, "vault_path"))) {
		snprintf(err, errlen, "%s: a key source needs key_data, or vault_mount and vault_path", name);
		return -1;
	}
	return 0;
}

static int parse_trace(const cJSON *v, struct trace_headers *t, char *err, size_t errlen)
{
	if (!cJSON_IsObject(v)) {
		snprintf(err, errlen, "trace_headers: expected a table");
		return -1;
	}
	const cJSON *k;
	cJSON_ArrayForEach(k, v) {
		if (strcmp(k->string, "received_header") == 0 || strcmp(k->string, "supplemental_header") == 0) {
			if (!cJSON_IsBool(k)) {
				snprintf(err, errlen, "trace_headers.%s: expected a boolean", k->string);
				return -1;
			}
			if (t) {
				if (k->string[0] == 'r')
					t->received_header = cJSON_IsTrue(k);
				else
					t->supplemental_header = cJSON_IsTrue(k);
			}
		} else if (strcmp(k->string, "header_name") == 0) {
			if (!cJSON_IsString(k) || !k->valuestring[0] || strpbrk(k->valuestring, ": \t\r\n")) {
				snprintf(err, errlen, "trace_headers.header_name: expected a header field name");
				return -1;
			}
			if (t) {
				free(t->header_name);
				t->header_name = xstrdup(k->valuestring);
			}
		} else if (strcmp(k->string, "include_meta_names") == 0) {
			if (!is_list(k)) {
				snprintf(err, errlen, "trace_headers.include_meta_names: expected a list of names");
				return -1;
			}
			const cJSON *n;
			cJSON_ArrayForEach(n, k) {
				if (!cJSON_IsString(n)) {
					snprintf(err, errlen, "trace_headers.include_meta_names: expected strings");
					return -1;
				}
			}
			if (t) {
				for (size_t i = 0; i < t->n_include_meta_names; i++)
					free(t->include_meta_names[i]);
				free(t->include_meta_names);
				size_t cnt = (size_t)cJSON_GetArraySize(k), i = 0;
				t->include_meta_names = xcalloc(cnt ? cnt : 1, sizeof(char *));
				cJSON_ArrayForEach(n, k) t->include_meta_names[i++] = xstrdup(n->valuestring);
				t->n_include_meta_names = cnt;
			}
		} else {
			snprintf(err, errlen, "trace_headers: unknown field '%s'", k->string);
			return -1;
		}
	}
	return 0;
}

static int check_cidr_map(const cJSON *v, const char *name, char *err, size_t errlen)
{
	if (!cJSON_IsObject(v)) {
		snprintf(err, errlen, "%s: expected a table of CIDR blocks to parameter tables", name);
		return -1;
	}
	const cJSON *k;
	cJSON_ArrayForEach(k, v) {
		struct cidr c;
		char why[128];
		if (cidr_parse(k->string, &c, why, sizeof why) != 0) {
			snprintf(err, errlen, "%s: '%s': %s", name, k->string, why);
			return -1;
		}
		char sub[256];
		if (params_check(k, PARAMS_NESTED, sub, sizeof sub) != 0) {
			snprintf(err, errlen, "%s['%s'].%s", name, k->string, sub);
			return -1;
		}
	}
	return 0;
}

/* Validates one key; when p is non-NULL also applies it. */
static int one_param(struct listener_params *p, const cJSON *v, enum params_level level,
		     char *err, size_t errlen)
{
	const char *name = v->string;
	const struct param_def *d = find_def(name);
	if (!d) {
		snprintf(err, errlen, "unknown listener parameter '%s'", name);
		return -1;
	}
	if (d->top_only && level != PARAMS_TOP) {
		snprintf(err, errlen, "%s: can only be set in kumo.start_esmtp_listener", name);
		return -1;
	}
	char *base = (char *)p;
	switch (d->type) {
	case PT_STRING:
		if (!cJSON_IsString(v)) {
			snprintf(err, errlen, "%s: expected a string", name);
			return -1;
		}
		if (strcmp(name, "listen") == 0) {
			struct sockaddr_storage ss;
			socklen_t sl;
			char why[160];
			if (netaddr_parse(v->valuestring, &ss, &sl, why, sizeof why) != 0) {
				snprintf(err, errlen, "listen: %s", why);
				return -1;
			}
		}
		if (strcmp(name, "hostname") == 0 && (!v->valuestring[0] || strpbrk(v->valuestring, " \t\r\n"))) {
			snprintf(err, errlen, "hostname: expected a host name");
			return -1;
		}
		if (strpbrk(v->valuestring, "\r\n")) {
			snprintf(err, errlen, "%s: must not contain line breaks", name);
			return -1;
		}
		if (p) {
			char **slot = (char **)(base + d->offset);
			free(*slot);
			*slot = xstrdup(v->valuestring);
		}
		return 0;
	case PT_BOOL:
		if (!cJSON_IsBool(v)) {
			snprintf(err, errlen, "%s: expected true or false", name);
			return -1;
		}
		if (p)
			*(bool *)(base + d->offset) = cJSON_IsTrue(v);
		return 0;
	case PT_SIZE: {
		size_t n;
		if (get_size(v, &n, name, err, errlen) != 0)
			return -1;
		if (n == 0 && strcmp(name, "max_connections") != 0) {
			snprintf(err, errlen, "%s: must be at least 1", name);
			return -1;
		}
		if (p)
			*(size_t *)(base + d->offset) = n;
		return 0;
	}
	case PT_DURATION: {
		double s;
		if (get_duration(v, &s, name, err, errlen) != 0)
			return -1;
		if (p)
			*(double *)(base + d->offset) = s;
		return 0;
	}
	case PT_SPECIAL:
		break;
	}

	if (strcmp(name, "invalid_line_endings") == 0) {
		static const char *const modes[] = { "Deny", "Allow", "Fix" };
		for (int i = 0; i < 3; i++) {
			if (cJSON_IsString(v) && strcmp(v->valuestring, modes[i]) == 0) {
				if (p)
					p->invalid_line_endings = (enum invalid_line_endings)i;
				return 0;
			}
		}
		snprintf(err, errlen, "invalid_line_endings: expected 'Deny', 'Allow' or 'Fix'");
		return -1;
	}
	if (strcmp(name, "batch_handling") == 0) {
		if (cJSON_IsString(v) && strcmp(v->valuestring, "BifurcateAlways") == 0) {
			if (p)
				p->batch_handling = BATCH_BIFURCATE_ALWAYS;
			return 0;
		}
		if (cJSON_IsString(v) && strcmp(v->valuestring, "BatchByDomain") == 0) {
			if (p)
				p->batch_handling = BATCH_BY_DOMAIN;
			return 0;
		}
		snprintf(err, errlen, "batch_handling: expected 'BifurcateAlways' or 'BatchByDomain'");
		return -1;
	}
	if (strcmp(name, "relay_hosts") == 0) {
		if (!is_list(v)) {
			snprintf(err, errlen, "relay_hosts: expected a list of CIDR blocks");
			return -1;
		}
		size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
		struct cidr *list = xcalloc(n ? n : 1, sizeof *list);
		const cJSON *e;
		cJSON_ArrayForEach(e, v) {
			char why[128];
			if (!cJSON_IsString(e)) {
				snprintf(err, errlen, "relay_hosts: expected strings");
				free(list);
				return -1;
			}
			if (cidr_parse(e->valuestring, &list[i++], why, sizeof why) != 0) {
				snprintf(err, errlen, "relay_hosts: '%s': %s", e->valuestring, why);
				free(list);
				return -1;
			}
		}
		if (p) {
			free(p->relay_hosts);
			p->relay_hosts = list;
			p->n_relay_hosts = n;
		} else {
			free(list);
		}
		return 0;
	}
	if (strncmp(name, "tls_", 4) == 0) {
		if (check_key_source(v, name, err, errlen) != 0)
			return -1;
		if (p) {
			cJSON **slot = strcmp(name, "tls_certificate") == 0 ? &p->tls_certificate
				     : strcmp(name, "tls_private_key") == 0 ? &p->tls_private_key
				     : &p->tls_required_client_ca;
			cJSON_Delete(*slot);
			*slot = cJSON_Duplicate(v, 1);
		}
		return 0;
	}
	if (strcmp(name, "trace_headers") == 0)
		return parse_trace(v, p ? &p->trace_headers : NULL, err, errlen);
	if (strcmp(name, "meta") == 0) {
		if (!cJSON_IsObject(v)) {
			snprintf(err, errlen, "meta: expected a table");
			return -1;
		}
		if (p) {
			const cJSON *e;
			cJSON_ArrayForEach(e, v) {
				cJSON_DeleteItemFromObjectCaseSensitive(p->meta, e->string);
				cJSON_AddItemToObject(p->meta, e->string, cJSON_Duplicate(e, 1));
			}
		}
		return 0;
	}
	/* peer, via: validated here, applied by params_apply after the rest */
	return check_cidr_map(v, name, err, errlen);
}

int params_check(const cJSON *table, enum params_level level, char *err, size_t errlen)
{
	if (!cJSON_IsObject(table)) {
		snprintf(err, errlen, "expected a table of listener parameters");
		return -1;
	}
	const cJSON *v;
	cJSON_ArrayForEach(v, table) {
		if (one_param(NULL, v, level, err, errlen) != 0)
			return -1;
	}
	return 0;
}

static const cJSON *best_block(const cJSON *map, const struct cidr *ip)
{
	const cJSON *best = NULL;
	int best_prefix = -1;
	const cJSON *k;
	cJSON_ArrayForEach(k, map) {
		struct cidr c;
		char why[128];
		if (cidr_parse(k->string, &c, why, sizeof why) != 0)
			continue;
		if (cidr_contains(&c, ip) && (int)c.prefix > best_prefix) {
			best = k;
			best_prefix = (int)c.prefix;
		}
	}
	return best;
}

int params_apply(struct listener_params *p, const cJSON *table, enum params_level level,
		 const struct cidr *peer_ip, const struct cidr *local_ip,
		 char *err, size_t errlen)
{
	if (params_check(table, level, err, errlen) != 0)
		return -1;
	const cJSON *v;
	cJSON_ArrayForEach(v, table) {
		if (strcmp(v->string, "peer") == 0 || strcmp(v->string, "via") == 0)
			continue;
		if (one_param(p, v, level, err, errlen) != 0)
			return -1;
	}
	const cJSON *peer = cJSON_GetObjectItemCaseSensitive(table, "peer");
	if (peer && peer_ip) {
		const cJSON *b = best_block(peer, peer_ip);
		if (b && params_apply(p, b, PARAMS_NESTED, peer_ip, local_ip, err, errlen) != 0)
			return -1;
	}
	const cJSON *via = cJSON_GetObjectItemCaseSensitive(table, "via");
	if (via && local_ip) {
		const cJSON *b = best_block(via, local_ip);
		if (b && params_apply(p, b, PARAMS_NESTED, peer_ip, local_ip, err, errlen) != 0)
			return -1;
	}
	return 0;
}

bool params_relay_allowed(const struct listener_params *p, const struct cidr *peer_ip)
{
	for (size_t i = 0; i < p->n_relay_hosts; i++)
		if (cidr_contains(&p->relay_hosts[i], peer_ip))
			return true;
	return false;
}
