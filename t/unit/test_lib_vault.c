/* Unit tests for lib/vault: the HTTP response parser (status line,
 * headers, Content-Length and chunked bodies, truncated and oversized
 * responses), Vault addresses, error texts, the KV v2 field, KeySource
 * tables with $VAULT_ADDR/$VAULT_TOKEN, the workers' lookup, and
 * vault_read against a one-shot loopback server. */
#include <check.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include "lib/vault.h"
#include "lib/xalloc.h"

#define M VAULT_MAX_RESPONSE

struct prow {
	const char *in;
	bool eof;
	size_t max;        /* 0: VAULT_MAX_RESPONSE */
	int rc;            /* HTTP_DONE, HTTP_MORE, HTTP_ERROR */
	int status;        /* for HTTP_DONE */
	const char *body;  /* for HTTP_DONE */
	const char *err;   /* for HTTP_ERROR: a substring */
};

#define OK200 "HTTP/1.1 200 OK\r\n"
#define CHUNKED OK200 "Transfer-Encoding: chunked\r\n\r\n"

static const struct prow prows[] = {
	/* Content-Length */
	{ OK200 "Content-Length: 5\r\n\r\nhello", false, 0, HTTP_DONE, 200, "hello", NULL },
	{ OK200 "content-length:   5  \r\n\r\nhello", false, 0, HTTP_DONE, 200, "hello", NULL },
	{ OK200 "Content-Length: 5\r\n\r\nhello, and more", true, 0, HTTP_DONE, 200, "hello", NULL },
	{ OK200 "Content-Length: 0\r\n\r\n", false, 0, HTTP_DONE, 200, "", NULL },
	{ OK200 "Content-Length: 5\r\n\r\nhel", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ OK200 "Content-Length: 5\r\n\r\nhel", true, 0, HTTP_ERROR, 0, NULL, "truncated response" },
	{ OK200 "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", false, 0, HTTP_DONE, 200, "hello", NULL },
	{ OK200 "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello", false, 0, HTTP_ERROR, 0, NULL, "Content-Length" },
	{ OK200 "Content-Length: five\r\n\r\nhello", false, 0, HTTP_ERROR, 0, NULL, "bad Content-Length" },
	{ OK200 "Content-Length: -5\r\n\r\nhello", false, 0, HTTP_ERROR, 0, NULL, "bad Content-Length" },
	{ OK200 "Content-Length: \r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "bad Content-Length" },
	{ OK200 "Content-Length: 99999999999999\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "bad Content-Length" },
	{ OK200 "Content-Length: 2000000\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "is over 1048576" },
	{ OK200 "Content-Length: 11\r\n\r\n", false, 10, HTTP_ERROR, 0, NULL, "over" },
	/* status line */
	{ "HTTP/1.0 403 Forbidden\r\nContent-Length: 2\r\n\r\n{}", false, 0, HTTP_DONE, 403, "{}", NULL },
	{ "HTTP/1.1 204\r\n\r\n", false, 0, HTTP_DONE, 204, "", NULL },
	{ "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", false, 0, HTTP_DONE, 200, "ok", NULL },
	{ "HTTP/1.1 100 Continue\r\n\r\n" OK200 "Content-Length: 2\r\n\r\nok", false, 0, HTTP_DONE, 200, "ok", NULL },
	{ "HTTP/1.1 100 Continue\r\n\r\n", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ "HTTP/1.1 101 Switching Protocols\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "101" },
	{ "HTTP/2 200 OK\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "not an HTTP/1.x status line" },
	{ "HTTP/1.1 2000 OK\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "status line" },
	{ "HTTP/1.1 20x OK\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "status line" },
	{ "SSH-2.0-OpenSSH_9.6\r\n", false, 0, HTTP_ERROR, 0, NULL, "not an HTTP/1.x status line" },
	{ "HTTP/1.1 099 Low\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "bad HTTP status" },
	{ "HTTP/1.1 200 O", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ "HTTP/1.1 200 O", true, 0, HTTP_ERROR, 0, NULL, "truncated response: the connection closed after 14 bytes" },
	{ "", true, 0, HTTP_ERROR, 0, NULL, "without a response" },
	{ "", false, 0, HTTP_MORE, 0, NULL, NULL },
	/* headers */
	{ OK200 "Content-Length: 2\r\n", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ OK200 "Content-Length: 2\r\n", true, 0, HTTP_ERROR, 0, NULL, "truncated" },
	{ OK200 "X-A: 1\r\n folded\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "folded header" },
	{ OK200 "No colon here\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "malformed header" },
	{ OK200 ": empty name\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL, "malformed header" },
	{ OK200 "Transfer-Encoding: gzip, chunked\r\n\r\n", false, 0, HTTP_ERROR, 0, NULL,
	  "unsupported transfer coding 'gzip, chunked'" },
	/* no length: the body runs to the close */
	{ OK200 "Content-Type: application/json\r\n\r\n{\"a\":", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ OK200 "Content-Type: application/json\r\n\r\n{\"a\":1}", true, 0, HTTP_DONE, 200, "{\"a\":1}", NULL },
	/* chunked */
	{ CHUNKED "5\r\nhello\r\n6;name=value\r\n world\r\n0\r\n\r\n", false, 0, HTTP_DONE, 200, "hello world", NULL },
	{ CHUNKED "A\r\n0123456789\r\na \r\nabcdefghij\r\n0\r\n\r\n", false, 0, HTTP_DONE, 200,
	  "0123456789abcdefghij", NULL },
	{ CHUNKED "2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n", false, 0, HTTP_DONE, 200, "ok", NULL },
	{ CHUNKED "2\nok\n0\n\n", false, 0, HTTP_DONE, 200, "ok", NULL },
	{ OK200 "Content-Length: 99\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, 0, HTTP_DONE,
	  200, "ok", NULL },
	{ CHUNKED "0\r\n\r\n", false, 0, HTTP_DONE, 200, "", NULL },
	{ CHUNKED "5\r\nhel", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ CHUNKED "5\r\nhel", true, 0, HTTP_ERROR, 0, NULL, "truncated" },
	{ CHUNKED "5\r\nhello", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ CHUNKED "5\r\nhello\r", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ CHUNKED "5\r\nhello\r\n", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ CHUNKED "5\r\nhello\r\n0\r\n", false, 0, HTTP_MORE, 0, NULL, NULL },
	{ CHUNKED "5\r\nhello\r\n0\r\n", true, 0, HTTP_ERROR, 0, NULL, "truncated" },
	{ CHUNKED "5\r\nhelloXY", false, 0, HTTP_ERROR, 0, NULL, "not followed by CRLF" },
	{ CHUNKED "zz\r\n", false, 0, HTTP_ERROR, 0, NULL, "bad chunk size" },
	{ CHUNKED "\r\n", false, 0, HTTP_ERROR, 0, NULL, "bad chunk size" },
	{ CHUNKED "5 x\r\nhello\r\n", false, 0, HTTP_ERROR, 0, NULL, "bad chunk size" },
	{ CHUNKED "123456789\r\n", false, 0, HTTP_ERROR, 0, NULL, "bad chunk size" },
	{ CHUNKED "FFFFFFFF\r\n", false, 0, HTTP_ERROR, 0, NULL, "chunked body over 1048576" },
	{ CHUNKED "40\r\n", false, 60, HTTP_ERROR, 0, NULL, "chunked body over 60" },
	{ CHUNKED "4\r\n0123\r\n4\r\n4567\r\n0\r\n\r\n", false, 60, HTTP_ERROR, 0, NULL, "response over 60" },
};

START_TEST(parse_row)
{
	const struct prow *r = &prows[_i];
	struct http_response resp;
	char err[300] = "";
	enum http_parse rc = http_response_parse(r->in, strlen(r->in), r->eof, r->max ? r->max : M, &resp, err,
						 sizeof err);
	ck_assert_msg((int)rc == r->rc, "row %d '%s': rc %d (%s), want %d", _i, r->in, rc, err, r->rc);
	if (rc == HTTP_DONE) {
		ck_assert_int_eq(resp.status, r->status);
		ck_assert_uint_eq(resp.body_len, strlen(r->body));
		ck_assert_str_eq(resp.body, r->body);
	} else {
		ck_assert_ptr_null(resp.body);
	}
	if (rc == HTTP_ERROR)
		ck_assert_msg(strstr(err, r->err), "row %d: error '%s', want '%s'", _i, err, r->err);
	http_response_free(&resp);
}
END_TEST

/* Every prefix of a complete response wants more; the whole parses. */
START_TEST(parse_every_prefix)
{
	static const char *const full[] = {
		OK200 "Content-Length: 11\r\n\r\nhello world",
		CHUNKED "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
	};
	for (size_t k = 0; k < 2; k++) {
		size_t len = strlen(full[k]);
		for (size_t n = 0; n < len; n++) {
			struct http_response r;
			char err[200] = "";
			ck_assert_msg(http_response_parse(full[k], n, false, M, &r, err, sizeof err) == HTTP_MORE,
				      "%zu bytes of row %zu: %s", n, k, err);
			ck_assert_msg(http_response_parse(full[k], n, true, M, &r, err, sizeof err) == HTTP_ERROR,
				      "%zu bytes of row %zu at eof", n, k);
		}
		struct http_response r;
		char err[200] = "";
		ck_assert_int_eq(http_response_parse(full[k], len, false, M, &r, err, sizeof err), HTTP_DONE);
		ck_assert_str_eq(r.body, "hello world");
		http_response_free(&r);
	}
}
END_TEST

/* The limit is the whole response, headers included. */
START_TEST(parse_oversized)
{
	const char *head = OK200 "Content-Length: %zu\r\n\r\n";
	char h[100];
	size_t body = M - 100;
	int hl = snprintf(h, sizeof h, head, body);
	char *buf = xmalloc(M + 2);
	memcpy(buf, h, (size_t)hl);
	memset(buf + hl, 'x', M + 2 - (size_t)hl);
	struct http_response r;
	char err[200] = "";
	ck_assert_int_eq(http_response_parse(buf, (size_t)hl + body, true, M, &r, err, sizeof err), HTTP_DONE);
	ck_assert_uint_eq(r.body_len, body);
	http_response_free(&r);
	ck_assert_int_eq(http_response_parse(buf, M + 1, false, M, &r, err, sizeof err), HTTP_ERROR);
	ck_assert_msg(strstr(err, "response over 1048576 bytes"), "%s", err);
	free(buf);
}
END_TEST

struct urow {
	const char *url;
	const char *err;   /* NULL: valid */
	bool tls;
	const char *host, *port, *prefix, *hostport;
};

static const struct urow urows[] = {
	{ "http://127.0.0.1:8200", NULL, false, "127.0.0.1", "8200", "", "127.0.0.1:8200" },
	{ "https://vault.example.com", NULL, true, "vault.example.com", "443", "", "vault.example.com" },
	{ "http://vault", NULL, false, "vault", "80", "", "vault" },
	{ "HTTPS://vault:8200/", NULL, true, "vault", "8200", "", "vault:8200" },
	{ "http://[::1]:8200/base/", NULL, false, "::1", "8200", "/base", "[::1]:8200" },
	{ "http://[::1]", NULL, false, "::1", "80", "", "[::1]" },
	{ "ftp://vault", "expected http://", false, NULL, NULL, NULL, NULL },
	{ "vault:8200", "expected http://", false, NULL, NULL, NULL, NULL },
	{ "http://", "no host", false, NULL, NULL, NULL, NULL },
	{ "http://:8200", "bad host", false, NULL, NULL, NULL, NULL },
	{ "http://vault:0", "bad port", false, NULL, NULL, NULL, NULL },
	{ "http://vault:65536", "bad port", false, NULL, NULL, NULL, NULL },
	{ "http://vault:http", "bad port", false, NULL, NULL, NULL, NULL },
	{ "http://vault:", "bad port", false, NULL, NULL, NULL, NULL },
	{ "http://[::1:8200", "IPv6", false, NULL, NULL, NULL, NULL },
	{ "http://user:pw@vault", "unexpected characters", false, NULL, NULL, NULL, NULL },
	{ "http://vault/a b", "unexpected characters", false, NULL, NULL, NULL, NULL },
	{ "http://vault\r\nX: y", "unexpected characters", false, NULL, NULL, NULL, NULL },
};

START_TEST(url_row)
{
	const struct urow *r = &urows[_i];
	struct vault_url u;
	char err[300] = "";
	int rc = vault_url_parse(r->url, &u, err, sizeof err);
	if (r->err) {
		ck_assert_msg(rc == -1 && strstr(err, r->err), "%s: rc %d '%s', want '%s'", r->url, rc, err, r->err);
		return;
	}
	ck_assert_msg(rc == 0, "%s: %s", r->url, err);
	ck_assert_int_eq(u.tls, r->tls);
	ck_assert_str_eq(u.host, r->host);
	ck_assert_str_eq(u.port, r->port);
	ck_assert_str_eq(u.prefix, r->prefix);
	ck_assert_str_eq(u.hostport, r->hostport);
}
END_TEST

struct erow {
	int status;
	const char *reason, *body, *want;
};

static const struct erow erows[] = {
	{ 403, "Forbidden", "{\"errors\":[\"permission denied\"]}", "HTTP 403 Forbidden: permission denied" },
	{ 404, "Not Found", "{\"errors\":[]}", "HTTP 404 Not Found" },
	{ 500, "Internal Server Error", "{\"errors\":[\"one\",\"two\\nlines\",3]}",
	  "HTTP 500 Internal Server Error: one; two?lines" },
	{ 502, "Bad Gateway", "<html>oops</html>", "HTTP 502 Bad Gateway" },
	{ 503, "", "", "HTTP 503" },
};

START_TEST(status_error_row)
{
	const struct erow *r = &erows[_i];
	struct http_response resp = { .status = r->status };
	snprintf(resp.reason, sizeof resp.reason, "%s", r->reason);
	resp.body = xstrdup(r->body);
	resp.body_len = strlen(r->body);
	char err[300];
	vault_status_error(&resp, err, sizeof err);
	ck_assert_str_eq(err, r->want);
	http_response_free(&resp);
}
END_TEST

struct krow {
	const char *body, *key, *value, *err;
};

static const struct krow krows[] = {
	{ "{\"data\":{\"data\":{\"key\":\"-----BEGIN X-----\"},\"metadata\":{}}}", "key", "-----BEGIN X-----", NULL },
	{ "{\"data\":{\"data\":{\"key\":\"a\",\"certificate\":\"b\"}}}", "certificate", "b", NULL },
	{ "{\"data\":{\"data\":{\"key\":\"a\"}}}", "cert", NULL, "no field 'cert'" },
	{ "{\"data\":{\"data\":{\"key\":7}}}", "key", NULL, "not a string" },
	{ "{\"data\":{\"key\":\"v1 layout\"}}", "key", NULL, "no data.data object" },
	{ "[1]", "key", NULL, "no data.data object" },
	{ "not json", "key", NULL, "not JSON" },
};

START_TEST(kv2_row)
{
	const struct krow *r = &krows[_i];
	char err[300] = "";
	char *v = vault_kv2_field(r->body, strlen(r->body), r->key, err, sizeof err);
	if (r->value) {
		ck_assert_msg(v != NULL, "%s: %s", r->body, err);
		ck_assert_str_eq(v, r->value);
	} else {
		ck_assert_ptr_null(v);
		ck_assert_msg(strstr(err, r->err), "%s: '%s', want '%s'", r->body, err, r->err);
	}
	free(v);
}
END_TEST

struct srow {
	const char *table;
	const char *env_addr, *env_token;  /* NULL: unset */
	const char *err;                   /* NULL: valid */
	const char *address, *token, *key;
};

static const struct srow srows[] = {
	{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\",\"vault_address\":\"http://v:1\",\"vault_token\":\"t\"}",
	  NULL, NULL, NULL, "http://v:1", "t", "key" },
	{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\",\"vault_key\":\"cert\"}", "http://env:8200", "envtok",
	  NULL, "http://env:8200", "envtok", "cert" },
	{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\",\"vault_token\":\"t\"}", "http://env:8200", "envtok",
	  NULL, "http://env:8200", "t", "key" },
	{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\"}", NULL, "envtok", "$VAULT_ADDR is not set", NULL,
	  NULL, NULL },
	{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\"}", "http://env", NULL, "$VAULT_TOKEN is not set", NULL,
	  NULL, NULL },
	{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\"}", "http://env", "", "$VAULT_TOKEN is not set", NULL,
	  NULL, NULL },
	{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\",\"vault_address\":\"vault:8200\"}", NULL, "t",
	  "expected http://", NULL, NULL, NULL },
	{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\",\"vault_token\":\"a\\r\\nX: y\"}", "http://v", NULL,
	  "vault_token", NULL, NULL, NULL },
	{ "{\"vault_mount\":\"\",\"vault_path\":\"tls/c\"}", "http://v", "t", "vault_mount", NULL, NULL, NULL },
	{ "{\"vault_mount\":\"secret\"}", "http://v", "t", "vault_path", NULL, NULL, NULL },
	{ "{\"vault_mount\":\"secret\",\"vault_path\":\"p\",\"vault_key\":\"\"}", "http://v", "t", "vault_key", NULL,
	  NULL, NULL },
};

START_TEST(source_row)
{
	const struct srow *r = &srows[_i];
	if (r->env_addr)
		setenv("VAULT_ADDR", r->env_addr, 1);
	else
		unsetenv("VAULT_ADDR");
	if (r->env_token)
		setenv("VAULT_TOKEN", r->env_token, 1);
	else
		unsetenv("VAULT_TOKEN");
	cJSON *t = cJSON_Parse(r->table);
	ck_assert_ptr_nonnull(t);
	struct vault_source src;
	char err[300] = "";
	int rc = vault_source_parse(t, &src, err, sizeof err);
	if (r->err) {
		ck_assert_msg(rc == -1 && strstr(err, r->err), "%s: rc %d '%s', want '%s'", r->table, rc, err, r->err);
	} else {
		ck_assert_msg(rc == 0, "%s: %s", r->table, err);
		ck_assert_str_eq(src.address, r->address);
		ck_assert_str_eq(src.token, r->token);
		ck_assert_str_eq(src.key, r->key);
		ck_assert_str_eq(src.mount, "secret");
		ck_assert_str_eq(src.path, "tls/c");
		char *d = vault_source_describe(&src);
		ck_assert_msg(!strstr(d, src.token) || strlen(src.token) < 2, "the token in '%s'", d);
		free(d);
		vault_source_free(&src);
	}
	cJSON_Delete(t);
}
END_TEST

START_TEST(lookup)
{
	struct vault_source a = { .address = "http://a:1", .token = "t", .mount = "secret", .path = "tls/c", .key = "key" };
	struct vault_source b = { .address = "http://b:1", .token = "t", .mount = "secret", .path = "tls/c", .key = "key" };
	struct vault_source c = { .address = "http://a:1", .token = "t", .mount = "secret", .path = "tls/c", .key = "cert" };
	cJSON *fetched = cJSON_CreateArray();
	cJSON_AddItemToArray(fetched, vault_fetched_entry(&a, "A"));
	cJSON_AddItemToArray(fetched, vault_fetched_entry(&b, "B"));
	cJSON_AddItemToArray(fetched, vault_fetched_entry(&c, "C"));
	static const struct {
		const char *table, *want;
	} rows[] = {
		{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\"}", "A" },
		{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\",\"vault_address\":\"http://b:1\"}", "B" },
		{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\",\"vault_key\":\"cert\"}", "C" },
		{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/c\",\"vault_key\":\"cert\","
		  "\"vault_address\":\"http://b:1\"}", NULL },
		{ "{\"vault_mount\":\"secret\",\"vault_path\":\"tls/d\"}", NULL },
		{ "{\"vault_mount\":\"kv\",\"vault_path\":\"tls/c\"}", NULL },
		{ "{\"key_data\":\"x\"}", NULL },
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		cJSON *t = cJSON_Parse(rows[i].table);
		const char *got = vault_lookup(fetched, t);
		if (rows[i].want)
			ck_assert_msg(got && strcmp(got, rows[i].want) == 0, "%s: got %s", rows[i].table, got ? got : "NULL");
		else
			ck_assert_msg(!got, "%s: got %s", rows[i].table, got);
		cJSON_Delete(t);
	}
	cJSON *entry = cJSON_GetArrayItem(fetched, 0);
	ck_assert_ptr_null(cJSON_GetObjectItem(entry, "vault_token")); /* the token stays in kumod */
	cJSON_Delete(fetched);
}
END_TEST

/* ---- vault_read against a one-shot server ---- */

/* A child that accepts one connection on a loopback port, reads the
 * request head, writes resp[0..len) (then, if more > 0, that many more
 * 'x' bytes) and closes.  Returns its pid; the port in *port. */
static pid_t serve_once(const char *resp, size_t len, size_t more, int *port)
{
	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof sin;
	ck_assert(bind(lfd, (struct sockaddr *)&sin, sizeof sin) == 0 && listen(lfd, 1) == 0 &&
		  getsockname(lfd, (struct sockaddr *)&sin, &sl) == 0);
	*port = ntohs(sin.sin_port);
	pid_t pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		signal(SIGPIPE, SIG_IGN);
		alarm(20);
		int fd = accept(lfd, NULL, NULL);
		char req[8192];
		size_t got = 0;
		while (got < sizeof req - 1) {
			ssize_t n = read(fd, req + got, sizeof req - 1 - got);
			if (n <= 0)
				break;
			got += (size_t)n;
			req[got] = 0;
			if (strstr(req, "\r\n\r\n"))
				break;
		}
		/* the request must be what Vault expects */
		const char *want = "GET /v1/secret/data/tls/a%20b HTTP/1.1\r\n";
		int good = strncmp(req, want, strlen(want)) == 0 &&
			   strstr(req, "\r\nX-Vault-Token: tok\r\n") != NULL;
		if (!good) {
			const char *bad = "HTTP/1.1 400 Bad Request\r\nContent-Length: 26\r\n\r\n{\"errors\":[\"bad request\"]}";
			(void)!write(fd, bad, strlen(bad));
			_exit(1);
		}
		(void)!write(fd, resp, len);
		char x[65536];
		memset(x, 'x', sizeof x);
		while (more > 0) {
			ssize_t n = write(fd, x, more < sizeof x ? more : sizeof x);
			if (n <= 0)
				break;
			more -= (size_t)n;
		}
		close(fd);
		_exit(0);
	}
	close(lfd);
	return pid;
}

struct nrow {
	const char *resp;
	size_t more;
	const char *value, *err;
};

static const struct nrow nrows[] = {
	{ OK200 "Content-Length: 31\r\n\r\n{\"data\":{\"data\":{\"key\":\"PEM\"}}}  ", 0, "PEM", NULL },
	{ CHUNKED "10\r\n{\"data\":{\"data\":\r\n12\r\n{\"key\":\"chunky\"}}}\r\n0\r\n\r\n", 0, "chunky", NULL },
	{ "HTTP/1.1 403 Forbidden\r\nContent-Length: 32\r\n\r\n{\"errors\":[\"permission denied\"]}", 0, NULL,
	  "HTTP 403 Forbidden: permission denied" },
	{ OK200 "Content-Length: 40\r\n\r\n{\"data\":", 0, NULL, "truncated response" },
	{ OK200 "\r\n", 2 * 1024 * 1024, NULL, "response over 1048576 bytes" },
	{ "", 0, NULL, "without a response" },
};

START_TEST(read_row)
{
	const struct nrow *r = &nrows[_i];
	int port;
	pid_t pid = serve_once(r->resp, strlen(r->resp), r->more, &port);
	char addr[64];
	snprintf(addr, sizeof addr, "http://127.0.0.1:%d", port);
	struct vault_source src = { .address = addr, .token = "tok", .mount = "secret", .path = "tls/a b", .key = "key" };
	char err[400] = "";
	char *v = vault_read(&src, err, sizeof err);
	if (r->value) {
		ck_assert_msg(v && strcmp(v, r->value) == 0, "row %d: got %s (%s)", _i, v ? v : "NULL", err);
	} else {
		ck_assert_ptr_null(v);
		ck_assert_msg(strstr(err, r->err), "row %d: '%s', want '%s'", _i, err, r->err);
	}
	free(v);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}
END_TEST

START_TEST(read_refused)
{
	int port;
	pid_t pid = serve_once("", 0, 0, &port); /* learn a free port, then free it */
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	char addr[64];
	snprintf(addr, sizeof addr, "http://127.0.0.1:%d", port);
	struct vault_source src = { .address = addr, .token = "tok", .mount = "secret", .path = "p", .key = "key" };
	char err[400] = "";
	char *v = vault_read(&src, err, sizeof err);
	ck_assert_ptr_null(v);
	ck_assert_msg(strstr(err, "cannot connect to 127.0.0.1:") && strstr(err, "refused"), "%s", err);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("vault");
	TCase *tc = tcase_create("http");
	tcase_add_loop_test(tc, parse_row, 0, (int)(sizeof prows / sizeof prows[0]));
	tcase_add_test(tc, parse_every_prefix);
	tcase_add_test(tc, parse_oversized);
	tcase_add_loop_test(tc, status_error_row, 0, (int)(sizeof erows / sizeof erows[0]));
	suite_add_tcase(s, tc);
	tc = tcase_create("vault");
	tcase_add_loop_test(tc, url_row, 0, (int)(sizeof urows / sizeof urows[0]));
	tcase_add_loop_test(tc, kv2_row, 0, (int)(sizeof krows / sizeof krows[0]));
	tcase_add_loop_test(tc, source_row, 0, (int)(sizeof srows / sizeof srows[0]));
	tcase_add_test(tc, lookup);
	suite_add_tcase(s, tc);
	tc = tcase_create("network");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, read_row, 0, (int)(sizeof nrows / sizeof nrows[0]));
	tcase_add_test(tc, read_refused);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
