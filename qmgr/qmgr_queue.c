/* qmgr_queue: messages, scheduled queues, ready queues and delivery
 * outcomes (see qmgr.h for the model).
 *
 * A message is in one place at a time: the timer heap (M_WAIT), its
 * scheduled queue's due list (M_DUE, waiting for get_queue_config or the
 * MX answer), a ready queue (M_READY) or a connection (M_FLIGHT).  Every
 * outcome writes one log record per message: Delivery, TransientFailure
 * (then the message waits retry_interval, doubling up to
 * max_retry_interval), Bounce or Expiration (both remove it).  A message
 * received with deferred_spool lives in memory until its first transient
 * failure or shutdown, when it is written to the spool.
 * Entry points are declared in qmgr.h. */
#include "qmgr/qmgr.h"
#include "lib/str.h"
#include "lib/jadd.h"
#include "lib/jsonr.h"
#include "lib/log.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#define SQ_BUCKETS 4096

struct qmgr *Q;

double now_real(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct squeue *sq_hash[SQ_BUCKETS];

static void squeue_kick(struct squeue *sq);
static struct squeue *queue_for(const cJSON *meta, const char *rcpt);
static void rqueue_kick(struct rqueue *rq);
static void conn_next(struct conn *c);
static void timer_arm(void);
static void compact_soon(void);
static void mem_wait_drop(struct qmsg *m);

/* ---- small containers ---------------------------------------------------- */

static void list_push(struct msg_list *l, struct qmsg *m)
{
	m->next = NULL;
	m->prev = l->tail;
	if (l->tail)
		l->tail->next = m;
	else
		l->head = m;
	l->tail = m;
	l->n++;
}

static void list_remove(struct msg_list *l, struct qmsg *m)
{
	if (m->prev)
		m->prev->next = m->next;
	else
		l->head = m->next;
	if (m->next)
		m->next->prev = m->prev;
	else
		l->tail = m->prev;
	m->next = m->prev = NULL;
	l->n--;
}

static struct qmsg *list_pop(struct msg_list *l)
{
	struct qmsg *m = l->head;
	if (m)
		list_remove(l, m);
	return m;
}

static size_t hash_str(const char *s)
{
	size_t h = 5381;
	while (*s)
		h = h * 33 + (unsigned char)*s++;
	return h;
}

static void id_insert(struct qmsg *m)
{
	if (Q->n_msgs + 1 > Q->hash_size) {
		size_t nsize = Q->hash_size ? Q->hash_size * 2 : 1024;
		struct qmsg **nh = xcalloc(nsize, sizeof *nh);
		for (size_t i = 0; i < Q->hash_size; i++) {
			struct qmsg *e = Q->hash[i];
			while (e) {
				struct qmsg *next = e->hnext;
				size_t b = hash_str(e->id) % nsize;
				e->hnext = nh[b];
				nh[b] = e;
				e = next;
			}
		}
		free(Q->hash);
		Q->hash = nh;
		Q->hash_size = nsize;
	}
	size_t b = hash_str(m->id) % Q->hash_size;
	m->hnext = Q->hash[b];
	Q->hash[b] = m;
	Q->n_msgs++;
}

struct qmsg *qmgr_find(const char *id)
{
	if (!Q->hash_size)
		return NULL;
	for (struct qmsg *e = Q->hash[hash_str(id) % Q->hash_size]; e; e = e->hnext)
		if (strcmp(e->id, id) == 0)
			return e;
	return NULL;
}

static void id_remove(struct qmsg *m)
{
	for (struct qmsg **pp = &Q->hash[hash_str(m->id) % Q->hash_size]; *pp; pp = &(*pp)->hnext) {
		if (*pp == m) {
			*pp = m->hnext;
			Q->n_msgs--;
			return;
		}
	}
}

/* the timer heap, by due time */
static void heap_swap(size_t a, size_t b)
{
	struct qmsg *t = Q->heap[a];
	Q->heap[a] = Q->heap[b];
	Q->heap[b] = t;
	Q->heap[a]->heap_idx = a;
	Q->heap[b]->heap_idx = b;
}

static void heap_up(size_t i)
{
	while (i > 0 && Q->heap[(i - 1) / 2]->due > Q->heap[i]->due) {
		heap_swap(i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void heap_down(size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < Q->heap_n && Q->heap[l]->due < Q->heap[m]->due)
			m = l;
		if (r < Q->heap_n && Q->heap[r]->due < Q->heap[m]->due)
			m = r;
		if (m == i)
			return;
		heap_swap(i, m);
		i = m;
	}
}

static void heap_push(struct qmsg *m)
{
	if (Q->heap_n == Q->heap_cap) {
		Q->heap_cap = Q->heap_cap ? Q->heap_cap * 2 : 256;
		Q->heap = xrealloc(Q->heap, Q->heap_cap * sizeof *Q->heap);
	}
	m->heap_idx = Q->heap_n;
	Q->heap[Q->heap_n++] = m;
	heap_up(m->heap_idx);
}

static struct qmsg *heap_pop(void)
{
	if (!Q->heap_n)
		return NULL;
	struct qmsg *m = Q->heap[0];
	Q->heap_n--;
	if (Q->heap_n) {
		Q->heap[0] = Q->heap[Q->heap_n];
		Q->heap[0]->heap_idx = 0;
		heap_down(0);
	}
	return m;
}

/* ---- messages --------------------------------------------------------------- */

static void msg_free(struct qmsg *m)
{
	free(m->sender);
	for (size_t i = 0; i < m->n_rcpts; i++)
		free(m->rcpts[i]);
	free(m->rcpts);
	free(m->mem);
	free(m->mem_meta);
	free(m);
}

/* The ids of messages that a spool listing queued and that are done.  A
 * worker announces each message it stores; if the listing (at start, or the
 * periodic one) read the message before its notice was read here, and the
 * message was delivered in between, the notice would queue it again: a
 * second delivery.  The notice of an id in this set is dropped instead.
 * Kept QMGR_LISTED_DONE_SECS; notices arrive within moments. */
#define LISTED_DONE_BUCKETS 4096u
struct done_id {
	struct done_id *next;
	double at;
	char id[SPOOL_ID_LEN + 1];
};
static struct done_id *listed_done[LISTED_DONE_BUCKETS];

static void listed_done_add(const char *id)
{
	struct done_id *d = xcalloc(1, sizeof *d);
	snprintf(d->id, sizeof d->id, "%s", id);
	d->at = now_mono();
	size_t b = hash_str(id) % LISTED_DONE_BUCKETS;
	d->next = listed_done[b];
	listed_done[b] = d;
}

/* Whether id is in the set; it leaves it (its one notice has come). */
static bool listed_done_take(const char *id)
{
	for (struct done_id **pp = &listed_done[hash_str(id) % LISTED_DONE_BUCKETS]; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->id, id) == 0) {
			struct done_id *d = *pp;
			*pp = d->next;
			free(d);
			return true;
		}
	}
	return false;
}

void qmgr_listed_done_expire(bool all)
{
	double before = all ? HUGE_VAL : now_mono() - QMGR_LISTED_DONE_SECS;
	for (size_t b = 0; b < LISTED_DONE_BUCKETS; b++)
		for (struct done_id **pp = &listed_done[b]; *pp;) {
			if ((*pp)->at < before) {
				struct done_id *d = *pp;
				*pp = d->next;
				free(d);
			} else {
				pp = &(*pp)->next;
			}
		}
}

int qmgr_notice(const char *id, const struct spool_loc *loc, const cJSON *meta, char *err,
		size_t errlen)
{
	if (listed_done_take(id))
		return 0;
	if (cJSON_IsObject(meta)) {
		/* the record smtpd spooled, sent along: no need to read it back */
		if (qmgr_find(id))
			return 0;
		return qmgr_add(id, meta, loc, NULL, 0, NULL, err, errlen);
	}
	return qmgr_load(id, loc, NULL, 0, err, errlen);
}

/* The message leaves the queue manager (delivered, bounced, expired). */
void qmgr_done(struct qmsg *m)
{
	if (m->listed)
		listed_done_add(m->id);
	if (m->spooled) {
		char err[200];
		if (spool_done(&Q->spool, &m->loc, m->id, err, sizeof err) != 0)
			log_warn("message %s: %s", m->id, err);
	}
	mem_wait_drop(m);
	m->sq->count--;
	id_remove(m);
	msg_free(m);
}

static void msg_due(struct qmsg *m)
{
	m->state = M_DUE;
	list_push(&m->sq->due, m);
}

/* Parses [campaign:][tenant@]domain[!routing_domain]. */
static void name_parts(const char *name, char **campaign, char **tenant, char **domain, char **routing)
{
	const char *at = strrchr(name, '@');
	const char *colon = strchr(name, ':');
	if (colon && at && colon > at)
		colon = NULL;
	const char *dstart = at ? at + 1 : (colon ? colon + 1 : name);
	const char *bang = strchr(dstart, '!');
	*campaign = colon ? xstrndup(name, (size_t)(colon - name)) : NULL;
	const char *tstart = colon ? colon + 1 : name;
	*tenant = at && at > tstart ? xstrndup(tstart, (size_t)(at - tstart)) : NULL;
	*domain = bang ? xstrndup(dstart, (size_t)(bang - dstart)) : xstrdup(dstart);
	*routing = bang && bang[1] ? xstrdup(bang + 1) : NULL;
}

static struct squeue *squeue_get(const char *name)
{
	size_t b = hash_str(name) % SQ_BUCKETS;
	for (struct squeue *sq = sq_hash[b]; sq; sq = sq->next)
		if (strcmp(sq->name, name) == 0)
			return sq;
	struct squeue *sq = xcalloc(1, sizeof *sq);
	sq->name = xstrdup(name);
	name_parts(name, &sq->campaign, &sq->tenant, &sq->domain, &sq->routing_domain);
	for (char *p = sq->domain; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	if (strcmp(name, QMGR_DEFERRED_INJECT) == 0) {
		/* KumoMTA's fixed settings for this queue: no policy asked */
		sq->cfg_state = CFG_OK;
		sq->cfg.retry_interval = 60;
		sq->cfg.max_age = QMGR_DEFAULT_MAX_AGE;
		sq->internal = true;
	}
	sq->next = sq_hash[b];
	sq_hash[b] = sq;
	return sq;
}

static const char *meta_str(const cJSON *meta, const char *key)
{
	const cJSON *v = jfind(meta, key);
	return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
}

void qmgr_set_envelope(struct qmsg *m, const cJSON *doc)
{
	const cJSON *sender = jget(doc, "sender");
	const cJSON *rcpt = jget(doc, "recipient");
	free(m->sender);
	m->sender = xstrdup(cJSON_IsString(sender) ? sender->valuestring : "");
	for (size_t i = 0; i < m->n_rcpts; i++)
		free(m->rcpts[i]);
	free(m->rcpts);
	size_t n = cJSON_IsString(rcpt) ? 1 : (size_t)cJSON_GetArraySize(rcpt);
	m->rcpts = xcalloc(n ? n : 1, sizeof *m->rcpts);
	m->n_rcpts = 0;
	m->rcpt_array = cJSON_IsArray(rcpt);
	if (cJSON_IsString(rcpt)) {
		m->rcpts[m->n_rcpts++] = xstrdup(rcpt->valuestring);
	} else {
		for (const cJSON *r = rcpt ? rcpt->child : NULL; r; r = r->next)
			if (cJSON_IsString(r))
				m->rcpts[m->n_rcpts++] = xstrdup(r->valuestring);
	}
}

int qmgr_add(const char *id, const cJSON *doc, const struct spool_loc *loc, char *mem,
	     size_t mem_len, char *mem_meta, char *err, size_t errlen)
{
	const cJSON *sender = jget(doc, "sender");
	const cJSON *rcpt = jget(doc, "recipient");
	const cJSON *meta = jget(doc, "meta");
	size_t n = cJSON_IsString(rcpt) ? 1 : (size_t)cJSON_GetArraySize(rcpt);
	if (!cJSON_IsString(sender) || n == 0 || (!cJSON_IsString(rcpt) && !cJSON_IsArray(rcpt))) {
		snprintf(err, errlen, "meta of %s lacks sender or recipient", id);
		free(mem);
		free(mem_meta);
		return -1;
	}
	struct qmsg *m = xcalloc(1, sizeof *m);
	m->mem = mem;        /* owned from here on, freed with m */
	m->mem_meta = mem_meta;
	str_copy(m->id, sizeof m->id, id);
	qmgr_set_envelope(m, doc);
	if (m->n_rcpts == 0) {
		msg_free(m);
		snprintf(err, errlen, "meta of %s has no recipient", id);
		return -1;
	}
	m->created = spool_id_time(id);
	m->mem_len = mem_len;
	m->spooled = loc != NULL;
	m->size = mem ? mem_len : 0;
	if (loc) {
		m->loc = *loc;
		m->size = (size_t)loc->data_len;
		spool_hold(&Q->spool, loc);
	}
	m->due = now_real();

	m->sq = queue_for(meta, m->rcpts[0]);
	m->sq->count++;
	id_insert(m);
	msg_due(m);
	if (!Q->stopping)
		squeue_kick(m->sq);
	return 0;
}

/* The queue a message belongs in: its meta "queue", or the name made of
 * campaign, tenant, the first recipient's domain and routing_domain. */
static struct squeue *queue_for(const cJSON *meta, const char *rcpt)
{
	const char *at = strrchr(rcpt, '@');
	const char *domain = at ? at + 1 : "";
	const char *queue = meta_str(meta, "queue");
	char *name = queue ? xstrdup(queue)
			   : queue_name(meta_str(meta, "campaign"), meta_str(meta, "tenant"), domain,
					meta_str(meta, "routing_domain"));
	for (char *p = strrchr(name, '@') ? strrchr(name, '@') : name; *p && *p != '!'; p++)
		*p = (char)tolower((unsigned char)*p);
	struct squeue *sq = squeue_get(name);
	free(name);
	return sq;
}

void qmgr_rebind(struct qmsg *m, const cJSON *meta)
{
	m->sq->count--;
	m->sq = queue_for(meta, m->rcpts[0]);
	m->sq->count++;
	m->num_attempts = 0;
	msg_due(m);
	squeue_kick(m->sq);
}

int qmgr_load(const char *id, const struct spool_loc *loc, const char *meta, size_t meta_len,
	      char *err, size_t errlen)
{
	if (qmgr_find(id))
		return 0;
	char *buf = NULL;
	size_t len;
	if (!meta) {
		if (spool_read_meta(&Q->spool, loc, &buf, &len, err, errlen) != 0)
			return -1;
		meta = buf;
		meta_len = len;
	}
	cJSON *doc = jsonr_parse_any(meta, meta_len);
	free(buf);
	if (!doc) {
		snprintf(err, errlen, "meta of %s is not JSON", id);
		return -1;
	}
	int rc = qmgr_add(id, doc, loc, NULL, 0, NULL, err, errlen);
	cJSON_Delete(doc);
	return rc;
}

/* ---- records ------------------------------------------------------------- */

static cJSON *rcpt_json(struct qmsg *m, char **rcpts, size_t n)
{
	if (n == 1 && !m->rcpt_array)
		return cJSON_CreateString(rcpts[0]);
	cJSON *a = cJSON_CreateArray();
	for (size_t i = 0; i < n; i++)
		cJSON_AddItemToArray(a, cJSON_CreateString(rcpts[i]));
	return a;
}

void qmgr_record(const char *type, struct qmsg *m, char **rcpts, size_t n, struct conn *c,
		 int code, const char *text, const char *command)
{
	if (!Q->logs.dir)
		return;
	struct rqueue *rq = c ? c->rq : m->sq->rq;
	bool one = n == 1 && !m->rcpt_array;
	cJSON *rj = one ? NULL : rcpt_json(m, rcpts, n);
	struct logrec_fields f = {
		.type = type, .id = m->id, .created = m->created, .sender = m->sender,
		.recipient = one ? rcpts[0] : NULL, .recipient_json = rj,
		.queue = m->sq->name, .site = rq ? rq->name : "", .size = (double)m->size,
		.response = true, .code = code, .text = text ? text : "", .command = command,
		.peer_name = c && c->peer_addr[0] ? c->peer_name : NULL,
		.peer_addr = c && c->peer_addr[0] ? c->peer_addr : NULL,
		.num_attempts = m->num_attempts,
		.egress_pool = m->sq->cfg.egress_pool ? m->sq->cfg.egress_pool : "unspecified",
		.egress_source = "unspecified",
		.delivery_protocol = strcmp(type, "Expiration") != 0 ? "ESMTP" : NULL,
		.session_id = c && c->session_id[0] ? c->session_id : NULL,
	};
	cJSON *extra = NULL;
	if (c && c->c && smtp_client_tls_version(c->c)) {
		extra = cJSON_CreateObject();
		jadd_string(extra, "tls_cipher", smtp_client_tls_cipher(c->c));
		jadd_string(extra, "tls_protocol_version", smtp_client_tls_version(c->c));
		f.extra = extra;
	}
	char err[300];
	if (logrec_put(&Q->logs, &f, err, sizeof err) != 0)
		log_warn("log record: %s", err);
	cJSON_Delete(extra);
	cJSON_Delete(rj);
}

/* ---- spool writes of the queue manager --------------------------------- */

/* deferred_spool messages waiting for spool_mem_later's commit */
static struct qmsg **mem_wait;
static size_t mem_wait_n, mem_wait_cap;
static struct event *mem_wait_ev;

static void mem_wait_drop(struct qmsg *m)
{
	if (m->spool_wait) {
		mem_wait[m->spool_wait - 1] = NULL;
		m->spool_wait = 0;
	}
}

/* One commit for at most this many messages or bytes. */
#define MEM_BATCH_MSGS 1000
#define MEM_BATCH_BYTES (32u * 1024u * 1024u)

/* Writes deferred_spool messages (held in memory) to the spool, in as few
 * commits as the batch limits allow; how many were written.  A message
 * already spooled is skipped; one that cannot be written stays in memory
 * (logged). */
static size_t mem_write_many(struct qmsg **v, size_t n)
{
	size_t written = 0, i = 0;
	while (i < n) {
		size_t most = n - i < MEM_BATCH_MSGS ? n - i : MEM_BATCH_MSGS;
		struct spool_item *items = xcalloc(most, sizeof *items);
		struct iovec *iov = xcalloc(most, sizeof *iov);
		struct qmsg **batch = xcalloc(most, sizeof *batch);
		size_t k = 0, bytes = 0;
		for (; i < n && k < most && (k == 0 || bytes < MEM_BATCH_BYTES); i++) {
			struct qmsg *m = v[i];
			if (!m || m->spooled)
				continue;
			mem_wait_drop(m);
			iov[k] = (struct iovec){ m->mem, m->mem_len };
			items[k] = (struct spool_item){ .data = &iov[k], .data_cnt = 1, .meta = m->mem_meta,
							.meta_len = strlen(m->mem_meta) };
			memcpy(items[k].id, m->id, sizeof items[k].id);
			bytes += m->mem_len;
			batch[k++] = m;
		}
		if (k > 0)
			spool_commit(&Q->spool, items, k);
		for (size_t j = 0; j < k; j++) {
			struct qmsg *m = batch[j];
			if (items[j].result != 0) {
				log_warn("message %s: cannot write it to the spool: %s", m->id, items[j].err);
				continue;
			}
			m->spooled = true;
			m->loc = items[j].loc;
			spool_hold(&Q->spool, &m->loc);
			free(m->mem);
			free(m->mem_meta);
			m->mem = m->mem_meta = NULL;
			written++;
		}
		free(items);
		free(iov);
		free(batch);
	}
	return written;
}

/* Writes a deferred_spool message (held in memory) to the spool. */
int spool_mem_write(struct qmsg *m)
{
	if (m->spooled)
		return 0;
	return mem_write_many(&m, 1) == 1 ? 0 : -1;
}

static void mem_wait_flush(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	struct qmsg **v = mem_wait;
	size_t n = mem_wait_n;
	mem_wait = NULL;
	mem_wait_n = mem_wait_cap = 0;
	for (size_t i = 0; i < n; i++)
		if (v[i])
			v[i]->spool_wait = 0; /* no longer in mem_wait */
	mem_write_many(v, n);
	bool waiting = false;
	for (size_t i = 0; i < n; i++) {
		if (!v[i])
			continue;
		if (!v[i]->spooled)
			log_warn("message %s: kept in memory only", v[i]->id);
		else if (v[i]->state == M_WAIT)
			waiting = true;
	}
	free(v);
	if (waiting)
		compact_soon();
}

void spool_mem_later(struct qmsg *m)
{
	if (m->spooled || m->spool_wait)
		return;
	if (mem_wait_n == mem_wait_cap) {
		mem_wait_cap = mem_wait_cap ? mem_wait_cap * 2 : 64;
		mem_wait = xrealloc(mem_wait, mem_wait_cap * sizeof *mem_wait);
	}
	mem_wait[mem_wait_n++] = m;
	m->spool_wait = mem_wait_n;
	if (!mem_wait_ev)
		mem_wait_ev = event_new(Q->base, -1, 0, mem_wait_flush, NULL);
	if (!event_pending(mem_wait_ev, EV_TIMEOUT, NULL))
		event_active(mem_wait_ev, EV_TIMEOUT, 1);
}

size_t qmgr_spool_memory(void)
{
	size_t n = 0, cap = 0;
	struct qmsg **v = NULL;
	for (size_t i = 0; i < Q->hash_size; i++)
		for (struct qmsg *m = Q->hash[i]; m; m = m->hnext)
			if (!m->spooled) {
				if (n == cap) {
					cap = cap ? cap * 2 : 256;
					v = xrealloc(v, cap * sizeof *v);
				}
				v[n++] = m;
			}
	size_t written = mem_write_many(v, n);
	free(v);
	return written;
}

/* After some recipients were delivered or bounced: the spooled meta keeps
 * only the others, so a restart does not deliver twice. */
static void rewrite_recipients(struct qmsg *m)
{
	char err[200];
	char *meta = NULL;
	size_t mlen;
	cJSON *doc = NULL;
	if (!m->spooled) {
		doc = jsonr_parse_any(m->mem_meta, strlen(m->mem_meta));
	} else if (spool_read_meta(&Q->spool, &m->loc, &meta, &mlen, err, sizeof err) == 0) {
		doc = jsonr_parse_any(meta, mlen);
	}
	free(meta);
	if (!doc) {
		log_warn("message %s: cannot rewrite its recipients: %s", m->id, m->spooled ? err : "bad meta");
		return;
	}
	cJSON_ReplaceItemInObject(doc, "recipient", rcpt_json(m, m->rcpts, m->n_rcpts));
	char *text = cJSON_PrintUnformatted(doc);
	cJSON_Delete(doc);
	if (!m->spooled) {
		free(m->mem_meta);
		m->mem_meta = xasprintf("%s\n", text);
		free(text);
		return;
	}
	char *line = xasprintf("%s\n", text);
	if (spool_update_meta(&Q->spool, &m->loc, m->id, line, strlen(line), err, sizeof err) != 0)
		log_warn("message %s: cannot rewrite its recipients: %s", m->id, err);
	free(line);
	free(text);
}

/* ---- moving waiting messages out of sparse segments ------------------------ */

/* A segment stays on disk while one message in it waits for a retry.  A
 * little after messages start waiting, those in segments that are sealed
 * and mostly done (spool_seg_sparse) are written again, together, into
 * this process's segment, and their old records marked done, so the old
 * segments go.  A crash between the two leaves two copies; the newer wins
 * (spool.h). */
#define COMPACT_DELAY_SECS 2
#define COMPACT_MAX_BYTES (64u * 1024u * 1024u)  /* moved per pass */
#define COMPACT_SEG_CACHE 64

static struct event *compact_ev;

static void on_compact(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	qmgr_compact();
}

static void compact_soon(void)
{
	if (Q->stopping)
		return;
	if (!compact_ev)
		compact_ev = evtimer_new(Q->base, on_compact, NULL);
	if (!evtimer_pending(compact_ev, NULL)) {
		struct timeval tv = { COMPACT_DELAY_SECS, 0 };
		evtimer_add(compact_ev, &tv);
	}
}

/* spool_seg_sparse, asked once per segment and pass */
static bool seg_sparse(struct spool_seg *g, struct spool_seg **segs, bool *ans, size_t *n)
{
	for (size_t i = 0; i < *n; i++)
		if (segs[i] == g)
			return ans[i];
	bool a = spool_seg_sparse(&Q->spool, g);
	if (*n < COMPACT_SEG_CACHE) {
		segs[*n] = g;
		ans[(*n)++] = a;
	}
	return a;
}

size_t qmgr_compact(void)
{
	struct spool_seg *segs[COMPACT_SEG_CACHE];
	bool ans[COMPACT_SEG_CACHE];
	size_t nseg = 0, n = 0, cap = 0;
	uint64_t bytes = 0;
	struct qmsg **v = NULL;
	bool more = false;
	/* most passes find nothing to move: then no walk over every message
	 * (a few ms of CPU every COMPACT_DELAY_SECS with a large queue) */
	if (!spool_any_sparse(&Q->spool))
		return 0;
	for (size_t i = 0; i < Q->hash_size && !more; i++) {
		for (struct qmsg *m = Q->hash[i]; m; m = m->hnext) {
			if (!m->spooled || m->state != M_WAIT || !seg_sparse(m->loc.seg, segs, ans, &nseg))
				continue;
			if (n > 0 && bytes + m->loc.data_len > COMPACT_MAX_BYTES) {
				more = true;
				break;
			}
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				v = xrealloc(v, cap * sizeof *v);
			}
			v[n++] = m;
			bytes += m->loc.data_len;
		}
	}
	if (n == 0) {
		free(v);
		return 0;
	}
	struct spool_item *items = xcalloc(n, sizeof *items);
	struct iovec *iov = xcalloc(n, sizeof *iov);
	char **data = xcalloc(n, sizeof *data), **meta = xcalloc(n, sizeof *meta);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		struct qmsg *m = v[i];
		size_t dlen, mlen;
		char err[300];
		if (spool_read_data(&Q->spool, &m->loc, &data[k], &dlen, err, sizeof err) != 0 ||
		    spool_read_meta(&Q->spool, &m->loc, &meta[k], &mlen, err, sizeof err) != 0) {
			log_warn("message %s: cannot move it out of segment %s: %s", m->id,
				 spool_seg_name(m->loc.seg), err);
			free(data[k]);
			data[k] = NULL;
			continue;
		}
		iov[k] = (struct iovec){ data[k], dlen };
		items[k] = (struct spool_item){ .data = &iov[k], .data_cnt = 1, .meta = meta[k], .meta_len = mlen };
		memcpy(items[k].id, m->id, sizeof items[k].id);
		v[k++] = m;
	}
	size_t moved = 0;
	if (k > 0 && spool_commit(&Q->spool, items, k) != 0) {
		log_warn("spool: moving %zu waiting message%s out of sparse segments: %s", k, k == 1 ? "" : "s",
			 items[0].err);
	} else {
		for (size_t i = 0; i < k; i++) {
			struct qmsg *m = v[i];
			struct spool_loc old = m->loc;
			m->loc = items[i].loc;
			spool_hold(&Q->spool, &m->loc);
			char err[200];
			if (spool_done(&Q->spool, &old, m->id, err, sizeof err) != 0)
				log_warn("message %s: %s", m->id, err);
			moved++;
		}
		if (moved)
			log_info("spool: %zu waiting message%s moved out of sparse segments", moved,
				 moved == 1 ? "" : "s");
	}
	for (size_t i = 0; i < k; i++) {
		free(data[i]);
		free(meta[i]);
	}
	free(data);
	free(meta);
	free(iov);
	free(items);
	free(v);
	if (more)
		compact_soon();
	return moved;
}

/* ---- outcomes --------------------------------------------------------------- */

static const struct queue_config *msg_cfg(struct qmsg *m)
{
	static const struct queue_config dflt = { .retry_interval = QMGR_DEFAULT_RETRY,
						  .max_age = QMGR_DEFAULT_MAX_AGE };
	return m->sq->cfg_state == CFG_OK ? &m->sq->cfg : &dflt;
}

/* A transient failure: wait, or expire when the next try would come after
 * max_age. */
void qmgr_retry(struct qmsg *m, struct conn *c, int code, const char *text, const char *command)
{
	qmgr_record("TransientFailure", m, m->rcpts, m->n_rcpts, c, code, text, command);
	const struct queue_config *cfg = msg_cfg(m);
	double delay = cfg->retry_interval;
	for (int i = 1; i < m->num_attempts && delay < 1e9; i++)
		delay *= 2;
	if (cfg->max_retry_interval > 0 && delay > cfg->max_retry_interval)
		delay = cfg->max_retry_interval;
	double now = now_real();
	if (m->created > 0 && now + delay > m->created + cfg->max_age) {
		log_info("message %s: expired after %d attempt%s", m->id, m->num_attempts,
			 m->num_attempts == 1 ? "" : "s");
		qmgr_record("Expiration", m, m->rcpts, m->n_rcpts, NULL, 551, "5.4.7 Next delivery time would be after the expiration time",
		       NULL);
		qmgr_done(m);
		return;
	}
	if (!m->spooled)
		spool_mem_later(m); /* with the others failing in this loop pass */
	m->due = now + delay;
	m->state = M_WAIT;
	heap_push(m);
	timer_arm();
	if (m->spooled)
		compact_soon();
}

void qmgr_bounce(struct qmsg *m, struct conn *c, int code, const char *text, const char *command)
{
	log_info("message %s: bounced: %d %s", m->id, code, text);
	qmgr_record("Bounce", m, m->rcpts, m->n_rcpts, c, code, text, command);
	qmgr_done(m);
}

/* Fails every message a queue holds for one reason (config, DNS, path). */
static void fail_list(struct msg_list *l, bool permanent, int code, const char *text)
{
	struct qmsg *m;
	while ((m = list_pop(l)) != NULL) {
		m->num_attempts++;
		if (permanent)
			qmgr_bounce(m, NULL, code, text, NULL);
		else
			qmgr_retry(m, NULL, code, text, NULL);
	}
}

/* ---- scheduled queues -------------------------------------------------------- */

static void sq_config_done(void *arg, const cJSON *reply, const char *error)
{
	struct squeue *sq = arg;
	queue_config_free(&sq->cfg);
	free(sq->cfg_error);
	sq->cfg_error = NULL;
	char err[300];
	const cJSON *ret = reply ? jget(reply, "ret") : NULL;
	if (error) {
		sq->cfg_error = xasprintf("get_queue_config: %s", error);
	} else if (queue_config_parse(ret, &sq->cfg, err, sizeof err) != 0) {
		sq->cfg_error = xasprintf("get_queue_config: %s", err);
	}
	if (sq->cfg_error) {
		log_warn("queue %s: %s", sq->name, sq->cfg_error);
		sq->cfg_state = CFG_FAILED;
		queue_config_parse(NULL, &sq->cfg, err, sizeof err);
	} else {
		sq->cfg_state = CFG_OK;
		sq->cfg_at = now_mono();
		sq->cfg_gen = Q->generation;
		sq->resolved_at = 0;   /* the mx_list may have changed */
	}
	squeue_kick(sq);
}

static char *site_name(const struct mx_result *r)
{
	size_t len = 8;
	for (size_t i = 0; i < r->n_hosts; i++)
		len += strlen(r->hosts[i].name) + 8;
	char *s = xmalloc(len), *p = s;
	size_t left = len;
	if (r->n_hosts > 1) {
		*p++ = '(';
		left--;
	}
	for (size_t i = 0; i < r->n_hosts; i++) {
		int w;
		if (r->hosts[i].port)
			w = snprintf(p, left, "%s%s:%d", i ? "|" : "", r->hosts[i].name, r->hosts[i].port);
		else
			w = snprintf(p, left, "%s%s", i ? "|" : "", r->hosts[i].name);
		p += w;
		left -= (size_t)w;
	}
	if (r->n_hosts > 1)
		snprintf(p, left, ")");
	return s;
}

static struct rqueue *rqueue_get(const char *site, const char *routing_domain)
{
	for (struct rqueue *rq = Q->rqueues; rq; rq = rq->next)
		if (strcmp(rq->site, site) == 0)
			return rq;
	struct rqueue *rq = xcalloc(1, sizeof *rq);
	rq->site = xstrdup(site);
	rq->name = xasprintf("unspecified->%s", site);
	rq->routing_domain = xstrdup(routing_domain);
	rq->next = Q->rqueues;
	Q->rqueues = rq;
	return rq;
}

static void sq_resolved(void *arg, struct mx_result *res)
{
	struct squeue *sq = arg;
	sq->resolving = false;
	sq->dq = NULL;
	if (res->status != DNS_OK || res->n_hosts == 0) {
		mx_result_free(sq->res_fail);
		sq->res_fail = res;
		sq->res_fail_at = now_mono();
		sq->resolved_at = 0;
		log_info("queue %s: %s", sq->name, res->error ? res->error : "no MX host");
	} else {
		char *site = site_name(res);
		struct rqueue *rq = rqueue_get(site, sq->routing_domain ? sq->routing_domain : sq->domain);
		free(site);
		mx_result_free(rq->mx);
		rq->mx = res;
		sq->rq = rq;
		sq->resolved_at = now_mono();
	}
	squeue_kick(sq);
}

static void squeue_kick(struct squeue *sq)
{
	if (!sq->due.n || Q->stopping)
		return;
	if (sq->internal) {
		struct qmsg *m;
		while (inject_busy() < QMGR_INJECT_PARALLEL && (m = list_pop(&sq->due)) != NULL) {
			m->state = M_FLIGHT;
			m->num_attempts++;
			Q->n_flight++;
			inject_start(m);
		}
		return;
	}
	if (sq->cfg_state == CFG_PENDING)
		return;
	if (sq->cfg_state == CFG_NONE ||
	    (sq->cfg_state == CFG_OK && (sq->cfg_gen != Q->generation || now_mono() - sq->cfg_at > QMGR_CONFIG_TTL))) {
		sq->cfg_state = CFG_PENDING;
		cJSON *args = cJSON_CreateArray();
		cJSON_AddItemToArray(args, cJSON_CreateString(sq->domain));
		cJSON_AddItemToArray(args, sq->tenant ? cJSON_CreateString(sq->tenant) : cJSON_CreateNull());
		cJSON_AddItemToArray(args, sq->campaign ? cJSON_CreateString(sq->campaign) : cJSON_CreateNull());
		cJSON_AddItemToArray(args, sq->routing_domain ? cJSON_CreateString(sq->routing_domain) : cJSON_CreateNull());
		qpolicy_call(Q->policy, "get_queue_config", args, sq_config_done, sq);
		return;
	}
	if (sq->cfg_state == CFG_FAILED) {
		char *why = xstrdup(sq->cfg_error ? sq->cfg_error : "get_queue_config failed");
		sq->cfg_state = CFG_NONE;
		char text[600];
		snprintf(text, sizeof text, "4.3.0 %s", why);
		free(why);
		fail_list(&sq->due, false, 451, text);
		return;
	}
	/* A failed resolution answers for the messages that come within a
	 * few seconds (one query then, not one per message); after that, or
	 * after a flush, the next message asks again. */
	if (sq->res_fail && now_mono() - sq->res_fail_at >= QMGR_RESOLVE_FAIL_TTL) {
		mx_result_free(sq->res_fail);
		sq->res_fail = NULL;
	}
	if (sq->res_fail) {
		struct mx_result *r = sq->res_fail;
		char text[600];
		bool perm = r->status == DNS_PERMFAIL;
		memcpy(text, perm ? "5.4.4 " : "4.4.4 ", 6);
		str_copy(text + 6, sizeof text - 6, r->error ? r->error : "no MX host");
		fail_list(&sq->due, perm, perm ? 550 : 451, text);
		return;
	}
	bool stale = !sq->rq || now_mono() - sq->resolved_at > QMGR_RESOLVE_TTL;
	if (stale && !sq->resolving) {
		sq->resolving = true;
		if (sq->cfg.mx_list)
			sq->dq = dns_resolve_list(Q->dns, sq->cfg.mx_list, sq->cfg.n_mx, sq_resolved, sq);
		else
			sq->dq = dns_resolve_domain(Q->dns, sq->routing_domain ? sq->routing_domain : sq->domain,
						    sq_resolved, sq);
	}
	if (!sq->rq)
		return;
	struct qmsg *m;
	while ((m = list_pop(&sq->due)) != NULL) {
		m->state = M_READY;
		list_push(&sq->rq->ready, m);
	}
	rqueue_kick(sq->rq);
}

/* ---- ready queues and connections ----------------------------------- */

static void rq_config_done(void *arg, const cJSON *reply, const char *error)
{
	struct rqueue *rq = arg;
	egress_path_free(&rq->path);
	free(rq->cfg_error);
	rq->cfg_error = NULL;
	char err[300];
	const cJSON *ret = reply ? jget(reply, "ret") : NULL;
	if (error)
		rq->cfg_error = xasprintf("get_egress_path_config: %s", error);
	else if (egress_path_parse(ret, &rq->path, err, sizeof err) != 0)
		rq->cfg_error = xasprintf("get_egress_path_config: %s", err);
	if (rq->cfg_error) {
		log_warn("%s: %s", rq->name, rq->cfg_error);
		rq->cfg_state = CFG_FAILED;
	} else {
		rq->cfg_state = CFG_OK;
		rq->cfg_at = now_mono();
		rq->cfg_gen = Q->generation;
	}
	rqueue_kick(rq);
}

static bool in_list(const struct cidr *list, size_t n, const struct sockaddr_storage *ss)
{
	struct cidr a;
	if (cidr_from_sockaddr((const struct sockaddr *)ss, &a) != 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (cidr_contains(&list[i], &a))
			return true;
	return false;
}

static const struct cidr *skip_list(const struct rqueue *rq, size_t *n)
{
	*n = rq->path.n_skip;
	return rq->path.skip;
}

static void conn_free(struct conn *c)
{
	struct rqueue *rq = c->rq;
	for (struct conn **pp = &rq->conns; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	rq->n_conns--;
	if (c->c)
		smtp_client_free(c->c);
	free(c->data);
	free(c);
}

static void conn_try(struct conn *c);

static void on_ready(struct smtp_client *cl, void *arg)
{
	(void)cl;
	struct conn *c = arg;
	c->ready = true;
	conn_next(c);
}

static bool others_working(struct conn *c)
{
	for (struct conn *o = c->rq->conns; o; o = o->next)
		if (o != c && o->ready)
			return true;
	return false;
}

static void on_failed(struct smtp_client *cl, const struct smtp_reply *why, bool permanent, void *arg)
{
	(void)cl;
	(void)permanent;
	struct conn *c = arg;
	struct rqueue *rq = c->rq;
	smtp_client_free(c->c);
	c->c = NULL;
	if (c->ready) {
		/* an idle session ended */
		conn_free(c);
		rqueue_kick(rq);
		return;
	}
	log_info("%s: %s [%s]: %d %s", rq->name, c->peer_name, c->peer_addr, why ? why->code : 0,
		 why && why->text ? why->text : "");
	c->addr++;
	if (c->rq->mx && c->host < c->rq->mx->n_hosts) {
		conn_try(c);
		return;
	}
	/* every address failed */
	if (!others_working(c)) {
		char text[600];
		snprintf(text, sizeof text, "%s", why && why->text ? why->text : "4.4.1 no host answered");
		int code = why && why->code >= 400 && why->code < 500 ? why->code : 451;
		struct msg_list l = rq->ready;
		memset(&rq->ready, 0, sizeof rq->ready);
		struct conn tmp = *c;
		conn_free(c);
		struct qmsg *m;
		while ((m = list_pop(&l)) != NULL) {
			m->num_attempts++;
			qmgr_retry(m, &tmp, code, text, NULL);
		}
	} else {
		conn_free(c);
	}
	rqueue_kick(rq);
}

static void on_done(struct smtp_client *cl, const struct smtp_msg *sm, struct smtp_result *r, void *arg);

static const struct smtp_client_cbs client_cbs = { on_ready, on_failed, on_done };

/* Starts (or goes on) connecting to the next address of the plan. */
static void conn_try(struct conn *c)
{
	struct rqueue *rq = c->rq;
	size_t nskip;
	const struct cidr *skip = skip_list(rq, &nskip);
	while (rq->mx && c->host < rq->mx->n_hosts) {
		struct mx_host *h = &rq->mx->hosts[c->host];
		if (c->addr >= h->n_addrs) {
			c->host++;
			c->addr = 0;
			continue;
		}
		struct sockaddr_storage ss = h->addrs[c->addr];
		if (in_list(skip, nskip, &ss)) {
			c->addr++;
			continue;
		}
		int port = h->port ? h->port : rq->path.smtp_port;
		socklen_t alen;
		if (ss.ss_family == AF_INET) {
			((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
			alen = sizeof(struct sockaddr_in);
		} else {
			((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
			alen = sizeof(struct sockaddr_in6);
		}
		snprintf(c->peer_name, sizeof c->peer_name, "%s", h->name);
		netaddr_format_ip((struct sockaddr *)&ss, c->peer_addr, sizeof c->peer_addr);
		struct smtp_client_opts o = {
			.ehlo_name = rq->path.ehlo_domain ? rq->path.ehlo_domain : Q->hostname,
			.peer_name = h->name,
			.tls = rq->path.tls,
			.timeouts = rq->path.timeouts,
		};
		c->c = smtp_client_connect(Q->base, (struct sockaddr *)&ss, alen, &o, Q->ssl_verify, Q->ssl_insecure,
					   &client_cbs, c);
		if (c->c)
			return;
		c->addr++;
	}
	struct smtp_reply why = { 451, (char *)"4.4.1 no usable address to connect to" };
	c->host = rq->mx ? rq->mx->n_hosts : 0;
	on_failed(NULL, &why, false, c);
}

static void new_session_id(char *out, size_t len)
{
	char id[SPOOL_ID_LEN + 1];
	spool_id_new(id);
	snprintf(out, len, "%.8s-%.4s-%.4s-%.4s-%.12s", id, id + 8, id + 12, id + 16, id + 20);
}

static void conn_new(struct rqueue *rq)
{
	struct conn *c = xcalloc(1, sizeof *c);
	c->rq = rq;
	new_session_id(c->session_id, sizeof c->session_id);
	c->next = rq->conns;
	rq->conns = c;
	rq->n_conns++;
	conn_try(c);
}

/* Loads the body of m into c->data.  0, or -1 with err. */
static int load_body(struct conn *c, struct qmsg *m, char *err, size_t errlen)
{
	free(c->data);
	c->data = NULL;
	if (!m->spooled) {
		c->data = xmalloc(m->mem_len + 1);
		memcpy(c->data, m->mem, m->mem_len);
		c->sm.len = m->mem_len;
	} else {
		size_t len;
		if (spool_read_data(&Q->spool, &m->loc, &c->data, &len, err, errlen) != 0)
			return -1;
		c->sm.len = len;
		m->size = len;
	}
	c->sm.data = c->data;
	c->sm.sender = m->sender;
	c->sm.recipients = (const char *const *)m->rcpts;
	c->sm.n_recipients = m->n_rcpts;
	return 0;
}

static void conn_next(struct conn *c)
{
	struct rqueue *rq = c->rq;
	if (Q->stopping || c->deliveries >= rq->path.max_deliveries_per_connection) {
		smtp_client_quit(c->c);
		c->c = NULL;
		conn_free(c);
		rqueue_kick(rq);
		return;
	}
	struct qmsg *m;
	while ((m = list_pop(&rq->ready)) != NULL) {
		char err[300];
		if (load_body(c, m, err, sizeof err) == 0)
			break;
		/* the data file is gone or damaged: the start-up scan quarantines it */
		log_warn("message %s: cannot read its data: %s", m->id, err);
		m->sq->count--;
		id_remove(m);
		msg_free(m);
	}
	if (!m)
		return;   /* idle until more arrives or the idle timeout */
	m->state = M_FLIGHT;
	m->num_attempts++;
	c->m = m;
	Q->n_flight++;
	if (smtp_client_send(c->c, &c->sm) != 0) {
		c->m = NULL;
		Q->n_flight--;
		m->state = M_READY;
		m->num_attempts--;
		list_push(&rq->ready, m);
		smtp_client_free(c->c);
		c->c = NULL;
		conn_free(c);
		rqueue_kick(rq);
	}
}

/* Log records name the end of data "." as KumoMTA does. */
static const char *cmd_name(const char *cmd)
{
	return cmd && strcmp(cmd, "data_dot") == 0 ? "." : cmd;
}

static void on_done(struct smtp_client *cl, const struct smtp_msg *sm, struct smtp_result *r, void *arg)
{
	(void)cl;
	(void)sm;
	struct conn *c = arg;
	struct rqueue *rq = c->rq;
	struct qmsg *m = c->m;
	c->m = NULL;
	Q->n_flight--;
	c->deliveries++;
	free(c->data);
	c->data = NULL;
	int fcode = r->final.code;
	const char *ftext = r->final.text ? r->final.text : "";
	/* per recipient: delivered iff its RCPT and the transaction got 2xx;
	 * bounced on a 5xx (its own, or the transaction's after its 2xx);
	 * otherwise kept for a retry */
	size_t n = m->n_rcpts;
	int *cls = xcalloc(n, sizeof *cls);   /* 2 delivered, 5 bounced, 4 kept */
	const struct smtp_reply **why = xcalloc(n, sizeof *why);
	char **ok = xcalloc(n, sizeof *ok), **bad = xcalloc(n, sizeof *bad);
	size_t nok = 0, nbad = 0, nkeep = 0;
	const struct smtp_reply *badwhy = NULL, *keepwhy = NULL;
	for (size_t i = 0; i < n; i++) {
		const struct smtp_reply *rr = r->rcpt && i < r->n_rcpt ? &r->rcpt[i] : NULL;
		int rc = rr ? rr->code : 0;
		if (rc >= 500 && rc < 600) {
			cls[i] = 5;
			why[i] = rr;
		} else if (rc >= 200 && rc < 300 && fcode >= 200 && fcode < 300) {
			cls[i] = 2;
		} else if (rc >= 200 && rc < 300 && fcode >= 500 && !r->connection_failed) {
			cls[i] = 5;
			why[i] = &r->final;
		} else {
			cls[i] = 4;
			why[i] = rc >= 400 && rc < 500 ? rr : &r->final;
		}
		if (cls[i] == 2)
			ok[nok++] = m->rcpts[i];
		else if (cls[i] == 5) {
			bad[nbad++] = m->rcpts[i];
			badwhy = badwhy ? badwhy : why[i];
		} else {
			nkeep++;
			keepwhy = keepwhy ? keepwhy : why[i];
		}
	}
	const char *cmd = r->command;
	if (nok) {
		qmgr_record("Delivery", m, ok, nok, c, fcode, ftext, cmd_name(cmd));
		rq->delivered += nok;
	}
	if (nbad) {
		log_info("message %s: bounced for %zu recipient%s: %d %s", m->id, nbad, nbad == 1 ? "" : "s",
			 badwhy->code, badwhy->text ? badwhy->text : "");
		qmgr_record("Bounce", m, bad, nbad, c, badwhy->code, badwhy->text ? badwhy->text : "",
		       badwhy == &r->final ? cmd_name(cmd) : "RCPT TO");
		rq->failed += nbad;
	}
	if (!nkeep) {
		qmgr_done(m);
	} else {
		int kc = keepwhy->code >= 400 && keepwhy->code < 500 ? keepwhy->code : 451;
		char *kt = xstrdup(keepwhy->code && keepwhy->text ? keepwhy->text : "4.4.2 connection lost");
		const char *kcmd = keepwhy == &r->final ? cmd_name(cmd) : "RCPT TO";
		if (nok || nbad) {
			size_t k = 0;
			for (size_t i = 0; i < n; i++) {
				if (cls[i] == 4)
					m->rcpts[k++] = m->rcpts[i];
				else
					free(m->rcpts[i]);
			}
			m->n_rcpts = k;
			rewrite_recipients(m);
		}
		qmgr_retry(m, c, kc, kt, kcmd);
		free(kt);
	}
	free(cls);
	free(why);
	free(ok);
	free(bad);
	if (r->connection_failed) {
		smtp_client_free(c->c);
		c->c = NULL;
		conn_free(c);
		rqueue_kick(rq);
		return;
	}
	conn_next(c);
}

static void rqueue_kick(struct rqueue *rq)
{
	if (!rq->ready.n || Q->stopping)
		return;
	if (rq->cfg_state == CFG_PENDING)
		return;
	if (rq->cfg_state == CFG_NONE ||
	    (rq->cfg_state == CFG_OK && (rq->cfg_gen != Q->generation || now_mono() - rq->cfg_at > QMGR_CONFIG_TTL) &&
	     !rq->conns)) {
		rq->cfg_state = CFG_PENDING;
		cJSON *args = cJSON_CreateArray();
		cJSON_AddItemToArray(args, cJSON_CreateString(rq->routing_domain));
		cJSON_AddItemToArray(args, cJSON_CreateString("unspecified"));
		cJSON_AddItemToArray(args, cJSON_CreateString(rq->site));
		qpolicy_call(Q->policy, "get_egress_path_config", args, rq_config_done, rq);
		return;
	}
	if (rq->cfg_state == CFG_FAILED) {
		char text[600];
		snprintf(text, sizeof text, "4.3.0 %s", rq->cfg_error ? rq->cfg_error : "no egress path");
		rq->cfg_state = CFG_NONE;
		fail_list(&rq->ready, false, 451, text);
		return;
	}
	/* a prohibited address anywhere in the plan fails the whole queue */
	size_t nskip, usable = 0;
	const struct cidr *skip = skip_list(rq, &nskip);
	for (size_t h = 0; rq->mx && h < rq->mx->n_hosts; h++) {
		for (size_t a = 0; a < rq->mx->hosts[h].n_addrs; a++) {
			const struct sockaddr_storage *ss = &rq->mx->hosts[h].addrs[a];
			if (in_list(skip, nskip, ss))
				continue;
			if (in_list(rq->path.prohibited, rq->path.n_prohibited, ss)) {
				char ip[64], text[200];
				netaddr_format_ip((const struct sockaddr *)ss, ip, sizeof ip);
				snprintf(text, sizeof text, "5.4.4 %s is on the list of prohibited_hosts", ip);
				fail_list(&rq->ready, true, 550, text);
				return;
			}
			usable++;
		}
	}
	if (!usable) {
		fail_list(&rq->ready, false, 451,
			  "4.4.4 KumoMTA internal: MX consisted solely of hosts on the skip_hosts list");
		return;
	}
	/* idle connections first, then new ones up to the limit */
	for (struct conn *c = rq->conns; c && rq->ready.n; c = c->next)
		if (c->ready && !c->m && c->c)
			conn_next(c);
	int connecting = 0;
	for (struct conn *c = rq->conns; c; c = c->next)
		connecting += !c->ready;
	while (rq->ready.n > (size_t)connecting && rq->n_conns < rq->path.connection_limit) {
		conn_new(rq);
		connecting++;
	}
}

/* ---- the timer heap and control ----------------------------------------- */

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	double now = now_real();
	while (Q->heap_n && Q->heap[0]->due <= now && !Q->stopping) {
		struct qmsg *m = heap_pop();
		msg_due(m);
		squeue_kick(m->sq);
	}
	timer_arm();
}

static void timer_arm(void)
{
	if (!Q->heap_n || Q->stopping)
		return;
	double wait = Q->heap[0]->due - now_real();
	if (wait < 0)
		wait = 0;
	if (wait > 3600)
		wait = 3600;
	struct timeval tv = { (time_t)wait, (suseconds_t)((wait - floor(wait)) * 1e6) };
	evtimer_add(Q->timer, &tv);
}

void qmgr_queue_init(void)
{
	Q->timer = evtimer_new(Q->base, on_timer, NULL);
}

void qmgr_flush(size_t *n)
{
	*n = 0;
	struct qmsg *m;
	while ((m = heap_pop()) != NULL) {
		msg_due(m);
		(*n)++;
	}
	for (size_t b = 0; b < SQ_BUCKETS; b++)
		for (struct squeue *sq = sq_hash[b]; sq; sq = sq->next) {
			mx_result_free(sq->res_fail);
			sq->res_fail = NULL;
			squeue_kick(sq);
		}
}

void qmgr_policy_changed(void)
{
	log_info("policy generation %llu: queue and path configurations will be asked again",
		 (unsigned long long)Q->generation);
}

cJSON *qmgr_summary(void)
{
	cJSON *r = cJSON_CreateObject();
	size_t ready = 0, due = 0, conns = 0;
	cJSON *qs = cJSON_CreateArray();
	for (size_t b = 0; b < SQ_BUCKETS; b++) {
		for (struct squeue *sq = sq_hash[b]; sq; sq = sq->next) {
			if (!sq->count)
				continue;
			cJSON *o = cJSON_CreateObject();
			jadd_string(o, "name", sq->name);
			jadd_number(o, "count", (double)sq->count);
			jadd_number(o, "due", (double)sq->due.n);
			if (sq->rq)
				jadd_string(o, "site", sq->rq->name);
			cJSON_AddItemToArray(qs, o);
			due += sq->due.n;
		}
	}
	cJSON *rs = cJSON_CreateArray();
	for (struct rqueue *rq = Q->rqueues; rq; rq = rq->next) {
		int busy = 0;
		for (struct conn *c = rq->conns; c; c = c->next)
			busy += c->m != NULL;
		if (!rq->ready.n && !rq->n_conns)
			continue;
		cJSON *o = cJSON_CreateObject();
		jadd_string(o, "name", rq->name);
		jadd_number(o, "ready", (double)rq->ready.n);
		jadd_number(o, "in_flight", busy);
		jadd_number(o, "connections", rq->n_conns);
		cJSON_AddItemToArray(rs, o);
		ready += rq->ready.n;
		conns += (size_t)rq->n_conns;
	}
	jadd_number(r, "messages", (double)Q->n_msgs);
	jadd_number(r, "waiting", (double)Q->heap_n);
	jadd_number(r, "due", (double)due);
	jadd_number(r, "ready", (double)ready);
	jadd_number(r, "in_flight", (double)Q->n_flight);
	jadd_number(r, "connections", (double)conns);
	jadd_item(r, "queues", qs);
	jadd_item(r, "sites", rs);
	return r;
}

void qmgr_stop(void)
{
	Q->stopping = true;
	evtimer_del(Q->timer);
	size_t n = qmgr_spool_memory();
	if (n)
		log_info("wrote %zu in-memory message%s to the spool", n, n == 1 ? "" : "s");
	/* idle connections say QUIT now; busy ones after their transaction */
	for (struct rqueue *rq = Q->rqueues; rq; rq = rq->next) {
		struct conn *c = rq->conns;
		while (c) {
			struct conn *next = c->next;
			if (!c->m) {
				if (c->c && c->ready)
					smtp_client_quit(c->c);
				else if (c->c)
					smtp_client_free(c->c);
				c->c = NULL;
				conn_free(c);
			}
			c = next;
		}
	}
}

void qmgr_queue_free(void)
{
	if (compact_ev)
		event_free(compact_ev);
	compact_ev = NULL;
	if (mem_wait_ev)
		event_free(mem_wait_ev);
	mem_wait_ev = NULL;
	free(mem_wait);
	mem_wait = NULL;
	mem_wait_n = mem_wait_cap = 0;
	for (struct rqueue *rq = Q->rqueues; rq;) {
		struct rqueue *next = rq->next;
		while (rq->conns)
			conn_free(rq->conns);
		mx_result_free(rq->mx);
		egress_path_free(&rq->path);
		free(rq->cfg_error);
		free(rq->name);
		free(rq->site);
		free(rq->routing_domain);
		free(rq);
		rq = next;
	}
	Q->rqueues = NULL;
	for (size_t b = 0; b < SQ_BUCKETS; b++) {
		for (struct squeue *sq = sq_hash[b]; sq;) {
			struct squeue *next = sq->next;
			if (sq->dq)
				dns_cancel(sq->dq);
			mx_result_free(sq->res_fail);
			queue_config_free(&sq->cfg);
			free(sq->cfg_error);
			free(sq->name);
			free(sq->domain);
			free(sq->tenant);
			free(sq->campaign);
			free(sq->routing_domain);
			free(sq);
			sq = next;
		}
		sq_hash[b] = NULL;
	}
	for (size_t i = 0; i < Q->hash_size; i++) {
		for (struct qmsg *m = Q->hash[i]; m;) {
			struct qmsg *next = m->hnext;
			msg_free(m);
			m = next;
		}
	}
	free(Q->hash);
	free(Q->heap);
	if (Q->timer)
		event_free(Q->timer);
	qmgr_listed_done_expire(true);
}
