/* smtpd_tls: STARTTLS (RFC 3207).  Entry points: tls_setup (at worker
 * start: the listeners' self-signed certificates from kumod), tls_available
 * and run_starttls (the verb).  Contexts for certificate files named by
 * peer/via/dynamic parameters are made on first use and kept.
 * After "220 Ready to Start TLS" whatever plaintext the client pipelined
 * is discarded, and the session forgets its EHLO and transaction.  A
 * failed handshake closes the connection. */
#include "smtpd/smtpd.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "lib/xalloc.h"

#include <string.h>
#include <openssl/err.h>
#include <event2/bufferevent_ssl.h>

struct ctx_cache {
	struct ctx_cache *next;
	char *key;      /* owned: "cert\nkey" */
	SSL_CTX *ctx;
};

static struct ctx_cache *cache;

void tls_setup(const cJSON *self_signed)
{
	char err[400];
	for (size_t i = 0; i < smtpd->n_listeners; i++) {
		const cJSON *e = cJSON_GetArrayItem(self_signed, (int)i);
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "cert");
		const cJSON *k = cJSON_GetObjectItemCaseSensitive(e, "key");
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
	for (size_t i = 0; i < smtpd->n_listeners; i++)
		SSL_CTX_free(smtpd->listeners[i].self_signed);
}

static const char *source_str(const cJSON *v, const char **pem)
{
	*pem = NULL;
	if (cJSON_IsString(v))
		return v->valuestring;
	const cJSON *kd = cJSON_GetObjectItemCaseSensitive(v, "key_data");
	if (cJSON_IsString(kd))
		*pem = kd->valuestring;
	return NULL;
}

/* The context for this session's effective tls_certificate/private_key. */
static SSL_CTX *ctx_for(struct session *s, char *err, size_t errlen)
{
	if (!s->p.tls_certificate || !s->p.tls_private_key) {
		if (!s->listener->self_signed)
			snprintf(err, errlen, "no certificate for this listener");
		return s->listener->self_signed;
	}
	const char *cpem, *kpem;
	const char *cf = source_str(s->p.tls_certificate, &cpem);
	const char *kf = source_str(s->p.tls_private_key, &kpem);
	if (!(cf || cpem) || !(kf || kpem)) {
		snprintf(err, errlen, "unsupported key source (vault)");
		return NULL;
	}
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

bool tls_available(struct session *s)
{
	return !s->tls && (s->p.tls_certificate ? true : s->listener->self_signed != NULL);
}

static void handshake_event(struct bufferevent *bev, short what, void *arg);

static void begin_tls(struct session *s)
{
	char err[300];
	SSL_CTX *ctx = ctx_for(s, err, sizeof err);
	SSL *ssl = ctx ? SSL_new(ctx) : NULL;
	if (!ssl) {
		log_warn("session %s: STARTTLS: %s", s->session_id, err);
		session_close(s);
		return;
	}
	/* RFC 3207 4.2: plaintext pipelined after STARTTLS is discarded */
	struct evbuffer *in = bufferevent_get_input(s->bev);
	size_t junk = evbuffer_get_length(in);
	if (junk) {
		log_info("session %s: discarded %zu bytes pipelined after STARTTLS", s->session_id, junk);
		evbuffer_drain(in, junk);
	}
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
	cJSON_DeleteItemFromObjectCaseSensitive(s->meta, "tls_protocol_version");
	cJSON_DeleteItemFromObjectCaseSensitive(s->meta, "tls_cipher");
	cJSON_AddStringToObject(s->meta, "tls_protocol_version", SSL_get_version(ssl));
	cJSON_AddStringToObject(s->meta, "tls_cipher", SSL_get_cipher_name(ssl));
	/* RFC 3207 4.2: forget what the client said before TLS */
	cJSON_DeleteItemFromObjectCaseSensitive(s->meta, "ehlo_domain");
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
	char err[300];
	if (!ctx_for(s, err, sizeof err)) {
		log_warn("session %s: STARTTLS: %s", s->session_id, err);
		session_reply(s, 454, "4.7.0 TLS not available due to temporary reason", DISC_NONE, session_resume);
		return;
	}
	session_reply(s, 220, "Ready to Start TLS", DISC_NONE, begin_tls);
}
