/*
 * A deliberately small SMTP client for end-to-end tests: raw sends, one
 * complete reply at a time (continuation lines up to the final line), EOF
 * detection, and a transcript of everything sent and received that failure
 * messages quote.  The expect macros fail the Check test at the caller's
 * line with expected vs got.
 *
 * smtpc_starttls() switches a session to TLS (OpenSSL, no certificate
 * verification); from then on every send and read goes over TLS and the
 * plain socket is not touched directly.
 */
#ifndef SMTPC_H
#define SMTPC_H

#include <stddef.h>

#define SMTPC_TIMEOUT_MS 20000     /* default wait for a reply */

struct harness_env;
struct ssl_st;
struct ssl_ctx_st;

struct smtpc {
    int fd;
    int local_port;               /* our side of the connection */
    char local_ip[64];
    char *rbuf;                   /* owned: bytes received, not yet consumed */
    size_t rlen, rcap;
    char *log;                    /* owned: transcript ("C: ..." / "S: ...") */
    size_t loglen, logcap;
    const struct harness_env *env; /* for kumod's output in failures; may be NULL */
    int eof;                      /* peer closed */
    struct ssl_st *ssl;           /* owned: non-NULL once TLS is up (or being set up) */
    struct ssl_ctx_st *ssl_ctx;   /* owned */
    char tls_version[32];         /* after the handshake: "TLSv1.3" (OpenSSL's name) */
    char tls_cipher[96];          /* "TLS_AES_256_GCM_SHA384" */
    char tls_peer_cn[256];        /* subject CN of the server's certificate, or "" */
};

/* Client settings for the TLS handshake; NULL or all zero = OpenSSL's defaults. */
struct smtpc_tls_opts {
    int min_version;              /* e.g. TLS1_VERSION; 0 = default */
    int max_version;              /* e.g. TLS1_1_VERSION; 0 = default */
    int security_level_0;         /* 1: SSL_CTX_set_security_level 0 (lets TLS 1.0/1.1 and
                                   * SHA-1 through on builds that refuse them by default) */
    const char *cipher_list;      /* SSL_CTX_set_cipher_list (TLS <= 1.2); NULL = default */
    const char *cert_file;        /* client certificate (PEM chain) to offer if asked; NULL: none */
    const char *key_file;         /* its private key (PEM); NULL: in cert_file */
};

/* Reply codes returned instead of a status when there is no reply. */
#define SMTPC_EOF (-1)
#define SMTPC_TIMEOUT (-2)
#define SMTPC_BAD (-3)            /* malformed reply line */
#define SMTPC_ERR (-4)            /* socket error (e.g. reset) */

/*
 * Connects to 127.0.0.1:port, from src_ip if not NULL (e.g. "127.0.0.2").
 * Fails the test if the connection is refused.
 */
#define smtpc_connect(env, port, src_ip) \
    smtpc_connect_at(__FILE__, __LINE__, env, port, src_ip)
struct smtpc *smtpc_connect_at(const char *file, int line, const struct harness_env *env,
                               int port, const char *src_ip);
/* Same without failing: NULL and errno on failure. */
struct smtpc *smtpc_try_connect(const struct harness_env *env, int port, const char *src_ip);
/* Wraps an already connected stream socket (e.g. one end of a socketpair
 * whose other end is a child's stdin and stdout).  Takes ownership of fd. */
struct smtpc *smtpc_attach(const struct harness_env *env, int fd);
void smtpc_close(struct smtpc *c);

/* Raw bytes, exactly as given.  Fails the test if the write fails. */
#define smtpc_send(c, data, len) smtpc_send_at(__FILE__, __LINE__, c, data, len)
void smtpc_send_at(const char *file, int line, struct smtpc *c, const void *data, size_t len);
/* Raw, printf-formatted (no CRLF added). */
#define smtpc_sendf(c, ...) smtpc_sendf_at(__FILE__, __LINE__, c, __VA_ARGS__)
void smtpc_sendf_at(const char *file, int line, struct smtpc *c, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* One command: the formatted line plus CRLF. */
#define smtpc_cmd(c, ...) smtpc_cmd_at(__FILE__, __LINE__, c, __VA_ARGS__)
void smtpc_cmd_at(const char *file, int line, struct smtpc *c, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Like smtpc_send but returns -1 on error instead of failing. */
int smtpc_try_send(struct smtpc *c, const void *data, size_t len);

/*
 * Reads one complete reply: lines "ddd-text" up to the final "ddd text" (or
 * bare "ddd").  Returns the code, or SMTPC_EOF / SMTPC_TIMEOUT / SMTPC_BAD /
 * SMTPC_ERR.  *text (may be NULL) gets the full reply, lines joined with
 * "\n", CRLFs removed, codes included (e.g. "250-a\n250 b"); caller frees.
 */
int smtpc_read_reply(struct smtpc *c, char **text, int timeout_ms);

/* Expects a reply whose full text is exactly `text` (code included). */
#define smtpc_expect(c, text) smtpc_expect_at(__FILE__, __LINE__, c, text, 0)
/* Expects a reply whose full text starts with `prefix`. */
#define smtpc_expect_prefix(c, prefix) smtpc_expect_at(__FILE__, __LINE__, c, prefix, 1)
void smtpc_expect_at(const char *file, int line, struct smtpc *c, const char *text,
                     int prefix);
/* Expects a reply with this code; returns its full text (caller frees). */
#define smtpc_expect_code(c, code) smtpc_expect_code_at(__FILE__, __LINE__, c, code)
char *smtpc_expect_code_at(const char *file, int line, struct smtpc *c, int code);
/* Sends one command (CRLF added) and expects this exact reply. */
#define smtpc_chat(c, cmd, reply) smtpc_chat_at(__FILE__, __LINE__, c, cmd, reply)
void smtpc_chat_at(const char *file, int line, struct smtpc *c, const char *cmd,
                   const char *reply);
/* Expects the peer to close with no further bytes, within timeout_ms. */
#define smtpc_expect_eof(c, timeout_ms) smtpc_expect_eof_at(__FILE__, __LINE__, c, timeout_ms)
void smtpc_expect_eof_at(const char *file, int line, struct smtpc *c, int timeout_ms);

/*
 * Reads everything until EOF (or timeout_ms: then fails the test).  Returns
 * the bytes (NUL-terminated, caller frees) and their length in *len.
 */
#define smtpc_read_until_eof(c, timeout_ms, len) \
    smtpc_read_until_eof_at(__FILE__, __LINE__, c, timeout_ms, len)
char *smtpc_read_until_eof_at(const char *file, int line, struct smtpc *c, int timeout_ms,
                              size_t *len);

/*
 * Expects "250 OK ids=<id> ..." with n ids of 32 lowercase hex digits, all
 * distinct; copies them into ids[i] (each char[33]).
 */
#define smtpc_expect_ids(c, n, ids) smtpc_expect_ids_at(__FILE__, __LINE__, c, n, ids)
void smtpc_expect_ids_at(const char *file, int line, struct smtpc *c, int n, char ids[][33]);

/* Banner, then MAIL/RCPT.../DATA/body/"." : a whole transaction on an open
 * session (no banner read, no QUIT).  body is sent as given and must end in
 * CRLF; rcpts is NULL-terminated.  Returns nothing; ids as above. */
#define smtpc_transaction(c, from, rcpts, body, ids) \
    smtpc_transaction_at(__FILE__, __LINE__, c, from, rcpts, body, ids)
void smtpc_transaction_at(const char *file, int line, struct smtpc *c, const char *from,
                          const char *const rcpts[], const char *body, char ids[][33]);

/*
 * STARTTLS: sends "STARTTLS", expects "220 ..." and then a TLS handshake
 * (TLS_client_method, no verification).  Fails the test on another reply,
 * on bytes the server sent after the 220 in plaintext, or when the
 * handshake fails (with OpenSSL's reason).  Afterwards c->tls_version,
 * c->tls_cipher and c->tls_peer_cn describe the session.
 */
#define smtpc_starttls(c) smtpc_starttls_at(__FILE__, __LINE__, c, NULL)
#define smtpc_starttls_opts(c, opts) smtpc_starttls_at(__FILE__, __LINE__, c, opts)
void smtpc_starttls_at(const char *file, int line, struct smtpc *c,
                       const struct smtpc_tls_opts *opts);
/*
 * Just the client handshake on the connection as it stands (STARTTLS sent
 * and its 220 read by the caller), waiting up to timeout_ms.  Returns 0, or
 * -1 with the reason in err; never fails the test.  On failure c->ssl stays
 * set (so *lib_refused can tell whether OpenSSL refused to even send a
 * ClientHello, e.g. no protocol version left; may be NULL) and the session
 * is only good for smtpc_expect_eof / smtpc_close.
 */
int smtpc_tls_handshake(struct smtpc *c, const struct smtpc_tls_opts *opts, int timeout_ms,
                        char *err, size_t errlen, int *lib_refused);

/* The transcript so far, with non-printable bytes escaped (static-free,
 * caller frees); at most the last max bytes. */
char *smtpc_transcript(const struct smtpc *c, size_t max);

/* Whether s is 32 lowercase hex digits. */
int smtpc_is_spool_id(const char *s);

#endif
