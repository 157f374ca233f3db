/* fuzz_data: libFuzzer target for the DATA reader (smtpd_data.c).  The
 * first byte picks the line-ending mode and the size and line limits; the
 * rest is fed whole and again in pieces.  Invariants: the same result either
 * way (for messages within the size limit, which are the ones kept);
 * consumed bytes end with the terminator when the reader is done; a kept
 * message never holds more than max_size bytes. */
#include "smtpd/smtpd.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t run(const uint8_t *in, size_t len, size_t step, enum invalid_line_endings ile, size_t max_size,
		  size_t max_line, struct data_reader *dr, struct evbuffer *out)
{
	data_reader_init(dr, max_size, max_line, ile);
	size_t used = 0;
	while (used < len && dr->state != DR_DONE) {
		size_t n = len - used < step ? len - used : step;
		size_t u = data_reader_feed(dr, (const char *)in + used, n, out);
		if (u > n)
			abort();
		used += u;
		if (u < n)
			break;
	}
	return used;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum invalid_line_endings ile = (enum invalid_line_endings)(data[0] % 3);
	size_t max_size = (data[0] & 0x40) ? 64 : 1 << 20;
	size_t max_line = (data[0] & 0x80) ? 16 : 998;
	struct data_reader a, b;
	struct evbuffer *oa = evbuffer_new(), *ob = evbuffer_new();
	size_t ua = run(data + 1, size - 1, size, ile, max_size, max_line, &a, oa);
	size_t ub = run(data + 1, size - 1, 1 + (data[0] & 7), ile, max_size, max_line, &b, ob);
	if (ua != ub || a.state != b.state || a.too_big != b.too_big || a.line_too_long != b.line_too_long ||
	    a.bad_line_endings != b.bad_line_endings)
		abort();
	/* a message over the limit is discarded: only kept messages must match */
	if (!a.too_big && evbuffer_get_length(oa) != evbuffer_get_length(ob))
		abort();
	if (a.state == DR_DONE) {
		const uint8_t *end = data + 1 + ua;
		bool first = ua == 3 && memcmp(data + 1, ".\r\n", 3) == 0;
		if (!first && (ua < 5 || memcmp(end - 5, "\r\n.\r\n", 5) != 0))
			abort();
	}
	if (!a.too_big && evbuffer_get_length(oa) > max_size)
		abort();
	evbuffer_free(oa);
	evbuffer_free(ob);
	return 0;
}
