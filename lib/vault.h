/* HashiCorp Vault key sources: one field of a KV version 2 secret, read
 * with a small blocking HTTP/1.1 client (http:// and https://, the
 * server certificate checked against the system store).  kumod reads each
 * source its listeners name once, at start; the workers get the values in
 * their configuration and look them up with vault_lookup, so they never
 * talk to Vault.  The HTTP response parser is exposed for the unit tests. */
#ifndef KUMO_VAULT_H
#define KUMO_VAULT_H
#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#define VAULT_IO_TIMEOUT_MS 5000       /* connect, and each wait for the server */
#define VAULT_TOTAL_TIMEOUT_MS 30000   /* a whole request */
#define VAULT_MAX_RESPONSE (1024 * 1024) /* bytes of a response, headers included */
#define VAULT_MAX_FIELD 4096           /* bytes of an address, token, mount, path or key */

/* Where one secret field is and how to ask for it. */
struct vault_source {
	char *address;  /* owned: vault_address or $VAULT_ADDR ("http://127.0.0.1:8200") */
	char *token;    /* owned: vault_token or $VAULT_TOKEN */
	char *mount;    /* owned: vault_mount ("secret") */
	char *path;     /* owned: vault_path ("tls/mail.example.com.cert") */
	char *key;      /* owned: vault_key, default "key" */
};

/* Fills src from a KeySource table that has vault_mount and vault_path,
 * taking the address and token from $VAULT_ADDR / $VAULT_TOKEN when the
 * table has none.  0, or -1 with a reason (and src freed). */
int vault_source_parse(const cJSON *ks, struct vault_source *src, char *err, size_t errlen);
void vault_source_free(struct vault_source *src);
/* "secret/tls/x (field 'key') at http://..." for messages; caller frees. */
char *vault_source_describe(const struct vault_source *src);

/* GET <address>/v1/<mount>/data/<path> with X-Vault-Token, then the field
 * data.data[key] of the JSON reply.  Returns the value (caller frees), or
 * NULL with a one-line reason: cannot connect, timed out, TLS failure,
 * "HTTP 403 Forbidden: permission denied", no such field, ... */
char *vault_read(const struct vault_source *src, char *err, size_t errlen);

/* ---- pieces of vault_read, for the tests ---- */

struct vault_url {
	bool tls;          /* https */
	char host[256];    /* without brackets for an IPv6 literal */
	char port[8];
	char prefix[512];  /* path before /v1, without a trailing '/'; usually "" */
	char hostport[270];/* for the Host header: "host[:port]" as written */
};
/* http://host[:port][/prefix] or https://...; 0 or -1 with a reason. */
int vault_url_parse(const char *url, struct vault_url *u, char *err, size_t errlen);

struct http_response {
	int status;            /* e.g. 200 */
	char reason[64];       /* "OK", sanitised and cut */
	char *body;            /* owned, NUL-terminated (the body may hold NULs) */
	size_t body_len;
};

enum http_parse { HTTP_ERROR = -1, HTTP_MORE = 0, HTTP_DONE = 1 };
/* Parses the response in buf[0..len): status line, headers, then a body
 * by Content-Length, chunked transfer coding, or up to the close.  eof:
 * the server has closed, so no more bytes will come.  HTTP_DONE fills r
 * (free with http_response_free); HTTP_MORE wants more bytes; HTTP_ERROR
 * gives a reason (malformed, truncated at eof, over max bytes).  Interim
 * 1xx responses are skipped. */
enum http_parse http_response_parse(const char *buf, size_t len, bool eof, size_t max,
				    struct http_response *r, char *err, size_t errlen);
void http_response_free(struct http_response *r);

/* The reason for a response other than 200: "HTTP 403 Forbidden" plus
 * ": " and the entries of Vault's {"errors":[...]} when there are any. */
void vault_status_error(const struct http_response *r, char *err, size_t errlen);

/* data.data[key] of a KV v2 reply body; caller frees, or NULL with a reason. */
char *vault_kv2_field(const char *body, size_t len, const char *key, char *err, size_t errlen);

/* ---- the values kumod hands to the workers ---- */

/* An entry of the fetched list: {vault_address, vault_mount, vault_path,
 * vault_key, value}; caller owns it. */
cJSON *vault_fetched_entry(const struct vault_source *src, const char *value);
/* The value fetched for a KeySource table: same mount, path and key
 * (default "key"), and same address when the table names one.  NULL when
 * none matches. */
const char *vault_lookup(const cJSON *fetched, const cJSON *ks);

#endif
