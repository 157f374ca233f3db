/* spool: the on-disk message store, in segments (see spool.h for the layout).
 * Entry points: spool_open/close/lock, spool_commit (group commit to this
 * process's segment), spool_read_data/meta, spool_update_meta, spool_done,
 * spool_reap, spool_list (what is there, for the queue manager) and
 * spool_scan (recovery at start).
 * Failures return -1 (or a failure count) with reasons in err buffers. */
#include "spool/spool.h"
#include "lib/crc32c.h"
#include "lib/xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <unistd.h>

/* ---- records ---------------------------------------------------------------- */

/* A record, little-endian:
 *    0  u32  magic "KSR1"          4  u8 type, then 3 zero bytes
 *    8  u32  meta text length     12  u32 CRC-32C of the message bytes (MSG)
 *   16  u64  data offset          24  u64 data length (SEAL: how many messages)
 *   32  u64  stamp, microseconds  40  32 bytes: the message id (none in SEAL)
 *   72  u32  CRC-32C of bytes 0-71
 *   76  the meta text, then a u32 CRC-32C of it.
 * An INLINE record is a MSG record followed by the message bytes, in the
 * same file: its data offset is where they start, just after the meta CRC.
 * DONE and META records (journal) name their message by id and data offset. */

#define REC_MAGIC 0x3152534bu  /* "KSR1" */
#define REC_HDR 76u            /* header with its CRC */
#define REC_MIN (REC_HDR + 4u) /* with an empty meta text and its CRC */
#define META_MAX (16u * 1024u * 1024u)

enum { REC_MSG = 1, REC_SEAL = 2, REC_DONE = 3, REC_META = 4, REC_INLINE = 5 };

struct rec {
	int type;
	char id[SPOOL_ID_LEN + 1];
	uint64_t data_off, data_len, stamp;
	uint32_t data_crc, meta_len, meta_crc;
	uint64_t off;       /* of the record in its file */
	uint64_t meta_off;  /* of its meta text */
	bool meta_ok;       /* the meta text matches its CRC */
};

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Appends one record to *buf (grown as needed). */
static void rec_put(unsigned char **buf, size_t *len, size_t *cap, int type, const char *id,
		    uint64_t data_off, uint64_t data_len, uint32_t data_crc, uint64_t stamp,
		    const char *meta, size_t meta_len)
{
	size_t need = *len + REC_MIN + meta_len;
	if (need > *cap) {
		*cap = need * 2;
		*buf = xrealloc(*buf, *cap);
	}
	unsigned char *p = *buf + *len;
	memset(p, 0, REC_HDR);
	put32(p, REC_MAGIC);
	p[4] = (unsigned char)type;
	put32(p + 8, (uint32_t)meta_len);
	put32(p + 12, data_crc);
	put64(p + 16, data_off);
	put64(p + 24, data_len);
	put64(p + 32, stamp);
	if (id)
		memcpy(p + 40, id, SPOOL_ID_LEN);
	put32(p + 72, crc32c(0, p, 72));
	if (meta_len)
		memcpy(p + REC_HDR, meta, meta_len);
	put32(p + REC_HDR + meta_len, crc32c(0, meta, meta_len));
	*len = need;
}

enum parse { P_OK, P_END, P_TORN, P_BAD };

/* Parses the record at off of buf[0, len).  P_OK (r filled, *next set),
 * P_END at the end, P_TORN when the rest is a record cut short or zeros
 * (a write that never finished: the file's end, or the start of a header
 * followed by nothing but the zeros a writer prepares), P_BAD when the
 * header is damaged. */
static enum parse rec_get(const unsigned char *buf, size_t len, size_t off, struct rec *r,
			  size_t *next)
{
	if (off == len)
		return P_END;
	size_t left = len - off;
	const unsigned char *p = buf + off;
	if (left < REC_MIN || get32(p) != REC_MAGIC || get32(p + 72) != crc32c(0, p, 72)) {
		size_t last = left; /* the last byte that is not zero */
		while (last > 0 && !p[last - 1])
			last--;
		return left < REC_MIN || last <= REC_MIN ? P_TORN : P_BAD;
	}
	memset(r, 0, sizeof *r);
	r->type = p[4];
	r->meta_len = get32(p + 8);
	r->data_crc = get32(p + 12);
	r->data_off = get64(p + 16);
	r->data_len = get64(p + 24);
	r->stamp = get64(p + 32);
	memcpy(r->id, p + 40, SPOOL_ID_LEN);
	r->id[SPOOL_ID_LEN] = '\0';
	if (r->type < REC_MSG || r->type > REC_INLINE || r->meta_len > META_MAX)
		return P_BAD;
	if (r->type != REC_SEAL && !spool_id_valid(r->id))
		return P_BAD;
	size_t end = off + REC_MIN + r->meta_len;
	if (r->type == REC_INLINE && (r->data_off != end || r->data_len > SIZE_MAX - end))
		return P_BAD;
	if ((uint64_t)r->meta_len + REC_MIN > left)
		return P_TORN;
	if (r->type == REC_INLINE && end + r->data_len > len)
		return P_TORN;  /* the file ends inside the message's bytes */
	r->off = off;
	r->meta_off = off + REC_HDR;
	r->meta_crc = get32(p + REC_HDR + r->meta_len);
	r->meta_ok = crc32c(0, p + REC_HDR, r->meta_len) == r->meta_crc;
	*next = r->type == REC_INLINE ? end + (size_t)r->data_len : end;
	return P_OK;
}

/* ---- segments --------------------------------------------------------------- */

struct spool_seg {
	struct spool_seg *next;
	char name[SPOOL_SEG_NAME_LEN + 1];
	pid_t pid;             /* of its writer, from the name */
	uint64_t created_us;
	int data_fd, meta_fd, jrn_fd;  /* -1 until needed */
	bool writing;          /* this process appends to it */
	bool inline_data;      /* no data file (writer: spool->inline_data) */
	bool sealed_hint;      /* its writer moved on, or is gone */
	bool ndone_known;
	size_t ndone;          /* DONE records in its journal */
	size_t held, released; /* spool_hold / spool_done calls here */
	uint64_t live_bytes;   /* data bytes of the held messages not yet done */
	uint64_t listed_size;  /* bytes of the meta file the last listing read */
	int64_t listed_mtime;  /* its mtime (ns) before that read */
	uint64_t data_size, meta_size;  /* append offsets (writer) */
	/* zeros already written and flushed past each end (writer), and the
	 * next amount to add; see prepare() */
	uint64_t data_prep, meta_prep, prep_step;
	bool prep_failed;
	size_t msgs;           /* records appended (writer) */
};

static uint64_t now_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static bool seg_name_valid(const char *name)
{
	for (int i = 0; i < SPOOL_SEG_NAME_LEN; i++)
		if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
			return false;
	return name[SPOOL_SEG_NAME_LEN] == '\0';
}

static struct spool_seg *seg_new(struct spool *s, const char *name)
{
	struct spool_seg *g = xcalloc(1, sizeof *g);
	memcpy(g->name, name, SPOOL_SEG_NAME_LEN + 1);
	char t[17];
	memcpy(t, name, 16);
	t[16] = '\0';
	g->created_us = strtoull(t, NULL, 16);
	g->pid = (pid_t)strtoul(name + 16, NULL, 16);
	g->data_fd = g->meta_fd = g->jrn_fd = -1;
	g->next = s->segs;
	s->segs = g;
	return g;
}

static void seg_close_fds(struct spool_seg *g)
{
	if (g->data_fd >= 0)
		close(g->data_fd);
	if (g->meta_fd >= 0)
		close(g->meta_fd);
	if (g->jrn_fd >= 0)
		close(g->jrn_fd);
	g->data_fd = g->meta_fd = g->jrn_fd = -1;
}

static void seg_free(struct spool *s, struct spool_seg *g)
{
	for (struct spool_seg **pp = &s->segs; *pp; pp = &(*pp)->next) {
		if (*pp == g) {
			*pp = g->next;
			break;
		}
	}
	if (s->cur == g)
		s->cur = NULL;
	seg_close_fds(g);
	free(g);
}

static bool try_remove(struct spool *s, struct spool_seg *g);

const char *spool_seg_name(const struct spool_seg *seg)
{
	return seg->name;
}

static struct spool_seg *seg_get(struct spool *s, const char *name, bool may_remove)
{
	if (!name || strlen(name) != SPOOL_SEG_NAME_LEN || !seg_name_valid(name))
		return NULL;
	for (struct spool_seg *g = s->segs; g; g = g->next)
		if (strcmp(g->name, name) == 0)
			return g;
	struct spool_seg *g = seg_new(s, name);
	struct spool_seg *o = s->segs, *next;
	for (; o; o = next) {
		next = o->next;
		if (o == g || o->pid != g->pid || o->created_us >= g->created_us || o->writing ||
		    o->sealed_hint)
			continue;
		/* its writer moved on: it is sealed, and may be finished with */
		o->sealed_hint = true;
		if (may_remove && o->released >= o->held)
			try_remove(s, o);
	}
	return g;
}

struct spool_seg *spool_seg_get(struct spool *s, const char *name)
{
	return seg_get(s, name, true);
}

/* Reads a whole file at dirfd/name; NULL with errno (ENOENT when absent). */
static unsigned char *slurp_at(int dirfd, const char *name, size_t *len)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	size_t size = (size_t)st.st_size, got = 0;
	unsigned char *buf = xmalloc(size + 1);
	while (got < size) {
		ssize_t r = pread(fd, buf + got, size - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	*len = got;
	return buf;
}

/* A meta file read for its records (in chunks of SLURP_CHUNK): the bytes
 * of an INLINE record's message larger than SLURP_SKIP are not read, but
 * for the last one; the buffer holds zeros there.  From a record that
 * rec_get does not take on, everything is read, so what the callers do
 * with damage sees the file as it is. */
#define SLURP_CHUNK (256u * 1024u)
#define SLURP_SKIP (64u * 1024u)

struct slurp {
	int fd;
	unsigned char *buf;
	size_t size, have;
};

static void slurp_upto(struct slurp *sl, size_t n)
{
	if (n > sl->size)
		n = sl->size;
	while (sl->have < n) {
		size_t want = n - sl->have < SLURP_CHUNK ? SLURP_CHUNK : n - sl->have;
		if (want > sl->size - sl->have)
			want = sl->size - sl->have;
		ssize_t r = pread(sl->fd, sl->buf + sl->have, want, (off_t)sl->have);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			sl->size = sl->have; /* shorter than it was: what there is */
			break;
		}
		sl->have += (size_t)r;
	}
}

static unsigned char *slurp_records(int dirfd, const char *name, size_t *len)
{
	struct slurp sl = { .fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC) };
	if (sl.fd < 0)
		return NULL;
	struct stat st;
	if (fstat(sl.fd, &st) != 0) {
		int e = errno;
		close(sl.fd);
		errno = e;
		return NULL;
	}
	sl.size = (size_t)st.st_size;
	sl.buf = xcalloc(1, sl.size + 1);
	size_t off = 0, next;
	struct rec r;
	for (;;) {
		slurp_upto(&sl, off + REC_HDR);
		if (sl.have < off + REC_HDR || get32(sl.buf + off + 8) > META_MAX)
			break;
		slurp_upto(&sl, off + REC_MIN + get32(sl.buf + off + 8));
		/* sl.size as the length: rec_get reads no message bytes */
		if (rec_get(sl.buf, sl.size, off, &r, &next) != P_OK)
			break;
		if (r.type == REC_INLINE && r.data_len > SLURP_SKIP && sl.have < next - 1)
			sl.have = next - 1; /* zeros stand for the bytes but the last */
		off = next;
	}
	slurp_upto(&sl, sl.size);
	close(sl.fd);
	*len = sl.size;
	return sl.buf;
}

static int write_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t w = pwrite(fd, p, len, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		len -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

static int writev_all(int fd, const struct iovec *iov, int cnt, uint64_t off)
{
	struct iovec v[256];
	while (cnt > 0) {
		int k = cnt < 256 ? cnt : 256;
		memcpy(v, iov, (size_t)k * sizeof *v);
		struct iovec *pv = v;
		int pk = k;
		while (pk > 0) {
			ssize_t w = pwritev(fd, pv, pk, (off_t)off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0)
				return -1;
			off += (uint64_t)w;
			while (pk > 0 && (size_t)w >= pv->iov_len) {
				w -= (ssize_t)pv->iov_len;
				pv++;
				pk--;
			}
			if (pk > 0) {
				pv->iov_base = (char *)pv->iov_base + w;
				pv->iov_len -= (size_t)w;
			}
		}
		iov += k;
		cnt -= k;
	}
	return 0;
}

/* Opens (creating) the segment's journal and counts its DONE records once. */
static int jrn_open(struct spool *s, struct spool_seg *g, bool create, char *err, size_t errlen)
{
	if (g->jrn_fd >= 0)
		return 0;
	char name[SPOOL_SEG_NAME_LEN + 3];
	snprintf(name, sizeof name, "%s.j", g->name);
	int fd = openat(s->meta_dirfd, name, O_RDWR | O_APPEND | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	if (fd < 0) {
		if (!create && errno == ENOENT && !g->ndone_known) {
			g->ndone = 0; /* no journal: nothing done */
			g->ndone_known = true;
		}
		snprintf(err, errlen, "open journal %s: %s", name, strerror(errno));
		return -1;
	}
	if (!g->ndone_known) {
		size_t len;
		unsigned char *buf = slurp_at(s->meta_dirfd, name, &len);
		size_t off = 0, next;
		struct rec r;
		g->ndone = 0;
		while (buf && rec_get(buf, len, off, &r, &next) == P_OK) {
			g->ndone += r.type == REC_DONE;
			off = next;
		}
		free(buf);
		g->ndone_known = true;
	}
	g->jrn_fd = fd;
	return 0;
}

/* A DONE or META record about the message record at target (named by its
 * id and its data offset: a segment may hold two records of one id). */
static int jrn_append(struct spool *s, const struct spool_loc *target, int type, const char *id,
		      const char *meta, size_t meta_len, uint64_t *meta_off, bool flush, char *err,
		      size_t errlen)
{
	struct spool_seg *g = target->seg;
	if (jrn_open(s, g, true, err, errlen) != 0)
		return -1;
	unsigned char *buf = NULL;
	size_t len = 0, cap = 0;
	rec_put(&buf, &len, &cap, type, id, target->data_off, target->data_len, 0, now_us(), meta,
		meta_len);
	struct stat st;
	int rc = 0;
	if (meta_off && fstat(g->jrn_fd, &st) != 0)
		rc = -1;
	if (rc == 0 && meta_off)
		*meta_off = (uint64_t)st.st_size + REC_HDR;
	while (rc == 0) {
		ssize_t w = write(g->jrn_fd, buf, len); /* O_APPEND: one record, one write */
		if (w < 0 && errno == EINTR)
			continue;
		if (w != (ssize_t)len)
			rc = -1;
		break;
	}
	if (rc == 0 && flush && fdatasync(g->jrn_fd) != 0)
		rc = -1;
	if (rc != 0)
		snprintf(err, errlen, "journal %s.j: %s", g->name, errno ? strerror(errno) : "short write");
	free(buf);
	return rc;
}

/* ---- open, close, lock ---------------------------------------------------- */

static int mkdir_p(const char *path, mode_t mode)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		/* parents are searchable (0755); only the spool itself is private */
		if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(tmp, mode) != 0 && errno != EEXIST)
		return -1;
	struct stat st;
	if (stat(tmp, &st) != 0)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

static int open_one(const char *path, int *rootfd, int *segfd, char *err, size_t errlen)
{
	char sub[4200];
	if (mkdir_p(path, 0700) != 0) {
		snprintf(err, errlen, "cannot create spool directory %s: %s", path, strerror(errno));
		return -1;
	}
	static const char *const subs[] = { "seg", "new", "quarantine" };
	for (int i = 0; i < 3; i++) {
		snprintf(sub, sizeof sub, "%s/%s", path, subs[i]);
		if (mkdir(sub, 0700) != 0 && errno != EEXIST) {
			snprintf(err, errlen, "cannot create %s: %s", sub, strerror(errno));
			return -1;
		}
	}
	/* prove we can create files in it */
	snprintf(sub, sizeof sub, "%s/seg/.probe.%d", path, (int)getpid());
	int fd = open(sub, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, errlen, "spool directory %s is not writable: %s", path, strerror(errno));
		return -1;
	}
	close(fd);
	unlink(sub);
	*rootfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	snprintf(sub, sizeof sub, "%s/seg", path);
	*segfd = open(sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*rootfd < 0 || *segfd < 0) {
		snprintf(err, errlen, "cannot open spool directory %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* Whether the ext4 file system on dev is mounted with data=journal; true
 * when /proc/self/mountinfo cannot tell (the careful answer). */
static bool mounted_data_journal(dev_t dev)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return true;
	char line[4096];
	bool seen = false, journal = false;
	while (fgets(line, sizeof line, f)) {
		unsigned maj, min;
		/* "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue" */
		if (sscanf(line, "%*d %*d %u:%u", &maj, &min) != 2 || makedev(maj, min) != dev)
			continue;
		const char *sep = strstr(line, " - ");
		if (!sep)
			continue;
		seen = true;
		if (strstr(sep, "data=journal"))
			journal = true;
	}
	fclose(f);
	return !seen || journal;
}

static bool one_flush_ok(const struct spool *s, char *why, size_t whylen)
{
	struct stat ds, ms;
	struct statfs fs;
	if (fstat(s->data_dirfd, &ds) != 0 || fstat(s->meta_dirfd, &ms) != 0 ||
	    fstatfs(s->data_dirfd, &fs) != 0) {
		snprintf(why, whylen, "two flushes per commit: cannot stat the spools: %s", strerror(errno));
		return false;
	}
	if (ds.st_dev != ms.st_dev) {
		snprintf(why, whylen, "two flushes per commit: data and meta are on different devices");
		return false;
	}
	if (fs.f_type != EXT4_SUPER_MAGIC && fs.f_type != XFS_SUPER_MAGIC) {
		snprintf(why, whylen, "two flushes per commit: file system type 0x%lx is not ext2/3/4 or xfs",
			 (unsigned long)fs.f_type);
		return false;
	}
	if (fs.f_type == EXT4_SUPER_MAGIC) {
		unsigned int flags = 0;
		if (ioctl(s->data_dirfd, FS_IOC_GETFLAGS, &flags) != 0 || (flags & FS_JOURNAL_DATA_FL) ||
		    mounted_data_journal(ds.st_dev)) {
			snprintf(why, whylen, "two flushes per commit: ext4 may journal the data spool's bytes");
			return false;
		}
	}
	if (fs.f_type == XFS_SUPER_MAGIC) {
		/* a realtime file's bytes are on another device than the log */
		struct fsxattr fx;
		if (ioctl(s->data_dirfd, FS_IOC_FSGETXATTR, &fx) != 0 ||
		    (fx.fsx_xflags & (FS_XFLAG_RTINHERIT | FS_XFLAG_REALTIME))) {
			snprintf(why, whylen, "two flushes per commit: xfs may put the data spool on its realtime device");
			return false;
		}
	}
	snprintf(why, whylen, "one flush per commit: data and meta on one %s device",
		 fs.f_type == XFS_SUPER_MAGIC ? "xfs" : "ext2/3/4");
	return true;
}

int spool_open(struct spool *s, const char *data_path, const char *meta_path,
	       char *err, size_t errlen)
{
	memset(s, 0, sizeof *s);
	s->data_dirfd = s->meta_dirfd = s->data_rootfd = s->meta_rootfd = s->lock_fd = -1;
	s->data_path = xstrdup(data_path);
	s->meta_path = xstrdup(meta_path);
	if (open_one(data_path, &s->data_rootfd, &s->data_dirfd, err, errlen) != 0 ||
	    open_one(meta_path, &s->meta_rootfd, &s->meta_dirfd, err, errlen) != 0) {
		spool_close(s);
		return -1;
	}
	s->one_flush = one_flush_ok(s, s->flush_mode, sizeof s->flush_mode);
	struct stat ds, ms;
	s->inline_data = fstat(s->data_dirfd, &ds) == 0 && fstat(s->meta_dirfd, &ms) == 0 &&
			 ds.st_dev == ms.st_dev;
	return 0;
}

const char *spool_commit_mode(const struct spool *s)
{
	return s->inline_data ? "one write and one flush per commit: data and meta on one device;"
				" message bytes kept in the meta segments"
			      : s->flush_mode;
}

/* Appends a SEAL record (the number of messages in data_len) to our segment;
 * it is flushed with the next commit of any segment, or by the kernel. */
static void seal_cur(struct spool *s)
{
	struct spool_seg *g = s->cur;
	if (!g)
		return;
	unsigned char *buf = NULL;
	size_t len = 0, cap = 0;
	rec_put(&buf, &len, &cap, REC_SEAL, NULL, 0, g->msgs, 0, now_us(), NULL, 0);
	if (write_all(g->meta_fd, buf, len, g->meta_size) == 0)
		g->meta_size += len;
	free(buf);
	/* the prepared zeros go (if a cut fails, the file stays longer and
	 * its seal is found by the scan at the next start) */
	int cut = 0;
	if (g->meta_prep > g->meta_size)
		cut |= ftruncate(g->meta_fd, (off_t)g->meta_size);
	if (g->data_fd >= 0 && g->data_prep > g->data_size)
		cut |= ftruncate(g->data_fd, (off_t)g->data_size);
	(void)cut;
	g->writing = false;
	g->sealed_hint = true;
	s->cur = NULL;
	if (g->held == 0)
		seg_free(s, g); /* a worker keeps nothing of what it wrote */
	/* else kumo-qmgr holds messages in it: it stays, for reading */
}

void spool_close(struct spool *s)
{
	seal_cur(s);
	while (s->segs)
		seg_free(s, s->segs);
	int *fds[] = { &s->data_dirfd, &s->meta_dirfd, &s->data_rootfd, &s->meta_rootfd, &s->lock_fd };
	for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
		if (*fds[i] >= 0)
			close(*fds[i]);
	free(s->data_path);
	free(s->meta_path);
	memset(s, 0, sizeof *s);
	s->data_dirfd = s->meta_dirfd = s->data_rootfd = s->meta_rootfd = s->lock_fd = -1;
}

int spool_lock(struct spool *s, char *err, size_t errlen)
{
	int fd = openat(s->meta_rootfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open %s/lock: %s", s->meta_path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		char buf[32] = "";
		ssize_t r = pread(fd, buf, sizeof buf - 1, 0);
		buf[r > 0 ? r : 0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		snprintf(err, errlen, "spool %s is locked by pid %s", s->meta_path, buf[0] ? buf : "?");
		close(fd);
		return -1;
	}
	char pid[32];
	int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
	if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
		snprintf(err, errlen, "cannot write %s/lock: %s", s->meta_path, strerror(errno));
		close(fd);
		return -1;
	}
	s->lock_fd = fd;
	return 0;
}

/* ---- writing ---------------------------------------------------------------- */

/* A new segment for this process: its files (the meta file alone with
 * inline_data) created, their directory entries flushed before anything in
 * them is acknowledged. */
static int seg_create(struct spool *s, char *err, size_t errlen)
{
	uint64_t t = now_us();
	if (t <= s->last_name_us)
		t = s->last_name_us + 1;
	s->last_name_us = t;
	char name[SPOOL_SEG_NAME_LEN + 1];
	snprintf(name, sizeof name, "%016" PRIx64 "%08x", t, (unsigned)getpid());
	bool inl = s->inline_data;
	int dfd = -1;
	if (!inl) {
		dfd = openat(s->data_dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (dfd < 0) {
			snprintf(err, errlen, "create data segment %s: %s", name, strerror(errno));
			return -1;
		}
	}
	int mfd = openat(s->meta_dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (mfd < 0) {
		snprintf(err, errlen, "create meta segment %s: %s", name, strerror(errno));
		if (!inl) {
			close(dfd);
			unlinkat(s->data_dirfd, name, 0);
		}
		return -1;
	}
	if ((!inl && fsync(s->data_dirfd) != 0) || fsync(s->meta_dirfd) != 0) {
		snprintf(err, errlen, "flush spool directory: %s", strerror(errno));
		if (!inl) {
			close(dfd);
			unlinkat(s->data_dirfd, name, 0);
		}
		close(mfd);
		unlinkat(s->meta_dirfd, name, 0);
		return -1;
	}
	struct spool_seg *g = seg_new(s, name);
	g->data_fd = dfd;
	g->meta_fd = mfd;
	g->inline_data = inl;
	g->writing = true;
	g->ndone_known = true; /* no journal yet */
	s->cur = g;
	return 0;
}

/* After each commit, each file of the segment being written is given zeros
 * (written and flushed) up to PREP_AHEAD bytes past its end, in steps from
 * PREP_FIRST doubling to PREP_MAX.  A commit then only overwrites blocks the file already has, so
 * its fdatasync writes the new bytes and flushes, and nothing else: no
 * block allocation, no new size in the inode (on a journalling file system,
 * no journal commit).  The zeros past the last record are what a reader
 * already takes for the end (rec_get: P_TORN); sealing cuts them off, and
 * so does the scan after a crash.  Preparing is an optimisation: when it
 * fails (the disk is full), the appends extend the files as before. */
#define PREP_FIRST (64u * 1024u)
#define PREP_MAX (1024u * 1024u)
/* kept ready past each end after a commit */
#define PREP_AHEAD (128u * 1024u)

static int zero_fill(int fd, uint64_t from, uint64_t to)
{
	static const unsigned char zeros[64 * 1024];
	while (from < to) {
		size_t n = to - from < sizeof zeros ? (size_t)(to - from) : sizeof zeros;
		if (write_all(fd, zeros, n, from) != 0)
			return -1;
		from += n;
	}
	return fdatasync(fd);
}

static void prepare(struct spool_seg *g, uint64_t data_need, uint64_t meta_need)
{
	if (g->prep_failed)
		return;
	if (g->data_prep >= data_need && g->meta_prep >= meta_need)
		return;
	if (!g->prep_step)
		g->prep_step = PREP_FIRST;
	uint64_t dto = g->data_prep, mto = g->meta_prep;
	if (dto < data_need)
		dto = data_need + g->prep_step;
	if (mto < meta_need)
		mto = meta_need + g->prep_step;
	if (g->prep_step < PREP_MAX)
		g->prep_step *= 2;
	uint64_t dfrom = g->data_prep > g->data_size ? g->data_prep : g->data_size;
	uint64_t mfrom = g->meta_prep > g->meta_size ? g->meta_prep : g->meta_size;
	if ((dto > dfrom && zero_fill(g->data_fd, dfrom, dto) != 0) ||
	    (mto > mfrom && zero_fill(g->meta_fd, mfrom, mto) != 0)) {
		g->prep_failed = true; /* whatever zeros got there are past the end */
		return;
	}
	g->data_prep = dto;
	g->meta_prep = mto;
}

void spool_prepare(struct spool *s)
{
	struct spool_seg *g = s->cur;
	if (g && !s->commit_failed)
		prepare(g, g->inline_data ? 0 : g->data_size + PREP_AHEAD, g->meta_size + PREP_AHEAD);
}

/* Fills it->loc for a message of segment g whose bytes start at data_off
 * and whose meta text at meta_off. */
static void item_loc(struct spool_seg *g, struct spool_item *it, uint64_t data_off, uint64_t meta_off,
		     uint64_t stamp)
{
	struct spool_loc *l = &it->loc;
	memset(l, 0, sizeof *l);
	for (int k = 0; k < it->data_cnt; k++) {
		l->data_crc = crc32c(l->data_crc, it->data[k].iov_base, it->data[k].iov_len);
		l->data_len += it->data[k].iov_len;
	}
	l->seg = g;
	l->data_off = data_off;
	l->stamp = stamp;
	l->meta_off = meta_off;
	l->meta_len = (uint32_t)it->meta_len;
	l->meta_crc = crc32c(0, it->meta, it->meta_len);
	l->data_in_meta = g->inline_data;
	memcpy(it->seg_name, g->name, sizeof it->seg_name);
}

static void committed(struct spool *s, size_t n)
{
	s->cur->msgs += n;
	s->commit_failed = false;
	if (!s->prepare_later)
		spool_prepare(s);
}

/* Nothing of a failed batch may count: the segment's files are cut back to
 * where it began.  If that fails too, the segment is sealed (another one
 * takes the next commit). */
static void commit_undo(struct spool *s, uint64_t d0, uint64_t m0)
{
	struct spool_seg *g = s->cur;
	g->data_prep = g->meta_prep = 0; /* cut off below */
	if (ftruncate(g->meta_fd, (off_t)m0) != 0 ||
	    (g->data_fd >= 0 && ftruncate(g->data_fd, (off_t)d0) != 0)) {
		g->meta_size = m0;
		seal_cur(s);
	}
}

static size_t commit_failed(struct spool *s, struct spool_item *items, size_t n, const char *why)
{
	s->commit_failed = true;
	for (size_t i = 0; i < n; i++) {
		items[i].result = -1;
		snprintf(items[i].err, sizeof items[i].err, "%s", why);
	}
	return n;
}

/* A commit to a segment without a data file: each record, then the bytes
 * of its message, all in one gathered write to the meta file, then its
 * fdatasync (within the prepared part it writes the new bytes and flushes
 * the disk, nothing else).  A crash during the write can leave whole
 * records whose bytes are partly zeros; the scan drops them (dead_commit),
 * and they were never acknowledged. */
static size_t commit_inline(struct spool *s, struct spool_item *items, size_t n)
{
	struct spool_seg *g = s->cur;
	uint64_t m0 = g->meta_size, m = m0, stamp = now_us();
	unsigned char *buf = NULL;
	size_t len = 0, cap = 0;
	size_t *rec_end = xcalloc(n, sizeof *rec_end);
	int nv = 0;
	for (size_t i = 0; i < n; i++) {
		struct spool_item *it = &items[i];
		uint64_t data_off = m + REC_MIN + it->meta_len;
		item_loc(g, it, data_off, m + REC_HDR, stamp);
		rec_put(&buf, &len, &cap, REC_INLINE, it->id, data_off, it->loc.data_len, it->loc.data_crc,
			stamp, it->meta, it->meta_len);
		rec_end[i] = len;
		m = data_off + it->loc.data_len;
		nv += 1 + it->data_cnt;
	}
	/* buf is complete (rec_put may have moved it): now the gather list */
	struct iovec *all = xcalloc((size_t)nv, sizeof *all);
	nv = 0;
	for (size_t i = 0; i < n; i++) {
		size_t from = i ? rec_end[i - 1] : 0;
		all[nv++] = (struct iovec){ .iov_base = buf + from, .iov_len = rec_end[i] - from };
		for (int k = 0; k < items[i].data_cnt; k++)
			all[nv++] = items[i].data[k];
	}
	char why[160];
	int err = writev_all(g->meta_fd, all, nv, m0) != 0 ? errno : 0;
	free(all);
	free(buf);
	free(rec_end);
	if (err) {
		snprintf(why, sizeof why, "write segment %s: %s", g->name, strerror(err));
	} else {
		s->commit_flushes++;
		if (fdatasync(g->meta_fd) != 0) {
			err = errno;
			snprintf(why, sizeof why, "flush segment %s: %s", g->name, strerror(err));
		}
	}
	if (err) {
		commit_undo(s, 0, m0);
		return commit_failed(s, items, n, why);
	}
	g->meta_size = m;
	committed(s, n);
	return 0;
}

size_t spool_commit(struct spool *s, struct spool_item *items, size_t n)
{
	char why[160] = "";
	for (size_t i = 0; i < n; i++) {
		items[i].result = 0;
		items[i].err[0] = '\0';
	}
	struct spool_seg *g = s->cur;
	if (n == 0) {
		/* an idle writer's call: an old segment is sealed, so that the
		 * queue manager can remove it once its messages are done */
		if (g && (double)(now_us() - g->created_us) / 1e6 >= SPOOL_SEG_MAX_AGE)
			seal_cur(s);
		return 0;
	}
	if (g && (g->data_size + g->meta_size >= SPOOL_SEG_MAX_BYTES || g->msgs + n > SPOOL_SEG_MAX_MSGS ||
		  (double)(now_us() - g->created_us) / 1e6 >= SPOOL_SEG_MAX_AGE))
		seal_cur(s);
	if (!s->cur && seg_create(s, why, sizeof why) != 0)
		return commit_failed(s, items, n, why);
	g = s->cur;
	if (g->inline_data)
		return commit_inline(s, items, n);
	uint64_t d0 = g->data_size, m0 = g->meta_size, d = d0, stamp = now_us();
	unsigned char *buf = NULL;
	size_t len = 0, cap = 0;
	/* every message's bytes go out in one gathered write */
	int nv = 0;
	for (size_t i = 0; i < n; i++)
		nv += items[i].data_cnt;
	struct iovec *all = xcalloc(nv ? (size_t)nv : 1, sizeof *all);
	nv = 0;
	for (size_t i = 0; i < n; i++) {
		struct spool_item *it = &items[i];
		for (int k = 0; k < it->data_cnt; k++)
			all[nv++] = it->data[k];
		struct spool_loc *l = &it->loc;
		item_loc(g, it, d, m0 + len + REC_HDR, stamp);
		rec_put(&buf, &len, &cap, REC_MSG, it->id, d, l->data_len, l->data_crc, stamp, it->meta,
			it->meta_len);
		d += l->data_len;
	}
	int werr = writev_all(g->data_fd, all, nv, d0) != 0 ? errno : 0;
	free(all);
	if (werr) {
		snprintf(why, sizeof why, "write data segment %s: %s", g->name, strerror(werr));
		free(buf);
		goto undo;
	}
	/* Start both files' writes to the disk now, so that they are under way
	 * together; each fdatasync below then mostly waits for its flush.  This
	 * is only a head start: the fdatasyncs are what make the batch durable.
	 * The meta records may reach the disk before the bytes they point at;
	 * a crash in between leaves an unanswered message whose bytes are zeros,
	 * which the scan drops as torn (dead_commit). */
	sync_file_range(g->data_fd, (off64_t)d0, (off64_t)(d - d0), SYNC_FILE_RANGE_WRITE);
	if (write_all(g->meta_fd, buf, len, m0) != 0) {
		snprintf(why, sizeof why, "write meta segment %s: %s", g->name, strerror(errno));
		free(buf);
		goto undo;
	}
	free(buf);
	sync_file_range(g->meta_fd, (off64_t)m0, (off64_t)len, SYNC_FILE_RANGE_WRITE);
	/* Within the prepared part of the data file the bytes overwrite blocks
	 * that are allocated, written and flushed, under a size that is already
	 * on the disk: writing them out changes no metadata.  With one_flush,
	 * waiting for that write is then enough, since the meta file's
	 * fdatasync, after it, flushes the disk's cache (one device) for both
	 * files.  Elsewhere, or on another file system, each file's fdatasync. */
	int derr;
	if (s->one_flush && !g->prep_failed && d <= g->data_prep) {
		derr = sync_file_range(g->data_fd, (off64_t)d0, (off64_t)(d - d0),
				       SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
				       SYNC_FILE_RANGE_WAIT_AFTER) != 0 ? errno : 0;
	} else {
		derr = fdatasync(g->data_fd) != 0 ? errno : 0;
		s->commit_flushes++;
	}
	int merr = 0;
	if (!derr) {
		merr = fdatasync(g->meta_fd) != 0 ? errno : 0;
		s->commit_flushes++;
	}
	if (derr || merr) {
		snprintf(why, sizeof why, "flush segment %s: %s", g->name, strerror(derr ? derr : merr));
		goto undo;
	}
	g->data_size = d;
	g->meta_size = m0 + len;
	committed(s, n);
	return 0;
undo:
	commit_undo(s, d0, m0);
	return commit_failed(s, items, n, why);
}

/* ---- reading ---------------------------------------------------------------- */

static int seg_fd(struct spool *s, struct spool_seg *g, bool data, char *err, size_t errlen)
{
	int *fd = data ? &g->data_fd : &g->meta_fd;
	if (*fd < 0) {
		*fd = openat(data ? s->data_dirfd : s->meta_dirfd, g->name, O_RDONLY | O_CLOEXEC);
		if (*fd < 0) {
			snprintf(err, errlen, "open %s segment %s: %s", data ? "data" : "meta", g->name,
				 strerror(errno));
			return -1;
		}
	}
	return *fd;
}

static int read_range(int fd, uint64_t off, size_t len, uint32_t crc, char **out, const char *what,
		      const char *name, char *err, size_t errlen)
{
	char *buf = xmalloc(len + 1);
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(fd, buf + got, len - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			snprintf(err, errlen, "%s in segment %s: %s", what, name,
				 r < 0 ? strerror(errno) : "the file is too short");
			free(buf);
			return -1;
		}
		got += (size_t)r;
	}
	if (crc32c(0, buf, len) != crc) {
		snprintf(err, errlen, "%s in segment %s: checksum mismatch", what, name);
		free(buf);
		return -1;
	}
	buf[len] = '\0';
	*out = buf;
	return 0;
}

int spool_read_data(struct spool *s, const struct spool_loc *loc, char **out, size_t *len,
		    char *err, size_t errlen)
{
	int fd = seg_fd(s, loc->seg, !loc->data_in_meta, err, errlen);
	if (fd < 0 || read_range(fd, loc->data_off, (size_t)loc->data_len, loc->data_crc, out,
				 "message data", loc->seg->name, err, errlen) != 0)
		return -1;
	*len = (size_t)loc->data_len;
	return 0;
}

int spool_read_meta(struct spool *s, const struct spool_loc *loc, char **out, size_t *len,
		    char *err, size_t errlen)
{
	int fd;
	if (loc->meta_in_journal) {
		if (jrn_open(s, loc->seg, false, err, errlen) != 0)
			return -1;
		fd = loc->seg->jrn_fd;
	} else {
		fd = seg_fd(s, loc->seg, false, err, errlen);
	}
	if (fd < 0 || read_range(fd, loc->meta_off, loc->meta_len, loc->meta_crc, out, "message meta",
				 loc->seg->name, err, errlen) != 0)
		return -1;
	*len = loc->meta_len;
	return 0;
}

char *spool_data_path(const struct spool *s, const struct spool_loc *loc)
{
	return xasprintf("%s/seg/%s", loc->data_in_meta ? s->meta_path : s->data_path, loc->seg->name);
}

/* ---- the queue manager's journal ------------------------------------------- */

/* What a held message keeps of its segment's bytes file: its bytes, and
 * inline its record too (an estimate once its meta was replaced). */
static uint64_t live_bytes(const struct spool_loc *loc)
{
	return loc->data_len + (loc->data_in_meta ? REC_MIN + loc->meta_len : 0);
}

void spool_hold(struct spool *s, const struct spool_loc *loc)
{
	(void)s;
	if (loc->data_in_meta)
		loc->seg->inline_data = true; /* its bytes are in its meta file */
	loc->seg->held++;
	loc->seg->live_bytes += live_bytes(loc);
}

int spool_update_meta(struct spool *s, struct spool_loc *loc, const char *id, const char *meta,
		      size_t meta_len, char *err, size_t errlen)
{
	uint64_t off;
	if (jrn_append(s, loc, REC_META, id, meta, meta_len, &off, true, err, errlen) != 0)
		return -1;
	loc->meta_in_journal = true;
	loc->meta_off = off;
	loc->meta_len = (uint32_t)meta_len;
	loc->meta_crc = crc32c(0, meta, meta_len);
	return 0;
}

/* The segment is sealed (a SEAL record at its end, or its writer is gone)
 * and every message in it has a DONE record: remove it.  true if removed. */
/* Whether the segment is sealed: a SEAL record at its end (which counts
 * its messages), or no SEAL and its writer gone (the file is counted).
 * *msgs gets the count when it is. */
static bool seg_sealed(struct spool *s, struct spool_seg *g, size_t *msgs)
{
	char err[200];
	int fd = seg_fd(s, g, false, err, sizeof err);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0)
		return false;
	unsigned char tail[REC_MIN];
	struct rec r;
	size_t next;
	*msgs = 0;
	if (st.st_size >= (off_t)REC_MIN &&
	    pread(fd, tail, REC_MIN, st.st_size - (off_t)REC_MIN) == (ssize_t)REC_MIN &&
	    rec_get(tail, REC_MIN, 0, &r, &next) == P_OK && r.type == REC_SEAL) {
		*msgs = (size_t)r.data_len;
		return true;
	}
	if (g->pid == getpid() || kill(g->pid, 0) == 0 || errno != ESRCH)
		return false;
	size_t len;
	unsigned char *buf = slurp_records(s->meta_dirfd, g->name, &len);
	size_t off = 0;
	while (buf && rec_get(buf, len, off, &r, &next) == P_OK) {
		*msgs += r.type == REC_MSG || r.type == REC_INLINE;
		off = next;
	}
	free(buf);
	return true;
}

bool spool_seg_sparse(struct spool *s, struct spool_seg *g)
{
	if (g->writing || g->held <= g->released)
		return false;
	size_t msgs;
	char err[200];
	int fd = seg_fd(s, g, !g->inline_data, err, sizeof err);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0 || !seg_sealed(s, g, &msgs))
		return false;
	return g->live_bytes * 2 <= (uint64_t)st.st_size;
}

bool spool_any_sparse(struct spool *s)
{
	for (struct spool_seg *g = s->segs; g; g = g->next)
		if (spool_seg_sparse(s, g))
			return true;
	return false;
}

static bool try_remove(struct spool *s, struct spool_seg *g)
{
	if (g->writing)
		return false;
	char err[200];
	if (jrn_open(s, g, false, err, sizeof err) != 0 && !g->ndone_known)
		return false;
	size_t msgs = 0;
	if (!seg_sealed(s, g, &msgs) || g->ndone < msgs)
		return false;
	char jname[SPOOL_SEG_NAME_LEN + 3];
	snprintf(jname, sizeof jname, "%s.j", g->name);
	/* the meta file first: without it the others are never read */
	unlinkat(s->meta_dirfd, g->name, 0);
	unlinkat(s->data_dirfd, g->name, 0);
	unlinkat(s->meta_dirfd, jname, 0);
	seg_free(s, g);
	return true;
}

int spool_done(struct spool *s, const struct spool_loc *loc, const char *id, char *err,
	       size_t errlen)
{
	struct spool_seg *g = loc->seg;
	if (jrn_append(s, loc, REC_DONE, id, NULL, 0, NULL, false, err, errlen) != 0)
		return -1;
	g->ndone++;
	g->released++;
	uint64_t live = live_bytes(loc);
	g->live_bytes -= g->live_bytes < live ? g->live_bytes : live;
	if (g->sealed_hint && g->released >= g->held)
		try_remove(s, g);
	return 0;
}

size_t spool_reap(struct spool *s)
{
	size_t n = 0;
	struct spool_seg *g = s->segs, *next;
	for (; g; g = next) {
		next = g->next;
		if (!g->writing && g->released >= g->held && try_remove(s, g))
			n++;
	}
	return n;
}

/* ---- listing ---------------------------------------------------------------- */

struct entry {
	char id[SPOOL_ID_LEN + 1];
	struct spool_loc loc;
	bool done;
};

struct entries {
	struct entry *v;
	size_t n, cap;
};

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The segment names in <meta>/seg, sorted (oldest first). */
static char **seg_names(struct spool *s, size_t *count, char *err, size_t errlen)
{
	int fd = dup(s->meta_dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		snprintf(err, errlen, "cannot read %s/seg: %s", s->meta_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	rewinddir(d);
	char **v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (!seg_name_valid(e->d_name))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			v = xrealloc(v, cap * sizeof *v);
		}
		v[n++] = xstrdup(e->d_name);
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof *v, name_cmp);
	*count = n;
	return v ? v : xcalloc(1, sizeof *v);
}

static int entry_cmp(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	int c = memcmp(x->id, y->id, SPOOL_ID_LEN);
	if (c)
		return c;
	return x->loc.stamp < y->loc.stamp ? -1 : x->loc.stamp > y->loc.stamp;
}

/* What a journal says about the messages of its segment. */
struct jstate {
	struct rec *v;
	size_t n;
	size_t good_len;  /* bytes of whole records */
	bool torn;
};

static void jrn_load(struct spool *s, struct spool_seg *g, struct jstate *j)
{
	memset(j, 0, sizeof *j);
	char name[SPOOL_SEG_NAME_LEN + 3];
	snprintf(name, sizeof name, "%s.j", g->name);
	size_t len = 0, off = 0, next, cap = 0, ndone = 0;
	unsigned char *buf = slurp_at(s->meta_dirfd, name, &len);
	struct rec r;
	enum parse p;
	while (buf && (p = rec_get(buf, len, off, &r, &next)) == P_OK) {
		if (r.type == REC_DONE || (r.type == REC_META && r.meta_ok)) {
			if (j->n == cap) {
				cap = cap ? cap * 2 : 16;
				j->v = xrealloc(j->v, cap * sizeof *j->v);
			}
			j->v[j->n++] = r;
			ndone += r.type == REC_DONE;
		}
		off = next;
	}
	j->good_len = off;
	j->torn = buf && off < len;
	free(buf);
	/* journal records are written by one process at a time (the queue
	 * manager, or the start-up scan before it), so this count is exact */
	g->ndone = ndone;
	g->ndone_known = true;
}

static int jrec_cmp(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	int c = memcmp(x->id, y->id, SPOOL_ID_LEN);
	if (c)
		return c;
	if (x->data_off != y->data_off)
		return x->data_off < y->data_off ? -1 : 1;
	return x->off < y->off ? -1 : x->off > y->off; /* journal order */
}

/* Applies the journal to the entries [from, e->n) of its segment: a record
 * names its message by id and data offset; the last META wins. */
static void jrn_apply(struct entries *e, size_t from, struct jstate *j)
{
	if (j->n == 0)
		return;
	qsort(j->v, j->n, sizeof *j->v, jrec_cmp);
	for (size_t i = from; i < e->n; i++) {
		struct entry *x = &e->v[i];
		struct rec key;
		memcpy(key.id, x->id, sizeof key.id);
		key.data_off = x->loc.data_off;
		key.off = 0;
		/* the first journal record for (id, data_off) */
		size_t lo = 0, hi = j->n;
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (jrec_cmp(&j->v[mid], &key) < 0)
				lo = mid + 1;
			else
				hi = mid;
		}
		for (; lo < j->n && memcmp(j->v[lo].id, x->id, SPOOL_ID_LEN) == 0 &&
		       j->v[lo].data_off == x->loc.data_off; lo++) {
			const struct rec *r = &j->v[lo];
			if (r->type == REC_DONE) {
				x->done = true;
			} else {
				x->loc.meta_in_journal = true;
				x->loc.meta_off = r->meta_off;
				x->loc.meta_len = r->meta_len;
				x->loc.meta_crc = r->meta_crc;
			}
		}
	}
}

/* Reads every segment's records and journal into e.  In scan mode (sc set)
 * it also repairs: see spool_scan. */
struct scan_ctx {
	void (*warn)(void *arg, const char *id, const char *why);
	void *arg;
	struct spool_scan_stats *st;
};

static void quarantine_write(struct spool *s, bool data, const char *name, const void *buf, size_t len)
{
	char path[96];
	snprintf(path, sizeof path, "quarantine/%.60s", name);
	int fd = openat(data ? s->data_rootfd : s->meta_rootfd, path,
			O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	if (write_all(fd, buf, len, 0) == 0)
		fsync(fd);
	close(fd);
}

/* The offset of the next whole record at or after from, or len. */
static size_t resync(const unsigned char *buf, size_t len, size_t from)
{
	struct rec r;
	size_t next;
	for (size_t i = from; i + REC_MIN <= len; i++)
		if (buf[i] == (REC_MAGIC & 0xff) && get32(buf + i) == REC_MAGIC &&
		    rec_get(buf, len, i, &r, &next) == P_OK)
			return i;
	return len;
}

static void scan_seg_tail(struct spool *s, struct spool_seg *g, const unsigned char *buf, size_t len,
			  size_t off, enum parse p, struct scan_ctx *sc)
{
	if (p == P_BAD) {
		char qname[64], why[200];
		snprintf(qname, sizeof qname, "%s.%zu", g->name, off);
		quarantine_write(s, false, qname, buf + off, len - off);
		snprintf(why, sizeof why, "segment %s: %zu bytes from offset %zu are damaged; copied to"
			 " quarantine/%s", g->name, len - off, off, qname);
		if (sc->warn)
			sc->warn(sc->arg, g->name, why);
	} else {
		sc->st->swept++;
	}
	int fd = openat(s->meta_dirfd, g->name, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (ftruncate(fd, (off_t)off) == 0)
			fdatasync(fd);
		close(fd);
	}
}

/* Whether the bytes of INLINE record r are all there: their CRC, where
 * slurp_records read them.  Of a large message it did not read, only the
 * last byte is looked at first: a commit fills the file in order, so with
 * that byte written (a message ends with CRLF, and the prepared zeros are
 * not) the rest is; a zero there means reading them all. */
static bool inline_bytes_there(struct spool *s, struct spool_seg *g, const unsigned char *buf,
			       const struct rec *r)
{
	if (r->data_len == 0)
		return true;
	if (r->data_len <= SLURP_SKIP)
		return crc32c(0, buf + r->data_off, (size_t)r->data_len) == r->data_crc;
	if (buf[r->data_off + r->data_len - 1] != 0)
		return true;
	char err[8], *bytes = NULL;
	struct spool_loc loc = { .seg = g, .data_off = r->data_off, .data_len = r->data_len,
				 .data_crc = r->data_crc, .data_in_meta = true };
	size_t len;
	bool ok = spool_read_data(s, &loc, &bytes, &len, err, sizeof err) == 0;
	free(bytes);
	return ok;
}

static void load_seg(struct spool *s, struct spool_seg *g, struct entries *e, struct scan_ctx *sc)
{
	size_t len = 0, off = 0, next;
	unsigned char *buf = slurp_records(s->meta_dirfd, g->name, &len);
	if (!buf)
		return;
	g->listed_size = len;
	size_t from = e->n;
	bool sealed = false, damaged = false;
	uint64_t data_end = 0; /* of the last message's bytes */
	struct rec r;
	enum parse p;
	for (;;) {
		p = rec_get(buf, len, off, &r, &next);
		if (p == P_BAD || p == P_TORN) {
			/* a damaged header, or zeros where one was: read on from
			 * the next whole record, if there is one */
			size_t resume = resync(buf, len, off + 1);
			if (resume == len)
				break;
			bool zeros = true;
			for (size_t i = off; i < resume && zeros; i++)
				zeros = buf[i] == 0;
			if (sc && !zeros) {
				char qname[64], why[300];
				snprintf(qname, sizeof qname, "%s.%zu", g->name, off);
				quarantine_write(s, false, qname, buf + off, resume - off);
				snprintf(why, sizeof why, "segment %s: %zu bytes from offset %zu are damaged (copied"
					 " to quarantine/%s); the records after them are read", g->name,
					 resume - off, off, qname);
				if (sc->warn)
					sc->warn(sc->arg, g->name, why);
				/* zeros from now on: skipped without a word */
				int fd = openat(s->meta_dirfd, g->name, O_WRONLY | O_CLOEXEC);
				unsigned char *z = xcalloc(1, resume - off);
				if (fd >= 0 && write_all(fd, z, resume - off, off) == 0)
					fdatasync(fd);
				free(z);
				if (fd >= 0)
					close(fd);
				damaged = true;
			}
			off = resume;
			continue;
		}
		if (p != P_OK)
			break;
		off = next;
		if (r.type == REC_SEAL) {
			sealed = true;
			continue;
		}
		if (r.type != REC_MSG && r.type != REC_INLINE)
			continue;
		if (r.type == REC_INLINE) {
			g->inline_data = true;
			/* a listing may read a commit's write while it is under
			 * way: a message whose bytes are not all there yet is
			 * for a later listing (the scan: dead_commit) */
			if (!sc && !inline_bytes_there(s, g, buf, &r))
				continue;
		} else if (r.data_off + r.data_len > data_end) {
			data_end = r.data_off + r.data_len;
		}
		if (e->n == e->cap) {
			e->cap = e->cap ? e->cap * 2 : 256;
			e->v = xrealloc(e->v, e->cap * sizeof *e->v);
		}
		struct entry *x = &e->v[e->n++];
		memset(x, 0, sizeof *x);
		memcpy(x->id, r.id, sizeof x->id);
		x->loc = (struct spool_loc){ .seg = g, .data_off = r.data_off, .data_len = r.data_len,
					    .meta_off = r.meta_off, .stamp = r.stamp, .data_crc = r.data_crc,
					    .meta_len = r.meta_len, .meta_crc = r.meta_crc,
					    .data_in_meta = r.type == REC_INLINE };
		if (!r.meta_ok)
			x->loc.meta_crc = ~r.meta_crc; /* read_meta fails: damaged */
	}
	if (sealed)
		g->sealed_hint = true;
	if (sc && p != P_END)
		scan_seg_tail(s, g, buf, len, off, p, sc);
	free(buf);
	struct jstate j;
	jrn_load(s, g, &j);
	if (sc && j.torn) {
		char jname[SPOOL_SEG_NAME_LEN + 3];
		snprintf(jname, sizeof jname, "%s.j", g->name);
		int fd = openat(s->meta_dirfd, jname, O_WRONLY | O_CLOEXEC);
		if (fd >= 0) {
			if (ftruncate(fd, (off_t)j.good_len) == 0)
				fdatasync(fd);
			close(fd);
		}
	}
	jrn_apply(e, from, &j);
	free(j.v);
	if (sc && (!sealed || damaged)) {
		/* no writer runs during the scan: seal it for good, with the
		 * number of messages that can be found in it (a damaged record's
		 * cannot be), so it goes once they are done */
		unsigned char *sb = NULL;
		size_t sl = 0, scap = 0, msgs = e->n - from;
		rec_put(&sb, &sl, &scap, REC_SEAL, NULL, 0, msgs, 0, now_us(), NULL, 0);
		int fd = openat(s->meta_dirfd, g->name, O_WRONLY | O_APPEND | O_CLOEXEC);
		if (fd >= 0) {
			if (write_all(fd, sb, sl, (uint64_t)lseek(fd, 0, SEEK_END)) == 0)
				fdatasync(fd);
			close(fd);
		}
		free(sb);
		g->sealed_hint = true;
		/* zeros its writer prepared past the last message's bytes */
		int dfd = openat(s->data_dirfd, g->name, O_WRONLY | O_CLOEXEC);
		struct stat st;
		if (dfd >= 0 && fstat(dfd, &st) == 0 && (uint64_t)st.st_size > data_end &&
		    ftruncate(dfd, (off_t)data_end) == 0)
			fdatasync(dfd);
		if (dfd >= 0)
			close(dfd);
	}
}

/* Reads the segments (only_changed: those whose meta file grew since this
 * process last listed them, or that it never listed). */
static int load_all(struct spool *s, struct entries *e, struct scan_ctx *sc, bool only_changed,
		    char *err, size_t errlen)
{
	size_t n;
	char **names = seg_names(s, &n, err, errlen);
	if (!names)
		return -1;
	for (size_t i = 0; i < n; i++) {
		struct spool_seg *g = seg_get(s, names[i], false);
		struct stat st;
		bool have = g && fstatat(s->meta_dirfd, g->name, &st, 0) == 0;
		int64_t mtime = have ? (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec : -1;
		/* a segment being written keeps its size while records fill
		 * the zeros prepared for them: its mtime tells */
		bool same = only_changed && have && g->listed_size && (uint64_t)st.st_size == g->listed_size &&
			    mtime == g->listed_mtime;
		if (g && !g->writing && !same) {
			load_seg(s, g, e, sc);
			/* a file changed within the last second may change again
			 * within the same tick of the file system's clock, after
			 * this read, without a new mtime: read it again next time */
			struct timespec now;
			clock_gettime(CLOCK_REALTIME, &now);
			int64_t now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
			g->listed_mtime = now_ns - mtime < 1000000000 ? -1 : mtime;
		}
		free(names[i]);
	}
	free(names);
	if (e->n)
		qsort(e->v, e->n, sizeof *e->v, entry_cmp);
	return 0;
}

static int list(struct spool *s, spool_found_cb found, void *arg, bool only_changed, char *err,
		size_t errlen)
{
	struct entries e = { 0 };
	if (load_all(s, &e, NULL, only_changed, err, errlen) != 0)
		return -1;
	for (size_t i = 0; i < e.n; i++) {
		struct entry *x = &e.v[i];
		/* the newest record of an id decides */
		if (i + 1 < e.n && memcmp(x->id, e.v[i + 1].id, SPOOL_ID_LEN) == 0)
			continue;
		if (x->done)
			continue;
		char *meta = NULL;
		size_t mlen = 0;
		char rerr[200];
		if (spool_read_meta(s, &x->loc, &meta, &mlen, rerr, sizeof rerr) != 0) {
			meta = NULL;
			mlen = 0;
		}
		found(arg, x->id, &x->loc, meta, mlen);
		free(meta);
	}
	free(e.v);
	return 0;
}

int spool_list(struct spool *s, spool_found_cb found, void *arg, char *err, size_t errlen)
{
	return list(s, found, arg, false, err, errlen);
}

int spool_list_changed(struct spool *s, spool_found_cb found, void *arg, char *err, size_t errlen)
{
	return list(s, found, arg, true, err, errlen);
}

/* ---- recovery at start ------------------------------------------------------ */

static void sweep_new(int parent, struct spool_scan_stats *st)
{
	int fd = openat(parent, "new", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.' && (e->d_name[1] == '\0' || (e->d_name[1] == '.' && e->d_name[2] == '\0')))
			continue;
		if (unlinkat(dirfd(d), e->d_name, 0) == 0)
			st->swept++;
	}
	closedir(d);
}

/* The scan is done with x: a DONE record in its segment's journal. */
static void scan_done(struct spool *s, struct entry *x)
{
	char err[200];
	if (!x->done && jrn_append(s, &x->loc, REC_DONE, x->id, NULL, 0, NULL, true, err, sizeof err) == 0)
		x->loc.seg->ndone++;
	x->done = true;
}

/* A message that cannot be delivered as it is: what is left of it goes to
 * quarantine/<id> in both spools, and it is marked done. */
static void quarantine_msg(struct spool *s, struct entry *x, const char *why, struct scan_ctx *sc)
{
	struct spool_seg *g = x->loc.seg;
	char *buf = xmalloc((size_t)x->loc.data_len + 1);
	int fd = seg_fd(s, g, !x->loc.data_in_meta, (char[8]){ 0 }, 8);
	ssize_t r = fd >= 0 ? pread(fd, buf, (size_t)x->loc.data_len, (off_t)x->loc.data_off) : -1;
	quarantine_write(s, true, x->id, buf, r > 0 ? (size_t)r : 0);
	free(buf);
	int mfd = x->loc.meta_in_journal ? (jrn_open(s, g, false, (char[8]){ 0 }, 8) == 0 ? g->jrn_fd : -1)
					 : seg_fd(s, g, false, (char[8]){ 0 }, 8);
	buf = xmalloc(x->loc.meta_len + 1);
	r = mfd >= 0 ? pread(mfd, buf, x->loc.meta_len, (off_t)x->loc.meta_off) : -1;
	quarantine_write(s, false, x->id, buf, r > 0 ? (size_t)r : 0);
	free(buf);
	scan_done(s, x);
	sc->st->quarantined++;
	if (sc->warn)
		sc->warn(sc->arg, x->id, why);
}

/* A message of a commit that a crash cut short: its meta record reached the
 * disk but its bytes did not (spool_commit starts both files' writes
 * together), so they end past the end of the file or in the zeros the
 * writer prepared.  The disk writes whole 4 KiB pages, so bytes never
 * written are zeros from a page boundary (or from the message's start) to
 * its end; damage does not look like that, and a message ends with CRLF.
 * A file that ends inside the message is damage too: the size on disk is
 * either from before the commit or from after it.
 * Such a commit was never acknowledged: the message is dropped, not
 * quarantined. */
static bool dead_commit(struct spool *s, const struct spool_loc *loc)
{
	char err[8];
	int fd = seg_fd(s, loc->seg, !loc->data_in_meta, err, sizeof err);
	if (fd < 0 || loc->data_len == 0)
		return false;
	uint64_t end = loc->data_off + loc->data_len, from = (end - 1) & ~(uint64_t)4095;
	if (from < loc->data_off)
		from = loc->data_off;
	struct stat st;
	if (fstat(fd, &st) != 0)
		return false;
	if ((uint64_t)st.st_size <= loc->data_off)
		return true; /* the file's size on disk is from before the commit */
	unsigned char tail[4096];
	ssize_t r = pread(fd, tail, (size_t)(end - from), (off_t)from);
	if (r != (ssize_t)(end - from))
		return false; /* some of it, then the end: damage */
	for (ssize_t i = 0; i < r; i++)
		if (tail[i])
			return false;
	return true;
}

int spool_scan(struct spool *s,
	       void (*found)(void *arg, const char *id),
	       void (*warn)(void *arg, const char *id, const char *why),
	       void *arg, struct spool_scan_stats *st, char *err, size_t errlen)
{
	memset(st, 0, sizeof *st);
	sweep_new(s->data_rootfd, st);
	sweep_new(s->meta_rootfd, st);
	struct scan_ctx sc = { warn, arg, st };
	struct entries e = { 0 };
	if (load_all(s, &e, &sc, false, err, errlen) != 0)
		return -1;
	for (size_t i = 0; i < e.n; i++) {
		struct entry *x = &e.v[i];
		char rerr[200], why[300];
		if (i + 1 < e.n && memcmp(x->id, e.v[i + 1].id, SPOOL_ID_LEN) == 0) {
			/* an older copy (the queue manager rewrote it): done with */
			scan_done(s, x);
			continue;
		}
		if (x->done)
			continue;
		char *buf = NULL;
		size_t blen;
		bool meta_ok = spool_read_meta(s, &x->loc, &buf, &blen, rerr, sizeof rerr) == 0;
		free(buf);
		buf = NULL;
		bool data_ok = meta_ok && spool_read_data(s, &x->loc, &buf, &blen, rerr, sizeof rerr) == 0;
		free(buf);
		if (meta_ok && !data_ok && dead_commit(s, &x->loc)) {
			scan_done(s, x);
			st->swept++;
			continue;
		}
		if (!data_ok) {
			snprintf(why, sizeof why, "%s", rerr);
			quarantine_msg(s, x, why, &sc);
			continue;
		}
		st->found++;
		if (found)
			found(arg, x->id);
	}
	free(e.v);
	/* segments with nothing left go; the rest stay, sealed */
	struct spool_seg *g = s->segs, *next;
	for (; g; g = next) {
		next = g->next;
		if (g->writing)
			continue;
		if (try_remove(s, g))
			st->removed++;
		else
			st->segments++;
	}
	return 0;
}
