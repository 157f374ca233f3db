/* TLS material for the listeners: a self-signed certificate for a host
 * name (made once by kumod at start and handed to the workers as PEM), and
 * server contexts (TLS 1.2 and later only) from PEM files or PEM text. */
#ifndef KUMO_TLS_H
#define KUMO_TLS_H
#include <stddef.h>
#include <openssl/ssl.h>

/* A fresh EC P-256 key and a self-signed X.509 v3 certificate for
 * hostname (CN and subjectAltName), valid for a year.  Returns 0 and two
 * PEM strings the caller frees, or -1 with a reason. */
int tls_self_signed(const char *hostname, char **cert_pem, char **key_pem, char *err, size_t errlen);

/* A server context from PEM files (cert_file/key_file) or, when those are
 * NULL, from PEM text.  NULL with a reason naming what failed. */
SSL_CTX *tls_server_ctx(const char *cert_file, const char *key_file, const char *cert_pem,
			const char *key_pem, char *err, size_t errlen);

#endif
