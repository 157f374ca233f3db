/* vaultd: a tiny HashiCorp Vault stand-in for the end-to-end tests of
 * Vault key sources: it answers KV version 2 reads.
 *
 *   vaultd -p PORT -t TOKEN [-s MOUNT/PATH=FIELD=VALUE]... [-c] [-l LOGFILE]
 *          [--tls CERTFILE KEYFILE] [--hang]
 *
 * Listens on 127.0.0.1:PORT (0: any free port), prints "ready PORT\n"
 * once listening and serves one connection at a time until killed
 * (SIGTERM).  Errors before that exit 1 (2 for bad usage) with a reason
 * on stderr.
 *
 * -s adds field FIELD to the secret MOUNT/PATH (several -s may fill one
 * secret); VALUE "@FILE" means the content of FILE (at most 256 KiB).
 * "GET /v1/<mount>/data/<path>" (the mount is what comes before the first
 * "/data/") with "X-Vault-Token: TOKEN" gets 200 and
 * {"data":{"data":{FIELD:VALUE,...},"metadata":{...}},...}; a missing or
 * wrong token gets 403 {"errors":["permission denied"]} (whatever the
 * path), an unknown secret 404 {"errors":[]}, another method 405.
 * -c sends bodies with chunked transfer coding (in 100-byte chunks)
 * instead of Content-Length.  -l appends "<METHOD> <target> <status>" per
 * request to LOGFILE.  --tls serves HTTPS with that certificate.  --hang
 * reads requests and never answers (for client timeouts).
 * Every connection gets 5 s to send its request, of at most 16 KiB. */
#include "lib/tls.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <cjson/cJSON.h>
#include <openssl/ssl.h>

#define REQ_MAX 16384            /* bytes of a request head */
#define VALUE_FILE_MAX (256 * 1024)
#define SECRETS_MAX 64
#define CHUNK 100

struct secret {
	char *id;        /* owned: "mount/path" */
	cJSON *fields;   /* owned object */
};

static struct secret secrets[SECRETS_MAX];
static size_t n_secrets;
static const char *token;
static bool chunked, hang;
static FILE *logf;
static SSL_CTX *tls;

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "vaultd: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(code);
}

static char *read_value_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die(1, "%s: %s", path, strerror(errno));
	char *buf = xmalloc(VALUE_FILE_MAX + 1);
	size_t n = fread(buf, 1, VALUE_FILE_MAX + 1, f);
	fclose(f);
	if (n > VALUE_FILE_MAX)
		die(1, "%s: over %d bytes", path, VALUE_FILE_MAX);
	buf[n] = '\0';
	return buf;
}

/* MOUNT/PATH=FIELD=VALUE */
static void add_secret(const char *spec)
{
	const char *eq = strchr(spec, '=');
	const char *eq2 = eq ? strchr(eq + 1, '=') : NULL;
	if (!eq || !eq2 || eq == spec || eq2 == eq + 1 || !memchr(spec, '/', (size_t)(eq - spec)))
		die(2, "-s %s: expected MOUNT/PATH=FIELD=VALUE", spec);
	char *id = xstrndup(spec, (size_t)(eq - spec));
	char *field = xstrndup(eq + 1, (size_t)(eq2 - eq - 1));
	char *value = eq2[1] == '@' ? read_value_file(eq2 + 2) : xstrdup(eq2 + 1);
	struct secret *s = NULL;
	for (size_t i = 0; i < n_secrets; i++)
		if (strcmp(secrets[i].id, id) == 0)
			s = &secrets[i];
	if (!s) {
		if (n_secrets == SECRETS_MAX)
			die(2, "at most %d secrets", SECRETS_MAX);
		s = &secrets[n_secrets++];
		s->id = id;
		s->fields = cJSON_CreateObject();
		id = NULL;
	}
	cJSON_DeleteItemFromObjectCaseSensitive(s->fields, field);
	cJSON_AddStringToObject(s->fields, field, value);
	free(id);
	free(field);
	free(value);
}

struct conn {
	int fd;
	SSL *ssl;
};

static ssize_t conn_read(struct conn *c, char *buf, size_t len)
{
	if (c->ssl) {
		int n = SSL_read(c->ssl, buf, (int)len);
		return n > 0 ? n : -1;
	}
	return recv(c->fd, buf, len, 0);
}

static void conn_write(struct conn *c, const char *buf, size_t len)
{
	size_t off = 0;
	while (off < len) {
		ssize_t n = c->ssl ? SSL_write(c->ssl, buf + off, (int)(len - off))
				   : send(c->fd, buf + off, len - off, MSG_NOSIGNAL);
		if (n <= 0)
			return;
		off += (size_t)n;
	}
}

static const char *status_text(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	default: return "Error";
	}
}

static void respond(struct conn *c, int status, cJSON *body)
{
	char *text = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	size_t len = strlen(text);
	char head[256];
	int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n", status,
			 status_text(status));
	if (chunked)
		n += snprintf(head + n, sizeof head - (size_t)n, "Transfer-Encoding: chunked\r\n");
	else
		n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %zu\r\n", len);
	n += snprintf(head + n, sizeof head - (size_t)n, "Connection: close\r\n\r\n");
	conn_write(c, head, (size_t)n);
	if (!chunked) {
		conn_write(c, text, len);
	} else {
		for (size_t off = 0; off < len; off += CHUNK) {
			size_t k = len - off < CHUNK ? len - off : CHUNK;
			n = snprintf(head, sizeof head, "%zx\r\n", k);
			conn_write(c, head, (size_t)n);
			conn_write(c, text + off, k);
			conn_write(c, "\r\n", 2);
		}
		conn_write(c, "0\r\n\r\n", 5);
	}
	free(text);
}

static cJSON *errors(const char *e)
{
	cJSON *b = cJSON_CreateObject();
	cJSON *a = cJSON_AddArrayToObject(b, "errors");
	if (e)
		cJSON_AddItemToArray(a, cJSON_CreateString(e));
	return b;
}

/* Reads the request head; 0 or -1 (timeout, too big, closed). */
static int read_head(struct conn *c, char *buf, size_t *len)
{
	*len = 0;
	while (*len < REQ_MAX) {
		ssize_t n = conn_read(c, buf + *len, REQ_MAX - *len);
		if (n <= 0)
			return -1;
		*len += (size_t)n;
		buf[*len] = '\0';
		if (strstr(buf, "\r\n\r\n"))
			return 0;
	}
	return -1;
}

static void serve(struct conn *c)
{
	char buf[REQ_MAX + 1];
	size_t len;
	if (read_head(c, buf, &len) != 0)
		return;
	if (hang) {
		/* until the client gives up */
		for (;;) {
			ssize_t n = conn_read(c, buf, sizeof buf - 1);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				return;
		}
	}
	char method[16], target[4096];
	int status;
	cJSON *body;
	if (sscanf(buf, "%15s %4095s HTTP/1.", method, target) != 2) {
		snprintf(method, sizeof method, "?");
		snprintf(target, sizeof target, "?");
		status = 400;
		body = errors("bad request");
		goto out;
	}
	/* the X-Vault-Token header */
	const char *tok = NULL;
	size_t toklen = 0;
	for (char *line = strstr(buf, "\r\n"); line && line[2] != '\r'; line = strstr(line + 2, "\r\n")) {
		if (strncasecmp(line + 2, "X-Vault-Token:", 14) == 0) {
			tok = line + 16;
			while (*tok == ' ' || *tok == '\t')
				tok++;
			toklen = strcspn(tok, "\r");
			while (toklen && (tok[toklen - 1] == ' ' || tok[toklen - 1] == '\t'))
				toklen--;
		}
	}
	if (!tok || toklen != strlen(token) || memcmp(tok, token, toklen) != 0) {
		status = 403;
		body = errors("permission denied");
		goto out;
	}
	if (strcmp(method, "GET") != 0) {
		status = 405;
		body = errors(NULL);
		goto out;
	}
	char id[4096] = "";
	target[strcspn(target, "?")] = '\0';
	const char *data = strncmp(target, "/v1/", 4) == 0 ? strstr(target + 4, "/data/") : NULL;
	if (data)
		snprintf(id, sizeof id, "%.*s/%s", (int)(data - target - 4), target + 4, data + 6);
	const struct secret *s = NULL;
	for (size_t i = 0; i < n_secrets && id[0]; i++)
		if (strcmp(secrets[i].id, id) == 0)
			s = &secrets[i];
	if (!s) {
		status = 404;
		body = errors(NULL);
		goto out;
	}
	status = 200;
	body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "request_id", "00000000-0000-0000-0000-000000000000");
	cJSON_AddStringToObject(body, "lease_id", "");
	cJSON_AddBoolToObject(body, "renewable", 0);
	cJSON_AddNumberToObject(body, "lease_duration", 0);
	cJSON *d = cJSON_AddObjectToObject(body, "data");
	cJSON_AddItemToObject(d, "data", cJSON_Duplicate(s->fields, 1));
	cJSON *m = cJSON_AddObjectToObject(d, "metadata");
	cJSON_AddStringToObject(m, "created_time", "2025-01-01T00:00:00.000000000Z");
	cJSON_AddNullToObject(m, "custom_metadata");
	cJSON_AddStringToObject(m, "deletion_time", "");
	cJSON_AddBoolToObject(m, "destroyed", 0);
	cJSON_AddNumberToObject(m, "version", 1);
	cJSON_AddNullToObject(body, "wrap_info");
	cJSON_AddNullToObject(body, "warnings");
	cJSON_AddNullToObject(body, "auth");
out:
	if (logf) {
		fprintf(logf, "%s %s %d\n", method, target, status);
		fflush(logf);
	}
	respond(c, status, body);
}

int main(int argc, char **argv)
{
	int port = -1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-p") == 0 && i + 1 < argc) {
			port = atoi(argv[++i]);
		} else if (strcmp(a, "-t") == 0 && i + 1 < argc) {
			token = argv[++i];
		} else if (strcmp(a, "-s") == 0 && i + 1 < argc) {
			add_secret(argv[++i]);
		} else if (strcmp(a, "-c") == 0) {
			chunked = true;
		} else if (strcmp(a, "--hang") == 0) {
			hang = true;
		} else if (strcmp(a, "-l") == 0 && i + 1 < argc) {
			logf = fopen(argv[++i], "a");
			if (!logf)
				die(1, "%s: %s", argv[i], strerror(errno));
		} else if (strcmp(a, "--tls") == 0 && i + 2 < argc) {
			char err[400];
			tls = tls_server_ctx(argv[i + 1], argv[i + 2], NULL, NULL, err, sizeof err);
			if (!tls)
				die(1, "%s", err);
			i += 2;
		} else {
			die(2, "usage: vaultd -p PORT -t TOKEN [-s MOUNT/PATH=FIELD=VALUE|@FILE]... [-c] [-l LOGFILE]"
			       " [--tls CERT KEY] [--hang]");
		}
	}
	if (port < 0 || port > 65535 || !token || !*token)
		die(2, "-p PORT and -t TOKEN are required");
	signal(SIGPIPE, SIG_IGN);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof sin;
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(lfd, 16) != 0 ||
	    getsockname(lfd, (struct sockaddr *)&sin, &sl) != 0)
		die(1, "127.0.0.1:%d: %s", port, strerror(errno));
	printf("ready %d\n", ntohs(sin.sin_port));
	fflush(stdout);
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die(1, "accept: %s", strerror(errno));
		}
		struct timeval tv = { 5, 0 };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		struct conn c = { fd, NULL };
		if (tls) {
			c.ssl = SSL_new(tls);
			SSL_set_fd(c.ssl, fd);
			if (SSL_accept(c.ssl) != 1) {
				SSL_free(c.ssl);
				close(fd);
				continue;
			}
		}
		serve(&c);
		if (c.ssl) {
			SSL_shutdown(c.ssl);
			SSL_free(c.ssl);
		}
		close(fd);
	}
}
