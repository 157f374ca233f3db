/* JSON log records in KumoMTA's shape (reference/log_record.md), one per
 * line, written to segment files named YYYYMMDD-HHMMSS.<nanoseconds> (UTC)
 * under kumo.configure_local_logs' log_dir.  Unlike KumoMTA the segments
 * are plain text, not zstd-compressed.  Each process writes its own
 * segment; a segment is closed at max_file_size bytes or after
 * max_segment_duration. */
#ifndef KUMO_LOGREC_H
#define KUMO_LOGREC_H
#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include <cjson/cJSON.h>
#include "lib/jsonw.h"

struct logrec {
	char *dir;            /* owned; NULL: logging disabled */
	int fd;               /* current segment, -1 if none */
	size_t written;       /* bytes in the current segment */
	size_t synced;        /* ... of which the kernel was asked to write out */
	size_t max_file_size; /* default 1,000,000,000 */
	double max_segment_duration; /* seconds, 0 = unlimited */
	time_t opened;
	char nodeid[37];
	struct jbuf buf;      /* owned: records not yet written */
	/* called when the buffer stops being empty, so the process can
	 * arrange a logrec_flush soon (LOGREC_FLUSH_MS later) */
	void (*want_flush)(void *arg);
	void *want_flush_arg;
	struct event *flush_ev;  /* owned, from logrec_attach */
};

struct event_base;
/* Flushes LOGREC_FLUSH_MS after the first record of an empty buffer (a
 * failure is logged with log_warn).  logrec_close frees it. */
void logrec_attach(struct logrec *lr, struct event_base *base);

/* Reads a configure_local_logs table (NULL or JSON null: disabled), creates
 * log_dir.  0 or -1 with a reason.  logrec_close flushes. */
int logrec_open(struct logrec *lr, const cJSON *conf, char *err, size_t errlen);
void logrec_close(struct logrec *lr);

/* Records are added to a buffer, written when it holds LOGREC_BUF_MAX
 * bytes, at logrec_flush and at logrec_close. */
#define LOGREC_BUF_MAX (64u * 1024u)
/* Every this many bytes written, the kernel is asked to start writing them
 * out (sync_file_range, without waiting): so dirty log pages never pile
 * up, to be written all at once 30 s later (the kernel's dirty expiry)
 * while the spool waits for its flushes. */
#define LOGREC_SYNC_BYTES (1024u * 1024u)
/* The longest a record waits in the buffer of an attached logrec: a write
 * per this much time, not one per loop pass, and whole pages per write. */
#define LOGREC_FLUSH_MS 100
/* Writes what is buffered (one write).  0, or -1 with a reason. */
int logrec_flush(struct logrec *lr, char *err, size_t errlen);

/* A record for logrec_put: KumoMTA's fields (type, id, sender, recipient,
 * queue, site, size, response, peer_address, timestamp, event_time,
 * created, created_time, num_attempts, bounce_classification,
 * egress_pool, egress_source, source_address, feedback_report, meta,
 * headers, delivery_protocol, reception_protocol, nodeid), with those
 * below set, and session_id and extra's members after them.  A NULL
 * string is "" for id, sender, recipient, queue, site and peer name, and
 * null for the others.  response: the code, the enhanced code parsed from
 * text ("4.3.0 ..."), the rest of text as content, and command. */
struct logrec_fields {
	const char *type, *id;
	double created;                  /* <= 0: now */
	const char *sender;
	const char *recipient;           /* one recipient, or */
	const cJSON *recipient_json;     /* any JSON value (an array) */
	const char *queue, *site;
	double size;
	bool response;                   /* false: "response":null */
	int code;
	const char *text, *command;
	const char *peer_name, *peer_addr;  /* peer_address null without addr */
	int num_attempts;
	const char *egress_pool, *egress_source, *delivery_protocol;
	const char *session_id;          /* added after the standard fields */
	const cJSON *extra;              /* its members too, after session_id */
};
/* Adds the record as one line to the buffer (no cJSON tree is built).
 * 0, or -1 with a reason (of a write this call made). */
int logrec_put(struct logrec *lr, const struct logrec_fields *f, char *err, size_t errlen);

/* RFC 3339 time with nanoseconds, UTC. */
void logrec_rfc3339(double t, char *buf, size_t buflen);

#endif
