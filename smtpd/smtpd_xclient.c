/* smtpd_xclient: Postfix's XCLIENT (ADDR, PORT, DESTADDR, DESTPORT) for a
 * trusted proxy in front of the relay, when the listener has
 * allow_xclient = true.  Entry point: run_xclient.  The new addresses
 * replace received_from/received_via (the first originals are kept in
 * orig_received_from/orig_received_via), the listener parameters are
 * evaluated again from scratch (so peer/via blocks and the dynamic
 * parameters see the new addresses) and the session restarts with the new
 * banner, as in KumoMTA.  Replies follow KumoMTA's texts. */
#include "smtpd/smtpd.h"
#include "lib/jadd.h"
#include "lib/xalloc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Sets the address part of ss to the IP text v (IPv4, IPv6 or "IPv6:..."). */
static int set_ip(struct sockaddr_storage *ss, const char *v)
{
	uint16_t port = ss->ss_family == AF_INET ? ((struct sockaddr_in *)ss)->sin_port
						 : ((struct sockaddr_in6 *)ss)->sin6_port;
	if (strncasecmp(v, "IPv6:", 5) == 0)
		v += 5;
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, v, &a4) == 1) {
		memset(ss, 0, sizeof *ss);
		sin->sin_family = AF_INET;
		sin->sin_addr = a4;
		sin->sin_port = port;
		return 0;
	}
	if (inet_pton(AF_INET6, v, &a6) == 1) {
		memset(ss, 0, sizeof *ss);
		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr = a6;
		sin6->sin6_port = port;
		return 0;
	}
	return -1;
}

static int set_port(struct sockaddr_storage *ss, const char *v)
{
	char *end;
	if (!isdigit((unsigned char)v[0]))
		return -1;
	unsigned long p = strtoul(v, &end, 10);
	if (*end || p > 65535)
		return -1;
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)p);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)p);
	return 0;
}

void run_xclient(struct session *s, struct smtp_cmd *cmd)
{
	if (!s->p.allow_xclient) {
		reply_ok(s, 550, "insufficient authorization");
		return;
	}
	if (s->txn) {
		reply_ok(s, 503, "mail transaction in progress");
		return;
	}
	struct sockaddr_storage peer = s->peer, local = s->local;
	char *args = xstrndup(cmd->arg, cmd->arglen);
	char *save = NULL;
	for (char *tok = strtok_r(args, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		char *eq = strchr(tok, '=');
		if (eq)
			*eq = '\0';
		const char *v = eq ? eq + 1 : "";
		int rc;
		if (strcasecmp(tok, "ADDR") == 0)
			rc = set_ip(&peer, v);
		else if (strcasecmp(tok, "PORT") == 0)
			rc = set_port(&peer, v);
		else if (strcasecmp(tok, "DESTADDR") == 0)
			rc = set_ip(&local, v);
		else if (strcasecmp(tok, "DESTPORT") == 0)
			rc = set_port(&local, v);
		else {
			replyf(s, 501, "parameter %.64s is not supported", tok);
			free(args);
			return;
		}
		if (rc != 0) {
			replyf(s, 501, "%.16s %.100s is invalid", tok, v);
			free(args);
			return;
		}
	}
	free(args);
	session_set_addresses(s, &peer, &local);
	/* a new client: what the proxy said before does not carry over */
	free(s->ehlo_domain);
	s->ehlo_domain = NULL;
	jdelete(s->meta, "ehlo_domain");
	session_reevaluate(s);
}
