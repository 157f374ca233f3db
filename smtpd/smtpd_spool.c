/* smtpd_spool: the worker's spool writer thread.  Sessions submit jobs (the
 * messages of one transaction); the thread takes everything queued, stores
 * it with one spool_commit (one group commit for all of it), and hands the
 * finished jobs back to the event loop through a pipe, where each job's
 * callback runs.  A job may carry its reply ("250 OK ids=..."): once the
 * commit has stored all of the job, the thread sends it on the client's
 * socket itself, without waiting for the loop to be woken and get to the
 * callback (which then writes only what the socket did not take).
 * Each commit is counted in the worker's row of the shared commit
 * statistics (lib/ipc.h), which `kumoctl status` sums.
 * Entry points: spool_writer_new, spool_writer_set_stats,
 * spool_writer_submit, spool_writer_free.
 * Storage errors are reported per item in the job. */
#include "smtpd/smtpd.h"
#include "lib/ipc.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

struct spool_writer {
	struct spool *spool;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct spool_job *queue, **queue_tail;   /* waiting for the thread */
	struct spool_job *done, **done_tail;     /* finished, for the loop */
	bool stop;
	int pipe_fd[2];
	struct event *notify;
	struct ipc_commit_stats *stats;          /* shared (lib/ipc.h), or NULL */
};

static uint64_t mono_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

/* Adds one commit to the shared statistics (with w->mu held). */
static void count_commit(struct spool_writer *w, size_t stored, size_t failed, uint64_t us)
{
	struct ipc_commit_stats *st = w->stats;
	if (!st)
		return;
	if (stored) {
		__atomic_add_fetch(&st->commits, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&st->messages, stored, __ATOMIC_RELAXED);
		__atomic_add_fetch(&st->us_total, us, __ATOMIC_RELAXED);
		__atomic_add_fetch(&st->us_hist[hist_bucket(us)], 1, __ATOMIC_RELAXED);
	}
	if (failed)
		__atomic_add_fetch(&st->failed, failed, __ATOMIC_RELAXED);
}

static void *writer_main(void *arg)
{
	struct spool_writer *w = arg;
	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (!w->queue && !w->stop) {
			/* idle: now and then, seal an old segment (spool_commit with
			 * nothing), so the queue manager can remove it when done */
			struct timespec until;
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_sec += (time_t)(SPOOL_SEG_MAX_AGE / 2);
			if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT && !w->queue)
				spool_commit(w->spool, NULL, 0);
		}
		if (!w->queue && w->stop)
			break;
		struct spool_job *batch = w->queue;
		w->queue = NULL;
		w->queue_tail = &w->queue;
		pthread_mutex_unlock(&w->mu);

		size_t total = 0;
		for (struct spool_job *j = batch; j; j = j->next)
			total += j->n;
		struct spool_item *items = xcalloc(total ? total : 1, sizeof *items);
		size_t k = 0;
		for (struct spool_job *j = batch; j; j = j->next)
			for (size_t i = 0; i < j->n; i++)
				items[k++] = j->items[i];
		uint64_t t0 = mono_us();
		spool_commit(w->spool, items, total);
		uint64_t took = mono_us() - t0;
		size_t failed = 0;
		k = 0;
		for (struct spool_job *j = batch; j; j = j->next) {
			j->failed = 0;
			for (size_t i = 0; i < j->n; i++) {
				j->items[i] = items[k++];
				j->failed += j->items[i].result != 0;
			}
			failed += j->failed;
			if (j->early && !j->failed) {
				/* stored: the client hears it now */
				ssize_t w;
				do
					w = send(j->early_fd, j->early, j->early_len, MSG_DONTWAIT | MSG_NOSIGNAL);
				while (w < 0 && errno == EINTR);
				j->early_sent = w > 0 ? (size_t)w : 0;
			}
		}
		free(items);

		pthread_mutex_lock(&w->mu);
		count_commit(w, total - failed, failed, took);
		struct spool_job *last = batch;
		while (last->next)
			last = last->next;
		*w->done_tail = batch;
		w->done_tail = &last->next;
		char b = 1;
		ssize_t r = write(w->pipe_fd[1], &b, 1);
		(void)r; /* a full pipe already signals the loop */
		/* room for the next commits, made once this one is answered */
		pthread_mutex_unlock(&w->mu);
		spool_prepare(w->spool);
		pthread_mutex_lock(&w->mu);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static void writer_notify(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct spool_writer *w = arg;
	char buf[256];
	while (read(fd, buf, sizeof buf) > 0)
		;
	pthread_mutex_lock(&w->mu);
	struct spool_job *done = w->done;
	w->done = NULL;
	w->done_tail = &w->done;
	pthread_mutex_unlock(&w->mu);
	while (done) {
		struct spool_job *next = done->next;
		done->next = NULL;
		done->done(done, done->ctx);
		done = next;
	}
}

struct spool_writer *spool_writer_new(struct event_base *base, struct spool *spool)
{
	struct spool_writer *w = xcalloc(1, sizeof *w);
	w->spool = spool;
	spool->prepare_later = true;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	w->queue_tail = &w->queue;
	w->done_tail = &w->done;
	if (pipe2(w->pipe_fd, O_NONBLOCK | O_CLOEXEC) != 0)
		log_fatal("spool writer: pipe: %s", strerror(errno));
	w->notify = event_new(base, w->pipe_fd[0], EV_READ | EV_PERSIST, writer_notify, w);
	event_add(w->notify, NULL);
	if (pthread_create(&w->thread, NULL, writer_main, w) != 0)
		log_fatal("spool writer: cannot start thread");
	return w;
}

void spool_writer_set_stats(struct spool_writer *w, struct ipc_commit_stats *stats)
{
	pthread_mutex_lock(&w->mu);
	w->stats = stats;
	pthread_mutex_unlock(&w->mu);
}

void spool_writer_submit(struct spool_writer *w, struct spool_job *job)
{
	job->next = NULL;
	pthread_mutex_lock(&w->mu);
	*w->queue_tail = job;
	w->queue_tail = &job->next;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

void spool_writer_free(struct spool_writer *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	writer_notify(w->pipe_fd[0], EV_READ, w);
	event_free(w->notify);
	close(w->pipe_fd[0]);
	close(w->pipe_fd[1]);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w);
}
