/* kumod (the master) private header. */
#ifndef KUMO_MASTER_H
#define KUMO_MASTER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/listener.h>

#define KUMOD_VERSION "0.1.0"

enum child_kind { CHILD_POLICYD = 0, CHILD_SMTPD, CHILD_QMGR };

struct child {
	enum child_kind kind;
	int index;              /* worker number */
	pid_t pid;              /* 0 when not running */
	double started;         /* monotonic seconds */
	double backoff;         /* seconds before the next restart */
	struct event *restart;  /* pending restart timer */
};

struct master {
	struct event_base *base;
	pid_t pid;              /* kumod's own pid (after --daemonize, the daemon's) */
	char *policy;           /* owned: policy path */
	char *bindir;           /* owned: where the helper programs are */
	char *policy_sock;      /* owned: "@kumomta-..." */
	int policy_listen_fd;
	char *qmgr_sock;        /* owned: "@kumomta-...-qmgr" */
	int qmgr_listen_fd;
	struct child qmgr;
	int *listen_fds;        /* owned */
	size_t n_listen;
	int config_fd;          /* memfd with the smtpd config */
	int counters_fd;        /* memfd with the session counters (lib/ipc.h) */
	uint64_t *counters;     /* its mapping, [workers][listeners] */
	struct child policyd;
	struct child *workers;  /* owned */
	int n_workers;
	bool stopping;
	bool qmgr_told, policyd_told;  /* SIGTERM sent during shutdown */
	const char *log_level;
	struct event *stop_timer;
	cJSON *listen_names;    /* owned: array of "ip:port" */
	bool drop;              /* started as root with --user: children switch */
	uid_t run_uid;
	gid_t run_gid;
	struct evconnlistener *control;
	char *control_path;     /* owned */
};

/* master_child.c */
void child_spawn(struct master *m, struct child *c);
void child_reap(struct master *m);
int children_running(const struct master *m);
double monotime(void);

/* kumod.c: has kumo-policyd load the policy file again (SIGHUP, kumoctl
 * reload).  0, or -1 with the Lua error; the old policy keeps serving. */
int master_reload(struct master *m, char *err, size_t errlen);
/* kumod.c: one request to kumo-qmgr (op summary or flush), answered within
 * timeout_ms; the reply (caller owns) or NULL with err. */
cJSON *master_qmgr_request(struct master *m, const char *op, int timeout_ms, char *err, size_t errlen);

/* master_notify.c: sd_notify(3) state ("READY=1", ...) to $NOTIFY_SOCKET,
 * if set.  0, or -1 when the send failed. */
int master_notify(const char *state);

/* master_control.c: the kumoctl socket */
int control_open(struct master *m, const char *path, char *err, size_t errlen);
void control_close(struct master *m);

/* master_listen.c: binds every listener of the config; -1 with a reason */
int listeners_bind(const cJSON *listeners, int **fds, size_t *n, char *err, size_t errlen);

#endif
