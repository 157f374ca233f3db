/* smtpd_data: the DATA reader, a byte-exact state machine (pure, no I/O).
 * Entry points: data_reader_init, data_reader_feed.
 * Lines end only at CRLF, so "\n.\r\n", "\r\n.\n" and "\r.\r\n" never end
 * the data (no SMTP smuggling).  A line starting with "." loses that dot
 * (RFC 5321 4.5.2), including the first line of the body; ".\r\n" right
 * after DATA is an empty message.  Limits are recorded, not enforced: the
 * caller answers after the final dot. */
#include "smtpd/smtpd.h"

#include <string.h>

void data_reader_init(struct data_reader *r, size_t max_size, size_t max_line,
		      enum invalid_line_endings ile)
{
	memset(r, 0, sizeof *r);
	r->state = DR_BOL;
	r->max_size = max_size;
	r->max_line = max_line;
	r->ile = ile;
}

static void emit(struct data_reader *r, struct evbuffer *out, const char *p, size_t n)
{
	if (n == 0)
		return;
	if (!r->too_big && r->size + n > r->max_size)
		r->too_big = true;
	if (!r->too_big)
		evbuffer_add(out, p, n);
	r->size += n;
}

static void line_bytes(struct data_reader *r, size_t n)
{
	r->line_len += n;
	if (r->line_len > r->max_line)
		r->line_too_long = true;
}

/* a bare CR or LF: flag it; in Fix mode it becomes a CRLF line break */
static void bare(struct data_reader *r, struct evbuffer *out, char c)
{
	r->bad_line_endings = true;
	if (r->ile == ILE_FIX) {
		emit(r, out, "\r\n", 2);
		r->line_len = 0;
	} else {
		emit(r, out, &c, 1);
		if (c == '\n')
			r->line_len = 0;
		else
			line_bytes(r, 1);
	}
}

/* Bytes of the input that go out as they are, gathered while they are
 * contiguous, so a message arrives in out in few pieces, not two per line. */
struct run {
	const char *p;
	size_t n;
};

static void run_flush(struct data_reader *r, struct evbuffer *out, struct run *ru)
{
	emit(r, out, ru->p, ru->n);
	ru->n = 0;
}

static void run_add(struct data_reader *r, struct evbuffer *out, struct run *ru, const char *p, size_t n)
{
	if (n == 0)
		return;
	if (ru->n && ru->p + ru->n == p) {
		ru->n += n;
		return;
	}
	run_flush(r, out, ru);
	ru->p = p;
	ru->n = n;
}

size_t data_reader_feed(struct data_reader *r, const char *in, size_t len, struct evbuffer *out)
{
	size_t i = 0;
	struct run ru = { NULL, 0 };
	/* where the next CR and LF at or after i are (len: none), each found
	 * with memchr and looked for again only once i has passed it */
	size_t cr_at = 0, lf_at = 0;
	bool cr_known = false, lf_known = false;
	while (i < len && r->state != DR_DONE) {
		char c = in[i];
		switch (r->state) {
		case DR_BOL:
			if (c == '.') {
				r->state = DR_DOT;
				i++;
				break;
			}
			r->state = DR_MID;
			break;
		case DR_DOT:
			if (c == '\r') {
				r->state = DR_DOTCR;
				i++;
				break;
			}
			/* the stuffed dot is dropped; the byte starts the line */
			r->state = DR_MID;
			break;
		case DR_DOTCR:
			if (c == '\n') {
				r->state = DR_DONE;
				i++;
				break;
			}
			/* ".\r" then not LF: the dot is dropped, the CR is bare */
			run_flush(r, out, &ru);
			bare(r, out, '\r');
			r->state = DR_MID;
			break;
		case DR_CR:
			if (c == '\n') {
				if (i > 0) {
					run_add(r, out, &ru, in + i - 1, 2); /* the CR was the byte before */
				} else {
					run_flush(r, out, &ru);
					emit(r, out, "\r\n", 2);
				}
				r->line_len = 0;
				r->state = DR_BOL;
				i++;
				break;
			}
			run_flush(r, out, &ru);
			bare(r, out, '\r');
			r->state = DR_MID;
			break;
		case DR_MID: {
			/* the run of ordinary bytes up to the next CR or LF */
			if (!cr_known || cr_at < i) {
				const char *q = memchr(in + i, '\r', len - i);
				cr_at = q ? (size_t)(q - in) : len;
				cr_known = true;
			}
			if (!lf_known || lf_at < i) {
				const char *q = memchr(in + i, '\n', len - i);
				lf_at = q ? (size_t)(q - in) : len;
				lf_known = true;
			}
			size_t j = cr_at < lf_at ? cr_at : lf_at;
			run_add(r, out, &ru, in + i, j - i);
			line_bytes(r, j - i);
			i = j;
			if (i < len) {
				if (in[i] == '\r') {
					r->state = DR_CR;
				} else {
					run_flush(r, out, &ru);
					bare(r, out, '\n');
				}
				i++;
			}
			break;
		}
		case DR_DONE:
			break;
		}
	}
	run_flush(r, out, &ru);
	return i;
}
