/* TLS material for the listeners: a self-signed certificate for a host
 * name (made once by kumod at start and handed to the workers as PEM),
 * server contexts (TLS 1.2 and later only) from PEM files or PEM text, and
 * the certificate authorities that client certificates are checked
 * against (tls_required_client_ca). */
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

/* The certificates of a PEM file (ca_file) or, when that is NULL, of PEM
 * text, as a verification store (each one a trust anchor, so an
 * intermediate CA works too) and their subject names (for the
 * CertificateRequest).  0 and both (caller frees with X509_STORE_free and
 * sk_X509_NAME_pop_free(names, X509_NAME_free)), or -1 with a reason: the
 * file cannot be read, or holds no certificate. */
int tls_ca_load(const char *ca_file, const char *ca_pem, X509_STORE **store,
		STACK_OF(X509_NAME) **names, char *err, size_t errlen);

#endif
