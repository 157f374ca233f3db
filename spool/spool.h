/* The durable spool: two directories ("data" and "meta", from
 * kumo.define_spool), one file per message in each, named by the message's
 * 32-hex id under a two-hex subdirectory: <path>/<id[0..1]>/<id>.
 * Each file is the payload followed by a fixed 37-byte trailer line
 *   "KUMOSPOOL1 <16 hex payload length> <8 hex crc32c>\n"
 * that must validate for the file to count as whole.
 *
 * A commit writes every file of a batch under a temporary name in
 * <path>/new/, flushes the file system once (syncfs), renames each into
 * place and flushes again, so many messages share one pair of flushes
 * (group commit).  Nothing here logs; errors come back in err buffers. */
#ifndef KUMO_SPOOL_H
#define KUMO_SPOOL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define SPOOL_ID_LEN 32
#define SPOOL_TRAILER_LEN 37

struct spool {
	char *data_path;  /* owned */
	char *meta_path;  /* owned */
	int data_dirfd;   /* O_PATH|O_DIRECTORY descriptors, owned */
	int meta_dirfd;
	int lock_fd;      /* -1 unless spool_lock succeeded */
};

/* A new UUID v1 style id: 32 lowercase hex digits, time-ordered, unique
 * across processes (random node id per process).  out gets 33 bytes. */
void spool_id_new(char out[SPOOL_ID_LEN + 1]);
/* Creation time (unix seconds, fractional) encoded in an id; -1 if bad. */
double spool_id_time(const char *id);
bool spool_id_valid(const char *id);

/* Creates the directories (and new/, quarantine/) as needed, checks they
 * are writable, opens them.  0 or -1 with a reason naming the path. */
int spool_open(struct spool *s, const char *data_path, const char *meta_path,
	       char *err, size_t errlen);
void spool_close(struct spool *s);
/* Takes an exclusive lock on <meta_path>/lock (pid written inside).
 * -1 with "spool is locked by pid N" when another process holds it. */
int spool_lock(struct spool *s, char *err, size_t errlen);

struct spool_item {
	char id[SPOOL_ID_LEN + 1];
	const struct iovec *data;   /* message bytes, not owned */
	int data_cnt;
	const char *meta;           /* meta JSON text, not owned */
	size_t meta_len;
	int result;                 /* out: 0 stored, -1 failed */
	char err[160];              /* out: reason when result is -1 */
};

/* Stores every item durably (see above).  Returns the number that failed;
 * a failure of the shared flush fails every item. */
size_t spool_commit(struct spool *s, struct spool_item *items, size_t n);

/* Removes a message's two files (meta first). 0 or -1. */
int spool_remove(struct spool *s, const char *id, char *err, size_t errlen);

/* Reads and validates one file; *payload (caller frees) excludes the
 * trailer.  which is "data" or "meta".  0, or -1 with a reason. */
int spool_read(struct spool *s, const char *which, const char *id, char **payload,
	       size_t *len, char *err, size_t errlen);

/* Validates a whole file image: 0 and *payload_len, or -1 with a reason. */
int spool_trailer_check(const char *buf, size_t len, size_t *payload_len,
			char *err, size_t errlen);
void spool_trailer_make(char out[SPOOL_TRAILER_LEN + 1], const struct iovec *iov, int cnt);

struct spool_scan_stats {
	size_t found;        /* whole messages */
	size_t quarantined;  /* moved to quarantine/ */
	size_t swept;        /* temporary files removed from new/ */
};

/* Walks the meta spool at start: sweeps new/, validates each message's
 * two files, moves a message that fails to <path>/quarantine/ (calling
 * warn with the reason), and calls found() for each whole one.  0 or -1. */
int spool_scan(struct spool *s,
	       void (*found)(void *arg, const char *id),
	       void (*warn)(void *arg, const char *id, const char *why),
	       void *arg, struct spool_scan_stats *st, char *err, size_t errlen);

/* Lists the ids in the meta spool without reading or moving anything, so
 * it is safe while other processes commit (a message's meta file is renamed
 * into place after its data file, and removed before it).  0 or -1. */
int spool_list(struct spool *s, void (*found)(void *arg, const char *id), void *arg,
	       char *err, size_t errlen);

#endif
