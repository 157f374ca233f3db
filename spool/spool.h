/* The durable spool: two directories ("data" and "meta", from
 * kumo.define_spool) holding segments, not a file per message.
 *
 * A segment is named by its writer: 16 hex digits of its creation time in
 * microseconds and 8 of the writer's pid (24 characters).  It has
 *   <data>/seg/<name>     the message bytes, back to back;
 *   <meta>/seg/<name>     one record per message: id, where its bytes are in
 *                         the data file and their CRC-32C, the meta JSON;
 *                         a SEAL record when the writer moved on;
 *   <meta>/seg/<name>.j   the journal of the queue manager: DONE (the message
 *                         left) and META (its meta replaced) records.
 * Every record is a 76-byte header (with its own CRC-32C) and the meta text
 * with its CRC-32C, so a reader can tell a whole record from a torn one.
 * When data and meta are on one device (inline_data, see spool_open) a
 * segment has no data file: each message's bytes follow its record in the
 * meta file (an INLINE record), so that a commit is one write.
 *
 * Each writer process appends to its own segment.  A commit appends every
 * message of a batch and flushes (fdatasync), so many messages share the
 * flushes (group commit) and no file is created per message.  With
 * inline_data a commit is one gathered write and one fdatasync.  Otherwise
 * it writes both files; where the file system allows it (see spool_open),
 * the data file's bytes are only written out and the meta file's fdatasync
 * flushes the disk for both: one disk flush per commit instead of two.  A
 * segment is rolled at SPOOL_SEG_MAX_BYTES,
 * SPOOL_SEG_MAX_MSGS or SPOOL_SEG_MAX_AGE seconds, and removed (all three
 * files) once it is sealed and every message in it is done.
 * Nothing here logs; errors come back in err buffers. */
#ifndef KUMO_SPOOL_H
#define KUMO_SPOOL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define SPOOL_ID_LEN 32
#define SPOOL_SEG_NAME_LEN 24
#define SPOOL_SEG_MAX_BYTES (64u * 1024u * 1024u)
#define SPOOL_SEG_MAX_MSGS 20000u
#define SPOOL_SEG_MAX_AGE 60.0

struct spool_seg;  /* a segment this process knows (see spool.c) */

struct spool {
	char *data_path;  /* owned */
	char *meta_path;  /* owned */
	int data_dirfd;   /* <data>/seg and <meta>/seg, owned */
	int meta_dirfd;
	int data_rootfd;  /* <data> and <meta> themselves, owned */
	int meta_rootfd;
	int lock_fd;      /* -1 unless spool_lock succeeded */
	struct spool_seg *segs;  /* every segment known here */
	struct spool_seg *cur;   /* the one this process appends to, or NULL */
	uint64_t last_name_us;   /* keeps this writer's segment names increasing */
	bool prepare_later;      /* the caller runs spool_prepare after answering */
	bool commit_failed;      /* the last commit failed: spool_prepare does nothing */
	bool inline_data;        /* new segments keep the bytes in the meta file */
	bool one_flush;          /* commits may flush the disk once (spool_open) */
	char flush_mode[160];    /* why one_flush is set or not, for the log */
	uint64_t commit_flushes; /* fdatasync calls made by commits */
};

/* Where a stored message is: returned by spool_commit and spool_list. */
struct spool_loc {
	struct spool_seg *seg;
	uint64_t data_off, data_len;
	uint64_t meta_off;        /* of the meta text, in the segment or its journal */
	uint64_t stamp;           /* microseconds; the newest record of an id wins */
	uint32_t data_crc, meta_len, meta_crc;
	bool meta_in_journal;
	bool data_in_meta;        /* an INLINE record: data_off is in the meta file */
};

/* A new UUID v1 style id: 32 lowercase hex digits, time-ordered, unique
 * across processes (random node id per process).  out gets 33 bytes. */
void spool_id_new(char out[SPOOL_ID_LEN + 1]);
/* Creation time (unix seconds, fractional) encoded in an id; -1 if bad. */
double spool_id_time(const char *id);
bool spool_id_valid(const char *id);

/* Creates the directories (seg/, new/, quarantine/) as needed, checks they
 * are writable, opens them.  0 or -1 with a reason naming the path.
 * Sets inline_data when data and meta are on one device (one file per
 * segment then does what two would, with one write per commit), and else
 * one_flush when one disk flush can make a commit durable: data and meta
 * on one device, of a file system that overwrites allocated blocks in
 * place and does not journal file data (ext2/3/4 without data=journal or
 * chattr +j, XFS); flush_mode says which, or why not.  A caller may clear
 * inline_data before the first commit (two files per segment). */
int spool_open(struct spool *s, const char *data_path, const char *meta_path,
	       char *err, size_t errlen);
/* How commits go, for the log: inline_data, or else flush_mode. */
const char *spool_commit_mode(const struct spool *s);
/* Seals this process's segment (if any) and closes everything. */
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
	struct spool_loc loc;       /* out: where it is, when stored */
	char seg_name[SPOOL_SEG_NAME_LEN + 1];  /* out: loc's segment */
};

/* Stores every item durably (see above).  Returns the number that failed;
 * a failure of the shared flush fails every item.  With n == 0 it seals
 * this process's segment if it is older than SPOOL_SEG_MAX_AGE (writers
 * call it when idle). */
size_t spool_commit(struct spool *s, struct spool_item *items, size_t n);
/* Readies the segment for the next commits (zeros written and flushed past
 * its ends).  spool_commit does it itself unless prepare_later is set, for
 * a writer that answers a commit's messages first and prepares after.
 * Nothing after a failed commit (the disk may be full). */
void spool_prepare(struct spool *s);

/* The segment called name (as announced by its writer), known from now on;
 * NULL if name is not a segment name.  A newer segment of the same writer
 * means the older ones are sealed. */
struct spool_seg *spool_seg_get(struct spool *s, const char *name);
const char *spool_seg_name(const struct spool_seg *seg);

/* This process holds the message (it will call spool_done for it once). */
void spool_hold(struct spool *s, const struct spool_loc *loc);

/* Reads a message's bytes or its meta text (NUL-terminated, caller frees)
 * and checks the CRC.  0, or -1 with a reason. */
int spool_read_data(struct spool *s, const struct spool_loc *loc, char **out, size_t *len,
		    char *err, size_t errlen);
int spool_read_meta(struct spool *s, const struct spool_loc *loc, char **out, size_t *len,
		    char *err, size_t errlen);
/* The file holding loc's bytes (for readers that pread at data_off): the
 * data file of its segment, or its meta file for an INLINE record. */
char *spool_data_path(const struct spool *s, const struct spool_loc *loc);

/* Replaces the meta of a held message (a META journal record, flushed);
 * loc then points at the new text.  0 or -1. */
int spool_update_meta(struct spool *s, struct spool_loc *loc, const char *id, const char *meta,
		      size_t meta_len, char *err, size_t errlen);

/* The message left the spool (a DONE journal record, not flushed).  When
 * its segment is sealed and everything in it is done, the segment's files
 * are removed.  0 or -1. */
int spool_done(struct spool *s, const struct spool_loc *loc, const char *id, char *err,
	       size_t errlen);

/* Whether the segment is sealed and the messages this process holds in it
 * take at most half of its data file: then moving them elsewhere (a new
 * commit, then spool_done of the old record) lets the segment go. */
bool spool_seg_sparse(struct spool *s, struct spool_seg *seg);
/* Whether any segment known here is (spool_seg_sparse). */
bool spool_any_sparse(struct spool *s);

/* Looks again at every sealed segment whose held messages are all done and
 * removes it if nothing else is in it.  Returns how many were removed. */
size_t spool_reap(struct spool *s);

/* Calls found() for every message in the spool that is not done (the newest
 * record of each id), with its location and meta text.  Reads and moves
 * nothing else, so it is safe while other processes commit: a record is
 * seen only once it is whole.  0 or -1. */
typedef void (*spool_found_cb)(void *arg, const char *id, const struct spool_loc *loc,
			       const char *meta, size_t meta_len);
int spool_list(struct spool *s, spool_found_cb found, void *arg, char *err, size_t errlen);
/* The same, reading only the segments whose meta file changed (size or
 * mtime) since an earlier listing on s read it, that it never read, or that
 * it read within a second of their last change (a file system clock tick
 * could hide a write just after that read): what it reports is what is new
 * since then, at the cost of one stat per old segment. */
int spool_list_changed(struct spool *s, spool_found_cb found, void *arg, char *err, size_t errlen);

struct spool_scan_stats {
	size_t found;        /* whole messages */
	size_t quarantined;  /* copied to quarantine/ and marked done */
	size_t swept;        /* torn records at the end of a segment, dropped */
	size_t segments;     /* segments left in place */
	size_t removed;      /* segments removed (nothing left in them) */
};

/* Recovery at start, while no writer runs: walks every segment, drops a
 * torn tail (a commit that never finished, so never acknowledged), checks
 * every message's bytes against their CRC, copies a damaged message to
 * <path>/quarantine/<id> (calling warn with the reason) and marks it done,
 * seals every segment and removes those with nothing left, removes the
 * temporary files in new/, and calls found() for each whole message.
 * 0 or -1. */
int spool_scan(struct spool *s,
	       void (*found)(void *arg, const char *id),
	       void (*warn)(void *arg, const char *id, const char *why),
	       void *arg, struct spool_scan_stats *st, char *err, size_t errlen);

#endif
