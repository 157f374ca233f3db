/* smtpd_tls: STARTTLS (RFC 3207).  Entry points: tls_setup (at worker
 * start: the listeners' self-signed certificates and the HashiCorp Vault
 * values kumod read at start), tls_available and run_starttls (the verb).
 * Contexts for certificate files named by peer/via/dynamic parameters,
 * and the client CA stores of tls_required_client_ca, are made on first
 * use and kept.  A Vault key source is only looked up among the values
 * kumod read: the workers never talk to Vault.
 * With tls_required_client_ca the handshake asks for a client
 * certificate but goes on without one, or with one that does not verify;
 * one that verifies sets the connection meta tls_peer_subject_name.
 * After "220 Ready to Start TLS" whatever plaintext the client pipelined
 * is discarded, and the session forgets its EHLO and transaction.  A
 * failed handshake closes the connection. */
#include "smtpd/smtpd.h"
#include "lib/jadd.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "lib/vault.h"
#include "lib/xalloc.h"

#include <string.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <event2/bufferevent_ssl.h>

#define SUBJECT_MAX_ENTRIES 64   /* RDN entries put in tls_peer_subject_name */
#define SUBJECT_MAX_VALUE 1024   /* bytes of one entry's value */

struct ctx_cache {
	struct ctx_cache *next;
	char *key;      /* owned: "cert\nkey" */
	SSL_CTX *ctx;
};

static struct ctx_cache *cache;

struct ca_cache {
	struct ca_cache *next;
	char *key;                    /* owned: the file path or the PEM text */
	X509_STORE *store;            /* owned */
	STACK_OF(X509_NAME) *names;   /* owned: the CAs' subjects, for the CertificateRequest */
};

static struct ca_cache *cas;
static cJSON *vault_values;       /* owned: kumod's "tls_vault" list (see vault_lookup) */

void tls_setup(const cJSON *self_signed, const cJSON *vault)
{
	char err[400];
	vault_values = cJSON_IsArray(vault) ? cJSON_Duplicate(vault, 1) : cJSON_CreateArray();
	for (size_t i = 0; i < smtpd->n_listeners; i++) {
		const cJSON *e = cJSON_GetArrayItem(self_signed, (int)i);
		const cJSON *c = jget(e, "cert");
		const cJSON *k = jget(e, "key");
		if (!cJSON_IsString(c) || !cJSON_IsString(k))
			continue;
		smtpd->listeners[i].self_signed = tls_server_ctx(NULL, NULL, c->valuestring, k->valuestring, err, sizeof err);
		if (!smtpd->listeners[i].self_signed)
			log_warn("listener %s: %s", smtpd->listeners[i].listen_str, err);
	}
}

void tls_teardown(void)
{
	while (cache) {
		struct ctx_cache *n = cache->next;
		SSL_CTX_free(cache->ctx);
		free(cache->key);
		free(cache);
		cache = n;
	}
	while (cas) {
		struct ca_cache *n = cas->next;
		X509_STORE_free(cas->store);
		sk_X509_NAME_pop_free(cas->names, X509_NAME_free);
		free(cas->key);
		free(cas);
		cas = n;
	}
	cJSON_Delete(vault_values);
	vault_values = NULL;
	for (size_t i = 0; i < smtpd->n_listeners; i++)
		SSL_CTX_free(smtpd->listeners[i].self_signed);
}

/* A key source as a file path (*file) or PEM text (*pem): a string, a
 * key_data table, or a Vault table kumod read.  -1 with a reason for a
 * Vault table it did not read (one that only a dynamic table names). */
static int source_get(const cJSON *v, const char *name, const char **file, const char **pem,
		      char *err, size_t errlen)
{
	*file = *pem = NULL;
	if (cJSON_IsString(v)) {
		*file = v->valuestring;
		return 0;
	}
	const cJSON *kd = jget(v, "key_data");
	*pem = cJSON_IsString(kd) ? kd->valuestring : vault_lookup(vault_values, v);
	if (*pem)
		return 0;
	const cJSON *m = jget(v, "vault_mount");
	const cJSON *p = jget(v, "vault_path");
	snprintf(err, errlen, "%s: the Vault secret %.100s/%.100s was not read by kumod at start"
		 " (it reads those of the listener tables and their peer/via blocks)", name,
		 cJSON_IsString(m) ? m->valuestring : "?", cJSON_IsString(p) ? p->valuestring : "?");
	return -1;
}

/* The context for this session's effective tls_certificate/private_key. */
static SSL_CTX *ctx_for(struct session *s, char *err, size_t errlen)
{
	if (!s->p.tls_certificate || !s->p.tls_private_key) {
		if (!s->listener->self_signed)
			snprintf(err, errlen, "no certificate for this listener");
		return s->listener->self_signed;
	}
	const char *cf, *cpem, *kf, *kpem;
	if (source_get(s->p.tls_certificate, "tls_certificate", &cf, &cpem, err, errlen) != 0 ||
	    source_get(s->p.tls_private_key, "tls_private_key", &kf, &kpem, err, errlen) != 0)
		return NULL;
	char *key = xasprintf("%s\n%s", cf ? cf : cpem, kf ? kf : kpem);
	for (struct ctx_cache *c = cache; c; c = c->next) {
		if (strcmp(c->key, key) == 0) {
			free(key);
			return c->ctx;
		}
	}
	SSL_CTX *ctx = tls_server_ctx(cf, kf, cpem, kpem, err, errlen);
	if (!ctx) {
		free(key);
		return NULL;
	}
	struct ctx_cache *c = xcalloc(1, sizeof *c);
	c->key = key;
	c->ctx = ctx;
	c->next = cache;
	cache = c;
	return ctx;
}

/* The CA store for this session's tls_required_client_ca: 0 with *out
 * NULL when there is none, -1 with a reason when it cannot be loaded. */
static int ca_for(struct session *s, struct ca_cache **out, char *err, size_t errlen)
{
	*out = NULL;
	if (!s->p.tls_required_client_ca)
		return 0;
	const char *file, *pem;
	if (source_get(s->p.tls_required_client_ca, "tls_required_client_ca", &file, &pem, err, errlen) != 0)
		return -1;
	const char *key = file ? file : pem;
	for (struct ca_cache *c = cas; c; c = c->next) {
		if (strcmp(c->key, key) == 0) {
			*out = c;
			return 0;
		}
	}
	struct ca_cache *c = xcalloc(1, sizeof *c);
	if (tls_ca_load(file, pem, &c->store, &c->names, err, errlen) != 0) {
		free(c);
		return -1;
	}
	c->key = xstrdup(key);
	c->next = cas;
	cas = c;
	*out = c;
	return 0;
}

/* The handshake never fails over the client's certificate: whether it
 * verified is read afterwards (SSL_get_verify_result). */
static int accept_any_certificate(int ok, X509_STORE_CTX *x)
{
	(void)ok;
	(void)x;
	return 1;
}

/* The subject of a verified client certificate as KumoMTA logs it: one
 * "SN=value" string per entry, in certificate order ("C=US", "CN=..."). */
static cJSON *subject_names(X509 *x)
{
	const X509_NAME *n = X509_get_subject_name(x);
	cJSON *a = cJSON_CreateArray();
	int count = X509_NAME_entry_count(n);
	for (int i = 0; i < count && i < SUBJECT_MAX_ENTRIES; i++) {
		const X509_NAME_ENTRY *e = X509_NAME_get_entry(n, i);
		const ASN1_OBJECT *o = X509_NAME_ENTRY_get_object(e);
		int nid = OBJ_obj2nid(o);
		char oid[80];
		const char *sn = nid != NID_undef ? OBJ_nid2sn(nid) : NULL;
		if (!sn) {
			OBJ_obj2txt(oid, sizeof oid, o, 1);
			sn = oid;
		}
		unsigned char *u = NULL;
		int len = ASN1_STRING_to_UTF8(&u, X509_NAME_ENTRY_get_data(e));
		if (len < 0)
			continue;
		char *item = xasprintf("%s=%.*s", sn, len > SUBJECT_MAX_VALUE ? SUBJECT_MAX_VALUE : len, (char *)u);
		cJSON_AddItemToArray(a, cJSON_CreateString(item));
		free(item);
		OPENSSL_free(u);
	}
	return a;
}

bool tls_available(struct session *s)
{
	return !s->tls && (s->p.tls_certificate ? true : s->listener->self_signed != NULL);
}

static void handshake_event(struct bufferevent *bev, short what, void *arg);

static void begin_tls(struct session *s)
{
	char err[600] = "cannot create the TLS session";
	struct ca_cache *ca = NULL;
	SSL_CTX *ctx = ctx_for(s, err, sizeof err);
	if (ctx && ca_for(s, &ca, err, sizeof err) != 0)
		ctx = NULL;
	SSL *ssl = ctx ? SSL_new(ctx) : NULL;
	if (!ssl) {
		log_warn("session %s: STARTTLS: %s", s->session_id, err);
		session_close(s);
		return;
	}
	if (ca) {
		/* ask for a client certificate; none, or one that does not
		 * verify, is not an error (tls_required_client_ca) */
		SSL_set_verify(ssl, SSL_VERIFY_PEER, accept_any_certificate);
		SSL_set1_verify_cert_store(ssl, ca->store);
		SSL_set_client_CA_list(ssl, SSL_dup_CA_list(ca->names));
		SSL_set_session_id_context(ssl, (const unsigned char *)"kumo-smtpd", 10);
	}
	/* RFC 3207 4.2: plaintext pipelined after STARTTLS is discarded */
	struct evbuffer *in = bufferevent_get_input(s->bev);
	size_t junk = evbuffer_get_length(in);
	if (junk) {
		log_info("session %s: discarded %zu bytes pipelined after STARTTLS", s->session_id, junk);
		evbuffer_drain(in, junk);
	}
	/* the socket's own write event carries the 220 and then the filter's
	 * output (plain sessions otherwise write from session_flush_all); the
	 * filter encrypts no more while REPLY_BACKLOG_MAX bytes wait there, so
	 * the backlog stays in its output, where session_resume looks */
	bufferevent_enable(s->bev, EV_WRITE);
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, REPLY_BACKLOG_MAX);
	struct bufferevent *tls = bufferevent_openssl_filter_new(smtpd->base, s->bev, ssl,
								 BUFFEREVENT_SSL_ACCEPTING,
								 BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!tls) {
		SSL_free(ssl);
		session_close(s);
		return;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
	s->bev = tls;
	s->tls = true;
	s->state = SS_WAIT;
	bufferevent_setcb(tls, NULL, NULL, handshake_event, s);
	struct timeval tv = { (time_t)s->p.client_timeout, 0 };
	bufferevent_set_timeouts(tls, &tv, &tv);
	size_t wm = s->p.data_buffer_size > 65536 ? s->p.data_buffer_size : 65536;
	bufferevent_setwatermark(tls, EV_READ, 0, wm);
	bufferevent_enable(tls, EV_READ | EV_WRITE);
}

static void handshake_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	if (!(what & BEV_EVENT_CONNECTED)) {
		unsigned long e = bufferevent_get_openssl_error(bev);
		char buf[200] = "";
		if (e)
			ERR_error_string_n(e, buf, sizeof buf);
		log_info("session %s: TLS handshake with %s failed%s%s", s->session_id, s->peer_str,
			 buf[0] ? ": " : "", buf);
		if (what & (BEV_EVENT_EOF | BEV_EVENT_TIMEOUT)) {
			session_close(s);
		} else {
			s->tls_closed = true; /* no close_notify; the alert goes out first */
			close_after_flush(s);
		}
		return;
	}
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	jdelete(s->meta, "tls_protocol_version");
	jdelete(s->meta, "tls_cipher");
	jadd_string(s->meta, "tls_protocol_version", SSL_get_version(ssl));
	jadd_string(s->meta, "tls_cipher", SSL_get_cipher_name(ssl));
	jdelete(s->meta, "tls_peer_subject_name");
	X509 *peer = s->p.tls_required_client_ca ? SSL_get0_peer_certificate(ssl) : NULL;
	if (peer) {
		long vr = SSL_get_verify_result(ssl);
		if (vr == X509_V_OK)
			jadd_item(s->meta, "tls_peer_subject_name", subject_names(peer));
		else
			log_debug("session %s: client certificate from %s not verified: %s", s->session_id,
				  s->peer_str, X509_verify_cert_error_string(vr));
	}
	/* RFC 3207 4.2: forget what the client said before TLS */
	jdelete(s->meta, "ehlo_domain");
	free(s->ehlo_domain);
	s->ehlo_domain = NULL;
	txn_free(s->txn);
	s->txn = NULL;
	session_set_callbacks(s);
	session_resume(s);
}

void run_starttls(struct session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	if (s->tls) {
		session_reply(s, 501, "Cannot STARTTLS as TLS is already active", DISC_NONE, session_resume);
		return;
	}
	char err[600];
	struct ca_cache *ca;
	if (!ctx_for(s, err, sizeof err) || ca_for(s, &ca, err, sizeof err) != 0) {
		log_warn("session %s: STARTTLS: %s", s->session_id, err);
		session_reply(s, 454, "4.7.0 TLS not available due to temporary reason", DISC_NONE, session_resume);
		return;
	}
	session_reply(s, 220, "Ready to Start TLS", DISC_NONE, begin_tls);
}
