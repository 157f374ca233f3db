/* ESMTP listener parameters: the kumo.start_esmtp_listener table, its
 * defaults, validation ("deny unknown fields", like KumoMTA) and the merge
 * that gives one connection its effective parameters:
 *   defaults -> listener table -> its meta -> longest-prefix peer block
 *   (recursively) -> longest-prefix via block (recursively) -> the table
 *   returned by smtp_server_get_dynamic_parameters (same procedure).
 * Parameter names are spelled exactly as KumoMTA spells them. */
#ifndef KUMO_PARAMS_H
#define KUMO_PARAMS_H
#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include "lib/cidr.h"

enum invalid_line_endings { ILE_DENY = 0, ILE_ALLOW, ILE_FIX };
enum batch_handling { BATCH_BIFURCATE_ALWAYS = 0, BATCH_BY_DOMAIN };

struct trace_headers {
	bool received_header;       /* default true */
	bool supplemental_header;   /* default true */
	char *header_name;          /* owned; default "X-KumoRef" */
	char **include_meta_names;  /* owned array of owned strings */
	size_t n_include_meta_names;
};

struct listener_params {
	char *listen;                       /* owned; default "127.0.0.1:2025" */
	char *hostname;                     /* owned; default gethostname() */
	char *banner;                       /* owned; default "KumoMTA" */
	double client_timeout;              /* seconds; default 60 */
	size_t data_buffer_size;            /* default 128 KiB */
	double data_processing_timeout;     /* seconds; default 300 */
	bool deferred_spool;                /* default false */
	bool deferred_queue;                /* default false */
	enum invalid_line_endings invalid_line_endings; /* default Deny */
	size_t line_length_hard_limit;      /* default 998 */
	size_t max_connections;             /* default 32768; top level only */
	size_t max_message_size;            /* default 20 MiB */
	size_t max_messages_per_connection; /* default 10000 */
	size_t max_recipients_per_message;  /* default 1024 */
	struct cidr *relay_hosts;           /* owned; default 127.0.0.1, ::1 */
	size_t n_relay_hosts;
	cJSON *tls_certificate;             /* owned copy or NULL (path or key source) */
	cJSON *tls_private_key;             /* owned copy or NULL */
	cJSON *tls_required_client_ca;      /* owned copy or NULL */
	struct trace_headers trace_headers;
	bool allow_xclient;                 /* default false */
	bool require_proxy_protocol;        /* default false */
	enum batch_handling batch_handling; /* default BifurcateAlways */
	cJSON *meta;                        /* owned object: merged meta entries */
};

/* Fills p with KumoMTA's defaults; hostname NULL means gethostname(). */
void params_defaults(struct listener_params *p, const char *hostname);
void params_free(struct listener_params *p);

enum params_level {
	PARAMS_TOP = 0,     /* a start_esmtp_listener table: listen/max_connections allowed */
	PARAMS_NESTED = 1,  /* peer/via blocks and dynamic tables: they are not */
};

/* Checks a whole table (recursing into peer and via) without applying it.
 * 0, or -1 with "unknown listener parameter 'x'" / "<name>: <reason>". */
int params_check(const cJSON *table, enum params_level level, char *err, size_t errlen);

/* Applies table over p (each present key replaces the value, meta entries
 * merge into p->meta), then the longest-prefix peer block for peer_ip and
 * the longest-prefix via block for local_ip, each recursively.  peer_ip or
 * local_ip may be NULL to skip that step.  0 or -1 with a reason. */
int params_apply(struct listener_params *p, const cJSON *table, enum params_level level,
		 const struct cidr *peer_ip, const struct cidr *local_ip,
		 char *err, size_t errlen);

/* The name of the i-th listener parameter this code accepts, NULL past
 * the end (the man page test walks it). */
const char *params_name(size_t i);

/* true when the peer address is within relay_hosts. */
bool params_relay_allowed(const struct listener_params *p, const struct cidr *peer_ip);

#endif
