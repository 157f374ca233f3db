/* frame: length-prefixed JSON frames over stream sockets.
 * Entry points: frame_decode (pure, fuzzable), frame_encode/frame_read on
 * evbuffers for event loops, frame_text for writers of their own,
 * frame_send_fd/frame_recv_fd for blocking use.
 * Failures return -1 with a reason in the caller's buffer. */
#include "lib/frame.h"
#include "lib/jsonr.h"
#include "lib/jsonw.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int frame_decode(const uint8_t *buf, size_t len, cJSON **out, size_t *used,
		 char *err, size_t errlen)
{
	*out = NULL;
	if (len < 4)
		return 0;
	uint32_t n = get_be32(buf);
	if (n == 0 || n > FRAME_MAX) {
		snprintf(err, errlen, "bad frame length %u", n);
		return -1;
	}
	if (len - 4 < n)
		return 0;
	/* jsonr_parse refuses what JSON does not allow and cJSON would
	 * take: control bytes (even NUL, as white space), a key twice, 1e999 */
	char why[160];
	cJSON *doc = jsonr_parse((const char *)buf + 4, n, why, sizeof why);
	if (!doc) {
		snprintf(err, errlen, "frame: %s", why);
		return -1;
	}
	if (!cJSON_IsObject(doc)) {
		cJSON_Delete(doc);
		snprintf(err, errlen, "frame is not a JSON object");
		return -1;
	}
	*out = doc;
	*used = 4 + (size_t)n;
	return 1;
}

/* The frame for doc: 4 bytes of length, then the JSON text; NULL if it
 * is too large. */
static uint8_t *frame_build(const cJSON *doc, size_t *len)
{
	/* room for a typical frame (a policy event with its metadata), so
	 * that most are printed without growing the buffer */
	struct jbuf b = { .p = xmalloc(1024), .cap = 1024 };
	jbuf_add(&b, "\0\0\0\0", 4);
	jbuf_value(&b, doc);
	size_t n = b.len - 4;
	if (n > FRAME_MAX) {
		jbuf_free(&b);
		return NULL;
	}
	uint8_t *buf = (uint8_t *)b.p;
	buf[0] = (uint8_t)(n >> 24);
	buf[1] = (uint8_t)(n >> 16);
	buf[2] = (uint8_t)(n >> 8);
	buf[3] = (uint8_t)n;
	*len = b.len;
	return buf;
}

int frame_encode_text(struct evbuffer *out, const char *json, size_t n)
{
	if (n > FRAME_MAX)
		return -1;
	uint8_t hdr[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
	evbuffer_add(out, hdr, 4);
	evbuffer_add(out, json, n);
	return 0;
}

int frame_encode(struct evbuffer *out, const cJSON *doc)
{
	size_t len;
	uint8_t *buf = frame_build(doc, &len);
	if (!buf)
		return -1;
	evbuffer_add(out, buf, len);
	free(buf);
	return 0;
}

uint8_t *frame_text(const cJSON *doc, size_t *len)
{
	return frame_build(doc, len);
}

int frame_read(struct evbuffer *in, cJSON **out, char *err, size_t errlen)
{
	*out = NULL;
	size_t avail = evbuffer_get_length(in);
	if (avail < 4)
		return 0;
	uint8_t hdr[4];
	evbuffer_copyout(in, hdr, 4);
	uint32_t n = get_be32(hdr);
	if (n == 0 || n > FRAME_MAX) {
		snprintf(err, errlen, "bad frame length %u", n);
		return -1;
	}
	if (avail - 4 < n)
		return 0;
	const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)(4 + n));
	size_t used = 0;
	int rc = frame_decode(p, 4 + (size_t)n, out, &used, err, errlen);
	if (rc != 0)
		evbuffer_drain(in, 4 + (size_t)n);
	return rc;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

int frame_send_fd(int fd, const cJSON *doc, char *err, size_t errlen)
{
	char *text = cJSON_PrintUnformatted(doc);
	if (!text)
		abort();
	size_t n = strlen(text);
	if (n > FRAME_MAX) {
		free(text);
		snprintf(err, errlen, "frame too large (%zu bytes)", n);
		return -1;
	}
	uint8_t hdr[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
	int rc = 0;
	if (write_all(fd, hdr, 4) < 0 || write_all(fd, text, n) < 0) {
		snprintf(err, errlen, "write: %s", strerror(errno));
		rc = -1;
	}
	free(text);
	return rc;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int read_exact(int fd, void *buf, size_t len, long long deadline,
		      char *err, size_t errlen)
{
	char *p = buf;
	while (len > 0) {
		int wait = -1;
		if (deadline >= 0) {
			long long left = deadline - now_ms();
			if (left <= 0) {
				snprintf(err, errlen, "timed out");
				return -1;
			}
			wait = (int)left;
		}
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int pr = poll(&pfd, 1, wait);
		if (pr < 0) {
			if (errno == EINTR)
				continue;
			snprintf(err, errlen, "poll: %s", strerror(errno));
			return -1;
		}
		if (pr == 0)
			continue;
		ssize_t r = read(fd, p, len);
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			snprintf(err, errlen, "read: %s", strerror(errno));
			return -1;
		}
		if (r == 0) {
			snprintf(err, errlen, "connection closed");
			return -1;
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int frame_recv_fd(int fd, cJSON **out, int timeout_ms, char *err, size_t errlen)
{
	*out = NULL;
	long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	uint8_t hdr[4];
	if (read_exact(fd, hdr, 4, deadline, err, errlen) < 0)
		return -1;
	uint32_t n = get_be32(hdr);
	if (n == 0 || n > FRAME_MAX) {
		snprintf(err, errlen, "bad frame length %u", n);
		return -1;
	}
	uint8_t *buf = xmalloc(4 + (size_t)n);
	memcpy(buf, hdr, 4);
	int rc = -1;
	if (read_exact(fd, buf + 4, n, deadline, err, errlen) == 0) {
		size_t used;
		rc = frame_decode(buf, 4 + (size_t)n, out, &used, err, errlen) == 1 ? 0 : -1;
	}
	free(buf);
	return rc;
}
