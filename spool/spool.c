/* spool: the on-disk message store (see spool.h for the layout).
 * Entry points: spool_open/close/lock, spool_commit (group commit),
 * spool_remove, spool_read, spool_scan (start-up recovery).
 * Failures return -1 (or a failure count) with reasons in err buffers. */
#include "spool/spool.h"
#include "lib/crc32c.h"
#include "lib/xalloc.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

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

static int open_one(const char *path, int *dirfd, char *err, size_t errlen)
{
	char sub[4200];
	if (mkdir_p(path, 0700) != 0) {
		snprintf(err, errlen, "cannot create spool directory %s: %s", path, strerror(errno));
		return -1;
	}
	static const char *const subs[] = { "new", "quarantine" };
	for (int i = 0; i < 2; i++) {
		snprintf(sub, sizeof sub, "%s/%s", path, subs[i]);
		if (mkdir(sub, 0700) != 0 && errno != EEXIST) {
			snprintf(err, errlen, "cannot create %s: %s", sub, strerror(errno));
			return -1;
		}
	}
	/* prove we can create files in it */
	snprintf(sub, sizeof sub, "%s/new/.probe.%d", path, (int)getpid());
	int fd = open(sub, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, errlen, "spool directory %s is not writable: %s", path, strerror(errno));
		return -1;
	}
	close(fd);
	unlink(sub);
	*dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*dirfd < 0) {
		snprintf(err, errlen, "cannot open spool directory %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

int spool_open(struct spool *s, const char *data_path, const char *meta_path,
	       char *err, size_t errlen)
{
	memset(s, 0, sizeof *s);
	s->data_dirfd = s->meta_dirfd = s->lock_fd = -1;
	s->data_path = xstrdup(data_path);
	s->meta_path = xstrdup(meta_path);
	if (open_one(data_path, &s->data_dirfd, err, errlen) != 0 ||
	    open_one(meta_path, &s->meta_dirfd, err, errlen) != 0) {
		spool_close(s);
		return -1;
	}
	return 0;
}

void spool_close(struct spool *s)
{
	if (s->data_dirfd >= 0)
		close(s->data_dirfd);
	if (s->meta_dirfd >= 0)
		close(s->meta_dirfd);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	free(s->data_path);
	free(s->meta_path);
	memset(s, 0, sizeof *s);
	s->data_dirfd = s->meta_dirfd = s->lock_fd = -1;
}

int spool_lock(struct spool *s, char *err, size_t errlen)
{
	int fd = openat(s->meta_dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
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

void spool_trailer_make(char out[SPOOL_TRAILER_LEN + 1], const struct iovec *iov, int cnt)
{
	uint32_t crc = 0;
	uint64_t len = 0;
	for (int i = 0; i < cnt; i++) {
		crc = crc32c(crc, iov[i].iov_base, iov[i].iov_len);
		len += iov[i].iov_len;
	}
	snprintf(out, SPOOL_TRAILER_LEN + 1, "KUMOSPOOL1 %016" PRIx64 " %08" PRIx32 "\n", len, crc);
}

int spool_trailer_check(const char *buf, size_t len, size_t *payload_len,
			char *err, size_t errlen)
{
	if (len < SPOOL_TRAILER_LEN) {
		snprintf(err, errlen, "file too short for a trailer (%zu bytes)", len);
		return -1;
	}
	const char *t = buf + len - SPOOL_TRAILER_LEN;
	if (memcmp(t, "KUMOSPOOL1 ", 11) != 0 || t[27] != ' ' || t[36] != '\n') {
		snprintf(err, errlen, "trailer missing or damaged");
		return -1;
	}
	char num[17];
	memcpy(num, t + 11, 16);
	num[16] = '\0';
	char *end;
	uint64_t plen = strtoull(num, &end, 16);
	if (*end || plen != len - SPOOL_TRAILER_LEN) {
		snprintf(err, errlen, "length mismatch (trailer says %s, file holds %zu)", num,
			 len - SPOOL_TRAILER_LEN);
		return -1;
	}
	memcpy(num, t + 28, 8);
	num[8] = '\0';
	uint32_t want = (uint32_t)strtoul(num, &end, 16);
	if (*end || crc32c(0, buf, (size_t)plen) != want) {
		snprintf(err, errlen, "checksum mismatch");
		return -1;
	}
	*payload_len = (size_t)plen;
	return 0;
}

static int write_file(int dirfd, const char *name, const struct iovec *iov, int cnt,
		      char *err, size_t errlen)
{
	char trailer[SPOOL_TRAILER_LEN + 1];
	spool_trailer_make(trailer, iov, cnt);
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, errlen, "create %s: %s", name, strerror(errno));
		return -1;
	}
	struct iovec v[17];
	int i = 0, rc = 0;
	while (i <= cnt && rc == 0) {
		int k = 0;
		for (; i < cnt && k < 16; i++, k++)
			v[k] = iov[i];
		if (i == cnt) {
			v[k].iov_base = trailer;
			v[k].iov_len = SPOOL_TRAILER_LEN;
			k++;
			i++;
		}
		size_t want = 0;
		for (int j = 0; j < k; j++)
			want += v[j].iov_len;
		struct iovec *pv = v;
		int pk = k;
		while (want > 0) {
			ssize_t w = writev(fd, pv, pk);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				snprintf(err, errlen, "write %s: %s", name, strerror(errno));
				rc = -1;
				break;
			}
			want -= (size_t)w;
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
	}
	if (close(fd) != 0 && rc == 0) {
		snprintf(err, errlen, "close %s: %s", name, strerror(errno));
		rc = -1;
	}
	if (rc != 0)
		unlinkat(dirfd, name, 0);
	return rc;
}

static void fail_item(struct spool_item *it, const char *why)
{
	if (it->result == 0) {
		it->result = -1;
		snprintf(it->err, sizeof it->err, "%s", why);
	}
}

size_t spool_commit(struct spool *s, struct spool_item *items, size_t n)
{
	char tmp[64], dst[64], sub[4];
	for (size_t i = 0; i < n; i++) {
		struct spool_item *it = &items[i];
		it->result = 0;
		it->err[0] = '\0';
		snprintf(tmp, sizeof tmp, "new/%s", it->id);
		struct iovec mv = { (void *)it->meta, it->meta_len };
		if (write_file(s->data_dirfd, tmp, it->data, it->data_cnt, it->err, sizeof it->err) != 0) {
			it->result = -1;
			continue;
		}
		if (write_file(s->meta_dirfd, tmp, &mv, 1, it->err, sizeof it->err) != 0) {
			it->result = -1;
			unlinkat(s->data_dirfd, tmp, 0);
		}
	}
	/* one flush for every file of the batch (both spools if they share a
	 * file system; the second syncfs is a no-op cost otherwise) */
	char why[160];
	int sync_failed = 0;
	if (syncfs(s->data_dirfd) != 0 || syncfs(s->meta_dirfd) != 0) {
		snprintf(why, sizeof why, "syncfs: %s", strerror(errno));
		sync_failed = 1;
	}
	for (size_t i = 0; i < n; i++) {
		struct spool_item *it = &items[i];
		snprintf(tmp, sizeof tmp, "new/%s", it->id);
		if (it->result != 0 || sync_failed) {
			fail_item(it, sync_failed ? why : it->err);
			unlinkat(s->data_dirfd, tmp, 0);
			unlinkat(s->meta_dirfd, tmp, 0);
			continue;
		}
		memcpy(sub, it->id, 2);
		sub[2] = '\0';
		snprintf(dst, sizeof dst, "%s/%s", sub, it->id);
		if ((mkdirat(s->data_dirfd, sub, 0700) != 0 && errno != EEXIST) ||
		    (mkdirat(s->meta_dirfd, sub, 0700) != 0 && errno != EEXIST)) {
			snprintf(why, sizeof why, "mkdir %s: %s", sub, strerror(errno));
			fail_item(it, why);
		} else if (renameat(s->data_dirfd, tmp, s->data_dirfd, dst) != 0) {
			snprintf(why, sizeof why, "rename data %s: %s", it->id, strerror(errno));
			fail_item(it, why);
		} else if (renameat(s->meta_dirfd, tmp, s->meta_dirfd, dst) != 0) {
			snprintf(why, sizeof why, "rename meta %s: %s", it->id, strerror(errno));
			fail_item(it, why);
			unlinkat(s->data_dirfd, dst, 0);
		}
		if (it->result != 0) {
			unlinkat(s->data_dirfd, tmp, 0);
			unlinkat(s->meta_dirfd, tmp, 0);
		}
	}
	if (syncfs(s->data_dirfd) != 0 || syncfs(s->meta_dirfd) != 0) {
		snprintf(why, sizeof why, "syncfs: %s", strerror(errno));
		for (size_t i = 0; i < n; i++)
			fail_item(&items[i], why);
	}
	size_t failed = 0;
	for (size_t i = 0; i < n; i++)
		failed += items[i].result != 0;
	return failed;
}

int spool_remove(struct spool *s, const char *id, char *err, size_t errlen)
{
	char path[64];
	snprintf(path, sizeof path, "%.2s/%s", id, id);
	if (unlinkat(s->meta_dirfd, path, 0) != 0 && errno != ENOENT) {
		snprintf(err, errlen, "unlink meta %s: %s", id, strerror(errno));
		return -1;
	}
	if (unlinkat(s->data_dirfd, path, 0) != 0 && errno != ENOENT) {
		snprintf(err, errlen, "unlink data %s: %s", id, strerror(errno));
		return -1;
	}
	return 0;
}

static int read_all_at(int dirfd, const char *name, char **out, size_t *len, char *err, size_t errlen)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "open %s: %s", name, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) != 0) {
		snprintf(err, errlen, "stat %s: %s", name, strerror(errno));
		close(fd);
		return -1;
	}
	size_t size = (size_t)st.st_size, got = 0;
	char *buf = xmalloc(size + 1);
	while (got < size) {
		ssize_t r = read(fd, buf + got, size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	buf[got] = '\0';
	*out = buf;
	*len = got;
	return 0;
}

int spool_read(struct spool *s, const char *which, const char *id, char **payload,
	       size_t *len, char *err, size_t errlen)
{
	char path[64];
	snprintf(path, sizeof path, "%.2s/%s", id, id);
	int dirfd = strcmp(which, "data") == 0 ? s->data_dirfd : s->meta_dirfd;
	char *buf;
	size_t n, plen;
	if (read_all_at(dirfd, path, &buf, &n, err, errlen) != 0)
		return -1;
	char why[128];
	if (spool_trailer_check(buf, n, &plen, why, sizeof why) != 0) {
		snprintf(err, errlen, "%s file of %s: %s", which, id, why);
		free(buf);
		return -1;
	}
	buf[plen] = '\0';
	*payload = buf;
	*len = plen;
	return 0;
}

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

static void quarantine(struct spool *s, const char *path, const char *id)
{
	char dst[96];
	snprintf(dst, sizeof dst, "quarantine/%.40s", id);
	renameat(s->meta_dirfd, path, s->meta_dirfd, dst);
	renameat(s->data_dirfd, path, s->data_dirfd, dst);
}

int spool_scan(struct spool *s,
	       void (*found)(void *arg, const char *id),
	       void (*warn)(void *arg, const char *id, const char *why),
	       void *arg, struct spool_scan_stats *st, char *err, size_t errlen)
{
	memset(st, 0, sizeof *st);
	sweep_new(s->data_dirfd, st);
	sweep_new(s->meta_dirfd, st);
	int fd = dup(s->meta_dirfd);
	DIR *top = fd >= 0 ? fdopendir(fd) : NULL;
	if (!top) {
		snprintf(err, errlen, "cannot read %s: %s", s->meta_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	rewinddir(top);
	struct dirent *e;
	while ((e = readdir(top)) != NULL) {
		const char *sub = e->d_name;
		if (strlen(sub) != 2 || !isxdigit((unsigned char)sub[0]) || !isxdigit((unsigned char)sub[1]))
			continue;
		int sfd = openat(s->meta_dirfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *d = sfd >= 0 ? fdopendir(sfd) : NULL;
		if (!d) {
			if (sfd >= 0)
				close(sfd);
			continue;
		}
		struct dirent *f;
		while ((f = readdir(d)) != NULL) {
			if (f->d_name[0] == '.')
				continue;
			char path[64], why[300];
			snprintf(path, sizeof path, "%.2s/%.40s", sub, f->d_name);
			if (!spool_id_valid(f->d_name) || strncmp(f->d_name, sub, 2) != 0) {
				snprintf(why, sizeof why, "unexpected file %.2s/%.100s in the meta spool", sub, f->d_name);
				if (warn)
					warn(arg, f->d_name, why);
				continue;
			}
			char *buf;
			size_t len, plen;
			char rerr[160];
			int bad = 0;
			if (spool_read(s, "meta", f->d_name, &buf, &len, rerr, sizeof rerr) != 0) {
				bad = 1;
			} else {
				free(buf);
				char dpath[64];
				snprintf(dpath, sizeof dpath, "%.2s/%.40s", sub, f->d_name);
				char *dbuf;
				size_t dlen;
				if (read_all_at(s->data_dirfd, dpath, &dbuf, &dlen, rerr, sizeof rerr) != 0) {
					bad = 1;
				} else {
					char terr[128];
					if (spool_trailer_check(dbuf, dlen, &plen, terr, sizeof terr) != 0) {
						snprintf(rerr, sizeof rerr, "data file of %.40s: %.100s", f->d_name, terr);
						bad = 1;
					}
					free(dbuf);
				}
			}
			if (bad) {
				quarantine(s, path, f->d_name);
				st->quarantined++;
				if (warn)
					warn(arg, f->d_name, rerr);
				continue;
			}
			st->found++;
			if (found)
				found(arg, f->d_name);
		}
		closedir(d);
	}
	closedir(top);
	return 0;
}

int spool_list(struct spool *s, void (*found)(void *arg, const char *id), void *arg,
	       char *err, size_t errlen)
{
	int fd = dup(s->meta_dirfd);
	DIR *top = fd >= 0 ? fdopendir(fd) : NULL;
	if (!top) {
		snprintf(err, errlen, "cannot read %s: %s", s->meta_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	rewinddir(top);
	struct dirent *e;
	while ((e = readdir(top)) != NULL) {
		const char *sub = e->d_name;
		if (strlen(sub) != 2 || !isxdigit((unsigned char)sub[0]) || !isxdigit((unsigned char)sub[1]))
			continue;
		int sfd = openat(s->meta_dirfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *d = sfd >= 0 ? fdopendir(sfd) : NULL;
		if (!d) {
			if (sfd >= 0)
				close(sfd);
			continue;
		}
		struct dirent *f;
		while ((f = readdir(d)) != NULL)
			if (spool_id_valid(f->d_name) && strncmp(f->d_name, sub, 2) == 0)
				found(arg, f->d_name);
		closedir(d);
	}
	closedir(top);
	return 0;
}
