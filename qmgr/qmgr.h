/* kumo-qmgr private header: the queue manager.
 *
 * Messages live in scheduled queues named as KumoMTA names them
 * ([campaign:][tenant@]domain[!routing_domain], or the meta "queue").  A
 * message waits in a timer heap until it is due, then its scheduled queue
 * (with its get_queue_config answer and its resolved MX hosts) hands it to
 * a ready queue, one per destination site ("unspecified->" + MX hosts),
 * shared by every scheduled queue whose domain resolves to the same hosts.
 * A ready queue has its get_egress_path_config answer and up to
 * connection_limit SMTP connections that take messages from it. */
#ifndef KUMO_QMGR_H
#define KUMO_QMGR_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "lib/cidr.h"
#include "lib/logrec.h"
#include "qmgr/qmgr_dns.h"
#include "qmgr/qmgr_smtp.h"
#include "spool/spool.h"

#define QMGR_DEFAULT_RETRY 1200.0          /* retry_interval: 20 minutes */
#define QMGR_DEFAULT_MAX_AGE (7 * 86400.0) /* max_age: 7 days */
#define QMGR_RESOLVE_TTL 300.0             /* seconds an MX answer is reused */
#define QMGR_RESOLVE_FAIL_TTL 5.0          /* seconds a failed resolution is reused */
#define QMGR_CONFIG_TTL 300.0              /* seconds a queue/path config is reused */
#define QMGR_DEFERRED_INJECT "deferred_smtp_inject.kumomta.internal"
#define QMGR_INJECT_PARALLEL 16            /* smtp_server_message_deferred_inject calls at once */

struct squeue;
struct rqueue;
struct conn;

enum msg_state { M_WAIT, M_DUE, M_READY, M_FLIGHT };

struct qmsg {
	char id[SPOOL_ID_LEN + 1];
	char *sender;            /* owned */
	char **rcpts;            /* owned, n_rcpts strings */
	size_t n_rcpts;
	bool rcpt_array;         /* the meta had an array: records keep that shape */
	double created;          /* unix seconds, from the id */
	size_t size;             /* payload bytes, 0 until known */
	int num_attempts;
	double due;              /* unix seconds */
	enum msg_state state;
	size_t heap_idx;         /* in M_WAIT */
	struct squeue *sq;
	struct qmsg *next, *prev;    /* list of the queue or connection holding it */
	char *mem;               /* owned: body of a deferred_spool message not yet spooled */
	size_t mem_len;
	char *mem_meta;          /* owned: its meta JSON text */
	bool spooled;
	size_t spool_wait;       /* 1 + its index in the queue of spool_mem_later, or 0 */
	bool listed;             /* loaded from a spool listing, not a notice */
	struct spool_loc loc;    /* where it is, when spooled */
	struct qmsg *hnext;      /* id hash chain */
};

struct msg_list {
	struct qmsg *head, *tail;
	size_t n;
};

/* get_queue_config's answer (defaults when there is no handler). */
struct queue_config {
	double retry_interval;
	double max_retry_interval;   /* 0: no cap */
	double max_age;
	char *egress_pool;           /* owned; NULL: "unspecified" */
	struct mx_entry *mx_list;    /* owned; NULL: MX lookup */
	size_t n_mx;
};

enum cfg_state { CFG_NONE, CFG_PENDING, CFG_OK, CFG_FAILED };

struct squeue {
	char *name;                  /* owned */
	char *domain, *tenant, *campaign, *routing_domain; /* owned; NULL when unset */
	enum cfg_state cfg_state;
	char *cfg_error;             /* owned */
	double cfg_at;               /* when it was loaded (monotonic) */
	uint64_t cfg_gen;
	struct queue_config cfg;
	bool resolving;
	struct dns_query *dq;
	double resolved_at;          /* monotonic; 0 never */
	struct rqueue *rq;           /* where its due messages go, once resolved */
	struct mx_result *res_fail;  /* owned: last failed resolution */
	double res_fail_at;          /* monotonic time of it */
	struct msg_list due;         /* M_DUE: waiting for config or resolution */
	size_t count;                /* every message of this queue, any state */
	bool internal;               /* QMGR_DEFERRED_INJECT: the policy's event, not SMTP */
	struct squeue *next;
};

struct egress_path {
	int smtp_port;
	enum tls_mode tls;
	int connection_limit;
	int max_deliveries_per_connection;
	struct smtp_timeouts timeouts;
	struct cidr *prohibited;     /* owned */
	size_t n_prohibited;
	struct cidr *skip;           /* owned: skip_hosts */
	size_t n_skip;
	char *ehlo_domain;           /* owned; NULL: the host name */
};

struct rqueue {
	char *name;                  /* owned: "unspecified->site@smtp_client" */
	char *site;                  /* owned */
	char *routing_domain;        /* owned: for get_egress_path_config */
	struct mx_result *mx;        /* owned: the hosts to try, in order */
	enum cfg_state cfg_state;
	char *cfg_error;             /* owned */
	double cfg_at;
	uint64_t cfg_gen;
	struct egress_path path;
	struct msg_list ready;       /* M_READY */
	struct conn *conns;          /* every connection, idle or busy */
	int n_conns;
	struct rqueue *next;
	size_t delivered, failed;    /* counters for the summary */
};

struct conn {
	struct rqueue *rq;
	struct smtp_client *c;
	size_t host, addr;           /* position in rq->mx being tried */
	struct qmsg *m;              /* in flight, or NULL (idle) */
	struct smtp_msg sm;          /* its view for the client */
	char *data;                  /* owned: the loaded body */
	int deliveries;
	bool ready;                  /* past the greeting */
	char peer_name[256];
	char peer_addr[64];
	char session_id[40];
	struct conn *next;
};

struct qmgr {
	struct event_base *base;
	struct spool spool;
	struct logrec logs;
	struct dns *dns;
	SSL_CTX *ssl_verify, *ssl_insecure;
	char hostname[256];
	struct qpolicy *policy;
	uint64_t generation;         /* of the policy, from its replies */
	struct squeue *squeues;
	struct rqueue *rqueues;
	struct qmsg **hash;          /* id -> message */
	size_t hash_size, n_msgs;
	struct qmsg **heap;          /* M_WAIT, by due */
	size_t heap_n, heap_cap;
	struct event *timer;
	struct event *rescan_timer;
	bool stopping;
	struct event *stop_timer;
	size_t n_flight;
};

extern struct qmgr *Q;

double now_real(void);
double now_mono(void);

/* qmgr_queue.c */
void qmgr_queue_init(void);
void qmgr_queue_free(void);          /* at exit: frees everything */
/* Takes a message in the spool at loc (mem NULL) or from smtpd in memory
 * (loc NULL; mem and mem_meta, taken over even on failure); the meta JSON is
 * the spool's meta document.  0, or -1 with a reason. */
int qmgr_add(const char *id, const cJSON *meta, const struct spool_loc *loc, char *mem,
	     size_t mem_len, char *mem_meta, char *err, size_t errlen);
struct qmsg *qmgr_find(const char *id);
/* Sets m's sender and recipients from a spool meta document (replacing
 * any it had). */
void qmgr_set_envelope(struct qmsg *m, const cJSON *doc);
/* Adds a spooled message (unless known) from its meta text, or, with meta
 * NULL, the meta read at loc.  0, or -1 with a reason. */
int qmgr_load(const char *id, const struct spool_loc *loc, const char *meta, size_t meta_len,
	      char *err, size_t errlen);
/* A worker's notice of a new message: qmgr_load (from meta, the spooled
 * record sent with the notice, when it is an object), unless a spool
 * listing found the message first and it is done already (the notice came
 * late). */
int qmgr_notice(const char *id, const struct spool_loc *loc, const cJSON *meta, char *err,
		size_t errlen);
/* Forgets the listed messages done more than QMGR_LISTED_DONE_SECS ago
 * (all: every one, at exit). */
void qmgr_listed_done_expire(bool all);
#define QMGR_LISTED_DONE_SECS 900.0
void qmgr_flush(size_t *n);          /* every waiting message due now */
/* Moves the waiting messages of sparse segments into this process's
 * segment (qmgr_queue.c); how many moved.  Runs by itself a little after
 * messages start waiting. */
size_t qmgr_compact(void);
cJSON *qmgr_summary(void);
void qmgr_policy_changed(void);     /* a reload: configs are fetched again */
void qmgr_stop(void);                /* no new deliveries; spool what is in memory */
/* Outcomes (qmgr_queue.c), for qmgr_inject.c too: a log record; a transient
 * failure (record, then wait or expire); a bounce (record, removed); done
 * (removed, no record); rebound into the queue its meta names (due now). */
void qmgr_record(const char *type, struct qmsg *m, char **rcpts, size_t n, struct conn *c,
		 int code, const char *text, const char *command);
void qmgr_retry(struct qmsg *m, struct conn *c, int code, const char *text, const char *command);
void qmgr_bounce(struct qmsg *m, struct conn *c, int code, const char *text, const char *command);
void qmgr_done(struct qmsg *m);
void qmgr_rebind(struct qmsg *m, const cJSON *meta);

/* qmgr_inject.c: deferred_queue messages through
 * smtp_server_message_deferred_inject */
size_t inject_busy(void);
void inject_start(struct qmsg *m);     /* m is M_FLIGHT, counted in n_flight */
size_t qmgr_spool_memory(void);      /* writes every in-memory message; count written */
int spool_mem_write(struct qmsg *m); /* writes one; 0 or -1 (logged) */
/* Queues m to be written with the others queued in the same loop pass, in
 * one commit at its end (a deferred_spool message after its first failure). */
void spool_mem_later(struct qmsg *m);

/* qmgr_policy.c: kumo-policyd client */
struct qpolicy;
typedef void (*qpolicy_cb)(void *arg, const cJSON *reply, const char *error);
struct qpolicy *qpolicy_new(struct event_base *base, const char *sockname);
void qpolicy_free(struct qpolicy *p);
/* Calls event with args (array, taken over).  The callback gets the reply
 * (result "ok"), or an error text (policyd gone, Lua error, kumo.reject,
 * timeout) with the reply when there was one (a rejection: its "code" and
 * "text"); it is never called from inside this function.  Returns a
 * request id. */
uint64_t qpolicy_call(struct qpolicy *p, const char *event, cJSON *args, qpolicy_cb cb, void *arg);
/* The same with connection metadata (taken over) inserted at meta_pos. */
uint64_t qpolicy_call_meta(struct qpolicy *p, const char *event, cJSON *args, int meta_pos, cJSON *meta,
			   qpolicy_cb cb, void *arg);
void qpolicy_cancel(struct qpolicy *p, uint64_t id);

/* qmgr_ctl.c: the socket smtpd and kumod talk to */
void ctl_init(int listen_fd);
/* The eight numbers of a "new" notice's "loc" (smtpd_qmgr.c writes them):
 * decimal, 1 to 19 digits each (no sign), one space between them, nothing
 * else.  0, or -1 when p is not that (v then partly written). */
int qmgr_loc_numbers(const char *p, uint64_t v[8]);
void ctl_close(void);

/* qmgr_config.c: turning policy answers into configs */
int queue_config_parse(const cJSON *ret, struct queue_config *out, char *err, size_t errlen);
void queue_config_free(struct queue_config *c);
int egress_path_parse(const cJSON *ret, struct egress_path *out, char *err, size_t errlen);
void egress_path_free(struct egress_path *p);
/* Queue name per KumoMTA's table: [campaign:][tenant@]domain[!routing_domain] */
char *queue_name(const char *campaign, const char *tenant, const char *domain, const char *routing_domain);

#endif
