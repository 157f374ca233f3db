/* fsync-lat: the latency of a 1 KB append followed by fdatasync, as a
 * spool commit sees it, measured in a given directory (issue 7 compares the
 * p99 SMTP latency with it).
 *
 *   fsync-lat --dir DIR [--count N] [--size BYTES] [--gap-us US]
 *
 * Creates a temporary file in DIR, then N times appends BYTES (default 1024)
 * and calls fdatasync, timing write plus fdatasync; the file grows, so each
 * sync also commits the size change, as a new spool file does.  With
 * --gap-us, it sleeps US microseconds after each sync (default 0: back to
 * back), as the flushes of a server paced at 1e6/US commits a second are
 * spaced: a disk that idles in between may answer more slowly.  The file
 * is removed at the end.  Output, one line on stdout:
 *   fsync_n=N fsync_p50_ms= fsync_p99_ms= fsync_max_ms= gap_us=US dir=DIR
 * Exit 0, or 1 when a write or sync fails, 2 for a usage error. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_COUNT 1000000UL
#define MAX_BYTES (1024UL * 1024)
#define MAX_GAP_US 1000000UL

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array, in ms. */
static double pct_ms(const uint64_t *v, unsigned long n, double p)
{
	unsigned long k = (unsigned long)ceil(p * (double)n);
	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	return (double)v[k - 1] / 1e6;
}

static int parse_ulong(const char *name, const char *v, unsigned long lo, unsigned long hi,
		       unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long x = strtoul(v, &end, 10);
	if (errno || end == v || *end || v[0] == '-' || x < lo || x > hi) {
		fprintf(stderr, "fsync-lat: --%s: want an integer from %lu to %lu, got '%s'\n",
			name, lo, hi, v);
		return -1;
	}
	*out = x;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "dir", required_argument, NULL, 'd' },
		{ "count", required_argument, NULL, 'n' },
		{ "size", required_argument, NULL, 's' },
		{ "gap-us", required_argument, NULL, 'g' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *dir = NULL;
	unsigned long count = 1000, size = 1024, gap_us = 0;
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'd': dir = optarg; break;
		case 'n':
			if (parse_ulong("count", optarg, 1, MAX_COUNT, &count) < 0)
				return 2;
			break;
		case 's':
			if (parse_ulong("size", optarg, 1, MAX_BYTES, &size) < 0)
				return 2;
			break;
		case 'g':
			if (parse_ulong("gap-us", optarg, 0, MAX_GAP_US, &gap_us) < 0)
				return 2;
			break;
		case 'h':
			printf("usage: fsync-lat --dir DIR [--count N (1000)] [--size BYTES (1024)] [--gap-us US (0)]\n");
			return 0;
		default:
			fprintf(stderr, "usage: fsync-lat --dir DIR [--count N] [--size BYTES] [--gap-us US]\n");
			return 2;
		}
	}
	if (!dir || optind != argc) {
		fprintf(stderr, "usage: fsync-lat --dir DIR [--count N] [--size BYTES] [--gap-us US]\n");
		return 2;
	}

	char path[4096];
	int n = snprintf(path, sizeof path, "%s/.fsync-lat.XXXXXX", dir);
	if (n < 0 || (size_t)n >= sizeof path) {
		fprintf(stderr, "fsync-lat: directory name too long\n");
		return 2;
	}
	int fd = mkstemp(path);
	if (fd < 0) {
		fprintf(stderr, "fsync-lat: cannot create a file in %s: %s\n", dir, strerror(errno));
		return 1;
	}
	char *buf = malloc(size);
	uint64_t *lat = calloc(count, sizeof *lat);
	if (!buf || !lat) {
		fprintf(stderr, "fsync-lat: out of memory\n");
		abort();
	}
	memset(buf, 'x', size);
	buf[size - 1] = '\n';

	int status = 0;
	for (unsigned long i = 0; i < count; i++) {
		uint64_t t0 = now_ns();
		ssize_t w = write(fd, buf, size);
		if (w != (ssize_t)size) {
			fprintf(stderr, "fsync-lat: write: %s\n", w < 0 ? strerror(errno) : "short write");
			status = 1;
			break;
		}
		if (fdatasync(fd) < 0) {
			fprintf(stderr, "fsync-lat: fdatasync: %s\n", strerror(errno));
			status = 1;
			break;
		}
		lat[i] = now_ns() - t0;
		if (gap_us) {
			struct timespec gap = { (time_t)(gap_us / 1000000), (long)(gap_us % 1000000) * 1000 };
			while (nanosleep(&gap, &gap) != 0 && errno == EINTR)
				;
		}
	}
	close(fd);
	unlink(path);
	if (status == 0) {
		qsort(lat, count, sizeof *lat, cmp_u64);
		printf("fsync_n=%lu fsync_p50_ms=%.3f fsync_p99_ms=%.3f fsync_max_ms=%.3f gap_us=%lu dir=%s\n",
		       count, pct_ms(lat, count, 0.50), pct_ms(lat, count, 0.99),
		       (double)lat[count - 1] / 1e6, gap_us, dir);
	}
	free(lat);
	free(buf);
	return status;
}
