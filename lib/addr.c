/* addr: SMTP envelope addresses (RFC 5321 4.1.2 paths and mailboxes, with
 * the RFC 6531 SMTPUTF8 extension: well-formed UTF-8 in local parts and
 * domain labels).  The result follows KumoMTA's EnvelopeAddress: the local
 * part and domain exactly as written, a source route dropped, "<>" as the
 * null sender and "<Postmaster>" as the special recipient.
 * Entry points: addr_parse_path (the argument of MAIL FROM / RCPT TO),
 * addr_parse_email (a bare "local@domain" from Lua or the spool),
 * addr_valid_domain (EHLO), addr_copy, addr_free.
 * Failures return -1 with a short reason in the caller's buffer (never the
 * offending bytes, so it can be logged as is); *out is then all NULL, so
 * addr_free on it is harmless.  Nothing here logs. */
#include "lib/addr.h"
#include "lib/xalloc.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct cursor {
	const char *s;
	size_t len;
	size_t pos;
	char *err;
	size_t errlen;
};

static int fail(struct cursor *c, const char *why)
{
	if (c->errlen > 0)
		snprintf(c->err, c->errlen, "%s", why);
	return -1;
}

/* Length of the well-formed UTF-8 sequence (RFC 3629) at p[0..n), 1 for
 * ASCII, 0 when malformed: overlong forms, surrogates, > U+10FFFF, stray
 * continuation bytes or a truncated sequence. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
	if (n == 0)
		return 0;
	unsigned char b = p[0], lo = 0x80, hi = 0xBF;
	size_t need;
	if (b < 0x80)
		return 1;
	if (b >= 0xC2 && b <= 0xDF) {
		need = 2;
	} else if (b == 0xE0) {
		need = 3;
		lo = 0xA0;
	} else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
		need = 3;
	} else if (b == 0xED) {
		need = 3;
		hi = 0x9F;
	} else if (b == 0xF0) {
		need = 4;
		lo = 0x90;
	} else if (b >= 0xF1 && b <= 0xF3) {
		need = 4;
	} else if (b == 0xF4) {
		need = 4;
		hi = 0x8F;
	} else {
		return 0;
	}
	if (n < need || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < need; i++)
		if (p[i] < 0x80 || p[i] > 0xBF)
			return 0;
	return need;
}

static bool is_alnum(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

/* RFC 5322 atext, ASCII part */
static bool is_atext(unsigned char ch)
{
	return is_alnum(ch) || (ch != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL);
}

/* Scans a Domain (sub-domain *("." sub-domain)) at d[0..len), stopping at
 * the first byte that cannot continue it.  Returns the bytes used, or 0 with
 * *why set when what is there is not a valid domain. */
static size_t scan_domain(const char *d, size_t len, const char **why)
{
	const unsigned char *p = (const unsigned char *)d;
	size_t pos = 0;
	for (;;) {
		size_t start = pos;
		bool last_hyphen = false;
		while (pos < len) {
			if (is_alnum(p[pos])) {
				pos++;
				last_hyphen = false;
			} else if (p[pos] == '-') {
				if (pos == start) {
					*why = "domain label starts with a hyphen";
					return 0;
				}
				pos++;
				last_hyphen = true;
			} else if (p[pos] >= 0x80) {
				size_t n = utf8_seq(p + pos, len - pos);
				if (n == 0) {
					*why = "invalid UTF-8 in domain";
					return 0;
				}
				pos += n;
				last_hyphen = false;
			} else {
				break;
			}
		}
		if (pos == start) {
			if (start == 0)
				*why = pos < len && p[pos] == '.' ? "domain starts with a dot"
								  : "missing domain";
			else
				*why = pos < len && p[pos] == '.' ? "empty domain label"
								  : "domain ends with a dot";
			return 0;
		}
		if (last_hyphen) {
			*why = "domain label ends with a hyphen";
			return 0;
		}
		if (pos < len && p[pos] == '.') {
			pos++;
			continue;
		}
		return pos;
	}
}

/* Local-part at the cursor: a Quoted-string (kept with its quotes) or a
 * Dot-string. */
static int parse_local(struct cursor *c)
{
	const unsigned char *p = (const unsigned char *)c->s;
	size_t start = c->pos;
	if (c->pos < c->len && p[c->pos] == '"') {
		c->pos++;
		for (;;) {
			if (c->pos >= c->len)
				return fail(c, "unterminated quoted local part");
			unsigned char ch = p[c->pos];
			if (ch == '"') {
				c->pos++;
				break;
			}
			if (ch == '\\') {
				if (c->pos + 1 >= c->len || p[c->pos + 1] < 32 || p[c->pos + 1] > 126)
					return fail(c, "bad quoted-pair in local part");
				c->pos += 2;
			} else if (ch >= 0x80) {
				size_t n = utf8_seq(p + c->pos, c->len - c->pos);
				if (n == 0)
					return fail(c, "invalid UTF-8 in local part");
				c->pos += n;
			} else if (ch < 32 || ch == 127) {
				return fail(c, "control character in quoted local part");
			} else {
				c->pos++;
			}
		}
	} else {
		bool last_dot = false;
		while (c->pos < c->len) {
			unsigned char ch = p[c->pos];
			if (is_atext(ch)) {
				c->pos++;
				last_dot = false;
			} else if (ch >= 0x80) {
				size_t n = utf8_seq(p + c->pos, c->len - c->pos);
				if (n == 0)
					return fail(c, "invalid UTF-8 in local part");
				c->pos += n;
				last_dot = false;
			} else if (ch == '.') {
				if (c->pos == start)
					return fail(c, "local part starts with a dot");
				if (last_dot)
					return fail(c, "local part has two dots in a row");
				c->pos++;
				last_dot = true;
			} else {
				break;
			}
		}
		if (c->pos == start)
			return fail(c, c->pos < c->len && p[c->pos] == '@' ? "empty local part"
									  : "bad local part");
		if (last_dot)
			return fail(c, "local part ends with a dot");
	}
	if (c->pos - start > ADDR_MAX_LOCAL)
		return fail(c, "local part longer than 64 octets");
	return 0;
}

static bool valid_ipv4_literal(const char *s, size_t len)
{
	size_t pos = 0;
	for (int part = 0; part < 4; part++) {
		if (part > 0) {
			if (pos >= len || s[pos] != '.')
				return false;
			pos++;
		}
		unsigned v = 0;
		size_t digits = 0;
		while (pos < len && s[pos] >= '0' && s[pos] <= '9' && digits < 3) {
			v = v * 10 + (unsigned)(s[pos] - '0');
			pos++;
			digits++;
		}
		if (digits == 0 || v > 255)
			return false;
	}
	return pos == len;
}

/* "IPv6:" is already stripped */
static bool valid_ipv6_literal(const char *s, size_t len)
{
	char buf[INET6_ADDRSTRLEN];
	unsigned char bin[16];
	if (len == 0 || len >= sizeof buf || memchr(s, '\0', len))
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	return inet_pton(AF_INET6, buf, bin) == 1;
}

/* General-address-literal = Standardized-tag ":" 1*dcontent */
static bool valid_general_literal(const char *s, size_t len)
{
	const char *colon = memchr(s, ':', len);
	size_t taglen = (size_t)(colon - s);
	if (taglen == 0 || !is_alnum((unsigned char)s[0]) ||
	    !is_alnum((unsigned char)s[taglen - 1]))
		return false;
	for (size_t i = 0; i < taglen; i++)
		if (!is_alnum((unsigned char)s[i]) && s[i] != '-')
			return false;
	if (taglen + 1 == len)
		return false;
	for (size_t i = taglen + 1; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch < 33 || ch > 126 || ch == '[' || ch == '\\' || ch == ']')
			return false;
	}
	return true;
}

/* address-literal at the cursor, which is on the '[' */
static int parse_literal(struct cursor *c)
{
	size_t start = c->pos + 1;
	const char *close = memchr(c->s + start, ']', c->len - start);
	if (!close)
		return fail(c, "unterminated address literal");
	const char *lit = c->s + start;
	size_t n = (size_t)(close - lit);
	if (n == 0)
		return fail(c, "empty address literal");
	if (n >= 5 && strncasecmp(lit, "IPv6:", 5) == 0) {
		if (!valid_ipv6_literal(lit + 5, n - 5))
			return fail(c, "bad IPv6 address literal");
	} else if (memchr(lit, ':', n)) {
		if (!valid_general_literal(lit, n))
			return fail(c, "bad address literal");
	} else if (!valid_ipv4_literal(lit, n)) {
		return fail(c, "bad IPv4 address literal");
	}
	c->pos = start + n + 1;
	return 0;
}

/* Mailbox at the cursor; the local part and domain spans are returned
 * through the offsets. */
static int parse_mailbox(struct cursor *c, size_t *user_start, size_t *user_len,
			 size_t *dom_start, size_t *dom_len)
{
	*user_start = c->pos;
	if (parse_local(c) != 0)
		return -1;
	*user_len = c->pos - *user_start;
	if (c->pos >= c->len || c->s[c->pos] != '@')
		return fail(c, "missing '@' after the local part");
	c->pos++;
	*dom_start = c->pos;
	if (c->pos < c->len && c->s[c->pos] == '[') {
		if (parse_literal(c) != 0)
			return -1;
	} else {
		const char *why = NULL;
		size_t n = scan_domain(c->s + c->pos, c->len - c->pos, &why);
		if (n == 0)
			return fail(c, why);
		c->pos += n;
	}
	*dom_len = c->pos - *dom_start;
	if (*dom_len > ADDR_MAX_DOMAIN)
		return fail(c, "domain longer than 255 octets");
	return 0;
}

/* A-d-l ":" at the cursor, which is on the first '@'; skipped. */
static int skip_source_route(struct cursor *c)
{
	for (;;) {
		c->pos++; /* the '@' */
		const char *why = NULL;
		size_t n = scan_domain(c->s + c->pos, c->len - c->pos, &why);
		if (n == 0)
			return fail(c, "bad domain in source route");
		c->pos += n;
		if (c->pos < c->len && c->s[c->pos] == ':') {
			c->pos++;
			return 0;
		}
		if (c->pos + 1 < c->len && c->s[c->pos] == ',' && c->s[c->pos + 1] == '@') {
			c->pos++;
			continue;
		}
		return fail(c, "bad source route");
	}
}

static void set_null(struct smtp_addr *out)
{
	out->email = xstrdup("");
	out->user = xstrdup("");
	out->domain = xstrdup("");
	out->is_null = true;
}

static void set_postmaster(struct smtp_addr *out)
{
	out->email = xstrdup("Postmaster");
	out->user = xstrdup("postmaster");
	out->domain = xstrdup("");
	out->is_postmaster = true;
}

static void set_mailbox(struct smtp_addr *out, const char *s, size_t us, size_t ul,
			size_t ds, size_t dl)
{
	out->user = xstrndup(s + us, ul);
	out->domain = xstrndup(s + ds, dl);
	out->email = xmalloc(ul + 1 + dl + 1);
	memcpy(out->email, s + us, ul);
	out->email[ul] = '@';
	memcpy(out->email + ul + 1, s + ds, dl);
	out->email[ul + 1 + dl] = '\0';
}

/* "postmaster" (any case) at s[0..len), then the end of s or `end` */
static bool is_postmaster_at(const char *s, size_t len, char end)
{
	if (len < 10 || strncasecmp(s, "postmaster", 10) != 0)
		return false;
	return len == 10 || s[10] == end;
}

int addr_parse_path(const char *s, size_t len, int flags, struct smtp_addr *out,
		    size_t *consumed, char *err, size_t errlen)
{
	struct cursor c = { .s = s, .len = len, .pos = 0, .err = err, .errlen = errlen };
	size_t us, ul, ds, dl;
	memset(out, 0, sizeof *out);
	if (len == 0)
		return fail(&c, "empty address");
	if (s[0] != '<') {
		if (flags & ADDR_REQUIRE_BRACKETS)
			return fail(&c, "address must be enclosed in <>");
		if (is_postmaster_at(s, len, ' ')) {
			if (!(flags & ADDR_ALLOW_POSTMASTER))
				return fail(&c, "Postmaster is not allowed here");
			set_postmaster(out);
			*consumed = 10;
			return 0;
		}
		if (parse_mailbox(&c, &us, &ul, &ds, &dl) != 0)
			return -1;
		if (c.pos < len && s[c.pos] != ' ')
			return fail(&c, "unexpected character after the address");
		set_mailbox(out, s, us, ul, ds, dl);
		*consumed = c.pos;
		return 0;
	}
	c.pos = 1;
	if (len > 1 && s[1] == '>') {
		if (!(flags & ADDR_ALLOW_NULL))
			return fail(&c, "null address <> is not allowed here");
		set_null(out);
		*consumed = 2;
		return 0;
	}
	if (len > 11 && is_postmaster_at(s + 1, len - 1, '>')) {
		if (!(flags & ADDR_ALLOW_POSTMASTER))
			return fail(&c, "<Postmaster> is not allowed here");
		set_postmaster(out);
		*consumed = 12;
		return 0;
	}
	if (len > 1 && s[1] == '@' && skip_source_route(&c) != 0)
		return -1;
	if (parse_mailbox(&c, &us, &ul, &ds, &dl) != 0)
		return -1;
	if (c.pos >= len)
		return fail(&c, "missing '>' at the end of the address");
	if (s[c.pos] != '>')
		return fail(&c, "unexpected character after the address");
	set_mailbox(out, s, us, ul, ds, dl);
	*consumed = c.pos + 1;
	return 0;
}

int addr_parse_email(const char *s, struct smtp_addr *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	if (!s) {
		if (errlen > 0)
			snprintf(err, errlen, "no address");
		return -1;
	}
	size_t len = strlen(s);
	struct cursor c = { .s = s, .len = len, .pos = 0, .err = err, .errlen = errlen };
	size_t us, ul, ds, dl;
	if (len == 0) {
		set_null(out);
		return 0;
	}
	if (len == 10 && is_postmaster_at(s, len, '\0')) {
		set_postmaster(out);
		return 0;
	}
	if (parse_mailbox(&c, &us, &ul, &ds, &dl) != 0)
		return -1;
	if (c.pos != len)
		return fail(&c, "unexpected character after the address");
	set_mailbox(out, s, us, ul, ds, dl);
	return 0;
}

void addr_free(struct smtp_addr *a)
{
	if (!a)
		return;
	free(a->email);
	free(a->user);
	free(a->domain);
	a->email = a->user = a->domain = NULL;
	a->is_null = a->is_postmaster = false;
}

void addr_copy(struct smtp_addr *dst, const struct smtp_addr *src)
{
	dst->email = src->email ? xstrdup(src->email) : NULL;
	dst->user = src->user ? xstrdup(src->user) : NULL;
	dst->domain = src->domain ? xstrdup(src->domain) : NULL;
	dst->is_null = src->is_null;
	dst->is_postmaster = src->is_postmaster;
}

bool addr_valid_domain(const char *d, size_t len)
{
	const char *why = NULL;
	if (!d || len == 0 || len > ADDR_MAX_DOMAIN)
		return false;
	return scan_domain(d, len, &why) == len;
}
