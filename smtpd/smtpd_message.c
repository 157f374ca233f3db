/* smtpd_message: the end of DATA.  Entry point: data_complete, once the
 * final dot is read.  Steps, each possibly waiting on policyd:
 *   1. limits found while reading (size, line length, line endings);
 *   2. smtp_server_data, once, with the whole transaction;
 *   3. the split into messages (batch_handling), each with its own id;
 *   4. smtp_server_message_received, once per message, in order;
 *   5. the spool writer stores them all (one group commit); then the
 *      Reception records and "250 OK ids=..." (on a plain session the
 *      writer thread sends that reply itself once all is stored:
 *      early_reply).
 * The bytes reach policyd by reference: only when a hook's policy asks for
 * them (lib/ipc.h "msg_file") is the body written (no fsync) to
 * <data spool>/new/<id>.msg, once per version of the body; the hooks'
 * edits come back as a prefix, a new header block or new data, applied
 * here without copying the body.  A rejection in any hook
 * rejects the whole transaction before anything is stored. */
#include "smtpd/smtpd.h"
#include "lib/jadd.h"
#include "lib/str.h"
#include "lib/base64.h"
#include "lib/jsonw.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static void batch_free(struct batch *b)
{
	free(b->sender);
	cJSON_Delete(b->recipients);
	cJSON_Delete(b->meta);
	free(b->prefix);
	free(b->headers);
	free(b->data);
	free(b->iov);
	free(b->meta_text);
	memset(b, 0, sizeof *b);
}

void message_free(struct txn *t)
{
	batch_free(&t->proto);
	for (size_t i = 0; i < t->n_batches; i++)
		batch_free(&t->batches[i]);
	free(t->batches);
	free(t->vec);
	free(t->first_received);
	cJSON_Delete(t->then_reply);
	if (t->msg_path) {
		unlink(t->msg_path);
		free(t->msg_path);
	}
}

static const char *domain_of_email(const char *email)
{
	const char *at = strrchr(email, '@');
	return at ? at + 1 : "";
}

/* ---------------------------------------------------------- body views */

static void body_vec(struct txn *t)
{
	free(t->vec);
	t->nvec = evbuffer_peek(t->body, -1, NULL, NULL, 0);
	t->vec = xcalloc((size_t)(t->nvec > 0 ? t->nvec : 1), sizeof *t->vec);
	struct evbuffer_iovec *ev = xcalloc((size_t)(t->nvec > 0 ? t->nvec : 1), sizeof *ev);
	if (t->nvec > 0)
		evbuffer_peek(t->body, -1, NULL, ev, t->nvec);
	for (int i = 0; i < t->nvec; i++) {
		t->vec[i].iov_base = ev[i].iov_base;
		t->vec[i].iov_len = ev[i].iov_len;
	}
	free(ev);
	if (t->nvec < 0)
		t->nvec = 0;
	/* the header block ends where the first empty line starts */
	size_t len = evbuffer_get_length(t->body);
	t->hdr_end = -1;
	if (len >= 2) {
		char two[2];
		evbuffer_copyout(t->body, two, 2);
		if (two[0] == '\r' && two[1] == '\n') {
			t->hdr_end = 0;
			return;
		}
	}
	struct evbuffer_ptr p = evbuffer_search(t->body, "\r\n\r\n", 4, NULL);
	if (p.pos >= 0)
		t->hdr_end = p.pos + 2;
}

/* Appends to out the iovecs of the body from byte offset `from`. */
static void add_tail(struct txn *t, size_t from, struct iovec **out, int *n, int *cap)
{
	size_t off = 0;
	for (int i = 0; i < t->nvec; i++) {
		size_t len = t->vec[i].iov_len;
		if (off + len > from) {
			size_t skip = from > off ? from - off : 0;
			if (*n == *cap) {
				*cap = *cap * 2 + 4;
				*out = xrealloc(*out, (size_t)*cap * sizeof **out);
			}
			(*out)[*n].iov_base = (char *)t->vec[i].iov_base + skip;
			(*out)[*n].iov_len = len - skip;
			(*n)++;
		}
		off += len;
	}
}

static void push_iov(struct iovec **out, int *n, int *cap, const char *p, size_t len)
{
	if (len == 0)
		return;
	if (*n == *cap) {
		*cap = *cap * 2 + 4;
		*out = xrealloc(*out, (size_t)*cap * sizeof **out);
	}
	(*out)[*n].iov_base = (void *)p;
	(*out)[*n].iov_len = len;
	(*n)++;
}

/* The bytes of batch b: its edits over the shared body. */
static void batch_view(struct txn *t, struct batch *b)
{
	struct iovec *v = NULL;
	int n = 0, cap = 0;
	if (b->data) {
		push_iov(&v, &n, &cap, b->data, b->data_len);
	} else {
		if (b->prefix)
			push_iov(&v, &n, &cap, b->prefix, strlen(b->prefix));
		if (b->headers && t->hdr_end >= 0) {
			push_iov(&v, &n, &cap, b->headers, strlen(b->headers));
			add_tail(t, (size_t)t->hdr_end, &v, &n, &cap);
		} else {
			add_tail(t, 0, &v, &n, &cap);
		}
	}
	free(b->iov);
	b->iov = v;
	b->iovcnt = n;
	b->size = 0;
	for (int i = 0; i < n; i++)
		b->size += v[i].iov_len;
}

/* Rebuilds the shared body from batch b's edits (after smtp_server_data). */
static void body_from_batch(struct txn *t, struct batch *b)
{
	if (!b->data && !b->prefix && !b->headers)
		return;
	batch_view(t, b);
	struct evbuffer *nb = evbuffer_new();
	for (int i = 0; i < b->iovcnt; i++)
		evbuffer_add(nb, b->iov[i].iov_base, b->iov[i].iov_len);
	evbuffer_free(t->body);
	t->body = nb;
	free(b->prefix);
	free(b->headers);
	free(b->data);
	b->prefix = b->headers = b->data = NULL;
	body_vec(t);
}

static int write_msg_file(struct txn *t, char *err, size_t errlen)
{
	if (!t->msg_path) {
		char id[SPOOL_ID_LEN + 1];
		spool_id_new(id);
		t->msg_path = xasprintf("%s/new/%s.msg", smtpd->spool.data_path, id);
	}
	int fd = open(t->msg_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, errlen, "%s: %s", t->msg_path, strerror(errno));
		return -1;
	}
	int rc = 0;
	for (int i = 0; i < t->nvec && rc == 0; i++) {
		const char *p = t->vec[i].iov_base;
		size_t left = t->vec[i].iov_len;
		while (left > 0) {
			ssize_t w = write(fd, p, left);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				snprintf(err, errlen, "%s: %s", t->msg_path, strerror(errno));
				rc = -1;
				break;
			}
			p += w;
			left -= (size_t)w;
		}
	}
	close(fd);
	return rc;
}

/* ---------------------------------------------------------- hooks */

/* meta_from_conn: b's meta is the same as the connection metadata sent
 * with it, so policyd copies that (lib/ipc.h) instead of reading it twice. */
static cJSON *msg_arg(struct txn *t, const struct batch *b, bool meta_from_conn)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *m = jadd_object(o, "__msg");
	jadd_string(m, "id", b->id);
	jadd_string(m, "sender", b->sender);
	/* printed at once by policy_call, not kept: the batch's own, by
	 * reference.  No meta: the message that the event before continues
	 * (lib/ipc.h "then"). */
	jadd_item(m, "recipients", cJSON_CreateArrayReference(b->recipients->child));
	if (meta_from_conn)
		jadd_bool(m, "meta_from_conn", 1);
	else if (b->meta)
		jadd_item(m, "meta", cJSON_CreateObjectReference(b->meta->child));
	if (t->msg_path)
		jadd_string(m, "path", t->msg_path);
	else
		jadd_bool(m, "fetch", 1); /* written when policyd asks */
	jadd_number(m, "size", (double)evbuffer_get_length(t->body));
	jadd_number(m, "hdr_end", (double)t->hdr_end);
	if (b->prefix)
		jadd_string(m, "prefix", b->prefix);
	return o;
}

/* Takes the handler's changes to the message from the reply. */
static int apply_msg_reply(struct batch *b, const cJSON *reply)
{
	if (cJSON_IsTrue(jget(reply, "nohandler")))
		return 0; /* a reload removed the handler: nothing changed */
	cJSON *m = jget(reply, "msg");
	if (!cJSON_IsObject(m))
		return -1;
	const cJSON *v = jget(m, "sender");
	if (cJSON_IsString(v)) {
		free(b->sender);
		b->sender = xstrdup(v->valuestring);
	}
	v = jget(m, "recipients");
	if (cJSON_IsArray(v)) {
		cJSON_Delete(b->recipients);
		b->recipients = policy_reply_take(m, "recipients");
	}
	v = jget(m, "meta");
	if (cJSON_IsObject(v)) {
		cJSON_Delete(b->meta);
		b->meta = policy_reply_take(m, "meta");
	}
	if (!b->meta)
		b->meta = cJSON_CreateObject();
	policy_meta_apply(b->meta, m);
	v = jget(m, "data");
	if (cJSON_IsString(v)) {
		free(b->data);
		free(b->prefix);
		free(b->headers);
		b->prefix = b->headers = NULL;
		b->data_len = strlen(v->valuestring);
		b->data = xstrdup(v->valuestring);
		return 0;
	}
	v = jget(m, "prefix");
	if (cJSON_IsString(v)) {
		/* the whole prefix: the one sent (if any) plus what the handler added */
		free(b->prefix);
		b->prefix = xstrdup(v->valuestring);
	}
	v = jget(m, "headers");
	if (cJSON_IsString(v)) {
		free(b->headers);
		b->headers = xstrdup(v->valuestring);
	}
	return 0;
}

static void store(struct session *s);
static void next_received(struct session *s);

/* policyd asks for the bytes of the message argument of the call in flight. */
static const char *msg_file(void *ctx, char *err, size_t errlen)
{
	struct session *s = ctx;
	struct txn *t = s->txn;
	if (!t || !t->body) {
		snprintf(err, errlen, "no message");
		return NULL;
	}
	if (!t->msg_path && write_msg_file(t, err, errlen) != 0) {
		unlink(t->msg_path);
		free(t->msg_path);
		t->msg_path = NULL;
		return NULL;
	}
	return t->msg_path;
}

/* A rejected or failed message hook ends the transaction; it is cleared
 * before the reply, whose continuation may read the next command. */
static int message_hook_result(struct session *s, const cJSON *reply, const char *error, const char *event)
{
	const cJSON *res = reply ? jget(reply, "result") : NULL;
	bool ok = !error && cJSON_IsTrue(jget(reply, "ok")) && cJSON_IsString(res) &&
		  strcmp(res->valuestring, "ok") == 0;
	if (!ok && s->state != SS_DEAD)
		txn_reset(s);
	if (error && strcmp(error, POLICY_TIMEOUT) == 0 && s->state != SS_DEAD) {
		/* as KumoMTA: a transient failure for this message, the session goes on */
		s->policy_req = 0;
		log_warn("session %s: %s: data_processing_timeout exceeded", s->session_id, event);
		reply_ok(s, 451, "4.4.5 data_processing_timeout exceeded (rx)");
		return 0;
	}
	return session_event_result(s, reply, error, event, false);
}

static void received_done(void *ctx, const cJSON *reply, const char *error)
{
	struct session *s = ctx;
	if (!message_hook_result(s, reply, error, "smtp_server_message_received"))
		return;
	struct txn *t = s->txn;
	if (apply_msg_reply(&t->batches[t->cur], reply) != 0) {
		session_technical_difficulties(s, "smtp_server_message_received: reply lacks the message");
		return;
	}
	t->cur++;
	next_received(s);
}

static void next_received(struct session *s)
{
	struct txn *t = s->txn;
	if (s->p.deferred_queue) {
		/* KumoMTA's deferred_queue: no smtp_server_message_received;
		 * kumo-qmgr runs smtp_server_message_deferred_inject later */
		for (size_t i = 0; i < t->n_batches; i++) {
			jdelete(t->batches[i].meta, "queue");
			jadd_string(t->batches[i].meta, "queue", "deferred_smtp_inject.kumomta.internal");
		}
		store(s);
		return;
	}
	if (t->then_reply) {
		/* answered along with smtp_server_data; policyd ran it only if the
		 * message is still the one it was sent as, which split() made
		 * with the id and Received header it was sent with */
		cJSON *r = t->then_reply;
		t->then_reply = NULL;
		if (t->cur == 0 && t->n_batches == 1) {
			received_done(s, r, NULL);
			cJSON_Delete(r);
			return;
		}
		cJSON_Delete(r);
	}
	if (t->cur >= t->n_batches || !policy_has_ev(smtpd->policy, PEV_MESSAGE_RECEIVED)) {
		store(s);
		return;
	}
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, msg_arg(t, &t->batches[t->cur], false));
	s->policy_req = policy_call(smtpd->policy, "smtp_server_message_received", args, 1, s->meta,
				    s->p.data_processing_timeout, received_done, s);
	policy_set_msg_file(smtpd->policy, s->policy_req, msg_file);
}

/* ---------------------------------------------------------- trace headers */

/* RFC 2822 date as chrono's to_rfc2822 prints it: day not zero-padded. */
static void rfc2822_now(char *buf, size_t len)
{
	static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	static time_t cached_at = (time_t)-1; /* the worker's loop thread only */
	static char cached[64];
	time_t now = time(NULL);
	if (now != cached_at) {
		struct tm tm;
		gmtime_r(&now, &tm);
		snprintf(cached, sizeof cached, "%s, %d %s %d %02d:%02d:%02d +0000", days[tm.tm_wday],
			 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
		cached_at = now;
	}
	str_copy(buf, len, cached);
}

static void jbuf_cat(struct jbuf *j, const char *s)
{
	jbuf_add(j, s, strlen(s));
}

/* KumoMTA's Received header, byte for byte (see the wire facts). */
static char *received_header(struct session *s, const struct batch *b, const char *date)
{
	char local_ip[64];
	const char *colon = strrchr(s->local_str, ':');
	size_t ip_len = colon ? (size_t)(colon - s->local_str) : 0;
	if (ip_len >= sizeof local_ip)
		ip_len = sizeof local_ip - 1;
	memcpy(local_ip, s->local_str, ip_len);
	local_ip[ip_len] = '\0';
	if (local_ip[0] == '[') { /* [v6] -> v6 */
		memmove(local_ip, local_ip + 1, strlen(local_ip));
		local_ip[strlen(local_ip) - 1] = '\0';
	}
	const cJSON *tv = jget(s->meta, "tls_protocol_version");
	const cJSON *tc = jget(s->meta, "tls_cipher");
	char tls[200] = "";
	if (s->tls && cJSON_IsString(tv) && cJSON_IsString(tc))
		snprintf(tls, sizeof tls, " (%s:%s) ", tv->valuestring, tc->valuestring);
	const cJSON *first = cJSON_GetArrayItem(b->recipients, 0);
	/* "Received: from %s (%s)\r\n  by %s (KumoMTA %s) \r\n  with %s%s id %s
	 * for <%s>;\r\n  %s\r\n", put together without printf */
	struct jbuf j = { 0 };
	jbuf_cat(&j, "Received: from ");
	jbuf_cat(&j, s->ehlo_domain ? s->ehlo_domain : "unspecified");
	jbuf_cat(&j, " (");
	jbuf_cat(&j, s->peer_ip_str);
	jbuf_cat(&j, ")\r\n  by ");
	jbuf_cat(&j, s->p.hostname);
	jbuf_cat(&j, " (KumoMTA ");
	jbuf_cat(&j, local_ip);
	jbuf_cat(&j, ") \r\n  with ");
	jbuf_cat(&j, s->tls && s->authenticated ? "ESMTPSA" : s->tls ? "ESMTPS" : "ESMTP");
	jbuf_cat(&j, tls);
	jbuf_cat(&j, " id ");
	jbuf_cat(&j, b->id);
	jbuf_cat(&j, " for <");
	jbuf_cat(&j, cJSON_IsString(first) ? first->valuestring : "");
	jbuf_cat(&j, ">;\r\n  ");
	jbuf_cat(&j, date);
	jbuf_cat(&j, "\r\n");
	return jbuf_cstr(&j);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The supplemental X-KumoRef header: base64 of a JSON object with sorted
 * keys, folded every 75 characters. */
static char *supplemental_header(struct session *s, const struct batch *b)
{
	const struct trace_headers *th = &s->p.trace_headers;
	size_t n = th->n_include_meta_names + 2;
	const char **keys = xcalloc(n, sizeof *keys);
	keys[0] = "_@_";
	keys[1] = "recipient";
	for (size_t i = 0; i < th->n_include_meta_names; i++)
		keys[2 + i] = th->include_meta_names[i];
	qsort(keys, n, sizeof *keys, cmp_str);
	cJSON *o = cJSON_CreateObject();
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && strcmp(keys[i], keys[i - 1]) == 0)
			continue;
		if (strcmp(keys[i], "_@_") == 0) {
			jadd_string(o, "_@_", "\\_/");
		} else if (strcmp(keys[i], "recipient") == 0) {
			if (cJSON_GetArraySize(b->recipients) == 1)
				jadd_item(o, "recipient", cJSON_Duplicate(cJSON_GetArrayItem(b->recipients, 0), 1));
			else
				jadd_item(o, "recipient", cJSON_Duplicate(b->recipients, 1));
		} else {
			const cJSON *v = jfind(b->meta, keys[i]);
			cJSON_AddItemToObject(o, keys[i], v ? cJSON_Duplicate(v, 1) : cJSON_CreateNull());
		}
	}
	free(keys);
	size_t jlen;
	char *json = json_print(o, &jlen);
	cJSON_Delete(o);
	char *b64 = base64_encode(json, jlen);
	free(json);
	size_t len = strlen(b64), cap = len + len / 75 * 3 + strlen(th->header_name) + 8;
	char *out = xmalloc(cap);
	size_t k = (size_t)snprintf(out, cap, "%s: ", th->header_name);
	for (size_t i = 0; i < len; i += 75) {
		if (i > 0) {
			memcpy(out + k, "\r\n\t", 3);
			k += 3;
		}
		size_t chunk = len - i < 75 ? len - i : 75;
		memcpy(out + k, b64 + i, chunk);
		k += chunk;
	}
	memcpy(out + k, "\r\n", 3);
	free(b64);
	return out;
}

static void prepend(struct batch *b, char *text)
{
	if (b->data) {
		char *nd = xmalloc(strlen(text) + b->data_len + 1);
		memcpy(nd, text, strlen(text));
		memcpy(nd + strlen(text), b->data, b->data_len + 1);
		b->data_len += strlen(text);
		free(b->data);
		b->data = nd;
	} else {
		size_t tl = strlen(text), pl = b->prefix ? strlen(b->prefix) : 0;
		char *np = xmalloc(tl + pl + 1);
		memcpy(np, text, tl);
		if (pl)
			memcpy(np + tl, b->prefix, pl);
		np[tl + pl] = '\0';
		free(b->prefix);
		b->prefix = np;
	}
	free(text);
}

/* Splits the transaction into messages, one per recipient or per domain. */
static void split(struct session *s)
{
	struct txn *t = s->txn;
	size_t n = (size_t)cJSON_GetArraySize(t->proto.recipients);
	t->batches = xcalloc(n ? n : 1, sizeof *t->batches);
	t->n_batches = 0;
	bool *used = xcalloc(n ? n : 1, sizeof *used);
	for (size_t i = 0; i < n; i++) {
		if (used[i])
			continue;
		struct batch *b = &t->batches[t->n_batches++];
		if (t->n_batches == 1 && t->first_id[0])
			memcpy(b->id, t->first_id, sizeof b->id);
		else
			spool_id_new(b->id);
		b->sender = xstrdup(t->proto.sender);
		/* the first message takes the transaction's meta (nothing uses it
		 * after the split), the others copy it (hooks may change each) */
		if (t->n_batches == 1) {
			b->meta = t->proto.meta;
			t->proto.meta = NULL;
		} else {
			b->meta = cJSON_Duplicate(t->batches[0].meta, 1);
		}
		b->recipients = cJSON_CreateArray();
		const char *di = domain_of_email(cJSON_GetArrayItem(t->proto.recipients, (int)i)->valuestring);
		for (size_t j = i; j < n; j++) {
			const char *rj = cJSON_GetArrayItem(t->proto.recipients, (int)j)->valuestring;
			bool same = j == i || (s->p.batch_handling == BATCH_BY_DOMAIN && !used[j] &&
					       strcasecmp(di, domain_of_email(rj)) == 0);
			if (same) {
				used[j] = true;
				cJSON_AddItemToArray(b->recipients, cJSON_CreateString(rj));
			}
		}
	}
	free(used);
	t->cur = 0;
	if (s->p.trace_headers.received_header) {
		char date[64];
		rfc2822_now(date, sizeof date);
		for (size_t i = 0; i < t->n_batches; i++) {
			/* the header message_received was sent along with (the
			 * same message: policyd checked that data changed none of it) */
			char *h = i == 0 && t->then_reply && t->first_received ? t->first_received
				 : received_header(s, &t->batches[i], date);
			if (h == t->first_received)
				t->first_received = NULL;
			prepend(&t->batches[i], h);
		}
	}
}

static void data_hook_done(void *ctx, const cJSON *reply, const char *error)
{
	struct session *s = ctx;
	cJSON *then = policy_reply_take(reply, "then");
	if (!message_hook_result(s, reply, error, "smtp_server_data")) {
		cJSON_Delete(then);
		return;
	}
	struct txn *t = s->txn;
	t->then_reply = then;
	if (apply_msg_reply(&t->proto, reply) != 0) {
		session_technical_difficulties(s, "smtp_server_data: reply lacks the message");
		return;
	}
	const cJSON *r;
	cJSON_ArrayForEach(r, t->proto.recipients) {
		if (!cJSON_IsString(r)) {
			session_technical_difficulties(s, "smtp_server_data: bad recipient list");
			return;
		}
	}
	if (t->proto.data || t->proto.prefix || t->proto.headers) {
		body_from_batch(t, &t->proto);
		if (t->msg_path) {
			/* the file holds the old bytes: written again if asked */
			unlink(t->msg_path);
			free(t->msg_path);
			t->msg_path = NULL;
		}
	}
	split(s);
	next_received(s);
}

/* A transaction that split() will make one message, as it stands. */
static bool one_message(struct session *s)
{
	const cJSON *r = s->txn->proto.recipients, *first = r->child;
	if (!first || !first->next)
		return true;
	if (s->p.batch_handling != BATCH_BY_DOMAIN)
		return false;
	const char *d = domain_of_email(first->valuestring);
	for (const cJSON *x = first->next; x; x = x->next)
		if (strcasecmp(d, domain_of_email(x->valuestring)) != 0)
			return false;
	return true;
}

/* smtp_server_message_received for the one message that the transaction
 * becomes, to go along with smtp_server_data (lib/ipc.h "then"), or NULL.
 * Its id and Received header are made now; split() uses them if policyd
 * ran it, which it does only when smtp_server_data changed nothing of the
 * message but its meta: then the message is the one described here. */
static cJSON *received_then(struct session *s)
{
	struct txn *t = s->txn;
	if (s->p.deferred_queue || !policy_has_ev(smtpd->policy, PEV_MESSAGE_RECEIVED) ||
	    !one_message(s))
		return NULL;
	spool_id_new(t->first_id);
	struct batch b = { .sender = t->proto.sender, .recipients = t->proto.recipients };
	memcpy(b.id, t->first_id, sizeof b.id);
	if (s->p.trace_headers.received_header) {
		char date[64];
		rfc2822_now(date, sizeof date);
		t->first_received = received_header(s, &b, date);
		b.prefix = t->first_received;
	}
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, msg_arg(t, &b, false));
	return policy_then("smtp_server_message_received", args, 1);
}

void data_complete(struct session *s)
{
	struct txn *t = s->txn;
	free(s->cur_cmd);
	s->cur_cmd = xstrdup("DATA");
	s->state = SS_WAIT;
	if (t->dr.too_big) {
		txn_reset(s);
		reply_ok(s, 552, "5.3.4 message too big");
		return;
	}
	if (t->dr.line_too_long) {
		txn_reset(s);
		reply_ok(s, 500, "5.2.3 line too long");
		return;
	}
	if (t->dr.bad_line_endings && s->p.invalid_line_endings == ILE_DENY) {
		txn_reset(s);
		reply_ok(s, 552, "5.6.0 message data must use CRLF for line endings");
		return;
	}
	body_vec(t);
	/* the transaction as one message: the connection meta becomes its meta */
	spool_id_new(t->proto.id);
	t->proto.sender = xstrdup(t->sender.email);
	t->proto.recipients = cJSON_CreateArray();
	for (size_t i = 0; i < t->n_rcpts; i++)
		cJSON_AddItemToArray(t->proto.recipients, cJSON_CreateString(t->rcpts[i].addr.email));
	t->proto.meta = cJSON_Duplicate(s->meta, 1);

	if (!policy_has_ev(smtpd->policy, PEV_DATA)) {
		split(s);
		next_received(s);
		return;
	}
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, msg_arg(t, &t->proto, true));
	s->policy_req = policy_call_then(smtpd->policy, "smtp_server_data", args, 1, s->meta,
					 received_then(s), s->p.data_processing_timeout, data_hook_done, s);
	policy_set_msg_file(smtpd->policy, s->policy_req, msg_file);
}

/* ---------------------------------------------------------- storing */

static void log_reception(struct session *s, const struct batch *b)
{
	const cJSON *q = jget(b->meta, "queue");
	const cJSON *first = cJSON_GetArrayItem(b->recipients, 0);
	bool one = cJSON_GetArraySize(b->recipients) == 1;
	struct logrec_fields f = {
		.type = "Reception", .id = b->id, .created = spool_id_time(b->id), .sender = b->sender,
		.recipient = one ? first->valuestring : NULL, .recipient_json = one ? NULL : b->recipients,
		.queue = cJSON_IsString(q) ? q->valuestring : cJSON_IsString(first) ? domain_of_email(first->valuestring) : "",
		.size = (double)b->size, .response = true, .code = 250, .text = "",
		.peer_name = s->ehlo_domain ? s->ehlo_domain : "", .peer_addr = s->peer_ip_str,
		.session_id = s->session_id,
	};
	const cJSON *tv = jget(b->meta, "tls_protocol_version");
	const cJSON *tc = jget(b->meta, "tls_cipher");
	cJSON *extra = NULL;
	if (cJSON_IsString(tv) && cJSON_IsString(tc)) {
		extra = cJSON_CreateObject();
		jadd_string(extra, "tls_protocol_version", tv->valuestring);
		jadd_string(extra, "tls_cipher", tc->valuestring);
		const cJSON *sn = jget(b->meta, "tls_peer_subject_name");
		if (cJSON_IsArray(sn))
			jadd_item(extra, "tls_peer_subject_name", cJSON_Duplicate(sn, 1));
		f.extra = extra;
	}
	char err[200];
	if (logrec_put(&smtpd->logs, &f, err, sizeof err) != 0)
		log_warn("session %s: %s", s->session_id, err);
	cJSON_Delete(extra);
}

/* "<head>ids=<ids><tail>", the ids those of the messages stored (or sent
 * to the null queue), in order, one space between them; how many in *n,
 * the text's length in *len. */
static char *ids_text(const struct txn *t, const char *head, const char *tail, size_t *n,
		      size_t *len)
{
	size_t cap = strlen(head) + strlen(tail) + 8 + t->n_batches * (SPOOL_ID_LEN + 1);
	char *text = xmalloc(cap), *o = str_put(text, head);
	o = str_put(o, "ids=");
	*n = 0;
	for (size_t i = 0; i < t->n_batches; i++) {
		const struct batch *b = &t->batches[i];
		if (b->iovcnt < 0)
			continue; /* failed to store */
		if (*n)
			*o++ = ' ';
		o = str_put(o, b->id);
		(*n)++;
	}
	o = str_put(o, tail);
	*o = '\0';
	*len = (size_t)(o - text);
	return text;
}

/* A Reception record for each message of the transaction that was stored
 * (or sent to the null queue); gone: the client left before its reply. */
static void log_receptions(struct session *s, bool gone)
{
	const struct txn *t = s->txn;
	for (size_t i = 0; i < t->n_batches; i++) {
		const struct batch *b = &t->batches[i];
		if (b->iovcnt < 0)
			continue; /* failed to store */
		log_reception(s, b);
		if (gone && !b->discard)
			log_info("session %s: message %s stored after the client disconnected",
				 s->session_id, b->id);
	}
}

static void finish(struct session *s, size_t failed, bool nospace)
{
	size_t ok, len;
	char *text = ids_text(s->txn, failed ? "PARTIAL " : "OK ", "", &ok, &len);
	log_receptions(s, false);
	txn_reset(s);
	if (ok == 0) {
		if (nospace)
			replyf(s, 452, "4.3.1 %s insufficient system storage", s->p.hostname);
		else
			replyf(s, 451, "4.3.0 %s spool write failed. Try later", s->p.hostname);
	} else {
		/* when every message was stored, the same text as early_reply's */
		reply_ok(s, 250, text);
	}
	free(text);
}

/* The reply finish() will give if the job stores everything, for the
 * writer thread to send the moment it has (smtpd_spool.c): on a plain
 * session (TLS writes through OpenSSL, in the loop) whose earlier replies
 * have all left, and with no smtp_server_rewrite_response to run on it.
 * Until the job returns, nothing else is written to the session (it reads
 * no command meanwhile), and its socket stays open (session_close). */
static void early_reply(struct session *s, struct spool_job *job)
{
	if (s->tls || !s->bev || s->p.deferred_spool ||
	    evbuffer_get_length(bufferevent_get_output(s->bev)) > 0 ||
	    policy_has_ev(smtpd->policy, PEV_REWRITE_RESPONSE))
		return;
	size_t n;
	job->early = ids_text(s->txn, "250 OK ", "\r\n", &n, &job->early_len);
	job->early_fd = bufferevent_getfd(s->bev);
	s->early_pending = true;
}

/* Tells the queue manager about every message the job stored. */
static void announce(const struct spool_job *job)
{
	const struct spool_item **items = xcalloc(job->n ? job->n : 1, sizeof *items);
	size_t n = 0;
	for (size_t i = 0; i < job->n; i++)
		if (job->items[i].result == 0)
			items[n++] = &job->items[i];
	qmgr_notify(smtpd->qmgr, items, n);
	free(items);
}

static void spool_finished(struct spool_job *job, void *ctx)
{
	struct session *s = ctx;
	if (job->early) {
		s->early_pending = false;
		if (s->early_fd_held) {
			close(job->early_fd);  /* the session closed it meanwhile */
			s->early_fd_held = false;
		}
		if (!job->failed)
			s->early_skip = job->early_sent;
		free(job->early);
		job->early = NULL;
	}
	if (job->in_memory && job->failed && smtpd->writer) {
		/* the queue manager could not take it: store it durably */
		log_info("session %s: deferred_spool: %s; storing durably", s->session_id, job->items[0].err);
		job->in_memory = false;
		spool_writer_submit(smtpd->writer, job);
		return;
	}
	s->spool_pending = false;
	if (!job->in_memory)
		announce(job);
	struct txn *t = s->txn;
	size_t failed = 0, k = 0;
	bool nospace = false;
	for (size_t i = 0; i < t->n_batches; i++) {
		struct batch *b = &t->batches[i];
		if (b->discard)
			continue;
		struct spool_item *it = &job->items[k++];
		if (it->result != 0) {
			log_warn("session %s: message %s not stored: %s", s->session_id, it->id, it->err);
			nospace |= strstr(it->err, strerror(ENOSPC)) != NULL || strstr(it->err, strerror(EDQUOT)) != NULL;
			b->iovcnt = -1;
			failed++;
		}
	}
	free(job->items);
	free(job);
	if (s->state == SS_DEAD) {
		/* the client left before its reply; what was stored stays
		 * stored, is logged as received, and is relayed */
		log_receptions(s, true);
		session_free(s);
		return;
	}
	finish(s, failed, nospace);
	s->early_skip = 0;
}

static void store(struct session *s)
{
	struct txn *t = s->txn;
	size_t n = 0;
	for (size_t i = 0; i < t->n_batches; i++) {
		struct batch *b = &t->batches[i];
		if (s->p.trace_headers.supplemental_header)
			prepend(b, supplemental_header(s, b));
		batch_view(t, b);
		const cJSON *q = jget(b->meta, "queue");
		b->discard = cJSON_IsString(q) && strcmp(q->valuestring, "null") == 0;
		if (b->discard)
			continue;
		cJSON *m = cJSON_CreateObject();
		jadd_string(m, "sender", b->sender);
		if (cJSON_GetArraySize(b->recipients) == 1)
			jadd_string(m, "recipient", cJSON_GetArrayItem(b->recipients, 0)->valuestring);
		else
			jadd_item(m, "recipient", cJSON_CreateArrayReference(b->recipients->child));
		/* printed, not kept: the batch's own meta, by reference */
		jadd_item(m, "meta", cJSON_CreateObjectReference(b->meta->child));
		jadd_null(m, "schedule");
		struct jbuf jb = { 0 };
		jbuf_value(&jb, m);
		jbuf_add(&jb, "\n", 1); /* one line */
		cJSON_Delete(m);
		b->meta_text = jbuf_cstr(&jb);
		n++;
	}
	if (t->msg_path) {
		unlink(t->msg_path);
		free(t->msg_path);
		t->msg_path = NULL;
	}
	if (n == 0) {
		finish(s, 0, false); /* every message went to the null queue */
		return;
	}
	struct spool_job *job = xcalloc(1, sizeof *job);
	job->items = xcalloc(n, sizeof *job->items);
	job->n = n;
	job->done = spool_finished;
	job->ctx = s;
	size_t k = 0;
	for (size_t i = 0; i < t->n_batches; i++) {
		struct batch *b = &t->batches[i];
		if (b->discard)
			continue;
		struct spool_item *it = &job->items[k++];
		memcpy(it->id, b->id, sizeof it->id);
		it->data = b->iov;
		it->data_cnt = b->iovcnt;
		it->meta = b->meta_text;
		it->meta_len = strlen(b->meta_text);
	}
	s->spool_pending = true;
	if (s->p.deferred_spool && qmgr_inject(smtpd->qmgr, job) == 0)
		return;
	early_reply(s, job);
	spool_writer_submit(smtpd->writer, job);
}
