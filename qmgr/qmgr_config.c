/* qmgr_config: what get_queue_config and get_egress_path_config return
 * (kumo.make_queue_config / kumo.make_egress_path tables, already checked
 * by policyd), read into structs with KumoMTA's defaults; and the queue
 * name.  Pure functions: errors come back in err buffers. */
#include "qmgr/qmgr.h"
#include "lib/str.h"
#include "lib/jadd.h"
#include "lib/duration.h"
#include "lib/xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int get_duration(const cJSON *t, const char *name, double *out, char *err, size_t errlen)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, name);
	if (!v || cJSON_IsNull(v))
		return 0;
	if (cJSON_IsNumber(v) && v->valuedouble >= 0) {
		*out = v->valuedouble;
		return 0;
	}
	char why[128];
	if (cJSON_IsString(v) && duration_parse(v->valuestring, out, why, sizeof why) == 0)
		return 0;
	snprintf(err, errlen, "%s: not a duration", name);
	return -1;
}

static bool is_list(const cJSON *v)
{
	return cJSON_IsArray(v) || (cJSON_IsObject(v) && !v->child);
}

int queue_config_parse(const cJSON *ret, struct queue_config *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	out->retry_interval = QMGR_DEFAULT_RETRY;
	out->max_age = QMGR_DEFAULT_MAX_AGE;
	if (!ret || cJSON_IsNull(ret))
		return 0;
	if (!cJSON_IsObject(ret)) {
		snprintf(err, errlen, "get_queue_config must return kumo.make_queue_config{...}");
		return -1;
	}
	if (get_duration(ret, "retry_interval", &out->retry_interval, err, errlen) != 0 ||
	    get_duration(ret, "max_retry_interval", &out->max_retry_interval, err, errlen) != 0 ||
	    get_duration(ret, "max_age", &out->max_age, err, errlen) != 0)
		return -1;
	if (out->retry_interval < 1)
		out->retry_interval = 1;
	const cJSON *pool = jget(ret, "egress_pool");
	if (cJSON_IsString(pool))
		out->egress_pool = xstrdup(pool->valuestring);
	const cJSON *proto = jget(ret, "protocol");
	const cJSON *smtp = jget(proto, "smtp");
	const cJSON *mx = jget(smtp, "mx_list");
	if (proto && !is_list(mx)) {
		snprintf(err, errlen, "protocol.smtp.mx_list must be a list");
		queue_config_free(out);
		return -1;
	}
	if (!mx)
		return 0;
	size_t n = (size_t)cJSON_GetArraySize(mx);
	out->mx_list = xcalloc(n ? n : 1, sizeof *out->mx_list);
	for (const cJSON *e = mx->child; e; e = e->next) {
		struct mx_entry *m = &out->mx_list[out->n_mx];
		const cJSON *name = jget(e, "name");
		const cJSON *addr = jget(e, "addr");
		if (cJSON_IsString(e)) {
			m->name = xstrdup(e->valuestring);
		} else if (cJSON_IsObject(e) && cJSON_IsString(addr)) {
			m->addr = xstrdup(addr->valuestring);
			m->name = xstrdup(cJSON_IsString(name) ? name->valuestring : addr->valuestring);
		} else {
			snprintf(err, errlen, "protocol.smtp.mx_list: bad entry");
			queue_config_free(out);
			return -1;
		}
		out->n_mx++;
	}
	if (out->n_mx == 0) {
		snprintf(err, errlen, "protocol.smtp.mx_list is empty");
		queue_config_free(out);
		return -1;
	}
	return 0;
}

void queue_config_free(struct queue_config *c)
{
	for (size_t i = 0; i < c->n_mx; i++) {
		free(c->mx_list[i].name);
		free(c->mx_list[i].addr);
	}
	free(c->mx_list);
	free(c->egress_pool);
	memset(c, 0, sizeof *c);
}

static int parse_cidrs(const char *what, const cJSON *list, struct cidr **out, size_t *n, char *err, size_t errlen)
{
	size_t cnt = (size_t)cJSON_GetArraySize(list);
	*out = xcalloc(cnt ? cnt : 1, sizeof **out);
	*n = 0;
	for (const cJSON *c = list ? list->child : NULL; c; c = c->next) {
		char why[128];
		if (!cJSON_IsString(c) || cidr_parse(c->valuestring, &(*out)[*n], why, sizeof why) != 0) {
			snprintf(err, errlen, "%s: %s", what, cJSON_IsString(c) ? why : "not a string");
			return -1;
		}
		(*n)++;
	}
	return 0;
}

int egress_path_parse(const cJSON *ret, struct egress_path *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	out->smtp_port = 25;
	out->tls = TLS_OPPORTUNISTIC;
	out->connection_limit = 32;
	out->max_deliveries_per_connection = 1024;
	smtp_timeouts_default(&out->timeouts);
	static const char *const defaults[] = { "127.0.0.0/8", "0.0.0.0", "::1", "::" };
	out->prohibited = xcalloc(4, sizeof *out->prohibited);
	for (size_t i = 0; i < 4; i++)
		if (cidr_parse(defaults[i], &out->prohibited[out->n_prohibited], err, errlen) == 0)
			out->n_prohibited++;
	if (!ret || cJSON_IsNull(ret))
		return 0;
	if (!cJSON_IsObject(ret)) {
		snprintf(err, errlen, "get_egress_path_config must return kumo.make_egress_path{...}");
		goto fail;
	}
	const cJSON *v = jget(ret, "smtp_port");
	if (cJSON_IsNumber(v))
		out->smtp_port = (int)v->valuedouble;
	v = jget(ret, "enable_tls");
	if (cJSON_IsString(v) && tls_mode_parse(v->valuestring, &out->tls) != 0) {
		snprintf(err, errlen, "enable_tls: unknown mode '%.60s'", v->valuestring);
		goto fail;
	}
	v = jget(ret, "connection_limit");
	if (cJSON_IsNumber(v) && v->valuedouble >= 1)
		out->connection_limit = (int)v->valuedouble;
	else if (cJSON_IsString(v) && atoi(v->valuestring) >= 1)
		out->connection_limit = atoi(v->valuestring);
	v = jget(ret, "max_deliveries_per_connection");
	if (cJSON_IsNumber(v) && v->valuedouble >= 1)
		out->max_deliveries_per_connection = (int)v->valuedouble;
	v = jget(ret, "ehlo_domain");
	if (cJSON_IsString(v) && v->valuestring[0])
		out->ehlo_domain = xstrdup(v->valuestring);
	v = jget(ret, "prohibited_hosts");
	if (v) {
		free(out->prohibited);
		if (parse_cidrs("prohibited_hosts", v, &out->prohibited, &out->n_prohibited, err, errlen) != 0)
			goto fail;
	}
	v = jget(ret, "skip_hosts");
	if (v && parse_cidrs("skip_hosts", v, &out->skip, &out->n_skip, err, errlen) != 0)
		goto fail;
	struct smtp_timeouts *t = &out->timeouts;
	if (get_duration(ret, "connect_timeout", &t->connect, err, errlen) != 0 ||
	    get_duration(ret, "banner_timeout", &t->banner, err, errlen) != 0 ||
	    get_duration(ret, "ehlo_timeout", &t->ehlo, err, errlen) != 0 ||
	    get_duration(ret, "mail_from_timeout", &t->mail_from, err, errlen) != 0 ||
	    get_duration(ret, "rcpt_to_timeout", &t->rcpt_to, err, errlen) != 0 ||
	    get_duration(ret, "data_timeout", &t->data, err, errlen) != 0 ||
	    get_duration(ret, "data_dot_timeout", &t->data_dot, err, errlen) != 0 ||
	    get_duration(ret, "rset_timeout", &t->rset, err, errlen) != 0 ||
	    get_duration(ret, "idle_timeout", &t->idle, err, errlen) != 0 ||
	    get_duration(ret, "starttls_timeout", &t->starttls, err, errlen) != 0)
		goto fail;
	return 0;
fail:
	egress_path_free(out);
	return -1;
}

void egress_path_free(struct egress_path *p)
{
	free(p->prohibited);
	free(p->skip);
	free(p->ehlo_domain);
	memset(p, 0, sizeof *p);
}

char *queue_name(const char *campaign, const char *tenant, const char *domain, const char *routing_domain)
{
	size_t len = strlen(domain) + 4;
	len += campaign ? strlen(campaign) : 0;
	len += tenant ? strlen(tenant) : 0;
	len += routing_domain ? strlen(routing_domain) : 0;
	char *s = xmalloc(len);
	/* [campaign:][tenant]@domain[!routing_domain], [tenant@] without a campaign */
	char *o = s;
	if (campaign) {
		o = str_put(o, campaign);
		*o++ = ':';
	}
	if (tenant)
		o = str_put(o, tenant);
	if (tenant || campaign)
		*o++ = '@';
	o = str_put(o, domain);
	if (routing_domain) {
		*o++ = '!';
		o = str_put(o, routing_domain);
	}
	*o = '\0';
	return s;
}
