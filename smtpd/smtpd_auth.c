/* smtpd_auth: AUTH PLAIN (RFC 4954, RFC 4616) with KumoMTA's replies.
 * Entry points: run_auth (the verb) and auth_response (the client's line
 * after "334 ").  The smtp_server_auth_plain event decides; without a
 * handler every attempt fails.  Only after STARTTLS.  A successful AUTH
 * sets authn_id/authz_id in the connection meta and lets the client relay. */
#include "smtpd/smtpd.h"
#include "lib/jadd.h"
#include "lib/base64.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <stdlib.h>
#include <string.h>

#define AUTH_LINE_MAX 16384

struct auth_ctx {
	struct session *s;
	char *authz, *authc;
};

static void auth_done(void *arg, const cJSON *reply, const char *error)
{
	struct auth_ctx *c = arg;
	struct session *s = c->s;
	if (session_event_result(s, reply, error, "smtp_server_auth_plain", false)) {
		const cJSON *ret = jget(reply, "ret");
		if (cJSON_IsTrue(ret)) {
			s->authenticated = true;
			jdelete(s->meta, "authn_id");
			jdelete(s->meta, "authz_id");
			jadd_string(s->meta, "authn_id", c->authc);
			jadd_string(s->meta, "authz_id", c->authz);
			reply_ok(s, 235, "2.7.0 AUTH OK!");
		} else if (cJSON_IsFalse(ret) || cJSON_IsNull(ret) || !ret) {
			log_info("session %s: AUTH PLAIN for '%.100s' refused", s->session_id, c->authc);
			reply_ok(s, 535, "5.7.8 AUTH invalid");
		} else {
			session_technical_difficulties(s, "smtp_server_auth_plain: expected a boolean");
		}
	}
	free(c->authz);
	free(c->authc);
	free(c);
}

/* The base64 PLAIN response: authzid NUL authcid NUL passwd. */
static void auth_plain(struct session *s, const char *b64, size_t len)
{
	if (len == 1 && b64[0] == '*') {
		reply_ok(s, 501, "5.5.0 AUTH cancelled by client");
		return;
	}
	size_t n;
	unsigned char *dec = base64_decode(b64, len, &n);
	if (!dec) {
		reply_ok(s, 501, "5.5.2 Invalid base64 response");
		return;
	}
	const char *f[3];
	size_t flen[3];
	size_t k = 0, start = 0;
	for (size_t i = 0; i <= n && k < 4; i++) {
		if (i == n || dec[i] == '\0') {
			if (k < 3) {
				f[k] = (const char *)dec + start;
				flen[k] = i - start;
			}
			k++;
			start = i + 1;
		}
	}
	if (k != 3 || flen[1] == 0) {
		free(dec);
		reply_ok(s, 501, "5.5.2 Invalid decoded PLAIN response");
		return;
	}
	for (int i = 0; i < 3; i++) {
		if (flen[i] && !utf8_valid(f[i], flen[i])) {
			free(dec);
			reply_ok(s, 501, "5.5.2 Invalid UTF8 in decoded PLAIN response");
			return;
		}
	}
	struct auth_ctx *c = xcalloc(1, sizeof *c);
	c->s = s;
	c->authc = xstrndup(f[1], flen[1]);
	/* KumoMTA: an empty authorization identity defaults to the authentication one */
	c->authz = flen[0] ? xstrndup(f[0], flen[0]) : xstrdup(c->authc);
	char *password = xstrndup(f[2], flen[2]);
	memset(dec, 0, n);
	free(dec);
	if (!policy_has_ev(smtpd->policy, PEV_AUTH_PLAIN)) {
		memset(password, 0, strlen(password));
		free(password);
		free(c->authz);
		free(c->authc);
		free(c);
		reply_ok(s, 535, "5.7.8 AUTH invalid");
		return;
	}
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, cJSON_CreateString(c->authz));
	cJSON_AddItemToArray(args, cJSON_CreateString(c->authc));
	cJSON_AddItemToArray(args, cJSON_CreateString(password));
	memset(password, 0, strlen(password));
	free(password);
	s->policy_req = policy_call(smtpd->policy, "smtp_server_auth_plain", args, 3, s->meta,
				    s->p.data_processing_timeout, auth_done, c);
}

void auth_response(struct session *s, const char *line, size_t len)
{
	s->auth_pending = false;
	auth_plain(s, line, len);
}

void run_auth(struct session *s, struct smtp_cmd *cmd)
{
	size_t n = 0;
	while (n < cmd->arglen && cmd->arg[n] != ' ')
		n++;
	if (s->authenticated) {
		reply_ok(s, 503, "5.5.1 AUTH me once, can't get authed again!");
		return;
	}
	if (s->txn) {
		reply_ok(s, 503, "5.5.1 AUTH not permitted inside a transaction");
		return;
	}
	if (n != 5 || strncmp(cmd->arg, "PLAIN", 5) != 0) {
		replyf(s, 504, "5.5.4 AUTH %.*s not supported", (int)(n > 64 ? 64 : n), cmd->arg);
		return;
	}
	if (!s->tls) {
		reply_ok(s, 524, "5.7.11 AUTH PLAIN requires an encrypted channel");
		return;
	}
	if (n < cmd->arglen) {
		const char *ir = cmd->arg + n + 1;
		size_t irlen = cmd->arglen - n - 1;
		if (irlen == 1 && ir[0] == '=')
			irlen = 0; /* RFC 4954: "=" is an empty initial response */
		auth_plain(s, ir, irlen);
		return;
	}
	s->auth_pending = true;
	reply_ok(s, 334, " ");
}

size_t auth_line_max(void)
{
	return AUTH_LINE_MAX;
}
