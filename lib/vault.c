/* vault: HashiCorp Vault KV v2 key sources (see vault.h).  Entry points:
 * vault_source_parse (a KeySource table, with $VAULT_ADDR/$VAULT_TOKEN),
 * vault_read (one blocking GET: connect, optional TLS with the system
 * trust store, request, response parsed by http_response_parse, the
 * field picked by vault_kv2_field), vault_lookup (the worker side).
 * Every wait is bounded (VAULT_IO_TIMEOUT_MS each, VAULT_TOTAL_TIMEOUT_MS
 * in all) and so is the response (VAULT_MAX_RESPONSE).  Failures return
 * NULL or -1 with a one-line reason; nothing here logs. */
#include "lib/vault.h"
#include "lib/xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* ------------------------------------------------------------ helpers */

/* Copies untrusted text for a message: printable ASCII only, at most max bytes. */
static void clean_copy(char *dst, size_t dstlen, const char *src, size_t srclen, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; i < srclen && i < max && n + 1 < dstlen; i++) {
		unsigned char c = (unsigned char)src[i];
		dst[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	if (dstlen)
		dst[n] = '\0';
}

static bool printable(const char *s, bool allow_space)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 0x20 || c == 0x7f || (!allow_space && c == ' '))
			return false;
	}
	return true;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --------------------------------------------------------- addresses */

int vault_url_parse(const char *url, struct vault_url *u, char *err, size_t errlen)
{
	memset(u, 0, sizeof *u);
	const char *p;
	if (strncasecmp(url, "http://", 7) == 0) {
		p = url + 7;
	} else if (strncasecmp(url, "https://", 8) == 0) {
		p = url + 8;
		u->tls = true;
	} else {
		snprintf(err, errlen, "vault address '%.200s': expected http://host[:port] or https://host[:port]", url);
		return -1;
	}
	if (!printable(url, false) || strpbrk(p, "@?#")) {
		snprintf(err, errlen, "vault address '%.200s': unexpected characters", url);
		return -1;
	}
	size_t alen = strcspn(p, "/");
	if (alen == 0 || alen >= sizeof u->hostport) {
		snprintf(err, errlen, "vault address '%.200s': no host", url);
		return -1;
	}
	memcpy(u->hostport, p, alen);
	const char *a = u->hostport, *portp = NULL;
	size_t hlen;
	if (a[0] == '[') {
		const char *rb = strchr(a, ']');
		if (!rb || (rb[1] && rb[1] != ':')) {
			snprintf(err, errlen, "vault address '%.200s': bad IPv6 literal", url);
			return -1;
		}
		hlen = (size_t)(rb - a - 1);
		if (hlen < sizeof u->host)
			memcpy(u->host, a + 1, hlen);
		portp = rb[1] == ':' ? rb + 2 : NULL;
	} else {
		const char *colon = strchr(a, ':');
		hlen = colon ? (size_t)(colon - a) : strlen(a);
		if (hlen < sizeof u->host)
			memcpy(u->host, a, hlen);
		portp = colon ? colon + 1 : NULL;
	}
	if (hlen == 0 || hlen >= sizeof u->host) {
		snprintf(err, errlen, "vault address '%.200s': bad host", url);
		return -1;
	}
	if (portp) {
		char *end;
		long port = strtol(portp, &end, 10);
		if (!*portp || *end || port < 1 || port > 65535 || !isdigit((unsigned char)*portp)) {
			snprintf(err, errlen, "vault address '%.200s': bad port", url);
			return -1;
		}
		snprintf(u->port, sizeof u->port, "%ld", port);
	} else {
		snprintf(u->port, sizeof u->port, "%s", u->tls ? "443" : "80");
	}
	const char *path = p + alen;
	size_t plen = strlen(path);
	while (plen && path[plen - 1] == '/')
		plen--;
	if (plen >= sizeof u->prefix) {
		snprintf(err, errlen, "vault address '%.200s': path too long", url);
		return -1;
	}
	memcpy(u->prefix, path, plen);
	return 0;
}

static const char *table_str(const cJSON *ks, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(ks, name);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

void vault_source_free(struct vault_source *src)
{
	if (!src)
		return;
	free(src->address);
	free(src->token);
	free(src->mount);
	free(src->path);
	free(src->key);
	memset(src, 0, sizeof *src);
}

int vault_source_parse(const cJSON *ks, struct vault_source *src, char *err, size_t errlen)
{
	memset(src, 0, sizeof *src);
	const char *mount = table_str(ks, "vault_mount"), *path = table_str(ks, "vault_path");
	const char *key = table_str(ks, "vault_key"), *address = table_str(ks, "vault_address");
	const char *token = table_str(ks, "vault_token");
	const char *what = NULL;
	if (!mount || !*mount)
		what = "vault_mount: expected a mount name";
	else if (!path || !*path)
		what = "vault_path: expected a path";
	else if (key && !*key)
		what = "vault_key: expected a field name";
	if (!what && !address) {
		address = getenv("VAULT_ADDR");
		if (!address || !*address)
			what = "no vault_address, and $VAULT_ADDR is not set";
	}
	if (!what && !token) {
		token = getenv("VAULT_TOKEN");
		if (!token || !*token)
			what = "no vault_token, and $VAULT_TOKEN is not set";
	}
	if (what) {
		snprintf(err, errlen, "%s", what);
		return -1;
	}
	if (!key)
		key = "key";
	const char *fields[] = { mount, path, key, address, token };
	for (int i = 0; i < 5; i++) {
		if (strlen(fields[i]) > VAULT_MAX_FIELD || !printable(fields[i], i != 4) || !*fields[i]) {
			static const char *const names[] = { "vault_mount", "vault_path", "vault_key",
							     "vault_address", "vault_token" };
			snprintf(err, errlen, "%s: empty, too long or holding control characters", names[i]);
			return -1;
		}
	}
	struct vault_url u;
	if (vault_url_parse(address, &u, err, errlen) != 0)
		return -1;
	src->address = xstrdup(address);
	src->token = xstrdup(token);
	src->mount = xstrdup(mount);
	src->path = xstrdup(path);
	src->key = xstrdup(key);
	return 0;
}

char *vault_source_describe(const struct vault_source *src)
{
	return xasprintf("%s/%s (field '%s') at %s", src->mount, src->path, src->key, src->address);
}

/* ------------------------------------------------------ HTTP response */

void http_response_free(struct http_response *r)
{
	if (!r)
		return;
	free(r->body);
	memset(r, 0, sizeof *r);
}

/* The line at p (ending in LF, CR LF accepted): its end (before CR LF) in
 * *le and the start of the next in *next; false when no LF before end. */
static bool get_line(const char *p, const char *end, const char **le, const char **next)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));
	if (!nl)
		return false;
	*next = nl + 1;
	*le = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
	return true;
}

static bool is_tchar(char c)
{
	return isalnum((unsigned char)c) || strchr("!#$%&'*+-.^_`|~", c);
}

static enum http_parse need_more(size_t len, bool eof, char *err, size_t errlen)
{
	if (!eof)
		return HTTP_MORE;
	if (len == 0)
		snprintf(err, errlen, "the server closed the connection without a response");
	else
		snprintf(err, errlen, "truncated response: the connection closed after %zu bytes", len);
	return HTTP_ERROR;
}

/* Decodes a chunked body at buf[off..len) into r. */
static enum http_parse parse_chunked(const char *buf, size_t len, size_t off, bool eof, size_t max,
				     struct http_response *r, char *err, size_t errlen)
{
	const char *p = buf + off, *end = buf + len, *le, *next;
	char *out = xmalloc(len - off + 1);
	size_t n = 0;
	enum http_parse rc = HTTP_ERROR;
	for (;;) {
		if (!get_line(p, end, &le, &next)) {
			rc = need_more(len, eof, err, errlen);
			goto out;
		}
		size_t digits = 0, size = 0;
		const char *q = p;
		while (q < le && isxdigit((unsigned char)*q)) {
			int d = isdigit((unsigned char)*q) ? *q - '0' : (tolower((unsigned char)*q) - 'a' + 10);
			size = size * 16 + (size_t)d;
			q++;
			if (++digits > 8)
				break;
		}
		while (q < le && (*q == ' ' || *q == '\t'))
			q++;
		if (digits == 0 || digits > 8 || (q < le && *q != ';')) {
			snprintf(err, errlen, "bad chunk size line in a chunked body");
			goto out;
		}
		if (size > max || n + size > max) {
			snprintf(err, errlen, "chunked body over %zu bytes", max);
			goto out;
		}
		p = next;
		if (size == 0) {
			/* trailer fields up to an empty line */
			for (;;) {
				if (!get_line(p, end, &le, &next)) {
					rc = need_more(len, eof, err, errlen);
					goto out;
				}
				bool empty = le == p;
				p = next;
				if (empty)
					break;
			}
			out[n] = '\0';
			r->body = out;
			r->body_len = n;
			return HTTP_DONE;
		}
		if ((size_t)(end - p) < size) {
			rc = need_more(len, eof, err, errlen);
			goto out;
		}
		memcpy(out + n, p, size);
		n += size;
		p += size;
		if (end - p >= 1 && *p == '\n') {
			p += 1;
		} else if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
			p += 2;
		} else if (end - p < 2 && (end == p || *p == '\r')) {
			rc = need_more(len, eof, err, errlen);
			goto out;
		} else {
			snprintf(err, errlen, "chunk data not followed by CRLF");
			goto out;
		}
	}
out:
	free(out);
	return rc;
}

enum http_parse http_response_parse(const char *buf, size_t len, bool eof, size_t max,
				    struct http_response *r, char *err, size_t errlen)
{
	memset(r, 0, sizeof *r);
	if (len > max) {
		snprintf(err, errlen, "response over %zu bytes", max);
		return HTTP_ERROR;
	}
	const char *end = buf + len, *p = buf, *le, *next;
	for (;;) {
		if (!get_line(p, end, &le, &next))
			return need_more(len, eof, err, errlen);
		/* HTTP/1.x SP 3DIGIT [SP reason] */
		size_t sl = (size_t)(le - p);
		if (sl < 12 || memcmp(p, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)p[7]) || p[8] != ' ' ||
		    !isdigit((unsigned char)p[9]) || !isdigit((unsigned char)p[10]) ||
		    !isdigit((unsigned char)p[11]) || (sl > 12 && p[12] != ' ')) {
			char shown[80];
			clean_copy(shown, sizeof shown, p, sl, 60);
			snprintf(err, errlen, "not an HTTP/1.x status line: '%s'", shown);
			return HTTP_ERROR;
		}
		int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
		if (status < 100) {
			snprintf(err, errlen, "bad HTTP status %03d", status);
			return HTTP_ERROR;
		}
		r->status = status;
		if (sl > 13)
			clean_copy(r->reason, sizeof r->reason, p + 13, sl - 13, sizeof r->reason - 1);
		else
			r->reason[0] = '\0';
		p = next;
		bool chunked = false, have_cl = false;
		size_t cl = 0;
		for (;;) {
			if (!get_line(p, end, &le, &next))
				return need_more(len, eof, err, errlen);
			if (le == p) {
				p = next;
				break;
			}
			if (*p == ' ' || *p == '\t') {
				snprintf(err, errlen, "folded header line (obsolete line folding)");
				return HTTP_ERROR;
			}
			const char *c = p;
			while (c < le && is_tchar(*c))
				c++;
			if (c == p || c == le || *c != ':') {
				snprintf(err, errlen, "malformed header line");
				return HTTP_ERROR;
			}
			size_t nlen = (size_t)(c - p);
			const char *v = c + 1, *ve = le;
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			if (nlen == 14 && strncasecmp(p, "Content-Length", 14) == 0) {
				size_t n = 0, digits = 0;
				for (const char *d = v; d < ve; d++) {
					if (!isdigit((unsigned char)*d) || ++digits > 12) {
						snprintf(err, errlen, "bad Content-Length");
						return HTTP_ERROR;
					}
					n = n * 10 + (size_t)(*d - '0');
				}
				if (digits == 0 || (have_cl && n != cl)) {
					snprintf(err, errlen, "bad Content-Length");
					return HTTP_ERROR;
				}
				if (n > max) {
					snprintf(err, errlen, "response body of %zu bytes is over %zu", n, max);
					return HTTP_ERROR;
				}
				cl = n;
				have_cl = true;
			} else if (nlen == 17 && strncasecmp(p, "Transfer-Encoding", 17) == 0) {
				if ((size_t)(ve - v) != 7 || strncasecmp(v, "chunked", 7) != 0) {
					char shown[80];
					clean_copy(shown, sizeof shown, v, (size_t)(ve - v), 60);
					snprintf(err, errlen, "unsupported transfer coding '%s'", shown);
					return HTTP_ERROR;
				}
				chunked = true;
			}
			p = next;
		}
		if (status >= 100 && status < 200) {
			if (status == 101) {
				snprintf(err, errlen, "unexpected 101 Switching Protocols");
				return HTTP_ERROR;
			}
			continue; /* interim response: the real one follows */
		}
		size_t off = (size_t)(p - buf);
		if (status == 204 || status == 304) {
			r->body = xstrdup("");
			return HTTP_DONE;
		}
		if (chunked) {
			enum http_parse rc = parse_chunked(buf, len, off, eof, max, r, err, errlen);
			if (rc != HTTP_DONE)
				r->status = 0;
			return rc;
		}
		if (have_cl) {
			if (len - off < cl) {
				r->status = 0;
				return need_more(len, eof, err, errlen);
			}
			r->body = xstrndup(buf + off, cl);
			r->body_len = cl;
			return HTTP_DONE;
		}
		if (!eof) {
			r->status = 0;
			return HTTP_MORE;
		}
		r->body = xmalloc(len - off + 1);
		memcpy(r->body, buf + off, len - off);
		r->body[len - off] = '\0';
		r->body_len = len - off;
		return HTTP_DONE;
	}
}

void vault_status_error(const struct http_response *r, char *err, size_t errlen)
{
	int n = snprintf(err, errlen, "HTTP %d%s%s", r->status, r->reason[0] ? " " : "", r->reason);
	cJSON *j = r->body ? cJSON_ParseWithLength(r->body, r->body_len) : NULL;
	const cJSON *errors = cJSON_GetObjectItemCaseSensitive(j, "errors"), *e;
	int i = 0;
	cJSON_ArrayForEach(e, errors) {
		if (!cJSON_IsString(e) || n < 0 || (size_t)n >= errlen)
			continue;
		char shown[208];
		clean_copy(shown, sizeof shown, e->valuestring, strlen(e->valuestring), 200);
		n += snprintf(err + n, errlen - (size_t)n, "%s%s", i++ ? "; " : ": ", shown);
	}
	cJSON_Delete(j);
}

char *vault_kv2_field(const char *body, size_t len, const char *key, char *err, size_t errlen)
{
	cJSON *j = cJSON_ParseWithLength(body, len);
	if (!j) {
		snprintf(err, errlen, "the reply is not JSON");
		return NULL;
	}
	const cJSON *data = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "data"), "data");
	char *value = NULL;
	if (!cJSON_IsObject(data)) {
		snprintf(err, errlen, "the reply has no data.data object (not a KV version 2 secret?)");
	} else {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(data, key);
		if (!v)
			snprintf(err, errlen, "the secret has no field '%s'", key);
		else if (!cJSON_IsString(v))
			snprintf(err, errlen, "field '%s' of the secret is not a string", key);
		else
			value = xstrdup(v->valuestring);
	}
	cJSON_Delete(j);
	return value;
}

/* ------------------------------------------------------------ network */

struct conn {
	int fd;
	SSL_CTX *ctx;
	SSL *ssl;
	long long deadline;  /* the whole request */
};

static void conn_close(struct conn *c)
{
	SSL_free(c->ssl);
	SSL_CTX_free(c->ctx);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->ssl = NULL;
	c->ctx = NULL;
}

/* Waits for fd; -1 with a reason at the timeout. */
static int conn_wait(struct conn *c, short events, const char *what, char *err, size_t errlen)
{
	for (;;) {
		long long left = c->deadline - now_ms();
		if (left <= 0) {
			snprintf(err, errlen, "%s: the request took over %d s", what, VAULT_TOTAL_TIMEOUT_MS / 1000);
			return -1;
		}
		if (left > VAULT_IO_TIMEOUT_MS)
			left = VAULT_IO_TIMEOUT_MS;
		struct pollfd pfd = { c->fd, events, 0 };
		int r = poll(&pfd, 1, (int)left);
		if (r > 0)
			return 0;
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, errlen, "%s: poll: %s", what, strerror(errno));
			return -1;
		}
		if (c->deadline - now_ms() <= 0)
			snprintf(err, errlen, "%s: the request took over %d s", what, VAULT_TOTAL_TIMEOUT_MS / 1000);
		else
			snprintf(err, errlen, "%s: timed out after %d s", what, VAULT_IO_TIMEOUT_MS / 1000);
		return -1;
	}
}

static int conn_open(struct conn *c, const struct vault_url *u, char *err, size_t errlen)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_family = AF_UNSPEC;
	int g = getaddrinfo(u->host, u->port, &hints, &res);
	if (g != 0) {
		snprintf(err, errlen, "cannot resolve %s: %s", u->host, gai_strerror(g));
		return -1;
	}
	char why[200] = "no address";
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			snprintf(why, sizeof why, "socket: %s", strerror(errno));
			continue;
		}
		c->fd = fd;
		int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
		if (rc != 0 && errno == EINPROGRESS) {
			char w[160];
			if (conn_wait(c, POLLOUT, "connect", w, sizeof w) != 0) {
				snprintf(why, sizeof why, "%s", w);
			} else {
				int soerr = 0;
				socklen_t sl = sizeof soerr;
				if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
					soerr = errno;
				if (soerr == 0)
					rc = 0;
				else
					snprintf(why, sizeof why, "%s", strerror(soerr));
			}
		} else if (rc != 0) {
			snprintf(why, sizeof why, "%s", strerror(errno));
		}
		if (rc == 0) {
			freeaddrinfo(res);
			return 0;
		}
		close(fd);
		c->fd = -1;
	}
	freeaddrinfo(res);
	snprintf(err, errlen, "cannot connect to %s: %s", u->hostport, why);
	return -1;
}

static void ssl_reason(const char *what, char *err, size_t errlen)
{
	unsigned long e = ERR_get_error();
	char buf[256];
	ERR_error_string_n(e, buf, sizeof buf);
	snprintf(err, errlen, "%s: %s", what, e ? buf : "unknown error");
	ERR_clear_error();
}

static int conn_tls(struct conn *c, const struct vault_url *u, char *err, size_t errlen)
{
	ERR_clear_error();
	c->ctx = SSL_CTX_new(TLS_client_method());
	if (!c->ctx) {
		ssl_reason("TLS", err, errlen);
		return -1;
	}
	SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(c->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
		ssl_reason("TLS: the system trust store", err, errlen);
		return -1;
	}
	const char *cacert = getenv("VAULT_CACERT");
	if (cacert && *cacert && SSL_CTX_load_verify_locations(c->ctx, cacert, NULL) != 1) {
		char what[300];
		snprintf(what, sizeof what, "TLS: $VAULT_CACERT %.200s", cacert);
		ssl_reason(what, err, errlen);
		return -1;
	}
	c->ssl = SSL_new(c->ctx);
	if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
		ssl_reason("TLS", err, errlen);
		return -1;
	}
	unsigned char ip[16];
	bool literal = inet_pton(AF_INET, u->host, ip) == 1 || inet_pton(AF_INET6, u->host, ip) == 1;
	if (literal) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), u->host);
	} else {
		SSL_set_tlsext_host_name(c->ssl, u->host);
		SSL_set1_host(c->ssl, u->host);
	}
	for (;;) {
		ERR_clear_error();
		int r = SSL_connect(c->ssl);
		if (r == 1)
			return 0;
		int e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			if (conn_wait(c, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, "TLS handshake", err, errlen) != 0)
				return -1;
			continue;
		}
		long vr = SSL_get_verify_result(c->ssl);
		if (vr != X509_V_OK) {
			snprintf(err, errlen, "TLS: the server certificate does not verify: %s",
				 X509_verify_cert_error_string(vr));
			ERR_clear_error();
		} else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
			snprintf(err, errlen, "TLS handshake: the connection closed");
		} else {
			ssl_reason("TLS handshake", err, errlen);
		}
		return -1;
	}
}

static int conn_send(struct conn *c, const char *p, size_t len, char *err, size_t errlen)
{
	size_t off = 0;
	while (off < len) {
		if (c->ssl) {
			ERR_clear_error();
			int n = SSL_write(c->ssl, p + off, (int)(len - off));
			if (n > 0) {
				off += (size_t)n;
				continue;
			}
			int e = SSL_get_error(c->ssl, n);
			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
				if (conn_wait(c, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, "sending the request", err,
					      errlen) != 0)
					return -1;
				continue;
			}
			ssl_reason("sending the request", err, errlen);
			return -1;
		}
		ssize_t n = send(c->fd, p + off, len - off, MSG_NOSIGNAL);
		if (n > 0) {
			off += (size_t)n;
		} else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (conn_wait(c, POLLOUT, "sending the request", err, errlen) != 0)
				return -1;
		} else {
			snprintf(err, errlen, "sending the request: %s", strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* Reads into buf[0..room): bytes read, 0 at the end, -1 with a reason. */
static ssize_t conn_recv(struct conn *c, char *buf, size_t room, char *err, size_t errlen)
{
	for (;;) {
		if (c->ssl) {
			ERR_clear_error();
			int n = SSL_read(c->ssl, buf, room > INT32_MAX ? INT32_MAX : (int)room);
			if (n > 0)
				return n;
			int e = SSL_get_error(c->ssl, n);
			if (e == SSL_ERROR_ZERO_RETURN)
				return 0;
			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
				if (conn_wait(c, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, "reading the response", err,
					      errlen) != 0)
					return -1;
				continue;
			}
			if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
				return 0;
			ssl_reason("reading the response", err, errlen);
			return -1;
		}
		ssize_t n = recv(c->fd, buf, room, 0);
		if (n >= 0)
			return n;
		if (errno == EAGAIN || errno == EINTR) {
			if (conn_wait(c, POLLIN, "reading the response", err, errlen) != 0)
				return -1;
			continue;
		}
		snprintf(err, errlen, "reading the response: %s", strerror(errno));
		return -1;
	}
}

/* Percent-encodes everything but unreserved characters and '/'. */
static char *path_encode(const char *s)
{
	size_t n = strlen(s);
	char *out = xmalloc(3 * n + 1), *o = out;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (isalnum(ch) || strchr("-._~/", ch)) {
			*o++ = (char)ch;
		} else {
			snprintf(o, 4, "%%%02X", ch);
			o += 3;
		}
	}
	*o = '\0';
	return out;
}

char *vault_read(const struct vault_source *src, char *err, size_t errlen)
{
	struct vault_url u;
	if (vault_url_parse(src->address, &u, err, errlen) != 0)
		return NULL;
	char *mount = path_encode(src->mount), *path = path_encode(src->path);
	char *req = xasprintf("GET %s/v1/%s/data/%s HTTP/1.1\r\n"
			      "Host: %s\r\n"
			      "X-Vault-Token: %s\r\n"
			      "Accept: application/json\r\n"
			      "User-Agent: kumod\r\n"
			      "Connection: close\r\n\r\n",
			      u.prefix, mount, path, u.hostport, src->token);
	free(mount);
	free(path);
	struct conn c = { .fd = -1, .deadline = now_ms() + VAULT_TOTAL_TIMEOUT_MS };
	char *value = NULL, *buf = NULL;
	if (conn_open(&c, &u, err, errlen) != 0 || (u.tls && conn_tls(&c, &u, err, errlen) != 0) ||
	    conn_send(&c, req, strlen(req), err, errlen) != 0)
		goto out;
	size_t cap = 16384, len = 0;
	buf = xmalloc(cap);
	struct http_response r;
	for (;;) {
		if (len == cap) {
			cap = cap * 2 > VAULT_MAX_RESPONSE + 1 ? VAULT_MAX_RESPONSE + 1 : cap * 2;
			buf = xrealloc(buf, cap);
		}
		/* len <= VAULT_MAX_RESPONSE here (the parser refuses more), so cap grew */
		ssize_t n = conn_recv(&c, buf + len, cap - len, err, errlen);
		if (n < 0)
			goto out;
		len += (size_t)n;
		enum http_parse rc = http_response_parse(buf, len, n == 0, VAULT_MAX_RESPONSE, &r, err, errlen);
		if (rc == HTTP_ERROR)
			goto out;
		if (rc == HTTP_DONE)
			break;
	}
	if (r.status != 200)
		vault_status_error(&r, err, errlen);
	else
		value = vault_kv2_field(r.body, r.body_len, src->key, err, errlen);
	http_response_free(&r);
out:
	conn_close(&c);
	free(buf);
	free(req);
	return value;
}

/* ------------------------------------------------ the fetched values */

cJSON *vault_fetched_entry(const struct vault_source *src, const char *value)
{
	cJSON *e = cJSON_CreateObject();
	cJSON_AddStringToObject(e, "vault_address", src->address);
	cJSON_AddStringToObject(e, "vault_mount", src->mount);
	cJSON_AddStringToObject(e, "vault_path", src->path);
	cJSON_AddStringToObject(e, "vault_key", src->key);
	cJSON_AddStringToObject(e, "value", value);
	return e;
}

static bool same(const cJSON *a, const char *name, const char *want)
{
	const char *v = table_str(a, name);
	return v && want && strcmp(v, want) == 0;
}

const char *vault_lookup(const cJSON *fetched, const cJSON *ks)
{
	const char *mount = table_str(ks, "vault_mount"), *path = table_str(ks, "vault_path");
	const char *key = table_str(ks, "vault_key"), *address = table_str(ks, "vault_address");
	if (!mount || !path)
		return NULL;
	const cJSON *e;
	cJSON_ArrayForEach(e, fetched) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "value");
		if (cJSON_IsString(v) && same(e, "vault_mount", mount) && same(e, "vault_path", path) &&
		    same(e, "vault_key", key ? key : "key") && (!address || same(e, "vault_address", address)))
			return v->valuestring;
	}
	return NULL;
}
