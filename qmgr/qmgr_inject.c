/* qmgr_inject: the deferred_smtp_inject.kumomta.internal queue.  A message
 * a listener with deferred_queue accepted is spooled in that queue; here
 * the policy's smtp_server_message_deferred_inject(msg, conn_meta) runs for
 * it, as KumoMTA does: the message is passed by reference (its data
 * segment and offset), conn_meta is synthesized from the message meta,
 * and the handler's changes (sender, recipients, meta, headers, data) are
 * written back to the spool as a new record (the old one is then done).  Then the message is rebound into the queue its meta and
 * recipient name (a DeferredInjectionRebind record); a kumo.reject with a
 * 5xx bounces it; any other failure is a TransientFailure, retried from one
 * minute, doubling.
 * Entry points: inject_start, inject_busy. */
#include "qmgr/qmgr.h"
#include "lib/jadd.h"
#include "lib/jsonr.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

struct inj {
	struct qmsg *m;
	char *data;        /* owned: the message bytes as spooled */
	size_t len;
	long hdr_end;      /* end of the header block, -1 if none */
	cJSON *doc;        /* owned: the spooled meta document */
};

static size_t busy;

size_t inject_busy(void)
{
	return busy;
}

static void finish(struct qmsg *m)
{
	m->state = M_DUE;   /* the outcome functions move it on */
	Q->n_flight--;
	busy--;
}

/* bytes [0, hdr_end) are the headers, each ending in CRLF */
static long header_end(const char *d, size_t len)
{
	if (len >= 2 && d[0] == '\r' && d[1] == '\n')
		return 0;
	for (size_t i = 0; i + 3 < len; i++)
		if (d[i] == '\r' && d[i + 1] == '\n' && d[i + 2] == '\r' && d[i + 3] == '\n')
			return (long)i + 2;
	return -1;
}

/* Writes the handler's changes back; 0 or -1. */
static int apply(struct inj *in, const cJSON *msg, char *err, size_t errlen)
{
	struct qmsg *m = in->m;
	const cJSON *v = jget(msg, "sender");
	if (cJSON_IsString(v))
		cJSON_ReplaceItemInObject(in->doc, "sender", cJSON_CreateString(v->valuestring));
	v = jget(msg, "recipients");
	if (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0) {
		if (cJSON_GetArraySize(v) == 1 && !m->rcpt_array)
			cJSON_ReplaceItemInObject(in->doc, "recipient",
						  cJSON_CreateString(cJSON_GetArrayItem(v, 0)->valuestring));
		else
			cJSON_ReplaceItemInObject(in->doc, "recipient", cJSON_Duplicate(v, 1));
	}
	v = jget(msg, "meta");
	if (cJSON_IsObject(v))
		cJSON_ReplaceItemInObject(in->doc, "meta", cJSON_Duplicate(v, 1));
	/* out of the internal queue, unless the handler chose a queue */
	cJSON *meta = jget(in->doc, "meta");
	const cJSON *q = jget(meta, "queue");
	if (cJSON_IsString(q) && strcmp(q->valuestring, QMGR_DEFERRED_INJECT) == 0)
		jdelete(meta, "queue");

	/* the new bytes: data, or prefix + headers + the rest */
	const cJSON *data = jget(msg, "data");
	const cJSON *prefix = jget(msg, "prefix");
	const cJSON *headers = jget(msg, "headers");
	struct iovec iov[3];
	int cnt = 0;
	if (cJSON_IsString(data)) {
		iov[cnt++] = (struct iovec){ data->valuestring, strlen(data->valuestring) };
	} else {
		if (cJSON_IsString(prefix))
			iov[cnt++] = (struct iovec){ prefix->valuestring, strlen(prefix->valuestring) };
		if (cJSON_IsString(headers) && in->hdr_end >= 0) {
			iov[cnt++] = (struct iovec){ headers->valuestring, strlen(headers->valuestring) };
			iov[cnt++] = (struct iovec){ in->data + in->hdr_end, in->len - (size_t)in->hdr_end };
		} else {
			iov[cnt++] = (struct iovec){ in->data, in->len };
		}
	}
	char *text = cJSON_PrintUnformatted(in->doc);
	char *line = xasprintf("%s\n", text);
	free(text);
	struct spool_item it = { .data = iov, .data_cnt = cnt, .meta = line, .meta_len = strlen(line) };
	memcpy(it.id, m->id, sizeof it.id);
	int rc = 0;
	if (spool_commit(&Q->spool, &it, 1) != 0) {
		snprintf(err, errlen, "cannot write the message back: %s", it.err);
		rc = -1;
	}
	free(line);
	if (rc != 0)
		return -1;
	/* the new record (newer stamp) replaces the old one, which is done */
	char derr[200];
	if (spool_done(&Q->spool, &m->loc, m->id, derr, sizeof derr) != 0)
		log_warn("message %s: %s", m->id, derr);
	m->loc = it.loc;
	spool_hold(&Q->spool, &m->loc);
	/* the envelope in memory follows */
	qmgr_set_envelope(m, in->doc);
	m->size = 0;
	for (int i = 0; i < cnt; i++)
		m->size += iov[i].iov_len;
	return 0;
}

static void free_inj(struct inj *in)
{
	free(in->data);
	cJSON_Delete(in->doc);
	free(in);
}

static void done(void *arg, const cJSON *reply, const char *error)
{
	struct inj *in = arg;
	struct qmsg *m = in->m;
	finish(m);
	const cJSON *res = reply ? jget(reply, "result") : NULL;
	if (error && cJSON_IsString(res) && strcmp(res->valuestring, "reject") == 0) {
		const cJSON *code = jget(reply, "code");
		const cJSON *text = jget(reply, "text");
		int c = cJSON_IsNumber(code) ? (int)code->valuedouble : 451;
		const char *t = cJSON_IsString(text) ? text->valuestring : "";
		if (c >= 500)
			qmgr_bounce(m, NULL, c, t, NULL);
		else
			qmgr_retry(m, NULL, c >= 400 ? c : 451, t, NULL);
	} else if (error) {
		char why[700];
		snprintf(why, sizeof why, "4.3.0 smtp_server_message_deferred_inject: %s", error);
		log_warn("message %s: %s", m->id, why + 6);
		qmgr_retry(m, NULL, 451, why, NULL);
	} else {
		char err[300];
		const cJSON *msg = jget(reply, "msg");
		bool nohandler = cJSON_IsTrue(jget(reply, "nohandler"));
		if (!nohandler && !cJSON_IsObject(msg)) {
			qmgr_retry(m, NULL, 451, "4.3.0 smtp_server_message_deferred_inject: reply lacks the message", NULL);
		} else if (apply(in, nohandler ? NULL : msg, err, sizeof err) != 0) {
			log_warn("message %s: %s", m->id, err);
			char why[400];
			snprintf(why, sizeof why, "4.3.0 %s", err);
			qmgr_retry(m, NULL, 451, why, NULL);
		} else {
			const cJSON *meta = jget(in->doc, "meta");
			qmgr_rebind(m, meta);
			qmgr_record("DeferredInjectionRebind", m, m->rcpts, m->n_rcpts, NULL, 250, "2.0.0 rebound",
				    NULL);
		}
	}
	free_inj(in);
}

void inject_start(struct qmsg *m)
{
	busy++;
	struct inj *in = xcalloc(1, sizeof *in);
	in->m = m;
	char err[300];
	char *meta_text = NULL;
	size_t mlen;
	if (!m->spooled && spool_mem_write(m) != 0) {
		snprintf(err, sizeof err, "cannot write it to the spool");
		goto fail;
	}
	if (spool_read_data(&Q->spool, &m->loc, &in->data, &in->len, err, sizeof err) != 0 ||
	    spool_read_meta(&Q->spool, &m->loc, &meta_text, &mlen, err, sizeof err) != 0)
		goto fail;
	in->doc = jsonr_parse_any(meta_text, mlen);
	free(meta_text);
	if (!in->doc) {
		snprintf(err, sizeof err, "bad meta");
		goto fail;
	}
	in->hdr_end = header_end(in->data, in->len);
	cJSON *arg = cJSON_CreateObject();
	cJSON *o = jadd_object(arg, "__msg");
	jadd_string(o, "id", m->id);
	jadd_string(o, "sender", m->sender);
	cJSON *r = jadd_array(o, "recipients");
	for (size_t i = 0; i < m->n_rcpts; i++)
		cJSON_AddItemToArray(r, cJSON_CreateString(m->rcpts[i]));
	cJSON *meta = jget(in->doc, "meta");
	jadd_item(o, "meta", meta ? cJSON_Duplicate(meta, 1) : cJSON_CreateObject());
	/* the bytes by reference: the data segment, from the message's offset */
	char *path = spool_data_path(&Q->spool, &m->loc);
	jadd_string(o, "path", path);
	free(path);
	jadd_number(o, "offset", (double)m->loc.data_off);
	jadd_number(o, "size", (double)in->len);
	jadd_number(o, "hdr_end", (double)in->hdr_end);
	cJSON *args = cJSON_CreateArray();
	cJSON_AddItemToArray(args, arg);
	/* conn_meta, synthesized from the message meta */
	qpolicy_call_meta(Q->policy, "smtp_server_message_deferred_inject", args, 1,
			  meta ? cJSON_Duplicate(meta, 1) : cJSON_CreateObject(), done, in);
	return;
fail:
	log_warn("message %s: deferred inject: %s", m->id, err);
	finish(m);
	char why[400];
	snprintf(why, sizeof why, "4.3.0 %s", err);
	free_inj(in);
	qmgr_retry(m, NULL, 451, why, NULL);
}
