/* policyd_hdr: header-block text for the Message object, as plain C with no
 * Lua in it: a growable byte buffer, stepping through the fields of a header
 * block, a field's value unfolded and RFC 2047 decoded, a value folded and
 * encoded the way KumoMTA's encode=true does, and where a message's header
 * block ends.
 * Entry points: policy_buf_add/reserve/reset/free, policy_hdr_next,
 * policy_hdr_name_is, policy_hdr_value, policy_hdr_encode,
 * policy_hdr_block_end.
 * Nothing here fails: lines that are not fields are stepped over, and an
 * encoded word that cannot be decoded (bad base64 or Q text, a charset
 * iconv does not know, bytes invalid in that charset) is kept as written,
 * like KumoMTA's raw-value fallback. */
#include "policyd/policyd.h"
#include "lib/base64.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <iconv.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SOFT_WIDTH 75     /* fold at whitespace around this column */
#define HARD_WIDTH 900    /* split a longer word regardless */
#define EW_MAX 75         /* RFC 2047: an encoded word is at most 75 chars */
#define EW_OPEN "=?UTF-8?Q?"
#define EW_CLOSE "?="
#define CHARSET_MAX 64

/* --- buffer --- */

void policy_buf_reserve(struct policy_buf *b, size_t len)
{
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + len + 1)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
}

void policy_buf_add(struct policy_buf *b, const void *data, size_t len)
{
	policy_buf_reserve(b, len);
	if (len)
		memcpy(b->p + b->len, data, len);
	b->len += len;
	b->p[b->len] = '\0';
}

void policy_buf_reset(struct policy_buf *b)
{
	b->len = 0;
	if (b->p)
		b->p[0] = '\0';
}

void policy_buf_free(struct policy_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

static void add_str(struct policy_buf *b, const char *s)
{
	policy_buf_add(b, s, strlen(s));
}

static void add_char(struct policy_buf *b, char c)
{
	policy_buf_add(b, &c, 1);
}

/* --- fields --- */

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* The end of the line starting at pos: just past its LF, or len. */
static size_t line_end(const char *buf, size_t len, size_t pos)
{
	const char *nl = memchr(buf + pos, '\n', len - pos);
	return nl ? (size_t)(nl - buf) + 1 : len;
}

/* The line [pos, end) without its CRLF, LF or final CR. */
static size_t content_end(const char *buf, size_t pos, size_t end)
{
	if (end > pos && buf[end - 1] == '\n')
		end--;
	if (end > pos && buf[end - 1] == '\r')
		end--;
	return end;
}

bool policy_hdr_next(const char *buf, size_t len, size_t *pos, struct policy_hdr_field *f)
{
	size_t p = *pos;
	while (p < len) {
		size_t end = line_end(buf, len, p);
		size_t cend = content_end(buf, p, end);
		if (cend == p) {
			*pos = len;  /* a blank line ends the header block */
			return false;
		}
		/* the field continues over the lines that start with WSP */
		size_t fend = end;
		while (fend < len && is_wsp(buf[fend]))
			fend = line_end(buf, len, fend);
		const char *colon = memchr(buf + p, ':', cend - p);
		size_t name_len = colon ? (size_t)(colon - (buf + p)) : 0;
		while (name_len > 0 && is_wsp(buf[p + name_len - 1]))
			name_len--;
		bool ok = name_len > 0 && !is_wsp(buf[p]);
		for (size_t i = 0; ok && i < name_len; i++) {
			unsigned char c = (unsigned char)buf[p + i];
			ok = c >= 33 && c <= 126;
		}
		if (!ok) {
			p = fend;  /* not a field (no colon, a bad name, a stray fold) */
			continue;
		}
		size_t v = (size_t)(colon - buf) + 1;
		while (v < cend && is_wsp(buf[v]))
			v++;
		f->start = p;
		f->end = fend;
		f->name_len = name_len;
		f->value = v;
		f->value_end = content_end(buf, v, fend);
		*pos = fend;
		return true;
	}
	*pos = len;
	return false;
}

bool policy_hdr_name_is(const char *buf, const struct policy_hdr_field *f, const char *name)
{
	return strlen(name) == f->name_len && strncasecmp(buf + f->start, name, f->name_len) == 0;
}

/* --- decoding --- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool q_decode(const char *s, size_t n, struct policy_buf *out)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '_') {
			add_char(out, ' ');
		} else if (s[i] == '=') {
			if (i + 2 >= n)
				return false;
			int hi = hexval(s[i + 1]);
			int lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0)
				return false;
			add_char(out, (char)(hi * 16 + lo));
			i += 2;
		} else {
			add_char(out, s[i]);
		}
	}
	return true;
}

static bool is_utf8_name(const char *cs)
{
	return strcasecmp(cs, "utf-8") == 0 || strcasecmp(cs, "utf8") == 0 ||
	       strcasecmp(cs, "us-ascii") == 0 || strcasecmp(cs, "ascii") == 0;
}

/* Appends bytes in charset cs to out as UTF-8; false (out unchanged) when
 * iconv does not know cs or the bytes are invalid in it. */
static bool to_utf8(const char *cs, const char *in, size_t n, struct policy_buf *out)
{
	if (is_utf8_name(cs)) {
		policy_buf_add(out, in, n);
		return true;
	}
	iconv_t cd = iconv_open("UTF-8", cs);
	if (cd == (iconv_t)-1)
		return false;
	size_t start = out->len;
	char *ip = (char *)in;
	size_t ileft = n;
	bool ok = true;
	for (;;) {
		policy_buf_reserve(out, 64 + ileft * 4);
		char *op = out->p + out->len;
		size_t oleft = out->cap - out->len - 1;
		size_t r = iconv(cd, ileft ? &ip : NULL, &ileft, &op, &oleft);
		out->len = (size_t)(op - out->p);
		if (r != (size_t)-1 && ileft == 0) {
			/* flush any shift state */
			op = out->p + out->len;
			oleft = out->cap - out->len - 1;
			if (iconv(cd, NULL, NULL, &op, &oleft) == (size_t)-1)
				ok = false;
			out->len = (size_t)(op - out->p);
			break;
		}
		if (r == (size_t)-1 && errno != E2BIG) {
			ok = false;
			break;
		}
	}
	iconv_close(cd);
	if (!ok)
		out->len = start;
	out->p[out->len] = '\0';
	return ok;
}

/* Decodes the encoded word (RFC 2047) at s[0, n) onto out and sets *used
 * to its length; false, with out unchanged, if there is none there. */
static bool ew_decode(const char *s, size_t n, size_t *used, struct policy_buf *out)
{
	if (n < 8 || s[0] != '=' || s[1] != '?')
		return false;
	size_t i = 2;
	while (i < n && s[i] != '?' && (unsigned char)s[i] > ' ' && (unsigned char)s[i] < 127)
		i++;
	size_t cs_len = i - 2;
	if (i + 2 >= n || s[i] != '?' || cs_len == 0 || cs_len >= CHARSET_MAX || s[i + 2] != '?')
		return false;
	char enc = s[i + 1];
	if (enc != 'B' && enc != 'b' && enc != 'Q' && enc != 'q')
		return false;
	size_t t = i + 3, te = t;
	while (te + 1 < n && !(s[te] == '?' && s[te + 1] == '=')) {
		if (is_wsp(s[te]) || s[te] == '?' || s[te] == '\r' || s[te] == '\n')
			return false;
		te++;
	}
	if (te + 1 >= n)
		return false;
	char cs[CHARSET_MAX];
	memcpy(cs, s + 2, cs_len);
	cs[cs_len] = '\0';
	char *star = strchr(cs, '*');  /* RFC 2231 language suffix */
	if (star)
		*star = '\0';

	struct policy_buf raw = { 0 };
	bool ok;
	if (enc == 'B' || enc == 'b') {
		size_t dlen;
		unsigned char *d = base64_decode(s + t, te - t, &dlen);
		ok = d != NULL;
		if (ok)
			policy_buf_add(&raw, d, dlen);
		free(d);
	} else {
		ok = q_decode(s + t, te - t, &raw);
	}
	ok = ok && to_utf8(cs, raw.p ? raw.p : "", raw.len, out);
	policy_buf_free(&raw);
	if (ok)
		*used = te + 2;
	return ok;
}

void policy_hdr_value(const char *raw, size_t len, struct policy_buf *out)
{
	/* unfold, and each run of blanks and line breaks becomes one space
	 * (KumoMTA's unstructured parse); none at either end */
	struct policy_buf u = { 0 };
	policy_buf_add(&u, "", 0);
	for (size_t i = 0; i < len;) {
		if (is_wsp(raw[i]) || raw[i] == '\r' || raw[i] == '\n') {
			while (i < len && (is_wsp(raw[i]) || raw[i] == '\r' || raw[i] == '\n'))
				i++;
			if (u.len > 0 && i < len)
				add_char(&u, ' ');
			continue;
		}
		add_char(&u, raw[i++]);
	}
	policy_buf_reset(out);
	policy_buf_add(out, "", 0);
	const char *s = u.p;
	size_t n = u.len, i = 0, used;
	bool prev_ew = false;
	while (i < n) {
		if (s[i] == '=' && ew_decode(s + i, n - i, &used, out)) {
			i += used;
			prev_ew = true;
			continue;
		}
		if (prev_ew && is_wsp(s[i])) {
			size_t j = i;
			while (j < n && is_wsp(s[j]))
				j++;
			/* whitespace between two encoded words is not text */
			if (j < n && s[j] == '=' && ew_decode(s + j, n - j, &used, out)) {
				i = j + used;
				continue;
			}
			policy_buf_add(out, s + i, j - i);
			i = j;
			prev_ew = false;
			continue;
		}
		add_char(out, s[i]);
		i++;
		prev_ew = false;
	}
	policy_buf_free(&u);
}

/* --- encoding --- */

static bool is_ascii_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

struct word {
	const char *p;
	size_t len;
};

/* Splits s at ASCII whitespace; the caller frees the array. */
static struct word *split_words(const char *s, size_t n, size_t *count)
{
	struct word *w = xcalloc(n / 2 + 1, sizeof *w);
	size_t k = 0, i = 0;
	while (i < n) {
		while (i < n && is_ascii_space(s[i]))
			i++;
		size_t j = i;
		while (j < n && !is_ascii_space(s[j]))
			j++;
		if (j > i) {
			w[k].p = s + i;
			w[k].len = j - i;
			k++;
		}
		i = j;
	}
	*count = k;
	return w;
}

/* Ends the current line (line) onto out: a tab first unless it is the first. */
static void flush_line(struct policy_buf *out, struct policy_buf *line, bool last)
{
	if (out->len > 0)
		add_char(out, '\t');
	policy_buf_add(out, line->p ? line->p : "", line->len);
	if (!last)
		add_str(out, "\r\n");
	policy_buf_reset(line);
}

/* KumoMTA's wrap: words joined by one space up to SOFT_WIDTH, lines joined
 * by CRLF TAB, a word longer than HARD_WIDTH cut into pieces. */
static void wrap_ascii(const struct word *w, size_t nw, struct policy_buf *out)
{
	struct policy_buf line = { 0 };
	for (size_t k = 0; k < nw; k++) {
		if (line.len + w[k].len + 1 <= SOFT_WIDTH) {
			if (line.len > 0)
				add_char(&line, ' ');
			policy_buf_add(&line, w[k].p, w[k].len);
			continue;
		}
		if (line.len > 0)
			flush_line(out, &line, false);
		if (w[k].len <= HARD_WIDTH) {
			policy_buf_add(&line, w[k].p, w[k].len);
			continue;
		}
		for (size_t i = 0; i < w[k].len; i++) {
			add_char(&line, w[k].p[i]);
			if (line.len >= HARD_WIDTH)
				flush_line(out, &line, false);
		}
	}
	if (line.len > 0)
		flush_line(out, &line, true);
	policy_buf_free(&line);
}

static bool needs_encoding(const struct word *w)
{
	for (size_t i = 0; i < w->len; i++)
		if ((unsigned char)w->p[i] >= 0x80)
			return true;
	return false;
}

/* Q-encodes one character (a UTF-8 sequence or a single byte) into q. */
static void q_char(const unsigned char *p, size_t n, char *q, size_t *qlen)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = p[i];
		if (c == ' ') {
			q[k++] = '_';
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			   (c >= '0' && c <= '9') || c == '!' || c == '*' || c == '+' ||
			   c == '-' || c == '/') {
			q[k++] = (char)c;
		} else {
			q[k++] = '=';
			q[k++] = hex[c >> 4];
			q[k++] = hex[c & 15];
		}
	}
	*qlen = k;
}

/* The length of the character starting at p: a whole UTF-8 sequence when
 * the continuation bytes are there, else one byte. */
static size_t char_len(const unsigned char *p, size_t n)
{
	size_t want = p[0] < 0x80 ? 1 : p[0] >= 0xF0 ? 4 : p[0] >= 0xE0 ? 3 : p[0] >= 0xC0 ? 2 : 1;
	size_t k = 1;
	while (k < want && k < n && (p[k] & 0xC0) == 0x80)
		k++;
	return k;
}

/* Appends to toks (an array of policy_buf) the encoded words for s[0, n). */
static void encode_run(const char *s, size_t n, struct policy_buf **toks, size_t *ntok, size_t *cap)
{
	const size_t room = EW_MAX - strlen(EW_OPEN) - strlen(EW_CLOSE);
	size_t i = 0;
	while (i < n) {
		if (*ntok == *cap) {
			*cap = *cap * 2 + 8;
			*toks = xrealloc(*toks, *cap * sizeof **toks);
		}
		struct policy_buf *t = &(*toks)[(*ntok)++];
		memset(t, 0, sizeof *t);
		add_str(t, EW_OPEN);
		size_t used = 0;
		while (i < n) {
			char q[12];
			size_t clen = char_len((const unsigned char *)s + i, n - i), qlen;
			q_char((const unsigned char *)s + i, clen, q, &qlen);
			if (used > 0 && used + qlen > room)
				break;
			policy_buf_add(t, q, qlen);
			used += qlen;
			i += clen;
		}
		add_str(t, EW_CLOSE);
	}
}

/* Non-ASCII text: each run of words with 8-bit bytes becomes RFC 2047 Q
 * encoded words (UTF-8, at most 75 characters each, the spaces inside a run
 * encoded too so that decoding keeps them); tokens are laid out like
 * wrap_ascii. */
static void wrap_encoded(const struct word *w, size_t nw, struct policy_buf *out)
{
	struct policy_buf *toks = NULL;
	size_t ntok = 0, cap = 0;
	for (size_t k = 0; k < nw;) {
		if (!needs_encoding(&w[k])) {
			if (ntok == cap) {
				cap = cap * 2 + 8;
				toks = xrealloc(toks, cap * sizeof *toks);
			}
			memset(&toks[ntok], 0, sizeof toks[ntok]);
			policy_buf_add(&toks[ntok++], w[k].p, w[k].len);
			k++;
			continue;
		}
		size_t e = k + 1;
		while (e < nw && needs_encoding(&w[e]))
			e++;
		struct policy_buf run = { 0 };
		for (size_t j = k; j < e; j++) {
			if (j > k)
				add_char(&run, ' ');
			policy_buf_add(&run, w[j].p, w[j].len);
		}
		encode_run(run.p, run.len, &toks, &ntok, &cap);
		policy_buf_free(&run);
		k = e;
	}
	size_t line = 0;
	for (size_t k = 0; k < ntok; k++) {
		if (line > 0 && line + toks[k].len + 1 <= SOFT_WIDTH) {
			add_char(out, ' ');
			line++;
		} else if (line > 0) {
			add_str(out, "\r\n\t");
			line = 0;
		}
		policy_buf_add(out, toks[k].p, toks[k].len);
		line += toks[k].len;
		policy_buf_free(&toks[k]);
	}
	free(toks);
}

void policy_hdr_encode(const char *value, size_t len, struct policy_buf *out)
{
	policy_buf_reset(out);
	policy_buf_add(out, "", 0);
	size_t nw;
	struct word *w = split_words(value, len, &nw);
	bool ascii = true;
	for (size_t i = 0; i < len && ascii; i++)
		ascii = (unsigned char)value[i] < 0x80;
	if (ascii)
		wrap_ascii(w, nw, out);
	else
		wrap_encoded(w, nw, out);
	free(w);
}

/* --- the header block of a whole message --- */

long long policy_hdr_block_end(const char *data, size_t len)
{
	if (len >= 2 && data[0] == '\r' && data[1] == '\n')
		return 0;
	for (size_t i = 0; i + 3 < len; i++)
		if (data[i] == '\r' && data[i + 1] == '\n' && data[i + 2] == '\r' && data[i + 3] == '\n')
			return (long long)i + 2;
	return -1;
}
