/* smtpd_proxy: the HAProxy PROXY protocol, versions 1 (text) and 2
 * (binary), required before the banner when the listener (or a peer
 * block for the proxy's address) has require_proxy_protocol = true.
 * Entry points: proxy_parse (pure, for tests and fuzzing) and proxy_input
 * (the session step).  A missing, malformed or over-long header drops the
 * connection without a reply, as KumoMTA does; "UNKNOWN" (v1) and LOCAL
 * (v2) keep the real addresses. */
#include "smtpd/smtpd.h"
#include "lib/log.h"
#include "lib/netaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v2_sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

static int v1_addr(const char *ip, const char *port, int family, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	char *end;
	if (port[0] < '0' || port[0] > '9' || (port[0] == '0' && port[1]))
		return -1;
	unsigned long p = strtoul(port, &end, 10);
	if (*end || p > 65535)
		return -1;
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)p);
		return inet_pton(AF_INET, ip, &sin->sin_addr) == 1 ? 0 : -1;
	}
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons((uint16_t)p);
	return inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1 ? 0 : -1;
}

static int parse_v1(const uint8_t *buf, size_t len, struct proxy_result *out, size_t *used)
{
	/* "PROXY ... \r\n", at most 107 bytes */
	size_t i = 0;
	while (i < len && i < 107 && buf[i] != '\n')
		i++;
	if (i == len)
		return len >= 107 ? -1 : 0;
	if (i >= 107 || i < 1 || buf[i - 1] != '\r')
		return -1;
	char line[108];
	memcpy(line, buf, i - 1);
	line[i - 1] = '\0';
	*used = i + 1;
	char *f[7];
	int n = 0;
	char *save = NULL;
	for (char *t = strtok_r(line, " ", &save); t && n < 7; t = strtok_r(NULL, " ", &save))
		f[n++] = t;
	if (n < 2 || strcmp(f[0], "PROXY") != 0)
		return -1;
	if (strcmp(f[1], "UNKNOWN") == 0) {
		out->local = true;
		return 1;
	}
	int family = strcmp(f[1], "TCP4") == 0 ? AF_INET : strcmp(f[1], "TCP6") == 0 ? AF_INET6 : 0;
	if (!family || n != 6)
		return -1;
	if (v1_addr(f[2], f[4], family, &out->src) != 0 || v1_addr(f[3], f[5], family, &out->dst) != 0)
		return -1;
	out->local = false;
	return 1;
}

static int parse_v2(const uint8_t *buf, size_t len, struct proxy_result *out, size_t *used)
{
	if (len < 16)
		return 0;
	uint8_t ver_cmd = buf[12], fam = buf[13];
	size_t alen = (size_t)buf[14] << 8 | buf[15];
	if ((ver_cmd & 0xF0) != 0x20 || (ver_cmd & 0x0F) > 1)
		return -1;
	if (len < 16 + alen)
		return 0;
	*used = 16 + alen;
	const uint8_t *a = buf + 16;
	if ((ver_cmd & 0x0F) == 0) { /* LOCAL: health checks and the like */
		out->local = true;
		return 1;
	}
	memset(&out->src, 0, sizeof out->src);
	memset(&out->dst, 0, sizeof out->dst);
	if (fam == 0x11 && alen >= 12) { /* TCP over IPv4 */
		struct sockaddr_in *s4 = (struct sockaddr_in *)&out->src, *d4 = (struct sockaddr_in *)&out->dst;
		s4->sin_family = d4->sin_family = AF_INET;
		memcpy(&s4->sin_addr, a, 4);
		memcpy(&d4->sin_addr, a + 4, 4);
		memcpy(&s4->sin_port, a + 8, 2);
		memcpy(&d4->sin_port, a + 10, 2);
	} else if (fam == 0x21 && alen >= 36) { /* TCP over IPv6 */
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->src, *d6 = (struct sockaddr_in6 *)&out->dst;
		s6->sin6_family = d6->sin6_family = AF_INET6;
		memcpy(&s6->sin6_addr, a, 16);
		memcpy(&d6->sin6_addr, a + 16, 16);
		memcpy(&s6->sin6_port, a + 32, 2);
		memcpy(&d6->sin6_port, a + 34, 2);
	} else if (fam == 0x00) { /* UNSPEC */
		out->local = true;
		return 1;
	} else {
		return -1;
	}
	out->local = false;
	return 1;
}

int proxy_parse(const uint8_t *buf, size_t len, struct proxy_result *out, size_t *used)
{
	memset(out, 0, sizeof *out);
	*used = 0;
	size_t n = len < 12 ? len : 12;
	if (memcmp(buf, v2_sig, n) == 0)
		return len < 12 ? 0 : parse_v2(buf, len, out, used);
	n = len < 6 ? len : 6;
	if (memcmp(buf, "PROXY ", n) == 0)
		return len < 6 ? 0 : parse_v1(buf, len, out, used);
	return -1;
}

void proxy_input(struct session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	size_t avail = evbuffer_get_length(in);
	if (avail == 0)
		return;
	size_t want = avail < PROXY_MAX ? avail : PROXY_MAX;
	const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)want);
	struct proxy_result r;
	size_t used;
	int rc = proxy_parse(p, want, &r, &used);
	if (rc == 0 && avail < PROXY_MAX)
		return; /* more to come */
	if (rc <= 0) {
		log_info("session %s: %s sent no valid PROXY header; dropped", s->session_id, s->peer_str);
		session_close(s);
		return;
	}
	evbuffer_drain(in, used);
	if (!r.local)
		session_set_addresses(s, &r.src, &r.dst);
	s->state = SS_WAIT;
	session_after_proxy(s);
}
