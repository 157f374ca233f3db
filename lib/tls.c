/* tls: self-signed certificates, server contexts and client CA stores
 * (OpenSSL 3).  Entry points: tls_self_signed, tls_server_ctx,
 * tls_ca_load.  Failures return with OpenSSL's first queued error in the
 * caller's buffer. */
#include "lib/tls.h"
#include "lib/xalloc.h"

#include <stdio.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

static void ssl_reason(const char *what, char *err, size_t errlen)
{
	unsigned long e = ERR_get_error();
	char buf[256];
	ERR_error_string_n(e, buf, sizeof buf);
	snprintf(err, errlen, "%s: %s", what, e ? buf : "unknown error");
	ERR_clear_error();
}

static char *bio_text(BIO *b)
{
	char *data;
	long n = BIO_get_mem_data(b, &data);
	return xstrndup(data, (size_t)n);
}

int tls_self_signed(const char *hostname, char **cert_pem, char **key_pem, char *err, size_t errlen)
{
	int rc = -1;
	X509 *x = NULL;
	BIO *cb = NULL, *kb = NULL;
	EVP_PKEY *pk = EVP_EC_gen("P-256");
	if (!pk) {
		ssl_reason("generating a key", err, errlen);
		return -1;
	}
	x = X509_new();
	unsigned char serial[16];
	RAND_bytes(serial, sizeof serial);
	serial[0] &= 0x7f;
	BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
	BN_free(bn);
	X509_set_version(x, 2);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600);
	X509_set_pubkey(x, pk);
	X509_NAME *name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)hostname, -1, -1, 0);
	X509_set_issuer_name(x, name);
	char san[512];
	snprintf(san, sizeof san, "DNS:%s", hostname);
	X509V3_CTX v3;
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
	if (!ext) {
		ssl_reason("subjectAltName", err, errlen);
		goto out;
	}
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	if (!X509_sign(x, pk, EVP_sha256())) {
		ssl_reason("signing the certificate", err, errlen);
		goto out;
	}
	cb = BIO_new(BIO_s_mem());
	kb = BIO_new(BIO_s_mem());
	if (!PEM_write_bio_X509(cb, x) || !PEM_write_bio_PrivateKey(kb, pk, NULL, NULL, 0, NULL, NULL)) {
		ssl_reason("writing PEM", err, errlen);
		goto out;
	}
	*cert_pem = bio_text(cb);
	*key_pem = bio_text(kb);
	rc = 0;
out:
	BIO_free(cb);
	BIO_free(kb);
	X509_free(x);
	EVP_PKEY_free(pk);
	return rc;
}

SSL_CTX *tls_server_ctx(const char *cert_file, const char *key_file, const char *cert_pem,
			const char *key_pem, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		ssl_reason("SSL_CTX_new", err, errlen);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	char what[600];
	if (cert_file) {
		if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
			snprintf(what, sizeof what, "tls_certificate %s", cert_file);
			goto fail;
		}
	} else {
		BIO *b = BIO_new_mem_buf(cert_pem, -1);
		X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
		BIO_free(b);
		int ok = x && SSL_CTX_use_certificate(ctx, x) == 1;
		X509_free(x);
		if (!ok) {
			snprintf(what, sizeof what, "tls_certificate");
			goto fail;
		}
	}
	if (key_file) {
		if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
			snprintf(what, sizeof what, "tls_private_key %s", key_file);
			goto fail;
		}
	} else {
		BIO *b = BIO_new_mem_buf(key_pem, -1);
		EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
		BIO_free(b);
		int ok = k && SSL_CTX_use_PrivateKey(ctx, k) == 1;
		EVP_PKEY_free(k);
		if (!ok) {
			snprintf(what, sizeof what, "tls_private_key");
			goto fail;
		}
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(what, sizeof what, "tls_private_key does not match tls_certificate");
		goto fail;
	}
	return ctx;
fail:
	ssl_reason(what, err, errlen);
	SSL_CTX_free(ctx);
	return NULL;
}

int tls_ca_load(const char *ca_file, const char *ca_pem, X509_STORE **store,
		STACK_OF(X509_NAME) **names, char *err, size_t errlen)
{
	ERR_clear_error();
	BIO *b = ca_file ? BIO_new_file(ca_file, "r") : BIO_new_mem_buf(ca_pem, -1);
	char what[600];
	snprintf(what, sizeof what, "tls_required_client_ca%s%s", ca_file ? " " : "", ca_file ? ca_file : "");
	if (!b) {
		ssl_reason(what, err, errlen);
		return -1;
	}
	X509_STORE *st = X509_STORE_new();
	STACK_OF(X509_NAME) *nm = sk_X509_NAME_new_null();
	X509_STORE_set_flags(st, X509_V_FLAG_PARTIAL_CHAIN);
	size_t n = 0;
	X509 *x;
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		X509_NAME *name = X509_NAME_dup(X509_get_subject_name(x));
		if (X509_STORE_add_cert(st, x) != 1 || !name || !sk_X509_NAME_push(nm, name)) {
			X509_NAME_free(name);
			X509_free(x);
			ssl_reason(what, err, errlen);
			goto fail;
		}
		X509_free(x);
		n++;
	}
	ERR_clear_error(); /* the loop ends at "no start line" */
	BIO_free(b);
	b = NULL;
	if (n == 0) {
		snprintf(err, errlen, "%s: no PEM certificate in it", what);
		goto fail;
	}
	*store = st;
	*names = nm;
	return 0;
fail:
	BIO_free(b);
	X509_STORE_free(st);
	sk_X509_NAME_pop_free(nm, X509_NAME_free);
	return -1;
}
